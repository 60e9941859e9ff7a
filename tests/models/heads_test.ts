// Classification heads: shapes and counts (from shapes and in closed form, including the papers'
// printed counts), a hand-computed linear head, gradients against central finite differences,
// the attention and CNN heads against PyTorch (tests/fixtures/heads/, written by
// make_fixtures.py there), leaks, the text form and the errors.
import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { normal, rng } from "../../lib/random.ts";
import { countParams, disposeParams, type Params, toVariables } from "../../lib/params.ts";
import { readSafetensors } from "../../lib/io/safetensors.ts";
import { fromTorchLayout } from "../../lib/io/torch_layout.ts";
import {
  applyHead,
  describeHead,
  headForBudget,
  headParamCount,
  headParamShapes,
  type HeadSpec,
  initHead,
  parseHeadSpec,
} from "../../lib/models/heads.ts";

await initEngine({ backend: "wasm", announce: false });

type InShape = [number, number, number];
type InShape4 = [number, number, number, number];
const randn = (seed: number, shape: number[]) => normal(rng(seed), shape);
const fixtures = new URL("../fixtures/heads/", import.meta.url).pathname;

// Each head with its closed-form count written out: D = h·w·C, k² kernels, s token side.
const CASES: { spec: HeadSpec; inShape: InShape; classes: number; count: number }[] = [
  // D = 24: 24·5 + 5
  { spec: { kind: "linear" }, inShape: [2, 3, 4], classes: 5, count: 24 * 5 + 5 },
  // (24 + 1)·7 + (7 + 1)·6 + (6 + 1)·5
  { spec: { kind: "mlp", hidden: [7, 6] }, inShape: [2, 3, 4], classes: 5, count: 175 + 48 + 35 },
  // 2×2 kernels: 4·4·6 + 6 + 4·6·5 + 5 + (2·2·5)·3 + 3
  {
    spec: { kind: "cnn", channels: [6, 5], pool: 2 },
    inShape: [5, 5, 4],
    classes: 3,
    count: 96 + 6 + 120 + 5 + 60 + 3,
  },
  // 3×3 kernels, pool 3: 9·4·6 + 6 + 9·6·5 + 5 + (3·3·5)·3 + 3
  {
    spec: { kind: "cnn", channels: [6, 5], pool: 3, kernel: 3 },
    inShape: [4, 4, 4],
    classes: 3,
    count: 216 + 6 + 270 + 5 + 135 + 3,
  },
  // A 1×1 map: both max-pools are skipped, the adaptive pool copies it to 2×2.
  {
    spec: { kind: "cnn", channels: [3, 2], pool: 2 },
    inShape: [1, 1, 4],
    classes: 2,
    count: 4 * 4 * 3 + 3 + 4 * 3 * 2 + 2 + 8 * 2 + 2,
  },
  // s = 3, C = 8, W = 16, L = 1: norm 2·s²·C, proj C·W + W, cls W,
  // block (LN 2W)·2 + qkv 3W² + proj W² + W + fc1 4W² + 4W + fc2 4W² + W, head W·K + K.
  {
    spec: { kind: "attention", width: 16, layers: 1, heads: 2, tokens: 3 },
    inShape: [4, 4, 8],
    classes: 3,
    count: 2 * 9 * 8 + (8 * 16 + 16) + 16 +
      (4 * 16 + 3 * 256 + (256 + 16) + (4 * 256 + 64) + (4 * 256 + 16)) + (16 * 3 + 3),
  },
  // A 2×2 map under tokens = 16: s = 2; two blocks of W = 8.
  {
    spec: { kind: "attention", width: 8, layers: 2, heads: 4, tokens: 16 },
    inShape: [2, 2, 3],
    classes: 4,
    count: 2 * 4 * 3 + (3 * 8 + 8) + 8 + 2 * (12 * 64 + 10 * 8) + (8 * 4 + 4),
  },
];

