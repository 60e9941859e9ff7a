import assert from "node:assert/strict";
import { join } from "node:path";
import {
  cacheSize,
  createEntry,
  entryDir,
  entryId,
  type FeatureKey,
  openEntry,
  removeEntry,
  sha256File,
} from "../lib/features_cache.ts";

const KEY: FeatureKey = {
  weights: "a".repeat(64),
  dataset: "mnist",
  split: "train",
  indices: "first-100",
  t: 90,
  block: 19,
  pool: 2,
  noiseSeed: 0,
  flip: false,
  version: 1,
};
const SHAPE = [2, 2, 3]; // 12 floats = 48 bytes a row
const ROW = 12;

// Rows whose every float is distinct and not a round number, so any misplaced byte shows.
function rows(n: number, seed = 1): Float32Array {
  const out = new Float32Array(n * ROW);
  for (let i = 0; i < out.length; i++) out[i] = Math.sin(seed * 1000 + i) * 1e3 + i / 7;
  return out;
}

const labelsOf = (n: number) => Int32Array.from({ length: n }, (_, i) => i % 10);

async function withRoot(fn: (root: string) => Promise<void>): Promise<void> {
  const root = await Deno.makeTempDir({ prefix: "features_cache_test" });
  try {
    await fn(join(root, "cache", "features"));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

// Every file under `dir`, relative, sorted (temp files start with ".").
async function listAll(dir: string, prefix = ""): Promise<string[]> {
  const out: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory) out.push(...await listAll(join(dir, e.name), `${prefix}${e.name}/`));
      else out.push(prefix + e.name);
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return out.sort();
}

const bitsOf = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);

// Write `data` appending `step` rows at a time; chunkBytes 100 puts CRC chunks across rows.
async function write(root: string, key: FeatureKey, data: Float32Array, step: number) {
  const n = data.length / ROW;
  const w = await createEntry(root, key, SHAPE, labelsOf(n), { chunkBytes: 100 });
  for (let r = 0; r < n; r += step) {
    await w.append(data.subarray(r * ROW, Math.min(n, r + step) * ROW));
  }
  assert.equal(w.rows, n);
  return await w.commit();
}

async function mustOpen(root: string, key: FeatureKey, verify: "open" | "lazy" = "open") {
  const r = await openEntry(root, key, { verify });
  if (!r.ok) throw new Error(r.message);
  return r.entry;
}

Deno.test("createEntry() then openEntry() reads back bit-exact in several chunkings", async () => {
  await withRoot(async (root) => {
    const n = 37;
    const data = rows(n);
    for (const step of [1, 5, 37, 100]) {
      await write(root, KEY, data, step);
      for (const verify of ["open", "lazy"] as const) {
        const e = await mustOpen(root, KEY, verify);
        assert.equal(e.rows, n);
        assert.deepEqual([...e.rowShape], SHAPE);
        assert.equal(e.rowFloats, ROW);
        assert.equal(e.bytes, n * ROW * 4);
        assert.deepEqual(e.labels, labelsOf(n));
        assert.deepEqual(bitsOf(await e.readRows(0, n)), bitsOf(data), `step ${step} ${verify}`);
        for (const per of [1, 4, 36, 37, 50]) {
          const got: Float32Array[] = [];
          const labels: number[] = [];
          let next = 0;
          for await (const c of e.chunks(per)) {
            assert.equal(c.start, next);
            assert.equal(c.count, Math.min(per, n - next));
            next += c.count;
            got.push(c.features);
            labels.push(...c.labels!);
          }
          const joined = new Float32Array(got.flatMap((g) => [...g]));
          assert.deepEqual(bitsOf(joined), bitsOf(data), `chunks(${per})`);
          assert.deepEqual(labels, [...labelsOf(n)]);
        }
      }
    }
  });
});

Deno.test("createEntry() commit returns an entry that reads like an opened one", async () => {
  await withRoot(async (root) => {
    const data = rows(9);
    const e = await write(root, KEY, data, 4);
    assert.equal(e.id, entryId(KEY));
    assert.equal(e.dir, entryDir(root, KEY));
    assert.deepEqual(bitsOf(await e.readRows(3, 4)), bitsOf(data.subarray(3 * ROW, 7 * ROW)));
  });
});

Deno.test("readRows() at arbitrary offsets, and range errors name the file", async () => {
  await withRoot(async (root) => {
    const n = 29;
    const data = rows(n, 3);
    await write(root, KEY, data, 7);
    for (const verify of ["open", "lazy"] as const) {
      const e = await mustOpen(root, KEY, verify);
      for (const [start, count] of [[0, 1], [28, 1], [3, 11], [13, 16], [5, 0], [0, 29]]) {
        assert.deepEqual(
          bitsOf(await e.readRows(start, count)),
          bitsOf(data.subarray(start * ROW, (start + count) * ROW)),
          `rows ${start}+${count}`,
        );
      }
      await assert.rejects(
        () => e.readRows(20, 10),
        /Cannot read rows 20…29 of ".*data\.f32": it has 29 rows/,
      );
      await assert.rejects(() => e.readRows(-1, 1), /Cannot read rows/);
      await assert.rejects(() => e.readRows(1.5, 1), /Cannot read rows/);
    }
  });
});

