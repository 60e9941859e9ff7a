// deno task downstream-baselines: seed 000 Table 4's baselines under its downstream protocol
// (§4.1 Table 1, §4.3): a ResNet and a ViT trained from scratch on the downstream train split
// (no pre-training), and DINO (for Table 4's DINOv2) pre-trained without labels on the pool, then
// tuned with its whole backbone and a linear head. Model selection on valid accuracy, the test
// split scored once with accuracy, F1, recall and precision (binary: of the positive class;
// 10-class: macro) and the confusion matrix, in `results/downstream/<run>.json`. The split is
// drawn with --split-seed (as deno task tune's), so runs of every --seed share it; --seed keys
// the initialisation, batch orders and views. DINO runs with DINOv2's KoLeo term by default
// (--koleo 0.1): DINO's loss alone collapses at these sizes (lib/dino.ts).
import { createHash } from "node:crypto";
import { basename, join } from "node:path";
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { count } from "../lib/data/dataset.ts";
import {
  BACKBONE,
  type DinoConfig,
  dinoConfig,
  pretrainDinoCached,
  vitClassifier,
} from "../lib/dino.ts";
import {
  downstreamMetrics,
  finishDownstreamRun,
  fitClassifier,
  loadProtocol,
  predictLabels,
  TABLE1_SIZES,
  type Task,
} from "../lib/downstream.ts";
import { initEngine } from "../lib/engine/mod.ts";
import * as resnet from "../lib/models/resnet.ts";
import * as vit from "../lib/models/vit.ts";
import { disposeParams } from "../lib/params.ts";
import type { Classifier } from "../lib/probe.ts";
import { progress } from "../lib/progress.ts";
import { foldName, rng } from "../lib/random.ts";
import { startRun } from "../lib/results.ts";

const METHODS = ["resnet", "vit", "dino"] as const;
type Method = (typeof METHODS)[number];

/** Learning rates when --lr is not given: from scratch, and fine-tuning a pre-trained ViT. */
const DEFAULT_LR: Readonly<Record<Method, number>> = { resnet: 1e-3, vit: 1e-3, dino: 1e-4 };

const FLAGS = {
  ...COMMON_FLAGS,
  dataset: {
    kind: "string",
    default: "fashion-mnist",
    help: "mnist | fashion-mnist | an image folder (root/<site>/<class>/ for sites)",
  },
  method: { kind: "string", default: "resnet", help: "the baseline", choices: METHODS },
  task: {
    kind: "string",
    default: "10-class",
    help: "every class, or --positives against the rest (binary: Table 4's hematoma task)",
    choices: ["10-class", "binary"],
  },
  positives: {
    kind: "string",
    default: "0",
    help: "binary: the positive class ids, e.g. 0 or 0,6",
  },
  site: { kind: "string", help: "image folders with sites: the downstream site (default: first)" },
  "split-seed": {
    kind: "int",
    default: 0,
    help: "key of the downstream draw, apart from --seed so that seeds share one split",
  },
  size: { kind: "int", help: "resize images to this side (default: as stored)", min: 1 },
  train: { kind: "int", default: TABLE1_SIZES.train, help: "downstream train images", min: 1 },
  valid: { kind: "int", default: TABLE1_SIZES.valid, help: "downstream valid images", min: 1 },
  test: { kind: "int", default: TABLE1_SIZES.test, help: "downstream test images", min: 1 },
  epochs: { kind: "int", default: 30, help: "tuning epochs (at most)", min: 1 },
  patience: {
    kind: "int",
    default: 10,
    help: "stop after this many epochs without a better valid accuracy",
    min: 1,
  },
  lr: {
    kind: "float",
    help: "Adam's learning rate (default: 1e-3 for resnet and vit, 1e-4 to tune dino)",
    minExclusive: 0,
  },
  batch: { kind: "int", default: 32, help: "tuning batch size", min: 1 },
  resnet: {
    kind: "string",
    default: "resnet-14",
    help: "ResNet size (lib/models/resnet.ts)",
    choices: Object.keys(resnet.RESNET_CONFIGS),
  },
  vit: {
    kind: "string",
    default: "small",
    help: "ViT preset of lib/models/vit.ts (width, depth, heads), fitted to the images' side",
    choices: Object.keys(vit.VIT_CONFIGS),
  },
  patch: { kind: "int", default: 4, help: "ViT patch side (must divide the image side)", min: 1 },
  "vit-width": { kind: "int", help: "override the ViT preset's width D", min: 1 },
  "vit-depth": { kind: "int", help: "override the ViT preset's depth (blocks)", min: 1 },
  "vit-heads": { kind: "int", help: "override the ViT preset's heads (must divide D)", min: 1 },
  "pretrain-steps": { kind: "int", default: 1000, help: "dino: pre-training steps", min: 1 },
  "pretrain-batch": { kind: "int", default: 64, help: "dino: pre-training batch", min: 2 },
  "pretrain-lr": {
    kind: "float",
    default: 1e-3,
    help: "dino: AdamW's peak learning rate (DINO's rule 5e-4 × batch / 256 is too slow here)",
    minExclusive: 0,
  },
  "pretrain-warmup": {
    kind: "int",
    help: "dino: linear warm-up steps, then a cosine (default: 10 % of the steps)",
    min: 0,
  },
  koleo: {
    kind: "float",
    default: 0.1,
    help: "dino: weight of DINOv2's KoLeo regulariser (0: DINO's loss alone, which collapses here)",
    min: 0,
  },
  "local-crops": { kind: "int", default: 2, help: "dino: local crops per image", min: 0 },
  "dino-backbone": {
    kind: "string",
    default: "teacher",
    help: "dino: the backbone to tune (DINO evaluates its teacher)",
    choices: ["teacher", "student"],
  },
  "dino-cache": {
    kind: "string",
    default: "checkpoints/dino",
    help: "dino: directory of pre-trained backbones, reused by runs of the same pre-training",
  },
  run: { kind: "string", help: "run name (default: <dataset>-<task>-<method>-seed<seed>)" },
  quiet: { kind: "boolean", help: "no progress lines" },
} as const;

