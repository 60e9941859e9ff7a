import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertRejects } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { loadDataset } from "../lib/data/dataset.ts";
import { UNET_CONFIGS } from "../lib/models/unet.ts";
import {
  batchIndices,
  conditionedModel,
  disposeState,
  pretrain,
  type PretrainConfig,
  sampleImages,
} from "../lib/pretrain.ts";
import { rng } from "../lib/random.ts";

await initEngine({ backend: "wasm", announce: false });
const ds = await loadDataset("mnist", { split: "train", size: 16 });
const cfg: PretrainConfig = {
  dataset: "mnist",
  model: UNET_CONFIGS.tiny,
  modelName: "tiny",
  schedule: "linear",
  diffusionSteps: 1000,
  steps: 6,
  batch: 4,
  lr: 1e-3,
  emaRate: 0.9,
  seed: 3,
};

Deno.test("batchIndices() walks each epoch's permutation once, batch after batch", () => {
  const n = 10, b = 4;
  const seen = [0, 1, 2, 3, 4].flatMap((s) => [...batchIndices(rng(0), n, b, s)]); // 20 = two epochs
  assertEquals([...seen.slice(0, 10)].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assertEquals([...seen.slice(10, 20)].sort((x, y) => x - y), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assertEquals([...batchIndices(rng(0), n, b, 3)], seen.slice(12, 16));
});

Deno.test("pretrain() resumed from a checkpoint continues the unbroken run's loss curve", async () => {
  const dirA = await Deno.makeTempDir(), dirB = await Deno.makeTempDir();
  try {
    const unbroken = await pretrain(cfg, ds, {
      dir: dirA,
      checkpointEvery: 100,
      logEvery: 1,
      quiet: true,
    });
    const first = await pretrain({ ...cfg, steps: 3 }, ds, {
      dir: dirB,
      checkpointEvery: 100,
      logEvery: 1,
      quiet: true,
    });
    disposeState(first.state);
    const resumed = await pretrain(cfg, ds, {
      dir: dirB,
      checkpointEvery: 100,
      logEvery: 1,
      quiet: true,
    });
    assertEquals(resumed.resumedFrom, 3);
    assertEquals(resumed.curve.points.map((p) => p[0]), [1, 2, 3, 4, 5, 6]);
    // Same data, t, noise and optimiser moments: the losses after the resume agree to float noise.
    assertClose(resumed.curve.points.map((p) => p[1]), unbroken.curve.points.map((p) => p[1]), {
      rtol: 1e-4,
    });
    const key = "out.2.weight";
    assertClose(resumed.state.params[key], unbroken.state.params[key], { rtol: 1e-4, atol: 1e-6 });
    disposeState(unbroken.state);
    disposeState(resumed.state);
  } finally {
    await Deno.remove(dirA, { recursive: true });
    await Deno.remove(dirB, { recursive: true });
  }
});

Deno.test("pretrain() refuses a checkpoint of another config and a dataset of the wrong size", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await pretrain({ ...cfg, steps: 1 }, ds, { dir, checkpointEvery: 100, quiet: true });
    disposeState(r.state);
    await assertRejects(
      () => pretrain({ ...cfg, lr: 0.5 }, ds, { dir, checkpointEvery: 100, quiet: true }),
      /belongs to a different run/,
    );
    const ds28 = await loadDataset("mnist", { split: "train" });
    await assertRejects(
      () => pretrain(cfg, ds28, { dir, checkpointEvery: 100, quiet: true }),
      /has images 28×28×1, but config tiny expects 16×16×1/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert(tf.memory().numTensors >= 0);
});

Deno.test("pretrain() trains a class-conditional model with label dropout, and samples one class per row", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const model = conditionedModel(UNET_CONFIGS.tiny, 10, true, 0.25);
    assertEquals(model.numClasses, 11); // ten digits and the null label
    const cond: PretrainConfig = { ...cfg, model, steps: 2, classDropout: 0.25 };
    const r = await pretrain(cond, ds, { dir, checkpointEvery: 100, logEvery: 1, quiet: true });
    assertEquals(r.curve.points.length, 2);
    const images = sampleImages(cond, r.state.params, 3, 0, { steps: 2 });
    assertEquals(images.shape, [3, 16, 16, 1]);
    images.dispose();
    disposeState(r.state);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
