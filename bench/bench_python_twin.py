#!/usr/bin/python3
"""difftrain against its PyTorch eager twin (bench/twin/, issue 12), training and sampling. Training: the same model, the same
weights, the same step (forward, MSE on eps, backward, global-norm clipping, AdamW with the warm-up +
cosine learning rate, EMA), the same batch size and torch thread count.

First the twin is checked equal to difftrain on the benchmark's own model (max |output difference| on
random inputs, after loading `difftrain export`'s weights); then A B A B ... (--pairs): `difftrain train`
(one rank, monitoring off) and the twin's loop in a Python process of its own, each for --steps steps.
The rate is the steady state: difftrain's from metrics.jsonl over the second half of the steps, the
twin's over the same steps; peak RSS is each child's ru_maxrss (os.wait4). The load average is recorded
before every run. The twin uses what a Python user gets without effort: PyTorch's default AdamW,
clip_grad_norm_, batch-wise torch.randint/randn draws, the whole training set in memory as a uint8
tensor (difftrain reads each sample from HDF5 on its loader thread).
Sampling (--sample-images N > 0): `difftrain sample` and the twin's loop (bench/twin/sampling.py), DDIM 25
steps, w = 3 (batched guidance), one batch of N images, the same prompts and seeds, interleaved. difftrain's
time runs from its "sampling ..." log line (model loaded) to the process's exit (PNG writing included); the
twin's covers its sampling loop only (no PNGs), which favours the twin slightly.
--variant "NAME:ENV=VALUE ..." (repeatable) adds a difftrain run with those environment variables to every
pair, e.g. "levers off:DIFFTRAIN_MALLOC=system DIFFTRAIN_ONEDNN_MATMUL=0", so each lever's before/after is
measured in the same interleaved run (docs/BENCHMARKS.md); BINARY=path runs another build (e.g. an older commit's).
Usage: bench/bench_python_twin.py [--binary build/cli/difftrain] [--pairs 3] [--steps 60]
       [--precision fp32|bf16] [--set key=value ...] (e.g. --set data.image_size=32 --set model.base_channels=64)
       [--sample-images 64] [--variant "NAME:ENV=VALUE ..."]
"""
import argparse
import copy
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def run_child(args, log, env=None):
    """(returncode, peak RSS in MB) of a child process."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024.0


def difftrain_train(binary, work, config_args, steps, index, env=None):
    binary = (env or {}).get("BINARY", binary)
    run_dir = work / f"difftrain-{index}"
    shutil.rmtree(run_dir, ignore_errors=True)
    args = [binary, "train", *config_args, f"run.dir={run_dir}", f"train.max_steps={steps}",
            f"train.log_every={steps // 2}", "checkpoint.every=1000000"]
    code, rss = run_child(args, work / f"difftrain-{index}.log", env)
    if code != 0:
        raise SystemExit(f"difftrain train failed ({code}): see {work / f'difftrain-{index}.log'}")
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if '"images_per_second"' in l]
    return rows[-1]["images_per_second"], rss


def twin_train(work, steps, index, precision):
    out = work / f"twin-{index}.json"
    code, rss = run_child([sys.executable, __file__, "--twin-child", str(work), str(steps), precision, str(out)],
                          work / f"twin-{index}.log")
    if code != 0:
        raise SystemExit(f"twin failed ({code}): see {work / f'twin-{index}.log'}")
    return json.loads(out.read_text())["images_per_second"], rss


def difftrain_sample(binary, work, images, index, threads, precision, env=None):
    binary = (env or {}).get("BINARY", binary)
    from datetime import datetime
    args = [binary, "sample", "--checkpoint", str(work / "init"), "--out", str(work / f"samples-{index}"), "--sampler",
            "ddim", "--steps", "25", "--eta", "0", "--spacing", "leading", "--clip", "off", "--guidance", "3",
            "--seed", "0", "--images-per-prompt", str(images), "--batch-size", str(images), "--prompt", "a red circle",
            "--threads", str(threads), "--precision", precision]
    log = work / f"sample-{index}.log"
    shutil.rmtree(work / f"samples-{index}", ignore_errors=True)
    code, rss = run_child(args, log, env)
    end = time.time()
    if code != 0:
        raise SystemExit(f"difftrain sample failed ({code}): see {log}")
    line = next(l for l in log.read_text().splitlines() if "] sampling " in l)
    start = datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    return images / (end - start), rss


def twin_sample(work, images, index, precision):
    out = work / f"twin-sample-{index}.json"
    code, rss = run_child([sys.executable, __file__, "--twin-sample-child", str(work), str(images), precision, str(out)],
                          work / f"twin-sample-{index}.log")
    if code != 0:
        raise SystemExit(f"twin sampling failed ({code}): see {work / f'twin-sample-{index}.log'}")
    return json.loads(out.read_text())["images_per_second"], rss


def twin_sample_child(work, images, precision, out):
    import torch
    import yaml
    from twin import sampling, unet

    config = yaml.safe_load((work / "config.yaml").read_text())
    torch.set_num_threads(config["train"]["threads"])
    exported = torch.jit.load(str(work / "model.pt"))
    # The checkpoint's EMA weights, as `difftrain sample` uses them.
    model = unet.load_exported(unet.build_from_config(config), exported).eval()
    d = config["data"]
    tokens = sampling.byte_tokens(["a red circle"] * images, config["model"]["max_tokens"])
    start = time.perf_counter()
    x = sampling.ddim_sample(model, tokens, list(range(images)), (d["channels"], d["image_size"], d["image_size"]),
                             exported.alphas_cumprod, 25, 3.0, precision)
    sampling.to_pixels(x)
    out.write_text(json.dumps({"images_per_second": images / (time.perf_counter() - start)}))


def twin_child(work, steps, precision, out):
    """The twin's training loop: runs in its own process (its RSS is measured alone)."""
    import h5py
    import numpy as np
    import torch
    import yaml
    from twin import sampling, unet

    config = yaml.safe_load((work / "config.yaml").read_text())
    torch.set_num_threads(config["train"]["threads"])
    torch.manual_seed(0)
    images, captions = [], []
    for shard in sorted(pathlib.Path(config["data"]["dir"]).glob("*.h5")):
        with h5py.File(shard, "r") as f:
            images.append(f["images"][...])
            captions += [c.decode() if isinstance(c, bytes) else c for c in f["captions"][...]]
    images = torch.from_numpy(np.concatenate(images))  # (N, H, W, C) uint8
    tokens_all = sampling.byte_tokens(captions, config["model"]["max_tokens"])
    exported = torch.jit.load(str(work / "model.pt"))
    model = unet.load_exported(unet.build_from_config(config), exported).train()
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    t_cfg = config["train"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=t_cfg["lr"], betas=(t_cfg["adam_beta1"], t_cfg["adam_beta2"]),
                                  weight_decay=t_cfg["weight_decay"])
    alphas = exported.alphas_cumprod.float()
    T, B = alphas.shape[0], t_cfg["batch_size"]
    params = list(model.parameters())

    def lr_at(step):
        warmup, total, peak, floor = t_cfg["warmup_steps"], steps, t_cfg["lr"], t_cfg["min_lr_ratio"]
        if warmup > 0 and step < warmup:
            return peak * (step + 1) / warmup
        progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
        return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

    start = None
    for step in range(steps):
        if step == steps // 2:
            start = time.perf_counter()
        index = torch.randint(0, images.shape[0], (B,))
        x0 = images[index].permute(0, 3, 1, 2).float() / 127.5 - 1.0
        tokens = tokens_all[index].masked_fill((torch.rand(B) < t_cfg["cond_dropout"]).unsqueeze(1), 0)
        t = torch.randint(0, T, (B,))
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = model(x_t, t, tokens)
        loss = torch.nn.functional.mse_loss(output.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, t_cfg["grad_clip"])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.step()
        decay = min(t_cfg["ema_decay"], (1 + step + 1) / (10 + step + 1))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), params):
                e.lerp_(p, 1 - decay)
        loss.item()
    elapsed = time.perf_counter() - start
    out.write_text(json.dumps({"images_per_second": (steps - steps // 2) * B / elapsed}))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--twin-child":
        twin_child(pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], pathlib.Path(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--twin-sample-child":
        twin_sample_child(pathlib.Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], pathlib.Path(sys.argv[5]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=str(ROOT / "build" / "cli" / "difftrain"))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="a config override key=value")
    parser.add_argument("--sample-images", type=int, default=0, help="also time sampling this many images (0: off)")
    parser.add_argument("--variant", action="append", default=[],
                        help='another difftrain run per pair: "NAME:ENV=VALUE ..." (e.g. levers switched off)')
    a = parser.parse_args()
    variants = [("difftrain", {})]
    for v in a.variant:
        name, _, assignments = v.partition(":")
        variants.append((name, dict(kv.split("=", 1) for kv in assignments.split())))
    import torch
    import yaml
    from twin import unet

    work = pathlib.Path(tempfile.mkdtemp(prefix="difftrain-twin-bench-"))
    size = next((int(s.split("=")[1]) for s in a.set if s.startswith("data.image_size=")), 16)
    subprocess.run([a.binary, "make-data", "--out", str(work / "data"), "--count", "2048", "--image-size",
                    str(size), "--shard-size", "1024"], check=True, capture_output=True)
    config_args = ["--config", str(ROOT / "configs" / "default.yaml"), f"data.dir={work / 'data'}",
                   "data.synthetic=false", "monitoring.enabled=false", f"train.precision={a.precision}",
                   f"train.threads={a.threads}", *a.set]
    # The benchmark's own model, its weights exported for the twin, and the equality check first.
    subprocess.run([a.binary, "train", *config_args, f"run.dir={work / 'init'}", "train.max_steps=1",
                    "checkpoint.every=1"], check=True, capture_output=True)
    subprocess.run([a.binary, "export", "--checkpoint", str(work / "init"), "--out", str(work / "model.pt")],
                   check=True, capture_output=True)
    saved = (work / "init" / "checkpoints" / "step-000000001" / "config.yaml").read_text()
    (work / "config.yaml").write_text(saved)
    config = yaml.safe_load(saved)
    exported = torch.jit.load(str(work / "model.pt"))
    twin = unet.load_exported(unet.build_from_config(config), exported).eval()
    g = torch.Generator().manual_seed(0)
    C, H = config["data"]["channels"], config["data"]["image_size"]
    x = torch.randn(4, C, H, H, generator=g)
    t = torch.randint(0, config["diffusion"]["timesteps"], (4,), generator=g)
    tokens = torch.randint(0, 257, (4, config["model"]["max_tokens"]), generator=g)
    with torch.no_grad():
        diff = (twin(x, t, tokens) - exported(x, t, tokens)).abs().max().item()
    print(f"twin vs difftrain export: max |output difference| {diff:.3g} "
          f"({sum(p.numel() for p in twin.parameters())} parameters)")
    if diff > 1e-4:
        raise SystemExit("the twin does not compute difftrain's network: no timing")

    def report(kind, rates, twin_rates):
        for name, _ in variants:
            r = [c / p for c, p in zip(rates[name], twin_rates)]
            print(f"{kind}: {name} / twin images/s per pair {', '.join(f'{x:.3f}' for x in r)}, "
                  f"median {statistics.median(r):.3f} over {a.pairs} pairs")
        for name, _ in variants[1:]:
            r = [c / p for c, p in zip(rates["difftrain"], rates[name])]
            print(f"{kind}: difftrain / {name} per pair {', '.join(f'{x:.3f}' for x in r)}, "
                  f"median {statistics.median(r):.3f}")

    rates, twin_rates = {name: [] for name, _ in variants}, []
    for i in range(a.pairs):
        for name, env in variants:
            load = os.getloadavg()[0]
            ips, rss = difftrain_train(a.binary, work, config_args, a.steps, i, env)
            rates[name].append(ips)
            print(f"pair {i + 1}: {name} {ips:.1f} images/s (peak RSS {rss:.0f} MB, load {load:.2f})")
        load = os.getloadavg()[0]
        ips, rss = twin_train(work, a.steps, i, a.precision)
        twin_rates.append(ips)
        print(f"pair {i + 1}: twin {ips:.1f} images/s (peak RSS {rss:.0f} MB, load {load:.2f})")
    report(f"training, {a.precision}, {a.threads} thread(s), overrides {a.set or 'none'}", rates, twin_rates)
    if a.sample_images > 0:
        rates, twin_rates = {name: [] for name, _ in variants}, []
        for i in range(a.pairs):
            for name, env in variants:
                load = os.getloadavg()[0]
                ips, rss = difftrain_sample(a.binary, work, a.sample_images, i, a.threads, a.precision, env)
                rates[name].append(ips)
                print(f"sampling pair {i + 1}: {name} {ips:.2f} images/s (peak RSS {rss:.0f} MB, load {load:.2f})")
            load = os.getloadavg()[0]
            ips, rss = twin_sample(work, a.sample_images, i, a.precision)
            twin_rates.append(ips)
            print(f"sampling pair {i + 1}: twin {ips:.2f} images/s (peak RSS {rss:.0f} MB, load {load:.2f})")
        report(f"sampling DDIM 25, w = 3, {a.sample_images} images, {a.precision}", rates, twin_rates)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
