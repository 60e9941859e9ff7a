// Centered kernel alignment (CKA, Kornblith et al. 2019, "Similarity of neural network
// representations revisited"), the similarity seed 001 §4.3 (Figure 6) measures between the
// blocks of the diffusion U-Net, between timesteps, and against supervised networks.
//
// Symbols: X [n, d_x] and Y [n, d_y] are two representations of the same n examples (rows), a
// feature map [n, h, w, C] flattened; K = k(X) and L = l(Y) are their n×n Gram matrices;
// H = I − 11ᵀ/n centres.
//
// Full batch (biased, HSIC_0): CKA = ⟨HKH, HLH⟩_F / (‖HKH‖_F · ‖HLH‖_F)     (Kornblith eq. 4)
//
// Minibatch (Nguyen, Raghu & Kornblith 2021, "Do wide and deep networks learn the same things?",
// eq. 3): over minibatches i of n ≥ 4 rows each,
//   CKA = Σ_i HSIC_1(K_i, L_i) / sqrt(Σ_i HSIC_1(K_i, K_i) · Σ_i HSIC_1(L_i, L_i)),
// with the unbiased estimator of Song et al. (2012), K̃ and L̃ being K and L with zero diagonal:
//   HSIC_1(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)).
// Memory is one n×n matrix per representation, whatever d and the number of examples.
//
// HSIC_1 is computed as ⟨U(K), U(L)⟩_F / (n(n−3)) with U the U-centring of Székely & Rizzo
// (2014, "Partial distance correlation with methods for dissimilarities", §4.1):
//   U(K)_ij = K̃_ij − r_i/(n−2) − r_j/(n−2) + s/((n−1)(n−2)) for i ≠ j, U(K)_ii = 0,
// r_i = Σ_j K̃_ij, s = Σ_i r_i. It equals Song's form (the tests check it), costs one n² dot
// product per pair once each U(K) is formed, and, being an inner product, gives HSIC_1(K, K) ≥ 0
// and |CKA| ≤ 1 (Cauchy–Schwarz) on any data. U(K) ignores K's diagonal and any change
// K_ij → K_ij + a_i + a_j + b, so a shift of every row of X leaves it unchanged: features are
// centred per minibatch before their Gram is formed, which keeps the float32 product accurate.
//
// Kernels: linear, k(x, x') = x·x'; RBF, k(x, x') = exp(−‖x − x'‖² / (2σ²)) with σ² = f² ·
// median of ‖x_i − x_j‖² over the pairs i < j of the Gram's own rows (per minibatch), so σ is f
// times the median distance. Kornblith et al. use f ∈ {0.2, 0.4, 0.8} (their Table 2) and take the
// median over the whole matrix, diagonal zeros included (negligible for n ≳ 100); f = 0.8 is the
// default here. A median of 0 (most rows equal) makes the kernel the σ → 0 limit, 1 where rows are
// equal and 0 elsewhere.
//
// Precision: the Gram products are float32 on the tfjs backend (centred features); kernels,
// centring, dot products and the sums over minibatches are float64 here. A CKA whose denominator
// is 0 (a constant representation) is NaN.
import * as tf from "@tensorflow/tfjs";

// ---------------------------------------------------------------------------------------------
// Inputs and kernels
// ---------------------------------------------------------------------------------------------

/**
 * n rows of features: a tensor [n, ...] (flattened to [n, d]), or n·d floats with their row
 * count n. Feature maps [n, h, w, C] may be passed as they are.
 */
export type Rows = tf.Tensor | { readonly data: Float32Array; readonly rows: number };

/** The kernel of the Gram matrices. */
export type CkaKernel =
  | { readonly kind: "linear" }
  /** RBF with σ = `fraction` × the median pairwise distance of the minibatch. */
  | { readonly kind: "rbf"; /** @default RBF_FRACTION */ readonly fraction?: number };

/** σ as a fraction of the median pairwise distance (Kornblith et al. 2019, Table 2's 0.8). */
export const RBF_FRACTION = 0.8;

/** Fewest rows of a minibatch: HSIC_1 divides by n(n − 3) and (n − 1)(n − 2). */
export const MIN_BATCH = 4;

const LINEAR: CkaKernel = { kind: "linear" };

/** Row count of `x`. */
function rowCount(x: Rows, what: string): number {
  if (x instanceof tf.Tensor) {
    if (x.rank < 2) throw new Error(`${what}: features are [${x.shape}], expected [n, d, ...]`);
    return x.shape[0];
  }
  const { data, rows } = x;
  if (!(Number.isInteger(rows) && rows >= 0) || (rows === 0 ? data.length : data.length % rows)) {
    throw new Error(`${what}: ${data.length} floats are not ${rows} whole rows`);
  }
  return rows;
}

