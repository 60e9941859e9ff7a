// The one libdnnl (Debian libdnnl2, v2.x C API) binding shared by ./onednn.ts (convolutions,
// SiLU) and ./onednn_matmul.ts (batched matmul, tanh-GELU): one dlopen, one engine and stream,
// libgomp's wait policy and thread count, and the descriptor / primitive / execute helpers.
// Loading never throws: no library, no FFI permission or DP_ONEDNN=0 yields undefined.
import { envWhileLoading, ffiGranted, processEnv } from "./openblas.ts";

/** Environment variable that turns the oneDNN routes off when set to `0`. */
export const ONEDNN_ENV = "DP_ONEDNN";
/** Environment variable with oneDNN's (OpenMP) thread count; default: DP_BLAS_THREADS, else all. */
export const ONEDNN_THREADS_ENV = "DP_ONEDNN_THREADS";
/** Environment variable naming the libdnnl shared library to load first (like DP_OPENBLAS). */
export const ONEDNN_LIB_ENV = "DP_ONEDNN_LIB";

/** System paths and sonames tried after DP_ONEDNN_LIB (../native_libs.ts reads them too). */
export const ONEDNN_CANDIDATES: readonly string[] = [
  "/usr/lib/x86_64-linux-gnu/libdnnl.so.2",
  "/usr/lib/aarch64-linux-gnu/libdnnl.so.2",
  "libdnnl.so.2",
];

const B = "buffer";

