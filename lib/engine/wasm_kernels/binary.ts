// Add, Sub and Multiply on float32 for wasm, in C on OpenMP's threads (../native/binary.c; the
// same bits as the built-in kernels, which run on one thread), for the shapes activations take:
// equal shapes, and one operand repeated along a block of axes (a bias [C] on [N, H, W, C], an
// embedding [N, 1, 1, C], a gate [N, 1, D] on [N, T, D]). Other shapes, dtypes, short rows and
// the case without the compiled kernels go to the built-in kernels.
import * as tf from "@tensorflow/tfjs";
import { runBuiltin } from "./builtins.ts";
import { asWasmBackend, f32View } from "../blas/heap.ts";
import { nativeKernels } from "../native_kernels.ts";

/**
 * out [P, Q, R] = a op b, each operand whole (`full`) or [P, 1, R], repeated along Q. For equal
 * shapes both are whole and R is only the length of a row the threads share out.
 */
export interface BinaryLayout {
  readonly P: number;
  readonly Q: number;
  readonly R: number;
  readonly aFull: boolean;
  readonly bFull: boolean;
}

const prod = (xs: readonly number[]) => xs.reduce((p, d) => p * d, 1);
// Rows of equal-shape operands: at least this long, so the per-row index arithmetic vanishes.
const ROW = 1024;
// A repeated operand's rows shorter than this go to the built-in kernel (a scalar, [N, 1]).
const MIN_ROW = 8;

/** The layout of a op b with shapes `a`, `b`; undefined where it is not one of those cases. */
export function binaryLayout(a: readonly number[], b: readonly number[]): BinaryLayout | undefined {
  const out = outShape(a, b);
  const pad = (s: readonly number[]) => [...Array(out.length - s.length).fill(1), ...s];
  const [pa, pb] = [pad(a), pad(b)];
  const aFull = pa.every((d, i) => d === out[i]), bFull = pb.every((d, i) => d === out[i]);
  if (aFull && bFull) {
    let r = out.length;
    while (r > 0 && prod(out.slice(r)) < ROW) r--;
    const R = prod(out.slice(r));
    return { P: 1, Q: R ? prod(out) / R : 0, R, aFull, bFull };
  }
  if (aFull === bFull) return undefined; // both repeated: a general broadcast
  const part = aFull ? pb : pa;
  // Axes of size > 1 read as kept (k) or repeated (r); the pattern must be k* r* k*.
  const kinds = out.flatMap((d, i) => (d === 1 ? [] : [part[i] === d ? "k" : "r"]));
  const pattern = kinds.join("");
  const m = /^(k*)(r+)(k*)$/.exec(pattern);
  if (!m) return undefined;
  const sizes = out.filter((d) => d > 1);
  const P = prod(sizes.slice(0, m[1].length));
  const Q = prod(sizes.slice(m[1].length, m[1].length + m[2].length));
  const R = prod(sizes.slice(m[1].length + m[2].length));
  return R < MIN_ROW ? undefined : { P, Q, R, aFull, bFull };
}

/** The kernel for `name`: `op` numbers it for ../native/binary.c (0 add, 1 sub, 2 multiply). */
function binaryKernel(name: string, op: number): tf.KernelFunc {
  return (args) => {
    const { a, b } = args.inputs as unknown as { a: tf.TensorInfo; b: tf.TensorInfo };
    const native = nativeKernels();
    const layout = native && a.dtype === "float32" && b.dtype === "float32"
      ? binaryLayout(a.shape, b.shape)
      : undefined;
    if (!native || !layout) return runBuiltin(name, args) as tf.TensorInfo;
    const back = asWasmBackend(args.backend);
    const out = back.makeOutput(outShape(a.shape, b.shape), "float32");
    const { P, Q, R } = layout;
    if (P * Q * R > 0) {
      // Views after makeOutput, which may grow the heap.
      native.binary(op, f32View(back, a), f32View(back, b), f32View(back, out), layout);
    }
    return out;
  };
}

const outShape = (a: readonly number[], b: readonly number[]) =>
  tf.backend_util.assertAndGetBroadcastShape(a.slice(), b.slice());

const config = (kernelName: string, op: number): tf.KernelConfig => ({
  kernelName,
  backendName: "wasm",
  kernelFunc: binaryKernel(kernelName, op),
});

/** Add, Sub and Multiply on wasm: threaded C for activation shapes, built-ins otherwise. */
export const addConfig = config(tf.Add, 0);
export const subConfig = config(tf.Sub, 1);
export const multiplyConfig = config(tf.Multiply, 2);
