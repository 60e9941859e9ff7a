// The results schema: one JSON file per run at <resultsDir>/<experiment>/<run>.json, the only input
// of the report. `startRun` records config, seed and environment; `finishRun` adds metrics,
// timings (seconds) and artifacts, validates, and writes atomically. Artifact paths are stored
// relative to the JSON file's directory, so a results tree can be moved as a whole.
import * as E from "fp-ts/lib/Either.js";
import * as A from "fp-ts/lib/Array.js";
import * as NEA from "fp-ts/lib/NonEmptyArray.js";
import { sequenceS } from "fp-ts/lib/Apply.js";
import { basename, dirname, join, relative, resolve } from "node:path";
import * as os from "node:os";
import { writeFileAtomic } from "./io/atomic.ts";
import { BLAS_ENV, CORETYPE_ENV, processEnv } from "./engine/blas/openblas.ts";
import { ONEDNN_ENV } from "./engine/blas/onednn_core.ts";
import { WINOGRAD_ENV } from "./engine/blas/onednn.ts";

export const SCHEMA_VERSION = 1;
/** Environment variable overriding the results directory (tests point it at a temp dir). */
export const RESULTS_DIR_ENV = "DP_RESULTS_DIR";

export interface RunEnv {
  readonly backend: string;
  readonly engine: string;
  /** The engine's details: native library paths and thread counts. */
  readonly engine_details?: Readonly<Record<string, string | number | boolean>>;
  readonly deno: string;
  readonly tfjs: string;
  /** `git rev-parse HEAD` ("unknown" without git); files older than `dirty` append `-dirty`. */
  readonly commit: string;
  /** Whether tracked files differed from the commit. */
  readonly dirty?: boolean;
  /** CPU model, as the OS names it. */
  readonly cpu?: string;
  /** The CPU's vector-ISA flags (avx2, avx512*, amx*, ...), where `lscpu` may be run. */
  readonly cpu_flags?: readonly string[];
  readonly cpus: number;
  readonly os: string;
}

/**
 * One stretch of a run between a start and a stop (a resumed run has several): which steps it
 * took, on what code, engine and machine, and how long its training took.
 */
export interface Segment {
  readonly from_step: number;
  readonly to_step: number;
  readonly commit: string;
  readonly dirty: boolean | null;
  readonly engine: string;
  readonly engine_details: Readonly<Record<string, string | number | boolean>>;
  readonly cpu: string;
  readonly cpus: number;
  readonly started: string;
  readonly finished: string;
  /** Seconds spent in training steps (and checkpoints); null where it was not recorded. */
  readonly train_s: number | null;
  /** Set where the segment was reconstructed after the fact, saying from what. */
  readonly note?: string;
}

/** One run's results file. Values of config and metrics are plain JSON. */
export interface RunResult {
  readonly schema: 1;
  readonly experiment: string;
  readonly run: string;
  /** The command that reproduces the run, e.g. `deno task pretrain --config tiny --seed 1`. */
  readonly command?: string;
  readonly config: Readonly<Record<string, unknown>>;
  readonly seed: number;
  readonly env: RunEnv;
  /** ISO 8601 times. */
  readonly started: string;
  readonly finished: string;
  readonly metrics: Readonly<Record<string, unknown>>;
  /** Seconds per phase; `total_s` is the wall time from `startRun` to `finishRun` unless given. */
  readonly timings: Readonly<Record<string, number>>;
  readonly artifacts: readonly string[];
  /** A resumable run's segments, in order. */
  readonly segments?: readonly Segment[];
}

// ---------------------------------------------------------------- validation

type V<T> = E.Either<NEA.NonEmptyArray<string>, T>;
const applicative = E.getApplicativeValidation(NEA.getSemigroup<string>());
const errors = <T>(v: V<T>): string[] => E.isLeft(v) ? v.left : [];
const NAME = /^[A-Za-z0-9_][A-Za-z0-9._=+-]*$/;

const isObject = (x: unknown): x is Record<string, unknown> =>
  typeof x === "object" && x !== null && !Array.isArray(x);

// Problems that would make a value not survive JSON unchanged (NaN, typed arrays, undefined...).
function jsonProblems(x: unknown, path: string): string[] {
  if (x === null || typeof x === "string" || typeof x === "boolean") return [];
  if (typeof x === "number") {
    return Number.isFinite(x) ? [] : [`${path} is ${x}, not a finite number`];
  }
  if (Array.isArray(x)) return x.flatMap((v, i) => jsonProblems(v, `${path}[${i}]`));
  if (isObject(x) && [Object.prototype, null].includes(Object.getPrototypeOf(x))) {
    return Object.entries(x).flatMap(([k, v]) => jsonProblems(v, `${path}.${k}`));
  }
  const kind = typeof x === "object" ? (x as object).constructor?.name ?? "object" : typeof x;
  return [`${path} is a ${kind}, not plain JSON`];
}

