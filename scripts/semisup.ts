// deno task semisup: seed 002 Table 5 at our scale: classification with 1 % and 10 % of the
// labels. For each share and subset seed, a class-balanced labeled subset of the train split
// (the rest of its images unused, as in the paper's semi-supervised protocol) trains
//   finetune          the pre-trained denoiser's encoder to block b + a linear head
//                     (lib/finetune.ts; the backbone at --backbone-lr)
//   frozen-attention  an attention head (seed 002 §3.1) on the frozen features of (t, b)
//   scratch           the finetune network from fresh weights: supervised training alone
// with a validation part held out of the labeled subset for model selection (nothing else sees
// labels), and the test split scored once. Subset seed s keys the subset, the validation part,
// the noise and the initialisations, so every method of one seed sees the same labels. One
// results JSON per (share, method) holds the mean ± std over the seeds and each seed's numbers;
// finished (share, method, seed) runs are kept in checkpoints/semisup/<run>/done.json for a
// resume.
import { basename } from "node:path";
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { count } from "../lib/data/dataset.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { type Cell, cellName } from "../lib/features.ts";
import { trainOnCell } from "../lib/finetune.ts";
import { loadFrozenModel } from "../lib/frozen_model.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { describeHead, parseHeadSpec } from "../lib/models/heads.ts";
import { disposeParams } from "../lib/params.ts";
import { accuracy } from "../lib/probe.ts";
import {
  defaultBlock,
  intList,
  PROBE_FLAGS,
  probeFeatures,
  type ProbeSetup,
  setupProbe,
  trainScoredHead,
} from "../lib/probe_run.ts";
import { foldName, rng } from "../lib/random.ts";
import { finishRun, startRun } from "../lib/results.ts";

const METHODS = ["finetune", "frozen-attention", "scratch"] as const;
type Method = (typeof METHODS)[number];

const FLAGS = {
  ...COMMON_FLAGS,
  weights: PROBE_FLAGS.weights,
  dataset: PROBE_FLAGS.dataset,
  percents: { kind: "string", default: "1,10", help: "labeled shares of the train split, in %" },
  "subset-seeds": { kind: "string", default: "0,1,2", help: "seeds of the labeled subsets" },
  methods: {
    kind: "string",
    default: METHODS.join(","),
    help: `comma-separated: ${METHODS.join(", ")}`,
  },
  "test-percent": PROBE_FLAGS["test-percent"],
  "val-percent": {
    ...PROBE_FLAGS["val-percent"],
    default: 20,
    help: "share of each labeled class held out for validation",
  },
  t: { kind: "int", default: 10, help: "diffusion timestep of the features", min: 0 },
  block: { kind: "int", help: "block b (default: the bottleneck)", min: 1 },
  pool: {
    kind: "int",
    default: 2,
    help: "finetune / scratch: avg-pool to k×k before the linear head",
    min: 1,
  },
  head: {
    kind: "string",
    default: "attention:36:2:4:16",
    help: "frozen-attention: the head (lib/models/heads.ts syntax)",
  },
  "head-pool": {
    kind: "int",
    default: 7,
    help: "frozen-attention: pool the map to k×k first (the attention head tokenises it)",
    min: 1,
  },
  epochs: { kind: "int", default: 8, help: "finetune / scratch: epochs (at most)", min: 1 },
  "head-epochs": {
    kind: "int",
    default: 15,
    help: "frozen-attention: epochs (seed 002: 15)",
    min: 1,
  },
  patience: {
    kind: "int",
    default: 3,
    help: "finetune / scratch: early-stopping patience",
    min: 1,
  },
  lr: {
    kind: "float",
    default: 1e-3,
    help: "Adam's learning rate of heads and of scratch",
    minExclusive: 0,
  },
  "backbone-lr": {
    kind: "float",
    default: 1e-4,
    help: "finetune: the backbone's",
    minExclusive: 0,
  },
  batch: { kind: "int", default: 32, help: "training batch", min: 1 },
  "extract-batch": PROBE_FLAGS["extract-batch"],
  "cache-dir": PROBE_FLAGS["cache-dir"],
  "no-cache": PROBE_FLAGS["no-cache"],
  "memory-gb": PROBE_FLAGS["memory-gb"],
  run: { kind: "string", help: "run name prefix (default: <dataset>-semisup-seeds<seeds>)" },
  "state-dir": {
    kind: "string",
    help: "finished runs kept for a resume (default: checkpoints/semisup/<run>)",
  },
  quiet: PROBE_FLAGS.quiet,
} as const;

