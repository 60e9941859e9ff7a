import { assert, assertEquals } from "./assert.ts";
import { join } from "node:path";
import {
  compareResults,
  type Exec,
  EXPERIMENTS,
  formatDiffs,
  normalise,
  pathMatches,
  type ReproExperiment,
  runRepro,
} from "../lib/repro.ts";
import { parseResult } from "../lib/results.ts";

const root = new URL("../", import.meta.url).pathname;

function result(metrics: Record<string, unknown>, config: Record<string, unknown> = {}) {
  return {
    schema: 1,
    experiment: "toy",
    run: "toy-seed3",
    command: "deno task toy --seed 3",
    config: { steps: 30, lr: 3e-4, ...config },
    seed: 3,
    env: {
      backend: "wasm",
      engine: "wasm+kernels",
      deno: "2",
      tfjs: "4.22.0",
      commit: "abc",
      cpus: 2,
      os: "linux",
    },
    started: "2025-03-01T10:00:00.000Z",
    finished: "2025-03-01T10:00:10.000Z",
    metrics,
    timings: { total_s: 10 },
    artifacts: ["toy.png"],
  };
}

const toy: ReproExperiment = {
  name: "toy_tiny",
  task: "toy",
  args: ["--seed", "3", "--out", "$TMP/ck"],
  result: "toy/toy-seed3.json",
  tolerances: {
    "metrics.loss": { rel: 1e-4, why: "summation order" },
    "metrics.curve.*.1": { rel: 1e-4, why: "summation order" },
  },
  ignore: ["metrics.images_per_s"],
};

const base = { steps: 30, loss: 0.46, curve: [[10, 0.9], [20, 0.5]], images_per_s: 80 };

Deno.test("pathMatches() matches whole and partial segments", () => {
  assert(pathMatches("metrics.curve.*.1", ["metrics", "curve", "7", "1"]));
  assert(!pathMatches("metrics.curve.*.1", ["metrics", "curve", "7", "0"]));
  assert(pathMatches("metrics.*_loss", ["metrics", "final_loss"]));
  assert(!pathMatches("metrics.*_loss", ["metrics", "final_loss", "x"]));
});

Deno.test("compareResults() passes within tolerance and ignores when and where a run ran", () => {
  const fresh = result({ ...base, loss: 0.46 * (1 + 5e-5), images_per_s: 20 });
  const moved = { ...fresh, env: { ...fresh.env, engine: "wasm+kernels+blas" }, timings: {} };
  assertEquals(compareResults(result(base), moved, toy), []);
});

Deno.test("compareResults() fails a float beyond tolerance, counts, config and seeds exactly", () => {
  const fresh = {
    ...result({ ...base, steps: 31, loss: 0.47, curve: [[10, 0.9], [20, 0.5], [30, 0.4]] }, {
      lr: 3.0001e-4,
    }),
    seed: 4,
  };
  const diffs = compareResults(result(base), fresh, toy);
  assertEquals(diffs.map((d) => [d.path, d.golden, d.fresh]), [
    ["seed", 3, 4],
    ["config.lr", 3e-4, 3.0001e-4],
    ["metrics.steps", 30, 31],
    ["metrics.loss", 0.46, 0.47],
    ["metrics.curve.length", 2, 3],
  ]);
  assert(diffs[1].rule.startsWith("exact (no tolerance declared"), diffs[1].rule);
  assert(
    diffs[3].rule.startsWith("relative difference 2.17e-2 > tolerance rel 0.0001"),
    diffs[3].rule,
  );
  const text = formatDiffs(
    "results/golden/toy_tiny.json",
    "$TMP/results/toy/toy-seed3.json",
    diffs,
  );
  assert(text.startsWith("drift: results/golden/toy_tiny.json (golden) vs"), text);
  assert(text.includes("  metrics.loss: golden 0.46, fresh 0.47; relative difference"), text);
});

Deno.test("compareResults() reports metrics present on one side only", () => {
  const { loss: _, ...rest } = base;
  const diffs = compareResults(result(base), result({ ...rest, extra: 1 }), toy);
  assertEquals(diffs.map((d) => [d.path, d.golden, d.fresh]), [
    ["metrics.loss", 0.46, undefined],
    ["metrics.extra", undefined, 1],
  ]);
  assert(formatDiffs("g", "f", diffs).includes("metrics.extra: golden (absent), fresh 1"));
});

