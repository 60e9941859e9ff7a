// deno task cka: seed 001 §4.3's representation analysis (Figure 6) on our U-Net: minibatch CKA
// (lib/metrics/cka.ts) on --images test images between
//   1. every pair of blocks at one timestep (--t),
//   2. every pair of timesteps of --ts at one block (--block, default the bottleneck),
//   3. every block at --t and the layers of a small supervised CNN trained here on pixels (the
//      paper compares with ResNet-50 and ViT layers; --cnn none skips it).
// One streaming pass: each minibatch of images yields the features of every (t, block) cell and
// the CNN's activations, which the accumulator adds; nothing larger than a minibatch is held.
// Every map, diffusion or CNN, is average-pooled to k×k with k = min(--pool, its side): pool 4
// keeps 512–2,048 dimensions per block of the `small` U-Net (a full 28×28×32 map has 25,088, and
// the paper's standard feature has d = 4,096); --pool 28 keeps every map whole.
import * as tf from "@tensorflow/tfjs";
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { count, take } from "../lib/data/dataset.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { type Cell, cellDim, cellName, checkCells, extractFeatures } from "../lib/features.ts";
import {
  ckaAccumulator,
  type CkaKernel,
  matrixPairs,
  MIN_BATCH,
  type Rows,
} from "../lib/metrics/cka.ts";
import {
  applyHead,
  cnnActivations,
  describeHead,
  type HeadSpec,
  parseHeadSpec,
} from "../lib/models/heads.ts";
import { blockTable } from "../lib/models/mod.ts";
import { adaptiveAvgPool } from "../lib/models/nn.ts";
import { disposeParams } from "../lib/params.ts";
import { accuracy, memoryRows, predict, type TrainedHead, trainHeads } from "../lib/probe.ts";
import {
  defaultBlock,
  intList,
  noiseKeyOf,
  PROBE_FLAGS,
  probeConfig,
  setupProbe,
  trainingConfig,
} from "../lib/probe_run.ts";
import { progress } from "../lib/progress.ts";
import { foldName, permutation, rng } from "../lib/random.ts";
import { heatmap, renderFigure } from "../lib/report/figures.ts";
import { finishRun, resultsDir, startRun } from "../lib/results.ts";

// Features are extracted here, not read through the cache: the cache flags do not apply.
const { "cache-dir": _cacheDir, "no-cache": _noCache, "memory-gb": _memoryGb, ...probeFlags } =
  PROBE_FLAGS;

const FLAGS = {
  ...COMMON_FLAGS,
  ...probeFlags,
  images: {
    kind: "int",
    default: 2000,
    help: "test images to compare on (a seeded subset; seed 001 uses ImageNet-50's 2,500)",
    min: MIN_BATCH,
  },
  t: { kind: "int", default: 50, help: "timestep of the block × block and CNN matrices", min: 0 },
  block: {
    kind: "int",
    help: "block of the timestep × timestep matrix (default: bottleneck)",
    min: 1,
  },
  ts: {
    kind: "string",
    default: "10,30,50,90,150,300,500,700",
    help: "timesteps of the timestep × timestep matrix, comma-separated",
  },
  pool: {
    kind: "int",
    default: 4,
    help: "average-pool every map to k×k, k = min(pool, the map's side); 28 keeps maps whole",
    min: 1,
  },
  kernel: { kind: "string", default: "linear", help: "CKA kernel", choices: ["linear", "rbf"] },
  "rbf-fraction": {
    kind: "float",
    default: 0.8,
    help: "RBF σ as a fraction of the median pairwise distance (per minibatch)",
    minExclusive: 0,
  },
  cnn: {
    kind: "string",
    default: "cnn:32,64:2:3",
    help: "the supervised CNN trained on pixels (a heads.ts CNN spec), or none",
  },
  epochs: { kind: "int", default: 3, help: "epochs of the supervised CNN", min: 1 },
  "extract-batch": {
    kind: "int",
    default: 250,
    help: "images per network call, and per CKA minibatch (HSIC_1 is summed over them)",
    min: MIN_BATCH,
  },
  run: { kind: "string", help: "run name (default: <dataset>-cka-seed<seed>)" },
} as const;

/** One matrix: its row and column labels and the names of their features in the accumulator. */
interface MatrixDef {
  readonly rows: readonly string[];
  readonly cols: readonly string[];
  readonly rowKeys: readonly string[];
  readonly colKeys: readonly string[];
}

const CNN_LAYERS = ["conv1", "conv2", "logits"] as const;
const cnnKey = (layer: string) => `cnn/${layer}`;

