// Mutation fuzzing of the two binary parsers that read files from outside: the safetensors
// decoder and the IDX parser. Valid files are built from a seeded key, mutated (bit flips,
// truncation, appended bytes, length fields, header edits), and each outcome is checked against
// an independent reference reading of the format: a file the reference accepts must decode to
// exactly the values its bytes hold; any other must give the module's own one-line error, never
// a TypeError or RangeError from deep inside. FUZZ_SEED and FUZZ_CASES widen a run.
import assert from "node:assert/strict";
import { join } from "node:path";
import { gunzipSync, gzipSync } from "node:zlib";
import * as E from "fp-ts/lib/Either.js";
import { fold, type Rng, rng, uniformArray } from "../../lib/random.ts";
import {
  type DecodedTensor,
  decodeSafetensors,
  formatProblems,
  readSafetensors,
} from "../../lib/io/safetensors.ts";
import { parseIdx } from "../../lib/data/idx.ts";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20240808);
const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);

// ---------------------------------------------------------------- draws

/** Uniform draws from one key (24-bit floats, plenty for the small ranges used here). */
class Draws {
  private readonly u: Float32Array;
  private at = 0;
  constructor(r: Rng, n = 4096) {
    this.u = uniformArray(r, n);
  }
  /** An integer in [lo, hi). */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.u[this.at++ % this.u.length] * (hi - lo));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(0, xs.length)];
  }
  bytes(n: number): Uint8Array {
    return Uint8Array.from({ length: n }, () => this.int(0, 256));
  }
}

type Expect = "valid" | "invalid" | "either";

interface Mutant {
  readonly what: string;
  readonly bytes: Uint8Array;
  readonly expect: Expect;
}

const flipBit = (bytes: Uint8Array, at: number, bit: number) => {
  const out = bytes.slice();
  out[at] ^= 1 << bit;
  return out;
};
const concat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------- safetensors: reference

const ST_BYTES: Readonly<Record<string, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

// IEEE half to number, from the definition (independent of lib/io/dtype.ts's table).
function halfToNumber(h: number): number {
  const sign = h >> 15 ? -1 : 1, exp = (h >> 10) & 31, frac = h & 1023;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return exp === 0 ? sign * frac * 2 ** -24 : sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

// One element of `dtype` at `at`, as the decoder must return it (float32 or int32).
function element(v: DataView, dtype: string, at: number): number {
  const f32 = new DataView(new ArrayBuffer(4));
  switch (dtype) {
    case "F64":
      return Math.fround(v.getFloat64(at, true));
    case "F32":
      return v.getFloat32(at, true);
    case "F16":
      return Math.fround(halfToNumber(v.getUint16(at, true)));
    case "BF16":
      f32.setUint32(0, v.getUint16(at, true) << 16);
      return f32.getFloat32(0);
    case "I64":
      return Number(BigInt.asIntN(32, v.getBigInt64(at, true)));
    case "I32":
      return v.getInt32(at, true);
    case "I16":
      return v.getInt16(at, true);
    case "I8":
      return v.getInt8(at);
    default: // U8, BOOL
      return v.getUint8(at);
  }
}

interface RefTensor {
  readonly dtype: string;
  readonly shape: number[];
  readonly values: number[];
}

/** What the format says `bytes` hold, or undefined when they break a rule of the format. */
function referenceSafetensors(
  bytes: Uint8Array,
): { tensors: Record<string, RefTensor>; metadata: Record<string, string> } | undefined {
  if (bytes.length < 8) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = v.getBigUint64(0, true);
  if (n > BigInt(bytes.length - 8)) return undefined;
  const start = 8 + Number(n), buffer = bytes.length - start;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, start)));
  } catch {
    return undefined;
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) return undefined;
  const nat = (x: unknown) => typeof x === "number" && Number.isSafeInteger(x) && x >= 0;
  let metadata: Record<string, string> = {};
  const spans: [number, number][] = [];
  const tensors: Record<string, RefTensor> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (
        typeof raw !== "object" || raw === null || Array.isArray(raw) ||
        !Object.values(raw).every((x) => typeof x === "string")
      ) return undefined;
      metadata = raw as Record<string, string>;
      continue;
    }
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) return undefined;
    const { dtype, shape, data_offsets: offs } = raw as Record<string, unknown>;
    if (typeof dtype !== "string" || !Object.hasOwn(ST_BYTES, dtype)) return undefined;
    if (!Array.isArray(shape) || !shape.every(nat)) return undefined;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every(nat)) return undefined;
    const [b, e] = offs as [number, number];
    if (b > e || e - b !== product(shape) * ST_BYTES[dtype]) return undefined;
    if (e > buffer) return undefined;
    spans.push([b, e]);
    const size = ST_BYTES[dtype];
    const values = Array.from(
      { length: (e - b) / size },
      (_, i) => element(v, dtype, start + b + i * size),
    );
    tensors[name] = { dtype, shape: shape as number[], values };
  }
  // The buffer is covered exactly: no holes, no overlaps, nothing past the last tensor.
  spans.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let at = 0;
  for (const [b, e] of spans) {
    if (b !== at) return undefined;
    at = e;
  }
  return at === buffer ? { tensors, metadata } : undefined;
}

