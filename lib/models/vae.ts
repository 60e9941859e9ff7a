// The KL autoencoder of latent diffusion (Rombach et al. 2022; diffusers' `AutoencoderKL`, the
// `sd-vae-ft-ema` / `sd-vae-ft-mse` weights DiT trains on) as pure functions: `paramShapes(c)` (no
// allocation), `init(c, rng)`, `encode(c, p, x) -> {mean, logvar}`, `decode(c, p, z)`, the
// training loss `vaeLoss` and `latentScale` (the 1/std that DiT applies to latents, 0.18215 for
// SD's autoencoder).
//
// Layout is NHWC. Keys are diffusers' AutoencoderKL state_dict names; values are in tfjs layout:
// conv [kh, kw, in, out], linear [in, out]. Module names, for reading:
//   encoder.conv_in 3×3 → down_blocks.i.resnets.j (ResnetBlock2D) → down_blocks.i.downsamplers.0.conv
//   (3×3 stride 2 after zero padding (0, 1, 0, 1), every level but the last) → mid_block
//   (resnets.0, attentions.0, resnets.1) → conv_norm_out + SiLU → conv_out 3×3 to 2·L → quant_conv 1×1.
//   post_quant_conv 1×1 → decoder.conv_in 3×3 → mid_block → up_blocks.i (levels reversed,
//   layersPerBlock + 1 resnets, upsamplers.0.conv after nearest ×2 on all but the last) →
//   conv_norm_out + SiLU → conv_out 3×3.
//   ResnetBlock2D: norm1 GN → SiLU → conv1 3×3 → norm2 GN → SiLU → conv2 3×3, plus the input
//   (through conv_shortcut 1×1 when the width changes). Every GroupNorm has eps 1e-6.
//   Attention: group_norm, to_q / to_k / to_v / to_out.0 linears, one head over the H·W tokens,
//   added to its input.
// Symbols: N batch, S image side, C image channels, f = 2^(levels − 1) downsampling factor,
// s = S/f latent side, L latent channels.
import * as tf from "@tensorflow/tfjs";
import { normal, type Rng } from "../random.ts";
import { countParams, type Params, type ParamShapes } from "../params.ts";
import {
  conv2d,
  convSpecs,
  groupNorm,
  initSpecs,
  linear,
  linearSpecs,
  normSpecs,
  type ParamSpec,
  qkvAttention,
  specShapes,
  upsampleNearest2,
} from "./nn.ts";

// ---------------------------------------------------------------------------------------------
// Config and presets
// ---------------------------------------------------------------------------------------------

/** Hyper-parameters of `AutoencoderKL`, named after diffusers' constructor arguments. */
export interface VAEConfig {
  /** C: image channels in and out. */
  readonly inChannels: number;
  /** S: side of the square images (the `sample_size`); must divide by f. */
  readonly resolution: number;
  /** Width of each level; f = 2^(levels − 1). Every width must divide by `normGroups`. */
  readonly blockOutChannels: readonly number[];
  /** ResnetBlock2Ds per encoder level; the decoder has one more per level. */
  readonly layersPerBlock: number;
  /** L: channels of the latent. */
  readonly latentChannels: number;
  /** GroupNorm groups (`norm_num_groups`). */
  readonly normGroups: number;
  /** Self-attention between the mid blocks' two resnets (`mid_block_add_attention`). */
  readonly midAttention: boolean;
}

/** The latent scale of SD's autoencoder (DiT: `vae.encode(x).latent_dist.sample() * 0.18215`). */
export const SD_VAE_SCALE = 0.18215;

/** GroupNorm eps of every norm in AutoencoderKL (`resnet_eps`, `eps=1e-6`). */
const GN_EPS = 1e-6;

/** Logvar is clamped to this range (diffusers' DiagonalGaussianDistribution). */
export const LOGVAR_RANGE = [-30, 20] as const;

