// Reproducibility checks (`deno task repro`): re-run the tiny configuration of every experiment
// with its committed seed into a scratch directory, and compare each fresh results JSON with its
// golden copy under results/golden/. What a run computed must match: names, seed, config and
// artifact names exactly, counts exactly, floats within a tolerance declared per metric with the
// reason it is needed. When and where it ran (env, command, segments, times, timings) is not
// compared. `--update` rewrites the goldens, deliberately.
import { join } from "node:path";
import { writeFileAtomic } from "./io/atomic.ts";
import { parseResult, RESULTS_DIR_ENV } from "./results.ts";

// ---------------------------------------------------------------- the experiment list

/** How far a float may move from its golden value: |fresh - golden| <= abs + rel·|golden|. */
export interface Tolerance {
  readonly rel: number;
  /** @default 0 */
  readonly abs?: number;
  /** Why the value is not bit-reproducible, and why this much. */
  readonly why: string;
}

/** One experiment's tiny configuration and how its results are compared. */
export interface ReproExperiment {
  /** Its golden file is `<golden dir>/<name>.json`. */
  readonly name: string;
  /** The deno task it runs. */
  readonly task: string;
  /** The task's flags; `$TMP` stands for the scratch directory (shared by the experiments). */
  readonly args: readonly string[];
  /** The results file it writes, relative to the results directory. */
  readonly result: string;
  /** Path pattern (segments joined by ".", `*` for one whole or partial segment) -> tolerance. */
  readonly tolerances: Readonly<Record<string, Tolerance>>;
  /** Path patterns left out of the comparison (measurements of the machine, not of the run). */
  readonly ignore?: readonly string[];
}

// Sizing, measured on this project's 2-core machine: the tiny pre-training below (30 steps) gives
// losses that differ by at most 1.8e-8 (relative) between the wasm engine alone (DP_BLAS=0
// DP_ONEDNN=0) and wasm + OpenBLAS + oneDNN, and 2.6e-8 between 2 and 1 BLAS/oneDNN threads;
// sample pixel means by 6e-9. A real change moves them by far more: the learning rate 1% higher
// moves the final loss by 9e-3, clipping off by 1.8e-2.
const ENGINE_SUMS = "float32 sums ordered differently by wasm, OpenBLAS and oneDNN per engine, " +
  "thread count and CPU; measured up to 2.6e-8 here, while a 1% higher learning rate moves it 9e-3";
const LOSS: Tolerance = { rel: 1e-4, why: ENGINE_SUMS };

/** The tiny configuration of every experiment, in order (sample reads pretrain's checkpoint). */
export const EXPERIMENTS: readonly ReproExperiment[] = [
  {
    name: "pretrain_tiny",
    task: "pretrain",
    args: [
      "--config",
      "tiny",
      "--steps",
      "30",
      "--samples",
      "4",
      "--sample-steps",
      "4",
      "--seed",
      "1",
      "--out",
      "$TMP/pretrain_tiny",
      "--quiet",
    ],
    result: "pretrain/mnist-tiny-seed1.json",
    tolerances: {
      "metrics.first_loss": LOSS,
      "metrics.final_loss": LOSS,
      "metrics.min_loss": LOSS,
      "metrics.loss_curve.points.*.1": LOSS,
    },
    ignore: ["metrics.images_per_s", "metrics.engine"],
  },
  {
    name: "sample_tiny",
    task: "sample",
    args: [
      "--checkpoint",
      "$TMP/pretrain_tiny/checkpoint.safetensors",
      "--n",
      "4",
      "--steps",
      "3",
      "--method",
      "ddpm",
      "--seed",
      "1",
      "--run",
      "tiny",
    ],
    result: "sample/tiny.json",
    tolerances: {
      "metrics.pixel_mean": {
        rel: 1e-4,
        abs: 1e-6,
        why: ENGINE_SUMS + "; abs 1e-6 as a mean of pixels in [-1, 1] can sit near 0, where a " +
          "relative bound alone asks for more than float32 resolution",
      },
    },
  },
  {
    name: "probe_tiny",
    task: "probe",
    args: [
      ...["--weights", "$TMP/pretrain_tiny/checkpoint.safetensors", "--dataset", "mnist"],
      ...["--train-percent", "5", "--test-percent", "20", "--epochs", "3"],
      ...["--t", "20", "--block", "3", "--pool", "2", "--no-cache", "--seed", "1", "--run", "tiny"],
      "--quiet",
    ],
    result: "probe/tiny.json",
    tolerances: {
      "metrics.train_loss_final": LOSS,
      "metrics.loss_curve.*.1": LOSS,
      ...Object.fromEntries(["metrics.test_accuracy", "metrics.val_accuracy"].map((k) => [k, {
        rel: 0,
        abs: 0.01,
        why:
          "a fraction of argmax hits: the engines' float sums can flip an argmax at a near tie " +
          "(one image of 400 moves it 0.0025); a real change moves many",
      }])),
    },
    // The tiny checkpoint's bytes hold its own start times, so its hash differs per run.
    ignore: ["config.weights_sha256", "metrics.feature_images_per_s"],
  },
  {
    name: "knn_tiny",
    task: "knn",
    args: [
      ...["--weights", "$TMP/pretrain_tiny/checkpoint.safetensors", "--dataset", "mnist"],
      ...["--train-percent", "10", "--test-percent", "20", "--ts", "20,200", "--blocks", "3"],
      ...["--k", "5,20", "--no-cache", "--seed", "1", "--run", "tiny", "--quiet"],
    ],
    result: "knn/tiny.json",
    tolerances: {
      "metrics.test_accuracy": {
        rel: 0,
        abs: 0.02,
        why: "a fraction of hits: near-tied similarities of the 30-step model's features swap " +
          "neighbours across CPUs (oneDNN and OpenBLAS pick kernels per ISA): 0.015 (6 of 401 " +
          "images) between an AMD EPYC and an Intel Xeon with AMX; a broken kNN moves far more",
      },
      "metrics.cells.*.top*": {
        rel: 0,
        abs: 0.02,
        why: "fractions of hits, as test_accuracy",
      },
    },
    ignore: ["config.weights_sha256", "metrics.feature_images_per_s"],
  },
];

