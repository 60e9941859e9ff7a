// The report's tables and figures, as data: for each paper table an analog, with the paper's rows
// quoted from ../shared/seeds (file and table number beside each quote) and the runs of ours it
// reads. An experiment lands its table here, in one place: name its results (experiment and a
// filter), its columns (paths into the results JSON) and the runs it expects; a run it expects
// but results/ lacks is drawn as missing. table.ts documents the path syntax.
//
// Probe-like results (probe, ablate, heads, knn, baselines) carry `config.t`, `config.block`,
// `config.pool`, `config.head` and `metrics.test_accuracy` as a fraction. The semi-supervised,
// generation and tuning experiments come later; their tables are declared with the names they
// are planned to write, and the experiment that lands adjusts its paths and commands here.
import {
  type Column,
  type FigureDef,
  getPath,
  type ReportItem,
  satisfies,
  type Section,
  type TableDef,
  type Where,
} from "./table.ts";
import type { LoadedResult } from "../results.ts";

// ---------------------------------------------------------------- sources

/** The seed files quoted, under ../shared/seeds. */
export const SEEDS = {
  "000": "000_790622fb5a2d7641.txt",
  "001": "001_1eea33de6c23a4db.txt",
  "002": "002_33fc5e753e444cbd.txt",
} as const;

/** Report sections in order: the pre-training all papers share, the papers, then benchmarks. */
export const SECTIONS: readonly {
  readonly id: Section;
  readonly title: string;
  readonly intro: string;
}[] = [
  {
    id: "pretrain",
    title: "Pre-training",
    intro: "The diffusion models every later table reads features from or tunes: our runs of " +
      "`deno task pretrain` and samples drawn from their checkpoints.",
  },
  {
    id: "001",
    title: "001: Diffusion Models Beat GANs on Image Classification (Mukhopadhyay et al.)",
    intro: "Frozen ADM U-Net features f(x0, t, b) with linear, MLP, CNN and attention heads.",
  },
  {
    id: "002",
    title:
      "002: Do text-free diffusion models learn discriminative visual representations? (Mukhopadhyay et al.)",
    intro: "Attention head, DifFormer and DifFeed on frozen features; semi-supervised and kNN.",
  },
  {
    id: "000",
    title:
      "000: Image Classification Using a Diffusion Model as a Pre-Training Model (Ukita et al.)",
    intro: "Latent DiT pre-trained without labels (unconditional or representation-conditioned), " +
      "then tuned with labels.",
  },
  {
    id: "bench",
    title: "Benchmarks",
    intro: "Speed of this toolkit's engines (`deno task bench`), beside PyTorch where measured.",
  },
];

// Scale statements shared by several tables.
const OURS_FROZEN = "Fashion-MNIST (60,000 train / 10,000 test images, 10 classes) at 28×28, " +
  "frozen features of the `small` ADM U-Net (3.2M parameters) pre-trained here, T = 1000";
const PAPER_IN1K = "ImageNet-1k (1.3M train images, 1000 classes) at 256×256, frozen " +
  "unconditional ADM U-Net of guided diffusion (256×256 checkpoint), T = 1000";
const acc: Column = {
  key: "accuracy",
  header: "accuracy",
  path: "metrics.test_accuracy",
  format: "percent",
};
// A heads run's best head of a kind (chosen on validation), else the run's own test accuracy.
const accOf = (kind: string): Column => ({
  ...acc,
  path: `metrics.best_by_kind.${kind}.test_accuracy|metrics.test_accuracy`,
});
// The fixed-cell probes (not the automatic choice) of the default protocol, on the reference
// weights (other checkpoints and random weights have their own table).
// The attention-head probe of the default protocol, and how to run it.
const attentionProbe = {
  where: { experiment: "probe", "config.select": "fixed", "config.head": "attention" },
  command: "deno task probe --head attention:36:2:4:16 --pool 7 --epochs 15",
};

const fixedProbe = {
  experiment: "probe",
  "config.select": "fixed",
  "config.head": "linear",
  "config.weights": "results/pretrain/fashion-mnist-small-seed0.weights.safetensors",
};

// ---------------------------------------------------------------- pre-training

// The 1,000-step `small` Fashion-MNIST runs of issue 13's fidelity checks.
const FIDELITY_WHERE = {
  "config.dataset": "fashion-mnist",
  "config.preset": "small",
  "config.steps": 1000,
} as const;
const FIDELITY_COLUMNS: Column[] = [
  { key: "run", header: "run", path: "$label" },
  { key: "seed", header: "seed", path: "config.seed", format: "int" },
  { key: "engine", header: "engine", path: "env.engine" },
  { key: "final", header: "final loss (last 100 steps)", path: "metrics.final_loss" },
  { key: "ips", header: "images/s", path: "metrics.images_per_s" },
  { key: "cpu", header: "CPU", path: "env.cpu" },
];
const fidelityRun = (name: string, flags: string, env = "") => ({
  label: name,
  where: { run: name },
  command: `${env}deno task pretrain --dataset fashion-mnist --config small --steps 1000 ` +
    `--log-every 1 --samples 16 ${flags} --run ${name}`,
});
const BF16_RUNS = (["fp32", "bf16"] as const).flatMap((p) =>
  [0, 1].map((seed) =>
    fidelityRun(`fashion-mnist-small-${p}-1k-seed${seed}`, `--precision ${p} --seed ${seed}`)
  )
);
const WINOGRAD_RUNS = [
  fidelityRun("fashion-mnist-small-fp32-winograd-1k-seed0", "--precision fp32 --seed 0"),
  fidelityRun(
    "fashion-mnist-small-fp32-direct-1k-seed0",
    "--precision fp32 --seed 0",
    "DP_ONEDNN_WINOGRAD=0 ",
  ),
];