Deno.test("openEntry() hits on a second open and misses when any key field changes", async () => {
  await withRoot(async (root) => {
    await write(root, KEY, rows(4), 4);
    assert.ok((await openEntry(root, KEY)).ok);
    assert.ok((await openEntry(root, { ...KEY })).ok, "second open is a hit");
    // Key order must not matter: the id is of the canonical (sorted) JSON.
    const reordered = Object.fromEntries(Object.entries(KEY).reverse()) as unknown as FeatureKey;
    assert.equal(entryId(reordered), entryId(KEY));
    const changed: Record<keyof FeatureKey, unknown> = {
      weights: "b".repeat(64),
      dataset: "fashion-mnist",
      split: "test",
      indices: "first-101",
      t: 91,
      block: 18,
      pool: 1,
      noiseSeed: 1,
      flip: true,
      version: 2,
    };
    const ids = new Set([entryId(KEY)]);
    for (const [field, value] of Object.entries(changed)) {
      const key = { ...KEY, [field]: value } as FeatureKey;
      ids.add(entryId(key));
      const r = await openEntry(root, key);
      assert.equal(r.ok, false, field);
      if (!r.ok) {
        assert.equal(r.reason, "missing", field);
        assert.equal(r.removed, false);
        assert.match(r.message, /is missing: not in the cache$/);
      }
    }
    assert.equal(ids.size, 11, "every field changes the id");
    assert.ok((await openEntry(root, KEY)).ok, "the misses left the entry alone");
  });
});

Deno.test("entryId() rejects invalid keys in one line", () => {
  assert.throws(
    () => entryId({ ...KEY, t: "90" } as unknown as FeatureKey),
    { message: `Invalid feature cache key: "t" should be a number, got "90"` },
  );
  assert.throws(
    () => entryId({ ...KEY, extra: 1 } as unknown as FeatureKey),
    { message: `Invalid feature cache key: unknown field "extra"` },
  );
  assert.throws(() => entryId({ ...KEY, pool: NaN }), /"pool" is NaN/);
  const { flip: _, ...noFlip } = KEY;
  assert.throws(() => entryId(noFlip as FeatureKey), /"flip" should be a boolean, got null/);
});

