import assert from "node:assert/strict";
import { basename, join } from "node:path";
import { removeStaleTemps, writeFileAtomic } from "../../lib/io/atomic.ts";

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
    await assert.rejects(() => writeFileAtomic(path, failingChunks()), {
      message: `Cannot write "${path}": disk full (simulated)`,
    });
    assert.equal(await Deno.readTextFile(path), "old contents");
    assert.deepEqual(await list(dir), ["ckpt.safetensors"], "temp file removed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic() removes the temp file when the rename fails, naming the target", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "taken");
    await Deno.mkdir(join(path, "inside"), { recursive: true }); // a non-empty folder: rename fails
    await assert.rejects(() => writeFileAtomic(path, "data"), (e: Error) => {
      assert.ok(e.message.startsWith(`Cannot write "${path}": `), e.message);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
    assert.deepEqual(await list(dir), ["taken"], "temp file removed");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic() names the target when its folder cannot be made", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(join(dir, "file"), "a file, not a folder");
    const path = join(dir, "file", "sub", "out.json");
    await assert.rejects(() => writeFileAtomic(path, "{}"), (e: Error) => {
      assert.ok(e.message.startsWith(`Cannot write "${path}": `), e.message);
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("removeStaleTemps() removes the temp files of dead writers of that target only", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // The pid of a process that has exited.
    const child = new Deno.Command("true").spawn();
    await child.status;
    const dead = child.pid;
    const names = [
      `.ckpt.safetensors.${dead}.0a1b2c3d.tmp`, // stale: goes
      `.ckpt.safetensors.${Deno.pid}.12345678.tmp`, // a live writer (this process): stays
      `.other.safetensors.${dead}.0a1b2c3d.tmp`, // another target: stays
      `.ckpt.safetensors.${dead}.tmp`, // not the temp pattern: stays
      `.ckpt.safetensors.${dead}.0a1b2c3d.tmp.bak`, // not the temp pattern: stays
      "ckpt.safetensors",
    ];
    for (const n of names) await Deno.writeTextFile(join(dir, n), "x");
    const path = join(dir, "ckpt.safetensors");
    assert.deepEqual(await removeStaleTemps(path), [join(dir, names[0])]);
    assert.deepEqual(await list(dir), names.slice(1).sort());
    assert.deepEqual(await removeStaleTemps(path), [], "nothing left to remove");
    assert.deepEqual(await removeStaleTemps(join(dir, "missing-dir", "x")), []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("removeStaleTemps() keeps a locked temp and, without --allow-run, an empty fresh one", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const child = new Deno.Command("true").spawn();
    await child.status;
    const dead = child.pid;
    const [locked, written, oldEmpty, freshEmpty] = ["0000000a", "0000000b", "0000000c", "0000000d"]
      .map((h) => join(dir, `.w.bin.${dead}.${h}.tmp`));
    for (const p of [locked, written]) await Deno.writeTextFile(p, "x");
    for (const p of [oldEmpty, freshEmpty]) await Deno.writeTextFile(p, "");
    const hour = new Date(Date.now() - 3600_000);
    await Deno.utime(oldEmpty, hour, hour);
    await Deno.utime(locked, hour, hour);
    const holder = await Deno.open(locked, { write: true }); // a writer still at work
    await holder.lock(true);
    try {
      // Pids cannot be checked here. Bytes without a lock mean a dead writer; an empty temp may
      // be a writer between creating and locking it, so only the old empty one goes.
      const script = join(dir, "clean.ts");
      const lib = new URL("../../lib/io/atomic.ts", import.meta.url).href;
      await Deno.writeTextFile(
        script,
        `import { removeStaleTemps } from "${lib}";\n` +
          `console.log(JSON.stringify(await removeStaleTemps(${
            JSON.stringify(join(dir, "w.bin"))
          })));`,
      );
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--no-config", "-R", "-W", script],
        stderr: "inherit",
      }).output();
      assert.ok(out.success);
      assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), [written, oldEmpty]);
      // With pids known (this test runs with --allow-run), the lock still keeps its writer's temp.
      assert.deepEqual(await removeStaleTemps(join(dir, "w.bin")), [freshEmpty]);
      assert.deepEqual(await list(dir), [basename(locked), "clean.ts"]);
    } finally {
      holder.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