/** The n×n Gram matrix of centred rows, X_c X_cᵀ, computed on the backend in float32. */
function centredGram(x: Rows, what: string): Float32Array {
  const n = rowCount(x, what);
  if (n === 0) return new Float32Array(0);
  const g = tf.tidy(() => {
    const m = x instanceof tf.Tensor
      ? tf.reshape(tf.cast(x, "float32"), [n, -1])
      : tf.tensor2d(x.data, [n, x.data.length / n]); // [n, d]
    const c = tf.sub(m, tf.mean(m, 0, true));
    return tf.matMul(c, c, false, true); // [n, n]
  });
  try {
    const out = g.dataSync() as Float32Array;
    for (let i = 0; i < out.length; i++) {
      if (!Number.isFinite(out[i])) throw new Error(`${what}: features are not finite`);
    }
    return out;
  } finally {
    g.dispose();
  }
}

// Lower median of a Float64Array (sorted in place).
function median(v: Float64Array): number {
  v.sort();
  return v.length ? v[(v.length - 1) >> 1] : 0;
}

// σ's fraction of an RBF kernel, 0 for linear.
function kernelFraction(kernel: CkaKernel, what: string): number {
  if (kernel?.kind === "linear") return 0;
  if (kernel?.kind !== "rbf") {
    throw new Error(`${what}: unknown kernel "${(kernel as { kind?: unknown })?.kind}"`);
  }
  const f = kernel.fraction ?? RBF_FRACTION;
  if (!(f > 0 && Number.isFinite(f))) {
    throw new Error(`${what}: RBF fraction should be positive, got ${f}`);
  }
  return f;
}

/**
 * The n×n kernel matrix of a representation, float64, row-major.
 * @throws Error for a bad kernel, rows that are not whole, or non-finite features
 * @example
 * ```ts
 * const k = kernelMatrix({ data: new Float32Array([0, 1, 2, 3]), rows: 2 }); // 2×2
 * ```
 */
export function kernelMatrix(x: Rows, kernel: CkaKernel = LINEAR): Float64Array {
  return kernelOf(x, kernel, "kernelMatrix");
}

function kernelOf(x: Rows, kernel: CkaKernel, what: string): Float64Array {
  const fraction = kernelFraction(kernel, what);
  const g = centredGram(x, what);
  const n = Math.round(Math.sqrt(g.length));
  const k = Float64Array.from(g);
  if (fraction === 0) return k;
  // ‖x_i − x_j‖² = G_ii + G_jj − 2 G_ij, clamped at 0 against rounding.
  const sq = new Float64Array(n * n);
  const upper = new Float64Array((n * (n - 1)) / 2);
  for (let i = 0, u = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const d = Math.max(0, g[i * n + i] + g[j * n + j] - 2 * g[i * n + j]);
      sq[i * n + j] = i === j ? 0 : d;
      if (j > i) upper[u++] = d;
    }
  }
  const twoSigma2 = 2 * fraction * fraction * median(upper);
  for (let i = 0; i < n * n; i++) {
    k[i] = twoSigma2 > 0 ? Math.exp(-sq[i] / twoSigma2) : sq[i] === 0 ? 1 : 0;
  }
  return k;
}

// ---------------------------------------------------------------------------------------------
// Centring and HSIC
// ---------------------------------------------------------------------------------------------

/** U(K) of the header (Székely & Rizzo 2014): n ≥ 4. */
function uCentre(k: Float64Array, n: number): Float64Array {
  const r = new Float64Array(n);
  let s = 0;
  for (let i = 0; i < n; i++) {
    let ri = 0;
    for (let j = 0; j < n; j++) if (j !== i) ri += k[i * n + j];
    r[i] = ri;
    s += ri;
  }
  const u = new Float64Array(n * n);
  const c = s / ((n - 1) * (n - 2));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      if (j !== i) u[i * n + j] = k[i * n + j] - (r[i] + r[j]) / (n - 2) + c;
    }
  }
  return u;
}

/** HKH: K double-centred (the biased estimator's centring). */
function hCentre(k: Float64Array, n: number): Float64Array {
  const m = new Float64Array(n);
  let all = 0;
  for (let i = 0; i < n; i++) {
    let ri = 0;
    for (let j = 0; j < n; j++) ri += k[i * n + j];
    m[i] = ri / n;
    all += ri;
  }
  all /= n * n;
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) out[i * n + j] = k[i * n + j] - m[i] - m[j] + all;
  }
  return out;
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function checkSquare(k: Float64Array, n: number, what: string): void {
  if (k.length !== n * n) throw new Error(`${what}: ${k.length} values are not ${n}×${n}`);
}

