"""audit: has the class really been forgotten? Several probes of every forgotten class of a run.

The paper judges forgetting by one figure: zero-shot accuracy on the class's test images with the
dataset's prompt. A method can drive that to 0 by changing what the prompt's words mean while the
image tower still knows the class perfectly. For each forgotten class of a run folder, this audits
the unlearned model (the original + the class's saved changed tensors) and the original, side by side:

- name      zero-shot accuracy on the class's test images, the dataset's template (the paper's figure);
- ensemble  the same with every template of the dataset (DatasetSplits.templates: the 80 CLIP
            ImageNet templates for the real datasets);
- alias     the dataset's classifier with the forget class named by its aliases instead
            (DatasetSplits.aliases): its weight is the normalised mean embedding of the aliases in the
            dataset's template, every other class keeps its name; None when the class has no alias;
- probe     a linear probe (logistic regression) fitted on frozen image features of the train split:
            its recall on the class's test images (what the image tower still knows);
- relearn   fine-tune on k real train images of the class (AuditConfig: the same recipe for every
            method): steps until the name accuracy is back at half of the original model's
            (0 if it already is; None if not within the budget), accuracy after the budget, the curve;
- blast     text embeddings of >= 1,000 prompts outside the run (open_clip's ImageNet class names in
            a template, minus any prompt of the run's datasets): mean 1 - cos against the original
            model, and how many moved more than AuditConfig.blast_threshold;
- rest, other  accuracy on the dataset's other classes, and on each other dataset the run evaluates;
- oracle    (--oracle, demo world) the demo CLIP retrained without the class (models.load_demo_oracle),
            audited the same way, and how often the unlearned model predicts what it predicts on the
            class's images (oracle_agreement).
--split val measures every figure on the val split instead (audit_val.json, audit_val.png): what
methods and settings are chosen by, so that the test split only reports them.

A tower the class's changed tensors leave alone is never recomputed: the original's features (or
text embeddings) are reused, so "unchanged" gives identical figures and a blast radius of exactly 0.

Output, per run folder: `audit.json` (rewritten atomically after every class; a rerun skips classes
already audited with the same settings and the same model file) and `audit.png`; the table is
printed, and `clip_forget_utils.create_results` adds the audit_* columns.

    python audit.py results/results1/seed_0/ results/results1_improved/seed_0/
    python audit.py --tokens        # which tokens each text-side method touches, the paper's 12 classes
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from common import REPO, UserError, _atomic, atomic_write_json, check_all, check_device, check_writable, \
    class_seed, default_data_root, default_device, run_cli
from datasets import DatasetSplits, build_datasets, dataset_config
from datasets.base import load_rgb
from clip_forget_utils import AUDIT_FILE, audit_file, audit_table, to_markdown
from models import LoadedModel, check_model, load_model, read_checkpoint
from zeroshot import build_classifier, classifier_weights, image_features, loader, run_model_key

BLAST_TOP = 5  # the prompts that moved most, kept in audit.json


@dataclass(frozen=True)
class AuditConfig:
    """Every setting of the audit; recorded in audit.json (another value needs --redo)."""
    probe_c: float = 1.0  # inverse L2 strength of the linear probe (scikit-learn's C), standardised features
    probe_max_iter: int = 1000
    relearn_k: int = 8  # real train images of the forget class (fewer if the class has fewer)
    relearn_steps: int = 40  # the budget: full-batch Adam steps
    # Adam on every parameter but BatchNorm's and the logit scale, BatchNorm in eval mode, no weight
    # decay; lr None: the architecture's unlearning lr (configs/archs), the same for every method
    relearn_lr: float | None = None
    relearn_betas: tuple[float, float] = (0.9, 0.98)
    relearn_eps: float = 1e-6
    relearn_back: float = 0.5  # "relearned" = name accuracy >= this x the original model's
    blast_template: str = "a photo of a {}."  # open_clip's ImageNet class names in this template
    blast_threshold: float = 0.05  # a prompt "moved" when 1 - cos exceeds this
    split: str = "test"  # where the probes are measured: test (to report) or val (to choose methods by)
    batch_size: int = 256  # images per forward pass


# ----------------------------------------------------------------------------- the models audited
class Subject:
    """One model state the audit probes: the original model, or an unlearned one (the same module
    with a class's changed tensors applied). A tower that is bit-identical to `base`'s reuses base's
    cached features or embeddings: they are never recomputed."""

    def __init__(self, label: str, lm: LoadedModel, device: str, cfg: AuditConfig, base: "Subject | None" = None,
                 same_image: bool = False, same_text: bool = False):
        self.label, self.lm, self.device, self.cfg = label, lm, device, cfg
        self.base, self.same = base, {"image": same_image and base is not None, "text": same_text and base is not None}
        self.cache: dict = {}
        self.frozen = False  # True while the module holds other weights: nothing new may be computed

    def _memo(self, tower: str, key, compute: Callable):
        owner = self.base if self.same[tower] else self
        if key not in owner.cache:
            if owner.frozen:  # computing now would measure another model's weights under this one's name
                raise RuntimeError(f"{owner.label}: {key[0]} was not computed before the weights changed")
            owner.cache[key] = compute()
        return owner.cache[key]

    # image side
    def features(self, ds: DatasetSplits, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image features (CPU) and labels of a split."""
        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            data = loader(ds.split(split), self.lm.preprocess, self.device, self.cfg.batch_size)
            feats, labels = image_features(self.lm.model, data, self.device, f"{self.label}: {ds.name} {split} features")
            return feats.cpu(), labels
        return self._memo("image", ("features", ds.name, split), compute)

    def probe_predictions(self, ds: DatasetSplits) -> np.ndarray:
        """Predictions on the audit's split of a linear probe fitted on this model's train-split features."""
        return self._memo("image", ("probe", ds.name, self.cfg.split), lambda: linear_probe(
            *self.features(ds, "train"), self.features(ds, self.cfg.split)[0], self.cfg))

    # text side
    def classifier(self, ds: DatasetSplits, ensemble: bool = False) -> torch.Tensor:
        """(D, K) zero-shot weights (CPU): the dataset's template, or its whole template ensemble."""
        if not ensemble:
            return self._memo("text", ("name", ds.name), lambda: classifier_weights(self.lm, ds, self.device).cpu())
        return self._memo("text", ("ensemble", ds.name), lambda: text_classifier(
            self.lm, [c.replace("_", " ") for c in ds.classnames], ds.templates, self.device))

    def alias_weight(self, ds: DatasetSplits, classname: str) -> torch.Tensor | None:
        aliases = ds.aliases.get(classname)
        if not aliases:
            return None
        return self._memo("text", ("alias", ds.name, classname), lambda: F.normalize(
            text_classifier(self.lm, aliases, [ds.template], self.device).mean(1), dim=0))

    def prompt_embeddings(self, prompts: tuple[str, ...]) -> torch.Tensor:
        return self._memo("text", ("prompts", prompts), lambda: text_classifier(
            self.lm, list(prompts), ["{}"], self.device).T)


def text_classifier(lm: LoadedModel, names: Sequence[str], templates: Sequence, device: str) -> torch.Tensor:
    """(D, len(names)) normalised mean embedding of each name over `templates` (CPU)."""
    return build_classifier(lm.model, lm.tokenizer, names, templates, device).cpu()


def class_accuracy(feats: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, idx: int) -> float:
    """Zero-shot accuracy on the images of class `idx`."""
    mask = labels == idx
    return ((feats[mask] @ weights).argmax(-1) == idx).float().mean().item()


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, cfg: AuditConfig) -> np.ndarray:
    """Predictions on x_test of a logistic regression fitted on (x_train, y_train) (deterministic)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe_c, max_iter=cfg.probe_max_iter))
    probe.fit(x_train.double().numpy(), y_train.numpy())
    return probe.predict(x_test.double().numpy())


# ----------------------------------------------------------------------------- relearning
def relearn(lm: LoadedModel, ds: DatasetSplits, idx: int, target: float, cfg: AuditConfig, seed: int,
            device: str) -> dict:
    """Fine-tune the model on cfg.relearn_k real train images of class `idx` (cross-entropy of its
    zero-shot logits, its own logit scale, against every class prompt of `ds`) and follow the class's
    accuracy on the audit's split (the name probe) after every step. The model is restored afterwards.

    Returns {"steps": first step with accuracy >= target (0: already there; None: not within the
    budget), "acc": accuracy after the budget, "curve": accuracy after 0..budget steps, "k": images}.
    """
    model = lm.model
    g = torch.Generator().manual_seed(class_seed(seed, ds.name, ds.classnames[idx]))
    train = [d for d in ds.train if d.label == idx]
    pick = torch.randperm(len(train), generator=g)[:cfg.relearn_k].tolist()
    x_train = torch.stack([lm.preprocess(load_rgb(train[i].impath)) for i in sorted(pick)]).to(device)
    x_test = torch.stack([lm.preprocess(load_rgb(d.impath)) for d in ds.split(cfg.split) if d.label == idx]).to(device)
    prompts = lm.tokenizer([ds.prompt(c) for c in ds.classnames]).to(device)
    y = torch.full((len(x_train),), idx, device=device)

    def accuracy() -> float:
        with torch.no_grad():
            w = F.normalize(model.encode_text(prompts), dim=-1)
            feats = torch.cat([model.encode_image(x) for x in x_test.split(cfg.batch_size)])
            return (F.normalize(feats, dim=-1) @ w.T).argmax(-1).eq(idx).float().mean().item()

    lr = cfg.relearn_lr if cfg.relearn_lr is not None else arch_lr(lm)
    params = trainable(model)
    saved = [(p.detach().clone(), p.requires_grad) for p in params]
    for p in params:
        p.requires_grad_(True)  # whatever an earlier step of the pipeline froze
    opt = torch.optim.Adam(params, lr=lr, betas=cfg.relearn_betas, eps=cfg.relearn_eps, weight_decay=0.0,
                           fused=True)  # one kernel for all tensors: 5x faster on a CPU
    model.eval()  # BatchNorm statistics stay as they are; CLIP has no dropout to switch
    curve = [accuracy()]
    try:
        for _ in range(cfg.relearn_steps):
            img = F.normalize(model.encode_image(x_train), dim=-1)
            txt = F.normalize(model.encode_text(prompts), dim=-1)
            loss = F.cross_entropy(model.logit_scale.exp() * img @ txt.T, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(accuracy())
    finally:
        with torch.no_grad():
            for p, (value, grad) in zip(params, saved):
                p.copy_(value)
                p.requires_grad_(grad)
        opt.zero_grad(set_to_none=True)
    steps = next((s for s, a in enumerate(curve) if a >= target), None)
    return {"steps": steps, "acc": curve[-1], "curve": curve, "k": len(x_train)}


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every parameter but BatchNorm's and the logit scale (relearning must not just sharpen logits)."""
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
          for p in m.parameters()}
    return [p for n, p in model.named_parameters() if id(p) not in bn and n != "logit_scale"]