const pretrain: ReportItem[] = [
  {
    kind: "table",
    id: "pretrain-runs",
    section: "pretrain",
    title: "Pre-training runs",
    scale: {
      paper: "001 and 002 use the released guided-diffusion ADM U-Net trained on ImageNet at " +
        "256×256 (not retrained); 000 trains DiT-B/2 on 10,313 brain CT latents (its Table 1 and 2)",
      ours: "the ADM U-Net presets `tiny` (16×16) and `small` (28×28) on embedded MNIST or " +
        "Fashion-MNIST, T = 1000, on CPU",
    },
    experiments: ["pretrain"],
    columns: [
      { key: "run", header: "run", path: "$label" },
      { key: "dataset", header: "dataset", path: "config.dataset" },
      // Results name the model by kind (config.model) beside its spec; runs before the DiT's
      // conditions kept the spec itself under config.model.
      { key: "kind", header: "denoiser", path: "config.model.kind|config.model" },
      { key: "model", header: "preset", path: "config.preset|config.model.name|config.modelName" },
      { key: "condition", header: "condition", path: "config.condition" },
      { key: "latent", header: "input", path: "config.latent" },
      { key: "steps", header: "steps", path: "metrics.steps", format: "int" },
      { key: "batch", header: "batch", path: "config.batch", format: "int" },
      { key: "lr", header: "lr", path: "config.lr" },
      { key: "epochs", header: "epochs", path: "metrics.epochs" },
      { key: "first", header: "first loss", path: "metrics.first_loss" },
      { key: "final", header: "final loss", path: "metrics.final_loss" },
      { key: "ips", header: "images/s", path: "metrics.images_per_s" },
      { key: "engine", header: "engine", path: "env.engine" },
      { key: "cpu", header: "CPU", path: "env.cpu" },
      { key: "cores", header: "cores", path: "env.cpus" },
    ],
    expected: [{
      label: "README reference run",
      where: {
        "config.dataset": "fashion-mnist",
        "config.preset|config.model.name|config.modelName": "small",
      },
      command: "deno task pretrain --dataset fashion-mnist --config small --steps 4000 " +
        "--export-weights",
    }],
    command: "deno task pretrain",
    artifacts: "-samples\\.png$",
  },
  {
    kind: "figure",
    id: "pretrain_loss",
    section: "pretrain",
    title: "Pre-training loss (mean over each logging interval)",
    experiments: ["pretrain"],
    points: "metrics.loss_curve.points",
    x: "step",
    y: "loss",
    logY: true,
  },
  {
    kind: "table",
    id: "pretrain-segments",
    section: "pretrain",
    title: "Pre-training segments",
    note: "A resumed run has one segment per start: the steps it took, on which code, engine " +
      "and machine.",
    experiments: ["pretrain"],
    each: "segments.*",
    columns: [
      { key: "from", header: "from step", path: "@.from_step", format: "int" },
      { key: "to", header: "to step", path: "@.to_step", format: "int" },
      { key: "commit", header: "commit", path: "@.commit", format: "commit" },
      { key: "dirty", header: "dirty", path: "@.dirty" },
      { key: "engine", header: "engine", path: "@.engine" },
      { key: "cpu", header: "CPU", path: "@.cpu" },
      { key: "cores", header: "cores", path: "@.cpus" },
      { key: "train", header: "train s", path: "@.train_s" },
      { key: "finished", header: "finished", path: "@.finished", format: "time" },
      { key: "note", header: "note", path: "@.note" },
    ],
    command: "deno task pretrain",
  },
  {
    kind: "table",
    id: "pretrain-bf16",
    section: "pretrain",
    title: "bf16 mixed precision against fp32: final loss of 1,000-step runs (issue 13)",
    note: "The `small` U-Net on Fashion-MNIST, batch 32, two seeds per precision. In bf16 the " +
      "convolutions and matrix products round their inputs to bf16 and accumulate in f32; " +
      "weights, Adam's moments, the loss and the norms stay fp32. Final loss: the mean of the " +
      "last 100 steps' losses (`--log-every 1`).",
    experiments: ["pretrain"],
    where: { ...FIDELITY_WHERE, run: { oneOf: BF16_RUNS.map((r) => r.label) } },
    columns: FIDELITY_COLUMNS,
    expected: BF16_RUNS,
    command: "deno task pretrain --precision bf16",
    findings: bf16Findings,
  },
  {
    kind: "table",
    id: "pretrain-winograd",
    section: "pretrain",
    title: "Winograd convolutions against direct ones: 1,000-step runs (issue 13)",
    note: "The same run twice at one commit: oneDNN's Winograd kernels where they pay " +
      "(forward, input and weight gradients, lib/engine/blas/onednn.ts) and, with " +
      "DP_ONEDNN_WINOGRAD=0, the direct kernels everywhere. images/s was measured in separate " +
      "runs on a shared host.",
    experiments: ["pretrain"],
    where: { ...FIDELITY_WHERE, run: { oneOf: WINOGRAD_RUNS.map((r) => r.label) } },
    columns: [
      ...FIDELITY_COLUMNS.slice(0, 2),
      { key: "winograd", header: "Winograd", path: "env.engine_details.winograd" },
      ...FIDELITY_COLUMNS.slice(2),
    ],
    expected: WINOGRAD_RUNS,
    command: "DP_ONEDNN_WINOGRAD=0 deno task pretrain",
    findings: winogradFindings,
  },
  {
    kind: "table",
    id: "sample-runs",
    section: "pretrain",
    title: "Samples",
    experiments: ["sample"],
    columns: [
      { key: "model", header: "model", path: "config.model" },
      { key: "method", header: "sampler", path: "config.method" },
      { key: "steps", header: "steps", path: "config.steps", format: "int" },
      { key: "kind", header: "weights used", path: "config.weights_kind" },
      { key: "weights", header: "weights file (architecture)", path: "config.weights" },
      { key: "images", header: "images", path: "metrics.images", format: "int" },
      { key: "mean", header: "pixel mean", path: "metrics.pixel_mean" },
    ],
    command: "deno task sample --checkpoint checkpoints/pretrain/<run>/checkpoint.safetensors",
    artifacts: "\\.png$",
  },
];

// ---------------------------------------------------------------- 001

// Figure 2 by one axis: the grid's cell best on validation for each value of `by`, that value
// first, then the other two axes.
function gridBestTable(by: "block" | "pool", header: string, what: string): TableDef {
  const cols: Record<string, Column> = {
    block: { key: "b", header: "b", path: "@.block", format: "int" },
    t: { key: "t", header: "t", path: "@.t", format: "int" },
    pool: { key: "pool", header: "pool", path: "@.pool", format: "int" },
  };
  return {
    kind: "table",
    id: `001-grid-${by}s`,
    section: "001",
    title: `Figure 2, by ${by}: the best cell of ${what} (on validation)`,
    scale: { ours: "the grid of the table above" },
    experiments: ["ablate"],
    each: `metrics.best_per_${by}.*`,
    columns: [
      { ...cols[by], header },
      ...(["block", "t", "pool"] as const).filter((k) => k !== by).map((k) => cols[k]),
      { key: "val", header: "val accuracy", path: "@.val_accuracy", format: "percent" },
      { key: "accuracy", header: "accuracy", path: "@.test_accuracy", format: "percent" },
    ],
    command: "deno task ablate --train-percent 20 --test-percent 20",
  };
}

