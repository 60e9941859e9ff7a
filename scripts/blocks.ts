// Print a denoiser's feature blocks: b → module, layers, resolution, channels (facts.md §2), so
// `--block` flags of the probe scripts can be chosen without reading the model code. Prints only
// (no results JSON, no engine: the table is computed from the config alone).
import { parseCli, runMain, UsageError } from "../lib/cli.ts";
import {
  blockTable,
  inputShape,
  type ModelKind,
  type ModelSpec,
  paramShapes,
  presetNames,
  presetSpec,
} from "../lib/models/mod.ts";
import { countParams } from "../lib/params.ts";

const FLAGS = {
  // Every script takes --seed; this one draws nothing at random.
  seed: { kind: "int", default: 0, help: "accepted for uniformity (the table is deterministic)" },
  model: { kind: "string", default: "unet", help: "denoiser", choices: ["unet", "dit"] },
  config: {
    kind: "string",
    help: `preset (default: the papers' adm256, or DiT-B/2): unet ${
      presetNames("unet").join("|")
    }; dit ${presetNames("dit").join("|")}`,
  },
  json: { kind: "boolean", help: "print the table as JSON instead of text" },
} as const;

/** The table as aligned text lines. */
export function formatBlocks(spec: ModelSpec): string[] {
  const rows = blockTable(spec).map((
    r,
  ) => [String(r.b), r.module, r.layers, `${r.resolution}×${r.resolution}`, String(r.channels)]);
  const head = ["b", "module", "layers", "resolution", "channels"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((s, i) => (i === 0 || i === 4 ? s.padStart(widths[i]) : s.padEnd(widths[i]))).join(
      "  ",
    );
  const params = (countParams(paramShapes(spec)) / 1e6).toFixed(1);
  const [s, , c] = inputShape(spec);
  return [
    `${spec.kind} ${spec.name}: ${s}×${s}×${c}, ${params} M parameters, ${rows.length} blocks`,
    line(head),
    ...rows.map(line),
  ];
}

if (import.meta.main) {
  await runMain(() => {
    const args = parseCli(
      "blocks",
      "Print a denoiser's block numbering b used by feature taps.",
      FLAGS,
    );
    const kind = args.model as ModelKind;
    const config = args.config ?? (kind === "unet" ? "adm256" : "DiT-B/2");
    if (!presetNames(kind).includes(config)) {
      throw new UsageError(
        `--config: "${config}" is not a ${kind} preset (${presetNames(kind).join(", ")})`,
      );
    }
    const spec = presetSpec(kind, config);
    if (args.json) console.log(JSON.stringify(blockTable(spec), null, 2));
    else console.log(formatBlocks(spec).join("\n"));
  });
}
