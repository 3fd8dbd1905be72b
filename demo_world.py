"""The embedded demo CLIPs: small open_clip models trained on CPU on Digits + Shapes.

They let the whole pipeline run for real without downloading anything. Each open_clip config of
configs/models is one (models.DEMO_MODELS): `demo` has a ModifiedResNet image tower, like RN50, and
`demo-vit` a ViT, like ViT-B/16; both have the same text tower. Every one is trained with the recipe of
configs/demo_world.yaml: the same data, captions, augmentation and seed, and only the optimisation
settings that a model's own entry there changes. Training is deterministic for a seed; the weights are
cached (see models.load_model) and never committed.
Each step contrasts a batch of images against one caption per class of both datasets: the class
named by its name or, in a share of the captions, by one of its aliases, written with one of its
dataset's templates (configs/datasets: ensemble_templates, aliases), drawn at random. So the text
tower learns every name and alias, and the image tower learns to match them. Each training image
gets Gaussian noise of a random strength (configs/demo_world.yaml: noise), which makes images
synthesised from noise by this model carry more of their class (bench/transfer_demo.py). A model's
own entry may add random shifts (`shift`): demo-vit's ViT tower needs them to learn the shapes
(docs/methods.md, "On demo-vit"); demo's convolutions see a shifted shape as the same shape already.

The oracle of unlearning (models.load_demo_oracle) is the same training without the images of
some classes: `batch_plan` draws every batch, caption and augmentation over the full training
set, exactly as for the demo CLIP, and only then drops the left-out images, so the random stream
and the schedule are the same. The left-out classes keep their captions: like any class with no
image in a batch, they are negatives of every image; so the text side of every step is the demo
CLIP's, and the images are the only difference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from common import REPO, UserError, check_all, close_names, seed_everything
from datasets import Datum, build_dataset
from datasets.base import load_rgb
from synthetic import clip_norm

CONFIG = REPO / "configs" / "demo_world.yaml"


# what a model's own entry of demo_world.yaml `per_model` may change: how it is optimised and how much its images
# are shifted, never the images, captions, noise or seed it learns from
OWN_SETTINGS = ("epochs", "lr", "weight_decay", "batch_size", "shift")


def demo_config(arch: str = "demo") -> dict:
    """The training recipe of demo CLIP `arch`: configs/demo_world.yaml, its model's own entry over the rest."""
    cfg = yaml.safe_load(CONFIG.read_text())
    own = (cfg.pop("per_model", None) or {}).get(arch) or {}
    wrong = sorted(set(own) - set(OWN_SETTINGS))
    if wrong:  # a misspelt or a data setting would otherwise be ignored, or make the models' data differ
        raise UserError(f"{CONFIG}: per_model.{arch} may set only {', '.join(OWN_SETTINGS)}, not {', '.join(wrong)}")
    return {**cfg, **own}


@dataclass
class DemoData:
    """What the demo CLIP learns from: the training images of every demo dataset and every caption."""
    classes: list[tuple[str, str]]  # global label -> (dataset, classname)
    items: list[Datum]  # training images of every dataset, in dataset order
    labels: torch.Tensor  # global label of each item
    captions: list[str]  # every caption of every class
    options: torch.Tensor  # (classes, K): the captions a class can get (indices into captions; padded)
    weights: torch.Tensor  # (classes, K): the probability of each (0 for padding)


def demo_data(data_root: str, cfg: dict | None = None) -> DemoData:
    cfg = cfg or demo_config()
    classes, items, labels, captions, options, weights = [], [], [], [], [], []
    for name in cfg["datasets"]:
        ds = build_dataset(name, data_root)
        items += ds.train
        labels += [len(classes) + d.label for d in ds.train]
        for c in ds.classnames:
            classes.append((ds.name, c))
            aliases = ds.aliases.get(c, [])
            share = cfg["alias_share"] if aliases else 0.0
            opts, ws = [], []
            for n, p in [(c, 1 - share), *[(a, share / len(aliases)) for a in aliases]]:
                for t in ds.templates:
                    opts.append(len(captions))
                    captions.append(t.format(n))
                    ws.append(p / len(ds.templates))
            options.append(opts)
            weights.append(ws)
    width = max(len(o) for o in options)
    return DemoData(classes, items, torch.tensor(labels), captions,
                    torch.tensor([o + [0] * (width - len(o)) for o in options]),
                    torch.tensor([w + [0.0] * (width - len(w)) for w in weights]))


def left_out_problems(classes: Sequence[tuple[str, str]], left_out: Sequence[tuple[str, str]]) -> list[str]:
    """Every (dataset, classname) of `left_out` that is not a class of the demo world, explained."""
    problems = []
    datasets = list(dict.fromkeys(d for d, _ in classes))
    for pair in left_out:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            problems.append(f"a left-out class is a (dataset, classname) pair, not {pair!r}")
            continue
        ds, c = pair
        names = [n for d, n in classes if d == ds]
        if ds not in datasets:
            problems.append(f"the demo world has no dataset '{ds}'{close_names(str(ds), datasets)}")
        elif c not in names:
            problems.append(f"{ds} has no class '{c}'{close_names(str(c), names)}")
    return problems


