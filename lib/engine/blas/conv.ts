// Conv2D, FusedConv2D and both Conv2D gradients on sgemm, NHWC, on the wasm heap.
//
// Symbols: input x [N, H, W, C], filter w [KH, KW, C, O], output y [N, OH, OW, O].
// Rows r = (n, oh, ow) of the output; K = KH·KW·C. im2col writes the patch of row r as
// col[r, (kh, kw, c)], which is exactly w's memory order viewed as [K, O], so
//   forward      y[rows, O]  = col[rows, K] · w[K, O]
//   grad input   dcol        = dy[rows, O] · w[K, O]ᵀ, then col2im adds the patches back into dx
//                (stride 1: instead a forward conv of dy with the flipped, transposed filter)
//   grad filter  dw[K, O]   += col[rows, K]ᵀ · dy[rows, O]
// Rows go in chunks so col stays a few MiB off the wasm heap (reused between calls).
// A 1×1 stride-1 unpadded conv is a plain GEMM on x itself.
import * as tf from "@tensorflow/tfjs";
import type { Blas } from "./openblas.ts";
import { asWasmBackend, f32View, makeScratch } from "./heap.ts";
import { applyEpilogue, type Epilogue, isActivation, isIdentity, NONE } from "./epilogue.ts";
import { operandOf } from "./matmul.ts";
import { activeOneDnn, setOneDnnEnabled } from "./onednn.ts";

/** Turn the oneDNN routes on or off (for comparisons); returns whether oneDNN is available. */
export function useOneDnn(on: boolean): boolean {
  return setOneDnnEnabled(on);
}

const oneDnn = activeOneDnn;

/**
 * Forward conv on oneDNN with the epilogue: bias inside oneDNN, the rest applied after. `wKey`
 * is the filter's dataId, under which oneDNN keeps a frozen model's reordered weights.
 */
function oneDnnForward(
  g: ConvGeometry,
  x: Float32Array,
  w: Float32Array,
  y: Float32Array,
  wKey: object,
  e?: Epilogue,
): boolean {
  const dnn = oneDnn();
  if (!dnn || y.length === 0) return false;
  const rowBias = e && e.bias.kind === "row" && e.bias.values.length === g.o
    ? e.bias.values
    : undefined;
  if (!dnn.convForward(g, x, w, rowBias, y, wKey, !tapeRecording())) return false;
  if (e) {
    const rest: Epilogue = rowBias ? { ...e, bias: NONE } : e;
    if (!isIdentity(rest)) applyEpilogue(y, 0, y.length, g.o, rest);
  }
  return true;
}

/**
 * Whether a gradient tape records the kernel running now (tf.grad and the like). Not
 * `engine.isTapeOn()`: that also asks for kernel depth 0, so it reads false inside any kernel.
 */
const tapeRecording = () => tf.engine().state.gradientDepth > 0;

/** Plain-number geometry of one NHWC convolution. */
export interface ConvGeometry {
  readonly n: number;
  readonly h: number;
  readonly w: number;
  readonly c: number;
  readonly oh: number;
  readonly ow: number;
  readonly o: number;
  readonly kh: number;
  readonly kw: number;
  readonly sh: number;
  readonly sw: number;
  readonly dh: number;
  readonly dw: number;
  /** Padding before the first row and column. */
  readonly pt: number;
  readonly pl: number;
}

/** Geometry from tfjs's own shape arithmetic (same padding, rounding, dilation rules). */
export function convGeometry(info: tf.backend_util.Conv2DInfo): ConvGeometry {
  return {
    n: info.batchSize,
    h: info.inHeight,
    w: info.inWidth,
    c: info.inChannels,
    oh: info.outHeight,
    ow: info.outWidth,
    o: info.outChannels,
    kh: info.filterHeight,
    kw: info.filterWidth,
    sh: info.strideHeight,
    sw: info.strideWidth,
    dh: info.dilationHeight,
    dw: info.dilationWidth,
    pt: info.padInfo.top,
    pl: info.padInfo.left,
  };
}

