// A Vision Transformer encoder ("An Image is Worth 16x16 Words", timm's VisionTransformer without
// its classifier head) as pure functions: `paramShapes(config)` (no allocation), `init(config,
// rng)`, `apply(config, params, x)` → one vector r per image, and `tokens` (the final-LN tokens).
// The representation-conditioned DiT embeds its clean latent with it, r = f_φ(z0), and trains it
// jointly, so everything here is differentiable and cheap at small sizes.
//
// Layout is NHWC. Keys are timm's state_dict names (`cls_token`, `pos_embed`,
// `patch_embed.proj.weight`, `blocks.i.norm1.weight`, `blocks.i.attn.qkv.weight`, ...), optionally
// under a prefix (the DiT keeps its encoder under "encoder."); values are in tfjs layout: linear
// [in, out], the patch conv [p, p, C, D]. Symbols: N batch, S side, C input channels, p patch,
// G = S/p grid side, T = G² patch tokens, T' = T + 1 with the CLS token (T without), D width,
// H heads.
//
// Pooling: "cls" is timm's default (class_token=True, global_pool="token"): r = norm(x)[:, 0].
// "mean" has no CLS token (class_token=False) and takes the mean of the final-LN patch tokens;
// timm's global_pool="avg" instead pools first and normalises after (fc_norm), so a timm "avg"
// checkpoint does not load into "mean" as is.
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../random.ts";
import { countParams, type Params, type ParamShapes } from "../params.ts";
import {
  geluExact,
  initSpecs,
  layerNorm,
  linear,
  type ParamSpec,
  qkvAttention,
  specShapes,
} from "./nn.ts";

// ---------------------------------------------------------------------------------------------
// Config and presets
// ---------------------------------------------------------------------------------------------

/** Hyper-parameters of the ViT encoder, named after timm's constructor arguments. */
export interface ViTConfig {
  /** Side S of the square input (7 for 7×7×4 latents, 224 for images). */
  readonly inputSize: number;
  /** Patch side p; S must divide by it. */
  readonly patchSize: number;
  readonly inChannels: number;
  /** Width D, also the width of r; must divide by numHeads. */
  readonly hiddenSize: number;
  readonly depth: number;
  readonly numHeads: number;
  /** MLP width ⌊D·mlpRatio⌋ (4 in the paper). */
  readonly mlpRatio: number;
  /** r = the final-LN CLS token ("cls"), or the mean of the final-LN patch tokens ("mean"). */
  readonly pool: "cls" | "mean";
}

const paper = (hiddenSize: number, numHeads: number): ViTConfig => ({
  inputSize: 224,
  patchSize: 16,
  inChannels: 3,
  hiddenSize,
  depth: 12,
  numHeads,
  mlpRatio: 4,
  pool: "cls",
});

/** Named configurations: CI and CPU sizes, and the paper's /16 sizes on 224×224×3 images. */
export const VIT_CONFIGS = {
  /** CI size: a 4×4×4 input in 2×2 patches (4 tokens + CLS) of width 16, one block, 2 heads. */
  tiny: {
    inputSize: 4,
    patchSize: 2,
    inChannels: 4,
    hiddenSize: 16,
    depth: 1,
    numHeads: 2,
    mlpRatio: 4,
    pool: "cls",
  },
  /**
   * 7×7×4 Fashion-MNIST latents on a 2-core CPU: one token per latent pixel (49 + CLS), width
   * 128 in 4 heads of 32, 4 blocks, CLS pooling; 800,512 params. Its blocks cost about 1/6 of
   * the `small` DiT's per image (4 blocks on 50 tokens against 6 on 196).
   */
  small: {
    inputSize: 7,
    patchSize: 1,
    inChannels: 4,
    hiddenSize: 128,
    depth: 4,
    numHeads: 4,
    mlpRatio: 4,
    pool: "cls",
  },
  "ViT-Ti/16": paper(192, 3),
  "ViT-S/16": paper(384, 6),
  "ViT-B/16": paper(768, 12),
} as const satisfies Record<string, ViTConfig>;

