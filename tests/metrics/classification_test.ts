import { assert, assertClose, assertEquals, assertThrows } from "../assert.ts";
import {
  accuracy,
  binaryScores,
  calibrationBins,
  classificationSummary,
  confusionMatrix,
  expectedCalibrationError,
  macroScores,
  negativeLogLikelihood,
  NLL_FLOOR,
  perClassScores,
} from "../../lib/metrics/classification.ts";

const close = (a: number, b: number, what: string) =>
  assert(Math.abs(a - b) <= 1e-12, `${what}: ${a} vs ${b}`);

// Ten examples of three classes (supports 4, 3, 3). Confusion matrix, row = true, col = pred:
//   true 0: 2 1 1
//   true 1: 1 2 0
//   true 2: 0 1 2
// Column sums (predictions) 3, 4, 3; 6 right of 10.
const labels = Int32Array.of(0, 0, 0, 0, 1, 1, 1, 2, 2, 2);
const pred = Int32Array.of(0, 0, 1, 2, 1, 1, 0, 2, 2, 1);

Deno.test("confusionMatrix() counts rows as true classes and columns as predictions", () => {
  assertEquals(Array.from(confusionMatrix(pred, labels, 3)), [2, 1, 1, 1, 2, 0, 0, 1, 2]);
});

Deno.test("accuracy() is the fraction right", () => {
  close(accuracy(pred, labels, 3), 0.6, "accuracy");
});

Deno.test("perClassScores() and macroScores() match the hand-computed matrix", () => {
  const s = perClassScores(confusionMatrix(pred, labels, 3), 3);
  // class 0: TP 2, FP 1, FN 2; class 1: TP 2, FP 2, FN 1; class 2: TP 2, FP 1, FN 1.
  assertClose(s.precision, [2 / 3, 1 / 2, 2 / 3], { rtol: 0, atol: 1e-12 });
  assertClose(s.recall, [1 / 2, 2 / 3, 2 / 3], { rtol: 0, atol: 1e-12 });
  assertClose(s.f1, [4 / 7, 4 / 7, 2 / 3], { rtol: 0, atol: 1e-12 });
  assertEquals(Array.from(s.support), [4, 3, 3]);
  assertEquals(Array.from(s.predicted), [3, 4, 3]);
  const m = macroScores(confusionMatrix(pred, labels, 3), 3);
  close(m.precision, 11 / 18, "macro precision");
  close(m.recall, 11 / 18, "macro recall");
  close(m.f1, 38 / 63, "macro F1"); // (4/7 + 4/7 + 2/3) / 3, not the F1 of 11/18 and 11/18
});

Deno.test("macroScores() leaves out classes that are neither labels nor predictions", async (t) => {
  await t.step("an absent fourth class changes nothing", () => {
    const m = macroScores(confusionMatrix(pred, labels, 4), 4);
    close(m.f1, 38 / 63, "macro F1");
    close(m.precision, 11 / 18, "macro precision");
  });
  await t.step("a class only predicted counts with recall and precision 0", () => {
    // true 0, 0, 1 predicted 0, 2, 1: class 2 has no support and one (wrong) prediction.
    const cm = confusionMatrix(Int32Array.of(0, 2, 1), Int32Array.of(0, 0, 1), 3);
    const s = perClassScores(cm, 3);
    assertEquals([s.precision[2], s.recall[2], s.f1[2]], [0, 0, 0]);
    // class 0: P 1, R 1/2, F1 2/3; class 1: all 1; class 2: all 0.
    const m = macroScores(cm, 3);
    close(m.precision, 2 / 3, "macro precision");
    close(m.recall, 1 / 2, "macro recall");
    close(m.f1, (2 / 3 + 1) / 3, "macro F1");
  });
});

Deno.test("binaryScores() scores the chosen positive class against the rest", async (t) => {
  // Hematoma-style: 1 = positive. TP 2 (0, 6), FP 2 (2, 7), FN 1 (1); for class 0: TP 3, FP 1,
  // FN 2.
  const y = Int32Array.of(1, 1, 0, 0, 0, 0, 1, 0);
  const p = Int32Array.of(1, 0, 1, 0, 0, 0, 1, 1);
  const cases: [number, number, number, number][] = [
    [1, 1 / 2, 2 / 3, 4 / 7],
    [0, 3 / 4, 3 / 5, 2 / 3],
  ];
  for (const [positive, precision, recall, f1] of cases) {
    await t.step(`positive ${positive}`, () => {
      const s = binaryScores(p, y, positive, 2);
      close(s.precision, precision, "precision");
      close(s.recall, recall, "recall");
      close(s.f1, f1, "F1");
    });
  }
  await t.step("one class of three against the rest equals its per-class scores", () => {
    const s = binaryScores(pred, labels, 1, 3);
    close(s.precision, 1 / 2, "precision");
    close(s.recall, 2 / 3, "recall");
    close(s.f1, 4 / 7, "F1");
  });
  await t.step("no positive predictions and no positives: 0, not NaN", () => {
    const s = binaryScores(Int32Array.of(0, 0), Int32Array.of(0, 0), 1, 2);
    assertEquals(s, { precision: 0, recall: 0, f1: 0 });
  });
});

