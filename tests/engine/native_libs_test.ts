// lib/engine/native_libs.ts with a fake apt-get / dpkg-deb / dpkg and a temp cache: no network,
// no root, nothing outside the temp dirs. A fake .deb is a JSON file; the fake `dpkg-deb -x`
// writes the files it lists. DP_TEST_NATIVE_FETCH=1 adds one real end-to-end fetch.
import assert from "node:assert/strict";
import {
  ensureNativeLibs,
  type Manifest,
  type NativeLibSpec,
  nativeLibSpecs,
  parseDepends,
  prepareNativeLibs,
  runCommand,
  type Runner,
  type RunResult,
} from "../../lib/engine/native_libs.ts";
import { openBlas } from "../../lib/engine/blas/openblas.ts";
import { openOneDnnCore } from "../../lib/engine/blas/onednn_core.ts";

// ---------------------------------------------------------------------------------------------
// A fake Debian: packages, installed set, and a runner answering the commands the module runs.

const LIB = "usr/lib/x86_64-linux-gnu";

interface FakePackage {
  readonly version: string;
  readonly depends: string;
  /** Relative path → file content, or `-> target` for a symlink. */
  readonly files: Readonly<Record<string, string>>;
}

const REPO: Readonly<Record<string, FakePackage>> = {
  "libopenblas0-pthread": {
    version: "0.3.21+ds-4",
    depends: "libc6 (>= 2.34), libgfortran5 (>= 8)",
    files: {
      [`${LIB}/openblas-pthread/libopenblasp-r0.3.21.so`]: "openblas code",
      [`${LIB}/openblas-pthread/libopenblas.so.0`]: "-> libopenblasp-r0.3.21.so",
      [`${LIB}/openblas-pthread/libblas.so.3`]: "blas code",
      "usr/share/doc/libopenblas0-pthread/copyright": "BSD",
    },
  },
  "libdnnl2": {
    version: "2.6.3-1",
    depends: "libc6 (>= 2.34), libgomp1 (>= 4.9), ocl-icd-libopencl1 | libopencl1, " +
      "ocl-icd-libopencl1 (>= 1.0) | libopencl-1.2-1",
    files: {
      [`${LIB}/libdnnl.so.2.6`]: "dnnl code",
      [`${LIB}/libdnnl.so.2`]: "-> libdnnl.so.2.6",
    },
  },
  "ocl-icd-libopencl1": {
    version: "2.3.1-1",
    depends: "libc6 (>= 2.34)",
    files: { [`${LIB}/libOpenCL.so.1.0.0`]: "opencl code", [`${LIB}/libOpenCL.so.1`]: "-> x" },
  },
  "libgfortran5": {
    version: "12.2.0-14",
    depends: "gcc-12-base (= 12.2.0-14), libc6 (>= 2.34), libquadmath0 (>= 4.6)",
    files: { [`${LIB}/libgfortran.so.5.0.0`]: "gfortran code" },
  },
  "libquadmath0": {
    version: "12.2.0-14",
    depends: "gcc-12-base (= 12.2.0-14), libc6 (>= 2.34)",
    files: { [`${LIB}/libquadmath.so.0.0.0`]: "quadmath code" },
  },
};

interface Call {
  readonly cmd: string;
  readonly args: readonly string[];
}