// ---------------------------------------------------------------- comparing

/** The top-level fields compared; the rest say when and where a run ran. */
export const COMPARED = ["experiment", "run", "seed", "config", "metrics", "artifacts"] as const;

/** One difference between a golden and a fresh results file. */
export interface Diff {
  readonly path: string;
  /** undefined: absent on that side. */
  readonly golden: unknown;
  readonly fresh: unknown;
  /** The rule broken, e.g. "exact" or "relative difference 2.1e-3 > 1e-4 (why...)". */
  readonly rule: string;
}

/** Whether a concrete path (segments) matches a pattern such as `metrics.loss_curve.points.*.1`. */
export function pathMatches(pattern: string, path: readonly string[]): boolean {
  const segs = pattern.split(".");
  if (segs.length !== path.length) return false;
  return segs.every((s, i) =>
    s.includes("*")
      ? new RegExp(
        `^${s.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")}$`,
      )
        .test(path[i])
      : s === path[i]
  );
}

const isObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === "object" && x !== null && !Array.isArray(x);

/**
 * Compare a fresh results JSON with its golden copy over `COMPARED`, by `exp`'s rules: integers,
 * strings, booleans and floats without a declared tolerance exactly; floats with one within it.
 * @returns every difference, in the golden file's key order
 */
export function compareResults(
  golden: unknown,
  fresh: unknown,
  exp: Pick<ReproExperiment, "tolerances" | "ignore">,
): Diff[] {
  const diffs: Diff[] = [];
  const tolerances = Object.entries(exp.tolerances);
  const walk = (g: unknown, f: unknown, path: string[]) => {
    const at = path.join(".");
    if ((exp.ignore ?? []).some((p) => pathMatches(p, path))) return;
    if (g === undefined || f === undefined) {
      if (g !== f) diffs.push({ path: at, golden: g, fresh: f, rule: "present on both sides" });
      return;
    }
    if (isObject(g) && isObject(f)) {
      const keys = [...new Set([...Object.keys(g), ...Object.keys(f)])];
      for (const k of keys) walk(g[k], f[k], [...path, k]);
      return;
    }
    if (Array.isArray(g) && Array.isArray(f)) {
      if (g.length !== f.length) {
        diffs.push({
          path: `${at}.length`,
          golden: g.length,
          fresh: f.length,
          rule: "exact",
        });
      }
      for (let i = 0; i < Math.min(g.length, f.length); i++) walk(g[i], f[i], [...path, `${i}`]);
      return;
    }
    if (typeof g === "number" && typeof f === "number") {
      const tol = tolerances.find(([p]) => pathMatches(p, path))?.[1];
      if (!tol || (Number.isInteger(g) && Number.isInteger(f))) {
        if (g !== f) {
          diffs.push({
            path: at,
            golden: g,
            fresh: f,
            rule: tol ? "exact (both integers)" : "exact (no tolerance declared for this metric)",
          });
        }
        return;
      }
      const bound = (tol.abs ?? 0) + tol.rel * Math.abs(g);
      if (!(Math.abs(f - g) <= bound)) {
        const rel = Math.abs(f - g) / Math.max(Math.abs(g), Number.MIN_VALUE);
        diffs.push({
          path: at,
          golden: g,
          fresh: f,
          rule: `relative difference ${rel.toExponential(2)} > tolerance rel ${tol.rel}` +
            `${tol.abs ? ` + abs ${tol.abs}` : ""} (${tol.why})`,
        });
      }
      return;
    }
    if (g !== f) diffs.push({ path: at, golden: g, fresh: f, rule: "exact" });
  };
  const G = isObject(golden) ? golden : {}, F = isObject(fresh) ? fresh : {};
  for (const k of COMPARED) walk(G[k], F[k], [k]);
  return diffs;
}

const show = (v: unknown) => (v === undefined ? "(absent)" : JSON.stringify(v));

