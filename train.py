"""train: forget classes of a CLIP model with the multimodal Lipschitz loss (SPEC §2).

For each forget class: load its synthetic images, then fine-tune only the parameter tensors
with the largest gradients, minimising the Lipschitz loss of the class's image and text
embeddings against input noise, until the model no longer recognises the synthetic images.
An epoch that does not lower synthetic accuracy is rolled back and the next one uses more
noise and more layers. The best model is evaluated on the real test sets (SPEC §3).

    python train.py --backbone_arch demo --run_ds Digits,Shapes --output_dir results/results1/seed_0
    sh train.sh 1 1 0 1 25 0.1 "StanfordDogs,StanfordCars,Caltech101,OxfordFlowers" RN50
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import yaml
from tqdm import tqdm

from common import REPO, UserError, add_common_args, atomic_torch_save, atomic_write_json, atomic_write_text, \
    check_all, check_device, check_writable, class_seed, run_cli, seed_everything
from datasets import DatasetSplits, build_datasets
from datasets.base import load_rgb
from forget_cls import resolve_targets
from models import LoadedModel, check_model, config_image_size, load_model, resolve_arch
from synthetic import check_synthetic, clip_norm, model_view, read_synthetic, synthetic_path
from zeroshot import baselines, class_figures, classifier_weights, loader, predict, run_model_key
import beyond  # options beyond the paper (issue 8); all off by default

ARCH_CONFIGS = REPO / "configs" / "archs"


# ----------------------------------------------------------------------------- configuration
@dataclass
class UnlearnConfig:
    """SPEC §2 defaults. k_v, k_t, the increments and frozen patterns come from configs/archs/."""
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    batch_size: int = 64
    accum_steps: int = 5  # optimiser step after this many batches (or at the end of the epoch)
    n_samples: int = 25  # noisy copies per image in the Lipschitz loss
    max_epochs: int = 30
    min_acc: float = 0.1  # stop once synthetic accuracy <= this (--min_train_acc_stop)
    stds: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0])
    k_v: int = 5
    k_t: int = 5
    inc_v: list[int] = field(default_factory=lambda: [0, 2, 5, 8, 10, 15, 20])
    inc_t: list[int] = field(default_factory=lambda: [0, 2, 5, 8, 10, 15, 20])
    frozen: list[str] = field(default_factory=list)  # regexes on parameter names
    caption: str = "A picture of {}"
    chunk: int = 512  # noisy images per forward pass (memory)


def arch_config(lm: LoadedModel) -> dict:
    """configs/archs/<tag>.yaml, or the RN50/ViT-B-16 one by image-tower type for other models."""
    path = ARCH_CONFIGS / f"{lm.tag}.yaml"
    if not path.is_file():
        resnet = type(lm.model.visual).__name__ == "ModifiedResNet"
        path = ARCH_CONFIGS / ("RN50.yaml" if resnet else "ViT-B-16.yaml")
        print(f"note: no configs/archs/{lm.tag}.yaml; using {path.name}")
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- the method
def lipschitz_loss(model: torch.nn.Module, x: torch.Tensor, tokens: torch.Tensor, std: float,
                   n_samples: int, generator: torch.Generator, chunk: int = 512) -> torch.Tensor:
    """Multimodal Lipschitz loss (SPEC §2) of images `x` and their caption tokens.

    The n_samples noisy copies of the batch go through the image tower as one batched,
    gradient-free forward (in chunks), not one forward per draw.
    """
    e_t = model.encode_text(tokens)  # (B, D), unnormalised
    e_x = model.encode_image(x)  # (B, D)
    noise = torch.randn((n_samples, *x.shape), generator=generator, device=x.device) * std
    x_noisy = (x.detach().unsqueeze(0) + noise).clamp(x.min().item(), x.max().item())  # (S, B, C, H, W)
    with torch.no_grad():
        e_n = torch.cat([model.encode_image(c) for c in x_noisy.flatten(0, 1).split(chunk)])
    e_n = e_n.view(n_samples, len(x), -1)
    dx = (x.detach().unsqueeze(0) - x_noisy).flatten(2).norm(dim=2)  # (S, B)
    k = ((e_t - e_n).norm(dim=-1) + (e_x - e_n).norm(dim=-1)) / (2 * dx)
    return k.sum() / (2 * n_samples)


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


def select_top_k(named: list, k: int) -> list:
    """Keep the gradients of the k tensors with the largest mean |grad|; drop all others.

    Dropped gradients are set to None (not zero), so Adam leaves those tensors bit-identical:
    a zero gradient would still move them through weight decay and momentum.
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

    def restore(self) -> None:
        for p, (value, state) in self.saved.items():
            p.data.copy_(value)
            if state is None:
                self.optimizer.state.pop(p, None)
            else:
                self.optimizer.state[p] = state
        self.saved = {}


