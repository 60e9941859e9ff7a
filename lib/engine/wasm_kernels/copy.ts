// Concat, SplitV and Transpose for wasm as block copies inside the wasm heap (`copyWithin`: a
// memmove, no allocation). The built-in SplitV runs one strided Slice per part, ~10× slower on
// the channel splits of U-Net skip connections (concat's gradient); the built-in Concat allocates
// a subarray per row, slow when rows are short; the built-in Transpose moves one element at a
// time on one thread, where attention's head split and DiT's patchify move whole rows of
// channels. 4-byte dtypes here; others go to the built-in kernels.
import * as tf from "@tensorflow/tfjs";
import type { WasmBackendLike } from "./delegate.ts";
import { runBuiltin } from "./builtins.ts";
import { nativeKernels } from "../native_kernels.ts";
import { sizeOf, wordOffset } from "../blas/heap.ts";

/** The heap-level parts of the wasm backend these kernels use. */
export interface WasmHeapBackend extends WasmBackendLike {
  readonly wasm: { readonly HEAPU8: Uint8Array };
  readonly dataIdMap: { get(dataId: unknown): { memoryOffset: number } | undefined };
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

const WORD_DTYPES: readonly string[] = ["float32", "int32"];

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

/**
 * A transpose that keeps the last axis in place, as whole rows: output row r, at index
 * (i_0, ..., i_{k-1}) over `dims`, is the `len` words at Σ i_j·strides[j] of the input.
 */
export interface RowGather {
  readonly dims: readonly number[];
  readonly strides: readonly number[];
  readonly len: number;
}

/**
 * `shape` transposed by `perm` as a RowGather, after dropping size-1 axes and merging input axes
 * that stay neighbours (so [0, 2, 1, 3] on [N, T, H, C] gathers N·H·T rows of C, and an identity
 * is one row); undefined when the input's last axis (of size > 1) moves.
 */
export function rowGather(
  shape: readonly number[],
  perm: readonly number[],
): RowGather | undefined {
  const kept = shape.flatMap((d, a) => (d > 1 ? [a] : [])); // input axes, in input order
  const stride = shape.map((_, a) => sizeOf(shape.slice(a + 1)));
  const groups: number[][] = []; // output order; each a run of neighbouring kept input axes
  for (const a of perm) {
    if (shape[a] === 1) continue;
    const last = groups.at(-1);
    if (last && kept.indexOf(a) === kept.indexOf(last.at(-1)!) + 1) last.push(a);
    else groups.push([a]);
  }
  const inner = groups.pop() ?? [];
  if (inner.length && stride[inner.at(-1)!] !== 1) return undefined;
  return {
    dims: groups.map((g) => sizeOf(g.map((a) => shape[a]))),
    strides: groups.map((g) => stride[g.at(-1)!]),
    len: sizeOf(inner.map((a) => shape[a])),
  };
}

// Below this many words a row, the built-in kernel's element loop is as fast as a memcpy a row.
const MIN_ROW = 4;

function transposeKernel(args: KernelArgs): tf.TensorInfo {
  const { x } = args.inputs as unknown as { x: tf.TensorInfo };
  const { perm } = args.attrs as unknown as { perm: number[] };
  const native = nativeKernels();
  const g = rowGather(x.shape, perm);
  if (!native || !g || g.len < MIN_ROW || !WORD_DTYPES.includes(x.dtype)) {
    return runBuiltin(tf.Transpose, args) as tf.TensorInfo;
  }
  const b = args.backend as unknown as WasmHeapBackend;
  const out = b.makeOutput(perm.map((a) => x.shape[a]), x.dtype);
  const heap = new Int32Array(b.wasm.HEAPU8.buffer); // after makeOutput, which may grow the heap
  if (sizeOf(x.shape) > 0) native.gatherRows(heap, wordOffset(b, x), wordOffset(b, out), g);
  return out;
}

/** Transpose on wasm by heap row copies, where the last axis stays and the C kernels loaded. */
export const transposeConfig: tf.KernelConfig = {
  kernelName: tf.Transpose,
  backendName: "wasm",
  kernelFunc: transposeKernel,
};

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
