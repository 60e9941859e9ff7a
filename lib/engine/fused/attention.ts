// Multi-head self-attention from a fused qkv projection, [N, T, 3C] → [N, T, C]. On wasm with
// the compiled kernels it is one kernel forward and one backward (lib/engine/native/attention.c),
// reading q, k and v where the projection left them; elsewhere it is composed from tf ops. On a
// U-Net feature step the composed route's transposes, split and small products took 2.5 ms per
// attention block (bench/models.ts's extractor at batch 64, 7×7 tokens).
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";
import { registerWasmKernels } from "./register.ts";
import { scaledSoftmax, scaledSoftmaxGrad } from "./softmax.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const QKV_ATTENTION = "DpQkvAttention";
export const QKV_ATTENTION_GRAD = "DpQkvAttentionGrad";

/**
 * Channel order of a fused qkv projection (facts.md §1). "legacy" (ADM's QKVAttentionLegacy):
 * channels grouped per head as [q, k, v] (heads outermost); "new" (QKVAttention, and timm's
 * Attention in DiT/ViT): [q | k | v], each split into heads.
 */
export type QkvOrder = "legacy" | "new";

/** The shape of one attention call, as the C kernels take it. */
export interface AttentionDims {
  readonly n: number;
  readonly t: number;
  readonly heads: number;
  /** Channels per head. */
  readonly ch: number;
  readonly legacy: boolean;
  readonly scale: number;
}

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Attrs = { heads: number; legacy: boolean };

function dimsOf(qkv: tf.TensorInfo, { heads, legacy }: Attrs): AttentionDims {
  const [n, t, width] = qkv.shape;
  const ch = width / (3 * heads);
  return { n, t, heads, ch, legacy, scale: 1 / Math.sqrt(ch) };
}

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { qkv } = args.inputs as { qkv: tf.TensorInfo };
  const a = dimsOf(qkv, args.attrs as unknown as Attrs);
  const b = asWasmBackend(args.backend);
  const out = b.makeOutput([a.n, a.t, a.heads * a.ch], "float32");
  if (!nativeKernels()!.attention(f32View(b, qkv), f32View(b, out), a)) {
    b.disposeData(out.dataId);
    throw new Error("lib/engine/fused/attention.ts: out of memory for the attention's scratch");
  }
  return out;
}

function gradKernel(args: KernelArgs): tf.TensorInfo {
  const { qkv, dy } = args.inputs as { qkv: tf.TensorInfo; dy: tf.TensorInfo };
  const a = dimsOf(qkv, args.attrs as unknown as Attrs);
  const b = asWasmBackend(args.backend);
  const dqkv = b.makeOutput([...qkv.shape], "float32");
  if (!nativeKernels()!.attentionGrad(f32View(b, qkv), f32View(b, dy), f32View(b, dqkv), a)) {
    b.disposeData(dqkv.dataId);
    throw new Error("lib/engine/fused/attention.ts: out of memory for the attention's scratch");
  }
  return dqkv;
}

const gradient: tf.GradConfig = {
  kernelName: QKV_ATTENTION,
  inputsToSave: ["qkv"],
  gradFunc: (dy, saved, attrs) => ({
    qkv: () =>
      tf.engine().runKernel(
        QKV_ATTENTION_GRAD,
        { qkv: saved[0], dy: dy as tf.Tensor },
        attrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor,
  }),
};

let registered = false;

function fused(qkv: tf.Tensor): boolean {
  if (tf.getBackend() !== "wasm" || !nativeKernels()) return false;
  if (qkv.dtype !== "float32" || qkv.size === 0) return false;
  if (!registered) {
    registered = true;
    registerWasmKernels({ [QKV_ATTENTION]: forwardKernel, [QKV_ATTENTION_GRAD]: gradKernel }, [
      gradient,
    ]);
  }
  return true;
}

/**
 * Multi-head self-attention from a fused projection: qkv [N, T, 3C] → [N, T, C], heads H,
 * ch = C / H, softmax(q·kᵀ/√ch)·v per head, output channels head-major. ADM scales q and k by
 * ch^(−1/4) each, for fp16; in float32 that is the same as one 1/√ch.
 */
export function qkvAttention(qkv: tf.Tensor3D, heads: number, order: QkvOrder): tf.Tensor3D {
  const width = qkv.shape[2];
  if (width % (3 * heads) !== 0) {
    throw new Error(`qkvAttention: qkv width ${width} is not divisible by 3·${heads}`);
  }
  if (!fused(qkv)) return qkvAttentionComposed(qkv, heads, order);
  return tf.engine().runKernel(QKV_ATTENTION, { qkv }, {
    heads,
    legacy: order === "legacy",
  }) as tf.Tensor3D;
}

// softmax(q·kᵀ·s)·v over [B, T, ch] with a hand-written gradient that keeps only q, k, v for the
// backward pass and recomputes the probabilities there: they are the largest activation (B·T²
// per block), and the wasm backend copies every tensor the tape keeps.
function attendWith(scale: number) {
  const probs = (q: tf.Tensor, k: tf.Tensor) => scaledSoftmax(tf.matMul(q, k, false, true), scale);
  return tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const [q, k, v] = args as tf.Tensor[];
    (args[3] as tf.GradSaveFunc)([q, k, v]);
    return {
      value: tf.tidy(() => tf.matMul(probs(q, k), v)),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) =>
        tf.tidy(() => {
          const [qs, ks, vs] = saved;
          const pr = probs(qs, ks); // [B, T, T]
          const dp = tf.matMul(dy, vs, false, true);
          const ds = scaledSoftmaxGrad(pr, dp, scale);
          return [
            tf.matMul(ds, ks),
            tf.matMul(ds, qs, true, false),
            tf.matMul(pr, dy, true, false),
          ];
        }),
    };
  });
}

const attendCache = new Map<number, ReturnType<typeof attendWith>>();

/** `qkvAttention` from tf ops (every backend; the fused kernels' test reference). */
export function qkvAttentionComposed(
  qkv: tf.Tensor3D,
  heads: number,
  order: QkvOrder,
): tf.Tensor3D {
  const [n, len, width] = qkv.shape;
  const ch = width / (3 * heads);
  let attend = attendCache.get(ch);
  if (!attend) attendCache.set(ch, attend = attendWith(1 / Math.sqrt(ch)));
  const run = attend;
  return tf.tidy(() => {
    // Rank-4 transposes only (the wasm backend's general-rank transpose is slow).
    const [q, k, v] = order === "legacy"
      ? tf.split(tf.transpose(tf.reshape(qkv, [n, len, heads, 3 * ch]), [0, 2, 1, 3]), 3, 3) // [N, H, T, ch] each
      : tf.split(tf.transpose(tf.reshape(qkv, [n, len, 3 * heads, ch]), [0, 2, 1, 3]), 3, 1);
    const flat = (x: tf.Tensor) => tf.reshape(x, [n * heads, len, ch]);
    const a = tf.reshape(run(flat(q), flat(k), flat(v)), [n, heads, len, ch]);
    return tf.reshape(tf.transpose(a, [0, 2, 1, 3]), [n, len, heads * ch]);
  });
}
