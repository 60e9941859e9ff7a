// The ADM U-Net of "Diffusion Models Beat GANs on Image Synthesis" (guided_diffusion/unet.py,
// facts.md §1–2) as pure functions: `paramShapes(config)` (no allocation), `init(config, rng)`,
// `apply(config, params, x, t)`, plus `blockTable(config)` for the feature-block numbering of
// the diffusion-classifier papers (b = 1..N over input blocks, middle, output blocks).
//
// Layout is NHWC. Parameter keys are guided-diffusion's state_dict names; values are in tfjs
// layout: conv [kh, kw, in, out], linear [in, out], and the attention `qkv` / `proj_out` 1×1
// conv1d kernels stored as linear [in, out] (PyTorch [out, in, 1], squeezed and transposed).
// Positional keys, for reading: ResBlock in_layers.0 GN, .2 conv3×3; emb_layers.1 linear;
// out_layers.0 GN, .3 conv3×3 (zero-init); skip_connection 1×1 conv. Attention norm, qkv,
// proj_out (zero-init). Downsample `op` (3×3 stride 2), Upsample `conv`. time_embed.0/.2
// linears, out.0 GN, out.2 conv (zero-init). Symbols: N batch, S side, C channels, E = 4·mc.
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../random.ts";
import { countParams, type Params, type ParamShapes } from "../params.ts";
import {
  avgPool2,
  conv2d,
  convSpecs,
  dropout,
  groupNorm,
  groupNormScaleShift,
  initSpecs,
  linear,
  linearSpecs,
  normSpecs,
  type ParamSpec,
  qkvAttention,
  silu,
  specShapes,
  timestepEmbedding,
  upsampleNearest2,
} from "./nn.ts";
import { foldName } from "../random.ts";
import type { BlockInfo, Denoiser } from "./denoiser.ts";

export type { BlockInfo };

// ---------------------------------------------------------------------------------------------
// Config and presets
// ---------------------------------------------------------------------------------------------

/** Hyper-parameters of `UNetModel`, named after guided-diffusion's flags. */
export interface UNetConfig {
  /** Side S of the square input. */
  readonly imageSize: number;
  readonly inChannels: number;
  /** Data channels predicted; the network outputs 2× this with learnSigma. */
  readonly outChannels: number;
  /** Base width mc; level l has mc·channelMult[l] channels. Every width must divide by 32 (GN). */
  readonly modelChannels: number;
  readonly numResBlocks: number;
  /** Resolutions in pixels (the README's `attention_resolutions` flag, e.g. 32,16,8 at 256 px), not ds factors. */
  readonly attentionResolutions: readonly number[];
  readonly dropout: number;
  readonly channelMult: readonly number[];
  /** Class-conditional when set: rows of the label embedding added to the time embedding. */
  readonly numClasses?: number;
  /**
   * Classifier-free-guidance label dropout (DiT's, not a guided-diffusion flag): > 0 makes the
   * last label row the null label, used in place of a label with this probability in training.
   */
  readonly classDropout?: number;
  readonly numHeads: number;
  /** Channels per head; −1 uses numHeads instead. */
  readonly numHeadChannels: number;
  /** Heads in the decoder when numHeadChannels is −1; −1 means numHeads. */
  readonly numHeadsUpsample: number;
  readonly useScaleShiftNorm: boolean;
  /** Resample with (parameter-free) ResBlocks instead of strided / nearest+conv convolutions. */
  readonly resblockUpdown: boolean;
  readonly useNewAttentionOrder: boolean;
  readonly learnSigma: boolean;
}

// Fields every preset shares (ADM's choices): scale-shift norm, ResBlock resampling, legacy order.
const ADM = {
  dropout: 0,
  numHeadsUpsample: -1,
  useScaleShiftNorm: true,
  resblockUpdown: true,
  useNewAttentionOrder: false,
} as const;