const check = <T>(ok: boolean, x: unknown, path: string, what: string): V<T> =>
  ok ? E.right(x as T) : E.left(NEA.of(`${path} should be ${what}, got ${JSON.stringify(x)}`));
const collect = <T>(problems: string[], x: T): V<T> =>
  A.isNonEmpty(problems) ? E.left(problems) : E.right(x);

const str = (x: unknown, path: string) => check<string>(typeof x === "string", x, path, "a string");
const name = (x: unknown, path: string) =>
  check<string>(typeof x === "string" && NAME.test(x), x, path, "a file-safe name");
const int = (x: unknown, path: string) =>
  check<number>(Number.isSafeInteger(x), x, path, "an integer");
const time = (x: unknown, path: string) =>
  check<string>(typeof x === "string" && !Number.isNaN(Date.parse(x)), x, path, "an ISO time");
const record = (x: unknown, path: string): V<Record<string, unknown>> =>
  isObject(x) ? collect(jsonProblems(x, path), x) : check(false, x, path, "an object");
const seconds = (x: unknown, path: string): V<Record<string, number>> =>
  isObject(x)
    ? collect(
      Object.entries(x).flatMap(([k, v]) =>
        errors(check(typeof v === "number" && v >= 0 && v < Infinity, v, `${path}.${k}`, "seconds"))
      ),
      x as Record<string, number>,
    )
    : check(false, x, path, "an object");
const strings = (x: unknown, path: string): V<string[]> =>
  Array.isArray(x)
    ? collect(x.flatMap((v, i) => errors(str(v, `${path}[${i}]`))), x as string[])
    : check(false, x, path, "an array of strings");
const optional = <T>(x: unknown, f: (x: unknown) => V<T>): V<T | undefined> =>
  x === undefined ? E.right(undefined) : f(x);

const segments = (x: unknown): V<Segment[]> =>
  Array.isArray(x)
    ? collect(
      x.flatMap((s, i) => errors(record(s, `segments[${i}]`))),
      x as Segment[],
    )
    : check(false, x, "segments", "an array");

function env(x: unknown): V<RunEnv> {
  if (!isObject(x)) return check(false, x, "env", "an object");
  return sequenceS(applicative)({
    backend: str(x.backend, "env.backend"),
    engine: str(x.engine, "env.engine"),
    deno: str(x.deno, "env.deno"),
    tfjs: str(x.tfjs, "env.tfjs"),
    commit: str(x.commit, "env.commit"),
    cpus: int(x.cpus, "env.cpus"),
    os: str(x.os, "env.os"),
    engine_details: optional(x.engine_details, (v) => record(v, "env.engine_details")),
    dirty: optional(
      x.dirty,
      (v) => check<boolean>(typeof v === "boolean", v, "env.dirty", "a boolean"),
    ),
    cpu: optional(x.cpu, (v) => str(v, "env.cpu")),
    cpu_flags: optional(
      x.cpu_flags,
      (v) =>
        check<string[]>(
          Array.isArray(v) && v.every((f) => typeof f === "string"),
          v,
          "env.cpu_flags",
          "an array of strings",
        ),
    ),
  }) as V<RunEnv>;
}

/** Check a parsed JSON value against the schema, collecting every problem. */
export function validateResult(x: unknown): E.Either<string[], RunResult> {
  if (!isObject(x)) return E.left(["results file is not a JSON object"]);
  return sequenceS(applicative)({
    schema: check<1>(x.schema === SCHEMA_VERSION, x.schema, "schema", `${SCHEMA_VERSION}`),
    experiment: name(x.experiment, "experiment"),
    run: name(x.run, "run"),
    command: optional(x.command, (v) => str(v, "command")),
    config: record(x.config, "config"),
    seed: int(x.seed, "seed"),
    env: env(x.env),
    started: time(x.started, "started"),
    finished: time(x.finished, "finished"),
    metrics: record(x.metrics, "metrics"),
    timings: seconds(x.timings, "timings"),
    artifacts: strings(x.artifacts, "artifacts"),
    segments: optional(x.segments, segments),
  }) as E.Either<string[], RunResult>;
}

/**
 * Parse and validate a results file's text.
 * @throws one-line Error naming the file and every problem
 */
export function parseResult(text: string, path: string): RunResult {
  const r = E.chain(validateResult)(
    E.tryCatch((): unknown => JSON.parse(text), (e) => [`bad JSON (${(e as Error).message})`]),
  );
  if (E.isLeft(r)) throw new Error(`Invalid results file "${path}": ${r.left.join("; ")}`);
  return r.right;
}

// ---------------------------------------------------------------- writing

