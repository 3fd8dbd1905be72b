"""The forgetting audit's probes, each declared once: its function and the figures it gives, with their
labels and legends. audit.py runs every registered probe; audit.json, its table and plot, the audit_*
columns of clip_forget_utils.create_results and the methods comparison all derive from this registry.

Adding a probe is one entry: a function of a Case (one model state, one forgotten class) returning its
figures, decorated with @probe(Figure(...)). docs/extending.md has the recipe.

A Subject is one model state the probes read: the original model, an unlearned one (the same module
with a request's changed tensors applied) or the oracle. What it computes is memoised, and a tower
that is bit-identical to the original's reuses the original's features or embeddings: they are never
recomputed, so "unchanged" gives identical figures and a blast radius of exactly 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from common import class_seed
from datasets import DatasetSplits
from datasets.base import load_rgb
from models import LoadedModel
from zeroshot import EVAL_SCALE, build_classifier, classifier_weights, image_features, loader

BLAST_TOP = 5  # the prompts that moved most, kept in audit.json
# the models an audit entry holds figures of: the model before unlearning, the unlearned one, and (--oracle)
# the demo CLIP retrained without the class
ORIGINAL, UNLEARNED, ORACLE = "original", "unlearned", "oracle"


@dataclass(frozen=True)
class AuditConfig:
    """Every setting of the audit; recorded in audit.json (another value needs --redo)."""
    probe_c: float = 1.0  # inverse L2 strength of the linear probe (scikit-learn's C), standardised features
    probe_max_iter: int = 1000
    relearn_k: int = 8  # real train images of the forget class (fewer if the class has fewer)
    relearn_steps: int = 40  # the budget: full-batch Adam steps
    # Adam on every parameter but BatchNorm's and the logit scale, BatchNorm in eval mode, no weight
    # decay; lr None: the backbone's unlearning lr (configs/archs), the same for every method
    relearn_lr: float | None = None
    relearn_betas: tuple[float, float] = (0.9, 0.98)
    relearn_eps: float = 1e-6
    relearn_back: float = 0.5  # "relearned" = name accuracy >= this x the original model's
    blast_template: str = "a photo of a {}."  # open_clip's ImageNet class names in this template
    blast_threshold: float = 0.05  # a prompt "moved" when 1 - cos exceeds this
    mia_folds: int = 5  # cross-validation folds of the membership-inference attack
    split: str = "test"  # where the probes are measured: test (to report) or val (to choose methods by)
    batch_size: int = 256  # images per forward pass


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Figure:
    """One figure of the audit, per audited model: `key` in audit.json (and column audit_<key>)."""
    key: str
    label: str  # in tables and plots
    legend: str  # what it measures, one clause
    plot: bool = False  # a bar of audit.png (original, oracle and unlearned side by side)
    paired: bool = True  # the table shows original -> unlearned (else the unlearned model's value)
    compare: bool = True  # a column of the methods comparison (the paper's columns already hold name, rest, other)
    numeric: bool = True  # a number: a column of create_results
    cell: Callable[[dict, dict], str] | None = None  # the table's text from (the model's figures, the entry)


@dataclass(frozen=True)
class Probe:
    fn: Callable[["Case"], dict]
    figures: tuple[Figure, ...]


PROBES: list[Probe] = []


def probe(*figures: Figure) -> Callable:
    """Register a probe: `fn(case)` returns a dict with a value for each of `figures` (None where it does
    not apply) and any extra entries for audit.json (curves, predictions)."""
    def register(fn: Callable[[Case], dict]) -> Callable[[Case], dict]:
        PROBES.append(Probe(fn, figures))
        return fn
    return register


def figures() -> list[Figure]:
    """Every registered figure, in registration order."""
    return [f for p in PROBES for f in p.figures]


# ----------------------------------------------------------------------------- the models audited
class Subject:
    """One model state the probes read (see the module docstring)."""

    def __init__(self, label: str, lm: LoadedModel, device: str, cfg: AuditConfig, base: Subject | None = None,
                 same_image: bool = False, same_text: bool = False):
        self.label, self.lm, self.device, self.cfg = label, lm, device, cfg
        self.base, self.same = base, {"image": same_image and base is not None, "text": same_text and base is not None}
        self.cache: dict = {}
        self.weights_elsewhere = False  # the module holds another model's weights now: nothing may be computed

    def _memo(self, tower: str, key, compute: Callable):
        owner = self.base if self.same[tower] else self
        if key not in owner.cache:
            if owner.weights_elsewhere:  # computing now would measure another model's weights under this name
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


@dataclass
class Case:
    """One model state (subject) and one forgotten class, with what every probe reads; the subject's
    weights are in the module while its probes run."""
    subject: Subject
    original: Subject
    ds: DatasetSplits
    classname: str
    others: Sequence[DatasetSplits]  # the other datasets the run evaluates
    prompts: tuple[str, ...]  # the blast radius's prompts
    target: float  # name accuracy that counts as relearned
    seed: int
    blast: bool = True  # False for a model trained apart (the oracle): it moves every prompt
    references: dict = field(default_factory=dict)  # the figures of the models audited before (original, oracle)
    left_out: tuple = ()  # (dataset, class) of every class the model forgot with this one (a set): not kept

    def kept(self, ds: DatasetSplits, labels: torch.Tensor) -> torch.Tensor:
        """True for the labels of `ds` that are neither this class nor another class of the set."""
        gone = [ds.classnames.index(c) for d, c in {*self.left_out, (self.ds.name, self.classname)} if d == ds.name]
        return ~torch.isin(labels, torch.tensor(gone, dtype=labels.dtype))

    @property
    def cfg(self) -> AuditConfig:
        return self.subject.cfg

    @cached_property
    def idx(self) -> int:
        return self.ds.classnames.index(self.classname)

    @cached_property
    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features and labels of the audit's split."""
        return self.subject.features(self.ds, self.cfg.split)

    @cached_property
    def predictions(self) -> torch.Tensor:
        """Zero-shot predictions on the audit's split with the dataset's template."""
        return (self.split[0] @ self.subject.classifier(self.ds)).argmax(-1)

    @cached_property
    def mask(self) -> torch.Tensor:
        return self.split[1] == self.idx