/** Named configurations. */
// deno-fmt-ignore
export const VAE_CONFIGS = {
  /** CI size: 8 px grayscale, f = 2 (4×4×4 latents); a train step in milliseconds. */
  tiny: {
    inChannels: 1, resolution: 8, blockOutChannels: [8, 16], layersPerBlock: 1, latentChannels: 4,
    normGroups: 4, midAttention: false,
  },
  /**
   * Fashion-MNIST on a 2-core CPU: 28 → 14 → 7, so latents are 7×7×4 (196 values for 784 pixels,
   * the compression of SD's f = 8 autoencoder on 3-channel images is 48×; here it is 4×). The
   * 28×28 level is thin (32 channels) because it holds most of the FLOPs; attention at 7×7 (49
   * tokens) is cheap. GroupNorm in 8 groups of 4–8 channels.
   */
  small: {
    inChannels: 1, resolution: 28, blockOutChannels: [32, 64, 64], layersPerBlock: 1,
    latentChannels: 4, normGroups: 8, midAttention: true,
  },
  /**
   * Stable Diffusion's autoencoder (stabilityai/sd-vae-ft-ema and sd-vae-ft-mse, config.json):
   * 256 px RGB, f = 8, 32×32×4 latents; 83,653,863 parameters.
   */
  "sd-vae": {
    inChannels: 3, resolution: 256, blockOutChannels: [128, 256, 512, 512], layersPerBlock: 2,
    latentChannels: 4, normGroups: 32, midAttention: true,
  },
} as const satisfies Record<string, VAEConfig>;

export type VAEConfigName = keyof typeof VAE_CONFIGS;

/** f: how much the encoder shrinks each side (2^(levels − 1)). */
export function downsamplingFactor(c: VAEConfig): number {
  return 2 ** (c.blockOutChannels.length - 1);
}

/** [s, s, L]: the shape of one image's latent. */
export function latentShape(c: VAEConfig): [number, number, number] {
  const s = c.resolution / downsamplingFactor(c);
  return [s, s, c.latentChannels];
}

/**
 * The config's faults, empty when it is sound (also used to validate configs read from files).
 */
export function configFaults(c: VAEConfig): string[] {
  const faults: string[] = [];
  const posInt = (v: unknown) => Number.isInteger(v) && (v as number) >= 1;
  for (const k of ["inChannels", "resolution", "layersPerBlock", "latentChannels", "normGroups"]) {
    const v = (c as unknown as Record<string, unknown>)[k];
    if (!posInt(v)) faults.push(`${k} ${JSON.stringify(v)} is not a positive integer`);
  }
  if (typeof c.midAttention !== "boolean") faults.push("midAttention is not a boolean");
  const widths = c.blockOutChannels;
  if (!Array.isArray(widths) || widths.length < 1 || !widths.every(posInt)) {
    faults.push(`blockOutChannels ${JSON.stringify(widths)} is not a list of positive integers`);
    return faults;
  }
  if (faults.length > 0) return faults;
  const f = downsamplingFactor(c);
  if (c.resolution % f !== 0) faults.push(`resolution ${c.resolution} does not divide by f = ${f}`);
  for (const w of widths) {
    if (w % c.normGroups !== 0) {
      faults.push(`width ${w} does not divide into ${c.normGroups} groups`);
    }
  }
  return faults;
}

function validate(c: VAEConfig): void {
  const faults = configFaults(c);
  if (faults.length > 0) throw new Error(`vae.ts: bad config: ${faults.join("; ")}`);
}

// ---------------------------------------------------------------------------------------------
// Plan: the module tree as data, built once per config
// ---------------------------------------------------------------------------------------------

type Layer = Readonly<
  | { kind: "conv"; key: string; k: 1 | 3; cin: number; cout: number }
  | { kind: "res"; key: string; cin: number; cout: number }
  | { kind: "attn"; key: string; channels: number }
  | { kind: "down" | "up"; key: string; channels: number }
  | { kind: "normAct"; key: string; channels: number }
