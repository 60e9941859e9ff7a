import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { normal, rng, uniform } from "../../lib/random.ts";
import { disposeParams, type Params, toVariables } from "../../lib/params.ts";
import { namedSchedule } from "../../lib/diffusion/schedule.ts";
import { diffusionLoss } from "../../lib/diffusion/losses.ts";
import { initParam } from "../../lib/models/nn.ts";
import {
  apply,
  DIT_CONFIGS,
  type DiTConfig,
  features,
  init,
  numParams,
  numTokens,
  outputChannels,
  paramShapes,
  paramSpecs,
  posEmbed,
  posEmbedSize,
  posEmbedValues,
} from "../../lib/models/dit.ts";

await initEngine({ backend: "wasm", announce: false });
const tiny: DiTConfig = DIT_CONFIGS.tiny;

// Parameters with the zero-init ones replaced by small random values, so that every parameter
// reaches the output (and gets a gradient).
function awake(c: DiTConfig, seed: number): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [name, spec] of Object.entries(paramSpecs(c))) {
    const t = spec.init.kind === "zeros"
      ? uniform(rng(seed + 1), spec.shape, -0.1, 0.1)
      : initParam(rng(seed), name, spec);
    out[name] = t.dataSync() as Float32Array;
    t.dispose();
  }
  return out;
}

function toParams(c: DiTConfig, values: Record<string, Float32Array>): Params {
  const shapes = paramShapes(c);
  return toVariables(
    Object.fromEntries(Object.entries(values).map(([k, v]) => [k, tf.tensor(v, [...shapes[k]])])),
  );
}

const batch = (c: DiTConfig, n: number, seed = 3) => ({
  x: normal(rng(seed), [n, c.inputSize, c.inputSize, c.inChannels]) as tf.Tensor4D,
  t: tf.tensor1d(Array.from({ length: n }, (_, i) => (i * 397 + 11) % 1000), "int32"),
  y: tf.tensor1d(Array.from({ length: n }, (_, i) => i % (c.numClasses ?? 1)), "int32"),
});

Deno.test("paramShapes() gives the paper sizes' counts without allocating", () => {
  const before = tf.memory().numTensors;
  // DiT prints counts with pos_embed included (an nn.Parameter with requires_grad=False).
  const expected: [keyof typeof DIT_CONFIGS, number][] = [
    ["DiT-S/2", 32_963_360],
    ["DiT-B/2", 130_512_416],
    ["DiT-L/2", 458_102_816],
    ["DiT-XL/2", 675_129_632],
  ];
  for (const [name, total] of expected) {
    const c = DIT_CONFIGS[name];
    assertEquals(numParams(c) + posEmbedSize(c), total, name);
    assertEquals(numTokens(c), 256, name);
  }
  assertEquals(tf.memory().numTensors, before);
  const s = paramShapes(DIT_CONFIGS["DiT-B/2"]);
  assertEquals(s["x_embedder.proj.weight"], [2, 2, 4, 768]); // conv [kh, kw, in, out]
  assertEquals(s["t_embedder.mlp.0.weight"], [256, 768]); // linear [in, out]
  assertEquals(s["t_embedder.mlp.2.weight"], [768, 768]);
  assertEquals(s["y_embedder.embedding_table.weight"], [1001, 768]); // + the null label
  assertEquals(s["blocks.11.attn.qkv.weight"], [768, 2304]);
  assertEquals(s["blocks.11.attn.proj.bias"], [768]);
  assertEquals(s["blocks.0.mlp.fc1.weight"], [768, 3072]);
  assertEquals(s["blocks.0.mlp.fc2.weight"], [3072, 768]);
  assertEquals(s["blocks.0.adaLN_modulation.1.weight"], [768, 4608]);
  assertEquals(s["final_layer.adaLN_modulation.1.weight"], [768, 1536]);
  assertEquals(s["final_layer.linear.weight"], [768, 32]); // p²·2C with learnSigma
  assert(!("blocks.12.attn.qkv.weight" in s) && !("pos_embed" in s));
  assertEquals(Object.keys(s).length, 7 + 12 * 10 + 4);
});

