// BLAS kernels (lib/engine/blas) against the pure-JS `cpu` backend and against wasm without them.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initEngine } from "../../lib/engine/mod.ts";
import { assertOutputsClose, type Input, input, on } from "./compare.ts";
import {
  BLAS_KERNELS,
  loadOneDnn,
  loadOpenBlas,
  openBlas,
  openOneDnn,
  registerBlasKernels,
  unregisterBlasKernels,
  useOneDnn,
} from "../../lib/engine/blas/mod.ts";
import { planMatMul } from "../../lib/engine/blas/matmul.ts";
import { openBlasCoreFor } from "../../lib/engine/blas/openblas.ts";
import { nativeKernels, setNativeKernels } from "../../lib/engine/native_kernels.ts";
import { decodeIsa, OPENMP_SPIN, openMpWaiting } from "../../lib/engine/blas/onednn_core.ts";
import { winogradFits, winogradWorth } from "../../lib/engine/blas/onednn.ts";
import { alignedF32 } from "../../lib/engine/blas/heap.ts";

await initEngine({ backend: "wasm", announce: false });
const ignore = loadOpenBlas() === undefined; // no library or no FFI: nothing to test
// Convolutions run on oneDNN where it loads, on im2col + sgemm otherwise: test every route here.
const CONV_ROUTES = loadOneDnn() ? ["onednn", "sgemm"] : ["sgemm"];

/** Run `f` once per conv route, naming the route; oneDNN back on afterwards. */
async function perRoute(f: (route: string) => Promise<void>): Promise<void> {
  try {
    for (const route of CONV_ROUTES) {
      useOneDnn(route === "onednn");
      await f(route);
    }
  } finally {
    useOneDnn(true);
  }
}

// ---------------------------------------------------------------------------------------------
// Helpers: seeded inputs as plain arrays, the same computation on two backends.

/** Compare `f` on wasm+BLAS with `ref` (default `f`) on the cpu backend. */
async function vsCpu(
  what: string,
  inputs: Input[],
  f: (...ts: tf.Tensor[]) => tf.Tensor | tf.Tensor[],
  tol = 1e-5,
  ref = f,
) {
  const got = await on("wasm", inputs, f);
  const want = await on("cpu", inputs, ref);
  assertOutputsClose(got, want, tol, what);
}

// ---------------------------------------------------------------------------------------------
// Loader and registration

Deno.test({
  name: "openBlas() honours DP_BLAS=0 and falls back past a missing DP_OPENBLAS path",
  ignore,
  fn() {
    assert.equal(openBlas((k) => (k === "DP_BLAS" ? "0" : undefined)), undefined);
    const blas = openBlas((k) => (k === "DP_OPENBLAS" ? "/nonexistent/libopenblas.so" : undefined));
    assert.ok(blas);
    assert.notEqual(blas.path, "/nonexistent/libopenblas.so");
    assert.ok(blas.threads >= 1);
  },
});

// OpenBLAS reads OPENBLAS_CORETYPE once per process, at its first load: ask a fresh process.
async function coreInChild(coreType: string, env: Record<string, string> = {}) {
  const lib = new URL("../../lib/engine/blas/openblas.ts", import.meta.url).href;
  const code = `const { openBlas } = await import(${JSON.stringify(lib)});
const b = openBlas(undefined, ${JSON.stringify(coreType)});
console.log(JSON.stringify({ core: b?.core, forced: b?.coreForced, env: Deno.env.get("OPENBLAS_CORETYPE") ?? null }));`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", code],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
}

Deno.test({
  name: "openBlas(env, coreType) loads that kernel set, unless OPENBLAS_CORETYPE names one",
  ignore,
  async fn() {
    // Haswell runs on any x86 CPU with AVX2, which every machine of this project's kind has.
    assert.deepEqual(await coreInChild("Haswell"), { core: "Haswell", forced: true, env: null });
    assert.deepEqual(await coreInChild("Haswell", { OPENBLAS_CORETYPE: "Prescott" }), {
      core: "Prescott",
      forced: false,
      env: "Prescott",
    });
  },
});

