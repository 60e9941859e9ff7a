#!/usr/bin/env python3
"""PyTorch peer of bench/models.ts: the same ADM U-Net and DiT, the same train step, in plain
PyTorch (no guided-diffusion or DiT import), timed on the CPU with a fixed thread count.

Architectures follow lib/models/unet.ts and lib/models/dit.ts (facts.md §1, §4), configured by
the same JSON records (camelCase field names), so parameter counts must agree with the project's.
The train step is the project's pre-training step: x_t = q_sample(x0, t, ε) with t ~ U{0..T-1}
on the linear schedule (T = 1000), loss = mean(mse(ε, ε̂) + L_vb) with the mean stop-gradient'ed
in L_vb when learnSigma (the hybrid loss of guided-diffusion's LossType.MSE), Adam (lr 1e-4),
then an EMA of the weights. Feature extraction is q_sample + the U-Net up to block b, no grad.

Usage (bench/models.ts runs it):
  python3 bench/peer_torch.py --json --unet '{...}' --dit '{...}' [--params-only]
Prints one JSON line on stdout.
"""

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ─── shared layers ──────────────────────────────────────────────────────────────────────────────


def timestep_embedding(t, dim, max_period=10000):
    """ADM sinusoid, cos first: t [N] → [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero(module):
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ─── ADM U-Net ──────────────────────────────────────────────────────────────────────────────────


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, scale_shift, resample, dropout):
        super().__init__()
        self.scale_shift, self.resample = scale_shift, resample
        self.in_layers = nn.Sequential(nn.GroupNorm(32, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, (2 if scale_shift else 1) * cout))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, cout), nn.SiLU(), nn.Dropout(dropout), zero(nn.Conv2d(cout, cout, 3, padding=1))
        )
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def _resample(self, x):
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    def forward(self, x, emb):
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = conv(self._resample(norm_act(x)))
        x = self._resample(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            norm, rest = self.out_layers[0], self.out_layers[1:]
            scale, shift = torch.chunk(e, 2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, heads, new_order):
        super().__init__()
        self.heads, self.new_order = heads, new_order
        self.norm = nn.GroupNorm(32, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x):
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # [B, 3C, T]
        ch, t = c // self.heads, hh * ww
        if self.new_order:
            q, k, v = qkv.chunk(3, dim=1)
            q, k, v = (z.reshape(b * self.heads, ch, t) for z in (q, k, v))
        else:  # legacy: heads outermost, [q, k, v] inside each head
            q, k, v = qkv.reshape(b * self.heads, 3 * ch, t).split(ch, dim=1)
        scale = ch ** -0.25
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, t)
        return x + self.proj_out(a).reshape(b, c, hh, ww)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Seq(nn.ModuleList):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """Block structure of lib/models/unet.ts `blocks()`: input blocks, middle, output blocks."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        mc, L = c["modelChannels"], len(c["channelMult"])
        emb = 4 * mc
        width = lambda l: mc * c["channelMult"][l]
        side = lambda l: c["imageSize"] // 2 ** l
        attn_at = lambda l: side(l) in c["attentionResolutions"]
        ss, drop = c["useScaleShiftNorm"], c["dropout"]
        new_order = c["useNewAttentionOrder"]

        def heads(ch, decoder):
            if c["numHeadChannels"] != -1:
                return ch // c["numHeadChannels"]
            return c["numHeadsUpsample"] if decoder and c["numHeadsUpsample"] != -1 else c["numHeads"]

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Embedding(c["numClasses"], emb) if c.get("numClasses") is not None else None
        blocks, skip_ch = [Seq([nn.Conv2d(c["inChannels"], width(0), 3, padding=1)])], [width(0)]
        for l in range(L):
            for i in range(c["numResBlocks"]):
                cin = width(l) if i > 0 else width(max(l - 1, 0))
                layers = [ResBlock(cin, width(l), emb, ss, "none", drop)]
                if attn_at(l):
                    layers.append(AttentionBlock(width(l), heads(width(l), False), new_order))
                blocks.append(Seq(layers))
                skip_ch.append(width(l))
            if l < L - 1:
                down = ResBlock(width(l), width(l), emb, ss, "down", drop) if c["resblockUpdown"] else Downsample(width(l))
                blocks.append(Seq([down]))
                skip_ch.append(width(l))
        self.input_blocks = nn.ModuleList(blocks)
        top = width(L - 1)
        self.middle_block = Seq([
            ResBlock(top, top, emb, ss, "none", drop),
            AttentionBlock(top, heads(top, False), new_order),
            ResBlock(top, top, emb, ss, "none", drop),
        ])
        out, ch = [], top
        for l in reversed(range(L)):
            for i in range(c["numResBlocks"] + 1):
                layers = [ResBlock(ch + skip_ch.pop(), width(l), emb, ss, "none", drop)]
                if attn_at(l):
                    layers.append(AttentionBlock(width(l), heads(width(l), True), new_order))
                if l > 0 and i == c["numResBlocks"]:
                    layers.append(ResBlock(width(l), width(l), emb, ss, "up", drop) if c["resblockUpdown"] else Upsample(width(l)))
                out.append(Seq(layers))
                ch = width(l)
        self.output_blocks = nn.ModuleList(out)
        out_ch = c["outChannels"] * (2 if c["learnSigma"] else 1)
        self.out = nn.Sequential(nn.GroupNorm(32, width(0)), nn.SiLU(), zero(nn.Conv2d(width(0), out_ch, 3, padding=1)))

    def forward(self, x, t, y=None, stop_after=None):
        """stop_after: return the output of block b (1-based over input, middle, output blocks)."""
        emb = self.time_embed(timestep_embedding(t, self.c["modelChannels"]))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        skips, h, b = [], x, 0
        for blk in self.input_blocks:
            h = blk(h, emb)
            skips.append(h)
            b += 1
            if b == stop_after:
                return h
        h = self.middle_block(h, emb)
        b += 1
        if b == stop_after:
            return h
        for blk in self.output_blocks:
            h = blk(torch.cat([h, skips.pop()], dim=1), emb)
            b += 1
            if b == stop_after:
                return h
        return self.out(h)


