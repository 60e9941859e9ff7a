// Backend choice for TensorFlow.js: tensorflow (native, optional) > webgpu (real adapter) > wasm.
// `cpu` is the pure-JS reference backend, used only when asked for (tests compare against it).
import * as tf from "@tensorflow/tfjs";
import { getThreadsCount, setWasmPaths } from "@tensorflow/tfjs-backend-wasm";
import { registerWasmKernels } from "./wasm_kernels/mod.ts";
import { loadOneDnn, registerBlasKernels, unregisterBlasKernels } from "./blas/mod.ts";
import { type Precision, setPrecision } from "./blas/precision.ts";
import { prepareNativeLibs } from "./native_libs.ts";
import { prepareNativeKernels, setNativeKernels } from "./native_kernels.ts";
import { prepareWasmThreads, underRunMain, WASM_PREFIX } from "./wasm_threads.ts";

export const BACKENDS = ["tensorflow", "webgpu", "wasm", "cpu"] as const;
export type BackendName = (typeof BACKENDS)[number];

/** Environment variable that overrides the automatic choice (a `--backend` flag wins over it). */
export const BACKEND_ENV = "DP_BACKEND";

/**
 * Threads of tfjs's threaded wasm binary (>= 2; ./wasm_threads.ts); 0 or 1: the single-threaded
 * binary. Unset: every core where the native kernels do not load, in a script run by `runMain`.
 */
export const WASM_THREADS_ENV = "DP_WASM_THREADS";

function wasmThreadsAsked(): number | "auto" | undefined {
  const text = Deno.env.get(WASM_THREADS_ENV);
  if (text === undefined || text === "") return "auto";
  if (text === "1" || text === "0") return undefined;
  const n = Number(text);
  if (!(Number.isInteger(n) && n >= 2)) {
    throw new Error(`${WASM_THREADS_ENV}="${text}": expected a thread count >= 2 (or 0/1: off)`);
  }
  return n;
}

// The wasm module initialises once per process: threads are decided at the first wasm start
// and stay (the thread count, once the threaded binary runs).
let wasmStarted = false;
let wasmThreads: number | undefined;

/** What `initEngine` settled on; recorded in every results JSON. */
export interface EngineInfo {
  readonly backend: BackendName;
  /** Backend plus the kernel sets layered on it, e.g. `wasm+kernels+blas+onednn`. */
  readonly engine: string;
  readonly tfjs: string;
  /** Precision of the matrix products and convolutions (./blas/precision.ts). */
  readonly precision: Precision;
  readonly details: Readonly<Record<string, string | number | boolean>>;
}

let current: EngineInfo | undefined;

/** The engine chosen by `initEngine`; throws if it has not run yet. */
export function engineInfo(): EngineInfo {
  if (!current) throw new Error("Engine not initialised: call initEngine() first");
  return current;
}

function wasmDistDir(): string {
  // With "nodeModulesDir": "auto" the package lives in ./node_modules; resolve it from this
  // module's URL so scripts work from any working directory inside the repository.
  const candidates = [
    new URL("../../node_modules/@tensorflow/tfjs-backend-wasm/dist/", import.meta.url),
    new URL(`file://${Deno.cwd()}/node_modules/@tensorflow/tfjs-backend-wasm/dist/`),
  ];
  for (const url of candidates) {
    try {
      Deno.statSync(new URL("tfjs-backend-wasm-simd.wasm", url));
      return url.pathname;
    } catch { /* try the next one */ }
  }
  throw new Error(
    "Cannot find tfjs-backend-wasm-simd.wasm under node_modules: run `deno install` in the repository",
  );
}

// The native packages need libtensorflow, which their install script downloads; where that ran,
// the binding file exists. Import only then: a bare `npm:` import would try to install them.
function nativeBindingInstalled(pkg: string): boolean {
  const store = new URL("../../node_modules/.deno/", import.meta.url);
  try {
    for (const dir of Deno.readDirSync(store)) {
      if (!dir.name.startsWith(`@tensorflow+${pkg}@`)) continue;
      const lib = new URL(`${dir.name}/node_modules/@tensorflow/${pkg}/lib/`, store);
      for (const napi of Deno.readDirSync(lib)) {
        try {
          Deno.statSync(new URL(`${napi.name}/tfjs_binding.node`, lib));
          return true;
        } catch { /* not built */ }
      }
    }
  } catch { /* no store, or no lib/ */ }
  return false;
}

