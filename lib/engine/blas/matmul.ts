// BatchMatMul and _FusedMatMul on sgemm, reading and writing the wasm heap in place.
import type * as tf from "@tensorflow/tfjs";
import type { Blas } from "./openblas.ts";
import { asWasmBackend, f32View, sizeOf } from "./heap.ts";
import { activeOneDnnMatMul } from "./onednn_matmul.ts";
import { precision } from "./precision.ts";
import {
  applyEpilogue,
  broadcastOperand,
  type Epilogue,
  isActivation,
  isIdentity,
  NONE,
  type Operand,
} from "./epilogue.ts";

/** Geometry of a (batched) product op(A)·op(B) with tfjs's batch broadcasting. */
interface MatMulPlan {
  readonly m: number;
  readonly n: number;
  readonly k: number;
  readonly outShape: number[];
  /** For each output batch, the batch index into A and into B. */
  readonly aIndex: Int32Array;
  readonly bIndex: Int32Array;
}

/** Plan a batched product; throws with tfjs's wording when the shapes do not fit. */
export function planMatMul(
  aShape: readonly number[],
  bShape: readonly number[],
  transposeA: boolean,
  transposeB: boolean,
): MatMulPlan {
  const ra = aShape.length, rb = bShape.length;
  if (ra < 2 || rb < 2) {
    throw new Error(`Matmul in lib/engine/blas needs rank >= 2, got [${aShape}] and [${bShape}]`);
  }
  const m = transposeA ? aShape[ra - 1] : aShape[ra - 2];
  const ka = transposeA ? aShape[ra - 2] : aShape[ra - 1];
  const kb = transposeB ? bShape[rb - 1] : bShape[rb - 2];
  const n = transposeB ? bShape[rb - 2] : bShape[rb - 1];
  if (ka !== kb) {
    throw new Error(
      `Error in matMul: inner shapes (${ka}) and (${kb}) of Tensors with shapes ${aShape} and ` +
        `${bShape} and transposeA=${transposeA} and transposeB=${transposeB} must match.`,
    );
  }
  const aBatch = aShape.slice(0, -2), bBatch = bShape.slice(0, -2);
  const r = Math.max(aBatch.length, bBatch.length);
  const pa = [...new Array(r - aBatch.length).fill(1), ...aBatch];
  const pb = [...new Array(r - bBatch.length).fill(1), ...bBatch];
  const outBatch = pa.map((d, i) => {
    if (d !== pb[i] && d !== 1 && pb[i] !== 1) {
      throw new Error(
        `Operands could not be broadcast together with shapes ${aShape} and ${bShape}.`,
      );
    }
    return Math.max(d, pb[i]);
  });
  const total = sizeOf(outBatch);
  const aIndex = new Int32Array(total), bIndex = new Int32Array(total);
  const idx = new Array<number>(r).fill(0);
  for (let o = 0; o < total; o++) {
    let ai = 0, bi = 0;
    for (let d = 0; d < r; d++) {
      ai = ai * pa[d] + (pa[d] === 1 ? 0 : idx[d]);
      bi = bi * pb[d] + (pb[d] === 1 ? 0 : idx[d]);
    }
    aIndex[o] = ai;
    bIndex[o] = bi;
    for (let d = r - 1; d >= 0; d--) {
      if (++idx[d] < outBatch[d]) break;
      idx[d] = 0;
    }
  }
  return { m, n, k: ka, outShape: [...outBatch, m, n], aIndex, bIndex };
}

/**
 * cblas_sgemm at the engine's precision: in bf16 through oneDNN's bf16 gemm (f32 accumulation),
 * falling back to OpenBLAS where that fails; in fp32 OpenBLAS itself.
 */
