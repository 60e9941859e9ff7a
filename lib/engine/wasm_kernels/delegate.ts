// Run public tfjs ops inside a kernel function and hand their result back as the kernel's output,
// without a copy and without leaking: the engine counts tensors, the backend counts references.
import * as tf from "@tensorflow/tfjs";

/** The slice of the wasm backend the project kernels use (see tfjs-backend-wasm backend_wasm.ts). */
export interface WasmBackendLike {
  incRef(dataId: tf.DataId): void;
  makeOutput(shape: number[], dtype: tf.DataType): tf.TensorInfo;
  typedArrayFromHeap(t: tf.TensorInfo): tf.TypedArray;
}

// A Tensor over the same buffer as `info`; its own reference, released when a tidy disposes it.
function wrap(backend: WasmBackendLike, info: tf.TensorInfo): tf.Tensor {
  backend.incRef(info.dataId);
  return tf.engine().makeTensorFromTensorInfo(info);
}

/**
 * Compute a kernel's output with public ops. Inputs are wrapped as tensors, `fn` runs in a tidy,
 * and the result's buffer passes to the engine's output tensor: one extra backend reference is
 * taken before the temporary is disposed, so the output owns the buffer alone.
 * Inside a kernel the tape is off (the engine's kernelDepth > 0), so nothing here is recorded.
 */
export function delegate(
  backend: WasmBackendLike,
  inputs: readonly tf.TensorInfo[],
  fn: (...xs: tf.Tensor[]) => tf.Tensor,
): tf.TensorInfo {
  const out = tf.tidy(() => fn(...inputs.map((t) => wrap(backend, t))));
  backend.incRef(out.dataId);
  const info = { dataId: out.dataId, shape: out.shape.slice(), dtype: out.dtype };
  out.dispose();
  return info;
}

/** A kernel's named input; throws naming the kernel when it is missing. */
export function input(kernel: string, inputs: tf.NamedTensorInfoMap, name: string): tf.TensorInfo {
  const t = inputs[name];
  if (!t) throw new Error(`${kernel} (wasm_kernels): input "${name}" is missing`);
  return t;
}
