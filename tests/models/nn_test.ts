import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { normal, rng } from "../../lib/random.ts";
import {
  adaptiveAvgPool,
  adaptivePoolMatrix,
  avgPool2,
  conv2d,
  dropout,
  geluExact,
  geluTanh,
  groupNorm,
  groupNormScaleShift,
  initParam,
  layerNorm,
  layerNormModulate,
  linear,
  qkvAttention,
  silu,
  timestepEmbedding,
  upsampleNearest2,
} from "../../lib/models/nn.ts";

await initEngine({ backend: "wasm", announce: false });
const randn = (seed: number, shape: number[]) => normal(rng(seed), shape);

Deno.test("linear() is x·W + b for any leading shape", () => {
  tf.tidy(() => {
    const x = randn(1, [2, 3, 4]), w = randn(2, [4, 5]), b = randn(3, [5]);
    const y = linear(x, w, b);
    assertEquals(y.shape, [2, 3, 5]);
    assertClose(y, tf.add(tf.reshape(tf.matMul(tf.reshape(x, [6, 4]), w), [2, 3, 5]), b), {
      rtol: 1e-5,
      atol: 1e-6,
    });
  });
});

Deno.test("conv2d() pads like PyTorch, including stride 2", () => {
  tf.tidy(() => {
    const x = randn(4, [2, 6, 6, 3]) as tf.Tensor4D, w = randn(5, [3, 3, 3, 4]), b = randn(6, [4]);
    const padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]);
    for (const stride of [1, 2]) {
      const ref = tf.add(tf.conv2d(padded, w as tf.Tensor4D, stride, "valid"), b);
      assertClose(conv2d(x, w, b, { stride, padding: 1 }), ref, { rtol: 1e-4, atol: 1e-5 });
    }
    assertEquals(conv2d(x, w, b, { stride: 2, padding: 1 }).shape, [2, 3, 3, 4]);
    assertEquals(conv2d(x, randn(7, [1, 1, 3, 8]), undefined).shape, [2, 6, 6, 8]);
  });
});

Deno.test("groupNorm() standardises each group over space and its channels", () => {
  tf.tidy(() => {
    const [n, h, w, c, g] = [2, 3, 3, 8, 4];
    const x = tf.add(tf.mul(randn(8, [n, h, w, c]), 3), 1) as tf.Tensor4D;
    const y = groupNorm(x, tf.ones([c]), tf.zeros([c]), g);
    const xs = x.arraySync(), ys = y.arraySync();
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < g; k++) {
        const vals: number[] = [], outs: number[] = [];
        for (let a = 0; a < h; a++) {
          for (let bb = 0; bb < w; bb++) {
            for (let ch = k * 2; ch < k * 2 + 2; ch++) {
              vals.push(xs[i][a][bb][ch]);
              outs.push(ys[i][a][bb][ch]);
            }
          }
        }
        const m = vals.reduce((s, v) => s + v, 0) / vals.length;
        const v = vals.reduce((s, u) => s + (u - m) ** 2, 0) / vals.length; // biased, as PyTorch
        assertClose(outs, vals.map((u) => (u - m) / Math.sqrt(v + 1e-5)), {
          rtol: 1e-4,
          atol: 1e-4,
        });
      }
    }
    const gamma = randn(9, [c]),
      beta = randn(10, [c]),
      scale = randn(11, [n, 1, 1, c]),
      shift = randn(12, [n, 1, 1, c]);
    const affine = groupNorm(x, gamma, beta, g);
    assertClose(
      groupNormScaleShift(x, gamma, beta, scale, shift, g),
      tf.add(tf.mul(affine, tf.add(scale, 1)), shift),
      {
        rtol: 1e-5,
        atol: 1e-5,
      },
    );
  });
  assertThrows(
    () => groupNorm(tf.zeros([1, 2, 2, 48]) as tf.Tensor4D, tf.ones([48]), tf.zeros([48])),
    /do not split into 32 groups/,
  );
});

