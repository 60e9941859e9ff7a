// Bench suite for the BLAS and fused kernels on wasm: matMul GFLOP/s through the registered
// kernel vs raw sgemm, the models' products on OpenBLAS vs oneDNN (fp32, bf16), a 3×3 conv
// forward / train step with and without BLAS, oneDNN's Winograd against its direct convolutions
// per U-Net shape, and GroupNorm / SiLU ns per element fused vs composed. Standalone:
//   deno run -R -E --allow-ffi --allow-sys bench/blas.ts [--quick]
import * as tf from "@tensorflow/tfjs";
import { initEngine } from "../lib/engine/mod.ts";
import {
  activeBlas,
  loadOneDnn,
  loadOpenBlas,
  registerBlasKernels,
  unregisterBlasKernels,
} from "../lib/engine/blas/mod.ts";
import { type ConvPass, winogradWorth } from "../lib/engine/blas/onednn.ts";
import { loadOneDnnMatMul } from "../lib/engine/blas/onednn_matmul.ts";
import { precision, setPrecision } from "../lib/engine/blas/precision.ts";
import {
  groupNorm,
  groupNormComposed,
  groupNormScaleShift,
  silu,
  siluComposed,
} from "../lib/engine/fused/mod.ts";

/** Options every suite takes. */
export interface BenchOptions {
  /** Fewer repetitions and smaller shapes, for smoke runs. @default false */
  readonly quick?: boolean;
  /** Timed repetitions after one warm-up; the best is kept. @default 5 (2 when quick) */
  readonly repeats?: number;
  /** Print one line per measurement on stderr. @default true */
  readonly log?: boolean;
}

/** Named measurements (units in the key: `_ms`, `_gflops`, `_ns_per_el`). */
export type BenchResult = Record<string, number>;

/**
 * Best wall time of `f` in milliseconds over `reps` calls, after one warm-up call. The best,
 * not the median: other processes share this machine's two cores, and they only add time.
 */
function timeMs(f: () => void, reps: number): number {
  f();
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    f();
    best = Math.min(best, performance.now() - t0);
  }
  return best;
}

/** Run `f` with the BLAS kernels in place (`on`) or replaced by the wasm ones. */
function withBlas<T>(on: boolean, f: () => T): T {
  if (on) {
    registerBlasKernels();
    return f();
  }
  const was = unregisterBlasKernels();
  try {
    return f();
  } finally {
    if (was) registerBlasKernels();
  }
}

function benchMatMul(r: BenchResult, n: number, reps: number, log: (s: string) => void) {
  const blas = loadOpenBlas();
  const gflops = (ms: number) => (2 * n * n * n) / ms / 1e6;
  const a = new Float32Array(n * n).fill(1), b = new Float32Array(n * n).fill(1);
  const c = new Float32Array(n * n);
  const x = tf.randomNormal([n, n]), y = tf.randomNormal([n, n]);
  // Raw sgemm and the registered kernel take turns, so load from other processes hits both.
  const routes: [string, () => void][] = [
    ["wasm", () => withBlas(false, () => tf.dispose(tf.matMul(x, y)))],
  ];
  if (blas) {
    routes.push(["sgemm", () => blas.sgemm(false, false, n, n, n, 1, a, n, b, n, 0, c, n)]);
    routes.push(["blas", () => withBlas(true, () => tf.dispose(tf.matMul(x, y)))]);
  }
  for (const [name, ms] of interleaved(routes, reps)) {
    r[`matmul_${n}_${name}_gflops`] = gflops(ms);
    log(`matMul ${n}² ${name}: ${ms.toFixed(2)} ms, ${gflops(ms).toFixed(1)} GFLOP/s`);
  }
  if (blas) {
    const ratio = r[`matmul_${n}_blas_gflops`] / r[`matmul_${n}_sgemm_gflops`];
    r[`matmul_${n}_blas_over_sgemm`] = ratio;
    log(`registered kernel / raw sgemm: ${(100 * ratio).toFixed(0)} %`);
  }
  tf.dispose([x, y]);
}

// Products of the models benched (batch 64): the DiT's linear layers over 64·196 tokens and their
// weight gradient, U-Net attention at 7×7, a modulation layer (m = 64), and 1024³.
const PRODUCTS: readonly (readonly [number, number, number, boolean, boolean])[] = [
  [12544, 384, 128, false, false],
  [12544, 128, 512, false, true],
  [128, 384, 12544, true, false],
  [3136, 384, 128, false, false],
  [64, 768, 128, false, false],
  [1024, 1024, 1024, false, false],
];

/**
 * GFLOP/s of one product on OpenBLAS's sgemm and on oneDNN's matmul primitive in fp32 and in
 * bf16 (inputs rounded, f32 accumulation), the routes taking turns: the basis of matmul.ts's
 * ONEDNN_MIN_MACS, and of what bf16 can gain on this CPU.
 */
