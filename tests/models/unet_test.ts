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
  blockTable,
  init,
  numParams,
  outputChannels,
  paramShapes,
  paramSpecs,
  UNET_CONFIGS,
  type UNetConfig,
} from "../../lib/models/unet.ts";

await initEngine({ backend: "wasm", announce: false });
const tiny: UNetConfig = UNET_CONFIGS.tiny;

// Parameters whose zero-init entries are replaced by small random values, so that every
// parameter influences the output (and receives a gradient).
function awake(c: UNetConfig, seed: number): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = {};
  for (const [name, spec] of Object.entries(paramSpecs(c))) {
    const t = spec.init.kind === "zeros"
      ? uniform(rng(seed + 1), spec.shape, -0.05, 0.05)
      : initParam(rng(seed), name, spec);
    out[name] = t.dataSync() as Float32Array;
    t.dispose();
  }
  return out;
}

function toParams(c: UNetConfig, values: Record<string, Float32Array>): Params {
  const shapes = paramShapes(c);
  return toVariables(
    Object.fromEntries(Object.entries(values).map(([k, v]) => [k, tf.tensor(v, [...shapes[k]])])),
  );
}

const batch = (c: UNetConfig, n: number, seed = 3) => ({
  x: normal(rng(seed), [n, c.imageSize, c.imageSize, c.inChannels]) as tf.Tensor4D,
  t: tf.tensor1d(Array.from({ length: n }, (_, i) => (i * 397) % 1000), "int32"),
});

Deno.test("paramShapes() counts adm256 at ≈552.8 M without allocating", () => {
  const before = tf.memory().numTensors;
  const shapes = paramShapes(UNET_CONFIGS.adm256);
  assertEquals(tf.memory().numTensors, before);
  assertEquals(numParams(UNET_CONFIGS.adm256), 552_814_086);
  assertEquals(shapes["time_embed.0.weight"], [256, 1024]);
  assertEquals(shapes["input_blocks.0.0.weight"], [3, 3, 3, 256]);
  assertEquals(shapes["input_blocks.1.0.in_layers.0.weight"], [256]);
  assertEquals(shapes["input_blocks.1.0.emb_layers.1.weight"], [1024, 512]); // scale-shift: 2·C
  assertEquals(shapes["input_blocks.7.0.skip_connection.weight"], [1, 1, 256, 512]);
  assertEquals(shapes["middle_block.1.qkv.weight"], [1024, 3072]);
  assertEquals(shapes["middle_block.1.proj_out.weight"], [1024, 1024]);
  assertEquals(shapes["output_blocks.2.2.in_layers.2.weight"], [3, 3, 1024, 1024]); // the up ResBlock
  assertEquals(shapes["out.2.weight"], [3, 3, 256, 6]); // learnSigma doubles the output
  assertEquals(outputChannels(UNET_CONFIGS.adm256), 6);
  assert(!("input_blocks.3.0.op.weight" in shapes), "resblock_updown has no resample conv");
});

Deno.test("blockTable() numbers adm256 as facts.md §2", () => {
  const table = blockTable(UNET_CONFIGS.adm256);
  assertEquals(table.length, 37);
  const res = [
    256,
    256,
    256,
    128,
    128,
    128,
    64,
    64,
    64,
    32,
    32,
    32,
    16,
    16,
    16,
    8,
    8,
    8,
    8,
    8,
    8,
    16,
    16,
    16,
    32,
    32,
    32,
    64,
    64,
    64,
    128,
    128,
    128,
    256,
    256,
    256,
    256,
  ];
  const ch = (b: number) => (b <= 7 ? 256 : b <= 13 ? 512 : b <= 25 ? 1024 : b <= 31 ? 512 : 256);
  assertEquals(table.map((r) => r.resolution), res);
  assertEquals(table.map((r) => r.channels), res.map((_, i) => ch(i + 1)));
  assertEquals(table[18], {
    b: 19,
    module: "middle_block",
    layers: "RB+A+RB",
    resolution: 8,
    channels: 1024,
  });
  assertEquals(table[23].module, "output_blocks.4");
  assertEquals(table.map((r) => r.layers).filter((l) => l.includes("A")).length, 6 + 1 + 9);
  assertEquals(table[21].layers, "RB+A+up");
  assertEquals(table[3].layers, "RB-dn");
});

