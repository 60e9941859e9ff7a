// deno task classify: seed 000 §3.2's Testing stage. The tuned, class-conditional denoiser of
// --weights (deno task tune) classifies the downstream test split that tuning never saw, with
// Diffusion Classifier (argmin_c E‖ε − ε̂‖²) or Diffusion Classifier Zero (argmin_c E‖z0 − ẑ0‖²,
// eqs. 3–4) under an adaptive timestep plan (lib/diffusion_classifier.ts). The valid split,
// classified with every class at every timestep of the same plan, fits the temperature τ of
// p(c | x) = softmax(−error/τ). Resumable image by image; writes results/classify/<run>.json.
import { COMMON_FLAGS, parseCli, runMain, UsageError, type Values } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { count, type Dataset, take } from "../lib/data/dataset.ts";
import {
  classifierModel,
  classifyDataset,
  classProbabilities,
  evaluationsPerImage,
  fitTemperature,
  makePlan,
  type Plan,
  type Stage,
  throughput,
  timestepGrid,
} from "../lib/diffusion_classifier.ts";
import { downstreamMetrics, loadProtocol } from "../lib/downstream.ts";
import { loadFrozenModel } from "../lib/frozen_model.ts";
import { writeFileAtomic } from "../lib/io/atomic.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { closeLatentSpace, encodeDataset, openLatentSpace } from "../lib/latent.ts";
import { expectedCalibrationError, negativeLogLikelihood } from "../lib/metrics/classification.ts";
import { inputShape } from "../lib/models/mod.ts";
import { disposeParams } from "../lib/params.ts";
import { progress } from "../lib/progress.ts";
import { foldName, rng } from "../lib/random.ts";
import { finishRun, runStem, startRun } from "../lib/results.ts";
import type { TuneConfig } from "../lib/tune.ts";

// CPU-sized default: a 30-timestep grid (t = 16, 49, …, 982 of T = 1000), every class at 10 of
// them, then the best 3 at the other 20: 10·10 + 3·20 = 160 network evaluations per 10-class
// image (2·30 = 60 for binary), against 10·30 = 300 unpruned.
const DEFAULT_STAGES = "10:3,30:1";

const FLAGS = {
  ...COMMON_FLAGS,
  weights: { kind: "string", help: "tuned weights (deno task tune); required" },
  method: {
    kind: "string",
    default: "dc-zero",
    help: "dc: compare ε with ε̂; dc-zero: compare z0 with ẑ0 (seed 000 eqs. 3–4)",
    choices: ["dc", "dc-zero"],
  },
  stages: {
    kind: "string",
    default: DEFAULT_STAGES,
    help: "adaptive stages samples:keep,… (each evaluates `samples` timesteps of the grid, " +
      "then keeps the best `keep` classes)",
  },
  samples: {
    kind: "int",
    help: "timesteps in the grid the stages pick from (default: the largest stage's samples)",
    min: 1,
  },
  loss: {
    kind: "string",
    default: "l2",
    help: "per-element error: squared or absolute",
    choices: ["l2", "l1"],
  },
  "clip-x0": { kind: "boolean", help: "with dc-zero: clamp ẑ0 to [−1, 1] (eq. 3 does not)" },
  images: { kind: "int", help: "classify the first N test images (default: all)", min: 1 },
  "valid-images": {
    kind: "int",
    help: "valid images for the temperature (default: all; 0: no fit, τ = 1)",
    min: 0,
  },
  batch: {
    kind: "int",
    default: 8,
    help: "images per batch (the unit saved for a resume)",
    min: 1,
  },
  rows: { kind: "int", default: 256, help: "most image × class × t rows per network call", min: 1 },
  vae: {
    kind: "string",
    help: "latent models: the autoencoder file, if it moved (its sha256 must match the weights')",
  },
  run: { kind: "string", help: "run name (default: <weights name>-<method>-seed<seed>)" },
  "state-dir": {
    kind: "string",
    help: "where classified images are kept for a resume (default: checkpoints/classify/<run>)",
  },
  quiet: { kind: "boolean", help: "no progress line" },
} as const;

const FILE_SAFE = /^[A-Za-z0-9._-]+$/;

