// Project kernels in C, compiled on first use: where wasm's JS loops or composed tf ops lose most
// to PyTorch (the GroupNorm passes: 40 % of a U-Net train step, 5× PyTorch's time; DiT's adaLN,
// a dozen tf ops; bench/profile.ts), a C compiler is usually at hand. `prepareNativeKernels`
// compiles lib/engine/native/*.c with the system's `cc` into the per-user cache (the root of
// ./native_libs.ts), keyed by a hash of sources and flags, and loads it through FFI; later runs
// load the cached library without running cc. Nothing here throws or hangs: the compile has a
// time-out, the library is renamed into place only once built, one that fails to load is rebuilt,
// and any failure prints one line and leaves the JS kernels in place. DP_NATIVE=off (as for the
// native libraries) or DP_BLAS=0 turn it off. initEngine installs the result (`setNativeKernels`)
// for the kernels in ./fused that use it.
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { BLAS_ENV, ffiGranted, processEnv } from "./blas/openblas.ts";
import { openMpWaiting } from "./blas/onednn_core.ts";
import { NATIVE_ENV, nativeCacheRoot, runCommand, type Runner, sha256Hex } from "./native_libs.ts";
import type { AdamTable } from "./fused/optim.ts";
import type { AttentionDims } from "./fused/attention.ts";
import type { GnDims, GnFinish, GnGrads, GnParams, GnStats } from "./fused/group_norm.ts";
import type { copyBlocks, RowGather } from "./wasm_kernels/copy.ts";
import type { BinaryLayout } from "./wasm_kernels/binary.ts";

type Env = (name: string) => string | undefined;

const native = (f: string) => fileURLToPath(new URL(`./native/${f}`, import.meta.url));
const SOURCES = [
  ...["group_norm.c", "layer_norm.c", "copy.c", "binary.c", "softmax.c", "reduce.c", "pool.c"],
  ...["optim.c", "attention.c", "peak.c"],
].map(native);
// Included by the sources: part of the cache key, not of the compile command.
const HEADERS = ["exp.h", "attention_impl.h"].map(native);
// -fno-trapping-math lets gcc vectorise the clamps of group_norm.c's exp (no FP traps are
// enabled; values are unchanged), -fno-math-errno the square roots of optim.c's Adam (errno is
// never read; sqrt is correctly rounded either way).
const FLAGS = [
  "-O3",
  "-shared",
  "-fPIC",
  "-ffp-contract=off",
  "-fno-trapping-math",
  "-fno-math-errno",
];
// GroupNorm's batched passes split the examples over threads; a cc without OpenMP builds them
// single-threaded (same results). The library is never unloaded (-z nodelete): Deno closes a
// collected DynamicLibrary, and when it is libgomp's only user that unloads libgomp under its
// parked worker threads (a segfault seen in the tests, which load several builds).
const OPENMP = ["-fopenmp", "-Wl,-z,nodelete"];
const ABI = 22;
const COMPILE_MS = 60_000;

