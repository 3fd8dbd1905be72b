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

import interrupts  # noqa: F401  (first: Ctrl-C during the imports below is one line)

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from common import ArgumentParser, UserError, _atomic, check_all, check_device, check_writable, default_data_root, \
    default_device, file_hash, run_cli
from datasets import DatasetSplits, build_datasets
from export import add_audit, read_info
from models import DEMO_MODELS, LoadedModel, applied, check_model, load_model, towers_changed
from probes import ORACLE, ORIGINAL, UNLEARNED, AuditConfig, Case, Figure, Subject, blast_prompts, class_accuracy, \
    figures, run_probes
from runs import RunFolder
from tables import to_markdown
from zeroshot import run_model_key

class Auditor:
    """The original model of runs and their datasets, with everything about the original computed once
    (shared by the runs of several seeds and methods); with `oracle`, also the demo CLIP retrained
    without each audited class (models.load_demo_oracle), the gold standard of forgetting."""

    def __init__(self, lm: LoadedModel, datasets: dict[str, DatasetSplits], cfg: AuditConfig, device: str,
                 evaluated: Sequence[str] = (), oracle: bool = False, data_root: str | None = None):
        self.lm, self.datasets, self.cfg, self.device = lm, datasets, cfg, device
        self.evaluated = [d for d in evaluated if d in datasets]  # the run's evaluated datasets (--eval_ds)
        self.oracle, self.data_root = oracle, data_root
        self.original = Subject(ORIGINAL, lm, device, cfg)
        self.prompts = blast_prompts(datasets, cfg.blast_template)
        self.done: dict = {}  # (dataset, class, seed) -> the references' figures

    def references(self, left_out: tuple[tuple[str, str], ...]) -> list[Subject]:
        """The models audited beside every unlearned one, each a column of the audit: the original,
        and the oracle retrained without the `left_out` classes (trained on first use, then cached)."""
        refs = [self.original]
        if self.oracle:
            from models import load_demo_oracle
            refs.append(Subject(ORACLE, load_demo_oracle(list(left_out), self.device, self.data_root, self.lm.name),
                                self.device, self.cfg))
        return refs

    def audit_class(self, ds_name: str, classname: str, changed: dict[str, torch.Tensor], seed: int = 0,
                    left_out: Sequence[tuple[str, str]] | None = None) -> dict:
        """Every probe (probes.PROBES) of the original (and the oracle) and of the model with `changed`
        applied; `seed` draws the relearning images. `left_out`: the classes the model forgot, when it forgot
        a set (the oracle is retrained without all of them); default the class alone."""
        left_out = tuple(sorted({tuple(t) for t in left_out})) if left_out else ((ds_name, classname),)
        ds = self.datasets[ds_name]
        others = [self.datasets[d] for d in self.evaluated if d != ds_name]
        start = time.time()

        def case(subject: Subject, target: float, references: dict) -> Case:
            return Case(subject, self.original, ds, classname, others, self.prompts, target, seed,
                        blast=subject.label != ORACLE, references=references, left_out=left_out)
        memo = (ds_name, classname, seed, left_out)
        if memo not in self.done:  # with the original weights, before any change
            idx = ds.classnames.index(classname)
            target = self.cfg.relearn_back * class_accuracy(*self.original.features(ds, self.cfg.split),
                                                            self.original.classifier(ds), idx)
            self.done[memo] = {ref.label: run_probes(case(ref, target, {})) for ref in self.references(left_out)}
        refs = self.done[memo]
        self.original.prompt_embeddings(self.prompts)  # the blast radius's reference
        towers = towers_changed(changed)
        unlearned = Subject(UNLEARNED, self.lm, self.device, self.cfg, self.original,
                            same_image=not towers["image"], same_text=not towers["text"])
        self.original.weights_elsewhere = True
        try:
            with applied(self.lm.model, {n: t.to(self.device) for n, t in changed.items()}):
                after = run_probes(case(unlearned, self.cfg.relearn_back * refs[ORIGINAL]["name"], refs))
        finally:
            self.original.weights_elsewhere = False
        notes = []
        if not ds.aliases.get(classname):
            notes.append("no alias for this class in the dataset's config: alias is None")
        if after["relearn_k"] < self.cfg.relearn_k:
            notes.append(f"relearn used the class's {after['relearn_k']} train images (< {self.cfg.relearn_k})")
        return {"changed_towers": [t for t, c in towers.items() if c], "n_changed": len(changed),
                "blast_prompts": len(self.prompts), **refs, UNLEARNED: after,
                "notes": notes, "seconds": round(time.time() - start, 1)}


