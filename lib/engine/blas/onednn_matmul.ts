// oneDNN's batched matmul primitive and its tanh-GELU eltwise (Debian libdnnl2, v2.x C API)
// through Deno FFI, on wasm-heap views in place. The batched matmul covers every head and image
// of an attention product in one call (oneDNN splits the batch over its threads), where a loop of
// small cblas_sgemm calls runs each 196×196×32 product on both threads and mostly waits.
// Loading goes through ./onednn.ts first (OpenMP wait policy, thread count, DP_ONEDNN=0); any
// geometry oneDNN refuses returns false so the caller keeps its own route.
import { activeOneDnn, loadOneDnn } from "./onednn.ts";

const PATH = "/usr/lib/x86_64-linux-gnu/libdnnl.so.2";

const SYMBOLS = {
  dnnl_engine_create: { parameters: ["buffer", "i32", "usize"], result: "i32" },
  dnnl_stream_create: { parameters: ["buffer", "pointer", "u32"], result: "i32" },
  dnnl_stream_wait: { parameters: ["pointer"], result: "i32" },
  dnnl_memory_desc_init_by_strides: {
    parameters: ["buffer", "i32", "buffer", "i32", "buffer"],
    result: "i32",
  },
  dnnl_matmul_desc_init: {
    parameters: ["buffer", "buffer", "buffer", "pointer", "buffer"],
    result: "i32",
  },
  dnnl_eltwise_forward_desc_init: {
    parameters: ["buffer", "i32", "i32", "buffer", "f32", "f32"],
    result: "i32",
  },
  dnnl_eltwise_backward_desc_init: {
    parameters: ["buffer", "i32", "buffer", "buffer", "f32", "f32"],
    result: "i32",
  },
  dnnl_primitive_desc_create: {
    parameters: ["buffer", "buffer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_create: { parameters: ["buffer", "pointer"], result: "i32" },
  dnnl_primitive_execute: { parameters: ["pointer", "pointer", "i32", "buffer"], result: "i32" },
  dnnl_memory_create: { parameters: ["buffer", "buffer", "pointer", "pointer"], result: "i32" },
  dnnl_memory_destroy: { parameters: ["pointer"], result: "i32" },
} as const;

// dnnl_types.h (v2.x).
const CPU = 1;
const STREAM_IN_ORDER = 1;
const F32 = 3;
const FORWARD_TRAINING = 64;
const ELTWISE_GELU_TANH = 0xcf;
const ARG_SRC = 1;
const ARG_DST = 17;
const ARG_WEIGHTS = 33;
const ARG_DIFF_SRC = 129;
const ARG_DIFF_DST = 145;
const MD_BYTES = 4096;
const OP_BYTES = 65536;

/** Batched products and tanh-GELU on float32 views; each returns false where oneDNN declines. */
export interface OneDnnMatMul {
  /**
   * out[b] ← op(A[b])·op(B[b]) for b < batch, A and B [batch or 1, ·, ·] (1: shared by every
   * batch), row-major, contiguous; out [batch, m, n].
   */
  matmul(
    batch: number,
    aBatched: boolean,
    bBatched: boolean,
    m: number,
    n: number,
    k: number,
    transposeA: boolean,
    transposeB: boolean,
    a: Float32Array,
    b: Float32Array,
    out: Float32Array,
  ): boolean;
  /** y ← x·½(1 + tanh(√(2/π)(x + 0.044715x³))). */
  gelu(x: Float32Array, y: Float32Array): boolean;
  /** dx ← dy·GELU′(x), the same tanh form. */
  geluBackward(x: Float32Array, dy: Float32Array, dx: Float32Array): boolean;
}

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
type Ptr = Deno.PointerValue;

const i64 = (xs: readonly number[]) => BigInt64Array.from(xs.map((v) => BigInt(v)));

function bind(lib: Lib): OneDnnMatMul | undefined {
  const out = () => new BigUint64Array(1);
  const ptrOf = (b: BigUint64Array): Ptr => Deno.UnsafePointer.create(b[0]);
  const eng = out();
  if (lib.dnnl_engine_create(eng, CPU, 0n) !== 0) return undefined;
  const engine = ptrOf(eng);
  const st = out();
  if (lib.dnnl_stream_create(st, engine, STREAM_IN_ORDER) !== 0) return undefined;
  const stream = ptrOf(st);

  const md = (dims: readonly number[], strides: readonly number[]): Uint8Array | undefined => {
    const b = new Uint8Array(MD_BYTES);
    const r = lib.dnnl_memory_desc_init_by_strides(b, dims.length, i64(dims), F32, i64(strides));
    return r === 0 ? b : undefined;
  };
  const primitive = (desc: Uint8Array, hint: Ptr): { pd: Ptr; prim: Ptr } | undefined => {
    const pd = out();
    if (lib.dnnl_primitive_desc_create(pd, desc, null, engine, hint) !== 0) return undefined;
    const p = out();
    if (lib.dnnl_primitive_create(p, ptrOf(pd)) !== 0) return undefined;
    return { pd: ptrOf(pd), prim: ptrOf(p) };
  };
  const run = (prim: Ptr, views: [number, Uint8Array, Float32Array][]): void => {
    const mems: Ptr[] = [];
    try {
      for (const [, m, v] of views) {
        const b = out();
        const r = lib.dnnl_memory_create(b, m, engine, Deno.UnsafePointer.of(v));
        if (r !== 0) {
          throw new Error(`dnnl_memory_create failed (${r}) in lib/engine/blas/onednn_matmul.ts`);
        }
        mems.push(ptrOf(b));
      }
      const a = new BigUint64Array(views.length * 2);
      views.forEach(([id], i) => {
        a[2 * i] = BigInt(id);
        a[2 * i + 1] = BigInt(Deno.UnsafePointer.value(mems[i]));
      });
      const r = lib.dnnl_primitive_execute(prim, stream, views.length, new Uint8Array(a.buffer));
      if (r !== 0) {
        throw new Error(`dnnl_primitive_execute failed (${r}) in lib/engine/blas/onednn_matmul.ts`);
      }
      lib.dnnl_stream_wait(stream);
    } finally {
      for (const m of mems) lib.dnnl_memory_destroy(m);
    }
  };

  interface Mm {
    readonly a: Uint8Array;
    readonly b: Uint8Array;
    readonly c: Uint8Array;
    readonly prim: Ptr;
  }
  const mms = new Map<string, Mm | null>();
  const mmOf = (
    batch: number,
    ab: boolean,
    bb: boolean,
    m: number,
    n: number,
    k: number,
    ta: boolean,
    tb: boolean,
  ): Mm | undefined => {
    const key = `${batch},${ab},${bb},${m},${n},${k},${ta},${tb}`;
    const known = mms.get(key);
    if (known !== undefined) return known ?? undefined;
    const build = (): Mm | undefined => {
      const a = md([ab ? batch : 1, m, k], ta ? [m * k, 1, m] : [m * k, k, 1]);
      const b = md([bb ? batch : 1, k, n], tb ? [k * n, 1, k] : [k * n, n, 1]);
      const c = md([batch, m, n], [m * n, n, 1]);
      if (!a || !b || !c) return undefined;
      const d = new Uint8Array(OP_BYTES);
      if (lib.dnnl_matmul_desc_init(d, a, b, null, c) !== 0) return undefined;
      const made = primitive(d, null);
      return made ? { a, b, c, prim: made.prim } : undefined;
    };
    const mm = build();
    mms.set(key, mm ?? null);
    return mm;
  };

  interface Elt {
    readonly md: Uint8Array;
    readonly fwd: { pd: Ptr; prim: Ptr };
    bwd?: Ptr | null;
  }
  const elts = new Map<number, Elt | null>();
  const eltOf = (len: number): Elt | undefined => {
    const known = elts.get(len);
    if (known !== undefined) return known ?? undefined;
    const m = md([len], [1]);
    const d = new Uint8Array(OP_BYTES);
    const ok = m &&
      lib.dnnl_eltwise_forward_desc_init(d, FORWARD_TRAINING, ELTWISE_GELU_TANH, m, 0, 0) === 0;
    const fwd = ok ? primitive(d, null) : undefined;
    const e = m && fwd ? { md: m, fwd } : undefined;
    elts.set(len, e ?? null);
    return e;
  };

  return {
    matmul(batch, ab, bb, m, n, k, ta, tb, a, b, c) {
      if (batch < 1 || m < 1 || n < 1 || k < 1) return false;
      const mm = mmOf(batch, ab, bb, m, n, k, ta, tb);
      if (!mm) return false;
      run(mm.prim, [[ARG_SRC, mm.a, a], [ARG_WEIGHTS, mm.b, b], [ARG_DST, mm.c, c]]);
      return true;
    },
    gelu(x, y) {
      const e = x.length > 0 ? eltOf(x.length) : undefined;
      if (!e) return false;
      run(e.fwd.prim, [[ARG_SRC, e.md, x], [ARG_DST, e.md, y]]);
      return true;
    },
    geluBackward(x, dy, dx) {
      const e = x.length > 0 ? eltOf(x.length) : undefined;
      if (!e) return false;
      if (e.bwd === undefined) {
        const d = new Uint8Array(OP_BYTES);
        const r = lib.dnnl_eltwise_backward_desc_init(d, ELTWISE_GELU_TANH, e.md, e.md, 0, 0);
        e.bwd = r === 0 ? primitive(d, e.fwd.pd)?.prim ?? null : null;
      }
      const bwd = e.bwd;
      if (!bwd) return false;
      run(bwd, [[ARG_SRC, e.md, x], [ARG_DIFF_DST, e.md, dy], [ARG_DIFF_SRC, e.md, dx]]);
      return true;
    },
  };
}

let cached: OneDnnMatMul | null | undefined;

/** The oneDNN matmul and GELU, once per process; undefined where ./onednn.ts does not load. */
export function loadOneDnnMatMul(): OneDnnMatMul | undefined {
  if (cached !== undefined) return cached ?? undefined;
  cached = null;
  const base = loadOneDnn(); // sets libgomp's wait policy and thread count before anything runs
  if (base) {
    try {
      cached = bind(Deno.dlopen(base.path.includes("/") ? base.path : PATH, SYMBOLS).symbols) ??
        null;
    } catch {
      cached = null;
    }
  }
  return cached ?? undefined;
}

let enabled = true;

/** Turn the oneDNN matmul and GELU routes on or off (for comparisons); returns availability. */
export function setOneDnnMatMulEnabled(on: boolean): boolean {
  enabled = on;
  return loadOneDnnMatMul() !== undefined;
}

/** oneDNN's GELU while oneDNN's routes are on (independent of the matmul switch), else undefined. */
export function activeOneDnnEltwise(): OneDnnMatMul | undefined {
  return activeOneDnn() ? loadOneDnnMatMul() : undefined;
}

/** The loaded oneDNN matmul while its routes (and oneDNN's) are on, else undefined. */
export function activeOneDnnMatMul(): OneDnnMatMul | undefined {
  return enabled && activeOneDnn() ? loadOneDnnMatMul() : undefined;
}
