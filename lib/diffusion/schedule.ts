// Gaussian diffusion noise schedules as plain float64 tables (guided_diffusion/
// gaussian_diffusion.py, facts.md §3). Everything here is numbers, not tensors: the tables are
// computed once per schedule, never change, and `gaussian.ts` gathers from them per batch.
//
// Symbols: T steps, index t in 0..T-1 (t = 0 is the first noising step), β_t the noise added at
// step t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s, ᾱ_prev[t] = ᾱ_{t−1} (1 at t = 0), β̃_t the posterior
// variance of q(x_{t−1} | x_t, x_0).

/** Beta schedule families of guided-diffusion (`get_named_beta_schedule`). */
export type BetaScheduleName = "linear" | "cosine";

/** Every table a sampler or loss needs, indexed by t in 0..T-1; read-only by contract. */
export interface Schedule {
  readonly name: BetaScheduleName | "respaced";
  readonly T: number;
  /** Model timestep fed to the network for index t: identity, or the kept steps when respaced. */
  readonly timestepMap: Int32Array;
  readonly betas: Float64Array;
  readonly logBetas: Float64Array;
  readonly alphas: Float64Array;
  readonly alphasCumprod: Float64Array;
  readonly alphasCumprodPrev: Float64Array;
  readonly alphasCumprodNext: Float64Array;
  // q(x_t | x_0)
  readonly sqrtAlphasCumprod: Float64Array;
  readonly sqrtOneMinusAlphasCumprod: Float64Array;
  readonly logOneMinusAlphasCumprod: Float64Array;
  readonly sqrtRecipAlphasCumprod: Float64Array;
  readonly sqrtRecipm1AlphasCumprod: Float64Array;
  // q(x_{t-1} | x_t, x_0)
  readonly posteriorVariance: Float64Array;
  /** log β̃ with β̃_0 (= 0) replaced by β̃_1 so that the log is finite. */
  readonly posteriorLogVarianceClipped: Float64Array;
  readonly posteriorMeanCoef1: Float64Array;
  readonly posteriorMeanCoef2: Float64Array;
}

// ---------------------------------------------------------------------------------------------
// Beta schedules
// ---------------------------------------------------------------------------------------------

/** ᾱ(s) for s ∈ [0, 1] of the cosine schedule (Nichol & Dhariwal 2021, eq. 17, offset 0.008). */
export function cosineAlphaBar(s: number): number {
  return Math.cos(((s + 0.008) / 1.008) * Math.PI / 2) ** 2;
}

/**
 * β_t for a named schedule with T steps. Linear: linspace(1e-4·s, 0.02·s, T) with s = 1000/T so
 * that any T approximates the T = 1000 process. Cosine: β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), 0.999).
 * @throws when T is not a positive integer
 */
export function betaSchedule(name: BetaScheduleName, T = 1000): Float64Array {
  if (!Number.isInteger(T) || T < 1) {
    throw new Error(`schedule.ts: T must be a positive integer, got ${T}`);
  }
  const betas = new Float64Array(T);
  if (name === "linear") {
    const scale = 1000 / T;
    const start = 1e-4 * scale, end = 0.02 * scale;
    // numpy linspace: start + i·step, with the last point exactly `end`.
    const step = T > 1 ? (end - start) / (T - 1) : 0;
    for (let i = 0; i < T; i++) betas[i] = i === T - 1 && T > 1 ? end : start + i * step;
  } else if (name === "cosine") {
    for (let i = 0; i < T; i++) {
      betas[i] = Math.min(1 - cosineAlphaBar((i + 1) / T) / cosineAlphaBar(i / T), 0.999);
    }
  } else {
    throw new Error(`schedule.ts: unknown beta schedule "${name as string}"`);
  }
  return betas;
}

// ---------------------------------------------------------------------------------------------
// Derived tables
// ---------------------------------------------------------------------------------------------

const map = (a: Float64Array, f: (x: number, i: number) => number): Float64Array => {
  const out = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = f(a[i], i);
  return out;
};

/**
 * All schedule tables from betas (each in (0, 1]).
 * @param timestepMap the model timestep of each index (identity by default)
 * @throws when a beta is out of range or the map has the wrong length
 */
