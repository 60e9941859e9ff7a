// The project's wasm kernels (lib/engine/wasm_kernels) and every op the models train through:
// values and gradients on `wasm` against the pure-JS `cpu` backend, from the same inputs.
import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertThrows, closeness } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { registerWasmKernels, wasmKernelConfigs } from "../../lib/engine/wasm_kernels/mod.ts";
import { rowGather } from "../../lib/engine/wasm_kernels/copy.ts";
import { binaryLayout } from "../../lib/engine/wasm_kernels/binary.ts";
import * as R from "../../lib/random.ts";

// BLAS off: these tests are about the kernels underneath it.
await initEngine({ backend: "wasm", blas: false, announce: false });

const KERNELS = [
  "Conv2DBackpropFilter",
  "Conv2DBackpropInput",
  "UnsortedSegmentSum",
  "Identity",
  "Cast",
  "Concat",
  "SplitV",
  "Transpose",
  "Add",
  "Sub",
  "Multiply",
  "Sum",
  "AvgPool",
  "AvgPoolGrad",
];

// ─── harness ─────────────────────────────────────────────────────────────────────────────────────

/** An input given as plain numbers, so both backends get the same values. */
interface Input {
  readonly values: Float32Array | Int32Array;
  readonly shape: number[];
  readonly dtype: "float32" | "int32";
  /** Differentiate with respect to it. @default true for float32 */
  readonly grad: boolean;
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
const normal = (seed: number, shape: number[]): Input => ({
  values: R.normalArray(R.rng(seed), size(shape)),
  shape,
  dtype: "float32",
  grad: true,
});
const ints = (values: number[]): Input => ({
  values: Int32Array.from(values),
  shape: [values.length],
  dtype: "int32",
  grad: false,
});

interface Outcome {
  readonly value: Float32Array;
  readonly shape: number[];
  readonly grads: Float32Array[];
}

/**
 * Run `op` on `backend`: its value, and the gradients of Σ op(xs)·w (w a fixed random tensor, so
 * every output element gets a distinct cotangent) with respect to the float inputs.
 */
async function outcome(
  backend: string,
  op: (...xs: tf.Tensor[]) => tf.Tensor,
  inputs: Input[],
): Promise<Outcome> {
  await tf.setBackend(backend);
  const xs = inputs.map((i) => tf.tensor(i.values, i.shape, i.dtype));
  const at = inputs.flatMap((i, k) => (i.grad ? [k] : []));
  const value = op(...xs);
  const w = tf.tensor(R.normalArray(R.rng(99), value.size), value.shape);
  const f = (...ts: tf.Tensor[]) => {
    const all = xs.slice();
    at.forEach((k, j) => (all[k] = ts[j]));
    return tf.sum(tf.mul(op(...all), w));
  };
  const grads = at.length ? tf.grads(f)(at.map((k) => xs[k])) : [];
  const out = {
    value: Float32Array.from(value.dataSync()),
    shape: value.shape,
    grads: grads.map((g) => Float32Array.from(g.dataSync())),
  };
  tf.dispose([...xs, value, w, ...grads]);
  return out;
}

interface AgreeOptions {
  /** Relative tolerance, against the largest |expected|. @default 1e-4 */
  readonly rtol?: number;
  /** The op run on cpu, where cpu's own kernel is wrong or the wasm op is computed otherwise. */
  readonly ref?: (...xs: tf.Tensor[]) => tf.Tensor;
  /** Compare the values too (false where the wasm forward itself is wrong). @default true */
  readonly values?: boolean;
}

/** Assert the op agrees on wasm and cpu (values and gradients) within `rtol` of the largest |x|. */
async function agrees(
  name: string,
  op: (...xs: tf.Tensor[]) => tf.Tensor,
  inputs: Input[],
  { rtol = 1e-4, ref = op, values = true }: AgreeOptions = {},
) {
  const want = await outcome("cpu", ref, inputs);
  const got = await outcome("wasm", op, inputs);
  const near = (a: Float32Array, b: Float32Array, what: string) => {
    const scale = b.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
    const c = closeness(a, b, rtol, rtol * scale);
    assert(c <= 1, `${name}: ${what} differs from cpu, worst error ${c.toFixed(2)}× tolerance`);
  };
  assertEquals(got.shape, want.shape, `${name}: output shape`);
  if (values) near(got.value, want.value, "value");
  assertEquals(got.grads.length, want.grads.length);
  got.grads.forEach((g, i) => near(g, want.grads[i], `gradient ${i}`));
}

// ─── registration ────────────────────────────────────────────────────────────────────────────────

Deno.test("registerWasmKernels() registers the project kernels once and returns their names", () => {
  assertEquals(registerWasmKernels(), KERNELS);
  assertEquals(registerWasmKernels(), KERNELS); // idempotent
  const ours = wasmKernelConfigs();
  for (const name of KERNELS) {
    assertEquals(tf.getKernel(name, "wasm")?.kernelFunc, ours.get(name)?.kernelFunc, name);
  }
});

// ─── conv2d ──────────────────────────────────────────────────────────────────────────────────────

type Pad = "same" | "valid" | number | tf.backend_util.ExplicitPadding;
const convCases: [string, number[], number[], number | [number, number], Pad][] = [
  ["1×1", [3, 5, 5, 4], [1, 1, 4, 6], 1, "same"],
  ["1×1 stride 2", [1, 7, 7, 3], [1, 1, 3, 4], 2, "same"],
  ["3×3 same", [3, 6, 6, 4], [3, 3, 4, 5], 1, "same"],
  ["3×3 valid, odd size", [1, 7, 5, 3], [3, 3, 3, 4], 1, "valid"],
  ["3×3 stride 2 same, even size", [3, 8, 8, 4], [3, 3, 4, 5], 2, "same"],
  ["3×3 stride 2 same, odd size", [1, 9, 7, 3], [3, 3, 3, 4], 2, "same"],
  ["3×3 stride 2 valid, odd size", [3, 9, 9, 3], [3, 3, 3, 4], 2, "valid"],
  ["3×3 pad 1 (number)", [1, 6, 5, 3], [3, 3, 3, 4], 1, 1],
  ["3×3 stride 2 pad 4 (beyond the kernel)", [1, 6, 6, 2], [3, 3, 2, 3], 2, 4],
  ["3×3 explicit asymmetric padding", [1, 7, 6, 2], [3, 3, 2, 3], 1, [[0, 0], [2, 1], [0, 3], [
    0,
    0,
  ]]],
  ["5×5 stride 2 pad 1", [1, 9, 8, 2], [5, 5, 2, 3], 2, 1],
  ["3×3 stride [2, 3] same", [1, 9, 8, 2], [3, 3, 2, 3], [2, 3], "same"],
  ["patchify k=2", [3, 8, 8, 4], [2, 2, 4, 6], 2, "valid"],
  ["patchify k=4", [1, 8, 12, 3], [4, 4, 3, 6], 4, "valid"],
  ["patchify k=2 on an odd size (last row dropped)", [1, 9, 9, 2], [2, 2, 2, 3], 2, "valid"],
  ["2×2 stride 2 same", [1, 9, 8, 2], [2, 2, 2, 3], 2, "same"],
  ["3×3 same, 16 → 24 channels", [2, 12, 12, 16], [3, 3, 16, 24], 1, "same"],
  ["3×3 stride 2 same, 16 → 24 channels", [2, 12, 12, 16], [3, 3, 16, 24], 2, "same"],
];

Deno.test("conv2d values and gradients (dx, dw) match cpu", async (t) => {
  for (const [name, xs, ws, stride, pad] of convCases) {
    await t.step(name, () =>
      agrees(
        `conv2d ${name}`,
        (x, w) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, stride, pad),
        [normal(1, xs), normal(2, ws)],
      ));
  }
});

