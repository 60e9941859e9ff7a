// Downstream tuning (seed 000 §3.2, "Downstream Adaption", Tuning): the weights of a pre-trained
// denoiser are carried into a class-conditional one (the representation path dropped, a label
// table added) and trained with the diffusion loss on the labelled downstream train split, with
// label dropout so the null label exists. The valid split chooses the weights: every
// `evalEvery` steps the EMA weights are scored by the mean ε-MSE on valid images conditioned on
// their true labels, with (t, ε) fixed per image and draw, so two evaluations differ only by the
// weights; the best EMA weights are kept, and `patience` evaluations without a better one stop
// the run (early stopping). Diffusion Classifier and DC Zero then read the kept weights
// (scripts/classify.ts).
//
// Resume. The checkpoint (`checkpoint.safetensors` in the run folder) holds the weights, their
// EMA, Adam's moments and, in the optimiser group under `best.<name>`, the best weights so far,
// with the loss curves, the best step and the segments in its metadata: one atomic file, so a
// resumed run never pairs a state with another step's best. Every draw of step i is a pure
// function of (seed, i) (lib/pretrain_data.ts), so a resumed run continues the unbroken run's
// curves. The loop runs `runLoop` from one evaluation step to the next, so Ctrl-C or SIGTERM
// during training finishes the step and saves; during an evaluation (no listener then) it ends
// the process, and as the checkpoint of an evaluation step may predate its evaluation, a resumed
// run evaluates such a step again (the same draws: the same loss).
import * as tf from "@tensorflow/tfjs";
import { batchAt, count, type Dataset } from "./data/dataset.ts";
import { diffusionLoss } from "./diffusion/losses.ts";
import { qSample, splitOutput } from "./diffusion/gaussian.ts";
import { namedSchedule, type Schedule } from "./diffusion/schedule.ts";
import type { Task } from "./downstream.ts";
import { checkpointFaults, loadParamsStrict, saveCheckpoint } from "./io/checkpoint.ts";
import { fileExists, removeStaleTemps } from "./io/atomic.ts";
import { shortList } from "./messages.ts";
import {
  type Condition,
  conditioning,
  denoise,
  inputShape,
  learnSigma,
  type ModelSpec,
  paramShapes,
  represented,
} from "./models/mod.ts";
import { adam, disposeTensors, type Tensors } from "./optim.ts";
import type { Params, ParamShapes } from "./params.ts";
import type { LatentSpec } from "./pretrain.ts";
import { BatchOrder, runKeys } from "./pretrain_data.ts";
import {
  checkpointPath,
  type LossCurve,
  openRunCheckpoint,
  SegmentClock,
} from "./pretrain_resume.ts";
import { progress } from "./progress.ts";
import { fold, foldName, normal, normalArray, randint, rng } from "./random.ts";
import type { RunEnv, Segment } from "./results.ts";
import { initTrainState, runLoop, type StepOptions, type TrainState, trainStep } from "./train.ts";

export { checkpointPath };

// ---------------------------------------------------------------------------------------------
// The tuned model
// ---------------------------------------------------------------------------------------------

/** What the tuned weights were pre-trained as: seed 000 Table 4's rows. */
export type Pretraining = "none" | "unconditional" | "representation" | "class";