/** The results directory: the option, else $DP_RESULTS_DIR, else `results`. */
export function resultsDir(dir?: string): string {
  return dir || Deno.env.get(RESULTS_DIR_ENV) || "results"; // needs --allow-env (-E)
}

/** The toolkit's commit and whether tracked files differ from it ("unknown", null without git). */
async function gitState(): Promise<{ commit: string; dirty: boolean | null }> {
  const repo = new URL("..", import.meta.url).pathname; // the toolkit's own repository
  const git = async (...args: string[]) => {
    const out = await new Deno.Command("git", { args, cwd: repo, stdout: "piped", stderr: "null" })
      .output();
    if (!out.success) throw new Error(`git ${args[0]} failed`);
    return new TextDecoder().decode(out.stdout).trim();
  };
  try {
    const commit = await git("rev-parse", "HEAD");
    const dirty = (await git("status", "--porcelain", "--untracked-files=no")) !== "";
    return { commit, dirty };
  } catch { // git missing, no permission, or not a repository
    return { commit: "unknown", dirty: null };
  }
}

/** The CPU model (node:os, which tasks may read with --allow-sys), or "unknown". */
export function cpuModel(): string {
  try {
    return os.cpus()[0]?.model?.trim() || "unknown";
  } catch {
    /* no --allow-sys */
    return "unknown";
  }
}

/** Flags that decide which kernels the native libraries pick (x86 vector ISAs). */
const ISA_FLAG = /^(sse4_2|avx|avx2|fma|f16c|avx512.*|avx_vnni|amx.*)$/;

/**
 * The CPU's vector-ISA flags from `lscpu` (Deno will not read /proc/cpuinfo short of
 * --allow-all), or undefined where running it is not permitted (scripts allow git only) or fails.
 */
function cpuFlags(): string[] | undefined {
  try {
    if (Deno.permissions.querySync({ name: "run", command: "lscpu" }).state !== "granted") {
      return undefined;
    }
    const out = new Deno.Command("lscpu", { stdout: "piped", stderr: "null" }).outputSync();
    const line = new TextDecoder().decode(out.stdout).split("\n").find((l) =>
      l.startsWith("Flags:")
    );
    return line?.slice("Flags:".length).trim().split(/\s+/).filter((f) => ISA_FLAG.test(f));
  } catch { // no lscpu (not Linux), or it failed
    return undefined;
  }
}

/** The engine a run used, as `initEngine` reports it; a run without tensors passes none. */
export interface EngineRecord {
  readonly backend: string;
  readonly engine: string;
  readonly tfjs: string;
  readonly details?: Readonly<Record<string, string | number | boolean>>;
}

/** Capture the environment: engine, Deno, git commit, CPU, OS. */
export async function captureEnv(engine?: EngineRecord): Promise<RunEnv> {
  let release = "";
  try {
    release = ` ${Deno.osRelease()}`;
  } catch { /* no --allow-sys */ }
  const git = await gitState();
  const flags = cpuFlags();
  return {
    backend: engine?.backend ?? "none",
    engine: engine?.engine ?? "none",
    engine_details: { ...engine?.details },
    deno: Deno.version.deno,
    tfjs: engine?.tfjs ?? "none",
    commit: git.commit,
    ...(git.dirty === null ? {} : { dirty: git.dirty }),
    cpu: cpuModel(),
    ...(flags ? { cpu_flags: flags } : {}),
    cpus: navigator.hardwareConcurrency,
    os: `${Deno.build.os}-${Deno.build.arch}${release}`,
  };
}

/**
 * Environment variables that choose the engine's kernels, and so a run's last bits: a run made
 * under one of them is only reproduced under it too.
 */
export const ENGINE_ENV = [
  "DP_BACKEND", // lib/engine/backend.ts's BACKEND_ENV (importing it would load tfjs here)
  BLAS_ENV,
  ONEDNN_ENV,
  WINOGRAD_ENV,
  // Instruction-set caps, which a bench may set to stand in for an older CPU: oneDNN's (both
  // spellings), OpenBLAS's kernel set, the attention kernels' width (lib/engine/native/
  // attention.c) and PyTorch's own vector kernels (the bench's peer).
  "ONEDNN_MAX_CPU_ISA",
  "DNNL_MAX_CPU_ISA",
  CORETYPE_ENV,
  "DP_ATTENTION_ISA",
  "ATEN_CPU_CAPABILITY",
] as const;

/**
 * The command line that reruns this process's task: `deno task <task> <its flags>`, after the
 * `ENGINE_ENV` variables that are set (e.g. `DP_ONEDNN_WINOGRAD=0 deno task pretrain ...`).
 */
