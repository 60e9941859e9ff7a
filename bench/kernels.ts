// Bench suite for the project's wasm kernels (lib/engine/wasm_kernels): each kernel against the
// built-in route it replaces, and a small conv net's train-step / forward ratio on wasm without
// BLAS (the acceptance number, `convnet_train_over_forward`; ≤ 4 wanted), and with BLAS when
// libopenblas loads. Run through `deno task bench --suite kernels`, or standalone:
//   deno run -R -E --allow-ffi --allow-sys bench/kernels.ts [--quick] [--repeats N]
import * as tf from "@tensorflow/tfjs";
import { initEngine } from "../lib/engine/mod.ts";
import { activeBlas, registerBlasKernels, unregisterBlasKernels } from "../lib/engine/blas/mod.ts";
import { silu } from "../lib/engine/fused/mod.ts";
import { builtinWasmKernel } from "../lib/engine/wasm_kernels/mod.ts";

/** Options of this suite. */
export interface KernelBenchOptions {
  /** Small shapes and few repetitions, for smoke runs. @default false */
  readonly quick?: boolean;
  /** Timed repetitions after one warm-up; the median is kept. @default 5 (2 when quick) */
  readonly repeats?: number;
  /** Print one line per measurement on stderr. @default true */
  readonly log?: boolean;
}

/** Named measurements (units in the key: `_ms`, ratios bare) and notes. */
export type KernelBenchResult = Record<string, number | string>;

// ─── helpers ─────────────────────────────────────────────────────────────────────────────────────

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Median wall time in ms of `f` (its result disposed) over `reps` runs after one warm-up. */
function timeMs(f: () => tf.TensorContainer, reps: number): number {
  tf.dispose(f());
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    tf.dispose(f());
    ts.push(performance.now() - t0);
  }
  return median(ts);
}

/** Run `f` with `config` registered in place of the current kernel of that name. */
function withKernel<T>(config: tf.KernelConfig, f: () => T): T {
  const name = config.kernelName;
  const current = tf.getKernel(name, "wasm");
  if (current) tf.unregisterKernel(name, "wasm");
  tf.registerKernel(config);
  // A built-in replaced before the backend started never had its setup (its cwrap) run.
  config.setupFunc?.(tf.backend());
  try {
    return f();
  } finally {
    tf.unregisterKernel(name, "wasm");
    if (current) tf.registerKernel(current);
  }
}

/** Run `f` with the BLAS kernels off (the project wasm kernels underneath show through). */
function withoutBlas<T>(f: () => T): T {
  const was = unregisterBlasKernels();
  try {
    return f();
  } finally {
    if (was) registerBlasKernels();
  }
}

const r3 = (x: number) => Math.round(x * 1000) / 1000;

// ─── conv gradients: ours vs built-in ────────────────────────────────────────────────────────────

interface ConvCase {
  readonly name: string;
  readonly x: [number, number, number, number];
  readonly k: number;
  readonly out: number;
  readonly stride: number;
  readonly pad: "same" | "valid";
}

// The conv shapes the models use: U-Net 3×3 (stride 1 and 2), 1×1 skips, DiT patchify.
const convCases = (n: number): ConvCase[] => [
  { name: "conv3x3", x: [n, 32, 32, 32], k: 3, out: 64, stride: 1, pad: "same" },
  { name: "conv3x3s2", x: [n, 32, 32, 64], k: 3, out: 64, stride: 2, pad: "same" },
  { name: "conv1x1", x: [n, 32, 32, 64], k: 1, out: 128, stride: 1, pad: "same" },
  { name: "patch2", x: [n, 32, 32, 4], k: 2, out: 384, stride: 2, pad: "valid" },
  { name: "patch4", x: [n, 32, 32, 3], k: 4, out: 384, stride: 4, pad: "valid" },
];

function filterGrad(x: tf.Tensor, dy: tf.Tensor, c: ConvCase): tf.Tensor {
  const attrs = {
    strides: c.stride,
    pad: c.pad,
    dataFormat: "NHWC",
    filterShape: [c.k, c.k, c.x[3], c.out],
  };
  return tf.engine().runKernel(
    tf.Conv2DBackpropFilter,
    { x, dy },
    attrs as unknown as tf.NamedAttrMap,
  ) as tf.Tensor;
}

