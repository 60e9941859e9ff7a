import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import * as E from "fp-ts/lib/Either.js";
import { type Idx, parseIdx, readIdx } from "../../lib/data/idx.ts";

// Header `00 00 dtype ndims` + big-endian uint32 dims + payload.
function idxBytes(dtype: number, dims: number[], payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + payload.length);
  const view = new DataView(out.buffer);
  out.set([0, 0, dtype, dims.length]);
  dims.forEach((d, i) => view.setUint32(4 + 4 * i, d));
  out.set(payload, 4 + 4 * dims.length);
  return out;
}

// Big-endian payload of `values` written by a DataView setter of `width` bytes.
function bigEndian(
  values: number[],
  width: number,
  set: (v: DataView, at: number, x: number) => void,
): Uint8Array {
  const out = new Uint8Array(values.length * width);
  const view = new DataView(out.buffer);
  values.forEach((x, i) => set(view, i * width, x));
  return out;
}

const ok = (r: E.Either<string, Idx>): Idx => {
  if (E.isLeft(r)) throw new Error(`expected a parse, got: ${r.left}`);
  return r.right;
};
const err = (r: E.Either<string, Idx>): string => {
  if (E.isRight(r)) throw new Error("expected an error");
  return r.left;
};

Deno.test("parseIdx() reads a 3-D ubyte file, plain and gzip'd", () => {
  const payload = Uint8Array.from({ length: 2 * 3 * 4 }, (_, i) => i * 10);
  const bytes = idxBytes(0x08, [2, 3, 4], payload);
  for (const b of [bytes, new Uint8Array(gzipSync(bytes))]) {
    const idx = ok(parseIdx(b, "x"));
    assert.equal(idx.dtype, "uint8");
    assert.deepEqual(idx.dims, [2, 3, 4]);
    assert.ok(idx.data instanceof Uint8Array);
    assert.deepEqual([...idx.data], [...payload]);
  }
});

type Setter = (v: DataView, at: number, x: number) => void;
const DTYPE_CASES: [number, string, number[], number, Setter][] = [
  [0x08, "uint8", [0, 1, 255], 1, (v, a, x) => v.setUint8(a, x)],
  [0x09, "int8", [-128, -1, 127], 1, (v, a, x) => v.setInt8(a, x)],
  [0x0b, "int16", [-32768, -2, 258], 2, (v, a, x) => v.setInt16(a, x)],
  [0x0c, "int32", [-2147483648, 65536, 7], 4, (v, a, x) => v.setInt32(a, x)],
  [0x0d, "float32", [1.5, -0.25, 3e30], 4, (v, a, x) => v.setFloat32(a, x)],
  [0x0e, "float64", [Math.PI, -1e-300, 2 ** 60], 8, (v, a, x) => v.setFloat64(a, x)],
];

Deno.test("parseIdx() decodes every dtype big-endian", async (t) => {
  for (const [code, dtype, values, width, set] of DTYPE_CASES) {
    await t.step(dtype, () => {
      const idx = ok(parseIdx(idxBytes(code, [3], bigEndian(values, width, set)), "f"));
      assert.equal(idx.dtype, dtype);
      assert.deepEqual(idx.dims, [3]);
      const expected = dtype === "float32" ? [...Float32Array.from(values)] : values;
      assert.deepEqual([...idx.data], expected);
    });
  }
});

// gunzipSync returns a Node Buffer that views a shared pool: decoding must copy exactly the payload.
Deno.test("parseIdx() decodes gzip'd files of every dtype to exactly their values", async (t) => {
  for (const [code, dtype, values, width, set] of DTYPE_CASES) {
    await t.step(dtype, () => {
      const plain = idxBytes(code, [3], bigEndian(values, width, set));
      const idx = ok(parseIdx(new Uint8Array(gzipSync(plain)), "f.gz"));
      assert.equal(idx.dtype, dtype);
      assert.equal(idx.data.length, 3);
      assert.equal(idx.data.byteLength, 3 * width, "data owns just its values");
      const expected = dtype === "float32" ? [...Float32Array.from(values)] : values;
      assert.deepEqual([...idx.data], expected);
    });
  }
});

Deno.test("readIdx() reads a gzip'd int8 file written to disk", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/deltas-idx2-byte.gz`;
    const values = [-128, -1, 0, 1, 127, -7];
    const payload = bigEndian(values, 1, (v, a, x) => v.setInt8(a, x));
    await Deno.writeFile(path, gzipSync(idxBytes(0x09, [2, 3], payload)));
    const idx = await readIdx(path);
    assert.equal(idx.dtype, "int8");
    assert.deepEqual(idx.dims, [2, 3]);
    assert.ok(idx.data instanceof Int8Array);
    assert.deepEqual([...idx.data], values);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseIdx() rejects corrupt files with one line naming the file", async (t) => {
  const name = "/x/train-images-idx3-ubyte.gz";
  const good = idxBytes(0x08, [2, 2, 2], new Uint8Array(8));
  const cases: [string, Uint8Array, RegExp][] = [
    ["empty", new Uint8Array(0), /0 bytes is too short for the IDX header/],
    [
      "bad magic",
      Uint8Array.from([1, 2, ...good.subarray(2)]),
      /bad magic number 0x01 0x02 0x08 0x03/,
    ],
    ["bad dtype", Uint8Array.from([0, 0, 0x0a, ...good.subarray(3)]), /unsupported dtype 0x0a/],
    ["zero dims", Uint8Array.from([0, 0, 8, 0]), /zero dimensions/],
    ["truncated header", good.subarray(0, 10), /truncated header, expected 16 bytes, found 10/],
    [
      "truncated",
      good.subarray(0, good.length - 3),
      /truncated, expected 8 bytes of data, found 5/,
    ],
    ["trailing bytes", Uint8Array.from([...good, 1, 2]), /2 trailing bytes after 8 bytes of data/],
    ["gzip garbage", Uint8Array.from([0x1f, 0x8b, 1, 2, 3, 4, 5, 6]), /not a valid gzip stream/],
    ["truncated gzip", new Uint8Array(gzipSync(good)).subarray(0, 12), /not a valid gzip stream/],
  ];
  for (const [what, bytes, pattern] of cases) {
    await t.step(what, () => {
      const msg = err(parseIdx(bytes, name));
      assert.match(msg, pattern);
      assert.ok(msg.startsWith(`Cannot read IDX file "${name}": `), msg);
      assert.ok(!msg.includes("\n"), msg);
    });
  }
});

Deno.test("readIdx() reads a file and throws one-line errors naming it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/labels-idx1-ubyte.gz`;
    await Deno.writeFile(path, gzipSync(idxBytes(0x08, [3], Uint8Array.from([7, 0, 9]))));
    const idx = await readIdx(path);
    assert.deepEqual([...idx.data], [7, 0, 9]);
    await assert.rejects(() => readIdx(`${dir}/missing`), {
      message: `Cannot read IDX file "${dir}/missing": file not found`,
    });
    await Deno.writeFile(path, idxBytes(0x08, [4], Uint8Array.from([1])));
    await assert.rejects(() => readIdx(path), {
      message: `Cannot read IDX file "${path}": truncated, expected 4 bytes of data, found 1`,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
