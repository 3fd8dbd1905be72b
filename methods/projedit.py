"""projedit: a closed-form edit of a projection matrix, no gradient step (this project).

CLIP ends each tower with a linear projection (text: `text_projection`, width x D, applied to the
final LayerNorm's end-of-text token; image: `visual.proj` for a ViT, `visual.attnpool.c_proj` for a
ModifiedResNet). With h the features that enter it (row vectors) and A the projection in row form
(y = h A + b), the edit A' = A + Delta solves, in closed form:

    Delta = F M,  F = the directions where the keep set's features have (almost) no energy
    M = argmin |Z M - R|^2 + mu |U M|^2 + lambda |M|^2,   Z = H_forget F,  U = H_soft F

- hard keep set (H_keep): F spans the eigenvectors of H_keep^T H_keep whose eigenvalue is at most
  `null_tol` times the largest, so H_keep Delta = (H_keep F) M is zero to numerical precision when
  the keep set leaves room (fewer independent features than the width), and as small as null_tol
  allows otherwise: the null-space constraint of AlphaEdit (Fang et al., ICLR 2025, eq. 7-8) with
  the least-squares edit of ROME (Meng et al., NeurIPS 2022, §3.1) solved in that subspace;
- forget rows: R = target - the forget features' current outputs (`strength` of the way);
- soft keep set (H_soft, weight `soft_weight` per row relative to the forget rows): kept in the
  least-squares sense only; lambda (`ridge`, relative to Z's energy) keeps M small.
Closed-form class removal in CLIP's projection layer also appears in Mishra et al. 2025 (arXiv
2512.14137, a null-space projection of the text-embedding subspace); this is the editing variant.

Sides (`side`):
- text (default, no images): forget = the class in every template of its dataset; hard keep =
  every other class prompt of the dataset (every template) and of the run's other datasets; soft
  keep = `n_unrelated` prompts made of words from the tokenizer's vocabulary (methods.base.
  unrelated_words: no word of an ImageNet class name, which the audit's blast radius uses);
- image: forget = the synthetic forget images' features; hard keep = synthetic images of the
  dataset's other classes (`datagen.py --method improved --retain_per_class N`); no soft set;
- both: the two edits, each computed on the original model.
Targets (`target`, in the projection's output space): negate (-y: every image near the class then
ranks it last, the default), or mean (the mean output of the other classes: their prompts on the
text side, the retain images on the image side, scaled to each row's norm).
Data: text only (side text); synthetic forget and retain images (side image/both).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from common import UserError
from methods.base import ForgetTask, MethodResult, fill, name_words, unrelated_words

NAME = "projedit"
SIDES = ("text", "image", "both")
TARGETS = ("negate", "mean")


@dataclass
class Config:
    side: str = field(default="text", metadata={"choices": SIDES,
                                                "help": "projedit: which projection to edit (image/both read retain sets)"})
    target: str = field(default="negate", metadata={"choices": TARGETS,
                                                    "help": "projedit: where the forget features are mapped"})
    strength: float = 1.0  # projedit: fraction of the way from the current output to the target
    null_tol: float = 1e-4  # projedit: eigenvalue (relative to the largest) under which a direction is free to edit
    ridge: float = 1e-3  # projedit: lambda relative to the forget features' energy in the free directions
    soft_weight: float = 1.0  # projedit: weight of each unrelated prompt relative to a forget prompt (text side)
    n_unrelated: int = 1000  # projedit: unrelated prompts kept in the least-squares sense (text side)


def needs_images(cfg: Config) -> bool:
    return cfg.side != "text"


def side_sets(cfg: Config) -> list[str]:
    return ["retain"] if cfg.side != "text" else []


def check(cfg: Config) -> list[str]:
    problems = []
    if not 0 < cfg.strength <= 2:
        problems.append(f"--strength must be in (0, 2], got {cfg.strength}")
    if not 0 <= cfg.null_tol < 1:
        problems.append(f"--null_tol must be in [0, 1), got {cfg.null_tol}")
    if cfg.ridge < 0:
        problems.append(f"--ridge must be at least 0, got {cfg.ridge}")
    if cfg.soft_weight < 0:
        problems.append(f"--soft_weight must be at least 0, got {cfg.soft_weight}")
    if cfg.n_unrelated < 0:
        problems.append(f"--n_unrelated must be at least 0, got {cfg.n_unrelated}")
    return problems


# ----------------------------------------------------------------------------- the projection of each tower
def projection(model: torch.nn.Module, side: str) -> tuple[str, str | None]:
    """State-dict names of the (matrix, bias) of a tower's last projection. The matrix is stored as
    (in, out) for bare parameters (text_projection, visual.proj) and (out, in) for nn.Linear."""
    if side == "text":
        if not isinstance(getattr(model, "text_projection", None), torch.nn.Parameter):
            raise UserError("projedit --side text: this model's text projection is not a bare matrix "
                            "(open_clip CLIP models with a custom text tower are not supported)")
        return "text_projection", None
    visual = model.visual
    if isinstance(getattr(visual, "proj", None), torch.nn.Parameter):
        return "visual.proj", None
    if isinstance(getattr(getattr(visual, "attnpool", None), "c_proj", None), torch.nn.Linear):
        return "visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"
    raise UserError(f"projedit --side image: no known final projection in the image tower "
                    f"({type(visual).__name__}); supported: a ViT's visual.proj, a ModifiedResNet's attnpool.c_proj")


def _row_form(name: str, weight: torch.Tensor) -> torch.Tensor:
    """The projection as A with y = h A (+ bias): nn.Linear weights are stored transposed."""
    return weight.T if name.endswith(".weight") else weight


@contextmanager
def identity_projection(model: torch.nn.Module, side: str) -> Iterator[None]:
    """Within the block, the tower's projection is the identity (and its bias zero), so encode_text /
    encode_image return the features that enter it, through open_clip's own forward."""
    params = dict(model.named_parameters())
    name, bias = projection(model, side)
    w = params[name]
    width = _row_form(name, w).shape[0]
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
def features(model: torch.nn.Module, side: str, inputs: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features entering the projection, outputs of the projection) of token rows or images."""
    encode = model.encode_text if side == "text" else model.encode_image
    outputs = torch.cat([encode(c) for c in inputs.split(chunk)])
    with identity_projection(model, side):
        h = torch.cat([encode(c) for c in inputs.split(chunk)])
    return h, outputs


# ----------------------------------------------------------------------------- the closed form
def free_directions(h_keep: torch.Tensor, null_tol: float) -> torch.Tensor:
    """(width, k) orthonormal directions in which the keep features have at most null_tol of the
    largest eigenvalue of their second-moment matrix (all directions if there is no keep feature)."""
    width = h_keep.shape[1]
    if len(h_keep) == 0:
        return torch.eye(width, dtype=h_keep.dtype, device=h_keep.device)
    vals, vecs = torch.linalg.eigh(h_keep.T @ h_keep)
    return vecs[:, vals <= null_tol * vals.max()]


def solve_edit(h_forget: torch.Tensor, residual: torch.Tensor, h_keep: torch.Tensor, h_soft: torch.Tensor | None,
               null_tol: float, ridge: float, soft_weight: float) -> torch.Tensor:
    """Delta (width, D) in row form: h_forget Delta ~ residual, h_keep Delta ~ 0 exactly (null space),
    h_soft Delta ~ 0 in the least-squares sense. Computed in float64."""
    dt = torch.float64
    h_forget, residual, h_keep = h_forget.to(dt), residual.to(dt), h_keep.to(dt)
    free = free_directions(h_keep, null_tol)
    if free.shape[1] == 0:
        return torch.zeros(h_forget.shape[1], residual.shape[1], dtype=dt, device=h_forget.device)
    z = h_forget @ free
    gram = z.T @ z
    if h_soft is not None and len(h_soft):
        u = h_soft.to(dt) @ free
        gram = gram + soft_weight * len(z) / len(u) * (u.T @ u)
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    m = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=dt, device=gram.device), z.T @ residual)
    return free @ m


def targets(kind: str, out_forget: torch.Tensor, out_others: torch.Tensor) -> torch.Tensor:
    """Where each forget row's output should go: its negation, or the mean output of the other
    classes scaled to the row's norm."""
    if kind == "negate":
        return -out_forget
    mean = F.normalize(out_others.mean(0, keepdim=True), dim=-1)
    return mean * out_forget.norm(dim=-1, keepdim=True)


