import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks, assertThrows } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { makeDataset } from "../lib/data/dataset.ts";
import { predictEpsFromX0, predictX0FromEps, qSample } from "../lib/diffusion/gaussian.ts";
import { namedSchedule } from "../lib/diffusion/schedule.ts";
import {
  type BatchResult,
  type ClassifierModel,
  classifierModel,
  classifyBatch,
  classifyDataset,
  classProbabilities,
  type ConditionalEps,
  type DatasetBatch,
  evaluationsPerImage,
  fitTemperature,
  makePlan,
  throughput,
  timestepGrid,
} from "../lib/diffusion_classifier.ts";
import { imageNoise } from "../lib/features.ts";
import { negativeLogLikelihood } from "../lib/metrics/classification.ts";
import { denoise, initParams, presetSpec } from "../lib/models/mod.ts";
import type { ModelSpec } from "../lib/models/mod.ts";
import { disposeParams, type Params, toVariables } from "../lib/params.ts";
import { foldName, normal, normalArray, rng, uniformArray } from "../lib/random.ts";

await initEngine({ backend: "wasm", announce: false });

const schedule = namedSchedule("linear", 1000);
const noiseKey = rng(21);
const ab = schedule.alphasCumprod;

// ---------------------------------------------------------------------------------------------
// A template oracle: class c is the point mass at the constant image v_c, so its exact ε̂ for
// class c is (x_t − √ᾱ_t·v_c)/√(1−ᾱ_t). For an image x0 = v_{y*}, class y* gets the true ε and
// class c gets ε + √(ᾱ_t/(1−ᾱ_t))·(v_{y*} − v_c): ‖ε − ε̂‖² = ᾱ_t/(1−ᾱ_t)·(v_{y*} − v_c)² and
// ‖x0 − x̂0‖² = (v_{y*} − v_c)² in closed form.
// ---------------------------------------------------------------------------------------------

interface Call {
  readonly xt: Float32Array; // [R·per]
  readonly t: number[];
  readonly y: number[];
}

function templateOracle(templates: readonly number[], calls?: Call[]): ConditionalEps {
  return (xt, t, y) => {
    calls?.push({
      xt: Float32Array.from(xt.dataSync()),
      t: Array.from(t.dataSync()),
      y: Array.from(y.dataSync()),
    });
    const v = tf.reshape(tf.gather(tf.tensor1d(templates as number[]), y), [-1, 1, 1, 1]);
    return predictEpsFromX0(schedule, xt, t, tf.mul(tf.onesLike(xt), v) as tf.Tensor4D);
  };
}

const SHAPE = [4, 4, 2] as const;
const PER = SHAPE[0] * SHAPE[1] * SHAPE[2];

/** Constant images x0_i = v_{labels[i]}, [B, 4, 4, 2]. */
function templateImages(templates: readonly number[], labels: readonly number[]): tf.Tensor4D {
  const data = new Float32Array(labels.length * PER);
  labels.forEach((y, i) => data.fill(templates[y], i * PER, (i + 1) * PER));
  return tf.tensor4d(data, [labels.length, ...SHAPE]);
}

const oracleModel = (templates: readonly number[], calls?: Call[]): ClassifierModel => ({
  eps: templateOracle(templates, calls),
  classes: templates.length,
  schedule,
});

