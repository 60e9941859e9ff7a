// A CPU-sized ResNet ("Deep Residual Learning for Image Recognition", He et al. 2016) for seed
// 000 Table 4's supervised baseline, as pure functions: `paramShapes(config)` (no allocation),
// `init(config, rng)`, `apply(config, params, x)` → logits, `features` → the pooled vector.
// The paper's baseline is a ResNet-50 on 256×256 CT slices; this is the CIFAR form of §4.2 of He
// et al. (a 3×3 stem without max-pool, BasicBlocks in stages of 16/32/64 channels, stride 2 at
// the start of each later stage, global average pool, one linear layer) sized for 28×28 images.
//
// Normalisation: GroupNorm (Wu & He 2018) in place of BatchNorm. It has no running statistics,
// so `apply` is the same function in training and evaluation, one image's output does not depend
// on the others of its batch, and the params stay one flat record of trainable tensors; it uses
// the project's fused GroupNorm kernel on wasm. `groups` must divide every width.
//
// Keys are torchvision's resnet state_dict names with `norm_layer=GroupNorm` (which keeps the
// `bn` names): `conv1.weight`, `bn1.{weight,bias}`, `layer{s}.{b}.conv1.weight`,
// `layer{s}.{b}.bn1.*`, `layer{s}.{b}.conv2.weight`, `layer{s}.{b}.bn2.*`,
// `layer{s}.{b}.downsample.0.weight` (1×1 conv), `layer{s}.{b}.downsample.1.*` (its norm),
// `fc.{weight,bias}`; s = 1.., b = 0... Convolutions have no bias (a norm follows each), as in
// torchvision. Layout is NHWC, conv [k, k, in, out], linear [in, out].
// Symbols: N batch, S input side, C input channels, W_s stage widths, K classes.
import * as tf from "@tensorflow/tfjs";
import type { Rng } from "../random.ts";
import { countParams, type Params, type ParamShapes } from "../params.ts";
import { conv2d, groupNorm, initSpecs, linear, type ParamSpec, specShapes } from "./nn.ts";

// ---------------------------------------------------------------------------------------------
// Config and presets
// ---------------------------------------------------------------------------------------------

export interface ResNetConfig {
  readonly inChannels: number;
  /** Channels W_s of each stage; stage s > 1 halves the side (stride 2). */
  readonly widths: readonly number[];
  /** BasicBlocks per stage (He et al. §4.2: n per stage, depth 6n + 2). */
  readonly blocks: readonly number[];
  /** GroupNorm groups; must divide every width. */
  readonly groups: number;
  readonly numClasses: number;
}

/** Named sizes for 28×28 gray images and 10 classes (override inChannels, numClasses). */
export const RESNET_CONFIGS = {
  /** CI size: one block per stage of 4/8/8 channels. */
  tiny: { inChannels: 1, widths: [4, 8, 8], blocks: [1, 1, 1], groups: 2, numClasses: 10 },
  /** ResNet-14 (n = 2), 16/32/64 channels: 174,970 params; the default baseline on a CPU. */
  "resnet-14": {
    inChannels: 1,
    widths: [16, 32, 64],
    blocks: [2, 2, 2],
    groups: 8,
    numClasses: 10,
  },
  /** ResNet-20 (n = 3), He et al.'s smallest CIFAR net: 272,186 params (He et al.: 0.27 M). */
  "resnet-20": {
    inChannels: 1,
    widths: [16, 32, 64],
    blocks: [3, 3, 3],
    groups: 8,
    numClasses: 10,
  },
} as const satisfies Record<string, ResNetConfig>;

export type ResNetConfigName = keyof typeof RESNET_CONFIGS;

