"""datagen: synthesise images of a forget class from the model itself (SPEC §1).

Gradient ascent from noise on the class's zero-shot score, with jitter, clamping and blur as
regularisers. An attempt is accepted at the first step where the image *as the trainer will load
it* has the class as the zero-shot top-1 with probability above the threshold; it fails after
max_steps. The threshold drops by sub_prob (never below min_prob) once per attempt that reached
its last step, as in the paper's one-at-a-time loop.

A whole batch of attempts is optimised at once, so an attempt may start before the attempts
started earlier are decided. It is still judged at the threshold the paper's loop would use for it
(the walk after the drops of all earlier attempts, in start order): until that is known, it keeps
its image each time it first passes a threshold it may still be judged at, and it is decided once
every earlier attempt is (class `Attempts`).

    python datagen.py --backbone_arch demo --run_ds Digits,Shapes
    python datagen.py --backbone_arch RN50 --run_ds StanfordDogs --forget_labels Pekinese --high_prob 0.98
"""
from __future__ import annotations

import interrupts  # noqa: F401  (first: Ctrl-C during the imports below is one line)

import argparse
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur
from tqdm import tqdm

from common import ArgumentParser, UserError, add_common_args, check_all, check_device, check_precision, \
    check_writable, class_seed, precision, run_cli
from datasets import build_datasets
from forget_cls import datagen_setting, resolve_targets
from models import LoadedModel, check_model, config_image_size, load_model
from synthetic import RETAIN_SCOPES, augment, clip_norm, model_view, pixel_bounds, read_synthetic, save_synthetic, \
    synthetic_path, synthetic_problems
from zeroshot import classifier_weights, forget_margin, logits, run_model_key


