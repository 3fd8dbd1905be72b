"""lipschitz: the paper's method (SPEC §2), the default. Kravets & Namboodiri, WACV 2025, §3.

Fine-tune only the parameter tensors with the largest gradients, minimising the multimodal
Lipschitz loss of the forget class's image and text embeddings against input noise, until the
model no longer recognises the forget images. An epoch that does not lower their accuracy is
rolled back and the next one uses more noise and more layers. Data: the synthetic forget images
(or, with --generated_data 0, the class's real training images, as the paper's real-data variant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from methods.base import ForgetTask, MethodResult, NonFiniteLoss, Snapshot, freeze, not_a_fraction, not_positive, \
    option, too_small
from methods.pieces import lipschitz_loss

NAME = "lipschitz"
NEEDS_IMAGES = True
ARCH_KEYS = ("k_v", "k_t", "inc_v", "inc_t", "frozen", "lr")  # the paper's per-backbone settings


@dataclass
class Config:
    """SPEC §2 defaults. The backbone's configs/archs/<tag>.yaml sets ARCH_KEYS (k_v, k_t, the increments,
    the frozen patterns, lr); every field is a train.py option of the same name."""
    lr: float = option(5e-5, "Adam's learning rate (the backbone's configs/archs lr)")
    betas: tuple[float, float] = option((0.9, 0.98), "Adam's betas")
    eps: float = option(1e-6, "Adam's eps")
    weight_decay: float = option(0.2, "Adam's weight decay")
    batch_size: int = option(64, "forget images per batch")
    accum_steps: int = option(5, "an optimiser step after this many batches (and at an epoch's last)")
    n_samples: int = option(25, "noisy copies per image in the Lipschitz loss")
    max_epochs: int = option(30, "epochs at most")
    min_train_acc_stop: float = option(0.1, "stop once accuracy on the forget images is at most this")
    stds: list[float] = option([0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0], "the noise schedule: a rollback moves one on")
    k_v: int = option(5, "image-tower tensors kept per step at the first noise level (the backbone's)")
    k_t: int = option(5, "text-transformer tensors kept per step at the first noise level (the backbone's)")
    inc_v: list[int] = option([0, 2, 5, 8, 10, 15, 20], "added to k_v at each noise level (the backbone's)")
    inc_t: list[int] = option([0, 2, 5, 8, 10, 15, 20], "added to k_t at each noise level (the backbone's)")
    frozen: list[str] = option([], "regexes of parameter names that never change (the backbone's)")
    chunk: int = option(512, "noisy images per forward pass (memory)")


def check(cfg: Config) -> list[str]:
    problems = too_small(cfg, n_samples=1, max_epochs=1, batch_size=1, accum_steps=1, chunk=1, k_v=0, k_t=0)
    problems += not_positive(cfg, "lr") + not_a_fraction(cfg, "min_train_acc_stop")
    if not cfg.stds:
        problems.append("--stds needs at least one noise level")
    problems += [f"--{name} has {len(getattr(cfg, name))} entries: it needs one per noise level of --stds "
                 f"({len(cfg.stds)})" for name in ("inc_v", "inc_t") if len(getattr(cfg, name)) < len(cfg.stds)]
    return problems


def select_top_k(named: list, k: int) -> list:
    """Keep the gradients of the k tensors with the largest mean |grad|; drop all others.

    Dropped gradients are set to None, as the paper does, so Adam leaves those tensors
    bit-identical (a zero gradient would still move them through weight decay and momentum). Ties
    go to the tensor first in parameter order, as the paper's stable descending sort has them
    (torch.topk's order among equal scores is unspecified: zero-gradient tensors tie when k exceeds
    the tensors with a gradient).
    """
    with_grad = [(n, p) for n, p in named if p.grad is not None]
    if not with_grad:
        return []
    scores = torch.stack([p.grad.abs().sum() / p.numel() for _, p in with_grad])
    keep = set(torch.sort(scores, descending=True, stable=True).indices[:k].tolist())
    for i, (_, p) in enumerate(with_grad):
        if i not in keep:
            p.grad = None
    return [with_grad[i] for i in sorted(keep)]


def unlearn(task: ForgetTask, cfg: Config) -> MethodResult:
    """The paper's loop on one class (unlearn_set of a set of one)."""
    return unlearn_set([task], cfg)


