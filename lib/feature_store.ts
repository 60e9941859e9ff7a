// Features for the probe scripts: a split's features for a set of cells, read from the on-disk
// cache when an intact entry exists, extracted (all missing cells in one pass) and cached
// otherwise. What the probes train on are `RowSource`s.
import { count, type Dataset } from "./data/dataset.ts";
import { type Cell, cellName, cellShape, extractFeatures, type FrozenModel } from "./features.ts";
import { type CacheEntry, createEntry, type FeatureKey, openEntry } from "./features_cache.ts";
import { memoryRows, type RowSource } from "./probe.ts";
import { oneLine } from "./messages.ts";
import { progress } from "./progress.ts";
import type { Rng } from "./random.ts";

/** Bump when extraction changes what a cached feature holds. */
export const EXTRACTION_VERSION = 1;

/** Where a split's images come from, for the cache key. */
export interface SplitId {
  /** sha256 of the weights file. */
  readonly weights: string;
  readonly dataset: string;
  readonly split: string;
  /** Which images in what order (e.g. "all", or a subset's description). */
  readonly indices: string;
  readonly noiseSeed: number;
}

/** Options of `splitFeatures`. */
export interface StoreOptions {
  readonly noiseKey: Rng;
  /** Cache root; undefined: no cache (extract every time). */
  readonly cacheDir?: string;
  /**
   * Bytes of features to hold in memory; cached cells beyond it are read from disk at each
   * gather. @default 4 GiB
   */
  readonly memoryBytes?: number;
  readonly batch?: number;
  readonly flip?: boolean;
  readonly quiet?: boolean;
}

/** The features of one split. */
export interface SplitFeatures {
  readonly sources: ReadonlyMap<string, RowSource>;
  /** Images per second of the extraction this call ran; undefined when every cell was cached. */
  readonly imagesPerS?: number;
  readonly extractS: number;
  readonly cached: readonly string[];
}

const keyOf = (id: SplitId, c: Cell, flip: boolean): FeatureKey => ({
  ...id,
  t: c.t,
  block: c.block,
  pool: c.pool,
  flip,
  version: EXTRACTION_VERSION,
});

/**
 * Features of `ds` for every cell, from the cache where an intact entry exists; the missing
 * cells are extracted in one streaming pass and, with a cache, written to it.
 */
export async function splitFeatures(
  model: FrozenModel,
  ds: Dataset,
  id: SplitId,
  cells: readonly Cell[],
  o: StoreOptions,
): Promise<SplitFeatures> {
  const flip = o.flip ?? false;
  const sources = new Map<string, RowSource>();
  const cached: string[] = [];
  const missing: Cell[] = [];
  let budget = o.memoryBytes ?? 4 * 2 ** 30;
  const report = (c: Cell, why: string) => {
    if (!o.quiet) console.error(`features: cache entry for ${cellName(c)} is ${why}; recomputing`);
  };
  for (const c of cells) {
    if (o.cacheDir === undefined) {
      missing.push(c);
      continue;
    }
    const key = keyOf(id, c, flip);
    const shape = cellShape(model.spec, c);
    // Opened lazily: an entry loaded into memory is then read, and its chunks checked, in one
    // pass. One read from disk at each gather is checked whole first, so that a bad chunk shows
    // here, not in the middle of training.
    const hit = await openEntry(o.cacheDir, key, { verify: "lazy" });
    if (!hit.ok) {
      if (hit.reason !== "missing") report(c, hit.reason);
      missing.push(c);
      continue;
    }
    try {
      if (hit.entry.bytes <= budget) {
        sources.set(cellName(c), memoryRows(await hit.entry.readRows(0, hit.entry.rows), shape));
        budget -= hit.entry.bytes;
      } else {
        const checked = await openEntry(o.cacheDir, key);
        if (!checked.ok) throw new Error(checked.reason);
        sources.set(cellName(c), diskRows(checked.entry, shape));
      }
      cached.push(cellName(c));
    } catch (e) {
      // A chunk failed its CRC (the lazy read removed the entry) or the entry went bad.
      report(c, `unreadable (${oneLine((e as Error).message)})`);
      missing.push(c);
    }
  }
  if (missing.length === 0) return { sources, extractS: 0, cached };

  const n = count(ds);
  const writers = o.cacheDir === undefined ? [] : await Promise.all(
    missing.map((c) =>
      createEntry(o.cacheDir!, keyOf(id, c, flip), cellShape(model.spec, c), ds.labels)
    ),
  );
  const dims = missing.map((c) => cellShape(model.spec, c).reduce((a, b) => a * b));
  // Without a cache everything stays in memory; with one, only what fits the budget does, and
  // the rest is read back from its committed entry.
  const total = 4 * n * dims.reduce((a, b) => a + b, 0);
  const keep = writers.length === 0 || total <= budget;
  const data = missing.map((_, i) => (keep ? new Float32Array(n * dims[i]) : undefined));
  const bar = progress({ label: `features ${id.split}`, total: n, quiet: o.quiet });
  const t0 = performance.now();
  try {
    for await (
      const b of extractFeatures(model, ds, missing, {
        noiseKey: o.noiseKey,
        batch: o.batch,
        flip,
        onBatch: (done) => bar.tick(done),
      })
    ) {
      for (const [i, c] of missing.entries()) {
        const rows = b.rows.get(cellName(c))!;
        data[i]?.set(rows, b.start * dims[i]);
        if (writers.length) await writers[i].append(rows);
      }
    }
    const entries: CacheEntry[] = [];
    for (const w of writers) entries.push(await w.commit());
    missing.forEach((c, i) => {
      const shape = cellShape(model.spec, c);
      sources.set(cellName(c), data[i] ? memoryRows(data[i]!, shape) : diskRows(entries[i], shape));
    });
    if (keep && writers.length) budget -= total;
  } catch (e) {
    for (const w of writers) await w.abort().catch(() => {});
    throw e;
  } finally {
    bar.done();
  }
  const extractS = (performance.now() - t0) / 1000;
  if (writers.length === 0) {
    missing.forEach((c, i) =>
      sources.set(cellName(c), memoryRows(data[i]!, cellShape(model.spec, c)))
    );
  }
  return { sources, imagesPerS: n / Math.max(extractS, 1e-9), extractS, cached };
}

/**
 * A RowSource that reads a cache entry from disk at each gather: the wanted rows in ascending
 * order, consecutive ones in one read, then put in the order asked for.
 */
export function diskRows(e: CacheEntry, shape: readonly [number, number, number]): RowSource {
  const dim = e.rowFloats;
  return {
    rows: e.rows,
    shape,
    gather: async (indices) => {
      const order = Int32Array.from(indices).sort();
      const at = new Map<number, Float32Array>();
      for (let i = 0; i < order.length;) {
        let j = i + 1;
        while (j < order.length && order[j] <= order[j - 1] + 1) j++;
        const start = order[i], count = order[j - 1] - start + 1;
        const block = await e.readRows(start, count);
        for (let r = 0; r < count; r++) at.set(start + r, block.subarray(r * dim, (r + 1) * dim));
        i = j;
      }
      const out = new Float32Array(indices.length * dim);
      indices.forEach((r, k) => out.set(at.get(r)!, k * dim));
      return out;
    },
  };
}
