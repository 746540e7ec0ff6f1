#!/usr/bin/python3
"""Export a diffusers AutoencoderKL as difftrain's VAE encoder and decoder (two TorchScript files).

Usage (on a machine with `diffusers` and the weights; nothing here downloads unless diffusers
itself does for a hub name):

    python3 model/export_vae.py --model stabilityai/sd-vae-ft-mse --resolution 256 \\
        --encoder-output vae-encoder.pt --decoder-output vae-decoder.pt
    python3 model/export_vae.py --model path/to/stable-diffusion --subfolder vae --resolution 512 \\
        --encoder-output vae-encoder.pt --decoder-output vae-decoder.pt

The contract (docs/LATENTS.md, "Bringing your own VAE"):
    ENCODER forward(images: float32 (B, C, H, W) in [-1, 1]) -> latents float32 (B, c, H/f, W/f):
            the posterior mean, vae.encode(images).latent_dist.mean (deterministic), UNSCALED.
    DECODER forward(latents: float32 (B, c, h, w), unscaled) -> images float32 (B, C, f h, f w)
            in [-1, 1] (not clamped): vae.decode(latents).sample.
    Both files carry float attributes latent_scale (config.scaling_factor; SD 1/2: 0.18215) and
    latent_shift (config.shift_factor, 0.0 when the config has none) and int attributes
    latent_channels (c), downsample_factor (f = 2^(len(block_out_channels) - 1)) and
    image_channels (C), plus a str attribute `source`. difftrain trains on
    z = (latents - latent_shift) * latent_scale and decodes z / latent_scale + latent_shift.
A VAE whose config has per-channel latents_mean / latents_std is refused: a scalar
shift and scale cannot express them.

How it is exported: each half is traced with torch.jit.trace on a batch at --resolution (the
encoder) or its latent size (the decoder) and placed in a scripted module carrying the
attributes. Before saving, both files' modules are compared with the eager VAE on batches of
1 and 3 and on a round trip decode(encode(x)); the script then reports whether another
resolution also works (convolutional VAEs normally trace shape-free; if not, use the files only
at --resolution). Weights are float32. The files must load in difftrain's LibTorch (Debian:
1.13): export with a PyTorch no newer than needed, and the VAE's attention uses the plain
attention processor (no scaled_dot_product_attention op, absent from LibTorch 1.13).

The wrapping (vae_attributes, export_vae) takes any object with the diffusers interface
(.encode(x).latent_dist.mean, .decode(z).sample, .config); tests/export_scripts_tests.py runs it
with a random-weight stand-in, since diffusers is not a difftrain dependency.
"""
import argparse
import io
import sys
import warnings

import torch


class ExportError(Exception):
    """A problem with the VAE or the options; main() prints it as one line."""


def config_value(config, name, default=None):
    """config.name for a diffusers FrozenDict / dataclass-like config or a plain dict."""
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def vae_attributes(vae) -> dict:
    """The attributes both files carry, from the VAE's config."""
    config = vae.config
    for name in ("latents_mean", "latents_std"):
        if config_value(config, name) is not None:
            raise ExportError(f"the VAE's config has per-channel {name}; the contract's scalar latent_shift and "
                              "latent_scale cannot express it")
    blocks = config_value(config, "block_out_channels")
    scale = config_value(config, "scaling_factor")
    if not blocks or scale is None:
        raise ExportError("the VAE's config lacks block_out_channels or scaling_factor (not an AutoencoderKL?)")
    shift = config_value(config, "shift_factor")
    return {
        "latent_scale": float(scale),
        "latent_shift": float(shift) if shift is not None else 0.0,
        "latent_channels": int(config_value(config, "latent_channels")),
        "downsample_factor": 2 ** (len(blocks) - 1),
        "image_channels": int(config_value(config, "in_channels", 3)),
    }


