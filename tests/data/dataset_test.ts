import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { initEngine } from "../../lib/engine/mod.ts";
import { rng, uniformArray } from "../../lib/random.ts";
import {
  balancedIndices,
  balancedSubset,
  batchAt,
  batches,
  type Dataset,
  fixedSplit,
  loadDataset,
  makeDataset,
  resize,
  shuffle,
  splitByCounts,
  take,
  toChannels,
} from "../../lib/data/dataset.ts";

await initEngine({ backend: "wasm", announce: false });

// n samples of shape [1, 1, 1] whose single value identifies the sample: i / n * 2 - 1.
function indexed(labels: number[], classes = 3): Dataset {
  const n = labels.length;
  return makeDataset({
    name: "toy",
    images: Float32Array.from(labels, (_, i) => (i / n) * 2 - 1),
    labels: Int32Array.from(labels),
    shape: [1, 1, 1],
    classes: Array.from({ length: classes }, (_, c) => `c${c}`),
    sites: { names: ["s0", "s1"], ids: Int32Array.from(labels, (_, i) => i % 2) },
  });
}
const ids = (ds: Dataset) =>
  Array.from(ds.images, (v) => Math.round(((v + 1) / 2) * ds.labels.length));
const idsOf = (ds: Dataset, n: number) =>
  Array.from(ds.images, (v) => Math.round(((v + 1) / 2) * n));
const labels40 = Array.from({ length: 40 }, (_, i) => (i < 20 ? 0 : i < 32 ? 1 : 2)); // 20, 12, 8

Deno.test("makeDataset() validates and freezes", () => {
  const ds = indexed([0, 1, 2]);
  assert.ok(Object.isFrozen(ds) && Object.isFrozen(ds.classes) && Object.isFrozen(ds.shape));
  const base = {
    name: "bad",
    images: new Float32Array(4),
    labels: new Int32Array(2),
    classes: ["a"],
  };
  assert.throws(() => makeDataset({ ...base, shape: [1, 1, 1] }), /4 image values for 2 labels/);
  assert.throws(
    () => makeDataset({ ...base, shape: [2, 1, 1], labels: Int32Array.from([0, 1]) }),
    /label 1 of sample 1/,
  );
  assert.throws(() => makeDataset({ ...base, shape: [0, 1, 1] }), /bad image shape/);
});

Deno.test("take() and shuffle() select samples with their labels and sites", () => {
  const ds = indexed(labels40);
  const sub = take(ds, [5, 21, 5, 39]);
  assert.deepEqual(idsOf(sub, 40), [5, 21, 5, 39]);
  assert.deepEqual([...sub.labels], [0, 1, 0, 2]);
  assert.deepEqual([...sub.sites!.ids], [1, 1, 1, 1]);
  assert.throws(() => take(ds, [40]), /index 40 is outside \[0, 40\)/);

  const a = shuffle(ds, rng(1)), b = shuffle(ds, rng(1)), c = shuffle(ds, rng(2));
  assert.deepEqual(ids(a), ids(b));
  assert.notDeepEqual(ids(a), ids(c));
  assert.deepEqual([...ids(a)].sort((x, y) => x - y), ids(ds));
  assert.ok(ids(a).every((i, k) => a.labels[k] === ds.labels[i]));
});

Deno.test("balancedIndices() takes round(p% of each class), at least 1, nested and deterministic", () => {
  const labels = Int32Array.from(labels40);
  const pick = (p: number, seed = 0) => [...balancedIndices(labels, 3, p, rng(seed))];
  const perClass = (idx: number[]) =>
    [0, 1, 2].map((c) => idx.filter((i) => labels[i] === c).length);
  assert.deepEqual(perClass(pick(50)), [10, 6, 4]);
  assert.deepEqual(perClass(pick(25)), [5, 3, 2]);
  assert.deepEqual(perClass(pick(1)), [1, 1, 1]);
  assert.deepEqual(perClass(pick(100)), [20, 12, 8]);
  assert.deepEqual(pick(25), pick(25));
  assert.notDeepEqual(pick(25, 0), pick(25, 1));
  assert.ok(pick(25).every((i) => pick(50).includes(i)), "25% is a subset of 50% for one key");
  assert.deepEqual(pick(50), [...pick(50)].sort((x, y) => x - y));
  assert.throws(() => pick(0), /percent must be in \(0, 100\]/);

  const sub = balancedSubset(indexed(labels40), 50, rng(0));
  assert.deepEqual(idsOf(sub, 40), pick(50));
  assert.equal(sub.name, "toy@50%");
});