// ---------------------------------------------------------------- safetensors: files

interface StFile {
  header: Record<string, unknown>;
  buffer: Uint8Array;
}

function stBytes(f: StFile, pad = 0): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(f.header) + " ".repeat(pad));
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
  return concat(len, json, f.buffer);
}

// A valid file of 1-5 tensors of random dtypes, shapes (empty ones included) and bytes.
function stFile(d: Draws): StFile {
  const header: Record<string, unknown> = {};
  if (d.int(0, 2)) header.__metadata__ = { format: "pt", step: String(d.int(0, 1000)) };
  const parts: Uint8Array[] = [];
  let offset = 0;
  const count = d.int(1, 6);
  for (let i = 0; i < count; i++) {
    const dtype = d.pick(Object.keys(ST_BYTES));
    const shape = Array.from({ length: d.int(0, 4) }, () => d.int(0, 4));
    const n = product(shape) * ST_BYTES[dtype];
    header[`layer.${i}.${d.pick(["weight", "bias", "running_mean"])}`] = {
      dtype,
      shape,
      data_offsets: [offset, offset + n],
    };
    parts.push(d.bytes(n));
    offset += n;
  }
  return { header, buffer: concat(...parts) };
}

const tensorNames = (f: StFile) => Object.keys(f.header).filter((k) => k !== "__metadata__");
const entryOf = (f: StFile, name: string) =>
  f.header[name] as { dtype: string; shape: number[]; data_offsets: [number, number] };

// A header edit applied to a copy of the file's header.
function edited(f: StFile, edit: (h: Record<string, unknown>) => void): StFile {
  const header = structuredClone(f.header);
  edit(header);
  return { header, buffer: f.buffer };
}

