// OpenBLAS through Deno FFI: finds the library, binds cblas_sgemm, sets the thread count.
// Loading never throws: a missing library or FFI permission yields undefined.

/** Environment variable naming the OpenBLAS shared library to load first. */
export const OPENBLAS_ENV = "DP_OPENBLAS";
/** Environment variable with the OpenBLAS thread count (default: all hardware threads). */
export const BLAS_THREADS_ENV = "DP_BLAS_THREADS";
/** Environment variable that turns the BLAS kernels off when set to `0`. */
export const BLAS_ENV = "DP_BLAS";
/** OpenBLAS's own override of its kernel set, read once when the library loads. */
export const CORETYPE_ENV = "OPENBLAS_CORETYPE";
/** OpenBLAS's idle-spin time, log2 of CPU cycles (4–30), read once when the library loads. */
export const THREAD_TIMEOUT_ENV = "OPENBLAS_THREAD_TIMEOUT";
// After each threaded product OpenBLAS's workers spin for 2^28 cycles (~0.1 s) before they
// sleep. The engine's next op is usually a oneDNN convolution or a C kernel on OpenMP's threads,
// which then share the cores with a spinning worker: on 2 cores a U-Net feature pass ran 78 ms
// a batch against 55 with 2^4, the least OpenBLAS accepts (workers sleep at once; waking them
// costs microseconds a product). The engine sets it while loading unless the user did.
export const THREAD_TIMEOUT = "4";

// Debian's pthread build first (the one measured in engine-facts.md), then sonames for the
// dynamic loader to resolve through its own search path (the ldconfig cache). ../native_libs.ts
// reads this list to decide whether the system has OpenBLAS.
export const OPENBLAS_CANDIDATES: readonly string[] = [
  "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
  "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
  "libopenblas.so.0",
  "libopenblas.so",
  "libopenblas.dylib",
];

const SYMBOLS = {
  cblas_sgemm: {
    // order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc
    parameters: [
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "i32",
      "f32",
      "buffer",
      "i32",
      "buffer",
      "i32",
      "f32",
      "buffer",
      "i32",
    ],
    result: "void",
  },
  openblas_set_num_threads: { parameters: ["i32"], result: "void" },
  openblas_get_num_threads: { parameters: [], result: "i32" },
  // The kernel set OpenBLAS's dynamic dispatch chose from CPUID (e.g. "SkylakeX", "Cooperlake",
  // "Zen"): which of the CPU's ISAs the matrix products use.
  openblas_get_corename: { parameters: [], result: "pointer" },
} as const;

const ROW_MAJOR = 101;
const NO_TRANS = 111;
const TRANS = 112;

/** A loaded OpenBLAS: row-major single-precision GEMM on typed-array views. */
export interface Blas {
  /** The path or soname the library was opened from. */
  readonly path: string;
  /** Threads OpenBLAS runs with. */
  readonly threads: number;
  /** The kernel set chosen for this CPU ("unknown" when the library does not say). */
  readonly core: string;
  /** The kernel set was named through OPENBLAS_CORETYPE by the engine (`coreType`), not detected. */
  readonly coreForced: boolean;
  /** Change the thread count (process-wide: OpenBLAS keeps one pool). */
  setThreads(n: number): void;
  /**
   * Row-major C ← alpha·op(A)·op(B) + beta·C, op(A) [m, k], op(B) [k, n]. Views may start
   * anywhere in their buffer (wasm heap or not); lda/ldb/ldc are row strides in elements.
   */
  sgemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: Float32Array,
    lda: number,
    b: Float32Array,
    ldb: number,
    beta: number,
    c: Float32Array,
    ldc: number,
  ): void;
}

/** An environment variable, or undefined when unset or not readable (no env permission). */
export function processEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined; // no env permission: behave as unset
  }
}

/** Whether FFI may load `path` (a bare library name needs the global FFI permission). */
export function ffiGranted(path: string): boolean {
  try {
    const query = path.includes("/") ? { name: "ffi" as const, path } : { name: "ffi" as const };
    return Deno.permissions.querySync(query).state === "granted";
  } catch {
    return false;
  }
}

