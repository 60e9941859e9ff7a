import * as tf from "@tensorflow/tfjs";
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import {
  ckaAccumulator,
  fullBatchCka,
  kernelMatrix,
  linearCka,
  matrixPairs,
  minibatchCka,
  type Rows,
  unbiasedHsic,
} from "../../lib/metrics/cka.ts";
import { foldName, normalArray, rng } from "../../lib/random.ts";

await initEngine({ backend: "wasm", announce: false });

const key = rng(11);
const rows = (data: Float32Array, n: number) => ({ data, rows: n });
const gauss = (name: string, n: number, d: number) => normalArray(foldName(key, name), n * d);

/** x [n, a] · w [a, b] in float64, rounded to float32. */
function matmul(x: Float32Array, w: Float64Array | Float32Array, n: number, a: number, b: number) {
  const out = new Float32Array(n * b);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < b; j++) {
      let s = 0;
      for (let k = 0; k < a; k++) s += x[i * a + k] * w[k * b + j];
      out[i * b + j] = s;
    }
  }
  return out;
}

/** A random d×d orthogonal matrix (Gram–Schmidt on a Gaussian one). */
function orthogonal(name: string, d: number): Float64Array {
  const g = Float64Array.from(gauss(name, d, d));
  const q = new Float64Array(d * d); // columns
  for (let c = 0; c < d; c++) {
    const v = Array.from({ length: d }, (_, r) => g[r * d + c]);
    for (let p = 0; p < c; p++) {
      let s = 0;
      for (let r = 0; r < d; r++) s += v[r] * q[r * d + p];
      for (let r = 0; r < d; r++) v[r] -= s * q[r * d + p];
    }
    const norm = Math.hypot(...v);
    for (let r = 0; r < d; r++) q[r * d + c] = v[r] / norm;
  }
  return q;
}

/** Linear CKA in float64 from the feature-space formula ‖YᵀX‖² / (‖XᵀX‖ ‖YᵀY‖), centred. */
function referenceLinearCka(x: Float32Array, y: Float32Array, n: number): number {
  const centre = (z: Float32Array) => {
    const d = z.length / n, out = Float64Array.from(z);
    for (let j = 0; j < d; j++) {
      let m = 0;
      for (let i = 0; i < n; i++) m += z[i * d + j];
      for (let i = 0; i < n; i++) out[i * d + j] -= m / n;
    }
    return { z: out, d };
  };
  const cross = (a: { z: Float64Array; d: number }, b: { z: Float64Array; d: number }) => {
    let s = 0;
    for (let p = 0; p < a.d; p++) {
      for (let q = 0; q < b.d; q++) {
        let c = 0;
        for (let i = 0; i < n; i++) c += a.z[i * a.d + p] * b.z[i * b.d + q];
        s += c * c;
      }
    }
    return s;
  };
  const a = centre(x), b = centre(y);
  return cross(a, b) / Math.sqrt(cross(a, a) * cross(b, b));
}

/** Song et al. (2012) eq. 5, written out: the unbiased HSIC of two kernel matrices. */
function songHsic(k: Float64Array, l: Float64Array, n: number): number {
  const kt = k.map((v, i) => (i % (n + 1) === 0 ? 0 : v));
  const lt = l.map((v, i) => (i % (n + 1) === 0 ? 0 : v));
  let trace = 0, sk = 0, sl = 0, cross = 0;
  const rk = new Float64Array(n), rl = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      trace += kt[i * n + j] * lt[j * n + i];
      rk[i] += kt[i * n + j];
      rl[i] += lt[i * n + j];
    }
    sk += rk[i];
    sl += rl[i];
  }
  for (let i = 0; i < n; i++) cross += rk[i] * rl[i]; // 1ᵀK̃L̃1 with K̃ symmetric
  return (trace + (sk * sl) / ((n - 1) * (n - 2)) - (2 / (n - 2)) * cross) / (n * (n - 3));
}

const near = (a: number, b: number, tol: number, what: string) =>
  assert(Math.abs(a - b) <= tol, `${what}: ${a} vs ${b} (tolerance ${tol})`);

