// Image folders decoded with sharp (libvips), in the torchvision ImageFolder layout
// `root/<class>/<image>` or, for multi-site (multi-domain) data, `root/<site>/<class>/<image>`.
// Every listing is sorted by name, so a folder always loads in the same order.
import sharp from "sharp";
import { bytesToUnit, type Dataset, makeDataset } from "./descriptor.ts";
import { oneLine } from "./idx.ts";

/** File extensions read as images (case-insensitive). */
export const IMAGE_EXTENSIONS: readonly string[] = [".png", ".jpg", ".jpeg"];

export interface ImageFolderOptions {
  /** 1 for grayscale, 3 for RGB (alpha is dropped). @default 3 */
  readonly channels?: 1 | 3;
  /**
   * Resize the shorter side to `size` (bicubic) and center-crop to `size` x `size`. Without it
   * every image must already have the size of the first one.
   */
  readonly size?: number;
  /** Images decoded at once (sharp decodes on its own thread pool). @default 8 */
  readonly concurrency?: number;
}

/** One file of an image folder. */
export interface ImageEntry {
  readonly path: string;
  readonly label: number;
  readonly site: number;
}

const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

function isImage(name: string): boolean {
  const lower = name.toLowerCase();
  return IMAGE_EXTENSIONS.some((ext) => lower.endsWith(ext));
}

// Sorted subdirectory and image names of a directory; hidden entries are skipped.
function list(dir: string): { dirs: string[]; images: string[] } {
  const dirs: string[] = [], images: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    if (e.name.startsWith(".")) continue;
    if (e.isDirectory) dirs.push(e.name);
    else if (e.isFile && isImage(e.name)) images.push(e.name);
  }
  return { dirs: dirs.sort(byName), images: images.sort(byName) };
}

/**
 * The files of a folder with their labels and sites, without decoding anything. The layout has
 * sites when no top-level folder holds images directly but some hold folders.
 *
 * @throws Error when `root` is not a readable folder or holds no class folders
 */
export function listImageFolder(
  root: string,
): { entries: ImageEntry[]; classes: string[]; sites?: string[] } {
  let top;
  try {
    top = list(root);
  } catch (e) {
    throw new Error(`Cannot read image folder "${root}": ${oneLine((e as Error).message)}`);
  }
  if (top.dirs.length === 0) {
    throw new Error(`Cannot read image folder "${root}": no class folders in it`);
  }
  const children = top.dirs.map((d) => list(`${root}/${d}`));
  const hasSites = children.every((c) => c.images.length === 0) &&
    children.some((c) => c.dirs.length > 0);
  if (!hasSites) {
    const entries = children.flatMap((c, label) =>
      c.images.map((f) => ({ path: `${root}/${top.dirs[label]}/${f}`, label, site: 0 }))
    );
    return { entries, classes: top.dirs };
  }
  const classes = [...new Set(children.flatMap((c) => c.dirs))].sort(byName);
  const entries = children.flatMap((c, site) =>
    c.dirs.flatMap((cls) =>
      list(`${root}/${top.dirs[site]}/${cls}`).images.map((f) => ({
        path: `${root}/${top.dirs[site]}/${cls}/${f}`,
        label: classes.indexOf(cls),
        site,
      }))
    )
  );
  return { entries, classes, sites: top.dirs };
}

/**
 * Decode one image file to raw bytes, `channels` per pixel, optionally resized and cropped.
 *
 * @throws Error with a one-line message naming the file when it cannot be decoded
 */
export async function decodeImage(
  path: string,
  channels: 1 | 3,
  size?: number,
): Promise<{ data: Uint8Array; width: number; height: number }> {
  try {
    // Bytes rather than a path: libvips would otherwise cache decodes keyed by file name.
    let img = sharp(await Deno.readFile(path), { failOn: "warning" }).removeAlpha();
    img = channels === 1 ? img.greyscale() : img.toColourspace("srgb");
    // fit "cover" scales the shorter side to `size`; position "centre" crops the longer one.
    if (size) img = img.resize(size, size, { fit: "cover", position: "centre", kernel: "cubic" });
    const { data, info } = await img.raw({ depth: "uchar" }).toBuffer({ resolveWithObject: true });
    if (info.channels !== channels) {
      throw new Error(`decoded ${info.channels} channels, expected ${channels}`);
    }
    return {
      data: new Uint8Array(data.buffer, data.byteOffset, data.length),
      width: info.width,
      height: info.height,
    };
  } catch (e) {
    throw new Error(`Cannot read image "${path}": ${oneLine((e as Error).message)}`);
  }
}

/**
 * Load an image folder into memory, values in [-1, 1]. Samples are ordered by site, class, then
 * file name; `name` is `root`.
 *
 * @example
 * ```ts
 * const ds = await loadImageFolder("data/pets", { channels: 3, size: 64 });
 * ```
 * @throws Error naming the folder or the file at fault
 */
export async function loadImageFolder(
  root: string,
  opts: ImageFolderOptions = {},
): Promise<Dataset> {
  const channels = opts.channels ?? 3;
  const batch = opts.concurrency ?? 8;
  const { entries, classes, sites } = listImageFolder(root);
  if (entries.length === 0) {
    throw new Error(`Cannot read image folder "${root}": no .png/.jpg/.jpeg images in it`);
  }
  const pixels: Uint8Array[] = [];
  let hw: [number, number] | undefined;
  for (let start = 0; start < entries.length; start += batch) {
    const chunk = entries.slice(start, start + batch);
    const decoded = await Promise.all(chunk.map((e) => decodeImage(e.path, channels, opts.size)));
    decoded.forEach((d, i) => {
      hw ??= [d.height, d.width];
      if (d.height !== hw[0] || d.width !== hw[1]) {
        throw new Error(
          `Cannot read image "${chunk[i].path}": size ${d.width}x${d.height} differs from ${
            hw[1]
          }x${hw[0]}; pass a size to resize`,
        );
      }
      pixels.push(d.data);
    });
  }
  const per = hw![0] * hw![1] * channels;
  const bytes = new Uint8Array(entries.length * per);
  pixels.forEach((p, i) => bytes.set(p, i * per));
  return makeDataset({
    name: root,
    images: bytesToUnit(bytes),
    labels: Int32Array.from(entries, (e) => e.label),
    shape: [hw![0], hw![1], channels],
    classes,
    ...(sites ? { sites: { names: sites, ids: Int32Array.from(entries, (e) => e.site) } } : {}),
  });
}
