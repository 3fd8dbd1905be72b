"""neggrad: gradient ascent on the forget images' contrastive loss, the classic unlearning baseline.

NegGrad fine-tunes the model to *increase* its training loss on the data to forget (Golatkar et al.,
CVPR 2020, the fine-tune/negative-gradient baseline; Kravets & Namboodiri, WACV 2025, compare against
it). For CLIP the loss is the image->text contrastive loss over the forget class's dataset: the
cross-entropy of the zero-shot logits of the forget images against every class prompt, at logit scale
`scale` (at the evaluation scale 100 confident synthetic images have a cross-entropy of exactly 0 in
float32, hence no gradient). With `retain_weight` > 0 the same loss is *minimised* on synthetic images
of the dataset's other classes ("NegGrad+", Kurmanji et al., NeurIPS 2023).

Plain Adam (no weight decay) on every unlearnable tensor of `towers`, a random batch of forget images
per step, until the accuracy on the forget images is at most `min_train_acc_stop` (--stop acc) or the
held-out margin rule holds (--stop margin, methods.pieces.heldout_rule), or after `max_steps`. Ascent
is unbounded: the stop rule ends it.
Data: synthetic forget images (+ retain and held-out sets from `datagen.py --method confident`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.base import ForgetTask, MethodResult, Snapshot, freeze, not_a_fraction, not_positive, optimise, option, \
    too_small
from methods.pieces import stop_rule, text_weights, tower_patterns
from zeroshot import EVAL_SCALE, logits

NAME = "neggrad"
NEEDS_IMAGES = True
ARCH_KEYS = ("frozen",)
TOWERS = ("both", "text", "image")


@dataclass
class Config:
    towers: str = option("both", "what trains: both towers, the text transformer or the image tower", TOWERS)
    scale: float = option(10.0, "logit scale of the loss (at 100 confident synthetic images give no gradient)")
    retain_weight: float = option(0.0, "weight of the retain cross-entropy (0 = off; > 0 reads the retain sets)")
    stop: str = option("acc", "stop rule: accuracy on the forget images, or the held-out margin rule",
                       ("acc", "margin"))
    stop_margin: float = option(50.0, "--stop margin: logits (scale 100) below the best other class")
    stop_frac: float = option(0.1, "--stop margin: stop once at most this share of the held-out set is within it")
    max_steps: int = option(300, "optimiser steps at most")
    min_train_acc_stop: float = option(0.0, "--stop acc: stop once accuracy on the forget images is at most this")
    lr: float = option(1e-4, "Adam's learning rate")
    betas: tuple[float, float] = option((0.9, 0.98), "Adam's betas")
    eps: float = option(1e-6, "Adam's eps")
    batch_size: int = option(64, "forget images per step")
    frozen: list[str] = option([], "regexes of parameter names that never change (the backbone's)")


def side_sets(cfg: Config) -> list[str]:
    return ["heldout"] * (cfg.stop == "margin") + ["retain"] * (cfg.retain_weight > 0)


def check(cfg: Config) -> list[str]:
    problems = []
    if cfg.towers not in TOWERS:  # the option is shared with hinge, whose choices argparse shows
        problems.append(f"--towers must be one of {', '.join(TOWERS)} for --method neggrad, got {cfg.towers}")
    return problems + not_positive(cfg, "scale", "lr") + not_a_fraction(cfg, "stop_frac", "min_train_acc_stop") + \
        too_small(cfg, retain_weight=0, max_steps=1, batch_size=1)


def unlearn(task: ForgetTask, cfg: Config) -> MethodResult:
    """Adam on -CE(forget) + retain_weight * CE(retain) until the forget images are forgotten."""
    return unlearn_set([task], cfg)


def unlearn_set(tasks: list[ForgetTask], cfg: Config) -> MethodResult:
    """The same on a set: each step sums every class's terms (a batch of its images against its dataset's
    prompts, its retain images), and the stop rule must hold for every class (the largest watched value)."""
    task = tasks[0]
    model, gen = task.model, task.generator
    vis, txt = freeze(model, cfg.frozen + tower_patterns(cfg.towers))
    names = {p: n for n, p in vis + txt}
    params = list(names)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)
    labels = [torch.full((min(cfg.batch_size, len(t.images)),), t.class_index, device=t.images.device) for t in tasks]
    t_scale = cfg.scale / EVAL_SCALE
    rules = [stop_rule(t, cfg, text_frozen=cfg.towers == "image") for t in tasks]
    watch, stop_at = (lambda: max(r() for r, _ in rules)), rules[0][1]
    syn_accuracy = lambda: max(t.syn_accuracy() for t in tasks)  # noqa: E731
    before = syn_accuracy() if cfg.stop != "acc" else None  # with --stop acc, the watched value

    def step() -> tuple[torch.Tensor, dict]:
        loss = forget_ce = retain_ce = torch.zeros((), device=task.images.device)
        for t, label in zip(tasks, labels):
            pick = torch.randperm(len(t.images), generator=gen, device=gen.device)[:cfg.batch_size].to(t.images.device)
            w = text_weights(model, t.prompt_tokens)
            ce = F.cross_entropy(logits(model, t.images[pick], w) * t_scale, label[:len(pick)])
            forget_ce, loss = forget_ce + ce.detach(), loss - ce
            if cfg.retain_weight > 0:
                r = torch.randperm(len(t.retain), generator=gen, device=gen.device)[:cfg.batch_size]
                r = r.to(t.retain.device)
                kept = F.cross_entropy(logits(model, t.retain[r], w) * t_scale, t.retain_labels[r])
                retain_ce, loss = retain_ce + kept.detach(), loss + cfg.retain_weight * kept
                for x, y, tokens in t.retain_elsewhere:  # --retain_scope all: each other dataset, its own prompts
                    r = torch.randperm(len(x), generator=gen, device=gen.device)[:cfg.batch_size].to(x.device)
                    kept = F.cross_entropy(logits(model, x[r], text_weights(model, tokens)) * t_scale, y[r])
                    retain_ce, loss = retain_ce + kept.detach(), loss + cfg.retain_weight * kept
        loss.backward()
        return loss, {"forget_ce": forget_ce, "retain_ce": retain_ce}

    start = time.time()
    with Snapshot(opt) as original:
        steps, trace, first, value = optimise(task, opt, params, cfg.max_steps, step, watch, stop_at, original)
        after = value if cfg.stop == "acc" else syn_accuracy()
        changed = original.changed(names)
    return MethodResult(changed, {"steps": steps, "acc_syn_before": first if before is None else before,
                                  "acc_syn_final": after, "seconds_loop": round(time.time() - start, 1),
                                  "trace": trace})
