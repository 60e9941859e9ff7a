// deno task heads: seed 001's head comparison (Tables 7–9) and seed 002's attention-layer
// ablation (Table 2) on one (t, block) of a frozen denoiser: linear probes at several pools, and
// MLP, CNN and attention heads at matched parameter budgets, all trained together on one batch
// order and written as one results/heads/<run>.json with a row per head.
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { type Cell, cellName, cellShape } from "../lib/features.ts";
import { describeHead, headForBudget, type HeadSpec } from "../lib/models/heads.ts";
import { blockTable } from "../lib/models/mod.ts";
import { disposeParams } from "../lib/params.ts";
import { trainHeads } from "../lib/probe.ts";
import {
  defaultBlock,
  intList,
  PROBE_FLAGS,
  probeConfig,
  probeFeatures,
  scoreHead,
  setupProbe,
  trainingConfig,
} from "../lib/probe_run.ts";
import { progress } from "../lib/progress.ts";
import { foldName, rng } from "../lib/random.ts";
import { finishRun, startRun } from "../lib/results.ts";

const FLAGS = {
  ...COMMON_FLAGS,
  ...PROBE_FLAGS,
  t: { kind: "int", default: 150, help: "diffusion timestep of the features", min: 0 },
  block: { kind: "int", help: "block b of the features (default: the bottleneck)", min: 1 },
  "linear-pools": { kind: "string", default: "1,2,4", help: "pools of the linear probes" },
  budgets: {
    kind: "string",
    default: "50000,200000",
    help: "parameter budgets of the MLP, CNN and attention heads, comma-separated",
  },
  "attention-layers": {
    kind: "string",
    default: "1,2,4",
    help: "layers of the attention ablation at the width of the first budget (seed 002 Table 2)",
  },
  // Seed 002 trains its attention ablation 15 epochs; the probe recipe's 28 is the default here.
  run: { kind: "string", help: "run name (default: <dataset>-heads-<t,b>-seed<seed>)" },
} as const;

/** One trained head's outcome. */
interface HeadRow {
  head: string;
  head_spec: string;
  pool: number;
  role: string;
  param_count: number;
  val_accuracy: number;
  test_accuracy: number;
  train_loss_final: number;
}

await runMain(async () => {
  const a = parseCli("heads", "Linear, MLP, CNN and attention heads on one (t, block).", FLAGS);
  const pools = intList("linear-pools", a["linear-pools"]);
  const budgets = intList("budgets", a.budgets);
  const layers = intList("attention-layers", a["attention-layers"]);
  const engine = await initEngine({ backend: a.backend });
  const s = await setupProbe(a, a.seed);
  const spec = s.loaded.model.spec;
  const block = a.block ?? defaultBlock(spec);
  const info = blockTable(spec).find((b) => b.b === block);
  if (!info) {
    throw new UsageError(`--block: ${block} does not exist (1..${blockTable(spec).length})`);
  }
  // Linear probes read pooled maps; MLPs the 2×2 pool (seed 001's choice for its MLPs' inputs is
  // the pooled feature); CNN and attention heads the whole map, which they pool themselves.
  const full: Cell = { t: a.t, block, pool: info.resolution };
  const mlpCell: Cell = { t: a.t, block, pool: Math.min(2, info.resolution) };
  const jobs: { cell: Cell; head: HeadSpec; role: string }[] = [
    ...pools.map((pool) => ({
      cell: { t: a.t, block, pool },
      head: { kind: "linear" } as HeadSpec,
      role: "linear",
    })),
  ];
  const classes = s.classes;
  for (const budget of budgets) {
    jobs.push({
      cell: mlpCell,
      head: headForBudget("mlp", cellShape(spec, mlpCell), classes, budget),
      role: `budget ${budget}`,
    });
    jobs.push({
      cell: full,
      head: headForBudget("cnn", cellShape(spec, full), classes, budget),
      role: `budget ${budget}`,
    });
    jobs.push({
      cell: full,
      head: headForBudget("attention", cellShape(spec, full), classes, budget, {
        layers: 2,
        heads: 4,
      }),
      role: `budget ${budget}`,
    });
  }
  const base = headForBudget("attention", cellShape(spec, full), classes, budgets[0], {
    layers: 2,
    heads: 4,
  });
  if (base.kind !== "attention") throw new Error("unreachable");
  for (const l of layers.filter((l) => l !== 2)) {
    jobs.push({ cell: full, head: { ...base, layers: l }, role: "attention layers" });
  }
  const name = (j: (typeof jobs)[number]) => `${describeHead(j.head)}@p${j.cell.pool}`;
  const run = a.run ?? `${s.dataset}-heads-t${a.t}-b${block}-seed${a.seed}`;
  const handle = await startRun(
    "heads",
    run,
    {
      ...probeConfig(s, a, a.seed),
      ...trainingConfig(s, a),
      t: a.t,
      block,
      pool: [...new Set(jobs.map((j) => j.cell.pool))],
      head: [...new Set(jobs.map((j) => j.head.kind))],
      heads: jobs.map((j) => ({ head: describeHead(j.head), pool: j.cell.pool, role: j.role })),
    },
    a.seed,
    { engine, task: "heads" },
  );

  const cells = [...new Map(jobs.map((j) => [cellName(j.cell), j.cell])).values()];
  const f = await probeFeatures(s, a, a.seed, cells);
  const bar = progress({ label: "heads", total: s.recipe.epochs, quiet: a.quiet });
  const t0 = performance.now();
  const trained = await trainHeads(
    jobs.map((j) => ({
      name: name(j),
      head: j.head,
      train: f.train.sources.get(cellName(j.cell))!,
    })),
    s.train.labels,
    s.recipe,
    foldName(rng(a.seed), "heads"),
    { classes, indices: s.fit, onEpoch: (e, loss) => bar.tick(e, { loss }) },
  );
  bar.done();
  const rows: HeadRow[] = [];
  for (const [i, h] of trained.entries()) {
    const j = jobs[i];
    const src = cellName(j.cell);
    const score = await scoreHead(h, s, f.train.sources.get(src)!, f.test.sources.get(src)!);
    rows.push({
      head: j.head.kind,
      head_spec: describeHead(j.head),
      pool: j.cell.pool,
      role: j.role,
      param_count: h.paramCount,
      val_accuracy: score.val,
      test_accuracy: score.test,
      train_loss_final: h.curve.at(-1)!.loss,
    });
    disposeParams(h.params);
    console.error(
      `heads: ${h.name}: ${rows.at(-1)!.param_count} params, test ${
        (100 * rows.at(-1)!.test_accuracy).toFixed(2)
      } %`,
    );
  }
  // Choices on validation: the best head overall and of each kind; test reported alongside.
  const bestOf = (rs: HeadRow[]) => rs.reduce((x, y) => (y.val_accuracy > x.val_accuracy ? y : x));
  const best = bestOf(rows);
  const kinds = [...new Set(rows.map((r) => r.head))];
  const bestByKind = Object.fromEntries(
    kinds.map((k) => [k, bestOf(rows.filter((r) => r.head === k))]),
  );
  const path = await finishRun(handle, {
    metrics: {
      test_accuracy: best.test_accuracy,
      best_head: best.head_spec,
      best_by_kind: bestByKind,
      heads: rows,
      feature_images_per_s: f.train.imagesPerS ?? null,
    },
    timings: {
      extract_s: f.train.extractS + f.test.extractS,
      train_s: (performance.now() - t0) / 1000,
    },
  });
  console.error(`heads: wrote ${path}`);
});
