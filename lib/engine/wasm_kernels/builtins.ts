// The built-in wasm kernels that project kernels replace, kept so those can hand the cases they
// do not handle back (and so benchmarks can compare routes).
import type * as tf from "@tensorflow/tfjs";

const builtins = new Map<string, tf.KernelConfig>();

/** Remember the built-in kernel `name` before it is replaced. */
export function keepBuiltin(config: tf.KernelConfig): void {
  builtins.set(config.kernelName, config);
}

/** The built-in wasm kernel replaced under `name`, if any. */
export function builtinKernel(name: string): tf.KernelConfig | undefined {
  return builtins.get(name);
}

/** Run the built-in kernel `name` on `args`; throws naming the file when there is none. */
export function runBuiltin(name: string, args: Parameters<tf.KernelFunc>[0]) {
  const k = builtins.get(name);
  if (!k) {
    throw new Error(`${name} (lib/engine/wasm_kernels): no built-in wasm kernel to fall back to`);
  }
  return k.kernelFunc(args);
}
