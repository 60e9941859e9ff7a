import { assert, assertEquals } from "../assert.ts";
import { fileURLToPath } from "node:url";
import type { LoadedResult, RunResult } from "../../lib/results.ts";
import {
  formatCell,
  matchPattern,
  renderTable,
  resolve,
  type TableContext,
  type TableDef,
} from "../../lib/report/table.ts";
import { ITEMS, SECTIONS, SEEDS } from "../../lib/report/tables.ts";

function run(
  experiment: string,
  name: string,
  fields: Partial<RunResult> & Record<string, unknown>,
): LoadedResult {
  const result = {
    schema: 1,
    experiment,
    run: name,
    config: {},
    seed: 0,
    env: {
      backend: "wasm",
      engine: "wasm+kernels",
      deno: "2",
      tfjs: "4.22.0",
      commit: "0123456789abcdef",
      cpus: 2,
      os: "linux",
    },
    started: "2025-03-01T10:00:00.000Z",
    finished: "2025-03-01T10:05:00.000Z",
    metrics: {},
    timings: {},
    artifacts: [],
    ...fields,
  } as RunResult;
  return { path: `/r/results/${experiment}/${name}.json`, result };
}

const ctx = (): TableContext => ({
  link: (r) => r.path.replace("/r/", ""),
  artifactLink: (r, a) => `${r.path.replace("/r/", "").replace(/[^/]+$/, "")}${a}`,
  shown: new Map(),
});

const probeTable: TableDef = {
  kind: "table",
  id: "t",
  section: "001",
  title: "001 Table 3: heads by t",
  scale: { paper: "ImageNet-1k at 256×256", ours: "Fashion-MNIST at 28×28" },
  experiments: ["probe"],
  columns: [
    { key: "t", header: "t", path: "config.t", format: "int" },
    { key: "head", header: "head", path: "$label" },
    { key: "accuracy", header: "accuracy", path: "metrics.accuracy", format: "percent" },
  ],
  paper: [{
    seed: "001_x.txt",
    table: 3,
    rows: [
      { t: "90", head: "linear (L)", accuracy: "61.95%" },
      { t: "90", head: "attention (A)", accuracy: "71.89%" },
    ],
  }],
  expected: [
    {
      label: "linear",
      where: { "config.head": "linear" },
      command: "deno task probe --head linear",
    },
    { label: "attention", where: { "config.head": "attention" }, command: "deno task heads" },
  ],
  command: "deno task probe",
};

Deno.test("renderTable() draws the paper's rows, our rows and a missing row per absent run", () => {
  const runs = [
    run("probe", "lin", {
      config: { t: 90, head: "linear" },
      metrics: { accuracy: 0.931 },
      command: "deno task probe --head linear --seed 0",
      env: { ...run("x", "x", {}).result.env, cpu: "AMD EPYC", dirty: true } as RunResult["env"],
    }),
    run("probe", "other", { config: { t: 150, head: "mlp" }, metrics: {} }),
    run("bench", "ignored", {}),
  ];
  const md = renderTable(probeTable, runs, ctx());
  assert(md.startsWith("### 001 Table 3: heads by t\n\n"), md);
  assert(md.includes("Paper: ImageNet-1k at 256×256. Ours: Fashion-MNIST at 28×28."), md);
  assert(md.includes("| source | t | head | accuracy |"), md);
  assert(md.includes("| 001 Table 3 | 90 | linear (L) | 61.95% |"), md);
  assert(md.includes("| 001 Table 3 | 90 | attention (A) | 71.89% |"), md);
  // Ours: each number links to its results file.
  const file = "results/probe/lin.json";
  assert(
    md.includes(`| ours: [lin](${file}) | [90](${file}) | linear | [93.10%](${file}) |`),
    md,
  );
  // Expected but absent: listed as missing with its command, never filled in.
  assert(md.includes("| ours: **missing** |  | attention |  |"), md);
  assert(md.includes("Missing runs:\n- attention: `deno task heads`"), md);
  // A run no expectation claims still shows, by its name; absent values say so.
  assert(md.includes("| ours: [other](results/probe/other.json) | [150]"), md);
  assert(md.includes("| other | not recorded |"), md);
  assert(md.includes("Paper rows quoted from `../shared/seeds/001_x.txt`, Table 3."), md);
  // One line per run: its file, command and machine; old files say what they lack.
  assert(
    md.includes(
      "- [lin](results/probe/lin.json): `deno task probe --head linear --seed 0`; CPU AMD EPYC, 2 " +
        "cores, wasm+kernels; commit 0123456789ab-dirty; finished 2025-03-01 10:05",
    ),
    md,
  );
  assert(
    md.includes("- [other](results/probe/other.json): command not recorded; CPU not recorded"),
    md,
  );
  assert(!md.includes("ignored"), md);
});

