// Progress reporting for long loops, on stderr: a live bar (cli-progress) on a terminal, and plain
// lines every few seconds otherwise (CI logs, files), each with step, rate, ETA and the metrics.
import cliProgress from "cli-progress";

export interface Progress {
  /** Record that `step` (1-based, out of `total`) is done, with metrics to show (e.g. loss). */
  tick(step: number, metrics?: Readonly<Record<string, number>>): void;
  /** Close the bar / print a final line. */
  done(): void;
}

export interface ProgressOptions {
  readonly label: string;
  readonly total: number;
  /** Step the loop starts from (a resumed run), so the rate counts only this run's steps. */
  readonly start?: number;
  /** Seconds between plain lines when stderr is not a terminal. @default 10 */
  readonly every?: number;
  /** Force plain lines (tests) or a bar. @default stderr is a terminal */
  readonly tty?: boolean;
  /** Print nothing at all. @default false */
  readonly quiet?: boolean;
}

/** Seconds as a compact duration, e.g. `1h02m`, `4m05s`, `12s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, "0")}m`;
  if (m > 0) return `${m}m${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

const formatMetrics = (metrics: Readonly<Record<string, number>>) =>
  Object.entries(metrics).map(([k, v]) =>
    `${k} ${Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4 ? v.toExponential(3) : v.toFixed(4)}`
  )
    .join(" | ");

/** A progress reporter for a loop of `total` steps. */
export function progress(opts: ProgressOptions): Progress {
  const start = opts.start ?? 0;
  const t0 = performance.now();
  const rate = (step: number) => (step - start) / ((performance.now() - t0) / 1000);
  const eta = (step: number) => formatDuration((opts.total - step) / rate(step));
  if (opts.quiet) return { tick: () => {}, done: () => {} };

  if (opts.tty ?? Deno.stderr.isTerminal()) {
    const bar = new cliProgress.SingleBar({
      format: `${opts.label} [{bar}] {value}/{total} | {rate} steps/s | ETA {etaText} | {metrics}`,
      barsize: 24,
      hideCursor: true,
      clearOnComplete: false,
    });
    bar.start(opts.total, start, { rate: "-", etaText: "?", metrics: "" });
    return {
      tick: (step, metrics = {}) =>
        bar.update(step, {
          rate: rate(step).toFixed(2),
          etaText: eta(step),
          metrics: formatMetrics(metrics),
        }),
      done: () => bar.stop(),
    };
  }

  const every = (opts.every ?? 10) * 1000;
  let last = -Infinity;
  let lastStep = start;
  let lastMetrics: Readonly<Record<string, number>> = {};
  const line = (step: number) => {
    const m = formatMetrics(lastMetrics);
    console.error(
      `${opts.label} step ${step}/${opts.total} | ${rate(step).toFixed(2)} steps/s | ETA ${
        eta(step)
      }${m ? " | " + m : ""}`,
    );
  };
  return {
    tick: (step, metrics = {}) => {
      lastStep = step;
      lastMetrics = metrics;
      const now = performance.now();
      if (now - last >= every || step === opts.total) {
        last = now;
        line(step);
      }
    },
    done: () => {
      if (lastStep !== opts.total && lastStep > start) line(lastStep);
    },
  };
}
