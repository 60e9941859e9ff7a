// Identity, and Cast to the same dtype, for wasm without the copy: the output shares the input's
// buffer, as Reshape does on wasm and Identity does on cpu. tfjs runs Identity for every tensor a
// gradient saves (`saveTensors` → `keep(clone)`), ~1,000 times per U-Net train step, and
// Multiply's gradient casts both float32 operands to float32; the built-in kernels copy each
// one. Sharing is safe because no wasm kernel writes into its inputs: buffers are only freed
// when the last reference (backend refCount) goes. A cast of numbers to bool is done here too:
// the built-in one keeps the low byte of the integer part (1.5, -2.5, 3 → 1, 254, 3).
import * as tf from "@tensorflow/tfjs";
import { input, type WasmBackendLike } from "./delegate.ts";
import { runBuiltin } from "./builtins.ts";
import type { WasmHeapBackend } from "./copy.ts";

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

function castKernel(args: Parameters<tf.KernelFunc>[0]): tf.TensorInfo {
  const x = input(tf.Cast, args.inputs, "x");
  const { dtype } = args.attrs as unknown as { dtype: tf.DataType };
  if (dtype === "bool" && (x.dtype === "float32" || x.dtype === "int32")) return toBool(args, x);
  if (x.dtype !== dtype) return runBuiltin(tf.Cast, args) as tf.TensorInfo;
  (args.backend as unknown as WasmBackendLike).incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape.slice(), dtype };
}

/** x ≠ 0 as bool (NaN is true, as in tfjs's cpu backend and numpy). */
function toBool(args: Parameters<tf.KernelFunc>[0], x: tf.TensorInfo): tf.TensorInfo {
  const b = args.backend as unknown as WasmHeapBackend;
  const out = b.makeOutput(x.shape.slice(), "bool");
  const n = x.shape.reduce((p, d) => p * d, 1);
  const at = (t: tf.TensorInfo) => b.dataIdMap.get(t.dataId)!.memoryOffset;
  const heap = b.wasm.HEAPU8.buffer; // after makeOutput, which may grow the heap
  const xs = x.dtype === "float32"
    ? new Float32Array(heap, at(x), n)
    : new Int32Array(heap, at(x), n);
  const ys = new Uint8Array(heap, at(out), n);
  for (let i = 0; i < n; i++) ys[i] = xs[i] !== 0 ? 1 : 0;
  return out;
}

/** Cast on wasm: to the same dtype a new reference to the input's buffer, else the built-in. */
export const castConfig: tf.KernelConfig = {
  kernelName: tf.Cast,
  backendName: "wasm",
  kernelFunc: castKernel,
};
