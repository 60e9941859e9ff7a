// Fused GroupNorm / SiLU kernels (lib/engine/fused) against the composed ops on the cpu backend.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initEngine } from "../../lib/engine/mod.ts";
import { assertOutputsClose, type Input, input, on } from "./compare.ts";
import {
  GROUP_NORM,
  GROUP_NORM_MOD,
  groupNorm,
  groupNormComposed,
  groupNormScaleShift,
  SILU,
  silu,
} from "../../lib/engine/fused/mod.ts";

await initEngine({ backend: "wasm", announce: false });

/** `fused` on wasm against `composed` on cpu, values and gradients w.r.t. every input. */
async function compare(
  what: string,
  inputs: Input[],
  fused: (...ts: tf.Tensor[]) => tf.Tensor,
  composed: (...ts: tf.Tensor[]) => tf.Tensor,
  tol = 2e-5,
) {
  const withGrads = (f: (...ts: tf.Tensor[]) => tf.Tensor) => (...ts: tf.Tensor[]) => {
    const y = f(...ts);
    // A fixed random cotangent, so every output element matters to the gradient.
    const r = tf.tensor(input(99, y.shape).values, y.shape);
    const grads = tf.grads((...a: tf.Tensor[]) => tf.sum(tf.mul(f(...a), r)))(ts);
    tf.dispose(r);
    return [y, ...grads];
  };
  const got = await on("wasm", inputs, withGrads(fused));
  const want = await on("cpu", inputs, withGrads(composed));
  assertOutputsClose(got, want, tol, what);
}

const composedSilu = (x: tf.Tensor) => tf.mul(x, tf.sigmoid(x));

const SHAPES: [number[], number][] = [
  [[2, 4, 4, 8], 4],
  [[3, 5, 6, 12], 3],
  [[2, 3, 3, 6], 6], // one channel per group (instance norm)
  [[2, 4, 4, 6], 1], // one group (layer norm over H, W, C)
  [[2, 7, 6], 2], // rank 3: [N, T, C]
  [[1, 8, 8, 64], 32], // ADM: 32 groups of 2 channels
];

Deno.test("groupNorm() fused on wasm matches composed ops on cpu, values and gradients", async () => {
  for (const [i, [shape, groups]] of SHAPES.entries()) {
    const c = shape[shape.length - 1];
    for (const act of [false, true]) {
      await compare(
        `groupNorm ${shape} G=${groups} silu=${act}`,
        [input(i, shape, -2, 3), input(10 + i, [c], 0.5, 1.5), input(20 + i, [c])],
        (x, g, b) => groupNorm(x, g, b, groups, 1e-5, act),
        (x, g, b) => {
          const y = groupNormComposed(x, g, b, groups, 1e-5);
          return act ? composedSilu(y) : y;
        },
      );
    }
  }
});

Deno.test("groupNormScaleShift() fused matches GN·(1 + scale) + shift on cpu, with gradients", async () => {
  for (const [i, [shape, groups]] of SHAPES.entries()) {
    const n = shape[0], c = shape[shape.length - 1];
    const mod = [n, ...new Array(shape.length - 2).fill(1), c];
    for (const act of [false, true]) {
      await compare(
        `groupNormScaleShift ${shape} G=${groups} silu=${act}`,
        [
          input(i, shape, -1, 2),
          input(10 + i, [c], 0.5, 1.5),
          input(20 + i, [c]),
          input(30 + i, mod),
          input(40 + i, mod),
        ],
        (x, g, b, sc, sh) => groupNormScaleShift(x, g, b, sc, sh, groups, 1e-5, act),
        (x, g, b, sc, sh) => {
          const y = tf.add(tf.mul(groupNormComposed(x, g, b, groups, 1e-5), tf.add(sc, 1)), sh);
          return act ? composedSilu(y) : y;
        },
      );
    }
  }
});

Deno.test("silu() fused on wasm matches x·σ(x) on cpu, with gradient", async () => {
  await compare("silu", [input(1, [3, 5, 7], -8, 8)], silu, composedSilu);
  await compare("silu of a scalar", [input(2, [], -1, 1)], silu, composedSilu);
});