export function commandLine(
  task: string,
  args: readonly string[] = Deno.args,
  env: (name: string) => string | undefined = processEnv,
): string {
  const quote = (
    a: string,
  ) => (/^[A-Za-z0-9_./:=+,@%-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  const set = ENGINE_ENV.flatMap((k) => {
    const v = env(k);
    return v ? [`${k}=${quote(v)}`] : [];
  });
  return [...set, "deno", "task", task, ...args.map(quote)].join(" ");
}

/** A run in progress, from `startRun`: the leading fields of its results, and a clock. */
export type RunHandle =
  & Pick<RunResult, "experiment" | "run" | "command" | "config" | "seed" | "env" | "started">
  & { readonly t0: number };

/** What `startRun` records besides names, config and seed. */
export interface StartOptions {
  /** The engine from `initEngine` (none for a run without tensors). */
  readonly engine?: EngineRecord;
  /** The task whose command line (this process's flags) reproduces the run. */
  readonly task?: string;
}

/**
 * Start a run: check the names and config, and capture the environment and command line.
 * @throws if a name is not file-safe or the config is not plain JSON
 */
export async function startRun(
  experiment: string,
  run: string,
  config: object,
  seed: number,
  opts: StartOptions = {},
): Promise<RunHandle> {
  const problems = [
    ...errors(name(experiment, "experiment")),
    ...errors(name(run, "run")),
    ...errors(int(seed, "seed")),
    ...jsonProblems(config, "config"),
  ];
  if (problems.length > 0) throw new Error(`Cannot start run: ${problems.join("; ")}`);
  return {
    experiment,
    run,
    command: commandLine(opts.task ?? experiment),
    config: structuredClone(config) as Record<string, unknown>,
    seed,
    env: await captureEnv(opts.engine),
    started: new Date().toISOString(),
    t0: performance.now(),
  };
}

/** What a run produced. */
export interface RunOutcome {
  readonly metrics: object;
  /** Seconds per phase. */
  readonly timings?: Readonly<Record<string, number>>;
  /** Files the run wrote, as paths relative to the working directory (or absolute). */
  readonly artifacts?: readonly string[];
  readonly segments?: readonly Segment[];
}

/**
 * Finish a run: validate and write `<resultsDir>/<experiment>/<run>.json` atomically.
 * @returns the path written
 * @throws one-line Error listing every schema problem (nothing is written then)
 */
export async function finishRun(
  h: RunHandle,
  outcome: RunOutcome,
  opts: { readonly resultsDir?: string } = {},
): Promise<string> {
  const path = join(resultsDir(opts.resultsDir), h.experiment, `${h.run}.json`);
  const { t0, ...head } = h;
  const result = {
    schema: SCHEMA_VERSION,
    ...head,
    finished: new Date().toISOString(),
    metrics: outcome.metrics,
    timings: { total_s: Math.round(performance.now() - t0) / 1000, ...outcome.timings },
    artifacts: (outcome.artifacts ?? []).map((a) => relative(dirname(resolve(path)), resolve(a))),
    ...(outcome.segments ? { segments: outcome.segments } : {}),
  };
  const checked = validateResult(result);
  if (E.isLeft(checked)) {
    throw new Error(`Cannot write results "${path}": ${checked.left.join("; ")}`);
  }
  await writeFileAtomic(path, JSON.stringify(checked.right, null, 2) + "\n");
  return path;
}

// ---------------------------------------------------------------- reading

/** A results file and where it was read from. */
export interface LoadedResult {
  readonly path: string;
  readonly result: RunResult;
}

async function* jsonFiles(dir: string): AsyncGenerator<string> {
  for await (const entry of Deno.readDir(dir)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) yield* jsonFiles(path);
    else if (entry.isFile && entry.name.endsWith(".json") && !entry.name.startsWith(".")) {
      yield path;
    }
  }
}

/**
 * Read every `*.json` under `dir` (recursively), sorted by path. A missing directory gives no
 * results; invalid files are skipped and described, one line each, in `problems`.
 */
export async function readAllResults(
  dir: string,
): Promise<{ results: LoadedResult[]; problems: string[] }> {
  let paths: string[];
  try {
    paths = (await Array.fromAsync(jsonFiles(dir))).sort();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return { results: [], problems: [] };
    throw e;
  }
  const results: LoadedResult[] = [];
  const problems: string[] = [];
  for (const path of paths) {
    try {
      results.push({ path, result: parseResult(await Deno.readTextFile(path), path) });
    } catch (e) {
      problems.push((e as Error).message);
    }
  }
  return { results, problems };
}

/**
 * The run a weights file belongs to, file-safe: `checkpoints/pretrain/<run>/checkpoint.safetensors`
 * and `results/pretrain/<run>.weights.safetensors` both give `<run>`.
 */
export function runStem(weights: string): string {
  const folder = basename(dirname(resolve(weights)));
  const file = basename(weights).replace(/\.(weights\.)?safetensors$/, "");
  const stem = file === "checkpoint" && folder ? folder : file;
  return stem.replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[.-]+/, "") || "checkpoint";
}