function benchProducts(r: BenchResult, reps: number, quick: boolean, log: (s: string) => void) {
  const blas = loadOpenBlas(), dnn = loadOneDnnMatMul();
  if (!blas || !dnn) return;
  const bf16 = (f: () => void) => () => {
    const was = precision();
    setPrecision("bf16");
    try {
      f();
    } finally {
      setPrecision(was);
    }
  };
  for (const [m0, n, k0, ta, tb] of quick ? PRODUCTS.slice(3, 5) : PRODUCTS) {
    const m = quick ? Math.min(m0, 512) : m0, k = quick ? Math.min(k0, 512) : k0;
    const a = Float32Array.from({ length: m * k }, (_, i) => Math.sin(i));
    const b = Float32Array.from({ length: k * n }, (_, i) => Math.cos(i));
    const c = new Float32Array(m * n);
    const mm = () => dnn.matmul(1, true, true, m, n, k, ta, tb, a, b, c);
    const routes: [string, () => void][] = [
      ["sgemm", () => blas.sgemm(ta, tb, m, n, k, 1, a, ta ? m : k, b, tb ? k : n, 0, c, n)],
      ["onednn_f32", mm],
    ];
    let bf16Runs = false; // false where this oneDNN or CPU has no bf16 matmul
    bf16(() => bf16Runs = mm())();
    if (bf16Runs) routes.push(["onednn_bf16", bf16(mm)]);
    const name = `product_${m}x${n}x${k}${ta ? "_ta" : ""}${tb ? "_tb" : ""}`;
    const line: string[] = [];
    for (const [route, ms] of interleaved(routes, reps)) {
      const g = (2 * m * n * k) / ms / 1e6;
      r[`${name}_${route}_gflops`] = g;
      line.push(`${route} ${g.toFixed(0)}`);
    }
    log(`product ${m}×${n}×${k}${ta ? " Aᵀ" : ""}${tb ? " Bᵀ" : ""}: GFLOP/s ${line.join(", ")}`);
  }
}

/** Best time in ms of each route over `reps` rounds in which the routes take turns. */
function interleaved(routes: [string, () => void][], reps: number): Map<string, number> {
  const best = new Map<string, number>();
  for (let i = 0; i <= reps; i++) {
    for (const [name, f] of routes) {
      const t0 = performance.now();
      f();
      const ms = performance.now() - t0;
      if (i > 0) best.set(name, Math.min(best.get(name) ?? Infinity, ms)); // 0: warm-up
    }
  }
  return best;
}

function benchConv(r: BenchResult, n: number, reps: number, log: (s: string) => void) {
  // 3×3 conv, x [n, 32, 32, 32] → 64 channels, stride 1, same (engine-facts.md's probe).
  const x = tf.randomNormal([n, 32, 32, 32]) as tf.Tensor4D;
  const w = tf.randomNormal([3, 3, 32, 64], 0, 0.1) as tf.Tensor4D;
  const dy = tf.randomNormal([n, 32, 32, 64]);
  const grads = tf.grads((a: tf.Tensor, b: tf.Tensor) =>
    tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 1, "same"), dy))
  );
  const ops: [string, () => void][] = [
    ["fwd", () => tf.dispose(tf.conv2d(x, w, 1, "same"))],
    ["dx", () => tf.dispose(tf.conv2dTranspose(dy as tf.Tensor4D, w, x.shape, 1, "same"))],
    ["train", () => tf.dispose(grads([x, w]))],
  ];
  // Routes: wasm (+ the project's wasm kernels), BLAS with its default threads, BLAS on one
  // thread (better when other processes keep the cores busy).
  const blas = activeBlas() ?? loadOpenBlas();
  const threads = blas?.threads ?? 1;
  const routes: [string, () => void][] = [];
  for (const [op, f] of ops) {
    routes.push([`${op}_wasm`, () => withBlas(false, f)]);
    if (!blas) continue;
    routes.push([`${op}_blas`, () => withBlas(true, f)]);
    if (threads > 1) {
      routes.push([`${op}_blas1`, () => {
        blas.setThreads(1);
        try {
          withBlas(true, f);
        } finally {
          blas.setThreads(threads);
        }
      }]);
    }
  }
  const best = interleaved(routes, reps);
  for (const [name, ms] of best) r[`conv3x3_${n}_${name}_ms`] = ms;
  for (const route of ["wasm", "blas", "blas1"]) {
    if (!best.has(`fwd_${route}`)) continue;
    const [f, d, t] = ["fwd", "dx", "train"].map((op) => best.get(`${op}_${route}`)!);
    log(
      `conv 3×3 ${n}×32×32×32→64 ${route === "blas1" ? "blas, 1 thread" : route}: forward ` +
        `${f.toFixed(1)} ms, grad input ${d.toFixed(1)} ms, train step ${t.toFixed(1)} ms`,
    );
  }
  tf.dispose([x, w, dy]);
}

