// Bench suite "profile": where one pre-training step of the `small` U-Net and of the `small` DiT,
// and one feature extraction through the U-Net, spend their time, per kernel on our engine
// (tf.profile's per-kernel wall times; every wasm kernel is synchronous) and per aten op on
// PyTorch (torch.profiler self CPU time), grouped into the same categories so that the kernels
// that lose show side by side (issue 13, item 3). Profiling adds overhead on both sides; compare
// shares and ratios, and take absolute speed from the models suite.
//   deno run -R -E --allow-ffi --allow-sys --allow-run bench/profile.ts [--batch 64]
import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initEngine } from "../lib/engine/mod.ts";
import { kernelFlops } from "../lib/engine/flops.ts";
import {
  DIT,
  EMA,
  extractor,
  FEATURE_BLOCK,
  findPython,
  LR,
  runPeerScript,
  trainer,
  UNET,
} from "./models.ts";

/** Categories, with the kernel names (ours) and aten op names (PyTorch) that fall in each. */
const CATEGORIES: readonly { name: string; ours: RegExp; torch: RegExp }[] = [
  { name: "conv forward", ours: /^(Fused)?Conv2D$/, torch: /convolution$|conv2d_forward/ },
  {
    name: "conv backward",
    ours: /^Conv2DBackprop/,
    torch: /convolution_backward|conv2d_backward/,
  },
  { name: "matmul", ours: /MatMul$/, torch: /^aten::(mm|addmm|bmm|baddbmm|matmul|linear)$/ },
  { name: "group norm", ours: /GroupNorm/, torch: /group_norm/ },
  { name: "layer norm", ours: /LayerNorm/, torch: /layer_norm/ },
  { name: "gelu", ours: /Gelu/, torch: /gelu/ },
  { name: "adam + ema", ours: /^Dp(Adam|Ema)$/, torch: /^aten::_foreach_|^Optimizer/ },
  { name: "silu", ours: /^DpSilu/, torch: /silu/ },
  { name: "softmax", ours: /Softmax/, torch: /softmax/ },
  // Ours is one kernel each way; PyTorch's attention stays in its bmm, softmax and copy rows.
  { name: "attention (fused)", ours: /^DpQkvAttention/, torch: /(?!)/ },
  {
    name: "copies, reshapes, concat",
    ours: /^(Reshape|Transpose|Concat|Slice|SplitV|Cast|Identity|Pad|Tile)$/,
    torch:
      /^aten::(copy_|cat|contiguous|clone|_to_copy|view|reshape|permute|transpose|slice|split|constant_pad_nd|empty.*|as_strided|t)$/,
  },
];
const OTHER = "elementwise and other";

function category(name: string, side: "ours" | "torch"): string {
  return CATEGORIES.find((c) => c[side].test(name))?.name ?? OTHER;
}

function group(ms: Record<string, number>, side: "ours" | "torch"): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(ms)) {
    out[category(k, side)] = (out[category(k, side)] ?? 0) + v;
  }
  return out;
}

type Workload = "unet" | "dit" | "unet_features";

/** Per-kernel ms, calls and GFLOP/s of one profiled step (after a warm-up). */
async function profileOurs(model: Workload, batch: number) {
  const info = await initEngine({ backend: "wasm", announce: false });
  const job = model === "unet_features" ? extractor(batch) : trainer(model, batch);
  job.step();
  const t0 = performance.now();
  const p = await tf.profile(() => (job.step(), []));
  const wall = performance.now() - t0;
  job.dispose();
  const ms: Record<string, number> = {}, calls: Record<string, number> = {};
  const flops: Record<string, number> = {};
  for (const k of p.kernels) {
    // Op scopes (`fusedConv2d__op`, a custom gradient's `unnamed scope`) wrap kernels that are
    // recorded on their own: counting them would count those kernels twice.
    if (/__op$|^unnamed scope$/.test(k.name)) continue;
    ms[k.name] = (ms[k.name] ?? 0) + (k.kernelTimeMs as number);
    calls[k.name] = (calls[k.name] ?? 0) + 1;
    const f = kernelFlops(k.name, k.inputShapes as number[][], k.outputShapes[0] ?? []);
    if (f) flops[k.name] = (flops[k.name] ?? 0) + f;
  }
  return { engine: info.engine, wall_ms: wall, ms, calls, flops };
}