/** A 1×1, stride-1, unpadded conv: x viewed as [rows, C] is already its im2col matrix. */
function isPointwise(g: ConvGeometry): boolean {
  return g.kh === 1 && g.kw === 1 && g.sh === 1 && g.sw === 1 && g.pt === 0 && g.pl === 0 &&
    g.oh === g.h && g.ow === g.w;
}

// Target im2col chunk: 1 Mi floats (4 MiB) keeps the patch matrix in the last-level cache
// between being written and read by sgemm, and rows per chunk in the thousands.
const CHUNK_FLOATS = 1 << 20;
const scratch = makeScratch();

function chunkRows(g: ConvGeometry): number {
  return Math.max(16, Math.floor(CHUNK_FLOATS / (g.kh * g.kw * g.c)));
}

// Short runs copy faster in a loop than through subarray + set (an allocation per call).
function copy(src: Float32Array, s: number, dst: Float32Array, d: number, len: number): void {
  if (len >= 64) dst.set(src.subarray(s, s + len), d);
  else for (let i = 0; i < len; i++) dst[d + i] = src[s + i];
}

function accumulate(src: Float32Array, s: number, dst: Float32Array, d: number, len: number) {
  for (let i = 0; i < len; i++) dst[d + i] += src[s + i];
}

/** col[r - r0, :] ← patch of output row r, for r in [r0, r1); zeros where padding is read. */
export function im2col(
  x: Float32Array,
  g: ConvGeometry,
  r0: number,
  r1: number,
  col: Float32Array,
) {
  const { h, w, c, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl } = g;
  const run = kw * c;
  const plane = oh * ow;
  let n = Math.floor(r0 / plane);
  let y = Math.floor((r0 - n * plane) / ow);
  let xo = r0 - n * plane - y * ow;
  let o = 0;
  for (let r = r0; r < r1; r++) {
    const ix0 = xo * sw - pl;
    for (let i = 0; i < kh; i++, o += run) {
      const iy = y * sh - pt + i * dh;
      if (iy < 0 || iy >= h) {
        col.fill(0, o, o + run);
        continue;
      }
      const base = (n * h + iy) * w;
      if (dw === 1) {
        // kw taps read columns ix0 .. ix0+kw-1: one contiguous run of x, clipped at the edges.
        const lo = Math.max(0, -ix0), hi = Math.min(kw, w - ix0);
        if (hi <= lo) {
          col.fill(0, o, o + run);
          continue;
        }
        if (lo > 0) col.fill(0, o, o + lo * c);
        copy(x, (base + ix0 + lo) * c, col, o + lo * c, (hi - lo) * c);
        if (hi < kw) col.fill(0, o + hi * c, o + run);
      } else {
        for (let j = 0; j < kw; j++) {
          const ix = ix0 + j * dw;
          if (ix < 0 || ix >= w) col.fill(0, o + j * c, o + (j + 1) * c);
          else copy(x, (base + ix) * c, col, o + j * c, c);
        }
      }
    }
    if (++xo === ow) {
      xo = 0;
      if (++y === oh) {
        y = 0;
        n++;
      }
    }
  }
}

/** dx += patches col[r - r0, :] scattered back to their input positions (adjoint of im2col). */
export function col2im(
  col: Float32Array,
  g: ConvGeometry,
  r0: number,
  r1: number,
  dx: Float32Array,
) {
  const { h, w, c, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl } = g;
  const run = kw * c;
  const plane = oh * ow;
  let n = Math.floor(r0 / plane);
  let y = Math.floor((r0 - n * plane) / ow);
  let xo = r0 - n * plane - y * ow;
  let o = 0;
  for (let r = r0; r < r1; r++) {
    const ix0 = xo * sw - pl;
    for (let i = 0; i < kh; i++, o += run) {
      const iy = y * sh - pt + i * dh;
      if (iy < 0 || iy >= h) continue;
      const base = (n * h + iy) * w;
      if (dw === 1) {
        const lo = Math.max(0, -ix0), hi = Math.min(kw, w - ix0);
        if (hi > lo) accumulate(col, o + lo * c, dx, (base + ix0 + lo) * c, (hi - lo) * c);
      } else {
        for (let j = 0; j < kw; j++) {
          const ix = ix0 + j * dw;
          if (ix >= 0 && ix < w) accumulate(col, o + j * c, dx, (base + ix) * c, c);
        }
      }
    }
    if (++xo === ow) {
      xo = 0;
      if (++y === oh) {
        y = 0;
        n++;
      }
    }
  }
}