// The only built-in filter gradient on wasm: Conv3DBackpropFilterV2 on a depth-1 view.
function filterGrad3d(x: tf.Tensor, dy: tf.Tensor, c: ConvCase): tf.Tensor {
  return tf.tidy(() => {
    const x5 = tf.expandDims(x, 1), dy5 = tf.expandDims(dy, 1);
    const attrs = {
      strides: [1, c.stride, c.stride],
      pad: c.pad,
      filterShape: [1, c.k, c.k, c.x[3], c.out],
    };
    const g = tf.engine().runKernel(
      "Conv3DBackpropFilterV2",
      { x: x5, dy: dy5 },
      attrs as unknown as tf.NamedAttrMap,
    );
    return tf.squeeze(g as tf.Tensor, [0]);
  });
}

function benchConvGrads(
  n: number,
  reps: number,
  builtin3d: number,
  log: (s: string) => void,
): KernelBenchResult {
  const r: KernelBenchResult = {};
  const builtinDx = builtinWasmKernel(tf.Conv2DBackpropInput);
  for (const c of convCases(n)) {
    const x = tf.randomNormal(c.x) as tf.Tensor4D;
    const w = tf.randomNormal([c.k, c.k, c.x[3], c.out], 0, 0.1) as tf.Tensor4D;
    const y = tf.conv2d(x, w, c.stride, c.pad);
    const dy = tf.randomNormal(y.shape) as tf.Tensor4D;
    const dx = () => tf.conv2dTranspose(dy, w, c.x, c.stride, c.pad);
    const fwd = timeMs(() => tf.conv2d(x, w, c.stride, c.pad), reps);
    const ours = timeMs(dx, reps);
    const dw = timeMs(() => filterGrad(x, dy, c), reps);
    const key = `${c.name}_n${n}`;
    r[`${key}_fwd_ms`] = fwd;
    r[`${key}_dx_ms`] = ours;
    r[`${key}_dw_ms`] = dw;
    r[`${key}_grads_over_fwd`] = r3((ours + dw) / fwd);
    let line = `${key.padEnd(16)} fwd ${fwd.toFixed(1)} ms, dX ${ours.toFixed(1)} ms, dW ${
      dw.toFixed(1)
    } ms`;
    if (builtinDx) {
      // The built-in is slow: one timed run after the warm-up.
      const b = withKernel(builtinDx, () => timeMs(dx, 1));
      r[`${key}_dx_builtin_ms`] = b;
      line += `; built-in dX ${b.toFixed(1)} ms (${(b / ours).toFixed(1)}×)`;
    }
    log(line);
    tf.dispose([x, w, y, dy]);
  }
  // Filter gradient vs Conv3DBackpropFilterV2 (~23 s at batch 64 for conv3x3): a small batch.
  if (builtin3d > 0) {
    const c = convCases(builtin3d)[0];
    const x = tf.randomNormal(c.x), dy = tf.randomNormal([builtin3d, 32, 32, c.out]);
    const ours = timeMs(() => filterGrad(x, dy, c), reps);
    const b = timeMs(() => filterGrad3d(x, dy, c), 1);
    const key = `${c.name}_n${builtin3d}`;
    r[`${key}_dw_ms`] = ours;
    r[`${key}_dw_conv3d_builtin_ms`] = b;
    log(
      `${key.padEnd(16)} dW ${ours.toFixed(1)} ms; built-in Conv3DBackpropFilterV2 ${
        b.toFixed(1)
      } ms (${(b / ours).toFixed(0)}×)`,
    );
    tf.dispose([x, dy]);
  }
  return r;
}

// ─── UnsortedSegmentSum (gather's gradient) ──────────────────────────────────────────────────────

function benchSegmentSum(rows: number, reps: number, log: (s: string) => void): KernelBenchResult {
  const r: KernelBenchResult = {};
  const [segments, width] = [1000, 384]; // an embedding table (class labels, timesteps)
  const x = tf.randomNormal([rows, width]);
  const ids = tf.randomUniform([rows], 0, segments, "int32") as tf.Tensor1D;
  const ours = timeMs(() => tf.unsortedSegmentSum(x, ids, segments), reps);
  // No built-in on wasm; the usual substitute is a one-hot matmul.
  const onehot = timeMs(
    () => tf.tidy(() => tf.matMul(tf.oneHot(ids, segments), x, true, false)),
    reps,
  );
  r[`segsum_${rows}x${width}_ms`] = ours;
  r[`segsum_${rows}x${width}_onehot_matmul_ms`] = onehot;
  r.segsum_builtin = "none: tfjs-backend-wasm 4.22 has no UnsortedSegmentSum";
  log(
    `unsortedSegmentSum [${rows}, ${width}] → ${segments}: ${ours.toFixed(2)} ms; one-hot matmul ${
      onehot.toFixed(2)
    } ms`,
  );
  tf.dispose([x, ids]);
  return r;
}