Deno.test("silu() and layerNorm() match their formulas", () => {
  tf.tidy(() => {
    const xs = [-3, -0.5, 0, 2];
    assertClose(silu(tf.tensor1d(xs)), xs.map((x) => x / (1 + Math.exp(-x))), {
      rtol: 1e-5,
      atol: 1e-7,
    });
    const x = tf.tensor2d([[1, 2, 3, 6]]);
    const m = 3, v = (4 + 1 + 0 + 9) / 4;
    assertClose(layerNorm(x), [1, 2, 3, 6].map((u) => (u - m) / Math.sqrt(v + 1e-5)), {
      rtol: 1e-5,
    });
    assertClose(
      layerNorm(x, tf.fill([4], 2), tf.fill([4], 1)),
      [1, 2, 3, 6].map((u) => (2 * (u - m)) / Math.sqrt(v + 1e-5) + 1),
      {
        rtol: 1e-5,
      },
    );
  });
});

Deno.test("timestepEmbedding() puts cos first and pads odd widths", () => {
  tf.tidy(() => {
    const e = timestepEmbedding(tf.tensor1d([0, 7], "int32"), 6).arraySync();
    assertClose(e[0], [1, 1, 1, 0, 0, 0], { atol: 1e-7 });
    const freqs = [0, 1, 2].map((i) => Math.exp((-Math.log(10000) * i) / 3));
    assertClose(
      e[1],
      [...freqs.map((f) => Math.cos(7 * f)), ...freqs.map((f) => Math.sin(7 * f))],
      { rtol: 1e-5, atol: 1e-6 },
    );
    const odd = timestepEmbedding(tf.tensor1d([3]), 5);
    assertEquals(odd.shape, [1, 5]);
    assertEquals(odd.arraySync()[0][4], 0);
  });
});

// Naive attention on one head: q, k, v are [T][ch] arrays.
function naiveHead(q: number[][], k: number[][], v: number[][]): number[][] {
  const scale = 1 / Math.sqrt(q[0].length);
  return q.map((qi) => {
    const logits = k.map((kj) => kj.reduce((s, x, c) => s + x * qi[c], 0) * scale);
    const mx = Math.max(...logits);
    const ex = logits.map((l) => Math.exp(l - mx));
    const z = ex.reduce((a, b) => a + b, 0);
    return v[0].map((_, c) => ex.reduce((s, e, j) => s + (e / z) * v[j][c], 0));
  });
}

Deno.test("qkvAttention() legacy and new orders read the channels as documented", () => {
  tf.tidy(() => {
    const [n, len, heads, ch] = [2, 5, 2, 3];
    const qkv = randn(13, [n, len, 3 * heads * ch]) as tf.Tensor3D;
    const arr = qkv.arraySync();
    for (const order of ["legacy", "new"] as const) {
      const out = qkvAttention(qkv, heads, order).arraySync();
      for (let b = 0; b < n; b++) {
        for (let h = 0; h < heads; h++) {
          // Channel of (part j ∈ {q, k, v}, head h, c).
          const idx = (
            j: number,
            c: number,
          ) => (order === "legacy" ? h * 3 * ch + j * ch + c : j * heads * ch + h * ch + c);
          const part = (j: number) =>
            arr[b].map((row) => Array.from({ length: ch }, (_, c) => row[idx(j, c)]));
          const expected = naiveHead(part(0), part(1), part(2));
          const got = out[b].map((row) => row.slice(h * ch, (h + 1) * ch));
          assertClose(got.flat(), expected.flat(), {
            rtol: 1e-4,
            atol: 1e-5,
            message: `${order} b${b} h${h}`,
          });
        }
      }
    }
    // One head: both orders are [q | k | v].
    const one = randn(14, [1, 4, 6]) as tf.Tensor3D;
    assertClose(qkvAttention(one, 1, "legacy"), qkvAttention(one, 1, "new"), {
      rtol: 1e-6,
      atol: 1e-7,
    });
  });
});

