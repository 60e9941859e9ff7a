// Pre-training checkpoints: starting fresh or resuming, with every group of the file (weights,
// EMA, optimiser moments) and its metadata checked before any tensor is used, and the run's
// provenance kept as segments (one per start: steps, commit, engine, CPU, times). A checkpoint
// that fails a check is reported in one error and left exactly as it is.
import { initParams, type ModelSpec, paramShapes } from "./models/mod.ts";
import { initTrainState, type StepOptions, type TrainState } from "./train.ts";
import {
  checkpointFaults,
  disposeCheckpoint,
  loadCheckpoint,
  type LoadedCheckpoint,
  loadParamsStrict,
  saveCheckpoint,
} from "./io/checkpoint.ts";
import { fileExists, removeStaleTemps } from "./io/atomic.ts";
import { shortList } from "./messages.ts";
import type { RunEnv, Segment } from "./results.ts";
import type { Rng } from "./random.ts";

/** The loss curve: mean loss over each window of `every` steps, as [last step, mean]. */
export interface LossCurve {
  readonly every: number;
  readonly points: [number, number][];
}

/** What a run carries besides its tensors; saved in the checkpoint's metadata. */
export interface RunRecord {
  readonly curve: LossCurve;
  /** Losses of the window in progress (steps after the last curve point). */
  readonly window: number[];
  /** Earlier segments, oldest first. */
  readonly segments: Segment[];
}

const CHECKPOINT_FILE = "checkpoint.safetensors";
export const checkpointPath = (dir: string) => `${dir}/${CHECKPOINT_FILE}`;

/** The fields of a run's config that must agree for its checkpoint to be resumed. */
export interface Resumable {
  readonly model: ModelSpec;
  readonly steps: number;
}

// Faults of the metadata: step, optimiser count, loss curve, window and segments must agree.
function metaFaults(meta: Record<string, unknown>, step: number, every: number): string[] {
  const faults: string[] = [];
  const curve = meta.lossCurve as LossCurve | undefined;
  const window = meta.lossWindow as unknown;
  const segments = meta.segments as unknown;
  if (meta.optCount !== step) faults.push(`optimiser count ${meta.optCount} is not step ${step}`);
  const points = Array.isArray(curve?.points) ? curve.points : undefined;
  if (!curve || curve.every !== every || !points) {
    faults.push(`loss curve is not one point every ${every} steps`);
  } else {
    points.forEach((p, i) => {
      if (!Array.isArray(p) || p[0] !== (i + 1) * every || !(Number.isFinite(p[1]) && p[1] >= 0)) {
        faults.push(`loss curve point ${i} is ${JSON.stringify(p)}`);
      }
    });
    if (points.length !== Math.floor(step / every)) {
      faults.push(`loss curve has ${points.length} points for ${step} steps`);
    }
  }
  if (
    !Array.isArray(window) || window.length !== step % every ||
    !window.every((v) => Number.isFinite(v) && v >= 0)
  ) {
    faults.push(`loss window does not hold the ${step % every} losses since the last point`);
  }
  if (!Array.isArray(segments)) faults.push("segments are missing");
  else {
    let at = 0;
    for (const [i, s] of (segments as Segment[]).entries()) {
      if (s?.from_step !== at || !(s.to_step >= s.from_step)) {
        faults.push(`segment ${i} is out of order`);
      }
      at = s?.to_step;
    }
    if (segments.length > 0 && at !== step) faults.push(`segments end at ${at}, not step ${step}`);
  }
  return faults;
}

/**
 * A run's identity for resuming: its whole config except the step budget, which a rerun may
 * raise (or lower down to the checkpoint's step).
 */
const runIdentity = (c: { readonly steps: number }) => JSON.stringify({ ...c, steps: undefined });

/**
 * Open a resumable run's checkpoint with the checks every run makes before its tensors: that it
 * belongs to this run (`identity` of the saved config equals that of `cfg`) and that its step
 * lies within --steps. `fail` (which disposes the checkpoint and names it) serves the caller's
 * further checks.
 * @throws naming the checkpoint, which is left as it is
 */
