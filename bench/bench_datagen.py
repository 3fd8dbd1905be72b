"""Benchmark: datagen's batched synthesis vs a naive loop written like the reference.

Both use the same model, class, acceptance rule and step budget. The naive loop optimises one
image at a time, blurs through a NumPy/SciPy round trip and runs a separate acceptance forward;
the batched path optimises --batch_size images together, each stopping on its own.

    python bench/bench_datagen.py                                   # demo model, CPU
    python bench/bench_datagen.py --arch RN50 --pretrained none --n 8 --max_steps 5 --high_prob 0.5
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import PRECISIONS, atomic_write_json, default_data_root, default_device, seed_everything  # noqa: E402
from datagen import DatagenConfig, synthesise  # noqa: E402
from datasets import build_dataset  # noqa: E402
from models import load_model  # noqa: E402
from synthetic import clip_norm, model_view, pixel_bounds  # noqa: E402
from zeroshot import classifier_weights, logits  # noqa: E402


def naive_synthesise(model, weights, target: int, size: int, cfg: DatagenConfig, device: str) -> tuple[int, int]:
    """One image at a time, as the reference does; returns (accepted images, optimisation steps)."""
    from scipy.ndimage import gaussian_filter1d
    mean, std = clip_norm(model)
    w = weights[:, target]
    scale = model.logit_scale.exp().detach()
    threshold, accepted, steps, failed = cfg.high_prob, 0, 0, 0
    while accepted < cfg.n_generated and failed < cfg.max_failed:
        x = torch.randn(1, 3, size, size, device=device)
        for t in range(cfg.max_steps):
            ox, oy = (int(v) for v in torch.randint(0, cfg.max_jitter + 1, (2,)))
            x = torch.roll(x, (ox, oy), dims=(2, 3)).detach().requires_grad_(True)
            obj = scale * F.normalize(model.encode_image(model_view(x, mean, std)), dim=-1) @ w \
                - cfg.l2_reg * x.norm()
            obj.sum().backward()
            x = x.detach() + cfg.lr * x.grad / x.grad.norm()
            x = torch.roll(x, (-ox, -oy), dims=(2, 3))
            lo, hi = pixel_bounds(x)
            for c in range(3):  # channel by channel, as the reference clamps
                x[:, c] = x[:, c].clamp(lo[0, c, 0, 0].item(), hi[0, c, 0, 0].item())
            if t % cfg.blur_every == 0:  # SciPy blur: a round trip through NumPy
                a = gaussian_filter1d(x.cpu().numpy(), cfg.blur_sigma, axis=2)
                x = torch.from_numpy(gaussian_filter1d(a, cfg.blur_sigma, axis=3)).to(device)
            steps += 1
            with torch.no_grad():  # a second forward: the paper's acceptance, top-1 and probability
                z = logits(model, model_view(x, mean, std), weights)
            if z.argmax().item() == target and z.softmax(-1)[0, target].item() > threshold:
                accepted += 1
                break
        else:
            failed += 1
            threshold = max(cfg.min_prob, threshold - cfg.sub_prob)
    return accepted, steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="demo")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--dataset", default="Digits")
    p.add_argument("--classname", default="three")
    p.add_argument("--n", type=int, default=32, help="accepted images to make with each method")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_steps", type=int, default=3000)
    p.add_argument("--high_prob", type=float, default=0.8)
    p.add_argument("--device", default=default_device())
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="the batched path's ascent steps")
    p.add_argument("--out", default="bench/out/datagen.json")
    args = p.parse_args()
    seed_everything(0)
    lm = load_model(args.arch, args.pretrained, args.device)
    ds = build_dataset(args.dataset, default_data_root())  # only its class names matter here
    w = classifier_weights(lm, ds, args.device)
    target = ds.classnames.index(args.classname)
    size = lm.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    for q in lm.model.parameters():
        q.requires_grad_(False)
    cfg = DatagenConfig(n_generated=args.n, batch_size=args.batch_size, max_steps=args.max_steps,
                        high_prob=args.high_prob, max_failed=args.n)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    n_naive, steps_naive = naive_synthesise(lm.model, w, target, size, cfg, args.device)
    sync()
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = synthesise(lm.model, w, target, size, cfg, torch.Generator().manual_seed(0), args.device,
                     arithmetic=args.precision)
    sync()
    t_batch = time.perf_counter() - t0
    image_steps = res.image_steps
    row = {"arch": lm.tag, "device": args.device, "precision": args.precision, "image_size": size, "n": args.n, "batch_size": args.batch_size,
           "naive_images": n_naive, "naive_s": round(t_naive, 3), "naive_img_per_s": n_naive / t_naive,
           "naive_image_steps_per_s": steps_naive / t_naive,
           "batched_images": len(res.images), "batched_s": round(t_batch, 3),
           "batched_img_per_s": len(res.images) / t_batch, "batched_image_steps_per_s": image_steps / t_batch}
    row["ratio_img_per_s"] = row["batched_img_per_s"] / row["naive_img_per_s"] if n_naive else float("nan")
    row["ratio_image_steps_per_s"] = row["batched_image_steps_per_s"] / row["naive_image_steps_per_s"]
    print(f"{lm.tag} on {args.device} ({args.precision}), {size}px: naive {n_naive} images in {t_naive:.2f} s "
          f"({row['naive_img_per_s']:.2f} img/s), batched {len(res.images)} images in {t_batch:.2f} s "
          f"({row['batched_img_per_s']:.2f} img/s): ratio {row['ratio_img_per_s']:.1f}x accepted images/s, "
          f"{row['ratio_image_steps_per_s']:.1f}x image-steps/s")
    atomic_write_json(args.out, row)


if __name__ == "__main__":
    main()
