import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { rng, uniform } from "../../lib/random.ts";
import { namedSchedule, samplingTimesteps } from "../../lib/diffusion/schedule.ts";
import { sampleLoop } from "../../lib/diffusion/sample.ts";
import type { DenoiseFn } from "../../lib/diffusion/losses.ts";

await initEngine({ backend: "wasm", announce: false });
const S = namedSchedule("linear", 1000);
const shape = [2, 3, 3, 1] as const;
const target = uniform(rng(11), shape, -0.9, 0.9) as tf.Tensor4D;

// The Bayes-optimal ε̂ when the data is the single point `target`: (x_t − √ᾱ_t·x*)/√(1 − ᾱ_t).
function oracle(seen: number[] = [], learnSigma = false): DenoiseFn {
  return (xt, t) =>
    tf.tidy(() => {
      const tv = t.dataSync()[0];
      seen.push(tv);
      const ab = S.alphasCumprod[tv];
      const e = tf.div(tf.sub(xt, tf.mul(Math.sqrt(ab), target)), Math.sqrt(1 - ab)) as tf.Tensor4D;
      return learnSigma ? tf.concat([e, tf.zerosLike(e)], 3) as tf.Tensor4D : e;
    });
}

Deno.test("sampleLoop() DDIM with an oracle denoiser lands on the data point", async () => {
  const seen: number[] = [];
  let calls = 0;
  await assertNoLeaks(() => {
    const x = sampleLoop(S, oracle(seen), shape, rng(0), {
      method: "ddim",
      steps: 50,
      onStep: () => calls++,
    });
    assertClose(x, target, { atol: 1e-3 });
    x.dispose();
  });
  assertEquals(calls, 50);
  assertEquals(seen, samplingTimesteps(1000, 50).reverse());
});

Deno.test("sampleLoop() DDPM (full and respaced) with an oracle denoiser lands on the data point", async () => {
  await assertNoLeaks(() => {
    for (const steps of [1000, 25]) {
      const seen: number[] = [];
      const x = sampleLoop(S, oracle(seen, true), shape, rng(1), {
        method: "ddpm",
        steps,
        learnSigma: true,
      });
      assertClose(x, target, { atol: 2e-3, message: `${steps} steps` });
      assertEquals(seen.length, steps);
      assert(
        seen[0] === 999 && seen[steps - 1] === 0,
        `model timesteps ${seen[0]}..${seen[steps - 1]}`,
      );
      x.dispose();
    }
  });
});

Deno.test("sampleLoop() is a pure function of its Rng", () => {
  const model: DenoiseFn = (xt) => tf.mul(xt, 0.1) as tf.Tensor4D;
  const run = (seed: number) => {
    const x = sampleLoop(S, model, shape, rng(seed), { method: "ddim", steps: 10, eta: 1 });
    const v = Array.from(x.dataSync());
    x.dispose();
    return v;
  };
  assertEquals(run(3), run(3));
  assert(run(3).some((v, i) => v !== run(4)[i]));
});