>;

interface Plan {
  readonly encoder: readonly Layer[];
  readonly decoder: readonly Layer[];
}

const planCache = new WeakMap<VAEConfig, Plan>();

function midBlock(prefix: string, c: VAEConfig, ch: number): Layer[] {
  const res = (j: number): Layer => ({
    kind: "res",
    key: `${prefix}.resnets.${j}`,
    cin: ch,
    cout: ch,
  });
  const attn: Layer[] = c.midAttention
    ? [{ kind: "attn", key: `${prefix}.attentions.0`, channels: ch }]
    : [];
  return [res(0), ...attn, res(1)];
}

function plan(c: VAEConfig): Plan {
  const cached = planCache.get(c);
  if (cached) return cached;
  validate(c);
  const widths = c.blockOutChannels, levels = widths.length, L = c.latentChannels;
  const top = widths[levels - 1];

  const encoder: Layer[] = [
    { kind: "conv", key: "encoder.conv_in", k: 3, cin: c.inChannels, cout: widths[0] },
  ];
  let ch = widths[0];
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j < c.layersPerBlock; j++) {
      encoder.push({
        kind: "res",
        key: `encoder.down_blocks.${i}.resnets.${j}`,
        cin: ch,
        cout: widths[i],
      });
      ch = widths[i];
    }
    if (i < levels - 1) {
      encoder.push({
        kind: "down",
        key: `encoder.down_blocks.${i}.downsamplers.0.conv`,
        channels: ch,
      });
    }
  }
  encoder.push(
    ...midBlock("encoder.mid_block", c, top),
    { kind: "normAct", key: "encoder.conv_norm_out", channels: top },
    { kind: "conv", key: "encoder.conv_out", k: 3, cin: top, cout: 2 * L }, // mean, logvar
    { kind: "conv", key: "quant_conv", k: 1, cin: 2 * L, cout: 2 * L },
  );

  const decoder: Layer[] = [
    { kind: "conv", key: "post_quant_conv", k: 1, cin: L, cout: L },
    { kind: "conv", key: "decoder.conv_in", k: 3, cin: L, cout: top },
    ...midBlock("decoder.mid_block", c, top),
  ];
  ch = top;
  const reversed = [...widths].reverse();
  for (let i = 0; i < levels; i++) {
    for (let j = 0; j <= c.layersPerBlock; j++) {
      decoder.push({
        kind: "res",
        key: `decoder.up_blocks.${i}.resnets.${j}`,
        cin: ch,
        cout: reversed[i],
      });
      ch = reversed[i];
    }
    if (i < levels - 1) {
      decoder.push({ kind: "up", key: `decoder.up_blocks.${i}.upsamplers.0.conv`, channels: ch });
    }
  }
  decoder.push(
    { kind: "normAct", key: "decoder.conv_norm_out", channels: ch },
    { kind: "conv", key: "decoder.conv_out", k: 3, cin: ch, cout: c.inChannels },
  );
  const p = { encoder, decoder };
  planCache.set(c, p);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

function layerSpecs(l: Layer): [string, ParamSpec][] {
  switch (l.kind) {
    case "conv":
      return convSpecs(l.key, l.k, l.cin, l.cout);
    case "res":
      return [
        ...normSpecs(`${l.key}.norm1`, l.cin),
        ...convSpecs(`${l.key}.conv1`, 3, l.cin, l.cout),
        ...normSpecs(`${l.key}.norm2`, l.cout),
        ...convSpecs(`${l.key}.conv2`, 3, l.cout, l.cout),
        ...(l.cin !== l.cout ? convSpecs(`${l.key}.conv_shortcut`, 1, l.cin, l.cout) : []),
      ];
    case "attn":
      return [
        ...normSpecs(`${l.key}.group_norm`, l.channels),
        ...linearSpecs(`${l.key}.to_q`, l.channels, l.channels),
        ...linearSpecs(`${l.key}.to_k`, l.channels, l.channels),
        ...linearSpecs(`${l.key}.to_v`, l.channels, l.channels),
        ...linearSpecs(`${l.key}.to_out.0`, l.channels, l.channels),
      ];
    case "down":
    case "up":
      return convSpecs(l.key, 3, l.channels, l.channels);
    case "normAct":
      return normSpecs(l.key, l.channels);
  }
}