Deno.test("headParamShapes() counts match closed forms; applyHead() gives [N, K]", async (t) => {
  for (const c of CASES) {
    await t.step(describeHead(c.spec), () => {
      const shapes = headParamShapes(c.spec, c.inShape, c.classes);
      assertEquals(countParams(shapes), c.count);
      assertEquals(headParamCount(c.spec, c.inShape, c.classes), c.count);
      const p = initHead(c.spec, c.inShape, c.classes, rng(1));
      assertEquals(Object.keys(p), Object.keys(shapes));
      for (const [k, v] of Object.entries(p)) assertEquals(v.shape, [...shapes[k]], k);
      const x = randn(2, [3, ...c.inShape]) as tf.Tensor4D;
      const y = applyHead(c.spec, p, x);
      assertEquals(y.shape, [3, c.classes]);
      assert(Array.from(y.dataSync()).every(Number.isFinite));
      tf.dispose([x, y]);
      disposeParams(p);
    });
  }
});

Deno.test("headParamCount() reproduces the papers' printed head sizes", () => {
  // Paper 002 Table 2 (ImageNet, 1000 classes, b = 24: 16×16×1024, s = 16, W = 1024, 8 heads):
  // 1 / 2 / 4 layers print 15.2M / 27.8M / 53.0M.
  const att = (layers: number): HeadSpec => ({
    kind: "attention",
    width: 1024,
    layers,
    heads: 8,
    tokens: 16,
  });
  assertEquals(headParamCount(att(1), [16, 16, 1024], 1000), 15_193_064);
  assertEquals(headParamCount(att(2), [16, 16, 1024], 1000), 27_786_216);
  assertEquals(headParamCount(att(4), [16, 16, 1024], 1000), 52_972_520);
  // Paper 001 Table 8 "CNN-1k-1k-1k 12M" and Table 7 "MLP-4k-2k 10M" with 1000 classes: the
  // CNN's count fits its 2×2 kernels (3×3 would give 23M).
  const cnn = (kernel: number): HeadSpec => ({
    kind: "cnn",
    channels: [1024, 1024],
    pool: 2,
    kernel,
  });
  assertEquals(headParamCount(cnn(2), [16, 16, 1024], 1000), 12_487_656);
  assertEquals(headParamCount(cnn(3), [16, 16, 1024], 1000), 22_973_416);
  assertEquals(headParamCount({ kind: "mlp", hidden: [2048] }, [2, 2, 1024], 1000), 10_439_656);
});

Deno.test("initHead() uses PyTorch's defaults and names the attention head like its module", () => {
  const spec = parseHeadSpec("attention:16:2:2:3");
  const p = initHead(spec, [4, 4, 8], 3, rng(5));
  for (
    const k of [
      "tokenizer.norm.weight",
      "tokenizer.norm.bias",
      "tokenizer.proj.weight",
      "tokenizer.proj.bias",
      "cls_token",
      "blocks.1.norm1.weight",
      "blocks.1.attn.qkv.weight",
      "blocks.1.attn.proj.bias",
      "blocks.1.norm2.bias",
      "blocks.1.mlp.fc1.weight",
      "blocks.1.mlp.fc2.bias",
      "head.weight",
      "head.bias",
    ]
  ) assert(p[k], `missing ${k}`);
  assert(!p["blocks.0.attn.qkv.bias"], "qkv has no bias");
  assertEquals(p["tokenizer.norm.weight"].shape, [3, 3, 8]); // LayerNorm([C, s, s]) in NHWC
  assertEquals(p["tokenizer.proj.weight"].shape, [1, 1, 8, 16]);
  assertEquals(p["cls_token"].shape, [1, 1, 16]);
  const max = (k: string) => tf.tidy(() => tf.max(tf.abs(p[k])).dataSync()[0]);
  assertEquals(max("cls_token"), 0);
  assertEquals(tf.tidy(() => tf.min(p["blocks.0.norm1.weight"]).dataSync()[0]), 1);
  // U(±1/√fan_in): fan_in C = 8 for the 1×1 conv, 4W = 64 for fc2.
  assert(max("tokenizer.proj.weight") <= 1 / Math.sqrt(8));
  assert(max("tokenizer.proj.weight") > 0.5 / Math.sqrt(8));
  assert(max("blocks.0.mlp.fc2.weight") <= 1 / 8);
  // Draws are keyed by (key, name): the same seed gives the same values.
  const q = initHead(spec, [4, 4, 8], 3, rng(5));
  assertEquals(q["blocks.1.attn.qkv.weight"].dataSync(), p["blocks.1.attn.qkv.weight"].dataSync());
  disposeParams(p);
  disposeParams(q);
});