function parseStages(s: string): Stage[] | undefined {
  const stages = s.split(",").map((part) => {
    const m = /^\s*(\d+):(\d+)\s*$/.exec(part);
    return m ? { samples: Number(m[1]), keep: Number(m[2]) } : undefined;
  });
  return stages.every((x) => x !== undefined) ? stages as Stage[] : undefined;
}

function crossFlagFaults(a: Partial<Values<typeof FLAGS>>): string[] {
  const faults: string[] = [];
  if (a.weights === undefined) faults.push("--weights: required (a tuned weights file)");
  if (a.stages !== undefined && !parseStages(a.stages)) {
    faults.push(`--stages: "${a.stages}" is not samples:keep,… (e.g. ${DEFAULT_STAGES})`);
  }
  if (a["clip-x0"] && a.method === "dc") faults.push("--clip-x0 is for --method dc-zero");
  if (a.run !== undefined && !FILE_SAFE.test(a.run)) {
    faults.push(`--run: "${a.run}" must use letters, digits, ".", "_" or "-"`);
  }
  return faults;
}

// ---------------------------------------------------------------------------------------------
// Per-image state: one JSONL file per split, rewritten atomically after each batch
// ---------------------------------------------------------------------------------------------

/** One classified image: prediction, mean error per class (null: pruned), cost. */
interface ImageResult {
  readonly i: number;
  readonly pred: number;
  readonly errors: (number | null)[];
  readonly evals: number;
  /** Its share of its batch's seconds. */
  readonly s: number;
}

/** The results of `path` when its header line is `header`, else none (and why). */
async function readState(path: string, header: string): Promise<ImageResult[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw new Error(`Cannot read "${path}": ${(e as Error).message}`);
  }
  const [head, ...lines] = text.split("\n").filter((l) => l !== "");
  if (head !== header) {
    console.error(`classify: ${path} is from another configuration; starting that split over`);
    return [];
  }
  const done = lines.map((l) => JSON.parse(l) as ImageResult);
  // Whole batches are written at once, so the images are 0..n−1 in order.
  if (!done.every((r, k) => r.i === k)) {
    throw new Error(`"${path}" is damaged: its images are not 0..${done.length - 1}; delete it`);
  }
  return done;
}

/**
 * Classify `ds` (a prefix of a split), resuming from `path`; every batch is appended to it with
 * one atomic rewrite, so a killed run keeps every finished batch.
 */
async function classifySplit(
  label: string,
  model: ReturnType<typeof classifierModel>,
  ds: Dataset,
  plan: Plan,
  o: Parameters<typeof classifyDataset>[3],
  path: string,
  header: string,
  quiet: boolean,
): Promise<ImageResult[]> {
  const done = await readState(path, header);
  const n = count(ds), K = model.classes;
  if (done.length >= n) return done.slice(0, n);
  if (done.length > 0 && !quiet) {
    console.error(`classify: ${label}: resuming at image ${done.length}`);
  }
  const bar = progress({ label: `classify ${label}`, total: n, start: done.length, quiet });
  try {
    for await (const b of classifyDataset(model, ds, plan, { ...o, start: done.length })) {
      for (let j = 0; j < b.count; j++) {
        const errors = Array.from(
          b.errors.subarray(j * K, (j + 1) * K),
          (e) => Number.isNaN(e) ? null : e,
        );
        done.push({
          i: b.start + j,
          pred: b.predicted[j],
          errors,
          evals: b.evaluations[j],
          s: b.seconds / b.count,
        });
      }
      await writeFileAtomic(
        path,
        [header, ...done.map((r) => JSON.stringify(r))].join("\n") + "\n",
      );
      bar.tick(done.length);
    }
  } finally {
    bar.done();
  }
  return done;
}

const errorMatrix = (rs: readonly ImageResult[]) =>
  Float64Array.from(rs.flatMap((r) => r.errors.map((e) => e ?? NaN)));
const cost = (rs: readonly ImageResult[]) =>
  throughput(
    rs.map((r) => ({
      predicted: Int32Array.of(r.pred),
      evaluations: Int32Array.of(r.evals),
      seconds: r.s,
    })),
  );