// Every bad-entry case: detected with its reason, removed, never returned as data, and then a
// miss ("missing") so that the caller recomputes; a rewrite then hits again.
Deno.test("openEntry() detects truncated, corrupt, stale and unfinished entries", async (t) => {
  const data = rows(20);
  const cases: {
    name: string;
    reason: string;
    message: RegExp;
    damage: (dir: string) => Promise<void>;
    removed?: boolean;
  }[] = [
    {
      name: "a truncated data file",
      reason: "truncated",
      message: /data\.f32" has 900 bytes, the manifest 960; removed$/,
      damage: (dir) => Deno.truncate(join(dir, "data.f32"), 900),
    },
    {
      name: "a data file with extra bytes",
      reason: "truncated",
      message: /has 964 bytes, the manifest 960/,
      damage: async (dir) => {
        await Deno.writeFile(join(dir, "data.f32"), new Uint8Array(4), { append: true });
      },
    },
    {
      name: "a missing data file",
      reason: "truncated",
      message: /data\.f32" is missing/,
      damage: (dir) => Deno.remove(join(dir, "data.f32")),
    },
    {
      name: "a flipped byte",
      reason: "corrupt",
      message: /CRC-32 of chunk 5 \(bytes 500–600\) of ".*data\.f32" differs; removed$/,
      damage: (dir) => flipByte(join(dir, "data.f32"), 517),
    },
    {
      name: "a flipped byte in the last, short chunk",
      reason: "corrupt",
      message: /chunk 9 \(bytes 900–960\)/,
      damage: (dir) => flipByte(join(dir, "data.f32"), 959),
    },
    {
      name: "a flipped label",
      reason: "corrupt",
      message: /CRC-32 of ".*labels\.i32" differs/,
      damage: (dir) => flipByte(join(dir, "labels.i32"), 8),
    },
    {
      name: "a manifest whose key was edited",
      reason: "stale",
      message: /holds another key \(version 0 ≠ 1\); removed$/,
      damage: (dir) => editManifest(dir, (m) => ((m.key as Record<string, unknown>).version = 0)),
    },
    {
      name: "a manifest whose key lost a field",
      reason: "stale",
      message: /holds another key \(flip null ≠ false\)/,
      damage: (dir) => editManifest(dir, (m) => delete (m.key as Record<string, unknown>).flip),
    },
    {
      name: "a manifest of another format",
      reason: "stale",
      message: /has format "features-cache\/0"/,
      damage: (dir) => editManifest(dir, (m) => (m.format = "features-cache/0")),
    },
    {
      name: "a manifest that is not JSON",
      reason: "corrupt",
      message: /manifest\.json" is not JSON/,
      damage: (dir) => Deno.writeTextFile(join(dir, "manifest.json"), '{"format": "feat'),
    },
    {
      name: "a manifest with a wrong CRC count",
      reason: "corrupt",
      message: /9 data CRCs for 10 chunks/,
      damage: (dir) => editManifest(dir, (m) => (m.data as { crc32: string[] }).crc32.pop()),
    },
    {
      name: "a missing manifest (a crash before commit)",
      reason: "missing",
      message: /is missing: no "manifest\.json" \(an unfinished or crashed write\)$/,
      damage: (dir) => Deno.remove(join(dir, "manifest.json")),
      removed: false,
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      await withRoot(async (root) => {
        await write(root, KEY, data, 6);
        const dir = entryDir(root, KEY);
        await c.damage(dir);
        const r = await openEntry(root, KEY);
        assert.equal(r.ok, false);
        assert.ok(!("entry" in r), "no data returned");
        if (r.ok) return;
        assert.equal(r.reason, c.reason);
        assert.match(r.message, c.message);
        assert.ok(r.message.startsWith(`Feature cache entry "${dir}" is ${c.reason}: `));
        assert.ok(!r.message.includes("\n"));
        const removed = c.removed ?? true;
        assert.equal(r.removed, removed);
        if (removed) {
          assert.deepEqual(await listAll(root), [], "bad entry removed");
          const again = await openEntry(root, KEY);
          assert.ok(!again.ok && again.reason === "missing");
        }
        await write(root, KEY, data, 6);
        const e = await mustOpen(root, KEY);
        assert.deepEqual(bitsOf(await e.readRows(0, 20)), bitsOf(data), "rewrite hits");
      });
    });
  }
});

Deno.test("openEntry({ remove: false }) reports a bad entry and keeps its files", async () => {
  await withRoot(async (root) => {
    await write(root, KEY, rows(20), 20);
    await flipByte(join(entryDir(root, KEY), "data.f32"), 3);
    const r = await openEntry(root, KEY, { remove: false });
    assert.ok(!r.ok && r.reason === "corrupt" && !r.removed && !r.message.endsWith("removed"));
    assert.equal((await listAll(root)).length, 3);
  });
});

Deno.test("openEntry({ verify: 'lazy' }) opens fast and throws when a read hits a bad chunk", async () => {
  await withRoot(async (root) => {
    const data = rows(20);
    await write(root, KEY, data, 20);
    await flipByte(join(entryDir(root, KEY), "data.f32"), 517); // chunk 5: rows 10 and 11
    const e = await mustOpen(root, KEY, "lazy");
    assert.deepEqual(bitsOf(await e.readRows(0, 10)), bitsOf(data.subarray(0, 10 * ROW)));
    await assert.rejects(
      () => e.readRows(10, 1),
      /^Error: Feature cache entry ".*" is corrupt: CRC-32 of chunk 5 \(bytes 500–600\) of ".*data\.f32" differs; removed$/,
    );
    assert.deepEqual(await listAll(root), []);
    const r = await openEntry(root, KEY);
    assert.ok(!r.ok && r.reason === "missing");
  });
});

Deno.test("abort() and a killed writer leave no entry; stale temps go on the next write", async () => {
  await withRoot(async (root) => {
    const w = await createEntry(root, KEY, SHAPE, undefined, { chunkBytes: 100 });
    await w.append(rows(5));
    await w.abort();
    await w.abort(); // idempotent
    await assert.rejects(() => w.append(rows(1)), /append\(\) on a closed cache writer/);
    assert.deepEqual(await listAll(root), [], "abort leaves nothing");
    assert.deepEqual([...Deno.readDirSync(root)], [], "not even an empty folder");
    assert.ok(!(await openEntry(root, KEY)).ok);

    // A writer killed mid-write: its temp file stays, unlocked, with a dead pid.
    const dir = entryDir(root, KEY);
    await Deno.mkdir(dir, { recursive: true });
    const orphan = join(dir, ".data.f32.999999999.0123abcd.tmp");
    await Deno.writeFile(orphan, new Uint8Array(480));
    const r = await openEntry(root, KEY);
    assert.ok(!r.ok && r.reason === "missing" && /crashed write/.test(r.message));
    const data = rows(3);
    await write(root, KEY, data, 1);
    assert.deepEqual(
      (await listAll(dir)).filter((f) => f.endsWith(".tmp")),
      [],
      "stale temp removed, no temp of ours left",
    );
    assert.deepEqual(await listAll(dir), ["data.f32", "labels.i32", "manifest.json"]);
  });
});

