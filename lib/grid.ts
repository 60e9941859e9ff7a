// A (t, block, pool) grid of linear probes on frozen features (seed 001 Figure 2), shared by
// `deno task ablate` and `deno task transfer`: one extraction pass per t feeds every block and
// pool, the cells' linear heads train together, and every cell is scored on validation (where
// choices are made) and on the test split (reported). Resumable: each finished t is saved in
// `statePath`, so a killed grid continues with the next t.
import { cellName, gridCells } from "./features.ts";
import { writeFileAtomic } from "./io/atomic.ts";
import { disposeParams } from "./params.ts";
import { trainHeads } from "./probe.ts";
import { probeFeatures, type ProbeSetup, scoreHead } from "./probe_run.ts";
import { progress } from "./progress.ts";
import { fold, foldName, rng } from "./random.ts";

/** One cell's outcome. */
export interface CellResult {
  t: number;
  block: number;
  pool: number;
  val_accuracy: number;
  test_accuracy: number;
  train_loss_final: number;
  param_count: number;
}

/** Cost of one t: extraction rate and seconds, head training seconds. */
export interface TCost {
  images_per_s: number | null;
  extract_s: number;
  train_s: number;
}

export interface GridOutcome {
  cells: CellResult[];
  perT: Record<string, TCost>;
}

export interface GridOptions {
  readonly ts: readonly number[];
  readonly blocks: readonly number[];
  readonly pools: readonly number[];
  /** Where finished t's are kept; a file of another `config` is ignored (and replaced). */
  readonly statePath: string;
  /** What decides the grid's outcome (the run's config): a resume must match it. */
  readonly config: unknown;
  /** Progress and result lines start with this. */
  readonly label: string;
  readonly quiet?: boolean;
}

type FeatureFlags = Parameters<typeof probeFeatures>[1];

/** Run (or resume) the grid on `s`; heads keyed by `seed` (the ablate key, one fold per t). */
export async function runGrid(
  s: ProbeSetup,
  a: FeatureFlags,
  seed: number,
  o: GridOptions,
): Promise<GridOutcome> {
  let done: GridOutcome & { config: unknown } = { config: o.config, cells: [], perT: {} };
  try {
    const saved = JSON.parse(await Deno.readTextFile(o.statePath));
    if (JSON.stringify(saved.config) === JSON.stringify(o.config)) done = saved;
    else console.error(`${o.label}: ${o.statePath} is from another config; starting over`);
  } catch { /* none yet */ }
  if (done.cells.length) {
    console.error(`${o.label}: resuming: t ${Object.keys(done.perT).join(", ")} done`);
  }
  for (const t of o.ts) {
    if (String(t) in done.perT) continue;
    const cells = gridCells([t], [...o.blocks], [...o.pools]);
    const f = await probeFeatures(s, a, seed, cells);
    const bar = progress({ label: `${o.label} t=${t}`, total: s.recipe.epochs, quiet: o.quiet });
    const t0 = performance.now();
    const heads = await trainHeads(
      cells.map((c) => ({
        name: cellName(c),
        head: { kind: "linear" },
        train: f.train.sources.get(cellName(c))!,
      })),
      s.train.labels,
      s.recipe,
      fold(foldName(rng(seed), "ablate"), t),
      { classes: s.classes, indices: s.fit, onEpoch: (e, loss) => bar.tick(e, { loss }) },
    );
    bar.done();
    for (const [i, c] of cells.entries()) {
      const h = heads[i];
      const score = await scoreHead(
        h,
        s,
        f.train.sources.get(h.name)!,
        f.test.sources.get(h.name)!,
      );
      done.cells.push({
        ...c,
        val_accuracy: score.val,
        test_accuracy: score.test,
        train_loss_final: h.curve.at(-1)!.loss,
        param_count: h.paramCount,
      });
      disposeParams(h.params);
    }
    done.perT[String(t)] = {
      images_per_s: f.train.imagesPerS ?? null,
      extract_s: f.train.extractS + f.test.extractS,
      train_s: (performance.now() - t0) / 1000,
    };
    await writeFileAtomic(o.statePath, JSON.stringify(done));
    const best = bestCell(done.cells.filter((c) => c.t === t));
    console.error(
      `${o.label}: t=${t}: best on validation ${cellName(best)} val ${
        pct(best.val_accuracy)
      } test ${pct(best.test_accuracy)}`,
    );
  }
  return { cells: done.cells, perT: done.perT };
}

const pct = (x: number) => `${(100 * x).toFixed(2)} %`;

/** The cell best on validation (the first of ties, in grid order): the grid's choice. */
export function bestCell(cells: readonly CellResult[]): CellResult {
  if (cells.length === 0) throw new Error("bestCell: no cells");
  return cells.reduce((x, y) => (y.val_accuracy > x.val_accuracy ? y : x));
}

/** The cell at (t, block, pool), if the grid has it. */
export function cellAt(
  cells: readonly CellResult[],
  at: { t: number; block: number; pool: number },
): CellResult | undefined {
  return cells.find((c) => c.t === at.t && c.block === at.block && c.pool === at.pool);
}

/** For each value of `key`, the cell best on validation among those with it. */
export function bestPer(
  cells: readonly CellResult[],
  key: (c: CellResult) => number,
): Record<string, CellResult> {
  const out: Record<string, CellResult> = {};
  for (const c of cells) {
    const k = String(key(c));
    if (!(k in out) || c.val_accuracy > out[k].val_accuracy) out[k] = c;
  }
  return out;
}

/** Mean extraction rate over the t's that measured one. */
export function meanRate(perT: Record<string, TCost>): number | null {
  const rates = Object.values(perT).map((p) => p.images_per_s).filter((r): r is number =>
    r !== null
  );
  return rates.length ? rates.reduce((x, y) => x + y) / rates.length : null;
}
