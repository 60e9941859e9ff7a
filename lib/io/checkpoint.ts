// Checkpoints as one safetensors file that a training run can resume from. Key layout:
//   <name>        parameters, named as given (the reference state_dict keys)
//   ema.<name>    EMA parameters
//   opt.<key>     optimiser state, a flat record as the optimiser exposes it (e.g. opt.m.<name>)
// `__metadata__` holds {format, step, meta: JSON, checksums: JSON} (meta: config, loss curve,
// whatever the caller passes; checksums: the CRC-32 of every tensor's bytes, checked on load).
// Parameters keep their plain names so the file also loads as a bare weights file.
import * as tf from "@tensorflow/tfjs";
import { type Dtype, readSafetensors, type TensorIn, writeSafetensors } from "./safetensors.ts";
import { crc32Hex } from "./crc32.ts";
import { shortList } from "../messages.ts";
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
  /** The stored dtype of every tensor, by full key (`ema.x`, `opt.m.x`). */
  readonly dtypes: Record<string, Dtype>;
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
  const checksums: Record<string, string> = {};
  for (const [prefix, group] of groups) {
    for (const [name, t] of Object.entries(group)) {
      const data = await toTensorIn(prefix + name, t);
      tensors[prefix + name] = data;
      checksums[prefix + name] = crc32Hex(data.data);
    }
  }
  const metadata = {
    format: FORMAT,
    step: String(state.step),
    meta: JSON.stringify(state.meta ?? {}),
    checksums: JSON.stringify(checksums),
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
  if (metadata.checksums !== undefined) {
    const bad = checksumFaults(tensors, metadata.checksums);
    if (bad.length > 0) {
      throw new Error(`Checkpoint "${path}" is damaged: ${shortList(bad, 5)}`);
    }
  }
  const out: LoadedCheckpoint = { params: {}, ema: {}, optState: {}, step, meta, dtypes: {} };
  for (const [key, t] of Object.entries(tensors)) {
    const [group, name] = key.startsWith(EMA_PREFIX)
      ? [out.ema, key.slice(EMA_PREFIX.length)]
      : key.startsWith(OPT_PREFIX)
      ? [out.optState, key.slice(OPT_PREFIX.length)]
      : [out.params, key];
    group[name] = tf.tensor(t.data, t.shape, t.data instanceof Float32Array ? "float32" : "int32");
    out.dtypes[key] = t.dtype;
  }
  return out;
}

// Tensors whose bytes do not match the CRC-32 saved with them (or that have none, or vanished).
function checksumFaults(
  tensors: Readonly<Record<string, { readonly data: Float32Array | Int32Array }>>,
  json: string,
): string[] {
  let sums: Record<string, string>;
  try {
    sums = JSON.parse(json);
  } catch {
    return ["unreadable checksums"];
  }
  const faults = Object.keys(tensors)
    .filter((k) => !(k in sums) || sums[k] !== crc32Hex(tensors[k].data))
    .map((k) => (k in sums ? `${k} fails its checksum` : `${k} has no checksum`));
  for (const k of Object.keys(sums)) if (!(k in tensors)) faults.push(`${k} is missing`);
  return faults;
}

/** What a training checkpoint must hold, group by group (all float32). */
export interface ExpectedGroups {
  readonly params: ParamShapes;
  /** Undefined: the run keeps no EMA, so the file must hold none. */
  readonly ema?: ParamShapes;
  readonly opt: ParamShapes;
}

/**
 * Every fault of a loaded training checkpoint against what the model and optimiser expect:
 * missing, unexpected and misshapen keys in each group, stored dtypes other than F32, and
 * non-finite values. Empty when it is sound.
 */
export function checkpointFaults(ck: LoadedCheckpoint, want: ExpectedGroups): string[] {
  const groups: [string, Readonly<Record<string, tf.Tensor>>, ParamShapes][] = [
    ["", ck.params, want.params],
    [EMA_PREFIX, ck.ema, want.ema ?? {}],
    [OPT_PREFIX, ck.optState, want.opt],
  ];
  const faults: string[] = [];
  for (const [prefix, got, shapes] of groups) {
    for (const k of Object.keys(shapes)) if (!(k in got)) faults.push(`${prefix}${k} is missing`);
    for (const [k, t] of Object.entries(got)) {
      const key = prefix + k;
      if (!(k in shapes)) faults.push(`${key} is unexpected`);
      else if (fmtShape(t.shape) !== fmtShape(shapes[k])) {
        faults.push(`${key} is ${fmtShape(t.shape)}, expected ${fmtShape(shapes[k])}`);
      } else if (ck.dtypes[key] !== undefined && ck.dtypes[key] !== "F32") {
        faults.push(`${key} is ${ck.dtypes[key]}, expected F32`);
      } else if (!tf.tidy(() => tf.all(tf.isFinite(t)).dataSync()[0])) {
        faults.push(`${key} holds non-finite values`);
      }
    }
  }
  return faults;
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
    missing.length > 0 ? `${missing.length} missing (${shortList(missing, 5)})` : "",
    extra.length > 0 ? `${extra.length} unexpected (${shortList(extra, 5)})` : "",
    misshapen.length > 0 ? `${misshapen.length} misshapen (${shortList(misshapen, 3)})` : "",
  ].filter((p) => p !== "");
  if (parts.length > 0) {
    throw new Error(`Parameters in ${source} do not match the model: ${parts.join("; ")}`);
  }
  return toVariables(tensors);
}
