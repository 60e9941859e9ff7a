// The downstream protocol (seed 000 §4.1, Table 1): split sizes, disjointness of the splits and the
// pool (by image content), determinism per seed, the binary relabelling and its positive rate, a
// site folder whose pool leaves out the downstream site, the errors; then the scores, the tuning
// loop with validation selection, and where the results file lands.
import sharp from "sharp";
import { assert, assertEquals, assertNoLeaks, assertRejects, assertThrows } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { count, type Dataset, makeDataset } from "../lib/data/dataset.ts";
import {
  apportion,
  downstreamMetrics,
  finishDownstreamRun,
  fitClassifier,
  loadProtocol,
  positiveRate,
  predictLabels,
  stratifiedDraw,
  TABLE1_SIZES,
} from "../lib/downstream.ts";
import { headClassifier } from "../lib/probe.ts";
import { disposeParams } from "../lib/params.ts";
import { rng } from "../lib/random.ts";
import { parseResult, startRun } from "../lib/results.ts";

await initEngine({ backend: "wasm", announce: false });

// One string per image, from its pixel values (PNG and the IDX files are lossless).
function fingerprints(ds: Dataset): string[] {
  const per = ds.shape[0] * ds.shape[1] * ds.shape[2];
  const bytes = new Uint8Array(ds.images.buffer, ds.images.byteOffset, ds.images.byteLength);
  return Array.from({ length: count(ds) }, (_, i) => {
    let h1 = 0x811c9dc5, h2 = 0x12345678;
    for (let j = i * per * 4; j < (i + 1) * per * 4; j++) {
      h1 = Math.imul(h1 ^ bytes[j], 0x01000193);
      h2 = Math.imul(h2 ^ bytes[j], 0x5bd1e995) ^ (h2 >>> 15);
    }
    return `${h1 >>> 0}:${h2 >>> 0}`;
  });
}

function assertDisjoint(parts: Record<string, Dataset>): void {
  const seen = new Map<string, string>();
  for (const [name, ds] of Object.entries(parts)) {
    for (const f of fingerprints(ds)) {
      const other = seen.get(f);
      assert(other === undefined || other === name, `an image of ${name} is also in ${other}`);
      seen.set(f, name);
    }
  }
}

const classCounts = (ds: Dataset) => {
  const c = new Array(ds.classes.length).fill(0);
  ds.labels.forEach((y) => c[y]++);
  return c;
};

Deno.test("apportion() and stratifiedDraw() give exact, capped, proportional shares", () => {
  assertEquals([...apportion(5, [10, 10, 0])], [3, 2, 0]); // tie 2.5/2.5: the lower class first
  assertEquals([...apportion(7, [1, 6, 3])], [1, 4, 2]); // quotas 0.7, 4.2, 2.1
  assertEquals([...apportion(10, [1, 6, 3])], [1, 6, 3]);
  assertThrows(() => apportion(11, [1, 6, 3]), /exceeds 10/);
  const labels = Int32Array.from({ length: 60 }, (_, i) => (i < 30 ? 0 : i < 50 ? 1 : 2));
  const parts = stratifiedDraw(labels, 3, [30, 12, 18], rng(1));
  assertEquals(parts.map((p) => p.length), [30, 12, 18]);
  assertEquals(new Set(parts.flatMap((p) => [...p])).size, 60);
  const per = (p: Int32Array) => [0, 1, 2].map((c) => p.filter((i) => labels[i] === c).length);
  assertEquals(per(parts[0]), [15, 10, 5]);
  assertEquals(per(parts[1]), [6, 4, 2]);
  assertEquals(per(parts[2]), [9, 6, 3]);
});

Deno.test("loadProtocol(mnist): sizes, disjoint splits and pool, stratified, deterministic", async () => {
  const o = { seed: 3, train: 300, valid: 60, test: 90 };
  const p = await loadProtocol("mnist", o);
  assertEquals([count(p.train), count(p.valid), count(p.test), count(p.pool)], [300, 60, 90, 8000]);
  assertEquals(p.task, "10-class");
  assertEquals(p.classes.length, 10);
  assertDisjoint({ pool: p.pool, train: p.train, valid: p.valid, test: p.test });
  // Stratified: every class within one image of its share (the test split is ~10 % per class).
  for (const ds of [p.train, p.valid, p.test]) {
    for (const c of classCounts(ds)) assert(Math.abs(c - count(ds) / 10) <= 0.2 * count(ds) / 10);
  }
  const again = await loadProtocol("mnist", o);
  assertEquals(fingerprints(again.train), fingerprints(p.train));
  assertEquals(fingerprints(again.test), fingerprints(p.test));
  assertEquals(again.describe, p.describe);
  const other = await loadProtocol("mnist", { ...o, seed: 4 });
  assert(fingerprints(other.train).join() !== fingerprints(p.train).join(), "seed changes train");
  const d = p.describe as { sizes: Record<string, number>; site: null; positives: null };
  assertEquals(d.sizes, { pool: 8000, train: 300, valid: 60, test: 90 });
  assertEquals([d.site, d.positives], [null, null]);
});