// The wasm forward conv itself is wrong in these cases (XNNPACK and tfjs disagree on the output
// size), so only the gradients, which come from this project's kernels, are compared.
Deno.test("conv2d gradients where the wasm forward is wrong still match cpu", async (t) => {
  await t.step("5×5 stride [2, 3] pad 1", () =>
    agrees(
      "conv2d 5×5 stride [2, 3]",
      (x, w) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, [2, 3], 1),
      [normal(3, [1, 9, 8, 2]), normal(4, [5, 5, 2, 3])],
      { values: false },
    ));
  // tfjs's Conv2D gradient drops dimRoundingMode; the kernels recover it from dy's shape. The
  // reference pads explicitly to the same output size (the extra row reads only zeros).
  await t.step("'ceil' rounding", () =>
    agrees(
      "conv2d ceil",
      (x, w) => tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 2, 1, "NHWC", 1, "ceil"),
      [normal(3, [1, 8, 8, 2]), normal(4, [3, 3, 2, 3])],
      {
        values: false,
        ref: (x, w) =>
          tf.conv2d(x as tf.Tensor4D, w as tf.Tensor4D, 2, [[0, 0], [1, 2], [1, 2], [0, 0]]),
      },
    ));
});

Deno.test("conv2dTranspose (the Conv2DBackpropInput kernel as an op) matches cpu", () =>
  agrees(
    "conv2dTranspose",
    (y, w) => tf.conv2dTranspose(y as tf.Tensor4D, w as tf.Tensor4D, [2, 9, 9, 3], 2, "same"),
    [normal(5, [2, 5, 5, 4]), normal(6, [3, 3, 3, 4])],
  ));

