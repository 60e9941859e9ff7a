// Command-line parsing shared by every script: node:util parseArgs (JSR is unreachable here),
// typed flag specs, `--help` generated from the specs, and validation that reports every bad
// flag at once (fp-ts validation) instead of stopping at the first.
import { parseArgs } from "node:util";
import * as E from "fp-ts/lib/Either.js";
import * as A from "fp-ts/lib/Array.js";
import * as NEA from "fp-ts/lib/NonEmptyArray.js";
import { pipe } from "fp-ts/lib/function.js";

/** One flag: its kind, default, and one line of help. */
export type Flag =
  | {
    readonly kind: "string";
    readonly default?: string;
    readonly help: string;
    readonly choices?: readonly string[];
  }
  | {
    readonly kind: "int";
    readonly default?: number;
    readonly help: string;
    readonly min?: number;
  }
  | {
    readonly kind: "float";
    readonly default?: number;
    readonly help: string;
    readonly min?: number;
  }
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

function usage(name: string, about: string, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([k, f]) => {
    const arg = f.kind === "boolean"
      ? ""
      : ` <${f.kind === "string" ? (f.choices ? f.choices.join("|") : "value") : f.kind}>`;
    const dflt = "default" in f && f.default !== undefined ? ` (default: ${f.default})` : "";
    return [`  --${k}${arg}`, `${f.help}${dflt}`];
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
  if (f.min !== undefined && n < f.min) return bad(`${n} is below the minimum ${f.min}`);
  return E.right(n);
}

/**
 * Parse `args` against `specs`. Prints help and exits 0 on `--help`; throws UsageError listing
 * every problem (unknown flags, bad numbers, bad choices) otherwise.
 */
export function parseCli<S extends FlagSpecs>(
  name: string,
  about: string,
  specs: S,
  args: readonly string[] = Deno.args,
): Values<S> {
  const options: Record<string, { type: "string" | "boolean" }> = { help: { type: "boolean" } };
  for (const [k, f] of Object.entries(specs)) {
    options[k] = { type: f.kind === "boolean" ? "boolean" : "string" };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: [...args], options, strict: true, allowPositionals: false });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nRun with --help for the flags.`);
  }
  if (parsed.values.help) {
    console.log(usage(name, about, specs));
    Deno.exit(0);
  }
  const validation = E.getApplicativeValidation(NEA.getSemigroup<string>());
  const entries = Object.entries(specs);
  return pipe(
    entries,
    A.traverse(validation)(([k, f]) =>
      pipe(convert(k, f, parsed.values[k]), E.map((v) => [k, v] as const))
    ),
    E.fold(
      (errors) => {
        throw new UsageError(errors.join("\n"));
      },
      (pairs) => Object.fromEntries(pairs) as Values<S>,
    ),
  );
}

/**
 * Run a script's main function: usage errors and other failures print one clear message on
 * stderr (no stack trace unless DP_DEBUG is set) and set a non-zero exit code.
 */
export async function runMain(main: () => Promise<void> | void): Promise<void> {
  try {
    await main();
  } catch (e) {
    const err = e as Error;
    if (Deno.env.get("DP_DEBUG")) console.error(err.stack ?? err);
    else console.error(`error: ${err.message ?? err}`);
    Deno.exit(e instanceof UsageError ? 2 : 1);
  }
}
