import { assert, assertEquals } from "../assert.ts";
import { lineChart, renderFigure, toSvg } from "../../lib/report/figures.ts";
import sharp from "sharp";

const spec = lineChart({
  title: "loss",
  x: "step",
  y: "loss",
  series: { train: [[10, 1], [20, 0.5], [30, 0.25]] },
});

Deno.test("lineChart() declares one point per (series, x) pair", () => {
  assertEquals((spec.data as { values: unknown[] }).values.length, 3);
});

Deno.test("toSvg() and renderFigure() draw the chart headless to SVG and PNG", async () => {
  const svg = await toSvg(spec);
  assert(svg.startsWith("<svg") && svg.includes("loss"), svg.slice(0, 80));
  const dir = await Deno.makeTempDir();
  try {
    const [svgPath, pngPath] = await renderFigure(spec, `${dir}/curve`);
    assertEquals(await Deno.readTextFile(svgPath), svg);
    const meta = await sharp(await Deno.readFile(pngPath)).metadata();
    assertEquals(meta.format, "png");
    assert((meta.width ?? 0) > 480, `width ${meta.width}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
