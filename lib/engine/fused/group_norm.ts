// GroupNorm (Wu & He 2018) with ADM's scale-shift modulation and an optional SiLU, fused into
// one kernel forward and one backward on the wasm heap; composed tfjs ops on other backends.
//
// Symbols: x [N, ..., C] viewed as [N, S, C] (S = spatial positions), G groups of C/G channels,
// per (n, g): mean m, rstd r = 1/√(var + eps); x̂ = (x − m)·r.
//   y0 = x̂·γ[c] + β[c]                                  plain GroupNorm
//   y1 = y0·(1 + scale[n, c]) + shift[n, c]             ADM use_scale_shift_norm (unet.py)
//   y  = silu(y1) = y1·σ(y1)                            when `silu`
// Forward folds everything into y1 = x·A[n, c] + B[n, c]; where the C kernels are built, the
// SiLU runs in the same pass forward, and backward its derivative joins the first gradient pass
// (y1 recomputed from x: 3 passes over the activation instead of 5). Backward, with d = ∂L/∂y1 and
// k = (1 + scale)·γ:  S1 = Σ_s d, S2 = Σ_s d·x, T = Σ_s d·x̂ = r·(S2 − m·S1) per (n, c);
//   ∂shift = S1, ∂scale = γ·T + β·S1, ∂β = Σ_n (1+scale)·S1, ∂γ = Σ_n (1+scale)·T,
//   ∂x = r·(k·d − mean_g(k·d) − x̂·mean_g(k·d·x̂)), an affine map of (d, x) per channel.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View, type WasmBackend } from "../blas/heap.ts";
import { oneDnnSilu, wasmSigmoid, wasmSilu } from "./silu.ts";
import { nativeKernels } from "../native_kernels.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const GROUP_NORM = "DpGroupNorm";
export const GROUP_NORM_MOD = "DpGroupNormScaleShift";
export const GROUP_NORM_GRAD = "DpGroupNormGrad";

interface GnAttrs {
  readonly groups: number;
  readonly eps: number;
  readonly silu: boolean;
}

/** x viewed as [N, S, C] in G groups. */
export interface GnDims {
  readonly n: number;
  readonly s: number;
  readonly c: number;
  readonly g: number;
}

/** Dimensions of x [N, ..., C] split into `groups` groups. */
export function gnDims(shape: readonly number[], groups: number): GnDims {
  const n = shape[0], c = shape[shape.length - 1];
  let s = 1;
  for (let i = 1; i < shape.length - 1; i++) s *= shape[i];
  return { n, s, c, g: groups };
}

/** Per-(n, g) mean and rstd, indexed n·G + g. */
export interface GnStats {
  readonly mean: Float64Array;
  readonly rstd: Float64Array;
}

/** Example n's c values of a per-example array [N, C]. */
function ofExample<T extends Float32Array | Float64Array>(a: T, n: number, c: number): T {
  return a.subarray(n * c, (n + 1) * c) as T;
}

/** Group statistics from per-channel sums in float64 (one pass over x). */
export function groupNormStats(x: Float32Array, d: GnDims, eps: number): GnStats {
  const { n: nb, s, c, g } = d;
  const cpg = c / g, count = s * cpg;
  const sums = new Float64Array(nb * c), sqs = new Float64Array(nb * c);
  const mean = new Float64Array(nb * g), rstd = new Float64Array(nb * g);
  const st = { mean, rstd };
  const native = nativeKernels(); // GroupNorm's passes in C where they were built, else JS
  if (native) {
    native.sums(x, x, sums, sqs, c); // every example in one call
    native.gnStats(sums, sqs, st, d, eps);
    return st;
  }
  for (let n = 0; n < nb; n++) {
    const o = n * c;
    for (let p = 0, i = n * s * c; p < s; p++, i += c) {
      for (let ch = 0; ch < c; ch++) {
        const v = x[i + ch];
        sums[o + ch] += v;
        sqs[o + ch] += v * v;
      }
    }
  }
  for (let n = 0, k = 0; n < nb; n++) {
    for (let gi = 0; gi < g; gi++, k++) {
      let a = 0, b = 0;
      for (let ch = n * c + gi * cpg, end = ch + cpg; ch < end; ch++) {
        a += sums[ch];
        b += sqs[ch];
      }
      const m = a / count;
      mean[k] = m;
      rstd[k] = 1 / Math.sqrt(Math.max(0, b / count - m * m) + eps);
    }
  }
  return st;
}

