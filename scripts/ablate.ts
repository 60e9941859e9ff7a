// deno task ablate: seed 001's Figure 2 grid on our U-Net: linear probes on every (t, block,
// pool) cell, chosen on validation, with the test accuracy of every cell reported alongside. One
// extraction pass per t feeds every block and pool; the cell's linear heads then train together.
// Resumable: each finished t is saved under checkpoints/ablate/<run>/, so a killed grid continues
// with the next t (and the feature cache makes the t in flight cheaper).
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { cellName, gridCells } from "../lib/features.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { disposeParams } from "../lib/params.ts";
import { trainHeads } from "../lib/probe.ts";
import {
  GRID_EPOCHS,
  GRID_FLAGS,
  gridFromFlags,
  PROBE_FLAGS,
  probeConfig,
  probeFeatures,
  scoreHead,
  setupProbe,
  trainingConfig,
} from "../lib/probe_run.ts";
import { progress } from "../lib/progress.ts";
import { fold, foldName, rng } from "../lib/random.ts";
import { finishRun, parseResult, resultsDir, startRun } from "../lib/results.ts";
import { lineChart, renderFigure } from "../lib/report/figures.ts";

const FLAGS = {
  ...COMMON_FLAGS,
  ...PROBE_FLAGS,
  ...GRID_FLAGS,
  epochs: {
    kind: "int",
    default: GRID_EPOCHS,
    help: "epochs per head (seed 001's appendix trains its grid 15, not 28)",
    min: 1,
  },
  run: { kind: "string", help: "run name (default: <dataset>-grid-seed<seed>)" },
  replot: {
    kind: "boolean",
    help: "only redraw the figures of the finished grid --run from its results JSON",
  },
  "state-dir": {
    kind: "string",
    help: "where finished t's are kept for a resume (default: checkpoints/ablate/<run>)",
  },
} as const;

/** One cell's outcome. */
interface CellResult {
  t: number;
  block: number;
  pool: number;
  val_accuracy: number;
  test_accuracy: number;
  train_loss_final: number;
  param_count: number;
}