/** Named configurations. */
// deno-fmt-ignore
export const UNET_CONFIGS = {
  /** CI size: 16 px grayscale, two levels, attention at 8×8; trains in seconds. */
  tiny: {
    ...ADM, imageSize: 16, inChannels: 1, outChannels: 1, modelChannels: 32, numResBlocks: 1,
    channelMult: [1, 2], attentionResolutions: [8], numHeads: 2, numHeadChannels: -1, learnSigma: false,
  },
  /**
   * Fashion-MNIST pre-training on a 2-core CPU: 28 px native (28 → 14 → 7, no padding), ADM's
   * block design and hybrid loss at widths 32/64/128, one ResBlock per level, attention only at
   * 7×7: 3.2 M params, 0.7 GFLOP per image forward. The cost sits at 28×28, so that level is
   * thin and the parameters live at 7×7 where they are cheap. 64 channels with one block (5.5 M,
   * 1.8 GFLOP) trained 2× slower here; 64 ch × 2 blocks at 32 px (the 7.7 M model PyTorch trains
   * at 9.4 img/s on this machine) costs ~4× the FLOPs. GroupNorm32 at 32 channels normalises
   * each channel alone, as ADM itself would at this width.
   */
  small: {
    ...ADM, imageSize: 28, inChannels: 1, outChannels: 1, modelChannels: 32, numResBlocks: 1,
    channelMult: [1, 2, 4], attentionResolutions: [7], numHeads: 4, numHeadChannels: -1, learnSigma: true,
  },
  /** 256×256_diffusion_uncond.pt (guided-diffusion README flags + defaults): ≈552.8 M params. */
  adm256: {
    ...ADM, imageSize: 256, inChannels: 3, outChannels: 3, modelChannels: 256, numResBlocks: 2,
    channelMult: [1, 1, 2, 2, 4, 4], attentionResolutions: [32, 16, 8], numHeads: 4, numHeadChannels: 64,
    learnSigma: true,
  },
} as const satisfies Record<string, UNetConfig>;

export type UNetConfigName = keyof typeof UNET_CONFIGS;

// ---------------------------------------------------------------------------------------------
// Plan: the module tree as data, built once from a config
// ---------------------------------------------------------------------------------------------

type Resample = "none" | "down" | "up";
type Layer = Readonly<
  | { kind: "stem"; key: string; cin: number; cout: number }
  | { kind: "res"; key: string; cin: number; cout: number; resample: Resample }
  | { kind: "attn"; key: string; channels: number; heads: number }
  | { kind: "downConv" | "upConv"; key: string; channels: number }
>;

interface Block extends BlockInfo {
  readonly plan: readonly Layer[];
}

function validate(c: UNetConfig): void {
  const levels = c.channelMult.length;
  const fault = (msg: string) => new Error(`unet.ts: bad config: ${msg}`);
  if (levels < 1) throw fault("channelMult is empty");
  if (c.imageSize % 2 ** (levels - 1) !== 0) {
    throw fault(`imageSize ${c.imageSize} does not halve ${levels - 1} times`);
  }
  for (const m of c.channelMult) {
    if ((c.modelChannels * m) % 32 !== 0) {
      throw fault(`width ${c.modelChannels * m} is not divisible by 32 groups`);
    }
  }
  if (c.numResBlocks < 1) throw fault("numResBlocks must be at least 1");
  const drop = c.classDropout ?? 0;
  if (!(drop >= 0 && drop < 1)) throw fault(`classDropout ${drop} is outside [0, 1)`);
  if (drop > 0 && c.numClasses === undefined) throw fault("classDropout needs numClasses");
  if (c.numClasses !== undefined && !(c.numClasses >= 1 + (drop > 0 ? 1 : 0))) {
    throw fault(`numClasses ${c.numClasses} is too few labels`);
  }
}

function heads(c: UNetConfig, channels: number, decoder: boolean): number {
  if (c.numHeadChannels !== -1) {
    const hc = c.numHeadChannels;
    if (channels % hc !== 0) {
      throw new Error(`unet.ts: ${channels} channels do not split into heads of ${hc}`);
    }
    return channels / c.numHeadChannels;
  }
  return decoder && c.numHeadsUpsample !== -1 ? c.numHeadsUpsample : c.numHeads;
}

function describe(l: Layer): string {
  switch (l.kind) {
    case "stem":
      return "conv";
    case "attn":
      return "A";
    case "res":
      return l.resample === "none" ? "RB" : l.resample === "down" ? "RB-dn" : "up";
    default:
      return l.kind === "downConv" ? "dn" : "up";
  }
}

const outChannelsOf = (l: Layer): number => ("cout" in l ? l.cout : l.channels);

const planCache = new WeakMap<UNetConfig, readonly Block[]>();

