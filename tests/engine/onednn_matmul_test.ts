// oneDNN's batched matmul (the BatchMatMul route for many small products) and the fused tanh-GELU
// (lib/engine/blas/onednn_matmul.ts, lib/engine/fused/gelu.ts) against the pure-JS `cpu` backend.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initEngine } from "../../lib/engine/mod.ts";
import { assertOutputsClose, type Input, input, on } from "./compare.ts";
import {
  activeOneDnnMatMul,
  loadOneDnnMatMul,
  setOneDnnMatMulEnabled,
} from "../../lib/engine/blas/onednn_matmul.ts";
import { ONEDNN_MIN_MACS } from "../../lib/engine/blas/matmul.ts";
import {
  fusedGeluTanh,
  geluTanhGradInto,
  geluTanhInto,
  setFusedGeluEnabled,
} from "../../lib/engine/fused/gelu.ts";

await initEngine({ backend: "wasm", announce: false });
const ignore = loadOneDnnMatMul() === undefined; // no libdnnl or no FFI: nothing to test

async function vsCpu(
  what: string,
  inputs: Input[],
  f: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
  tol = 1e-5,
) {
  assertOutputsClose(await on("wasm", inputs, f), await on("cpu", inputs, f), tol, what);
  await tf.setBackend("wasm");
}

Deno.test({
  name: "oneDNN batched matmul: every transpose and a shared operand match the cpu backend",
  ignore,
  async fn() {
    assert.ok(activeOneDnnMatMul(), "the route is on by default");
    for (const [ta, tb] of [[false, false], [false, true], [true, false], [true, true]]) {
      const a = input(1, ta ? [6, 5, 7] : [6, 7, 5]);
      const b = input(2, tb ? [6, 9, 5] : [6, 5, 9]);
      await vsCpu(`batched ${ta} ${tb}`, [a, b], (x, y) => tf.matMul(x, y, ta, tb));
      // A shared A (batch 1) and a shared B (rank 2) broadcast over the batch.
      const a1 = input(3, ta ? [1, 5, 7] : [1, 7, 5]);
      await vsCpu(`shared A ${ta} ${tb}`, [a1, b], (x, y) => tf.matMul(x, y, ta, tb));
      const b1 = input(4, tb ? [9, 5] : [5, 9]);
      await vsCpu(`shared B ${ta} ${tb}`, [a, b1], (x, y) => tf.matMul(x, y, ta, tb));
    }
    // Attention-sized products, the case the route is for.
    const q = input(5, [8, 49, 16]), k = input(6, [8, 49, 16]);
    await vsCpu("attention scores", [q, k], (x, y) => tf.matMul(x, y, false, true), 1e-4);
  },
});

Deno.test({
  name: "oneDNN batched matmul computes what the sgemm loop computes, and declines empty shapes",
  ignore,
  async fn() {
    const a = input(7, [4, 3, 2, 6]), b = input(8, [4, 3, 6, 5]);
    const f = (x: tf.Tensor, y: tf.Tensor) => tf.matMul(x, y);
    const withDnn = await on("wasm", [a, b], f);
    try {
      setOneDnnMatMulEnabled(false);
      assert.equal(activeOneDnnMatMul(), undefined);
      assertOutputsClose(withDnn, await on("wasm", [a, b], f), 1e-6, "dnn vs sgemm");
    } finally {
      setOneDnnMatMulEnabled(true);
    }
    const dnn = loadOneDnnMatMul()!;
    const z = new Float32Array(0);
    assert.equal(dnn.matmul(0, true, true, 2, 2, 2, false, false, z, z, z), false);
  },
});

