// Optimiser arithmetic fused into one pass per parameter on the wasm heap, every parameter in
// one kernel: the Adam moments and update, the parameters plus their updates, the EMA blend of
// weights; and the gradients' sum of squares. In C on OpenMP's threads where the compiled kernels
// loaded (../native/optim.c, the same bits as the JS loops here). Composed tfjs ops run the same
// maths on other backends. A U-Net step has ~200 parameters: a kernel per parameter cost ~25 µs
// of dispatch each (and composed Adam is ~10 kernels per parameter).
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View, sizeOf, type WasmBackend, wordOffset } from "../blas/heap.ts";
import { type NativeKernels, nativeKernels } from "../native_kernels.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend); each takes a list. */
export const ADAM = "DpAdam";
export const ADD = "DpAddPairs";
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

/**
 * Adam over many parameters for the C kernel: per parameter the word offsets on the wasm heap
 * of g, m, v, p (−1 when not read), m', v', u and the length (`rows`, 8 per parameter), and its
 * step size and decay (`coefs`, 2 per parameter).
 */
export interface AdamTable {
  readonly rows: BigInt64Array;
  readonly coefs: Float64Array;
  readonly beta1: number;
  readonly beta2: number;
  readonly epsHat: number;
}

/** Attributes of the DpAdam kernel: the shared coefficients and each parameter's own. */
interface AdamAttrs {
  readonly beta1: number;
  readonly beta2: number;
  readonly epsHat: number;
  readonly stepSizes: readonly number[];
  readonly decays: readonly number[];
}

/** Inputs `${name}${i}` of list kernels, i = 0 .. count − 1 (undefined where not given). */
const listed = (inputs: tf.NamedTensorInfoMap, name: string, count: number) =>
  Array.from({ length: count }, (_, i) => inputs[`${name}${i}`] as tf.TensorInfo | undefined);

/** The same for inputs every entry has. */
const required = (inputs: tf.NamedTensorInfoMap, name: string, count: number) =>
  listed(inputs, name, count).map((t, i) => {
    if (!t) throw new Error(`List kernel in lib/engine/fused/optim.ts: input ${name}${i} missing`);
    return t;
  });

/** The whole wasm heap as floats, for the C kernels that take word offsets. */
const heapF32 = (b: WasmBackend) => new Float32Array(b.wasm.HEAPU8.buffer);

function adamKernel(args: KernelArgs): tf.TensorInfo[] {
  const a = args.attrs as unknown as AdamAttrs;
  const count = a.stepSizes.length;
  const [g, m, v] = ["g", "m", "v"].map((n) => required(args.inputs, n, count));
  const p = listed(args.inputs, "p", count);
  const b = asWasmBackend(args.backend);
  // Every output first: an allocation may move the heap.
  const outs = g.map((gi) => [0, 1, 2].map(() => b.makeOutput(gi.shape.slice(), "float32")));
  const native = nativeKernels();
  if (native) {
    const rows = new BigInt64Array(8 * count), coefs = new Float64Array(2 * count);
    for (let i = 0; i < count; i++) {
      const at = (t: tf.TensorInfo | undefined) => t ? wordOffset(b, t) : -1;
      [g[i], m[i], v[i], p[i], ...outs[i]].forEach((t, j) => rows[8 * i + j] = BigInt(at(t)));
      rows[8 * i + 7] = BigInt(sizeOf(g[i].shape));
      coefs[2 * i] = a.stepSizes[i];
      coefs[2 * i + 1] = a.decays[i];
    }
    native.adamMulti(heapF32(b), { rows, coefs, ...a });
  } else {
    for (let i = 0; i < count; i++) {
      const s = { ...a, stepSize: a.stepSizes[i], decay: a.decays[i] };
      const [mo, vo, u] = outs[i].map((o) => f32View(b, o));
      const view = (t: tf.TensorInfo) => f32View(b, t), pi = p[i];
      adamArrays(view(g[i]), view(m[i]), view(v[i]), pi && view(pi), s, mo, vo, u);
    }
  }
  return outs.flat();
}

/**
 * A kernel of `count` elementwise maps (a_i, b_i) → out_i: the C kernel over a table of rows
 * (a, b, out, n) where built, else `js` per pair.
 */
function pairsKernel(
  args: KernelArgs,
  names: readonly [string, string],
  c: (k: NativeKernels, heap: Float32Array, table: BigInt64Array) => void,
  js: (a: Float32Array, b: Float32Array, out: Float32Array) => void,
): tf.TensorInfo[] {
  const count = (args.attrs as unknown as { count: number }).count;
  const [a, bs] = names.map((n) => required(args.inputs, n, count));
  const b = asWasmBackend(args.backend);
  const outs = a.map((ai) => b.makeOutput(ai.shape.slice(), "float32"));
  const native = nativeKernels();
  if (native) {
    const table = new BigInt64Array(4 * count);
    for (let i = 0; i < count; i++) {
      [a[i], bs[i], outs[i]].forEach((t, j) => table[4 * i + j] = BigInt(wordOffset(b, t)));
      table[4 * i + 3] = BigInt(sizeOf(outs[i].shape));
    }
    c(native, heapF32(b), table);
  } else {
    for (let i = 0; i < count; i++) js(f32View(b, a[i]), f32View(b, bs[i]), f32View(b, outs[i]));
  }
  return outs;
}