def run_probes(case: Case) -> dict:
    """Every registered probe on one case: its figures and extras, in registration order."""
    out: dict[str, Any] = {}
    for p in PROBES:
        out.update(p.fn(case))
    return out


# ----------------------------------------------------------------------------- the probes
@probe(Figure("name", "name probe", "zero-shot accuracy on the class's images with the dataset's template "
              "(the paper's figure)", plot=True, compare=False))
def name_probe(c: Case) -> dict:
    preds = c.predictions[c.mask]
    return {"name": preds.eq(c.idx).float().mean().item(), "forget_preds": preds.tolist()}


@probe(Figure("ensemble", "ensemble", "the same with every template of the dataset", plot=True))
def ensemble_probe(c: Case) -> dict:
    return {"ensemble": class_accuracy(*c.split, c.subject.classifier(c.ds, ensemble=True), c.idx)}


@probe(Figure("alias", "alias", "the class named by its aliases (dataset configs) instead of its name", plot=True))
def alias_probe(c: Case) -> dict:
    alias = c.subject.alias_weight(c.ds, c.classname)
    if alias is None:
        return {"alias": None}
    w = c.subject.classifier(c.ds).clone()
    w[:, c.idx] = alias
    return {"alias": class_accuracy(*c.split, w, c.idx)}


@probe(Figure("probe", "linear probe", "recall of a logistic regression on frozen image features (train split): "
              "what the image tower still knows", plot=True))
