// One generic training loop: a gradient step over a flat params record (clip → optimiser → EMA),
// and a driver that runs steps with progress, periodic checkpoints, and a checkpoint on Ctrl-C.
import * as tf from "@tensorflow/tfjs";
import type { Params } from "./params.ts";
import {
  applyUpdates,
  clipByGlobalNorm,
  disposeTensors,
  emaInit,
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
  /** EMA rate; the average is skipped when undefined. */
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

/**
 * One optimisation step on `loss()` (a scalar built from the params). Variables are updated in
 * place; the old optimiser state and EMA are freed. Returns the loss and the gradient norm.
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
  // Without clipping the raw gradients go to the optimiser as they are (no copies).
  const clipped = opts.clipNorm === undefined ? undefined : clipByGlobalNorm(raw, opts.clipNorm);
  const grads = clipped?.grads ?? raw;
  const norm = clipped?.norm ?? globalNorm(raw);
  if (clipped) disposeTensors(raw);
  const { updates, state: opt } = opts.optimizer.update(grads, state.opt, trained);
  disposeTensors(grads);
  applyUpdates(trained, updates);
  disposeTensors(state.opt);
  const ema = state.ema && opts.emaRate !== undefined
    ? emaUpdate(state.ema, state.params, opts.emaRate)
    : state.ema;
  const lossValue = value.dataSync()[0];
  value.dispose();
  if (!Number.isFinite(lossValue)) {
    throw new Error(`Loss is ${lossValue} at step ${state.step + 1}`);
  }
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
  /** Save a checkpoint; called every `checkpointEvery` steps, at the end, and on Ctrl-C. */
  readonly save?: (state: S) => Promise<void>;
  readonly checkpointEvery?: number;
  /** Called after every step with its metrics (e.g. to record a loss curve). */
  readonly onStep?: (step: number, metrics: Record<string, number>) => void;
  readonly quiet?: boolean;
}

/**
 * Run steps until `totalSteps`, with a progress line. Ctrl-C (SIGINT) finishes the step in
 * flight, saves a checkpoint and returns with `interrupted: true`, so rerunning the same command
 * resumes where it stopped.
 */
export async function runLoop<S extends { readonly step: number }>(
  initial: S,
  o: LoopOptions<S>,
): Promise<{ state: S; interrupted: boolean }> {
  let state = initial;
  let interrupted = false;
  const onSigint = () => {
    if (interrupted) Deno.exit(130); // a second Ctrl-C does not wait for the checkpoint
    interrupted = true;
    console.error(
      `\n${o.label}: interrupted, saving a checkpoint at the end of this step (Ctrl-C again to abort)`,
    );
  };
  const canListen = Deno.build.os !== "windows";
  if (canListen) Deno.addSignalListener("SIGINT", onSigint);
  const bar = progress({ label: o.label, total: o.totalSteps, start: state.step, quiet: o.quiet });
  let lastSaved = state.step;
  try {
    while (state.step < o.totalSteps && !interrupted) {
      const r = await o.step(state);
      state = r.state;
      o.onStep?.(state.step, r.metrics);
      bar.tick(state.step, r.metrics);
      if (o.save && o.checkpointEvery && state.step % o.checkpointEvery === 0) {
        await o.save(state);
        lastSaved = state.step;
      }
      // Let timers and signal handlers run between steps.
      await new Promise((resolve) => setTimeout(resolve, 0));
    }
    if (o.save && state.step !== lastSaved) await o.save(state);
  } finally {
    bar.done();
    if (canListen) Deno.removeSignalListener("SIGINT", onSigint);
  }
  return { state, interrupted };
}