function threadCount(env: (name: string) => string | undefined): number {
  const asked = Number(env(BLAS_THREADS_ENV));
  if (Number.isInteger(asked) && asked > 0) return asked;
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

/**
 * Set environment variable `name` to `value` while a library loads (OpenBLAS reads
 * OPENBLAS_CORETYPE and OPENBLAS_THREAD_TIMEOUT, libgomp OMP_WAIT_POLICY, once as they load), so
 * that child processes do not inherit it. Returns the undo; a no-op where the user set the
 * variable or without env permission.
 */
export function envWhileLoading(
  env: (name: string) => string | undefined,
  name: string,
  value: string,
): () => void {
  if (env(name) !== undefined) return () => {};
  try {
    Deno.env.set(name, value);
    return () => Deno.env.delete(name);
  } catch {
    return () => {};
  }
}

/**
 * Open OpenBLAS (uncached): the `DP_OPENBLAS` path first, then the usual Debian paths and
 * sonames. Undefined when `DP_BLAS=0`, when FFI is not permitted, or when nothing opens.
 * `env` reads configuration (tests pass their own). `coreType` names the kernel set to use
 * (unless OPENBLAS_CORETYPE is set): OpenBLAS 0.3.21 detects CPUs newer than itself as its
 * generic "Prescott" (an Intel Xeon of family 6, model 207 here: sgemm 51 GFLOP/s instead of
 * SkylakeX's 275), so the engine names the set from the ISA oneDNN detects (`openBlasCoreFor`).
 */
export function openBlas(
  env: (name: string) => string | undefined = processEnv,
  coreType?: string,
): Blas | undefined {
  if (env(BLAS_ENV) === "0") return undefined;
  const override = env(OPENBLAS_ENV);
  for (const path of override ? [override, ...OPENBLAS_CANDIDATES] : OPENBLAS_CANDIDATES) {
    if (!ffiGranted(path)) continue;
    let lib: Deno.DynamicLibrary<typeof SYMBOLS>;
    const undoSpin = envWhileLoading(env, THREAD_TIMEOUT_ENV, THREAD_TIMEOUT);
    const undoCore = coreType ? envWhileLoading(env, CORETYPE_ENV, coreType) : () => {};
    try {
      lib = Deno.dlopen(path, SYMBOLS);
    } catch {
      continue;
    } finally {
      undoCore();
      undoSpin();
    }
    const s = lib.symbols;
    s.openblas_set_num_threads(threadCount(env));
    const name = s.openblas_get_corename();
    const core = name
      ? new Deno.UnsafePointerView(name).getCString().trim() || "unknown"
      : "unknown";
    return {
      path,
      core,
      coreForced: coreType !== undefined && env(CORETYPE_ENV) === undefined &&
        core.toLowerCase() === coreType.toLowerCase(),
      get threads() {
        return s.openblas_get_num_threads();
      },
      setThreads(n) {
        s.openblas_set_num_threads(Math.max(1, Math.floor(n)));
      },
      sgemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) {
        s.cblas_sgemm(
          ROW_MAJOR,
          transA ? TRANS : NO_TRANS,
          transB ? TRANS : NO_TRANS,
          m,
          n,
          k,
          alpha,
          a,
          lda,
          b,
          ldb,
          beta,
          c,
          ldc,
        );
      },
    };
  }
  return undefined;
}

/**
 * The OpenBLAS kernel set for a CPU with AVX-512 (as oneDNN reports it), else undefined (leave
 * the choice to OpenBLAS). SkylakeX even where bf16 exists: its sgemm measured 1.3–1.6× the
 * Cooperlake set's on an Intel Xeon (family 6, model 207), and sgemm is all the engine calls.
 */
export function openBlasCoreFor(isa?: { readonly avx512: boolean }): string | undefined {
  return isa?.avx512 ? "SkylakeX" : undefined;
}

let cached: Blas | null | undefined;

/**
 * `openBlas()` once per process (the library and its thread pool are process-wide); the first
 * call's `coreType` decides the kernel set.
 */
export function loadOpenBlas(coreType?: string): Blas | undefined {
  if (cached === undefined) cached = openBlas(processEnv, coreType) ?? null;
  return cached ?? undefined;
}
