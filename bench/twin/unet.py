"""A PyTorch eager twin of difftrain's text-conditioned UNet and byte-level text encoder (model/unet.cpp,
model/text_encoder.cpp, model/attention.cpp), operation for operation, for the same-model benchmark against
Python (bench/bench_python_twin.py, issue 12). Parameter names are the C++ module's (`difftrain export`
flattens them with "_", which load_exported undoes), so the twin takes a difftrain checkpoint's weights.
Covers the options of the benchmarked configs: builtin conditioning, scale/shift norm, no feed-forward,
no attention projections, no middle attention (checked by build_from_export)."""
import math

import torch
import torch.nn.functional as F
from torch import nn


def norm_fp32(norm, x):
    """Normalisation in float32 whatever the autocast dtype (model/norm_fp32.h)."""
    return norm(x.float()).to(x.dtype)


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float().unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([torch.cos(args), torch.sin(args)], 1)


def scaled_dot_product_attention(q, k, v, key_valid):
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    has_key = None
    if key_valid is not None:
        valid = key_valid.bool().unsqueeze(1).unsqueeze(1)
        has_key = valid.any(-1, keepdim=True)
        scores = scores.masked_fill(valid.logical_not().logical_and(has_key), -math.inf)
    weights = torch.softmax(scores.float(), -1)
    if has_key is not None:
        weights = weights * has_key.float()
    return torch.matmul(weights.to(v.dtype), v)


class MultiHeadAttention(nn.Module):
    def __init__(self, query_dim, context_dim, heads):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(self, x, context, key_valid):
        d = x.shape[2] // self.heads

        def split(t):
            return t.unflatten(2, (self.heads, d)).transpose(1, 2).contiguous()
        out = scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context)),
                                           key_valid)
        return self.to_out(out.transpose(1, 2).flatten(2))


