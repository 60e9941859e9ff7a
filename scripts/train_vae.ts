// deno task train-vae: train a KL autoencoder (lib/models/vae.ts) whose latents a latent DiT
// diffuses in, resumable; then estimate the latent scale, measure test reconstruction, and write
// results/vae/<run>.json, the weights (lib/latent.ts loadVae reads them), a reconstruction grid
// and a loss figure.
import * as tf from "@tensorflow/tfjs";
import { COMMON_FLAGS, parseCli, runMain, UsageError, type Values } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { batchAt, batches, count, type Dataset, loadDataset, take } from "../lib/data/dataset.ts";
import {
  encode,
  init,
  klToPrior,
  latentScale,
  latentShape,
  numParams,
  paramShapes,
  reconstruct,
  VAE_CONFIGS,
  type VAEConfigName,
  vaeLoss,
} from "../lib/models/vae.ts";
import { saveVae, type VaeSpec } from "../lib/latent.ts";
import { adam, disposeTensors } from "../lib/optim.ts";
import { fold } from "../lib/random.ts";
import { disposeParams } from "../lib/params.ts";
import { runLoop, type StepOptions, type TrainState, trainStep } from "../lib/train.ts";
import { BatchOrder, runKeys } from "../lib/pretrain_data.ts";
import {
  checkpointPath,
  openRunCheckpoint,
  SegmentClock,
  throughput,
} from "../lib/pretrain_resume.ts";
import { checkpointFaults, loadParamsStrict, saveCheckpoint } from "../lib/io/checkpoint.ts";
import { fileExists, removeStaleTemps } from "../lib/io/atomic.ts";
import { saveImageGrid } from "../lib/io/png.ts";
import { shortList } from "../lib/messages.ts";
import { finishRun, resultsDir, type Segment, startRun } from "../lib/results.ts";
import { lineChart, renderFigure } from "../lib/report/figures.ts";
import { basename } from "node:path";

const PRESETS = Object.keys(VAE_CONFIGS);

const FLAGS = {
  ...COMMON_FLAGS,
  dataset: {
    kind: "string",
    default: "fashion-mnist",
    help: "mnist (embedded) | fashion-mnist | <image folder>",
  },
  config: { kind: "string", default: "small", help: "autoencoder preset", choices: PRESETS },
  steps: {
    kind: "int",
    default: 1500,
    help: "total optimisation steps (a resumed run continues to this)",
    min: 1,
  },
  batch: { kind: "int", default: 64, help: "batch size", min: 1 },
  lr: { kind: "float", default: 1e-3, help: "Adam learning rate", minExclusive: 0 },
  // Per-element KL against per-pixel MSE (vaeLoss). Fashion-MNIST, `small`, 1,500 steps: 1e-3
  // (results/vae/fashion-mnist-vae-small-seed0) gives test PSNR 24.86 dB and latent means near
  // unit scale (latent scale 0.98), but lets one of the four channels drift towards the prior
  // (posterior σ 0.62 of its spread there, 0.06–0.09 in the others); 1e-4 gives 25.13 dB with
  // all four channels informative (σ 0.01–0.03, scale 0.53). At 400 steps 0, 1e-5, 1e-4 and 1e-3
  // gave the same PSNR (22.3–22.4 dB). LDM's 1e-6 on per-image sums (with L1 + LPIPS) is ~2e-8
  // in these units and would leave the KL idle.
  "kl-weight": {
    kind: "float",
    default: 1e-3,
    help: "weight of the KL term (per latent element) against the MSE (per pixel)",
    min: 0,
  },
  "clip-norm": {
    kind: "float",
    default: 1,
    help: "clip gradients to this global norm; 0 turns it off",
    min: 0,
  },
  "train-images": {
    kind: "int",
    default: 0,
    help: "train on the first N training images (0: all)",
    min: 0,
  },
  "test-images": {
    kind: "int",
    default: 2000,
    help: "test images for the reconstruction MSE / PSNR (0: all)",
    min: 0,
  },
  "scale-images": {
    kind: "int",
    default: 2048,
    help: "training images whose latent means set the latent scale",
    min: 1,
  },
  out: { kind: "string", help: "checkpoint directory (default: checkpoints/vae/<run>)" },
  run: { kind: "string", help: "run name (default: <dataset>-vae-<config>-seed<seed>)" },
  "checkpoint-every": { kind: "int", default: 250, help: "steps between checkpoints", min: 1 },
  "log-every": { kind: "int", default: 10, help: "steps per point of the loss curves", min: 1 },
  quiet: { kind: "boolean", help: "no progress line" },
} as const;

