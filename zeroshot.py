"""Zero-shot classification (SPEC §0) and the "before unlearning" baselines of a model.

Classifier weights are the L2-normalised text embeddings of the dataset's prompt for every class
(open_clip's build_zero_shot_classifier); logits are 100 * normalise(f_img(x)) @ W.

    python zeroshot.py --backbone_arch demo --run_ds Digits,Shapes
    python zeroshot.py --backbone_arch RN50 --run_ds StanfordDogs --compare
"""
from __future__ import annotations

import interrupts  # noqa: F401  (first: Ctrl-C during the imports below is one line)

import argparse
import hashlib
import json
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import ArgumentParser, REPO, atomic_write_json, cache_dir, check_all, check_device, \
    check_writable, default_data_root, default_device, run_cli, seed_everything
from datasets import DatasetSplits, ImageDataset, build_datasets
from models import LoadedModel, arch_tag, check_model, default_pretrained, demo_weights_path, load_model

EVAL_SCALE = 100.0  # the paper's fixed logit scale for evaluation (not the model's learned one)
# prompts per text-tower forward pass: memory stays bounded whatever the number of classes and templates
# (StanfordCars' 196 classes x 80 templates would be 15,680 prompts in one pass, ~40 GB for RN50)
PROMPTS_PER_BATCH = 256
REFERENCE = REPO / "reference"  # the paper's published zero-shot figures


@torch.no_grad()
def classifier_weights(lm: LoadedModel, ds: DatasetSplits, device: str) -> torch.Tensor:
    """(D, K) zero-shot weights for every class of `ds`, with the dataset's template."""
    names = [c.replace("_", " ") for c in ds.classnames]
    return build_classifier(lm.model, lm.tokenizer, names, ds.template, device)


