import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { join } from "node:path";
import { initEngine } from "../../lib/engine/mod.ts";
import {
  disposeCheckpoint,
  loadCheckpoint,
  loadParamsStrict,
  saveCheckpoint,
} from "../../lib/io/checkpoint.ts";
import { disposeParams } from "../../lib/params.ts";

await initEngine({ backend: "wasm", announce: false });

Deno.test("saveCheckpoint() and loadCheckpoint() round trip params, EMA, optimiser state and meta", async () => {
  const dir = await Deno.makeTempDir();
  const before = tf.memory().numTensors;
  try {
    const params = tf.tidy(() => ({ // tidy frees the initial values the variables copied
      "out.0.weight": tf.variable(tf.tensor1d([1, 2, 3])),
      "input_blocks.0.0.weight": tf.variable(tf.randomNormal([3, 3, 1, 4], 0, 1, "float32", 7)),
    }));
    const ema = { "out.0.weight": tf.tensor1d([0.5, 1, 1.5]) };
    const optState = {
      "m.out.0.weight": tf.tensor1d([0.1, 0.2, 0.3]),
      count: tf.scalar(42, "int32"),
    };
    const meta = { rng: { key: [123, 456] }, config: { model: "tiny", lr: 1e-4 } };
    const path = join(dir, "ckpt.safetensors");
    await saveCheckpoint(path, { params, ema, optState, step: 1000, meta });

    const c = await loadCheckpoint(path);
    assert.equal(c.step, 1000);
    assert.deepEqual(c.meta, meta);
    assert.deepEqual(Object.keys(c.params).sort(), Object.keys(params).sort());
    for (const [k, v] of Object.entries(params)) {
      assert.deepEqual(c.params[k].shape, v.shape);
      assert.deepEqual(await c.params[k].data(), await v.data());
    }
    assert.deepEqual(await c.ema["out.0.weight"].data(), await ema["out.0.weight"].data());
    assert.deepEqual(Object.keys(c.optState).sort(), ["count", "m.out.0.weight"]);
    assert.equal(c.optState.count.dtype, "int32");
    assert.equal((await c.optState.count.data())[0], 42);
    disposeCheckpoint(c);
    tf.dispose([...Object.values(params), ...Object.values(ema), ...Object.values(optState)]);
    assert.equal(tf.memory().numTensors, before, "no tensor leaks");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("saveCheckpoint() refuses parameter names that clash with the reserved prefixes", async () => {
  const p = { "ema.w": tf.scalar(1) };
  await assert.rejects(
    () => saveCheckpoint("/nonexistent/x", { params: p, step: 0 }),
    /reserved.*"ema\.w"/,
  );
  tf.dispose(p["ema.w"]);
});

Deno.test("loadCheckpoint() fails with one line on a truncated file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "ckpt.safetensors");
    const w = tf.zeros([16]);
    await saveCheckpoint(path, { params: { w }, step: 3 });
    w.dispose();
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 10));
    const before = tf.memory().numTensors;
    await assert.rejects(
      () => loadCheckpoint(path),
      /^Error: Cannot read safetensors file ".*ckpt\.safetensors": [^\n]*$/,
    );
    assert.equal(tf.memory().numTensors, before, "nothing loaded from a corrupt file");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadParamsStrict() reports every missing, extra and misshapen key at once", () => {
  const expected = { a: [2], b: [3, 3], c: [1] };
  const tensors = { a: tf.zeros([2]), b: tf.zeros([3]), d: tf.zeros([4]) };
  assert.throws(() => loadParamsStrict(expected, tensors, "weights.safetensors"), (e: Error) => {
    assert.match(e.message, /in weights\.safetensors/);
    assert.match(e.message, /1 missing \(c\)/);
    assert.match(e.message, /1 unexpected \(d\)/);
    assert.match(e.message, /1 misshapen \(b expected \[3, 3\] got \[3\]\)/);
    return true;
  });
  tf.dispose(Object.values(tensors));

  const before = tf.memory().numTensors;
  const good = { a: tf.tensor1d([1, 2]), c: tf.tensor1d([3]) };
  const p = loadParamsStrict({ a: [2], c: [1] }, good);
  assert.ok(p.a instanceof tf.Variable);
  assert.deepEqual([...p.a.dataSync()], [1, 2]);
  disposeParams(p);
  assert.equal(tf.memory().numTensors, before, "inputs taken over, no leaks");
});
