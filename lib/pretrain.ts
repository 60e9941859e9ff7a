// Diffusion pre-training of any denoiser (lib/models) on a dataset: the loss of a step, the
// loop with its checkpoints and loss curve. The other concerns live beside it: the data order
// and the keys of every draw (pretrain_data.ts), checkpoints, resume and provenance
// (pretrain_resume.ts), sampling (sampling.ts). `scripts/pretrain.ts` parses flags and calls this.
import * as tf from "@tensorflow/tfjs";
import { batchAt, count, type Dataset } from "./data/dataset.ts";
import { namedSchedule, type Schedule } from "./diffusion/schedule.ts";
import { diffusionLoss } from "./diffusion/losses.ts";
import {
  conditioning,
  denoise,
  inputShape,
  learnSigma,
  type ModelSpec,
  represented,
} from "./models/mod.ts";
import type { Params } from "./params.ts";
import { disposeParams } from "./params.ts";
import { adam, disposeTensors } from "./optim.ts";
import { fold, normal, randint } from "./random.ts";
import { runLoop, type StepOptions, type TrainState, trainStep } from "./train.ts";
import { BatchOrder, type RunKeys, runKeys } from "./pretrain_data.ts";
import {
  checkpointPath,
  type LossCurve,
  resumeOrInit,
  type RunRecord,
  saveRun,
  SegmentClock,
} from "./pretrain_resume.ts";
import type { RunEnv, Segment } from "./results.ts";

export { checkpointPath, type LossCurve };

/** Everything that defines a pre-training run; stored in its checkpoint and results JSON. */
export interface PretrainConfig {
  readonly dataset: string;
  /** The denoiser: kind, preset, config (class-conditional ones carry their label dropout). */
  readonly model: ModelSpec;
  readonly schedule: "linear" | "cosine";
  readonly diffusionSteps: number;
  readonly steps: number;
  readonly batch: number;
  readonly lr: number;
  readonly emaRate: number;
  readonly clipNorm?: number;
  readonly seed: number;
  /**
   * The model runs in this autoencoder's latent space (seed 000's latent DiT): the dataset is
   * encoded once (posterior means × scale) before the first step. Absent: pixels.
   */
  readonly latent?: LatentSpec;
  /**
   * Products and convolutions in bf16 (lib/engine/blas/precision.ts); absent: fp32. Part of the
   * run's identity: a checkpoint resumes only at the precision it was trained in.
   */
  readonly precision?: "bf16";
}

/** An autoencoder's latent space, as a run records it. */
export interface LatentSpec {
  readonly kind: "vae";
  /** The weights file (`deno task train-vae`), its sha256 and its latent scale. */
  readonly weights: string;
  readonly sha256: string;
  readonly scale: number;
}

export interface PretrainResult {
  readonly state: TrainState;
  /** The signal that stopped the run early, if one did. */
  readonly interrupted?: "SIGINT" | "SIGTERM";
  readonly curve: LossCurve;
  /** Every segment of the run, this invocation's last (when it took a step). */
  readonly segments: readonly Segment[];
  /** Steps taken by this invocation (not counting earlier ones). */
  readonly stepsThisRun: number;
  readonly resumedFrom: number;
}

/** The state each step needs: the schedule, keys and data order, built once per run. */
interface StepContext {
  readonly cfg: PretrainConfig;
  readonly sched: Schedule;
  readonly keys: RunKeys;
  readonly order: BatchOrder;
  readonly ds: Dataset;
}

function stepContext(cfg: PretrainConfig, ds: Dataset): StepContext {
  const keys = runKeys(cfg.seed);
  const sched = namedSchedule(cfg.schedule, cfg.diffusionSteps);
  return { cfg, sched, keys, order: new BatchOrder(keys.data, count(ds), cfg.batch), ds };
}