def linear_probe_figure(c: Case) -> dict:
    return {"probe": float((c.subject.probe_predictions(c.ds)[c.mask.numpy()] == c.idx).mean())}


@probe(Figure("rest", "rest", "accuracy on the dataset's other classes (of a set run: those not forgotten)",
              compare=False))
def rest_probe(c: Case) -> dict:
    keep = c.kept(c.ds, c.split[1])
    preds, labels = c.predictions[keep], c.split[1][keep]
    return {"rest": preds.eq(labels).float().mean().item()}


@probe(Figure("other", "other datasets", "mean accuracy on each other dataset the run evaluates (without a set "
              "run's forgotten classes)", compare=False))
def other_probe(c: Case) -> dict:
    others = {}
    for o in c.others:
        f, y = c.subject.features(o, c.cfg.split)
        keep = c.kept(o, y)
        others[o.name] = (f[keep] @ c.subject.classifier(o)).argmax(-1).eq(y[keep]).float().mean().item()
    return {"others": others, "other": float(np.mean(list(others.values()))) if others else None}


def _steps_cell(figs: dict, entry: dict) -> str:
    return f">{len(figs['relearn_curve']) - 1}" if figs["relearn_steps"] is None else str(figs["relearn_steps"])


@probe(Figure("relearn_steps", "relearn steps", "steps of fine-tuning on a few real train images until the name "
              "accuracy is back at half the original's", paired=False, cell=_steps_cell),
       Figure("relearn_acc", "after relearn", "name accuracy after the relearning budget", plot=True))
def relearn_probe(c: Case) -> dict:
    back = relearn(c.subject.lm, c.ds, c.idx, c.target, c.cfg, c.seed, c.subject.device)
    return {"relearn_steps": back["steps"], "relearn_acc": back["acc"], "relearn_curve": back["curve"],
            "relearn_k": back["k"]}


@probe(Figure("blast_mean", "blast 1-cos", "mean 1 - cos of the text embeddings of prompts outside the run "
              "(ImageNet class names) against the original", paired=False),
       Figure("blast_count", "blast moved", "how many of them moved more than the audit's blast_threshold",
              paired=False, cell=lambda figs, e: f"{figs['blast_count']}/{e.get('blast_prompts', '?')}"),
       Figure("blast_top", "most moved prompt", "the one that moved most", paired=False, compare=False, numeric=False,
              cell=lambda figs, e: (figs.get("blast_top") or [["-"]])[0][0] + (
                  f" ({figs['blast_top'][0][1]:.2f})" if figs.get("blast_top") else "")))
def blast_probe(c: Case) -> dict:
    if not c.blast:
        return {"blast_mean": None, "blast_count": None, "blast_top": []}
    moved = prompt_shift(c.subject, c.original, c.prompts)
    top = moved.topk(min(BLAST_TOP, len(c.prompts)))
    return {"blast_mean": moved.mean().item(), "blast_count": int((moved > c.cfg.blast_threshold).sum()),
            "blast_top": [[c.prompts[i], round(v, 4)] for v, i in zip(top.values.tolist(), top.indices.tolist())
                          if v > 0]}


@probe(Figure("oracle_agreement", "agrees with oracle", "how often the unlearned model predicts what the oracle "
              "(the demo CLIP retrained without the class, audit.py --oracle) predicts on the class's images",
              paired=False))
def oracle_agreement(c: Case) -> dict:
    oracle = c.references.get(ORACLE)
    if oracle is None or c.subject.label != UNLEARNED:
        return {}
    return {"oracle_agreement": float(np.mean(np.equal(c.predictions[c.mask].tolist(), oracle["forget_preds"])))}


@probe(Figure("mia", "membership inference", "AUC of a logistic regression that tells the class's train images "
              "(members) from its images of the audit's split (non-members) by their zero-shot loss, confidence "
              "and entropy (0.5: no trace of which images were trained on)", plot=True))
