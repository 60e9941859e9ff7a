// The downstream data protocol of seed 000 (§4.1, Table 1): an unlabelled pre-training pool and
// a small labelled downstream set split into train / valid / test (1,424 / 178 / 179 there), drawn
// so that no image of the downstream set is ever in the pool. In the paper the pool is facilities
// 2–12 of a brain CT collection and the downstream set facility 1, with the task "hematoma or not"
// (binary, Table 4). Here:
//
// - `mnist`, `fashion-mnist`, and folders with `train/` and `test/` (or `val/`) subfolders: the
//   pool is the train split, the downstream set is drawn from the test split, so the two are
//   disjoint by construction.
// - Image folders with sites, `root/<site>/<class>/<image>`: the downstream set is drawn from the
//   images of one site (`site`, default the first by name, as the paper's facility 1); the pool is
//   every other site.
// - Image folders without sites, `root/<class>/<image>`: one site. The downstream set is drawn
//   first and the pool is the remainder, which therefore depends on the seed.
//
// The pool keeps its labels in the descriptor (datasets always carry labels), but pre-training
// must not read them: the protocol's point is that only the downstream set is labelled.
//
// Draws are class-stratified: train, then valid, then test, each takes from every class its
// largest-remainder share of the split size in proportion to the images of that class still left
// (Hamilton's method), so every split has the source's class mix up to rounding. Within a class
// the images are taken in the order of a permutation keyed by (seed, class), and every split is
// returned in source order. The binary task relabels the downstream splits 1 for the `positives`
// classes and 0 for the rest; the draw is stratified by the original classes, so the positive
// rate of every split is the source's up to rounding (10 % for one Fashion-MNIST class).
import { dirname, join } from "node:path";
import * as tf from "@tensorflow/tfjs";
import { batches, count, type Dataset, loadDataset, makeDataset, take } from "./data/dataset.ts";
import { loadImageFolder } from "./data/image_folder.ts";
import {
  accuracy as accuracyOf,
  binaryScores,
  confusionMatrix,
  macroScores,
} from "./metrics/classification.ts";
import { fold, foldName, permutation, type Rng, rng } from "./random.ts";
import { finishRun, resultsDir, type RunHandle, type RunOutcome } from "./results.ts";
import { adam } from "./optim.ts";
import { type Classifier, memoryRows, predict } from "./probe.ts";
import { initTrainState, trainStep } from "./train.ts";

// ---------------------------------------------------------------------------------------------
// Options and result
// ---------------------------------------------------------------------------------------------

/** The downstream task: all classes, or the `positives` classes against the rest. */
export type Task = "10-class" | "binary";

/** Split sizes of seed 000 Table 1 (downstream task data, facility 1). */
export const TABLE1_SIZES = Object.freeze({ train: 1424, valid: 178, test: 179 });

/** The binary task's default positive classes: class 0 (Fashion-MNIST's T-shirt/top, 10 %). */
export const DEFAULT_POSITIVES: readonly number[] = Object.freeze([0]);

export interface ProtocolOptions {
  /** Downstream training images. @default 1424 (seed 000 Table 1) */
  readonly train?: number;
  /** Validation images (model selection). @default 178 */
  readonly valid?: number;
  /** Test images (reported once). @default 179 */
  readonly test?: number;
  /** @default "10-class" */
  readonly task?: Task;
  /** Binary task: the class ids counted positive. @default [0] (10 % of Fashion-MNIST) */
  readonly positives?: readonly number[];
  /**
   * Image folders root/<site>/<class>/: the downstream site; pre-training uses the others.
   * @default the first site by name
   */
  readonly site?: string;
  /** Key of the downstream draw. */
  readonly seed: number;
  /** Image side, as loadDataset's option. */
  readonly size?: number;
  /** Channels, as loadDataset's option. */
  readonly channels?: 1 | 3;
}

