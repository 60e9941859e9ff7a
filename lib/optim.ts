// Optimisers as pure init/update pairs over flat parameter records (optax style). State is a flat
// record of named tensors plus a step count, so a checkpoint stores it as is and a resumed run
// continues with the same moments. `update` returns fresh tensors; the caller owns and disposes.
import * as tf from "@tensorflow/tfjs";
import type { Params, ParamShapes } from "./params.ts";
import { adamSteps, addPairs, emaBlends, sumOfSquares } from "./engine/fused/optim.ts";

/** Named tensors: gradients, updates, optimiser moments, EMA weights. */
export type Tensors = Readonly<Record<string, tf.Tensor>>;

/** Optimiser state: moments keyed `<slot>.<param name>`, and how many updates were made. */
export interface OptState {
  readonly count: number;
  readonly slots: Tensors;
}

export interface Optimizer {
  readonly name: string;
  init(params: Params): OptState;
  /** The slots `init` makes for parameters of these shapes (checkpoint loading checks them). */
  slotShapes(shapes: ParamShapes): ParamShapes;
  /** Updates to add to the parameters, and the next state (the old state is not disposed). */
  update(grads: Tensors, state: OptState, params: Params): { updates: Tensors; state: OptState };
}

export interface AdamOptions {
  /** @default 1e-4 (ADM and DiT both train with 1e-4) */
  readonly lr?: number | ((count: number) => number);
  /** @default 0.9 */
  readonly beta1?: number;
  /** @default 0.999 */
  readonly beta2?: number;
  /** @default 1e-8 */
  readonly eps?: number;
  /** Decoupled weight decay (AdamW); 0 gives Adam. @default 0 */
  readonly weightDecay?: number;
  /**
   * Each parameter's multiple of the learning rate, by name (torch's parameter groups: e.g. a
   * pre-trained backbone slower than a fresh head). @default 1 for every parameter
   */
  readonly lrScale?: (name: string) => number;
}

const lrAt = (lr: number | ((count: number) => number), count: number) =>
  typeof lr === "number" ? lr : lr(count);

/** Adam / AdamW with bias correction, as in torch.optim.AdamW. */
export function adam(opts: AdamOptions = {}): Optimizer {
  const { lr = 1e-4, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 0 } = opts;
  const scale = opts.lrScale ?? (() => 1);
  return {
    name: weightDecay > 0 ? "adamw" : "adam",
    init: (params) => {
      const slots: Record<string, tf.Tensor> = {};
      for (const [k, v] of Object.entries(params)) {
        slots[`m.${k}`] = tf.zerosLike(v);
        slots[`v.${k}`] = tf.zerosLike(v);
      }
      return { count: 0, slots };
    },
    slotShapes: (shapes) =>
      Object.fromEntries(
        Object.entries(shapes).flatMap(([k, s]) => [[`m.${k}`, s], [`v.${k}`, s]]),
      ),
    update: (grads, state, params) =>
      tf.tidy(() => {
        const count = state.count + 1;
        const a = lrAt(lr, state.count);
        // Bias corrections folded into the step size (Kingma & Ba, Alg. 1, last paragraph of §2).
        const stepSize = a * Math.sqrt(1 - beta2 ** count) / (1 - beta1 ** count);
        const base = {
          beta1,
          beta2,
          epsHat: eps * Math.sqrt(1 - beta2 ** count),
          stepSize,
          decay: weightDecay > 0 ? a * weightDecay : 0,
        };
        const names = Object.keys(grads);
        // m, v, u of every parameter in one kernel on wasm (composed ops elsewhere): see
        // engine/fused/optim.ts.
        const steps = adamSteps(names.map((k) => {
          const r = scale(k);
          return {
            g: grads[k],
            m: state.slots[`m.${k}`],
            v: state.slots[`v.${k}`],
            p: params[k],
            step: r === 1 ? base : { ...base, stepSize: r * stepSize, decay: r * base.decay },
          };
        }));
        const updates: Record<string, tf.Tensor> = {};
        const slots: Record<string, tf.Tensor> = {};
        names.forEach((k, i) => {
          slots[`m.${k}`] = steps[i].m;
          slots[`v.${k}`] = steps[i].v;
          updates[k] = steps[i].u;
        });
        return { updates, state: { count, slots } };
      }),
  };
}

export interface SgdOptions {
  readonly lr: number | ((count: number) => number);
  /** @default 0 (the diffssl probes use plain SGD) */
  readonly momentum?: number;
  /** @default 0 */
  readonly weightDecay?: number;
}