/** Affine operands: γ, β [C]; scale, shift [N·C] or absent. */
export interface GnParams {
  readonly gamma: Float32Array;
  readonly beta: Float32Array;
  readonly scale?: Float32Array;
  readonly shift?: Float32Array;
}

/** A, B [N, C] such that y1 = x·A[n, c] + B[n, c] for every example n. */
function allCoefficients(d: GnDims, st: GnStats, p: GnParams) {
  const { n: nb, c, g } = d;
  const cpg = c / g;
  const A = new Float32Array(nb * c), B = new Float32Array(nb * c);
  const native = nativeKernels();
  if (native) {
    native.gnCoefficients(st, p, A, B, d);
    return { A, B };
  }
  const { gamma, beta, scale, shift } = p;
  for (let n = 0, i = 0; n < nb; n++) {
    for (let ch = 0; ch < c; ch++, i++) {
      const k = n * g + Math.floor(ch / cpg);
      const mod = scale ? 1 + scale[i] : 1;
      const a = st.rstd[k] * gamma[ch];
      A[i] = a * mod;
      B[i] = (beta[ch] - st.mean[k] * a) * mod + (shift ? shift[i] : 0);
    }
  }
  return { A, B };
}

// Per-channel affine maps over rows [start, end) of width c. With c a multiple of 4, four
// channels at a time down the rows keeps their coefficients in registers (~1.5× faster in V8).

function affineRows(
  x: Float32Array,
  A: Float32Array,
  B: Float32Array,
  y: Float32Array,
  start: number,
  end: number,
  c: number,
): void {
  if (c % 4 !== 0) {
    for (let i = start; i < end; i += c) {
      for (let ch = 0; ch < c; ch++) y[i + ch] = x[i + ch] * A[ch] + B[ch];
    }
    return;
  }
  for (let ch = 0; ch < c; ch += 4) {
    const a0 = A[ch], a1 = A[ch + 1], a2 = A[ch + 2], a3 = A[ch + 3];
    const b0 = B[ch], b1 = B[ch + 1], b2 = B[ch + 2], b3 = B[ch + 3];
    for (let i = start + ch; i < end; i += c) {
      y[i] = x[i] * a0 + b0;
      y[i + 1] = x[i + 1] * a1 + b1;
      y[i + 2] = x[i + 2] * a2 + b2;
      y[i + 3] = x[i + 3] * a3 + b3;
    }
  }
}

/** out ← P·d + Q·x + R per channel. */
function affine2Rows(
  d: Float32Array,
  P: Float32Array,
  x: Float32Array,
  Q: Float32Array,
  R: Float32Array,
  out: Float32Array,
  start: number,
  end: number,
  c: number,
): void {
  if (c % 4 !== 0) {
    for (let i = start; i < end; i += c) {
      for (let ch = 0; ch < c; ch++) out[i + ch] = P[ch] * d[i + ch] + Q[ch] * x[i + ch] + R[ch];
    }
    return;
  }
  for (let ch = 0; ch < c; ch += 4) {
    const p0 = P[ch], p1 = P[ch + 1], p2 = P[ch + 2], p3 = P[ch + 3];
    const q0 = Q[ch], q1 = Q[ch + 1], q2 = Q[ch + 2], q3 = Q[ch + 3];
    const r0 = R[ch], r1 = R[ch + 1], r2 = R[ch + 2], r3 = R[ch + 3];
    for (let i = start + ch; i < end; i += c) {
      out[i] = p0 * d[i] + q0 * x[i] + r0;
      out[i + 1] = p1 * d[i + 1] + q1 * x[i + 1] + r1;
      out[i + 2] = p2 * d[i + 2] + q2 * x[i + 2] + r2;
      out[i + 3] = p3 * d[i + 3] + q3 * x[i + 3] + r3;
    }
  }
}

/** y1 ← GN(x)·(1 + scale) + shift, one pass over x. */
export function groupNormAffine(
  x: Float32Array,
  d: GnDims,
  st: GnStats,
  p: GnParams,
  y: Float32Array,
): void {
  const { n: nb, s, c } = d;
  const { A, B } = allCoefficients(d, st, p);
  const native = nativeKernels();
  if (native) return native.affine(x, A, B, y, c);
  for (let n = 0; n < nb; n++) {
    affineRows(x, ofExample(A, n, c), ofExample(B, n, c), y, n * s * c, (n + 1) * s * c, c);
  }
}