const SYMBOLS = {
  dnnl_get_effective_cpu_isa: { parameters: [], result: "i32" },
  dnnl_engine_create: { parameters: [B, "i32", "usize"], result: "i32" },
  dnnl_stream_create: { parameters: [B, "pointer", "u32"], result: "i32" },
  dnnl_stream_wait: { parameters: ["pointer"], result: "i32" },
  dnnl_memory_desc_init_by_strides: { parameters: [B, "i32", B, "i32", B], result: "i32" },
  dnnl_memory_desc_init_by_tag: { parameters: [B, "i32", B, "i32", "i32"], result: "i32" },
  dnnl_memory_desc_get_size: { parameters: ["pointer"], result: "usize" },
  dnnl_dilated_convolution_forward_desc_init: {
    parameters: [B, "i32", "i32", B, B, B, B, B, B, B, B],
    result: "i32",
  },
  dnnl_dilated_convolution_backward_data_desc_init: {
    parameters: [B, "i32", B, B, B, B, B, B, B],
    result: "i32",
  },
  dnnl_dilated_convolution_backward_weights_desc_init: {
    parameters: [B, "i32", B, B, B, B, B, B, B, B],
    result: "i32",
  },
  dnnl_matmul_desc_init: { parameters: [B, B, B, "pointer", B], result: "i32" },
  dnnl_eltwise_forward_desc_init: { parameters: [B, "i32", "i32", B, "f32", "f32"], result: "i32" },
  dnnl_eltwise_backward_desc_init: { parameters: [B, "i32", B, B, "f32", "f32"], result: "i32" },
  dnnl_primitive_desc_create: {
    parameters: [B, B, "pointer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_desc_query_md: { parameters: ["pointer", "i32", "i32"], result: "pointer" },
  dnnl_reorder_primitive_desc_create: {
    parameters: [B, "pointer", "pointer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_create: { parameters: [B, "pointer"], result: "i32" },
  dnnl_primitive_execute: { parameters: ["pointer", "pointer", "i32", B], result: "i32" },
  dnnl_memory_create: { parameters: [B, "pointer", "pointer", "pointer"], result: "i32" },
  dnnl_memory_destroy: { parameters: ["pointer"], result: "i32" },
  // transa, transb ('N' / 'T'), M, N, K, alpha, A (bf16), lda, B (bf16), ldb, beta, C (f32), ldc
  dnnl_gemm_bf16bf16f32: {
    parameters: ["u8", "u8", "i64", "i64", "i64", "f32", B, "i64", B, "i64", "f32", B, "i64"],
    result: "i32",
  },
} as const;

// dnnl_types.h (v2.x) constants.
const CPU = 1;
const STREAM_IN_ORDER = 1;
/** dnnl_data_type_t: the element types the engine hands oneDNN. */
export const BF16 = 2;
export const F32 = 3;
const TAG_ANY = 1;
/** dnnl_forward_training. */
export const FORWARD_TRAINING = 64;
export const FORWARD_INFERENCE = 96;
/** dnnl_convolution_direct / dnnl_convolution_winograd. */
export const CONV_DIRECT = 1;
export const CONV_WINOGRAD = 2;
/** Eltwise kinds, v2.x numbering (v3 renumbered them). */
export const ELTWISE_SWISH = 0xdf;
export const ELTWISE_GELU_TANH = 0xcf;
/** dnnl_query_{src,diff_src,weights,diff_weights,dst,diff_dst}_md. */
export const QUERY_SRC_MD = 129;
export const QUERY_DIFF_SRC_MD = 130;
export const QUERY_WEIGHTS_MD = 131;
export const QUERY_DIFF_WEIGHTS_MD = 132;
export const QUERY_DST_MD = 133;
export const QUERY_DIFF_DST_MD = 134;
/** Execution argument ids (DNNL_ARG_*). */
export const ARG_SRC = 1;
export const ARG_DST = 17;
// A reorder's source and destination (DNNL_ARG_FROM / DNNL_ARG_TO alias SRC / DST).
const ARG_FROM = 1;
const ARG_TO = 17;
export const ARG_WEIGHTS = 33;
export const ARG_BIAS = 41;
export const ARG_DIFF_SRC = 129;
export const ARG_DIFF_DST = 145;
export const ARG_DIFF_WEIGHTS = 161;
// Memory and op descriptors are filled in by the library; these sizes leave room to spare
// (v2.x: ~1 KiB per memory descriptor, ~8 KiB per convolution descriptor).
const MD_BYTES = 4096;
/** Bytes for an op descriptor buffer (dnnl_*_desc_t). */
export const OP_BYTES = 65536;

/** The bound libdnnl symbols. */
export type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
/** An opaque oneDNN handle. */
export type Ptr = Deno.PointerValue;
/** A primitive descriptor and the primitive made from it. */
export interface Made {
  readonly pd: Ptr;
  readonly prim: Ptr;
}
/** One execution argument: its id, memory descriptor and data (f32, or bf16 as raw 16 bits). */
export type View = [number, Ptr | Uint8Array, Float32Array | Uint16Array];

/** An elementwise op over 1-D float32 views; each returns false where oneDNN declines. */
export interface Eltwise {
  forward(x: Float32Array, y: Float32Array): boolean;
  backward(x: Float32Array, dy: Float32Array, dx: Float32Array): boolean;
}

// dnnl_cpu_isa_t (v2.x) is a bit set: each ISA adds bits to the one below it.
const ISA_AVX512_CORE = 0x27;
const ISA_AVX512_CORE_BF16 = 0xe7;
const ISA_AMX_BF16 = 0x3e7;

/** What oneDNN detected on this CPU (its dnnl_cpu_isa_t), decoded. */
export interface CpuIsa {
  /** dnnl_get_effective_cpu_isa(): the detected set, capped by ONEDNN_MAX_CPU_ISA when set. */
  readonly code: number;
  /** avx512_core (F, CD, BW, DQ, VL): OpenBLAS's SkylakeX kernels run here. */
  readonly avx512: boolean;
  /** bf16 dot products in hardware (avx512_bf16 or AMX): oneDNN's bf16 kernels are native. */
  readonly bf16: boolean;
  readonly amx: boolean;
}

/** Decode a dnnl_cpu_isa_t. */
export function decodeIsa(code: number): CpuIsa {
  const has = (bits: number) => (code & bits) === bits;
  return {
    code,
    avx512: has(ISA_AVX512_CORE),
    bf16: has(ISA_AVX512_CORE_BF16),
    amx: has(ISA_AMX_BF16),
  };
}

/** libdnnl with one engine and stream, and the helpers both oneDNN modules build on. */
export interface Core {
  readonly path: string;
  readonly lib: Lib;
  /** The CPU's vector ISA as oneDNN sees it. */
  readonly isa: CpuIsa;
  /** A memory descriptor by strides, float32 unless `type` says (undefined where refused). */
  md(dims: readonly number[], strides: readonly number[], type?: number): Uint8Array | undefined;
  /** A memory descriptor with layout "any" (oneDNN picks), float32 unless `type` says. */
  anyMd(dims: readonly number[], type?: number): Uint8Array;
  /**
   * `x` rounded to bf16 (to nearest even, by a oneDNN reorder) in scratch buffer `slot` (0 or
   * 1: two operands of one call), valid until the next call with that slot.
   */
  toBf16(x: Float32Array, slot: 0 | 1): Uint16Array | undefined;
  /** The primitive descriptor of op descriptor `desc` (forward `hint` for backward) and its primitive. */
  primitive(desc: Uint8Array, hint: Ptr): Made | undefined;
  /** A reorder primitive between two memory descriptors. */
  reorder(from: Ptr, to: Ptr): Ptr | undefined;
  /** Run `prim` with memories over `views`, freed afterwards; waits for the stream. */
  run(prim: Ptr, views: View[]): void;
  /** `f` with oneDNN on one thread (memory-bound work: no thread hand-off). */
  single(f: () => void): void;
  /** Eltwise `alg` (alpha, beta 0) cached per length; `singleThreaded` runs it on one thread. */
  eltwise(alg: number, alpha: number, singleThreaded: boolean): Eltwise;
}

/** int64 dims / strides as oneDNN takes them. */
export const i64 = (xs: readonly number[]): BigInt64Array =>
  BigInt64Array.from(xs.map((v) => BigInt(v)));

function bind(
  lib: Lib,
  path: string,
  threads: (n: number) => void,
  nThreads: number,
): Core | undefined {
  const out = () => new BigUint64Array(1);
  const ptrOf = (b: BigUint64Array): Ptr => Deno.UnsafePointer.create(b[0]);
  const eng = out();
  if (lib.dnnl_engine_create(eng, CPU, 0n) !== 0) return undefined;
  const engine = ptrOf(eng);
  const st = out();
  if (lib.dnnl_stream_create(st, engine, STREAM_IN_ORDER) !== 0) return undefined;
  const stream = ptrOf(st);

  const md = (dims: readonly number[], strides: readonly number[], type = F32) => {
    const b = new Uint8Array(MD_BYTES);
    const r = lib.dnnl_memory_desc_init_by_strides(b, dims.length, i64(dims), type, i64(strides));
    return r === 0 ? b : undefined;
  };
  const anyMd = (dims: readonly number[], type = F32): Uint8Array => {
    const b = new Uint8Array(MD_BYTES);
    lib.dnnl_memory_desc_init_by_tag(b, dims.length, i64(dims), type, TAG_ANY);
    return b;
  };
  const primitive = (desc: Uint8Array, hint: Ptr): Made | undefined => {
    const pd = out();
    if (lib.dnnl_primitive_desc_create(pd, desc, null, engine, hint) !== 0) return undefined;
    const p = out();
    if (lib.dnnl_primitive_create(p, ptrOf(pd)) !== 0) return undefined;
    return { pd: ptrOf(pd), prim: ptrOf(p) };
  };
  const reorder = (from: Ptr, to: Ptr): Ptr | undefined => {
    const pd = out();
    if (lib.dnnl_reorder_primitive_desc_create(pd, from, engine, to, engine, null) !== 0) {
      return undefined;
    }
    const p = out();
    return lib.dnnl_primitive_create(p, ptrOf(pd)) === 0 ? ptrOf(p) : undefined;
  };
  const run = (prim: Ptr, views: View[]): void => {
    const mems: Ptr[] = [];
    try {
      for (const [, m, v] of views) {
        const b = out();
        const desc = m instanceof Uint8Array ? Deno.UnsafePointer.of(m) : m;
        const r = lib.dnnl_memory_create(b, desc, engine, Deno.UnsafePointer.of(v));
        if (r !== 0) {
          throw new Error(`dnnl_memory_create failed (${r}) in lib/engine/blas/onednn_core.ts`);
        }
        mems.push(ptrOf(b));
      }
      const a = new BigUint64Array(views.length * 2);
      views.forEach(([id], i) => {
        a[2 * i] = BigInt(id);
        a[2 * i + 1] = BigInt(Deno.UnsafePointer.value(mems[i]));
      });
      const r = lib.dnnl_primitive_execute(prim, stream, views.length, new Uint8Array(a.buffer));
      if (r !== 0) {
        throw new Error(`dnnl_primitive_execute failed (${r}) in lib/engine/blas/onednn_core.ts`);
      }
      lib.dnnl_stream_wait(stream);
    } finally {
      for (const m of mems) lib.dnnl_memory_destroy(m);
    }
  };
  const single = (f: () => void): void => {
    if (nThreads === 1) return f();
    threads(1);
    try {
      f();
    } finally {
      threads(nThreads);
    }
  };
  const eltwise = (alg: number, alpha: number, singleThreaded: boolean): Eltwise => {
    interface Elt {
      readonly md: Uint8Array;
      readonly fwd: Made;
      bwd?: Ptr | null;
    }
    const around = singleThreaded ? single : (f: () => void) => f();
    // One 1-D f32 memory of n elements per length.
    const elts = new Map<number, Elt | null>();
    const eltOf = (n: number): Elt | undefined => {
      if (n <= 0) return undefined;
      const known = elts.get(n);
      if (known !== undefined) return known ?? undefined;
      const m = md([n], [1]);
      const d = new Uint8Array(OP_BYTES);
      const ok = m &&
        lib.dnnl_eltwise_forward_desc_init(d, FORWARD_TRAINING, alg, m, alpha, 0) === 0;
      const fwd = ok ? primitive(d, null) : undefined;
      const e = m && fwd ? { md: m, fwd } : undefined;
      elts.set(n, e ?? null);
      return e;
    };
    return {
      forward(x, y) {
        const e = eltOf(x.length);
        if (!e) return false;
        around(() => run(e.fwd.prim, [[ARG_SRC, e.md, x], [ARG_DST, e.md, y]]));
        return true;
      },
      backward(x, dy, dx) {
        const e = eltOf(x.length);
        if (!e) return false;
        if (e.bwd === undefined) {
          const d = new Uint8Array(OP_BYTES);
          const r = lib.dnnl_eltwise_backward_desc_init(d, alg, e.md, e.md, alpha, 0);
          e.bwd = r === 0 ? primitive(d, e.fwd.pd)?.prim ?? null : null;
        }
        const bwd = e.bwd;
        if (!bwd) return false;
        around(() =>
          run(bwd, [[ARG_SRC, e.md, x], [ARG_DIFF_DST, e.md, dy], [ARG_DIFF_SRC, e.md, dx]])
        );
        return true;
      },
    };
  };
  // f32 → bf16 of n elements: one 1-D reorder per length (a run has a few dozen lengths), on
  // oneDNN's threads, into scratch outside the wasm heap.
  const casts = new Map<number, { from: Uint8Array; to: Uint8Array; prim: Ptr } | null>();
  const scratch: Uint16Array[] = [new Uint16Array(0), new Uint16Array(0)];
  const toBf16 = (x: Float32Array, slot: 0 | 1): Uint16Array | undefined => {
    const n = x.length;
    if (n === 0) return new Uint16Array(0);
    let cast = casts.get(n);
    if (cast === undefined) {
      const from = md([n], [1]), to = md([n], [1], BF16);
      const prim = from && to
        ? reorder(Deno.UnsafePointer.of(from), Deno.UnsafePointer.of(to))
        : undefined;
      cast = from && to && prim ? { from, to, prim } : null;
      casts.set(n, cast);
    }
    if (!cast) return undefined;
    if (scratch[slot].length < n) {
      scratch[slot] = new Uint16Array(Math.max(n, scratch[slot].length * 2));
    }
    const y = scratch[slot].subarray(0, n);
    run(cast.prim, [[ARG_FROM, cast.from, x], [ARG_TO, cast.to, y]]);
    return y;
  };
  const isa = decodeIsa(lib.dnnl_get_effective_cpu_isa());
  return { path, lib, isa, md, anyMd, toBf16, primitive, reorder, run, single, eltwise };
}

function threadCount(env: (name: string) => string | undefined): number {
  for (const name of [ONEDNN_THREADS_ENV, "DP_BLAS_THREADS"]) {
    const asked = Number(env(name));
    if (Number.isInteger(asked) && asked > 0) return asked;
  }
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

/** libgomp's spin count before an idle thread sleeps (~0.1 ms by libgomp's reckoning). */
export const OPENMP_SPIN = "10000";

/**
 * How OpenMP's idle threads wait: the variables to set, leaving out those the user decides. By
 * default libgomp's threads spin for milliseconds between parallel regions; on
 * a 2-core machine shared with OpenBLAS's pool (and often another job) that steals the cores (a
 * train step ran 1.8× slower). Passive threads sleep at once, but here waking one cost ~60 µs
 * (a halted vCPU), paid by every parallel region: a 64×128×32 product took 73 µs on 2 threads
 * against 14 on one. So they sleep after a short spin (OMP_WAIT_POLICY=passive with
 * GOMP_SPINCOUNT=10000), which spans the gap from one kernel to the next: that product 21 µs,
 * U-Net and DiT train steps and feature passes 5–10 % faster. A wait policy of the user's own
 * wins (with it, libgomp's own spin), and so does their spin count. The benches pass the same
 * to the PyTorch peer.
 */
export function openMpDefaults(
  env: (name: string) => string | undefined,
): Record<string, string> {
  if (env("OMP_WAIT_POLICY") !== undefined) return {};
  const set: Record<string, string> = { OMP_WAIT_POLICY: "passive" };
  if (env("GOMP_SPINCOUNT") === undefined) set.GOMP_SPINCOUNT = OPENMP_SPIN;
  return set;
}

/**
 * Set `openMpDefaults` around a dlopen of libgomp (it reads them once, when it loads), so that
 * child processes do not inherit them; returns the undo. ../native_libs.ts and the C kernels'
 * loader use it too: whichever loads libgomp first must set them.
 */
export function openMpWaiting(env: (name: string) => string | undefined): () => void {
  const undos = Object.entries(openMpDefaults(env)).map(([k, v]) => envWhileLoading(env, k, v));
  return () => undos.reverse().forEach((undo) => undo());
}

// omp_set_num_threads on the libgomp oneDNN links (the loader shares one instance per process);
// a no-op where libgomp cannot be opened.
function openMpThreadSetter(): (n: number) => void {
  for (const path of ["libgomp.so.1", "/lib/x86_64-linux-gnu/libgomp.so.1"]) {
    if (!ffiGranted(path)) continue;
    try {
      const gomp = Deno.dlopen(path, {
        omp_set_num_threads: { parameters: ["i32"], result: "void" },
      });
      return (n) => gomp.symbols.omp_set_num_threads(n);
    } catch { /* try the next one */ }
  }
  return () => {};
}

/**
 * Open libdnnl (uncached: a new dlopen, engine and stream per call): the `DP_ONEDNN_LIB` path
 * first, then the Debian path and soname. Undefined when DP_ONEDNN=0, without FFI permission for
 * it, or when the library does not load. `env` reads configuration.
 */
export function openOneDnnCore(
  env: (name: string) => string | undefined = processEnv,
): Core | undefined {
  if (env(ONEDNN_ENV) === "0") return undefined;
  let core: Core | undefined;
  const undo = openMpWaiting(env);
  try {
    const override = env(ONEDNN_LIB_ENV);
    for (const path of override ? [override, ...ONEDNN_CANDIDATES] : ONEDNN_CANDIDATES) {
      if (!ffiGranted(path)) continue;
      try {
        const lib = Deno.dlopen(path, SYMBOLS).symbols;
        const setThreads = openMpThreadSetter(), n = threadCount(env);
        core = bind(lib, path, setThreads, n);
        if (core) {
          setThreads(n);
          break;
        }
      } catch { /* try the next one */ }
    }
  } finally {
    undo();
  }
  return core;
}

let cached: Core | null | undefined;

/** `openOneDnnCore()` once per process (oneDNN's primitive cache and thread pool are per process). */
export function loadOneDnnCore(): Core | undefined {
  if (cached === undefined) cached = openOneDnnCore() ?? null;
  return cached ?? undefined;
}
