#!/usr/bin/env python3
"""Write golden fixtures from the upstream reference models for tests/models/reference_test.ts.

Runs the UPSTREAM code, not ours: guided-diffusion's UNetModel (guided_diffusion/unet.py) and
DiT's DiT (models.py, which imports PatchEmbed, Attention and Mlp from timm). For each tiny
config it seeds every parameter, runs one batch in float32 and writes two safetensors files to
--out (default tests/fixtures/reference/):

  <name>.weights.safetensors  the model's state_dict as it is (keys, PyTorch layout: conv
                              [out, in, kh, kw], linear [out, in], attention conv1d [out, in, 1]);
                              trained parameters as F16 (the values the model ran with, see
                              below), DiT's fixed `pos_embed` buffer as F32.
  <name>.io.safetensors       inputs x (NCHW, F32), t and y (I64), the output of every block
                              (`block.<b>`) and the final output `out` (NCHW, F32); metadata
                              holds the constructor kwargs, the seed and the source commits.

U-Net blocks are numbered b = 1..N over input_blocks, middle_block, output_blocks (forward
hooks on each TimestepEmbedSequential; diffssl's numbering). DiT blocks: `block.0` is the input
to blocks[0] (patch embedding + pos_embed), `block.<b>` the output of blocks[b-1], as [N, T, D].

Weights: upstream zero-inits output convs, proj_out and adaLN, so every trainable parameter is
overwritten with seeded N(0, 1)·scale (weights 1/√fan_in, embedding tables 1, norm gains
1 + 0.2·N, biases 0.2·N), then rounded to float16 and back, so that the F16 file holds exactly
the weights the reference ran with (and the fixtures stay small). DiT's pos_embed keeps the
value DiT computed. The U-Net configs ("near_eps") also scale what writes O(1) values into
the residual stream (stem, ResBlock convs, attention proj_out, the other convs' biases) by
0.003, so that every GroupNorm sees a variance near its eps (1e-5) and the fixtures pin eps.

Obtain the upstream code (the commits the committed fixtures were made with) and run:

  git clone https://github.com/openai/guided-diffusion /tmp/ref/gd
  git -C /tmp/ref/gd checkout 22e0df8183507e13a7813f8d38d51b072ca1e67c
  git clone https://github.com/facebookresearch/DiT /tmp/ref/dit
  git -C /tmp/ref/dit checkout ed81ce2229091fd4ecc9a223645f95cf379d582b
  git clone --branch v0.6.13 https://github.com/huggingface/pytorch-image-models /tmp/ref/timm
  python3 scripts/reference_fixtures.py --guided-diffusion /tmp/ref/gd --dit /tmp/ref/dit \
      --timm /tmp/ref/timm

Needs torch (made with Debian's python3-torch 1.13.1) and numpy; timm 0.6.13 needs torchvision
(python3-torchvision). timm 0.6.12, the release of DiT's time, does not import on Python 3.11.
The safetensors package is not needed: the format is written here by hand.
"""
import argparse
import json
import math
import os
import re
import struct
import subprocess
import sys

import torch

SEED = 0