/** The blocks in b order; resolution and width bookkeeping happen here only. */
function blocks(c: UNetConfig): readonly Block[] {
  const cached = planCache.get(c);
  if (cached) return cached;
  validate(c);
  const L = c.channelMult.length;
  const width = (l: number) => c.modelChannels * c.channelMult[l];
  const side = (l: number) => c.imageSize / 2 ** l;
  const res = (key: string, cin: number, cout: number, resample: Resample = "none"): Layer => ({
    kind: "res",
    key,
    cin,
    cout,
    resample,
  });
  // A ResBlock, with attention after it at the resolutions asked for.
  const resAttn = (k: string, l: number, cin: number, decoder: boolean): Layer[] => {
    const ch = width(l);
    const attn: Layer = { kind: "attn", key: `${k}.1`, channels: ch, heads: heads(c, ch, decoder) };
    return c.attentionResolutions.includes(side(l))
      ? [res(`${k}.0`, cin, ch), attn]
      : [res(`${k}.0`, cin, ch)];
  };
  const resample = (key: string, ch: number, dir: "down" | "up"): Layer =>
    c.resblockUpdown
      ? res(key, ch, ch, dir)
      : { kind: dir === "down" ? "downConv" : "upConv", key, channels: ch };
  const make = (module: string, plan: Layer[], resolution: number): Omit<Block, "b"> => ({
    module,
    layers: plan.map(describe).join("+"),
    resolution,
    channels: outChannelsOf(plan[plan.length - 1]),
    plan,
  });

  // Encoder: stem, then per level numResBlocks × [RB (+A)] and a down block except at the end.
  const input: Omit<Block, "b">[] = [];
  const push = (plan: (k: string) => Layer[], resolution: number) => {
    const k = `input_blocks.${input.length}`;
    input.push(make(k, plan(k), resolution));
  };
  push((k) => [{ kind: "stem", key: `${k}.0`, cin: c.inChannels, cout: width(0) }], side(0));
  for (let l = 0; l < L; l++) {
    for (let i = 0; i < c.numResBlocks; i++) {
      const cin = i > 0 || l === 0 ? width(l) : width(l - 1);
      push((k) => resAttn(k, l, cin, false), side(l));
    }
    if (l < L - 1) push((k) => [resample(`${k}.0`, width(l), "down")], side(l + 1));
  }
  const top = width(L - 1);
  const middle = make("middle_block", [
    res("middle_block.0", top, top),
    { kind: "attn", key: "middle_block.1", channels: top, heads: heads(c, top, false) },
    res("middle_block.2", top, top),
  ], side(L - 1));

  // Decoder: levels in reverse, numResBlocks + 1 blocks each, input = [h, skip] concatenated;
  // output block j takes the skip of input block (last − j).
  const output: Omit<Block, "b">[] = [];
  for (let l = L - 1; l >= 0; l--) {
    for (let i = 0; i <= c.numResBlocks; i++) {
      const j = output.length, k = `output_blocks.${j}`;
      const prev = j === 0 ? top : output[j - 1].channels;
      const plan = resAttn(k, l, prev + input[input.length - 1 - j].channels, true);
      const up = l > 0 && i === c.numResBlocks;
      if (up) plan.push(resample(`${k}.${plan.length}`, width(l), "up"));
      output.push(make(k, plan, up ? side(l - 1) : side(l)));
    }
  }
  const all = [...input, middle, ...output].map((blk, i) => ({ ...blk, b: i + 1 }));
  planCache.set(c, all);
  return all;
}

/** The b → module, resolution, channels table (adm256: 37 rows, b = 19 the middle block). */
export function blockTable(c: UNetConfig): BlockInfo[] {
  return blocks(c).map(({ plan: _plan, ...info }) => info);
}

