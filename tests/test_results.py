"""clip_forget_utils: results tables, the paper's score, seed aggregation, plots, CLI and notebook."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clip_forget_utils import aggregate_seeds, compare_runs, compute_avg_gain, create_results, main, plot_results
from common import UserError, run_cli

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "reference"
PAPER_DS = ["StanfordDogs", "StanfordCars", "Caltech101", "OxfordFlowers"]


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    """No cached baselines of the developer's machine leak into these tests."""
    monkeypatch.setenv("CLIP_FORGET_CACHE", str(tmp_path / "cache"))


def set_settings(folder: Path, **settings) -> None:
    """Change a run folder's settings where train.py keeps them (logs.json's, and the copy in args.txt)."""
    logs = json.loads((folder / "logs.json").read_text())
    logs["settings"] = {**logs.get("settings", {}), **settings}
    (folder / "logs.json").write_text(json.dumps(logs, indent=1))
    (folder / "args.txt").write_text(json.dumps(logs["settings"], indent=1))


def reference(tag: str = "RN50") -> dict:
    return json.loads((SHARED / f"zeroshot_openai_{tag}.json").read_text())


def write_run(folder: Path, logs: dict, args: dict | None = None, before: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if args is not None:  # as train.py writes them: the settings in logs.json, a copy in args.txt
        logs = {**logs, "settings": args}
    (folder / "logs.json").write_text(json.dumps(logs, indent=1))
    if args is not None:
        (folder / "args.txt").write_text(json.dumps(args, indent=1))
    if before is not None:
        (folder / "zeroshot_before.json").write_text(json.dumps(before, indent=1))
    return folder


# ------------------------------------------------------------------ the paper's schema (4 datasets)

def paper_final(own_ds: str, cls: str, figs: tuple, others: dict) -> dict:
    """final_results as the paper writes it: own dataset first (positional key order), then 'all'."""
    keys = ["cls_acc_test", "no_cls_acc", "acc_train", "acc_val_hard", "acc_val_true_data"]
    out = {own_ds: {cls: dict(zip(keys, figs))}}
    out.update({d: {"all": {"all_ds": v}} for d, v in others.items()})
    return out


PAPER_AFTER = {  # (ds, class): (after figures of the forget dataset, after full accuracy of the others)
    ("StanfordDogs", "Pekinese"): ((0.05, 0.50, None, 0.0, 0.1),
                                   {"StanfordCars": 0.55, "Caltech101": 0.86, "OxfordFlowers": 0.64}),
    ("StanfordDogs", "toy poodle"): ((0.20, 0.49, None, 0.05, 0.3),
                                     {"StanfordCars": 0.56, "Caltech101": 0.85, "OxfordFlowers": 0.66}),
    ("StanfordCars", "2009 Spyker C8 Coupe"): ((0.0, 0.54, 0.1, 0.02, 0.0),
                                               {"StanfordDogs": 0.51, "Caltech101": 0.80, "OxfordFlowers": 0.65}),
    ("Caltech101", "minaret"): ((0.13, 0.85, None, 0.0, 0.2),
                                {"StanfordDogs": 0.52, "StanfordCars": 0.50, "OxfordFlowers": 0.66}),
    ("OxfordFlowers", "gazania"): ((0.30, 0.60, None, 0.1, 0.25),
                                   {"StanfordDogs": 0.50, "StanfordCars": 0.55, "Caltech101": 0.86}),
}


@pytest.fixture
def paper_run(tmp_path) -> Path:
    """A logs.json in the paper's schema: no summary, no 'improved'; before figures from reference/."""
    logs: dict = {"settings": {"backbone_arch": "RN50"}}
    stds = {("StanfordDogs", "Pekinese"): ["0.1", "0.3", "0.5"], ("StanfordDogs", "toy poodle"): ["0.1"],
            ("StanfordCars", "2009 Spyker C8 Coupe"): [], ("Caltech101", "minaret"): ["0.1", "0.3"],
            ("OxfordFlowers", "gazania"): ["0.1", "0.3", "0.5", "0.7", "1.0"]}
    for (ds, cls), (figs, others) in PAPER_AFTER.items():
        entry = {s: {"acc_syn": [0.9, 0.5], "k_v": 5} for s in stds[(ds, cls)]}
        entry["final_results"] = paper_final(ds, cls, figs, others)
        logs.setdefault(ds, {})[cls] = entry
    logs["Caltech101"]["platypus"] = {}  # not run: no row
    return write_run(tmp_path / "paper" / "seed_0", logs, args={"backbone_arch": "RN50", "run_ds": ",".join(PAPER_DS)})


def test_paper_logs_values(paper_run):
    df, args_text = create_results(paper_run, gen_data=True, all_res=True, rn=True)
    ref = reference("RN50")
    assert json.loads(args_text)["backbone_arch"] == "RN50"
    assert list(df[["ds", "name"]].itertuples(index=False, name=None)) == list(PAPER_AFTER)
    assert list(df.columns[:9]) == ["ds", "name", "std", "full_Noforget", "cls_Noforget", "cls_forget",
                                    "full_forget", "acc_val_hard", "acc_val_true_data"]
    assert sorted(df.columns[9:]) == sorted(f"{p}_{d}" for d in PAPER_DS for p in ("res", "full"))
    assert df["std"].tolist() == [0.5, 0.1, 0.0, 0.3, 1.0]  # the key before final_results; 0 if none
    for _, row in df.iterrows():
        figs, others = PAPER_AFTER[(row["ds"], row["name"])]
        before = ref[row["ds"]][row["name"]]
        assert row["cls_Noforget"] == before["cls_acc_test"]
        assert row["full_Noforget"] == before["no_cls_acc"]
        assert (row["cls_forget"], row["full_forget"]) == (figs[0], figs[1])
        assert (row["acc_val_hard"], row["acc_val_true_data"]) == (figs[3], figs[4])
        for d in PAPER_DS:
            if d == row["ds"]:
                assert math.isnan(row[f"res_{d}"]) and math.isnan(row[f"full_{d}"])
            else:
                assert row[f"res_{d}"] == others[d]
                assert row[f"full_{d}"] == next(iter(ref[d].values()))["full_acc"]
    for col in df.columns[2:]:
        assert df[col].dtype == np.float64, col


def test_paper_logs_without_generated_data_and_all_res(paper_run):
    df, _ = create_results(paper_run, gen_data=False, all_res=False)
    assert list(df.columns) == ["ds", "name", "std", "full_Noforget", "cls_Noforget", "cls_forget",
                                "full_forget", "acc_train"]
    assert df["acc_train"].isna().tolist() == [True, True, False, True, True]
    assert df.loc[2, "acc_train"] == 0.1


def test_rn_chooses_the_reference_only_when_args_name_no_backbone(paper_run):
    (paper_run / "args.txt").write_text("not json")  # and logs' settings name RN50: still RN50
    df, _ = create_results(paper_run, rn=False)
    assert df.loc[0, "cls_Noforget"] == reference("RN50")["StanfordDogs"]["Pekinese"]["cls_acc_test"]
    logs = json.loads((paper_run / "logs.json").read_text())
    logs.pop("settings")
    (paper_run / "logs.json").write_text(json.dumps(logs))
    vit, _ = create_results(paper_run, rn=False)
    assert vit.loc[0, "cls_Noforget"] == reference("ViT-B-16")["StanfordDogs"]["Pekinese"]["cls_acc_test"]
    rn, _ = create_results(paper_run, rn=True)
    assert rn.loc[0, "cls_Noforget"] == reference("RN50")["StanfordDogs"]["Pekinese"]["cls_acc_test"]


def test_cached_baselines_come_before_the_reference(paper_run, tmp_path):
    cached = {"Pekinese": {"cls_acc_test": 0.7, "no_cls_acc": 0.5, "acc_train": 0.6, "full_acc": 0.51}}
    path = tmp_path / "cache" / "zeroshot" / "RN50-openai" / "StanfordDogs-0123456789.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(cached))
    df, _ = create_results(paper_run, all_res=True)
    assert (df.loc[0, "cls_Noforget"], df.loc[0, "full_Noforget"]) == (0.7, 0.5)
    assert math.isnan(df.loc[1, "cls_Noforget"])  # toy poodle is not in this (partial) cache file
    assert df.loc[2, "full_StanfordDogs"] == 0.51
    assert df.loc[2, "cls_Noforget"] == reference()["StanfordCars"]["2009 Spyker C8 Coupe"]["cls_acc_test"]
    recorded = tmp_path / "cache" / "zeroshot" / "RN50-run-key" / "StanfordDogs-0123456789.json"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps({"Pekinese": {**cached["Pekinese"], "cls_acc_test": 0.66}}))
    set_settings(paper_run, backbone_arch="RN50", model_key="RN50-run-key")
    assert create_results(paper_run)[0].loc[0, "cls_Noforget"] == 0.66  # the key train.py records wins


