// Self-distillation without labels (DINO, "Emerging Properties in Self-Supervised Vision
// Transformers", Caron et al. 2021), small enough for a CPU: the self-supervised baseline of seed
// 000 Table 4, whose DINOv2 row this stands in for. A student ViT g_θs and a teacher ViT g_θt,
// each followed by a projection head to K prototypes, see different augmented views of an image;
// the student learns to predict the teacher's sharpened, centred distribution (DINO Algorithm 1):
//
//   P_t(x) = softmax((g_θt(x) − c) / τ_t),   P_s(x) = softmax(g_θs(x) / τ_s)
//   L = Σ_{x ∈ {x1g, x2g}} Σ_{x' ∈ V, x' ≠ x} H(P_t(x), P_s(x')) / #pairs,  H(a, b) = −Σ a log b
//   θt ← m θt + (1 − m) θs,   m cosine from 0.996 to 1 over training
//   c ← λ c + (1 − λ) mean_batch g_θt(x_g),   λ = 0.9
//
// V holds 2 global crops (scale (0.4, 1)) and a few local crops (scale (0.05, 0.4)), random
// resized crops with horizontal flips. Only the teacher sees the global crops; the student sees
// all of them. The code follows main_dino.py (DINOLoss, DINOHead, cosine_scheduler).
//
// What is smaller or different here, and why:
// - Views are resized to the ViT's input side, local ones too: vit.ts has fixed position
//   embeddings (DINO interpolates them for its 96 px local crops). The views keep their
//   locality, not DINO's saving in compute.
// - Only crops and flips: colour jitter, blur and solarisation suit RGB photographs, not 28×28
//   gray images.
// - The teacher temperature is fixed at 0.04 (DINO warms it up from 0.04 to 0.07) and the weight
//   decay is constant (DINO: 0.04 → 0.4, none on biases and norms). The learning rate follows
//   DINO's warm-up and cosine (`dinoLr`) and the last layer is frozen for the first 1 % of the
//   steps (DINO: 1 of 100 epochs).
// - K = 256 prototypes and a 256-wide head instead of 65,536 and 2,048.
// - Optional KoLeo regulariser of DINOv2 (`koleo`, 0.1 in DINOv2; 0 by default here, which is
//   DINO). At CPU sizes on MNIST (a ViT of width 32, 2 blocks, 800 steps of 64) DINO's loss alone
//   collapses to the uniform solution within ~100 steps (loss → ln K, the teacher's outputs the
//   same for every image: at init they differ between images by ~1/7 of their spread across
//   prototypes, too little for τ_t to sharpen); with KoLeo 0.1 the loss falls from 5.2 to 3.9 and
//   fine-tuning beats the same ViT from scratch (76 % vs 72 % on 10-class MNIST, one seed).
//
// Keys: the ViT under "backbone." (vit.ts), the head as DINOHead's state_dict under "head.":
// `head.mlp.{0,2,4}.{weight,bias}` (Linear, GELU between) and `head.last_layer.weight_v`
// (weight-normed, weight_g fixed to 1, so its columns are normalised in the forward pass).
// Symbols: N batch, S side, C channels, D ViT width, K prototypes, V views.
import { dirname } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { count, type Dataset } from "./data/dataset.ts";
import { fileExists } from "./io/atomic.ts";
import {
  disposeCheckpoint,
  loadCheckpoint,
  loadParamsStrict,
  saveCheckpoint,
} from "./io/checkpoint.ts";
import { adam, type Optimizer } from "./optim.ts";
import { countParams, type Params, toVariables } from "./params.ts";
import { fold, foldName, permutation, type Rng, uniformArray } from "./random.ts";
import { geluExact, initParam, linear, type ParamSpec } from "./models/nn.ts";
import * as vit from "./models/vit.ts";
import type { Classifier } from "./probe.ts";
import { initTrainState, type TrainState, trainStep } from "./train.ts";

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

