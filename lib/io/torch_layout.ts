// Loading reference PyTorch weights (e.g. guided-diffusion's 256x256_diffusion_uncond.pt, or a
// DiT checkpoint, converted to safetensors with their state_dict keys) into the project's tfjs
// layout. Names stay as they are; only layouts change, by the parameter's rank in the project:
//   rank 4  conv kernel   torch [out, in, kh, kw]          → [kh, kw, in, out]
//   rank 2  linear weight torch [out, in] or [out, in, 1]  → [in, out]   (1×1 conv1d: attention qkv, proj_out)
//   rank 1  bias / norm   unchanged
// Embedding tables are [rows, dim] in both frameworks: the model names them in `sameLayout`.
// Fixed buffers of a reference state_dict (DiT's `pos_embed`) are checked and dropped (`fixed`).
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

/** Options of `loadWeights`. */
export interface LoadWeightsOptions {
  /**
   * Keys whose PyTorch layout equals ours (embedding tables [rows, dim]). They must be named:
   * the shape rule alone would transpose a square table.
   */
  readonly sameLayout?: readonly string[];
  /** Which weights of a project checkpoint to take. @default "ema" */
  readonly prefer?: "ema" | "raw";
  /**
   * Fixed buffers that a reference state_dict holds but the model computes (DiT's `pos_embed`,
   * a non-trainable nn.Parameter): key → expected values, flattened. Each one in the file is
   * checked against them (max |difference| within `fixedAtol`) and dropped; a file without it
   * loads too.
   */
  readonly fixed?: Readonly<Record<string, Float32Array>>;
  /** Largest absolute difference accepted for a fixed buffer. @default 1e-5 */
  readonly fixedAtol?: number;
}

/**
 * Check the fixed buffers among `tensors` against their expected values; returns the problems
 * found (the tensors are left alone).
 */
function fixedProblems(
  tensors: Readonly<Record<string, tf.Tensor>>,
  fixed: Readonly<Record<string, Float32Array>>,
  atol: number,
): string[] {
  const problems: string[] = [];
  for (const [key, want] of Object.entries(fixed)) {
    const t = tensors[key];
    if (t === undefined) continue;
    if (t.size !== want.length) {
      problems.push(
        `"${key}" has ${t.size} values [${t.shape.join(", ")}], expected ${want.length}`,
      );
      continue;
    }
    const got = t.dataSync();
    let worst = 0;
    for (let i = 0; i < want.length; i++) {
      const d = Math.abs(got[i] - want[i]);
      worst = d > worst || Number.isNaN(d) ? d : worst;
    }
    if (!(worst <= atol)) {
      problems.push(
        `"${key}" differs from its expected value by ${worst} (max abs, tolerance ${atol})`,
      );
    }
  }
  return problems;
}

/**
 * Load model weights from a safetensors file: a project checkpoint (its EMA weights when it has
 * them, else its weights), or a bare file in PyTorch layout with the reference state_dict keys.
 * fp16 / bf16 files are widened to float32. Fixed buffers named in `opts.fixed` are checked and
 * dropped before the strict key check.
 * @throws one Error listing every missing, unexpected and misshapen key, or every fixed buffer
 * that differs from its expected value
 */
export async function loadWeights(
  path: string,
  expected: ParamShapes,
  opts: LoadWeightsOptions = {},
): Promise<Params> {
  const ck = await loadCheckpoint(path);
  const projectFile = ck.step !== undefined;
  const useEma = projectFile && (opts.prefer ?? "ema") === "ema" && Object.keys(ck.ema).length > 0;
  const chosen = useEma ? ck.ema : ck.params;
  const rest = { ...ck, params: useEma ? ck.params : {}, ema: useEma ? {} : ck.ema };
  disposeCheckpoint(rest);
  const fixed = opts.fixed ?? {};
  const problems = fixedProblems(chosen, fixed, opts.fixedAtol ?? 1e-5);
  if (problems.length > 0) {
    tf.dispose(Object.values(chosen));
    throw new Error(`Fixed buffers in "${path}" are wrong: ${problems.join("; ")}`);
  }
  const kept: Record<string, tf.Tensor> = {};
  for (const [key, t] of Object.entries(chosen)) {
    if (Object.hasOwn(fixed, key)) t.dispose();
    else kept[key] = t;
  }
  const tensors = projectFile ? kept : fromTorchLayout(expected, kept, opts.sameLayout);
  try {
    return loadParamsStrict(expected, tensors, `"${path}"`);
  } catch (e) {
    tf.dispose(Object.values(tensors));
    throw e;
  }
}