const p001: TableDef[] = [
  {
    kind: "table",
    id: "001-table1",
    section: "001",
    title: "001 Table 1: main results (linear probe and attention head) and baselines",
    scale: { paper: PAPER_IN1K + "; t = 90, b = 24 (its Section 4.1.1)", ours: OURS_FROZEN },
    note: "Our rows at the (t, b) the ablation grid chose on validation (see Figure 2 below). " +
      "The paper's U-Net Encoder is its guided-diffusion classifier; ours is the same encoder " +
      "trained from scratch with labels. The raw-pixel probe and the supervised CNN are ours.",
    experiments: ["probe", "heads", "baselines"],
    columns: [
      { key: "method", header: "method", path: "$label" },
      { key: "b", header: "b", path: "config.block", format: "int" },
      { key: "t", header: "t", path: "config.t", format: "int" },
      {
        key: "pool",
        header: "pool",
        path: "metrics.best_by_kind.attention.pool|config.pool",
        format: "int",
      },
      { key: "train", header: "train images", path: "config.train_images", format: "int" },
      { key: "epochs", header: "epochs", path: "config.recipe.epochs", format: "int" },
      { ...acc, path: "metrics.best_by_kind.attention.test_accuracy|metrics.test_accuracy" },
      { key: "fid", header: "FID" },
    ],
    paper: [{
      seed: SEEDS["001"],
      table: 1,
      rows: [
        { method: "U-Net Encoder", accuracy: "64.32%", fid: "n/a" },
        { method: "GD (L, pool 1×1)", accuracy: "61.95%", fid: "26.21" },
        { method: "GD (L, pool 2×2)", accuracy: "64.96%", fid: "26.21" },
        { method: "GD (Attention)", accuracy: "71.89%", fid: "26.21" },
      ],
    }],
    expected: [
      {
        label: "U-Net Encoder (supervised, from scratch)",
        where: { experiment: "baselines", "config.head": "unet-encoder-supervised" },
        command: "deno task baselines --baseline unet-encoder-supervised",
      },
      {
        label: "GD (L, pool 1×1)",
        where: { ...fixedProbe, "config.pool": 1 },
        command: "deno task probe --pool 1",
      },
      {
        label: "GD (L, pool 2×2)",
        where: { ...fixedProbe, "config.pool": 2 },
        command: "deno task probe --pool 2",
      },
      {
        label: "GD (L, pool 4×4)",
        where: { ...fixedProbe, "config.pool": 4 },
        command: "deno task probe --pool 4",
      },
      {
        label: "GD (L, the whole 7×7 map)",
        where: { ...fixedProbe, "config.pool": 7 },
        command: "deno task probe --pool 7",
        setting: "no pooling: the bottleneck's 7×7×128 map",
      },
      {
        label: "GD (Attention), all of train",
        ...attentionProbe,
      },
      {
        label: "GD (Attention), heads comparison",
        where: { experiment: "heads" },
        command: "deno task heads",
        setting: "the attention head best on validation",
      },
      {
        label: "raw pixels, linear",
        where: { experiment: "baselines", "config.head": "raw-pixels" },
        command: "deno task baselines --baseline raw-pixels",
      },
      {
        label: "supervised CNN",
        where: { experiment: "baselines", "config.head": "cnn-supervised" },
        command: "deno task baselines --baseline cnn-supervised",
      },
    ],
    command: "deno task probe",
  },
  {
    kind: "table",
    id: "001-table2",
    section: "001",
    title: "001 Table 2: fine-tuning, against the frozen probe and the same network from scratch",
    scale: {
      paper: "ImageNet-1k, the whole U-Net fine-tuned",
      ours: "Fashion-MNIST (a class-balanced share of the train split, the full test split), " +
        "the `small` U-Net up to block b with a linear head",
    },
    note: "Every row trains the same path (x_t at t → blocks to b → pool → linear) for the same " +
      "epochs on the same images, keeping the epoch of the best validation accuracy: finetune " +
      "trains the backbone at a tenth of the head's learning rate; frozen trains the head alone; " +
      "scratch trains it all from fresh weights. The paper's U-Net encoder row (Table 1, 64.32%) " +
      "is a supervised U-Net encoder, our scratch row's analogue.",
    experiments: ["finetune"],
    columns: [
      { key: "method", header: "method", path: "$label" },
      { key: "train", header: "train images", path: "config.train_images", format: "int" },
      { key: "t", header: "t", path: "config.t", format: "int" },
      { key: "b", header: "b", path: "config.block", format: "int" },
      { key: "pool", header: "pool", path: "config.pool", format: "int" },
      {
        key: "trained",
        header: "trained parameters",
        path: "metrics.trained_params",
        format: "int",
      },
      { key: "epoch", header: "best epoch", path: "metrics.best_epoch", format: "int" },
      acc,
    ],
    paper: [{
      seed: SEEDS["001"],
      table: 2,
      rows: [
        { method: "GD (Linear, pool 2×2)", accuracy: "73.17%" },
        { method: "GD (Linear, pool 4×4)", accuracy: "73.50%" },
      ],
    }, {
      seed: SEEDS["001"],
      table: 1,
      rows: [{ method: "U-Net Encoder", accuracy: "64.32%" }],
    }],
    expected: ([
      ["finetune", "fine-tuned (diffusion weights)"],
      ["frozen", "frozen probe"],
      ["scratch", "from scratch"],
    ] as const).map(([method, label]) => ({
      label,
      where: { "config.method": method },
      command: `deno task finetune --mode ${method}`,
    })),
    command: "deno task finetune --mode finetune|frozen|scratch",
  },
  {
    kind: "table",
    id: "001-transfer",
    section: "001",
    title: "001 Figure 5: transfer, and how far the best feature moves",
    scale: {
      paper: "ImageNet → CUB and other FGVC sets, the frozen ADM U-Net",
      ours: "a U-Net pre-trained on one of MNIST / Fashion-MNIST, probed on the other or on an " +
        "image folder; one linear-probe grid on each",
    },
    note: "Each dataset chooses its (t, b, pool) on its own validation split; lost is the " +
      "target's test accuracy at its own choice minus at the source's. The paper reads the " +
      "blocks off Figure 5: b = 24 best on ImageNet, b = 19 on CUB.",
    experiments: ["transfer"],
    columns: [
      { key: "source", header: "source", path: "config.source.dataset" },
      { key: "target", header: "target", path: "config.target.dataset" },
      { key: "sb", header: "source best b", path: "metrics.source_best.block", format: "int" },
      { key: "st", header: "source best t", path: "metrics.source_best.t", format: "int" },
      { key: "tb", header: "target best b", path: "metrics.target_best.block", format: "int" },
      { key: "tt", header: "target best t", path: "metrics.target_best.t", format: "int" },
      {
        key: "own",
        header: "target acc. (own choice)",
        path: "metrics.target_best.test_accuracy",
        format: "percent",
      },
      {
        key: "carried",
        header: "target acc. (source's choice)",
        path: "metrics.target_at_source_choice.test_accuracy",
        format: "percent",
      },
      { key: "lost", header: "lost", path: "metrics.accuracy_lost", format: "percent" },
    ],
    paper: [{
      seed: SEEDS["001"],
      figure: 5,
      at: "on Figure 5, we find that the ideal block number",
      rows: [{ source: "ImageNet", target: "CUB", sb: "24", tb: "19" }],
    }],
    expected: [
      ["fashion-mnist", "mnist"],
      ["mnist", "fashion-mnist"],
    ].map(([source, target]) => ({
      label: `${source} → ${target}`,
      where: { "config.source.dataset": source, "config.target.dataset": target },
      command: `deno task transfer --weights <${source} pretrain> --target ${target}`,
    })),
    command: "deno task transfer --target mnist|fashion-mnist|<image folder>",
    findings: transferFindings,
    artifacts: "\\.png$",
  },
  {
    kind: "table",
    id: "001-table3",
    section: "001",
    title: "001 Table 3 and Figure 2: linear probes by block b, timestep t and pool",
    scale: {
      paper: PAPER_IN1K + "; Figure 2's grid trained 15 epochs (its appendix)",
      ours: OURS_FROZEN + "; the grid on a class-balanced 20% of train (10% of it held out " +
        "for validation) and 20% of test, 15 epochs; our block numbers b follow " +
        "`deno task blocks`",
    },
    note: "One row per t: the cell best on validation at that t, its test accuracy beside it. " +
      "The figures plot test accuracy of every cell.",
    experiments: ["ablate"],
    each: "metrics.best_per_t.*",
    columns: [
      { key: "t", header: "t", path: "@.t", format: "int" },
      { key: "b", header: "b", path: "@.block", format: "int" },
      { key: "pool", header: "pool", path: "@.pool", format: "int" },
      { key: "head", header: "head", path: "config.head" },
      { key: "val", header: "val accuracy", path: "@.val_accuracy", format: "percent" },
      { key: "accuracy", header: "accuracy", path: "@.test_accuracy", format: "percent" },
    ],
    paper: [{
      seed: SEEDS["001"],
      table: 3,
      rows: [
        { b: "19", t: "90", head: "linear (L)", accuracy: "55.09%" },
        { b: "19", t: "150", head: "linear (L)", accuracy: "54.77%" },
        { b: "24", t: "90", head: "linear (L)", accuracy: "61.95%" },
        { b: "24", t: "150", head: "linear (L)", accuracy: "61.86%" },
      ],
    }],
    command: "deno task ablate --train-percent 20 --test-percent 20",
    artifacts: "\\.png$",
  },
  gridBestTable("block", "b", "each block b"),
  gridBestTable("pool", "pool", "each pool size"),
  {
    kind: "table",
    id: "001-select",
    section: "001",
    title: "Automatic choice of (t, b, pool): successive halving against the full grid (ours)",
    scale: { ours: OURS_FROZEN + "; the same images as the grid" },
    note: "Cost in distinct (image, t) network passes and in head·image·epochs of training; " +
      "the grid trains every cell 15 epochs on every image. Chosen on validation; test once.",
    experiments: ["probe"],
    where: { "config.select": "auto" },
    columns: [
      { key: "t", header: "t", path: "config.t", format: "int" },
      { key: "b", header: "b", path: "config.block", format: "int" },
      { key: "pool", header: "pool", path: "config.pool", format: "int" },
      acc,
      {
        key: "fwd",
        header: "forward passes",
        path: "metrics.selection.cost.forward_passes",
        format: "int",
      },
      {
        key: "gridfwd",
        header: "grid's forward passes",
        path: "metrics.selection.grid.cost.forward_passes",
        format: "int",
      },
      {
        key: "hie",
        header: "head·image·epochs",
        path: "metrics.selection.cost.head_image_epochs",
        format: "int",
      },
      {
        key: "gridhie",
        header: "grid's",
        path: "metrics.selection.grid.cost.head_image_epochs",
        format: "int",
      },
      { key: "same", header: "grid's best?", path: "metrics.selection.grid.picked_grid_best" },
      {
        key: "rank",
        header: "rank in grid",
        path: "metrics.selection.grid.rank_in_grid",
        format: "int",
      },
    ],
    command: "deno task probe --select auto --grid results/ablate/<run>.json",
  },
  {
    kind: "table",
    id: "001-heads",
    section: "001",
    title: "001 Tables 7–9: heads of comparable size",
    scale: {
      paper: "ImageNet-50 (50 classes, 64,274 train / 2,500 test, its Table 5) at 256×256, " +
        "frozen ADM U-Net",
      ours: OURS_FROZEN + "; linear probes read the pooled map, MLPs the 2×2 pool, CNN and " +
        "attention heads the whole map",
    },
    experiments: ["heads"],
    each: "metrics.heads.*",
    columns: [
      { key: "head", header: "head", path: "@.head_spec" },
      { key: "pool", header: "input pool", path: "@.pool", format: "int" },
      { key: "role", header: "budget", path: "@.role" },
      { key: "params", header: "head params", path: "@.param_count", format: "int" },
      { key: "train", header: "train images", path: "config.train_images", format: "int" },
      { key: "epochs", header: "epochs", path: "config.recipe.epochs", format: "int" },
      { key: "val", header: "val accuracy", path: "@.val_accuracy", format: "percent" },
      { key: "accuracy", header: "accuracy", path: "@.test_accuracy", format: "percent" },
    ],
    paper: [
      {
        seed: SEEDS["001"],
        table: 7,
        rows: [
          { head: "Linear-1k", params: "1M", accuracy: "87.20%" },
          { head: "Linear-4k", params: "4M", accuracy: "89.41%" },
          { head: "MLP-4k-2k", params: "10M", accuracy: "88.50%" },
        ],
      },
      {
        seed: SEEDS["001"],
        table: 8,
        rows: [{ head: "CNN-1k-1k-1k", params: "12M", accuracy: "89.50%" }],
      },
      {
        seed: SEEDS["001"],
        table: 9,
        rows: [
          { head: "Attention-1K-1", params: "13.7M", accuracy: "91.67%" },
          { head: "Attention-1K-2", params: "26.2M", accuracy: "91.58%" },
        ],
      },
    ],
    command: "deno task heads",
  },
  {
    kind: "table",
    id: "001-cka",
    section: "001",
    title: "001 Figures 4–6: CKA between blocks, timesteps, and a supervised CNN's layers",
    scale: {
      paper: "ImageNet-50 at 256×256, the frozen ADM U-Net and supervised ResNet/ViT",
      ours: OURS_FROZEN + "; a seeded subset of the test images; minibatch CKA with the " +
        "unbiased HSIC; the supervised network is a small CNN trained here",
    },
    experiments: ["cka"],
    columns: [
      { key: "t", header: "t (blocks map)", path: "config.t", format: "int" },
      { key: "b", header: "b (timesteps map)", path: "config.block", format: "int" },
      { key: "pool", header: "pool", path: "config.pool", format: "int" },
      { key: "images", header: "images", path: "config.images", format: "int" },
      { key: "kernel", header: "kernel", path: "config.kernel" },
      {
        key: "cnn",
        header: "CNN test-image accuracy",
        path: "metrics.cnn_accuracy",
        format: "percent",
      },
    ],
    command: "deno task cka",
    artifacts: "\\.png$",
  },
  {
    kind: "table",
    id: "001-epochs",
    section: "001",
    title: "Linear probe against epochs of pre-training (ours)",
    scale: { ours: OURS_FROZEN + "; checkpoints of one pre-training run, and random weights" },
    experiments: ["probe"],
    where: {
      "config.select": "fixed",
      "config.head": "linear",
      "config.pool": 4,
      "config.weights_epochs": { present: true },
    },
    columns: [
      { key: "epochs", header: "pre-training epochs", path: "config.weights_epochs" },
      { key: "kind", header: "weights used", path: "config.weights_kind" },
      { key: "weights", header: "weights file (architecture)", path: "config.weights" },
      { key: "t", header: "t", path: "config.t", format: "int" },
      { key: "b", header: "b", path: "config.block", format: "int" },
      { key: "pool", header: "pool", path: "config.pool", format: "int" },
      acc,
    ],
    command: "deno task probe --weights <checkpoint>",
  },
];

