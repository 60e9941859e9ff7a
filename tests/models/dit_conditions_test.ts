// The DiT's three conditions (seed 000, Figure 5): unconditional, class, and representation
// r = f_φ(z0) from a ViT trained jointly. adaLN-Zero makes every block the identity at init
// whatever the condition; only the representation path sends gradients to φ.
import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { normal, rng, uniform } from "../../lib/random.ts";
import { disposeParams, type Params, toVariables } from "../../lib/params.ts";
import { initParam } from "../../lib/models/nn.ts";
import * as dit from "../../lib/models/dit.ts";
import * as vit from "../../lib/models/vit.ts";
import {
  carryParams,
  conditionOf,
  denoise,
  type ModelSpec,
  paramShapes,
  presetSpec,
} from "../../lib/models/mod.ts";

await initEngine({ backend: "wasm", announce: false });

const uncond = presetSpec("dit", "tiny");
const cls = presetSpec("dit", "tiny", { classes: 10, dropRate: 0.1 });
const repr = presetSpec("dit", "tiny", { encoder: "tiny" });
const SPECS: readonly ModelSpec[] = [uncond, cls, repr];
const cfgOf = (s: ModelSpec) => s.config as dit.DiTConfig;

const inputs = (s: ModelSpec, n: number, seed = 5) => {
  const c = cfgOf(s);
  const shape = [n, c.inputSize, c.inputSize, c.inChannels];
  return {
    xt: normal(rng(seed), shape) as tf.Tensor4D,
    x0: normal(rng(seed + 1), shape) as tf.Tensor4D,
    t: tf.tensor1d(Array.from({ length: n }, (_, i) => 100 + 300 * i), "int32"),
    y: tf.tensor1d(Array.from({ length: n }, (_, i) => i % 10), "int32"),
  };
};
const optsOf = (s: ModelSpec, b: ReturnType<typeof inputs>) => ({
  ...(conditionOf(s) === "class" ? { y: b.y } : {}),
  ...(conditionOf(s) === "repr" ? { x0: b.x0 } : {}),
});

// Parameters with the zero-initialised ones made small and random, so every path is live.
function awake(s: ModelSpec, seed: number): Params {
  const values: Record<string, tf.Tensor> = {};
  for (const [name, spec] of Object.entries(dit.paramSpecs(cfgOf(s)))) {
    values[name] = spec.init.kind === "zeros"
      ? uniform(rng(seed + name.length), spec.shape, -0.1, 0.1)
      : initParam(rng(seed), name, spec);
  }
  return toVariables(values);
}

Deno.test("conditionOf() and the parameters each condition adds", () => {
  assertEquals(SPECS.map(conditionOf), ["none", "class", "repr"]);
  const keys = SPECS.map((s) => Object.keys(paramShapes(s)));
  const encoderKeys = (k: string[]) => k.filter((n) => n.startsWith(dit.ENCODER_PREFIX));
  assertEquals(keys.map((k) => encoderKeys(k).length > 0), [false, false, true]);
  assertEquals(keys.map((k) => k.includes("y_embedder.embedding_table.weight")), [
    false,
    true,
    false,
  ]);
  const s = paramShapes(repr), c = cfgOf(repr), e = c.encoder!;
  assertEquals(s["r_embedder.weight"], [e.hiddenSize, c.hiddenSize]);
  assertEquals(s["r_out.weight"], [e.hiddenSize, dit.numTokens(c) * c.patchSize ** 2 * 8]);
  // The encoder is the ViT preset fitted to the DiT's input, its keys under the prefix.
  assertEquals([e.inputSize, e.inChannels, e.patchSize], [c.inputSize, c.inChannels, c.patchSize]);
  assertEquals(
    encoderKeys(keys[2]).sort(),
    Object.keys(vit.paramShapes(e, dit.ENCODER_PREFIX)).sort(),
  );
  assertThrows(
    () => dit.paramShapes({ ...c, numClasses: 10 }),
    /class- or representation-conditioned, not both/,
  );
  assertThrows(() => dit.encoderFor(c, "nope"), /Unknown ViT preset "nope"/);
  assertThrows(() => presetSpec("unet", "tiny", { encoder: "tiny" }), /no representation path/);
});

Deno.test("adaLN-Zero: at init every block is the identity and the output zero, for every condition", async () => {
  for (const s of SPECS) {
    await assertNoLeaks(() => {
      const p = dit.init(cfgOf(s), rng(1));
      tf.tidy(() => {
        const b = inputs(s, 3);
        const c = cfgOf(s);
        const blocks = Array.from({ length: c.depth + 1 }, (_, i) => i);
        const f = dit.features(c, p, b.xt, b.t, blocks, optsOf(s, b));
        for (const i of blocks.slice(1)) {
          assertClose(f.get(i)!, f.get(0)!, { atol: 0, message: `${conditionOf(s)} block ${i}` });
        }
        const out = dit.apply(c, p, b.xt, b.t, optsOf(s, b));
        assertEquals(tf.max(tf.abs(out)).dataSync()[0], 0, conditionOf(s));
      });
      disposeParams(p);
    });
  }
});

