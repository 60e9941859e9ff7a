import * as tf from "@tensorflow/tfjs";
import {
  assert,
  assertClose,
  assertEquals,
  assertNoLeaks,
  assertRejects,
  assertThrows,
} from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { fold, normal, rng } from "../../lib/random.ts";
import { disposeParams, type Params } from "../../lib/params.ts";
import { adam } from "../../lib/optim.ts";
import { initTrainState, trainStep } from "../../lib/train.ts";
import { toTorchLayout } from "../../lib/io/torch_layout.ts";
import { saveCheckpoint } from "../../lib/io/checkpoint.ts";
import { type TensorIn, writeSafetensors } from "../../lib/io/safetensors.ts";
import {
  decode,
  downsample,
  downsamplingFactor,
  encode,
  init,
  klToPrior,
  latentScale,
  latentShape,
  numParams,
  paramShapes,
  reconstruct,
  referenceKey,
  sampleLatent,
  SD_VAE_SCALE,
  VAE_CONFIGS,
  type VAEConfig,
  vaeLoss,
} from "../../lib/models/vae.ts";
import { fromLatent, loadReferenceVae, loadVae, saveVae, toLatent } from "../../lib/latent.ts";

await initEngine({ backend: "wasm", announce: false });
const tiny: VAEConfig = VAE_CONFIGS.tiny;
// The tiny size with the mid-block attention, so that every kind of module is present.
const tinyAttn: VAEConfig = { ...tiny, midAttention: true };

const images = (c: VAEConfig, n: number, seed = 1) =>
  tf.tidy(() =>
    tf.clipByValue(normal(rng(seed), [n, c.resolution, c.resolution, c.inChannels]), -1, 1)
  ) as tf.Tensor4D;

Deno.test("paramShapes() gives sd-vae's 83,653,863 parameters and diffusers' names, allocating nothing", () => {
  const before = tf.memory().numTensors;
  const c = VAE_CONFIGS["sd-vae"];
  assertEquals(numParams(c), 83_653_863);
  const s = paramShapes(c);
  assertEquals(tf.memory().numTensors, before);
  assertEquals(Object.keys(s).length, 248);
  assertEquals(downsamplingFactor(c), 8);
  assertEquals(latentShape(c), [32, 32, 4]);
  assertEquals(s["encoder.conv_in.weight"], [3, 3, 3, 128]); // conv [kh, kw, in, out]
  assertEquals(s["encoder.down_blocks.0.resnets.0.norm1.weight"], [128]);
  assertEquals(s["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"], [1, 1, 128, 256]);
  assertEquals(s["encoder.down_blocks.1.downsamplers.0.conv.weight"], [3, 3, 256, 256]);
  assertEquals(s["encoder.down_blocks.2.downsamplers.0.conv.weight"], [3, 3, 512, 512]);
  assert(!("encoder.down_blocks.3.downsamplers.0.conv.weight" in s), "no downsampler at the end");
  assertEquals(s["encoder.mid_block.attentions.0.to_q.weight"], [512, 512]); // linear [in, out]
  assertEquals(s["encoder.mid_block.attentions.0.to_out.0.bias"], [512]);
  assertEquals(s["encoder.conv_out.weight"], [3, 3, 512, 8]); // mean and logvar
  assertEquals(s["quant_conv.weight"], [1, 1, 8, 8]);
  assertEquals(s["post_quant_conv.weight"], [1, 1, 4, 4]);
  assertEquals(s["decoder.conv_in.weight"], [3, 3, 4, 512]);
  assertEquals(s["decoder.up_blocks.0.resnets.2.conv2.weight"], [3, 3, 512, 512]); // 3 per level
  assertEquals(s["decoder.up_blocks.0.upsamplers.0.conv.weight"], [3, 3, 512, 512]);
  assertEquals(s["decoder.up_blocks.2.resnets.0.conv_shortcut.weight"], [1, 1, 512, 256]);
  assertEquals(s["decoder.up_blocks.3.resnets.0.conv_shortcut.weight"], [1, 1, 256, 128]);
  assert(!("decoder.up_blocks.3.upsamplers.0.conv.weight" in s), "no upsampler at the end");
  assertEquals(s["decoder.conv_out.weight"], [3, 3, 128, 3]);
  assertEquals(SD_VAE_SCALE, 0.18215);
});

