import * as tf from "@tensorflow/tfjs";
import { assert, assertClose, assertEquals, assertNoLeaks, assertThrows } from "../assert.ts";
import { initEngine } from "../../lib/engine/mod.ts";
import { foldName, normal, normalArray, rng } from "../../lib/random.ts";
import { countParams, disposeParams, type Params, toVariables } from "../../lib/params.ts";
import { initParam } from "../../lib/models/nn.ts";
import {
  apply,
  init,
  numParams,
  paramShapes,
  paramSpecs,
  tokens,
  VIT_CONFIGS,
  type ViTConfig,
} from "../../lib/models/vit.ts";

await initEngine({ backend: "wasm", announce: false });
const tiny: ViTConfig = VIT_CONFIGS.tiny;
const tinyMean: ViTConfig = { ...tiny, pool: "mean" };

type Values = Record<string, Float64Array>;

// Random parameters of every kind, O(1) activations: weights N(0, 1/fan_in), norm weights
// 1 + N(0, 0.3²) (not all ones: see the gradient test), biases, positions and CLS N(0, 0.3²).
function randomValues(c: ViTConfig, seed: number): Values {
  const out: Values = {};
  for (const [name, shape] of Object.entries(paramShapes(c))) {
    const size = shape.reduce((a, b) => a * b, 1);
    const z = normalArray(foldName(rng(seed), name), size);
    const isNormWeight = /norm\d?\.weight$/.test(name);
    const isMatrix = name.endsWith(".weight") && !isNormWeight;
    const fanIn = shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const scale = isMatrix ? 1 / Math.sqrt(fanIn) : 0.3;
    out[name] = Float64Array.from(z, (v) => (isNormWeight ? 1 : 0) + scale * v);
  }
  return out;
}

function toParams(c: ViTConfig, values: Values, prefix = ""): Params {
  const shapes = paramShapes(c);
  return toVariables(
    Object.fromEntries(
      Object.entries(values).map((
        [k, v],
      ) => [prefix + k, tf.tensor(Float32Array.from(v), [...shapes[k]])]),
    ),
  );
}

const input = (c: ViTConfig, n: number, seed = 3): tf.Tensor4D =>
  normal(rng(seed), [n, c.inputSize, c.inputSize, c.inChannels]) as tf.Tensor4D;

// ---------------------------------------------------------------------------------------------
// An independent reference: plain float64 loops over NHWC arrays, no tfjs.
// ---------------------------------------------------------------------------------------------