class TransformerLayer(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = MultiHeadAttention(width, width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x, valid):
        h = norm_fp32(self.norm1, x)
        y = x + self.attention(h, h, valid)
        return y + self.fc2(F.gelu(self.fc1(norm_fp32(self.norm2, y))))


class TextEncoder(nn.Module):
    def __init__(self, max_tokens, width, layers, heads):
        super().__init__()
        self.token_embedding = nn.Embedding(257, width)
        self.position_embedding = nn.Parameter(torch.zeros(max_tokens + 1, width))
        self.summary_token = nn.Parameter(torch.zeros(width))
        self.layers = nn.ModuleList([TransformerLayer(width, heads) for _ in range(layers)])
        self.final_norm = nn.LayerNorm(width)

    def forward(self, token_ids):
        embedded = self.token_embedding(token_ids)
        summary = self.summary_token.view(1, 1, -1).expand_as(embedded[:, :1])
        x = torch.cat([summary, embedded], 1) + self.position_embedding.unsqueeze(0)
        first = token_ids[:, :1]
        valid = torch.cat([torch.ones_like(first, dtype=torch.bool), token_ids != 0], 1)
        for layer in self.layers:
            x = layer(x, valid)
        x = norm_fp32(self.final_norm, x)
        return x, valid, x[:, 0]


class ResBlock(nn.Module):
    def __init__(self, cin, cout, embedding_dim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.embedding_proj = nn.Linear(embedding_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, embedding):
        h = self.conv1(F.silu(norm_fp32(self.norm1, x)))
        scale, shift = self.embedding_proj(F.silu(embedding)).unsqueeze(-1).unsqueeze(-1).chunk(2, 1)
        h = norm_fp32(self.norm2, h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return (self.skip(x) if self.skip is not None else x) + h


class SpatialAttention(nn.Module):
    def __init__(self, channels, heads, context_dim, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.norm_self = nn.LayerNorm(channels)
        self.self_attention = MultiHeadAttention(channels, channels, heads)
        self.norm_cross = nn.LayerNorm(channels)
        self.cross_attention = MultiHeadAttention(channels, context_dim, heads)

    def forward(self, x, context, mask):
        h = norm_fp32(self.norm, x).flatten(2).transpose(1, 2)
        s = norm_fp32(self.norm_self, h)
        h = h + self.self_attention(s, s, None)
        h = h + self.cross_attention(norm_fp32(self.norm_cross, h), context, mask)
        return x + h.transpose(1, 2).reshape_as(x)


class UNetBlock(nn.Module):
    def __init__(self, res, attention):
        super().__init__()
        self.res = res
        self.attention = attention

    def forward(self, x, embedding, context, mask):
        h = self.res(x, embedding)
        return self.attention(h, context, mask) if self.attention is not None else h


class UNet(nn.Module):
    """The builtin-conditioning UNet of model/unet.cpp with its default block options."""

    def __init__(self, image_channels, image_size, base_channels, channel_mults, num_res_blocks,
                 attention_resolutions, attention_heads, norm_groups, max_tokens, text_width, text_layers, text_heads):
        super().__init__()
        C, E, G = base_channels, 4 * base_channels, norm_groups
        self.base_channels, self.channel_mults, self.num_res_blocks = C, list(channel_mults), num_res_blocks
        self.text_encoder = TextEncoder(max_tokens, text_width, text_layers, text_heads)
        self.time_fc1 = nn.Linear(C, E)
        self.time_fc2 = nn.Linear(E, E)
        self.text_to_embedding = nn.Linear(text_width, E)
        self.conv_in = nn.Conv2d(image_channels, C, 3, padding=1)
        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        self.middle_blocks, self.up_blocks, self.upsamplers = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()

        def block(cin, cout, resolution):
            attention = (SpatialAttention(cout, attention_heads, text_width, G)
                         if resolution in attention_resolutions else None)
            return UNetBlock(ResBlock(cin, cout, E, G), attention)
        skips, channels, resolution = [C], C, image_size
        levels = len(channel_mults)
        for level in range(levels):
            out = C * channel_mults[level]
            for _ in range(num_res_blocks):
                self.down_blocks.append(block(channels, out, resolution))
                channels = out
                skips.append(channels)
            if level + 1 < levels:
                self.downsamplers.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
                skips.append(channels)
                resolution //= 2
        self.middle_blocks.append(block(channels, channels, resolution))
        self.middle_blocks.append(UNetBlock(ResBlock(channels, channels, E, G), None))
        for level in reversed(range(levels)):
            out = C * channel_mults[level]
            for _ in range(num_res_blocks + 1):
                self.up_blocks.append(block(channels + skips.pop(), out, resolution))
                channels = out
            if level > 0:
                self.upsamplers.append(nn.Conv2d(channels, channels, 3, padding=1))
                resolution *= 2
        self.norm_out = nn.GroupNorm(G, channels)
        self.conv_out = nn.Conv2d(channels, image_channels, 3, padding=1)

    def forward(self, x_t, t, tokens):
        context, mask, pooled = self.text_encoder(tokens)
        embedding = self.time_fc2(F.silu(self.time_fc1(timestep_embedding(t, self.base_channels))))
        embedding = embedding + self.text_to_embedding(pooled)
        h = self.conv_in(x_t)
        skips = [h]
        levels, down = len(self.channel_mults), 0
        for level in range(levels):
            for _ in range(self.num_res_blocks):
                h = self.down_blocks[down](h, embedding, context, mask)
                down += 1
                skips.append(h)
            if level + 1 < levels:
                h = self.downsamplers[level](h)
                skips.append(h)
        for m in self.middle_blocks:
            h = m(h, embedding, context, mask)
        up = 0
        for level in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                h = self.up_blocks[up](torch.cat([h, skips.pop()], 1), embedding, context, mask)
                up += 1
            if level > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = self.upsamplers[levels - 1 - level](h)
        return self.conv_out(F.silu(norm_fp32(self.norm_out, h)))


def build_from_config(config):
    """The twin of a difftrain config (the dict of a checkpoint's config.yaml)."""
    m, d = config["model"], config["data"]
    defaults = {"conditioning": "builtin", "transformer_ff_mult": 0, "attention_projections": False,
                "scale_shift_norm": True, "middle_attention": False}
    for key, value in defaults.items():
        if m.get(key, value) != value:
            raise ValueError(f"the Python twin covers model.{key}={value!r} only, the config has {m[key]!r}")
    size = d["latent_size"] if d.get("latents") else d["image_size"]
    channels = d["latent_channels"] if d.get("latents") else d["channels"]
    return UNet(channels, size, m["base_channels"], m["channel_mults"], m["num_res_blocks"],
                m["attention_resolutions"], m["attention_heads"], m["norm_groups"], m["max_tokens"], m["text_width"],
                m["text_layers"], m["text_heads"])


def load_exported(twin, exported):
    """Copies the parameters of a `difftrain export` TorchScript file (names flattened with "_") into the twin;
    every parameter of either must find its partner with the same shape."""
    source = {name: p for name, p in exported.named_parameters()}
    mine = dict(twin.named_parameters())
    missing = [n for n in mine if n.replace(".", "_") not in source]
    extra = set(source) - {n.replace(".", "_") for n in mine}
    if missing or extra:
        raise ValueError(f"twin and export differ: missing {missing[:5]}, extra {sorted(extra)[:5]}")
    with torch.no_grad():
        for name, p in mine.items():
            src = source[name.replace(".", "_")]
            if src.shape != p.shape:
                raise ValueError(f"{name}: twin {tuple(p.shape)}, export {tuple(src.shape)}")
            p.copy_(src)
    return twin
