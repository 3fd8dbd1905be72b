"""train: forget classes of a CLIP model and evaluate (SPEC §2-3).

For each forget request: load its forget images (synthetic by default), let the chosen method
(`methods/`; default `lipschitz`, the paper's) compute the unlearned model's changed tensors,
evaluate that model on the real test sets of every evaluation dataset, save the changed tensors
and log everything. With --protocol per_class (the default, the paper's benchmark) a request is one
class, forgotten from the original model; joint makes one request of every class (one model);
sequential makes a request of each class in turn, each from the model the previous one left
(docs/handover.md).

    python train.py --backbone_arch demo --run_ds Digits,Shapes --output_dir results/results1/seed_0
    sh train.sh 1 1 0 1 25 0.1 "StanfordDogs,StanfordCars,Caltech101,OxfordFlowers" RN50
"""
from __future__ import annotations

import interrupts  # noqa: F401  (first: Ctrl-C during the imports below is one line)

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
from torchvision import transforms as T
from tqdm import tqdm

import methods
from common import ArgumentParser, UserError, add_common_args, check_all, check_device, check_precision, \
    check_writable, class_seed, precision, run_cli, seed_everything
from datasets import DatasetSplits, build_datasets
from datasets.base import load_rgb
from forget_cls import default_eval_ds, resolve_targets
from methods.base import ForgetTask, MethodResult, NonFiniteLoss
from export import INFO, commit, export_model, read_info, weights_hash
from models import LoadedModel, applied, arch_settings, check_model, config_image_size, load_model, model_config, \
    resolve_arch, towers_changed
from runs import RunFolder
from synthetic import RETAIN_SCOPES, check_synthetic, clip_norm, file_record, model_view, noise_seed, read_synthetic, \
    synthetic_path
from zeroshot import (EVAL_SCALE, baselines, class_figures, classifier_weights, image_features, loader, logits, predict,
                      run_model_key)

CAPTION = "A picture of {}"  # the paper's caption of every forget image (SPEC §2)
SIDE_DIRS = {"heldout": "--heldout_dir", "retain": "--retain_dir"}