/** Tuning metadata of a weights file; the file must be deno task tune's. */
async function tuneConfigOf(path: string): Promise<TuneConfig> {
  const { metadata } = await readSafetensors(path);
  const cfg = JSON.parse(metadata.meta ?? "{}").config as Partial<TuneConfig> | undefined;
  if (!cfg?.protocol || !cfg.pretraining || !cfg.source) {
    throw new Error(
      `"${path}" records no downstream protocol: classify reads the weights deno task tune ` +
        "writes (results/tune/<run>.weights.safetensors)",
    );
  }
  return cfg as TuneConfig;
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

await runMain(async () => {
  const a = parseCli(
    "classify",
    "Classify the downstream test split with a tuned class-conditional denoiser: Diffusion\n" +
      "Classifier or Diffusion Classifier Zero (seed 000 §3.2) with adaptive timestep pruning, the\n" +
      "temperature of its probabilities fitted on the valid split. Resumable image by image.",
    FLAGS,
    Deno.args,
    crossFlagFaults,
  );
  const weights = a.weights!;
  const method = a.method as "dc" | "dc-zero";
  const engine = await initEngine({ backend: a.backend });
  const loaded = await loadFrozenModel(weights);
  const release = () => disposeParams(loaded.model.params);
  let model: ReturnType<typeof classifierModel>, cfg: TuneConfig;
  try {
    model = classifierModel(loaded.model);
    cfg = await tuneConfigOf(weights);
  } catch (e) {
    release();
    throw e;
  }
  const K = model.classes, T = model.schedule.T;
  const stages = parseStages(a.stages)!;
  const samples = a.samples ?? Math.max(...stages.map((s) => s.samples));
  let plan: Plan;
  try {
    plan = makePlan(T, { timesteps: timestepGrid(T, samples), stages });
  } catch (e) {
    release();
    throw new UsageError(`--stages/--samples: ${(e as Error).message}`);
  }
  // The valid split sees every class at every timestep of the plan: full errors for τ.
  const fullPlan = makePlan(T, { timesteps: plan.stages.flatMap((s) => s.timesteps) });

  // The same downstream splits as tuning, in the same space.
  const latent = cfg.latent;
  const space = latent ? await openLatentSpace(a.vae ?? latent.weights) : undefined;
  if (space && space.latent.sha256 !== latent!.sha256) {
    closeLatentSpace(space);
    release();
    throw new Error(
      `The autoencoder "${space.latent.weights}" has sha256 ${space.latent.sha256}, but "${weights}" ` +
        `was tuned in the latents of sha256 ${latent!.sha256}: pass --vae with that file`,
    );
  }
  const [side, , channels] = space
    ? [space.config.resolution, space.config.resolution, space.config.inChannels]
    : inputShape(loaded.model.spec);
  const p = await loadProtocol(cfg.dataset, {
    ...cfg.protocol,
    size: side,
    channels: channels as 1 | 3,
  });
  if (p.classes.length !== K) {
    release();
    throw new Error(`"${weights}" has ${K} classes, its protocol ${p.classes.length}`);
  }
  const prefix = (ds: Dataset, n: number | undefined) =>
    n === undefined || n >= count(ds) ? ds : take(ds, Int32Array.from({ length: n }, (_, i) => i));
  const testPx = prefix(p.test, a.images), validPx = prefix(p.valid, a["valid-images"]);
  const encode = (ds: Dataset) => (space && count(ds) > 0 ? encodeDataset(space, ds) : ds);
  const test = encode(testPx), valid = count(validPx) > 0 ? encode(validPx) : undefined;
  if (space) closeLatentSpace(space);

  const stem = runStem(weights);
  const run = a.run ?? `${stem}-${method}-seed${a.seed}`;
  if (!FILE_SAFE.test(run)) {
    release();
    throw new UsageError(`--run: the default name "${run}" is not file-safe; pass --run`);
  }
  const stateDir = a["state-dir"] ?? `checkpoints/classify/${run}`;
  const options = {
    target: method === "dc" ? "eps" as const : "x0" as const,
    loss: a.loss as "l2" | "l1",
    clipX0: a["clip-x0"],
    maxBatch: a.rows,
    batch: a.batch,
  };
  // A result depends on these and not on the batch, the rows per call or how many images.
  const identity = (split: string, pl: Plan) =>
    JSON.stringify({
      sha256: loaded.sha256,
      split,
      plan: pl,
      target: options.target,
      loss: options.loss,
      clipX0: options.clipX0,
      seed: a.seed,
      protocol: cfg.protocol,
    });
  const config = {
    weights,
    sha256: loaded.sha256,
    method,
    pretraining: cfg.pretraining,
    condition: cfg.source.condition,
    task: cfg.protocol.task,
    positives: cfg.protocol.positives ?? null,
    dataset: cfg.dataset,
    protocol: p.describe,
    source: cfg.source,
    model: loaded.model.spec.kind,
    preset: loaded.model.spec.name,
    latent: latent ?? null,
    stages,
    samples,
    timesteps: plan.stages.map((s) => s.timesteps),
    loss: options.loss,
    clipX0: options.clipX0,
    images: count(test),
    validImages: valid ? count(valid) : 0,
    batch: a.batch,
    rows: a.rows,
    stateDir,
  };
  const handle = await startRun("classify", run, config, a.seed, { engine, task: "classify" });
  const noise = foldName(rng(a.seed), "classify");
  console.error(
    `classify: ${run}: ${method} on ${count(test)} test images, ${K} classes, ` +
      `${evaluationsPerImage(plan, K)} network evaluations per image`,
  );

  let validDone: ImageResult[] = [], testDone: ImageResult[];
  try {
    if (valid) {
      validDone = await classifySplit(
        "valid",
        model,
        valid,
        fullPlan,
        { ...options, noiseKey: foldName(noise, "valid") },
        `${stateDir}/valid.jsonl`,
        identity("valid", fullPlan),
        a.quiet,
      );
    }
    testDone = await classifySplit(
      "test",
      model,
      test,
      plan,
      { ...options, noiseKey: foldName(noise, "test") },
      `${stateDir}/test.jsonl`,
      identity("test", plan),
      a.quiet,
    );
  } finally {
    release();
  }

  // Scores, then calibration: τ from valid, NLL and ECE of the test split at τ = 1 and τ.
  const pred = Int32Array.from(testDone, (r) => r.pred);
  const scores = downstreamMetrics(cfg.protocol.task, pred, test.labels, K);
  const fit = valid
    ? fitTemperature(errorMatrix(validDone), valid.labels, K)
    : { tau: 1, nllBefore: null, nllAfter: null };
  const calibration = (tau: number) => {
    const probs = classProbabilities(errorMatrix(testDone), K, tau);
    return {
      nll: negativeLogLikelihood(probs, test.labels, K),
      ece: expectedCalibrationError(probs, test.labels, K),
    };
  };
  const raw = calibration(1), tuned = calibration(fit.tau);
  const testCost = cost(testDone), validCost = cost(validDone);
  const validPred = Int32Array.from(validDone, (r) => r.pred);
  const path = await finishRun(handle, {
    metrics: {
      accuracy: scores.accuracy,
      f1: scores.f1,
      recall: scores.recall,
      precision: scores.precision,
      average: scores.average,
      confusion: scores.confusion,
      temperature: fit.tau,
      nll: tuned.nll,
      ece: tuned.ece,
      nll_tau1: raw.nll,
      ece_tau1: raw.ece,
      valid_nll_tau1: fit.nllBefore,
      valid_nll: fit.nllAfter,
      valid_accuracy: valid
        ? downstreamMetrics(cfg.protocol.task, validPred, valid.labels, K).accuracy
        : null,
      evaluations_per_image: testCost.evaluationsPerImage,
      images_per_s: testCost.imagesPerS,
      test_s: testCost.seconds,
      valid_evaluations_per_image: validCost.evaluationsPerImage,
      valid_images_per_s: valid ? validCost.imagesPerS : null,
      valid_s: validCost.seconds,
      images: count(test),
      valid_images: valid ? count(valid) : 0,
    },
    timings: { classify_s: testCost.seconds + validCost.seconds },
  });
  console.error(
    `classify: ${method}: accuracy ${(100 * scores.accuracy).toFixed(2)} %, F1 ` +
      `${(100 * scores.f1).toFixed(2)} % (${scores.average}), τ ${fit.tau.toPrecision(3)}, ` +
      `${testCost.imagesPerS.toFixed(2)} images/s; wrote ${path}`,
  );
});
