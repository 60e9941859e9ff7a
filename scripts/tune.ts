// deno task tune: seed 000 §3.2's downstream tuning. The pre-trained denoiser of --weights is
// carried into a class-conditional one (representation path dropped, label table added; or fresh
// weights with --from-scratch, the "no pre-training" row) and trained with the diffusion loss on
// the downstream train split (lib/downstream.ts), keeping the EMA weights of the best valid
// ε-MSE. Resumable; writes results/tune/<run>.json and the kept weights, which
// `deno task classify` reads.
import { COMMON_FLAGS, parseCli, runMain, UsageError, type Values } from "../lib/cli.ts";
import { fileExists } from "../lib/io/atomic.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { count, type Dataset } from "../lib/data/dataset.ts";
import { DEFAULT_POSITIVES, loadProtocol, TABLE1_SIZES, type Task } from "../lib/downstream.ts";
import { loadFrozenModel } from "../lib/frozen_model.ts";
import { saveCheckpoint } from "../lib/io/checkpoint.ts";
import {
  closeLatentSpace,
  encodeDataset,
  type LatentSpace,
  openLatentSpace,
} from "../lib/latent.ts";
import {
  carryParams,
  conditionedSpec,
  conditionOf,
  initParams,
  inputShape,
  paramShapes,
} from "../lib/models/mod.ts";
import { countParams, disposeParams } from "../lib/params.ts";
import { throughput } from "../lib/pretrain_resume.ts";
import { runKeys } from "../lib/pretrain_data.ts";
import { lineChart, renderFigure } from "../lib/report/figures.ts";
import { finishRun, resultsDir, runStem, startRun } from "../lib/results.ts";
import { checkpointPath, pretrainingOf, tune, type TuneConfig } from "../lib/tune.ts";
import { disposeTensors } from "../lib/optim.ts";
import { shortList } from "../lib/messages.ts";

const FLAGS = {
  ...COMMON_FLAGS,
  weights: {
    kind: "string",
    help: "pre-trained denoiser weights (deno task pretrain --export-weights); required",
  },
  "from-scratch": {
    kind: "boolean",
    help: "the architecture of --weights with fresh weights: the no-pre-training baseline",
  },
  dataset: {
    kind: "string",
    help: "downstream dataset: mnist | fashion-mnist | <image folder> (default: the weights')",
  },
  task: {
    kind: "string",
    default: "10-class",
    help: "every class, or --positives against the rest",
    choices: ["10-class", "binary"],
  },
  positives: {
    kind: "string",
    default: DEFAULT_POSITIVES.join(","),
    help: "with --task binary: comma-separated class ids counted positive",
  },
  site: { kind: "string", help: "image folders root/<site>/<class>/: the downstream site" },
  train: {
    kind: "int",
    default: TABLE1_SIZES.train,
    help: "downstream train images (seed 000 Table 1)",
    min: 1,
  },
  valid: { kind: "int", default: TABLE1_SIZES.valid, help: "validation images", min: 1 },
  test: {
    kind: "int",
    default: TABLE1_SIZES.test,
    help: "test images (held out here; deno task classify scores them)",
    min: 1,
  },
  "split-seed": {
    kind: "int",
    default: 0,
    help: "key of the downstream draw, apart from --seed so that seeds share one split",
  },
  vae: {
    kind: "string",
    help: "latent models: the autoencoder file, if it moved (its sha256 must match the weights')",
  },
  steps: {
    kind: "int",
    default: 2000,
    help: "most optimisation steps (a resumed run continues to this)",
    min: 1,
  },
  batch: { kind: "int", default: 32, help: "batch size", min: 1 },
  lr: {
    kind: "float",
    default: 1e-4,
    help: "Adam learning rate (seed 000: 1e-4)",
    minExclusive: 0,
  },
  ema: { kind: "float", default: 0.999, help: "EMA rate of the weights", min: 0, maxExclusive: 1 },
  "clip-norm": {
    kind: "float",
    default: 1,
    help: "clip gradients to this global norm; 0 turns it off",
    min: 0,
  },
  "class-dropout": {
    kind: "float",
    default: 0.1,
    help: "replace labels by the null label with this probability (DiT's 0.1)",
    min: 0,
    maxExclusive: 1,
  },
  "eval-every": {
    kind: "int",
    default: 100,
    help: "steps between validation losses (one at step 0 and after the last step too)",
    min: 1,
  },
  patience: {
    kind: "int",
    default: 5,
    help: "stop after this many evaluations without a better valid loss; 0: never",
    min: 0,
  },
  "valid-draws": {
    kind: "int",
    default: 4,
    help: "fixed (t, ε) draws per valid image in the validation loss",
    min: 1,
  },
  out: { kind: "string", help: "checkpoint directory (default: checkpoints/tune/<run>)" },
  run: {
    kind: "string",
    help: "run name (default: <weights name>[-scratch]-<task>-seed<seed>)",
  },
  "checkpoint-every": { kind: "int", default: 250, help: "steps between checkpoints", min: 1 },
  "log-every": { kind: "int", default: 10, help: "steps per point of the loss curve", min: 1 },
  quiet: { kind: "boolean", help: "no progress line" },
} as const;