/** A runner over REPO; `fail` may answer a call instead (return undefined to let it run). */
function fakeDebian(
  installed: readonly string[] = ["libc6", "gcc-12-base", "libgomp1", "libgfortran5"],
  fail: (call: Call) => RunResult | undefined = () => undefined,
): { run: Runner; calls: Call[] } {
  const calls: Call[] = [];
  const ok = (stdout = ""): RunResult => ({ code: 0, stdout, stderr: "" });
  const run: Runner = async (cmd, args, { cwd }) => {
    calls.push({ cmd, args });
    const failed = fail({ cmd, args });
    if (failed) return failed;
    if (args[0] === "--version") return ok(`${cmd} 1.0`);
    if (cmd === "apt-get" && args[0] === "download") {
      const p = REPO[args[1]];
      if (!p) return { code: 100, stdout: "", stderr: `E: Unable to locate package ${args[1]}\n` };
      await Deno.writeTextFile(`${cwd}/${args[1]}_${p.version}_amd64.deb`, JSON.stringify(p));
      return ok();
    }
    if (cmd === "dpkg-deb" && args[0] === "-f") {
      const p = JSON.parse(await Deno.readTextFile(args[1])) as FakePackage;
      const name = args[1].split("/").at(-1)!.split("_")[0];
      return ok(`Package: ${name}\nVersion: ${p.version}\nDepends: ${p.depends}\n`);
    }
    if (cmd === "dpkg-deb" && args[0] === "-x") {
      const p = JSON.parse(await Deno.readTextFile(args[1])) as FakePackage;
      for (const [rel, content] of Object.entries(p.files)) {
        const path = `${args[2]}/${rel}`;
        await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
        if (content.startsWith("-> ")) await Deno.symlink(content.slice(3), path);
        else await Deno.writeTextFile(path, content);
      }
      return ok();
    }
    if (cmd === "dpkg" && args[0] === "-s") {
      const known = args.slice(1).filter((n) => installed.includes(n));
      const stanzas = known.map((n) => `Package: ${n}\nStatus: install ok installed\n`);
      return {
        code: known.length < args.length - 1 ? 1 : 0,
        stdout: stanzas.join("\n"),
        stderr: "",
      };
    }
    throw new Error(`unexpected command: ${cmd} ${args.join(" ")}`);
  };
  return { run, calls };
}

/** Temp cache, fake system dirs and HOME, and the options ensureNativeLibs takes. */
async function sandbox(vars: Record<string, string> = {}) {
  const dir = await Deno.makeTempDir({ prefix: "native_libs_test_" });
  const specs = nativeLibSpecs(() => undefined);
  const sysSpecs = {
    openblas: { ...specs.openblas, system: [`${dir}/sys/libopenblas.so.0`] },
    onednn: { ...specs.onednn, system: [`${dir}/sys/libdnnl.so.2`] },
  } satisfies Record<string, NativeLibSpec>;
  const env = (k: string) => ({ HOME: dir, ...vars } as Record<string, string>)[k];
  const lines: string[] = [];
  const opts = (run: Runner) => ({
    run,
    env,
    specs: sysSpecs,
    cacheDir: `${dir}/.cache/diffusion-pretraining/native`,
    log: (line: string) => void lines.push(line),
  });
  const archDir = async () => {
    for await (const e of Deno.readDir(`${dir}/.cache/diffusion-pretraining/native`)) {
      return `${dir}/.cache/diffusion-pretraining/native/${e.name}`;
    }
    throw new Error("no arch dir");
  };
  const cleanup = () => Deno.remove(dir, { recursive: true });
  return { dir, opts, lines, archDir, cleanup };
}

async function listDir(path: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(path)) out.push(e.name);
  return out.sort();
}

const manifestOf = async (entry: string) =>
  JSON.parse(await Deno.readTextFile(`${entry}/manifest.json`)) as Manifest;

const downloads = (calls: Call[]) =>
  calls.filter((c) => c.cmd === "apt-get" && c.args[0] === "download").map((c) => c.args[1]);

// ---------------------------------------------------------------------------------------------
// Tests

Deno.test("parseDepends() keeps names and alternatives, drops versions and arch", async (t) => {
  const cases: [string, string[][]][] = [
    ["", []],
    ["libc6 (>= 2.34), libgfortran5 (>= 8)", [["libc6"], ["libgfortran5"]]],
    ["ocl-icd-libopencl1 | libopencl1", [["ocl-icd-libopencl1", "libopencl1"]]],
    ["python3:any (>= 3.9), libx  |  liby (<< 2)", [["python3"], ["libx", "liby"]]],
  ];
  for (const [field, want] of cases) {
    await t.step(JSON.stringify(field), () => assert.deepEqual(parseDepends(field), want));
  }
});

