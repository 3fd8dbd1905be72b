"""Benchmark: one unlearning step, naive (reference-style) vs train.py's, same model and data.

A step = Lipschitz loss + backward + top-k layer selection + optimiser step, and whatever the
loop needs to roll back. The naive step runs one image-tower forward per noise draw and deep-copies
the whole model and optimiser state every batch; ours runs the n_samples draws as one batched
forward and copies only the tensors a step is about to change.

    python bench/bench_train.py                                          # demo model, CPU
    python bench/bench_train.py --arch RN50 --pretrained none --batch 4 --n_samples 5 --steps 2
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import methods  # noqa: E402
from common import PRECISIONS, atomic_write_json, default_device, precision, seed_everything  # noqa: E402
from models import load_model  # noqa: E402
from models import arch_settings  # noqa: E402
from methods.base import Snapshot, freeze  # noqa: E402
from methods.lipschitz import Config as UnlearnConfig, select_top_k  # noqa: E402
from methods.pieces import lipschitz_loss  # noqa: E402


def naive_loss(model, x, tokens, std: float, n_samples: int) -> torch.Tensor:
    """The Lipschitz loss with one forward per noise draw (the reference's loop)."""
    e_t, e_x = model.encode_text(tokens), model.encode_image(x)
    total = 0
    for _ in range(n_samples):
        xn = (x + torch.randn_like(x) * std).clamp(x.min().item(), x.max().item())
        with torch.no_grad():
            e_n = model.encode_image(xn)
        dx = (x - xn).flatten(1).norm(dim=1)
        total = total + (((e_t - e_n).norm(dim=-1) + (e_x - e_n).norm(dim=-1)) / (2 * dx)).sum()
    return total / (2 * n_samples)


def naive_step(model, opt, vis, txt, x, tokens, cfg: UnlearnConfig) -> None:
    saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())  # every batch, as the reference
    naive_loss(model, x, tokens, cfg.stds[0], cfg.n_samples).backward()
    for named, k in ((vis, cfg.k_v), (txt, cfg.k_t)):  # rank, then zero the other gradients
        grads = sorted(((p.grad.abs().sum() / p.numel()).item(), n) for n, p in named if p.grad is not None)
        keep = {n for _, n in grads[-k:]}
        for n, p in named:
            if p.grad is not None and n not in keep:
                p.grad.zero_()
    opt.step()
    opt.zero_grad()
    del saved


def our_step(model, opt, vis, txt, x, tokens, cfg: UnlearnConfig, snap: Snapshot, gen) -> None:
    lipschitz_loss(model, x, tokens, cfg.stds[0], cfg.n_samples, gen, cfg.chunk).backward()
    chosen = [p for _, p in select_top_k(vis, cfg.k_v) + select_top_k(txt, cfg.k_t)]
    snap.before_change(chosen)
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn, steps: int, sync) -> float:
    fn()  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="demo")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--n_samples", type=int, default=25)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default=default_device())
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="both paths run under it (train.py --precision)")
    p.add_argument("--out", default=None, help="default: bench/out/train_<arch>.json")
    args = p.parse_args()
    seed_everything(0)
    lm = load_model(args.arch, args.pretrained, args.device)
    # the paper's settings for this backbone, as train.py builds them
    _, cfg, _ = methods.configure("lipschitz", argparse.Namespace(n_samples=args.n_samples), arch_settings(args.arch))
    size = lm.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    x = torch.randn(args.batch, 3, size, size, device=args.device)
    tokens = lm.tokenizer(["A picture of three"] * args.batch).to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    results = {}
    for name in ("naive", "ours"):
        model = copy.deepcopy(lm.model)
        vis, txt = freeze(model, cfg.frozen)
        opt = torch.optim.Adam([q for _, q in vis + txt], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
        if name == "naive":
            fn = lambda: naive_step(model, opt, vis, txt, x, tokens, cfg)  # noqa: E731
        else:
            snap, gen = Snapshot(opt), torch.Generator(device=args.device).manual_seed(0)
            fn = lambda: our_step(model, opt, vis, txt, x, tokens, cfg, snap, gen)  # noqa: E731
        with precision(args.precision, args.device):
            results[name] = timed(fn, args.steps, sync)
        del model, opt
    row = {"arch": lm.tag, "device": args.device, "precision": args.precision, "image_size": size, "batch": args.batch,
           "n_samples": args.n_samples, "naive_s_per_step": results["naive"], "ours_s_per_step": results["ours"],
           "ratio": results["naive"] / results["ours"]}
    print(f"{lm.tag} on {args.device} ({args.precision}), batch {args.batch} x {args.n_samples} draws: naive "
          f"{results['naive']:.3f} s/step, ours {results['ours']:.3f} s/step: {row['ratio']:.1f}x")
    atomic_write_json(args.out or f"bench/out/train_{lm.tag}_{args.precision}.json", row)


if __name__ == "__main__":
    main()