Deno.test("renderTable() without runs or expectations draws one missing row and the command", () => {
  const md = renderTable({ ...probeTable, paper: undefined, expected: undefined }, [], ctx());
  assert(md.includes("| ours: **missing** |  |  |  |"), md);
  assert(md.includes("Missing runs: no run yet; make one with `deno task probe`."), md);
});

Deno.test("renderTable() expands `each` matches and lists the rest of the metrics", () => {
  const bench = run("bench", "models-1", {
    config: { suite: "models" },
    metrics: {
      engines: { wasm: { unet: { img_s: 7.25, heap_mb: 1470 } }, blas: { unet: { img_s: 45.5 } } },
      ratio: { wasm: { unet: 0.161 } },
      note: "hello",
    },
  });
  const c = ctx();
  const table: TableDef = {
    kind: "table",
    id: "b",
    section: "bench",
    title: "bench",
    experiments: ["bench"],
    where: { "config.suite": "models" },
    each: "metrics.engines.*.*",
    columns: [
      { key: "engine", header: "engine", path: "{1}", labels: { wasm: "wasm only" } },
      { key: "w", header: "workload", path: "{2}" },
      { key: "img", header: "img/s", path: "@.img_s" },
      { key: "ratio", header: "ratio", path: "metrics.ratio.{1}.{2}" },
    ],
    command: "deno task bench",
  };
  const md = renderTable(table, [bench], c);
  const f = "results/bench/models-1.json";
  assert(md.includes(`| wasm only | unet | [7.25](${f}) | [0.161](${f}) |`), md);
  assert(md.includes(`| blas | unet | [45.5](${f}) | not recorded |`), md);
  const rest = renderTable({ ...table, id: "r", each: undefined, columns: [], rest: true }, [
    bench,
  ], c);
  assert(
    rest.includes(`| ours: [models-1](${f}) | engines.wasm.unet.heap_mb | [1470](${f}) |`),
    rest,
  );
  assert(rest.includes("| note | hello |"), rest);
  assert(!rest.includes("img_s") && !rest.includes("ratio.wasm"), rest);
});

Deno.test("matchPattern(), resolve() and formatCell() read paths, captures and alternatives", () => {
  const o = { metrics: { conv_n64_fwd_ms: 1, conv_n64_dx_ms: 2, pool_fwd_ms: 3 } };
  assertEquals(matchPattern(o, "metrics.*_fwd_ms").map((m) => m.captures), [["conv_n64"], [
    "pool",
  ]]);
  const r = run("pretrain", "p", { config: { modelName: "small" } });
  assertEquals(
    resolve("config.model.name|config.modelName", { run: r, label: "x" }).value,
    "small",
  );
  assertEquals(resolve("$run", { run: r, label: "x" }).value, "p");
  assertEquals(
    [formatCell(0.93105, { format: "percent" }), formatCell(0.7, { format: "fixed4" })],
    ["93.11%", "0.7000"],
  );
  assertEquals(formatCell("2025-03-01T10:05:00.000Z", { format: "time" }), "2025-03-01 10:05");
});

Deno.test("tables.ts: ids are unique, every section is declared, the papers come in order", () => {
  const ids = ITEMS.map((i) => i.id);
  assertEquals(new Set(ids).size, ids.length);
  const sections = SECTIONS.map((s) => s.id);
  assertEquals(sections, ["pretrain", "001", "002", "000", "bench"]);
  for (const i of ITEMS) assert(sections.includes(i.section), i.id);
});