def arch_lr(lm: LoadedModel) -> float:
    """The paper's unlearning lr for this architecture (configs/archs, else the method's default)."""
    from methods.lipschitz import Config
    from train import arch_config
    return float(arch_config(lm.name).get("lr", Config.lr))


# ----------------------------------------------------------------------------- one class
def blast_prompts(datasets: dict[str, DatasetSplits], template: str) -> tuple[str, ...]:
    """open_clip's ImageNet class names in `template`, minus every class prompt of the run."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    own = {ds.prompt(c) for ds in datasets.values() for c in ds.classnames}
    return tuple(dict.fromkeys(p for p in (template.format(c) for c in IMAGENET_CLASSNAMES) if p not in own))


def subject_figures(subject: Subject, original: Subject, ds: DatasetSplits, classname: str, prompts: tuple[str, ...],
                    target: float, seed: int, others: Sequence[DatasetSplits] = (), blast: bool = True) -> dict:
    """Every figure of AUDIT_FIGURES for one model state and one class on the audit's split, with the
    relearning curve, the predictions on the class's images and the prompts that moved most
    (blast_top); the state's weights must be in the module now. `others`: the run's other evaluated
    datasets; blast False: no blast radius (a model trained apart, the oracle, moves every prompt)."""
    idx, cfg = ds.classnames.index(classname), subject.cfg
    feats, labels = subject.features(ds, cfg.split)
    w = subject.classifier(ds)
    preds = (feats @ w).argmax(-1)
    mask = labels == idx
    out = {"name": preds[mask].eq(idx).float().mean().item(),
           "ensemble": class_accuracy(feats, labels, subject.classifier(ds, ensemble=True), idx),
           "rest": preds[~mask].eq(labels[~mask]).float().mean().item()}
    alias = subject.alias_weight(ds, classname)
    if alias is None:
        out["alias"] = None
    else:
        w_alias = w.clone()
        w_alias[:, idx] = alias
        out["alias"] = class_accuracy(feats, labels, w_alias, idx)
    out["probe"] = float((subject.probe_predictions(ds)[labels.numpy() == idx] == idx).mean())
    out["others"] = {}
    for o in others:
        f, y = subject.features(o, cfg.split)
        out["others"][o.name] = (f @ subject.classifier(o)).argmax(-1).eq(y).float().mean().item()
    out["other"] = float(np.mean(list(out["others"].values()))) if out["others"] else None
    back = relearn(subject.lm, ds, idx, target, cfg, seed, subject.device)
    out.update(relearn_steps=back["steps"], relearn_acc=back["acc"], relearn_curve=back["curve"], relearn_k=back["k"],
               forget_preds=preds[mask].tolist())
    if not blast:
        return {**out, "blast_mean": None, "blast_count": None, "blast_top": []}
    moved = prompt_shift(subject, original, prompts)
    top = moved.topk(min(BLAST_TOP, len(prompts)))
    out.update(blast_mean=moved.mean().item(), blast_count=int((moved > cfg.blast_threshold).sum()),
               blast_top=[[prompts[i], round(v, 4)] for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0])
    return out


def prompt_shift(subject: Subject, original: Subject, prompts: tuple[str, ...]) -> torch.Tensor:
    """1 - cos between the subject's and the original's text embedding of each prompt; exactly 0 for
    an unchanged text tower (nothing is recomputed)."""
    if subject.same["text"] or subject is original:
        return torch.zeros(len(prompts))
    # for unit vectors 1 - cos = |a - b|^2 / 2: exactly 0 for an unmoved prompt (1 - a.b is not: rounding)
    return (subject.prompt_embeddings(prompts) - original.prompt_embeddings(prompts)).pow(2).sum(-1) / 2


@contextmanager
def applied(model: torch.nn.Module, changed: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model with `changed` tensors in place of its own, restored on exit."""
    state = model.state_dict()
    unknown = [n for n in changed if n not in state]
    if unknown:
        raise UserError(f"changed tensor '{unknown[0]}' is not a parameter of this model")
    kept = {n: state[n].clone() for n in changed}
    try:
        for n, t in changed.items():
            state[n].copy_(t)
        yield
    finally:
        for n, t in kept.items():
            state[n].copy_(t)


