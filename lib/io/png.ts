// Image grids as PNG (sharp): a batch of NHWC images in [-1, 1] laid out row-major in `cols`
// columns, with `pad` pixels of `padValue` between and around cells (torchvision make_grid).
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { writeFileAtomic } from "./atomic.ts";

/** Images as plain data: `shape` is [N, H, W, C] with C = 1 (gray) or 3 (RGB). */
export interface ImageBatch {
  readonly data: Float32Array;
  readonly shape: readonly [number, number, number, number];
}

export interface GridOptions {
  /** Cells per row. @default ceil(sqrt(N)) */
  readonly cols?: number;
  /** Pixels between and around cells. @default 2 */
  readonly pad?: number;
  /** Padding colour in [0, 255]. @default 0 */
  readonly padValue?: number;
}

/** A raw 8-bit image: rows of `width * channels` bytes. */
export interface RawImage {
  readonly data: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3;
}

/** [-1, 1] -> {0..255}, clamped: the inverse of x / 127.5 - 1. */
export const toByte = (x: number): number =>
  Math.min(255, Math.max(0, Math.round((x + 1) * 127.5)));

/**
 * Lay out a batch of images as one grid image (pure; no I/O).
 * @throws if the batch is empty or has a channel count other than 1 or 3
 */
export function imageGrid(images: ImageBatch, opts: GridOptions = {}): RawImage {
  const [n, h, w, c] = images.shape;
  if (n < 1) throw new Error("Cannot make an image grid of an empty batch");
  if (c !== 1 && c !== 3) throw new Error(`Image grids need 1 or 3 channels, got ${c}`);
  if (images.data.length !== n * h * w * c) {
    throw new Error(
      `Image data has ${images.data.length} values, shape [${images.shape}] needs ${n * h * w * c}`,
    );
  }
  const cols = Math.min(n, opts.cols ?? Math.ceil(Math.sqrt(n)));
  const pad = opts.pad ?? 2;
  const rows = Math.ceil(n / cols);
  const width = cols * (w + pad) + pad;
  const height = rows * (h + pad) + pad;
  const data = new Uint8Array(width * height * c).fill(opts.padValue ?? 0);
  for (let i = 0; i < n; i++) {
    const x0 = pad + (i % cols) * (w + pad);
    const y0 = pad + Math.floor(i / cols) * (h + pad);
    for (let y = 0; y < h; y++) {
      const src = ((i * h + y) * w) * c;
      const dst = ((y0 + y) * width + x0) * c;
      for (let k = 0; k < w * c; k++) data[dst + k] = toByte(images.data[src + k]);
    }
  }
  return { data, width, height, channels: c };
}

/**
 * Save a batch of NHWC images in [-1, 1] as a PNG grid (gray for C = 1, RGB for C = 3),
 * atomically. Reads a tensor's values without disposing it.
 * @example
 * ```ts
 * await saveImageGrid("results/sample/grid.png", samples, { cols: 8 });
 * ```
 */
export async function saveImageGrid(
  path: string,
  images: tf.Tensor4D | ImageBatch,
  opts: GridOptions = {},
): Promise<void> {
  const batch: ImageBatch = images instanceof tf.Tensor
    ? { data: Float32Array.from(await images.data()), shape: images.shape }
    : images;
  const grid = imageGrid(batch, opts);
  // sharp converts to sRGB on output unless told otherwise: keep 1-channel grids gray.
  const png = await sharp(grid.data, {
    raw: { width: grid.width, height: grid.height, channels: grid.channels },
  }).toColourspace(grid.channels === 1 ? "b-w" : "srgb").png().toBuffer();
  await writeFileAtomic(path, new Uint8Array(png.buffer, png.byteOffset, png.byteLength));
}

/** Read a PNG back as raw 8-bit pixels (1 channel for gray, 3 for colour; alpha dropped). */
export async function readPng(path: string): Promise<RawImage> {
  const { space } = await sharp(path).metadata();
  const { data, info } = await sharp(path).removeAlpha().toColourspace(
    space === "b-w" ? "b-w" : "srgb",
  ).raw()
    .toBuffer({ resolveWithObject: true });
  return {
    data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    width: info.width,
    height: info.height,
    channels: info.channels as 1 | 3,
  };
}
