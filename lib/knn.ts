// Cosine k-nearest-neighbour classification of frozen features, the kNN probe of paper 002
// (Mukhopadhyay et al., "Do text-free diffusion models learn discriminative visual
// representations?", Table 9: Top-1/Top-5 at k = 20 and k = 200 on ImageNet-1k, pool 1).
//
// What the paper says: only that table and "we provide kNN results"; it names no distance, vote
// or temperature, and its released code (soumik-kanad/diffssl) has no kNN script. Its numbers
// (Top-1 falls from k = 20 to 200 while Top-5 rises) fit the similarity-weighted vote that DINO
// (Caron et al. 2021, eval_knn.py) took from InstDisc (Wu et al. 2018), the usual protocol for
// such tables, so that is the default here:
//
//   1. L2-normalise every train and test feature (a zero vector stays zero), so that
//      sim(x, y) = x·y is the cosine similarity;
//   2. take the k training samples with the largest sim to the test sample;
//   3. each votes for its class with weight exp(sim / τ), τ = 0.07 ("weighted"), or 1
//      ("majority", a plain vote, offered as the alternative);
//   4. predictions are the classes by decreasing vote sum: top-1 the first, top-5 the first five.
//
// Ties are broken deterministically, toward lower indices: among equal similarities the training
// sample that comes first (in array or stream order) is the nearer neighbour, and among equal
// vote sums the lower class index ranks first (classes with no votes fill the top-5 after the
// voted ones, in class order). Similarities are float32 products computed by the backend's
// matmul (normalisation and votes are computed here, in float64, so they do not depend on it).
//
// Training features may be arrays or a stream of chunks (e.g. a feature cache entry's
// `chunks()`): a bounded-size min-heap of the best k so far per test sample (the worst at its
// root) takes each block of similarities, so the training set is read once and never held
// whole. Memory: the normalised test features (on the backend), one train block (trainChunk ×
// dim), one similarity block (chunk × trainChunk floats), and the heaps (nTest × max k × 12
// bytes).
import * as tf from "@tensorflow/tfjs";

/** Training features held in memory: row i of `features` (dim floats) has class `labels[i]`. */
export interface KnnTrainArrays {
  readonly features: Float32Array;
  readonly labels: Int32Array;
  readonly dim: number;
}

/** One chunk of a training stream; `labels` is required (optional only to accept cache chunks). */
export interface KnnTrainChunk {
  readonly features: Float32Array;
  readonly labels?: Int32Array;
}

/** Training features as arrays, or as chunks of rows (any sizes) in a fixed order. */
export type KnnTrain =
  | KnnTrainArrays
  | Iterable<KnnTrainChunk>
  | AsyncIterable<KnnTrainChunk>;

/** Test features: nTest rows of dim floats. */
export interface KnnTest {
  readonly features: Float32Array;
  readonly dim: number;
}

export interface KnnOptions {
  /** Neighbour counts to evaluate (one result each, in this order), e.g. [20, 200]. */
  readonly k: readonly number[];
  /** Number of classes; labels lie in [0, classes). */
  readonly classes: number;
  /** τ in the weight exp(sim / τ). @default 0.07 */
  readonly temperature?: number;
  /** "weighted": weight exp(sim / τ) (DINO); "majority": one vote each. @default "weighted" */
  readonly vote?: "weighted" | "majority";
  /** Test rows per similarity block. @default 256 */
  readonly chunk?: number;
  /** Training rows per similarity block. @default 4096 */
  readonly trainChunk?: number;
}

/** Predictions at one k: `top[i * width + j]` is test sample i's j-th ranked class. */
export interface KnnPredictions {
  readonly k: number;
  /** min(5, classes). */
  readonly width: number;
  /** [nTest, width] classes, best first. */
  readonly top: Int32Array;
}

/** Fractions in [0, 1]. */
export interface KnnAccuracy {
  readonly top1: number;
  readonly top5: number;
}

const DEFAULT_TEMPERATURE = 0.07;
const isPositiveInt = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) > 0;

