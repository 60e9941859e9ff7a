// deno task downstream-baselines end to end on tiny settings (the embedded MNIST, a few dozen
// images, 2 epochs, tiny models): every method writes results/downstream/<run>.json with the
// fields the report reads, and the same seed gives the same metrics.
import { assert, assertEquals } from "./assert.ts";
import { parseResult, type RunResult } from "../lib/results.ts";
import { scriptCommand } from "./script.ts";

const tmp = await Deno.makeTempDir();
const env = { DP_RESULTS_DIR: `${tmp}/results` };
const dec = new TextDecoder();
globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));
const tiny = [
  ...["--dataset", "mnist", "--train", "40", "--valid", "20", "--test", "20"],
  ...["--epochs", "2", "--batch", "16", "--resnet", "tiny", "--vit", "tiny", "--patch", "7"],
  ...["--pretrain-steps", "3", "--pretrain-batch", "8", "--quiet"],
];

async function run(args: string[]): Promise<string> {
  const out = await scriptCommand("downstream_baselines", [...tiny, ...args], { env }).output();
  const stderr = dec.decode(out.stderr);
  assertEquals(out.code, 0, `${args.join(" ")}\n${stderr}`);
  return stderr;
}

async function result(name: string): Promise<RunResult> {
  const path = `${tmp}/results/downstream/${name}.json`;
  return parseResult(await Deno.readTextFile(path), path);
}

function checkFields(r: RunResult, method: string, task: string, classes: number): void {
  const c = r.config as Record<string, unknown>, m = r.metrics as Record<string, unknown>;
  assertEquals(r.experiment, "downstream-baselines");
  assertEquals([c.method, c.pretraining, c.task], [
    method,
    method === "dino" ? "dino" : "none",
    task,
  ]);
  const protocol = c.protocol as { sizes: Record<string, number>; task: string };
  assertEquals(protocol.sizes, { pool: 8000, train: 40, valid: 20, test: 20 });
  for (const k of ["accuracy", "f1", "recall", "precision"]) {
    const v = m[k] as number;
    assert(v >= 0 && v <= 1, `metrics.${k} = ${v}`);
  }
  const cm = m.confusion as number[][];
  assertEquals(cm.length, classes);
  assertEquals(
    cm.flat().reduce((a, b) => a + b, 0),
    20,
    "the confusion matrix counts the test split",
  );
  assertEquals((m.valid_curve as unknown[]).length, 2);
  assert((m.param_count as number) > 0 && (m.train_s as number) > 0);
}

Deno.test("deno task downstream-baselines: resnet, vit and dino write their fields, deterministically", async () => {
  await run(["--method", "resnet", "--task", "10-class", "--run", "resnet"]);
  checkFields(await result("resnet"), "resnet", "10-class", 10);
  await run(["--method", "vit", "--task", "binary", "--run", "vit"]);
  checkFields(await result("vit"), "vit", "binary", 2);
  const dino = ["--method", "dino", "--task", "binary", "--positives", "0,1"];
  const cacheA = ["--dino-cache", `${tmp}/dino-a`];
  const log = await run([...dino, ...cacheA, "--run", "dino-a"]);
  assert(log.includes("downstream-baselines: dino binary: test accuracy"), log);
  const a = await result("dino-a");
  checkFields(a, "dino", "binary", 2);
  const m = a.metrics as { pretrain_loss: number[]; pretrain_s: number };
  assertEquals(m.pretrain_loss.length, 3);
  assert(m.pretrain_s > 0);
  assertEquals((a.config.protocol as { positives: number[] }).positives, [0, 1]);
  // A second pre-training from scratch (another cache) repeats the first; a third run reads
  // the first one's cache instead of pre-training, with the same outcome.
  await run([...dino, "--dino-cache", `${tmp}/dino-b`, "--run", "dino-b"]);
  const again = await run([...dino, ...cacheA, "--run", "dino-c"]);
  assert(again.includes("DINO backbones from"), again);
  const [b, c] = [await result("dino-b"), await result("dino-c")];
  const strip = (r: RunResult) => {
    const { train_s: _t, pretrain_s: _p, pretrain_cached: _c, ...rest } = r.metrics as Record<
      string,
      unknown
    >;
    return rest;
  };
  assertEquals(strip(b), strip(a), "same seed, same metrics");
  assertEquals(strip(c), strip(a), "the cached pre-training gives the same metrics");
  assertEquals(
    [a, b, c].map((r) => (r.metrics as { pretrain_cached: boolean }).pretrain_cached),
    [false, false, true],
  );
});

Deno.test("deno task downstream-baselines: bad flags are usage errors", async () => {
  const out = await scriptCommand("downstream_baselines", [
    ...["--method", "cnn", "--positives", "a", "--dataset", "mnist"],
  ], { env }).output();
  assertEquals(out.code, 2);
  const err = dec.decode(out.stderr);
  assert(err.includes('--method: "cnn" is not one of resnet, vit, dino'), err);
});
