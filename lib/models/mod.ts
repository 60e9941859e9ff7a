// The model registry and the model-agnostic calls on a denoiser. Everything above lib/models/
// (pre-training, sampling, features, classifiers) goes through here and never imports a model
// file by name. A `ModelSpec` (kind, preset name, config) is what checkpoints record.
import * as tf from "@tensorflow/tfjs";
import { type Params, type ParamShapes, toVariables } from "../params.ts";
import { foldName, type Rng, uniformArray } from "../random.ts";
import type { BlockInfo, Condition, Conditioning, Denoiser, ModelKind } from "./denoiser.ts";
import { MODEL_KINDS } from "./denoiser.ts";
import * as unet from "./unet.ts";
import * as dit from "./dit.ts";
import { loadWeights } from "../io/torch_layout.ts";

export type { BlockInfo, Condition, Conditioning, Denoiser, ModelKind } from "./denoiser.ts";
export { CONDITIONS, MODEL_KINDS } from "./denoiser.ts";

/** A model as a checkpoint records it: its kind, the preset it started from, its full config. */
export type ModelSpec =
  | { readonly kind: "unet"; readonly name: string; readonly config: unet.UNetConfig }
  | { readonly kind: "dit"; readonly name: string; readonly config: dit.DiTConfig };

// deno-lint-ignore no-explicit-any
const REGISTRY: Readonly<Record<ModelKind, Denoiser<any>>> = {
  unet: unet.denoiser,
  dit: dit.denoiser,
};

// deno-lint-ignore no-explicit-any
function impl(spec: ModelSpec): Denoiser<any> {
  const d = REGISTRY[spec.kind];
  if (!d) throw new Error(`Unknown model kind "${spec.kind}": expected ${MODEL_KINDS.join(", ")}`);
  return d;
}

/** Preset names of a model kind. */
export function presetNames(kind: ModelKind): string[] {
  return Object.keys(REGISTRY[kind].presets);
}

/** How `presetSpec` conditions a preset: on class labels, or on an encoder's representation. */
export type ConditionSpec =
  | { readonly classes: number; readonly dropRate: number }
  | { readonly encoder: string };

/**
 * The spec of preset `name` of `kind`: unconditional, or conditioned as `cond` says.
 * @throws for an unknown preset, or a representation asked of a model without one
 */
export function presetSpec(kind: ModelKind, name: string, cond?: ConditionSpec): ModelSpec {
  const d = REGISTRY[kind];
  const base = d.presets[name];
  if (!base) {
    throw new Error(`Unknown ${kind} preset "${name}": expected ${presetNames(kind).join(", ")}`);
  }
  // A preset's own labels (DiT's paper sizes are ImageNet-conditional) give way to `cond`.
  const config = !cond ? unconditional(base) : "encoder" in cond
    ? d.withEncoder(base, cond.encoder) // which drops the preset's labels
    : d.conditioned(base, cond.classes, cond.dropRate);
  return { kind, name, config } as ModelSpec;
}

/**
 * `spec` made conditional on `classes` labels with label dropout `dropRate` (> 0 gives the null
 * label K): the architecture of a checkpoint, not of its preset. A DiT loses its
 * representation encoder (seed 000 §3.2 replaces it with the label table).
 * @throws for fewer than 2 classes or a dropout outside [0, 1)
 */
export function conditionedSpec(spec: ModelSpec, classes: number, dropRate: number): ModelSpec {
  if (!(Number.isInteger(classes) && classes >= 2)) {
    throw new Error(`A class-conditional model needs at least 2 classes, got ${classes}`);
  }
  if (!(dropRate >= 0 && dropRate < 1)) {
    throw new Error(`Label dropout ${dropRate} is outside [0, 1)`);
  }
  return { ...spec, config: impl(spec).conditioned(spec.config, classes, dropRate) } as ModelSpec;
}

// deno-lint-ignore no-explicit-any
function unconditional(c: any): any {
  const { numClasses: _drop, ...rest } = c;
  return rest;
}

export const paramShapes = (spec: ModelSpec): ParamShapes => impl(spec).paramShapes(spec.config);
export const initParams = (spec: ModelSpec, key: Rng): Params => impl(spec).init(spec.config, key);
export const inputShape = (spec: ModelSpec) => impl(spec).inputShape(spec.config);
export const learnSigma = (spec: ModelSpec): boolean => impl(spec).learnSigma(spec.config);
export const conditioning = (spec: ModelSpec): Conditioning | undefined =>
  impl(spec).conditioning(spec.config);
export const represented = (spec: ModelSpec): boolean => impl(spec).represented(spec.config);
/** What the model is conditioned on besides t. */
export const conditionOf = (spec: ModelSpec): Condition =>
  represented(spec) ? "repr" : conditioning(spec) ? "class" : "none";
export const blockTable = (spec: ModelSpec): readonly BlockInfo[] =>
  impl(spec).blockTable(spec.config);
export const referenceLayout = (spec: ModelSpec) => {
  const layout = impl(spec).referenceLayout;
  return { sameLayout: layout.sameLayout, fixed: layout.fixed?.(spec.config) ?? {} };
};

/**
 * The weights of `spec` from a file: a reference state_dict as it is (an official DiT or ADM
 * checkpoint converted by scripts/pt_to_safetensors.py; DiT's fixed `pos_embed` is checked
 * against `posEmbed(config)` and dropped) or a project checkpoint (its EMA weights).
 * @throws one Error naming every missing, unexpected or misshapen key
 */