Deno.test("fused ops pick the fused kernels on wasm and composed ops elsewhere", async () => {
  const x = tf.ones([1, 2, 2, 4]), g = tf.ones([4]), b = tf.zeros([4]);
  const s = tf.zeros([1, 1, 1, 4]);
  const profile = await tf.profile(() => {
    tf.dispose([groupNorm(x, g, b, 2), groupNormScaleShift(x, g, b, s, s, 2), silu(x)]);
  });
  const names = profile.kernels.map((k) => k.name);
  assert.deepEqual(names, [GROUP_NORM, GROUP_NORM_MOD, SILU]);
  tf.dispose([x, g, b, s]);
  // Off wasm the fallback runs: check it against the closed form x·σ(x), not against itself.
  const xs = [-4, -1, -0.25, 0, 0.5, 3];
  const [y] = await on("cpu", [{ values: Float32Array.from(xs), shape: [6] }], (t) => silu(t));
  Array.from(y as ArrayLike<number>).forEach((v, i) => {
    const want = xs[i] / (1 + Math.exp(-xs[i]));
    assert.ok(Math.abs(v - want) < 1e-6, `silu(${xs[i]}) = ${v}, want ${want}`);
  });
});

Deno.test("groupNorm() rejects channels that do not split into groups, and bad scale shapes", () => {
  const x = tf.ones([1, 2, 2, 6]), g = tf.ones([6]), b = tf.zeros([6]);
  assert.throws(() => groupNorm(x, g, b, 4), /do not split into 4 groups/);
  assert.throws(() => groupNorm(x, tf.ones([3]), b, 3), /need 6 values/);
  const bad = tf.zeros([2, 1, 1, 6]);
  assert.throws(() => groupNormScaleShift(x, g, b, bad, bad, 3), /must be \[1, 1, 1, 6\]/);
  tf.dispose([x, g, b, bad]);
});

Deno.test("fused ops leak no tensors through forward and backward", () => {
  const x = tf.randomNormal([2, 4, 4, 8], 0, 1, "float32", 1);
  const g = tf.ones([8]), b = tf.zeros([8]), s = tf.zeros([2, 1, 1, 8]);
  const step = () =>
    tf.dispose(
      tf.grads((x, g, b, s) => tf.sum(silu(groupNormScaleShift(x, g, b, s, s, 4, 1e-5, true))))([
        x,
        g,
        b,
        s,
      ]),
    );
  step();
  const before = [tf.memory().numTensors, tf.engine().backend.numDataIds()];
  step();
  step();
  // Tensors, and heap buffers the kernels allocate for themselves.
  assert.deepEqual([tf.memory().numTensors, tf.engine().backend.numDataIds()], before);
  tf.dispose([x, g, b, s]);
});

Deno.test("adaLN fused in C on wasm matches the composed LayerNorm·(1 + scale) + shift on cpu", async () => {
  const { nativeKernels } = await import("../../lib/engine/native_kernels.ts");
  const { LN_MODULATE } = await import("../../lib/engine/fused/layer_norm.ts");
  const { layerNormModulate } = await import("../../lib/models/nn.ts");
  const composed = (x: tf.Tensor, sh: tf.Tensor, sc: tf.Tensor) => {
    const { mean, variance } = tf.moments(x, -1, true);
    const xhat = tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-6)));
    return tf.add(tf.mul(xhat, tf.add(tf.expandDims(sc, 1), 1)), tf.expandDims(sh, 1));
  };
  // Widths below, at and past the kernels' 16 float lanes, with and without a ragged end.
  for (const [i, [n, t, d]] of [[2, 5, 8], [3, 16, 48], [1, 1, 7], [2, 9, 130]].entries()) {
    await compare(
      `adaLN [${n}, ${t}, ${d}]`,
      [input(30 + i, [n, t, d], -2, 3), input(40 + i, [n, d]), input(50 + i, [n, d])],
      (x, sh, sc) => layerNormModulate(x as tf.Tensor3D, sh, sc, 1e-6),
      composed,
    );
  }
  if (nativeKernels()) { // the fused kernel ran, and leaves no tensors behind
    const x = tf.ones([2, 3, 4]) as tf.Tensor3D, s = tf.zeros([2, 4]);
    const before = tf.memory().numTensors;
    const profile = await tf.profile(() => {
      const g = tf.grads((a: tf.Tensor) => tf.sum(layerNormModulate(a as tf.Tensor3D, s, s)))([x]);
      tf.dispose(g);
      return [];
    });
    assert.ok(profile.kernels.some((k) => k.name === LN_MODULATE));
    assert.equal(tf.memory().numTensors, before);
    tf.dispose([x, s]);
  }
});

