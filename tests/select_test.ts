import { assert, assertEquals, assertRejects } from "./assert.ts";
import { cellName, gridCells } from "../lib/features.ts";
import { gridCost, type Round, successiveHalving } from "../lib/select.ts";

// A synthetic grid whose true accuracy peaks at t 150, block 7, pool 2; what a round measures is
// the truth plus an error that shrinks with the images it was given.
const cells = gridCells([10, 30, 50, 90, 150, 300, 500, 700], [
  1,
  2,
  3,
  4,
  5,
  6,
  7,
  8,
  9,
  10,
  11,
  12,
  13,
], [1, 2, 4]);
const truth = (t: number, b: number, p: number) =>
  0.9 - 0.1 * Math.abs(Math.log(t / 150)) - 0.02 * Math.abs(b - 7) -
  0.01 * Math.abs(Math.log2(p / 2));
const wobble = (i: number) => Math.sin(12.9898 * i) * 0.5; // fixed pseudo-noise in [-0.5, 0.5]

Deno.test("successiveHalving() finds the best cell of a grid and counts its cost", async () => {
  const seen: Round[] = [];
  const sel = await successiveHalving(cells, (r) => {
    seen.push(r);
    return Promise.resolve(
      new Map(r.cells.map((c, i) => [
        cellName(c),
        truth(c.t, c.block, c.pool) + wobble(i + seen.length) * 0.2 / Math.sqrt(r.trainImages),
      ])),
    );
  }, { trainImages: 10_000, valImages: 2_000, epochs: 4 });
  assertEquals(sel.best, { t: 150, block: 7, pool: 2 });
  // 312 → 104 → 34 → 11 → 3 cells, the last round on every image.
  assertEquals(seen.map((r) => r.cells.length), [312, 104, 34, 11, 3]);
  assertEquals(seen.at(-1)!.trainImages, 10_000);
  assertEquals(seen.at(-1)!.valImages, 2_000);
  assert(seen.every((r, i) => i === 0 || r.trainImages >= seen[i - 1].trainImages));
  // Head cost by hand: Σ cells·images·epochs; a forward pass is paid once per (image, t).
  const head = seen.reduce((s, r) => s + r.cells.length * r.trainImages * 4, 0);
  assertEquals(sel.cost.headImageEpochs, head);
  const full = gridCost(cells, 10_000, 2_000, 4);
  assert(
    sel.cost.headImageEpochs < full.headImageEpochs / 5,
    "halving trains far less than the grid",
  );
  assert(sel.cost.forwardPasses <= full.forwardPasses);
  assertEquals(full.forwardPasses, 8 * 12_000);
});

Deno.test("successiveHalving() keeps the earlier cell on ties and checks its options", async () => {
  const flat = await successiveHalving(
    cells.slice(0, 9),
    (r) => Promise.resolve(new Map(r.cells.map((c) => [cellName(c), 0.5]))),
    { trainImages: 100, valImages: 10 },
  );
  assertEquals(flat.best, cells[0]);
  await assertRejects(() =>
    successiveHalving([], () => Promise.resolve(new Map()), { trainImages: 1, valImages: 1 })
  );
  await assertRejects(() =>
    successiveHalving(cells, () => Promise.resolve(new Map()), {
      trainImages: 1,
      valImages: 1,
      eta: 1,
    })
  );
});