/** A readable drift report: the golden file, then one line per metric with both values. */
export function formatDiffs(goldenPath: string, freshPath: string, diffs: readonly Diff[]): string {
  return [
    `drift: ${goldenPath} (golden) vs ${freshPath} (fresh), ${diffs.length} difference(s):`,
    ...diffs.map((d) => `  ${d.path}: golden ${show(d.golden)}, fresh ${show(d.fresh)}; ${d.rule}`),
  ].join("\n");
}

/** Replace every occurrence of `dir` in the strings of a JSON value by `$TMP`. */
export function normalise<T>(x: T, dir: string): T {
  return JSON.parse(JSON.stringify(x).replaceAll(JSON.stringify(dir).slice(1, -1), "$TMP"));
}

// ---------------------------------------------------------------- running

/** Runs one command; returns its exit code and its output (stdout and stderr). */
export type Exec = (
  task: string,
  args: readonly string[],
  env: Readonly<Record<string, string>>,
) => Promise<{ readonly code: number; readonly output: string }>;

const repoRoot = new URL("..", import.meta.url).pathname;

/** `deno task <task> <args>` in the repository, with `env` added (needs --allow-run). */
export const denoTask: Exec = async (task, args, env) => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", task, ...args],
    cwd: repoRoot,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, output: dec.decode(out.stdout) + dec.decode(out.stderr) };
};

export interface ReproOptions {
  /** Where the goldens are. */
  readonly goldenDir: string;
  /** Rewrite the goldens from the fresh runs instead of comparing. */
  readonly update?: boolean;
  /** Keep the scratch directory (its path is logged). */
  readonly keep?: boolean;
  /** @default denoTask */
  readonly exec?: Exec;
  /** @default console.error */
  readonly log?: (line: string) => void;
}

/** What became of one experiment. */
export interface ReproOutcome {
  readonly name: string;
  readonly status: "pass" | "drift" | "updated" | "failed";
  readonly diffs: readonly Diff[];
  /** The drift report or the failure, readable. */
  readonly message: string;
  readonly seconds: number;
}

/**
 * Run every experiment in order into one scratch directory (results under `$TMP/results`, never
 * the project's results/), then compare each fresh results file with its golden, or rewrite the
 * golden with `update`. A failed command fails its experiment; later ones still run.
 */
export async function runRepro(
  experiments: readonly ReproExperiment[],
  opts: ReproOptions,
): Promise<ReproOutcome[]> {
  const exec = opts.exec ?? denoTask;
  const log = opts.log ?? ((s: string) => console.error(s));
  const tmp = await Deno.makeTempDir({ prefix: "repro-" });
  const results = join(tmp, "results");
  const outcomes: ReproOutcome[] = [];
  try {
    for (const exp of experiments) {
      const t0 = performance.now();
      const seconds = () => Math.round(performance.now() - t0) / 1000;
      const golden = join(opts.goldenDir, `${exp.name}.json`);
      const args = exp.args.map((a) => a.replaceAll("$TMP", tmp));
      const outcome = (status: ReproOutcome["status"], message: string, diffs: Diff[] = []) => {
        outcomes.push({ name: exp.name, status, diffs, message, seconds: seconds() });
        log(`repro: ${exp.name}: ${status} (${seconds()} s)${message ? `\n${message}` : ""}`);
      };
      const run = await exec(exp.task, args, { [RESULTS_DIR_ENV]: results });
      if (run.code !== 0) {
        const tail = run.output.trimEnd().split("\n").slice(-15).join("\n");
        outcome("failed", `deno task ${exp.task} exited with ${run.code}:\n${tail}`);
        continue;
      }
      const freshPath = join(results, exp.result);
      let fresh: unknown;
      try {
        fresh = normalise(parseResult(await Deno.readTextFile(freshPath), freshPath), tmp);
      } catch (e) {
        outcome("failed", `no valid results file: ${(e as Error).message}`);
        continue;
      }
      let expected: unknown;
      try {
        expected = JSON.parse(await Deno.readTextFile(golden));
      } catch (e) {
        if (!opts.update) {
          outcome(
            "failed",
            `cannot read golden ${golden} (${(e as Error).message}); ` +
              "write it with `deno task repro --update`",
          );
          continue;
        }
      }
      const diffs = expected === undefined ? [] : compareResults(expected, fresh, exp);
      if (opts.update) {
        await writeFileAtomic(golden, JSON.stringify(fresh, null, 2) + "\n");
        const was = expected === undefined
          ? "new"
          : diffs.length === 0
          ? "unchanged within tolerance"
          : `was:\n${formatDiffs(golden, `$TMP/results/${exp.result}`, diffs)}`;
        outcome("updated", `wrote ${golden} (${was})`, diffs);
        continue;
      }
      if (diffs.length === 0) outcome("pass", "");
      else outcome("drift", formatDiffs(golden, `$TMP/results/${exp.result}`, diffs), diffs);
    }
  } finally {
    if (opts.keep) log(`repro: scratch directory kept: ${tmp}`);
    else await Deno.remove(tmp, { recursive: true });
  }
  return outcomes;
}
