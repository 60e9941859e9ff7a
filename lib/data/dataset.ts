// Pure functions over immutable dataset descriptors (descriptor.ts): shuffles, subsets, splits,
// resizing and batching, plus `loadDataset`, which resolves the `--dataset` flag of scripts.
// Every random choice takes an Rng, so the same key gives the same subset, split and batches.
import * as tf from "@tensorflow/tfjs";
import { fold, permutation, type Rng, rng } from "../random.ts";
import { count, type Dataset, makeDataset } from "./descriptor.ts";
import { loadFashionMnist } from "./fashion_mnist.ts";
import { loadImageFolder } from "./image_folder.ts";
import { loadEmbeddedMnist } from "./mnist.ts";

export {
  bytesToUnit,
  byteToUnit,
  count,
  type Dataset,
  makeDataset,
  type Sites,
} from "./descriptor.ts";

// ---------------------------------------------------------------- selection

/** The samples at `indices`, in that order (repeats allowed). */
export function take(ds: Dataset, indices: ArrayLike<number>, name = ds.name): Dataset {
  const [h, w, c] = ds.shape;
  const per = h * w * c;
  const images = new Float32Array(indices.length * per);
  const labels = new Int32Array(indices.length);
  if (indices.length > 0 && count(ds) === 0) throw new Error(`Dataset "${ds.name}" is empty`);
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    if (!(Number.isInteger(i) && i >= 0 && i < count(ds))) {
      throw new Error(`Dataset "${ds.name}": index ${i} is outside [0, ${count(ds)})`);
    }
    images.set(ds.images.subarray(i * per, (i + 1) * per), k * per);
    labels[k] = ds.labels[i];
  }
  const sites = ds.sites &&
    { names: ds.sites.names, ids: Int32Array.from(indices, (i) => ds.sites!.ids[i]) };
  return makeDataset({ ...ds, name, images, labels, ...(sites ? { sites } : {}) });
}

/** The dataset in the order of a uniformly random permutation drawn from `r`. */
export function shuffle(ds: Dataset, r: Rng): Dataset {
  return take(ds, permutation(r, count(ds)));
}

/**
 * Sorted indices of a class-balanced subset: from each class with n_c samples, round(percent% of
 * n_c) of them, at least 1, drawn with the class's own key `fold(r, c)`. For one key, a larger
 * percent gives a superset of a smaller one.
 */
export function balancedIndices(
  labels: Int32Array,
  numClasses: number,
  percent: number,
  r: Rng,
): Int32Array {
  if (!(percent > 0 && percent <= 100)) {
    throw new Error(`Subset percent must be in (0, 100], got ${percent}`);
  }
  const byClass: number[][] = Array.from({ length: numClasses }, () => []);
  labels.forEach((y, i) => byClass[y].push(i));
  const chosen: number[] = [];
  byClass.forEach((members, c) => {
    if (members.length === 0) return;
    const k = Math.max(1, Math.round((percent / 100) * members.length));
    const perm = permutation(fold(r, c), members.length);
    for (let j = 0; j < k; j++) chosen.push(members[perm[j]]);
  });
  return Int32Array.from(chosen).sort();
}

/** A class-balanced `percent`% subset (see `balancedIndices`), in dataset order. */
export function balancedSubset(ds: Dataset, percent: number, r: Rng): Dataset {
  return take(
    ds,
    balancedIndices(ds.labels, ds.classes.length, percent, r),
    `${ds.name}@${percent}%`,
  );
}

/**
 * Consecutive parts of `counts[i]` samples each (e.g. [train, valid, test]), taken after a shuffle
 * by `r` when one is given. Samples beyond the sum of the counts are left out.
 */
export function splitByCounts(ds: Dataset, counts: readonly number[], r?: Rng): Dataset[] {
  const total = counts.reduce((a, b) => a + b, 0);
  if (counts.some((k) => !Number.isInteger(k) || k < 0) || total > count(ds)) {
    throw new Error(
      `Dataset "${ds.name}": cannot split ${count(ds)} samples into [${counts.join(", ")}]`,
    );
  }
  const order = r ? permutation(r, count(ds)) : Int32Array.from({ length: count(ds) }, (_, i) => i);
  let start = 0;
  return counts.map((k) => {
    const part = take(ds, order.subarray(start, start + k), `${ds.name}[${start}:${start + k}]`);
    start += k;
    return part;
  });
}

// ---------------------------------------------------------------- transforms

