#!/usr/bin/python3
"""Cross-checks of eval/fid.* and eval/export_inception.py against independent Python code.

  check_fid_scipy.py scipy  FID_TOOL             FID against scipy.linalg.sqrtm (the pytorch-fid
                                                 way), the stats file against numpy through h5py
  check_fid_scipy.py export FID_TOOL EXPORT_PY   exported Inception read by the C++ FeatureExtractor;
                                                 exit 77 (skipped) without torchvision
"""
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

SKIP = 77  # SKIP_RETURN_CODE in tests/fid.cmake
RELATIVE_TOLERANCE = 1e-6


def run(*args: str) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def write_features(path: str, x: np.ndarray) -> None:
    np.ascontiguousarray(x, dtype="<f8").tofile(path)


def pytorch_fid_distance(a: np.ndarray, b: np.ndarray) -> float:
    """pytorch-fid's calculate_frechet_distance on np.cov statistics (rowvar=False)."""
    from scipy import linalg

    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Matrix is singular and may not have a square root"
        covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        # pytorch-fid's fallback (adds 1e-6 to the diagonals) changes the answer at the
        # 1e-6 level; we want the exact value, so take the symmetric form instead, whose
        # square root exists for any pair of covariances.
        root1 = linalg.sqrtm(sigma1).real
        covmean = linalg.sqrtm(root1 @ sigma2 @ root1)
    if np.iscomplexobj(covmean):
        imaginary = np.max(np.abs(np.diagonal(covmean).imag))
        assert imaginary < 1e-3, f"imaginary component {imaginary}"  # pytorch-fid's check
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def check_scipy(tool: str) -> None:
    rng = np.random.default_rng(20240601)

    def correlated(n: int, d: int, scale: float, offset: float) -> np.ndarray:
        return rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) * scale / np.sqrt(d)) + offset

    cases = {
        # name: (a, b)
        "two Gaussians, N=500, D=64": (correlated(500, 64, 1.0, 0.0), correlated(500, 64, 1.5, 0.3)),
        "close Gaussians, N=2000, D=32": (correlated(2000, 32, 1.0, 0.0), rng.standard_normal((2000, 32)) * 0.6),
        # Like Inception features: non-negative, mean several times the spread (raw-moment cancellation).
        "ReLU features, mean >> std, N=1000, D=128": (np.maximum(correlated(1000, 128, 0.5, 2.0), 0),
                                                        np.maximum(correlated(1000, 128, 0.5, 2.1), 0)),
        # N < D: both covariances have rank N - 1, so Σ₁Σ₂ is singular. scipy's sqrtm of the
        # non-symmetric product still converges here (pytorch-fid's eps·I fallback is not needed),
        # with a rounding-level imaginary part of ~1e-6 that .real drops.
        "near-singular, N=40, D=64": (correlated(40, 64, 1.0, 0.0), correlated(40, 64, 1.2, 0.5)),
    }
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (a, b) in cases.items():
            fa, fb = os.path.join(tmp, "a.bin"), os.path.join(tmp, "b.bin")
            write_features(fa, a)
            write_features(fb, b)
            ours = float(run(tool, "fid", fa, fb, str(a.shape[1])))
            reference = pytorch_fid_distance(a, b)
            relative = abs(ours - reference) / abs(reference)
            worst = max(worst, relative)
            print(f"{name}: difftrain {ours:.17g}, scipy {reference:.17g}, relative difference {relative:.2e}")
            assert relative < RELATIVE_TOLERANCE, f"{name}: relative difference {relative} >= {RELATIVE_TOLERANCE}"

        # A set against itself: 0 up to rounding of the traces.
        a = cases["two Gaussians, N=500, D=64"][0]
        write_features(fa, a)
        self_fid = float(run(tool, "fid", fa, fa, str(a.shape[1])))
        scale = 2 * np.trace(np.cov(a, rowvar=False))
        print(f"set against itself: {self_fid:.3e} (traces {scale:.3f})")
        assert abs(self_fid) < 1e-9 * scale, self_fid

        # The stats file as h5py sees it, against numpy's mean and covariance.
        import h5py

        stats = os.path.join(tmp, "stats.h5")
        run(tool, "save", fa, str(a.shape[1]), stats)
        with h5py.File(stats, "r") as f:
            assert f.attrs["format"] == "difftrain-fid-stats", f.attrs["format"]
            assert int(f.attrs["format_version"]) == 1
            assert int(f.attrs["count"]) == a.shape[0]
            assert f["mean"].dtype == np.float64 and f["covariance"].shape == (64, 64)
            np.testing.assert_allclose(f["mean"][()], a.mean(axis=0), rtol=0, atol=1e-13)
            np.testing.assert_allclose(f["covariance"][()], np.cov(a, rowvar=False), rtol=0, atol=1e-13)
        print("stats file: mean and covariance equal numpy's (atol 1e-13)")
    print(f"worst relative difference from scipy: {worst:.2e} (tolerance {RELATIVE_TOLERANCE:g})")


def check_export(tool: str, export_script: str) -> None:
    try:
        import torch
        import torchvision  # noqa: F401  (the export script needs it)
        from torchvision.models import inception as tv_inception
    except ImportError as e:
        print(f"SKIPPED: {e}; install python3-torchvision (launch/install_deps.sh --tests)")
        sys.exit(SKIP)
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("fid", "torchvision"):
            model = os.path.join(tmp, f"inception-{variant}.pt")
            run(sys.executable, export_script, "--random-init", "--variant", variant, "--output", model)
            out = run(tool, "extract", model, "2", "32", "32").split()
            assert out == ["2", "2048", "finite"], f"{variant}: C++ FeatureExtractor gave {out}"
            print(f"{variant}: C++ FeatureExtractor gives (2, 2048) for 2 images of 32x32")

        # --weights with a torchvision-layout state dict: the export must equal torchvision's own
        # Inception3 (transform_input=True) on ImageNet-normalised input, taken at the average pool.
        torch.manual_seed(1)
        reference = tv_inception.Inception3(num_classes=1000, aux_logits=True, transform_input=True,
                                            init_weights=True)
        # Running statistics from one batch, so activations stay of order one (with the default
        # ones they grow to ~1e11 through 90 layers and the comparison would say little).
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0
        with torch.no_grad():
            reference.train()(torch.randn(4, 3, 299, 299))
        reference.eval()
        weights = os.path.join(tmp, "tv-weights.pth")
        torch.save(reference.state_dict(), weights)
        model = os.path.join(tmp, "inception-from-weights.pt")
        run(sys.executable, export_script, "--weights", weights, "--output", model)
        pooled = {}
        reference.avgpool.register_forward_hook(lambda m, i, o: pooled.setdefault("x", o.flatten(1)))
        images = torch.rand(3, 3, 40, 48)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            resized = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
            reference((resized - mean) / std)
            exported = torch.jit.load(model)(images)
        scale = pooled["x"].abs().max().item()
        relative = (exported - pooled["x"]).abs().max().item() / scale
        print(f"--weights (torchvision layout): max |exported - torchvision avgpool| = {relative:.2e} "
              f"of max |features| = {scale:.3g}")
        assert relative < 1e-5, relative


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "scipy":
        check_scipy(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "export":
        check_export(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
    print("ok")


if __name__ == "__main__":
    main()
