// deno task cka end to end on a tiny checkpoint and the embedded MNIST: the results JSON holds
// the three matrices with their labels and the config the report reads, the figures exist, a
// seed reproduces its run, and bad command lines are usage errors.
import { assert, assertEquals, assertNotEquals } from "./assert.ts";
import { parseResult } from "../lib/results.ts";
import { scriptCommand } from "./script.ts";

const tmp = await Deno.makeTempDir();
const env = { DP_RESULTS_DIR: `${tmp}/results` };
const dec = new TextDecoder();

async function run(script: string, args: string[], code = 0) {
  const out = await scriptCommand(script, args, { env }).output();
  const r = { code: out.code, stderr: dec.decode(out.stderr), stdout: dec.decode(out.stdout) };
  assertEquals(r.code, code, `${script} ${args.join(" ")}\n${r.stderr}`);
  return r;
}

const result = async (name: string) => {
  const path = `${tmp}/results/cka/${name}.json`;
  return parseResult(await Deno.readTextFile(path), path);
};

type Matrix = { rows: string[]; cols: string[]; values: (number | null)[][] };

// A tiny pre-trained checkpoint (16 px MNIST U-Net, 9 blocks, 4 steps).
await run("pretrain", [
  ...["--config", "tiny", "--steps", "4", "--batch", "4", "--samples", "0", "--quiet"],
  ...["--out", `${tmp}/ck`, "--run", "tiny"],
]);
const common = [
  ...["--weights", `${tmp}/ck/checkpoint.safetensors`, "--images", "40", "--extract-batch", "16"],
  ...["--train-percent", "3", "--epochs", "1", "--ts", "10,50,200", "--quiet"],
];

Deno.test("deno task cka: three matrices, their labels, config and figures", async () => {
  await run("cka", [...common, "--run", "a"]);
  const r = await result("a");
  const c = r.config as Record<string, unknown>;
  assertEquals(
    [c.t, c.block, c.pool, c.images, c.ts, c.head, c.kernel, c.minibatch],
    [50, 5, 4, 40, [10, 50, 200], "cka", "linear", 14], // 40 images as 14 + 14 + 12
  );
  const m = r.metrics as Record<string, Matrix> & { examples: number; minibatches: number };
  const blocks = Array.from({ length: 9 }, (_, i) => `b${i + 1}`);
  assertEquals([m.blocks.rows, m.blocks.cols], [blocks, blocks]);
  assertEquals([m.timesteps.rows, m.timesteps.cols], [["t10", "t50", "t200"], [
    "t10",
    "t50",
    "t200",
  ]]);
  assertEquals([m.cnn.rows, m.cnn.cols], [blocks, ["conv1", "conv2", "logits"]]);
  assertEquals([m.examples, m.minibatches], [40, 3]);
  for (const sq of [m.blocks, m.timesteps]) {
    sq.values.forEach((row, i) =>
      row.forEach((v, j) => {
        assert(v !== null && v >= -1 && v <= 1 + 1e-9, `[${i}][${j}] = ${v}`);
        assertEquals(v, sq.values[j][i], "symmetric");
        if (i === j) assert(Math.abs(v - 1) < 1e-9, `diagonal ${v}`);
      })
    );
  }
  assert(m.cnn.values.flat().every((v) => v !== null && Math.abs(v) <= 1));
  assertEquals(r.artifacts.length, 6);
  for (const f of ["blocks", "timesteps", "cnn"]) {
    for (const ext of ["svg", "png"]) {
      assert(r.artifacts.includes(`a-${f}.${ext}`), `${f}.${ext} in ${r.artifacts}`);
      assert((await Deno.stat(`${tmp}/results/cka/a-${f}.${ext}`)).size > 0);
    }
  }
  assert(r.command?.startsWith("deno task cka"), r.command);

  // The same seed gives the same matrices; another seed other images and noise.
  await run("cka", [...common, "--run", "again"]);
  const again = (await result("again")).metrics as Record<string, Matrix>;
  for (const k of ["blocks", "timesteps", "cnn"]) assertEquals(again[k], m[k], k);
  await run("cka", [...common, "--seed", "1", "--cnn", "none", "--kernel", "rbf", "--run", "b"]);
  const b = await result("b");
  const bm = b.metrics as Record<string, Matrix | null>;
  assertEquals([bm.cnn, (b.metrics as { cnn_accuracy: null }).cnn_accuracy], [undefined, null]);
  assertEquals(b.artifacts.length, 4);
  assertEquals((b.config as { rbf_fraction: number }).rbf_fraction, 0.8);
  assertNotEquals(bm.blocks!.values, m.blocks.values);
});

Deno.test("deno task cka: --help, and bad command lines are usage errors", async () => {
  const help = await run("cka", ["--help"]);
  for (const f of ["--images", "--t ", "--block", "--ts", "--pool", "--kernel", "--cnn"]) {
    assert(help.stdout.includes(f), `--help lacks ${f}`);
  }
  assert(!help.stdout.includes("--cache-dir"), "--cache-dir does not apply");
  const bad = async (args: string[], pattern: RegExp) => {
    const r = await run("cka", [...common, ...args], 2);
    assert(pattern.test(r.stderr), r.stderr);
  };
  await bad(["--images", "100000"], /--images 100000 is more than the \d+ test images/);
  await bad(["--cnn", "linear"], /--cnn "linear" is not a CNN head/);
  await bad(["--block", "99"], /Block 99 does not exist/);
  await bad(["--images", "13", "--extract-batch", "4"], /minibatches of 4 leaves a last one of 1/);
});

globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));