function stMutant(d: Draws, f: StFile): Mutant {
  const bytes = stBytes(f);
  const headerEnd = bytes.length - f.buffer.length;
  const names = tensorNames(f);
  const name = d.pick(names);
  const e = entryOf(f, name);
  const kind = d.int(0, 14);
  switch (kind) {
    case 0: { // a flipped bit in the buffer changes values, never validity
      if (f.buffer.length === 0) break;
      const at = d.int(headerEnd, bytes.length);
      return {
        what: `flip buffer byte ${at}`,
        bytes: flipBit(bytes, at, d.int(0, 8)),
        expect: "valid",
      };
    }
    case 1: {
      const at = d.int(8, headerEnd);
      return {
        what: `flip header byte ${at}`,
        bytes: flipBit(bytes, at, d.int(0, 8)),
        expect: "either",
      };
    }
    case 2: {
      const at = d.int(0, 8);
      return {
        what: `flip length byte ${at}`,
        bytes: flipBit(bytes, at, d.int(0, 8)),
        expect: "either",
      };
    }
    case 3: {
      const keep = d.int(0, bytes.length);
      return { what: `truncate to ${keep} bytes`, bytes: bytes.slice(0, keep), expect: "invalid" };
    }
    case 4: {
      const extra = d.bytes(d.int(1, 17));
      return {
        what: `append ${extra.length} bytes`,
        bytes: concat(bytes, extra),
        expect: "invalid",
      };
    }
    case 5: { // a length field that no longer matches the header
      const n = headerEnd - 8;
      const wrong = d.pick([0, 1, n - 1, n + 1, n + 8, d.int(0, 2 * n + 16), 2 ** 40]);
      if (wrong === n) break;
      const out = bytes.slice();
      new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, wrong)), true);
      return { what: `length field ${n} -> ${wrong}`, bytes: out, expect: "either" };
    }
    case 6: { // renaming a tensor keeps the file valid
      const to = `renamed.${d.int(0, 1000)}`;
      const g = edited(f, (h) => {
        h[to] = h[name];
        delete h[name];
      });
      return { what: `rename "${name}" -> "${to}"`, bytes: stBytes(g), expect: "valid" };
    }
    case 7: {
      const g = edited(f, (h) => (h.__metadata__ = { note: `edited ${d.int(0, 99)}`, x: "" }));
      return { what: "replace __metadata__", bytes: stBytes(g), expect: "valid" };
    }
    case 8: { // a dtype of the same width reads the same bytes differently
      const same = Object.keys(ST_BYTES).filter((t) => ST_BYTES[t] === ST_BYTES[e.dtype]);
      const to = d.pick(same);
      const g = edited(f, (h) => (entryOf({ header: h, buffer: f.buffer }, name).dtype = to));
      return { what: `dtype of "${name}" ${e.dtype} -> ${to}`, bytes: stBytes(g), expect: "valid" };
    }
    case 9: { // a shape with the same element count
      const to = d.pick([[product(e.shape)], [1, product(e.shape)], [product(e.shape), 1]]);
      const g = edited(f, (h) => (entryOf({ header: h, buffer: f.buffer }, name).shape = to));
      return { what: `shape of "${name}" -> [${to}]`, bytes: stBytes(g), expect: "valid" };
    }
    case 10: { // offsets, dtype or shape changed to something else: the reference decides
      const g = edited(f, (h) => {
        const t = entryOf({ header: h, buffer: f.buffer }, name);
        const k = d.int(0, 4);
        if (k === 0) t.data_offsets = [t.data_offsets[0] + d.int(-3, 4), t.data_offsets[1]];
        else if (k === 1) t.data_offsets = [t.data_offsets[0], t.data_offsets[1] + d.int(-3, 4)];
        else if (k === 2) t.dtype = d.pick([...Object.keys(ST_BYTES), "F8", "f32", "toString"]);
        else t.shape = [...t.shape, d.int(0, 3)];
      });
      return { what: `edit entry "${name}"`, bytes: stBytes(g), expect: "either" };
    }
    case 11: { // fields of the wrong type or sign
      const bad = d.pick<unknown>([null, "3", -1, 1.5, [], {}, [1, 2, 3], 2 ** 60, true]);
      const field = d.pick(["dtype", "shape", "data_offsets"]);
      const g = edited(f, (h) => {
        (h[name] as Record<string, unknown>)[field] = field === "shape" && Array.isArray(bad)
          ? [...bad, -1]
          : bad;
      });
      return {
        what: `"${name}".${field} = ${JSON.stringify(bad)}`,
        bytes: stBytes(g),
        expect: "invalid",
      };
    }
    case 12: { // a dropped entry leaves its bytes unindexed (harmless only for an empty tensor)
      const g = edited(f, (h) => delete h[name]);
      return { what: `delete "${name}"`, bytes: stBytes(g), expect: "either" };
    }
    case 13: // JSON allows trailing whitespace: padding keeps the file valid
      return { what: "pad the header", bytes: stBytes(f, d.int(1, 9)), expect: "valid" };
  }
  const at = d.int(0, bytes.length);
  const out = bytes.slice();
  out[at] = d.int(0, 256);
  return { what: `overwrite byte ${at}`, bytes: out, expect: "either" };
}

function sameTensor(got: DecodedTensor, want: RefTensor, name: string): void {
  assert.equal(got.dtype, want.dtype, `${name} dtype`);
  assert.deepEqual(got.shape, want.shape, `${name} shape`);
  assert.equal(got.data.length, want.values.length, `${name} length`);
  got.data.forEach((x, i) => {
    if (!Object.is(x, want.values[i])) {
      assert.fail(`${name}[${i}] decoded ${x}, the bytes say ${want.values[i]}`);
    }
  });
}

// ---------------------------------------------------------------- IDX: reference and files

const IDX_TYPES: Readonly<Record<number, [string, number]>> = {
  0x08: ["uint8", 1],
  0x09: ["int8", 1],
  0x0b: ["int16", 2],
  0x0c: ["int32", 4],
  0x0d: ["float32", 4],
  0x0e: ["float64", 8],
};

/** What an IDX file holds by the format, or undefined when it breaks a rule. */
function referenceIdx(
  raw: Uint8Array,
): { dtype: string; dims: number[]; values: number[] } | undefined {
  let bytes = raw;
  if (raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b) {
    try {
      bytes = new Uint8Array(gunzipSync(raw));
    } catch {
      return undefined;
    }
  }
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0 || !(bytes[2] in IDX_TYPES)) {
    return undefined;
  }
  const [dtype, size] = IDX_TYPES[bytes[2]];
  const ndims = bytes[3];
  const start = 4 + 4 * ndims;
  if (ndims === 0 || bytes.length < start) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dims = Array.from({ length: ndims }, (_, i) => v.getUint32(4 + 4 * i));
  const count = product(dims);
  if (bytes.length - start !== count * size) return undefined;
  const values = Array.from({ length: count }, (_, i) => {
    const at = start + i * size;
    switch (dtype) {
      case "uint8":
        return v.getUint8(at);
      case "int8":
        return v.getInt8(at);
      case "int16":
        return v.getInt16(at);
      case "int32":
        return v.getInt32(at);
      case "float32":
        return v.getFloat32(at);
      default:
        return v.getFloat64(at);
    }
  });
  return { dtype, dims, values };
}

