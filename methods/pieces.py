"""Pieces several unlearning methods share: the paper's loss, the stop rules on held-out images, what of
each tower a method may train, the features entering a tower's projection, and the prompts a text-side
method keeps in place. Methods import these from here, never from each other.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import UserError
from methods.base import ForgetTask, fill
from zeroshot import forget_margin, logits


# ----------------------------------------------------------------------------- the paper's loss
def lipschitz_loss(model: torch.nn.Module, x: torch.Tensor, tokens: torch.Tensor, std: float,
                   n_samples: int, generator: torch.Generator, chunk: int = 512) -> torch.Tensor:
    """Multimodal Lipschitz loss (SPEC §2) of images `x` and their caption tokens.

    The n_samples noisy copies of the batch go through the image tower as one batched,
    gradient-free forward (in chunks), not one forward per draw. The noise is drawn on the
    generator's device (the images' device: drawing 25 x 64 images on the CPU would cost a copy).
    """
    e_t = model.encode_text(tokens)  # (B, D), unnormalised
    e_x = model.encode_image(x)  # (B, D)
    noise = torch.randn((n_samples, *x.shape), generator=generator, device=generator.device).to(x.device) * std
    x0 = x.detach()
    x_noisy = (x0.unsqueeze(0) + noise).clamp(x0.min(), x0.max())  # (S, B, C, H, W); tensor bounds: no host sync
    with torch.no_grad():
        e_n = torch.cat([model.encode_image(c) for c in x_noisy.flatten(0, 1).split(chunk)])
    e_n = e_n.view(n_samples, len(x), -1)
    dx = (x0.unsqueeze(0) - x_noisy).flatten(2).norm(dim=2)  # (S, B)
    k = ((e_t - e_n).norm(dim=-1) + (e_x - e_n).norm(dim=-1)) / (2 * dx)
    return k.sum() / (2 * n_samples)


# ----------------------------------------------------------------------------- stop rules and towers
def heldout_rule(model, heldout: torch.Tensor, prompt_tokens: torch.Tensor, idx: int, stop_margin: float,
                 text_frozen: bool) -> Callable[[], float]:
    """The quantity --stop margin watches: the fraction of held-out synthetic images whose forget
    logit is above the best other class's minus stop_margin (lower = more forgotten)."""
    with torch.no_grad():
        w_fixed = text_weights(model, prompt_tokens) if text_frozen else None

    @torch.no_grad()
    def frac() -> float:
        w = w_fixed if w_fixed is not None else text_weights(model, prompt_tokens)
        m = torch.cat([forget_margin(logits(model, c, w), idx) for c in heldout.split(256)])
        return (m > -stop_margin).float().mean().item()
    return frac


def stop_rule(task: ForgetTask, cfg, text_frozen: bool) -> tuple[Callable[[], float], float]:
    """(the quantity a step loop watches, the level it stops at): the forget images' accuracy and
    min_train_acc_stop (--stop acc), or the held-out margin rule and stop_frac (--stop margin)."""
    if cfg.stop == "margin":
        return heldout_rule(task.model, task.heldout, task.prompt_tokens, task.class_index, cfg.stop_margin,
                            text_frozen), cfg.stop_frac
    return task.syn_accuracy, cfg.min_train_acc_stop


def tower_patterns(towers: str) -> list[str]:
    """Extra frozen patterns (methods.base.freeze) that keep the other tower fixed."""
    return {"both": [], "text": [r"^visual\."], "image": [r"^transformer\."], "token": [r"."]}[towers]


# ----------------------------------------------------------------------------- the projection of each tower
def projection(model: torch.nn.Module, side: str) -> tuple[str, str | None]:
    """State-dict names of the (matrix, bias) of a tower's last projection. The matrix is stored as
    (in, out) for bare parameters (text_projection, visual.proj) and (out, in) for nn.Linear."""
    if side == "text":
        if not isinstance(getattr(model, "text_projection", None), torch.nn.Parameter):
            raise UserError("this model's text projection is not a bare matrix (open_clip CLIP models with a "
                            "custom text tower are not supported by the methods that edit it)")
        return "text_projection", None
    visual = model.visual
    if isinstance(getattr(visual, "proj", None), torch.nn.Parameter):
        return "visual.proj", None
    if isinstance(getattr(getattr(visual, "attnpool", None), "c_proj", None), torch.nn.Linear):
        return "visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"
    raise UserError(f"no known final projection in the image tower "
                    f"({type(visual).__name__}); supported: a ViT's visual.proj, a ModifiedResNet's attnpool.c_proj")


def row_form(name: str, weight: torch.Tensor) -> torch.Tensor:
    """The projection as A with y = h A (+ bias): nn.Linear weights are stored transposed."""
    return weight.T if name.endswith(".weight") else weight