# ------------------------------------------------------------------ our schema (Digits, Shapes)

BEFORE = {"Digits": {"zero": {"cls_acc_test": 0.9, "no_cls_acc": 0.8, "acc_train": 0.9, "full_acc": 0.82},
                     "three": {"cls_acc_test": 0.75, "no_cls_acc": 0.85, "acc_train": 0.7, "full_acc": 0.82}},
          "Shapes": {"circle": {"cls_acc_test": 1.0, "no_cls_acc": 0.6, "acc_train": 1.0, "full_acc": 0.64},
                     "star": {"cls_acc_test": 0.5, "no_cls_acc": 0.65, "acc_train": 0.4, "full_acc": 0.64}}}


def std_record(improved: bool) -> dict:
    return {"improved": improved, "epochs": [{"epoch": 0, "acc_syn": 0.4, "improved": improved,
                                              "k_v": 5, "k_t": 5, "steps": 1, "loss": 1.2}]}


def our_logs(three: tuple[float, float, float], star: tuple[float, float, float],
             status: str = "done") -> dict:
    """(cls_acc_test, no_cls_acc, other dataset's all_ds) after unlearning, for each class."""
    def final(ds, cls, figs, other):
        return {ds: {cls: {"cls_acc_test": figs[0], "no_cls_acc": figs[1], "acc_train": None,
                           "acc_val_hard": 0.0, "acc_val_true_data": 0.1}},
                other: {"all": {"all_ds": figs[2]}}}
    return {
        "settings": {"backbone_arch": "demo", "pretrained": "demo"},
        "Digits": {"three": {"summary": {"epochs": 7, "rollbacks": 2, "best_std": 0.5, "seconds": 4.0,
                                         "status": "done"},
                             "0.1": std_record(True), "0.3": std_record(False), "0.5": std_record(True),
                             "0.7": std_record(False), "final_results": final("Digits", "three", three, "Shapes")},
                   "zero": {}},
        "Shapes": {"star": {"summary": {"epochs": 2, "rollbacks": 1, "best_std": 0, "seconds": 1.0,
                                        "status": status},
                            "0.1": std_record(False), "final_results": final("Shapes", "star", star, "Digits")}},
    }


