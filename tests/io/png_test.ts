import assert from "node:assert/strict";
import * as tf from "@tensorflow/tfjs";
import sharp from "sharp";
import { join } from "node:path";
import { initEngine } from "../../lib/engine/mod.ts";
import { imageGrid, readPng, saveImageGrid, toByte } from "../../lib/io/png.ts";

await initEngine({ backend: "wasm", announce: false });

Deno.test("toByte() maps [-1, 1] onto 0..255 and clamps", () => {
  assert.deepEqual([-2, -1, 0, 1, 3].map(toByte), [0, 0, 128, 255, 255]);
});

Deno.test("imageGrid() places cells row-major with padding", () => {
  // 3 gray 2x2 images, 2 columns, pad 1: 2*(2+1)+1 = 7 wide, 2 rows -> 7 high.
  const data = new Float32Array(12);
  data.fill(1, 4, 8); // image 1 white
  data.fill(0, 8, 12); // image 2 mid-gray
  data.fill(-1, 0, 4); // image 0 black
  const g = imageGrid({ data, shape: [3, 2, 2, 1] }, { cols: 2, pad: 1, padValue: 50 });
  assert.deepEqual([g.width, g.height, g.channels], [7, 7, 1]);
  const at = (x: number, y: number) => g.data[y * g.width + x];
  assert.equal(at(0, 0), 50); // padding
  assert.equal(at(1, 1), 0); // image 0
  assert.equal(at(4, 2), 255); // image 1
  assert.equal(at(2, 5), 128); // image 2
  assert.equal(at(5, 5), 50); // empty fourth cell
});

Deno.test("saveImageGrid() writes a PNG that sharp reads back with the right size and pixels", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    await t.step("RGB from a tensor", async () => {
      const before = tf.memory().numTensors;
      const images = tf.tidy(() =>
        tf.tanh(tf.randomNormal([5, 4, 3, 3], 0, 1, "float32", 1))
      ) as tf.Tensor4D;
      const values = await images.data();
      const path = join(dir, "rgb.png");
      await saveImageGrid(path, images, { cols: 3, pad: 2 });
      const meta = await sharp(path).metadata();
      assert.deepEqual([meta.format, meta.width, meta.height, meta.channels], [
        "png",
        3 * 5 + 2,
        2 * 6 + 2,
        3,
      ]);
      const png = await readPng(path);
      // Image 4 sits in row 1, column 1: origin (2 + 5, 2 + 6); check its first row.
      for (let x = 0; x < 3; x++) {
        for (let c = 0; c < 3; c++) {
          const got = png.data[((2 + 6) * png.width + 7 + x) * 3 + c];
          assert.equal(got, toByte(values[((4 * 4) * 3 + x) * 3 + c]));
        }
      }
      images.dispose();
      assert.equal(tf.memory().numTensors, before, "no tensor leaks");
    });
    await t.step("gray from a Float32Array", async () => {
      const data = Float32Array.from({ length: 2 * 3 * 3 }, (_, i) => i / 9 - 1);
      const path = join(dir, "gray.png");
      await saveImageGrid(path, { data, shape: [2, 3, 3, 1] }, { cols: 2, pad: 0 });
      assert.equal((await sharp(path).metadata()).channels, 1, "stored as a gray PNG");
      const png = await readPng(path);
      assert.deepEqual([png.width, png.height, png.channels], [6, 3, 1]);
      assert.equal(png.data[0], toByte(data[0]));
      assert.equal(png.data[2 * 6 + 5], toByte(data[9 + 2 * 3 + 2]));
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("imageGrid() rejects bad batches", () => {
  assert.throws(() => imageGrid({ data: new Float32Array(0), shape: [0, 2, 2, 1] }), /empty batch/);
  assert.throws(
    () => imageGrid({ data: new Float32Array(8), shape: [1, 2, 2, 2] }),
    /1 or 3 channels, got 2/,
  );
  assert.throws(
    () => imageGrid({ data: new Float32Array(3), shape: [1, 2, 2, 1] }),
    /has 3 values/,
  );
});
