// Bench suite for whole models, side by side with PyTorch (issue 3): images/s of
//   unet_train     one pre-training step of the `small` ADM U-Net (hybrid loss, Adam, EMA),
//   dit_train      the same step for the `small` DiT,
//   unet_features  feature extraction: q_sample + the U-Net up to its middle block, no gradient,
// on each engine available here (wasm+kernels+blas, wasm+kernels with BLAS off, and
// wasm+threads+kernels, tfjs's threaded binary with a thread per core), and on PyTorch through
// bench/peer_torch.py (same architectures, same step, 2 threads) when a python3 with torch is
// found. The peer runs `peerRuns` times and its median is the reference; the first engine (native
// libraries) runs as often, each of its runs followed by one of the peer's, and its median is its
// figure (both spreads are kept: this host's speed drifts by tens of percent over minutes). Ratios
// project / PyTorch go to `ratio_vs_torch` (best engine) and `ratio_vs_torch_by_engine`, and the
// round-by-round ratios of the first engine to the peer run after it to `ratio_paired_rounds` (a
// line after the table too); achieved GFLOP/s use the FLOPs per image of each workload's products
// and convolutions, counted once (lib/engine/flops.ts; the same on every engine), and
// `peak_gflop_s` holds the CPU's own ceiling (lib/engine/native/peak.c: its fp32 FMA and bf16 dot
// with nothing else running), which the table's "% peak" divides by. The BLAS engine runs in fp32
// and, where the CPU has bf16 instructions, in bf16 (products in bf16 with f32 accumulation,
// lib/engine/blas/precision.ts); PyTorch runs fp32, the reference of every ratio. One table sums it
// up on stderr.
//
// Each (engine, workload) runs in its own Deno process: the wasm heap never shrinks and a batch
// that does not fit aborts the wasm module, so a fresh process per measurement keeps one from
// skewing or killing the next; on failure the batch is halved and retried (the batch used is
// reported). Timing: one warm-up step, then up to `repeats` timed steps within `budgetS`; the
// median is kept (a warm-up longer than the budget is kept instead: `repeats` 0). Standalone:
//   deno run -R -E --allow-ffi --allow-sys --allow-run bench/models.ts [--quick] [--batch 64]
//     [--repeats 3] [--budget 20] [--peer-runs 3] [--no-torch] [--python /usr/bin/python3]
import { denoise } from "../lib/models/mod.ts";
import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { cpuModel } from "../lib/results.ts";
import { fileURLToPath } from "node:url";
import { initEngine } from "../lib/engine/mod.ts";
import { activeBlas, THREAD_TIMEOUT, THREAD_TIMEOUT_ENV } from "../lib/engine/blas/mod.ts";
import { openMpDefaults } from "../lib/engine/blas/onednn_core.ts";
import { processEnv } from "../lib/engine/blas/openblas.ts";
import type { Precision } from "../lib/engine/blas/precision.ts";
import { stopWasmThreads } from "../lib/engine/wasm_threads.ts";
import { countFlops } from "../lib/engine/flops.ts";
import { prepareNativeKernels } from "../lib/engine/native_kernels.ts";
import * as unet from "../lib/models/unet.ts";
import * as dit from "../lib/models/dit.ts";
import { namedSchedule } from "../lib/diffusion/schedule.ts";
import { diffusionLoss } from "../lib/diffusion/losses.ts";
import { qSample } from "../lib/diffusion/gaussian.ts";
import { adam } from "../lib/optim.ts";
import { initTrainState, type StepOptions, type TrainState, trainStep } from "../lib/train.ts";
import { disposeTensors } from "../lib/optim.ts";
import { disposeParams, type Params } from "../lib/params.ts";
import { fold, normal, randint, rng } from "../lib/random.ts";

/** Options of this suite. */
export interface ModelBenchOptions {
  /** Batch 8, one timed repetition: a smoke run. @default false */
  readonly quick?: boolean;
  /** Batch to try first; halved while it does not fit. @default 64 (8 when quick) */
  readonly batch?: number;
  /** Most timed repetitions after the warm-up; the median is kept. @default 3 (1 when quick) */
  readonly repeats?: number;
  /** Seconds of timed repetitions per measurement before stopping early (≥ 1 repetition). @default 20 */
  readonly budgetS?: number;
  /** Runs of the PyTorch peer; its median per workload is the reference. @default 3 (1 when quick) */
  readonly peerRuns?: number;
  /** Run the PyTorch peer when a python3 with torch is found. @default true */
  readonly torch?: boolean;
  /** Python interpreter for the peer. @default $DP_PYTHON, else the first of python3, /usr/bin/python3 with torch */
  readonly python?: string;
  /** Print progress lines on stderr. @default true */
  readonly log?: boolean;
  /** Precisions to measure on the BLAS engine (bf16 where the CPU runs it). @default both */
  readonly precisions?: readonly Precision[];
}