def our_run(folder: Path, three=(0.1, 0.8, 0.6), star=(0.2, 0.6, 0.8), status="done") -> Path:
    args = {"backbone_arch": "demo", "pretrained": "demo", "run_ds": "Digits,Shapes", "generated_data": 1, "seed": 0}
    return write_run(folder, our_logs(three, star, status), args=args, before=BEFORE)


def test_our_schema_std_rule_and_values(tmp_path):
    df, _ = create_results(our_run(tmp_path / "seed_0", status="error: NaN loss"), all_res=True)
    assert list(df.columns) == ["ds", "name", "std", "full_Noforget", "cls_Noforget", "cls_forget", "full_forget",
                                "acc_val_hard", "acc_val_true_data", "res_Shapes", "full_Shapes",
                                "res_Digits", "full_Digits"]
    assert df["name"].tolist() == ["three", "star"]  # 'zero' ({}) was not run
    assert df["std"].tolist() == [0.5, 0.0]  # last improved level; none improved -> 0
    three, star = df.iloc[0], df.iloc[1]
    assert (three["full_Noforget"], three["cls_Noforget"], three["cls_forget"], three["full_forget"]) == \
        (0.85, 0.75, 0.1, 0.8)
    assert (three["res_Shapes"], three["full_Shapes"]) == (0.6, 0.64)
    assert math.isnan(three["res_Digits"])
    assert (star["res_Digits"], star["full_Digits"], star["cls_Noforget"]) == (0.8, 0.82, 0.5)
    assert df.attrs["status"] == {("Shapes", "star"): "error: NaN loss"}