/** What the C kernels' `gnFinish` reads (sums, stats, operands) and writes (the rest). */
export interface GnFinish {
  readonly S1: Float64Array;
  readonly S2: Float64Array;
  readonly st: GnStats;
  readonly p: GnParams;
  readonly d: GnDims;
  /** Accumulated over examples, from zero. */
  readonly dgamma: Float64Array;
  readonly dbeta: Float64Array;
  readonly dscale?: Float32Array;
  readonly dshift?: Float32Array;
  readonly P: Float32Array;
  readonly Q: Float32Array;
  readonly R: Float32Array;
}

/** Gradient outputs; dscale and dshift only when modulated. */
export interface GnGrads {
  readonly dx: Float32Array;
  readonly dgamma: Float32Array;
  readonly dbeta: Float32Array;
  readonly dscale?: Float32Array;
  readonly dshift?: Float32Array;
}

/**
 * Gradients from dy = ∂L/∂y. With `silu`, y1 holds the pre-activation and s holds σ(y1) on
 * entry; s is overwritten with ∂L/∂y1. Without it, dy is ∂L/∂y1 itself.
 */
export function groupNormBackward(
  dy: Float32Array,
  x: Float32Array,
  d: GnDims,
  st: GnStats,
  p: GnParams,
  out: GnGrads,
  silu?: { readonly y1: Float32Array; readonly s: Float32Array },
): void {
  const { n: nb, s, c } = d;
  // Per-example sums [N, C], so that the C kernels take every example at once.
  const S1all = new Float64Array(nb * c), S2all = new Float64Array(nb * c);
  const dd = silu ? silu.s : dy; // ∂L/∂y1 after pass 1
  const native = nativeKernels();
  // Pass 1: ∂L/∂y1 (through SiLU if any), S1 = Σ_s d and S2 = Σ_s d·x per example and channel.
  // Through SiLU only on the JS route: with the C kernels loaded, the grad kernel fuses the SiLU
  // backward into its first pass (siluGradSums) instead.
  if (native && !silu) native.sums(dy, x, S1all, S2all, c);
  else {
    for (let n = 0; n < nb; n++) {
      const S1 = ofExample(S1all, n, c), S2 = ofExample(S2all, n, c);
      for (let i = n * s * c; i < (n + 1) * s * c; i += c) {
        for (let ch = 0; ch < c; ch++) {
          const j = i + ch;
          let dv = dy[j];
          if (silu) {
            const v = silu.s[j];
            dv = dv * v * (1 + silu.y1[j] * (1 - v));
            silu.s[j] = dv;
          }
          S1[ch] += dv;
          S2[ch] += dv * x[j];
        }
      }
    }
  }
  finishBackward(dd, x, d, st, p, out, S1all, S2all);
}

/**
 * GroupNorm's gradients from dd = ∂L/∂y1 and its sums S1 = Σ_s dd, S2 = Σ_s dd·x [N, C]: the
 * parameter gradients, then dx = P·dd + Q·x + R per channel (dx may be dd's own buffer).
 */
