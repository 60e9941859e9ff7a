import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertThrows } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { loadDataset, take } from "../lib/data/dataset.ts";
import { namedSchedule } from "../lib/diffusion/schedule.ts";
import {
  batchFeatures,
  cellDim,
  cellName,
  checkCells,
  extractTable,
  type FrozenModel,
  gridCells,
  imageNoise,
} from "../lib/features.ts";
import { blockTable, features, initParams, inputShape, presetSpec } from "../lib/models/mod.ts";
import { adaptiveAvgPool } from "../lib/models/nn.ts";
import { qSample } from "../lib/diffusion/gaussian.ts";
import { disposeParams } from "../lib/params.ts";
import { rng } from "../lib/random.ts";
import { batchThatFits, HEAP_SAFETY, isWasmAbort } from "../lib/engine/heap_limit.ts";

await initEngine({ backend: "wasm", announce: false });
const spec = presetSpec("unet", "tiny");
const model: FrozenModel = {
  spec,
  params: initParams(spec, rng(5)),
  schedule: namedSchedule("linear", 1000),
};
const size = inputShape(spec)[0];
const ds = take(
  await loadDataset("mnist", { split: "test", size }),
  Int32Array.from({ length: 12 }, (_, i) => i),
);
const key = rng(9);
const last = blockTable(spec).length;
const cells = gridCells([30, 500], [2, last], [1, 2]);

Deno.test("a feature does not depend on the batch size or order its image comes in", async () => {
  const a = await extractTable(model, ds, cells, { noiseKey: key, batch: 12 });
  // Reversed order, batches of 5: image i sits at row 11 − i, with its own id i.
  const rev = Int32Array.from({ length: 12 }, (_, i) => 11 - i);
  const b = await extractTable(model, take(ds, rev), cells, { noiseKey: key, batch: 5, ids: rev });
  for (const c of cells) {
    const d = cellDim(spec, c), n = cellName(c);
    for (let i = 0; i < 12; i++) {
      assertClose(
        Array.from(b.data.get(n)!.subarray((11 - i) * d, (12 - i) * d)),
        Array.from(a.data.get(n)!.subarray(i * d, (i + 1) * d)),
        { atol: 1e-5, message: `${n} image ${i}` },
      );
    }
  }
  // Another noise key gives other features (the key is used).
  const other = await extractTable(model, ds, cells.slice(0, 1), { noiseKey: rng(10), batch: 12 });
  const n0 = cellName(cells[0]);
  assert(other.data.get(n0)!.some((v, i) => Math.abs(v - a.data.get(n0)![i]) > 1e-4));
  assert(a.imagesPerS > 0);
});

Deno.test("features are the pooled block activations of the pass on q_sample(x0, t, ε)", () => {
  const x0 = tf.tensor4d(ds.images.subarray(0, 3 * size * size), [3, size, size, 1]);
  const ids = [0, 1, 2];
  const got = batchFeatures(model, x0, ids, [{ t: 30, block: 2, pool: 2 }], key);
  // By hand: the noise of each id, q_sample, the full pass up to the last block, pool, flatten.
  const want = tf.tidy(() => {
    const xt = qSample(model.schedule, x0, 30, imageNoise(key, ids, 30, [size, size, 1]));
    const maps = features(spec, model.params, xt, tf.fill([3], 30, "int32") as tf.Tensor1D, [
      2,
      last,
    ]);
    const b2 = maps.get(2)!;
    tf.dispose(maps.get(last)!);
    return tf.reshape(adaptiveAvgPool(b2, 2), [3, -1]);
  });
  const g = got.get("t30-b2-p2")!;
  assertEquals(g.shape, [3, 4 * blockTable(spec)[1].channels]);
  // Early exit (a pass that stops after block 2) equals the full pass.
  assertClose(Array.from(g.dataSync()), Array.from(want.dataSync()), { atol: 1e-5 });
  tf.dispose([x0, g, want]);
});