// Every quoted cell holding a digit must appear in the seed text of its table (from its caption
// to the next caption), so a typo in a quote fails here. Text extraction put a space before some
// "%" signs ("52.9 %"), so spaces before "%" are dropped first.
const seedsDir = fileURLToPath(new URL("../../../shared/seeds/", import.meta.url));
const haveSeeds = (() => {
  try {
    return Deno.statSync(seedsDir).isDirectory;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "tables.ts: every quoted number is in its seed file's table",
  ignore: !haveSeeds,
  fn() {
    const known = new Set<string>(Object.values(SEEDS));
    for (const item of ITEMS) {
      if (item.kind !== "table") continue;
      for (const q of item.paper ?? []) {
        assert(known.has(q.seed), `${item.id}: unknown seed ${q.seed}`);
        const text = Deno.readTextFileSync(`${seedsDir}${q.seed}`).replace(/ +%/g, "%");
        // A table's numbers are in its block; a figure's in the paragraph that discusses it,
        // where the text prints 3.13e-2 as "3.13 × 10^-2" (the mantissa is looked for).
        const marker = q.at ??
          (q.figure !== undefined ? `Figure ${q.figure} shows` : `Table ${q.table}:`);
        const start = text.indexOf(marker);
        assert(start >= 0, `${item.id}: no "${marker}" in ${q.seed}`);
        const inLine = q.figure !== undefined || q.at !== undefined;
        const next = text.indexOf(inLine ? "\n" : "\nTable ", start + 1);
        const block = text.slice(start, next < 0 ? undefined : next);
        for (const row of q.rows) {
          for (const [k, v] of Object.entries(row)) {
            if (/\d/.test(v)) {
              const wanted = inLine ? v.replace(/e-?\d+$/, "") : v;
              assert(
                block.includes(wanted),
                `${item.id}: "${wanted}" (${k}) not in ${q.seed} at "${marker}"`,
              );
            }
          }
        }
      }
    }
  },
});

Deno.test("000 Table 4's findings compare the classify runs' accuracies, both questions per task", () => {
  const def = ITEMS.find((i) => i.id === "000-table4") as TableDef;
  const classify = (pretraining: string, method: string, accuracy: number) =>
    run("classify", `${pretraining}-${method}`, {
      config: { task: "10-class", pretraining, method },
      metrics: { accuracy, f1: 0, recall: 0, precision: 0 },
    });
  const md = renderTable(def, [
    classify("unconditional", "dc", 0.3),
    classify("unconditional", "dc-zero", 0.2),
    classify("representation", "dc", 0.45),
    classify("representation", "dc-zero", 0.2),
  ], ctx());
  assert(md.includes("Findings (computed from the runs above):"), md);
  for (
    const line of [
      "- 10-class, dc: representation-conditioned pre-training beats unconditional (accuracy 45.00% vs 30.00%).",
      "- 10-class, dc-zero: representation-conditioned pre-training ties unconditional (accuracy 20.00% vs 20.00%).",
      "- 10-class, unconditional pre-training: Diffusion Classifier Zero loses to the ε-space classifier (accuracy 20.00% vs 30.00%).",
    ]
  ) assert(md.includes(line), `${line}\n${md}`);
  assert(!md.includes("- binary,"), "no binary runs, no binary findings");
});

Deno.test("002 Table 5's findings: the gain over scratch per share of labels, and where it is largest", () => {
  const def = ITEMS.find((i) => i.id === "002-table5") as TableDef;
  const row = (method: string, labels: number, acc: number) =>
    run("semisup", `${method}-${labels}`, {
      config: { method, labels },
      metrics: { test_accuracy: acc, test_accuracy_std: 0.01, seeds: 3, labeled_images: 600 },
    });
  const md = renderTable(def, [
    row("finetune", 0.01, 0.6),
    row("scratch", 0.01, 0.5),
    row("finetune", 0.1, 0.8),
    row("scratch", 0.1, 0.75),
  ], ctx());
  assert(md.includes("- 1.00% labels: finetune minus scratch = 10.00 points."), md);
  assert(md.includes("- 10.00% labels: finetune minus scratch = 5.00 points."), md);
  assert(
    md.includes(
      "- finetune: the gain over scratch is largest at 1.00% labels (the fewest, as 002 claims).",
    ),
    md,
  );
});
