"""hinge: push the forget class below the best other class on the synthetic images (this project).

A direct objective instead of the paper's smoothness loss: on the forget images, the forget class's
zero-shot logit must fall below the best other class of its dataset by `hinge_margin`. Plain Adam on
every unlearnable tensor of the chosen `towers` (no top-k; no weight decay, which would move tensors
the loss does not need). Options:
- towers: both (the paper's towers), text (the text transformer), image, or token: only the
  token-embedding rows of the class name (tokens no other class prompt of the run uses; it cannot
  run when every token of the name is shared, as for 4 of the paper's 12 classes: audit.py --tokens);
- retain_weight: keep the other classes (KL and embedding drift against the original model on
  synthetic images of the other classes and their prompts: datagen's retain/ sets);
- stop margin: stop once at most stop_frac of a held-out synthetic set (another noise seed) still has
  the forget logit within stop_margin of the best other class (the paper's "synthetic accuracy <=
  0.1" is met long before real images are forgotten);
- objective lipschitz+hinge: the paper's loss at its first noise level, plus the hinge;
- augment: re-augment the forget images every step (shift, scale, noise).
Data: synthetic forget images (+ held-out and retain sets from `datagen.py --method confident`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common import UserError
from methods.base import ForgetTask, MethodResult, Snapshot, freeze, not_a_fraction, not_positive, optimise, option, \
    too_small
from methods.pieces import kept_classes, lipschitz_loss, stop_rule, text_weights, tower_patterns
from synthetic import augment
from zeroshot import EVAL_SCALE, forget_margin, logits

NAME = "hinge"
NEEDS_IMAGES = True
ARCH_KEYS = ("frozen",)
TOWERS = ("both", "text", "image", "token")


@dataclass
class Config:
    objective: str = option("hinge", "the loss: the hinge, or the paper's loss at its first noise level plus it",
                            ("hinge", "lipschitz+hinge"))
    hinge_margin: float = option(100.0, "logits (scale 100) the forget class must fall below the best other")
    retain_weight: float = option(0.0, "weight of the retain term (0 = off; > 0 reads the retain sets)")
    stop: str = option("acc", "stop rule: accuracy on the forget images, or the held-out margin rule",
                       ("acc", "margin"))
    stop_margin: float = option(100.0, "--stop margin: logits (scale 100) below the best other class")
    stop_frac: float = option(0.1, "--stop margin: stop once at most this share of the held-out set is within it")
    towers: str = option("both", "what trains: both towers, the text transformer, the image tower, or the class "
                                 "name's own token rows", TOWERS)
    augment: int = option(0, "1: re-augment the forget images every step")
    max_steps: int = option(300, "optimiser steps at most")
    min_train_acc_stop: float = option(0.1, "--stop acc: stop once accuracy on the forget images is at most this")
    lr: float = option(2e-4, "Adam's learning rate")
    betas: tuple[float, float] = option((0.9, 0.98), "Adam's betas")
    eps: float = option(1e-6, "Adam's eps")
    batch_size: int = option(64, "forget images per step")
    n_samples: int = option(25, "lipschitz+hinge: noisy copies per image")
    chunk: int = option(512, "lipschitz+hinge: noisy images per forward pass (memory)")
    lipschitz_std: float = option(0.1, "lipschitz+hinge: the noise level (the paper's first)")
    frozen: list[str] = option([], "regexes of parameter names that never change (the backbone's)")


def side_sets(cfg: Config) -> list[str]:
    """The synthetic sets besides the forget set that this configuration reads."""
    return ["heldout"] * (cfg.stop == "margin") + ["retain"] * (cfg.retain_weight > 0)


def check(cfg: Config) -> list[str]:
    problems = too_small(cfg, retain_weight=0)
    if cfg.towers == "token" and cfg.objective != "hinge":
        problems.append("--towers token needs --objective hinge")
    return problems + not_a_fraction(cfg, "stop_frac", "min_train_acc_stop") + \
        too_small(cfg, max_steps=1, batch_size=1, n_samples=1, chunk=1) + not_positive(cfg, "lr")


def hinge_loss(model, images: torch.Tensor, weights: torch.Tensor, idx: int, margin: float) -> torch.Tensor:
    """mean(relu(forget logit - best other + margin)), in cosine units (logits / 100)."""
    return F.relu(forget_margin(logits(model, images, weights), idx) + margin).mean() / EVAL_SCALE


class RetainTerm:
    """Drift of the model on what must be kept, against its state when this object was made:
    KL(original || current) of the zero-shot distribution of synthetic images of the other
    classes, 1 - cos of their image embeddings, and 1 - cos of the other classes' prompt embeddings.
    Zero for the original model; grows with any change that affects them."""

    def __init__(self, model, images: torch.Tensor, prompt_tokens: torch.Tensor, keep: list[int]):
        self.images, self.tokens, self.keep = images, prompt_tokens, keep
        with torch.no_grad():
            self.emb0 = F.normalize(model.encode_image(images), dim=-1)
            self.w0 = text_weights(model, prompt_tokens)
            self.logp0 = (EVAL_SCALE * self.emb0 @ self.w0).log_softmax(-1)

    def __call__(self, model, weights: torch.Tensor | None = None) -> torch.Tensor:
        w = text_weights(model, self.tokens) if weights is None else weights
        emb = F.normalize(model.encode_image(self.images), dim=-1)
        kl = F.kl_div((EVAL_SCALE * emb @ w).log_softmax(-1), self.logp0, log_target=True, reduction="batchmean")
        img = (1 - (emb * self.emb0).sum(-1)).mean()
        txt = (1 - (w[:, self.keep] * self.w0[:, self.keep]).sum(0)).mean()
        return kl + img + txt


def own_token_rows(prompt_tokens: torch.Tensor, idx: int, also: torch.Tensor | None = None) -> list[int]:
    """Token ids in the forget class's prompt that no other class's prompt uses (its name's tokens).
    `also`: the prompts of the run's other datasets, whose tokens must not move either."""
    others = [prompt_tokens[:idx], prompt_tokens[idx + 1:]] + ([also] if also is not None else [])
    return sorted(set(prompt_tokens[idx].tolist()) - set(torch.cat(others).flatten().tolist()))


def unlearn(task: ForgetTask, cfg: Config) -> MethodResult:
    """Adam on the chosen tensors until the watched quantity is small enough or cfg.max_steps."""
    return unlearn_set([task], cfg)


def unlearn_set(tasks: list[ForgetTask], cfg: Config) -> MethodResult:
    """The same on a set: each step sums every class's terms (a batch of its images against its dataset's
    prompts, its retain term), and the stop rule must hold for every class (the largest watched value);
    --towers token edits the own token rows of every class of the set."""
    task = tasks[0]
    model, gen = task.model, task.generator
    rules = [stop_rule(t, cfg, text_frozen=cfg.towers == "image") for t in tasks]
    watch, stop_at = (lambda: max(r() for r, _ in rules)), rules[0][1]
    retain = [RetainTerm(model, t.retain, t.prompt_tokens, kept_classes(t, tasks)) if cfg.retain_weight > 0 else None
              for t in tasks]
    # --retain_scope all: the same term on each other dataset's retain images, with its own prompts
    elsewhere = [[RetainTerm(model, x, tokens, sorted(set(labels.tolist()))) for x, labels, tokens in t.retain_elsewhere]
                 if cfg.retain_weight > 0 else [] for t in tasks]
    captions = [t.tokens([t.caption] * min(len(t.images), cfg.batch_size)) if "lipschitz" in cfg.objective else None
                for t in tasks]

    vis, txt = freeze(model, cfg.frozen + tower_patterns(cfg.towers))
    named = vis + txt
    row_mask = None
    if cfg.towers == "token":
        rows = sorted({r for t in tasks for r in own_token_rows(
            t.prompt_tokens, t.class_index, t.tokens(t.other_prompts) if t.other_prompts else None)})
        if not rows:
            names_ = ", ".join(f"'{t.classname}'" for t in tasks)
            raise UserError(f"--towers token: every token of {names_} is used by another class's prompt "
                            "of the run; use --towers text for this class")
        emb = model.token_embedding.weight
        emb.requires_grad_(True)
        named = [("token_embedding.weight", emb)]
        row_mask = torch.ones(len(emb), 1, dtype=torch.bool, device=emb.device)
        row_mask[rows] = False
    names = {p: n for n, p in named}
    params = [p for _, p in named]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)

    def step() -> tuple[torch.Tensor, dict]:
        loss = hinge = kept = torch.zeros((), device=task.images.device)
        for t, term, caption, others in zip(tasks, retain, captions, elsewhere):
            pick = torch.randperm(len(t.images), generator=gen, device=gen.device)[:cfg.batch_size].to(t.images.device)
            x = augment(t.images[pick], gen) if cfg.augment else t.images[pick]
            w = text_weights(model, t.prompt_tokens)
            h = hinge_loss(model, x, w, t.class_index, cfg.hinge_margin)
            hinge, loss = hinge + h.detach(), loss + h
            if caption is not None:
                loss = loss + lipschitz_loss(model, x, caption[:len(x)], cfg.lipschitz_std, cfg.n_samples, gen,
                                             cfg.chunk)
            if term is not None:
                r = term(model, w)
                kept, loss = kept + r.detach(), loss + cfg.retain_weight * r
            for other in others:
                r = other(model)
                kept, loss = kept + r.detach(), loss + cfg.retain_weight * r
        loss.backward()
        if row_mask is not None:  # only the classes' own rows (Adam leaves zero-gradient rows alone)
            params[0].grad.masked_fill_(row_mask, 0.0)
        return loss, {"loss": loss.detach(), "hinge": hinge, "retain": kept}

    start = time.time()
    with Snapshot(opt) as original:
        steps, trace, before, value = optimise(task, opt, params, cfg.max_steps, step, watch, stop_at, original)
        changed = original.changed(names)
    return MethodResult(changed, {"steps": steps, "acc_syn_before": before, "watch_final": value,
                                  "seconds_loop": round(time.time() - start, 1), "trace": trace})