Deno.test("the representation path: r changes the output, and gradients reach φ only there", async () => {
  await assertNoLeaks(() => {
    const p = awake(repr, 2);
    const c = cfgOf(repr);
    tf.tidy(() => {
      const b = inputs(repr, 2);
      const other = normal(rng(99), b.x0.shape) as tf.Tensor4D;
      const a = dit.apply(c, p, b.xt, b.t, { x0: b.x0 });
      const d = dit.apply(c, p, b.xt, b.t, { x0: other });
      assert(tf.max(tf.abs(tf.sub(a, d))).dataSync()[0] > 1e-3, "another z0, another output");
      const target = normal(rng(7), a.shape);
      const encoder = Object.keys(p).filter((k) => k.startsWith(dit.ENCODER_PREFIX));
      const { grads } = tf.variableGrads(
        () => tf.mean(tf.squaredDifference(dit.apply(c, p, b.xt, b.t, { x0: b.x0 }), target)),
        encoder.map((k) => p[k]),
      );
      // Every encoder parameter gets a non-zero gradient (the ViT's own tests cover why each can).
      const zero = encoder.filter((k) => tf.max(tf.abs(grads[p[k].name])).dataSync()[0] === 0);
      assertEquals(zero, [], "encoder parameters without gradient");
    });
    disposeParams(p);
  });
  // At init r_out and every adaLN are zero, so the loss does not depend on r yet: the first step
  // sends φ nothing, later steps do (tests/pretrain_test.ts trains one).
  await assertNoLeaks(() => {
    const c = cfgOf(repr);
    const p = dit.init(c, rng(1));
    tf.tidy(() => {
      const b = inputs(repr, 2);
      const key = `${dit.ENCODER_PREFIX}blocks.0.attn.qkv.weight`;
      const { grads } = tf.variableGrads(
        () => tf.sum(tf.square(tf.add(dit.apply(c, p, b.xt, b.t, { x0: b.x0 }), 1))),
        [p[key]],
      );
      assertEquals(tf.max(tf.abs(grads[p[key].name])).dataSync()[0], 0);
    });
    disposeParams(p);
  });
});

Deno.test("the clean input is asked for exactly when the model is representation-conditioned", () => {
  for (const s of [uncond, repr]) {
    const p = dit.init(cfgOf(s), rng(0));
    tf.tidy(() => {
      const b = inputs(s, 2);
      const wrong = conditionOf(s) === "repr" ? {} : { x0: b.x0 };
      assertThrows(() => denoise(s, p, b.xt, b.t, wrong), /clean input must be given exactly/);
      assertThrows(() => dit.apply(cfgOf(s), p, b.xt, b.t, wrong), /x0 must be given exactly/);
    });
    disposeParams(p);
  }
  const p = dit.init(cfgOf(repr), rng(0));
  tf.tidy(() => {
    const b = inputs(repr, 2);
    const short = tf.slice(b.x0, [0], [1]) as tf.Tensor4D;
    assertThrows(() => dit.apply(cfgOf(repr), p, b.xt, b.t, { x0: short }), /x0 is \[1,/);
  });
  disposeParams(p);
});

Deno.test("carryParams() tunes a representation model into a class model: φ dropped, labels fresh", async () => {
  await assertNoLeaks(() => {
    const from = awake(repr, 3);
    const to = presetSpec("dit", "tiny", { classes: 10, dropRate: 0.1 });
    assertEquals(conditionOf(to), "class");
    const r = carryParams(from, to, rng(4));
    assertEquals(r.fresh, ["y_embedder.embedding_table.weight"]);
    assert(r.dropped.length > 0 && r.dropped.every((k) => /^(encoder\.|r_embedder|r_out)/.test(k)));
    assertEquals(r.carried.length + r.fresh.length, Object.keys(paramShapes(to)).length);
    for (const k of r.carried) assertClose(r.params[k], from[k], { atol: 0, message: k });
    // Its own copies: the source's variables can go.
    disposeParams(from);
    tf.tidy(() => {
      const b = inputs(to, 2);
      assertEquals(denoise(to, r.params, b.xt, b.t, { y: b.y }).shape, [2, 8, 8, 8]);
    });
    disposeParams(r.params);
  });
});
