// deno task baselines: the supervised and pixel baselines the frozen-feature probes are compared
// with, under the same probe protocol and splits: a linear probe on raw pixels; the denoiser's
// encoder (input blocks + middle, seed 001 Table 1's "U-Net Encoder") trained from scratch with
// labels on clean images (t = 0), 2×2 pool + linear on the middle block; and a small supervised
// CNN (the CNN head of lib/models/heads.ts, 3×3 kernels, trained end to end on pixels).
import * as tf from "@tensorflow/tfjs";
import { COMMON_FLAGS, parseCli, runMain } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { describeHead, type HeadSpec, parseHeadSpec } from "../lib/models/heads.ts";
import { blockTable, features, initParams, type ModelSpec } from "../lib/models/mod.ts";
import { adaptiveAvgPool, initParam, linear, linearSpecs } from "../lib/models/nn.ts";
import { countParams, type Params, toVariables } from "../lib/params.ts";
import { type Classifier, type HeadJob, memoryRows } from "../lib/probe.ts";
import { defaultBlock, PROBE_FLAGS, setupProbe, trainScoredHead } from "../lib/probe_run.ts";
import { foldName, type Rng, rng } from "../lib/random.ts";
import { finishRun, startRun } from "../lib/results.ts";

const FLAGS = {
  ...COMMON_FLAGS,
  ...PROBE_FLAGS,
  baseline: {
    kind: "string",
    default: "raw-pixels",
    help: "which baseline",
    choices: ["raw-pixels", "cnn-supervised", "unet-encoder-supervised"],
  },
  cnn: {
    kind: "string",
    default: "cnn:32,64:2:3",
    help: "the supervised CNN (a heads.ts CNN spec)",
  },
  run: { kind: "string", help: "run name (default: <dataset>-<baseline>-seed<seed>)" },
} as const;

/** The encoder of `spec` up to block `mid`, from scratch, with a 2×2-pool linear classifier. */
function encoderClassifier(spec: ModelSpec, mid: number, classes: number, key: Rng): Classifier {
  const all = initParams(spec, foldName(key, "encoder"));
  // The encoder's own parameters: what a pass that stops after the middle block reads.
  const enc = /^(time_embed|label_emb|input_blocks|middle_block)\./;
  const params: Record<string, tf.Variable> = {};
  for (const [k, v] of Object.entries(all)) {
    if (enc.test(k)) params[k] = v;
    else v.dispose();
  }
  const c = blockTable(spec).find((b) => b.b === mid)!.channels;
  const head = Object.fromEntries(
    linearSpecs("head", 4 * c, classes).map((
      [n, s],
    ) => [n, initParam(foldName(key, "head"), n, s)]),
  );
  Object.assign(params, toVariables(head));
  return {
    params,
    paramCount: countParams(
      Object.fromEntries(Object.entries(params).map(([k, v]) => [k, v.shape])),
    ),
    apply: (p: Params, x: tf.Tensor4D) =>
      tf.tidy(() => {
        const n = x.shape[0];
        const maps = features(spec, p, x, tf.zeros([n], "int32") as tf.Tensor1D, [mid]);
        const pooled = tf.reshape(adaptiveAvgPool(maps.get(mid)!, 2), [n, -1]);
        return linear(pooled, p["head.weight"], p["head.bias"]) as tf.Tensor2D;
      }),
  };
}

await runMain(async () => {
  const a = parseCli(
    "baselines",
    "Pixel and supervised baselines under the probe protocol.",
    FLAGS,
  );
  const engine = await initEngine({ backend: a.backend });
  const s = await setupProbe(a, a.seed);
  const spec = s.loaded.model.spec;
  const mid = defaultBlock(spec);
  const train = memoryRows(s.train.images, s.train.shape),
    test = memoryRows(s.test.images, s.test.shape);
  const key = foldName(rng(a.seed), "baseline");
  let job: HeadJob;
  let described: string;
  let cell: { t: number | null; block: number | null; pool: number | null };
  if (a.baseline === "raw-pixels") {
    job = { name: "raw-pixels", head: { kind: "linear" }, train };
    described = "linear on pixels";
    cell = { t: null, block: null, pool: s.train.shape[0] };
  } else if (a.baseline === "cnn-supervised") {
    const head: HeadSpec = parseHeadSpec(a.cnn);
    job = { name: "cnn-supervised", head, train };
    described = describeHead(head);
    cell = { t: null, block: null, pool: head.kind === "cnn" ? head.pool : null };
  } else {
    job = {
      name: "unet-encoder-supervised",
      model: encoderClassifier(spec, mid, s.classes, key),
      train,
    };
    described = `${spec.kind} ${spec.name} encoder (blocks 1..${mid}) + 2×2 pool + linear, t = 0`;
    cell = { t: 0, block: mid, pool: 2 };
  }
  const run = a.run ?? `${s.dataset}-${a.baseline}-seed${a.seed}`;
  const handle = await startRun(
    "baselines",
    run,
    {
      dataset: s.dataset,
      ...cell,
      head: a.baseline,
      head_spec: described,
      architecture_from: a.baseline === "unet-encoder-supervised"
        ? { weights: a.weights, model: spec.name }
        : null,
      recipe: { name: a.recipe, ...s.recipe },
      train_images: s.fit.length,
      val_images: s.val.length,
      test_images: s.test.labels.length,
      train_percent: a["train-percent"],
      test_percent: a["test-percent"],
    },
    a.seed,
    { engine, task: "baselines" },
  );
  const { metrics, score, trainS } = await trainScoredHead(
    s,
    job,
    { labels: s.train.labels, fit: s.fit },
    test,
    key,
    {
      label: a.baseline,
      quiet: a.quiet,
    },
  );
  const path = await finishRun(handle, { metrics, timings: { train_s: trainS } });
  console.error(
    `baselines: ${a.baseline}: val ${(100 * score.val).toFixed(2)} %, test ${
      (100 * score.test).toFixed(2)
    } %`,
  );
  console.error(`baselines: wrote ${path}`);
});