Deno.test("openBlasCoreFor: SkylakeX with AVX-512 as oneDNN decodes it, else OpenBLAS decides", () => {
  assert.equal(openBlasCoreFor(decodeIsa(0xe7)), "SkylakeX"); // avx512_core_bf16
  assert.equal(openBlasCoreFor(decodeIsa(0x27)), "SkylakeX"); // avx512_core
  assert.equal(openBlasCoreFor(decodeIsa(0x7)), undefined); // avx2
  assert.equal(openBlasCoreFor(undefined), undefined); // no oneDNN
  assert.deepEqual(decodeIsa(0x3e7), { code: 0x3e7, avx512: true, bf16: true, amx: true });
  assert.deepEqual(decodeIsa(0x67), { code: 0x67, avx512: true, bf16: false, amx: false });
});

Deno.test({
  name: "openOneDnn() honours DP_ONEDNN=0, and oneDNN convs match sgemm on U-Net widths",
  ignore: ignore || CONV_ROUTES.length === 1,
  async fn() {
    assert.equal(openOneDnn((k) => (k === "DP_ONEDNN" ? "0" : undefined)), undefined);
    // 3×3 and 1×1 convs at widths of the small U-Net (oneDNN's blocked kernels run there).
    const cases: ConvCase[] = [
      { x: [2, 8, 8, 32], w: [3, 3, 32, 48], stride: 1, pad: "same" },
      { x: [2, 6, 6, 64], w: [1, 1, 64, 32], stride: 1, pad: "valid" },
      { x: [2, 8, 8, 32], w: [3, 3, 32, 32], stride: 2, pad: 1 },
    ];
    for (const [i, c] of cases.entries()) {
      const f = conv(c);
      const grads = (x: tf.Tensor, w: tf.Tensor) => {
        const r = tf.randomUniform(f(x, w).shape, -1, 1, "float32", 3);
        const g = tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(f(a, b), r)))([x, w]);
        return [f(x, w), ...g];
      };
      const inputs = [input(70 + i, c.x), input(80 + i, c.w)];
      const dnn = await on("wasm", inputs, grads);
      useOneDnn(false);
      try {
        assertOutputsClose(dnn, await on("wasm", inputs, grads), 1e-5, `onednn vs sgemm ${i}`);
      } finally {
        useOneDnn(true);
      }
    }
  },
});

Deno.test("winogradFits / winogradWorth: 3×3 stride 1, channels in 16s; worth it from 64 channels in (and out, for dw; inference from 32), 256 tiles", () => {
  const g = {
    n: 16,
    h: 16,
    w: 16,
    c: 64,
    oh: 16,
    ow: 16,
    o: 96,
    kh: 3,
    kw: 3,
    sh: 1,
    sw: 1,
    dh: 1,
    dw: 1,
    pt: 1,
    pl: 1,
  };
  assert.ok(winogradWorth(g)); // 16 · 4 · 4 = 256 tiles of 4×4
  assert.ok(!winogradWorth({ ...g, n: 15 }) && winogradFits({ ...g, n: 15 }));
  assert.ok(!winogradWorth({ ...g, c: 32 }) && winogradFits({ ...g, c: 32 }));
  assert.ok(winogradWorth({ ...g, o: 16 }));
  assert.ok(!winogradFits({ ...g, c: 72 }));
  assert.ok(!winogradFits({ ...g, o: 8 }));
  assert.ok(!winogradFits({ ...g, kh: 1, kw: 1 }));
  assert.ok(!winogradFits({ ...g, sh: 2, sw: 2, oh: 8, ow: 8 }));
  assert.ok(!winogradFits({ ...g, dh: 2, dw: 2 }));
  assert.ok(winogradWorth({ ...g, n: 64, h: 7, w: 7, oh: 7, ow: 7 })); // 64 · 2 · 2
  // The weight gradient also needs 64 output channels.
  assert.ok(winogradWorth(g, "backward-weights"));
  assert.ok(!winogradWorth({ ...g, o: 48 }, "backward-weights") && winogradWorth({ ...g, o: 48 }));
  assert.ok(!winogradWorth({ ...g, c: 32, o: 128 }, "backward-weights"));
  assert.ok(!winogradWorth({ ...g, n: 15 }, "backward-weights"));
  assert.ok(winogradWorth({ ...g, o: 48 }, "backward-data"));
  // The inference form: 32 channels or more on both sides, and 64 on one or a 28×28 map.
  assert.ok(winogradWorth({ ...g, c: 32, o: 64 }, "inference"));
  assert.ok(winogradWorth({ ...g, c: 64, o: 32 }, "inference"));
  assert.ok(!winogradWorth({ ...g, c: 32, o: 32 }, "inference"));
  const at28 = { ...g, h: 28, w: 28, oh: 28, ow: 28, c: 32, o: 32 };
  assert.ok(winogradWorth(at28, "inference") && !winogradWorth(at28));
  assert.ok(!winogradWorth({ ...at28, o: 16 }, "inference"));
  assert.ok(!winogradWorth({ ...g, o: 16 }, "inference") && winogradWorth({ ...g, o: 16 }));
  assert.ok(!winogradWorth({ ...g, n: 15 }, "inference"));
});

