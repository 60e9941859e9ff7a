// DINO's pieces on constructed cases (sharpening and centring, the loss at student = teacher, the
// teacher EMA and its momentum schedule), the crops, and a few pre-training steps on tiny data.
import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks, assertThrows } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { makeDataset } from "../lib/data/dataset.ts";
import { normal, rng, uniformArray } from "../lib/random.ts";
import { disposeParams, toVariables } from "../lib/params.ts";
import type { ViTConfig } from "../lib/models/vit.ts";
import {
  cropViews,
  dinoConfig,
  dinoLoss,
  dinoLr,
  drawCrops,
  emaTeacher,
  initStudent,
  koleo,
  multiCrop,
  numParams,
  pretrainDino,
  pretrainDinoCached,
  project,
  teacherMomentum,
  teacherProbs,
  updateCenter,
  vitClassifier,
} from "../lib/dino.ts";

await initEngine({ backend: "wasm", announce: false });

const tinyVit: ViTConfig = {
  inputSize: 8,
  patchSize: 4,
  inChannels: 1,
  hiddenSize: 8,
  depth: 1,
  numHeads: 2,
  mlpRatio: 2,
  pool: "cls",
};
const tiny = dinoConfig(tinyVit, {
  hidden: 16,
  bottleneck: 8,
  prototypes: 12,
  localCrops: 2,
  koleo: 0.1,
});

const softmax = (v: number[]) => {
  const m = Math.max(...v), e = v.map((x) => Math.exp(x - m)), s = e.reduce((a, b) => a + b);
  return e.map((x) => x / s);
};

Deno.test("teacherProbs() centres then sharpens; updateCenter() is the EMA of the batch mean", () => {
  const t = tf.tensor2d([[1, 2, 3], [0, 0, 1]]);
  const c = tf.tensor2d([[0.5, -0.5, 0]]);
  const want = [[1, 2, 3], [0, 0, 1]].flatMap((row) =>
    softmax(row.map((v, k) => (v - [0.5, -0.5, 0][k]) / 0.04))
  );
  assertClose(teacherProbs(t, c, 0.04), tf.tensor2d(want, [2, 3]), { rtol: 1e-4, atol: 1e-6 });
  // Sharper than τ = 1: the top probability grows as τ falls.
  const top = (temp: number) => teacherProbs(t, c, temp).max().dataSync()[0];
  assert(top(0.04) > top(1));
  // c' = 0.9 c + 0.1 · mean over both views' rows.
  const t2 = tf.tensor2d([[3, 0, 1]]);
  const mean = [(1 + 0 + 3) / 3, (2 + 0 + 0) / 3, (3 + 1 + 1) / 3];
  const next = updateCenter(c, [t as tf.Tensor2D, t2 as tf.Tensor2D], 0.9);
  assertClose(next, tf.tensor2d([[0.5, -0.5, 0].map((v, k) => 0.9 * v + 0.1 * mean[k])]));
  tf.dispose([t, c, t2, next]);
});

Deno.test("dinoLoss() is minimal, the teacher's entropy, when the student's views match it", () => {
  const t = [normal(rng(1), [4, 6]), normal(rng(2), [4, 6])] as tf.Tensor2D[];
  const c = tf.tensor2d([[0.1, 0, -0.2, 0.3, 0, 0]]);
  const cfg = { studentTemp: 0.1, teacherTemp: 0.04 };
  // Every student view v predicts the teacher view it is compared with: with 2 global views and
  // views 0 and 1 compared crosswise, make the student's view 0 = teacher 1 and view 1 = teacher 0.
  const q = t.map((ti) => teacherProbs(ti, c, 0.04));
  const match = [q[1], q[0]].map((qi) => tf.mul(tf.log(qi.add(1e-30)), 0.1)) as tf.Tensor2D[];
  const loss = dinoLoss(match, t, c, cfg).dataSync()[0];
  const entropy = q.map((qi) =>
    tf.tidy(() => tf.mean(tf.neg(tf.sum(tf.mul(qi, tf.log(qi.add(1e-30))), -1))).dataSync()[0])
  );
  assertClose([loss], [(entropy[0] + entropy[1]) / 2], { rtol: 1e-3, atol: 1e-4 });
  for (let k = 0; k < 3; k++) {
    const off = match.map((m, i) =>
      tf.add(m, normal(rng(10 + 2 * k + i), m.shape))
    ) as tf.Tensor2D[];
    assert(dinoLoss(off, t, c, cfg).dataSync()[0] > loss, "any other student costs more");
  }
  // Views 2.. are compared with both teacher views; a view equal to its own teacher view is
  // skipped (v ≠ i), so 2 global + 1 local views make 2·3 − 2 = 4 pairs.
  const three = [...match, match[0]];
  const l3 = dinoLoss(three, t, c, cfg).dataSync()[0];
  const h = (qi: tf.Tensor, s: tf.Tensor) =>
    tf.tidy(() =>
      tf.mean(tf.neg(tf.sum(tf.mul(qi, tf.logSoftmax(tf.div(s, 0.1))), -1))).dataSync()[0]
    );
  const pairs = [h(q[0], three[1]), h(q[0], three[2]), h(q[1], three[0]), h(q[1], three[2])];
  assertClose([l3], [pairs.reduce((a, b) => a + b) / 4], { rtol: 1e-4 });
  assertThrows(() => dinoLoss([match[0]], t, c, cfg), /1 student views/);
  tf.dispose([...t, c, ...q, ...match]);
});