Deno.test("timestepGrid() and makePlan() follow the reference's grid and stage picks", async (t) => {
  await t.step("M = 500 of T = 1000 is 1, 3, …, 999", () => {
    assertEquals(timestepGrid(1000, 500), Array.from({ length: 500 }, (_, i) => 1 + 2 * i));
  });
  await t.step("M = 250 is DiT's t_interval 4: 2, 6, …, 998", () => {
    assertEquals(timestepGrid(1000, 250), Array.from({ length: 250 }, (_, i) => 2 + 4 * i));
  });
  await t.step("stages 20, 50, 100, 500 add 20, 50, 80, 350 timesteps (facts.md §6)", () => {
    const plan = makePlan(1000, {
      stages: [
        { samples: 20, keep: 20 },
        { samples: 50, keep: 10 },
        { samples: 100, keep: 5 },
        { samples: 500, keep: 1 },
      ],
    });
    assertEquals(plan.stages.map((s) => s.timesteps.length), [20, 50, 80, 350]);
    // Stage 1 is grid[12 :: 25]: t = 25, 75, …
    assertEquals(plan.stages[0].timesteps.slice(0, 3), [25, 75, 125]);
    assertEquals(new Set(plan.stages.flatMap((s) => s.timesteps)).size, 500);
  });
  await t.step("explicit timesteps without stages: one stage of all, keep 1", () => {
    const plan = makePlan(1000, { timesteps: [700, 50, 300] });
    assertEquals(plan.stages, [{ timesteps: [700, 50, 300], keep: 1 }]);
  });
  await t.step("bad plans list every fault", () => {
    assertThrows(() => makePlan(1000, {}), /needs timesteps or stages/);
    assertThrows(
      () => makePlan(100, { timesteps: [5, 5, 100], stages: [{ samples: 4, keep: 0 }] }),
      /100 are outside 0\.\.99; timesteps repeat; stage 1 samples 4 is outside 1\.\.3; stage 1 keeps 0/,
    );
  });
});

Deno.test("classifyBatch() picks the oracle's class with closed-form errors", async (t) => {
  const templates = [-0.6, -0.2, 0.2, 0.6];
  const labels = [2, 0, 3, 1, 2, 0];
  const ids = [10, 11, 12, 13, 14, 15];
  const ts = [50, 300, 700];
  const plan = makePlan(1000, { timesteps: ts });
  const snr = ts.map((s) => ab[s] / (1 - ab[s]));
  const cases: ["eps" | "x0", "l2" | "l1", (d: number) => number][] = [
    ["eps", "l2", (d) => snr.reduce((a, r) => a + r * d * d, 0) / ts.length],
    ["eps", "l1", (d) => snr.reduce((a, r) => a + Math.sqrt(r) * Math.abs(d), 0) / ts.length],
    ["x0", "l2", (d) => d * d],
    ["x0", "l1", (d) => Math.abs(d)],
  ];
  const x0 = templateImages(templates, labels);
  for (const [target, loss, expected] of cases) {
    await t.step(`${target === "eps" ? "Diffusion Classifier" : "DC Zero"}, ${loss}`, async () => {
      let r: BatchResult | undefined;
      await assertNoLeaks(async () => {
        r = await classifyBatch(oracleModel(templates), x0, ids, plan, { noiseKey, target, loss });
      });
      assertEquals(Array.from(r!.predicted), labels);
      const want = labels.flatMap((y) => templates.map((v) => expected(templates[y] - v)));
      assertClose(r!.errors, want, { rtol: 2e-3, atol: 1e-5 });
      assertEquals(Array.from(r!.evaluations), labels.map(() => templates.length * ts.length));
      assertEquals(r!.calls, 1); // 6 images × 4 classes × 3 timesteps = 72 rows ≤ 256
    });
  }
  x0.dispose();
});

Deno.test("clipX0 clamps x̂0 to [−1, 1] before DC Zero compares it", async () => {
  // Class 1's template 1.5 lies outside [−1, 1]: unclipped its x̂0 is exact (error 0); clipped
  // it is 1, off by 0.5. Class 0's x̂0 = −0.5 is inside: (1.5 + 0.5)² = 4 either way.
  const x0 = templateImages([-0.5, 1.5], [1]);
  const plan = makePlan(1000, { timesteps: [100, 400] });
  const m = oracleModel([-0.5, 1.5]);
  const raw = await classifyBatch(m, x0, [0], plan, { noiseKey, target: "x0" });
  const clipped = await classifyBatch(m, x0, [0], plan, { noiseKey, target: "x0", clipX0: true });
  assertClose(raw.errors, [4, 0], { rtol: 1e-4, atol: 1e-5 });
  assertClose(clipped.errors, [4, 0.25], { rtol: 1e-4, atol: 1e-5 });
  x0.dispose();
});