Deno.test("normalise() replaces the scratch directory in every string", () => {
  assertEquals(normalise({ a: ["/tmp/x/ck", 1], b: "y /tmp/x/z" }, "/tmp/x"), {
    a: ["$TMP/ck", 1],
    b: "y $TMP/z",
  });
});

// A stand-in for `deno task toy`: writes a results file whose loss is `loss`, into the results
// directory it is given, and records the checkpoint path it was told.
function toyExec(loss: () => number, calls: string[][]): Exec {
  return async (task, args, env) => {
    calls.push([task, ...args]);
    const dir = join(env.DP_RESULTS_DIR, "toy");
    await Deno.mkdir(dir, { recursive: true });
    const r = result({ ...base, loss: loss() }, { checkpointDir: args[3] });
    await Deno.writeTextFile(join(dir, "toy-seed3.json"), JSON.stringify(r));
    return { code: 0, output: "" };
  };
}

Deno.test("runRepro() writes goldens with update, then passes within tolerance and fails beyond", async () => {
  const golden = await Deno.makeTempDir();
  const logs: string[] = [];
  const log = (s: string) => logs.push(s);
  try {
    let loss = 0.46;
    const calls: string[][] = [];
    const exec = toyExec(() => loss, calls);
    const [u] = await runRepro([toy], { goldenDir: golden, update: true, exec, log });
    assertEquals(u.status, "updated");
    assert(calls[0][0] === "toy" && !calls[0].join(" ").includes("$TMP"), calls[0].join(" "));
    const saved = parseResult(await Deno.readTextFile(join(golden, "toy_tiny.json")), "golden");
    assertEquals(saved.config.checkpointDir, "$TMP/ck"); // the scratch path, normalised

    loss = 0.46 * (1 + 9e-5);
    assertEquals((await runRepro([toy], { goldenDir: golden, exec, log }))[0].status, "pass");

    loss = 0.4601;
    const [d] = await runRepro([toy], { goldenDir: golden, exec, log });
    assertEquals(d.status, "drift");
    assert(d.message.includes(join(golden, "toy_tiny.json")), d.message); // the file
    assert(d.message.includes("metrics.loss: golden 0.46, fresh 0.4601"), d.message);
    assert(logs.at(-1)!.includes("toy_tiny: drift"), logs.at(-1));
  } finally {
    await Deno.remove(golden, { recursive: true });
  }
});

Deno.test("runRepro() fails an experiment whose command fails or whose golden is missing", async () => {
  const golden = await Deno.makeTempDir();
  try {
    const log = () => {};
    const failing: Exec = () => Promise.resolve({ code: 3, output: "a\nboom" });
    const [f] = await runRepro([toy], { goldenDir: golden, exec: failing, log });
    assertEquals(f.status, "failed");
    assert(f.message.includes("deno task toy exited with 3:\na\nboom"), f.message);
    const [g] = await runRepro([toy], { goldenDir: golden, exec: toyExec(() => 0.46, []), log });
    assertEquals(g.status, "failed");
    assert(g.message.includes("deno task repro --update"), g.message);
  } finally {
    await Deno.remove(golden, { recursive: true });
  }
});

Deno.test("EXPERIMENTS: each has a committed golden of its results, with its seed", async () => {
  for (const e of EXPERIMENTS) {
    const path = join(root, "results", "golden", `${e.name}.json`);
    const g = parseResult(await Deno.readTextFile(path), path);
    assertEquals(`${g.experiment}/${g.run}.json`, e.result);
    assertEquals(e.task, g.experiment);
    const seed = e.args[e.args.indexOf("--seed") + 1];
    assertEquals(String(g.seed), seed, `${e.name}: --seed ${seed}`);
    for (const [p, t] of Object.entries(e.tolerances)) assert(t.why !== "", `${e.name}: ${p}`);
  }
});

Deno.test("deno task repro --only with an unknown name is a usage error", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-R", "-W", "-E", "--allow-run", "scripts/repro.ts", "--only", "nope"],
    cwd: root,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 2);
  assert(new TextDecoder().decode(out.stderr).includes(`unknown experiment(s) "nope"`));
});