def test_missing_before_figures_are_nan(tmp_path):
    folder = our_run(tmp_path / "seed_0")
    (folder / "zeroshot_before.json").unlink()  # demo: no cache here, no published figures
    df, _ = create_results(folder, all_res=True)
    assert df[["full_Noforget", "cls_Noforget", "full_Shapes", "full_Digits"]].isna().all().all()
    assert df["cls_forget"].tolist() == [0.1, 0.2]
    assert compute_avg_gain(df).isna().all()


# ------------------------------------------------------------------ the score

def test_avg_gain_two_datasets_by_hand():
    df = pd.DataFrame({
        "ds": ["A", "B", "A", "A"], "name": ["a", "b", "a2", "a3"],
        "cls_Noforget": [0.5, 0.4, 0.5, 0.0], "cls_forget": [0.1, 0.2, 0.0, 0.0],
        "full_Noforget": [0.8, 0.5, 0.8, 0.8], "full_forget": [0.6, 0.55, 0.8, 0.8],
        "res_B": [0.45, np.nan, np.nan, 0.5], "full_B": [0.5, np.nan, 0.5, 0.5],
        "res_A": [np.nan, 0.95, np.nan, np.nan], "full_A": [np.nan, 0.9, np.nan, np.nan]})
    score = compute_avg_gain(df)
    # row a: 0.1/0.5 + (0.8-0.6)/0.8 + (0.5-0.45)/0.5, over 2 + 1 other dataset
    assert score[0] == pytest.approx((0.2 + 0.25 + 0.1) / 3)
    # row b: 0.2/0.4, main accuracy went up (clipped to 0), A went up (clipped to 0)
    assert score[1] == pytest.approx(0.5 / 3)
    # row a2: other dataset's result missing -> 0, still counted in the divisor
    assert score[2] == pytest.approx(0.0)
    # row a3: zero baseline of the forget class: 0/0 is NaN as in the paper (not a perfect score)
    assert math.isnan(score[3])


def test_avg_gain_four_datasets_divides_by_five():
    others = {"B": (0.5, 0.4), "C": (0.0, 0.0), "D": (0.8, np.nan)}  # full_D, res_D; C: zero baseline
    row = {"ds": "A", "name": "x", "cls_Noforget": 0.8, "cls_forget": 0.2, "full_Noforget": 0.6, "full_forget": 0.45,
           "res_A": np.nan, "full_A": np.nan}
    for d, (full, res) in others.items():
        row[f"full_{d}"], row[f"res_{d}"] = full, res
    score = compute_avg_gain(pd.DataFrame([row]))
    expected = (0.25 + 0.25 + 0.2 + 0.0 + 0.0) / 5  # forget ratio, main drop, B drop, C 0/0 -> 0, D NaN -> 0
    assert score[0] == pytest.approx(expected)
    no_others = compute_avg_gain(pd.DataFrame([{k: row[k] for k in list(row)[:6]}]))
    assert no_others[0] == pytest.approx((0.25 + 0.25) / 2)  # all_res=False: forget + main terms only


def test_avg_gain_on_the_paper_fixture(paper_run):
    df, _ = create_results(paper_run, all_res=True)
    ref = reference()
    full = {d: next(iter(ref[d].values()))["full_acc"] for d in PAPER_DS}
    before = ref["StanfordDogs"]["Pekinese"]
    others = PAPER_AFTER[("StanfordDogs", "Pekinese")][1]
    expected = (0.05 / before["cls_acc_test"] + max(0.0, (before["no_cls_acc"] - 0.50) / before["no_cls_acc"])
                + sum(max(0.0, (full[d] - v) / full[d]) for d, v in others.items())) / 5
    assert compute_avg_gain(df)[0] == pytest.approx(expected)


# ------------------------------------------------------------------ seeds