# ─── DiT ────────────────────────────────────────────────────────────────────────────────────────


def pos_embed_2d(d, g):
    """[T, D]: channels [0, D/2) encode the column, [D/2, D) the row; [sin, cos] per half."""
    q = d // 4
    omega = 1.0 / 10000 ** (np.arange(q, dtype=np.float64) / q)
    rows, cols = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
    enc = lambda pos: np.concatenate([np.sin(np.outer(pos, omega)), np.cos(np.outer(pos, omega))], axis=1)
    return np.concatenate([enc(cols.reshape(-1)), enc(rows.reshape(-1))], axis=1).astype(np.float32)


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, T, hd]
        w = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5, dim=-1)
        return self.proj((w @ v).transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, d, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, int(d * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        s1, c1, g1, s2, c2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), s1, c1))
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s2, c2))


class FinalLayer(nn.Module):
    def __init__(self, d, p, out_ch):
        super().__init__()
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, p * p * out_ch)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class TimestepEmbedder(nn.Module):
    def __init__(self, d, freq=256):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, d), nn.SiLU(), nn.Linear(d, d))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq))


class LabelEmbedder(nn.Module):
    def __init__(self, rows, d):
        super().__init__()
        self.embedding_table = nn.Embedding(rows, d)

    def forward(self, y):
        return self.embedding_table(y)


class PatchEmbed(nn.Module):
    def __init__(self, cin, d, p):
        super().__init__()
        self.proj = nn.Conv2d(cin, d, p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, T, D], row-major tokens


