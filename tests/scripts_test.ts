// End-to-end checks of the scripts as users run them: --help, bad flags, and a short pre-training.
import { assert, assertEquals } from "./assert.ts";
import { parseResult } from "../lib/results.ts";
import { readRawArray } from "../lib/io/raw_array.ts";

const root = new URL("../", import.meta.url).pathname;

async function runScript(script: string, args: string[], env: Record<string, string> = {}) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-R",
      "-W",
      "-E",
      "--allow-ffi",
      "--allow-sys",
      "--allow-run=git",
      `scripts/${script}.ts`,
      ...args,
    ],
    cwd: root,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
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
    assert(help.stdout.startsWith(`Usage: deno task ${script}`), help.stdout);
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