Deno.test("DiT's gated residual fused on wasm: the ops' bits forward, their gradients", async () => {
  const { nativeKernels } = await import("../../lib/engine/native_kernels.ts");
  const { GATED_RESIDUAL, GATE_GRAD } = await import("../../lib/engine/fused/gated.ts");
  const { gatedResidual } = await import("../../lib/models/nn.ts");
  const composed = (x: tf.Tensor, g: tf.Tensor, h: tf.Tensor) => tf.add(x, tf.mul(g, h));
  // Widths below and past the kernel's chunk of 256 gate columns; one token; the DiT's shape.
  for (const [i, [n, t, d]] of [[2, 5, 8], [1, 3, 300], [3, 1, 16], [2, 49, 128]].entries()) {
    const inputs = [input(60 + i, [n, t, d]), input(70 + i, [n, 1, d]), input(80 + i, [n, t, d])];
    await compare(
      `gated residual [${n}, ${t}, ${d}]`,
      inputs,
      (x, g, h) => gatedResidual(x as tf.Tensor3D, g as tf.Tensor3D, h as tf.Tensor3D),
      composed,
    );
    // Forward, against the two ops on wasm itself: the same roundings, so the same bits.
    const [a, b] = tf.tidy(() => {
      const [x, g, h] = inputs.map((v) =>
        tf.tensor3d(v.values, v.shape as [number, number, number])
      );
      return [gatedResidual(x, g, h).dataSync(), composed(x, g, h).dataSync()];
    });
    assert.deepEqual(a, b, `gated residual [${n}, ${t}, ${d}] bits`);
  }
  assert.throws(
    () => gatedResidual(tf.zeros([2, 3, 4]), tf.zeros([2, 3, 4]), tf.zeros([2, 3, 4])),
    /gate \[2,3,4\] be \[2, 1, 4\]/,
  );
  if (nativeKernels()) { // both kernels ran, and leave no tensors behind
    const x = tf.ones([2, 3, 4]) as tf.Tensor3D, g = tf.ones([2, 1, 4]) as tf.Tensor3D;
    const before = tf.memory().numTensors;
    const profile = await tf.profile(() => {
      tf.dispose(
        tf.grads((a: tf.Tensor, b: tf.Tensor) =>
          tf.sum(gatedResidual(a as tf.Tensor3D, b as tf.Tensor3D, a as tf.Tensor3D))
        )([x, g]),
      );
      return [];
    });
    const names = profile.kernels.map((k) => k.name);
    assert.ok(names.includes(GATED_RESIDUAL) && names.includes(GATE_GRAD), names.join(" "));
    assert.equal(tf.memory().numTensors, before);
    tf.dispose([x, g]);
  }
});

