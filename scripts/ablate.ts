// deno task ablate: seed 001's Figure 2 grid on our U-Net: linear probes on every (t, block,
// pool) cell, chosen on validation, with the test accuracy of every cell reported alongside
// (lib/grid.ts). Resumable: each finished t is saved under checkpoints/ablate/<run>/, so a killed
// grid continues with the next t (and the feature cache makes the t in flight cheaper).
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { cellName } from "../lib/features.ts";
import { bestCell, bestPer, type CellResult, meanRate, runGrid } from "../lib/grid.ts";
import {
  GRID_EPOCHS,
  GRID_FLAGS,
  gridFromFlags,
  PROBE_FLAGS,
  probeConfig,
  setupProbe,
  trainingConfig,
} from "../lib/probe_run.ts";
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

  const done = await runGrid(s, a, a.seed, {
    ts,
    blocks,
    pools,
    statePath: `${a["state-dir"] ?? `checkpoints/ablate/${run}`}/done.json`,
    config,
    label: "ablate",
    quiet: a.quiet,
  });

  // The grid's choice is made on validation; its test accuracy is reported once.
  const cells = done.cells;
  const best = bestCell(cells);
  const figures = await gridFigures(cells, `${resultsDir()}/ablate/${run}`);
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
      feature_images_per_s: meanRate(done.perT),
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
  const pool = bestCell(cells).pool;
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
