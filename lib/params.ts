// Models are pure functions over flat parameter records whose keys are the reference PyTorch
// state_dict names (e.g. `input_blocks.1.0.in_layers.2.weight`). Layout is tfjs-native:
// conv kernels [kh, kw, in, out], linear weights [in, out]; io/ converts from PyTorch.
import * as tf from "@tensorflow/tfjs";
import { releaseOffHeap } from "./offheap_params.ts";

/** Trainable parameters keyed by state_dict name. */
export type Params = Readonly<Record<string, tf.Variable>>;

/** Parameter shapes keyed by name: computed from a config alone, without allocating tensors. */
export type ParamShapes = Readonly<Record<string, readonly number[]>>;

/** Number of scalars in a set of shapes. */
export function countParams(shapes: ParamShapes): number {
  let n = 0;
  for (const s of Object.values(shapes)) n += s.reduce((a, b) => a * b, 1);
  return n;
}

/** Wrap plain tensors as named variables (the variables take ownership of the values). */
export function toVariables(values: Readonly<Record<string, tf.Tensor>>, trainable = true): Params {
  const out: Record<string, tf.Variable> = {};
  for (const [name, t] of Object.entries(values)) {
    out[name] = tf.variable(t, trainable, undefined, "float32");
    t.dispose();
  }
  return out;
}

/** Dispose every variable of a record (an off-heap record drops its arrays instead). */
export function disposeParams(p: Params): void {
  if (releaseOffHeap(p)) return;
  for (const v of Object.values(p)) v.dispose();
}