Deno.test("adaptiveAvgPool() averages PyTorch's overlapping windows, by hand and against AdaptiveAvgPool2d", () => {
  // n = 7, k = 3: windows [0, 3), [2, 5), [4, 7) (floor(i·7/3) .. ceil((i+1)·7/3)).
  const m = adaptivePoolMatrix(7, 3);
  assertClose(Array.from(m.subarray(0, 7)), [1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0], { atol: 1e-7 });
  assertClose(Array.from(m.subarray(7, 14)), [0, 0, 1 / 3, 1 / 3, 1 / 3, 0, 0], { atol: 1e-7 });
  assertClose(Array.from(m.subarray(14)), [0, 0, 0, 0, 1 / 3, 1 / 3, 1 / 3], { atol: 1e-7 });
  // A 2×2 map to 1×1 is the mean; to 2×2 it is the identity.
  const x = tf.tensor4d([1, 2, 3, 4], [1, 2, 2, 1]);
  assertClose(Array.from(adaptiveAvgPool(x, 1).dataSync()), [2.5], { atol: 1e-7 });
  assertClose(Array.from(adaptiveAvgPool(x, 2).dataSync()), [1, 2, 3, 4], { atol: 1e-7 });
  // torch.nn.AdaptiveAvgPool2d(3) on x[n,h,w,c] = sin(flat index) of shape [2, 7, 5, 3], NHWC,
  // first 9 outputs (printed by /usr/bin/python3 with torch 2.x).
  const y = tf.tensor4d(Array.from({ length: 210 }, (_, i) => Math.sin(i)), [2, 7, 5, 3]);
  const got = adaptiveAvgPool(y, 3);
  assertEquals(got.shape, [2, 3, 3, 3]);
  assertClose(
    Array.from(got.dataSync().subarray(0, 9)),
    [0.00872, 0.01195, 0.00419, 0.04732, -0.0005, -0.04786, -0.0044, -0.01199, -0.00856],
    { atol: 1e-5 },
  );
  tf.dispose([x, y, got]);
});

