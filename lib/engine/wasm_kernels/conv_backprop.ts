// Gradients of a 2-D convolution (NHWC, filter [kh, kw, C, O]) as forward convolutions, which the
// wasm backend runs fast (XNNPACK), instead of its slow Conv2DBackpropInput and its missing
// Conv2DBackpropFilter.
//
// Forward, with strides (s, s') and top/left padding (p, p'):
//   y[n, i, j, o] = Σ_{a, b, c} x[n, s·i + a − p, s'·j + b − p', c] · w[a, b, c, o]
//
// dX (sub-pixel form): write an input row as s·u + r with r ∈ [0, s). Each phase r of the rows is
// a stride-1 correlation of dy with ⌈(k − m_r)/s⌉ of the forward taps, m_r = (r + p) mod s, in
// reverse order. The s² phases are stride-1 convs of dy (stacked on the output channels when
// their windows coincide), and a depth-to-space puts them back in place. Stride 1 reduces to the
// textbook "conv of dy with the flipped, in/out-transposed filter"; a k×k, stride-k patchify conv
// becomes a 1×1 conv (a matmul). No zeros are inserted into dy, so the FLOPs match the forward.
//
// dW: dw[a, b, c, o] = Σ_{n, i, j} x[n, s·i + a − p, ·, c] · dy[n, i, j, o] is itself a conv with
// batch and channels swapped: image x as [C, H, W, N], filter dy as [Ho, Wo, N, O], dilation s,
// valid padding after explicit pads, output [C, kh, kw, O], then transposed to [kh, kw, C, O].
// Where patches do not overlap (1×1 stride 1, k×k stride k) it is one matmul, Xᵀ·dy.
// Measured alternatives that lost on wasm: im2col + matmul, one matmul per tap on shifted flat
// views, phase-split x for strided convs (wasm transposes and slices cost more than they save).
import * as tf from "@tensorflow/tfjs";
import { delegate, input, type WasmBackendLike } from "./delegate.ts";

type Pad = tf.Conv2DBackpropInputAttrs["pad"];
type Shape4 = [number, number, number, number];

type Rounding = "floor" | "round" | "ceil";

/** Conv attributes shared by both gradient kernels. */
interface GradAttrs {
  readonly strides: [number, number] | number;
  readonly pad: Pad;
  readonly dataFormat: string;
  readonly dimRoundingMode?: Rounding;
  readonly dilations?: unknown;
}

/**
 * The forward conv's geometry, checked against dy. tfjs's Conv2D gradient drops
 * `dimRoundingMode`, so when dy does not match the rounding given, the rounding that does is used.
 */
function geometry(
  kernel: string,
  xShape: Shape4,
  filterShape: Shape4,
  dyShape: number[],
  a: GradAttrs,
) {
  const where = `${kernel} (wasm_kernels/conv_backprop.ts)`;
  if (a.dataFormat !== "NHWC") {
    throw new Error(`${where}: data format "${a.dataFormat}" is not supported, use "NHWC"`);
  }
  const d = a.dilations === undefined
    ? [1]
    : Array.isArray(a.dilations)
    ? a.dilations
    : [a.dilations];
  if (d.some((v) => v !== 1)) {
    throw new Error(`${where}: dilations ${JSON.stringify(a.dilations)} are not supported, only 1`);
  }
  // Rounding applies to numeric pads only.
  const modes: (Rounding | undefined)[] = typeof a.pad === "number"
    ? [a.dimRoundingMode, "floor", "ceil", "round"]
    : [undefined];
  for (const mode of modes) {
    const info = tf.backend_util.computeConv2DInfo(
      xShape,
      filterShape,
      a.strides,
      1,
      a.pad,
      mode,
      false,
      "channelsLast",
    );
    if (info.outShape.every((v, i) => v === dyShape[i])) return info;
  }
  throw new Error(
    `${where}: dy of shape [${dyShape}] does not fit x [${xShape}], filter [${filterShape}]`,
  );
}

// ─── dX ──────────────────────────────────────────────────────────────────────────────────────────

/**
 * One phase r of one axis: dX rows s·u + r, for u ∈ [0, ⌈in / s⌉), read dy[u + lo + j] for
 * j ∈ [0, taps), each paired with the forward tap a = s·(taps − 1 − j) + m.
 */
interface Phase {
  readonly taps: number;
  readonly lo: number;
  readonly m: number;
}

function axisPhases(k: number, s: number, p: number): Phase[] {
  return Array.from({ length: s }, (_, r) => {
    const q = Math.floor((r + p) / s), m = (r + p) % s;
    const taps = Math.max(0, Math.ceil((k - m) / s));
    return { taps, lo: q - taps + 1, m };
  });
}

/** Crop (slice) and zero padding of dy along one axis so a valid conv yields `rows` outputs. */
function axisWindow(ph: Phase, rows: number, outSize: number) {
  const before = -ph.lo, after = rows - 1 + ph.lo + ph.taps - 1 - (outSize - 1);
  return {
    crop: [Math.max(0, -before), Math.max(0, -after)],
    pad: [Math.max(0, before), Math.max(0, after)],
  };
}

