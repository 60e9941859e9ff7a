// The safetensors format (huggingface/safetensors, docs "Format"): an 8-byte little-endian u64 N,
// an N-byte UTF-8 JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {string: string}}, then the byte buffer; offsets are relative to the buffer's start, and the
// buffer is fully indexed without holes or overlaps. Floats decode to float32, integers to int32.
import * as E from "fp-ts/lib/Either.js";
import * as A from "fp-ts/lib/Array.js";
import * as NEA from "fp-ts/lib/NonEmptyArray.js";
import { pipe } from "fp-ts/lib/function.js";
import { removeStaleTemps, writeFileAtomic } from "./atomic.ts";
import { oneLine, shortList } from "../messages.ts";
import { decodeElements, type Dtype, DTYPE_BYTES } from "./dtype.ts";

export { type Dtype, DTYPE_BYTES } from "./dtype.ts";

/** A tensor to write: float32 as F32, int32 as I32. */
export type TensorIn =
  | { readonly dtype: "F32"; readonly shape: readonly number[]; readonly data: Float32Array }
  | { readonly dtype: "I32"; readonly shape: readonly number[]; readonly data: Int32Array };

/** A decoded tensor: `dtype` is the stored one; floats come back as float32, integers as int32. */
export interface DecodedTensor {
  readonly dtype: Dtype;
  readonly shape: number[];
  readonly data: Float32Array | Int32Array;
}

export interface Decoded {
  readonly tensors: Record<string, DecodedTensor>;
  readonly metadata: Record<string, string>;
}

interface Entry {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: number[];
  readonly begin: number;
  readonly end: number;
}

type Errors = NEA.NonEmptyArray<string>;
const fail = <T>(msg: string): E.Either<Errors, T> => E.left(NEA.of(msg));

// ---------------------------------------------------------------- encode

/**
 * The safetensors bytes of `tensors` (in insertion order) and string metadata, as chunks: the
 * length-and-header chunk, then views on each tensor's data (nothing is copied).
 * @throws if a shape does not match its data length
 */
export function safetensorsChunks(
  tensors: Readonly<Record<string, TensorIn>>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array[] {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = { ...metadata };
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (n !== t.data.length) {
      throw new Error(`Tensor "${name}" has shape [${t.shape}] but ${t.data.length} values`);
    }
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + 4 * n] };
    offset += 4 * n;
  }
  // Pad the header with spaces to a multiple of 8 so the buffer starts aligned (as upstream does).
  const text = JSON.stringify(header);
  const len = new TextEncoder().encode(text).length;
  const json = new TextEncoder().encode(text + " ".repeat(Math.ceil(len / 8) * 8 - len));
  const head = new Uint8Array(8 + json.length);
  new DataView(head.buffer).setBigUint64(0, BigInt(json.length), true);
  head.set(json, 8);
  const views = Object.values(tensors).map((t) =>
    new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength)
  );
  return [head, ...views];
}

/**
 * Encode tensors and string metadata as one safetensors byte array.
 * @example
 * ```ts
 * const bytes = encodeSafetensors({ w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } });
 * ```
 */
