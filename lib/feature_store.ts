// Features for the probe scripts: a split's features for a set of cells, read from the on-disk
// cache when an intact entry exists, extracted (all missing cells in one pass) and cached
// otherwise. What the probes train on are `RowSource`s.
import { count, type Dataset } from "./data/dataset.ts";
import { type Cell, cellName, cellShape, extractFeatures, type FrozenModel } from "./features.ts";
import { createEntry, type FeatureKey, openEntry } from "./features_cache.ts";
import { memoryRows, type RowSource } from "./probe.ts";
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
  for (const c of cells) {
    if (o.cacheDir === undefined) {
      missing.push(c);
      continue;
    }
    const hit = await openEntry(o.cacheDir, keyOf(id, c, flip));
    if (hit.ok) {
      sources.set(
        cellName(c),
        memoryRows(await hit.entry.readRows(0, hit.entry.rows), cellShape(model.spec, c)),
      );
      cached.push(cellName(c));
    } else if (hit.reason !== "missing" && !o.quiet) {
      console.error(`features: cache entry for ${cellName(c)} is ${hit.reason}; recomputing`);
    }
    if (!hit.ok) missing.push(c);
  }
  if (missing.length === 0) return { sources, extractS: 0, cached };

  const n = count(ds);
  const writers = o.cacheDir === undefined ? [] : await Promise.all(
    missing.map((c) =>
      createEntry(o.cacheDir!, keyOf(id, c, flip), cellShape(model.spec, c), ds.labels)
    ),
  );
  const dims = missing.map((c) => cellShape(model.spec, c).reduce((a, b) => a * b));
  const data = missing.map((_, i) => new Float32Array(n * dims[i]));
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
        data[i].set(rows, b.start * dims[i]);
        if (writers.length) await writers[i].append(rows);
      }
    }
    for (const w of writers) await w.commit();
  } catch (e) {
    for (const w of writers) await w.abort().catch(() => {});
    throw e;
  } finally {
    bar.done();
  }
  const extractS = (performance.now() - t0) / 1000;
  missing.forEach((c, i) =>
    sources.set(cellName(c), memoryRows(data[i], cellShape(model.spec, c)))
  );
  return { sources, imagesPerS: n / Math.max(extractS, 1e-9), extractS, cached };
}
