// Project kernels for the tfjs wasm backend: conv gradients as forward convs, and
// UnsortedSegmentSum (gather's gradient). The BLAS kernels (../blas) may override some later.
import * as tf from "@tensorflow/tfjs";
import { conv2DBackpropFilterConfig, conv2DBackpropInputConfig } from "./conv_backprop.ts";
import { unsortedSegmentSumConfig } from "./segment_sum.ts";

export { conv2dFilterGrad, conv2dInputGrad } from "./conv_backprop.ts";

const KERNELS: readonly tf.KernelConfig[] = [
  conv2DBackpropFilterConfig,
  conv2DBackpropInputConfig,
  unsortedSegmentSumConfig,
];

// Built-in wasm kernels replaced here, kept for benchmarks that compare routes.
const builtins = new Map<string, tf.KernelConfig>();
let registered = false;

/**
 * Register the project's wasm kernels (replacing built-ins of the same name) and return their
 * names. Idempotent: later calls change nothing, so kernels layered on top (BLAS) stay in place.
 *
 * @example
 * ```ts
 * registerWasmKernels(); // ["Conv2DBackpropFilter", "Conv2DBackpropInput", "UnsortedSegmentSum"]
 * ```
 */
export function registerWasmKernels(): string[] {
  const names = KERNELS.map((k) => k.kernelName);
  if (registered) return names;
  for (const k of KERNELS) {
    const existing = tf.getKernel(k.kernelName, "wasm");
    if (existing) {
      builtins.set(k.kernelName, existing);
      tf.unregisterKernel(k.kernelName, "wasm");
    }
    tf.registerKernel(k);
  }
  registered = true;
  return names;
}

/** The project's wasm kernel configs, by kernel name. */
export function wasmKernelConfigs(): ReadonlyMap<string, tf.KernelConfig> {
  return new Map(KERNELS.map((k) => [k.kernelName, k]));
}

/**
 * The built-in wasm kernel that `registerWasmKernels` replaced, if any (for benchmarks). Its
 * `setupFunc` has not run when the backend was initialised after the replacement: call it first.
 */
export function builtinWasmKernel(name: string): tf.KernelConfig | undefined {
  return builtins.get(name);
}
