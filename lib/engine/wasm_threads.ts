// tfjs-backend-wasm's threaded SIMD binary under Deno (XNNPACK on a pthread pool), which tfjs
// itself never picks here: its flag is false wherever it sees Node (`process` exists under Deno),
// and under Node emscripten spawns pthreads through worker_threads with a blob URL, which Deno's
// worker_threads refuses. Loaded as the browser build instead, it runs once four things differ:
// - `process` is hidden while the module initialises, so emscripten takes its web path;
// - the wasm binary is fetched from a private http:// prefix that `fetch` serves from disk
//   (emscripten skips fetch for file:// URLs and its web fallback, sync XHR, does not exist);
// - `Worker` makes module workers (Deno has no classic ones) whose shim defines importScripts
//   and reads the main script's Blob before emscripten's "load" handler runs;
// - navigator.hardwareConcurrency reads 2 × threads while initialising, since tfjs sizes the
//   pthread pool as half of it.
// WebAssembly.Module and shared memory cross postMessage to Deno workers as they must.
// The engine takes it where the native kernels do not load, in scripts (`runMain`), or where
// `DP_WASM_THREADS=<n>` asks (./backend.ts).
import * as tf from "@tensorflow/tfjs";
import { setThreadsCount } from "@tensorflow/tfjs-backend-wasm";

/**
 * A live Worker keeps Deno's event loop alive (Deno workers have no unref), so a process with
 * pthreads would never end by itself: `runMain` (lib/cli.ts) calls the function stored under this
 * symbol once the script is done. A symbol rather than an import keeps cli.ts free of tfjs.
 */
export const STOP_WASM_THREADS = Symbol.for("diffusion-pretraining.stopWasmThreads");

/** Set by `runMain` (lib/cli.ts) while a script runs: someone will stop the workers at the end. */
export const RUN_MAIN = Symbol.for("diffusion-pretraining.runMain");

/** Whether a script's `runMain` is running (and so will end the pthread workers). */
export function underRunMain(): boolean {
  return (globalThis as Record<symbol, unknown>)[RUN_MAIN] === true;
}

const workers = new Set<Worker>();

/** Terminate the pthread workers (the wasm backend must not run afterwards). */
export function stopWasmThreads(): void {
  for (const w of workers) w.terminate();
  workers.clear();
}

/** The prefix `setWasmPaths` gets in threaded mode; `fetch` serves it from the dist folder. */
export const WASM_PREFIX = "http://tfjs-wasm.invalid/";

const workerShim = (url: string) => `
let main = "";
globalThis.importScripts = () => (0, eval)(main);
delete globalThis.process;
(0, eval)(await (await fetch(${JSON.stringify(url)})).text());
const handle = self.onmessage;
let chain = Promise.resolve();
self.onmessage = (e) => {
  chain = chain.then(async () => {
    if (e.data && e.data.cmd === "load") {
      const u = e.data.urlOrBlob;
      main = typeof u === "string" ? await (await fetch(u)).text() : await u.text();
    }
    handle.call(self, e);
  });
};`;

/**
 * Make the next wasm initialisation load the threaded binary with `threads` threads (dist: the
 * folder of tfjs-backend-wasm's binaries). Call before `tf.setBackend("wasm")`; call the returned
 * function right after it to undo what only initialisation needs (`process`, the core count).
 * `Worker` and `fetch` stay patched: emscripten starts more workers later.
 */
export function prepareWasmThreads(dist: string, threads: number): () => void {
  if (!(Number.isInteger(threads) && threads >= 2)) {
    throw new Error(`Wasm threads must be an integer >= 2, got ${threads}`);
  }
  tf.env().set("WASM_HAS_MULTITHREAD_SUPPORT", true);
  setThreadsCount(threads);
  const g = globalThis as Record<string, unknown>;
  const baseFetch = globalThis.fetch;
  globalThis.fetch = (input: RequestInfo | URL, init?: RequestInit) => {
    const url = input instanceof Request ? input.url : String(input);
    if (!url.startsWith(WASM_PREFIX)) return baseFetch(input, init);
    const file = dist + url.slice(WASM_PREFIX.length);
    const type = file.endsWith(".wasm") ? "application/wasm" : "application/javascript";
    return Deno.readFile(file).then((b) => new Response(b, { headers: { "content-type": type } }));
  };
  const BaseWorker = globalThis.Worker;
  g.Worker = class extends BaseWorker {
    constructor(url: string | URL, opts: WorkerOptions = {}) {
      if (opts.type === "module") {
        super(url, opts);
        return;
      }
      const shim = new Blob([workerShim(String(url))], { type: "application/javascript" });
      super(URL.createObjectURL(shim), { ...opts, type: "module" });
      workers.add(this);
    }
  };
  (globalThis as Record<symbol, unknown>)[STOP_WASM_THREADS] = stopWasmThreads;
  const proc = g.process;
  delete g.process;
  Object.defineProperty(navigator, "hardwareConcurrency", {
    configurable: true,
    get: () => 2 * threads,
  });
  return () => {
    g.process = proc;
    delete (navigator as unknown as Record<string, unknown>).hardwareConcurrency;
  };
}
