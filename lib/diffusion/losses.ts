// Diffusion training losses (guided_diffusion/losses.py and `training_losses`, facts.md §1):
// L_simple = mean‖ε − ε̂‖², and with a learned variance the hybrid L_simple + L_vb, where L_vb is
// the KL between the true posterior and p(x_{t−1} | x_t) in bits, with the mean stop-gradient'ed
// so that only the variance channels learn from it; at t = 0 it is the discretised decoder NLL.
import * as tf from "@tensorflow/tfjs";
import type { Schedule } from "./schedule.ts";
import { pMeanVariance, posteriorMeanVariance, qSample, splitOutput } from "./gaussian.ts";

// ---------------------------------------------------------------------------------------------
// Likelihood helpers (nats unless named otherwise)
// ---------------------------------------------------------------------------------------------

/** KL(N(μ1, e^{lv1}) ‖ N(μ2, e^{lv2})) elementwise; arguments broadcast. */
export function normalKl(
  mean1: tf.Tensor,
  logvar1: tf.Tensor,
  mean2: tf.Tensor,
  logvar2: tf.Tensor,
): tf.Tensor {
  return tf.tidy(() => {
    const sq = tf.squaredDifference(mean1, mean2);
    const inner = tf.add(tf.sub(tf.sub(logvar2, logvar1), 1), tf.exp(tf.sub(logvar1, logvar2)));
    return tf.mul(0.5, tf.add(inner, tf.mul(sq, tf.exp(tf.neg(logvar2)))));
  });
}

/**
 * Φ(x) by the tanh approximation used in Ho et al.'s code (the same as tanh-GELU's),
 * ½(1 + tanh u) with u = √(2/π)(x + 0.044715x³), computed as the equal σ(2u) (one kernel, and
 * wasm's Sigmoid is several times faster than its Tanh).
 */
export function approxStandardNormalCdf(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const cube = tf.mul(x, tf.mul(x, x));
    return tf.sigmoid(tf.mul(2 * Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, cube))));
  });
}

/**
 * log p(x) of 8-bit data scaled to [−1, 1] under N(mean, e^{2·logScale}) discretised into bins
 * of width 2/255; the edge bins extend to ±∞.
 */
export function discretizedGaussianLogLikelihood(
  x: tf.Tensor,
  means: tf.Tensor,
  logScales: tf.Tensor,
): tf.Tensor {
  return tf.tidy(() => {
    const centered = tf.sub(x, means);
    const invStd = tf.exp(tf.neg(logScales));
    const cdfPlus = approxStandardNormalCdf(tf.mul(invStd, tf.add(centered, 1 / 255)));
    const cdfMin = approxStandardNormalCdf(tf.mul(invStd, tf.sub(centered, 1 / 255)));
    const logCdfPlus = tf.log(tf.maximum(cdfPlus, 1e-12));
    const logOneMinusCdfMin = tf.log(tf.maximum(tf.sub(1, cdfMin), 1e-12));
    const logDelta = tf.log(tf.maximum(tf.sub(cdfPlus, cdfMin), 1e-12));
    const shape = x.shape;
    const bc = (t: tf.Tensor) => tf.broadcastTo(t, shape);
    return tf.where(
      tf.less(x, -0.999),
      bc(logCdfPlus),
      tf.where(tf.greater(x, 0.999), bc(logOneMinusCdfMin), bc(logDelta)),
    );
  });
}

/** Mean over every axis but the first: [N, …] → [N]. */
export function meanFlat(x: tf.Tensor): tf.Tensor1D {
  return tf.tidy(() => tf.mean(tf.reshape(x, [x.shape[0], -1]), 1));
}

// Identity forward, zero gradient: the `.detach()` of the hybrid loss.
const stopGradientOp = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
  value: tf.clone(args[0] as tf.Tensor),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
}));

/** The value of x with no gradient flowing back into it. */
export function stopGradient<T extends tf.Tensor>(x: T): T {
  return stopGradientOp(x) as T;
}

