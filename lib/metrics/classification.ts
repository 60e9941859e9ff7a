// Classification metrics: the scores seed 000 §4.3 reports (accuracy, F1, recall, precision;
// its hematoma task is binary with "hematoma" positive, Table 4) and the calibration of the
// probabilities a classifier outputs (expected calibration error, negative log-likelihood).
//
// Conventions. K classes; labels and predictions are Int32Array in 0..K−1. A confusion matrix is
// an Int32Array [K·K], row = true class, column = predicted class (sklearn's confusion_matrix):
// cm[i·K + j] counts examples of class i predicted as j. Probabilities are [N·K] row-major,
// Float32Array or Float64Array. A precision, recall or F1 whose denominator is 0 is 0 (sklearn's
// zero_division=0). Sums are float64. Every function throws on mismatched lengths, labels out of
// range and empty inputs, naming the argument.

/** Typed arrays of class indices. */
export type Labels = Int32Array;
/** [N·K] probabilities, row-major. */
export type Probabilities = Float32Array | Float64Array;

/** Precision, recall and F1 of one class or of an average. */
export interface Scores {
  readonly precision: number;
  readonly recall: number;
  readonly f1: number;
}

/** Per-class scores, each [K]. */
export interface ClassScores {
  readonly precision: Float64Array;
  readonly recall: Float64Array;
  readonly f1: Float64Array;
  /** True examples of each class (row sums of the confusion matrix). */
  readonly support: Int32Array;
  /** Predictions of each class (column sums). */
  readonly predicted: Int32Array;
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

function checkClasses(classes: number, min = 1): void {
  if (!(Number.isInteger(classes) && classes >= min)) {
    throw new Error(`Class count should be an integer ≥ ${min}, got ${classes}`);
  }
}

function checkIndices(a: Labels, classes: number, what: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!(a[i] >= 0 && a[i] < classes)) {
      throw new Error(`${what} ${a[i]} at index ${i} is outside 0..${classes - 1}`);
    }
  }
}

function checkPair(pred: Labels, labels: Labels, classes: number): void {
  checkClasses(classes);
  if (pred.length !== labels.length) {
    throw new Error(`Predictions and labels differ in length: ${pred.length} vs ${labels.length}`);
  }
  if (labels.length === 0) throw new Error("Metrics need at least one example, got none");
  checkIndices(pred, classes, "Prediction");
  checkIndices(labels, classes, "Label");
}

function checkProbs(probs: Probabilities, labels: Labels, classes: number): void {
  checkClasses(classes);
  if (labels.length === 0) throw new Error("Metrics need at least one example, got none");
  if (probs.length !== labels.length * classes) {
    throw new Error(
      `Probabilities hold ${probs.length} values, expected ${labels.length} labels × ${classes} classes`,
    );
  }
  checkIndices(labels, classes, "Label");
  for (let i = 0; i < probs.length; i++) {
    if (!(probs[i] >= 0 && probs[i] <= 1)) {
      throw new Error(`Probability ${probs[i]} at index ${i} is outside [0, 1]`);
    }
  }
}

const ratio = (a: number, b: number) => (b === 0 ? 0 : a / b);

// ---------------------------------------------------------------------------------------------
// Scores from predictions
// ---------------------------------------------------------------------------------------------

/**
 * Fraction of predictions equal to their label.
 * @param classes K, for the range check
 * @throws Error for mismatched lengths, no examples, or an index outside 0..K−1
 * @example
 * ```ts
 * accuracy(Int32Array.of(0, 1, 1), Int32Array.of(0, 1, 0), 2); // 2/3
 * ```
 */
export function accuracy(pred: Labels, labels: Labels, classes: number): number {
  checkPair(pred, labels, classes);
  let hits = 0;
  for (let i = 0; i < labels.length; i++) if (pred[i] === labels[i]) hits++;
  return hits / labels.length;
}

/**
 * The K×K confusion matrix, row = true class, column = predicted.
 * @throws Error for mismatched lengths, no examples, or an index outside 0..K−1
 */
export function confusionMatrix(pred: Labels, labels: Labels, classes: number): Int32Array {
  checkPair(pred, labels, classes);
  const cm = new Int32Array(classes * classes);
  for (let i = 0; i < labels.length; i++) cm[labels[i] * classes + pred[i]]++;
  return cm;
}

