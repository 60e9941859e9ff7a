// Nearest ×2 upsampling ([N, H, W, C] → [N, 2H, 2W, C]) as one kernel forward and one backward
// in C (../native/copy.c) on the wasm heap. The composed route (lib/models/nn.ts: two concats
// forward, two splits and two adds backward) moved each activation six times; the backward
// kernel adds each 2×2 block in that route's order (rows, then columns), so gradients keep
// their bits.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const UPSAMPLE2 = "DpUpsampleNearest2";
export const UPSAMPLE2_GRAD = "DpUpsampleNearest2Grad";

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Dims4 = [number, number, number, number];

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const [n, h, w, c] = x.shape as Dims4;
  const y = backend.makeOutput([n, 2 * h, 2 * w, c], "float32");
  nativeKernels()!.upsample2(f32View(backend, x), f32View(backend, y), [n, h, w, c]);
  return y;
}

function gradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy } = args.inputs as Record<string, tf.TensorInfo>;
  const backend = asWasmBackend(args.backend);
  const [n, h2, w2, c] = dy.shape as Dims4;
  const dims: Dims4 = [n, h2 / 2, w2 / 2, c];
  const dx = backend.makeOutput(dims, "float32");
  nativeKernels()!.upsample2Grad(f32View(backend, dy), f32View(backend, dx), dims);
  return dx;
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  if (!tf.getKernel(UPSAMPLE2, "wasm")) {
    tf.registerKernel({ kernelName: UPSAMPLE2, backendName: "wasm", kernelFunc: forwardKernel });
  }
  if (!tf.getKernel(UPSAMPLE2_GRAD, "wasm")) {
    tf.registerKernel({ kernelName: UPSAMPLE2_GRAD, backendName: "wasm", kernelFunc: gradKernel });
  }
  if (!tf.getGradient(UPSAMPLE2)) {
    tf.registerGradient({
      kernelName: UPSAMPLE2,
      gradFunc: (dy) => ({
        x: () => tf.engine().runKernel(UPSAMPLE2_GRAD, { dy: dy as tf.Tensor }) as tf.Tensor,
      }),
    });
  }
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
