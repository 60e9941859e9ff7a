// The latent DiT end to end through the scripts: pre-training under each condition in a random
// tiny autoencoder's latent space (16 px digits → 8×8×4, the tiny DiT's input), its results
// JSON, sample grid and weights, then `deno task dit-figures` on the runs.
import { assert, assertEquals } from "./assert.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { saveVae } from "../lib/latent.ts";
import * as vae from "../lib/models/vae.ts";
import { disposeParams } from "../lib/params.ts";
import { rng } from "../lib/random.ts";
import { parseResult } from "../lib/results.ts";
import { scriptCommand } from "./script.ts";

await initEngine({ backend: "wasm", announce: false });
const tmp = await Deno.makeTempDir();
const env = { DP_RESULTS_DIR: `${tmp}/results` };
const dec = new TextDecoder();

async function run(script: string, args: string[], code = 0) {
  const out = await scriptCommand(script, args, { env }).output();
  const r = { stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  assertEquals(out.code, code, r.stderr);
  return r;
}

const config: vae.VAEConfig = { ...vae.VAE_CONFIGS.tiny, resolution: 16 };
const vaePath = `${tmp}/vae.weights.safetensors`;
const p = vae.init(config, rng(0));
await saveVae(vaePath, p, {
  spec: { kind: "vae", name: "tiny16", config },
  scale: 2,
  dataset: "mnist",
  step: 0,
});
disposeParams(p);

const pretrainArgs = (condition: string) => [
  "--model",
  "dit",
  "--config",
  "tiny",
  "--latent",
  "vae",
  "--vae",
  vaePath,
  "--condition",
  condition,
  "--encoder",
  "tiny",
  "--steps",
  "3",
  "--batch",
  "4",
  "--log-every",
  "1",
  "--samples",
  "4",
  "--sample-steps",
  "2",
  "--export-weights",
  "--quiet",
  "--out",
  `${tmp}/ck-${condition}`,
  "--run",
  `dit-${condition}`,
];

Deno.test("pretrain --model dit --latent vae: each condition trains, records itself and samples pixels", async () => {
  for (const condition of ["none", "class", "repr"]) {
    const args = pretrainArgs(condition);
    if (condition === "class") args.push("--class-dropout", "0.1");
    const r = await run("pretrain", args);
    assert(/encoding \d+ images with/.test(r.stderr), r.stderr);
    const json = `${tmp}/results/pretrain/dit-${condition}.json`;
    const res = parseResult(await Deno.readTextFile(json), json);
    const c = res.config as Record<string, unknown>;
    assertEquals([c.model, c.condition, c.latent, c.preset], ["dit", condition, "vae", "tiny"]);
    assertEquals((c.vae as { scale: number }).scale, 2);
    const spec = c.spec as { config: Record<string, unknown> };
    assertEquals("encoder" in spec.config, condition === "repr");
    assertEquals("numClasses" in spec.config, condition === "class");
    const curve = res.metrics.loss_curve as { points: [number, number][] };
    assertEquals(curve.points.map((q) => q[0]), [1, 2, 3]);
    assertEquals(res.metrics.min_loss, Math.min(...curve.points.map((q) => q[1])));
    // The grid is decoded: 4 pixel images of 16×16, not 8×8 latents.
    assert(res.artifacts.some((a) => a.endsWith(`dit-${condition}-samples.png`)));
    const grid = `${tmp}/results/pretrain/dit-${condition}-samples.png`;
    const meta = await (await import("sharp")).default(grid).metadata();
    assertEquals([meta.width, meta.height], [2 * 16 + 3 * 2, 2 * 16 + 3 * 2]);
  }
});

Deno.test("pretrain --latent vae names a missing autoencoder in one line", async () => {
  const r = await run("pretrain", [...pretrainArgs("none"), "--vae", `${tmp}/nope.safetensors`], 1);
  assert(r.stderr.includes("nope.safetensors"), r.stderr);
});

Deno.test("dit-figures draws Figures 7–9 from the runs and records the z0 errors", async () => {
  const w = (c: string) => `${tmp}/results/pretrain/dit-${c}.weights.safetensors`;
  await run("dit_figures", [
    "--none",
    w("none"),
    "--class",
    w("class"),
    "--repr",
    w("repr"),
    "--images",
    "2",
    "--error-images",
    "4",
    "--start-t",
    "3",
    "--run",
    "figs",
    "--quiet",
  ]);
  const json = `${tmp}/results/dit-figures/figs.json`;
  const res = parseResult(await Deno.readTextFile(json), json);
  const err = res.metrics.z0_error as Record<string, Record<string, number>>;
  assertEquals(Object.keys(err), ["none", "class", "repr"]);
  for (const c of Object.values(err)) assert(Object.values(c).every(Number.isFinite));
  const minLoss = res.metrics.min_loss as Record<string, number>;
  assertEquals(Object.keys(minLoss), ["none", "class", "repr"]);
  for (const suffix of ["fig7-partial.png", "fig8-loss.png", "fig9-z0.png", "fig9-error.png"]) {
    assert(res.artifacts.some((a) => a.endsWith(suffix)), `${suffix} in ${res.artifacts}`);
  }
  // Figure 7 is images × (original, z_t, three conditions) cells of 16 px.
  const fig7 = `${tmp}/results/dit-figures/figs-fig7-partial.png`;
  const meta = await (await import("sharp")).default(fig7).metadata();
  assertEquals([meta.width, meta.height], [5 * 16 + 6 * 2, 2 * 16 + 3 * 2]);
  // A file of another condition than its flag says is refused.
  const bad = await run("dit_figures", ["--none", w("repr"), "--class", "", "--quiet"], 2);
  assert(/--none: .* holds a repr-conditioned model/.test(bad.stderr), bad.stderr);
});

Deno.test("cleanup", async () => {
  await Deno.remove(tmp, { recursive: true });
});