def edit(model: torch.nn.Module, side: str, forget_in: torch.Tensor, keep_in: torch.Tensor,
         others_out_in: torch.Tensor, soft_in: torch.Tensor | None, cfg: Config) -> tuple[dict, dict]:
    """The changed projection tensor (state-dict name -> value) of one side, and figures for the log.
    forget_in / keep_in / soft_in: token rows or images; others_out_in: inputs whose mean output is
    the `mean` target (the dataset's other classes)."""
    name, _ = projection(model, side)
    h_f, y_f = features(model, side, forget_in)
    h_k, _ = features(model, side, keep_in)
    h_s = features(model, side, soft_in)[0] if soft_in is not None and len(soft_in) else None
    y_o = features(model, side, others_out_in)[1] if cfg.target == "mean" else y_f
    residual = cfg.strength * (targets(cfg.target, y_f, y_o) - y_f)
    delta = solve_edit(h_f, residual, h_k, h_s, cfg.null_tol, cfg.ridge, cfg.soft_weight)
    weight = dict(model.named_parameters())[name].detach()
    new = (_row_form(name, weight).double() + delta)
    new = (new.T if name.endswith(".weight") else new).to(weight.dtype)
    with torch.no_grad():
        reached = F.cosine_similarity(h_f.double() @ (_row_form(name, weight).double() + delta), y_f.double() + residual)
        keep_moved = (h_k.double() @ delta).norm(dim=-1) / (h_k.double() @ _row_form(name, weight).double()).norm(dim=-1)
    figures = {f"{side}_free_dims": int(free_directions(h_k.double(), cfg.null_tol).shape[1]),
               f"{side}_forget_rows": len(h_f), f"{side}_keep_rows": len(h_k),
               f"{side}_soft_rows": 0 if h_s is None else len(h_s),
               f"{side}_target_cos": round(reached.min().item(), 4),
               f"{side}_keep_max_rel_change": float(f"{keep_moved.max().item():.3g}") if len(h_k) else 0.0}
    return {name: new}, figures


