import assert from "node:assert/strict";
import { join } from "node:path";
import { readRawArray, writeRawArray } from "../../lib/io/raw_array.ts";
import { writeSafetensors } from "../../lib/io/safetensors.ts";

Deno.test("writeRawArray() and readRawArray() round trip data, shape and metadata", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "samples.safetensors");
    const data = Float32Array.from({ length: 24 }, (_, i) => Math.sin(i));
    await writeRawArray(path, data, [2, 3, 4, 1], { model: "tiny" });
    const r = await readRawArray(path);
    assert.deepEqual(r.shape, [2, 3, 4, 1]);
    assert.deepEqual(r.data, data);
    assert.deepEqual(r.metadata, { model: "tiny" });
    await assert.rejects(() => writeRawArray(path, data, [5]), /shape \[5\] but 24 values/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readRawArray() names the file when it holds no data tensor", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "other.safetensors");
    await writeSafetensors(path, {
      labels: { dtype: "I32", shape: [1], data: new Int32Array([1]) },
    });
    await assert.rejects(
      () => readRawArray(path),
      /"[^"]*other\.safetensors" has no float tensor "data"/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