// ---------------------------------------------------------------- 002

const p002: TableDef[] = [
  {
    kind: "table",
    id: "002-table1",
    section: "002",
    title: "002 Table 1: main results",
    scale: { paper: PAPER_IN1K + "; f(x0, t = 150, b = 24) by default", ours: OURS_FROZEN },
    note: "DifFormer and DifFeed are not built yet.",
    experiments: ["probe", "heads"],
    columns: [
      { key: "method", header: "method", path: "$label" },
      { key: "t", header: "t", path: "config.t", format: "int" },
      { key: "b", header: "b", path: "config.block", format: "int" },
      accOf("attention"),
    ],
    paper: [{
      seed: SEEDS["002"],
      table: 1,
      rows: [
        { method: "SimCLR", accuracy: "69.3%" },
        { method: "GD", accuracy: "64.9%" },
        { method: "Attention", accuracy: "74.6%" },
        { method: "DifFormer", accuracy: "76.0%" },
        { method: "DifFeed", accuracy: "77.0%" },
      ],
    }],
    expected: [
      {
        label: "GD",
        where: { ...fixedProbe, "config.pool": 2 },
        command: "deno task probe --pool 2",
        setting: "linear head, pool 2×2",
      },
      {
        label: "Attention",
        ...attentionProbe,
      },
      ...(["difformer", "diffeed"] as const).map((head) => ({
        label: { difformer: "DifFormer", diffeed: "DifFeed" }[head],
        where: { experiment: "heads", "config.head": head },
        command: "not built yet",
        setting: `${head}`,
      })),
    ],
    command: "deno task heads",
  },
  {
    kind: "table",
    id: "002-table2",
    section: "002",
    title: "002 Table 2: attention head, number of layers",
    scale: {
      paper: "ImageNet-1k with 1% of the labels (IN-1%) and CUB; heads trained 15 epochs",
      ours: OURS_FROZEN,
    },
    experiments: ["heads"],
    each: "metrics.heads.*",
    rowsWhere: { "@.head": "attention" },
    columns: [
      { key: "layers", header: "# layers", path: "@.head_spec" },
      { key: "in1", header: "IN-1%" },
      { key: "cub", header: "CUB" },
      { key: "accuracy", header: "accuracy (ours)", path: "@.test_accuracy", format: "percent" },
      { key: "params", header: "# params", path: "@.param_count", format: "int" },
    ],
    paper: [{
      seed: SEEDS["002"],
      table: 2,
      rows: [
        { layers: "1", in1: "40.4%", cub: "39.4%", params: "15.2M" },
        { layers: "2", in1: "45.7%", cub: "47.4%", params: "27.8M" },
        { layers: "4", in1: "47.9%", cub: "52.0%", params: "53.0M" },
      ],
    }],
    command: "deno task heads",
  },
  {
    kind: "table",
    id: "002-table5",
    section: "002",
    title: "002 Table 5: semi-supervised, 1% and 10% of the labels",
    scale: {
      paper: "ImageNet-1k with 1% / 10% of the labels sampled class-balanced, backbone fine-tuned",
      ours: "Fashion-MNIST with 1% / 10% of the training labels (class-balanced, a fifth held " +
        "out for validation), the `small` U-Net; mean ± std over subset seeds",
    },
    note: "The paper's 1% and 10% columns are shown as rows. Every method of one subset seed " +
      "sees the same labeled images.",
    experiments: ["semisup"],
    columns: [
      { key: "method", header: "method", path: "$label" },
      { key: "labels", header: "labels", path: "config.labels", format: "percent" },
      { key: "images", header: "labeled images", path: "metrics.labeled_images", format: "int" },
      { key: "seeds", header: "seeds", path: "metrics.seeds", format: "int" },
      acc,
      { key: "std", header: "± std", path: "metrics.test_accuracy_std", format: "percent" },
    ],
    paper: [{
      seed: SEEDS["002"],
      table: 5,
      rows: [
        { method: "SimCLR", labels: "1%", accuracy: "48.3%" },
        { method: "SimCLR", labels: "10%", accuracy: "65.6%" },
        { method: "GD", labels: "1%", accuracy: "46.7%" },
        { method: "GD", labels: "10%", accuracy: "64.4%" },
        { method: "DifFormer", labels: "1%", accuracy: "51.8%" },
        { method: "DifFormer", labels: "10%", accuracy: "66.2%" },
        { method: "DifFeed", labels: "1%", accuracy: "52.9%" },
        { method: "DifFeed", labels: "10%", accuracy: "66.6%" },
      ],
    }],
    expected: ([
      ["finetune", "fine-tuned diffusion encoder"],
      ["frozen-attention", "frozen attention head"],
      ["scratch", "supervised from scratch"],
    ] as const).flatMap(([method, name]) =>
      [0.01, 0.1].map((labels) => ({
        label: `${name}, ${100 * labels}% labels`,
        where: { "config.method": method, "config.labels": labels },
        command: `deno task semisup --percents ${100 * labels} --methods ${method}`,
      }))
    ),
    command: "deno task semisup",
    findings: semisupFindings,
  },
  {
    kind: "table",
    id: "002-table9",
    section: "002",
    title: "002 Table 9: kNN",
    scale: {
      paper: PAPER_IN1K + "; k = 20 and k = 200",
      ours: OURS_FROZEN + "; cosine similarity, votes weighted exp(sim/0.07), the whole " +
        "train split as the memory bank",
    },
    experiments: ["knn"],
    each: "metrics.cells.*",
    columns: [
      { key: "b", header: "b", path: "@.block", format: "int" },
      { key: "t", header: "t", path: "@.t", format: "int" },
      { key: "pool", header: "pool", path: "@.pool", format: "int" },
      { key: "top1_20", header: "Top1@20", path: "@.top1_at_20", format: "percent" },
      { key: "top5_20", header: "Top5@20", path: "@.top5_at_20", format: "percent" },
      { key: "top1_200", header: "Top1@200", path: "@.top1_at_200", format: "percent" },
      { key: "top5_200", header: "Top5@200", path: "@.top5_at_200", format: "percent" },
    ],
    paper: [{
      seed: SEEDS["002"],
      table: 9,
      rows: [
        ["19", "10", "1", "41.14", "62.49", "39.04", "65.40"],
        ["19", "90", "1", "49.04", "71.40", "46.17", "73.65"],
        ["19", "150", "1", "48.78", "71.27", "46.29", "73.76"],
        ["19", "500", "1", "29.96", "48.64", "29.68", "53.12"],
        ["24", "90", "1", "48.34", "70.02", "46.22", "72.57"],
      ].map(([b, t, pool, top1_20, top5_20, top1_200, top5_200]) => ({
        b,
        t,
        pool,
        top1_20,
        top5_20,
        top1_200,
        top5_200,
      })),
    }],
    command: "deno task knn",
  },
];

