// Fine-tuning a diffusion denoiser's encoder as a classifier (seed 001 §4.1, Table 2: "we treat
// the pre-training method as an expensive weight initialization method, and retrain the entire
// architecture"). The classifier is the frozen probe's path made trainable:
//
//   x0 → x_t = q_sample(x0, t, ε) → the denoiser up to block b → adaptive avg-pool k×k → Linear
//
// with every parameter the pass reaches trained (the blocks after b get no gradient and are left
// out), the backbone at a lower learning rate than the fresh head. ε is drawn afresh at every
// call, from `fold(noiseKey, call)`: noise acts as augmentation in training, and a seed replays
// the same sequence. At the small t the probes choose (ᾱ_t ≈ 1) it barely moves x_t.
import * as tf from "@tensorflow/tfjs";
import { qSample } from "./diffusion/gaussian.ts";
import { type Cell, cellShape, type FrozenModel, nullLabels } from "./features.ts";
import { applyHead, headParamCount, initHead } from "./models/heads.ts";
import { countParams, type Params } from "./params.ts";
import { features, inputShape, represented } from "./models/mod.ts";
import { adaptiveAvgPool } from "./models/nn.ts";
import type { Classifier } from "./probe.ts";
import { fold, normal, type Rng } from "./random.ts";

/** A fine-tunable classifier, and which of its parameters train. */
export interface FeatureClassifier extends Classifier {
  /** Backbone parameters the pass to block b reaches, then the head's. */
  readonly trainable: readonly string[];
  /** The head's parameter names (the rest of `trainable` is backbone). */
  readonly head: readonly string[];
}

/**
 * The classifier of one cell (t, block, pool) on `model`'s weights, which it takes over (they
 * are trained in place; the caller disposes `params` once done). The linear head is initialised
 * from `key`; ε of call n comes from `fold(noiseKey, n)`.
 */
export function featureClassifier(
  model: FrozenModel,
  cell: Cell,
  classes: number,
  key: Rng,
  noiseKey: Rng,
): FeatureClassifier {
  const headShape = cellShape(model.spec, cell);
  const headParams = initHead({ kind: "linear" }, headShape, classes, key);
  const clash = Object.keys(headParams).filter((k) => k in model.params);
  if (clash.length > 0) throw new Error(`Head parameters clash with the model's: ${clash}`);
  const params: Params = { ...model.params, ...headParams };
  let calls = 0;
  const apply = (p: Params, x: tf.Tensor4D): tf.Tensor2D =>
    tf.tidy(() => {
      const n = x.shape[0];
      const eps = normal(fold(noiseKey, calls++), x.shape) as tf.Tensor4D;
      const xt = qSample(model.schedule, x, cell.t, eps);
      const tt = tf.fill([n], cell.t, "int32") as tf.Tensor1D;
      const y = nullLabels(model.spec, n);
      const clean = represented(model.spec) ? x : undefined;
      const maps = features(model.spec, p, xt, tt, [cell.block], { y, x0: clean });
      const pooled = adaptiveAvgPool(maps.get(cell.block)!, cell.pool);
      return applyHead({ kind: "linear" }, p, pooled);
    });
  const head = Object.keys(headParams);
  const backbone = reached(model, apply, params);
  calls = 0; // the probe pass above does not count: training starts at call 0
  const shapes = Object.fromEntries(backbone.map((k) => [k, params[k].shape]));
  return {
    params,
    apply,
    trainable: [...backbone, ...head],
    head,
    paramCount: countParams(shapes) + headParamCount({ kind: "linear" }, headShape, classes),
  };
}

/** The model's parameters a pass to the cell's block depends on (by a gradient on 1 image). */
function reached(
  model: FrozenModel,
  apply: (p: Params, x: tf.Tensor4D) => tf.Tensor2D,
  params: Params,
): string[] {
  const x = tf.zeros([1, ...inputShape(model.spec)]) as tf.Tensor4D;
  const names = Object.keys(model.params);
  const { value, grads } = tf.variableGrads(
    () => tf.sum(apply(params, x)) as tf.Scalar,
    names.map((k) => params[k]),
  );
  const got = new Set(Object.keys(grads));
  tf.dispose([x, value, ...Object.values(grads)]);
  return names.filter((k) => got.has(params[k].name));
}