/**
 * Every parameter's shape and initialiser (PyTorch defaults: AutoencoderKL has no special
 * init), encoder first, then the decoder, in forward order.
 */
export function paramSpecs(c: VAEConfig): Record<string, ParamSpec> {
  const { encoder, decoder } = plan(c);
  return Object.fromEntries([...encoder, ...decoder].flatMap(layerSpecs));
}

/** Parameter shapes from the config alone (nothing allocated): drives init, counts and loading. */
export function paramShapes(c: VAEConfig): ParamShapes {
  return specShapes(paramSpecs(c));
}

/** Number of parameters, from shapes (sd-vae: 83,653,863). */
export function numParams(c: VAEConfig): number {
  return countParams(paramShapes(c));
}

/** Fresh parameters, PyTorch-default init; draws keyed by name. */
export function init(c: VAEConfig, rng: Rng): Params {
  return initSpecs(paramSpecs(c), rng);
}

// Older diffusers releases (the `AttentionBlock` of diffusers < 0.15, and the HF copies of
// sd-vae-ft-ema / ft-mse saved with them) name the mid-block attention query / key / value /
// proj_attn. Loaders map them to the current names.
const LEGACY_ATTENTION: Readonly<Record<string, string>> = {
  query: "to_q",
  key: "to_k",
  value: "to_v",
  proj_attn: "to_out.0",
};

/**
 * The current diffusers name of a state_dict key, mapping the old attention names
 * (`…attentions.0.query.weight` → `…attentions.0.to_q.weight`); other keys are unchanged.
 */
export function referenceKey(key: string): string {
  const m = /^(.+\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$/.exec(
    key,
  );
  return m ? `${m[1]}.${LEGACY_ATTENTION[m[2]]}.${m[3]}` : key;
}

/** The mid-block attention linears, which some files store as 1×1 convs [out, in, 1, 1]. */
export const isAttentionLinear = (key: string): boolean =>
  /\.mid_block\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$/.test(key);

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

function param(p: Params, key: string): tf.Variable {
  const v = p[key];
  if (!v) throw new Error(`vae.ts: parameter "${key}" is missing`);
  return v;
}

const conv = (p: Params, key: string, x: tf.Tensor4D, stride = 1, padding?: number) =>
  conv2d(x, param(p, `${key}.weight`), param(p, `${key}.bias`), { stride, padding });

const norm = (c: VAEConfig, p: Params, key: string, x: tf.Tensor4D, thenSilu: boolean) =>
  groupNorm(x, param(p, `${key}.weight`), param(p, `${key}.bias`), c.normGroups, GN_EPS, thenSilu);

/**
 * The encoder's downsampler: zero-pad one row at the bottom and one column at the right
 * (`F.pad(x, (0, 1, 0, 1))`), then a 3×3 stride-2 convolution without padding. Unlike PyTorch's
 * symmetric `padding=1`, output pixel i sees input pixels 2i..2i+2: [N, H, W, Ch] → [N, H/2, W/2, Ch].
 */
export function downsample(x: tf.Tensor4D, w: tf.Tensor, b: tf.Tensor): tf.Tensor4D {
  return tf.tidy(() => {
    const padded = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]); // [N, H+1, W+1, Ch]
    return conv2d(padded, w, b, { stride: 2, padding: 0 });
  });
}

