"""The table of launch/latent_fashion_mnist_job.sh: pixel against latent diffusion on Fashion-MNIST at
equal wall time. Usage: latent_report.py OUT_DIR PIXEL_STEPS LATENT_STEPS BUDGET_SECONDS > report.md;
also writes OUT_DIR/report.json and OUT_DIR/comparison.png (per class: the first samples of the pixel
model, then of the latent model, same prompts and seeds)."""
import json
import pathlib
import re
import sys


def number_after(pattern, text):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def run_stats(run):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"images_per_second"' in l]
    ips = [r["images_per_second"] for r in rows]
    return {"steps": rows[-1]["step"], "images_seen": rows[-1]["images_seen"], "final_loss": rows[-1]["loss"],
            "train_images_per_second_median": sorted(ips)[len(ips) // 2]}


def comparison_grid(out, per_class=6, scale=2):
    from PIL import Image
    rows = {}
    for kind in ("pixel", "latent"):
        for line in (out / f"{kind}-samples" / "manifest.jsonl").read_text().splitlines():
            entry = json.loads(line)
            files = rows.setdefault(entry["prompt"], {}).setdefault(kind, [])
            if len(files) < per_class:
                files.append(out / f"{kind}-samples" / entry["file"])
    prompts = sorted(rows)
    size = Image.open(rows[prompts[0]]["pixel"][0]).size[0] * scale
    gap = size // 2
    grid = Image.new("L", (2 * per_class * size + gap, len(prompts) * size), 255)
    for r, prompt in enumerate(prompts):
        for k, kind in enumerate(("pixel", "latent")):
            for c, path in enumerate(rows[prompt][kind]):
                image = Image.open(path).convert("L").resize((size, size), Image.NEAREST)
                grid.paste(image, (k * (per_class * size + gap) + c * size, r * size))
    grid.save(out / "comparison.png")


def main():
    out, pixel_steps, latent_steps, budget = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    times = dict(line.split() for line in (out / "times.txt").read_text().splitlines() if line.strip())
    times = {k: float(v) for k, v in times.items()}
    ae = (out / "autoencoder-eval.txt").read_text()
    report = {"budget_seconds": budget,
              "autoencoder": {"psnr_db": number_after(r"PSNR ([0-9.]+) dB", ae),
                              "images_per_second": number_after(r"([0-9.]+) images/s", ae),
                              "train_seconds": times.get("autoencoder_train_seconds"),
                              "encode_images_seconds": times.get("encode_images_seconds")}}
    for kind in ("pixel", "latent"):
        stats = run_stats(out / kind)
        samples = len((out / f"{kind}-samples" / "manifest.jsonl").read_text().splitlines())
        match = json.loads((out / f"{kind}-class-match.json").read_text())["groups"][0]
        stats.update({"train_seconds": times[f"{kind}_train_seconds"],
                      "fid": number_after(r"FID ([0-9.]+)", (out / f"{kind}-fid.txt").read_text()),
                      "samples": samples,
                      "sample_seconds": times[f"{kind}_sample_seconds"],
                      "sample_images_per_second": samples / times[f"{kind}_sample_seconds"],
                      "class_agreement": match["accuracy"]})
        report[kind] = stats
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    comparison_grid(out)
    p, l, a = report["pixel"], report["latent"], report["autoencoder"]
    print(f"Autoencoder: reconstruction PSNR {a['psnr_db']:.2f} dB on the test split, trained in "
          f"{a['train_seconds']:.0f} s; latents of the training split in {a['encode_images_seconds']:.0f} s.\n")
    print("| | pixel (32×32×1) | latent (8×8×4) | latent / pixel |")
    print("|---|---|---|---|")
    rows = [("training wall time (s)", "train_seconds", "{:.0f}"), ("optimizer steps", "steps", "{}"),
            ("images seen", "images_seen", "{}"), ("training images/s (median window)", "train_images_per_second_median", "{:.1f}"),
            ("final training loss", "final_loss", "{:.4f}"), (f"FID vs the test split (N = {p['samples']})", "fid", "{:.2f}"),
            ("class agreement, w = 3", "class_agreement", "{:.3f}"), ("sampling images/s (DDIM 25, w = 3, bf16)", "sample_images_per_second", "{:.1f}")]
    for name, key, fmt in rows:
        ratio = l[key] / p[key] if isinstance(p[key], (int, float)) and p[key] else float("nan")
        print(f"| {name} | {fmt.format(p[key])} | {fmt.format(l[key])} | {ratio:.2f}× |")


if __name__ == "__main__":
    main()