Deno.test("paramShapes() follows the label and sigma options", () => {
  const uncond = paramShapes({ ...tiny, numClasses: undefined });
  assert(!("y_embedder.embedding_table.weight" in uncond));
  assertEquals(paramShapes({ ...tiny, classDropoutProb: 0 })["y_embedder.embedding_table.weight"], [
    10,
    32,
  ]);
  assertEquals(paramShapes({ ...tiny, learnSigma: false })["final_layer.linear.weight"], [32, 16]);
  assertEquals(outputChannels(tiny), 8);
  assertThrows(() => paramShapes({ ...tiny, patchSize: 3 }), /does not divide by patchSize/);
  assertThrows(() => paramShapes({ ...tiny, hiddenSize: 30, numHeads: 3 }), /by 4/);
  assertThrows(() => paramShapes({ ...tiny, numHeads: 3 }), /heads/);
});

Deno.test("init() follows DiT's initialize_weights", () => {
  const c = DIT_CONFIGS.small;
  const p = init(c, rng(0));
  const stats = (k: string) => {
    const v = p[k].dataSync();
    let s = 0, s2 = 0, max = 0;
    for (const x of v) [s, s2, max] = [s + x, s2 + x * x, Math.max(max, Math.abs(x))];
    return { mean: s / v.length, std: Math.sqrt(s2 / v.length - (s / v.length) ** 2), max };
  };
  for (
    const k of [
      "blocks.3.adaLN_modulation.1.weight",
      "blocks.3.adaLN_modulation.1.bias",
      "final_layer.linear.weight",
      "final_layer.adaLN_modulation.1.weight",
      "blocks.0.attn.qkv.bias",
    ]
  ) {
    assertEquals(stats(k).max, 0, k);
  }
  const xav = (fi: number, fo: number) => Math.sqrt(6 / (fi + fo));
  const fc1 = stats("blocks.0.mlp.fc1.weight");
  assert(fc1.max <= xav(128, 512) && fc1.max > 0.95 * xav(128, 512), `fc1 bound ${fc1.max}`);
  assertClose([fc1.std], [xav(128, 512) / Math.sqrt(3)], { rtol: 0.03 });
  const patch = stats("x_embedder.proj.weight"); // xavier on the [D, C·p·p] view
  assert(patch.max <= xav(4, 128) && patch.max > 0.9 * xav(4, 128), `patch bound ${patch.max}`);
  for (
    const k of [
      "t_embedder.mlp.0.weight",
      "t_embedder.mlp.2.weight",
      "y_embedder.embedding_table.weight",
    ]
  ) {
    assertClose([stats(k).std], [0.02], { rtol: 0.15, message: k });
  }
  disposeParams(p);
});

Deno.test("posEmbedValues() is the 2-D sin-cos closed form (column first, sin first)", () => {
  const c: DiTConfig = { ...tiny, inputSize: 8, patchSize: 2, hiddenSize: 16 }; // G = 4, D/4 = 4
  const pe = posEmbedValues(c);
  assertEquals(pe.length, 16 * 16);
  const at = (h: number, w: number, ch: number) => pe[(h * 4 + w) * 16 + ch];
  // Token 0 is at the origin: sin 0 = 0, cos 0 = 1 in both halves.
  assertEquals(Array.from(pe.slice(0, 16)), [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]);
  for (const [h, w] of [[1, 2], [3, 0], [2, 3]]) {
    for (let i = 0; i < 4; i++) {
      const omega = 10000 ** (-i / 4);
      assertClose(
        [at(h, w, i), at(h, w, 4 + i), at(h, w, 8 + i), at(h, w, 12 + i)],
        [Math.sin(w * omega), Math.cos(w * omega), Math.sin(h * omega), Math.cos(h * omega)],
        { rtol: 0, atol: 1e-7, message: `token (${h}, ${w}) frequency ${i}` },
      );
    }
  }
  const t = posEmbed(c);
  assertEquals(t.shape, [1, 16, 16]);
  t.dispose();
});