function resnet(c: VAEConfig, p: Params, l: Extract<Layer, { kind: "res" }>, x: tf.Tensor4D) {
  const k = l.key;
  let h = conv(p, `${k}.conv1`, norm(c, p, `${k}.norm1`, x, true)); // [N, H, W, Cout]
  h = conv(p, `${k}.conv2`, norm(c, p, `${k}.norm2`, h, true)); // dropout 0 omitted
  const skip = l.cin === l.cout ? x : conv(p, `${k}.conv_shortcut`, x);
  return tf.add(skip, h) as tf.Tensor4D;
}

// One head of width Ch over T = H·W tokens: softmax(q·kᵀ/√Ch)·v, then to_out.0, plus the input.
// The three projections run as one matmul with the weights side by side ([q | k | v], the "new"
// order of qkvAttention).
function attention(c: VAEConfig, p: Params, l: Extract<Layer, { kind: "attn" }>, x: tf.Tensor4D) {
  const [n, h, w, ch] = x.shape, k = l.key;
  const hn = tf.reshape(norm(c, p, `${k}.group_norm`, x, false), [n, h * w, ch]); // [N, T, Ch]
  const proj = ["to_q", "to_k", "to_v"];
  const wqkv = tf.concat(proj.map((m) => param(p, `${k}.${m}.weight`)), 1); // [Ch, 3Ch]
  const bqkv = tf.concat(proj.map((m) => param(p, `${k}.${m}.bias`)), 0);
  const qkv = linear(hn, wqkv, bqkv) as tf.Tensor3D; // [N, T, 3Ch]
  const a = qkvAttention(qkv, 1, "new"); // [N, T, Ch]
  const out = linear(a, param(p, `${k}.to_out.0.weight`), param(p, `${k}.to_out.0.bias`));
  return tf.add(x, tf.reshape(out, [n, h, w, ch])) as tf.Tensor4D;
}

function run(c: VAEConfig, p: Params, layers: readonly Layer[], x: tf.Tensor4D): tf.Tensor4D {
  let h = x;
  for (const l of layers) {
    switch (l.kind) {
      case "conv":
        h = conv(p, l.key, h);
        break;
      case "res":
        h = resnet(c, p, l, h);
        break;
      case "attn":
        h = attention(c, p, l, h);
        break;
      case "down":
        h = downsample(h, param(p, `${l.key}.weight`), param(p, `${l.key}.bias`)); // [N, H/2, W/2, Ch]
        break;
      case "up":
        h = conv(p, l.key, upsampleNearest2(h)); // [N, 2H, 2W, Ch]
        break;
      case "normAct":
        h = norm(c, p, l.key, h, true);
        break;
    }
  }
  return h;
}

function checkShape(what: string, x: tf.Tensor, want: readonly number[]): void {
  const [, ...rest] = x.shape;
  if (x.rank !== 4 || rest.some((v, i) => v !== want[i])) {
    throw new Error(`vae.ts: ${what} is [${x.shape}], expected [N, ${want.join(", ")}]`);
  }
}

/** The posterior q(z | x) = N(mean, exp(logvar)), each [N, s, s, L]; the caller owns both. */
export interface Posterior {
  readonly mean: tf.Tensor4D;
  readonly logvar: tf.Tensor4D;
}

/**
 * Encode images x [N, S, S, C] in [−1, 1] to the posterior's mean and logvar, each [N, s, s, L]
 * (logvar clamped to [−30, 20] as diffusers does). One tidy: only the two results survive.
 */
export function encode(c: VAEConfig, p: Params, x: tf.Tensor4D): Posterior {
  checkShape("input", x, [c.resolution, c.resolution, c.inChannels]);
  return tf.tidy(() => {
    const moments = run(c, p, plan(c).encoder, x); // [N, s, s, 2L]
    const [mean, logvar] = tf.split(moments, 2, 3) as tf.Tensor4D[]; // mean first, as torch.chunk
    return { mean, logvar: tf.clipByValue(logvar, LOGVAR_RANGE[0], LOGVAR_RANGE[1]) };
  });
}

