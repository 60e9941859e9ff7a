import assert from "node:assert/strict";
import { join } from "node:path";
import { formatValue, markdownTable, writeReport } from "../../lib/report/mod.ts";
import type { RunResult } from "../../lib/results.ts";

function fakeRun(
  experiment: string,
  run: string,
  seed: number,
  metrics: Record<string, unknown>,
  artifacts: string[],
): RunResult {
  return {
    schema: 1,
    experiment,
    run,
    config: {},
    seed,
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

async function writeRun(dir: string, r: RunResult): Promise<void> {
  await Deno.mkdir(join(dir, r.experiment), { recursive: true });
  await Deno.writeTextFile(join(dir, r.experiment, `${r.run}.json`), JSON.stringify(r));
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

Deno.test("writeReport() renders a table of runs per experiment with artifacts", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const results = join(dir, "results");
    await writeRun(results, fakeRun("probe", "seed10", 10, { acc: 0.5, f1: { macro: 0.25 } }, []));
    await writeRun(
      results,
      fakeRun("probe", "seed2", 2, { acc: 0.75, confusion: [[1, 0], [0, 1]] }, [
        "grid.png",
        "feats.safetensors",
      ]),
    );
    await writeRun(results, fakeRun("sample", "ddim", 0, { fid: 31.4 }, []));
    await Deno.writeTextFile(join(results, "bad.json"), "{}");
    const out = join(dir, "REPORT.md");
    const summary = await writeReport(results, out, {
      sample: (runs) => `custom section for ${runs.length} run(s)`,
    });
    assert.deepEqual([summary.runs, summary.experiments, summary.problems.length], [3, 2, 1]);
    const md = await Deno.readTextFile(out);
    assert.match(md, /from 3 run\(s\)/);
    assert.match(
      md,
      /## probe\n\n\| run \| seed \| engine \| acc \| f1\.macro \| total_s \| finished \|/,
    );
    // Runs sorted with numeric awareness: seed2 before seed10.
    assert.match(
      md,
      /\| seed2 \| 2 \| wasm\+kernels\+blas \| 0\.75 \| {2}\| 300\.3 \| 2025-03-01 10:05 \|\n\| seed10 \|/,
    );
    assert.match(md, /!\[seed2: grid\.png\]\(results\/probe\/grid\.png\)/);
    assert.match(md, /- \[seed2: feats\.safetensors\]\(results\/probe\/feats\.safetensors\)/);
    assert.match(md, /## sample\n\ncustom section for 1 run\(s\)/);
    assert.match(md, /## Unreadable results files\n\n- Invalid results file ".*bad\.json"/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeReport() handles a missing or empty results directory", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const summary = await writeReport(join(dir, "none"), join(dir, "REPORT.md"));
    assert.equal(summary.runs, 0);
    assert.match(await Deno.readTextFile(join(dir, "REPORT.md")), /No results yet\./);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeReport() gives each bench run its own metric/value table", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeRun(dir, fakeRun("bench", "kernels-1", 0, { ratio: 3.77 }, []));
    await writeRun(
      dir,
      fakeRun("bench", "models-1", 0, { ratio_vs_torch: { unet_train: 1.011 } }, []),
    );
    const out = join(dir, "REPORT.md");
    await writeReport(dir, out);
    const text = await Deno.readTextFile(out);
    assert.ok(text.includes("### kernels-1\n"), text);
    assert.ok(text.includes("| metric | value |\n| --- | --- |\n| ratio | 3.77 |"), text);
    assert.ok(text.includes("| ratio_vs_torch.unet_train | 1.011 |"), text);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
