// The Diffusion Transformer of "Scalable Diffusion Models with Transformers" (DiT, models.py,
// facts.md §4) as pure functions: `paramShapes(config)` (no allocation), `init(config, rng)`,
// `apply(config, params, x, t, {y, x0})`, plus `posEmbed` (the fixed 2-D sin-cos table) and
// `features` (block outputs, for feature extraction).
//
// Three conditions (seed 000 §3.2, Figure 5): unconditional (t only), class (t + label
// embedding, `numClasses`), and representation (`encoder`): a ViT f_φ embeds the clean input z0
// as r = f_φ(z0), and r enters twice, as 000 §3.1 and its Figure 2 describe: added into the
// conditioning c that modulates every block and the final layer (`r_embedder`, our reading of
// "combined at the beginning of each of the N blocks"), and added to the final layer's output
// tokens before unpatchify (`r_out`, zero-initialised like adaLN-Zero). φ is part of the params
// (keys `encoder.*`, timm's ViT names) and trains jointly with θ. The paper's code is not
// public: these key names are ours.
//
// Layout is NHWC. Keys are DiT's state_dict names; values are in tfjs layout: linear [in, out],
// the patch-embedding conv [p, p, C, D]. `pos_embed` is in DiT's state_dict (an nn.Parameter with
// requires_grad=False) but it is a fixed function of the config, so it is not a parameter here:
// `posEmbed(config)` computes it, a loader should check it against that and drop it, and counts
// from `numParams` exclude it (DiT's printed counts include it: `numParams + posEmbedSize`).
// Positional keys: t_embedder.mlp.0 / .2 linears (SiLU between), blocks.i.adaLN_modulation.1
// and final_layer.adaLN_modulation.1 linears (SiLU before). Symbols: N batch, S side, C input
// channels, p patch, G = S/p grid side, T = G² tokens, D hidden width, H heads.
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../random.ts";
import * as vit from "./vit.ts";
import type { BlockInfo, Denoiser } from "./denoiser.ts";
import { countParams, type Params, type ParamShapes } from "../params.ts";
import {
  gatedResidual,
  geluTanh,
  initSpecs,
  layerNormModulate,
  linear,
  type ParamSpec,
  qkvAttention,
  silu,
  specShapes,
  timestepEmbedding,
} from "./nn.ts";

// ---------------------------------------------------------------------------------------------
// Config and presets
// ---------------------------------------------------------------------------------------------

/** Hyper-parameters of `DiT`, named after its constructor arguments. */
export interface DiTConfig {
  /** Side S of the square input (latent side 32 for 256 px images). */
  readonly inputSize: number;
  /** Patch side p; S must divide by it. */
  readonly patchSize: number;
  readonly inChannels: number;
  /** Width D; must divide by 4 (the 2-D sin-cos table uses D/4 frequencies per axis). */
  readonly hiddenSize: number;
  readonly depth: number;
  readonly numHeads: number;
  readonly mlpRatio: number;
  /** Label drop rate for classifier-free guidance; > 0 adds the null row to the label table. */
  readonly classDropoutProb: number;
  /** Class-conditional when set; the null (dropped) label id is numClasses. Unconditional otherwise. */
  readonly numClasses?: number;
  /** Output 2·C channels: ε̂, then the variance interpolation v. */
  readonly learnSigma: boolean;
  /**
   * Representation-conditioned when set: the ViT f_φ on the clean input (its input side,
   * channels and patch equal the DiT's). Exclusive with `numClasses`.
   */
  readonly encoder?: vit.ViTConfig;
}

const paper = (depth: number, hiddenSize: number, numHeads: number): DiTConfig => ({
  inputSize: 32,
  patchSize: 2,
  inChannels: 4,
  hiddenSize,
  depth,
  numHeads,
  mlpRatio: 4,
  classDropoutProb: 0.1,
  numClasses: 1000,
  learnSigma: true,
});