Deno.test("conv gradient kernels reject NCHW and dilations with a clear error", () => {
  const dy = tf.zeros([1, 4, 4, 2]), w = tf.zeros([3, 3, 2, 2]), x = tf.zeros([1, 4, 4, 2]);
  const attrs = { strides: 1, pad: "same", dimRoundingMode: undefined };
  assertThrows(
    () =>
      tf.engine().runKernel("Conv2DBackpropInput", { dy, filter: w }, {
        ...attrs,
        dataFormat: "NCHW",
        inputShape: [1, 4, 4, 2],
      } as unknown as tf.NamedAttrMap),
    /Conv2DBackpropInput .*data format "NCHW" is not supported/,
  );
  assertThrows(
    () =>
      tf.engine().runKernel("Conv2DBackpropFilter", { x, dy }, {
        ...attrs,
        dataFormat: "NHWC",
        filterShape: [3, 3, 2, 2],
        dilations: 2,
      } as unknown as tf.NamedAttrMap),
    /Conv2DBackpropFilter .*dilations 2 are not supported/,
  );
  tf.dispose([dy, w, x]);
});

// ─── gather and UnsortedSegmentSum ───────────────────────────────────────────────────────────────

Deno.test("gather (embedding lookup) and its gradient through UnsortedSegmentSum match cpu", async (t) => {
  await t.step(
    "rows, with repeated ids",
    () =>
      agrees("gather axis 0", (table, ids) => tf.gather(table, ids), [
        normal(7, [10, 6]),
        ints([3, 0, 3, 9, 3, 1, 0]),
      ]),
  );
  await t.step(
    "axis 1",
    () =>
      agrees("gather axis 1", (x, ids) => tf.gather(x, ids, 1), [
        normal(8, [3, 5, 4]),
        ints([4, 4, 0, 2]),
      ]),
  );
  await t.step(
    "2-D ids",
    () =>
      agrees("gather 2-D ids", (table, ids) => tf.gather(table, tf.reshape(ids, [2, 3])), [
        normal(9, [7, 5]),
        ints([6, 1, 1, 0, 6, 6]),
      ]),
  );
});

Deno.test("unsortedSegmentSum matches cpu, drops out-of-range ids, and keeps int32", async () => {
  await agrees("unsortedSegmentSum", (x, ids) => tf.unsortedSegmentSum(x, ids as tf.Tensor1D, 4), [
    normal(10, [6, 3, 2]),
    ints([2, 0, 2, 3, 0, 2]),
  ]);
  const x = tf.tensor2d([[1, 2], [3, 4], [5, 6], [7, 8]]);
  // Call the kernel directly: the public op validates ids, the kernel must still be safe.
  const out = tf.engine().runKernel("UnsortedSegmentSum", {
    x,
    segmentIds: tf.tensor1d([1, -1, 1, 7], "int32"),
  }, {
    numSegments: 3,
  }) as tf.Tensor;
  assertEquals(Array.from(out.dataSync()), [0, 0, 6, 8, 0, 0]);
  const xi = tf.tensor1d([1, 2, 3], "int32");
  const oi = tf.unsortedSegmentSum(xi, tf.tensor1d([0, 0, 1], "int32"), 2);
  assertEquals([oi.dtype, Array.from(oi.dataSync())], ["int32", [3, 3]]);
  tf.dispose([x, out, xi, oi]);
});

// ─── copy, reduction and pooling kernels ──────────────────────────────────────────────────────────