// L2-normalised copy of `rows` rows of `dim` floats (float64 sums; x / ‖x‖, 0 for a zero row).
function normalizeRows(x: Float32Array, dim: number, what: string, first: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0, o = 0; o < x.length; r++, o += dim) {
    let ss = 0;
    for (let j = o; j < o + dim; j++) ss += x[j] * x[j];
    if (!Number.isFinite(ss)) {
      throw new Error(`${what} row ${first + r} has a non-finite value (or overflows)`);
    }
    const inv = ss > 0 ? 1 / Math.sqrt(ss) : 0;
    for (let j = o; j < o + dim; j++) out[j] = x[j] * inv;
  }
  return out;
}

function checkLabels(labels: Int32Array, classes: number, first: number): void {
  for (let i = 0; i < labels.length; i++) {
    if (labels[i] < 0 || labels[i] >= classes) {
      throw new Error(
        `Training label ${labels[i]} of sample ${first + i} is outside [0, ${classes})`,
      );
    }
  }
}

// Per test sample, the best `cap` neighbours so far as a min-heap (root = worst). Worse means a
// lower similarity or, at equal similarity, a higher training index.
class NeighbourHeaps {
  readonly sims: Float32Array;
  readonly index: Int32Array;
  readonly labels: Int32Array;
  readonly size: Int32Array;

  constructor(readonly n: number, readonly cap: number) {
    this.sims = new Float32Array(n * cap);
    this.index = new Int32Array(n * cap);
    this.labels = new Int32Array(n * cap);
    this.size = new Int32Array(n);
  }

  private worse(a: number, b: number): boolean {
    const sa = this.sims[a], sb = this.sims[b];
    return sa < sb || (sa === sb && this.index[a] > this.index[b]);
  }

  private swap(a: number, b: number): void {
    const s = this.sims[a], i = this.index[a], l = this.labels[a];
    this.sims[a] = this.sims[b], this.index[a] = this.index[b], this.labels[a] = this.labels[b];
    this.sims[b] = s, this.index[b] = i, this.labels[b] = l;
  }

  private siftDown(base: number, size: number, at: number): void {
    for (;;) {
      const l = 2 * at + 1, r = l + 1;
      let worst = at;
      if (l < size && this.worse(base + l, base + worst)) worst = l;
      if (r < size && this.worse(base + r, base + worst)) worst = r;
      if (worst === at) return;
      this.swap(base + at, base + worst);
      at = worst;
    }
  }

  /** Offer training sample `idx` (label `label`) at similarity `sim` to test sample `row`. */
  offer(row: number, sim: number, idx: number, label: number): void {
    const base = row * this.cap;
    const size = this.size[row];
    if (size < this.cap) {
      let at = size;
      this.sims[base + at] = sim, this.index[base + at] = idx, this.labels[base + at] = label;
      this.size[row] = size + 1;
      while (at > 0) {
        const up = (at - 1) >> 1;
        if (!this.worse(base + at, base + up)) break;
        this.swap(base + at, base + up);
        at = up;
      }
      return;
    }
    // Training indices arrive in increasing order, so an equal similarity never displaces.
    const rootSim = this.sims[base];
    if (sim < rootSim || (sim === rootSim && idx > this.index[base])) return;
    this.sims[base] = sim, this.index[base] = idx, this.labels[base] = label;
    this.siftDown(base, size, 0);
  }

  /** Test sample `row`'s neighbours, nearest first, into `sims` and `labels` (emptying it). */
  drain(row: number, sims: Float64Array, labels: Int32Array): number {
    const base = row * this.cap;
    const count = this.size[row];
    for (let size = count; size > 0; size--) {
      sims[size - 1] = this.sims[base], labels[size - 1] = this.labels[base];
      this.swap(base, base + size - 1);
      this.siftDown(base, size - 1, 0);
    }
    this.size[row] = 0;
    return count;
  }
}

function isIterable(t: KnnTrain): t is Iterable<KnnTrainChunk> | AsyncIterable<KnnTrainChunk> {
  return Symbol.asyncIterator in t || Symbol.iterator in t;
}

