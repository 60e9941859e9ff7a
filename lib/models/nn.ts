// Shared building blocks for the models, as pure functions of tensors (guided_diffusion/nn.py
// and unet.py, facts.md §1). Layout is NHWC; conv kernels [kh, kw, in, out]; linear weights
// [in, out]. `groupNorm`, `groupNormScaleShift` and `silu` are the hot elementwise paths: keep
// their signatures, since fused kernels are meant to replace their bodies.
import * as tf from "@tensorflow/tfjs";
import { foldName, normal, type Rng, uniform } from "../random.ts";
import * as fused from "../engine/fused/mod.ts";
import * as fusedLn from "../engine/fused/layer_norm.ts";
import { gatedResidualFused } from "../engine/fused/gated.ts";
import { type Params, type ParamShapes, toVariables } from "../params.ts";

// ---------------------------------------------------------------------------------------------
// Dense and convolution
// ---------------------------------------------------------------------------------------------

/** y = x·W + b for x [..., in], W [in, out], b [out] → [..., out]. */
export function linear(x: tf.Tensor, w: tf.Tensor, b?: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const inDim = w.shape[0];
    const lead = x.shape.slice(0, -1);
    const x2 = x.rank === 2 ? x as tf.Tensor2D : tf.reshape(x, [-1, inDim]) as tf.Tensor2D;
    const y = tf.fused.matMul({ a: x2, b: w as tf.Tensor2D, bias: b }); // [M, out]
    return x.rank === 2 ? y : tf.reshape(y, [...lead, -1]);
  });
}

/** Options of `conv2d`. */
export interface ConvOptions {
  /** @default 1 */
  readonly stride?: number;
  /** Symmetric zero padding as in PyTorch's `padding=p`. @default (kernel − 1) / 2 */
  readonly padding?: number;
}

/**
 * 2-D convolution with bias, PyTorch padding semantics: x [N, H, W, Cin], w [kh, kw, Cin, Cout],
 * b [Cout] → [N, H', W', Cout]. Stride 2 with padding 1 pads both sides (tfjs "same" would pad
 * only the bottom/right and shift the grid), so the padding is passed explicitly.
 */
export function conv2d(
  x: tf.Tensor4D,
  w: tf.Tensor,
  b: tf.Tensor | undefined,
  opts: ConvOptions = {},
): tf.Tensor4D {
  const stride = opts.stride ?? 1;
  const k = w.shape[0];
  const p = opts.padding ?? (k - 1) / 2;
  // Stride-1 odd kernels with p = (k − 1)/2 are exactly "same": prefer the named mode there.
  const pad = stride === 1 && 2 * p === k - 1 ? (p === 0 ? "valid" : "same") : p;
  return tf.fused.conv2d({ x, filter: w as tf.Tensor4D, strides: stride, pad, bias: b });
}

// ---------------------------------------------------------------------------------------------
// Normalisation and activations (fusion targets)
// ---------------------------------------------------------------------------------------------

/** SiLU (swish): x·σ(x); a fused kernel on wasm. */
export function silu<T extends tf.Tensor>(x: T): T {
  return fused.silu(x);
}

/**
 * GroupNorm (PyTorch semantics, biased variance): x [N, H, W, C], gamma/beta [C] → [N, H, W, C].
 * Fused on wasm (one pass, and only x kept for the gradient); `thenSilu` applies the SiLU that
 * follows almost every norm in ADM in the same pass.
 * @param groups 32 in ADM (GroupNorm32) @param eps 1e-5 (PyTorch default)
 */
export function groupNorm(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups = 32,
  eps = 1e-5,
  thenSilu = false,
): tf.Tensor4D {
  return fused.groupNorm(x, gamma, beta, groups, eps, thenSilu);
}

/**
 * GN(x)·(1 + scale) + shift, the scale-shift norm of ADM ResBlocks: x [N, H, W, C], gamma/beta
 * [C], scale/shift [N, 1, 1, C] → [N, H, W, C]; `thenSilu` as in `groupNorm`.
 */
export function groupNormScaleShift(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  scale: tf.Tensor,
  shift: tf.Tensor,
  groups = 32,
  eps = 1e-5,
  thenSilu = false,
): tf.Tensor4D {
  return fused.groupNormScaleShift(x, gamma, beta, scale, shift, groups, eps, thenSilu);
}

/**
 * LayerNorm over `axes` (default: the last) with optional affine parameters shaped like those axes.
 * @param eps 1e-5 (PyTorch default; DiT uses 1e-6)
 */
export function layerNorm(
  x: tf.Tensor,
  gamma?: tf.Tensor,
  beta?: tf.Tensor,
  eps = 1e-5,
  axes: number[] = [-1],
): tf.Tensor {
  return tf.tidy(() => {
    const ax = axes.map((a) => (a < 0 ? x.rank + a : a));
    const { mean, variance } = tf.moments(x, ax, true);
    let y = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, eps)));
    if (gamma) y = tf.mul(y, gamma);
    if (beta) y = tf.add(y, beta);
    return y;
  });
}