/** y ← conv(x, w) then the epilogue; x, w, y are heap views. */
export function convForward(
  blas: Blas,
  g: ConvGeometry,
  x: Float32Array,
  w: Float32Array,
  y: Float32Array,
  epilogue?: Epilogue,
): void {
  const rows = g.n * g.oh * g.ow, K = g.kh * g.kw * g.c, O = g.o;
  if (rows === 0 || O === 0) return;
  const post = epilogue && !isIdentity(epilogue) ? epilogue : undefined;
  if (K === 0) {
    y.fill(0);
    if (post) applyEpilogue(y, 0, y.length, O, post);
    return;
  }
  if (isPointwise(g)) {
    blas.sgemm(false, false, rows, O, K, 1, x, K, w, O, 0, y, O);
    if (post) applyEpilogue(y, 0, y.length, O, post);
    return;
  }
  const step = chunkRows(g);
  const col = scratch(Math.min(step, rows) * K);
  for (let r0 = 0; r0 < rows; r0 += step) {
    const r1 = Math.min(rows, r0 + step);
    im2col(x, g, r0, r1, col);
    blas.sgemm(false, false, r1 - r0, O, K, 1, col, K, w, O, 0, y.subarray(r0 * O), O);
    if (post) applyEpilogue(y, r0 * O, r1 * O, O, post);
  }
}

/**
 * With stride and dilation 1, ∂conv/∂x is itself a conv of dy: filter flipped in space with
 * in/out swapped, w'[KH-1-i, KW-1-j, o, c] = w[i, j, c, o], padding KH-1-pt and KW-1-pl. Its
 * im2col is memcpy-speed where col2im is a scalar add loop, so this route is the faster one.
 */
function transposedGeometry(g: ConvGeometry): ConvGeometry {
  return {
    ...g,
    h: g.oh,
    w: g.ow,
    c: g.o,
    oh: g.h,
    ow: g.w,
    o: g.c,
    pt: g.kh - 1 - g.pt,
    pl: g.kw - 1 - g.pl,
  };
}

function flipFilter(w: Float32Array, g: ConvGeometry, out: Float32Array): void {
  const { kh, kw, c, o } = g;
  for (let i = 0; i < kh; i++) {
    for (let j = 0; j < kw; j++) {
      const src = (i * kw + j) * c * o, dst = ((kh - 1 - i) * kw + (kw - 1 - j)) * o * c;
      for (let ci = 0; ci < c; ci++) {
        for (let oi = 0; oi < o; oi++) out[dst + oi * c + ci] = w[src + ci * o + oi];
      }
    }
  }
}

const flipped = makeScratch();

/** dx ← ∂conv/∂x applied to dy. */
export function convBackpropInput(
  blas: Blas,
  g: ConvGeometry,
  dy: Float32Array,
  w: Float32Array,
  dx: Float32Array,
): void {
  const rows = g.n * g.oh * g.ow, K = g.kh * g.kw * g.c, O = g.o;
  if (dx.length === 0) return;
  if (isPointwise(g) && O > 0) {
    blas.sgemm(false, true, rows, K, O, 1, dy, O, w, O, 0, dx, K);
    return;
  }
  if (rows === 0 || K === 0 || O === 0) {
    dx.fill(0);
    return;
  }
  if (g.sh === 1 && g.sw === 1 && g.dh === 1 && g.dw === 1) {
    const wt = flipped(K * O);
    flipFilter(w, g, wt);
    convForward(blas, transposedGeometry(g), dy, wt, dx);
    return;
  }
  dx.fill(0);
  const step = chunkRows(g);
  const col = scratch(Math.min(step, rows) * K);
  for (let r0 = 0; r0 < rows; r0 += step) {
    const r1 = Math.min(rows, r0 + step);
    blas.sgemm(false, true, r1 - r0, K, O, 1, dy.subarray(r0 * O), O, w, O, 0, col, K);
    col2im(col, g, r0, r1, dx);
  }
}