/**
 * Song et al.'s unbiased HSIC_1(K, L) of two n×n kernel matrices (float64, row-major), n ≥ 4.
 * @throws Error for n < 4 or matrices of another size
 * @example
 * ```ts
 * unbiasedHsic(kernelMatrix(x), kernelMatrix(y), n);
 * ```
 */
export function unbiasedHsic(k: Float64Array, l: Float64Array, n: number): number {
  if (!(Number.isInteger(n) && n >= MIN_BATCH)) {
    throw new Error(`unbiasedHsic: needs n >= ${MIN_BATCH} rows, got ${n}`);
  }
  checkSquare(k, n, "unbiasedHsic: K");
  checkSquare(l, n, "unbiasedHsic: L");
  return dot(uCentre(k, n), uCentre(l, n)) / (n * (n - 3));
}

const ratio = (kl: number, kk: number, ll: number) => {
  const den = Math.sqrt(kk * ll);
  return den > 0 ? kl / den : NaN;
};

// ---------------------------------------------------------------------------------------------
// Full batch
// ---------------------------------------------------------------------------------------------

/**
 * Full-batch (biased) CKA of two representations of the same n ≥ 2 examples, from their centred
 * Gram matrices: n×n memory, for tests and small data.
 * @param kernel linear (default) or RBF
 * @returns CKA in [0, 1]; NaN when a representation is constant
 * @throws Error when row counts differ, n < 2, or features are bad
 * @example
 * ```ts
 * fullBatchCka(x, y, { kind: "rbf", fraction: 0.4 });
 * ```
 */
export function fullBatchCka(x: Rows, y: Rows, kernel: CkaKernel = LINEAR): number {
  const n = rowCount(x, "CKA: X"), m = rowCount(y, "CKA: Y");
  if (n !== m) throw new Error(`CKA: X has ${n} rows, Y has ${m}: they must be the same examples`);
  if (n < 2) throw new Error(`CKA: needs at least 2 rows, got ${n}`);
  const kc = hCentre(kernelOf(x, kernel, "CKA: X"), n);
  const lc = hCentre(kernelOf(y, kernel, "CKA: Y"), n);
  return ratio(dot(kc, lc), dot(kc, kc), dot(lc, lc));
}

/**
 * Full-batch linear CKA, ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) for centred X, Y (Kornblith et al. 2019),
 * through the n×n Gram matrices.
 * @throws Error as `fullBatchCka`
 * @example
 * ```ts
 * linearCka(x, tf.matMul(x, q)); // 1 for an orthogonal q
 * ```
 */
export const linearCka = (x: Rows, y: Rows): number => fullBatchCka(x, y, LINEAR);

// ---------------------------------------------------------------------------------------------
// Minibatch accumulator
// ---------------------------------------------------------------------------------------------

/** Every (row, column) pair of a matrix of representations, for `ckaAccumulator`. */
export function matrixPairs(
  rows: readonly string[],
  cols: readonly string[] = rows,
): [string, string][] {
  return rows.flatMap((r) => cols.map((c): [string, string] => [r, c]));
}

/** The accumulated CKA of every requested pair. */
export interface CkaResult {
  /** Examples and minibatches added. */
  readonly examples: number;
  readonly batches: number;
  /** CKA of a requested pair (in either order); NaN when a representation was constant. */
  cka(a: string, b: string): number;
  /** values[i][j] = cka(rows[i], cols[j]); every pair must have been requested. */
  matrix(rows: readonly string[], cols?: readonly string[]): number[][];
}

/** Streams minibatches of named representations of the same examples. */
export interface CkaAccumulator {
  /**
   * Add one minibatch: every name of the pairs, n ≥ 4 rows each (other names are ignored).
   * @throws Error for a missing name, differing row counts, n < 4, or bad features
   */
  add(batch: ReadonlyMap<string, Rows> | Readonly<Record<string, Rows>>): void;
  /** CKA of every pair over what was added so far. */
  result(): CkaResult;
}

/**
 * Minibatch CKA (Nguyen et al. 2021) of named representations, accumulated over minibatches of
 * the same examples: each minibatch adds HSIC_1 of every pair and of every name with itself.
 * Memory: one n×n float64 matrix per name during `add`, and three sums per pair.
 * @param pairs (a, b) names to compare; `matrixPairs(rows, cols)` for a whole matrix
 * @param kernel linear (default) or RBF (σ from each minibatch's own median distance)
 * @throws Error for no pairs or a bad kernel
 * @example
 * ```ts
 * const acc = ckaAccumulator(matrixPairs(["b1", "b2"]));
 * for (const batch of batches) acc.add({ b1: batch.b1, b2: batch.b2 }); // [n, d] each
 * acc.result().matrix(["b1", "b2"]); // [[1, 0.8], [0.8, 1]]
 * ```
 */