def test_aggregate_seeds(tmp_path):
    root = tmp_path / "results1"
    s0 = our_run(root / "seed_0", three=(0.1, 0.8, 0.6), star=(0.2, 0.6, 0.8))
    s1 = our_run(root / "seed_1", three=(0.3, 0.7, 0.6), star=(0.2, 0.5, 0.7))
    agg = aggregate_seeds([s0, s1], all_res=True)
    assert list(agg.columns[:5]) == ["ds", "name", "n_seeds", "std_mean", "std_std"]
    assert list(agg.columns[-2:]) == ["score_mean", "score_std"]
    three = agg.iloc[0]
    assert (three["ds"], three["name"], three["n_seeds"]) == ("Digits", "three", 2)
    assert three["cls_forget_mean"] == pytest.approx(0.2)
    assert three["cls_forget_std"] == pytest.approx(0.1 * math.sqrt(2))  # sample std of 0.1, 0.3
    assert three["full_forget_mean"] == pytest.approx(0.75)
    assert (three["res_Shapes_mean"], three["res_Shapes_std"]) == (pytest.approx(0.6), pytest.approx(0.0))
    scores = [compute_avg_gain(create_results(s, all_res=True)[0])[0] for s in (s0, s1)]
    assert three["score_mean"] == pytest.approx(np.mean(scores))
    assert three["score_std"] == pytest.approx(np.std(scores, ddof=1))
    assert agg.iloc[1]["full_forget_std"] == pytest.approx(np.std([0.6, 0.5], ddof=1))
    by_parent = aggregate_seeds(root, all_res=True, ddof=0)  # the seed_* folders of results1
    assert by_parent.iloc[0]["cls_forget_std"] == pytest.approx(0.1)
    assert by_parent["cls_forget_mean"].tolist() == pytest.approx(agg["cls_forget_mean"].tolist())


# ------------------------------------------------------------------ plot and command line

def check_png(path: Path) -> None:
    from PIL import Image
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= 400 and im.size[1] >= 250
        im.verify()
    assert path.stat().st_size > 10_000


def markdown_rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[:1] + lines[2:]]


def test_cli_writes_png_and_markdown(tmp_path):
    folder = our_run(tmp_path / "results1" / "seed_0")
    proc = subprocess.run([sys.executable, str(REPO / "clip_forget_utils.py"), str(folder), "--gen_data", "1",
                           "--all_res", "1"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    check_png(folder / "results.png")
    md = (folder / "results.md").read_text()
    assert "| ds | name | std |" in proc.stdout
    header, *rows = markdown_rows(md)
    df, _ = create_results(folder, all_res=True)
    df["score"] = compute_avg_gain(df)
    assert header == list(df.columns)
    assert len(rows) == len(df)
    for cells, (_, row) in zip(rows, df.iterrows()):
        assert cells[:2] == [row["ds"], row["name"]]
        for cell, value in zip(cells[2:], row.iloc[2:]):
            assert cell == ("-" if math.isnan(value) else f"{value:.3f}")
    assert rows[0][header.index("score")] == f"{(0.1 / 0.75 + (0.85 - 0.8) / 0.85 + (0.64 - 0.6) / 0.64) / 3:.3f}"


def test_cli_puts_two_runs_side_by_side(tmp_path, capsys):
    faithful = our_run(tmp_path / "results1" / "seed_0")
    improved = our_run(tmp_path / "results1_improved" / "seed_0", three=(0.0, 0.84, 0.64), star=(0.05, 0.65, 0.82))
    set_settings(improved, method="improved")
    set_settings(faithful, method="faithful")
    side = main([str(faithful), str(improved), "--all_res", "1"])
    assert (faithful / "results.png").is_file() and (improved / "results.md").is_file()
    assert side[["run", "name"]].values.tolist() == [["faithful", "three"], ["improved", "three"],
                                                     ["faithful", "star"], ["improved", "star"]]
    out = capsys.readouterr().out
    table = markdown_rows(out[out.index("Side by side"):])
    assert table[0][:5] == ["run", "ds", "name", "cls_Noforget", "cls_forget"]
    rows = {(r[0], r[2]): r for r in table[1:]}
    assert rows[("improved", "three")][4] == "0.000" and rows[("faithful", "three")][4] == "0.100"
    assert rows[("improved", "star")][table[0].index("res_Digits")] == "0.820"
    # two runs with the same method are told apart by their folders; a missing folder fails before any report
    assert set(compare_runs([faithful, faithful]).run) == {str(faithful)}
    (improved / "results.md").unlink()
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(improved), str(tmp_path / "nope")])
    assert e.value.code == 2 and not (improved / "results.md").exists()