export interface DinoConfig {
  readonly vit: vit.ViTConfig;
  /** Projection head: `layers` Linear layers D → hidden → ... → bottleneck (DINO: 3). */
  readonly headLayers: number;
  /** Hidden width of the head (DINO: 2048). */
  readonly hidden: number;
  /** Bottleneck width before the L2 norm (DINO: 256). */
  readonly bottleneck: number;
  /** Prototypes K (DINO: 65,536). */
  readonly prototypes: number;
  /** Local crops per image besides the 2 global ones (DINO: 8 in its best setting, 10 views). */
  readonly localCrops: number;
  /** Area fractions of the global and local crops (DINO: (0.4, 1) and (0.05, 0.4)). */
  readonly globalScale: readonly [number, number];
  readonly localScale: readonly [number, number];
  /** τ_s = 0.1, τ_t = 0.04 (DINO's defaults; τ_t without its warm-up). */
  readonly studentTemp: number;
  readonly teacherTemp: number;
  /** λ of the centre's EMA (DINO: 0.9). */
  readonly centerMomentum: number;
  /** Teacher EMA momentum at step 0, cosine to 1 at the end (DINO: 0.996). */
  readonly teacherMomentum: number;
  /**
   * Weight of DINOv2's KoLeo regulariser on the student's global-view representations (Oquab
   * et al. 2023 §4: 0.1); 0 is DINO's loss alone.
   */
  readonly koleo: number;
}

/** DINO's defaults around a given ViT, with a small head for a CPU. */
export function dinoConfig(v: vit.ViTConfig, over: Partial<DinoConfig> = {}): DinoConfig {
  return {
    vit: v,
    headLayers: 3,
    hidden: 256,
    bottleneck: 64,
    prototypes: 256,
    localCrops: 2,
    globalScale: [0.4, 1],
    localScale: [0.05, 0.4],
    studentTemp: 0.1,
    teacherTemp: 0.04,
    centerMomentum: 0.9,
    teacherMomentum: 0.996,
    koleo: 0,
    ...over,
  };
}

// ---------------------------------------------------------------------------------------------
// Projection head (DINOHead)
// ---------------------------------------------------------------------------------------------

/** Widths of the head's Linear layers: [D, hidden, ..., bottleneck]. */
function headWidths(c: DinoConfig): number[] {
  if (!(Number.isInteger(c.headLayers) && c.headLayers >= 1)) {
    throw new Error(`dino.ts: headLayers ${c.headLayers} must be a positive integer`);
  }
  return [c.vit.hiddenSize, ...Array(c.headLayers - 1).fill(c.hidden), c.bottleneck];
}

// DINOHead's init: trunc_normal_(std=0.02) Linear weights, zero biases; the weight-normed last
// layer keeps PyTorch's Linear default U(±1/√in) for weight_v (it is built after the init pass).
function headSpecs(c: DinoConfig): [string, ParamSpec][] {
  const w = headWidths(c);
  const out: [string, ParamSpec][] = [];
  for (let i = 0; i < w.length - 1; i++) {
    out.push([`head.mlp.${2 * i}.weight`, {
      shape: [w[i], w[i + 1]],
      init: { kind: "normal", std: 0.02 },
    }]);
    out.push([`head.mlp.${2 * i}.bias`, { shape: [w[i + 1]], init: { kind: "zeros" } }]);
  }
  out.push(["head.last_layer.weight_v", {
    shape: [c.bottleneck, c.prototypes],
    init: { kind: "uniform", fanIn: c.bottleneck },
  }]);
  return out;
}

// Identity whose gradient is zero: tfjs has no stop_gradient.
const stopGradient = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
  value: tf.clone(args[0] as tf.Tensor),
  gradFunc: (dy: tf.Tensor) => tf.zerosLike(dy),
}));

/**
 * The head: [N, D] → MLP → L2-normalise → weight-normed Linear → [N, K] (no bias). With
 * `freezeLast` the last layer gets a zero gradient (DINO's freeze_last_layer).
 */
function head(c: DinoConfig, p: Params, r: tf.Tensor2D, freezeLast = false): tf.Tensor2D {
  return tf.tidy(() => {
    const layers = headWidths(c).length - 1;
    let h: tf.Tensor = r;
    for (let i = 0; i < layers; i++) {
      h = linear(h, p[`head.mlp.${2 * i}.weight`], p[`head.mlp.${2 * i}.bias`]);
      if (i < layers - 1) h = geluExact(h);
    }
    const l2 = (t: tf.Tensor, axis: number) =>
      tf.div(t, tf.maximum(tf.norm(t, "euclidean", axis, true), 1e-12)); // F.normalize
    const last = p["head.last_layer.weight_v"];
    const v = l2(freezeLast ? stopGradient(last) as tf.Tensor : last, 0); // unit prototypes
    return tf.matMul(l2(h, 1), v) as tf.Tensor2D; // [N, K]
  });
}

