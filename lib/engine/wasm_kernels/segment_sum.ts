// UnsortedSegmentSum for wasm (absent from tfjs-backend-wasm 4.22; gather's gradient needs it): a
// plain loop over the wasm heap. Its users (embedding and class-label gradients) move a few
// thousand rows at most, so a JS loop costs well under a millisecond there.
import * as tf from "@tensorflow/tfjs";
import { input, type WasmBackendLike } from "./delegate.ts";

/**
 * out[s, ...] = Σ_{i : ids[i] = s} x[i, ...], for x [...ids.shape, ...rest] → [numSegments, ...rest].
 * Ids outside [0, numSegments) are dropped, as in TensorFlow.
 */
function unsortedSegmentSumKernel(
  { inputs, backend, attrs }: {
    inputs: tf.NamedTensorInfoMap;
    backend: unknown;
    attrs?: tf.NamedAttrMap;
  },
): tf.TensorInfo {
  const x = input(tf.UnsortedSegmentSum, inputs, "x");
  const segmentIds = input(tf.UnsortedSegmentSum, inputs, "segmentIds");
  const { numSegments } = attrs as unknown as tf.UnsortedSegmentSumAttrs;
  const b = backend as WasmBackendLike;
  const idRank = segmentIds.shape.length;
  if (segmentIds.shape.some((d, i) => d !== x.shape[i])) {
    throw new Error(
      `UnsortedSegmentSum (wasm_kernels/segment_sum.ts): segment ids of shape [${segmentIds.shape}] are not a prefix of x's [${x.shape}]`,
    );
  }
  const rest = x.shape.slice(idRank);
  const inner = rest.reduce((p, d) => p * d, 1);
  const out = b.makeOutput([numSegments, ...rest], x.dtype);
  // Views after makeOutput: an allocation may grow the heap and detach older views.
  const o = b.typedArrayFromHeap(out);
  const xs = b.typedArrayFromHeap(x);
  const ids = b.typedArrayFromHeap(segmentIds);
  o.fill(0);
  for (let i = 0; i < ids.length; i++) {
    const s = ids[i];
    if (s < 0 || s >= numSegments) continue;
    const src = i * inner, dst = s * inner;
    for (let e = 0; e < inner; e++) o[dst + e] += xs[src + e];
  }
  return out;
}

/** UnsortedSegmentSum for wasm, on the heap. */
export const unsortedSegmentSumConfig: tf.KernelConfig = {
  kernelName: tf.UnsortedSegmentSum,
  backendName: "wasm",
  kernelFunc: unsortedSegmentSumKernel as tf.KernelFunc,
};
