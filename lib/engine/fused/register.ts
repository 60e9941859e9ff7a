// Registration of the project's fused kernels for the wasm backend, skipping what is registered
// already (a test or another module may have registered it first).
import * as tf from "@tensorflow/tfjs";

/** Register each kernel on wasm and each gradient, where none is registered under its name. */
export function registerWasmKernels(
  kernels: Readonly<Record<string, tf.KernelFunc>>,
  gradients: readonly tf.GradConfig[] = [],
): void {
  for (const [kernelName, kernelFunc] of Object.entries(kernels)) {
    if (!tf.getKernel(kernelName, "wasm")) {
      tf.registerKernel({ kernelName, backendName: "wasm", kernelFunc });
    }
  }
  for (const g of gradients) if (!tf.getGradient(g.kernelName)) tf.registerGradient(g);
}