Deno.test("paramShapes() rejects configs that do not divide", () => {
  assertThrows(
    () => paramShapes({ ...tiny, resolution: 6, blockOutChannels: [8, 16, 16] }),
    /f = 4/,
  );
  assertThrows(() => paramShapes({ ...tiny, normGroups: 3 }), /3 groups/);
  assertThrows(() => paramShapes({ ...tiny, blockOutChannels: [] }), /blockOutChannels/);
  assertEquals(Object.keys(paramShapes(tiny)).some((k) => k.includes("attentions")), false);
});

Deno.test("encode() and decode() map [N, S, S, C] to [N, S/f, S/f, L] and back", async () => {
  for (
    const [name, c] of [["tiny", tiny], ["tiny+attention", tinyAttn], [
      "small",
      VAE_CONFIGS.small,
    ]] as const
  ) {
    const p = init(c, rng(0));
    const x = images(c, 2);
    await assertNoLeaks(() => {
      const { mean, logvar } = encode(c, p, x);
      const [s, , l] = latentShape(c);
      assertEquals(mean.shape, [2, s, s, l], name);
      assertEquals(logvar.shape, [2, s, s, l], name);
      const y = decode(c, p, mean);
      assertEquals(y.shape, x.shape, name);
      tf.dispose([mean, logvar, y]);
    }, name);
    assertThrows(() => decode(c, p, x), /latent is/);
    x.dispose();
    disposeParams(p);
  }
  assertEquals(latentShape(VAE_CONFIGS.small), [7, 7, 4]);
});

Deno.test("downsample() pads one row and column at the bottom/right, as diffusers' Downsample2D", () => {
  // x[r][c] = 4r + c + 1 on a 4×4 image; one channel.
  const x = tf.tensor4d(Array.from({ length: 16 }, (_, i) => i + 1), [1, 4, 4, 1]);
  const b = tf.zeros([1]);
  // A kernel that picks its top-left tap: output (i, j) reads x[2i][2j] (symmetric padding 1
  // would read x[2i − 1][2j − 1] instead: 0, 0, 0, 6).
  const corner = tf.tensor4d([1, 0, 0, 0, 0, 0, 0, 0, 0], [3, 3, 1, 1]);
  assertEquals(Array.from(downsample(x, corner, b).dataSync()), [1, 3, 9, 11]);
  // Sums over rows 2i..2i+2 and columns 2j..2j+2, the padding (row and column 4) adding zeros.
  const ones = tf.ones([3, 3, 1, 1]);
  const y = downsample(x, ones, b);
  assertEquals(y.shape, [1, 2, 2, 1]);
  assertEquals(Array.from(y.dataSync()), [54, 45, 72, 54]);
  // 28 → 14 → 7 for the small preset.
  const z = downsample(tf.zeros([1, 7, 7, 1]) as tf.Tensor4D, ones, b);
  assertEquals(z.shape, [1, 3, 3, 1]); // odd sides floor, as in PyTorch
  tf.dispose([x, b, corner, ones, y, z]);
});

Deno.test("klToPrior() is the closed form, 0 exactly at the prior and positive elsewhere", () => {
  tf.tidy(() => {
    const zero = tf.zeros([2, 2, 2, 4]);
    assertEquals(klToPrior(zero, zero).dataSync()[0], 0);
    const mu = [0.5, -1, 0, 2], lv = [0, 0.3, -2, 1.5];
    const closed = mu.map((m, i) => 0.5 * (m * m + Math.exp(lv[i]) - 1 - lv[i]));
    const kl = klToPrior(tf.tensor(mu), tf.tensor(lv)).dataSync()[0];
    assertClose([kl], [closed.reduce((a, b) => a + b, 0) / 4], { rtol: 1e-6 });
    // Each term is ≥ 0, and only μ = 0, logvar = 0 gives 0.
    for (const [m, v] of [[1e-3, 0], [0, 1e-3], [0, -1e-3], [0, -30], [0, 20]]) {
      const t = klToPrior(tf.tensor([m]), tf.tensor([v])).dataSync()[0];
      assert(t > 0, `KL(${m}, ${v}) = ${t}`);
    }
    // Near v = 0 float rounding of e^v − 1 − v never makes it negative.
    const near = tf.linspace(-1e-4, 1e-4, 101);
    assert(klToPrior(tf.zerosLike(near), near).dataSync()[0] >= 0);
  });
});

