// DiT's gated residual x + g·h (x, h [N, T, D], the gate g [N, 1, D]) as one kernel forward and
// one for the gate's gradient, in C (lib/engine/native/binary.c) where the compiled kernels
// loaded. tf ops take a Multiply and an Add forward (the same bits as the kernel) and, for the
// gate, a Multiply and a Sum over an activation-sized product: passes over memory that the DiT
// step pays twice a block.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const GATED_RESIDUAL = "DpGatedResidual";
export const GATE_GRAD = "DpGateGrad";

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Inputs = Record<string, tf.TensorInfo>;

/** [P, Q, R] of the kernels: examples, tokens, channels. */
const dims = (x: tf.TensorInfo) => x.shape as [number, number, number];

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const { x, gate, h } = args.inputs as Inputs;
  const backend = asWasmBackend(args.backend);
  const out = backend.makeOutput([...x.shape], "float32");
  const v = (t: tf.TensorInfo) => f32View(backend, t);
  nativeKernels()!.gatedResidual(v(x), v(gate), v(h), v(out), dims(x));
  return out;
}

function gateGradKernel(args: KernelArgs): tf.TensorInfo {
  const { dy, h } = args.inputs as Inputs;
  const backend = asWasmBackend(args.backend);
  const [n, , d] = dims(h);
  const dg = backend.makeOutput([n, 1, d], "float32");
  const v = (t: tf.TensorInfo) => f32View(backend, t);
  nativeKernels()!.gateGrad(v(dy), v(h), v(dg), dims(h));
  return dg;
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  registerWasmKernels({ [GATED_RESIDUAL]: forwardKernel, [GATE_GRAD]: gateGradKernel }, [{
    kernelName: GATED_RESIDUAL,
    inputsToSave: ["gate", "h"],
    gradFunc: (dy, saved) => {
      const [gate, h] = saved;
      const g = dy as tf.Tensor;
      return {
        // A handle of its own on dy's data, as tfjs's Add gradient returns (no copy).
        x: () => tf.reshape(g, g.shape),
        gate: () => tf.engine().runKernel(GATE_GRAD, { dy: g, h }) as tf.Tensor,
        h: () => tf.mul(gate, g),
      };
    },
  }]);
}

/**
 * x + gate·h in one kernel, or undefined where it cannot run here (not wasm, not float32, or the
 * compiled kernels absent): the caller composes tf ops then.
 * @throws Error when gate is not [N, 1, D] for x and h [N, T, D]
 */
export function gatedResidualFused(
  x: tf.Tensor3D,
  gate: tf.Tensor3D,
  h: tf.Tensor3D,
): tf.Tensor3D | undefined {
  const [n, t, d] = x.shape;
  if (!tf.util.arraysEqual(h.shape, x.shape) || !tf.util.arraysEqual(gate.shape, [n, 1, d])) {
    throw new Error(
      `gated residual: x [${x.shape}] and h [${h.shape}] must match and gate [${gate.shape}] ` +
        `be [${n}, 1, ${d}]`,
    );
  }
  if (tf.getBackend() !== "wasm" || !nativeKernels() || t === 0) return undefined;
  if ([x, gate, h].some((a) => a.dtype !== "float32")) return undefined;
  register();
  return tf.engine().runKernel(GATED_RESIDUAL, { x, gate, h }) as tf.Tensor3D;
}