export function loadModelWeights(spec: ModelSpec, path: string): Promise<Params> {
  const layout = referenceLayout(spec);
  return loadWeights(path, paramShapes(spec), {
    sameLayout: layout.sameLayout,
    fixed: layout.fixed,
  });
}

/** What `carryParams` kept, drew afresh and left behind. */
export interface Carried {
  readonly params: Params;
  /** Keys copied from the source (same name and shape). */
  readonly carried: readonly string[];
  /** Keys the target has and the source lacks (or shapes differently), freshly initialised. */
  readonly fresh: readonly string[];
  /** Source keys the target has no use for (e.g. a representation path). */
  readonly dropped: readonly string[];
}

/**
 * The parameters of `to` carried over from another model's `from` wherever a key and its shape
 * agree, the rest initialised as `to` initialises them from `key`: pre-trained weights moved to
 * the model that is tuned (seed 000 §3.2: the representation path dropped, a label table added).
 * The source is left as it was; the caller owns the result.
 */
export function carryParams(from: Params, to: ModelSpec, key: Rng): Carried {
  const shapes = paramShapes(to);
  const keys = Object.keys(shapes);
  const fits = (k: string) => from[k] !== undefined && from[k].shape.join() === shapes[k].join();
  const fresh = keys.filter((k) => !fits(k));
  const init = fresh.length > 0 ? initParams(to, key) : {};
  const values: Record<string, tf.Tensor> = {};
  for (const k of keys) values[k] = tf.clone(fits(k) ? from[k] : init[k]);
  for (const v of Object.values(init)) v.dispose();
  return {
    params: toVariables(values),
    carried: keys.filter(fits),
    fresh,
    dropped: Object.keys(from).filter((k) => !(k in shapes)),
  };
}

/**
 * Labels with each replaced by the null label K with probability p, the draws from `key`: the
 * one place label dropout happens, for every model.
 */
export function dropLabels(y: tf.Tensor1D, p: number, nullLabel: number, key: Rng): tf.Tensor1D {
  const u = uniformArray(key, y.shape[0]);
  const labels = y.dataSync();
  return tf.tensor1d(Array.from(labels, (v, i) => (u[i] < p ? nullLabel : v)), "int32");
}

/** Options of `denoise`. */
export interface DenoiseOptions {
  /** Labels in 0..K−1 (or K, the null label); required exactly when the model is conditional. */
  readonly y?: tf.Tensor1D;
  /** The clean input; required exactly when the model is representation-conditioned. */
  readonly x0?: tf.Tensor4D;
  /**
   * Training randomness: dropout masks, and label dropout at the model's rate. Absent in eval,
   * where labels are used as given.
   */
  readonly key?: Rng;
}

/** The network output for x_t [N, S, S, C] at timesteps t [N]: ε̂ (then v with learnSigma). */
export function denoise(
  spec: ModelSpec,
  p: Params,
  xt: tf.Tensor4D,
  t: tf.Tensor1D,
  o: DenoiseOptions = {},
): tf.Tensor4D {
  const d = impl(spec);
  const cond = d.conditioning(spec.config);
  if ((o.y !== undefined) !== (cond !== undefined)) {
    throw new Error(
      `${spec.kind} "${spec.name}": labels must be given exactly when the model is class-conditional`,
    );
  }
  if ((o.x0 !== undefined) !== d.represented(spec.config)) {
    throw new Error(
      `${spec.kind} "${spec.name}": the clean input must be given exactly when the model is ` +
        "representation-conditioned",
    );
  }
  const dropped = o.y && o.key && cond && cond.dropRate > 0
    ? dropLabels(o.y, cond.dropRate, cond.classes, foldName(o.key, "labels"))
    : undefined;
  try {
    return d.net(spec.config, p, xt, t, {
      y: dropped ?? o.y,
      x0: o.x0,
      dropoutKey: o.key && foldName(o.key, "dropout"),
    });
  } finally {
    dropped?.dispose();
  }
}

/**
 * Activations after blocks b (numbered as `blockTable`), each [N, h, w, channels], computed in
 * one pass that stops after the deepest block; the caller owns them.
 */
export function features(
  spec: ModelSpec,
  p: Params,
  xt: tf.Tensor4D,
  t: tf.Tensor1D,
  blocks: readonly number[],
  o: { readonly y?: tf.Tensor1D; readonly x0?: tf.Tensor4D } = {},
): Map<number, tf.Tensor4D> {
  return impl(spec).features(spec.config, p, xt, t, blocks, o);
}

/**
 * The model spec a checkpoint's metadata records. Checkpoints written before the registry kept
 * a bare U-Net config under `model` and its preset under `modelName`: read those as a U-Net.
 * @throws naming `source` when the metadata holds no model
 */
export function specFromMeta(config: unknown, source: string): ModelSpec {
  const c = config as Record<string, unknown> | undefined;
  const m = c?.model as Record<string, unknown> | undefined;
  if (!m || typeof m !== "object") {
    throw new Error(`${source} records no model in its metadata`);
  }
  if (typeof m.kind === "string") {
    if (!(MODEL_KINDS as readonly string[]).includes(m.kind) || typeof m.config !== "object") {
      throw new Error(`${source} records an unknown model kind "${m.kind}"`);
    }
    return m as unknown as ModelSpec;
  }
  // Legacy: { model: UNetConfig, modelName, classDropout? }.
  const drop = typeof c?.classDropout === "number" ? c.classDropout : 0;
  return {
    kind: "unet",
    name: String(c?.modelName ?? "unknown"),
    config: { ...(m as unknown as unet.UNetConfig), classDropout: drop },
  };
}
