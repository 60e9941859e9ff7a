// Bench suite "profile": where one pre-training step of the `small` U-Net spends its time, per
// kernel on our engine (tf.profile's per-kernel wall times; every wasm kernel is synchronous)
// and per aten op on PyTorch (torch.profiler self CPU time), grouped into the same categories so
// that the kernels that lose show side by side (issue 13, item 3). Profiling adds overhead on
// both sides; compare shares and ratios, and take absolute speed from the models suite.
//   deno run -R -E --allow-ffi --allow-sys --allow-run bench/profile.ts [--batch 64]
import * as tf from "@tensorflow/tfjs";
import { parseArgs } from "node:util";
import { initEngine } from "../lib/engine/mod.ts";
import { kernelFlops } from "../lib/engine/flops.ts";
import { DIT, EMA, findPython, LR, runPeerScript, trainer, UNET } from "./models.ts";

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
  { name: "adam + ema", ours: /^Dp(Adam|Ema)$/, torch: /^aten::_foreach_|^Optimizer/ },
  { name: "silu", ours: /^DpSilu/, torch: /silu/ },
  { name: "softmax", ours: /Softmax/, torch: /softmax/ },
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

/** Per-kernel ms, calls and GFLOP/s of one profiled U-Net train step (after a warm-up). */
async function profileOurs(batch: number) {
  const info = await initEngine({ backend: "wasm", announce: false });
  const job = trainer("unet", batch);
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

async function profileTorch(python: string, batch: number): Promise<Record<string, number>> {
  const out = await runPeerScript(python, [
    "--profile",
    ...["--unet", JSON.stringify(UNET), "--dit", JSON.stringify(DIT)],
    ...["--unet-batch", String(batch), "--threads", "2", "--lr", String(LR), "--ema", String(EMA)],
  ]);
  return out.unet_train_profile_ms as Record<string, number>;
}

const r1 = (x: number) => Math.round(x * 10) / 10;
const sum = (o: Record<string, number>) => Object.values(o).reduce((a, b) => a + b, 0);

/** The profile suite. */
export const suite = {
  name: "profile",
  description: "one U-Net train step per kernel category, ours vs PyTorch (profiler times)",
  async run(opts: { quick?: boolean; log?: boolean; batch?: number } = {}) {
    const log = (s: string) => (opts.log ?? true) && console.error(s);
    const batch = opts.batch ?? (opts.quick ? 8 : 64);
    const ours = await profileOurs(batch);
    const python = await findPython();
    let torch: Record<string, number> | undefined;
    if (python) torch = await profileTorch(python, batch);
    else log("profile: no python3 with torch found: our side only");
    const oc = group(ours.ms, "ours"), tc = torch ? group(torch, "torch") : undefined;
    const names = [...CATEGORIES.map((c) => c.name), OTHER];
    const rows = names.map((n) => {
      const o = oc[n] ?? 0, t = tc?.[n];
      return {
        category: n,
        ours_ms: r1(o),
        torch_ms: t === undefined ? null : r1(t),
        ratio_ours_over_torch: t ? Math.round((o / t) * 100) / 100 : null,
      };
    });
    const total = { ours_ms: r1(sum(oc)), torch_ms: tc ? r1(sum(tc)) : null };
    log(`profile: U-Net train step, batch ${batch}, ${ours.engine} vs PyTorch (profiler ms)`);
    log(`${"category".padEnd(26)} ${"ours".padStart(8)} ${"torch".padStart(8)}  ours/torch`);
    for (const r of rows) {
      log(
        `${r.category.padEnd(26)} ${String(r.ours_ms).padStart(8)} ${
          String(r.torch_ms ?? "–").padStart(8)
        }  ${r.ratio_ours_over_torch ?? "–"}`,
      );
    }
    log(
      `${"total".padEnd(26)} ${String(total.ours_ms).padStart(8)} ${
        String(total.torch_ms ?? "–").padStart(8)
      }`,
    );
    const top = (o: Record<string, number>) =>
      Object.fromEntries(
        Object.entries(o).sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => [k, r1(v)]),
      );
    const gflops = Object.fromEntries(
      Object.entries(ours.flops).map(([k, f]) => [k, r1(f / 1e6 / ours.ms[k])]),
    );
    return {
      batch,
      engine: ours.engine,
      categories: rows,
      total,
      ours_wall_ms: r1(ours.wall_ms),
      ours_top_ms: top(ours.ms),
      ours_calls: ours.calls,
      ours_gflop_s: gflops,
      ...(torch ? { torch_top_ms: top(torch) } : {}),
    };
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
