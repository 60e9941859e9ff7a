// oneDNN (Debian libdnnl2, v2.x C API) convolutions through Deno FFI, on the wasm heap in place.
// Activations stay NHWC (described to oneDNN by strides, no tag enums needed); weights go
// through a reorder into the blocked layout oneDNN picks ("any"), which lets it use its direct
// AVX-512 kernels (brgconv / jit:avx512_core): 1.3–2.7× faster than im2col + sgemm per pass on
// the U-Net's 3×3 convs here, single-threaded. Weights are small, so the reorders are cheap.
// Loading (./onednn_core.ts) never throws: no library, no FFI permission or DP_ONEDNN=0 yields
// undefined, and any geometry oneDNN refuses returns false so the caller takes the sgemm route.
import type { ConvGeometry } from "./conv.ts";
import {
  ARG_BIAS,
  ARG_DIFF_DST,
  ARG_DIFF_SRC,
  ARG_DIFF_WEIGHTS,
  ARG_DST,
  ARG_SRC,
  ARG_WEIGHTS,
  CONV_DIRECT,
  type Core,
  ELTWISE_SWISH,
  FORWARD_TRAINING,
  i64,
  loadOneDnnCore,
  type Made,
  OP_BYTES,
  openOneDnnCore,
  type Ptr,
  QUERY_DIFF_WEIGHTS_MD,
  QUERY_WEIGHTS_MD,
  type View,
} from "./onednn_core.ts";

export { ONEDNN_ENV, ONEDNN_LIB_ENV, ONEDNN_THREADS_ENV } from "./onednn_core.ts";

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

/** A primitive with the weights layout it wants and the reorders to and from the user's HWIO. */
interface Conv {
  readonly prim: Ptr;
  /** The blocked weights (or diff weights) buffer, kept alive with its memory object's handle. */
  readonly wBuf: Float32Array;
  readonly wMd: Ptr;
  readonly reorder: Ptr;
}

function bind(core: Core): OneDnn {
  const { lib, md, anyMd, primitive, reorder, run } = core;

  interface Plan {
    readonly x: Uint8Array;
    readonly y: Uint8Array;
    readonly wUser: Uint8Array;
    readonly bias: Uint8Array;
    readonly desc: Uint8Array;
    readonly fwdHint: Made;
    fwd?: Conv | null;
    fwdBias?: Conv | null;
    bwdData?: Conv | null;
    bwdWeights?: Conv | null;
  }
  const plans = new Map<string, Plan | null>();
  const params = (g: ConvGeometry) => {
    const pb = (g.oh - 1) * g.sh + (g.kh - 1) * g.dh + 1 - g.h - g.pt;
    const pr = (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1 - g.w - g.pl;
    // Strides, dilations (0 = none), left and right padding: the descriptors' trailing args.
    const geo = [
      i64([g.sh, g.sw]),
      i64([g.dh - 1, g.dw - 1]),
      i64([g.pt, g.pl]),
      i64([pb, pr]),
    ] as const;
    return { geo, ok: pb >= 0 && pr >= 0 };
  };
  const forwardDesc = (p: Plan, g: ConvGeometry, w: Uint8Array, bias: boolean) => {
    const d = new Uint8Array(OP_BYTES);
    const b = bias ? p.bias : null as never;
    const r = lib.dnnl_dilated_convolution_forward_desc_init(
      d,
      FORWARD_TRAINING,
      CONV_DIRECT,
      p.x,
      w,
      b,
      p.y,
      ...params(g).geo,
    );
    return r === 0 ? d : undefined;
  };
  /** The backward-data (or backward-weights) primitive of `g`, hinted by the forward one. */
  const backward = (g: ConvGeometry, p: Plan, weights: boolean): Made | undefined => {
    const d = new Uint8Array(OP_BYTES);
    const w = anyMd([g.o, g.c, g.kh, g.kw]), geo = params(g).geo;
    const r = weights
      ? lib.dnnl_dilated_convolution_backward_weights_desc_init(
        d,
        CONV_DIRECT,
        p.x,
        w,
        null as never,
        p.y,
        ...geo,
      )
      : lib.dnnl_dilated_convolution_backward_data_desc_init(d, CONV_DIRECT, p.x, w, p.y, ...geo);
    return r === 0 ? primitive(d, p.fwdHint.pd) : undefined;
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
  const withWeights = (made: Made, q: number, user: Uint8Array, toUser: boolean): Conv | null => {
    const wMd = lib.dnnl_primitive_desc_query_md(made.pd, q, 0);
    if (!wMd) return null;
    const size = Number(lib.dnnl_memory_desc_get_size(wMd));
    const userPtr = Deno.UnsafePointer.of(user);
    const r = toUser ? reorder(wMd, userPtr) : reorder(userPtr, wMd);
    if (!r) return null;
    return { prim: made.prim, wBuf: new Float32Array(Math.ceil(size / 4) + 16), wMd, reorder: r };
  };
  // SiLU is swish with β = 1.
  const silu = core.eltwise(ELTWISE_SWISH, 1, true);

  return {
    path: core.path,
    swish: (x, y) => silu.forward(x, y),
    swishBackward: (x, dy, dx) => silu.backward(x, dy, dx),
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
      const args: View[] = [
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
        const made = backward(g, p, false);
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
        const made = backward(g, p, true);
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

let cached: OneDnn | null | undefined;

/**
 * Open oneDNN (uncached: a new engine and stream per call); undefined when DP_ONEDNN=0, without
 * FFI permission for it, or when the library does not load. `env` reads configuration.
 */
export function openOneDnn(env?: (name: string) => string | undefined): OneDnn | undefined {
  const core = openOneDnnCore(env);
  return core && bind(core);
}

/** oneDNN's convolutions once per process, on the shared core (./onednn_core.ts). */
export function loadOneDnn(): OneDnn | undefined {
  if (cached === undefined) {
    const core = loadOneDnnCore();
    cached = core ? bind(core) : null;
  }
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