Deno.test({
  name: "oneDNN single products past ONEDNN_MIN_MACS: transposes, stacked batches and a bias",
  ignore,
  async fn() {
    // 256·128·256 = 2^23 multiply-adds: the smallest product the route takes.
    assert.equal(256 * 128 * 256, ONEDNN_MIN_MACS);
    const bias = input(11, [128]);
    const cases: [string, Input, Input, boolean, boolean][] = [
      ["plain", input(12, [256, 256]), input(13, [256, 128]), false, false],
      ["transposed A", input(14, [256, 256]), input(15, [256, 128]), true, false],
      ["transposed B", input(16, [256, 256]), input(17, [128, 256]), false, true],
      ["stacked batches", input(18, [2, 128, 256]), input(19, [256, 128]), false, false],
    ];
    for (const [what, a, b, ta, tb] of cases) {
      const plain = (x: tf.Tensor, y: tf.Tensor) => tf.matMul(x, y, ta, tb);
      const fused = (x: tf.Tensor, y: tf.Tensor, z: tf.Tensor) =>
        tf.fused.matMul({
          a: x,
          b: y,
          transposeA: ta,
          transposeB: tb,
          bias: z,
          activation: "relu",
        });
      const withDnn = await on("wasm", [a, b, bias], fused);
      await vsCpu(`${what}`, [a, b], plain, 1e-5);
      await vsCpu(`${what}, bias and relu`, [a, b, bias], fused, 1e-5);
      try {
        setOneDnnMatMulEnabled(false); // the sgemm route computes the same
        assertOutputsClose(withDnn, await on("wasm", [a, b, bias], fused), 1e-5, `${what} sgemm`);
      } finally {
        setOneDnnMatMulEnabled(true);
      }
    }
    await tf.setBackend("wasm");
  },
});

const C = Math.sqrt(2 / Math.PI);
const gelu = (v: number) => 0.5 * v * (1 + Math.tanh(C * (v + 0.044715 * v ** 3)));

Deno.test({
  name: "fused tanh-GELU matches the closed form, its gradient the central difference",
  ignore,
  async fn() {
    await tf.setBackend("wasm");
    const xs = input(9, [3, 5, 7], -4, 4).values;
    const before = tf.memory().numTensors;
    const x = tf.tensor3d(xs, [3, 5, 7]);
    const y = fusedGeluTanh(x);
    assert.ok(y, "oneDNN's GELU is used on wasm with BLAS on");
    const got = y.dataSync();
    xs.forEach((v, i) => assert.ok(Math.abs(got[i] - gelu(v)) < 1e-5, `gelu(${v})`));
    const w = tf.tensor3d(input(10, [3, 5, 7]).values, [3, 5, 7]);
    const gt = tf.grad((z: tf.Tensor) => tf.sum(tf.mul(fusedGeluTanh(z)!, w)))(x);
    const g = gt.dataSync();
    const wv = w.dataSync(), h = 1e-3;
    xs.forEach((v, i) => {
      const numeric = wv[i] * (gelu(v + h) - gelu(v - h)) / (2 * h);
      assert.ok(Math.abs(g[i] - numeric) < 1e-3, `gelu'(${v}): ${g[i]} vs ${numeric}`);
    });
    tf.dispose([x, y, w, gt]);
    assert.equal(tf.memory().numTensors, before, "no tensors leak");
  },
});

Deno.test("geluTanhInto and geluTanhGradInto (the JS route) match the closed form", () => {
  const x = Float32Array.from([-3, -1, -0.1, 0, 0.5, 2]), y = new Float32Array(6);
  geluTanhInto(x, y);
  x.forEach((v, i) => assert.ok(Math.abs(y[i] - gelu(v)) < 1e-6));
  const dx = new Float32Array(6), h = 1e-3;
  geluTanhGradInto(x, Float32Array.from([1, 2, 1, 1, 1, -1]), dx);
  const dy = [1, 2, 1, 1, 1, -1];
  x.forEach((v, i) => {
    const numeric = dy[i] * (gelu(v + h) - gelu(v - h)) / (2 * h);
    assert.ok(Math.abs(dx[i] - numeric) < 1e-4, `${v}: ${dx[i]} vs ${numeric}`);
  });
});

Deno.test({
  name: "fusedGeluTanh is undefined when switched off or off wasm",
  ignore,
  async fn() {
    const x = tf.tensor1d([1, 2]);
    try {
      setFusedGeluEnabled(false);
      assert.equal(fusedGeluTanh(x), undefined);
    } finally {
      setFusedGeluEnabled(true);
    }
    await tf.setBackend("cpu");
    const xc = tf.tensor1d([1, 2]);
    assert.equal(fusedGeluTanh(xc), undefined);
    tf.dispose(xc);
    await tf.setBackend("wasm");
    tf.dispose(x);
  },
});
