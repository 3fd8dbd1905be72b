"""What every unlearning method gets and returns, and the training plumbing they share.

A method is a module of this package with

    NAME: str                       # its --method name
    NEEDS_IMAGES: bool              # does it read the forget images (synthetic, or real with --generated_data 0)?
                                    # (or needs_images(cfg) -> bool, where the options decide)
    Config                          # a dataclass: every default of the method; each field is a train.py option
    unlearn(task: ForgetTask, cfg: Config) -> MethodResult
and optionally
    unlearn_set(tasks: list[ForgetTask], cfg: Config) -> MethodResult
                                    # forget several classes (--protocol joint) in one run; without it the
                                    # method refuses a set
    ARCH_KEYS: tuple[str, ...]      # Config fields the backbone's configs/archs/<tag>.yaml sets (e.g. "frozen")
    side_sets(cfg) -> list[str]     # other synthetic sets it reads: "heldout", "retain" (datagen.py --method confident)
    check(cfg) -> list[str]         # problems with the options, one line each (methods.base has the usual checks)

A method may change `task.model` while it runs but hands it back exactly as it found it: the result
holds the unlearned model's changed tensors (state_dict names), which train.py applies to evaluate,
saves as a delta, and reverts before the next class.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import torch
from tqdm import tqdm

from models import batchnorm_parameters


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
    heldout: torch.Tensor | None = None  # held-out synthetic forget images (another noise seed)
    retain: torch.Tensor | None = None  # synthetic images of the dataset's other classes
    retain_labels: torch.Tensor | None = None  # their class indices
    # --retain_scope all: (images, class indices, class prompt tokens) of each other dataset the run evaluates
    retain_elsewhere: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    on_improved: Callable[[], dict] | None = None  # real-data figures of the current model (--debug 1)
    progress: tqdm | None = None
    templates: list = field(default_factory=list)  # every template of the dataset (str or callable); [] = [template]
    dataset: str = ""  # the forget class's dataset name (to tell the classes of a set apart)

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

    @property
    def all_templates(self) -> list:
        """Every template of the dataset, the zero-shot one first."""
        return [self.template, *[t for t in self.templates if t != self.template]]

    def class_prompts(self, classname: str) -> list[str]:
        """`classname` in every template of its dataset (DatasetSplits.templates; the zero-shot one first)."""
        return list(dict.fromkeys(fill(t, classname) for t in self.all_templates))


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
def option(default: Any, help: str, choices: tuple | None = None) -> Any:
    """A Config field: its default (lists and tuples copied for every Config), the help text train.py's
    --help shows for it and, optionally, the values it may take."""
    meta = {"help": help, **({"choices": choices} if choices else {})}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def too_small(cfg, **minimum: float) -> list[str]:
    """One line per option of `cfg` below its minimum, e.g. too_small(cfg, rank=1)."""
    return [f"--{name} must be at least {low}, got {getattr(cfg, name)}"
            for name, low in minimum.items() if getattr(cfg, name) < low]


def not_positive(cfg, *names: str) -> list[str]:
    """One line per option of `cfg` that is not > 0 (a learning rate, a scale)."""
    return [f"--{n} must be positive, got {getattr(cfg, n)}" for n in names if not getattr(cfg, n) > 0]


def not_a_fraction(cfg, *names: str) -> list[str]:
    """One line per option of `cfg` outside [0, 1) (a stop level of an accuracy or a share)."""
    return [f"--{n} must be in [0, 1), got {getattr(cfg, n)}" for n in names if not 0 <= getattr(cfg, n) < 1]


# ----------------------------------------------------------------------------- trainable tensors
def freeze(model: torch.nn.Module, frozen: list[str]) -> tuple[list, list]:
    """Make only the unlearnable tensors trainable; return the (name, param) lists of both towers.

    BatchNorm layers go to eval mode with no gradient; parameters matching a `frozen` pattern and
    everything outside the image tower and the text transformer (token/positional embeddings,
    final LayerNorm, text projection, logit scale) get requires_grad False.
    """
    patterns = [re.compile(p) for p in frozen]
    bn_params = batchnorm_parameters(model)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
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


def optimise(task: ForgetTask, opt: torch.optim.Optimizer, params: list[torch.Tensor], max_steps: int,
             step: Callable[[], tuple[torch.Tensor, dict] | None], watch: Callable[[], float] | None = None,
             stop_at: float = 0.0, snapshot: Snapshot | None = None, summary: dict | None = None
             ) -> tuple[int, list[dict], float | None, float | None]:
    """The optimiser loop of the gradient methods: until `watch()` (measured before the first step and
    after each) is at most `stop_at`, `step` has nothing left to do, or max_steps.

    `step()` computes the loss and calls backward itself (in as many parts as it needs), and returns
    (loss, figures for the trace) or None when it is done. The loss must be finite (else NonFiniteLoss,
    with `summary`). The optimiser steps through `snapshot` (which saves what it changes) when given.
    Returns (steps, trace, the watched value before the first step, the last one)."""
    value = before = watch() if watch else None
    steps, trace = 0, []
    task.count_steps(max_steps)
    while steps < max_steps and (value is None or value > stop_at):
        opt.zero_grad(set_to_none=True)
        out = step()
        if out is None:
            break
        loss, figures = out
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"loss became {loss.item()} at step {steps}", {**(summary or {}), "steps": steps})
        snapshot.step(params) if snapshot is not None else opt.step()
        steps += 1
        if watch:
            value = figures["watch"] = watch()
        figures = {k: round(float(v), 6) for k, v in figures.items()}
        trace.append({"step": steps, **figures})
        task.tick(**{k: f"{v:.3g}" for k, v in figures.items()})
    return steps, trace, before, value
