// lib/engine/native_kernels.ts: the C GroupNorm passes against the JS loops, and the compile
// cache (built once, reused, a corrupt entry rebuilt, a failing or absent cc, the opt-out).
import * as tf from "@tensorflow/tfjs";
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  gnDims,
  groupNormAffine,
  groupNormBackward,
  groupNormStats,
} from "../../lib/engine/fused/group_norm.ts";
import {
  type NativeKernels,
  prepareNativeKernels,
  setNativeKernels,
} from "../../lib/engine/native_kernels.ts";
import { runCommand, type Runner } from "../../lib/engine/native_libs.ts";
import { copyBlocks } from "../../lib/engine/wasm_kernels/copy.ts";
import { columnSums } from "../../lib/engine/wasm_kernels/reduce.ts";
import { avgPoolGradTiled } from "../../lib/engine/wasm_kernels/pool.ts";
import { adamArrays, emaArrays } from "../../lib/engine/fused/optim.ts";
import { upsample2GradInto, upsample2Into } from "../../lib/engine/fused/upsample.ts";

const hasCc = (await runCommand("cc", ["--version"], { timeoutMs: 10_000 })).code === 0;

/** A runner that counts compiles and can make them fail. */
function countingRunner(fail?: { code: number; stderr: string }) {
  const calls: string[][] = [];
  const run: Runner = (cmd, args, o) => {
    calls.push([cmd, ...args]);
    if (fail && args[0] !== "--version") return Promise.resolve({ stdout: "", ...fail });
    return runCommand(cmd, args, o);
  };
  return { run, compiles: () => calls.filter((c) => c[1] !== "--version").length };
}

