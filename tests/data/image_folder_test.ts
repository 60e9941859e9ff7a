import assert from "node:assert/strict";
import sharp from "sharp";
import { decodeImage, listImageFolder, loadImageFolder } from "../../lib/data/image_folder.ts";

// A w x h PNG whose pixel (x, y, ch) is (seed + 10x + 3y + 50ch) mod 256.
async function writePng(
  path: string,
  w: number,
  h: number,
  channels: 1 | 3,
  seed: number,
): Promise<Uint8Array> {
  const raw = new Uint8Array(w * h * channels);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < channels; c++) {
        raw[(y * w + x) * channels + c] = (seed + 10 * x + 3 * y + 50 * c) % 256;
      }
    }
  }
  let img = sharp(raw, { raw: { width: w, height: h, channels } });
  if (channels === 1) img = img.toColourspace("b-w");
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  await Deno.writeFile(path, await img.png().toBuffer());
  return raw;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const unit = (b: number) => Math.fround(b / 127.5 - 1);

Deno.test("loadImageFolder() reads root/<class>/*.png in sorted order, RGB and grayscale", async () => {
  await withTempDir(async (dir) => {
    const raws = [
      await writePng(`${dir}/cat/b.png`, 4, 3, 3, 1),
      await writePng(`${dir}/cat/a.PNG`, 4, 3, 3, 2),
      await writePng(`${dir}/dog/z.png`, 4, 3, 3, 3),
    ];
    await Deno.writeTextFile(`${dir}/dog/notes.txt`, "not an image");
    const rgb = await loadImageFolder(dir);
    assert.deepEqual(rgb.classes, ["cat", "dog"]);
    assert.deepEqual(rgb.shape, [3, 4, 3]);
    assert.deepEqual([...rgb.labels], [0, 0, 1]);
    assert.equal(rgb.sites, undefined);
    // a.PNG sorts before b.png: sample 0 is raws[1], exactly (PNG is lossless).
    assert.deepEqual([...rgb.images.subarray(0, 36)], [...raws[1]].map(unit));
    assert.deepEqual([...rgb.images.subarray(72)], [...raws[2]].map(unit));

    const gray = await loadImageFolder(dir, { channels: 1 });
    assert.deepEqual(gray.shape, [3, 4, 1]);
    assert.equal(gray.images.length, 3 * 12);
    assert.ok(gray.images.every((v) => v >= -1 && v <= 1));
  });
});

Deno.test("loadImageFolder() reads gray PNGs as RGB and resizes the shorter side, then crops", async () => {
  await withTempDir(async (dir) => {
    const raw = await writePng(`${dir}/a/0.png`, 6, 6, 1, 7);
    await writePng(`${dir}/b/0.png`, 12, 8, 1, 9);
    const ds = await loadImageFolder(dir, { channels: 3, size: 6 });
    assert.deepEqual(ds.shape, [6, 6, 3]);
    // The 6x6 gray image is unchanged by the resize and repeated over R, G, B.
    const first = ds.images.subarray(0, 108);
    assert.deepEqual([...first.filter((_, i) => i % 3 === 0)], [...raw].map(unit));
    assert.deepEqual([...first.filter((_, i) => i % 3 === 2)], [...raw].map(unit));
    const direct = await decodeImage(`${dir}/b/0.png`, 1, 4);
    assert.deepEqual([direct.width, direct.height], [4, 4]);
  });
});

Deno.test("loadImageFolder() without a size rejects images of different sizes", async () => {
  await withTempDir(async (dir) => {
    await writePng(`${dir}/a/0.png`, 4, 4, 3, 0);
    await writePng(`${dir}/b/0.png`, 5, 4, 3, 0);
    await assert.rejects(() => loadImageFolder(dir), {
      message:
        `Cannot read image "${dir}/b/0.png": size 5x4 differs from 4x4; pass a size to resize`,
    });
  });
});

Deno.test("loadImageFolder() records sites for root/<site>/<class>/ and unions the classes", async () => {
  await withTempDir(async (dir) => {
    await writePng(`${dir}/hospital_b/tumour/1.png`, 4, 4, 1, 0);
    await writePng(`${dir}/hospital_a/normal/1.png`, 4, 4, 1, 1);
    await writePng(`${dir}/hospital_a/tumour/1.png`, 4, 4, 1, 2);
    await writePng(`${dir}/hospital_a/tumour/2.png`, 4, 4, 1, 3);
    const listed = listImageFolder(dir);
    assert.deepEqual(listed.sites, ["hospital_a", "hospital_b"]);
    const ds = await loadImageFolder(dir, { channels: 1 });
    assert.deepEqual(ds.classes, ["normal", "tumour"]);
    assert.deepEqual([...ds.labels], [0, 1, 1, 1]);
    assert.deepEqual(ds.sites?.names, ["hospital_a", "hospital_b"]);
    assert.deepEqual([...ds.sites!.ids], [0, 0, 0, 1]);
  });
});

