// Print the U-Net's feature blocks: b → module, layers, resolution, channels (facts.md §2), so
// `--block` flags of the probe scripts can be chosen without reading the model code.
import { parseCli, runMain } from "../lib/cli.ts";
import { blockTable, numParams, UNET_CONFIGS, type UNetConfigName } from "../lib/models/unet.ts";

const FLAGS = {
  // Every script takes --seed; this one draws nothing at random.
  seed: { kind: "int", default: 0, help: "accepted for uniformity (the table is deterministic)" },
  config: {
    kind: "string",
    default: "adm256",
    help: "U-Net preset",
    choices: Object.keys(UNET_CONFIGS),
  },
  json: { kind: "boolean", help: "print the table as JSON instead of text" },
} as const;

/** The table as aligned text lines. */
export function formatBlocks(name: UNetConfigName): string[] {
  const c = UNET_CONFIGS[name];
  const rows = blockTable(c).map((
    r,
  ) => [String(r.b), r.module, r.layers, `${r.resolution}×${r.resolution}`, String(r.channels)]);
  const head = ["b", "module", "layers", "resolution", "channels"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) =>
    cells.map((s, i) => (i === 0 || i === 4 ? s.padStart(widths[i]) : s.padEnd(widths[i]))).join(
      "  ",
    );
  const params = (numParams(c) / 1e6).toFixed(1);
  return [
    `${name}: ${c.imageSize}×${c.imageSize}×${c.inChannels}, ${params} M parameters, ${rows.length} blocks`,
    line(head),
    ...rows.map(line),
  ];
}

if (import.meta.main) {
  await runMain(() => {
    const args = parseCli(
      "blocks",
      "Print the U-Net block numbering b used by feature taps.",
      FLAGS,
    );
    const name = args.config as UNetConfigName;
    if (args.json) console.log(JSON.stringify(blockTable(UNET_CONFIGS[name]), null, 2));
    else console.log(formatBlocks(name).join("\n"));
  });
}
