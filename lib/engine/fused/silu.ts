// SiLU (x·σ(x), a.k.a. swish) as one wasm-heap kernel forward and one backward, instead of
// tfjs's sigmoid + mul (two passes and an intermediate tensor each way).
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const SILU = "DpSilu";
export const SILU_GRAD = "DpSiluGrad";

/** y ← x·σ(x). */
export function siluForward(x: Float32Array, y: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    y[i] = v / (1 + Math.exp(-v));
  }
}

/** dx ← dy·σ(x)·(1 + x·(1 − σ(x))), the derivative of x·σ(x). */
export function siluBackward(dy: Float32Array, x: Float32Array, dx: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    const s = 1 / (1 + Math.exp(-v));
    dx[i] = dy[i] * s * (1 + v * (1 - s));
  }
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const y = backend.makeOutput([...x.shape], "float32");
  siluForward(f32View(backend, x), f32View(backend, y));
  return y;
}

function gradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy, x } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const dx = backend.makeOutput([...x.shape], "float32");
  siluBackward(f32View(backend, dy), f32View(backend, x), f32View(backend, dx));
  return dx;
}

let registered = false;

/** Register the SiLU kernels and gradient for wasm (idempotent). */
export function registerSiluKernels(): void {
  if (registered) return;
  registered = true;
  if (!tf.getKernel(SILU, "wasm")) {
    tf.registerKernel({ kernelName: SILU, backendName: "wasm", kernelFunc: forwardKernel });
  }
  if (!tf.getKernel(SILU_GRAD, "wasm")) {
    tf.registerKernel({ kernelName: SILU_GRAD, backendName: "wasm", kernelFunc: gradKernel });
  }
  if (!tf.getGradient(SILU)) {
    tf.registerGradient({
      kernelName: SILU,
      inputsToSave: ["x"],
      gradFunc: (dy, saved) => ({
        x: () => tf.engine().runKernel(SILU_GRAD, { dy: dy as tf.Tensor, x: saved[0] }) as tf.Tensor,
      }),
    });
  }
}

/** SiLU from composed tfjs ops (any backend). */
export function siluComposed(x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(x)));
}

/**
 * SiLU, x·σ(x): one fused kernel on wasm, composed ops elsewhere.
 *
 * @example
 * ```ts
 * const h = silu(tf.tensor1d([-1, 0, 1])); // [-0.269, 0, 0.731]
 * ```
 */
export function silu(x: tf.Tensor): tf.Tensor {
  if (tf.getBackend() === "wasm" && x.dtype === "float32") {
    registerSiluKernels();
    return tf.engine().runKernel(SILU, { x }) as tf.Tensor;
  }
  return siluComposed(x);
}
