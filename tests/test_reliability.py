"""Reliability (issue 7): bad input is refused before any work, in one go, one line per problem;
interrupted runs lose nothing; the same seed gives the same results; files are loaded safely.

Every bad-input test asserts the exact message, the exit code and that no existing result or
synthetic file changed. Most run the script's main() in-process through common.run_cli (the same
path as the command line, without paying the imports again); a few run the real scripts.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import clip_forget_utils
import datagen
import methods.lipschitz
import train
import zeroshot
from common import REPO, UserError, _atomic, atomic_write_json, check_writable, run_cli
from datasets import known_datasets
from models import load_model
from synthetic import read_synthetic, synthetic_path
from zeroshot import run_model_key

KNOWN = ", ".join(known_datasets())  # every dataset config, as the error lists them

LABELS = "three,red star"  # Digits/three, then Shapes/red star
N_GEN = 16
DEMO_KEY = run_model_key("demo", None, 0)
# One CPU thread everywhere (in-process and in the scripts): on a shared machine, OpenMP threads
# competing for cores make these small models many times slower, and results on CPU are only
# bit-identical between runs with the same number of threads.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@contextlib.contextmanager
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


# ---------------------------------------------------------------- shared runs (once per session)
@pytest.fixture(scope="session")
def gen(tmp_path_factory, data_root) -> Path:
    """datagen.py on the three demo forget classes."""
    out = tmp_path_factory.mktemp("rel_generated")
    with one_thread():
        datagen.main(["--out_dir", str(out), "--forget_labels", LABELS, "--n_generated", str(N_GEN),
                      "--data_root", data_root, "--device", "cpu"])
    return out


def train_argv(gen: Path, out: Path, data_root: str, labels: str = LABELS, *extra: str) -> list[str]:
    return ["--generated_dir", str(gen), "--output_dir", str(out), "--forget_labels", labels, "--n_samples", "5",
            "--data_root", data_root, "--device", "cpu", "--save_best_model", "1", *extra]


@pytest.fixture(scope="session")
def run(tmp_path_factory, gen, data_root) -> Path:
    """An uninterrupted train.py run on the three classes (the reference for resume and bad input)."""
    out = tmp_path_factory.mktemp("rel_results") / "seed_0"
    with one_thread():
        train.main(train_argv(gen, out, data_root))
    return out


def tree(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def cli(main, argv, capsys) -> tuple[int, list[str], str]:
    """Run main through run_cli as the command line does: (exit code, 'error:' lines, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    err = capsys.readouterr().err
    return e.value.code, [ln for ln in err.splitlines() if ln.startswith("error:")], err


def refused(main, argv, capsys, expected: list[str], *folders: Path) -> None:
    """main(argv) exits with 2, prints exactly the `expected` error lines, no traceback, and
    changes no file in `folders`."""
    before = [tree(f) for f in folders]
    code, lines, err = cli(main, argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.splitlines() == lines == [f"error: {e}" for e in expected], err  # nothing else on stderr
    assert [tree(f) for f in folders] == before


@pytest.fixture
def out(run, tmp_path) -> Path:
    """A copy of the finished run: every bad-input run points at it, and must leave it alone."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


@pytest.fixture
def gen_copy(gen, tmp_path) -> Path:
    dst = tmp_path / "gen"
    shutil.copytree(gen, dst)
    return dst


def copy_digits(data_root: str, tmp_path: Path) -> Path:
    """A new data root with a private copy of the demo Digits dataset (Shapes: a link to the real one)."""
    root = tmp_path / "data"
    shutil.copytree(Path(data_root) / "digits", root / "digits")
    (root / "shapes").symlink_to(Path(data_root).resolve() / "shapes")
    return root


# ---------------------------------------------------------------- bad input: names
def test_unknown_dataset(gen, out, data_root, capsys):
    refused(train.main, train_argv(gen, out, data_root, "three", "--run_ds", "Digits,Shapez"), capsys,
            [f"unknown dataset 'Shapez'; did you mean: Shapes? (known: {KNOWN})"], out, gen)


def test_class_with_a_typo_suggests_the_close_name(gen, out, data_root, capsys):
    refused(train.main, train_argv(gen, out, data_root, "thre,red star"), capsys,
            ["unknown class 'thre' in Digits, Shapes; did you mean: three?"], out, gen)


def test_class_of_another_dataset(gen, out, data_root, capsys):
    refused(train.main, train_argv(gen, out, data_root, "red star", "--run_ds", "Digits"), capsys,
            ["class 'red star' belongs to Shapes, which is not in --run_ds"], out, gen)


def test_unknown_model(gen, out, data_root, capsys):
    refused(train.main, train_argv(gen, out, data_root, LABELS, "--backbone_arch", "RN5O"), capsys,
            ["unknown model 'RN5O'; did you mean: RN50, RN, RN50x4? (open_clip knows "
             f"{len(__import__('open_clip').list_models())} models: see open_clip.list_models())",
             f"{out} holds a run with other settings (backbone_arch: demo vs RN5O); use another --output_dir "
             "(with train.sh: another ATTEMPT number)"],
            out, gen)


@pytest.mark.parametrize("n", ["0", "-2"])
def test_n_samples_not_positive(n, gen, out, data_root, capsys):
    refused(train.main, train_argv(gen, out, data_root, LABELS, "--n_samples", n), capsys,
            [f"--n_samples must be at least 1, got {n}",
             f"{out} holds a run with other settings (n_samples: 5 vs {n}); use another --output_dir "
             "(with train.sh: another ATTEMPT number)"], out, gen)


def test_threshold_outside_0_1(gen_copy, data_root, capsys):
    refused(datagen.main, ["--out_dir", str(gen_copy), "--forget_labels", LABELS, "--data_root", data_root,
                           "--high_prob", "1.5", "--min_prob", "0"], capsys,
            ["--high_prob must be in (0, 1), got 1.5", "--min_prob must be in (0, 1), got 0.0"], gen_copy)


def test_no_device(gen, out, data_root, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    refused(train.main, train_argv(gen, out, data_root, LABELS, "--device", "cuda"), capsys,
            ["--device cuda: no CUDA GPU is available here; use --device cpu"], out, gen)


# ---------------------------------------------------------------- bad input: data
def test_missing_data_root(gen, out, data_root, tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    refused(train.main, train_argv(gen, out, data_root, "Pekinese", "--run_ds", "StanfordDogs",
                                   "--data_root", str(nowhere)), capsys,
            [f"data root {nowhere} does not exist; see DATASETS.md"], out, gen)
    assert not nowhere.exists()


def test_missing_split_file(gen, out, data_root, tmp_path, capsys):
    root = tmp_path / "data" / "stanford_dogs"
    root.mkdir(parents=True)
    split = root / "split_alexey_stanford_dogs.json"
    refused(train.main, train_argv(gen, out, data_root, "Pekinese", "--run_ds", "StanfordDogs", "--eval_ds",
                                   "StanfordDogs", "--data_root", str(tmp_path / "data")), capsys,
            [f"StanfordDogs: split file {split} not found, and {root / 'lists' / 'train_list.mat'} to build it "
             "from is missing too; see DATASETS.md"], out, gen)
    # without --eval_ds the run needs the whole benchmark, as the paper evaluates it after every class
    data = tmp_path / "data"
    refused(train.main, train_argv(gen, out, data_root, "Pekinese", "--run_ds", "StanfordDogs", "--data_root",
                                   str(data)), capsys,
            [f"StanfordDogs: split file {split} not found, and {root / 'lists' / 'train_list.mat'} to build it "
             "from is missing too; see DATASETS.md",
             f"StanfordCars: folder {data / 'stanford_cars'} not found; see DATASETS.md",
             f"Caltech101: folder {data / 'caltech-101'} not found; see DATASETS.md",
             f"OxfordFlowers: folder {data / 'oxford_flowers'} not found; see DATASETS.md",
             "(after every class the paper evaluates StanfordDogs, StanfordCars, Caltech101, OxfordFlowers; "
             "pass --eval_ds to evaluate fewer)"], out, gen)


def test_split_entry_with_missing_image(gen, out, data_root, tmp_path, capsys):
    root = copy_digits(data_root, tmp_path)
    split = root / "digits" / "split_digits.json"
    rel = json.loads(split.read_text())["test"][5][0]
    (root / "digits" / "images" / rel).unlink()
    refused(train.main, train_argv(gen, out, data_root, "three", "--run_ds", "Digits", "--data_root", str(root)),
            capsys, [f"Digits: image listed in {split} is missing: {root / 'digits' / 'images' / rel}; "
                     "see DATASETS.md"], out, gen)


def test_unreadable_image_in_a_dataloader_worker(run, gen, data_root, tmp_path, capsys):
    """Found only when read (here in a DataLoader worker, after unlearning): still one clean line,
    and the classes already in logs.json stay as they were."""
    root = copy_digits(data_root, tmp_path)
    split = json.loads((root / "digits" / "split_digits.json").read_text())
    bad = root / "digits" / "images" / split["test"][3][0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "run"
    shutil.copytree(run, out)
    logs = json.loads((out / "logs.json").read_text())
    del logs["Digits"]["three"]  # three must be run again, and its evaluation reads the bad image
    (out / "logs.json").write_text(json.dumps(logs))
    kept = {k: v for k, v in tree(out).items() if k != "args.txt"}  # args.txt records the new data root
    code, lines, err = cli(train.main, train_argv(gen, out, data_root, "three", "--data_root", str(root),
                                                  "--workers", "1"), capsys)
    assert code == 2 and "Traceback" not in err and "Original" not in err
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read image {bad}: "), err
    assert lines[0].endswith("; see DATASETS.md")
    assert {k: v for k, v in tree(out).items() if k != "args.txt"} == kept


# ---------------------------------------------------------------- bad input: synthetic files
def test_truncated_pt(gen_copy, out, data_root, capsys):
    path = synthetic_path(gen_copy, "Shapes", "red star")
    path.write_bytes(path.read_bytes()[:500])
    code, lines, err = cli(train.main, train_argv(gen_copy, out, data_root), capsys)
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert re.fullmatch(rf"error: synthetic-image file {re.escape(str(path))} is corrupt or not ours: .+; "
                        r"delete it and rerun datagen\.py", lines[0])


def test_pt_of_another_model_and_image_size(gen_copy, out, data_root, capsys):
    """Both found from the file alone: the model is never built."""
    p3, p7 = synthetic_path(gen_copy, "Digits", "three"), synthetic_path(gen_copy, "Shapes", "red star")
    data = read_synthetic(p3)
    data["meta"]["model_key"] = "RN50-openai"
    torch.save(data, p3)
    data = read_synthetic(p7)
    data["images"] = torch.nn.functional.interpolate(data["images"], size=64)
    torch.save(data, p7)
    refused(train.main, train_argv(gen_copy, out, data_root), capsys,
            [f"{p3} was made by model 'RN50-openai', not '{DEMO_KEY}'; rerun datagen.py for this model",
             f"{p7} holds images of shape (3, 64, 64), but the model takes (3, 32, 32); "
             "rerun datagen.py for this model"], out, gen_copy)


def test_empty_synthetic_files(gen_copy, out, data_root, capsys):
    p3, p7 = synthetic_path(gen_copy, "Digits", "three"), synthetic_path(gen_copy, "Shapes", "red star")
    data = read_synthetic(p3)
    data["images"] = data["images"][:0]
    torch.save(data, p3)
    p7.write_bytes(b"")  # an empty file
    code, lines, err = cli(train.main, train_argv(gen_copy, out, data_root), capsys)
    assert code == 2 and "Traceback" not in err, err
    assert lines[0] == f"error: {p3} holds no images; rerun datagen.py (lower --high_prob if no image is accepted)"
    assert len(lines) == 2 and lines[1].startswith(f"error: synthetic-image file {p7} is corrupt or not ours: ")


def test_non_finite_synthetic_images(gen_copy, out, data_root, capsys):
    p = synthetic_path(gen_copy, "Shapes", "red star")
    data = read_synthetic(p)
    data["images"][0, 0, 0, 0] = float("inf")
    torch.save(data, p)
    refused(train.main, train_argv(gen_copy, out, data_root), capsys,
            [f"{p} holds non-finite or non-float pixel values; delete it and rerun datagen.py"], out, gen_copy)


def test_missing_synthetic_file(gen_copy, out, data_root, capsys):
    p = synthetic_path(gen_copy, "Shapes", "red star")
    p.unlink()
    refused(train.main, train_argv(gen_copy, out, data_root), capsys,
            [f"no synthetic images for 1 class(es), e.g. {p}: run datagen.py first (sh datagen.sh ...) "
             "or set --generated_dir"], out, gen_copy)


def test_datagen_refuses_an_existing_file_of_another_model_before_loading(gen_copy, data_root, capsys):
    p = synthetic_path(gen_copy, "Digits", "three")
    data = read_synthetic(p)
    data["meta"]["model_key"] = "RN50-openai"
    torch.save(data, p)
    refused(datagen.main, ["--out_dir", str(gen_copy), "--forget_labels", LABELS, "--data_root", data_root],
            capsys, [f"{p} exists and was made by model 'RN50-openai', not '{DEMO_KEY}': use another --out_dir, "
                     "or --overwrite to replace it"], gen_copy)


# ---------------------------------------------------------------- bad input: output folders
def test_output_folder_not_writable(gen, out, data_root, tmp_path, capsys):
    """As root os.access says yes to everything: a folder below a regular file really cannot be made."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "seed_0"
    refused(train.main, train_argv(gen, target, data_root), capsys,
            [f"output folder {target} cannot be created: {blocker} is a file, not a folder"], out, gen)
    refused(datagen.main, ["--out_dir", str(target), "--data_root", data_root], capsys,
            [f"output folder {target} cannot be created: {blocker} is a file, not a folder"], gen)
    assert blocker.read_text() == "not a folder"
    assert check_writable(tmp_path / "new" / "deeper") == [] and not (tmp_path / "new").exists()


def test_earlier_run_with_other_settings_or_corrupt_logs(gen, out, data_root, capsys):
    refused(train.main, train_argv(gen, out, data_root, LABELS, "--max_epochs", "3"), capsys,
            [f"{out} holds a run with other settings (max_epochs: 30 vs 3); use another --output_dir "
             "(with train.sh: another ATTEMPT number)"], out, gen)
    (out / "logs.json").write_text('{"Digits": {"three"')
    refused(train.main, train_argv(gen, out, data_root), capsys,
            [f"{out / 'logs.json'} is not valid JSON (Expecting ':' delimiter, line 1); move it away to start afresh"], out, gen)


def test_zeroshot_and_results_cli(tmp_path, data_root, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    refused(zeroshot.main, ["--backbone_arch", "ViT-B/61", "--run_ds", "Digits,Foo", "--data_root", data_root,
                            "--out", str(blocker / "z.json"), "--batch_size", "0"], capsys,
            ["--batch_size must be at least 1, got 0",
             "unknown model 'ViT-B/61'; did you mean: ViT-B/16, ViT-B-16, ViT-bigG-14? (open_clip knows "
             f"{len(__import__('open_clip').list_models())} models: see open_clip.list_models())",
             f"unknown dataset 'Foo'; did you mean: Food101? (known: {KNOWN})",
             f"output folder {blocker} cannot be created: {blocker} is a file, not a folder"], tmp_path)
    refused(clip_forget_utils.main, [str(tmp_path / "nope")], capsys,
            [f"run folder {tmp_path / 'nope'} not found"], tmp_path)


# ---------------------------------------------------------------- the real scripts
def test_scripts_exit_2_with_every_problem_in_one_go(gen, out, data_root, tmp_path):
    """The command lines themselves (run in parallel to save time): exit code 2, one line per problem."""
    before, gen_before = tree(out), tree(gen)
    procs = {
        "train": [sys.executable, "train.py", *train_argv(gen, out, data_root, "thre,red star"),
                  "--run_ds", "Digits,Shapes,Cars", "--n_samples", "0", "--min_train_acc_stop", "1.5"],
        "datagen": [sys.executable, "datagen.py", "--out_dir", str(gen), "--data_root", data_root,
                    "--high_prob", "1.5", "--backbone_arch", "RN5O"],
    }
    running = {k: subprocess.Popen(v, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for k, v in procs.items()}
    results = {k: (p.wait(timeout=120), p.stderr.read()) for k, p in running.items()}
    code, err = results["train"]
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines() == [
        "error: --n_samples must be at least 1, got 0",
        "error: --min_train_acc_stop must be in [0, 1), got 1.5",
        f"error: unknown dataset 'Cars'; did you mean: StanfordCars? (known: {KNOWN})",
        "error: unknown class 'thre' in Digits, Shapes; did you mean: three?",
        f"error: {out} holds a run with other settings (n_samples: 5 vs 0, min_train_acc_stop: 0.1 vs 1.5); "
        "use another --output_dir "
             "(with train.sh: another ATTEMPT number)"]
    code, err = results["datagen"]
    assert code == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0] == "error: --high_prob must be in (0, 1), got 1.5"
    assert lines[1].startswith("error: unknown model 'RN5O'; did you mean: RN50")
    assert tree(out) == before and tree(gen) == gen_before


# ---------------------------------------------------------------- failures during a run
def _without_one_class(run: Path, tmp_path: Path, ds: str, cls: str) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    logs = json.loads((out / "logs.json").read_text())
    del logs[ds][cls]
    (out / "logs.json").write_text(json.dumps(logs, indent=1))
    return out


def test_out_of_gpu_memory_gives_advice_and_keeps_finished_classes(run, gen, data_root, tmp_path, capsys,
                                                                   monkeypatch):
    out = _without_one_class(run, tmp_path, "Shapes", "red star")
    logs_before = (out / "logs.json").read_bytes()

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(methods.lipschitz, "unlearn", oom)
    code, lines, err = cli(train.main, train_argv(gen, out, data_root), capsys)
    assert code == 3 and "Traceback" not in err
    assert lines == ["error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB); "
                     "rerun with a smaller --batch_size (finished work is kept)"]
    assert (out / "logs.json").read_bytes() == logs_before


def test_ctrl_c_is_one_line_and_keeps_finished_classes(run, gen, data_root, tmp_path, capsys, monkeypatch):
    out = _without_one_class(run, tmp_path, "Shapes", "red star")
    logs_before = (out / "logs.json").read_bytes()

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(methods.lipschitz, "unlearn", interrupt)
    code, lines, err = cli(train.main, train_argv(gen, out, data_root), capsys)
    assert code == 130 and "Traceback" not in err
    assert lines == ["error: interrupted; finished work is saved: rerun the same command to continue"]
    assert (out / "logs.json").read_bytes() == logs_before


def test_nan_loss_stops_that_class_and_the_run_goes_on(gen, data_root, tmp_path, monkeypatch):
    real, calls = methods.lipschitz.lipschitz_loss, []

    def nan_first(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 1 else loss

    monkeypatch.setattr(methods.lipschitz, "lipschitz_loss", nan_first)
    out = tmp_path / "run"
    logs = train.main(train_argv(gen, out, data_root, "three,red star", "--max_epochs", "2"))
    text = (out / "logs.json").read_text()
    assert "NaN" not in text and _classes(json.loads(text)) == [("Digits", "three"), ("Shapes", "red star")]
    three, star = logs["Digits"]["three"], logs["Shapes"]["red star"]
    assert three["summary"]["status"] == ("error: loss became nan at epoch 0 (std 0.1); "
                                          "this class keeps the original model")
    assert three["summary"]["changed_tensors"] == [] and three["summary"]["acc_syn_before"] == 1.0
    before = json.loads((out / "zeroshot_before.json").read_text())
    assert three["final_results"]["Digits"]["three"]["cls_acc_test"] == before["Digits"]["three"]["cls_acc_test"]
    assert star["summary"]["status"] == "done" and star["summary"]["epochs"] >= 1 and star["summary"]["changed_tensors"]
    assert len(calls) > 1


def test_non_finite_weights_stop_that_class(gen, data_root, tmp_path, monkeypatch):
    """A finite loss can still give inf/NaN weights (e.g. inf gradients): never keep them as 'best'."""
    real_step = torch.optim.Adam.step

    def poison(self, *a, **k):
        out = real_step(self, *a, **k)
        with torch.no_grad():
            next(p for g in self.param_groups for p in g["params"] if p.grad is not None).fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poison)
    logs = train.main(train_argv(gen, tmp_path / "run", data_root, "three", "--max_epochs", "1"))
    summary = logs["Digits"]["three"]["summary"]
    assert summary["status"].startswith("error: weights became non-finite at epoch 0")
    assert summary["changed_tensors"] == []


# ---------------------------------------------------------------- interrupted runs, reproducibility
def _classes(logs: dict) -> list[tuple[str, str]]:
    return [(d, c) for d, cs in logs.items() if d != "settings" for c in cs]


def _without_timing(record: dict) -> dict:
    return {k: ({kk: vv for kk, vv in v.items() if kk != "seconds"} if k == "summary" else v)
            for k, v in record.items()}


def test_killed_run_resumes_without_recomputing_and_matches_an_uninterrupted_run(run, gen, data_root, tmp_path,
                                                                                 capsys):
    out = tmp_path / "seed_0"
    proc = subprocess.Popen([sys.executable, "train.py", *train_argv(gen, out, data_root)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs_path, parsed, deadline = out / "logs.json", 0, time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if logs_path.exists():
                logs = json.loads(logs_path.read_text())  # valid JSON whenever it is there
                parsed += 1
                if len(_classes(logs)) == 1:
                    proc.send_signal(signal.SIGKILL)  # the first class is done: the second has started
                    break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed in its second class"
    first = json.loads(logs_path.read_text())
    assert _classes(first) == [("Digits", "three")] and parsed >= 1
    model_first = (out / "models" / "Digits" / "three.pt").read_bytes()

    capsys.readouterr()
    logs = train.main(train_argv(gen, out, data_root))
    printed = capsys.readouterr().out
    assert f"Digits/three: already in {logs_path}, skipped" in printed
    assert logs["Digits"]["three"] == first["Digits"]["three"]  # not recomputed: even its timing is the same
    assert (out / "models" / "Digits" / "three.pt").read_bytes() == model_first
    # same seed: the same results as the uninterrupted run (three was computed in another process)
    reference = json.loads((run / "logs.json").read_text())
    assert _classes(logs) == _classes(reference) == [("Digits", "three"), ("Shapes", "red star")]
    for d, c in _classes(reference):
        assert _without_timing(logs[d][c]) == _without_timing(reference[d][c]), (d, c)
    for f in ("Digits/three.pt", "Shapes/red star.pt"):
        a = torch.load(out / "models" / f, weights_only=True)["changed"]
        b = torch.load(run / "models" / f, weights_only=True)["changed"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "logs.json"
    atomic_write_json(path, {"Digits": {"three": {}}})

    def half_then_killed(tmp: Path):
        tmp.write_text('{"Digits": {"thr')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic(path, half_then_killed)
    assert json.loads(path.read_text()) == {"Digits": {"three": {}}}
    assert [p.name for p in tmp_path.iterdir()] == ["logs.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_datagen_is_reproducible(gen, data_root, tmp_path):
    again = tmp_path / "again"
    other_seed = tmp_path / "seed1"
    datagen.main(["--out_dir", str(again), "--forget_labels", "three", "--n_generated", str(N_GEN),
                  "--data_root", data_root, "--device", "cpu"])
    datagen.main(["--out_dir", str(other_seed), "--forget_labels", "three", "--n_generated", str(N_GEN),
                  "--data_root", data_root, "--device", "cpu", "--seed", "1"])
    a = read_synthetic(synthetic_path(gen, "Digits", "three"))
    b = read_synthetic(synthetic_path(again, "Digits", "three"))
    for k in ("images", "probs", "steps", "thresholds"):
        assert torch.equal(a[k], b[k]), k
    untimed = [{k: v for k, v in m.items() if k != "seconds"} for m in (a["meta"], b["meta"])]
    assert untimed[0] == untimed[1]
    c = read_synthetic(synthetic_path(other_seed, "Digits", "three"))
    assert not torch.equal(a["images"], c["images"])


# ---------------------------------------------------------------- safe loading
class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_files_with_pickled_code_are_refused_not_run(gen_copy, demo, tmp_path, data_root, capsys):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    path = synthetic_path(gen_copy, "Digits", "three")
    torch.save({"images": torch.zeros(1, 3, 32, 32), "meta": payload}, path)
    with pytest.raises(UserError, match="is corrupt or not ours"):
        read_synthetic(path)
    ckpt = tmp_path / "evil.pt"
    torch.save({"state_dict": payload}, ckpt)
    with pytest.raises(UserError, match=f"cannot load checkpoint {re.escape(str(ckpt))}"):
        load_model("demo", str(ckpt))
    assert not marker.exists()


def test_every_torch_load_is_weights_only_and_nothing_is_pickled():
    sources = [p for p in REPO.glob("*.py")] + list((REPO / "datasets").glob("*.py"))
    calls = [(p.name, m.group(0)) for p in sources for m in re.finditer(r"torch\.load\([^)]*\)", p.read_text())]
    assert calls and all("weights_only=True" in c for _, c in calls), calls
    for p in sources:
        text = p.read_text()
        assert not re.search(r"^\s*import pickle|^\s*from pickle|to_pickle|read_pickle|allow_pickle=True|joblib",
                             text, flags=re.M), p.name


# ----------------------------------------------------------------------------- CUDA: generator devices
def _draws(path: Path) -> list[tuple[int, str, set[str], str]]:
    """(line, function, keywords, generator expression) of every call with generator= in a file."""
    import ast
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            if "generator" in kw:
                out.append((node.lineno, ast.unparse(node.func), set(kw), ast.unparse(kw["generator"])))
    return out


def test_every_draw_from_a_device_generator_names_its_device():
    """train.py hands each method a generator on the run's device (cuda on a GPU); a draw from it without
    device= makes a CPU tensor and PyTorch raises 'Expected a cpu device type for generator' (issue 12).
    So every draw in the code that may get that generator (methods/, synthetic.py) passes device=; the
    only generators made without a device are CPU ones whose draws stay on the CPU (datagen's noise,
    the demo world, the audit's image choice, seeds), each made in the same expression or function."""
    import ast
    from common import REPO
    device_side = [*sorted((REPO / "methods").glob("*.py")), REPO / "synthetic.py"]
    checked = 0
    for path in device_side:
        for line, func, kws, gen in _draws(path):
            if gen.startswith("torch.Generator()"):  # a CPU generator made right there
                continue
            checked += 1
            assert "device" in kws, f"{path.name}:{line}: {func}(generator={gen}) without device="
    assert checked >= 8  # the methods' and the augmentation's draws were found
    # every generator the project makes is either on the CPU or, in train.py and forget.py (the two that hand
    # methods their tasks) only, on the run's device
    for path in REPO.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.Generator" and node.keywords:
                assert path.name in ("train.py", "forget.py"), \
                    f"{path.name}:{node.lineno}: a device generator outside train.py and forget.py"


# ---------------------------------------------------------------- the paper's benchmark as a new user meets it (issue 23)
def _run_script(*argv: str, env: dict | None = None, timeout: int = 120) -> tuple[int, str]:
    p = subprocess.run([sys.executable, *argv], cwd=REPO, env={**ENV, **(env or {})}, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stderr


def test_weights_that_cannot_be_downloaded_are_one_line_with_what_to_do(tmp_path):
    """An offline node: no cached weights, the hub refuses at once (HF_HUB_OFFLINE=1)."""
    code, err = _run_script("zeroshot.py", "--backbone_arch", "RN50", "--run_ds", "Digits",
                            env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: cannot download the 'openai' weights of RN50-quickgelu (no network here?)")
    for advice in (str(tmp_path / "hf" / "hub"), "--pretrained path/to/weights.pt", "HF_HUB_OFFLINE=1",
                   "open_clip.create_model('RN50-quickgelu', pretrained='openai')"):
        assert advice in err


def test_ctrl_c_while_a_script_starts_is_one_line():
    proc = subprocess.Popen([sys.executable, "train.py", "--help"], cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # inside the imports (torch, open_clip)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130 and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_pretrained_values_that_mislead_no_more(demo_run, tmp_path, monkeypatch, capsys):
    readme = "README.md"  # a file that exists, no checkpoint suffix, no '/': a file, not a tag
    monkeypatch.chdir(REPO)
    for value in (readme, f"./{readme}"):
        refused(zeroshot.main, ["--pretrained", value, "--run_ds", "Digits", "--device", "cpu"], capsys,
                [f"cannot load checkpoint {value}: not a PyTorch file (torch.save writes a zip archive)"], tmp_path)
    delta = demo_run[0] / "models" / "Digits" / "three.pt"  # train.py's model file of a demo run
    refused(zeroshot.main, ["--backbone_arch", "RN50", "--pretrained", str(delta), "--run_ds", "Digits",
                            "--device", "cpu"], capsys,
            [f"{delta} was saved for demo, not RN50: pass --backbone_arch demo"], tmp_path)
    other = dict(load_model("demo", "none").model.state_dict())  # a checkpoint of another architecture
    other.pop("logit_scale")
    other["visual.extra.weight"] = torch.zeros(2)
    other["text_projection"] = torch.zeros(3, 3)
    path = tmp_path / "other.pt"
    torch.save(other, path)
    code, lines, err = cli(zeroshot.main, ["--pretrained", str(path), "--run_ds", "Digits", "--device", "cpu"], capsys)
    assert code == 2 and len(lines) == 1, err
    assert re.fullmatch(rf"error: checkpoint {re.escape(str(path))} does not fit this model: \d+ missing key\(s\), "
                        r"e\.g\. \S+; \d+ unexpected key\(s\), e\.g\. \S+; \d+ tensor\(s\) of another shape, "
                        r"e\.g\. \S+: .+", lines[0]), lines[0]
    assert "weights_only" not in err


def test_a_synthetic_set_of_another_class_or_seed(gen_copy, out, data_root, tmp_path, capsys):
    """A file of another dataset's class with the same index is refused; another noise seed is said."""
    three, star = synthetic_path(gen_copy, "Digits", "three"), synthetic_path(gen_copy, "Shapes", "red star")
    data = read_synthetic(star)
    data["meta"]["class_index"] = read_synthetic(three)["meta"]["class_index"]
    torch.save(data, three)
    refused(train.main, train_argv(gen_copy, out, data_root), capsys,
            [f"{three} holds images of Shapes/red star, not Digits/three; rerun datagen.py for this class"],
            out, gen_copy)
    other = tmp_path / "seed1"
    datagen.main(["--out_dir", str(other), "--forget_labels", "three", "--n_generated", "4", "--data_root", data_root,
                  "--device", "cpu", "--noise_seed", "7"])
    capsys.readouterr()
    logs = train.main(train_argv(other, tmp_path / "fresh", data_root, "three", "--max_epochs", "1"))
    assert f"note: {synthetic_path(other, 'Digits', 'three')} was made from noise seed 7; this run's --seed is 0" \
        in capsys.readouterr().out
    used = logs["Digits"]["three"]["summary"]["synthetic"]
    path = synthetic_path(other, "Digits", "three")
    assert used == {"path": str(path), "sha1": hashlib.sha1(path.read_bytes()).hexdigest()[:16], "noise_seed": 7}


def test_datagen_that_accepts_nothing_is_an_error_and_writes_nothing(data_root, tmp_path, capsys):
    argv = ["--out_dir", str(tmp_path / "gen"), "--data_root", data_root, "--device", "cpu", "--forget_labels",
            "three", "--n_generated", "2", "--sub_prob", "0", "--max_steps", "1", "--max_failed", "3"]
    code, lines, err = cli(datagen.main, [*argv, "--high_prob", "0.9999999"], capsys)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: Digits/three: no image accepted (3 attempts of up to 1 steps failed): ")
    assert not (tmp_path / "gen" / "Digits" / "three.pt").exists()
    # random weights give every image one class: the message names it, and the way to a structural check
    code, lines, err = cli(datagen.main, [*argv, "--pretrained", "none"], capsys)
    assert code == 2 and len(lines) == 1, err
    assert re.search(r"the model's top-1 on its last images was '\w+' \(\d of \d\) \(random weights give one class "
                     r"to every image: for a structural check forget that class, or train on real images with "
                     r"train\.py --generated_data 0\)$", lines[0]), lines[0]


def test_datagen_checks_an_existing_file_as_train_does(gen_copy, data_root, capsys):
    p = synthetic_path(gen_copy, "Shapes", "red star")
    data = read_synthetic(p)
    data["images"][0, 0, 0, 0] = float("nan")
    torch.save(data, p)
    refused(datagen.main, ["--out_dir", str(gen_copy), "--forget_labels", LABELS, "--data_root", data_root],
            capsys, [f"{p} exists and holds non-finite or non-float pixel values: use another --out_dir, "
                     "or --overwrite to replace it"], gen_copy)


def test_a_broken_zeroshot_before_is_refused_before_anything_is_written(gen, out, data_root, capsys):
    (out / "zeroshot_before.json").write_text("{")
    refused(train.main, train_argv(gen, out, data_root), capsys,
            [f"{out / 'zeroshot_before.json'} is not valid JSON (Expecting property name enclosed in double quotes, "
             "line 1); move it away to start afresh"], out, gen)


def test_files_where_folders_belong(demo_run, tmp_path, capsys):
    import audit
    import sweep
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(audit.main, [str(a_file)], capsys, [f"{a_file} is a file, not a run folder"], tmp_path)
    refused(zeroshot.main, ["--data_root", str(a_file), "--run_ds", "Digits"], capsys,
            [f"data root {a_file} is a file, not a folder; see DATASETS.md"], tmp_path)
    tiny = REPO / "configs" / "sweeps" / "demo.yaml"
    refused(sweep.main, [str(tiny), "--results", str(a_file)], capsys,
            [f"output folder {a_file} cannot be created: {a_file} is a file, not a folder"], tmp_path)
    refused(sweep.main, [str(tiny), "--results", str(a_file / "below")], capsys,
            [f"output folder {a_file / 'below'} cannot be created: {a_file} is a file, not a folder"], tmp_path)


def test_the_papers_spellings(gen, out, data_root, tmp_path, capsys):
    """sh train.sh ... ViT (and datagen.sh's RN / ViT) name the paper's two backbones; its dataset
    registry names work where the project reads the dataset, and the others say why they are not read."""
    from datasets import dataset_config
    from models import arch_settings, arch_tag, resolve_arch
    assert (resolve_arch("ViT"), resolve_arch("RN")) == ("ViT-B-16-quickgelu", "RN50-quickgelu")
    assert arch_tag("ViT") == "ViT-B-16" and arch_settings("ViT")["k_v"] == 25
    assert dataset_config("DescribableTextures").name == dataset_config("describabletextures").name == "DTD"
    p = subprocess.run(["sh", "train.sh", "1", "1", "0", "1", "25", "0.1", "Digits", "ViT", "--forget_labels",
                        "thre", "--data_root", data_root, "--device", "cpu", "--output_dir", str(tmp_path / "r")],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.splitlines() == ["error: unknown class 'thre' in Digits; did you mean: "
                                                            "three?"], p.stderr  # the model name was taken
    refused(zeroshot.main, ["--run_ds", "DogsImnet,PLANTDOC", "--data_root", data_root], capsys,
            ["DogsImnet is a dataset of the paper's repository that this project does not read: the authors' split "
             "file, which says which images and class names it has, is not public; see DATASETS.md (not supported)",
             "PLANTDOC is a dataset of the paper's repository that this project does not read: its public split "
             "file names images that the public PlantDoc release does not have; see DATASETS.md (not supported)"],
            tmp_path)


def test_help_texts(capsys):
    def options_text(parse) -> str:
        with pytest.raises(SystemExit):
            parse(["--help"])
        return " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]  # unwrapped, past the usage

    def entry(text: str, option: str) -> str:  # the option's help, up to the next option with a metavar
        return re.split(r" (?=--\w+ (?:[A-Z][A-Z_0-9]*|\{[^}]*\}) )", text.split(f"{option} ", 1)[1], maxsplit=1)[0]

    for parse in (train.parse_args, datagen.parse_args):
        text = options_text(parse)
        assert "(default: None)" not in text
        for option in re.findall(r"(--\w+) [A-Z_]+ ", text):
            assert entry(text, option).count("(default:") <= 1, (option, entry(text, option))
    text = options_text(datagen.parse_args)
    for option, default in (("--n_generated", "64"), ("--high_prob", "0.8"), ("--sub_prob", "0.025"),
                            ("--max_steps", "3000"), ("--lr", "25.0")):
        e = entry(text, option)
        assert f"(default: {default})" in e and len(e.split()) > 6, e  # a help text, then the default


def test_yaml_errors_say_where_and_dry_run_says_what_it_skips(tmp_path, capsys):
    import sweep
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbackbones: [demo\ndatasets: [Digits]\n")
    refused(sweep.main, [str(bad), "--results", str(tmp_path)], capsys,
            [f"{bad} is not valid YAML, line 3, column 9: expected ',' or ']', but got ':'"], tmp_path)
    capsys.readouterr()
    sweep.main([str(REPO / "configs" / "sweeps" / "demo.yaml"), "--dry_run", "--results", str(tmp_path)])
    assert "(--dry_run: the datasets and forget classes were not read" in capsys.readouterr().out


def test_every_shipped_sweep_file_passes_its_precheck():
    """Each job's own option checks (train.option_problems, datagen.option_problems) for every backbone:
    a shipped paper.yaml once failed all 72 of its improved jobs at their start."""
    import sweep
    files = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        s = sweep.load_sweep(f, check_data=False)
        assert s.methods and s.backbones, f


def test_the_sweep_precheck_runs_each_jobs_own_validation(tmp_path, capsys):
    import sweep
    import yaml
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "backbones": ["demo", "RN50"], "datasets": ["Digits"], "classes": {"Digits": ["three"]},
        "options": {"train": {"n_samples": 25}},  # an option of the paper's method only
        "datagen": {"base": {"n_generated": 0}},
        "methods": {"paper": {"datagen": "base", "train": {"method": "lipschitz", "max_epochs": -1}},
                    "improved": {"datagen": None, "train": {"method": "improved"}}}}))
    code, lines, err = cli(sweep.main, [str(path), "--dry_run", "--results", str(tmp_path)], capsys)
    assert code == 2, err
    assert lines == [f"error: {path}: datagen setting 'base': --n_generated must be at least 1, got 0",
                     f"error: {path}: method 'improved': --n_samples is not an option of --method improved "
                     "(textspace; its options: --adapt, --betas, --blocks, --eps, --keep_weight, --lora_alpha, --lr, "
                     "--margin, --max_steps, --n_unrelated, --rank, --unrelated_batch)",
                     f"error: {path}: method 'paper': --max_epochs must be at least 1, got -1"]