/**
 * Bilinear resize of square images to `size` x `size` with half-pixel centres (as
 * tf.image.resizeBilinear with halfPixelCenters, and PyTorch's align_corners=False). Plain JS, so
 * the result does not depend on the tfjs backend.
 */
export function resize(ds: Dataset, size: number): Dataset {
  const [h, w, c] = ds.shape;
  if (h !== w) throw new Error(`Dataset "${ds.name}": resize needs square images, got ${h}x${w}`);
  if (size === h) return ds;
  // Source row (= column) of each output row: two neighbours and the weight of the second.
  const taps = Array.from({ length: size }, (_, o) => {
    const src = Math.max(0, (o + 0.5) * (h / size) - 0.5);
    const lo = Math.min(Math.floor(src), h - 1);
    return { lo, hi: Math.min(lo + 1, h - 1), f: src - lo };
  });
  const n = count(ds), inPer = h * w * c, outPer = size * size * c;
  const out = new Float32Array(n * outPer);
  for (let i = 0; i < n; i++) {
    const img = ds.images.subarray(i * inPer, (i + 1) * inPer);
    for (let y = 0; y < size; y++) {
      const ty = taps[y];
      for (let x = 0; x < size; x++) {
        const tx = taps[x];
        for (let ch = 0; ch < c; ch++) {
          const at = (r: number, col: number) => img[(r * w + col) * c + ch];
          const top = at(ty.lo, tx.lo) + (at(ty.lo, tx.hi) - at(ty.lo, tx.lo)) * tx.f;
          const bottom = at(ty.hi, tx.lo) + (at(ty.hi, tx.hi) - at(ty.hi, tx.lo)) * tx.f;
          out[i * outPer + (y * size + x) * c + ch] = top + (bottom - top) * ty.f;
        }
      }
    }
  }
  return makeDataset({ ...ds, images: out, shape: [size, size, c] });
}

/** Grayscale images repeated to 3 channels (RGB models on gray data); other cases unchanged. */
export function toChannels(ds: Dataset, channels: 1 | 3): Dataset {
  const [h, w, c] = ds.shape;
  if (c === channels) return ds;
  if (c !== 1) throw new Error(`Dataset "${ds.name}": cannot turn ${c} channels into ${channels}`);
  const out = new Float32Array(ds.images.length * 3);
  ds.images.forEach((v, i) => out.fill(v, 3 * i, 3 * i + 3));
  return makeDataset({ ...ds, images: out, shape: [h, w, 3] });
}

// ---------------------------------------------------------------- batches

/** One batch; the caller disposes `x` and `y`. */
export interface Batch {
  /** [B, H, W, C] float32 in [-1, 1]. */
  readonly x: tf.Tensor4D;
  /** [B] int32 labels. */
  readonly y: tf.Tensor1D;
  /** Dataset indices of the batch's samples. */
  readonly indices: Int32Array;
}

/** The samples at `indices` as tensors (for random batches: pass `randint(r, B, 0, N)`). */
export function batchAt(ds: Dataset, indices: ArrayLike<number>): Batch {
  const sub = take(ds, indices);
  const [h, w, c] = ds.shape;
  return {
    x: tf.tensor4d(sub.images, [indices.length, h, w, c], "float32"),
    y: tf.tensor1d(sub.labels, "int32"),
    indices: Int32Array.from(indices),
  };
}

export interface BatchOptions {
  /** Skip the last batch when it is smaller than `batchSize`. @default false */
  readonly dropLast?: boolean;
}

/**
 * One epoch of batches, in the order of a permutation drawn from `r` (dataset order when `r` is
 * undefined). Tensors are made lazily, one batch per iteration; the caller disposes each.
 */
export function* batches(
  ds: Dataset,
  batchSize: number,
  r: Rng | undefined,
  opts: BatchOptions = {},
): Generator<Batch> {
  if (!(Number.isInteger(batchSize) && batchSize > 0)) {
    throw new Error(`Batch size must be a positive integer, got ${batchSize}`);
  }
  const n = count(ds);
  const order = r ? permutation(r, n) : Int32Array.from({ length: n }, (_, i) => i);
  for (let start = 0; start < n; start += batchSize) {
    const end = Math.min(start + batchSize, n);
    if (opts.dropLast && end - start < batchSize) return;
    yield batchAt(ds, order.subarray(start, end));
  }
}

// ---------------------------------------------------------------- loading

export type DatasetSplit = "train" | "test";

/**
 * Key of the fixed train/test split of datasets that ship without one (embedded MNIST, folders
 * without train/ and test/). Changing it changes every published number: never do.
 */
