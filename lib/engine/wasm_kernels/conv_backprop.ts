// Gradients of a 2-D convolution (NHWC, filter [kh, kw, C, O]) as forward convolutions, which the
// wasm backend runs fast (XNNPACK), instead of its slow Conv2DBackpropInput and its missing
// Conv2DBackpropFilter.
//
// Forward, per spatial axis, with stride s and top/left padding p:
//   y[n, i, j, o] = Σ_{a, b, c} x[n, s·i + a − p, s·j + b − p', c] · w[a, b, c, o]
//
// dX (sub-pixel form): write an input row as q = s·u + r with r ∈ [0, s). For each phase r the rows
// feeding it are a stride-1 correlation of dy with a phase filter of ⌈(k − m_r)/s⌉ taps, where
// m_r = (r + p) mod s. Stacking the s² phases as output channels makes one stride-1 conv of dy
// with C·s² channels; a depth-to-space puts the phases back in place. Stride 1 reduces to the
// textbook "conv of dy with the flipped, in/out-transposed filter"; a k×k, stride-k patchify conv
// becomes a 1×1 conv (a matmul). No zeros are inserted into dy, so the FLOPs match the forward.
//
// dW: dw[a, b, c, o] = Σ_{n, i, j} x[n, s·i + a − p, ·, c] · dy[n, i, j, o] is itself a conv with
// batch and channels swapped: image x as [C, H, W, N], filter dy as [Ho, Wo, N, O], dilation s,
// valid padding after explicit pads, output [C, kh, kw, O], then transposed to [kh, kw, C, O].
import * as tf from "@tensorflow/tfjs";
import { delegate, input, type WasmBackendLike } from "./delegate.ts";

type Pad = tf.Conv2DBackpropInputAttrs["pad"];
type Shape4 = [number, number, number, number];

function geometry(
  kernel: string,
  xShape: Shape4,
  filterShape: Shape4,
  strides: [number, number] | number,
  pad: Pad,
  dataFormat: string,
  dimRoundingMode: "floor" | "round" | "ceil" | undefined,
  dilations: unknown,
): tf.backend_util.Conv2DInfo {
  if (dataFormat !== "NHWC") {
    throw new Error(
      `${kernel} (wasm_kernels/conv_backprop.ts): data format "${dataFormat}" is not supported, use "NHWC"`,
    );
  }
  const d = dilations === undefined ? [1] : Array.isArray(dilations) ? dilations : [dilations];
  if (d.some((v) => v !== 1)) {
    throw new Error(
      `${kernel} (wasm_kernels/conv_backprop.ts): dilations ${
        JSON.stringify(dilations)
      } are not supported, only 1`,
    );
  }
  return tf.backend_util.computeConv2DInfo(
    xShape,
    filterShape,
    strides,
    1,
    pad,
    dimRoundingMode,
    false,
    "channelsLast",
  );
}

// ─── dX ──────────────────────────────────────────────────────────────────────────────────────────

/** How one spatial axis of dX is computed from dy by the sub-pixel conv. */
interface AxisPlan {
  /** Taps of the stacked phase filter. */
  readonly taps: number;
  /** Rows per phase: the conv's output size along this axis (⌈in / s⌉). */
  readonly phaseRows: number;
  /** dy rows cropped before / after (≥ 0), then zero rows padded before / after (≥ 0). */
  readonly cropBefore: number;
  readonly cropAfter: number;
  readonly padBefore: number;
  readonly padAfter: number;
  /** tapIndex[j·s + r]: the forward filter tap feeding window slot j of phase r, or −1. */
  readonly tapIndex: Int32Array;
}

function planAxis(k: number, s: number, p: number, inSize: number, outSize: number): AxisPlan {
  const q: number[] = [], m: number[] = [], t: number[] = [];
  let lo = Infinity, hi = -Infinity; // window offsets d: phase r reads dy[u + d], d ∈ [lo, hi]
  for (let r = 0; r < s; r++) {
    q[r] = Math.floor((r + p) / s);
    m[r] = (r + p) % s;
    t[r] = Math.max(0, Math.ceil((k - m[r]) / s));
    if (t[r] > 0) {
      lo = Math.min(lo, q[r] - t[r] + 1);
      hi = Math.max(hi, q[r]);
    }
  }
  const taps = hi - lo + 1;
  const tapIndex = new Int32Array(taps * s).fill(-1);
  for (let j = 0; j < taps; j++) {
    for (let r = 0; r < s; r++) {
      const tt = q[r] - (j + lo); // dy[u + d] pairs with forward tap a = s·tt + m_r
      if (tt >= 0 && tt < t[r]) tapIndex[j * s + r] = s * tt + m[r];
    }
  }
  const phaseRows = Math.ceil(inSize / s);
  const before = -lo, after = phaseRows - 1 + hi - (outSize - 1);
  return {
    taps,
    phaseRows,
    cropBefore: Math.max(0, -before),
    cropAfter: Math.max(0, -after),
    padBefore: Math.max(0, before),
    padAfter: Math.max(0, after),
    tapIndex,
  };
}