/**
 * Student (or teacher) logits g_θ(x): x [N, S, S, C] → [N, K].
 * @param freezeLast give the head's last layer a zero gradient @default false
 */
export function project(
  c: DinoConfig,
  p: Params,
  x: tf.Tensor4D,
  freezeLast = false,
): tf.Tensor2D {
  return tf.tidy(() => head(c, p, vit.apply(c.vit, p, x, BACKBONE), freezeLast));
}

/**
 * KoLeo (Kozachenko–Leonenko entropy estimator, DINOv2 §4, Sablayrolles et al. 2019):
 * −(1/N) Σ_i log(min_{j≠i} ‖x̂_i − x̂_j‖ + ε) over the L2-normalised rows x̂ of r [N, D]; it spreads
 * the batch's representations apart.
 */
export function koleo(r: tf.Tensor2D, eps = 1e-8): tf.Scalar {
  const n = r.shape[0];
  return tf.tidy(() => {
    const u = tf.div(r, tf.maximum(tf.norm(r, "euclidean", 1, true), 1e-12));
    // ‖a − b‖² = 2 − 2 a·b on unit rows; the diagonal is pushed out of the minimum.
    const d2 = tf.add(tf.sub(2, tf.mul(tf.matMul(u, u, false, true), 2)), tf.mul(tf.eye(n), 4));
    const nearest = tf.sqrt(tf.maximum(tf.min(d2, 1), 0));
    return tf.neg(tf.mean(tf.log(tf.add(nearest, eps)))) as tf.Scalar;
  });
}

/** Key prefix of the ViT backbone. */
export const BACKBONE = "backbone.";

/** Fresh student parameters: the ViT (timm init) under "backbone.", the head under "head.". */
export function initStudent(c: DinoConfig, key: Rng): Params {
  const values: Record<string, tf.Tensor> = {};
  for (const [name, s] of headSpecs(c)) values[name] = initParam(foldName(key, "head"), name, s);
  return { ...vit.init(c.vit, foldName(key, "backbone"), BACKBONE), ...toVariables(values) };
}

/** A copy of the parameters as new variables (DINO starts the teacher as the student). */
export function copyParams(p: Params): Params {
  return toVariables(Object.fromEntries(Object.entries(p).map(([k, v]) => [k, tf.clone(v)])));
}

/** Parameters of the student (backbone and head) from the config alone. */
export function numParams(c: DinoConfig): number {
  const shapes = Object.fromEntries(headSpecs(c).map(([k, s]) => [k, s.shape]));
  return vit.numParams(c.vit) + countParams(shapes);
}

// ---------------------------------------------------------------------------------------------
// Loss, centre and teacher updates (pure)
// ---------------------------------------------------------------------------------------------

/** P_t = softmax((t − c) / τ_t): the teacher's centred, sharpened distribution [N, K]. */
export function teacherProbs(t: tf.Tensor2D, center: tf.Tensor, temp: number): tf.Tensor2D {
  return tf.tidy(() => tf.softmax(tf.div(tf.sub(t, center), temp)) as tf.Tensor2D);
}

/**
 * DINO's loss: the mean over pairs (teacher view i, student view v ≠ i) of the batch mean of
 * H(P_t, P_s) = −Σ_k P_t log softmax(s / τ_s). Teacher view i is student view i (the global
 * crops come first in `student`). Pass teacher logits computed outside the gradient tape (as
 * `dinoStep` does): tfjs has no stop_gradient, and only the student's variables are differentiated.
 * @param student V ≥ 2 tensors [N, K]: the student's logits per view, global views first
 * @param teacher 2 tensors [N, K]: the teacher's logits on the global views
 */