class NonFiniteLoss(Exception):
    pass


@dataclass
class UnlearnRecord:
    by_std: dict = field(default_factory=dict)  # str(std) -> {"improved", "epochs": [...]}
    epochs: int = 0
    rollbacks: int = 0
    steps: int = 0
    acc_before: float = float("nan")
    best_acc: float = float("nan")
    best_std: float = 0.0


def unlearn(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, syn_accuracy: Callable[[], float],
            cfg: UnlearnConfig, generator: torch.Generator, progress: tqdm | None = None
            ) -> tuple[dict[str, torch.Tensor], UnlearnRecord]:
    """Run the loop of SPEC §2 on model-ready `images`; return the best model's changed tensors.

    On return the model holds its original weights again; the result is {name: tensor} for
    every tensor the best model changed (apply it to get the unlearned model).
    """
    vis, txt = freeze(model, cfg.frozen)
    names = {p: n for n, p in vis + txt}
    opt = torch.optim.Adam([p for _, p in vis + txt], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                           weight_decay=cfg.weight_decay)
    original = Snapshot(opt)  # everything ever changed, as it was before unlearning
    rec = UnlearnRecord()
    rec.acc_before = rec.best_acc = syn_accuracy()
    best: dict[str, torch.Tensor] = {}
    stage = 0
    try:
        for epoch in range(cfg.max_epochs):
            if rec.best_acc <= cfg.min_acc or stage >= len(cfg.stds):
                break
            std = cfg.stds[stage]
            k_v, k_t = cfg.k_v + cfg.inc_v[stage], cfg.k_t + cfg.inc_t[stage]
            epoch_start = Snapshot(opt)
            order = torch.randperm(len(images), generator=generator).tolist()
            batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
            acc, losses, steps = float("nan"), [], 0
            for b, idx in enumerate(batches):
                loss = lipschitz_loss(model, images[idx], tokens[:len(idx)], std, cfg.n_samples, generator, cfg.chunk)
                if not torch.isfinite(loss):
                    raise NonFiniteLoss(f"loss became {loss.item()} at epoch {epoch} (std {std})")
                loss.backward()
                losses.append(loss.item())
                if (b + 1) % cfg.accum_steps and b + 1 < len(batches):
                    continue
                chosen = [p for _, p in select_top_k(vis, k_v) + select_top_k(txt, k_t)]
                original.before_change(chosen)
                epoch_start.before_change(chosen)
                opt.step()
                opt.zero_grad(set_to_none=True)
                if not all(torch.isfinite(p).all() for p in chosen):
                    raise NonFiniteLoss(f"weights became non-finite at epoch {epoch} (std {std})")
                steps += 1
                acc = syn_accuracy()
                if acc <= cfg.min_acc:
                    break
            rec.epochs, rec.steps = rec.epochs + 1, rec.steps + steps
            improved = acc < rec.best_acc
            entry = rec.by_std.setdefault(str(std), {"improved": False, "epochs": []})
            entry["epochs"].append({"epoch": epoch, "acc_syn": acc, "improved": improved, "k_v": k_v,
                                    "k_t": k_t, "steps": steps, "loss": sum(losses) / len(losses)})
            if improved:
                entry["improved"] = True
                rec.best_acc, rec.best_std = acc, std
                best = {names[p]: p.detach().clone() for p in original.saved}
            else:  # roll back this epoch and move along the schedule: more noise, more layers
                epoch_start.restore()
                rec.rollbacks += 1
                stage += 1
            if progress is not None:
                progress.set_postfix(epoch=epoch, std=std, syn_acc=f"{acc:.3f}", best=f"{rec.best_acc:.3f}")
                progress.update()
    except NonFiniteLoss as e:
        e.record = rec  # what happened before it (main logs it)
        raise
    finally:
        original.restore()
        opt.zero_grad(set_to_none=True)
    return best, rec


# ----------------------------------------------------------------------------- data and evaluation
def forget_images(args, lm: LoadedModel, ds: DatasetSplits, classname: str, key: str) -> torch.Tensor:
    """Model-ready images of the forget class: synthetic (default) or its real training images."""
    idx = ds.classnames.index(classname)
    if not args.generated_data:
        return torch.stack([lm.preprocess(load_rgb(d.impath)) for d in ds.train if d.label == idx])
    path = synthetic_path(args.generated_dir, ds.name, classname)
    data = read_synthetic(path)
    check_all(check_synthetic(data, path, key, image_size(lm), idx))
    return model_view(data["images"], *clip_norm(lm.model))


