// DiT's adaLN, modulate(LayerNorm(x), shift, scale) = x̂·(1 + scale) + shift, as one kernel
// forward and one backward in C (lib/engine/native/layer_norm.c) where the compiled kernels
// loaded; tf ops take about a dozen kernels and passes for it (bench/profile.ts: the DiT step's
// largest gap to PyTorch). x [N, T, D], shift and scale [N, D]; LayerNorm without affine terms.
// The gradient saves x and scale only and recomputes the statistics.
import * as tf from "@tensorflow/tfjs";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";
import { registerWasmKernels } from "./register.ts";

/** Kernel names (project-specific, registered for the wasm backend). */
export const LN_MODULATE = "DpLayerNormModulate";
export const LN_MODULATE_GRAD = "DpLayerNormModulateGrad";

type KernelArgs = Parameters<tf.KernelFunc>[0];
type Inputs = Record<string, tf.TensorInfo | undefined>;

function need(t: tf.TensorInfo | undefined, name: string): tf.TensorInfo {
  if (!t) throw new Error(`Input "${name}" missing in lib/engine/fused/layer_norm.ts`);
  return t;
}

const dims = (x: tf.TensorInfo) => x.shape as [number, number, number];

function forwardKernel(args: KernelArgs): tf.TensorInfo {
  const inputs = args.inputs as Inputs, { eps } = args.attrs as unknown as { eps: number };
  const x = need(inputs.x, "x"), scale = need(inputs.scale, "scale");
  const shift = need(inputs.shift, "shift");
  const backend = asWasmBackend(args.backend);
  const y = backend.makeOutput([...x.shape], "float32");
  const v = (t: tf.TensorInfo) => f32View(backend, t);
  nativeKernels()!.lnModulate(v(x), v(scale), v(shift), v(y), dims(x), eps);
  return y;
}

function gradKernel(args: KernelArgs): tf.TensorInfo[] {
  const inputs = args.inputs as Inputs, { eps } = args.attrs as unknown as { eps: number };
  const x = need(inputs.x, "x"), scale = need(inputs.scale, "scale"), dy = need(inputs.dy, "dy");
  const backend = asWasmBackend(args.backend);
  const outs = [
    backend.makeOutput([...x.shape], "float32"),
    backend.makeOutput([...scale.shape], "float32"),
    backend.makeOutput([...scale.shape], "float32"),
  ];
  const v = (t: tf.TensorInfo) => f32View(backend, t);
  const [dx, dscale, dshift] = outs.map(v);
  if (
    !nativeKernels()!.lnModulateGrad(v(dy), v(x), v(scale), { dx, dscale, dshift }, dims(x), eps)
  ) {
    for (const o of outs) backend.disposeData(o.dataId);
    throw new Error(
      "lib/engine/fused/layer_norm.ts: out of memory for the adaLN gradient's scratch",
    );
  }
  return outs;
}

let registered = false;

function register(): void {
  if (registered) return;
  registered = true;
  registerWasmKernels({ [LN_MODULATE]: forwardKernel, [LN_MODULATE_GRAD]: gradKernel }, [{
    kernelName: LN_MODULATE,
    inputsToSave: ["x", "scale"],
    gradFunc: (dy, saved, attrs) => {
      const [x, scale] = saved;
      // One backward kernel yields all three gradients. Run it here, not inside the returned
      // closures: tfjs calls each closure in its own tidy, which would dispose the siblings.
      const g = tf.engine().runKernel(
        LN_MODULATE_GRAD,
        { dy: dy as tf.Tensor, x, scale },
        attrs as unknown as tf.NamedAttrMap,
      ) as tf.Tensor[];
      return { x: () => g[0], scale: () => g[1], shift: () => g[2] };
    },
  }]);
}

/**
 * modulate(LN(x), shift, scale) in one kernel, or undefined where it cannot run here (not wasm,
 * not float32, or the compiled kernels absent): the caller composes tf ops then.
 */
export function layerNormModulateFused(
  x: tf.Tensor3D,
  shift: tf.Tensor,
  scale: tf.Tensor,
  eps: number,
): tf.Tensor3D | undefined {
  if (tf.getBackend() !== "wasm" || !nativeKernels()) return undefined;
  if ([x, shift, scale].some((t) => t.dtype !== "float32")) return undefined;
  const [n, , d] = x.shape;
  for (const [name, t] of [["shift", shift], ["scale", scale]] as const) {
    if (t.size !== n * d || t.shape[0] !== n) {
      throw new Error(`adaLN: ${name} [${t.shape}] must be [${n}, ${d}] for x [${x.shape}]`);
    }
  }
  register();
  return tf.tidy(() =>
    tf.engine().runKernel(LN_MODULATE, {
      x,
      scale: tf.reshape(scale, [n, d]),
      shift: tf.reshape(shift, [n, d]),
    }, { eps }) as tf.Tensor3D
  );
}
