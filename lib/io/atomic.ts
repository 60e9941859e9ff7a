// Atomic file writes: a reader (or a crash) sees either the old file or the whole new one, never a
// partial write. Write a temp file in the target's directory (rename is atomic only within one
// file system), fsync it, then rename it over the target.
import { basename, dirname, join } from "node:path";

/** Bytes to write: whole, or as chunks (a failing chunk source aborts the write cleanly). */
export type WriteData = Uint8Array | string | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

/**
 * Write `data` to `path` atomically, creating the parent directory if needed. On failure the
 * temp file is removed and any old file at `path` is left untouched.
 * @example
 * ```ts
 * await writeFileAtomic("results/probe/run.json", JSON.stringify(result));
 * ```
 */
export async function writeFileAtomic(path: string, data: WriteData): Promise<void> {
  const dir = dirname(path);
  await Deno.mkdir(dir, { recursive: true });
  const chunks = typeof data === "string"
    ? [new TextEncoder().encode(data)]
    : data instanceof Uint8Array
    ? [data]
    : data;
  const tmp = join(dir, `.${basename(path)}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`);
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      for await (const bytes of chunks) {
        let off = 0;
        while (off < bytes.length) off += await file.write(bytes.subarray(off));
      }
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
  await syncDir(dir);
}

// Make the rename itself durable; not every platform lets a directory be opened, so best effort.
async function syncDir(dir: string): Promise<void> {
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch { /* best effort */ }
}