function finishBackward(
  dd: Float32Array,
  x: Float32Array,
  d: GnDims,
  st: GnStats,
  p: GnParams,
  out: GnGrads,
  S1all: Float64Array,
  S2all: Float64Array,
): void {
  const { n: nb, s, c, g } = d;
  const { dx, dscale, dshift } = out;
  const Pall = new Float32Array(nb * c), Qall = new Float32Array(nb * c);
  const Rall = new Float32Array(nb * c);
  const dgamma = new Float64Array(c), dbeta = new Float64Array(c);
  const native = nativeKernels();
  if (native) {
    const f = { S1: S1all, S2: S2all, st, p, dgamma, dbeta, dscale, dshift, d };
    native.gnFinish({ ...f, P: Pall, Q: Qall, R: Rall });
    native.affine2(dd, Pall, x, Qall, Rall, dx, c);
  } else {
    const cpg = c / g, count = s * cpg;
    const { gamma, beta, scale } = p;
    // k = (1 + scale)·γ per channel.
    const T = new Float64Array(c), K = new Float64Array(c);
    for (let n = 0; n < nb; n++) {
      const o = n * c;
      // Per-channel parameter gradients, then dx = P·d + Q·x + R per channel.
      for (let ch = 0; ch < c; ch++) {
        const k = n * g + Math.floor(ch / cpg);
        const mod = scale ? 1 + scale[o + ch] : 1;
        const S1 = S1all[o + ch];
        T[ch] = st.rstd[k] * (S2all[o + ch] - st.mean[k] * S1);
        K[ch] = mod * gamma[ch];
        dbeta[ch] += mod * S1;
        dgamma[ch] += mod * T[ch];
        if (dshift) dshift[o + ch] = S1;
        if (dscale) dscale[o + ch] = gamma[ch] * T[ch] + beta[ch] * S1;
      }
      for (let gi = 0; gi < g; gi++) {
        const c0 = gi * cpg, c1 = c0 + cpg;
        let ag = 0, bg = 0;
        for (let ch = c0; ch < c1; ch++) {
          ag += K[ch] * S1all[o + ch];
          bg += K[ch] * T[ch];
        }
        ag /= count;
        bg /= count;
        const r = st.rstd[n * g + gi], m = st.mean[n * g + gi];
        for (let ch = c0; ch < c1; ch++) {
          Pall[o + ch] = r * K[ch];
          Qall[o + ch] = -r * r * bg;
          Rall[o + ch] = r * r * bg * m - r * ag;
        }
      }
      const P = Pall.subarray(o, o + c), Q = Qall.subarray(o, o + c), R = Rall.subarray(o, o + c);
      affine2Rows(dd, P, x, Q, R, dx, n * s * c, (n + 1) * s * c, c);
    }
  }
  out.dgamma.set(dgamma);
  out.dbeta.set(dbeta);
}

// ---------------------------------------------------------------------------------------------
// Kernels and gradients (wasm backend)

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Inputs = Record<string, tf.TensorInfo | undefined>;

function need(t: tf.TensorInfo | undefined, name: string): tf.TensorInfo {
  if (!t) throw new Error(`Input "${name}" missing in lib/engine/fused/group_norm.ts`);
  return t;
}

function params(b: WasmBackend, inputs: Inputs): GnParams {
  return {
    gamma: f32View(b, need(inputs.gamma, "gamma")),
    beta: f32View(b, need(inputs.beta, "beta")),
    scale: inputs.scale && f32View(b, inputs.scale),
    shift: inputs.shift && f32View(b, inputs.shift),
  };
}

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const inputs = args.inputs as Inputs;
  const attrs = args.attrs as unknown as GnAttrs;
  const x = need(inputs.x, "x");
  const backend = asWasmBackend(args.backend);
  const d = gnDims(x.shape, attrs.groups);
  const y1 = backend.makeOutput([...x.shape], "float32");
  const xv = f32View(backend, x);
  const native = nativeKernels();
  if (native) {
    // In C an example at a time, the affine map and SiLU in one pass.
    native.gnForward(xv, params(backend, inputs), f32View(backend, y1), d, attrs.eps, attrs.silu);
    return y1;
  }
  const st = groupNormStats(xv, d, attrs.eps);
  groupNormAffine(xv, d, st, params(backend, inputs), f32View(backend, y1));
  if (!attrs.silu) return y1;
  const y = wasmSilu(backend, y1);
  backend.disposeData(y1.dataId);
  return y;
}