Deno.test("ensureNativeLibs() uses libraries found on the system and runs nothing", async () => {
  const s = await sandbox();
  try {
    await Deno.mkdir(`${s.dir}/sys`);
    await Deno.writeTextFile(`${s.dir}/sys/libopenblas.so.0`, "x");
    await Deno.writeTextFile(`${s.dir}/sys/libdnnl.so.2`, "x");
    const { run, calls } = fakeDebian();
    const libs = await ensureNativeLibs(["openblas", "onednn"], s.opts(run));
    assert.deepEqual(libs, {
      openblas: { path: `${s.dir}/sys/libopenblas.so.0`, from: "system", preload: [] },
      onednn: { path: `${s.dir}/sys/libdnnl.so.2`, from: "system", preload: [] },
    });
    assert.deepEqual(calls, []);
    assert.deepEqual(s.lines, []);
  } finally {
    await s.cleanup();
  }
});

Deno.test("ensureNativeLibs() takes DP_OPENBLAS / DP_ONEDNN_LIB as present", async () => {
  const s = await sandbox({ DP_OPENBLAS: "/opt/blas.so", DP_ONEDNN_LIB: "/opt/dnnl.so" });
  try {
    const { run, calls } = fakeDebian();
    const libs = await ensureNativeLibs(["openblas", "onednn"], s.opts(run));
    assert.equal(libs?.openblas?.path, "/opt/blas.so");
    assert.equal(libs?.onednn?.path, "/opt/dnnl.so");
    assert.deepEqual(calls, []);
  } finally {
    await s.cleanup();
  }
});

Deno.test("ensureNativeLibs() fetches what is missing, then reuses the cache silently", async () => {
  const s = await sandbox();
  try {
    const first = fakeDebian();
    const libs = await ensureNativeLibs(["openblas", "onednn"], s.opts(first.run));
    assert.equal(s.lines.length, 1);
    assert.equal(
      s.lines[0],
      "engine: fetching libopenblas0-pthread, libdnnl2 from Debian into " +
        "~/.cache/diffusion-pretraining/native (once; DP_NATIVE=off to skip)",
    );
    // libgomp1 is installed; ocl-icd-libopencl1 is not (fetched once for both its groups).
    assert.deepEqual(downloads(first.calls), [
      "libopenblas0-pthread",
      "libdnnl2",
      "ocl-icd-libopencl1",
    ]);
    const arch = await s.archDir();
    assert.deepEqual(await listDir(arch), ["libdnnl2_2.6.3-1", "libopenblas0-pthread_0.3.21+ds-4"]);

    const blasDir = `${arch}/libopenblas0-pthread_0.3.21+ds-4`;
    const blas = await manifestOf(blasDir);
    assert.deepEqual(blas.packages, [{ name: "libopenblas0-pthread", version: "0.3.21+ds-4" }]);
    assert.equal(blas.lib, `${LIB}/openblas-pthread/libopenblas.so.0`);
    assert.deepEqual(Object.keys(blas.sha256), [
      `${LIB}/openblas-pthread/libblas.so.3`,
      `${LIB}/openblas-pthread/libopenblasp-r0.3.21.so`,
    ]);
    const code = new TextEncoder().encode("openblas code");
    const hex = Array.from(
      new Uint8Array(await crypto.subtle.digest("SHA-256", code)),
      (b) => b.toString(16).padStart(2, "0"),
    ).join("");
    assert.equal(blas.sha256[`${LIB}/openblas-pthread/libopenblasp-r0.3.21.so`], hex);

    const dnnlDir = `${arch}/libdnnl2_2.6.3-1`;
    const dnnl = await manifestOf(dnnlDir);
    assert.deepEqual(dnnl.packages.map((p) => p.name), ["libdnnl2", "ocl-icd-libopencl1"]);
    assert.deepEqual(dnnl.preload, [`${LIB}/libOpenCL.so.1.0.0`]);
    const want = {
      openblas: { path: `${blasDir}/${blas.lib}`, from: "cache", preload: [] },
      onednn: {
        path: `${dnnlDir}/${LIB}/libdnnl.so.2`,
        from: "cache",
        preload: [`${dnnlDir}/${LIB}/libOpenCL.so.1.0.0`],
      },
    };
    assert.deepEqual(libs, want);

    const second = fakeDebian();
    assert.deepEqual(await ensureNativeLibs(["openblas", "onednn"], s.opts(second.run)), want);
    assert.deepEqual(second.calls, []);
    assert.equal(s.lines.length, 1);
  } finally {
    await s.cleanup();
  }
});

