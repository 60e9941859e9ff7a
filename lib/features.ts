// Frozen diffusion features (seeds 001 §3, 002 §2): f(x0, t, b) = the activation after block b
// of the denoiser's pass on x_t = q_sample(x0, t, ε), average-pooled to k×k and flattened.
//
// ε for an image is drawn from `fold(fold(noiseKey, id), t)`, where id is the image's index in
// its split, so a feature never depends on the batch size or the order images come in. One pass
// per (batch, t) yields every requested block and pool; it stops after the deepest block.
import * as tf from "@tensorflow/tfjs";
import { count, type Dataset } from "./data/dataset.ts";
import { qSample } from "./diffusion/gaussian.ts";
import type { Schedule } from "./diffusion/schedule.ts";
import { adaptiveAvgPool } from "./models/nn.ts";
import { blockTable, conditioning, features, type ModelSpec, represented } from "./models/mod.ts";
import type { Params } from "./params.ts";
import {
  batchThatFits,
  bytes,
  heapLimit,
  HeapLimitError,
  isWasmAbort,
  WASM_HEAP_BYTES,
} from "./engine/heap_limit.ts";
import { oneLine } from "./messages.ts";
import { fold, normalArray, type Rng } from "./random.ts";

/** A frozen denoiser: its spec, weights and noise schedule. */
export interface FrozenModel {
  readonly spec: ModelSpec;
  readonly params: Params;
  readonly schedule: Schedule;
}

/** One cell of the (t, b, pool) grid. */
export interface Cell {
  readonly t: number;
  readonly block: number;
  readonly pool: number;
}

/** `t150-b7-p2`: a cell's name in results and file names. */
export const cellName = (c: Cell) => `t${c.t}-b${c.block}-p${c.pool}`;

/** Every cell of ts × blocks × pools, in that nesting order. */
export function gridCells(
  ts: readonly number[],
  blocks: readonly number[],
  pools: readonly number[],
): Cell[] {
  return ts.flatMap((t) => blocks.flatMap((block) => pools.map((pool) => ({ t, block, pool }))));
}

/** [k, k, C] of a cell's pooled feature map: the pool can only shrink the block's map. */
export function cellShape(spec: ModelSpec, c: Cell): [number, number, number] {
  const info = blockTable(spec).find((b) => b.b === c.block);
  if (!info) {
    throw new Error(
      `Block ${c.block} does not exist: ${spec.kind} blocks are 1..${blockTable(spec).length}`,
    );
  }
  if (c.pool > info.resolution) {
    throw new Error(
      `Pool ${c.pool} is larger than block ${c.block}'s ${info.resolution}×${info.resolution} map`,
    );
  }
  return [c.pool, c.pool, info.channels];
}

/** Length of one image's flattened feature for a cell. */
export const cellDim = (spec: ModelSpec, c: Cell) => cellShape(spec, c).reduce((a, b) => a * b);

/**
 * Check a grid against the model and schedule before any work starts.
 * @throws Error listing every bad t, block and pool
 */
export function checkCells(model: FrozenModel, cells: readonly Cell[]): void {
  const faults = new Set<string>();
  const T = model.schedule.T;
  for (const c of cells) {
    if (!(Number.isInteger(c.t) && c.t >= 0 && c.t < T)) {
      faults.add(`t ${c.t} is outside 0..${T - 1}`);
    }
    if (!(Number.isInteger(c.pool) && c.pool >= 1)) {
      faults.add(`pool ${c.pool} is not a positive integer`);
    }
    try {
      if (Number.isInteger(c.pool) && c.pool >= 1) cellShape(model.spec, c);
    } catch (e) {
      faults.add((e as Error).message);
    }
  }
  if (faults.size) throw new Error(`Bad feature cells: ${[...faults].join("; ")}`);
}

/** ε of each image for timestep t, keyed by (noiseKey, id, t). */
export function imageNoise(
  noiseKey: Rng,
  ids: ArrayLike<number>,
  t: number,
  shape: readonly [number, number, number],
): tf.Tensor4D {
  const per = shape[0] * shape[1] * shape[2];
  const out = new Float32Array(ids.length * per);
  for (let i = 0; i < ids.length; i++) {
    out.set(normalArray(fold(fold(noiseKey, ids[i]), t), per), i * per);
  }
  return tf.tensor4d(out, [ids.length, ...shape]);
}

