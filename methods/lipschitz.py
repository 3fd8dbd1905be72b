"""lipschitz: the paper's method (SPEC §2), the default. Kravets & Namboodiri, WACV 2025, §3.

Fine-tune only the parameter tensors with the largest gradients, minimising the multimodal
Lipschitz loss of the forget class's image and text embeddings against input noise, until the
model no longer recognises the forget images. An epoch that does not lower their accuracy is
rolled back and the next one uses more noise and more layers. Data: the synthetic forget images
(or, with --generated_data 0, the class's real training images, as the paper's real-data variant).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from methods.base import ForgetTask, MethodResult, NonFiniteLoss, Snapshot, freeze

NAME = "lipschitz"
NEEDS_IMAGES = True


@dataclass
class Config:
    """SPEC §2 defaults. k_v, k_t, the increments, the frozen patterns (and the demo's lr) come from
    configs/archs/<arch>.yaml; every field is a train.py option of the same name."""
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    batch_size: int = 64
    accum_steps: int = 5  # optimiser step after this many batches (and at the last batch of an epoch)
    n_samples: int = 25  # noisy copies per image in the Lipschitz loss
    max_epochs: int = 30
    min_train_acc_stop: float = 0.1  # stop once accuracy on the forget images is <= this
    stds: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0])
    k_v: int = 5  # image-tower tensors kept per step, at the first noise level
    k_t: int = 5  # text-transformer tensors kept per step, at the first noise level
    inc_v: list[int] = field(default_factory=lambda: [0, 2, 5, 8, 10, 15, 20])
    inc_t: list[int] = field(default_factory=lambda: [0, 2, 5, 8, 10, 15, 20])
    frozen: list[str] = field(default_factory=list)  # regexes on parameter names that never change
    chunk: int = 512  # noisy images per forward pass (memory)


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


def select_top_k(named: list, k: int) -> list:
    """Keep the gradients of the k tensors with the largest mean |grad|; drop all others.

    Dropped gradients are set to None, as the paper does, so Adam leaves those tensors
    bit-identical (a zero gradient would still move them through weight decay and momentum).
    """
    with_grad = [(n, p) for n, p in named if p.grad is not None]
    if not with_grad:
        return []
    scores = torch.stack([p.grad.abs().sum() / p.numel() for _, p in with_grad])
    keep = set(scores.topk(min(k, len(with_grad))).indices.tolist())
    for i, (_, p) in enumerate(with_grad):
        if i not in keep:
            p.grad = None
    return [with_grad[i] for i in sorted(keep)]


def unlearn(task: ForgetTask, cfg: Config) -> MethodResult:
    """The paper's loop (SPEC §2) on task.images; the model is handed back unchanged.

    As in the paper's code: the best accuracy starts at 1.0, so the first epoch always runs and
    counts as an improvement unless accuracy stays at 1; with several batches per epoch the loss is
    divided by the accumulation count, the top-k selection drops the other gradients after every
    backward, and accuracy is checked after every batch (recomputed only when a step changed the
    model); if no epoch ever improves, the result is the model as it was just before the last rollback.
    """
    model, images = task.model, task.images
    vis, txt = freeze(model, cfg.frozen)
    names = {p: n for n, p in vis + txt}
    opt = torch.optim.Adam([p for _, p in vis + txt], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                           weight_decay=cfg.weight_decay)
    tokens = task.tokens([task.caption] * min(len(images), cfg.batch_size))
    n_batches = math.ceil(len(images) / cfg.batch_size)
    acc_steps = min(n_batches, cfg.accum_steps)
    acc_before = acc = task.syn_accuracy()
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
            x = images if task.train_view is None else task.train_view()
            order = torch.arange(len(x), device=x.device) if task.train_view is None else \
                torch.randperm(len(x), generator=task.generator, device=task.generator.device).to(x.device)
            losses, epoch_steps = [], 0
            for b, idx in enumerate(order.split(cfg.batch_size)):
                loss = lipschitz_loss(model, x[idx], tokens[:len(idx)], std, cfg.n_samples, task.generator,
                                      cfg.chunk) / acc_steps
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
                    acc = task.syn_accuracy()  # the model changed: measure again
                if acc <= cfg.min_train_acc_stop:
                    break
            epochs, steps = epochs + 1, steps + epoch_steps
            improved = acc < best_acc
            entry = by_std.setdefault(str(std), {"improved": False, "epochs": []})
            entry["epochs"].append({"epoch": epoch, "acc_syn": acc, "improved": improved, "k_v": k_v, "k_t": k_t,
                                    "steps": epoch_steps, "loss": (torch.stack(losses).mean() * acc_steps).item()})
            if improved:
                entry["improved"] = True
                if task.on_improved is not None:  # the paper logs real-data figures at every improving level
                    entry.update(task.on_improved())
                best_acc, best_std = acc, std
                best = original.changed(names)
            else:  # roll back this epoch and move along the schedule: more noise, more layers
                last_rolled_back = original.changed(names)
                epoch_start.restore()
                rollbacks += 1
                stage += 1
            task.tick(epoch=epoch, std=std, syn_acc=f"{acc:.3f}", best=f"{best_acc:.3f}")
            if stage >= len(cfg.stds) or acc <= cfg.min_train_acc_stop:
                break
    summary = _summary(epochs, rollbacks, steps, acc_before, best_std)
    summary["no_epoch_improved"] = best is None
    return MethodResult(last_rolled_back if best is None else best, summary, by_std)


def _summary(epochs: int, rollbacks: int, steps: int, acc_before: float, best_std: float) -> dict:
    return {"epochs": epochs, "rollbacks": rollbacks, "steps": steps, "acc_syn_before": acc_before,
            "best_std": best_std}
