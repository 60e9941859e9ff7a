// deno task repro: re-run the tiny configuration of every experiment (lib/repro.ts EXPERIMENTS)
// with its committed seed in a scratch directory and compare each fresh results JSON with its
// golden under results/golden/; exits 1 and prints the differences on drift. --update rewrites
// the goldens from fresh runs (review the printed changes, then commit them).
import { type FlagSpecs, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { EXPERIMENTS, runRepro } from "../lib/repro.ts";

const FLAGS = {
  // Every script takes --seed; each experiment here runs with its own committed seed instead.
  seed: {
    kind: "int",
    default: 0,
    help: "accepted for uniformity (each experiment runs with its committed seed)",
  },
  update: { kind: "boolean", help: "rewrite the goldens from fresh runs instead of comparing" },
  only: {
    kind: "string",
    help: `comma-separated experiments to run: ${EXPERIMENTS.map((e) => e.name).join(", ")} ` +
      "(default: all, in order; sample_tiny needs pretrain_tiny)",
  },
  golden: { kind: "string", default: "results/golden", help: "directory of the golden files" },
  keep: { kind: "boolean", help: "keep the scratch directory of the fresh runs" },
} as const satisfies FlagSpecs;

async function main(): Promise<void> {
  const a = parseCli(
    "repro",
    "Re-run every experiment's tiny configuration and compare it with the committed goldens.",
    FLAGS,
  );
  const names = a.only ? a.only.split(",").map((s) => s.trim()) : EXPERIMENTS.map((e) => e.name);
  const unknown = names.filter((n) => !EXPERIMENTS.some((e) => e.name === n));
  if (unknown.length > 0) {
    throw new UsageError(
      `--only: unknown experiment(s) ${unknown.map((n) => `"${n}"`).join(", ")}`,
    );
  }
  const t0 = performance.now();
  const outcomes = await runRepro(EXPERIMENTS.filter((e) => names.includes(e.name)), {
    goldenDir: a.golden,
    update: a.update,
    keep: a.keep,
  });
  const bad = outcomes.filter((o) => o.status === "drift" || o.status === "failed");
  const s = ((performance.now() - t0) / 1000).toFixed(1);
  console.error(
    `repro: ${outcomes.length - bad.length} of ${outcomes.length} ${
      a.update ? "updated" : "reproduced"
    }` + `${
      bad.length
        ? `, ${bad.length} drifted or failed (${bad.map((o) => o.name).join(", ")})`
        : ""
    } in ${s} s`,
  );
  if (bad.length > 0) Deno.exit(1);
}

if (import.meta.main) await runMain(main);