Deno.test("splitByCounts() makes disjoint consecutive parts, shuffled by a key", () => {
  const ds = indexed(labels40);
  const [tr, va, te] = splitByCounts(ds, [30, 6, 4]);
  assert.deepEqual(idsOf(tr, 40), Array.from({ length: 30 }, (_, i) => i));
  assert.deepEqual(idsOf(te, 40), [36, 37, 38, 39]);
  assert.equal(va.labels.length, 6);
  const parts = splitByCounts(ds, [10, 10], rng(3));
  const all = parts.flatMap((p) => idsOf(p, 40));
  assert.equal(new Set(all).size, 20);
  assert.deepEqual(
    splitByCounts(ds, [10, 10], rng(3)).map((p) => idsOf(p, 40)),
    parts.map((p) => idsOf(p, 40)),
  );
  assert.throws(() => splitByCounts(ds, [30, 11]), /cannot split 40 samples into \[30, 11\]/);
});

Deno.test("fixedSplit() is a stratified 80/20 partition, the same every time", () => {
  const ds = indexed(labels40);
  const [tr, te] = [fixedSplit(ds, "train"), fixedSplit(ds, "test")];
  assert.deepEqual([tr.labels.length, te.labels.length], [32, 8]);
  const all = [...idsOf(tr, 40), ...idsOf(te, 40)].sort((a, b) => a - b);
  assert.deepEqual(all, Array.from({ length: 40 }, (_, i) => i));
  assert.deepEqual([0, 1, 2].map((c) => tr.labels.filter((y) => y === c).length), [16, 10, 6]);
  assert.deepEqual(idsOf(fixedSplit(ds, "train"), 40), idsOf(tr, 40));
  assert.equal(te.name, "toy/test");
});

Deno.test("resize() matches tf.image.resizeBilinear with half-pixel centres on the cpu backend", async () => {
  const [n, s, c] = [3, 7, 2];
  const ds = makeDataset({
    name: "r",
    images: uniformArray(rng(5), n * s * s * c).map((u) => 2 * u - 1),
    labels: new Int32Array(n),
    shape: [s, s, c],
    classes: ["x"],
  });
  await tf.setBackend("cpu");
  try {
    for (const size of [4, 10, 16]) {
      const ours = resize(ds, size);
      assert.deepEqual(ours.shape, [size, size, c]);
      const theirs = tf.tidy(() =>
        tf.image.resizeBilinear(tf.tensor4d(ds.images, [n, s, s, c]), [size, size], false, true)
          .dataSync()
      );
      let err = 0;
      ours.images.forEach((v, i) => (err = Math.max(err, Math.abs(v - theirs[i]))));
      assert.ok(err < 1e-6, `size ${size}: max error ${err}`);
    }
  } finally {
    await tf.setBackend("wasm");
  }
  assert.equal(resize(ds, s), ds);
  assert.throws(() => resize({ ...ds, shape: [7, 14, 1] }, 4), /needs square images/);
  const gray = indexed([0, 1]);
  const rgb = toChannels(gray, 3);
  assert.deepEqual(rgb.shape, [1, 1, 3]);
  assert.deepEqual([...rgb.images], [-1, -1, -1, 0, 0, 0]);
  assert.equal(toChannels(gray, 1), gray);
  assert.throws(() => toChannels(ds, 3), /cannot turn 2 channels into 3/);
});