Deno.test({
  name: "Winograd convs (forward with bias, both gradients) match cpu and direct; the modes",
  ignore: ignore || CONV_ROUTES.length === 1,
  async fn() {
    const dnn = loadOneDnn()!;
    const off = openOneDnn((k) => (k === "DP_ONEDNN_WINOGRAD" ? "0" : undefined));
    assert.equal(off?.winograd, "off");
    assert.equal(dnn.winograd, "auto", "the default");
    const [n, hw, c, o] = [2, 8, 32, 48];
    const f = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) =>
      tf.fused.conv2d({
        x: x as tf.Tensor4D,
        filter: w as tf.Tensor4D,
        strides: 1,
        pad: "same",
        bias: b,
      });
    const step = (x: tf.Tensor, w: tf.Tensor, b: tf.Tensor) => {
      const r = tf.randomUniform([n, hw, hw, o], -1, 1, "float32", 5);
      const g = tf.grads((a: tf.Tensor, k: tf.Tensor) => tf.sum(tf.mul(f(a, k, b), r)))([x, w]);
      return [f(x, w, b), ...g];
    };
    const inputs = [input(91, [n, hw, hw, c]), input(92, [3, 3, c, o], -0.2, 0.2), input(93, [o])];
    const at = async (mode: "auto" | "always" | "off") => {
      dnn.winograd = mode;
      try {
        const before = dnn.winogradCalls;
        const out = await on("wasm", inputs, step);
        return { out, calls: dnn.winogradCalls - before };
      } finally {
        dnn.winograd = "auto";
      }
    };
    const wino = await at("always"), direct = await at("off"), auto = await at("auto");
    // Two forward passes (the output and the tape's), the input and the weight gradient.
    assert.equal(wino.calls, 4, "the Winograd route ran");
    assert.equal(direct.calls, 0, "off means off");
    assert.equal(auto.calls, 0, "too few tiles and channels for auto");
    // A shape the rule takes (16 · 4 · 4 = 256 tiles, 64 channels in, 32 out): auto runs Winograd.
    const wide = [input(94, [16, 16, 16, 64]), input(95, [3, 3, 64, 32], -0.2, 0.2)];
    const before = dnn.winogradCalls;
    await on("wasm", wide, (x, w) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 1, "same"));
    assert.equal(dnn.winogradCalls - before, 1, "auto takes a shape its rule picks");
    assertOutputsClose(wino.out, await on("cpu", inputs, step), 1e-5, "winograd vs cpu");
    assertOutputsClose(wino.out, direct.out, 1e-5, "winograd vs direct");
    // A different algorithm, not the direct kernels again: the outputs differ in their last bits.
    assert.ok(wino.out[0].some((v, i) => v !== direct.out[0][i]), "bit-identical to direct");
  },
});

Deno.test({
  name: "Winograd passes at shapes that once crashed them run to the end (aligned buffers)",
  ignore: ignore || CONV_ROUTES.length === 1,
  async fn() {
    const child = new URL("./winograd_child.ts", import.meta.url).pathname;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", child],
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 0, `${text}${new TextDecoder().decode(out.stderr)}`);
    // Forward, input gradient and weight gradient of each of the six shapes.
    assert.equal(text.trim().split("\n").at(-1)?.split(": ")[1], "18", text);
  },
});