/**
 * Classify test features by cosine k-nearest neighbours among training features, for several k
 * at once (the neighbours are found once, for the largest k).
 *
 * @param train arrays, or (a)sync iterable chunks of rows with labels, read once in order
 * @param test features to classify; `dim` must equal the training features'
 * @returns one `KnnPredictions` per entry of `opts.k`, in that order
 * @throws Error (one line) when a k exceeds the number of training samples, a k, `classes`,
 * `temperature`, `vote`, `chunk` or `trainChunk` is invalid, sizes disagree with `dim`, a label is
 * outside [0, classes), a chunk has no labels, or a feature is not finite
 * @example
 * ```ts
 * const [at20, at200] = await knnClassify(
 *   { features: trainX, labels: trainY, dim: 512 },
 *   { features: testX, dim: 512 },
 *   { k: [20, 200], classes: 1000 },
 * );
 * knnAccuracy(at20, testY); // { top1: 0.48…, top5: 0.71… }
 * ```
 */
export async function knnClassify(
  train: KnnTrain,
  test: KnnTest,
  opts: KnnOptions,
): Promise<KnnPredictions[]> {
  const { classes, k: ks } = opts;
  const temperature = opts.temperature ?? DEFAULT_TEMPERATURE;
  const vote = opts.vote ?? "weighted";
  const chunk = opts.chunk ?? 256;
  const trainChunk = opts.trainChunk ?? 4096;
  const dim = test.dim;
  if (!isPositiveInt(classes)) {
    throw new Error(`classes should be a positive integer, got ${classes}`);
  }
  if (ks.length === 0 || !ks.every(isPositiveInt)) {
    throw new Error(`k should be positive integers, got [${ks.join(", ")}]`);
  }
  if (!(temperature > 0 && Number.isFinite(temperature))) {
    throw new Error(`temperature should be positive, got ${temperature}`);
  }
  if (vote !== "weighted" && vote !== "majority") {
    throw new Error(`vote should be "weighted" or "majority", got "${vote}"`);
  }
  if (!isPositiveInt(chunk)) throw new Error(`chunk should be a positive integer, got ${chunk}`);
  if (!isPositiveInt(trainChunk)) {
    throw new Error(`trainChunk should be a positive integer, got ${trainChunk}`);
  }
  if (!isPositiveInt(dim) || test.features.length % dim !== 0) {
    throw new Error(`Test features (${test.features.length} floats) are not rows of dim ${dim}`);
  }
  const maxK = Math.max(...ks);
  const tooBig = (n: number) =>
    new Error(`k = ${maxK} is larger than the training set (${n} samples)`);
  if (!isIterable(train)) {
    if (train.dim !== dim) {
      throw new Error(`Training features have dim ${train.dim}, test features ${dim}`);
    }
    if (train.labels.length < maxK) throw tooBig(train.labels.length); // before any work
  }

  const nTest = test.features.length / dim;
  const heaps = new NeighbourHeaps(nTest, maxK);
  const normTest = normalizeRows(test.features, dim, "Test features", 0);
  const testBlocks: tf.Tensor2D[] = [];
  let seen = 0; // training samples so far = the next sample's index
  try {
    for (let s = 0; s < nTest; s += chunk) {
      const m = Math.min(chunk, nTest - s);
      testBlocks.push(tf.tensor2d(normTest.subarray(s * dim, (s + m) * dim), [m, dim]));
    }

    // One block of training rows against every test block: similarities, then the heaps.
    const addBlock = async (features: Float32Array, labels: Int32Array) => {
      const rows = labels.length;
      const first = seen;
      checkLabels(labels, classes, first);
      const block = tf.tensor2d(normalizeRows(features, dim, "Training features", first), [
        rows,
        dim,
      ]);
      try {
        for (let b = 0; b < testBlocks.length; b++) {
          const sim = tf.matMul(testBlocks[b], block, false, true); // (m, rows)
          let values: Float32Array;
          try {
            values = (await sim.data()) as Float32Array;
          } finally {
            sim.dispose();
          }
          const m = testBlocks[b].shape[0];
          for (let r = 0; r < m; r++) {
            const row = b * chunk + r;
            for (let j = 0, o = r * rows; j < rows; j++, o++) {
              heaps.offer(row, values[o], first + j, labels[j]);
            }
          }
        }
      } finally {
        block.dispose();
      }
      seen += rows;
    };

    // Split any chunk into blocks of at most trainChunk rows (bounded similarity blocks).
    const addChunk = async (features: Float32Array, labels: Int32Array | undefined) => {
      if (!labels) throw new Error(`Training chunk at sample ${seen} has no labels`);
      if (features.length !== labels.length * dim) {
        throw new Error(
          `Training chunk at sample ${seen} has ${features.length} floats for ${labels.length} labels of dim ${dim}`,
        );
      }
      for (let r = 0; r < labels.length; r += trainChunk) {
        const e = Math.min(labels.length, r + trainChunk);
        await addBlock(features.subarray(r * dim, e * dim), labels.subarray(r, e));
      }
    };

    if (isIterable(train)) {
      for await (const c of train) await addChunk(c.features, c.labels);
    } else await addChunk(train.features, train.labels);
  } finally {
    for (const t of testBlocks) t.dispose();
  }
  if (seen < maxK) throw tooBig(seen);
  return rankClasses(heaps, nTest, ks, classes, vote, temperature);
}