def membership_inference(c: Case) -> dict:
    """The population membership-inference test of vision unlearning papers (SalUn, l1-sparse: a classifier
    on per-image loss and confidence features), on the class's own images. It sees a difference between
    images a model was trained on and others: the demo CLIP's train split, or images a method unlearned from
    (real-data mode). Not an attack on CLIP's pretraining data, which the audit never has (docs/audit.md)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    w = c.subject.classifier(c.ds)
    train_feats, train_labels = c.subject.features(c.ds, "train")
    members, others = train_feats[train_labels == c.idx], c.split[0][c.mask]
    folds = min(c.cfg.mia_folds, len(members), len(others))
    if folds < 2:
        return {"mia": None}
    logits = EVAL_SCALE * torch.cat([members, others]).double() @ w.double()
    logp = logits.log_softmax(-1)
    x = torch.stack([-logp[:, c.idx], logp[:, c.idx].exp(), -(logp.exp() * logp).sum(-1)], 1).numpy()
    y = np.r_[np.ones(len(members)), np.zeros(len(others))]
    cv = StratifiedKFold(folds, shuffle=True, random_state=class_seed(c.seed, c.ds.name, c.classname) % 2 ** 32)
    attack = make_pipeline(StandardScaler(), LogisticRegression(max_iter=c.cfg.probe_max_iter))
    return {"mia": float(cross_val_score(attack, x, y, cv=cv, scoring="roc_auc").mean())}


# ----------------------------------------------------------------------------- what the probes use
def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, cfg: AuditConfig) -> np.ndarray:
    """Predictions on x_test of a logistic regression fitted on (x_train, y_train) (deterministic)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), LogisticRegression(C=cfg.probe_c, max_iter=cfg.probe_max_iter))
    model.fit(x_train.double().numpy(), y_train.numpy())
    return model.predict(x_test.double().numpy())


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

    params = trainable(model)
    saved = [(p.detach().clone(), p.requires_grad) for p in params]
    for p in params:
        p.requires_grad_(True)  # whatever an earlier step of the pipeline froze
    opt = torch.optim.Adam(params, lr=relearn_lr(lm, cfg), betas=cfg.relearn_betas, eps=cfg.relearn_eps,
                           weight_decay=0.0, fused=True)  # one kernel for all tensors: 5x faster on a CPU
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


def relearn_lr(lm: LoadedModel, cfg: AuditConfig) -> float:
    """The relearning lr: the audit's own if set, else the backbone's unlearning lr (configs/archs)."""
    from models import arch_settings
    return cfg.relearn_lr if cfg.relearn_lr is not None else float(arch_settings(lm.name)["lr"])


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every parameter but BatchNorm's and the logit scale (relearning must not just sharpen logits)."""
    from methods.base import batchnorm_parameters
    bn = batchnorm_parameters(model)
    return [p for n, p in model.named_parameters() if id(p) not in bn and n != "logit_scale"]


def prompt_shift(subject: Subject, original: Subject, prompts: tuple[str, ...]) -> torch.Tensor:
    """1 - cos between the subject's and the original's text embedding of each prompt; exactly 0 for
    an unchanged text tower (nothing is recomputed)."""
    if subject.same["text"] or subject is original:
        return torch.zeros(len(prompts))
    # for unit vectors 1 - cos = |a - b|^2 / 2: exactly 0 for an unmoved prompt (1 - a.b is not: rounding)
    return (subject.prompt_embeddings(prompts) - original.prompt_embeddings(prompts)).pow(2).sum(-1) / 2


def blast_prompts(datasets: dict[str, DatasetSplits], template: str) -> tuple[str, ...]:
    """open_clip's ImageNet class names in `template`, minus every class prompt of the run."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    own = {ds.prompt(c) for ds in datasets.values() for c in ds.classnames}
    return tuple(dict.fromkeys(p for p in (template.format(c) for c in IMAGENET_CLASSNAMES) if p not in own))
