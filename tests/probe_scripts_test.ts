// The probe scripts end to end on a tiny checkpoint and the embedded MNIST: every results JSON
// carries the fields the report reads, a second run reads the feature cache, and a grid killed
// after its first t resumes to the cells of an unbroken grid.
import sharp from "sharp";
import { assert, assertEquals } from "./assert.ts";
import { parseResult } from "../lib/results.ts";
import { scriptCommand } from "./script.ts";

const tmp = await Deno.makeTempDir();
const env = { DP_RESULTS_DIR: `${tmp}/results` };
const dec = new TextDecoder();

async function run(script: string, args: string[]) {
  const out = await scriptCommand(script, args, { env }).output();
  const r = { code: out.code, stderr: dec.decode(out.stderr) };
  assertEquals(r.code, 0, `${script} ${args.join(" ")}\n${r.stderr}`);
  return r;
}

const result = async (exp: string, name: string) => {
  const path = `${tmp}/results/${exp}/${name}.json`;
  return parseResult(await Deno.readTextFile(path), path);
};

// A tiny pre-trained checkpoint (16 px MNIST U-Net, 4 steps).
await run("pretrain", [
  ...["--config", "tiny", "--steps", "4", "--batch", "4", "--samples", "0", "--quiet"],
  ...["--out", `${tmp}/ck`, "--run", "tiny"],
]);
const common = [
  ...["--weights", `${tmp}/ck/checkpoint.safetensors`, "--cache-dir", `${tmp}/cache`],
  ...["--train-percent", "3", "--test-percent", "10", "--val-percent", "20", "--quiet"],
];

function checkFields(r: Awaited<ReturnType<typeof result>>, head: string) {
  const c = r.config as Record<string, unknown>, m = r.metrics as Record<string, unknown>;
  for (const k of ["t", "block", "pool", "head"]) assert(k in c, `config.${k} missing`);
  assert(String(c.head).includes(head), `config.head ${c.head}`);
  const acc = m.test_accuracy as number;
  assert(acc >= 0 && acc <= 1, `test_accuracy ${acc}`);
}

Deno.test("deno task probe: one cell, its fields, and the cache on a second run", async () => {
  const args = [...common, "--t", "20", "--block", "3", "--pool", "2", "--epochs", "2"];
  await run("probe", [...args, "--run", "a"]);
  const a = await result("probe", "a");
  checkFields(a, "linear");
  assertEquals([a.config.t, a.config.block, a.config.pool], [20, 3, 2]);
  assertEquals((a.metrics as { features_cached: boolean }).features_cached, false);
  assert((a.metrics as { feature_images_per_s: number }).feature_images_per_s > 0);
  await run("probe", [...args, "--run", "b"]);
  const b = await result("probe", "b");
  assertEquals((b.metrics as { features_cached: boolean }).features_cached, true);
  assertEquals(
    b.metrics.test_accuracy,
    a.metrics.test_accuracy,
    "cached features give the same probe",
  );
  // --flip adds the flipped train images (their own cache entries) as training rows.
  await run("probe", [...args, "--flip", "--run", "flip"]);
  const f = await result("probe", "flip");
  assertEquals(f.config.flip, true);
  assert(f.metrics.train_loss_final !== a.metrics.train_loss_final, "the flips changed training");
});

Deno.test("deno task ablate: a grid killed after its first t resumes to the unbroken grid", async () => {
  const grid = [
    ...common,
    "--ts",
    "10,30,60",
    "--blocks",
    "1,2",
    "--pools",
    "1,2",
    "--epochs",
    "1",
  ];
  await run("ablate", [...grid, "--run", "whole", "--state-dir", `${tmp}/state-whole`]);
  const whole = await result("ablate", "whole");
  checkFields(whole, "linear");
  // Kill the second grid as soon as its first t is saved; its rerun must skip that t.
  const killedArgs = [
    ...grid,
    "--run",
    "killed",
    "--no-cache",
    "--state-dir",
    `${tmp}/state-killed`,
  ];
  const child = scriptCommand("ablate", killedArgs, { env }).spawn();
  let log = "";
  for await (const chunk of child.stderr) {
    log += dec.decode(chunk);
    if (/ablate: t=10:/.test(log)) {
      child.kill("SIGKILL");
      break;
    }
  }
  await child.status;
  await child.stdout.cancel();
  const again = await run("ablate", killedArgs);
  assert(again.stderr.includes("resuming: t 10 done"), again.stderr);
  const killed = await result("ablate", "killed");
  assertEquals(
    (killed.metrics as { cells: unknown[] }).cells,
    (whole.metrics as { cells: unknown[] }).cells,
  );
  assertEquals((whole.metrics as { cells: unknown[] }).cells.length, 3 * 2 * 2);
  for (const f of ["t", "block", "pool"]) {
    assert(await Deno.stat(`${tmp}/results/ablate/whole-${f}.png`));
  }
});

