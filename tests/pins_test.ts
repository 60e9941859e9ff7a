// Pinned outputs that every published number depends on: the PRNG's first values and the fixed
// MNIST split. A change here silently changes every committed result, so it must be deliberate.
import { assertClose, assertEquals } from "./assert.ts";
import {
  fold,
  normalArray,
  permutation,
  randint,
  rng,
  split,
  uniformArray,
} from "../lib/random.ts";
import { loadDataset } from "../lib/data/dataset.ts";
import { crc32Hex } from "../lib/io/crc32.ts";

Deno.test("the PRNG's keys and first draws are pinned", () => {
  assertEquals(rng(0).key, [4016371085, 1422070623]);
  assertEquals(split(rng(0), 2).map((r) => r.key), [[3300361942, 758451537], [
    3105785269,
    569110831,
  ]]);
  assertEquals(fold(rng(0), 7).key, [2374469410, 1082824272]);
  assertClose(uniformArray(rng(0), 4), [0.58924967, 0.90792131, 0.53279442, 0.30493665], {
    rtol: 1e-7,
  });
  assertClose(normalArray(rng(1), 4), [1.77677274, 1.36048841, 1.46926165, -1.14391005], {
    rtol: 1e-6,
  });
  assertEquals([...permutation(rng(2), 10)], [7, 2, 4, 9, 3, 1, 6, 5, 0, 8]);
  assertEquals([...randint(rng(3), 6, 0, 1000)], [749, 357, 328, 165, 622, 245]);
});

Deno.test("the fixed 8,000 / 2,000 split of the embedded MNIST is pinned", async () => {
  const pins = {
    train: [
      8000,
      [9, 9, 3, 6, 7, 4, 5, 9, 6, 7, 1, 0, 0, 7, 6, 5, 2, 2, 3, 8],
      "4b8b0ea5",
      "2ae6a016",
    ],
    test: [
      2000,
      [6, 2, 4, 6, 6, 1, 7, 5, 6, 4, 7, 7, 3, 2, 5, 2, 6, 6, 6, 8],
      "19a7d92f",
      "afd4e69c",
    ],
  } as const;
  for (const [split, [n, first, labelsCrc, imagesCrc]] of Object.entries(pins)) {
    const ds = await loadDataset("mnist", { split: split as "train" | "test" });
    assertEquals(ds.labels.length, n);
    assertEquals([...ds.labels.slice(0, 20)], [...first]);
    // CRC-32 of the labels and the images in split order: pins which digits, and their order.
    assertEquals([crc32Hex(ds.labels), crc32Hex(ds.images)], [labelsCrc, imagesCrc], split);
  }
});

Deno.test("crc32() is the IEEE CRC-32", async () => {
  const { crc32 } = await import("../lib/io/crc32.ts");
  assertEquals(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assertEquals(crc32(new Uint8Array(0)), 0);
});