Deno.test("concat, split and sum kernels match cpu on every axis, with gradients", async (t) => {
  const a = normal(60, [2, 3, 4, 5]), b = normal(61, [2, 3, 4, 2]), c = normal(62, [2, 3, 4, 1]);
  for (const axis of [0, 1, 2, 3]) {
    await t.step(`concat and split on axis ${axis}`, async () => {
      const shapeOf = (i: Input) => i.shape.map((d, k) => (k === axis ? d : a.shape[k]));
      const ins = [a, b, c].map((i, k) => normal(63 + 3 * axis + k, shapeOf(i)));
      await agrees(`concat axis ${axis}`, (x, y, z) => {
        const cat = tf.concat([x, y, z], axis);
        const sizes = [1, cat.shape[axis] - 2, 1];
        const [p, q, r] = tf.split(cat, sizes, axis);
        return tf.concat([r, tf.mul(q, 2), p], axis);
      }, ins);
    });
  }
  const x = normal(80, [3, 4, 5, 6]);
  const sums: [string, (x: tf.Tensor) => tf.Tensor][] = [
    ["leading [0, 1, 2]", (x) => tf.sum(x, [0, 1, 2])],
    ["leading [1, 0] keepDims", (x) => tf.sum(x, [1, 0], true)],
    ["leading [0]", (x) => tf.sum(x, 0)],
    ["middle [1] keepDims", (x) => tf.sum(x, 1, true)],
    ["middle block [1, 2]", (x) => tf.sum(x, [2, 1])],
    ["trailing (built-in)", (x) => tf.sum(x, [2, 3])],
    ["split axes [0, 2] (built-in)", (x) => tf.sum(x, [0, 2])],
    ["all (built-in)", (x) => tf.sum(x)],
  ];
  for (const [name, op] of sums) await t.step(`sum ${name}`, () => agrees(`sum ${name}`, op, [x]));
});

Deno.test("rowGather reads a transpose that keeps the last axis as rows, merging axes", () => {
  assertEquals(rowGather([2, 3, 4, 5], [0, 2, 1, 3]), {
    dims: [2, 4, 3],
    strides: [60, 5, 20],
    len: 5,
  });
  assertEquals(rowGather([2, 3, 4, 5], [1, 0, 2, 3]), { dims: [3, 2], strides: [20, 60], len: 20 });
  assertEquals(rowGather([2, 3, 4, 5], [2, 0, 1, 3]), { dims: [4, 6], strides: [5, 20], len: 5 });
  assertEquals(rowGather([2, 3, 4, 5], [0, 1, 2, 3]), { dims: [], strides: [], len: 120 });
  assertEquals(rowGather([2, 1, 4, 5], [1, 0, 2, 3]), { dims: [], strides: [], len: 40 });
  assertEquals(rowGather([4, 1, 3, 5], [2, 1, 0, 3]), { dims: [3, 4], strides: [5, 15], len: 5 });
  assertEquals(rowGather([1, 1], [1, 0]), { dims: [], strides: [], len: 1 });
  assertEquals(rowGather([2, 3, 4, 5], [0, 1, 3, 2]), undefined);
  assertEquals(rowGather([3, 4, 1], [1, 0, 2]), undefined);
});

Deno.test("binaryLayout reads equal shapes and one operand repeated along a block of axes", () => {
  assertEquals(binaryLayout([4, 8, 8, 32], [4, 8, 8, 32]), {
    P: 1,
    Q: 4,
    R: 2048,
    aFull: true,
    bFull: true,
  });
  assertEquals(binaryLayout([2, 3], [2, 3]), { P: 1, Q: 1, R: 6, aFull: true, bFull: true });
  assertEquals(binaryLayout([4, 8, 8, 32], [32]), {
    P: 1,
    Q: 256,
    R: 32,
    aFull: true,
    bFull: false,
  });
  assertEquals(binaryLayout([4, 1, 1, 32], [4, 8, 8, 32]), {
    P: 4,
    Q: 64,
    R: 32,
    aFull: false,
    bFull: true,
  });
  assertEquals(binaryLayout([2, 3, 4, 16], [2, 1, 4, 16]), {
    P: 2,
    Q: 3,
    R: 64,
    aFull: true,
    bFull: false,
  });
  assertEquals(binaryLayout([4, 9, 3], [3]), undefined); // rows too short
  assertEquals(binaryLayout([4, 9, 24], [4, 9, 1]), undefined);
  assertEquals(binaryLayout([4, 1, 24], [1, 9, 1]), undefined);
  assertEquals(binaryLayout([2, 3, 4, 16], [1, 3, 1, 16]), undefined);
  assertThrows(() => binaryLayout([2, 3], [4, 3]));
});

