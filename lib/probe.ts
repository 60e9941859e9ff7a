// The probe protocol (seed 001 §4: "cross entropy loss with an Adam optimizer … 28 epochs, with
// StepLR at 0.1 gamma every 8 epochs"; the diffssl code: plain SGD, StepLR every 7). Heads train
// on frozen features read through a `RowSource`, in memory or from the on-disk cache, so the data
// may exceed memory. Several heads can train at once on one shuffled batch order: the loss is the
// sum of their cross-entropies, and since their parameters are disjoint each gets exactly the
// gradient it would get alone (how a whole grid of linear probes trains in one pass, as in DDAE).
import * as tf from "@tensorflow/tfjs";
import { applyHead, headParamCount, type HeadSpec, initHead } from "./models/heads.ts";
import { adam, type Optimizer, sgd } from "./optim.ts";
import type { Params } from "./params.ts";
import { fold, foldName, permutation, type Rng } from "./random.ts";
import { initTrainState, trainStep } from "./train.ts";
import { balancedIndices } from "./data/dataset.ts";

/** Optimiser and schedule of a probe. */
export interface Recipe {
  readonly optimizer: "adam" | "sgd";
  readonly lr: number;
  readonly epochs: number;
  /** StepLR: multiply the learning rate by `gamma` every `stepEvery` epochs. */
  readonly stepEvery: number;
  readonly gamma: number;
  readonly batch: number;
}

/**
 * `paper`: seed 001's recipe; it gives no learning rate or batch size for Adam, so these are
 * ours (Adam's customary 1e-3, batch 128). `reference`: the diffssl scripts (SGD without momentum
 * or weight decay, lr 1e-2 for linear probes, StepLR every 7 of 28 epochs).
 */
export const RECIPES: Readonly<Record<"paper" | "reference", Recipe>> = {
  paper: { optimizer: "adam", lr: 1e-3, epochs: 28, stepEvery: 8, gamma: 0.1, batch: 128 },
  reference: { optimizer: "sgd", lr: 1e-2, epochs: 28, stepEvery: 7, gamma: 0.1, batch: 128 },
};

/** Rows of features (one per image) that a probe can gather by index. */
export interface RowSource {
  readonly rows: number;
  /** Shape of one row as a feature map [h, w, C]. */
  readonly shape: readonly [number, number, number];
  /** The rows at `indices`, concatenated. */
  gather(indices: Int32Array): Float32Array | Promise<Float32Array>;
}

/** A RowSource over rows × h·w·C floats in memory. */
export function memoryRows(
  data: Float32Array,
  shape: readonly [number, number, number],
): RowSource {
  const dim = shape[0] * shape[1] * shape[2];
  if (data.length % dim !== 0) {
    throw new Error(`memoryRows: ${data.length} floats are not whole rows of ${dim}`);
  }
  return {
    rows: data.length / dim,
    shape,
    gather: (indices) => {
      const out = new Float32Array(indices.length * dim);
      indices.forEach((r, i) => out.set(data.subarray(r * dim, (r + 1) * dim), i * dim));
      return out;
    },
  };
}

/** Rows of `a` then rows of `b` (same shape): e.g. a split and its flipped copy. */
export function concatRows(a: RowSource, b: RowSource): RowSource {
  if (a.shape.join() !== b.shape.join()) {
    throw new Error(`concatRows: shapes [${a.shape}] and [${b.shape}] differ`);
  }
  const dim = a.shape[0] * a.shape[1] * a.shape[2];
  return {
    rows: a.rows + b.rows,
    shape: a.shape,
    gather: async (indices) => {
      const inA = indices.filter((i) => i < a.rows);
      const inB = indices.filter((i) => i >= a.rows).map((i) => i - a.rows);
      const [xa, xb] = await Promise.all([a.gather(inA), b.gather(inB)]);
      const out = new Float32Array(indices.length * dim);
      let ia = 0, ib = 0;
      indices.forEach((r, k) => {
        const src = r < a.rows
          ? xa.subarray(dim * ia, dim * ++ia)
          : xb.subarray(dim * ib, dim * ++ib);
        out.set(src, k * dim);
      });
      return out;
    },
  };
}

/** Any trainable classifier of feature maps (a head, or a network trained from scratch). */
export interface Classifier {
  readonly params: Params;
  apply(p: Params, x: tf.Tensor4D): tf.Tensor2D;
  readonly paramCount: number;
}

/** A head of lib/models/heads.ts as a classifier, initialised from `key`. */
export function headClassifier(
  head: HeadSpec,
  shape: readonly [number, number, number],
  classes: number,
  key: Rng,
): Classifier {
  return {
    params: initHead(head, shape, classes, key),
    apply: (p, x) => applyHead(head, p, x),
    paramCount: headParamCount(head, shape, classes),
  };
}

/**
 * One head to train on training features: a head spec (initialised from `foldName(key, name)`),
 * or a ready classifier.
 */
export type HeadJob =
  & { readonly name: string; readonly train: RowSource }
  & ({ readonly head: HeadSpec } | { readonly model: Classifier });

/** Per-epoch record of one head. */
export interface EpochRecord {
  readonly epoch: number;
  readonly loss: number;
  readonly lr: number;
}

/** A trained head. */
export interface TrainedHead extends Classifier {
  readonly name: string;
  readonly curve: EpochRecord[];
}

/** The learning rate after `count` updates under StepLR. */
export function stepLr(r: Recipe, count: number, stepsPerEpoch: number): number {
  const epoch = Math.floor(count / stepsPerEpoch);
  return r.lr * r.gamma ** Math.floor(epoch / r.stepEvery);
}

