"""Results of unlearning runs as tables, scores and plots (SPEC §3).

A run folder (`results/results<ATTEMPT>/seed_<SEED>/`, written by train.py) holds `args.txt`,
`logs.json` and `zeroshot_before.json`. `create_results` turns it into one DataFrame row per
(dataset, forget class); `compute_avg_gain` gives the paper's score per row (lower is better);
`aggregate_seeds` averages several seeds; `compare_runs` puts runs side by side;
`plot_results` draws before/after bars.

    python clip_forget_utils.py results/results1/seed_0/ --all_res 1

writes `results.md` and `results.png` into that folder and prints the table; given several
folders (e.g. the faithful and the improved run) it also prints them side by side.
"""
from __future__ import annotations

import argparse
import json
import math
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend state, PNGs through Agg

from common import UserError, _atomic, atomic_write_text, check_all, check_writable, read_json, run_cli

BEFORE_FILE = "zeroshot_before.json"
ARGS_FILE = "args.txt"
KEY_COLUMNS = ["ds", "name"]
MAIN_COLUMNS = ["std", "full_Noforget", "cls_Noforget", "cls_forget", "full_forget"]
GEN_COLUMNS = ["acc_val_hard", "acc_val_true_data"]
NO_GEN_COLUMNS = ["acc_train"]
NOT_STD_KEYS = ("summary", "final_results")  # keys of a class's log that are not noise levels
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
            from zeroshot import baseline_path
            for d in wanted:
                if d not in found and baseline_path(key, d).is_file():
                    found[d] = read_json(baseline_path(key, d))
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
                   log_name: str = "logs.json") -> tuple[pd.DataFrame, str]:
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

    rows, status = [], {}
    for ds, classes in runs.items():
        for name, class_log in classes.items():
            if not isinstance(class_log, dict) or not class_log:
                continue  # not run
            rows.append(_class_row(ds, name, class_log, before, gen_data, all_res))
            state = (class_log.get("summary") or {}).get("status", "done")
            if state != "done":
                status[(ds, name)] = state

    columns = KEY_COLUMNS + MAIN_COLUMNS + (GEN_COLUMNS if gen_data else NO_GEN_COLUMNS)
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in columns))
    df = pd.DataFrame(rows, columns=columns + extra)
    df[df.columns[2:]] = df[df.columns[2:]].astype(float)
    df.attrs["status"] = status
    return df, args_text


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
    forget = df["cls_forget"] / df["cls_Noforget"]
    main_drop = ((df["full_Noforget"] - df["full_forget"]) / df["full_Noforget"]).clip(lower=0)
    total = forget + main_drop
    n_terms = pd.Series(2.0, index=df.index)
    for d in other_datasets(df):
        drop = ((df[f"full_{d}"] - df[f"res_{d}"]) / df[f"full_{d}"]).clip(lower=0).fillna(0)
        total = total + drop
        n_terms = n_terms + (df["ds"] != d)
    return (total / n_terms).astype(float).rename("score")


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
    frames = []
    for folder in seed_folders(folders):
        df, _ = create_results(folder, **create_results_kwargs)
        frames.append(df.assign(score=compute_avg_gain(df)))
    runs = pd.concat(frames, ignore_index=True)
    numeric = [c for c in runs.columns if c not in KEY_COLUMNS]
    groups = runs.groupby(KEY_COLUMNS, sort=False)
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
                    "several folders are also printed side by side.")
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
    table = to_markdown(df.assign(score=compute_avg_gain(df)), args.digits)
    notes = [f"- {ds} / {name}: {state}" for (ds, name), state in df.attrs["status"].items()]
    text = (f"# Results of {folder}\n\nscore: the paper's average of the forget ratio and the relative "
            f"drops (lower is better).\n\n{table}" + ("\nNot finished cleanly:\n" + "\n".join(notes) + "\n"
                                                        if notes else ""))
    atomic_write_text(folder / "results.md", text)
    plot_results(df, folder / "results.png")
    print(f"{folder}:\n" + table + ("\n".join(notes) + "\n" if notes else ""), end="")
    print(f"wrote {folder / 'results.md'} and {folder / 'results.png'}\n")
    return df


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
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
    print("Side by side (cls: the forget class's test images, full: the rest of its dataset, "
          "full_D / res_D: dataset D, before / after):\n" + to_markdown(side[keep], args.digits), end="")
    return side


if __name__ == "__main__":
    run_cli(main)
