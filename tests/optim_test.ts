import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import {
  adam,
  applyUpdates,
  clipByGlobalNorm,
  disposeTensors,
  emaInit,
  emaRateAt,
  emaUpdate,
  type Optimizer,
  sgd,
} from "../lib/optim.ts";
import { disposeParams, toVariables } from "../lib/params.ts";
import { nativeKernels, setNativeKernels } from "../lib/engine/native_kernels.ts";

await initEngine({ backend: "wasm", announce: false });

// Float64 references written from the algorithms' definitions (torch.optim docs).
function adamReference(
  w: number[],
  gradsPerStep: number[][],
  lr: number,
  b1: number,
  b2: number,
  eps: number,
  wd: number,
) {
  const m = w.map(() => 0), v = w.map(() => 0), p = [...w];
  gradsPerStep.forEach((g, i) => {
    const t = i + 1;
    for (let j = 0; j < p.length; j++) {
      p[j] -= lr * wd * p[j];
      m[j] = b1 * m[j] + (1 - b1) * g[j];
      v[j] = b2 * v[j] + (1 - b2) * g[j] ** 2;
      const mHat = m[j] / (1 - b1 ** t), vHat = v[j] / (1 - b2 ** t);
      p[j] -= lr * mHat / (Math.sqrt(vHat) + eps);
    }
  });
  return p;
}

function sgdReference(w: number[], gradsPerStep: number[][], lr: number, mu: number, wd: number) {
  const p = [...w], buf = w.map(() => 0);
  gradsPerStep.forEach((g0, i) => {
    for (let j = 0; j < p.length; j++) {
      const g = g0[j] + wd * p[j];
      buf[j] = i === 0 ? g : mu * buf[j] + g;
      p[j] -= lr * (mu > 0 ? buf[j] : g);
    }
  });
  return p;
}

function run(opt: Optimizer, w0: number[], gradsPerStep: number[][]) {
  const params = toVariables({ w: tf.tensor1d(w0) });
  let state = opt.init(params);
  for (const g of gradsPerStep) {
    const grad = { w: tf.tensor1d(g) };
    const r = opt.update(grad, state, params);
    disposeTensors(grad);
    disposeTensors(state);
    applyUpdates(params, r.updates);
    state = r.state;
  }
  const out = Array.from(params.w.dataSync());
  disposeTensors(state);
  disposeParams(params);
  return out;
}

const w0 = [0.5, -1.25, 2.0];
const grads = [[0.1, -0.2, 0.3], [1.0, 0.5, -0.25], [-0.3, 0.0, 2.0], [0.05, -0.05, 0.5]];

Deno.test("adam() matches a float64 reference of torch's Adam and AdamW", async () => {
  await assertNoLeaks(() => {
    assertClose(
      run(adam({ lr: 0.1 }), w0, grads),
      adamReference(w0, grads, 0.1, 0.9, 0.999, 1e-8, 0),
      { rtol: 1e-5 },
    );
    assertClose(
      run(adam({ lr: 0.05, beta1: 0.8, beta2: 0.99, weightDecay: 0.1 }), w0, grads),
      adamReference(w0, grads, 0.05, 0.8, 0.99, 1e-8, 0.1),
      { rtol: 1e-5 },
    );
  });
});

Deno.test("sgd() matches a float64 reference with and without momentum", async () => {
  await assertNoLeaks(() => {
    assertClose(run(sgd({ lr: 0.1 }), w0, grads), sgdReference(w0, grads, 0.1, 0, 0), {
      rtol: 1e-6,
    });
    assertClose(
      run(sgd({ lr: 0.1, momentum: 0.9, weightDecay: 0.01 }), w0, grads),
      sgdReference(w0, grads, 0.1, 0.9, 0.01),
      {
        rtol: 1e-6,
      },
    );
  });
});

Deno.test("adam() with lrScale is Adam at the scaled rate for that parameter (decay scaled too)", async () => {
  await assertNoLeaks(() => {
    assertClose(
      run(adam({ lr: 0.1, weightDecay: 0.1, lrScale: (n) => (n === "w" ? 0.25 : 1) }), w0, grads),
      adamReference(w0, grads, 0.025, 0.9, 0.999, 1e-8, 0.1),
      { rtol: 1e-5 },
    );
  });
});

Deno.test("adam() takes a learning-rate schedule by step count", () => {
  // With lr(0) = 0 the first step must not move the weights.
  assertClose(run(adam({ lr: (c) => (c === 0 ? 0 : 0.1) }), w0, grads.slice(0, 1)), w0);
});

Deno.test("clipByGlobalNorm() rescales to the norm only when above it", async () => {
  await assertNoLeaks(() => {
    const g = { a: tf.tensor1d([3, 0]), b: tf.tensor1d([4]) }; // global norm 5
    const clipped = clipByGlobalNorm(g, 1);
    assertClose([clipped.norm], [5]);
    assertClose(clipped.grads.a, [0.6, 0], { rtol: 1e-5 });
    assertClose(clipped.grads.b, [0.8], { rtol: 1e-5 });
    const kept = clipByGlobalNorm(g, 10);
    assertClose(kept.grads.a, [3, 0]);
    disposeTensors(g);
    disposeTensors(clipped.grads);
    disposeTensors(kept.grads);
  });
});

