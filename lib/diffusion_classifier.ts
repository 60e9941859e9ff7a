// Diffusion Classifier (Li et al. 2023, "Your diffusion model is secretly a zero-shot
// classifier") and Diffusion Classifier Zero (seed 000 §3.2, eqs. 3–4): a class-conditional
// denoiser classifies x0 by the label whose conditioning explains x0 best,
//   DC       ŷ = argmin_c E_{t,ε} ‖ε − ε̂_θ(x_t, c, t)‖²
//   DC Zero  ŷ = argmin_c E_{t,ε} ‖x0 − x̂0(x_t, c, t)‖²,   x̂0 = (x_t − √(1−ᾱ_t)·ε̂_θ) / √ᾱ_t
// with x_t = q_sample(x0, t, ε). ‖·‖² is the mean over pixels and channels (or the mean |·|,
// "l1"), as the reference's eval_prob_adaptive.py computes it; E_{t,ε} is the mean over the
// evaluated timesteps with one ε each (its n_trials = 1). With learnSigma only ε̂'s channels count.
//
// Noise (facts.md §6): the ε of image `id` at timestep t is imageNoise(noiseKey, [id], t) of
// lib/features.ts, so every class of an image sees the same (t, ε), and a result depends neither
// on the batch an image comes in nor on which classes are still in the running, up to float
// rounding: oneDNN's kernel choice can follow the batch size (seen on an AVX2-only EPYC: nll
// differed in the 5th digit between batches of 16 and 3), so the predictions match, not the bits.
//
// Timesteps and adaptive pruning (eval_prob_adaptive.py). A plan has a grid G of L timesteps,
// either given or the reference's: with M samples of T steps, G = M', M' + d, …, (M entries),
// d = T//M, M' = T//M//2 (M = 500 of 1000: 1, 3, …, 999). Stages (n_s, k_s) then run in order:
//   1. stage s picks G[⌊e/2⌋ + j·e] for j < n_s, e = ⌊L/n_s⌋, and drops those an earlier stage
//      evaluated (so [20, 50, 100, 500] of 500 adds 20, 50, 80, 350 timesteps);
//   2. every class still in the running is evaluated at the stage's new timesteps;
//   3. the classes are ranked by their mean error over all timesteps evaluated so far (ties to
//      the lower label, NaN last) and the min(k_s, |alive|) lowest stay;
//   4. once one class is left it is the prediction and the remaining stages are skipped (the
//      reference would still evaluate the lone survivor on them: the same answer, at more cost).
// When the stages end with several classes left, the prediction is the lowest of them (the
// argmin). A plan of explicit timesteps and no stages is one stage of all of them with keep 1:
// plain argmin over every class at every timestep.
//
// Output per image: the prediction; the mean error of each class, NaN for a class pruned before
// the image's last timesteps were evaluated (its partial mean, over fewer and easier-to-rank
// timesteps, is not comparable with the others'); and the network evaluations spent, one per
// (class, timestep) row. Rows of many images, classes and timesteps go through the network
// together, at most `maxBatch` per call.
import * as tf from "@tensorflow/tfjs";
import { count, type Dataset } from "./data/dataset.ts";
import { predictX0FromEps, qSample, splitOutput } from "./diffusion/gaussian.ts";
import type { Schedule } from "./diffusion/schedule.ts";
import { type FrozenModel, imageNoise } from "./features.ts";
import { conditioning, denoise, learnSigma } from "./models/mod.ts";
import type { Rng } from "./random.ts";

// ---------------------------------------------------------------------------------------------
// The model as the classifier sees it
// ---------------------------------------------------------------------------------------------

/**
 * A class-conditional ε predictor: x_t [R, S, S, C] at schedule indices t [R] (int32) with labels
 * y [R] in 0..K−1 → ε̂ [R, S, S, C]. Called inside a tidy; tests inject one directly.
 */
export type ConditionalEps = (xt: tf.Tensor4D, t: tf.Tensor1D, y: tf.Tensor1D) => tf.Tensor4D;

/** What a diffusion classifier needs: the ε predictor, its K labels and its schedule. */
export interface ClassifierModel {
  readonly eps: ConditionalEps;
  readonly classes: number;
  readonly schedule: Schedule;
}

/**
 * A frozen denoiser as a classifier model: ε̂ is the first C channels of `denoise` (the
 * variance channels of a learnSigma model are ignored), in eval mode (no label dropout), at the
 * model timestep `timestepMap[t]` of a respaced schedule.
 * @throws Error when the model is not class-conditional
 */
