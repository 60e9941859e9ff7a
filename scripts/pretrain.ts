// deno task pretrain: pre-train a diffusion model (the ADM U-Net or the DiT) with the diffusion
// loss on a dataset, resumable, then draw a DDIM sample grid and write results/pretrain/<run>.json.
import { COMMON_FLAGS, parseCli, runMain, UsageError, type Values } from "../lib/cli.ts";
import { fileExists } from "../lib/io/atomic.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { type Precision, PRECISIONS } from "../lib/engine/blas/precision.ts";
import { count, loadDataset } from "../lib/data/dataset.ts";
import {
  type Condition,
  CONDITIONS,
  type ConditionSpec,
  inputShape,
  type ModelKind,
  presetNames,
  presetSpec,
} from "../lib/models/mod.ts";
import { VIT_CONFIGS } from "../lib/models/vit.ts";
import {
  closeLatentSpace,
  decodeLatents,
  encodeDataset,
  type LatentSpace,
  openLatentSpace,
} from "../lib/latent.ts";
import * as tf from "@tensorflow/tfjs";
import { checkpointPath, disposeState, pretrain, type PretrainConfig } from "../lib/pretrain.ts";
import { throughput } from "../lib/pretrain_resume.ts";
import { saveSampleGrid } from "../lib/sampling.ts";
import { finishRun, resultsDir, startRun } from "../lib/results.ts";
import { saveCheckpoint } from "../lib/io/checkpoint.ts";
import { lineChart, renderFigure } from "../lib/report/figures.ts";
import { basename } from "node:path";

