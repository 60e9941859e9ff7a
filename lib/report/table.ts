// A report table declared as data (tables.ts lists them) and drawn here. A definition names the
// results it reads (experiments and a filter), its columns (paths into the results JSON), the
// paper's rows it quotes (seed file and table number), and the runs it expects; a row it expects
// but finds no run for is drawn as missing, with the command that would make it, never filled in.
//
// Paths are dotted keys into a results file (`metrics.final_loss`, `env.cpu`, `config.model.
// patchSize`; array items by index). A table with `each` draws one row per match of a pattern
// whose segments may hold one `*` each (`metrics.engines.*.*`, `metrics.*_n64_fwd_ms`); in column
// paths, `@` is the matched value, `@.img_s` a key inside it, `{1}` the first `*`'s text, and
// `$label` / `$run` the row's label and run name. `a|b` reads `b` where `a` is absent (a field
// renamed between versions of the results files).
import type { LoadedResult } from "../results.ts";

// ---------------------------------------------------------------- definitions

/** Report sections, in report order. */
export type Section = "pretrain" | "001" | "002" | "000" | "bench";

/** Rows copied from one of the papers' tables. */
export interface Quote {
  /** The seed file quoted, under ../shared/seeds. */
  readonly seed: string;
  /** The paper's table number, or its figure's where the numbers are read from a figure or text. */
  readonly table?: number;
  readonly figure?: number;
  /**
   * Where in the text the numbers are, when not in the table's block or the paragraph opening
   * "Figure N shows": the words that start the line they are read from.
   */
  readonly at?: string;
  /** Cells as the paper prints them, keyed by column key; absent keys are blank. */
  readonly rows: readonly Readonly<Record<string, string>>[];
}

/** How a column shows our numbers. */
export type Format =
  | "number" // 4 significant digits, integers whole
  | "int"
  | "percent" // a fraction in [0, 1] shown as 12.34%
  | "fixed4" // .1234-style papers: 0.1234
  | "text"
  | "commit" // first 12 characters
  | "time"; // ISO time as YYYY-MM-DD HH:MM

export interface Column {
  readonly key: string;
  readonly header: string;
  /** Where our value is (see the file header); absent: a paper-only column, blank for us. */
  readonly path?: string;
  /** @default "number" for numbers, "text" otherwise */
  readonly format?: Format;
  /** Display names of values, e.g. of a `{1}` capture. */
  readonly labels?: Readonly<Record<string, string>>;
}

/** A condition on one path: the value itself, or whether the path is present. */
export type Condition =
  | string
  | number
  | boolean
  | null
  | { readonly present: boolean }
  | { readonly oneOf: readonly (string | number)[] };
/** Every condition must hold. */
export type Where = Readonly<Record<string, Condition>>;

/** A run a table expects: drawn from the first run that matches, else drawn as missing. */
export interface Expected {
  readonly label: string;
  readonly where: Where;
  /** The command that makes the run. */
  readonly command: string;
  /** Its setting in words, where the command's flags do not say it (e.g. a planned task). */
  readonly setting?: string;
}

export interface TableDef {
  readonly kind: "table";
  readonly id: string;
  readonly section: Section;
  readonly title: string;
  /** Dataset and scale: the paper's and ours. */
  readonly scale?: { readonly paper?: string; readonly ours: string };
  readonly note?: string;
  /** Experiments (the `experiment` field) whose runs the table reads. */
  readonly experiments: readonly string[];
  readonly where?: Where;
  /** One row per match of this pattern in each run (see the file header). */
  readonly each?: string;
  /** Keeps only the `each` rows that satisfy it (`@` paths allowed). */
  readonly rowsWhere?: Where;
  readonly columns: readonly Column[];
  readonly paper?: readonly Quote[];
  readonly expected?: readonly Expected[];
  /** How runs for this table are made (shown when it has none). */
  readonly command: string;
  /** Instead of columns: every scalar under `metrics` no earlier table of the section showed. */
  readonly rest?: boolean;
  /** Regular expression of run artifacts (images) to embed below the table. */
  readonly artifacts?: string;
  /**
   * Sentences computed from the table's runs (the comparisons an issue asks to state), shown
   * under it; each names the numbers it compares, as read from the runs.
   */
  readonly findings?: (runs: readonly LoadedResult[]) => readonly string[];
}

/** A line chart of one series per run, drawn by the report from the runs' JSON. */
export interface FigureDef {
  readonly kind: "figure";
  readonly id: string;
  readonly section: Section;
  readonly title: string;
  readonly experiments: readonly string[];
  readonly where?: Where;
  /** Path of an array of [x, y] points in each run. */
  readonly points: string;
  readonly x: string;
  readonly y: string;
  readonly logY?: boolean;
}

