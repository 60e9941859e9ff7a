// Diffusion pre-training of the ADM U-Net on a dataset: the data stream, the loss, resumable
// checkpoints, and the sample grid. `scripts/pretrain.ts` parses flags and calls `pretrain`.
//
// Every random draw of step i is a pure function of (seed, i): the batch comes from the epoch's
// permutation, t and ε from keys folded with i. A resumed run therefore continues the very same
// loss curve as an unbroken one.
import * as tf from "@tensorflow/tfjs";
import { batchAt, count, type Dataset } from "./data/dataset.ts";
import { namedSchedule, type Schedule } from "./diffusion/schedule.ts";
import { diffusionLoss } from "./diffusion/losses.ts";
import { sampleLoop } from "./diffusion/sample.ts";
import * as unet from "./models/unet.ts";
import type { Params } from "./params.ts";
import { disposeParams } from "./params.ts";
import { adam, disposeTensors, type Tensors } from "./optim.ts";
import {
  fold,
  normal,
  permutation,
  randint,
  type Rng,
  rng,
  split,
  uniformArray,
} from "./random.ts";
import { initTrainState, runLoop, type StepOptions, type TrainState, trainStep } from "./train.ts";
import {
  disposeCheckpoint,
  loadCheckpoint,
  loadParamsStrict,
  saveCheckpoint,
} from "./io/checkpoint.ts";
import { saveImageGrid } from "./io/png.ts";

/** Everything that defines a pre-training run; stored in its checkpoint and results JSON. */
export interface PretrainConfig {
  readonly dataset: string;
  readonly model: unet.UNetConfig;
  readonly modelName: string;
  readonly schedule: "linear" | "cosine";
  readonly diffusionSteps: number;
  readonly steps: number;
  readonly batch: number;
  readonly lr: number;
  readonly emaRate: number;
  readonly clipNorm?: number;
  readonly seed: number;
  /**
   * Class-conditional training (model.numClasses set). With a class dropout p > 0 the model has
   * one extra label, the null class (id = number of classes), used in place of the true label
   * with probability p, as DiT does for classifier-free guidance.
   */
  readonly classDropout?: number;
}

/** The loss curve: mean loss over each window of `every` steps, as [last step, mean]. */
export interface LossCurve {
  readonly every: number;
  readonly points: [number, number][];
}

export interface PretrainResult {
  readonly state: TrainState;
  readonly interrupted: boolean;
  readonly curve: LossCurve;
  /** Steps taken and seconds spent by this invocation (not counting earlier ones). */
  readonly stepsThisRun: number;
  readonly secondsThisRun: number;
  readonly resumedFrom: number;
}

const EMPTY_CURVE: LossCurve = { every: 0, points: [] };
const CHECKPOINT_FILE = "checkpoint.safetensors";
export const checkpointPath = (dir: string) => `${dir}/${CHECKPOINT_FILE}`;

/** Keys: initial weights, data order, t, ε, dropout, label dropout. */
function keys(seed: number) {
  const [init, data, t, noise, dropout, labels] = split(rng(seed), 6);
  return { init, data, t, noise, dropout, labels };
}

/** The model's config for a dataset of `classes` classes: unconditional, or with labels (+ null). */
export function conditionedModel(
  m: unet.UNetConfig,
  classes: number,
  classCond: boolean,
  classDropout = 0,
): unet.UNetConfig {
  if (!classCond) return m;
  return { ...m, numClasses: classes + (classDropout > 0 ? 1 : 0) };
}

/** Labels with each replaced by the null id (= classes) with probability p. */
function dropLabels(y: tf.Tensor1D, p: number, nullId: number, key: Rng): tf.Tensor1D {
  const u = uniformArray(key, y.shape[0]);
  const labels = y.dataSync();
  return tf.tensor1d(Array.from(labels, (v, i) => (u[i] < p ? nullId : v)), "int32");
}

/** Indices of the batch for step i: consecutive slices of per-epoch permutations. */
export function batchIndices(dataKey: Rng, n: number, batch: number, step: number): Int32Array {
  const out = new Int32Array(batch);
  let epoch = -1;
  let perm: Int32Array = new Int32Array(0);
  for (let j = 0; j < batch; j++) {
    const pos = step * batch + j;
    const e = Math.floor(pos / n);
    if (e !== epoch) {
      epoch = e;
      perm = permutation(fold(dataKey, e), n);
    }
    out[j] = perm[pos - e * n];
  }
  return out;
}

