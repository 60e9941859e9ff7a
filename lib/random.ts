// Seeded, splittable PRNG in the style of JAX keys: an `Rng` is an immutable 64-bit key; `split`
// and `fold` derive independent keys, and every draw is a pure function of its key. A training
// loop therefore needs only (seed, step) to reproduce the randomness of any step after a resume.
import * as tf from "@tensorflow/tfjs";

/** An immutable PRNG key: two unsigned 32-bit words. */
export interface Rng {
  readonly key: readonly [number, number];
}

// murmur3's 32-bit finaliser: a bijective avalanche mix.
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function derive(r: Rng, a: number, b: number): Rng {
  const [k0, k1] = r.key;
  const x = fmix32(k0 ^ fmix32(a + 0x9e3779b9));
  const y = fmix32(k1 ^ fmix32(b ^ x) ^ 0x7f4a7c15);
  return { key: [fmix32(x ^ y), y] };
}

/** A root key from an integer seed (any safe integer, negative ones included). */
export function rng(seed: number): Rng {
  if (!Number.isSafeInteger(seed)) throw new Error(`Seed must be a safe integer, got ${seed}`);
  const lo = seed >>> 0;
  const hi = Math.floor(seed / 2 ** 32) >>> 0;
  return derive({ key: [fmix32(lo ^ 0x243f6a88), fmix32(hi ^ 0x85a308d3)] }, 0, 0);
}

/** `n` independent child keys. */
export function split(r: Rng, n = 2): Rng[] {
  return Array.from({ length: n }, (_, i) => derive(r, 1, i));
}

/** A key derived from `r` and an integer (a step number, a layer index, a name hash). */
export function fold(r: Rng, data: number): Rng {
  return derive(r, 2, data | 0);
}

/** A key derived from `r` and a string (e.g. a parameter name). */
export function foldName(r: Rng, name: string): Rng {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return derive(r, 3, h);
}

/** xoshiro128** stream seeded from a key; `next()` returns uniform u32 values. */
function stream(r: Rng): () => number {
  let s0 = fmix32(r.key[0] ^ 0x1), s1 = fmix32(r.key[1] ^ 0x2);
  let s2 = fmix32(r.key[0] ^ r.key[1] ^ 0x3), s3 = fmix32(s0 ^ s1 ^ 0x4);
  if ((s0 | s1 | s2 | s3) === 0) s0 = 1;
  return () => {
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = rotl(s3, 11);
    return result;
  };
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** `n` uniform floats in [0, 1). */
export function uniformArray(r: Rng, n: number): Float32Array {
  const next = stream(r);
  const out = new Float32Array(n);
  // 24 bits so that the float32 result is exactly representable and strictly below 1.
  for (let i = 0; i < n; i++) out[i] = (next() >>> 8) / 16777216;
  return out;
}

/** `n` standard normal floats (Box-Muller). */
export function normalArray(r: Rng, n: number): Float32Array {
  const next = stream(r);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = ((next() >>> 8) + 1) / 16777217; // (0, 1]: log is finite
    const u2 = (next() >>> 8) / 16777216;
    const radius = Math.sqrt(-2 * Math.log(u1));
    out[i] = radius * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = radius * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** `n` integers uniform in [lo, hi). */
export function randint(r: Rng, n: number, lo: number, hi: number): Int32Array {
  if (!(hi > lo)) throw new Error(`randint needs hi > lo, got [${lo}, ${hi})`);
  const next = stream(r);
  const span = hi - lo;
  const out = new Int32Array(n);
  // Multiply-shift maps a u32 to [0, span) with bias below span / 2^32 (negligible here).
  for (let i = 0; i < n; i++) out[i] = lo + Math.floor((next() / 4294967296) * span);
  return out;
}

/** A uniformly random permutation of 0..n-1 (Fisher-Yates). */
export function permutation(r: Rng, n: number): Int32Array {
  const next = stream(r);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor((next() / 4294967296) * (i + 1));
    const tmp = out[i];
    out[i] = out[j];
    out[j] = tmp;
  }
  return out;
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** A float32 tensor of standard normals. */
export function normal(r: Rng, shape: readonly number[]): tf.Tensor {
  return tf.tensor(normalArray(r, size(shape)), shape as number[], "float32");
}

/** A float32 tensor uniform in [lo, hi). */
export function uniform(r: Rng, shape: readonly number[], lo = 0, hi = 1): tf.Tensor {
  const u = uniformArray(r, size(shape));
  if (lo !== 0 || hi !== 1) { for (let i = 0; i < u.length; i++) u[i] = lo + (hi - lo) * u[i]; }
  return tf.tensor(u, shape as number[], "float32");
}
