// Figures are declared as Vega-Lite specs and rendered headless: Vega-Lite → Vega → SVG (vega's
// "none" renderer needs no canvas), then SVG → PNG with sharp. Scripts write both files and list
// them as artifacts; the report embeds the PNG.
import * as vega from "vega";
import * as vegaLite from "vega-lite";
import sharp from "sharp";
import { writeFileAtomic } from "../io/atomic.ts";

/** A Vega-Lite spec (kept loose: specs are plain JSON). */
export type VegaLiteSpec = Record<string, unknown>;

/** A line chart of named series over a shared x axis, e.g. loss against step. */
export function lineChart(opts: {
  readonly title: string;
  readonly x: string;
  readonly y: string;
  readonly series: Readonly<Record<string, readonly (readonly [number, number])[]>>;
  readonly logY?: boolean;
}): VegaLiteSpec {
  const values = Object.entries(opts.series).flatMap(([name, pts]) =>
    pts.map(([x, y]) => ({ [opts.x]: x, [opts.y]: y, series: name }))
  );
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: opts.title,
    width: 480,
    height: 260,
    background: "white",
    data: { values },
    mark: { type: "line", strokeWidth: 1.5 },
    encoding: {
      x: { field: opts.x, type: "quantitative" },
      y: {
        field: opts.y,
        type: "quantitative",
        scale: opts.logY ? { type: "log" } : { zero: false },
      },
      // Legend in the order the series were given; 20 colours where 10 would repeat.
      color: {
        field: "series",
        type: "nominal",
        sort: Object.keys(opts.series),
        scale: { scheme: Object.keys(opts.series).length > 10 ? "category20" : "tableau10" },
        legend: Object.keys(opts.series).length > 1 ? {} : null,
      },
    },
  };
}

/**
 * A heat map of a matrix, e.g. CKA between layers: `values[i][j]` is drawn at row `rows[i]`,
 * column `cols[j]`, rows bottom to top (the first row at the bottom, like the origin of a plot),
 * with each value printed in its cell; null cells are left blank.
 * @param domain the colour scale's range of values @default [0, 1]
 */
export function heatmap(opts: {
  readonly title: string;
  /** Axis titles. */
  readonly x: string;
  readonly y: string;
  readonly rows: readonly string[];
  readonly cols: readonly string[];
  readonly values: readonly (readonly (number | null)[])[];
  readonly domain?: readonly [number, number];
}): VegaLiteSpec {
  if (
    opts.values.length !== opts.rows.length ||
    opts.values.some((r) => r.length !== opts.cols.length)
  ) {
    throw new Error(`heatmap: values are not ${opts.rows.length}×${opts.cols.length}`);
  }
  const values = opts.rows.flatMap((row, i) =>
    opts.cols.map((col, j) => ({ row, col, value: opts.values[i][j] }))
  );
  const cell = 30;
  const [lo, hi] = opts.domain ?? [0, 1];
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: opts.title,
    width: Math.max(120, cell * opts.cols.length),
    height: Math.max(120, cell * opts.rows.length),
    background: "white",
    data: { values },
    transform: [{ filter: "datum.value !== null" }],
    encoding: {
      x: {
        field: "col",
        type: "ordinal",
        sort: [...opts.cols],
        title: opts.x,
        axis: { labelAngle: 0 },
      },
      y: { field: "row", type: "ordinal", sort: [...opts.rows].reverse(), title: opts.y },
    },
    layer: [
      {
        mark: "rect",
        encoding: {
          color: {
            field: "value",
            type: "quantitative",
            title: null,
            scale: { domain: [lo, hi], scheme: "viridis" },
          },
        },
      },
      {
        mark: { type: "text", fontSize: 9 },
        encoding: {
          text: { field: "value", type: "quantitative", format: ".2f" },
          color: {
            condition: { test: `datum.value < ${(lo + hi) / 2}`, value: "white" },
            value: "black",
          },
        },
      },
    ],
  };
}

/** Render a Vega-Lite spec to SVG text. */
export async function toSvg(spec: VegaLiteSpec): Promise<string> {
  const compiled = vegaLite.compile(spec as unknown as vegaLite.TopLevelSpec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Write `<base>.svg` and `<base>.png` (2× scale); returns both paths. */
export async function renderFigure(spec: VegaLiteSpec, base: string): Promise<[string, string]> {
  const svg = await toSvg(spec);
  const png = await sharp(new TextEncoder().encode(svg), { density: 144 }).png().toBuffer();
  await writeFileAtomic(`${base}.svg`, svg);
  await writeFileAtomic(`${base}.png`, new Uint8Array(png.buffer, png.byteOffset, png.byteLength));
  return [`${base}.svg`, `${base}.png`];
}
