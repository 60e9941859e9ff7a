// The report: read every results file, render REPORT.md, write it atomically.
import { writeFileAtomic } from "../io/atomic.ts";
import { readAllResults } from "../results.ts";
import { type ExperimentRenderer, renderReport } from "./render.ts";
import { RENDERERS } from "./renderers.ts";

export {
  artifactList,
  flattenScalars,
  formatValue,
  genericRenderer,
  markdownTable,
  renderReport,
} from "./render.ts";
export type { ExperimentRenderer, RenderContext, ReportOptions } from "./render.ts";
export { RENDERERS } from "./renderers.ts";

/** What `writeReport` did. */
export interface ReportSummary {
  readonly runs: number;
  readonly experiments: number;
  /** One line per results file that could not be read (also listed in the report). */
  readonly problems: readonly string[];
}

/**
 * Render every results file under `resultsDir` into `outPath` (a missing or empty directory
 * gives a report saying so).
 */
export async function writeReport(
  resultsDir: string,
  outPath: string,
  renderers: Readonly<Record<string, ExperimentRenderer>> = RENDERERS,
): Promise<ReportSummary> {
  const { results, problems } = await readAllResults(resultsDir);
  await writeFileAtomic(
    outPath,
    renderReport(results, { outPath, resultsDir, renderers, problems }),
  );
  return {
    runs: results.length,
    experiments: new Set(results.map((r) => r.result.experiment)).size,
    problems,
  };
}