Deno.test("applyHead() linear head is flatten (h, w, C) then x·W + b, by hand", () => {
  // x [2, 1, 2, 2]: sample 0 flattens to [1, 2, 3, 4], sample 1 to [−1, 0, 2, 1].
  const p = toVariables({
    "fcs.0.weight": tf.tensor2d([[1, 0], [0, 1], [1, 1], [2, -1]]),
    "fcs.0.bias": tf.tensor1d([0.5, -0.5]),
  });
  const x = tf.tensor4d([1, 2, 3, 4, -1, 0, 2, 1], [2, 1, 2, 2]);
  const y = applyHead({ kind: "linear" }, p, x);
  // [1 + 3 + 8 + 0.5, 2 + 3 − 4 − 0.5], [−1 + 2 + 2 + 0.5, 0 + 2 − 1 − 0.5]
  assertClose(y, tf.tensor2d([[12.5, 0.5], [3.5, 0.5]]), { rtol: 0, atol: 1e-6 });
  tf.dispose([x, y]);
  disposeParams(p);
});

// Every parameter random, so that none sits at a degenerate point: at init the CLS token is zero,
// and LayerNorm of a zero vector has a slope of 1/√eps, far too curved for a finite difference.
function awaken(p: Params, seed: number): void {
  Object.entries(p).forEach(([k, v], i) => {
    const z = tf.tidy(() => {
      const n = randn(seed + i, v.shape);
      return /norm\d?\.weight$/.test(k) ? tf.add(1, tf.mul(0.2, n)) : tf.mul(0.3, n);
    });
    v.assign(z);
    z.dispose();
  });
}

// d/dθ of L = Σ logits·R against (L(θ + ε) − L(θ − ε)) / 2ε for a few elements of a few params.
Deno.test("applyHead() gradients match central finite differences", async (t) => {
  const checks: { text: string; inShape: InShape; keys: string[] }[] = [
    { text: "linear", inShape: [2, 2, 3], keys: ["fcs.0.weight", "fcs.0.bias"] },
    { text: "mlp:6,5", inShape: [2, 2, 3], keys: ["fcs.0.weight", "fcs.1.bias", "fcs.2.weight"] },
    {
      text: "cnn:4,3:2",
      inShape: [5, 5, 3],
      keys: ["convs.0.weight", "convs.1.bias", "fc.weight"],
    },
    {
      text: "attention:8:1:2:3",
      inShape: [4, 4, 3],
      keys: [
        "tokenizer.norm.weight",
        "tokenizer.proj.weight",
        "cls_token",
        "blocks.0.attn.qkv.weight",
        "blocks.0.mlp.fc1.bias",
        "head.weight",
      ],
    },
  ];
  for (const c of checks) {
    await t.step(c.text, () => {
      const spec = parseHeadSpec(c.text), classes = 3;
      const p = initHead(spec, c.inShape, classes, rng(7));
      awaken(p, 100);
      const x = randn(8, [2, ...c.inShape]) as tf.Tensor4D;
      const r = randn(9, [2, classes]);
      const loss = () => tf.tidy(() => tf.sum(tf.mul(applyHead(spec, p, x), r)) as tf.Scalar);
      const { value, grads } = tf.variableGrads(loss, c.keys.map((k) => p[k]));
      const eps = 1e-2;
      for (const key of c.keys) {
        const v = p[key], g = grads[v.name].dataSync();
        assert(g.some((e) => Math.abs(e) > 1e-3), `${key}: the gradient is all but zero`);
        const base = v.dataSync().slice();
        for (const i of [0, Math.floor(base.length / 2), base.length - 1]) {
          const at = (d: number) => {
            const moved = base.slice();
            moved[i] += d;
            tf.tidy(() => v.assign(tf.tensor(moved, v.shape)));
            const l = loss();
            const out = l.dataSync()[0];
            l.dispose();
            return out;
          };
          const fd = (at(eps) - at(-eps)) / (2 * eps);
          tf.tidy(() => v.assign(tf.tensor(base, v.shape)));
          assertClose([g[i]], [fd], { rtol: 2e-2, atol: 2e-3, message: `${key}[${i}]` });
        }
      }
      tf.dispose([value, ...Object.values(grads), x, r]);
      disposeParams(p);
    });
  }
});

