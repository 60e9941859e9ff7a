// FLOPs of the matrix products and convolutions a computation runs, read off the kernels tfjs
// records under `tf.profile` (kernel names and shapes). Two FLOPs per multiply-add, the
// convention of PyTorch's FlopCounterMode; elementwise ops, norms and reductions are not counted
// (a small fraction of a U-Net or DiT step), so GFLOP/s derived from this is a lower bound on
// the work done. A gradient counts as what it runs: each convolution's backward is two more
// convolutions (input and filter), each product's two more products.
import * as tf from "@tensorflow/tfjs";
import { QKV_ATTENTION, QKV_ATTENTION_GRAD } from "./fused/attention.ts";

/** FLOPs per counted kernel name, and their sum. */
export interface FlopCount {
  readonly total: number;
  readonly byKernel: Readonly<Record<string, number>>;
}

type Shape = readonly number[];
const prod = (s: Shape) => s.reduce((a, b) => a * b, 1);

/**
 * FLOPs of one kernel call from its input and output shapes (NHWC convolutions, filters
 * [kh, kw, in, out]), or 0 for a kernel this does not count.
 */
export function kernelFlops(
  name: string,
  inputs: readonly (Shape | null)[],
  output: Shape,
): number {
  switch (name) {
    case "Conv2D":
    case "FusedConv2D": { // x [N,H,W,Cin], filter [kh,kw,Cin,Cout] -> [N,Ho,Wo,Cout]
      const [kh, kw, cin] = inputs[1]!;
      return 2 * prod(output) * kh * kw * cin;
    }
    case "Conv2DBackpropInput": { // dy [N,Ho,Wo,Cout], filter -> dx: one product per dy entry
      const [kh, kw, cin] = inputs[1]!;
      return 2 * prod(inputs[0]!) * kh * kw * cin;
    }
    case "Conv2DBackpropFilter": // x, dy [N,Ho,Wo,Cout] -> filter [kh,kw,Cin,Cout]
      return 2 * prod(inputs[1]!) * prod(output.slice(0, 3));
    case "BatchMatMul":
    case "_FusedMatMul": { // a [..., M, K] or [..., K, M] -> [..., M, N]
      const a = inputs[0]!;
      const m = output[output.length - 2];
      // a's last two axes are {M, K} in some order; when both equal M, so does K.
      const k = a[a.length - 2] === m ? a[a.length - 1] : a[a.length - 2];
      return 2 * prod(output) * k;
    }
    // Attention from qkv [N, T, 3C] to [N, T, C] (C = heads·ch): q·kᵀ and p·v per head, each
    // 2·N·T²·C in all; backward recomputes q·kᵀ and runs four more (dp, dq, dk, dv).
    case QKV_ATTENTION:
      return 2 * 2 * prod(output) * output[1];
    case QKV_ATTENTION_GRAD: {
      const [n, t, c3] = inputs[0]!;
      return 5 * 2 * n * t * t * (c3 / 3);
    }
    default:
      return 0;
  }
}

/**
 * Run `f` once under tf.profile and count the FLOPs of its products and convolutions; the
 * tensors it returns are disposed.
 */
export async function countFlops(f: () => tf.TensorContainer | void): Promise<FlopCount> {
  const info = await tf.profile(() => f() ?? {});
  tf.dispose(info.result);
  const byKernel: Record<string, number> = {};
  let total = 0;
  for (const k of info.kernels) {
    const n = kernelFlops(k.name, k.inputShapes as (Shape | null)[], k.outputShapes[0] ?? []);
    if (n === 0) continue;
    byKernel[k.name] = (byKernel[k.name] ?? 0) + n;
    total += n;
  }
  return { total, byKernel };
}
