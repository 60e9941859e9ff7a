// What the probe scripts (probe, ablate, heads, knn) share: their common flags, loading the
// frozen model and the train/test splits, the validation part carved from train, and the
// features of a set of cells for both splits through the cache.
import { balancedSubset, count, type Dataset, loadDataset } from "./data/dataset.ts";
import type { Cell, FrozenModel } from "./features.ts";
import { type SplitFeatures, splitFeatures } from "./feature_store.ts";
import { type LoadedModel, loadFrozenModel } from "./frozen_model.ts";
import { blockTable, inputShape, type ModelSpec, paramShapes } from "./models/mod.ts";
import { fold, foldName, type Rng, rng } from "./random.ts";
import {
  accuracy,
  concatRows,
  type HeadJob,
  predict,
  type Recipe,
  RECIPES,
  type RowSource,
  type TrainedHead,
  trainHeads,
  validationSplit,
} from "./probe.ts";
import { countParams, disposeParams } from "./params.ts";
import { isOffHeap, offHeapParams } from "./offheap_params.ts";
import { heapLimit } from "./engine/heap_limit.ts";
import { precision } from "./engine/blas/precision.ts";
import { progress } from "./progress.ts";
import { type FlagSpecs, UsageError, type Values } from "./cli.ts";

/** The reference checkpoint: the committed Fashion-MNIST `small` U-Net. */
export const DEFAULT_WEIGHTS = "results/pretrain/fashion-mnist-small-seed0.weights.safetensors";

/** Flags every probe script takes. */
export const PROBE_FLAGS = {
  weights: { kind: "string", default: DEFAULT_WEIGHTS, help: "checkpoint or .weights.safetensors" },
  "random-weights": {
    kind: "boolean",
    help: "probe the --weights architecture with fresh random weights (from --seed) instead",
  },
  dataset: {
    kind: "string",
    help: "mnist | fashion-mnist | <image folder> (default: the checkpoint's own)",
  },
  "train-percent": {
    kind: "float",
    default: 100,
    help: "class-balanced share of the train split to use",
    minExclusive: 0,
    max: 100,
  },
  "test-percent": {
    kind: "float",
    default: 100,
    help: "class-balanced share of the test split to use",
    minExclusive: 0,
    max: 100,
  },
  "val-percent": {
    kind: "float",
    default: 10,
    help: "share of each train class held out for validation (choices are made on it)",
    minExclusive: 0,
    maxExclusive: 100,
  },
  recipe: {
    kind: "string",
    default: "paper",
    help: "paper (Adam, StepLR every 8 of 28 epochs) | reference (diffssl: SGD, every 7)",
    choices: ["paper", "reference"],
  },
  epochs: { kind: "int", help: "override the recipe's epochs", min: 1 },
  lr: { kind: "float", help: "override the recipe's learning rate", minExclusive: 0 },
  batch: { kind: "int", default: 128, help: "head training batch", min: 1 },
  "extract-batch": { kind: "int", default: 128, help: "images per network call", min: 1 },
  "cache-dir": { kind: "string", default: "cache/features", help: "feature cache folder" },
  "no-cache": { kind: "boolean", help: "extract without reading or writing the cache" },
  "memory-gb": {
    kind: "float",
    default: 4,
    help: "features held in memory; cached features beyond it are read from disk per batch",
    minExclusive: 0,
  },
  quiet: { kind: "boolean", help: "no progress lines" },
} as const satisfies FlagSpecs;

/** Options of `probeFeatures`. */
export interface FeatureOptions {
  /** Also extract the train split flipped horizontally, as extra training rows (augmentation). */
  readonly flip?: boolean;
}

/** Features of both splits, with the training rows and labels they give (flips appended). */
export interface ProbeFeatures {
  readonly train: SplitFeatures;
  readonly test: SplitFeatures;
  /** Labels of the training sources' rows. */
  readonly labels: Int32Array;
  /** Rows that train heads: the fit part, and its flipped copies with --flip. */
  readonly fit: Int32Array;
}

type ProbeFlagValues = Values<typeof PROBE_FLAGS>;

/** The flags `setupProbe` reads: weights, data, validation share and the head's recipe. */
export type SetupFlags = Pick<
  ProbeFlagValues,
  | "weights"
  | "random-weights"
  | "dataset"
  | "train-percent"
  | "test-percent"
  | "val-percent"
  | "recipe"
  | "epochs"
  | "lr"
  | "batch"
>;

/** The model, splits and validation part of a probe run. */
export interface ProbeSetup {
  readonly loaded: LoadedModel;
  readonly dataset: string;
  readonly train: Dataset;
  readonly test: Dataset;
  /** Rows of `train` that train heads, and the held-out validation rows with their labels. */
  readonly fit: Int32Array;
  readonly val: Int32Array;
  readonly valLabels: Int32Array;
  readonly recipe: Recipe;
  readonly classes: number;
  /** Epochs of pre-training of the weights on this dataset (0 for random weights), if known. */
  readonly weightsEpochs?: number;
}

/**
 * Load the frozen model and the splits (subsets keyed by the seed, fixed across runs).
 * @throws UsageError when the dataset does not fit the model
 */
