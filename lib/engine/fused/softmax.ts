// Attention's softmax(scale·s) along the last axis and its backward, each one kernel in C
// (lib/engine/native/softmax.c) where the compiled kernels loaded on wasm; composed tf ops
// elsewhere. On the [B·H, T, T] attention scores of a DiT step the tf ops (Multiply, Softmax,
// and backward Multiply ×3, Sum, Sub) took a quarter of the step (bench/profile.ts). No
// gradient is registered: nn.ts's attention calls both inside its own custom gradient.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const SCALED_SOFTMAX = "DpScaledSoftmax";
export const SCALED_SOFTMAX_GRAD = "DpScaledSoftmaxGrad";

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Inputs = Record<string, tf.TensorInfo>;

const lastDim = (t: tf.TensorInfo) => t.shape[t.shape.length - 1];

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { s } = args.inputs as Inputs, { scale } = args.attrs as unknown as { scale: number };
  const b = asWasmBackend(args.backend);
  const p = b.makeOutput([...s.shape], "float32");
  nativeKernels()!.softmax(f32View(b, s), f32View(b, p), lastDim(s), scale);
  return p;
}

function gradKernel(args: KernelArgs): tf.TensorInfo {
  const { p, dp } = args.inputs as Inputs, { scale } = args.attrs as unknown as { scale: number };
  const b = asWasmBackend(args.backend);
  const ds = b.makeOutput([...p.shape], "float32");
  nativeKernels()!.softmaxGrad(f32View(b, p), f32View(b, dp), f32View(b, ds), lastDim(p), scale);
  return ds;
}

let registered = false;

function fused(...ts: tf.Tensor[]): boolean {
  if (tf.getBackend() !== "wasm" || !nativeKernels()) return false;
  if (ts.some((t) => t.dtype !== "float32" || t.size === 0)) return false;
  if (!registered) {
    registered = true;
    registerWasmKernels({ [SCALED_SOFTMAX]: forwardKernel, [SCALED_SOFTMAX_GRAD]: gradKernel });
  }
  return true;
}

/** softmax(scale·s) along the last axis. */
export function scaledSoftmax<T extends tf.Tensor>(s: T, scale: number): T {
  if (fused(s)) return tf.engine().runKernel(SCALED_SOFTMAX, { s }, { scale }) as T;
  return tf.tidy(() => tf.softmax(tf.mul(s, scale))) as T;
}

/** The gradient of scaledSoftmax at its output p, given dp = ∂L/∂p: scale·p⊙(dp − Σ dp⊙p). */
export function scaledSoftmaxGrad<T extends tf.Tensor>(p: T, dp: T, scale: number): T {
  if (!tf.util.arraysEqual(p.shape, dp.shape)) {
    throw new Error(`scaledSoftmaxGrad: p [${p.shape}] and dp [${dp.shape}] differ`);
  }
  if (fused(p, dp)) return tf.engine().runKernel(SCALED_SOFTMAX_GRAD, { p, dp }, { scale }) as T;
  return tf.tidy(() => tf.mul(tf.mul(p, tf.sub(dp, tf.sum(tf.mul(dp, p), -1, true))), scale)) as T;
}
