// GroupNorm (Wu & He 2018) with ADM's scale-shift modulation and an optional SiLU, fused into
// one kernel forward and one backward on the wasm heap; composed tfjs ops on other backends.
//
// Symbols: x [N, ..., C] viewed as [N, S, C] (S = spatial positions), G groups of C/G channels,
// per (n, g): mean m, rstd r = 1/√(var + eps); x̂ = (x − m)·r.
//   y0 = x̂·γ[c] + β[c]                                  plain GroupNorm
//   y1 = y0·(1 + scale[n, c]) + shift[n, c]             ADM use_scale_shift_norm (unet.py)
//   y  = silu(y1) = y1·σ(y1)                            when `silu`
// Forward folds everything into y1 = x·A[n, c] + B[n, c]. Backward, with d = ∂L/∂y1 and
// k = (1 + scale)·γ:  S1 = Σ_s d, S2 = Σ_s d·x, T = Σ_s d·x̂ = r·(S2 − m·S1) per (n, c);
//   ∂shift = S1, ∂scale = γ·T + β·S1, ∂β = Σ_n (1+scale)·S1, ∂γ = Σ_n (1+scale)·T,
//   ∂x = r·(k·d − mean_g(k·d) − x̂·mean_g(k·d·x̂)), an affine map of (d, x) per channel.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View, type WasmBackend } from "../blas/heap.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const GROUP_NORM = "DpGroupNorm";
export const GROUP_NORM_MOD = "DpGroupNormScaleShift";
export const GROUP_NORM_GRAD = "DpGroupNormGrad";

interface GnAttrs {
  readonly groups: number;
  readonly eps: number;
  readonly silu: boolean;
}

interface GnDims {
  readonly n: number;
  readonly s: number;
  readonly c: number;
  readonly g: number;
}

function dims(shape: readonly number[], groups: number): GnDims {
  const n = shape[0], c = shape[shape.length - 1];
  let s = 1;
  for (let i = 1; i < shape.length - 1; i++) s *= shape[i];
  return { n, s, c, g: groups };
}

/** Per-group mean and rstd of example n, from per-channel sums in float64. */
function groupStats(
  x: Float32Array,
  d: GnDims,
  n: number,
  eps: number,
  sum: Float64Array,
  sq: Float64Array,
  mean: Float64Array,
  rstd: Float64Array,
): void {
  const { s, c, g } = d;
  sum.fill(0);
  sq.fill(0);
  for (let p = 0, i = n * s * c; p < s; p++, i += c) {
    for (let ch = 0; ch < c; ch++) {
      const v = x[i + ch];
      sum[ch] += v;
      sq[ch] += v * v;
    }
  }
  const cpg = c / g, count = s * cpg;
  for (let gi = 0; gi < g; gi++) {
    let a = 0, b = 0;
    for (let ch = gi * cpg; ch < (gi + 1) * cpg; ch++) {
      a += sum[ch];
      b += sq[ch];
    }
    const m = a / count;
    const v = Math.max(0, b / count - m * m);
    mean[gi] = m;
    rstd[gi] = 1 / Math.sqrt(v + eps);
  }
}