const FILE_SAFE = /^[A-Za-z0-9._-]+$/;

function parsePositives(s: string): number[] | undefined {
  const parts = s.split(",").map((p) => p.trim());
  if (parts.some((p) => !/^\d+$/.test(p))) return undefined;
  return parts.map(Number);
}

function crossFlagFaults(a: Partial<Values<typeof FLAGS>>): string[] {
  const faults: string[] = [];
  if (a.weights === undefined) faults.push("--weights: required (a pre-trained weights file)");
  if (a.positives !== undefined && !parsePositives(a.positives)) {
    faults.push(`--positives: "${a.positives}" is not a comma-separated list of class ids`);
  }
  if (a.run !== undefined && !FILE_SAFE.test(a.run)) {
    faults.push(`--run: "${a.run}" must use letters, digits, ".", "_" or "-"`);
  }
  return faults;
}

/** The autoencoder a latent source was pre-trained in, checked byte for byte. */
async function latentSpaceOf(
  weights: string,
  recorded: { weights: string; sha256: string },
  override?: string,
): Promise<LatentSpace> {
  const path = override ?? recorded.weights;
  const space = await openLatentSpace(path);
  if (space.latent.sha256 !== recorded.sha256) {
    closeLatentSpace(space);
    throw new Error(
      `The autoencoder "${path}" has sha256 ${space.latent.sha256}, but "${weights}" was ` +
        `pre-trained in the latents of sha256 ${recorded.sha256}: pass --vae with that file`,
    );
  }
  return space;
}

