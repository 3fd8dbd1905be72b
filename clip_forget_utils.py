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

import interrupts  # noqa: F401  (first: Ctrl-C during the imports below is one line)

import argparse
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend state, PNGs through Agg

from common import ArgumentParser, UserError, _atomic, atomic_write_text, check_all, check_writable, close_names, \
    read_json, run_cli
from audit import AUDIT_LEGEND, audit_table
from probes import ORACLE, ORIGINAL, UNLEARNED, figures
from runs import LOGS, RunFolder
from tables import to_markdown

KEY_COLUMNS = ["ds", "name"]
MAIN_COLUMNS = ["std", "full_Noforget", "cls_Noforget", "cls_forget", "full_forget"]
GEN_COLUMNS = ["acc_val_hard", "acc_val_true_data"]
NO_GEN_COLUMNS = ["acc_train"]
NOT_STD_KEYS = ("summary", "final_results", "request")  # keys of a class's log that are not noise levels
SET_ROW = "set"  # the ds of a request's summary row in a set run (--protocol joint / sequential)
# audit.py's figures of each audited model (probes.py declares them): column audit_<figure> for the unlearned
# model, audit_<figure>_<model> for the models audited beside it (the original, the oracle), and
# audit_other_<dataset>[_<model>] for each other evaluated dataset
AUDIT_FIGURES = tuple(f.key for f in figures() if f.numeric)

Before = dict[str, dict[str, dict[str, float]]]  # {dataset: {classname: {figure: value}}}


# ---------------------------------------------------------------- reading a run folder

def _run(res_folder: str | Path, log_name: str = LOGS) -> RunFolder:
    """The run folder to read; not one (a file, missing, no logs yet) is a user error with a hint."""
    run = RunFolder(res_folder, log_name)
    check_all(run.problems())
    return run


def _reference_file(args: dict, rn: bool) -> Path | None:
    """The paper's published figures for the run's backbone: its settings decide, else `rn` (RN50 or
    ViT-B/16). Only OpenAI weights have published figures (zeroshot.reference_file)."""
    from zeroshot import reference_file  # imported late: zeroshot pulls in open_clip
    arch = args.get("backbone_arch")
    try:
        return reference_file(arch, args.get("pretrained")) if arch else reference_file("RN50" if rn else "ViT-B/16",
                                                                                       "openai")
    except UserError:  # a model this open_clip does not know
        return None


def _cache_key(args: dict) -> str | None:
    """zeroshot.model_key of the run's model: as train.py recorded it, else derived from the
    arguments without building the model."""
    if args.get("model_key"):
        return str(args["model_key"])
    if not args.get("backbone_arch"):
        return None
    try:
        from zeroshot import run_model_key
        return run_model_key(args["backbone_arch"], args.get("pretrained"), int(args.get("seed", 0)))
    except (UserError, OSError, ImportError, ValueError):
        return None


def load_before(res_folder: str | Path, datasets: Iterable[str], args: dict | None = None,
                rn: bool = True) -> Before:
    """'Before unlearning' figures per dataset, from the first source that has the dataset:
    the run's zeroshot_before.json, the cached baselines of its model, the paper's figures.
    Datasets found nowhere are left out (their columns become NaN)."""
    args = args or {}
    wanted = list(dict.fromkeys(datasets))
    own = RunFolder(res_folder).before()
    found: Before = {d: own[d] for d in wanted if d in own}
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
    """A forgotten class's row. In a set run (a record with a "request") the rest of its dataset and the
    other datasets are the classes the set has not forgotten (after that request), always with res_/full_."""
    final = class_log.get("final_results") or {}
    after = (final.get(ds) or {}).get(name) or {}
    ref = (before.get(ds) or {}).get(name) or {}
    row = {"ds": ds, "name": name, "std": chosen_std(class_log),
           "full_Noforget": _num(ref.get("no_cls_acc")), "cls_Noforget": _num(ref.get("cls_acc_test")),
           "cls_forget": _num(after.get("cls_acc_test")), "full_forget": _num(after.get("no_cls_acc"))}
    for col in GEN_COLUMNS if gen_data else NO_GEN_COLUMNS:
        row[col] = _num(after.get(col))
    request = class_log.get("request")
    if request:
        kept_before, kept_after = (_kept(request[k]) for k in ("before", "after"))
        row["full_Noforget"], row["full_forget"] = kept_before.get(ds, math.nan), kept_after.get(ds, math.nan)
        for other in kept_after:
            if other != ds:
                row[f"res_{other}"], row[f"full_{other}"] = kept_after[other], kept_before.get(other, math.nan)
    elif all_res:
        for other, figs in final.items():
            if other != ds and isinstance(figs, dict) and "all" in figs:
                row[f"res_{other}"] = _num(figs["all"].get("all_ds"))
                row[f"full_{other}"] = _full_acc(before, other)
    return row