const SYMBOLS = {
  dp_gn_abi: { parameters: [], result: "i32" },
  dp_gn_sums: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i64", "i64", "i64"],
    result: "void",
  },
  dp_gn_affine: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i64", "i64", "i64"],
    result: "void",
  },
  dp_gn_silu_grad_sums: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i64", "i64", "i64"],
    ],
    result: "void",
  },
  dp_gn_affine2: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "i64", "i64", "i64"],
    result: "void",
  },
  dp_gn_stats: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i64", "i64", "i64", "f64", "f64"],
    result: "void",
  },
  dp_gn_forward: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i64", "i64", "i64", "i64", "f64", "i32"],
    ],
    result: "void",
  },
  dp_gn_backward: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i64", "i64", "i64", "i64", "f64", "i32"],
    ],
    result: "i32",
  },
  dp_gn_coefficients: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i64", "i64", "i64"],
    ],
    result: "void",
  },
  dp_gn_finish: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i64", "i64", "i64", "f64"],
    ],
    result: "void",
  },
  dp_copy_blocks: {
    parameters: ["buffer", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "void",
  },
  dp_gather_rows: {
    parameters: ["buffer", "i64", "i64", "buffer", "buffer", "i64", "i64"],
    result: "void",
  },
  dp_binary: {
    parameters: ["i32", "buffer", "i32", "buffer", "i32", "buffer", "i64", "i64", "i64"],
    result: "void",
  },
  dp_gated_residual: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i64", "i64", "i64"],
    result: "void",
  },
  dp_gate_grad: {
    parameters: ["buffer", "buffer", "buffer", "i64", "i64", "i64"],
    result: "void",
  },
  dp_adam_multi: {
    parameters: ["buffer", "buffer", "buffer", "i64", "f64", "f64", "f64"],
    result: "void",
  },
  dp_add_multi: { parameters: ["buffer", "buffer", "i64"], result: "void" },
  dp_ema_multi: { parameters: ["buffer", "buffer", "i64", "f64"], result: "void" },
  dp_sum_squares: { parameters: ["buffer", "i64"], result: "f64" },
  dp_upsample2: { parameters: ["buffer", "buffer", "i64", "i64", "i64", "i64"], result: "void" },
  dp_upsample2_grad: {
    parameters: ["buffer", "buffer", "i64", "i64", "i64", "i64"],
    result: "void",
  },
  dp_avg_pool: {
    parameters: ["buffer", "buffer", "i64", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "void",
  },
  dp_avg_pool_grad: {
    parameters: ["buffer", "buffer", "i64", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "void",
  },
  dp_column_sums: { parameters: ["buffer", "i64", "i64", "buffer"], result: "i32" },
  dp_softmax: { parameters: ["buffer", "buffer", "i64", "i64", "f32"], result: "void" },
  dp_softmax_grad: {
    parameters: ["buffer", "buffer", "buffer", "i64", "i64", "f32"],
    result: "void",
  },
  dp_attention: {
    parameters: ["buffer", "buffer", "i64", "i64", "i64", "i64", "i32", "f32"],
    result: "i32",
  },
  dp_attention_grad: {
    parameters: ["buffer", "buffer", "buffer", "i64", "i64", "i64", "i64", "i32", "f32"],
    result: "i32",
  },
  dp_ln_mod: {
    parameters: ["buffer", "buffer", "buffer", "buffer", "i64", "i64", "i64", "f64"],
    result: "void",
  },
  dp_ln_mod_grad: {
    parameters: [
      ...["buffer", "buffer", "buffer", "buffer", "buffer", "buffer"],
      ...["i64", "i64", "i64", "f64"],
    ],
    result: "i32",
  },
  dp_peak: { parameters: ["i32", "f64", "i32"], result: "f64" },
} as const;

/** The kernels in C: GroupNorm's passes over `n` examples of rows of `c` channels, with
 * per-example coefficients and sums [n, c] (native/group_norm.c), adaLN over x [n, t, d]
 * with scale, shift [n, d] (native/layer_norm.c), strided block and row copies (native/copy.c),
 * Add, Sub, Multiply and DiT's gated residual (native/binary.c), attention's softmax along rows
 * of n (native/softmax.c), multi-head attention from a fused qkv projection (native/attention.c),
 * column sums (native/reduce.c), the gradient of k×k stride-k average pooling (native/pool.c),
 * Adam, the parameter update, the EMA (each over all parameters in one call) and the
 * gradient norm's sums of squares (native/optim.c), and the CPU's arithmetic peak
 * (native/peak.c). */
export interface NativeKernels {
  /** The loaded library's path (for the engine line). */
  readonly path: string;
  sums(d: Float32Array, x: Float32Array, S1: Float64Array, S2: Float64Array, c: number): void;
  affine(x: Float32Array, A: Float32Array, B: Float32Array, y: Float32Array, c: number): void;
  /**
   * dd = ∂L/∂y1 through the SiLU of y1 = x·A + B (recomputed), with the sums of `sums` over dd:
   * the SiLU backward and GroupNorm's first gradient pass in one.
   */
  siluGradSums(
    dy: Float32Array,
    x: Float32Array,
    A: Float32Array,
    B: Float32Array,
    dd: Float32Array,
    S1: Float64Array,
    S2: Float64Array,
    c: number,
  ): void;
  affine2(
    d: Float32Array,
    P: Float32Array,
    x: Float32Array,
    Q: Float32Array,
    R: Float32Array,
    out: Float32Array,
    c: number,
  ): void;
  /** GroupNorm's group statistics from channel sums (../fused/group_norm.ts's JS bits). */
  gnStats(sums: Float64Array, sqs: Float64Array, st: GnStats, d: GnDims, eps: number): void;
  /** Every example's A, B [N, C] with y1 = x·A + B (the JS bits). */
  gnCoefficients(st: GnStats, p: GnParams, A: Float32Array, B: Float32Array, d: GnDims): void;
  /**
   * y = GN(x)·(1 + scale) + shift, or silu of it: sums, statistics, coefficients and the affine
   * pass an example at a time (the bits of those steps run separately). Returns the statistics.
   */
  gnForward(
    x: Float32Array,
    p: GnParams,
    y: Float32Array,
    d: GnDims,
    eps: number,
    silu: boolean,
  ): GnStats;
  /** GroupNorm's parameter gradients and dx's coefficients from the sums (the JS bits). */
  gnFinish(f: GnFinish): void;
  /**
   * GroupNorm's whole backward from dy = ∂L/∂y (through the SiLU when `silu`), an example at a
   * time: the bits of the separate passes (statistics, `siluGradSums` or `sums`, `gnFinish`,
   * `affine2`). False when its scratch could not be allocated (nothing written).
   */
  gnBackward(
    dy: Float32Array,
    x: Float32Array,
    p: GnParams,
    out: GnGrads,
    d: GnDims,
    eps: number,
    silu: boolean,
  ): boolean;
  /**
   * `blocks` runs of `len` words from word offset src (stride srcStride) to dst (stride
   * dstStride) of `heap`, the runs not overlapping.
   */
  copyBlocks(...args: Parameters<typeof copyBlocks>): void;
  /** The rows of a transpose that keeps the last axis (wasm_kernels/copy.ts's `RowGather`). */
  gatherRows(heap: Int32Array, src: number, dst: number, g: RowGather): void;
  /** out = a op b (op 0 add, 1 subtract, 2 multiply) in `layout` (wasm_kernels/binary.ts). */
  binary(op: number, a: Float32Array, b: Float32Array, out: Float32Array, l: BinaryLayout): void;
  /** out [P, Q, R] = x + g·h, g [P, 1, R] repeated along Q (DiT's gated residual; the bits of
   * a Multiply and an Add). */
  gatedResidual(
    x: Float32Array,
    g: Float32Array,
    h: Float32Array,
    out: Float32Array,
    dims: readonly [number, number, number],
  ): void;
  /** dg [P, R] = Σ_q dy[p, q, :]·h[p, q, :], the gate's gradient. */
  gateGrad(
    dy: Float32Array,
    h: Float32Array,
    dg: Float32Array,
    dims: readonly [number, number, number],
  ): void;
  /**
   * Adam's pass (../fused/optim.ts's adamArrays, the same bits) over every tensor of `table`
   * (../fused/optim.ts's `AdamTable`: arrays as word offsets on `heap`).
   */
  adamMulti(heap: Float32Array, table: AdamTable): void;
  /** out = a + b in float for each row (a, b, out, n) of `table` (word offsets on `heap`). */
  addMulti(heap: Float32Array, table: BigInt64Array): void;
  /** out = rate·e + (1 − rate)·p (the JS loop's bits) for each row (e, p, out, n) of `table`. */
  emaMulti(heap: Float32Array, table: BigInt64Array, rate: number): void;
  /** Σ x², in double (NaN when out of memory). */
  sumSquares(x: Float32Array): number;
  /** y [n, 2h, 2w, c]: x [n, h, w, c] upsampled ×2, nearest. */
  upsample2(
    x: Float32Array,
    y: Float32Array,
    dims: readonly [number, number, number, number],
  ): void;
  /** dx [n, h, w, c]: the sum of each 2×2 block of dy [n, 2h, 2w, c] (rows, then columns). */
  upsample2Grad(
    dy: Float32Array,
    dx: Float32Array,
    dims: readonly [number, number, number, number],
  ): void;
  /** y [n, oh, ow, c]: the k×k stride-k valid average pool of x [n, h, w, c], k ≤ 3. */
  avgPool(
    x: Float32Array,
    y: Float32Array,
    dims: readonly [number, number, number, number, number, number, number],
  ): void;
  /** dx [n, h, w, c] from dy [n, oh, ow, c] of a k×k stride-k valid average pool. */
  avgPoolGrad(
    dy: Float32Array,
    dx: Float32Array,
    dims: readonly [number, number, number, number, number, number, number],
  ): void;
  /** out[j] = Σ_i x[i·inner + j], in double as reduce.ts's JS loop; false when out of memory. */
  columnSums(x: Float32Array, rows: number, inner: number, out: Float32Array): boolean;
  /** p = softmax(scale·s) along each row of n (exp relative error ~1e-7). */
  softmax(s: Float32Array, p: Float32Array, n: number, scale: number): void;
  /** ds = scale·p⊙(dp − Σ_row dp⊙p) along each row of n: softmax(scale·s)'s backward. */
  softmaxGrad(p: Float32Array, dp: Float32Array, ds: Float32Array, n: number, scale: number): void;
  /**
   * out [n, t, heads·ch] = softmax(scale·q·kᵀ)·v per example and head, read from qkv
   * [n, t, 3·heads·ch] in channel order `a.legacy` (../fused/attention.ts); false when the kernel
   * could not allocate its scratch.
   */
  attention(qkv: Float32Array, out: Float32Array, a: AttentionDims): boolean;
  /** dqkv [n, t, 3·heads·ch] from qkv and dout [n, t, heads·ch]; false as for `attention`. */
  attentionGrad(
    qkv: Float32Array,
    dout: Float32Array,
    dqkv: Float32Array,
    a: AttentionDims,
  ): boolean;
  lnModulate(
    x: Float32Array,
    scale: Float32Array,
    shift: Float32Array,
    y: Float32Array,
    dims: readonly [number, number, number],
    eps: number,
  ): void;
  /** False when the kernel could not allocate its scratch (nothing written). */
  lnModulateGrad(
    dy: Float32Array,
    x: Float32Array,
    scale: Float32Array,
    grads: { dx: Float32Array; dscale: Float32Array; dshift: Float32Array },
    dims: readonly [number, number, number],
    eps: number,
  ): boolean;
  /**
   * GFLOP/s of the CPU's widest fp32 multiply-add ("fp32") or AVX512_BF16 dot product ("bf16")
   * with nothing else running, summed over `threads` threads that each run `seconds`;
   * undefined when the CPU lacks the instruction (or, for several threads, the build OpenMP).
   */
  peak(kind: "fp32" | "bf16", seconds: number, threads: number): number | undefined;
}

const attentionArgs = (a: AttentionDims) =>
  [
    BigInt(a.n),
    BigInt(a.t),
    BigInt(a.heads),
    BigInt(a.ch),
    a.legacy ? 1 : 0,
    a.scale,
  ] as const;

type Dims7 = [bigint, bigint, bigint, bigint, bigint, bigint, bigint];
type Dims4 = [bigint, bigint, bigint, bigint];

/** Load a built library and check its ABI; undefined when it does not load. */
export function loadNativeKernels(path: string): NativeKernels | undefined {
  let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
  const undo = openMpWaiting(processEnv); // where this library is the first to load libgomp
  try {
    lib = Deno.dlopen(path, SYMBOLS);
  } catch {
    return undefined;
  } finally {
    undo();
  }
  if (lib.symbols.dp_gn_abi() !== ABI) {
    lib.close();
    return undefined;
  }
  const s = lib.symbols;
  const gnDims = (d: GnDims) => [BigInt(d.n), BigInt(d.c), BigInt(d.g)] as const;
  // The one-call passes also take the rows per example: n, rows, c, g.
  const gnShape = (d: GnDims) => [BigInt(d.n), BigInt(d.s), BigInt(d.c), BigInt(d.g)] as const;
  const gnOperands = (p: GnParams) => [p.gamma, p.beta, p.scale ?? null, p.shift ?? null] as const;
  // Examples n = (per-example array length) / c; rows per example = (data length) / (n·c).
  const dims = (data: Float32Array, perExample: ArrayLike<number>, c: number) => {
    const n = perExample.length / c;
    return [BigInt(n), BigInt(data.length / (n * c)), BigInt(c)] as const;
  };
  return {
    path,
    sums: (d, x, S1, S2, c) => s.dp_gn_sums(d, x, S1, S2, ...dims(d, S1, c)),
    affine: (x, A, B, y, c) => s.dp_gn_affine(x, A, B, y, ...dims(x, A, c)),
    siluGradSums: (dy, x, A, B, dd, S1, S2, c) =>
      s.dp_gn_silu_grad_sums(dy, x, A, B, dd, S1, S2, ...dims(dy, A, c)),
    affine2: (d, P, x, Q, R, out, c) => s.dp_gn_affine2(d, P, x, Q, R, out, ...dims(d, P, c)),
    gnStats: (sums, sqs, st, d, eps) =>
      s.dp_gn_stats(sums, sqs, st.mean, st.rstd, ...gnDims(d), d.s * (d.c / d.g), eps),
    gnForward: (x, p, y, d, eps, silu) => {
      const st = { mean: new Float64Array(d.n * d.g), rstd: new Float64Array(d.n * d.g) };
      const nc = d.n * d.c;
      s.dp_gn_forward(
        x,
        ...gnOperands(p),
        y,
        new Float64Array(nc),
        new Float64Array(nc),
        st.mean,
        st.rstd,
        new Float32Array(nc),
        new Float32Array(nc),
        ...gnShape(d),
        eps,
        silu ? 1 : 0,
      );
      return st;
    },
    gnCoefficients: (st, p, A, B, d) =>
      s.dp_gn_coefficients(
        st.mean,
        st.rstd,
        ...gnOperands(p),
        A,
        B,
        ...gnDims(d),
      ),
    gnFinish: (f) =>
      s.dp_gn_finish(
        f.S1,
        f.S2,
        f.st.mean,
        f.st.rstd,
        f.p.gamma,
        f.p.beta,
        f.p.scale ?? null,
        f.dgamma,
        f.dbeta,
        f.dscale ?? null,
        f.dshift ?? null,
        f.P,
        f.Q,
        f.R,
        new Float64Array(f.d.c),
        new Float64Array(f.d.c),
        ...gnDims(f.d),
        f.d.s * (f.d.c / f.d.g),
      ),
    gnBackward: (dy, x, p, out, d, eps, silu) => {
      const dgamma = new Float64Array(d.c), dbeta = new Float64Array(d.c);
      const ok = s.dp_gn_backward(
        dy,
        x,
        ...gnOperands(p),
        out.dx,
        dgamma,
        dbeta,
        out.dscale ?? null,
        out.dshift ?? null,
        ...gnShape(d),
        eps,
        silu ? 1 : 0,
      ) !== 0;
      if (ok) {
        out.dgamma.set(dgamma);
        out.dbeta.set(dbeta);
      }
      return ok;
    },
    copyBlocks: (heap, src, srcStride, dst, dstStride, len, blocks) =>
      s.dp_copy_blocks(
        heap,
        BigInt(src),
        BigInt(srcStride),
        BigInt(dst),
        BigInt(dstStride),
        BigInt(len),
        BigInt(blocks),
      ),
    gatherRows: (heap, src, dst, g) =>
      s.dp_gather_rows(
        heap,
        BigInt(src),
        BigInt(dst),
        BigInt64Array.from(g.dims, BigInt),
        BigInt64Array.from(g.strides, BigInt),
        BigInt(g.dims.length),
        BigInt(g.len),
      ),
    gatedResidual: (x, g, h, out, [P, Q, R]) =>
      s.dp_gated_residual(x, g, h, out, BigInt(P), BigInt(Q), BigInt(R)),
    gateGrad: (dy, h, dg, [P, Q, R]) => s.dp_gate_grad(dy, h, dg, BigInt(P), BigInt(Q), BigInt(R)),
    binary: (op, a, b, out, l) =>
      s.dp_binary(
        op,
        a,
        l.aFull ? 1 : 0,
        b,
        l.bFull ? 1 : 0,
        out,
        BigInt(l.P),
        BigInt(l.Q),
        BigInt(l.R),
      ),
    adamMulti: (heap, t) =>
      s.dp_adam_multi(
        heap,
        t.rows,
        t.coefs,
        BigInt(t.coefs.length / 2),
        t.beta1,
        t.beta2,
        t.epsHat,
      ),
    addMulti: (heap, t) => s.dp_add_multi(heap, t, BigInt(t.length / 4)),
    emaMulti: (heap, t, rate) => s.dp_ema_multi(heap, t, BigInt(t.length / 4), rate),
    sumSquares: (x) => s.dp_sum_squares(x, BigInt(x.length)),
    upsample2: (x, y, dims) => s.dp_upsample2(x, y, ...dims.map(BigInt) as Dims4),
    upsample2Grad: (dy, dx, dims) => s.dp_upsample2_grad(dy, dx, ...dims.map(BigInt) as Dims4),
    avgPool: (x, y, dims) => s.dp_avg_pool(x, y, ...dims.map(BigInt) as Dims7),
    avgPoolGrad: (dy, dx, dims) => s.dp_avg_pool_grad(dy, dx, ...dims.map(BigInt) as Dims7),
    columnSums: (x, rows, inner, out) =>
      s.dp_column_sums(x, BigInt(rows), BigInt(inner), out) === 0,
    softmax: (sc, p, n, scale) => s.dp_softmax(sc, p, BigInt(sc.length / n), BigInt(n), scale),
    softmaxGrad: (p, dp, ds, n, scale) =>
      s.dp_softmax_grad(p, dp, ds, BigInt(p.length / n), BigInt(n), scale),
    attention: (qkv, out, a) => s.dp_attention(qkv, out, ...attentionArgs(a)) !== 0,
    attentionGrad: (qkv, dout, dqkv, a) =>
      s.dp_attention_grad(qkv, dout, dqkv, ...attentionArgs(a)) !== 0,
    lnModulate: (x, scale, shift, y, [n, t, d], eps) =>
      s.dp_ln_mod(x, scale, shift, y, BigInt(n), BigInt(t), BigInt(d), eps),
    lnModulateGrad: (dy, x, scale, g, [n, t, d], eps) =>
      s.dp_ln_mod_grad(
        dy,
        x,
        scale,
        g.dx,
        g.dscale,
        g.dshift,
        BigInt(n),
        BigInt(t),
        BigInt(d),
        eps,
      ) === 0,
    peak: (kind, seconds, threads) => {
      const gflops = s.dp_peak(kind === "fp32" ? 0 : 1, seconds, threads);
      return gflops < 0 ? undefined : gflops;
    },
  };
}

/** Options of `prepareNativeKernels` (tests inject the runner, cache and environment). */
export interface NativeKernelsOptions {
  readonly cacheDir?: string;
  readonly env?: Env;
  readonly run?: Runner;
  /** Where the one line about a failure goes. @default console.error */
  readonly log?: (line: string) => void;
}

// The kernels in use, installed by initEngine (undefined: the JS loops and composed ops).
let installed: NativeKernels | undefined;

/** Use the C kernels `k` (undefined: none); returns the previous ones. */
export function setNativeKernels(k?: NativeKernels): NativeKernels | undefined {
  const previous = installed;
  installed = k;
  return previous;
}

/** The C kernels in use, if any. */
export const nativeKernels = (): NativeKernels | undefined => installed;

/**
 * The kernels in C: from the cache, else compiled into it now. Undefined (with one line, except
 * when turned off) when off, without FFI or a cache, or when `cc` is absent or fails.
 */
export async function prepareNativeKernels(
  opts: NativeKernelsOptions = {},
): Promise<NativeKernels | undefined> {
  const env = opts.env ?? processEnv, run = opts.run ?? runCommand;
  const log = opts.log ?? console.error;
  const mode = (env(NATIVE_ENV) ?? "").toLowerCase();
  // DP_BLAS=0 asks for the plain wasm kernels: these are native kernels too.
  if (mode === "off" || mode === "0" || env(BLAS_ENV) === "0") return undefined;
  const skip = (why: string) => {
    log(
      `native kernels: ${why}; GroupNorm stays in JS (its passes about 4× slower; bench/profile.ts)`,
    );
    return undefined;
  };
  if (!ffiGranted("")) return undefined; // scripts without --allow-ffi: no native anything
  const root = opts.cacheDir ?? nativeCacheRoot(env);
  if (!root) return skip("no HOME for the cache");
  let source: string;
  try {
    source = (await Promise.all([...SOURCES, ...HEADERS].map((f) => Deno.readTextFile(f))))
      .join("\n");
  } catch (e) {
    return skip(`cannot read the C sources (${e})`);
  }
  // The key needs no compiler version: any compiler's build of these sources behaves the same,
  // and leaving cc out keeps a cached start to one dlopen.
  const key = (await sha256Hex(new TextEncoder().encode(source + [...FLAGS, ...OPENMP].join(" "))))
    .slice(0, 16);
  const dir = join(root, "kernels");
  const path = join(dir, `kernels-${key}.so`);
  const cached = loadNativeKernels(path);
  if (cached) return cached;
  // Absent, or present but unloadable (a truncated file): build it (again).
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    return skip(`cannot create ${dir} (${e})`);
  }
  const tmp = `${path}.tmp-${Deno.pid}`;
  const cc = (flags: string[]) =>
    run("cc", [...flags, "-o", tmp, ...SOURCES, "-lm"], { timeoutMs: COMPILE_MS });
  let built = await cc([...FLAGS, ...OPENMP]);
  if (built.code !== 0 && built.code !== 126 && built.code !== 127) built = await cc(FLAGS);
  if (built.code !== 0) {
    await Deno.remove(tmp).catch(() => {});
    if (built.code === 127) return skip("no C compiler (cc; Debian: apt-get install gcc)");
    if (built.code === 126) return skip("no --allow-run permission for cc");
    const why = built.stderr.split("\n").find((l) => /error/i.test(l)) ?? `exit ${built.code}`;
    return skip(`cc failed: ${why.trim().slice(0, 160)}`);
  }
  try {
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    return skip(`cannot write ${path} (${e})`);
  }
  return loadNativeKernels(path) ?? skip(`the built ${path} does not load`);
}