function idxFile(d: Draws): Uint8Array {
  const code = d.pick(Object.keys(IDX_TYPES).map(Number));
  const dims = Array.from({ length: d.int(1, 4) }, () => d.int(0, 5));
  const head = new Uint8Array(4 + 4 * dims.length);
  head.set([0, 0, code, dims.length]);
  dims.forEach((x, i) => new DataView(head.buffer).setUint32(4 + 4 * i, x));
  return concat(head, d.bytes(product(dims) * IDX_TYPES[code][1]));
}

function idxMutant(d: Draws, plain: Uint8Array): Mutant {
  const ndims = plain[3], start = 4 + 4 * ndims;
  const kind = d.int(0, 9);
  let m: Mutant;
  switch (kind) {
    case 0: {
      if (plain.length === start) {
        m = { what: "unchanged", bytes: plain, expect: "valid" };
        break;
      }
      const at = d.int(start, plain.length);
      m = { what: `flip data byte ${at}`, bytes: flipBit(plain, at, d.int(0, 8)), expect: "valid" };
      break;
    }
    case 1: {
      const at = d.int(0, start);
      m = {
        what: `flip header byte ${at}`,
        bytes: flipBit(plain, at, d.int(0, 8)),
        expect: "either",
      };
      break;
    }
    case 2: {
      const keep = d.int(0, plain.length);
      m = { what: `truncate to ${keep} bytes`, bytes: plain.slice(0, keep), expect: "invalid" };
      break;
    }
    case 3: {
      const extra = d.bytes(d.int(1, 9));
      m = { what: `append ${extra.length} bytes`, bytes: concat(plain, extra), expect: "invalid" };
      break;
    }
    case 4: { // a size field changed to any value, huge ones included
      const out = plain.slice(), i = d.int(0, ndims);
      const to = d.pick([0, 1, d.int(0, 9), 0xffffffff, 0x40000000]);
      new DataView(out.buffer).setUint32(4 + 4 * i, to);
      m = { what: `dim ${i} -> ${to}`, bytes: out, expect: "either" };
      break;
    }
    case 5: { // reversed dims keep the element count
      const out = plain.slice();
      const v = new DataView(out.buffer);
      const dims = Array.from({ length: ndims }, (_, i) => v.getUint32(4 + 4 * i)).reverse();
      dims.forEach((x, i) => v.setUint32(4 + 4 * i, x));
      m = { what: "reverse dims", bytes: out, expect: "valid" };
      break;
    }
    case 6: {
      const out = plain.slice();
      out[3] = d.pick([0, ndims - 1, ndims + 1, 255]);
      m = { what: `ndims ${ndims} -> ${out[3]}`, bytes: out, expect: "either" };
      break;
    }
    case 7: {
      const out = plain.slice();
      out[2] = d.int(0, 256);
      m = { what: `dtype byte -> 0x${out[2].toString(16)}`, bytes: out, expect: "either" };
      break;
    }
    default: {
      const at = d.int(0, plain.length);
      const out = plain.slice();
      out[at] = d.int(0, 256);
      m = { what: `overwrite byte ${at}`, bytes: out, expect: "either" };
    }
  }
  // Half the cases go through gzip: the mutant gzip'd (same outcome), or a damaged gzip stream.
  const gz = d.int(0, 4);
  if (gz === 1) {
    return { ...m, what: `${m.what}, gzip'd`, bytes: new Uint8Array(gzipSync(m.bytes)) };
  }
  if (gz === 2) {
    const z = new Uint8Array(gzipSync(plain));
    const at = d.int(0, z.length);
    const cut = d.int(0, 2) === 0;
    return {
      what: cut ? `gzip'd, truncated to ${at} bytes` : `gzip'd, byte ${at} flipped`,
      bytes: cut ? z.slice(0, at) : flipBit(z, at, d.int(0, 8)),
      expect: cut ? "invalid" : "either",
    };
  }
  return m;
}

// ---------------------------------------------------------------- the runs