Deno.test("avgPool2() and upsampleNearest2() resample by 2", () => {
  tf.tidy(() => {
    const x = tf.tensor4d([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [1, 4, 4, 1]);
    assertClose(avgPool2(x), [3.5, 5.5, 11.5, 13.5]);
    const u = upsampleNearest2(tf.tensor4d([1, 2, 3, 4], [1, 2, 2, 1]));
    assertClose(u, [1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]);
    // The gradient sums each 2×2 block, for every sample (tfjs's cpu resize gradient does not).
    const dy = tf.reshape(tf.range(0, 2 * 4 * 6 * 3), [2, 4, 6, 3]);
    const g = tf.grad((a: tf.Tensor) => tf.sum(tf.mul(upsampleNearest2(a as tf.Tensor4D), dy)))(
      tf.zeros([2, 2, 3, 3]),
    );
    const blocks = tf.sum(tf.reshape(dy, [2, 2, 2, 3, 2, 3]), [2, 4]);
    assertClose(g, tf.reshape(blocks, [2, 2, 3, 3]));
  });
});

Deno.test("initParam() is PyTorch's default uniform, keyed by name", () => {
  tf.tidy(() => {
    const spec = { shape: [3, 3, 16, 8], init: { kind: "uniform", fanIn: 144 } } as const;
    const a = initParam(rng(0), "x.weight", spec).dataSync();
    assert(a.every((v) => Math.abs(v) <= 1 / 12) && Math.max(...a) > 0.07, "bound 1/√144");
    assertEquals(Array.from(initParam(rng(0), "x.weight", spec).dataSync()), Array.from(a));
    assert(initParam(rng(0), "y.weight", spec).dataSync()[0] !== a[0]);
    assertEquals(
      Array.from(initParam(rng(0), "z", { shape: [2], init: { kind: "ones" } }).dataSync()),
      [1, 1],
    );
  });
});

Deno.test("dropout() is the identity without a key and keeps ~1 − rate of units scaled up", () => {
  tf.tidy(() => {
    const x = tf.ones([10000]);
    assert(dropout(x, 0.3) === x);
    const y = dropout(x, 0.3, rng(1)).dataSync();
    const kept = y.filter((v) => v > 0);
    assert(Math.abs(kept.length / 10000 - 0.7) < 0.03, `kept ${kept.length}`);
    assertClose([kept[0]], [1 / 0.7], { rtol: 1e-6 });
  });
});

// The composed reference of qkvAttention: plain tfjs ops, autograd gradients, ADM's two scalings.
function composedAttention(qkv: tf.Tensor3D, heads: number, order: "legacy" | "new"): tf.Tensor {
  const [n, len, width] = qkv.shape;
  const ch = width / (3 * heads);
  const [q, k, v] = order === "legacy"
    ? tf.split(tf.transpose(tf.reshape(qkv, [n, len, heads, 3 * ch]), [0, 2, 1, 3]), 3, 3)
    : tf.split(tf.transpose(tf.reshape(qkv, [n, len, 3 * heads, ch]), [0, 2, 1, 3]), 3, 1);
  const s = Math.pow(ch, -0.25);
  const w = tf.softmax(tf.matMul(tf.mul(q, s), tf.mul(k, s), false, true)); // [N, H, T, T]
  return tf.reshape(tf.transpose(tf.matMul(w, v), [0, 2, 1, 3]), [n, len, heads * ch]);
}

// The hand-written gradients against tfjs autograd of the composed ops, on a random cotangent.
Deno.test("layerNormModulate() and qkvAttention() match the composed ops, values and gradients", () => {
  const [n, t, d, heads] = [2, 5, 12, 3];
  const x = normal(rng(20), [n, t, d]) as tf.Tensor3D;
  const shift = normal(rng(21), [n, d]), scale = normal(rng(22), [n, d]);
  const qkv = normal(rng(23), [n, t, 3 * d]) as tf.Tensor3D;
  const wOut = normal(rng(24), [n, t, d]);
  const cases: [
    string,
    tf.Tensor[],
    (...a: tf.Tensor[]) => tf.Tensor,
    (...a: tf.Tensor[]) => tf.Tensor,
  ][] = [
    [
      "layerNormModulate",
      [x, shift, scale],
      (a, b, c) => layerNormModulate(a as tf.Tensor3D, b, c),
      (a, b, c) =>
        tf.add(
          tf.mul(layerNorm(a, undefined, undefined, 1e-6), tf.add(tf.expandDims(c, 1), 1)),
          tf.expandDims(b, 1),
        ),
    ],
    ...(["legacy", "new"] as const).map((order) =>
      [
        `qkvAttention ${order}`,
        [qkv],
        (a: tf.Tensor) => qkvAttention(a as tf.Tensor3D, heads, order),
        (a: tf.Tensor) => composedAttention(a as tf.Tensor3D, heads, order),
      ] as [string, tf.Tensor[], (...a: tf.Tensor[]) => tf.Tensor, (...a: tf.Tensor[]) => tf.Tensor]
    ),
  ];
  for (const [name, inputs, ours, composed] of cases) {
    tf.tidy(() => {
      assertClose(ours(...inputs), composed(...inputs), {
        rtol: 1e-4,
        atol: 1e-5,
        message: `${name} value`,
      });
      const loss = (f: (...a: tf.Tensor[]) => tf.Tensor) => (...a: tf.Tensor[]) =>
        tf.sum(tf.mul(f(...a), wOut));
      const g1 = tf.grads(loss(ours))(inputs), g2 = tf.grads(loss(composed))(inputs);
      g1.forEach((g, i) =>
        assertClose(g, g2[i], { rtol: 1e-3, atol: 1e-4, message: `${name} gradient ${i}` })
      );
    });
  }
  tf.dispose([x, shift, scale, qkv, wOut]);
});

Deno.test("geluTanh() and geluExact() match their closed forms, and their gradients the derivatives", () => {
  const xs = [-3, -1, -0.2, 0, 0.5, 2];
  const tanhForm = (v: number) =>
    0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
  // erf by Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7): independent of tf.erf.
  const erf = (z: number) => {
    const s = Math.sign(z), a = Math.abs(z), u = 1 / (1 + 0.3275911 * a);
    const poly = u *
      (0.254829592 + u * (-0.284496736 + u * (1.421413741 + u * (-1.453152027 + u * 1.061405429))));
    return s * (1 - poly * Math.exp(-a * a));
  };
  const exactForm = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));
  for (
    const [name, f, ref] of [["tanh", geluTanh, tanhForm], ["exact", geluExact, exactForm]] as const
  ) {
    tf.tidy(() => {
      const x = tf.tensor1d(xs);
      assertClose(f(x), xs.map(ref), { rtol: 1e-5, atol: 1e-6, message: `${name} value` });
      const g = tf.grad((z: tf.Tensor) => tf.sum(tf.mul(f(z), tf.tensor1d([1, 2, 3, 4, 5, 6]))))(x);
      const h = 1e-3;
      const numeric = xs.map((v, i) => (i + 1) * (ref(v + h) - ref(v - h)) / (2 * h));
      assertClose(g, numeric, { rtol: 1e-3, atol: 1e-4, message: `${name} gradient` });
    });
  }
  // The two forms differ by 4e-4 at x = −3, forty times the value tolerance: a mix-up would show.
  assert(Math.abs(tanhForm(-3) - exactForm(-3)) > 4e-4);
});
