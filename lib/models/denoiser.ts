// The one interface every diffusion network implements (the ADM U-Net, the DiT), so that
// pre-training, sampling, feature extraction and the diffusion classifiers take "a denoiser" and
// never name a model. Each model module exports a `Denoiser<Config>`; lib/models/mod.ts holds the
// registry and the model-agnostic calls (label dropout lives there, in one place).
//
// Labels follow one convention for every model: 0..K−1 are the K classes and, when the model can
// drop labels (classifier-free guidance), K is the null label, one extra row of the label table.
import type * as tf from "@tensorflow/tfjs";
import type { Params, ParamShapes } from "../params.ts";
import type { Rng } from "../random.ts";

/** The model kinds the registry knows; a checkpoint records one. */
export const MODEL_KINDS = ["unet", "dit"] as const;
export type ModelKind = (typeof MODEL_KINDS)[number];

/** One numbered block b of a network: what `features` can return. */
export interface BlockInfo {
  /** 1-based block number (diffssl's b for the U-Net, the transformer block for the DiT). */
  readonly b: number;
  /** state_dict prefix, e.g. `input_blocks.4`, `middle_block`, `blocks.3`. */
  readonly module: string;
  /** Layers, e.g. "RB+A", "RB-dn", "adaLN". */
  readonly layers: string;
  /** Output side in pixels (or tokens per side). */
  readonly resolution: number;
  /** Output channels. */
  readonly channels: number;
}

/** Class conditioning of a config: K classes, the null label K when labels can be dropped. */
export interface Conditioning {
  readonly classes: number;
  /** Probability of replacing a label by the null label in training; 0: no null label. */
  readonly dropRate: number;
}

/** How the reference PyTorch state_dict differs from the project's params (lib/io/torch_layout.ts). */
export interface ReferenceLayout<C> {
  /** Keys whose PyTorch layout equals ours (embedding tables [rows, dim]). */
  readonly sameLayout: readonly string[];
  /** Fixed buffers of the state_dict that are not parameters: checked against these values, dropped. */
  readonly fixed?: (c: C) => Readonly<Record<string, Float32Array>>;
}

/**
 * What a model is conditioned on besides t (seed 000, Figure 5): nothing, class labels, or a
 * representation r = f_φ(x0) of the clean input by an encoder trained jointly with it.
 */
export const CONDITIONS = ["none", "class", "repr"] as const;
export type Condition = (typeof CONDITIONS)[number];

/** Options of a network call. */
export interface NetOptions {
  /** Labels in 0..K (K = null), int32 [N]; required exactly when the config is conditional. */
  readonly y?: tf.Tensor1D;
  /** The clean input [N, S, S, C]; required exactly when the config is representation-conditioned. */
  readonly x0?: tf.Tensor4D;
  /** Dropout masks are drawn from this key in training; none in eval. */
  readonly dropoutKey?: Rng;
}

/** A diffusion network as pure functions of its config `C` and params. */
export interface Denoiser<C> {
  readonly kind: ModelKind;
  /** Named configurations (`tiny`, `small`, the papers' names). */
  readonly presets: Readonly<Record<string, C>>;
  /** Parameter shapes from the config alone (nothing allocated): drives init, counts, loading. */
  paramShapes(c: C): ParamShapes;
  /** Fresh parameters; every draw keyed by (key, parameter name). */
  init(c: C, key: Rng): Params;
  /** Input [S, S, channels] (pixels, or latents for a latent model). */
  inputShape(c: C): readonly [number, number, number];
  /** Whether the output holds a variance interpolation v after ε̂ (the hybrid loss). */
  learnSigma(c: C): boolean;
  conditioning(c: C): Conditioning | undefined;
  /** The config made conditional on `classes` labels (with a null label when dropRate > 0). */
  conditioned(c: C, classes: number, dropRate: number): C;
  /** Whether the config has a representation encoder (and so needs the clean input x0). */
  represented(c: C): boolean;
  /**
   * The config made representation-conditioned with encoder preset `encoder`.
   * @throws for a model without a representation path
   */
  withEncoder(c: C, encoder: string): C;
  /** The network: x_t [N, S, S, C], t [N] → [N, S, S, C (×2 with learnSigma)]. One tidy. */
  net(c: C, p: Params, xt: tf.Tensor4D, t: tf.Tensor1D, o?: NetOptions): tf.Tensor4D;
  /**
   * Activations after blocks b (see `blockTable`), each [N, h, w, channels], stopping after the
   * deepest one asked for; the caller owns them.
   */
  features(
    c: C,
    p: Params,
    xt: tf.Tensor4D,
    t: tf.Tensor1D,
    blocks: readonly number[],
    o?: { readonly y?: tf.Tensor1D; readonly x0?: tf.Tensor4D },
  ): Map<number, tf.Tensor4D>;
  blockTable(c: C): readonly BlockInfo[];
  readonly referenceLayout: ReferenceLayout<C>;
}