function validate(c: ResNetConfig): void {
  const fault = (msg: string) => new Error(`resnet.ts: bad config: ${msg}`);
  const positive = (v: number, name: string) => {
    if (!(Number.isInteger(v) && v >= 1)) throw fault(`${name} ${v} must be a positive integer`);
  };
  positive(c.inChannels, "inChannels");
  positive(c.groups, "groups");
  positive(c.numClasses, "numClasses");
  if (c.widths.length === 0 || c.widths.length !== c.blocks.length) {
    throw fault(`${c.widths.length} widths for ${c.blocks.length} stages (need one per stage)`);
  }
  c.widths.forEach((w, i) => {
    positive(w, `widths[${i}]`);
    if (w % c.groups !== 0) throw fault(`width ${w} does not divide by ${c.groups} groups`);
  });
  c.blocks.forEach((b, i) => positive(b, `blocks[${i}]`));
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

// torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu") for every conv, i.e.
// N(0, 2 / (k²·out)); norms ones and zeros; fc PyTorch's Linear default U(±1/√in) (torchvision
// leaves it as is). zero_init_residual is off, torchvision's default.
function convSpec(k: number, cin: number, cout: number): ParamSpec {
  return { shape: [k, k, cin, cout], init: { kind: "normal", std: Math.sqrt(2 / (k * k * cout)) } };
}

function normEntries(key: string, c: number): [string, ParamSpec][] {
  return [
    [`${key}.weight`, { shape: [c], init: { kind: "ones" } }],
    [`${key}.bias`, { shape: [c], init: { kind: "zeros" } }],
  ];
}

/** The blocks in order: key, input and output channels, stride. */
function blockTable(c: ResNetConfig): { key: string; cin: number; cout: number; stride: number }[] {
  const out = [];
  let cin = c.widths[0];
  for (let s = 0; s < c.widths.length; s++) {
    for (let b = 0; b < c.blocks[s]; b++) {
      const stride = s > 0 && b === 0 ? 2 : 1;
      out.push({ key: `layer${s + 1}.${b}`, cin, cout: c.widths[s], stride });
      cin = c.widths[s];
    }
  }
  return out;
}

/**
 * Every parameter's shape and initialiser (torchvision's, see above), in state_dict order.
 * @throws Error for an invalid config
 */
export function paramSpecs(c: ResNetConfig): Record<string, ParamSpec> {
  validate(c);
  const entries: [string, ParamSpec][] = [
    ["conv1.weight", convSpec(3, c.inChannels, c.widths[0])],
    ...normEntries("bn1", c.widths[0]),
  ];
  for (const { key, cin, cout, stride } of blockTable(c)) {
    entries.push(
      [`${key}.conv1.weight`, convSpec(3, cin, cout)],
      ...normEntries(`${key}.bn1`, cout),
      [`${key}.conv2.weight`, convSpec(3, cout, cout)],
      ...normEntries(`${key}.bn2`, cout),
    );
    if (stride !== 1 || cin !== cout) { // torchvision's option B: a 1×1 projection
      entries.push([`${key}.downsample.0.weight`, convSpec(1, cin, cout)]);
      entries.push(...normEntries(`${key}.downsample.1`, cout));
    }
  }
  const last = c.widths[c.widths.length - 1];
  const fan = { kind: "uniform", fanIn: last } as const;
  entries.push(["fc.weight", { shape: [last, c.numClasses], init: fan }]);
  entries.push(["fc.bias", { shape: [c.numClasses], init: fan }]);
  return Object.fromEntries(entries);
}

/** Parameter shapes from the config alone (nothing allocated). */
export function paramShapes(c: ResNetConfig): ParamShapes {
  return specShapes(paramSpecs(c));
}

/**
 * Trainable parameters: 9·C·W_1 + 2·W_1 + Σ_blocks (9·in·out + 9·out² + 4·out [+ in·out +
 * 2·out with a projection]) + W_last·K + K.
 */
export function numParams(c: ResNetConfig): number {
  return countParams(paramShapes(c));
}

/** Fresh parameters (torchvision's init); each draw keyed by (rng, name). */
export function init(c: ResNetConfig, rng: Rng): Params {
  return initSpecs(paramSpecs(c), rng);
}

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

function param(p: Params, key: string): tf.Variable {
  const v = p[key];
  if (!v) throw new Error(`resnet.ts: parameter "${key}" is missing`);
  return v;
}

const norm = (c: ResNetConfig, p: Params, key: string, x: tf.Tensor4D) =>
  groupNorm(x, param(p, `${key}.weight`), param(p, `${key}.bias`), c.groups);

/** BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); [N, h, w, in] → [N, h/s, w/s, out]. */
function basicBlock(
  c: ResNetConfig,
  p: Params,
  b: { key: string; cin: number; cout: number; stride: number },
  x: tf.Tensor4D,
): tf.Tensor4D {
  return tf.tidy(() => {
    const k = b.key;
    const conv = (t: tf.Tensor4D, name: string, stride = 1) =>
      conv2d(t, param(p, `${k}.${name}.weight`), undefined, { stride });
    let h = tf.relu(norm(c, p, `${k}.bn1`, conv(x, "conv1", b.stride))); // [N, h/s, w/s, out]
    h = norm(c, p, `${k}.bn2`, conv(h, "conv2"));
    const short = b.stride !== 1 || b.cin !== b.cout
      ? norm(c, p, `${k}.downsample.1`, conv(x, "downsample.0", b.stride))
      : x;
    return tf.relu(tf.add(h, short)) as tf.Tensor4D;
  });
}

function checkInput(c: ResNetConfig, x: tf.Tensor): void {
  validate(c);
  if (x.rank !== 4 || x.shape[3] !== c.inChannels) {
    throw new Error(`resnet.ts: input is [${x.shape}], expected [N, H, W, ${c.inChannels}]`);
  }
}

/**
 * The globally average-pooled output of the last stage: x [N, S, S, C] → [N, W_last]. One tidy.
 * @throws Error when x is not [N, H, W, C] or a parameter is missing
 */
export function features(c: ResNetConfig, p: Params, x: tf.Tensor4D): tf.Tensor2D {
  checkInput(c, x);
  return tf.tidy(() => {
    const stem = conv2d(x, param(p, "conv1.weight"), undefined); // [N, S, S, W_1]
    let h = tf.relu(norm(c, p, "bn1", stem)) as tf.Tensor4D;
    for (const b of blockTable(c)) h = basicBlock(c, p, b, h); // ... → [N, ⌈S/2^(s−1)⌉, ., W_s]
    return tf.mean(h, [1, 2]) as tf.Tensor2D; // [N, W_last]
  });
}

/**
 * Logits: x [N, S, S, C] → [N, K]. Differentiable, one tidy.
 * @throws as `features`
 * @example
 * const c = { ...RESNET_CONFIGS.tiny, numClasses: 2 };
 * const logits = apply(c, init(c, rng(0)), tf.zeros([4, 28, 28, 1]) as tf.Tensor4D); // [4, 2]
 */
export function apply(c: ResNetConfig, p: Params, x: tf.Tensor4D): tf.Tensor2D {
  return tf.tidy(() =>
    linear(features(c, p, x), param(p, "fc.weight"), param(p, "fc.bias")) as tf.Tensor2D
  );
}