Deno.test("classifyBatch() gives every class of an image the same (t, ε)", async () => {
  const templates = [-0.6, -0.2, 0.2, 0.6];
  const labels = [1, 3, 0];
  const ids = [7, 2, 40];
  const ts = [120, 480, 860];
  const calls: Call[] = [];
  const x0 = templateImages(templates, labels);
  const r = await classifyBatch(
    oracleModel(templates, calls),
    x0,
    ids,
    makePlan(1000, { timesteps: ts }),
    { noiseKey, maxBatch: 7 }, // 36 rows in calls of 7, so an image's classes straddle calls
  );
  assertEquals(calls.map((c) => c.y.length), [7, 7, 7, 7, 7, 1]);
  // x_t of image i at t, computed here from imageNoise directly.
  const expected = new Map<string, Float32Array>();
  for (const s of ts) {
    labels.forEach((_, i) => {
      const xt = tf.tidy(() =>
        qSample(schedule, x0.slice(i, 1), s, imageNoise(noiseKey, [ids[i]], s, SHAPE))
      );
      expected.set(`${i}@${s}`, xt.dataSync() as Float32Array);
      xt.dispose();
    });
  }
  const seen = new Map<string, { xt: Float32Array; y: number[] }>();
  for (const c of calls) {
    c.y.forEach((y, j) => {
      const row = c.xt.subarray(j * PER, (j + 1) * PER);
      const match = labels
        .map((_, i) => i)
        .filter((i) => {
          const e = expected.get(`${i}@${c.t[j]}`)!;
          return e.every((v, k) => Math.abs(v - row[k]) <= 1e-6);
        });
      assertEquals(match.length, 1, `row ${j}: x_t of exactly one image`);
      const key = `${match[0]}@${c.t[j]}`;
      const prior = seen.get(key);
      if (prior) {
        // Bit for bit the same x_t (hence ε) for every class, across calls too.
        assertEquals(Array.from(row), Array.from(prior.xt));
        prior.y.push(y);
      } else {
        seen.set(key, { xt: Float32Array.from(row), y: [y] });
      }
    });
  }
  assertEquals(seen.size, labels.length * ts.length);
  for (const { y } of seen.values()) assertEquals(y.sort(), [0, 1, 2, 3]);
  assertEquals(Array.from(r.predicted), labels);
  x0.dispose();
});