await runMain(async () => {
  const a = parseCli(
    "ablate",
    "Linear probes on a (t, block, pool) grid of frozen features.",
    FLAGS,
  );
  if (a.replot) {
    if (!a.run) throw new UsageError("--replot needs --run (the finished grid to redraw)");
    const path = `${resultsDir()}/ablate/${a.run}.json`;
    const done = parseResult(await Deno.readTextFile(path), path);
    const figures = await gridFigures(
      (done.metrics as { cells: CellResult[] }).cells,
      `${resultsDir()}/ablate/${a.run}`,
    );
    console.error(`ablate: redrew ${figures.join(", ")}`);
    return;
  }
  const engine = await initEngine({ backend: a.backend });
  const s = await setupProbe(a, a.seed);
  const spec = s.loaded.model.spec;
  const { ts, blocks, pools } = gridFromFlags(a, spec);
  const run = a.run ?? `${s.dataset}-grid-seed${a.seed}`;
  const config = {
    ...probeConfig(s, a, a.seed),
    ...trainingConfig(s, a),
    t: ts,
    block: blocks,
    pool: pools,
    head: "linear",
  };
  const handle = await startRun("ablate", run, config, a.seed, { engine, task: "ablate" });

  // Finished t's of an earlier, interrupted run with the same config.
  const statePath = `${a["state-dir"] ?? `checkpoints/ablate/${run}`}/done.json`;
  let done: {
    config: unknown;
    cells: CellResult[];
    perT: Record<string, { images_per_s: number | null; extract_s: number; train_s: number }>;
  } = {
    config,
    cells: [],
    perT: {},
  };
  try {
    const saved = JSON.parse(await Deno.readTextFile(statePath));
    if (JSON.stringify(saved.config) === JSON.stringify(config)) done = saved;
    else console.error(`ablate: ${statePath} is from another config; starting over`);
  } catch { /* none yet */ }
  if (done.cells.length) {
    console.error(`ablate: resuming: t ${Object.keys(done.perT).join(", ")} done`);
  }

  for (const t of ts) {
    if (String(t) in done.perT) continue;
    const cells = gridCells([t], blocks, pools);
    const f = await probeFeatures(s, a, a.seed, cells);
    const bar = progress({ label: `ablate t=${t}`, total: s.recipe.epochs, quiet: a.quiet });
    const t0 = performance.now();
    const heads = await trainHeads(
      cells.map((c) => ({
        name: cellName(c),
        head: { kind: "linear" },
        train: f.train.sources.get(cellName(c))!,
      })),
      s.train.labels,
      s.recipe,
      fold(foldName(rng(a.seed), "ablate"), t),
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
    await writeFileAtomic(statePath, JSON.stringify(done));
    const best = done.cells.filter((c) => c.t === t).reduce((
      x,
      y,
    ) => (y.val_accuracy > x.val_accuracy ? y : x));
    console.error(
      `ablate: t=${t}: best on validation ${cellName(best)} val ${
        (100 * best.val_accuracy).toFixed(2)
      } % test ${(100 * best.test_accuracy).toFixed(2)} %`,
    );
  }

  // The grid's choice is made on validation; its test accuracy is reported once.
  const cells = done.cells;
  const best = cells.reduce((x, y) => (y.val_accuracy > x.val_accuracy ? y : x));
  const figures = await gridFigures(cells, `${resultsDir()}/ablate/${run}`);
  const rates = Object.values(done.perT).map((p) => p.images_per_s).filter((r): r is number =>
    r !== null
  );
  const path = await finishRun(handle, {
    metrics: {
      test_accuracy: best.test_accuracy,
      val_accuracy: best.val_accuracy,
      best: { t: best.t, block: best.block, pool: best.pool },
      best_by_test: (({ t, block, pool, test_accuracy }) => ({ t, block, pool, test_accuracy }))(
        cells.reduce((x, y) => (y.test_accuracy > x.test_accuracy ? y : x)),
      ),
      // Figure 2's questions as tables: the best cell (on validation) for each t, block and pool.
      best_per_t: bestPer(cells, (c) => c.t),
      best_per_block: bestPer(cells, (c) => c.block),
      best_per_pool: bestPer(cells, (c) => c.pool),
      feature_images_per_s: rates.length ? rates.reduce((x, y) => x + y) / rates.length : null,
      cells,
      per_t: done.perT,
    },
    artifacts: figures,
  });
  console.error(
    `ablate: best ${cellName(best)}: val ${(100 * best.val_accuracy).toFixed(2)} %, test ${
      (100 * best.test_accuracy).toFixed(2)
    } %`,
  );
  console.error(`ablate: wrote ${path}`);
});

/** For each value of `key`, the cell best on validation among those with it. */
function bestPer(cells: CellResult[], key: (c: CellResult) => number): Record<string, CellResult> {
  const out: Record<string, CellResult> = {};
  for (const c of cells) {
    const k = String(key(c));
    if (!(k in out) || c.val_accuracy > out[k].val_accuracy) out[k] = c;
  }
  return out;
}

/** Figure 2's three views: accuracy against t per block, against block per t, against pool. */
async function gridFigures(cells: CellResult[], base: string): Promise<string[]> {
  const bestOver = (
    key: (c: CellResult) => string,
    x: (c: CellResult) => number,
    filter: (c: CellResult) => boolean,
  ) => {
    const series: Record<string, [number, number][]> = {};
    const seen = new Map<string, number>();
    for (const c of cells.filter(filter)) {
      const k = `${key(c)}|${x(c)}`;
      if (!seen.has(k) || c.test_accuracy > seen.get(k)!) seen.set(k, c.test_accuracy);
    }
    // Series in numeric order of their key (b1, b2, …, b13), points in order of x.
    const entries = [...seen].map(([k, acc]) => [...k.split("|"), acc] as [string, string, number]);
    entries.sort((p, q) => Number(p[0].slice(1)) - Number(q[0].slice(1)));
    for (const [name, xv, acc] of entries) (series[name] ??= []).push([Number(xv), 100 * acc]);
    for (const v of Object.values(series)) v.sort((p, q) => p[0] - q[0]);
    return series;
  };
  // The per-block and per-t views at the pool of the best cell (on validation).
  const pool = cells.reduce((x, y) => (y.val_accuracy > x.val_accuracy ? y : x)).pool;
  const specs = {
    t: lineChart({
      title: `Linear probe test accuracy (%) against t, per block (pool ${pool})`,
      x: "t",
      y: "accuracy",
      series: bestOver((c) => `b${c.block}`, (c) => c.t, (c) => c.pool === pool),
    }),
    block: lineChart({
      title: `Linear probe test accuracy (%) against block, per t (pool ${pool})`,
      x: "block",
      y: "accuracy",
      series: bestOver((c) => `t${c.t}`, (c) => c.block, (c) => c.pool === pool),
    }),
    pool: lineChart({
      title: "Best test accuracy (%) over blocks against pool size, per t",
      x: "pool",
      y: "accuracy",
      series: bestOver((c) => `t${c.t}`, (c) => c.pool, () => true),
    }),
  };
  const out: string[] = [];
  for (const [k, spec] of Object.entries(specs)) {
    out.push(...await renderFigure(spec, `${base}-${k}`));
  }
  return out;
}
