// Image folders decoded with sharp (libvips), in the torchvision ImageFolder layout
// `root/<class>/<image>` or, for multi-site (multi-domain) data, `root/<site>/<class>/<image>`.
// Every listing is sorted by name, so a folder always loads in the same order.
import sharp from "sharp";
import { bytesToUnit, type Dataset, makeDataset } from "./descriptor.ts";
import { oneLine } from "../messages.ts";

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

// A folder's sorted subfolder and image names. Hidden entries are skipped; symlinks are followed,
// and a linked folder that resolves to the folder itself or one above it is a cycle. Faults are
// thrown as bare messages for `listImageFolder` to prefix.
interface Listing {
  readonly path: string;
  readonly dirs: string[];
  readonly images: string[];
  /** Real path -> path as reached, of this folder and every folder above it. */
  readonly ancestors: ReadonlyMap<string, string>;
}

function list(path: string, above: ReadonlyMap<string, string> = new Map()): Listing {
  const ancestors = new Map(above).set(Deno.realPathSync(path), path);
  const dirs: string[] = [], images: string[] = [];
  for (const e of Deno.readDirSync(path)) {
    if (e.name.startsWith(".")) continue;
    const child = `${path}/${e.name}`;
    let { isDirectory, isFile } = e;
    if (e.isSymlink) {
      try {
        ({ isDirectory, isFile } = Deno.statSync(child)); // follows the link
      } catch {
        throw new Error(`broken symlink "${child}"`);
      }
      const back = isDirectory ? ancestors.get(Deno.realPathSync(child)) : undefined;
      if (back !== undefined) throw new Error(`symlink cycle: "${child}" leads back to "${back}"`);
    }
    if (isDirectory) dirs.push(e.name);
    else if (isFile && isImage(e.name)) images.push(e.name);
  }
  return { path, dirs: dirs.sort(byName), images: images.sort(byName), ancestors };
}

const subfolders = (parent: Listing): Listing[] =>
  parent.dirs.map((d) => list(`${parent.path}/${d}`, parent.ancestors));

const NO_IMAGES = "has no .png/.jpg/.jpeg images";

// A class folder holds images only.
function checkClass(c: Listing): void {
  if (c.dirs.length > 0) {
    throw new Error(
      `class folder "${c.path}" holds folders (${c.dirs.map((d) => `"${d}"`).join(", ")}); ` +
        "expected root/<class>/<image> or root/<site>/<class>/<image>",
    );
  }
  if (c.images.length === 0) throw new Error(`class folder "${c.path}" ${NO_IMAGES}`);
}

// The layout of root's subfolders: classes hold images, sites hold class folders; never both.
function layoutOf(children: readonly Listing[]): "classes" | "sites" {
  for (const c of children) {
    if (c.images.length > 0 && c.dirs.length > 0) {
      throw new Error(
        `"${c.path}" holds both images and folders, so it is neither a class nor a site`,
      );
    }
  }
  const cls = children.find((c) => c.images.length > 0);
  const site = children.find((c) => c.dirs.length > 0);
  if (cls && site) {
    throw new Error(
      `"${cls.path}" holds images but "${site.path}" holds folders; expected every folder to be ` +
        "a class (root/<class>/<image>) or every one a site (root/<site>/<class>/<image>)",
    );
  }
  return site ? "sites" : "classes";
}

/**
 * The files of a folder with their labels and sites, without decoding anything. The layout is
 * `root/<class>/<image>` when root's folders hold images, `root/<site>/<class>/<image>` when they
 * hold folders. Symlinked images and folders are followed.
 *
 * @throws Error naming the folder at fault when `root` is unreadable or holds no class folders,
 * when the layout is ambiguous (a folder holding both images and folders, classes beside sites,
 * a class folder holding folders), when a class folder holds no images or a site no classes, and
 * on a broken symlink or a symlink cycle
 */
export function listImageFolder(
  root: string,
): { entries: ImageEntry[]; classes: string[]; sites?: string[] } {
  try {
    const top = list(root);
    if (top.dirs.length === 0) throw new Error("no class folders in it");
    if (top.images.length > 0) {
      throw new Error(`it holds images beside its folders; move them into class folders`);
    }
    const children = subfolders(top);
    if (layoutOf(children) === "classes") {
      children.forEach(checkClass);
      const entries = children.flatMap((c, label) =>
        c.images.map((f) => ({ path: `${c.path}/${f}`, label, site: 0 }))
      );
      return { entries, classes: top.dirs };
    }
    const perSite = children.map((s) => {
      if (s.dirs.length === 0) throw new Error(`site folder "${s.path}" has no class folders`);
      const classFolders = subfolders(s);
      classFolders.forEach(checkClass);
      return classFolders;
    });
    const classes = [...new Set(children.flatMap((s) => s.dirs))].sort(byName);
    const entries = perSite.flatMap((classFolders, site) =>
      classFolders.flatMap((c, k) =>
        c.images.map((f) => ({
          path: `${c.path}/${f}`,
          label: classes.indexOf(children[site].dirs[k]),
          site,
        }))
      )
    );
    return { entries, classes, sites: top.dirs };
  } catch (e) {
    throw new Error(`Cannot read image folder "${root}": ${oneLine((e as Error).message)}`);
  }
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
