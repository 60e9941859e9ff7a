import assert from "node:assert/strict";
import * as E from "fp-ts/lib/Either.js";
import { join } from "node:path";
import {
  decodeSafetensors,
  encodeSafetensors,
  formatProblems,
  readSafetensors,
  writeSafetensors,
} from "../../lib/io/safetensors.ts";

// A file built by hand from the format description: u64 header length, JSON header, buffer.
function build(header: unknown, buffer: Uint8Array, headerLength?: number): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + buffer.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength ?? json.length), true);
  out.set(json, 8);
  out.set(buffer, 8 + json.length);
  return out;
}

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

function problems(bytes: Uint8Array): string[] {
  const r = decodeSafetensors(bytes);
  assert.ok(E.isLeft(r), "expected a decoding failure");
  return r.left;
}

Deno.test("encodeSafetensors() round trips shapes, values and metadata", () => {
  const tensors = {
    "input_blocks.0.0.weight": {
      dtype: "F32",
      shape: [3, 3, 1, 4],
      data: Float32Array.from({ length: 36 }, (_, i) => i / 7 - 2),
    },
    scalar: { dtype: "F32", shape: [], data: new Float32Array([Math.PI]) },
    empty: { dtype: "F32", shape: [0, 5], data: new Float32Array(0) },
    labels: { dtype: "I32", shape: [4], data: new Int32Array([0, -1, 2 ** 31 - 1, 7]) },
  } as const;
  const bytes = encodeSafetensors(tensors, { step: "12", note: "héllo" });
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal(headerLength % 8, 0, "header padded so the buffer is 8-byte aligned");
  const r = decodeSafetensors(bytes);
  assert.ok(E.isRight(r), E.isLeft(r) ? r.left.join("; ") : "");
  const decoded = r.right;
  assert.deepEqual(decoded.metadata, { step: "12", note: "héllo" });
  assert.deepEqual(Object.keys(decoded.tensors), Object.keys(tensors));
  for (const [name, t] of Object.entries(tensors)) {
    const d = decoded.tensors[name];
    assert.equal(d.dtype, t.dtype);
    assert.deepEqual(d.shape, t.shape);
    assert.deepEqual(d.data, t.data);
  }
});

Deno.test("decodeSafetensors() reads a hand-built file with every dtype", () => {
  const f64 = new Float64Array([1.5, -2.25]);
  const f16 = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x3555]);
  const bf16 = new Uint16Array([0x3f80, 0x4049, 0xbf80]);
  const i64 = new BigInt64Array([-3n, 5n]);
  const i8 = new Int8Array([-128, 127]);
  const u8 = new Uint8Array([0, 255]);
  const parts = [f64, f16, bf16, i64, i8, u8].map(bytesOf);
  const names = ["f64", "f16", "bf16", "i64", "i8", "u8"];
  const dtypes = ["F64", "F16", "BF16", "I64", "I8", "U8"];
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let at = 0;
  parts.forEach((p, i) => {
    const n = [2, 6, 3, 2, 2, 2][i];
    header[names[i]] = { dtype: dtypes[i], shape: [n], data_offsets: [at, at + p.length] };
    at += p.length;
  });
  const buffer = new Uint8Array(at);
  parts.reduce((o, p) => (buffer.set(p, o), o + p.length), 0);
  const r = decodeSafetensors(build(header, buffer));
  assert.ok(E.isRight(r), E.isLeft(r) ? r.left.join("; ") : "");
  const t = r.right.tensors;
  assert.deepEqual([...t.f64.data], [1.5, -2.25]);
  assert.deepEqual([...t.f16.data].slice(0, 5), [1, -2, 65504, 2 ** -24, Infinity]);
  assert.ok(Math.abs(t.f16.data[5] - 1 / 3) < 1e-3);
  assert.deepEqual([...t.bf16.data], [1, 3.140625, -1]);
  assert.ok(t.i64.data instanceof Int32Array);
  assert.deepEqual([...t.i64.data], [-3, 5]);
  assert.deepEqual([...t.i8.data], [-128, 127]);
  assert.deepEqual([...t.u8.data], [0, 255]);
  assert.equal(t.f16.dtype, "F16");
});