export function classifierModel(model: FrozenModel): ClassifierModel {
  const { spec, params, schedule } = model;
  const cond = conditioning(spec);
  if (!cond) {
    throw new Error(
      `Diffusion Classifier needs a class-conditional model, but ${spec.kind} "${spec.name}" ` +
        "has no classes (pre-train or tune it with --class-cond)",
    );
  }
  const sigma = learnSigma(spec);
  const identity = schedule.timestepMap.every((v, i) => v === i);
  return {
    classes: cond.classes,
    schedule,
    eps: (xt, t, y) =>
      tf.tidy(() => {
        const modelT = identity
          ? t
          : tf.gather(tf.tensor1d(schedule.timestepMap, "int32"), t) as tf.Tensor1D;
        const out = denoise(spec, params, xt, modelT, { y });
        return splitOutput(out, xt.shape[3], sigma)[0]; // [R, S, S, C]
      }),
  };
}

// ---------------------------------------------------------------------------------------------
// Timestep plans
// ---------------------------------------------------------------------------------------------

/** One adaptive stage: evaluate `samples` timesteps of the grid, then keep the best `keep`. */
export interface Stage {
  readonly samples: number;
  readonly keep: number;
}

/** A resolved stage: the timesteps it adds (not evaluated before) and how many classes stay. */
export interface PlanStage {
  readonly timesteps: readonly number[];
  readonly keep: number;
}

/** The grid and the resolved stages. */
export interface Plan {
  readonly grid: readonly number[];
  readonly stages: readonly PlanStage[];
}

/**
 * The reference's evenly spaced grid: M' + i·(T//M) for i < M, M' = T//M//2.
 * @throws Error unless 1 ≤ M ≤ T
 * @example
 * ```ts
 * timestepGrid(1000, 500); // [1, 3, 5, …, 999]
 * timestepGrid(1000, 250); // [2, 6, …, 998], DiT's t_interval 4
 * ```
 */
export function timestepGrid(T: number, samples: number): number[] {
  if (!(Number.isInteger(samples) && samples >= 1 && samples <= T)) {
    throw new Error(`Timestep samples should be an integer in 1..${T}, got ${samples}`);
  }
  const d = Math.floor(T / samples), start = Math.floor(d / 2);
  return Array.from({ length: samples }, (_, i) => start + i * d);
}

/** grid[⌊e/2⌋ :: e][:n] with e = ⌊L/n⌋: n timesteps spread over the grid (n ≤ L). */
export function stageTimesteps(grid: readonly number[], samples: number): number[] {
  const e = Math.floor(grid.length / samples);
  return Array.from({ length: samples }, (_, j) => grid[Math.floor(e / 2) + j * e]);
}

/** How the timesteps are chosen; see the file header for the rule. */
export interface PlanOptions {
  /** The grid, in the order stages pick from. @default timestepGrid(T, max stage samples) */
  readonly timesteps?: readonly number[];
  /** Adaptive stages. @default one stage of the whole grid, keep 1 */
  readonly stages?: readonly Stage[];
}

/**
 * Resolve a grid and stages for a T-step schedule.
 * @throws Error listing every fault: neither timesteps nor stages, a timestep outside 0..T−1 or
 * repeated, a stage's samples outside 1..L or keep below 1
 * @example
 * ```ts
 * // The reference's Food/Aircraft setting: 20, 50, 100, 500 timesteps keeping 20, 10, 5, 1.
 * makePlan(1000, { stages: [
 *   { samples: 20, keep: 20 }, { samples: 50, keep: 10 }, { samples: 100, keep: 5 },
 *   { samples: 500, keep: 1 },
 * ] });
 * ```
 */
