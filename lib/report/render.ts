// Rendering REPORT.md from results files: one section per paper (and for pre-training and the
// benchmarks), each drawing the tables and figures declared in tables.ts; experiments no table
// reads get a generic run table under "Other results". Pure: files are read and written by mod.ts.
import { dirname, join, relative, resolve } from "node:path";
import type { LoadedResult } from "../results.ts";
import { lineChart, type VegaLiteSpec } from "./figures.ts";
import {
  type FigureDef,
  flattenScalars,
  formatValue,
  getPath,
  markdownTable,
  renderTable,
  type ReportItem,
  runLine,
  type Section,
  selectRuns,
  type TableContext,
} from "./table.ts";
import { ITEMS, SECTIONS } from "./tables.ts";

// ---------------------------------------------------------------- generic runs

const wrapPath = (p: string) => (/[\s()<>]/.test(p) ? `<${p}>` : p);

// Union of keys in first-seen order.
function columns(maps: readonly Map<string, unknown>[]): string[] {
  return [...new Set(maps.flatMap((m) => [...m.keys()]))];
}

/** Links to (and, for images, embeds of) every run's artifacts. */
export function artifactList(runs: readonly LoadedResult[], ctx: TableContext): string {
  const lines = runs.flatMap((r) =>
    r.result.artifacts.map((a) => {
      const target = wrapPath(ctx.artifactLink(r, a));
      const label = `${r.result.run}: ${a.split("/").pop()}`;
      return /\.(png|jpe?g|gif|svg)$/i.test(a)
        ? `![${label}](${target})`
        : `- [${label}](${target})`;
    })
  );
  return lines.join("\n\n");
}

/** One row per run: run (linked), seed, engine, every scalar metric, every timing, finish time. */
export function genericTable(runs: readonly LoadedResult[], ctx: TableContext): string {
  const metrics = runs.map((r) => flattenScalars(r.result.metrics));
  const timings = runs.map((r) => new Map(Object.entries(r.result.timings)));
  const mCols = columns(metrics);
  const tCols = columns(timings);
  const header = ["run", "seed", "engine", ...mCols, ...tCols, "finished"];
  const rows = runs.map((r, i) => {
    const link = wrapPath(ctx.link(r));
    const num = (
      v: unknown,
    ) => (typeof v === "number" ? `[${formatValue(v)}](${link})` : formatValue(v));
    return [
      `[${r.result.run}](${link})`,
      String(r.result.seed),
      r.result.env.engine,
      ...mCols.map((c) => num(metrics[i].get(c))),
      ...tCols.map((c) => formatValue(timings[i].get(c))),
      r.result.finished.slice(0, 16).replace("T", " "),
    ];
  });
  const runsList = ["Runs:", ...runs.map((r) => runLine(r, ctx))].join("\n");
  return [markdownTable(header, rows), runsList, artifactList(runs, ctx)]
    .filter((s) => s !== "").join("\n\n");
}

// ---------------------------------------------------------------- figures

/** A figure the report embeds, to be drawn to `<base>.svg` and `<base>.png`. */
export interface FigureJob {
  readonly spec: VegaLiteSpec;
  readonly base: string;
}

const isPoint = (p: unknown): p is [number, number] =>
  Array.isArray(p) && p.length === 2 && p.every((v) => typeof v === "number");

function planFigure(
  def: FigureDef,
  runs: readonly LoadedResult[],
  ctx: TableContext,
  outDir: string,
): { markdown: string; job?: FigureJob } {
  const series: Record<string, [number, number][]> = {};
  const used: LoadedResult[] = [];
  for (const r of selectRuns(def, runs)) {
    const pts = getPath(r.result, def.points);
    if (!Array.isArray(pts)) continue;
    const ok = pts.filter(isPoint);
    if (ok.length < 2) continue;
    series[r.result.run] = ok;
    used.push(r);
  }
  const head = `### ${def.title}`;
  if (used.length === 0) {
    return { markdown: `${head}\n\nMissing runs: no run has \`${def.points}\` yet.` };
  }
  const spec = lineChart({ title: def.title, x: def.x, y: def.y, series, logY: def.logY });
  const file = `results/report/${def.id}`; // beside the results: the top level stays as the design card has it
  return {
    markdown: [
      head,
      `![${def.title}](${file}.png)`,
      ["Drawn from:", ...used.map((r) => runLine(r, ctx))].join("\n"),
    ].join("\n\n"),
    job: { spec, base: join(outDir, file) },
  };
}

