// deno task probe: train one head on the frozen features of one (t, block, pool) cell of a
// pre-trained denoiser, choose nothing on the test split, and write results/probe/<run>.json.
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { type Cell, cellName, gridCells } from "../lib/features.ts";
import { describeHead, parseHeadSpec } from "../lib/models/heads.ts";
import { blockTable } from "../lib/models/mod.ts";
import {
  defaultBlock,
  GRID_EPOCHS,
  GRID_FLAGS,
  gridFromFlags,
  noiseKeyOf,
  PROBE_FLAGS,
  probeConfig,
  probeFeatures,
  setupProbe,
  trainingConfig,
  trainScoredHead,
} from "../lib/probe_run.ts";
import { autoSelect } from "../lib/auto_select.ts";
import { gridCost, type Selection } from "../lib/select.ts";
import { parseResult } from "../lib/results.ts";
import { foldName, rng } from "../lib/random.ts";
import { finishRun, startRun } from "../lib/results.ts";

const FLAGS = {
  ...COMMON_FLAGS,
  ...PROBE_FLAGS,
  t: { kind: "int", default: 150, help: "diffusion timestep of the features", min: 0 },
  block: { kind: "int", help: "block b of the features (default: the bottleneck)", min: 1 },
  pool: { kind: "int", default: 2, help: "adaptive average pool to k×k", min: 1 },
  head: {
    kind: "string",
    default: "linear",
    help:
      "linear | mlp:<h1,h2,..> | cnn:<c1,c2>:<pool> | attention:<width>:<layers>:<heads>:<tokens>",
  },
  select: {
    kind: "string",
    default: "fixed",
    help:
      "fixed: the cell of --t --block --pool; auto: choose it on validation by successive halving over the grid",
    choices: ["fixed", "auto"],
  },
  ...GRID_FLAGS,
  flip: {
    kind: "boolean",
    help: "augment: add the train split's horizontal flips (extracted too)",
  },
  "select-epochs": {
    kind: "int",
    default: 4,
    help: "with --select auto: epochs of each halving round",
    min: 1,
  },
  grid: {
    kind: "string",
    help: "with --select auto: an ablate results JSON of the same grid, to compare",
  },
  run: { kind: "string", help: "run name (default: <dataset>-<head>-<cell|auto>-seed<seed>)" },
} as const;

await runMain(async () => {
  const a = parseCli(
    "probe",
    "Train a head on frozen diffusion features of one (t, b, pool).",
    FLAGS,
  );
  let head;
  try {
    head = parseHeadSpec(a.head);
  } catch (e) {
    throw new UsageError(`--head: ${(e as Error).message}`);
  }
  const engine = await initEngine({ backend: a.backend });
  const s = await setupProbe(a, a.seed);
  const spec = s.loaded.model.spec;
  let cell: Cell = { t: a.t, block: a.block ?? defaultBlock(spec), pool: a.pool };
  const stem = `${s.dataset}-${describeHead(head).replace(/[^A-Za-z0-9.-]+/g, "_")}`;
  const run = a.run ?? `${stem}-${a.select === "auto" ? "auto" : cellName(cell)}-seed${a.seed}`;
  let selection: Record<string, unknown> | undefined;
  const t00 = performance.now();
  if (a.select === "auto") {
    const g = gridFromFlags(a, spec);
    const cells = gridCells(g.ts, g.blocks, g.pools);
    const sel = await autoSelect(s, cells, noiseKeyOf(a.seed), foldName(rng(a.seed), "select"), {
      epochs: a["select-epochs"],
      extractBatch: a["extract-batch"],
      quiet: a.quiet,
      recipe: s.recipe,
    });
    cell = sel.best;
    selection = await selectionReport(sel, cells, s.fit.length, s.val.length, a.grid);
    selection.select_s = (performance.now() - t00) / 1000;
  }
  const handle = await startRun(
    "probe",
    run,
    {
      ...probeConfig(s, a, a.seed),
      ...trainingConfig(s, a),
      select: a.select,
      t: cell.t,
      block: cell.block,
      block_module: blockTable(spec).find((b) => b.b === cell.block)?.module ?? null,
      pool: cell.pool,
      head: head.kind,
      head_spec: describeHead(head),
      flip: a.flip,
    },
    a.seed,
    { engine, task: "probe" },
  );

  const f = await probeFeatures(s, a, a.seed, [cell], { flip: a.flip });
  const name = cellName(cell);
  const train = f.train.sources.get(name)!, test = f.test.sources.get(name)!;
  const { metrics, score, trainS } = await trainScoredHead(
    s,
    { name, head, train },
    f,
    test,
    foldName(rng(a.seed), "probe"),
    { label: "probe", quiet: a.quiet },
  );
  const path = await finishRun(handle, {
    metrics: {
      ...metrics,
      feature_images_per_s: f.train.imagesPerS ?? null,
      features_cached: f.train.cached.length > 0 && f.test.cached.length > 0,
      ...(selection ? { selection } : {}),
    },
    timings: { extract_s: f.train.extractS + f.test.extractS, train_s: trainS },
  });
  console.error(
    `probe: ${name} ${describeHead(head)}: val ${(100 * score.val).toFixed(2)} %, test ${
      (100 * score.test).toFixed(2)
    } %`,
  );
  console.error(`probe: wrote ${path}`);
});

/**
 * What the halving cost against training the whole grid, and, given the grid's ablate result,
 * whether it chose the cell the grid ranks best on validation.
 */
async function selectionReport(
  sel: Selection,
  cells: readonly Cell[],
  fit: number,
  val: number,
  gridPath?: string,
): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {
    best: sel.best,
    rounds: sel.rounds.map((r) => ({
      cells: r.cells.length,
      train_images: r.trainImages,
      val_images: r.valImages,
      epochs: r.epochs,
      best: Object.entries(r.scores)[0],
    })),
    cost: { forward_passes: sel.cost.forwardPasses, head_image_epochs: sel.cost.headImageEpochs },
  };
  if (gridPath) {
    const grid = parseResult(await Deno.readTextFile(gridPath), gridPath);
    const m = grid.metrics as {
      best: Cell;
      cells: { t: number; block: number; pool: number; val_accuracy: number }[];
    };
    const gc = grid.config as {
      recipe: { epochs: number };
      train_images: number;
      val_images: number;
    };
    const full = gridCost(cells, gc.train_images, gc.val_images, gc.recipe.epochs);
    out.grid = {
      path: gridPath,
      best: m.best,
      picked_grid_best: cellName(m.best) === cellName(sel.best),
      rank_in_grid: 1 + [...m.cells].sort((x, y) => y.val_accuracy - x.val_accuracy)
        .findIndex((c) => cellName(c) === cellName(sel.best)),
      cost: { forward_passes: full.forwardPasses, head_image_epochs: full.headImageEpochs },
      same_images: gc.train_images === fit && gc.val_images === val,
    };
  } else {
    const full = gridCost(cells, fit, val, GRID_EPOCHS);
    out.grid = {
      cost: { forward_passes: full.forwardPasses, head_image_epochs: full.headImageEpochs },
    };
  }
  return out;
}