Deno.test("loadImageFolder() gives one-line errors naming a corrupt file or a bad folder", async () => {
  await withTempDir(async (dir) => {
    await writePng(`${dir}/a/good.png`, 8, 8, 3, 0);
    const png = await Deno.readFile(`${dir}/a/good.png`);
    await Deno.writeFile(`${dir}/a/truncated.png`, png.subarray(0, png.length - 30));
    await assert.rejects(() => loadImageFolder(dir), (e: Error) => {
      assert.ok(e.message.startsWith(`Cannot read image "${dir}/a/truncated.png": `), e.message);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
    await Deno.writeFile(`${dir}/a/truncated.png`, new TextEncoder().encode("hello"));
    await assert.rejects(
      () => loadImageFolder(dir),
      /Cannot read image ".*truncated\.png": .*unsupported image format/,
    );
    await assert.rejects(
      () => loadImageFolder(`${dir}/missing`),
      /Cannot read image folder ".*missing": /,
    );
    await assert.rejects(
      () => loadImageFolder(`${dir}/a`),
      /Cannot read image folder ".*\/a": no class folders in it/,
    );
  });
});

Deno.test("loadImageFolder() follows symlinked images and class folders", async () => {
  await withTempDir(async (dir) => {
    const a = await writePng(`${dir}/store/a.png`, 4, 4, 1, 5);
    const b = await writePng(`${dir}/store/b.png`, 4, 4, 1, 6);
    await writePng(`${dir}/data/cat/0.png`, 4, 4, 1, 7);
    await Deno.symlink(`${dir}/store/a.png`, `${dir}/data/cat/1.png`); // a linked image
    await Deno.symlink(`${dir}/store`, `${dir}/data/dog`); // a linked class folder
    const ds = await loadImageFolder(`${dir}/data`, { channels: 1 });
    assert.deepEqual(ds.classes, ["cat", "dog"]);
    assert.deepEqual([...ds.labels], [0, 0, 1, 1]);
    assert.deepEqual([...ds.images.subarray(16, 32)], [...a].map(unit));
    assert.deepEqual([...ds.images.subarray(48)], [...b].map(unit));
  });
});

Deno.test("listImageFolder() reports a symlink cycle, never loops", async () => {
  await withTempDir(async (dir) => {
    await writePng(`${dir}/site/cls/0.png`, 4, 4, 1, 0);
    await Deno.symlink(dir, `${dir}/site/loop`); // site/loop -> root
    assert.throws(() => listImageFolder(dir), (e: Error) => {
      assert.match(e.message, /symlink cycle/);
      assert.ok(e.message.includes(`"${dir}/site/loop"`), e.message);
      assert.ok(!e.message.includes("\n"), e.message);
      return true;
    });
    await Deno.remove(`${dir}/site/loop`);
    await Deno.symlink(`${dir}/nowhere`, `${dir}/site/cls/1.png`);
    assert.throws(() => listImageFolder(dir), new RegExp(`broken symlink "${dir}/site/cls/1.png"`));
  });
});

Deno.test("listImageFolder() rejects ambiguous layouts with one line naming the folder", async (t) => {
  const cases: [string, string[], (dir: string) => string][] = [
    // A folder of folders next to class folders: neither a class nor a site.
    ["class beside a folder of folders", ["cat/0.png", "dog/husky/0.png"], (d) => `"${d}/dog"`],
    ["class folder holding folders", ["cat/0.png", "cat/kittens/0.png"], (d) => `"${d}/cat"`],
    ["images beside class folders", ["0.png", "cat/0.png"], (d) => `"${d}"`],
    ["site folder holding images", ["s/cat/0.png", "s/0.png", "t/cat/0.png"], (d) => `"${d}/s"`],
    [
      "class folder of a site holding folders",
      ["s/cat/0.png", "s/dog/x/0.png"],
      (d) => `"${d}/s/dog"`,
    ],
  ];
  for (const [what, files, named] of cases) {
    await t.step(what, async () => {
      await withTempDir(async (dir) => {
        for (const f of files) await writePng(`${dir}/${f}`, 4, 4, 1, 0);
        assert.throws(() => listImageFolder(dir), (e: Error) => {
          assert.ok(e.message.startsWith(`Cannot read image folder "${dir}": `), e.message);
          assert.ok(e.message.includes(named(dir)), e.message);
          assert.ok(!e.message.includes("\n"), e.message);
          return true;
        });
      });
    });
  }
});

Deno.test("loadImageFolder() rejects a class folder without images, naming it", async () => {
  await withTempDir(async (dir) => {
    await writePng(`${dir}/cat/0.png`, 4, 4, 1, 0);
    await Deno.mkdir(`${dir}/dog`);
    await Deno.writeTextFile(`${dir}/dog/readme.txt`, "no images here");
    await assert.rejects(
      () => loadImageFolder(dir),
      {
        message:
          `Cannot read image folder "${dir}": class folder "${dir}/dog" has no .png/.jpg/.jpeg images`,
      },
    );
  });
  await withTempDir(async (dir) => {
    await writePng(`${dir}/s1/cat/0.png`, 4, 4, 1, 0);
    await Deno.mkdir(`${dir}/s2/cat`, { recursive: true });
    await assert.rejects(
      () => loadImageFolder(dir),
      {
        message:
          `Cannot read image folder "${dir}": class folder "${dir}/s2/cat" has no .png/.jpg/.jpeg images`,
      },
    );
    await Deno.remove(`${dir}/s2/cat`);
    await assert.rejects(
      () => loadImageFolder(dir),
      {
        message: `Cannot read image folder "${dir}": site folder "${dir}/s2" has no class folders`,
      },
    );
  });
});