export type ViTConfigName = keyof typeof VIT_CONFIGS;

function validate(c: ViTConfig): void {
  const fault = (msg: string) => new Error(`vit.ts: bad config: ${msg}`);
  const positive = (v: number, name: string) => {
    if (!Number.isInteger(v) || v < 1) throw fault(`${name} ${v} must be a positive integer`);
  };
  positive(c.inputSize, "inputSize");
  positive(c.patchSize, "patchSize");
  positive(c.inChannels, "inChannels");
  positive(c.hiddenSize, "hiddenSize");
  positive(c.numHeads, "numHeads");
  if (!Number.isInteger(c.depth) || c.depth < 0) {
    throw fault(`depth ${c.depth} must be a non-negative integer`);
  }
  if (c.inputSize % c.patchSize !== 0) {
    throw fault(`inputSize ${c.inputSize} does not divide by patchSize ${c.patchSize}`);
  }
  if (c.hiddenSize % c.numHeads !== 0) {
    throw fault(`hiddenSize ${c.hiddenSize} does not divide by ${c.numHeads} heads`);
  }
  if (!(Math.floor(c.hiddenSize * c.mlpRatio) >= 1)) {
    throw fault(`mlpRatio ${c.mlpRatio} leaves no MLP width`);
  }
  if (c.pool !== "cls" && c.pool !== "mean") {
    throw fault(`pool "${c.pool}" is not "cls" or "mean"`);
  }
}