Deno.test("copy and sum kernels keep int32, skip empty parts, and split evenly", async () => {
  await tf.setBackend("wasm");
  const i = tf.tensor2d([[1, 2], [3, 4]], [2, 2], "int32");
  const e = tf.zeros([2, 0], "int32");
  const cat = tf.concat([i, e, i], 1);
  assertEquals([cat.dtype, cat.shape, Array.from(cat.dataSync())], ["int32", [2, 4], [
    1,
    2,
    1,
    2,
    3,
    4,
    3,
    4,
  ]]);
  const [p, q] = tf.split(cat, 2, 1);
  assertEquals([p.dtype, Array.from(p.dataSync()), Array.from(q.dataSync())], ["int32", [
    1,
    2,
    3,
    4,
  ], [1, 2, 3, 4]]);
  const s = tf.sum(i, 0);
  assertEquals([s.dtype, Array.from(s.dataSync())], ["int32", [4, 6]]);
  const b = tf.concat([tf.tensor1d([1], "bool"), tf.tensor1d([0], "bool")]); // built-in path
  assertEquals(Array.from(b.dataSync()), [1, 0]);
  const one = tf.concat([e, i], 1); // one non-empty part
  assertEquals(Array.from(one.dataSync()), [1, 2, 3, 4]);
  tf.dispose([i, e, cat, p, q, s, b, one]);
});

Deno.test("avgPool gradients match cpu for tiled and general pools", async (t) => {
  const cases: [string, number[], number, number, "valid" | "same"][] = [
    ["2×2 stride 2", [2, 6, 8, 3], 2, 2, "valid"],
    ["2×2 stride 2, odd size", [1, 7, 5, 4], 2, 2, "valid"],
    ["3×3 stride 3", [1, 9, 6, 2], 3, 3, "valid"],
    ["3×3 stride 1 same (built-in)", [1, 5, 5, 2], 3, 1, "same"],
    ["2×2 stride 2 same, odd size (built-in)", [1, 5, 5, 2], 2, 2, "same"],
  ];
  for (const [name, shape, k, s, pad] of cases) {
    await t.step(
      name,
      () => agrees(name, (x) => tf.avgPool(x as tf.Tensor4D, k, s, pad), [normal(90, shape)]),
    );
  }
});

Deno.test("identity shares the buffer and frees it with the last reference", async () => {
  await tf.setBackend("wasm");
  const before = tf.memory();
  const x = tf.tensor1d([1, 2, 3]);
  const y = tf.clone(x);
  assertEquals(tf.memory().numDataBuffers, before.numDataBuffers + 1);
  x.dispose();
  assertEquals(Array.from(y.dataSync()), [1, 2, 3]);
  const v = tf.variable(y);
  y.dispose();
  tf.tidy(() => v.assign(tf.add(v, 1)));
  assertEquals(Array.from(v.dataSync()), [2, 3, 4]);
  v.dispose();
  assertEquals(tf.memory().numTensors, before.numTensors);
  assertEquals(tf.memory().numBytes, before.numBytes);
  assertEquals(tf.memory().numDataBuffers, before.numDataBuffers);
});

Deno.test("a cast to the same dtype shares the buffer; casts to bool test ≠ 0", async () => {
  await tf.setBackend("wasm");
  const before = tf.memory();
  const x = tf.tensor1d([1.5, -2.5, 0, NaN, 256]);
  const same = tf.cast(x, "float32");
  assertEquals(tf.memory().numDataBuffers, before.numDataBuffers + 1, "no new buffer");
  const ints = tf.cast(x, "int32"), bools = tf.cast(x, "bool");
  x.dispose();
  assertEquals(Array.from(same.dataSync()), [1.5, -2.5, 0, NaN, 256]);
  assertEquals([ints.dtype, Array.from(ints.dataSync()).slice(0, 3)], ["int32", [1, -2, 0]]);
  // The built-in cast to bool kept the low byte (-2.5 → 254, 256 → 0).
  assertEquals([bools.dtype, Array.from(bools.dataSync())], ["bool", [1, 1, 0, 1, 1]]);
  const i = tf.tensor1d([0, -3, 512], "int32"), fromInts = tf.cast(i, "bool");
  assertEquals(Array.from(fromInts.dataSync()), [0, 1, 1]);
  tf.dispose([same, ints, bools, i, fromInts]);
  assertEquals(tf.memory().numDataBuffers, before.numDataBuffers);
  assertEquals(tf.memory().numBytes, before.numBytes);
});