def towers_changed(changed: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Which towers a set of changed tensors touches (the logit scale belongs to neither)."""
    return {"image": any(n.startswith("visual.") for n in changed),
            "text": any(not n.startswith("visual.") and n != "logit_scale" for n in changed)}


class Auditor:
    """The original model of runs and their datasets, with everything about the original computed once
    (shared by the runs of several seeds and methods); with `oracle`, also the demo CLIP retrained
    without each audited class (models.load_demo_oracle), the gold standard of forgetting."""

    def __init__(self, lm: LoadedModel, datasets: dict[str, DatasetSplits], cfg: AuditConfig, device: str,
                 evaluated: Sequence[str] = (), oracle: bool = False, data_root: str | None = None):
        self.lm, self.datasets, self.cfg, self.device = lm, datasets, cfg, device
        self.evaluated = [d for d in evaluated if d in datasets]  # the run's evaluated datasets (--eval_ds)
        self.oracle, self.data_root = oracle, data_root
        self.original = Subject("original", lm, device, cfg)
        self.prompts = blast_prompts(datasets, cfg.blast_template)
        self.done: dict = {}  # (dataset, class, seed) -> the references' figures

    def references(self, ds_name: str, classname: str) -> list[Subject]:
        """The models audited beside every unlearned one, each a column of the audit: the original,
        and the oracle retrained without the class (trained on first use, then cached)."""
        refs = [self.original]
        if self.oracle:
            from models import load_demo_oracle
            refs.append(Subject("oracle", load_demo_oracle([(ds_name, classname)], self.device, self.data_root),
                                self.device, self.cfg))
        return refs

    def audit_class(self, ds_name: str, classname: str, changed: dict[str, torch.Tensor], seed: int = 0) -> dict:
        """Figures of the original (and the oracle) and of the model with `changed` applied; `seed`
        draws the relearning images. With the oracle: how often the unlearned model predicts what the
        oracle predicts on the class's images (oracle_agreement)."""
        ds = self.datasets[ds_name]
        idx = ds.classnames.index(classname)
        others = [self.datasets[d] for d in self.evaluated if d != ds_name]
        start = time.time()
        if (ds_name, classname, seed) not in self.done:  # with the original weights, before any change
            name_acc = class_accuracy(*self.original.features(ds, self.cfg.split), self.original.classifier(ds), idx)
            self.done[(ds_name, classname, seed)] = {ref.label: subject_figures(
                ref, self.original, ds, classname, self.prompts, self.cfg.relearn_back * name_acc, seed, others,
                blast=ref is self.original) for ref in self.references(ds_name, classname)}
        refs = self.done[(ds_name, classname, seed)]
        self.original.prompt_embeddings(self.prompts)  # the blast radius's reference
        towers = towers_changed(changed)
        unlearned = Subject("unlearned", self.lm, self.device, self.cfg, self.original,
                            same_image=not towers["image"], same_text=not towers["text"])
        self.original.frozen = True
        try:
            with applied(self.lm.model, {n: t.to(self.device) for n, t in changed.items()}):
                after = subject_figures(unlearned, self.original, ds, classname, self.prompts,
                                        self.cfg.relearn_back * refs["original"]["name"], seed, others)
        finally:
            self.original.frozen = False
        if "oracle" in refs:
            after["oracle_agreement"] = float(np.mean(np.equal(after["forget_preds"], refs["oracle"]["forget_preds"])))
        notes = []
        if not ds.aliases.get(classname):
            notes.append("no alias for this class in the dataset's config: alias is None")
        if after["relearn_k"] < self.cfg.relearn_k:
            notes.append(f"relearn used the class's {after['relearn_k']} train images (< {self.cfg.relearn_k})")
        return {"changed_towers": [t for t, c in towers.items() if c], "n_changed": len(changed),
                "blast_prompts": len(self.prompts), **refs, "unlearned": after,
                "notes": notes, "seconds": round(time.time() - start, 1)}


# ----------------------------------------------------------------------------- run folders
@dataclass
class Run:
    folder: Path
    args: dict
    classes: list[tuple[str, str, Path]]  # (dataset, class, model file) of every finished class


def read_run(folder: Path) -> tuple[Run | None, list[str]]:
    """A run folder's settings and finished classes, or the problems that stop its audit."""
    if not folder.is_dir():
        return None, [f"run folder {folder} not found"]
    try:
        logs = json.loads((folder / "logs.json").read_text())
        args = json.loads((folder / "args.txt").read_text())
    except FileNotFoundError as e:
        seeds = sorted(p.name for p in folder.glob("seed_*"))
        return None, [f"{folder}: no {Path(e.filename).name}" + (f"; pass a seed folder: {', '.join(seeds)}" if seeds
                                                                 else " (has train.py run there?)")]
    except json.JSONDecodeError as e:
        return None, [f"{folder}: unreadable logs.json or args.txt ({e.msg})"]
    classes, missing = [], []
    for ds, entries in logs.items():
        if ds == "settings" or not isinstance(entries, dict):
            continue
        for cls, log in entries.items():
            if isinstance(log, dict) and log.get("final_results"):
                path = folder / "models" / ds / f"{cls.replace('/', '_')}.pt"
                (classes if path.is_file() else missing).append((ds, cls, path))
    problems = []
    if missing:
        problems.append(f"{folder}: no saved model for {len(missing)} class(es), e.g. {missing[0][2]}: the audit "
                        "needs train.py --save_best_model 1 (train.sh sets it)")
    if not classes and not missing:
        problems.append(f"{folder}: no finished class in logs.json yet")
    return Run(folder, args, [(d, c, p) for d, c, p in classes]), problems


def settings_of(cfg: AuditConfig, seed: int, model_key: str, oracle: bool = False) -> dict:
    """What audit.json's figures depend on (the batch size does not change a figure)."""
    return {**{k: v for k, v in asdict(cfg).items() if k != "batch_size"}, "seed": seed, "model_key": model_key,
            "oracle": oracle}


def run_seed(run: Run, seed: int | None) -> int:
    """The seed of the relearning images: the run's own unless given."""
    return int(run.args.get("seed", 0)) if seed is None else seed


def read_audit(path: Path, settings: dict, redo: bool) -> dict:
    """The run's audit.json to continue (same settings), or a new one."""
    if redo or not path.is_file():
        return {"settings": settings}
    try:
        audit = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path} is not valid JSON; rerun with --redo") from None
    old = audit.get("settings", {})
    diff = [k for k in settings if json.dumps(old.get(k)) != json.dumps(settings[k])]
    if diff:
        raise UserError(f"{path} was made with other settings ({', '.join(diff)}); rerun with --redo to replace it")
    return audit