await runMain(async () => {
  const a = parseCli(
    "tune",
    "Tune a pre-trained denoiser, made class-conditional, on the downstream train split (seed\n" +
      "000 §3.2) with the diffusion loss, keeping the EMA weights of the best validation ε-MSE.\n" +
      "Rerunning the same command resumes; Ctrl-C or SIGTERM saves a checkpoint. Writes a results\n" +
      "JSON and the tuned weights for deno task classify.",
    FLAGS,
    Deno.args,
    crossFlagFaults,
  );
  const weights = a.weights!;
  const task = a.task as Task;
  const positives = task === "binary" ? parsePositives(a.positives)! : undefined;
  const engine = await initEngine({ backend: a.backend });
  const source = await loadFrozenModel(weights);
  const srcSpec = source.model.spec;
  const condition = conditionOf(srcSpec);
  const dataset = a.dataset ?? source.dataset;
  if (!dataset) {
    disposeParams(source.model.params);
    throw new UsageError(`--dataset: "${weights}" records no dataset; pass one`);
  }
  const space = source.latent
    ? await latentSpaceOf(weights, source.latent, a.vae).catch((e) => {
      disposeParams(source.model.params);
      throw e;
    })
    : undefined;
  // A latent model's images are the autoencoder's; a pixel model's are the model's input.
  const [side, , channels] = space
    ? [space.config.resolution, space.config.resolution, space.config.inChannels]
    : inputShape(srcSpec);
  const protocol = {
    task,
    ...(positives ? { positives } : {}),
    ...(a.site !== undefined ? { site: a.site } : {}),
    train: a.train,
    valid: a.valid,
    test: a.test,
    seed: a["split-seed"],
  };
  const p = await loadProtocol(dataset, { ...protocol, size: side, channels: channels as 1 | 3 });
  const encode = (ds: Dataset) => (space ? encodeDataset(space, ds) : ds);
  if (space) {
    console.error(`tune: encoding ${a.train + a.valid} images with ${space.latent.weights}`);
  }
  const train = encode(p.train), valid = encode(p.valid);
  if (space) closeLatentSpace(space);

  const model = conditionedSpec(srcSpec, p.classes.length, a["class-dropout"]);
  const key = runKeys(a.seed).init;
  const carry = a["from-scratch"]
    ? {
      params: initParams(model, key),
      carried: [] as string[],
      fresh: Object.keys(paramShapes(model)),
      dropped: Object.keys(source.model.params),
    }
    : carryParams(source.model.params, model, key);
  disposeParams(source.model.params);

  const stem = runStem(weights);
  const run = a.run ?? `${stem}${a["from-scratch"] ? "-scratch" : ""}-${task}-seed${a.seed}`;
  if (!FILE_SAFE.test(run)) {
    throw new UsageError(`--run: the default name "${run}" is not file-safe; pass --run`);
  }
  const dir = a.out ?? `checkpoints/tune/${run}`;
  const pretraining = pretrainingOf(condition, a["from-scratch"]);
  const cfg: TuneConfig = {
    dataset,
    model,
    schedule: source.model.schedule.name as "linear" | "cosine",
    diffusionSteps: source.model.schedule.T,
    ...(space ? { latent: space.latent } : {}),
    source: { weights, sha256: source.sha256, condition, fromScratch: a["from-scratch"] },
    pretraining,
    protocol,
    steps: a.steps,
    batch: a.batch,
    lr: a.lr,
    emaRate: a.ema,
    ...(a["clip-norm"] > 0 ? { clipNorm: a["clip-norm"] } : {}),
    evalEvery: a["eval-every"],
    patience: a.patience,
    validDraws: a["valid-draws"],
    seed: a.seed,
  };
  const out = `${resultsDir()}/tune`;
  const resultsPath = `${out}/${run}.json`;
  const carryCounts = {
    carried: carry.carried.length,
    fresh: carry.fresh.length,
    dropped: carry.dropped.length,
    fresh_keys: shortList(carry.fresh, 8),
    dropped_keys: shortList(carry.dropped, 8),
  };
  const handle = await startRun(
    "tune",
    run,
    {
      weights,
      sha256: source.sha256,
      from_scratch: a["from-scratch"],
      pretraining,
      condition,
      task,
      positives: positives ?? null,
      dataset,
      protocol: p.describe,
      model: model.kind,
      preset: model.name,
      spec: model,
      params: countParams(paramShapes(model)),
      latent: cfg.latent ?? null,
      carry: carryCounts,
      steps: cfg.steps,
      batch: cfg.batch,
      lr: cfg.lr,
      emaRate: cfg.emaRate,
      clipNorm: cfg.clipNorm ?? null,
      classDropout: a["class-dropout"],
      evalEvery: cfg.evalEvery,
      patience: cfg.patience,
      validDraws: cfg.validDraws,
      splitSeed: protocol.seed,
      checkpointDir: dir,
    },
    a.seed,
    { engine, task: "tune" },
  );
  console.error(
    `tune: ${run}: ${pretraining} → class-conditional (${p.classes.length} classes): ` +
      `${carryCounts.carried} tensors carried, ${carryCounts.fresh} fresh, ` +
      `${carryCounts.dropped} dropped; ${count(train)} train / ${count(valid)} valid images`,
  );

  const r = await tune(cfg, carry.params, train, valid, {
    dir,
    checkpointEvery: a["checkpoint-every"],
    logEvery: a["log-every"],
    evalBatch: Math.max(a.batch, 64),
    quiet: a.quiet,
    env: handle.env,
  });
  const release = () => {
    disposeTensors(r.state.opt);
    if (r.state.ema) disposeTensors(r.state.ema);
    disposeParams(r.state.params);
    disposeTensors(r.best);
  };
  if (r.interrupted) {
    console.error(
      `tune: stopped at step ${r.state.step}; checkpoint in ${
        checkpointPath(dir)
      }. Rerun to resume.`,
    );
    release();
    Deno.exit(r.interrupted === "SIGINT" ? 130 : 143);
  }
  const rec = r.record;
  if (r.stepsThisRun === 0) {
    if (await fileExists(resultsPath)) {
      console.error(`tune: ${run} is finished (step ${r.state.step}); results in ${resultsPath}`);
      release();
      return;
    }
  }
  const best = rec.best!;
  const tuned = `${out}/${run}.weights.safetensors`;
  await saveCheckpoint(tuned, {
    params: r.best,
    step: best.step,
    meta: { config: cfg, best, validCurve: rec.valid },
  });
  const artifacts = [tuned];
  const points = rec.curve.points;
  if (points.length > 1) {
    const spec = lineChart({
      title: `${run}: diffusion loss`,
      x: "step",
      y: "loss",
      series: { train: points, valid: rec.valid },
      logY: true,
    });
    artifacts.push(...await renderFigure(spec, `${out}/${run}-loss`));
  }
  const trainS = r.segments.reduce((s, g) => s + (g.train_s ?? 0), 0);
  const path = await finishRun(handle, {
    metrics: {
      steps: r.state.step,
      resumed_from: r.resumedFrom,
      segments: r.segments.length,
      epochs: (r.state.step * cfg.batch) / count(train),
      early_stopped: rec.stopped,
      best_step: best.step,
      best_valid_loss: best.loss,
      first_valid_loss: rec.valid[0][1],
      final_valid_loss: rec.valid.at(-1)![1],
      valid_curve: rec.valid,
      loss_curve: rec.curve,
      train_s: trainS,
      images_per_s: throughput(r.segments, cfg.batch),
    },
    timings: trainS > 0 ? { train_s: trainS } : {},
    artifacts,
    segments: r.segments,
  });
  release();
  console.error(
    `tune: best valid ε-MSE ${best.loss.toFixed(5)} at step ${best.step}` +
      `${rec.stopped ? " (early stop)" : ""}; wrote ${path} and ${tuned}`,
  );
});
