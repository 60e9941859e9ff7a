// Gaussian diffusion maths on tensors (guided_diffusion/gaussian_diffusion.py, facts.md §3):
// q_sample, x0 ↔ ε conversions, the posterior q(x_{t−1} | x_t, x_0), the model's p(x_{t−1} | x_t)
// and one DDPM / DDIM step. Pure: noise and timesteps are arguments, nothing draws randomness.
//
// Images are NHWC [N, H, W, C]. A timestep argument is either an int32 [N] tensor of schedule
// indices (one per sample, as in training) or one plain index shared by the batch (as in
// sampling). Tables come from `schedule.ts` (float64) and are cast to float32 when gathered.
import * as tf from "@tensorflow/tfjs";
import type { Schedule } from "./schedule.ts";

/** Schedule indices: int32 [N], or one index for the whole batch. */
export type Timesteps = tf.Tensor1D | number;

// ---------------------------------------------------------------------------------------------
// Gather and broadcast
// ---------------------------------------------------------------------------------------------

/**
 * table[t] shaped to broadcast against [N, H, W, C]: [N, 1, 1, 1] for a tensor t, a scalar for
 * a number. The one place schedule tables become tensors (`_extract_into_tensor`).
 */
export function extract(table: Float64Array, t: Timesteps): tf.Tensor {
  if (typeof t === "number") {
    if (!Number.isInteger(t) || t < 0 || t >= table.length) {
      throw new Error(`gaussian.ts: timestep ${t} is outside 0..${table.length - 1}`);
    }
    return tf.scalar(table[t]);
  }
  return tf.tidy(() => {
    const values = tf.gather(tf.tensor1d(Float32Array.from(table)), tf.cast(t, "int32"));
    return tf.reshape(values, [-1, 1, 1, 1]); // [N, 1, 1, 1]
  });
}