# guided-diffusion UNetModel kwargs, exactly as its constructor takes them: attention_resolutions
# are downsample rates ds (script_util turns the README's pixel resolutions into image_size // r)
# and out_channels is already doubled where learn_sigma is set (script_util does that too;
# learn_sigma itself is not a UNetModel argument, so it is recorded beside the kwargs).
UNETS = {
    # num_heads (2 in the encoder and middle, num_heads_upsample 4 in the decoder), legacy qkv
    # order, scale-shift norm, ResBlock resampling, class labels, learn_sigma.
    "unet_heads_legacy": dict(
        kwargs=dict(image_size=8, in_channels=3, model_channels=32, out_channels=6,
                    num_res_blocks=1, attention_resolutions=(1, 2), dropout=0.0,
                    channel_mult=(1, 1), num_classes=3, num_heads=2, num_head_channels=-1,
                    num_heads_upsample=4, use_scale_shift_norm=True, resblock_updown=True,
                    use_new_attention_order=False),
        learn_sigma=True, near_eps=True, t=[3, 897], y=[2, 0]),
    # num_head_channels 8 (8 heads at 64 channels, 4 at 32; num_heads 1 is ignored), new qkv
    # order, the emb added before the norm, strided-conv / nearest+conv resampling,
    # unconditional. Level 0 is 64 wide: with 32 channels, GroupNorm32's one-channel groups
    # would cancel the added emb exactly, so it could not be observed.
    "unet_headch_new": dict(
        kwargs=dict(image_size=8, in_channels=3, model_channels=32, out_channels=3,
                    num_res_blocks=1, attention_resolutions=(1, 2), dropout=0.0,
                    channel_mult=(2, 1), num_classes=None, num_heads=1, num_head_channels=8,
                    num_heads_upsample=-1, use_scale_shift_norm=False, resblock_updown=False,
                    use_new_attention_order=True),
        learn_sigma=False, near_eps=True, t=[0, 640], y=None),
}

# DiT constructor kwargs.
DITS = {
    # 31 classes + the null row = 32 = hidden_size: a square label table, which a loader that
    # transposed by shape alone would get wrong. y includes the null label 31.
    "dit_p2": dict(
        kwargs=dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
                    num_heads=2, mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=31,
                    learn_sigma=True),
        t=[17, 999], y=[5, 31]),
    # Patch 4, 4 heads, mlp_ratio 2, no null row (class_dropout_prob 0), no learn_sigma.
    "dit_p4": dict(
        kwargs=dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1,
                    num_heads=4, mlp_ratio=2.0, class_dropout_prob=0.0, num_classes=5,
                    learn_sigma=False),
        t=[250, 1], y=[4, 0]),
}

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.int64: "I64"}


def write_safetensors(path, tensors, metadata):
    """The safetensors format: u64 little-endian header length, JSON header, raw bytes."""
    header, chunks, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for c in chunks:
            f.write(c)
    return os.path.getsize(path)


def commit_of(path):
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Gains on top of the seeded init, as (regex on the parameter name, factor).
# U-Net "near_eps": what writes O(1) values into the residual stream (the stem, each ResBlock's
# two 3×3 convs, attention's proj_out) is scaled to an output std ≈ 0.003, a variance ≈ 1e-5 =
# GroupNorm's eps; the resample and skip convs read that (small) stream already, so only their
# biases are scaled. The head conv out.2 keeps its scale.
NEAR_EPS = [
    (r"^(input_blocks\.0\.0|.*\.in_layers\.2|.*\.out_layers\.3|.*\.proj_out)\.(weight|bias)$", 0.003),
    (r"\.(skip_connection|op|conv)\.bias$", 0.003),
]


