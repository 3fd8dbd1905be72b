"""train: forget classes of a CLIP model, one class at a time, and evaluate (SPEC §2-3).

For each forget class: load its forget images (synthetic by default), let the chosen method
(`methods/`; default `lipschitz`, the paper's) compute the unlearned model's changed tensors,
evaluate that model on the real test sets of every evaluation dataset, save the changed tensors
and log everything. The model is restored before the next class: each class is forgotten from
the original model, as in the paper.

    python train.py --backbone_arch demo --run_ds Digits,Shapes --output_dir results/results1/seed_0
    sh train.sh 1 1 0 1 25 0.1 "StanfordDogs,StanfordCars,Caltech101,OxfordFlowers" RN50
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import open_clip
import torch
import yaml
from torchvision import transforms as T
from tqdm import tqdm

import methods
from common import REPO, UserError, add_common_args, atomic_torch_save, atomic_write_text, check_all, \
    check_device, check_precision, check_writable, class_seed, precision, read_json, run_cli, seed_everything, \
    update_json
from datasets import DatasetSplits, build_datasets
from datasets.base import load_rgb
from forget_cls import default_eval_ds, resolve_targets
from methods.base import ForgetTask, MethodResult, NonFiniteLoss
from models import LoadedModel, arch_tag, check_model, config_image_size, load_model, resolve_arch
from synthetic import check_synthetic, clip_norm, model_view, noise_seed, read_synthetic, synthetic_path
from zeroshot import (EVAL_SCALE, baselines, class_figures, classifier_weights, image_features, loader, logits, predict,
                      run_model_key)

ARCH_CONFIGS = REPO / "configs" / "archs"
CAPTION = "A picture of {}"  # the paper's caption of every forget image (SPEC §2)
SIDE_DIRS = {"heldout": "--heldout_dir", "retain": "--retain_dir"}


def arch_config(arch: str) -> dict:
    """configs/archs/<tag>.yaml, or the RN50 / ViT-B-16 one by image-tower type for other models
    (open_clip configs give a ModifiedResNet tower its layers per stage, a list)."""
    path = ARCH_CONFIGS / f"{arch_tag(arch)}.yaml"
    if not path.is_file():
        layers = ((open_clip.get_model_config(resolve_arch(arch)) or {}).get("vision_cfg") or {}).get("layers")
        path = ARCH_CONFIGS / ("RN50.yaml" if isinstance(layers, (list, tuple)) else "ViT-B-16.yaml")
        print(f"note: no configs/archs/{arch_tag(arch)}.yaml; using {path.name}")
    return yaml.safe_load(path.read_text())


# ----------------------------------------------------------------------------- data
def forget_images(args, lm: LoadedModel, ds: DatasetSplits, classname: str, key: str) -> torch.Tensor:
    """Model-ready images of the forget class: synthetic (default), or its real training images
    through the test-time preprocessing (the view the paper measures accuracy on)."""
    idx = ds.classnames.index(classname)
    if not args.generated_data:
        return torch.stack([lm.preprocess(load_rgb(d.impath)) for d in ds.train if d.label == idx])
    path = synthetic_path(args.generated_dir, ds.name, classname)
    data = read_synthetic(path)
    check_all(check_synthetic(data, path, key, image_size(lm), idx))
    return model_view(data["images"], *clip_norm(lm.model))


def real_train_view(lm: LoadedModel, ds: DatasetSplits, classname: str, seed: int) -> Callable[[], torch.Tensor]:
    """The paper's real-data variant sees its images through Dassl's training transform (random
    resized crop, scale 0.08-1, bicubic; random flip; CLIP normalisation), drawn afresh each epoch.
    Each call returns a new view; the draws come from a CPU stream seeded by the class's seed."""
    idx = ds.classnames.index(classname)
    pil = [load_rgb(d.impath) for d in ds.train if d.label == idx]
    size, (mean, std) = image_size(lm), clip_norm(lm.model)
    tfm = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                     T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    stream = torch.Generator().manual_seed(seed)

    def view() -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global CPU stream: make it ours
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=stream, device="cpu")))
            return torch.stack([tfm(im) for im in pil])
    return view