// ---------------------------------------------------------------------------------------------
// Variational bound term and training losses
// ---------------------------------------------------------------------------------------------

/**
 * One term of the variational bound in bits per dimension, [N]: KL(q(x_{t−1}|x_t,x_0) ‖
 * p(x_{t−1}|x_t)) for t > 0 and the decoder NLL −log p(x_0|x_1) at t = 0 (`_vb_terms_bpd`,
 * unclipped x̂_0 as in training).
 */
export function vbTermsBpd(
  s: Schedule,
  modelOut: tf.Tensor4D,
  x0: tf.Tensor4D,
  xt: tf.Tensor4D,
  t: tf.Tensor1D,
  learnSigma: boolean,
): tf.Tensor1D {
  return tf.tidy(() => {
    const q = posteriorMeanVariance(s, x0, xt, t);
    const p = pMeanVariance(s, modelOut, xt, t, { learnSigma, clip: false });
    const kl = tf.div(meanFlat(normalKl(q.mean, q.logVariance, p.mean, p.logVariance)), Math.LN2);
    const logScales = tf.broadcastTo(tf.mul(0.5, p.logVariance), x0.shape);
    const nll = tf.div(
      meanFlat(tf.neg(discretizedGaussianLogLikelihood(x0, p.mean, logScales))),
      Math.LN2,
    );
    return tf.where(tf.equal(t, 0), nll, kl) as tf.Tensor1D;
  });
}

/** Per-sample terms of the diffusion loss, each [N]. */
export interface DiffusionLosses {
  readonly loss: tf.Tensor1D;
  readonly mse: tf.Tensor1D;
  /** Present with learnSigma. */
  readonly vb?: tf.Tensor1D;
}

/** The network as the loss sees it: x_t [N, H, W, C] and model timesteps [N] → output. */
export type DenoiseFn = (xt: tf.Tensor4D, t: tf.Tensor1D) => tf.Tensor4D;

/**
 * `training_losses` for ε prediction with LossType.MSE: x_t = q_sample(x0, t, noise), output
 * = model(x_t, timestepMap[t]); mse = meanFlat((ε − ε̂)²); with learnSigma also vb (mean
 * stop-gradient'ed, not rescaled) and loss = mse + vb.
 * @param t schedule indices, int32 [N]
 */
export function trainingLosses(
  s: Schedule,
  model: DenoiseFn,
  x0: tf.Tensor4D,
  t: tf.Tensor1D,
  noise: tf.Tensor4D,
  opts: { readonly learnSigma?: boolean } = {},
): DiffusionLosses {
  const learnSigma = opts.learnSigma ?? false;
  return tf.tidy(() => {
    const xt = qSample(s, x0, t, noise);
    const modelT = isIdentity(s)
      ? t
      : tf.gather(tf.tensor1d(s.timestepMap, "int32"), t) as tf.Tensor1D;
    const out = model(xt, modelT);
    const [eps, v] = splitOutput(out, x0.shape[3], learnSigma);
    const mse = meanFlat(tf.squaredDifference(noise, eps));
    if (!v) return { loss: mse, mse };
    const frozen = tf.concat([stopGradient(eps), v], 3) as tf.Tensor4D;
    const vb = vbTermsBpd(s, frozen, x0, xt, t, true);
    return { loss: tf.add(mse, vb) as tf.Tensor1D, mse, vb };
  });
}

/** The batch-mean diffusion loss (uniform t sampling weights), a scalar to minimise. */
export function diffusionLoss(
  s: Schedule,
  model: DenoiseFn,
  x0: tf.Tensor4D,
  t: tf.Tensor1D,
  noise: tf.Tensor4D,
  opts: { readonly learnSigma?: boolean } = {},
): tf.Scalar {
  return tf.tidy(() => tf.mean(trainingLosses(s, model, x0, t, noise, opts).loss));
}

function isIdentity(s: Schedule): boolean {
  return s.timestepMap.every((v, i) => v === i);
}
