// oneDNN's batched matmul primitive and its tanh-GELU eltwise (Debian libdnnl2, v2.x C API)
// through Deno FFI, on wasm-heap views in place. The batched matmul covers every head and image
// of an attention product in one call (oneDNN splits the batch over its threads), where a loop of
// small cblas_sgemm calls runs each 196×196×32 product on both threads and mostly waits; it also
// takes the large single products (./matmul.ts ONEDNN_MIN_MACS), with their bias.
// Loading goes through ./onednn_core.ts (one libdnnl, OpenMP wait policy, thread count,
// DP_ONEDNN=0); any geometry oneDNN refuses returns false so the caller keeps its own route.
import { activeOneDnn } from "./onednn.ts";
import { precision } from "./precision.ts";
import type { Blas } from "./openblas.ts";
import {
  ARG_BIAS,
  ARG_DST,
  ARG_SRC,
  ARG_WEIGHTS,
  BF16,
  type Core,
  ELTWISE_GELU_TANH,
  F32,
  loadOneDnnCore,
  OP_BYTES,
  type Ptr,
  type View,
} from "./onednn_core.ts";

/** Batched products and tanh-GELU on float32 views; each returns false where oneDNN declines. */
export interface OneDnnMatMul {
  /**
   * out[b] ← op(A[b])·op(B[b]) (+ bias, one value per column) for b < batch, A and B
   * [batch or 1, ·, ·] (1: shared by every batch), row-major, contiguous; out [batch, m, n].
   */
  matmul(
    batch: number,
    aBatched: boolean,
    bBatched: boolean,
    m: number,
    n: number,
    k: number,
    transposeA: boolean,
    transposeB: boolean,
    a: Float32Array,
    b: Float32Array,
    out: Float32Array,
    bias?: Float32Array,
  ): boolean;
  /**
   * Row-major C ← alpha·op(A)·op(B) + beta·C as cblas_sgemm takes it, with A and B rounded to
   * bf16 and the products accumulated in f32 (dnnl_gemm_bf16bf16f32); false where it fails.
   */
  gemmBf16(...args: Parameters<Blas["sgemm"]>): boolean;
  /** y ← x·½(1 + tanh(√(2/π)(x + 0.044715x³))). */
  gelu(x: Float32Array, y: Float32Array): boolean;
  /** dx ← dy·GELU′(x), the same tanh form. */
  geluBackward(x: Float32Array, dy: Float32Array, dx: Float32Array): boolean;
}

function bind(core: Core): OneDnnMatMul {
  const { lib, md, primitive, run, toBf16 } = core;
  interface Mm {
    readonly a: Uint8Array;
    readonly b: Uint8Array;
    readonly c: Uint8Array;
    readonly bias: Uint8Array | null;
    readonly prim: Ptr;
  }
  const mms = new Map<string, Mm | null>();
  // In bf16, A and B are read as bf16 (rounded into scratch per call); C is f32 either way.
  const mmOf = (
    batch: number,
    ab: boolean,
    bb: boolean,
    m: number,
    n: number,
    k: number,
    ta: boolean,
    tb: boolean,
    bf16: boolean,
    withBias: boolean,
  ): Mm | undefined => {
    const key = `${batch},${ab},${bb},${m},${n},${k},${ta},${tb},${bf16},${withBias}`;
    const known = mms.get(key);
    if (known !== undefined) return known ?? undefined;
    const build = (): Mm | undefined => {
      const t = bf16 ? BF16 : F32;
      const a = md([ab ? batch : 1, m, k], ta ? [m * k, 1, m] : [m * k, k, 1], t);
      const b = md([bb ? batch : 1, k, n], tb ? [k * n, 1, k] : [k * n, n, 1], t);
      const c = md([batch, m, n], [m * n, n, 1]);
      const bias = withBias ? md([1, 1, n], [n, n, 1]) : null; // f32, broadcast over rows
      if (!a || !b || !c || bias === undefined) return undefined;
      const d = new Uint8Array(OP_BYTES);
      const biasPtr = bias && Deno.UnsafePointer.of(bias);
      if (lib.dnnl_matmul_desc_init(d, a, b, biasPtr, c) !== 0) return undefined;
      const made = primitive(d, null);
      return made ? { a, b, c, bias, prim: made.prim } : undefined;
    };
    const mm = build();
    mms.set(key, mm ?? null);
    return mm;
  };
  // On oneDNN's threads (only the SiLU route pins one).
  const gelu = core.eltwise(ELTWISE_GELU_TANH, 0, false);

  return {
    matmul(batch, ab, bb, m, n, k, ta, tb, a, b, c, bias) {
      if (batch < 1 || m < 1 || n < 1 || k < 1) return false;
      if (bias && bias.length !== n) return false;
      const bf16 = precision() === "bf16";
      const mm = mmOf(batch, ab, bb, m, n, k, ta, tb, bf16, bias !== undefined);
      if (!mm) return false;
      const aIn = bf16 ? toBf16(a, 0) : a, bIn = bf16 ? toBf16(b, 1) : b;
      if (!aIn || !bIn) return false;
      const views: View[] = [[ARG_SRC, mm.a, aIn], [ARG_WEIGHTS, mm.b, bIn], [ARG_DST, mm.c, c]];
      if (mm.bias && bias) views.push([ARG_BIAS, mm.bias, bias]);
      run(mm.prim, views);
      return true;
    },
    gemmBf16(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
      // Only the elements op(A) and op(B) span: (rows - 1)·ld + cols of each.
      const span = (rows: number, cols: number, ld: number) =>
        rows === 0 ? 0 : (rows - 1) * ld + cols;
      const aIn = toBf16(a.subarray(0, ta ? span(k, m, lda) : span(m, k, lda)), 0);
      const bIn = toBf16(b.subarray(0, tb ? span(n, k, ldb) : span(k, n, ldb)), 1);
      if (!aIn || !bIn) return false;
      const T = 84, N = 78; // 'T', 'N'
      return lib.dnnl_gemm_bf16bf16f32(
        ta ? T : N,
        tb ? T : N,
        BigInt(m),
        BigInt(n),
        BigInt(k),
        alpha,
        aIn,
        BigInt(lda),
        bIn,
        BigInt(ldb),
        beta,
        c,
        BigInt(ldc),
      ) === 0;
    },
    gelu: (x, y) => gelu.forward(x, y),
    geluBackward: (x, dy, dx) => gelu.backward(x, dy, dx),
  };
}

let cached: OneDnnMatMul | null | undefined;

/** The oneDNN matmul and GELU, once per process; undefined where oneDNN does not load. */
export function loadOneDnnMatMul(): OneDnnMatMul | undefined {
  if (cached === undefined) {
    const core = loadOneDnnCore();
    cached = core ? bind(core) : null;
  }
  return cached ?? undefined;
}

let enabled = true;

/** Turn the oneDNN matmul and GELU routes on or off (for comparisons); returns availability. */
export function setOneDnnMatMulEnabled(on: boolean): boolean {
  enabled = on;
  return loadOneDnnMatMul() !== undefined;
}

/** oneDNN's GELU while oneDNN's routes are on (independent of the matmul switch), else undefined. */
export function activeOneDnnEltwise(): OneDnnMatMul | undefined {
  return activeOneDnn() ? loadOneDnnMatMul() : undefined;
}

/** The loaded oneDNN matmul while its routes (and oneDNN's) are on, else undefined. */
export function activeOneDnnMatMul(): OneDnnMatMul | undefined {
  return enabled && activeOneDnn() ? loadOneDnnMatMul() : undefined;
}