// ---------------------------------------------------------------- report

export interface ReportOptions {
  /** Where the report will be written; links are made relative to it. */
  readonly outPath: string;
  /** Where the results were read from (named in the report). */
  readonly resultsDir: string;
  /** One line per results file that could not be read. */
  readonly problems?: readonly string[];
  /** @default ITEMS of tables.ts */
  readonly items?: readonly ReportItem[];
  /** @default SECTIONS of tables.ts */
  readonly sections?: readonly {
    readonly id: Section;
    readonly title: string;
    readonly intro: string;
  }[];
}

/** The report's markdown and the figures it embeds. */
export interface ReportPlan {
  readonly markdown: string;
  readonly figures: readonly FigureJob[];
}

/** Plan the whole report (pure: the same inputs give the same text and figures). */
export function planReport(runs: readonly LoadedResult[], opts: ReportOptions): ReportPlan {
  const items = opts.items ?? ITEMS;
  const outDir = dirname(resolve(opts.outPath));
  const byRun = (a: LoadedResult, b: LoadedResult) =>
    a.result.run.localeCompare(b.result.run, "en", { numeric: true });
  const sorted = [...runs].sort(byRun);
  const base = {
    link: (r: LoadedResult) => relative(outDir, resolve(r.path)),
    artifactLink: (r: LoadedResult, a: string) => relative(outDir, resolve(dirname(r.path), a)),
  };
  const figures: FigureJob[] = [];
  const out = [
    "# Report",
    "",
    `Generated by \`deno task report\` from ${runs.length} run(s) in \`${opts.resultsDir}\`. ` +
    "Each of our numbers links to the results file it comes from, and each run's line names " +
    "the command that reproduces it and the machine it ran on. Paper rows are quoted from " +
    "`../shared/seeds`, with the table they come from. A run a table expects but the results " +
    "lack is listed as missing, with the command that would make it.",
  ];
  for (const section of opts.sections ?? SECTIONS) {
    const ctx: TableContext = { ...base, shown: new Map() };
    const parts = items.filter((i) => i.section === section.id).map((item) => {
      if (item.kind === "table") return renderTable(item, sorted, ctx);
      const f = planFigure(item, sorted, ctx, outDir);
      if (f.job) figures.push(f.job);
      return f.markdown;
    }).filter((s) => s !== "");
    out.push("", `## ${section.title}`, "", section.intro);
    for (const p of parts) out.push("", p);
  }

  const claimed = new Set(items.flatMap((i) => i.experiments));
  const others = new Map<string, LoadedResult[]>();
  for (const r of sorted.filter((r) => !claimed.has(r.result.experiment))) {
    others.set(r.result.experiment, [...others.get(r.result.experiment) ?? [], r]);
  }
  if (others.size > 0) {
    out.push("", "## Other results", "", "Experiments that no table of tables.ts reads yet.");
    const ctx: TableContext = { ...base, shown: new Map() };
    for (const name of [...others.keys()].sort()) {
      out.push("", `### ${name}`, "", genericTable(others.get(name)!, ctx));
    }
  }
  if (opts.problems && opts.problems.length > 0) {
    out.push("", "## Unreadable results files", "", ...opts.problems.map((p) => `- ${p}`));
  }
  return { markdown: out.join("\n") + "\n", figures };
}

/** The report's markdown alone. */
export function renderReport(runs: readonly LoadedResult[], opts: ReportOptions): string {
  return planReport(runs, opts).markdown;
}