Deno.test({
  name: "oneDNN keeps a frozen model's blocked weights by key (direct and Winograd), never stale",
  ignore: ignore || CONV_ROUTES.length === 1,
  fn() {
    const dnn = loadOneDnn()!;
    const filled = (n: number, seed: number) => {
      const a = alignedF32(n);
      for (let i = 0; i < n; i++) a[i] = Math.sin(seed + i * 0.37) * 0.3;
      return a;
    };
    // A direct shape (32 channels) and one the Winograd rule takes (64 in, 256 tiles).
    for (const [n, hw, c, o] of [[2, 8, 32, 48], [16, 16, 64, 16]]) {
      const g = {
        ...{ n, h: hw, w: hw, c, oh: hw, ow: hw, o, kh: 3, kw: 3, sh: 1, sw: 1, dh: 1, dw: 1 },
        ...{ pt: 1, pl: 1 },
      };
      const x = filled(n * hw * hw * c, 1), wA = filled(9 * c * o, 2), wB = filled(9 * c * o, 3);
      const conv = (w: Float32Array, key?: object) => {
        const y = alignedF32(n * hw * hw * o);
        assert.ok(dnn.convForward(g, x, w, undefined, y, key));
        return Array.from(y);
      };
      const [refA, refB] = [conv(wA), conv(wB)];
      const before = dnn.weightCache;
      const keyA = {}, keyB = {};
      // Seen once: reordered as in training; seen again: kept; then read from the copy.
      for (let i = 0; i < 3; i++) assert.deepEqual(conv(wA, keyA), refA, `A, call ${i}`);
      const after = dnn.weightCache;
      assert.equal(after.hits - before.hits, 1, "the third call reads the kept copy");
      assert.equal(after.bytes - before.bytes >= 4 * 9 * c * o, true, "one copy kept");
      // Other weights of the same geometry, under their own key: their own results.
      for (let i = 0; i < 3; i++) assert.deepEqual(conv(wB, keyB), refB, `B, call ${i}`);
      assert.deepEqual(conv(wA, keyA), refA, "A again after B");
      // Without keys nothing is kept.
      const bytes = dnn.weightCache.bytes;
      for (let i = 0; i < 3; i++) conv(wA);
      assert.equal(dnn.weightCache.bytes, bytes);
    }
  },
});

Deno.test({
  name:
    "Winograd's inference form (no tape recording) matches the training form and keeps its weights transformed",
  ignore: ignore || CONV_ROUTES.length === 1,
  async fn() {
    const dnn = loadOneDnn()!;
    const [n, hw, c, o] = [16, 16, 64, 32]; // 256 tiles, 64 channels in, 32 out: the rule takes it
    const g = {
      ...{ n, h: hw, w: hw, c, oh: hw, ow: hw, o, kh: 3, kw: 3, sh: 1, sw: 1, dh: 1, dw: 1 },
      ...{ pt: 1, pl: 1 },
    };
    const x = alignedF32(n * hw * hw * c).map((_, i) => Math.sin(i * 0.61));
    const w = alignedF32(9 * c * o).map((_, i) => Math.cos(i * 0.29) * 0.2);
    const b = alignedF32(o).map((_, i) => i / o);
    const conv = (inference: boolean, key?: object) => {
      const y = alignedF32(n * hw * hw * o);
      assert.ok(dnn.convForward(g, x, w, b, y, key, inference));
      return y;
    };
    const training = conv(false);
    const key = {}, before = dnn.weightCache;
    for (let i = 0; i < 3; i++) {
      assertOutputsClose([conv(true, key)], [training], 1e-5, `inference form, call ${i}`);
    }
    const after = dnn.weightCache;
    assert.equal(after.hits - before.hits, 1, "the third call reads the kept weights");
    // Kept in Winograd's domain: 6×6 values per 3×3 filter, where the training form keeps 3×3.
    assert.ok(after.bytes - before.bytes >= 4 * 36 * c * o, "transformed weights kept");
    // Through the kernels: outside a tape the inference form runs (and keeps transformed
    // weights); under tf.grad the training form does.
    const ts = [input(96, [n, hw, hw, c]), input(97, [3, 3, c, o], -0.2, 0.2)];
    const grown = async (f: (x: tf.Tensor, w: tf.Tensor) => tf.Tensor | tf.Tensor[]) => {
      const start = dnn.weightCache.bytes;
      await on("wasm", ts, (xt, wt) => {
        for (let i = 0; i < 2; i++) tf.dispose(f(xt, wt));
        return f(xt, wt);
      });
      return dnn.weightCache.bytes - start;
    };
    const conv2d = (xt: tf.Tensor, wt: tf.Tensor) =>
      tf.conv2d(xt as tf.Tensor4D, wt as tf.Tensor4D, 1, "same");
    assert.ok(await grown(conv2d) >= 4 * 36 * c * o, "no tape: the inference form");
    const taped = await grown((xt, wt) => tf.grads((a: tf.Tensor) => tf.sum(conv2d(a, wt)))([xt]));
    assert.ok(taped < 4 * 36 * c * o, `under tf.grads: the training form (${taped} bytes kept)`);
  },
});