/** Plain-JSON results: `engines`, `torch`, `params`, `ratio_vs_torch`, ... (see the header). */
export type ModelBenchResult = Record<string, unknown>;

const WORKLOADS = ["unet_train", "dit_train", "unet_features"] as const;
type Workload = (typeof WORKLOADS)[number];

export const UNET = unet.UNET_CONFIGS.small as unet.UNetConfig;
export const DIT = dit.DIT_CONFIGS.small as dit.DiTConfig;
/** Features are read at the U-Net's middle block (diffssl's b19 analogue). */
export const FEATURE_BLOCK = unet.blockTable(UNET).find((r) => r.module === "middle_block")!.b;
// Pre-training defaults (scripts/pretrain.ts): Adam 1e-4, EMA 0.999, no clipping, linear T=1000.
export const LR = 1e-4, EMA = 0.999, STEPS = 1000;

/** What one worker process measures. */
interface WorkerSpec {
  readonly workload: Workload;
  readonly blas: boolean;
  /** Products in bf16 (lib/engine/blas/precision.ts); absent: fp32. */
  readonly precision?: Precision;
  /** Threads of the threaded wasm binary (DP_WASM_THREADS); absent: the single-threaded one. */
  readonly threads?: number;
  readonly batch: number;
  readonly repeats: number;
  readonly budgetS: number;
  /** Also count the FLOPs of one step (one more step, under tf.profile). */
  readonly flops?: boolean;
}

/** One measurement. */
interface Measurement {
  readonly engine: string;
  readonly batch: number;
  readonly img_s: number;
  readonly median_s: number;
  /** Timed repetitions behind the median; 0 when the warm-up alone exceeded the budget. */
  readonly repeats: number;
  /** Size of the wasm heap at the end, MB (it only grows, so this is the peak). */
  readonly heap_mb?: number;
  readonly leaked_tensors: number;
  /** Batches that failed first (out of wasm memory), if any. */
  readonly failed_batches?: number[];
  /** FLOPs per image of the step's products and convolutions, where the spec asked. */
  readonly flop_per_img?: number;
}

// ─── worker: one measurement in this process ─────────────────────────────────────────────────────

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// Warm-up: runs until this many seconds are spent (at least one). Short steps keep speeding up
// for their first few calls (JIT tiers, first-touch pages: a features step here went 356 → 180
// ms over five calls), and feature extraction repeats thousands of them; peer_torch.py warms up
// the same way.
const WARMUP_S = 3;

/**
 * Median seconds of `f` over up to `repeats` runs after the warm-up, stopping once `budgetS` is
 * spent. A first call that alone exceeds the budget is the measurement (reps 0): at a minute per
 * step (DiT without BLAS) its one-off setup cost is noise.
 */
function timed(f: () => void, repeats: number, budgetS: number): { median: number; reps: number } {
  const w0 = performance.now();
  f();
  const warm = (performance.now() - w0) / 1000;
  if (warm > budgetS && budgetS > 0) return { median: warm, reps: 0 };
  while (performance.now() - w0 < WARMUP_S * 1000) f();
  const times: number[] = [];
  const start = performance.now();
  while (
    times.length < Math.max(1, repeats) &&
    (times.length === 0 || performance.now() - start < budgetS * 1000)
  ) {
    const t0 = performance.now();
    f();
    times.push((performance.now() - t0) / 1000);
  }
  return { median: median(times), reps: times.length };
}

