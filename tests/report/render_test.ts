import assert from "node:assert/strict";
import { join } from "node:path";
import { formatValue, markdownTable, writeReport } from "../../lib/report/mod.ts";
import type { RunResult } from "../../lib/results.ts";

function fakeRun(
  experiment: string,
  run: string,
  config: Record<string, unknown>,
  metrics: Record<string, unknown>,
  artifacts: string[] = [],
): RunResult {
  return {
    schema: 1,
    experiment,
    run,
    config,
    seed: 0,
    env: {
      backend: "wasm",
      engine: "wasm+kernels+blas",
      deno: "2.9.6",
      tfjs: "4.22.0",
      commit: "abc",
      cpus: 2,
      os: "linux",
    },
    started: "2025-03-01T10:00:00.000Z",
    finished: "2025-03-01T10:05:00.000Z",
    metrics,
    timings: { total_s: 300.25 },
    artifacts,
  };
}

async function writeRun(dir: string, r: RunResult, sub = r.experiment): Promise<void> {
  await Deno.mkdir(join(dir, sub), { recursive: true });
  await Deno.writeTextFile(join(dir, sub, `${r.run}.json`), JSON.stringify(r));
}

Deno.test("markdownTable() and formatValue() format cells", () => {
  assert.equal(
    markdownTable(["a", "b"], [["1", "x|y"]]),
    "| a | b |\n| --- | --- |\n| 1 | x\\|y |",
  );
  assert.deepEqual([0.912345, 12, 1234.56, undefined, "ok"].map(formatValue), [
    "0.9123",
    "12",
    "1235",
    "",
    "ok",
  ]);
});

Deno.test("writeReport() draws the sections in paper order, the figures, and other results", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const results = join(dir, "results");
    const curve = { every: 10, points: [[10, 0.9], [20, 0.5], [30, 0.3]] };
    await writeRun(
      results,
      fakeRun(
        "pretrain",
        "fashion-mnist-small-seed0",
        { dataset: "fashion-mnist", modelName: "small", batch: 32 },
        { steps: 30, final_loss: 0.3, loss_curve: curve },
        ["fashion-mnist-small-seed0-samples.png"],
      ),
    );
    await writeRun(
      results,
      fakeRun("bench", "models-1", { suite: "models" }, {
        engines: { "wasm+kernels": { unet_train: { engine: "wasm+kernels", img_s: 7.236 } } },
        ratio_vs_torch_by_engine: { "wasm+kernels": { unet_train: 0.161 } },
        params_agree: true,
      }),
    );
    await writeRun(results, fakeRun("mystery", "m1", {}, { x: 1.5 }));
    // Goldens of `deno task repro` are not runs: left out of the report.
    await writeRun(results, fakeRun("pretrain", "golden-run", {}, {}), "golden");
    await Deno.writeTextFile(join(results, "bad.json"), "{}");
    const out = join(dir, "REPORT.md");
    const summary = await writeReport(results, out);
    assert.deepEqual([summary.runs, summary.experiments, summary.problems.length], [3, 3, 1]);
    const md = await Deno.readTextFile(out);
    assert.match(md, /from 3 run\(s\)/);
    assert.ok(!md.includes("golden-run"), "a golden was read as a run");
    const order = ["## Pre-training", "## 001:", "## 002:", "## 000:", "## Benchmarks", "## Other"]
      .map((h) => md.indexOf(h));
    assert.ok(order.every((p, i) => p >= 0 && (i === 0 || p > order[i - 1])), `${order}`);
    // Pre-training: our run with its numbers linked, its sample grid, the loss figure drawn here.
    const file = "results/pretrain/fashion-mnist-small-seed0.json";
    assert.ok(
      md.includes(`| ours: [fashion-mnist-small-seed0](${file}) | README reference run |`),
      md,
    );
    assert.ok(md.includes(`[0.3](${file})`), md);
    assert.ok(md.includes("(results/pretrain/fashion-mnist-small-seed0-samples.png)"), md);
    assert.ok(
      md.includes(
        "![Pre-training loss (mean over each logging interval)](results/report/pretrain_loss.png)",
      ),
    );
    assert.ok((await Deno.stat(join(dir, "results", "report", "pretrain_loss.png"))).size > 0);
    assert.deepEqual(summary.figures.map((f) => f.split("/").pop()), [
      "pretrain_loss.svg",
      "pretrain_loss.png",
    ]);
    // Paper tables with no runs of ours: the quotes, then missing rows.
    assert.ok(
      md.includes("| 001 Table 1 | GD (L, pool 2×2) |  |  |  |  |  | 64.96% | 26.21 |"),
      md,
    );
    assert.ok(md.includes("| ours: **missing** | GD (L, pool 2×2) |"), md);
    assert.ok(md.includes("| 002 Table 5 | DifFeed | 1% |  |  | 52.9% |  |"), md);
    assert.ok(
      md.includes("| 000 Table 4 | Representation-Conditioned (ours) | binary | .9497 |"),
      md,
    );
    // Benchmarks in the new form; what no table shows is listed under other measurements.
    const bench = "results/bench/models-1.json";
    assert.ok(
      md.includes(`| wasm+kernels | unet_train | not recorded | [7.236](${bench}) |`),
      md,
    );
    assert.ok(md.includes("| params_agree | true |"), md);
    // Unknown experiments: the generic table.
    assert.match(md, /## Other results[\s\S]*### mystery\n\n\| run \| seed \| engine \| x \|/);
    assert.match(md, /## Unreadable results files\n\n- Invalid results file ".*bad\.json"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeReport() with no results lists every table's runs as missing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const summary = await writeReport(join(dir, "none"), join(dir, "REPORT.md"));
    assert.equal(summary.runs, 0);
    assert.deepEqual(summary.figures, []);
    const md = await Deno.readTextFile(join(dir, "REPORT.md"));
    assert.match(md, /from 0 run\(s\)/);
    assert.ok(md.includes("| ours: **missing** | README reference run |"), md);
    assert.ok(md.includes("Missing runs: no run has `metrics.loss_curve.points` yet."), md);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