def _opt(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class DatagenConfig:
    """SPEC §1 defaults; every field is a command-line option of the same name."""
    n_generated: int = _opt(64, "accepted images per class")
    high_prob: float = _opt(0.8, "acceptance: the class is the zero-shot top-1 and its softmax probability exceeds "
                                 "this (the paper tunes it per class, 0.6-0.99: --paper_settings 1)")
    sub_prob: float = _opt(0.025, "the threshold drops by this after each failed attempt (one that reached "
                                  "--max_steps)")
    min_prob: float = _opt(0.45, "... never below this")
    max_steps: int = _opt(3000, "gradient-ascent steps before an attempt is given up")
    lr: float = _opt(25.0, "step size of the normalised gradient ascent: x += lr * g / ||g||")
    l2_reg: float = _opt(1e-3, "objective: logit_scale * cos(image, class) - l2_reg * ||x||")
    max_jitter: int = _opt(16, "random roll of the image by up to this many pixels in x and y, every step")
    blur_every: int = _opt(10, "Gaussian blur every this many steps ...")
    blur_sigma: float = _opt(0.5, "... with this sigma along H and W")
    batch_size: int = _opt(64, "images optimised at once (each on its own; lower it if out of GPU memory)")
    max_failed: int = _opt(200, "a stop the paper lacks: after this many failed attempts keep what was accepted "
                                "(the file's metadata then says complete: false)")
    # beyond the paper (README "Beyond the paper"), off by default: confident images make forgetting transfer
    accept_margin: float = _opt(0.0, "beyond the paper: also require the class's logit (x100) to beat the next class "
                                     "by this margin; 0 = off (the paper's 0.8 probability is a margin of a few "
                                     "points; real images of a class sit ~40 above)")
    sub_margin: float = _opt(0.5, "beyond the paper: --accept_margin drops by this with every threshold drop (never "
                                  "below 0), so a class whose images rarely get that confident still finishes")
    augment_accept: int = _opt(0, "beyond the paper: also require the class to stay the top-1 under this many random "
                                  "augmentations (shift, scale, blur, noise); 0 = off")


# datagen.py --method: the sets train.py's methods read. paper: the forget sets as the paper makes them.
# confident: forget sets accepted with a margin (its `config`, under the command line's options), a held-out
# set of each class (another noise seed) for a stop rule and, on request, retain sets of every class
PRESETS: dict[str, dict] = {
    "paper": {},
    "confident": {"config": {"accept_margin": 30.0, "max_steps": 1000}, "folder_suffix": "_confident",
                  "heldout_n": 32, "heldout_seed_offset": 1000, "retain_seed_offset": 2000},
}


@dataclass
class SetPlan:
    """One set of synthetic files to make: where, how, from which noise seed, of which classes."""
    out_dir: Path
    cfg: DatagenConfig
    noise_seed: int
    targets: list[tuple[str, str]]


@dataclass
class SynthResult:
    images: torch.Tensor  # (N, 3, H, W), ImageNet-normalised, in the order their attempts started
    probs: torch.Tensor  # class probability of each image at acceptance
    steps: torch.Tensor  # steps each image took
    thresholds: torch.Tensor  # threshold each image was judged at
    failed: int  # decided attempts that ended without an image
    complete: bool  # n_generated images were accepted (False: stopped by max_failed)
    total_steps: int  # optimisation steps of the batch
    image_steps: int  # optimisation steps summed over the images of the batch
    threshold_drops: int  # times the threshold was lowered
    final_threshold: float  # the threshold the last accepted image was judged at (the first one if none was)
    final_margin: float  # the same for accept_margin
    last_top1: torch.Tensor  # the class the model gave each image of the last step (why nothing was accepted)


def threshold_walk(cfg: DatagenConfig) -> list[tuple[float, float]]:
    """(threshold, accept_margin) after 0, 1, 2, ... drops, each drop computed as the paper's loop
    computes it (max(t - sub_prob, min_prob), so the floats are the paper's), until neither moves.
    A run drops at most once per failed attempt and per image, so the walk stops there too."""
    walk = [(cfg.high_prob, cfg.accept_margin)]
    for _ in range(cfg.max_failed + cfg.n_generated):
        t, m = walk[-1]
        after = (max(cfg.min_prob, t - cfg.sub_prob), max(0.0, m - cfg.sub_margin))
        if after == walk[-1]:
            break
        walk.append(after)
    return walk


@dataclass(eq=False)  # identity semantics: attempts are dict keys
class Attempt:
    """One optimisation from fresh noise."""
    # (walk level, step, image, prob) each time the attempt first passed a higher level (lower
    # index) that it may still be judged at: the first entry at or above a level is where the
    # paper's loop would have accepted it at that level
    passes: list = field(default_factory=list)
    ended: int = 0  # the step it stopped at; 0 while it runs

    def best(self) -> int:
        return self.passes[-1][0] if self.passes else sys.maxsize


class Attempts:
    """The attempts of one class, decided in the order they started, each at the threshold the
    paper's one-at-a-time loop would judge it at: the walk after the drops of the attempts before it."""

    def __init__(self, cfg: DatagenConfig):
        self.cfg, self.walk = cfg, threshold_walk(cfg)
        self.undecided: deque[Attempt] = deque()  # in start order
        self.drops = 0  # of the decided attempts
        self.failed = 0
        self.kept: list[tuple] = []  # (image, prob, step, threshold, margin)

    def level(self) -> int:
        """The walk level the first undecided attempt is judged at (the highest any can be)."""
        return min(self.drops, len(self.walk) - 1)

    def finished(self) -> bool:
        return len(self.kept) >= self.cfg.n_generated or self.failed >= self.cfg.max_failed

    def start(self) -> Attempt:
        a = Attempt()
        self.undecided.append(a)
        return a

    def new_passes(self, slots: list[Attempt], levels: list[int]) -> list[tuple[int, int]]:
        """(slot, level) for each running attempt whose image passed, this step, a higher level than
        before, among the levels it may still be judged at: each undecided attempt before it drops
        the threshold at most once (the others need no copy of the image)."""
        position = {a: k for k, a in enumerate(self.undecided)}
        last = len(self.walk) - 1
        return [(i, lv) for i, (a, lv) in enumerate(zip(slots, levels))
                if lv < a.best() and lv <= min(last, self.drops + position[a])]

    def settle(self, slots: list[Attempt], steps: list[int]) -> None:
        """End the running attempts whose outcome is fixed (they passed the highest threshold they
        can still be judged at, or ran max_steps), and decide, in start order, every ended attempt
        whose predecessors are decided; repeat while decisions lower the threshold."""
        while True:
            for a, s in zip(slots, steps):
                if not a.ended and (a.best() <= self.level() or s >= self.cfg.max_steps):
                    a.ended = s
            if not self._decide():
                return

    def _decide(self) -> bool:
        decided = False
        while self.undecided and self.undecided[0].ended and not self.finished():
            a, level = self.undecided.popleft(), self.level()
            hit = next((p for p in a.passes if p[0] <= level), None)  # first step past its threshold
            if hit is None:
                self.failed += 1
            else:
                self.kept.append((hit[2], hit[3], hit[1], *self.walk[level]))
            # the paper's loop lowers the threshold after every attempt that reached its last step,
            # also when that last step accepted an image (its `t == num_iterations - 1` test)
            self.drops += hit is None or hit[1] >= self.cfg.max_steps
            decided = True
        return decided


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
def holds_under_augment(model, x_view: torch.Tensor, weights: torch.Tensor, idx: int, n: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Per image: is `idx` still the top class under each of n random augmentations (with blur)?"""
    ok = torch.ones(len(x_view), dtype=torch.bool, device=x_view.device)
    for _ in range(n):
        ok &= forget_margin(logits(model, augment(x_view, generator, blur_p=0.5), weights), idx) > 0
    return ok


def passed_level(model, x: torch.Tensor, weights: torch.Tensor, target: int, mean, std,
                 thresholds: torch.Tensor, margins: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Per image: the first walk level whose acceptance test it passes (len(thresholds): none), its
    class probability and its zero-shot top-1 class. The test, as the paper's code makes it, on the image as the trainer will
    load it: the class is the top-1 and its probability exceeds the level's threshold (beyond the
    paper: its logit margin also reaches the level's margin). The walk never rises, so an image
    passes every level from the returned one on."""
    with torch.no_grad():
        z = logits(model, model_view(x, mean, std), weights)
    prob = z.softmax(-1)[:, target]
    fails = ~(prob[:, None] > thresholds)  # written so that NaN fails (float32, as the paper compares)
    if margins is not None:
        fails |= ~(forget_margin(z, target)[:, None] >= margins)
    top1 = z.argmax(-1)
    level = torch.where(top1 == target, fails.sum(1), len(thresholds))
    return level, prob, top1


def synthesise(model: torch.nn.Module, weights: torch.Tensor, target: int, image_size: int,
               cfg: DatagenConfig, generator: torch.Generator, device: str,
               progress: tqdm | None = None, arithmetic: str = "fp32") -> SynthResult:
    """Generate up to cfg.n_generated accepted images of class `target` (see module docstring).
    `arithmetic`: common.precision of the ascent steps; acceptance is always judged in fp32."""
    if cfg.high_prob < cfg.min_prob:
        raise ValueError(f"high_prob {cfg.high_prob} is below min_prob {cfg.min_prob}")
    model.eval()
    mean, std = clip_norm(model)
    w_target = weights[:, target]
    scale = model.logit_scale.exp().detach()
    attempts = Attempts(cfg)
    thresholds = torch.tensor([t for t, _ in attempts.walk], device=device)
    margins = torch.tensor([m for _, m in attempts.walk], device=device) if cfg.accept_margin > 0 else None
    b = min(cfg.batch_size, cfg.n_generated)

    def noise(n: int) -> torch.Tensor:  # drawn on the CPU: CPU and GPU runs start from the same noise
        return torch.randn(n, 3, image_size, image_size, generator=generator).to(device)

    slots, x = [attempts.start() for _ in range(b)], noise(b)
    steps = torch.zeros(b, dtype=torch.long)  # on the CPU: read every step without waiting for the device
    total, image_steps = 0, 0
    for p in model.parameters():
        p.requires_grad_(False)  # only the images get gradients
    try:
        while not attempts.finished():
            shift = tuple(torch.randint(0, cfg.max_jitter + 1, (2,), generator=generator).tolist())
            blur_now = steps % cfg.blur_every == 0  # steps taken before this one
            with precision(arithmetic, device):
                x = ascent_step(model, x, w_target, shift, cfg, mean, std, scale)
            if blur_now.any():
                x = torch.where(blur_now.to(device).view(-1, 1, 1, 1), blur(x, cfg.blur_sigma), x)
            steps += 1
            total += 1
            image_steps += len(x)
            level, prob, top1 = passed_level(model, x, weights, target, mean, std, thresholds, margins)
            new = attempts.new_passes(slots, level.tolist())  # the step's one wait for the device
            if new and cfg.augment_accept > 0:  # beyond the paper: the class must also hold under augmentations
                rows = torch.tensor([i for i, _ in new], device=device)
                holds = holds_under_augment(model, model_view(x[rows], mean, std), weights, target,
                                                   cfg.augment_accept, generator)
                new = [n for n, h in zip(new, holds.tolist()) if h]
            if new:  # copies to the CPU: a pass may wait there until the attempts before it are decided
                rows = torch.tensor([i for i, _ in new], device=device)
                for (i, lv), image, p in zip(new, x[rows].cpu(), prob[rows].tolist()):
                    slots[i].passes.append((lv, int(steps[i]), image, p))
            attempts.settle(slots, steps.tolist())
            live = [i for i, a in enumerate(slots) if not a.ended]
            if len(live) < len(slots) and not attempts.finished():
                # fresh noise for ended slots, but only as many attempts as can still give an image:
                # the last images of a class run in a shrinking batch, no step is spent on surplus images
                n_new = max(0, min(b - len(live), cfg.n_generated - len(attempts.kept) - len(attempts.undecided)))
                slots = [slots[i] for i in live] + [attempts.start() for _ in range(n_new)]
                x = torch.cat([x[torch.tensor(live, dtype=torch.long, device=device)], noise(n_new)])
                steps = torch.cat([steps[live], steps.new_zeros(n_new)])
            if progress is not None:
                progress.n = min(len(attempts.kept), cfg.n_generated)
                progress.set_postfix(threshold=f"{attempts.walk[attempts.level()][0]:.3f}", failed=attempts.failed,
                                     refresh=False)
                progress.refresh()
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    kept = attempts.kept
    final_threshold, final_margin = kept[-1][3:] if kept else attempts.walk[0]
    return SynthResult(
        images=torch.stack([k[0] for k in kept]) if kept else torch.zeros(0, 3, image_size, image_size),
        probs=torch.tensor([k[1] for k in kept]), steps=torch.tensor([k[2] for k in kept], dtype=torch.long),
        thresholds=torch.tensor([k[3] for k in kept]), failed=attempts.failed, complete=len(kept) >= cfg.n_generated,
        total_steps=total, image_steps=image_steps, threshold_drops=attempts.drops, final_threshold=final_threshold,
        final_margin=final_margin, last_top1=top1.cpu())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Synthesise forget-class images from a CLIP model (SPEC §1).")
    add_common_args(p)
    p.add_argument("--out_dir", default=None, help="default: generated_<ARCH> (--method confident: "
                                                   "generated_<ARCH>_confident)")
    p.add_argument("--overwrite", action="store_true", help="regenerate classes that already have a file")
    p.add_argument("--paper_settings", type=int, default=0,
                   help="1: use the paper's per-class high_prob/sub_prob from forget_cls.py where it has them")
    for f in fields(DatagenConfig):  # None: the preset's value, else DatagenConfig's default
        p.add_argument(f"--{f.name}", type=type(f.default), default=None,
                       help=f"{f.metadata['help']} (default: {f.default})")
    g = p.add_argument_group("beyond the paper (off by default)")
    g.add_argument("--method", default="paper", choices=list(PRESETS),
                   help="paper: the forget sets as the paper makes them. confident: the sets that train.py's "
                        "image-side methods read (hinge, neggrad, projedit --side image; docs/methods.md), in "
                        "<out_dir>: the forget sets with --accept_margin 30, and heldout/ (32 per class, another "
                        "noise seed); with --retain_per_class also retain/ (default: paper)")
    g.add_argument("--retain_per_class", type=int, default=None,
                   help="with --method confident: also make retain/, this many images of every class of the forget "
                        "classes' datasets (another noise seed), for train.py's retain terms (default: 0 = none)")
    g.add_argument("--retain_scope", default="own", choices=RETAIN_SCOPES,
                   help="with --retain_per_class: retain sets of the forget classes' datasets (own), or of every "
                        "dataset of --run_ds (all: for train.py --retain_scope all; default: own)")
    g.add_argument("--noise_seed", type=int, default=None,
                   help="seed of the starting noise only (default: --seed); a held-out set needs another one")
    return p.parse_args(argv)


def config(args: argparse.Namespace) -> DatagenConfig:
    """The synthesis settings of a command line: DatagenConfig's defaults, the preset's, the options given."""
    given = {f.name: getattr(args, f.name) for f in fields(DatagenConfig) if getattr(args, f.name) is not None}
    return replace(DatagenConfig(), **{**PRESETS[args.method].get("config", {}), **given})


def option_problems(args: argparse.Namespace) -> list[str]:
    """Every problem of the command line that shows without data, files or devices: what sweep.py
    checks for every job before it starts any."""
    cfg, problems = config(args), []
    if not 0 < cfg.high_prob < 1:
        problems.append(f"--high_prob must be in (0, 1), got {cfg.high_prob}")
    if not 0 <= cfg.sub_prob < 1:
        problems.append(f"--sub_prob must be in [0, 1), got {cfg.sub_prob}")
    if not 0 < cfg.min_prob < 1:
        problems.append(f"--min_prob must be in (0, 1), got {cfg.min_prob}")
    elif cfg.high_prob < cfg.min_prob:
        problems.append(f"--high_prob ({cfg.high_prob}) must be at least --min_prob ({cfg.min_prob}): "
                        "a failed attempt would raise the threshold")
    for name in ("n_generated", "batch_size", "max_steps", "blur_every", "max_failed"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if args.retain_scope != "own" and not args.retain_per_class:
        problems.append("--retain_scope needs --retain_per_class")
    if args.retain_per_class is not None and args.method != "confident":
        problems.append("--retain_per_class needs --method confident")
    elif args.retain_per_class is not None and args.retain_per_class < 0:
        problems.append(f"--retain_per_class must be at least 0, got {args.retain_per_class}")
    for name in ("lr", "blur_sigma"):
        if not getattr(cfg, name) > 0:
            problems.append(f"--{name} must be positive, got {getattr(cfg, name)}")
    for name in ("l2_reg", "max_jitter", "sub_margin"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name} must be at least 0, got {getattr(cfg, name)}")
    return problems + check_model(args.backbone_arch, args.pretrained)[1]


def plan(args: argparse.Namespace, datasets: dict, targets: list[tuple[str, str]], tag: str | None) -> list[SetPlan]:
    """The sets a command line makes: the forget sets, and with --method confident the held-out and
    retain sets beside them (the user's options win over the preset's, except their folders and sizes)."""
    preset, cfg = PRESETS[args.method], config(args)
    seed = args.seed if args.noise_seed is None else args.noise_seed
    out = Path(args.out_dir or f"generated_{tag}{preset.get('folder_suffix', '')}")
    if args.method == "paper":
        return [SetPlan(out, cfg, seed, targets)]
    sets = [SetPlan(out, cfg, seed, targets),
            SetPlan(out / "heldout", replace(cfg, n_generated=preset["heldout_n"]), seed + preset["heldout_seed_offset"],
                    targets)]
    if args.retain_per_class:
        used = list(datasets) if args.retain_scope == "all" else list(dict.fromkeys(d for d, _ in targets))
        sets.append(SetPlan(out / "retain", replace(cfg, n_generated=args.retain_per_class),
                            seed + preset["retain_seed_offset"], [(d, c) for d in used for c in datasets[d].classnames]))
    return sets


def validate(args: argparse.Namespace) -> tuple[dict, list[SetPlan]]:
    """Check everything that can be checked before loading a model; report all problems at once.
    Returns the datasets and the sets to make."""
    problems = option_problems(args)
    tag, model_problems = check_model(args.backbone_arch, args.pretrained)
    model_ok = not model_problems  # the model's name and weights are valid
    datasets, ds_problems = build_datasets(args.run_ds, args.data_root)
    problems += ds_problems
    targets, t_problems = resolve_targets(datasets, args.forget_labels, args.run_ds) if args.forget_labels != "all" \
        else ([(n, c) for n, ds in datasets.items() for c in ds.classnames], [])  # all: e.g. retain sets
    problems += t_problems
    sets = plan(args, datasets, targets, tag) if not problems else []
    problems += check_writable(sets[0].out_dir if sets else args.out_dir or ".") + check_device(args.device) + \
        check_precision(args.precision, args.device)
    if model_ok and not args.overwrite:  # an existing file is kept only if train.py would take it
        key, size = run_model_key(args.backbone_arch, args.pretrained, args.seed), config_image_size(args.backbone_arch)
        for ds_name, classname, path in ((d, c, synthetic_path(s.out_dir, d, c)) for s in sets for d, c in s.targets):
            if not path.exists():
                continue
            try:
                data = read_synthetic(path)
            except UserError as e:
                problems.append(f"{e} (or pass --overwrite)")
                continue
            problems += [f"{path} exists and {what}: use another --out_dir, or --overwrite to replace it"
                         for what, _ in synthetic_problems(data, key, size, ds_name, classname,
                                                           datasets[ds_name].classnames.index(classname))]
    check_all(problems)
    return datasets, sets


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    datasets, sets = validate(args)
    lm: LoadedModel = load_model(args.backbone_arch, args.pretrained, args.device, args.data_root)
    summaries, empty = [], []
    for s in sets:
        made, failed = generate(lm, datasets, s, args)
        summaries, empty = summaries + made, empty + failed
    check_all(empty)  # after every class: the ones that worked are kept
    return summaries


def generate(lm: LoadedModel, datasets: dict, s: SetPlan, args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Make one set (the classes whose file is not there yet): the metadata of each file written, and a
    line for each class that got no image (no file is written for it)."""
    key, size = run_model_key(args.backbone_arch, args.pretrained, args.seed), lm.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    summaries, weights_cache, empty = [], {}, []
    for ds_name, classname in s.targets:
        ds = datasets[ds_name]
        path = synthetic_path(s.out_dir, ds_name, classname)
        if path.exists() and not args.overwrite:  # checked by validate: this model's, this class's, usable
            print(f"{ds_name}/{classname}: {path} exists ({read_synthetic(path)['meta']['n_images']} images), skipped")
            continue
        cfg = s.cfg
        paper = datagen_setting(lm.tag, ds_name, classname) if args.paper_settings else None
        if paper:
            cfg = replace(cfg, high_prob=paper[0], sub_prob=paper[1])
        if ds_name not in weights_cache:
            weights_cache[ds_name] = classifier_weights(lm, ds, args.device)
        target = ds.classnames.index(classname)
        gen = torch.Generator().manual_seed(class_seed(s.noise_seed, ds_name, classname))
        start = time.time()
        with tqdm(total=cfg.n_generated, desc=f"{ds_name}/{classname}", unit="img") as bar:
            res = synthesise(lm.model, weights_cache[ds_name], target, size, cfg, gen, args.device, bar, args.precision)
        secs = time.time() - start
        if not len(res.images):  # an empty file would only fail later, in train.py: say why now, write nothing
            empty.append(f"{ds_name}/{classname}: no image accepted ({res.failed} attempts of up to {cfg.max_steps} "
                         "steps failed): "
                         f"{nothing_accepted(res, ds.classnames, target, lm.pretrained == 'none')}")
            print(f"{ds_name}/{classname}: no image accepted, nothing written")
            continue
        incomplete = None if res.complete else (
            f"stopped by --max_failed after {res.failed} failed attempts with {len(res.images)} of {cfg.n_generated} "
            "images (the paper's loop has no such stop and would keep trying)")
        meta = {"model_key": key, "arch": lm.tag, "pretrained": lm.pretrained, "dataset": ds_name,
                "classname": classname, "class_index": target, "template": ds.template, "seed": args.seed,
                **({} if s.noise_seed == args.seed else {"noise_seed": s.noise_seed}),
                "complete": res.complete, "n_requested": cfg.n_generated, "failed_attempts": res.failed,
                **({} if res.complete else {"incomplete": incomplete}),
                "threshold_drops": res.threshold_drops, "final_threshold": res.final_threshold,
                "final_accept_margin": res.final_margin,
                "total_steps": res.total_steps, "seconds": round(secs, 2), "precision": args.precision,
                "config": asdict(cfg)}
        save_synthetic(path, res.images, res.probs, res.steps, res.thresholds, meta)
        status = "complete" if res.complete else f"INCOMPLETE: {incomplete}"
        print(f"{ds_name}/{classname}: {len(res.images)}/{cfg.n_generated} images, {status}, "
              f"p min {res.probs.min().item() if len(res.probs) else float('nan'):.3f}, "
              f"steps median {res.steps.float().median().item() if len(res.steps) else 0:.0f}, "
              f"{secs:.1f} s -> {path}")
        summaries.append(meta)
    return summaries, empty


def nothing_accepted(res: SynthResult, classnames: list[str], target: int, random_weights: bool) -> str:
    """Why an attempt never passed: the class the model gave the last images instead, or too low a probability."""
    counts = Counter(res.last_top1.tolist())
    top, n = counts.most_common(1)[0] if counts else (target, 0)
    if top == target:
        return (f"'{classnames[target]}' was their top-1 but never above probability {res.final_threshold:.3f}; "
                "lower --high_prob / --min_prob or raise --max_steps")
    why = f"the model's top-1 on its last images was '{classnames[top]}' ({n} of {len(res.last_top1)})"
    if random_weights:
        why += (" (random weights give one class to every image: for a structural check forget that class, "
                "or train on real images with train.py --generated_data 0)")
    return why


if __name__ == "__main__":
    run_cli(main)
