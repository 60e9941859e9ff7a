import { assert, assertEquals, assertThrows } from "../assert.ts";
import {
  betaSchedule,
  cosineAlphaBar,
  makeSchedule,
  namedSchedule,
  respace,
  samplingTimesteps,
} from "../../lib/diffusion/schedule.ts";

const near = (a: number, b: number, tol = 1e-12) =>
  Math.abs(a - b) <= tol * Math.max(1, Math.abs(b));

Deno.test("betaSchedule() linear has the scaled endpoints and constant steps", () => {
  const b = betaSchedule("linear", 1000);
  assertEquals(b.length, 1000);
  assert(near(b[0], 1e-4) && b[999] === 0.02);
  assert(near(b[500] - b[499], (0.02 - 1e-4) / 999));
  const b250 = betaSchedule("linear", 250); // s = 4
  assert(near(b250[0], 4e-4) && near(b250[249], 0.08));
});

Deno.test("betaSchedule() cosine reproduces the ᾱ(t) formula through its cumprod", () => {
  const s = namedSchedule("cosine", 1000);
  for (const t of [0, 1, 10, 500, 900]) {
    const expected = cosineAlphaBar((t + 1) / 1000) / cosineAlphaBar(0);
    assert(
      near(s.alphasCumprod[t], expected, 1e-9),
      `ᾱ[${t}] = ${s.alphasCumprod[t]} vs ${expected}`,
    );
  }
  const b = betaSchedule("cosine", 1000);
  assertEquals(Math.max(...b), 0.999); // the last beta is capped
  assert(b.every((x) => x > 0 && x <= 0.999));
});

Deno.test("makeSchedule() tables satisfy their definitions", () => {
  const s = namedSchedule("linear", 1000);
  let prod = 1;
  for (let t = 0; t < s.T; t++) {
    prod *= 1 - s.betas[t];
    assert(near(s.alphasCumprod[t], prod));
    const prev = t === 0 ? 1 : s.alphasCumprod[t - 1];
    assert(near(s.alphasCumprodPrev[t], prev));
    // Posterior variance identity: β̃ = β(1 − ᾱ_prev)/(1 − ᾱ); also 1/β̃ = α/β + 1/(1 − ᾱ_prev).
    const pv = (s.betas[t] * (1 - prev)) / (1 - s.alphasCumprod[t]);
    assert(near(s.posteriorVariance[t], pv));
    if (t > 0) assert(near(1 / pv, s.alphas[t] / s.betas[t] + 1 / (1 - prev), 1e-9));
    assert(near(s.sqrtRecipAlphasCumprod[t] ** 2 - 1, s.sqrtRecipm1AlphasCumprod[t] ** 2, 1e-9));
    // The posterior mean is unbiased in x0 when x_t = √ᾱ x0: c1 + c2·√ᾱ = √ᾱ_prev.
    assert(
      near(
        s.posteriorMeanCoef1[t] + s.posteriorMeanCoef2[t] * s.sqrtAlphasCumprod[t],
        Math.sqrt(prev),
        1e-9,
      ),
    );
  }
  assertEquals(s.posteriorVariance[0], 0);
  assertEquals(s.posteriorLogVarianceClipped[0], Math.log(s.posteriorVariance[1]));
  assert(Object.isFrozen(s));
  assertEquals(namedSchedule("linear", 1000), s); // computed once
  assertThrows(() => makeSchedule(new Float64Array([0.1, 0])), /beta\[1\]/);
});

Deno.test("samplingTimesteps() matches space_timesteps for ddimN and uniform sections", () => {
  assertEquals(samplingTimesteps(1000, 50), Array.from({ length: 50 }, (_, i) => 20 * i));
  assertEquals(samplingTimesteps(1000, 250).slice(0, 3), [0, 4, 8]);
  assertEquals(samplingTimesteps(1000, 1000).length, 1000);
  assertThrows(() => samplingTimesteps(1000, 300), /no integer stride/);
  // Python: [round(i * 999 / 9) for i in range(10)] (half to even).
  assertEquals(samplingTimesteps(1000, 10, "uniform"), [
    0,
    111,
    222,
    333,
    444,
    555,
    666,
    777,
    888,
    999,
  ]);
  assertEquals(samplingTimesteps(10, 4, "uniform"), [0, 3, 6, 9]);
  assertEquals(samplingTimesteps(5, 3, "uniform"), [0, 2, 4]);
  assertEquals(samplingTimesteps(6, 3, "uniform"), [0, 2, 5]); // round(2.5) = 2 in Python
});

Deno.test("respace() keeps ᾱ at the kept steps and maps indices back", () => {
  const base = namedSchedule("linear", 1000);
  const kept = samplingTimesteps(1000, 50);
  const r = respace(base, kept);
  assertEquals(r.T, 50);
  assertEquals(Array.from(r.timestepMap), kept);
  kept.forEach((t, j) => assert(near(r.alphasCumprod[j], base.alphasCumprod[t], 1e-9)));
  const full = respace(base, samplingTimesteps(1000, 1000));
  assert(full.betas.every((b, i) => near(b, base.betas[i], 1e-9)));
});