class DiT(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        d, p = c["hiddenSize"], c["patchSize"]
        self.out_ch = c["inChannels"] * (2 if c["learnSigma"] else 1)
        self.x_embedder = PatchEmbed(c["inChannels"], d, p)
        self.t_embedder = TimestepEmbedder(d)
        self.num_classes = c.get("numClasses")
        if self.num_classes is not None:
            rows = self.num_classes + (1 if c["classDropoutProb"] > 0 else 0)
            self.y_embedder = LabelEmbedder(rows, d)
        g = c["inputSize"] // p
        # A buffer, not a parameter: the counts compare trainable parameters.
        self.register_buffer("pos_embed", torch.from_numpy(pos_embed_2d(d, g)).unsqueeze(0))
        self.blocks = nn.ModuleList([DiTBlock(d, c["numHeads"], c["mlpRatio"]) for _ in range(c["depth"])])
        self.final_layer = FinalLayer(d, p, self.out_ch)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.num_classes is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for blk in self.blocks:
            zero(blk.adaLN_modulation[-1])
        zero(self.final_layer.adaLN_modulation[-1])
        zero(self.final_layer.linear)

    def forward(self, x, t, y=None):
        h = self.x_embedder(x) + self.pos_embed
        cond = self.t_embedder(t)
        if self.num_classes is not None:
            if self.training and self.c["classDropoutProb"] > 0:
                drop = torch.rand(y.shape[0]) < self.c["classDropoutProb"]
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            cond = cond + self.y_embedder(y)
        for blk in self.blocks:
            h = blk(h, cond)
        h = self.final_layer(h, cond)  # [N, T, p²·C']
        n, p, g = h.shape[0], self.c["patchSize"], self.c["inputSize"] // self.c["patchSize"]
        h = h.reshape(n, g, g, p, p, self.out_ch)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(n, self.out_ch, g * p, g * p)


# ─── diffusion loss (linear schedule, hybrid loss) ──────────────────────────────────────────────


class Diffusion:
    def __init__(self, steps=1000):
        s = 1000 / steps
        betas = np.linspace(1e-4 * s, 0.02 * s, steps, dtype=np.float64)
        ac = np.cumprod(1 - betas)
        acp = np.append(1.0, ac[:-1])
        post_var = betas * (1 - acp) / (1 - ac)
        f = lambda a: torch.tensor(a, dtype=torch.float32)
        self.T = steps
        self.sqrt_ac, self.sqrt_1mac = f(np.sqrt(ac)), f(np.sqrt(1 - ac))
        self.sqrt_recip_ac, self.sqrt_recipm1_ac = f(np.sqrt(1 / ac)), f(np.sqrt(1 / ac - 1))
        self.log_betas = f(np.log(betas))
        self.post_logvar = f(np.log(np.append(post_var[1], post_var[1:])))
        self.c1 = f(betas * np.sqrt(acp) / (1 - ac))
        self.c2 = f((1 - acp) * np.sqrt(1 - betas) / (1 - ac))

    @staticmethod
    def _at(a, t):
        return a[t][:, None, None, None]

    def q_sample(self, x0, t, noise):
        return self._at(self.sqrt_ac, t) * x0 + self._at(self.sqrt_1mac, t) * noise

    def loss(self, model_out, x0, xt, t, noise, learn_sigma):
        c = x0.shape[1]
        eps = model_out[:, :c]
        mse = ((noise - eps) ** 2).mean(dim=(1, 2, 3))
        if not learn_sigma:
            return mse.mean()
        eps, v = eps.detach(), model_out[:, c:]
        frac = (v + 1) / 2
        logvar = frac * self._at(self.log_betas, t) + (1 - frac) * self._at(self.post_logvar, t)
        x0_hat = self._at(self.sqrt_recip_ac, t) * xt - self._at(self.sqrt_recipm1_ac, t) * eps
        mean = self._at(self.c1, t) * x0_hat + self._at(self.c2, t) * xt
        true_mean = self._at(self.c1, t) * x0 + self._at(self.c2, t) * xt
        true_logvar = self._at(self.post_logvar, t)
        kl = 0.5 * (-1.0 + logvar - true_logvar + torch.exp(true_logvar - logvar)
                    + (true_mean - mean) ** 2 * torch.exp(-logvar))
        kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
        return (mse + torch.where(t == 0, nll, kl)).mean()


def approx_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    centered, inv = x - means, torch.exp(-log_scales)
    cdf_plus, cdf_min = approx_cdf(inv * (centered + 1 / 255)), approx_cdf(inv * (centered - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus, log_delta))


# ─── timing ─────────────────────────────────────────────────────────────────────────────────────


WARMUP_S = 3  # seconds of warm-up calls, as bench/models.ts


def timed(fn, repeats, budget_s):
    """Median seconds of fn over up to `repeats` runs after a warm-up of WARMUP_S (at least one
    call); stops at the budget. A first call longer than the budget is the measurement
    (0 repeats), as in bench/models.ts."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    if budget_s > 0 and warm > budget_s:
        return warm, 0
    while time.perf_counter() - t0 < WARMUP_S:
        fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def train_step(model, diff, shape, batch, learn_sigma, classes, ema_rate, lr):
    """One pre-training step as a closure: loss, backward, Adam, EMA."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = [p.detach().clone() for p in model.parameters()]
    x0 = torch.randn(batch, *shape)

    def step():
        t = torch.randint(0, diff.T, (batch,))
        noise = torch.randn_like(x0)
        xt = diff.q_sample(x0, t, noise)
        y = torch.randint(0, classes, (batch,)) if classes else None
        loss = diff.loss(model(xt, t, y), x0, xt, t, noise, learn_sigma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(ema_rate).add_(p, alpha=1 - ema_rate)
        return loss.item()

    return step


def train_bench(model, diff, shape, batch, learn_sigma, classes, repeats, budget, ema_rate, lr):
    return timed(train_step(model, diff, shape, batch, learn_sigma, classes, ema_rate, lr), repeats, budget)


def profile_ms(step):
    """Self CPU milliseconds per aten op of one step (after a warm-up), from torch.profiler."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages() if e.self_cpu_time_total > 0}


def feature_step(model, diff, shape, batch, block):
    """One no-grad extraction of noised images through the U-Net to block `block`."""
    model.eval()
    x0 = torch.randn(batch, *shape)

    @torch.no_grad()
    def run():
        t = torch.randint(0, diff.T, (batch,))
        return model(diff.q_sample(x0, t, torch.randn_like(x0)), t, stop_after=block).sum().item()

    return run


def feature_bench(model, diff, shape, batch, block, repeats, budget):
    return timed(feature_step(model, diff, shape, batch, block), repeats, budget)


def count(model):
    return sum(p.numel() for p in model.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON line (the only output mode)")
    ap.add_argument("--unet", required=True, help="UNetConfig as JSON (lib/models/unet.ts field names)")
    ap.add_argument("--dit", required=True, help="DiTConfig as JSON (lib/models/dit.ts field names)")
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--dit-batch", type=int, default=64)
    ap.add_argument("--feature-batch", type=int, default=64)
    ap.add_argument("--feature-block", type=int, required=False, help="U-Net block b to stop after")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per workload")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--params-only", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated workloads to time (default: all)")
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing: self CPU ms per op of one U-Net and one DiT train step"
                         " (and one feature extraction with --feature-block)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    uc, dc = json.loads(a.unet), json.loads(a.dit)
    unet, dit = UNet(uc), DiT(dc)
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": {"unet": count(unet), "dit": count(dit)},
    }
    if a.profile:
        diff = Diffusion(1000)
        shape = (uc["inChannels"], uc["imageSize"], uc["imageSize"])
        step = train_step(unet, diff, shape, a.unet_batch, uc["learnSigma"], uc.get("numClasses"), a.ema, a.lr)
        t0 = time.perf_counter()
        out["unet_train_profile_ms"] = profile_ms(step)
        dshape = (dc["inChannels"], dc["inputSize"], dc["inputSize"])
        out["dit_train_profile_ms"] = profile_ms(train_step(
            dit, diff, dshape, a.dit_batch, dc["learnSigma"], dc.get("numClasses"), a.ema, a.lr))
        if a.feature_block:
            out["unet_features_profile_ms"] = profile_ms(
                feature_step(unet, diff, shape, a.feature_batch, a.feature_block))
        out["profiled_s"] = time.perf_counter() - t0
    elif not a.params_only:
        diff = Diffusion(1000)
        ushape = (uc["inChannels"], uc["imageSize"], uc["imageSize"])
        dshape = (dc["inChannels"], dc["inputSize"], dc["inputSize"])
        runs = {
            "unet_train": (a.unet_batch, lambda: train_bench(
                unet, diff, ushape, a.unet_batch, uc["learnSigma"], uc.get("numClasses"), a.repeats, a.budget, a.ema, a.lr)),
            "dit_train": (a.dit_batch, lambda: train_bench(
                dit, diff, dshape, a.dit_batch, dc["learnSigma"], dc.get("numClasses"), a.repeats, a.budget, a.ema, a.lr)),
        }
        if a.feature_block:
            runs["unet_features"] = (a.feature_batch, lambda: feature_bench(
                unet, diff, ushape, a.feature_batch, a.feature_block, a.repeats, a.budget))
        if a.only:
            runs = {k: v for k, v in runs.items() if k in a.only.split(",")}
        for name, (batch, run) in runs.items():
            median, reps = run()
            out[name] = {"batch": batch, "median_s": median, "repeats": reps, "img_s": batch / median}
            print(f"peer_torch: {name} batch {batch}: {batch / median:.1f} img/s ({median * 1000:.0f} ms)", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
