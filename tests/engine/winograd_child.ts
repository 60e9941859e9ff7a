// Child of tests/engine/blas_test.ts: every pass of a 3×3 conv on oneDNN's Winograd kernels at
// shapes whose buffers, left 16-byte aligned, made those kernels' aligned non-temporal stores
// fault (a segmentation fault: nothing to catch, hence a process of its own). Prints one line per
// shape and the Winograd passes run so far.
import * as tf from "@tensorflow/tfjs";
import { initEngine } from "../../lib/engine/mod.ts";
import { loadOneDnn } from "../../lib/engine/blas/onednn.ts";

await initEngine({ backend: "wasm", announce: false });
const dnn = loadOneDnn();
if (!dnn) throw new Error("winograd_child.ts: no oneDNN");
dnn.winograd = "always";
const shapes = [[1, 7, 128, 128], [32, 7, 128, 128], [16, 14, 64, 64], [8, 28, 64, 64], [
  2,
  14,
  64,
  128,
], [
  3,
  28,
  64,
  32,
]];
for (const [n, hw, c, o] of shapes) {
  const x = tf.randomNormal([n, hw, hw, c]) as tf.Tensor4D;
  const w = tf.randomNormal([3, 3, c, o]) as tf.Tensor4D;
  const f = (a: tf.Tensor, k: tf.Tensor) =>
    tf.sum(tf.conv2d(a as tf.Tensor4D, k as tf.Tensor4D, 1, "same"));
  const grads = tf.grads(f)([x, w]);
  grads.forEach((g) => g.dataSync());
  console.log(`${n}×${hw}×${hw}×${c}→${o}: ${dnn.winogradCalls}`);
  tf.dispose([x, w, ...grads]);
}