// x̂ = (x − μ)/√(σ² + ε) over the last axis, and r = 1/√(σ² + ε) [..., 1].
function normalise(x: tf.Tensor, eps: number): { xhat: tf.Tensor; r: tf.Tensor } {
  const { mean, variance } = tf.moments(x, -1, true);
  const r = tf.rsqrt(tf.add(variance, eps));
  return { xhat: tf.mul(tf.sub(x, mean), r), r };
}

const expand = (t: tf.Tensor) => tf.expandDims(t, 1); // [N, D] → [N, 1, D]

// One tape entry keeping only x and scale: the composed ops would keep several [N, T, D] tensors.
function lnModulateWith(eps: number) {
  return tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [x, shift, scale] = args as tf.Tensor[];
    (args[3] as tf.GradSaveFunc)([x, scale]);
    const value = tf.tidy(() =>
      tf.add(tf.mul(normalise(x, eps).xhat, tf.add(expand(scale), 1)), expand(shift))
    );
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [xs, sc] = saved;
          const { xhat, r } = normalise(xs, eps);
          const g = tf.mul(dy, tf.add(expand(sc), 1)); // dL/dx̂
          // dx = r·(g − mean(g) − x̂·mean(g·x̂)): the LayerNorm backward without affine terms.
          const dx = tf.mul(
            r,
            tf.sub(
              tf.sub(g, tf.mean(g, -1, true)),
              tf.mul(xhat, tf.mean(tf.mul(g, xhat), -1, true)),
            ),
          );
          return [dx, tf.sum(dy, 1), tf.sum(tf.mul(dy, xhat), 1)];
        }),
    };
  });
}

const lnModulateCache = new Map<number, ReturnType<typeof lnModulateWith>>();

/**
 * modulate(LN(x), shift, scale) = LN(x)·(1 + scale) + shift (DiT's adaLN): LayerNorm without
 * affine terms over the last axis, x [N, T, D], shift/scale [N, D] broadcast over tokens.
 * @param eps 1e-6 in DiT
 */
export function layerNormModulate(
  x: tf.Tensor3D,
  shift: tf.Tensor,
  scale: tf.Tensor,
  eps = 1e-6,
): tf.Tensor3D {
  const one = fusedLn.layerNormModulateFused(x, shift, scale, eps); // wasm with compiled kernels
  if (one) return one;
  let op = lnModulateCache.get(eps);
  if (!op) lnModulateCache.set(eps, op = lnModulateWith(eps));
  return op(x, shift, scale) as tf.Tensor3D;
}

/**
 * DiT's gated residual x + gate·h: x, h [N, T, D], gate [N, 1, D]. One kernel each way on wasm
 * with the compiled kernels (the same forward bits as the two ops), else tf ops.
 */
export function gatedResidual(x: tf.Tensor3D, gate: tf.Tensor3D, h: tf.Tensor3D): tf.Tensor3D {
  return gatedResidualFused(x, gate, h) ?? tf.add(x, tf.mul(gate, h));
}

const GELU_C = Math.sqrt(2 / Math.PI), GELU_A = 0.044715;

// ½(1 + tanh u) = σ(2u): the sigmoid form, since the wasm Tanh kernel is ~5× slower than
// Sigmoid. Returns σ(z) and dz/dx for z = 2√(2/π)·(x + a·x³).
function geluParts(x: tf.Tensor): { s: tf.Tensor; dz: tf.Tensor } {
  const x2 = tf.square(x);
  const s = tf.sigmoid(tf.mul(2 * GELU_C, tf.mul(x, tf.add(1, tf.mul(GELU_A, x2)))));
  return { s, dz: tf.mul(2 * GELU_C, tf.add(1, tf.mul(3 * GELU_A, x2))) };
}

// One tape entry that saves only x: the composed form would keep ~6 MLP-sized tensors.
const geluTanhOp = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const x = args[0] as tf.Tensor;
  (args[1] as tf.GradSaveFunc)([x]);
  return {
    value: tf.tidy(() => tf.mul(x, geluParts(x).s)),
    // d/dx x·σ(z) = σ(z) + x·σ(z)(1 − σ(z))·z'
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
      tf.tidy(() => {
        const [xs] = saved;
        const { s, dz } = geluParts(xs);
        return tf.mul(dy, tf.add(s, tf.mul(tf.mul(xs, tf.mul(s, tf.sub(1, s))), dz)));
      }),
  };
});

