// Assertions for tests: node:assert/strict (jsr:@std/assert is unreachable here) plus closeness
// checks for float arrays and tensors.
import * as assertStrict from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";

// Node's messages include a diff only when no message is passed, so pass one only when given.
export function assert(value: unknown, message?: string): asserts value {
  if (message === undefined) assertStrict.ok(value);
  else assertStrict.ok(value, message);
}
export function assertEquals<T>(actual: T, expected: T, message?: string): void {
  if (message === undefined) assertStrict.deepStrictEqual(actual, expected);
  else assertStrict.deepStrictEqual(actual, expected, message);
}
export function assertNotEquals<T>(actual: T, expected: T, message?: string): void {
  if (message === undefined) assertStrict.notDeepStrictEqual(actual, expected);
  else assertStrict.notDeepStrictEqual(actual, expected, message);
}
export const assertThrows = assertStrict.throws;
export const assertRejects = assertStrict.rejects;

/** Largest |a - b| / (atol + rtol·|b|) over the elements; ≤ 1 means close. */
export function closeness(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  rtol: number,
  atol: number,
): number {
  assertStrict.equal(a.length, b.length, `length ${a.length} != ${b.length}` as string);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) || Number.isNaN(b[i])) return Infinity;
    worst = Math.max(worst, Math.abs(a[i] - b[i]) / (atol + rtol * Math.abs(b[i])));
  }
  return worst;
}

/** Assert two arrays or tensors agree elementwise within atol + rtol·|expected|. */
export function assertClose(
  actual: ArrayLike<number> | tf.Tensor,
  expected: ArrayLike<number> | tf.Tensor,
  { rtol = 1e-5, atol = 1e-6, message = "" } = {},
): void {
  const arr = (x: ArrayLike<number> | tf.Tensor) => (x instanceof tf.Tensor ? x.dataSync() : x);
  if (actual instanceof tf.Tensor && expected instanceof tf.Tensor) {
    assertStrict.deepStrictEqual(actual.shape, expected.shape, `${message} shape`);
  }
  const c = closeness(arr(actual), arr(expected), rtol, atol);
  assertStrict.ok(
    c <= 1,
    `${message} not close: worst error ${c.toFixed(3)}× tolerance (rtol ${rtol}, atol ${atol})`,
  );
}

/** Run `fn` and assert it leaves the tensor count unchanged. */
export async function assertNoLeaks(
  fn: () => unknown | Promise<unknown>,
  message = "",
): Promise<void> {
  const before = tf.memory().numTensors;
  await fn();
  const after = tf.memory().numTensors;
  assertStrict.equal(after, before, `${message} leaked ${after - before} tensors`);
}