export async function setupProbe(
  a: SetupFlags,
  seed: number,
  /** The model of `a.weights`, already loaded (e.g. for a second dataset); else it is loaded. */
  model?: LoadedModel,
  /** The caller trains the encoder's weights (fine-tuning): keep them as variables. */
  opts: { readonly trainsEncoder?: boolean } = {},
): Promise<ProbeSetup> {
  const fresh = model ?? await loadFrozenModel(a.weights, "ema", {
    randomKey: a["random-weights"] ? foldName(rng(seed), "random-weights") : undefined,
  });
  const loaded = model || opts.trainsEncoder
    ? fresh
    : { ...fresh, model: forInference(fresh.model) };
  const dataset = a.dataset ?? loaded.dataset ?? "fashion-mnist";
  const [size, , channels] = inputShape(loaded.model.spec);
  const load = (split: "train" | "test") =>
    loadDataset(dataset, { split, size, channels: channels as 1 | 3 });
  let [train, test] = await Promise.all([load("train"), load("test")]);
  const weightsEpochs = loaded.weights === "random"
    ? 0
    : loaded.dataset === dataset && loaded.step !== undefined && loaded.batch
    ? (loaded.step * loaded.batch) / count(train)
    : undefined;
  // Subsets depend on the seed only, so every script of one seed sees the same images.
  if (a["train-percent"] < 100) {
    train = balancedSubset(train, a["train-percent"], fold(rng(seed), 1));
  }
  if (a["test-percent"] < 100) test = balancedSubset(test, a["test-percent"], fold(rng(seed), 2));
  const classes = train.classes.length;
  if (classes < 2) throw new UsageError(`--dataset ${dataset}: a probe needs 2 or more classes`);
  const { train: fit, val } = validationSplit(train.labels, classes, a["val-percent"], rng(seed));
  const base = RECIPES[a.recipe as "paper" | "reference"];
  const recipe: Recipe = {
    ...base,
    epochs: a.epochs ?? base.epochs,
    lr: a.lr ?? base.lr,
    batch: a.batch,
  };
  const valLabels = Int32Array.from(val, (i) => train.labels[i]);
  return { loaded, dataset, train, test, fit, val, valLabels, recipe, classes, weightsEpochs };
}

/**
 * A frozen model whose weights take over a quarter of the wasm heap (adm256: 2.06 of 4 GiB)
 * moves them off the heap (lib/offheap_params.ts), stored at the engine's precision, with one
 * line: feature extraction then sizes its batch to a heap that holds activations only.
 */
export function forInference(
  model: FrozenModel,
  note: (line: string) => void = console.error,
  limit: number | undefined = heapLimit(),
): FrozenModel {
  // From the shapes: reading an off-heap record's values would bring every weight back.
  const bytes = countParams(paramShapes(model.spec)) * 4;
  if (limit === undefined || bytes <= limit / 4 || isOffHeap(model.params)) return model;
  const storage = precision();
  const moved = offHeapParams(model.params, storage);
  note(
    `features: ${model.spec.name}'s ${(bytes / 2 ** 30).toFixed(2)} GiB of weights ` +
      `kept off the wasm heap (${storage}), each layer's read in as it runs`,
  );
  return { ...model, params: moved };
}

/** The noise key of feature extraction (one per seed, shared by train and test). */
export const noiseKeyOf = (seed: number) => foldName(rng(seed), "feature-noise");

/** Features of the train and test splits for `cells` (through the cache unless --no-cache). */
export async function probeFeatures(
  s: ProbeSetup,
  a: ProbeFlagValues,
  seed: number,
  cells: readonly Cell[],
  o: FeatureOptions = {},
): Promise<ProbeFeatures> {
  const common = {
    noiseKey: noiseKeyOf(seed),
    cacheDir: a["no-cache"] ? undefined : a["cache-dir"],
    batch: a["extract-batch"],
    quiet: a.quiet,
    // Half of the budget for each split.
    memoryBytes: a["memory-gb"] * 2 ** 30 / 2,
  };
  const id = (split: string, ds: Dataset, percent: number) => ({
    weights: s.loaded.sha256,
    dataset: s.dataset,
    split,
    indices: percent < 100
      ? `balanced ${percent}% seed ${seed} (${count(ds)})`
      : `all (${count(ds)})`,
    noiseSeed: seed,
  });
  const trainId = id("train", s.train, a["train-percent"]);
  const train = await splitFeatures(s.loaded.model, s.train, trainId, cells, common);
  const test = await splitFeatures(
    s.loaded.model,
    s.test,
    id("test", s.test, a["test-percent"]),
    cells,
    common,
  );
  if (!o.flip) return { train, test, labels: s.train.labels, fit: s.fit };
  // Flipped copies as rows N..2N−1: the fit part trains on both views, validation on the
  // originals only.
  const flipped = await splitFeatures(s.loaded.model, s.train, trainId, cells, {
    ...common,
    flip: true,
  });
  const n = s.train.labels.length;
  const sources = new Map(
    [...train.sources].map(([k, v]) => [k, concatRows(v, flipped.sources.get(k)!)]),
  );
  const labels = new Int32Array(2 * n);
  labels.set(s.train.labels);
  labels.set(s.train.labels, n);
  const fit = Int32Array.from([...s.fit, ...Array.from(s.fit, (i) => i + n)]);
  return {
    train: { ...train, sources, extractS: train.extractS + flipped.extractS },
    test,
    labels,
    fit,
  };
}

