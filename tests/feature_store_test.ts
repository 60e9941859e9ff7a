import { assert, assertEquals } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { loadDataset, take } from "../lib/data/dataset.ts";
import { namedSchedule } from "../lib/diffusion/schedule.ts";
import { cellName, type FrozenModel, gridCells } from "../lib/features.ts";
import { splitFeatures } from "../lib/feature_store.ts";
import { entryDir } from "../lib/features_cache.ts";
import { blockTable, initParams, inputShape, presetSpec } from "../lib/models/mod.ts";
import { disposeParams } from "../lib/params.ts";
import { rng } from "../lib/random.ts";

await initEngine({ backend: "wasm", announce: false });
const spec = presetSpec("unet", "tiny");
const model: FrozenModel = {
  spec,
  params: initParams(spec, rng(2)),
  schedule: namedSchedule("linear", 1000),
};
const ds = take(
  await loadDataset("mnist", { split: "test", size: inputShape(spec)[0] }),
  Int32Array.from({ length: 10 }, (_, i) => i),
);
const id = {
  weights: "0".repeat(64),
  dataset: "mnist",
  split: "test",
  indices: "first 10",
  noiseSeed: 0,
};
const cells = gridCells([50], [1, blockTable(spec).length], [1, 2]);
const all = Int32Array.from({ length: 10 }, (_, i) => i);

Deno.test("splitFeatures() reads a second run from the cache, and recomputes a corrupted entry", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const o = { noiseKey: rng(4), cacheDir: dir, batch: 4, quiet: true };
    const first = await splitFeatures(model, ds, id, cells, o);
    assertEquals(first.cached, []);
    assert(first.imagesPerS! > 0);
    const second = await splitFeatures(model, ds, id, cells, o);
    assertEquals(second.cached, cells.map(cellName), "every cell is a hit");
    assertEquals(second.imagesPerS, undefined, "nothing was extracted");
    for (const c of cells) {
      const n = cellName(c);
      assertEquals(
        await second.sources.get(n)!.gather(all),
        await first.sources.get(n)!.gather(all),
        n,
      );
    }
    // Flip one byte of one entry's data: that cell alone is recomputed, to the same values.
    const victim = cells[1];
    const key = {
      ...id,
      t: victim.t,
      block: victim.block,
      pool: victim.pool,
      flip: false,
      version: 1,
    };
    const data = `${entryDir(dir, key)}/data.f32`;
    const bytes = await Deno.readFile(data);
    bytes[5] ^= 0xff;
    await Deno.writeFile(data, bytes);
    const third = await splitFeatures(model, ds, id, cells, o);
    assertEquals(third.cached, cells.filter((c) => c !== victim).map(cellName));
    assertEquals(
      await third.sources.get(cellName(victim))!.gather(all),
      await first.sources.get(cellName(victim))!.gather(all),
    );
    // Another noise seed is another entry, not a hit.
    const other = await splitFeatures(model, ds, { ...id, noiseSeed: 1 }, cells.slice(0, 1), {
      ...o,
      noiseKey: rng(5),
    });
    assertEquals(other.cached, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("splitFeatures() past its memory budget reads the cache from disk, to the same rows", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const o = { noiseKey: rng(4), cacheDir: dir, batch: 4, quiet: true };
    const mem = await splitFeatures(model, ds, id, cells, { ...o, cacheDir: undefined });
    const fresh = await splitFeatures(model, ds, id, cells, { ...o, memoryBytes: 0 });
    const hit = await splitFeatures(model, ds, id, cells, { ...o, memoryBytes: 0 });
    assertEquals(hit.cached.length, cells.length);
    const order = Int32Array.of(7, 2, 3, 4, 9, 0, 3); // runs, gaps and a repeat
    for (const c of cells) {
      const want = await mem.sources.get(cellName(c))!.gather(order);
      assertEquals(await fresh.sources.get(cellName(c))!.gather(order), want);
      assertEquals(await hit.sources.get(cellName(c))!.gather(order), want);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("splitFeatures() without a cache extracts every time and writes nothing", async () => {
  const r = await splitFeatures(model, ds, id, cells.slice(0, 1), {
    noiseKey: rng(4),
    quiet: true,
  });
  assertEquals(r.cached, []);
  assertEquals(r.sources.get(cellName(cells[0]))!.rows, 10);
  disposeParams(model.params);
});