// X [n, 8] Gaussian; Y shares 4 of its directions through a linear map, plus independent noise.
function constructed(n: number) {
  const x = gauss("x", n, 8);
  const z = new Float32Array(n * 4);
  for (let i = 0; i < n; i++) z.set(x.subarray(i * 8, i * 8 + 4), i * 4);
  const w = gauss("w", 4, 6);
  const y = matmul(z, w, n, 4, 6);
  const e = gauss("e", n, 6);
  for (let i = 0; i < y.length; i++) y[i] += 0.7 * e[i];
  return { x, y };
}

Deno.test("unbiasedHsic() equals Song et al.'s formula for linear and RBF kernels", () => {
  const n = 13;
  const x = rows(gauss("hx", n, 5), n), y = rows(gauss("hy", n, 3), n);
  for (const kernel of [{ kind: "linear" } as const, { kind: "rbf", fraction: 0.5 } as const]) {
    const k = kernelMatrix(x, kernel), l = kernelMatrix(y, kernel);
    const ours = unbiasedHsic(k, l, n), song = songHsic(k, l, n);
    near(ours, song, 1e-9 * Math.max(1, Math.abs(song)), `${kernel.kind} HSIC_1`);
  }
});

Deno.test("linearCka() matches the float64 feature-space formula, for d < n and d > n", () => {
  for (const [n, dx, dy] of [[60, 5, 7], [12, 40, 30]]) {
    const x = gauss(`rx${n}`, n, dx), y = gauss(`ry${n}`, n, dy);
    for (let i = 0; i < n * Math.min(dx, dy); i++) y[i] += x[i]; // some shared signal
    near(linearCka(rows(x, n), rows(y, n)), referenceLinearCka(x, y, n), 1e-5, `n ${n}`);
  }
});

Deno.test("CKA(X, X) = 1: full batch, minibatch and the accumulator, both kernels", () => {
  const n = 300, x = rows(gauss("self", n, 16), n);
  near(linearCka(x, x), 1, 1e-12, "linear full");
  near(minibatchCka(x, x, 100), 1, 1e-12, "linear minibatch");
  near(fullBatchCka(x, x, { kind: "rbf" }), 1, 1e-12, "rbf full");
  near(minibatchCka(x, x, 100, { kind: "rbf", fraction: 0.3 }), 1, 1e-12, "rbf minibatch");
  const acc = ckaAccumulator(matrixPairs(["a", "b"]));
  acc.add({ a: x, b: x });
  assertEquals(acc.result().matrix(["a", "b"]), [[1, 1], [1, 1]]);
});

Deno.test("CKA is invariant to orthogonal transforms and isotropic scaling", () => {
  const n = 400;
  const { x, y } = constructed(n);
  const q = orthogonal("q", 8);
  const xq = matmul(x, q, n, 8, 8), xs = x.map((v) => 3.7 * v), yd = y.map((v) => 0.02 * v);
  const cases: [string, (a: Rows, b: Rows) => number][] = [
    ["linear full", linearCka],
    ["linear minibatch", (a, b) => minibatchCka(a, b, 100)],
    ["rbf full", (a, b) => fullBatchCka(a, b, { kind: "rbf" })],
    ["rbf minibatch", (a, b) => minibatchCka(a, b, 100, { kind: "rbf" })],
  ];
  for (const [name, f] of cases) {
    const base = f(rows(x, n), rows(y, n));
    assert(base > 0.1 && base < 0.95, `${name}: constructed CKA ${base}`);
    near(f(rows(xq, n), rows(y, n)), base, 1e-5, `${name}: X·Q`);
    near(f(rows(xs, n), rows(yd, n)), base, 1e-5, `${name}: 3.7·X, 0.02·Y`);
  }
});

Deno.test("minibatch CKA (n = 2000 in batches of 200) is within 0.02 of the full batch", () => {
  const n = 2000;
  const { x, y } = constructed(n);
  const full = linearCka(rows(x, n), rows(y, n)), mini = minibatchCka(rows(x, n), rows(y, n), 200);
  near(mini, full, 0.02, "linear");
  const fullRbf = fullBatchCka(rows(x, n), rows(y, n), { kind: "rbf" });
  const miniRbf = minibatchCka(rows(x, n), rows(y, n), 200, { kind: "rbf" });
  near(miniRbf, fullRbf, 0.02, "rbf");
});

