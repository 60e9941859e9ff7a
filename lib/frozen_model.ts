// A pre-trained denoiser loaded for feature extraction: its weights (EMA when the file has them,
// as the papers probe EMA weights), spec, noise schedule, the dataset it was trained on, and the
// sha256 of the file that addresses the feature cache.
import { namedSchedule } from "./diffusion/schedule.ts";
import type { FrozenModel } from "./features.ts";
import { sha256File } from "./features_cache.ts";
import { disposeCheckpoint, loadCheckpoint, loadParamsStrict } from "./io/checkpoint.ts";
import { initParams, paramShapes, specFromMeta } from "./models/mod.ts";
import { disposeParams } from "./params.ts";
import type { Rng } from "./random.ts";
import type { LatentSpec } from "./pretrain.ts";

const sha256Text = async (text: string) =>
  Array.from(
    new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text))),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");

/** A loaded frozen model and where it came from. */
export interface LoadedModel {
  readonly model: FrozenModel;
  /** sha256 hex of the weights file's bytes. */
  readonly sha256: string;
  /** The dataset the checkpoint records, if any (the default to probe on). */
  readonly dataset?: string;
  /** Which weights were loaded. */
  readonly weights: "ema" | "raw" | "random";
  readonly step?: number;
  /** Batch size of the pre-training, for epochs = step · batch / images. */
  readonly batch?: number;
  /** The autoencoder a latent model runs in (lib/latent.ts); absent for pixel models. */
  readonly latent?: LatentSpec;
}

/**
 * Load a checkpoint or exported weights file for probing.
 * @throws one-line Error naming the file when it is missing, damaged, records no model or
 * schedule, or its tensors do not fit the model it records
 */
export async function loadFrozenModel(
  path: string,
  which: "ema" | "raw" = "ema",
  opts: { readonly randomKey?: Rng } = {},
): Promise<LoadedModel> {
  const ck = await loadCheckpoint(path);
  try {
    const where = `Weights file "${path}"`;
    const spec = specFromMeta(ck.meta.config, where);
    const cfg = ck.meta.config as {
      schedule?: string;
      diffusionSteps?: number;
      dataset?: string;
      batch?: number;
      latent?: LatentSpec;
    };
    if ((cfg.schedule !== "linear" && cfg.schedule !== "cosine") || !cfg.diffusionSteps) {
      throw new Error(`${where} records no noise schedule (schedule, diffusionSteps)`);
    }
    const useEma = which === "ema" && Object.keys(ck.ema).length > 0;
    const params = loadParamsStrict(paramShapes(spec), useEma ? ck.ema : ck.params, `"${path}"`);
    const schedule = namedSchedule(cfg.schedule, cfg.diffusionSteps);
    const sha256 = await sha256File(path);
    if (opts.randomKey) {
      // The same architecture and schedule with fresh weights: the "0 epochs" point.
      disposeParams(params);
      return {
        model: { spec, params: initParams(spec, opts.randomKey), schedule },
        sha256: await sha256Text(`random ${JSON.stringify(opts.randomKey)} ${sha256}`),
        dataset: cfg.dataset,
        weights: "random",
        step: 0,
        batch: cfg.batch,
        latent: cfg.latent,
      };
    }
    return {
      model: { spec, params, schedule },
      sha256,
      dataset: cfg.dataset,
      weights: useEma ? "ema" : "raw",
      step: ck.step,
      batch: cfg.batch,
      latent: cfg.latent,
    };
  } finally {
    disposeCheckpoint(ck);
  }
}