def _kept(figures: dict) -> dict[str, float]:
    """dataset -> accuracy of its classes not forgotten, from a request's set figures."""
    return {d: _num(f.get("kept_acc")) for d, f in (figures or {}).items()}


def set_row(request: dict) -> dict:
    """The summary row of a request of a set run: the classes forgotten so far (their mean test accuracy
    before and after), and each dataset's kept classes as res_D / full_D (compute_avg_gain: the set score)."""
    gone = lambda figures: [v for f in figures.values() for v in f["forgotten"].values()]  # noqa: E731
    classes = " + ".join(c for f in request["after"].values() for c in f["forgotten"])  # forgotten so far
    row = {"ds": SET_ROW, "name": f"request {request['index']}: {classes}", "std": math.nan,
           "full_Noforget": math.nan, "full_forget": math.nan,
           "cls_Noforget": sum(gone(request["before"])) / len(gone(request["before"])),
           "cls_forget": sum(gone(request["after"])) / len(gone(request["after"]))}
    kept_before, kept_after = _kept(request["before"]), _kept(request["after"])
    for d in kept_after:
        row[f"res_{d}"], row[f"full_{d}"] = kept_after[d], kept_before.get(d, math.nan)
    return row


def create_results(res_folder: str | Path, gen_data: bool = True, all_res: bool = False, rn: bool = True,
                   log_name: str = LOGS, audit_split: str = "test") -> tuple[pd.DataFrame, str]:
    """One row per (dataset, forget class) of a run folder, and the text of its args.txt.

    Columns: ds, name, std, full_Noforget, cls_Noforget, cls_forget, full_forget, then
    acc_val_hard, acc_val_true_data (gen_data) or acc_train, then with all_res res_D, full_D for
    every other dataset D (after / before). Classes logged as {} (not run) have no row. A set run
    (--protocol joint / sequential) has, after its classes' rows, one summary row per request (ds "set",
    set_row) and res_/full_ columns on its kept classes (_class_row).
    `df.attrs['status']` maps (ds, name) to the summary status of classes that did not end "done".
    """
    run = _run(res_folder, log_name)
    args, records = run.settings(), run.records()
    datasets = list(dict.fromkeys(ds for ds, _ in records))
    for record in records.values():
        datasets += list(record.get("final_results") or {})
    before = load_before(run.path, datasets, args, rn)

    rows, status, seconds, requests = [], {}, {}, {}
    for (ds, name), class_log in records.items():
        rows.append(_class_row(ds, name, class_log, before, gen_data, all_res))
        if class_log.get("request"):
            requests[class_log["request"]["index"]] = class_log["request"]
        summary = class_log.get("summary") or {}
        seconds[(ds, name)] = _num(summary.get("seconds"))
        state = summary.get("status", "done")
        if state != "done":
            status[(ds, name)] = state

    rows += [set_row(requests[i]) for i in sorted(requests)]
    columns = KEY_COLUMNS + MAIN_COLUMNS + (GEN_COLUMNS if gen_data else NO_GEN_COLUMNS)
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in columns))
    audit = audit_columns(run.path, audit_split)
    audit_cols = list(dict.fromkeys(c for figures in audit.values() for c in figures))
    for row in rows:
        row.update(audit.get((row["ds"], row["name"]), {}))
    df = pd.DataFrame(rows, columns=columns + extra + audit_cols)
    df[df.columns[2:]] = df[df.columns[2:]].astype(float)
    df.attrs["status"] = status
    df.attrs["seconds"] = seconds  # (ds, name) -> the class's unlearning + evaluation time (summary.seconds)
    return df, run.args_text()