Deno.test("deno task heads, knn, baselines and probe --select auto write the report's fields", async () => {
  await run("heads", [
    ...common,
    "--t",
    "20",
    "--block",
    "3",
    "--budgets",
    "3000",
    "--attention-layers",
    "1,2",
    "--epochs",
    "1",
    "--run",
    "h",
  ]);
  const h = await result("heads", "h");
  const rows = (h.metrics as { heads: { head: string; param_count: number }[] }).heads;
  assertEquals(rows.map((r) => r.head), [
    "linear",
    "linear",
    "linear",
    "mlp",
    "cnn",
    "attention",
    "attention",
  ]);
  assert(rows.every((r) => r.param_count > 0));
  await run("knn", [...common, "--ts", "20", "--blocks", "3", "--k", "3,10", "--run", "k"]);
  const k = await result("knn", "k");
  checkFields(k, "knn");
  const cells = (k.metrics as { cells: Record<string, number>[] }).cells;
  assert(cells[0].top5_at_10 >= cells[0].top1_at_10);
  await run("baselines", [...common, "--baseline", "raw-pixels", "--epochs", "1", "--run", "raw"]);
  checkFields(await result("baselines", "raw"), "raw-pixels");
  await run("probe", [
    ...common,
    ...[
      "--select",
      "auto",
      "--ts",
      "10,40",
      "--blocks",
      "1,2,3",
      "--pools",
      "1,2",
      "--select-epochs",
      "1",
      "--epochs",
      "1",
      "--run",
      "auto",
    ],
  ]);
  const auto = await result("probe", "auto");
  checkFields(auto, "linear");
  const sel = (auto.metrics as {
    selection: {
      rounds: { cells: number }[];
      cost: { forward_passes: number };
      grid: { cost: { forward_passes: number } };
    };
  }).selection;
  assertEquals(sel.rounds.map((r) => r.cells), [12, 4]);
  assert(sel.cost.forward_passes <= sel.grid.cost.forward_passes);
});

Deno.test("deno task transfer: MNIST → a generated image folder, both grids, the carried choice scored on the target", async () => {
  // Two classes told apart by brightness, 12 images each, 16×16 gray (the model's input).
  const root = `${tmp}/folder`;
  for (const [c, level] of [["dark", 40], ["bright", 200]] as const) {
    await Deno.mkdir(`${root}/${c}`, { recursive: true });
    for (let i = 0; i < 12; i++) {
      const raw = Uint8Array.from(
        { length: 256 },
        (_, j) => (level + ((i * 37 + j * 11) % 50)) % 256,
      );
      await sharp(raw, { raw: { width: 16, height: 16, channels: 1 } }).toColourspace("b-w").png()
        .toFile(`${root}/${c}/${i}.png`);
    }
  }
  const grid = ["--ts", "10,60", "--blocks", "1,2", "--pools", "1", "--epochs", "2"];
  await run("transfer", [
    ...common,
    ...grid,
    ...["--target", root, "--target-train-percent", "100", "--target-test-percent", "100"],
    ...["--run", "tr"],
  ]);
  const r = await result("transfer", "tr");
  const c = r.config as {
    source: { dataset: string };
    target: { dataset: string; classes: number };
  };
  assertEquals([c.source.dataset, c.target.dataset, c.target.classes], ["mnist", root, 2]);
  type Cell = {
    t: number;
    block: number;
    pool: number;
    val_accuracy: number;
    test_accuracy: number;
  };
  const m = r.metrics as {
    source_cells: Cell[];
    target_cells: Cell[];
    source_best: Cell;
    target_best: Cell;
    target_at_source_choice: Cell;
    accuracy_lost: number;
    test_accuracy: number;
  };
  assertEquals([m.source_cells.length, m.target_cells.length], [4, 4]);
  const best = (cells: Cell[]) => Math.max(...cells.map((x) => x.val_accuracy));
  assertEquals(m.source_best.val_accuracy, best(m.source_cells));
  assertEquals(m.target_best.val_accuracy, best(m.target_cells));
  const at = (x: Cell) => [x.t, x.block, x.pool];
  assertEquals(at(m.target_at_source_choice), at(m.source_best));
  const carried = m.target_cells.find((x) => at(x).join() === at(m.source_best).join())!;
  assertEquals(m.target_at_source_choice.test_accuracy, carried.test_accuracy);
  assertEquals(m.accuracy_lost, m.target_best.test_accuracy - carried.test_accuracy);
  assertEquals(m.test_accuracy, m.target_best.test_accuracy);
  assert(await Deno.stat(`${tmp}/results/transfer/tr-blocks.png`));
  // A rerun resumes both grids from their saved t's.
  const again = await run("transfer", [
    ...common,
    ...grid,
    ...["--target", root, "--target-train-percent", "100", "--target-test-percent", "100"],
    ...["--run", "tr"],
  ]);
  assert(
    /transfer source: resuming/.test(again.stderr) &&
      /transfer target: resuming/.test(again.stderr),
    again.stderr,
  );
  const bad = await scriptCommand("transfer", [...common, ...grid, "--target", "mnist"], { env })
    .output();
  assertEquals(bad.code, 2, dec.decode(bad.stderr));
  assert(/is the source dataset itself/.test(dec.decode(bad.stderr)));
});