/** Forward taps (flat a·kw + b) for a window of phases, slot-major then phase-major. */
function tapIndices(
  hs: readonly Phase[],
  ws: readonly Phase[],
  sh: number,
  sw: number,
  kw: number,
): Int32Array {
  const th = hs[0].taps, tw = ws[0].taps;
  const idx = new Int32Array(th * tw * hs.length * ws.length);
  let n = 0;
  for (let jh = 0; jh < th; jh++) {
    for (let jw = 0; jw < tw; jw++) {
      for (const ph of hs) {
        for (const pw of ws) {
          idx[n++] = (sh * (th - 1 - jh) + ph.m) * kw + sw * (tw - 1 - jw) + pw.m;
        }
      }
    }
  }
  return idx;
}

/**
 * dX of conv2d for dy [N, Ho, Wo, O] and filter [kh, kw, C, O]; returns [N, H, W, C]. `info` is
 * the forward conv's (`tf.backend_util.computeConv2DInfo`). Call inside `tf.tidy`: the
 * intermediates are left to it.
 */
export function conv2dInputGrad(
  dy: tf.Tensor,
  filter: tf.Tensor,
  info: tf.backend_util.Conv2DInfo,
): tf.Tensor {
  const { batchSize: n, inHeight: h, inWidth: wd, inChannels: c, outChannels: o } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const hs = axisPhases(kh, sh, info.padInfo.top), ws = axisPhases(kw, sw, info.padInfo.left);
  const rows = Math.ceil(h / sh), cols = Math.ceil(wd / sw);
  const taps = tf.reshape(tf.transpose(filter, [0, 1, 3, 2]), [kh * kw, o, c]); // [kh·kw, O, C]

  // A stride-1 valid conv of (cropped, padded) dy with the taps of the phases `hp` × `wp`
  // stacked on the output channels: [N, rows, cols, |hp|·|wp|·C].
  const phaseConv = (hp: readonly Phase[], wp: readonly Phase[]): tf.Tensor => {
    const [th, tw] = [hp[0].taps, wp[0].taps];
    if (th === 0 || tw === 0) return tf.zeros([n, rows, cols, hp.length * wp.length * c]);
    const ah = axisWindow(hp[0], rows, info.outHeight), aw = axisWindow(wp[0], cols, info.outWidth);
    let d = dy;
    if (ah.crop[0] + ah.crop[1] + aw.crop[0] + aw.crop[1] > 0) {
      d = tf.slice(dy, [0, ah.crop[0], aw.crop[0], 0], [
        -1,
        info.outHeight - ah.crop[0] - ah.crop[1],
        info.outWidth - aw.crop[0] - aw.crop[1],
        -1,
      ]);
    }
    const k = hp.length * wp.length;
    const g = tf.gather(taps, tf.tensor1d(tapIndices(hp, wp, sh, sw, kw), "int32")); // [th·tw·k, O, C]
    const f = k === 1
      ? tf.reshape(g, [th, tw, o, c])
      : tf.reshape(tf.transpose(tf.reshape(g, [th * tw, k, o, c]), [0, 2, 1, 3]), [
        th,
        tw,
        o,
        k * c,
      ]);
    const pads: tf.backend_util.ExplicitPadding = [
      [0, 0],
      ah.pad as [number, number],
      aw.pad as [number, number],
      [0, 0],
    ];
    return tf.conv2d(d as tf.Tensor4D, f as tf.Tensor4D, 1, pads);
  };

  // Phases sharing one window (stride 1, patchify) go in one conv; otherwise (3×3 stride 2) the
  // windows differ and one conv per phase avoids multiplying by the zero taps a shared window has.
  const same = (ps: readonly Phase[]) =>
    ps.every((p) => p.taps === ps[0].taps && p.lo === ps[0].lo);
  const y = same(hs) && same(ws)
    ? phaseConv(hs, ws)
    : tf.concat(hs.flatMap((ph) => ws.map((pw) => phaseConv([ph], [pw]))), 3); // [N, U, V, sh·sw·C]
  let dx: tf.Tensor = y;
  if (sh > 1 || sw > 1) {
    // Depth-to-space by reshape and transpose: tf.depthToSpace is ~7× slower on wasm.
    const t = tf.transpose(tf.reshape(y, [n * rows, cols, sh, sw * c]), [0, 2, 1, 3]);
    dx = tf.reshape(t, [n, rows * sh, cols * sw, c]); // [N, U·sh, V·sw, C]
  }
  if (dx.shape[1] !== h || dx.shape[2] !== wd) dx = tf.slice(dx, [0, 0, 0, 0], [n, h, wd, c]);
  return dx;
}

// ─── dW ──────────────────────────────────────────────────────────────────────────────────────────