# ----------------------------------------------------------------------------- data
def forget_images(lm: LoadedModel, ds: DatasetSplits, classname: str, key: str, generated_dir: str | None,
                  seed: int) -> tuple[torch.Tensor, dict | None]:
    """Model-ready images of the forget class: synthetic ones from `generated_dir`, or with None its real
    training images through the test-time preprocessing (the view the paper measures accuracy on); and,
    for synthetic ones, which file they came from (synthetic.file_record, logged with the results)."""
    idx = ds.classnames.index(classname)
    if generated_dir is None:
        return torch.stack([lm.preprocess(load_rgb(d.impath)) for d in ds.train if d.label == idx]), None
    path = synthetic_path(generated_dir, ds.name, classname)
    data = read_synthetic(path)
    check_all(check_synthetic(data, path, key, image_size(lm), ds.name, classname, idx))
    record = file_record(path, data["meta"])
    if record["noise_seed"] != seed:
        print(f"note: {path} was made from noise seed {record['noise_seed']}; this run's --seed is {seed}")
    return model_view(data["images"], *clip_norm(lm.model)), record


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
PROTOCOLS = ("per_class", "joint", "sequential")


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
        """Accuracy of model-ready images (on any device) all of class `label`; one host sync.
        Computed as the paper's code does, (100 * k / n) / 100 in float64: a float32 mean puts k/n = 0.1
        (1 of 10, 30 of 300) just above a stop threshold of 0.1 that the paper's loop meets."""
        with torch.no_grad():
            preds = torch.cat([logits(self.lm.model, c.to(self.device), weights).argmax(-1) for c in images.split(256)])
        return 100 * int((preds == label).sum()) / len(preds) / 100

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

    def main_figures(self, main: str, classname: str, syn_images: torch.Tensor | None, towers: dict[str, bool],
                     real_train: bool) -> dict:
        """The forget dataset's figures: its test split (forget class, the rest), the forget images
        and, for synthetic runs, the class's real validation images. `towers`: which towers the model
        has changed in (models.towers_changed): the others' cached features and weights are reused."""
        ds = self.datasets[main]
        idx, w = ds.classnames.index(classname), self.weights(main, towers["text"])
        image_changed = towers["image"]
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

    def set_figures(self, forgotten: list[tuple[str, str]], changed: dict) -> dict:
        """After a request of the sequential protocol: per evaluated dataset, the test accuracy of each
        class forgotten so far, and of its classes that were not (every forgotten class left out)."""
        towers = towers_changed(changed)
        out = {}
        for name, ds in self.datasets.items():
            preds, labels = self.predict((name, "test"), ds.test, self.weights(name, towers["text"]), towers["image"])
            gone = [ds.classnames.index(c) for d, c in forgotten if d == name]
            kept = ~torch.isin(labels, torch.tensor(gone, dtype=labels.dtype))
            out[name] = {"forgotten": {ds.classnames[i]: (preds[labels == i] == i).float().mean().item() for i in gone},
                         "kept_acc": (preds[kept] == labels[kept]).float().mean().item() if kept.any() else None}
        return out

    def final_results(self, main: str, classname: str, syn_images: torch.Tensor | None, changed: dict,
                      real_train: bool) -> dict:
        """The paper's final_results: the forget dataset's figures, every other dataset's accuracy."""
        towers = towers_changed(changed)
        out = {main: {classname: self.main_figures(main, classname, syn_images, towers, real_train)}}
        for name, other in self.datasets.items():
            if name != main:
                preds, labels = self.predict((name, "test"), other.test, self.weights(name, towers["text"]),
                                             towers["image"])
                out[name] = {"all": {"all_ds": (preds == labels).float().mean().item()}}
        return out


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Unlearn classes from CLIP (SPEC §2) and evaluate on real test sets.")
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
                   help="where datagen.py wrote the forget sets (default: generated_<ARCH>; datagen.py --method confident "
                        "writes generated_<ARCH>_confident)")
    p.add_argument("--heldout_dir", default=None, help="held-out synthetic sets (default: <generated_dir>/heldout)")
    p.add_argument("--retain_dir", default=None, help="retain synthetic sets (default: <generated_dir>/retain)")
    p.add_argument("--retain_scope", default="own", choices=RETAIN_SCOPES,
                   help="the retain sets a method with a retain term keeps: of the forget class's dataset (own, "
                        "default), or of every dataset the run evaluates (all: datagen.py --retain_scope all)")
    p.add_argument("--save_best_model", type=int, default=0, help="1: save the changed tensors of each best model")
    p.add_argument("--export", default=None, metavar="DIR",
                   help="write the final unlearned model into DIR in open_clip's Hugging Face layout (plain open_clip "
                        "loads it as local-dir:DIR), with a model card and unlearning.json; needs one final model: one "
                        "class, or --protocol joint or sequential")
    p.add_argument("--protocol", default="per_class", choices=PROTOCOLS,
                   help="per_class: every class is forgotten from the original model (the paper's benchmark); "
                        "joint: every class of --forget_labels (across datasets) in one request, one unlearning run "
                        "and one model (methods that forget a set: docs/handover.md); "
                        "sequential: the classes are requests in the order of --forget_labels, each starting from "
                        "the model the previous one left, and after each every class forgotten so far is evaluated "
                        "(each request's model is saved: a rerun resumes from the last finished one)")
    p.add_argument("--debug", type=int, default=1,
                   help="1: also log the forget dataset's test figures at every improving noise level, as the paper's "
                        "debug mode (the final evaluation always runs)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 4 on CUDA, 0 on CPU)")
    methods.add_options(p)
    return p.parse_args(argv)


