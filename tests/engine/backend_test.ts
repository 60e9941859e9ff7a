import * as tf from "@tensorflow/tfjs";
import { assertEquals, assertRejects } from "../assert.ts";
import { BACKEND_ENV, engineInfo, initEngine } from "../../lib/engine/mod.ts";

Deno.test("initEngine() honours --backend, then the environment variable", async () => {
  const saved = Deno.env.get(BACKEND_ENV);
  try {
    Deno.env.set(BACKEND_ENV, "cpu");
    assertEquals((await initEngine({ announce: false })).backend, "cpu");
    assertEquals(tf.getBackend(), "cpu");
    const info = await initEngine({ backend: "wasm", announce: false });
    assertEquals(info.backend, "wasm");
    assertEquals(info.engine.startsWith("wasm+kernels"), true);
    assertEquals(engineInfo(), info);
  } finally {
    if (saved === undefined) Deno.env.delete(BACKEND_ENV);
    else Deno.env.set(BACKEND_ENV, saved);
  }
});

Deno.test("initEngine() rejects unknown backends and names the source", async () => {
  await assertRejects(() => initEngine({ backend: "tpu", announce: false }), {
    message: 'Unknown backend "tpu" from --backend: expected one of tensorflow, webgpu, wasm, cpu',
  });
});

Deno.test("initEngine() without a native package or GPU falls back to wasm", async () => {
  const saved = Deno.env.get(BACKEND_ENV);
  Deno.env.delete(BACKEND_ENV);
  try {
    const info = await initEngine({ announce: false });
    // On a machine with tfjs-node or a real GPU adapter this picks those; here it must be wasm.
    const hasGpu = !!(navigator as { gpu?: unknown }).gpu &&
      !!(await (navigator as unknown as {
        gpu: { requestAdapter(): Promise<{ isFallbackAdapter?: boolean } | null> };
      }).gpu
        .requestAdapter().then((a) => a && !a.isFallbackAdapter).catch(() => false));
    if (!hasGpu && info.backend !== "tensorflow") assertEquals(info.backend, "wasm");
  } finally {
    if (saved !== undefined) Deno.env.set(BACKEND_ENV, saved);
  }
});

Deno.test("a backend that cannot be had is a clear error", async () => {
  await assertRejects(() => initEngine({ backend: "tensorflow", announce: false }), {
    message:
      "Backend tensorflow asked for, but neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node imports",
  });
});

Deno.test("initEngine({ blas: false }) takes the BLAS kernels out again", async () => {
  const withBlas = await initEngine({ backend: "wasm", announce: false });
  const without = await initEngine({ backend: "wasm", blas: false, announce: false });
  assertEquals(without.engine, "wasm+kernels");
  if (withBlas.engine.includes("+blas")) {
    assertEquals((await initEngine({ backend: "wasm", announce: false })).engine, withBlas.engine);
  }
});
