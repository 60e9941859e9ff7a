// Atomic file writes: a reader (or a crash) sees either the old file or the whole new one, never a
// partial write. Write a temp file in the target's directory (rename is atomic only within one
// file system), fsync it, then rename it over the target. A writer that is killed (SIGKILL, OOM,
// power loss) leaves its temp file behind; `removeStaleTemps` clears those of dead writers.
import { basename, dirname, join } from "node:path";
import process from "node:process";
import { oneLine } from "../messages.ts";

/** Bytes to write: whole, or as chunks (a failing chunk source aborts the write cleanly). */
export type WriteData = Uint8Array | string | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

// `.<name>.<pid>.<8 hex>.tmp`: hidden, and carrying the writer's pid for `removeStaleTemps`.
const tempName = (target: string) =>
  `.${basename(target)}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/**
 * Write `data` to `path` atomically, creating the parent directory if needed. On every failure
 * (the folder, the temp file, a write, the fsync or the rename) the temp file is removed and any
 * old file at `path` is left untouched.
 *
 * @throws Error `Cannot write "<path>": <fault>` (one line; the original error is its `cause`),
 * e.g. on a full disk or a permission error
 * @example
 * ```ts
 * await writeFileAtomic("results/probe/run.json", JSON.stringify(result));
 * ```
 */
export async function writeFileAtomic(path: string, data: WriteData): Promise<void> {
  const dir = dirname(path);
  const chunks = typeof data === "string"
    ? [new TextEncoder().encode(data)]
    : data instanceof Uint8Array
    ? [data]
    : data;
  const tmp = join(dir, tempName(path));
  let created = false;
  try {
    await Deno.mkdir(dir, { recursive: true });
    const file = await Deno.open(tmp, { write: true, createNew: true });
    created = true;
    try {
      // The lock tells `removeStaleTemps` that this writer is alive; it is taken before the first
      // byte and held until after the rename, so an unlocked temp file with bytes in it has lost
      // its writer. Waiting (not trying) rides out a checker's momentary probe of the lock. A
      // file system without locks still gets the write.
      await file.lock(true).catch(() => {});
      for await (const bytes of chunks) {
        let off = 0;
        while (off < bytes.length) off += await file.write(bytes.subarray(off));
      }
      await file.sync();
      await Deno.rename(tmp, path);
    } finally {
      file.close();
    }
  } catch (e) {
    if (created) await Deno.remove(tmp).catch(() => {});
    throw new Error(`Cannot write "${path}": ${oneLine(String((e as Error).message ?? e))}`, {
      cause: e,
    });
  }
  await syncDir(dir);
}

/**
 * Make a rename in `dir` durable (fsync the folder); best effort, as not every platform lets a
 * directory be opened.
 */
export async function syncDir(dir: string): Promise<void> {
  try {
    const d = await Deno.open(dir, { read: true });
    try {
      await d.sync();
    } finally {
      d.close();
    }
  } catch { /* best effort */ }
}

// Whether process `pid` is running: kill(pid, 0) sends nothing and only checks. Undefined when
// Deno may not ask (it needs --allow-run; /proc would need --allow-all).
function isRunning(pid: number): boolean | undefined {
  if (pid === Deno.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "ESRCH") return false;
    if (code === "EPERM") return true; // running, as another user
    return undefined;
  }
}

// Whether some writer holds the lock that `writeFileAtomic` takes on its temp file (flock, which
// the kernel drops when the process dies).
async function isLocked(path: string): Promise<boolean> {
  const f = await Deno.open(path, { read: true });
  try {
    return !(await f.tryLock(true));
  } finally {
    f.close();
  }
}

// An empty unlocked temp file may be a live writer between creating and locking it. Without pid
// information it counts as stale only once it is older than this.
const UNLOCKED_GRACE_MS = 10_000;

// Whether the writer of temp file `path`, process `pid`, is gone.
async function writerGone(path: string, pid: number): Promise<boolean> {
  if (pid === Deno.pid || await isLocked(path)) return false;
  const { size, mtime } = await Deno.stat(path);
  if (size > 0) return true; // a writer locks before its first byte and unlocks only by dying
  const running = isRunning(pid);
  if (running !== undefined) return !running;
  return mtime !== null && Date.now() - mtime.getTime() > UNLOCKED_GRACE_MS;
}

/**
 * Delete the temp files that `writeFileAtomic(targetPath, ...)` calls left behind when their
 * process died: files in the target's folder named exactly `.<name>.<pid>.<8 hex>.tmp` whose
 * writer is gone. A writer holds a lock on its temp file from before its first byte until the
 * rename, so an unlocked temp file with bytes in it is stale. An empty one is stale once its pid
 * no longer runs (checking needs --allow-run) or, without that permission, once it is 10 s old.
 * This process's temps and every other file are kept.
 *
 * @param targetPath the file whose stale temps to remove (it need not exist)
 * @returns the paths removed, sorted; [] when the folder does not exist
 * @throws Error naming the folder or file when listing or removing fails
 * @example
 * ```ts
 * await removeStaleTemps("checkpoints/run1/last.safetensors"); // e.g. before resuming a run
 * ```
 */
export async function removeStaleTemps(targetPath: string): Promise<string[]> {
  const dir = dirname(targetPath);
  const pattern = new RegExp(
    `^\\.${escapeRegExp(basename(targetPath))}\\.(\\d+)\\.[0-9a-f]{8}\\.tmp$`,
  );
  let names: string[];
  try {
    names = (await Array.fromAsync(Deno.readDir(dir))).filter((e) => e.isFile).map((e) => e.name);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw new Error(`Cannot list "${dir}" for stale temp files: ${oneLine((e as Error).message)}`);
  }
  const removed: string[] = [];
  for (const name of names.sort()) {
    const m = pattern.exec(name);
    if (!m) continue;
    const path = join(dir, name);
    try {
      if (!(await writerGone(path, Number(m[1])))) continue;
      await Deno.remove(path);
      removed.push(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) continue; // gone already: renamed or cleaned
      throw new Error(`Cannot remove stale temp file "${path}": ${oneLine((e as Error).message)}`);
    }
  }
  return removed;
}

/**
 * Whether a file exists: false when it does not, an Error naming it for any other failure to
 * look (permissions, I/O).
 */
export async function fileExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw new Error(`Cannot read "${path}": ${(e as Error).message}`);
  }
}