Deno.test("the unbiased minibatch estimate is near 0 for independent wide features, the biased is not", () => {
  // HSIC_0's bias grows with d/n (Nguyen et al. 2021 §3.1): the reason minibatches use HSIC_1.
  const n = 400, d = 200;
  const x = rows(gauss("wx", n, d), n), y = rows(gauss("wy", n, d), n);
  const biased = linearCka(x, y), unbiased = minibatchCka(x, y, 100);
  assert(biased > 0.2, `biased ${biased}`);
  assert(Math.abs(unbiased) < 0.05, `unbiased ${unbiased}`);
});

Deno.test("a linear map of X scores higher than independent noise", () => {
  const n = 500;
  const x = gauss("lx", n, 10);
  const mapped = matmul(x, gauss("lw", 10, 20), n, 10, 20), noise = gauss("ln", n, 20);
  for (const f of [linearCka, (a: Rows, b: Rows) => minibatchCka(a, b, 125)]) {
    const signal = f(rows(x, n), rows(mapped, n)), none = f(rows(x, n), rows(noise, n));
    assert(signal > 0.6, `linear map ${signal}`);
    assert(Math.abs(none) < 0.1, `noise ${none}`);
  }
  const rbf = (a: Float32Array, b: Float32Array) =>
    minibatchCka(rows(a, n), rows(b, n), 125, { kind: "rbf" });
  assert(rbf(x, mapped) > rbf(x, noise) + 0.3, `rbf ${rbf(x, mapped)} vs ${rbf(x, noise)}`);
});

Deno.test("CKA is symmetric in its arguments", () => {
  const n = 200;
  const { x, y } = constructed(n);
  const a = rows(x, n), b = rows(y, n);
  assertEquals(linearCka(a, b), linearCka(b, a));
  assertEquals(minibatchCka(a, b, 50), minibatchCka(b, a, 50));
  assertEquals(fullBatchCka(a, b, { kind: "rbf" }), fullBatchCka(b, a, { kind: "rbf" }));
  const acc = ckaAccumulator([["x", "y"]]);
  acc.add({ x: a, y: b });
  const m = acc.result();
  assertEquals(m.cka("x", "y"), m.cka("y", "x"));
});

Deno.test("RBF CKA lies in [0, 1] and is 1 for a rotated and rescaled copy", () => {
  const n = 240;
  const x = gauss("rx", n, 6);
  const others = [gauss("r1", n, 6), matmul(x, gauss("rw", 6, 3), n, 6, 3), x.map(Math.tanh)];
  for (const fraction of [0.2, 0.4, 0.8, 2]) {
    for (const o of others) {
      for (
        const v of [
          fullBatchCka(rows(x, n), rows(o, n), { kind: "rbf", fraction }),
          minibatchCka(rows(x, n), rows(o, n), 60, { kind: "rbf", fraction }),
        ]
      ) assert(v >= 0 && v <= 1, `fraction ${fraction}: ${v}`);
    }
  }
  const moved = matmul(x, orthogonal("rq", 6), n, 6, 6).map((v) => 5 * v + 1);
  near(minibatchCka(rows(x, n), rows(moved, n), 60, { kind: "rbf" }), 1, 1e-5, "moved copy");
});