function crossFlagFaults(a: Partial<Values<typeof FLAGS>>): string[] {
  if (a.run !== undefined && !/^[A-Za-z0-9._-]+$/.test(a.run)) {
    return [`--run: "${a.run}" must use letters, digits, ".", "_" or "-"`];
  }
  return [];
}

// ---------------------------------------------------------------------------------------------
// The run: config, resume, loop
// ---------------------------------------------------------------------------------------------

/** Everything that defines a run; its checkpoint resumes only under the same values. */
interface VaeRunConfig {
  readonly dataset: string;
  readonly model: VaeSpec;
  readonly trainImages: number;
  readonly steps: number;
  readonly batch: number;
  readonly lr: number;
  readonly klWeight: number;
  readonly clipNorm?: number;
  readonly seed: number;
}

const CURVES = ["loss", "rec", "kl"] as const;
type Curve = (typeof CURVES)[number];
type Curves = Record<Curve, [number, number][]>;
type Windows = Record<Curve, number[]>;

/** What a checkpoint carries besides tensors. */
interface RunRecord {
  readonly curves: Curves;
  readonly windows: Windows;
  readonly segments: Segment[];
}

const emptyCurves = (): Curves => ({ loss: [], rec: [], kl: [] });
const emptyWindows = (): Windows => ({ loss: [], rec: [], kl: [] });

// Faults of the metadata: optimiser count, curves, windows and segments must agree with the step.
function metaFaults(meta: Record<string, unknown>, step: number, every: number): string[] {
  const faults: string[] = [];
  if (meta.optCount !== step) faults.push(`optimiser count ${meta.optCount} is not step ${step}`);
  if (meta.every !== every) {
    faults.push(`curves have a point every ${meta.every} steps, not ${every}`);
  }
  const curves = meta.curves as Partial<Curves> | undefined;
  const windows = meta.windows as Partial<Windows> | undefined;
  for (const k of CURVES) {
    const pts = curves?.[k], win = windows?.[k];
    if (!Array.isArray(pts) || pts.length !== Math.floor(step / every)) {
      faults.push(`curve "${k}" does not have ${Math.floor(step / every)} points`);
    }
    if (!Array.isArray(win) || win.length !== step % every) {
      faults.push(`window "${k}" does not hold the ${step % every} values since the last point`);
    }
  }
  const segments = meta.segments as Segment[] | undefined;
  if (!Array.isArray(segments)) faults.push("segments are missing");
  else if (segments.length > 0 && segments[segments.length - 1].to_step !== step) {
    faults.push(`segments end at ${segments[segments.length - 1].to_step}, not step ${step}`);
  }
  return faults;
}

/** A fresh run, or the checkpoint in `dir` after checking it belongs to this run and is sound. */
async function resumeOrInit(
  cfg: VaeRunConfig,
  dir: string,
  opts: StepOptions,
  every: number,
): Promise<{ state: TrainState; record: RunRecord }> {
  const path = checkpointPath(dir);
  await removeStaleTemps(path).catch(() => []);
  if (!await fileExists(path)) {
    const params = init(cfg.model.config, runKeys(cfg.seed).init);
    return {
      state: { params, opt: opts.optimizer.init(params), step: 0 },
      record: { curves: emptyCurves(), windows: emptyWindows(), segments: [] },
    };
  }
  const { ck, step, fail } = await openRunCheckpoint(path, cfg);
  const shapes = paramShapes(cfg.model.config);
  const faults = [
    ...checkpointFaults(ck, { params: shapes, opt: opts.optimizer.slotShapes(shapes) }),
    ...metaFaults(ck.meta, step, every),
  ];
  if (faults.length > 0) throw fail(`cannot be resumed: ${shortList(faults, 5)}`);
  const params = loadParamsStrict(shapes, ck.params, `"${path}"`);
  const m = ck.meta as { curves: Curves; windows: Windows; segments: Segment[] };
  return {
    state: { params, opt: { count: step, slots: { ...ck.optState } }, step },
    record: { curves: m.curves, windows: m.windows, segments: [...m.segments] },
  };
}