/** y ← [silu](GN(x)·(1 + scale) + shift) with all operands as flat views. */
export function groupNormForward(
  x: Float32Array,
  shape: readonly number[],
  gamma: Float32Array,
  beta: Float32Array,
  scale: Float32Array | undefined,
  shift: Float32Array | undefined,
  attrs: GnAttrs,
  y: Float32Array,
): void {
  const d = dims(shape, attrs.groups);
  const { n: nb, s, c, g } = d;
  const cpg = c / g;
  const sum = new Float64Array(c), sq = new Float64Array(c);
  const mean = new Float64Array(g), rstd = new Float64Array(g);
  const A = new Float32Array(c), B = new Float32Array(c);
  for (let n = 0; n < nb; n++) {
    groupStats(x, d, n, attrs.eps, sum, sq, mean, rstd);
    for (let ch = 0; ch < c; ch++) {
      const gi = Math.floor(ch / cpg);
      const mod = scale ? 1 + scale[n * c + ch] : 1;
      const a = rstd[gi] * gamma[ch];
      A[ch] = a * mod;
      B[ch] = (beta[ch] - mean[gi] * a) * mod + (shift ? shift[n * c + ch] : 0);
    }
    const end = (n + 1) * s * c;
    if (attrs.silu) {
      for (let i = n * s * c; i < end; i += c) {
        for (let ch = 0; ch < c; ch++) {
          const v = x[i + ch] * A[ch] + B[ch];
          y[i + ch] = v / (1 + Math.exp(-v));
        }
      }
    } else {
      for (let i = n * s * c; i < end; i += c) {
        for (let ch = 0; ch < c; ch++) y[i + ch] = x[i + ch] * A[ch] + B[ch];
      }
    }
  }
}