// Features need no labels: a class-conditional model is asked with its null label K, which it
// learned from label dropout; one without a null label cannot be probed label-free.
export function nullLabels(spec: ModelSpec, n: number): tf.Tensor1D | undefined {
  const cond = conditioning(spec);
  if (!cond) return undefined;
  if (cond.dropRate <= 0) {
    throw new Error(
      "The model is class-conditional without a null label (trained with --class-dropout 0): " +
        "its features would need the very labels a probe predicts",
    );
  }
  return tf.fill([n], cond.classes, "int32") as tf.Tensor1D;
}

/** Horizontal flip of NHWC images (the augmentation applied before extraction). */
export const flipImages = (x: tf.Tensor4D): tf.Tensor4D => tf.reverse(x, 2);

/**
 * Pooled, flattened features of one batch for every cell: [B, k·k·C] per cell name, the
 * caller owns them. One network pass per distinct t, stopping at the deepest block asked for.
 */
export function batchFeatures(
  model: FrozenModel,
  x0: tf.Tensor4D,
  ids: ArrayLike<number>,
  cells: readonly Cell[],
  noiseKey: Rng,
): Map<string, tf.Tensor2D> {
  const out = new Map<string, tf.Tensor2D>();
  const n = x0.shape[0];
  const shape = x0.shape.slice(1) as [number, number, number];
  for (const t of [...new Set(cells.map((c) => c.t))]) {
    const here = cells.filter((c) => c.t === t);
    const blocks = [...new Set(here.map((c) => c.block))];
    const xt = tf.tidy(() => qSample(model.schedule, x0, t, imageNoise(noiseKey, ids, t, shape)));
    const tt = tf.fill([n], t, "int32") as tf.Tensor1D;
    const y = nullLabels(model.spec, n);
    // A representation-conditioned model is given the representation of the clean image.
    const clean = represented(model.spec) ? x0 : undefined;
    const maps = features(model.spec, model.params, xt, tt, blocks, { y, x0: clean });
    tf.dispose([xt, tt, ...(y ? [y] : [])]);
    try {
      for (const c of here) {
        out.set(
          cellName(c),
          tf.tidy(() => tf.reshape(adaptiveAvgPool(maps.get(c.block)!, c.pool), [n, -1])),
        );
      }
    } finally {
      for (const m of maps.values()) m.dispose();
    }
  }
  return out;
}

/** Options of `extractFeatures`. */
export interface ExtractOptions {
  readonly noiseKey: Rng;
  /** Images per network call. @default 128 */
  readonly batch?: number;
  /** Flip every image horizontally first. @default false */
  readonly flip?: boolean;
  /** Each image's id for its noise; default its index in `ds`. */
  readonly ids?: ArrayLike<number>;
  /** Called after each batch with images done so far and the total. */
  readonly onBatch?: (done: number, total: number) => void;
  /**
   * Memory ceiling to size batches for: the first image runs alone, its peak is measured, and
   * `batch` shrinks to what fits (one line through `onNote`). @default the backend's
   * (4 GiB on wasm; none elsewhere)
   */
  readonly heapLimitBytes?: number;
  /** Where the line about a shrunk batch goes. @default console.error */
  readonly onNote?: (line: string) => void;
}

/** One batch of extracted features: rows [start, start + count) of the split. */
export interface FeatureBatch {
  readonly start: number;
  readonly count: number;
  /** Per cell name, count × dim floats. */
  readonly rows: ReadonlyMap<string, Float32Array>;
}

/**
 * Stream a dataset's features batch by batch (memory: one batch of images and features).
 * @throws Error for a bad cell (before any pass) or ids of the wrong length
 */