/** A training-step closure for one model; `state` is updated in place across calls. */
export function trainer(model: "unet" | "dit", n: number) {
  const sched = namedSchedule("linear", STEPS);
  const opts: StepOptions = { optimizer: adam({ lr: LR }), emaRate: EMA };
  const key = rng(0);
  const params: Params = model === "unet" ? unet.init(UNET, key) : dit.init(DIT, key);
  const shape = model === "unet"
    ? [n, UNET.imageSize, UNET.imageSize, UNET.inChannels]
    : [n, DIT.inputSize, DIT.inputSize, DIT.inChannels];
  const x0 = normal(fold(key, 1), shape) as tf.Tensor4D;
  let state: TrainState = initTrainState(params, opts);
  let i = 0;
  const loss = () =>
    tf.tidy(() => {
      i++;
      const t = tf.tensor1d(randint(fold(key, 2 * i), n, 0, STEPS), "int32");
      const noise = normal(fold(key, 2 * i + 1), shape) as tf.Tensor4D;
      if (model === "unet") {
        const f = (xt: tf.Tensor4D, tt: tf.Tensor1D) => unet.apply(UNET, params, xt, tt).eps!;
        return diffusionLoss(sched, f, x0, t, noise, { learnSigma: UNET.learnSigma });
      }
      const y = tf.tensor1d(randint(fold(key, -i), n, 0, DIT.numClasses!), "int32");
      const spec = { kind: "dit", name: "small", config: DIT } as const;
      const f = (xt: tf.Tensor4D, tt: tf.Tensor1D) =>
        denoise(spec, params, xt, tt, { y, key: fold(key, -2 * i) }); // with label dropout
      return diffusionLoss(sched, f, x0, t, noise, { learnSigma: DIT.learnSigma });
    });
  return {
    step: () => {
      const r = trainStep(state, loss, opts);
      state = r.state;
      if (!Number.isFinite(r.loss)) throw new Error(`bench/models.ts: ${model} loss is ${r.loss}`);
    },
    dispose: () => {
      disposeTensors(state.opt.slots);
      if (state.ema) disposeTensors(state.ema);
      disposeParams(state.params);
      x0.dispose();
    },
  };
}

/** A feature-extraction closure: noised images through the U-Net to FEATURE_BLOCK, no tape. */
export function extractor(n: number) {
  const sched = namedSchedule("linear", STEPS);
  const key = rng(0);
  const params = unet.init(UNET, key);
  const shape = [n, UNET.imageSize, UNET.imageSize, UNET.inChannels];
  const x0 = normal(fold(key, 1), shape) as tf.Tensor4D;
  let i = 0;
  return {
    step: () => {
      i++;
      tf.tidy(() => {
        const t = tf.tensor1d(randint(fold(key, 2 * i), n, 0, STEPS), "int32");
        const xt = qSample(sched, x0, t, normal(fold(key, 2 * i + 1), shape) as tf.Tensor4D);
        const f = unet.apply(UNET, params, xt, t, { taps: [FEATURE_BLOCK], needEps: false }).taps
          .get(FEATURE_BLOCK)!;
        tf.sum(f).dataSync(); // wait for the result
      });
    },
    dispose: () => {
      disposeParams(params);
      x0.dispose();
    },
  };
}

function heapMb(): number | undefined {
  const b = tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } };
  const bytes = b.wasm?.HEAPU8?.buffer.byteLength;
  return bytes === undefined ? undefined : Math.round(bytes / 1e6);
}

async function runWorker(spec: WorkerSpec): Promise<Measurement> {
  const info = await initEngine({
    backend: "wasm",
    blas: spec.blas,
    precision: spec.precision,
    announce: false,
  });
  const job = spec.workload === "unet_features"
    ? extractor(spec.batch)
    : trainer(spec.workload === "unet_train" ? "unet" : "dit", spec.batch);
  const before = tf.memory().numTensors;
  const { median: s, reps } = timed(job.step, spec.repeats, spec.budgetS);
  const leaked = tf.memory().numTensors - before;
  const flops = spec.flops ? (await countFlops(job.step)).total : undefined;
  job.dispose();
  return {
    engine: info.engine,
    batch: spec.batch,
    img_s: spec.batch / s,
    median_s: s,
    repeats: reps,
    heap_mb: heapMb(),
    leaked_tensors: leaked,
    ...(flops === undefined ? {} : { flop_per_img: flops / spec.batch }),
  };
}

// ─── parent: spawn workers, run the peer, collect ────────────────────────────────────────────────

const HERE = fileURLToPath(import.meta.url);
const CONFIG = fileURLToPath(new URL("../deno.json", import.meta.url));

