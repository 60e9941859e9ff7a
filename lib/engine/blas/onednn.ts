// oneDNN (Debian libdnnl2, v2.x C API) convolutions through Deno FFI, on the wasm heap in place.
// Activations stay NHWC (described to oneDNN by strides, no tag enums needed); weights go
// through a reorder into the blocked layout oneDNN picks ("any"), which lets it use its direct
// AVX-512 kernels (brgconv / jit:avx512_core): 1.3–2.7× faster than im2col + sgemm per pass on
// the U-Net's 3×3 convs here, single-threaded. Weights are small, so the reorders are cheap.
// In bf16 (./precision.ts) the same primitives read bf16 activations, weights and incoming
// gradients (rounded into scratch per call) and write f32 outputs and weight gradients.
// In fp32, wide 3×3 stride-1 convolutions run on oneDNN's Winograd F(4×4, 3×3) kernels instead,
// each pass where it pays (see `winogradWorth`); DP_ONEDNN_WINOGRAD=0 keeps them direct. Their
// buffers must be 64-byte aligned (./heap.ts `alignedF32`).
// Loading (./onednn_core.ts) never throws: no library, no FFI permission or DP_ONEDNN=0 yields
// undefined, and any geometry oneDNN refuses returns false so the caller takes the sgemm route.
import type { ConvGeometry } from "./conv.ts";
import { alignedF32, makeScratch } from "./heap.ts";
import { processEnv } from "./openblas.ts";
import { precision } from "./precision.ts";
import {
  ARG_BIAS,
  ARG_DIFF_DST,
  ARG_DIFF_SRC,
  ARG_DIFF_WEIGHTS,
  ARG_DST,
  ARG_SRC,
  ARG_WEIGHTS,
  BF16,
  CONV_DIRECT,
  CONV_WINOGRAD,
  type Core,
  type CpuIsa,
  ELTWISE_SWISH,
  F32,
  FORWARD_INFERENCE,
  FORWARD_TRAINING,
  i64,
  loadOneDnnCore,
  type Made,
  OP_BYTES,
  openOneDnnCore,
  type Ptr,
  QUERY_DIFF_DST_MD,
  QUERY_DIFF_SRC_MD,
  QUERY_DIFF_WEIGHTS_MD,
  QUERY_DST_MD,
  QUERY_SRC_MD,
  QUERY_WEIGHTS_MD,
  type View,
} from "./onednn_core.ts";

export { ONEDNN_ENV, ONEDNN_LIB_ENV, ONEDNN_THREADS_ENV } from "./onednn_core.ts";

/** Environment variable: `0` keeps every convolution direct, `1` (the default) is "auto". */
export const WINOGRAD_ENV = "DP_ONEDNN_WINOGRAD";

const winogradModeOf = (env: (name: string) => string | undefined): WinogradMode =>
  env(WINOGRAD_ENV) === "0" ? "off" : "auto";

/**
 * When fp32 convolutions take oneDNN's Winograd F(4×4, 3×3) kernels (jit_wino_4x3, AVX-512
 * only; elsewhere oneDNN declines and the direct kernels run): "auto" where `winogradWorth`,
 * "always" wherever they fit (`winogradFits`; for benches and tests), "off" never.
 */
export type WinogradMode = "auto" | "always" | "off";

/** The Winograd kernels' shape rule: 3×3, stride 1, no dilation, channels in and out in 16s. */
export function winogradFits(g: ConvGeometry): boolean {
  return g.kh === 3 && g.kw === 3 && g.sh === 1 && g.sw === 1 && g.dh === 1 && g.dw === 1 &&
    g.c % 16 === 0 && g.o % 16 === 0;
}

/**
 * The passes of a convolution: forward (for training), forward for inference (no tape records:
 * oneDNN's inference form, its Winograd weights transformed once), input gradient, weight
 * gradient.
 */
export type ConvPass = "forward" | "inference" | "backward-data" | "backward-weights";

