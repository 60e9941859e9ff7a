// Bench suite "adm256": the papers' U-Net (553 M parameters, 256×256) extracting features to
// block 24 at a requested batch of 4, as the probing scripts do (weights off the wasm heap,
// lib/probe_run.ts's forInference; the batch sized to the 4 GiB heap, lib/features.ts, with
// any line saying so kept), beside PyTorch's fp32 forward
// of the same architecture to the same block at batch 4 (bench/peer_torch.py). Random weights
// and images: only speed and memory are measured.
// Ours is timed end to end (the batch-sizing image and the first batch's primitive creation
// included) and over the full batches after the first (`img_s_steady`); `ratio_vs_torch` sets
// the latter against PyTorch's median after its warm-up, `ratio_end_to_end` the former.
//   deno run -R -E --allow-ffi --allow-sys --allow-run bench/adm256.ts [--images 12]
import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initEngine } from "../lib/engine/mod.ts";
import { namedSchedule } from "../lib/diffusion/schedule.ts";
import { extractTable, type FrozenModel } from "../lib/features.ts";
import { initParams, presetSpec } from "../lib/models/mod.ts";
import { disposeParams } from "../lib/params.ts";
import { rng } from "../lib/random.ts";
import { DIT, findPython, runPeerScript } from "./models.ts";
import * as unet from "../lib/models/unet.ts";
import { forInference } from "../lib/probe_run.ts";
import { isOffHeap } from "../lib/offheap_params.ts";

/** The wasm heap's size now (it only grows: the run's peak), GiB. */
function heapGib(): number | undefined {
  const b = tf.backend() as unknown as { wasm?: { HEAPU8?: Uint8Array } };
  const bytes = b.wasm?.HEAPU8?.buffer.byteLength;
  return bytes === undefined ? undefined : bytes / 2 ** 30;
}

const BLOCK = 24, BATCH = 4;

async function ours(images: number, log: (s: string) => void) {
  const info = await initEngine({ backend: "wasm", announce: false });
  const spec = presetSpec("unet", "adm256");
  const params = initParams(spec, rng(0));
  const weightBytes = tf.memory().numBytes;
  const notes: string[] = [];
  const note = (l: string) => (notes.push(l), log(`adm256: ${l}`));
  // As the probing scripts hold it (lib/probe_run.ts): weights off the heap.
  const model: FrozenModel = forInference(
    { spec, params, schedule: namedSchedule("linear", 1000) },
    note,
  );
  const [h, w, c] = [256, 256, 3];
  const ds = {
    name: "random",
    images: Float32Array.from({ length: images * h * w * c }, (_, i) => Math.sin(i * 0.37)),
    labels: new Int32Array(images),
    shape: [h, w, c] as const,
    classes: ["x"],
  };
  let batch = 0, last = 0;
  // When each batch ended: the batches after the first are timed alone (steady state: the
  // first carries the batch-sizing image and oneDNN's primitive creation).
  const ends: [done: number, ms: number][] = [];
  const table = await extractTable(model, ds, [{ t: 10, block: BLOCK, pool: 1 }], {
    noiseKey: rng(1),
    batch: BATCH,
    onNote: note,
    onBatch: (done) => {
      batch = Math.max(batch, done - last);
      last = done;
      ends.push([done, performance.now()]);
    },
  });
  const steady = ends.slice(1).flatMap(([done, ms], i) =>
    done - ends[i][0] === batch ? [ms - ends[i][1]] : []
  ).sort((a, b) => a - b);
  const steadyMs = steady.length ? steady[Math.floor((steady.length - 1) / 2)] : undefined;
  disposeParams(model.params);
  return {
    engine: info.engine,
    images,
    batch_requested: BATCH,
    batch_used: batch,
    img_s: table.imagesPerS, // the first image runs alone (it sizes the batch): included
    // Full batches after the first, median (lower middle): what PyTorch's warm median measures.
    img_s_steady: steadyMs === undefined ? undefined : batch / (steadyMs / 1000),
    steady_batches: steady.length,
    weights_gib: weightBytes / 2 ** 30,
    weights_off_heap: isOffHeap(model.params),
    heap_gib: heapGib(),
    notes,
  };
}

function peer(python: string): Promise<Record<string, unknown>> {
  return runPeerScript(python, [
    ...["--only", "unet_features", "--unet", JSON.stringify(unet.UNET_CONFIGS.adm256)],
    ...["--dit", JSON.stringify(DIT), "--feature-batch", String(BATCH)],
    ...["--feature-block", String(BLOCK), "--repeats", "2", "--budget", "30", "--threads", "2"],
  ]);
}

/** The adm256 suite. */
export const suite = {
  name: "adm256",
  description: "adm256 features to block 24 at batch 4 (sized to the wasm heap) vs PyTorch fp32",
  async run(opts: { quick?: boolean; log?: boolean; images?: number } = {}) {
    const log = (s: string) => (opts.log ?? true) && console.error(s);
    const o = await ours(opts.images ?? (opts.quick ? 3 : 12), log);
    const steady = o.img_s_steady;
    log(
      `adm256: ${o.engine}: ${o.images} images at batch ${o.batch_used} (asked ${BATCH}): ${
        o.img_s.toFixed(3)
      } img/s end to end` +
        (steady ? `, ${steady.toFixed(3)} img/s over ${o.steady_batches} warm batches` : ""),
    );
    const python = await findPython();
    if (!python) {
      log("adm256: no python3 with torch found: our side only");
      return { block: BLOCK, ours: o };
    }
    const p = await peer(python);
    const pf = p.unet_features as { img_s: number; batch: number };
    const agree = (p.params as { unet: number }).unet === unet.numParams(unet.UNET_CONFIGS.adm256);
    // Like for like: our warm batches against PyTorch's warm median; end to end beside it.
    const r3 = (x: number) => Math.round(x * 1000) / 1000;
    const ratio = steady ? r3(steady / pf.img_s) : undefined;
    const endToEnd = r3(o.img_s / pf.img_s);
    log(
      `adm256: PyTorch ${p.torch} batch ${pf.batch}: ${pf.img_s.toFixed(3)} img/s (warm median); ` +
        `ours / PyTorch ${ratio === undefined ? "–" : `${ratio.toFixed(2)}×`} warm, ` +
        `${endToEnd.toFixed(2)}× end to end${agree ? "" : " (PARAMETER COUNTS DISAGREE)"}`,
    );
    return {
      block: BLOCK,
      ours: o,
      torch: p,
      params_agree: agree,
      ratio_vs_torch: ratio,
      ratio_end_to_end: endToEnd,
    };
  },
};

if (import.meta.main) {
  const { values } = parseArgs({ args: Deno.args, options: { images: { type: "string" } } });
  const r = await suite.run({ images: values.images ? Number(values.images) : undefined });
  console.log(JSON.stringify(r, null, 2));
}