def audit_columns(res_folder: str | Path, split: str = "test") -> dict[tuple[str, str], dict[str, float]]:
    """(ds, name) -> {audit column: value} from the run's audit file of `split` ({} without one)."""
    out = {}
    for key, entry in RunFolder(res_folder).audited(split).items():
        models = [m for m, figures in entry.items() if isinstance(figures, dict) and "name" in figures]
        models.sort(key=lambda m: m != UNLEARNED)  # the unlearned model's columns first
        found = [f for f in AUDIT_FIGURES if any(f in entry[m] for m in models)]  # older audits lack new probes
        out[key] = {f"audit_{f}" + ("" if m == UNLEARNED else f"_{m}"): _num(entry[m].get(f))
                    for m in models for f in found}
        out[key].update({f"audit_other_{d}" + ("" if m == UNLEARNED else f"_{m}"): _num(v)
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

    The set score (a request's summary row, ds "set"): the classes forgotten so far take the forget
    term (their mean accuracy after over before) and every evaluated dataset D a drop term on its
    classes the set keeps, over 1 + the number of datasets. For a set of one class this is the
    paper's score: its dataset's kept classes are the rest of it, the others are whole.
    """
    main_drop, drops = relative_drops(df)
    is_set = df["ds"] == SET_ROW
    total = df["cls_forget"] / df["cls_Noforget"] + main_drop.where(~is_set, 0.0)
    n_terms = pd.Series(2.0, index=df.index) - is_set
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
    """A run's method as its settings name it ('faithful', 'improved', ...), else the folder."""
    return str(RunFolder(res_folder).settings().get("method") or res_folder)


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

# the original model and the oracle (audit.py --oracle) are shown as two more methods
COMPARE_AUDIT = [f"audit_{f.key}" for f in figures() if f.numeric and f.compare]


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
    std over seeds (mean_std layout; n_classes: the fewest classes a seed has): one line per method. A set
    run's summary rows (ds "set") are no class: left out."""
    if "ds" in runs.columns:
        runs = runs[runs["ds"] != SET_ROW]
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
    p = ArgumentParser(
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
    p.add_argument("--log_name", default=LOGS)
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
    run, audit = RunFolder(folder), ""
    if run.audit_file().is_file():
        audit = (f"\n## Audit ({run.audit_file().name}, {run.audit_plot_file().name})\n\n{AUDIT_LEGEND}\n\n"
                 + to_markdown(audit_table(run, args.digits)))
    text = (f"# Results of {folder}\n\nscore: the paper's average of the forget ratio and the relative "
            f"drops (lower is better).\n\n{table}" + ("\nNot finished cleanly:\n" + "\n".join(notes) + "\n"
                                                        if notes else "") + audit)
    md, png = run.report_files()
    atomic_write_text(md, text)
    plot_results(df, png)
    print(f"{folder}:\n" + table + ("\n".join(notes) + "\n" if notes else ""), end="")
    print(f"wrote {md} and {png}\n")
    return df


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        return compare_main(argv[1:])
    args = parse_args(argv)
    folders = [Path(f) for f in args.folders]
    problems = [f"--digits must be at least 0, got {args.digits}"] if args.digits < 0 else []
    for f in folders:  # every folder checked before the first report is written
        found = RunFolder(f, args.log_name).problems()
        problems += found or check_writable(f)
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
    p = ArgumentParser(
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


VAL_COLUMNS = [f"audit_{f}" for f in AUDIT_FIGURES]  # the audit's figures alone (on the val split)


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
            problems += [p for folder in seed_folders(d) for p in RunFolder(folder).problems()]
        except UserError as e:
            problems.append(str(e))
    check_all(problems + check_writable(out.parent))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    return compare(dirs, out, args.split, classes, args.digits, gen_data=bool(args.gen_data),
                   all_res=bool(args.all_res), rn=bool(args.rn))


def compare(dirs: Sequence[str | Path], out: str | Path, split: str = "test", classes: Sequence[str] | None = None,
            digits: int = 3, **create_results_kwargs: Any) -> pd.DataFrame:
    """The methods x classes comparison of `dirs` (one per method: seed_* run folders), written as OUT.md
    (and, for the test split, the trade-off plot OUT.png); `classes`: those forget classes only. Returns
    compare_methods' table."""
    dirs, out = [Path(d) for d in dirs], Path(out)
    runs = method_runs(dirs, audit_split=split, **create_results_kwargs)
    if classes:
        missing = [c for c in classes if c not in set(runs["name"])]
        if missing:
            known = sorted(set(runs["name"]))
            raise UserError(f"--classes: {', '.join(missing)} not in these runs{close_names(missing[0], known)}")
        runs = runs[runs["name"].isin(classes)]
    agg = compare_methods(runs)
    summary = ("\n## Mean over the classes\n\nPer method, the mean over its forget classes, then mean ± std over "
               "seeds.\n\n" + mean_std_markdown(class_means(runs, VAL_COLUMNS + ["score", "seconds"]),
                                                   VAL_COLUMNS + ["score", "seconds"], digits)
               if "audit_name" in runs.columns else "")
    if split != "test":  # only the audit's figures on that split: the paper's columns are test figures
        text = (f"# Methods compared on the {split} split: {', '.join(map(str, dirs))}\n\nMean ± std over "
                f"seeds (n_seeds) of the audit's figures on the {split} split (audit.py --split {split}): "
                f"what methods and settings are chosen by; the test split reports them.\n{AUDIT_LEGEND}\n\n"
                + mean_std_markdown(agg, VAL_COLUMNS, digits) + summary)
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
            + mean_std_markdown(agg, columns, digits) + summary)
    atomic_write_text(out.with_suffix(".md"), text)
    plot_tradeoff(runs, out.with_suffix(".png"))
    print(text + f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return agg


if __name__ == "__main__":
    run_cli(main)