Deno.test("teacherMomentum() runs 0.996 → 1 on a cosine; emaTeacher() is θt ← mθt + (1−m)θs", () => {
  assertEquals(teacherMomentum(0, 100, 0.996), 0.996);
  assertClose([teacherMomentum(50, 100, 0.996)], [0.998], { rtol: 1e-12 });
  assertEquals(teacherMomentum(100, 100, 0.996), 1);
  assert(teacherMomentum(30, 100, 0.996) < teacherMomentum(31, 100, 0.996));
  const teacher = toVariables({ w: tf.tensor1d([1, 2]), b: tf.tensor1d([0]) });
  const student = toVariables({ w: tf.tensor1d([3, -2]), b: tf.tensor1d([1]) });
  emaTeacher(teacher, student, 0.75);
  assertClose(teacher.w, tf.tensor1d([0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.25 * 2]));
  assertClose(teacher.b, tf.tensor1d([0.25]));
  disposeParams(teacher);
  disposeParams(student);
});

Deno.test("dinoLr() warms up linearly then decays on a cosine to 1e-6", () => {
  assertEquals(dinoLr(0, 100, 1e-3, 10), 0);
  assertClose([dinoLr(5, 100, 1e-3, 10)], [5e-4]);
  assertClose([dinoLr(10, 100, 1e-3, 10)], [1e-3]);
  assertClose([dinoLr(55, 100, 1e-3, 10)], [1e-6 + (1e-3 - 1e-6) / 2]);
  assertClose([dinoLr(100, 100, 1e-3, 10)], [1e-6]);
});

Deno.test("koleo() is −mean log of each row's nearest-neighbour distance on the unit sphere", () => {
  // Unit rows at 0°, 90°, 180° (scaled: koleo normalises): nearest distances √2, √2, √2.
  const r = tf.tensor2d([[2, 0], [0, 3], [-1, 0]]);
  assertClose([koleo(r).dataSync()[0]], [-Math.log(Math.SQRT2)], { rtol: 1e-5 });
  // Two close rows have a small nearest distance: a larger penalty than rows spread apart.
  const close = tf.tensor2d([[1, 0], [1, 0.01], [-1, 0]]);
  assert(koleo(close).dataSync()[0] > koleo(r).dataSync()[0]);
  tf.dispose([r, close]);
});

Deno.test("drawCrops() and multiCrop(): boxes within the image, shapes, flips, keyed draws", () => {
  const d = drawCrops(rng(3), 50, [0.05, 0.4]);
  for (let i = 0; i < 50; i++) {
    const [y1, x1, y2, x2] = d.boxes.subarray(4 * i, 4 * i + 4);
    assert(y1 >= 0 && x1 >= 0 && y2 <= 1 + 1e-6 && x2 <= 1 + 1e-6, `box ${i}`);
    const area = (y2 - y1) * (x2 - x1);
    assert(area >= 0.05 * 0.74 && area <= 0.4 + 1e-6, `area ${area}`);
  }
  assert(d.flips.some((f) => f === 1) && d.flips.some((f) => f === 0));
  // The whole box without a flip is the image; with a flip its mirror.
  const x = tf.tensor4d(uniformArray(rng(4), 2 * 8 * 8), [2, 8, 8, 1]);
  const whole = { boxes: Float32Array.of(0, 0, 1, 1, 0, 0, 1, 1), flips: Uint8Array.of(0, 1) };
  const v = cropViews(x, whole, 8);
  assertClose(tf.slice(v, [0], [1]), tf.slice(x, [0], [1]), { atol: 1e-5 });
  assertClose(tf.slice(v, [1], [1]), tf.reverse(tf.slice(x, [1], [1]), 2), { atol: 1e-5 });
  const big = tf.tensor4d(uniformArray(rng(5), 3 * 16 * 16), [3, 16, 16, 1]);
  const views = multiCrop(tiny, big, rng(6));
  assertEquals(views.length, 4);
  for (const w of views) assertEquals(w.shape, [3, 8, 8, 1]);
  const again = multiCrop(tiny, big, rng(6)), other = multiCrop(tiny, big, rng(7));
  assertEquals(again[3].dataSync(), views[3].dataSync());
  assert(tf.tidy(() => tf.max(tf.abs(tf.sub(other[3], views[3]))).dataSync()[0]) > 0.01);
  tf.dispose([x, v, big, ...views, ...again, ...other]);
});