// ─── a small conv net: train step / forward ──────────────────────────────────────────────────────

type Act = (x: tf.Tensor) => tf.Tensor;
const siluComposedOps: Act = (x) => tf.mul(x, tf.sigmoid(x));

/** Three 3×3 convs (3 → 32 → 64 → 64) with bias and SiLU at 32×32; returns forward and step. */
function convNet(n: number, act: Act) {
  const shapes: [number, number][] = [[3, 32], [32, 64], [64, 64]];
  const ws = shapes.map(([i, o]) =>
    tf.variable(tf.randomNormal([3, 3, i, o], 0, Math.sqrt(2 / (9 * i))))
  );
  const bs = shapes.map(([, o]) => tf.variable(tf.zeros([o])));
  const x = tf.randomNormal([n, 32, 32, 3]) as tf.Tensor4D;
  const loss = () => {
    let h: tf.Tensor4D = x;
    for (let i = 0; i < ws.length; i++) {
      h = act(tf.add(tf.conv2d(h, ws[i] as tf.Tensor4D, 1, "same"), bs[i])) as tf.Tensor4D;
    }
    return tf.mean(tf.square(h)) as tf.Scalar;
  };
  const params = [...ws, ...bs];
  return {
    forward: () => tf.tidy(loss),
    step: () => {
      const { value, grads } = tf.variableGrads(loss, params);
      return [value, ...Object.values(grads)];
    },
    dispose: () => tf.dispose([...params, x]),
  };
}

function benchConvNet(
  n: number,
  reps: number,
  act: Act,
  suffix: string,
  log: (s: string) => void,
): KernelBenchResult {
  const net = convNet(n, act);
  const before = tf.memory().numTensors;
  // Forward and step alternate and the ratio is taken per pair, so that load from other
  // processes shifts both sides of each ratio alike.
  const once = (f: () => tf.TensorContainer) => {
    const t0 = performance.now();
    tf.dispose(f());
    return performance.now() - t0;
  };
  once(net.forward);
  once(net.step);
  const fwds: number[] = [], steps: number[] = [], ratios: number[] = [];
  for (let i = 0; i < reps; i++) {
    fwds.push(once(net.forward));
    steps.push(once(net.step));
    ratios.push(steps[i] / fwds[i]);
  }
  const leaked = tf.memory().numTensors - before;
  net.dispose();
  const [fwd, step, ratio] = [median(fwds), median(steps), median(ratios)];
  log(
    `convnet${suffix} (3×3 convs 3→32→64→64, 32×32, batch ${n}, SiLU): forward ${
      fwd.toFixed(1)
    } ms, ` +
      `train step ${step.toFixed(1)} ms, ratio ${ratio.toFixed(2)}${
        leaked ? `, LEAKED ${leaked} tensors` : ""
      }`,
  );
  return {
    [`convnet_forward${suffix}_ms`]: fwd,
    [`convnet_train_step${suffix}_ms`]: step,
    [`convnet_train_over_forward${suffix}`]: r3(ratio),
    ...(leaked ? { [`convnet_leaked_tensors${suffix}`]: leaked } : {}),
  };
}

// ─── suite ───────────────────────────────────────────────────────────────────────────────────────

/** The wasm-kernels bench suite. */
export const suite = {
  name: "kernels",
  description: "project wasm kernels vs built-in routes; conv net train-step / forward ratio",
  async run(opts: KernelBenchOptions = {}): Promise<KernelBenchResult> {
    const log = (s: string) => (opts.log ?? true) && console.error(s);
    await initEngine({ backend: "wasm", announce: opts.log ?? true });
    const quick = opts.quick ?? false;
    const reps = opts.repeats ?? (quick ? 2 : 5);
    const batch = quick ? 4 : 32;
    const r: KernelBenchResult = {
      repeats: reps,
      convnet_batch: batch,
      note: "all but *_blas measured with the BLAS kernels off: wasm + project kernels only",
    };
    withoutBlas(() => {
      Object.assign(r, benchConvGrads(quick ? 4 : 64, reps, quick ? 1 : 4, log));
      Object.assign(r, benchSegmentSum(quick ? 256 : 4096, reps, log));
      // The headline ratio uses the project's SiLU (lib/engine/fused, what the models call);
      // tfjs's composed x·σ(x), whose gradient runs six elementwise ops, is reported beside it.
      Object.assign(r, benchConvNet(batch, reps, silu, "", log));
      Object.assign(r, benchConvNet(batch, reps, siluComposedOps, "_composed_silu", log));
    });
    if (activeBlas()) Object.assign(r, benchConvNet(batch, reps, silu, "_blas", log));
    return r;
  },
};