function saveRun(
  dir: string,
  cfg: VaeRunConfig,
  s: TrainState,
  every: number,
  r: RunRecord,
  segment: Segment,
): Promise<void> {
  return saveCheckpoint(checkpointPath(dir), {
    params: s.params,
    optState: s.opt.slots,
    step: s.step,
    meta: {
      config: cfg,
      optCount: s.opt.count,
      every,
      curves: r.curves,
      windows: r.windows,
      segments: [...r.segments, segment],
    },
  });
}

const disposeState = (s: TrainState) => {
  disposeTensors(s.opt);
  disposeParams(s.params);
};

// ---------------------------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------------------------

const EVAL_BATCH = 128;

const first = (ds: Dataset, n: number) =>
  n > 0 && n < count(ds) ? take(ds, Int32Array.from({ length: n }, (_, i) => i)) : ds;

/**
 * Latent means of `ds`, concatenated [N, s, s, L], and the posterior variance exp(logvar)
 * averaged over every latent element.
 */
function latentMeans(
  cfg: VaeRunConfig,
  s: TrainState,
  ds: Dataset,
): { means: tf.Tensor4D; variance: number } {
  const parts: tf.Tensor4D[] = [];
  let sum = 0;
  for (const b of batches(ds, EVAL_BATCH, undefined)) {
    const { mean, logvar } = encode(cfg.model.config, s.params, b.x);
    parts.push(mean);
    sum += tf.tidy(() => tf.sum(tf.exp(logvar)).dataSync()[0]);
    tf.dispose([logvar, b.x, b.y]);
  }
  const means = tf.concat(parts, 0) as tf.Tensor4D;
  tf.dispose(parts);
  return { means, variance: sum / means.size };
}

