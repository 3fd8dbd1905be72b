"""What every unlearning method gets and returns, and the pieces several methods share.

A method is a module of this package with

    NAME: str                       # its --method name
    NEEDS_IMAGES: bool              # does it read the forget images (synthetic, or real with --generated_data 0)?
                                    # (or needs_images(cfg) -> bool, where the options decide)
    Config                          # a dataclass: every default of the method; each field is a train.py option
    unlearn(task: ForgetTask, cfg: Config) -> MethodResult
and optionally
    side_sets(cfg) -> list[str]     # other synthetic sets it reads: "heldout", "retain" (datagen.py --method confident)
    check(cfg) -> list[str]         # problems with the options, one line each

A method may change `task.model` while it runs but hands it back exactly as it found it: the result
holds the unlearned model's changed tensors (state_dict names), which train.py applies to evaluate,
saves as a delta, and reverts before the next class.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import UserError



@dataclass
class ForgetTask:
    """One forget class, with everything a method may use. Tensors are on the model's device."""
    model: torch.nn.Module  # fp32; hand it back unchanged
    tokenizer: Callable
    classnames: list[str]  # the forget class's dataset, in label order
    template: str  # that dataset's zero-shot template, e.g. "a photo of a {}."
    class_index: int
    images: torch.Tensor | None  # model-ready forget images; None for methods that need none
    caption: str  # the paper's caption of every forget image: "A picture of {class}"
    other_prompts: list[str]  # the class prompts of the other datasets the run evaluates (to keep)
    syn_accuracy: Callable[[], float]  # zero-shot accuracy of the current model on `images` (the paper's watch)
    generator: torch.Generator  # every random draw on the model's device (seeded with `seed`)
    seed: int = 0  # the class's seed, for draws a method makes on the CPU
    train_view: Callable[[], torch.Tensor] | None = None  # real images: a fresh augmented view per call
    arch: dict = field(default_factory=dict)  # configs/archs/<tag>.yaml: frozen patterns, top-k schedule
    heldout: torch.Tensor | None = None  # held-out synthetic forget images (another noise seed)
    retain: torch.Tensor | None = None  # synthetic images of the dataset's other classes
    retain_labels: torch.Tensor | None = None  # their class indices
    on_improved: Callable[[], dict] | None = None  # real-data figures of the current model (--debug 1)
    progress: tqdm | None = None
    templates: list = field(default_factory=list)  # every template of the dataset (str or callable); [] = [template]

    def count_steps(self, total: int) -> None:
        """The progress bar counts optimisation steps, up to `total`, from here on."""
        if self.progress is not None:
            self.progress.reset(total=total)
            self.progress.unit = "step"

    def tick(self, **postfix) -> None:
        """One step (or epoch) done: the progress bar's figures and count."""
        if self.progress is not None:
            self.progress.set_postfix(**postfix)
            self.progress.update()

    @property
    def classname(self) -> str:
        return self.classnames[self.class_index]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @cached_property
    def prompts(self) -> list[str]:
        return [self.template.format(c.replace("_", " ")) for c in self.classnames]

    @cached_property
    def prompt_tokens(self) -> torch.Tensor:
        """(K, L) tokens of every class prompt of the forget class's dataset."""
        return self.tokenizer(self.prompts).to(self.device)

    def tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts).to(self.device)

    def class_prompts(self, classname: str) -> list[str]:
        """`classname` in every template of its dataset (DatasetSplits.templates; the zero-shot one first)."""
        return list(dict.fromkeys(fill(t, classname) for t in [self.template, *self.templates]))


def fill(template, name: str) -> str:
    """A prompt: a format string or a callable template (open_clip's ImageNet ones) with a class name."""
    name = name.replace("_", " ")
    return template(name) if callable(template) else template.format(name)


@dataclass
class MethodResult:
    changed: dict[str, torch.Tensor]  # state_dict name -> tensor of the unlearned model
    summary: dict  # merged into logs.json's per-class "summary" (steps, epochs, acc_syn_before, ...)
    log: dict = field(default_factory=dict)  # extra per-class entries of logs.json (the paper's per-noise-level log)


class NonFiniteLoss(Exception):
    """The loss or the weights stopped being finite; `summary` says what happened before."""

    def __init__(self, message: str, summary: dict | None = None):
        super().__init__(message)
        self.summary = summary or {}


# ----------------------------------------------------------------------------- options
def too_small(cfg, **minimum: float) -> list[str]:
    """One line per option of `cfg` below its minimum, e.g. too_small(cfg, rank=1)."""
    return [f"--{name} must be at least {low}, got {getattr(cfg, name)}"
            for name, low in minimum.items() if getattr(cfg, name) < low]


# ----------------------------------------------------------------------------- trainable tensors
def freeze(model: torch.nn.Module, frozen: list[str]) -> tuple[list, list]:
    """Make only the unlearnable tensors trainable; return the (name, param) lists of both towers.

    BatchNorm layers go to eval mode with no gradient; parameters matching a `frozen` pattern and
    everything outside the image tower and the text transformer (token/positional embeddings,
    final LayerNorm, text projection, logit scale) get requires_grad False.
    """
    patterns = [re.compile(p) for p in frozen]
    bn_params = set()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
            bn_params |= {id(p) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    towers = []
    for prefix, tower in (("visual", model.visual), ("transformer", model.transformer)):
        named = [(f"{prefix}.{n}", p) for n, p in tower.named_parameters()
                 if id(p) not in bn_params and not any(r.search(f"{prefix}.{n}") for r in patterns)]
        for _, p in named:
            p.requires_grad_(True)
        towers.append(named)
    return towers[0], towers[1]


class Snapshot:
    """Copy-on-write copy of the parameters (and their Adam state) that change after it is taken.

    Only the few tensors a step touches are copied, instead of the whole model and optimiser.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.saved: dict[torch.Tensor, tuple[torch.Tensor, dict | None]] = {}

    def before_change(self, params: list[torch.Tensor]) -> None:
        for p in params:
            if p not in self.saved:
                state = self.optimizer.state.get(p)
                copy = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()} if state else None
                self.saved[p] = (p.detach().clone(), copy)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc) -> None:
        """Leaving a method: the model and optimiser as they were (the method returns copies of what it changed)."""
        self.restore()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, params: list[torch.Tensor]) -> None:
        """The optimiser's step, after saving the tensors it is about to change (those with a gradient)."""
        self.before_change([p for p in params if p.grad is not None])
        self.optimizer.step()

    def changed(self, names: dict[torch.Tensor, str]) -> dict[str, torch.Tensor]:
        """Copies of the current values of every tensor changed since the snapshot, by name."""
        return {names[p]: p.detach().clone() for p in self.saved}

    def restore(self) -> None:
        for p, (value, state) in self.saved.items():
            p.data.copy_(value)
            if state is None:
                self.optimizer.state.pop(p, None)
            else:
                self.optimizer.state[p] = state
        self.saved = {}


# ----------------------------------------------------------------------------- zero-shot pieces
def text_weights(model: torch.nn.Module, prompt_tokens: torch.Tensor) -> torch.Tensor:
    """(D, K) zero-shot weights of the prompts, differentiable through the text tower."""
    return F.normalize(model.encode_text(prompt_tokens), dim=-1).T



@torch.no_grad()
def text_embeddings(model: torch.nn.Module, tokens: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N, D) L2-normalised text embeddings of many prompts, without gradient, in chunks."""
    return torch.cat([F.normalize(model.encode_text(t), dim=-1) for t in tokens.split(chunk)])


# ----------------------------------------------------------------------------- prompts to keep
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
