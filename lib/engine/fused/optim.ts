// Optimiser arithmetic fused into one pass per parameter on the wasm heap: the Adam moments and
// update, the EMA blend of weights, and the gradients' sum of squares; in C on OpenMP's threads
// where the compiled kernels loaded (../native/optim.c, the same bits for Adam and the EMA).
// Composed tfjs ops run the same maths on other backends.
// Per parameter, composed Adam is ~10 kernels and EMA 3; a U-Net step has ~200 parameters.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const ADAM = "DpAdam";
export const EMA = "DpEma";

/** Adam coefficients for one step, bias corrections folded in (see lib/optim.ts). */
export interface AdamStep {
  readonly beta1: number;
  readonly beta2: number;
  /** eps·√(1 − β2^t), the ε of the folded form. */
  readonly epsHat: number;
  /** a·√(1 − β2^t)/(1 − β1^t). */
  readonly stepSize: number;
  /** a·weightDecay (AdamW), 0 for Adam. */
  readonly decay: number;
}

/**
 * m ← β1·m + (1 − β1)·g, v ← β2·v + (1 − β2)·g², u ← −stepSize·m/(√v + ε̂) − decay·p, written
 * into the output arrays (p read only when decay ≠ 0).
 */
export function adamArrays(
  g: Float32Array,
  m: Float32Array,
  v: Float32Array,
  p: Float32Array | undefined,
  s: AdamStep,
  mOut: Float32Array,
  vOut: Float32Array,
  u: Float32Array,
): void {
  const { beta1, beta2, epsHat, stepSize, decay } = s;
  const c1 = 1 - beta1, c2 = 1 - beta2;
  for (let i = 0; i < g.length; i++) {
    const gi = g[i];
    const mi = m[i] * beta1 + gi * c1;
    const vi = v[i] * beta2 + gi * gi * c2;
    mOut[i] = mi;
    vOut[i] = vi;
    u[i] = -stepSize * (mi / (Math.sqrt(vi) + epsHat));
  }
  if (decay !== 0 && p) { for (let i = 0; i < g.length; i++) u[i] -= p[i] * decay; }
}

/** out ← rate·e + (1 − rate)·p. */
export function emaArrays(e: Float32Array, p: Float32Array, out: Float32Array, rate: number) {
  const c = 1 - rate;
  for (let i = 0; i < e.length; i++) out[i] = e[i] * rate + p[i] * c;
}

type KernelArgs = Parameters<tf.KernelFunc>[0];

function adamKernel(args: KernelArgs): tf.TensorInfo[] {
  const { g, m, v, p } = args.inputs as Record<string, tf.TensorInfo | undefined>;
  if (!g || !m || !v) {
    throw new Error("DpAdam in lib/engine/fused/optim.ts: g, m and v are required");
  }
  const s = args.attrs as unknown as AdamStep;
  const b = asWasmBackend(args.backend);
  const outs = [0, 1, 2].map(() => b.makeOutput(g.shape.slice(), "float32"));
  const [mo, vo, u] = outs.map((o) => f32View(b, o));
  const pass = nativeKernels()?.adam ?? adamArrays;
  pass(
    f32View(b, g),
    f32View(b, m),
    f32View(b, v),
    p && f32View(b, p),
    s,
    mo,
    vo,
    u,
  );
  return outs;
}

function emaKernel(args: KernelArgs): tf.TensorInfo {
  const { e, p } = args.inputs as Record<string, tf.TensorInfo>;
  const { rate } = args.attrs as unknown as { rate: number };
  const b = asWasmBackend(args.backend);
  const out = b.makeOutput(e.shape.slice(), "float32");
  const ev = f32View(b, e), pv = f32View(b, p), ov = f32View(b, out);
  const native = nativeKernels();
  if (native) native.ema(ev, pv, ov, rate);
  else emaArrays(ev, pv, ov, rate);
  return out;
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  if (!tf.getKernel(ADAM, "wasm")) {
    tf.registerKernel({
      kernelName: ADAM,
      backendName: "wasm",
      kernelFunc: adamKernel as unknown as tf.KernelFunc,
    });
  }
  if (!tf.getKernel(EMA, "wasm")) {
    tf.registerKernel({ kernelName: EMA, backendName: "wasm", kernelFunc: emaKernel });
  }
}

const fusable = (...ts: (tf.Tensor | undefined)[]) =>
  tf.getBackend() === "wasm" && ts.every((t) => !t || t.dtype === "float32");

/**
 * One Adam step for one parameter: the new moments and the update to add to p. One kernel on
 * wasm; composed ops elsewhere. `p` is needed only with weight decay.
 */
export function adamStep(
  g: tf.Tensor,
  m: tf.Tensor,
  v: tf.Tensor,
  s: AdamStep,
  p?: tf.Tensor,
): { m: tf.Tensor; v: tf.Tensor; u: tf.Tensor } {
  const withP = s.decay !== 0 ? p : undefined;
  if (fusable(g, m, v, withP)) {
    register();
    const inputs: tf.NamedTensorMap = withP ? { g, m, v, p: withP } : { g, m, v };
    const [m2, v2, u] = tf.engine().runKernel(
      ADAM,
      inputs,
      s as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    return { m: m2, v: v2, u };
  }
  return tf.tidy(() => {
    const m2 = tf.add(tf.mul(m, s.beta1), tf.mul(g, 1 - s.beta1));
    const v2 = tf.add(tf.mul(v, s.beta2), tf.mul(tf.square(g), 1 - s.beta2));
    let u = tf.mul(tf.div(m2, tf.add(tf.sqrt(v2), s.epsHat)), -s.stepSize);
    if (withP) u = tf.sub(u, tf.mul(withP, s.decay));
    return { m: m2, v: v2, u };
  });
}

/** rate·e + (1 − rate)·p: one kernel on wasm, composed ops elsewhere. */
export function emaBlend(e: tf.Tensor, p: tf.Tensor, rate: number): tf.Tensor {
  if (fusable(e, p) && e.size === p.size) {
    register();
    return tf.engine().runKernel(EMA, { e, p }, { rate }) as tf.Tensor;
  }
  return tf.tidy(() => tf.add(tf.mul(e, rate), tf.mul(p, 1 - rate)));
}

/**
 * Σ x² over every tensor (the squared global norm of a set of gradients). In C on the wasm
 * heap where the compiled kernels loaded: no tensors made, summed in double; else by composed
 * ops in float32.
 */
export function sumOfSquares(ts: readonly tf.Tensor[]): number {
  const native = nativeKernels();
  if (native && fusable(...ts)) {
    const b = asWasmBackend(tf.backend());
    return ts.reduce((s, t) => s + native.sumSquares(f32View(b, t)), 0);
  }
  if (ts.length === 0) return 0;
  return tf.tidy(() => tf.addN(ts.map((g) => tf.sum(tf.square(g)))).dataSync()[0]);
}