# ----------------------------------------------------------------------------- run folders
def run_problems(run: RunFolder) -> list[str]:
    """Why a run folder cannot be audited (empty if it can): not a run folder, nothing finished, or a
    finished request without its saved model."""
    problems = run.problems()
    if problems:
        return problems
    finished = run.finished()
    missing = [run.delta_file(d, c) for d, c in finished if not run.delta_file(d, c).is_file()]
    if missing:
        return [f"{run.path}: no saved model for {len(missing)} class(es), e.g. {missing[0]}: the audit needs "
                "train.py --save_best_model 1 (train.sh sets it)"]
    return [] if finished else [f"{run.path}: no finished class in {run.log_name} yet"]


def settings_of(cfg: AuditConfig, seed: int, model_key: str, oracle: bool = False) -> dict:
    """What audit.json's figures depend on (the batch size does not change a figure)."""
    return {**{k: v for k, v in asdict(cfg).items() if k != "batch_size"}, "seed": seed, "model_key": model_key,
            "oracle": oracle}


def read_audit(run: RunFolder, split: str, settings: dict, redo: bool) -> dict:
    """The run's audit of `split` to continue (same settings), or a new one."""
    if redo or not run.audit_file(split).is_file():
        return {"settings": settings}
    try:
        audit = run.audit(split)
    except UserError:
        raise UserError(f"{run.audit_file(split)} is not valid JSON; rerun with --redo") from None
    old = audit.get("settings", {})
    diff = [k for k in settings if json.dumps(old.get(k)) != json.dumps(settings[k])]
    if diff:
        raise UserError(f"{run.audit_file(split)} was made with other settings ({', '.join(diff)}); rerun with --redo "
                        "to replace it")
    return audit


def audit_run(run: RunFolder, auditor: Auditor, seed: int | None = None, redo: bool = False) -> dict:
    """Audit every finished class of a run, writing its audit file after each; returns its content."""
    args = run.settings()
    key = args.get("model_key") or run_model_key(args["backbone_arch"], args.get("pretrained"), args.get("seed", 0))
    seed = int(args.get("seed", 0)) if seed is None else seed  # the relearning images: the run's seed unless given
    split = auditor.cfg.split
    audit = read_audit(run, split, settings_of(auditor.cfg, seed, key, auditor.oracle), redo)
    for ds, cls in run.finished():
        model_file = run.delta_file(ds, cls)
        sha = file_hash(model_file)
        if audit.get(ds, {}).get(cls, {}).get("model_sha1") == sha:
            print(f"{ds}/{cls}: already in {run.audit_file(split)}, skipped")
            continue
        saved = run.load_delta(ds, cls)
        if saved.get("model_key") not in (None, key):
            raise UserError(f"{model_file} was made from model '{saved['model_key']}', not the run's '{key}'")
        entry = auditor.audit_class(ds, cls, saved["changed"], seed, saved.get("classes"))
        audit.setdefault(ds, {})[cls] = {"model_sha1": sha, **entry}
        run.write_audit(split, audit)  # after every class: an interruption loses nothing finished
        print(summary_line(ds, cls, entry))
    exported = args.get("export")
    made_here = (read_info(f"local-dir:{exported}") or {}).get("run_folder") if exported else None
    if made_here and split == "test" and Path(made_here).resolve() == run.path.resolve():
        add_audit(exported, headline(audit, run.finished()))
        print(f"the audit's headline is in {Path(exported) / 'unlearning.json'} and its model card")
    return audit


def headline(audit: dict, classes: list[tuple[str, str]]) -> dict[str, str]:
    """The figures an exported model's card shows, per forgotten class: name, alias, linear probe and the
    blast radius, original -> unlearned."""
    out = {}
    for ds, cls in classes:
        e = audit.get(ds, {}).get(cls)
        if e:
            b, a = e[ORIGINAL], e[UNLEARNED]
            out[f"{ds}/{cls}"] = ", ".join(f"{k} {fmt(b.get(k))} → {fmt(a.get(k))}" for k in ("name", "alias", "probe")) \
                + f", blast {fmt(a.get('blast_mean'))} ({a.get('blast_count')}/{e.get('blast_prompts')} prompts moved)"
    return out