/** GELU, tanh approximation (nn.GELU(approximate="tanh"), DiT's MLP), analytic gradient. */
export function geluTanh<T extends tf.Tensor>(x: T): T {
  // One oneDNN kernel each way on wasm with BLAS on; the composed op elsewhere.
  return fused.fusedGeluTanh(x) ?? geluTanhOp(x) as T;
}

// Φ(x) = ½(1 + erf(x/√2)) and φ(x) = e^(−x²/2)/√(2π).
const geluExactOp = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const x = args[0] as tf.Tensor;
  (args[1] as tf.GradSaveFunc)([x]);
  const cdf = (v: tf.Tensor) => tf.mul(0.5, tf.add(1, tf.erf(tf.mul(v, Math.SQRT1_2))));
  return {
    value: tf.tidy(() => tf.mul(x, cdf(x))),
    // d/dx x·Φ(x) = Φ(x) + x·φ(x)
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
      tf.tidy(() => {
        const [xs] = saved;
        const pdf = tf.mul(tf.exp(tf.mul(tf.square(xs), -0.5)), 1 / Math.sqrt(2 * Math.PI));
        return tf.mul(dy, tf.add(cdf(xs), tf.mul(xs, pdf)));
      }),
  };
});

/** GELU, exact (nn.GELU(), the ViT MLP's): x·Φ(x), analytic gradient. */
export function geluExact<T extends tf.Tensor>(x: T): T {
  return geluExactOp(x) as T;
}

// ---------------------------------------------------------------------------------------------
// Embeddings, attention, resampling
// ---------------------------------------------------------------------------------------------

/**
 * Sinusoidal timestep embedding, cos first (guided_diffusion/nn.py): t [N] → [N, dim] with
 * f_i = exp(−ln(maxPeriod)·i/half), i < half = ⌊dim/2⌋; zero-padded when dim is odd.
 */
export function timestepEmbedding(t: tf.Tensor1D, dim: number, maxPeriod = 10000): tf.Tensor2D {
  return tf.tidy(() => {
    const half = Math.floor(dim / 2);
    const freqs = Float32Array.from(
      { length: half },
      (_, i) => Math.exp((-Math.log(maxPeriod) * i) / half),
    );
    const args = tf.mul(tf.reshape(tf.cast(t, "float32"), [-1, 1]), tf.tensor2d(freqs, [1, half])); // [N, half]
    const parts = [tf.cos(args), tf.sin(args)];
    if (dim % 2) parts.push(tf.zeros([t.shape[0], 1]));
    return tf.concat(parts, 1) as tf.Tensor2D;
  });
}

export { qkvAttention, type QkvOrder } from "../engine/fused/attention.ts";

/** 2×2 average pooling, stride 2: [N, H, W, C] → [N, H/2, W/2, C]. */
export function avgPool2(x: tf.Tensor4D): tf.Tensor4D {
  return tf.avgPool(x, 2, 2, "valid");
}

/**
 * The [k, n] matrix of PyTorch's adaptive average pooling along one axis of length n: output i
 * averages inputs floor(i·n/k) .. ceil((i+1)·n/k) − 1 (windows overlap when k does not divide n).
 */
export function adaptivePoolMatrix(n: number, k: number): Float32Array {
  const m = new Float32Array(k * n);
  for (let i = 0; i < k; i++) {
    const lo = Math.floor((i * n) / k), hi = Math.ceil(((i + 1) * n) / k);
    for (let j = lo; j < hi; j++) m[i * n + j] = 1 / (hi - lo);
  }
  return m;
}

/**
 * Adaptive average pooling to k×k (PyTorch `AdaptiveAvgPool2d(k)`): [N, H, W, C] → [N, k, k, C].
 * Two small matmuls with the pooling matrices, so it is differentiable and exact for any H, W.
 */
export function adaptiveAvgPool(x: tf.Tensor4D, k: number): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  if (h === k && w === k) return tf.clone(x);
  return tf.tidy(() => {
    const ph = tf.tensor2d(adaptivePoolMatrix(h, k), [k, h]);
    const pw = tf.tensor2d(adaptivePoolMatrix(w, k), [k, w]);
    // Rows: [k, H] · [H, N·W·C] after moving H to the front.
    const rows = tf.matMul(ph, tf.reshape(tf.transpose(x, [1, 0, 2, 3]), [h, n * w * c]));
    // Columns: for each (k_row, N), [k, W] · [W, C].
    const byRow = tf.reshape(rows, [k * n, w, c]);
    const cols = tf.matMul(tf.tile(tf.expandDims(pw, 0), [k * n, 1, 1]), byRow); // [k·N, k, C]
    return tf.transpose(tf.reshape(cols, [k, n, k, c]), [1, 0, 2, 3]);
  });
}

