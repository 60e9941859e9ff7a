// Rendering REPORT.md from results files: one section per experiment, drawn by the experiment's
// own renderer when one is registered (renderers.ts), else by the generic run table below.
import { dirname, relative, resolve } from "node:path";
import type { LoadedResult } from "../results.ts";

/** What a renderer may use besides the runs. */
export interface RenderContext {
  /** A run's artifact as a link target relative to the report file. */
  readonly link: (run: LoadedResult, artifact: string) => string;
}

/** Markdown body of one experiment's section (the `## experiment` heading is added for it). */
export type ExperimentRenderer = (runs: readonly LoadedResult[], ctx: RenderContext) => string;

// ---------------------------------------------------------------- helpers

const cell = (s: string) => s.replaceAll("|", "\\|").replaceAll("\n", " ");

/** A GitHub-flavoured markdown table. */
export function markdownTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
): string {
  const line = (cells: readonly string[]) => `| ${cells.map(cell).join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

/** Numbers to 4 significant digits (integers whole), other scalars as text, absent as "". */
export function formatValue(v: unknown): string {
  if (v === undefined || v === null) return "";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1000 ? v.toFixed(0) : String(Number(v.toPrecision(4)));
  }
  return String(v);
}

/** Scalars of a nested JSON object keyed by dotted path; arrays are left out. */
export function flattenScalars(
  o: Readonly<Record<string, unknown>>,
  prefix = "",
): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && typeof v === "object") {
      if (!Array.isArray(v)) {
        for (const [kk, vv] of flattenScalars(v as Record<string, unknown>, `${prefix}${k}.`)) {
          out.set(kk, vv);
        }
      }
    } else out.set(prefix + k, v);
  }
  return out;
}

// Union of keys in first-seen order.
function columns(maps: readonly Map<string, unknown>[]): string[] {
  return [...new Set(maps.flatMap((m) => [...m.keys()]))];
}

const wrapPath = (p: string) => (/[\s()<>]/.test(p) ? `<${p}>` : p);

/** Links to (and, for images, embeds of) every run's artifacts. */
export function artifactList(runs: readonly LoadedResult[], ctx: RenderContext): string {
  const lines = runs.flatMap((r) =>
    r.result.artifacts.map((a) => {
      const target = wrapPath(ctx.link(r, a));
      const label = `${r.result.run}: ${a.split("/").pop()}`;
      return /\.(png|jpe?g|gif|svg)$/i.test(a)
        ? `![${label}](${target})`
        : `- [${label}](${target})`;
    })
  );
  return lines.join("\n\n");
}

// ---------------------------------------------------------------- generic renderer

/** One row per run: run, seed, engine, every scalar metric, every timing, finish time. */
export const genericRenderer: ExperimentRenderer = (runs, ctx) => {
  const metrics = runs.map((r) => flattenScalars(r.result.metrics));
  const timings = runs.map((r) => new Map(Object.entries(r.result.timings)));
  const mCols = columns(metrics);
  const tCols = columns(timings);
  const header = ["run", "seed", "engine", ...mCols, ...tCols, "finished"];
  const rows = runs.map((r, i) => [
    r.result.run,
    String(r.result.seed),
    r.result.env.engine,
    ...mCols.map((c) => formatValue(metrics[i].get(c))),
    ...tCols.map((c) => formatValue(timings[i].get(c))),
    r.result.finished.slice(0, 16).replace("T", " "),
  ]);
  const artifacts = artifactList(runs, ctx);
  return [markdownTable(header, rows), artifacts].filter((s) => s !== "").join("\n\n");
};

// ---------------------------------------------------------------- report

export interface ReportOptions {
  /** Where the report will be written; artifact links are made relative to it. */
  readonly outPath: string;
  /** Where the results were read from (named in the report). */
  readonly resultsDir: string;
  /** Experiment name -> renderer; experiments not listed use `genericRenderer`. */
  readonly renderers?: Readonly<Record<string, ExperimentRenderer>>;
  /** One line per results file that could not be read. */
  readonly problems?: readonly string[];
}

/** Render the whole report (pure: the same inputs give the same text). */
export function renderReport(runs: readonly LoadedResult[], opts: ReportOptions): string {
  const outDir = dirname(resolve(opts.outPath));
  const ctx: RenderContext = {
    link: (r, a) => relative(outDir, resolve(dirname(r.path), a)),
  };
  const byExperiment = new Map<string, LoadedResult[]>();
  for (const r of runs) {
    byExperiment.set(r.result.experiment, [...byExperiment.get(r.result.experiment) ?? [], r]);
  }
  const names = [...byExperiment.keys()].sort();
  const byRun = (a: LoadedResult, b: LoadedResult) =>
    a.result.run.localeCompare(b.result.run, "en", { numeric: true });
  const out = [
    "# Report",
    "",
    `Generated by \`deno task report\` from ${runs.length} run(s) in \`${opts.resultsDir}\`.`,
  ];
  if (names.length === 0) out.push("", "No results yet.");
  for (const name of names) {
    const render = opts.renderers?.[name] ?? genericRenderer;
    out.push("", `## ${name}`, "", render(byExperiment.get(name)!.sort(byRun), ctx));
  }
  if (opts.problems && opts.problems.length > 0) {
    out.push("", "## Unreadable results files", "", ...opts.problems.map((p) => `- ${p}`));
  }
  return out.join("\n") + "\n";
}
