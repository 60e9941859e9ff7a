// Drawing images from a trained denoiser (any model of lib/models), for pre-training's sample
// grids and `deno task sample`. Conditional models draw the classes in turn, so a square grid
// of a 10-class model shows one class per column; a representation-conditioned model draws
// image i with the representation of the clean input i it is given.
import * as tf from "@tensorflow/tfjs";
import { namedSchedule } from "./diffusion/schedule.ts";
import { sampleLoop } from "./diffusion/sample.ts";
import {
  conditioning,
  denoise,
  inputShape,
  learnSigma,
  type ModelSpec,
  represented,
} from "./models/mod.ts";
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
  /** Clean inputs [n, S, S, C] whose representations condition a representation-conditioned model. */
  readonly x0?: tf.Tensor4D;
  /** Clamp x̂_0 to [−1, 1] at each step: right for pixels, wrong for unit-variance latents. @default true */
  readonly clip?: boolean;
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
  if (represented(model) && opts.x0?.shape[0] !== n) {
    throw new Error(
      `${model.kind} "${model.name}" is representation-conditioned: sampling ${n} images needs ` +
        `${n} clean inputs, got ${opts.x0?.shape[0] ?? "none"}`,
    );
  }
  const sched = namedSchedule(diffusion.schedule, diffusion.diffusionSteps);
  const cond = conditioning(model);
  const x0 = represented(model) ? opts.x0 : undefined;
  const y = cond
    ? tf.tensor1d(Array.from({ length: n }, (_, i) => i % cond.classes), "int32")
    : undefined;
  const p = weights as Params;
  try {
    return sampleLoop(
      sched,
      (xt, t) => denoise(model, p, xt, t, { y, x0 }),
      [n, ...inputShape(model)],
      sampleKey(seed),
      {
        method: opts.method ?? "ddim",
        steps,
        learnSigma: learnSigma(model),
        clip: opts.clip,
        onStep: opts.onStep,
      },
    );
  } finally {
    y?.dispose();
  }
}

/** Options of `saveSampleGrid`. */
export interface GridOptions {
  /** DDIM steps. @default 50 */
  readonly steps?: number;
  /** Clean inputs for a representation-conditioned model (see `SampleOptions.x0`). */
  readonly x0?: tf.Tensor4D;
  /**
   * Latents → pixels in [-1, 1] (a latent model's decoder; x̂_0 is then not clamped while
   * sampling). The caller's tensors stay its own.
   */
  readonly decode?: (z: tf.Tensor4D) => tf.Tensor4D;
}

/** Save a PNG grid of `n` images drawn with `weights` (decoded to pixels for a latent model). */
export async function saveSampleGrid(
  path: string,
  model: ModelSpec,
  diffusion: DiffusionSpec,
  weights: Params | Tensors,
  n: number,
  seed: number,
  opts: GridOptions = {},
): Promise<void> {
  const drawn = sampleImages(model, diffusion, weights, n, seed, {
    steps: opts.steps,
    x0: opts.x0,
    clip: opts.decode === undefined,
  });
  const images = opts.decode ? tf.tidy(() => opts.decode!(drawn)) : drawn;
  try {
    await saveImageGrid(path, images, { cols: Math.ceil(Math.sqrt(n)) });
  } finally {
    if (images !== drawn) images.dispose();
    drawn.dispose();
  }
}