def option_problems(args: argparse.Namespace) -> tuple[ModuleType, Any, list[str]]:
    """The method module, its Config for this run, and every problem of the command line that shows
    without data, files or devices: what sweep.py checks for every job before it starts any."""
    tag, problems = check_model(args.backbone_arch, args.pretrained)
    mod, cfg, method_problems = methods.configure(args.method, args, arch_settings(args.backbone_arch) if tag else {})
    problems += method_problems
    if args.workers is not None and args.workers < 0:
        problems.append(f"--workers must be at least 0, got {args.workers}")
    sides = methods.side_sets(mod, cfg)
    if sides and not args.generated_data:
        problems.append(f"--method {args.method} reads synthetic {' and '.join(sides)} sets: it needs --generated_data 1")
    if getattr(args, "protocol", "per_class") == "joint" and not methods.forgets_sets(mod, cfg):
        problems.append(f"--method {args.method} ({mod.NAME}) forgets one class at a time with these options: it "
                        f"cannot run --protocol joint (methods that can: {', '.join(methods.SET_METHODS)}; "
                        "projedit with --side text); use --protocol sequential")
    return mod, cfg, problems


def validate(args: argparse.Namespace) -> tuple[dict, list, ModuleType, Any, dict]:
    """Check arguments, datasets, classes, model, method options and files before any heavy work;
    report every problem at once. Returns (run's datasets, targets, method module, method config,
    every dataset incl. the evaluation-only ones)."""
    tag, model_problems = check_model(args.backbone_arch, args.pretrained)
    model_ok = not model_problems  # the model's name and weights are valid
    mod, cfg, problems = option_problems(args)
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
    args.output_dir = args.output_dir or f"results/results1/seed_{args.seed}"
    args.generated_dir = args.generated_dir or f"generated_{tag}"
    args.heldout_dir = args.heldout_dir or str(Path(args.generated_dir) / "heldout")
    args.retain_dir = args.retain_dir or str(Path(args.generated_dir) / "retain")
    problems += check_writable(args.output_dir) + check_device(args.device) + check_precision(args.precision, args.device)
    sides = methods.side_sets(mod, cfg)
    forget = bool(args.generated_data and methods.needs_images(mod, cfg))
    if tag and model_ok and (forget or sides):
        key = run_model_key(args.backbone_arch, args.pretrained, args.seed)
        problems += check_synthetic_files(args, datasets, targets, key, forget, sides)
    run_folder = RunFolder(args.output_dir)
    try:  # an earlier run in this folder must have the same settings, and its files must be readable
        problems += run_folder.check_settings(run_settings(args, cfg), model_ok)
        run_folder.before()
        if args.protocol == "sequential":
            problems += sequence_problems(run_folder, targets)
        done = run_folder.finished()
        if args.protocol == "joint" and done and set(done) != set(targets):
            problems.append(f"{run_folder.path} holds the joint request {', '.join(f'{d}/{c}' for d, c in done)}, not "
                            "this run's set: use another --output_dir")
    except UserError as e:
        problems.append(str(e))
    if args.export:
        problems += export_problems(args, targets)
    check_all(problems)
    return run, targets, mod, cfg, datasets


def export_problems(args: argparse.Namespace, targets: list) -> list[str]:
    """--export writes one model: the only class's, the set's, or the last request's of a sequential run;
    into a new or empty folder, or over an earlier export of the same run folder."""
    problems = []
    if args.protocol == "per_class" and len(targets) > 1:
        problems.append(f"--export writes one model, and --protocol per_class makes one per class ({len(targets)}): "
                        "forget one class, or use --protocol joint or sequential")
    out = Path(args.export)
    earlier = read_info(f"local-dir:{out}") if (out / INFO).is_file() else None  # a rerun exports again
    same_run = earlier is not None and Path(earlier.get("run_folder", "")).resolve() == Path(args.output_dir).resolve()
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not same_run):
        problems.append(f"--export {out} exists and is not an empty folder or an earlier export of this run: "
                        "choose a new one")
    return problems + check_writable(str(out.parent) if str(out.parent) else ".")


