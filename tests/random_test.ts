import { assert, assertEquals, assertNotEquals } from "./assert.ts";
import * as R from "../lib/random.ts";

Deno.test("rng() gives the same draws for the same seed and different ones otherwise", () => {
  assertEquals(R.uniformArray(R.rng(7), 16), R.uniformArray(R.rng(7), 16));
  assertNotEquals(R.uniformArray(R.rng(7), 16), R.uniformArray(R.rng(8), 16));
  assertNotEquals(R.uniformArray(R.rng(0), 16), R.uniformArray(R.rng(2 ** 32), 16));
});

Deno.test("split() and fold() derive distinct, reproducible keys", () => {
  const [a, b] = R.split(R.rng(1));
  assertNotEquals(a.key, b.key);
  assertEquals(R.split(R.rng(1))[1].key, b.key);
  const keys = new Set(Array.from({ length: 1000 }, (_, i) => R.fold(R.rng(1), i).key.join(",")));
  assertEquals(keys.size, 1000);
  assertNotEquals(R.foldName(R.rng(1), "a.weight").key, R.foldName(R.rng(1), "a.bias").key);
});

Deno.test("uniformArray() and normalArray() have the right moments", () => {
  const n = 200_000;
  const u = R.uniformArray(R.rng(3), n);
  const z = R.normalArray(R.rng(4), n);
  const mean = (a: Float32Array) => a.reduce((s, x) => s + x, 0) / a.length;
  const variance = (a: Float32Array) => {
    const m = mean(a);
    return a.reduce((s, x) => s + (x - m) ** 2, 0) / a.length;
  };
  assert(u.every((x) => x >= 0 && x < 1));
  // Standard errors: uniform mean 0.29/sqrt(n) ~ 6.5e-4, normal mean 2.2e-3, variance ~3.2e-3.
  assert(Math.abs(mean(u) - 0.5) < 4e-3, `uniform mean ${mean(u)}`);
  assert(Math.abs(variance(u) - 1 / 12) < 2e-3, `uniform variance ${variance(u)}`);
  assert(Math.abs(mean(z)) < 1.2e-2, `normal mean ${mean(z)}`);
  assert(Math.abs(variance(z) - 1) < 1.5e-2, `normal variance ${variance(z)}`);
  // A tail check: P(|z| > 2) = 0.0455.
  const tail = z.filter((x) => Math.abs(x) > 2).length / n;
  assert(Math.abs(tail - 0.0455) < 3e-3, `tail ${tail}`);
});

Deno.test("randint() stays in range and covers it; permutation() is a permutation", () => {
  const r = R.randint(R.rng(5), 10_000, -3, 4);
  assert(r.every((x) => x >= -3 && x < 4));
  assertEquals(new Set(r).size, 7);
  const p = R.permutation(R.rng(6), 1000);
  assertEquals([...p].sort((a, b) => a - b), Array.from({ length: 1000 }, (_, i) => i));
  assertNotEquals([...p], Array.from({ length: 1000 }, (_, i) => i));
});

Deno.test("rng() rejects seeds that are not safe integers", () => {
  let message = "";
  try {
    R.rng(1.5);
  } catch (e) {
    message = (e as Error).message;
  }
  assertEquals(message, "Seed must be a safe integer, got 1.5");
});