function checkExpectation(expect: Expect, valid: boolean, ctx: string): void {
  if (expect === "valid") assert.ok(valid, `${ctx}: the mutation should keep the file valid`);
  if (expect === "invalid") assert.ok(!valid, `${ctx}: the mutation should break the file`);
}

Deno.test("fuzz: decodeSafetensors() and parseIdx() on mutated files", async () => {
  const root = rng(SEED);
  const dir = await Deno.makeTempDir();
  let stErrors = 0, idxErrors = 0;
  try {
    for (let i = 0; i < CASES; i++) {
      const d = new Draws(fold(fold(root, 1), i));
      const m = stMutant(d, stFile(d));
      const ctx = `safetensors case ${i} (FUZZ_SEED=${SEED}): ${m.what}`;
      let got;
      try {
        got = decodeSafetensors(m.bytes);
      } catch (e) {
        assert.fail(`${ctx}: threw ${(e as Error).name}: ${(e as Error).message}`);
      }
      const want = referenceSafetensors(m.bytes);
      checkExpectation(m.expect, want !== undefined, ctx);
      if (want === undefined) {
        assert.ok(E.isLeft(got), `${ctx}: decoded a file that breaks the format`);
        stErrors++;
        assert.ok(got.left.length > 0, ctx);
        for (const p of got.left) assert.ok(p.length > 0 && !p.includes("\n"), `${ctx}: "${p}"`);
        const line = formatProblems("f.safetensors", got.left);
        assert.ok(!line.includes("\n") && line.length < 2000, `${ctx}: ${line}`);
      } else {
        assert.ok(E.isRight(got), `${ctx}: rejected a valid file: ${E.isLeft(got) && got.left}`);
        assert.deepEqual(Object.keys(got.right.tensors).sort(), Object.keys(want.tensors).sort());
        for (const [name, t] of Object.entries(want.tensors)) {
          sameTensor(got.right.tensors[name], t, `${ctx}: "${name}"`);
        }
        assert.deepEqual(got.right.metadata, want.metadata, ctx);
      }
      // The streaming file reader makes the same call, on every tenth case.
      if (i % 10 === 0) {
        const path = join(dir, `case${i}.safetensors`);
        await Deno.writeFile(path, m.bytes);
        try {
          const r = await readSafetensors(path);
          assert.ok(want !== undefined, `${ctx}: readSafetensors() read a broken file`);
          assert.deepEqual(Object.keys(r.tensors).sort(), Object.keys(want.tensors).sort());
        } catch (e) {
          if (e instanceof assert.AssertionError) throw e;
          assert.ok(
            want === undefined,
            `${ctx}: readSafetensors() failed: ${(e as Error).message}`,
          );
          const msg = (e as Error).message;
          assert.ok(msg.startsWith(`Cannot read safetensors file "${path}": `), `${ctx}: ${msg}`);
          assert.ok(!msg.includes("\n"), ctx);
        }
      }
    }
    for (let i = 0; i < CASES; i++) {
      const d = new Draws(fold(fold(root, 2), i));
      const m = idxMutant(d, idxFile(d));
      const ctx = `idx case ${i} (FUZZ_SEED=${SEED}): ${m.what}`;
      let got;
      try {
        got = parseIdx(m.bytes, "f.idx");
      } catch (e) {
        assert.fail(`${ctx}: threw ${(e as Error).name}: ${(e as Error).message}`);
      }
      const want = referenceIdx(m.bytes);
      checkExpectation(m.expect, want !== undefined, ctx);
      if (want === undefined) {
        assert.ok(E.isLeft(got), `${ctx}: parsed a file that breaks the format`);
        idxErrors++;
        assert.ok(got.left.startsWith('Cannot read IDX file "f.idx": '), `${ctx}: ${got.left}`);
        assert.ok(!got.left.includes("\n"), ctx);
      } else {
        assert.ok(E.isRight(got), `${ctx}: rejected a valid file: ${E.isLeft(got) && got.left}`);
        assert.equal(got.right.dtype, want.dtype, ctx);
        assert.deepEqual(got.right.dims, want.dims, ctx);
        assert.equal(got.right.data.length, want.values.length, ctx);
        got.right.data.forEach((x, k) => {
          if (!Object.is(x, want.values[k])) {
            assert.fail(`${ctx}: [${k}] is ${x}, not ${want.values[k]}`);
          }
        });
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  console.log(
    `fuzz: ${CASES} safetensors cases, ${CASES} idx cases (seed ${SEED}; ${stErrors} and ` +
      `${idxErrors} clean errors, the rest exact decodes)`,
  );
});