def unlearn(task: ForgetTask, cfg: Config) -> MethodResult:
    """The edit of the chosen side(s), computed from the original model; the model is not changed."""
    model, idx, start = task.model, task.class_index, time.time()
    changed, summary = {}, {"steps": 0}
    was_training = model.training
    model.eval()
    try:
        _edit_sides(task, cfg, changed, summary)
    finally:
        model.train(was_training)
    summary["seconds_edit"] = round(time.time() - start, 2)
    return MethodResult(changed, summary)


def _edit_sides(task: ForgetTask, cfg: Config, changed: dict, summary: dict) -> None:
    model, idx = task.model, task.class_index
    if cfg.side in ("text", "both"):
        others = [c for i, c in enumerate(task.classnames) if i != idx]
        keep = [p for c in others for p in task.class_prompts(c)] + list(task.other_prompts)
        templates = [task.template, *[t for t in task.templates if t != task.template]]
        words = unrelated_words(task.tokenizer, cfg.n_unrelated, name_words(task.classnames))
        soft = [fill(templates[i % len(templates)], w) for i, w in enumerate(words)]  # templates in turn
        forget = task.tokens(task.class_prompts(task.classname))
        others_in = task.tokens([task.prompts[i] for i in range(len(task.classnames)) if i != idx])
        c, figs = edit(model, "text", forget, task.tokens(keep), others_in, task.tokens(soft) if soft else None, cfg)
        changed.update(c)
        summary.update(figs)
    if cfg.side in ("image", "both"):
        if task.images is None or task.retain is None:
            raise UserError("projedit --side image needs the synthetic forget images and the retain sets")
        c, figs = edit(model, "image", task.images, task.retain, task.retain, None, cfg)
        changed.update(c)
        summary.update(figs)