/** The diffusion loss of step `step` (a scalar), with that step's batch, t, ε and net key. */
function stepLoss(ctx: StepContext, params: Params, step: number): tf.Scalar {
  const { cfg, sched, keys } = ctx;
  return tf.tidy(() => {
    const { x, y } = batchAt(ctx.ds, ctx.order.indices(step));
    const n = x.shape[0];
    const t = tf.tensor1d(randint(fold(keys.t, step), n, 0, sched.T), "int32");
    const noise = normal(fold(keys.noise, step), x.shape) as tf.Tensor4D;
    const labels = conditioning(cfg.model) ? y : undefined;
    // A representation-conditioned model sees its own clean input through the encoder.
    const x0 = represented(cfg.model) ? x : undefined;
    const net = (xt: tf.Tensor4D, tt: tf.Tensor1D) =>
      denoise(cfg.model, params, xt, tt, { y: labels, x0, key: fold(keys.net, step) });
    return diffusionLoss(sched, net, x, t, noise, { learnSigma: learnSigma(cfg.model) });
  });
}

const optimizerOf = (cfg: PretrainConfig): StepOptions => ({
  optimizer: adam({ lr: cfg.lr }),
  clipNorm: cfg.clipNorm,
  emaRate: cfg.emaRate,
});

export interface PretrainOptions {
  /** Directory for checkpoint.safetensors (created). */
  readonly dir: string;
  readonly checkpointEvery: number;
  /** Loss-curve window in steps. @default 10 */
  readonly logEvery?: number;
  readonly quiet?: boolean;
  /** The run's environment (`startRun`'s `env`): commit, engine and CPU of its new segment. */
  readonly env: RunEnv;
}

/** Check that the dataset fits the model; one error naming both. */
export function checkDataset(cfg: PretrainConfig, ds: Dataset): void {
  const [h, w, c] = ds.shape;
  const [s, , ch] = inputShape(cfg.model);
  if (h !== s || w !== s || c !== ch) {
    throw new Error(
      `Dataset "${ds.name}" has images ${h}×${w}×${c}, but ${cfg.model.kind} "${cfg.model.name}" ` +
        `expects ${s}×${s}×${ch}`,
    );
  }
  const cond = conditioning(cfg.model);
  if (cond && cond.classes !== ds.classes.length) {
    throw new Error(
      `Dataset "${ds.name}" has ${ds.classes.length} classes, the model ${cond.classes}`,
    );
  }
}

/** Train (or resume) until cfg.steps; checkpoints on schedule, at the end and on a stop signal. */
export async function pretrain(
  cfg: PretrainConfig,
  ds: Dataset,
  o: PretrainOptions,
): Promise<PretrainResult> {
  checkDataset(cfg, ds);
  await Deno.mkdir(o.dir, { recursive: true });
  const ctx = stepContext(cfg, ds);
  const opts = optimizerOf(cfg);
  const every = o.logEvery ?? 10;
  const start = await resumeOrInit(cfg, o.dir, opts, ctx.keys.init, every);
  const curve: LossCurve = { every, points: [...start.record.curve.points] };
  // Losses of the window in progress; saved with the checkpoint so a resume keeps its points.
  let window: number[] = [...start.record.window];
  const resumedFrom = start.state.step;
  if (resumedFrom > 0 && !o.quiet) {
    console.error(`pretrain: resuming from step ${resumedFrom} (${checkpointPath(o.dir)})`);
  }
  const clock = new SegmentClock(resumedFrom, o.env);
  const record = (): RunRecord => ({ curve, window, segments: start.record.segments });
  // The segment as last saved: the checkpoint and the results JSON tell the same story.
  let saved: Segment | undefined;
  const { state, signal } = await runLoop(start.state, {
    label: "pretrain",
    totalSteps: cfg.steps,
    quiet: o.quiet,
    checkpointEvery: o.checkpointEvery,
    save: (s) => saveRun(o.dir, cfg, s, record(), saved = clock.at(s.step)),
    step: (s) => {
      const r = trainStep(s, () => stepLoss(ctx, s.params, s.step), opts);
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
    interrupted: signal,
    curve,
    segments: saved ? [...start.record.segments, saved] : start.record.segments,
    stepsThisRun: state.step - resumedFrom,
    resumedFrom,
  };
}

/** Free every tensor a run holds. */
export function disposeState(s: TrainState): void {
  disposeTensors(s.opt);
  if (s.ema) disposeTensors(s.ema);
  disposeParams(s.params);
}
