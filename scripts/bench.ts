// Benchmarks: run the suites under bench/ and write one results JSON per suite to
// <results>/bench/<suite>-<time>.json (metrics = the suite's named measurements).
//   deno task bench [--suite kernels|blas|models|profile|adm256|all] [--repeats N] [--quick] [--out DIR]
import { COMMON_FLAGS, parseCli, runMain, UsageError } from "../lib/cli.ts";
import { initEngine } from "../lib/engine/mod.ts";
import { type Precision, PRECISIONS } from "../lib/engine/blas/precision.ts";
import { finishRun, resultsDir, startRun } from "../lib/results.ts";
import { suite as blas } from "../bench/blas.ts";
import { suite as kernels } from "../bench/kernels.ts";
import { suite as models } from "../bench/models.ts";
import { suite as profile } from "../bench/profile.ts";
import { suite as adm256 } from "../bench/adm256.ts";

/** Options the script passes to every suite; a suite may ignore some. */
interface SuiteOptions {
  readonly quick?: boolean;
  readonly repeats?: number;
  readonly log?: boolean;
  /** Precisions of the products to measure (the models suite; the others run fp32). */
  readonly precisions?: readonly Precision[];
}

/**
 * A bench suite: a module under bench/ exporting `suite`. `run` initialises the engine it needs,
 * times with a warm-up and the median of repeats, and returns JSON-safe named measurements
 * (units in the key: `_ms`, `_gflops`, `_ns_per_el`; ratios bare).
 */
interface BenchSuite {
  readonly name: string;
  readonly description: string;
  run(opts: SuiteOptions): Promise<Readonly<Record<string, unknown>>>;
}

// The registry: add a suite here once its module exists (e.g. bench/models.ts).
const SUITES: readonly BenchSuite[] = [kernels, blas, models, profile, adm256];

const FLAGS = {
  ...COMMON_FLAGS,
  suite: {
    kind: "string",
    default: "all",
    help: `suite to run: ${SUITES.map((s) => s.name).join(" | ")} | all`,
    choices: [...SUITES.map((s) => s.name), "all"],
  },
  repeats: {
    kind: "int",
    min: 1,
    help: "timed repetitions after the warm-up, median kept (default: per suite)",
  },
  quick: { kind: "boolean", help: "small shapes and few repetitions (a smoke run)" },
  precision: {
    kind: "string",
    default: "all",
    help: "models suite: products in fp32, bf16 (where the CPU has bf16 instructions) or all",
    choices: [...PRECISIONS, "all"],
  },
  out: {
    kind: "string",
    help: "results directory (default: $DP_RESULTS_DIR or results); writes <out>/bench/*.json",
  },
} as const;

const stamp = () => new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");

async function main(): Promise<void> {
  const about = SUITES.map((s) => `  ${s.name.padEnd(8)} ${s.description}`).join("\n");
  const a = parseCli("bench", `Time the engine's kernels on wasm. Suites:\n${about}`, FLAGS);
  if (a.backend && a.backend !== "wasm") {
    throw new UsageError(`--backend: the bench suites measure wasm kernels, got "${a.backend}"`);
  }
  await initEngine({ backend: "wasm", announce: false }); // the suites announce it
  const chosen = a.suite === "all" ? SUITES : SUITES.filter((s) => s.name === a.suite);
  for (const s of chosen) {
    const precisions = a.precision === "all" ? PRECISIONS : [a.precision as Precision];
    const config = { suite: s.name, quick: a.quick, repeats: a.repeats ?? null, precisions };
    const handle = await startRun("bench", `${s.name}-${stamp()}`, config, a.seed);
    console.error(`bench ${s.name}: ${s.description}`);
    const t0 = performance.now();
    const metrics = await s.run({ quick: a.quick, repeats: a.repeats, log: true, precisions });
    const path = await finishRun(
      handle,
      { metrics, timings: { run_s: (performance.now() - t0) / 1000 } },
      { resultsDir: resultsDir(a.out) },
    );
    console.log(path);
  }
}

if (import.meta.main) await runMain(main);