// ---------------------------------------------------------------- 000

const PAPER_CT = "private brain CT at 256×256 (latent 4×32×32); pre-training on 10,313 " +
  "unlabeled images (facilities 2–12), tuning and test on 1,424 / 178 / 179 images of " +
  "facility 1, hematoma yes/no (its Table 1); DiT-B/2";
const OURS_DIT = "Fashion-MNIST at 28×28 (no CT data here): pre-training without labels, " +
  "tuning on a labeled subset; a small DiT";

const p000: TableDef[] = [
  {
    kind: "table",
    id: "000-vae",
    section: "000",
    title: "000's latent space: the autoencoder the DiT runs in",
    scale: {
      paper: "Stable Diffusion's autoencoder (f = 8, 4 channels, latents × 0.18215), not retrained",
      ours: "a small KL autoencoder trained here on Fashion-MNIST (f = 4, 4 channels)",
    },
    note: "The latent scale makes the posterior means unit-variance (DiT's 0.18215 for SD's " +
      "autoencoder); the test columns are on Fashion-MNIST's test split.",
    experiments: ["vae"],
    columns: [
      { key: "run", header: "run", path: "$label" },
      { key: "preset", header: "preset", path: "config.model.name" },
      { key: "steps", header: "steps", path: "metrics.steps", format: "int" },
      { key: "kl", header: "KL weight", path: "config.klWeight" },
      { key: "mse", header: "test MSE", path: "metrics.test_mse" },
      { key: "psnr", header: "test PSNR dB", path: "metrics.test_psnr_db" },
      { key: "scale", header: "latent scale", path: "metrics.latent_scale" },
      { key: "std", header: "scaled latent std (test)", path: "metrics.latent_std_scaled_test" },
    ],
    command: "deno task train-vae",
    artifacts: "-reconstructions\\.png$",
  },
  {
    kind: "table",
    id: "000-table2",
    section: "000",
    title: "000 Table 2: pre-training hyperparameters",
    scale: { paper: PAPER_CT, ours: OURS_DIT },
    note: "The paper's image size (3, 256, 256) is pixels; its latent size (4, 32, 32) is shown " +
      "as channels and side, as are our DiT's inputs.",
    experiments: ["pretrain"],
    where: { "config.model": "dit" },
    columns: [
      { key: "model", header: "model size", path: "config.preset" },
      { key: "condition", header: "condition", path: "config.condition" },
      { key: "batch", header: "batch", path: "config.batch", format: "int" },
      { key: "image", header: "image size" },
      {
        key: "channels",
        header: "input channels",
        path: "config.spec.config.inChannels",
        format: "int",
      },
      { key: "side", header: "input side", path: "config.spec.config.inputSize", format: "int" },
      { key: "patch", header: "patch", path: "config.spec.config.patchSize", format: "int" },
      { key: "lr", header: "learning rate", path: "config.lr" },
      { key: "T", header: "T", path: "config.diffusionSteps", format: "int" },
    ],
    paper: [{
      seed: SEEDS["000"],
      table: 2,
      rows: [{
        model: "B",
        batch: "16",
        image: "(3, 256, 256)",
        channels: "4",
        side: "32",
        patch: "2",
        lr: "0.0001",
        T: "1,000",
      }],
    }],
    command: "deno task pretrain --model dit",
  },
  {
    kind: "table",
    id: "000-fig8",
    section: "000",
    title: "000 Figure 8: minimum pre-training loss by condition",
    scale: { paper: PAPER_CT, ours: OURS_DIT },
    note: "The loss is ‖ε − ε̂‖² (seed 000 eq. 2); our minimum is that of the logged curve, " +
      "a mean over each 10 steps. The representation r = f_φ(z0) is computed from the very " +
      "latent the model denoises, so the gap measures how much of z0 the encoder passes on. " +
      "The grids below are drawn with the EMA weights (rate 0.999 after a (1 + n)/(10 + n) " +
      "warm-up); draws from the raw weights are under Samples (deno task sample --weights raw).",
    experiments: ["pretrain"],
    where: { "config.model": "dit" },
    columns: [
      { key: "condition", header: "condition", path: "config.condition" },
      { key: "steps", header: "steps", path: "metrics.steps", format: "int" },
      { key: "epochs", header: "epochs", path: "metrics.epochs" },
      { key: "min", header: "minimum loss", path: "metrics.min_loss" },
      { key: "final", header: "final loss (last 10 %)", path: "metrics.final_loss" },
    ],
    paper: [{
      seed: SEEDS["000"],
      figure: 8,
      rows: [
        { condition: "unconditional", min: "3.13e-2" },
        { condition: "representation", min: "3.39e-4" },
      ],
    }],
    expected: (["none", "class", "repr"] as const).map((condition) => ({
      label: condition,
      where: { "config.condition": condition, "config.latent": "vae" },
      command: `deno task pretrain --model dit --latent vae --condition ${condition}`,
    })),
    command: "deno task pretrain --model dit --latent vae --condition none|class|repr",
    artifacts: "-samples\\.png$",
  },
  {
    kind: "table",
    id: "000-fig9",
    section: "000",
    title: "000 Figures 7–9: predicted ẑ0 across t, and partial denoising from t = 100",
    scale: { paper: PAPER_CT, ours: OURS_DIT },
    note: "Mean ‖z0 − ẑ0‖² over the test images, the quantity Diffusion Classifier Zero " +
      "ranks by (the class model is given the true label). The paper shows these as images " +
      "only; its Figure 9 sees the representation model predict z0 from t ≈ 800, the " +
      "unconditional one from t ≈ 400.",
    experiments: ["dit-figures"],
    columns: [
      { key: "weights", header: "weights", path: "config.weights.none" },
      { key: "images", header: "images", path: "config.errorImages", format: "int" },
      ...(["none", "class", "repr"] as const).flatMap((c) =>
        [100, 500, 900].map((t) => ({
          key: `${c}${t}`,
          header: `${c} t=${t}`,
          path: `metrics.z0_error.${c}.${t}`,
        }))
      ),
    ],
    command: "deno task dit-figures",
    artifacts: "\\.png$",
  },
  {
    kind: "table",
    id: "000-table3",
    section: "000",
    title: "000 Table 3: generation",
    scale: { paper: PAPER_CT + "; FID-10k", ours: OURS_DIT },
    experiments: ["generation"],
    columns: [
      { key: "model", header: "model", path: "$label" },
      { key: "fid", header: "FID↓", path: "metrics.fid" },
      { key: "sfid", header: "sFID↓", path: "metrics.sfid" },
      { key: "is", header: "IS↑", path: "metrics.is" },
      { key: "precision", header: "Precision↑", path: "metrics.precision" },
      { key: "recall", header: "Recall↑", path: "metrics.recall" },
    ],
    paper: [{
      seed: SEEDS["000"],
      table: 3,
      rows: [
        {
          model: "Class-Conditioned Latent Diffusion Transformer",
          fid: "25.69",
          sfid: "21.57",
          is: "3.257",
          precision: "0.39",
          recall: "0.36",
        },
        {
          model: "Unconditional Latent Diffusion Transformer (ours)",
          fid: "24.42",
          sfid: "20.98",
          is: "3.117",
          precision: "0.40",
          recall: "0.39",
        },
        {
          model: "Representation-Conditioned Latent Diffusion Transformer (ours)",
          fid: "10.00",
          sfid: "12.20",
          is: "3.204",
          precision: "0.94",
          recall: "0.99",
        },
      ],
    }],
    expected: (["class", "none", "repr"] as const).map((condition) => ({
      label:
        { class: "class-conditioned", none: "unconditional", repr: "representation-conditioned" }[
          condition
        ],
      where: { "config.condition": condition },
      command: "deno task pretrain --model dit",
      setting: `${condition} condition, then its generation metrics`,
    })),
    command: "deno task pretrain --model dit",
  },
  {
    kind: "table",
    id: "000-table4",
    section: "000",
    title: "000 Table 4: classification after pre-training and tuning",
    scale: { paper: PAPER_CT + "; test split of facility 1", ours: OURS_DIT },
    note: "Binary is the paper's task (its positives: hematoma; ours: one class, 10 % of " +
      "images); F1, recall and precision are of the positive class there and macro-averaged " +
      "for 10 classes. Every row uses the same downstream splits of Table 1's sizes. ECE " +
      "(diffusion classifiers only) is of softmax(−error/τ), τ fitted on the valid split, which " +
      "is scored without pruning; on the test split a pruned class has probability 0, so the " +
      "probabilities there are over the classes that survive the adaptive stages.",
    experiments: ["downstream-baselines", "classify"],
    columns: [
      { key: "model", header: "model", path: "$label" },
      { key: "task", header: "task", path: "config.task" },
      { key: "accuracy", header: "Accuracy", path: "metrics.accuracy", format: "fixed4" },
      { key: "f1", header: "F1-score", path: "metrics.f1", format: "fixed4" },
      { key: "recall", header: "Recall", path: "metrics.recall", format: "fixed4" },
      { key: "precision", header: "Precision", path: "metrics.precision", format: "fixed4" },
      { key: "ece", header: "ECE", path: "metrics.ece" },
    ],
    paper: [{
      seed: SEEDS["000"],
      table: 4,
      rows: [
        ["ResNet 50", ".7150", ".4950", ".8928", ".3424"],
        ["ViT B", ".8659", ".5200", ".4642", ".5909"],
        ["DINOv2", ".8882", ".6875", ".7857", ".6111"],
        ["Unconditional (ours)", ".8882", ".7058", ".8571", ".6000"],
        ["Representation-Conditioned (ours)", ".9497", ".8235", ".7500", ".9130"],
      ].map(([model, accuracy, f1, recall, precision]) => ({
        model,
        task: "binary",
        accuracy,
        f1,
        recall,
        precision,
      })),
    }],
    expected: (["binary", "10-class"] as const).flatMap((task) => [
      ...(["resnet", "vit", "dino"] as const).map((method) => ({
        label: `${method} (${task})`,
        where: { experiment: "downstream-baselines", "config.method": method, "config.task": task },
        command: `deno task downstream-baselines --method ${method} --task ${task}`,
      })),
      ...(["unconditional", "representation"] as const).flatMap((pretraining) =>
        (["dc", "dc-zero"] as const).map((method) => ({
          label: `${pretraining} DiT, ${method} (${task})`,
          where: {
            experiment: "classify",
            "config.method": method,
            "config.pretraining": pretraining,
            "config.task": task,
          },
          command: `deno task tune --task ${task} --weights <${pretraining} pretrain>, then ` +
            `deno task classify --method ${method}`,
        }))
      ),
    ]),
    command: "deno task downstream-baselines; deno task tune; deno task classify",
    findings: table4Findings,
  },
];

