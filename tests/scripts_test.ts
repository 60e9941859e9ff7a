// End-to-end checks of the scripts as users run them: --help, bad flags, and a short pre-training.
import { assert, assertEquals } from "./assert.ts";
import { parseResult } from "../lib/results.ts";
import { readRawArray } from "../lib/io/raw_array.ts";
import { scriptCommand } from "./script.ts";

const root = new URL("../", import.meta.url).pathname;

async function runScript(script: string, args: string[], env: Record<string, string> = {}) {
  const out = await scriptCommand(script, args, { env }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const scripts = [...Deno.readDirSync(`${root}scripts`)]
  .filter((e) => e.isFile && e.name.endsWith(".ts"))
  .map((e) => e.name.slice(0, -3))
  .sort();

for (const script of scripts) {
  Deno.test(`scripts/${script}.ts --help prints usage; an unknown flag is a one-line usage error`, async () => {
    const help = await runScript(script, ["--help"]);
    assertEquals(help.code, 0, help.stderr);
    // Task names spell a file's underscores as dashes (scripts/train_vae.ts: train-vae).
    assert(help.stdout.startsWith(`Usage: deno task ${script.replaceAll("_", "-")}`), help.stdout);
    assert(help.stdout.includes("--seed"), `${script} has no --seed flag`);
    const bad = await runScript(script, ["--no-such-flag"]);
    assertEquals(bad.code, 2, bad.stderr);
    assert(bad.stderr.startsWith("error: --no-such-flag: unknown flag"), bad.stderr);
  });
}

Deno.test("deno task pretrain: a tiny run of 100 steps with a fixed seed lowers the loss", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const args = [
      "--config",
      "tiny",
      "--steps",
      "100",
      "--batch",
      "8",
      "--seed",
      "1",
      "--lr",
      "1e-3",
      "--samples",
      "4",
      "--sample-steps",
      "4",
      "--out",
      `${tmp}/ck`,
      "--log-every",
      "10",
      "--quiet",
    ];
    const r = await runScript("pretrain", args, { DP_RESULTS_DIR: tmp });
    assertEquals(r.code, 0, r.stderr);
    const result = parseResult(
      await Deno.readTextFile(`${tmp}/pretrain/mnist-tiny-seed1.json`),
      "pretrain result",
    );
    const m = result.metrics as { first_loss: number; final_loss: number; steps: number };
    assertEquals(m.steps, 100);
    assert(m.final_loss < 0.8 * m.first_loss, `loss ${m.first_loss} -> ${m.final_loss}`);
    assertEquals(result.artifacts, [
      "mnist-tiny-seed1-samples.png",
      "mnist-tiny-seed1-loss.svg",
      "mnist-tiny-seed1-loss.png",
    ]);
    assert((await Deno.stat(`${tmp}/pretrain/mnist-tiny-seed1-samples.png`)).size > 0);
    assert((await Deno.stat(`${tmp}/ck/checkpoint.safetensors`)).size > 0);

    // deno task sample draws from that checkpoint: a PNG grid and a raw array of the images.
    const s = await runScript("sample", [
      "--checkpoint",
      `${tmp}/ck/checkpoint.safetensors`,
      "--n",
      "4",
      "--steps",
      "3",
      "--method",
      "ddpm",
      "--run",
      "s",
    ], { DP_RESULTS_DIR: tmp });
    assertEquals(s.code, 0, s.stderr);
    const raw = await readRawArray(`${tmp}/sample/s.safetensors`);
    assertEquals(raw.shape, [4, 16, 16, 1]);
    assert(
      raw.data.every((v) => Number.isFinite(v) && Math.abs(v) <= 1.0001),
      "samples outside [-1, 1]",
    );
    assert((await Deno.stat(`${tmp}/sample/s.png`)).size > 0);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("deno task pretrain checks every range before loading data or the engine", async () => {
  const cases: [string[], RegExp][] = [
    [["--ema", "2"], /--ema: 2 is outside \[0, 1\)/],
    [["--class-dropout", "1", "--condition", "class"], /--class-dropout: 1 is outside \[0, 1\)/],
    [["--class-dropout", "0.1"], /--class-dropout needs --condition class/],
    [["--condition", "repr"], /representation conditioning is the DiT's/],
    [["--model", "dit", "--condition", "repr", "--encoder", "huge"], /--encoder: "huge" is not/],
    [["--sample-steps", "2000"], /--sample-steps: 2000 is more than --diffusion-steps 1000/],
    [["--model", "dit", "--config", "adm256"], /--config: "adm256" is not a dit preset/],
  ];
  for (const [args, message] of cases) {
    const r = await runScript("pretrain", args);
    assertEquals(r.code, 2, r.stderr);
    assert(message.test(r.stderr), `${args.join(" ")}: ${r.stderr}`);
    assert(!r.stderr.includes("engine:"), "refused before the engine starts");
  }
});

Deno.test("deno task pretrain: one-class conditioning is a one-line error before the engine", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const sharp = (await import("sharp")).default;
    await Deno.mkdir(`${tmp}/data/only`, { recursive: true });
    for (let i = 0; i < 6; i++) {
      await sharp(new Uint8Array(16 * 16).fill(20 * i), {
        raw: { width: 16, height: 16, channels: 1 },
      })
        .png().toFile(`${tmp}/data/only/${i}.png`);
    }
    const r = await runScript("pretrain", [
      "--dataset",
      `${tmp}/data`,
      "--config",
      "tiny",
      "--condition",
      "class",
    ]);
    assertEquals(r.code, 2, r.stderr);
    assert(/has 1 class; conditioning needs 2 or more/.test(r.stderr), r.stderr);
    assert(!r.stderr.includes("engine:"), r.stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("deno task pretrain: rerunning a finished run leaves its results JSON as it was", async () => {
  const tmp = await Deno.makeTempDir();
  try {
    const args = ["--config", "tiny", "--steps", "3", "--batch", "2", "--samples", "0", "--quiet"];
    const run = () =>
      runScript("pretrain", [...args, "--out", `${tmp}/ck`], { DP_RESULTS_DIR: tmp });
    const first = await run();
    assertEquals(first.code, 0, first.stderr);
    const path = `${tmp}/pretrain/mnist-tiny-seed0.json`;
    const before = await Deno.readTextFile(path);
    const again = await run();
    assertEquals(again.code, 0, again.stderr);
    assert(/is finished \(step 3\)/.test(again.stderr), again.stderr);
    assertEquals(await Deno.readTextFile(path), before);
    const r = parseResult(before, path);
    assert(r.command?.startsWith("deno task pretrain --config tiny --steps 3"), r.command);
    assertEquals(r.segments?.map((s) => [s.from_step, s.to_step]), [[0, 3]]);
    assert(typeof r.env.cpu === "string" && r.env.engine_details !== undefined);
    // A --steps below the checkpoint's step is an error that names both.
    const back = await runScript("pretrain", [
      ...args.map((a) => (a === "3" ? "2" : a)),
      "--out",
      `${tmp}/ck`,
    ], {
      DP_RESULTS_DIR: tmp,
    });
    assertEquals(back.code, 1, back.stderr);
    assert(/is at step 3, past --steps 2/.test(back.stderr), back.stderr);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
