import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import { initEngine } from "../lib/engine/mod.ts";
import { createEntry, type FeatureKey, openEntry } from "../lib/features_cache.ts";
import { knnAccuracy, knnClassify, type KnnPredictions } from "../lib/knn.ts";
import { normalArray, randint, rng, split, uniformArray } from "../lib/random.ts";
import { assertNoLeaks } from "./assert.ts";

await initEngine({ backend: "wasm", announce: false });

const DEG = Math.PI / 180;
const circle = (...degrees: number[]) =>
  new Float32Array(degrees.flatMap((d) => [Math.cos(d * DEG), Math.sin(d * DEG)]));

// Rows of a [n, width] prediction.
const rowsOf = (p: KnnPredictions) =>
  Array.from({ length: p.top.length / p.width }, (_, i) => [
    ...p.top.subarray(i * p.width, (i + 1) * p.width),
  ]);

// Five points on the unit circle; the test point at 2° is 2°, 8°, 38°, 88° and 178° from them.
//   label:  0    1    1    2    3
//   angle:  0°  10°  40°  90°  180°
// Weights exp(cos θ / 0.07) relative to the nearest (class 0): 10° → e^(-0.130) = 0.878,
// 40° → e^(-3.334) = 0.036; so at k = 3 class 1 sums to 0.914 < 1: the weighted vote says 0, the
// majority (2 votes to 1) says 1. The test point at 170° is nearest to the one at 180° (class 3).
const TRAIN = {
  features: circle(0, 10, 40, 90, 180),
  labels: Int32Array.of(0, 1, 1, 2, 3),
  dim: 2,
};
const TEST = { features: circle(2, 170), dim: 2 };

Deno.test("knnClassify() on points of the unit circle, worked out by hand", async () => {
  const opts = { k: [1, 3, 5], classes: 4 };
  const [k1, k3, k5] = await knnClassify(TRAIN, TEST, opts);
  assert.deepEqual([k1.k, k3.k, k5.k], [1, 3, 5]);
  assert.equal(k1.width, 4, "fewer than 5 classes: top-4");
  // k = 1: the nearest only, then the unvoted classes in class order.
  assert.deepEqual(rowsOf(k1), [[0, 1, 2, 3], [3, 0, 1, 2]]);
  // k = 3, weighted: class 0 (1) beats class 1 (0.914). 170°: 180° (3), 90° (2), 40° (1).
  assert.deepEqual(rowsOf(k3), [[0, 1, 2, 3], [3, 2, 1, 0]]);
  // k = 5: every class votes; at 2° the weights order 0 > 1 > 2 (88°) > 3 (178°).
  assert.deepEqual(rowsOf(k5)[0], [0, 1, 2, 3]);

  const [m1, m3, m5] = await knnClassify(TRAIN, TEST, { ...opts, vote: "majority" });
  assert.deepEqual(rowsOf(m1), rowsOf(k1), "k = 1 is the same under both votes");
  // k = 3, majority: class 1 has 2 votes to class 0's 1.
  assert.deepEqual(rowsOf(m3), [[1, 0, 2, 3], [1, 2, 3, 0]]);
  // k = 5: class 1 has 2 votes, the rest 1 each, tied, so in class order.
  assert.deepEqual(rowsOf(m5), [[1, 0, 2, 3], [1, 0, 2, 3]]);

  assert.deepEqual(knnAccuracy(k3, [0, 3]), { top1: 1, top5: 1 });
  assert.deepEqual(knnAccuracy(m3, [0, 3]), { top1: 0, top5: 1 });
  assert.deepEqual(knnAccuracy(m3, [1, 0]), { top1: 0.5, top5: 1 });
});

Deno.test("knnClassify() top-5 is five classes when there are more, voted ones first", async () => {
  const [p] = await knnClassify(TRAIN, TEST, { k: [2], classes: 9 });
  assert.equal(p.width, 5);
  // 2°: 0° (0) then 10° (1); 170°: 180° (3) then 90° (2); then unvoted classes in order.
  assert.deepEqual(rowsOf(p), [[0, 1, 2, 3, 4], [3, 2, 0, 1, 4]]);
  assert.deepEqual(knnAccuracy(p, [4, 8]), { top1: 0, top5: 0.5 });
});

Deno.test("knnClassify() with a high temperature approaches the majority vote", async () => {
  const [w] = await knnClassify(TRAIN, TEST, { k: [3], classes: 4, temperature: 100 });
  assert.deepEqual(rowsOf(w)[0], [1, 0, 2, 3]);
});

