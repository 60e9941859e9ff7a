// Element types of the safetensors format and their conversion to what tfjs holds: float32 for
// floats (F16 through a 65536-entry table, BF16 as the top half of a float32), int32 for integers.

/** Bytes per element of each dtype this module reads. */
export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
} as const;
export type Dtype = keyof typeof DTYPE_BYTES;

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error("dtype.ts assumes a little-endian host"); // typed-array views below
}

/** IEEE 754 half-precision bits to a number. */
export function half(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24; // subnormal
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

let HALF: Float32Array | undefined; // all 65536 halves, built on first use

/**
 * Little-endian bytes of `dtype` as float32 (floats) or int32 (integers; I64 wraps to 32 bits).
 * @param raw the tensor's bytes, in a buffer of their own (typed-array views need alignment)
 */
export function decodeElements(dtype: Dtype, raw: ArrayBuffer): Float32Array | Int32Array {
  switch (dtype) {
    case "F32":
      return new Float32Array(raw);
    case "F64":
      return Float32Array.from(new Float64Array(raw));
    case "F16": {
      HALF ??= Float32Array.from({ length: 65536 }, (_, i) => half(i));
      const u = new Uint16Array(raw);
      const out = new Float32Array(u.length);
      for (let i = 0; i < u.length; i++) out[i] = HALF[u[i]];
      return out;
    }
    case "BF16": {
      const u = new Uint16Array(raw);
      const w = new Uint32Array(u.length);
      for (let i = 0; i < u.length; i++) w[i] = u[i] << 16; // bf16 = top half of a float32
      return new Float32Array(w.buffer);
    }
    case "I32":
      return new Int32Array(raw);
    case "I64":
      return Int32Array.from(new BigInt64Array(raw), (v) => Number(BigInt.asIntN(32, v)));
    case "I16":
      return Int32Array.from(new Int16Array(raw));
    case "I8":
      return Int32Array.from(new Int8Array(raw));
    case "U8":
    case "BOOL":
      return Int32Array.from(new Uint8Array(raw));
  }
}