/** Gradients of `groupNormForward`; `dscale`/`dshift` only when modulated. */
export function groupNormBackward(
  dy: Float32Array,
  x: Float32Array,
  shape: readonly number[],
  gamma: Float32Array,
  beta: Float32Array,
  scale: Float32Array | undefined,
  shift: Float32Array | undefined,
  attrs: GnAttrs,
  out: {
    dx: Float32Array;
    dgamma: Float32Array;
    dbeta: Float32Array;
    dscale?: Float32Array;
    dshift?: Float32Array;
  },
): void {
  const d = dims(shape, attrs.groups);
  const { n: nb, s, c, g } = d;
  const cpg = c / g, count = s * cpg;
  const { dx } = out;
  const sum = new Float64Array(c), sq = new Float64Array(c);
  const mean = new Float64Array(g), rstd = new Float64Array(g);
  const A = new Float32Array(c), B = new Float32Array(c);
  const S1 = new Float64Array(c), S2 = new Float64Array(c), T = new Float64Array(c);
  const P = new Float32Array(c), Q = new Float32Array(c), R = new Float32Array(c);
  const dgamma = new Float64Array(c), dbeta = new Float64Array(c);
  for (let n = 0; n < nb; n++) {
    groupStats(x, d, n, attrs.eps, sum, sq, mean, rstd);
    for (let ch = 0; ch < c; ch++) {
      const gi = Math.floor(ch / cpg);
      const mod = scale ? 1 + scale[n * c + ch] : 1;
      const a = rstd[gi] * gamma[ch];
      A[ch] = a * mod;
      B[ch] = (beta[ch] - mean[gi] * a) * mod + (shift ? shift[n * c + ch] : 0);
    }
    // Pass 1: d = ∂L/∂y1 (kept in dx for now), S1 and S2 per channel.
    S1.fill(0);
    S2.fill(0);
    const start = n * s * c, end = (n + 1) * s * c;
    if (attrs.silu) {
      for (let i = start; i < end; i += c) {
        for (let ch = 0; ch < c; ch++) {
          const xv = x[i + ch];
          const v = xv * A[ch] + B[ch];
          const sg = 1 / (1 + Math.exp(-v));
          const dv = dy[i + ch] * sg * (1 + v * (1 - sg));
          dx[i + ch] = dv;
          S1[ch] += dv;
          S2[ch] += dv * xv;
        }
      }
    } else {
      for (let i = start; i < end; i += c) {
        for (let ch = 0; ch < c; ch++) {
          const dv = dy[i + ch];
          dx[i + ch] = dv;
          S1[ch] += dv;
          S2[ch] += dv * x[i + ch];
        }
      }
    }
    // Per-channel and per-group reductions, then dx = P·d + Q·x + R.
    for (let ch = 0; ch < c; ch++) {
      const gi = Math.floor(ch / cpg);
      const mod = scale ? 1 + scale[n * c + ch] : 1;
      T[ch] = rstd[gi] * (S2[ch] - mean[gi] * S1[ch]);
      dbeta[ch] += mod * S1[ch];
      dgamma[ch] += mod * T[ch];
      if (out.dshift) out.dshift[n * c + ch] = S1[ch];
      if (out.dscale) out.dscale[n * c + ch] = gamma[ch] * T[ch] + beta[ch] * S1[ch];
    }
    for (let gi = 0; gi < g; gi++) {
      let ag = 0, bg = 0;
      for (let ch = gi * cpg; ch < (gi + 1) * cpg; ch++) {
        const k = (scale ? 1 + scale[n * c + ch] : 1) * gamma[ch];
        ag += k * S1[ch];
        bg += k * T[ch];
      }
      ag /= count;
      bg /= count;
      const r = rstd[gi];
      for (let ch = gi * cpg; ch < (gi + 1) * cpg; ch++) {
        const k = (scale ? 1 + scale[n * c + ch] : 1) * gamma[ch];
        P[ch] = r * k;
        Q[ch] = -r * r * bg;
        R[ch] = r * r * bg * mean[gi] - r * ag;
      }
    }
    for (let i = start; i < end; i += c) {
      for (let ch = 0; ch < c; ch++) dx[i + ch] = P[ch] * dx[i + ch] + Q[ch] * x[i + ch] + R[ch];
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

function view(b: WasmBackend, t: tf.TensorInfo | undefined): Float32Array | undefined {
  return t ? f32View(b, t) : undefined;
}

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const inputs = args.inputs as Inputs;
  const x = need(inputs.x, "x"), gamma = need(inputs.gamma, "gamma");
  const beta = need(inputs.beta, "beta");
  const backend = asWasmBackend(args.backend);
  const out = backend.makeOutput([...x.shape], "float32");
  groupNormForward(
    f32View(backend, x),
    x.shape,
    f32View(backend, gamma),
    f32View(backend, beta),
    view(backend, inputs.scale),
    view(backend, inputs.shift),
    args.attrs as unknown as GnAttrs,
    f32View(backend, out),
  );
  return out;
}

function gradKernel(args: KernelArgs): tf.TensorInfo[] {
  const inputs = args.inputs as Inputs;
  const x = need(inputs.x, "x"), gamma = need(inputs.gamma, "gamma");
  const beta = need(inputs.beta, "beta"), dy = need(inputs.dy, "dy");
  const { scale, shift } = inputs;
  const backend = asWasmBackend(args.backend);
  const outs = [
    backend.makeOutput([...x.shape], "float32"),
    backend.makeOutput([...gamma.shape], "float32"),
    backend.makeOutput([...beta.shape], "float32"),
  ];
  if (scale && shift) {
    outs.push(backend.makeOutput([...scale.shape], "float32"));
    outs.push(backend.makeOutput([...shift.shape], "float32"));
  }
  const v = outs.map((o) => f32View(backend, o));
  groupNormBackward(
    f32View(backend, dy),
    f32View(backend, x),
    x.shape,
    f32View(backend, gamma),
    f32View(backend, beta),
    view(backend, scale),
    view(backend, shift),
    args.attrs as unknown as GnAttrs,
    { dx: v[0], dgamma: v[1], dbeta: v[2], dscale: v[3], dshift: v[4] },
  );
  return outs;
}

function gradFunc(modulated: boolean): tf.GradFunc {
  return (dy, saved, attrs) => {
    const [x, gamma, beta, scale, shift] = saved;
    let grads: tf.Tensor[] | undefined;
    // One backward kernel yields every input's gradient: run it once, on first demand.
    const get = (i: number) => () => {
      grads ??= tf.engine().runKernel(
        GROUP_NORM_GRAD,
        modulated ? { dy: dy as tf.Tensor, x, gamma, beta, scale, shift } : {
          dy: dy as tf.Tensor,
          x,
          gamma,
          beta,
        },
        attrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor[];
      return grads[i];
    };
    const base = { x: get(0), gamma: get(1), beta: get(2) };
    return modulated ? { ...base, scale: get(3), shift: get(4) } : base;
  };
}

let registered = false;

/** Register the fused GroupNorm kernels and gradients for wasm (idempotent). */
export function registerGroupNormKernels(): void {
  if (registered) return;
  registered = true;
  for (const name of [GROUP_NORM, GROUP_NORM_MOD]) {
    if (!tf.getKernel(name, "wasm")) {
      tf.registerKernel({ kernelName: name, backendName: "wasm", kernelFunc: forwardKernel });
    }
  }
  if (!tf.getKernel(GROUP_NORM_GRAD, "wasm")) {
    tf.registerKernel({ kernelName: GROUP_NORM_GRAD, backendName: "wasm", kernelFunc: gradKernel });
  }
  if (!tf.getGradient(GROUP_NORM)) {
    tf.registerGradient({
      kernelName: GROUP_NORM,
      inputsToSave: ["x", "gamma", "beta"],
      gradFunc: gradFunc(false),
    });
  }
  if (!tf.getGradient(GROUP_NORM_MOD)) {
    tf.registerGradient({
      kernelName: GROUP_NORM_MOD,
      inputsToSave: ["x", "gamma", "beta", "scale", "shift"],
      gradFunc: gradFunc(true),
    });
  }
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
export function groupNormComposed(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: number,
  eps = 1e-5,
): tf.Tensor {
  return tf.tidy(() => {
    const n = x.shape[0], c = x.shape[x.rank - 1];
    const xg = tf.reshape(x, [n, -1, groups, c / groups]); // [N, S, G, C/G]
    const { mean, variance } = tf.moments(xg, [1, 3], true);
    const xn = tf.reshape(tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, eps))), x.shape);
    return tf.add(tf.mul(xn, tf.reshape(gamma, [c])), tf.reshape(beta, [c]));
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
export function groupNorm(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: number,
  eps = 1e-5,
  silu = false,
): tf.Tensor {
  check(x, gamma, beta, groups);
  if (fused(x, gamma, beta)) {
    return tf.engine().runKernel(GROUP_NORM, { x, gamma, beta }, { groups, eps, silu }) as tf.Tensor;
  }
  return tf.tidy(() => {
    const y = groupNormComposed(x, gamma, beta, groups, eps);
    return silu ? tf.mul(y, tf.sigmoid(y)) : y;
  });
}

/**
 * ADM's scale-shift norm: GN(x)·(1 + scale) + shift, scale and shift [N, 1, 1, C]
 * (guided_diffusion/unet.py ResBlock with use_scale_shift_norm). Fused on wasm; `silu` also
 * applies the SiLU that follows it in the ResBlock.
 */
export function groupNormScaleShift(
  x: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  scale: tf.Tensor,
  shift: tf.Tensor,
  groups: number,
  eps = 1e-5,
  silu = false,
): tf.Tensor {
  check(x, gamma, beta, groups);
  checkMod(x, scale, "scale");
  checkMod(x, shift, "shift");
  if (fused(x, gamma, beta, scale, shift)) {
    return tf.engine().runKernel(
      GROUP_NORM_MOD,
      { x, gamma, beta, scale, shift },
      { groups, eps, silu },
    ) as tf.Tensor;
  }
  return tf.tidy(() => {
    const n = x.shape[0], c = x.shape[x.rank - 1];
    const bshape = [n, ...new Array(x.rank - 2).fill(1), c];
    const y = tf.add(
      tf.mul(groupNormComposed(x, gamma, beta, groups, eps), tf.add(tf.reshape(scale, bshape), 1)),
      tf.reshape(shift, bshape),
    );
    return silu ? tf.mul(y, tf.sigmoid(y)) : y;
  });
}