const addKernel = (args: KernelArgs) =>
  pairsKernel(
    args,
    ["a", "b"],
    (k, heap, t) => k.addMulti(heap, t),
    (a, b, out) => {
      for (let i = 0; i < out.length; i++) out[i] = a[i] + b[i];
    },
  );

const emaKernel = (args: KernelArgs) => {
  const { rate } = args.attrs as unknown as { rate: number };
  return pairsKernel(
    args,
    ["e", "p"],
    (k, heap, t) => k.emaMulti(heap, t, rate),
    (e, p, out) => emaArrays(e, p, out, rate),
  );
};

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  registerWasmKernels({
    [ADAM]: adamKernel as unknown as tf.KernelFunc,
    [ADD]: addKernel as unknown as tf.KernelFunc,
    [EMA]: emaKernel as unknown as tf.KernelFunc,
  });
}

const fusable = (...ts: (tf.Tensor | undefined)[]) =>
  tf.getBackend() === "wasm" && ts.every((t) => !t || t.dtype === "float32");

/** One parameter's Adam step: its gradient, moments, the parameter (read with decay only). */
export interface AdamInput {
  readonly g: tf.Tensor;
  readonly m: tf.Tensor;
  readonly v: tf.Tensor;
  readonly p?: tf.Tensor;
  readonly step: AdamStep;
}

/**
 * Adam steps for many parameters: the new moments and the update to add to each p. One kernel
 * on wasm for all of them (the shared β1, β2, ε̂ are taken from the first); composed ops
 * elsewhere.
 */
export function adamSteps(
  items: readonly AdamInput[],
): { m: tf.Tensor; v: tf.Tensor; u: tf.Tensor }[] {
  if (items.length === 0) return [];
  const withP = items.map((it) => it.step.decay !== 0 ? it.p : undefined);
  if (items.every((it, i) => fusable(it.g, it.m, it.v, withP[i]))) {
    register();
    const inputs: tf.NamedTensorMap = {};
    items.forEach((it, i) => {
      Object.assign(inputs, { [`g${i}`]: it.g, [`m${i}`]: it.m, [`v${i}`]: it.v });
      if (withP[i]) inputs[`p${i}`] = withP[i]!;
    });
    const { beta1, beta2, epsHat } = items[0].step;
    const attrs: AdamAttrs = {
      beta1,
      beta2,
      epsHat,
      stepSizes: items.map((it) => it.step.stepSize),
      decays: items.map((it) => it.step.decay),
    };
    const outs = tf.engine().runKernel(
      ADAM,
      inputs,
      attrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    return items.map((_, i) => ({ m: outs[3 * i], v: outs[3 * i + 1], u: outs[3 * i + 2] }));
  }
  return items.map(({ g, m, v, step: s }, i) =>
    tf.tidy(() => {
      const m2 = tf.add(tf.mul(m, s.beta1), tf.mul(g, 1 - s.beta1));
      const v2 = tf.add(tf.mul(v, s.beta2), tf.mul(tf.square(g), 1 - s.beta2));
      let u = tf.mul(tf.div(m2, tf.add(tf.sqrt(v2), s.epsHat)), -s.stepSize);
      if (withP[i]) u = tf.sub(u, tf.mul(withP[i]!, s.decay));
      return { m: m2, v: v2, u };
    })
  );
}

/** Pairs of same-shape tensors for a list kernel, or undefined where it does not apply. */
function pairInputs(names: readonly [string, string], a: readonly tf.Tensor[], b: tf.Tensor[]) {
  const same = (t: tf.Tensor, i: number) => tf.util.arraysEqual(t.shape, b[i].shape);
  if (a.length === 0 || !a.every((t, i) => fusable(t, b[i]) && same(t, i))) return;
  register();
  const inputs: tf.NamedTensorMap = {};
  a.forEach((t, i) => Object.assign(inputs, { [`${names[0]}${i}`]: t, [`${names[1]}${i}`]: b[i] }));
  return inputs;
}

/** a[i] + b[i] for every i: one kernel on wasm, tf.add elsewhere. */
export function addPairs(a: readonly tf.Tensor[], b: tf.Tensor[]): tf.Tensor[] {
  const inputs = pairInputs(["a", "b"], a, b);
  if (!inputs) return a.map((t, i) => tf.add(t, b[i]));
  return tf.engine().runKernel(ADD, inputs, { count: a.length }) as tf.Tensor[];
}

/** rate·e[i] + (1 − rate)·p[i] for every i: one kernel on wasm, composed ops elsewhere. */
export function emaBlends(e: readonly tf.Tensor[], p: tf.Tensor[], rate: number): tf.Tensor[] {
  const inputs = pairInputs(["e", "p"], e, p);
  if (!inputs) {
    return e.map((t, i) => tf.tidy(() => tf.add(tf.mul(t, rate), tf.mul(p[i], 1 - rate))));
  }
  return tf.engine().runKernel(EMA, inputs, { count: e.length, rate }) as tf.Tensor[];
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