/**
 * dW of conv2d for x [N, H, W, C] and dy [N, Ho, Wo, O]; returns [kh, kw, C, O]. `info` is the
 * forward conv's. Call inside `tf.tidy`: the intermediates are left to it.
 */
export function conv2dFilterGrad(
  x: tf.Tensor,
  dy: tf.Tensor,
  info: tf.backend_util.Conv2DInfo,
): tf.Tensor {
  const { inHeight: h, inWidth: wd, outHeight: ho, outWidth: wo, inChannels: c, outChannels: o } =
    info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const { top, left } = info.padInfo;
  // Rows of x the forward pass reads: [−top, kh − 1 + (Ho − 1)·sh − top]; pad or crop to them.
  const bottom = kh - 1 + (ho - 1) * sh - top - (h - 1);
  const right = kw - 1 + (wo - 1) * sw - left - (wd - 1);
  let xs = x;
  if (bottom < 0 || right < 0) {
    xs = tf.slice(x, [0, 0, 0, 0], [-1, h + Math.min(0, bottom), wd + Math.min(0, right), -1]);
  }
  if (kh === sh && kw === sw && top === 0 && left === 0 && bottom <= 0 && right <= 0) {
    // Non-overlapping patches (1×1 stride 1, patchify k×k stride k): one matmul over pixels,
    // dW = Xᵀ·dy. Xᵀ is formed by one transpose: the wasm matMul with transposeA is ~6× slower.
    const m = info.batchSize * ho * wo;
    const patches = tf.reshape(xs, [info.batchSize * ho, kh, wo, kw * c]);
    const xT = tf.reshape(tf.transpose(patches, [1, 3, 0, 2]), [kh * kw * c, m]); // [kh·kw·C, M]
    return tf.reshape(tf.matMul(xT, tf.reshape(dy, [m, o])), [kh, kw, c, o]);
  }
  // [N, H, W, C] → [C, H, W, N] as a 2-D transpose then a block transpose: ~2× faster on wasm
  // than one 4-D transpose with this permutation.
  const [n, hx, wx] = xs.shape;
  const t2 = tf.reshape(tf.transpose(tf.reshape(xs, [n, hx * wx * c])), [hx * wx, c, n]); // [H·W, C, N]
  const xt = tf.reshape(tf.transpose(t2, [1, 0, 2]), [c, hx, wx, n]) as tf.Tensor4D; // [C, H, W, N]
  const dyt = tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D; // [Ho, Wo, N, O]
  const pads: tf.backend_util.ExplicitPadding = [[0, 0], [top, Math.max(0, bottom)], [
    left,
    Math.max(0, right),
  ], [0, 0]];
  const g = tf.conv2d(xt, dyt, 1, pads, "NHWC", [sh, sw]); // [C, kh, kw, O]
  return tf.transpose(g, [1, 2, 0, 3]);
}

// ─── kernels ─────────────────────────────────────────────────────────────────────────────────────

type KernelArgs = { inputs: tf.NamedTensorInfoMap; backend: unknown; attrs?: tf.NamedAttrMap };

function conv2DBackpropInputKernel({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo {
  const dy = input(tf.Conv2DBackpropInput, inputs, "dy");
  const filter = input(tf.Conv2DBackpropInput, inputs, "filter");
  const a = attrs as unknown as tf.Conv2DBackpropInputAttrs & GradAttrs;
  const info = geometry(tf.Conv2DBackpropInput, a.inputShape, filter.shape as Shape4, dy.shape, a);
  return delegate(backend as WasmBackendLike, [dy, filter], (d, f) => conv2dInputGrad(d, f, info));
}

function conv2DBackpropFilterKernel({ inputs, backend, attrs }: KernelArgs): tf.TensorInfo {
  const x = input(tf.Conv2DBackpropFilter, inputs, "x");
  const dy = input(tf.Conv2DBackpropFilter, inputs, "dy");
  const a = attrs as unknown as tf.Conv2DBackpropFilterAttrs & GradAttrs;
  const info = geometry(tf.Conv2DBackpropFilter, x.shape as Shape4, a.filterShape, dy.shape, a);
  return delegate(backend as WasmBackendLike, [x, dy], (xx, d) => conv2dFilterGrad(xx, d, info));
}

/**
 * Conv2DBackpropInput for wasm: forward convs of dy (sub-pixel form), ~10× faster than the
 * built-in.
 */
export const conv2DBackpropInputConfig: tf.KernelConfig = {
  kernelName: tf.Conv2DBackpropInput,
  backendName: "wasm",
  kernelFunc: conv2DBackpropInputKernel as tf.KernelFunc,
};

/**
 * Conv2DBackpropFilter for wasm (absent from tfjs-backend-wasm 4.22): one forward conv with batch
 * and channels swapped, or one matmul for non-overlapping patches.
 */
export const conv2DBackpropFilterConfig: tf.KernelConfig = {
  kernelName: tf.Conv2DBackpropFilter,
  backendName: "wasm",
  kernelFunc: conv2DBackpropFilterKernel as tf.KernelFunc,
};
