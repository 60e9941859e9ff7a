// Classification heads on frozen diffusion features, as pure functions: `headParamShapes(spec,
// inShape, K)` (no allocation), `initHead(spec, inShape, K, rng)`, `applyHead(spec, params, x)`.
// A feature map f(x0, t, b), already pooled, arrives as x [N, h, w, C] (NHWC) and leaves as
// logits [N, K]. The four heads are those of paper 001 (Fig. 1, appendix A, Tables 7–9) and the
// attention head of paper 002 §3.1 with the diffssl code's details (facts.md §5).
//
// Keys follow the PyTorch modules: linear / MLP `fcs.i` (diffssl ssl_diff/head.py's ModuleList);
// CNN `convs.0`, `convs.1`, `fc`; attention `tokenizer.norm`, `tokenizer.proj` (1×1 conv),
// `cls_token`, `blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `head`. Values
// are in tfjs layout (linear [in, out], conv [kh, kw, in, out]); `tokenizer.norm.*` is [s, s, C]
// where PyTorch's LayerNorm([C, s, s]) holds [C, s, s]. Flattening is NHWC order (h, w, C), so a
// PyTorch `fcs.0` / `fc` weight, which sees (C, h, w), needs its input rows permuted to load.
// Symbols: N batch, h×w×C input map, K classes, D = h·w·C, s token-grid side, W width, L layers.
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../random.ts";
import { countParams, type Params, type ParamShapes, toVariables } from "../params.ts";
import {
  adaptiveAvgPool,
  conv2d,
  convSpecs,
  geluExact,
  initParam,
  layerNorm,
  linear,
  linearSpecs,
  normSpecs,
  type ParamSpec,
  qkvAttention,
} from "./nn.ts";

// ---------------------------------------------------------------------------------------------
// Specs
// ---------------------------------------------------------------------------------------------

/** Kernel side of the CNN head's convolutions: "a 2×2 convolution" (paper 001, appendix A). */
export const CNN_KERNEL = 2;

/** A classification head; every size is a positive integer. */
export type HeadSpec =
  /** Flatten [N, D] → Linear D → K. */
  | { readonly kind: "linear" }
  /** Flatten → (Linear → ReLU) per hidden size → Linear → K (paper 001 Table 7). */
  | { readonly kind: "mlp"; readonly hidden: readonly number[] }
  /**
   * Two blocks of conv k×k ("same") → ReLU → 2×2 max-pool, adaptive average pool to pool×pool,
   * flatten, Linear → K (paper 001 appendix A, Table 8). `channels` are the two convs' outputs.
   * See `cnnForward` for what the paper fixes and what is ours.
   */
  | {
    readonly kind: "cnn";
    readonly channels: readonly [number, number];
    readonly pool: number;
    /** @default CNN_KERNEL (2, the paper's) */
    readonly kernel?: number;
  }
  /**
   * Tokenizer (adaptive pool to s = min(h, w, tokens), LayerNorm over the map, 1×1 conv C → W),
   * a CLS token, L pre-LN transformer blocks, Linear on CLS → K (paper 002 §3.1).
   */
  | {
    readonly kind: "attention";
    readonly width: number;
    readonly layers: number;
    readonly heads: number;
    /** Cap on the token-grid side s (diffssl's pre_pool_size, 16 in the paper). */
    readonly tokens: number;
  };

export type HeadKind = HeadSpec["kind"];

const FORMS = "linear, mlp:H1[,H2...], cnn:C1,C2:P[:k], attention:W:L:H:T";

const isSize = (v: unknown) => typeof v === "number" && Number.isInteger(v) && v > 0;

/** The first fault of a spec, or undefined. */
function specFault(spec: HeadSpec): string | undefined {
  const bad = (name: string, v: unknown) =>
    isSize(v) ? undefined : `${name} ${JSON.stringify(v)} is not a positive integer`;
  switch (spec?.kind) {
    case "linear":
      return undefined;
    case "mlp":
      if (!Array.isArray(spec.hidden) || spec.hidden.length === 0) {
        return "mlp needs at least one hidden size";
      }
      return spec.hidden.map((h, i) => bad(`hidden[${i}]`, h)).find((m) => m);
    case "cnn":
      if (!Array.isArray(spec.channels) || spec.channels.length !== 2) {
        return "cnn needs exactly two channel sizes";
      }
      return bad("channels[0]", spec.channels[0]) ?? bad("channels[1]", spec.channels[1]) ??
        bad("pool", spec.pool) ?? bad("kernel", spec.kernel ?? CNN_KERNEL);
    case "attention":
      return bad("width", spec.width) ?? bad("layers", spec.layers) ?? bad("heads", spec.heads) ??
        bad("tokens", spec.tokens) ??
        (spec.width % spec.heads !== 0
          ? `width ${spec.width} is not divisible by ${spec.heads} heads`
          : undefined);
    default:
      return `unknown kind ${JSON.stringify((spec as { kind?: unknown })?.kind)}`;
  }
}