function optimizerFor(r: Recipe, stepsPerEpoch: number): Optimizer {
  const lr = (count: number) => stepLr(r, count, stepsPerEpoch);
  return r.optimizer === "adam" ? adam({ lr }) : sgd({ lr });
}

/** Options of `trainHeads`. */
export interface TrainOptions {
  readonly classes: number;
  /** Training rows to use (e.g. train minus a validation part); default all. */
  readonly indices?: Int32Array;
  readonly onEpoch?: (epoch: number, loss: number) => void;
}

/**
 * Train heads jointly (one batch order, summed loss) with `recipe`; labels[i] is row i's class.
 * Each epoch is a permutation from `fold(key, epoch)`; heads start from `foldName(key, name)`.
 * @throws Error when sources and labels disagree, or on a non-finite loss
 */
export async function trainHeads(
  jobs: readonly HeadJob[],
  labels: Int32Array,
  recipe: Recipe,
  key: Rng,
  o: TrainOptions,
): Promise<TrainedHead[]> {
  const names = new Set(jobs.map((j) => j.name));
  if (names.size !== jobs.length) throw new Error("trainHeads: head names must be distinct");
  for (const j of jobs) {
    if (j.train.rows !== labels.length) {
      throw new Error(
        `trainHeads: head "${j.name}" has ${j.train.rows} rows for ${labels.length} labels`,
      );
    }
  }
  const use = o.indices ?? Int32Array.from({ length: labels.length }, (_, i) => i);
  const stepsPerEpoch = Math.ceil(use.length / recipe.batch);
  // One flat record of every head's params, keyed `<job>/<param>`, for one optimiser state.
  const own = jobs.map((j) =>
    "model" in j ? j.model : headClassifier(j.head, j.train.shape, o.classes, foldName(key, j.name))
  );
  const flat: Record<string, tf.Variable> = {};
  jobs.forEach((j, i) => {
    for (const [k, v] of Object.entries(own[i].params)) flat[`${j.name}/${k}`] = v;
  });
  const optimizer = optimizerFor(recipe, stepsPerEpoch);
  let state = initTrainState(flat, { optimizer });
  const curves: EpochRecord[][] = jobs.map(() => []);
  for (let epoch = 0; epoch < recipe.epochs; epoch++) {
    const lr = stepLr(recipe, epoch * stepsPerEpoch, stepsPerEpoch);
    const order = permutation(fold(key, epoch), use.length);
    const sums = new Float64Array(jobs.length);
    for (let s = 0; s < stepsPerEpoch; s++) {
      const idx = Int32Array.from(
        order.subarray(s * recipe.batch, (s + 1) * recipe.batch),
        (p) => use[p],
      );
      const xs = await Promise.all(jobs.map((j) => j.train.gather(idx)));
      const y = tf.tidy(() =>
        tf.oneHot(tf.tensor1d(Int32Array.from(idx, (i) => labels[i]), "int32"), o.classes)
      );
      const inputs = jobs.map((j, i) => tf.tensor4d(xs[i], [idx.length, ...j.train.shape]));
      const each: tf.Scalar[] = [];
      const r = trainStep(state, () => {
        const losses = jobs.map((_, i) =>
          tf.losses.softmaxCrossEntropy(y, own[i].apply(own[i].params, inputs[i])) as tf.Scalar
        );
        each.push(...losses.map((l) => tf.keep(tf.clone(l))));
        return tf.addN(losses) as tf.Scalar;
      }, { optimizer });
      state = r.state;
      const values = await Promise.all(each.map((l) => l.data()));
      values.forEach((v, i) => (sums[i] += v[0] * idx.length));
      tf.dispose([y, ...inputs, ...each]);
    }
    jobs.forEach((_, i) => curves[i].push({ epoch: epoch + 1, loss: sums[i] / use.length, lr }));
    o.onEpoch?.(epoch + 1, sums.reduce((a, b) => a + b, 0) / use.length / jobs.length);
  }
  for (const t of Object.values(state.opt.slots)) t.dispose();
  return jobs.map((j, i) => ({ ...own[i], name: j.name, curve: curves[i] }));
}

/** Top-1 predictions of a classifier (a trained head) on rows `indices` (default all) of `src`. */
export async function predict(
  h: Classifier,
  src: RowSource,
  indices?: Int32Array,
  batch = 512,
): Promise<Int32Array> {
  const use = indices ?? Int32Array.from({ length: src.rows }, (_, i) => i);
  const out = new Int32Array(use.length);
  for (let s = 0; s < use.length; s += batch) {
    const idx = use.subarray(s, s + batch);
    const x = await src.gather(idx);
    const pred = tf.tidy(() =>
      tf.argMax(h.apply(h.params, tf.tensor4d(x, [idx.length, ...src.shape])), 1)
    );
    out.set(await pred.data() as Int32Array, s);
    pred.dispose();
  }
  return out;
}

/** Fraction of predictions equal to the labels. */
export function accuracy(pred: Int32Array, labels: ArrayLike<number>): number {
  if (pred.length !== labels.length) throw new Error("accuracy: lengths differ");
  let ok = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === labels[i]) ok++;
  return pred.length ? ok / pred.length : NaN;
}

/**
 * A validation part carved from the training rows: `percent`% of each class (balanced, keyed by
 * `foldName(key, "validation")`), and the rest for training; both sorted.
 */
export function validationSplit(
  labels: Int32Array,
  classes: number,
  percent: number,
  key: Rng,
): { train: Int32Array; val: Int32Array } {
  const val = balancedIndices(labels, classes, percent, foldName(key, "validation"));
  const inVal = new Uint8Array(labels.length);
  val.forEach((i) => (inVal[i] = 1));
  const train = Int32Array.from({ length: labels.length }, (_, i) => i).filter((i) => !inVal[i]);
  return { train, val };
}