export function dinoLoss(
  student: readonly tf.Tensor2D[],
  teacher: readonly tf.Tensor2D[],
  center: tf.Tensor,
  c: Pick<DinoConfig, "studentTemp" | "teacherTemp">,
): tf.Scalar {
  if (student.length < 2 || teacher.length > student.length) {
    throw new Error(`dino.ts: ${student.length} student views for ${teacher.length} teacher views`);
  }
  return tf.tidy(() => {
    const q = teacher.map((t) => teacherProbs(t, center, c.teacherTemp));
    const logP = student.map((s) => tf.logSoftmax(tf.div(s, c.studentTemp)));
    const terms: tf.Tensor[] = [];
    q.forEach((qi, i) =>
      logP.forEach((lp, v) => {
        if (v !== i) terms.push(tf.mean(tf.neg(tf.sum(tf.mul(qi, lp), -1))));
      })
    );
    return tf.div(tf.addN(terms), terms.length) as tf.Scalar;
  });
}

/** c ← λ·c + (1 − λ)·(mean of the teacher's logits over every global view and image) [1, K]. */
export function updateCenter(
  center: tf.Tensor,
  teacher: readonly tf.Tensor2D[],
  momentum: number,
): tf.Tensor2D {
  return tf.tidy(() => {
    const batch = tf.mean(tf.concat(teacher as tf.Tensor2D[], 0), 0, true); // [1, K]
    return tf.add(tf.mul(center, momentum), tf.mul(batch, 1 - momentum)) as tf.Tensor2D;
  });
}

/** The teacher momentum at `step` of `total`: 1 − (1 − m0)·(cos(π·step/total) + 1)/2. */
export function teacherMomentum(step: number, total: number, base: number): number {
  return 1 - (1 - base) * (Math.cos(Math.PI * Math.min(step, total) / total) + 1) / 2;
}

/** θt ← m·θt + (1 − m)·θs, in place, for every teacher parameter. */
export function emaTeacher(teacher: Params, student: Params, m: number): void {
  for (const [k, t] of Object.entries(teacher)) {
    const s = student[k];
    if (!s) throw new Error(`dino.ts: the student has no parameter "${k}"`);
    tf.tidy(() => t.assign(tf.add(tf.mul(t, m), tf.mul(s, 1 - m))));
  }
}

// ---------------------------------------------------------------------------------------------
// Multi-crop
// ---------------------------------------------------------------------------------------------

/** One view per image: normalised boxes [N·4] (y1, x1, y2, x2) and horizontal flips [N]. */
export interface CropDraw {
  readonly boxes: Float32Array;
  readonly flips: Uint8Array;
}

const LOG_RATIO: readonly [number, number] = [Math.log(3 / 4), Math.log(4 / 3)];

/**
 * Random resized crops as torchvision's RandomResizedCrop draws them, in continuous coordinates:
 * area fraction s ~ U(scale), aspect r with log r ~ U(log 3/4, log 4/3), sides √(s·r) and √(s/r)
 * of the image's (clipped at 1 where torchvision would retry), offsets uniform; flip with
 * probability 1/2. Five draws per image from `key`.
 */
export function drawCrops(key: Rng, n: number, scale: readonly [number, number]): CropDraw {
  const u = uniformArray(key, 5 * n);
  const boxes = new Float32Array(4 * n), flips = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const s = scale[0] + (scale[1] - scale[0]) * u[5 * i];
    const r = Math.exp(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * u[5 * i + 1]);
    const h = Math.min(1, Math.sqrt(s / r)), w = Math.min(1, Math.sqrt(s * r));
    const y = u[5 * i + 2] * (1 - h), x = u[5 * i + 3] * (1 - w);
    boxes.set([y, x, y + h, x + w], 4 * i);
    flips[i] = u[5 * i + 4] < 0.5 ? 1 : 0;
  }
  return { boxes, flips };
}