Deno.test("checkCells() lists every bad t, block and pool at once", () => {
  assertThrows(
    () =>
      checkCells(model, [{ t: 1000, block: 99, pool: 1 }, { t: 10, block: 1, pool: 0 }, {
        t: 5,
        block: last,
        pool: 999,
      }]),
    Error,
    "t 1000 is outside 0..999; Block 99 does not exist",
  );
  assertThrows(
    () => checkCells(model, [{ t: 5, block: last, pool: 999 }]),
    Error,
    `Pool 999 is larger than block ${last}`,
  );
});

Deno.test("a heap ceiling shrinks the batch to what one image's peak says fits, with one line", async () => {
  const whole = await extractTable(model, ds, cells, { noiseKey: key, batch: 12 });
  // Measure one image's peak the way extractFeatures does, then set a ceiling that fits 3.
  const resident = tf.memory().numBytes;
  const peak = (await tf.profile(() => {
    const x0 = tf.tensor4d(ds.images.subarray(0, size * size), [1, size, size, 1]);
    const m = batchFeatures(model, x0, [0], cells, key);
    tf.dispose([x0, ...m.values()]);
    return [];
  })).peakBytes - resident;
  const limit = (resident + 3.5 * peak) / HEAP_SAFETY;
  assertEquals(batchThatFits(peak, resident, limit), 3);
  const notes: string[] = [], sizes: number[] = [];
  let last = 0;
  const small = await extractTable(model, ds, cells, {
    noiseKey: key,
    batch: 12,
    heapLimitBytes: limit,
    onNote: (l) => notes.push(l),
    onBatch: (done) => (sizes.push(done - last), last = done),
  });
  assertEquals(notes.length, 1);
  assert(/batch 12 .* extracting at batch 3/.test(notes[0]), notes[0]);
  assertEquals(sizes, [3, 3, 3, 3], "batches of 3 (the measured image joins the first)");
  // A split of one image: the measured pass is all there is.
  const one = await extractTable(model, take(ds, Int32Array.of(0)), cells, {
    noiseKey: key,
    batch: 4,
  });
  const n0 = cellName(cells[0]), d0 = cellDim(spec, cells[0]);
  assertClose(Array.from(one.data.get(n0)!), Array.from(whole.data.get(n0)!.subarray(0, d0)), {
    atol: 1e-6,
  });
  for (const c of cells) {
    assertClose(
      Array.from(small.data.get(cellName(c))!),
      Array.from(whole.data.get(cellName(c))!),
      {
        atol: 1e-5,
        message: cellName(c),
      },
    );
  }
});

Deno.test("a batch beyond the wasm heap ends in one line naming the limit, not a bare abort", async () => {
  // A real abort leaves the wasm module unusable: it happens in a process of its own.
  const child = new URL("./engine/heap_abort_child.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", child, "30000"], // 30,000 tiny-U-Net passes at once: ~6 GiB of maps
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const err = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 1, err);
  const line = err.split("\n").find((l) => l.startsWith("error: "));
  assert(
    /tiny at batch 29999 ran out of the 4\.00 GiB wasm heap .*smaller --extract-batch/.test(
      line ?? "",
    ),
    err,
  );
  assert(isWasmAbort(new Error("Aborted(). Build with -sASSERTIONS for more info.")));
  assert(!isWasmAbort(new Error("features: 4 ids for 5 images")));
  assertEquals(batchThatFits(0, 0, 100), Number.MAX_SAFE_INTEGER, "no growth: any batch");
  assertEquals(batchThatFits(10, 60, 100, 0.75), 1); // (75 − 60) / 10
  assertEquals(batchThatFits(10, 70, 100, 0.75), 0);
});

Deno.test("batchFeatures() leaves no tensors behind", () => {
  const x0 = tf.tensor4d(ds.images.subarray(0, 2 * size * size), [2, size, size, 1]);
  const before = tf.memory().numTensors;
  const out = batchFeatures(model, x0, [0, 1], cells, key);
  assertEquals(out.size, cells.length);
  for (const t of out.values()) t.dispose();
  assertEquals(tf.memory().numTensors, before);
  x0.dispose();
  disposeParams(model.params); // the last test: the model is done with
});
