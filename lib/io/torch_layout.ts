// Loading reference PyTorch weights (e.g. guided-diffusion's 256x256_diffusion_uncond.pt, or a
// DiT checkpoint, converted to safetensors with their state_dict keys) into the project's tfjs
// layout. Names stay as they are; only layouts change, by the parameter's rank in the project:
//   rank 4  conv kernel   torch [out, in, kh, kw]          → [kh, kw, in, out]
//   rank 2  linear weight torch [out, in] or [out, in, 1]  → [in, out]   (1×1 conv1d: attention qkv, proj_out)
//   rank 1  bias / norm   unchanged
// Embedding tables are [rows, dim] in both frameworks: the model names them in `sameLayout`.
import * as tf from "@tensorflow/tfjs";
import type { Params, ParamShapes } from "../params.ts";
import { disposeCheckpoint, loadCheckpoint, loadParamsStrict } from "./checkpoint.ts";

const same = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((v, i) => v === b[i]);

/** The PyTorch shape of a parameter whose project shape is `shape`. */
export function torchShape(shape: readonly number[]): number[] {
  if (shape.length === 4) return [shape[3], shape[2], shape[0], shape[1]];
  if (shape.length === 2) return [shape[1], shape[0]];
  return [...shape];
}

/**
 * Convert tensors in PyTorch layout to the project's layout, checking each against the expected
 * shapes. Keys not in `expected` are passed through untouched (the strict load reports them).
 * Returns new tensors; the inputs are disposed.
 */
export function fromTorchLayout(
  expected: ParamShapes,
  tensors: Readonly<Record<string, tf.Tensor>>,
  sameLayout: readonly string[] = [],
): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  for (const [key, t] of Object.entries(tensors)) {
    const want = expected[key];
    if (!want || sameLayout.includes(key) || want.length === 1) {
      out[key] = t;
      continue;
    }
    const squeezed = want.length === 2 && t.rank === 3 && t.shape[2] === 1 ? tf.squeeze(t, [2]) : t;
    if (!same(squeezed.shape, torchShape(want))) {
      // Leave it as it is: the strict load reports it as misshapen with both shapes.
      if (squeezed !== t) squeezed.dispose();
      out[key] = t;
      continue;
    }
    out[key] = want.length === 4
      ? tf.transpose(squeezed, [2, 3, 1, 0])
      : tf.transpose(squeezed, [1, 0]);
    if (squeezed !== t) squeezed.dispose();
    t.dispose();
  }
  return out;
}

/** Convert project-layout tensors to PyTorch layout (the inverse; used to export and to test). */
export function toTorchLayout(
  tensors: Readonly<Record<string, tf.Tensor>>,
  sameLayout: readonly string[] = [],
  conv1dKeys: (key: string) => boolean = () => false,
): Record<string, tf.Tensor> {
  const out: Record<string, tf.Tensor> = {};
  for (const [key, t] of Object.entries(tensors)) {
    if (sameLayout.includes(key) || t.rank === 1) out[key] = tf.clone(t);
    else if (t.rank === 4) out[key] = tf.transpose(t, [3, 2, 0, 1]);
    else if (t.rank === 2) {
      out[key] = tf.tidy(() => {
        const w = tf.transpose(t, [1, 0]);
        return conv1dKeys(key) ? tf.expandDims(w, 2) : w;
      });
    } else out[key] = tf.clone(t);
  }
  return out;
}

/**
 * Load model weights from a safetensors file: a project checkpoint (its EMA weights when it has
 * them, else its weights), or a bare file in PyTorch layout with the reference state_dict keys.
 * fp16 / bf16 files are widened to float32.
 * @throws one Error listing every missing, unexpected and misshapen key
 */
export async function loadWeights(
  path: string,
  expected: ParamShapes,
  opts: { readonly sameLayout?: readonly string[]; readonly prefer?: "ema" | "raw" } = {},
): Promise<Params> {
  const ck = await loadCheckpoint(path);
  const projectFile = ck.step !== undefined;
  const useEma = projectFile && (opts.prefer ?? "ema") === "ema" && Object.keys(ck.ema).length > 0;
  const chosen = useEma ? ck.ema : ck.params;
  const rest = { ...ck, params: useEma ? ck.params : {}, ema: useEma ? {} : ck.ema };
  disposeCheckpoint(rest);
  const tensors = projectFile ? chosen : fromTorchLayout(expected, chosen, opts.sameLayout);
  try {
    return loadParamsStrict(expected, tensors, `"${path}"`);
  } catch (e) {
    tf.dispose(Object.values(tensors));
    throw e;
  }
}