class EncoderCore(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean


class DecoderCore(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


class LatentModule(torch.nn.Module):
    """The files' top level: a traced half plus the attributes."""
    latent_scale: float
    latent_shift: float
    latent_channels: int
    downsample_factor: int
    image_channels: int
    source: str

    def __init__(self, core, attributes: dict, source: str):
        super().__init__()
        self.core = core
        self.latent_scale = attributes["latent_scale"]
        self.latent_shift = attributes["latent_shift"]
        self.latent_channels = attributes["latent_channels"]
        self.downsample_factor = attributes["downsample_factor"]
        self.image_channels = attributes["image_channels"]
        self.source = source

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.core(x)


def reload(module):
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def compare(name: str, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if got.shape != want.shape or got.dtype != torch.float32:
        raise ExportError(f"exported {name} gives {tuple(got.shape)} {got.dtype} on {what}, the VAE {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise ExportError(f"exported {name} gives non-finite values on {what}")
    diff = (got - want).abs().max().item()
    if diff > 1e-4 * max(1.0, want.abs().max().item()):
        raise ExportError(f"exported {name} disagrees with the VAE on {what} (max |diff| {diff:.3g}); "
                          "the trace may have fixed a shape")


def images_at(batch: int, channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, height, width, generator=g) * 2 - 1


def export_vae(vae, resolution: int, source: str = "", log=print):
    """(encoder, decoder) scripted modules with the contract, checked against the eager VAE."""
    attributes = vae_attributes(vae)
    f, c, channels = attributes["downsample_factor"], attributes["latent_channels"], attributes["image_channels"]
    if resolution < f or resolution % f:
        raise ExportError(f"--resolution {resolution}: expected a positive multiple of the downsample factor {f}")
    vae = vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    encoder_core, decoder_core = EncoderCore(vae).eval(), DecoderCore(vae).eval()
    example = images_at(2, channels, resolution, resolution, seed=0)
    with torch.no_grad():
        example_latents = encoder_core(example)
        if tuple(example_latents.shape) != (2, c, resolution // f, resolution // f):
            raise ExportError(f"the VAE encodes (2, {channels}, {resolution}, {resolution}) to "
                              f"{tuple(example_latents.shape)}, expected (2, {c}, {resolution // f}, {resolution // f}) "
                              "from its config")
        example_images = decoder_core(example_latents)
        if tuple(example_images.shape) != tuple(example.shape):
            raise ExportError(f"the VAE decodes {tuple(example_latents.shape)} to {tuple(example_images.shape)}, "
                              f"expected {tuple(example.shape)}")
    with torch.no_grad(), warnings.catch_warnings():  # the checks below test what the warnings warn of
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced_encoder = torch.jit.trace(encoder_core, (example,), check_trace=False)
        traced_decoder = torch.jit.trace(decoder_core, (example_latents,), check_trace=False)
    what = source or type(vae).__name__
    encoder = torch.jit.script(LatentModule(
        traced_encoder, attributes, f"{what}: encoder, images (B, {channels}, H, W) in [-1, 1] -> posterior mean "
        f"(B, {c}, H/{f}, W/{f}), unscaled"))
    decoder = torch.jit.script(LatentModule(
        traced_decoder, attributes, f"{what}: decoder, unscaled latents (B, {c}, h, w) -> images "
        f"(B, {channels}, {f}h, {f}w) in [-1, 1], not clamped"))
    loaded_encoder, loaded_decoder = reload(encoder), reload(decoder)
    for batch, seed in ((1, 1), (3, 2)):
        images = images_at(batch, channels, resolution, resolution, seed)
        try:
            with torch.no_grad():
                latents = encoder_core(images)
                compare("encoder", loaded_encoder(images), latents, f"a batch of {batch} at {resolution}x{resolution}")
                compare("decoder", loaded_decoder(latents), decoder_core(latents), f"a batch of {batch} latents")
                compare("round trip", loaded_decoder(loaded_encoder(images)), decoder_core(encoder_core(images)),
                        f"decode(encode(x)) for a batch of {batch}")
        except RuntimeError as e:
            raise ExportError(f"exported files fail on a batch of {batch} at {resolution}x{resolution} (the trace "
                              f"may have fixed a shape): {str(e).strip().splitlines()[-1]}") from None
    other = resolution + 2 * f
    try:
        images = images_at(1, channels, other, resolution, seed=3)
        with torch.no_grad():
            compare("encoder", loaded_encoder(images), encoder_core(images), f"{other}x{resolution}")
            latents = encoder_core(images)
            compare("decoder", loaded_decoder(latents), decoder_core(latents), f"{other}x{resolution}")
        shapes = f"any H, W divisible by {f} (checked at {resolution}x{resolution} and {other}x{resolution})"
    except (ExportError, RuntimeError) as e:
        shapes = f"ONLY {resolution}x{resolution} images (another size failed: {str(e).strip().splitlines()[-1]})"
    log(f"exported {what}: latent_channels {c}, downsample_factor {f}, latent_scale {attributes['latent_scale']}, "
        f"latent_shift {attributes['latent_shift']}; works for {shapes}")
    return encoder, decoder


def load_vae(name: str, subfolder: str):
    try:
        import diffusers  # lazily: difftrain's own tests run without it
    except ImportError as e:
        raise ExportError("this script needs Hugging Face diffusers to load --model "
                          f"(pip install diffusers; not a difftrain dependency): {e}") from None
    kwargs = {"torch_dtype": torch.float32}
    if subfolder:
        kwargs["subfolder"] = subfolder
    vae = diffusers.AutoencoderKL.from_pretrained(name, **kwargs)
    try:  # the plain attention processor: no scaled_dot_product_attention op in the trace
        from diffusers.models.attention_processor import AttnProcessor
        vae.set_attn_processor(AttnProcessor())
    except (ImportError, AttributeError, ValueError):
        pass
    return vae


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="diffusers AutoencoderKL directory or hub name")
    parser.add_argument("--subfolder", default="", help="folder inside --model (e.g. vae of a pipeline)")
    parser.add_argument("--resolution", type=int, default=256, help="image size the trace is made at (256)")
    parser.add_argument("--encoder-output", required=True, help="TorchScript file for the encoder")
    parser.add_argument("--decoder-output", required=True, help="TorchScript file for the decoder")
    args = parser.parse_args(argv)
    try:
        torch.manual_seed(0)
        vae = load_vae(args.model, args.subfolder)
        source = f"{args.model}{'/' + args.subfolder if args.subfolder else ''} ({type(vae).__name__})"
        encoder, decoder = export_vae(vae, args.resolution, source)
        encoder.save(args.encoder_output)
        decoder.save(args.decoder_output)
    except ExportError as e:
        sys.exit(f"export_vae.py: error: {e}")
    print(f"wrote {args.encoder_output} and {args.decoder_output}")


if __name__ == "__main__":
    main()