Deno.test("sampleLatent() is mean + σ·ε with ε from the key", () => {
  const mean = tf.fill([1, 64, 64, 1], 2) as tf.Tensor4D;
  const logvar = tf.fill([1, 64, 64, 1], Math.log(0.25)) as tf.Tensor4D; // σ = 0.5
  const z = sampleLatent(mean, logvar, rng(5));
  const { mean: m, variance } = tf.moments(z);
  assertClose([m.dataSync()[0], Math.sqrt(variance.dataSync()[0])], [2, 0.5], { rtol: 0.03 });
  const again = sampleLatent(mean, logvar, rng(5));
  assertEquals(Array.from(again.dataSync()), Array.from(z.dataSync()));
  tf.dispose([mean, logvar, z, m, variance, again]);
});

Deno.test("latentScale() makes scale·mean unit-variance", () => {
  const means = tf.tidy(() => tf.add(tf.mul(normal(rng(2), [32, 7, 7, 4]), 3.7), 1.2));
  const scale = latentScale(means);
  assertClose([scale], [1 / 3.7], { rtol: 0.02 });
  const std = tf.tidy(() => Math.sqrt(tf.moments(tf.mul(means, scale)).variance.dataSync()[0]));
  assertClose([std], [1], { rtol: 1e-5 });
  assertThrows(() => latentScale(tf.ones([4, 2, 2, 4])), /variance 0/);
  means.dispose();
});

Deno.test("vaeLoss() trains the tiny autoencoder: every parameter gets a gradient, the loss falls, no leaks", async () => {
  const c = tinyAttn;
  const p = init(c, rng(0));
  const x = images(c, 8);
  // Every parameter reaches the loss.
  const { value, grads } = tf.variableGrads(
    () => vaeLoss(c, p, x, rng(1), { klWeight: 1e-2 }).loss,
    Object.values(p),
  );
  const dead = Object.entries(p).filter(([, v]) => {
    const g = grads[v.name];
    return !g || tf.tidy(() => tf.max(tf.abs(g)).dataSync()[0]) === 0;
  });
  assertEquals(dead.map(([k]) => k), []);
  tf.dispose([value, ...Object.values(grads)]);

  const opts = { optimizer: adam({ lr: 3e-3 }) };
  let s = initTrainState(p, opts);
  const losses: number[] = [];
  const count0 = tf.memory().numTensors;
  for (let i = 0; i < 12; i++) {
    const r = trainStep(
      s,
      () => vaeLoss(c, s.params, x, fold(rng(1), i), { klWeight: 1e-2 }).loss,
      opts,
    );
    s = r.state;
    losses.push(r.loss);
    assertEquals(tf.memory().numTensors, count0, `tensors after step ${i}`);
  }
  assert(losses[11] < 0.8 * losses[0], `loss ${losses[0]} → ${losses[11]}`);
  await assertNoLeaks(() => {
    const l = vaeLoss(c, s.params, x, rng(2), { klWeight: 1 });
    const [loss, rec, kl] = [l.loss, l.rec, l.kl].map((t) => t.dataSync()[0]);
    assertClose([loss], [rec + kl], { rtol: 1e-5 });
    assert(kl > 0 && rec > 0);
    tf.dispose([l.loss, l.rec, l.kl]);
  });
  tf.dispose([x, ...Object.values(s.opt.slots)]);
  disposeParams(p);
});

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

async function torchFile(
  path: string,
  p: Params,
  edit: (t: Record<string, tf.Tensor>) => void = () => {},
): Promise<void> {
  const torch = toTorchLayout(p);
  // The encoder's attention under the old names; the decoder's linears as 1×1 convs.
  for (const [key, t] of Object.entries(torch)) {
    const old = key.replace(/(encoder\.mid_block\.attentions\.0)\.to_q\./, "$1.query.")
      .replace(/(encoder\.mid_block\.attentions\.0)\.to_k\./, "$1.key.")
      .replace(/(encoder\.mid_block\.attentions\.0)\.to_v\./, "$1.value.")
      .replace(/(encoder\.mid_block\.attentions\.0)\.to_out\.0\./, "$1.proj_attn.");
    if (old !== key) {
      torch[old] = t;
      delete torch[key];
    } else if (/decoder\.mid_block\.attentions\.0\.to_.*weight$/.test(key)) {
      torch[key] = tf.reshape(t, [...t.shape, 1, 1]);
      t.dispose();
    }
  }
  edit(torch);
  const out: Record<string, TensorIn> = {};
  for (const [k, t] of Object.entries(torch)) {
    out[k] = { dtype: "F32", shape: t.shape, data: t.dataSync() as Float32Array };
  }
  tf.dispose(Object.values(torch));
  await writeSafetensors(path, out);
}

