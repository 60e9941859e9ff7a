#!/usr/bin/env python3
"""Convert a PyTorch checkpoint (.pt) to safetensors, keeping the state_dict keys and layout.

Usage: python3 scripts/pt_to_safetensors.py IN.pt OUT.safetensors [--key ema|model] [--fp32]

guided-diffusion's released checkpoints (e.g. 256x256_diffusion_uncond.pt) are plain state_dicts;
DiT training checkpoints hold {"model", "ema", ...}, from which --key picks one (default: ema if
present, else model). The project loads the result with lib/io/torch_layout.ts `loadWeights`,
which transposes conv and linear weights into its own layout. Needs only torch (no safetensors
package): the format is an 8-byte header length, a JSON header, then the raw tensor bytes.
"""
import argparse
import json
import struct

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32"}


def state_dict_of(obj, key):
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for k in ([key] if key else ["ema", "model", "state_dict"]):
        if isinstance(obj, dict) and k in obj:
            return obj[k]
    raise SystemExit(f"error: no state_dict found (top-level keys: {list(obj)[:10]})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--key", choices=["ema", "model"], help="which weights of a training checkpoint")
    ap.add_argument("--fp32", action="store_true", help="widen fp16/bf16 weights to float32")
    a = ap.parse_args()
    sd = state_dict_of(torch.load(a.src, map_location="cpu"), a.key)
    header, chunks, offset = {}, [], 0
    for name, t in sd.items():
        t = t.detach().contiguous()
        if a.fp32 and t.is_floating_point():
            t = t.float()
        if t.dtype not in DTYPES:
            raise SystemExit(f"error: tensor {name} has unsupported dtype {t.dtype}")
        data = t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # align the data to 8 bytes
    with open(a.dst, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for c in chunks:
            f.write(c)
    print(f"wrote {a.dst}: {len(header)} tensors, {offset / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
