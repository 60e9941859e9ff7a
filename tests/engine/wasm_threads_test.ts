// tfjs's threaded wasm binary under Deno (lib/engine/wasm_threads.ts), in a child process since
// the wasm module initialises once per process: the engine says so, the pool has the threads
// asked for, and a matmul and a convolution agree with the cpu backend.
import { assert, assertEquals } from "../assert.ts";

const root = new URL("../../", import.meta.url).pathname;
const child = (viaRunMain: boolean) => `
import * as tf from "@tensorflow/tfjs";
import { initEngine } from "../lib/engine/mod.ts";
import { runMain } from "../lib/cli.ts";
const main = async () => {
const info = await initEngine({ announce: false });
const a = tf.randomNormal([64, 96], 0, 1, "float32", 1), b = tf.randomNormal([96, 48], 0, 1, "float32", 2);
const x = tf.randomNormal([2, 12, 12, 8], 0, 1, "float32", 3) as tf.Tensor4D;
const w = tf.randomNormal([3, 3, 8, 16], 0, 1, "float32", 4) as tf.Tensor4D;
const run = () => [tf.matMul(a, b), tf.conv2d(x, w, 1, "same")].map((t) => Array.from(t.dataSync()));
const wasm = run();
await tf.setBackend("cpu");
const cpu = run();
const err = Math.max(...wasm.flatMap((v, i) => v.map((y, j) => Math.abs(y - cpu[i][j]))));
console.log(JSON.stringify({ engine: info.engine, threads: info.details.wasmThreads, err }));
};
// pthread workers keep a process alive: runMain ends them, as it does for the scripts.
${viaRunMain ? "await runMain(main);" : "await main(); Deno.exit(0);"}
`;

async function runChild(env: Record<string, string>, viaRunMain = false) {
  // Under the repository's ignored tmp/, so that the child resolves the project's imports.
  await Deno.mkdir(`${root}tmp`, { recursive: true });
  const file = await Deno.makeTempFile({ dir: `${root}tmp`, suffix: ".ts" });
  try {
    await Deno.writeTextFile(file, child(viaRunMain));
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-R", "-E", "--allow-ffi", "--allow-sys", file],
      cwd: root,
      env: { NO_COLOR: "1", DP_BLAS: "0", ...env },
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: out.code,
      out: new TextDecoder().decode(out.stdout),
      err: new TextDecoder().decode(out.stderr),
    };
  } finally {
    await Deno.remove(file);
  }
}

Deno.test("DP_WASM_THREADS=2: the threaded wasm binary runs with 2 threads and agrees with cpu", async () => {
  const r = await runChild({ DP_WASM_THREADS: "2" });
  assertEquals(r.code, 0, r.err);
  const got = JSON.parse(r.out.trim().split("\n").pop()!);
  assertEquals([got.engine, got.threads], ["wasm+threads+kernels", 2]);
  assert(got.err < 1e-3, `max |wasm − cpu| ${got.err}`);
  const off = await runChild({ DP_WASM_THREADS: "0" });
  assertEquals(off.code, 0, off.err);
  assertEquals(JSON.parse(off.out.trim().split("\n").pop()!).engine, "wasm+kernels");
});

Deno.test("without the native kernels, a script (runMain) takes every core; a library caller does not", async () => {
  const cores = navigator.hardwareConcurrency;
  // DP_BLAS=0 (set by runChild) stands for a machine without OpenBLAS / oneDNN; "" is unset.
  const script = await runChild({ DP_WASM_THREADS: "" }, true);
  assertEquals(script.code, 0, script.err);
  const got = JSON.parse(script.out.trim().split("\n").pop()!);
  if (cores >= 2) assertEquals([got.engine, got.threads], ["wasm+threads+kernels", cores]);
  else assertEquals(got.engine, "wasm+kernels");
  assert(got.err < 1e-3, `max |wasm − cpu| ${got.err}`);
  const library = await runChild({ DP_WASM_THREADS: "" });
  assertEquals(library.code, 0, library.err);
  assertEquals(JSON.parse(library.out.trim().split("\n").pop()!).engine, "wasm+kernels");
  const off = await runChild({ DP_WASM_THREADS: "1" }, true);
  assertEquals(off.code, 0, off.err);
  assertEquals(JSON.parse(off.out.trim().split("\n").pop()!).engine, "wasm+kernels");
});

Deno.test("DP_WASM_THREADS that is not a thread count is one clear error", async () => {
  const r = await runChild({ DP_WASM_THREADS: "many" });
  assert(r.code !== 0);
  assert(/DP_WASM_THREADS="many": expected a thread count >= 2/.test(r.err), r.err);
});
