"""datagen: synthesise images of a forget class from the model itself (SPEC §1).

Gradient ascent from noise on the class's zero-shot score, with jitter, clamping and blur as
regularisers. A whole batch of images is optimised at once; each image stops on its own when
the image *as the trainer will load it* is classified as the class with probability above the
threshold, and its slot restarts from fresh noise. After an attempt fails (max_steps without
acceptance) the threshold drops by sub_prob, never below min_prob.

    python datagen.py --backbone_arch demo --run_ds Digits,Shapes
    python datagen.py --backbone_arch RN50 --run_ds StanfordDogs --forget_labels Pekinese --high_prob 0.98
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur
from tqdm import tqdm

from common import UserError, add_common_args, check_all, check_device, check_writable, class_seed, run_cli
from datasets import build_datasets
from forget_cls import datagen_setting, resolve_targets
from models import LoadedModel, check_model, load_model
from synthetic import clip_norm, model_view, pixel_bounds, read_synthetic, save_synthetic, synthetic_path
from zeroshot import EVAL_SCALE, classifier_weights, run_model_key
import beyond  # options beyond the paper (issue 8); all off by default


@dataclass
class DatagenConfig:
    """SPEC §1 defaults; every field is a command-line option of the same name."""
    n_generated: int = 64  # accepted images per class
    high_prob: float = 0.8  # acceptance: softmax probability of the class must exceed this
    sub_prob: float = 0.025  # threshold drop after each failed attempt
    min_prob: float = 0.45  # ... never below this
    max_steps: int = 3000  # steps before an attempt is given up
    lr: float = 25.0  # x += lr * g / ||g||
    l2_reg: float = 1e-3  # objective: scale * cos - l2_reg * ||x||
    max_jitter: int = 16  # random roll of up to this many pixels in x and y
    blur_every: int = 10  # Gaussian blur every this many steps ...
    blur_sigma: float = 0.5  # ... with this sigma along H and W
    batch_size: int = 64  # images optimised in parallel
    max_failed: int = 200  # give up on a class after this many failed attempts (keeps what it has)
    accept_margin: float = 0.0  # beyond the paper (beyond.py): also need this logit margin (x100); 0 = off
    sub_margin: float = 0.5  # beyond the paper: margin drop after each failed attempt (never below 0)
    augment_accept: int = 0  # beyond the paper: also hold under this many random augmentations; 0 = off


@dataclass
class SynthResult:
    images: torch.Tensor  # (N, 3, H, W), ImageNet-normalised
    probs: torch.Tensor  # class probability of each image at acceptance
    steps: torch.Tensor  # steps each image took
    thresholds: torch.Tensor  # threshold in force when each image was accepted
    margins: torch.Tensor  # accept_margin in force when each image was accepted (beyond the paper)
    failed: int  # failed attempts
    complete: bool  # n_generated images were accepted
    total_steps: int  # optimisation steps of the batch
    image_steps: int  # optimisation steps summed over the images of the batch


def ascent_step(model, x: torch.Tensor, w_target: torch.Tensor, shift: tuple[int, int],
                cfg: DatagenConfig, mean, std, scale: torch.Tensor) -> torch.Tensor:
    """One regularised gradient-ascent step on a batch (jitter, normalised step, unjitter, clamp).

    Every image's update depends only on that image (the model is in eval mode), so a batch
    computes what the same images would one at a time.
    """
    x = torch.roll(x, shifts=shift, dims=(2, 3)).requires_grad_(True)
    feats = F.normalize(model.encode_image(model_view(x, mean, std)), dim=-1)
    objective = scale * feats @ w_target - cfg.l2_reg * x.flatten(1).norm(dim=1)
    (g,) = torch.autograd.grad(objective.sum(), x)
    x = x.detach() + cfg.lr * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(2, 3))
    lo, hi = pixel_bounds(x)
    return torch.maximum(torch.minimum(x, hi), lo)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = 2 * int(4 * sigma + 0.5) + 1  # the kernel a 4-sigma truncation gives (5 for sigma 0.5)
    return gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


@torch.no_grad()
def class_probability(model, x: torch.Tensor, weights: torch.Tensor, target: int, mean, std) -> torch.Tensor:
    """Zero-shot softmax probability of `target` for images as the trainer will load them."""
    feats = F.normalize(model.encode_image(model_view(x, mean, std)), dim=-1)
    return (EVAL_SCALE * feats @ weights).softmax(-1)[:, target]


def synthesise(model: torch.nn.Module, weights: torch.Tensor, target: int, image_size: int,
               cfg: DatagenConfig, generator: torch.Generator, device: str,
               progress: tqdm | None = None) -> SynthResult:
    """Generate up to cfg.n_generated accepted images of class `target` (see module docstring)."""
    model.eval()
    mean, std = clip_norm(model)
    w_target = weights[:, target]
    scale = model.logit_scale.exp().detach()
    b = min(cfg.batch_size, cfg.n_generated)

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, 3, image_size, image_size, generator=generator).to(device)

    x, steps = noise(b), torch.zeros(b, dtype=torch.long, device=device)
    threshold, margin, failed, total, image_steps = cfg.high_prob, cfg.accept_margin, 0, 0, 0
    kept: list[tuple] = []  # (image, prob, steps, threshold, margin)
    for p in model.parameters():
        p.requires_grad_(False)  # only the images get gradients
    try:
        while len(kept) < cfg.n_generated and failed < cfg.max_failed:
            shift = tuple(torch.randint(0, cfg.max_jitter + 1, (2,), generator=generator).tolist())
            blur_now = steps % cfg.blur_every == 0  # steps taken before this one
            x = ascent_step(model, x, w_target, shift, cfg, mean, std, scale)
            if blur_now.any():
                x = torch.where(blur_now.view(-1, 1, 1, 1), blur(x, cfg.blur_sigma), x)
            steps += 1
            total += 1
            image_steps += len(x)
            prob = class_probability(model, x, weights, target, mean, std)
            accepted = prob > threshold
            if margin > 0 or cfg.augment_accept > 0:
                accepted = beyond.accept_mask(model, model_view(x, mean, std), weights, target, margin,
                                              cfg.augment_accept, generator, accepted)
            for i in accepted.nonzero().flatten().tolist():  # clone: the slot is overwritten below
                kept.append((x[i].detach().clone().cpu(), prob[i].item(), steps[i].item(), threshold, margin))
            gave_up = ~accepted & (steps >= cfg.max_steps)
            for _ in range(int(gave_up.sum())):
                failed += 1
                threshold = max(cfg.min_prob, threshold - cfg.sub_prob)
                margin = max(0.0, margin - cfg.sub_margin)
            done = accepted | gave_up
            if done.any():  # fresh noise for finished slots, but only as many as can still be kept:
                # the last images of a class run in a shrinking batch, no step is spent on surplus images
                n_new = max(0, min(int(done.sum()), cfg.n_generated - len(kept) - int((~done).sum())))
                x = torch.cat([x[~done], noise(n_new)])
                steps = torch.cat([steps[~done], steps.new_zeros(n_new)])
            if progress is not None:
                progress.n = min(len(kept), cfg.n_generated)
                progress.set_postfix(threshold=f"{threshold:.3f}", failed=failed, refresh=False)
                progress.refresh()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    kept = kept[:cfg.n_generated]
    empty = torch.zeros(0, 3, image_size, image_size)
    return SynthResult(
        images=torch.stack([k[0] for k in kept]) if kept else empty,
        probs=torch.tensor([k[1] for k in kept]), steps=torch.tensor([k[2] for k in kept], dtype=torch.long),
        thresholds=torch.tensor([k[3] for k in kept]), margins=torch.tensor([k[4] for k in kept]), failed=failed,
        complete=len(kept) >= cfg.n_generated, total_steps=total, image_steps=image_steps)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Synthesise forget-class images from a CLIP model (SPEC §1).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument("--out_dir", default=None, help="default: generated_<ARCH>")
    p.add_argument("--overwrite", action="store_true", help="regenerate classes that already have a file")
    p.add_argument("--paper_settings", type=int, default=0,
                   help="1: use the paper's per-class high_prob/sub_prob from forget_cls.py where it has them")
    for f in fields(DatagenConfig):
        p.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=beyond.DATAGEN_HELP.get(f.name))
    beyond.add_datagen_args(p)
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> tuple[dict, list]:
    """Check everything that can be checked before loading a model; report all problems at once."""
    problems = []
    if not 0 < args.high_prob < 1:
        problems.append(f"--high_prob must be in (0, 1), got {args.high_prob}")
    if not 0 <= args.sub_prob < 1:
        problems.append(f"--sub_prob must be in [0, 1), got {args.sub_prob}")
    if not 0 < args.min_prob < 1:
        problems.append(f"--min_prob must be in (0, 1), got {args.min_prob}")
    for name in ("n_generated", "batch_size", "max_steps", "blur_every", "max_failed"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.retain_per_class is not None and args.method == "faithful":
        problems.append("--retain_per_class needs --method improved")
    elif args.retain_per_class is not None and args.retain_per_class < 0:
        problems.append(f"--retain_per_class must be at least 0, got {args.retain_per_class}")
    for name in ("lr", "blur_sigma"):
        if not getattr(args, name) > 0:
            problems.append(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("l2_reg", "max_jitter", "sub_margin"):
        if getattr(args, name) < 0:
            problems.append(f"--{name} must be at least 0, got {getattr(args, name)}")
    tag, model_problems = check_model(args.backbone_arch, args.pretrained)
    problems += model_problems
    model_ok = not model_problems  # the model's name and weights are valid
    datasets, ds_problems = build_datasets(args.run_ds, args.data_root)
    problems += ds_problems
    targets, t_problems = resolve_targets(datasets, args.forget_labels, args.run_ds) if args.forget_labels != "all" \
        else ([(n, c) for n, ds in datasets.items() for c in ds.classnames], [])  # all: e.g. retain sets
    problems += t_problems
    args.out_dir = args.out_dir or f"generated_{tag}"
    problems += check_writable(args.out_dir) + check_device(args.device)
    if model_ok and not args.overwrite:  # existing files must be this model's
        key = run_model_key(args.backbone_arch, args.pretrained, args.seed)
        for ds_name, classname in targets:
            path = synthetic_path(args.out_dir, ds_name, classname)
            try:
                meta = read_synthetic(path)["meta"] if path.exists() else {"model_key": key}
            except UserError as e:
                problems.append(f"{e} (or pass --overwrite)")
                continue
            if meta.get("model_key") != key:
                problems.append(f"{path} exists and was made by model '{meta.get('model_key')}', not '{key}': "
                                "use another --out_dir, or --overwrite to replace it")
    check_all(problems)
    return datasets, targets


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.method != "faithful":  # beyond the paper: several plain runs
        return beyond.datagen_method(main, validate, list(sys.argv[1:] if argv is None else argv), args)
    datasets, targets = validate(args)
    lm: LoadedModel = load_model(args.backbone_arch, args.pretrained, args.device, args.data_root)
    key, size = run_model_key(args.backbone_arch, args.pretrained, args.seed), lm.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    summaries, weights_cache = [], {}
    for ds_name, classname in targets:
        ds = datasets[ds_name]
        path = synthetic_path(args.out_dir, ds_name, classname)
        if path.exists() and not args.overwrite:
            meta = read_synthetic(path)["meta"]
            if meta.get("model_key") != key:
                raise UserError(f"{path} exists and was made by model '{meta.get('model_key')}', not '{key}': "
                                "use another --out_dir, or --overwrite to replace it")
            print(f"{ds_name}/{classname}: {path} exists ({meta['n_images']} images), skipped")
            continue
        cfg = DatagenConfig(**{f.name: getattr(args, f.name) for f in fields(DatagenConfig)})
        paper = datagen_setting(lm.tag, ds_name, classname) if args.paper_settings else None
        if paper:
            cfg.high_prob, cfg.sub_prob = paper
        if ds_name not in weights_cache:
            weights_cache[ds_name] = classifier_weights(lm, ds, args.device)
        target = ds.classnames.index(classname)
        gen = torch.Generator().manual_seed(class_seed(args.seed if args.noise_seed is None else args.noise_seed,
                                                       ds_name, classname))
        start = time.time()
        with tqdm(total=cfg.n_generated, desc=f"{ds_name}/{classname}", unit="img") as bar:
            res = synthesise(lm.model, weights_cache[ds_name], target, size, cfg, gen, args.device, bar)
        secs = time.time() - start
        meta = {"model_key": key, "arch": lm.tag, "pretrained": lm.pretrained, "dataset": ds_name,
                "classname": classname, "class_index": target, "template": ds.template, "seed": args.seed,
                **({} if args.noise_seed is None else {"noise_seed": args.noise_seed}),
                "complete": res.complete, "n_requested": cfg.n_generated, "failed_attempts": res.failed,
                "final_threshold": float(res.thresholds[-1]) if len(res.thresholds) else cfg.high_prob,
                "final_accept_margin": float(res.margins[-1]) if len(res.margins) else cfg.accept_margin,
                "total_steps": res.total_steps, "seconds": round(secs, 2), "config": asdict(cfg)}
        save_synthetic(path, res.images, res.probs, res.steps, res.thresholds, meta)
        status = "complete" if res.complete else f"INCOMPLETE after {res.failed} failed attempts (kept what was accepted)"
        print(f"{ds_name}/{classname}: {len(res.images)}/{cfg.n_generated} images, {status}, "
              f"p min {res.probs.min().item() if len(res.probs) else float('nan'):.3f}, "
              f"steps median {res.steps.float().median().item() if len(res.steps) else 0:.0f}, "
              f"{secs:.1f} s -> {path}")
        summaries.append(meta)
    return summaries


if __name__ == "__main__":
    run_cli(main)