/**
 * Whether Winograd pays for pass `pass` of `g`, reorders of the activations to and from its
 * blocked layout included (`deno task bench --suite blas` times each small-U-Net shape both
 * ways). Forward and backward-data: from 64 input channels they ran 1.05–1.2× and 1.2–1.6×
 * faster at the small U-Net's batch-64 shapes, and 2–2.4× at adm256's width; from 32 channels
 * they gained nothing (or lost: the transforms cost what the products save). Below about 256
 * output tiles of 4×4 per call the per-call weight transform costs more than it saves.
 * Backward-weights, which transforms both activations per call, needs 64 channels on both sides:
 * in two runs at batch 64 it ran 1.03–1.10× faster with 128→64, 1.13–1.54× with 128→128 and
 * 256→128, 1.3× with 64→64 at 28×28 (0.95–1.09× at 14×14) and 1.9–2× at adm256's width, but
 * 0.89–0.92× with 32→32 and 1.02–1.05× with 64→32.
 * (That pass once crashed the process at batches 1–32: its kernels write with aligned
 * non-temporal stores, and the buffers handed to it were not yet 64-byte aligned.)
 * The inference form (weights kept transformed), timed per call against the direct kernels in
 * one process at batch 64 (tmp scripts, two runs): 1.1–1.5× faster from 64 channels on both
 * sides, 1.1–1.4× with 32 on one side and 64 on the other (14×14 32→64 1.32 → 1.17 ms, 28×28
 * 32→64 5.0 → 3.7, 64→32 4.9 → 4.2, 7×7 32→64 0.33 → 0.30), 1.15× with 32→32 at 28×28
 * (2.62 → 2.27; also at batches 6–16) but 0.8–0.9× at 12×12 and 14×14 and even at 8×8, 16×16
 * and 32×32; with 16 channels on a side 0.75×. So there: 32 channels or more on both sides,
 * and 64 on one of them or a map of 28×28 or more.
 */
export function winogradWorth(g: ConvGeometry, pass: ConvPass = "forward"): boolean {
  const tiles = g.n * Math.ceil(g.oh / 4) * Math.ceil(g.ow / 4);
  if (!winogradFits(g) || tiles < 256) return false;
  if (pass === "inference") {
    return Math.min(g.c, g.o) >= 32 && (Math.max(g.c, g.o) >= 64 || g.oh * g.ow >= 28 * 28);
  }
  return g.c >= 64 && (pass !== "backward-weights" || g.o >= 64);
}

/** oneDNN convolutions on NHWC float32 views; each returns false where oneDNN declines. */
export interface OneDnn {
  readonly path: string;
  /** The CPU's vector ISA as oneDNN detected it. */
  readonly isa: CpuIsa;
  /**
   * y ← conv(x, w) (+ bias when given). `wKey`, when given, names w's contents for good (a
   * tensor's dataId: tfjs never writes into a tensor's data): weights met a second time under
   * the same key keep their blocked copy (`weightCache`), so a frozen model's are reordered once.
   * `inference`: no gradient will flow back through this call (no tape is recording), so the
   * Winograd kernels may take their inference form, whose weights are kept already transformed.
   */
  convForward(
    g: ConvGeometry,
    x: Float32Array,
    w: Float32Array,
    bias: Float32Array | undefined,
    y: Float32Array,
    wKey?: object,
    inference?: boolean,
  ): boolean;
  /** dx ← ∂conv/∂x applied to dy. */
  convBackpropInput(g: ConvGeometry, dy: Float32Array, w: Float32Array, dx: Float32Array): boolean;
  /** dw ← ∂conv/∂w applied to dy. */
  convBackpropFilter(g: ConvGeometry, x: Float32Array, dy: Float32Array, dw: Float32Array): boolean;
  /** y ← x·σ(x) (SiLU), single-threaded (memory-bound; no thread hand-off). */
  swish(x: Float32Array, y: Float32Array): boolean;
  /** dx ← dy·d(x·σ(x))/dx, single-threaded. */
  swishBackward(x: Float32Array, dy: Float32Array, dx: Float32Array): boolean;
  /** When fp32 convolutions take the Winograd kernels. */
  winograd: WinogradMode;
  /** Blocked forward weights kept by `convForward`'s keys: bytes held, and reorders skipped. */
  readonly weightCache: { readonly bytes: number; readonly hits: number };
  /** Convolution passes that ran on the Winograd kernels so far (any of the three). */
  readonly winogradCalls: number;
}