def fmt(v: Any, digits: int = 3) -> str:
    """A figure for people: '-' for none, floats rounded."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def cell(figure: Figure, figs: dict, entry: dict, digits: int = 3) -> str:
    """One model's figure as the table and the summary line show it."""
    return figure.cell(figs, entry) if figure.cell else fmt(figs.get(figure.key), digits)


def summary_line(ds: str, cls: str, entry: dict) -> str:
    b, a = entry["original"], entry["unlearned"]
    parts = [f"{f.label} {cell(f, b, entry)}->{cell(f, a, entry)}" if f.paired else f"{f.label} {cell(f, a, entry)}"
             for f in figures() if f.plot or not f.paired]
    return f"audit {ds}/{cls}: " + " | ".join(parts) + f" | {entry['seconds']:.1f} s"


def audit_table(run: RunFolder, digits: int = 3, split: str = "test") -> pd.DataFrame:
    """A run's audit of `split` as a display table: per class, 'original -> unlearned' for each paired
    figure (and the oracle's, when it was audited), the unlearned model's value for the others."""
    rows = []
    for (ds, name), e in run.audited(split).items():
        before, after, oracle = e[ORIGINAL], e[UNLEARNED], e.get(ORACLE)
        row = {"ds": ds, "name": name, "changed": ", ".join(e.get("changed_towers", [])) or "nothing"}
        for f in figures():
            if f.key not in after and f.key not in before:
                continue  # a figure this audit file predates, or one for another audit (oracle_agreement)
            row[f.label] = cell(f, after, e, digits)
            if f.paired:
                row[f.label] = f"{cell(f, before, e, digits)} → {row[f.label]}" + \
                    (f" (oracle {cell(f, oracle, e, digits)})" if oracle else "")
        rows.append(row)
    return pd.DataFrame(rows)


AUDIT_LEGEND = ("Forget-class figures on real images, original → unlearned model: " + "; ".join(
    f"{f.label}: {f.legend}" for f in figures()) + ". 'oracle': the demo CLIP retrained without the class.")


