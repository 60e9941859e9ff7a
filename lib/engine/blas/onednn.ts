// oneDNN (Debian libdnnl2, v2.x C API) convolutions through Deno FFI, on the wasm heap in place.
// Activations stay NHWC (described to oneDNN by strides, no tag enums needed); weights go
// through a reorder into the blocked layout oneDNN picks ("any"), which lets it use its direct
// AVX-512 kernels (brgconv / jit:avx512_core): 1.3–2.7× faster than im2col + sgemm per pass on
// the U-Net's 3×3 convs here, single-threaded. Weights are small, so the reorders are cheap.
// Loading never throws: no library, no FFI permission or DP_ONEDNN=0 yields undefined, and any
// geometry oneDNN refuses returns false so the caller takes the sgemm route.
import type { ConvGeometry } from "./conv.ts";

/** Environment variable that turns the oneDNN convolutions off when set to `0`. */
export const ONEDNN_ENV = "DP_ONEDNN";
/** Environment variable with oneDNN's (OpenMP) thread count; default: DP_BLAS_THREADS, else all. */
export const ONEDNN_THREADS_ENV = "DP_ONEDNN_THREADS";

const CANDIDATES = [
  "/usr/lib/x86_64-linux-gnu/libdnnl.so.2",
  "libdnnl.so.2",
];