async function spawnWorker(
  spec: WorkerSpec,
): Promise<{ ok: true; m: Measurement } | { ok: false; why: string }> {
  const args = [
    "run",
    "--config",
    CONFIG,
    "-R",
    "-E",
    "--allow-ffi",
    "--allow-sys",
    "-W", // the compiled kernels' cache (lib/engine/native_kernels.ts)
    "--allow-run=cc",
    HERE,
    "--worker",
    JSON.stringify(spec),
  ];
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", DP_WASM_THREADS: String(spec.threads ?? 0) },
  })
    .output();
  const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
  if (out.success) {
    try {
      return { ok: true, m: JSON.parse(text) as Measurement };
    } catch { /* fall through */ }
  }
  const err = new TextDecoder().decode(out.stderr).split("\n").find((l) =>
    /error|Abort|out of bounds|Invalid/i.test(l)
  );
  return { ok: false, why: `exit ${out.code}: ${(err ?? "no output").trim().slice(0, 160)}` };
}

/** A measurement, or why none could be made. */
type Measured = Measurement | { error: string; failed_batches: number[] };

/** Run one workload, halving the batch until it fits (down to 4). */
async function measure(
  spec: Omit<WorkerSpec, "batch">,
  batch: number,
  log: (s: string) => void,
): Promise<Measured> {
  const { workload, blas, threads } = spec;
  const failed: number[] = [];
  for (let n = batch; n >= 4; n = Math.floor(n / 2)) {
    const r = await spawnWorker({ ...spec, batch: n });
    if (r.ok) {
      const m = failed.length ? { ...r.m, failed_batches: failed } : r.m;
      log(
        `models: ${m.engine.padEnd(17)} ${workload.padEnd(13)} batch ${String(n).padStart(2)}: ` +
          `${m.img_s.toFixed(1)} img/s (median ${
            (m.median_s * 1000).toFixed(0)
          } ms of ${m.repeats}, heap ${m.heap_mb} MB)` +
          (failed.length ? ` [batch ${failed.join(", ")} failed]` : "") +
          (m.leaked_tensors ? ` LEAKED ${m.leaked_tensors}` : ""),
      );
      return m;
    }
    const what = blas ? "blas" : threads ? `threads ${threads}` : "no-blas";
    log(`models: ${what} ${workload} batch ${n} failed (${r.why}); halving`);
    failed.push(n);
  }
  return { error: "no batch ≥ 4 fits", failed_batches: failed };
}

export async function findPython(asked?: string): Promise<string | undefined> {
  const candidates = asked
    ? [asked]
    : [Deno.env.get("DP_PYTHON"), "python3", "/usr/bin/python3"].filter((x): x is string => !!x);
  for (const py of candidates) {
    try {
      const r = await new Deno.Command(py, {
        args: ["-c", "import torch"],
        stdout: "null",
        stderr: "null",
      }).output();
      if (r.success) return py;
    } catch { /* not installed */ }
  }
  return undefined;
}

async function runPeer(
  python: string,
  batches: Record<Workload, number>,
  repeats: number,
  budgetS: number,
): Promise<Record<string, unknown>> {
  return await runPeerScript(python, [
    "--unet",
    JSON.stringify(UNET),
    "--dit",
    JSON.stringify(DIT),
    "--unet-batch",
    String(batches.unet_train),
    "--dit-batch",
    String(batches.dit_train),
    "--feature-batch",
    String(batches.unet_features),
    "--feature-block",
    String(FEATURE_BLOCK),
    "--repeats",
    String(repeats),
    "--budget",
    String(budgetS),
    "--threads",
    "2",
    "--lr",
    String(LR),
    "--ema",
    String(EMA),
  ]);
}

/**
 * Run bench/peer_torch.py with `args` (after --json) and parse its JSON line. libgomp's default
 * spin-waiting collapses when other processes share the two cores (a DiT step measured 4-8x
 * slower); the peer's threads wait as the engine's do, passively after a short spin (its
 * feature pass 123 → 110 ms and train step 1050–1170 → 800–1020 ms with the spin, against
 * passive alone). An explicit OMP_WAIT_POLICY in the environment wins. The peer's OpenBLAS
 * (torch's matmul) idles as the engine's does (OPENBLAS_THREAD_TIMEOUT, lib/engine/blas/
 * openblas.ts: its feature pass ran 109-121 → 82-100 ms with it), and where the engine named
 * OpenBLAS's kernel set (a CPU OpenBLAS does not know) it gets the same set: both sides at their
 * best.
 */
