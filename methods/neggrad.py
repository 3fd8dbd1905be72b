"""neggrad: gradient ascent on the forget images' contrastive loss, the classic unlearning baseline.

NegGrad fine-tunes the model to *increase* its training loss on the data to forget (Golatkar et al.,
CVPR 2020, "Eternal sunshine of the spotless net", the fine-tune/negative-gradient baseline; Kravets &
Namboodiri, WACV 2025, compare against it in §4). For CLIP the loss is the image->text contrastive
loss over the forget class's dataset: the cross-entropy of the zero-shot logits of the forget images
against every class prompt (at logit scale `scale`: at the evaluation scale 100 the confident
synthetic images of `datagen.py --method confident` have a cross-entropy of exactly 0 in float32,
hence no gradient), the forget class's prompt being their caption. With
`retain_weight` > 0 the same loss is *minimised* on synthetic images of the dataset's other classes
(their own class prompts), weighted by retain_weight ("NegGrad+", Kurmanji et al., NeurIPS 2023).

Plain Adam (no weight decay) on every unlearnable tensor of `towers` (both: the paper's towers,
text: the text transformer, image: the image tower; configs/archs frozen patterns respected), a
random batch of forget images per step, until the accuracy on the forget images is at most
`min_train_acc_stop` (--stop acc) or, with --stop margin, until at most `stop_frac` of a held-out
synthetic set (another noise seed) still has the forget logit within `stop_margin` of the best other
class (methods.hinge.heldout_rule), or after `max_steps`. Ascent is unbounded: the stop rule ends it.
Data: synthetic forget images (+ retain sets from `datagen.py --method confident --retain_per_class N`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from methods.base import ForgetTask, MethodResult, NonFiniteLoss, Snapshot, freeze, text_weights, too_small
from methods.hinge import stop_problems, stop_rule, tower_patterns
from zeroshot import EVAL_SCALE, logits

NAME = "neggrad"
NEEDS_IMAGES = True
TOWERS = ("both", "text", "image")


@dataclass
class Config:
    towers: str = field(default="both", metadata={"choices": TOWERS})
    scale: float = 10.0  # logit scale of the loss: at 100 confident synthetic images give CE 0 and no gradient
    retain_weight: float = 0.0  # weight of the retain cross-entropy (0 = off; > 0 reads the retain sets)
    stop: str = field(default="acc", metadata={"choices": ("acc", "margin")})
    stop_margin: float = 50.0  # --stop margin: logits (scale 100) below the best other class
    stop_frac: float = 0.1  # --stop margin: stop once <= this fraction of the held-out set is within the margin
    max_steps: int = 300
    min_train_acc_stop: float = 0.0  # --stop acc: stop once accuracy on the forget images is <= this
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    batch_size: int = 64


def side_sets(cfg: Config) -> list[str]:
    return ["heldout"] * (cfg.stop == "margin") + ["retain"] * (cfg.retain_weight > 0)


def check(cfg: Config) -> list[str]:
    problems = []
    if cfg.towers not in TOWERS:  # the option is shared with hinge, whose choices argparse shows
        problems.append(f"--towers must be one of {', '.join(TOWERS)} for --method neggrad, got {cfg.towers}")
    if cfg.scale <= 0:
        problems.append(f"--scale must be positive, got {cfg.scale}")
    return problems + stop_problems(cfg) + too_small(cfg, retain_weight=0, max_steps=1)


def unlearn(task: ForgetTask, cfg: Config) -> MethodResult:
    """Adam on -CE(forget) + retain_weight * CE(retain) until the forget images are forgotten."""
    model, images, idx, gen = task.model, task.images, task.class_index, task.generator
    vis, txt = freeze(model, list(task.arch.get("frozen", [])) + tower_patterns(cfg.towers))
    names = {p: n for n, p in vis + txt}
    params = list(names)
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)
    labels = torch.full((min(cfg.batch_size, len(images)),), idx, device=images.device)
    t = cfg.scale / EVAL_SCALE
    watch, stop_at = stop_rule(task, cfg, text_frozen=cfg.towers == "image")
    acc = before = task.syn_accuracy()
    value = watch()
    steps, trace, start = 0, [], time.time()
    task.count_steps(cfg.max_steps)
    with Snapshot(opt) as original:
        while steps < cfg.max_steps and value > stop_at:
            pick = torch.randperm(len(images), generator=gen, device=gen.device)[:cfg.batch_size].to(images.device)
            w = text_weights(model, task.prompt_tokens)
            forget_ce = F.cross_entropy(logits(model, images[pick], w) * t, labels[:len(pick)])
            loss = -forget_ce
            retain_ce = torch.zeros((), device=loss.device)
            if cfg.retain_weight > 0:
                r = torch.randperm(len(task.retain), generator=gen, device=gen.device)[:cfg.batch_size]
                r = r.to(task.retain.device)
                retain_ce = F.cross_entropy(logits(model, task.retain[r], w) * t, task.retain_labels[r])
                loss = loss + cfg.retain_weight * retain_ce
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss became {loss.item()} at step {steps}", {"steps": steps, "acc_syn_before": before})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            original.step(params)
            steps += 1
            acc = task.syn_accuracy()
            value = acc if cfg.stop == "acc" else watch()
            trace.append({"step": steps, "forget_ce": round(forget_ce.item(), 5), "retain_ce": round(retain_ce.item(), 5),
                          "acc_syn": acc, "watch": value})
            task.tick(step=steps, syn_acc=f"{acc:.3f}", forget_ce=f"{forget_ce.item():.3f}")
        changed = original.changed(names)
    return MethodResult(changed, {"steps": steps, "acc_syn_before": before, "acc_syn_final": acc,
                                  "seconds_loop": round(time.time() - start, 1), "trace": trace})