const SYMBOLS = {
  dnnl_engine_create: { parameters: ["buffer", "i32", "usize"], result: "i32" },
  dnnl_stream_create: { parameters: ["buffer", "pointer", "u32"], result: "i32" },
  dnnl_stream_wait: { parameters: ["pointer"], result: "i32" },
  dnnl_memory_desc_init_by_strides: {
    parameters: ["buffer", "i32", "buffer", "i32", "buffer"],
    result: "i32",
  },
  dnnl_memory_desc_init_by_tag: {
    parameters: ["buffer", "i32", "buffer", "i32", "i32"],
    result: "i32",
  },
  dnnl_memory_desc_get_size: { parameters: ["pointer"], result: "usize" },
  dnnl_convolution_forward_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_dilated_convolution_forward_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_dilated_convolution_backward_data_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_dilated_convolution_backward_weights_desc_init: {
    parameters: [
      "buffer",
      "i32",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
      "buffer",
    ],
    result: "i32",
  },
  dnnl_primitive_desc_create: {
    parameters: ["buffer", "buffer", "pointer", "pointer", "pointer"],
    result: "i32",
  },
  dnnl_primitive_desc_query_md: { parameters: ["pointer", "i32", "i32"], result: "pointer" },
  dnnl_reorder_primitive_desc_create: {
    parameters: ["buffer", "pointer", "pointer", "pointer", "pointer", "pointer"],
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
  dnnl_primitive_create: { parameters: ["buffer", "pointer"], result: "i32" },
  dnnl_primitive_execute: { parameters: ["pointer", "pointer", "i32", "buffer"], result: "i32" },
  dnnl_memory_create: { parameters: ["buffer", "pointer", "pointer", "pointer"], result: "i32" },
  dnnl_memory_destroy: { parameters: ["pointer"], result: "i32" },
} as const;

// dnnl_types.h (v2.x) constants.
const CPU = 1;
const STREAM_IN_ORDER = 1;
const F32 = 3;
const TAG_ANY = 1;
const FORWARD_TRAINING = 64;
const CONV_DIRECT = 1;
const ELTWISE_SWISH = 0xdf; // v2.x numbering (v3 renumbered the eltwise kinds)
const QUERY_WEIGHTS_MD = 131;
const QUERY_DIFF_WEIGHTS_MD = 132;
const ARG_SRC = 1;
const ARG_DST = 17;
const ARG_WEIGHTS = 33;
const ARG_BIAS = 41;
const ARG_DIFF_SRC = 129;
const ARG_DIFF_DST = 145;
const ARG_DIFF_WEIGHTS = 161;
// Memory and op descriptors are filled in by the library; these sizes leave room to spare
// (v2.x: ~1 KiB per memory descriptor, ~8 KiB per convolution descriptor).
const MD_BYTES = 4096;
const OP_BYTES = 65536;

/** oneDNN convolutions on NHWC float32 views; each returns false where oneDNN declines. */
export interface OneDnn {
  readonly path: string;
  /** y ← conv(x, w) (+ bias when given). */
  convForward(
    g: ConvGeometry,
    x: Float32Array,
    w: Float32Array,
    bias: Float32Array | undefined,
    y: Float32Array,
  ): boolean;
  /** dx ← ∂conv/∂x applied to dy. */
  convBackpropInput(g: ConvGeometry, dy: Float32Array, w: Float32Array, dx: Float32Array): boolean;
  /** dw ← ∂conv/∂w applied to dy. */
  convBackpropFilter(g: ConvGeometry, x: Float32Array, dy: Float32Array, dw: Float32Array): boolean;
  /** y ← x·σ(x) (SiLU), single-threaded (memory-bound; no thread hand-off). */
  swish(x: Float32Array, y: Float32Array): boolean;
  /** dx ← dy·d(x·σ(x))/dx, single-threaded. */
  swishBackward(x: Float32Array, dy: Float32Array, dx: Float32Array): boolean;
}

type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
type Ptr = Deno.PointerValue;

const i64 = (xs: readonly number[]) => BigInt64Array.from(xs.map((v) => BigInt(v)));

/** A primitive with the weights layout it wants and the reorders to and from the user's HWIO. */
interface Conv {
  readonly prim: Ptr;
  /** The blocked weights (or diff weights) buffer, kept alive with its memory object's handle. */
  readonly wBuf: Float32Array;
  readonly wMd: Ptr;
  readonly reorder: Ptr;
}

function processEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

function ffiGranted(path: string): boolean {
  try {
    const query = path.includes("/") ? { name: "ffi" as const, path } : { name: "ffi" as const };
    return Deno.permissions.querySync(query).state === "granted";
  } catch {
    return false;
  }
}

function bind(
  lib: Lib,
  path: string,
  threads: (n: number) => void,
  nThreads: number,
): OneDnn | undefined {
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
  const anyMd = (dims: readonly number[]): Uint8Array => {
    const b = new Uint8Array(MD_BYTES);
    lib.dnnl_memory_desc_init_by_tag(b, dims.length, i64(dims), F32, TAG_ANY);
    return b;
  };
  const primitive = (desc: Uint8Array, hint: Ptr): { pd: Ptr; prim: Ptr } | undefined => {
    const pd = out();
    if (lib.dnnl_primitive_desc_create(pd, desc, null, engine, hint) !== 0) return undefined;
    const p = out();
    if (lib.dnnl_primitive_create(p, ptrOf(pd)) !== 0) return undefined;
    return { pd: ptrOf(pd), prim: ptrOf(p) };
  };
  const reorder = (from: Ptr, to: Ptr): Ptr | undefined => {
    const pd = out();
    if (lib.dnnl_reorder_primitive_desc_create(pd, from, engine, to, engine, null) !== 0) {
      return undefined;
    }
    const p = out();
    return lib.dnnl_primitive_create(p, ptrOf(pd)) === 0 ? ptrOf(p) : undefined;
  };
  const memory = (m: Ptr | Uint8Array, data: Float32Array): Ptr => {
    const b = out();
    const desc = m instanceof Uint8Array ? Deno.UnsafePointer.of(m) : m;
    const r = lib.dnnl_memory_create(b, desc, engine, Deno.UnsafePointer.of(data));
    if (r !== 0) throw new Error(`dnnl_memory_create failed (${r}) in lib/engine/blas/onednn.ts`);
    return ptrOf(b);
  };
  const exec = (prim: Ptr, args: [number, Ptr][]): void => {
    const a = new BigUint64Array(args.length * 2);
    args.forEach(([id, m], i) => {
      a[2 * i] = BigInt(id);
      a[2 * i + 1] = BigInt(Deno.UnsafePointer.value(m));
    });
    const r = lib.dnnl_primitive_execute(prim, stream, args.length, new Uint8Array(a.buffer));
    if (r !== 0) {
      throw new Error(`dnnl_primitive_execute failed (${r}) in lib/engine/blas/onednn.ts`);
    }
    lib.dnnl_stream_wait(stream);
  };
  /** Run `prim` with memories over `views`, freed afterwards. */
  const run = (prim: Ptr, views: [number, Ptr | Uint8Array, Float32Array][]): void => {
    const mems = views.map(([id, m, v]) => [id, memory(m, v)] as [number, Ptr]);
    try {
      exec(prim, mems);
    } finally {
      for (const [, m] of mems) lib.dnnl_memory_destroy(m);
    }
  };

  interface Plan {
    readonly x: Uint8Array;
    readonly y: Uint8Array;
    readonly wUser: Uint8Array;
    readonly bias: Uint8Array;
    readonly desc: Uint8Array;
    readonly fwdHint: { pd: Ptr; prim: Ptr };
    fwd?: Conv | null;
    fwdBias?: Conv | null;
    bwdData?: Conv | null;
    bwdWeights?: Conv | null;
  }
  const plans = new Map<string, Plan | null>();
  const params = (g: ConvGeometry) => {
    const pb = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1 - g.h - g.pt;
    const pr = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1 - g.w - g.pl;
    return {
      strides: i64([g.sh, g.sw]),
      dil: i64([g.dh - 1, g.dw - 1]),
      padL: i64([g.pt, g.pl]),
      padR: i64([pb, pr]),
      ok: pb >= 0 && pr >= 0,
    };
  };
  const forwardDesc = (p: Plan, g: ConvGeometry, w: Uint8Array, bias: boolean) => {
    const q = params(g);
    const d = new Uint8Array(OP_BYTES);
    const r = lib.dnnl_dilated_convolution_forward_desc_init(
      d,
      FORWARD_TRAINING,
      CONV_DIRECT,
      p.x,
      w,
      bias ? p.bias : null as never,
      p.y,
      q.strides,
      q.dil,
      q.padL,
      q.padR,
    );
    return r === 0 ? d : undefined;
  };
  const planOf = (g: ConvGeometry): Plan | undefined => {
    const key = JSON.stringify(g);
    const cached = plans.get(key);
    if (cached !== undefined) return cached ?? undefined;
    const build = (): Plan | undefined => {
      if (!params(g).ok) return undefined;
      const { n, h, w, c, oh, ow, o, kh, kw } = g;
      const x = md([n, c, h, w], [h * w * c, 1, w * c, c]);
      const y = md([n, o, oh, ow], [oh * ow * o, 1, ow * o, o]);
      // HWIO [kh, kw, c, o] as oneDNN's logical (o, i, kh, kw).
      const wUser = md([o, c, kh, kw], [1, o, kw * c * o, c * o]);
      const bias = md([o], [1]);
      if (!x || !y || !wUser || !bias) return undefined;
      const partial = { x, y, wUser, bias } as Plan;
      const desc = forwardDesc(partial, g, anyMd([o, c, kh, kw]), true);
      if (!desc) return undefined;
      const fwdHint = primitive(desc, null);
      if (!fwdHint) return undefined;
      return { x, y, wUser, bias, desc, fwdHint };
    };
    const plan = build();
    plans.set(key, plan ?? null);
    return plan;
  };
  /** The blocked weights of `pd` (query `q`) and the reorder from (or to) the user layout. */
  const withWeights = (
    made: { pd: Ptr; prim: Ptr },
    q: number,
    user: Uint8Array,
    toUser: boolean,
  ): Conv | null => {
    const wMd = lib.dnnl_primitive_desc_query_md(made.pd, q, 0);
    if (!wMd) return null;
    const size = Number(lib.dnnl_memory_desc_get_size(wMd));
    const userPtr = Deno.UnsafePointer.of(user);
    const r = toUser ? reorder(wMd, userPtr) : reorder(userPtr, wMd);
    if (!r) return null;
    return { prim: made.prim, wBuf: new Float32Array(Math.ceil(size / 4) + 16), wMd, reorder: r };
  };

  // Elementwise SiLU per length (a 1-D f32 memory of n elements).
  interface Elt {
    readonly md: Uint8Array;
    readonly fwd: { pd: Ptr; prim: Ptr };
    bwd?: Ptr | null;
  }
  const elts = new Map<number, Elt | null>();
  const eltOf = (n: number): Elt | undefined => {
    const known = elts.get(n);
    if (known !== undefined) return known ?? undefined;
    const m = md([n], [1]);
    const d = new Uint8Array(OP_BYTES);
    const ok = m &&
      lib.dnnl_eltwise_forward_desc_init(d, FORWARD_TRAINING, ELTWISE_SWISH, m, 1, 0) === 0;
    const fwd = ok ? primitive(d, null) : undefined;
    const e = m && fwd ? { md: m, fwd } : undefined;
    elts.set(n, e ?? null);
    return e;
  };
  const single = (f: () => void): void => {
    if (nThreads === 1) return f();
    threads(1);
    try {
      f();
    } finally {
      threads(nThreads);
    }
  };

  return {
    path,
    swish(x, y) {
      const e = x.length > 0 ? eltOf(x.length) : undefined;
      if (!e) return false;
      single(() => run(e.fwd.prim, [[ARG_SRC, e.md, x], [ARG_DST, e.md, y]]));
      return true;
    },
    swishBackward(x, dy, dx) {
      const e = x.length > 0 ? eltOf(x.length) : undefined;
      if (!e) return false;
      if (e.bwd === undefined) {
        const d = new Uint8Array(OP_BYTES);
        const r = lib.dnnl_eltwise_backward_desc_init(d, ELTWISE_SWISH, e.md, e.md, 1, 0);
        e.bwd = r === 0 ? primitive(d, e.fwd.pd)?.prim ?? null : null;
      }
      const bwd = e.bwd;
      if (!bwd) return false;
      single(() =>
        run(bwd, [[ARG_SRC, e.md, x], [ARG_DIFF_DST, e.md, dy], [ARG_DIFF_SRC, e.md, dx]])
      );
      return true;
    },
    convForward(g, x, w, bias, y) {
      const p = planOf(g);
      if (!p) return false;
      const slot = bias ? "fwdBias" : "fwd";
      if (p[slot] === undefined) {
        const desc = bias ? p.desc : forwardDesc(p, g, anyMd([g.o, g.c, g.kh, g.kw]), false);
        const made = bias ? p.fwdHint : desc && primitive(desc, null);
        p[slot] = made ? withWeights(made, QUERY_WEIGHTS_MD, p.wUser, false) : null;
      }
      const conv = p[slot];
      if (!conv) return false;
      run(conv.reorder, [[ARG_SRC, p.wUser, w], [ARG_DST, conv.wMd, conv.wBuf]]);
      const args: [number, Ptr | Uint8Array, Float32Array][] = [
        [ARG_SRC, p.x, x],
        [ARG_WEIGHTS, conv.wMd, conv.wBuf],
        [ARG_DST, p.y, y],
      ];
      if (bias) args.push([ARG_BIAS, p.bias, bias]);
      run(conv.prim, args);
      return true;
    },
    convBackpropInput(g, dy, w, dx) {
      const p = planOf(g);
      if (!p) return false;
      if (p.bwdData === undefined) {
        const q = params(g);
        const d = new Uint8Array(OP_BYTES);
        const r = lib.dnnl_dilated_convolution_backward_data_desc_init(
          d,
          CONV_DIRECT,
          p.x,
          anyMd([g.o, g.c, g.kh, g.kw]),
          p.y,
          q.strides,
          q.dil,
          q.padL,
          q.padR,
        );
        const made = r === 0 ? primitive(d, p.fwdHint.pd) : undefined;
        p.bwdData = made ? withWeights(made, QUERY_WEIGHTS_MD, p.wUser, false) : null;
      }
      const conv = p.bwdData;
      if (!conv) return false;
      run(conv.reorder, [[ARG_SRC, p.wUser, w], [ARG_DST, conv.wMd, conv.wBuf]]);
      run(conv.prim, [
        [ARG_DIFF_SRC, p.x, dx],
        [ARG_WEIGHTS, conv.wMd, conv.wBuf],
        [ARG_DIFF_DST, p.y, dy],
      ]);
      return true;
    },
    convBackpropFilter(g, x, dy, dw) {
      const p = planOf(g);
      if (!p) return false;
      if (p.bwdWeights === undefined) {
        const q = params(g);
        const d = new Uint8Array(OP_BYTES);
        const r = lib.dnnl_dilated_convolution_backward_weights_desc_init(
          d,
          CONV_DIRECT,
          p.x,
          anyMd([g.o, g.c, g.kh, g.kw]),
          null as never,
          p.y,
          q.strides,
          q.dil,
          q.padL,
          q.padR,
        );
        const made = r === 0 ? primitive(d, p.fwdHint.pd) : undefined;
        p.bwdWeights = made ? withWeights(made, QUERY_DIFF_WEIGHTS_MD, p.wUser, true) : null;
      }
      const conv = p.bwdWeights;
      if (!conv) return false;
      run(conv.prim, [
        [ARG_SRC, p.x, x],
        [ARG_DIFF_WEIGHTS, conv.wMd, conv.wBuf],
        [ARG_DIFF_DST, p.y, dy],
      ]);
      run(conv.reorder, [[ARG_SRC, conv.wMd, conv.wBuf], [ARG_DST, p.wUser, dw]]);
      return true;
    },
  };
}

function threadCount(env: (name: string) => string | undefined): number {
  for (const name of [ONEDNN_THREADS_ENV, "DP_BLAS_THREADS"]) {
    const asked = Number(env(name));
    if (Number.isInteger(asked) && asked > 0) return asked;
  }
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

// OpenMP threads spin between parallel regions by default; on a 2-core machine shared with
// OpenBLAS's pool (and often another job) that spinning steals the cores (a train step ran 1.8×
// slower). libgomp reads the policy once, when it loads: set it around the dlopen only, so
// child processes (the PyTorch peer of the benches) do not inherit it. Returns the undo.
function passiveOpenMp(env: (name: string) => string | undefined): () => void {
  if (env("OMP_WAIT_POLICY") !== undefined) return () => {};
  try {
    Deno.env.set("OMP_WAIT_POLICY", "passive");
    return () => Deno.env.delete("OMP_WAIT_POLICY");
  } catch {
    return () => {}; // no env permission: keep libgomp's default
  }
}

// omp_set_num_threads on the libgomp oneDNN links (the loader shares one instance per process);
// a no-op where libgomp cannot be opened.
function openMpThreadSetter(): (n: number) => void {
  for (const path of ["libgomp.so.1", "/lib/x86_64-linux-gnu/libgomp.so.1"]) {
    if (!ffiGranted(path)) continue;
    try {
      const gomp = Deno.dlopen(path, {
        omp_set_num_threads: { parameters: ["i32"], result: "void" },
      });
      return (n) => gomp.symbols.omp_set_num_threads(n);
    } catch { /* try the next one */ }
  }
  return () => {};
}

let cached: OneDnn | null | undefined;

/**
 * Open oneDNN (uncached: a new engine and stream per call); undefined when DP_ONEDNN=0, without
 * FFI permission for it, or when the library does not load. `env` reads configuration.
 */
export function openOneDnn(
  env: (name: string) => string | undefined = processEnv,
): OneDnn | undefined {
  if (env(ONEDNN_ENV) === "0") return undefined;
  let dnn: OneDnn | undefined;
  const undo = passiveOpenMp(env);
  try {
    for (const path of CANDIDATES) {
      if (!ffiGranted(path)) continue;
      try {
        const lib = Deno.dlopen(path, SYMBOLS).symbols;
        const setThreads = openMpThreadSetter(), n = threadCount(env);
        dnn = bind(lib, path, setThreads, n);
        if (dnn) {
          setThreads(n);
          break;
        }
      } catch { /* try the next one */ }
    }
  } finally {
    undo();
  }
  return dnn;
}

/** `openOneDnn()` once per process (oneDNN's primitive cache and thread pool are per process). */
export function loadOneDnn(): OneDnn | undefined {
  if (cached === undefined) cached = openOneDnn() ?? null;
  return cached ?? undefined;
}

let enabled = true;

/** Turn the oneDNN routes on or off (for comparisons); returns whether oneDNN is available. */
export function setOneDnnEnabled(on: boolean): boolean {
  enabled = on;
  return loadOneDnn() !== undefined;
}

/** The loaded oneDNN while its routes are on, else undefined. */
export function activeOneDnn(): OneDnn | undefined {
  return enabled ? loadOneDnn() : undefined;
}