Deno.test("alignedF32: views start on 64-byte boundaries", () => {
  for (const n of [1, 5, 16, 1000, 40_000, 300_000]) {
    const a = alignedF32(n);
    assert.equal(a.length, n);
    const at = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(a)));
    assert.equal(at % 64n, 0n, `${n} elements at ${at}`);
  }
});

Deno.test({
  name: "Sum over leading and middle axes (column sums on sgemm, and in C) matches cpu",
  ignore,
  async fn() {
    const x = input(90, [3, 5, 7, 4]);
    const compiled = nativeKernels();
    try {
      for (const k of new Set([undefined, compiled])) { // sgemm against ones, then C if built
        setNativeKernels(k);
        await vsCpu("sum [0, 1, 2]", [x], (t) => tf.sum(t, [0, 1, 2]));
        await vsCpu("sum [1] keepDims", [x], (t) => tf.sum(t, 1, true));
        await vsCpu("sum [1, 2]", [x], (t) => tf.sum(t, [1, 2]));
        await vsCpu("sum of an empty block", [input(91, [0, 3])], (t) => tf.sum(t, 0));
      }
    } finally {
      setNativeKernels(compiled);
    }
  },
});

Deno.test({
  name: "registerBlasKernels() is idempotent and unregisterBlasKernels() restores the originals",
  ignore,
  fn() {
    const details = registerBlasKernels();
    assert.ok(details && typeof details.blas === "string" && Number(details.blasThreads) >= 1);
    const mine = BLAS_KERNELS.map((k) => tf.getKernel(k, "wasm").kernelFunc);
    assert.deepEqual(registerBlasKernels(), details);
    assert.deepEqual(BLAS_KERNELS.map((k) => tf.getKernel(k, "wasm").kernelFunc), mine);
    assert.ok(unregisterBlasKernels());
    for (const [i, k] of BLAS_KERNELS.entries()) {
      assert.notEqual(tf.getKernel(k, "wasm")?.kernelFunc, mine[i], k);
    }
    assert.equal(unregisterBlasKernels(), false);
    registerBlasKernels();
  },
});

Deno.test("planMatMul() broadcasts batch dimensions as tfjs does", () => {
  const p = planMatMul([2, 1, 4, 5], [3, 5, 6], false, false);
  assert.deepEqual(p.outShape, [2, 3, 4, 6]);
  assert.deepEqual([...p.aIndex], [0, 0, 0, 1, 1, 1]);
  assert.deepEqual([...p.bIndex], [0, 1, 2, 0, 1, 2]);
  assert.throws(() => planMatMul([2, 4, 5], [3, 5, 6], false, false), /broadcast/);
  assert.throws(() => planMatMul([4, 5], [4, 6], false, false), /inner shapes/);
});

// ---------------------------------------------------------------------------------------------
// Matmul

const MATMULS: [number[], number[], boolean, boolean][] = [
  [[7, 5], [5, 3], false, false],
  [[5, 7], [5, 3], true, false],
  [[7, 5], [3, 5], false, true],
  [[5, 7], [3, 5], true, true],
  [[2, 3, 4, 5], [5, 6], false, false], // shared B: one tall GEMM
  [[3, 4, 5], [3, 5, 6], false, false],
  [[3, 5, 4], [3, 6, 5], true, true],
  [[1, 4, 5], [3, 6, 5], false, true],
  [[4, 1], [1, 6], false, false], // outer product, K = 1
  [[64, 300], [300, 70], false, false], // big enough for OpenBLAS threading
];