// erf by its Maclaurin series (float64 cancellation stays below 1e-7 for |x| < 5); erfc(5) is
// 1.5e-12, so ±1 beyond.
function erf(x: number): number {
  if (Math.abs(x) >= 5) return Math.sign(x);
  let term = x, sum = x;
  for (let n = 1; n < 200 && Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
    term *= (-x * x) / n;
    sum += term / (2 * n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

function lnRow(x: number[], g: Float64Array, b: Float64Array): number[] {
  const d = x.length;
  const mu = x.reduce((a, v) => a + v, 0) / d;
  const vr = x.reduce((a, v) => a + (v - mu) ** 2, 0) / d;
  return x.map((v, i) => ((v - mu) / Math.sqrt(vr + 1e-6)) * g[i] + b[i]);
}

function dense(x: number[], w: Float64Array, b: Float64Array): number[] {
  const cout = b.length;
  return Array.from({ length: cout }, (_, o) => {
    let s = b[o];
    for (let i = 0; i < x.length; i++) s += x[i] * w[i * cout + o];
    return s;
  });
}

/** Final-LN tokens [N][T'][D] of the ViT, the textbook way. */
function reference(c: ViTConfig, v: Values, x: Float32Array, n: number): number[][][] {
  const { inputSize: s, patchSize: p, inChannels: ch, hiddenSize: d, numHeads: heads } = c;
  const g = s / p, dh = d / heads;
  const out: number[][][] = [];
  for (let b = 0; b < n; b++) {
    let h: number[][] = [];
    if (c.pool === "cls") h.push(Array.from(v["cls_token"]));
    // Patch embedding as the stride-p convolution it is: kernel [p, p, C, D].
    for (let gy = 0; gy < g; gy++) {
      for (let gx = 0; gx < g; gx++) {
        const tok = Array.from(v["patch_embed.proj.bias"]);
        for (let kh = 0; kh < p; kh++) {
          for (let kw = 0; kw < p; kw++) {
            for (let ci = 0; ci < ch; ci++) {
              const xv = x[((b * s + gy * p + kh) * s + gx * p + kw) * ch + ci];
              for (let o = 0; o < d; o++) {
                tok[o] += xv * v["patch_embed.proj.weight"][((kh * p + kw) * ch + ci) * d + o];
              }
            }
          }
        }
        h.push(tok);
      }
    }
    h = h.map((tok, t) => tok.map((val, o) => val + v["pos_embed"][t * d + o]));
    for (let i = 0; i < c.depth; i++) {
      const w = (name: string) => v[`blocks.${i}.${name}`];
      const qkv = h.map((tok) =>
        dense(
          lnRow(tok, w("norm1.weight"), w("norm1.bias")),
          w("attn.qkv.weight"),
          w("attn.qkv.bias"),
        )
      );
      const att = h.map(() => new Array<number>(d).fill(0));
      for (let hd = 0; hd < heads; hd++) {
        // timm: qkv.reshape(N, T', 3, H, Dh), so q, k, v of head hd sit at j·D + hd·Dh.
        const q = (t: number, j: number) => qkv[t][hd * dh + j];
        const k = (t: number, j: number) => qkv[t][d + hd * dh + j];
        const val = (t: number, j: number) => qkv[t][2 * d + hd * dh + j];
        for (let t = 0; t < h.length; t++) {
          const logits = h.map((_, u) => {
            let sdot = 0;
            for (let j = 0; j < dh; j++) sdot += q(t, j) * k(u, j);
            return sdot / Math.sqrt(dh);
          });
          const mx = Math.max(...logits);
          const e = logits.map((l) => Math.exp(l - mx));
          const z = e.reduce((a2, b2) => a2 + b2, 0);
          for (let j = 0; j < dh; j++) {
            let sum = 0;
            for (let u = 0; u < h.length; u++) sum += (e[u] / z) * val(u, j);
            att[t][hd * dh + j] = sum;
          }
        }
      }
      h = h.map((tok, t) => {
        const a = dense(att[t], w("attn.proj.weight"), w("attn.proj.bias"));
        return tok.map((val, o) => val + a[o]);
      });
      h = h.map((tok) => {
        const f1 = dense(
          lnRow(tok, w("norm2.weight"), w("norm2.bias")),
          w("mlp.fc1.weight"),
          w("mlp.fc1.bias"),
        );
        const m = dense(
          f1.map((u) => 0.5 * u * (1 + erf(u / Math.SQRT2))),
          w("mlp.fc2.weight"),
          w("mlp.fc2.bias"),
        );
        return tok.map((val, o) => val + m[o]);
      });
    }
    out.push(h.map((tok) => lnRow(tok, v["norm.weight"], v["norm.bias"])));
  }
  return out;
}

function referencePool(c: ViTConfig, toks: number[][][]): number[] {
  return toks.flatMap((seq) => {
    if (c.pool === "cls") return seq[0];
    return seq[0].map((_, o) => seq.reduce((a, tok) => a + tok[o], 0) / seq.length);
  });
}

// ---------------------------------------------------------------------------------------------
// Shapes and counts
// ---------------------------------------------------------------------------------------------

Deno.test("paramShapes() gives the paper sizes' counts (timm's minus its head) without allocating", () => {
  const before = tf.memory().numTensors;
  const expected: [keyof typeof VIT_CONFIGS, number][] = [
    ["ViT-Ti/16", 5_717_416 - 193_000],
    ["ViT-S/16", 22_050_664 - 385_000],
    ["ViT-B/16", 86_567_656 - 769_000],
    ["small", 800_512],
    ["tiny", 3_680],
  ];
  for (const [name, total] of expected) assertEquals(numParams(VIT_CONFIGS[name]), total, name);
  assertEquals(numParams(tinyMean), 3_680 - 16 - 16, "mean pool: no cls_token, one fewer position");
  assertEquals(tf.memory().numTensors, before);
  const s = paramShapes(VIT_CONFIGS["ViT-B/16"]);
  assertEquals(s["cls_token"], [1, 1, 768]);
  assertEquals(s["pos_embed"], [1, 197, 768]);
  assertEquals(s["patch_embed.proj.weight"], [16, 16, 3, 768]); // conv [kh, kw, in, out]
  assertEquals(s["patch_embed.proj.bias"], [768]);
  assertEquals(s["blocks.0.norm1.weight"], [768]);
  assertEquals(s["blocks.11.attn.qkv.weight"], [768, 2304]); // linear [in, out]
  assertEquals(s["blocks.11.attn.qkv.bias"], [2304]);
  assertEquals(s["blocks.0.attn.proj.bias"], [768]);
  assertEquals(s["blocks.0.norm2.bias"], [768]);
  assertEquals(s["blocks.0.mlp.fc1.weight"], [768, 3072]);
  assertEquals(s["blocks.0.mlp.fc2.weight"], [3072, 768]);
  assertEquals(s["norm.weight"], [768]);
  assert(!("blocks.12.norm1.weight" in s) && !("head.weight" in s));
  assertEquals(Object.keys(s).length, 4 + 12 * 12 + 2);
  assertEquals(paramShapes(VIT_CONFIGS.small)["pos_embed"], [1, 50, 128]);
  const m = paramShapes({ ...VIT_CONFIGS.small, pool: "mean" });
  assert(!("cls_token" in m));
  assertEquals(m["pos_embed"], [1, 49, 128]);
});

Deno.test("paramSpecs() and paramShapes() put the prefix on every key", () => {
  for (const c of [tiny, tinyMean]) {
    const plain = paramShapes(c), pre = paramShapes(c, "encoder.");
    assertEquals(Object.keys(pre), Object.keys(plain).map((k) => `encoder.${k}`));
    for (const k of Object.keys(plain)) assertEquals(pre[`encoder.${k}`], plain[k]);
    assertEquals(countParams(pre), numParams(c));
    assert(Object.keys(paramSpecs(c, "encoder.")).every((k) => k.startsWith("encoder.")));
  }
});

Deno.test("paramShapes() and apply() reject bad configs and inputs with clear errors", () => {
  assertThrows(
    () => paramShapes({ ...tiny, patchSize: 3 }),
    /inputSize 4 does not divide by patchSize 3/,
  );
  assertThrows(
    () => paramShapes({ ...tiny, numHeads: 3 }),
    /hiddenSize 16 does not divide by 3 heads/,
  );
  assertThrows(() => paramShapes({ ...tiny, hiddenSize: 0 }), /hiddenSize 0 must be a positive/);
  assertThrows(() => paramShapes({ ...tiny, depth: -1 }), /depth -1/);
  assertThrows(() => paramShapes({ ...tiny, pool: "max" as "cls" }), /pool "max"/);
  const p = init(tiny, rng(0));
  tf.tidy(() => {
    assertThrows(
      () => apply(tiny, p, tf.zeros([2, 4, 4, 3]) as tf.Tensor4D),
      /input is \[2,4,4,3\], expected \[N, 4, 4, 4\]/,
    );
    assertThrows(
      () => tokens(tiny, p, tf.zeros([2, 8, 8, 4]) as tf.Tensor4D),
      /expected \[N, 4, 4, 4\]/,
    );
    assertThrows(
      () => apply(tiny, p, input(tiny, 1), "encoder."),
      /parameter "encoder\.[a-z_.]+" is missing/,
    );
  });
  disposeParams(p);
});

Deno.test("init() follows timm's default init, each draw keyed by its prefixed name", () => {
  const c = VIT_CONFIGS.small;
  const p = init(c, rng(0), "enc.");
  const stats = (k: string) => {
    const v = p[`enc.${k}`].dataSync();
    let s = 0, s2 = 0, max = 0;
    for (const x of v) [s, s2, max] = [s + x, s2 + x * x, Math.max(max, Math.abs(x))];
    return { mean: s / v.length, std: Math.sqrt(s2 / v.length - (s / v.length) ** 2), max };
  };
  for (const k of ["pos_embed", "blocks.0.attn.qkv.weight", "blocks.3.mlp.fc2.weight"]) {
    assertClose([stats(k).std], [0.02], { rtol: 0.05, message: k });
  }
  assert(stats("cls_token").max < 1e-5, "cls_token ~ N(0, 1e-6²)");
  for (
    const k of [
      "blocks.0.attn.qkv.bias",
      "blocks.2.mlp.fc1.bias",
      "norm.bias",
      "blocks.1.norm2.bias",
    ]
  ) {
    assertEquals(stats(k).max, 0, k);
  }
  assertEquals([stats("norm.weight").mean, stats("norm.weight").std], [1, 0]);
  const patch = stats("patch_embed.proj.weight"); // PyTorch's Conv2d default, U(±1/√(C·p·p))
  assert(patch.max <= 0.5 && patch.max > 0.45, `patch bound ${patch.max}`);
  // The draw depends on the full key: the same as initParam's under "enc.", not under "".
  const spec = paramSpecs(c, "enc.")["enc.pos_embed"];
  tf.tidy(() => {
    assertClose(p["enc.pos_embed"], initParam(rng(0), "enc.pos_embed", spec), {
      rtol: 0,
      atol: 1e-30,
    });
    assert(
      tf.any(tf.notEqual(p["enc.pos_embed"], initParam(rng(0), "pos_embed", spec))).dataSync()[0],
    );
  });
  disposeParams(p);
});

// ---------------------------------------------------------------------------------------------
// Forward pass
// ---------------------------------------------------------------------------------------------

Deno.test("apply() and tokens() are shaped [N, D] and [N, (1+)T, D] and leak nothing", async () => {
  for (const base of [VIT_CONFIGS.tiny, VIT_CONFIGS.small] as ViTConfig[]) {
    for (const pool of ["cls", "mean"] as const) {
      const c = { ...base, pool };
      const p = init(c, rng(0));
      const x = input(c, 3);
      const t = (c.inputSize / c.patchSize) ** 2 + (pool === "cls" ? 1 : 0);
      await assertNoLeaks(() => {
        for (let i = 0; i < 2; i++) {
          const r = apply(c, p, x), toks = tokens(c, p, x);
          assertEquals(r.shape, [3, c.hiddenSize]);
          assertEquals(toks.shape, [3, t, c.hiddenSize]);
          assert(r.dataSync().every(Number.isFinite));
          tf.dispose([r, toks]);
        }
      }, `${pool}`);
      disposeParams(p);
      x.dispose();
    }
  }
});

Deno.test("apply() and tokens() match a float64 loop reference on a 1-block ViT", () => {
  for (const c of [tiny, tinyMean]) {
    const values = randomValues(c, 11);
    const p = toParams(c, values);
    const x = input(c, 2, 12);
    const ref = reference(c, values, x.dataSync() as Float32Array, 2);
    tf.tidy(() => {
      assertClose(tokens(c, p, x), ref.flat(2), {
        rtol: 1e-4,
        atol: 1e-4,
        message: `${c.pool} tokens`,
      });
      assertClose(apply(c, p, x), referencePool(c, ref), {
        rtol: 1e-4,
        atol: 1e-4,
        message: `${c.pool} r`,
      });
    });
    disposeParams(p);
    x.dispose();
  }
});

Deno.test("apply() is the CLS row or the mean of tokens(), and honours the prefix", () => {
  for (const c of [tiny, tinyMean, { ...VIT_CONFIGS.small, depth: 1 }] as ViTConfig[]) {
    const values = randomValues(c, 21);
    const p = toParams(c, values);
    const q = toParams(c, values, "encoder.");
    const x = input(c, 3, 22);
    tf.tidy(() => {
      const r = apply(c, p, x), toks = tokens(c, p, x);
      const pooled = c.pool === "cls"
        ? tf.squeeze(tf.slice(toks, [0, 0, 0], [-1, 1, -1]), [1])
        : tf.mean(toks, 1);
      assertClose(r, pooled, { rtol: 1e-5, atol: 1e-6, message: c.pool });
      // The same values under "encoder." give the same outputs.
      assertClose(apply(c, q, x, "encoder."), r, { rtol: 0, atol: 1e-6 });
    });
    tf.dispose([x]);
    disposeParams(p);
    disposeParams(q);
  }
});

Deno.test("apply() with mean pooling and zero positions ignores the order of the patches", () => {
  const c = tinyMean; // 4×4 input, 2×2 patches: a 2×2 grid
  const values = randomValues(c, 31);
  const perm = [2, 0, 3, 1]; // new patch g takes old patch perm[g]
  const { inputSize: s, patchSize: ps, inChannels: ch } = c;
  const g = s / ps;
  const x = input(c, 2, 32);
  const xs = x.dataSync();
  const moved = new Float32Array(xs.length);
  for (let b = 0; b < 2; b++) {
    for (let t = 0; t < g * g; t++) {
      const [gy, gx, sy, sx] = [Math.floor(t / g), t % g, Math.floor(perm[t] / g), perm[t] % g];
      for (let kh = 0; kh < ps; kh++) {
        for (let kw = 0; kw < ps; kw++) {
          for (let ci = 0; ci < ch; ci++) {
            moved[((b * s + gy * ps + kh) * s + gx * ps + kw) * ch + ci] =
              xs[((b * s + sy * ps + kh) * s + sx * ps + kw) * ch + ci];
          }
        }
      }
    }
  }
  const xp = tf.tensor4d(moved, x.shape);
  const withPos = toParams(c, values);
  const noPos = toParams(c, { ...values, pos_embed: new Float64Array(values["pos_embed"].length) });
  tf.tidy(() => {
    assertClose(apply(c, noPos, xp), apply(c, noPos, x), { rtol: 1e-5, atol: 1e-6 });
    // With positions the order matters (so the permutation above is not trivial).
    const diff = tf.max(tf.abs(tf.sub(apply(c, withPos, xp), apply(c, withPos, x)))).dataSync()[0];
    assert(diff > 1e-3, `positions should break the symmetry, diff ${diff}`);
  });
  disposeParams(withPos);
  disposeParams(noPos);
  tf.dispose([x, xp]);
});

// ---------------------------------------------------------------------------------------------
// Gradients
// ---------------------------------------------------------------------------------------------

const norm2 = (a: ArrayLike<number>) => Math.sqrt(Array.from(a).reduce((s, v) => s + v * v, 0));

// Random parameters, not init's: with norm.weight = 1, sum(r) = Σ norm.bias + Σ x̂ and Σ x̂ = 0
// over each token, so sum(r) would not depend on anything before the final norm.
Deno.test("apply() gradients of sum(r) reach every parameter (the key bias excepted) and leak nothing", () => {
  for (const c of [tiny, tinyMean]) {
    const p = toParams(c, randomValues(c, 41));
    const x = input(c, 2, 42);
    const before = tf.memory().numTensors;
    for (let rep = 0; rep < 2; rep++) {
      const { value, grads } = tf.variableGrads(() => tf.sum(apply(c, p, x)) as tf.Scalar);
      assertEquals(Object.keys(grads).sort(), Object.values(p).map((v) => v.name).sort());
      for (const [k, v] of Object.entries(p)) {
        const gr = grads[v.name].dataSync();
        assert(gr.every(Number.isFinite), `${c.pool} ${k}: non-finite gradient`);
        if (k.endsWith("attn.qkv.bias")) {
          // A key bias adds q·b_k to every logit of a query: softmax ignores it, so its gradient
          // is zero (up to rounding), while the q and v biases get one.
          const d = c.hiddenSize;
          const [gq, gk, gv] = [0, 1, 2].map((j) => norm2(gr.slice(j * d, (j + 1) * d)));
          assert(gq > 0 && gv > 0, `${c.pool} ${k}: q/v bias gradients ${gq}, ${gv}`);
          assert(gk <= 1e-5 * (gq + gv), `${c.pool} ${k}: key bias gradient ${gk}`);
        } else {
          assert(gr.some((g) => g !== 0), `${c.pool} ${k}: zero gradient`);
        }
      }
      tf.dispose([value, ...Object.values(grads)]);
      assertEquals(tf.memory().numTensors, before, `${c.pool}: the gradient step leaked`);
    }
    disposeParams(p);
    x.dispose();
  }
});

Deno.test("apply() gradients match central differences of the float64 reference", () => {
  const picks: [ViTConfig, string, number][] = [
    [tiny, "blocks.0.attn.qkv.weight", 5 * 48 + 3], // a q weight of head 0
    [tiny, "patch_embed.proj.weight", 37],
    [tiny, "cls_token", 4],
    [tinyMean, "pos_embed", 2 * 16 + 9],
    [tinyMean, "blocks.0.mlp.fc1.weight", 100],
  ];
  for (const [c, key, idx] of picks) {
    const values = randomValues(c, 51);
    const p = toParams(c, values);
    const x = input(c, 2, 52);
    const xs = x.dataSync() as Float32Array;
    const { value, grads } = tf.variableGrads(() => tf.sum(apply(c, p, x)) as tf.Scalar);
    const got = grads[p[key].name].dataSync()[idx];
    tf.dispose([value, ...Object.values(grads)]);
    const f = (delta: number) => {
      const v = { ...values, [key]: Float64Array.from(values[key]) };
      v[key][idx] += delta;
      return referencePool(c, reference(c, v, xs, 2)).reduce((a, b) => a + b, 0);
    };
    const eps = 1e-4;
    const fd = (f(eps) - f(-eps)) / (2 * eps);
    assert(Math.abs(fd) > 1e-3, `${key}[${idx}]: pick a scalar with a visible gradient (${fd})`);
    assertClose([got], [fd], { rtol: 2e-3, atol: 1e-4, message: `${c.pool} ${key}[${idx}]` });
    disposeParams(p);
    x.dispose();
  }
});
