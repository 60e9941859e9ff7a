// deno task transfer: seed 001 §4.3 (Figures 4–5) at our scale. A denoiser pre-trained on one
// dataset (the source, by default the one its weights were trained on) is probed on another (the
// target: MNIST, Fashion-MNIST or an image folder, the FGVC-style case) with the same (t, block,
// pool) grid of linear probes on each (lib/grid.ts). The question is 001 Figure 5's: does the
// best feature move? We report the cell chosen on each dataset's validation split, the target's
// test accuracy at its own choice and at the source's, and the accuracy lost by carrying the
// source's choice over. Resumable per t and per dataset (checkpoints/transfer/<run>/).
import { basename } from "node:path";
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { cellName } from "../lib/features.ts";
import { bestCell, cellAt, type CellResult, meanRate, runGrid } from "../lib/grid.ts";
import {
  GRID_EPOCHS,
  GRID_FLAGS,
  gridFromFlags,
  PROBE_FLAGS,
  probeConfig,
  type ProbeSetup,
  setupProbe,
  trainingConfig,
} from "../lib/probe_run.ts";
import { lineChart, renderFigure } from "../lib/report/figures.ts";
import { finishRun, resultsDir, startRun } from "../lib/results.ts";
import { disposeParams } from "../lib/params.ts";

const { dataset: _, ...probeFlags } = PROBE_FLAGS;

const FLAGS = {
  ...COMMON_FLAGS,
  ...probeFlags,
  ...GRID_FLAGS,
  source: {
    kind: "string",
    help: "the dataset the choice is made on (default: the one the weights were pre-trained on)",
  },
  target: {
    kind: "string",
    help: "the dataset transferred to: mnist | fashion-mnist | <image folder>; required",
  },
  "target-train-percent": {
    kind: "float",
    help: "class-balanced share of the target's train split (default: --train-percent)",
    minExclusive: 0,
    max: 100,
  },
  "target-test-percent": {
    kind: "float",
    help: "class-balanced share of the target's test split (default: --test-percent)",
    minExclusive: 0,
    max: 100,
  },
  epochs: {
    kind: "int",
    default: GRID_EPOCHS,
    help: "epochs per head (seed 001's appendix trains its grids 15)",
    min: 1,
  },
  run: { kind: "string", help: "run name (default: <source>-to-<target>-seed<seed>)" },
  "state-dir": {
    kind: "string",
    help: "where finished t's are kept for a resume (default: checkpoints/transfer/<run>)",
  },
} as const;

const safe = (s: string) => s.replace(/[^A-Za-z0-9._=+-]+/g, "_").replace(/^[._]+/, "");
const pct = (x: number) => `${(100 * x).toFixed(2)} %`;
const where = (c: CellResult) => ({ t: c.t, block: c.block, pool: c.pool });

await runMain(async () => {
  const a = parseCli(
    "transfer",
    "Probe a pre-trained denoiser on a second dataset with the grid of the first; report how far " +
      "the best (t, block, pool) moves and what carrying the source's choice over costs.",
    FLAGS,
  );
  if (!a.target) throw new UsageError("--target is required (mnist | fashion-mnist | a folder)");
  const engine = await initEngine({ backend: a.backend });
  const sourceFlags = { ...a, dataset: a.source };
  const source = await setupProbe(sourceFlags, a.seed);
  const targetFlags: typeof sourceFlags = {
    ...a,
    dataset: a.target,
    "train-percent": a["target-train-percent"] ?? a["train-percent"],
    "test-percent": a["target-test-percent"] ?? a["test-percent"],
  };
  const target = await setupProbe(targetFlags, a.seed, source.loaded);
  if (source.dataset === target.dataset) {
    throw new UsageError(`--target ${a.target} is the source dataset itself`);
  }
  const { ts, blocks, pools } = gridFromFlags(a, source.loaded.model.spec);
  const name = (d: string) => safe(basename(d)) || "dataset";
  const run = a.run ?? `${name(source.dataset)}-to-${name(target.dataset)}-seed${a.seed}`;
  const side = (s: ProbeSetup, flags: typeof sourceFlags) => ({
    ...probeConfig(s, flags, a.seed),
    ...trainingConfig(s, flags),
    classes: s.classes,
  });
  const config = {
    source: side(source, sourceFlags),
    target: side(target, targetFlags),
    t: ts,
    block: blocks,
    pool: pools,
    head: "linear",
  };
  const handle = await startRun("transfer", run, config, a.seed, { engine, task: "transfer" });
  const state = a["state-dir"] ?? `checkpoints/transfer/${run}`;
  const grid = (s: ProbeSetup, flags: typeof sourceFlags, which: "source" | "target") =>
    runGrid(s, flags, a.seed, {
      ts,
      blocks,
      pools,
      statePath: `${state}/${which}.json`,
      config: config[which],
      label: `transfer ${which}`,
      quiet: a.quiet,
    });
  const src = await grid(source, sourceFlags, "source");
  const tgt = await grid(target, targetFlags, "target");
  disposeParams(source.loaded.model.params); // the target's model is the same

  // Choices on validation; test accuracies reported for the cells those choices name.
  const sBest = bestCell(src.cells), tBest = bestCell(tgt.cells);
  const carried = cellAt(tgt.cells, sBest)!;
  const lost = tBest.test_accuracy - carried.test_accuracy;
  const figures = await renderFigure(
    lineChart({
      title: "Linear-probe test accuracy (%) by block, best over t and pool: source vs target",
      x: "block",
      y: "accuracy",
      series: { [source.dataset]: perBlock(src.cells), [target.dataset]: perBlock(tgt.cells) },
    }),
    `${resultsDir()}/transfer/${run}-blocks`,
  );
  const path = await finishRun(handle, {
    metrics: {
      test_accuracy: tBest.test_accuracy,
      val_accuracy: tBest.val_accuracy,
      source_best: {
        ...where(sBest),
        val_accuracy: sBest.val_accuracy,
        test_accuracy: sBest.test_accuracy,
      },
      target_best: {
        ...where(tBest),
        val_accuracy: tBest.val_accuracy,
        test_accuracy: tBest.test_accuracy,
      },
      target_at_source_choice: { ...where(carried), test_accuracy: carried.test_accuracy },
      accuracy_lost: lost,
      block_moved: tBest.block - sBest.block,
      t_moved: tBest.t - sBest.t,
      source_cells: src.cells,
      target_cells: tgt.cells,
      feature_images_per_s: meanRate({ ...src.perT, ...tgt.perT }),
      per_t: { source: src.perT, target: tgt.perT },
    },
    artifacts: figures,
  });
  console.error(
    `transfer: ${source.dataset} chooses ${cellName(sBest)}, ${target.dataset} ${
      cellName(tBest)
    }: target test ${pct(tBest.test_accuracy)} at its own choice, ${
      pct(carried.test_accuracy)
    } at the source's (lost ${pct(lost)})`,
  );
  console.error(`transfer: wrote ${path}`);
});

/** Test accuracy (%) per block, the best over the grid's t and pool (Figure 5's curve). */
function perBlock(cells: readonly CellResult[]): [number, number][] {
  const best = new Map<number, number>();
  for (const c of cells) best.set(c.block, Math.max(best.get(c.block) ?? 0, c.test_accuracy));
  return [...best].sort((p, q) => p[0] - q[0]).map(([b, acc]) => [b, 100 * acc]);
}
