// The latent space of a latent diffusion model: loading an autoencoder (lib/models/vae.ts) from
// diffusers-format reference weights or from the weights file `deno task train-vae` writes, and
// the maps between images and scaled latents that a latent DiT trains and samples in
// (DiT: `x0 = vae.encode(x).latent_dist.sample()·0.18215`, images = `vae.decode(z / 0.18215)`).
// File I/O lives here rather than in lib/models/, which imports no io. A run in latent space
// (`pretrain --latent vae`, tune, classify, dit-figures) opens a `LatentSpace`: the trained
// autoencoder plus the record its results keep (path, sha256, scale), encodes its dataset once
// (posterior means, as the Diffusion Classifier's reference encodes; facts.md §6) and decodes
// what it draws.
import * as tf from "@tensorflow/tfjs";
import {
  configFaults,
  decode,
  encode,
  isAttentionLinear,
  latentShape,
  paramShapes,
  referenceKey,
  sampleLatent,
  type VAEConfig,
} from "./models/vae.ts";
import type { Params } from "./params.ts";
import type { Rng } from "./random.ts";
import {
  disposeCheckpoint,
  EMA_PREFIX,
  loadCheckpoint,
  loadParamsStrict,
  OPT_PREFIX,
  saveCheckpoint,
} from "./io/checkpoint.ts";
import { fromTorchLayout } from "./io/torch_layout.ts";
import { shortList } from "./messages.ts";
import { count, type Dataset, makeDataset } from "./data/dataset.ts";
import { sha256File } from "./features_cache.ts";
import { disposeParams } from "./params.ts";
import type { LatentSpec } from "./pretrain.ts";

/** An autoencoder as its weights file records it: kind, the preset it started from, config. */
export interface VaeSpec {
  readonly kind: "vae";
  readonly name: string;
  readonly config: VAEConfig;
}

// ---------------------------------------------------------------------------------------------
// Reference weights (diffusers' AutoencoderKL, PyTorch layout)
// ---------------------------------------------------------------------------------------------

/**
 * Load diffusers `AutoencoderKL` weights (a safetensors file with its state_dict keys, in PyTorch
 * layout: conv [out, in, kh, kw], linear [out, in]) into the project's layout. The old attention
 * names (`query`, `key`, `value`, `proj_attn`) are mapped to `to_q`, `to_k`, `to_v`,
 * `to_out.0`, and attention linears stored as 1×1 convs [out, in, 1, 1] are squeezed. A project
 * file (written by `saveCheckpoint`) is taken as it is, already in the project's layout.
 * @throws one Error naming the file and every missing, unexpected and misshapen key
 */
export async function loadReferenceVae(c: VAEConfig, path: string): Promise<Params> {
  const shapes = paramShapes(c);
  const ck = await loadCheckpoint(path);
  if (ck.step !== undefined) {
    const { params, ...rest } = ck;
    disposeCheckpoint({ ...rest, params: {} });
    return strict(shapes, params, path);
  }
  // A bare file: keys that look like checkpoint groups (`ema.`, `opt.`) are unexpected keys too.
  const raw: Record<string, tf.Tensor> = { ...ck.params };
  for (const [k, t] of Object.entries(ck.ema)) raw[`${EMA_PREFIX}${k}`] = t;
  for (const [k, t] of Object.entries(ck.optState)) raw[`${OPT_PREFIX}${k}`] = t;
  const renamed: Record<string, tf.Tensor> = {};
  const clashes: string[] = [];
  for (const [key, t] of Object.entries(raw)) {
    const name = referenceKey(key);
    if (Object.hasOwn(renamed, name)) {
      clashes.push(`"${key}" and "${name}"`);
      t.dispose();
      continue;
    }
    const conv1x1 = isAttentionLinear(name) && t.rank === 4 && t.shape[2] === 1 &&
      t.shape[3] === 1;
    renamed[name] = conv1x1 ? tf.reshape(t, [t.shape[0], t.shape[1]!]) : t;
    if (conv1x1) t.dispose();
  }
  if (clashes.length > 0) {
    tf.dispose(Object.values(renamed));
    throw new Error(`"${path}" holds both old and new names of ${shortList(clashes, 3)}`);
  }
  return strict(shapes, fromTorchLayout(shapes, renamed), path);
}