/** A primitive with the weights layout it wants and the reorders to and from the user's HWIO. */
interface Conv {
  readonly prim: Ptr;
  /** The blocked weights (or diff weights) buffer, kept alive with its memory object's handle. */
  readonly wBuf: Float32Array;
  readonly wMd: Ptr;
  readonly reorder: Ptr;
  /** Forward weights' keys seen once, and the blocked copies of those seen again. */
  readonly seen: WeakSet<object>;
  readonly kept: WeakMap<object, Float32Array>;
}

/**
 * Most bytes of blocked forward weights kept for frozen models (each a copy of a weight tensor,
 * off the wasm heap; the small U-Net's take 4 MB). Past it, further weights are reordered per
 * call as in training; copies leave the count when their tensors are collected.
 */
export const WEIGHT_CACHE_BYTES = 512 * 2 ** 20;

/** One side of a Winograd pass: its argument, blocked layout, NHWC layout and the reorder. */
interface Side {
  readonly arg: number;
  readonly md: Ptr;
  readonly user: Uint8Array;
  /** NHWC → blocked for the input side, blocked → NHWC for the output side. */
  readonly reorder: Ptr;
  readonly length: number;
}

/** A Winograd pass: what it reads (src or diff_dst) and writes (dst or diff_src). */
interface Wino extends Conv {
  readonly input: Side;
  readonly output: Side;
}

/** The Winograd weight gradient: both activations read through blocked scratch. */
interface WinoWeights extends Conv {
  readonly src: Side;
  readonly diffDst: Side;
}