Deno.test("adaptive pruning keeps exactly k classes per stage and counts evaluations", async (t) => {
  // Gaps 0.05, 0.1, 0.2, 0.4, 0.8 (powers of two): all distances from a template are distinct,
  // so each stage's survivors are the templates nearest the true one.
  const templates = [-0.8, -0.75, -0.65, -0.45, -0.05, 0.75];
  const labels = [3, 0, 5];
  const ids = [0, 1, 2];
  const x0 = templateImages(templates, labels);
  const nearest = (y: number, k: number) =>
    templates.map((_, c) => c).sort((a, b) =>
      Math.abs(templates[a] - templates[y]) - Math.abs(templates[b] - templates[y])
    ).slice(0, k).sort();

  await t.step("stages (2, 4), (5, 2), (10, 1) on the M = 10 grid", async () => {
    const plan = makePlan(1000, {
      stages: [{ samples: 2, keep: 4 }, { samples: 5, keep: 2 }, { samples: 10, keep: 1 }],
    });
    // Grid 50, 150, …, 950. Stage 1: grid[2 :: 5] = 250, 750. Stage 2: grid[1 :: 2] = 150, 350,
    // 550, 750, 950, less 750. Stage 3: the whole grid, less the six done: 50, 450, 650, 850.
    assertEquals(plan.stages.map((s) => s.timesteps), [
      [250, 750],
      [150, 350, 550, 950],
      [50, 450, 650, 850],
    ]);
    const perImage = 6 * 2 + 4 * 4 + 2 * 4; // = 36
    assertEquals(evaluationsPerImage(plan, 6), perImage);
    const calls: Call[] = [];
    const r = await classifyBatch(oracleModel(templates, calls), x0, ids, plan, {
      noiseKey,
      maxBatch: 7,
    });
    assertEquals(Array.from(r.evaluations), [perImage, perImage, perImage]);
    // Rows per stage 3·12 = 36, 3·16 = 48, 3·8 = 24: ⌈36/7⌉ + ⌈48/7⌉ + ⌈24/7⌉ calls.
    assertEquals(r.calls, 6 + 7 + 4);
    assertEquals(calls.reduce((a, c) => a + c.y.length, 0), 3 * perImage);
    // Which classes each image was evaluated on, per stage: the nearest 6, 4, 2 templates. A
    // row's image is told by its x_t, computed here from imageNoise.
    const xtOf = (i: number, time: number) =>
      tf.tidy(() =>
        qSample(schedule, x0.slice(i, 1), time, imageNoise(noiseKey, [ids[i]], time, SHAPE))
          .dataSync() as Float32Array
      );
    const classesAt = new Map<string, Set<number>>();
    for (const c of calls) {
      c.t.forEach((time, j) => {
        const row = c.xt.subarray(j * PER, (j + 1) * PER);
        const i = labels.findIndex((_, i) =>
          xtOf(i, time).every((v, k) => Math.abs(v - row[k]) <= 1e-6)
        );
        const key = `${i}@${time}`;
        if (!classesAt.has(key)) classesAt.set(key, new Set());
        classesAt.get(key)!.add(c.y[j]);
      });
    }
    plan.stages.forEach((stage, s) => {
      labels.forEach((y, i) => {
        for (const time of stage.timesteps) {
          const got = [...(classesAt.get(`${i}@${time}`) ?? [])].sort();
          assertEquals(got, nearest(y, [6, 4, 2][s]), `image ${i}, stage ${s + 1}, t ${time}`);
        }
      });
    });
    assertEquals(Array.from(r.predicted), labels);
    // The two finalists have full means, the others NaN.
    labels.forEach((y, i) => {
      const finite = templates.map((_, c) => c).filter((c) => !Number.isNaN(r.errors[i * 6 + c]));
      assertEquals(finite, nearest(y, 2));
    });
  });
  await t.step("one class left ends the run: later stages are skipped", async () => {
    const plan = makePlan(1000, { stages: [{ samples: 2, keep: 1 }, { samples: 10, keep: 1 }] });
    assertEquals(evaluationsPerImage(plan, 6), 6 * 2);
    const r = await classifyBatch(oracleModel(templates), x0, ids, plan, { noiseKey });
    assertEquals(Array.from(r.evaluations), [12, 12, 12]);
    assertEquals(Array.from(r.predicted), labels);
    // Every class saw both timesteps: all six means are finite.
    assert(r.errors.every(Number.isFinite));
  });
  await t.step("a keep above the classes left keeps them all", async () => {
    const plan = makePlan(1000, { stages: [{ samples: 2, keep: 10 }, { samples: 10, keep: 1 }] });
    assertEquals(evaluationsPerImage(plan, 6), 6 * 2 + 6 * 8);
    const r = await classifyBatch(oracleModel(templates), x0, ids, plan, { noiseKey });
    assertEquals(Array.from(r.evaluations), [60, 60, 60]);
  });
  await t.step("no leaks with pruning", async () => {
    const plan = makePlan(1000, { stages: [{ samples: 2, keep: 3 }, { samples: 5, keep: 1 }] });
    await assertNoLeaks(() => classifyBatch(oracleModel(templates), x0, ids, plan, { noiseKey }));
  });
  x0.dispose();
});