Deno.test({
  name: "BatchMatMul on sgemm matches cpu for transposes and batch broadcasting",
  ignore,
  async fn() {
    for (const [i, [as, bs, ta, tb]] of MATMULS.entries()) {
      await vsCpu(
        `matMul ${as} ${bs} ${ta} ${tb}`,
        [input(i, as), input(100 + i, bs)],
        (a, b) => tf.matMul(a, b, ta, tb),
      );
    }
    // Both sides broadcast: tfjs's cpu kernel flattens batches, so the reference tiles first.
    await vsCpu(
      "matMul [2,1,4,5] [3,5,6]",
      [input(20, [2, 1, 4, 5]), input(21, [3, 5, 6])],
      (a, b) => tf.matMul(a, b),
      1e-5,
      (a, b) => tf.matMul(tf.tile(a, [1, 3, 1, 1]), tf.broadcastTo(b, [2, 3, 5, 6])),
    );
  },
});

Deno.test({
  name: "_FusedMatMul applies bias and every activation like cpu",
  ignore,
  async fn() {
    const acts = ["linear", "relu", "relu6", "elu", "sigmoid", "leakyrelu", "prelu"] as const;
    for (const activation of acts) {
      for (const [j, biasShape] of [[6], [4, 6], [1]].entries()) {
        await vsCpu(
          `fused matMul ${activation} bias [${biasShape}]`,
          [input(1, [3, 4, 5]), input(2, [5, 6]), input(3, biasShape), input(4, [6])],
          (a, b, bias, alpha) =>
            tf.fused.matMul({
              a,
              b: j === 2 ? tf.mul(b, 3) : b, // push values past relu6's cap
              bias,
              activation,
              preluActivationWeights: activation === "prelu" ? alpha : undefined,
              leakyreluAlpha: 0.3,
            }),
        );
      }
    }
    await vsCpu(
      "fused matMul transposed, no bias",
      [input(5, [2, 5, 4]), input(6, [2, 6, 5])],
      (a, b) => tf.fused.matMul({ a, b, transposeA: true, transposeB: true, activation: "relu" }),
    );
  },
});

// ---------------------------------------------------------------------------------------------
// Convolutions: forward, fused, both gradients

interface ConvCase {
  readonly x: number[];
  readonly w: number[];
  readonly stride: number | [number, number];
  readonly pad: "same" | "valid" | number | [[0, 0], [number, number], [number, number], [0, 0]];
  readonly dilation?: number;
  readonly rounding?: "floor" | "round" | "ceil";
}

const CONVS: ConvCase[] = [
  { x: [2, 8, 8, 3], w: [3, 3, 3, 5], stride: 1, pad: "same" },
  { x: [2, 9, 9, 4], w: [3, 3, 4, 6], stride: 2, pad: "same" },
  { x: [1, 8, 7, 4], w: [3, 3, 4, 2], stride: 1, pad: "valid" },
  { x: [3, 9, 8, 2], w: [3, 3, 2, 4], stride: 2, pad: "valid" },
  { x: [2, 5, 5, 6], w: [1, 1, 6, 7], stride: 1, pad: "same" }, // pointwise: plain GEMM
  { x: [2, 6, 6, 6], w: [1, 1, 6, 3], stride: 2, pad: "valid" },
  { x: [2, 8, 8, 3], w: [4, 4, 3, 8], stride: 4, pad: "valid" }, // patch embedding
  { x: [2, 8, 8, 3], w: [2, 2, 3, 4], stride: 2, pad: "valid" },
  { x: [2, 7, 6, 3], w: [3, 3, 3, 4], stride: 1, pad: [[0, 0], [1, 2], [2, 0], [0, 0]] },
  { x: [1, 9, 9, 2], w: [5, 5, 2, 3], stride: 2, pad: "same" },
  { x: [2, 6, 5, 3], w: [3, 1, 3, 4], stride: [2, 1], pad: "same" },
  { x: [2, 7, 7, 3], w: [3, 3, 3, 2], stride: 2, pad: 1, rounding: "floor" },
  { x: [2, 6, 6, 24], w: [3, 3, 24, 5], stride: 1, pad: "same" }, // long runs copied with set()
  // 14884 rows of K = 72: two im2col chunks of 2^20 floats, split mid image row.
  { x: [1, 122, 122, 8], w: [3, 3, 8, 4], stride: 1, pad: "same" },
];