function gradKernel(args: KernelArgs): tf.TensorInfo[] {
  const inputs = args.inputs as Inputs;
  const attrs = args.attrs as unknown as GnAttrs;
  const x = need(inputs.x, "x"), dy = need(inputs.dy, "dy");
  const { scale, shift } = inputs;
  const backend = asWasmBackend(args.backend);
  const d = gnDims(x.shape, attrs.groups);
  const outs = [
    backend.makeOutput([...x.shape], "float32"),
    backend.makeOutput([...need(inputs.gamma, "gamma").shape], "float32"),
    backend.makeOutput([...need(inputs.beta, "beta").shape], "float32"),
  ];
  if (scale && shift) {
    outs.push(backend.makeOutput([...scale.shape], "float32"));
    outs.push(backend.makeOutput([...shift.shape], "float32"));
  }
  const native = nativeKernels();
  if (native) {
    // In C an example at a time; the separate passes below if its scratch is not to be had.
    const v = outs.map((o) => f32View(backend, o));
    const grads = { dx: v[0], dgamma: v[1], dbeta: v[2], dscale: v[3], dshift: v[4] };
    const [dyv, xv, p] = [f32View(backend, dy), f32View(backend, x), params(backend, inputs)];
    if (native.gnBackward(dyv, xv, p, grads, d, attrs.eps, attrs.silu)) return outs;
  }
  const st = groupNormStats(f32View(backend, x), d, attrs.eps);
  if (attrs.silu && native) {
    // y1 recomputed, SiLU's backward and the gradient sums in one C pass writing ∂L/∂y1 into
    // dx's buffer, which the last pass then overwrites with dx in place.
    const p = params(backend, inputs);
    const { A, B } = allCoefficients(d, st, p);
    const S1 = new Float64Array(d.n * d.c), S2 = new Float64Array(d.n * d.c);
    const v = outs.map((o) => f32View(backend, o));
    const xv = f32View(backend, x);
    native.siluGradSums(f32View(backend, dy), xv, A, B, v[0], S1, S2, d.c);
    const grads = { dx: v[0], dgamma: v[1], dbeta: v[2], dscale: v[3], dshift: v[4] };
    finishBackward(v[0], xv, d, st, p, grads, S1, S2);
    return outs;
  }
  const dnn = attrs.silu ? oneDnnSilu() : undefined;
  if (dnn) {
    // y1 into dx's buffer, ∂L/∂y1 = SiLU'(y1)·dy by oneDNN into a temporary, then plain GN grads.
    const dd = backend.makeOutput([...x.shape], "float32");
    groupNormAffine(f32View(backend, x), d, st, params(backend, inputs), f32View(backend, outs[0]));
    const v = outs.map((o) => f32View(backend, o));
    const ddv = f32View(backend, dd);
    if (dnn.swishBackward(v[0], f32View(backend, dy), ddv)) {
      groupNormBackward(ddv, f32View(backend, x), d, st, params(backend, inputs), {
        dx: v[0],
        dgamma: v[1],
        dbeta: v[2],
        dscale: v[3],
        dshift: v[4],
      });
      backend.disposeData(dd.dataId);
      return outs;
    }
    backend.disposeData(dd.dataId);
  }
  let sig: tf.TensorInfo | undefined;
  if (attrs.silu) {
    // The pre-activation y1 goes into dx's buffer, σ(y1) into a temporary.
    groupNormAffine(f32View(backend, x), d, st, params(backend, inputs), f32View(backend, outs[0]));
    sig = wasmSigmoid(backend, outs[0]);
  }
  const v = outs.map((o) => f32View(backend, o));
  groupNormBackward(
    f32View(backend, dy),
    f32View(backend, x),
    d,
    st,
    params(backend, inputs),
    { dx: v[0], dgamma: v[1], dbeta: v[2], dscale: v[3], dshift: v[4] },
    sig && { y1: v[0], s: f32View(backend, sig) },
  );
  if (sig) backend.disposeData(sig.dataId);
  return outs;
}

function gradFunc(modulated: boolean): tf.GradFunc {
  return (dy, saved, attrs) => {
    const [x, gamma, beta, scale, shift] = saved;
    // One backward kernel yields every input's gradient. Run it here, not inside the returned
    // closures: tfjs calls each closure in its own tidy, which would dispose the siblings.
    const inputs: tf.NamedTensorMap = modulated
      ? { dy: dy as tf.Tensor, x, gamma, beta, scale, shift }
      : { dy: dy as tf.Tensor, x, gamma, beta };
    const grads = tf.engine().runKernel(
      GROUP_NORM_GRAD,
      inputs,
      attrs as unknown as tf.NamedAttrMap,
    ) as tf.Tensor[];
    const base = { x: () => grads[0], gamma: () => grads[1], beta: () => grads[2] };
    return modulated ? { ...base, scale: () => grads[3], shift: () => grads[4] } : base;
  };
}

let registered = false;

/** Register the fused GroupNorm kernels and gradients for wasm (idempotent). */
export function registerGroupNormKernels(): void {
  if (registered) return;
  registered = true;
  registerWasmKernels(
    { [GROUP_NORM]: forwardKernel, [GROUP_NORM_MOD]: forwardKernel, [GROUP_NORM_GRAD]: gradKernel },
    [
      { kernelName: GROUP_NORM, inputsToSave: ["x", "gamma", "beta"], gradFunc: gradFunc(false) },
      {
        kernelName: GROUP_NORM_MOD,
        inputsToSave: ["x", "gamma", "beta", "scale", "shift"],
        gradFunc: gradFunc(true),
      },
    ],
  );
}