Deno.test("classifyDataset() matches one batch, from any start, and reports throughput", async () => {
  const templates = [-0.6, -0.2, 0.2, 0.6];
  const labels = [2, 0, 3, 1, 2];
  const x0 = templateImages(templates, labels);
  const ds = makeDataset({
    name: "templates",
    images: x0.dataSync() as Float32Array,
    labels: Int32Array.from(labels),
    shape: SHAPE,
    classes: ["a", "b", "c", "d"],
  });
  const plan = makePlan(1000, { stages: [{ samples: 4, keep: 2 }, { samples: 8, keep: 1 }] });
  const whole = await classifyBatch(oracleModel(templates), x0, [0, 1, 2, 3, 4], plan, {
    noiseKey,
  });
  const parts: DatasetBatch[] = [];
  for await (
    const b of classifyDataset(oracleModel(templates), ds, plan, { noiseKey, batch: 2, start: 1 })
  ) {
    assertEquals(b.count, b.predicted.length);
    parts.push(b);
  }
  assertEquals(parts.map((b) => b.start), [1, 3]);
  assertEquals(parts.flatMap((b) => Array.from(b.predicted)), labels.slice(1));
  // The same errors, NaN (pruned) in the same places.
  const got = parts.flatMap((b) => Array.from(b.errors));
  const want = Array.from(whole.errors.subarray(4));
  assertEquals(got.map(Number.isNaN), want.map(Number.isNaN));
  assertEquals(got.filter((e) => !Number.isNaN(e)).length, 4 * 2);
  assertClose(got.filter((e) => !Number.isNaN(e)), want.filter((e) => !Number.isNaN(e)), {
    rtol: 1e-6,
    atol: 1e-7,
  });
  const tp = throughput(parts);
  assertEquals(tp.images, 4);
  assertEquals(tp.evaluationsPerImage, evaluationsPerImage(plan, 4));
  assert(tp.imagesPerS > 0);
  x0.dispose();
});

// ---------------------------------------------------------------------------------------------
// A real class-conditional network (the tiny U-Net, its zero-initialised output convolution and
// label table perturbed so that ε̂ depends on the label).
// ---------------------------------------------------------------------------------------------

function perturbed(spec: ModelSpec, seed: number): Params {
  const p0 = initParams(spec, rng(seed));
  const out = toVariables(
    Object.fromEntries(
      Object.entries(p0).map(([k, v]) => [
        k,
        tf.tidy(() => tf.add(v, tf.mul(0.05, normal(foldName(rng(seed), k), v.shape)))),
      ]),
    ),
    false,
  );
  disposeParams(p0);
  return out;
}

/** Mean over (t) of mean over pixels of the error, computed one (image, class, t) at a time. */
function directErrors(
  spec: ModelSpec,
  params: Params,
  x0: tf.Tensor4D,
  ids: number[],
  ts: number[],
  classes: number,
  target: "eps" | "x0",
): number[] {
  const out: number[] = [];
  const shape = x0.shape.slice(1) as [number, number, number];
  for (let i = 0; i < ids.length; i++) {
    for (let c = 0; c < classes; c++) {
      let sum = 0;
      for (const s of ts) {
        const e = tf.tidy(() => {
          const img = x0.slice(i, 1);
          const eps = imageNoise(noiseKey, [ids[i]], s, shape);
          const xt = qSample(schedule, img, s, eps);
          const raw = denoise(spec, params, xt, tf.tensor1d([s], "int32"), {
            y: tf.tensor1d([c], "int32"),
          });
          const epsHat = raw.slice([0, 0, 0, 0], [1, ...shape]); // ε channels first
          const d = target === "eps"
            ? tf.sub(eps, epsHat)
            : tf.sub(img, predictX0FromEps(schedule, xt, s, epsHat));
          return tf.mean(tf.square(d));
        });
        sum += e.dataSync()[0];
        e.dispose();
      }
      out.push(sum / ts.length);
    }
  }
  return out;
}