Deno.test("ensureNativeLibs() fetches the missing dependency closure, leaves preloaded first", async () => {
  const s = await sandbox();
  try {
    const { run, calls } = fakeDebian(["libc6", "gcc-12-base"]);
    const libs = await ensureNativeLibs(["openblas"], s.opts(run));
    assert.deepEqual(downloads(calls), ["libopenblas0-pthread", "libgfortran5", "libquadmath0"]);
    const entry = `${await s.archDir()}/libopenblas0-pthread_0.3.21+ds-4`;
    assert.deepEqual((await manifestOf(entry)).preload, [
      `${LIB}/libquadmath.so.0.0.0`,
      `${LIB}/libgfortran.so.5.0.0`,
    ]);
    assert.deepEqual(libs?.openblas?.preload, [
      `${entry}/${LIB}/libquadmath.so.0.0.0`,
      `${entry}/${LIB}/libgfortran.so.5.0.0`,
    ]);
  } finally {
    await s.cleanup();
  }
});

Deno.test("ensureNativeLibs() discards a corrupt or partial cache entry and fetches again", async (t) => {
  const breakers: [string, (entry: string) => Promise<void>][] = [
    ["a flipped byte in a cached .so", async (entry) => {
      const path = `${entry}/${LIB}/openblas-pthread/libopenblasp-r0.3.21.so`;
      const bytes = await Deno.readFile(path);
      bytes[3] ^= 1;
      await Deno.writeFile(path, bytes);
    }],
    ["a partial entry (no manifest)", (entry) => Deno.remove(`${entry}/manifest.json`)],
    ["a deleted .so", (entry) => Deno.remove(`${entry}/${LIB}/openblas-pthread/libblas.so.3`)],
  ];
  for (const [what, breakEntry] of breakers) {
    await t.step(what, async () => {
      const s = await sandbox();
      try {
        await ensureNativeLibs(["openblas", "onednn"], s.opts(fakeDebian().run));
        const arch = await s.archDir();
        await breakEntry(`${arch}/libopenblas0-pthread_0.3.21+ds-4`);
        const again = fakeDebian();
        const libs = await ensureNativeLibs(["openblas", "onednn"], s.opts(again.run));
        assert.deepEqual(downloads(again.calls), ["libopenblas0-pthread"]); // libdnnl2 still valid
        assert.match(s.lines[1], /^engine: fetching libopenblas0-pthread from Debian into /);
        assert.equal(libs?.openblas?.from, "cache");
        const third = fakeDebian();
        await ensureNativeLibs(["openblas", "onednn"], s.opts(third.run));
        assert.deepEqual(third.calls, []);
        assert.equal(s.lines.length, 2);
      } finally {
        await s.cleanup();
      }
    });
  }
});

Deno.test("ensureNativeLibs() after a failed or timed-out fetch: one hint, no files left", async (t) => {
  const failures: [string, (c: Call) => RunResult | undefined, RegExp][] = [
    [
      "download fails",
      (c) =>
        c.args[0] === "download"
          ? { code: 100, stdout: "", stderr: "W: noise\nE: Failed to fetch http://deb/x 404\n" }
          : undefined,
      /\(fetch failed: apt-get download: E: Failed to fetch http:\/\/deb\/x 404\)/,
    ],
    [
      "download times out",
      (c) =>
        c.args[0] === "download"
          ? { code: 124, stdout: "", stderr: "apt-get timed out after 120 s" }
          : undefined,
      /\(fetch failed: apt-get download: apt-get timed out after 120 s\)/,
    ],
    [
      "a dependency's extraction fails",
      (c) =>
        c.args[0] === "-x" && c.args[1].includes("ocl-icd")
          ? { code: 2, stdout: "", stderr: "dpkg-deb: error: unexpected end of file\n" }
          : undefined,
      /\(fetch failed: dpkg-deb -x: dpkg-deb: error: unexpected end of file\)/,
    ],
  ];
  for (const [what, fail, reason] of failures) {
    await t.step(what, async () => {
      const s = await sandbox();
      try {
        const { run, calls } = fakeDebian(undefined, fail); // the dependency case: libdnnl2 only
        const libs = await ensureNativeLibs(["openblas", "onednn"], s.opts(run));
        const hints = s.lines.filter((l) => l.startsWith("engine: no "));
        assert.equal(hints.length, 1, s.lines.join("\n"));
        assert.match(hints[0], reason);
        assert.match(hints[0], /for several times faster training; continuing on wasm without/);
        const arch = await s.archDir();
        // After a timeout the next library is not tried (the network is likely down).
        if (what === "download times out") {
          assert.deepEqual(downloads(calls), ["libopenblas0-pthread"]);
        }
        if (what.startsWith("download")) {
          assert.equal(libs, undefined);
          assert.match(hints[0], /`apt-get install libopenblas0-pthread libdnnl2`/);
          assert.deepEqual(await listDir(arch), []); // no entry, no temp dir
        } else {
          assert.deepEqual(Object.keys(libs ?? {}), ["openblas"]);
          assert.match(hints[0], /^engine: no oneDNN .*`apt-get install libdnnl2`/);
          assert.deepEqual(await listDir(arch), ["libopenblas0-pthread_0.3.21+ds-4"]);
        }
      } finally {
        await s.cleanup();
      }
    });
  }
});

