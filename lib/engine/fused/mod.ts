// Fused elementwise kernels for the wasm backend (GroupNorm with scale-shift, SiLU, tanh-GELU,
// attention's scaled softmax, nearest ×2 upsampling), with composed-op versions used on every
// other backend and as test references.
import { registerGroupNormKernels } from "./group_norm.ts";
import { registerSiluKernels } from "./silu.ts";
import { GELU_TANH, GELU_TANH_GRAD, registerGeluKernels } from "./gelu.ts";

export {
  GROUP_NORM,
  GROUP_NORM_GRAD,
  GROUP_NORM_MOD,
  groupNorm,
  groupNormComposed,
  groupNormScaleShift,
} from "./group_norm.ts";
export { SILU, silu, SILU_GRAD, siluComposed } from "./silu.ts";
export { fusedGeluTanh, GELU_TANH, GELU_TANH_GRAD } from "./gelu.ts";
export { scaledSoftmax, scaledSoftmaxGrad } from "./softmax.ts";
export { fusedUpsampleNearest2, UPSAMPLE2, UPSAMPLE2_GRAD } from "./upsample.ts";

/** Register every fused kernel and its gradient for wasm (idempotent; the ops also do it). */
export function registerFusedKernels(): string[] {
  registerGroupNormKernels();
  registerSiluKernels();
  registerGeluKernels();
  return [
    "DpGroupNorm",
    "DpGroupNormScaleShift",
    "DpGroupNormGrad",
    "DpSilu",
    "DpSiluGrad",
    GELU_TANH,
    GELU_TANH_GRAD,
  ];
}