/**
 * Nearest-neighbour ×2 upsampling: [N, H, W, C] → [N, 2H, 2W, C] (PyTorch "nearest"). One C
 * kernel each way on wasm (lib/engine/fused/upsample.ts); elsewhere built from reshapes and
 * concats: tfjs's cpu ResizeNearestNeighborGrad is wrong for batches > 1, and concat's gradient
 * (slices) is as fast as the wasm resize kernels.
 */
export function upsampleNearest2(x: tf.Tensor4D): tf.Tensor4D {
  const y = fused.fusedUpsampleNearest2(x);
  if (y) return y;
  return tf.tidy(() => {
    const [n, h, w, c] = x.shape;
    const cols = tf.reshape(x, [n * h, w, 1, c]);
    const wide = tf.reshape(tf.concat([cols, cols], 2), [n, h, 1, 2 * w * c]); // each column twice
    return tf.reshape(tf.concat([wide, wide], 2), [n, 2 * h, 2 * w, c]); // each row twice
  });
}

/**
 * Inverted dropout with its mask drawn from `rng` (rate 0 or no rng: identity, as in eval).
 */
export function dropout<T extends tf.Tensor>(x: T, rate: number, rng?: Rng): T {
  if (!rng || rate <= 0) return x;
  return tf.tidy(() => {
    const keep = tf.cast(tf.greaterEqual(uniform(rng, x.shape), rate), "float32");
    return tf.mul(x, tf.mul(keep, 1 / (1 - rate))) as T;
  });
}

// ---------------------------------------------------------------------------------------------
// Initialisation
// ---------------------------------------------------------------------------------------------

/**
 * How one parameter starts: PyTorch's default for Linear/Conv weights and biases is
 * U(−1/√fan_in, 1/√fan_in) (kaiming_uniform with a = √5); norms start at ones/zeros;
 * nn.Embedding at N(0, 1); ADM zero-initialises some convs.
 */
export type InitSpec =
  | { readonly kind: "uniform"; readonly fanIn: number }
  | { readonly kind: "zeros" }
  | { readonly kind: "ones" }
  | { readonly kind: "normal"; readonly std: number };

/** One parameter's shape and initialiser. */
export interface ParamSpec {
  readonly shape: readonly number[];
  readonly init: InitSpec;
}

/**
 * The initial value of parameter `name`; random draws depend only on (rng, name), so adding
 * or removing other parameters never changes this one.
 */
export function initParam(rng: Rng, name: string, spec: ParamSpec): tf.Tensor {
  const shape = [...spec.shape];
  const init = spec.init;
  switch (init.kind) {
    case "zeros":
      return tf.zeros(shape);
    case "ones":
      return tf.ones(shape);
    case "normal":
      return tf.tidy(() => tf.mul(normal(foldName(rng, name), shape), init.std));
    case "uniform": {
      const bound = 1 / Math.sqrt(init.fanIn);
      return uniform(foldName(rng, name), shape, -bound, bound);
    }
  }
}

/** The shapes of a model's parameter specs (nothing allocated). */
export function specShapes(specs: Readonly<Record<string, ParamSpec>>): ParamShapes {
  return Object.fromEntries(Object.entries(specs).map(([k, s]) => [k, s.shape]));
}

/** Fresh variables for a model's parameter specs, each draw keyed by (rng, name). */
export function initSpecs(specs: Readonly<Record<string, ParamSpec>>, rng: Rng): Params {
  const values: Record<string, tf.Tensor> = {};
  for (const [name, spec] of Object.entries(specs)) values[name] = initParam(rng, name, spec);
  return toVariables(values);
}

/** Specs of a conv (weight [k, k, in, out], bias [out]) under `prefix`, PyTorch-default init. */
export function convSpecs(
  prefix: string,
  k: number,
  cin: number,
  cout: number,
  zero = false,
): [string, ParamSpec][] {
  const init: InitSpec = zero ? { kind: "zeros" } : { kind: "uniform", fanIn: cin * k * k };
  return [[`${prefix}.weight`, { shape: [k, k, cin, cout], init }], [`${prefix}.bias`, {
    shape: [cout],
    init,
  }]];
}

/** Specs of a linear layer (weight [in, out], bias [out]) under `prefix`. */
export function linearSpecs(
  prefix: string,
  cin: number,
  cout: number,
  zero = false,
): [string, ParamSpec][] {
  const init: InitSpec = zero ? { kind: "zeros" } : { kind: "uniform", fanIn: cin };
  return [[`${prefix}.weight`, { shape: [cin, cout], init }], [`${prefix}.bias`, {
    shape: [cout],
    init,
  }]];
}

/** Specs of an affine norm (weight ones, bias zeros, both [c]) under `prefix`. */
export function normSpecs(prefix: string, c: number): [string, ParamSpec][] {
  return [[`${prefix}.weight`, { shape: [c], init: { kind: "ones" } }], [`${prefix}.bias`, {
    shape: [c],
    init: { kind: "zeros" },
  }]];
}
