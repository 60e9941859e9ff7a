// Custom report sections, keyed by experiment name (the `experiment` field of results files).
// An experiment with no entry here gets the generic run table. To add one, write
// `(runs, ctx) => markdown` (render.ts has markdownTable, formatValue, flattenScalars,
// artifactList and genericRenderer to build on) and list it below.
import type { ExperimentRenderer } from "./render.ts";

/** Experiment name -> renderer of its section body. */
export const RENDERERS: Readonly<Record<string, ExperimentRenderer>> = {};
