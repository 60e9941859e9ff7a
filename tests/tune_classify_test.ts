// deno task tune and deno task classify end to end on the embedded MNIST with a tiny pixel DiT
// (16×16×1, pre-trained for a few steps) and a tiny latent DiT (random weights in a random tiny
// autoencoder's 4×4×4 latents): the results JSON fields, the carried / fresh / dropped counts of
// each source condition, a tune resumed at an evaluation step equal to the unbroken run, a rerun
// of a finished run, a classify resumed image by image equal to an unbroken one, determinism
// for a seed, and the errors of a wrong input.
import { assert, assertEquals } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import * as tf from "@tensorflow/tfjs";
import { loadDataset, take } from "../lib/data/dataset.ts";
import { sha256File } from "../lib/features_cache.ts";
import { saveCheckpoint } from "../lib/io/checkpoint.ts";
import { readSafetensors } from "../lib/io/safetensors.ts";
import { saveVae } from "../lib/latent.ts";
import {
  conditionedSpec,
  conditioning,
  initParams,
  type ModelSpec,
  presetSpec,
} from "../lib/models/mod.ts";
import { type DiTConfig, ENCODER_PREFIX, encoderFor } from "../lib/models/dit.ts";
import * as vae from "../lib/models/vae.ts";
import { disposeParams } from "../lib/params.ts";
import { disposeState, pretrain, type PretrainConfig } from "../lib/pretrain.ts";
import { rng } from "../lib/random.ts";
import { captureEnv, parseResult } from "../lib/results.ts";
import { loadFrozenModel } from "../lib/frozen_model.ts";
import { pretrainingOf, tune, type TuneConfig, validSet } from "../lib/tune.ts";
import { disposeTensors } from "../lib/optim.ts";
import { scriptCommand } from "./script.ts";

const engine = await initEngine({ backend: "wasm", announce: false });
const tmp = await Deno.makeTempDir();
const env = { DP_RESULTS_DIR: `${tmp}/results` };
const dec = new TextDecoder();