Deno.test("classificationSummary() gathers accuracy, macro, binary and the matrix", () => {
  const s = classificationSummary(pred, labels, 3, 2);
  close(s.accuracy, 0.6, "accuracy");
  close(s.macro.f1, 38 / 63, "macro F1");
  assertEquals(s.binary?.positive, 2);
  close(s.binary!.f1, 2 / 3, "binary F1");
  assertEquals(Array.from(s.confusion), [2, 1, 1, 1, 2, 0, 0, 1, 2]);
  assertEquals(classificationSummary(pred, labels, 3).binary, undefined);
});

// Four examples, two classes: confidences 0.9 (right), 0.7 (wrong), 0.65 (right), 0.55 (right).
const probs = Float32Array.of(0.9, 0.1, 0.7, 0.3, 0.35, 0.65, 0.55, 0.45);
const probLabels = Int32Array.of(0, 1, 1, 0);

Deno.test("expectedCalibrationError() on a hand case", async (t) => {
  await t.step("5 bins: 0.9 | 0.7 and 0.65 together | 0.55", () => {
    // (1/4)·|1 − 0.9| + (2/4)·|0.5 − 0.675| + (1/4)·|1 − 0.55| = (0.1 + 0.35 + 0.45) / 4
    assertClose([expectedCalibrationError(probs, probLabels, 2, 5)], [0.225], { atol: 1e-7 });
    const h = calibrationBins(probs, probLabels, 2, 5);
    assertEquals(Array.from(h.counts), [0, 0, 1, 2, 1]);
    assertClose(h.confidence, [0, 0, 0.55, 0.675, 0.9], { atol: 1e-7 });
    assertClose(h.accuracy, [0, 0, 1, 0.5, 1], { atol: 1e-12 });
  });
  await t.step("15 bins by default: every example alone", () => {
    // (0.1 + 0.7 + 0.35 + 0.45) / 4
    assertClose([expectedCalibrationError(probs, probLabels, 2)], [0.4], { atol: 1e-7 });
  });
  await t.step("a confidence on an edge goes to the lower bin; 1 to the last", () => {
    const h = calibrationBins(Float64Array.of(0.6, 0.4, 1, 0), Int32Array.of(0, 0), 2, 5);
    assertEquals(Array.from(h.counts), [0, 0, 1, 0, 1]);
  });
  await t.step("a tie predicts the lower class", () => {
    // 0.5 / 0.5 with label 1: predicted 0, wrong; bin (0.4, 0.6] of 5.
    close(expectedCalibrationError(Float64Array.of(0.5, 0.5), Int32Array.of(1), 2, 5), 0.5, "ECE");
  });
});

Deno.test("negativeLogLikelihood() is the mean −log p of the label, floored", () => {
  const expected = -(Math.log(0.9) + Math.log(0.3) + Math.log(0.65) + Math.log(0.55)) / 4;
  assertClose([negativeLogLikelihood(probs, probLabels, 2)], [expected], { rtol: 1e-6 });
  close(
    negativeLogLikelihood(Float64Array.of(1, 0), Int32Array.of(1), 2),
    -Math.log(NLL_FLOOR),
    "floored NLL",
  );
});

Deno.test("metrics refuse mismatched lengths, labels out of range and empty input", async (t) => {
  const two = Int32Array.of(0, 1);
  const cases: [string, () => unknown, RegExp][] = [
    ["lengths", () => accuracy(Int32Array.of(0), two, 2), /differ in length: 1 vs 2/],
    ["label ≥ K", () => confusionMatrix(two, Int32Array.of(0, 3), 3), /Label 3 at index 1/],
    ["negative prediction", () => accuracy(Int32Array.of(-1, 0), two, 2), /Prediction -1/],
    ["empty", () => accuracy(new Int32Array(0), new Int32Array(0), 2), /at least one example/],
    ["class count", () => accuracy(two, two, 0), /Class count/],
    ["positive", () => binaryScores(two, two, 2, 2), /Positive class 2 is outside 0\.\.1/],
    ["matrix size", () => perClassScores(new Int32Array(3), 2), /expected 2×2/],
    ["probs length", () => negativeLogLikelihood(Float32Array.of(1), two, 2), /expected 2 labels/],
    [
      "probs range",
      () => expectedCalibrationError(Float32Array.of(1.5, 0), Int32Array.of(0), 2),
      /1\.5/,
    ],
    [
      "probs label",
      () => negativeLogLikelihood(Float32Array.of(1, 0), Int32Array.of(2), 2),
      /Label 2/,
    ],
    ["bins", () => calibrationBins(Float32Array.of(1, 0), Int32Array.of(0), 2, 0), /Bin count/],
  ];
  for (const [name, fn, message] of cases) {
    await t.step(name, () => {
      assertThrows(fn, message);
    });
  }
});