/** Where `deno task train-vae` writes the default autoencoder of Fashion-MNIST. */
const DEFAULT_VAE = "results/vae/fashion-mnist-vae-small-seed0.weights.safetensors";

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
    help: `preset of the model (default: small; dit with --latent vae: small-latent): unet ${
      presetNames("unet").join("|")
    }; dit ${presetNames("dit").join("|")}`,
  },
  condition: {
    kind: "string",
    default: "none",
    help: "what the model sees besides t: none | class (labels) | repr (a ViT's representation " +
      "of the clean input, trained jointly; dit only)",
    choices: CONDITIONS,
  },
  encoder: {
    kind: "string",
    default: "small",
    help: `with --condition repr: the ViT preset (${Object.keys(VIT_CONFIGS).join("|")})`,
  },
  latent: {
    kind: "string",
    default: "pixel",
    help: "pixel: the model runs on images; vae: on the latents of the --vae autoencoder",
    choices: ["pixel", "vae"],
  },
  vae: {
    kind: "string",
    default: DEFAULT_VAE,
    help: "with --latent vae: autoencoder weights from deno task train-vae",
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
  precision: {
    kind: "string",
    default: "fp32",
    help: "matrix products and convolutions: fp32, or bf16 (oneDNN, f32 accumulation; weights, " +
      "optimizer state, loss and norms stay fp32); a CPU without bf16 runs fp32 and says so",
    choices: PRECISIONS,
  },
  schedule: {
    kind: "string",
    default: "linear",
    help: "beta schedule",
    choices: ["linear", "cosine"],
  },
  "diffusion-steps": { kind: "int", default: 1000, help: "diffusion steps T", min: 2 },
  "class-dropout": {
    kind: "float",
    default: 0,
    help: "with --condition class: replace labels by a null class with this probability",
    min: 0,
    maxExclusive: 1,
  },
  out: { kind: "string", help: "checkpoint directory (default: checkpoints/pretrain/<run>)" },
  run: { kind: "string", help: "run name (default: <dataset>-<config>[-bf16]-seed<seed>)" },
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
  if ((a["class-dropout"] ?? 0) > 0 && a.condition !== "class") {
    faults.push("--class-dropout needs --condition class");
  }
  if (a.condition === "repr" && kind === "unet") {
    faults.push("--condition repr: representation conditioning is the DiT's (--model dit)");
  }
  if (a.encoder !== undefined && !Object.hasOwn(VIT_CONFIGS, a.encoder)) {
    faults.push(
      `--encoder: "${a.encoder}" is not a ViT preset (${Object.keys(VIT_CONFIGS).join(", ")})`,
    );
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
  const condition = a.condition as Condition;
  const latent = a.latent === "vae";
  const preset = a.config ?? (kind === "dit" && latent ? "small-latent" : "small");
  const base = presetSpec(kind, preset);
  const loadPixels = async (side: number, channels: number) => {
    const ds = await loadDataset(a.dataset, {
      split: "train",
      size: side,
      channels: channels as 1 | 3,
    });
    if (condition === "class" && ds.classes.length < 2) {
      throw new UsageError(
        `--condition class: dataset "${ds.name}" has ${ds.classes.length} class; ` +
          "conditioning needs 2 or more",
      );
    }
    return ds;
  };
  // A pixel model's data is checked before the engine starts; a latent model's images are the
  // autoencoder's, whose weights need the engine first.
  const [side, , channels] = inputShape(base);
  const early = latent ? undefined : await loadPixels(side, channels);
  const engine = await initEngine({ backend: a.backend, precision: a.precision as Precision });
  const bf16 = engine.precision === "bf16";
  const space: LatentSpace | undefined = latent ? await openLatentSpace(a.vae) : undefined;
  const pixels = early ??
    await loadPixels(space!.config.resolution, space!.config.inChannels);
  if (space) console.error(`pretrain: encoding ${count(pixels)} images with ${a.vae}`);
  const ds = space ? encodeDataset(space, pixels) : pixels;
  const cond: ConditionSpec | undefined = condition === "class"
    ? { classes: ds.classes.length, dropRate: a["class-dropout"] }
    : condition === "repr"
    ? { encoder: a.encoder }
    : undefined;
  const model = presetSpec(kind, preset, cond);
  const dataName = a.dataset.includes("/") ? basename(a.dataset.replace(/\/+$/, "")) : a.dataset;
  const tag = kind === "unet" ? preset : `dit-${preset.replace(/\//g, "")}`;
  const suffix = { none: "", class: "-cond", repr: "-repr" }[condition];
  const run = a.run ?? `${dataName}-${tag}${suffix}${bf16 ? "-bf16" : ""}-seed${a.seed}`;
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
    ...(space ? { latent: space.latent } : {}),
    ...(bf16 ? { precision: "bf16" as const } : {}),
  };
  const out = `${resultsDir()}/pretrain`;
  const resultsPath = `${out}/${run}.json`;

  // The results JSON names the model by kind (config.model) beside its full spec; the
  // checkpoint keeps the spec under `model`, as loaders read it.
  const { model: spec, latent: vaeSpec, ...rest } = cfg;
  const handle = await startRun(
    "pretrain",
    run,
    {
      ...rest,
      model: kind,
      preset,
      condition,
      latent: a.latent,
      ...(vaeSpec ? { vae: vaeSpec } : {}),
      spec,
      checkpointDir: dir,
      samples: a.samples,
      sampleSteps: a["sample-steps"],
    },
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
    if (space) closeLatentSpace(space);
    Deno.exit(r.interrupted === "SIGINT" ? 130 : 143);
  }
  // A finished run rerun: nothing trained, so its results stay as they were.
  if (r.stepsThisRun === 0) {
    if (await fileExists(resultsPath)) {
      console.error(
        `pretrain: ${run} is finished (step ${r.state.step}); results in ${resultsPath}`,
      );
      disposeState(r.state);
      if (space) closeLatentSpace(space);
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
    // A representation-conditioned model draws image i from the representation of training
    // image i.
    const x0 = condition === "repr"
      ? tf.tensor4d(
        ds.images.subarray(0, a.samples * ds.shape.reduce((p, q) => p * q, 1)),
        [a.samples, ...ds.shape],
      )
      : undefined;
    try {
      await saveSampleGrid(grid, cfg.model, cfg, r.state.ema ?? r.state.params, a.samples, a.seed, {
        steps: a["sample-steps"],
        x0,
        decode: space && ((z) => decodeLatents(space, z)),
      });
    } finally {
      x0?.dispose();
    }
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
      // The lowest point of the curve (a mean over --log-every steps), as seed 000 reports.
      min_loss: points.length ? Math.min(...points.map((p) => p[1])) : null,
      images_per_s: throughput(r.segments, cfg.batch),
      loss_curve: r.curve,
    },
    timings,
    artifacts,
    segments: r.segments,
  });
  disposeState(r.state);
  if (space) closeLatentSpace(space);
  console.error(`pretrain: wrote ${path}`);
});
