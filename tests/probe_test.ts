import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import {
  accuracy,
  concatRows,
  memoryRows,
  predict,
  RECIPES,
  stepLr,
  trainHeads,
  validationSplit,
} from "../lib/probe.ts";
import { disposeParams } from "../lib/params.ts";
import { normalArray, rng } from "../lib/random.ts";

await initEngine({ backend: "wasm", announce: false });

// Two Gaussian blobs per class in 6-D, as [1, 2, 3] maps: separable, so a probe must learn them.
function blobs(n: number, classes: number, seed: number) {
  const noise = normalArray(rng(seed), n * 6);
  const labels = Int32Array.from({ length: n }, (_, i) => i % classes);
  const x = noise.map((v, j) => 0.3 * v + (Math.floor(j / 6) % classes === j % 6 ? 2 : 0));
  return { x, labels };
}

Deno.test("stepLr() is StepLR: ×gamma every stepEvery epochs", () => {
  const r = RECIPES.paper; // 1e-3, ×0.1 every 8 epochs
  assertClose([stepLr(r, 0, 10), stepLr(r, 79, 10), stepLr(r, 80, 10), stepLr(r, 160, 10)], [
    1e-3,
    1e-3,
    1e-4,
    1e-5,
  ], { rtol: 1e-12 });
  assertEquals(RECIPES.reference.stepEvery, 7);
});

Deno.test("trainHeads() learns a separable case, and heads trained together equal heads trained alone", async () => {
  const { x, labels } = blobs(240, 3, 1);
  const train = memoryRows(x, [1, 2, 3]);
  const recipe = { ...RECIPES.paper, epochs: 6, lr: 0.05, batch: 32 };
  const key = rng(7);
  const before = tf.memory().numTensors;
  const both = await trainHeads(
    [
      { name: "a", head: { kind: "linear" }, train },
      { name: "b", head: { kind: "mlp", hidden: [8] }, train },
    ],
    labels,
    recipe,
    key,
    { classes: 3 },
  );
  const [alone] = await trainHeads(
    [{ name: "b", head: { kind: "mlp", hidden: [8] }, train }],
    labels,
    recipe,
    key,
    {
      classes: 3,
    },
  );
  // Disjoint parameters: the summed loss gives each head exactly its own gradient.
  for (const k of Object.keys(alone.params)) {
    assertClose(Array.from(both[1].params[k].dataSync()), Array.from(alone.params[k].dataSync()), {
      atol: 1e-6,
      message: k,
    });
  }
  assertClose(both[1].curve.map((c) => c.loss), alone.curve.map((c) => c.loss), { rtol: 1e-5 });
  const test = blobs(90, 3, 2);
  for (const h of both) {
    assertEquals(accuracy(await predict(h, memoryRows(test.x, [1, 2, 3])), test.labels), 1, h.name);
  }
  assert(both[0].curve[5].loss < both[0].curve[0].loss);
  assertEquals(both[0].paramCount, 6 * 3 + 3);
  for (const h of [...both, alone]) disposeParams(h.params);
  assertEquals(tf.memory().numTensors, before, "no tensor leaks");
});

Deno.test("trainHeads() trains on the given rows only, and rejects mismatched inputs", async () => {
  const { x, labels } = blobs(60, 3, 3);
  const train = memoryRows(x, [1, 2, 3]);
  const recipe = { ...RECIPES.paper, epochs: 1, batch: 16 };
  // With no rows of class 2 in the training rows, the head never predicts it for class-2 points.
  const rows = Int32Array.from({ length: 60 }, (_, i) => i).filter((i) => labels[i] !== 2);
  const [h] = await trainHeads(
    [{ name: "a", head: { kind: "linear" }, train }],
    labels,
    { ...recipe, epochs: 20, lr: 0.05 },
    rng(1),
    {
      classes: 3,
      indices: rows,
    },
  );
  const pred = await predict(h, train);
  assert(pred.every((p) => p !== 2));
  disposeParams(h.params);
  await assertRejects(
    () =>
      trainHeads(
        [{ name: "a", head: { kind: "linear" }, train }],
        labels.subarray(0, 5),
        recipe,
        rng(1),
        { classes: 3 },
      ),
    Error,
    "60 rows for 5 labels",
  );
  await assertRejects(
    () =>
      trainHeads(
        [{ name: "a", head: { kind: "linear" }, train }, {
          name: "a",
          head: { kind: "linear" },
          train,
        }],
        labels,
        recipe,
        rng(1),
        { classes: 3 },
      ),
    Error,
    "distinct",
  );
});

Deno.test("validationSplit() holds out a balanced share of each class, disjoint from the rest", () => {
  const labels = Int32Array.from({ length: 1000 }, (_, i) => i % 4);
  const { train, val } = validationSplit(labels, 4, 10, rng(0));
  assertEquals(val.length, 100);
  assertEquals(train.length + val.length, 1000);
  const inVal = new Set(val);
  assert(train.every((i) => !inVal.has(i)));
  for (let c = 0; c < 4; c++) assertEquals(val.filter((i) => labels[i] === c).length, 25);
  assertEquals(validationSplit(labels, 4, 10, rng(0)).val, val, "the same key, the same split");
});

Deno.test("concatRows() gathers across both sources in the order asked", async () => {
  const a = memoryRows(Float32Array.of(0, 1, 2, 3), [1, 1, 2]);
  const b = memoryRows(Float32Array.of(10, 11, 12, 13, 14, 15), [1, 1, 2]);
  const ab = concatRows(a, b);
  assertEquals(ab.rows, 5);
  assertEquals(Array.from(await ab.gather(Int32Array.of(4, 0, 2, 1, 3))), [
    14,
    15,
    0,
    1,
    10,
    11,
    2,
    3,
    12,
    13,
  ]);
});

Deno.test("memoryRows() gathers rows and checks their size", () => {
  const src = memoryRows(Float32Array.from({ length: 12 }, (_, i) => i), [1, 1, 3]);
  assertEquals(src.rows, 4);
  assertEquals(Array.from(src.gather(Int32Array.of(3, 0)) as Float32Array), [9, 10, 11, 0, 1, 2]);
  let threw = false;
  try {
    memoryRows(new Float32Array(10), [1, 1, 3]);
  } catch {
    threw = true;
  }
  assert(threw);
});