Deno.test("knnClassify() is invariant to scaling a feature (cosine similarity)", async () => {
  const [a, b, c, d] = split(rng(7), 4);
  const dim = 16, nTrain = 300, nTest = 60, classes = 10;
  const train = {
    features: normalArray(a, nTrain * dim),
    labels: randint(b, nTrain, 0, classes),
    dim,
  };
  const test = { features: normalArray(c, nTest * dim), dim };
  const scale = (x: Float32Array, factors: Float32Array) =>
    x.map((v, i) => v * (0.1 + 10 * factors[Math.floor(i / dim)]));
  const scaled = {
    ...train,
    features: scale(train.features, uniformArray(d, nTrain)),
  };
  const opts = { k: [1, 20, 200], classes };
  const base = await knnClassify(train, test, opts);
  const again = await knnClassify(scaled, {
    dim,
    features: scale(test.features, uniformArray(a, nTest)),
  }, opts);
  for (let i = 0; i < 3; i++) assert.deepEqual(again[i].top, base[i].top, `k = ${opts.k[i]}`);
  // And it agrees with a float64 brute-force reference.
  const ref = bruteForce(train.features, train.labels, test.features, dim, 20, classes);
  assert.deepEqual(rowsOf(base[1]), ref);
});

// Reference weighted kNN: all similarities in float64, a full sort, the same tie rules.
function bruteForce(
  trainX: Float32Array,
  trainY: Int32Array,
  testX: Float32Array,
  dim: number,
  k: number,
  classes: number,
): number[][] {
  const norm = (x: Float32Array, i: number) => {
    let s = 0;
    for (let j = 0; j < dim; j++) s += x[i * dim + j] ** 2;
    return Math.sqrt(s);
  };
  const out: number[][] = [];
  for (let i = 0; i < testX.length / dim; i++) {
    const sims = Array.from({ length: trainY.length }, (_, n) => {
      let s = 0;
      for (let j = 0; j < dim; j++) s += testX[i * dim + j] * trainX[n * dim + j];
      return { n, s: s / norm(testX, i) / norm(trainX, n) };
    }).sort((p, q) => q.s - p.s || p.n - q.n);
    const votes = new Array(classes).fill(0);
    for (const { n, s } of sims.slice(0, k)) votes[trainY[n]] += Math.exp(s / 0.07);
    out.push([...votes.keys()].sort((p, q) => votes[q] - votes[p] || p - q).slice(0, 5));
  }
  return out;
}

Deno.test("knnClassify() gives identical predictions chunked, unchunked and streamed", async () => {
  const [a, b, c] = split(rng(11), 3);
  const dim = 24, nTrain = 500, nTest = 70, classes = 13;
  const train = {
    features: normalArray(a, nTrain * dim),
    labels: randint(b, nTrain, 0, classes),
    dim,
  };
  const test = { features: normalArray(c, nTest * dim), dim };
  for (const vote of ["weighted", "majority"] as const) {
    const opts = { k: [200, 1, 20], classes, vote };
    const whole = await knnClassify(train, test, { ...opts, chunk: 1000, trainChunk: 100000 });
    const chunked = await knnClassify(train, test, { ...opts, chunk: 7, trainChunk: 33 });
    const sizes = [1, 250, 3, 46, 200];
    const stream = async function* () {
      for (let at = 0, i = 0; at < nTrain; at += sizes[i++]) {
        yield {
          features: train.features.subarray(at * dim, (at + sizes[i]) * dim),
          labels: train.labels.subarray(at, at + sizes[i]),
        };
      }
    };
    const streamed = await knnClassify(stream(), test, { ...opts, chunk: 16, trainChunk: 64 });
    const syncStream = await knnClassify(
      [{ features: train.features, labels: train.labels }],
      test,
      { ...opts, chunk: 1 },
    );
    assert.deepEqual(whole.map((p) => p.k), [200, 1, 20], "results in the order of opts.k");
    for (const other of [chunked, streamed, syncStream]) {
      for (let i = 0; i < 3; i++) assert.deepEqual(other[i].top, whole[i].top, `${vote} ${i}`);
    }
  }
});

Deno.test("knnClassify() breaks ties toward the first training sample and the lower class", async () => {
  // Three copies of the same point (labels 2, 1, 3) and one far away.
  const features = circle(30, 30, 30, 200);
  const train = { features, labels: Int32Array.of(2, 1, 3, 0), dim: 2 };
  const test = { features: circle(30), dim: 2 };
  for (const vote of ["weighted", "majority"] as const) {
    const [k1, k2, k3] = await knnClassify(train, test, { k: [1, 2, 3], classes: 4, vote });
    assert.deepEqual(rowsOf(k1), [[2, 0, 1, 3]], `${vote}: equal similarity, the first sample`);
    // Equal votes for 2 and 1: the lower class first.
    assert.deepEqual(rowsOf(k2), [[1, 2, 0, 3]], vote);
    assert.deepEqual(rowsOf(k3), [[1, 2, 3, 0]], vote);
  }
  // The same points in another order: the first of the copies is now label 3.
  const reordered = {
    features: circle(200, 30, 30, 30),
    labels: Int32Array.of(0, 3, 2, 1),
    dim: 2,
  };
  const [r1] = await knnClassify(reordered, test, { k: [1], classes: 4 });
  assert.deepEqual(rowsOf(r1), [[3, 0, 1, 2]]);
});