def sequence_problems(run_folder: RunFolder, targets: list[tuple[str, str]]) -> list[str]:
    """A sequential run resumes from the model of its last finished request: the finished requests must be
    the first ones of this run's order, and that model must be there."""
    records = run_folder.records()
    done = sorted(run_folder.finished(), key=lambda t: records[t].get("request", {}).get("index", 0))
    if done != targets[:len(done)]:
        order = ", ".join(f"{d}/{c}" for d, c in targets)
        return [f"{run_folder.path} holds sequential requests {', '.join(f'{d}/{c}' for d, c in done)}, which are not "
                f"the first of this run's order ({order}): give --forget_labels in the order they were made, or use "
                "another --output_dir"]
    if done and not run_folder.delta_file(*done[-1]).is_file():
        return [f"{run_folder.delta_file(*done[-1])} is missing: a sequential run resumes from the model of its last "
                "finished request; use another --output_dir to start afresh"]
    return []


def check_synthetic_files(args: argparse.Namespace, datasets: dict, targets: list, key: str, forget: bool,
                          sides: list[str]) -> list[str]:
    """Every synthetic file the run reads: present, readable, made by this model for this image
    size and class; a held-out set made with another noise seed than the forget set."""
    problems, missing = [], []
    size = config_image_size(args.backbone_arch)

    def check(folder: str, dataset: str, classname: str) -> dict | None:
        path = synthetic_path(folder, dataset, classname)
        if not path.is_file():
            missing.append(str(path))
            return None
        try:
            data = read_synthetic(path)
        except UserError as e:
            problems.append(str(e))
            return None
        problems.extend(check_synthetic(data, path, key, size, dataset, classname,
                                        datasets[dataset].classnames.index(classname)))
        return data

    for d, c in targets:
        forget = check(args.generated_dir, d, c) if forget else None
        if "heldout" in sides:
            held = check(args.heldout_dir, d, c)
            if held and forget and noise_seed(held["meta"]) == noise_seed(forget["meta"]):
                problems.append(f"{synthetic_path(args.heldout_dir, d, c)} was made with the same noise seed as the "
                                "forget set: a held-out set must come from another datagen run (--noise_seed)")
        if "retain" in sides:
            gone = forgotten_with(args, targets, (d, c))  # no forgotten class is kept
            for name in retain_datasets(args, datasets, d):
                for other in datasets[name].classnames:
                    if (name, other) not in gone:
                        check(args.retain_dir, name, other)
    if missing and not sides:
        problems.insert(0, f"no synthetic images for {len(missing)} class(es), e.g. {missing[0]}: "
                           "run datagen.py first (sh datagen.sh ...) or set --generated_dir")
    elif missing:
        problems.insert(0, f"no synthetic images for {len(missing)} file(s), e.g. {missing[0]}: run datagen.py first "
                           f"('datagen.py --method confident' makes held-out and retain sets) "
                           f"or set --generated_dir / {' / '.join(SIDE_DIRS[s] for s in sides)}")
    return list(dict.fromkeys(problems))


def forgotten_with(args: argparse.Namespace, targets: list, target: tuple[str, str]) -> set[tuple[str, str]]:
    """The classes a request that forgets `target` forgets: every target of a joint run, else the class."""
    return set(targets) if args.protocol == "joint" else {target}


def retain_datasets(args: argparse.Namespace, datasets: dict, own: str) -> list[str]:
    """The datasets whose retain sets a class of `own` keeps (--retain_scope), its own first."""
    return [own] + ([n for n in datasets if n != own] if args.retain_scope == "all" else [])


