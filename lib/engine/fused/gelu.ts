// GELU, tanh approximation (nn.GELU(approximate="tanh")), as one kernel forward and one backward
// on the wasm heap through oneDNN's eltwise gelu_tanh (lib/engine/blas/onednn_matmul.ts). The
// composed form costs ~10 elementwise ops each way on the MLP's widest activation.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { activeBlas } from "../blas/mod.ts";
import { activeOneDnnEltwise, type OneDnnMatMul } from "../blas/onednn_matmul.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const GELU_TANH = "DpGeluTanh";
export const GELU_TANH_GRAD = "DpGeluTanhGrad";

const C = Math.sqrt(2 / Math.PI), A = 0.044715;

let enabled = true;

/** Turn the fused GELU on or off (for comparisons). */
export function setFusedGeluEnabled(on: boolean): void {
  enabled = on;
}

/** oneDNN's GELU where the BLAS layer and the fused GELU are on and oneDNN loads. */
function dnn(): OneDnnMatMul | undefined {
  return enabled && activeBlas() ? activeOneDnnEltwise() : undefined;
}

/** y ← GELU(x) in JS (the route where oneDNN declines a length). */
export function geluTanhInto(x: Float32Array, y: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    y[i] = 0.5 * v * (1 + Math.tanh(C * (v + A * v * v * v)));
  }
}

/** dx ← dy·GELU′(x) in JS. */
export function geluTanhGradInto(x: Float32Array, dy: Float32Array, dx: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i], th = Math.tanh(C * (v + A * v * v * v));
    dx[i] = dy[i] * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * C * (1 + 3 * A * v * v));
  }
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const y = backend.makeOutput([...x.shape], "float32");
  const [xv, yv] = [f32View(backend, x), f32View(backend, y)];
  if (!dnn()?.gelu(xv, yv)) geluTanhInto(xv, yv);
  return y;
}

function gradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy, x } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const dx = backend.makeOutput([...x.shape], "float32");
  const [xv, dyv, dxv] = [f32View(backend, x), f32View(backend, dy), f32View(backend, dx)];
  if (!dnn()?.geluBackward(xv, dyv, dxv)) geluTanhGradInto(xv, dyv, dxv);
  return dx;
}

let registered = false;

/** Register the GELU kernels and gradient for wasm (idempotent). */
export function registerGeluKernels(): void {
  if (registered) return;
  registered = true;
  registerWasmKernels({ [GELU_TANH]: forwardKernel, [GELU_TANH_GRAD]: gradKernel }, [{
    kernelName: GELU_TANH,
    inputsToSave: ["x"],
    gradFunc: (dy, saved) => ({
      x: () =>
        tf.engine().runKernel(GELU_TANH_GRAD, { dy: dy as tf.Tensor, x: saved[0] }) as tf.Tensor,
    }),
  }]);
}

/**
 * The fused tanh-GELU of a float32 tensor on wasm when oneDNN provides it, else undefined (the
 * caller composes it from ops).
 *
 * @example
 * ```ts
 * const y = fusedGeluTanh(x) ?? composedGelu(x);
 * ```
 */
export function fusedGeluTanh<T extends tf.Tensor>(x: T): T | undefined {
  if (tf.getBackend() !== "wasm" || x.dtype !== "float32" || !dnn()) return undefined;
  registerGeluKernels();
  return tf.engine().runKernel(GELU_TANH, { x }) as T;
}
