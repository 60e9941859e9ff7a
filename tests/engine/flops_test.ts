// The FLOP counter (lib/engine/flops.ts) against closed forms: 2 FLOPs per multiply-add.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initEngine } from "../../lib/engine/mod.ts";
import { countFlops, kernelFlops } from "../../lib/engine/flops.ts";
import { QKV_ATTENTION, QKV_ATTENTION_GRAD } from "../../lib/engine/fused/attention.ts";
import * as unet from "../../lib/models/unet.ts";
import { rng } from "../../lib/random.ts";
import { disposeParams } from "../../lib/params.ts";

await initEngine({ backend: "wasm", announce: false });

// A 3×3 conv, stride 2, 'same': N=2, 9×9×3 -> 5×5×4.
const N = 2, H = 9, CIN = 3, COUT = 4, HO = 5;
const CONV = 2 * N * HO * HO * COUT * 3 * 3 * CIN;

Deno.test("flops: a strided conv2d is 2·N·Ho·Wo·Cout·kh·kw·Cin", async () => {
  const x = tf.ones([N, H, H, CIN]) as tf.Tensor4D, w = tf.ones([3, 3, CIN, COUT]) as tf.Tensor4D;
  const c = await countFlops(() => tf.conv2d(x, w, 2, "same"));
  assert.equal(c.total, CONV);
  assert.deepEqual(c.byKernel, { Conv2D: CONV });
  tf.dispose([x, w]);
});

Deno.test("flops: a conv2d's gradient adds its input and filter backprops, one forward each", async () => {
  const x = tf.ones([N, H, H, CIN]) as tf.Tensor4D, w = tf.ones([3, 3, CIN, COUT]) as tf.Tensor4D;
  const before = tf.memory().numTensors;
  const c = await countFlops(() =>
    tf.grads((a: tf.Tensor, b: tf.Tensor) =>
      tf.sum(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, 2, "same"))
    )([x, w])
  );
  assert.deepEqual(c.byKernel, {
    Conv2D: CONV,
    Conv2DBackpropInput: CONV,
    Conv2DBackpropFilter: CONV,
  });
  assert.equal(tf.memory().numTensors, before, "countFlops disposes what f returns");
  tf.dispose([x, w]);
});

Deno.test("flops: matMul counts 2·B·M·N·K whichever operand is transposed", async () => {
  const [B, M, K, NN] = [3, 5, 7, 2];
  const cases: [number[], number[], boolean, boolean][] = [
    [[B, M, K], [B, K, NN], false, false],
    [[B, K, M], [B, K, NN], true, false],
    [[B, M, K], [B, NN, K], false, true],
    [[B, K, M], [B, NN, K], true, true],
  ];
  for (const [sa, sb, ta, tb] of cases) {
    const a = tf.ones(sa), b = tf.ones(sb);
    const c = await countFlops(() => tf.matMul(a, b, ta, tb));
    assert.equal(c.total, 2 * B * M * NN * K, `transposeA ${ta}, transposeB ${tb}`);
    tf.dispose([a, b]);
  }
  // Square a ([K, M] with K = M) is unambiguous: K = M either way.
  assert.equal(kernelFlops("BatchMatMul", [[1, 4, 4], [1, 4, 6]], [1, 4, 6]), 2 * 4 * 6 * 4);
  // Attention from qkv [N, T, 3C]: q·kᵀ and p·v, 2·N·T²·C each; backward five such products.
  assert.equal(kernelFlops(QKV_ATTENTION, [[2, 5, 24]], [2, 5, 8]), 2 * 2 * 2 * 5 * 5 * 8);
  assert.equal(kernelFlops(QKV_ATTENTION_GRAD, [[2, 5, 24], [2, 5, 8]], [2, 5, 24]), 5 * 800);
  // Uncounted kernels are 0.
  assert.equal(kernelFlops("Add", [[2, 2], [2, 2]], [2, 2]), 0);
});

Deno.test("flops: a U-Net forward counts the same with and without BLAS kernels", async () => {
  const cfg = { ...unet.UNET_CONFIGS.small, imageSize: 16 } as unet.UNetConfig;
  const params = unet.init(cfg, rng(0));
  const x = tf.ones([2, 16, 16, cfg.inChannels]) as tf.Tensor4D;
  const t = tf.tensor1d([3, 500], "int32");
  const run = () => unet.apply(cfg, params, x, t).eps!;
  const withBlas = await countFlops(run);
  assert.ok(withBlas.byKernel.FusedConv2D > 0 && withBlas.byKernel._FusedMatMul > 0);
  await initEngine({ backend: "wasm", blas: false, announce: false });
  try {
    // Without BLAS the compiled kernels are off too: attention runs as batched products.
    const without = await countFlops(run);
    assert.equal(without.total, withBlas.total);
    for (const k of ["FusedConv2D", "_FusedMatMul"]) {
      assert.equal(without.byKernel[k], withBlas.byKernel[k], k);
    }
    const attention = withBlas.byKernel[QKV_ATTENTION] ?? withBlas.byKernel.BatchMatMul;
    assert.ok(attention > 0);
    assert.equal(without.byKernel.BatchMatMul, attention);
  } finally {
    await initEngine({ backend: "wasm", announce: false });
    disposeParams(params);
    tf.dispose([x, t]);
  }
});