const pct2 = (v: number) => `${(100 * v).toFixed(2)}%`;
const num = (r: LoadedResult, path: string) => {
  const v = getPath(r.result, path);
  return typeof v === "number" ? v : undefined;
};

/** The number at `path` of the first run that matches `where` (the tables' own matching). */
const numberWhere = (runs: readonly LoadedResult[], where: Where, path: string) => {
  const r = runs.find((run) => satisfies(where, { run, label: run.result.run }));
  return r ? num(r, path) : undefined;
};

/**
 * Issue 13's fidelity check: each bf16 run's final loss against the fp32 seed-to-seed spread
 * (the interval between the fp32 seeds' final losses).
 */
/**
 * Winograd against direct at one seed: the final losses and the largest difference between the
 * two runs' losses at any step.
 */
function winogradFindings(runs: readonly LoadedResult[]): string[] {
  const byMode = (mode: string) =>
    runs.find((r) => getPath(r.result, "env.engine_details.winograd") === mode);
  const [wino, direct] = [byMode("auto"), byMode("off")];
  const curve = (r: LoadedResult) =>
    (getPath(r.result, "metrics.loss_curve.points") ?? []) as [number, number][];
  if (!wino || !direct) return [];
  const a = curve(wino), b = curve(direct);
  const steps = Math.min(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < steps; i++) worst = Math.max(worst, Math.abs(a[i][1] - b[i][1]));
  const f7 = (r: LoadedResult) => num(r, "metrics.final_loss")?.toFixed(7);
  return [
    `Final loss: Winograd ${f7(wino)}, direct ${f7(direct)}.`,
    `Largest difference between the two runs' losses at any of ${steps} steps: ${
      worst.toExponential(1)
    }.`,
  ];
}