function parsePositives(text: string): number[] {
  const parts = text.split(",").map((s) => s.trim());
  if (!parts.every((s) => /^[0-9]+$/.test(s))) {
    throw new UsageError(`--positives: "${text}" is not a comma-separated list of class ids`);
  }
  return parts.map(Number);
}

/** A vit.ts preset fitted to square images of `side` with `channels`, in patches of `patch`. */
function fittedVit(
  name: string,
  side: number,
  channels: number,
  patch: number,
  over: { width?: number; depth?: number; heads?: number },
): vit.ViTConfig {
  if (side % patch !== 0) {
    throw new UsageError(`--patch: ${patch} does not divide the image side ${side}`);
  }
  const base = vit.VIT_CONFIGS[name as vit.ViTConfigName];
  const c = {
    ...base,
    inputSize: side,
    inChannels: channels,
    patchSize: patch,
    hiddenSize: over.width ?? base.hiddenSize,
    depth: over.depth ?? base.depth,
    numHeads: over.heads ?? base.numHeads,
  };
  if (c.hiddenSize % c.numHeads !== 0) {
    throw new UsageError(`--vit-heads: width ${c.hiddenSize} does not divide by ${c.numHeads}`);
  }
  return c;
}

// The DINO config without its ViT (recorded under `model`).
function dinoFields(c: DinoConfig): Record<string, unknown> {
  const { vit: _, ...rest } = c;
  return rest;
}

const safe = (s: string) => s.replace(/[^A-Za-z0-9._=+-]+/g, "_").replace(/^[._]+/, "");

