import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertNoLeaks } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { normal, randint, rng } from "../../lib/random.ts";
import { namedSchedule } from "../../lib/diffusion/schedule.ts";
import {
  diffusionLoss,
  discretizedGaussianLogLikelihood,
  normalKl,
  stopGradient,
  trainingLosses,
} from "../../lib/diffusion/losses.ts";

await initEngine({ backend: "wasm", announce: false });
const S = namedSchedule("linear", 1000);
const shape = [3, 4, 4, 2] as const;
// 8-bit levels scaled to [−1, 1], including both edges.
const x0 = () =>
  tf.tidy(() => {
    const levels = tf.tensor(randint(rng(1), 96, 0, 256), [...shape], "float32");
    const edges = tf.concat([
      tf.fill([3, 1, 4, 2], 0),
      tf.fill([3, 1, 4, 2], 255),
      tf.slice(levels, [0, 2], [-1, 2]),
    ], 1);
    return tf.sub(tf.div(edges, 127.5), 1) as tf.Tensor4D;
  });
const eps = () => normal(rng(2), shape) as tf.Tensor4D;
const approxCdf = (x: number) =>
  0.5 * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

Deno.test("normalKl() matches the closed form", () => {
  tf.tidy(() => {
    const [m1, lv1, m2, lv2] = [0.3, -1.2, -0.5, 0.4];
    const expected = 0.5 * (-1 + lv2 - lv1 + Math.exp(lv1 - lv2) + (m1 - m2) ** 2 * Math.exp(-lv2));
    const kl = normalKl(tf.scalar(m1), tf.scalar(lv1), tf.scalar(m2), tf.scalar(lv2));
    assertClose(kl.dataSync(), [expected], { rtol: 1e-5 });
    assertClose(normalKl(tf.scalar(1), tf.scalar(0), tf.scalar(1), tf.scalar(0)).dataSync(), [0], {
      atol: 1e-7,
    });
  });
});

Deno.test("discretizedGaussianLogLikelihood() sums to one over the 256 bins", () => {
  tf.tidy(() => {
    const levels = tf.sub(tf.div(tf.range(0, 256), 127.5), 1);
    for (
      const [mean, logScale] of [[0.1, Math.log(0.05)], [-0.9, Math.log(0.3)], [
        0.999,
        Math.log(0.01),
      ]]
    ) {
      const lp = discretizedGaussianLogLikelihood(
        levels,
        tf.fill([256], mean),
        tf.fill([256], logScale),
      );
      assertClose(tf.sum(tf.exp(lp)).dataSync(), [1], { rtol: 1e-4, message: `mean ${mean}` });
    }
  });
});

Deno.test("trainingLosses() is the ε MSE without learnSigma", async () => {
  await assertNoLeaks(() =>
    tf.tidy(() => {
      const t = tf.tensor1d([5, 500, 999], "int32");
      const guess = tf.mul(eps(), 0.5) as tf.Tensor4D;
      const { loss, mse, vb } = trainingLosses(S, () => guess, x0(), t, eps());
      assert(vb === undefined);
      const expected = tf.mean(tf.reshape(tf.square(tf.sub(eps(), guess)), [3, -1]), 1);
      assertClose(mse, expected, { rtol: 1e-5 });
      assertClose(loss, expected, { rtol: 1e-5 });
    })
  );
});

Deno.test("trainingLosses() hybrid: vb is the KL for t > 0 and the decoder NLL at t = 0", () => {
  tf.tidy(() => {
    // A perfect ε with v = −1 (σ² = β̃): p equals the true posterior, so the KL vanishes.
    const t = tf.tensor1d([0, 1, 700], "int32");
    const perfect = tf.concat([eps(), tf.fill([...shape], -1)], 3) as tf.Tensor4D;
    const { loss, mse, vb } = trainingLosses(S, () => perfect, x0(), t, eps(), {
      learnSigma: true,
    });
    const v = vb!.arraySync();
    assert(Math.abs(v[1]) < 1e-4 && Math.abs(v[2]) < 1e-4, `KL terms ${v}`);
    assertClose(mse, [0, 0, 0], { atol: 1e-10 });
    // At t = 0 the mean is x0 itself and σ = √β̃_1: −log2 of the bin mass, edges open-ended.
    const sigma = Math.sqrt(S.posteriorVariance[1]);
    const xs = tf.slice(x0(), [0], [1]).dataSync();
    const nll = Array.from(xs).map((x) => {
      const plus = approxCdf(1 / 255 / sigma), minus = approxCdf(-1 / 255 / sigma);
      const p = x < -0.999 ? plus : x > 0.999 ? 1 - minus : plus - minus;
      return -Math.log2(p);
    });
    assertClose([v[0]], [nll.reduce((a, b) => a + b, 0) / nll.length], { rtol: 1e-3 });
    assertClose(loss, tf.add(mse, vb!), { rtol: 1e-6 });
  });
});

Deno.test("trainingLosses() hybrid: the vb term sends no gradient into the ε channels", () => {
  const out = tf.variable(normal(rng(7), [3, 4, 4, 4]));
  const t = tf.tensor1d([0, 3, 400], "int32");
  const x = x0(), n = eps();
  const { grads } = tf.variableGrads(() =>
    tf.tidy(() =>
      tf.sum(trainingLosses(S, () => out as tf.Tensor4D, x, t, n, { learnSigma: true }).vb!)
    )
  );
  const [gEps, gV] = tf.split(grads[out.name], 2, 3);
  assertClose(tf.max(tf.abs(gEps)).dataSync(), [0], { atol: 1e-30 });
  assert(tf.max(tf.abs(gV)).dataSync()[0] > 0);
  // And the full loss does reach them, through the MSE.
  const full = tf.variableGrads(() =>
    diffusionLoss(S, () => out as tf.Tensor4D, x, t, n, { learnSigma: true })
  );
  assert(tf.max(tf.abs(tf.split(full.grads[out.name], 2, 3)[0])).dataSync()[0] > 0);
  tf.dispose([out, t, x, n, grads[out.name], gEps, gV, full.grads[out.name], full.value]);
});

Deno.test("stopGradient() is the identity forward", () => {
  tf.tidy(() => assertClose(stopGradient(tf.tensor1d([1, -2])), [1, -2]));
});