/** The default block: the U-Net's middle block (the bottleneck), the DiT's middle block. */
export function defaultBlock(spec: ModelSpec): number {
  const table = blockTable(spec);
  return table.find((b) => b.module === "middle_block")?.b ?? table[Math.floor(table.length / 2)].b;
}

/** Epochs per cell of the ablation grid: seed 001's appendix trains Figure 2's grid 15 epochs. */
export const GRID_EPOCHS = 15;

/** Flags of a (t, block, pool) grid (ablate, probe --select auto). */
export const GRID_FLAGS = {
  ts: {
    kind: "string",
    default: "10,30,50,90,150,300,500,700",
    help: "grid timesteps, comma-separated",
  },
  blocks: { kind: "string", default: "all", help: "grid blocks, comma-separated, or all" },
  pools: { kind: "string", default: "1,2,4", help: "grid pool sizes, comma-separated" },
} as const satisfies FlagSpecs;

/**
 * A comma-separated list of positive integers from flag `--<flag>`.
 * @throws UsageError naming the flag and the text
 */
export function intList(flag: string, text: string): number[] {
  const xs = text.split(",").map((s) => Number(s.trim()));
  if (text.trim() === "" || xs.some((x) => !Number.isInteger(x) || x < 0)) {
    throw new UsageError(`--${flag}: "${text}" is not a comma-separated list of integers >= 0`);
  }
  return xs;
}

/** The grid the GRID_FLAGS describe, for a model. */
export function gridFromFlags(
  a: { readonly ts: string; readonly blocks: string; readonly pools: string },
  spec: ModelSpec,
): { ts: number[]; blocks: number[]; pools: number[] } {
  return {
    ts: intList("ts", a.ts),
    blocks: a.blocks === "all" ? blockTable(spec).map((b) => b.b) : intList("blocks", a.blocks),
    pools: intList("pools", a.pools),
  };
}

/** The config fields every probe-like result records: weights, data and noise. */
export function probeConfig(
  s: ProbeSetup,
  a: Pick<ProbeFlagValues, "weights" | "train-percent" | "test-percent">,
  seed: number,
) {
  return {
    weights: a.weights,
    weights_sha256: s.loaded.sha256,
    weights_kind: s.loaded.weights,
    weights_epochs: s.weightsEpochs ?? null,
    dataset: s.dataset,
    test_images: s.test.labels.length,
    train_percent: a["train-percent"],
    test_percent: a["test-percent"],
    noise_seed: seed,
  };
}

/** The config fields of a result whose heads train: the recipe and the fit / validation sizes. */
export const trainingConfig = (s: ProbeSetup, a: Pick<ProbeFlagValues, "recipe">) => ({
  recipe: { name: a.recipe, ...s.recipe },
  train_images: s.fit.length,
  val_images: s.val.length,
});

/**
 * A trained head's accuracy on the validation rows of `train` and on all of `test` (the test
 * split, scored once per configuration).
 */
export async function scoreHead(
  h: TrainedHead,
  s: ProbeSetup,
  train: RowSource,
  test: RowSource,
): Promise<{ val: number; test: number }> {
  return {
    val: accuracy(await predict(h, train, s.val), s.valLabels),
    test: accuracy(await predict(h, test), s.test.labels),
  };
}

/** The metrics every single-head result records. */
export const headMetrics = (h: TrainedHead, score: { val: number; test: number }) => ({
  test_accuracy: score.test,
  val_accuracy: score.val,
  train_loss_final: h.curve.at(-1)!.loss,
  param_count: h.paramCount,
  loss_curve: h.curve.map((c) => [c.epoch, c.loss]),
});

/**
 * Train one head on the `fit` rows of its job's source (labels per row) with `s.recipe` and a
 * progress line, score it on validation and on `test`, and free it: the single-head runs' path.
 */
export async function trainScoredHead(
  s: ProbeSetup,
  job: HeadJob,
  rows: { readonly labels: Int32Array; readonly fit: Int32Array },
  test: RowSource,
  key: Rng,
  o: { readonly label: string; readonly quiet?: boolean },
): Promise<
  { metrics: ReturnType<typeof headMetrics>; score: { val: number; test: number }; trainS: number }
> {
  const bar = progress({ label: o.label, total: s.recipe.epochs, quiet: o.quiet });
  const t0 = performance.now();
  const [h] = await trainHeads([job], rows.labels, s.recipe, key, {
    classes: s.classes,
    indices: rows.fit,
    onEpoch: (e, loss) => bar.tick(e, { loss }),
  });
  bar.done();
  const trainS = (performance.now() - t0) / 1000;
  const score = await scoreHead(h, s, job.train, test);
  disposeParams(h.params);
  return { metrics: headMetrics(h, score), score, trainS };
}