/** The views of `d` on x [N, S, S, C], bilinear, resized to `side`: [N, side, side, C]. */
export function cropViews(x: tf.Tensor4D, d: CropDraw, side: number): tf.Tensor4D {
  const n = x.shape[0];
  return tf.tidy(() => {
    const boxes = tf.tensor2d(d.boxes, [n, 4]);
    const ind = tf.tensor1d(Int32Array.from({ length: n }, (_, i) => i), "int32");
    const crops = tf.image.cropAndResize(x, boxes, ind, [side, side], "bilinear");
    const f = tf.tensor4d(Float32Array.from(d.flips), [n, 1, 1, 1]);
    // Exact for f ∈ {0, 1}: f·flipped + (1 − f)·crop.
    return tf.add(tf.mul(tf.reverse(crops, 2), f), tf.mul(crops, tf.sub(1, f))) as tf.Tensor4D;
  });
}

/**
 * DINO's multi-crop of a batch: 2 global views then `localCrops` local ones, each [N, S, S, C]
 * with S the ViT's input side; view v draws from `fold(key, v)`. The caller disposes them.
 */
export function multiCrop(c: DinoConfig, x: tf.Tensor4D, key: Rng): tf.Tensor4D[] {
  const n = x.shape[0], side = c.vit.inputSize;
  return Array.from(
    { length: 2 + c.localCrops },
    (_, v) => cropViews(x, drawCrops(fold(key, v), n, v < 2 ? c.globalScale : c.localScale), side),
  );
}

// ---------------------------------------------------------------------------------------------
// Pre-training
// ---------------------------------------------------------------------------------------------

/** Student with its optimiser state, teacher, centre. */
export interface DinoState {
  readonly train: TrainState;
  readonly teacher: Params;
  readonly center: tf.Tensor2D;
}

/** A fresh state: teacher = a copy of the student, centre 0. */
export function initDino(c: DinoConfig, key: Rng, optimizer: Optimizer): DinoState {
  const student = initStudent(c, key);
  return {
    train: initTrainState(student, { optimizer }),
    teacher: copyParams(student),
    center: tf.zeros([1, c.prototypes]) as tf.Tensor2D,
  };
}

/** Options of one step and of `pretrainDino`. */
export interface DinoStepOptions {
  readonly optimizer: Optimizer;
  /** Steps of the whole run (the teacher momentum's cosine spans them). */
  readonly totalSteps: number;
  /** Global gradient-norm clip (DINO: 3). @default 3 */
  readonly clipNorm?: number;
  /**
   * Steps during which the head's last layer gets a zero gradient, so that Adam leaves it where
   * it is (DINO's freeze_last_layer, one epoch: without it the prototypes collapse together and
   * every output becomes uniform). @default 0
   */
  readonly freezeLastLayer?: number;
}

/**
 * One DINO step on a batch x [N, S, S, C] with views keyed by `key`: the teacher's logits on the
 * global views, the loss and a student update, the teacher EMA, the centre EMA (in that order,
 * as main_dino.py). Frees the previous centre.
 */
export function dinoStep(
  c: DinoConfig,
  s: DinoState,
  x: tf.Tensor4D,
  key: Rng,
  o: DinoStepOptions,
): { state: DinoState; loss: number } {
  const views = multiCrop(c, x, key);
  const teacherOut = views.slice(0, 2).map((v) => project(c, s.teacher, v));
  const student = s.train.params;
  const frozen = s.train.step < (o.freezeLastLayer ?? 0);
  const loss = () => {
    const reps = views.map((v) => vit.apply(c.vit, student, v, BACKBONE)); // [N, D] each
    const out = reps.map((r) => head(c, student, r, frozen));
    const l = dinoLoss(out, teacherOut, s.center, c);
    if (c.koleo === 0) return l;
    // DINOv2 applies KoLeo to each global view's class token separately.
    const reg = tf.addN(reps.slice(0, 2).map((r) => koleo(r)));
    return tf.add(l, tf.mul(reg, c.koleo / 2)) as tf.Scalar;
  };
  const r = trainStep(s.train, loss, { optimizer: o.optimizer, clipNorm: o.clipNorm ?? 3 });
  emaTeacher(s.teacher, student, teacherMomentum(s.train.step, o.totalSteps, c.teacherMomentum));
  const center = updateCenter(s.center, teacherOut, c.centerMomentum);
  tf.dispose([...views, ...teacherOut, s.center]);
  return { state: { train: r.state, teacher: s.teacher, center }, loss: r.loss };
}