export async function runPeerScript(
  python: string,
  args: readonly string[],
): Promise<Record<string, unknown>> {
  // The engine's wait settings; the child inherits the user's own variables as they are.
  const omp = openMpDefaults(processEnv);
  const effective = (name: string) => omp[name] ?? processEnv(name) ?? null;
  const spin = processEnv(THREAD_TIMEOUT_ENV) ?? THREAD_TIMEOUT;
  const blas = activeBlas();
  const core: Record<string, string> = blas?.coreForced ? { OPENBLAS_CORETYPE: blas.core } : {};
  const script = fileURLToPath(new URL("./peer_torch.py", import.meta.url));
  const out = await new Deno.Command(python, {
    args: [script, "--json", ...args],
    stdout: "piped",
    stderr: "inherit",
    env: { ...omp, [THREAD_TIMEOUT_ENV]: spin, ...core },
  })
    .output();
  const line = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
  if (!out.success) throw new Error(`bench/peer_torch.py exited with ${out.code}`);
  return {
    ...JSON.parse(line) as Record<string, unknown>,
    omp_wait_policy: effective("OMP_WAIT_POLICY"),
    gomp_spincount: effective("GOMP_SPINCOUNT"),
    openblas_thread_timeout: spin,
    ...core,
  };
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;

/** The precision of an engine's products, from its name (`initEngine` adds "+bf16"). */
const precisionOf = (engine: string): Precision => engine.endsWith("+bf16") ? "bf16" : "fp32";

/** One workload of one peer run, as bench/peer_torch.py prints it. */
interface PeerRow {
  readonly batch: number;
  readonly img_s: number;
  readonly median_s: number;
  readonly repeats: number;
}

/** The peer's runs summed up: per workload the median img/s and each run's. */
type PeerSummary =
  & { readonly torch: string; readonly threads: number; readonly runs: number }
  & { readonly params: { readonly unet: number; readonly dit: number } }
  & Record<Workload, PeerRow & { readonly img_s_runs: number[] }>;

function summarisePeer(runs: readonly Record<string, unknown>[]): PeerSummary {
  const first = runs[0];
  const rows = Object.fromEntries(WORKLOADS.map((w) => {
    const each = runs.map((r) => (r[w] as PeerRow).img_s);
    return [w, { ...(first[w] as PeerRow), img_s: median(each), img_s_runs: each.map(r3) }];
  }));
  return { ...first, runs: runs.length, ...rows } as unknown as PeerSummary;
}

/**
 * The CPU's arithmetic ceiling, GFLOP/s on one thread and on all (null: no bf16 dot; all_threads
 * null: the C kernels were built without OpenMP).
 */
type Peak = Record<Precision, { one_thread: number; all_threads: number | null } | null> & {
  threads: number;
};

/**
 * The CPU's fp32 FMA and bf16 dot peaks (lib/engine/native/peak.c), measured before any worker
 * runs; undefined without the C kernels (DP_NATIVE=off, no cc).
 */
async function measurePeak(threads: number, log: (s: string) => void): Promise<Peak | undefined> {
  const k = await prepareNativeKernels({ log: () => {} });
  if (!k) return undefined;
  const one = (kind: Precision) => {
    const single = k.peak(kind, 0.3, 1);
    if (single === undefined) return null;
    const all = k.peak(kind, 0.3, threads);
    return { one_thread: r3(single), all_threads: all === undefined ? null : r3(all) };
  };
  const peak: Peak = { fp32: one("fp32"), bf16: one("bf16"), threads };
  const say = (p: Peak[Precision]) =>
    p
      ? `${p.one_thread.toFixed(0)} GFLOP/s a thread` +
        (p.all_threads === null ? "" : `, ${p.all_threads.toFixed(0)} on ${threads}`)
      : "none";
  const ratio = peak.bf16 && peak.fp32
    ? ` (${(peak.bf16.one_thread / peak.fp32.one_thread).toFixed(2)}× fp32)`
    : "";
  log(
    `models: arithmetic peak: fp32 multiply-add ${say(peak.fp32)}; bf16 dot ${
      say(peak.bf16)
    }${ratio}`,
  );
  return peak;
}

/**
 * The summary table: workload × engine × precision, img/s, GFLOP/s, its share of the CPU's peak
 * in that precision, and × PyTorch's median.
 */
function table(
  engines: Record<string, Record<string, unknown>>,
  peer: PeerSummary | undefined,
  gflops: (w: Workload, imgS?: number) => number | undefined,
  peak: Peak | undefined,
): string {
  const head = [
    ...["workload", "engine", "precision", "batch", "img/s", "GFLOP/s", "% peak"],
    "× PyTorch",
  ];
  const rows: string[][] = [];
  const f1 = (x?: number) => (x === undefined ? "–" : x.toFixed(1));
  const share = (p: Precision, g?: number) => {
    const top = peak?.[p]?.all_threads;
    return top && g !== undefined ? `${(100 * g / top).toFixed(0)}%` : "–";
  };
  for (const w of WORKLOADS) {
    for (const [engine, byW] of Object.entries(engines)) {
      const m = byW[w] as Partial<Measurement>;
      const p = precisionOf(engine);
      if (!m.img_s) {
        rows.push([w, engine, p, "–", "failed", "–", "–", "–"]);
        continue;
      }
      const ratio = peer ? `${(m.img_s / peer[w].img_s).toFixed(2)}×` : "–";
      const each = (byW[w] as { img_s_runs?: number[] }).img_s_runs;
      const label = each
        ? `${engine} (median of ${each.length}: ${f1(Math.min(...each))}–${f1(Math.max(...each))})`
        : engine;
      const g = gflops(w, m.img_s);
      rows.push([w, label, p, String(m.batch), f1(m.img_s), f1(g), share(p, g), ratio]);
    }
    if (peer) {
      const p = peer[w],
        spread = `${f1(Math.min(...p.img_s_runs))}–${f1(Math.max(...p.img_s_runs))}`;
      rows.push([
        w,
        `PyTorch ${peer.torch} (median of ${peer.runs}: ${spread})`,
        "fp32",
        String(p.batch),
        f1(p.img_s),
        f1(gflops(w, p.img_s)),
        share("fp32", gflops(w, p.img_s)),
        "1.00×",
      ]);
    }
  }
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]) =>
    r.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return [
    `models on ${cpuModel()} (${navigator.hardwareConcurrency} cores)`,
    fmt(head),
    ...rows.map(fmt),
  ]
    .join("\n");
}

