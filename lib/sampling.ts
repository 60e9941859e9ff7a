// Drawing images from a trained denoiser (any model of lib/models), for pre-training's sample
// grids and `deno task sample`. Conditional models draw the classes in turn, so a square grid
// of a 10-class model shows one class per column.
import * as tf from "@tensorflow/tfjs";
import { namedSchedule } from "./diffusion/schedule.ts";
import { sampleLoop } from "./diffusion/sample.ts";
import { conditioning, denoise, inputShape, learnSigma, type ModelSpec } from "./models/mod.ts";
import type { Params } from "./params.ts";
import type { Tensors } from "./optim.ts";
import { sampleKey } from "./pretrain_data.ts";
import { saveImageGrid } from "./io/png.ts";

/** The diffusion a model was trained with. */
export interface DiffusionSpec {
  readonly schedule: "linear" | "cosine";
  readonly diffusionSteps: number;
}

export interface SampleOptions {
  /** @default "ddim" */
  readonly method?: "ddim" | "ddpm";
  /** Network calls; fewer than T respaces the schedule. @default 50 */
  readonly steps?: number;
  readonly onStep?: (done: number, total: number) => void;
}

/** Draw `n` images with the given weights; returns [n, S, S, C] in [-1, 1]. */
export function sampleImages(
  model: ModelSpec,
  diffusion: DiffusionSpec,
  weights: Params | Tensors,
  n: number,
  seed: number,
  opts: SampleOptions = {},
): tf.Tensor4D {
  const steps = opts.steps ?? 50;
  if (!(Number.isInteger(steps) && steps >= 1 && steps <= diffusion.diffusionSteps)) {
    throw new Error(`Sampling steps ${steps} must be in 1..${diffusion.diffusionSteps} (T)`);
  }
  const sched = namedSchedule(diffusion.schedule, diffusion.diffusionSteps);
  const cond = conditioning(model);
  const y = cond
    ? tf.tensor1d(Array.from({ length: n }, (_, i) => i % cond.classes), "int32")
    : undefined;
  const p = weights as Params;
  try {
    return sampleLoop(
      sched,
      (xt, t) => denoise(model, p, xt, t, { y }),
      [n, ...inputShape(model)],
      sampleKey(seed),
      {
        method: opts.method ?? "ddim",
        steps,
        learnSigma: learnSigma(model),
        onStep: opts.onStep,
      },
    );
  } finally {
    y?.dispose();
  }
}

/** Save a PNG grid of `n` images drawn with `weights`. */
export async function saveSampleGrid(
  path: string,
  model: ModelSpec,
  diffusion: DiffusionSpec,
  weights: Params | Tensors,
  n: number,
  seed: number,
  steps = 50,
): Promise<void> {
  const images = sampleImages(model, diffusion, weights, n, seed, { steps });
  try {
    await saveImageGrid(path, images, { cols: Math.ceil(Math.sqrt(n)) });
  } finally {
    images.dispose();
  }
}
