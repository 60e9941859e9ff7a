// deno task train-vae end to end on the tiny autoencoder and 8 px embedded MNIST: the results
// JSON, the weights (read back by loadVae), the figures, and a rerun that says it is finished;
// a run of 8 steps resumed to 16 continues the unbroken run's loss curve.
import { assert, assertClose, assertEquals } from "./assert.ts";
import { parseResult } from "../lib/results.ts";
import { loadVae } from "../lib/latent.ts";
import { disposeParams } from "../lib/params.ts";
import { VAE_CONFIGS } from "../lib/models/vae.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { scriptCommand } from "./script.ts";

await initEngine({ backend: "wasm", announce: false });
const tmp = await Deno.makeTempDir();
const env = { DP_RESULTS_DIR: `${tmp}/results` };
const dec = new TextDecoder();

async function run(args: string[], expectCode = 0) {
  const out = await scriptCommand("train_vae", args, { env }).output();
  const r = { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
  assertEquals(r.code, expectCode, `train_vae ${args.join(" ")}\n${r.stderr}`);
  return r;
}

const tinyRun = (name: string, steps: number) => [
  ...["--dataset", "mnist", "--config", "tiny", "--steps", String(steps), "--batch", "16"],
  ...["--train-images", "300", "--test-images", "64", "--scale-images", "128", "--log-every", "4"],
  ...["--out", `${tmp}/ck-${name}`, "--run", name, "--quiet", "--seed", "2"],
];

const result = async (name: string) => {
  const path = `${tmp}/results/vae/${name}.json`;
  return parseResult(await Deno.readTextFile(path), path);
};

Deno.test("deno task train-vae --help lists the flags", async () => {
  const r = await run(["--help"]);
  for (const flag of ["--kl-weight", "--scale-images", "--config <tiny|small|sd-vae>"]) {
    assert(r.stdout.includes(flag), flag);
  }
  const bad = await run(["--config", "huge"], 2);
  assert(bad.stderr.includes(`--config: "huge" is not one of`), bad.stderr);
});

Deno.test("deno task train-vae: a tiny run writes results and weights, and a rerun is finished", async () => {
  await run(tinyRun("a", 16));
  const r = await result("a");
  assertEquals(r.experiment, "vae");
  const m = r.metrics as Record<string, number>;
  assertEquals(m.steps, 16);
  for (const k of ["final_rec", "final_kl", "test_mse", "test_psnr_db", "latent_scale"]) {
    assert(Number.isFinite(m[k]) && m[k] > 0, `${k} ${m[k]}`);
  }
  assertEquals(m.test_images, 64);
  assertEquals(m.latent_shape as unknown, [4, 4, 4]);
  assertClose([m.latent_std_scaled_test], [1], { rtol: 0.3 }); // estimated on train images
  const curve = (r.metrics.loss_curve as { points: [number, number][] }).points;
  assertEquals(curve.map((p) => p[0]), [4, 8, 12, 16]);
  assert(curve[3][1] < curve[0][1], `loss ${curve[0][1]} → ${curve[3][1]}`);
  assertEquals((r.config.model as { name: string }).name, "tiny");
  for (const a of ["a.weights.safetensors", "a-reconstructions.png", "a-loss.svg", "a-loss.png"]) {
    assert(r.artifacts.includes(a), `artifact ${a}`);
    assert((await Deno.stat(`${tmp}/results/vae/${a}`)).size > 0, a);
  }
  const v = await loadVae(`${tmp}/results/vae/a.weights.safetensors`);
  assertEquals([v.spec.name, v.config, v.scale, v.dataset], [
    "tiny",
    VAE_CONFIGS.tiny,
    m.latent_scale,
    "mnist",
  ]);
  disposeParams(v.params);

  const again = await run(tinyRun("a", 16));
  assert(again.stderr.includes("is finished (step 16)"), again.stderr);
  assertEquals((await result("a")).finished, r.finished, "results left as they were");
});

Deno.test("deno task train-vae: a run of 8 steps extended to 16 continues the unbroken run's curve", async () => {
  await run(tinyRun("whole", 16));
  await run(tinyRun("parts", 8));
  await run(tinyRun("parts", 16));
  const [whole, parts] = [await result("whole"), await result("parts")];
  const pts = (r: typeof whole) =>
    (r.metrics.loss_curve as { points: [number, number][] }).points.map((p) => p[1]);
  assertClose(pts(parts), pts(whole), { rtol: 1e-4 });
  assertEquals(parts.metrics.resumed_from, 8);
  assertEquals(parts.segments?.map((s) => [s.from_step, s.to_step]), [[0, 8], [8, 16]]);
  assertClose([parts.metrics.test_mse as number], [whole.metrics.test_mse as number], {
    rtol: 1e-3,
  });
});

globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));