/** Named configurations: the paper's /2 sizes on 32×32×4 ImageNet latents, and CPU sizes. */
export const DIT_CONFIGS = {
  /** CI size: an 8×8×4 latent-like input, 16 tokens of width 32, two blocks, 10 classes. */
  tiny: {
    inputSize: 8,
    patchSize: 2,
    inChannels: 4,
    hiddenSize: 32,
    depth: 2,
    numHeads: 2,
    mlpRatio: 4,
    classDropoutProb: 0.1,
    numClasses: 10,
    learnSigma: true,
  },
  /**
   * Fashion-MNIST on a 2-core CPU: 28×28×1 pixels in 2×2 patches (196 tokens), width 128 in 4
   * heads of 32, 6 blocks, class-conditional as in the paper. ~1.9 M params, ~0.8 GFLOP per
   * image forward; a train step costs about 2× the `small` U-Net's per image (bench/models.ts)
   * and needs ~100 MB of wasm heap per image, so batch 32 is the most that fits in 4 GB.
   */
  small: {
    inputSize: 28,
    patchSize: 2,
    inChannels: 1,
    hiddenSize: 128,
    depth: 6,
    numHeads: 4,
    mlpRatio: 4,
    classDropoutProb: 0.1,
    numClasses: 10,
    learnSigma: true,
  },
  /**
   * Fashion-MNIST latents of the `small` autoencoder (lib/models/vae.ts, f = 4): 7×7×4 in 1×1
   * patches (49 tokens), width 128 in 4 heads, 6 blocks. No learned σ: the loss is eq. 2 of
   * seed 000, ‖ε − ε̂‖², the loss its Figure 8 plots.
   */
  "small-latent": {
    inputSize: 7,
    patchSize: 1,
    inChannels: 4,
    hiddenSize: 128,
    depth: 6,
    numHeads: 4,
    mlpRatio: 4,
    classDropoutProb: 0.1,
    numClasses: 10,
    learnSigma: false,
  },
  "DiT-S/2": paper(12, 384, 6),
  "DiT-B/2": paper(12, 768, 12),
  "DiT-L/2": paper(24, 1024, 16),
  "DiT-XL/2": paper(28, 1152, 16),
} as const satisfies Record<string, DiTConfig>;

export type DiTConfigName = keyof typeof DIT_CONFIGS;

function validate(c: DiTConfig): void {
  const fault = (msg: string) => new Error(`dit.ts: bad config: ${msg}`);
  if (c.inputSize % c.patchSize !== 0) {
    throw fault(`inputSize ${c.inputSize} does not divide by patchSize ${c.patchSize}`);
  }
  if (c.hiddenSize % 4 !== 0) throw fault(`hiddenSize ${c.hiddenSize} does not divide by 4`);
  if (c.hiddenSize % c.numHeads !== 0) {
    throw fault(`hiddenSize ${c.hiddenSize} does not divide by ${c.numHeads} heads`);
  }
  if (c.depth < 1) throw fault("depth must be at least 1");
  if (c.numClasses !== undefined && !(c.numClasses >= 1)) {
    throw fault(`numClasses ${c.numClasses} must be at least 1`);
  }
  const e = c.encoder;
  if (e) {
    if (c.numClasses !== undefined) {
      throw fault("a config is class- or representation-conditioned, not both");
    }
    if (e.inputSize !== c.inputSize || e.inChannels !== c.inChannels) {
      throw fault(
        `the encoder reads ${e.inputSize}×${e.inputSize}×${e.inChannels} inputs, the DiT ` +
          `${c.inputSize}×${c.inputSize}×${c.inChannels}`,
      );
    }
  }
}

/** The ViT preset `name` fitted to the DiT's input: its side, channels and patch. */
export function encoderFor(c: DiTConfig, name: string): vit.ViTConfig {
  const base = (vit.VIT_CONFIGS as Record<string, vit.ViTConfig>)[name];
  if (!base) {
    throw new Error(
      `Unknown ViT preset "${name}": expected ${Object.keys(vit.VIT_CONFIGS).join(", ")}`,
    );
  }
  return {
    ...base,
    inputSize: c.inputSize,
    inChannels: c.inChannels,
    patchSize: c.patchSize,
  };
}

/** Prefix of the encoder's parameters. */
export const ENCODER_PREFIX = "encoder.";

/** Channels of the network output: inChannels, doubled with learnSigma. */
export function outputChannels(c: DiTConfig): number {
  return c.inChannels * (c.learnSigma ? 2 : 1);
}

/** Tokens T = (S/p)². */
export function numTokens(c: DiTConfig): number {
  return (c.inputSize / c.patchSize) ** 2;
}

