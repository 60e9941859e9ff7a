// Child of tests/features_test.ts: extract with no ceiling at a batch far beyond the wasm heap,
// so that the module aborts for real (it is unusable afterwards, hence a process of its own).
import { initEngine } from "../../lib/engine/mod.ts";
import { runMain } from "../../lib/cli.ts";
import { namedSchedule } from "../../lib/diffusion/schedule.ts";
import { extractTable } from "../../lib/features.ts";
import { initParams, inputShape, presetSpec } from "../../lib/models/mod.ts";
import { rng } from "../../lib/random.ts";

await runMain(async () => {
  await initEngine({ backend: "wasm", announce: false });
  const spec = presetSpec("unet", "tiny");
  const [h, w, c] = inputShape(spec);
  const n = Number(Deno.args[0]);
  const ds = {
    name: "zeros",
    images: new Float32Array(n * h * w * c),
    labels: new Int32Array(n),
    shape: [h, w, c] as const,
    classes: ["x"],
  };
  const model = { spec, params: initParams(spec, rng(0)), schedule: namedSchedule("linear", 1000) };
  await extractTable(model, ds, [{ t: 10, block: 2, pool: 1 }], {
    noiseKey: rng(1),
    batch: n,
    heapLimitBytes: Infinity, // the caller opts out of sizing
  });
});