// ─── the other ops the models train through ──────────────────────────────────────────────────────

const gelu = (x: tf.Tensor) =>
  tf.mul(
    tf.mul(x, 0.5),
    tf.add(1, tf.tanh(tf.mul(Math.sqrt(2 / Math.PI), tf.add(x, tf.mul(0.044715, tf.pow(x, 3)))))),
  );
const silu = (x: tf.Tensor) => tf.mul(x, tf.sigmoid(x));
const layerNorm = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.mul(tf.sub(x, mean), tf.rsqrt(tf.add(variance, 1e-5))), g), b);
};
const groupNorm = (x: tf.Tensor, g: tf.Tensor, b: tf.Tensor, groups: number) => {
  const [n, h, w, c] = x.shape;
  const xg = tf.reshape(x, [n, h, w, groups, c / groups]);
  const { mean, variance } = tf.moments(xg, [1, 2, 4], true);
  const y = tf.reshape(tf.mul(tf.sub(xg, mean), tf.rsqrt(tf.add(variance, 1e-5))), x.shape);
  return tf.add(tf.mul(y, g), b);
};

/** Nearest-neighbour ×2 upsampling by tiling, [N, H, W, C] → [N, 2H, 2W, C]. */
const upsample2 = (x: tf.Tensor) => {
  const [n, h, w, c] = x.shape; // tile's gradient goes to rank 4 at most
  const rows = tf.tile(tf.reshape(x, [n * h, 1, w * c]), [1, 2, 1]); // [N·H, 2, W·C]
  const cols = tf.tile(tf.reshape(rows, [n * 2 * h * w, 1, c]), [1, 2, 1]); // [N·2H·W, 2, C]
  return tf.reshape(cols, [n, 2 * h, 2 * w, c]);
};

const opCases: [string, (...xs: tf.Tensor[]) => tf.Tensor, Input[], AgreeOptions?][] = [
  ["matMul", (a, b) => tf.matMul(a, b), [normal(11, [5, 7]), normal(12, [7, 4])]],
  ["matMul transposeA", (a, b) => tf.matMul(a, b, true, false), [
    normal(13, [7, 5]),
    normal(14, [7, 4]),
  ]],
  ["matMul transposeB", (a, b) => tf.matMul(a, b, false, true), [
    normal(15, [5, 7]),
    normal(16, [4, 7]),
  ]],
  ["matMul both transposed", (a, b) => tf.matMul(a, b, true, true), [
    normal(17, [7, 5]),
    normal(18, [4, 7]),
  ]],
  ["batchMatMul rank 4", (a, b) => tf.matMul(a, b), [
    normal(19, [2, 3, 4, 5]),
    normal(20, [2, 3, 5, 6]),
  ]],
  ["batchMatMul transposeB (attention scores)", (q, k) => tf.matMul(q, k, false, true), [
    normal(21, [2, 3, 6, 4]),
    normal(22, [2, 3, 6, 4]),
  ]],
  ["avgPool 2×2", (x) => tf.avgPool(x as tf.Tensor4D, 2, 2, "valid"), [normal(25, [2, 6, 8, 3])]],
  // cpu's ResizeNearestNeighborGrad is wrong for batch > 1 (tfjs 4.22): the reference
  // upsamples by tiling instead.
  ["resizeNearestNeighbor ×2", (x) => tf.image.resizeNearestNeighbor(x as tf.Tensor4D, [8, 10]), [
    normal(26, [2, 4, 5, 3]),
  ], { ref: upsample2 }],
  ["softmax", (x) => tf.softmax(x), [normal(27, [3, 4, 7])]],
  ["logSoftmax", (x) => tf.logSoftmax(x), [normal(28, [5, 9])]],
  ["layer norm (moments, rsqrt)", layerNorm, [
    normal(29, [2, 5, 8]),
    normal(30, [8]),
    normal(31, [8]),
  ]],
  ["group norm", (x, g, b) => groupNorm(x, g, b, 4), [
    normal(32, [2, 3, 5, 8]),
    normal(33, [8]),
    normal(34, [8]),
  ]],
  ["sigmoid", (x) => tf.sigmoid(x), [normal(35, [4, 6])]],
  ["SiLU", silu, [normal(36, [4, 6])]],
  ["tanh GELU", gelu, [normal(37, [4, 6])]],
  ["erf", (x) => tf.erf(x), [normal(38, [4, 6])]],
  ["exp, log, sqrt, square", (x) => tf.add(tf.exp(x), tf.sqrt(tf.add(tf.square(x), 1))), [
    normal(39, [4, 6]),
  ]],
  ["concat and split", (a, b) => {
    const [p, q] = tf.split(tf.concat([a, b], 3), [5, 4], 3);
    return tf.mul(p, tf.slice(q, [0, 0, 0, 0], [-1, -1, -1, 1]));
  }, [normal(40, [2, 3, 4, 3]), normal(41, [2, 3, 4, 6])]],
  [
    "slice, transpose, reshape",
    (x) => tf.reshape(tf.transpose(tf.slice(x, [0, 1, 0, 2], [2, 3, 4, 3]), [0, 3, 1, 2]), [6, 12]),
    [
      normal(42, [2, 5, 4, 6]),
    ],
  ],
  ["pad", (x) => tf.pad(x, [[0, 0], [1, 2], [2, 1], [0, 0]]), [normal(43, [2, 3, 3, 2])]],
  ["mean and sum", (x) => tf.add(tf.mean(x, [1, 2], true), tf.sum(x, -1, true)), [
    normal(44, [2, 3, 4, 5]),
  ]],
  ["broadcast add and mul (bias, scale-shift)", (x, s, b) => tf.add(tf.mul(x, tf.add(s, 1)), b), [
    normal(45, [2, 3, 3, 4]),
    normal(46, [2, 1, 1, 4]),
    normal(47, [4]),
  ]],
];

