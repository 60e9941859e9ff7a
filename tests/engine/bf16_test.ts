// bf16 mixed precision (lib/engine/blas/precision.ts): the oneDNN kernels round their inputs to
// bf16 and accumulate in f32. Checked two ways: against fp32 kernels fed the same inputs rounded
// to bf16 here (equal up to f32 summation order: the rounding and the f32 accumulation both
// hold), and against plain fp32 (within bf16's precision, and visibly not fp32). Runs where the
// CPU has bf16 instructions as oneDNN detects them; the fallback line is tested everywhere oneDNN
// loads, by capping oneDNN's ISA in a child process.
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { initEngine } from "../../lib/engine/mod.ts";
import { bf16SlowerLine } from "../../lib/engine/backend.ts";
import { nativeKernels } from "../../lib/engine/native_kernels.ts";
import { loadOneDnn } from "../../lib/engine/blas/mod.ts";
import { precision, setPrecision } from "../../lib/engine/blas/precision.ts";
import { input } from "./compare.ts";
import { fromBf16Bits, toBf16Bits } from "../../lib/offheap_params.ts";

await initEngine({ backend: "wasm", announce: false });
const dnn = loadOneDnn();
const ignore = !dnn?.isa.bf16;

/** x rounded to the nearest bf16 (ties to even), as float32: the reference's inputs. */
const roundBf16 = (x: Float32Array) => fromBf16Bits(toBf16Bits(x));

/** max |a − b| / max |b|. */
function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** `f` on tensors of `values` at precision `p`; its outputs' values. */
function at(
  p: "fp32" | "bf16",
  values: { values: Float32Array; shape: number[] }[],
  f: (...ts: tf.Tensor[]) => tf.Tensor[],
): Float32Array[] {
  setPrecision(p);
  try {
    return tf.tidy(() => f(...values.map((v) => tf.tensor(v.values, v.shape))))
      .map((t) => {
        const d = t.dataSync() as Float32Array;
        t.dispose();
        return d;
      });
  } finally {
    setPrecision("fp32");
  }
}

/**
 * bf16 equals fp32 on bf16-rounded inputs (to 1e-4 of the largest output: f32 sums in another
 * order), and differs from fp32 on the raw inputs by more than f32 rounding but within bf16's.
 * The last `fp32Inputs` inputs (a bias) are not products' operands: bf16 leaves them f32.
 */
function checkMixed(
  what: string,
  inputs: ReturnType<typeof input>[],
  f: (...ts: tf.Tensor[]) => tf.Tensor[],
  fp32Inputs = 0,
) {
  const mixed = at("bf16", inputs, f);
  const last = inputs.length - fp32Inputs;
  const rounded = at(
    "fp32",
    inputs.map((i, k) => k < last ? { ...i, values: roundBf16(i.values) } : i),
    f,
  );
  const plain = at("fp32", inputs, f);
  mixed.forEach((m, k) => {
    const vsRounded = relErr(m, rounded[k]), vsPlain = relErr(m, plain[k]);
    assert.ok(vsRounded < 1e-4, `${what}[${k}]: vs fp32 on rounded inputs ${vsRounded}`);
    assert.ok(vsPlain > 1e-4, `${what}[${k}]: indistinguishable from fp32 (${vsPlain}): not bf16`);
    assert.ok(vsPlain < 2e-2, `${what}[${k}]: vs fp32 ${vsPlain}, beyond bf16's precision`);
  });
}

Deno.test({
  name: "bf16 convolutions: forward, input and filter gradients round inputs and sum in f32",
  ignore,
  fn() {
    const cases = [
      { x: [2, 8, 8, 32], w: [3, 3, 32, 48], stride: 1, pad: "same" as const },
      { x: [2, 6, 6, 64], w: [1, 1, 64, 32], stride: 1, pad: "valid" as const },
      { x: [2, 8, 8, 32], w: [3, 3, 32, 32], stride: 2, pad: "same" as const },
    ];
    for (const [i, c] of cases.entries()) {
      const conv = (x: tf.Tensor, w: tf.Tensor) =>
        tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, c.stride, c.pad);
      const yShape = tf.tidy(() => conv(tf.zeros(c.x), tf.zeros(c.w)).shape);
      const inputs = [input(10 + i, c.x), input(20 + i, c.w, -0.2, 0.2), input(30 + i, yShape)];
      checkMixed(`conv ${i}`, inputs, (x, w, dy) => {
        const [dx, dw] = tf.grads((a: tf.Tensor, b: tf.Tensor) => conv(a, b))([x, w], dy);
        return [conv(x, w), dx, dw];
      });
    }
  },
});

Deno.test({
  name: "bf16 matrix products: dense (stacked rows), transposed, and batched (attention) routes",
  ignore,
  fn() {
    const a = input(1, [4, 49, 64]), b = input(2, [64, 96]), c = input(3, [4, 49, 64]);
    checkMixed("dense", [a, b], (x, w) => [tf.matMul(x, w)]);
    checkMixed("transposed", [a, c], (x, y) => [tf.matMul(x, y, true, false)]);
    checkMixed("batched", [a, c], (x, y) => [tf.matMul(x, y, false, true)]);
    // A fused bias goes in as C with beta 1: still one rounding of A and B only.
    const bias = input(4, [96]);
    checkMixed("fused bias", [a, b, bias], (x, w, bb) => [
      tf.fused.matMul({ a: x as tf.Tensor3D, b: w as tf.Tensor3D, bias: bb }),
    ], 1);
  },
});