Deno.test("ensureNativeLibs() without fetching: DP_NATIVE=off, no apt-get, no run permission", async (t) => {
  const cases: [string, Record<string, string>, (c: Call) => RunResult | undefined, RegExp][] = [
    [
      "DP_NATIVE=off",
      { DP_NATIVE: "off" },
      () => undefined,
      /^engine: no OpenBLAS or oneDNN \(DP_NATIVE=off\); `apt-get install libopenblas0-pthread libdnnl2` for several times faster training; continuing on wasm without them$/,
    ],
    [
      "apt-get absent (not Debian)",
      {},
      (c) =>
        c.cmd === "apt-get" ? { code: 127, stdout: "", stderr: "apt-get not found" } : undefined,
      /^engine: no OpenBLAS or oneDNN \(apt-get not found\); install OpenBLAS \(libopenblas\.so\.0\) and oneDNN \(libdnnl\.so\.2\) for several times faster training/,
    ],
    [
      "no --allow-run for dpkg-deb",
      {},
      (c) =>
        c.cmd === "dpkg-deb"
          ? { code: 126, stdout: "", stderr: "no --allow-run permission for dpkg-deb" }
          : undefined,
      /^engine: no OpenBLAS or oneDNN \(no --allow-run permission for dpkg-deb\); `apt-get install libopenblas0-pthread libdnnl2`/,
    ],
  ];
  for (const [what, vars, fail, line] of cases) {
    await t.step(what, async () => {
      const s = await sandbox(vars);
      try {
        const { run, calls } = fakeDebian(undefined, fail);
        assert.equal(await ensureNativeLibs(["openblas", "onednn"], s.opts(run)), undefined);
        assert.equal(s.lines.length, 1);
        assert.match(s.lines[0], line);
        assert.ok(calls.every((c) => c.args[0] === "--version"), JSON.stringify(calls));
        if (what === "DP_NATIVE=off") assert.deepEqual(calls, []);
      } finally {
        await s.cleanup();
      }
    });
  }
});

Deno.test("prepareNativeLibs() honours DP_ONEDNN=0 and drops a cached library that does not load", async () => {
  const s = await sandbox({ DP_ONEDNN: "0" });
  try {
    const { run, calls } = fakeDebian();
    const libs = await prepareNativeLibs(s.opts(run)); // the fake .so files are text: no dlopen
    assert.deepEqual(downloads(calls), ["libopenblas0-pthread"]);
    assert.deepEqual(libs, {});
    assert.match(
      s.lines[1],
      /^engine: the cached libopenblas0-pthread does not load \(.+\); continuing without OpenBLAS$/,
    );
    assert.equal(Deno.env.get("DP_OPENBLAS"), undefined);
    assert.equal(await prepareNativeLibs(s.opts(run)), libs); // once per process
  } finally {
    await s.cleanup();
  }
});

Deno.test("runCommand() times out, reports an absent command, and runs an allowed one", async () => {
  const t0 = performance.now();
  const slow = await runCommand("sleep", ["5"], { timeoutMs: 200 });
  assert.equal(slow.code, 124);
  assert.ok(performance.now() - t0 < 4000);
  assert.equal((await runCommand("no-such-command-here", [], { timeoutMs: 1000 })).code, 127);
  const echo = await runCommand("sh", ["-c", "echo hi; echo oops >&2; exit 3"], {
    timeoutMs: 5000,
  });
  assert.deepEqual(echo, { code: 3, stdout: "hi\n", stderr: "oops\n" });
});