/** The supervised CNN, trained on the train split's pixels under the probe recipe. */
async function trainCnn(
  head: HeadSpec,
  s: Awaited<ReturnType<typeof setupProbe>>,
  seed: number,
  quiet: boolean,
): Promise<{ trained: TrainedHead; valAccuracy: number }> {
  const pixels = memoryRows(s.train.images, s.train.shape);
  const bar = progress({ label: "cka: CNN", total: s.recipe.epochs, quiet });
  const [trained] = await trainHeads(
    [{ name: "cnn", head, train: pixels }],
    s.train.labels,
    s.recipe,
    foldName(rng(seed), "cka-cnn"),
    { classes: s.classes, indices: s.fit, onEpoch: (e, loss) => bar.tick(e, { loss }) },
  );
  bar.done();
  const valAccuracy = accuracy(await predict(trained, pixels, s.val), s.valLabels);
  return { trained, valAccuracy };
}

await runMain(async () => {
  const a = parseCli(
    "cka",
    "CKA between blocks, timesteps, and a supervised CNN's layers (seed 001 §4.3).",
    FLAGS,
  );
  const ts = intList("ts", a.ts);
  const kernel: CkaKernel = a.kernel === "rbf"
    ? { kind: "rbf", fraction: a["rbf-fraction"] }
    : { kind: "linear" };
  let head: HeadSpec | undefined;
  if (a.cnn !== "none") {
    try {
      head = parseHeadSpec(a.cnn);
    } catch (e) {
      throw new UsageError(`--cnn: ${(e as Error).message}`);
    }
    if (head.kind !== "cnn") throw new UsageError(`--cnn "${a.cnn}" is not a CNN head or none`);
  }
  const engine = await initEngine({ backend: a.backend });
  const s = await setupProbe(a, a.seed);
  const model = s.loaded.model, spec = model.spec;
  const table = blockTable(spec);
  const block = a.block ?? defaultBlock(spec);
  const side = (b: number) => table.find((x) => x.b === b)?.resolution ?? a.pool;
  const cellAt = (t: number, b: number): Cell => ({ t, block: b, pool: Math.min(a.pool, side(b)) });
  const blockCells = table.map((b) => cellAt(a.t, b.b));
  const tCells = ts.map((t) => cellAt(t, block));
  const cells = [...new Map([...blockCells, ...tCells].map((c) => [cellName(c), c])).values()];
  try {
    checkCells(model, cells);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }

  // The images: a seeded subset of the test split, in split order; each keeps its split index
  // as the id of its noise, as in the probe scripts.
  const total = count(s.test);
  if (a.images > total) {
    throw new UsageError(`--images ${a.images} is more than the ${total} test images`);
  }
  const ids = a.images === total
    ? Int32Array.from({ length: total }, (_, i) => i)
    : permutation(foldName(rng(a.seed), "cka-images"), total).slice(0, a.images).sort();
  const images = take(s.test, ids);
  // Minibatches as equal as the count allows; the last must still have MIN_BATCH rows.
  const batches = Math.ceil(a.images / a["extract-batch"]);
  const batch = Math.ceil(a.images / batches);
  const last = a.images - (batches - 1) * batch;
  if (last < MIN_BATCH) {
    throw new UsageError(
      `--images ${a.images} in minibatches of ${batch} leaves a last one of ${last} (< ${MIN_BATCH})`,
    );
  }

  const run = a.run ?? `${s.dataset}-cka-seed${a.seed}`;
  const handle = await startRun(
    "cka",
    run,
    {
      ...probeConfig(s, a, a.seed),
      ...trainingConfig(s, a),
      t: a.t,
      block,
      pool: a.pool,
      images: a.images,
      ts,
      head: "cka",
      kernel: a.kernel,
      rbf_fraction: a.kernel === "rbf" ? a["rbf-fraction"] : null,
      minibatch: batch,
      cnn: head ? describeHead(head) : null,
      cnn_recipe: head ? { name: a.recipe, ...s.recipe } : null,
    },
    a.seed,
    { engine, task: "cka" },
  );

  let cnn: { trained: TrainedHead; valAccuracy: number } | undefined;
  const t0 = performance.now();
  if (head) cnn = await trainCnn(head, s, a.seed, a.quiet);
  const cnnTrainS = (performance.now() - t0) / 1000;

  const blockLabels = blockCells.map((c) => `b${c.block}`);
  const defs: Record<string, MatrixDef> = {
    blocks: {
      rows: blockLabels,
      cols: blockLabels,
      rowKeys: blockCells.map(cellName),
      colKeys: blockCells.map(cellName),
    },
    timesteps: {
      rows: ts.map((t) => `t${t}`),
      cols: ts.map((t) => `t${t}`),
      rowKeys: tCells.map(cellName),
      colKeys: tCells.map(cellName),
    },
  };
  if (cnn) {
    defs.cnn = {
      rows: blockLabels,
      cols: [...CNN_LAYERS],
      rowKeys: blockCells.map(cellName),
      colKeys: CNN_LAYERS.map(cnnKey),
    };
  }
  const acc = ckaAccumulator(
    Object.values(defs).flatMap((d) => matrixPairs(d.rowKeys, d.colKeys)),
    kernel,
  );

  // One pass: features of every cell and the CNN's activations per minibatch.
  const per = images.shape[0] * images.shape[1] * images.shape[2];
  const bar = progress({ label: "cka", total: a.images, quiet: a.quiet });
  const pooled = (m: tf.Tensor4D) => adaptiveAvgPool(m, Math.min(a.pool, m.shape[1], m.shape[2]));
  let correct = 0, addS = 0;
  const t1 = performance.now();
  for await (
    const fb of extractFeatures(model, images, cells, {
      noiseKey: noiseKeyOf(a.seed),
      batch,
      ids,
      onBatch: (done) => bar.tick(done),
    })
  ) {
    const rows = new Map<string, Rows>(
      [...fb.rows].map(([k, v]) => [k, { data: v, rows: fb.count }]),
    );
    const owned: tf.Tensor[] = [];
    try {
      if (cnn && head) {
        const { params } = cnn.trained;
        const x = tf.tensor4d(
          images.images.subarray(fb.start * per, (fb.start + fb.count) * per),
          [fb.count, ...images.shape],
        );
        owned.push(x);
        const [c1, c2] = cnnActivations(head, params, x);
        const logits = applyHead(head, params, x);
        owned.push(c1, c2, logits);
        const p1 = pooled(c1), p2 = pooled(c2);
        owned.push(p1, p2);
        rows.set(cnnKey("conv1"), p1).set(cnnKey("conv2"), p2).set(cnnKey("logits"), logits);
        const pred = tf.tidy(() => tf.argMax(logits, 1));
        const p = (await pred.data()) as Int32Array;
        pred.dispose();
        for (let i = 0; i < fb.count; i++) if (p[i] === images.labels[fb.start + i]) correct++;
      }
      const ta = performance.now();
      acc.add(rows);
      addS += (performance.now() - ta) / 1000;
    } finally {
      tf.dispose(owned);
    }
  }
  bar.done();
  const passS = (performance.now() - t1) / 1000;
  if (cnn) disposeParams(cnn.trained.params);

  // NaN (a constant representation) is not JSON: it is written as null.
  const r = acc.result();
  const kernelText = a.kernel === "rbf"
    ? `RBF CKA (σ = ${a["rbf-fraction"]} × median distance)`
    : "Linear CKA";
  const matrices: Record<string, { rows: string[]; cols: string[]; values: (number | null)[][] }> =
    {};
  for (const [name, d] of Object.entries(defs)) {
    matrices[name] = {
      rows: [...d.rows],
      cols: [...d.cols],
      values: r.matrix(d.rowKeys, d.colKeys).map((row) =>
        row.map((v) => (Number.isFinite(v) ? v : null))
      ),
    };
  }
  const base = `${resultsDir()}/cka/${run}`;
  const where = `${s.dataset}, ${a.images} test images`;
  const artifacts = [
    ...await renderFigure(
      heatmap({
        title: `${kernelText} between blocks, t = ${a.t}, pool ≤ ${a.pool} (${where})`,
        x: "block",
        y: "block",
        ...matrices.blocks,
      }),
      `${base}-blocks`,
    ),
    ...await renderFigure(
      heatmap({
        title: `${kernelText} between timesteps, block ${block}, pool ≤ ${a.pool} (${where})`,
        x: "t",
        y: "t",
        ...matrices.timesteps,
      }),
      `${base}-timesteps`,
    ),
    ...(matrices.cnn
      ? await renderFigure(
        heatmap({
          title: `${kernelText}: U-Net blocks at t = ${a.t} × ${describeHead(head!)} layers`,
          x: "supervised CNN layer",
          y: "U-Net block",
          ...matrices.cnn,
        }),
        `${base}-cnn`,
      )
      : []),
  ];
  const path = await finishRun(handle, {
    metrics: {
      ...matrices,
      features: cells.map((c) => ({ ...c, dim: cellDim(spec, c) })),
      cnn_accuracy: cnn ? correct / a.images : null,
      cnn_val_accuracy: cnn ? cnn.valAccuracy : null,
      cnn_param_count: cnn ? cnn.trained.paramCount : null,
      examples: r.examples,
      minibatches: r.batches,
      images_per_s: a.images / Math.max(passS, 1e-9),
    },
    timings: { cnn_train_s: cnnTrainS, pass_s: passS, cka_s: addS },
    artifacts,
  });
  const offDiagonal = (m: (number | null)[][]) =>
    m.flatMap((row, i) => row.filter((_, j) => j !== i)).filter((v): v is number => v !== null);
  const mean = (xs: number[]) => xs.reduce((x, y) => x + y, 0) / Math.max(xs.length, 1);
  console.error(
    `cka: mean off-diagonal: blocks ${mean(offDiagonal(matrices.blocks.values)).toFixed(3)}, ` +
      `timesteps ${mean(offDiagonal(matrices.timesteps.values)).toFixed(3)}` +
      (cnn ? `; CNN accuracy on these images ${(100 * correct / a.images).toFixed(2)} %` : ""),
  );
  console.error(`cka: wrote ${path}`);
});