def unlearn_set(tasks: list[ForgetTask], cfg: Config) -> MethodResult:
    """The paper's loop (SPEC §2) on the forget images of every class of `tasks`, each image with its own
    class's caption, in one loss; the model is handed back unchanged.

    As in the paper's code: the best accuracy starts at 1.0, so the first epoch always runs and
    counts as an improvement unless accuracy stays at 1; with several batches per epoch the loss is
    divided by the accumulation count, the top-k selection drops the other gradients after every
    backward, and accuracy is checked after every batch (recomputed only when a step changed the
    model); if no epoch ever improves, the result is the model as it was just before the last rollback.

    For a set, the paper's rule generalised: an epoch improves when it lowers the accuracy on all the
    forget images together (the paper's figure, on the pooled set), and the loop stops once every class
    is at or below min_train_acc_stop (the largest of the classes' accuracies). Synthetic images take
    turns by class (the first image of each class, then the second, ...), so every batch holds every
    class. A set of one is the paper's loop.
    """
    model = tasks[0].model
    vis, txt = freeze(model, cfg.frozen)
    names = {p: n for n, p in vis + txt}
    opt = torch.optim.Adam([p for _, p in vis + txt], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                           weight_decay=cfg.weight_decay)
    captions = tasks[0].tokens([t.caption for t in tasks])  # (C, L): one caption per class
    real = tasks[0].train_view is not None
    if not real:  # synthetic images: one fixed set, taking turns by class
        sizes = [len(t.images) for t in tasks]
        images, owner = torch.cat([t.images for t in tasks]), torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        cls, start = owner.tolist(), [sum(sizes[:i]) for i in range(len(sizes))]
        turns = sorted(range(len(cls)), key=lambda r: (r - start[cls[r]], cls[r]))

    def view() -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's images and each one's class (real ones: a fresh augmented view of every class)."""
        if not real:
            return images, owner
        xs = [t.train_view() for t in tasks]
        return torch.cat(xs), torch.cat([torch.full((len(x),), i) for i, x in enumerate(xs)])

    weights = [len(t.images) if not real else 1 for t in tasks]

    def watch() -> tuple[float, float, list[float]]:
        """(pooled accuracy, the worst class's, each class's); one class: its accuracy thrice."""
        accs = [t.syn_accuracy() for t in tasks]
        pooled = accs[0] if len(accs) == 1 else sum(a * w for a, w in zip(accs, weights)) / sum(weights)
        return pooled, max(accs), accs

    acc, worst, accs = watch()
    acc_before = acc
    best_acc, best_std, stage = 1.0, 0.0, 0
    best: dict | None = None
    last_rolled_back: dict = {}  # the model just before the last rollback (the paper's fallback)
    by_std: dict[str, dict] = {}
    epochs = rollbacks = steps = 0
    with Snapshot(opt) as original:  # everything ever changed, as it was before unlearning; restored on exit
        for epoch in range(cfg.max_epochs):
            std = cfg.stds[stage]
            k_v, k_t = cfg.k_v + cfg.inc_v[stage], cfg.k_t + cfg.inc_t[stage]
            epoch_start = Snapshot(opt)
            # the paper's loaders: synthetic images in their order; real ones shuffled and re-augmented each epoch
            x, rows_class = view()
            gen = tasks[0].generator
            order = torch.tensor(turns, device=x.device) if not real else \
                torch.randperm(len(x), generator=gen, device=gen.device).to(x.device)
            n_batches = math.ceil(len(x) / cfg.batch_size)
            acc_steps = min(n_batches, cfg.accum_steps)
            losses, epoch_steps = [], 0
            for b, idx in enumerate(order.split(cfg.batch_size)):
                tokens = captions[rows_class[idx.cpu()].to(captions.device)]
                loss = lipschitz_loss(model, x[idx], tokens, std, cfg.n_samples, gen, cfg.chunk) / acc_steps
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch} (std {std})",
                                        _summary(epochs, rollbacks, steps, acc_before, best_std))
                loss.backward()
                losses.append(loss.detach())
                chosen = select_top_k(vis, k_v) + select_top_k(txt, k_t)
                if (b + 1) % acc_steps == 0 or b + 1 == n_batches:
                    params = [p for _, p in chosen]
                    original.before_change(params)
                    epoch_start.before_change(params)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    if not all(torch.isfinite(p).all() for p in params):
                        raise NonFiniteLoss(f"weights became non-finite at epoch {epoch} (std {std})",
                                            _summary(epochs, rollbacks, steps, acc_before, best_std))
                    epoch_steps += 1
                    acc, worst, accs = watch()  # the model changed: measure again
                if worst <= cfg.min_train_acc_stop:
                    break
            epochs, steps = epochs + 1, steps + epoch_steps
            improved = acc < best_acc
            entry = by_std.setdefault(str(std), {"improved": False, "epochs": []})
            entry["epochs"].append({"epoch": epoch, "acc_syn": acc, "improved": improved, "k_v": k_v, "k_t": k_t,
                                    "steps": epoch_steps, "loss": (torch.stack(losses).mean() * acc_steps).item(),
                                    **({"acc_syn_classes": accs} if len(tasks) > 1 else {})})
            if improved:
                entry["improved"] = True
                if len(tasks) == 1 and tasks[0].on_improved is not None:
                    entry.update(tasks[0].on_improved())  # the paper logs real-data figures at every improving level
                elif any(t.on_improved is not None for t in tasks):
                    entry["classes"] = {f"{t.dataset}/{t.classname}": t.on_improved() for t in tasks
                                        if t.on_improved is not None}
                best_acc, best_std = acc, std
                best = original.changed(names)
            else:  # roll back this epoch and move along the schedule: more noise, more layers
                last_rolled_back = original.changed(names)
                epoch_start.restore()
                rollbacks += 1
                stage += 1
            tasks[0].tick(epoch=epoch, std=std, syn_acc=f"{acc:.3f}", best=f"{best_acc:.3f}")
            if stage >= len(cfg.stds) or worst <= cfg.min_train_acc_stop:
                break
    summary = _summary(epochs, rollbacks, steps, acc_before, best_std)
    summary["no_epoch_improved"] = best is None
    return MethodResult(last_rolled_back if best is None else best, summary, by_std)


def _summary(epochs: int, rollbacks: int, steps: int, acc_before: float, best_std: float) -> dict:
    return {"epochs": epochs, "rollbacks": rollbacks, "steps": steps, "acc_syn_before": acc_before,
            "best_std": best_std}
