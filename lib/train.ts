// One generic training loop: a gradient step over a flat params record (clip → optimiser → EMA),
// and a driver that runs steps with progress, periodic checkpoints, and a checkpoint on Ctrl-C.
import * as tf from "@tensorflow/tfjs";
import type { Params } from "./params.ts";
import {
  applyUpdates,
  clipByGlobalNorm,
  disposeTensors,
  emaInit,
  emaRateAt,
  emaUpdate,
  globalNorm,
  type Optimizer,
  type OptState,
  type Tensors,
} from "./optim.ts";
import { progress } from "./progress.ts";

/** Everything a resumed run needs besides the config: weights, moments, averages, step. */
export interface TrainState {
  readonly params: Params;
  readonly opt: OptState;
  /** EMA of the weights, when the run keeps one. */
  readonly ema?: Tensors;
  /** Number of completed steps. */
  readonly step: number;
}

export interface StepOptions {
  readonly optimizer: Optimizer;
  /** Clip gradients to this global norm (ADM clips at 1 only in some configs). @default none */
  readonly clipNorm?: number;
  /** EMA rate, reached after a warm-up (`emaRateAt`); the average is skipped when undefined. */
  readonly emaRate?: number;
  /** Parameter names to train; the others stay frozen. @default all */
  readonly trainable?: readonly string[];
}

/** A fresh state: optimiser initialised, EMA copied from the weights when asked for. */
export function initTrainState(params: Params, opts: StepOptions): TrainState {
  const trained = pick(params, opts.trainable);
  return {
    params,
    opt: opts.optimizer.init(trained),
    ema: opts.emaRate === undefined ? undefined : emaInit(params),
    step: 0,
  };
}

function pick(params: Params, names?: readonly string[]): Params {
  if (!names) return params;
  const out: Record<string, tf.Variable> = {};
  for (const n of names) {
    if (!params[n]) throw new Error(`Unknown trainable parameter "${n}"`);
    out[n] = params[n];
  }
  return out;
}

/** A step whose loss or gradients are not finite; thrown before anything was updated. */
export class NonFiniteError extends Error {}

/**
 * One optimisation step on `loss()` (a scalar built from the params). Variables are updated in
 * place; the old optimiser state and EMA are freed. Returns the loss and the gradient norm.
 * @throws NonFiniteError when the loss or the gradient norm is not finite, before parameters,
 * optimiser state or EMA are touched
 */
export function trainStep(
  state: TrainState,
  loss: () => tf.Scalar,
  opts: StepOptions,
): { state: TrainState; loss: number; gradNorm: number } {
  const trained = pick(state.params, opts.trainable);
  const names = Object.keys(trained);
  const { value, grads: byVarName } = tf.variableGrads(loss, names.map((n) => trained[n]));
  const raw: Record<string, tf.Tensor> = {};
  // A parameter the loss does not reach gets no gradient from tfjs: treat it as zero.
  for (const n of names) raw[n] = byVarName[trained[n].name] ?? tf.zerosLike(trained[n]);
  const lossValue = value.dataSync()[0];
  value.dispose();
  const clipped = Number.isFinite(lossValue) && opts.clipNorm !== undefined
    ? clipByGlobalNorm(raw, opts.clipNorm)
    : undefined;
  const norm = clipped?.norm ?? (Number.isFinite(lossValue) ? globalNorm(raw) : NaN);
  if (!Number.isFinite(lossValue) || !Number.isFinite(norm)) {
    disposeTensors(raw);
    if (clipped) disposeTensors(clipped.grads);
    const what = Number.isFinite(lossValue) ? `gradient norm is ${norm}` : `loss is ${lossValue}`;
    throw new NonFiniteError(
      `The ${what} at step ${
        state.step + 1
      }; stopped before updating (the last checkpoint is kept)`,
    );
  }
  // Without clipping the raw gradients go to the optimiser as they are (no copies).
  const grads = clipped?.grads ?? raw;
  if (clipped) disposeTensors(raw);
  const { updates, state: opt } = opts.optimizer.update(grads, state.opt, trained);
  disposeTensors(grads);
  applyUpdates(trained, updates);
  disposeTensors(state.opt);
  const ema = state.ema && opts.emaRate !== undefined
    ? emaUpdate(state.ema, state.params, emaRateAt(opts.emaRate, state.step))
    : state.ema;
  return {
    state: { params: state.params, opt, ema, step: state.step + 1 },
    loss: lossValue,
    gradNorm: norm,
  };
}

