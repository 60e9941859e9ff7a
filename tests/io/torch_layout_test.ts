import * as tf from "@tensorflow/tfjs";
import { assertClose, assertEquals, assertNoLeaks, assertRejects } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import * as unet from "../../lib/models/unet.ts";
import { disposeParams } from "../../lib/params.ts";
import { rng } from "../../lib/random.ts";
import { type TensorIn, writeSafetensors } from "../../lib/io/safetensors.ts";
import { saveCheckpoint } from "../../lib/io/checkpoint.ts";
import { loadWeights, torchShape, toTorchLayout } from "../../lib/io/torch_layout.ts";

await initEngine({ backend: "wasm", announce: false });
// A class-conditional tiny U-Net with random (not zero-init) weights, so outputs are informative.
const cfg: unet.UNetConfig = { ...unet.UNET_CONFIGS.tiny, numClasses: 3, learnSigma: true };
const shapes = unet.paramShapes(cfg);

function randomParams() {
  const p = unet.init(cfg, rng(0));
  for (const v of Object.values(p)) {
    tf.tidy(() => v.assign(tf.randomNormal(v.shape, 0, 0.1, "float32", 7)));
  }
  return p;
}

async function writeTorchFile(
  path: string,
  params: Record<string, tf.Tensor>,
  drop: string[] = [],
  extra: string[] = [],
  buffers: Record<string, TensorIn> = {},
) {
  const torch = toTorchLayout(params, unet.TORCH_SAME_LAYOUT, unet.isTorchConv1d);
  const entries: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  for (const [k, t] of Object.entries(torch)) {
    if (!drop.includes(k)) {
      entries[k] = { dtype: "F32", shape: t.shape, data: t.dataSync() as Float32Array };
    }
  }
  for (const k of extra) entries[k] = { dtype: "F32", shape: [1], data: new Float32Array(1) };
  tf.dispose(Object.values(torch));
  await writeSafetensors(path, { ...entries, ...buffers });
}

Deno.test("torchShape() gives PyTorch's conv and linear layouts", () => {
  assertEquals(torchShape([3, 3, 16, 32]), [32, 16, 3, 3]);
  assertEquals(torchShape([64, 128]), [128, 64]);
  assertEquals(torchShape([7]), [7]);
});

Deno.test("loadWeights() loads a PyTorch-layout state_dict and the model computes the same output", async () => {
  const dir = await Deno.makeTempDir();
  const params = randomParams();
  try {
    await writeTorchFile(`${dir}/torch.safetensors`, params);
    // The attention qkv is stored as conv1d [3C, C, 1], as in guided-diffusion.
    const loaded = await loadWeights(`${dir}/torch.safetensors`, shapes, {
      sameLayout: unet.TORCH_SAME_LAYOUT,
    });
    await assertNoLeaks(() => {
      tf.tidy(() => {
        const x = tf.randomNormal([2, 16, 16, 1], 0, 1, "float32", 1) as tf.Tensor4D;
        const t = tf.tensor1d([5, 500], "int32");
        const y = tf.tensor1d([0, 2], "int32");
        assertClose(
          unet.apply(cfg, loaded, x, t, { y }).eps!,
          unet.apply(cfg, params, x, t, { y }).eps!,
          { rtol: 1e-5, atol: 1e-6 },
        );
      });
    });
    disposeParams(loaded);
  } finally {
    disposeParams(params);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadWeights() takes a project checkpoint's EMA weights as they are", async () => {
  const dir = await Deno.makeTempDir();
  const params = randomParams();
  try {
    await saveCheckpoint(`${dir}/ck.safetensors`, { params, ema: params, step: 3 });
    const loaded = await loadWeights(`${dir}/ck.safetensors`, shapes);
    assertClose(loaded["out.2.weight"], params["out.2.weight"]);
    disposeParams(loaded);
  } finally {
    disposeParams(params);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadWeights() reports every missing and unexpected key in one error", async () => {
  const dir = await Deno.makeTempDir();
  const params = randomParams();
  try {
    await writeTorchFile(`${dir}/bad.safetensors`, params, ["out.2.bias", "time_embed.0.weight"], [
      "input_blocks.9.0.weight",
    ]);
    await assertRejects(
      () => loadWeights(`${dir}/bad.safetensors`, shapes, { sameLayout: unet.TORCH_SAME_LAYOUT }),
      /do not match the model: 2 missing \(time_embed\.0\.weight, out\.2\.bias\); 1 unexpected \(input_blocks\.9\.0\.weight\)/,
    );
  } finally {
    disposeParams(params);
    await Deno.remove(dir, { recursive: true });
  }
});

// A fixed buffer as DiT stores pos_embed: [1, T, D] in the state_dict, computed by the model.
const posLike = Float32Array.from({ length: 2 * 3 }, (_, i) => Math.sin(i));
const buffer = (data: Float32Array, shape = [1, 2, 3]): TensorIn => ({ dtype: "F32", shape, data });

Deno.test("loadWeights() checks a fixed buffer against its expected values and drops it", async () => {
  const dir = await Deno.makeTempDir();
  const params = randomParams();
  try {
    const near = posLike.map((v) => v + 5e-6); // within the default tolerance 1e-5
    await writeTorchFile(`${dir}/pos.safetensors`, params, [], [], { pos_embed: buffer(near) });
    const opts = { sameLayout: unet.TORCH_SAME_LAYOUT, fixed: { pos_embed: posLike } };
    await assertNoLeaks(async () => {
      const loaded = await loadWeights(`${dir}/pos.safetensors`, shapes, opts);
      assertEquals("pos_embed" in loaded, false);
      assertClose(loaded["out.2.bias"], params["out.2.bias"]);
      disposeParams(loaded);
    });
    // A file without the buffer loads too.
    await writeTorchFile(`${dir}/plain.safetensors`, params);
    disposeParams(await loadWeights(`${dir}/plain.safetensors`, shapes, opts));
  } finally {
    disposeParams(params);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadWeights() rejects a fixed buffer that differs, naming it and the difference", async () => {
  const dir = await Deno.makeTempDir();
  const params = randomParams();
  const path = `${dir}/pos.safetensors`;
  const load = () =>
    loadWeights(path, shapes, {
      sameLayout: unet.TORCH_SAME_LAYOUT,
      fixed: { pos_embed: posLike },
    });
  try {
    const off = posLike.map((v, i) => (i === 4 ? v + 1e-3 : v));
    await writeTorchFile(path, params, [], [], { pos_embed: buffer(off) });
    await assertNoLeaks(() =>
      assertRejects(
        load,
        /Fixed buffers in ".*pos\.safetensors" are wrong: "pos_embed" differs from its expected value by 0\.00\d+ \(max abs, tolerance 0\.00001\)/,
      )
    );
    await writeTorchFile(path, params, [], [], {
      pos_embed: buffer(new Float32Array(8), [1, 4, 2]),
    });
    await assertRejects(load, /"pos_embed" has 8 values \[1, 4, 2\], expected 6/);
    // Without `fixed`, the buffer is an unexpected key.
    await assertRejects(
      () => loadWeights(path, shapes, { sameLayout: unet.TORCH_SAME_LAYOUT }),
      /1 unexpected \(pos_embed\)/,
    );
  } finally {
    disposeParams(params);
    await Deno.remove(dir, { recursive: true });
  }
});