/** The U-Net as the diffusion code sees it: (x_t, t) → output, for fixed labels if conditional. */
export function denoiser(
  cfg: unet.UNetConfig,
  params: Params,
  opts: { dropoutRng?: Rng; y?: tf.Tensor1D } = {},
) {
  return (xt: tf.Tensor4D, t: tf.Tensor1D) => unet.apply(cfg, params, xt, t, opts).eps!;
}

/** The diffusion loss of step `step` (a scalar), with that step's batch, t and ε. */
export function stepLoss(
  cfg: PretrainConfig,
  sched: Schedule,
  ds: Dataset,
  params: Params,
  step: number,
): tf.Scalar {
  const k = keys(cfg.seed);
  return tf.tidy(() => {
    const { x, y } = batchAt(ds, batchIndices(k.data, count(ds), cfg.batch, step));
    const n = x.shape[0];
    const t = tf.tensor1d(randint(fold(k.t, step), n, 0, sched.T), "int32");
    const noise = normal(fold(k.noise, step), x.shape) as tf.Tensor4D;
    const dropoutRng = cfg.model.dropout > 0 ? fold(k.dropout, step) : undefined;
    const p = cfg.classDropout ?? 0;
    const labels = cfg.model.numClasses === undefined
      ? undefined
      : p > 0
      ? dropLabels(y, p, cfg.model.numClasses - 1, fold(k.labels, step))
      : y;
    return diffusionLoss(
      sched,
      denoiser(cfg.model, params, { dropoutRng, y: labels }),
      x,
      t,
      noise,
      {
        learnSigma: cfg.model.learnSigma,
      },
    );
  });
}

function optimizerOf(cfg: PretrainConfig): StepOptions {
  return { optimizer: adam({ lr: cfg.lr }), clipNorm: cfg.clipNorm, emaRate: cfg.emaRate };
}

// The fields that must agree for a checkpoint to be resumed (steps may grow).
const identity = (c: PretrainConfig) => JSON.stringify({ ...c, steps: undefined });

async function resumeOrInit(cfg: PretrainConfig, dir: string, opts: StepOptions) {
  const path = checkpointPath(dir);
  let exists = true;
  try {
    Deno.statSync(path);
  } catch {
    exists = false;
  }
  if (!exists) {
    const params = unet.init(cfg.model, keys(cfg.seed).init);
    return { state: initTrainState(params, opts), curve: EMPTY_CURVE, window: [] as number[] };
  }
  const ck = await loadCheckpoint(path);
  const saved = ck.meta.config as PretrainConfig | undefined;
  if (!saved || identity(saved) !== identity(cfg)) {
    disposeCheckpoint(ck);
    throw new Error(
      `Checkpoint "${path}" belongs to a different run (config differs); use another --out or delete it`,
    );
  }
  const shapes = unet.paramShapes(cfg.model);
  const params = loadParamsStrict(shapes, ck.params, path);
  const ema: Record<string, tf.Tensor> = { ...ck.ema };
  const slots: Record<string, tf.Tensor> = { ...ck.optState };
  const state: TrainState = {
    params,
    opt: { count: Number(ck.meta.optCount ?? ck.step ?? 0), slots },
    ema: Object.keys(ema).length > 0 ? ema : undefined,
    step: ck.step ?? 0,
  };
  return {
    state,
    curve: (ck.meta.lossCurve as LossCurve | undefined) ?? EMPTY_CURVE,
    window: (ck.meta.lossWindow as number[] | undefined) ?? [],
  };
}

export interface PretrainOptions {
  /** Directory for checkpoint.safetensors (created). */
  readonly dir: string;
  readonly checkpointEvery: number;
  /** Loss-curve window in steps. @default 10 */
  readonly logEvery?: number;
  readonly quiet?: boolean;
}

