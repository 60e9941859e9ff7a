// Checkpoints as one safetensors file that a training run can resume from. Key layout:
//   <name>        parameters, named as given (the reference state_dict keys)
//   ema.<name>    EMA parameters
//   opt.<key>     optimiser state, a flat record as the optimiser exposes it (e.g. opt.m.<name>)
// `__metadata__` holds {format, step, meta: JSON} (meta: rng state, config, whatever the caller
// passes). Parameters keep their plain names so the file also loads as a bare weights file.
import * as tf from "@tensorflow/tfjs";
import { readSafetensors, type TensorIn, writeSafetensors } from "./safetensors.ts";
import { type Params, type ParamShapes, toVariables } from "../params.ts";

export const EMA_PREFIX = "ema.";
export const OPT_PREFIX = "opt.";
const FORMAT = "dp-checkpoint/1";

type Named = Readonly<Record<string, tf.Tensor>>;

/** What a checkpoint holds. Tensors may be plain tensors or variables (float32, int32 or bool). */
export interface CheckpointState {
  readonly params: Named;
  readonly ema?: Named;
  readonly optState?: Named;
  /** Optimiser steps taken so far. */
  readonly step: number;
  /** JSON-serialisable extras: rng seed/state, config, data position. */
  readonly meta?: Readonly<Record<string, unknown>>;
}

/** A loaded checkpoint; the caller owns (and must dispose) every tensor. */
export interface LoadedCheckpoint {
  readonly params: Record<string, tf.Tensor>;
  readonly ema: Record<string, tf.Tensor>;
  readonly optState: Record<string, tf.Tensor>;
  /** Undefined for a bare weights file (one not written by `saveCheckpoint`). */
  readonly step: number | undefined;
  readonly meta: Record<string, unknown>;
}

async function toTensorIn(name: string, t: tf.Tensor): Promise<TensorIn> {
  if (t.dtype === "float32") {
    return { dtype: "F32", shape: t.shape, data: (await t.data()) as Float32Array };
  }
  if (t.dtype === "int32" || t.dtype === "bool") {
    return {
      dtype: "I32",
      shape: t.shape,
      data: Int32Array.from(await t.data() as ArrayLike<number>),
    };
  }
  throw new Error(`Cannot checkpoint tensor "${name}" of dtype ${t.dtype}`);
}

/**
 * Save a checkpoint atomically: a crash mid-save leaves the previous checkpoint intact.
 * @throws if a parameter name starts with a reserved prefix (`ema.`, `opt.`) or a dtype is unsupported
 */
export async function saveCheckpoint(path: string, state: CheckpointState): Promise<void> {
  const clash = Object.keys(state.params).filter((k) =>
    k.startsWith(EMA_PREFIX) || k.startsWith(OPT_PREFIX)
  );
  if (clash.length > 0) {
    throw new Error(
      `Parameter names use a reserved checkpoint prefix: ${clash.map((k) => `"${k}"`).join(", ")}`,
    );
  }
  if (!Number.isSafeInteger(state.step) || state.step < 0) {
    throw new Error(`Bad checkpoint step ${state.step}`);
  }
  const groups: [string, Named][] = [["", state.params], [EMA_PREFIX, state.ema ?? {}], [
    OPT_PREFIX,
    state.optState ?? {},
  ]];
  const tensors: Record<string, TensorIn> = {};
  for (const [prefix, group] of groups) {
    for (const [name, t] of Object.entries(group)) {
      tensors[prefix + name] = await toTensorIn(prefix + name, t);
    }
  }
  const metadata = {
    format: FORMAT,
    step: String(state.step),
    meta: JSON.stringify(state.meta ?? {}),
  };
  await writeSafetensors(path, tensors, metadata);
}

/**
 * Load a checkpoint (or a bare safetensors weights file), grouping tensors by prefix.
 * @throws one-line Error naming the file and the fault on a missing, truncated or corrupt file
 */
export async function loadCheckpoint(path: string): Promise<LoadedCheckpoint> {
  const { tensors, metadata } = await readSafetensors(path);
  let step: number | undefined;
  let meta: Record<string, unknown> = {};
  if (metadata.format !== undefined) {
    if (metadata.format !== FORMAT) {
      throw new Error(`Checkpoint "${path}" has format "${metadata.format}", expected "${FORMAT}"`);
    }
    step = Number(metadata.step);
    try {
      meta = JSON.parse(metadata.meta ?? "{}");
    } catch (e) {
      throw new Error(`Checkpoint "${path}" has unreadable meta JSON: ${(e as Error).message}`);
    }
    if (!Number.isSafeInteger(step)) {
      throw new Error(`Checkpoint "${path}" has a bad step "${metadata.step}"`);
    }
  }
  const out: LoadedCheckpoint = { params: {}, ema: {}, optState: {}, step, meta };
  for (const [key, t] of Object.entries(tensors)) {
    const [group, name] = key.startsWith(EMA_PREFIX)
      ? [out.ema, key.slice(EMA_PREFIX.length)]
      : key.startsWith(OPT_PREFIX)
      ? [out.optState, key.slice(OPT_PREFIX.length)]
      : [out.params, key];
    group[name] = tf.tensor(t.data, t.shape, t.data instanceof Float32Array ? "float32" : "int32");
  }
  return out;
}

/** Dispose every tensor of a loaded checkpoint. */
export function disposeCheckpoint(c: LoadedCheckpoint): void {
  for (const group of [c.params, c.ema, c.optState]) tf.dispose(Object.values(group));
}

const fmtShape = (s: readonly number[]) => `[${s.join(", ")}]`;

/**
 * Check loaded tensors key-for-key against a model's shapes and wrap them as variables.
 * On success the matching tensors are taken over (disposed after copying into variables);
 * on failure nothing is disposed.
 * @param source names the checkpoint in the error message
 * @throws one Error listing every missing, extra and misshapen key
 */
export function loadParamsStrict(
  expected: ParamShapes,
  tensors: Readonly<Record<string, tf.Tensor>>,
  source = "checkpoint",
): Params {
  const missing = Object.keys(expected).filter((k) => !(k in tensors));
  const extra = Object.keys(tensors).filter((k) => !(k in expected));
  const misshapen = Object.keys(expected)
    .filter((k) => k in tensors && fmtShape(tensors[k].shape) !== fmtShape(expected[k]))
    .map((k) => `${k} expected ${fmtShape(expected[k])} got ${fmtShape(tensors[k].shape)}`);
  const parts = [
    missing.length > 0 ? `${missing.length} missing (${missing.join(", ")})` : "",
    extra.length > 0 ? `${extra.length} unexpected (${extra.join(", ")})` : "",
    misshapen.length > 0 ? `${misshapen.length} misshapen (${misshapen.join("; ")})` : "",
  ].filter((p) => p !== "");
  if (parts.length > 0) {
    throw new Error(`Parameters in ${source} do not match the model: ${parts.join("; ")}`);
  }
  return toVariables(tensors);
}
