"""The sampling loop of `difftrain sample --sampler ddim --eta 0 --spacing leading --clip off` in PyTorch
eager, for the Python twin (bench/twin/unet.py): per-image seeds (each image's noise from its own
torch.Generator, as diffusion::PerImageNoise), classifier-free guidance in one batched forward
(eps = eps(null) + w (eps(c) - eps(null))), DDIM (Song et al. 2020, eq. 12 with eta = 0)."""
import math

import torch


def byte_tokens(captions, max_tokens):
    """model/tokenizer.h: byte b -> token b + 1, padding 0."""
    rows = []
    for caption in captions:
        ids = [b + 1 for b in caption.encode("utf-8")][:max_tokens]
        rows.append(ids + [0] * (max_tokens - len(ids)))
    return torch.tensor(rows, dtype=torch.long)


def leading_timesteps(T, steps):
    k = T // steps
    return sorted((i * k for i in range(steps)), reverse=True)


def ddim_sample(model, tokens, seeds, image_shape, alphas_cumprod, steps, guidance, precision="fp32"):
    """(B, C, H, W) samples in about [-1, 1] (not clamped), B = len(seeds) = len(tokens). precision "bf16": the
    network under CPU bf16 autocast, its output back to float32 for the update (as diffusion/guidance.cpp)."""
    def net(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model(*args).float()
    a = alphas_cumprod.double()
    ts = leading_timesteps(a.shape[0], steps)
    x = torch.stack([torch.randn(image_shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    null = torch.zeros_like(tokens)
    both = torch.cat([tokens, null])
    with torch.no_grad():
        for k, t in enumerate(ts):
            tt = torch.full((x.shape[0],), t, dtype=torch.long)
            if guidance == 1.0:  # the null branch has weight 0: one forward (diffusion/guidance.cpp)
                eps = net(x, tt, tokens)
            else:
                eps_c, eps_n = net(torch.cat([x, x]), torch.cat([tt, tt]), both).chunk(2)
                eps = eps_n + guidance * (eps_c - eps_n)
            a_t = a[t].item()
            a_next = a[ts[k + 1]].item() if k + 1 < len(ts) else 1.0
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            x = math.sqrt(a_next) * x0 + math.sqrt(max(1 - a_next, 0.0)) * eps
    return x


def to_pixels(x):
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8, as trainer/batch_tensors tensor_to_images."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