/** SGD with optional momentum and L2 weight decay, as torch.optim.SGD. */
export function sgd(opts: SgdOptions): Optimizer {
  const { lr, momentum = 0, weightDecay = 0 } = opts;
  return {
    name: "sgd",
    init: (params) => {
      const slots: Record<string, tf.Tensor> = {};
      if (momentum > 0) {
        for (const [k, v] of Object.entries(params)) slots[`b.${k}`] = tf.zerosLike(v);
      }
      return { count: 0, slots };
    },
    slotShapes: (shapes) =>
      momentum > 0 ? Object.fromEntries(Object.entries(shapes).map(([k, s]) => [`b.${k}`, s])) : {},
    update: (grads, state, params) =>
      tf.tidy(() => {
        const a = lrAt(lr, state.count);
        const updates: Record<string, tf.Tensor> = {};
        const slots: Record<string, tf.Tensor> = {};
        for (const [k, g0] of Object.entries(grads)) {
          let g = weightDecay > 0 ? tf.add(g0, tf.mul(params[k], weightDecay)) : g0;
          if (momentum > 0) {
            // torch: the first step's buffer is the gradient itself.
            g = state.count === 0
              ? tf.clone(g)
              : tf.add(tf.mul(state.slots[`b.${k}`], momentum), g);
            slots[`b.${k}`] = g;
          }
          updates[k] = tf.mul(g, -a);
        }
        return { updates, state: { count: state.count + 1, slots } };
      }),
  };
}

/** Global L2 norm of a set of gradients, as a number. */
export function globalNorm(grads: Tensors): number {
  return Math.sqrt(sumOfSquares(Object.values(grads)));
}

/**
 * Scale gradients so their global norm is at most `maxNorm` (torch.nn.utils.clip_grad_norm_).
 * Returns new tensors and the norm before clipping.
 */
export function clipByGlobalNorm(
  grads: Tensors,
  maxNorm: number,
): { grads: Tensors; norm: number } {
  const norm = globalNorm(grads);
  const scale = Math.min(1, maxNorm / (norm + 1e-6));
  const out: Record<string, tf.Tensor> = {};
  for (const [k, g] of Object.entries(grads)) out[k] = scale < 1 ? tf.mul(g, scale) : tf.clone(g);
  return { grads: out, norm };
}

/** Add updates to the parameters in place (variables keep their identity), then free them. */
export function applyUpdates(params: Params, updates: Tensors): void {
  const names = Object.keys(updates);
  const unknown = names.find((k) => !params[k]);
  if (unknown !== undefined) throw new Error(`Update for unknown parameter "${unknown}"`);
  // One kernel for all sums on wasm; assign() inside tidy: each sum is freed once its variable
  // holds the data.
  tf.tidy(() => {
    const sums = addPairs(names.map((k) => params[k]), names.map((k) => updates[k]));
    names.forEach((k, i) => params[k].assign(sums[i]));
  });
  for (const u of Object.values(updates)) u.dispose();
}

/** Free every tensor of an optimiser state or record. */
export function disposeTensors(ts: Tensors | OptState): void {
  const rec = "slots" in ts && typeof ts.count === "number"
    ? (ts as OptState).slots
    : (ts as Tensors);
  for (const t of Object.values(rec)) t.dispose();
}

// ---------------------------------------------------------------------------------------------
// Exponential moving average of weights (a second parameter record, as in haiku's examples).

/** A copy of the parameters to average into. */
export function emaInit(params: Params): Tensors {
  const out: Record<string, tf.Tensor> = {};
  for (const [k, v] of Object.entries(params)) out[k] = tf.clone(v);
  return out;
}

/**
 * The rate of update number `updates` (0-based): min(rate, (1 + n) / (10 + n)), TensorFlow's
 * `num_updates` warm-up. Without it a short run's average keeps most of the initial weights
 * (0.999 over 600 steps leaves 0.999⁶⁰⁰ ≈ 55 % of them).
 */
export function emaRateAt(rate: number, updates: number): number {
  return Math.min(rate, (1 + updates) / (10 + updates));
}

/** ema ← rate·ema + (1 − rate)·params; returns the new record and frees the old one. */
export function emaUpdate(ema: Tensors, params: Params, rate: number): Tensors {
  const names = Object.keys(ema);
  const blended = emaBlends(names.map((k) => ema[k]), names.map((k) => params[k]), rate);
  for (const e of Object.values(ema)) e.dispose();
  return Object.fromEntries(names.map((k, i) => [k, blended[i]]));
}