async function withCache(f: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    await f(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const env = (over: Record<string, string> = {}) => (k: string) => over[k] ?? Deno.env.get(k);

/** The compiled kernels, from the default cache (built there on first use). */
const compiled = async () => await prepareNativeKernels({ log: () => {} }) as NativeKernels;

/** The wasm engine (tfjs loaded only by the tests that need it) and the compiled kernels. */
async function onWasm(): Promise<NativeKernels> {
  const { initEngine } = await import("../../lib/engine/mod.ts");
  await initEngine({ backend: "wasm", announce: false });
  return compiled();
}

Deno.test({
  name: "native kernels: built once into the cache, reused, a corrupt entry rebuilt",
  ignore: !hasCc,
  fn: () =>
    withCache(async (dir) => {
      const lines: string[] = [];
      const r = countingRunner();
      const opts = { cacheDir: dir, env: env(), run: r.run, log: (l: string) => lines.push(l) };
      const first = await prepareNativeKernels(opts);
      assert.ok(first, lines.join("\n"));
      assert.equal(r.compiles(), 1);
      assert.ok(first.path.startsWith(join(dir, "kernels")));
      const again = await prepareNativeKernels(opts);
      assert.equal(again?.path, first.path);
      assert.equal(r.compiles(), 1, "the second run loads the cached library");
      // A corrupt entry (a truncated file) in another cache is rebuilt there. (Not this one: the
      // loaded library is mapped, and glibc would hand back the loaded copy by name.)
      await withCache(async (other) => {
        const name = first.path.split("/").pop()!;
        await Deno.mkdir(join(other, "kernels"));
        await Deno.writeTextFile(join(other, "kernels", name), "not a shared object");
        const rebuilt = await prepareNativeKernels({ ...opts, cacheDir: other });
        assert.equal(rebuilt?.path, join(other, "kernels", name));
        assert.equal(r.compiles(), 2, "an entry that does not load is built again");
      });
      assert.deepEqual(lines, []);
      const left = [...Deno.readDirSync(join(dir, "kernels"))].map((e) => e.name);
      assert.deepEqual(left, [first.path.split("/").pop()], "no temp files left");
    }),
});

Deno.test("native kernels: a failing or absent cc, DP_NATIVE=off or DP_BLAS=0 leave the JS kernels", () =>
  withCache(async (dir) => {
    const lines: string[] = [];
    const log = (l: string) => lines.push(l);
    const broken = countingRunner({ code: 1, stderr: "group_norm.c:1: error: boom\n" });
    assert.equal(
      await prepareNativeKernels({ cacheDir: dir, env: env(), run: broken.run, log }),
      undefined,
    );
    if (hasCc) {
      assert.match(
        lines.at(-1)!,
        /^native kernels: cc failed: .*error: boom; GroupNorm stays in JS/,
      );
    }
    const absent: Runner = () => Promise.resolve({ code: 127, stdout: "", stderr: "cc not found" });
    assert.equal(
      await prepareNativeKernels({ cacheDir: dir, env: env(), run: absent, log }),
      undefined,
    );
    assert.match(lines.at(-1)!, /no C compiler \(cc; Debian: apt-get install gcc\)/);
    const n = lines.length;
    const off = countingRunner();
    const r = await prepareNativeKernels({
      cacheDir: dir,
      env: env({ DP_NATIVE: "off" }),
      run: off.run,
      log,
    });
    assert.equal(r, undefined);
    const noBlas = await prepareNativeKernels({
      cacheDir: dir,
      env: env({ DP_BLAS: "0" }),
      run: off.run,
      log,
    });
    assert.equal(noBlas, undefined);
    assert.equal(off.compiles(), 0);
    assert.equal(lines.length, n, "off is silent");
    // kernels/ exists only once a compile started (not where cc is absent).
    const entries = hasCc ? [...Deno.readDirSync(join(dir, "kernels"))] : [];
    assert.deepEqual(entries, [], "a failed compile leaves nothing behind");
  }));

Deno.test({
  name:
    "native kernels: GroupNorm stats, coefficients, affine and gradients equal the JS loops bit for bit, with and without scale-shift",
  ignore: !hasCc,
  fn: async () => {
    const k = await compiled();
    assert.ok(k);
    for (
      const [shape, g] of [[[3, 5, 7, 12], 4], [[2, 9, 9, 300], 30], [[2, 4, 4, 6], 3]] as const
    ) {
      const d = gnDims(shape, g);
      const n = shape.reduce((a, b) => a * b, 1), c = shape[3];
      const wave = (f: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * f) * 2);
      const x = wave(0.37), dy = wave(0.11), y1 = wave(0.05);
      const sig = Float32Array.from(y1, (v) => 1 / (1 + Math.exp(-v)));
      // Modulated (ADM's scale-shift norm) on the first shapes, plain GroupNorm on the last.
      const modulated = shape[3] !== 6;
      const p = {
        gamma: Float32Array.from({ length: c }, (_, i) => 1 + i / c),
        beta: Float32Array.from({ length: c }, (_, i) => i / c - 0.5),
        scale: modulated
          ? Float32Array.from({ length: shape[0] * c }, (_, i) => Math.cos(i) / 3)
          : undefined,
        shift: modulated
          ? Float32Array.from({ length: shape[0] * c }, (_, i) => Math.sin(i) / 3)
          : undefined,
      };
      const run = () => {
        const st = groupNormStats(x, d, 1e-5);
        const y = new Float32Array(n);
        groupNormAffine(x, d, st, p, y);
        const grads = (silu: boolean) => {
          const out = {
            dx: new Float32Array(n),
            dgamma: new Float32Array(c),
            dbeta: new Float32Array(c),
            dscale: modulated ? new Float32Array(shape[0] * c) : undefined,
            dshift: modulated ? new Float32Array(shape[0] * c) : undefined,
          };
          groupNormBackward(dy, x, d, st, p, out, silu ? { y1, s: sig.slice() } : undefined);
          return out;
        };
        return {
          mean: [...st.mean],
          rstd: [...st.rstd],
          y,
          plain: grads(false),
          silu: grads(true),
        };
      };
      const js = run();
      setNativeKernels(k);
      let c2;
      try {
        c2 = run();
      } finally {
        setNativeKernels(undefined);
      }
      // Same operations in the same order in double: equal, not merely close (the goldens of
      // `deno task repro` depend on it).
      const close = (a: ArrayLike<number>, b: ArrayLike<number>, what: string) =>
        assert.deepEqual(Array.from(a), Array.from(b), `${shape} ${what}`);
      close(c2.mean, js.mean, "mean");
      close(c2.rstd, js.rstd, "rstd");
      close(c2.y, js.y, "y");
      for (const kind of ["plain", "silu"] as const) {
        for (const key of ["dx", "dgamma", "dbeta", "dscale", "dshift"] as const) {
          close(c2[kind][key] ?? [], js[kind][key] ?? [], `${kind} ${key}`);
        }
      }
      // The whole backward in one call, an example at a time: plain, the JS loops' bits; through
      // the SiLU, the bits of the C passes run one after another over the batch.
      const outputs = () => ({
        dx: new Float32Array(n),
        dgamma: new Float32Array(c),
        dbeta: new Float32Array(c),
        dscale: modulated ? new Float32Array(shape[0] * c) : undefined,
        dshift: modulated ? new Float32Array(shape[0] * c) : undefined,
      });
      const keys = ["dx", "dgamma", "dbeta", "dscale", "dshift"] as const;
      const plain = outputs();
      assert.ok(k.gnBackward(dy, x, p, plain, d, 1e-5, false));
      for (const key of keys) close(plain[key] ?? [], js.plain[key] ?? [], `gnBackward ${key}`);
      const silu = outputs(), passes = outputs();
      assert.ok(k.gnBackward(dy, x, p, silu, d, 1e-5, true));
      const S = () => new Float64Array(shape[0] * c);
      const [sx, sq, S1, S2] = [S(), S(), S(), S()];
      const st = { mean: new Float64Array(shape[0] * g), rstd: new Float64Array(shape[0] * g) };
      k.sums(x, x, sx, sq, c);
      k.gnStats(sx, sq, st, d, 1e-5);
      const [A, B, P, Q, R] = [0, 1, 2, 3, 4].map(() => new Float32Array(shape[0] * c));
      k.gnCoefficients(st, p, A, B, d);
      k.siluGradSums(dy, x, A, B, passes.dx, S1, S2, c);
      const [dgamma, dbeta] = [new Float64Array(c), new Float64Array(c)];
      const { dscale, dshift } = passes;
      k.gnFinish({ S1, S2, st, p, d, dgamma, dbeta, dscale, dshift, P, Q, R });
      k.affine2(passes.dx, P, x, Q, R, passes.dx, c);
      passes.dgamma.set(dgamma);
      passes.dbeta.set(dbeta);
      for (const key of keys) close(silu[key] ?? [], passes[key] ?? [], `gnBackward silu ${key}`);
      // The whole forward in one call, an example at a time: the same bits; with the SiLU, the
      // JS route's SiLU of them to exp.h's precision.
      const yf = new Float32Array(n), ys = new Float32Array(n);
      const stf = k.gnForward(x, p, yf, d, 1e-5, false);
      close(yf, js.y, "gnForward y");
      close(stf.mean, js.mean, "gnForward mean");
      close(stf.rstd, js.rstd, "gnForward rstd");
      k.gnForward(x, p, ys, d, 1e-5, true);
      js.y.forEach((v, i) => {
        const want = v / (1 + Math.exp(-v));
        assert.ok(Math.abs(ys[i] - want) <= 1e-6 * Math.max(1, Math.abs(want)), `silu at ${i}`);
      });
    }
  },
});

Deno.test({
  name: "native kernels: block copies (Concat, SplitV) equal the JS copies, threaded or not",
  ignore: !hasCc,
  fn: async () => {
    const k = await compiled();
    assert.ok(k);
    // A U-Net skip join (rows of 32 and 64 words into rows of 96, past the threading threshold),
    // short rows, and one row.
    for (
      const [len, blocks, dstStride] of [[32, 3136, 96], [64, 3136, 96], [3, 50, 7], [40, 1, 40]]
    ) {
      const words = 2 * (len * blocks + dstStride * blocks);
      const heap = Int32Array.from({ length: words }, (_, i) => (i * 2654435761) | 0);
      const src = 5, dst = len * blocks + 11;
      const js = heap.slice();
      copyBlocks(js, src, len, dst, dstStride, len, blocks); // no kernels installed: JS
      const c = heap.slice();
      setNativeKernels(k);
      try {
        copyBlocks(c, src, len, dst, dstStride, len, blocks);
      } finally {
        setNativeKernels(undefined);
      }
      assert.deepEqual(c, js, `len ${len} × ${blocks}`);
      assert.notDeepEqual(js, heap, "the copy wrote");
    }
  },
});

Deno.test({
  name: "native kernels: Transpose by row copies equals cpu's, and hands other cases back",
  ignore: !hasCc,
  fn: async () => {
    const k = await onWasm();
    let rows = 0;
    const before = setNativeKernels({
      ...k,
      gatherRows: (...a) => (rows++, k.gatherRows(...a)),
    });
    // [shape, perm, whether the row route takes it]
    const cases: [number[], number[], boolean][] = [
      [[3, 5, 4, 8], [0, 2, 1, 3], true], // attention's head split
      [[64, 49, 12, 16], [0, 2, 1, 3], true], // past the threading threshold
      [[4, 3, 6, 5], [1, 0, 2, 3], true], // adaptive pooling's axis move
      [[2, 1, 3, 4, 6], [2, 1, 0, 3, 4], true], // a size-1 axis, the last two merged
      [[2, 3, 4, 5], [2, 0, 1, 3], true], // two outer axes merged
      [[2, 3, 4, 5], [0, 1, 2, 3], true], // identity: one row
      [[2, 3, 4, 5], [0, 1, 3, 2], false], // the last axis moves
      [[5, 7, 1], [1, 0, 2], false], // a 2-D transpose behind a size-1 last axis
      [[3, 4, 2], [1, 0, 2], false], // rows of 2 words: the built-in's loop
    ];
    try {
      for (const [shape, perm, byRows] of cases) {
        for (const dtype of ["float32", "int32"] as const) {
          const values = Array.from({ length: shape.reduce((a, d) => a * d) }, (_, i) => i * 3 - 7);
          const on = async (backend: string) => {
            await tf.setBackend(backend);
            const x = tf.tensor(values, shape, dtype);
            const y = tf.transpose(x, perm);
            const out = { shape: y.shape, data: Array.from(y.dataSync()), dtype: y.dtype };
            tf.dispose([x, y]);
            return out;
          };
          const want = await on("cpu");
          const calls = rows;
          const got = await on("wasm");
          assert.deepEqual(got, want, `${shape} by ${perm} (${dtype})`);
          assert.equal(rows - calls, byRows ? 1 : 0, `${shape} by ${perm}: the row route`);
        }
      }
    } finally {
      setNativeKernels(before);
    }
  },
});

Deno.test({
  name: "native kernels: Add, Sub and Multiply equal the built-in kernels bit for bit",
  ignore: !hasCc,
  fn: async () => {
    const k = await onWasm();
    let calls = 0;
    const counted = {
      ...k,
      binary: (...a: Parameters<NativeKernels["binary"]>) => (calls++, k.binary(...a)),
    };
    // [a, b, whether the C route takes it]
    const cases: [number[], number[], boolean][] = [
      [[64, 28, 28, 8], [64, 28, 28, 8], true], // equal shapes, past the threading threshold
      [[3, 5, 8], [3, 5, 8], true],
      [[2, 7, 7, 16], [16], true], // a bias
      [[16], [2, 7, 7, 16], true], // the repeated operand first (Sub's order)
      [[64, 9, 9, 32], [64, 1, 1, 32], true], // an embedding per example, threaded
      [[4, 1, 1, 32], [4, 6, 6, 32], true],
      [[4, 9, 24], [4, 1, 24], true], // a gate over tokens
      [[2, 3, 4, 16], [2, 1, 4, 16], true], // repeated along a middle axis
      [[4, 9, 3], [3], false], // rows of 3
      [[4, 9, 24], [], false], // a scalar
      [[4, 9, 24], [4, 9, 1], false], // repeated along the last axis
      [[4, 1, 24], [1, 9, 1], false], // both repeated
      [[2, 3, 4, 16], [1, 3, 1, 16], false], // repeated along two separate blocks
    ];
    const before = setNativeKernels(undefined);
    try {
      await tf.setBackend("wasm");
      for (const [sa, sb, byC] of cases) {
        const a = tf.tensor(
          Float32Array.from({
            length: sa.reduce((p, d) => p * d, 1),
          }, (_, i) => Math.sin(i * 0.37) * 3),
          sa,
        );
        const b = tf.tensor(
          Float32Array.from({
            length: sb.reduce((p, d) => p * d, 1),
          }, (_, i) => Math.cos(i * 0.11) + 0.5),
          sb,
        );
        for (const [name, op] of [["add", tf.add], ["sub", tf.sub], ["mul", tf.mul]] as const) {
          setNativeKernels(undefined);
          const want = op(a, b);
          setNativeKernels(counted);
          const n = calls;
          const got = op(a, b);
          assert.deepEqual(got.shape, want.shape);
          assert.deepEqual(got.dataSync(), want.dataSync(), `${name} ${sa} with ${sb}`);
          assert.equal(calls - n, byC ? 1 : 0, `${name} ${sa} with ${sb}: the C route`);
          tf.dispose([want, got]);
        }
        tf.dispose([a, b]);
      }
      setNativeKernels(counted);
      const i = tf.add(tf.tensor1d([1, 2], "int32"), tf.tensor1d([3, 4], "int32")); // built-in
      assert.deepEqual([i.dtype, Array.from(i.dataSync())], ["int32", [4, 6]]);
      i.dispose();
    } finally {
      setNativeKernels(before);
    }
  },
});

Deno.test({
  name: "native kernels: a gradient's sum of squares matches a double sum, and keeps NaN and ∞",
  ignore: !hasCc,
  fn: async () => {
    const k = await compiled();
    // One chunk, a chunk and a tail, and many chunks (threaded).
    for (const n of [0, 7, 16_384 + 5, 1_000_003]) {
      const x = Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.71) * 3);
      let want = 0;
      for (const v of x) want += v * v;
      const got = k.sumSquares(x);
      assert.ok(Math.abs(got - want) <= 1e-12 * want, `n = ${n}: ${got} against ${want}`);
      if (n > 0) {
        x[n >> 1] = NaN;
        assert.ok(Number.isNaN(k.sumSquares(x)), `n = ${n}: NaN`);
        x[n >> 1] = Infinity;
        assert.equal(k.sumSquares(x), Infinity, `n = ${n}: ∞`);
      }
    }
    // The global norm on wasm (C) against cpu's composed ops.
    await onWasm();
    const { globalNorm } = await import("../../lib/optim.ts");
    const before = setNativeKernels(k);
    try {
      const grads = () => ({
        w: tf.tensor(Float32Array.from({ length: 40_000 }, (_, i) => Math.cos(i * 0.3)), [
          200,
          200,
        ]),
        b: tf.tensor([3, -4, 0.5]),
      });
      await tf.setBackend("cpu");
      const c = grads(), want = globalNorm(c);
      await tf.setBackend("wasm");
      const w = grads(), got = globalNorm(w);
      assert.ok(Math.abs(got - want) <= 1e-6 * want, `${got} against ${want}`);
      tf.dispose([...Object.values(c), ...Object.values(w)]);
    } finally {
      setNativeKernels(before);
    }
  },
});