def build_classifier(model, tokenizer, classnames: Sequence[str], template: str | Sequence, device: str
                     ) -> torch.Tensor:
    """(D, K) normalised mean embedding of each class name over a template, or over a list of them
    (format strings or open_clip's callables), in eval mode; at most PROMPTS_PER_BATCH prompts (or one
    class's templates, if more) per forward pass."""
    was_training = model.training
    model.eval()
    templates = [template] if isinstance(template, str) else list(template)
    w = open_clip.build_zero_shot_classifier(model, tokenizer, classnames, templates,
                                             num_classes_per_batch=max(1, PROMPTS_PER_BATCH // len(templates)),
                                             device=device,
                                             use_tqdm=len(classnames) * len(templates) > 8 * PROMPTS_PER_BATCH)
    model.train(was_training)
    return w


def logits(model: torch.nn.Module, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Zero-shot logits at the evaluation scale for a batch of model-ready images."""
    return EVAL_SCALE * F.normalize(model.encode_image(images), dim=-1) @ weights


def loader(items, preprocess, device: str, batch_size: int = 256, workers: int | None = None):
    workers = (4 if str(device).startswith("cuda") else 0) if workers is None else workers
    return torch.utils.data.DataLoader(ImageDataset(items, preprocess), batch_size=batch_size,
                                       num_workers=workers, pin_memory=str(device).startswith("cuda"))


def forget_margin(class_logits: torch.Tensor, idx: int) -> torch.Tensor:
    """Class `idx`'s logit minus the best other class's logit, per image (> 0: `idx` is the top-1)."""
    others = class_logits.clone()
    others[:, idx] = float("-inf")
    return class_logits[:, idx] - others.max(1).values


@torch.no_grad()
def predict(model: torch.nn.Module, data, weights: torch.Tensor, device: str,
            desc: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels over a DataLoader of (image, label) batches."""
    model.eval()
    preds, labels = [], []
    batches = iter(data)
    try:
        for x, y in tqdm(batches, desc=desc, leave=False, disable=desc is None):
            preds.append(logits(model, x.to(device), weights).argmax(-1).cpu())
            labels.append(y)
    except BaseException:
        # e.g. an unreadable image in a worker: stop the workers now; left to the garbage collector
        # (the error's traceback keeps them alive), their shutdown stalls for 5 s
        getattr(batches, "_shutdown_workers", lambda: None)()
        raise
    return torch.cat(preds), torch.cat(labels)


@torch.no_grad()
def image_features(model: torch.nn.Module, data, device: str, desc: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features (on `device`) and labels over a DataLoader of (image, label) batches."""
    model.eval()
    feats, labels = [], []
    for x, y in tqdm(data, desc=desc, leave=False, disable=desc is None):
        feats.append(F.normalize(model.encode_image(x.to(device)), dim=-1))
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def class_figures(preds: torch.Tensor, labels: torch.Tensor, cls: int) -> dict[str, float]:
    """Accuracy on one class's images, on all the others, and on all (SPEC §3)."""
    correct = (preds == labels).float()
    mask = labels == cls
    return {"cls_acc_test": correct[mask].mean().item() if mask.any() else float("nan"),
            "no_cls_acc": correct[~mask].mean().item(),
            "full_acc": correct.mean().item()}


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, k: int) -> list[float]:
    correct = torch.zeros(k).index_add_(0, labels, (preds == labels).float())
    count = torch.bincount(labels, minlength=k).float()
    return (correct / count.clamp(min=1)).tolist()


def model_key(tag: str, pretrained: str) -> str | None:
    """Cache key of a model's baselines, from its short name and weights; None for random weights
    (nothing worth caching)."""
    if pretrained == "none":
        return None
    if pretrained == "demo":  # a demo CLIP's tag is its config's name
        return demo_weights_path(arch=tag).stem
    p = Path(pretrained)
    if p.is_file():
        return f"{tag}-{hashlib.sha1(p.read_bytes()).hexdigest()[:12]}"
    return f"{tag}-{pretrained}"


def run_model_key(arch: str, pretrained: str | None, seed: int) -> str:
    """The key synthetic files and results are tagged with: model_key of the model that
    load_model(arch, pretrained) builds, derived from the names alone (nothing is built), or
    '<tag>-random-seed<seed>' for random weights."""
    tag = arch_tag(arch)
    return model_key(tag, pretrained or default_pretrained(arch)) or f"{tag}-random-seed{seed}"


def reference_file(arch: str, pretrained: str | None) -> Path | None:
    """The paper's published zero-shot figures (reference/) of a backbone: OpenAI's RN50 and ViT-B/16
    weights have them; any other model or weights (demo, random, fine-tuned) has none."""
    if (pretrained or default_pretrained(arch)) != "openai":
        return None
    path = REFERENCE / f"zeroshot_openai_{arch_tag(arch)}.json"
    return path if path.is_file() else None


def compute_baselines(lm: LoadedModel, ds: DatasetSplits, device: str, batch_size: int = 256,
                      train: bool = True) -> dict[str, dict[str, float]]:
    """Per class: cls_acc_test, no_cls_acc, acc_train, full_acc — the reference files' format.
    train=False skips the train split (acc_train None): ImageNet's has 1.28M images."""
    w = classifier_weights(lm, ds, device)
    k = len(ds.classnames)
    test_p, test_y = predict(lm.model, loader(ds.test, lm.preprocess, device, batch_size), w, device, f"{ds.name} test")
    train_acc = [None] * k
    if train and ds.train:
        train_acc = per_class_accuracy(*predict(lm.model, loader(ds.train, lm.preprocess, device, batch_size), w,
                                                device, f"{ds.name} train"), k)
    out = {}
    for i, name in enumerate(ds.classnames):
        fig = class_figures(test_p, test_y, i)
        out[name] = {"cls_acc_test": fig["cls_acc_test"], "no_cls_acc": fig["no_cls_acc"],
                     "acc_train": train_acc[i], "full_acc": fig["full_acc"]}
    return out


def baselines(lm: LoadedModel, ds: DatasetSplits, device: str, batch_size: int = 256,
              train: bool = True) -> dict[str, dict[str, float]]:
    """compute_baselines, cached as JSON per (model, dataset data) under the cache folder; a
    test-only request is also answered by a cached full one."""
    key = model_key(lm.tag, lm.pretrained)
    full, test_only = baseline_path(key, ds), baseline_path(key, ds, test_only=True)
    for path in [full] + ([] if train else [test_only]):
        if key and path.is_file():
            return json.loads(path.read_text())
    out = compute_baselines(lm, ds, device, batch_size, train)
    if key:
        atomic_write_json(full if train else test_only, out)
    return out


def data_fingerprint(ds: DatasetSplits) -> str:
    """A short hash of the dataset's class names and test list: cached figures of another copy of a
    dataset with the same name (another data root, a fake one in a test) are never reused."""
    h = hashlib.sha1(json.dumps(ds.classnames).encode())
    for d in ds.test:
        h.update(f"{Path(d.impath).relative_to(ds.root)}:{d.label};".encode())
    return h.hexdigest()[:10]


def baseline_path(tag_key: str | None, ds: DatasetSplits, test_only: bool = False) -> Path:
    return cache_dir() / "zeroshot" / str(tag_key) / f"{ds.name}-{data_fingerprint(ds)}{'.test' * test_only}.json"


def cached_baselines(tag_key: str, ds_name: str) -> dict | None:
    """The one cached baseline file of a model and dataset name, if exactly one exists (no data at hand)."""
    found = sorted((cache_dir() / "zeroshot" / tag_key).glob(f"{ds_name}-*.json"))
    return json.loads(found[0].read_text()) if len(found) == 1 else None


def compare_to_reference(ours: dict, reference: dict, tol: float = 0.01) -> list[str]:
    """Lines describing every figure that differs from the paper's by more than `tol`."""
    lines = []
    for ds, classes in ours.items():
        if ds not in reference:
            continue
        for cls, figs in classes.items():
            ref = reference[ds].get(cls)
            if ref is None:
                lines.append(f"{ds}/{cls}: not in the reference")
                continue
            for key, val in figs.items():
                if key in ref and abs(val - ref[key]) > tol:
                    lines.append(f"{ds}/{cls} {key}: ours {val:.4f}, paper {ref[key]:.4f}")
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Zero-shot accuracy of a CLIP model, per dataset and class.")
    p.add_argument("--backbone_arch", default="demo", help="RN50, ViT-B/16, demo or any open_clip model")
    p.add_argument("--pretrained", default=None, help="openai (default), another open_clip tag, none, or a file")
    p.add_argument("--run_ds", default="Digits,Shapes", help="comma-separated dataset names")
    p.add_argument("--data_root", default=default_data_root())
    p.add_argument("--device", default=default_device())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=256,
                   help="images per forward pass (lower it if out of GPU memory)")
    p.add_argument("--out", default=None, help="write the per-class figures to this JSON file")
    p.add_argument("--compare", nargs="?", const="auto", default=None,
                   help="print differences > 0.01 from the paper's figures (reference/) or from FILE")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> dict[str, DatasetSplits]:
    """Check datasets, model, device and output files before loading anything; report all problems."""
    problems = check_device(args.device)
    if args.batch_size < 1:
        problems.append(f"--batch_size must be at least 1, got {args.batch_size}")
    tag, model_problems = check_model(args.backbone_arch, args.pretrained)
    problems += model_problems
    datasets, ds_problems = build_datasets(args.run_ds, args.data_root)
    problems += ds_problems
    if args.out:
        problems += [f"--out {args.out} is a folder, not a file"] if Path(args.out).is_dir() \
            else check_writable(Path(args.out).parent)
    if args.compare == "auto" and tag and not reference_file(args.backbone_arch, args.pretrained):
        problems.append(f"no published figures of the paper for {tag} with weights '{args.pretrained or 'openai'}' "
                        "(reference/ has OpenAI's RN50 and ViT-B/16); pass --compare FILE")
    elif args.compare not in (None, "auto") and not Path(args.compare).is_file():
        problems.append(f"no reference file {args.compare} (--compare)")
    check_all(problems)
    return datasets


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    datasets = validate(args)
    seed_everything(args.seed)
    lm = load_model(args.backbone_arch, args.pretrained, args.device, args.data_root)
    results = {}
    for ds in datasets.values():
        results[ds.name] = baselines(lm, ds, args.device, args.batch_size)
        full = next(iter(results[ds.name].values()))["full_acc"]
        print(f"{lm.tag} {ds.name}: zero-shot test accuracy {full:.4f} ({len(ds.test)} images, "
              f"{len(ds.classnames)} classes)")
    if args.out:
        atomic_write_json(args.out, results)
    if args.compare:  # checked by validate
        ref_file = Path(args.compare) if args.compare != "auto" else reference_file(args.backbone_arch, args.pretrained)
        diffs = compare_to_reference(results, json.loads(ref_file.read_text()))
        print("\n".join(diffs) if diffs else f"all figures within 0.01 of {ref_file.name}")
    return results


if __name__ == "__main__":
    run_cli(main)
