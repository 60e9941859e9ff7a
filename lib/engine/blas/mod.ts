// OpenBLAS-backed kernels for the wasm backend, through Deno FFI (zero copy on the wasm heap);
// convolutions run on oneDNN instead where libdnnl loads (./onednn.ts), sgemm otherwise.
// They replace the wasm backend's own matmul and conv kernels; the replaced ones are kept and
// called for what these do not handle (non-float32 inputs, NCHW, unknown activations).
import * as tf from "@tensorflow/tfjs";
// The wasm backend's own kernels must be registered before they are looked up and replaced.
import "@tensorflow/tfjs-backend-wasm";
import { loadOpenBlas, openBlasCoreFor } from "./openblas.ts";
import { loadOneDnn } from "./onednn.ts";
import { type ColumnSummer, setColumnSummer } from "../wasm_kernels/reduce.ts";
import type { Blas } from "./openblas.ts";
import { makeBatchMatMul, makeFusedMatMul } from "./matmul.ts";
import {
  makeConv2D,
  makeConv2DBackpropFilter,
  makeConv2DBackpropInput,
  makeFusedConv2D,
} from "./conv.ts";

export {
  BLAS_ENV,
  BLAS_THREADS_ENV,
  loadOpenBlas,
  openBlas,
  OPENBLAS_ENV,
  THREAD_TIMEOUT,
  THREAD_TIMEOUT_ENV,
} from "./openblas.ts";
export {
  loadOneDnn,
  ONEDNN_ENV,
  ONEDNN_LIB_ENV,
  ONEDNN_THREADS_ENV,
  openOneDnn,
} from "./onednn.ts";
export { useOneDnn } from "./conv.ts";
export type { Blas } from "./openblas.ts";

const BACKEND = "wasm";

const FACTORIES: ReadonlyArray<
  readonly [string, (blas: Blas, fallback?: tf.KernelFunc) => tf.KernelFunc]
> = [
  ["BatchMatMul", makeBatchMatMul],
  ["_FusedMatMul", makeFusedMatMul],
  ["Conv2D", makeConv2D],
  ["FusedConv2D", makeFusedConv2D],
  ["Conv2DBackpropInput", makeConv2DBackpropInput],
  ["Conv2DBackpropFilter", makeConv2DBackpropFilter],
];

/** Names of the kernels `registerBlasKernels` replaces on the wasm backend. */
export const BLAS_KERNELS: readonly string[] = FACTORIES.map(([name]) => name);

let active: { blas: Blas; replaced: Map<string, tf.KernelConfig | undefined> } | undefined;

/** Column sums (Sum over leading axes: bias gradients) as ones[1, rows] · x[rows, inner]. */
function gemmColumnSums(blas: Blas): ColumnSummer {
  let ones = new Float32Array(0);
  return (x, rows, inner, out) => {
    if (rows === 0 || inner === 0) {
      out.fill(0);
      return;
    }
    if (ones.length < rows) ones = new Float32Array(rows).fill(1);
    blas.sgemm(false, false, 1, inner, rows, 1, ones, rows, x, inner, 0, out, inner);
  };
}

/**
 * Register sgemm-backed kernels when libopenblas loads and FFI is allowed. Each replaced
 * kernel's setup runs through the new registration, so it stays callable as the fallback even
 * when this runs before `tf.setBackend("wasm")`. Idempotent.
 * Returns details for the engine line (library path, threads), or undefined when unavailable
 * (`DP_BLAS=0`, no FFI permission, or no library).
 */
export function registerBlasKernels(): Record<string, string | number> | undefined {
  // oneDNN first: the ISA it detects names OpenBLAS's kernel set before OpenBLAS loads.
  const dnn = loadOneDnn();
  const blas = active?.blas ?? loadOpenBlas(openBlasCoreFor(dnn?.isa));
  if (!blas) return undefined;
  if (!active) {
    const replaced = new Map<string, tf.KernelConfig | undefined>();
    for (const [name, make] of FACTORIES) {
      const original = tf.getKernel(name, BACKEND);
      if (original) tf.unregisterKernel(name, BACKEND);
      replaced.set(name, original);
      tf.registerKernel({
        kernelName: name,
        backendName: BACKEND,
        kernelFunc: make(blas, original?.kernelFunc),
        setupFunc: original?.setupFunc,
        disposeFunc: original?.disposeFunc,
      });
    }
    setColumnSummer(gemmColumnSums(blas));
    active = { blas, replaced };
  }
  // Convolutions go to oneDNN when it loads (lib/engine/blas/conv.ts).
  const core = blas.coreForced ? `${blas.core}(named)` : blas.core;
  const base = { blas: blas.path, blasThreads: blas.threads, blasCore: core };
  // Recorded with every result: Winograd convolutions change the last bits of the numbers.
  return dnn ? { ...base, onednn: dnn.path, winograd: dnn.winograd } : base;
}

/**
 * Put back the kernels `registerBlasKernels` replaced (for comparisons in tests and benches).
 * Returns true when BLAS kernels were registered.
 */
export function unregisterBlasKernels(): boolean {
  if (!active) return false;
  for (const [name, original] of active.replaced) {
    tf.unregisterKernel(name, BACKEND);
    if (original) tf.registerKernel(original);
  }
  setColumnSummer(undefined);
  active = undefined;
  return true;
}

/** The loaded OpenBLAS while the BLAS kernels are registered, else undefined. */
export function activeBlas(): Blas | undefined {
  return active?.blas;
}