export function encodeSafetensors(
  tensors: Readonly<Record<string, TensorIn>>,
  metadata: Readonly<Record<string, string>> = {},
): Uint8Array {
  const chunks = safetensorsChunks(tensors, metadata);
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

// ---------------------------------------------------------------- header validation

const isNat = (x: unknown): x is number =>
  typeof x === "number" && Number.isSafeInteger(x) && x >= 0;

function checkEntry(name: string, raw: unknown): E.Either<Errors, Entry> {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    return fail(`tensor "${name}" is not an object`);
  }
  const { dtype, shape, data_offsets: offs } = raw as Record<string, unknown>;
  const problems: string[] = [];
  if (typeof dtype !== "string" || !Object.hasOwn(DTYPE_BYTES, dtype)) {
    problems.push(`tensor "${name}" has unknown dtype ${JSON.stringify(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every(isNat)) {
    problems.push(`tensor "${name}" has a bad shape ${JSON.stringify(shape)}`);
  }
  const offsOk = Array.isArray(offs) && offs.length === 2 && offs.every(isNat) &&
    offs[0] <= offs[1];
  if (!offsOk) problems.push(`tensor "${name}" has bad data_offsets ${JSON.stringify(offs)}`);
  if (problems.length > 0) return E.left(problems as Errors);
  const [begin, end] = offs as [number, number];
  const bytes = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype as Dtype];
  if (end - begin !== bytes) {
    return fail(
      `tensor "${name}" spans ${end - begin} bytes but ${dtype} [${shape}] needs ${bytes}`,
    );
  }
  return E.right({ name, dtype: dtype as Dtype, shape: shape as number[], begin, end });
}

function checkMetadata(raw: unknown): E.Either<Errors, Record<string, string>> {
  if (raw === undefined) return E.right({});
  const ok = typeof raw === "object" && raw !== null && !Array.isArray(raw) &&
    Object.values(raw).every((v) => typeof v === "string");
  return ok ? E.right(raw as Record<string, string>) : fail("__metadata__ is not a map of strings");
}

// The buffer must be covered exactly: sorted by begin, each entry starts where the last ended.
function checkLayout(entries: Entry[], bufferBytes: number): string[] {
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  const problems: string[] = [];
  let at = 0;
  let prev = "";
  for (const e of sorted) {
    if (e.begin < at) problems.push(`tensor "${e.name}" overlaps "${prev}"`);
    else if (e.begin > at) {
      problems.push(`bytes ${at}..${e.begin} before "${e.name}" are not indexed`);
    }
    if (e.end > bufferBytes) {
      problems.push(
        `tensor "${e.name}" ends at byte ${e.end}, past the ${bufferBytes}-byte buffer`,
      );
    }
    if (e.end >= at) [at, prev] = [e.end, e.name];
  }
  if (at < bufferBytes) problems.push(`buffer is ${bufferBytes} bytes but tensors index ${at}`);
  return problems;
}

// The header's length from the first 8 bytes, checked against the file's size.
function headerLength(first: Uint8Array, fileBytes: number): E.Either<Errors, number> {
  if (fileBytes < 8) {
    return fail(`file is ${fileBytes} bytes, shorter than the 8-byte header length`);
  }
  const n = new DataView(first.buffer, first.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(fileBytes - 8)) {
    return fail(`header length ${n} exceeds the ${fileBytes - 8} bytes after it (truncated file?)`);
  }
  return E.right(Number(n));
}

interface Layout {
  readonly entries: Entry[];
  readonly metadata: Record<string, string>;
}

// The header's JSON, checked entry by entry and against the buffer's size; collects every problem.
function checkHeader(json: Uint8Array, bufferBytes: number): E.Either<Errors, Layout> {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(json);
  } catch {
    return fail("header is not valid UTF-8");
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${oneLine((e as Error).message)})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    return fail("header is not a JSON object");
  }
  const { __metadata__: meta, ...rest } = header as Record<string, unknown>;
  const { left, right: entries } = A.separate(
    Object.entries(rest).map(([k, v]) => checkEntry(k, v)),
  );
  const metadata = checkMetadata(meta);
  const problems = [
    ...left.flat(),
    ...(E.isLeft(metadata) ? metadata.left : []),
    ...checkLayout(entries, bufferBytes), // on the well-formed entries
  ];
  if (A.isNonEmpty(problems)) return E.left(problems);
  return E.right({ entries, metadata: E.isRight(metadata) ? metadata.right : {} });
}

// ---------------------------------------------------------------- decode

/**
 * Decode safetensors bytes. Every problem with the header or layout is collected; nothing is
 * decoded unless all checks pass.
 * @returns Left with every problem found, or Right with the tensors and metadata
 */
export function decodeSafetensors(bytes: Uint8Array): E.Either<string[], Decoded> {
  return pipe(
    headerLength(bytes, bytes.length),
    E.chain((n) =>
      pipe(
        checkHeader(bytes.subarray(8, 8 + n), bytes.length - 8 - n),
        E.map(({ entries, metadata }) => {
          // fromEntries defines own keys, so even a tensor named "__proto__" comes back as one.
          const tensors = Object.fromEntries(entries.map((e): [string, DecodedTensor] => {
            const raw = bytes.slice(8 + n + e.begin, 8 + n + e.end).buffer; // aligned copy
            return [e.name, { dtype: e.dtype, shape: e.shape, data: decodeElements(e.dtype, raw) }];
          }));
          return { tensors, metadata };
        }),
      )
    ),
  );
}

/**
 * One line naming the file and its faults, for errors: the first five, then a count of the rest
 * (a truncated checkpoint has one fault per tensor past the end).
 */
export function formatProblems(path: string, problems: readonly string[]): string {
  return `Cannot read safetensors file "${path}": ${shortList(problems, 5, "; ")}`;
}

async function readAt(
  file: Deno.FsFile,
  pos: number,
  length: number,
): Promise<Uint8Array<ArrayBuffer>> {
  const out = new Uint8Array(length);
  await file.seek(pos, Deno.SeekMode.Start);
  for (let at = 0; at < length;) {
    const n = await file.read(out.subarray(at));
    if (n === null) throw new Error(`file ended at byte ${pos + at} while reading`);
    at += n;
  }
  return out;
}

/**
 * Read and decode a safetensors file: the header first, validated against the file's size, then
 * each tensor straight into its own buffer (so files over 2 GiB load too).
 * @throws one-line Error naming the file and every fault (missing file, truncation, bad header)
 */
export async function readSafetensors(path: string): Promise<Decoded> {
  let file: Deno.FsFile | undefined;
  let result: E.Either<readonly string[], Decoded>;
  try {
    file = await Deno.open(path, { read: true });
    result = await readOpen(file);
  } catch (e) {
    result = E.left([oneLine((e as Error).message)]);
  } finally {
    file?.close();
  }
  if (E.isLeft(result)) throw new Error(formatProblems(path, result.left));
  return result.right;
}

// The header first, validated against the file's size, then each tensor into its own buffer.
async function readOpen(file: Deno.FsFile): Promise<E.Either<Errors, Decoded>> {
  const size = (await file.stat()).size;
  const n = headerLength(await readAt(file, 0, Math.min(8, size)), size);
  if (E.isLeft(n)) return n;
  const layout = checkHeader(await readAt(file, 8, n.right), size - 8 - n.right);
  if (E.isLeft(layout)) return layout;
  const tensors: [string, DecodedTensor][] = [];
  for (const e of layout.right.entries) {
    const raw = await readAt(file, 8 + n.right + e.begin, e.end - e.begin);
    tensors.push([e.name, {
      dtype: e.dtype,
      shape: e.shape,
      data: decodeElements(e.dtype, raw.buffer),
    }]);
  }
  return E.right({ tensors: Object.fromEntries(tensors), metadata: layout.right.metadata });
}

/**
 * Encode and write a safetensors file atomically (temp file, fsync, rename), first removing the
 * temp files that killed writers of the same path left behind (`removeStaleTemps`).
 * @throws one-line Error naming the file: `Cannot write safetensors file "<path>": ...` for bad
 * tensors, `Cannot write "<path>": ...` when the write fails (full disk, permissions)
 */
export async function writeSafetensors(
  path: string,
  tensors: Readonly<Record<string, TensorIn>>,
  metadata: Readonly<Record<string, string>> = {},
): Promise<void> {
  let chunks: Uint8Array[];
  try {
    chunks = safetensorsChunks(tensors, metadata);
  } catch (e) {
    throw new Error(`Cannot write safetensors file "${path}": ${oneLine((e as Error).message)}`);
  }
  // Checkpoints are the large temp files; a failed cleanup must not block saving a new one.
  await removeStaleTemps(path).catch(() => []);
  await writeFileAtomic(path, chunks);
}