def test_cli_help_and_user_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "results.png" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(tmp_path / "nope")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not found" in err
    (tmp_path / "results1" / "seed_0").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        run_cli(main, [str(tmp_path / "results1")])
    assert e.value.code == 2 and "seed_0" in capsys.readouterr().err


def test_plot_results_direct(tmp_path, paper_run):
    df, _ = create_results(paper_run, all_res=True)
    fig = plot_results(df, tmp_path / "paper.png")
    assert len(fig.axes) == len(df)
    assert len(fig.axes[0].patches) == 2 * 5  # before/after x (forget class, rest, 3 other datasets)
    check_png(tmp_path / "paper.png")


# ------------------------------------------------------------------ errors

def test_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        create_results(tmp_path / "missing")
    with pytest.raises(UserError, match="no logs.json"):
        create_results(tmp_path)
    (tmp_path / "logs.json").write_text("{ half")
    with pytest.raises(UserError, match="not valid JSON"):
        create_results(tmp_path)
    with pytest.raises(UserError, match="no run folders"):
        aggregate_seeds([])


# ------------------------------------------------------------------ notebook

def test_notebook_runs_headless(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    folder = our_run(tmp_path / "results1" / "seed_0")
    monkeypatch.setenv("RESULTS_DIR", str(folder))
    # the kernelspec's "python" is this interpreter (jupyter_client maps the native kernel to sys.executable)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    nb = nbformat.read(REPO / "notebooks" / "view_results.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
    assert any("three" in o.get("data", {}).get("text/plain", "") for o in outputs)


# ------------------------------------------------------------------ the audit's columns and the methods comparison

def audit_figures(name: float, probe: float, steps: int | None, blast: float) -> dict:
    return {"name": name, "ensemble": name, "alias": None, "probe": probe, "relearn_steps": steps,
            "relearn_acc": 1.0, "relearn_curve": [name, 1.0], "relearn_k": 8, "blast_mean": blast,
            "blast_count": int(blast > 0.05), "blast_top": [["a photo of a x.", blast]] if blast else []}


def write_audit(folder: Path, unlearned: dict[tuple[str, str], dict]) -> Path:
    """An audit.json as audit.py writes it: per class the original's and the unlearned model's figures."""
    audit: dict = {"settings": {"relearn_back": 0.5, "seed": 0}}
    for (ds, cls), figures in unlearned.items():
        original = audit_figures(BEFORE[ds][cls]["cls_acc_test"], 0.9, 0, 0.0)
        audit.setdefault(ds, {})[cls] = {"changed_towers": ["text"], "blast_prompts": 998, "original": original,
                                         "unlearned": figures}
    (folder / "audit.json").write_text(json.dumps(audit))
    return folder


def test_create_results_adds_audit_columns_after_the_papers(tmp_path):
    folder = our_run(tmp_path / "seed_0")
    paper, _ = create_results(folder, all_res=True)
    write_audit(folder, {("Digits", "three"): audit_figures(0.0, 0.8, None, 0.01)})  # star not audited
    df, _ = create_results(folder, all_res=True)
    assert df[paper.columns].equals(paper)
    assert list(df.columns[:len(paper.columns)]) == list(paper.columns)
    audit_cols = list(df.columns[len(paper.columns):])
    assert audit_cols[:2] == ["audit_name", "audit_ensemble"] and "audit_probe_original" in audit_cols
    three, star = df.iloc[0], df.iloc[1]
    assert (three["audit_probe"], three["audit_probe_original"], three["audit_blast_mean"]) == (0.8, 0.9, 0.01)
    assert math.isnan(three["audit_alias"]) and math.isnan(three["audit_relearn_steps"])  # None: not within budget
    assert three["audit_name_original"] == BEFORE["Digits"]["three"]["cls_acc_test"]
    assert star[audit_cols].isna().all()
    assert df.attrs["seconds"] == {("Digits", "three"): 4.0, ("Shapes", "star"): 1.0}


def test_report_writes_the_audit_table_below_the_papers(tmp_path):
    folder = write_audit(our_run(tmp_path / "seed_0"), {("Digits", "three"): audit_figures(0.0, 0.8, 3, 0.01)})
    main([str(folder), "--all_res", "1"])
    md = (folder / "results.md").read_text()
    paper_table, audit_part = md.split("## Audit")
    assert not [c for c in markdown_rows(paper_table)[0] if c.startswith("audit_")]  # the paper's table as it was
    header, *rows = markdown_rows(audit_part)
    row = dict(zip(header, rows[0]))
    assert (row["name"], row["name probe"], row["linear probe"]) == ("three", "0.750 → 0.000", "0.900 → 0.800")
    assert (row["relearn steps"], row["blast moved"]) == ("3", "0/998")


def two_methods(tmp_path: Path) -> tuple[Path, Path]:
    """results1 (faithful) and results1_improved, two seeds each, audited."""
    dirs = []
    for method, figs in (("faithful", [((0.5, 0.8, 0.6), (0.4, 0.6, 0.8)), ((0.7, 0.8, 0.6), (0.4, 0.6, 0.7))]),
                         ("improved", [((0.0, 0.84, 0.64), (0.0, 0.6, 0.82)), ((0.1, 0.84, 0.64), (0.0, 0.5, 0.82))])):
        root = tmp_path / ("results1" if method == "faithful" else "results1_improved")
        for seed, (three, star) in enumerate(figs):
            folder = our_run(root / f"seed_{seed}", three=three, star=star)
            set_settings(folder, method=method, seed=seed)
            write_audit(folder, {("Digits", "three"): audit_figures(three[0], 0.9 - 0.1 * seed, 2 + seed, 0.01),
                                 ("Shapes", "star"): audit_figures(star[0], 0.5, None, 0.0)})
        dirs.append(root)
    return dirs[0], dirs[1]


def test_compare_methods_over_seeds(tmp_path):
    from clip_forget_utils import compare_methods, method_runs
    faithful, improved = two_methods(tmp_path)
    agg = compare_methods([faithful, improved], all_res=True)
    assert agg[["method", "name"]].values.tolist() == [
        ["original", "three"], ["faithful", "three"], ["improved", "three"],
        ["original", "star"], ["faithful", "star"], ["improved", "star"]]
    rows = {(r["method"], r["name"]): r for _, r in agg.iterrows()}
    f3 = rows[("faithful", "three")]
    assert f3["n_seeds"] == 2
    assert (f3["cls_forget_mean"], f3["cls_forget_std"]) == (pytest.approx(0.6), pytest.approx(0.1 * math.sqrt(2)))
    assert (f3["audit_probe_mean"], f3["audit_relearn_steps_mean"]) == (pytest.approx(0.85), pytest.approx(2.5))
    assert f3["seconds_mean"] == 4.0
    scores = [compute_avg_gain(create_results(faithful / f"seed_{s}", all_res=True)[0])[0] for s in (0, 1)]
    assert f3["score_mean"] == pytest.approx(np.mean(scores))
    assert math.isnan(rows[("improved", "star")]["audit_relearn_steps_mean"])  # never relearned within budget
    o3 = rows[("original", "three")]  # the original model: its 'after' is the before, its audit the original's
    assert (o3["cls_forget_mean"], o3["full_forget_mean"]) == (0.75, 0.85)
    assert (o3["res_Shapes_mean"], o3["audit_probe_mean"], o3["audit_blast_mean_mean"]) == (0.64, 0.9, 0.0)
    assert math.isnan(o3["seconds_mean"]) and o3["lost_elsewhere_mean"] == 0
    assert not [c for c in agg.columns if c.startswith("audit_") and "_original_" in c]
    # lost elsewhere: mean of the clipped relative drops of the rest of the dataset and the other dataset
    runs = method_runs([faithful, improved], all_res=True).set_index(["method", "seed", "name"])
    i3 = runs.loc[("improved", "seed_0", "three")]
    assert i3["lost_elsewhere"] == pytest.approx((max(0, (0.85 - 0.84) / 0.85) + max(0, (0.64 - 0.64) / 0.64)) / 2)


def test_compare_command_line(tmp_path, capsys):
    faithful, improved = two_methods(tmp_path)
    out = main(["compare", str(faithful), str(improved)])
    assert set(out["method"]) == {"original", "faithful", "improved"}
    md = (tmp_path / "compare.md").read_text()  # default: in the DIRs' common parent
    check_png(tmp_path / "compare.png")
    header, *rows = markdown_rows(md)
    assert header[:4] == ["method", "ds", "name", "n_seeds"]
    assert {"cls_forget", "audit_probe", "audit_relearn_steps", "score", "seconds"} <= set(header)
    cell = dict(zip(header, rows[1]))
    assert (cell["method"], cell["cls_forget"]) == ("faithful", f"0.600 ± {0.1 * math.sqrt(2):.3f}")
    assert dict(zip(header, rows[0]))["seconds"] == "-"
    single = main(["compare", str(faithful / "seed_0"), "--out", str(tmp_path / "one")])  # a run folder
    assert set(single["n_seeds"]) == {1} and (tmp_path / "one.md").is_file()
    assert "0.500 |" in (tmp_path / "one.md").read_text()  # one seed: no ± part
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["compare", str(tmp_path / "nope")])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err