function validate(spec: HeadSpec, inShape: readonly number[], classes: number): void {
  const fault = specFault(spec);
  if (fault) throw new Error(`heads.ts: bad head spec: ${fault}`);
  if (inShape.length !== 3 || !inShape.every(isSize)) {
    throw new Error(`heads.ts: input shape [${inShape}] is not [h, w, C] of positive integers`);
  }
  if (!isSize(classes)) throw new Error(`heads.ts: classes ${classes} is not a positive integer`);
}

/** Side s of the attention head's token grid: pool down to `tokens`, never up (002 §3.1). */
export function tokenSide(spec: { readonly tokens: number }, inShape: readonly number[]): number {
  return Math.min(inShape[0], inShape[1], spec.tokens);
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

// The attention head's LayerNorm([C, s, s]): one mean and variance per sample, affine [s, s, C].
function mapNormSpecs(prefix: string, shape: number[]): [string, ParamSpec][] {
  return [
    [`${prefix}.weight`, { shape, init: { kind: "ones" } }],
    [`${prefix}.bias`, { shape, init: { kind: "zeros" } }],
  ];
}

function blockSpecs(k: string, w: number): [string, ParamSpec][] {
  return [
    ...normSpecs(`${k}.norm1`, w),
    linearSpecs(`${k}.attn.qkv`, w, 3 * w)[0], // qkv_bias=False: the weight alone
    ...linearSpecs(`${k}.attn.proj`, w, w),
    ...normSpecs(`${k}.norm2`, w),
    ...linearSpecs(`${k}.mlp.fc1`, w, 4 * w),
    ...linearSpecs(`${k}.mlp.fc2`, 4 * w, w),
  ];
}

/** Every parameter's shape and PyTorch-default initialiser, in module order. */
function headSpecs(
  spec: HeadSpec,
  inShape: readonly number[],
  classes: number,
): [string, ParamSpec][] {
  validate(spec, inShape, classes);
  const [h, w, c] = inShape;
  switch (spec.kind) {
    case "linear":
      return linearSpecs("fcs.0", h * w * c, classes);
    case "mlp": {
      const sizes = [h * w * c, ...spec.hidden, classes];
      return sizes.slice(1).flatMap((out, i) => linearSpecs(`fcs.${i}`, sizes[i], out));
    }
    case "cnn": {
      const k = spec.kernel ?? CNN_KERNEL, [c1, c2] = spec.channels;
      return [
        ...convSpecs("convs.0", k, c, c1),
        ...convSpecs("convs.1", k, c1, c2),
        ...linearSpecs("fc", spec.pool * spec.pool * c2, classes),
      ];
    }
    case "attention": {
      const s = tokenSide(spec, inShape), d = spec.width;
      const out: [string, ParamSpec][] = [
        ...mapNormSpecs("tokenizer.norm", [s, s, c]),
        ...convSpecs("tokenizer.proj", 1, c, d),
        ["cls_token", { shape: [1, 1, d], init: { kind: "zeros" } }], // torch.zeros(1, 1, dim)
      ];
      for (let i = 0; i < spec.layers; i++) out.push(...blockSpecs(`blocks.${i}`, d));
      out.push(...linearSpecs("head", d, classes));
      return out;
    }
  }
}

/**
 * Parameter shapes of a head from its spec, input map and class count alone (nothing allocated).
 * @param inShape [h, w, C] of the features the head reads
 * @throws Error for a bad spec, input shape or class count
 */
export function headParamShapes(
  spec: HeadSpec,
  inShape: readonly [number, number, number],
  classes: number,
): ParamShapes {
  return Object.fromEntries(headSpecs(spec, inShape, classes).map(([k, s]) => [k, s.shape]));
}

/**
 * Trainable parameters of a head. In closed form, with D = h·w·C and sizes as in `HeadSpec`:
 * linear D·K + K; MLP Σ (d_i + 1)·d_{i+1} over [D, ...hidden, K]; CNN k²·C·c1 + c1 + k²·c1·c2 +
 * c2 + P²·c2·K + K; attention 2·s²·C + (C + 2)·W + L·(12W² + 10W) + W·K + K.
 * @throws Error as `headParamShapes`
 */
export function headParamCount(
  spec: HeadSpec,
  inShape: readonly [number, number, number],
  classes: number,
): number {
  return countParams(headParamShapes(spec, inShape, classes));
}

/**
 * Fresh parameters with PyTorch's default inits (Linear/Conv U(±1/√fan_in), norms ones/zeros,
 * CLS zeros); each draw keyed by (key, parameter name).
 * @throws Error as `headParamShapes`
 */
export function initHead(
  spec: HeadSpec,
  inShape: readonly [number, number, number],
  classes: number,
  key: Rng,
): Params {
  const values: Record<string, tf.Tensor> = {};
  for (const [name, s] of headSpecs(spec, inShape, classes)) values[name] = initParam(key, name, s);
  return toVariables(values);
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

// 2×2 max-pool, stride 2, over even h, w, as a max over the windows laid out [M, 4, C] (window
// row-major). Hand-written gradient: tfjs-backend-wasm 4.22's MaxPoolGrad sends gradients to the
// wrong cells (checked against the cpu backend), and tf.max's gradient would copy dy to every
// tied maximum, where PyTorch gives it to the first one only, as this does.
const maxPool2Even = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
  const x = args[0] as tf.Tensor4D;
  const [n, h, w, c] = x.shape;
  const windows = tf.tidy(() => {
    const rows = tf.reshape(x, [n * h / 2, 2, w / 2, 2 * c]); // [N·h/2, 2, w/2, 2C]
    return tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [-1, 4, c]); // [M, 4, C]
  });
  (args[1] as tf.GradSaveFunc)([windows]);
  const value = tf.tidy(() => tf.reshape(tf.max(windows, 1), [n, h / 2, w / 2, c]));
  windows.dispose();
  return {
    value,
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
      tf.tidy(() => {
        const [win] = saved;
        const hit = tf.cast(tf.equal(win, tf.max(win, 1, true)), "float32"); // [M, 4, C]
        const first = tf.mul(hit, tf.cast(tf.equal(tf.cumsum(hit, 1), 1), "float32"));
        const dwin = tf.mul(first, tf.reshape(dy, [-1, 1, c]));
        const rows = tf.reshape(dwin, [n * h / 2, w / 2, 2, 2 * c]);
        return tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [n, h, w, c]);
      }),
  };
});