Deno.test("apply() output is exactly zero at init, shaped [N, S, S, 2C], and leaks nothing", async () => {
  for (const c of [DIT_CONFIGS.tiny, DIT_CONFIGS.small] as DiTConfig[]) {
    const p = init(c, rng(0));
    const { x, t, y } = batch(c, 2);
    await assertNoLeaks(() => {
      const out = apply(c, p, x, t, { y });
      assertEquals(out.shape, [2, c.inputSize, c.inputSize, outputChannels(c)]);
      assertEquals(tf.tidy(() => tf.max(tf.abs(out)).dataSync()[0]), 0);
      out.dispose();
    });
    disposeParams(p);
    tf.dispose([x, t, y]);
  }
});

// Golden values from bench/peer_torch.py's DiT (PyTorch, written to models.py's structure) with
// every parameter set to 0.3·sin(0.37·i + 1.1·k): i the element's index in tfjs layout, k the
// parameter's index among the sorted names. Checks patch order, positions, qkv split, adaLN
// chunk order, the final layer's (shift, scale) and unpatchify all at once.
Deno.test("apply() matches the PyTorch peer on a deterministic micro config", () => {
  const c: DiTConfig = {
    inputSize: 4,
    patchSize: 2,
    inChannels: 1,
    hiddenSize: 8,
    depth: 1,
    numHeads: 2,
    mlpRatio: 2,
    classDropoutProb: 0.1,
    numClasses: 3,
    learnSigma: true,
  };
  const shapes = paramShapes(c);
  const names = Object.keys(shapes).sort();
  const p = toVariables(Object.fromEntries(names.map((name, k) => {
    const size = shapes[name].reduce((a, b) => a * b, 1);
    const v = Float32Array.from({ length: size }, (_, i) => 0.3 * Math.sin(0.37 * i + 1.1 * k));
    return [name, tf.tensor(v, [...shapes[name]])];
  })));
  const expected = [
    0.281678,
    0.391263,
    0.447893,
    0.443902,
    0.587823,
    0.603953,
    0.538339,
    0.399865,
    0.379831,
    0.264352,
    0.113094,
    -0.053471,
    0.20727,
    -0.013377,
    -0.232214,
    -0.419622,
    0.611239,
    0.748681,
    0.784793,
    0.714688,
    1.121512,
    1.16656,
    1.053719,
    0.798262,
    0.547852,
    0.306867,
    0.024349,
    -0.261464,
    0.434765,
    0.012424,
    -0.411599,
    -0.779913,
  ];
  tf.tidy(() => {
    const x = tf.tensor4d(Array.from({ length: 16 }, (_, i) => Math.cos(0.5 * i)), [1, 4, 4, 1]);
    const out = apply(c, p, x, tf.tensor1d([37], "int32"), { y: tf.tensor1d([1], "int32") });
    assertEquals(out.shape, [1, 4, 4, 2]);
    assertClose(out, expected, { rtol: 1e-4, atol: 1e-5 });
  });
  disposeParams(p);
});