Deno.test("decodeSafetensors() collects every problem of a corrupt file", async (t) => {
  const ok = {
    a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
    b: { dtype: "F32", shape: [1], data_offsets: [8, 12] },
  };
  const buf = new Uint8Array(12);
  const cases: [string, Uint8Array, RegExp[]][] = [
    ["file shorter than 8 bytes", new Uint8Array(3), [/shorter than the 8-byte header length/]],
    ["huge header length", build(ok, buf, 2 ** 40), [/header length 1099511627776 exceeds/]],
    ["truncated header", build(ok, buf).subarray(0, 30), [/exceeds the 22 bytes/]],
    ["truncated data", build(ok, buf).subarray(0, build(ok, buf).length - 2), [
      /"b" ends at byte 12, past the 10-byte buffer/,
    ]],
    ["bad JSON", build('{"a": [', buf), [/not valid JSON/]],
    ["JSON not an object", build("[1, 2]", buf), [/not a JSON object/]],
    ["unknown dtype", build({ ...ok, a: { ...ok.a, dtype: "F8" } }, buf), [
      /"a" has unknown dtype "F8"/,
    ]],
    ["size not matching shape", build({ ...ok, a: { ...ok.a, shape: [3] } }, buf), [
      /"a" spans 8 bytes but F32 \[3\] needs 12/,
    ]],
    ["overlap", build({ ...ok, b: { ...ok.b, data_offsets: [4, 8] } }, buf), [
      /"b" overlaps "a"/,
      /buffer is 12 bytes but tensors index 8/,
    ]],
    ["out of range", build({ ...ok, b: { ...ok.b, data_offsets: [12, 16] } }, buf), [
      /not indexed/,
      /ends at byte 16/,
    ]],
    ["extra bytes", build(ok, new Uint8Array(16)), [/buffer is 16 bytes but tensors index 12/]],
    ["bad metadata", build({ ...ok, __metadata__: { step: 3 } }, buf), [
      /__metadata__ is not a map of strings/,
    ]],
    [
      "several faults at once",
      build(
        { a: { dtype: "X", shape: [-1], data_offsets: [5, 1] }, b: ok.b, __metadata__: [] },
        buf,
      ),
      [
        /unknown dtype "X"/,
        /bad shape \[-1\]/,
        /bad data_offsets \[5,1\]/,
        /__metadata__/,
        /bytes 0\.\.8 before "b"/,
      ],
    ],
  ];
  const dir = await Deno.makeTempDir();
  try {
    for (const [name, bytes, expected] of cases) {
      await t.step(name, async () => {
        const found = problems(bytes);
        for (const re of expected) {
          assert.ok(found.some((p) => re.test(p)), `${re} not in ${JSON.stringify(found)}`);
        }
        // The file reader (a separate, streaming path) reports the same, in one line.
        const path = join(dir, "bad.safetensors");
        await Deno.writeFile(path, bytes);
        await assert.rejects(() => readSafetensors(path), (e: Error) => {
          assert.ok(e.message.startsWith(`Cannot read safetensors file "${path}": `), e.message);
          assert.ok(!e.message.includes("\n"), "one line");
          for (const re of expected) assert.match(e.message, re);
          return true;
        });
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readSafetensors() throws one line naming the file and the fault", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "model.safetensors");
    await writeSafetensors(path, {
      w: { dtype: "F32", shape: [4], data: new Float32Array([1, 2, 3, 4]) },
    });
    assert.deepEqual([...(await readSafetensors(path)).tensors.w.data], [1, 2, 3, 4]);
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 3));
    await assert.rejects(() => readSafetensors(path), (e: Error) => {
      assert.match(
        e.message,
        /^Cannot read safetensors file ".*model\.safetensors": .*past the 13-byte buffer/,
      );
      assert.ok(!e.message.includes("\n"));
      return true;
    });
    await assert.rejects(
      () => readSafetensors(join(dir, "missing.safetensors")),
      /"[^"]*missing\.safetensors": No such file/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("encodeSafetensors() rejects data that does not match its shape", () => {
  assert.throws(
    () => encodeSafetensors({ w: { dtype: "F32", shape: [2, 2], data: new Float32Array(3) } }),
    /Tensor "w" has shape \[2,2\] but 3 values/,
  );
});

Deno.test("readSafetensors() on a truncated file with many tensors gives a short line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "ckpt.safetensors");
    const tensors = Object.fromEntries(
      Array.from({ length: 500 }, (_, i) => [
        `input_blocks.${i}.0.in_layers.2.weight`,
        { dtype: "F32" as const, shape: [3, 3, 4, 4], data: new Float32Array(144) },
      ]),
    );
    await writeSafetensors(path, tensors);
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, Math.floor(bytes.length / 2)));
    await assert.rejects(() => readSafetensors(path), (e: Error) => {
      assert.ok(e.message.startsWith(`Cannot read safetensors file "${path}": `), e.message);
      assert.ok(e.message.length < 1000, `${e.message.length} characters`);
      assert.match(e.message, /past the \d+-byte buffer.*; … and \d+ more$/);
      assert.ok(!e.message.includes("\n"));
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("formatProblems() lists a few faults and counts the rest", () => {
  const faults = Array.from({ length: 417 }, (_, i) => `tensor "t${i}" is bad`);
  assert.equal(
    formatProblems("x.safetensors", faults),
    'Cannot read safetensors file "x.safetensors": tensor "t0" is bad; tensor "t1" is bad; ' +
      'tensor "t2" is bad; tensor "t3" is bad; tensor "t4" is bad; … and 412 more',
  );
  assert.equal(formatProblems("x", ["a", "b"]), 'Cannot read safetensors file "x": a; b');
});

Deno.test("writeSafetensors() errors name the file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "w.safetensors");
    await assert.rejects(
      () =>
        writeSafetensors(path, { w: { dtype: "F32", shape: [2, 2], data: new Float32Array(3) } }),
      {
        message: `Cannot write safetensors file "${path}": Tensor "w" has shape [2,2] but 3 values`,
      },
    );
    await Deno.mkdir(join(path, "taken"), { recursive: true }); // the target is a folder
    await assert.rejects(
      () => writeSafetensors(path, { w: { dtype: "F32", shape: [1], data: new Float32Array(1) } }),
      (e: Error) => {
        assert.ok(e.message.startsWith(`Cannot write "${path}": `), e.message);
        return true;
      },
    );
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["w.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeSafetensors() clears the temp files that dead writers left for its target", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const child = new Deno.Command("true").spawn();
    await child.status;
    const path = join(dir, "last.safetensors");
    const stale = join(dir, `.last.safetensors.${child.pid}.deadbeef.tmp`);
    await Deno.writeFile(stale, new Uint8Array(64));
    await writeSafetensors(path, { w: { dtype: "F32", shape: [1], data: new Float32Array(1) } });
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["last.safetensors"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
