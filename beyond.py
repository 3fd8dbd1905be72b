"""beyond: datagen options beside the paper's synthesis (datagen.py --accept_margin, --augment_accept,
--method improved). All off by default: the default is the paper's synthesis.

Confident synthetic images make forgetting transfer to real images (README, "Beyond the paper"):
the paper accepts an image once the class's softmax probability passes ~0.8, which at the
evaluation scale 100 is a logit margin of a few points over the next class, while real images of
the class sit ~40 points above it. `--accept_margin` keeps ascending until the margin is reached;
`--augment_accept` also asks the class to hold under random augmentations. `--method improved`
makes the forget sets, a held-out set (another noise seed) for a stop rule, and on request retain
sets of the other classes, as the train-side methods (methods/hinge.py) read them.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import torch

from synthetic import augment
from zeroshot import forget_margin, logits

DATAGEN_PRESETS: dict[str, dict] = {
    "faithful": {},
    "improved": {"accept_margin": 30.0, "max_steps": 1000, "generated_suffix": "_improved",
                 "heldout_n": 32, "heldout_seed_offset": 1000, "retain_per_class": 0, "retain_seed_offset": 2000},
}


@torch.no_grad()
def holds_under_augment(model, x_view: torch.Tensor, weights: torch.Tensor, idx: int, n: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Per image: is `idx` still the top class under each of n random augmentations (with blur)?"""
    ok = torch.ones(len(x_view), dtype=torch.bool, device=x_view.device)
    for _ in range(n):
        ok &= forget_margin(logits(model, augment(x_view, generator, blur_p=0.5), weights), idx) > 0
    return ok


@torch.no_grad()
def accept_mask(model, x_view: torch.Tensor, weights: torch.Tensor, idx: int, margin: float, n_augment: int,
                generator: torch.Generator, candidates: torch.Tensor) -> torch.Tensor:
    """datagen's extra acceptance (--accept_margin, --augment_accept) for images already past the
    probability threshold (`candidates`): logit margin >= `margin` and the class holds under
    `n_augment` augmentations."""
    out = candidates.clone()
    if not out.any():
        return out
    sel = out.nonzero().flatten()
    ok = forget_margin(logits(model, x_view[sel], weights), idx) >= margin
    if n_augment > 0:
        ok &= holds_under_augment(model, x_view[sel], weights, idx, n_augment, generator)
    out[sel] = ok
    return out


# ----------------------------------------------------------------------------- datagen.py's hooks
DATAGEN_HELP = {
    "accept_margin": "beyond the paper: also require the class's logit (x100) to beat the next class by this "
                     "margin; 0 = off (the paper). Confident images, like real ones, make forgetting transfer",
    "sub_margin": "beyond the paper: --accept_margin drops by this after each failed attempt (never below 0), "
                  "so a class whose images rarely get that confident still finishes",
    "augment_accept": "beyond the paper: also require the class to stay top under this many random "
                      "augmentations (shift, scale, blur, noise); 0 = off",
}


def add_datagen_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("beyond the paper (beyond.py; off by default)")
    g.add_argument("--method", default="faithful", choices=list(DATAGEN_PRESETS),
                   help="'improved': three sets for 'train.py --method improved' in <out_dir> "
                        "(default generated_<ARCH>_improved): the forget sets with --accept_margin 30 and "
                        "heldout/ (32 per class, another noise seed); with --retain_per_class also retain/")
    g.add_argument("--retain_per_class", type=int, default=None,
                   help="with --method improved: also make retain/, this many images of every class of the "
                        "forget classes' datasets (another noise seed), for 'train.py --retain_weight' "
                        "(default: 0 = none; the improved preset does not use them)")
    g.add_argument("--noise_seed", type=int, default=None,
                   help="seed of the starting noise only (default: --seed); a held-out set needs another one")


def datagen_method(main: Callable, validate: Callable, argv: list[str], args: argparse.Namespace) -> list:
    """datagen.py --method improved: the forget sets, then the held-out and retain sets, each a
    plain datagen run (the user's options win over the preset's, except the folders and sizes of
    the held-out and retain sets)."""
    from copy import copy

    from models import arch_tag
    preset = DATAGEN_PRESETS[args.method]
    own = ("--method", "--retain_per_class")  # this function's options, not the plain runs'
    user = [a for i, a in enumerate(argv) if a not in own and (i == 0 or argv[i - 1] not in own)
            and not a.startswith(tuple(o + "=" for o in own))]
    out = Path(args.out_dir or f"generated_{arch_tag(args.backbone_arch)}{preset['generated_suffix']}")
    checked = copy(args)
    checked.out_dir = str(out)
    _, targets = validate(checked)  # report every problem before the first set starts
    seed = args.seed if args.noise_seed is None else args.noise_seed
    margin = ["--accept_margin", str(preset["accept_margin"]), "--max_steps", str(preset["max_steps"])]
    used = ",".join(dict.fromkeys(d for d, _ in targets))
    summaries = main(margin + user + ["--out_dir", str(out)])
    summaries += main(margin + user + ["--out_dir", str(out / "heldout"), "--n_generated", str(preset["heldout_n"]),
                                       "--noise_seed", str(seed + preset["heldout_seed_offset"])])
    n_retain = preset["retain_per_class"] if args.retain_per_class is None else args.retain_per_class
    if n_retain > 0:
        summaries += main(margin + user + ["--out_dir", str(out / "retain"), "--run_ds", used, "--forget_labels",
                                           "all", "--n_generated", str(n_retain),
                                           "--noise_seed", str(seed + preset["retain_seed_offset"])])
    return summaries