/** Train (or resume) until cfg.steps; checkpoints on schedule, at the end and on Ctrl-C. */
export async function pretrain(
  cfg: PretrainConfig,
  ds: Dataset,
  o: PretrainOptions,
): Promise<PretrainResult> {
  const [h, w, c] = ds.shape;
  if (h !== cfg.model.imageSize || w !== cfg.model.imageSize || c !== cfg.model.inChannels) {
    throw new Error(
      `Dataset "${ds.name}" has images ${h}×${w}×${c}, but config ${cfg.modelName} expects ` +
        `${cfg.model.imageSize}×${cfg.model.imageSize}×${cfg.model.inChannels}`,
    );
  }
  await Deno.mkdir(o.dir, { recursive: true });
  const sched = namedSchedule(cfg.schedule, cfg.diffusionSteps);
  const opts = optimizerOf(cfg);
  const start = await resumeOrInit(cfg, o.dir, opts);
  const every = o.logEvery ?? 10;
  if (start.curve.every !== 0 && start.curve.every !== every) {
    throw new Error(
      `Checkpoint logged the loss every ${start.curve.every} steps; pass --log-every ${start.curve.every}`,
    );
  }
  const curve: LossCurve = { every, points: [...start.curve.points] };
  // Losses of the window in progress; saved with the checkpoint so a resume keeps its points.
  let window: number[] = [...start.window];
  const resumedFrom = start.state.step;
  if (resumedFrom > 0 && !o.quiet) {
    console.error(`pretrain: resuming from step ${resumedFrom} (${checkpointPath(o.dir)})`);
  }

  const save = (s: TrainState) =>
    saveCheckpoint(checkpointPath(o.dir), {
      params: s.params,
      ema: s.ema,
      optState: s.opt.slots,
      step: s.step,
      meta: { config: cfg, optCount: s.opt.count, lossCurve: curve, lossWindow: window },
    });

  const t0 = performance.now();
  const { state, interrupted } = await runLoop(start.state, {
    label: "pretrain",
    totalSteps: cfg.steps,
    quiet: o.quiet,
    checkpointEvery: o.checkpointEvery,
    save,
    step: (s) => {
      const r = trainStep(s, () => stepLoss(cfg, sched, ds, s.params, s.step), opts);
      return { state: r.state, metrics: { loss: r.loss } };
    },
    onStep: (step, m) => {
      window.push(m.loss);
      if (step % every === 0) {
        curve.points.push([step, window.reduce((a, b) => a + b, 0) / window.length]);
        window = [];
      }
    },
  });
  return {
    state,
    interrupted,
    curve,
    stepsThisRun: state.step - resumedFrom,
    secondsThisRun: (performance.now() - t0) / 1000,
    resumedFrom,
  };
}

/** Draw `n` images with the given weights (DDIM or DDPM); returns [n, S, S, C] in [-1, 1]. */
export function sampleImages(
  cfg: PretrainConfig,
  weights: Params | Tensors,
  n: number,
  seed: number,
  opts: {
    method?: "ddim" | "ddpm";
    steps?: number;
    onStep?: (done: number, total: number) => void;
  } = {},
): tf.Tensor4D {
  const sched = namedSchedule(cfg.schedule, cfg.diffusionSteps);
  const m = cfg.model;
  // Conditional models draw the classes in turn (one row of the grid per class when square).
  const classes = m.numClasses === undefined
    ? 0
    : m.numClasses - ((cfg.classDropout ?? 0) > 0 ? 1 : 0);
  const y = classes > 0
    ? tf.tensor1d(Array.from({ length: n }, (_, i) => i % classes), "int32")
    : undefined;
  try {
    return sampleLoop(
      sched,
      denoiser(m, weights as Params, { y }),
      [n, m.imageSize, m.imageSize, m.inChannels],
      rng(seed),
      {
        method: opts.method ?? "ddim",
        steps: opts.steps ?? 50,
        learnSigma: m.learnSigma,
        onStep: opts.onStep,
      },
    );
  } finally {
    y?.dispose();
  }
}

/** Save a sample grid PNG of `n` images drawn with the EMA weights (or the raw ones). */
export async function saveSampleGrid(
  path: string,
  cfg: PretrainConfig,
  state: TrainState,
  n: number,
  seed: number,
  steps = 50,
): Promise<void> {
  const images = sampleImages(cfg, state.ema ?? state.params, n, seed, { steps });
  try {
    await saveImageGrid(path, images, { cols: Math.ceil(Math.sqrt(n)) });
  } finally {
    images.dispose();
  }
}

/** Free every tensor a run holds. */
export function disposeState(s: TrainState): void {
  disposeTensors(s.opt);
  if (s.ema) disposeTensors(s.ema);
  disposeParams(s.params);
}