export interface Protocol {
  readonly task: Task;
  /** 10-class: the dataset's class names; binary: ["negative", "positive"]. */
  readonly classes: readonly string[];
  /**
   * The pre-training pool, disjoint from train, valid and test. Its labels are the dataset's
   * (kept in the descriptor) and must not be used: pre-training is unsupervised.
   */
  readonly pool: Dataset;
  /** Labels in 0..classes.length−1; binary: 1 = positive. */
  readonly train: Dataset;
  readonly valid: Dataset;
  readonly test: Dataset;
  /** Sizes, positives, positive rates per split, site, seed: plain JSON for a results config. */
  readonly describe: Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------------
// Stratified draw
// ---------------------------------------------------------------------------------------------

/**
 * Hamilton apportionment of `n` among classes in proportion to `avail` (ties to the lower class):
 * shares sum to n and none exceeds its class when n ≤ Σ avail.
 */
export function apportion(n: number, avail: ArrayLike<number>): Int32Array {
  const total = Array.prototype.reduce.call(avail, (a, b) => (a as number) + (b as number), 0);
  const k = avail.length;
  const share = new Int32Array(k);
  if (n === 0) return share;
  if (!(n <= (total as number))) throw new Error(`apportion: ${n} exceeds ${total} available`);
  const rest: [number, number][] = [];
  let given = 0;
  for (let c = 0; c < k; c++) {
    const q = n * avail[c]; // exact: sizes are far below 2^53
    share[c] = Math.floor(q / (total as number));
    given += share[c];
    rest.push([q % (total as number), c]);
  }
  rest.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (let i = 0; given < n; i++, given++) share[rest[i][1]]++;
  return share;
}

/**
 * Disjoint class-stratified index sets of sizes `sizes` (e.g. [train, valid, test]) over samples
 * with these labels, each sorted ascending; see the module comment for the rule.
 * @throws Error when the sizes exceed the samples
 */
export function stratifiedDraw(
  labels: Int32Array,
  classes: number,
  sizes: readonly number[],
  key: Rng,
): Int32Array[] {
  const members: number[][] = Array.from({ length: classes }, () => []);
  labels.forEach((y, i) => members[y].push(i));
  const order = members.map((m, c) =>
    Int32Array.from(permutation(fold(key, c), m.length), (j) => m[j])
  );
  const left = Int32Array.from(members, (m) => m.length);
  const taken = new Int32Array(classes);
  return sizes.map((n) => {
    const share = apportion(n, left);
    const out: number[] = [];
    for (let c = 0; c < classes; c++) {
      for (let j = 0; j < share[c]; j++) out.push(order[c][taken[c] + j]);
      taken[c] += share[c];
      left[c] -= share[c];
    }
    return Int32Array.from(out).sort();
  });
}

// ---------------------------------------------------------------------------------------------
// Sources: the pool and the set the downstream splits are drawn from
// ---------------------------------------------------------------------------------------------

interface Source {
  /** The pool, or undefined when it is the remainder of `from` after the draw. */
  readonly pool?: Dataset;
  readonly from: Dataset;
  readonly site: string | null;
  /** Where the downstream set and the pool come from, in words. */
  readonly fromText: string;
  readonly poolText: string;
}

function isDirectory(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

async function source(dataset: string, o: ProtocolOptions): Promise<Source> {
  const load = { size: o.size, channels: o.channels };
  const noSites = (what: string) => {
    if (o.site !== undefined) {
      throw new Error(
        `Dataset "${dataset}" has no sites, so site "${o.site}" cannot be chosen; ${what}`,
      );
    }
  };
  const splitFolder = isDirectory(dataset) && isDirectory(`${dataset}/train`) &&
    (isDirectory(`${dataset}/test`) || isDirectory(`${dataset}/val`));
  if (dataset === "mnist" || dataset === "fashion-mnist" || splitFolder) {
    noSites("sites need an image folder root/<site>/<class>/<image>");
    return {
      pool: await loadDataset(dataset, { ...load, split: "train" }),
      from: await loadDataset(dataset, { ...load, split: "test" }),
      site: null,
      fromText: "test split",
      poolText: "train split",
    };
  }
  if (!isDirectory(dataset)) {
    throw new Error(
      `Unknown dataset "${dataset}": expected mnist, fashion-mnist or an image folder path`,
    );
  }
  const all = await loadImageFolder(dataset, { channels: o.channels ?? 3, size: o.size });
  if (!all.sites) {
    noSites("the folder is root/<class>/<image>; use root/<site>/<class>/<image> for sites");
    return { from: all, site: null, fromText: "whole folder", poolText: "rest of the folder" };
  }
  const names = all.sites.names;
  const site = o.site ?? names[0];
  const id = names.indexOf(site);
  if (id < 0) {
    throw new Error(
      `Dataset "${dataset}" has no site "${site}": its sites are ${
        names.map((s) => `"${s}"`).join(", ")
      }`,
    );
  }
  if (names.length < 2) {
    throw new Error(
      `Dataset "${dataset}" has only site "${site}", which leaves no other site to pre-train on`,
    );
  }
  const ids = all.sites.ids;
  const at = (keep: (s: number) => boolean) =>
    Int32Array.from({ length: count(all) }, (_, i) => i).filter((i) => keep(ids[i]));
  return {
    pool: take(all, at((s) => s !== id), `${dataset}/pool`),
    from: take(all, at((s) => s === id), `${dataset}/${site}`),
    site,
    fromText: `site "${site}"`,
    poolText: `sites ${names.filter((s) => s !== site).map((s) => `"${s}"`).join(", ")}`,
  };
}

// ---------------------------------------------------------------------------------------------
// Binary relabelling
// ---------------------------------------------------------------------------------------------

function checkPositives(positives: readonly number[], classes: readonly string[]): void {
  const k = classes.length;
  const bad = positives.find((c) => !(Number.isInteger(c) && c >= 0 && c < k));
  if (bad !== undefined) {
    throw new Error(
      `Positive class ${bad} is outside 0..${k - 1} (classes: ${classes.join(", ")})`,
    );
  }
  if (positives.length === 0) throw new Error("The binary task needs at least one positive class");
  if (new Set(positives).size !== positives.length) {
    throw new Error(`Positive classes [${positives.join(", ")}] repeat a class`);
  }
  if (positives.length === k) {
    throw new Error(`Positive classes [${positives.join(", ")}] are every class: no negatives`);
  }
}

/** The dataset with labels 1 for the `positives` classes and 0 for the others. */
export function binaryRelabel(ds: Dataset, positives: readonly number[]): Dataset {
  checkPositives(positives, ds.classes);
  const isPositive = new Uint8Array(ds.classes.length);
  positives.forEach((c) => (isPositive[c] = 1));
  return makeDataset({
    ...ds,
    labels: Int32Array.from(ds.labels, (y) => isPositive[y]),
    classes: ["negative", "positive"],
  });
}

/** Fraction of labels equal to 1 (the positive rate of a relabelled split). */
export function positiveRate(ds: Dataset): number {
  let pos = 0;
  ds.labels.forEach((y) => (pos += y === 1 ? 1 : 0));
  return count(ds) === 0 ? 0 : pos / count(ds);
}

// ---------------------------------------------------------------------------------------------
// The protocol
// ---------------------------------------------------------------------------------------------

function checkSize(name: string, v: number): void {
  if (!(Number.isInteger(v) && v >= 1)) {
    throw new Error(`Downstream ${name} size should be a positive integer, got ${v}`);
  }
}

/**
 * The pool and the downstream splits of `dataset` (mnist, fashion-mnist or an image folder; see
 * the module comment for where each part comes from).
 *
 * @example
 * ```ts
 * const p = await loadProtocol("fashion-mnist", { seed: 0, task: "binary" });
 * // p.pool: the 60,000 train images; p.train/valid/test: 1424/178/179 test images, 1 = T-shirt
 * ```
 * @throws Error for split sizes that are not positive integers or exceed the images available,
 * a site on a dataset without sites, an unknown site, a site folder with one site, positive
 * classes out of range, repeated or covering every class, and a binary split without positives
 * or without negatives
 */
export async function loadProtocol(dataset: string, o: ProtocolOptions): Promise<Protocol> {
  const task = o.task ?? "10-class";
  if (task !== "10-class" && task !== "binary") {
    throw new Error(`Unknown task "${task}": expected 10-class or binary`);
  }
  const sizes = {
    train: o.train ?? TABLE1_SIZES.train,
    valid: o.valid ?? TABLE1_SIZES.valid,
    test: o.test ?? TABLE1_SIZES.test,
  };
  Object.entries(sizes).forEach(([k, v]) => checkSize(k, v));
  const src = await source(dataset, o);
  const positives = task === "binary" ? [...(o.positives ?? DEFAULT_POSITIVES)] : null;
  if (positives) checkPositives(positives, src.from.classes);
  const want = sizes.train + sizes.valid + sizes.test;
  if (want > count(src.from)) {
    throw new Error(
      `Cannot draw train ${sizes.train} + valid ${sizes.valid} + test ${sizes.test} = ${want} ` +
        `images from the ${src.fromText} of "${dataset}": it has ${count(src.from)}`,
    );
  }
  const key = foldName(rng(o.seed), "downstream");
  const [tr, va, te] = stratifiedDraw(
    src.from.labels,
    src.from.classes.length,
    [sizes.train, sizes.valid, sizes.test],
    key,
  );
  let pool = src.pool;
  if (!pool) {
    const drawn = new Uint8Array(count(src.from));
    for (const part of [tr, va, te]) part.forEach((i) => (drawn[i] = 1));
    const rest = Int32Array.from({ length: count(src.from) }, (_, i) => i).filter((i) => !drawn[i]);
    if (rest.length === 0) {
      throw new Error(
        `The downstream draw of ${want} images takes all of "${dataset}": no pool is left`,
      );
    }
    pool = take(src.from, rest, `${dataset}/pool`);
  }
  const name = src.site === null ? dataset : `${dataset}/${src.site}`;
  const part = (idx: Int32Array, split: string) => {
    const ds = take(src.from, idx, `${name}/downstream-${split}`);
    return positives ? binaryRelabel(ds, positives) : ds;
  };
  const splits = { train: part(tr, "train"), valid: part(va, "valid"), test: part(te, "test") };
  if (positives) {
    for (const [split, ds] of Object.entries(splits)) {
      const r = positiveRate(ds);
      if (!(r > 0 && r < 1)) {
        throw new Error(
          `The downstream ${split} split (${count(ds)} images) has positive rate ${r}: it needs ` +
            `positives and negatives (positive classes [${positives.join(", ")}]); draw more ` +
            "images or choose other positives",
        );
      }
    }
  }
  const classes = positives ? ["negative", "positive"] : [...src.from.classes];
  const describe: Record<string, unknown> = {
    dataset,
    task,
    seed: o.seed,
    site: src.site,
    source: src.fromText,
    pool_source: src.poolText,
    sizes: { pool: count(pool), ...sizes },
    draw: "class-stratified (Hamilton shares per split), pool disjoint",
    image_shape: [...src.from.shape],
    classes,
    positives,
    positive_classes: positives ? positives.map((c) => src.from.classes[c]) : null,
    positive_rate: positives
      ? Object.fromEntries(Object.entries(splits).map(([k, ds]) => [k, positiveRate(ds)]))
      : null,
  };
  return { task, classes, pool, ...splits, describe };
}

// ---------------------------------------------------------------------------------------------
// Scores and results
// ---------------------------------------------------------------------------------------------

/** The scores every downstream results JSON records (seed 000 §4.3, Table 4), as fractions. */
export interface DownstreamMetrics {
  readonly accuracy: number;
  /** Binary: of the positive class (label 1); 10-class: macro averages. */
  readonly f1: number;
  readonly recall: number;
  readonly precision: number;
  /** "positive" (binary, label 1) or "macro" (10-class). */
  readonly average: "positive" | "macro";
  /** K×K counts, confusion[true][predicted]. */
  readonly confusion: number[][];
}

/**
 * Accuracy, F1, recall and precision (binary: of the positive class 1, as Table 4's hematoma
 * scores; 10-class: macro) and the confusion matrix of predictions `pred` against `labels`.
 * @throws Error as lib/metrics/classification.ts for mismatched or out-of-range labels
 */
export function downstreamMetrics(
  task: Task,
  pred: Int32Array,
  labels: Int32Array,
  classes: number,
): DownstreamMetrics {
  const cm = confusionMatrix(pred, labels, classes);
  const s = task === "binary" ? binaryScores(pred, labels, 1, classes) : macroScores(cm, classes);
  const rows = Array.from(
    { length: classes },
    (_, i) => Array.from(cm.subarray(i * classes, (i + 1) * classes)),
  );
  return {
    accuracy: accuracyOf(pred, labels, classes),
    f1: s.f1,
    recall: s.recall,
    precision: s.precision,
    average: task === "binary" ? "positive" : "macro",
    confusion: rows,
  };
}

/** Folder of downstream results under the results directory: `<resultsDir>/downstream/`. */
export const DOWNSTREAM_DIR = "downstream";

/**
 * `finishRun` into `<resultsDir>/downstream/<run>.json` whatever the run's experiment (several
 * experiments share the folder): written through a staging folder and renamed into place.
 * @returns the path written
 */
export async function finishDownstreamRun(h: RunHandle, outcome: RunOutcome): Promise<string> {
  const dir = join(resultsDir(), DOWNSTREAM_DIR);
  const staging = join(dir, `.staging-${h.run}-${Deno.pid}`);
  try {
    const written = await finishRun(h, outcome, { resultsDir: staging });
    const path = join(dir, `${h.run}.json`);
    await Deno.mkdir(dirname(path), { recursive: true });
    await Deno.rename(written, path);
    return path;
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Tuning with validation selection
// ---------------------------------------------------------------------------------------------

/** Options of `fitClassifier`. */
export interface FitOptions {
  readonly epochs: number;
  /** Adam's learning rate. */
  readonly lr: number;
  readonly batch: number;
  /** Stop after this many epochs without a better valid accuracy. @default never */
  readonly patience?: number;
  /** Decoupled weight decay (AdamW). @default 0 */
  readonly weightDecay?: number;
  /** Each parameter's multiple of `lr`, by name (e.g. a slower pre-trained backbone). */
  readonly lrScale?: (name: string) => number;
  /** The parameters to train, by name. @default every one */
  readonly trainable?: readonly string[];
  /** Epoch e's batch order is a permutation from `fold(key, e)`. */
  readonly key: Rng;
  readonly onEpoch?: (r: FitEpoch) => void;
}

/** One epoch of `fitClassifier`. */
export interface FitEpoch {
  readonly epoch: number;
  /** Mean cross-entropy over the epoch's batches, per image. */
  readonly train_loss: number;
  readonly valid_accuracy: number;
}

/** What `fitClassifier` did; the model's variables then hold the selected epoch's weights. */
export interface FitResult {
  readonly curve: FitEpoch[];
  /** The epoch (1-based) of the best valid accuracy, the first one on ties. */
  readonly bestEpoch: number;
  readonly bestValidAccuracy: number;
  /** Seconds in training steps and validation. */
  readonly seconds: number;
}

/** Top-1 predictions of a classifier on every image of `ds`, in batches. */
export function predictLabels(model: Classifier, ds: Dataset, batch = 256): Promise<Int32Array> {
  return predict(model, memoryRows(ds.images, ds.shape), undefined, batch);
}

/**
 * Train every parameter of `model` on `train` with Adam and softmax cross-entropy, score `valid`
 * after each epoch, and keep the weights of the epoch with the best valid accuracy (model
 * selection; early stopping with `patience`). Valid labels choose the epoch and nothing else.
 * @throws Error for a non-positive epoch count or batch, or a non-finite loss (train.ts)
 */
export async function fitClassifier(
  model: Classifier,
  train: Dataset,
  valid: Dataset,
  o: FitOptions,
): Promise<FitResult> {
  if (!(Number.isInteger(o.epochs) && o.epochs >= 1)) {
    throw new Error(`Epochs should be a positive integer, got ${o.epochs}`);
  }
  const t0 = performance.now();
  const classes = train.classes.length;
  const optimizer = adam({ lr: o.lr, weightDecay: o.weightDecay ?? 0, lrScale: o.lrScale });
  const opts = { optimizer, trainable: o.trainable };
  // Only trained parameters change, so only they need the best epoch's copy.
  const kept = o.trainable ?? Object.keys(model.params);
  let state = initTrainState(model.params, opts);
  const curve: FitEpoch[] = [];
  let best: Record<string, tf.Tensor> | undefined;
  let bestEpoch = 0, bestAcc = -1;
  try {
    for (let epoch = 1; epoch <= o.epochs; epoch++) {
      let sum = 0;
      for (const b of batches(train, o.batch, fold(o.key, epoch))) {
        const y = tf.oneHot(b.y, classes);
        const r = trainStep(
          state,
          () => tf.losses.softmaxCrossEntropy(y, model.apply(model.params, b.x)) as tf.Scalar,
          opts,
        );
        state = r.state;
        sum += r.loss * b.indices.length;
        tf.dispose([y, b.x, b.y]);
      }
      const acc = accuracyOf(await predictLabels(model, valid), valid.labels, classes);
      const rec = { epoch, train_loss: sum / count(train), valid_accuracy: acc };
      curve.push(rec);
      o.onEpoch?.(rec);
      if (acc > bestAcc) {
        if (best) tf.dispose(Object.values(best));
        best = Object.fromEntries(kept.map((k) => [k, tf.clone(model.params[k])]));
        bestEpoch = epoch;
        bestAcc = acc;
      } else if (o.patience !== undefined && epoch - bestEpoch >= o.patience) break;
    }
  } finally {
    tf.dispose(Object.values(state.opt.slots));
  }
  for (const [k, v] of Object.entries(best!)) model.params[k].assign(v);
  tf.dispose(Object.values(best!));
  return { curve, bestEpoch, bestValidAccuracy: bestAcc, seconds: (performance.now() - t0) / 1000 };
}
