"""projedit: a closed-form edit of a projection matrix, no gradient step (this project).

CLIP ends each tower with a linear projection (text: `text_projection`, width x D, applied to the
final LayerNorm's end-of-text token; image: `visual.proj` for a ViT, `visual.attnpool.c_proj` for a
ModifiedResNet). With h the features that enter it (row vectors, read through open_clip's own
forward with the projection set to the identity) and A the projection in row form (y = h A + b),
the edit A' = A + Delta is, in closed form:

    Delta = F M,  F = directions where the keep set's features have (almost) no energy
    M = argmin |U M|^2 / n_soft + ridge |M|^2   subject to   Z M = R,   Z = H_forget F,  U = H_soft F

- hard keep set: F spans the eigenvectors of H_keep^T H_keep with eigenvalue at most `null_tol`
  times the largest, so H_keep Delta = (H_keep F) M is zero to numerical precision when the keep set
  leaves room (fewer independent features than the width; the default null_tol sits between
  float32 rounding and real feature energy), and as small as null_tol allows otherwise: the
  null-space constraint of AlphaEdit (Fang et al., ICLR 2025, §3);
- forget rows: Z M = R, R = `strength` x (target - current output), met exactly when possible (least
  squares, with the same ridge, when the forget rows cannot all be met: e.g. one image set);
- soft keep set: among the edits that do both, the one that moves the soft rows least in the
  mean-square sense: ROME's covariance-weighted rank-one solution (Meng et al., NeurIPS 2022, §3.1,
  eq. 2), with `ridge` (relative to the forget rows' energy) for directions no soft row visits.
Closed-form class removal in CLIP's projection layer is also the subject of Mishra et al. 2025 (arXiv
2512.14137: a null-space projection of the class's text-embedding subspace); this is the editing form.

Sides (`side`):
- text (default, no images): forget = the class in every template of its dataset; hard keep =
  the other class prompts of its dataset's zero-shot classifier (fewer than the width for every
  benchmark dataset, so kept exactly); soft keep, three groups of equal weight = the other
  datasets' class prompts the run evaluates (together they may outnumber the width: 517 for the paper's four),
  the other classes in the dataset's other templates, and `n_unrelated` names of 1-3 words from the
  tokenizer's vocabulary in its templates (methods.pieces.unrelated_words: no word of an ImageNet
  class name, which the audit's blast radius uses);
- image: forget = the synthetic forget images' features; hard keep = synthetic images of the
  dataset's other classes (`datagen.py --method confident --retain_per_class N`); no soft set;
- both: the two edits, each computed on the original model.
Targets (`target`, in the projection's output space): mean (default: the mean output of the
dataset's other classes, their zero-shot prompts on the text side, the retain images on the image
side, scaled to each row's norm), or negate (-y).
Data: text only (side text); synthetic forget and retain images (side image/both).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common import UserError
from methods.base import ForgetTask, MethodResult, option, too_small
from methods.pieces import features, kept_classes, project, projection, row_form, unrelated_prompts

NAME = "projedit"
SIDES = ("text", "image", "both")
TARGETS = ("negate", "mean")


@dataclass
class Config:
    side: str = option("text", "which projection to edit (image and both read the retain sets)", SIDES)
    target: str = option("mean", "where the forget features are mapped", TARGETS)
    strength: float = option(1.0, "fraction of the way from the current output to the target")
    null_tol: float = option(1e-10, "eigenvalue (relative to the largest) under which a direction is free to edit")
    ridge: float = option(0.1, "regularisation, relative to the forget features' energy")
    n_unrelated: int = option(1000, "text side: unrelated prompts kept in the least-squares sense")


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
    return problems + too_small(cfg, ridge=0, n_unrelated=0)


# ----------------------------------------------------------------------------- the closed form
def free_directions(h_keep: torch.Tensor, null_tol: float) -> torch.Tensor:
    """(width, k) orthonormal directions in which the keep features have at most null_tol of the
    largest eigenvalue of their second-moment matrix (all directions if there is no keep feature)."""
    width = h_keep.shape[1]
    if len(h_keep) == 0:
        return torch.eye(width, dtype=h_keep.dtype, device=h_keep.device)
    vals, vecs = torch.linalg.eigh(h_keep.T @ h_keep)
    return vecs[:, vals <= null_tol * vals.max()]


def solve_edit(h_forget: torch.Tensor, residual: torch.Tensor, h_keep: torch.Tensor, h_soft: list[torch.Tensor],
               null_tol: float, ridge: float) -> torch.Tensor:
    """Delta (width, D) in row form with h_keep Delta = 0 (null space of the keep features, up to null_tol),
    h_forget Delta = residual (least squares, ridge-regularised, when the rows cannot all be met), and
    the least drift of the soft rows: the smallest h_soft Delta in the mean-square sense, each group
    of rows weighing the same (ROME's covariance-weighted solution), plus a ridge on Delta. In float64."""
    dt = torch.float64
    h_forget, residual, h_keep = h_forget.to(dt), residual.to(dt), h_keep.to(dt)
    free = free_directions(h_keep, null_tol)
    if free.shape[1] == 0:
        raise UserError("projedit: the keep set's features span every direction of the projection's input "
                        f"(width {h_keep.shape[1]}, {len(h_keep)} rows): raise --null_tol to edit where they are weakest")
    z = h_forget @ free  # (n_f, k)
    k = free.shape[1]
    cov = torch.zeros(k, k, dtype=dt, device=z.device)
    for group in h_soft:
        u = group.to(dt) @ free
        cov += u.T @ u / len(u)
    eye = torch.eye(k, dtype=dt, device=z.device)
    scale = (z.pow(2).sum() / len(z) / k).clamp_min(1e-12)  # mean energy of a forget row per free direction
    g_inv_zt = torch.linalg.solve(cov + ridge * scale * eye, z.T)  # G^-1 Z^T, (k, n_f)
    inner = z @ g_inv_zt  # Z G^-1 Z^T, (n_f, n_f)
    eps = ridge * inner.diagonal().mean() * torch.eye(len(z), dtype=dt, device=z.device)
    m = g_inv_zt @ torch.linalg.solve(inner + eps, residual)
    return free @ m


def targets(kind: str, out_forget: torch.Tensor, out_others: torch.Tensor) -> torch.Tensor:
    """Where each forget row's output should go: its negation, or the mean output of the other
    classes scaled to the row's norm."""
    if kind == "negate":
        return -out_forget
    mean = F.normalize(out_others.mean(0, keepdim=True), dim=-1)
    return mean * out_forget.norm(dim=-1, keepdim=True)


def edit(model: torch.nn.Module, side: str, forget_in: torch.Tensor, keep_in: torch.Tensor,
         soft_in: list[torch.Tensor], cfg: Config, mean_of: list[tuple[int, torch.Tensor]] | None = None
         ) -> tuple[dict, dict]:
    """The changed projection tensor (state-dict name -> value) of one side, and figures for the log.
    forget_in / keep_in / soft_in (groups): token rows or images; keep_in (the dataset's other classes)
    also gives the `mean` target, their mean output. `mean_of` (a set of classes): for consecutive blocks
    of forget rows, (rows in the block, the rows whose mean output is their target: their dataset's kept
    classes)."""
    name, _ = projection(model, side)
    h_f, h_k = features(model, side, forget_in), features(model, side, keep_in)
    h_s = [features(model, side, group) for group in soft_in if len(group)]
    y_f = project(model, side, h_f)
    if cfg.target == "mean":
        blocks = [(len(h_f), h_k)] if mean_of is None else [(n, features(model, side, rows)) for n, rows in mean_of]
        starts = [sum(n for n, _ in blocks[:i]) for i in range(len(blocks))]
        goal = torch.cat([targets("mean", y_f[a:a + n], project(model, side, h)) for a, (n, h) in zip(starts, blocks)])
    else:
        goal = targets(cfg.target, y_f, y_f)
    residual = cfg.strength * (goal - y_f)
    delta = solve_edit(h_f, residual, h_k, h_s, cfg.null_tol, cfg.ridge)
    weight = dict(model.named_parameters())[name].detach()
    a = row_form(name, weight).double()
    new = ((a + delta).T if name.endswith(".weight") else a + delta).to(weight.dtype)
    with torch.no_grad():
        reached = F.cosine_similarity(h_f.double() @ (a + delta), y_f.double() + residual)
        keep_moved = (h_k.double() @ delta).norm(dim=-1) / (h_k.double() @ a).norm(dim=-1)
    figures = {f"{side}_free_dims": int(free_directions(h_k.double(), cfg.null_tol).shape[1]),
               f"{side}_forget_rows": len(h_f), f"{side}_keep_rows": len(h_k),
               f"{side}_soft_rows": sum(len(h) for h in h_s),
               f"{side}_target_cos": round(reached.min().item(), 4),
               f"{side}_keep_max_rel_change": float(f"{keep_moved.max().item():.3g}") if len(h_k) else 0.0}
    return {name: new}, figures


def unlearn(task: ForgetTask, cfg: Config) -> MethodResult:
    """The edit of the chosen side(s), computed from the original model; the model is not changed."""
    return unlearn_set([task], cfg)


def sets_ok(cfg: Config) -> bool:
    """A set is edited on the text side only (the image side's retain sets are one dataset's)."""
    return cfg.side == "text"


def unlearn_set(tasks: list[ForgetTask], cfg: Config) -> MethodResult:
    """The edit of every class of `tasks` in one solve: all their forget rows, the kept classes of every
    dataset of the set as the hard keep set, each class mapped to its own dataset's kept mean."""
    model, start = tasks[0].model, time.time()
    changed, summary = {}, {"steps": 0}
    was_training = model.training
    model.eval()
    try:
        _edit_sides(tasks, cfg, changed, summary)
    finally:
        model.train(was_training)
    summary["seconds_edit"] = round(time.time() - start, 2)
    return MethodResult(changed, summary)


def _edit_sides(tasks: list[ForgetTask], cfg: Config, changed: dict, summary: dict) -> None:
    task = tasks[0]
    model = task.model
    if cfg.side in ("text", "both"):
        datasets = {t.dataset: t for t in tasks}.values()  # one task per dataset of the set
        kept = {t.dataset: [t.prompts[i] for i in kept_classes(t, tasks)] for t in datasets}
        hard = [p for ps in kept.values() for p in ps]  # the datasets' classifiers: kept exactly
        soft = [[p for p in dict.fromkeys(p for t in tasks for p in t.other_prompts) if p not in set(hard)],
                [p for t in datasets for i in kept_classes(t, tasks) for p in t.class_prompts(t.classnames[i])[1:]],
                unrelated_prompts(tasks, cfg.n_unrelated)]  # in the templates in turn
        rows = [t.class_prompts(t.classname) for t in tasks]
        forget = task.tokens([p for r in rows for p in r])
        mean_of = None if len(tasks) == 1 else [(len(r), task.tokens(kept[t.dataset])) for r, t in zip(rows, tasks)]
        c, figs = edit(model, "text", forget, task.tokens(hard), [task.tokens(g) for g in soft if g], cfg, mean_of)
        changed.update(c)
        summary.update(figs)
    if cfg.side in ("image", "both"):
        if task.images is None or task.retain is None:
            raise UserError("projedit --side image needs the synthetic forget images and the retain sets")
        # --retain_scope all: every evaluated dataset's retain images are kept exactly too
        # (the mean target stays the forget class's own dataset's)
        keep = torch.cat([task.retain, *(x for x, _, _ in task.retain_elsewhere)])
        own = [(len(task.images), task.retain)] if task.retain_elsewhere else None
        c, figs = edit(model, "image", task.images, keep, [], cfg, own)
        changed.update(c)
        summary.update(figs)
