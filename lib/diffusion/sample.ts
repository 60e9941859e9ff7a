// Sampling loops over a denoiser: ancestral DDPM (optionally respaced) and DDIM, from x_T ~ N(0, I)
// down to x_0. All randomness comes from one Rng: x_T from its first child key, the noise of
// step i from fold(second child, i), so a run is a pure function of (model, rng, options).
import * as tf from "@tensorflow/tfjs";
import { fold, normal, type Rng, split } from "../random.ts";
import { respace, samplingTimesteps, type Schedule } from "./schedule.ts";
import { ddimStep, ddpmStep, splitOutput } from "./gaussian.ts";
import type { DenoiseFn } from "./losses.ts";

/** Options of `sampleLoop`. */
export interface SampleOptions {
  /** "ddpm": ancestral sampling; "ddim": the DDIM update with `eta`. @default "ddpm" */
  readonly method?: "ddpm" | "ddim";
  /** Number of network calls; fewer than T respaces the schedule. @default T */
  readonly steps?: number;
  /** How kept steps are chosen (see `samplingTimesteps`). @default "ddim" for DDIM, "uniform" for DDPM */
  readonly spacing?: "ddim" | "uniform";
  /** DDIM η. @default 0 */
  readonly eta?: number;
  /** Network output holds ε̂ and the variance interpolation v (2C channels). @default false */
  readonly learnSigma?: boolean;
  /** Clamp x̂_0 to [−1, 1] at every step. @default true */
  readonly clip?: boolean;
  /** Start from this x_T instead of drawing it (the caller keeps ownership). */
  readonly xT?: tf.Tensor4D;
  /** Called after each step with (steps done, total steps). */
  readonly onStep?: (done: number, total: number) => void;
}

/**
 * Draw samples of `shape` [N, H, W, C] by running `model` from t = T−1 to 0 over schedule `s`.
 * The model receives the original training timesteps (int32 [N]) even when respaced.
 * @returns x_0 [N, H, W, C] (not clipped beyond what the steps do)
 */
export function sampleLoop(
  s: Schedule,
  model: DenoiseFn,
  shape: readonly [number, number, number, number],
  rng: Rng,
  opts: SampleOptions = {},
): tf.Tensor4D {
  const method = opts.method ?? "ddpm";
  const steps = opts.steps ?? s.T;
  const learnSigma = opts.learnSigma ?? false;
  const kept = samplingTimesteps(
    s.T,
    steps,
    opts.spacing ?? (method === "ddim" ? "ddim" : "uniform"),
  );
  // DDPM walks a respaced schedule; DDIM walks the kept indices of the original one.
  const ddpmSched = method === "ddpm" && kept.length !== s.T ? respace(s, kept) : s;
  const [initKey, stepKey] = split(rng);
  let x = opts.xT ? tf.clone(opts.xT) : normal(initKey, shape) as tf.Tensor4D;
  const n = shape[0];
  for (let j = kept.length - 1; j >= 0; j--) {
    const done = kept.length - j;
    const next = tf.tidy(() => {
      const modelT = method === "ddpm" ? ddpmSched.timestepMap[j] : s.timestepMap[kept[j]];
      const out = model(x, tf.fill([n], modelT, "int32") as tf.Tensor1D);
      if (method === "ddpm") {
        const noise = normal(fold(stepKey, j), shape) as tf.Tensor4D;
        return ddpmStep(ddpmSched, out, j, x, noise, { learnSigma, clip: opts.clip }).prev;
      }
      const [eps] = splitOutput(out, shape[3], learnSigma);
      const eta = opts.eta ?? 0;
      const noise = eta > 0 ? normal(fold(stepKey, j), shape) as tf.Tensor4D : undefined;
      return ddimStep(s, eps, kept[j], j > 0 ? kept[j - 1] : -1, x, { eta, noise, clip: opts.clip })
        .prev;
    });
    x.dispose();
    x = next;
    opts.onStep?.(done, kept.length);
  }
  return x;
}