Deno.test("ops the models train through match cpu (values and gradients)", async (t) => {
  for (const [name, op, inputs, opts] of opCases) {
    await t.step(name, () => agrees(name, op, inputs, opts));
  }
});

// ─── memory ──────────────────────────────────────────────────────────────────────────────────────

Deno.test("three gradient steps through every project kernel leave the tensor count steady", async () => {
  await tf.setBackend("wasm");
  const r = R.rng(5);
  const w1 = tf.variable(R.normal(R.fold(r, 1), [3, 3, 3, 8]));
  const w2 = tf.variable(R.normal(R.fold(r, 2), [3, 3, 8, 8]));
  const w3 = tf.variable(R.normal(R.fold(r, 3), [2, 2, 8, 4]));
  const table = tf.variable(R.normal(R.fold(r, 4), [10, 8]));
  const x = R.normal(R.fold(r, 5), [2, 8, 8, 3]) as tf.Tensor4D;
  const labels = tf.tensor1d([3, 7], "int32");
  const loss = () => {
    const emb = tf.reshape(tf.gather(table, labels), [2, 1, 1, 8]);
    let h = silu(tf.conv2d(x, w1 as tf.Tensor4D, 1, "same"));
    h = tf.add(tf.conv2d(h as tf.Tensor4D, w2 as tf.Tensor4D, 2, "same"), emb);
    h = tf.conv2d(silu(h) as tf.Tensor4D, w3 as tf.Tensor4D, 2, "valid");
    return tf.mean(tf.square(h)) as tf.Scalar;
  };
  const step = () => {
    const { value, grads } = tf.variableGrads(loss);
    for (const g of Object.values(grads)) assert(g.dataSync().every(Number.isFinite));
    tf.dispose([value, ...Object.values(grads)]);
  };
  step(); // warm-up: kernel setup may allocate once
  const before = tf.memory();
  for (let i = 0; i < 3; i++) {
    step();
    const now = tf.memory();
    assertEquals(now.numTensors, before.numTensors, `tensors after step ${i + 1}`);
    assertEquals(now.numBytes, before.numBytes, `bytes after step ${i + 1}`);
    assertEquals(now.numDataBuffers, before.numDataBuffers, `buffers after step ${i + 1}`);
  }
  tf.dispose([w1, w2, w3, table, x, labels]);
});
