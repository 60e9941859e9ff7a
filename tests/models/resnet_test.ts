import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertNoLeaks, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { normal, rng } from "../../lib/random.ts";
import { disposeParams } from "../../lib/params.ts";
import {
  apply,
  features,
  init,
  numParams,
  paramShapes,
  RESNET_CONFIGS,
  type ResNetConfig,
} from "../../lib/models/resnet.ts";

await initEngine({ backend: "wasm", announce: false });
const tiny: ResNetConfig = { ...RESNET_CONFIGS.tiny, numClasses: 3 };

// The closed form of numParams' doc comment, counted independently of paramShapes.
function closedForm(c: ResNetConfig): number {
  let n = 9 * c.inChannels * c.widths[0] + 2 * c.widths[0];
  let cin = c.widths[0];
  c.widths.forEach((w, s) => {
    for (let b = 0; b < c.blocks[s]; b++) {
      n += 9 * cin * w + 9 * w * w + 4 * w;
      if ((s > 0 && b === 0) || cin !== w) n += cin * w + 2 * w;
      cin = w;
    }
  });
  return n + cin * c.numClasses + c.numClasses;
}

Deno.test("paramShapes(): torchvision keys, counts in closed form and of the presets", () => {
  const shapes = paramShapes(tiny);
  assertEquals(shapes["conv1.weight"], [3, 3, 1, 4]);
  assertEquals(shapes["layer2.0.conv1.weight"], [3, 3, 4, 8]);
  assertEquals(shapes["layer2.0.downsample.0.weight"], [1, 1, 4, 8]);
  assertEquals(
    shapes["layer3.0.downsample.1.weight"],
    [8],
    "stride 2 projects even at equal widths",
  );
  assert(!("layer1.0.downsample.0.weight" in shapes), "layer1 keeps the identity shortcut");
  assertEquals(shapes["fc.weight"], [8, 3]);
  for (const c of [tiny, RESNET_CONFIGS["resnet-14"], RESNET_CONFIGS["resnet-20"]]) {
    assertEquals(numParams(c), closedForm(c));
  }
  assertEquals(numParams(RESNET_CONFIGS["resnet-14"]), 174_970);
  assertEquals(numParams(RESNET_CONFIGS["resnet-20"]), 272_186);
  assertThrows(() => paramShapes({ ...tiny, groups: 3 }), /width 4 does not divide by 3 groups/);
  assertThrows(() => paramShapes({ ...tiny, blocks: [1, 1] }), /3 widths for 2 stages/);
});

Deno.test("apply(): logits [N, K] and pooled features for even and odd sides, no leaks", async () => {
  const p = init(tiny, rng(0));
  await assertNoLeaks(() => {
    for (const side of [28, 7]) {
      const x = normal(rng(side), [2, side, side, 1]) as tf.Tensor4D;
      const y = apply(tiny, p, x), f = features(tiny, p, x);
      assertEquals(y.shape, [2, 3]);
      assertEquals(f.shape, [2, 8]);
      assert(Array.from(y.dataSync()).every(Number.isFinite));
      tf.dispose([x, y, f]);
    }
  });
  // GroupNorm: an image's logits do not depend on the rest of its batch.
  const x = normal(rng(1), [3, 12, 12, 1]) as tf.Tensor4D;
  const all = apply(tiny, p, x);
  const one = apply(tiny, p, tf.slice(x, [1, 0, 0, 0], [1, 12, 12, 1]) as tf.Tensor4D);
  const diff = tf.max(tf.abs(tf.sub(tf.slice(all, [1, 0], [1, 3]), one))).dataSync()[0];
  assert(diff < 1e-5, `batch dependence ${diff}`);
  assertThrows(
    () => apply(tiny, p, tf.zeros([1, 8, 8, 3]) as tf.Tensor4D),
    /expected \[N, H, W, 1\]/,
  );
  tf.dispose([x, all, one]);
  disposeParams(p);
});

Deno.test("apply(): every parameter gets a finite non-zero gradient, and a step lowers the loss", async () => {
  const p = init(tiny, rng(2));
  const x = normal(rng(3), [4, 10, 10, 1]) as tf.Tensor4D;
  const y = tf.oneHot(tf.tensor1d([0, 1, 2, 1], "int32"), 3);
  const loss = () => tf.losses.softmaxCrossEntropy(y, apply(tiny, p, x)) as tf.Scalar;
  await assertNoLeaks(() => {
    const { value, grads } = tf.variableGrads(loss);
    for (const [k, v] of Object.entries(p)) {
      const g = grads[v.name];
      assert(g, `no gradient for ${k}`);
      const norm = tf.tidy(() => tf.norm(g).dataSync()[0]);
      assert(Number.isFinite(norm) && norm > 0, `gradient of ${k} is ${norm}`);
    }
    const before = value.dataSync()[0];
    for (const v of Object.values(p)) {
      tf.tidy(() => v.assign(tf.sub(v, tf.mul(grads[v.name], 0.05))));
    }
    const after = tf.tidy(() => loss().dataSync()[0]);
    assert(after < before, `loss ${before} → ${after}`);
    tf.dispose([value, ...Object.values(grads)]);
  });
  tf.dispose([x, y]);
  disposeParams(p);
});