def test_compare_mean_over_classes_and_a_subset_of_classes(tmp_path, capsys):
    """The summary line per method: the mean over its classes per seed, then mean ± std over seeds;
    --classes keeps only the classes named (e.g. those no choice of setting saw)."""
    faithful, improved = two_methods(tmp_path)
    main(["compare", str(faithful), str(improved), "--out", str(tmp_path / "all")])
    text = (tmp_path / "all.md").read_text()
    summary = markdown_rows(text[text.index("## Mean over the classes"):])
    header, rows = summary[0], {r[0]: dict(zip(summary[0], r)) for r in summary[1:]}
    assert header[:3] == ["method", "n_classes", "n_seeds"] and rows["improved"]["n_classes"] == "2"
    # improved's probe: seed 0 (0.9 + 0.5) / 2 = 0.7, seed 1 (0.8 + 0.5) / 2 = 0.65
    assert rows["improved"]["audit_probe"] == f"0.675 ± {0.05 / math.sqrt(2):.3f}"
    main(["compare", str(faithful), str(improved), "--classes", "three", "--out", str(tmp_path / "three")])
    text = (tmp_path / "three.md").read_text()
    assert "| star |" not in text
    summary = markdown_rows(text[text.index("## Mean over the classes"):])
    rows = {r[0]: dict(zip(summary[0], r)) for r in summary[1:]}
    assert rows["faithful"]["n_classes"] == "1"
    assert rows["faithful"]["audit_name"] == f"0.600 ± {0.1 * math.sqrt(2):.3f}"
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["compare", str(faithful), "--classes", "thre"])
    assert e.value.code == 2 and "--classes: thre not in these runs; did you mean: three?" in capsys.readouterr().err