const conv = (c: ConvCase) => (x: tf.Tensor, w: tf.Tensor) =>
  tf.conv2d(
    x as tf.Tensor4D,
    w as tf.Tensor4D,
    c.stride,
    c.pad,
    "NHWC",
    c.dilation ?? 1,
    c.rounding,
  );

Deno.test({
  name: "Conv2D on sgemm matches cpu for strides, paddings, 1×1, patch and batch sizes",
  ignore,
  async fn() {
    const cases: ConvCase[] = [
      ...CONVS,
      { x: [2, 9, 9, 3], w: [3, 3, 3, 4], stride: 1, pad: "same", dilation: 2 },
    ];
    await perRoute(async (route) => {
      for (const [i, c] of cases.entries()) {
        await vsCpu(
          `conv2d (${route}) ${JSON.stringify(c)}`,
          [input(i, c.x), input(50 + i, c.w)],
          conv(c),
        );
      }
    });
  },
});

Deno.test({
  name: "Conv2DBackpropInput and Conv2DBackpropFilter on sgemm match cpu",
  ignore,
  async fn() {
    await perRoute(async (route) => {
      for (const [i, c] of CONVS.entries()) {
        const f = conv(c);
        await vsCpu(
          `conv2d grads (${route}) ${JSON.stringify(c)}`,
          [input(i, c.x), input(50 + i, c.w)],
          (x, w) => {
            const r = tf.randomUniform(f(x, w).shape, -1, 1, "float32", 7);
            return tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(f(a, b), r)))([x, w]);
          },
          2e-5,
        );
      }
    });
  },
});

Deno.test({
  name: "FusedConv2D applies bias, activations, PReLU weights and leaky-ReLU alpha like cpu",
  ignore,
  async fn() {
    const acts = ["linear", "relu", "relu6", "elu", "sigmoid", "leakyrelu", "prelu"] as const;
    for (const [i, c] of [CONVS[1], CONVS[4], CONVS[8]].entries()) {
      for (const activation of acts) {
        const o = c.w[3];
        await vsCpu(
          `fused conv2d ${activation} ${JSON.stringify(c)}`,
          [input(i, c.x), input(10 + i, c.w), input(20 + i, [o]), input(30 + i, [o])],
          (x, w, bias, alpha) =>
            tf.fused.conv2d({
              x: x as tf.Tensor4D,
              filter: tf.mul(w, 2) as tf.Tensor4D,
              strides: c.stride,
              pad: c.pad,
              bias,
              activation,
              preluActivationWeights: activation === "prelu" ? alpha : undefined,
              leakyreluAlpha: 0.15,
            }),
        );
      }
    }
    // Biases that broadcast other than per channel: scalar, and per position and channel.
    const c = CONVS[1];
    for (const biasShape of [[1], [5, 5, 6]]) {
      await vsCpu(
        `fused conv2d bias [${biasShape}]`,
        [input(1, c.x), input(2, c.w), input(3, biasShape)],
        (x, w, bias) =>
          tf.fused.conv2d({
            x: x as tf.Tensor4D,
            filter: w as tf.Tensor4D,
            strides: c.stride,
            pad: c.pad,
            bias,
            activation: "relu",
          }),
      );
    }
  },
});

// ---------------------------------------------------------------------------------------------
// A small conv net: gradients with and without BLAS, and no leaks.