Deno.test("an entry without labels reads back with labels undefined", async () => {
  await withRoot(async (root) => {
    const w = await createEntry(root, KEY, SHAPE);
    await w.append(rows(2));
    await w.commit();
    const e = await mustOpen(root, KEY);
    assert.equal(e.labels, undefined);
    for await (const c of e.chunks(1)) assert.equal(c.labels, undefined);
    assert.deepEqual(await listAll(entryDir(root, KEY)), ["data.f32", "manifest.json"]);
  });
});

Deno.test("a rewrite replaces an entry, dropping labels it no longer has", async () => {
  await withRoot(async (root) => {
    await write(root, KEY, rows(4, 1), 4);
    const w = await createEntry(root, KEY, SHAPE);
    await w.append(rows(6, 2));
    await w.commit();
    const e = await mustOpen(root, KEY);
    assert.equal(e.rows, 6);
    assert.equal(e.labels, undefined);
    assert.deepEqual(bitsOf(await e.readRows(0, 6)), bitsOf(rows(6, 2)));
  });
});

Deno.test("createEntry() and its writer reject bad input in one line", async () => {
  await withRoot(async (root) => {
    await assert.rejects(() => createEntry(root, KEY, [2, 0]), /Invalid row shape \[2, 0\]/);
    await assert.rejects(
      () => createEntry(root, KEY, SHAPE, [1.5]),
      /Invalid labels: expected int32 integers/,
    );
    await assert.rejects(
      () => createEntry(root, KEY, SHAPE, undefined, { chunkBytes: 6 }),
      /Invalid chunkBytes 6/,
    );
    const w = await createEntry(root, KEY, SHAPE, [0, 1, 2], { chunkBytes: 100 });
    await assert.rejects(() => w.append(new Float32Array(13)), /not a multiple of the row size 12/);
    const first = w.append(rows(1)); // 48 bytes: copied, nothing written yet
    await first;
    const second = w.append(rows(5)); // writes chunks, so the next call overlaps it
    await assert.rejects(() => w.append(rows(1)), /before the previous append finished/);
    await second;
    await assert.rejects(() => w.commit(), /3 labels for 6 rows; aborted/);
    assert.deepEqual(await listAll(root), []);
  });
});

Deno.test("removeEntry() and cacheSize()", async () => {
  await withRoot(async (root) => {
    assert.deepEqual(await cacheSize(root), { bytes: 0, entries: 0 });
    await write(root, KEY, rows(10), 10);
    await write(root, { ...KEY, t: 150 }, rows(5), 5);
    const size = await cacheSize(root);
    assert.equal(size.entries, 2);
    const manifests = (await Deno.stat(join(entryDir(root, KEY), "manifest.json"))).size +
      (await Deno.stat(join(entryDir(root, { ...KEY, t: 150 }), "manifest.json"))).size;
    assert.equal(size.bytes, 15 * ROW * 4 + 15 * 4 + manifests);
    assert.equal(await removeEntry(root, KEY), true);
    assert.equal(await removeEntry(root, KEY), false);
    assert.equal((await cacheSize(root)).entries, 1);
  });
});

Deno.test("sha256File() matches known digests", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = join(dir, "abc");
    await Deno.writeTextFile(path, "abc");
    assert.equal(
      await sha256File(path),
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
    // A million "a"s (FIPS 180-2 test vector).
    await Deno.writeTextFile(path, "a".repeat(1_000_000));
    assert.equal(
      await sha256File(path),
      "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    );
    // Several 1 MiB reads and a partial one, against Web Crypto's one-shot digest.
    const big = new Uint8Array(2.5 * (1 << 20) + 3).map((_, i) => (i * 2654435761) >>> 24);
    await Deno.writeFile(path, big);
    const whole = new Uint8Array(await crypto.subtle.digest("SHA-256", big));
    assert.equal(
      await sha256File(path),
      [...whole].map((b) => b.toString(16).padStart(2, "0")).join(""),
    );
    await assert.rejects(() => sha256File(join(dir, "nope")), /^Error: Cannot hash ".*nope": /);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function flipByte(path: string, at: number): Promise<void> {
  const bytes = await Deno.readFile(path);
  bytes[at] ^= 0x10;
  await Deno.writeFile(path, bytes);
}

async function editManifest(dir: string, edit: (m: Record<string, unknown>) => void) {
  const path = join(dir, "manifest.json");
  const m = JSON.parse(await Deno.readTextFile(path));
  edit(m);
  await Deno.writeTextFile(path, JSON.stringify(m));
}
