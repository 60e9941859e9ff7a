// Nearest ×2 upsampling ([N, H, W, C] → [N, 2H, 2W, C]) as one kernel forward and one backward
// in C (../native/copy.c) on the wasm heap. The composed route (lib/models/nn.ts: two concats
// forward, two splits and two adds backward) moved each activation six times; the backward
// kernel adds each 2×2 block in that route's order (rows, then columns), so gradients keep
// their bits.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const UPSAMPLE2 = "DpUpsampleNearest2";
export const UPSAMPLE2_GRAD = "DpUpsampleNearest2Grad";

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Dims4 = [number, number, number, number];

/** y [n, 2h, 2w, c] ← x [n, h, w, c] in JS (the kernels' route where the C ones are not loaded). */
export function upsample2Into(x: Float32Array, y: Float32Array, [n, h, w, c]: Dims4): void {
  for (let r = 0; r < n * h; r++) {
    const top = 2 * r * 2 * w * c;
    for (let j = 0; j < w; j++) {
      const row = x.subarray((r * w + j) * c, (r * w + j + 1) * c);
      y.set(row, top + 2 * j * c);
      y.set(row, top + (2 * j + 1) * c);
    }
    y.copyWithin(top + 2 * w * c, top, top + 2 * w * c);
  }
}

/** dx [n, h, w, c] ← each 2×2 block of dy summed in JS, in the C kernel's (and the concat route's) order. */
export function upsample2GradInto(dy: Float32Array, dx: Float32Array, [n, h, w, c]: Dims4): void {
  for (let r = 0; r < n * h; r++) {
    const top = 2 * r * 2 * w * c, bottom = top + 2 * w * c;
    for (let j = 0; j < w; j++) {
      for (let ch = 0; ch < c; ch++) {
        const t0 = top + 2 * j * c + ch, b0 = bottom + 2 * j * c + ch;
        dx[(r * w + j) * c + ch] = Math.fround(dy[t0] + dy[b0]) +
          Math.fround(dy[t0 + c] + dy[b0 + c]);
      }
    }
  }
}

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const dims = x.shape as Dims4;
  const [n, h, w, c] = dims;
  const y = backend.makeOutput([n, 2 * h, 2 * w, c], "float32");
  const [xv, yv] = [f32View(backend, x), f32View(backend, y)];
  const native = nativeKernels();
  if (native) native.upsample2(xv, yv, dims);
  else upsample2Into(xv, yv, dims);
  return y;
}

function gradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const [n, h2, w2, c] = dy.shape as Dims4;
  const dims: Dims4 = [n, h2 / 2, w2 / 2, c];
  const dx = backend.makeOutput(dims, "float32");
  const [dyv, dxv] = [f32View(backend, dy), f32View(backend, dx)];
  const native = nativeKernels();
  if (native) native.upsample2Grad(dyv, dxv, dims);
  else upsample2GradInto(dyv, dxv, dims);
  return dx;
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  registerWasmKernels({ [UPSAMPLE2]: forwardKernel, [UPSAMPLE2_GRAD]: gradKernel }, [{
    kernelName: UPSAMPLE2,
    gradFunc: (dy) => ({
      x: () => tf.engine().runKernel(UPSAMPLE2_GRAD, { dy: dy as tf.Tensor }) as tf.Tensor,
    }),
  }]);
}

/**
 * Nearest ×2 upsampling of a float32 [N, H, W, C] tensor in one kernel on wasm where the compiled
 * kernels loaded, else undefined (the caller composes it from ops).
 */
export function fusedUpsampleNearest2(x: tf.Tensor4D): tf.Tensor4D | undefined {
  if (tf.getBackend() !== "wasm" || x.dtype !== "float32" || !nativeKernels()) return undefined;
  register();
  return tf.engine().runKernel(UPSAMPLE2, { x }) as tf.Tensor4D;
}