Deno.test("apply() output is exactly zero at init, has the right shapes and leaks nothing", async () => {
  for (const c of [UNET_CONFIGS.tiny, UNET_CONFIGS.small] as UNetConfig[]) {
    const p = init(c, rng(0));
    const { x, t } = batch(c, 2);
    await assertNoLeaks(() => {
      const { eps, taps } = apply(c, p, x, t);
      assertEquals(eps!.shape, [2, c.imageSize, c.imageSize, outputChannels(c)]);
      assertEquals(taps.size, 0);
      assertEquals(tf.tidy(() => tf.max(tf.abs(eps!)).dataSync()[0]), 0);
      eps!.dispose();
    });
    disposeParams(p);
    tf.dispose([x, t]);
  }
});

Deno.test("apply() taps match blockTable and early stopping matches the full pass", async () => {
  const p = toParams(tiny, awake(tiny, 1));
  const { x, t } = batch(tiny, 2);
  const table = blockTable(tiny);
  await assertNoLeaks(() => {
    const full = apply(tiny, p, x, t, { taps: table.map((r) => r.b) });
    for (const r of table) {
      assertEquals(full.taps.get(r.b)!.shape, [2, r.resolution, r.resolution, r.channels]);
    }
    for (const b of [1, 3, 5, 7]) {
      const early = apply(tiny, p, x, t, { taps: [b], needEps: false });
      assert(early.eps === undefined);
      assertClose(early.taps.get(b)!, full.taps.get(b)!, {
        rtol: 1e-6,
        atol: 1e-6,
        message: `b${b}`,
      });
      tf.dispose([...early.taps.values()]);
    }
    tf.dispose([full.eps!, ...full.taps.values()]);
  });
  assertThrows(() => apply(tiny, p, x, t, { taps: [10] }), /outside/);
  assertThrows(() => apply(tiny, p, x, t, { needEps: false }), /at least one tap/);
  assertThrows(() => apply(tiny, p, tf.zeros([2, 8, 8, 1]) as tf.Tensor4D, t), /expected/);
  disposeParams(p);
  tf.dispose([x, t]);
});

Deno.test("apply() runs every architectural variant with reference key names", () => {
  const variants: [string, UNetConfig, string[]][] = [
    ["conv resampling", { ...tiny, resblockUpdown: false }, [
      "input_blocks.2.0.op.weight",
      "output_blocks.1.2.conv.weight",
    ]],
    ["additive emb", { ...tiny, useScaleShiftNorm: false }, []],
    ["new order, head channels", { ...tiny, useNewAttentionOrder: true, numHeadChannels: 16 }, []],
    ["class labels", { ...tiny, numClasses: 10 }, ["label_emb.weight"]],
    ["learned sigma", { ...tiny, learnSigma: true }, []],
  ];
  for (const [name, c, keys] of variants) {
    const shapes = paramShapes(c);
    for (const k of keys) assert(k in shapes, `${name}: missing ${k}`);
    const p = toParams(c, awake(c, 2));
    tf.tidy(() => {
      const { x, t } = batch(c, 2);
      const y = c.numClasses ? tf.tensor1d([1, 7], "int32") : undefined;
      const out = apply(c, p, x, t, { y }).eps!;
      assertEquals(out.shape, [2, 16, 16, outputChannels(c)], name);
      assert(tf.all(tf.isFinite(out)).dataSync()[0] === 1, `${name}: non-finite output`);
      if (y) {
        const other = apply(c, p, x, t, { y: tf.tensor1d([2, 7], "int32") }).eps!;
        const diff = tf.sum(tf.abs(tf.sub(out, other)), [1, 2, 3]).dataSync();
        assert(diff[0] > 0 && diff[1] === 0, `labels change only their own sample: ${diff}`);
      }
    });
    disposeParams(p);
  }
});