/** dw ← ∂conv/∂w applied to dy. */
export function convBackpropFilter(
  blas: Blas,
  g: ConvGeometry,
  x: Float32Array,
  dy: Float32Array,
  dw: Float32Array,
): void {
  const rows = g.n * g.oh * g.ow, K = g.kh * g.kw * g.c, O = g.o;
  if (dw.length === 0) return;
  if (rows === 0) {
    dw.fill(0);
    return;
  }
  if (isPointwise(g)) {
    blas.sgemm(true, false, K, O, rows, 1, x, K, dy, O, 0, dw, O);
    return;
  }
  const step = chunkRows(g);
  const col = scratch(Math.min(step, rows) * K);
  for (let r0 = 0; r0 < rows; r0 += step) {
    const r1 = Math.min(rows, r0 + step);
    im2col(x, g, r0, r1, col);
    const beta = r0 === 0 ? 0 : 1;
    blas.sgemm(true, false, K, O, r1 - r0, 1, col, K, dy.subarray(r0 * O), O, beta, dw, O);
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel functions

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Pad = "valid" | "same" | number | tf.backend_util.ExplicitPadding;
interface ConvAttrs {
  strides: number | [number, number];
  pad: Pad;
  dataFormat?: "NHWC" | "NCHW";
  dilations?: number | [number, number];
  dimRoundingMode?: "floor" | "round" | "ceil";
}

function info(
  xShape: readonly number[],
  wShape: readonly number[],
  a: ConvAttrs,
): tf.backend_util.Conv2DInfo {
  return tf.backend_util.computeConv2DInfo(
    xShape as [number, number, number, number],
    wShape as [number, number, number, number],
    a.strides,
    a.dilations ?? 1,
    a.pad,
    a.dimRoundingMode,
  );
}

function unsupported(
  name: string,
  why: string,
  fallback: tf.KernelFunc | undefined,
  args: KernelArgs,
) {
  if (fallback) return fallback(args);
  throw new Error(`${name} in lib/engine/blas/conv.ts: ${why}`);
}

function plainNhwc(attrs: ConvAttrs, ...ts: (tf.TensorInfo | undefined)[]): boolean {
  return (attrs.dataFormat ?? "NHWC") === "NHWC" && ts.every((t) => !t || t.dtype === "float32");
}

/** Conv2D kernel on sgemm. */
export function makeConv2D(blas: Blas, fallback?: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs) => {
    const { x, filter } = args.inputs as Record<string, tf.TensorInfo>;
    const attrs = args.attrs as unknown as ConvAttrs;
    if (!plainNhwc(attrs, x, filter)) {
      return unsupported("Conv2D", "NHWC float32 only", fallback, args);
    }
    const backend = asWasmBackend(args.backend);
    const ci = info(x.shape, filter.shape, attrs);
    const out = backend.makeOutput(ci.outShape, "float32");
    const g = convGeometry(ci);
    const [xv, wv, yv] = [f32View(backend, x), f32View(backend, filter), f32View(backend, out)];
    if (!oneDnnForward(g, xv, wv, yv, filter.dataId)) convForward(blas, g, xv, wv, yv);
    return out;
  };
}

/** FusedConv2D kernel: conv on sgemm, then bias / activation in place per chunk. */
export function makeFusedConv2D(blas: Blas, fallback?: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs) => {
    const { x, filter, bias, preluActivationWeights } = args.inputs as Record<
      string,
      tf.TensorInfo | undefined
    >;
    const attrs = args.attrs as unknown as ConvAttrs & {
      activation?: string;
      leakyreluAlpha?: number;
    };
    const activation = attrs.activation ?? "linear";
    if (!x || !filter) return unsupported("FusedConv2D", "x and filter required", fallback, args);
    if (!plainNhwc(attrs, x, filter, bias, preluActivationWeights)) {
      return unsupported("FusedConv2D", "NHWC float32 only", fallback, args);
    }
    if (!isActivation(activation)) {
      return unsupported("FusedConv2D", `activation "${activation}"`, fallback, args);
    }
    const backend = asWasmBackend(args.backend);
    const ci = info(x.shape, filter.shape, attrs);
    const biasOp = operandOf(backend, bias, ci.outShape);
    const preluOp = operandOf(backend, preluActivationWeights, ci.outShape);
    if (!biasOp || !preluOp) {
      return unsupported("FusedConv2D", "bias or PReLU weights do not broadcast", fallback, args);
    }
    const out = backend.makeOutput(ci.outShape, "float32");
    const g = convGeometry(ci);
    const [xv, wv, yv] = [f32View(backend, x), f32View(backend, filter), f32View(backend, out)];
    const epilogue: Epilogue = {
      bias: biasOp ?? NONE,
      activation,
      prelu: preluOp ?? NONE,
      leakyreluAlpha: attrs.leakyreluAlpha ?? 0.2,
    };
    if (!oneDnnForward(g, xv, wv, yv, filter.dataId, epilogue)) {
      convForward(blas, g, xv, wv, yv, epilogue);
    }
    return out;
  };
}