Deno.test("loadProtocol(mnist, binary): Table 1 sizes, labels 1 = positive, ~10 % positive", async () => {
  const p = await loadProtocol("mnist", { seed: 0, task: "binary" });
  assertEquals(
    [count(p.train), count(p.valid), count(p.test)],
    [TABLE1_SIZES.train, TABLE1_SIZES.valid, TABLE1_SIZES.test],
  );
  assertEquals(p.classes, ["negative", "positive"]);
  assertEquals(p.train.classes, ["negative", "positive"]);
  assertEquals(p.pool.classes.length, 10, "the pool keeps the dataset's own (unused) labels");
  // Digit 0 is 9.8 % of MNIST's test split; stratified splits match it within one image.
  for (const ds of [p.train, p.valid, p.test]) {
    const r = positiveRate(ds);
    assert(Math.abs(r - 0.098) <= 1.5 / count(ds) + 0.01, `positive rate ${r}`);
  }
  const rates = (p.describe as { positive_rate: Record<string, number> }).positive_rate;
  assertEquals(rates.test, positiveRate(p.test));
  // The relabelled test split holds the same images as the 10-class one of the same seed.
  const ten = await loadProtocol("mnist", { seed: 0 });
  assertEquals(fingerprints(ten.test), fingerprints(p.test));
  assertEquals([...p.test.labels], [...ten.test.labels].map((y) => (y === 0 ? 1 : 0)));
  const many = await loadProtocol("mnist", {
    seed: 0,
    task: "binary",
    positives: [1, 7],
    train: 100,
    valid: 20,
    test: 20,
  });
  assertEquals((many.describe as { positive_classes: string[] }).positive_classes, ["1", "7"]);
});

Deno.test("loadProtocol() errors: sizes, sites, positives, positive rates", async () => {
  await assertRejects(
    () => loadProtocol("mnist", { seed: 0, train: 1900, valid: 100, test: 1 }),
    /Cannot draw train 1900 \+ valid 100 \+ test 1 = 2001 images from the test split of "mnist": it has 2000/,
  );
  await assertRejects(
    () => loadProtocol("mnist", { seed: 0, train: 0 }),
    /positive integer, got 0/,
  );
  await assertRejects(() => loadProtocol("mnist", { seed: 0, site: "a" }), /has no sites/);
  const binary = { seed: 0, task: "binary" as const, train: 50, valid: 10, test: 10 };
  await assertRejects(
    () => loadProtocol("mnist", { ...binary, positives: [10] }),
    /outside 0\.\.9/,
  );
  await assertRejects(() => loadProtocol("mnist", { ...binary, positives: [2, 2] }), /repeat/);
  await assertRejects(
    () => loadProtocol("mnist", { ...binary, positives: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] }),
    /every class/,
  );
  await assertRejects(
    () => loadProtocol("mnist", { ...binary, valid: 1 }),
    /downstream valid split \(1 images\) has positive rate [01]/,
  );
  await assertRejects(() => loadProtocol("no/such/folder", { seed: 0 }), /Unknown dataset/);
});

// root/<site>/<class>/<i>.png, 4×4 gray, every image distinct; returns the root.
async function siteFolder(sites: string[], classes: string[], perClass: number): Promise<string> {
  const root = await Deno.makeTempDir();
  let seed = 0;
  for (const s of sites) {
    for (const c of classes) {
      await Deno.mkdir(`${root}/${s}/${c}`, { recursive: true });
      for (let i = 0; i < perClass; i++, seed++) {
        const raw = Uint8Array.from({ length: 16 }, (_, j) => (seed * 7 + j * (1 + seed)) % 256);
        const png = await sharp(raw, { raw: { width: 4, height: 4, channels: 1 } })
          .toColourspace("b-w").png().toBuffer();
        await Deno.writeFile(`${root}/${s}/${c}/${i}.png`, png);
      }
    }
  }
  return root;
}

