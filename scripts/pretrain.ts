// deno task pretrain: pre-train a diffusion model (the ADM U-Net or the DiT) with the diffusion
// loss on a dataset, resumable, then draw a DDIM sample grid and write results/pretrain/<run>.json.
import { COMMON_FLAGS, parseCli, runMain, UsageError, type Values } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { count, loadDataset } from "../lib/data/dataset.ts";
import { inputShape, type ModelKind, presetNames, presetSpec } from "../lib/models/mod.ts";
import { checkpointPath, disposeState, pretrain, type PretrainConfig } from "../lib/pretrain.ts";
import { throughput } from "../lib/pretrain_resume.ts";
import { saveSampleGrid } from "../lib/sampling.ts";
import { finishRun, resultsDir, startRun } from "../lib/results.ts";
import { saveCheckpoint } from "../lib/io/checkpoint.ts";
import { lineChart, renderFigure } from "../lib/report/figures.ts";
import { basename } from "node:path";

const FLAGS = {
  ...COMMON_FLAGS,
  dataset: {
    kind: "string",
    default: "mnist",
    help: "mnist (embedded) | fashion-mnist | <image folder>",
  },
  model: { kind: "string", default: "unet", help: "denoiser", choices: ["unet", "dit"] },
  config: {
    kind: "string",
    default: "small",
    help: `preset of the model: unet ${presetNames("unet").join("|")}; dit ${
      presetNames("dit").join("|")
    }`,
  },
  steps: {
    kind: "int",
    default: 3000,
    help: "total optimisation steps (a resumed run continues to this)",
    min: 1,
  },
  // A CPU budget favours many small steps at a higher rate over ADM's 1e-4 at batch 256+.
  batch: { kind: "int", default: 32, help: "batch size", min: 1 },
  lr: {
    kind: "float",
    default: 3e-4,
    help: "Adam learning rate (ADM uses 1e-4 at far larger batches)",
    min: 0,
  },
  ema: {
    kind: "float",
    default: 0.999,
    help: "EMA rate of the weights (ADM uses 0.9999 for long runs)",
    min: 0,
    maxExclusive: 1,
  },
  "clip-norm": {
    kind: "float",
    default: 1,
    help: "clip gradients to this global norm; 0 turns it off",
    min: 0,
  },
  schedule: {
    kind: "string",
    default: "linear",
    help: "beta schedule",
    choices: ["linear", "cosine"],
  },
  "diffusion-steps": { kind: "int", default: 1000, help: "diffusion steps T", min: 2 },
  "class-cond": { kind: "boolean", help: "condition the model on class labels" },
  "class-dropout": {
    kind: "float",
    default: 0,
    help: "with --class-cond: replace labels by a null class with this probability",
    min: 0,
    maxExclusive: 1,
  },
  out: { kind: "string", help: "checkpoint directory (default: checkpoints/pretrain/<run>)" },
  run: { kind: "string", help: "run name (default: <dataset>-<config>-seed<seed>)" },
  "checkpoint-every": { kind: "int", default: 250, help: "steps between checkpoints", min: 1 },
  "log-every": { kind: "int", default: 10, help: "steps per point of the loss curve", min: 1 },
  samples: { kind: "int", default: 64, help: "images in the sample grid (0: none)", min: 0 },
  "sample-steps": {
    kind: "int",
    default: 50,
    help: "DDIM steps for the sample grid (at most --diffusion-steps)",
    min: 1,
  },
  "export-weights": {
    kind: "boolean",
    help: "also write the EMA weights to results/pretrain/<run>.weights.safetensors",
  },
  quiet: { kind: "boolean", help: "no progress line" },
} as const;

/** Faults the flag specs cannot express, judged on the flags that parsed (see parseCli). */
function crossFlagFaults(a: Partial<Values<typeof FLAGS>>): string[] {
  const faults: string[] = [];
  const kind = a.model as ModelKind | undefined;
  if (kind !== undefined && a.config !== undefined && !presetNames(kind).includes(a.config)) {
    faults.push(
      `--config: "${a.config}" is not a ${kind} preset (${presetNames(kind).join(", ")})`,
    );
  }
  if ((a["class-dropout"] ?? 0) > 0 && !a["class-cond"]) {
    faults.push("--class-dropout needs --class-cond");
  }
  const s = a["sample-steps"], T = a["diffusion-steps"];
  if (s !== undefined && T !== undefined && s > T) {
    faults.push(`--sample-steps: ${s} is more than --diffusion-steps ${T}`);
  }
  if (a.run !== undefined && !/^[A-Za-z0-9._-]+$/.test(a.run)) {
    faults.push(`--run: "${a.run}" must use letters, digits, ".", "_" or "-"`);
  }
  return faults;
}

const parse = () =>
  parseCli(
    "pretrain",
    "Pre-train a diffusion model (ADM U-Net or DiT) with the simple/hybrid loss. Rerunning the same\n" +
      "command resumes from its checkpoint; Ctrl-C or SIGTERM saves one. Writes a checkpoint, a\n" +
      "sample grid and a results JSON.",
    FLAGS,
    Deno.args,
    crossFlagFaults,
  );