/** Conv2DBackpropInput kernel on sgemm + col2im. */
export function makeConv2DBackpropInput(blas: Blas, fallback?: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs) => {
    const { dy, filter } = args.inputs as Record<string, tf.TensorInfo>;
    const attrs = args.attrs as unknown as ConvAttrs & { inputShape: number[] };
    if (!plainNhwc(attrs, dy, filter)) {
      return unsupported("Conv2DBackpropInput", "NHWC float32 only", fallback, args);
    }
    const backend = asWasmBackend(args.backend);
    const ci = info(attrs.inputShape, filter.shape, { ...attrs, dilations: 1 });
    const dx = backend.makeOutput([...attrs.inputShape], "float32");
    const g = convGeometry(ci);
    const [dyv, wv, dxv] = [f32View(backend, dy), f32View(backend, filter), f32View(backend, dx)];
    const dnn = dxv.length > 0 && dyv.length > 0 ? oneDnn() : undefined;
    if (!dnn?.convBackpropInput(g, dyv, wv, dxv)) convBackpropInput(blas, g, dyv, wv, dxv);
    return dx;
  };
}

/** Conv2DBackpropFilter kernel on im2col + sgemm. */
export function makeConv2DBackpropFilter(blas: Blas, fallback?: tf.KernelFunc): tf.KernelFunc {
  return (args: KernelArgs) => {
    const { x, dy } = args.inputs as Record<string, tf.TensorInfo>;
    const attrs = args.attrs as unknown as ConvAttrs & { filterShape: number[] };
    if (!plainNhwc(attrs, x, dy)) {
      return unsupported("Conv2DBackpropFilter", "NHWC float32 only", fallback, args);
    }
    const backend = asWasmBackend(args.backend);
    const ci = info(x.shape, attrs.filterShape, { ...attrs, dilations: 1 });
    const dw = backend.makeOutput([...attrs.filterShape], "float32");
    const g = convGeometry(ci);
    const [xv, dyv, dwv] = [f32View(backend, x), f32View(backend, dy), f32View(backend, dw)];
    const dnn = dwv.length > 0 && dyv.length > 0 && xv.length > 0 ? oneDnn() : undefined;
    if (!dnn?.convBackpropFilter(g, xv, dyv, dwv)) convBackpropFilter(blas, g, xv, dyv, dwv);
    return dw;
  };
}