def side_images(directory: str, lm: LoadedModel, ds: DatasetSplits, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-ready synthetic images of `classes` from a side-set folder, and their class indices."""
    views, labels = [], []
    for c in classes:
        x = model_view(read_synthetic(synthetic_path(directory, ds.name, c))["images"], *clip_norm(lm.model))
        views.append(x)
        labels += [ds.classnames.index(c)] * len(x)
    return torch.cat(views), torch.tensor(labels)


def image_size(lm: LoadedModel) -> int:
    size = lm.model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else size


# ----------------------------------------------------------------------------- evaluation
class Evaluator:
    """Zero-shot figures of the current model on the evaluation datasets.

    What a method did not change is not recomputed: text weights come from the original model
    unless the text side changed, and test-image features from the original model unless the
    image tower changed (both are kept from the first use)."""

    def __init__(self, lm: LoadedModel, datasets: dict[str, DatasetSplits], device: str, workers: int | None):
        self.lm, self.datasets, self.device, self.workers = lm, datasets, device, workers
        self.original_weights = {n: classifier_weights(lm, ds, device) for n, ds in datasets.items()}
        self.original_features: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def weights(self, name: str, text_changed: bool) -> torch.Tensor:
        return classifier_weights(self.lm, self.datasets[name], self.device) if text_changed \
            else self.original_weights[name]

    def accuracy(self, images: torch.Tensor, label: int, weights: torch.Tensor) -> float:
        """Accuracy of model-ready images (on any device) all of class `label`; one host sync."""
        with torch.no_grad():
            preds = torch.cat([logits(self.lm.model, c.to(self.device), weights).argmax(-1) for c in images.split(256)])
        return (preds == label).float().mean().item()

    def predict(self, key: tuple, items, weights: torch.Tensor, image_changed: bool):
        """(predictions, labels) of `items`; image features cached under `key` while the tower is original."""
        if image_changed:
            return predict(self.lm.model, self._loader(items), weights, self.device)
        if key not in self.original_features:
            self.original_features[key] = image_features(self.lm.model, self._loader(items), self.device)
        feats, labels = self.original_features[key]
        return (EVAL_SCALE * feats @ weights).argmax(-1).cpu(), labels

    def _loader(self, items):
        return loader(items, self.lm.preprocess, self.device, workers=self.workers)

    def main_figures(self, main: str, classname: str, syn_images: torch.Tensor | None, text_changed: bool,
                     image_changed: bool, real_train: bool) -> dict:
        """The forget dataset's figures: its test split (forget class, the rest), the forget images
        and, for synthetic runs, the class's real validation images."""
        ds = self.datasets[main]
        idx, w = ds.classnames.index(classname), self.weights(main, text_changed)
        test = class_figures(*self.predict((main, "test"), ds.test, w, image_changed), idx)
        figs = {"cls_acc_test": test["cls_acc_test"], "no_cls_acc": test["no_cls_acc"]}
        syn_acc = self.accuracy(syn_images, idx, w) if syn_images is not None else None
        if real_train:
            figs["acc_train"] = syn_acc
        else:
            figs["acc_train"] = None
            figs["acc_val_hard"] = syn_acc
            val = [d for d in ds.val if d.label == idx]
            figs["acc_val_true_data"] = class_figures(*self.predict((main, "val", idx), val, w, image_changed),
                                                      idx)["cls_acc_test"] if val else None
        return figs

    def final_results(self, main: str, classname: str, syn_images: torch.Tensor | None, changed: dict,
                      real_train: bool) -> dict:
        """The paper's final_results: the forget dataset's figures, every other dataset's accuracy."""
        text_changed = any(not n.startswith("visual.") for n in changed)
        image_changed = any(n.startswith("visual.") for n in changed)
        out = {main: {classname: self.main_figures(main, classname, syn_images, text_changed, image_changed,
                                                   real_train)}}
        for name, other in self.datasets.items():
            if name != main:
                preds, labels = self.predict((name, "test"), other.test, self.weights(name, text_changed), image_changed)
                out[name] = {"all": {"all_ds": (preds == labels).float().mean().item()}}
        return out


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Unlearn classes from CLIP (SPEC §2) and evaluate on real test sets.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument("--method", default=methods.DEFAULT, choices=methods.CHOICES,
                   help="the unlearning method (methods/; README 'Methods'): lipschitz = the paper (also "
                        "'faithful'); presets: " + "; ".join(f"{k} = --method {v['method']} " + " ".join(
                            f"--{o} {x}" for o, x in v["options"].items()) for k, v in methods.PRESETS.items()))
    p.add_argument("--output_dir", default=None, help="default: results/results1/seed_<seed>")
    p.add_argument("--eval_ds", default=None,
                   help="datasets evaluated after every class (default: every dataset of the run's world, as the "
                        "paper: the four benchmark datasets, or both demo datasets, plus --run_ds)")
    p.add_argument("--generated_data", type=int, default=1, help="1: synthetic images; 0: the class's real train images")
    p.add_argument("--generated_dir", default=None,
                   help="where datagen.py wrote (default: generated_<ARCH>, generated_<ARCH>_improved for improved)")
    p.add_argument("--heldout_dir", default=None, help="held-out synthetic sets (default: <generated_dir>/heldout)")
    p.add_argument("--retain_dir", default=None, help="retain synthetic sets (default: <generated_dir>/retain)")
    p.add_argument("--save_best_model", type=int, default=0, help="1: save the changed tensors of each best model")
    p.add_argument("--debug", type=int, default=1,
                   help="1: also log the forget dataset's test figures at every improving noise level, as the paper's "
                        "debug mode (the final evaluation always runs)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 4 on CUDA, 0 on CPU)")
    methods.add_options(p)
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> tuple[dict, list, ModuleType, Any, dict]:
    """Check arguments, datasets, classes, model, method options and files before any heavy work;
    report every problem at once. Returns (run's datasets, targets, method module, method config,
    every dataset incl. the evaluation-only ones)."""
    tag, problems = check_model(args.backbone_arch, args.pretrained)
    model_ok = not problems  # the model's name and weights are valid
    mod, cfg, method_problems = methods.configure(args.method, args, arch_config(args.backbone_arch) if tag else {})
    problems += method_problems
    for name in ("n_samples", "max_epochs", "batch_size", "accum_steps", "chunk"):
        if hasattr(cfg, name) and getattr(cfg, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if hasattr(cfg, "min_train_acc_stop") and not 0 <= cfg.min_train_acc_stop < 1:
        problems.append(f"--min_train_acc_stop must be in [0, 1), got {cfg.min_train_acc_stop}")
    if hasattr(cfg, "lr") and not cfg.lr > 0:
        problems.append(f"--lr must be positive, got {cfg.lr}")
    if args.workers is not None and args.workers < 0:
        problems.append(f"--workers must be at least 0, got {args.workers}")
    run_ds = [n.strip() for n in args.run_ds.split(",") if n.strip()]
    eval_ds = [n.strip() for n in args.eval_ds.split(",") if n.strip()] if args.eval_ds else default_eval_ds(run_ds)
    run, run_problems = build_datasets(run_ds, args.data_root)
    extra = [d for d in eval_ds if d.lower() not in {r.lower() for r in run_ds}]
    evaluated, eval_problems = build_datasets(extra, args.data_root) if extra else ({}, [])
    if set(eval_problems) - set(run_problems) and not args.eval_ds:
        eval_problems.append(f"(after every class the paper evaluates {', '.join(eval_ds)}; "
                             "pass --eval_ds to evaluate fewer)")
    targets, t_problems = resolve_targets(run, args.forget_labels, args.run_ds)
    problems += list(dict.fromkeys(run_problems + eval_problems)) + t_problems
    datasets = {**run, **evaluated}
    canonical = {d.lower(): d for d in datasets}
    args.eval_ds = ",".join(dict.fromkeys(canonical.get(e.lower(), e) for e in eval_ds))
    _, _, suffix = methods.resolve(args.method)
    args.output_dir = args.output_dir or f"results/results1/seed_{args.seed}"
    args.generated_dir = args.generated_dir or f"generated_{tag}{suffix}"
    args.heldout_dir = args.heldout_dir or str(Path(args.generated_dir) / "heldout")
    args.retain_dir = args.retain_dir or str(Path(args.generated_dir) / "retain")
    problems += check_writable(args.output_dir) + check_device(args.device) + check_precision(args.precision, args.device)
    sides = methods.side_sets(mod, cfg)
    if sides and not args.generated_data:
        problems.append(f"--method {args.method} reads synthetic {' and '.join(sides)} sets: it needs --generated_data 1")
    forget = bool(args.generated_data and methods.needs_images(mod, cfg))
    if tag and model_ok and (forget or sides):
        key = run_model_key(args.backbone_arch, args.pretrained, args.seed)
        problems += check_synthetic_files(args, datasets, targets, key, forget, sides)
    logs_path = Path(args.output_dir) / "logs.json"
    if logs_path.is_file():  # an earlier run in this folder must have the same settings
        try:
            check_settings(logs_path.parent, read_json(logs_path).get("settings", {}), run_settings(args, cfg), model_ok)
        except UserError as e:
            problems.append(str(e))
    check_all(problems)
    return run, targets, mod, cfg, datasets


def check_synthetic_files(args: argparse.Namespace, datasets: dict, targets: list, key: str, forget: bool,
                          sides: list[str]) -> list[str]:
    """Every synthetic file the run reads: present, readable, made by this model for this image
    size and class; a held-out set made with another noise seed than the forget set."""
    problems, missing = [], []
    size = config_image_size(args.backbone_arch)

    def check(path: Path, class_index: int) -> dict | None:
        if not path.is_file():
            missing.append(str(path))
            return None
        try:
            data = read_synthetic(path)
        except UserError as e:
            problems.append(str(e))
            return None
        problems.extend(check_synthetic(data, path, key, size, class_index))
        return data

    for d, c in targets:
        classes = datasets[d].classnames
        forget = check(synthetic_path(args.generated_dir, d, c), classes.index(c)) if forget else None
        if "heldout" in sides:
            held = check(synthetic_path(args.heldout_dir, d, c), classes.index(c))
            if held and forget and noise_seed(held["meta"]) == noise_seed(forget["meta"]):
                problems.append(f"{synthetic_path(args.heldout_dir, d, c)} was made with the same noise seed as the "
                                "forget set: a held-out set must come from another datagen run (--noise_seed)")
        if "retain" in sides:
            for i, other in enumerate(classes):
                if other != c:
                    check(synthetic_path(args.retain_dir, d, other), i)
    if missing and not sides:
        problems.insert(0, f"no synthetic images for {len(missing)} class(es), e.g. {missing[0]}: "
                           "run datagen.py first (sh datagen.sh ...) or set --generated_dir")
    elif missing:
        problems.insert(0, f"no synthetic images for {len(missing)} file(s), e.g. {missing[0]}: run datagen.py first "
                           f"('datagen.py --method improved' makes held-out and retain sets) "
                           f"or set --generated_dir / {' / '.join(SIDE_DIRS[s] for s in sides)}")
    return list(dict.fromkeys(problems))


# settings that must agree between runs writing into one folder (the rest may differ, e.g. --forget_labels),
# besides the method's configuration
SETTINGS_KEYS = ("backbone_arch", "pretrained", "generated_data", "seed", "debug", "method", "precision")


def run_settings(args: argparse.Namespace, cfg) -> dict:
    """The run's arguments, and the method's full configuration (method_config) as it ran."""
    return {**vars(args), "method_config": json.loads(json.dumps(asdict(cfg)))}


def check_settings(folder: Path, old: dict, settings: dict, with_method: bool = True) -> None:
    """Refuse to add classes to a run folder whose logs hold a run with other settings (`old`);
    with_method: also compare the method's configuration as it ran (not when the model is unknown:
    its per-backbone settings are then unknown too)."""
    def flat(s: dict) -> dict:
        return {**{k: s[k] for k in SETTINGS_KEYS if k in s}, **(s.get("method_config", {}) if with_method else {})}
    old, new = flat(old), flat(settings)
    diff = [k for k in new if k in old and old[k] != new[k]]
    if diff:
        raise UserError(f"{folder} holds a run with other settings "
                        f"({', '.join(f'{k}: {old[k]} vs {new[k]}' for k in diff)}); use another --output_dir")


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    run, targets, mod, cfg, datasets = validate(args)
    seed_everything(args.seed)
    lm = load_model(args.backbone_arch, args.pretrained, args.device, args.data_root)
    key = run_model_key(args.backbone_arch, args.pretrained, args.seed)
    out = Path(args.output_dir)
    settings = {**run_settings(args, cfg), "model": resolve_arch(args.backbone_arch), "model_key": key}
    logs_path = out / "logs.json"
    atomic_write_text(out / "args.txt", json.dumps(settings, indent=1))
    before = {n: baselines(lm, ds, args.device, train=False) for n, ds in datasets.items()}  # test figures only
    update_json(out / "zeroshot_before.json", lambda old: old.update(before))  # a rerun adds, never drops
    # every synthetic file is read and checked before the first class starts, not when its turn comes
    use_images = methods.needs_images(mod, cfg)
    images = {(d, c): forget_images(args, lm, datasets[d], c, key) if use_images else None for d, c in targets}
    sides = methods.side_sets(mod, cfg)
    evaluator = Evaluator(lm, datasets, args.device, args.workers)
    arch = arch_config(args.backbone_arch)
    logs: dict = {}
    for ds_name, classname in targets:
        if logs_path.is_file() and read_json(logs_path).get(ds_name, {}).get(classname, {}).get("final_results"):
            print(f"{ds_name}/{classname}: already in {out / 'logs.json'}, skipped")
            continue
        start = time.time()
        ds, idx = datasets[ds_name], datasets[ds_name].classnames.index(classname)
        x = images[(ds_name, classname)]
        x = x.to(args.device) if x is not None else None
        seed = class_seed(args.seed, ds_name, classname)
        task = ForgetTask(
            model=lm.model, tokenizer=lm.tokenizer, classnames=ds.classnames, template=ds.template, class_index=idx,
            templates=list(ds.templates),
            images=x, caption=CAPTION.format(classname),
            # every other dataset the run evaluates (--run_ds and --eval_ds): names only, no image
            other_prompts=[o.prompt(c) for o in datasets.values() if o is not ds for c in o.classnames],
            syn_accuracy=(lambda: evaluator.accuracy(x, idx, evaluator.weights(ds_name, text_changed=True)))
            if x is not None else (lambda: math.nan),
            # every draw of the method on the run's device, seeded per class: a class's result does not
            # depend on which other classes run (CUDA and CPU streams differ by design)
            generator=torch.Generator(device=args.device).manual_seed(seed), seed=seed, arch=arch,
            train_view=real_train_view(lm, ds, classname, seed) if not args.generated_data else None,
            on_improved=(lambda: evaluator.main_figures(ds_name, classname, x, True, True, not args.generated_data))
            if args.debug else None)
        if "heldout" in sides:
            task.heldout = side_images(args.heldout_dir, lm, ds, [classname])[0].to(args.device)
        if "retain" in sides:
            r, labels = side_images(args.retain_dir, lm, ds, [c for c in ds.classnames if c != classname])
            task.retain, task.retain_labels = r.to(args.device), labels.to(args.device)
        status = "done"
        with tqdm(total=getattr(cfg, "max_epochs", 1), desc=f"{ds_name}/{classname}", unit="epoch") as bar:
            task.progress = bar
            try:
                with precision(args.precision, args.device):
                    result = mod.unlearn(task, cfg)
            except NonFiniteLoss as e:
                result = MethodResult({}, e.summary)
                status = f"error: {e}; this class keeps the original model"
        final = evaluate_changed(lm.model, result.changed, lambda: evaluator.final_results(
            ds_name, classname, x, result.changed, real_train=not args.generated_data))
        if args.save_best_model:
            atomic_torch_save(out / "models" / ds_name / f"{classname.replace('/', '_')}.pt",
                              {"changed": {n: t.cpu() for n, t in result.changed.items()}, "model_key": key,
                               "arch": lm.name, "pretrained": lm.pretrained, "method": args.method})
        secs = time.time() - start
        record = {"summary": {**result.summary, "changed_tensors": sorted(result.changed), "seconds": round(secs, 1),
                              "status": status}, **result.log, "final_results": final}

        def add_class(logs: dict) -> None:  # checked again: another process may have written to the folder since
            check_settings(out, logs.get("settings", {}), settings)
            logs["settings"] = settings
            logs.setdefault(ds_name, {})[classname] = record

        # several processes may add classes to one folder (sweep.py): the read-modify-write holds a lock
        logs = update_json(logs_path, add_class)
        print(summary_line(ds_name, classname, before, final, record["summary"], secs))
    return logs or (read_json(logs_path) if logs_path.is_file() else {})


def evaluate_changed(model: torch.nn.Module, changed: dict[str, torch.Tensor], evaluate: Callable[[], dict]) -> dict:
    """evaluate() with `changed` applied to the model, then the original tensors put back."""
    state = model.state_dict()
    original = {n: state[n].clone() for n in changed}
    try:
        for n, t in changed.items():
            state[n].copy_(t)
        return evaluate()
    finally:
        for n, t in original.items():
            state[n].copy_(t)


def summary_line(ds: str, cls: str, before: dict, final: dict, summary: dict, secs: float) -> str:
    f, b = final[ds][cls], before[ds][cls]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    parts = [f"forget {fmt(b['cls_acc_test'])}->{fmt(f['cls_acc_test'])}",
             f"rest {fmt(b['no_cls_acc'])}->{fmt(f['no_cls_acc'])}"]
    parts += [f"{d} {fmt(next(iter(before[d].values()))['full_acc'])}->{fmt(v['all']['all_ds'])}"
              for d, v in final.items() if d != ds]
    parts.append(f"synthetic {fmt(summary.get('acc_syn_before'))}->{fmt(f.get('acc_val_hard', f.get('acc_train')))}")
    tail = (f"{summary['epochs']} epochs, {summary['rollbacks']} rollbacks" if "epochs" in summary
            else f"{summary.get('steps', 0)} steps") + f", {secs:.1f} s"
    status = summary["status"]
    return f"{ds}/{cls}: " + " | ".join(parts) + f" | {tail}" + ("" if status == "done" else f" | {status}")


if __name__ == "__main__":
    run_cli(main)