def seed_parameters(model, gen, gains=()):
    """Overwrite every trainable parameter with N(0, 1)·scale·gain, rounded to float16 values."""
    embeddings = {f"{m}.weight" for m, mod in model.named_modules()
                  if isinstance(mod, torch.nn.Embedding)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # DiT's pos_embed: a fixed buffer, keep its value
                continue
            z = torch.randn(p.shape, generator=gen)
            if name in embeddings:
                v = z
            elif p.ndim >= 2:
                v = z / math.sqrt(p[0].numel())  # fan_in of [out, in, ...]
            elif name.endswith("weight"):
                v = 1 + 0.2 * z  # GroupNorm gain
            else:
                v = 0.2 * z
            for pattern, gain in gains:
                if re.search(pattern, name):
                    v = v * gain
            p.copy_(v.half().float())


def state_dict_tensors(model):
    """The state_dict: trained parameters as F16 (exact: they hold float16 values), rest as is."""
    fixed = {n for n, p in model.named_parameters() if not p.requires_grad}
    return {k: (v if k in fixed else v.half()) for k, v in model.state_dict().items()}


def run_unet(spec):
    from guided_diffusion.unet import UNetModel

    gen = torch.Generator().manual_seed(SEED)
    kw = spec["kwargs"]
    model = UNetModel(**kw).eval()
    seed_parameters(model, gen, NEAR_EPS if spec["near_eps"] else ())
    s = kw["image_size"]
    x = torch.randn(len(spec["t"]), kw["in_channels"], s, s, generator=gen)
    t = torch.tensor(spec["t"], dtype=torch.int64)
    y = None if spec["y"] is None else torch.tensor(spec["y"], dtype=torch.int64)

    modules = [*model.input_blocks, model.middle_block, *model.output_blocks]
    blocks = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, b=b: blocks.__setitem__(b, out.clone()))
             for b, m in enumerate(modules, start=1)]
    with torch.no_grad():
        out = model(x, t, y)
    for h in hooks:
        h.remove()
    io = {"x": x, "t": t, **({"y": y} if y is not None else {}),
          **{f"block.{b}": v for b, v in blocks.items()}, "out": out}
    return model, io, {"kwargs": json.dumps(kw), "learn_sigma": json.dumps(spec["learn_sigma"]),
                       "near_eps": json.dumps(spec["near_eps"])}


def run_dit(spec):
    from models import DiT

    gen = torch.Generator().manual_seed(SEED)
    kw = spec["kwargs"]
    model = DiT(**kw).eval()
    seed_parameters(model, gen)
    s = kw["input_size"]
    x = torch.randn(len(spec["t"]), kw["in_channels"], s, s, generator=gen)
    t = torch.tensor(spec["t"], dtype=torch.int64)
    y = torch.tensor(spec["y"], dtype=torch.int64)

    blocks = {}
    hooks = [model.blocks[0].register_forward_pre_hook(
        lambda _m, inp: blocks.__setitem__(0, inp[0].clone()))]
    hooks += [blk.register_forward_hook(lambda _m, _i, out, b=b: blocks.__setitem__(b, out.clone()))
              for b, blk in enumerate(model.blocks, start=1)]
    with torch.no_grad():
        out = model(x, t, y)
    for h in hooks:
        h.remove()
    io = {"x": x, "t": t, "y": y, **{f"block.{b}": v for b, v in sorted(blocks.items())},
          "out": out}
    return model, io, {"kwargs": json.dumps(kw)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guided-diffusion", required=True, help="checkout of openai/guided-diffusion")
    ap.add_argument("--dit", required=True, help="checkout of facebookresearch/DiT")
    ap.add_argument("--timm", help="checkout of huggingface/pytorch-image-models (if not installed)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures", "reference"))
    a = ap.parse_args()
    sys.path[:0] = [a.guided_diffusion, a.dit] + ([a.timm] if a.timm else [])
    import timm

    torch.set_grad_enabled(False)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    meta = {"seed": str(SEED), "torch": torch.__version__, "timm": timm.__version__,
            "guided_diffusion_commit": commit_of(a.guided_diffusion),
            "dit_commit": commit_of(a.dit), "timm_commit": commit_of(a.timm) if a.timm else "",
            "generator": "scripts/reference_fixtures.py"}
    os.makedirs(a.out, exist_ok=True)
    total = 0
    jobs = [(n, s, run_unet, "unet") for n, s in UNETS.items()]
    jobs += [(n, s, run_dit, "dit") for n, s in DITS.items()]
    for name, spec, run, kind in jobs:
        model, io, extra = run(spec)
        m = {**meta, **extra, "model": kind, "name": name}
        total += write_safetensors(os.path.join(a.out, f"{name}.weights.safetensors"),
                                   state_dict_tensors(model), m)
        total += write_safetensors(os.path.join(a.out, f"{name}.io.safetensors"), io, m)
        print(f"{name}: {sum(p.numel() for p in model.parameters())} params, "
              f"{len(io) - 1} io tensors, |out| max {io['out'].abs().max().item():.3g}")
    print(f"wrote {a.out}: {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