export function makePlan(T: number, o: PlanOptions): Plan {
  const faults: string[] = [];
  if (!o.timesteps && !o.stages?.length) {
    throw new Error("A diffusion classifier plan needs timesteps or stages");
  }
  const maxSamples = Math.max(...(o.stages ?? []).map((s) => s.samples));
  const grid = o.timesteps ? [...o.timesteps] : timestepGrid(T, maxSamples);
  if (grid.length === 0) faults.push("the timestep list is empty");
  const bad = grid.filter((t) => !(Number.isInteger(t) && t >= 0 && t < T));
  if (bad.length) faults.push(`timesteps ${bad.join(", ")} are outside 0..${T - 1}`);
  if (new Set(grid).size !== grid.length) faults.push("timesteps repeat");
  const stages = o.stages ?? [{ samples: grid.length, keep: 1 }];
  stages.forEach((s, i) => {
    if (!(Number.isInteger(s.samples) && s.samples >= 1 && s.samples <= grid.length)) {
      faults.push(`stage ${i + 1} samples ${s.samples} is outside 1..${grid.length}`);
    }
    if (!(Number.isInteger(s.keep) && s.keep >= 1)) {
      faults.push(`stage ${i + 1} keeps ${s.keep}, expected an integer ≥ 1`);
    }
  });
  if (faults.length) throw new Error(`Bad diffusion classifier plan: ${faults.join("; ")}`);
  const done = new Set<number>();
  return {
    grid,
    stages: stages.map((s) => {
      const timesteps = stageTimesteps(grid, s.samples).filter((t) => !done.has(t));
      timesteps.forEach((t) => done.add(t));
      return { timesteps, keep: s.keep };
    }),
  };
}

/**
 * Network evaluations one image costs under a plan, in closed form: Σ_s |alive_s|·|new_s|, with
 * alive_0 = K, alive_{s+1} = min(k_s, alive_s), stopping once one class is left.
 */