Deno.test("batches() covers an epoch once, in key order, as float32/int32 tensors, leak-free", () => {
  const ds = indexed(labels40);
  const before = tf.memory().numTensors;
  const seen: number[] = [];
  const sizes: number[] = [];
  for (const { x, y, indices } of batches(ds, 16, rng(7))) {
    assert.equal(x.dtype, "float32");
    assert.equal(y.dtype, "int32");
    assert.deepEqual(x.shape, [indices.length, 1, 1, 1]);
    assert.deepEqual([...y.dataSync()], [...indices].map((i) => ds.labels[i]));
    assert.deepEqual([...x.dataSync()], [...indices].map((i) => ds.images[i]));
    sizes.push(indices.length);
    seen.push(...indices);
    x.dispose();
    y.dispose();
  }
  assert.equal(tf.memory().numTensors, before);
  assert.deepEqual(sizes, [16, 16, 8]);
  assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: 40 }, (_, i) => i));
  const again = [...batches(ds, 16, rng(7))].flatMap((
    b,
  ) => (tf.dispose([b.x, b.y]), [...b.indices]));
  assert.deepEqual(again, seen);
  const dropped = [...batches(ds, 16, undefined, { dropLast: true })];
  assert.deepEqual(dropped.map((b) => b.indices[0]), [0, 16]);
  dropped.forEach((b) => tf.dispose([b.x, b.y]));
  assert.equal(tf.memory().numTensors, before);
  assert.throws(() => batches(ds, 0, undefined).next(), /positive integer/);

  const b = batchAt(ds, [3, 3, 39]);
  assert.deepEqual([...b.y.dataSync()], [0, 0, 2]);
  tf.dispose([b.x, b.y]);
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("loadDataset('mnist') splits the 10,000 digits 8,000 / 2,000, resizes and repeats channels", async () => {
  const train = await loadDataset("mnist");
  const test = await loadDataset("mnist", { split: "test", size: 32, channels: 3 });
  assert.equal(train.name, "mnist/train");
  assert.deepEqual([train.labels.length, test.labels.length], [8000, 2000]);
  assert.deepEqual(train.shape, [28, 28, 1]);
  assert.deepEqual(test.shape, [32, 32, 3]);
  const perClass = (ds: Dataset) =>
    Array.from({ length: 10 }, (_, c) => ds.labels.filter((y) => y === c).length);
  assert.deepEqual(perClass(train), [801, 902, 793, 826, 784, 690, 811, 856, 755, 782]);
  assert.ok(test.images.every((v) => v >= -1 && v <= 1));
  const again = await loadDataset("mnist");
  assert.deepEqual(again.labels, train.labels);
});

Deno.test("loadDataset() on folders uses train/ and test/ (or val/) subfolders, else a fixed split", async () => {
  const dir = await Deno.makeTempDir();
  const png = (w: number) =>
    sharp(new Uint8Array(w * w * 3).fill(200), { raw: { width: w, height: w, channels: 3 } }).png()
      .toBuffer();
  try {
    for (const f of ["train/a/0", "train/b/0", "val/a/0", "val/b/0", "val/b/1"]) {
      await Deno.mkdir(`${dir}/split/${f.slice(0, f.lastIndexOf("/"))}`, { recursive: true });
      await Deno.writeFile(`${dir}/split/${f}.png`, await png(8));
    }
    const test = await loadDataset(`${dir}/split`, { split: "test", size: 4, channels: 1 });
    assert.deepEqual([test.labels.length, ...test.shape], [3, 4, 4, 1]);
    assert.ok(test.images.every((v) => Math.abs(v - (200 / 127.5 - 1)) < 1e-6));
    for (let i = 0; i < 10; i++) {
      await Deno.mkdir(`${dir}/flat/${i % 2 ? "odd" : "even"}`, { recursive: true });
      await Deno.writeFile(`${dir}/flat/${i % 2 ? "odd" : "even"}/${i}.png`, await png(5));
    }
    const tr = await loadDataset(`${dir}/flat`);
    const te = await loadDataset(`${dir}/flat`, { split: "test" });
    assert.deepEqual([tr.labels.length, te.labels.length, ...tr.shape], [8, 2, 5, 5, 3]);
    await Deno.remove(`${dir}/split/val`, { recursive: true });
    await assert.rejects(
      () => loadDataset(`${dir}/split`, { split: "test" }),
      /has train\/ but no test folder/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  await assert.rejects(
    () => loadDataset("cifar-11"),
    /Unknown dataset "cifar-11": expected mnist, fashion-mnist/,
  );
  await assert.rejects(
    () => loadDataset("fashion-mnist", { fashionMnistRoot: "/nonexistent/fm" }),
    /apt-get install dataset-fashion-mnist/,
  );
});

Deno.test("loadDataset() rejects an empty split while loading, naming the dataset", async () => {
  const dir = await Deno.makeTempDir();
  const png = sharp(new Uint8Array(4 * 4 * 3), { raw: { width: 4, height: 4, channels: 3 } })
    .png().toBuffer();
  try {
    // One image per class: the fixed 80/20 split puts both in train and leaves test empty.
    for (const c of ["a", "b"]) {
      await Deno.mkdir(`${dir}/few/${c}`, { recursive: true });
      await Deno.writeFile(`${dir}/few/${c}/0.png`, await png);
    }
    assert.equal((await loadDataset(`${dir}/few`)).labels.length, 2);
    await assert.rejects(() => loadDataset(`${dir}/few`, { split: "test" }), (e: Error) => {
      assert.match(e.message, new RegExp(`^Dataset "${dir}/few/test" is empty: `));
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  const empty = makeDataset({
    name: "none",
    images: new Float32Array(0),
    labels: new Int32Array(0),
    shape: [1, 1, 1],
    classes: ["a"],
  });
  assert.throws(() => batchAt(empty, [0]), { message: 'Dataset "none" is empty' });
});