Deno.test({
  name:
    "native kernels: GroupNorm + SiLU fused in C agrees with the JS route to 1e-6, gradients too",
  ignore: !hasCc,
  fn: async () => {
    const k = await onWasm();
    const { groupNormScaleShift } = await import("../../lib/engine/fused/group_norm.ts");
    const before = setNativeKernels(undefined);
    const [n, s, c, g] = [3, 6, 64, 8];
    const wave = (len: number, f: number, a: number) =>
      tf.tensor(Float32Array.from({ length: len }, (_, i) => a * Math.sin(i * f)));
    const x = tf.reshape(wave(n * s * s * c, 0.37, 3), [n, s, s, c]);
    const gamma = tf.add(wave(c, 0.7, 0.5), 1), beta = wave(c, 0.3, 1);
    const scale = tf.reshape(wave(n * c, 0.9, 0.4), [n, 1, 1, c]);
    const shift = tf.reshape(wave(n * c, 1.1, 0.4), [n, 1, 1, c]);
    const dy = tf.reshape(wave(n * s * s * c, 0.13, 1), [n, s, s, c]);
    const run = () =>
      tf.tidy(() => {
        const f = (a: tf.Tensor, b: tf.Tensor, bb: tf.Tensor, sc: tf.Tensor, sh: tf.Tensor) =>
          groupNormScaleShift(a, b, bb, sc, sh, g, 1e-5, true);
        const y = f(x, gamma, beta, scale, shift);
        const grads = tf.grads(f)([x, gamma, beta, scale, shift], dy);
        return [y, ...grads].map((t) => t.dataSync() as Float32Array);
      });
    try {
      const js = run();
      setNativeKernels(k);
      const fused = run();
      fused.forEach((a, i) => {
        let err = 0, scaleMax = 0;
        for (let j = 0; j < a.length; j++) {
          err = Math.max(err, Math.abs(a[j] - js[i][j]));
          scaleMax = Math.max(scaleMax, Math.abs(js[i][j]));
        }
        assert.ok(err <= 1e-6 * scaleMax, `output ${i}: ${err} of ${scaleMax}`);
      });
    } finally {
      setNativeKernels(before);
      tf.dispose([x, gamma, beta, scale, shift, dy]);
    }
  },
});