Deno.test("applyHead() cnn max-pool routes a tie's gradient to the first cell, as PyTorch", () => {
  // cnn:1,1:1 with identity convs (top-left tap 1; "same" pads bottom and right) and fc = 1:
  // logit = max of the 2×2 input; all four tie, and MaxPool2d's gradient goes to the first.
  const tap = [1, 0, 0, 0];
  const p = toVariables({
    "convs.0.weight": tf.tensor4d(tap, [2, 2, 1, 1]),
    "convs.0.bias": tf.zeros([1]),
    "convs.1.weight": tf.tensor4d(tap, [2, 2, 1, 1]),
    "convs.1.bias": tf.zeros([1]),
    "fc.weight": tf.ones([1, 1]),
    "fc.bias": tf.zeros([1]),
  });
  const spec = parseHeadSpec("cnn:1,1:1");
  const x = tf.ones([1, 2, 2, 1]) as tf.Tensor4D;
  const g = tf.grad((v: tf.Tensor) => tf.sum(applyHead(spec, p, v as tf.Tensor4D)))(x);
  assertEquals(Array.from(g.dataSync()), [1, 0, 0, 0]);
  tf.dispose([x, g]);
  disposeParams(p);
});

/** A fixture's state_dict in our layout, as variables, with its input (NHWC) and output. */
async function loadFixture(name: string) {
  const f = await readSafetensors(`${fixtures}${name}.safetensors`);
  const spec = parseHeadSpec(f.metadata.spec);
  const inShape = f.metadata.in_shape.split(",").map(Number) as InShape;
  const classes = Number(f.metadata.classes);
  const shapes = headParamShapes(spec, inShape, classes);
  const { input, output, ...state } = f.tensors;
  assertEquals(Object.keys(state).sort(), Object.keys(shapes).sort(), `${name}: state_dict keys`);
  const normKeys = ["tokenizer.norm.weight", "tokenizer.norm.bias"];
  const torch = tf.tidy(() => {
    const out: Record<string, tf.Tensor> = {};
    for (const [k, t] of Object.entries(state)) {
      let v: tf.Tensor = tf.tensor(t.data, t.shape, "float32");
      if (normKeys.includes(k)) {
        v = tf.transpose(v, [1, 2, 0]); // LayerNorm([C, s, s]) → [s, s, C]
      } else if (k === "fc.weight" && spec.kind === "cnn") {
        // torch flattens (C, P, P); we flatten (P, P, C): reorder the inputs, stay [K, in].
        const [kk, pp, c2] = [t.shape[0], spec.pool, spec.channels[1]];
        v = tf.reshape(tf.transpose(tf.reshape(v, [kk, c2, pp, pp]), [0, 2, 3, 1]), [kk, -1]);
      }
      out[k] = v;
    }
    return out;
  });
  // fromTorchLayout would transpose rank-3 tensors as if linear: they are the same in both.
  const params = toVariables(fromTorchLayout(shapes, torch, ["cls_token", ...normKeys]));
  const x = tf.tidy(() =>
    tf.transpose(tf.tensor4d(input.data, input.shape as InShape4), [0, 2, 3, 1])
  );
  const y = tf.tensor(output.data, output.shape);
  return { spec, params, x, y };
}

Deno.test("applyHead() matches the PyTorch attention and CNN heads to 1e-5", async (t) => {
  for (const name of ["attention", "cnn"]) {
    await t.step(name, async () => {
      const { spec, params, x, y } = await loadFixture(name);
      const got = applyHead(spec, params, x);
      assertClose(got, y, { rtol: 1e-5, atol: 1e-5, message: name });
      tf.dispose([got, x, y]);
      disposeParams(params);
    });
  }
});

