// Fashion-MNIST (Xiao et al. 2017) from the IDX files of the Debian package
// dataset-fashion-mnist: 60,000 train and 10,000 test images, 28x28x1, ten clothing classes.
import { bytesToUnit, type Dataset, makeDataset } from "./descriptor.ts";
import { readIdx } from "./idx.ts";

/** Where `apt-get install dataset-fashion-mnist` puts the files. */
export const FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist";

/** Environment variable that overrides the default directory (an explicit argument wins). */
export const FASHION_MNIST_ENV = "FASHION_MNIST_DIR";

/** Class names in label order (from the dataset's README). */
export const FASHION_MNIST_CLASSES: readonly string[] = Object.freeze([
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
]);

const FILES = {
  train: ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"],
  test: ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
} as const;

function envDir(): string | undefined {
  try {
    return Deno.env.get(FASHION_MNIST_ENV) || undefined;
  } catch {
    return undefined; // no --allow-env: fall back to the default
  }
}

/** The directory read: `root` if given, else $FASHION_MNIST_DIR, else the Debian location. */
export function fashionMnistDir(root?: string): string {
  return root ?? envDir() ?? FASHION_MNIST_DEFAULT_DIR;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Load one split of Fashion-MNIST, images 28x28x1 in [-1, 1] in file order.
 *
 * @param split "train" (60,000) or "test" (10,000)
 * @param root directory holding the four .gz files; see `fashionMnistDir`
 * @throws Error naming `apt-get install dataset-fashion-mnist` when a file is missing, or the
 *   IDX parser's one-line error when a file is malformed
 */
export async function loadFashionMnist(split: "train" | "test", root?: string): Promise<Dataset> {
  const dir = fashionMnistDir(root);
  const [imagesFile, labelsFile] = FILES[split].map((f) => `${dir}/${f}`);
  for (const f of [imagesFile, labelsFile]) {
    if (!exists(f)) {
      const what = exists(dir) ? `file "${f}" is missing` : `directory "${dir}" does not exist`;
      throw new Error(
        `Cannot load Fashion-MNIST: ${what}; run \`apt-get install dataset-fashion-mnist\` or set ${FASHION_MNIST_ENV}`,
      );
    }
  }
  const [images, labels] = await Promise.all([readIdx(imagesFile), readIdx(labelsFile)]);
  const [n, h, w] = images.dims;
  if (images.dtype !== "uint8" || images.dims.length !== 3) {
    throw new Error(`Cannot load Fashion-MNIST: "${imagesFile}" is not a 3-D uint8 IDX file`);
  }
  if (labels.dtype !== "uint8" || labels.dims.length !== 1 || labels.dims[0] !== n) {
    throw new Error(`Cannot load Fashion-MNIST: "${labelsFile}" does not hold ${n} uint8 labels`);
  }
  return makeDataset({
    name: `fashion-mnist/${split}`,
    images: bytesToUnit(images.data),
    labels: Int32Array.from(labels.data),
    shape: [h, w, 1],
    classes: FASHION_MNIST_CLASSES,
  });
}