Deno.test("knnClassify() rejects bad input with one-line errors", async () => {
  const opts = { k: [20], classes: 4 };
  await assert.rejects(() => knnClassify(TRAIN, TEST, { ...opts, k: [6] }), {
    message: "k = 6 is larger than the training set (5 samples)",
  });
  async function* chunks() {
    yield { features: TRAIN.features, labels: TRAIN.labels };
  }
  await assert.rejects(() => knnClassify(chunks(), TEST, { ...opts, k: [1, 6] }), {
    message: "k = 6 is larger than the training set (5 samples)",
  });
  await assert.rejects(
    () => knnClassify(TRAIN, TEST, { ...opts, k: [0] }),
    /k should be positive integers, got \[0\]/,
  );
  await assert.rejects(() => knnClassify(TRAIN, TEST, { ...opts, k: [] }), /k should be positive/);
  await assert.rejects(() => knnClassify(TRAIN, TEST, { k: [1], classes: 3 }), {
    message: "Training label 3 of sample 4 is outside [0, 3)",
  });
  await assert.rejects(
    () => knnClassify(TRAIN, { features: TEST.features, dim: 3 }, { k: [1], classes: 4 }),
    /Test features \(4 floats\) are not rows of dim 3/,
  );
  await assert.rejects(
    () =>
      knnClassify({ ...TRAIN, dim: 4 }, { features: new Float32Array(4), dim: 4 }, {
        k: [1],
        classes: 4,
      }),
    /Training chunk at sample 0 has 10 floats for 5 labels of dim 4/,
  );
  await assert.rejects(
    () => knnClassify(TRAIN, { features: new Float32Array(4), dim: 4 }, { k: [1], classes: 4 }),
    /Training features have dim 2, test features 4/,
  );
  await assert.rejects(
    () => knnClassify([{ features: TRAIN.features }], TEST, { k: [1], classes: 4 }),
    /Training chunk at sample 0 has no labels/,
  );
  await assert.rejects(
    () => knnClassify(TRAIN, { features: Float32Array.of(1, NaN), dim: 2 }, { k: [1], classes: 4 }),
    /Test features row 0 has a non-finite value/,
  );
  await assert.rejects(
    () => knnClassify(TRAIN, TEST, { k: [1], classes: 4, temperature: 0 }),
    /temperature should be positive, got 0/,
  );
  await assert.rejects(
    () => knnClassify(TRAIN, TEST, { k: [1], classes: 4, chunk: 0 }),
    /chunk should be a positive integer/,
  );
  assert.throws(() => knnAccuracy({ k: 1, width: 4, top: new Int32Array(8) }, [1]), {
    message: "1 test labels for 2 predictions (k = 1)",
  });
});

Deno.test("knnClassify() leaks no tensors, also when it fails midway", async () => {
  const [a, b, c] = split(rng(3), 3);
  const dim = 8;
  const train = { features: normalArray(a, 200 * dim), labels: randint(b, 200, 0, 5), dim };
  const test = { features: normalArray(c, 30 * dim), dim };
  await assertNoLeaks(() =>
    knnClassify(train, test, { k: [10], classes: 5, chunk: 4, trainChunk: 9 })
  );
  async function* badSecondChunk() {
    yield {
      features: train.features.subarray(0, 100 * dim),
      labels: train.labels.subarray(0, 100),
    };
    yield { features: train.features.subarray(0, 100 * dim), labels: new Int32Array(100).fill(9) };
  }
  const before = tf.memory().numTensors;
  await assert.rejects(
    () => knnClassify(badSecondChunk(), test, { k: [10], classes: 5, chunk: 4 }),
    /Training label 9 of sample 100/,
  );
  assert.equal(tf.memory().numTensors, before);
});

Deno.test("knnClassify() with no test samples returns empty predictions", async () => {
  const [p] = await knnClassify(TRAIN, { features: new Float32Array(0), dim: 2 }, {
    k: [2],
    classes: 4,
  });
  assert.equal(p.top.length, 0);
  assert.deepEqual(knnAccuracy(p, []), { top1: 0, top5: 0 });
});

Deno.test("knnClassify() streams training features from a feature cache entry", async () => {
  const [a, b, c] = split(rng(5), 3);
  const shape = [2, 2, 3], dim = 12, nTrain = 90, classes = 6;
  const train = {
    features: normalArray(a, nTrain * dim),
    labels: randint(b, nTrain, 0, classes),
    dim,
  };
  const test = { features: normalArray(c, 15 * dim), dim };
  const key: FeatureKey = {
    weights: "0".repeat(64),
    dataset: "synthetic",
    split: "train",
    indices: "all",
    t: 90,
    block: 19,
    pool: 2,
    noiseSeed: 0,
    flip: false,
    version: 1,
  };
  const root = await Deno.makeTempDir({ prefix: "knn_test" });
  try {
    const w = await createEntry(root, key, shape, train.labels);
    for (let r = 0; r < nTrain; r += 25) {
      await w.append(train.features.subarray(r * dim, Math.min(nTrain, r + 25) * dim));
    }
    await w.commit();
    const hit = await openEntry(root, key);
    assert.ok(hit.ok);
    const opts = { k: [5, 20], classes };
    const streamed = await knnClassify(hit.entry.chunks(17), test, opts);
    const direct = await knnClassify(train, test, opts);
    for (let i = 0; i < 2; i++) assert.deepEqual(streamed[i].top, direct[i].top);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
