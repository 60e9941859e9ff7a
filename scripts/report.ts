// deno task report: render REPORT.md (and the figures it embeds, under results/report/) from every
// results JSON under results/; the tables it draws are declared in lib/report/tables.ts.
import { type FlagSpecs, parseCli, runMain } from "../lib/cli.ts";
import { writeReport } from "../lib/report/mod.ts";

const FLAGS = {
  // Every script takes --seed; the report draws nothing at random, so it only checks the flag.
  seed: { kind: "int", default: 0, help: "accepted for uniformity (the report is deterministic)" },
  results: {
    kind: "string",
    default: "results",
    help: "directory of results JSON files (searched recursively)",
  },
  out: { kind: "string", default: "REPORT.md", help: "markdown file to write" },
} as const satisfies FlagSpecs;

async function main(): Promise<void> {
  const args = parseCli("report", "Render the results of every run as one markdown report.", FLAGS);
  const s = await writeReport(args.results, args.out);
  for (const f of s.figures) console.error(`report: drew ${f}`);
  for (const p of s.problems) console.error(`warning: ${p}`);
  console.error(`report: ${s.runs} run(s) in ${s.experiments} experiment(s) -> ${args.out}`);
}

if (import.meta.main) await runMain(main);