Deno.test("deno task finetune and semisup: modes train what they say; mean ± std over subset seeds", async () => {
  const base = ["--weights", `${tmp}/ck/checkpoint.safetensors`, "--quiet"];
  const tiny = [
    "--train-percent",
    "3",
    "--test-percent",
    "10",
    "--val-percent",
    "20",
    "--epochs",
    "1",
  ];
  for (const mode of ["finetune", "frozen", "scratch"]) {
    await run("finetune", [...base, ...tiny, "--mode", mode, "--run", `ft-${mode}`]);
  }
  const ft = await Promise.all(
    ["finetune", "frozen", "scratch"].map((m) => result("finetune", `ft-${m}`)),
  );
  const trained = ft.map((r) => (r.metrics as { trained_params: number }).trained_params);
  // The frozen probe trains the linear head alone; finetune and scratch the same backbone + head.
  assert(trained[1] < trained[0], `${trained}`);
  assertEquals(trained[0], trained[2]);
  for (const r of ft) {
    const acc = (r.metrics as { test_accuracy: number }).test_accuracy;
    assert(acc >= 0 && acc <= 1);
  }
  await run("semisup", [
    ...base,
    ...["--percents", "5", "--subset-seeds", "0,1", "--test-percent", "10", "--epochs", "1"],
    ...["--head-epochs", "1", "--head", "attention:8:1:2:4", "--head-pool", "2"],
    ...["--cache-dir", `${tmp}/cache`, "--state-dir", `${tmp}/semisup-state`, "--run", "ss"],
  ]);
  const labeled: number[] = [];
  for (const m of ["finetune", "frozen-attention", "scratch"]) {
    const r = await result("semisup", `ss-${m}-5pct`);
    const x = r.metrics as {
      test_accuracy: number;
      test_accuracy_std: number;
      per_seed: { seed: number; test_accuracy: number; labeled_images: number }[];
    };
    assertEquals(x.per_seed.map((p) => p.seed), [0, 1]);
    const [a0, a1] = x.per_seed.map((p) => p.test_accuracy);
    assertEquals(x.test_accuracy, (a0 + a1) / 2);
    assert(Math.abs(x.test_accuracy_std - Math.abs(a0 - a1) / Math.SQRT2) < 1e-12);
    labeled.push(...x.per_seed.map((p) => p.labeled_images));
  }
  // 5 % of the embedded MNIST's train split, class-balanced: the same count for every method.
  assert(labeled.every((n) => n === labeled[0]) && labeled[0] > 0, `${labeled}`);
  // Asking for another share later reuses the finished runs and adds only the new ones.
  const before = (await result("semisup", "ss-scratch-5pct")).metrics;
  const again = await run("semisup", [
    ...base,
    ...["--percents", "5,3", "--subset-seeds", "0,1", "--test-percent", "10", "--epochs", "1"],
    ...[
      "--methods",
      "scratch",
      "--head-epochs",
      "1",
      "--head",
      "attention:8:1:2:4",
      "--head-pool",
      "2",
    ],
    ...["--cache-dir", `${tmp}/cache`, "--state-dir", `${tmp}/semisup-state`, "--run", "ss"],
  ]);
  assert(/resuming: 6 runs done/.test(again.stderr), again.stderr);
  assertEquals(again.stderr.match(/subset seed \d: test/g)?.length, 2, "only 3 % × 2 seeds ran");
  assertEquals((await result("semisup", "ss-scratch-5pct")).metrics.per_seed, before.per_seed);
  assertEquals((await result("semisup", "ss-scratch-3pct")).metrics.seeds, 2);
});

globalThis.addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));