function assertSameShape(a: tf.Tensor, b: tf.Tensor, what: string): void {
  if (a.shape.join() !== b.shape.join()) {
    throw new Error(`gaussian.ts: ${what} shapes differ: [${a.shape}] vs [${b.shape}]`);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward process q(x_t | x_0) and the x0 ↔ ε conversions
// ---------------------------------------------------------------------------------------------

/** x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (Ho et al. 2020, eq. 4). */
export function qSample(
  s: Schedule,
  x0: tf.Tensor4D,
  t: Timesteps,
  noise: tf.Tensor4D,
): tf.Tensor4D {
  assertSameShape(x0, noise, "x0 and noise");
  return tf.tidy(() =>
    tf.add(
      tf.mul(extract(s.sqrtAlphasCumprod, t), x0),
      tf.mul(extract(s.sqrtOneMinusAlphasCumprod, t), noise),
    )
  );
}

/** x̂_0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε̂. */
export function predictX0FromEps(
  s: Schedule,
  xt: tf.Tensor4D,
  t: Timesteps,
  eps: tf.Tensor4D,
): tf.Tensor4D {
  assertSameShape(xt, eps, "x_t and eps");
  return tf.tidy(() =>
    tf.sub(
      tf.mul(extract(s.sqrtRecipAlphasCumprod, t), xt),
      tf.mul(extract(s.sqrtRecipm1AlphasCumprod, t), eps),
    )
  );
}

/** ε̂ = (√(1/ᾱ_t)·x_t − x̂_0) / √(1/ᾱ_t − 1), the inverse of `predictX0FromEps`. */
export function predictEpsFromX0(
  s: Schedule,
  xt: tf.Tensor4D,
  t: Timesteps,
  x0: tf.Tensor4D,
): tf.Tensor4D {
  assertSameShape(xt, x0, "x_t and x0");
  return tf.tidy(() =>
    tf.div(
      tf.sub(tf.mul(extract(s.sqrtRecipAlphasCumprod, t), xt), x0),
      extract(s.sqrtRecipm1AlphasCumprod, t),
    )
  );
}

// ---------------------------------------------------------------------------------------------
// Posterior q(x_{t−1} | x_t, x_0) and model p(x_{t−1} | x_t)
// ---------------------------------------------------------------------------------------------

/** A Gaussian over x_{t−1}; variance tensors broadcast against the mean. */
export interface MeanVariance {
  readonly mean: tf.Tensor4D;
  readonly variance: tf.Tensor;
  readonly logVariance: tf.Tensor;
}

/**
 * q(x_{t−1} | x_t, x_0): mean = c1·x_0 + c2·x_t, variance β̃_t, log variance clipped at t = 0
 * (Ho et al. 2020, eqs. 6–7).
 */
export function posteriorMeanVariance(
  s: Schedule,
  x0: tf.Tensor4D,
  xt: tf.Tensor4D,
  t: Timesteps,
): MeanVariance {
  assertSameShape(x0, xt, "x0 and x_t");
  return tf.tidy(() => ({
    mean: tf.add(
      tf.mul(extract(s.posteriorMeanCoef1, t), x0),
      tf.mul(extract(s.posteriorMeanCoef2, t), xt),
    ) as tf.Tensor4D,
    variance: extract(s.posteriorVariance, t),
    logVariance: extract(s.posteriorLogVarianceClipped, t),
  }));
}

/** How the network output is read. */
export interface ModelOutputOptions {
  /**
   * Output has 2C channels: ε̂ then v ∈ [−1, 1] interpolating log σ² between log β̃_t and log β_t
   * (Nichol & Dhariwal 2021, eq. 15). Otherwise C channels of ε̂ with the fixed small variance β̃.
   * @default false
   */
  readonly learnSigma?: boolean;
  /** Clamp x̂_0 to [−1, 1] before it is used (`clip_denoised`). @default true */
  readonly clip?: boolean;
}

/** Split a model output into ε̂ [N, H, W, C] and, with learnSigma, v [N, H, W, C]. */
export function splitOutput(
  out: tf.Tensor4D,
  channels: number,
  learnSigma: boolean,
): [tf.Tensor4D, tf.Tensor4D?] {
  const c = out.shape[3];
  if (c !== (learnSigma ? 2 : 1) * channels) {
    throw new Error(
      `gaussian.ts: model output has ${c} channels, expected ${(learnSigma ? 2 : 1) * channels}`,
    );
  }
  if (!learnSigma) return [out];
  const [eps, v] = tf.split(out, 2, 3) as [tf.Tensor4D, tf.Tensor4D];
  return [eps, v];
}

/**
 * p(x_{t−1} | x_t) from the network output (`p_mean_variance` for ε prediction): x̂_0 from ε̂
 * (clipped when asked), mean = posterior mean at x̂_0, variance learned-range or β̃.
 */
export function pMeanVariance(
  s: Schedule,
  modelOut: tf.Tensor4D,
  xt: tf.Tensor4D,
  t: Timesteps,
  opts: ModelOutputOptions = {},
): MeanVariance & { readonly x0: tf.Tensor4D } {
  const learnSigma = opts.learnSigma ?? false;
  return tf.tidy(() => {
    const [eps, v] = splitOutput(modelOut, xt.shape[3], learnSigma);
    let logVariance: tf.Tensor;
    if (v) {
      const frac = tf.div(tf.add(v, 1), 2);
      const maxLog = extract(s.logBetas, t), minLog = extract(s.posteriorLogVarianceClipped, t);
      logVariance = tf.add(tf.mul(frac, maxLog), tf.mul(tf.sub(1, frac), minLog)); // [N, H, W, C]
    } else {
      logVariance = extract(s.posteriorLogVarianceClipped, t);
    }
    let x0 = predictX0FromEps(s, xt, t, eps);
    if (opts.clip ?? true) x0 = tf.clipByValue(x0, -1, 1);
    const { mean } = posteriorMeanVariance(s, x0, xt, t);
    // Fixed small variance: guided-diffusion uses β̃ itself (0 at t = 0), not exp(log β̃ clipped).
    const variance = v ? tf.exp(logVariance) : extract(s.posteriorVariance, t);
    return { mean, variance, logVariance, x0 };
  });
}

// ---------------------------------------------------------------------------------------------
// Sampler steps
// ---------------------------------------------------------------------------------------------

/** One reverse step: the next (less noisy) sample and the x̂_0 it came from. */
export interface StepResult {
  readonly prev: tf.Tensor4D;
  readonly x0: tf.Tensor4D;
}

/**
 * One ancestral DDPM step (`p_sample`): x_{t−1} = μ_θ + σ_t·z, with no noise where t = 0.
 * For a respaced schedule, t indexes the respaced tables (the network saw `timestepMap[t]`).
 */
export function ddpmStep(
  s: Schedule,
  modelOut: tf.Tensor4D,
  t: Timesteps,
  xt: tf.Tensor4D,
  noise: tf.Tensor4D,
  opts: ModelOutputOptions = {},
): StepResult {
  assertSameShape(xt, noise, "x_t and noise");
  return tf.tidy(() => {
    const p = pMeanVariance(s, modelOut, xt, t, opts);
    const std = tf.exp(tf.mul(0.5, p.logVariance));
    const nonzero = typeof t === "number"
      ? tf.scalar(t === 0 ? 0 : 1)
      : tf.reshape(tf.cast(tf.notEqual(t, 0), "float32"), [-1, 1, 1, 1]); // [N, 1, 1, 1]
    const prev = tf.add(p.mean, tf.mul(tf.mul(nonzero, std), noise)) as tf.Tensor4D;
    return { prev, x0: p.x0 };
  });
}

/** Options of one DDIM step. */
export interface DdimOptions {
  /** η: 0 is the deterministic DDIM ODE, 1 matches DDPM's variance. @default 0 */
  readonly eta?: number;
  /** z for η > 0; required then. */
  readonly noise?: tf.Tensor4D;
  /** Clamp x̂_0 to [−1, 1]. @default true */
  readonly clip?: boolean;
}

/**
 * One DDIM step (Song et al. 2021, eq. 12) from index t to an earlier index tPrev of the same
 * schedule (tPrev = −1: to x_0, ᾱ_prev = 1), so any subset of steps can be walked without
 * building a respaced schedule. ε is re-derived from the clipped x̂_0, as guided-diffusion does:
 *   σ = η·√((1−ᾱ_prev)/(1−ᾱ))·√(1−ᾱ/ᾱ_prev)
 *   x_prev = √ᾱ_prev·x̂_0 + √(1−ᾱ_prev−σ²)·ε + σ·z
 * @param eps ε̂ [N, H, W, C] (the first C channels of a learnSigma output)
 */
export function ddimStep(
  s: Schedule,
  eps: tf.Tensor4D,
  t: number,
  tPrev: number,
  xt: tf.Tensor4D,
  opts: DdimOptions = {},
): StepResult {
  if (!(tPrev < t && tPrev >= -1)) {
    throw new Error(`gaussian.ts: DDIM needs −1 ≤ tPrev < t, got ${tPrev}, ${t}`);
  }
  const eta = opts.eta ?? 0;
  if (eta > 0 && !opts.noise) throw new Error("gaussian.ts: DDIM with eta > 0 needs noise");
  const ab = s.alphasCumprod[t];
  const abPrev = tPrev < 0 ? 1 : s.alphasCumprod[tPrev];
  const sigma = eta * Math.sqrt((1 - abPrev) / (1 - ab)) * Math.sqrt(1 - ab / abPrev);
  const dirCoef = Math.sqrt(Math.max(1 - abPrev - sigma * sigma, 0));
  return tf.tidy(() => {
    let x0 = predictX0FromEps(s, xt, t, eps);
    if (opts.clip ?? true) x0 = tf.clipByValue(x0, -1, 1);
    const epsHat = predictEpsFromX0(s, xt, t, x0);
    let prev = tf.add(tf.mul(Math.sqrt(abPrev), x0), tf.mul(dirCoef, epsHat)) as tf.Tensor4D;
    if (sigma > 0 && opts.noise) prev = tf.add(prev, tf.mul(sigma, opts.noise));
    return { prev, x0 };
  });
}