/** The pre-training of a source of condition `c`; a model tuned from scratch had none. */
export function pretrainingOf(c: Condition, fromScratch: boolean): Pretraining {
  if (fromScratch) return "none";
  return ({ none: "unconditional", repr: "representation", class: "class" } as const)[c];
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/** The downstream protocol a run tunes on (lib/downstream.ts `loadProtocol`'s options). */
export interface TuneProtocol {
  readonly task: Task;
  /** Binary task: the original class ids counted positive. */
  readonly positives?: readonly number[];
  readonly site?: string;
  readonly train: number;
  readonly valid: number;
  readonly test: number;
  /** The key of the downstream draw (apart from the run's seed, so seeds share a split). */
  readonly seed: number;
}

/**
 * Everything that defines a tuning run, stored in its checkpoint and its tuned weights file.
 * The top-level fields `model`, `schedule`, `diffusionSteps`, `dataset`, `batch` and `latent`
 * are what lib/frozen_model.ts `loadFrozenModel` reads back.
 */
export interface TuneConfig {
  readonly dataset: string;
  /** The tuned, class-conditional denoiser. */
  readonly model: ModelSpec;
  readonly schedule: "linear" | "cosine";
  readonly diffusionSteps: number;
  readonly latent?: LatentSpec;
  /** The pre-trained weights file; `fromScratch` keeps only its architecture. */
  readonly source: {
    readonly weights: string;
    readonly sha256: string;
    readonly condition: Condition;
    readonly fromScratch: boolean;
  };
  readonly pretraining: Pretraining;
  readonly protocol: TuneProtocol;
  readonly steps: number;
  readonly batch: number;
  readonly lr: number;
  readonly emaRate: number;
  readonly clipNorm?: number;
  /** Steps between validation evaluations (also after the last step). */
  readonly evalEvery: number;
  /** Evaluations without a better valid loss that stop the run; 0: never. */
  readonly patience: number;
  /** (t, ε) draws per valid image. */
  readonly validDraws: number;
  readonly seed: number;
}

// A checkpoint resumes under the same config up to the step budget and where the source file
// now lies (its bytes are pinned by sha256).
const identity = (c: TuneConfig) =>
  JSON.stringify({ ...c, steps: undefined, source: { ...c.source, weights: undefined } });

// ---------------------------------------------------------------------------------------------
// Validation: mean ε-MSE at fixed (t, ε)
// ---------------------------------------------------------------------------------------------

/** The valid split with its fixed draws: row r = image ⌊r / D⌋, draw r mod D. */
export interface ValidSet {
  readonly ds: Dataset;
  readonly draws: number;
  /** Schedule index t of each row, [N·D]. */
  readonly t: Int32Array;
  /** ε of each row, [N·D·S·S·C]. */
  readonly eps: Float32Array;
}

/**
 * Fixed validation draws: the t and ε of image i's draw d come from
 * `fold(fold(foldName(rng(seed), "tune-valid"), i), d)`, so they depend on neither the batch
 * nor the number of images.
 */
export function validSet(ds: Dataset, draws: number, T: number, seed: number): ValidSet {
  const n = count(ds), per = ds.shape[0] * ds.shape[1] * ds.shape[2];
  const key = foldName(rng(seed), "tune-valid");
  const t = new Int32Array(n * draws), eps = new Float32Array(n * draws * per);
  for (let i = 0; i < n; i++) {
    for (let d = 0; d < draws; d++) {
      const k = fold(fold(key, i), d), r = i * draws + d;
      t[r] = randint(foldName(k, "t"), 1, 0, T)[0];
      eps.set(normalArray(foldName(k, "eps"), per), r * per);
    }
  }
  return { ds, draws, t, eps };
}

/**
 * Mean over rows of ‖ε − ε̂‖² (mean over pixels and channels; ε̂ only, without a learned
 * variance) of `params` in eval mode, conditioned on the true labels, `batch` rows per call.
 */
export async function validLoss(
  spec: ModelSpec,
  schedule: Schedule,
  params: Tensors,
  v: ValidSet,
  batch: number,
): Promise<number> {
  const { ds, draws } = v;
  const shape = ds.shape, per = shape[0] * shape[1] * shape[2], rows = v.t.length;
  const sigma = learnSigma(spec);
  let sum = 0;
  for (let r0 = 0; r0 < rows; r0 += batch) {
    const r1 = Math.min(rows, r0 + batch);
    const images = Int32Array.from({ length: r1 - r0 }, (_, j) => Math.floor((r0 + j) / draws));
    const mse = tf.tidy(() => {
      const { x, y } = batchAt(ds, images); // [R, S, S, C], [R]
      const noise = tf.tensor4d(v.eps.subarray(r0 * per, r1 * per), [r1 - r0, ...shape]);
      const t = tf.tensor1d(v.t.subarray(r0, r1), "int32");
      const modelT = schedule.timestepMap.every((m, i) => m === i)
        ? t
        : tf.gather(tf.tensor1d(schedule.timestepMap, "int32"), t) as tf.Tensor1D;
      const xt = qSample(schedule, x, t, noise);
      const out = denoise(spec, params as Params, xt, modelT, { y });
      const [epsHat] = splitOutput(out, shape[2], sigma);
      return tf.sum(tf.mean(tf.squaredDifference(noise, epsHat), [1, 2, 3]));
    });
    sum += (await mse.data())[0];
    mse.dispose();
  }
  return sum / rows;
}

// ---------------------------------------------------------------------------------------------
// Checkpoint: state, best weights and record
// ---------------------------------------------------------------------------------------------

const BEST_PREFIX = "best.";

/** What a run carries besides its tensors; saved in the checkpoint's metadata. */
export interface TuneRecord {
  /** The training loss, a mean over each window of `every` steps. */
  readonly curve: LossCurve;
  /** Losses of the window in progress. */
  readonly window: number[];
  /** Validation loss of the EMA weights: [step, loss], the first at step 0. */
  readonly valid: [number, number][];
  /** The evaluation whose weights are kept. */
  readonly best: { readonly step: number; readonly loss: number } | null;
  /** Whether early stopping ended the run. */
  readonly stopped: boolean;
  readonly segments: Segment[];
}

const prefixed = (p: string, ts: Tensors): Tensors =>
  Object.fromEntries(Object.entries(ts).map(([k, v]) => [p + k, v]));

function recordFaults(m: Record<string, unknown>, step: number, every: number): string[] {
  const faults: string[] = [];
  const curve = m.lossCurve as LossCurve | undefined, window = m.lossWindow;
  const valid = m.valid as [number, number][] | undefined;
  const best = m.best as TuneRecord["best"] | undefined;
  if (m.optCount !== step) faults.push(`optimiser count ${m.optCount} is not step ${step}`);
  if (!curve || curve.every !== every || !Array.isArray(curve.points)) {
    faults.push(`loss curve is not one point every ${every} steps`);
  } else if (curve.points.length !== Math.floor(step / every)) {
    faults.push(`loss curve has ${curve.points.length} points for ${step} steps`);
  }
  if (!Array.isArray(window) || window.length !== step % every) {
    faults.push(`loss window does not hold the ${step % every} losses since the last point`);
  }
  if (!Array.isArray(valid) || valid.length === 0) faults.push("the valid curve is missing");
  else {
    if (
      !valid.every((p, i) =>
        Array.isArray(p) && Number.isFinite(p[1]) && p[0] <= step &&
        (i === 0 || p[0] > valid[i - 1][0])
      )
    ) faults.push("the valid curve is not increasing steps up to the checkpoint's");
    const lo = Math.min(...valid.map((p) => p[1]));
    if (!best || !valid.some((p) => p[0] === best.step && p[1] === best.loss) || best.loss !== lo) {
      faults.push(`best ${JSON.stringify(best)} is not the valid curve's minimum`);
    }
  }
  if (!Array.isArray(m.segments)) faults.push("segments are missing");
  else if (m.segments.length > 0 && (m.segments.at(-1) as Segment).to_step !== step) {
    faults.push(`segments end at ${(m.segments.at(-1) as Segment).to_step}, not step ${step}`);
  }
  return faults;
}

/** A fresh run's state, or the checkpoint in `dir` resumed after every check. */
async function resumeOrStart(
  cfg: TuneConfig,
  dir: string,
  opts: StepOptions,
  initial: Params,
  every: number,
): Promise<{ state: TrainState; best?: Tensors; record: TuneRecord }> {
  const path = checkpointPath(dir);
  await removeStaleTemps(path).catch(() => []);
  const shapes = paramShapes(cfg.model);
  if (!await fileExists(path)) {
    const state = initTrainState(initial, opts);
    const record: TuneRecord = {
      curve: { every, points: [] },
      window: [],
      valid: [],
      best: null,
      stopped: false,
      segments: [],
    };
    return { state, record };
  }
  const { ck, step, fail } = await openRunCheckpoint(path, cfg, identity);
  const bestShapes: ParamShapes = Object.fromEntries(
    Object.entries(shapes).map(([k, s]) => [BEST_PREFIX + k, s]),
  );
  const faults = [
    ...checkpointFaults(ck, {
      params: shapes,
      ema: shapes,
      opt: { ...opts.optimizer.slotShapes(shapes), ...bestShapes },
    }),
    ...recordFaults(ck.meta, step, every),
  ];
  if (faults.length > 0) throw fail(`cannot be resumed: ${shortList(faults, 5)}`);
  disposeTensors(initial);
  const slots: Record<string, tf.Tensor> = {}, best: Record<string, tf.Tensor> = {};
  for (const [k, v] of Object.entries(ck.optState)) {
    if (k.startsWith(BEST_PREFIX)) best[k.slice(BEST_PREFIX.length)] = v;
    else slots[k] = v;
  }
  const m = ck.meta as Record<string, unknown>;
  return {
    state: {
      params: loadParamsStrict(shapes, ck.params, `"${path}"`),
      opt: { count: step, slots },
      ema: { ...ck.ema },
      step,
    },
    best,
    record: {
      curve: m.lossCurve as LossCurve,
      window: [...(m.lossWindow as number[])],
      valid: (m.valid as [number, number][]).map(([s, l]) => [s, l]),
      best: m.best as TuneRecord["best"],
      stopped: m.stopped === true,
      segments: [...(m.segments as Segment[])],
    },
  };
}

function saveTune(
  dir: string,
  cfg: TuneConfig,
  s: TrainState,
  best: Tensors | undefined,
  r: TuneRecord,
  segment: Segment,
): Promise<void> {
  return saveCheckpoint(checkpointPath(dir), {
    params: s.params,
    ema: s.ema,
    optState: { ...s.opt.slots, ...prefixed(BEST_PREFIX, best ?? {}) },
    step: s.step,
    meta: {
      config: cfg,
      optCount: s.opt.count,
      lossCurve: r.curve,
      lossWindow: r.window,
      valid: r.valid,
      best: r.best,
      stopped: r.stopped,
      segments: [...r.segments, segment],
    },
  });
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/** Check that the downstream data fit the tuned model; one error naming both. */
export function checkTuneData(cfg: TuneConfig, train: Dataset, valid: Dataset): void {
  const [s, , ch] = inputShape(cfg.model);
  const cond = conditioning(cfg.model);
  for (const ds of [train, valid]) {
    const [h, w, c] = ds.shape;
    if (h !== s || w !== s || c !== ch) {
      throw new Error(
        `Dataset "${ds.name}" has images ${h}×${w}×${c}, but ${cfg.model.kind} ` +
          `"${cfg.model.name}" expects ${s}×${s}×${ch}`,
      );
    }
    if (!cond || cond.classes !== ds.classes.length) {
      throw new Error(
        `Dataset "${ds.name}" has ${ds.classes.length} classes, the tuned model ${cond?.classes}`,
      );
    }
  }
  if (represented(cfg.model)) throw new Error("A tuned model has no representation encoder");
}

export interface TuneOptions {
  /** Directory for checkpoint.safetensors (created). */
  readonly dir: string;
  readonly checkpointEvery: number;
  /** Training-loss curve window in steps. @default 10 */
  readonly logEvery?: number;
  /** Rows per validation call. @default 64 */
  readonly evalBatch?: number;
  readonly quiet?: boolean;
  /** The run's environment (`startRun`'s `env`), for its new segment. */
  readonly env: RunEnv;
}

export interface TuneResult {
  readonly state: TrainState;
  /** The kept (best-validation EMA) weights; the caller owns them. */
  readonly best: Tensors;
  readonly record: TuneRecord;
  /** Every segment of the run, this invocation's last (when it saved). */
  readonly segments: readonly Segment[];
  readonly interrupted?: "SIGINT" | "SIGTERM";
  readonly stepsThisRun: number;
  readonly resumedFrom: number;
}

/**
 * Tune (or resume tuning) `initial` (the carried or fresh weights of `cfg.model`, taken over:
 * disposed when a checkpoint is resumed instead) on `train`, keeping the best EMA weights on
 * `valid`, until `cfg.steps` or early stopping.
 * @throws for data that do not fit the model, a checkpoint of another run or a damaged one
 */
export async function tune(
  cfg: TuneConfig,
  initial: Params,
  train: Dataset,
  valid: Dataset,
  o: TuneOptions,
): Promise<TuneResult> {
  checkTuneData(cfg, train, valid);
  await Deno.mkdir(o.dir, { recursive: true });
  const keys = runKeys(cfg.seed);
  const sched = namedSchedule(cfg.schedule, cfg.diffusionSteps);
  const order = new BatchOrder(keys.data, count(train), cfg.batch);
  const opts: StepOptions = {
    optimizer: adam({ lr: cfg.lr }),
    clipNorm: cfg.clipNorm,
    emaRate: cfg.emaRate,
  };
  const every = o.logEvery ?? 10;
  const start = await resumeOrStart(cfg, o.dir, opts, initial, every);
  let state = start.state, best = start.best;
  const r = start.record;
  const record = {
    ...r,
    curve: { every, points: [...r.curve.points] },
    valid: [...r.valid],
  } as { -readonly [K in keyof TuneRecord]: TuneRecord[K] };
  const resumedFrom = state.step;
  if (resumedFrom > 0 && !o.quiet) {
    console.error(`tune: resuming from step ${resumedFrom} (${checkpointPath(o.dir)})`);
  }
  const vs = validSet(valid, cfg.validDraws, sched.T, cfg.seed);
  const clock = new SegmentClock(resumedFrom, o.env);
  let saved: Segment | undefined;
  const save = async (s: TrainState) => {
    saved = clock.at(s.step);
    await saveTune(o.dir, cfg, s, best, record, saved);
  };
  const stepLoss = (params: Params, step: number): tf.Scalar =>
    tf.tidy(() => {
      const { x, y } = batchAt(train, order.indices(step));
      const t = tf.tensor1d(randint(fold(keys.t, step), x.shape[0], 0, sched.T), "int32");
      const noise = normal(fold(keys.noise, step), x.shape) as tf.Tensor4D;
      // Label dropout at the model's rate comes with the key (lib/models/mod.ts `denoise`).
      const net = (xt: tf.Tensor4D, tt: tf.Tensor1D) =>
        denoise(cfg.model, params, xt, tt, { y, key: fold(keys.net, step) });
      return diffusionLoss(sched, net, x, t, noise, { learnSigma: learnSigma(cfg.model) });
    });
  const bar = progress({ label: "tune", total: cfg.steps, start: state.step, quiet: o.quiet });
  const shown: Record<string, number> = {};
  let pending = false, signal: "SIGINT" | "SIGTERM" | undefined;
  try {
    while (true) {
      const due = state.step % cfg.evalEvery === 0 || state.step === cfg.steps;
      if (due && record.valid.at(-1)?.[0] !== state.step) {
        const loss = await validLoss(cfg.model, sched, state.ema!, vs, o.evalBatch ?? 64);
        record.valid.push([state.step, loss]);
        if (!record.best || loss < record.best.loss) {
          if (best) disposeTensors(best);
          best = Object.fromEntries(Object.entries(state.ema!).map(([k, v]) => [k, tf.clone(v)]));
          record.best = { step: state.step, loss };
        }
        const since = record.valid.length - 1 -
          record.valid.findIndex((p) => p[0] === record.best!.step);
        if (cfg.patience > 0 && since >= cfg.patience) record.stopped = true;
        shown.valid = loss;
        pending = true;
      }
      if (record.stopped || state.step >= cfg.steps) break;
      const next = Math.min(
        cfg.steps,
        (Math.floor(state.step / cfg.evalEvery) + 1) * cfg.evalEvery,
      );
      pending = false;
      const run = await runLoop(state, {
        label: "tune",
        totalSteps: next,
        quiet: true,
        checkpointEvery: o.checkpointEvery,
        save,
        step: (s) => {
          const r = trainStep(s, () => stepLoss(s.params, s.step), opts);
          return { state: r.state, metrics: { loss: r.loss } };
        },
        onStep: (step, m) => {
          record.window.push(m.loss);
          if (step % every === 0) {
            record.curve.points.push([step, record.window.reduce((a, b) => a + b, 0) / every]);
            record.window = [];
          }
          bar.tick(step, { loss: m.loss, ...shown });
        },
      });
      state = run.state;
      if (run.signal) {
        signal = run.signal;
        break;
      }
    }
    // The last evaluation (and an early stop) reach the checkpoint.
    if (pending) await save(state);
  } finally {
    bar.done();
  }
  if (!best) throw new Error("tune: no evaluation was made"); // unreachable: step 0 is evaluated
  return {
    state,
    best,
    record,
    segments: saved ? [...record.segments, saved] : record.segments,
    interrupted: signal,
    stepsThisRun: state.step - resumedFrom,
    resumedFrom,
  };
}
