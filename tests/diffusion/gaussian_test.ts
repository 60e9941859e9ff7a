import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertNoLeaks, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { normal, rng, uniform } from "../../lib/random.ts";
import { namedSchedule } from "../../lib/diffusion/schedule.ts";
import {
  ddimStep,
  ddpmStep,
  extract,
  pMeanVariance,
  posteriorMeanVariance,
  predictEpsFromX0,
  predictX0FromEps,
  qSample,
} from "../../lib/diffusion/gaussian.ts";

await initEngine({ backend: "wasm", announce: false });
const S = namedSchedule("linear", 1000);
const shape = [4, 5, 5, 2] as const;
const x0 = () => uniform(rng(1), shape, -1, 1) as tf.Tensor4D;
const eps = () => normal(rng(2), shape) as tf.Tensor4D;
const ts = (v: number[]) => tf.tensor1d(v, "int32");

Deno.test("extract() gathers per sample into [N, 1, 1, 1] and scalars for numbers", () => {
  tf.tidy(() => {
    const e = extract(S.betas, ts([0, 999, 10]));
    assert(e.shape.join() === "3,1,1,1");
    assertClose(e.dataSync(), [S.betas[0], S.betas[999], S.betas[10]], { rtol: 1e-6 });
    assert(extract(S.betas, 5).rank === 0);
  });
  assertThrows(() => extract(S.betas, 1000), /outside/);
});

Deno.test("qSample() has mean √ᾱ·x0 and variance 1 − ᾱ over many noise draws", () => {
  tf.tidy(() => {
    const n = 20000, t = 300;
    const x = tf.fill([n, 1, 1, 1], 0.7) as tf.Tensor4D;
    const xt = qSample(
      S,
      x,
      ts(new Array(n).fill(t)) as tf.Tensor1D,
      normal(rng(3), [n, 1, 1, 1]) as tf.Tensor4D,
    );
    const { mean, variance } = tf.moments(xt);
    const ab = S.alphasCumprod[t];
    // Standard errors: mean √((1−ᾱ)/n) ≈ 0.006, variance ≈ (1−ᾱ)·√(2/n) ≈ 0.008.
    assert(
      Math.abs(mean.dataSync()[0] - Math.sqrt(ab) * 0.7) < 0.025,
      `mean ${mean.dataSync()[0]}`,
    );
    assert(
      Math.abs(variance.dataSync()[0] - (1 - ab)) < 0.035,
      `variance ${variance.dataSync()[0]}`,
    );
  });
});

Deno.test("predictX0FromEps() and predictEpsFromX0() invert qSample()", () => {
  tf.tidy(() => {
    const t = ts([0, 100, 500, 999]) as tf.Tensor1D;
    const xt = qSample(S, x0(), t, eps());
    assertClose(predictX0FromEps(S, xt, t, eps()), x0(), { rtol: 1e-3, atol: 2e-3 });
    assertClose(predictEpsFromX0(S, xt, t, x0()), eps(), { rtol: 1e-3, atol: 2e-3 });
  });
});

Deno.test("posteriorMeanVariance() follows Ho et al. eq. 7", () => {
  tf.tidy(() => {
    const t = 250;
    const xt = qSample(S, x0(), t, eps());
    const { mean, variance } = posteriorMeanVariance(S, x0(), xt, t);
    const ab = S.alphasCumprod[t], abp = S.alphasCumprodPrev[t], b = S.betas[t];
    const expected = tf.add(
      tf.mul((Math.sqrt(abp) * b) / (1 - ab), x0()),
      tf.mul((Math.sqrt(1 - b) * (1 - abp)) / (1 - ab), xt),
    );
    assertClose(mean, expected, { rtol: 1e-5, atol: 1e-6 });
    assertClose(variance.dataSync(), [((1 - abp) / (1 - ab)) * b], { rtol: 1e-6 });
  });
});

Deno.test("ddpmStep() with the true ε gives the posterior mean plus σ·z, and no noise at t = 0", () => {
  tf.tidy(() => {
    const t = 40;
    const xt = qSample(S, x0(), t, eps());
    const z = normal(rng(9), shape) as tf.Tensor4D;
    const { prev, x0: x0Hat } = ddpmStep(S, eps(), t, xt, z, { clip: false });
    assertClose(x0Hat, x0(), { rtol: 1e-3, atol: 2e-3 });
    const post = posteriorMeanVariance(S, x0(), xt, t);
    const expected = tf.add(post.mean, tf.mul(Math.exp(0.5 * S.posteriorLogVarianceClipped[t]), z));
    assertClose(prev, expected, { rtol: 1e-3, atol: 1e-3 });
    const last = ddpmStep(S, eps(), ts([0, 0, 0, 0]) as tf.Tensor1D, xt, z, { clip: false });
    assertClose(last.prev, posteriorMeanVariance(S, last.x0, xt, 0).mean, { atol: 1e-6 });
  });
});

Deno.test("pMeanVariance() with learnSigma interpolates log σ² between log β̃ and log β", () => {
  tf.tidy(() => {
    const t = 123;
    const xt = qSample(S, x0(), t, eps());
    for (const [v, expected] of [[-1, S.posteriorLogVarianceClipped[t]], [1, S.logBetas[t]]]) {
      const out = tf.concat([eps(), tf.fill([...shape], v)], 3) as tf.Tensor4D;
      const p = pMeanVariance(S, out, xt, t, { learnSigma: true });
      assertClose(tf.mean(p.logVariance).dataSync(), [expected], { rtol: 1e-5 });
    }
  });
});

Deno.test("ddimStep() with the true ε recovers x0 exactly and is deterministic at η = 0", async () => {
  await assertNoLeaks(() =>
    tf.tidy(() => {
      const t = 600;
      const xt = qSample(S, x0(), t, eps());
      const a = ddimStep(S, eps(), t, -1, xt, { clip: false });
      assertClose(a.prev, x0(), { rtol: 1e-3, atol: 2e-3 });
      assertClose(a.x0, x0(), { rtol: 1e-3, atol: 2e-3 });
      // To an intermediate step: x_prev = q_sample(x0, tPrev, ε) exactly when η = 0.
      const b = ddimStep(S, eps(), t, 200, xt, { clip: false });
      assertClose(b.prev, qSample(S, x0(), 200, eps()), { rtol: 1e-3, atol: 2e-3 });
      const c = ddimStep(S, eps(), t, 200, xt, { clip: false });
      assertClose(c.prev, b.prev, { rtol: 0, atol: 1e-30 }); // bit-identical
      // η > 0 adds σ·z, with σ² = η²(1−ᾱ_prev)/(1−ᾱ)(1−ᾱ/ᾱ_prev).
      const z = normal(rng(5), shape) as tf.Tensor4D;
      const d = ddimStep(S, eps(), t, 200, xt, { clip: false, eta: 1, noise: z });
      const ab = S.alphasCumprod[t], abp = S.alphasCumprod[200];
      const sigma = Math.sqrt(((1 - abp) / (1 - ab)) * (1 - ab / abp));
      const expected = tf.add(
        tf.add(tf.mul(Math.sqrt(abp), x0()), tf.mul(Math.sqrt(1 - abp - sigma ** 2), eps())),
        tf.mul(sigma, z),
      );
      assertClose(d.prev, expected, { rtol: 1e-3, atol: 2e-3 });
    })
  );
  assertThrows(() => ddimStep(S, eps(), 10, 10, eps()), /tPrev/);
});