Deno.test("referenceKey() maps the old attention names and leaves the rest", () => {
  assertEquals(
    referenceKey("decoder.mid_block.attentions.0.query.weight"),
    "decoder.mid_block.attentions.0.to_q.weight",
  );
  assertEquals(
    referenceKey("encoder.mid_block.attentions.0.proj_attn.bias"),
    "encoder.mid_block.attentions.0.to_out.0.bias",
  );
  assertEquals(referenceKey("encoder.conv_in.weight"), "encoder.conv_in.weight");
  assertEquals(
    referenceKey("encoder.down_blocks.0.key.weight"),
    "encoder.down_blocks.0.key.weight",
  );
});

Deno.test("loadReferenceVae() reads a diffusers-format file (old names, 1×1 convs) to the same outputs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const c = tinyAttn;
    const p = init(c, rng(4));
    const path = `${dir}/vae.safetensors`;
    await torchFile(path, p);
    const q = await loadReferenceVae(c, path);
    assertEquals(Object.keys(q).sort(), Object.keys(p).sort());
    const x = images(c, 3);
    const [a, b] = [p, q].map((w) => encode(c, w, x));
    assertClose(b.mean, a.mean, { rtol: 1e-6, atol: 1e-7 });
    assertClose(b.logvar, a.logvar, { rtol: 1e-6, atol: 1e-7 });
    const [ya, yb] = [p, q].map((w) => reconstruct(c, w, x));
    assertClose(yb, ya, { rtol: 1e-6, atol: 1e-7 });
    tf.dispose([x, a.mean, a.logvar, b.mean, b.logvar, ya, yb]);
    disposeParams(q);

    const broken = `${dir}/broken.safetensors`;
    await torchFile(broken, p, (t) => {
      t["decoder.conv_out.bias"].dispose();
      delete t["decoder.conv_out.bias"];
      t["decoder.extra.weight"] = tf.zeros([2]);
    });
    const before = tf.memory().numTensors;
    await assertRejects(
      () => loadReferenceVae(c, broken),
      (e: Error) =>
        /1 missing \(.*decoder\.conv_out\.bias/.test(e.message) &&
        /1 unexpected \(.*decoder\.extra\.weight/.test(e.message),
    );
    assertEquals(tf.memory().numTensors, before, "a failed load frees its tensors");
    // A file for another config reports misshapen keys.
    await assertRejects(
      () => loadReferenceVae({ ...c, latentChannels: 2 }, path),
      /misshapen/,
    );
    disposeParams(p);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("saveVae() / loadVae() round-trip config, weights and scale; other files are refused", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const c = tiny;
    const p = init(c, rng(6));
    const path = `${dir}/w.safetensors`;
    const spec = { kind: "vae", name: "tiny", config: c } as const;
    await saveVae(path, p, { spec, scale: 0.5, dataset: "mnist", step: 3 });
    const v = await loadVae(path);
    assertEquals([v.spec, v.config, v.scale, v.dataset], [spec, c, 0.5, "mnist"]);
    const x = images(c, 2);
    await assertNoLeaks(() => {
      const z = toLatent(v, x);
      const { mean, logvar } = encode(c, p, x);
      const half = tf.mul(mean, 0.5) as tf.Tensor4D;
      assertClose(z, half, { rtol: 1e-6 });
      const back = fromLatent(v, z);
      const direct = decode(c, p, mean);
      assertClose(back, direct, { rtol: 1e-5, atol: 1e-6 });
      const sampled = toLatent(v, x, rng(1));
      assertEquals(sampled.shape, z.shape);
      tf.dispose([z, half, mean, logvar, back, direct, sampled]);
    });
    x.dispose();
    disposeParams(v.params);

    const other = `${dir}/unet.safetensors`;
    await saveCheckpoint(other, {
      params: p,
      step: 1,
      meta: { config: { model: { kind: "unet" } } },
    });
    await assertRejects(() => loadVae(other), /records model kind "unet", not "vae"/);
    const noScale = `${dir}/noscale.safetensors`;
    await saveCheckpoint(noScale, { params: p, step: 1, meta: { config: { model: spec } } });
    await assertRejects(() => loadVae(noScale), /latent scale undefined/);
    const bare = `${dir}/bare.safetensors`;
    await torchFile(bare, p);
    await assertRejects(() => loadVae(bare), /no project metadata/);
    disposeParams(p);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
