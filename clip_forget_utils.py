"""Results of unlearning runs as tables, scores and plots (SPEC §3).

A run folder (`results/results<ATTEMPT>/seed_<SEED>/`, written by train.py) holds `args.txt`,
`logs.json` and `zeroshot_before.json`. `create_results` turns it into one DataFrame row per
(dataset, forget class); `compute_avg_gain` gives the paper's score per row (lower is better);
`aggregate_seeds` averages several seeds; `compare_runs` puts runs side by side;
`plot_results` draws before/after bars. Where `audit.py` has audited a run (`audit.json`),
`create_results` adds its figures as `audit_*` columns after the paper's.

    python clip_forget_utils.py results/results1/seed_0/ --all_res 1

writes `results.md` and `results.png` into that folder and prints the table; given several
folders (e.g. the faithful and the improved run) it also prints them side by side.

    python clip_forget_utils.py compare results/results1 results/results1_improved

gives the methods x classes table (mean +- std over each method's seed_* folders: the paper's
columns, the audit's, the score and the time) as Markdown, and a trade-off plot.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend state, PNGs through Agg

from common import UserError, _atomic, atomic_write_text, check_all, check_writable, close_names, read_json, run_cli

BEFORE_FILE = "zeroshot_before.json"
ARGS_FILE = "args.txt"
KEY_COLUMNS = ["ds", "name"]
MAIN_COLUMNS = ["std", "full_Noforget", "cls_Noforget", "cls_forget", "full_forget"]
GEN_COLUMNS = ["acc_val_hard", "acc_val_true_data"]
NO_GEN_COLUMNS = ["acc_train"]
NOT_STD_KEYS = ("summary", "final_results")  # keys of a class's log that are not noise levels
AUDIT_FILE = "audit.json"  # written by audit.py (the test split; audit_val.json: the val split)
# audit.py's figures of each audited model: column audit_<figure> for the unlearned model,
# audit_<figure>_<model> for the models audited beside it (the original, the oracle), and
# audit_other_<dataset>[_<model>] for each other evaluated dataset
AUDIT_FIGURES = ("name", "ensemble", "alias", "probe", "rest", "other", "relearn_steps", "relearn_acc", "blast_mean",
                 "blast_count", "oracle_agreement")
UNLEARNED = "unlearned"
# backbone spellings -> the tag of the paper's reference file (reference/zeroshot_openai_<tag>.json)
REFERENCE_TAGS = {"RN50": "RN50", "RN50-quickgelu": "RN50",
                  "ViT-B/16": "ViT-B-16", "ViT-B-16": "ViT-B-16", "ViT-B-16-quickgelu": "ViT-B-16"}

Before = dict[str, dict[str, dict[str, float]]]  # {dataset: {classname: {figure: value}}}


# ---------------------------------------------------------------- reading a run folder

def _logs_path(res_folder: Path, log_name: str) -> Path:
    """The run's logs file; a missing folder or file is a user error with a hint."""
    if not res_folder.is_dir():
        raise UserError(f"results folder {res_folder} not found")
    path = res_folder / log_name
    if not path.is_file():
        seeds = sorted(p.name for p in res_folder.glob("seed_*") if p.is_dir())
        hint = f"; pass one of its seed folders: {', '.join(seeds)}" if seeds else " (has the run started?)"
        raise UserError(f"no {log_name} in {res_folder}{hint}")
    return path


def _read_args(res_folder: Path, logs: dict) -> tuple[dict, str]:
    """The run's arguments (as a dict, {} if unreadable) and the raw text of args.txt ('' if none)."""
    path = res_folder / ARGS_FILE
    text = path.read_text() if path.is_file() else ""
    try:
        args = json.loads(text) if text else {}
    except json.JSONDecodeError:
        args = {}
    if not isinstance(args, dict) or not args:
        settings = logs.get("settings")
        args = settings if isinstance(settings, dict) else {}
    return args, text


def _reference_dir() -> Path:
    from zeroshot import REFERENCE  # imported late: zeroshot pulls in open_clip
    return REFERENCE


def _reference_file(args: dict, rn: bool) -> Path | None:
    """The paper's published figures for the run's backbone: the args decide, else `rn`.

    Only OpenAI weights have published figures: a demo, random or fine-tuned model gets none.
    """
    arch = args.get("backbone_arch")
    if arch is None:
        tag = "RN50" if rn else "ViT-B-16"
    elif args.get("pretrained") in (None, "openai"):
        tag = REFERENCE_TAGS.get(arch)
    else:
        tag = None
    return _reference_dir() / f"zeroshot_openai_{tag}.json" if tag else None


def _cache_key(args: dict) -> str | None:
    """zeroshot.model_key of the run's model: as train.py recorded it, else derived from the
    arguments without building the model."""
    if args.get("model_key"):
        return str(args["model_key"])
    arch = args.get("backbone_arch")
    if not arch:
        return None
    try:
        import models
        import zeroshot
        pretrained = args.get("pretrained") or models.default_pretrained(arch)
        return zeroshot.model_key(SimpleNamespace(tag=models.arch_tag(arch), pretrained=pretrained))
    except (UserError, OSError, ImportError):
        return None


