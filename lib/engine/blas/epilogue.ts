// Bias and activation applied in place after a GEMM (the "fused" part of _FusedMatMul and
// FusedConv2D), with tfjs's broadcasting of bias and PReLU weights against the output.

/** Activations tfjs passes to fused kernels (tfjs-core ops/fused_types.ts). */
export const ACTIVATIONS = [
  "linear",
  "relu",
  "relu6",
  "prelu",
  "leakyrelu",
  "sigmoid",
  "elu",
] as const;
export type Activation = (typeof ACTIVATIONS)[number];

/** True when `a` is an activation the epilogue implements. */
export function isActivation(a: unknown): a is Activation {
  return (ACTIVATIONS as readonly unknown[]).includes(a);
}

/**
 * An operand read per output element: absent, one number, one value per last-axis position
 * (`row`, length L), or a value per element (`full`, the output's size).
 */
export type Operand =
  | { readonly kind: "none" }
  | { readonly kind: "scalar"; readonly value: number }
  | { readonly kind: "row"; readonly values: Float32Array }
  | { readonly kind: "full"; readonly values: Float32Array };

export const NONE: Operand = { kind: "none" };

/**
 * Broadcast `values` of `shape` against `outShape` (numpy rules, right aligned). Copies the
 * values off the wasm heap, so the result survives later allocations. Undefined when the shapes
 * do not broadcast to exactly `outShape`.
 */
export function broadcastOperand(
  values: Float32Array,
  shape: readonly number[],
  outShape: readonly number[],
): Operand | undefined {
  let s = [...shape];
  while (s.length > 0 && s[0] === 1) s = s.slice(1); // leading ones never matter
  if (s.length > outShape.length) return undefined;
  const r = outShape.length;
  const padded = [...new Array(r - s.length).fill(1), ...s];
  for (let i = 0; i < r; i++) {
    if (padded[i] !== 1 && padded[i] !== outShape[i]) return undefined;
  }
  if (values.length === 1) return { kind: "scalar", value: values[0] };
  const last = outShape[r - 1];
  if (s.length === 1 && s[0] === last) return { kind: "row", values: values.slice() };
  // General case: materialise the broadcast (rare: per-example biases and the like).
  let total = 1;
  for (const d of outShape) total *= d;
  const strides = new Array<number>(r);
  for (let i = r - 1, st = 1; i >= 0; i--) {
    strides[i] = padded[i] === 1 ? 0 : st;
    st *= padded[i];
  }
  const full = new Float32Array(total);
  const idx = new Array<number>(r).fill(0);
  let src = 0;
  for (let o = 0; o < total; o++) {
    full[o] = values[src];
    for (let d = r - 1; d >= 0; d--) {
      idx[d]++;
      src += strides[d];
      if (idx[d] < outShape[d]) break;
      src -= strides[d] * outShape[d];
      idx[d] = 0;
    }
  }
  return { kind: "full", values: full };
}

function addOperand(out: Float32Array, start: number, end: number, L: number, op: Operand) {
  switch (op.kind) {
    case "none":
      return;
    case "scalar": {
      const v = op.value;
      for (let i = start; i < end; i++) out[i] += v;
      return;
    }
    case "row": {
      const v = op.values;
      for (let i = start; i < end; i += L) {
        for (let c = 0; c < L; c++) out[i + c] += v[c];
      }
      return;
    }
    case "full": {
      const v = op.values;
      for (let i = start; i < end; i++) out[i] += v[i];
      return;
    }
  }
}

function prelu(out: Float32Array, start: number, end: number, L: number, op: Operand) {
  switch (op.kind) {
    case "none":
      return; // tfjs treats missing PReLU weights as identity
    case "scalar": {
      const a = op.value;
      for (let i = start; i < end; i++) if (out[i] < 0) out[i] *= a;
      return;
    }
    case "row": {
      const a = op.values;
      for (let i = start; i < end; i += L) {
        for (let c = 0; c < L; c++) if (out[i + c] < 0) out[i + c] *= a[c];
      }
      return;
    }
    case "full": {
      const a = op.values;
      for (let i = start; i < end; i++) if (out[i] < 0) out[i] *= a[i];
      return;
    }
  }
}

/** What follows the GEMM: bias, then activation (with its parameters). */
export interface Epilogue {
  readonly bias: Operand;
  readonly activation: Activation;
  readonly prelu: Operand;
  readonly leakyreluAlpha: number;
}

/** True when the epilogue changes nothing. */
export function isIdentity(e: Epilogue): boolean {
  return e.bias.kind === "none" && e.activation === "linear";
}

/**
 * Apply the epilogue to out[start, end), where indices are positions in the whole output,
 * start and end are multiples of the last-axis length L.
 */
export function applyEpilogue(
  out: Float32Array,
  start: number,
  end: number,
  L: number,
  e: Epilogue,
): void {
  addOperand(out, start, end, L, e.bias);
  switch (e.activation) {
    case "linear":
      return;
    case "relu":
      for (let i = start; i < end; i++) if (out[i] < 0) out[i] = 0;
      return;
    case "relu6":
      for (let i = start; i < end; i++) {
        const v = out[i];
        out[i] = v < 0 ? 0 : v > 6 ? 6 : v;
      }
      return;
    case "leakyrelu": {
      const a = e.leakyreluAlpha;
      for (let i = start; i < end; i++) if (out[i] < 0) out[i] *= a;
      return;
    }
    case "prelu":
      prelu(out, start, end, L, e.prelu);
      return;
    case "sigmoid":
      for (let i = start; i < end; i++) out[i] = 1 / (1 + Math.exp(-out[i]));
      return;
    case "elu":
      for (let i = start; i < end; i++) {
        const v = out[i];
        if (v < 0) out[i] = Math.expm1(v);
      }
      return;
  }
}