function bind(core: Core, winogradMode: WinogradMode): OneDnn {
  const { lib, md, anyMd, primitive, reorder, run, toBf16 } = core;

  // One plan per geometry and precision. In bf16 the products read bf16 (src, weights, diff_dst)
  // and write f32 (dst, diff_src, diff_weights): `src` / `diffDst` are then bf16 descriptors of
  // the activations, which each call rounds into scratch (core.toBf16), and `wType` is bf16.
  interface Plan {
    readonly bf16: boolean;
    readonly src: Uint8Array;
    readonly diffSrc: Uint8Array;
    readonly dst: Uint8Array;
    readonly diffDst: Uint8Array;
    readonly wType: number;
    readonly wUser: Uint8Array;
    readonly bias: Uint8Array;
    readonly desc: Uint8Array;
    readonly fwdHint: Made;
    fwd?: Conv | null;
    fwdBias?: Conv | null;
    bwdData?: Conv | null;
    bwdWeights?: Conv | null;
    winoFwd?: Wino | null;
    winoFwdBias?: Wino | null;
    winoInfer?: Wino | null;
    winoInferBias?: Wino | null;
    winoBwdData?: Wino | null;
    winoBwdWeights?: WinoWeights | null;
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
  const forwardDesc = (p: Omit<Plan, "desc" | "fwdHint">, g: ConvGeometry, bias: boolean) => {
    const d = new Uint8Array(OP_BYTES);
    const b = bias ? p.bias : null as never;
    const w = anyMd([g.o, g.c, g.kh, g.kw], p.wType);
    const r = lib.dnnl_dilated_convolution_forward_desc_init(
      d,
      FORWARD_TRAINING,
      CONV_DIRECT,
      p.src,
      w,
      b,
      p.dst,
      ...params(g).geo,
    );
    return r === 0 ? d : undefined;
  };
  /** The backward-data (or backward-weights) primitive of `g`, hinted by the forward one. */
  const backward = (g: ConvGeometry, p: Plan, weights: boolean): Made | undefined => {
    const d = new Uint8Array(OP_BYTES);
    const dims = [g.o, g.c, g.kh, g.kw], geo = params(g).geo;
    // Weight gradients accumulate into f32 in either precision.
    const r = weights
      ? lib.dnnl_dilated_convolution_backward_weights_desc_init(
        d,
        CONV_DIRECT,
        p.src,
        anyMd(dims, F32),
        null as never,
        p.diffDst,
        ...geo,
      )
      : lib.dnnl_dilated_convolution_backward_data_desc_init(
        d,
        CONV_DIRECT,
        p.diffSrc,
        anyMd(dims, p.wType),
        p.diffDst,
        ...geo,
      );
    return r === 0 ? primitive(d, p.fwdHint.pd) : undefined;
  };
  const planOf = (g: ConvGeometry, bf16: boolean): Plan | undefined => {
    const key = `${JSON.stringify(g)}${bf16 ? "bf16" : ""}`;
    const cached = plans.get(key);
    if (cached !== undefined) return cached ?? undefined;
    const build = (): Plan | undefined => {
      if (!params(g).ok) return undefined;
      const { n, h, w, c, oh, ow, o, kh, kw } = g;
      const act = bf16 ? BF16 : F32;
      const xStrides = [h * w * c, 1, w * c, c], yStrides = [oh * ow * o, 1, ow * o, o];
      const src = md([n, c, h, w], xStrides, act), diffSrc = md([n, c, h, w], xStrides);
      const dst = md([n, o, oh, ow], yStrides), diffDst = md([n, o, oh, ow], yStrides, act);
      // HWIO [kh, kw, c, o] as oneDNN's logical (o, i, kh, kw).
      const wUser = md([o, c, kh, kw], [1, o, kw * c * o, c * o]);
      const bias = md([o], [1]);
      if (!src || !diffSrc || !dst || !diffDst || !wUser || !bias) return undefined;
      const partial = { bf16, src, diffSrc, dst, diffDst, wType: act, wUser, bias };
      const desc = forwardDesc(partial, g, true);
      const fwdHint = desc && primitive(desc, null);
      return fwdHint ? { ...partial, desc, fwdHint } : undefined;
    };
    const plan = build();
    plans.set(key, plan ?? null);
    return plan;
  };
  /** The plan for `g` at the engine's precision; undefined where oneDNN declines. */
  const planNow = (g: ConvGeometry) => planOf(g, precision() === "bf16");
  /** An activation as the plan's products read it: itself, or rounded to bf16 in `slot`. */
  const read = (p: Plan, x: Float32Array, slot: 0 | 1) => p.bf16 ? toBf16(x, slot) : x;
  /** The blocked weights of `pd` (query `q`) and the reorder from (or to) the user layout. */
  const withWeights = (made: Made, q: number, user: Uint8Array, toUser: boolean): Conv | null => {
    const wMd = lib.dnnl_primitive_desc_query_md(made.pd, q, 0);
    if (!wMd) return null;
    const size = Number(lib.dnnl_memory_desc_get_size(wMd));
    const userPtr = Deno.UnsafePointer.of(user);
    const r = toUser ? reorder(wMd, userPtr) : reorder(userPtr, wMd);
    if (!r) return null;
    const wBuf = alignedF32(Math.ceil(size / 4) + 16);
    return { prim: made.prim, wBuf, wMd, reorder: r, seen: new WeakSet(), kept: new WeakMap() };
  };
  // SiLU is swish with β = 1.
  const silu = core.eltwise(ELTWISE_SWISH, 1, true);

  // Winograd: activations go through blocked scratch outside the wasm heap, two per pass (the
  // input and the output, or both inputs of the weight gradient).
  const scratchA = makeScratch(), scratchB = makeScratch();
  /** One activation of Winograd pass `made` (query `query`): its blocked layout and reorder. */
  const side = (
    made: Made,
    [arg, query, user]: [arg: number, query: number, user: Uint8Array],
    toUser: boolean,
  ): Side | undefined => {
    const md = lib.dnnl_primitive_desc_query_md(made.pd, query, 0);
    if (!md) return undefined;
    const userMd = Deno.UnsafePointer.of(user);
    const r = toUser ? reorder(md, userMd) : reorder(userMd, md);
    const length = Math.ceil(Number(lib.dnnl_memory_desc_get_size(md)) / 4);
    return r ? { arg, md, user, reorder: r, length } : undefined;
  };
  /** The Winograd pass of `made`, reading `input` from NHWC and writing `output` to NHWC. */
  const wino = (
    made: Made | undefined,
    p: Plan,
    input: [arg: number, query: number, user: Uint8Array],
    output: [arg: number, query: number, user: Uint8Array],
  ): Wino | null => {
    if (!made) return null;
    const conv = withWeights(made, QUERY_WEIGHTS_MD, p.wUser, false);
    const i = side(made, input, false), o = side(made, output, true);
    return conv && i && o ? { ...conv, input: i, output: o } : null;
  };
  /** Activations and weights of `g` in the layouts the Winograd kernels pick ("any"). */
  const anyLayouts = ({ n, c, h, w, o, oh, ow, kh, kw }: ConvGeometry) => ({
    src: anyMd([n, c, h, w]),
    wts: anyMd([o, c, kh, kw]),
    dst: anyMd([n, o, oh, ow]),
  });
  /**
   * The Winograd forward primitive of `g`, with the plan's bias when `bias`. For inference its
   * weights are in oneDNN's Winograd format, transformed by their reorder: where they are kept
   * (a frozen model's), the per-call weight transform is gone.
   */
  const winoForwardMade = (
    g: ConvGeometry,
    p: Plan,
    bias: boolean,
    inference = false,
  ): Made | undefined => {
    const { src, wts, dst } = anyLayouts(g);
    const d = new Uint8Array(OP_BYTES);
    const r = lib.dnnl_dilated_convolution_forward_desc_init(
      d,
      inference ? FORWARD_INFERENCE : FORWARD_TRAINING,
      CONV_WINOGRAD,
      src,
      wts,
      bias ? p.bias : null as never,
      dst,
      ...params(g).geo,
    );
    return r === 0 ? primitive(d, null) : undefined;
  };
  const winoForward = (g: ConvGeometry, p: Plan, bias: boolean, inference: boolean): Wino | null =>
    wino(
      winoForwardMade(g, p, bias, inference),
      p,
      [ARG_SRC, QUERY_SRC_MD, p.src],
      [ARG_DST, QUERY_DST_MD, p.dst],
    );
  const winoBackwardData = (g: ConvGeometry, p: Plan): Wino | null => {
    const { src, wts, dst } = anyLayouts(g);
    const d = new Uint8Array(OP_BYTES);
    const r = lib.dnnl_dilated_convolution_backward_data_desc_init(
      d,
      CONV_WINOGRAD,
      src,
      wts,
      dst,
      ...params(g).geo,
    );
    const made = r === 0 ? primitive(d, null) : undefined;
    return wino(
      made,
      p,
      [ARG_DIFF_DST, QUERY_DIFF_DST_MD, p.diffDst],
      [ARG_DIFF_SRC, QUERY_DIFF_SRC_MD, p.diffSrc],
    );
  };
  const winoBackwardWeights = (g: ConvGeometry, p: Plan): WinoWeights | null => {
    const { src, wts, dst } = anyLayouts(g);
    // The weight gradient's primitive descriptor takes the forward one as its hint.
    const hint = winoForwardMade(g, p, false);
    const d = new Uint8Array(OP_BYTES);
    const bwd = hint &&
      lib.dnnl_dilated_convolution_backward_weights_desc_init(
        d,
        CONV_WINOGRAD,
        src,
        wts,
        null as never,
        dst,
        ...params(g).geo,
      );
    const made = hint && bwd === 0 ? primitive(d, hint.pd) : undefined;
    if (!made) return null;
    const conv = withWeights(made, QUERY_DIFF_WEIGHTS_MD, p.wUser, true);
    const x = side(made, [ARG_SRC, QUERY_SRC_MD, p.src], false);
    const dy = side(made, [ARG_DIFF_DST, QUERY_DIFF_DST_MD, p.diffDst], false);
    return conv && x && dy ? { ...conv, src: x, diffDst: dy } : null;
  };
  // Weights a forward pass meets twice under one key (inference over a frozen model) keep their
  // blocked copy; training's weights change every step and are met once, so they never are.
  let cachedBytes = 0, cacheHits = 0;
  const released = new FinalizationRegistry<number>((bytes) => cachedBytes -= bytes);
  /** `conv`'s blocked weights from HWIO `w`: reordered now, or kept from before under `key`. */
  const blockedWeights = (conv: Conv, p: Plan, w: Float32Array, key?: object) => {
    const kept = key && conv.kept.get(key);
    if (kept) {
      cacheHits++;
      return kept;
    }
    let buf = conv.wBuf;
    if (key && conv.seen.has(key) && cachedBytes + 4 * buf.length <= WEIGHT_CACHE_BYTES) {
      buf = alignedF32(buf.length);
      cachedBytes += 4 * buf.length;
      conv.kept.set(key, buf);
      released.register(key, 4 * buf.length);
    } else if (key) {
      conv.seen.add(key);
    }
    run(conv.reorder, [[ARG_SRC, p.wUser, w], [ARG_DST, conv.wMd, buf]]);
    return buf;
  };
  let winogradCalls = 0;
  /** Run Winograd pass `k` on NHWC `x` with weights `w` (HWIO) into NHWC `y`. */
  const runWino = (
    k: Wino,
    p: Plan,
    x: Float32Array,
    w: Float32Array,
    y: Float32Array,
    bias?: Float32Array,
    wKey?: object,
  ) => {
    const { input, output } = k;
    const a = scratchA(input.length), b = scratchB(output.length);
    run(input.reorder, [[ARG_SRC, input.user, x], [ARG_DST, input.md, a]]);
    const args: View[] = [
      [input.arg, input.md, a],
      [ARG_WEIGHTS, k.wMd, blockedWeights(k, p, w, wKey)],
      [output.arg, output.md, b],
    ];
    if (bias) args.push([ARG_BIAS, p.bias, bias]);
    run(k.prim, args);
    run(output.reorder, [[ARG_SRC, output.md, b], [ARG_DST, output.user, y]]);
    winogradCalls++;
  };
  /** Run the Winograd weight gradient `k` of NHWC `x` and `dy` into `dw` (HWIO). */
  const runWinoWeights = (
    k: WinoWeights,
    p: Plan,
    x: Float32Array,
    dy: Float32Array,
    dw: Float32Array,
  ) => {
    const a = scratchA(k.src.length), b = scratchB(k.diffDst.length);
    run(k.src.reorder, [[ARG_SRC, k.src.user, x], [ARG_DST, k.src.md, a]]);
    run(k.diffDst.reorder, [[ARG_SRC, k.diffDst.user, dy], [ARG_DST, k.diffDst.md, b]]);
    run(k.prim, [
      [ARG_SRC, k.src.md, a],
      [ARG_DIFF_DST, k.diffDst.md, b],
      [ARG_DIFF_WEIGHTS, k.wMd, k.wBuf],
    ]);
    run(k.reorder, [[ARG_SRC, k.wMd, k.wBuf], [ARG_DST, p.wUser, dw]]);
    winogradCalls++;
  };
  let winograd = winogradMode;
  /** Whether pass `pass` of `g` takes the Winograd kernels under plan `p`. */
  const winoFor = (g: ConvGeometry, p: Plan, pass: ConvPass) =>
    !p.bf16 &&
    (winograd === "always" ? winogradFits(g) : winograd === "auto" && winogradWorth(g, pass));

  return {
    path: core.path,
    isa: core.isa,
    swish: (x, y) => silu.forward(x, y),
    swishBackward: (x, dy, dx) => silu.backward(x, dy, dx),
    get winograd() {
      return winograd;
    },
    set winograd(mode: WinogradMode) {
      winograd = mode;
    },
    get winogradCalls() {
      return winogradCalls;
    },
    get weightCache() {
      return { bytes: cachedBytes, hits: cacheHits };
    },
    convForward(g, x, w, bias, y, wKey, inference = false) {
      const p = planNow(g);
      if (!p) return false;
      if (winoFor(g, p, inference ? "inference" : "forward")) {
        const slot = inference
          ? (bias ? "winoInferBias" : "winoInfer")
          : (bias ? "winoFwdBias" : "winoFwd");
        if (p[slot] === undefined) p[slot] = winoForward(g, p, bias !== undefined, inference);
        const k = p[slot];
        if (k) {
          runWino(k, p, x, w, y, bias, wKey);
          return true;
        }
      }
      const slot = bias ? "fwdBias" : "fwd";
      if (p[slot] === undefined) {
        const desc = bias ? p.desc : forwardDesc(p, g, false);
        const made = bias ? p.fwdHint : desc && primitive(desc, null);
        p[slot] = made ? withWeights(made, QUERY_WEIGHTS_MD, p.wUser, false) : null;
      }
      const conv = p[slot];
      const src = read(p, x, 0);
      if (!conv || !src) return false;
      const args: View[] = [
        [ARG_SRC, p.src, src],
        [ARG_WEIGHTS, conv.wMd, blockedWeights(conv, p, w, wKey)],
        [ARG_DST, p.dst, y],
      ];
      if (bias) args.push([ARG_BIAS, p.bias, bias]);
      run(conv.prim, args);
      return true;
    },
    convBackpropInput(g, dy, w, dx) {
      const p = planNow(g);
      if (!p) return false;
      if (winoFor(g, p, "backward-data")) {
        if (p.winoBwdData === undefined) p.winoBwdData = winoBackwardData(g, p);
        const k = p.winoBwdData;
        if (k) {
          runWino(k, p, dy, w, dx);
          return true;
        }
      }
      if (p.bwdData === undefined) {
        const made = backward(g, p, false);
        p.bwdData = made ? withWeights(made, QUERY_WEIGHTS_MD, p.wUser, false) : null;
      }
      const conv = p.bwdData;
      const diffDst = read(p, dy, 0);
      if (!conv || !diffDst) return false;
      run(conv.reorder, [[ARG_SRC, p.wUser, w], [ARG_DST, conv.wMd, conv.wBuf]]);
      run(conv.prim, [
        [ARG_DIFF_SRC, p.diffSrc, dx],
        [ARG_WEIGHTS, conv.wMd, conv.wBuf],
        [ARG_DIFF_DST, p.diffDst, diffDst],
      ]);
      return true;
    },
    convBackpropFilter(g, x, dy, dw) {
      const p = planNow(g);
      if (!p) return false;
      if (winoFor(g, p, "backward-weights")) {
        if (p.winoBwdWeights === undefined) p.winoBwdWeights = winoBackwardWeights(g, p);
        const k = p.winoBwdWeights;
        if (k) {
          runWinoWeights(k, p, x, dy, dw);
          return true;
        }
      }
      if (p.bwdWeights === undefined) {
        const made = backward(g, p, true);
        p.bwdWeights = made ? withWeights(made, QUERY_DIFF_WEIGHTS_MD, p.wUser, true) : null;
      }
      const conv = p.bwdWeights;
      const src = read(p, x, 0), diffDst = read(p, dy, 1);
      if (!conv || !src || !diffDst) return false;
      run(conv.prim, [
        [ARG_SRC, p.src, src],
        [ARG_DIFF_WEIGHTS, conv.wMd, conv.wBuf],
        [ARG_DIFF_DST, p.diffDst, diffDst],
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
export function openOneDnn(
  env: (name: string) => string | undefined = processEnv,
): OneDnn | undefined {
  const core = openOneDnnCore(env);
  return core && bind(core, winogradModeOf(env));
}

/** oneDNN's convolutions once per process, on the shared core (./onednn_core.ts). */
export function loadOneDnn(): OneDnn | undefined {
  if (cached === undefined) {
    const core = loadOneDnnCore();
    cached = core ? bind(core, winogradModeOf(processEnv)) : null;
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