async function tryNative(): Promise<string | undefined> {
  for (const pkg of ["tfjs-node-gpu", "tfjs-node"]) {
    if (!nativeBindingInstalled(pkg)) continue;
    try {
      await import(`npm:@tensorflow/${pkg}@4.22.0`);
      if (tf.findBackendFactory("tensorflow")) return `@tensorflow/${pkg}`;
    } catch { /* binding present but unusable */ }
  }
  return undefined;
}

async function realGpuAdapter(): Promise<string | undefined> {
  const gpu = (navigator as { gpu?: { requestAdapter(): Promise<unknown> } }).gpu;
  if (!gpu) return undefined;
  try {
    const adapter = await gpu.requestAdapter() as
      | {
        isFallbackAdapter?: boolean;
        info?: { isFallbackAdapter?: boolean; description?: string; vendor?: string };
      }
      | null;
    if (!adapter) return undefined;
    // Software adapters (Mesa llvmpipe) train ~50x slower than wasm here: skip them.
    if (adapter.isFallbackAdapter || adapter.info?.isFallbackAdapter) return undefined;
    return adapter.info?.description || adapter.info?.vendor || "gpu";
  } catch {
    return undefined;
  }
}

function parseBackend(name: string, source: string): BackendName {
  if ((BACKENDS as readonly string[]).includes(name)) return name as BackendName;
  throw new Error(
    `Unknown backend "${name}" from ${source}: expected one of ${BACKENDS.join(", ")}`,
  );
}

export interface EngineOptions {
  /** Backend asked for on the command line; overrides the environment and the automatic choice. */
  readonly backend?: string;
  /** Use the OpenBLAS kernels on wasm when available. @default true */
  readonly blas?: boolean;
  /** Print the one-line engine summary on stderr. @default true */
  readonly announce?: boolean;
  /**
   * Products and convolutions in bf16 (oneDNN, f32 accumulation) or fp32. Where bf16 cannot run
   * natively (no oneDNN, or a CPU without avx512_bf16 / AMX) one line says so and fp32 runs.
   * @default "fp32"
   */
  readonly precision?: Precision;
}

/** Why bf16 cannot run on this engine, or undefined when it can. */
function bf16Unavailable(layers: readonly string[]): string | undefined {
  if (!layers.includes("onednn")) {
    return layers[0] === "wasm"
      ? "oneDNN is not loaded (DP_ONEDNN=0, DP_BLAS=0, or no libdnnl2)"
      : `the ${layers[0]} backend has no bf16 kernels here`;
  }
  const isa = loadOneDnn()?.isa;
  if (!isa?.bf16) {
    return `this CPU has no bf16 instructions (avx512_bf16 or AMX) as oneDNN detects it (isa 0x${
      (isa?.code ?? 0).toString(16)
    })`;
  }
  return undefined;
}

/**
 * The line for bf16 on a CPU without AMX whose bf16 dot product (avx512_bf16's `vdpbf16ps`)
 * peaks below its fp32 multiply-add, both measured on one thread: there oneDNN's bf16 products
 * run on that dot, slower than fp32 (on the Xeon of REPORT.md the dot peaks at 0.48–0.52× and
 * every bf16 train step ran slower than fp32). Undefined where bf16 is as fast or faster.
 */
export function bf16SlowerLine(fp32Gflops: number, bf16Gflops: number): string | undefined {
  if (!(bf16Gflops < fp32Gflops)) return undefined;
  const ratio = (bf16Gflops / fp32Gflops).toFixed(2);
  const rates = `${bf16Gflops.toFixed(0)} against ${fp32Gflops.toFixed(0)} GFLOP/s a thread`;
  return `engine: --precision bf16: without AMX, this CPU's bf16 dot product peaks at ${ratio}× ` +
    `its fp32 multiply-add (${rates}, measured now): bf16 products are likely slower than fp32 ` +
    "here; running bf16 as asked";
}

// Whether the bf16 line above was considered already (once per process).
let bf16PeaksChecked = false;

// The compiled kernels, prepared once per process (null: tried, unavailable).
let compiled: Awaited<ReturnType<typeof prepareNativeKernels>> | null | undefined;

/**
 * Choose and initialise the backend, register the project kernels, and announce the choice on
 * stderr in one line. Safe to call again: it re-initialises only when the answer changes.
 */