def file_hash(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


def audit_run(run: Run, auditor: Auditor, seed: int | None = None, redo: bool = False) -> dict:
    """Audit every finished class of a run, writing audit.json after each; returns its content."""
    key = run.args.get("model_key") or run_model_key(run.args["backbone_arch"], run.args.get("pretrained"),
                                                     run.args.get("seed", 0))
    seed = run_seed(run, seed)
    path = run.folder / audit_file(auditor.cfg.split)
    audit = read_audit(path, settings_of(auditor.cfg, seed, key, auditor.oracle), redo)
    for ds, cls, model_file in run.classes:
        sha = file_hash(model_file)
        if audit.get(ds, {}).get(cls, {}).get("model_sha1") == sha:
            print(f"{ds}/{cls}: already in {path}, skipped")
            continue
        saved = read_checkpoint(str(model_file))
        if not isinstance(saved, dict) or "changed" not in saved:
            raise UserError(f"{model_file} is not a train.py model file (no 'changed' tensors)")
        if saved.get("model_key") not in (None, key):
            raise UserError(f"{model_file} was made from model '{saved['model_key']}', not the run's '{key}'")
        entry = auditor.audit_class(ds, cls, saved["changed"], seed)
        audit.setdefault(ds, {})[cls] = {"model_sha1": sha, **entry}
        atomic_write_json(path, audit)  # after every class: an interruption loses nothing finished
        print(summary_line(ds, cls, entry))
    return audit


def summary_line(ds: str, cls: str, entry: dict) -> str:
    b, a = entry["original"], entry["unlearned"]

    def fmt(v) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}" if isinstance(v, float) \
            else str(v)
    parts = [f"{f} {fmt(b[f])}->{fmt(a[f])}" for f in ("name", "ensemble", "alias", "probe", "relearn_acc")]
    parts += [f"relearn steps {fmt(a['relearn_steps'])}",
              f"blast {fmt(a['blast_mean'])} ({a['blast_count']}/{entry['blast_prompts']} moved)"]
    return f"audit {ds}/{cls}: " + " | ".join(parts) + f" | {entry['seconds']:.1f} s"