def run_settings(args: argparse.Namespace, cfg) -> dict:
    """The run's settings as logs.json records them: the command line's run options, and the chosen method's
    configuration as it ran (method_config: the Config with the backbone's settings, the preset and the
    command line applied). Other methods' options are not recorded."""
    options = set(methods.option_fields())
    return {**{k: v for k, v in vars(args).items() if k not in options},
            "method_config": json.loads(json.dumps(asdict(cfg)))}


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    run, targets, mod, cfg, datasets = validate(args)
    seed_everything(args.seed)
    lm = load_model(args.backbone_arch, args.pretrained, args.device, args.data_root)
    key = run_model_key(args.backbone_arch, args.pretrained, args.seed)
    run_folder = RunFolder(args.output_dir)
    settings = {**run_settings(args, cfg), "model": resolve_arch(args.backbone_arch), "model_key": key}
    run_folder.begin(settings)
    before = {n: baselines(lm, ds, args.device, train=False) for n, ds in datasets.items()}  # test figures only
    run_folder.add_before(before)
    # every synthetic file is read and checked before the first class starts, not when its turn comes
    use_images = methods.needs_images(mod, cfg)
    synthetic = args.generated_dir if args.generated_data else None
    images = {(d, c): forget_images(lm, datasets[d], c, key, synthetic, args.seed) if use_images else (None, None)
              for d, c in targets}
    sides = methods.side_sets(mod, cfg)
    evaluator = Evaluator(lm, datasets, args.device, args.workers)
    logs: dict = {}
    # per_class: a request per class, from the original model; sequential: a request per class, each from the
    # model the previous left (`base`: every tensor changed so far; a rerun starts from the saved model of the
    # last finished request); joint: one request of every class
    sequential = args.protocol == "sequential"
    requests = [targets] if args.protocol == "joint" else [[t] for t in targets]
    forgotten = [t for t in targets if t in run_folder.finished()] if sequential else []
    base = {n: t.to(args.device) for n, t in run_folder.load_delta(*forgotten[-1])["changed"].items()} if forgotten else {}
    for index, request in enumerate(requests, 1):
        if all(t in run_folder.finished() for t in request):
            print(f"{', '.join(f'{d}/{c}' for d, c in request)}: already in {run_folder.logs_file}, skipped")
            continue
        start = time.time()
        label = request[0][0] + "/" + request[0][1] if len(request) == 1 else f"{len(request)} classes"
        tasks = [forget_task(lm, datasets, d, c, images[(d, c)], targets, evaluator, args, sides) for d, c in request]
        # the original model's figures on the classes forgotten once this request is done (cached features)
        set_before = evaluator.set_figures(forgotten + [t for t in request if t not in forgotten], {}) \
            if args.protocol != "per_class" else None
        status = "done"
        with tqdm(total=getattr(cfg, "max_epochs", 1), desc=label, unit="epoch") as bar, applied(lm.model, base):
            tasks[0].progress = bar
            try:
                with precision(args.precision, args.device):
                    result = mod.unlearn(tasks[0], cfg) if len(tasks) == 1 else mod.unlearn_set(tasks, cfg)
            except NonFiniteLoss as e:
                result = MethodResult({}, e.summary)
                status = f"error: {e}; {'these classes keep' if len(tasks) > 1 else 'this class keeps'} the " \
                         f"{'previous' if sequential else 'original'} model"
        changed = {**base, **result.changed}  # against the original model (base is {} but under sequential)
        info = {}
        with applied(lm.model, changed):
            finals = {(t.dataset, t.classname): evaluator.final_results(t.dataset, t.classname, t.images, changed,
                                                                        real_train=not args.generated_data)
                      for t in tasks}
            if args.protocol != "per_class":
                forgotten += [t for t in request if t not in forgotten]
                info = {"request": {"protocol": args.protocol, "index": index,
                                    "classes": [list(t) for t in request],
                                    "before": set_before,
                                    "after": evaluator.set_figures(forgotten, changed)}}
        if args.save_best_model or args.protocol != "per_class" or args.export:
            run_folder.save_delta(*request[0], changed, {"model_key": key, "arch": lm.name, "pretrained": lm.pretrained,
                                                         "method": args.method, "protocol": args.protocol,
                                                         # every class this model forgot
                                                         "classes": [list(t) for t in (forgotten or request)]})
        if sequential:
            base = changed
        secs = time.time() - start
        summary = {**result.summary, "changed_tensors": sorted(result.changed), "seconds": round(secs, 1),
                   "status": status}
        records = {t: {"summary": {**summary, **({"synthetic": images[t][1]} if images[t][1] else {})},
                       **result.log, **info, "final_results": finals[t]} for t in request}
        logs = run_folder.add_records(records, settings)
        for t in request:
            print(summary_line(*t, before, finals[t], records[t]["summary"], secs))
        if info:
            print(set_line(info["request"]))
    if args.export:
        export(lm, run_folder, targets, args, settings)
    return logs or run_folder.logs()