export async function openRunCheckpoint<C extends { readonly steps: number }>(
  path: string,
  cfg: C,
  identity: (c: C) => string = runIdentity,
): Promise<{
  readonly ck: LoadedCheckpoint;
  readonly step: number;
  readonly fail: (what: string) => Error;
}> {
  const ck = await loadCheckpoint(path);
  const fail = (what: string) => {
    disposeCheckpoint(ck);
    return new Error(`Checkpoint "${path}" ${what}; it is left as it is`);
  };
  const saved = ck.meta.config as C | undefined;
  if (saved === undefined || identity(saved) !== identity(cfg)) {
    const keys = [...new Set([...Object.keys(saved ?? {}), ...Object.keys(cfg)])].filter((k) =>
      k !== "steps" &&
      JSON.stringify((saved as Record<string, unknown> | undefined)?.[k]) !==
        JSON.stringify((cfg as Record<string, unknown>)[k])
    );
    const what = keys.length ? `config differs in ${keys.join(", ")}` : "config differs";
    throw fail(`belongs to a different run (${what}): use another --out or delete it`);
  }
  const step = ck.step ?? -1;
  if (!(Number.isSafeInteger(step) && step >= 0)) throw fail(`has a bad step ${ck.step}`);
  if (step > cfg.steps) {
    throw fail(`is at step ${step}, past --steps ${cfg.steps}: pass --steps ${step} or more`);
  }
  return { ck, step, fail };
}

/**
 * A fresh run's state, or the checkpoint in `dir` resumed, after checking it belongs to this
 * run and is sound in every group.
 * @throws naming the file and every fault; the file is left untouched
 */
export async function resumeOrInit(
  cfg: Resumable,
  dir: string,
  opts: StepOptions,
  initKey: Rng,
  every: number,
): Promise<{ state: TrainState; record: RunRecord }> {
  const path = checkpointPath(dir);
  // Temp files of checkpoint writes killed mid-way are useless; free their space at the start.
  await removeStaleTemps(path).catch(() => []);
  if (!await fileExists(path)) {
    const state = initTrainState(initParams(cfg.model, initKey), opts);
    return { state, record: { curve: { every, points: [] }, window: [], segments: [] } };
  }
  const { ck, step, fail } = await openRunCheckpoint(path, cfg);
  const shapes = paramShapes(cfg.model);
  const faults = [
    ...checkpointFaults(ck, {
      params: shapes,
      ema: opts.emaRate === undefined ? undefined : shapes,
      opt: opts.optimizer.slotShapes(shapes),
    }),
    ...metaFaults(ck.meta, step, every),
  ];
  if (faults.length > 0) throw fail(`cannot be resumed: ${shortList(faults, 5)}`);
  const params = loadParamsStrict(shapes, ck.params, `"${path}"`);
  const state: TrainState = {
    params,
    opt: { count: step, slots: { ...ck.optState } },
    ema: opts.emaRate === undefined ? undefined : { ...ck.ema },
    step,
  };
  return {
    state,
    record: {
      curve: ck.meta.lossCurve as LossCurve,
      window: [...(ck.meta.lossWindow as number[])],
      segments: [...(ck.meta.segments as Segment[])],
    },
  };
}

/** The segment this process is running: opened at start, extended at every save. */
export class SegmentClock {
  private readonly t0 = performance.now();
  private readonly head: Omit<Segment, "to_step" | "finished" | "train_s">;

  /** Opened at step `fromStep` of a run whose environment `startRun` captured. */
  constructor(fromStep: number, env: RunEnv) {
    this.head = {
      from_step: fromStep,
      commit: env.commit,
      dirty: env.dirty ?? null,
      engine: env.engine,
      engine_details: { ...env.engine_details },
      cpu: env.cpu ?? "unknown",
      cpus: env.cpus,
      started: new Date().toISOString(),
    };
  }

  /** The segment as it stands at `step`. */
  at(step: number): Segment {
    return {
      ...this.head,
      to_step: step,
      finished: new Date().toISOString(),
      train_s: Math.round(performance.now() - this.t0) / 1000,
    };
  }
}

/** Save a run's checkpoint: its tensors, config and record (with this segment appended). */
export function saveRun(
  dir: string,
  cfg: object,
  s: TrainState,
  record: RunRecord,
  segment: Segment,
): Promise<void> {
  return saveCheckpoint(checkpointPath(dir), {
    params: s.params,
    ema: s.ema,
    optState: s.opt.slots,
    step: s.step,
    meta: {
      config: cfg,
      optCount: s.opt.count,
      lossCurve: record.curve,
      lossWindow: record.window,
      segments: [...record.segments, segment],
    },
  });
}

/** Images per second over the segments whose training time is known; null when none is. */
export function throughput(segments: readonly Segment[], batch: number): number | null {
  const known = segments.filter((s) => s.train_s !== null && s.train_s > 0);
  const seconds = known.reduce((a, s) => a + s.train_s!, 0);
  const steps = known.reduce((a, s) => a + s.to_step - s.from_step, 0);
  return seconds > 0 ? (steps * batch) / seconds : null;
}