@contextmanager
def identity_projection(model: torch.nn.Module, side: str) -> Iterator[None]:
    """Within the block, the tower's projection is the identity (and its bias zero), so encode_text /
    encode_image return the features that enter it, through open_clip's own forward."""
    params = dict(model.named_parameters())
    name, bias = projection(model, side)
    w = params[name]
    width = row_form(name, w).shape[0]
    saved = {name: w.data} | ({bias: params[bias].data} if bias else {})
    try:
        w.data = torch.eye(width, device=w.device, dtype=w.dtype)
        if bias:
            params[bias].data = torch.zeros(width, device=w.device, dtype=w.dtype)
        yield
    finally:
        for n, t in saved.items():
            params[n].data = t


@torch.no_grad()
def features(model: torch.nn.Module, side: str, inputs: torch.Tensor, chunk: int = 256,
             desc: str | None = None) -> torch.Tensor:
    """The features entering the tower's projection, of token rows or images (one pass, in chunks;
    with `desc`, a progress bar once there are many chunks)."""
    encode = model.encode_text if side == "text" else model.encode_image
    chunks = inputs.split(chunk)
    with identity_projection(model, side):
        return torch.cat([encode(c) for c in tqdm(chunks, desc=desc, leave=False, disable=desc is None or len(chunks) < 8)])


@torch.no_grad()
def project(model: torch.nn.Module, side: str, h: torch.Tensor) -> torch.Tensor:
    """The tower's outputs for features h: the projection applied (y = h A + b), as its forward does."""
    params = dict(model.named_parameters())
    name, bias = projection(model, side)
    y = h @ row_form(name, params[name])
    return y + params[bias] if bias else y


# ----------------------------------------------------------------------------- zero-shot pieces
def text_weights(model: torch.nn.Module, prompt_tokens: torch.Tensor) -> torch.Tensor:
    """(D, K) zero-shot weights of the prompts, differentiable through the text tower."""
    return F.normalize(model.encode_text(prompt_tokens), dim=-1).T



# ----------------------------------------------------------------------------- prompts to keep
def kept_classes(task: ForgetTask, tasks: list[ForgetTask]) -> list[int]:
    """The class indices of `task`'s dataset that no task of the set forgets."""
    gone = {t.class_index for t in tasks if t.dataset == task.dataset}
    return [i for i in range(len(task.classnames)) if i not in gone]


def keep_prompts(tasks: list[ForgetTask]) -> list[str]:
    """What a text-side method keeps in place for a set: every kept class of each forget dataset in every
    template, then the other datasets' prompts (ForgetTask.other_prompts: train.py leaves out the
    forgotten classes), each prompt once."""
    own = [p for t in tasks for i in kept_classes(t, tasks) for p in t.class_prompts(t.classnames[i])]
    return list(dict.fromkeys(own + [p for t in tasks for p in t.other_prompts]))


def unrelated_words(tokenizer, n: int, exclude: set[str] = frozenset()) -> list[str]:
    """`n` names made of whole words of the tokenizer's BPE vocabulary: one, two or three words in turn
    (class names are often several words: a prompt's features depend on its length), drawn evenly over
    the vocabulary's merge order (frequent and rare words alike) and shuffled with a fixed seed. No
    word is a word of open_clip's ImageNet class names or in `exclude`.

    Methods keep the text embeddings of these prompts where they were. The audit measures the blast
    radius on the ImageNet class names (audit.py): training to keep those would hide the damage from it,
    so they are left out here on purpose."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    vocab = getattr(tokenizer, "encoder", None)
    if vocab is None:
        raise UserError(f"unrelated prompts need open_clip's SimpleTokenizer (with a BPE vocabulary); "
                        f"this model's tokenizer is {type(tokenizer).__name__}")
    banned = name_words(list(IMAGENET_CLASSNAMES)) | {w.lower() for w in exclude}
    words = [t[:-4] for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])
             if t.endswith("</w>") and t[:-4].isascii() and t[:-4].isalpha() and len(t) >= 8]
    words = [w for w in words if w not in banned]
    words = words[::max(1, len(words) // max(2 * n, 1))][:2 * n]
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(0)).tolist()
    names, at = [], 0
    for i in range(n):
        size = i % 3 + 1
        names.append(" ".join(words[order[(at + j) % len(words)]] for j in range(size)))
        at += size
    return names


def name_words(names: list[str]) -> set[str]:
    """The lower-case words of class names (to leave out of the unrelated prompts)."""
    return {w for c in names for w in re.findall(r"[a-z]+", c.lower().replace("_", " "))}


def unrelated_prompts(tasks: list[ForgetTask], n: int) -> list[str]:
    """`n` unrelated names (unrelated_words: no word of the class names of any dataset of `tasks`, or of an
    ImageNet class name), each in the next of the first task's dataset's templates in turn, the zero-shot
    one first."""
    templates = tasks[0].all_templates
    words = unrelated_words(tasks[0].tokenizer, n, name_words([c for t in tasks for c in t.classnames]))
    return [fill(templates[i % len(templates)], w) for i, w in enumerate(words)]