Deno.test({
  name:
    "native kernels: column sums equal the JS loop bit for bit, and a double sum to float precision",
  ignore: !hasCc,
  fn: async () => {
    const k = await compiled();
    // Blocks of rows (one, several, a partial last one) on one thread and on several.
    for (const [rows, inner] of [[50176, 64], [3136, 32], [2048, 3], [49, 128], [7, 3], [1, 5]]) {
      const x = Float32Array.from({ length: rows * inner }, (_, i) => Math.sin(i * 0.77) * 100);
      const js = new Float32Array(inner), c = new Float32Array(inner);
      columnSums(x, rows, inner, js);
      assert.ok(k.columnSums(x, rows, inner, c));
      assert.deepEqual(c, js, `${rows}×${inner}`);
      // Against one sequential double sum: blocks reorder the additions, not the precision.
      const seq = new Float64Array(inner);
      for (let i = 0; i < rows * inner; i++) seq[i % inner] += x[i];
      assert.deepEqual(js, Float32Array.from(seq), `${rows}×${inner} vs one sum`);
    }
  },
});

Deno.test({
  name: "native kernels: AvgPoolGrad of k×k stride-k pools equals the JS loop bit for bit",
  ignore: !hasCc,
  fn: async () => {
    const k = await compiled();
    // 2×2 on an even map, 3×3 (1/9 rounds) on a map with a leftover row and column.
    for (const [n, h, w, c, p] of [[3, 8, 6, 5, 2], [2, 7, 10, 4, 3]]) {
      const [oh, ow] = [Math.floor(h / p), Math.floor(w / p)];
      const dy = Float32Array.from({ length: n * oh * ow * c }, (_, i) => Math.sin(i * 0.61) * 7);
      const js = new Float32Array(n * h * w * c).fill(NaN), cc = js.slice();
      avgPoolGradTiled(dy, js, n, h, w, c, oh, ow, p);
      k.avgPoolGrad(dy, cc, [n, h, w, c, oh, ow, p]);
      assert.deepEqual(cc, js, `${p}×${p} on ${h}×${w}`);
    }
  },
});