function bf16Findings(runs: readonly LoadedResult[]): string[] {
  const final = (p: string) =>
    runs.filter((r) =>
      getPath(r.result, "env.engine")?.toString().endsWith("+bf16") === (p === "bf16")
    )
      .flatMap((r) => {
        const v = num(r, "metrics.final_loss"), seed = num(r, "config.seed");
        return v === undefined ? [] : [{ v, seed }];
      });
  const fp32 = final("fp32"), bf16 = final("bf16");
  if (fp32.length < 2 || bf16.length === 0) return [];
  const lo = Math.min(...fp32.map((f) => f.v)), hi = Math.max(...fp32.map((f) => f.v));
  const f5 = (v: number) => v.toFixed(5);
  const out = [
    `fp32 seeds ${fp32.map((f) => f.seed).join(", ")}: final loss ${
      fp32.map((f) => f5(f.v)).join(", ")
    } (spread ${f5(hi - lo)}).`,
  ];
  for (const b of bf16) {
    const miss = b.v < lo ? lo - b.v : b.v > hi ? b.v - hi : 0;
    out.push(
      `bf16 seed ${b.seed}: ${f5(b.v)}, ` +
        (miss === 0
          ? "within the fp32 seed-to-seed spread."
          : `outside the fp32 spread by ${f5(miss)} (${
            (miss / (hi - lo)).toFixed(2)
          }× the spread).`),
    );
  }
  return out;
}

/**
 * Seed 002's claim: pre-training helps most with the fewest labels. Per share of labels, the
 * gain of each pre-trained method over supervised training from scratch (mean accuracies).
 */
function semisupFindings(runs: readonly LoadedResult[]): string[] {
  const mean = (labels: number, method: string) =>
    numberWhere(
      runs,
      { "config.labels": labels, "config.method": method },
      "metrics.test_accuracy",
    );
  const shares = [...new Set(runs.map((r) => getPath(r.result, "config.labels")))]
    .filter((v): v is number => typeof v === "number").sort((a, b) => a - b);
  const out: string[] = [];
  for (const method of ["finetune", "frozen-attention"]) {
    const gains = shares.flatMap((l) => {
      const m = mean(l, method), s = mean(l, "scratch");
      return m !== undefined && s !== undefined ? [{ l, gain: m - s }] : [];
    });
    for (const g of gains) {
      out.push(
        `${pct2(g.l)} labels: ${method} minus scratch = ${(100 * g.gain).toFixed(2)} points.`,
      );
    }
    if (gains.length >= 2) {
      const best = gains.reduce((a, b) => (b.gain > a.gain ? b : a));
      out.push(
        `${method}: the gain over scratch is largest at ${pct2(best.l)} labels` +
          (best.l === gains[0].l
            ? " (the fewest, as 002 claims)."
            : " (not the fewest: 002's claim does not hold here)."),
      );
    }
  }
  return out;
}

/** 001 Figure 5's question: does the best (t, block) move from the source to the target? */
function transferFindings(runs: readonly LoadedResult[]): string[] {
  return runs.flatMap((r) => {
    const [sb, tb] = [num(r, "metrics.source_best.block"), num(r, "metrics.target_best.block")];
    const [st, tt] = [num(r, "metrics.source_best.t"), num(r, "metrics.target_best.t")];
    const lost = num(r, "metrics.accuracy_lost");
    if (sb === undefined || tb === undefined || lost === undefined) return [];
    const names = `${getPath(r.result, "config.source.dataset")} → ${
      getPath(r.result, "config.target.dataset")
    }`;
    return [
      `${names}: the best block ${
        sb === tb ? `stays at b = ${sb}` : `moves from b = ${sb} to b = ${tb}`
      }` +
      `, t ${st === tt ? `stays at ${st}` : `moves from ${st} to ${tt}`}; carrying the source's ` +
      `choice over costs ${(100 * lost).toFixed(2)} points of target test accuracy.`,
    ];
  });
}

/**
 * Seed 000's two questions, per task: does representation conditioning beat unconditional
 * pre-training (each classifier), and does Diffusion Classifier Zero beat the ε-space one (each
 * pre-training)? Read from the classify runs' accuracies.
 */