/** Rows of the label table: numClasses, plus the null label when labels can be dropped. */
function labelRows(c: DiTConfig): number {
  return (c.numClasses ?? 0) + (c.classDropoutProb > 0 ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/** Width of the sinusoidal timestep features fed to t_embedder (`frequency_embedding_size`). */
export const TIME_FREQ_DIM = 256;

// xavier_uniform bounds the draw at √(6/(fan_in + fan_out)); nn.ts's uniform spec bounds it at
// 1/√fanIn, so an effective fanIn of (fan_in + fan_out)/6 gives the same distribution.
const xavier = (fanIn: number, fanOut: number) =>
  ({ kind: "uniform", fanIn: (fanIn + fanOut) / 6 }) as const;
const ZEROS = { kind: "zeros" } as const;

function dense(prefix: string, cin: number, cout: number, zero = false): [string, ParamSpec][] {
  return [
    [`${prefix}.weight`, { shape: [cin, cout], init: zero ? ZEROS : xavier(cin, cout) }],
    [`${prefix}.bias`, { shape: [cout], init: ZEROS }],
  ];
}

/** Every parameter's shape and initialiser (`initialize_weights`), in state_dict order. */
export function paramSpecs(c: DiTConfig): Record<string, ParamSpec> {
  validate(c);
  const { patchSize: p, inChannels: ch, hiddenSize: d } = c;
  const mlp = Math.floor(d * c.mlpRatio);
  const n002 = { kind: "normal", std: 0.02 } as const;
  const entries: [string, ParamSpec][] = [
    // Patch conv initialised like a Linear on its [D, C·p·p] view.
    ["x_embedder.proj.weight", { shape: [p, p, ch, d], init: xavier(ch * p * p, d) }],
    ["x_embedder.proj.bias", { shape: [d], init: ZEROS }],
    ["t_embedder.mlp.0.weight", { shape: [TIME_FREQ_DIM, d], init: n002 }],
    ["t_embedder.mlp.0.bias", { shape: [d], init: ZEROS }],
    ["t_embedder.mlp.2.weight", { shape: [d, d], init: n002 }],
    ["t_embedder.mlp.2.bias", { shape: [d], init: ZEROS }],
  ];
  if (c.numClasses !== undefined) {
    entries.push(["y_embedder.embedding_table.weight", { shape: [labelRows(c), d], init: n002 }]);
  }
  for (let i = 0; i < c.depth; i++) {
    const k = `blocks.${i}`;
    entries.push(
      ...dense(`${k}.attn.qkv`, d, 3 * d),
      ...dense(`${k}.attn.proj`, d, d),
      ...dense(`${k}.mlp.fc1`, d, mlp),
      ...dense(`${k}.mlp.fc2`, mlp, d),
      ...dense(`${k}.adaLN_modulation.1`, d, 6 * d, true), // adaLN-Zero: every block starts as identity
    );
  }
  entries.push(
    ...dense("final_layer.linear", d, p * p * outputChannels(c), true), // zero output at init
    ...dense("final_layer.adaLN_modulation.1", d, 2 * d, true),
  );
  if (c.encoder) {
    const re = c.encoder.hiddenSize;
    entries.push(
      ...Object.entries(vit.paramSpecs(c.encoder, ENCODER_PREFIX)),
      ...dense("r_embedder", re, d), // r into the conditioning of every block
      ...dense("r_out", re, numTokens(c) * p * p * outputChannels(c), true), // r onto the output
    );
  }
  return Object.fromEntries(entries);
}

/** Parameter shapes from the config alone (nothing allocated); `pos_embed` is not among them. */
export function paramShapes(c: DiTConfig): ParamShapes {
  return specShapes(paramSpecs(c));
}

/** Trainable parameters, from shapes (DiT-XL/2: 674,834,720; + pos_embed = 675,129,632 as printed by DiT). */
export function numParams(c: DiTConfig): number {
  return countParams(paramShapes(c));
}

/** Size of the fixed `pos_embed` buffer, T·D. */
export function posEmbedSize(c: DiTConfig): number {
  return numTokens(c) * c.hiddenSize;
}

/** Fresh parameters with DiT's init; each draw keyed by (rng, name). */
export function init(c: DiTConfig, rng: Rng): Params {
  return initSpecs(paramSpecs(c), rng);
}

// ---------------------------------------------------------------------------------------------
// Fixed embeddings
// ---------------------------------------------------------------------------------------------

/**
 * The fixed 2-D sin-cos position table (`get_2d_sincos_pos_embed`, from MAE) as [T, D] values,
 * tokens row-major. Channels [0, D/2) encode the column w and [D/2, D) the row h (DiT's meshgrid
 * puts w first); each half is [sin(pos·ω_i), cos(pos·ω_i)] with ω_i = 10000^(−i/(D/4)), i < D/4.
 * Computed in float64 as the reference does, then rounded to float32.
 */
export function posEmbedValues(c: DiTConfig): Float32Array {
  validate(c);
  const g = c.inputSize / c.patchSize, d = c.hiddenSize, q = d / 4;
  const out = new Float32Array(g * g * d);
  for (let h = 0; h < g; h++) {
    for (let w = 0; w < g; w++) {
      const row = (h * g + w) * d;
      for (let i = 0; i < q; i++) {
        const omega = 1 / 10000 ** (i / q);
        out[row + i] = Math.sin(w * omega);
        out[row + q + i] = Math.cos(w * omega);
        out[row + 2 * q + i] = Math.sin(h * omega);
        out[row + 3 * q + i] = Math.cos(h * omega);
      }
    }
  }
  return out;
}

/** The position table as a tensor [1, T, D] (the caller disposes it). */
export function posEmbed(c: DiTConfig): tf.Tensor3D {
  return tf.tensor3d(posEmbedValues(c), [1, numTokens(c), c.hiddenSize]);
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

/** Options of `apply` and `features`. */
export interface ApplyOptions {
  /**
   * Class labels, int32 [N] in 0..numClasses (numClasses = null label); required exactly when
   * class-conditional. Label dropout in training is the caller's (lib/models/mod.ts `denoise`).
   */
  readonly y?: tf.Tensor1D;
  /**
   * The clean input z0 [N, S, S, C] that the encoder embeds as r; required exactly when the
   * config is representation-conditioned.
   */
  readonly x0?: tf.Tensor4D;
}

function param(p: Params, key: string): tf.Variable {
  const v = p[key];
  if (!v) throw new Error(`dit.ts: parameter "${key}" is missing`);
  return v;
}

/** One adaLN-Zero block: x [N, T, D], silu(c) [N, D] → [N, T, D]. */
function block(c: DiTConfig, p: Params, i: number, x: tf.Tensor3D, sc: tf.Tensor2D): tf.Tensor3D {
  // A tidy per block frees its intermediates that the backward pass does not keep.
  return tf.tidy(() => blockBody(c, p, i, x, sc));
}

function blockBody(
  c: DiTConfig,
  p: Params,
  i: number,
  x: tf.Tensor3D,
  sc: tf.Tensor2D,
): tf.Tensor3D {
  const k = `blocks.${i}`;
  const [n, len, d] = x.shape;
  const w = (name: string) => param(p, `${k}.${name}`);
  const mod = linear(sc, w("adaLN_modulation.1.weight"), w("adaLN_modulation.1.bias")); // [N, 6D]
  const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = tf.split(mod, 6, 1);
  const gate = (g: tf.Tensor) => tf.reshape(g, [n, 1, d]) as tf.Tensor3D;

  let h = layerNormModulate(x, shiftMsa, scaleMsa);
  const qkv = linear(h, w("attn.qkv.weight"), w("attn.qkv.bias")) as tf.Tensor3D; // [N, T, 3D]
  h = linear(
    qkvAttention(qkv, c.numHeads, "new"),
    w("attn.proj.weight"),
    w("attn.proj.bias"),
  ) as tf.Tensor3D;
  x = gatedResidual(x, gate(gateMsa), h); // [N, T, D]

  h = layerNormModulate(x, shiftMlp, scaleMlp);
  h = geluTanh(linear(h, w("mlp.fc1.weight"), w("mlp.fc1.bias"))) as tf.Tensor3D; // [N, T, mlp]
  h = linear(h, w("mlp.fc2.weight"), w("mlp.fc2.bias")) as tf.Tensor3D;
  return tf.reshape(gatedResidual(x, gate(gateMlp), h), [n, len, d]);
}

/**
 * [N, S, S, C] → [N, T, p·p·C], tokens row-major and each patch flattened as (kh, kw, c), the
 * order of the conv kernel [p, p, C, D] reshaped to [p·p·C, D]. Rank-4 transposes only.
 */
function patchify(x: tf.Tensor4D, p: number): tf.Tensor3D {
  const [n, s, , ch] = x.shape;
  const g = s / p;
  const rows = tf.reshape(x, [n * g, p, g, p * ch]); // [N·G, p, G, p·C]
  return tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [n, g * g, p * p * ch]);
}

/** [N, T, p·p·C] → [N, S, S, C] (`unpatchify`, in NHWC). */
function unpatchify(x: tf.Tensor3D, p: number, ch: number): tf.Tensor4D {
  const n = x.shape[0];
  const g = Math.round(Math.sqrt(x.shape[1]));
  const rows = tf.reshape(x, [n * g, g, p, p * ch]); // [N·G, G, p, p·C]
  return tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [n, g * p, g * p, ch]);
}

function checkInputs(c: DiTConfig, x: tf.Tensor4D, t: tf.Tensor1D, o: ApplyOptions): void {
  validate(c);
  const [n, hh, ww, ch] = x.shape;
  if (hh !== c.inputSize || ww !== c.inputSize || ch !== c.inChannels) {
    throw new Error(
      `dit.ts: input is [${x.shape}], expected [N, ${c.inputSize}, ${c.inputSize}, ${c.inChannels}]`,
    );
  }
  if (t.shape[0] !== n) throw new Error(`dit.ts: ${t.shape[0]} timesteps for a batch of ${n}`);
  if ((o.y !== undefined) !== (c.numClasses !== undefined)) {
    throw new Error("dit.ts: labels y must be given exactly when the config is class-conditional");
  }
  if (o.y && o.y.shape[0] !== n) {
    throw new Error(`dit.ts: ${o.y.shape[0]} labels for a batch of ${n}`);
  }
  if ((o.x0 !== undefined) !== (c.encoder !== undefined)) {
    throw new Error(
      "dit.ts: the clean input x0 must be given exactly when the config is representation-conditioned",
    );
  }
  if (o.x0 && o.x0.shape.some((v, i) => v !== x.shape[i])) {
    throw new Error(`dit.ts: x0 is [${o.x0.shape}], x_t [${x.shape}]`);
  }
}

/** r = f_φ(z0) [N, D_r], or undefined without an encoder. */
function representation(c: DiTConfig, p: Params, o: ApplyOptions): tf.Tensor2D | undefined {
  return c.encoder && o.x0 ? vit.apply(c.encoder, p, o.x0, ENCODER_PREFIX) : undefined;
}

/** Embedded tokens (patches + positions) and SiLU(c), c = t_emb (+ y_emb or r_emb). */
function embed(
  c: DiTConfig,
  p: Params,
  x: tf.Tensor4D,
  t: tf.Tensor1D,
  o: ApplyOptions,
  r?: tf.Tensor2D,
) {
  const wt = (x2: tf.Tensor, name: string) =>
    linear(x2, param(p, `${name}.weight`), param(p, `${name}.bias`));
  const d = c.hiddenSize, ps = c.patchSize;
  const kernel = tf.reshape(param(p, "x_embedder.proj.weight"), [ps * ps * c.inChannels, d]);
  // A stride-p p×p conv is exactly this matmul on the patches.
  const tokens = linear(patchify(x, ps), kernel, param(p, "x_embedder.proj.bias")); // [N, T, D]
  const h = tf.add(tokens, posEmbed(c)) as tf.Tensor3D;
  let cond = wt(
    silu(wt(timestepEmbedding(t, TIME_FREQ_DIM), "t_embedder.mlp.0")),
    "t_embedder.mlp.2",
  ); // [N, D]
  if (o.y && c.numClasses !== undefined) {
    const y = tf.cast(o.y, "int32") as tf.Tensor1D;
    cond = tf.add(cond, tf.gather(param(p, "y_embedder.embedding_table.weight"), y)); // [N, D]
  }
  if (r) cond = tf.add(cond, wt(r, "r_embedder"));
  return { h, sc: silu(cond) as tf.Tensor2D };
}

/**
 * Run DiT: x [N, S, S, C], t [N] timesteps (int32; raw, not rescaled) → [N, S, S, outputChannels]
 * (ε̂, then v with learnSigma). Runs in one tidy: only the output survives.
 */
export function apply(
  c: DiTConfig,
  p: Params,
  x: tf.Tensor4D,
  t: tf.Tensor1D,
  o: ApplyOptions = {},
): tf.Tensor4D {
  checkInputs(c, x, t, o);
  return tf.tidy(() => {
    const r = representation(c, p, o);
    let { h, sc } = embed(c, p, x, t, o, r);
    for (let i = 0; i < c.depth; i++) h = block(c, p, i, h, sc); // [N, T, D]
    const mod = linear(
      sc,
      param(p, "final_layer.adaLN_modulation.1.weight"),
      param(p, "final_layer.adaLN_modulation.1.bias"),
    );
    const [shift, scale] = tf.split(mod, 2, 1); // shift first here, unlike ADM's scale-shift
    const hn = layerNormModulate(h, shift, scale);
    let out = linear(
      hn,
      param(p, "final_layer.linear.weight"),
      param(p, "final_layer.linear.bias"),
    ) as tf.Tensor3D; // [N, T, p²·C']
    if (r) {
      const fromR = linear(r, param(p, "r_out.weight"), param(p, "r_out.bias"));
      out = tf.add(out, tf.reshape(fromR, out.shape));
    }
    return unpatchify(out, c.patchSize, outputChannels(c));
  });
}

/**
 * Token features after blocks b (1-based, 1..depth; 0 is the embedded input), each [N, T, D];
 * stops after the deepest one asked for. The caller owns the returned tensors.
 */
export function features(
  c: DiTConfig,
  p: Params,
  x: tf.Tensor4D,
  t: tf.Tensor1D,
  blocks: readonly number[],
  o: ApplyOptions = {},
): Map<number, tf.Tensor3D> {
  checkInputs(c, x, t, o);
  for (const b of blocks) {
    if (!Number.isInteger(b) || b < 0 || b > c.depth) {
      throw new Error(`dit.ts: block ${b} is outside 0..${c.depth}`);
    }
  }
  if (blocks.length === 0) return new Map();
  const sorted = [...new Set(blocks)].sort((a, b) => a - b);
  const outs = tf.tidy(() => {
    let { h, sc } = embed(c, p, x, t, o, representation(c, p, o));
    const kept: tf.Tensor3D[] = [];
    if (sorted[0] === 0) kept.push(h);
    for (let i = 0; i < sorted[sorted.length - 1]; i++) {
      h = block(c, p, i, h, sc);
      if (sorted.includes(i + 1)) kept.push(h);
    }
    return kept;
  });
  return new Map(sorted.map((b, i) => [b, outs[i]]));
}

// ---------------------------------------------------------------------------------------------
// The denoiser interface (lib/models/denoiser.ts)
// ---------------------------------------------------------------------------------------------

/** Blocks b = 1..depth: the transformer blocks, each [N, G, G, D] as a grid of tokens. */
export function blockTable(c: DiTConfig): BlockInfo[] {
  const g = c.inputSize / c.patchSize;
  return Array.from({ length: c.depth }, (_, i) => ({
    b: i + 1,
    module: `blocks.${i}`,
    layers: "adaLN+attn+mlp",
    resolution: g,
    channels: c.hiddenSize,
  }));
}

/** The label table keeps PyTorch's [rows, D] layout (a square one must not be transposed). */
export const TORCH_SAME_LAYOUT: readonly string[] = ["y_embedder.embedding_table.weight"];

/** DiT as a `Denoiser`; features are block outputs with the tokens laid out on their G×G grid. */
export const denoiser: Denoiser<DiTConfig> = {
  kind: "dit",
  presets: DIT_CONFIGS,
  paramShapes,
  init,
  inputShape: (c) => [c.inputSize, c.inputSize, c.inChannels],
  learnSigma: (c) => c.learnSigma,
  conditioning: (c) =>
    c.numClasses === undefined
      ? undefined
      : { classes: c.numClasses, dropRate: c.classDropoutProb },
  // Class conditioning replaces a representation path (seed 000 tunes that way).
  conditioned: (c, classes, dropRate) => {
    const { encoder: _r, ...rest } = c;
    return { ...rest, numClasses: classes, classDropoutProb: dropRate };
  },
  represented: (c) => c.encoder !== undefined,
  withEncoder: (c, name) => {
    const { numClasses: _labels, ...rest } = c;
    return { ...rest, encoder: encoderFor(c, name) };
  },
  net: (c, p, xt, t, o = {}) => apply(c, p, xt, t, { y: o.y, x0: o.x0 }),
  features: (c, p, xt, t, blocks, o = {}) => {
    const g = c.inputSize / c.patchSize;
    const tokens = features(c, p, xt, t, blocks, o);
    return new Map(
      [...tokens].map(([b, h]) => {
        const grid = tf.reshape(h, [h.shape[0], g, g, c.hiddenSize]) as tf.Tensor4D;
        h.dispose();
        return [b, grid];
      }),
    );
  },
  blockTable,
  referenceLayout: {
    sameLayout: TORCH_SAME_LAYOUT,
    fixed: (c) => ({ pos_embed: posEmbedValues(c) }),
  },
};
