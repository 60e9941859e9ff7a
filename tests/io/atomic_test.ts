import assert from "node:assert/strict";
import { join } from "node:path";
import { writeFileAtomic } from "../../lib/io/atomic.ts";

const list = async (dir: string) =>
  (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();

Deno.test("writeFileAtomic() writes, replaces and creates parent directories", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "a", "b", "out.txt");
    await writeFileAtomic(path, "first");
    await writeFileAtomic(path, new TextEncoder().encode("second"));
    await writeFileAtomic(path, [new TextEncoder().encode("th"), new TextEncoder().encode("ird")]);
    assert.equal(await Deno.readTextFile(path), "third");
    assert.deepEqual(await list(join(dir, "a", "b")), ["out.txt"], "no temp file left behind");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function* failingChunks() {
  yield new TextEncoder().encode("half of the new ");
  throw new Error("disk full (simulated)");
}

Deno.test("writeFileAtomic() keeps the old file when a write fails midway", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "ckpt.safetensors");
    await writeFileAtomic(path, "old contents");
    await assert.rejects(() => writeFileAtomic(path, failingChunks()), /disk full/);
    assert.equal(await Deno.readTextFile(path), "old contents");
    assert.deepEqual(await list(dir), ["ckpt.safetensors"], "temp file removed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