def image_size(lm: LoadedModel) -> int:
    size = lm.model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


class Evaluator:
    """Zero-shot figures of the current model, recomputing text weights only when text changed."""

    def __init__(self, lm: LoadedModel, datasets: dict[str, DatasetSplits], device: str, workers: int | None):
        self.lm, self.datasets, self.device, self.workers = lm, datasets, device, workers
        self.original_weights = {n: classifier_weights(lm, ds, device) for n, ds in datasets.items()}

    def weights(self, name: str, text_changed: bool) -> torch.Tensor:
        return classifier_weights(self.lm, self.datasets[name], self.device) if text_changed \
            else self.original_weights[name]

    def accuracy(self, images: torch.Tensor, label: int, weights: torch.Tensor) -> float:
        with torch.no_grad():
            preds = torch.cat([(self.lm.model.encode_image(c.to(self.device)) @ weights).argmax(-1)
                               for c in images.split(256)])
        return (preds == label).float().mean().item()

    def predict(self, items, weights):
        return predict(self.lm.model, loader(items, self.lm.preprocess, self.device, workers=self.workers),
                       weights, self.device)

    def final_results(self, main: str, classname: str, syn_images: torch.Tensor, text_changed: bool,
                      debug: bool, real_train: bool) -> dict:
        """The paper's final_results: forget-dataset figures, and every other dataset's accuracy."""
        ds = self.datasets[main]
        idx = ds.classnames.index(classname)
        w = self.weights(main, text_changed)
        figs = {"cls_acc_test": None, "no_cls_acc": None}
        if debug:  # as in the paper, --debug 0 skips the forget dataset's test split
            test = class_figures(*self.predict(ds.test, w), idx)
            figs = {"cls_acc_test": test["cls_acc_test"], "no_cls_acc": test["no_cls_acc"]}
        syn_acc = self.accuracy(syn_images, idx, w)
        figs["acc_train"] = syn_acc if real_train else None
        if not real_train:
            figs["acc_val_hard"] = syn_acc
            val = [d for d in ds.val if d.label == idx]
            figs["acc_val_true_data"] = class_figures(*self.predict(val, w), idx)["cls_acc_test"] if val else None
        out = {main: {classname: figs}}
        for name, other in self.datasets.items():
            if name != main:
                preds, labels = self.predict(other.test, self.weights(name, text_changed))
                out[name] = {"all": {"all_ds": (preds == labels).float().mean().item()}}
        return out


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = UnlearnConfig()
    p = argparse.ArgumentParser(description="Unlearn classes from CLIP with the multimodal Lipschitz loss (SPEC §2).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument("--output_dir", default=None, help="default: results/results1/seed_<seed>")
    p.add_argument("--generated_data", type=int, default=1, help="1: synthetic images; 0: the class's real train images")
    p.add_argument("--generated_dir", default=None, help="where datagen.py wrote (default: generated_<ARCH>)")
    p.add_argument("--save_best_model", type=int, default=0, help="1: save the changed tensors of each best model")
    p.add_argument("--debug", type=int, default=1, help="0: skip the forget dataset's test evaluation (as the paper)")
    p.add_argument("--max_epochs", type=int, default=d.max_epochs)
    p.add_argument("--min_train_acc_stop", type=float, default=d.min_acc)
    p.add_argument("--n_samples", type=int, default=d.n_samples)
    p.add_argument("--lr", type=float, default=None, help=f"default: configs/archs (else {d.lr})")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--accum_steps", type=int, default=d.accum_steps)
    p.add_argument("--chunk", type=int, default=d.chunk, help="noisy images per forward pass")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 4 on CUDA, 0 on CPU)")
    beyond.add_train_args(p)
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> tuple[dict, list]:
    """Check arguments, datasets, classes, model name and output folder before any heavy work."""
    problems = []
    beyond.resolve_train_args(args)  # --method preset and the beyond options' defaults
    for name in ("n_samples", "max_epochs", "batch_size", "accum_steps", "chunk"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 <= args.min_train_acc_stop < 1:
        problems.append(f"--min_train_acc_stop must be in [0, 1), got {args.min_train_acc_stop}")
    if args.lr is not None and not args.lr > 0:
        problems.append(f"--lr must be positive, got {args.lr}")
    tag, model_problems = check_model(args.backbone_arch, args.pretrained)
    problems += model_problems
    model_ok = not model_problems  # the model's name and weights are valid
    datasets, ds_problems = build_datasets(args.run_ds, args.data_root)
    targets, t_problems = resolve_targets(datasets, args.forget_labels, args.run_ds)
    problems += ds_problems + t_problems
    args.output_dir = args.output_dir or f"results/results1/seed_{args.seed}"
    args.generated_dir = args.generated_dir or f"generated_{tag}{args.generated_suffix}"
    problems += beyond.validate_train_args(args)
    problems += check_writable(args.output_dir) + check_device(args.device)
    if args.workers is not None and args.workers < 0:
        problems.append(f"--workers must be at least 0, got {args.workers}")
    if args.generated_data and tag:
        problems += check_synthetic_files(args, datasets, targets, model_ok)
        if model_ok and not beyond.is_faithful(args):
            problems += beyond.check_side_files(args, datasets, targets,
                                                run_model_key(args.backbone_arch, args.pretrained, args.seed))
    logs_path = Path(args.output_dir) / "logs.json"
    if logs_path.is_file():  # an earlier run in this folder must have the same settings
        try:
            load_logs(logs_path, {k: v for k, v in vars(args).items() if not (k == "lr" and v is None)})
        except UserError as e:
            problems.append(str(e))
    check_all(problems)
    return datasets, targets


def check_synthetic_files(args: argparse.Namespace, datasets: dict, targets: list, model_ok: bool) -> list[str]:
    """Every forget class's synthetic file: present, readable, and (model_ok: the model's name and
    weights are valid) made by this model, for its image size and class, with usable images."""
    problems, missing = [], []
    key = run_model_key(args.backbone_arch, args.pretrained, args.seed) if model_ok else None
    size = config_image_size(args.backbone_arch) if model_ok else None
    for d, c in targets:
        path = synthetic_path(args.generated_dir, d, c)
        if not path.is_file():
            missing.append(str(path))
            continue
        try:
            data = read_synthetic(path)
        except UserError as e:
            problems.append(str(e))
            continue
        if model_ok:
            problems += check_synthetic(data, path, key, size, datasets[d].classnames.index(c))
    if missing:
        problems.insert(0, f"no synthetic images for {len(missing)} class(es), e.g. {missing[0]}: "
                           f"run datagen.py first (sh datagen.sh ...) or set --generated_dir")
    return problems


SETTINGS_KEYS = ("backbone_arch", "pretrained", "generated_data", "n_samples", "max_epochs", "min_train_acc_stop",
                 "lr", "batch_size", "accum_steps", "seed", "debug", "method", "objective", "hinge_margin",
                 "retain_weight", "stop", "stop_margin", "stop_frac", "towers", "augment", "max_steps")


def load_logs(path: Path, settings: dict) -> dict:
    """Existing logs.json of this run (to skip finished classes), or a new one."""
    if not path.is_file():
        return {"settings": settings}
    try:
        logs = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON; move it away to start this run afresh") from None
    old = logs.get("settings", {})
    diff = [k for k in SETTINGS_KEYS if k in old and k in settings and old[k] != settings[k]]
    if diff:
        raise UserError(f"{path.parent} holds a run with other settings ({', '.join(f'{k}: {old[k]} vs {settings[k]}' for k in diff)}); "
                        "use another --output_dir")
    logs["settings"] = settings
    return logs


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    datasets, targets = validate(args)
    seed_everything(args.seed)
    lm = load_model(args.backbone_arch, args.pretrained, args.device, args.data_root)
    acfg = arch_config(lm)
    cfg = UnlearnConfig(lr=args.lr or acfg.get("lr", UnlearnConfig.lr), batch_size=args.batch_size,
                        accum_steps=args.accum_steps, n_samples=args.n_samples, max_epochs=args.max_epochs,
                        min_acc=args.min_train_acc_stop, k_v=acfg["k_v"], k_t=acfg["k_t"], inc_v=acfg["inc_v"],
                        inc_t=acfg["inc_t"], frozen=acfg["frozen"], chunk=args.chunk)
    key = run_model_key(args.backbone_arch, args.pretrained, args.seed)
    out = Path(args.output_dir)
    settings = {**vars(args), "lr": cfg.lr, "model": resolve_arch(args.backbone_arch), "model_key": key,
                "unlearn_config": asdict(cfg)}
    logs = load_logs(out / "logs.json", settings)
    atomic_write_text(out / "args.txt", json.dumps(settings, indent=1))
    before = {n: baselines(lm, ds, args.device) for n, ds in datasets.items()}
    previous = out / "zeroshot_before.json"  # a rerun with other --run_ds adds to it, never drops a dataset
    atomic_write_json(previous, {**(json.loads(previous.read_text()) if previous.is_file() else {}), **before})
    # every synthetic file is checked before the first class starts, not when its turn comes
    images = {(d, c): forget_images(args, lm, datasets[d], c, key) for d, c in targets}
    evaluator = Evaluator(lm, datasets, args.device, args.workers)
    model = lm.model
    for ds_name, classname in targets:
        if logs.get(ds_name, {}).get(classname, {}).get("final_results"):
            print(f"{ds_name}/{classname}: already in {out / 'logs.json'}, skipped")
            continue
        start = time.time()
        ds, idx = datasets[ds_name], datasets[ds_name].classnames.index(classname)
        x = images[(ds_name, classname)].to(args.device)
        tokens = lm.tokenizer([cfg.caption.format(classname)] * min(len(x), cfg.batch_size)).to(args.device)

        def syn_accuracy() -> float:
            # text weights follow the text tower, which changes with almost every step
            return evaluator.accuracy(x, idx, evaluator.weights(ds_name, text_changed=True))

        gen = torch.Generator(device=args.device).manual_seed(class_seed(args.seed, ds_name, classname))
        status = "done"
        with tqdm(total=cfg.max_epochs, desc=f"{ds_name}/{classname}", unit="epoch") as bar:
            try:
                best, rec = unlearn(model, x, tokens, syn_accuracy, cfg, gen, bar) if beyond.is_faithful(args) \
                    else beyond.unlearn_class(args, lm, cfg, ds, classname, x, tokens, syn_accuracy, gen, bar,
                                              [o.prompt(c) for o in datasets.values() if o is not ds
                                               for c in o.classnames])
            except NonFiniteLoss as e:
                best, rec = {}, getattr(e, "record", UnlearnRecord())
                status = f"error: {e}; this class keeps the original model"
        state = model.state_dict()
        original = {n: state[n].clone() for n in best}
        for n, t in best.items():  # evaluate the best model ...
            state[n].copy_(t)
        text_changed = any(not n.startswith("visual.") for n in best)  # transformer.*, or token rows (beyond)
        final = evaluator.final_results(ds_name, classname, x, text_changed, bool(args.debug),
                                        real_train=not args.generated_data)
        for n, t in original.items():  # ... then put the original weights back for the next class
            state[n].copy_(t)
        if args.save_best_model:
            atomic_torch_save(out / "models" / ds_name / f"{classname.replace('/', '_')}.pt",
                              {"changed": {n: t.cpu() for n, t in best.items()}, "model_key": key,
                               "arch": lm.name, "pretrained": lm.pretrained})
        secs = time.time() - start
        record = {"summary": {"epochs": rec.epochs, "rollbacks": rec.rollbacks, "steps": rec.steps,
                              "acc_syn_before": rec.acc_before, "best_std": rec.best_std,
                              "changed_tensors": sorted(best), "seconds": round(secs, 1), "status": status,
                              **({"trace": rec.trace} if hasattr(rec, "trace") else {})},
                  **rec.by_std, "final_results": final}
        logs.setdefault(ds_name, {})[classname] = record
        atomic_write_json(out / "logs.json", logs)  # after every class: an interruption loses nothing finished
        print(summary_line(ds_name, classname, before, final, rec, secs, status))
    return logs


def summary_line(ds: str, cls: str, before: dict, final: dict, rec: UnlearnRecord, secs: float, status: str) -> str:
    f, b = final[ds][cls], before[ds][cls]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    parts = [f"forget {fmt(b['cls_acc_test'])}->{fmt(f['cls_acc_test'])}",
             f"rest {fmt(b['no_cls_acc'])}->{fmt(f['no_cls_acc'])}"]
    parts += [f"{d} {fmt(next(iter(before[d].values()))['full_acc'])}->{fmt(v['all']['all_ds'])}"
              for d, v in final.items() if d != ds]
    parts.append(f"synthetic {fmt(rec.acc_before)}->{fmt(f.get('acc_val_hard', f.get('acc_train')))}")
    tail = (f"{rec.steps} steps" if hasattr(rec, "trace")  # beyond.py's hinge loop
            else f"{rec.epochs} epochs, {rec.rollbacks} rollbacks") + f", {secs:.1f} s"
    return f"{ds}/{cls}: " + " | ".join(parts) + f" | {tail}" + ("" if status == "done" else f" | {status}")


if __name__ == "__main__":
    run_cli(main)