/** Decode latents z [N, s, s, L] to images [N, S, S, C] (unbounded; ≈ [−1, 1] once trained). */
export function decode(c: VAEConfig, p: Params, z: tf.Tensor4D): tf.Tensor4D {
  checkShape("latent", z, latentShape(c));
  return tf.tidy(() => run(c, p, plan(c).decoder, z));
}

/** decode(encode(x).mean): the deterministic reconstruction (the posterior's mode). */
export function reconstruct(c: VAEConfig, p: Params, x: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => decode(c, p, encode(c, p, x).mean));
}

/** z = mean + exp(logvar / 2)·ε with ε ~ N(0, I) drawn from `key` (reparameterised). */
export function sampleLatent(mean: tf.Tensor4D, logvar: tf.Tensor4D, key: Rng): tf.Tensor4D {
  return tf.tidy(() => tf.add(mean, tf.mul(tf.exp(tf.mul(logvar, 0.5)), normal(key, mean.shape))));
}

/**
 * KL(q ‖ N(0, I)) per latent element, averaged over all N·s·s·L elements:
 * ½·(μ² + σ² − 1 − log σ²). (diffusers' `kl()` sums over an image instead: multiply by s·s·L.)
 * The σ part, e^v − 1 − v ≥ 0, is clamped at 0 so float rounding near v = 0 cannot make it
 * negative; the result is 0 exactly at the prior (μ = 0, v = 0).
 */
export function klToPrior(mean: tf.Tensor, logvar: tf.Tensor): tf.Scalar {
  return tf.tidy(() => {
    const varTerm = tf.relu(tf.sub(tf.sub(tf.exp(logvar), 1), logvar));
    return tf.mul(tf.mean(tf.add(tf.square(mean), varTerm)), 0.5) as tf.Scalar;
  });
}

/** Options of `vaeLoss`. */
export interface VaeLossOptions {
  /** Weight of the per-element KL against the per-pixel MSE. */
  readonly klWeight: number;
}

/** The loss and its two terms, scalars; the caller owns all three. */
export interface VaeLoss {
  readonly loss: tf.Scalar;
  /** Reconstruction MSE, mean over N·S·S·C pixels. */
  readonly rec: tf.Scalar;
  /** KL to the prior, mean over N·s·s·L latent elements (`klToPrior`). */
  readonly kl: tf.Scalar;
}

/**
 * The training loss on images x [N, S, S, C]: rec + klWeight·kl, the decoder fed z sampled from
 * q(z | x) with `key`. Both terms are per-element means, so the weight does not depend on the
 * image or batch size (LDM's per-image sums with weight w equal these means with
 * w·(s·s·L)/(S·S·C)). Differentiable for `trainStep`.
 */
export function vaeLoss(
  c: VAEConfig,
  p: Params,
  x: tf.Tensor4D,
  key: Rng,
  opts: VaeLossOptions,
): VaeLoss {
  return tf.tidy(() => {
    const { mean, logvar } = encode(c, p, x);
    const z = sampleLatent(mean, logvar, key); // [N, s, s, L]
    const rec = tf.mean(tf.squaredDifference(decode(c, p, z), x)) as tf.Scalar;
    const kl = klToPrior(mean, logvar);
    return { loss: tf.add(rec, tf.mul(kl, opts.klWeight)) as tf.Scalar, rec, kl };
  });
}

/**
 * 1/std of latent means [N, s, s, L] over all their elements (std about their mean), so that
 * scale·mean has unit variance: what DiT's 0.18215 is for SD's autoencoder (`SD_VAE_SCALE`).
 * @throws when the means are constant
 */
export function latentScale(means: tf.Tensor): number {
  const variance = tf.tidy(() => tf.moments(means).variance.dataSync()[0]);
  if (!(variance > 0 && Number.isFinite(variance))) {
    throw new Error(`vae.ts: latent means have variance ${variance}; no scale makes it 1`);
  }
  return 1 / Math.sqrt(variance);
}
