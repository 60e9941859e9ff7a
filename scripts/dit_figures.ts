// deno task dit-figures: seed 000's Figures 7–9 for the latent DiT pre-trained under each
// condition (deno task pretrain --model dit --latent vae --condition none|class|repr
// --export-weights), all decoded to pixels through the runs' autoencoder:
//   Figure 8: the pre-training loss curves of the unconditional and the representation-
//     conditioned model (and the class-conditioned one) on one log plot, with their minima;
//   Figure 9: z_t and the predicted ẑ0 = (z_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t across t for two test images,
//     per condition, and the mean ‖z0 − ẑ0‖² over --error-images test images at each t (the
//     quantity Diffusion Classifier Zero ranks classes by; class models get the true label);
//   Figure 7: partial denoising: the original, z_100 decoded, and each condition's ancestral
//     samples from that same z_100 down to 0 (the representation from the original image, the
//     class from its label).
import * as tf from "@tensorflow/tfjs";
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { count, loadDataset, take } from "../lib/data/dataset.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { ddpmStep, predictX0FromEps, qSample, splitOutput } from "../lib/diffusion/gaussian.ts";
import { type LoadedModel, loadFrozenModel } from "../lib/frozen_model.ts";
import {
  closeLatentSpace,
  decodeLatents,
  encodeDataset,
  type LatentSpace,
  openLatentSpace,
} from "../lib/latent.ts";
import { type Condition, conditionOf, denoise, learnSigma } from "../lib/models/mod.ts";
import { disposeParams } from "../lib/params.ts";
import { fold, foldName, normal, rng } from "../lib/random.ts";
import { saveImageGrid } from "../lib/io/png.ts";
import { lineChart, renderFigure } from "../lib/report/figures.ts";
import { finishRun, parseResult, resultsDir, runStem, startRun } from "../lib/results.ts";

const run = (c: string) => `fashion-mnist-dit-small-latent${c}-seed0`;
const weightsOf = (c: string) => `results/pretrain/${run(c)}.weights.safetensors`;

const FLAGS = {
  ...COMMON_FLAGS,
  none: { kind: "string", default: weightsOf(""), help: "unconditional model's weights" },
  class: {
    kind: "string",
    default: weightsOf("-cond"),
    help: "class-conditioned model's weights ('' to leave it out)",
  },
  repr: {
    kind: "string",
    default: weightsOf("-repr"),
    help: "representation-conditioned model's weights",
  },
  images: { kind: "int", default: 4, help: "test images of Figure 7", min: 1, max: 16 },
  "error-images": {
    kind: "int",
    default: 256,
    help: "test images averaged in Figure 9's ‖z0 − ẑ0‖² curve",
    min: 1,
  },
  "start-t": { kind: "int", default: 100, help: "Figure 7's partial denoising start", min: 1 },
  weights: {
    kind: "string",
    default: "ema",
    help: "which weights of a training checkpoint (exported files hold the EMA only)",
    choices: ["ema", "raw"],
  },
  run: { kind: "string", default: "fashion-mnist-dit-small-latent-seed0", help: "output name" },
  quiet: { kind: "boolean", help: "no progress lines" },
} as const;

// Figure 9's timesteps: the paper shows t = 0…900 in steps of 100.
const TS = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999];
const FIG9_IMAGES = 2;

interface Model {
  readonly condition: Condition;
  readonly path: string;
  readonly loaded: LoadedModel;
}

/** The network output at z_t, given the clean latents (repr) or labels (class) of the images. */
function netOut(m: Model, zt: tf.Tensor4D, t: number, z0: tf.Tensor4D, y: tf.Tensor1D) {
  const { spec, params } = m.loaded.model;
  return tf.tidy(() =>
    denoise(spec, params, zt, tf.fill([zt.shape[0]], t, "int32") as tf.Tensor1D, {
      ...(m.condition === "class" ? { y } : {}),
      ...(m.condition === "repr" ? { x0: z0 } : {}),
    })
  );
}

/** ε̂ of a model at z_t (see `netOut`). */
function epsHat(m: Model, zt: tf.Tensor4D, t: number, z0: tf.Tensor4D, y: tf.Tensor1D) {
  return tf.tidy(() =>
    splitOutput(netOut(m, zt, t, z0, y), zt.shape[3], learnSigma(m.loaded.model.spec))[0]
  );
}

