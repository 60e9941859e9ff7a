// The denoiser registry: one label-dropout convention and one features call for every model.
import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import {
  blockTable,
  conditioning,
  denoise,
  features,
  initParams,
  inputShape,
  type ModelSpec,
  paramShapes,
  presetSpec,
  specFromMeta,
} from "../../lib/models/mod.ts";
import { disposeParams, type Params } from "../../lib/params.ts";
import { normal, rng, uniform } from "../../lib/random.ts";
import * as unet from "../../lib/models/unet.ts";

await initEngine({ backend: "wasm", announce: false });

// Weights away from their zero init, so that labels and every block change the output.
function awake(spec: ModelSpec, seed: number): Params {
  const p = initParams(spec, rng(seed));
  for (const [k, v] of Object.entries(p)) {
    tf.tidy(() => v.assign(uniform(rng(seed + k.length), v.shape, -0.1, 0.1)));
  }
  return p;
}

const specs = (dropRate: number): [string, ModelSpec][] => [
  ["unet", presetSpec("unet", "tiny", { classes: 4, dropRate })],
  ["dit", presetSpec("dit", "tiny", { classes: 4, dropRate })],
];

for (const [name, spec] of specs(0.5)) {
  Deno.test(`denoise() drops ${name} labels to the null label K, keyed, in training only`, () => {
    const p = awake(spec, 1);
    const n = 8;
    const x = normal(rng(2), [n, ...inputShape(spec)]) as tf.Tensor4D;
    const t = tf.tensor1d([1, 50, 100, 200, 400, 600, 800, 999], "int32");
    const y = tf.tensor1d([0, 1, 2, 3, 0, 1, 2, 3], "int32");
    const nul = tf.fill([n], 4, "int32") as tf.Tensor1D;
    const run = (s: ModelSpec, labels: tf.Tensor1D, key?: ReturnType<typeof rng>) =>
      tf.tidy(() => denoise(s, p, x, t, { y: labels, key }).arraySync() as number[][][][]);
    const asGiven = run(spec, y), asNull = run(spec, nul);
    // Rate ~1 with a key: every sample gets the null label's output.
    const dropAll = { ...spec, config: dropRateOf(spec, 0.999999) } as ModelSpec;
    assertClose(run(dropAll, y, rng(7)).flat(3), asNull.flat(3), { rtol: 0, atol: 1e-6 });
    // No key (eval): labels as given, whatever the rate.
    assertClose(run(spec, y).flat(3), asGiven.flat(3), { rtol: 0, atol: 1e-30 });
    // Rate 0.5 with a key: each sample is either its own label's output or the null one's,
    // both kinds occur, the same key gives the same mask and another key another.
    const mask = (key: number) =>
      run(spec, y, rng(key)).map((s, i) => {
        const d = (a: number[][][]) =>
          Math.max(...s.flat(2).map((v, j) => Math.abs(v - a.flat(2)[j])));
        const own = d(asGiven[i]), none = d(asNull[i]);
        assert(Math.min(own, none) < 1e-5, `${name}: sample ${i} is neither`);
        return own < none ? 0 : 1;
      });
    const m1 = mask(11);
    assertEquals(mask(11), m1);
    assert(m1.includes(0) && m1.includes(1), `${name}: mask ${m1}`);
    assert([12, 13, 14].some((k) => mask(k).join() !== m1.join()), `${name}: keys give one mask`);
    assertThrows(() => denoise(spec, p, x, t), /labels must be given/);
    disposeParams(p);
    tf.dispose([x, t, y, nul]);
  });
}

function dropRateOf(spec: ModelSpec, rate: number) {
  return spec.kind === "unet"
    ? { ...spec.config, classDropout: rate }
    : { ...spec.config, classDropoutProb: rate };
}

Deno.test("features() of both models: the blocks asked for, on a spatial grid, one pass", () => {
  for (const spec of [presetSpec("unet", "tiny"), presetSpec("dit", "tiny")]) {
    const p = awake(spec, 3);
    const x = normal(rng(4), [2, ...inputShape(spec)]) as tf.Tensor4D;
    const t = tf.tensor1d([10, 500], "int32");
    const table = blockTable(spec);
    const bs = [1, table.length];
    const before = tf.memory().numTensors;
    const f = features(spec, p, x, t, bs);
    assertEquals([...f.keys()], bs);
    for (const b of bs) {
      const info = table[b - 1];
      assertEquals(f.get(b)!.shape, [2, info.resolution, info.resolution, info.channels]);
    }
    tf.dispose([...f.values()]);
    assertEquals(tf.memory().numTensors, before, `${spec.kind}: features leak`);
    disposeParams(p);
    tf.dispose([x, t]);
  }
});

Deno.test("the U-Net's features() are its apply() taps", () => {
  const spec = presetSpec("unet", "tiny");
  const p = awake(spec, 5);
  tf.tidy(() => {
    const x = normal(rng(6), [2, 16, 16, 1]) as tf.Tensor4D;
    const t = tf.tensor1d([3, 700], "int32");
    const f = features(spec, p, x, t, [2, 4]);
    const taps = unet.apply(spec.config as unet.UNetConfig, p, x, t, { taps: [2, 4] }).taps;
    for (const b of [2, 4]) assertClose(f.get(b)!, taps.get(b)!, { rtol: 0, atol: 1e-30 });
  });
  disposeParams(p);
});

Deno.test("specFromMeta() reads the registry's specs and the U-Net checkpoints written before it", () => {
  const spec = presetSpec("dit", "small", { classes: 10, dropRate: 0.1 });
  assertEquals(specFromMeta({ model: spec }, "x"), spec);
  const legacy = specFromMeta({ model: unet.UNET_CONFIGS.small, modelName: "small" }, "x");
  assertEquals(legacy.kind, "unet");
  assertEquals(paramShapes(legacy), unet.paramShapes(unet.UNET_CONFIGS.small));
  assertThrows(() => specFromMeta({}, 'Checkpoint "c"'), /Checkpoint "c" records no model/);
  assertThrows(
    () => specFromMeta({ model: { kind: "gan", config: {} } }, "x"),
    /unknown model kind/,
  );
});

Deno.test("presetSpec() conditions a preset; the paper DiT sizes become unconditional without labels", () => {
  const c = conditioning(presetSpec("unet", "small", { classes: 10, dropRate: 0.1 }));
  assertEquals(c, { classes: 10, dropRate: 0.1 });
  assertEquals(conditioning(presetSpec("dit", "DiT-B/2")), undefined);
  assertEquals(
    paramShapes(presetSpec("unet", "tiny", { classes: 3, dropRate: 0.2 }))["label_emb.weight"],
    [4, 128],
  );
  assertThrows(() => presetSpec("unet", "huge"), /Unknown unet preset "huge"/);
});