Deno.test("applyHead() leaks no tensors, forward or backward", async () => {
  for (const c of CASES) {
    const p = initHead(c.spec, c.inShape, c.classes, rng(3));
    const x = randn(4, [2, ...c.inShape]) as tf.Tensor4D;
    await assertNoLeaks(
      () => tf.tidy(() => applyHead(c.spec, p, x).dataSync()),
      describeHead(c.spec),
    );
    await assertNoLeaks(() => {
      const { value, grads } = tf.variableGrads(() => tf.sum(applyHead(c.spec, p, x)) as tf.Scalar);
      tf.dispose([value, ...Object.values(grads)]);
    }, `${describeHead(c.spec)} gradient`);
    x.dispose();
    disposeParams(p);
  }
});

Deno.test("parseHeadSpec() and describeHead() round-trip", () => {
  const table: [string, HeadSpec][] = [
    ["linear", { kind: "linear" }],
    ["mlp:512", { kind: "mlp", hidden: [512] }],
    ["mlp:512,256", { kind: "mlp", hidden: [512, 256] }],
    ["cnn:64,128:2", { kind: "cnn", channels: [64, 128], pool: 2 }],
    ["cnn:64,128:2:3", { kind: "cnn", channels: [64, 128], pool: 2, kernel: 3 }],
    ["attention:128:2:4:16", { kind: "attention", width: 128, layers: 2, heads: 4, tokens: 16 }],
  ];
  for (const [text, spec] of table) {
    assertEquals(parseHeadSpec(text), spec, text);
    assertEquals(describeHead(spec), text);
    assertEquals(parseHeadSpec(describeHead(spec)), spec);
  }
  // The default kernel is written in the short form.
  assertEquals(describeHead(parseHeadSpec("cnn:64,128:2:2")), "cnn:64,128:2");
});

Deno.test("parseHeadSpec() rejects bad text in one line naming it and the accepted forms", () => {
  const bad: [string, RegExp][] = [
    ["", /unknown kind/],
    ["lin", /unknown kind "lin"/],
    ["linear:3", /linear takes 0 fields/],
    ["mlp", /mlp takes 1 fields/],
    ["mlp:", /hidden size "" is not a positive integer/],
    ["mlp:0", /hidden size "0"/],
    ["mlp:3,x", /hidden size "x"/],
    ["mlp:-4", /hidden size "-4"/],
    ["mlp:2.5", /hidden size "2.5"/],
    ["cnn:64:2", /two channel counts, got 1/],
    ["cnn:1,2,3:2", /two channel counts, got 3/],
    ["cnn:64,128", /cnn takes 2 or 3 fields/],
    ["cnn:64,128:0", /pool side "0"/],
    ["attention:16:1:2", /attention takes 4 fields/],
    ["attention:10:1:3:4", /width 10 is not divisible by 3 heads/],
    ["attention:16:0:2:4", /layers "0"/],
  ];
  for (const [text, why] of bad) {
    assertThrows(() => parseHeadSpec(text), (e: Error) => {
      assert(e.message.includes(`bad head "${text}"`), e.message);
      assert(why.test(e.message), `${text}: ${e.message}`);
      assert(e.message.includes("accepted: linear, mlp:"), e.message);
      assert(!e.message.includes("\n"), e.message);
      return true;
    });
  }
});

