// Off-heap frozen weights (lib/offheap_params.ts): the same features as weights on the heap
// (fp32 storage exactly; bf16 storage exactly those of bf16-rounded weights), a heap that holds
// no weights between passes, no tensor left behind by a pass, release without materialising.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initEngine } from "../lib/engine/mod.ts";
import { features, initParams, inputShape, presetSpec } from "../lib/models/mod.ts";
import {
  fromBf16Bits,
  isOffHeap,
  offHeapBytes,
  offHeapParams,
  toBf16Bits,
} from "../lib/offheap_params.ts";
import { disposeParams, type Params } from "../lib/params.ts";
import { forInference } from "../lib/probe_run.ts";
import { namedSchedule } from "../lib/diffusion/schedule.ts";
import { rng } from "../lib/random.ts";

await initEngine({ backend: "wasm", announce: false });
const spec = presetSpec("unet", "tiny");
const BLOCKS = [2, 4];

/** Features at BLOCKS of a fixed batch, as plain arrays; inside tf.tidy, as extraction runs. */
function featuresOf(p: Params): Float32Array[] {
  return tf.tidy(() => {
    const x = tf.randomNormal([3, ...inputShape(spec)], 0, 1, "float32", 7) as tf.Tensor4D;
    const t = tf.tensor1d([5, 300, 900], "int32");
    const maps = features(spec, p, x, t, BLOCKS);
    return BLOCKS.map((b) => maps.get(b)!.dataSync() as Float32Array);
  });
}

Deno.test("bf16 bits: round to nearest even, exact back, NaN and infinities kept", () => {
  const x = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, Infinity, NaN, 3 * 2 ** -133]);
  const back = fromBf16Bits(toBf16Bits(x));
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: to even (1); 1 + 3·2^-8 to 1 + 2^-6.
  assert.deepEqual([...back.slice(0, 5)], [1, 1, 1 + 2 ** -6, -2.5, Infinity]);
  assert.ok(Number.isNaN(back[5]));
  assert.equal(back[6], 3 * 2 ** -133); // a subnormal with few bits is exact
});

Deno.test("off-heap fp32 weights: the same features, no weights or tensors left on the heap", () => {
  const onHeap = initParams(spec, rng(3));
  const want = featuresOf(onHeap);
  const bytes = Object.values(onHeap).reduce((n, v) => n + v.size * 4, 0);
  const copy = initParams(spec, rng(3));
  const before = tf.memory();
  const off = offHeapParams(copy);
  const after = tf.memory();
  assert.ok(isOffHeap(off) && !isOffHeap(onHeap));
  assert.equal(before.numBytes - after.numBytes, bytes, "the weights left the heap");
  assert.deepEqual(offHeapBytes(off), { bytes, storage: "fp32" });
  assert.deepEqual(Object.keys(off).sort(), Object.keys(onHeap).sort());
  for (let i = 0; i < 2; i++) {
    const got = featuresOf(off);
    got.forEach((g, k) => assert.deepEqual(g, want[k], `block ${BLOCKS[k]}, pass ${i}`));
    assert.equal(tf.memory().numTensors, after.numTensors, "a pass left tensors behind");
  }
  disposeParams(off); // releases the arrays, materialises nothing
  assert.equal(tf.memory().numTensors, after.numTensors);
  assert.equal(offHeapBytes(off)?.bytes, 0);
  disposeParams(onHeap);
});

Deno.test("off-heap bf16 weights: exactly the features of bf16-rounded weights", () => {
  const p = initParams(spec, rng(4));
  const rounded: Record<string, tf.Variable> = {};
  for (const [k, v] of Object.entries(p)) {
    rounded[k] = tf.variable(
      tf.tensor(fromBf16Bits(toBf16Bits(v.dataSync() as Float32Array)), v.shape),
    );
  }
  const want = featuresOf(rounded);
  const off = offHeapParams(p, "bf16");
  const bytes = Object.values(rounded).reduce((n, v) => n + v.size * 2, 0);
  assert.deepEqual(offHeapBytes(off), { bytes, storage: "bf16" });
  featuresOf(off).forEach((g, k) => assert.deepEqual(g, want[k], `block ${BLOCKS[k]}`));
  disposeParams(off);
  disposeParams(rounded);
});

Deno.test("forInference moves weights over a quarter of the heap limit, with one line", () => {
  const p = initParams(spec, rng(5));
  const bytes = Object.values(p).reduce((n, v) => n + v.size * 4, 0);
  const model = { spec, params: p, schedule: namedSchedule("linear", 1000) };
  const lines: string[] = [];
  const kept = forInference(model, (l) => lines.push(l), 4 * bytes);
  assert.equal(kept, model, "at a quarter of the limit the weights stay");
  const moved = forInference(model, (l) => lines.push(l), 4 * bytes - 4);
  assert.ok(isOffHeap(moved.params));
  assert.equal(lines.length, 1);
  assert.match(lines[0], /kept off the wasm heap \(fp32\)/);
  assert.equal(forInference(model, () => {}, undefined), model, "no limit (not wasm): as is");
  disposeParams(moved.params);
});
