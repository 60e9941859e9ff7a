// Command-line parsing shared by every script: node:util parseArgs (JSR is unreachable here),
// typed flag specs, `--help` generated from the specs, and validation that reports every bad
// flag at once (fp-ts validation) instead of stopping at the first.
import { parseArgs } from "node:util";
import * as E from "fp-ts/lib/Either.js";
import * as NEA from "fp-ts/lib/NonEmptyArray.js";

/**
 * The allowed range of a numeric flag: at most one lower bound (`min` or `minExclusive`) and one
 * upper bound (`max` or `maxExclusive`). Values outside it are usage errors naming the flag.
 */
export interface Bounds {
  /** Smallest allowed value. */
  readonly min?: number;
  /** Largest allowed value. */
  readonly max?: number;
  /** Values must be above this one (e.g. 0 for a learning rate). */
  readonly minExclusive?: number;
  /** Values must be below this one (e.g. 1 for a dropout probability). */
  readonly maxExclusive?: number;
}

/** One flag: its kind, default, and one line of help. */
export type Flag =
  | {
    readonly kind: "string";
    readonly default?: string;
    readonly help: string;
    readonly choices?: readonly string[];
  }
  | ({ readonly kind: "int"; readonly default?: number; readonly help: string } & Bounds)
  | ({ readonly kind: "float"; readonly default?: number; readonly help: string } & Bounds)
  | { readonly kind: "boolean"; readonly help: string };

export type FlagSpecs = Readonly<Record<string, Flag>>;

type ValueOf<F extends Flag> = F extends { kind: "string" }
  ? F extends { default: string } ? string : string | undefined
  : F extends { kind: "int" | "float" }
    ? F extends { default: number } ? number : number | undefined
  : boolean;

/** Parsed values, typed from the specs: flags with defaults are never undefined. */
export type Values<S extends FlagSpecs> = { readonly [K in keyof S]: ValueOf<S[K]> };

/** Flags every script takes. */
export const COMMON_FLAGS = {
  seed: { kind: "int", default: 0, help: "seed of every random draw (same seed, same results)" },
  backend: {
    kind: "string",
    help: "tfjs backend: tensorflow | webgpu | wasm | cpu (default: automatic, or $DP_BACKEND)",
    choices: ["tensorflow", "webgpu", "wasm", "cpu"],
  },
} as const satisfies FlagSpecs;

/** Thrown for bad command lines; `main` wrappers print its message alone and exit 2. */
export class UsageError extends Error {}

// ---------------------------------------------------------------- ranges

// "(0, 1]" when `b` has both a lower and an upper bound.
function interval(b: Bounds): string | undefined {
  const lo = b.minExclusive ?? b.min, hi = b.maxExclusive ?? b.max;
  if (lo === undefined || hi === undefined) return undefined;
  return `${b.minExclusive !== undefined ? "(" : "["}${lo}, ${hi}${
    b.maxExclusive !== undefined ? ")" : "]"
  }`;
}

// The range of `b` for --help: "in (0, 1]", "> 0", "<= 8", or "" without bounds.
function rangeText(b: Bounds): string {
  const both = interval(b);
  if (both !== undefined) return `in ${both}`;
  if (b.min !== undefined) return `>= ${b.min}`;
  if (b.minExclusive !== undefined) return `> ${b.minExclusive}`;
  if (b.max !== undefined) return `<= ${b.max}`;
  if (b.maxExclusive !== undefined) return `< ${b.maxExclusive}`;
  return "";
}

// Why `n` is outside `b`, or undefined when it is inside.
function outOfRange(n: number, b: Bounds): string | undefined {
  const below = (b.min !== undefined && n < b.min) ||
    (b.minExclusive !== undefined && n <= b.minExclusive);
  const above = (b.max !== undefined && n > b.max) ||
    (b.maxExclusive !== undefined && n >= b.maxExclusive);
  if (!below && !above) return undefined;
  const both = interval(b);
  if (both !== undefined) return `${n} is outside ${both}`;
  if (b.min !== undefined) return `${n} is below the minimum ${b.min}`;
  if (b.minExclusive !== undefined) return `${n} must be above ${b.minExclusive}`;
  if (b.max !== undefined) return `${n} is above the maximum ${b.max}`;
  return `${n} must be below ${b.maxExclusive}`;
}

// A spec with two lower or two upper bounds is a bug in the script, not in the command line.
function checkSpec(key: string, f: Flag): void {
  if (f.kind !== "int" && f.kind !== "float") return;
  if (f.min !== undefined && f.minExclusive !== undefined) {
    throw new Error(`Flag --${key}: give min or minExclusive, not both`);
  }
  if (f.max !== undefined && f.maxExclusive !== undefined) {
    throw new Error(`Flag --${key}: give max or maxExclusive, not both`);
  }
}