/** Test-set reconstruction from the posterior mean: MSE per pixel, and the mean KL. */
function testMetrics(cfg: VaeRunConfig, s: TrainState, ds: Dataset) {
  let se = 0, kl = 0, pixels = 0, latents = 0;
  for (const b of batches(ds, EVAL_BATCH, undefined)) {
    const [sse, skl, nl] = tf.tidy(() => {
      const { mean, logvar } = encode(cfg.model.config, s.params, b.x);
      const rec = reconstruct(cfg.model.config, s.params, b.x);
      return [
        tf.sum(tf.squaredDifference(rec, b.x)).dataSync()[0],
        klToPrior(mean, logvar).dataSync()[0] * mean.size,
        mean.size,
      ];
    });
    se += sse;
    kl += skl;
    pixels += b.x.size;
    latents += nl;
    tf.dispose([b.x, b.y]);
  }
  const mse = se / pixels;
  // Pixels span [−1, 1], a range of 2: PSNR = 10·log10(2² / MSE), of the set's mean MSE.
  return { mse, psnr: 10 * Math.log10(4 / mse), kl: kl / latents };
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

await runMain(async () => {
  const a = parseCli(
    "train-vae",
    "Train a KL autoencoder (diffusers' AutoencoderKL layout) for latent diffusion: MSE plus a\n" +
      "weighted KL to N(0, I). Rerunning the same command resumes from its checkpoint; Ctrl-C or\n" +
      "SIGTERM saves one. Writes the weights with their latent scale, a reconstruction grid, a loss\n" +
      "figure and a results JSON with the test-set MSE / PSNR.",
    FLAGS,
    Deno.args,
    crossFlagFaults,
  );
  const name = a.config as VAEConfigName;
  const spec: VaeSpec = { kind: "vae", name, config: VAE_CONFIGS[name] };
  const c = spec.config;
  const load = (split: "train" | "test") =>
    loadDataset(a.dataset, { split, size: c.resolution, channels: c.inChannels as 1 | 3 });
  const train = first(await load("train"), a["train-images"]);
  const dataName = a.dataset.includes("/") ? basename(a.dataset.replace(/\/+$/, "")) : a.dataset;
  const run = a.run ?? `${dataName}-vae-${name}-seed${a.seed}`;
  if (!/^[A-Za-z0-9._-]+$/.test(run)) {
    throw new UsageError(`--run: the default name "${run}" is not file-safe; pass --run`);
  }
  const dir = a.out ?? `checkpoints/vae/${run}`;
  const cfg: VaeRunConfig = {
    dataset: a.dataset,
    model: spec,
    trainImages: count(train),
    steps: a.steps,
    batch: a.batch,
    lr: a.lr,
    klWeight: a["kl-weight"],
    ...(a["clip-norm"] > 0 ? { clipNorm: a["clip-norm"] } : {}),
    seed: a.seed,
  };
  const out = `${resultsDir()}/vae`;
  const resultsPath = `${out}/${run}.json`;

  const engine = await initEngine({ backend: a.backend });
  const handle = await startRun(
    "vae",
    run,
    {
      ...cfg,
      checkpointDir: dir,
      testImages: a["test-images"],
      scaleImages: a["scale-images"],
      params: numParams(c),
    },
    a.seed,
    { engine, task: "train-vae" },
  );
  console.error(
    `train-vae: ${run}: ${count(train)} images of ${train.shape.join("×")}, ${numParams(c)} ` +
      `params, ${cfg.steps} steps of ${cfg.batch}`,
  );

  // ---- train (or resume) --------------------------------------------------------------------
  await Deno.mkdir(dir, { recursive: true });
  const opts: StepOptions = { optimizer: adam({ lr: cfg.lr }), clipNorm: cfg.clipNorm };
  const every = a["log-every"];
  const start = await resumeOrInit(cfg, dir, opts, every);
  const resumedFrom = start.state.step;
  if (resumedFrom > 0 && !a.quiet) {
    console.error(`train-vae: resuming from step ${resumedFrom} (${checkpointPath(dir)})`);
  }
  const keys = runKeys(cfg.seed);
  const order = new BatchOrder(keys.data, count(train), cfg.batch);
  const curves = start.record.curves;
  let windows = start.record.windows;
  const record = (): RunRecord => ({ curves, windows, segments: start.record.segments });
  const clock = new SegmentClock(resumedFrom, handle.env);
  let saved: Segment | undefined;
  const { state, signal } = await runLoop(start.state, {
    label: "train-vae",
    totalSteps: cfg.steps,
    quiet: a.quiet,
    checkpointEvery: a["checkpoint-every"],
    save: (s) => saveRun(dir, cfg, s, every, record(), saved = clock.at(s.step)),
    step: (s) => {
      let rec = NaN, kl = NaN;
      const r = trainStep(s, () => {
        const { x, y } = batchAt(train, order.indices(s.step));
        y.dispose();
        const l = vaeLoss(c, s.params, x, fold(keys.noise, s.step), { klWeight: cfg.klWeight });
        rec = l.rec.dataSync()[0];
        kl = l.kl.dataSync()[0];
        return l.loss; // x and the two terms are freed by the gradient's tidy
      }, opts);
      return { state: r.state, metrics: { loss: r.loss, rec, kl } };
    },
    onStep: (step, m) => {
      for (const k of CURVES) windows[k].push(m[k]);
      if (step % every === 0) {
        for (const k of CURVES) {
          curves[k].push([step, windows[k].reduce((x, y) => x + y, 0) / windows[k].length]);
        }
        windows = emptyWindows();
      }
    },
  });
  const segments = saved ? [...start.record.segments, saved] : start.record.segments;
  if (signal) {
    console.error(
      `train-vae: stopped at step ${state.step}; checkpoint in ${
        checkpointPath(dir)
      }. Rerun to resume.`,
    );
    disposeState(state);
    Deno.exit(signal === "SIGINT" ? 130 : 143);
  }
  if (state.step === resumedFrom && await fileExists(resultsPath)) {
    console.error(`train-vae: ${run} is finished (step ${state.step}); results in ${resultsPath}`);
    disposeState(state);
    return;
  }

  // ---- latent scale, test reconstruction ----------------------------------------------------
  const t0 = performance.now();
  const trainMeans = latentMeans(cfg, state, first(train, a["scale-images"])).means;
  const scale = latentScale(trainMeans);
  trainMeans.dispose();
  const test = first(await load("test"), a["test-images"]);
  const { means: testMeans, variance: posteriorVar } = latentMeans(cfg, state, test);
  // On images the scale was not estimated from: ≈ 1 when it transfers.
  const { mean: latentMean, variance } = tf.tidy(() => {
    const m = tf.moments(tf.mul(testMeans, scale));
    return { mean: m.mean.dataSync()[0], variance: m.variance.dataSync()[0] };
  });
  testMeans.dispose();
  const t = testMetrics(cfg, state, test);
  const evalS = (performance.now() - t0) / 1000;

  // ---- artifacts ----------------------------------------------------------------------------
  const artifacts: string[] = [];
  const weights = `${out}/${run}.weights.safetensors`;
  await saveVae(weights, state.params, { spec, scale, dataset: cfg.dataset, step: state.step });
  artifacts.push(weights);
  // Rows of 8 test images, each followed by the row of their reconstructions.
  const cols = 8, rows = Math.max(1, Math.min(4, Math.floor(count(test) / cols)));
  const shown = Math.min(count(test), rows * cols);
  const grid = `${out}/${run}-reconstructions.png`;
  const pairs = tf.tidy(() => {
    const { x } = batchAt(test, Int32Array.from({ length: shown }, (_, i) => i));
    const r = tf.clipByValue(reconstruct(c, state.params, x), -1, 1);
    const perRow = (u: tf.Tensor4D) => tf.split(u, Math.ceil(shown / cols), 0);
    const xs = perRow(x), rs = perRow(r as tf.Tensor4D);
    return tf.concat(xs.flatMap((row, i) => [row, rs[i]]), 0) as tf.Tensor4D;
  });
  await saveImageGrid(grid, pairs, { cols });
  pairs.dispose();
  artifacts.push(grid);
  if (curves.loss.length > 1) {
    const spec = lineChart({
      title: `${run}: autoencoder loss (rec: MSE per pixel, kl: per latent element)`,
      x: "step",
      y: "loss",
      series: { loss: curves.loss, rec: curves.rec, kl: curves.kl },
      logY: true,
    });
    artifacts.push(...await renderFigure(spec, `${out}/${run}-loss`));
  }

  const tail = (k: Curve) => {
    const pts = curves[k].slice(-Math.max(1, Math.floor(curves[k].length / 10)));
    return pts.length ? pts.reduce((s, p) => s + p[1], 0) / pts.length : null;
  };
  const path = await finishRun(handle, {
    metrics: {
      steps: state.step,
      resumed_from: resumedFrom,
      segments: segments.length,
      epochs: (state.step * cfg.batch) / count(train),
      final_loss: tail("loss"),
      final_rec: tail("rec"),
      final_kl: tail("kl"),
      test_images: count(test),
      test_mse: t.mse,
      test_psnr_db: t.psnr,
      test_kl: t.kl,
      latent_shape: latentShape(c),
      latent_scale: scale,
      scale_images: Math.min(a["scale-images"], count(train)),
      latent_std_scaled_test: Math.sqrt(variance),
      latent_mean_scaled_test: latentMean,
      // The posterior's σ in the same units (RMS over elements): the noise a sampled latent
      // carries next to the unit spread of the means; small means informative latents.
      posterior_std_scaled_test: scale * Math.sqrt(posteriorVar),
      images_per_s: throughput(segments, cfg.batch),
      loss_curve: { every, points: curves.loss },
      rec_curve: { every, points: curves.rec },
      kl_curve: { every, points: curves.kl },
    },
    timings: { eval_s: evalS, ...trainTime(segments) },
    artifacts,
    segments,
  });
  disposeState(state);
  console.error(
    `train-vae: test MSE ${t.mse.toFixed(5)} (PSNR ${t.psnr.toFixed(2)} dB), latent scale ` +
      `${scale.toFixed(5)}; wrote ${path}`,
  );
});

function trainTime(segments: readonly Segment[]): Record<string, number> {
  const s = segments.reduce((a, g) => a + (g.train_s ?? 0), 0);
  return s > 0 ? { train_s: s } : {};
}