def left_out_mask(data: DemoData, left_out: Sequence[tuple[str, str]]) -> torch.Tensor:
    """True for every training image of a left-out class."""
    check_all(left_out_problems(data.classes, left_out))
    out = torch.tensor([data.classes.index(tuple(p)) for p in left_out], dtype=torch.long)
    return torch.isin(data.labels, out)


@dataclass
class Step:
    idx: torch.Tensor  # the step's training images (indices into DemoData.items)
    captions: torch.Tensor  # (classes,) the caption of each class (indices into DemoData.captions)
    noise: torch.Tensor  # (len(idx), 3, H, W) pixel noise added to each image (augmentation)
    shift: torch.Tensor | None = None  # (len(idx), 2) each image's (down, right) shift in pixels; None: no shifts


def n_steps(data: DemoData, cfg: dict) -> int:
    return cfg["epochs"] * (len(data.items) // cfg["batch_size"])


def batch_plan(data: DemoData, cfg: dict, image_size: int, dropped: torch.Tensor | None = None) -> Iterator[Step]:
    """Every step of the training, drawn over the full training set, then without `dropped` images.

    The draws never depend on `dropped`: an oracle's steps are the demo CLIP's minus its left-out images.
    """
    g = torch.Generator().manual_seed(cfg["seed"])
    n, b = len(data.items), cfg["batch_size"]
    rows = torch.arange(len(data.classes))
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(n, generator=g)
        for i in range(n // b):
            idx = perm[i * b:(i + 1) * b]
            captions = data.options[rows, torch.multinomial(data.weights, 1, generator=g).squeeze(1)]
            # each image gets noise of its own strength, from none to cfg["noise"]
            noise = torch.randn(b, 3, image_size, image_size, generator=g) \
                * (cfg["noise"] * torch.rand(b, 1, 1, 1, generator=g))
            # drawn only where a model shifts its images, so that a model without shifts keeps its random stream
            shift = torch.randint(-cfg["shift"], cfg["shift"] + 1, (b, 2), generator=g) if cfg["shift"] else None
            keep = torch.ones(b, dtype=torch.bool) if dropped is None else ~dropped[idx]
            yield Step(idx[keep], captions, noise[keep], None if shift is None else shift[keep])


def shifted(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each image of `x` (N, C, H, W) moved by its (down, right) pixels of `shift` (N, 2), its edge pixels
    repeated into the space it leaves (the demo images' backgrounds are plain)."""
    m = int(shift.abs().max())
    padded = F.pad(x, (m,) * 4, mode="replicate")
    h, w = x.shape[-2:]
    return torch.stack([p[:, m - dy:m - dy + h, m - dx:m - dx + w] for p, (dy, dx) in zip(padded, shift.tolist())])


def train_demo_model(model: torch.nn.Module, preprocess, tokenizer, data_root: str, cfg: dict,
                     left_out: Sequence[tuple[str, str]] = ()) -> dict:
    """Train `model` in place on the demo datasets with recipe `cfg` (demo_config), without the images of
    the `left_out` (dataset, classname) pairs; returns a small record of the run."""
    seed_everything(cfg["seed"])
    # CPU float sums depend on the thread count: fix it, so every machine trains the same model
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        return _train(model, preprocess, tokenizer, data_root, cfg, left_out)
    finally:
        torch.set_num_threads(threads)


def _train(model: torch.nn.Module, preprocess, tokenizer, data_root: str, cfg: dict,
           left_out: Sequence[tuple[str, str]]) -> dict:
    data = demo_data(data_root, cfg)
    dropped = left_out_mask(data, left_out)
    x = torch.stack([preprocess(load_rgb(d.impath)) for d in data.items])
    tokens = tokenizer(data.captions)
    std = torch.tensor(clip_norm(model)[1]).view(1, 3, 1, 1)
    steps = n_steps(data, cfg)
    # fused: one pass over each tensor; the 6.3M-weight token embedding made the plain step a third of the time
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps, pct_start=0.1)
    model.train()
    start, loss = time.time(), torch.tensor(float("nan"))
    desc = "training the demo CLIP" + (f" without {len(left_out)} class(es)" if len(left_out) else "")
    bar = tqdm(batch_plan(data, cfg, x.shape[-1], dropped), total=steps, desc=desc, unit="step")
    for step in bar:
        if len(step.idx):  # an oracle's step can lose all its images: the schedule still moves on
            images = x[step.idx] if step.shift is None else shifted(x[step.idx], step.shift)
            img_f = F.normalize(model.encode_image(images + step.noise / std), dim=-1)  # std: pixels -> model input
            txt_f = F.normalize(model.encode_text(tokens[step.captions]), dim=-1)
            loss = F.cross_entropy(model.logit_scale.exp() * img_f @ txt_f.T, data.labels[step.idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)  # as in CLIP: scale at most 100
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        sched.step()
    model.eval()
    return {"seconds": round(time.time() - start, 1), "steps": steps, "final_loss": round(loss.item(), 4),
            "images": int((~dropped).sum()), "left_out": sorted(map(list, left_out))}
