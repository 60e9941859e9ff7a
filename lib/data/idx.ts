// IDX files, the format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/): a 4-byte
// magic `00 00 <dtype> <ndims>`, then `ndims` big-endian uint32 sizes, then the values in
// row-major order, big-endian. The files usually ship gzip'd; both forms are read.
import { gunzipSync } from "node:zlib";
import * as E from "fp-ts/lib/Either.js";
import { oneLine } from "../messages.ts";

export { oneLine } from "../messages.ts";

/** IDX element types, keyed by their magic byte. */
export const IDX_DTYPES = {
  0x08: "uint8",
  0x09: "int8",
  0x0b: "int16",
  0x0c: "int32",
  0x0d: "float32",
  0x0e: "float64",
} as const;

export type IdxDtype = (typeof IDX_DTYPES)[keyof typeof IDX_DTYPES];

/** Values of an IDX file in host byte order. */
export type IdxData =
  | Uint8Array
  | Int8Array
  | Int16Array
  | Int32Array
  | Float32Array
  | Float64Array;

/** A parsed IDX file: dims as stored (e.g. [N, 28, 28] for images, [N] for labels). */
export interface Idx {
  readonly dtype: IdxDtype;
  readonly dims: readonly number[];
  readonly data: IdxData;
}

const BYTES: Readonly<Record<IdxDtype, number>> = {
  uint8: 1,
  int8: 1,
  int16: 2,
  int32: 4,
  float32: 4,
  float64: 8,
};

const hex = (b: number) => `0x${b.toString(16).padStart(2, "0")}`;

/** gzip streams start with 1f 8b (RFC 1952). */
export function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

// Copy `n` big-endian values of `dtype` starting at `offset` into a host-order array of its own.
// `bytes` may view a larger buffer (gunzipSync returns a Buffer on a shared pool, and Buffer's
// `slice` is a view), so every read goes through byteOffset and every result is a fresh copy.
function decode(bytes: Uint8Array, offset: number, dtype: IdxDtype, n: number): IdxData {
  const start = bytes.byteOffset + offset;
  const view = new DataView(bytes.buffer, start, n * BYTES[dtype]);
  switch (dtype) {
    case "uint8":
      return new Uint8Array(bytes.buffer.slice(start, start + n));
    case "int8":
      return new Int8Array(bytes.buffer.slice(start, start + n));
    case "int16":
      return Int16Array.from({ length: n }, (_, i) => view.getInt16(2 * i));
    case "int32":
      return Int32Array.from({ length: n }, (_, i) => view.getInt32(4 * i));
    case "float32":
      return Float32Array.from({ length: n }, (_, i) => view.getFloat32(4 * i));
    case "float64":
      return Float64Array.from({ length: n }, (_, i) => view.getFloat64(8 * i));
  }
}

/**
 * Parse the bytes of an IDX file, gunzipping them first when they start with the gzip magic.
 *
 * @param bytes the file's contents
 * @param name the file's name, quoted in every error
 * @returns the parsed file, or a one-line message naming the file and the fault
 * @example
 * ```ts
 * const labels = parseIdx(new Uint8Array([0, 0, 8, 1, 0, 0, 0, 2, 7, 3]), "labels");
 * // E.right({ dtype: "uint8", dims: [2], data: Uint8Array [7, 3] })
 * ```
 */
export function parseIdx(bytes: Uint8Array, name: string): E.Either<string, Idx> {
  const fail = (fault: string) => E.left(`Cannot read IDX file "${name}": ${fault}`);
  if (isGzip(bytes)) {
    try {
      const out = gunzipSync(bytes);
      bytes = new Uint8Array(out.buffer, out.byteOffset, out.byteLength); // a plain view
    } catch (e) {
      return fail(`not a valid gzip stream (${oneLine((e as Error).message)})`);
    }
  }
  if (bytes.length < 4) return fail(`${bytes.length} bytes is too short for the IDX header`);
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    return fail(
      `bad magic number ${
        [...bytes.subarray(0, 4)].map(hex).join(" ")
      }, expected 0x00 0x00 <dtype> <ndims>`,
    );
  }
  const dtype = IDX_DTYPES[bytes[2] as keyof typeof IDX_DTYPES];
  if (!dtype) {
    return fail(
      `unsupported dtype ${hex(bytes[2])}, expected one of ${
        Object.keys(IDX_DTYPES).map(Number).map(hex).join(", ")
      }`,
    );
  }
  const ndims = bytes[3];
  if (ndims === 0) return fail("zero dimensions");
  const header = 4 + 4 * ndims;
  if (bytes.length < header) {
    return fail(`truncated header, expected ${header} bytes, found ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, header);
  const dims = Array.from({ length: ndims }, (_, i) => view.getUint32(4 + 4 * i));
  const count = dims.reduce((a, b) => a * b, 1);
  const expected = count * BYTES[dtype];
  const found = bytes.length - header;
  if (found < expected) {
    return fail(`truncated, expected ${expected} bytes of data, found ${found}`);
  }
  if (found > expected) {
    return fail(`${found - expected} trailing bytes after ${expected} bytes of data`);
  }
  return E.right({ dtype, dims, data: decode(bytes, header, dtype, count) });
}

/**
 * Read and parse an IDX file (gzip'd or not).
 *
 * @throws Error with a one-line message naming the file when it is missing or malformed
 */
export async function readIdx(path: string): Promise<Idx> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    const fault = e instanceof Deno.errors.NotFound
      ? "file not found"
      : oneLine((e as Error).message);
    throw new Error(`Cannot read IDX file "${path}": ${fault}`);
  }
  const parsed = parseIdx(bytes, path);
  if (E.isLeft(parsed)) throw new Error(parsed.left);
  return parsed.right;
}