Deno.test("loadProtocol(site folder): downstream from one site, the pool from the others", async () => {
  const root = await siteFolder(["a_site", "b_site", "c_site"], ["x", "y"], 4);
  try {
    const o = { seed: 1, site: "b_site", train: 4, valid: 2, test: 2, channels: 1 as const };
    const p = await loadProtocol(root, o);
    assertEquals([count(p.train), count(p.valid), count(p.test), count(p.pool)], [4, 2, 2, 16]);
    const siteNames = new Set(Array.from(p.pool.sites!.ids, (i) => p.pool.sites!.names[i]));
    assertEquals([...siteNames].sort(), ["a_site", "c_site"]);
    assertEquals(Array.from(new Set(p.train.sites!.ids), (i) => p.train.sites!.names[i]), [
      "b_site",
    ]);
    assertDisjoint({ pool: p.pool, train: p.train, valid: p.valid, test: p.test });
    assertEquals(classCounts(p.train), [2, 2]);
    assertEquals((p.describe as { site: string }).site, "b_site");
    const first = await loadProtocol(root, { ...o, site: undefined });
    assertEquals((first.describe as { site: string }).site, "a_site", "default: the first site");
    const bin = await loadProtocol(root, { ...o, task: "binary", positives: [1] });
    assertEquals(positiveRate(bin.train), 0.5);
    await assertRejects(() => loadProtocol(root, { ...o, site: "d_site" }), /no site "d_site"/);
    await assertRejects(
      () => loadProtocol(root, { ...o, train: 6 }),
      /from the site "b_site" of .*: it has 8/,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("loadProtocol(folder without sites): the pool is the rest after the draw", async () => {
  const root = await siteFolder(["only"], ["x", "y"], 6);
  try {
    const flat = `${root}/only`; // root/<class>/<image>
    const o = { seed: 2, train: 4, valid: 2, test: 2, channels: 1 as const };
    const p = await loadProtocol(flat, o);
    assertEquals([count(p.train), count(p.valid), count(p.test), count(p.pool)], [4, 2, 2, 4]);
    assertDisjoint({ pool: p.pool, train: p.train, valid: p.valid, test: p.test });
    const q = await loadProtocol(flat, { ...o, seed: 5 });
    assertEquals(
      new Set([...fingerprints(q.pool), ...fingerprints(p.pool)]).size > 4,
      true,
      "the pool depends on the seed",
    );
    await assertRejects(() => loadProtocol(flat, { ...o, site: "only" }), /has no sites/);
    await assertRejects(() => loadProtocol(flat, { ...o, train: 8 }), /no pool is left/);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("downstreamMetrics(): binary scores of class 1, macro scores, confusion rows", () => {
  const labels = Int32Array.of(1, 1, 0, 0, 0, 1);
  const pred = Int32Array.of(1, 0, 0, 1, 0, 1);
  const b = downstreamMetrics("binary", pred, labels, 2);
  assertEquals([b.accuracy, b.recall, b.precision, b.f1], [4 / 6, 2 / 3, 2 / 3, 2 / 3]);
  assertEquals(b.confusion, [[2, 1], [1, 2]]);
  const m = downstreamMetrics("10-class", Int32Array.of(0, 1, 2, 2), Int32Array.of(0, 1, 1, 2), 3);
  assertEquals(m.average, "macro");
  assertEquals(m.recall, (1 + 0.5 + 1) / 3);
  assertEquals(m.precision, (1 + 1 + 0.5) / 3);
});

// A linearly separable toy: class = sign of the first pixel.
function toy(n: number, seed: number): Dataset {
  const images = Float32Array.from({ length: n * 4 }, (_, i) => Math.sin(i * 12.9898 + seed));
  const labels = Int32Array.from({ length: n }, (_, i) => (images[i * 4] > 0 ? 1 : 0));
  return makeDataset({ name: "toy", images, labels, shape: [2, 2, 1], classes: ["n", "p"] });
}

Deno.test("fitClassifier(): learns, keeps the best valid epoch, deterministic, no leaks", async () => {
  const train = toy(64, 1), valid = toy(32, 2);
  const fit = async () => {
    const model = headClassifier({ kind: "linear" }, [2, 2, 1], 2, rng(0));
    const r = await fitClassifier(model, train, valid, {
      epochs: 6,
      lr: 0.05,
      batch: 16,
      key: rng(1),
    });
    const pred = await predictLabels(model, valid);
    const w = Array.from(model.params["fcs.0.weight"].dataSync());
    disposeParams(model.params);
    return { r, pred, w };
  };
  let a!: Awaited<ReturnType<typeof fit>>;
  await assertNoLeaks(async () => (a = await fit()));
  assertEquals(a.r.curve.length, 6);
  assert(a.r.curve[5].train_loss < a.r.curve[0].train_loss, "the loss falls");
  const best = Math.max(...a.r.curve.map((e) => e.valid_accuracy));
  assertEquals(a.r.bestValidAccuracy, best);
  assertEquals(a.r.curve[a.r.bestEpoch - 1].valid_accuracy, best);
  let hits = 0;
  a.pred.forEach((y, i) => (hits += y === valid.labels[i] ? 1 : 0));
  assertEquals(hits / count(valid), best, "the model holds the selected epoch's weights");
  const b = await fit();
  assertEquals(b.w, a.w);
  assertEquals(b.r.curve, a.r.curve);
});

Deno.test("finishDownstreamRun() writes <resultsDir>/downstream/<run>.json", async () => {
  const dir = await Deno.makeTempDir();
  const before = Deno.env.get("DP_RESULTS_DIR");
  Deno.env.set("DP_RESULTS_DIR", dir);
  try {
    const h = await startRun("downstream-baselines", "r1", { method: "resnet" }, 0);
    const path = await finishDownstreamRun(h, { metrics: { accuracy: 0.5 } });
    assertEquals(path, `${dir}/downstream/r1.json`);
    const r = parseResult(await Deno.readTextFile(path), path);
    assertEquals([r.experiment, r.metrics.accuracy], ["downstream-baselines", 0.5]);
    assertEquals([...Deno.readDirSync(`${dir}/downstream`)].map((e) => e.name), ["r1.json"]);
  } finally {
    if (before === undefined) Deno.env.delete("DP_RESULTS_DIR");
    else Deno.env.set("DP_RESULTS_DIR", before);
    await Deno.remove(dir, { recursive: true });
  }
});
