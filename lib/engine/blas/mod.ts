// OpenBLAS-backed kernels for the wasm backend, through Deno FFI (zero copy on the wasm heap).
// STUB: to be filled in by the BLAS work.

/**
 * Register sgemm-backed kernels when libopenblas loads and FFI is allowed.
 * Returns details for the engine line (library path, threads), or undefined when unavailable.
 */
export function registerBlasKernels(): Record<string, string | number> | undefined {
  return undefined;
}