export async function* extractFeatures(
  model: FrozenModel,
  ds: Dataset,
  cells: readonly Cell[],
  opts: ExtractOptions,
): AsyncGenerator<FeatureBatch> {
  checkCells(model, cells);
  const n = count(ds);
  const ids = opts.ids ?? Int32Array.from({ length: n }, (_, i) => i);
  if (ids.length !== n) throw new Error(`extractFeatures: ${ids.length} ids for ${n} images`);
  let batch = opts.batch ?? 128;
  const limit = opts.heapLimitBytes ?? heapLimit();
  const per = ds.shape[0] * ds.shape[1] * ds.shape[2];
  /** Rows [from, to) in one network pass; `measure` sizes `batch` from its peak. */
  const pass = async (from: number, to: number, measure: boolean) => {
    const x0 = tf.tidy(() => {
      const x = tf.tensor4d(ds.images.subarray(from * per, to * per), [to - from, ...ds.shape]);
      return opts.flip ? flipImages(x) : x;
    });
    const run = () =>
      batchFeatures(
        model,
        x0,
        Array.from({ length: to - from }, (_, i) => ids[from + i]),
        cells,
        opts.noiseKey,
      );
    let maps: Map<string, tf.Tensor2D> | undefined;
    try {
      if (measure) {
        const resident = tf.memory().numBytes;
        const info = await tf.profile(() => (maps = run(), []));
        batch = fitBatch(batch, info.peakBytes - resident, resident, limit!, model, opts.onNote);
      } else maps = run();
    } catch (e) {
      for (const m of maps?.values() ?? []) m.dispose();
      throw isWasmAbort(e) ? heapError(e, to - from, model) : e;
    } finally {
      x0.dispose();
    }
    const rows = new Map<string, Float32Array>();
    for (const [name, m] of maps!) {
      rows.set(name, (await m.data()) as Float32Array);
      m.dispose();
    }
    return rows;
  };
  // With a ceiling, the first image runs alone so that its peak sizes the batch; its rows join
  // the first batch, so batches are as if the sized batch had been asked for.
  const first = limit !== undefined && batch > 1 && n > 0 ? await pass(0, 1, true) : undefined;
  for (let start = 0; start < n;) {
    const end = Math.min(n, start + batch);
    const from = first && start === 0 ? 1 : start; // the measured image is done
    let rows = from < end ? await pass(from, end, false) : new Map<string, Float32Array>();
    if (first && start === 0) rows = joinRows(first, rows);
    opts.onBatch?.(end, n);
    yield { start, count: end - start, rows };
    start = end;
  }
}

/** Per cell, the rows of `a` followed by those of `b`. */
function joinRows(
  a: ReadonlyMap<string, Float32Array>,
  b: ReadonlyMap<string, Float32Array>,
): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [k, ra] of a) {
    const rb = b.get(k) ?? new Float32Array(0);
    const joined = new Float32Array(ra.length + rb.length);
    joined.set(ra);
    joined.set(rb, ra.length);
    out.set(k, joined);
  }
  return out;
}

/**
 * `batch`, or the largest that fits under `limit` with one line saying so; at least 1, which
 * the measuring pass has just run.
 */
function fitBatch(
  batch: number,
  perImage: number,
  resident: number,
  limit: number,
  model: FrozenModel,
  onNote: (line: string) => void = console.error,
): number {
  const fits = Math.max(1, batchThatFits(perImage, resident, limit));
  if (fits >= batch) return batch;
  onNote(
    `features: batch ${batch} of ${model.spec.name} would need about ${
      bytes(resident + batch * perImage)
    } of the ${bytes(limit)} heap (${bytes(resident)} held, ${
      bytes(perImage)
    } per image); extracting at batch ${fits}`,
  );
  return fits;
}

/** The wasm module ran out of memory anyway: one line with the limit and the batch. */
function heapError(e: unknown, size: number, model: FrozenModel) {
  return new HeapLimitError(
    `features: ${model.spec.name} at batch ${size} ran out of the ${
      bytes(WASM_HEAP_BYTES)
    } wasm heap (${oneLine(String(e)).slice(0, 80)}); the module cannot continue: rerun with a ` +
      `smaller --extract-batch (or --backend webgpu|tensorflow)`,
  );
}

/** A split's features for each cell, gathered in memory: rows × dim floats per cell name. */
export interface FeatureTable {
  readonly rows: number;
  readonly dims: ReadonlyMap<string, number>;
  readonly data: ReadonlyMap<string, Float32Array>;
  /** Extraction throughput, images per second (network passes included). */
  readonly imagesPerS: number;
}

/** Extract every cell of a split into memory (a grid's worth must fit; see the cache otherwise). */
export async function extractTable(
  model: FrozenModel,
  ds: Dataset,
  cells: readonly Cell[],
  opts: ExtractOptions,
): Promise<FeatureTable> {
  const n = count(ds);
  const dims = new Map(cells.map((c) => [cellName(c), cellDim(model.spec, c)]));
  const data = new Map([...dims].map(([k, d]) => [k, new Float32Array(n * d)]));
  const t0 = performance.now();
  for await (const b of extractFeatures(model, ds, cells, opts)) {
    for (const [k, rows] of b.rows) data.get(k)!.set(rows, b.start * dims.get(k)!);
  }
  const s = (performance.now() - t0) / 1000;
  return { rows: n, dims, data, imagesPerS: n / Math.max(s, 1e-9) };
}
