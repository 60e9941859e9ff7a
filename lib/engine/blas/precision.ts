// The precision of the engine's matrix products and convolutions on wasm + oneDNN.
//   fp32  every product in float32 (the default);
//   bf16  mixed precision: the products' inputs (activations, weights, incoming gradients) are
//         rounded to bfloat16 as each oneDNN kernel reads them, and the products accumulate and
//         write float32. Tensors stay float32 throughout, so master weights, optimizer state,
//         losses, norms, softmax and every elementwise op keep float32 — PyTorch's CPU autocast
//         to bf16, less its bf16 activation storage.
// Set by `initEngine` (one setting per process, as the backend is); the kernels read it per call.

/** A precision of the products. */
export type Precision = "fp32" | "bf16";

/** The precisions `--precision` takes. */
export const PRECISIONS: readonly Precision[] = ["fp32", "bf16"];

let current: Precision = "fp32";

/** Set the products' precision (through `initEngine`, which checks the CPU first). */
export function setPrecision(p: Precision): void {
  current = p;
}

/** The products' precision now. */
export function precision(): Precision {
  return current;
}