# ----------------------------------------------------------------------------- the plot
def plot_audit(audit: dict, path: str | Path | None = None):
    """One row per class: the probes side by side (original vs unlearned), and the relearning curves."""
    from matplotlib.figure import Figure
    entries = [(ds, cls, e) for ds, classes in audit.items() if ds != "settings" for cls, e in classes.items()]
    fig = Figure(figsize=(11, 2.9 * max(len(entries), 1)), layout="constrained")
    axes = fig.subplots(max(len(entries), 1), 2, squeeze=False, width_ratios=[3, 2])
    probes = ("name", "ensemble", "alias", "probe", "relearn_acc")
    colors = {"original": "#8c9fb8", "oracle": "#5a9e6f", "unlearned": "#d9712b"}
    for (ax, ax_curve), (ds, cls, e) in zip(axes, entries):
        labels = [k for k in e if isinstance(e[k], dict) and "name" in e[k]]  # the audited models
        x = np.arange(len(probes))
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            values = [e[label][p] for p in probes]
            drawn = ax.bar(x + (j - (len(labels) - 1) / 2) * width, [0 if v is None else v for v in values], width,
                           label=label, color=colors.get(label))
            ax.bar_label(drawn, ["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=1)
            ax_curve.plot(e[label]["relearn_curve"], label=label, color=colors.get(label))
        ax.set_xticks(x, ["name", "ensemble", "alias", "linear probe", "after relearn"], fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("forget-class accuracy")
        u = e["unlearned"]
        ax.set_title(f"{ds}: '{cls}'  (blast radius {u['blast_mean']:.3f}, {u['blast_count']}/{e['blast_prompts']} "
                     f"prompts moved; changed: {', '.join(e['changed_towers']) or 'nothing'})", fontsize=9)
        target = e["original"]["name"] * audit["settings"]["relearn_back"]
        ax_curve.axhline(target, color="grey", ls=":", lw=1)
        ax_curve.set_ylim(-0.05, 1.05)
        ax_curve.set_xlabel("relearning steps")
        steps = u["relearn_steps"]
        ax_curve.set_title(f"relearning on {u['relearn_k']} real images: back at half in "
                           f"{'>' + str(len(u['relearn_curve']) - 1) if steps is None else steps} steps", fontsize=9)
    if entries:
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside upper right", ncols=2, fontsize=8)
    if path is not None:
        _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return fig


# ----------------------------------------------------------------------------- the paper's 12 classes: tokens
def token_report(tokenizer, classnames: dict[str, list[str]], templates: dict[str, str],
                 forget: dict[str, list[str]], blast_template: str = AuditConfig.blast_template) -> list[dict]:
    """Per forget class, what each text-side method would change, found with the tokenizer alone.

    The token-row method (--towers token, --method improved) edits the tokens of the class's prompt
    that no other class prompt of the run uses (methods.hinge.own_token_rows, every dataset of `classnames`
    being the run); `imagenet_prompts_hit` counts open_clip's ImageNet prompts that contain one of
    them (they move too). Methods that train the text transformer (the paper's, --towers text/both)
    change the embedding of every prompt; --towers image changes none.
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    from methods.hinge import own_token_rows
    prompts = {d: [templates[d].format(c.replace("_", " ")) for c in names] for d, names in classnames.items()}
    imagenet = tokenizer([blast_template.format(c) for c in IMAGENET_CLASSNAMES])
    rows = []
    for d, names in forget.items():
        tokens = tokenizer(prompts[d])
        also = tokenizer([p for o in classnames if o != d for p in prompts[o]]) if len(classnames) > 1 else None
        for cls in names:
            idx = classnames[d].index(cls)
            own = own_token_rows(tokens, idx, also)
            in_order = [t for t in tokens[idx].tolist() if t in own]
            hit = torch.isin(imagenet, torch.tensor(own, dtype=imagenet.dtype)).any(1).sum().item() if own else 0
            ids = list(dict.fromkeys(in_order))
            rows.append({"ds": d, "name": cls, "prompt": prompts[d][idx], "token_ids": ids,
                         "token_rows": [token_text(tokenizer, t) for t in ids], "imagenet_prompts_hit": int(hit)})
    return rows


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decoder[token_id].replace("</w>", "")


def paper_token_report(arch: str = "RN50") -> list[dict]:
    """token_report for the paper's 12 classes: class lists from reference/, templates from configs/."""
    from forget_cls import FORGET_CLASSES
    from models import arch_tag, resolve_arch
    ref = json.loads((REPO / "reference" / f"zeroshot_openai_{arch_tag(arch)}.json").read_text())
    classnames = {d: list(classes) for d, classes in ref.items()}
    templates = {d: dataset_config(d).template for d in classnames}
    return token_report(open_clip.get_tokenizer(resolve_arch(arch)), classnames, templates,
                        {d: FORGET_CLASSES[d] for d in classnames})


def print_token_report(rows: list[dict]) -> None:
    import pandas as pd
    df = pd.DataFrame([{**r, "token_rows": " ".join(f"`{t}`" for t in r["token_rows"]) or "none: cannot run"}
                       for r in rows]).drop(columns="token_ids")
    print("Tokens the token-row method (--towers token, --method improved) edits: those of the class's prompt that "
          "no other class prompt of the four datasets uses; imagenet_prompts_hit: ImageNet prompts that contain one "
          "of them (they move too). Methods that train the text transformer (the paper's, --towers text) change "
          "every prompt's embedding; --towers image changes none.\n")
    print(to_markdown(df), end="")
    print(f"\n{sum(not r['token_rows'] for r in rows)} of {len(rows)} classes have no token of their own.")


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = AuditConfig()
    p = argparse.ArgumentParser(description="Audit the forgetting of run folders: name, template ensemble, alias, "
                                            "linear probe, relearning and blast radius (writes audit.json and "
                                            "audit.png in each).")
    p.add_argument("folders", nargs="*", metavar="folder", help="run folders, e.g. results/results1/seed_0/")
    p.add_argument("--tokens", action="store_true",
                   help="print which tokens each text-side method touches for the paper's 12 classes "
                        "(tokenizer only, no weights) and exit")
    p.add_argument("--tokens_arch", default="RN50", help="tokenizer of --tokens (default: %(default)s)")
    p.add_argument("--device", default=default_device(), help="default: %(default)s")
    p.add_argument("--data_root", default=None, help="default: the run's own (args.txt)")
    p.add_argument("--seed", type=int, default=None, help="relearning image choice (default: the run's seed)")
    p.add_argument("--redo", action="store_true", help="audit every class again (replaces audit.json)")
    p.add_argument("--relearn_k", type=int, default=d.relearn_k,
                   help="real train images to relearn from (default: %(default)s)")
    p.add_argument("--relearn_steps", type=int, default=d.relearn_steps,
                   help="relearning budget in steps (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=d.batch_size,
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("--split", default=d.split, choices=["test", "val"],
                   help="where the probes are measured: test (audit.json, the report) or val (audit_val.json, "
                        "to choose methods and settings by) (default: %(default)s)")
    p.add_argument("--oracle", action="store_true",
                   help="demo world: also audit the demo CLIP retrained without each class (the gold standard; "
                        "trained once per class, a minute or two on a CPU, then cached)")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> list[tuple[Run, dict]]:
    """Every folder's run, datasets and model checked before any model is loaded."""
    problems = check_device(args.device)
    for name in ("relearn_k", "relearn_steps", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.folders:
        problems.append("no run folder given (or --tokens)")
    runs = []
    for folder in map(Path, args.folders):
        run, run_problems = read_run(folder)
        problems += run_problems + (check_writable(folder) if run else [])
        if run is None or run_problems:
            continue
        tag, model_problems = check_model(run.args.get("backbone_arch", "?"), run.args.get("pretrained"))
        if args.oracle and tag != "demo":
            model_problems.append(f"--oracle retrains the demo CLIP: {folder} is a run of '{tag}'")
        names = list(dict.fromkeys(f"{run.args.get('run_ds', '')},{run.args.get('eval_ds') or ''}".split(",")))
        datasets, ds_problems = build_datasets([n for n in names if n.strip()],
                                               args.data_root or run.args.get("data_root") or default_data_root())
        problems += [f"{folder}: {p}" for p in model_problems + ds_problems]
        problems += [f"{folder}: class '{c}' is not in {d}" for d, c, _ in run.classes
                     if d in datasets and c not in datasets[d].classnames]
        runs.append((run, datasets))
    check_all(problems)
    return runs


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.tokens:
        rows = paper_token_report(args.tokens_arch)
        print_token_report(rows)
        return {"tokens": rows}
    runs = validate(args)
    cfg = AuditConfig(relearn_k=args.relearn_k, relearn_steps=args.relearn_steps, batch_size=args.batch_size,
                      split=args.split)
    auditors: dict = {}  # one original model (and its figures) per model and datasets, shared by runs
    out = {}
    start = time.time()
    for run, datasets in runs:
        a = run.args
        key = (a["backbone_arch"], a.get("pretrained"), tuple(datasets))
        if key not in auditors:
            lm = load_model(a["backbone_arch"], a.get("pretrained"), args.device,
                            args.data_root or a.get("data_root"))
            evaluated = [d for d in (a.get("eval_ds") or a.get("run_ds", "")).split(",") if d]
            auditors[key] = Auditor(lm, datasets, cfg, args.device, evaluated, args.oracle,
                                    args.data_root or a.get("data_root"))
        audit = audit_run(run, auditors[key], args.seed, args.redo)
        plot_audit(audit, run.folder / Path(audit_file(cfg.split)).with_suffix(".png"))
        out[str(run.folder)] = audit
    for folder in out:
        written = Path(folder) / audit_file(cfg.split)
        print(f"\n{folder} (wrote {written} and {written.with_suffix('.png')}):")
        print(to_markdown(audit_table(Path(folder), split=cfg.split)), end="")
    print(f"\naudit of {len(out)} run(s) in {time.time() - start:.1f} s")
    return out


if __name__ == "__main__":
    run_cli(main)
