// AvgPoolGrad for the 2×2 stride-2 unpadded pooling of U-Net downsampling: each dy value spread
// over its window, row by row on the heap (the built-in kernel loops per window and per channel);
// in C on OpenMP's threads where the compiled kernels loaded (the same bits). Other pool
// geometries go to the built-in kernel.
import * as tf from "@tensorflow/tfjs";
import { runBuiltin } from "./builtins.ts";
import type { WasmHeapBackend } from "./copy.ts";
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

function avgPoolGradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy, input } = args.inputs as unknown as { dy: tf.TensorInfo; input: tf.TensorInfo };
  const { filterSize, strides, pad, dimRoundingMode } = args.attrs as unknown as {
    filterSize: number | [number, number];
    strides: number | [number, number];
    pad: "valid" | "same" | number;
    dimRoundingMode?: "floor" | "round" | "ceil";
  };
  const info = tf.backend_util.computePool2DInfo(
    input.shape as [number, number, number, number],
    filterSize,
    strides,
    1,
    pad,
    dimRoundingMode,
  );
  const k = info.filterHeight;
  const tiled = dy.dtype === "float32" && info.filterWidth === k && info.strideHeight === k &&
    info.strideWidth === k && info.padInfo.top === 0 && info.padInfo.left === 0 &&
    info.padInfo.bottom === 0 && info.padInfo.right === 0;
  if (!tiled) return runBuiltin(tf.AvgPoolGrad, args) as tf.TensorInfo;
  const b = args.backend as unknown as WasmHeapBackend;
  const dx = b.makeOutput(input.shape.slice(), "float32");
  const view = (t: tf.TensorInfo) =>
    new Float32Array(
      b.wasm.HEAPU8.buffer,
      b.dataIdMap.get(t.dataId)!.memoryOffset,
      t.shape.reduce((p, d) => p * d, 1),
    );
  const dims = [
    info.batchSize,
    info.inHeight,
    info.inWidth,
    info.inChannels,
    info.outHeight,
    info.outWidth,
    k,
  ] as const;
  const native = nativeKernels();
  if (native) native.avgPoolGrad(view(dy), view(dx), dims);
  else avgPoolGradTiled(view(dy), view(dx), ...dims);
  return dx;
}

/** AvgPoolGrad on wasm: tiled pools in one pass, the built-in kernel otherwise. */
export const avgPoolGradConfig: tf.KernelConfig = {
  kernelName: tf.AvgPoolGrad,
  backendName: "wasm",
  kernelFunc: avgPoolGradKernel,
};
