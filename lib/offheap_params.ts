// Frozen weights kept outside the backend's memory, for inference on models whose weights crowd
// the wasm heap: the papers' U-Net (adm256, 553 M parameters) holds 2.06 GiB of its 4 GiB, so
// feature extraction fitted 2 images per batch. Here each weight lives in a plain typed array
// (JS memory, no ceiling but the machine's) and becomes a tensor only when a layer reads it,
// inside that layer's tidy, which frees it with the layer's activations: the heap holds one
// layer's weights at a time. Storage is fp32 (exact) or bf16 (half the bytes; what bf16 products
// read anyway, lib/engine/blas/precision.ts).
//
// The record is read-only and must be read inside tf.tidy (as lib/models/unet.ts's `apply`
// does); a read outside one leaves that tensor to the caller. `disposeParams` releases it
// without materialising anything.
import * as tf from "@tensorflow/tfjs";
import type { Params } from "./params.ts";

/** How the weights are stored off the heap. */
export type Storage = "fp32" | "bf16";

const STORE = Symbol("off-heap store");

interface Stored {
  readonly shape: number[];
  readonly values: Float32Array | Uint16Array;
}

interface Store {
  readonly entries: Map<string, Stored>;
  readonly storage: Storage;
}

/** float32 → bf16 bits, rounded to nearest even (NaN kept a NaN). */
export function toBf16Bits(x: Float32Array): Uint16Array {
  const bits = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    out[i] = (b & 0x7fffffff) > 0x7f800000
      ? (b >>> 16) | 0x40
      : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** bf16 bits → float32 (exact). */
export function fromBf16Bits(h: Uint16Array): Float32Array {
  const bits = new Uint32Array(h.length);
  for (let i = 0; i < h.length; i++) bits[i] = h[i] << 16;
  return new Float32Array(bits.buffer);
}

/**
 * Move `params` off the backend into typed arrays stored as `storage`; the tensors of `params`
 * are disposed. Returns a record with the same names whose reads materialise a tensor.
 */
export function offHeapParams(params: Params, storage: Storage = "fp32"): Params {
  const entries = new Map<string, Stored>();
  for (const [name, v] of Object.entries(params)) {
    const data = v.dataSync() as Float32Array;
    entries.set(name, {
      shape: [...v.shape],
      values: storage === "bf16" ? toBf16Bits(data) : data,
    });
    v.dispose();
  }
  const store: Store = { entries, storage };
  const read = (s: Stored) =>
    tf.tensor(s.values instanceof Uint16Array ? fromBf16Bits(s.values) : s.values, s.shape);
  return new Proxy({} as Params, {
    get: (_, name) => {
      if (name === STORE) return store;
      const s = typeof name === "string" ? entries.get(name) : undefined;
      return s && read(s);
    },
    has: (_, name) => typeof name === "string" && entries.has(name),
    ownKeys: () => [...entries.keys()],
    getOwnPropertyDescriptor: (_, name) =>
      typeof name === "string" && entries.has(name)
        ? { configurable: true, enumerable: true, writable: false, value: undefined }
        : undefined,
    set: () => false,
    deleteProperty: () => false,
  });
}

/** The store behind an off-heap record, or undefined for ordinary params. */
function storeOf(p: Params): Store | undefined {
  return (p as unknown as Record<symbol, Store | undefined>)[STORE];
}

/** Whether `p` is an off-heap record (`offHeapParams`). */
export function isOffHeap(p: Params): boolean {
  return storeOf(p) !== undefined;
}

/** Bytes an off-heap record holds, and its storage; undefined for ordinary params. */
export function offHeapBytes(p: Params): { bytes: number; storage: Storage } | undefined {
  const s = storeOf(p);
  if (!s) return undefined;
  let bytes = 0;
  for (const e of s.entries.values()) bytes += e.values.byteLength;
  return { bytes, storage: s.storage };
}

/** Drop an off-heap record's arrays (`disposeParams` calls this); reads then return undefined. */
export function releaseOffHeap(p: Params): boolean {
  const s = storeOf(p);
  s?.entries.clear();
  return s !== undefined;
}