Deno.test({
  name: "native kernels: AvgPool of k×k stride-k pools equals tfjs's built-in kernel bit for bit",
  ignore: !hasCc,
  fn: async () => {
    const k = await onWasm();
    const before = setNativeKernels(undefined);
    try {
      // 2×2 on an even map, 3×3 (nine taps, 1/9 rounds) with a leftover row and column, and
      // more channels than one run of the zero taps.
      for (const [n, h, w, c, p] of [[3, 8, 6, 5, 2], [2, 7, 10, 19, 3], [1, 4, 4, 300, 2]]) {
        const [oh, ow] = [Math.floor(h / p), Math.floor(w / p)];
        const x = Float32Array.from(
          { length: n * h * w * c },
          (_, i) => Math.sin(i * 0.61) * 1000 + Math.cos(i * 13.1),
        );
        const got = new Float32Array(n * oh * ow * c).fill(NaN);
        k.avgPool(x, got, [n, h, w, c, oh, ow, p]);
        const xt = tf.tensor4d(x, [n, h, w, c]);
        setNativeKernels(undefined);
        const builtin = tf.avgPool(xt, p, p, "valid").dataSync() as Float32Array;
        setNativeKernels(k); // and through tf.avgPool with the kernels in place
        const viaOp = tf.avgPool(xt, p, p, "valid").dataSync() as Float32Array;
        xt.dispose();
        assert.deepEqual(got, builtin, `${p}×${p} on ${h}×${w}`);
        assert.deepEqual(viaOp, builtin, `${p}×${p} through tf.avgPool`);
      }
    } finally {
      setNativeKernels(before);
    }
  },
});