def test_a_run_folder_of_the_first_release_reads_to_the_same_frames(tmp_path):
    """tests/fixtures/run_056d30e was written by the code at commit 056d30e (datagen, train.py --max_epochs 3
    and audit.py on `three` and `red star` of that time's demo CLIP), beside that code's create_results
    frames. Read by today's run-folder owner, the folder gives the same frames; the only columns left out
    are those the old code filled with nothing (the oracle's, for an audit without --oracle)."""
    import shutil
    folder = tmp_path / "run"
    shutil.copytree(REPO / "tests" / "fixtures" / "run_056d30e", folder)
    for all_res in (False, True):
        old = pd.read_json(folder / f"create_results_all_res{int(all_res)}.json", orient="split")
        new, _ = create_results(folder, gen_data=True, all_res=all_res, rn=False)
        dropped = [c for c in old.columns if c not in new.columns]
        assert all("oracle" in c for c in dropped) and old[dropped].isna().all().all(), dropped
        assert list(new.columns) == [c for c in old.columns if c not in dropped]
        assert len(old) == 2 and old["cls_forget"].notna().all()
        pd.testing.assert_frame_equal(new.reset_index(drop=True), old.drop(columns=dropped).reset_index(drop=True),
                                      check_dtype=False, rtol=1e-12)