// ---------------------------------------------------------------- help

/**
 * The `--help` text: usage line, `about`, then one row per flag with its default and range.
 * @example
 * ```ts
 * usage("pretrain", "Pre-train a U-Net.", { lr: { kind: "float", help: "lr", minExclusive: 0 } });
 * // ... "  --lr <float>  lr (> 0)" ...
 * ```
 */
export function usage(name: string, about: string, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([k, f]) => {
    const arg = f.kind === "boolean"
      ? ""
      : ` <${f.kind === "string" ? (f.choices ? f.choices.join("|") : "value") : f.kind}>`;
    const notes = [
      "default" in f && f.default !== undefined ? `default: ${f.default}` : "",
      f.kind === "int" || f.kind === "float" ? rangeText(f) : "",
    ].filter((x) => x !== "");
    return [`  --${k}${arg}`, `${f.help}${notes.length > 0 ? ` (${notes.join(", ")})` : ""}`];
  });
  rows.push(["  --help", "show this help and exit"]);
  const width = Math.max(...rows.map(([a]) => a.length)) + 2;
  return [
    `Usage: deno task ${name} [flags]`,
    "",
    about,
    "",
    "Flags:",
    ...rows.map(([a, b]) => a.padEnd(width) + b),
  ]
    .join("\n");
}

function convert(
  key: string,
  f: Flag,
  raw: string | boolean | undefined,
): E.Either<NEA.NonEmptyArray<string>, unknown> {
  const bad = (msg: string) => E.left(NEA.of(`--${key}: ${msg}`));
  if (f.kind === "boolean") return E.right(raw === true);
  if (raw === undefined) return E.right(f.default);
  const s = String(raw);
  if (f.kind === "string") {
    return f.choices && !f.choices.includes(s)
      ? bad(`"${s}" is not one of ${f.choices.join(", ")}`)
      : E.right(s);
  }
  const n = Number(s);
  if (s.trim() === "" || !Number.isFinite(n)) return bad(`"${s}" is not a number`);
  if (f.kind === "int" && !Number.isInteger(n)) return bad(`"${s}" is not an integer`);
  const outside = outOfRange(n, f);
  return outside !== undefined ? bad(outside) : E.right(n);
}

// ---------------------------------------------------------------- tokens

// The known flag nearest to an unknown one (a typo: edit distance at most 2), if any.
function nearest(name: string, known: readonly string[]): string | undefined {
  const distance = (a: string, b: string) => {
    let row = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      const next = [i];
      for (let j = 1; j <= b.length; j++) {
        next[j] = Math.min(
          row[j] + 1,
          next[j - 1] + 1,
          row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
        );
      }
      row = next;
    }
    return row[b.length];
  };
  const scored = known.map((k) => [distance(name, k), k] as const).filter(([d]) => d <= 2);
  return scored.sort((a, b) => a[0] - b[0])[0]?.[1];
}

// The tokens of node's parseArgs that are looked at here.
type Token =
  | {
    readonly kind: "option";
    readonly index: number;
    readonly name: string;
    readonly rawName: string;
    readonly value?: string;
    readonly inlineValue?: boolean;
  }
  | { readonly kind: "positional"; readonly index: number; readonly value: string }
  | { readonly kind: "option-terminator"; readonly index: number };

// Problems with the command line's shape, in argument order: unknown flags, values given to
// boolean flags, string flags without a value, stray arguments. `flagged`: the known flags at
// fault, whose values are then not converted (one message per flag).
function tokenProblems(
  tokens: readonly Token[],
  specs: FlagSpecs,
): { problems: string[]; flagged: Set<string> } {
  const problems: string[] = [];
  const flagged = new Set<string>();
  const known = Object.keys(specs);
  const isKnown = (name: string) => name === "help" || Object.hasOwn(specs, name);
  tokens.forEach((t, i) => {
    if (t.kind === "positional") {
      const prev = tokens[i - 1];
      // `--unknown value`: the value belongs to the unknown flag, already reported.
      const ofUnknown = prev?.kind === "option" && !isKnown(prev.name) &&
        prev.value === undefined && prev.index === t.index - 1;
      if (!ofUnknown) problems.push(`unexpected argument "${t.value}"`);
      return;
    }
    if (t.kind !== "option" || t.name === "help") return;
    const f = Object.hasOwn(specs, t.name) ? specs[t.name] : undefined;
    if (f === undefined) {
      const hint = t.rawName.startsWith("--") ? nearest(t.name, known) : undefined;
      problems.push(`${t.rawName}: unknown flag${hint ? ` (did you mean --${hint}?)` : ""}`);
    } else if (f.kind === "boolean" && t.value !== undefined) {
      flagged.add(t.name);
      problems.push(`${t.rawName}: takes no value, got "${t.value}"`);
    } else if (f.kind !== "boolean" && t.value === undefined) {
      flagged.add(t.name);
      problems.push(`${t.rawName}: missing value`);
    } else if (
      f.kind !== "boolean" && !t.inlineValue && t.value!.startsWith("-") &&
      !Number.isFinite(Number(t.value))
    ) {
      // `--run --resume`: most likely a forgotten value, as node's strict mode judges too.
      flagged.add(t.name);
      problems.push(
        `${t.rawName}: missing value before "${t.value}" (write ${t.rawName}=${t.value} for a ` +
          "value with a dash)",
      );
    }
  });
  return { problems, flagged };
}

