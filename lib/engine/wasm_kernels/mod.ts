// Project kernels for the tfjs wasm backend (conv gradients, UnsortedSegmentSum).
// STUB: to be filled in by the wasm-kernels work.

/** Register the project's wasm kernels; returns the kernel names registered. Idempotent. */
export function registerWasmKernels(): string[] {
  return [];
}
