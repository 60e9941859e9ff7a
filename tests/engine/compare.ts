// Shared by the kernel tests: seeded inputs as plain arrays, one computation run on a chosen
// backend, and a comparison of outputs scaled by the largest expected magnitude.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { rng, uniformArray } from "../../lib/random.ts";

export interface Input {
  readonly values: Float32Array;
  readonly shape: number[];
}

/** Values uniform in [lo, hi) drawn from `seed`. */
export function input(seed: number, shape: number[], lo = -1, hi = 1): Input {
  const values = uniformArray(rng(seed), shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < values.length; i++) values[i] = lo + (hi - lo) * values[i];
  return { values, shape };
}

/** Run `f` on `backend` with fresh tensors made from `inputs`; return every output's values. */
export async function on(
  backend: string,
  inputs: Input[],
  f: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
): Promise<Float32Array[]> {
  await tf.setBackend(backend);
  const ts = inputs.map((i) => tf.tensor(i.values, i.shape));
  const out = f(...ts);
  const outs = Array.isArray(out) ? out : [out];
  const values = await Promise.all(outs.map((o) => o.data() as Promise<Float32Array>));
  tf.dispose([...ts, ...outs]);
  await tf.setBackend("wasm");
  return values;
}

/** Every output within tol × max(1, max |expected|) of the expectation. */
export function assertOutputsClose(
  actual: Float32Array[],
  expected: Float32Array[],
  tol: number,
  what: string,
): void {
  assert.equal(actual.length, expected.length, `${what}: output count`);
  actual.forEach((a, k) => {
    const e = expected[k];
    assert.equal(a.length, e.length, `${what}: output ${k} size`);
    let scale = 1;
    for (const v of e) scale = Math.max(scale, Math.abs(v));
    for (let i = 0; i < a.length; i++) {
      if (!(Math.abs(a[i] - e[i]) <= tol * scale)) {
        assert.fail(`${what}: output ${k}[${i}] = ${a[i]}, expected ${e[i]} (scale ${scale})`);
      }
    }
  });
}