/** One (share, method, subset seed) outcome. */
interface SeedResult {
  percent: number;
  method: Method;
  seed: number;
  test_accuracy: number;
  val_accuracy: number;
  labeled_images: number;
  fit_images: number;
  val_images: number;
  train_s: number;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
/** Sample standard deviation (n − 1); 0 for one seed. */
const std = (xs: number[]) =>
  xs.length < 2 ? 0 : Math.sqrt(xs.reduce((a, x) => a + (x - mean(xs)) ** 2, 0) / (xs.length - 1));

await runMain(async () => {
  const a = parseCli(
    "semisup",
    "Semi-supervised classification with 1 % / 10 % of the labels (seed 002 Table 5): the " +
      "fine-tuned diffusion encoder, a frozen attention head, and supervised training from scratch.",
    FLAGS,
  );
  const percents = a.percents.split(",").map((s) => Number(s.trim()));
  if (percents.some((p) => !(p > 0 && p <= 100))) {
    throw new UsageError(`--percents: "${a.percents}" is not a list of shares in (0, 100]`);
  }
  const seeds = intList("subset-seeds", a["subset-seeds"]);
  const methods = a.methods.split(",").map((s) => s.trim()) as Method[];
  const bad = methods.filter((m) => !METHODS.includes(m));
  if (bad.length) {
    throw new UsageError(`--methods: unknown ${bad.join(", ")} (${METHODS.join(", ")})`);
  }
  const head = parseHeadSpec(a.head);
  const engine = await initEngine({ backend: a.backend });
  const dataset = a.dataset ?? await weightsDataset(a.weights);
  const prefix = a.run ?? `${basename(dataset)}-semisup-seeds${seeds.join("_")}`;
  const config = {
    weights: a.weights,
    dataset,
    percents,
    subset_seeds: seeds,
    methods,
    test_percent: a["test-percent"],
    val_percent: a["val-percent"],
    t: a.t,
    block: a.block ?? null,
    pool: a.pool,
    head: describeHead(head),
    head_pool: a["head-pool"],
    epochs: a.epochs,
    head_epochs: a["head-epochs"],
    patience: a.patience,
    lr: a.lr,
    backbone_lr: a["backbone-lr"],
    batch: a.batch,
  };
  const handles = new Map<string, Awaited<ReturnType<typeof startRun>>>();
  const rowName = (p: number, m: Method) => `${prefix}-${m}-${p}pct`;
  for (const p of percents) {
    for (const m of methods) {
      handles.set(
        rowName(p, m),
        await startRun(
          "semisup",
          rowName(p, m),
          { ...config, percent: p, labels: p / 100, method: m },
          seeds[0],
          {
            engine,
            task: "semisup",
          },
        ),
      );
    }
  }
  const statePath = `${a["state-dir"] ?? `checkpoints/semisup/${prefix}`}/done.json`;
  // A finished (share, method, seed) run stays valid when more shares, methods or seeds are
  // asked for later: the resume compares everything else.
  const settings = (c: Record<string, unknown>) => {
    const { percents: _p, subset_seeds: _s, methods: _m, ...rest } = c;
    return JSON.stringify(rest);
  };
  let done: { config: unknown; results: SeedResult[] } = { config, results: [] };
  try {
    const saved = JSON.parse(await Deno.readTextFile(statePath));
    if (settings(saved.config) === settings(config)) done = { config, results: saved.results };
    else console.error(`semisup: ${statePath} is from other settings; starting over`);
  } catch { /* none yet */ }
  if (done.results.length) console.error(`semisup: resuming: ${done.results.length} runs done`);

  for (const p of percents) {
    for (const seed of seeds) {
      const todo = methods.filter((m) =>
        !done.results.some((r) => r.percent === p && r.method === m && r.seed === seed)
      );
      for (const m of todo) {
        const setupFlags = {
          ...a,
          dataset,
          "train-percent": p,
          "random-weights": m === "scratch",
          recipe: "paper",
          epochs: a["head-epochs"],
        };
        const s = await setupProbe(setupFlags, seed, undefined, {
          trainsEncoder: m !== "frozen-attention",
        });
        if (s.val.length === 0 || s.fit.length === 0) {
          throw new UsageError(`--percents ${p}: too few labeled images for a validation part`);
        }
        const block = a.block ?? defaultBlock(s.loaded.model.spec);
        const t0 = performance.now();
        const r = m === "frozen-attention"
          ? await frozenHead(s, { t: a.t, block, pool: a["head-pool"] }, seed, setupFlags)
          : await trained(s, { t: a.t, block, pool: a.pool }, seed, m);
        done.results.push({
          percent: p,
          method: m,
          seed,
          ...r,
          labeled_images: count(s.train),
          fit_images: s.fit.length,
          val_images: s.val.length,
          train_s: (performance.now() - t0) / 1000,
        });
        await writeFileAtomic(statePath, JSON.stringify(done));
        console.error(
          `semisup: ${p} % labels, ${m}, subset seed ${seed}: test ${
            (100 * r.test_accuracy).toFixed(2)
          } % (${count(s.train)} labeled images)`,
        );
      }
    }
  }

  async function trained(s: ProbeSetup, cell: Cell, seed: number, m: "finetune" | "scratch") {
    const r = await trainOnCell(s, cell, m, {
      epochs: a.epochs,
      lr: a.lr,
      backboneLr: a["backbone-lr"],
      batch: a.batch,
      patience: a.patience,
      key: foldName(rng(seed), "semisup"),
      label: `semisup ${m}`,
      quiet: a.quiet,
    });
    return {
      test_accuracy: accuracy(r.pred, s.test.labels),
      val_accuracy: r.fit.bestValidAccuracy,
    };
  }

  async function frozenHead(
    s: ProbeSetup,
    cell: Cell,
    seed: number,
    flags: Parameters<typeof probeFeatures>[1],
  ) {
    const f = await probeFeatures(s, flags, seed, [cell]);
    const name = cellName(cell);
    const train = f.train.sources.get(name)!, test = f.test.sources.get(name)!;
    const { score } = await trainScoredHead(
      s,
      { name, head, train },
      f,
      test,
      foldName(rng(seed), "semisup-head"),
      { label: "semisup frozen-attention", quiet: a.quiet },
    );
    disposeParams(s.loaded.model.params);
    return { test_accuracy: score.test, val_accuracy: score.val };
  }

  for (const p of percents) {
    for (const m of methods) {
      const rows = done.results.filter((r) =>
        r.percent === p && r.method === m && seeds.includes(r.seed)
      );
      const acc = rows.map((r) => r.test_accuracy);
      const path = await finishRun(handles.get(rowName(p, m))!, {
        metrics: {
          test_accuracy: mean(acc),
          test_accuracy_std: std(acc),
          val_accuracy: mean(rows.map((r) => r.val_accuracy)),
          seeds: rows.length,
          labeled_images: rows[0].labeled_images,
          per_seed: rows,
        },
        timings: { train_s: rows.reduce((t, r) => t + r.train_s, 0) },
      });
      console.error(
        `semisup: ${p} % labels, ${m}: ${(100 * mean(acc)).toFixed(2)} ± ${
          (100 * std(acc)).toFixed(2)
        } % over ${rows.length} seeds; wrote ${path}`,
      );
    }
  }
});

/** The dataset a weights file was pre-trained on (Fashion-MNIST when it records none). */
async function weightsDataset(weights: string): Promise<string> {
  const loaded = await loadFrozenModel(weights, "ema");
  disposeParams(loaded.model.params);
  return loaded.dataset ?? "fashion-mnist";
}