function gemmAtPrecision(blas: Blas): Blas["sgemm"] {
  const dnn = precision() === "bf16" ? activeOneDnnMatMul() : undefined;
  if (!dnn) return blas.sgemm;
  return (ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) => {
    if (!dnn.gemmBf16(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) {
      blas.sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    }
  };
}

// One product of at least this many multiply-adds runs on oneDNN's matmul primitive in fp32
// where it loads: its brgemm kernels ran the DiT's linear layers and their gradients (12544 rows
// of 128–512) and the U-Net attention's (3136 rows) 1.2–1.6× as fast as OpenBLAS's sgemm on an
// Intel Xeon (model 207), but a call costs ~0.09 ms more, which the m = 64 products of the time
// embedding and the modulation layers (≤ 6.3M multiply-adds) do not repay. A fixed rule, not a
// timing, so that a run's numbers do not depend on the host's noise.
export const ONEDNN_MIN_MACS = 2 ** 23;

/**
 * out ← op(A)·op(B) (+ bias, one value per column) per batch; every view on the heap, taken
 * after the output exists.
 */
function runPlan(
  blas: Blas,
  p: MatMulPlan,
  transposeA: boolean,
  transposeB: boolean,
  a: Float32Array,
  b: Float32Array,
  out: Float32Array,
  bias?: Float32Array,
): void {
  const { m, n, k, aIndex, bIndex } = p;
  const batches = aIndex.length;
  if (m === 0 || n === 0 || batches === 0) return;
  if (k === 0) {
    if (bias) fillRows(out, bias);
    else out.fill(0);
    return;
  }
  const sgemm = gemmAtPrecision(blas);
  const lda = transposeA ? m : k, ldb = transposeB ? k : n;
  const aSize = m * k, bSize = k * n, oSize = m * n;
  // A bias goes in as C before a beta = 1 sgemm: a copy instead of an add pass.
  const beta = bias ? 1 : 0;
  // One product, or one shared B under a row-major A: the batches stack into one taller GEMM
  // (linear layers on [N, T, D] activations), which keeps the kernels in their efficient regime.
  const sharedB = bIndex.every((v) => v === bIndex[0]);
  const stacked = !transposeA && sharedB && aIndex.every((v, i) => v === i);
  if (batches === 1 || stacked) {
    const rows = batches * m;
    const av = a.subarray(aIndex[0] * aSize), bv = b.subarray(bIndex[0] * bSize);
    const dnn = precision() === "fp32" && rows * n * k >= ONEDNN_MIN_MACS
      ? activeOneDnnMatMul()
      : undefined;
    if (dnn?.matmul(1, true, true, rows, n, k, transposeA, transposeB, av, bv, out, bias)) return;
    if (bias) fillRows(out, bias);
    sgemm(transposeA, transposeB, rows, n, k, 1, av, lda, bv, ldb, beta, out, n);
    return;
  }
  // Many small products (attention: one per image and head) go to oneDNN's batched matmul in
  // one call, which splits the batch over threads; a per-batch sgemm loop threads each small
  // product and spends most of its time handing off.
  const aBatched = aIndex.every((v, i) => v === i), bBatched = bIndex.every((v, i) => v === i);
  const aShared = !aBatched && aIndex.every((v) => v === 0);
  const bShared = !bBatched && bIndex.every((v) => v === 0);
  const dnn = (aBatched || aShared) && (bBatched || bShared) ? activeOneDnnMatMul() : undefined;
  if (
    dnn?.matmul(batches, aBatched, bBatched, m, n, k, transposeA, transposeB, a, b, out, bias)
  ) return;
  if (bias) fillRows(out, bias);
  for (let o = 0; o < batches; o++) {
    sgemm(
      transposeA,
      transposeB,
      m,
      n,
      k,
      1,
      a.subarray(aIndex[o] * aSize),
      lda,
      b.subarray(bIndex[o] * bSize),
      ldb,
      beta,
      out.subarray(o * oSize),
      n,
    );
  }
}

/** Every row of `out` (rows of `row.length`) ← row, at memcpy speed (doubling copies). */
export function fillRows(out: Float32Array, row: Float32Array): void {
  if (out.length === 0) return;
  out.set(row.subarray(0, Math.min(row.length, out.length)), 0);
  for (let filled = row.length; filled < out.length; filled *= 2) {
    out.copyWithin(filled, 0, Math.min(filled, out.length - filled));
  }
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

/** BatchMatMul kernel on sgemm; `fallback` handles dtypes other than float32. */
export function makeBatchMatMul(blas: Blas, fallback?: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs) => {
    const { a, b } = args.inputs as Record<string, tf.TensorInfo>;
    const { transposeA = false, transposeB = false } = (args.attrs ?? {}) as {
      transposeA?: boolean;
      transposeB?: boolean;
    };
    if ((a.dtype !== "float32" || b.dtype !== "float32") && fallback) return fallback(args);
    const backend = asWasmBackend(args.backend);
    const plan = planMatMul(a.shape, b.shape, transposeA, transposeB);
    const out = backend.makeOutput(plan.outShape, "float32");
    runPlan(
      blas,
      plan,
      transposeA,
      transposeB,
      f32View(backend, a),
      f32View(backend, b),
      f32View(backend, out),
    );
    return out;
  };
}

/** Read an optional bias-like input as an operand broadcast against `outShape`. */
export function operandOf(
  backend: ReturnType<typeof asWasmBackend>,
  t: tf.TensorInfo | undefined,
  outShape: readonly number[],
): Operand | undefined {
  if (!t) return NONE;
  if (t.dtype !== "float32") return undefined;
  return broadcastOperand(f32View(backend, t), t.shape, outShape);
}

/** _FusedMatMul kernel: sgemm, then bias and activation in place. */
export function makeFusedMatMul(blas: Blas, fallback?: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs) => {
    const { a, b, bias, preluActivationWeights } = args.inputs as Record<
      string,
      tf.TensorInfo | undefined
    >;
    const attrs = (args.attrs ?? {}) as {
      transposeA?: boolean;
      transposeB?: boolean;
      activation?: string;
      leakyreluAlpha?: number;
    };
    const { transposeA = false, transposeB = false } = attrs;
    const activation = attrs.activation ?? "linear";
    const unsupported = (why: string) => {
      if (fallback) return fallback(args);
      throw new Error(`_FusedMatMul in lib/engine/blas/matmul.ts: ${why}`);
    };
    if (!a || !b) return unsupported("inputs a and b are required");
    if (a.dtype !== "float32" || b.dtype !== "float32") return unsupported("float32 only");
    if (!isActivation(activation)) return unsupported(`activation "${activation}" unsupported`);
    const backend = asWasmBackend(args.backend);
    const plan = planMatMul(a.shape, b.shape, transposeA, transposeB);
    const biasOp = operandOf(backend, bias, plan.outShape);
    const preluOp = operandOf(backend, preluActivationWeights, plan.outShape);
    if (!biasOp || !preluOp) return unsupported("bias or PReLU weights do not broadcast");
    const epilogue: Epilogue = {
      bias: biasOp,
      activation,
      prelu: preluOp,
      leakyreluAlpha: attrs.leakyreluAlpha ?? 0.2,
    };
    const out = backend.makeOutput(plan.outShape, "float32");
    const ov = f32View(backend, out);
    const [av, bv] = [f32View(backend, a), f32View(backend, b)];
    if (biasOp.kind === "row") {
      runPlan(blas, plan, transposeA, transposeB, av, bv, ov, biasOp.values);
      const rest: Epilogue = { ...epilogue, bias: NONE };
      if (!isIdentity(rest)) applyEpilogue(ov, 0, ov.length, plan.n, rest);
      return out;
    }
    runPlan(blas, plan, transposeA, transposeB, av, bv, ov);
    if (!isIdentity(epilogue)) applyEpilogue(ov, 0, ov.length, plan.n, epilogue);
    return out;
  };
}
