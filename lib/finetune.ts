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
import { countParams, disposeParams, type Params } from "./params.ts";
import { features, inputShape, represented } from "./models/mod.ts";
import { adaptiveAvgPool } from "./models/nn.ts";
import type { Classifier } from "./probe.ts";
import type { ProbeSetup } from "./probe_run.ts";
import { progress } from "./progress.ts";
import { fold, foldName, normal, type Rng } from "./random.ts";
import { take } from "./data/dataset.ts";
import { fitClassifier, type FitResult, predictLabels } from "./downstream.ts";

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

/** What trains: see `trainOnCell`. */
export const FINETUNE_MODES = ["finetune", "frozen", "scratch"] as const;
export type FinetuneMode = (typeof FINETUNE_MODES)[number];

export interface TrainOnCellOptions {
  readonly epochs: number;
  /** Adam's learning rate of the head (of every parameter for scratch). */
  readonly lr: number;
  /** finetune: the pre-trained backbone's learning rate. */
  readonly backboneLr: number;
  readonly batch: number;
  readonly patience?: number;
  /** Head init, noise and batch orders. */
  readonly key: Rng;
  /** Progress line label; none when quiet. */
  readonly label: string;
  readonly quiet?: boolean;
}

/**
 * Train the cell's classifier on the fit part of `s.train`, select the epoch on its validation
 * part, and predict `s.test`:
 *   finetune  the reached backbone at `backboneLr` and the head at `lr`
 *   frozen    the head alone (the linear probe)
 *   scratch   every reached parameter at `lr` (`s` loaded with fresh weights: `random-weights`)
 * The model's weights are trained in place and disposed with the head at the end.
 */
export async function trainOnCell(
  s: ProbeSetup,
  cell: Cell,
  mode: FinetuneMode,
  o: TrainOnCellOptions,
): Promise<{ fit: FitResult; pred: Int32Array; trainedParams: number; paramCount: number }> {
  const model = featureClassifier(
    s.loaded.model,
    cell,
    s.classes,
    foldName(o.key, "head"),
    foldName(o.key, "noise"),
  );
  const trainable = mode === "frozen" ? model.head : model.trainable;
  const head = new Set(model.head);
  const bar = progress({ label: o.label, total: o.epochs, quiet: o.quiet });
  const fit = await fitClassifier(model, take(s.train, s.fit), take(s.train, s.val), {
    epochs: o.epochs,
    lr: o.lr,
    lrScale: mode === "finetune" ? (k) => (head.has(k) ? 1 : o.backboneLr / o.lr) : undefined,
    trainable,
    batch: o.batch,
    patience: o.patience,
    key: foldName(o.key, "order"),
    onEpoch: (e) => bar.tick(e.epoch, { loss: e.train_loss, valid: e.valid_accuracy }),
  });
  bar.done();
  const pred = await predictLabels(model, s.test, 128);
  const trainedParams = trainable.reduce((n, k) => n + model.params[k].size, 0);
  disposeParams(model.params);
  return { fit, pred, trainedParams, paramCount: model.paramCount };
}
