// The fine-tuning classifier: the parameters a pass to block b reaches (and no others) train, the
// frozen mode moves the head alone, its logits are the frozen probe's path, and nothing leaks.
import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { makeDataset } from "../lib/data/dataset.ts";
import { qSample } from "../lib/diffusion/gaussian.ts";
import { namedSchedule } from "../lib/diffusion/schedule.ts";
import { fitClassifier } from "../lib/downstream.ts";
import type { FrozenModel } from "../lib/features.ts";
import { featureClassifier } from "../lib/finetune.ts";
import { applyHead } from "../lib/models/heads.ts";
import { blockTable, features, initParams, inputShape, presetSpec } from "../lib/models/mod.ts";
import { adaptiveAvgPool } from "../lib/models/nn.ts";
import { disposeParams } from "../lib/params.ts";
import { fold, normal, rng, uniformArray } from "../lib/random.ts";

await initEngine({ backend: "wasm", announce: false });
const spec = presetSpec("unet", "tiny");
const fresh = (): FrozenModel => ({
  spec,
  params: initParams(spec, rng(5)),
  schedule: namedSchedule("linear", 1000),
});
const [side, , channels] = inputShape(spec);
const cell = { t: 50, block: 2, pool: 2 };

Deno.test("featureClassifier(): trains what the pass to block b reaches, and its logits are the probe's path", async () => {
  const model = fresh();
  await assertNoLeaks(() => {
    const clf = featureClassifier(model, cell, 3, rng(1), rng(2));
    // The encoder's first blocks are reached; the output layer and the deepest blocks are not.
    assert(clf.trainable.some((k) => k.startsWith("input_blocks.0.")), clf.trainable.join());
    assert(!clf.trainable.some((k) => k.startsWith("out.")), "out.* is after block 2");
    assert(!clf.trainable.some((k) => k.startsWith("output_blocks.")), "no decoder block");
    assertEquals(clf.head, ["fcs.0.weight", "fcs.0.bias"]);
    assert(clf.trainable.length < Object.keys(clf.params).length);
    // Call 0's logits: ε from fold(noiseKey, 0), features at (t, b), pool, linear head.
    const x = tf.tidy(() => tf.tanh(normal(rng(3), [2, side, side, channels])) as tf.Tensor4D);
    const got = clf.apply(clf.params, x);
    const want = tf.tidy(() => {
      const xt = qSample(
        model.schedule,
        x,
        cell.t,
        normal(fold(rng(2), 0), x.shape) as tf.Tensor4D,
      );
      const maps = features(spec, model.params, xt, tf.fill([2], cell.t, "int32") as tf.Tensor1D, [
        cell.block,
      ]);
      return applyHead(
        { kind: "linear" },
        clf.params,
        adaptiveAvgPool(maps.get(cell.block)!, cell.pool),
      );
    });
    assertEquals(got.shape, [2, 3]);
    assertClose(got, Array.from(want.dataSync()), { rtol: 1e-5, atol: 1e-6 });
    tf.dispose([x, got, want]);
    for (const k of clf.head) clf.params[k].dispose();
  });
  assert(blockTable(spec).length > cell.block);
  disposeParams(model.params);
});

Deno.test("fitClassifier() with trainable = the head leaves the backbone as it was; all trainable moves it", async () => {
  const n = 12, per = side * side * channels;
  const ds = makeDataset({
    name: "toy",
    images: Float32Array.from(uniformArray(rng(7), n * per), (u) => 2 * u - 1),
    labels: Int32Array.from({ length: n }, (_, i) => i % 3),
    shape: [side, side, channels],
    classes: ["a", "b", "c"],
  });
  const probe = "input_blocks.0.0.weight";
  for (const frozen of [true, false]) {
    const model = fresh();
    const clf = featureClassifier(model, cell, 3, rng(1), rng(2));
    const before = Array.from(clf.params[probe].dataSync());
    const head0 = Array.from(clf.params["fcs.0.weight"].dataSync());
    await fitClassifier(clf, ds, ds, {
      epochs: 1,
      lr: 1e-2,
      batch: 4,
      key: rng(3),
      trainable: frozen ? clf.head : clf.trainable,
      lrScale: (k) => (clf.head.includes(k) ? 1 : 0.5),
    });
    const moved = Array.from(clf.params[probe].dataSync()).some((v, i) => v !== before[i]);
    assertEquals(
      moved,
      !frozen,
      frozen ? "the frozen backbone moved" : "the backbone did not train",
    );
    assert(Array.from(clf.params["fcs.0.weight"].dataSync()).some((v, i) => v !== head0[i]));
    disposeParams(clf.params);
  }
});