/** Channels of the network output: outChannels, doubled with learnSigma. */
export function outputChannels(c: UNetConfig): number {
  return c.outChannels * (c.learnSigma ? 2 : 1);
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

function layerSpecs(c: UNetConfig, l: Layer, embDim: number): [string, ParamSpec][] {
  switch (l.kind) {
    case "stem":
      return convSpecs(l.key, 3, l.cin, l.cout);
    case "res":
      return [
        ...normSpecs(`${l.key}.in_layers.0`, l.cin),
        ...convSpecs(`${l.key}.in_layers.2`, 3, l.cin, l.cout),
        ...linearSpecs(`${l.key}.emb_layers.1`, embDim, (c.useScaleShiftNorm ? 2 : 1) * l.cout),
        ...normSpecs(`${l.key}.out_layers.0`, l.cout),
        ...convSpecs(`${l.key}.out_layers.3`, 3, l.cout, l.cout, true), // zero-init: block starts as its skip
        ...(l.cin !== l.cout ? convSpecs(`${l.key}.skip_connection`, 1, l.cin, l.cout) : []),
      ];
    case "attn":
      return [
        ...normSpecs(`${l.key}.norm`, l.channels),
        ...linearSpecs(`${l.key}.qkv`, l.channels, 3 * l.channels),
        ...linearSpecs(`${l.key}.proj_out`, l.channels, l.channels, true), // zero-init: identity at start
      ];
    case "downConv":
      return convSpecs(`${l.key}.op`, 3, l.channels, l.channels);
    case "upConv":
      return convSpecs(`${l.key}.conv`, 3, l.channels, l.channels);
  }
}

/** Every parameter's shape and initialiser, in state_dict order. */
export function paramSpecs(c: UNetConfig): Record<string, ParamSpec> {
  const mc = c.modelChannels, embDim = 4 * mc;
  const entries: [string, ParamSpec][] = [
    ...linearSpecs("time_embed.0", mc, embDim),
    ...linearSpecs("time_embed.2", embDim, embDim),
    ...(c.numClasses !== undefined
      ? [
        ["label_emb.weight", {
          shape: [c.numClasses, embDim],
          init: { kind: "normal", std: 1 },
        }] as [string, ParamSpec],
      ]
      : []),
    ...blocks(c).flatMap((blk) => blk.plan.flatMap((l) => layerSpecs(c, l, embDim))),
    ...normSpecs("out.0", mc * c.channelMult[0]),
    ...convSpecs("out.2", 3, mc * c.channelMult[0], outputChannels(c), true), // zero-init: ε̂ = 0 at start
  ];
  return Object.fromEntries(entries);
}

/** Keys whose PyTorch layout equals ours (embedding tables), for io/torch_layout.ts. */
export const TORCH_SAME_LAYOUT: readonly string[] = ["label_emb.weight"];

/** Attention weights stored by PyTorch as 1×1 conv1d kernels [out, in, 1]. */
export const isTorchConv1d = (key: string): boolean => /\.(qkv|proj_out)\.weight$/.test(key);

/** Parameter shapes from the config alone (nothing allocated): drives init, counts and loading. */
export function paramShapes(c: UNetConfig): ParamShapes {
  return specShapes(paramSpecs(c));
}

/** Number of parameters, from shapes (adm256: 552,814,086). */
export function numParams(c: UNetConfig): number {
  return countParams(paramShapes(c));
}

/** Fresh parameters: PyTorch-default init, zero-init where ADM uses it; draws keyed by name. */
export function init(c: UNetConfig, rng: Rng): Params {
  return initSpecs(paramSpecs(c), rng);
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

/** Options of `apply`. */
export interface ApplyOptions {
  /** Block numbers whose outputs to return (see `blockTable`). */
  readonly taps?: readonly number[];
  /** Class labels, int32 [N]; required exactly when the config has numClasses. */
  readonly y?: tf.Tensor1D;
  /** Run the whole network; false stops after the deepest tap. @default true */
  readonly needEps?: boolean;
  /** Dropout masks are drawn from this key when config.dropout > 0 (training); none in eval. */
  readonly dropoutRng?: Rng;
}

/** What `apply` returns; the caller owns (and disposes) every tensor. */
export interface ApplyResult {
  /** Network output [N, S, S, outputChannels]: ε̂, then v with learnSigma. */
  readonly eps?: tf.Tensor4D;
  readonly taps: Map<number, tf.Tensor4D>;
}

interface Ctx {
  readonly c: UNetConfig;
  readonly p: Params;
  readonly semb: tf.Tensor2D; // SiLU(emb), shared by every ResBlock's emb_layers: [N, E]
  readonly rng?: Rng;
}

function param(p: Params, key: string): tf.Variable {
  const v = p[key];
  if (!v) throw new Error(`unet.ts: parameter "${key}" is missing`);
  return v;
}

const w = (ctx: Ctx, key: string): tf.Variable => param(ctx.p, key);

function resBlock(ctx: Ctx, l: Extract<Layer, { kind: "res" }>, x: tf.Tensor4D): tf.Tensor4D {
  const k = l.key;
  const resample = l.resample === "down"
    ? avgPool2
    : l.resample === "up"
    ? upsampleNearest2
    : (t: tf.Tensor4D) => t;
  let h = groupNorm(
    x,
    w(ctx, `${k}.in_layers.0.weight`),
    w(ctx, `${k}.in_layers.0.bias`),
    32,
    1e-5,
    true,
  ); // GN→SiLU [N, S, S, Cin]
  h = conv2d(resample(h), w(ctx, `${k}.in_layers.2.weight`), w(ctx, `${k}.in_layers.2.bias`)); // [N, S', S', Cout]
  const e = linear(ctx.semb, w(ctx, `${k}.emb_layers.1.weight`), w(ctx, `${k}.emb_layers.1.bias`));
  const e4 = tf.reshape(e, [e.shape[0], 1, 1, -1]); // [N, 1, 1, (2·)Cout]
  const [g, b] = [w(ctx, `${k}.out_layers.0.weight`), w(ctx, `${k}.out_layers.0.bias`)];
  if (ctx.c.useScaleShiftNorm) {
    const [scale, shift] = tf.split(e4, 2, 3); // scale first, then shift
    h = groupNormScaleShift(h, g, b, scale, shift, 32, 1e-5, true);
  } else {
    h = groupNorm(tf.add(h, e4), g, b, 32, 1e-5, true);
  }
  h = dropout(h, ctx.c.dropout, ctx.rng && foldName(ctx.rng, k));
  h = conv2d(h, w(ctx, `${k}.out_layers.3.weight`), w(ctx, `${k}.out_layers.3.bias`));
  const xs = resample(x);
  const skip = l.cin === l.cout
    ? xs
    : conv2d(xs, w(ctx, `${k}.skip_connection.weight`), w(ctx, `${k}.skip_connection.bias`));
  return tf.add(skip, h);
}

function attentionBlock(
  ctx: Ctx,
  l: Extract<Layer, { kind: "attn" }>,
  x: tf.Tensor4D,
): tf.Tensor4D {
  const [n, hh, ww, ch] = x.shape;
  const k = l.key;
  const hn = tf.reshape(groupNorm(x, w(ctx, `${k}.norm.weight`), w(ctx, `${k}.norm.bias`)), [
    n,
    hh * ww,
    ch,
  ]);
  const qkv = linear(hn, w(ctx, `${k}.qkv.weight`), w(ctx, `${k}.qkv.bias`)) as tf.Tensor3D; // [N, T, 3C]
  const a = qkvAttention(qkv, l.heads, ctx.c.useNewAttentionOrder ? "new" : "legacy"); // [N, T, C]
  const h = linear(a, w(ctx, `${k}.proj_out.weight`), w(ctx, `${k}.proj_out.bias`));
  return tf.add(x, tf.reshape(h, [n, hh, ww, ch]));
}

function layer(ctx: Ctx, l: Layer, x: tf.Tensor4D): tf.Tensor4D {
  switch (l.kind) {
    case "stem":
      return conv2d(x, w(ctx, `${l.key}.weight`), w(ctx, `${l.key}.bias`));
    case "res":
      return resBlock(ctx, l, x);
    case "attn":
      return attentionBlock(ctx, l, x);
    case "downConv":
      return conv2d(x, w(ctx, `${l.key}.op.weight`), w(ctx, `${l.key}.op.bias`), {
        stride: 2,
        padding: 1,
      });
    case "upConv":
      return conv2d(
        upsampleNearest2(x),
        w(ctx, `${l.key}.conv.weight`),
        w(ctx, `${l.key}.conv.bias`),
      );
  }
}

/**
 * Run the U-Net: x [N, S, S, inChannels], t [N] model timesteps → output and taps. Taps are the
 * outputs of blocks b (after their resample, before `out`); with needEps false the decoder stops
 * after the deepest tap. Runs in one tidy: only returned tensors survive.
 */
export function apply(
  c: UNetConfig,
  p: Params,
  x: tf.Tensor4D,
  t: tf.Tensor1D,
  opts: ApplyOptions = {},
): ApplyResult {
  const all = blocks(c);
  const tapSet = new Set(opts.taps ?? []);
  for (const b of tapSet) {
    if (!Number.isInteger(b) || b < 1 || b > all.length) {
      throw new Error(`unet.ts: tap ${b} is outside 1..${all.length}`);
    }
  }
  const needEps = opts.needEps ?? true;
  if (!needEps && tapSet.size === 0) {
    throw new Error("unet.ts: apply with needEps false needs at least one tap");
  }
  const [n, hh, ww, cin] = x.shape;
  if (hh !== c.imageSize || ww !== c.imageSize || cin !== c.inChannels) {
    throw new Error(
      `unet.ts: input is [${x.shape}], expected [N, ${c.imageSize}, ${c.imageSize}, ${c.inChannels}]`,
    );
  }
  if (t.shape[0] !== n) throw new Error(`unet.ts: ${t.shape[0]} timesteps for a batch of ${n}`);
  if ((opts.y !== undefined) !== (c.numClasses !== undefined)) {
    throw new Error("unet.ts: labels y must be given exactly when the config is class-conditional");
  }
  const last = needEps ? all.length : Math.max(...tapSet);
  const nIn = all.findIndex((blk) => blk.module === "middle_block"); // input blocks before it

  const out = tf.tidy(() => {
    let emb = linear(
      timestepEmbedding(t, c.modelChannels),
      param(p, "time_embed.0.weight"),
      param(p, "time_embed.0.bias"),
    );
    emb = linear(silu(emb), param(p, "time_embed.2.weight"), param(p, "time_embed.2.bias")); // [N, E]
    if (opts.y && c.numClasses !== undefined) {
      // One-hot matmul instead of gather: its gradient needs no UnsortedSegmentSum kernel.
      emb = tf.add(
        emb,
        tf.matMul(tf.oneHot(tf.cast(opts.y, "int32"), c.numClasses), param(p, "label_emb.weight")),
      );
    }
    const ctx: Ctx = { c, p, semb: silu(emb) as tf.Tensor2D, rng: opts.dropoutRng };
    const skips: tf.Tensor4D[] = [];
    const taps: tf.Tensor4D[] = [];
    // Without a gradient tape nothing needs the intermediates: each layer runs in its own tidy
    // and an activation is freed once consumed, so the peak is a few activations plus the skips
    // (adm256 features: 1.32 GiB per image otherwise), not the whole pass.
    const eager = !tf.engine().isTapeOn();
    const release = (a: tf.Tensor4D) => {
      if (eager && a !== x && !taps.includes(a) && !skips.includes(a)) a.dispose();
    };
    let h = x;
    for (const blk of all.slice(0, last)) {
      const i = blk.b - 1;
      if (i > nIn) { // decoder b takes encoder 2·nIn+2−b, its only reader
        const skip = skips[2 * nIn - i];
        const joined = tf.concat([h, skip], 3);
        release(h);
        skips[2 * nIn - i] = x; // a placeholder that release() keeps
        release(skip);
        h = joined;
      }
      for (const l of blk.plan) {
        const next = eager ? tf.tidy(() => layer(ctx, l, h)) : layer(ctx, l, h);
        if (next !== h) release(h); // a layer may hand its input back
        h = next;
      }
      if (i < nIn) skips.push(h);
      if (tapSet.has(blk.b)) taps.push(h);
    }
    const eps = needEps
      ? conv2d(
        groupNorm(h, param(p, "out.0.weight"), param(p, "out.0.bias"), 32, 1e-5, true),
        param(p, "out.2.weight"),
        param(p, "out.2.bias"),
      )
      : undefined;
    return { eps, taps };
  });
  const sorted = [...tapSet].sort((a, b) => a - b);
  return { eps: out.eps, taps: new Map(sorted.map((b, i) => [b, out.taps[i]])) };
}

// ---------------------------------------------------------------------------------------------
// The denoiser interface (lib/models/denoiser.ts)
// ---------------------------------------------------------------------------------------------

/** The U-Net as a `Denoiser`: its output is ε̂ (then v with learnSigma); features are block taps. */
export const denoiser: Denoiser<UNetConfig> = {
  kind: "unet",
  presets: UNET_CONFIGS,
  paramShapes,
  init,
  inputShape: (c) => [c.imageSize, c.imageSize, c.inChannels],
  learnSigma: (c) => c.learnSigma,
  conditioning: (c) => {
    if (c.numClasses === undefined) return undefined;
    const dropRate = c.classDropout ?? 0;
    return { classes: c.numClasses - (dropRate > 0 ? 1 : 0), dropRate };
  },
  conditioned: (c, classes, dropRate) => ({
    ...c,
    numClasses: classes + (dropRate > 0 ? 1 : 0),
    classDropout: dropRate,
  }),
  represented: () => false,
  withEncoder: () => {
    throw new Error("The U-Net has no representation path: representation conditioning is DiT's");
  },
  net: (c, p, xt, t, o = {}) => apply(c, p, xt, t, { y: o.y, dropoutRng: o.dropoutKey }).eps!,
  features: (c, p, xt, t, blocks, o = {}) =>
    apply(c, p, xt, t, { y: o.y, taps: blocks, needEps: false }).taps,
  blockTable,
  referenceLayout: { sameLayout: TORCH_SAME_LAYOUT },
};