export async function initEngine(opts: EngineOptions = {}): Promise<EngineInfo> {
  const envChoice = Deno.env.get(BACKEND_ENV);
  const asked = opts.backend
    ? parseBackend(opts.backend, "--backend")
    : envChoice
    ? parseBackend(envChoice, BACKEND_ENV)
    : undefined;
  const details: Record<string, string | number | boolean> = {};
  let backend: BackendName | undefined = asked;
  if (!backend || backend === "tensorflow") {
    const native = await tryNative();
    if (native) {
      backend = "tensorflow";
      details.package = native;
    } else if (backend === "tensorflow") {
      throw new Error(
        "Backend tensorflow asked for, but neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node imports",
      );
    }
  }
  if (!backend || backend === "webgpu") {
    const adapter = await realGpuAdapter();
    if (adapter) {
      await import("@tensorflow/tfjs-backend-webgpu");
      backend = "webgpu";
      details.adapter = adapter;
    } else if (backend === "webgpu") {
      throw new Error("Backend webgpu asked for, but no non-fallback WebGPU adapter is available");
    }
  }
  backend ??= "wasm";

  const layers: string[] = [backend];
  let restore: (() => void) | undefined;
  if (backend === "wasm") {
    const asked = wasmStarted ? undefined : wasmThreadsAsked();
    registerWasmKernels();
    layers.push("kernels");
    const useBlas = opts.blas ?? true;
    // Once per process, before the first load: OpenBLAS / oneDNN from the per-user cache where
    // the system lacks them (fetched there the first time; ./native_libs.ts).
    if (useBlas) await prepareNativeLibs();
    const blas = useBlas ? registerBlasKernels() : undefined;
    // Without the native kernels, the wasm fallback takes every core: 1.2–1.5× the
    // single-threaded binary on the U-Net train step here, 1.3–2.4× on its features. Only under
    // `runMain`, which ends the pthread workers that would otherwise keep the process alive;
    // `blas: false` (comparisons) and library callers keep the single-threaded binary unless
    // DP_WASM_THREADS asks.
    const cores = navigator.hardwareConcurrency || 1;
    const threads = asked === "auto"
      ? (useBlas && !blas && cores >= 2 && underRunMain() ? cores : undefined)
      : asked;
    if (threads) {
      restore = prepareWasmThreads(wasmDistDir(), threads);
      setWasmPaths(WASM_PREFIX);
    } else if (!wasmThreads) setWasmPaths(wasmDistDir());
    if (threads || wasmThreads) layers.splice(1, 0, "threads");
    // GroupNorm's passes and DiT's adaLN in C, compiled once into the same cache
    // (./native_kernels.ts). Tied to the BLAS switch so that `blas: false` stays plain wasm.
    const ck = useBlas ? (compiled ??= await prepareNativeKernels() ?? null) : null;
    setNativeKernels(ck ?? undefined);
    if (ck) details.nativeKernels = ck.path;
    if (blas) {
      layers.push("blas");
      if (blas.onednn) layers.push("onednn"); // convolutions on oneDNN, the rest on OpenBLAS
      Object.assign(details, blas);
    } else {
      unregisterBlasKernels(); // asked to run without BLAS after an earlier init with it
    }
    if (ck) layers.push("c-kernels");
  }
  let precision: Precision = "fp32";
  if (opts.precision === "bf16") {
    const why = bf16Unavailable(layers);
    if (why) console.error(`engine: --precision bf16: ${why}; running fp32`);
    else precision = "bf16";
  }
  if (precision === "bf16" && !loadOneDnn()?.isa.amx && compiled && !bf16PeaksChecked) {
    bf16PeaksChecked = true;
    const fp32 = compiled.peak("fp32", 0.05, 1), bf16 = compiled.peak("bf16", 0.05, 1);
    const line = fp32 && bf16 ? bf16SlowerLine(fp32, bf16) : undefined;
    if (line) console.error(line);
  }
  setPrecision(precision);
  if (precision === "bf16") layers.push("bf16");
  if (tf.getBackend() !== backend) {
    const ok = await tf.setBackend(backend).finally(() => restore?.());
    if (!ok) throw new Error(`Backend ${backend} failed to initialise`);
  }
  await tf.ready();
  if (backend === "wasm") {
    wasmStarted = true;
    if (layers.includes("threads")) details.wasmThreads = wasmThreads ??= getThreadsCount();
  }
  current = { backend, engine: layers.join("+"), tfjs: tf.version.tfjs, precision, details };
  if (opts.announce ?? true) {
    const extra = Object.entries(details).map(([k, v]) => `${k}=${v}`).join(" ");
    console.error(`engine: ${current.engine} (tfjs ${current.tfjs})${extra ? " " + extra : ""}`);
  }
  return current;
}