function checkMatrix(cm: Int32Array, classes: number): void {
  checkClasses(classes);
  if (cm.length !== classes * classes) {
    throw new Error(`Confusion matrix holds ${cm.length} counts, expected ${classes}×${classes}`);
  }
  for (let i = 0; i < cm.length; i++) {
    if (!(cm[i] >= 0)) throw new Error(`Confusion count ${cm[i]} at index ${i} is negative`);
  }
}

/**
 * Precision TP/(TP+FP), recall TP/(TP+FN) and F1 = 2TP/(2TP+FP+FN) of every class, one class
 * against the rest, from a confusion matrix (0/0 = 0).
 * @throws Error when `cm` is not K×K or holds a negative count
 */
export function perClassScores(cm: Int32Array, classes: number): ClassScores {
  checkMatrix(cm, classes);
  const K = classes;
  const out = {
    precision: new Float64Array(K),
    recall: new Float64Array(K),
    f1: new Float64Array(K),
    support: new Int32Array(K),
    predicted: new Int32Array(K),
  };
  for (let i = 0; i < K; i++) {
    for (let j = 0; j < K; j++) {
      out.support[i] += cm[i * K + j];
      out.predicted[j] += cm[i * K + j];
    }
  }
  for (let c = 0; c < K; c++) {
    const tp = cm[c * K + c];
    const fp = out.predicted[c] - tp, fn = out.support[c] - tp;
    out.precision[c] = ratio(tp, tp + fp);
    out.recall[c] = ratio(tp, tp + fn);
    out.f1[c] = ratio(2 * tp, 2 * tp + fp + fn);
  }
  return out;
}

/**
 * Macro averages: the unweighted mean of the per-class precision, recall and F1 (macro F1 is the
 * mean of per-class F1s, not the F1 of the mean precision and recall). Classes that neither
 * occur among the labels nor are ever predicted are left out of the mean, as sklearn leaves out
 * labels absent from both y_true and y_pred.
 * @throws Error when `cm` is not K×K or holds a negative count
 */
export function macroScores(cm: Int32Array, classes: number): Scores {
  const s = perClassScores(cm, classes);
  let n = 0, precision = 0, recall = 0, f1 = 0;
  for (let c = 0; c < classes; c++) {
    if (s.support[c] === 0 && s.predicted[c] === 0) continue;
    n++;
    precision += s.precision[c];
    recall += s.recall[c];
    f1 += s.f1[c];
  }
  return { precision: ratio(precision, n), recall: ratio(recall, n), f1: ratio(f1, n) };
}

/**
 * Binary scores of `positive` against every other class (sklearn's average="binary" with
 * pos_label = positive when K = 2).
 * @throws Error for mismatched lengths, no examples, an index or `positive` outside 0..K−1
 * @example
 * ```ts
 * binaryScores(Int32Array.of(1, 1, 0), Int32Array.of(1, 0, 0), 1, 2); // P 0.5, R 1, F1 2/3
 * ```
 */
export function binaryScores(
  pred: Labels,
  labels: Labels,
  positive: number,
  classes: number,
): Scores {
  checkPair(pred, labels, classes);
  if (!(Number.isInteger(positive) && positive >= 0 && positive < classes)) {
    throw new Error(`Positive class ${positive} is outside 0..${classes - 1}`);
  }
  let tp = 0, fp = 0, fn = 0;
  for (let i = 0; i < labels.length; i++) {
    const p = pred[i] === positive, l = labels[i] === positive;
    if (p && l) tp++;
    else if (p) fp++;
    else if (l) fn++;
  }
  return {
    precision: ratio(tp, tp + fp),
    recall: ratio(tp, tp + fn),
    f1: ratio(2 * tp, 2 * tp + fp + fn),
  };
}

/** The scores a results JSON records for one classifier. */
export interface ClassificationSummary {
  readonly accuracy: number;
  readonly macro: Scores;
  /** Scores of the positive class, when one is named. */
  readonly binary?: Scores & { readonly positive: number };
  readonly confusion: Int32Array;
}

/** Accuracy, macro scores, the confusion matrix and, with `positive`, the binary scores. */
export function classificationSummary(
  pred: Labels,
  labels: Labels,
  classes: number,
  positive?: number,
): ClassificationSummary {
  const confusion = confusionMatrix(pred, labels, classes);
  return {
    accuracy: accuracy(pred, labels, classes),
    macro: macroScores(confusion, classes),
    ...(positive === undefined
      ? {}
      : { binary: { positive, ...binaryScores(pred, labels, positive, classes) } }),
    confusion,
  };
}