Deno.test("emaUpdate() follows ema = r·ema + (1 − r)·w", async () => {
  await assertNoLeaks(() => {
    const params = toVariables({ w: tf.tensor1d([1, 2]) });
    let ema = emaInit(params);
    tf.tidy(() => params.w.assign(tf.tensor1d([3, 6])));
    ema = emaUpdate(ema, params, 0.9);
    ema = emaUpdate(ema, params, 0.9);
    // After two updates toward a constant target: target + r²·(start − target).
    assertClose(ema.w, [3 + 0.81 * (1 - 3), 6 + 0.81 * (2 - 6)], { rtol: 1e-6 });
    disposeTensors(ema);
    disposeParams(params);
  });
});

Deno.test("emaRateAt() warms up as (1 + n)/(10 + n) and then holds the rate", () => {
  assertClose([emaRateAt(0.999, 0), emaRateAt(0.999, 10), emaRateAt(0.9, 1000)], [
    0.1,
    11 / 20,
    0.9,
  ]);
  // What is left of the initial weights after 600 updates: ∏ rate_n = 9!·600!/609! (telescoping),
  // against 0.999⁶⁰⁰ ≈ 0.55 without the warm-up.
  let left = 1;
  for (let n = 0; n < 600; n++) left *= emaRateAt(0.999, n);
  let closed = 1;
  for (let k = 1; k <= 9; k++) closed *= k / (600 + k);
  assertClose([left], [closed], { rtol: 1e-9 });
  assert(left < 1e-15);
});

Deno.test("adam() and emaUpdate() agree between the fused wasm kernels and composed ops on cpu", async () => {
  const onBackend = async (name: string) => {
    await tf.setBackend(name);
    const opts = { lr: 0.05, beta1: 0.8, beta2: 0.99, weightDecay: 0.1 };
    const w = run(adam(opts), w0, grads);
    const params = toVariables({ w: tf.tensor1d(w0) });
    let ema = emaInit(params);
    tf.tidy(() => params.w.assign(tf.tensor1d(w)));
    ema = emaUpdate(ema, params, 0.7);
    const e = Array.from(ema.w.dataSync());
    disposeTensors(ema);
    disposeParams(params);
    return [...w, ...e];
  };
  const cpu = await onBackend("cpu");
  const wasm = await onBackend("wasm");
  assertClose(wasm, cpu, { rtol: 1e-6 });
  assert(
    tf.getKernel("DpAdam", "wasm") && tf.getKernel("DpEma", "wasm"),
    "fused kernels registered",
  );
});

Deno.test("adam(), applyUpdates() and emaUpdate() over several parameters: one list kernel gives each parameter's own bits, in C and in the JS loops", () => {
  const shapes: Record<string, number[]> = { a: [3, 5], b: [40_000], c: [7] };
  const wave = (n: number, f: number, s: number) =>
    Array.from({ length: n }, (_, i) => s * Math.sin(i * f + n));
  const step = (names: string[]) => {
    const init = Object.fromEntries(names.map((k) => {
      const n = shapes[k].reduce((x, y) => x * y, 1);
      return [k, tf.tensor(wave(n, 0.3, 1), shapes[k])];
    }));
    const params = toVariables(init);
    // A slower rate and decay for `c`: the per-parameter coefficients of the list kernel.
    const opt = adam({ lr: 0.01, weightDecay: 0.05, lrScale: (k) => (k === "c" ? 0.5 : 1) });
    let state = opt.init(params);
    let ema = emaInit(params);
    for (let t = 0; t < 3; t++) {
      const g = Object.fromEntries(names.map((k) => {
        const n = shapes[k].reduce((x, y) => x * y, 1);
        return [k, tf.tensor(wave(n, 0.7 + t, 0.1), shapes[k])];
      }));
      const r = opt.update(g, state, params);
      disposeTensors(g);
      disposeTensors(state);
      applyUpdates(params, r.updates);
      state = r.state;
      ema = emaUpdate(ema, params, 0.9);
    }
    const out = Object.fromEntries(names.map((k) => [
      k,
      [params[k], ema[k], state.slots[`m.${k}`], state.slots[`v.${k}`]].map((t) =>
        Array.from(t.dataSync())
      ),
    ]));
    disposeTensors(state);
    disposeTensors(ema);
    disposeParams(params);
    return out;
  };
  const before = nativeKernels();
  const routes = before ? [before, undefined] : [undefined]; // C where built, and the JS loops
  try {
    for (const k of routes) {
      setNativeKernels(k);
      const together = step(["a", "b", "c"]);
      for (const name of ["a", "b", "c"]) {
        assertEquals(together[name], step([name])[name], `${name} alone vs in the list`);
      }
    }
  } finally {
    setNativeKernels(before);
  }
});
