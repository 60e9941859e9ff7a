// The wasm backend's memory ceiling: wasm32 addresses 4 GiB, and a tfjs wasm module that needs
// more aborts (`Aborted()`) and is unusable afterwards. Callers that can choose their batch size
// measure one image's peak first and size the batch to fit (lib/features.ts); an abort that
// happens anyway is turned into one line that names the limit.
import * as tf from "@tensorflow/tfjs";

/** Bytes a wasm32 module can address. */
export const WASM_HEAP_BYTES = 2 ** 32;

/** Share of the free heap a sized batch may plan to use: the heap fragments, and kernels keep
 * scratch beside the tensors tfjs counts. */
export const HEAP_SAFETY = 0.75;

/** The current backend's memory ceiling, or undefined where there is none to plan for. */
export function heapLimit(): number | undefined {
  return tf.getBackend() === "wasm" ? WASM_HEAP_BYTES : undefined;
}

/**
 * The largest batch whose estimated peak fits: `perImage` bytes per image on top of `resident`
 * bytes already held, within `safety` of `limit`; 0 when not even one image fits.
 */
export function batchThatFits(
  perImage: number,
  resident: number,
  limit: number,
  safety = HEAP_SAFETY,
): number {
  if (!(perImage > 0)) return Number.MAX_SAFE_INTEGER;
  return Math.max(0, Math.floor((limit * safety - resident) / perImage));
}

/** A computation needs more memory than the backend can address. */
export class HeapLimitError extends Error {
  override name = "HeapLimitError";
}

/** Whether `e` is the tfjs wasm module running out of memory (emscripten's abort). */
export function isWasmAbort(e: unknown): boolean {
  const msg = e instanceof Error ? e.message : String(e);
  return /Aborted\(|Cannot enlarge memory|out of memory|memory access out of bounds/i.test(msg);
}

/** Bytes in a readable unit (GiB from 1 GiB, MiB below). */
export function bytes(b: number): string {
  return b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(2)} GiB` : `${(b / 2 ** 20).toFixed(1)} MiB`;
}