function convNet(x: tf.Tensor, w1: tf.Tensor, w2: tf.Tensor, w3: tf.Tensor, b: tf.Tensor) {
  const h1 = tf.relu(tf.conv2d(x as tf.Tensor4D, w1 as tf.Tensor4D, 1, "same"));
  // Linear fused conv: tfjs runs FusedConv2D under a tape only for the linear activation.
  const h2 = tf.relu(tf.fused.conv2d({
    x: h1,
    filter: w2 as tf.Tensor4D,
    strides: 2,
    pad: "same",
    bias: b,
  }));
  const h3 = tf.conv2d(h2, w3 as tf.Tensor4D, 1, "valid"); // 1×1 head
  const flat = tf.reshape(h3, [x.shape[0], -1]);
  return tf.mean(tf.square(tf.matMul(flat, flat, false, true)));
}

const NET_INPUTS = [
  input(1, [4, 12, 12, 3]),
  input(2, [3, 3, 3, 16]),
  input(3, [3, 3, 16, 32]),
  input(4, [1, 1, 32, 8]),
  input(5, [32]),
];

async function netGrads(): Promise<Float32Array[]> {
  return await on("wasm", NET_INPUTS, (...ts) => {
    const g = tf.grads((x, w1, w2, w3, b) => convNet(x, w1, w2, w3, b));
    return g(ts);
  });
}

Deno.test({
  name: "gradients of a small conv net agree with and without the BLAS kernels",
  ignore,
  async fn() {
    const withBlas = await netGrads();
    unregisterBlasKernels();
    let without: Float32Array[];
    try {
      without = await netGrads();
    } finally {
      registerBlasKernels();
    }
    assertOutputsClose(withBlas, without, 1e-4, "conv net grads");
  },
});

Deno.test({
  name: "BLAS kernels leak no tensors through a train step",
  ignore,
  fn() {
    const ts = NET_INPUTS.map((i) => tf.tensor(i.values, i.shape));
    const step = () => {
      const g = tf.grads((x, w1, w2, w3, b) => convNet(x, w1, w2, w3, b));
      tf.dispose(g(ts));
    };
    step();
    const before = [tf.memory().numTensors, tf.engine().backend.numDataIds()];
    step();
    step();
    // Tensors, and heap buffers the kernels allocate for themselves.
    assert.deepEqual([tf.memory().numTensors, tf.engine().backend.numDataIds()], before);
    tf.dispose(ts);
  },
});

Deno.test({
  name: "OpenBLAS's workers sleep between products unless the user asks them to spin",
  ignore: ignore || Deno.build.os !== "linux" || navigator.hardwareConcurrency < 2,
  async fn() {
    const idleMs = async (env: Record<string, string>) => {
      const child = new URL("./blas_idle_child.ts", import.meta.url).pathname;
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", child],
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1", ...env },
      }).output();
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, `${text}${new TextDecoder().decode(out.stderr)}`);
      return Number(text.trim().split(": ").at(-1));
    };
    // The engine's default (OPENBLAS_THREAD_TIMEOUT=4): no worker spins after the products.
    const quiet = await idleMs({});
    assert.ok(quiet <= 30, `workers used ${quiet} ms of CPU while idle`);
    // The user's setting wins, and OpenBLAS's own default spins for ~0.1 s: the measure sees it.
    const spinning = await idleMs({ OPENBLAS_THREAD_TIMEOUT: "28" });
    assert.ok(spinning >= 50, `spinning workers used only ${spinning} ms of CPU`);
  },
});

Deno.test("openMpWaiting: passive after a short spin while libgomp loads; the user's settings win", () => {
  const names = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"];
  const saved = names.map((n) => Deno.env.get(n));
  const during = (user: Record<string, string>) => {
    names.forEach((n) => Deno.env.delete(n));
    const undo = openMpWaiting((n) => user[n]);
    const seen = names.map((n) => Deno.env.get(n));
    undo();
    assert.deepEqual(names.map((n) => Deno.env.get(n)), [undefined, undefined], "undone");
    return seen;
  };
  try {
    assert.deepEqual(during({}), ["passive", OPENMP_SPIN]);
    // A policy of the user's own keeps libgomp's spin for it (active spins for minutes).
    assert.deepEqual(during({ OMP_WAIT_POLICY: "active" }), [undefined, undefined]);
    assert.deepEqual(during({ GOMP_SPINCOUNT: "5" }), ["passive", undefined]);
  } finally {
    names.forEach((n, i) =>
      saved[i] === undefined ? Deno.env.delete(n) : Deno.env.set(n, saved[i]!)
    );
  }
});