await runMain(async () => {
  const a = parse();
  const kind = a.model as ModelKind;
  const base = presetSpec(kind, a.config);
  const [side, , channels] = inputShape(base);
  const ds = await loadDataset(a.dataset, {
    split: "train",
    size: side,
    channels: channels as 1 | 3,
  });
  if (a["class-cond"] && ds.classes.length < 2) {
    throw new UsageError(
      `--class-cond: dataset "${ds.name}" has ${ds.classes.length} class; conditioning needs 2 or more`,
    );
  }
  const model = a["class-cond"]
    ? presetSpec(kind, a.config, { classes: ds.classes.length, dropRate: a["class-dropout"] })
    : base;
  const dataName = a.dataset.includes("/") ? basename(a.dataset.replace(/\/+$/, "")) : a.dataset;
  const tag = kind === "unet" ? a.config : `dit-${a.config.replace(/\//g, "")}`;
  const run = a.run ?? `${dataName}-${tag}${a["class-cond"] ? "-cond" : ""}-seed${a.seed}`;
  if (!/^[A-Za-z0-9._-]+$/.test(run)) {
    throw new UsageError(`--run: the default name "${run}" is not file-safe; pass --run`);
  }
  const dir = a.out ?? `checkpoints/pretrain/${run}`;
  const cfg: PretrainConfig = {
    dataset: a.dataset,
    model,
    schedule: a.schedule as "linear" | "cosine",
    diffusionSteps: a["diffusion-steps"],
    steps: a.steps,
    batch: a.batch,
    lr: a.lr,
    emaRate: a.ema,
    ...(a["clip-norm"] > 0 ? { clipNorm: a["clip-norm"] } : {}),
    seed: a.seed,
  };
  const out = `${resultsDir()}/pretrain`;
  const resultsPath = `${out}/${run}.json`;

  const engine = await initEngine({ backend: a.backend });
  const handle = await startRun(
    "pretrain",
    run,
    { ...cfg, checkpointDir: dir, samples: a.samples, sampleSteps: a["sample-steps"] },
    a.seed,
    { engine, task: "pretrain" },
  );
  console.error(
    `pretrain: ${run}: ${count(ds)} images of ${
      ds.shape.join("×")
    }, ${cfg.steps} steps of ${cfg.batch}`,
  );

  const r = await pretrain(cfg, ds, {
    dir,
    checkpointEvery: a["checkpoint-every"],
    logEvery: a["log-every"],
    quiet: a.quiet,
    env: handle.env,
  });
  if (r.interrupted) {
    console.error(
      `pretrain: stopped at step ${r.state.step}; checkpoint in ${
        checkpointPath(dir)
      }. Rerun to resume.`,
    );
    disposeState(r.state);
    Deno.exit(r.interrupted === "SIGINT" ? 130 : 143);
  }
  // A finished run rerun: nothing trained, so its results stay as they were.
  if (r.stepsThisRun === 0) {
    let written = true;
    try {
      await Deno.stat(resultsPath);
    } catch {
      written = false;
    }
    if (written) {
      console.error(
        `pretrain: ${run} is finished (step ${r.state.step}); results in ${resultsPath}`,
      );
      disposeState(r.state);
      return;
    }
  }

  const artifacts: string[] = [];
  const timings: Record<string, number> = {};
  const trainS = r.segments.reduce((s, g) => s + (g.train_s ?? 0), 0);
  if (trainS > 0) timings.train_s = trainS;
  if (a.samples > 0) {
    const t0 = performance.now();
    const grid = `${out}/${run}-samples.png`;
    await saveSampleGrid(
      grid,
      cfg.model,
      cfg,
      r.state.ema ?? r.state.params,
      a.samples,
      a.seed,
      a["sample-steps"],
    );
    timings.sample_s = (performance.now() - t0) / 1000;
    artifacts.push(grid);
  }
  if (a["export-weights"]) {
    const weights = `${out}/${run}.weights.safetensors`;
    await saveCheckpoint(weights, {
      params: r.state.ema ?? r.state.params,
      step: r.state.step,
      meta: { config: cfg },
    });
    artifacts.push(weights);
  }
  const points = r.curve.points;
  if (points.length > 1) {
    const spec = lineChart({
      title: `${run}: diffusion loss`,
      x: "step",
      y: "loss",
      series: { train: points },
      logY: true,
    });
    artifacts.push(...await renderFigure(spec, `${out}/${run}-loss`));
  }
  const tail = points.slice(-Math.max(1, Math.floor(points.length / 10)));
  const path = await finishRun(handle, {
    metrics: {
      steps: r.state.step,
      resumed_from: r.resumedFrom,
      segments: r.segments.length,
      epochs: (r.state.step * cfg.batch) / count(ds),
      first_loss: points[0]?.[1] ?? null,
      final_loss: tail.length ? tail.reduce((s, p) => s + p[1], 0) / tail.length : null,
      images_per_s: throughput(r.segments, cfg.batch),
      loss_curve: r.curve,
    },
    timings,
    artifacts,
    segments: r.segments,
  });
  disposeState(r.state);
  console.error(`pretrain: wrote ${path}`);
});