Deno.test("ckaAccumulator() is the same for arrays, tensors and maps, any batch order and shift", () => {
  const n = 240;
  const { x, y } = constructed(n);
  const names = ["x", "y", "n"];
  const noise = gauss("an", n, 3);
  const slice = (z: Float32Array, dim: number, b: number) =>
    rows(z.subarray(b * 60 * dim, (b + 1) * 60 * dim), 60);
  const run = (order: number[], form: "array" | "tensor" | "map", shift = 0) => {
    const acc = ckaAccumulator(matrixPairs(names));
    for (const b of order) {
      const parts = {
        x: slice(x.map((v) => v + shift), 8, b),
        y: slice(y, 6, b),
        n: slice(noise, 3, b),
      } as Record<string, { data: Float32Array; rows: number }>;
      if (form === "array") acc.add(parts);
      else if (form === "map") acc.add(new Map(Object.entries(parts)));
      else {
        const ts = Object.fromEntries(
          Object.entries(parts).map(([k, v]) => [k, tf.tensor2d(v.data, [60, v.data.length / 60])]),
        );
        acc.add(ts);
        tf.dispose(Object.values(ts));
      }
    }
    const r = acc.result();
    assertEquals([r.examples, r.batches], [n, 4]);
    return r.matrix(names);
  };
  const base = run([0, 1, 2, 3], "array");
  const close = (m: number[][], what: string, tol: number) =>
    m.forEach((row, i) => row.forEach((v, j) => near(v, base[i][j], tol, `${what} [${i}][${j}]`)));
  close(run([3, 1, 0, 2], "array"), "batch order", 1e-12);
  close(run([0, 1, 2, 3], "map"), "map", 0);
  close(run([0, 1, 2, 3], "tensor"), "tensor", 1e-6);
  close(run([0, 1, 2, 3], "array", 100), "rows shifted by 100", 1e-4);
  base.forEach((row, i) => near(row[i], 1, 1e-12, "diagonal"));
  assert(base[0][1] > base[0][2], `x~y ${base[0][1]} vs x~noise ${base[0][2]}`);
});

Deno.test("CKA takes feature maps [n, h, w, C] as tensors and leaks none", () => {
  const before = tf.memory().numTensors;
  const maps = tf.tensor4d(gauss("maps", 32, 4 * 4 * 3), [32, 4, 4, 3]);
  const flat = tf.reshape(maps, [32, 48]);
  near(linearCka(maps, flat), 1, 1e-12, "map vs flat");
  near(minibatchCka(maps, flat, 8), 1, 1e-12, "minibatch map vs flat");
  const acc = ckaAccumulator(matrixPairs(["m"], ["f"]), { kind: "rbf" });
  acc.add({ m: maps, f: flat });
  near(acc.result().cka("m", "f"), 1, 1e-12, "accumulator");
  tf.dispose([maps, flat]);
  assertEquals(tf.memory().numTensors, before);
});

Deno.test("a constant representation gives NaN, not a number", () => {
  const n = 20;
  const x = rows(new Float32Array(n * 3).fill(2), n), y = rows(gauss("c", n, 3), n);
  assert(Number.isNaN(linearCka(x, y)));
  assert(Number.isNaN(minibatchCka(x, y, 10)));
  assert(Number.isNaN(minibatchCka(x, y, 10, { kind: "rbf" })));
});

Deno.test("CKA rejects bad inputs with one-line errors", () => {
  const x = rows(gauss("e1", 10, 3), 10), y = rows(gauss("e2", 9, 3), 9);
  assertThrows(() => linearCka(x, y), /X has 10 rows, Y has 9/);
  assertThrows(() => minibatchCka(x, y, 5), /X has 10 rows, Y has 9/);
  assertThrows(() => minibatchCka(x, x, 3), /batch should be an integer >= 4, got 3/);
  assertThrows(() => minibatchCka(x, x, 8), /CKA batch has 2 rows, needs at least 4/);
  const acc = ckaAccumulator([["a", "b"]]);
  assertThrows(() => acc.add({ a: x, b: y }), /rows differ: "a" 10, "b" 9/);
  assertThrows(() => acc.add({ a: x }), /lacks "b"/);
  const three = rows(gauss("e3", 3, 3), 3);
  assertThrows(() => acc.add({ a: three, b: three }), /has 3 rows, needs at least 4/);
  assertThrows(() => acc.result().cka("a", "c"), /"a" and "c" was not requested/);
  assertThrows(() => linearCka(rows(new Float32Array(10), 3), x), /10 floats are not 3 whole rows/);
  const bad = x.data.slice();
  bad[4] = NaN;
  assertThrows(() => acc.add({ a: rows(bad, 10), b: x }), /"a": features are not finite/);
  assertThrows(() => ckaAccumulator([]), /no pairs/);
  assertThrows(() => ckaAccumulator([["a", "b"]], { kind: "rbf", fraction: 0 }), /fraction/);
  assertThrows(() => unbiasedHsic(new Float64Array(9), new Float64Array(9), 3), /n >= 4/);
  const vector = tf.zeros([4]);
  assertThrows(() => linearCka(vector, x), /expected \[n, d, \.\.\.\]/);
  vector.dispose();
});