Deno.test("apply() draws dropout only from its key", () => {
  const c = { ...tiny, dropout: 0.5 };
  const p = toParams(c, awake(c, 4));
  tf.tidy(() => {
    const { x, t } = batch(c, 1);
    const run = (seed?: number) =>
      apply(c, p, x, t, { dropoutRng: seed === undefined ? undefined : rng(seed) }).eps!;
    // No key is eval: the output of the same weights without dropout.
    const evalOut = apply({ ...c, dropout: 0 }, p, x, t).eps!;
    assertClose(run(), evalOut, { rtol: 0, atol: 1e-30 });
    assert(tf.max(tf.abs(tf.sub(run(1), evalOut))).dataSync()[0] > 0, "a key draws masks");
    assertClose(run(1), run(1), { rtol: 0, atol: 1e-30 });
    assert(tf.max(tf.abs(tf.sub(run(1), run(2)))).dataSync()[0] > 0);
  });
  disposeParams(p);
});

Deno.test("apply() forward and loss gradients agree between the cpu and wasm backends", async () => {
  // 8 px and one width keep the cpu side (its Conv2DBackpropFilter is slow) to a few seconds.
  const c: UNetConfig = {
    ...tiny,
    imageSize: 8,
    attentionResolutions: [4],
    channelMult: [1, 1],
    learnSigma: true,
  };
  const values = awake(c, 5);
  const sched = namedSchedule("linear", 1000);
  const run = async (backend: string, grads: boolean) => {
    await tf.setBackend(backend);
    const p = toParams(c, values);
    const { x, t } = batch(c, 2, 6);
    const noise = normal(rng(7), x.shape) as tf.Tensor4D;
    const out = tf.tidy(() => apply(c, p, x, t).eps!.dataSync().slice());
    let g: Record<string, Float32Array> = {};
    if (grads) {
      const model = (xt: tf.Tensor4D, tt: tf.Tensor1D) => apply(c, p, xt, tt).eps!;
      const r = tf.variableGrads(() =>
        diffusionLoss(sched, model, x, t, noise, { learnSigma: true })
      );
      g = Object.fromEntries(
        Object.entries(p).map(([k, v]) => [k, r.grads[v.name].dataSync().slice() as Float32Array]),
      );
      tf.dispose([r.value, ...Object.values(r.grads)]);
    }
    disposeParams(p);
    tf.dispose([x, t, noise]);
    return { out, g };
  };
  const wasmGrads = tf.getKernel("Conv2DBackpropFilter", "wasm") !== undefined;
  try {
    const ref = await run("cpu", wasmGrads);
    const got = await run("wasm", wasmGrads);
    assertClose(got.out, ref.out, { rtol: 1e-3, atol: 1e-4, message: "forward" });
    for (const k of Object.keys(ref.g)) {
      const a = ref.g[k], b = got.g[k];
      let num = 0, den = 0;
      for (let i = 0; i < a.length; i++) {
        num += (a[i] - b[i]) ** 2;
        den += a[i] ** 2;
      }
      // Conv biases right before a GroupNorm of one-channel groups have a zero true gradient:
      // the absolute term absorbs their rounding noise.
      assert(
        Math.sqrt(num) <= 1e-3 * Math.sqrt(den) + 1e-5,
        `${k}: gradient error ${Math.sqrt(num)} vs norm ${Math.sqrt(den)}`,
      );
    }
    if (wasmGrads) {
      assert(
        Object.values(ref.g).some((g) => g.some((v) => Math.abs(v) > 1e-3)),
        "all gradients vanish",
      );
    }
    if (!wasmGrads) {
      console.error("unet_test: wasm lacks Conv2DBackpropFilter; compared the forward pass only");
    }
  } finally {
    await tf.setBackend("wasm");
  }
});