Deno.test("apply() handles labels: null id, dropping by key, unconditional configs", () => {
  const p = toParams(tiny, awake(tiny, 2));
  tf.tidy(() => {
    const { x, t } = batch(tiny, 3);
    const run = (labels: number[]) => apply(tiny, p, x, t, { y: tf.tensor1d(labels, "int32") });
    const a = run([1, 2, 3]), b = run([1, 5, 3]);
    const diff = tf.sum(tf.abs(tf.sub(a, b)), [1, 2, 3]).dataSync();
    assert(
      diff[0] === 0 && diff[1] > 0 && diff[2] === 0,
      `labels change only their own sample: ${diff}`,
    );
    assertThrows(() => apply(tiny, p, x, t), /labels y/);
    assertThrows(
      () =>
        apply(tiny, p, tf.zeros([3, 4, 4, 4]) as tf.Tensor4D, t, {
          y: tf.tensor1d([1, 2, 3], "int32"),
        }),
      /expected/,
    );
  });
  disposeParams(p);
  const uncond: DiTConfig = { ...tiny, numClasses: undefined };
  const q = init(uncond, rng(0));
  tf.tidy(() => {
    const { x, t, y } = batch(uncond, 2);
    assertEquals(apply(uncond, q, x, t).shape, [2, 8, 8, 8]);
    assertThrows(() => apply(uncond, q, x, t, { y }), /labels y/);
  });
  disposeParams(q);
});

Deno.test("features() returns block outputs and stops early consistently", async () => {
  const p = toParams(tiny, awake(tiny, 3));
  const { x, t, y } = batch(tiny, 2);
  await assertNoLeaks(() => {
    const all = features(tiny, p, x, t, [0, 1, 2], { y });
    for (const f of all.values()) assertEquals(f.shape, [2, 16, 32]);
    const one = features(tiny, p, x, t, [1], { y });
    assertClose(one.get(1)!, all.get(1)!, { rtol: 0, atol: 1e-30 });
    tf.dispose([...all.values(), ...one.values()]);
  });
  assertThrows(() => features(tiny, p, x, t, [3], { y }), /outside/);
  disposeParams(p);
  tf.dispose([x, t, y]);
});

Deno.test("apply() forward and loss gradients agree between the cpu and wasm backends", async () => {
  const values = awake(tiny, 5);
  const sched = namedSchedule("linear", 1000);
  const run = async (backend: string) => {
    await tf.setBackend(backend);
    const p = toParams(tiny, values);
    const { x, t, y } = batch(tiny, 2, 6);
    const noise = normal(rng(7), x.shape) as tf.Tensor4D;
    const out = tf.tidy(() => apply(tiny, p, x, t, { y }).dataSync().slice());
    const model = (xt: tf.Tensor4D, tt: tf.Tensor1D) => apply(tiny, p, xt, tt, { y });
    const before = tf.memory().numTensors;
    const r = tf.variableGrads(() =>
      diffusionLoss(sched, model, x, t, noise, { learnSigma: true })
    );
    const g = Object.fromEntries(
      Object.entries(p).map(([k, v]) => [k, r.grads[v.name].dataSync().slice() as Float32Array]),
    );
    tf.dispose([r.value, ...Object.values(r.grads)]);
    assertEquals(tf.memory().numTensors, before, `${backend}: the gradient step leaked`);
    disposeParams(p);
    tf.dispose([x, t, y, noise]);
    return { out, g };
  };
  try {
    const ref = await run("cpu");
    const got = await run("wasm");
    assertClose(got.out, ref.out, { rtol: 1e-3, atol: 1e-4, message: "forward" });
    assertEquals(Object.keys(got.g).length, Object.keys(paramShapes(tiny)).length);
    for (const k of Object.keys(ref.g)) {
      const a = ref.g[k], b = got.g[k];
      let num = 0, den = 0;
      for (let i = 0; i < a.length; i++) [num, den] = [num + (a[i] - b[i]) ** 2, den + a[i] ** 2];
      assert(den > 0 || k.startsWith("y_embedder"), `${k}: zero gradient`);
      assert(
        Math.sqrt(num) <= 1e-3 * Math.sqrt(den) + 1e-6,
        `${k}: gradient error ${Math.sqrt(num)} vs norm ${Math.sqrt(den)}`,
      );
    }
  } finally {
    await tf.setBackend("wasm");
  }
});