const noiseFor = (seed: number, t: number, shape: number[]) =>
  normal(fold(foldName(rng(seed), "noise"), t), shape) as tf.Tensor4D;

await runMain(async () => {
  const a = parseCli(
    "dit-figures",
    "Seed 000's Figures 7–9 for the latent DiTs pre-trained under each condition.",
    FLAGS,
    Deno.args,
  );
  const engine = await initEngine({ backend: a.backend });
  const paths: [Condition, string][] = [["none", a.none], ["class", a.class], ["repr", a.repr]];
  const models: Model[] = [];
  for (const [condition, path] of paths.filter(([, p]) => p !== "")) {
    const loaded = await loadFrozenModel(path, a.weights as "ema" | "raw");
    if (conditionOf(loaded.model.spec) !== condition) {
      throw new UsageError(
        `--${condition}: ${path} holds a ${conditionOf(loaded.model.spec)}-conditioned model`,
      );
    }
    if (!loaded.latent) throw new UsageError(`--${condition}: ${path} is not a latent model`);
    models.push({ condition, path, loaded });
  }
  const vaes = new Set(models.map((m) => m.loaded.latent!.sha256));
  if (vaes.size !== 1) throw new UsageError("the models were trained in different latent spaces");
  const space: LatentSpace = await openLatentSpace(models[0].loaded.latent!.weights);
  if (space.latent.sha256 !== models[0].loaded.latent!.sha256) {
    throw new UsageError(`${space.latent.weights} changed since the models were trained on it`);
  }
  const sched = models[0].loaded.model.schedule;
  const dataset = models[0].loaded.dataset ?? "fashion-mnist";
  const test = await loadDataset(dataset, {
    split: "test",
    size: space.config.resolution,
    channels: space.config.inChannels as 1 | 3,
  });
  const nErr = Math.min(a["error-images"], count(test));
  const latents = encodeDataset(space, take(test, Array.from({ length: nErr }, (_, i) => i)));
  const handle = await startRun(
    "dit-figures",
    a.run,
    {
      models: Object.fromEntries(models.map((m) => [m.condition, m.path])),
      // An exported weights file holds the EMA weights as its only group.
      weights: Object.fromEntries(
        models.map((m) => [m.condition, a.weights === "ema" ? "ema" : m.loaded.weights]),
      ),
      dataset,
      vae: space.latent,
      images: a.images,
      errorImages: nErr,
      startT: a["start-t"],
      ts: TS,
    },
    a.seed,
    { engine, task: "dit-figures" },
  );
  const out = `${resultsDir()}/dit-figures`;
  await Deno.mkdir(out, { recursive: true });
  const artifacts: string[] = [];
  const [h, w, c] = latents.shape;
  const batchOf = (n: number) => ({
    z0: tf.tensor4d(latents.images.subarray(0, n * h * w * c), [n, h, w, c]),
    y: tf.tensor1d(latents.labels.subarray(0, n), "int32"),
  });

  // Figure 8: the loss curves, read from each run's results JSON beside its weights.
  const curves: Record<string, [number, number][]> = {};
  const minima: Record<string, number> = {};
  for (const m of models) {
    const json = `${resultsDir()}/pretrain/${runStem(m.path)}.json`;
    const r = parseResult(await Deno.readTextFile(json), json);
    const pts = (r.metrics.loss_curve as { points: [number, number][] }).points;
    curves[m.condition] = pts;
    minima[m.condition] = Math.min(...pts.map((p) => p[1]));
  }
  const names = { none: "unconditional", class: "class-conditioned", repr: "representation" };
  artifacts.push(
    ...await renderFigure(
      lineChart({
        title: "000 Figure 8: pre-training loss ‖ε − ε̂‖² (mean per 10 steps)",
        x: "step",
        y: "loss",
        series: Object.fromEntries(
          Object.entries(curves).map(([k, v]) => [names[k as Condition], v]),
        ),
        logY: true,
      }),
      `${out}/${a.run}-fig8-loss`,
    ),
  );

  // Figure 9: z_t and ẑ0 rows per condition for two images, and the mean error curve.
  const errors: Record<string, number[]> = {};
  const rows: tf.Tensor4D[] = [];
  for (const m of models) {
    errors[m.condition] = [];
    for (const t of TS) {
      const err = tf.tidy(() => {
        const { z0, y } = batchOf(nErr);
        const zt = qSample(sched, z0, t, noiseFor(a.seed, t, z0.shape));
        const x0 = predictX0FromEps(sched, zt, t, epsHat(m, zt, t, z0, y));
        return tf.mean(tf.squaredDifference(z0, x0)).dataSync()[0];
      });
      errors[m.condition].push(err);
    }
    rows.push(tf.tidy(() => {
      const { z0, y } = batchOf(FIG9_IMAGES);
      const zts = TS.map((t) => qSample(sched, z0, t, noiseFor(a.seed, t, z0.shape)));
      const x0s = TS.map((t, i) => predictX0FromEps(sched, zts[i], t, epsHat(m, zts[i], t, z0, y)));
      // Per image: the z_t row then the ẑ0 row, t rising left to right.
      const perImage = Array.from({ length: FIG9_IMAGES }, (_, k) => [
        ...zts.map((z) => tf.slice(z, [k], [1])),
        ...x0s.map((z) => tf.slice(z, [k], [1])),
      ]).flat();
      return decodeLatents(space, tf.concat(perImage) as tf.Tensor4D);
    }));
    if (!a.quiet) console.error(`dit-figures: Figure 9 rows of ${m.condition} done`);
  }
  const fig9 = `${out}/${a.run}-fig9-z0.png`;
  const all9 = tf.concat(rows) as tf.Tensor4D;
  await saveImageGrid(fig9, all9, { cols: TS.length });
  tf.dispose([all9, ...rows]);
  artifacts.push(fig9);
  artifacts.push(
    ...await renderFigure(
      lineChart({
        title: `000 Figure 9, measured: mean ‖z0 − ẑ0‖² over ${nErr} test images`,
        x: "t",
        y: "z0 error",
        series: Object.fromEntries(
          Object.entries(errors).map((
            [k, v],
          ) => [names[k as Condition], TS.map((t, i) => [t, v[i]])]),
        ),
        logY: true,
      }),
      `${out}/${a.run}-fig9-error`,
    ),
  );

  // Figure 7: from one z_{start} per image, each condition denoises to 0 (ancestral steps).
  const t0 = a["start-t"];
  if (t0 >= sched.T) throw new UsageError(`--start-t ${t0} is past T = ${sched.T}`);
  const cols: tf.Tensor4D[] = [];
  const { z0, y } = batchOf(Math.min(a.images, nErr));
  const zStart = qSample(sched, z0, t0, noiseFor(a.seed, t0, z0.shape));
  cols.push(decodeLatents(space, z0), decodeLatents(space, zStart));
  for (const m of models) {
    let z = tf.clone(zStart);
    for (let t = t0; t >= 0; t--) {
      const next = tf.tidy(() => {
        const noise = normal(fold(foldName(rng(a.seed), `fig7-${m.condition}`), t), z.shape);
        return ddpmStep(sched, netOut(m, z, t, z0, y), t, z, noise as tf.Tensor4D, {
          learnSigma: learnSigma(m.loaded.model.spec),
          clip: false,
        }).prev;
      });
      z.dispose();
      z = next;
    }
    cols.push(decodeLatents(space, z));
    z.dispose();
  }
  // Rows are images; columns: original, z_start, then each condition.
  const n7 = z0.shape[0], k7 = cols.length;
  const fig7 = `${out}/${a.run}-fig7-partial.png`;
  const grid7 = tf.tidy(() =>
    tf.concat(
      Array.from({ length: n7 }, (_, i) => cols.map((col) => tf.slice(col, [i], [1]))).flat(),
    )
  ) as tf.Tensor4D;
  await saveImageGrid(fig7, grid7, { cols: k7 });
  artifacts.push(fig7);
  tf.dispose([grid7, ...cols, z0, y, zStart]);

  const path = await finishRun(handle, {
    metrics: {
      min_loss: minima,
      z0_error: Object.fromEntries(
        Object.entries(errors).map((
          [k, v],
        ) => [k, Object.fromEntries(TS.map((t, i) => [t, v[i]]))]),
      ),
      fig7_columns: ["original", `z_${t0}`, ...models.map((m) => m.condition)],
      fig9_rows: models.flatMap((m) =>
        Array.from(
          { length: FIG9_IMAGES },
          (_, k) => [`${m.condition} z_t ${k}`, `${m.condition} ẑ0 ${k}`],
        )
          .flat()
      ),
    },
    artifacts,
  });
  for (const m of models) disposeParams(m.loaded.model.params);
  closeLatentSpace(space);
  console.error(`dit-figures: wrote ${path}`);
});