await runMain(async () => {
  const a = parseCli(
    "downstream-baselines",
    "Seed 000 Table 4's ResNet, ViT and DINO baselines on the downstream protocol.",
    FLAGS,
  );
  const method = a.method as Method, task = a.task as Task;
  const positives = parsePositives(a.positives);
  const engine = await initEngine({ backend: a.backend });
  const p = await loadProtocol(a.dataset, {
    seed: a["split-seed"],
    task,
    positives,
    site: a.site,
    train: a.train,
    valid: a.valid,
    test: a.test,
    size: a.size,
  });
  const [side, , channels] = p.train.shape;
  if (p.train.shape[0] !== p.train.shape[1]) {
    throw new UsageError(`--dataset: images are ${side}×${p.train.shape[1]}; pass --size`);
  }
  const classes = p.classes.length;
  const key = foldName(rng(a.seed), "downstream-baselines");
  const lr = a.lr ?? DEFAULT_LR[method];
  const v = method === "resnet" ? undefined : fittedVit(a.vit, side, channels, a.patch, {
    width: a["vit-width"],
    depth: a["vit-depth"],
    heads: a["vit-heads"],
  });
  const r = method === "resnet"
    ? {
      ...resnet.RESNET_CONFIGS[a.resnet as resnet.ResNetConfigName],
      inChannels: channels,
      numClasses: classes,
    }
    : undefined;
  const pretrainBatch = a["pretrain-batch"];
  const pretrain = method === "dino"
    ? {
      method: "dino",
      steps: a["pretrain-steps"],
      batch: pretrainBatch,
      lr: a["pretrain-lr"],
      warmup: a["pretrain-warmup"] ?? Math.round(0.1 * a["pretrain-steps"]),
      schedule: "linear warm-up, cosine to 1e-6",
      freeze_last_layer: Math.round(0.01 * a["pretrain-steps"]),
      weight_decay: 0.04,
      local_crops: a["local-crops"],
      backbone: a["dino-backbone"],
      pool_images: count(p.pool),
    }
    : null;
  const dcfg = v && method === "dino"
    ? dinoConfig(v, { localCrops: a["local-crops"], koleo: a.koleo })
    : undefined;
  const datasetName = safe(basename(a.dataset)) || "dataset";
  const run = a.run ?? `${datasetName}-${task}-${method}-seed${a.seed}`;
  const handle = await startRun(
    "downstream-baselines",
    run,
    {
      method,
      pretraining: method === "dino" ? "dino" : "none",
      task,
      dataset: a.dataset,
      protocol: p.describe,
      model: r ? { kind: "resnet", preset: a.resnet, ...r } : { kind: "vit", preset: a.vit, ...v },
      dino: dcfg ? dinoFields(dcfg) : null,
      pretrain,
      tune: {
        optimizer: "adam",
        lr,
        epochs: a.epochs,
        patience: a.patience,
        batch: a.batch,
        loss: "softmax cross-entropy",
        selection: "best valid accuracy (first on ties)",
        trained: method === "dino" ? "whole backbone + linear head" : "all (from scratch)",
      },
    },
    a.seed,
    { engine, task: "downstream-baselines" },
  );
  // ---- pre-training (dino) and the classifier
  let model: Classifier;
  let pretrainS = 0, pretrainLosses: number[] = [], pretrainCached = false;
  if (r) {
    const params = resnet.init(r, foldName(key, "init"));
    model = {
      params,
      apply: (q, x) => resnet.apply(r, q, x),
      paramCount: resnet.numParams(r),
    };
  } else if (method === "vit") {
    model = vitClassifier(v!, vit.init(v!, foldName(key, "init"), BACKBONE), classes, key);
  } else {
    const bar = progress({ label: "dino pre-training", total: pretrain!.steps, quiet: a.quiet });
    // What decides the pre-training (not the task, split or tuned backbone): its cache key.
    const { backbone: _, ...schedule } = pretrain!;
    const identity = {
      dataset: a.dataset,
      site: p.describe.site ?? null,
      pool: p.describe.pool_source ?? null,
      size: a.size ?? null,
      seed: a.seed,
      dino: dinoFields(dcfg!),
      vit: v,
      pretrain: schedule,
    };
    const id = createHash("sha256").update(JSON.stringify(identity)).digest("hex").slice(0, 16);
    const cache = join(a["dino-cache"], `${datasetName}-dino-${id}.safetensors`);
    const out = await pretrainDinoCached(cache, identity, dcfg!, p.pool, {
      steps: pretrain!.steps,
      batch: pretrainBatch,
      lr: pretrain!.lr,
      warmup: pretrain!.warmup,
      freezeLastLayer: pretrain!.freeze_last_layer,
      weightDecay: pretrain!.weight_decay,
      key: foldName(key, "dino"),
      onStep: (step, loss) => bar.tick(step, { loss }),
      onMiss: (why) => console.error(`downstream-baselines: pre-training DINO (${cache}: ${why})`),
    });
    bar.done();
    if (out.cached) console.error(`downstream-baselines: DINO backbones from ${cache}`);
    pretrainS = out.seconds;
    pretrainCached = out.cached;
    pretrainLosses = out.losses;
    const [keep, drop] = a["dino-backbone"] === "teacher"
      ? [out.teacher, out.student]
      : [out.student, out.teacher];
    disposeParams(drop);
    model = vitClassifier(v!, keep, classes, key);
  }
  // ---- tuning with valid selection, then the test split once
  const bar = progress({ label: `${method} tuning`, total: a.epochs, quiet: a.quiet });
  const fit = await fitClassifier(model, p.train, p.valid, {
    epochs: a.epochs,
    lr,
    batch: a.batch,
    patience: a.patience,
    key: foldName(key, "tune"),
    onEpoch: (e) => bar.tick(e.epoch, { loss: e.train_loss, valid: e.valid_accuracy }),
  });
  bar.done();
  const pred = await predictLabels(model, p.test);
  disposeParams(model.params);
  const m = downstreamMetrics(task, pred, p.test.labels, classes);
  const path = await finishDownstreamRun(handle, {
    metrics: {
      ...m,
      valid_accuracy: fit.bestValidAccuracy,
      best_epoch: fit.bestEpoch,
      epochs_run: fit.curve.length,
      valid_curve: fit.curve,
      param_count: model.paramCount,
      train_s: fit.seconds,
      ...(method === "dino"
        ? {
          pretrain_s: pretrainS,
          pretrain_cached: pretrainCached,
          pretrain_loss: pretrainLosses,
          pretrain_loss_final: pretrainLosses.at(-1)!,
        }
        : {}),
    },
    timings: { train_s: fit.seconds, ...(method === "dino" ? { pretrain_s: pretrainS } : {}) },
  });
  const pct = (x: number) => `${(100 * x).toFixed(2)} %`;
  console.error(
    `downstream-baselines: ${method} ${task}: test accuracy ${pct(m.accuracy)}, F1 ${pct(m.f1)}, ` +
      `recall ${pct(m.recall)}, precision ${pct(m.precision)} (valid ${
        pct(fit.bestValidAccuracy)
      }` +
      ` at epoch ${fit.bestEpoch})`,
  );
  console.error(`downstream-baselines: wrote ${path}`);
});
