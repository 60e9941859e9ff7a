// A latent model's autoencoder (seed 000's latent DiT): the dataset encoded once into scaled
// latents z0 = scale · mean(E(x)) before pre-training, and latents decoded back to pixels for
// sample grids and figures. Posterior means, not samples, as the Diffusion Classifier's
// reference encodes (facts.md §6): the latents of an image are then fixed for a run.
import * as tf from "@tensorflow/tfjs";
import { count, type Dataset, makeDataset } from "./data/dataset.ts";
import { sha256File } from "./features_cache.ts";
import * as vae from "./models/vae.ts";
import { loadVae } from "./latent.ts";
import type { Params } from "./params.ts";
import { disposeParams } from "./params.ts";
import type { LatentSpec } from "./pretrain.ts";

/** A loaded autoencoder and the record a run keeps of it. */
export interface LatentSpace {
  readonly config: vae.VAEConfig;
  readonly params: Params;
  readonly scale: number;
  readonly spec: LatentSpec;
}

/** Load the autoencoder weights of `deno task train-vae` at `path`. */
export async function openLatentSpace(path: string): Promise<LatentSpace> {
  const loaded = await loadVae(path);
  return {
    config: loaded.config,
    params: loaded.params,
    scale: loaded.scale,
    spec: { kind: "vae", weights: path, sha256: await sha256File(path), scale: loaded.scale },
  };
}

export function closeLatentSpace(s: LatentSpace): void {
  disposeParams(s.params);
}

/**
 * The dataset as scaled latents (same labels and order), encoded in batches.
 * @throws when the images do not fit the autoencoder
 */
export function encodeDataset(
  s: LatentSpace,
  ds: Dataset,
  opts: { readonly batch?: number; readonly onProgress?: (done: number, total: number) => void } =
    {},
): Dataset {
  const [h, w, c] = ds.shape;
  if (h !== s.config.resolution || w !== s.config.resolution || c !== s.config.inChannels) {
    throw new Error(
      `Dataset "${ds.name}" has images ${h}×${w}×${c}; the autoencoder ${s.spec.weights} reads ` +
        `${s.config.resolution}×${s.config.resolution}×${s.config.inChannels}`,
    );
  }
  const n = count(ds), per = h * w * c, batch = opts.batch ?? 256;
  const [lh, lw, lc] = vae.latentShape(s.config);
  const out = new Float32Array(n * lh * lw * lc);
  for (let i = 0; i < n; i += batch) {
    const m = Math.min(batch, n - i);
    const z = tf.tidy(() => {
      const x = tf.tensor4d(ds.images.subarray(i * per, (i + m) * per), [m, h, w, c]);
      return tf.mul(vae.encode(s.config, s.params, x).mean, s.scale);
    });
    out.set(z.dataSync(), i * lh * lw * lc);
    z.dispose();
    opts.onProgress?.(i + m, n);
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
export function decodeLatents(s: LatentSpace, z: tf.Tensor4D): tf.Tensor4D {
  return tf.tidy(() =>
    tf.clipByValue(vae.decode(s.config, s.params, tf.div(z, s.scale) as tf.Tensor4D), -1, 1)
  );
}