/** PyTorch MaxPool2d(2): floor-crops odd sides; a map under 2×2 is returned as it is. */
function maxPool2(x: tf.Tensor4D): tf.Tensor4D {
  const [n, h, w, c] = x.shape;
  if (h < 2 || w < 2) return x; // a 1-pixel side has no 2×2 window: skip the pool
  const he = h - (h % 2), we = w - (w % 2);
  const even = he === h && we === w ? x : tf.slice(x, [0, 0, 0, 0], [n, he, we, c]);
  return maxPool2Even(even) as tf.Tensor4D;
}

function param(p: Params, key: string): tf.Variable {
  const v = p[key];
  if (!v) throw new Error(`heads.ts: parameter "${key}" is missing`);
  return v;
}

const flatten = (x: tf.Tensor4D) => tf.reshape(x, [x.shape[0], -1]) as tf.Tensor2D; // [N, h·w·C]

function mlpForward(p: Params, x: tf.Tensor4D, layers: number): tf.Tensor {
  let h: tf.Tensor = flatten(x);
  for (let i = 0; i < layers; i++) {
    h = linear(h, param(p, `fcs.${i}.weight`), param(p, `fcs.${i}.bias`));
    if (i < layers - 1) h = tf.relu(h);
  }
  return h; // [N, K]
}