// ---------------------------------------------------------------------------------------------
// Calibration
// ---------------------------------------------------------------------------------------------

/** ECE's default bin count (Guo et al. 2017, "On calibration of modern neural networks", §2). */
export const ECE_BINS = 15;

/** Equal-width confidence bins: per bin, its examples, mean confidence and accuracy. */
export interface CalibrationBins {
  readonly counts: Int32Array;
  /** Mean top-class probability of the bin's examples (0 for an empty bin). */
  readonly confidence: Float64Array;
  /** Fraction of the bin's examples whose top class is the label (0 for an empty bin). */
  readonly accuracy: Float64Array;
}

/**
 * Reliability-diagram bins. An example's confidence is its largest probability and its
 * prediction that class (the lowest index on ties); bin b of B holds confidences in
 * (b/B, (b+1)/B], with a confidence of exactly 0 in the first bin (Guo et al.'s
 * `bin_lower < conf ≤ bin_upper`).
 * @throws Error for mismatched lengths, a label out of range, a probability outside [0, 1], or a
 * bin count that is not a positive integer
 */
export function calibrationBins(
  probs: Probabilities,
  labels: Labels,
  classes: number,
  bins = ECE_BINS,
): CalibrationBins {
  checkProbs(probs, labels, classes);
  if (!(Number.isInteger(bins) && bins >= 1)) {
    throw new Error(`Bin count should be a positive integer, got ${bins}`);
  }
  const counts = new Int32Array(bins);
  const conf = new Float64Array(bins), acc = new Float64Array(bins);
  for (let i = 0; i < labels.length; i++) {
    let top = 0;
    for (let c = 1; c < classes; c++) {
      if (probs[i * classes + c] > probs[i * classes + top]) top = c;
    }
    const p = probs[i * classes + top];
    // Edges b/B as Guo et al.'s linspace; adjust the first guess across rounding at an edge.
    let b = Math.min(bins - 1, Math.max(0, Math.ceil(p * bins) - 1));
    while (b > 0 && p <= b / bins) b--;
    while (b < bins - 1 && p > (b + 1) / bins) b++;
    counts[b]++;
    conf[b] += p;
    if (top === labels[i]) acc[b]++;
  }
  for (let b = 0; b < bins; b++) {
    conf[b] = ratio(conf[b], counts[b]);
    acc[b] = ratio(acc[b], counts[b]);
  }
  return { counts, confidence: conf, accuracy: acc };
}

/**
 * Expected calibration error, Σ_b (n_b / N)·|acc_b − conf_b| over `bins` equal-width bins of
 * the top-class confidence (see `calibrationBins`; Guo et al. 2017, eq. 3).
 * @param bins number of bins @default 15
 * @throws as `calibrationBins`
 * @example
 * ```ts
 * // One example, 0.8 confident and right: |1 − 0.8| = 0.2
 * expectedCalibrationError(Float32Array.of(0.8, 0.2), Int32Array.of(0), 2); // ≈ 0.2
 * ```
 */
export function expectedCalibrationError(
  probs: Probabilities,
  labels: Labels,
  classes: number,
  bins = ECE_BINS,
): number {
  const h = calibrationBins(probs, labels, classes, bins);
  let ece = 0;
  for (let b = 0; b < bins; b++) {
    ece += (h.counts[b] / labels.length) * Math.abs(h.accuracy[b] - h.confidence[b]);
  }
  return ece;
}

/** The floor on a label's probability in the NLL: −log of it is ≈ 27.6 nats, not Infinity. */
export const NLL_FLOOR = 1e-12;

/**
 * Mean negative log-likelihood −(1/N) Σ log p_i[y_i], in nats, with each p_i[y_i] floored at
 * `NLL_FLOOR` so that one probability that rounded to 0 leaves the mean finite.
 * @throws Error for mismatched lengths, a label out of range, or a probability outside [0, 1]
 */
export function negativeLogLikelihood(
  probs: Probabilities,
  labels: Labels,
  classes: number,
): number {
  checkProbs(probs, labels, classes);
  let s = 0;
  for (let i = 0; i < labels.length; i++) {
    s -= Math.log(Math.max(probs[i * classes + labels[i]], NLL_FLOOR));
  }
  return s / labels.length;
}
