"""textspace: forget a class from its text alone, no image (in the spirit of Kravets & Namboodiri,
"Zero-shot CLIP Class Forgetting via Text-Image Space Adaptation", TMLR 2025: class removal
without any image, from the text of the class, by changing the text side; the authors' summary
names the text projection matrix as what changes).

The text side is adapted so that the forget class's prompts move away from where its images are,
while every other prompt stays where it was. Without images, the original text embeddings stand in
for them (CLIP trains both towers into one space): the *proxy* of the forget class is the mean of
its prompts' original embeddings (every template of the dataset), the proxy of another class is its
own prompt's original embedding. Loss (logits at the evaluation scale 100, hinges in cosine units):
- forget: for each template's forget prompt, its logit on the forget proxy must fall `margin` below
  the best other class of the dataset (the zero-shot classifier with that prompt as the class's weight);
- no theft: its logit on each other class's proxy must stay `margin` below that class's own logit,
  so the moved prompt does not take another class's images;
- keep (x `keep_weight`): |e - e_0|^2 / 2 (= 1 - cos) of every other class prompt of the dataset
  (every template), of the other datasets the run evaluates, and of a batch of `n_unrelated` unrelated prompts
  (words of the tokenizer's vocabulary, never an ImageNet class name's word: methods.pieces.unrelated_words;
  the audit measures the blast radius on those, so they must not be trained on).
What adapts (`adapt`):
- proj: the text projection (a bare nn.Parameter that encode_text multiplies outside any module's
  forward, which peft cannot wrap: it is trained in full; width x D values);
- blocks: a LoRA adapter (peft, rank `rank`, alpha `lora_alpha`) on the MLP linears (mlp.c_fc,
  mlp.c_proj) of the last `blocks` text blocks. Attention is left alone: nn.MultiheadAttention reads
  out_proj.weight directly, so a LoRA on attn.out_proj alone is bypassed, and peft's
  MultiheadAttention adapter re-registers the attention's parameters when it is removed;
- blocks+proj: both.
With `proj` alone the text features entering the projection are fixed, so they are computed once
and a step costs a matrix product (TextEncoder); with `blocks` every prompt of the keep set runs
through the text tower, forward and backward, at every step, in chunks of PROMPTS_PER_BATCH prompts
(time grows with classes x templates, memory does not).
The adapter is merged into the base weights for the result (changed tensors by the original
state_dict names) and removed: the model is handed back with its own modules and values.
Adam until every hinge is satisfied or `max_steps`. Nothing of the image tower changes, so a linear
probe on image features still finds the class (on the demo, alias prompts move with the name's: the
projection is shared by every prompt).
Data: none besides the class names and templates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from methods.base import ForgetTask, MethodResult, not_positive, optimise, option, too_small
from methods.pieces import features, keep_prompts, kept_classes, unrelated_prompts
from zeroshot import EVAL_SCALE, PROMPTS_PER_BATCH

NAME = "textspace"
NEEDS_IMAGES = False
ADAPT = ("proj", "blocks", "blocks+proj")
ADAPTER = "textspace"


@dataclass
class Config:
    adapt: str = option("proj", "what of the text side adapts: the text projection, LoRA on the last blocks' MLPs, "
                                "or both", ADAPT)
    blocks: int = option(1, "--adapt blocks*: LoRA on the MLP of this many last text blocks")
    rank: int = option(4, "--adapt blocks*: LoRA rank")
    lora_alpha: float = option(8.0, "--adapt blocks*: LoRA alpha (the update is scaled by alpha / rank)")
    margin: float = option(30.0, "logits (scale 100) the forget prompt must fall below the best other class")
    keep_weight: float = option(10.0, "weight of the keep term")
    n_unrelated: int = option(1000, "unrelated prompts kept in place")
    unrelated_batch: int = option(256, "unrelated prompts per step")
    max_steps: int = option(300, "optimiser steps at most")
    lr: float = option(1e-3, "Adam's learning rate")
    betas: tuple[float, float] = option((0.9, 0.98), "Adam's betas")
    eps: float = option(1e-6, "Adam's eps")


def check(cfg: Config) -> list[str]:
    return too_small(cfg, blocks=1, rank=1, max_steps=1, unrelated_batch=1, margin=0, keep_weight=0, n_unrelated=0) + \
        not_positive(cfg, "lora_alpha", "lr")


def lora_targets(model: torch.nn.Module, blocks: int) -> str:
    """A regular expression that matches the full names of the MLP linears of the last `blocks` text blocks.

    A string, not a list: peft matches a list's names as suffixes, so `transformer.resblocks.1.mlp.c_fc` would
    also take `visual.transformer.resblocks.1.mlp.c_fc` of a ViT image tower; a string must match the whole name."""
    n = len(model.transformer.resblocks)
    last = "|".join(str(i) for i in range(max(0, n - blocks), n))
    return rf"transformer\.resblocks\.({last})\.mlp\.(c_fc|c_proj)"


class Adapted:
    """The model with the chosen adapter in place while the block runs; `changed()` gives the merged
    tensors by their original names. On exit every module, value and requires_grad flag is as before."""

    def __init__(self, task: ForgetTask, cfg: Config):
        self.model, self.cfg, self.seed = task.model, cfg, task.seed
        self.tuner = None
        self.proj0 = None

    def __enter__(self) -> "Adapted":
        model, cfg = self.model, self.cfg
        self.grad_flags = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        params = []
        if "blocks" in cfg.adapt:
            from peft import LoraConfig
            from peft.tuners.lora import LoraModel
            config = LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                target_modules=lora_targets(model, cfg.blocks))
            device = next(model.parameters()).device
            # LoRA's A matrices are drawn from the global stream: draw them from the class's seed, in a fork
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                self.tuner = LoraModel(model, config, ADAPTER)
            params += [p for n, p in model.named_parameters() if "lora_" in n]
        if "proj" in cfg.adapt:
            self.proj0 = model.text_projection.detach().clone()
            model.text_projection.requires_grad_(True)
            params.append(model.text_projection)
        for p in params:
            p.requires_grad_(True)
        self.params = params
        return self

    @torch.no_grad()
    def changed(self) -> dict[str, torch.Tensor]:
        from peft.tuners.lora import LoraLayer
        out = {}
        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
                base = module.get_base_layer()
                out[f"{name}.weight"] = base.weight.detach() + module.get_delta_weight(ADAPTER).to(base.weight.dtype)
        if self.proj0 is not None:
            out["text_projection"] = self.model.text_projection.detach().clone()
        return out

    def __exit__(self, *exc) -> None:
        if self.tuner is not None:
            self.tuner.unload()  # the original nn.Linear modules back in place, unmerged
            self.model.__dict__.pop("peft_config", None)
        if self.proj0 is not None:
            with torch.no_grad():
                self.model.text_projection.copy_(self.proj0)
        for p, flag in self.grad_flags.items():
            p.requires_grad_(flag)
            p.grad = None


def unit_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b|^2 / 2 of unit rows (= 1 - cos), exactly 0 for identical rows."""
    return (a - b).pow(2).sum(-1) / 2