/** Self CPU ms per aten op of one U-Net and one DiT train step and one feature extraction. */
async function profileTorch(python: string, batch: number) {
  const out = await runPeerScript(python, [
    "--profile",
    ...["--unet", JSON.stringify(UNET), "--dit", JSON.stringify(DIT)],
    ...["--unet-batch", String(batch), "--dit-batch", String(batch)],
    ...["--feature-batch", String(batch), "--feature-block", String(FEATURE_BLOCK)],
    ...["--threads", "2", "--lr", String(LR), "--ema", String(EMA)],
  ]);
  return {
    unet: out.unet_train_profile_ms as Record<string, number>,
    dit: out.dit_train_profile_ms as Record<string, number>,
    unet_features: out.unet_features_profile_ms as Record<string, number>,
  };
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const sum = (o: Record<string, number>) => Object.values(o).reduce((a, b) => a + b, 0);

/** The profile suite. */
export const suite = {
  name: "profile",
  description:
    "one U-Net and one DiT train step and one U-Net feature extraction per kernel category, ours vs PyTorch (profiler times)",
  async run(opts: { quick?: boolean; log?: boolean; batch?: number } = {}) {
    const log = (s: string) => (opts.log ?? true) && console.error(s);
    const batch = opts.batch ?? (opts.quick ? 8 : 64);
    const ours = {
      unet: await profileOurs("unet", batch),
      dit: await profileOurs("dit", batch),
      unet_features: await profileOurs("unet_features", batch),
    };
    const python = await findPython();
    const torch = python ? await profileTorch(python, batch) : undefined;
    if (!python) log("profile: no python3 with torch found: our side only");
    const result: Record<string, unknown> = { batch, engine: ours.unet.engine };
    for (const model of ["unet", "dit", "unet_features"] as const) {
      const o = ours[model], t = torch?.[model];
      const oc = group(o.ms, "ours"), tc = t ? group(t, "torch") : undefined;
      const rows = [...CATEGORIES.map((c) => c.name), OTHER].map((n) => {
        const a = oc[n] ?? 0, b = tc?.[n];
        return {
          category: n,
          ours_ms: r1(a),
          torch_ms: b === undefined ? null : r1(b),
          ratio_ours_over_torch: b ? Math.round((a / b) * 100) / 100 : null,
        };
      });
      const total = { ours_ms: r1(sum(oc)), torch_ms: tc ? r1(sum(tc)) : null };
      const cell = (x: number | string | null, w: number) => String(x ?? "–").padStart(w);
      const what = model === "unet_features"
        ? `U-Net features to b${FEATURE_BLOCK}`
        : `${model} train step`;
      log(`profile: ${what}, batch ${batch}, ${o.engine} vs PyTorch (profiler ms)`);
      log(`${"category".padEnd(26)} ${"ours".padStart(8)} ${"torch".padStart(8)}  ours/torch`);
      for (const r of rows) {
        log(
          `${r.category.padEnd(26)} ${cell(r.ours_ms, 8)} ${cell(r.torch_ms, 8)}  ${
            cell(r.ratio_ours_over_torch, 0)
          }`,
        );
      }
      log(`${"total".padEnd(26)} ${cell(total.ours_ms, 8)} ${cell(total.torch_ms, 8)}`);
      const top = (m: Record<string, number>) =>
        Object.fromEntries(
          Object.entries(m).sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => [k, r1(v)]),
        );
      result[model] = {
        categories: rows,
        total,
        ours_wall_ms: r1(o.wall_ms),
        ours_top_ms: top(o.ms),
        ours_calls: o.calls,
        ours_gflop_s: Object.fromEntries(
          Object.entries(o.flops).map(([k, f]) => [k, r1(f / 1e6 / o.ms[k])]),
        ),
        ...(t ? { torch_top_ms: top(t) } : {}),
      };
    }
    return result;
  },
};

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { batch: { type: "string" }, quick: { type: "boolean" } },
  });
  const r = await suite.run({
    quick: values.quick,
    batch: values.batch ? Number(values.batch) : undefined,
  });
  console.log(JSON.stringify(r, null, 2));
}