Deno.test({
  name: "native kernels: nearest ×2 upsampling and its gradient equal the concat route bit for bit",
  ignore: !hasCc,
  fn: async () => {
    const k = await onWasm();
    const { upsampleNearest2 } = await import("../../lib/models/nn.ts");
    const before = setNativeKernels(undefined);
    const [n, h, w, c] = [3, 5, 7, 6];
    const wave = (len: number, f: number) =>
      Float32Array.from({ length: len }, (_, i) => Math.sin(i * f) * 100 + Math.cos(i * 7.3));
    const x = tf.tensor4d(wave(n * h * w * c, 0.37), [n, h, w, c]);
    const dy = tf.tensor4d(wave(n * 4 * h * w * c, 0.11), [n, 2 * h, 2 * w, c]);
    const run = () =>
      tf.tidy(() => {
        const f = (t: tf.Tensor) => upsampleNearest2(t as tf.Tensor4D);
        const y = f(x);
        const dx = tf.grad(f)(x, dy);
        return [y.shape, y.dataSync(), dx.shape, dx.dataSync()];
      });
    try {
      const composed = run();
      setNativeKernels(k);
      const tensors = tf.memory().numTensors;
      const kernels = run();
      assert.equal(tf.memory().numTensors, tensors, "no tensors leak");
      assert.deepEqual(kernels, composed);
      // The kernels' JS loops (where the C ones are not loaded) compute the same.
      const dims = [n, h, w, c] as [number, number, number, number];
      const js = new Float32Array(n * 4 * h * w * c), dxJs = new Float32Array(n * h * w * c);
      upsample2Into(x.dataSync() as Float32Array, js, dims);
      upsample2GradInto(dy.dataSync() as Float32Array, dxJs, dims);
      assert.deepEqual([js, dxJs], [kernels[1], kernels[3]], "JS loops");
    } finally {
      setNativeKernels(before);
      tf.dispose([x, dy]);
    }
  },
});