export interface LoopOptions<S extends { readonly step: number }> {
  readonly label: string;
  /** Run until `state.step` reaches this. */
  readonly totalSteps: number;
  /** One step: returns the next state and metrics to show and log (e.g. { loss }). */
  readonly step: (
    state: S,
  ) =>
    | { state: S; metrics: Record<string, number> }
    | Promise<{ state: S; metrics: Record<string, number> }>;
  /** Save a checkpoint; called every `checkpointEvery` steps, at the end, and on a stop signal. */
  readonly save?: (state: S) => Promise<void>;
  readonly checkpointEvery?: number;
  /** Called after every step with its metrics (e.g. to record a loss curve). */
  readonly onStep?: (step: number, metrics: Record<string, number>) => void;
  readonly quiet?: boolean;
}

/** Signals that stop a run cleanly: Ctrl-C, and what timeout, Slurm, docker and systemd send. */
export const STOP_SIGNALS = ["SIGINT", "SIGTERM"] as const;
type StopSignal = (typeof STOP_SIGNALS)[number];

// Copies of one signal closer than this count once: under `deno task`, a terminal Ctrl-C reaches
// the script twice (from the terminal and forwarded by deno task).
const DUPLICATE_MS = 500;

/**
 * Run steps until `totalSteps`, with a progress line. SIGINT or SIGTERM finishes the step in
 * flight, saves a checkpoint and returns the signal, so rerunning the same command
 * resumes where it stopped. A later signal aborts at once, except during a save, which it lets
 * finish first: a checkpoint is never left half-written.
 */
export async function runLoop<S extends { readonly step: number }>(
  initial: S,
  o: LoopOptions<S>,
): Promise<{ state: S; signal?: StopSignal }> {
  let state = initial;
  let stop: { signal: StopSignal; at: number } | undefined;
  let saving = false;
  let abortAfterSave = false;
  const exitCode = (s: StopSignal) => (s === "SIGINT" ? 130 : 143);
  const onSignal = (signal: StopSignal) => {
    const now = performance.now();
    if (!stop) {
      stop = { signal, at: now };
      console.error(
        `\n${o.label}: ${signal}: saving a checkpoint at the end of this step (again to abort)`,
      );
    } else if (now - stop.at < DUPLICATE_MS) {
      return; // the same signal, delivered twice
    } else if (saving) {
      if (!abortAfterSave) {
        console.error(`${o.label}: ${signal}: aborting once the save is on disk`);
      }
      abortAfterSave = true;
    } else {
      console.error(`${o.label}: ${signal}: aborted; the last checkpoint is kept`);
      Deno.exit(exitCode(stop.signal));
    }
  };
  const canListen = Deno.build.os !== "windows";
  const listeners = STOP_SIGNALS.map((s) => [s, () => onSignal(s)] as const);
  if (canListen) { for (const [s, f] of listeners) Deno.addSignalListener(s, f); }
  const bar = progress({ label: o.label, total: o.totalSteps, start: state.step, quiet: o.quiet });
  let lastSaved = state.step;
  const save = async (s: S) => {
    saving = true;
    try {
      await o.save!(s);
      lastSaved = s.step;
    } finally {
      saving = false;
    }
    if (abortAfterSave) Deno.exit(exitCode(stop!.signal));
  };
  try {
    while (state.step < o.totalSteps && !stop) {
      const r = await o.step(state);
      state = r.state;
      o.onStep?.(state.step, r.metrics);
      bar.tick(state.step, r.metrics);
      if (o.save && o.checkpointEvery && state.step % o.checkpointEvery === 0) await save(state);
      // Let timers and signal handlers run between steps.
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    if (o.save && state.step !== lastSaved) await save(state);
  } finally {
    bar.done();
    if (canListen) { for (const [s, f] of listeners) Deno.removeSignalListener(s, f); }
  }
  return { state, signal: stop?.signal };
}
