// Raw float32 arrays on disk (generated samples, features for later metrics) as a single-tensor
// safetensors file: tensor "data" plus string metadata. Readable from Python with
// `safetensors.numpy.load_file(path)["data"]`.
import { readSafetensors, writeSafetensors } from "./safetensors.ts";

/** The tensor name inside a raw-array file. */
export const RAW_ARRAY_KEY = "data";

export interface RawArray {
  readonly data: Float32Array;
  readonly shape: number[];
  readonly metadata: Record<string, string>;
}

/**
 * Write a float32 array with its shape (and optional string metadata) atomically.
 * @throws if `shape` does not match the data length
 */
export async function writeRawArray(
  path: string,
  data: Float32Array,
  shape: readonly number[],
  metadata: Readonly<Record<string, string>> = {},
): Promise<void> {
  await writeSafetensors(path, { [RAW_ARRAY_KEY]: { dtype: "F32", shape, data } }, metadata);
}

/**
 * Read an array written by `writeRawArray` (any float dtype is returned as float32).
 * @throws one-line Error naming the file if it is corrupt or holds no float "data" tensor
 */
export async function readRawArray(path: string): Promise<RawArray> {
  const { tensors, metadata } = await readSafetensors(path);
  const t = tensors[RAW_ARRAY_KEY];
  if (!t || !(t.data instanceof Float32Array)) {
    throw new Error(`Raw array file "${path}" has no float tensor "${RAW_ARRAY_KEY}"`);
  }
  return { data: t.data, shape: t.shape, metadata };
}