export function ckaAccumulator(
  pairs: readonly (readonly [string, string])[],
  kernel: CkaKernel = LINEAR,
): CkaAccumulator {
  if (pairs.length === 0) throw new Error("ckaAccumulator: no pairs to compare");
  kernelFraction(kernel, "ckaAccumulator");
  const key = (a: string, b: string) => JSON.stringify(a < b ? [a, b] : [b, a]);
  const names = [...new Set(pairs.flat())];
  // Σ HSIC_1 of each unordered pair, self-pairs included.
  const sums = new Map<string, number>();
  for (const [a, b] of [...pairs, ...names.map((n): [string, string] => [n, n])]) {
    sums.set(key(a, b), 0);
  }
  const wanted = [...sums.keys()].map((k) => JSON.parse(k) as [string, string]);
  let examples = 0, batches = 0;

  const add = (batch: ReadonlyMap<string, Rows> | Readonly<Record<string, Rows>>) => {
    const get = (name: string) =>
      batch instanceof Map ? batch.get(name) : (batch as Readonly<Record<string, Rows>>)[name];
    const missing = names.filter((name) => get(name) === undefined);
    if (missing.length) {
      throw new Error(`CKA batch lacks ${missing.map((m) => `"${m}"`).join(", ")}`);
    }
    const counts = names.map((name) => rowCount(get(name)!, `CKA batch "${name}"`));
    const n = counts[0];
    if (counts.some((c) => c !== n)) {
      throw new Error(
        `CKA batch rows differ: ${names.map((m, i) => `"${m}" ${counts[i]}`).join(", ")}`,
      );
    }
    if (n < MIN_BATCH) throw new Error(`CKA batch has ${n} rows, needs at least ${MIN_BATCH}`);
    const u = new Map(
      names.map((name) => [name, uCentre(kernelOf(get(name)!, kernel, `CKA "${name}"`), n)]),
    );
    const norm = n * (n - 3);
    for (const [a, b] of wanted) {
      const k = key(a, b);
      sums.set(k, sums.get(k)! + dot(u.get(a)!, u.get(b)!) / norm);
    }
    examples += n;
    batches++;
  };

  const result = (): CkaResult => {
    const frozen = new Map(sums);
    const hsic = (a: string, b: string) => {
      const v = frozen.get(key(a, b));
      if (v === undefined) throw new Error(`CKA of "${a}" and "${b}" was not requested`);
      return v;
    };
    const cka = (a: string, b: string) => ratio(hsic(a, b), hsic(a, a), hsic(b, b));
    return {
      examples,
      batches,
      cka,
      matrix: (rows, cols = rows) => rows.map((r) => cols.map((c) => cka(r, c))),
    };
  };

  return { add, result };
}

/**
 * Minibatch CKA of two representations held whole: rows [0, batch), [batch, 2·batch), ... The
 * last minibatch takes the remainder and must have 4 rows or more.
 * @throws Error as `CkaAccumulator.add`, or for a batch size under 4
 * @example
 * ```ts
 * minibatchCka(x, y, 200); // ≈ linearCka(x, y) for n ≫ d
 * ```
 */
export function minibatchCka(x: Rows, y: Rows, batch: number, kernel: CkaKernel = LINEAR): number {
  const n = rowCount(x, "CKA: X"), m = rowCount(y, "CKA: Y");
  if (n !== m) throw new Error(`CKA: X has ${n} rows, Y has ${m}: they must be the same examples`);
  if (!(Number.isInteger(batch) && batch >= MIN_BATCH)) {
    throw new Error(`CKA: batch should be an integer >= ${MIN_BATCH}, got ${batch}`);
  }
  const acc = ckaAccumulator([["x", "y"]], kernel);
  const slice = (r: Rows, lo: number, hi: number): Rows => {
    if (r instanceof tf.Tensor) {
      return tf.slice(r, [lo], [hi - lo]);
    }
    const d = n ? r.data.length / n : 0;
    return { data: r.data.subarray(lo * d, hi * d), rows: hi - lo };
  };
  for (let lo = 0; lo < n; lo += batch) {
    const hi = Math.min(n, lo + batch);
    const xs = slice(x, lo, hi), ys = slice(y, lo, hi);
    try {
      acc.add({ x: xs, y: ys });
    } finally {
      if (xs instanceof tf.Tensor) xs.dispose();
      if (ys instanceof tf.Tensor) ys.dispose();
    }
  }
  return acc.result().cka("x", "y");
}