// Paper 001 appendix A: "2 blocks, each with a 2×2 convolution followed by a 2×2 maximum pooling
// operation", then "a 2×2 adaptive average pool", flatten, a linear layer; Table 8 names the
// heads CNN-C-c1-c2. Its counts fit 2×2 kernels with a 1000-class layer (CNN-1k-1k-1k: 12.5 M
// here, "12M"; 3×3 would give 23 M), so k = 2 by default, not 3. The paper names no norm (none
// here, no batch-norm), no activation and no padding, and diffssl has no CNN head (facts.md §5):
// the ReLU after each conv, the "same" padding and skipping the max-pool on a side under 2 (a
// 1×1 map has no 2×2 window) are ours. MaxPool2d(2) floors odd sides, and so does `maxPool2`.
function cnnBlocks(p: Params, x: tf.Tensor4D): [tf.Tensor4D, tf.Tensor4D] {
  const out: tf.Tensor4D[] = [];
  let h = x;
  for (const k of ["convs.0", "convs.1"]) {
    // Even k: tfjs "same" pads the extra row and column at the bottom and right, as PyTorch's
    // padding="same" does; nn.ts `conv2d`'s default padding (k − 1)/2 selects that mode.
    h = tf.relu(conv2d(h, param(p, `${k}.weight`), param(p, `${k}.bias`))); // [N, h, w, c_i]
    h = maxPool2(h); // [N, ⌊h/2⌋, ⌊w/2⌋, c_i]
    out.push(h);
  }
  return [out[0], out[1]];
}

function cnnForward(spec: HeadSpec & { kind: "cnn" }, p: Params, x: tf.Tensor4D): tf.Tensor {
  const h = adaptiveAvgPool(cnnBlocks(p, x)[1], spec.pool); // [N, P, P, c2]
  return linear(flatten(h), param(p, "fc.weight"), param(p, "fc.bias")); // [N, K]
}

/** One pre-LN block (timm's Block, as in diffssl): x [N, T, W] → [N, T, W]. */
function block(p: Params, k: string, heads: number, x: tf.Tensor3D): tf.Tensor3D {
  return tf.tidy(() => {
    const w = (name: string) => param(p, `${k}.${name}`);
    let h = layerNorm(x, w("norm1.weight"), w("norm1.bias"), 1e-5);
    const qkv = linear(h, w("attn.qkv.weight")) as tf.Tensor3D; // [N, T, 3W], no bias
    h = linear(qkvAttention(qkv, heads, "new"), w("attn.proj.weight"), w("attn.proj.bias"));
    const y = tf.add(x, h); // [N, T, W]
    h = layerNorm(y, w("norm2.weight"), w("norm2.bias"), 1e-5);
    h = geluExact(linear(h, w("mlp.fc1.weight"), w("mlp.fc1.bias"))); // [N, T, 4W]
    return tf.add(y, linear(h, w("mlp.fc2.weight"), w("mlp.fc2.bias"))) as tf.Tensor3D;
  });
}

function attentionForward(
  spec: HeadSpec & { kind: "attention" },
  p: Params,
  x: tf.Tensor4D,
): tf.Tensor {
  const [n, , , c] = x.shape;
  const s = tokenSide(spec, x.shape.slice(1)), d = spec.width;
  // Tokenizer: one LayerNorm over all s·s·C values of a sample, then a 1×1 conv as a matmul.
  const pooled = adaptiveAvgPool(x, s); // [N, s, s, C]
  const normed = layerNorm(
    pooled,
    param(p, "tokenizer.norm.weight"),
    param(p, "tokenizer.norm.bias"),
    1e-5,
    [1, 2, 3],
  );
  const proj = tf.reshape(param(p, "tokenizer.proj.weight"), [c, d]);
  const flat = tf.reshape(normed, [n, s * s, c]); // tokens row-major, as torch's flatten(2)
  const tokens = linear(flat, proj, param(p, "tokenizer.proj.bias")); // [N, s², W]
  const cls = tf.tile(param(p, "cls_token"), [n, 1, 1]); // [N, 1, W]
  let h = tf.concat([cls, tokens], 1) as tf.Tensor3D; // [N, 1 + s², W]
  for (let i = 0; i < spec.layers; i++) h = block(p, `blocks.${i}`, spec.heads, h);
  const first = tf.reshape(tf.slice(h, [0, 0, 0], [n, 1, d]), [n, d]); // the CLS token [N, W]
  return linear(first, param(p, "head.weight"), param(p, "head.bias")); // [N, K]; no final LN
}

/** Key of the head's last bias, whose length is the class count K. */
function lastBias(spec: HeadSpec): string {
  switch (spec.kind) {
    case "linear":
      return "fcs.0.bias";
    case "mlp":
      return `fcs.${spec.hidden.length}.bias`;
    case "cnn":
      return "fc.bias";
    case "attention":
      return "head.bias";
  }
}