function strict(
  shapes: ReturnType<typeof paramShapes>,
  tensors: Record<string, tf.Tensor>,
  path: string,
): Params {
  try {
    return loadParamsStrict(shapes, tensors, `"${path}"`);
  } catch (e) {
    tf.dispose(Object.values(tensors));
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Trained weights (deno task train-vae)
// ---------------------------------------------------------------------------------------------

/** A trained autoencoder: its config, weights and latent scale; the caller owns `params`. */
export interface LoadedVae {
  readonly spec: VaeSpec;
  readonly config: VAEConfig;
  readonly params: Params;
  /** Multiply latent means by this for unit variance (SD's autoencoder: 0.18215). */
  readonly scale: number;
  /** The dataset it was trained on, as recorded. */
  readonly dataset?: string;
}

/** What `saveVae` writes besides the weights. */
export interface SaveVaeOptions {
  readonly spec: VaeSpec;
  readonly scale: number;
  readonly dataset: string;
  /** Training steps taken. */
  readonly step: number;
}

/**
 * Write an autoencoder's weights with the metadata `loadVae` reads:
 * `{ config: { model: { kind: "vae", name, config }, dataset, latentScale } }`.
 */
export function saveVae(path: string, params: Params, o: SaveVaeOptions): Promise<void> {
  return saveCheckpoint(path, {
    params,
    step: o.step,
    meta: { config: { model: o.spec, dataset: o.dataset, latentScale: o.scale } },
  });
}

/**
 * Read a weights file written by `saveVae` (`deno task train-vae`'s `<run>.weights.safetensors`),
 * checking its metadata (kind, config, latent scale) and every tensor against the config.
 * @throws one Error naming the file and what is wrong with it
 */
export async function loadVae(path: string): Promise<LoadedVae> {
  const ck = await loadCheckpoint(path);
  const fail = (what: string) => {
    disposeCheckpoint(ck);
    return new Error(`"${path}" is not an autoencoder weights file: ${what}`);
  };
  const meta = ck.meta.config as Record<string, unknown> | undefined;
  const model = meta?.model as Partial<VaeSpec> | undefined;
  if (ck.step === undefined) {
    throw fail("it has no project metadata (a reference file? use loadReferenceVae)");
  }
  if (!model || model.kind !== "vae") {
    throw fail(`its metadata records model kind ${JSON.stringify(model?.kind)}, not "vae"`);
  }
  if (typeof model.config !== "object" || model.config === null) throw fail("it records no config");
  const faults = configFaults(model.config);
  if (faults.length > 0) throw fail(`its config is bad: ${faults.join("; ")}`);
  const scale = meta?.latentScale;
  if (typeof scale !== "number" || !(scale > 0 && Number.isFinite(scale))) {
    throw fail(`its latent scale ${JSON.stringify(scale)} is not a positive number`);
  }
  const extra = [...Object.keys(ck.ema), ...Object.keys(ck.optState)];
  if (extra.length > 0) {
    throw fail(`it holds training state (${shortList(extra, 3)}); pass the weights file`);
  }
  const config = model.config;
  const params = strict(paramShapes(config), ck.params, path);
  const spec: VaeSpec = { kind: "vae", name: String(model.name ?? "unknown"), config };
  const dataset = typeof meta?.dataset === "string" ? meta.dataset : undefined;
  return { spec, config, params, scale, ...(dataset ? { dataset } : {}) };
}

// ---------------------------------------------------------------------------------------------
// Images ↔ scaled latents
// ---------------------------------------------------------------------------------------------

/**
 * Scaled latents of images x [N, S, S, C] in [−1, 1]: scale·z [N, s, s, L], with z sampled from
 * the posterior with `key` (DiT's training input), or its mean without a key.
 */
export function toLatent(v: LoadedVae, x: tf.Tensor4D, key?: Rng): tf.Tensor4D {
  return tf.tidy(() => {
    const { mean, logvar } = encode(v.config, v.params, x);
    return tf.mul(key ? sampleLatent(mean, logvar, key) : mean, v.scale) as tf.Tensor4D;
  });
}

/** Images [N, S, S, C] from scaled latents [N, s, s, L]: decode(z / scale). */
export function fromLatent(v: LoadedVae, z: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => decode(v.config, v.params, tf.div(z, v.scale) as tf.Tensor4D));
}

// ---------------------------------------------------------------------------------------------
// A run's latent space
// ---------------------------------------------------------------------------------------------

/** A trained autoencoder opened for a run, with the record the run keeps of it. */
export interface LatentSpace extends LoadedVae {
  readonly latent: LatentSpec;
}

/** Open the autoencoder weights of `deno task train-vae` at `path` for a run. */
export async function openLatentSpace(path: string): Promise<LatentSpace> {
  const v = await loadVae(path);
  const sha256 = await sha256File(path);
  return { ...v, latent: { kind: "vae", weights: path, sha256, scale: v.scale } };
}

export function closeLatentSpace(s: LatentSpace): void {
  disposeParams(s.params);
}

/**
 * The dataset as scaled latent means (same labels and order), encoded in batches.
 * @throws when the images do not fit the autoencoder
 */
export function encodeDataset(
  s: LoadedVae,
  ds: Dataset,
  opts: { readonly batch?: number } = {},
): Dataset {
  const [h, w, c] = ds.shape;
  if (h !== s.config.resolution || w !== s.config.resolution || c !== s.config.inChannels) {
    throw new Error(
      `Dataset "${ds.name}" has images ${h}×${w}×${c}; the autoencoder reads ` +
        `${s.config.resolution}×${s.config.resolution}×${s.config.inChannels}`,
    );
  }
  const n = count(ds), per = h * w * c, batch = opts.batch ?? 256;
  const [lh, lw, lc] = latentShape(s.config);
  const out = new Float32Array(n * lh * lw * lc);
  for (let i = 0; i < n; i += batch) {
    const m = Math.min(batch, n - i);
    const z = tf.tidy(() =>
      toLatent(s, tf.tensor4d(ds.images.subarray(i * per, (i + m) * per), [m, h, w, c]))
    );
    out.set(z.dataSync(), i * lh * lw * lc);
    z.dispose();
  }
  return makeDataset({
    name: `${ds.name}@latent`,
    images: out,
    labels: ds.labels,
    shape: [lh, lw, lc],
    classes: ds.classes,
    ...(ds.sites ? { sites: ds.sites } : {}),
  });
}

/** Scaled latents [N, h, w, c] → pixels [N, H, W, C] clipped to [-1, 1] (the caller owns them). */
export function decodeLatents(s: LoadedVae, z: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() => tf.clipByValue(fromLatent(s, z), -1, 1));
}
