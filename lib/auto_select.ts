// `probe --select auto`: successive halving (lib/select.ts) over a (t, block, pool) grid with
// real features. Each round extracts only the images it adds, at the t's still alive and up to
// the deepest block still alive, keeps every surviving cell's rows in memory, and trains the
// round's linear probes together.
import { take } from "./data/dataset.ts";
import { type Cell, cellName, cellShape, extractFeatures } from "./features.ts";
import { accuracy, memoryRows, predict, type Recipe, trainHeads } from "./probe.ts";
import type { ProbeSetup } from "./probe_run.ts";
import { disposeParams } from "./params.ts";
import { fold, foldName, permutation, type Rng } from "./random.ts";
import { type HalvingOptions, type Round, type Selection, successiveHalving } from "./select.ts";

/** Rows of one cell gathered so far, for the fit and validation prefixes. */
interface Gathered {
  fit: Float32Array[];
  val: Float32Array[];
}

const concat = (parts: Float32Array[]) => {
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

/**
 * Choose a cell of `cells` on the validation part of `s` by successive halving.
 * @param key orders of the fit and validation images, and head initialisations
 */
export async function autoSelect(
  s: ProbeSetup,
  cells: readonly Cell[],
  noiseKey: Rng,
  key: Rng,
  o: { eta?: number; epochs?: number; extractBatch?: number; quiet?: boolean; recipe: Recipe },
): Promise<Selection> {
  const spec = s.loaded.model.spec;
  // Fixed random orders, so every round's images are a prefix: a random sample that grows.
  const fitOrder = Int32Array.from(permutation(fold(key, 1), s.fit.length), (i) => s.fit[i]);
  const valOrder = Int32Array.from(permutation(fold(key, 2), s.val.length), (i) => s.val[i]);
  const rows = new Map<string, Gathered>(cells.map((c) => [cellName(c), { fit: [], val: [] }]));
  const have = new Map<number, { fit: number; val: number }>();

  // Extract images [from, to) of `order` for the alive cells at t; ids are split indices, so the
  // noise (and the feature) of an image is the one a full extraction gives it.
  async function extend(
    alive: Cell[],
    order: Int32Array,
    from: number,
    to: number,
    part: "fit" | "val",
  ) {
    if (to <= from) return;
    const ids = order.subarray(from, to);
    for await (
      const b of extractFeatures(s.loaded.model, take(s.train, ids), alive, {
        noiseKey,
        ids,
        batch: o.extractBatch,
      })
    ) {
      for (const c of alive) rows.get(cellName(c))![part].push(b.rows.get(cellName(c))!);
    }
  }

  const evaluate = async (r: Round) => {
    const alive = new Set(r.cells.map(cellName));
    for (const name of rows.keys()) if (!alive.has(name)) rows.delete(name); // free the losers
    for (const t of new Set(r.cells.map((c) => c.t))) {
      const at = r.cells.filter((c) => c.t === t);
      const h = have.get(t) ?? { fit: 0, val: 0 };
      await extend(at, fitOrder, h.fit, r.trainImages, "fit");
      await extend(at, valOrder, h.val, r.valImages, "val");
      have.set(t, { fit: Math.max(h.fit, r.trainImages), val: Math.max(h.val, r.valImages) });
    }
    const src = (c: Cell, part: "fit" | "val", n: number) => {
      const g = rows.get(cellName(c))!;
      g[part] = [concat(g[part])]; // one array per part from now on
      const shape = cellShape(spec, c);
      return memoryRows(g[part][0].subarray(0, n * shape.reduce((x, y) => x * y)), shape);
    };
    const fitLabels = Int32Array.from(
      fitOrder.subarray(0, r.trainImages),
      (i) => s.train.labels[i],
    );
    const valLabels = Int32Array.from(valOrder.subarray(0, r.valImages), (i) => s.train.labels[i]);
    const heads = await trainHeads(
      r.cells.map((c) => ({
        name: cellName(c),
        head: { kind: "linear" },
        train: src(c, "fit", r.trainImages),
      })),
      fitLabels,
      { ...o.recipe, epochs: r.epochs },
      fold(foldName(key, "round"), r.trainImages),
      { classes: s.classes },
    );
    const scores = new Map<string, number>();
    for (const [i, c] of r.cells.entries()) {
      scores.set(
        cellName(c),
        accuracy(await predict(heads[i], src(c, "val", r.valImages)), valLabels),
      );
      disposeParams(heads[i].params);
    }
    if (!o.quiet) {
      const best = [...scores].reduce((x, y) => (y[1] > x[1] ? y : x));
      console.error(
        `select: ${r.cells.length} cells on ${r.trainImages} images, ${r.epochs} epochs: best ${
          best[0]
        } (val ${(100 * best[1]).toFixed(2)} %)`,
      );
    }
    return scores;
  };
  const opts: HalvingOptions = {
    eta: o.eta,
    epochs: o.epochs,
    trainImages: s.fit.length,
    valImages: s.val.length,
  };
  return await successiveHalving(cells, evaluate, opts);
}
