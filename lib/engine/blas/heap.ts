// Zero-copy access to tensors on the tfjs wasm backend's heap.
// Each wasm tensor lives at `dataIdMap.get(dataId).memoryOffset` inside the module's memory
// (tfjs-backend-wasm dist/backend_wasm.js). Any allocation may grow that memory and detach
// earlier views, so kernels allocate every output first and take views afterwards.
import type * as tf from "@tensorflow/tfjs";

/** The parts of tfjs-backend-wasm's BackendWasm that the project kernels use. */
export interface WasmBackend {
  readonly wasm: { readonly HEAPU8: Uint8Array };
  readonly dataIdMap: { get(dataId: unknown): { memoryOffset: number } | undefined };
  makeOutput(shape: number[], dtype: "float32"): tf.TensorInfo;
  disposeData(dataId: unknown, force?: boolean): boolean;
}

/** The wasm backend handed to a kernel function, checked to have the fields used here. */
export function asWasmBackend(backend: unknown): WasmBackend {
  const b = backend as Partial<WasmBackend> | undefined;
  if (
    !b?.wasm?.HEAPU8 || !b.dataIdMap || typeof b.makeOutput !== "function" ||
    typeof b.disposeData !== "function"
  ) {
    throw new Error("Project kernel in lib/engine/blas/heap.ts needs the wasm backend");
  }
  return b as WasmBackend;
}

/** Float32 view of a tensor's data on the wasm heap (valid until the next allocation). */
export function f32View(backend: WasmBackend, t: tf.TensorInfo): Float32Array {
  return new Float32Array(backend.wasm.HEAPU8.buffer, 4 * wordOffset(backend, t), sizeOf(t.shape));
}

/** Element offset of a 4-byte tensor on the wasm heap. */
export function wordOffset(backend: Pick<WasmBackend, "dataIdMap">, t: tf.TensorInfo): number {
  const data = backend.dataIdMap.get(t.dataId);
  if (!data) throw new Error("Tensor data not found on the wasm heap in lib/engine/blas/heap.ts");
  return data.memoryOffset / 4; // byte offsets pass 2^31 on a large heap: no signed shifts
}

/** Number of elements of a shape. */
export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/**
 * A Float32Array of `n` elements that starts on a 64-byte boundary, off the wasm heap. oneDNN's
 * Winograd kernels write their blocked buffers with aligned non-temporal stores (`vmovntps`),
 * which fault on the 16-byte-aligned memory that small JS buffers get: the process dies with a
 * segmentation fault. oneDNN aligns what it allocates itself; buffers handed to it must be too.
 */
export function alignedF32(n: number): Float32Array {
  const buf = new Float32Array(n + ALIGN / 4);
  let addr: bigint;
  try {
    addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
  } catch {
    return buf.subarray(0, n); // no FFI permission: then no oneDNN either
  }
  const skip = Number((BigInt(ALIGN) - (addr % BigInt(ALIGN))) % BigInt(ALIGN)) / 4;
  return buf.subarray(skip, skip + n);
}

const ALIGN = 64;

/** A growable scratch buffer off the wasm heap, reused between calls: `get(n)` returns a view of
 * `n` elements with unspecified contents, 64-byte aligned (`alignedF32`). */
export function makeScratch(): (n: number) => Float32Array {
  let buf: Float32Array = new Float32Array(0);
  return (n) => {
    if (buf.length < n) buf = alignedF32(Math.max(n, buf.length * 2));
    return buf.subarray(0, n);
  };
}