// The votes at every k, from each test sample's sorted neighbours; the k are taken in increasing
// order so that one pass over the neighbours accumulates the sums for all of them.
function rankClasses(
  heaps: NeighbourHeaps,
  nTest: number,
  ks: readonly number[],
  classes: number,
  vote: "weighted" | "majority",
  temperature: number,
): KnnPredictions[] {
  const width = Math.min(5, classes);
  const order = [...new Set(ks)].sort((a, b) => a - b);
  const tops = new Map(order.map((k) => [k, new Int32Array(nTest * width)]));
  const sims = new Float64Array(heaps.cap);
  const labels = new Int32Array(heaps.cap);
  const votes = new Float64Array(classes);
  const stamp = new Int32Array(classes).fill(-1); // = row once the class has a vote in that row
  const touched: number[] = [];
  const rank = (a: number, b: number) => votes[b] - votes[a] || a - b;
  for (let row = 0; row < nTest; row++) {
    heaps.drain(row, sims, labels);
    touched.length = 0;
    let j = 0;
    for (const k of order) {
      for (; j < k; j++) {
        const c = labels[j];
        if (stamp[c] !== row) stamp[c] = row, votes[c] = 0, touched.push(c);
        votes[c] += vote === "weighted" ? Math.exp(sims[j] / temperature) : 1;
      }
      const ranked = [...touched].sort(rank);
      // Unvoted classes fill the rest in class order.
      for (let c = 0; ranked.length < width; c++) if (stamp[c] !== row) ranked.push(c);
      tops.get(k)!.set(ranked.slice(0, width), row * width);
    }
  }
  return ks.map((k) => ({ k, width, top: tops.get(k)! }));
}

/**
 * Top-1 and top-5 accuracy of kNN predictions: top-1 counts the first class, top-5 whether the
 * label is among the first min(5, width) classes.
 *
 * @returns fractions in [0, 1]; 0 and 0 for no test samples
 * @throws Error when the number of labels differs from the number of predictions
 * @example
 * ```ts
 * const { top1, top5 } = knnAccuracy(predictions, testLabels);
 * ```
 */
export function knnAccuracy(pred: KnnPredictions, labels: ArrayLike<number>): KnnAccuracy {
  const n = pred.top.length / pred.width;
  if (labels.length !== n) {
    throw new Error(`${labels.length} test labels for ${n} predictions (k = ${pred.k})`);
  }
  let top1 = 0, top5 = 0;
  for (let i = 0; i < n; i++) {
    const row = pred.top.subarray(i * pred.width, i * pred.width + Math.min(5, pred.width));
    if (row[0] === labels[i]) top1++;
    if (row.includes(labels[i])) top5++;
  }
  return n === 0 ? { top1: 0, top5: 0 } : { top1: top1 / n, top5: top5 / n };
}
