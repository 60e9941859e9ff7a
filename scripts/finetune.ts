// deno task finetune: seed 001 Table 2 at our scale. The denoiser's encoder up to block b, with
// a linear head on its pooled activation at timestep t (lib/finetune.ts), trained three ways on
// the same images, epochs and selection so that the rows compare:
//   finetune  every reached parameter, the backbone at --backbone-lr below the head's --lr
//   frozen    the head alone on the frozen backbone (the linear probe, through the same path)
//   scratch   the same architecture from fresh weights, every parameter at --lr
// The epoch with the best validation accuracy is kept; the test split is scored once.
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { downstreamMetrics } from "../lib/downstream.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { cellName } from "../lib/features.ts";
import { FINETUNE_MODES, type FinetuneMode, trainOnCell } from "../lib/finetune.ts";
import { defaultBlock, PROBE_FLAGS, probeConfig, setupProbe } from "../lib/probe_run.ts";
import { foldName, rng } from "../lib/random.ts";
import { finishRun, startRun } from "../lib/results.ts";

const FLAGS = {
  ...COMMON_FLAGS,
  weights: PROBE_FLAGS.weights,
  dataset: PROBE_FLAGS.dataset,
  "train-percent": { ...PROBE_FLAGS["train-percent"], default: 10 },
  "test-percent": PROBE_FLAGS["test-percent"],
  "val-percent": PROBE_FLAGS["val-percent"],
  mode: {
    kind: "string",
    default: "finetune",
    help: "what trains (see above)",
    choices: FINETUNE_MODES,
  },
  t: { kind: "int", default: 10, help: "diffusion timestep of the features", min: 0 },
  block: {
    kind: "int",
    help: "block b whose activation the head reads (default: the bottleneck)",
    min: 1,
  },
  pool: { kind: "int", default: 2, help: "adaptive average pool to k×k before the head", min: 1 },
  epochs: { kind: "int", default: 8, help: "training epochs (at most)", min: 1 },
  patience: {
    kind: "int",
    default: 3,
    help: "stop after this many epochs without a better valid accuracy",
    min: 1,
  },
  lr: {
    kind: "float",
    default: 1e-3,
    help: "Adam's learning rate of the head (and of scratch)",
    minExclusive: 0,
  },
  "backbone-lr": {
    kind: "float",
    default: 1e-4,
    help: "finetune: Adam's learning rate of the pre-trained backbone",
    minExclusive: 0,
  },
  batch: { kind: "int", default: 32, help: "training batch", min: 1 },
  run: { kind: "string", help: "run name (default: <dataset>-<mode>-<cell>-seed<seed>)" },
  quiet: PROBE_FLAGS.quiet,
} as const;

await runMain(async () => {
  const a = parseCli(
    "finetune",
    "Fine-tune the denoiser's encoder with a linear head (seed 001 Table 2), or train the head " +
      "alone (frozen), or the same network from scratch.",
    FLAGS,
  );
  const mode = a.mode as FinetuneMode;
  const engine = await initEngine({ backend: a.backend });
  const s = await setupProbe(
    {
      ...a,
      "random-weights": mode === "scratch",
      recipe: "paper",
      epochs: a.epochs,
    },
    a.seed,
    undefined,
    { trainsEncoder: true }, // every mode runs the encoder inside its train step
  );
  const spec = s.loaded.model.spec;
  const cell = { t: a.t, block: a.block ?? defaultBlock(spec), pool: a.pool };
  if (s.val.length === 0) throw new UsageError("--val-percent leaves no validation images");
  const run = a.run ?? `${s.dataset}-${mode}-${cellName(cell)}-seed${a.seed}`;
  const handle = await startRun(
    "finetune",
    run,
    {
      ...probeConfig(s, a, a.seed),
      method: mode,
      pretraining: mode === "scratch" ? "none" : "diffusion",
      t: cell.t,
      block: cell.block,
      pool: cell.pool,
      head: "linear",
      optimizer: "adam",
      lr: a.lr,
      backbone_lr: mode === "finetune" ? a["backbone-lr"] : mode === "scratch" ? a.lr : null,
      epochs: a.epochs,
      patience: a.patience,
      batch: a.batch,
      train_images: s.fit.length,
      val_images: s.val.length,
      trained:
        { frozen: "head", finetune: "backbone to block b + head", scratch: "all (fresh)" }[mode],
    },
    a.seed,
    { engine, task: "finetune" },
  );
  const { fit, pred, trainedParams, paramCount } = await trainOnCell(s, cell, mode, {
    epochs: a.epochs,
    lr: a.lr,
    backboneLr: a["backbone-lr"],
    batch: a.batch,
    patience: a.patience,
    key: foldName(rng(a.seed), "finetune"),
    label: `finetune ${mode}`,
    quiet: a.quiet,
  });
  const m = downstreamMetrics("10-class", pred, s.test.labels, s.classes);
  const path = await finishRun(handle, {
    metrics: {
      ...m,
      test_accuracy: m.accuracy,
      val_accuracy: fit.bestValidAccuracy,
      best_epoch: fit.bestEpoch,
      epochs_run: fit.curve.length,
      valid_curve: fit.curve,
      param_count: paramCount,
      trained_params: trainedParams,
      train_s: fit.seconds,
    },
    timings: { train_s: fit.seconds },
  });
  console.error(
    `finetune: ${mode} ${cellName(cell)}: test ${(100 * m.accuracy).toFixed(2)} % (valid ${
      (100 * fit.bestValidAccuracy).toFixed(2)
    } % at epoch ${fit.bestEpoch})`,
  );
  console.error(`finetune: wrote ${path}`);
});