def forget_task(lm: LoadedModel, datasets: dict[str, DatasetSplits], ds_name: str, classname: str,
                forget: tuple[torch.Tensor | None, dict | None], targets: list, evaluator: Evaluator,
                args: argparse.Namespace, sides: list[str]) -> ForgetTask:
    """What the method gets for one class of a request: its images (on the run's device), its dataset's
    names and templates, the other datasets' prompts with every class of the run left out (`targets`),
    its side sets, its accuracy watch and a generator seeded by the class."""
    ds, idx = datasets[ds_name], datasets[ds_name].classnames.index(classname)
    x = forget[0].to(args.device) if forget[0] is not None else None
    seed = class_seed(args.seed, ds_name, classname)
    gone = forgotten_with(args, targets, (ds_name, classname))
    task = ForgetTask(
        model=lm.model, tokenizer=lm.tokenizer, classnames=ds.classnames, template=ds.template, class_index=idx,
        templates=list(ds.templates), dataset=ds_name,
        images=x, caption=CAPTION.format(classname),
        # every other dataset the run evaluates (--run_ds and --eval_ds): names only, no image; a joint
        # request's own classes are not kept
        other_prompts=[o.prompt(c) for n, o in datasets.items() if o is not ds for c in o.classnames
                       if (n, c) not in gone],
        syn_accuracy=(lambda: evaluator.accuracy(x, idx, evaluator.weights(ds_name, text_changed=True)))
        if x is not None else (lambda: math.nan),
        # every draw of the method on the run's device, seeded per class: a class's result does not
        # depend on which other classes run (CUDA and CPU streams differ by design)
        generator=torch.Generator(device=args.device).manual_seed(seed), seed=seed,
        train_view=real_train_view(lm, ds, classname, seed) if not args.generated_data else None,
        on_improved=(lambda: evaluator.main_figures(ds_name, classname, x, {"image": True, "text": True},
                                                    real_train=not args.generated_data))
        if args.debug else None)
    if "heldout" in sides:
        task.heldout = side_images(args.heldout_dir, lm, ds, [classname])[0].to(args.device)
    if "retain" in sides:
        r, labels = side_images(args.retain_dir, lm, ds, [c for c in ds.classnames if (ds_name, c) not in gone])
        task.retain, task.retain_labels = r.to(args.device), labels.to(args.device)
        for name in retain_datasets(args, datasets, ds_name)[1:]:  # --retain_scope all: the other datasets too
            other = datasets[name]
            r, labels = side_images(args.retain_dir, lm, other, [c for c in other.classnames if (name, c) not in gone])
            task.retain_elsewhere.append((r.to(args.device), labels.to(args.device),
                                          lm.tokenizer([other.prompt(c) for c in other.classnames]).to(args.device)))
    return task


def export(lm: LoadedModel, run_folder: RunFolder, targets: list, args: argparse.Namespace, settings: dict) -> None:
    """The final model (the last request's saved model) in open_clip's layout, with unlearning.json."""
    info = {"base_model": {"arch": lm.name, "tag": lm.tag, "pretrained": lm.pretrained,
                           "weights_sha1": weights_hash(lm.model)},
            "forgotten": [list(t) for t in targets], "protocol": args.protocol, "method": args.method,
            "method_config": settings["method_config"], "seed": args.seed,
            "run_folder": str(run_folder.path.resolve()), "commit": commit(), "audit": None}
    with applied(lm.model, run_folder.load_delta(*targets[-1])["changed"]):
        path = export_model(lm.model, model_config(lm.name), args.export, info)
    print(f"exported the unlearned model to {path}: open_clip.create_model_and_transforms('local-dir:{path}')")


def set_line(request: dict) -> str:
    """After a sequential request: every class forgotten so far, and each dataset's other classes."""
    after = request["after"]
    gone = " ".join(f"{c} {v:.3f}" for d in after.values() for c, v in d["forgotten"].items())
    kept = " | ".join(f"{d} kept {v['kept_acc']:.3f}" for d, v in after.items() if v["kept_acc"] is not None)
    return f"  after request {request['index']}: forgotten {gone} | {kept}"


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