Deno.test("classifierModel() on the tiny U-Net matches a direct computation", async (t) => {
  const base = presetSpec("unet", "tiny", { classes: 3, dropRate: 0 });
  const sigmaSpec = { ...base, config: { ...base.config, learnSigma: true } } as ModelSpec;
  const x0 = tf.tidy(() =>
    tf.sub(tf.mul(tf.tensor4d(uniformArray(rng(4), 2 * 256), [2, 16, 16, 1]), 2), 1)
  ) as tf.Tensor4D;
  const ids = [4, 9], ts = [100, 600];
  const plan = makePlan(1000, { timesteps: ts });
  for (
    const [name, spec] of [["ε only", base], ["learnSigma: ε channels only", sigmaSpec]] as const
  ) {
    const params = perturbed(spec, 8);
    const model = classifierModel({ spec, params, schedule });
    assertEquals(model.classes, 3);
    for (const target of ["eps", "x0"] as const) {
      await t.step(`${name}, ${target}`, async () => {
        let r: BatchResult | undefined;
        await assertNoLeaks(async () => {
          r = await classifyBatch(model, x0, ids, plan, { noiseKey, target });
        });
        const want = directErrors(spec, params, x0, ids, ts, 3, target);
        assertClose(r!.errors, want, { rtol: 1e-4, atol: 1e-6 });
        const argmin = [0, 1].map((i) => {
          const row = want.slice(i * 3, i * 3 + 3);
          return row.indexOf(Math.min(...row));
        });
        assertEquals(Array.from(r!.predicted), argmin);
        // The label matters: the three classes' errors differ.
        assert(new Set(Array.from(r!.errors.subarray(0, 3), (e) => e.toFixed(7))).size === 3);
      });
    }
    disposeParams(params);
  }
  x0.dispose();
});

Deno.test("a denoiser exact for one label wins under both classifiers", async () => {
  // Labels other than y* go to the (perturbed) tiny U-Net; y* gets the exact ε of the
  // point-mass data at the constant image v, which every test image is.
  const spec = presetSpec("unet", "tiny", { classes: 3, dropRate: 0 });
  const params = perturbed(spec, 2);
  const net = classifierModel({ spec, params, schedule });
  const v = 0.3, star = 1;
  const exact: ClassifierModel = {
    ...net,
    eps: (xt, t, y) => {
      const truth = predictEpsFromX0(schedule, xt, t, tf.fill(xt.shape, v) as tf.Tensor4D);
      const mask = tf.reshape(tf.equal(y, star), [-1, 1, 1, 1]);
      return tf.where(tf.broadcastTo(mask, xt.shape), truth, net.eps(xt, t, y)) as tf.Tensor4D;
    },
  };
  const x0 = tf.fill([3, 16, 16, 1], v) as tf.Tensor4D;
  const plan = makePlan(1000, { timesteps: [30, 250, 500, 900] });
  for (const target of ["eps", "x0"] as const) {
    const r = await classifyBatch(exact, x0, [0, 1, 2], plan, { noiseKey, target });
    assertEquals(Array.from(r.predicted), [star, star, star], target);
    for (let i = 0; i < 3; i++) assert(r.errors[i * 3 + star] < 1e-8, `${target} error of y*`);
  }
  x0.dispose();
  disposeParams(params);
});

Deno.test("classifierModel() refuses an unconditional model in one line", () => {
  const spec = presetSpec("unet", "tiny");
  assertThrows(
    () => classifierModel({ spec, params: {}, schedule }),
    (e: Error) =>
      /needs a class-conditional model.*"tiny" has no classes/.test(e.message) &&
      !e.message.includes("\n"),
  );
});

Deno.test("classifyBatch() refuses bad options and mismatched ids", async () => {
  const x0 = templateImages([0, 1], [0, 1]);
  const plan = makePlan(1000, { timesteps: [10] });
  const m = oracleModel([0, 1]);
  await assertRejectsMessage(() => classifyBatch(m, x0, [0], plan, { noiseKey }), /1 ids for 2/);
  await assertRejectsMessage(
    () => classifyBatch(m, x0, [0, 1], plan, { noiseKey, maxBatch: 0 }),
    /maxBatch 0/,
  );
  await assertRejectsMessage(
    () =>
      classifyBatch({ ...m, schedule: namedSchedule("cosine", 5) }, x0, [0, 1], plan, { noiseKey }),
    /timesteps must lie in 0\.\.4/,
  );
  x0.dispose();
});

async function assertRejectsMessage(fn: () => Promise<unknown>, re: RegExp) {
  try {
    await fn();
  } catch (e) {
    assert(re.test((e as Error).message), `${(e as Error).message} !~ ${re}`);
    return;
  }
  throw new Error(`expected a rejection matching ${re}`);
}