export function makeSchedule(
  betas: Float64Array,
  name: Schedule["name"] = "respaced",
  timestepMap?: Int32Array,
): Schedule {
  const T = betas.length;
  if (T < 1) throw new Error("schedule.ts: betas must not be empty");
  betas.forEach((b, i) => {
    if (!(b > 0 && b <= 1)) throw new Error(`schedule.ts: beta[${i}] = ${b} is outside (0, 1]`);
  });
  const map_ = timestepMap ?? Int32Array.from({ length: T }, (_, i) => i);
  if (map_.length !== T) {
    throw new Error(`schedule.ts: timestepMap has ${map_.length} entries, expected ${T}`);
  }
  const b = Float64Array.from(betas);
  const alphas = map(b, (x) => 1 - x);
  const acp = new Float64Array(T);
  let prod = 1;
  for (let i = 0; i < T; i++) acp[i] = prod *= alphas[i];
  const acpPrev = map(acp, (_, i) => (i === 0 ? 1 : acp[i - 1]));
  const acpNext = map(acp, (_, i) => (i === T - 1 ? 0 : acp[i + 1]));
  const postVar = map(b, (x, i) => (x * (1 - acpPrev[i])) / (1 - acp[i]));
  return Object.freeze({
    name,
    T,
    timestepMap: Int32Array.from(map_),
    betas: b,
    logBetas: map(b, Math.log),
    alphas,
    alphasCumprod: acp,
    alphasCumprodPrev: acpPrev,
    alphasCumprodNext: acpNext,
    sqrtAlphasCumprod: map(acp, Math.sqrt),
    sqrtOneMinusAlphasCumprod: map(acp, (a) => Math.sqrt(1 - a)),
    logOneMinusAlphasCumprod: map(acp, (a) => Math.log(1 - a)),
    sqrtRecipAlphasCumprod: map(acp, (a) => Math.sqrt(1 / a)),
    sqrtRecipm1AlphasCumprod: map(acp, (a) => Math.sqrt(1 / a - 1)),
    posteriorVariance: postVar,
    // β̃_0 = 0; guided-diffusion substitutes β̃_1 (with T = 1 there is none: keep β_0).
    posteriorLogVarianceClipped: map(
      postVar,
      (v, i) => Math.log(i === 0 ? (T > 1 ? postVar[1] : b[0]) : v),
    ),
    posteriorMeanCoef1: map(b, (x, i) => (x * Math.sqrt(acpPrev[i])) / (1 - acp[i])),
    posteriorMeanCoef2: map(acp, (a, i) => ((1 - acpPrev[i]) * Math.sqrt(alphas[i])) / (1 - a)),
  });
}

const cache = new Map<string, Schedule>();

/** The named schedule with T steps (computed once, then shared). */
export function namedSchedule(name: BetaScheduleName, T = 1000): Schedule {
  const key = `${name}:${T}`;
  let s = cache.get(key);
  if (!s) {
    s = makeSchedule(betaSchedule(name, T), name);
    cache.set(key, s);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Respacing (guided_diffusion/respace.py)
// ---------------------------------------------------------------------------------------------

// Python's round(): halves go to the even neighbour.
function roundHalfEven(x: number): number {
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * The kept model timesteps (ascending) when sampling a T-step process in `steps` steps.
 * "ddim" (default): the DDIM paper's integer stride, 0, k, 2k, … with exactly `steps` entries
 * (space_timesteps "ddimN"); throws when no stride gives that count. "uniform": one section of
 * fractional stride (T−1)/(steps−1), rounded (space_timesteps "N"), which always exists.
 */
export function samplingTimesteps(
  T: number,
  steps: number,
  spacing: "ddim" | "uniform" = "ddim",
): number[] {
  if (!Number.isInteger(steps) || steps < 1 || steps > T) {
    throw new Error(`schedule.ts: cannot sample ${T} steps in ${steps}: need 1 ≤ steps ≤ T`);
  }
  if (spacing === "ddim") {
    for (let k = 1; k <= T; k++) {
      if (Math.ceil(T / k) === steps) return Array.from({ length: steps }, (_, i) => i * k);
    }
    throw new Error(
      `schedule.ts: no integer stride gives exactly ${steps} of ${T} steps; use "uniform" spacing`,
    );
  }
  const stride = steps <= 1 ? 1 : (T - 1) / (steps - 1);
  const kept = new Set<number>();
  for (let i = 0; i < steps; i++) kept.add(roundHalfEven(i * stride));
  return [...kept].sort((a, b) => a - b);
}

/**
 * The schedule that steps only through `kept` (ascending model timesteps of `base`):
 * β'_j = 1 − ᾱ_{kept[j]}/ᾱ_{kept[j−1]}, so ᾱ' equals ᾱ at the kept steps; `timestepMap` maps each
 * new index back to the original t the network was trained on.
 */
export function respace(base: Schedule, kept: readonly number[]): Schedule {
  const sorted = [...new Set(kept)].sort((a, b) => a - b);
  if (sorted.length === 0 || sorted[0] < 0 || sorted[sorted.length - 1] >= base.T) {
    throw new Error(`schedule.ts: kept timesteps must lie in 0..${base.T - 1}`);
  }
  const betas = new Float64Array(sorted.length);
  let last = 1;
  sorted.forEach((t, j) => {
    betas[j] = 1 - base.alphasCumprod[t] / last;
    last = base.alphasCumprod[t];
  });
  const origMap = Int32Array.from(sorted, (t) => base.timestepMap[t]);
  return makeSchedule(betas, "respaced", origMap);
}
