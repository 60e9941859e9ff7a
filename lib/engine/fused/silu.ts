// SiLU (x·σ(x), a.k.a. swish) as one kernel forward and one backward on the wasm heap. Forward
// is the wasm Sigmoid and Multiply kernels without engine bookkeeping; backward is Sigmoid plus
// one JS pass, where tfjs's own gradient of x·σ(x) runs six elementwise ops.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View, type WasmBackend } from "../blas/heap.ts";
import { activeBlas } from "../blas/mod.ts";
import { activeOneDnn, type OneDnn } from "../blas/onednn.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const SILU = "DpSilu";
export const SILU_GRAD = "DpSiluGrad";

// σ comes from the wasm backend's own Sigmoid kernel (XNNPACK, vectorised, ~1.2 ns/element):
// V8's Math.exp costs ~10 ns per element here, more than everything else in these kernels.

function runWasm(
  backend: WasmBackend,
  name: string,
  inputs: Record<string, tf.TensorInfo>,
): tf.TensorInfo {
  const kernel = tf.getKernel(name, "wasm");
  if (!kernel) throw new Error(`Kernel ${name} missing on wasm in lib/engine/fused/silu.ts`);
  return kernel.kernelFunc({
    inputs,
    backend: backend as unknown as tf.KernelBackend,
    attrs: {},
  }) as tf.TensorInfo;
}

/**
 * oneDNN's vectorised SiLU (eltwise swish, ~4× the wasm Sigmoid + Multiply pair here) where the
 * BLAS layer is on and oneDNN loads (lib/engine/blas/onednn.ts); undefined otherwise.
 */
export function oneDnnSilu(): OneDnn | undefined {
  return activeBlas() ? activeOneDnn() : undefined;
}

/** σ(t) as a fresh heap tensor, by the wasm backend's Sigmoid kernel; free it with disposeData. */
export function wasmSigmoid(backend: WasmBackend, t: tf.TensorInfo): tf.TensorInfo {
  return runWasm(backend, "Sigmoid", { x: t });
}

/**
 * t·σ(t) as a fresh heap tensor, by the wasm backend's Sigmoid and Multiply kernels (both
 * vectorised; a JS loop for the product runs 1–3× slower than the Multiply kernel here).
 */
export function wasmSilu(backend: WasmBackend, t: tf.TensorInfo): tf.TensorInfo {
  const dnn = oneDnnSilu();
  if (dnn) {
    const y = backend.makeOutput([...t.shape], "float32");
    if (dnn.swish(f32View(backend, t), f32View(backend, y))) return y;
    backend.disposeData(y.dataId);
  }
  const s = wasmSigmoid(backend, t);
  const y = runWasm(backend, "Multiply", { a: t, b: s });
  backend.disposeData(s.dataId);
  return y;
}

/** s ← dy·s·(1 + x·(1 − s)), the derivative of x·σ(x), where s holds σ(x) on entry. */
export function siluGradFromSigmoid(dy: Float32Array, x: Float32Array, s: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = s[i];
    s[i] = dy[i] * v * (1 + x[i] * (1 - v));
  }
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  return wasmSilu(asWasmBackend(args.backend), x);
}

function gradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy, x } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const dnn = oneDnnSilu();
  if (dnn) {
    const out = backend.makeOutput([...x.shape], "float32");
    const [xv, dyv, ov] = [f32View(backend, x), f32View(backend, dy), f32View(backend, out)];
    if (dnn.swishBackward(xv, dyv, ov)) return out;
    backend.disposeData(out.dataId);
  }
  const dx = wasmSigmoid(backend, x);
  siluGradFromSigmoid(f32View(backend, dy), f32View(backend, x), f32View(backend, dx));
  return dx;
}

let registered = false;

/** Register the SiLU kernels and gradient for wasm (idempotent). */
export function registerSiluKernels(): void {
  if (registered) return;
  registered = true;
  registerWasmKernels({ [SILU]: forwardKernel, [SILU_GRAD]: gradKernel }, [{
    kernelName: SILU,
    inputsToSave: ["x"],
    gradFunc: (dy, saved) => ({
      x: () => tf.engine().runKernel(SILU_GRAD, { dy: dy as tf.Tensor, x: saved[0] }) as tf.Tensor,
    }),
  }]);
}

/** SiLU from composed tfjs ops (any backend). */
export function siluComposed<T extends tf.Tensor>(x: T): T {
  return tf.tidy(() => tf.mul(x, tf.sigmoid(x)) as T);
}

/**
 * SiLU, x·σ(x): one fused kernel on wasm, composed ops elsewhere.
 *
 * @example
 * ```ts
 * const h = silu(tf.tensor1d([-1, 0, 1])); // [-0.269, 0, 0.731]
 * ```
 */
export function silu<T extends tf.Tensor>(x: T): T {
  if (tf.getBackend() === "wasm" && x.dtype === "float32") {
    registerSiluKernels();
    return tf.engine().runKernel(SILU, { x }) as T;
  }
  return siluComposed(x);
}