/** Patch tokens T = (S/p)². */
function numPatches(c: ViTConfig): number {
  return (c.inputSize / c.patchSize) ** 2;
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

// timm's default init (VisionTransformer.init_weights(mode=""), init_weights_vit_timm):
// - pos_embed: trunc_normal_(std=0.02). timm truncates at the absolute values ±2, i.e. ±100σ, so
//   it is a plain N(0, 0.02²) in float32 and nn.ts's "normal" is the same distribution.
// - cls_token: normal_(std=1e-6), so the CLS token starts as pos_embed[0] (the brief suggested
//   0.02; timm's 1e-6 is kept).
// - every Linear (qkv, proj, fc1, fc2): trunc_normal_(std=0.02) weight as above, zero bias
//   (the "jax" mode's xavier-uniform weights are not used).
// - patch_embed.proj: no special init in this mode, so PyTorch's Conv2d default,
//   U(±1/√fan_in) for weight and bias with fan_in = C·p·p (nn.ts's "uniform").
// - LayerNorms: ones and zeros.
const N002 = { kind: "normal", std: 0.02 } as const;
const ZEROS = { kind: "zeros" } as const;

function dense(key: string, cin: number, cout: number): [string, ParamSpec][] {
  return [
    [`${key}.weight`, { shape: [cin, cout], init: N002 }],
    [`${key}.bias`, { shape: [cout], init: ZEROS }],
  ];
}

function norm(key: string, d: number): [string, ParamSpec][] {
  return [
    [`${key}.weight`, { shape: [d], init: { kind: "ones" } }],
    [`${key}.bias`, { shape: [d], init: ZEROS }],
  ];
}

/**
 * Every parameter's shape and initialiser (timm's default init, see above), in state_dict order,
 * each key prefixed by `prefix`.
 * @param prefix prepended to every key as is (pass "encoder." with its dot) @default ""
 * @throws for an invalid config
 */
export function paramSpecs(c: ViTConfig, prefix = ""): Record<string, ParamSpec> {
  validate(c);
  const { patchSize: p, inChannels: ch, hiddenSize: d } = c;
  const mlp = Math.floor(d * c.mlpRatio);
  const fanIn = ch * p * p;
  const entries: [string, ParamSpec][] = [];
  if (c.pool === "cls") {
    entries.push(["cls_token", { shape: [1, 1, d], init: { kind: "normal", std: 1e-6 } }]);
  }
  entries.push(
    ["pos_embed", { shape: [1, numPatches(c) + (c.pool === "cls" ? 1 : 0), d], init: N002 }],
    ["patch_embed.proj.weight", { shape: [p, p, ch, d], init: { kind: "uniform", fanIn } }],
    ["patch_embed.proj.bias", { shape: [d], init: { kind: "uniform", fanIn } }],
  );
  for (let i = 0; i < c.depth; i++) {
    const k = `blocks.${i}`;
    entries.push(
      ...norm(`${k}.norm1`, d),
      ...dense(`${k}.attn.qkv`, d, 3 * d),
      ...dense(`${k}.attn.proj`, d, d),
      ...norm(`${k}.norm2`, d),
      ...dense(`${k}.mlp.fc1`, d, mlp),
      ...dense(`${k}.mlp.fc2`, mlp, d),
    );
  }
  entries.push(...norm("norm", d));
  return Object.fromEntries(entries.map(([k, s]) => [prefix + k, s]));
}

/** Parameter shapes from the config alone (nothing allocated), keys prefixed by `prefix`. */
export function paramShapes(c: ViTConfig, prefix = ""): ParamShapes {
  return specShapes(paramSpecs(c, prefix));
}

/**
 * Trainable parameters, from shapes: ViT-B/16 85,798,656 (timm's vit_base_patch16_224 prints
 * 86,567,656 with its 1000-class head of 769,000), ViT-S/16 21,665,664, ViT-Ti/16 5,524,416.
 */
export function numParams(c: ViTConfig): number {
  return countParams(paramShapes(c));
}

/** Fresh parameters with timm's default init; each draw keyed by (rng, prefixed name). */
export function init(c: ViTConfig, rng: Rng, prefix = ""): Params {
  return initSpecs(paramSpecs(c, prefix), rng);
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

function param(p: Params, key: string): tf.Variable {
  const v = p[key];
  if (!v) throw new Error(`vit.ts: parameter "${key}" is missing`);
  return v;
}

const LN_EPS = 1e-6; // timm's ViT: partial(nn.LayerNorm, eps=1e-6)

/**
 * [N, S, S, C] → [N, T, p·p·C], tokens row-major and each patch flattened as (kh, kw, c), the
 * order of the conv kernel [p, p, C, D] reshaped to [p·p·C, D] (as dit.ts's `patchify`).
 */
function patchify(x: tf.Tensor4D, p: number): tf.Tensor3D {
  const [n, s, , ch] = x.shape;
  const g = s / p;
  if (p === 1) return tf.reshape(x, [n, g * g, ch]);
  const rows = tf.reshape(x, [n * g, p, g, p * ch]); // [N·G, p, G, p·C]
  return tf.reshape(tf.transpose(rows, [0, 2, 1, 3]), [n, g * g, p * p * ch]);
}

/** One pre-norm block: x += attn(norm1(x)); x += mlp(norm2(x)). x [N, T', D] → [N, T', D]. */
function block(c: ViTConfig, p: Params, key: string, x: tf.Tensor3D): tf.Tensor3D {
  // A tidy per block frees its intermediates that the backward pass does not keep.
  return tf.tidy(() => {
    const w = (name: string) => param(p, `${key}.${name}`);
    const ln = (t: tf.Tensor, name: string) =>
      layerNorm(t, w(`${name}.weight`), w(`${name}.bias`), LN_EPS);
    const fc = (t: tf.Tensor, name: string) => linear(t, w(`${name}.weight`), w(`${name}.bias`));

    const qkv = fc(ln(x, "norm1"), "attn.qkv") as tf.Tensor3D; // [N, T', 3D]
    // timm splits qkv as reshape(N, T', 3, H, D/H): [q | k | v], each head-major, i.e. "new".
    const a = fc(qkvAttention(qkv, c.numHeads, "new"), "attn.proj"); // [N, T', D]
    const h = tf.add(x, a);
    const m = fc(geluExact(fc(ln(h, "norm2"), "mlp.fc1")), "mlp.fc2"); // [N, T', mlp] → [N, T', D]
    return tf.add(h, m) as tf.Tensor3D;
  });
}

function checkInput(c: ViTConfig, x: tf.Tensor4D): void {
  validate(c);
  const [, hh, ww, ch] = x.shape;
  if (x.rank !== 4 || hh !== c.inputSize || ww !== c.inputSize || ch !== c.inChannels) {
    throw new Error(
      `vit.ts: input is [${x.shape}], expected [N, ${c.inputSize}, ${c.inputSize}, ${c.inChannels}]`,
    );
  }
}

/** The token sequence after the last block, before the final norm: [N, T', D]. */
function trunk(c: ViTConfig, p: Params, x: tf.Tensor4D, prefix: string): tf.Tensor3D {
  const k = (name: string) => param(p, prefix + name);
  const { patchSize: ps, hiddenSize: d } = c;
  const n = x.shape[0];
  const kernel = tf.reshape(k("patch_embed.proj.weight"), [ps * ps * c.inChannels, d]);
  // A stride-p p×p conv is exactly this matmul on the patches.
  let h = linear(patchify(x, ps), kernel, k("patch_embed.proj.bias")) as tf.Tensor3D; // [N, T, D]
  if (c.pool === "cls") {
    h = tf.concat([tf.tile(k("cls_token") as tf.Tensor3D, [n, 1, 1]), h], 1); // [N, T + 1, D]
  }
  h = tf.add(h, k("pos_embed")); // [N, T', D]
  for (let i = 0; i < c.depth; i++) h = block(c, p, `${prefix}blocks.${i}`, h);
  return h;
}

const finalNorm = (p: Params, t: tf.Tensor, prefix: string) =>
  layerNorm(t, param(p, `${prefix}norm.weight`), param(p, `${prefix}norm.bias`), LN_EPS);

/**
 * Encode: x [N, S, S, C] (NHWC) → r [N, D], the final-LN CLS token or the mean of the final-LN
 * patch tokens (`config.pool`). Runs in one tidy: only r survives.
 * @param prefix the prefix the parameter keys carry (as given to `init`) @default ""
 * @throws when x is not [N, S, S, C] or a parameter is missing
 * @example
 * const p = init(VIT_CONFIGS.small, rng(0));
 * const r = apply(VIT_CONFIGS.small, p, tf.zeros([2, 7, 7, 4]) as tf.Tensor4D); // [2, 128]
 */
export function apply(c: ViTConfig, p: Params, x: tf.Tensor4D, prefix = ""): tf.Tensor2D {
  checkInput(c, x);
  return tf.tidy(() => {
    const h = trunk(c, p, x, prefix);
    const [n, , d] = h.shape;
    if (c.pool === "cls") {
      // The norm is per token, so normalising only the CLS token gives the same r.
      return finalNorm(p, tf.reshape(tf.slice(h, [0, 0, 0], [n, 1, d]), [n, d]), prefix);
    }
    return tf.mean(finalNorm(p, h, prefix), 1); // [N, D]
  }) as tf.Tensor2D;
}

/**
 * The final-LN tokens [N, T', D]: the CLS token first when pool = "cls", then the T patch
 * tokens row-major. `apply` is their CLS row or their mean. Runs in one tidy.
 * @throws as `apply`
 */
export function tokens(c: ViTConfig, p: Params, x: tf.Tensor4D, prefix = ""): tf.Tensor3D {
  checkInput(c, x);
  return tf.tidy(() => finalNorm(p, trunk(c, p, x, prefix), prefix)) as tf.Tensor3D;
}