/** The stacked phase filter [Kh, Kw, O, sh·sw·C] from the forward filter [kh, kw, C, O]. */
function phaseFilter(w: tf.Tensor, hp: AxisPlan, wp: AxisPlan, sh: number, sw: number): tf.Tensor {
  const [kh, kw, c, o] = w.shape;
  const zero = kh * kw; // index of an appended all-zero tap
  const idx = new Int32Array(hp.taps * wp.taps * sh * sw);
  let needsZero = false, n = 0;
  for (let jh = 0; jh < hp.taps; jh++) {
    for (let jw = 0; jw < wp.taps; jw++) {
      for (let rh = 0; rh < sh; rh++) {
        for (let rw = 0; rw < sw; rw++) {
          const ah = hp.tapIndex[jh * sh + rh], aw = wp.tapIndex[jw * sw + rw];
          const ok = ah >= 0 && aw >= 0;
          needsZero ||= !ok;
          idx[n++] = ok ? ah * kw + aw : zero;
        }
      }
    }
  }
  let taps = tf.reshape(w, [kh * kw, c, o]);
  if (needsZero) taps = tf.concat([taps, tf.zeros([1, c, o])], 0);
  const g = tf.gather(taps, tf.tensor1d(idx, "int32")); // [Kh·Kw·sh·sw, C, O]
  const t = tf.transpose(tf.reshape(g, [hp.taps * wp.taps, sh * sw * c, o]), [0, 2, 1]);
  return tf.reshape(t, [hp.taps, wp.taps, o, sh * sw * c]);
}

/** dX of conv2d for dy [N, Ho, Wo, O] and filter [kh, kw, C, O]; returns [N, H, W, C]. */
export function conv2dInputGrad(
  dy: tf.Tensor,
  filter: tf.Tensor,
  info: tf.backend_util.Conv2DInfo,
): tf.Tensor {
  const { batchSize: n, inHeight: h, inWidth: wd, inChannels: c } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  const hp = planAxis(kh, sh, info.padInfo.top, h, info.outHeight);
  const wp = planAxis(kw, sw, info.padInfo.left, wd, info.outWidth);
  let d = dy;
  if (hp.cropBefore + hp.cropAfter + wp.cropBefore + wp.cropAfter > 0) {
    d = tf.slice(d, [0, hp.cropBefore, wp.cropBefore, 0], [
      -1,
      info.outHeight - hp.cropBefore - hp.cropAfter,
      info.outWidth - wp.cropBefore - wp.cropAfter,
      -1,
    ]);
  }
  const pads: tf.backend_util.ExplicitPadding = [[0, 0], [hp.padBefore, hp.padAfter], [
    wp.padBefore,
    wp.padAfter,
  ], [
    0,
    0,
  ]];
  const y = tf.conv2d(
    d as tf.Tensor4D,
    phaseFilter(filter, hp, wp, sh, sw) as tf.Tensor4D,
    1,
    pads,
  ); // [N, U, V, sh·sw·C]
  let dx: tf.Tensor = y;
  if (sh > 1 || sw > 1) {
    dx = sh === sw ? tf.depthToSpace(y as tf.Tensor4D, sh) : tf.reshape(
      tf.transpose(tf.reshape(y, [n * hp.phaseRows, wp.phaseRows, sh, sw * c]), [0, 2, 1, 3]),
      [n, hp.phaseRows * sh, wp.phaseRows * sw, c],
    ); // [N, U·sh, V·sw, C]
  }
  if (dx.shape[1] !== h || dx.shape[2] !== wd) dx = tf.slice(dx, [0, 0, 0, 0], [n, h, wd, c]);
  return dx;
}