/**
 * oneDNN's Winograd kernels against its direct ones on the small U-Net's 3×3 convs (batch `n`)
 * and one `adm256`-width conv: forward (with bias), input gradient and weight gradient, reorders
 * included. The basis of `winogradWorth`'s rules, which the log line shows beside each ratio.
 */
function benchWinograd(r: BenchResult, n: number, reps: number, log: (s: string) => void) {
  const dnn = loadOneDnn();
  if (!dnn || dnn.winograd === "off") return;
  const shapes: [number, number, number, number][] = [
    [n, 28, 32, 32],
    [n, 28, 64, 32],
    [n, 28, 64, 64],
    [n, 14, 64, 64],
    [n, 14, 128, 64],
    [n, 14, 128, 128],
    [n, 7, 128, 128],
    [n, 7, 256, 128],
    [Math.max(1, n / 16), 32, 256, 256],
  ];
  const was = dnn.winograd;
  try {
    for (const [b, hw, c, o] of shapes) {
      const x = tf.randomNormal([b, hw, hw, c]) as tf.Tensor4D;
      const w = tf.randomNormal([3, 3, c, o], 0, 0.1) as tf.Tensor4D;
      const bias = tf.randomNormal([o]);
      const dy = tf.randomNormal([b, hw, hw, o]) as tf.Tensor4D;
      const dwAttrs = { strides: 1, pad: "same", dataFormat: "NHWC", filterShape: [3, 3, c, o] };
      const ops: [ConvPass, string, () => void][] = [
        [
          "forward",
          "fwd",
          () => tf.dispose(tf.fused.conv2d({ x, filter: w, strides: 1, pad: "same", bias })),
        ],
        ["backward-data", "dx", () => tf.dispose(tf.conv2dTranspose(dy, w, x.shape, 1, "same"))],
        [
          "backward-weights",
          "dw",
          () =>
            tf.dispose(
              tf.engine().runKernel(
                tf.Conv2DBackpropFilter,
                { x, dy },
                dwAttrs as unknown as tf.NamedAttrMap,
              ) as tf.Tensor,
            ),
        ],
      ];
      const routes: [string, () => void][] = [];
      for (const [, op, f] of ops) {
        for (const mode of ["always", "off"] as const) {
          routes.push([`${op}_${mode === "off" ? "direct" : "winograd"}`, () => {
            dnn.winograd = mode;
            f();
          }]);
        }
      }
      const best = withBlas(true, () => interleaved(routes, reps));
      const key = `conv3x3_${b}x${hw}x${hw}x${c}to${o}`;
      const same = { h: hw, w: hw, oh: hw, ow: hw, pt: 1, pl: 1 };
      const g = { n: b, c, o, kh: 3, kw: 3, sh: 1, sw: 1, dh: 1, dw: 1, ...same };
      const parts = ops.map(([pass, op]) => {
        const wino = best.get(`${op}_winograd`)!, direct = best.get(`${op}_direct`)!;
        r[`${key}_${op}_winograd_ms`] = wino;
        r[`${key}_${op}_direct_ms`] = direct;
        return `${op} ${direct.toFixed(2)} → ${wino.toFixed(2)} ms (${
          (direct / wino).toFixed(2)
        }×, rule: ${winogradWorth(g, pass) ? "Winograd" : "direct"})`;
      });
      log(`Winograd vs direct, ${key}: ${parts.join(", ")}`);
      tf.dispose([x, w, bias, dy]);
    }
  } finally {
    dnn.winograd = was;
  }
}

