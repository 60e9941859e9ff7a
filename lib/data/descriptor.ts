// The dataset descriptor every loader returns and every function in dataset.ts takes. It lives
// apart from dataset.ts so that the loaders can build descriptors without importing the module
// that imports them (loadDataset).

/** Per-sample site (domain) ids for multi-site image folders, `root/<site>/<class>/...`. */
export interface Sites {
  /** Site names, sorted; `ids` index into them. */
  readonly names: readonly string[];
  /** Site id of each sample, length N. */
  readonly ids: Int32Array;
}

/**
 * An immutable in-memory image dataset. The descriptor and `classes` are frozen; the typed arrays
 * cannot be frozen in JS, so treat them as read-only: every function returns fresh arrays.
 */
export interface Dataset {
  /** E.g. `mnist/train`, `fashion-mnist/test`, a folder path. */
  readonly name: string;
  /** N*H*W*C values, NHWC, in [-1, 1]. */
  readonly images: Float32Array;
  /** N class ids in [0, classes.length). */
  readonly labels: Int32Array;
  /** [H, W, C] of one image. */
  readonly shape: readonly [number, number, number];
  /** Class names; label k is `classes[k]`. */
  readonly classes: readonly string[];
  readonly sites?: Sites;
}

/**
 * Validate the fields of a dataset and freeze them into a descriptor.
 *
 * @throws Error when the array lengths disagree or a label is out of range
 */
export function makeDataset(d: Dataset): Dataset {
  const [h, w, c] = d.shape;
  const n = d.labels.length;
  const where = `Dataset "${d.name}"`;
  if (![h, w, c].every((v) => Number.isInteger(v) && v > 0)) {
    throw new Error(`${where}: bad image shape [${d.shape.join(", ")}]`);
  }
  if (d.images.length !== n * h * w * c) {
    throw new Error(
      `${where}: ${d.images.length} image values for ${n} labels of shape [${h}, ${w}, ${c}]`,
    );
  }
  for (let i = 0; i < n; i++) {
    const y = d.labels[i];
    if (y < 0 || y >= d.classes.length) {
      throw new Error(`${where}: label ${y} of sample ${i} is outside [0, ${d.classes.length})`);
    }
  }
  if (d.sites && d.sites.ids.length !== n) {
    throw new Error(`${where}: ${d.sites.ids.length} site ids for ${n} samples`);
  }
  const sites = d.sites &&
    Object.freeze({ names: Object.freeze([...d.sites.names]), ids: d.sites.ids });
  return Object.freeze({
    name: d.name,
    images: d.images,
    labels: d.labels,
    shape: Object.freeze([h, w, c] as const),
    classes: Object.freeze([...d.classes]),
    ...(sites ? { sites } : {}),
  });
}

/** Number of samples. */
export function count(ds: Dataset): number {
  return ds.labels.length;
}

/** Map a byte in [0, 255] to [-1, 1] (x / 127.5 - 1, the DDPM/ADM convention). */
export function byteToUnit(b: number): number {
  return b / 127.5 - 1;
}

const UNIT = Float32Array.from({ length: 256 }, (_, b) => byteToUnit(b));

/** Map bytes to [-1, 1] through a 256-entry table (fast on tens of millions of pixels). */
export function bytesToUnit(bytes: ArrayLike<number>): Float32Array {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = UNIT[bytes[i]];
  return out;
}