class TextEncoder:
    """encode_text of fixed token sets while the adapter trains. With the projection alone adapting
    (`adapt proj`, and `cache`), the features entering it never change: they are computed once
    (open_clip's own forward with the projection set to the identity: methods.pieces.features) and each step
    is one matrix product instead of the whole text transformer, forward and backward."""

    def __init__(self, model: torch.nn.Module, sets: dict[str, torch.Tensor], cached: bool):
        self.model, self.tokens = model, sets
        self.h = {k: features(model, "text", t, desc=f"text features of the {k} prompts") for k, t in sets.items()} \
            if cached else None
        # rows per differentiable pass: a matrix product when cached, else the whole text tower (memory)
        self.chunk = max(len(t) for t in sets.values()) if cached else PROMPTS_PER_BATCH

    def __call__(self, name: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Unit text embeddings of the set `name` (optionally some of its rows), differentiable."""
        if self.h is not None:
            h = self.h[name] if rows is None else self.h[name][rows]
            return F.normalize(h @ self.model.text_projection, dim=-1)
        t = self.tokens[name] if rows is None else self.tokens[name][rows]
        if torch.is_grad_enabled():  # a differentiable pass: the caller bounds its rows (self.chunk)
            return F.normalize(self.model.encode_text(t), dim=-1)
        return torch.cat([F.normalize(self.model.encode_text(c), dim=-1) for c in t.split(PROMPTS_PER_BATCH)])


def unlearn(task: ForgetTask, cfg: Config, cache: bool = True) -> MethodResult:
    """Forget one class (unlearn_set of a set of one)."""
    return unlearn_set([task], cfg, cache)


def unlearn_set(tasks: list[ForgetTask], cfg: Config, cache: bool = True) -> MethodResult:
    """Adam on the adapter until every hinge of every class of `tasks` holds, or max_steps. cache=False
    recomputes the whole text tower every step even for `adapt proj` (the naive baseline of
    bench/bench_textspace.py).

    A set: each class has its own forget and no-theft hinges (summed), against the classes of its dataset
    that the set keeps; the keep term holds every prompt of a class the set keeps (methods.pieces.keep_prompts)."""
    task = tasks[0]
    model, gen = task.model, task.generator
    sets, kept_of = {}, []
    for j, t in enumerate(tasks):
        kept = kept_classes(t, tasks)
        sets[f"forget{j}"] = t.tokens(t.class_prompts(t.classname))  # (T, L): the class in every template
        kept_of.append(f"others:{t.dataset}")
        sets.setdefault(kept_of[-1], t.prompt_tokens[kept])  # the zero-shot classifier's kept prompts
    sets["keep"] = task.tokens(keep_prompts(tasks))
    words = unrelated_prompts(tasks, cfg.n_unrelated)
    if words:
        sets["unrelated"] = task.tokens(words)
    was_training = model.training
    model.eval()
    encode = TextEncoder(model, sets, cached=cache and cfg.adapt == "proj")
    with torch.no_grad():  # the original embeddings, by the same encoder as every step's
        proxies = [F.normalize(encode(f"forget{j}").mean(0, keepdim=True), dim=-1) for j in range(len(tasks))]
        proxy_others = {k: encode(k) for k in dict.fromkeys(kept_of)}  # (K-1, D) per dataset
        keep0 = encode("keep")
        unrelated0 = encode("unrelated") if words else None
    last = {"forget": torch.ones(()), "theft": torch.ones(())}

    def step() -> tuple[torch.Tensor, dict] | None:
        forget_loss = theft = torch.zeros((), device=keep0.device)
        w = {k: encode(k) for k in proxy_others}  # (K-1, D) per dataset
        for j, proxy in enumerate(proxies):
            f_now, w_others, p_others = encode(f"forget{j}"), w[kept_of[j]], proxy_others[kept_of[j]]  # (T, D)
            # forget: each template's prompt below the best kept class on the forget proxy
            best_other = (EVAL_SCALE * proxy @ w_others.T).max(-1).values  # (1,)
            forget_loss = forget_loss + F.relu(EVAL_SCALE * proxy @ f_now.T - best_other + cfg.margin).mean() / EVAL_SCALE
            # no theft: below each kept class's own logit on that class's proxy
            own = EVAL_SCALE * (p_others * w_others).sum(-1, keepdim=True)  # (K-1, 1)
            theft = theft + F.relu(EVAL_SCALE * p_others @ f_now.T - own + cfg.margin).mean() / EVAL_SCALE
        last.update(forget=forget_loss.detach(), theft=theft.detach())
        if (forget_loss + theft).item() == 0:  # every hinge satisfied
            return None
        kept = torch.zeros((), device=keep0.device)
        if unrelated0 is not None:
            pick = torch.randperm(len(unrelated0), generator=gen, device=gen.device)[:cfg.unrelated_batch]
            pick = pick.to(unrelated0.device)
            kept = unit_sq_dist(encode("unrelated", pick), unrelated0[pick]).mean()
        (forget_loss + theft + cfg.keep_weight * kept).backward()
        kept = kept.detach()
        # the keep set through the text tower in bounded chunks, each backward on its own (the gradients
        # add up to the whole set's): StanfordDogs' is 9,600 prompts
        for rows in torch.arange(len(keep0), device=keep0.device).split(encode.chunk):
            part = unit_sq_dist(encode("keep", rows), keep0[rows]).sum() / len(keep0)
            (cfg.keep_weight * part).backward()
            kept = kept + part.detach()
        return forget_loss + theft + cfg.keep_weight * kept, {"forget": last["forget"], "theft": last["theft"],
                                                             "keep": kept}

    start = time.time()
    try:
        with Adapted(task, cfg) as adapted:
            opt = torch.optim.Adam(adapted.params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)
            steps, trace, _, _ = optimise(task, opt, adapted.params, cfg.max_steps, step)
            changed = adapted.changed()
    finally:
        model.train(was_training)
    return MethodResult(changed, {"steps": steps, "forget_final": round(last["forget"].item(), 5),
                                  "theft_final": round(last["theft"].item(), 5),
                                  "seconds_loop": round(time.time() - start, 1), "trace": trace})