/**
 * DINO's learning-rate schedule (main_dino.py's cosine_scheduler with warm-up): linear from 0 to
 * `peak` over `warmup` steps, then a cosine from `peak` down to 1e-6 at step `total`.
 */
export function dinoLr(step: number, total: number, peak: number, warmup: number): number {
  if (step < warmup) return peak * step / warmup;
  const t = Math.min(1, (step - warmup) / Math.max(1, total - warmup));
  return 1e-6 + (peak - 1e-6) * (1 + Math.cos(Math.PI * t)) / 2;
}

/** Options of `pretrainDino`. */
export interface PretrainOptions {
  readonly steps: number;
  readonly batch: number;
  /** AdamW's peak learning rate (see `dinoLr`). */
  readonly lr: number;
  /** Linear warm-up steps of the learning rate. @default 10 % of the steps (DINO: 10 of 100 epochs) */
  readonly warmup?: number;
  /** Decoupled weight decay (DINO: 0.04 rising to 0.4; constant here). @default 0.04 */
  readonly weightDecay?: number;
  /** Steps with the last layer frozen. @default 1 % of the steps (DINO: 1 of 100 epochs) */
  readonly freezeLastLayer?: number;
  /** Initialisation, batch order and views. */
  readonly key: Rng;
  readonly onStep?: (step: number, loss: number) => void;
}

/**
 * Pre-train on the images of `pool` without reading its labels: epochs of the pool in the order
 * of permutations from `fold(foldName(key, "order"), epoch)` (the last partial batch dropped),
 * views from `fold(foldName(key, "views"), step)`. Returns the student, the teacher and the loss
 * per step; the caller disposes both parameter records.
 */
