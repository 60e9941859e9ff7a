// The report: read every results file, draw the figures, render REPORT.md, write it atomically.
import { join, relative, resolve } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { readAllResults } from "../results.ts";
import { renderFigure } from "./figures.ts";
import { planReport, type ReportOptions } from "./render.ts";

export { artifactList, genericTable, planReport, renderReport } from "./render.ts";
export type { FigureJob, ReportOptions, ReportPlan } from "./render.ts";
export {
  flattenScalars,
  formatCell,
  formatValue,
  getPath,
  markdownTable,
  matchPattern,
  renderTable,
} from "./table.ts";
export type { Column, Expected, FigureDef, Quote, ReportItem, TableDef, Where } from "./table.ts";
export { FIGURES, ITEMS, SECTIONS, SEEDS } from "./tables.ts";

/** Folders under the results directory that hold no runs (repro goldens). */
export const NOT_RUNS: readonly string[] = ["golden"];

/** What `writeReport` did. */
export interface ReportSummary {
  readonly runs: number;
  readonly experiments: number;
  /** The figures drawn (SVG and PNG paths). */
  readonly figures: readonly string[];
  /** One line per results file that could not be read (also listed in the report). */
  readonly problems: readonly string[];
}

/**
 * Render every results file under `resultsDir` (but those under `NOT_RUNS`) into `outPath`, and
 * draw its figures under `results/report/` beside it. A missing or empty directory gives a report whose
 * tables list every run as missing.
 */
export async function writeReport(
  resultsDir: string,
  outPath: string,
  opts: Pick<ReportOptions, "items" | "sections"> = {},
): Promise<ReportSummary> {
  const read = await readAllResults(resultsDir);
  const skipped = NOT_RUNS.map((d) => resolve(join(resultsDir, d)));
  const inSkipped = (p: string) => skipped.some((d) => !relative(d, resolve(p)).startsWith(".."));
  const results = read.results.filter((r) => !inSkipped(r.path));
  const problems = read.problems.filter((p) => !skipped.some((d) => p.includes(d)));
  const plan = planReport(results, { outPath, resultsDir, problems, ...opts });
  const figures: string[] = [];
  for (const job of plan.figures) figures.push(...await renderFigure(job.spec, job.base));
  await writeFileAtomic(outPath, plan.markdown);
  return {
    runs: results.length,
    experiments: new Set(results.map((r) => r.result.experiment)).size,
    figures,
    problems,
  };
}