// ---------------------------------------------------------------- parse

/**
 * Parse `args` against `specs`. Prints help and exits 0 on `--help`; otherwise throws one
 * UsageError listing every problem, one per line: unknown flags (with the nearest known one),
 * stray arguments, missing values, then bad numbers, out-of-range numbers and bad choices, then
 * what `check` finds in the flags that parsed (faults between flags, e.g. `--a` needs `--b`).
 *
 * @throws UsageError for a bad command line; Error for a spec with two lower or two upper bounds
 * @example
 * ```ts
 * const a = parseCli("pretrain", "Pre-train.", {
 *   lr: { kind: "float", default: 1e-4, help: "learning rate", minExclusive: 0 },
 *   "class-dropout": { kind: "float", default: 0.1, help: "p", min: 0, maxExclusive: 1 },
 * });
 * ```
 */
export function parseCli<S extends FlagSpecs>(
  name: string,
  about: string,
  specs: S,
  args: readonly string[] = Deno.args,
  check?: (valid: Partial<Values<S>>) => string[],
): Values<S> {
  const options: Record<string, { type: "string" | "boolean" }> = { help: { type: "boolean" } };
  for (const [k, f] of Object.entries(specs)) {
    checkSpec(k, f);
    options[k] = { type: f.kind === "boolean" ? "boolean" : "string" };
  }
  // Not strict: node's strict mode stops at the first unknown flag; tokenProblems finds them all.
  const parsed = parseArgs({
    args: [...args],
    options,
    strict: false,
    allowPositionals: true,
    tokens: true,
  });
  if (parsed.values.help === true) {
    console.log(usage(name, about, specs));
    Deno.exit(0);
  }
  const { problems, flagged } = tokenProblems(parsed.tokens, specs);
  const converted = Object.entries(specs)
    .filter(([k]) => !flagged.has(k))
    .map(([k, f]) => [k, convert(k, f, parsed.values[k])] as const);
  const valid = Object.fromEntries(
    converted.flatMap(([k, v]) => (E.isRight(v) ? [[k, v.right]] : [])),
  ) as Partial<Values<S>>;
  // Faults that involve several flags are judged on the flags that parsed, so that one error
  // lists them together with the single-flag ones.
  const all = [
    ...problems,
    ...converted.flatMap(([, v]) => (E.isLeft(v) ? v.left : [])),
    ...(check?.(valid) ?? []),
  ];
  if (all.length > 0) throw new UsageError(all.join("\n"));
  return valid as Values<S>;
}

/**
 * Run a script's main function: usage errors and other failures print one clear message on
 * stderr (no stack trace unless DP_DEBUG is set) and set a non-zero exit code.
 */
export async function runMain(main: () => Promise<void> | void): Promise<void> {
  // Tells the engine that the threaded wasm's workers will be stopped below, so it may use them
  // (lib/engine/wasm_threads.ts; a symbol keeps this module free of tfjs).
  (globalThis as Record<symbol, unknown>)[Symbol.for("diffusion-pretraining.runMain")] = true;
  try {
    await main();
    // tfjs's threaded wasm keeps workers that would hold the process open.
    const stop = (globalThis as Record<symbol, unknown>)[
      Symbol.for("diffusion-pretraining.stopWasmThreads")
    ];
    if (typeof stop === "function") {
      stop();
      Deno.exit(0);
    }
  } catch (e) {
    const err = e as Error;
    if (Deno.env.get("DP_DEBUG")) console.error(err.stack ?? err);
    else console.error(`error: ${err.message ?? err}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
