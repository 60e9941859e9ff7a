// AvgPool and AvgPoolGrad for the 2×2 stride-2 unpadded pooling of U-Net downsampling. The
// gradient spreads each dy value over its window, row by row on the heap (the built-in kernel
// loops per window and per channel); in C on OpenMP's threads where the compiled kernels loaded
// (the same bits). Other pool geometries go to the built-in kernels.
import * as tf from "@tensorflow/tfjs";
import { runBuiltin } from "./builtins.ts";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";

type KernelArgs = Parameters<tf.KernelFunc>[0];

/** dx [N, H, W, C] from dy [N, OH, OW, C] for a k×k stride-k valid pool (H, W ≥ k·OH, k·OW). */
export function avgPoolGradTiled(
  dy: Float32Array,
  dx: Float32Array,
  n: number,
  h: number,
  w: number,
  c: number,
  oh: number,
  ow: number,
  k: number,
): void {
  const scale = 1 / (k * k);
  dx.fill(0);
  for (let b = 0; b < n; b++) {
    for (let y = 0; y < oh; y++) {
      const src = ((b * oh + y) * ow) * c;
      for (let i = 0; i < k; i++) {
        let dst = ((b * h + y * k + i) * w) * c;
        for (let x = 0, s = src; x < ow; x++, s += c) {
          for (let j = 0; j < k; j++, dst += c) {
            for (let ch = 0; ch < c; ch++) dx[dst + ch] = dy[s + ch] * scale;
          }
        }
      }
    }
  }
}

type PoolAttrs = {
  filterSize: number | [number, number];
  strides: number | [number, number];
  pad: "valid" | "same" | number;
  dimRoundingMode?: "floor" | "round" | "ceil";
};

type Dims7 = readonly [number, number, number, number, number, number, number];

/** [n, h, w, c, oh, ow, k] of a float32 pool of `input` when it is k×k, stride k, unpadded. */
function tiledPool(input: tf.TensorInfo, attrs: PoolAttrs): Dims7 | undefined {
  const info = tf.backend_util.computePool2DInfo(
    input.shape as [number, number, number, number],
    attrs.filterSize,
    attrs.strides,
    1,
    attrs.pad,
    attrs.dimRoundingMode,
  );
  const k = info.filterHeight;
  const p = info.padInfo;
  const tiled = input.dtype === "float32" && info.filterWidth === k && info.strideHeight === k &&
    info.strideWidth === k && p.top === 0 && p.left === 0 && p.bottom === 0 && p.right === 0;
  if (!tiled) return undefined;
  const { batchSize, inHeight, inWidth, inChannels, outHeight, outWidth } = info;
  return [batchSize, inHeight, inWidth, inChannels, outHeight, outWidth, k];
}

function avgPoolGradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy, input } = args.inputs as unknown as { dy: tf.TensorInfo; input: tf.TensorInfo };
  const dims = dy.dtype === "float32"
    ? tiledPool(input, args.attrs as unknown as PoolAttrs)
    : undefined;
  if (!dims) return runBuiltin(tf.AvgPoolGrad, args) as tf.TensorInfo;
  const b = asWasmBackend(args.backend);
  const dx = b.makeOutput(input.shape.slice(), "float32");
  const native = nativeKernels();
  if (native) native.avgPoolGrad(f32View(b, dy), f32View(b, dx), dims);
  else avgPoolGradTiled(f32View(b, dy), f32View(b, dx), ...dims);
  return dx;
}

// Forward: windows of up to 3×3 in C where the compiled kernels loaded, bit for bit the built-in
// kernel (which runs on one thread: 2.7 ms for a feature pass's four pools); the built-in kernel
// otherwise.
function avgPoolKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as unknown as { x: tf.TensorInfo };
  const native = nativeKernels();
  const dims = native && tiledPool(x, args.attrs as unknown as PoolAttrs);
  if (!native || !dims || dims[6] > 3) return runBuiltin(tf.AvgPool, args) as tf.TensorInfo;
  const b = asWasmBackend(args.backend);
  const [n, , , c, oh, ow] = dims;
  const y = b.makeOutput([n, oh, ow, c], "float32");
  native.avgPool(f32View(b, x), f32View(b, y), dims);
  return y;
}

/** AvgPool on wasm: tiled pools in C, the built-in kernel otherwise. */
export const avgPoolConfig: tf.KernelConfig = {
  kernelName: tf.AvgPool,
  backendName: "wasm",
  kernelFunc: avgPoolKernel,
};

/** AvgPoolGrad on wasm: tiled pools in one pass, the built-in kernel otherwise. */
export const avgPoolGradConfig: tf.KernelConfig = {
  kernelName: tf.AvgPoolGrad,
  backendName: "wasm",
  kernelFunc: avgPoolGradKernel,
};
