// Identity for wasm without the copy: the output shares the input's buffer, as Reshape does on
// wasm and Identity does on cpu. tfjs runs Identity for every tensor a gradient saves
// (`saveTensors` → `keep(clone)`), ~1,000 times per U-Net train step, and the built-in kernel
// copies each one. Sharing is safe because no wasm kernel writes into its inputs: buffers are
// only freed when the last reference (backend refCount) goes.
import * as tf from "@tensorflow/tfjs";
import { input, type WasmBackendLike } from "./delegate.ts";

function identityKernel(
  { inputs, backend }: { inputs: tf.NamedTensorInfoMap; backend: unknown },
): tf.TensorInfo {
  const x = input(tf.Identity, inputs, "x");
  (backend as WasmBackendLike).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape.slice(), dtype: x.dtype };
}

/** Identity on wasm: a new reference to the input's buffer, no copy. */
export const identityConfig: tf.KernelConfig = {
  kernelName: tf.Identity,
  backendName: "wasm",
  kernelFunc: identityKernel as unknown as tf.KernelFunc,
};