// ─── dW ──────────────────────────────────────────────────────────────────────────────────────────

/** dW of conv2d for x [N, H, W, C] and dy [N, Ho, Wo, O]; returns [kh, kw, C, O]. */
export function conv2dFilterGrad(
  x: tf.Tensor,
  dy: tf.Tensor,
  info: tf.backend_util.Conv2DInfo,
): tf.Tensor {
  const { inHeight: h, inWidth: wd, outHeight: ho, outWidth: wo } = info;
  const { strideHeight: sh, strideWidth: sw, filterHeight: kh, filterWidth: kw } = info;
  // Rows of x read by the forward pass: [−top, kh − 1 + (Ho − 1)·sh − top]; pad or crop to them.
  const top = info.padInfo.top, left = info.padInfo.left;
  const bottom = kh - 1 + (ho - 1) * sh - top - (h - 1);
  const right = kw - 1 + (wo - 1) * sw - left - (wd - 1);
  let xs = x;
  if (bottom < 0 || right < 0) {
    xs = tf.slice(x, [0, 0, 0, 0], [-1, h + Math.min(0, bottom), wd + Math.min(0, right), -1]);
  }
  const xt = tf.transpose(xs, [3, 1, 2, 0]) as tf.Tensor4D; // [C, H, W, N]
  const dyt = tf.transpose(dy, [1, 2, 0, 3]) as tf.Tensor4D; // [Ho, Wo, N, O]
  const pads: tf.backend_util.ExplicitPadding = [[0, 0], [top, Math.max(0, bottom)], [
    left,
    Math.max(0, right),
  ], [
    0,
    0,
  ]];
  const g = tf.conv2d(xt, dyt, 1, pads, "NHWC", [sh, sw]); // [C, kh, kw, O]
  return tf.transpose(g, [1, 2, 0, 3]);
}

// ─── kernels ─────────────────────────────────────────────────────────────────────────────────────

function conv2DBackpropInputKernel(
  { inputs, backend, attrs }: {
    inputs: tf.NamedTensorInfoMap;
    backend: unknown;
    attrs?: tf.NamedAttrMap;
  },
): tf.TensorInfo {
  const dy = input(tf.Conv2DBackpropInput, inputs, "dy");
  const filter = input(tf.Conv2DBackpropInput, inputs, "filter");
  const a = attrs as unknown as tf.Conv2DBackpropInputAttrs & { dilations?: unknown };
  const info = geometry(
    tf.Conv2DBackpropInput,
    a.inputShape,
    filter.shape as Shape4,
    a.strides,
    a.pad,
    a.dataFormat,
    a.dimRoundingMode,
    a.dilations,
  );
  return delegate(backend as WasmBackendLike, [dy, filter], (d, f) => conv2dInputGrad(d, f, info));
}

function conv2DBackpropFilterKernel(
  { inputs, backend, attrs }: {
    inputs: tf.NamedTensorInfoMap;
    backend: unknown;
    attrs?: tf.NamedAttrMap;
  },
): tf.TensorInfo {
  const x = input(tf.Conv2DBackpropFilter, inputs, "x");
  const dy = input(tf.Conv2DBackpropFilter, inputs, "dy");
  const a = attrs as unknown as tf.Conv2DBackpropFilterAttrs & { dilations?: unknown };
  const info = geometry(
    tf.Conv2DBackpropFilter,
    x.shape as Shape4,
    a.filterShape,
    a.strides,
    a.pad,
    a.dataFormat,
    a.dimRoundingMode,
    a.dilations,
  );
  return delegate(backend as WasmBackendLike, [x, dy], (xx, d) => conv2dFilterGrad(xx, d, info));
}

/** Conv2DBackpropInput for wasm: one forward conv (sub-pixel form) instead of the slow built-in. */
export const conv2DBackpropInputConfig: tf.KernelConfig = {
  kernelName: tf.Conv2DBackpropInput,
  backendName: "wasm",
  kernelFunc: conv2DBackpropInputKernel as tf.KernelFunc,
};

/** Conv2DBackpropFilter for wasm (absent from tfjs-backend-wasm 4.22): one dilated forward conv. */
export const conv2DBackpropFilterConfig: tf.KernelConfig = {
  kernelName: tf.Conv2DBackpropFilter,
  backendName: "wasm",
  kernelFunc: conv2DBackpropFilterKernel as tf.KernelFunc,
};
