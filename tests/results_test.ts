import assert from "node:assert/strict";
import * as E from "fp-ts/lib/Either.js";
import { join } from "node:path";
import {
  commandLine,
  finishRun,
  parseResult,
  readAllResults,
  RESULTS_DIR_ENV,
  resultsDir,
  startRun,
  validateResult,
} from "../lib/results.ts";

Deno.test("startRun() and finishRun() write a valid results file that reads back", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = { model: "tiny", t: [10, 90], lr: 1e-4 };
    const h = await startRun("probe", "probe-t90-seed0", config, 0);
    assert.match(h.env.commit, /^([0-9a-f]{40}(-dirty)?|unknown)$/);
    assert.equal(h.env.cpus, navigator.hardwareConcurrency);
    if (Deno.build.os === "linux" && Deno.build.arch === "x86_64") { // tests may run lscpu
      assert.ok(h.env.cpu_flags?.includes("sse4_2"), `cpu_flags ${h.env.cpu_flags}`);
      assert.ok(h.env.cpu_flags!.every((f) => /^(sse|avx|fma|f16c|amx)/.test(f)));
    }
    await Deno.writeTextFile(join(dir, "grid.png"), "not really a png");
    const path = await finishRun(
      h,
      {
        metrics: { accuracy: 0.91, per_class: [0.9, 0.92] },
        timings: { train_s: 1.5 },
        artifacts: [join(dir, "grid.png")],
      },
      { resultsDir: dir },
    );
    assert.equal(path, join(dir, "probe", "probe-t90-seed0.json"));
    const r = parseResult(await Deno.readTextFile(path), path);
    assert.equal(r.schema, 1);
    assert.deepEqual(r.config, config);
    assert.deepEqual(r.metrics, { accuracy: 0.91, per_class: [0.9, 0.92] });
    assert.equal(r.timings.train_s, 1.5);
    assert.ok(r.timings.total_s >= 0);
    assert.deepEqual(r.artifacts, ["../grid.png"], "artifacts relative to the JSON's directory");
    assert.ok(Date.parse(r.finished) >= Date.parse(r.started));
    const all = await readAllResults(dir);
    assert.deepEqual(all.problems, []);
    assert.deepEqual(all.results.map((x) => x.result), [r]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("resultsDir() prefers the option, then $DP_RESULTS_DIR, then results", () => {
  const old = Deno.env.get(RESULTS_DIR_ENV);
  try {
    Deno.env.delete(RESULTS_DIR_ENV);
    assert.equal(resultsDir(), "results");
    Deno.env.set(RESULTS_DIR_ENV, "/tmp/elsewhere");
    assert.equal(resultsDir(), "/tmp/elsewhere");
    assert.equal(resultsDir("mine"), "mine");
  } finally {
    if (old === undefined) Deno.env.delete(RESULTS_DIR_ENV);
    else Deno.env.set(RESULTS_DIR_ENV, old);
  }
});

Deno.test("validateResult() reports every problem at once", () => {
  const r = validateResult({
    schema: 2,
    experiment: "../escape",
    run: "ok",
    config: { x: 1 },
    seed: 0.5,
    env: {
      backend: "wasm",
      engine: "wasm",
      deno: "2",
      tfjs: "4.22.0",
      commit: "abc",
      cpus: "2",
      cpu_flags: "avx2",
    },
    started: "yesterday",
    finished: "2025-01-01T00:00:00Z",
    metrics: [],
    timings: { total_s: -1 },
    artifacts: ["a.png", 3],
  });
  assert.ok(E.isLeft(r));
  const expected = [
    /^schema should be 1/,
    /^experiment should be a file-safe name/,
    /^seed should be an integer/,
    /^env\.cpus should be an integer/,
    /^env\.os should be a string/,
    /^env\.cpu_flags should be an array of strings/,
    /^started should be an ISO time/,
    /^metrics should be an object/,
    /^timings\.total_s should be seconds, got -1/,
    /^artifacts\[1\] should be a string/,
  ];
  for (const re of expected) {
    assert.ok(r.left.some((p) => re.test(p)), `${re} not in ${r.left.join("\n")}`);
  }
  assert.equal(r.left.length, expected.length);
});

Deno.test("finishRun() and startRun() refuse values that are not plain JSON", async () => {
  await assert.rejects(() => startRun("probe", "a/b", {}, 0), /run should be a file-safe name/);
  await assert.rejects(
    () => startRun("probe", "r", { w: new Float32Array(2) }, 0),
    /config\.w is a Float32Array/,
  );
  const dir = await Deno.makeTempDir();
  try {
    const h = await startRun("probe", "r", {}, 0);
    await assert.rejects(
      () =>
        finishRun(h, { metrics: { loss: NaN, nested: { acc: Infinity } } }, { resultsDir: dir }),
      /metrics\.loss is NaN.*metrics\.nested\.acc is Infinity/,
    );
    assert.deepEqual(await Array.fromAsync(Deno.readDir(dir)), [], "nothing written");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readAllResults() skips invalid files with one line each, and accepts a missing directory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(join(dir, "x"));
    await Deno.writeTextFile(join(dir, "x", "broken.json"), "{ not json");
    await Deno.writeTextFile(join(dir, "x", "wrong.json"), JSON.stringify({ schema: 1 }));
    await Deno.writeTextFile(join(dir, "x", "notes.txt"), "ignored");
    const { results, problems } = await readAllResults(dir);
    assert.equal(results.length, 0);
    assert.equal(problems.length, 2);
    assert.match(problems[0], /^Invalid results file ".*broken\.json": bad JSON/);
    assert.match(
      problems[1],
      /^Invalid results file ".*wrong\.json": experiment should be.*; run should be/,
    );
    assert.deepEqual(await readAllResults(join(dir, "missing")), { results: [], problems: [] });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("commandLine() quotes flags and leads with the engine variables that are set", () => {
  const none = () => undefined;
  assert.equal(
    commandLine("pretrain", ["--run", "a b", "--steps", "3"], none),
    "deno task pretrain --run 'a b' --steps 3",
  );
  const env = (k: string) => ({ DP_ONEDNN_WINOGRAD: "0", DP_BLAS: "", HOME: "/root" })[k];
  assert.equal(
    commandLine("pretrain", ["--seed", "0"], env),
    "DP_ONEDNN_WINOGRAD=0 deno task pretrain --seed 0",
  );
  // An instruction-set cap is part of how a bench was run.
  const capped = (k: string) => ({ ONEDNN_MAX_CPU_ISA: "AVX2", OPENBLAS_CORETYPE: "Haswell" })[k];
  assert.equal(
    commandLine("bench", ["--suite", "models"], capped),
    "ONEDNN_MAX_CPU_ISA=AVX2 OPENBLAS_CORETYPE=Haswell deno task bench --suite models",
  );
});