// ---------------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------------

Deno.test("classProbabilities() is softmax(−error/τ) with pruned classes at 0", () => {
  const p = classProbabilities([0.1, 0.2, NaN, 0.3, 0.3, 0.3], 3, 0.1);
  const z = 1 + Math.exp(-1);
  assertClose(p, [1 / z, Math.exp(-1) / z, 0, 1 / 3, 1 / 3, 1 / 3], { rtol: 1e-12, atol: 1e-15 });
  assertThrows(() => classProbabilities([1, 2], 2, 0), /Temperature should be positive/);
  assertThrows(() => classProbabilities([1, 2, 3], 2, 1), /not whole rows of 2/);
});

Deno.test("fitTemperature() finds the NLL minimum and lowers the validation NLL", async (t) => {
  await t.step("binary closed form: 20% ranked wrong by a gap d gives τ* = d / ln 4", () => {
    // Right rows: errors (0, d) with label 0; wrong rows: label 1. The optimum has
    // σ(d/τ) = 0.8, i.e. d/τ = ln 4, and the NLL equals the entropy of (0.8, 0.2).
    const d = 0.05, n = 100;
    const errors = new Float64Array(2 * n), labels = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      errors[2 * i + 1] = d;
      labels[i] = i % 5 === 0 ? 1 : 0;
    }
    const fit = fitTemperature(errors, labels, 2);
    assertClose([fit.tau], [d / Math.log(4)], { rtol: 1e-6, atol: 0 });
    assertClose([fit.nllAfter], [-(0.8 * Math.log(0.8) + 0.2 * Math.log(0.2))], { rtol: 1e-9 });
    const before = 0.8 * Math.log1p(Math.exp(-d)) + 0.2 * Math.log1p(Math.exp(d));
    assertClose([fit.nllBefore], [before], { rtol: 1e-9 });
    assert(fit.nllAfter < fit.nllBefore);
  });
  await t.step("three classes, noisy errors: a local minimum below τ = 1", () => {
    const n = 300, K = 3;
    const noise = normalArray(rng(5), n * K);
    const labels = Int32Array.from({ length: n }, (_, i) => i % K);
    const errors = Float64Array.from(
      noise,
      (g, j) => 0.1 + 0.02 * g - (j % K === labels[Math.floor(j / K)] ? 0.02 : 0),
    );
    const fit = fitTemperature(errors, labels, K);
    const nll = (tau: number) =>
      negativeLogLikelihood(classProbabilities(errors, K, tau), labels, K);
    assertClose([nll(fit.tau)], [fit.nllAfter], { rtol: 1e-9 });
    assertClose([nll(1)], [fit.nllBefore], { rtol: 1e-9 });
    assert(fit.nllAfter < fit.nllBefore - 0.01, `${fit.nllAfter} vs ${fit.nllBefore}`);
    assert(nll(fit.tau * 1.05) > fit.nllAfter && nll(fit.tau / 1.05) > fit.nllAfter);
  });
  await t.step(
    "errors that carry no information keep τ = 1 (the scan would lie far below it)",
    () => {
      // Half the rows ranked right, half wrong, by a gap of 1e-8: the NLL falls towards ln 2 as τ
      // grows, and the scan, centred on the spread, ends near τ = 3e-5, which is worse than τ = 1.
      const n = 10, errors = new Float64Array(2 * n), labels = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        errors[2 * i + 1] = 1e-8;
        labels[i] = i % 2;
      }
      const fit = fitTemperature(errors, labels, 2);
      assertEquals(fit.tau, 1);
      assertEquals(fit.nllAfter, fit.nllBefore);
    },
  );
  await t.step("refuses pruned (NaN) errors and labels out of range", () => {
    assertThrows(() => fitTemperature([0, NaN], Int32Array.of(0), 2), /unpruned plan/);
    assertThrows(() => fitTemperature([0, 1], Int32Array.of(2), 2), /label 2 at index 0/);
    assertThrows(() => fitTemperature([0, 1, 2], Int32Array.of(0), 2), /not whole rows/);
  });
});