// The params must be the ones `headParamShapes` gives for this input: otherwise the input's
// [h, w, C] is not the one they were built for.
function checkInput(spec: HeadSpec, p: Params, x: tf.Tensor): void {
  const fault = specFault(spec);
  if (fault) throw new Error(`heads.ts: bad head spec: ${fault}`);
  if (x.rank !== 4) throw new Error(`heads.ts: input is [${x.shape}], expected [N, h, w, C]`);
  const classes = param(p, lastBias(spec)).shape[0];
  const inShape = x.shape.slice(1) as [number, number, number];
  for (const [key, want] of Object.entries(headParamShapes(spec, inShape, classes))) {
    const got = param(p, key).shape;
    if (got.length !== want.length || got.some((v, i) => v !== want[i])) {
      throw new Error(
        `heads.ts: input [${x.shape}] does not fit the head's parameters, built for another ` +
          `input shape: "${key}" is [${got}], this input needs [${want}]`,
      );
    }
  }
}

/**
 * Run a head: x [N, h, w, C] → logits [N, K]. One tidy, differentiable (for tf.variableGrads).
 * @throws Error for a bad spec, a non-4-D input, a missing parameter, or an input whose
 * [h, w, C] differs from the one the parameters were built for
 */
export function applyHead(spec: HeadSpec, params: Params, x: tf.Tensor4D): tf.Tensor2D {
  checkInput(spec, params, x);
  return tf.tidy(() => {
    switch (spec.kind) {
      case "linear":
        return mlpForward(params, x, 1) as tf.Tensor2D;
      case "mlp":
        return mlpForward(params, x, spec.hidden.length + 1) as tf.Tensor2D;
      case "cnn":
        return cnnForward(spec, params, x) as tf.Tensor2D;
      case "attention":
        return attentionForward(spec, params, x) as tf.Tensor2D;
    }
  });
}

/**
 * A CNN head's activations after each of its two conv blocks (conv → ReLU → max-pool), for
 * representation analysis (CKA): x [N, h, w, C] → [N, ⌊h/2⌋, ⌊w/2⌋, c1] and
 * [N, ⌊h/4⌋, ⌊w/4⌋, c2] (sides under 2 are not pooled). The caller owns both.
 * @throws Error as `applyHead`, or for a head that is not a CNN
 */
export function cnnActivations(
  spec: HeadSpec,
  params: Params,
  x: tf.Tensor4D,
): [tf.Tensor4D, tf.Tensor4D] {
  if (spec.kind !== "cnn") throw new Error(`heads.ts: ${spec.kind} head has no conv blocks`);
  checkInput(spec, params, x);
  return tf.tidy(() => cnnBlocks(params, x));
}

// ---------------------------------------------------------------------------------------------
// Text form and matched budgets
// ---------------------------------------------------------------------------------------------

/**
 * A head from its command-line form: `linear`, `mlp:512,256` (hidden sizes), `cnn:64,128:2`
 * (conv channels, pool side; optional `:k` kernel side, default 2), `attention:128:2:4:16`
 * (width:layers:heads:tokens).
 * @throws Error (one line) naming the text, the fault and the accepted forms
 * @example
 * ```ts
 * parseHeadSpec("cnn:64,128:2"); // { kind: "cnn", channels: [64, 128], pool: 2 }
 * ```
 */
export function parseHeadSpec(text: string): HeadSpec {
  const fail = (why: string): never => {
    throw new Error(`heads.ts: bad head "${text}": ${why} (accepted: ${FORMS})`);
  };
  const int = (s: string, what: string) =>
    /^[1-9][0-9]*$/.test(s) ? Number(s) : fail(`${what} "${s}" is not a positive integer`);
  const ints = (s: string, what: string) => s.split(",").map((v) => int(v, what));
  const [kind, ...fields] = text.trim().split(":");
  const arity = (...counts: number[]) => {
    if (!counts.includes(fields.length)) fail(`${kind} takes ${counts.join(" or ")} fields`);
  };
  let spec: HeadSpec;
  switch (kind) {
    case "linear":
      arity(0);
      spec = { kind };
      break;
    case "mlp":
      arity(1);
      spec = { kind, hidden: ints(fields[0], "hidden size") };
      break;
    case "cnn": {
      arity(2, 3);
      const ch = ints(fields[0], "channel count");
      if (ch.length !== 2) fail(`cnn takes two channel counts, got ${ch.length}`);
      spec = { kind, channels: [ch[0], ch[1]], pool: int(fields[1], "pool side") };
      if (fields.length === 3) spec = { ...spec, kernel: int(fields[2], "kernel side") };
      break;
    }
    case "attention": {
      arity(4);
      const [width, layers, heads, tokens] = fields.map((f, i) =>
        int(f, ["width", "layers", "heads", "tokens"][i])
      );
      spec = { kind, width, layers, heads, tokens };
      break;
    }
    default:
      return fail(`unknown kind "${kind}"`);
  }
  const fault = specFault(spec);
  return fault ? fail(fault) : spec;
}