# ----------------------------------------------------------------------------- the plot
def plot_audit(audit: dict, path: str | Path | None = None):
    """One row per class: the plotted figures side by side (original, oracle, unlearned), and the relearning
    curves."""
    from matplotlib.figure import Figure as PlotFigure
    entries = [(ds, cls, e) for ds, classes in audit.items() if ds != "settings" for cls, e in classes.items()]
    fig = PlotFigure(figsize=(11, 2.9 * max(len(entries), 1)), layout="constrained")
    axes = fig.subplots(max(len(entries), 1), 2, squeeze=False, width_ratios=[3, 2])
    plotted = [f for f in figures() if f.plot]
    colors = {"original": "#8c9fb8", "oracle": "#5a9e6f", "unlearned": "#d9712b"}
    for (ax, ax_curve), (ds, cls, e) in zip(axes, entries):
        labels = [k for k in e if isinstance(e[k], dict) and "name" in e[k]]  # the audited models
        x = np.arange(len(plotted))
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            values = [e[label].get(f.key) for f in plotted]
            drawn = ax.bar(x + (j - (len(labels) - 1) / 2) * width, [0 if v is None else v for v in values], width,
                           label=label, color=colors.get(label))
            ax.bar_label(drawn, ["n/a" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=1)
            ax_curve.plot(e[label]["relearn_curve"], label=label, color=colors.get(label))
        ax.set_xticks(x, [f.label for f in plotted], fontsize=8)
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


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    d = AuditConfig()
    p = ArgumentParser(description="Audit the forgetting of run folders: name, template ensemble, alias, "
                                            "linear probe, relearning and blast radius (writes audit.json and "
                                            "audit.png in each).")
    p.add_argument("folders", nargs="*", metavar="folder", help="run folders, e.g. results/results1/seed_0/")
    p.add_argument("--tokens", action="store_true",
                   help="print which tokens each text-side method touches for the paper's 12 classes "
                        "(tokenizer only, no weights) and exit")
    p.add_argument("--tokens_arch", default="RN50", help="tokenizer of --tokens (default: %(default)s)")
    p.add_argument("--tokens_ds", default=None,
                   help="with --tokens: every class of these datasets instead (comma-separated, read from "
                        "--data_root), e.g. PinsFaces,CelebFaces: people share first names and surname pieces")
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


def validate(args: argparse.Namespace) -> list[tuple[RunFolder, dict]]:
    """The options, and every folder's run, datasets and model, checked before any model is loaded."""
    problems = check_device(args.device)
    for name in ("relearn_k", "relearn_steps", "batch_size"):
        if getattr(args, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.folders:
        problems.append("no run folder given (or --tokens)")
    runs, found = read_runs(args.folders, args.oracle, args.data_root)
    check_all(problems + found)
    return runs


def read_runs(folders: Sequence[str | Path], oracle: bool = False, data_root: str | None = None
              ) -> tuple[list[tuple[RunFolder, dict]], list[str]]:
    """Each run folder with its evaluated datasets, and every problem that stops an audit of them."""
    problems, runs = [], []
    for run in map(RunFolder, folders):
        run_found = run_problems(run)
        problems += run_found or check_writable(run.path)
        if run_found:
            continue
        settings = run.settings()
        tag, model_problems = check_model(settings.get("backbone_arch", "?"), settings.get("pretrained"))
        if oracle and tag not in DEMO_MODELS:
            model_problems.append(f"--oracle retrains a demo CLIP ({', '.join(DEMO_MODELS)}): {run.path} is a run "
                                  f"of '{tag}'")
        datasets, ds_problems = build_datasets(evaluated(settings), data_root or settings.get("data_root")
                                               or default_data_root())
        problems += [f"{run.path}: {p}" for p in model_problems + ds_problems]
        problems += [f"{run.path}: class '{c}' is not in {d}" for d, c in run.finished()
                     if d in datasets and c not in datasets[d].classnames]
        runs.append((run, datasets))
    return runs, problems


def evaluated(settings: dict) -> list[str]:
    """The datasets a run evaluated (--run_ds, then --eval_ds)."""
    names = f"{settings.get('run_ds', '')},{settings.get('eval_ds') or ''}".split(",")
    return [n for n in dict.fromkeys(n.strip() for n in names) if n]


def audit_folders(runs: Sequence[tuple[RunFolder, dict]], cfg: AuditConfig, device: str, seed: int | None = None,
                  redo: bool = False, oracle: bool = False, data_root: str | None = None) -> dict[str, dict]:
    """Audit run folders (validated: `validate`'s output), each written as it goes; one original model
    (and its figures) per model and datasets, shared by the runs of several seeds and methods."""
    auditors: dict = {}
    out = {}
    for run, datasets in runs:
        a = run.settings()
        key = (a["backbone_arch"], a.get("pretrained"), tuple(datasets))
        if key not in auditors:
            lm = load_model(a["backbone_arch"], a.get("pretrained"), device, data_root or a.get("data_root"))
            auditors[key] = Auditor(lm, datasets, cfg, device, evaluated(a), oracle, data_root or a.get("data_root"))
        audit = audit_run(run, auditors[key], seed, redo)
        plot_audit(audit, run.audit_plot_file(cfg.split))
        out[str(run.path)] = audit
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.tokens:
        from tokens import dataset_token_report, paper_token_report, print_token_report
        if args.tokens_ds:
            datasets, problems = build_datasets(args.tokens_ds, args.data_root or default_data_root())
            check_all(problems)
            rows = dataset_token_report(datasets, args.tokens_arch)
        else:
            rows = paper_token_report(args.tokens_arch)
        print_token_report(rows)
        return {"tokens": rows}
    runs = validate(args)
    cfg = AuditConfig(relearn_k=args.relearn_k, relearn_steps=args.relearn_steps, batch_size=args.batch_size,
                      split=args.split)
    start = time.time()
    out = audit_folders(runs, cfg, args.device, args.seed, args.redo, args.oracle, args.data_root)
    for run, _ in runs:
        print(f"\n{run.path} (wrote {run.audit_file(cfg.split)} and {run.audit_plot_file(cfg.split)}):")
        print(to_markdown(audit_table(run, split=cfg.split)), end="")
    print(f"\naudit of {len(out)} run(s) in {time.time() - start:.1f} s")
    return out


if __name__ == "__main__":
    run_cli(main)