// ---------------------------------------------------------------------------------------------
// Public ops

function check(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, groups: number): void {
  const c = x.shape[x.rank - 1];
  if (x.rank < 2 || !Number.isInteger(groups) || groups < 1 || c % groups !== 0) {
    throw new Error(
      `GroupNorm in lib/engine/fused/group_norm.ts: ${c} channels of [${x.shape}] do not split into ${groups} groups`,
    );
  }
  if (gamma.size !== c || beta.size !== c) {
    throw new Error(
      `GroupNorm in lib/engine/fused/group_norm.ts: gamma [${gamma.shape}] and beta [${beta.shape}] need ${c} values`,
    );
  }
}

function checkMod(x: tf.Tensor, t: tf.Tensor, name: string): void {
  const n = x.shape[0], c = x.shape[x.rank - 1];
  if (t.size !== n * c || t.shape[0] !== n || t.shape[t.rank - 1] !== c) {
    throw new Error(
      `GroupNorm in lib/engine/fused/group_norm.ts: ${name} [${t.shape}] must be [${n}, 1, 1, ${c}]`,
    );
  }
}

/** Whether the fused kernels run here (wasm backend, float32). */
function fused(...ts: tf.Tensor[]): boolean {
  if (tf.getBackend() !== "wasm" || ts.some((t) => t.dtype !== "float32")) return false;
  registerGroupNormKernels();
  return true;
}

/** GroupNorm from composed tfjs ops (any backend); the reference for the fused kernel. */
export function groupNormComposed<T extends tf.Tensor>(
  x: T,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: number,
  eps = 1e-5,
): T {
  return tf.tidy(() => {
    const n = x.shape[0], c = x.shape[x.rank - 1];
    const xg = tf.reshape(x, [n, -1, groups, c / groups]); // [N, S, G, C/G]
    const { mean, variance } = tf.moments(xg, [1, 3], true);
    const xn = tf.reshape(tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, eps))), x.shape);
    return tf.add(tf.mul(xn, tf.reshape(gamma, [c])), tf.reshape(beta, [c])) as T;
  });
}

/**
 * GroupNorm over the last axis of x [N, ..., C] in `groups` groups, with affine gamma, beta [C].
 * Fused on wasm; `silu` also applies SiLU in the same pass.
 *
 * @example
 * ```ts
 * const h = groupNorm(x, p["norm.weight"], p["norm.bias"], 32, 1e-5, true); // GN → SiLU
 * ```
 */
export function groupNorm<T extends tf.Tensor>(
  x: T,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: number,
  eps = 1e-5,
  silu = false,
): T {
  check(x, gamma, beta, groups);
  if (fused(x, gamma, beta)) {
    return tf.engine().runKernel(GROUP_NORM, { x, gamma, beta }, {
      groups,
      eps,
      silu,
    }) as T;
  }
  return tf.tidy(() => {
    const y = groupNormComposed(x, gamma, beta, groups, eps);
    return (silu ? tf.mul(y, tf.sigmoid(y)) : y) as T;
  });
}

/**
 * ADM's scale-shift norm: GN(x)·(1 + scale) + shift, scale and shift [N, 1, 1, C]
 * (guided_diffusion/unet.py ResBlock with use_scale_shift_norm). Fused on wasm; `silu` also
 * applies the SiLU that follows it in the ResBlock.
 */
export function groupNormScaleShift<T extends tf.Tensor>(
  x: T,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  scale: tf.Tensor,
  shift: tf.Tensor,
  groups: number,
  eps = 1e-5,
  silu = false,
): T {
  check(x, gamma, beta, groups);
  checkMod(x, scale, "scale");
  checkMod(x, shift, "shift");
  if (fused(x, gamma, beta, scale, shift)) {
    return tf.engine().runKernel(
      GROUP_NORM_MOD,
      { x, gamma, beta, scale, shift },
      { groups, eps, silu },
    ) as T;
  }
  return tf.tidy(() => {
    const n = x.shape[0], c = x.shape[x.rank - 1];
    const bshape = [n, ...new Array(x.rank - 2).fill(1), c];
    const y = tf.add(
      tf.mul(groupNormComposed(x, gamma, beta, groups, eps), tf.add(tf.reshape(scale, bshape), 1)),
      tf.reshape(shift, bshape),
    );
    return (silu ? tf.mul(y, tf.sigmoid(y)) : y) as T;
  });
}