def load_before(res_folder: str | Path, datasets: Iterable[str], args: dict | None = None,
                rn: bool = True) -> Before:
    """'Before unlearning' figures per dataset, from the first source that has the dataset:
    the run's zeroshot_before.json, the cached baselines of its model, the paper's figures.
    Datasets found nowhere are left out (their columns become NaN)."""
    args = args or {}
    res_folder = Path(res_folder)
    wanted = list(dict.fromkeys(datasets))
    found: Before = {}
    if (res_folder / BEFORE_FILE).is_file():
        own = read_json(res_folder / BEFORE_FILE)
        found.update({d: own[d] for d in wanted if d in own})
    if any(d not in found for d in wanted):
        key = _cache_key(args)
        if key:
            from zeroshot import cached_baselines
            for d in wanted:
                cached = None if d in found else cached_baselines(key, d)
                if cached is not None:
                    found[d] = cached
    if any(d not in found for d in wanted):
        ref = _reference_file(args, rn)
        if ref is not None and ref.is_file():
            published = read_json(ref)
            found.update({d: published[d] for d in wanted if d not in found and d in published})
    return found


# ---------------------------------------------------------------- one row per forget class

def chosen_std(class_log: dict) -> float:
    """The noise std of the kept model: the last level whose record says improved == true;
    for logs without 'improved' fields (the paper's), the last level visited; 0 if none."""
    levels = [k for k in class_log if k not in NOT_STD_KEYS]
    records = [class_log[k] for k in levels]
    if any(isinstance(r, dict) and "improved" in r for r in records):
        levels = [k for k, r in zip(levels, records) if isinstance(r, dict) and r.get("improved") is True]
    if not levels:
        return 0.0
    try:
        return float(levels[-1])
    except ValueError:
        return math.nan


def _num(value: Any) -> float:
    """A figure as a float; None, missing or non-numeric -> NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _full_acc(before: Before, dataset: str) -> float:
    classes = before.get(dataset) or {}
    return _num(next(iter(classes.values()), {}).get("full_acc"))


def _class_row(ds: str, name: str, class_log: dict, before: Before, gen_data: bool, all_res: bool) -> dict:
    final = class_log.get("final_results") or {}
    after = (final.get(ds) or {}).get(name) or {}
    ref = (before.get(ds) or {}).get(name) or {}
    row = {"ds": ds, "name": name, "std": chosen_std(class_log),
           "full_Noforget": _num(ref.get("no_cls_acc")), "cls_Noforget": _num(ref.get("cls_acc_test")),
           "cls_forget": _num(after.get("cls_acc_test")), "full_forget": _num(after.get("no_cls_acc"))}
    for col in GEN_COLUMNS if gen_data else NO_GEN_COLUMNS:
        row[col] = _num(after.get(col))
    if all_res:
        for other, figures in final.items():
            if other != ds and isinstance(figures, dict) and "all" in figures:
                row[f"res_{other}"] = _num(figures["all"].get("all_ds"))
                row[f"full_{other}"] = _full_acc(before, other)
    return row


def create_results(res_folder: str | Path, gen_data: bool = True, all_res: bool = False, rn: bool = True,
                   log_name: str = "logs.json", audit_split: str = "test") -> tuple[pd.DataFrame, str]:
    """One row per (dataset, forget class) of a run folder, and the text of its args.txt.

    Columns: ds, name, std, full_Noforget, cls_Noforget, cls_forget, full_forget, then
    acc_val_hard, acc_val_true_data (gen_data) or acc_train, then with all_res res_D, full_D for
    every other dataset D (after / before). Classes logged as {} (not run) have no row.
    `df.attrs['status']` maps (ds, name) to the summary status of classes that did not end "done".
    """
    res_folder = Path(res_folder)
    logs = read_json(_logs_path(res_folder, log_name))
    if not isinstance(logs, dict):
        raise UserError(f"{res_folder / log_name} is not a logs object")
    args, args_text = _read_args(res_folder, logs)
    runs = {ds: classes for ds, classes in logs.items() if ds != "settings" and isinstance(classes, dict)}
    datasets = list(runs)
    for classes in runs.values():
        for class_log in classes.values():
            if isinstance(class_log, dict):
                datasets += list(class_log.get("final_results") or {})
    before = load_before(res_folder, datasets, args, rn)

    rows, status, seconds = [], {}, {}
    for ds, classes in runs.items():
        for name, class_log in classes.items():
            if not isinstance(class_log, dict) or not class_log:
                continue  # not run
            rows.append(_class_row(ds, name, class_log, before, gen_data, all_res))
            summary = class_log.get("summary") or {}
            seconds[(ds, name)] = _num(summary.get("seconds"))
            state = summary.get("status", "done")
            if state != "done":
                status[(ds, name)] = state

    columns = KEY_COLUMNS + MAIN_COLUMNS + (GEN_COLUMNS if gen_data else NO_GEN_COLUMNS)
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in columns))
    audit = audit_columns(res_folder, audit_split)
    audit_cols = list(dict.fromkeys(c for figures in audit.values() for c in figures))
    for row in rows:
        row.update(audit.get((row["ds"], row["name"]), {}))
    df = pd.DataFrame(rows, columns=columns + extra + audit_cols)
    df[df.columns[2:]] = df[df.columns[2:]].astype(float)
    df.attrs["status"] = status
    df.attrs["seconds"] = seconds  # (ds, name) -> the class's unlearning + evaluation time (summary.seconds)
    return df, args_text


def audit_file(split: str) -> str:
    """audit.json for the test split (what create_results reads), audit_<split>.json otherwise."""
    return AUDIT_FILE if split == "test" else f"audit_{split}.json"


def audit_columns(res_folder: str | Path, split: str = "test") -> dict[tuple[str, str], dict[str, float]]:
    """(ds, name) -> {audit column: value} from the run's audit file ({} without one)."""
    path = Path(res_folder) / audit_file(split)
    if not path.is_file():
        return {}
    audit = read_json(path)
    out = {}
    for ds, classes in audit.items():
        if ds == "settings" or not isinstance(classes, dict):
            continue
        for name, entry in classes.items():
            models = [m for m, figures in entry.items() if isinstance(figures, dict) and "name" in figures]
            models.sort(key=lambda m: m != UNLEARNED)  # the unlearned model's columns first
            out[(ds, name)] = {f"audit_{f}" + ("" if m == UNLEARNED else f"_{m}"): _num(entry[m].get(f))
                               for m in models for f in AUDIT_FIGURES}
            out[(ds, name)].update({f"audit_other_{d}" + ("" if m == UNLEARNED else f"_{m}"): _num(v)
                                    for m in models for d, v in (entry[m].get("others") or {}).items()})
    return out