function table4Findings(runs: readonly LoadedResult[]): string[] {
  const acc = (task: string, pretraining: string, method: string) =>
    numberWhere(runs, {
      experiment: "classify",
      "config.task": task,
      "config.pretraining": pretraining,
      "config.method": method,
    }, "metrics.accuracy");
  const verdict = (a: number, b: number) => (a > b ? "beats" : a < b ? "loses to" : "ties");
  const out: string[] = [];
  for (const task of ["binary", "10-class"]) {
    for (const method of ["dc", "dc-zero"]) {
      const r = acc(task, "representation", method), u = acc(task, "unconditional", method);
      if (r !== undefined && u !== undefined) {
        out.push(
          `${task}, ${method}: representation-conditioned pre-training ${verdict(r, u)} ` +
            `unconditional (accuracy ${pct2(r)} vs ${pct2(u)}).`,
        );
      }
    }
    for (const pretraining of ["unconditional", "representation"]) {
      const z = acc(task, pretraining, "dc-zero"), e = acc(task, pretraining, "dc");
      if (z !== undefined && e !== undefined) {
        out.push(
          `${task}, ${pretraining} pre-training: Diffusion Classifier Zero ${verdict(z, e)} ` +
            `the ε-space classifier (accuracy ${pct2(z)} vs ${pct2(e)}).`,
        );
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------- benchmarks

const suite = (name: string) => ({ "config.suite": name });
const benchTable = (
  t: Omit<TableDef, "kind" | "section" | "experiments" | "command">,
): TableDef => ({
  kind: "table",
  section: "bench",
  experiments: ["bench"],
  command: `deno task bench --suite ${String(t.where?.["config.suite"])}`,
  ...t,
});

const bench: TableDef[] = [
  benchTable({
    id: "bench-models",
    title: "Models: U-Net and DiT training steps and feature extraction, by engine",
    note: "img/s is images per second at the batch shown; vs PyTorch is our img/s over PyTorch's " +
      "on the same machine. A command that starts with an instruction-set cap " +
      "(ONEDNN_MAX_CPU_ISA=AVX2 ...) ran both sides' libraries as on a CPU without AVX-512.",
    where: suite("models"),
    each: "metrics.engines.*.*",
    columns: [
      { key: "command", header: "command", path: "command" },
      { key: "engine", header: "engine", path: "@.engine" },
      { key: "workload", header: "workload", path: "{2}" },
      { key: "batch", header: "batch", path: "@.batch", format: "int" },
      { key: "img_s", header: "img/s", path: "@.img_s" },
      { key: "gflop_s", header: "GFLOP/s", path: "@.gflop_s" },
      { key: "median", header: "median s", path: "@.median_s" },
      { key: "repeats", header: "repeats", path: "@.repeats", format: "int" },
      { key: "heap", header: "heap MB", path: "@.heap_mb", format: "int" },
      { key: "leaked", header: "leaked tensors", path: "@.leaked_tensors", format: "int" },
      { key: "ratio", header: "vs PyTorch", path: "metrics.ratio_vs_torch_by_engine.{1}.{2}" },
    ],
  }),
  benchTable({
    id: "bench-models-torch",
    title: "Models: the PyTorch reference",
    where: suite("models"),
    each: "metrics.torch.*",
    rowsWhere: { "@.img_s": { present: true } },
    columns: [
      { key: "torch", header: "PyTorch", path: "metrics.torch.torch" },
      { key: "threads", header: "threads", path: "metrics.torch.threads", format: "int" },
      { key: "workload", header: "workload", path: "{1}" },
      { key: "batch", header: "batch", path: "@.batch", format: "int" },
      { key: "img_s", header: "img/s", path: "@.img_s" },
      { key: "median", header: "median s", path: "@.median_s" },
      { key: "repeats", header: "repeats", path: "@.repeats", format: "int" },
    ],
  }),
  benchTable({
    id: "bench-models-peak",
    title: "Models: the CPU's arithmetic peak",
    note: "GFLOP/s of the CPU's widest fp32 multiply-add and of its bf16 dot product " +
      "(AVX512_BF16) with nothing else running (lib/engine/native/peak.c), measured before the " +
      "bench's workloads (instruction-set caps do not lower it); GFLOP/s above divided by these " +
      "say how much of the machine a run used.",
    where: { ...suite("models"), "metrics.peak_gflop_s": { present: true } },
    each: "metrics.peak_gflop_s.*",
    rowsWhere: { "@.one_thread": { present: true } },
    columns: [
      { key: "precision", header: "precision", path: "{1}" },
      { key: "one", header: "GFLOP/s, one thread", path: "@.one_thread" },
      { key: "all", header: "GFLOP/s, all threads", path: "@.all_threads" },
      { key: "threads", header: "threads", path: "metrics.peak_gflop_s.threads", format: "int" },
      { key: "cpu", header: "CPU", path: "env.cpu" },
    ],
  }),
  benchTable({
    id: "bench-models-rest",
    title: "Models: other measurements",
    where: suite("models"),
    columns: [],
    rest: true,
  }),
  benchTable({
    id: "bench-kernels-conv",
    title: "Kernels: convolution gradients, project kernels vs built-in",
    note: "Milliseconds per call with the BLAS kernels off (wasm + project kernels); " +
      "`_n64` is the batch.",
    where: suite("kernels"),
    each: "metrics.*_fwd_ms",
    columns: [
      { key: "op", header: "op", path: "{1}" },
      { key: "fwd", header: "forward ms", path: "@" },
      { key: "dx", header: "dx ms", path: "metrics.{1}_dx_ms" },
      { key: "dw", header: "dw ms", path: "metrics.{1}_dw_ms" },
      { key: "ratio", header: "grads / forward", path: "metrics.{1}_grads_over_fwd" },
      { key: "builtin", header: "built-in dx ms", path: "metrics.{1}_dx_builtin_ms" },
    ],
  }),
  benchTable({
    id: "bench-kernels-convnet",
    title: "Kernels: a small convnet, forward and training step",
    where: suite("kernels"),
    each: "metrics.convnet_forward*_ms",
    columns: [
      {
        key: "variant",
        header: "variant",
        path: "{1}",
        labels: { "": "project kernels", "_composed_silu": "composed SiLU", "_blas": "BLAS" },
      },
      { key: "fwd", header: "forward ms", path: "@" },
      { key: "train", header: "train step ms", path: "metrics.convnet_train_step{1}_ms" },
      { key: "ratio", header: "train / forward", path: "metrics.convnet_train_over_forward{1}" },
    ],
  }),
  benchTable({
    id: "bench-kernels-rest",
    title: "Kernels: other measurements",
    where: suite("kernels"),
    columns: [],
    rest: true,
  }),
  benchTable({
    id: "bench-blas-matmul",
    title: "BLAS: square matmul",
    where: suite("blas"),
    each: "metrics.matmul_*_*_gflops",
    columns: [
      { key: "n", header: "n", path: "{1}" },
      { key: "impl", header: "implementation", path: "{2}" },
      { key: "gflops", header: "GFLOP/s", path: "@" },
    ],
  }),
  benchTable({
    id: "bench-blas-conv",
    title: "BLAS: 3×3 convolution, x [n, 32, 32, 32] → 64 channels",
    where: suite("blas"),
    each: "metrics.conv3x3_*_*_wasm_ms",
    columns: [
      { key: "n", header: "n", path: "{1}" },
      { key: "pass", header: "pass", path: "{2}" },
      { key: "wasm", header: "wasm ms", path: "@" },
      { key: "blas", header: "BLAS ms", path: "metrics.conv3x3_{1}_{2}_blas_ms" },
      { key: "blas1", header: "BLAS 1 thread ms", path: "metrics.conv3x3_{1}_{2}_blas1_ms" },
    ],
  }),
  benchTable({
    id: "bench-blas-fused",
    title: "BLAS: fused GroupNorm / SiLU kernels vs composed tfjs ops",
    where: suite("blas"),
    each: "metrics.*_fused_fwd_ns_per_el",
    columns: [
      { key: "op", header: "op", path: "{1}" },
      { key: "ffwd", header: "fused fwd ns/el", path: "@" },
      { key: "fbwd", header: "fused fwd+bwd ns/el", path: "metrics.{1}_fused_fwd_bwd_ns_per_el" },
      { key: "cfwd", header: "composed fwd ns/el", path: "metrics.{1}_composed_fwd_ns_per_el" },
      {
        key: "cbwd",
        header: "composed fwd+bwd ns/el",
        path: "metrics.{1}_composed_fwd_bwd_ns_per_el",
      },
    ],
  }),
  benchTable({
    id: "bench-blas-profile",
    title: "BLAS: where a small conv net's training step spends its time, by kernel",
    where: suite("blas"),
    each: "metrics.profile_*_ms",
    columns: [
      { key: "kernel", header: "kernel", path: "{1}" },
      { key: "ms", header: "ms", path: "@" },
    ],
  }),
  benchTable({
    id: "bench-adm256",
    title: "adm256: the papers' U-Net (553 M parameters) extracting features to block 24",
    note: "Random weights and 256×256 images; ours sizes its batch to the 4 GiB wasm heap (the " +
      "batch used is shown), PyTorch runs fp32 at batch 4 on the same machine. Warm: full " +
      "batches after the first (ours) and the median after a warm-up (PyTorch); end to end " +
      "includes the batch-sizing image and the first batch.",
    where: suite("adm256"),
    columns: [
      { key: "engine", header: "engine", path: "metrics.ours.engine" },
      { key: "asked", header: "batch asked", path: "metrics.ours.batch_requested", format: "int" },
      { key: "used", header: "batch used", path: "metrics.ours.batch_used", format: "int" },
      { key: "offheap", header: "weights off the heap", path: "metrics.ours.weights_off_heap" },
      { key: "ips", header: "img/s end to end", path: "metrics.ours.img_s" },
      { key: "steady", header: "img/s warm", path: "metrics.ours.img_s_steady" },
      { key: "torch", header: "PyTorch img/s (warm)", path: "metrics.torch.unet_features.img_s" },
      { key: "ratio", header: "vs PyTorch (warm)", path: "metrics.ratio_vs_torch" },
      { key: "e2e", header: "vs PyTorch end to end", path: "metrics.ratio_end_to_end" },
      { key: "cpu", header: "CPU", path: "env.cpu" },
    ],
  }),
  benchTable({
    id: "bench-blas-rest",
    title: "BLAS: other measurements",
    where: suite("blas"),
    columns: [],
    rest: true,
  }),
];

/** Every table and figure of the report, in order within each section. */
export const ITEMS: readonly ReportItem[] = [...pretrain, ...p001, ...p002, ...p000, ...bench];

/** The figures among `ITEMS`. */
export const FIGURES: readonly FigureDef[] = ITEMS.filter((i): i is FigureDef =>
  i.kind === "figure"
);