Deno.test("scaledSoftmax and its gradient, fused on wasm, match composed ops on cpu", async () => {
  const { scaledSoftmax, scaledSoftmaxGrad } = await import("../../lib/engine/fused/softmax.ts");
  // Rows shorter and longer than the kernel's 16 lanes, and one large spread of scores (exp's
  // clamp: e^(s − max) underflows to 0 far below the maximum).
  for (
    const [i, [shape, scale, lo, hi]] of ([
      [[4, 7, 7], 0.5, -3, 3],
      [[2, 5, 49], 0.176, -4, 4],
      [[3, 2, 196], 1, -60, 60],
    ] as const).entries()
  ) {
    const inputs = [input(200 + i, [...shape], lo, hi), input(210 + i, [...shape])];
    const f =
      (softmax: (s: tf.Tensor, c: number) => tf.Tensor, grad: typeof scaledSoftmaxGrad) =>
      (s: tf.Tensor, dp: tf.Tensor) => {
        const p = softmax(s, scale);
        return [p, grad(p, dp, scale)];
      };
    const got = await on("wasm", inputs, f(scaledSoftmax, scaledSoftmaxGrad));
    const want = await on(
      "cpu",
      inputs,
      f(
        (s, c) => tf.softmax(tf.mul(s, c)),
        (p, dp, c) => tf.mul(tf.mul(p, tf.sub(dp, tf.sum(tf.mul(dp, p), -1, true))), c),
      ),
    );
    assertOutputsClose(got, want, 1e-6, `scaledSoftmax ${shape}`);
  }
});

Deno.test("qkvAttention() fused on wasm matches the composed ops on cpu, values and gradients", async () => {
  const { qkvAttention, qkvAttentionComposed, QKV_ATTENTION } = await import(
    "../../lib/engine/fused/attention.ts"
  );
  const { nativeKernels } = await import("../../lib/engine/native_kernels.ts");
  // [n, t, heads, ch]: token counts below, at and past the kernel's blocks of 8 rows and its
  // 16-float vectors; head widths that do and do not fill whole vectors; the U-Net's and DiT's.
  const cases = [[2, 5, 2, 3], [1, 9, 1, 20], [2, 17, 3, 16], [2, 49, 4, 32], [1, 33, 2, 64]];
  // Each vector width the kernels are built for (native/attention_impl.h), where this CPU runs
  // it: the widest by default, narrower ones when DP_ATTENTION_ISA caps them.
  for (const isa of ["default", "avx2", "plain"]) {
    if (isa === "default") Deno.env.delete("DP_ATTENTION_ISA");
    else Deno.env.set("DP_ATTENTION_ISA", isa);
    try {
      for (const [i, [n, t, heads, ch]] of cases.entries()) {
        for (const order of ["legacy", "new"] as const) {
          await compare(
            `qkvAttention (${isa}) [${n}, ${t}] ${heads}×${ch} ${order}`,
            [input(300 + i, [n, t, 3 * heads * ch], -2, 2)],
            (qkv) => qkvAttention(qkv as tf.Tensor3D, heads, order),
            (qkv) => qkvAttentionComposed(qkv as tf.Tensor3D, heads, order),
            1e-5,
          );
        }
      }
    } finally {
      Deno.env.delete("DP_ATTENTION_ISA");
    }
  }
  // Scores far apart: e^(s − max) underflows to 0 for all but a few keys.
  await compare(
    "qkvAttention with a wide spread of scores",
    [input(320, [1, 12, 2 * 3 * 8], -12, 12)],
    (qkv) => qkvAttention(qkv as tf.Tensor3D, 2, "new"),
    (qkv) => qkvAttentionComposed(qkv as tf.Tensor3D, 2, "new"),
    1e-5,
  );
  if (nativeKernels()) { // the fused kernels ran, and leave no tensors behind
    const qkv = tf.ones([2, 3, 12]) as tf.Tensor3D;
    const before = tf.memory().numTensors;
    const profile = await tf.profile(() => {
      tf.dispose(
        tf.grads((a: tf.Tensor) => tf.sum(qkvAttention(a as tf.Tensor3D, 2, "legacy")))([
          qkv,
        ]),
      );
      return [];
    });
    assert.deepEqual(
      profile.kernels.map((k) => k.name).filter((k) => k.startsWith(QKV_ATTENTION)),
      [QKV_ATTENTION, `${QKV_ATTENTION}Grad`],
    );
    assert.equal(tf.memory().numTensors, before);
    qkv.dispose();
  }
});