# ---------------------------------------------------------------- the paper's score

def other_datasets(df: pd.DataFrame) -> list[str]:
    """Datasets D with both res_D and full_D columns, in column order."""
    return [c[4:] for c in df.columns if c.startswith("res_") and f"full_{c[4:]}" in df.columns]


def compute_avg_gain(df: pd.DataFrame) -> pd.Series:
    """The paper's score per row (lower is better):

        ( cls_forget / cls_Noforget
          + clip0((full_Noforget - full_forget) / full_Noforget)
          + sum over other datasets D of clip0((full_D - res_D) / full_D), NaN -> 0 )
        / (2 + number of datasets D other than the row's own with res_D / full_D columns)

    The paper divides by 5 with its 4 datasets: each row then has res_/full_ columns for the 3
    other datasets (its own dataset's are NaN, hence filled with 0); the divisor here counts the
    terms the same way for any number of datasets (2 with all_res=False: forget + main drop).
    As in the paper, only the other-dataset terms are NaN-filled: a NaN or zero baseline of the
    forget class or of the main dataset gives a NaN (or inf) score, not a silently good one.
    """
    main_drop, drops = relative_drops(df)
    total = df["cls_forget"] / df["cls_Noforget"] + main_drop
    n_terms = pd.Series(2.0, index=df.index)
    for d, drop in drops.items():
        total = total + drop.fillna(0)
        n_terms = n_terms + (df["ds"] != d)
    return (total / n_terms).astype(float).rename("score")


def relative_drops(df: pd.DataFrame) -> tuple[pd.Series, dict[str, pd.Series]]:
    """Relative accuracy drops, clipped at 0 (a gain is no drop): of the rest of each row's dataset,
    and of every other dataset D (NaN where res_D or full_D is)."""
    main_drop = ((df["full_Noforget"] - df["full_forget"]) / df["full_Noforget"]).clip(lower=0)
    return main_drop, {d: ((df[f"full_{d}"] - df[f"res_{d}"]) / df[f"full_{d}"]).clip(lower=0)
                       for d in other_datasets(df)}


def lost_elsewhere(df: pd.DataFrame) -> pd.Series:
    """Per row, what forgetting cost elsewhere: the mean of relative_drops over the rest of its
    dataset and the other datasets that have figures."""
    main_drop, drops = relative_drops(df)
    return pd.concat([main_drop, *drops.values()], axis=1).mean(axis=1).rename("lost_elsewhere")


# ---------------------------------------------------------------- several seeds

def seed_folders(folders: str | Path | Sequence[str | Path]) -> list[Path]:
    """A list of run folders as given, or the seed_* folders of one results<ATTEMPT> folder."""
    if isinstance(folders, (str, Path)):
        root = Path(folders)
        seeds = sorted(p for p in root.glob("seed_*") if p.is_dir())
        folders = seeds or [root]
    out = [Path(f) for f in folders]
    if not out:
        raise UserError("no run folders given")
    return out


