// Custom report sections, keyed by experiment name (the `experiment` field of results files).
// An experiment with no entry here gets the generic run table. To add one, write
// `(runs, ctx) => markdown` (render.ts has markdownTable, formatValue, flattenScalars,
// artifactList and genericRenderer to build on) and list it below.
import {
  artifactList,
  type ExperimentRenderer,
  flattenScalars,
  formatValue,
  markdownTable,
} from "./render.ts";

/**
 * Benchmarks: each suite measures different things, so one metric/value table per run instead
 * of one wide table with a column per metric of every suite.
 */
const benchRenderer: ExperimentRenderer = (runs, ctx) =>
  [
    ...runs.map((r) => {
      const rows = [...flattenScalars(r.result.metrics)].map(([k, v]) => [k, formatValue(v)]);
      const head =
        `### ${r.result.run}\n\n${r.result.env.engine}, commit ${
          r.result.env.commit.slice(0, 12)
        }, ` +
        `${r.result.finished.slice(0, 16).replace("T", " ")}`;
      return `${head}\n\n${markdownTable(["metric", "value"], rows)}`;
    }),
    artifactList(runs, ctx),
  ].filter((s) => s !== "").join("\n\n");

/** Experiment name -> renderer of its section body. */
export const RENDERERS: Readonly<Record<string, ExperimentRenderer>> = { bench: benchRenderer };