// ---------------------------------------------------------------------------------------------
// Real end-to-end fetch (network, Debian): DP_TEST_NATIVE_FETCH=1. It pretends libgfortran5,
// libquadmath0, libgomp1 and ocl-icd-libopencl1 are missing, so those come from the cache too.

const PRETEND_MISSING = ["libgfortran5", "libquadmath0", "libgomp1", "ocl-icd-libopencl1"];

Deno.test({
  name: "ensureNativeLibs() fetches real packages that load and run (DP_TEST_NATIVE_FETCH=1)",
  ignore: Deno.env.get("DP_TEST_NATIVE_FETCH") !== "1",
  async fn() {
    const s = await sandbox();
    try {
      let bytes = 0;
      const calls: Call[] = [];
      const run: Runner = async (cmd, args, o) => {
        calls.push({ cmd, args });
        const r = await runCommand(cmd, args, o);
        if (cmd === "apt-get" && args[0] === "download") {
          for await (const e of Deno.readDir(o.cwd!)) {
            if (e.name.startsWith(`${args[1]}_`)) {
              bytes += (await Deno.stat(`${o.cwd}/${e.name}`)).size;
            }
          }
        }
        if (cmd !== "dpkg" || args[0] !== "-s") return r;
        const kept = r.stdout.split(/\n\s*\n/).filter((st) =>
          !PRETEND_MISSING.includes(st.match(/^Package:\s*(\S+)/m)?.[1] ?? "")
        );
        return { ...r, stdout: kept.join("\n\n") };
      };
      const t0 = performance.now();
      const libs = await ensureNativeLibs(["openblas", "onednn"], s.opts(run));
      const fetchS = (performance.now() - t0) / 1000;
      assert.ok(
        libs?.openblas?.from === "cache" && libs.onednn?.from === "cache",
        s.lines.join("\n"),
      );
      const t1 = performance.now();
      const none: Runner = () => Promise.reject(new Error("the cache should need no command"));
      assert.deepEqual(await ensureNativeLibs(["openblas", "onednn"], s.opts(none)), libs);
      const reuseS = (performance.now() - t1) / 1000;
      console.error(
        `real fetch: ${downloads(calls).join(", ")}: ${(bytes / 1e6).toFixed(1)} MB in ` +
          `${fetchS.toFixed(1)} s; cache check ${reuseS.toFixed(2)} s`,
      );

      // Load as the engine would: dependencies first by absolute path, then the libraries.
      for (const p of [...libs.openblas.preload, ...libs.onednn.preload]) Deno.dlopen(p, {});
      const env = (k: string) =>
        ({
          DP_OPENBLAS: libs.openblas!.path,
          DP_ONEDNN_LIB: libs.onednn!.path,
          DP_BLAS_THREADS: "1",
        })[k];
      const blas = openBlas(env);
      assert.equal(blas?.path, libs.openblas.path);
      const c = new Float32Array(1);
      blas.sgemm(
        false,
        false,
        1,
        1,
        2,
        1,
        new Float32Array([1, 2]),
        2,
        new Float32Array([3, 4]),
        1,
        0,
        c,
        1,
      );
      assert.equal(c[0], 11);
      assert.equal(openOneDnnCore(env)?.path, libs.onednn.path);
      // Reading /proc/self/maps needs --allow-all; a child may read this process's.
      const maps =
        (await runCommand("cat", [`/proc/${Deno.pid}/maps`], { timeoutMs: 5000 })).stdout;
      for (
        const so of [
          "libopenblasp",
          "libdnnl.so",
          "libgfortran",
          "libquadmath",
          "libgomp",
          "libOpenCL",
        ]
      ) {
        const lines = maps.split("\n").filter((l) => l.includes(`/${so}`));
        assert.ok(lines.length > 0 && lines.every((l) => l.includes(s.dir)), `${so}: ${lines[0]}`);
      }
    } finally {
      await s.cleanup();
    }
  },
});