function benchElementwise(r: BenchResult, n: number, reps: number, log: (s: string) => void) {
  const shape = [n, 32, 32, 64], size = n * 32 * 32 * 64;
  const x = tf.randomNormal(shape), gamma = tf.ones([64]), beta = tf.zeros([64]);
  const scale = tf.randomNormal([n, 1, 1, 64], 0, 0.1), shift = tf.randomNormal([n, 1, 1, 64]);
  const ns = (ms: number) => (ms * 1e6) / size;
  const cases: [string, () => tf.Tensor, (t: tf.Tensor[]) => tf.Tensor][] = [
    ["silu_fused", () => silu(x), ([a]) => silu(a)],
    ["silu_composed", () => siluComposed(x), ([a]) => siluComposed(a)],
    [
      "groupnorm_fused",
      () => groupNorm(x, gamma, beta, 32),
      ([a]) => groupNorm(a, gamma, beta, 32),
    ],
    [
      "groupnorm_composed",
      () => groupNormComposed(x, gamma, beta, 32),
      ([a]) => groupNormComposed(a, gamma, beta, 32),
    ],
    [
      "gn_scale_shift_silu_fused",
      () => groupNormScaleShift(x, gamma, beta, scale, shift, 32, 1e-5, true),
      ([a]) => groupNormScaleShift(a, gamma, beta, scale, shift, 32, 1e-5, true),
    ],
    [
      "gn_scale_shift_silu_composed",
      () =>
        siluComposed(
          tf.add(tf.mul(groupNormComposed(x, gamma, beta, 32), tf.add(scale, 1)), shift),
        ),
      ([a]) =>
        siluComposed(
          tf.add(tf.mul(groupNormComposed(a, gamma, beta, 32), tf.add(scale, 1)), shift),
        ),
    ],
  ];
  for (const [name, fwd, f] of cases) {
    const ft = timeMs(() => tf.tidy(() => void fwd()), reps);
    const grad = tf.grad((a: tf.Tensor) => tf.sum(f([a])));
    const bt = timeMs(() => tf.dispose(grad(x)), reps);
    r[`${name}_fwd_ns_per_el`] = ns(ft);
    r[`${name}_fwd_bwd_ns_per_el`] = ns(bt);
    log(`${name}: forward ${ns(ft).toFixed(2)} ns/el, forward+backward ${ns(bt).toFixed(2)} ns/el`);
  }
  tf.dispose([x, gamma, beta, scale, shift]);
}

/**
 * Where time goes in a small conv net's train step, by kernel (tf.profile): per kernel, the
 * best of `reps` profiled steps.
 */
async function profileConvNet(n: number, reps: number, log: (s: string) => void) {
  const x = tf.randomNormal([n, 32, 32, 32]);
  const w1 = tf.randomNormal([3, 3, 32, 64], 0, 0.1), w2 = tf.randomNormal([3, 3, 64, 64], 0, 0.1);
  const g1 = tf.ones([64]), b1 = tf.zeros([64]);
  const loss = (a: tf.Tensor, k1: tf.Tensor, k2: tf.Tensor) => {
    let h = tf.conv2d(a as tf.Tensor4D, k1 as tf.Tensor4D, 1, "same");
    h = groupNorm(h, g1, b1, 32, 1e-5, true);
    h = tf.conv2d(h, k2 as tf.Tensor4D, 2, "same");
    return tf.mean(tf.square(h));
  };
  const grads = tf.grads(loss);
  tf.dispose(grads([x, w1, w2]));
  const best = new Map<string, number>();
  for (let i = 0; i < reps; i++) {
    const info = await tf.profile(() => tf.dispose(grads([x, w1, w2])));
    const step = new Map<string, number>();
    for (const k of info.kernels) {
      step.set(k.name, (step.get(k.name) ?? 0) + (k.kernelTimeMs as number));
    }
    for (const [name, ms] of step) best.set(name, Math.min(best.get(name) ?? Infinity, ms));
  }
  const total = [...best.values()].reduce((a, b) => a + b, 0);
  const out: BenchResult = { profile_total_ms: total };
  for (const [name, ms] of [...best].sort((a, b) => b[1] - a[1])) {
    out[`profile_${name}_ms`] = ms;
    log(`  ${name.padEnd(24)} ${ms.toFixed(1).padStart(8)} ms ${(100 * ms / total).toFixed(0)} %`);
  }
  tf.dispose([x, w1, w2, g1, b1]);
  return out;
}

/** The BLAS / fused-kernel bench suite. */
export const suite = {
  name: "blas",
  description:
    "matMul, the models' products on OpenBLAS vs oneDNN (fp32, bf16), 3×3 conv with/without OpenBLAS; fused GroupNorm/SiLU vs composed",
  async run(opts: BenchOptions = {}): Promise<BenchResult> {
    const log = (s: string) => (opts.log ?? true) && console.error(s);
    await initEngine({ backend: "wasm", announce: opts.log ?? true });
    const quick = opts.quick ?? false;
    const reps = opts.repeats ?? (quick ? 2 : 5);
    const r: BenchResult = { repeats: reps };
    benchMatMul(r, quick ? 256 : 1024, 2 * reps, log);
    benchProducts(r, reps, quick, log);
    benchConv(r, quick ? 8 : 64, reps, log);
    benchWinograd(r, quick ? 16 : 64, reps, log);
    benchElementwise(r, quick ? 4 : 64, reps, log);
    const n = quick ? 8 : 64;
    log(`train step of conv3×3 → GN+SiLU → conv3×3/2, x ${n}×32×32×32, best per kernel:`);
    Object.assign(r, await profileConvNet(n, Math.min(reps, 3), log));
    return r;
  },
};