export type ReportItem = TableDef | FigureDef;

// ---------------------------------------------------------------- paths

/** The value at a dotted path (array items by index), or undefined. */
export function getPath(o: unknown, path: string): unknown {
  if (path === "") return o;
  let v: unknown = o;
  for (const k of path.split(".")) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

/** One match of an `each` pattern: the value, its absolute path, and the `*` texts. */
export interface Match {
  readonly value: unknown;
  readonly path: string;
  readonly captures: readonly string[];
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Every match of a pattern such as `metrics.engines.*.*` or `metrics.*_fwd_ms`, in key order. */
export function matchPattern(o: unknown, pattern: string): Match[] {
  const segments = pattern.split(".");
  const walk = (v: unknown, i: number, path: string[], caps: string[]): Match[] => {
    if (i === segments.length) return [{ value: v, path: path.join("."), captures: caps }];
    if (v === null || typeof v !== "object") return [];
    const seg = segments[i];
    if (!seg.includes("*")) {
      const next = (v as Record<string, unknown>)[seg];
      return next === undefined ? [] : walk(next, i + 1, [...path, seg], caps);
    }
    const re = new RegExp(`^${seg.split("*").map(escapeRe).join("(.*)")}$`);
    return Object.entries(v as Record<string, unknown>).flatMap(([k, next]) => {
      const m = re.exec(k);
      return m ? walk(next, i + 1, [...path, k], [...caps, ...m.slice(1)]) : [];
    });
  };
  return walk(o, 0, [], []);
}

/** What a row's paths are resolved against. */
export interface RowContext {
  readonly run: LoadedResult;
  readonly label: string;
  readonly match?: Match;
}

/** A resolved cell: its value and, for values read from the file, their absolute path. */
interface Resolved {
  readonly value: unknown;
  readonly abs?: string;
}

/** Resolve a column or condition path against a row (see the file header). */
export function resolve(path: string, row: RowContext): Resolved {
  if (path.includes("|")) {
    // Alternatives, first present wins: a field renamed between versions of a results file.
    const all = path.split("|").map((p) => resolve(p, row));
    return all.find((r) => r.value !== undefined) ?? all[all.length - 1];
  }
  if (path === "$label") return { value: row.label };
  if (path === "$run") return { value: row.run.result.run };
  const caps = row.match?.captures ?? [];
  const p = path.replace(/\{(\d+)\}/g, (_, n) => caps[Number(n) - 1] ?? "");
  if (/^\{\d+\}$/.test(path)) return { value: p };
  if (p === "@" || p.startsWith("@.")) {
    if (!row.match) return { value: undefined };
    const rel = p.slice(2);
    return {
      value: getPath(row.match.value, rel),
      abs: rel ? `${row.match.path}.${rel}` : row.match.path,
    };
  }
  return { value: getPath(row.run.result, p), abs: p };
}

/** Whether every condition of `where` holds for the row. */
export function satisfies(where: Where | undefined, row: RowContext): boolean {
  return Object.entries(where ?? {}).every(([path, cond]) => {
    const { value } = resolve(path, row);
    if (cond !== null && typeof cond === "object") {
      return "oneOf" in cond
        ? cond.oneOf.includes(value as string | number)
        : (value !== undefined) === cond.present;
    }
    return value === cond;
  });
}

// ---------------------------------------------------------------- formatting

/** Numbers to 4 significant digits (integers whole), other scalars as text, absent as "". */
export function formatValue(v: unknown): string {
  if (v === undefined || v === null) return "";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 1000 ? v.toFixed(0) : String(Number(v.toPrecision(4)));
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

/** A value as a column shows it. */
export function formatCell(v: unknown, col: Pick<Column, "format" | "labels">): string {
  const s = typeof v === "string" || typeof v === "number" ? String(v) : "";
  if (col.labels && s in col.labels) return col.labels[s];
  if (typeof v === "number") {
    switch (col.format) {
      case "int":
        return String(Math.round(v));
      case "percent":
        return `${(100 * v).toFixed(2)}%`;
      case "fixed4":
        return v.toFixed(4);
    }
  }
  if (typeof v === "string") {
    if (col.format === "commit") return v.slice(0, 12);
    if (col.format === "time") return v.slice(0, 16).replace("T", " ");
  }
  return formatValue(v);
}

const cell = (s: string) => s.replaceAll("|", "\\|").replaceAll("\n", " ");

/** A GitHub-flavoured markdown table. */
export function markdownTable(
  header: readonly string[],
  rows: readonly (readonly string[])[],
): string {
  const line = (cells: readonly string[]) => `| ${cells.map(cell).join(" | ")} |`;
  return [line(header), line(header.map(() => "---")), ...rows.map(line)].join("\n");
}

/** Scalars of a nested JSON object keyed by dotted path; arrays are left out. */
export function flattenScalars(
  o: Readonly<Record<string, unknown>>,
  prefix = "",
): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [k, v] of Object.entries(o)) {
    if (v !== null && typeof v === "object") {
      if (!Array.isArray(v)) {
        for (const [kk, vv] of flattenScalars(v as Record<string, unknown>, `${prefix}${k}.`)) {
          out.set(kk, vv);
        }
      }
    } else out.set(prefix + k, v);
  }
  return out;
}

/** Text shown where a run lacks a value (older files lack newer fields). */
export const NOT_RECORDED = "not recorded";

// ---------------------------------------------------------------- rendering

/** What rendering a table needs besides the runs. */
export interface TableContext {
  /** The run's results file as a link target relative to the report. */
  readonly link: (run: LoadedResult) => string;
  /** A run's artifact as a link target relative to the report. */
  readonly artifactLink: (run: LoadedResult, artifact: string) => string;
  /** Per results file, the paths earlier tables of the section showed (read by `rest`). */
  readonly shown: Map<string, Set<string>>;
}

const wrapPath = (p: string) => (/[\s()<>]/.test(p) ? `<${p}>` : p);
const quoted = (q: Quote) => q.figure !== undefined ? `Figure ${q.figure}` : `Table ${q.table}`;
const paperSource = (q: Quote) => `${q.seed.slice(0, 3)} ${quoted(q)}`;

/** The runs a table reads: of its experiments, satisfying its `where`. */
export function selectRuns(
  def: Pick<TableDef, "experiments" | "where">,
  runs: readonly LoadedResult[],
): LoadedResult[] {
  return runs.filter((r) =>
    def.experiments.includes(r.result.experiment) &&
    satisfies(def.where, { run: r, label: r.result.run })
  );
}

/** The loose view of a results file: fields newer than some files (command, env.cpu). */
const field = (r: LoadedResult, path: string) => getPath(r.result, path);

/** One line per run: its file, the command that reproduces it, the machine it ran on. */
export function runLine(r: LoadedResult, ctx: TableContext): string {
  const command = field(r, "command");
  const cpu = field(r, "env.cpu");
  const e = r.result.env;
  const segments = field(r, "segments");
  const dirty = field(r, "env.dirty") === true || e.commit.endsWith("-dirty");
  const parts = [
    typeof command === "string" ? `\`${command}\`` : `command ${NOT_RECORDED}`,
    `CPU ${typeof cpu === "string" ? cpu : NOT_RECORDED}, ${e.cpus} cores, ${e.engine}`,
    `commit ${e.commit.slice(0, 12)}${dirty ? "-dirty" : ""}`,
    `finished ${formatCell(r.result.finished, { format: "time" })}`,
    ...(Array.isArray(segments) ? [`${segments.length} segment(s)`] : []),
  ];
  return `- [${r.result.run}](${wrapPath(ctx.link(r))}): ${parts.join("; ")}`;
}

interface Row {
  readonly source: string;
  readonly cells: readonly string[];
}

function rowsOf(def: TableDef, row: RowContext, ctx: TableContext): Row[] {
  const matches = def.each ? matchPattern(row.run.result, def.each) : [undefined];
  const rows = matches.map((match) => ({ ...row, match })).filter((r) =>
    satisfies(def.rowsWhere, r)
  );
  const link = wrapPath(ctx.link(row.run));
  const source = `ours: [${row.run.result.run}](${link})`;
  if (rows.length === 0) {
    // `each` found nothing: the file predates the field (e.g. segments).
    return [{
      source,
      cells: def.columns.map((c) =>
        c.path === "$label" ? row.label : c.path === undefined ? "" : NOT_RECORDED
      ),
    }];
  }
  const shown = ctx.shown.get(row.run.path) ?? new Set<string>();
  ctx.shown.set(row.run.path, shown);
  return rows.map((r) => ({
    source,
    cells: def.columns.map((c) => {
      if (c.path === undefined) return "";
      const { value, abs } = resolve(c.path, r);
      if (abs) shown.add(abs);
      if (value === undefined) return NOT_RECORDED;
      if (value === null) return "n/a"; // recorded as not applicable (e.g. t of a pixel baseline)
      const text = formatCell(value, c);
      return typeof value === "number" ? `[${text}](${link})` : text;
    }),
  }));
}

// Every scalar under `metrics` that no earlier table of the section showed, one row each.
function restRows(runs: readonly LoadedResult[], ctx: TableContext): Row[] {
  return runs.flatMap((r) => {
    const shown = ctx.shown.get(r.path) ?? new Set<string>();
    const link = wrapPath(ctx.link(r));
    return [...flattenScalars(r.result.metrics, "metrics.")]
      .filter(([k]) => !shown.has(k))
      .map(([k, v]) => ({
        source: `ours: [${r.result.run}](${link})`,
        cells: [
          k.slice("metrics.".length),
          typeof v === "number" ? `[${formatValue(v)}](${link})` : formatValue(v),
        ],
      }));
  });
}

/**
 * Render one table: heading, scale, the paper's rows, ours (one per run, or per `each` match),
 * a missing row for every expected run not found, then the commands for the missing runs and
 * one line per run used (file, command, machine).
 */
export function renderTable(
  def: TableDef,
  runs: readonly LoadedResult[],
  ctx: TableContext,
): string {
  const selected = selectRuns(def, runs);
  const out = [`### ${def.title}`];
  const scale = [
    def.scale?.paper ? `Paper: ${def.scale.paper}.` : "",
    def.scale ? `Ours: ${def.scale.ours}.` : "",
    def.note ?? "",
  ].filter((s) => s !== "").join(" ");
  if (scale) out.push(scale);

  if (def.rest) {
    const rows = restRows(selected, ctx);
    if (rows.length === 0) return "";
    out.push(
      markdownTable(["source", "metric", "value"], rows.map((r) => [r.source, ...r.cells])),
    );
    return out.join("\n\n");
  }

  const rows: Row[] = (def.paper ?? []).flatMap((q) =>
    q.rows.map((cells) => ({
      source: paperSource(q),
      cells: def.columns.map((c) => cells[c.key] ?? ""),
    }))
  );
  const missing: Expected[] = [];
  const claimed = new Set<LoadedResult>();
  for (const exp of def.expected ?? []) {
    const found = selected.filter((r) =>
      !claimed.has(r) && satisfies(exp.where, { run: r, label: exp.label })
    );
    if (found.length === 0) {
      missing.push(exp);
      const labelled = def.columns.some((c) => c.path === "$label");
      rows.push({
        source: labelled ? "ours: **missing**" : `ours: **missing** (${exp.label})`,
        cells: def.columns.map((c) => (c.path === "$label" ? exp.label : "")),
      });
    }
    for (const r of found) {
      claimed.add(r);
      rows.push(...rowsOf(def, { run: r, label: exp.label }, ctx));
    }
  }
  const others = selected.filter((r) => !claimed.has(r));
  for (const r of others) rows.push(...rowsOf(def, { run: r, label: r.result.run }, ctx));
  if (selected.length === 0 && (def.expected ?? []).length === 0) {
    rows.push({ source: "ours: **missing**", cells: def.columns.map(() => "") });
  }

  out.push(
    markdownTable(
      ["source", ...def.columns.map((c) => c.header)],
      rows.map((r) => [
        r.source,
        ...r.cells,
      ]),
    ),
  );
  const bySeed = new Map<string, string[]>();
  for (const q of def.paper ?? []) bySeed.set(q.seed, [...bySeed.get(q.seed) ?? [], quoted(q)]);
  const quotes = [...bySeed].map(([seed, t]) => `\`../shared/seeds/${seed}\`, ${t.join(", ")}`);
  if (quotes.length > 0) out.push(`Paper rows quoted from ${quotes.join("; ")}.`);
  const findings = def.findings?.(selected) ?? [];
  if (findings.length > 0) {
    out.push(
      ["Findings (computed from the runs above):", ...findings.map((f) => `- ${f}`)].join("\n"),
    );
  }
  if (missing.length > 0) {
    out.push(
      [
        "Missing runs:",
        ...missing.map((m) =>
          `- ${m.label}: \`${m.command}\`${m.setting ? ` (${m.setting})` : ""}`
        ),
      ].join("\n"),
    );
  } else if (selected.length === 0) {
    out.push(`Missing runs: no run yet; make one with \`${def.command}\`.`);
  }
  if (selected.length > 0) {
    out.push(["Runs:", ...selected.map((r) => runLine(r, ctx))].join("\n"));
  }
  if (def.artifacts) {
    const re = new RegExp(def.artifacts);
    const images = selected.flatMap((r) =>
      r.result.artifacts.filter((a) => re.test(a)).map((a) =>
        `![${r.result.run}: ${a.split("/").pop()}](${wrapPath(ctx.artifactLink(r, a))})`
      )
    );
    if (images.length > 0) out.push(images.join("\n\n"));
  }
  return out.join("\n\n");
}