export function evaluationsPerImage(plan: Plan, classes: number): number {
  let alive = classes, total = 0;
  for (const s of plan.stages) {
    if (alive === 1) break;
    total += alive * s.timesteps.length;
    alive = Math.min(s.keep, alive);
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/** What is compared and how. */
export interface ClassifierOptions {
  /** The key ε is drawn from, per image id and t (`imageNoise`). */
  readonly noiseKey: Rng;
  /** "eps": Diffusion Classifier (‖ε − ε̂‖); "x0": Diffusion Classifier Zero (‖x0 − x̂0‖). @default "eps" */
  readonly target?: "eps" | "x0";
  /** Per-element error: squared ("l2", the reference's default) or absolute ("l1"). @default "l2" */
  readonly loss?: "l2" | "l1";
  /**
   * Clamp x̂0 to [−1, 1] before comparing it (target "x0" only). Seed 000's eq. 3 does not clip,
   * and a latent DiT's x0 is not bounded to [−1, 1]. @default false
   */
  readonly clipX0?: boolean;
  /** Most rows (image × class × timestep) per network call. @default 256 */
  readonly maxBatch?: number;
}

/** The classification of a batch of B images over K classes. */
export interface BatchResult {
  /** Predicted class of each image, [B]. */
  readonly predicted: Int32Array;
  /** Mean error of each class, [B·K] row-major; NaN for a class pruned before the last stage. */
  readonly errors: Float64Array;
  /** Network evaluations per image (class × timestep rows), [B]. */
  readonly evaluations: Int32Array;
  /** Network calls made for the batch. */
  readonly calls: number;
  /** Wall-clock seconds the batch took. */
  readonly seconds: number;
}

interface Row {
  readonly t: number;
  readonly image: number;
  readonly label: number;
}

/** Mean error of each row, [R]: one network call. */
async function rowErrors(
  model: ClassifierModel,
  x0: tf.Tensor4D,
  ids: ArrayLike<number>,
  rows: readonly Row[],
  o: ClassifierOptions,
): Promise<Float32Array> {
  const s = model.schedule;
  const shape = x0.shape.slice(1) as [number, number, number];
  // Rows come t-major, so the (t, image) pairs of a chunk are grouped by t.
  const pairOf = new Map<number, number>();
  const pairT: number[] = [], pairImage: number[] = [];
  const rowPair = rows.map((r) => {
    const k = r.t * x0.shape[0] + r.image;
    if (!pairOf.has(k)) {
      pairOf.set(k, pairT.length);
      pairT.push(r.t);
      pairImage.push(r.image);
    }
    return pairOf.get(k)!;
  });
  const err = tf.tidy(() => {
    const noises: tf.Tensor4D[] = [];
    for (let p = 0; p < pairT.length;) {
      let q = p;
      while (q < pairT.length && pairT[q] === pairT[p]) q++;
      const at = pairImage.slice(p, q).map((i) => ids[i]);
      noises.push(imageNoise(o.noiseKey, at, pairT[p], shape));
      p = q;
    }
    const noise = tf.concat(noises, 0) as tf.Tensor4D; // [P, S, S, C]
    const x0p = tf.gather(x0, pairImage) as tf.Tensor4D; // [P, S, S, C]
    const tp = tf.tensor1d(pairT, "int32");
    const xtp = qSample(s, x0p, tp, noise); // [P, S, S, C]
    const idx = tf.tensor1d(rowPair, "int32");
    const xt = tf.gather(xtp, idx) as tf.Tensor4D; // [R, S, S, C]: one x_t shared by every class
    const t = tf.gather(tp, idx) as tf.Tensor1D;
    const y = tf.tensor1d(rows.map((r) => r.label), "int32");
    const epsHat = model.eps(xt, t, y);
    if (epsHat.shape.join() !== xt.shape.join()) {
      throw new Error(
        `Diffusion classifier: the denoiser returned [${epsHat.shape}] for x_t [${xt.shape}]`,
      );
    }
    let target: tf.Tensor4D, estimate: tf.Tensor4D;
    if ((o.target ?? "eps") === "eps") {
      target = tf.gather(noise, idx) as tf.Tensor4D;
      estimate = epsHat;
    } else {
      target = tf.gather(x0p, idx) as tf.Tensor4D;
      estimate = predictX0FromEps(s, xt, t, epsHat); // eq. 3
      if (o.clipX0) estimate = tf.clipByValue(estimate, -1, 1);
    }
    const d = tf.sub(target, estimate);
    return tf.mean((o.loss ?? "l2") === "l2" ? tf.square(d) : tf.abs(d), [1, 2, 3]); // [R]
  });
  try {
    return (await err.data()) as Float32Array;
  } finally {
    err.dispose();
  }
}

function checkOptions(model: ClassifierModel, plan: Plan, o: ClassifierOptions): void {
  const faults: string[] = [];
  if (!(Number.isInteger(model.classes) && model.classes >= 2)) {
    faults.push(`it needs at least 2 classes, got ${model.classes}`);
  }
  const T = model.schedule.T;
  if (plan.grid.some((t) => !(Number.isInteger(t) && t >= 0 && t < T))) {
    faults.push(`the plan's timesteps must lie in 0..${T - 1}`);
  }
  const b = o.maxBatch ?? 256;
  if (!(Number.isInteger(b) && b >= 1)) faults.push(`maxBatch ${b} is not a positive integer`);
  if (o.target !== undefined && o.target !== "eps" && o.target !== "x0") {
    faults.push(`unknown target "${o.target}" (eps or x0)`);
  }
  if (o.loss !== undefined && o.loss !== "l2" && o.loss !== "l1") {
    faults.push(`unknown loss "${o.loss}" (l2 or l1)`);
  }
  if (faults.length) throw new Error(`Diffusion classifier: ${faults.join("; ")}`);
}

// Class order by mean error, ties to the lower label, NaN last.
function rank(alive: readonly number[], mean: (c: number) => number): number[] {
  const key = (c: number) => (Number.isNaN(mean(c)) ? Infinity : mean(c));
  return [...alive].sort((a, b) => key(a) - key(b) || a - b);
}

/**
 * Classify a batch of images (the unit a script checkpoints between).
 * @param x0 images [B, S, S, C], in the model's data space
 * @param ids each image's id for its noise (its index in the split), [B]
 * @throws Error for a bad option, ids of the wrong length, or a denoiser output of the wrong shape
 */
export async function classifyBatch(
  model: ClassifierModel,
  x0: tf.Tensor4D,
  ids: ArrayLike<number>,
  plan: Plan,
  o: ClassifierOptions,
): Promise<BatchResult> {
  checkOptions(model, plan, o);
  const B = x0.shape[0], K = model.classes;
  if (ids.length !== B) throw new Error(`Diffusion classifier: ${ids.length} ids for ${B} images`);
  const start = performance.now();
  if (B === 0) {
    const none = new Int32Array(0);
    return {
      predicted: none,
      errors: new Float64Array(0),
      evaluations: none,
      calls: 0,
      seconds: 0,
    };
  }
  const sums = new Float64Array(B * K), seen = new Int32Array(B * K);
  const evaluations = new Int32Array(B);
  const mean = (i: number) => (c: number) => sums[i * K + c] / seen[i * K + c];
  let alive = Array.from({ length: B }, () => Array.from({ length: K }, (_, c) => c));
  let evaluated = 0, calls = 0;
  const maxBatch = o.maxBatch ?? 256;
  for (const stage of plan.stages) {
    if (alive[0].length === 1) break; // every image keeps the same number of classes
    const rows: Row[] = [];
    for (const t of stage.timesteps) {
      for (let i = 0; i < B; i++) for (const c of alive[i]) rows.push({ t, image: i, label: c });
    }
    for (let r0 = 0; r0 < rows.length; r0 += maxBatch) {
      const chunk = rows.slice(r0, r0 + maxBatch);
      const err = await rowErrors(model, x0, ids, chunk, o);
      chunk.forEach((r, j) => {
        sums[r.image * K + r.label] += err[j];
        seen[r.image * K + r.label]++;
        evaluations[r.image]++;
      });
      calls++;
    }
    evaluated += stage.timesteps.length;
    alive = alive.map((a, i) => rank(a, mean(i)).slice(0, Math.min(stage.keep, a.length)));
  }
  const errors = new Float64Array(B * K);
  for (let j = 0; j < B * K; j++) errors[j] = seen[j] === evaluated ? sums[j] / seen[j] : NaN;
  const predicted = Int32Array.from(alive, (a, i) => rank(a, mean(i))[0]);
  return { predicted, errors, evaluations, calls, seconds: (performance.now() - start) / 1000 };
}

/** One batch of a dataset's classification: images [start, start + count). */
export interface DatasetBatch extends BatchResult {
  readonly start: number;
  readonly count: number;
}

/**
 * Classify a dataset batch by batch, from image `start` on (a resumed run passes where it
 * stopped); each batch can be checkpointed as it comes.
 * @throws as `classifyBatch`, or for ids of the wrong length
 */
export async function* classifyDataset(
  model: ClassifierModel,
  ds: Dataset,
  plan: Plan,
  o: ClassifierOptions & {
    /** Images per batch. @default 16 */
    readonly batch?: number;
    /** First image. @default 0 */
    readonly start?: number;
    /** Each image's noise id. @default its index in `ds` */
    readonly ids?: ArrayLike<number>;
  },
): AsyncGenerator<DatasetBatch> {
  const n = count(ds), batch = o.batch ?? 16;
  const ids = o.ids ?? Int32Array.from({ length: n }, (_, i) => i);
  if (ids.length !== n) throw new Error(`Diffusion classifier: ${ids.length} ids for ${n} images`);
  const per = ds.shape[0] * ds.shape[1] * ds.shape[2];
  for (let s = o.start ?? 0; s < n; s += batch) {
    const e = Math.min(n, s + batch);
    const x0 = tf.tensor4d(ds.images.subarray(s * per, e * per), [e - s, ...ds.shape]);
    try {
      const r = await classifyBatch(model, x0, Array.from(ids).slice(s, e), plan, o);
      yield { ...r, start: s, count: e - s };
    } finally {
      x0.dispose();
    }
  }
}

/** Cost of a run from its batches: images per second and network evaluations per image. */
export function throughput(
  batches: readonly Pick<BatchResult, "predicted" | "evaluations" | "seconds">[],
): { images: number; seconds: number; imagesPerS: number; evaluationsPerImage: number } {
  let images = 0, seconds = 0, evals = 0;
  for (const b of batches) {
    images += b.predicted.length;
    seconds += b.seconds;
    for (const e of b.evaluations) evals += e;
  }
  return {
    images,
    seconds,
    imagesPerS: images / Math.max(seconds, 1e-9),
    evaluationsPerImage: images ? evals / images : 0,
  };
}

// ---------------------------------------------------------------------------------------------
// Calibrated probabilities
// ---------------------------------------------------------------------------------------------

/**
 * p(c | x0) = softmax_c(−error_c / τ) per row of an [N·K] error matrix. A NaN error (a pruned
 * class) gets probability 0; the softmax runs over the others.
 * @throws Error when τ is not positive or the matrix is not whole rows of K
 */
export function classProbabilities(
  errors: ArrayLike<number>,
  classes: number,
  tau: number,
): Float64Array {
  checkMatrix(errors, classes, "classProbabilities");
  if (!(tau > 0 && Number.isFinite(tau))) {
    throw new Error(`Temperature should be positive, got ${tau}`);
  }
  const out = new Float64Array(errors.length);
  for (let i = 0; i < errors.length; i += classes) {
    let lo = Infinity;
    for (let c = 0; c < classes; c++) if (errors[i + c] < lo) lo = errors[i + c];
    let z = 0;
    for (let c = 0; c < classes; c++) {
      const e = errors[i + c];
      out[i + c] = Number.isNaN(e) ? 0 : Math.exp(-(e - lo) / tau);
      z += out[i + c];
    }
    for (let c = 0; c < classes; c++) out[i + c] /= z;
  }
  return out;
}

function checkMatrix(errors: ArrayLike<number>, classes: number, what: string): void {
  if (!(Number.isInteger(classes) && classes >= 1) || errors.length % classes) {
    throw new Error(`${what}: ${errors.length} errors are not whole rows of ${classes} classes`);
  }
}

// Mean NLL of the labels under softmax(−error/τ), from the logits (no underflow); unchecked.
function temperatureNll(
  errors: ArrayLike<number>,
  labels: Int32Array,
  classes: number,
  tau: number,
): number {
  let s = 0;
  for (let i = 0; i < labels.length; i++) {
    const r = i * classes;
    let lo = Infinity;
    for (let c = 0; c < classes; c++) lo = Math.min(lo, errors[r + c]);
    let z = 0;
    for (let c = 0; c < classes; c++) z += Math.exp(-(errors[r + c] - lo) / tau);
    s += (errors[r + labels[i]] - lo) / tau + Math.log(z);
  }
  return s / labels.length;
}

/** A fitted temperature and the validation NLL it changes. */
export interface TemperatureFit {
  readonly tau: number;
  /** NLL at τ = 1 (the raw −error as logits). */
  readonly nllBefore: number;
  readonly nllAfter: number;
}

const GOLDEN = (Math.sqrt(5) - 1) / 2;

/**
 * Fit τ of softmax(−error/τ) on a validation split by minimising the mean NLL: a scan of log τ
 * in steps of 0.25 over [ln s − 16, ln s + 8], s the mean spread (max − min) of a row's errors,
 * then golden-section search between the best point's neighbours. The NLL is convex in 1/τ, so
 * unimodal in log τ and the scan only guards against its flat tail (τ → ∞ gives log K). A split
 * the errors rank perfectly has its minimum at τ → 0: the fit then returns the scan's lower end.
 * @param errors [N·K], every class's full mean error (an unpruned plan)
 * @throws Error for mismatched lengths, a label out of range, or a NaN or infinite error
 */
export function fitTemperature(
  errors: ArrayLike<number>,
  labels: Int32Array,
  classes: number,
): TemperatureFit {
  checkMatrix(errors, classes, "fitTemperature");
  const N = labels.length;
  if (N === 0 || errors.length !== N * classes) {
    throw new Error(
      `fitTemperature: ${errors.length} errors for ${N} labels × ${classes} classes`,
    );
  }
  labels.forEach((y, i) => {
    if (!(y >= 0 && y < classes)) {
      throw new Error(`fitTemperature: label ${y} at index ${i} is outside 0..${classes - 1}`);
    }
  });
  let spread = 0;
  for (let i = 0; i < N; i++) {
    let lo = Infinity, hi = -Infinity;
    for (let c = 0; c < classes; c++) {
      const e = errors[i * classes + c];
      if (!Number.isFinite(e)) {
        throw new Error(
          `fitTemperature needs every class's error, got ${e} at row ${i}: fit on an unpruned plan`,
        );
      }
      lo = Math.min(lo, e);
      hi = Math.max(hi, e);
    }
    spread += (hi - lo) / N;
  }
  const f = (logTau: number) => temperatureNll(errors, labels, classes, Math.exp(logTau));
  const centre = spread > 0 ? Math.log(spread) : 0, step = 0.25;
  let best = centre - 16, bestNll = f(best);
  for (let x = best + step; x <= centre + 8 + 1e-9; x += step) {
    const v = f(x);
    if (v < bestNll) [best, bestNll] = [x, v];
  }
  let a = best - step, b = best + step;
  let c = b - GOLDEN * (b - a), d = a + GOLDEN * (b - a);
  let fc = f(c), fd = f(d);
  while (b - a > 1e-9) {
    if (fc < fd) {
      [b, d, fd] = [d, c, fc];
      c = b - GOLDEN * (b - a);
      fc = f(c);
    } else {
      [a, c, fc] = [c, d, fd];
      d = a + GOLDEN * (b - a);
      fd = f(d);
    }
  }
  const x = fc < fd ? c : d, v = Math.min(fc, fd);
  const [logTau, nllAfter] = v < bestNll ? [x, v] : [best, bestNll];
  // τ = 1 may lie outside the scan (errors spread far below 1): never return a worse fit.
  const nllBefore = f(0);
  if (nllBefore <= nllAfter) return { tau: 1, nllBefore, nllAfter: nllBefore };
  return { tau: Math.exp(logTau), nllBefore, nllAfter };
}
