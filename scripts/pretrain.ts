// deno task pretrain: pre-train the ADM U-Net with the diffusion loss on a dataset, resumable,
// then draw a DDIM sample grid and write results/pretrain/<run>.json.
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { count, loadDataset } from "../lib/data/dataset.ts";
import { UNET_CONFIGS, type UNetConfigName } from "../lib/models/unet.ts";
import {
  checkpointPath,
  conditionedModel,
  disposeState,
  pretrain,
  type PretrainConfig,
  saveSampleGrid,
} from "../lib/pretrain.ts";
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
  config: { kind: "string", default: "small", help: "U-Net preset", choices: ["tiny", "small"] },
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
  "class-cond": { kind: "boolean", help: "condition the U-Net on class labels" },
  "class-dropout": {
    kind: "float",
    default: 0,
    help: "with --class-cond: replace labels by a null class with this probability",
    min: 0,
  },
  out: { kind: "string", help: "checkpoint directory (default: checkpoints/pretrain/<run>)" },
  run: { kind: "string", help: "run name (default: <dataset>-<config>-seed<seed>)" },
  "checkpoint-every": { kind: "int", default: 250, help: "steps between checkpoints", min: 1 },
  "log-every": { kind: "int", default: 10, help: "steps per point of the loss curve", min: 1 },
  samples: { kind: "int", default: 64, help: "images in the sample grid (0: none)", min: 0 },
  "sample-steps": { kind: "int", default: 50, help: "DDIM steps for the sample grid", min: 1 },
  "export-weights": {
    kind: "boolean",
    help: "also write the EMA weights to results/pretrain/<run>.weights.safetensors",
  },
  quiet: { kind: "boolean", help: "no progress line" },
} as const;

await runMain(async () => {
  const a = parseCli(
    "pretrain",
    "Pre-train a diffusion U-Net (ADM) with the simple/hybrid loss. Rerunning the same command resumes\n" +
      "from its checkpoint; Ctrl-C saves one. Writes a checkpoint, a sample grid and a results JSON.",
    FLAGS,
  );
  const modelName = a.config as UNetConfigName;
  if (a["class-dropout"] > 0 && !a["class-cond"]) {
    throw new UsageError("--class-dropout needs --class-cond");
  }
  if (a["class-dropout"] >= 1) {
    throw new UsageError(`--class-dropout: ${a["class-dropout"]} must be below 1`);
  }
  const base = UNET_CONFIGS[modelName];
  const dataName = a.dataset.includes("/") ? basename(a.dataset.replace(/\/+$/, "")) : a.dataset;
  const run = a.run ?? `${dataName}-${modelName}${a["class-cond"] ? "-cond" : ""}-seed${a.seed}`;
  if (!/^[A-Za-z0-9._-]+$/.test(run)) {
    throw new UsageError(`--run: "${run}" must use letters, digits, ".", "_" or "-"`);
  }
  const dir = a.out ?? `checkpoints/pretrain/${run}`;

  const engine = await initEngine({ backend: a.backend });
  const ds = await loadDataset(a.dataset, {
    split: "train",
    size: base.imageSize,
    channels: base.inChannels as 1 | 3,
  });
  const model = conditionedModel(base, ds.classes.length, a["class-cond"], a["class-dropout"]);
  const cfg: PretrainConfig = {
    dataset: a.dataset,
    model,
    modelName,
    schedule: a.schedule as "linear" | "cosine",
    diffusionSteps: a["diffusion-steps"],
    steps: a.steps,
    batch: a.batch,
    lr: a.lr,
    emaRate: a.ema,
    ...(a["clip-norm"] > 0 ? { clipNorm: a["clip-norm"] } : {}),
    seed: a.seed,
    ...(a["class-cond"] ? { classDropout: a["class-dropout"] } : {}),
  };
  const handle = await startRun(
    "pretrain",
    run,
    { ...cfg, checkpointDir: dir, samples: a.samples },
    a.seed,
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
  });
  if (r.interrupted) {
    console.error(
      `pretrain: stopped at step ${r.state.step}; checkpoint in ${
        checkpointPath(dir)
      }. Rerun to resume.`,
    );
    disposeState(r.state);
    Deno.exit(130);
  }

  const out = `${resultsDir()}/pretrain`;
  const artifacts: string[] = [];
  const timings: Record<string, number> = { train_s: r.secondsThisRun };
  if (a.samples > 0) {
    const t0 = performance.now();
    const grid = `${out}/${run}-samples.png`;
    await saveSampleGrid(grid, cfg, r.state, a.samples, a.seed, a["sample-steps"]);
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
      epochs: (r.state.step * cfg.batch) / count(ds),
      first_loss: points[0]?.[1] ?? null,
      final_loss: tail.length ? tail.reduce((s, p) => s + p[1], 0) / tail.length : null,
      images_per_s: r.stepsThisRun > 0 ? (r.stepsThisRun * cfg.batch) / r.secondsThisRun : null,
      loss_curve: r.curve,
      engine: engine.engine,
    },
    timings,
    artifacts,
  });
  disposeState(r.state);
  console.error(`pretrain: wrote ${path}`);
});