export async function pretrainDino(
  c: DinoConfig,
  pool: Dataset,
  o: PretrainOptions,
): Promise<{ student: Params; teacher: Params; losses: number[] }> {
  const n = count(pool), [h, w, ch] = pool.shape;
  if (!(o.batch >= 1 && o.batch <= n)) {
    throw new Error(`DINO batch ${o.batch} is outside 1..${n}, the pool's images`);
  }
  const warmup = o.warmup ?? Math.round(0.1 * o.steps);
  const optimizer = adam({
    lr: (k) => dinoLr(k, o.steps, o.lr, warmup),
    weightDecay: o.weightDecay ?? 0.04,
  });
  let s = initDino(c, foldName(o.key, "init"), optimizer);
  const perEpoch = Math.floor(n / o.batch), per = h * w * ch;
  const losses: number[] = [];
  let order: Int32Array = new Int32Array(0);
  for (let step = 0; step < o.steps; step++) {
    const e = Math.floor(step / perEpoch), at = (step % perEpoch) * o.batch;
    if (at === 0) order = permutation(fold(foldName(o.key, "order"), e), n);
    const images = new Float32Array(o.batch * per);
    for (let i = 0; i < o.batch; i++) {
      const j = order[at + i];
      images.set(pool.images.subarray(j * per, (j + 1) * per), i * per);
    }
    const x = tf.tensor4d(images, [o.batch, h, w, ch]);
    const key = fold(foldName(o.key, "views"), step);
    const r = dinoStep(c, s, x, key, {
      optimizer,
      totalSteps: o.steps,
      freezeLastLayer: o.freezeLastLayer ?? Math.round(0.01 * o.steps),
    });
    x.dispose();
    s = r.state;
    losses.push(r.loss);
    o.onStep?.(step + 1, r.loss);
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  tf.dispose([...Object.values(s.train.opt.slots), s.center]);
  return { student: s.train.params, teacher: s.teacher, losses };
}

/** The backbones of a DINO pre-training (heads dropped), its losses and its wall time. */
export interface DinoBackbones {
  readonly student: Params;
  readonly teacher: Params;
  readonly losses: number[];
  readonly seconds: number;
  /** True when they were read from the cache file instead of pre-trained. */
  readonly cached: boolean;
}

const ROLES = ["student", "teacher"] as const;

function backboneOnly(p: Params): Params {
  const own: Record<string, tf.Variable> = {};
  for (const [k, v] of Object.entries(p)) {
    if (k.startsWith(BACKBONE)) own[k] = v;
    else v.dispose();
  }
  return own;
}

/** The cached backbones in `path` when its identity is `identity`; why not, otherwise. */
async function readCached(
  path: string,
  c: DinoConfig,
  identity: string,
): Promise<DinoBackbones | string> {
  if (!(await fileExists(path))) return "no cache file";
  let ck;
  try {
    ck = await loadCheckpoint(path);
  } catch (e) {
    return `unreadable (${(e as Error).message})`;
  }
  if (JSON.stringify(ck.meta.identity) !== identity) {
    disposeCheckpoint(ck);
    return "it holds a different pre-training (config, pool or seed)";
  }
  const shapes = vit.paramShapes(c.vit, BACKBONE);
  const byRole = ROLES.map((role) =>
    Object.fromEntries(
      Object.entries(ck.params).filter(([k]) => k.startsWith(`${role}.`)).map((
        [k, t],
      ) => [k.slice(role.length + 1), t]),
    )
  );
  try {
    const [student, teacher] = byRole.map((t, i) =>
      loadParamsStrict(shapes, t, `${path} (${ROLES[i]})`)
    );
    return {
      student,
      teacher,
      losses: ck.meta.losses as number[],
      seconds: ck.meta.seconds as number,
      cached: true,
    };
  } catch (e) {
    disposeCheckpoint(ck);
    return (e as Error).message;
  }
}

/**
 * `pretrainDino` kept in the file `path`: a later call with the same `identity` (a JSON value
 * naming whatever decides the outcome: config, options, pool, seed) reads the backbones back
 * instead of pre-training again, so the downstream tasks share one pre-training and a crash in
 * tuning loses none of it. A file of another identity, or an unreadable one, is replaced;
 * `onMiss` hears why it was not used.
 */
export async function pretrainDinoCached(
  path: string,
  identity: unknown,
  c: DinoConfig,
  pool: Dataset,
  o: PretrainOptions & { readonly onMiss?: (why: string) => void },
): Promise<DinoBackbones> {
  const id = JSON.stringify(identity);
  const hit = await readCached(path, c, id);
  if (typeof hit !== "string") return hit;
  o.onMiss?.(hit);
  const t0 = performance.now();
  const out = await pretrainDino(c, pool, o);
  const seconds = (performance.now() - t0) / 1000;
  const student = backboneOnly(out.student), teacher = backboneOnly(out.teacher);
  const params: Record<string, tf.Tensor> = {};
  for (const [role, p] of [["student", student], ["teacher", teacher]] as const) {
    for (const [k, v] of Object.entries(p)) params[`${role}.${k}`] = v;
  }
  await Deno.mkdir(dirname(path), { recursive: true });
  await saveCheckpoint(path, {
    params,
    step: o.steps,
    meta: { identity: JSON.parse(id), losses: out.losses, seconds },
  });
  return { student, teacher, losses: out.losses, seconds, cached: false };
}

// ---------------------------------------------------------------------------------------------
// Downstream classifier
// ---------------------------------------------------------------------------------------------

/**
 * A ViT backbone (its "backbone." parameters; the others, e.g. a DINO head, are disposed) with a
 * linear classifier on r [N, D] (timm's `head.{weight,bias}`, N(0, 0.02²) weight, zero bias):
 * x [N, S, S, C] → logits [N, K]. Every parameter trains.
 */
export function vitClassifier(
  v: vit.ViTConfig,
  params: Params,
  classes: number,
  key: Rng,
): Classifier {
  const own: Record<string, tf.Variable> = {};
  for (const [k, p] of Object.entries(params)) {
    if (k.startsWith(BACKBONE)) own[k] = p;
    else p.dispose();
  }
  const w = initParam(key, "head.weight", {
    shape: [v.hiddenSize, classes],
    init: { kind: "normal", std: 0.02 },
  });
  Object.assign(own, toVariables({ "head.weight": w, "head.bias": tf.zeros([classes]) }));
  return {
    params: own,
    apply: (p, x) =>
      tf.tidy(() =>
        linear(vit.apply(v, p, x, BACKBONE), p["head.weight"], p["head.bias"]) as tf.Tensor2D
      ),
    paramCount: vit.numParams(v) + v.hiddenSize * classes + classes,
  };
}
