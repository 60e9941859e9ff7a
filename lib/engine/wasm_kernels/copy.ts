// Concat and SplitV for wasm as block copies inside the wasm heap (`copyWithin`: a memmove, no
// allocation). The built-in SplitV runs one strided Slice per part, ~10× slower on the channel
// splits of U-Net skip connections (concat's gradient); the built-in Concat allocates a subarray
// per row, slow when rows are short. 4-byte dtypes here; others go to the built-in kernels.
import * as tf from "@tensorflow/tfjs";
import type { WasmBackendLike } from "./delegate.ts";
import { runBuiltin } from "./builtins.ts";
import { nativeKernels } from "../native_kernels.ts";

/** The heap-level parts of the wasm backend these kernels use. */
export interface WasmHeapBackend extends WasmBackendLike {
  readonly wasm: { readonly HEAPU8: Uint8Array };
  readonly dataIdMap: { get(dataId: unknown): { memoryOffset: number } | undefined };
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

const WORD_DTYPES: readonly string[] = ["float32", "int32"];

/** Element offset of a 4-byte tensor in the heap. */
function wordOffset(b: WasmHeapBackend, t: tf.TensorInfo): number {
  const d = b.dataIdMap.get(t.dataId);
  if (!d) {
    throw new Error("Tensor data not found on the wasm heap in lib/engine/wasm_kernels/copy.ts");
  }
  return d.memoryOffset / 4; // byte offsets pass 2^31 on a large heap: no signed shifts
}

const sizeOf = (shape: readonly number[]) => shape.reduce((a, d) => a * d, 1);

/**
 * Copy `blocks` runs of `len` words from src (stride `srcStride`) to dst (stride `dstStride`),
 * all inside `heap`, the runs not overlapping: in one C call where the compiled kernels loaded
 * (../native/copy.c), else in JS, where short runs go word by word (a copyWithin call costs
 * more than ~16 words).
 */
export function copyBlocks(
  heap: Int32Array,
  src: number,
  srcStride: number,
  dst: number,
  dstStride: number,
  len: number,
  blocks: number,
): void {
  const native = nativeKernels();
  if (native && blocks > 1) {
    return native.copyBlocks(heap, src, srcStride, dst, dstStride, len, blocks);
  }
  if (len >= 16) {
    for (let i = 0; i < blocks; i++, src += srcStride, dst += dstStride) {
      heap.copyWithin(dst, src, src + len);
    }
  } else {
    for (let i = 0; i < blocks; i++, src += srcStride, dst += dstStride) {
      for (let j = 0; j < len; j++) heap[dst + j] = heap[src + j];
    }
  }
}

function concatKernel(args: KernelArgs): tf.TensorInfo {
  const inputs = args.inputs as unknown as tf.TensorInfo[];
  const b = args.backend as unknown as WasmHeapBackend;
  const dtype = inputs[0]?.dtype;
  if (!dtype || !WORD_DTYPES.includes(dtype) || inputs.some((t) => t.dtype !== dtype)) {
    return runBuiltin(tf.Concat, args) as tf.TensorInfo;
  }
  const { axis } = args.attrs as unknown as { axis: number | number[] };
  const ax = tf.util.parseAxisParam(axis, inputs[0].shape)[0];
  const shapes = inputs.map((t) => t.shape);
  tf.backend_util.assertParamsConsistent(shapes, ax);
  const outShape = tf.backend_util.computeOutShape(shapes, ax);
  const parts = inputs.filter((t) => sizeOf(t.shape) > 0);
  if (parts.length === 1) {
    b.incRef(parts[0].dataId);
    return { dataId: parts[0].dataId, shape: outShape, dtype };
  }
  const out = b.makeOutput(outShape, dtype);
  if (parts.length === 0) return out;
  const heap = new Int32Array(b.wasm.HEAPU8.buffer);
  const outer = sizeOf(outShape.slice(0, ax));
  const row = sizeOf(outShape.slice(ax));
  let dst = wordOffset(b, out);
  for (const t of parts) {
    const inner = sizeOf(t.shape.slice(ax));
    copyBlocks(heap, wordOffset(b, t), inner, dst, row, inner, outer);
    dst += inner;
  }
  return out;
}

function splitVKernel(args: KernelArgs): tf.TensorInfo[] {
  const { x } = args.inputs as unknown as { x: tf.TensorInfo };
  const b = args.backend as unknown as WasmHeapBackend;
  if (!WORD_DTYPES.includes(x.dtype)) return runBuiltin(tf.SplitV, args) as tf.TensorInfo[];
  const { numOrSizeSplits, axis } = args.attrs as unknown as {
    numOrSizeSplits: number | number[];
    axis: number;
  };
  const ax = tf.util.parseAxisParam(axis, x.shape)[0];
  const sizes = tf.backend_util.prepareSplitSize(x as tf.Tensor, numOrSizeSplits, ax);
  const outs = sizes.map((s) => {
    const shape = x.shape.slice();
    shape[ax] = s;
    return b.makeOutput(shape, x.dtype);
  });
  // Views after every allocation: makeOutput may grow the heap.
  const heap = new Int32Array(b.wasm.HEAPU8.buffer);
  const outer = sizeOf(x.shape.slice(0, ax));
  const step = sizeOf(x.shape.slice(ax + 1));
  const row = x.shape[ax] * step;
  let src = wordOffset(b, x);
  outs.forEach((o, i) => {
    const len = sizes[i] * step;
    if (len > 0 && outer > 0) copyBlocks(heap, src, row, wordOffset(b, o), len, len, outer);
    src += len;
  });
  return outs;
}

/** Concat on wasm by heap block copies. */
export const concatConfig: tf.KernelConfig = {
  kernelName: tf.Concat,
  backendName: "wasm",
  kernelFunc: concatKernel,
};

/** SplitV on wasm by heap block copies. */
export const splitVConfig: tf.KernelConfig = {
  kernelName: tf.SplitV,
  backendName: "wasm",
  kernelFunc: splitVKernel as unknown as tf.KernelFunc,
};
