// Project kernels for the tfjs wasm backend: conv gradients as forward convs, UnsortedSegmentSum
// (gather's gradient), copy-free Identity and same-dtype Cast, heap-copy Concat / SplitV /
// Transpose, threaded Add / Sub / Multiply, leading-axis Sum and tiled AvgPoolGrad. The BLAS
// kernels (../blas) may override some later.
import * as tf from "@tensorflow/tfjs";
import { conv2DBackpropFilterConfig, conv2DBackpropInputConfig } from "./conv_backprop.ts";
import { unsortedSegmentSumConfig } from "./segment_sum.ts";
import { castConfig, identityConfig } from "./identity.ts";
import { concatConfig, splitVConfig, transposeConfig } from "./copy.ts";
import { addConfig, multiplyConfig, subConfig } from "./binary.ts";
import { sumConfig } from "./reduce.ts";
import { avgPoolConfig, avgPoolGradConfig } from "./pool.ts";
import { builtinKernel, keepBuiltin } from "./builtins.ts";

export { conv2dFilterGrad, conv2dInputGrad } from "./conv_backprop.ts";

const KERNELS: readonly tf.KernelConfig[] = [
  conv2DBackpropFilterConfig,
  conv2DBackpropInputConfig,
  unsortedSegmentSumConfig,
  identityConfig,
  castConfig,
  concatConfig,
  splitVConfig,
  transposeConfig,
  addConfig,
  subConfig,
  multiplyConfig,
  sumConfig,
  avgPoolConfig,
  avgPoolGradConfig,
];

let registered = false;

/**
 * Register the project's wasm kernels (replacing built-ins of the same name) and return their
 * names. A replaced kernel's setup runs through the new registration, so the built-in stays
 * callable as the fallback. Idempotent: later calls change nothing, so kernels layered on top
 * (BLAS) stay in place.
 *
 * @example
 * ```ts
 * registerWasmKernels(); // ["Conv2DBackpropFilter", "Conv2DBackpropInput", "UnsortedSegmentSum", ...]
 * ```
 */
export function registerWasmKernels(): string[] {
  const names = KERNELS.map((k) => k.kernelName);
  if (registered) return names;
  for (const k of KERNELS) {
    const existing = tf.getKernel(k.kernelName, "wasm");
    if (existing) {
      keepBuiltin(existing);
      tf.unregisterKernel(k.kernelName, "wasm");
    }
    tf.registerKernel({
      ...k,
      setupFunc: k.setupFunc ?? existing?.setupFunc,
      disposeFunc: k.disposeFunc ?? existing?.disposeFunc,
    });
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
  return builtinKernel(name);
}