def aggregate_seeds(folders: str | Path | Sequence[str | Path], ddof: int = 1,
                    **create_results_kwargs: Any) -> pd.DataFrame:
    """Mean and standard deviation over seeds, per (ds, name), of every numeric column and the score.

    Layout: ds, name, n_seeds, then `<col>_mean`, `<col>_std` for each column of create_results
    (in its order) and finally score_mean, score_std. `score` is computed per seed, then averaged.
    The std is the sample std (ddof=1, NaN for a single seed) unless `ddof` says otherwise; NaNs
    are skipped, and a class missing from some seeds is averaged over the seeds that have it.
    """
    runs = pd.concat([_scored(folder, **create_results_kwargs) for folder in seed_folders(folders)],
                     ignore_index=True)
    return mean_std(runs, KEY_COLUMNS, ddof)


def _scored(folder: str | Path, **create_results_kwargs: Any) -> pd.DataFrame:
    df, _ = create_results(folder, **create_results_kwargs)
    return df.assign(score=compute_avg_gain(df))


def mean_std(runs: pd.DataFrame, keys: list[str], ddof: int = 1) -> pd.DataFrame:
    """Per group of `keys`: n_seeds, then `<col>_mean`, `<col>_std` of every other column (NaNs skipped)."""
    numeric = [c for c in runs.columns if c not in keys]
    groups = runs.groupby(keys, sort=False)
    mean, std = groups[numeric].mean(), groups[numeric].std(ddof=ddof)
    out = pd.DataFrame({"n_seeds": groups.size().astype(int)})
    for col in numeric:
        out[f"{col}_mean"] = mean[col]
        out[f"{col}_std"] = std[col]
    return out.reset_index()


def run_label(res_folder: str | Path) -> str:
    """A run's method as its args.txt names it ('faithful', 'improved', ...), else the folder."""
    res_folder = Path(res_folder)
    args, _ = _read_args(res_folder, {})
    return str(args.get("method") or res_folder)


def compare_runs(folders: Sequence[str | Path], **create_results_kwargs: Any) -> pd.DataFrame:
    """Rows of several run folders in one frame, first column `run` (run_label, or the folder
    where two runs share a label), last column `score`."""
    return _side_by_side(folders, [create_results(f, **create_results_kwargs)[0] for f in folders])