/**
 * The command-line form of a head, the inverse of `parseHeadSpec` (a CNN's kernel appears only
 * when it is not the default 2).
 */
export function describeHead(spec: HeadSpec): string {
  switch (spec.kind) {
    case "linear":
      return "linear";
    case "mlp":
      return `mlp:${spec.hidden.join(",")}`;
    case "cnn": {
      const k = spec.kernel ?? CNN_KERNEL;
      return `cnn:${spec.channels.join(",")}:${spec.pool}${k === CNN_KERNEL ? "" : `:${k}`}`;
    }
    case "attention":
      return `attention:${spec.width}:${spec.layers}:${spec.heads}:${spec.tokens}`;
  }
}

/** What `headForBudget` holds fixed while it scans the one free size. */
export interface BudgetOptions {
  /** MLP hidden layers, all of the scanned width. @default 1 */
  readonly depth?: number;
  /** CNN pool side (paper 001: a 2×2 adaptive pool). @default 2 */
  readonly pool?: number;
  /** CNN kernel side. @default CNN_KERNEL */
  readonly kernel?: number;
  /** Attention blocks (diffssl's default fusion_arc Attention:1024:8:4:2). @default 2 */
  readonly layers?: number;
  /** Attention heads; the width is scanned in multiples of it. @default 8 */
  readonly heads?: number;
  /** Attention token-grid cap (pre_pool_size). @default 16 */
  readonly tokens?: number;
}

/**
 * The head of `kind` whose parameter count is closest to `budget`, for comparisons at matched
 * budgets (paper 001 §4.1 trains its heads "with comparable parameter counts"). Rule: one size
 * x = 1, 2, ... is free and the rest are fixed (`BudgetOptions`): MLP hidden widths [x, ...],
 * CNN channels [x, x], attention width heads·x. The count grows strictly with x, so the
 * search brackets the budget by doubling, bisects, and keeps the closer of the two neighbours
 * (the smaller on a tie). `linear` has no free size and is returned as it is.
 * @throws Error for a non-positive or non-finite budget, or bad shapes or options
 */
export function headForBudget(
  kind: HeadKind,
  inShape: readonly [number, number, number],
  classes: number,
  budget: number,
  opts: BudgetOptions = {},
): HeadSpec {
  if (!(Number.isFinite(budget) && budget > 0)) {
    throw new Error(`heads.ts: budget ${budget} is not a positive number`);
  }
  const heads = opts.heads ?? 8;
  const make = (x: number): HeadSpec => {
    switch (kind) {
      case "linear":
        return { kind };
      case "mlp":
        return { kind, hidden: Array.from({ length: opts.depth ?? 1 }, () => x) };
      case "cnn":
        return {
          kind,
          channels: [x, x],
          pool: opts.pool ?? 2,
          ...(opts.kernel === undefined ? {} : { kernel: opts.kernel }),
        };
      case "attention":
        return {
          kind,
          width: heads * x,
          layers: opts.layers ?? 2,
          heads,
          tokens: opts.tokens ?? 16,
        };
      default:
        throw new Error(`heads.ts: unknown head kind ${JSON.stringify(kind)}`);
    }
  };
  const count = (x: number) => headParamCount(make(x), inShape, classes);
  if (kind === "linear") {
    count(1); // validates the shapes
    return make(1);
  }
  let hi = 1;
  while (count(hi) < budget) {
    if (hi >= 2 ** 30) throw new Error(`heads.ts: no ${kind} head reaches budget ${budget}`);
    hi *= 2;
  }
  let lo = Math.floor(hi / 2); // count(lo) < budget ≤ count(hi), or lo = 0
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (count(mid) < budget) lo = mid;
    else hi = mid;
  }
  return make(lo >= 1 && budget - count(lo) <= count(hi) - budget ? lo : hi);
}
