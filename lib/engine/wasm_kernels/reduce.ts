// Sum over a block of consecutive axes that is not innermost, for wasm: bias gradients (dy
// [N, H, W, C] summed to [C]) and per-example sums over tokens ([N, T, D] over T). The built-in
// kernel reduces innermost axes only, so it transposes the whole tensor first; column sums over
// the heap skip that: in C where the compiled kernels loaded (the same bits as the JS loop), else
// by a column summer the BLAS layer plugs in (sgemm against ones), else the JS loop. Other
// reductions go to the built-in kernel.
import * as tf from "@tensorflow/tfjs";
import { runBuiltin } from "./builtins.ts";
import { asWasmBackend, f32View, sizeOf } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";

type KernelArgs = Parameters<tf.KernelFunc>[0];

/** out[j] = Σ_i x[i·inner + j] for i < rows: the column sums of x viewed as [rows, inner]. */
export type ColumnSummer = (
  x: Float32Array,
  rows: number,
  inner: number,
  out: Float32Array,
) => void;

/** Rows per block of `columnSums` (../native/reduce.c's SUM_ROWS: the same bits). */
export const SUM_ROWS = 1024;

/**
 * Column sums accumulated in float64 over blocks of SUM_ROWS rows, whose partial sums are then
 * added in block order (the C kernel sums the blocks on several threads).
 */
export function columnSums(x: Float32Array, rows: number, inner: number, out: Float32Array) {
  const total = new Float64Array(inner), acc = new Float64Array(inner);
  for (let r0 = 0; r0 < rows; r0 += SUM_ROWS) {
    acc.fill(0);
    for (let i = r0, o = r0 * inner; i < Math.min(rows, r0 + SUM_ROWS); i++, o += inner) {
      for (let j = 0; j < inner; j++) acc[j] += x[o + j];
    }
    for (let j = 0; j < inner; j++) total[j] += acc[j];
  }
  out.set(total);
}

let summer: ColumnSummer = columnSums;

/** Use `f` for column sums (undefined: back to the JS loop); returns the previous one. */
export function setColumnSummer(f?: ColumnSummer): ColumnSummer {
  const previous = summer;
  summer = f ?? columnSums;
  return previous;
}

function sumKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as unknown as { x: tf.TensorInfo };
  const { axis, keepDims } = args.attrs as unknown as {
    axis: number | number[];
    keepDims: boolean;
  };
  const rank = x.shape.length;
  const axes = tf.util.parseAxisParam(axis, x.shape).sort((a, b) => a - b);
  const first = axes[0], last = axes[axes.length - 1];
  // Consecutive axes with something after them; innermost reductions suit the built-in kernel.
  const block = axes.length > 0 && last < rank - 1 && axes.every((a, i) => a === first + i);
  if (x.dtype !== "float32" || !block) return runBuiltin(tf.Sum, args) as tf.TensorInfo;
  const b = asWasmBackend(args.backend);
  const outShape = keepDims
    ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
    : x.shape.filter((_, i) => !axes.includes(i));
  const out = b.makeOutput(outShape, "float32");
  const outer = sizeOf(x.shape.slice(0, first));
  const rows = sizeOf(x.shape.slice(first, last + 1));
  const inner = sizeOf(x.shape.slice(last + 1));
  const xv = f32View(b, x), ov = f32View(b, out);
  const native = nativeKernels();
  for (let o = 0; o < outer; o++) {
    const src = xv.subarray(o * rows * inner, (o + 1) * rows * inner);
    const dst = ov.subarray(o * inner, (o + 1) * inner);
    if (!native?.columnSums(src, rows, inner, dst)) summer(src, rows, inner, dst);
  }
  return out;
}

/** Sum on wasm: column sums for non-innermost axis blocks, the built-in kernel otherwise. */
export const sumConfig: tf.KernelConfig = {
  kernelName: tf.Sum,
  backendName: "wasm",
  kernelFunc: sumKernel,
};
