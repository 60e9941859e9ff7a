// deno task sample: draw images from a pre-training checkpoint (DDPM or DDIM) into a PNG grid and a
// raw float32 array file (for generation metrics), and write results/sample/<run>.json.
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { disposeCheckpoint, loadCheckpoint, loadParamsStrict } from "../lib/io/checkpoint.ts";
import { saveImageGrid } from "../lib/io/png.ts";
import { writeRawArray } from "../lib/io/raw_array.ts";
import { type ModelSpec, paramShapes, represented, specFromMeta } from "../lib/models/mod.ts";
import { closeLatentSpace, decodeLatents, openLatentSpace } from "../lib/latent.ts";
import type { LatentSpec } from "../lib/pretrain.ts";
import * as tf from "@tensorflow/tfjs";
import { disposeParams } from "../lib/params.ts";
import { type DiffusionSpec, sampleImages } from "../lib/sampling.ts";
import { progress } from "../lib/progress.ts";
import { finishRun, resultsDir, runStem, startRun } from "../lib/results.ts";

const FLAGS = {
  ...COMMON_FLAGS,
  checkpoint: {
    kind: "string",
    help: "checkpoint.safetensors or an exported .weights.safetensors (required)",
  },
  n: { kind: "int", default: 64, help: "number of images", min: 1 },
  method: { kind: "string", default: "ddim", help: "sampler", choices: ["ddim", "ddpm"] },
  steps: {
    kind: "int",
    default: 50,
    help: "network calls (fewer than T respaces the schedule)",
    min: 1,
  },
  weights: {
    kind: "string",
    default: "ema",
    help: "which weights of a training checkpoint",
    choices: ["ema", "raw"],
  },
  run: { kind: "string", help: "run name (default: <checkpoint dir>-<method><steps>-seed<seed>)" },
} as const;

await runMain(async () => {
  const a = parseCli(
    "sample",
    "Draw images from a diffusion checkpoint to results/sample/<run>.png and <run>.safetensors.",
    FLAGS,
  );
  if (!a.checkpoint) throw new UsageError("--checkpoint is required");
  if (a.run !== undefined && !/^[A-Za-z0-9._-]+$/.test(a.run)) {
    throw new UsageError(`--run: "${a.run}" must use letters, digits, ".", "_" or "-"`);
  }
  const engine = await initEngine({ backend: a.backend });
  const ck = await loadCheckpoint(a.checkpoint);
  let model: ModelSpec, diffusion: DiffusionSpec;
  try {
    model = specFromMeta(ck.meta.config, `Checkpoint "${a.checkpoint}"`);
    diffusion = ck.meta.config as DiffusionSpec;
    if (represented(model)) {
      throw new UsageError(
        "The checkpoint is representation-conditioned: each draw needs a clean input to embed. " +
          "Its pre-training's sample grid and `deno task dit-figures` draw from dataset images.",
      );
    }
    if (a.steps > diffusion.diffusionSteps) {
      throw new UsageError(
        `--steps: ${a.steps} is more than the checkpoint's ${diffusion.diffusionSteps} diffusion steps`,
      );
    }
  } catch (e) {
    disposeCheckpoint(ck);
    throw e;
  }
  const source = a.weights === "ema" && Object.keys(ck.ema).length > 0 ? ck.ema : ck.params;
  const weights = loadParamsStrict(paramShapes(model), source, `"${a.checkpoint}"`);

  const run = a.run ?? `${runStem(a.checkpoint)}-${a.method}${a.steps}-seed${a.seed}`;
  const handle = await startRun(
    "sample",
    run,
    {
      checkpoint: a.checkpoint,
      n: a.n,
      method: a.method,
      steps: a.steps,
      weights: a.weights,
      model: { kind: model.kind, name: model.name },
    },
    a.seed,
    { engine, task: "sample" },
  );
  // A latent model's draws are decoded by the autoencoder its checkpoint names.
  const latent = (ck.meta.config as { latent?: LatentSpec }).latent;
  const space = latent && await openLatentSpace(latent.weights);
  if (space && space.latent.sha256 !== latent!.sha256) {
    throw new UsageError(`${latent!.weights} changed since the model was trained on its latents`);
  }
  const bar = progress({ label: "sample", total: a.steps });
  const drawn = sampleImages(model, diffusion, weights, a.n, a.seed, {
    method: a.method as "ddim" | "ddpm",
    steps: a.steps,
    clip: !space,
    onStep: (d) => bar.tick(d),
  });
  bar.done();
  const images = space ? decodeLatents(space, drawn) : drawn;
  if (space) {
    tf.dispose(drawn);
    closeLatentSpace(space);
  }

  // Read the images off the backend once; the grid, the raw file and the metric share it.
  const data = Float32Array.from(await images.data());
  const shape = images.shape;
  images.dispose();
  disposeParams(weights);
  disposeCheckpoint(ck);
  const out = `${resultsDir()}/sample`;
  const png = `${out}/${run}.png`, raw = `${out}/${run}.safetensors`;
  await saveImageGrid(png, { data, shape });
  await writeRawArray(raw, data, shape, {
    checkpoint: a.checkpoint,
    range: "[-1, 1]",
    layout: "NHWC",
  });
  let mean = 0;
  for (const v of data) mean += v / data.length;
  const path = await finishRun(handle, {
    metrics: { images: a.n, pixel_mean: mean },
    artifacts: [png, raw],
  });
  console.error(`sample: wrote ${path}`);
});