export const FIXED_SPLIT_SEED = 20240601;

/** Percent of each class that goes to train in a fixed split (8,000 of the 10,000 MNIST digits). */
export const FIXED_SPLIT_TRAIN_PERCENT = 80;

/**
 * The fixed split: train = `balancedIndices(labels, 80%, rng(FIXED_SPLIT_SEED))`, test = the
 * rest; each part then in the order of a permutation from `fold(rng(FIXED_SPLIT_SEED), 1|2)`,
 * so a prefix of either part is a random sample.
 */
export function fixedSplit(ds: Dataset, split: DatasetSplit): Dataset {
  const key = rng(FIXED_SPLIT_SEED);
  const train = balancedIndices(ds.labels, ds.classes.length, FIXED_SPLIT_TRAIN_PERCENT, key);
  const inTrain = new Uint8Array(count(ds));
  train.forEach((i) => (inTrain[i] = 1));
  const part = split === "train"
    ? train
    : Int32Array.from({ length: count(ds) }, (_, i) => i).filter((i) => !inTrain[i]);
  const order = permutation(fold(key, split === "train" ? 1 : 2), part.length);
  return take(ds, Int32Array.from(order, (j) => part[j]), `${ds.name}/${split}`);
}

export interface LoadOptions {
  /** @default "train" */
  readonly split?: DatasetSplit;
  /** Output side: bilinear resize for MNIST-style data, shorter side + centre crop for folders. */
  readonly size?: number;
  /** 1 or 3; gray data is repeated to 3. @default 1 for MNIST-style data, 3 for folders */
  readonly channels?: 1 | 3;
  /** Fashion-MNIST directory (else $FASHION_MNIST_DIR, else the Debian location). */
  readonly fashionMnistRoot?: string;
}

function isDirectory(path: string): boolean {
  try {
    return Deno.statSync(path).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Resolve a `--dataset` value: `mnist` (the 10,000 embedded digits, split by `fixedSplit` into
 * 8,000 train and 2,000 test), `fashion-mnist` (60,000 / 10,000 from the IDX files), or a folder
 * path (`<path>/train`, and `<path>/test` or else `<path>/val`, when the folder has such
 * subfolders; otherwise `fixedSplit` of the whole folder).
 *
 * @throws Error naming the dataset and the fault, also when the split has no samples (before any
 * training can start)
 */
export async function loadDataset(spec: string, opts: LoadOptions = {}): Promise<Dataset> {
  const ds = await loadAny(spec, opts);
  if (count(ds) === 0) throw new Error(`Dataset "${ds.name}" is empty: it has no samples`);
  return ds;
}

async function loadAny(spec: string, opts: LoadOptions): Promise<Dataset> {
  const split = opts.split ?? "train";
  const gray = async (load: Promise<Dataset>) => {
    const ds = await load;
    const sized = opts.size ? resize(ds, opts.size) : ds;
    return toChannels(sized, opts.channels ?? 1);
  };
  if (spec === "mnist") return gray(loadEmbeddedMnist().then((ds) => fixedSplit(ds, split)));
  if (spec === "fashion-mnist") return gray(loadFashionMnist(split, opts.fashionMnistRoot));
  if (!isDirectory(spec)) {
    throw new Error(
      `Unknown dataset "${spec}": expected mnist, fashion-mnist or an image folder path`,
    );
  }
  const folderOpts = { channels: opts.channels ?? 3, size: opts.size };
  const splitDirs = ["train", "test", "val"].filter((s) => isDirectory(`${spec}/${s}`));
  if (splitDirs.length === 0) {
    const part = fixedSplit(await loadImageFolder(spec, folderOpts), split);
    if (count(part) === 0) {
      const [tr, te] = [FIXED_SPLIT_TRAIN_PERCENT, 100 - FIXED_SPLIT_TRAIN_PERCENT];
      throw new Error(
        `Dataset "${part.name}" is empty: the fixed ${tr}/${te} split of "${spec}" leaves it no ` +
          "images; add images, or train/ and test/ folders",
      );
    }
    return part;
  }
  const sub = (split === "train" ? ["train"] : ["test", "val"]).find((s) => splitDirs.includes(s));
  if (!sub) {
    throw new Error(
      `Cannot load dataset "${spec}": it has ${splitDirs.join("/")}/ but no ${split} folder`,
    );
  }
  return loadImageFolder(`${spec}/${sub}`, folderOpts);
}