def _side_by_side(folders: Sequence[str | Path], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """compare_runs on frames already read from `folders` (create_results, same order)."""
    labels = [run_label(f) for f in folders]
    if len(set(labels)) < len(labels):
        labels = [str(f) for f in folders]
    out = pd.concat([df.assign(score=compute_avg_gain(df), run=label) for label, df in zip(labels, frames)],
                    ignore_index=True)
    return out[["run"] + [c for c in out.columns if c != "run"]]


# ---------------------------------------------------------------- methods compared over seeds

ORIGINAL = "original"  # the model before unlearning, shown as one more method
ORACLE = "oracle"  # the demo CLIP retrained without the class (audit.py --oracle), likewise
COMPARE_AUDIT = ["audit_ensemble", "audit_alias", "audit_probe", "audit_relearn_steps", "audit_relearn_acc",
                 "audit_blast_mean", "audit_blast_count", "audit_oracle_agreement"]


def method_folders(dirs: Sequence[str | Path]) -> dict[str, list[Path]]:
    """label -> run folders: each DIR is a method's folder of seed_* folders, or one run folder; the label
    is the method its args.txt names, else (where two DIRs share one) the DIR's name, else the DIR."""
    folders = [seed_folders(d) for d in dirs]
    for labels in ([run_label(f[0]) for f in folders], [Path(d).name for d in dirs], [str(d) for d in dirs]):
        if len(set(labels)) == len(labels) and not {ORIGINAL, ORACLE} & set(labels):
            break
    return dict(zip(labels, folders))


def method_runs(dirs: Sequence[str | Path], **create_results_kwargs: Any) -> pd.DataFrame:
    """One row per (method, seed folder, forget class): create_results' columns, score, seconds,
    lost_elsewhere. The original model is the method 'original', from the first DIR's seeds: its
    'after' figures are the before ones, its audit figures the audit of the original."""
    frames = []
    for i, (label, folders) in enumerate(method_folders(dirs).items()):
        for folder in folders:
            df = _scored(folder, **create_results_kwargs)
            df["seconds"] = [df.attrs["seconds"].get(k, math.nan) for k in zip(df["ds"], df["name"])]
            if i == 0:
                frames.append(_reference_rows(df, ORIGINAL).assign(method=ORIGINAL, seed=folder.name))
                if f"audit_name_{ORACLE}" in df and df[f"audit_name_{ORACLE}"].notna().any():
                    frames.append(_reference_rows(df, ORACLE).assign(method=ORACLE, seed=folder.name))
            frames.append(df.assign(method=label, seed=folder.name))
    runs = pd.concat(frames, ignore_index=True)
    runs = runs.drop(columns=[c for c in runs.columns if c.startswith("audit_") and c.endswith((f"_{ORIGINAL}",
                                                                                                 f"_{ORACLE}"))])
    runs["lost_elsewhere"] = lost_elsewhere(runs)
    return runs[["method", "seed"] + [c for c in runs.columns if c not in ("method", "seed")]]


def _reference_rows(df: pd.DataFrame, ref: str) -> pd.DataFrame:
    """A run's rows as the reference model `ref` scores them: the original (its 'after' figures are
    the 'before' ones) or the oracle (its after figures are its audit's name, rest and other-dataset
    accuracies); the audit columns are the reference's own."""
    o = df.copy()
    if ref == ORIGINAL:
        o["cls_forget"], o["full_forget"] = o["cls_Noforget"], o["full_Noforget"]
        for d in other_datasets(o):
            o[f"res_{d}"] = o[f"full_{d}"]
    else:
        o["cls_forget"], o["full_forget"] = o[f"audit_name_{ref}"], o[f"audit_rest_{ref}"]
        for d in other_datasets(o):
            o[f"res_{d}"] = o.get(f"audit_other_{d}_{ref}", math.nan)
    for c in GEN_COLUMNS + NO_GEN_COLUMNS + ["seconds"]:
        if c in o:
            o[c] = math.nan
    for c in [c for c in o.columns if c.startswith("audit_") and not c.endswith((f"_{ORIGINAL}", f"_{ORACLE}"))]:
        o[c] = o.get(f"{c}_{ref}", math.nan)
    return o.assign(score=compute_avg_gain(o))


def compare_methods(dirs: Sequence[str | Path] | pd.DataFrame, ddof: int = 1, **create_results_kwargs: Any
                    ) -> pd.DataFrame:
    """Methods x classes: mean and std over seeds (mean_std layout, keys method, ds, name) of the
    paper's columns, the audit's, the score, seconds and lost_elsewhere; the original model first.
    `dirs` may also be method_runs' table itself."""
    runs = dirs if isinstance(dirs, pd.DataFrame) else method_runs(dirs, **create_results_kwargs)
    runs = runs.drop(columns="seed")
    order = {m: i for i, m in enumerate(dict.fromkeys(runs["method"]))}
    out = mean_std(runs, ["method", "ds", "name"], ddof)
    return out.sort_values(["ds", "name", "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                           kind="stable").reset_index(drop=True)


def mean_std_markdown(agg: pd.DataFrame, columns: Sequence[str], digits: int = 3,
                      keys: Sequence[str] | None = None) -> str:
    """A Markdown table of mean_std's output: key columns as they are (default: every column that is not
    a _mean or _std), figures as 'mean ± std'."""
    def cell(mean: float, std: float) -> str:
        if math.isnan(mean):
            return "-"
        return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")

    keys = list(keys) if keys is not None else [c for c in agg.columns if not c.endswith(("_mean", "_std"))]
    shown = [c for c in columns if f"{c}_mean" in agg.columns]
    table = agg[keys].copy()
    for c in shown:
        table[c] = [cell(m, s) for m, s in zip(agg[f"{c}_mean"], agg[f"{c}_std"])]
    return to_markdown(table, digits)


def class_means(runs: pd.DataFrame, columns: Sequence[str], keys: Sequence[str] = ("method",),
                ddof: int = 1) -> pd.DataFrame:
    """Per group of `keys` (a method): the mean over its forget classes of each column, then mean and
    std over seeds (mean_std layout; n_classes: the fewest classes a seed has): one line per method."""
    keys, shown = list(keys), [c for c in columns if c in runs.columns]
    per_seed = runs.groupby([*keys, "seed"], sort=False).agg(
        n_classes=("name", "nunique"), **{c: (c, "mean") for c in shown}).reset_index()
    out = mean_std(per_seed.drop(columns=["seed", "n_classes"]), keys, ddof)
    out.insert(len(keys), "n_classes", per_seed.groupby(keys, sort=False)["n_classes"].min().to_numpy())
    return out


def plot_tradeoff(runs: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Forget-class accuracy on real test images against what was lost elsewhere (lost_elsewhere),
    both averaged over the forget classes: one marker per method, error bars = std over seeds.
    With an audit, a hollow marker above or below each shows the linear probe's recall of the class
    (what the image tower still knows)."""
    ys = ["cls_forget"] + (["audit_probe"] if "audit_probe" in runs.columns else [])
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    for _, row in class_means(runs, ["lost_elsewhere", *ys]).iterrows():
        m = {c: row[f"{c}_mean"] for c in ["lost_elsewhere", *ys]}
        # no bar (not a flat cap) where there is no spread
        sd = {c: row[f"{c}_std"] if row[f"{c}_std"] > 0 else math.nan for c in ["lost_elsewhere", *ys]}
        n = int(row["n_seeds"])
        drawn = ax.errorbar(m["lost_elsewhere"], m["cls_forget"], xerr=sd["lost_elsewhere"], yerr=sd["cls_forget"],
                            fmt="o" if row["method"] != ORIGINAL else "s", ms=8, capsize=4,
                            label=f"{row['method']} ({n} seed{'s' * (n > 1)})")
        if "audit_probe" in ys and not math.isnan(m["audit_probe"]):
            color = drawn[0].get_color()
            ax.errorbar(m["lost_elsewhere"], m["audit_probe"], yerr=sd["audit_probe"], fmt="o", ms=8, capsize=4,
                        mfc="none", color=color)
            ax.plot([m["lost_elsewhere"]] * 2, [m["cls_forget"], m["audit_probe"]], ls=":", lw=1, color=color)
    if "audit_probe" in ys:
        ax.plot([], [], "o", mfc="none", color="grey", label="hollow: linear-probe recall (audit)")
    ax.set_xlabel("lost elsewhere: mean relative accuracy drop of the rest and the other datasets")
    ax.set_ylabel("forget-class accuracy, real test images")
    ax.set_ylim(-0.05, 1.05)
    ax.margins(x=0.15)
    ax.grid(alpha=0.3)
    n_classes = runs.groupby(["ds", "name"]).ngroups
    ax.set_title(f"Forgetting against collateral damage (mean over {n_classes} forget classes)", fontsize=10)
    ax.legend(fontsize=8)
    if path is not None:
        _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return fig


# ---------------------------------------------------------------- tables and plots

def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A Markdown table of `df`: floats rounded to `digits`, NaN shown as '-'."""
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "-" if math.isnan(v) else f"{v:.{digits}f}"
        return str(v).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


AUDIT_LEGEND = ("Forget-class accuracy on real images, original -> unlearned model: name probe (the dataset's "
                "template, the paper's figure), ensemble (every template), alias (the class named by its aliases), "
                "linear probe (recall of a logistic regression on frozen image features: what the image tower "
                "still knows), after relearn (after fine-tuning on a few real train images); rest: the dataset's "
                "other classes; other datasets: their mean accuracy; relearn steps: until the name accuracy is back "
                "at half the original's; blast: mean 1 - cos of the text embeddings of prompts outside the run, how "
                "many moved more than the audit's blast_threshold, and the one that moved most; oracle: the demo CLIP "
                "retrained without the class (audit.py --oracle), and how often the unlearned model predicts what "
                "it predicts on the class's images.")


def audit_table(res_folder: str | Path, digits: int = 3, split: str = "test") -> pd.DataFrame:
    """A run's audit file as a display table: per class, 'original -> unlearned' for each probe
    (and the oracle's figure, when it was audited)."""
    audit = read_json(Path(res_folder) / audit_file(split))

    def fmt(v: Any) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
    rows = []
    for ds, classes in audit.items():
        if ds == "settings" or not isinstance(classes, dict):
            continue
        for name, e in classes.items():
            before, after, oracle = e[ORIGINAL], e[UNLEARNED], e.get(ORACLE)
            row = {"ds": ds, "name": name, "changed": ", ".join(e.get("changed_towers", [])) or "nothing"}
            for f, label in (("name", "name probe"), ("ensemble", "ensemble"), ("alias", "alias"),
                             ("probe", "linear probe"), ("rest", "rest"), ("other", "other datasets"),
                             ("relearn_acc", "after relearn")):
                row[label] = f"{fmt(before.get(f))} → {fmt(after.get(f))}" + \
                    (f" (oracle {fmt(oracle.get(f))})" if oracle else "")
            if oracle:
                row["agrees with oracle"] = float(after["oracle_agreement"])
            steps = after["relearn_steps"]
            row["relearn steps"] = f">{len(after['relearn_curve']) - 1}" if steps is None else str(steps)
            row["blast 1-cos"] = float(after["blast_mean"])
            row["blast moved"] = f"{after['blast_count']}/{e.get('blast_prompts', '?')}"
            top = after.get("blast_top") or [["-", math.nan]]
            row["most moved prompt"] = top[0][0] + ("" if math.isnan(top[0][1]) else f" ({top[0][1]:.2f})")
            rows.append(row)
    return pd.DataFrame(rows)


def _bars(row: pd.Series, others: list[str]) -> list[tuple[str, float, float]]:
    """(label, before, after) for the forget class, the rest of its dataset and each other dataset."""
    bars = [(f"{row['name']} (forget)", row["cls_Noforget"], row["cls_forget"]),
            (f"rest of {row['ds']}", row["full_Noforget"], row["full_forget"])]
    bars += [(d, row[f"full_{d}"], row[f"res_{d}"]) for d in others
             if d != row["ds"] and not (pd.isna(row[f"full_{d}"]) and pd.isna(row[f"res_{d}"]))]
    return bars


def plot_results(df: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Before/after accuracy bars, one subplot per (dataset, forget class); saved as PNG to `path`."""
    others, scores, status = other_datasets(df), compute_avg_gain(df), df.attrs.get("status", {})
    n_bars = 2 + len(others)
    fig = Figure(figsize=(max(6.0, 1.6 * n_bars + 2), 2.9 * max(len(df), 1)), layout="constrained")
    axes = fig.subplots(max(len(df), 1), 1, squeeze=False)[:, 0]
    for ax, (i, row) in zip(axes, df.iterrows()):
        bars = _bars(row, others)
        x = np.arange(len(bars))
        for offset, idx, label, color in ((-0.2, 1, "before", "#8c9fb8"), (0.2, 2, "after", "#d9712b")):
            heights = [b[idx] for b in bars]
            drawn = ax.bar(x + offset, np.nan_to_num(heights), 0.38, label=label, color=color)
            ax.bar_label(drawn, ["n/a" if pd.isna(h) else f"{h:.2f}" for h in heights], fontsize=7, padding=1)
        ax.set_xticks(x, [textwrap.fill(b[0], 22) for b in bars], fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("accuracy")
        state = status.get((row["ds"], row["name"]))
        ax.set_title(f"{row['ds']}: forget '{row['name']}'  (std {row['std']:g}, score {scores[i]:.3f})"
                     + (f"  [{state}]" if state else ""), fontsize=10)
    if not df.empty:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside upper right", ncols=2, fontsize=8)
    else:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no results", ha="center")
    if path is not None:  # atomically: readers never see half a PNG
        _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return fig


# ---------------------------------------------------------------- command line

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Table, score and plot of unlearning run folders (writes results.md and results.png in each); "
                    "several folders are also printed side by side. 'clip_forget_utils.py compare DIR...' compares "
                    "methods over seeds (see 'compare --help').")
    p.add_argument("folders", nargs="+", metavar="folder", help="a run folder, e.g. results/results1/seed_0/")
    p.add_argument("--gen_data", type=int, choices=[0, 1], default=1,
                   help="1: show acc_val_hard, acc_val_true_data (synthetic data runs); 0: acc_train")
    p.add_argument("--all_res", type=int, choices=[0, 1], default=0,
                   help="1: add res_D / full_D columns for the other datasets (and use them in the score)")
    p.add_argument("--rn", type=int, choices=[0, 1], default=1,
                   help="paper's before figures to fall back on when args.txt names no backbone: 1 RN50, 0 ViT-B/16")
    p.add_argument("--log_name", default="logs.json")
    p.add_argument("--digits", type=int, default=3, help="decimals in the table")
    return p.parse_args(argv)


def report(folder: Path, args: argparse.Namespace) -> pd.DataFrame:
    """Write results.md and results.png into one run folder and print its table."""
    df, _ = create_results(folder, gen_data=bool(args.gen_data), all_res=bool(args.all_res),
                           rn=bool(args.rn), log_name=args.log_name)
    if df.empty:
        raise UserError(f"{folder / args.log_name} has no finished forget class yet")
    paper = [c for c in df.columns if not c.startswith("audit_")]
    table = to_markdown(df[paper].assign(score=compute_avg_gain(df)), args.digits)
    notes = [f"- {ds} / {name}: {state}" for (ds, name), state in df.attrs["status"].items()]
    audit = ""
    if (folder / AUDIT_FILE).is_file():
        audit = f"\n## Audit ({AUDIT_FILE}, audit.png)\n\n{AUDIT_LEGEND}\n\n" + to_markdown(audit_table(folder,
                                                                                                   args.digits))
    text = (f"# Results of {folder}\n\nscore: the paper's average of the forget ratio and the relative "
            f"drops (lower is better).\n\n{table}" + ("\nNot finished cleanly:\n" + "\n".join(notes) + "\n"
                                                        if notes else "") + audit)
    atomic_write_text(folder / "results.md", text)
    plot_results(df, folder / "results.png")
    print(f"{folder}:\n" + table + ("\n".join(notes) + "\n" if notes else ""), end="")
    print(f"wrote {folder / 'results.md'} and {folder / 'results.png'}\n")
    return df


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    args = parse_args(argv)
    folders = [Path(f) for f in args.folders]
    problems = [f"--digits must be at least 0, got {args.digits}"] if args.digits < 0 else []
    for f in folders:  # every folder checked before the first report is written
        try:
            _logs_path(f, args.log_name)
            problems += check_writable(f)
        except UserError as e:
            problems.append(str(e))
    check_all(problems)
    frames = [report(f, args) for f in folders]
    if len(folders) == 1:
        return frames[0]
    side = _side_by_side(folders, frames).sort_values(["ds", "name"], kind="stable")
    keep = ["run", "ds", "name", "cls_Noforget", "cls_forget", "full_Noforget", "full_forget"]
    keep += [c for d in other_datasets(side) for c in (f"full_{d}", f"res_{d}")] + ["score"]
    keep += [c for c in COMPARE_AUDIT if c in side.columns]
    print("Side by side (cls: the forget class's test images, full: the rest of its dataset, "
          "full_D / res_D: dataset D, before / after; audit_*: the unlearned model's audit figures):\n"
          + to_markdown(side[keep], args.digits), end="")
    return side


def parse_compare_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="clip_forget_utils.py compare",
        description="Methods x classes: mean ± std over seeds of the paper's columns, the audit's (audit.py), "
                    "the score and the time, as Markdown, and a trade-off plot (forget accuracy against what "
                    "was lost elsewhere).")
    p.add_argument("dirs", nargs="+", metavar="DIR",
                   help="one per method: a folder of seed_* run folders (results/results1) or one run folder")
    p.add_argument("--out", default=None,
                   help="writes OUT.md and OUT.png (default: compare in the DIRs' common parent folder)")
    p.add_argument("--gen_data", type=int, choices=[0, 1], default=1, help="as for a folder report")
    p.add_argument("--all_res", type=int, choices=[0, 1], default=1, help="as for a folder report")
    p.add_argument("--rn", type=int, choices=[0, 1], default=1, help="as for a folder report")
    p.add_argument("--digits", type=int, default=3, help="decimals in the table")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names: compare on these forget classes only (e.g. the ones no "
                        "choice of method or setting saw)")
    p.add_argument("--split", default="test", choices=["test", "val"],
                   help="test: the report (the paper's columns and audit.json); val: what methods and settings are "
                        "chosen by, the audit's figures on the val split alone (audit_val.json, audit.py --split val)")
    return p.parse_args(argv)


VAL_COLUMNS = ["audit_name", "audit_alias", "audit_ensemble", "audit_probe", "audit_rest", "audit_other",
               "audit_relearn_steps", "audit_relearn_acc", "audit_blast_mean", "audit_blast_count",
               "audit_oracle_agreement"]


def compare_main(argv: Sequence[str]) -> pd.DataFrame:
    """python clip_forget_utils.py compare DIR...: the methods x classes table and the trade-off plot."""
    args = parse_compare_args(argv)
    dirs = [Path(d) for d in args.dirs]
    try:
        parent = Path(os.path.commonpath(dirs))
    except ValueError:  # relative and absolute paths mixed
        parent = Path(os.path.commonpath([d.absolute() for d in dirs]))
    out = Path(args.out) if args.out else (parent if len(dirs) > 1 else parent.parent) / \
        ("compare" if args.split == "test" else f"compare_{args.split}")
    problems = [f"--digits must be at least 0, got {args.digits}"] if args.digits < 0 else []
    for d in dirs:
        try:
            for folder in seed_folders(d):
                _logs_path(folder, "logs.json")
        except UserError as e:
            problems.append(str(e))
    check_all(problems + check_writable(out.parent))
    kwargs = dict(gen_data=bool(args.gen_data), all_res=bool(args.all_res), rn=bool(args.rn), audit_split=args.split)
    runs = method_runs(dirs, **kwargs)
    if args.classes:
        wanted = [c.strip() for c in args.classes.split(",") if c.strip()]
        missing = [c for c in wanted if c not in set(runs["name"])]
        if missing:
            known = sorted(set(runs["name"]))
            raise UserError(f"--classes: {', '.join(missing)} not in these runs{close_names(missing[0], known)}")
        runs = runs[runs["name"].isin(wanted)]
    agg = compare_methods(runs)
    summary = ("\n## Mean over the classes\n\nPer method, the mean over its forget classes, then mean ± std over "
               "seeds.\n\n" + mean_std_markdown(class_means(runs, VAL_COLUMNS + ["score", "seconds"]),
                                                   VAL_COLUMNS + ["score", "seconds"], args.digits)
               if "audit_name" in runs.columns else "")
    if args.split != "test":  # only the audit's figures on that split: the paper's columns are test figures
        text = (f"# Methods compared on the {args.split} split: {', '.join(map(str, dirs))}\n\nMean ± std over "
                f"seeds (n_seeds) of the audit's figures on the {args.split} split (audit.py --split {args.split}): "
                f"what methods and settings are chosen by; the test split reports them.\n{AUDIT_LEGEND}\n\n"
                + mean_std_markdown(agg, VAL_COLUMNS, args.digits) + summary)
        atomic_write_text(out.with_suffix(".md"), text)
        print(text + f"\nwrote {out.with_suffix('.md')}")
        return agg
    columns = ["cls_forget", "full_forget", *(f"res_{d}" for d in other_datasets(runs)), *GEN_COLUMNS,
               *NO_GEN_COLUMNS, *COMPARE_AUDIT, "lost_elsewhere", "score", "seconds"]
    text = (f"# Methods compared: {', '.join(map(str, dirs))}\n\nMean ± std over seeds (n_seeds). 'original': "
            "the model before unlearning (its 'after' figures are the before ones). cls_forget: forget-class "
            "accuracy on real test images; full_forget: the rest of its dataset; res_D: dataset D; "
            "lost_elsewhere: mean relative drop of those; score: the paper's (lower is better); seconds: "
            "unlearning + evaluation per class. 'oracle' (with audit.py --oracle): the demo CLIP retrained without "
            f"the class.\n{AUDIT_LEGEND}\n\n"
            + mean_std_markdown(agg, columns, args.digits) + summary)
    atomic_write_text(out.with_suffix(".md"), text)
    plot_tradeoff(runs, out.with_suffix(".png"))
    print(text + f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return agg


if __name__ == "__main__":
    run_cli(main)
