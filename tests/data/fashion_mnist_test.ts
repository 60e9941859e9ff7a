import assert from "node:assert/strict";
import {
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_DEFAULT_DIR,
  FASHION_MNIST_ENV,
  fashionMnistDir,
  loadFashionMnist,
} from "../../lib/data/fashion_mnist.ts";

const installed = (() => {
  try {
    return Deno.statSync(`${FASHION_MNIST_DEFAULT_DIR}/t10k-images-idx3-ubyte.gz`).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "loadFashionMnist() reads the installed test split: 10,000 28x28x1 in [-1, 1], 10 classes",
  ignore: !installed,
  fn: async () => {
    const ds = await loadFashionMnist("test", FASHION_MNIST_DEFAULT_DIR);
    assert.equal(ds.name, "fashion-mnist/test");
    assert.equal(ds.labels.length, 10_000);
    assert.deepEqual(ds.shape, [28, 28, 1]);
    assert.equal(ds.images.length, 10_000 * 784);
    assert.equal(ds.classes.length, 10);
    assert.deepEqual(ds.classes, FASHION_MNIST_CLASSES);
    const counts = new Array(10).fill(0);
    ds.labels.forEach((y) => counts[y]++);
    assert.deepEqual(counts, new Array(10).fill(1000)); // the test split is balanced
    let lo = Infinity, hi = -Infinity;
    for (const v of ds.images) (lo = Math.min(lo, v)), (hi = Math.max(hi, v));
    assert.deepEqual([lo, hi], [-1, 1]);
  },
});

Deno.test({
  name: "loadFashionMnist() reads the installed train split: 60,000 images",
  ignore: !installed,
  fn: async () => {
    const ds = await loadFashionMnist("train");
    assert.equal(ds.labels.length, 60_000);
    assert.equal(ds.images.length, 60_000 * 784);
  },
});

Deno.test("loadFashionMnist() names the apt package when the directory or a file is missing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await assert.rejects(() => loadFashionMnist("train", `${dir}/nope`), (e: Error) => {
      assert.match(e.message, new RegExp(`directory "${dir}/nope" does not exist`));
      assert.match(e.message, /apt-get install dataset-fashion-mnist/);
      assert.ok(!e.message.includes("\n"));
      return true;
    });
    await assert.rejects(() => loadFashionMnist("test", dir), (e: Error) => {
      assert.match(
        e.message,
        /t10k-images-idx3-ubyte\.gz" is missing.*apt-get install dataset-fashion-mnist/,
      );
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("fashionMnistDir() prefers the argument, then the environment, then the default", () => {
  const saved = Deno.env.get(FASHION_MNIST_ENV);
  try {
    Deno.env.delete(FASHION_MNIST_ENV);
    assert.equal(fashionMnistDir(), FASHION_MNIST_DEFAULT_DIR);
    Deno.env.set(FASHION_MNIST_ENV, "/env/dir");
    assert.equal(fashionMnistDir(), "/env/dir");
    assert.equal(fashionMnistDir("/arg/dir"), "/arg/dir");
  } finally {
    if (saved === undefined) Deno.env.delete(FASHION_MNIST_ENV);
    else Deno.env.set(FASHION_MNIST_ENV, saved);
  }
});