/** The models bench suite. */
export const suite = {
  name: "models",
  description:
    "U-Net / DiT train steps and U-Net feature extraction, img/s per engine and vs PyTorch",
  async run(opts: ModelBenchOptions = {}): Promise<ModelBenchResult> {
    const log = (s: string) => (opts.log ?? true) && console.error(s);
    const quick = opts.quick ?? false;
    const batch = opts.batch ?? (quick ? 8 : 64);
    const repeats = opts.repeats ?? (quick ? 1 : 3);
    const budgetS = opts.budgetS ?? (quick ? 0 : 20);
    const params = { unet_small: unet.numParams(UNET), dit_small: dit.numParams(DIT) };
    log(
      `models: small U-Net ${params.unet_small.toLocaleString("en")} params, small DiT ${
        params.dit_small.toLocaleString("en")
      } params; features at b${FEATURE_BLOCK}`,
    );
    const peak = await measurePeak(navigator.hardwareConcurrency, log);

    // BLAS first: it is fast and finds the batch that fits; the BLAS-off run starts from there.
    const used: Record<Workload, number> = {
      unet_train: batch,
      dit_train: batch,
      unet_features: batch,
    };
    // Without native libraries the engine is plain wasm: measured single-threaded and on tfjs's
    // threaded binary with a thread per core (lib/engine/wasm_threads.ts).
    const cores = navigator.hardwareConcurrency;
    // The PyTorch peer runs between our measurements, not after all of them: the host's speed
    // drifts over minutes (PyTorch's own median moved 471 → 681 img/s between two runs 15
    // minutes apart here), and interleaving keeps that drift out of the ratios. Its first run
    // follows our first engine, whose batches it uses.
    const python = opts.torch === false ? undefined : await findPython(opts.python);
    if (opts.torch !== false && !python) {
      log("models: no python3 with torch found: skipping the PyTorch peer");
    }
    const peerCount = python ? opts.peerRuns ?? (quick ? 1 : 3) : 0;
    const peerRuns: Record<string, unknown>[] = [];
    let peerError: unknown;
    const peerOnce = async () => {
      if (!python || peerError !== undefined || peerRuns.length >= peerCount) return;
      try {
        const r = await runPeer(python, used, repeats, budgetS);
        peerRuns.push(r);
        log(
          `models: PyTorch run ${peerRuns.length}: ${
            WORKLOADS.map((w) => `${w} ${(r[w] as PeerRow).img_s.toFixed(1)}`).join(", ")
          } img/s`,
        );
      } catch (e) {
        peerError = e;
        log(`models: PyTorch peer failed: ${e}`);
      }
    };
    const precisions = opts.precisions ?? ["fp32", "bf16"];
    const variants: { blas: boolean; threads?: number; precision?: Precision }[] = [
      ...precisions.map((precision) => ({ blas: true, precision })),
      { blas: false },
      ...(cores >= 2 ? [{ blas: false, threads: cores }] : []),
    ];
    // FLOPs per image do not depend on the engine (tests/engine/flops_test.ts): counted once,
    // by the first engine to measure each workload.
    const flopPerImg: Partial<Record<Workload, number>> = {};
    // Every measurement of an engine, per workload (the first engine is measured once per peer run).
    const runs: Record<string, Partial<Record<Workload, Measured[]>>> = {};
    const batchFound = new Set<Workload>();
    const measureVariant = async (
      { blas, threads, precision }: (typeof variants)[number],
    ): Promise<void> => {
      if (!blas && !threads && "wasm+kernels" in runs) return; // the BLAS run had no BLAS
      const rows: Partial<Record<Workload, Measured>> = {};
      let name = blas ? "wasm+kernels+blas" : threads ? "wasm+threads+kernels" : "wasm+kernels";
      for (const workload of WORKLOADS) {
        const spec = {
          workload,
          blas,
          threads,
          precision,
          repeats,
          budgetS,
          flops: !flopPerImg[workload],
        };
        // bf16, and the fp32 engine's later rounds, run at the batch its first run found.
        const first = blas && precision !== "bf16" && !batchFound.has(workload);
        const m = await measure(spec, first ? batch : used[workload], log);
        rows[workload] = m;
        if ("engine" in m) {
          name = m.engine;
          if (first) {
            used[workload] = m.batch;
            batchFound.add(workload);
          }
          if (m.flop_per_img) flopPerImg[workload] = m.flop_per_img;
        }
        if (precision === "bf16" && !name.endsWith("+bf16")) break; // said why, ran fp32
      }
      if (precision === "bf16" && !name.endsWith("+bf16")) {
        log("models: bf16 does not run on this engine or CPU (the line above says why): skipped");
        return;
      }
      runs[name] ??= {};
      for (const w of WORKLOADS) if (rows[w]) (runs[name][w] ??= []).push(rows[w]!);
      if (blas && !name.includes("blas")) {
        log("models: OpenBLAS is unavailable here (or DP_BLAS=0): wasm+kernels measured above");
      }
    };
    // The first engine (native libraries, first precision) and the peer take turns, one run
    // each per round, so that both medians span the same minutes; the other engines are spread
    // over the rounds.
    const [reference, ...others] = variants;
    const rounds = Math.max(1, peerCount);
    for (let r = 0; r < rounds; r++) {
      await measureVariant(reference);
      await peerOnce();
      for (const v of others.splice(0, Math.ceil(others.length / (rounds - r)))) {
        await measureVariant(v);
      }
    }
    while (python && peerError === undefined && peerRuns.length < peerCount) await peerOnce();
    const gflops = (w: Workload, imgS?: number) =>
      imgS && flopPerImg[w] ? r3((imgS * flopPerImg[w]!) / 1e9) : undefined;
    // One row per engine and workload: a single run as measured, several as their median.
    const engines: Record<string, Record<string, unknown>> = {};
    for (const [engine, byW] of Object.entries(runs)) {
      engines[engine] = {};
      for (const w of WORKLOADS) {
        const ms = byW[w] ?? [];
        const ok = ms.filter((m): m is Measurement => "img_s" in m);
        if (ok.length === 0) {
          if (ms[0]) engines[engine][w] = ms[0];
          continue;
        }
        const imgS = median(ok.map((m) => m.img_s));
        const each = ok.length > 1 ? { img_s_runs: ok.map((m) => r3(m.img_s)) } : {};
        engines[engine][w] = {
          ...ok[0],
          img_s: imgS,
          median_s: ok[0].batch / imgS,
          ...each,
          precision: precisionOf(engine),
          gflop_s: gflops(w, imgS),
        };
      }
    }

    const result: Record<string, unknown> = {
      batch_requested: batch,
      repeats_max: repeats,
      budget_s: budgetS,
      feature_block: FEATURE_BLOCK,
      configs: { unet: "small", dit: "small" },
      loss:
        "mse(eps) + L_vb (learnSigma hybrid, mean stop-gradient), linear T=1000, uniform t; Adam 1e-4, EMA 0.999",
      params,
      ...(peak ? { peak_gflop_s: peak } : {}),
      gflop_per_img: Object.fromEntries(
        Object.entries(flopPerImg).map(([w, f]) => [w, r3(f / 1e9)]),
      ),
      engines,
    };

    let peer: PeerSummary | undefined;
    let pairedLine: string | undefined; // printed after the table
    if (python && peerError !== undefined) result.torch = { error: String(peerError) };
    if (python && peerRuns.length > 0) {
      try {
        peer = summarisePeer(peerRuns);
        result.torch = {
          ...peer,
          gflop_s: Object.fromEntries(WORKLOADS.map((w) => [w, gflops(w, peer![w].img_s)])),
        };
        const tp = peer.params;
        const agree = tp.unet === params.unet_small && tp.dit === params.dit_small;
        log(
          `models: params project / torch: U-Net ${params.unet_small} / ${tp.unet}, DiT ${params.dit_small} / ${tp.dit}` +
            (agree ? " (agree)" : " (DISAGREE)"),
        );
        result.params_agree = agree;
        const byEngine: Record<string, Record<string, number>> = {};
        for (const [engine, rows] of Object.entries(engines)) {
          byEngine[engine] = {};
          for (const w of WORKLOADS) {
            const ours = rows[w] as Partial<Measurement>;
            if (ours?.img_s) byEngine[engine][w] = r3(ours.img_s / peer[w].img_s);
          }
        }
        result.ratio_vs_torch_by_engine = byEngine;
        const best = Object.keys(engines).find((e) => e.includes("blas")) ??
          Object.keys(engines)[0];
        result.ratio_vs_torch = { engine: best, ...byEngine[best] };
        // Round by round, the first engine's run over the peer run that followed it: drift
        // between rounds cancels out of each pair.
        const first = Object.keys(runs)[0];
        const paired: Record<string, unknown> = { engine: first }, pairedSays: string[] = [];
        for (const w of WORKLOADS) {
          const ratios = (runs[first][w] ?? []).flatMap((m, r) =>
            "img_s" in m && peerRuns[r] ? [m.img_s / (peerRuns[r][w] as PeerRow).img_s] : []
          );
          if (ratios.length > 1) {
            const each = ratios.map(r3), mid = r3(median(ratios));
            paired[w] = { median: mid, each };
            const [lo, hi] = [Math.min(...each), Math.max(...each)].map((x) => x.toFixed(2));
            pairedSays.push(`${w} ${mid.toFixed(2)}× (${lo}–${hi})`);
          }
        }
        if (pairedSays.length > 0) {
          result.ratio_paired_rounds = paired;
          // The table's ratios divide medians taken over different minutes; each round's pair
          // shares its minutes, so drift of the host's speed cancels there.
          pairedLine = `paired rounds, ${first} over the PyTorch run after it, median (range): ` +
            pairedSays.join(", ");
        }
      } catch (e) {
        result.torch = { error: String(e) };
        log(`models: PyTorch peer failed: ${e}`);
      }
    }
    log(table(engines, peer, gflops, peak));
    if (pairedLine) log(pairedLine);
    return result;
  },
};

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      worker: { type: "string" },
      quick: { type: "boolean" },
      batch: { type: "string" },
      repeats: { type: "string" },
      budget: { type: "string" },
      "peer-runs": { type: "string" },
      "no-torch": { type: "boolean" },
      python: { type: "string" },
    },
  });
  if (values.worker) {
    console.log(JSON.stringify(await runWorker(JSON.parse(values.worker) as WorkerSpec)));
    stopWasmThreads(); // pthread workers would keep the process alive
    Deno.exit(0);
  } else {
    const num = (s?: string) => (s === undefined ? undefined : Number(s));
    const r = await suite.run({
      quick: values.quick,
      batch: num(values.batch),
      repeats: num(values.repeats),
      budgetS: num(values.budget),
      peerRuns: num(values["peer-runs"]),
      torch: !values["no-torch"],
      python: values.python,
    });
    console.log(JSON.stringify(r, null, 2));
  }
}