Deno.test({
  name: "bf16 gradients of a small conv net stay within 2 % of fp32's, with no tensor leaked",
  ignore,
  fn() {
    // Smooth activations: at a ReLU's kink, rounding a near-zero pre-activation flips its
    // gradient (rounding only the inputs moved this net's first-layer gradient by 11 % with ReLU;
    // 0.3 % with tanh, where bf16 kernels give 0.4 %).
    const x = input(5, [4, 8, 8, 3]), w1 = input(6, [3, 3, 3, 16], -0.3, 0.3);
    const w2 = input(7, [3, 3, 16, 16], -0.1, 0.1), w3 = input(8, [16 * 16, 10], -0.1, 0.1);
    const net = (xs: tf.Tensor, a: tf.Tensor, b: tf.Tensor, d: tf.Tensor) => {
      const h1 = tf.tanh(tf.conv2d(xs as tf.Tensor4D, a as tf.Tensor4D, 1, "same"));
      const h2 = tf.sigmoid(tf.conv2d(h1, b as tf.Tensor4D, 2, "same"));
      const logits = tf.matMul(tf.reshape(h2, [4, 16 * 16]), d);
      return tf.losses.softmaxCrossEntropy(tf.oneHot([1, 3, 5, 7], 10), logits);
    };
    // The loss and its gradients with respect to the three weights.
    const grads = (xs: tf.Tensor, a: tf.Tensor, b: tf.Tensor, d: tf.Tensor) =>
      tf.grads((p: tf.Tensor, q: tf.Tensor, r: tf.Tensor) => net(xs, p, q, r))([a, b, d]);
    const before = tf.memory().numTensors;
    const mixed = at(
      "bf16",
      [x, w1, w2, w3],
      (xs, a, b, d) => [net(xs, a, b, d), ...grads(xs, a, b, d)],
    );
    const full = at(
      "fp32",
      [x, w1, w2, w3],
      (xs, a, b, d) => [net(xs, a, b, d), ...grads(xs, a, b, d)],
    );
    assert.equal(tf.memory().numTensors, before, "tensors leaked");
    assert.ok(Math.abs(mixed[0][0] - full[0][0]) < 1e-3 * Math.abs(full[0][0]), "loss");
    for (let k = 1; k < full.length; k++) {
      const e = relErr(mixed[k], full[k]);
      assert.ok(e < 2e-2, `gradient ${k}: relative error ${e}`);
    }
  },
});

Deno.test({
  name: "initEngine: bf16 where the CPU lacks it prints one line and runs fp32",
  ignore: !dnn,
  async fn() {
    const mod = new URL("../../lib/engine/mod.ts", import.meta.url).href;
    const code = `const { initEngine } = await import(${JSON.stringify(mod)});
const e = await initEngine({ backend: "wasm", precision: "bf16", announce: false });
console.log(JSON.stringify({ engine: e.engine, precision: e.precision }));`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      // oneDNN's own cap on the ISA it detects: AVX-512 without bf16 (a Skylake-class CPU).
      env: { NO_COLOR: "1", ONEDNN_MAX_CPU_ISA: "AVX512_CORE" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr).trim().split("\n");
    assert.equal(out.code, 0, err.join("\n"));
    const got = JSON.parse(new TextDecoder().decode(out.stdout).trim().split("\n").pop()!);
    assert.equal(got.precision, "fp32");
    assert.ok(!got.engine.includes("bf16"), got.engine);
    const lines = err.filter((l) => l.includes("bf16"));
    assert.equal(lines.length, 1, err.join("\n"));
    assert.match(lines[0], /no bf16 instructions .*running fp32/);
  },
});

Deno.test({
  name: "initEngine: bf16 is recorded in the engine and reset by a later fp32 init",
  ignore,
  async fn() {
    try {
      const e = await initEngine({ backend: "wasm", precision: "bf16", announce: false });
      assert.equal(e.precision, "bf16");
      assert.ok(e.engine.endsWith("+bf16"), e.engine);
      assert.equal(precision(), "bf16");
    } finally {
      const e = await initEngine({ backend: "wasm", announce: false });
      assert.equal(e.precision, "fp32");
      assert.equal(precision(), "fp32");
    }
  },
});

Deno.test("bf16SlowerLine names the measured ratio where the bf16 dot is slower, else nothing", () => {
  const line = bf16SlowerLine(400, 200);
  assert.ok(line);
  assert.match(line, /peaks at 0\.50× its fp32 multiply-add \(200 against 400 GFLOP\/s/);
  assert.match(line, /running bf16 as asked$/);
  assert.equal(bf16SlowerLine(200, 400), undefined);
  assert.equal(bf16SlowerLine(300, 300), undefined);
  assert.equal(bf16SlowerLine(Number.NaN, 100), undefined);
});

Deno.test({
  name: "initEngine: bf16 without AMX says once per process when its dot peaks below fp32",
  ignore: ignore || !!dnn?.isa.amx || !nativeKernels(),
  async fn() {
    // This process's own measurement, longer than initEngine's: the child must print the line
    // where the bf16 dot is clearly slower and stay quiet where it is clearly faster.
    const k = nativeKernels()!;
    const fp32 = k.peak("fp32", 0.3, 1)!, bf16 = k.peak("bf16", 0.3, 1)!;
    const mod = new URL("../../lib/engine/mod.ts", import.meta.url).href;
    const code = `const { initEngine } = await import(${JSON.stringify(mod)});
for (let i = 0; i < 2; i++) await initEngine({ backend: "wasm", precision: "bf16", announce: false });`;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", code],
      env: { NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(out.stderr).trim().split("\n");
    assert.equal(out.code, 0, err.join("\n"));
    const lines = err.filter((l) => l.includes("bf16 dot product peaks"));
    assert.ok(lines.length <= 1, err.join("\n"));
    if (bf16 < 0.8 * fp32) assert.equal(lines.length, 1, err.join("\n"));
    if (bf16 > 1.2 * fp32) assert.equal(lines.length, 0, err.join("\n"));
  },
});