Deno.test({
  name:
    "native kernels: Adam, the update's sum and the EMA over a list of tensors equal the JS loops bit for bit",
  ignore: !hasCc,
  fn: async () => {
    const k = await compiled();
    // Past the threading threshold, and a bias-sized parameter; with and without decay.
    const sizes = [40_000, 32, 1000];
    const decays = [3e-6, 0, 0];
    const total = sizes.reduce((a, b) => a + b, 0);
    // Arrays g, m, v, p, m', v', u, e', sum: each a region of `total` words on one heap.
    const heap = new Float32Array(9 * total);
    const region = (r: number) => heap.subarray(r * total, (r + 1) * total);
    const fill = (r: number, f: number, a: number) =>
      region(r).forEach((_, i, x) => x[i] = a * Math.sin(i * f));
    fill(0, 0.3, 1), fill(1, 0.7, 0.1), fill(2, 0.9, 0.01), fill(3, 0.2, 1);
    region(2).forEach((x, i, v) => v[i] = Math.abs(x));
    const base = { beta1: 0.9, beta2: 0.999, epsHat: 1e-8 * 0.3 };
    const rows = new BigInt64Array(8 * sizes.length), coefs = new Float64Array(2 * sizes.length);
    const pairs = (a: number, b: number, out: number) =>
      BigInt64Array.from(
        sizes.flatMap((n, i) => {
          const at = sizes.slice(0, i).reduce((s, x) => s + x, 0);
          return [a * total + at, b * total + at, out * total + at, n];
        }),
        BigInt,
      );
    const expected: Float32Array[] = [];
    sizes.forEach((n, i) => {
      const at = sizes.slice(0, i).reduce((s, x) => s + x, 0);
      const part = (r: number) => region(r).subarray(at, at + n);
      const st = { ...base, stepSize: 1e-4 * (i + 1), decay: decays[i] };
      const p = decays[i] ? part(3) : undefined;
      [0, 1, 2, p ? 3 : -1, 4, 5, 6].forEach((r, j) =>
        rows[8 * i + j] = BigInt(r < 0 ? -1 : r * total + at)
      );
      rows[8 * i + 7] = BigInt(n);
      coefs.set([st.stepSize, st.decay], 2 * i);
      const [mj, vj, uj] = [0, 1, 2].map(() => new Float32Array(n));
      adamArrays(part(0), part(1), part(2), p, st, mj, vj, uj);
      const sum = Float32Array.from(part(3), (x, j) => x + uj[j]);
      const ej = new Float32Array(n);
      emaArrays(part(1), sum, ej, 0.9993);
      expected.push(mj, vj, uj, sum, ej);
    });
    k.adamMulti(heap, { rows, coefs, ...base });
    k.addMulti(heap, pairs(3, 6, 8));
    k.emaMulti(heap, pairs(1, 8, 7), 0.9993);
    sizes.forEach((n, i) => {
      const at = sizes.slice(0, i).reduce((s, x) => s + x, 0);
      const part = (r: number) => region(r).subarray(at, at + n);
      const got = [part(4), part(5), part(6), part(8), part(7)];
      assert.deepEqual(got, expected.slice(5 * i, 5 * i + 5), `tensor ${i} (n ${n})`);
    });
  },
});

Deno.test({
  name:
    "native kernels: the arithmetic peak is positive, within what a core can issue, and bf16's only where the CPU has it",
  ignore: !hasCc,
  fn: async () => {
    const k = await compiled();
    const fp32 = k.peak("fp32", 0.02, 1)!, bf16 = k.peak("bf16", 0.02, 1);
    // A core issues at most two 16-lane FMAs a cycle (64 flops) or two bf16 dots (128), and no
    // core runs at 6 GHz: a chain the compiler folded away would exceed these.
    assert.ok(fp32 > 0.1 && fp32 < 64 * 6, `fp32 ${fp32} GFLOP/s`);
    if (bf16 !== undefined) assert.ok(bf16 > 0.1 && bf16 < 128 * 6, `bf16 ${bf16} GFLOP/s`);
    const cpuinfo = await Deno.readTextFile("/proc/cpuinfo").catch(() => undefined);
    if (cpuinfo !== undefined && Deno.build.arch === "x86_64") {
      assert.equal(bf16 !== undefined, /\bavx512_bf16\b/.test(cpuinfo), "bf16 where cpuinfo says");
    }
    assert.ok(k.peak("fp32", 0.02, 2)! > 0.1, "on two threads");
  },
});