async function run(script: string, args: string[], expectCode = 0) {
  const out = await scriptCommand(script, args, { env }).output();
  const r = { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  assertEquals(r.code, expectCode, `${script} ${args.join(" ")}\n${r.stderr}`);
  return r;
}

const result = async (exp: string, name: string) => {
  const path = `${tmp}/results/${exp}/${name}.json`;
  return parseResult(await Deno.readTextFile(path), path);
};

/** The tensors of a safetensors file, as plain arrays by name. */
const tensorsOf = async (path: string) =>
  Object.fromEntries(
    Object.entries((await readSafetensors(path)).tensors).map(([k, t]) => [k, Array.from(t.data)]),
  );

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/** The tiny DiT fitted to 16 px grayscale (tests/pretrain_test.ts's `ditSpec`), with an encoder. */
const reprDit = (): ModelSpec => {
  const s = pixelDit(), c = s.config as DiTConfig;
  return { ...s, config: { ...c, encoder: encoderFor(c, "tiny") } } as ModelSpec;
};

/** The tiny DiT fitted to 16 px grayscale (tests/pretrain_test.ts's `ditSpec`). */
const pixelDit = (): ModelSpec => {
  const s = presetSpec("dit", "tiny");
  return { ...s, config: { ...s.config, inputSize: 16, inChannels: 1, patchSize: 4 } } as ModelSpec;
};

const baseConfig = {
  dataset: "mnist",
  schedule: "linear",
  diffusionSteps: 1000,
  batch: 4,
} as const;

/** A weights file of `model` with random weights, as deno task pretrain --export-weights writes. */
async function randomSource(path: string, model: ModelSpec, extra: Record<string, unknown> = {}) {
  const params = initParams(model, rng(5));
  await saveCheckpoint(path, {
    params,
    step: 0,
    meta: { config: { ...baseConfig, model, ...extra } },
  });
  disposeParams(params);
}

// An unconditional pixel DiT pre-trained for 2 steps, exported as scripts/pretrain.ts does.
const uncond = `${tmp}/uncond.weights.safetensors`;
{
  const ds = await loadDataset("mnist", { split: "train", size: 16 });
  const cfg: PretrainConfig = {
    ...baseConfig,
    model: pixelDit(),
    steps: 2,
    lr: 1e-3,
    emaRate: 0.9,
    seed: 1,
  };
  const env = await captureEnv(engine);
  const r = await pretrain(cfg, ds, { dir: `${tmp}/pre`, checkpointEvery: 100, quiet: true, env });
  await saveCheckpoint(uncond, { params: r.state.ema!, step: r.state.step, meta: { config: cfg } });
  disposeState(r.state);
}
// Representation- and class-conditioned sources (random weights: only the carrying is tested).
const repr = `${tmp}/repr.weights.safetensors`;
await randomSource(repr, reprDit());
const classCond = `${tmp}/class.weights.safetensors`;
await randomSource(classCond, conditionedSpec(pixelDit(), 10, 0.1));
// A latent DiT in the 4×4×4 latents of a random tiny autoencoder, and a copy whose record of the
// autoencoder's sha256 is wrong.
const vaePath = `${tmp}/vae.weights.safetensors`;
{
  const c = vae.VAE_CONFIGS.tiny;
  const params = vae.init(c, rng(6));
  await saveVae(vaePath, params, {
    spec: { kind: "vae", name: "tiny", config: c },
    scale: 1,
    dataset: "mnist",
    step: 0,
  });
  disposeParams(params);
}
const latentDit = (): ModelSpec => {
  const s = presetSpec("dit", "tiny");
  return { ...s, config: { ...s.config, inputSize: 4, inChannels: 4, patchSize: 2 } } as ModelSpec;
};
const latentRecord = { kind: "vae", weights: vaePath, sha256: await sha256File(vaePath), scale: 1 };
const latent = `${tmp}/latent.weights.safetensors`;
await randomSource(latent, latentDit(), { latent: latentRecord });
const stale = `${tmp}/stale.weights.safetensors`;
await randomSource(stale, latentDit(), { latent: { ...latentRecord, sha256: "0".repeat(64) } });

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

const tuneArgs = (weights: string, name: string, ...more: string[]) => [
  ...["--weights", weights, "--train", "40", "--valid", "10", "--test", "10"],
  ...["--batch", "4", "--eval-every", "3", "--valid-draws", "2", "--log-every", "1"],
  ...["--out", `${tmp}/ck/${name}`, "--run", name, "--quiet", ...more],
];
const tuned = (name: string) => `${tmp}/results/tune/${name}.weights.safetensors`;
const classifyArgs = (name: string, weights: string, ...more: string[]) => [
  ...["--weights", weights, "--state-dir", `${tmp}/state/${name}`, "--run", name, ...more],
];

// The tuned files the classify tests read, made once (by the tune tests, or here when filtered).
const TUNED: Record<string, string[]> = {
  bin: tuneArgs(uncond, "bin", "--task", "binary", "--steps", "6"),
  ten: tuneArgs(repr, "ten", "--steps", "3"),
};
const made = new Map<string, Promise<unknown>>();
const tunedFile = async (name: string) => {
  if (!made.has(name)) made.set(name, run("tune", TUNED[name]));
  await made.get(name);
  return tuned(name);
};

Deno.test("conditionedSpec() and pretrainingOf() name the tuned model and its row", () => {
  assertEquals(conditioning(conditionedSpec(pixelDit(), 2, 0.1)), { classes: 2, dropRate: 0.1 });
  const fromRepr = conditionedSpec(reprDit(), 10, 0.1);
  assertEquals((fromRepr.config as DiTConfig).encoder, undefined);
  assertEquals(conditioning(fromRepr), { classes: 10, dropRate: 0.1 });
  const unet = conditionedSpec(presetSpec("unet", "tiny"), 2, 0.1);
  assertEquals(conditioning(unet), { classes: 2, dropRate: 0.1 });
  const rows = (["none", "repr", "class"] as const).map((c) => pretrainingOf(c, false));
  assertEquals(rows, ["unconditional", "representation", "class"]);
  assertEquals(pretrainingOf("repr", true), "none");
});

Deno.test("validSet() draws per image; tune() frees every tensor it does not return", async () => {
  const ds = await loadDataset("mnist", { split: "test", size: 16 });
  const first = (n: number) => take(ds, Int32Array.from({ length: n }, (_, i) => i));
  const a = validSet(first(3), 2, 1000, 7), b = validSet(first(5), 2, 1000, 7);
  assertEquals(Array.from(a.t), Array.from(b.t.subarray(0, 6)));
  assertEquals(Array.from(a.eps), Array.from(b.eps.subarray(0, a.eps.length)));
  const model = conditionedSpec(pixelDit(), 10, 0.1);
  const cfg: TuneConfig = {
    ...baseConfig,
    model,
    source: { weights: "none", sha256: "none", condition: "none", fromScratch: true },
    pretraining: "none",
    protocol: { task: "10-class", train: 8, valid: 4, test: 4, seed: 0 },
    steps: 2,
    lr: 1e-4,
    emaRate: 0.999,
    evalEvery: 1,
    patience: 0,
    validDraws: 1,
    seed: 0,
  };
  const before = tf.memory().numTensors;
  const r = await tune(cfg, initParams(model, rng(1)), first(8), first(4), {
    dir: `${tmp}/leaks`,
    checkpointEvery: 100,
    quiet: true,
    env: await captureEnv(engine),
  });
  assertEquals(r.record.valid.map((p) => p[0]), [0, 1, 2]);
  disposeState(r.state);
  disposeTensors(r.best);
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("deno task tune and classify --help list their flags; bad flags are usage errors", async () => {
  const t = await run("tune", ["--help"]);
  for (const f of ["--from-scratch", "--patience", "--eval-every", "--class-dropout"]) {
    assert(t.stdout.includes(f), f);
  }
  const c = await run("classify", ["--help"]);
  for (const f of ["--method <dc|dc-zero>", "--stages", "--samples", "--loss <l2|l1>"]) {
    assert(c.stdout.includes(f), f);
  }
  const bad = await run("tune", ["--task", "three"], 2);
  assert(bad.stderr.includes("--weights: required"), bad.stderr);
  assert(bad.stderr.includes(`--task: "three" is not one of`), bad.stderr);
  const stages = await run("classify", ["--weights", "x", "--stages", "10-3"], 2);
  assert(stages.stderr.includes(`--stages: "10-3" is not samples:keep`), stages.stderr);
});

Deno.test("deno task tune: binary from an unconditional source, its fields, resume and determinism", async () => {
  await tunedFile("bin");
  const r = await result("tune", "bin");
  const c = r.config as Record<string, unknown>, m = r.metrics as Record<string, unknown>;
  const row = [c.pretraining, c.condition, c.task, c.from_scratch];
  assertEquals(row, ["unconditional", "none", "binary", false]);
  assertEquals(c.sha256, await sha256File(uncond));
  const sizes = (c.protocol as { sizes: unknown }).sizes;
  assertEquals(sizes, { pool: 8000, train: 40, valid: 10, test: 10 });
  // Every tensor carried but the label table, which the unconditional source lacks.
  const carry = c.carry as Record<string, unknown>;
  assertEquals([carry.fresh, carry.dropped], [1, 0]);
  assertEquals(carry.fresh_keys, "y_embedder.embedding_table.weight");
  assertEquals(m.steps, 6);
  const valid = m.valid_curve as [number, number][];
  assertEquals(valid.map((p) => p[0]), [0, 3, 6]);
  assertEquals([m.best_step, m.best_valid_loss], valid.reduce((a, b) => (b[1] < a[1] ? b : a)));
  assert((m.train_s as number) > 0 && (m.images_per_s as number) > 0);
  assertEquals((m.loss_curve as { points: unknown[] }).points.length, 6);
  // The tuned weights load back as a two-class model, the best evaluation's.
  const loaded = await loadFrozenModel(tuned("bin"));
  assertEquals(conditioning(loaded.model.spec), { classes: 2, dropRate: 0.1 });
  assertEquals(loaded.step, m.best_step);
  disposeParams(loaded.model.params);

  // Rerun: finished. Stopped at step 3 (an evaluation step) and resumed: the unbroken run, to
  // the bit (every draw is a function of the seed and the step).
  const again = await run("tune", TUNED.bin);
  assert(again.stderr.includes("is finished"), again.stderr);
  await run("tune", tuneArgs(uncond, "bin2", "--task", "binary", "--steps", "3"));
  await run("tune", tuneArgs(uncond, "bin2", "--task", "binary", "--steps", "6"));
  const resumed = (await result("tune", "bin2")).metrics as Record<string, unknown>;
  assertEquals([resumed.resumed_from, resumed.segments], [3, 2]);
  assertEquals(resumed.valid_curve, m.valid_curve);
  assertEquals(resumed.loss_curve, m.loss_curve);
  assertEquals(await tensorsOf(tuned("bin2")), await tensorsOf(tuned("bin")));
});

Deno.test("deno task tune: 10-class from a representation source drops its encoder; from scratch carries none", async () => {
  await tunedFile("ten");
  const r = await result("tune", "ten");
  const row = [r.config.pretraining, r.config.condition, r.config.task];
  assertEquals(row, ["representation", "repr", "10-class"]);
  const carry = r.config.carry as Record<string, number | string>;
  assert((carry.dropped as number) > 2, `dropped ${carry.dropped}`);
  assert(String(carry.dropped_keys).includes(ENCODER_PREFIX), String(carry.dropped_keys));
  assertEquals(carry.fresh, 1);
  await run("tune", tuneArgs(uncond, "scratch", "--steps", "3", "--from-scratch"));
  const s = await result("tune", "scratch");
  assertEquals(s.config.pretraining, "none");
  assertEquals((s.config.carry as Record<string, number>).carried, 0);
});

Deno.test("deno task tune: early stopping keeps the best weights, and Ctrl-C saves a checkpoint to resume", async () => {
  // A rate far too high makes the valid loss jump: two evaluations without a better one stop it.
  const wild = tuneArgs(
    uncond,
    "wild",
    ...["--task", "binary", "--lr", "0.05", "--ema", "0", "--steps", "40"],
    ...["--eval-every", "1", "--patience", "2"],
  );
  await run("tune", wild);
  const m = (await result("tune", "wild")).metrics as Record<string, unknown>;
  assertEquals(m.early_stopped, true);
  assertEquals(m.steps, (m.best_step as number) + 2);
  const loaded = await loadFrozenModel(tuned("wild"));
  assertEquals(loaded.step, m.best_step);
  disposeParams(loaded.model.params);
  const again = await run("tune", wild);
  assert(again.stderr.includes("is finished"), again.stderr);

  // SIGINT once the first checkpoint is on disk: the step in flight finishes and is saved.
  const args = tuneArgs(
    uncond,
    "sig",
    ...["--steps", "60", "--eval-every", "20", "--checkpoint-every", "5"],
  );
  const child = scriptCommand("tune", args, { env, stdout: "null" }).spawn();
  const ck = `${tmp}/ck/sig/checkpoint.safetensors`;
  while (!(await Deno.stat(ck).then(() => true, () => false))) {
    await new Promise((r) => setTimeout(r, 20));
  }
  child.kill("SIGINT");
  const out = await child.output();
  const stderr = dec.decode(out.stderr);
  assertEquals(out.code, 130, stderr);
  assert(stderr.includes("Rerun to resume"), stderr);
  await run("tune", args);
  const r = (await result("tune", "sig")).metrics as Record<string, number>;
  assert(r.resumed_from > 0 && r.resumed_from < 60, `resumed from ${r.resumed_from}`);
  assertEquals((r.valid_curve as unknown as number[][]).map((p) => p[0]), [0, 20, 40, 60]);
});

Deno.test("deno task classify: DC and DC Zero, binary and 10-class, with their fields", async () => {
  const bin = await tunedFile("bin");
  for (const method of ["dc", "dc-zero"]) {
    const name = `bin-${method}`;
    await run(
      "classify",
      classifyArgs(name, bin, "--method", method, "--stages", "2:1", "--quiet"),
    );
    const r = await result("classify", name);
    const m = r.metrics as Record<string, number>;
    const row = [r.config.method, r.config.pretraining, r.config.task];
    assertEquals(row, [method, "unconditional", "binary"]);
    for (const k of ["accuracy", "f1", "recall", "precision", "ece"]) {
      assert(m[k] >= 0 && m[k] <= 1, `${k} ${m[k]}`);
    }
    assert(m.nll > 0 && m.temperature > 0 && m.images_per_s > 0, JSON.stringify(m));
    assertEquals(m.evaluations_per_image, 2 * 2); // 2 classes × 2 timesteps
    assertEquals(m.images, 10);
    const cm = r.metrics.confusion as number[][];
    assertEquals(cm.flat().reduce((a, b) => a + b, 0), 10);
  }
  // 10 classes at 2 timesteps, then the best 3 at 2 more: 10·2 + 3·2 evaluations per image; the
  // valid split sees all 10 at all 4.
  const ten = await tunedFile("ten");
  await run(
    "classify",
    classifyArgs("ten", ten, "--method", "dc", "--stages", "2:3,4:1", "--quiet"),
  );
  const t = await result("classify", "ten");
  assertEquals([t.config.pretraining, t.config.task], ["representation", "10-class"]);
  const tm = t.metrics as Record<string, number>;
  assertEquals([tm.evaluations_per_image, tm.valid_evaluations_per_image], [26, 40]);
});

Deno.test("deno task classify: a run stopped after 4 images resumes to the unbroken run's metrics", async () => {
  const bin = await tunedFile("bin");
  const args = ["--method", "dc-zero", "--stages", "2:1"];
  await run("classify", classifyArgs("whole", bin, ...args, "--quiet"));
  await run(
    "classify",
    classifyArgs("part", bin, ...args, "--images", "4", "--batch", "3", "--quiet"),
  );
  const rest = await run("classify", classifyArgs("part", bin, ...args, "--batch", "3"));
  assert(rest.stderr.includes("test: resuming at image 4"), rest.stderr);
  const lines = (await Deno.readTextFile(`${tmp}/state/part/test.jsonl`)).trim().split("\n");
  assertEquals(lines.length, 1 + 10);
  const timing = new Set(["images_per_s", "test_s", "valid_images_per_s", "valid_s"]);
  const scores = (m: Record<string, unknown>) =>
    Object.fromEntries(Object.entries(m).filter(([k]) => !timing.has(k)));
  const whole = (await result("classify", "whole")).metrics;
  const part = (await result("classify", "part")).metrics;
  // The batches differ (16 vs 3), and oneDNN's kernels can round differently per batch size on
  // some CPUs (lib/diffusion_classifier.ts): counts and predictions equal, calibration scores to
  // 5e-3 relative (the temperature fit on the validation split amplifies the rounding: 2e-3 seen).
  const calibration = new Set(
    ["ece", "ece_tau1", "nll", "nll_tau1", "temperature", "valid_nll", "valid_nll_tau1"],
  );
  const exact = (m: Record<string, unknown>) =>
    Object.fromEntries(Object.entries(scores(m)).filter(([k]) => !calibration.has(k)));
  assertEquals(exact(part), exact(whole));
  for (const k of calibration) {
    const a = part[k] as number, b = whole[k] as number;
    if (b === undefined) continue;
    assert(Math.abs(a - b) <= 5e-3 * Math.max(1, Math.abs(b)), `${k}: ${a} vs ${b}`);
  }
  // A rerun of the finished run classifies nothing and gives the same metrics, timings included.
  const again = await run("classify", classifyArgs("part", bin, ...args, "--batch", "3"));
  assert(!again.stderr.includes("resuming"), again.stderr);
  assertEquals((await result("classify", "part")).metrics, part);
});

Deno.test("deno task tune and classify in a latent space: encoded splits, and a changed autoencoder refused", async () => {
  await run("tune", tuneArgs(latent, "lat", "--steps", "3", "--task", "binary"));
  const r = await result("tune", "lat");
  assertEquals((r.config.latent as { sha256: string }).sha256, latentRecord.sha256);
  assertEquals((r.config.protocol as { image_shape: number[] }).image_shape, [8, 8, 1]);
  await run("classify", classifyArgs("lat", tuned("lat"), "--stages", "2:1", "--images", "4"));
  const c = await result("classify", "lat");
  assertEquals([c.config.method, c.metrics.images], ["dc-zero", 4]);
  const bad = await run("tune", tuneArgs(stale, "stale", "--steps", "3"), 1);
  const want = `was pre-trained in the latents of sha256 ${"0".repeat(64)}`;
  assert(bad.stderr.includes(want), bad.stderr);
});

Deno.test("deno task classify refuses a model without classes and one tune did not write", async () => {
  const none = await run("classify", classifyArgs("none", uncond), 1);
  assert(none.stderr.includes("needs a class-conditional model"), none.stderr);
  const untuned = await run("classify", classifyArgs("untuned", classCond), 1);
  assert(untuned.stderr.includes("records no downstream protocol"), untuned.stderr);
});

globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));