/** n unlabeled 8×8 gray images uniform in [−1, 1], drawn from `seed`. */
const toyPool = (n: number, seed: number) =>
  makeDataset({
    name: "toy",
    images: Float32Array.from(uniformArray(rng(seed), n * 64), (u) => 2 * u - 1),
    labels: new Int32Array(n),
    shape: [8, 8, 1],
    classes: ["unused"],
  });

Deno.test("pretrainDino(): steps on tiny data run without leaks, deterministic; a fine-tunable backbone", async () => {
  const pool = toyPool(12, 8);
  const run = async () => {
    const r = await pretrainDino(tiny, pool, { steps: 4, batch: 4, lr: 1e-3, key: rng(9) });
    const clf = vitClassifier(tinyVit, r.student, 3, rng(10));
    const logits = tf.tidy(() => clf.apply(clf.params, tf.zeros([2, 8, 8, 1]) as tf.Tensor4D));
    assertEquals(logits.shape, [2, 3]);
    const keys = Object.keys(clf.params);
    assert(keys.every((k) => k.startsWith("backbone.") || k.startsWith("head.")));
    assert(!keys.some((k) => k.startsWith("head.mlp")), "DINO's head is dropped");
    logits.dispose();
    disposeParams(clf.params);
    disposeParams(r.teacher);
    return r.losses;
  };
  let losses: number[] = [];
  await assertNoLeaks(async () => (losses = await run()));
  assertEquals(losses.length, 4);
  assert(losses.every(Number.isFinite), `losses ${losses}`);
  assertEquals(await run(), losses, "same key, same losses");
  // The student's parameter count, and the teacher starting as the student.
  const s = initStudent(tiny, rng(0));
  const count = Object.values(s).reduce((a, v) => a + v.size, 0);
  assertEquals(count, numParams(tiny));
  const y = tf.tidy(() => project(tiny, s, tf.zeros([1, 8, 8, 1]) as tf.Tensor4D));
  assertEquals(y.shape, [1, 12]);
  y.dispose();
  disposeParams(s);
});

Deno.test("pretrainDinoCached(): the second call reads the backbones back; another identity or a corrupt file pre-trains again", async () => {
  const pool = toyPool(8, 3);
  const dir = await Deno.makeTempDir();
  const path = `${dir}/sub/dino.safetensors`;
  const misses: string[] = [];
  const opts = { steps: 2, batch: 4, lr: 1e-3, key: rng(4), onMiss: (w: string) => misses.push(w) };
  const call = (identity: unknown) => pretrainDinoCached(path, identity, tiny, pool, opts);
  const values = (r: Awaited<ReturnType<typeof call>>) =>
    Object.keys(r.teacher).sort().map((k) => Array.from(r.teacher[k].dataSync()));
  const done = (r: Awaited<ReturnType<typeof call>>) => {
    disposeParams(r.student);
    disposeParams(r.teacher);
  };
  try {
    const first = await call({ seed: 0 });
    assertEquals(first.cached, false);
    assert(Object.keys(first.student).every((k) => k.startsWith("backbone.")), "heads dropped");
    const again = await call({ seed: 0 });
    assertEquals(again.cached, true);
    assertEquals(values(again), values(first));
    assertEquals(again.losses, first.losses);
    done(again);
    const other = await call({ seed: 1 });
    assertEquals(other.cached, false);
    done(other);
    // A truncated file is not trusted: pre-trained again and rewritten.
    const bytes = await Deno.readFile(path);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length >> 1));
    const repaired = await call({ seed: 1 });
    assertEquals(repaired.cached, false);
    done(repaired);
    const reread = await call({ seed: 1 });
    assertEquals(reread.cached, true);
    done(reread);
    assertEquals(misses.length, 3);
    assert(
      /no cache file/.test(misses[0]) && /different/.test(misses[1]) &&
        /unreadable/.test(misses[2]),
      misses.join("; "),
    );
    done(first);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
