#!/usr/bin/python3
"""Export Inception-v3 pool3 features as a difftrain feature extractor (TorchScript).

Usage (Debian: apt-get install python3-torch python3-torchvision; run with /usr/bin/python3):

    /usr/bin/python3 eval/export_inception.py --weights pt_inception-2015-12-05-6726825d.pth --output inception.pt
    /usr/bin/python3 eval/export_inception.py --weights inception_v3_google-0cc3c7bd.pth --output inception-tv.pt
    /usr/bin/python3 eval/export_inception.py --random-init --output /tmp/untrained.pt   # tests only

Nothing is downloaded: --weights is a state dict you already have on disk, either
  * pytorch-fid's FID-Inception weights (pt_inception-2015-12-05-*.pth, the TensorFlow
    FID network ported to PyTorch; recognised by its 1008-class fc layer), built with
    pytorch-fid's patched blocks (TensorFlow's average pooling without the padded zeros,
    max pooling in the last block), or
  * torchvision's ImageNet weights (inception_v3_google-*.pth), built as torchvision's
    inception_v3.
FID values are comparable with pytorch-fid (and, within ~0.1, with the original TensorFlow
code) only with the FID-Inception weights; torchvision's weights give different values.
--random-init makes an untrained network: its "FID" means nothing; it exists to test the
export and the C++ loader without weights.

The exported module's contract (docs/FID.md):
    forward(images: float32 (B, 3, H, W) in [0, 1]) -> float32 (B, 2048)
It resizes to 299x299 bilinearly (align_corners=False, as pytorch-fid), maps [0, 1] to
[-1, 1] (2x - 1) and returns the flattened output of the final average pooling (pool3).
2x - 1 is what both weight sets expect: pytorch-fid feeds 2x - 1, and torchvision's weights
expect ImageNet-normalised input (x - mean) / std followed by their transform_input, which
maps it back to (x - 0.5) / 0.5 = 2x - 1.
"""
import argparse
import sys

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import inception as tv_inception

FEATURE_DIM = 2048
FID_CLASSES = 1008  # the TensorFlow graph's classifier, used to recognise pytorch-fid's weights


class FIDInceptionA(tv_inception.InceptionA):
    """pytorch-fid's patch: TensorFlow's average pool ignores the padded zeros."""

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class FIDInceptionC(tv_inception.InceptionC):
    """pytorch-fid's patch: TensorFlow's average pool ignores the padded zeros."""

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class FIDInceptionE(tv_inception.InceptionE):
    """pytorch-fid's patches: average pool without the padded zeros (Mixed_7b), or
    max pool (Mixed_7c, as in the TensorFlow graph)."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


def build_inception(variant: str, random_init: bool) -> torch.nn.Module:
    """torchvision's Inception3, with pytorch-fid's blocks for variant 'fid'."""
    if variant == "fid":
        net = tv_inception.Inception3(num_classes=FID_CLASSES, aux_logits=False, transform_input=False,
                                      init_weights=random_init)
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        net.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        return net
    return tv_inception.Inception3(num_classes=1000, aux_logits=True, transform_input=False,
                                   init_weights=random_init)


class Pool3Features(torch.nn.Module):
    """(B, 3, H, W) in [0, 1] -> (B, 2048): the layers of Inception-v3 up to the final average pool."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.layers = torch.nn.Sequential(
            net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, torch.nn.MaxPool2d(kernel_size=3, stride=2),
            net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, torch.nn.MaxPool2d(kernel_size=3, stride=2),
            net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
            net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, torch.nn.AdaptiveAvgPool2d(output_size=(1, 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        return torch.flatten(self.layers(x), 1)


def load_state_dict(path: str) -> dict:
    state = torch.load(path, map_location="cpu")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        sys.exit(f"{path}: not an Inception-v3 state dict (no 'fc.weight'); expected pytorch-fid's "
                 "pt_inception-2015-12-05-*.pth or torchvision's inception_v3_google-*.pth")
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="state dict file (pytorch-fid FID-Inception or torchvision)")
    source.add_argument("--random-init", action="store_true", help="untrained weights, for tests only")
    parser.add_argument("--variant", choices=["fid", "torchvision"],
                        help="network structure; with --weights it is recognised from the file")
    parser.add_argument("--output", required=True, help="TorchScript file to write")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.weights:
        state = load_state_dict(args.weights)
        variant = "fid" if state["fc.weight"].shape[0] == FID_CLASSES else "torchvision"
        if args.variant and args.variant != variant:
            sys.exit(f"{args.weights}: holds {variant} weights (fc has {state['fc.weight'].shape[0]} classes), "
                     f"but --variant {args.variant} was given")
        net = build_inception(variant, random_init=False)
        missing, unexpected = net.load_state_dict(state, strict=False)
        # The classifier heads are not part of the features; everything else must match.
        missing = [k for k in missing if not k.startswith(("AuxLogits.", "fc."))]
        if missing or unexpected:
            sys.exit(f"{args.weights}: does not fit torchvision {torchvision.__version__}'s Inception-v3 "
                     f"({variant}): missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    else:
        variant = args.variant or "fid"
        net = build_inception(variant, random_init=True)

    model = Pool3Features(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    scripted = torch.jit.script(model)
    probe = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected, got = model(probe), scripted(probe)
    if got.shape != (2, FEATURE_DIM) or not torch.allclose(expected, got, rtol=1e-5, atol=1e-6):
        sys.exit(f"scripted module disagrees with the eager one (shape {tuple(got.shape)})")
    scripted.save(args.output)
    print(f"wrote {args.output}: Inception-v3 ({variant}, "
          f"{'random init' if args.random_init else args.weights}) pool3 features, "
          f"(B, 3, H, W) in [0, 1] -> (B, {FEATURE_DIM})")


if __name__ == "__main__":
    main()