Deno.test("headParamShapes() and applyHead() reject bad specs, shapes and inputs", () => {
  const shape: InShape = [4, 4, 8];
  const specs: [unknown, RegExp][] = [
    [{ kind: "nope" }, /unknown kind "nope"/],
    [{ kind: "mlp", hidden: [] }, /at least one hidden size/],
    [{ kind: "mlp", hidden: [4, 0] }, /hidden\[1\] 0 is not a positive integer/],
    [{ kind: "cnn", channels: [4, 4], pool: -1 }, /pool -1/],
    [{ kind: "cnn", channels: [4, 4], pool: 2, kernel: 0 }, /kernel 0/],
    [{ kind: "attention", width: 10, layers: 1, heads: 3, tokens: 4 }, /not divisible by 3 heads/],
    [{ kind: "attention", width: 8, layers: 1, heads: 2, tokens: 1.5 }, /tokens 1.5/],
  ];
  for (const [spec, why] of specs) {
    assertThrows(() => headParamShapes(spec as HeadSpec, shape, 3), why);
  }
  assertThrows(() => headParamShapes({ kind: "linear" }, [4, 0, 8], 3), /input shape \[4,0,8\]/);
  assertThrows(() => headParamShapes({ kind: "linear" }, shape, 0), /classes 0/);

  const spec = parseHeadSpec("attention:16:1:2:3");
  const p = initHead(spec, shape, 3, rng(0));
  const wrong = tf.zeros([2, 4, 4, 4]) as tf.Tensor4D;
  assertThrows(() => applyHead(spec, p, wrong), /input \[2,4,4,4\] does not fit .*"tokenizer/);
  const rank3 = tf.zeros([2, 4, 8]);
  assertThrows(
    () => applyHead(spec, p, rank3 as unknown as tf.Tensor4D),
    /expected \[N, h, w, C\]/,
  );
  const { ["head.bias"]: _, ...partial } = p;
  const x = tf.zeros([2, 4, 4, 8]) as tf.Tensor4D;
  assertThrows(() => applyHead(spec, partial, x), /parameter "head.bias" is missing/);
  // The linear head fits any input with the same h·w·C only by shape; a different one is caught.
  const lp = initHead({ kind: "linear" }, shape, 3, rng(0));
  assertThrows(
    () => applyHead({ kind: "linear" }, lp, wrong),
    /"fcs.0.weight" is \[128,3\].*\[64,3\]/,
  );
  tf.dispose([wrong, rank3, x]);
  disposeParams(p);
  disposeParams(lp);
});

Deno.test("headForBudget() picks the closest count along the one free size", async (t) => {
  const shape: InShape = [2, 2, 4];
  await t.step("mlp by hand", () => {
    // D = 16, K = 10: count(H) = 17H + 10H + 10 = 27H + 10; 300 → H = 11 (307) over 10 (280),
    // 290 → H = 10 (280) over 11 (307).
    assertEquals(headForBudget("mlp", shape, 10, 300), { kind: "mlp", hidden: [11] });
    assertEquals(headForBudget("mlp", shape, 10, 290), { kind: "mlp", hidden: [10] });
    assertEquals(headForBudget("mlp", shape, 10, 1), { kind: "mlp", hidden: [1] });
  });
  const dist = (budget: number, s: HeadSpec) => Math.abs(headParamCount(s, shape, 10) - budget);
  await t.step("cnn", () => {
    const spec = headForBudget("cnn", shape, 10, 5000);
    assert(spec.kind === "cnn");
    const x = spec.channels[0];
    assertEquals(describeHead(spec), `cnn:${x},${x}:2`);
    for (const y of [x - 1, x + 1]) {
      const other: HeadSpec = { kind: "cnn", channels: [y, y], pool: 2 };
      assert(dist(5000, spec) <= dist(5000, other), `cnn ${x} vs ${y}`);
    }
  });
  await t.step("attention", () => {
    const spec = headForBudget("attention", shape, 10, 60_000);
    assert(spec.kind === "attention");
    const x = spec.width;
    assertEquals(spec, { kind: "attention", width: x, layers: 2, heads: 8, tokens: 16 });
    assertEquals(x % 8, 0);
    for (const y of [x - 8, x + 8]) {
      assert(dist(60_000, spec) <= dist(60_000, { ...spec, width: y }), `attention ${x} vs ${y}`);
    }
  });
  await t.step("options and linear", () => {
    const s = headForBudget("attention", shape, 10, 60_000, { layers: 1, heads: 2, tokens: 1 });
    assert(s.kind === "attention" && s.layers === 1 && s.heads === 2 && s.tokens === 1);
    assertEquals(headForBudget("linear", shape, 10, 123), { kind: "linear" });
    assertThrows(() => headForBudget("mlp", shape, 10, 0), /budget 0/);
    assertThrows(() => headForBudget("mlp", shape, 10, NaN), /budget NaN/);
  });
});
