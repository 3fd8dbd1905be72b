"""sweep.py (issue 15): a sweep file expands into shared synthetic sets and unlearning runs; shards partition
the jobs; the local executor, submitit's local executor and a killed-then-resumed run give the same report;
a failed job does not stop the others; the SLURM submission is checked from --dry_run.

The end-to-end sweeps are tiny (one demo class, two seeds, a few images and epochs) and run the real
scripts as subprocesses, with one CPU thread so that every run computes the same figures.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

import sweep
from common import REPO, UserError, run_cli
from forget_cls import FORGET_CLASSES

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLASS = FORGET_CLASSES["Digits"][0]
SHAPE = FORGET_CLASSES["Shapes"][0]
# two methods train on the same synthetic set: it must be made once per seed
TINY = {"name": "tiny", "backbones": ["demo"], "datasets": ["Digits", "Shapes"], "classes": {"Digits": [CLASS]},
        "seeds": [0, 1], "options": {"datagen": {"n_generated": 8}, "train": {"max_epochs": 2, "save_best_model": 1}},
        "datagen": {"base": {}}, "methods": {"a": {"datagen": "base", "train": {"n_samples": 2}},
                                              "b": {"datagen": "base", "train": {"n_samples": 3}}}}
REPORT_FILES = ("report.csv", "report_methods.csv", "report.md")


def write_sweep(folder: Path, spec: dict, name: str = "sweep.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cli_lines(argv: list[str], capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(sweep.main, argv)
    return e.value.code, capsys.readouterr().err.splitlines()


def logged_runs(log: Path) -> int:
    """How many times a job was started (run_job writes one '=== <date> on <host>: <command>' line each)."""
    return sum(line.startswith("=== ") and " on " in line for line in log.read_text().splitlines())


def reports(root: Path) -> dict[str, str]:
    return {f: (root / f).read_text() for f in REPORT_FILES}


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory) -> Path:
    return write_sweep(tmp_path_factory.mktemp("sweep_file"), TINY)


@pytest.fixture(scope="session")
def reference(tiny_file, tmp_path_factory) -> tuple[Path, str]:
    """The tiny sweep run uninterrupted from the command line: (its results folder, what it printed)."""
    results = tmp_path_factory.mktemp("reference")
    proc = subprocess.run([sys.executable, "sweep.py", str(tiny_file), "--results", str(results)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results / "tiny", proc.stdout


# ---------------------------------------------------------------- expansion and shards (no job runs)
def test_a_set_method_is_one_run_of_every_class_after_all_their_synthetic_sets(tmp_path):
    spec = {"name": "x", "backbones": ["demo"], "datasets": ["Digits", "Shapes"], "seeds": [0, 1],
            "classes": {"Shapes": ["red star", "blue star"], "Digits": ["three"]}, "datagen": {"s": {}},
            "methods": {"alone": {"datagen": "s"}, "joint": {"datagen": "s", "train": {"protocol": "joint"}},
                        "stream": {"datagen": None, "train": {"method": "improved", "protocol": "sequential"}}}}
    sw = sweep.load_sweep(write_sweep(tmp_path, spec))
    jobs = sweep.expand(sw, tmp_path / "results" / "x")
    train = {(j.name, j.seed): j for j in jobs if j.kind == "train" and j.name != "alone"}
    assert len([j for j in jobs if j.name == "alone"]) == 6 and len(train) == 4  # one set run per seed
    joint = train[("joint", 0)]
    argv = list(joint.argv)
    assert argv[argv.index("--forget_labels") + 1] == "red star,blue star,three"  # the sweep's order
    assert joint.classes == (("Shapes", "red star"), ("Shapes", "blue star"), ("Digits", "three"))
    assert sorted(joint.needs) == sorted(j.id for j in jobs if j.kind == "datagen" and j.seed == 0)
    assert train[("stream", 1)].needs == () and "sequential" in train[("stream", 1)].argv
    # retain sets of every dataset: that synthetic-set job reads every dataset of the sweep
    spec["datagen"]["s"] = {"method": "confident", "retain_per_class": 2, "retain_scope": "all"}
    made = [j for j in sweep.expand(sweep.load_sweep(write_sweep(tmp_path, spec)), tmp_path / "r") if j.kind == "datagen"]
    assert all(list(j.argv)[list(j.argv).index("--run_ds") + 1] == "Digits,Shapes" for j in made)
    # a shard holds a set run with every synthetic set it needs
    for i in (1, 2, 3):
        part = {j.id for j in sweep.shard(jobs, i, 3)}
        assert all(set(j.needs) <= part for j in jobs if j.id in part)


def test_expansion_makes_each_synthetic_set_once_and_shares_it(tmp_path):
    spec = {"name": "x", "backbones": ["demo", "RN50"], "datasets": ["Digits", "Shapes"], "seeds": [0, 1],
            "options": {"train": {"save_best_model": 1}},  # goes to every method
            "datagen": {"s1": {"high_prob": 0.7}, "s2": {"method": "confident"}, "unused": {}},
            "methods": {"m1": {"datagen": "s1"}, "m2": {"datagen": "s1", "train": {"n_samples": 7, "save_best_model": 0}},
                        "m3": {"datagen": "s2", "train": {"method": "improved"}}, "m4": {"datagen": None}}}
    sw = sweep.load_sweep(write_sweep(tmp_path, spec))
    root = tmp_path / "results" / "x"
    jobs = sweep.expand(sw, root)
    classes = [(d, c) for d in ("Digits", "Shapes") for c in FORGET_CLASSES[d]]  # classes: default
    datagen = [j for j in jobs if j.kind == "datagen"]
    train = [j for j in jobs if j.kind == "train"]
    assert len(datagen) == 2 * 2 * len(classes) * 2  # backbones x seeds x classes x settings in use
    assert {j.name for j in datagen} == {"s1", "s2"}
    files = [Path(j.out) / j.dataset / f"{j.classname}.pt" for j in datagen]
    assert len(set(files)) == len(files)  # no synthetic set is made twice
    assert all(Path(j.out) == root / "generated" / j.tag / j.name / f"seed_{j.seed}" for j in datagen)
    assert len(train) == 2 * 2 * len(classes) * 4 and len({j.id for j in jobs}) == len(jobs)
    by_id = {j.id: j for j in jobs}
    for j in train:
        argv = list(j.argv)
        assert Path(j.out) == root / j.tag / j.name / f"seed_{j.seed}"
        assert argv[argv.index("--output_dir") + 1] == j.out
        assert argv[argv.index("--forget_labels") + 1] == j.classname
        assert argv[argv.index("--run_ds") + 1] == "Digits,Shapes"  # evaluated on every dataset
        if j.name == "m4":
            assert j.needs == () and "--generated_dir" not in argv
            continue
        gen = by_id[j.needs[0]]  # the synthetic set of its own backbone, class, seed and setting
        assert (gen.tag, gen.dataset, gen.classname, gen.seed, gen.name) == \
            (j.tag, j.dataset, j.classname, j.seed, sw.methods[j.name].datagen)
        assert argv[argv.index("--generated_dir") + 1] == gen.out
        assert jobs.index(gen) < jobs.index(j)
        assert argv.count("--save_best_model") == 1
        assert argv[argv.index("--save_best_model") + 1] == ("0" if j.name == "m2" else "1")  # the method's wins
    assert {j.tag for j in jobs} == {"demo", "RN50"}
    assert {(j.dataset, j.classname) for j in jobs} == set(classes)


def test_shards_partition_the_jobs_and_share_nothing(tmp_path):
    spec = {**TINY, "classes": "default", "seeds": [0, 1, 2],
            "datagen": {"base": {}, "other": {"high_prob": 0.7}},
            "methods": {**TINY["methods"], "c": {"datagen": "other"}, "d": {"datagen": None}}}
    jobs = sweep.expand(sweep.load_sweep(write_sweep(tmp_path, spec)), tmp_path / "r")
    for n in range(1, 8):
        parts = [sweep.shard(jobs, i, n) for i in range(1, n + 1)]
        ids = [j.id for p in parts for j in p]
        assert sorted(ids) == sorted(j.id for j in jobs)  # every job in exactly one part
        for p in parts:
            own = {j.id for j in p}
            assert all(set(j.needs) <= own for j in p)  # each part makes the synthetic sets it uses
            assert [j for j in jobs if j.id in own] == p  # in the sweep's order
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 3  # a synthetic set and its two methods stay together


def test_bad_sweep_files_are_refused_in_one_go(tmp_path, capsys):
    path = write_sweep(tmp_path, {**TINY, "method": {}, "seeds": [0, 0],
                                  "methods": {"a": {"datagen": "bse"}, "b c": {"datagen": None}}})
    code, lines = run_cli_lines([str(path), "--results", str(tmp_path)], capsys)
    assert code == 2
    assert lines == [f"error: {path}: unknown key 'method'; did you mean: methods? (known: "
                     + ", ".join(sweep.SWEEP_KEYS) + ")",
                     f"error: {path}: seeds must be distinct integers, got [0, 0]",
                     f"error: {path}: method 'a' trains on datagen setting 'bse', which the file does not define; "
                     "did you mean: base? (datagen: base)",
                     f"error: {path}: method name 'b c' must be a folder name (letters, digits, _ . + -)"]
    typo = CLASS[:-1]
    path = write_sweep(tmp_path, {**TINY, "options": {"train": {"seed": 3}}})
    code, lines = run_cli_lines([str(path)], capsys)
    assert code == 2 and lines == [f"error: {path}: options.train: --seed is set by the sweep for every job"]
    path = write_sweep(tmp_path, {**TINY, "datasets": ["Digits", "Shapez"]})
    code, lines = run_cli_lines([str(path)], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {path}: unknown dataset 'Shapez'; did you mean: Shapes? (known: ")
    path = write_sweep(tmp_path, {**TINY, "classes": {"Digits": [typo]}, "datagen": {"base": {"n_generatd": 8}},
                                  "methods": {"a": {"datagen": "base", "train": {"n_smples": 2}}}})
    code, lines = run_cli_lines([str(path), "--results", str(tmp_path)], capsys)
    assert code == 2 and len(lines) == 3, lines
    assert lines[0].startswith(f"error: {path}: unknown class '{typo}' in Digits")
    assert lines[1:] == [f"error: {path}: datagen setting 'base': unrecognized arguments: --n_generatd 8",
                         f"error: {path}: method 'a': unrecognized arguments: --n_smples 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]  # nothing was run or written


def test_shard_option_is_checked(tiny_file, capsys):
    for bad in ("0/3", "4/3", "1-3"):
        code, lines = run_cli_lines([str(tiny_file), "--shard", bad], capsys)
        assert code == 2 and lines == [f"error: --shard must be i/N with 1 <= i <= N, got '{bad}'"]


# ---------------------------------------------------------------- SLURM, without a cluster
def sbatch_blocks(text: str) -> dict[str, dict[str, str]]:
    """{stage: {sbatch option: value}} from the dry run's scripts."""
    blocks, stage = {}, None
    for line in text.splitlines():
        m = re.match(r"# (datagen|train): an array of (\d+) job", line)
        if m:
            stage = m[1]
            blocks[stage] = {"n": m[2]}
        elif stage and line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            blocks[stage][key] = value.strip("'")
    return blocks


def test_slurm_dry_run_shows_both_array_jobs_and_submits_nothing(tmp_path, capsys):
    """The paper's sweep (its data need not be here for a dry run): sbatch parameters from the sweep file,
    overridden by the command line; the unlearning array waits for the synthetic-set array."""
    capsys.readouterr()
    out = sweep.main([str(REPO / "configs" / "sweeps" / "paper.yaml"), "--executor", "slurm", "--dry_run",
                      "--partition", "gpu-a100", "--time", "90", "--mem_gb", "48", "--results", str(tmp_path)])
    printed = capsys.readouterr().out
    blocks = sbatch_blocks(printed)
    paper = yaml.safe_load((REPO / "configs" / "sweeps" / "paper.yaml").read_text())
    n = len(paper["backbones"]) * len(paper["seeds"]) * sum(len(FORGET_CLASSES[d]) for d in paper["datasets"])
    sizes = {"datagen": n, "train": n * len(paper["methods"])}  # one synthetic set per class, shared
    assert set(blocks) == {"datagen", "train"} and len(out["jobs"]) == sum(sizes.values())
    for stage, b in blocks.items():
        k = sizes[stage]
        assert b["n"] == str(k) and b["array"] == f"0-{k - 1}%{sweep.SLURM_DEFAULTS['array_parallelism']}"
        assert (b["partition"], b["time"], b["mem"]) == ("gpu-a100", "90", "48GB")  # command line
        assert (b["gpus-per-node"], b["cpus-per-task"]) == (str(paper["slurm"]["gpus"]), str(paper["slurm"]["cpus"]))
        assert b["job-name"] == f"paper-{stage}" and b["chdir"] == str(REPO)
    assert "dependency" not in blocks["datagen"] and blocks["train"]["dependency"].startswith("afterany:")
    jobs = [line for line in printed.splitlines() if re.match(r"(datagen|train)/", line)]
    assert len(jobs) == sum(sizes.values()) and jobs[0].startswith("datagen/RN50/paper/seed_0/StanfordDogs/")
    assert not any(tmp_path.iterdir())


def test_slurm_without_a_cluster_is_one_clear_line(tiny_file, tmp_path, capsys):
    code, lines = run_cli_lines([str(tiny_file), "--executor", "slurm", "--results", str(tmp_path)], capsys)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("error: no SLURM here (") and "--dry_run shows what would be submitted" in lines[0]


# ---------------------------------------------------------------- running sweeps
def test_local_sweep_runs_end_to_end_and_reports(reference, tiny_file):
    root, printed = reference
    sw = sweep.load_sweep(tiny_file)
    assert "| demo | a | 2 | 1 |" in printed and (root / "report.png").stat().st_size > 0
    for seed in TINY["seeds"]:
        gen_log = root / "_sweep" / "logs" / "datagen" / "demo" / "base" / f"seed_{seed}" / "Digits" / f"{CLASS}.log"
        assert logged_runs(gen_log) == 1  # one synthetic set per seed, used by both methods
        used = {json.loads((root / "demo" / m / f"seed_{seed}" / "args.txt").read_text())["generated_dir"]
                for m in ("a", "b")}
        assert used == {str(root / "generated" / "demo" / "base" / f"seed_{seed}")}
    # the report's figures are create_results' figures of the run folders, averaged over seeds
    from clip_forget_utils import compute_avg_gain, create_results
    methods = __import__("pandas").read_csv(root / "report_methods.csv")
    for m in ("a", "b"):
        rows = [create_results(root / "demo" / m / f"seed_{s}", all_res=True)[0] for s in TINY["seeds"]]
        forget = [r.cls_forget.iloc[0] for r in rows]
        score = [compute_avg_gain(r).iloc[0] for r in rows]
        got = methods[methods.method == m].iloc[0]
        assert got.n_seeds == 2 and got.n_classes == 1
        assert got.forget_mean == pytest.approx(sum(forget) / 2) and got.score_mean == pytest.approx(sum(score) / 2)
        assert got.forget_std == pytest.approx(abs(forget[0] - forget[1]) / 2 ** 0.5)
        assert got.other_mean == pytest.approx(sum(r.res_Shapes.iloc[0] for r in rows) / 2)
    by = sweep.status(sw, root, show=False)
    assert len(by["done"]) == 6 and not any(by[k] for k in ("running", "failed", "to do", "submitted"))


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmd.read_bytes().decode(errors="replace"):
                pids.append(int(cmd.parent.name))
        except OSError:
            pass
    return pids


def sigkill_when(proc: subprocess.Popen, found: Callable[[], list], timeout: float = 600) -> list:
    """SIGKILL `proc` as soon as found() returns something (or after `timeout`); return that."""
    deadline, hits = time.time() + timeout, []
    while proc.poll() is None and time.time() < deadline and not (hits := found()):
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return hits


def test_killed_sweep_resumes_without_redoing_finished_jobs(reference, tiny_file, tmp_path, monkeypatch):
    results = tmp_path / "killed"
    root = results / "tiny"
    proc = subprocess.Popen([sys.executable, "sweep.py", str(tiny_file), "--results", str(results), "--no_report"],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = root / "_sweep" / "state"

    def finished_jobs() -> list[str]:
        return [str(p.relative_to(states))[:-len(".json")] for p in states.rglob("*.json")
                if json.loads(p.read_text()).get("status") == "done"]

    done_at_kill = sigkill_when(proc, finished_jobs)  # the first job is finished, the next one has started
    assert done_at_kill and proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
    if sys.platform == "linux":  # the job it was running died with it (no orphan writes into the folders)
        time.sleep(1)
        assert _processes_mentioning(str(results)) == []
    sw = sweep.load_sweep(tiny_file)
    jobs = {j.id: j for j in sweep.expand(sw, results / "tiny")}
    finished = [i for i in jobs if sweep.is_done(jobs[i])]
    assert set(done_at_kill) <= set(finished) and len(finished) < len(jobs)
    logs_before = {i: jobs[i].log.read_text() for i in finished}

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = sweep.main([str(tiny_file), "--results", str(results)])
    assert not out["failed"] and set(out["outcome"]) == set(jobs) - set(finished)  # only the rest ran
    assert all(v == "done" for v in out["outcome"].values())
    assert {i: jobs[i].log.read_text() for i in finished} == logs_before  # not started again
    assert reports(root) == reports(reference[0])  # the same report as the uninterrupted run


def test_submitit_local_executor_gives_the_same_results(reference, tmp_path, monkeypatch):
    """The SLURM code path (one array per stage through submitit), on submitit's LocalExecutor: seed 0 of
    the tiny sweep gives the uninterrupted run's results."""
    import submitit
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    sw = sweep.load_sweep(write_sweep(tmp_path, {**TINY, "seeds": [0]}))
    sw.slurm["gpus"] = 0
    root = tmp_path / "tiny"
    jobs = sweep.expand(sw, root)
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(timeout_min=20)
    arrays = sweep.submit(executor, sw, jobs, chain=False)
    assert [len(a) for a in arrays] == [1, 2]
    assert [a.result() for a in arrays[1]] == ["done"] * 2  # the datagen array was waited for before
    assert set(sweep.submitted_jobs(root)) == {j.id for j in jobs}
    for m in ("a", "b"):
        ours, theirs = (json.loads((r / "demo" / m / "seed_0" / "logs.json").read_text()) for r in (root, reference[0]))
        assert untimed(ours["Digits"][CLASS]) == untimed(theirs["Digits"][CLASS])


def untimed(record: dict) -> dict:
    """A class's log without what differs between two runs of the same job: the time, and the synthetic
    file's folder and hash (its metadata holds datagen's time; the noise seed stays)."""
    def summary(v: dict) -> dict:
        return {k: ({kk: vv for kk, vv in x.items() if kk not in ("path", "sha1")} if k == "synthetic" else x)
                for k, x in v.items() if k != "seconds"}
    return {k: (summary(v) if k == "summary" else v) for k, v in record.items()}


def test_a_failed_job_does_not_stop_the_others(tmp_path, capsys, monkeypatch):
    """Two jobs at once, each with its GPU; a synthetic set and an unlearning run fail at run time (the
    pre-check passes them: no image reaches the acceptance bar; a held-out set nobody made), the run that
    needs the failed set is not started, the others finish; status names the logs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = {**TINY, "seeds": [0], "options": {**TINY["options"], "train": {"save_best_model": 1}},
            "datagen": {"base": {}, "broken": {"high_prob": 0.9999999, "sub_prob": 0, "max_steps": 1, "max_failed": 2}},
            "methods": {"good": {"datagen": "base", "train": {"max_epochs": 2}},
                        "bad": {"datagen": "base", "train": {"method": "hinge", "stop": "margin", "max_steps": 2}},
                        "orphan": {"datagen": "broken"}}}
    path = write_sweep(tmp_path, spec)
    results = tmp_path / "results"
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        sweep.cli([str(path), "--results", str(results), "--jobs", "2", "--gpus", "5,7"])
    assert e.value.code == 1
    printed = capsys.readouterr().out
    root = results / "tiny"
    sw = sweep.load_sweep(path)
    by = sweep.status(sw, root, show=False)
    assert sorted(j.id.split("/")[2] for j in by["done"]) == ["base", "good"]
    assert sorted(j.id.split("/")[2] for j in by["failed"]) == ["bad", "broken", "orphan"]
    jobs = {j.id.split("/")[2]: j for j in sweep.expand(sw, root)}
    assert sweep._error_line(jobs["broken"].log).startswith(f"error: Digits/{CLASS}: no image accepted (2 attempts ")
    assert sweep._error_line(jobs["bad"].log).startswith("error: no synthetic images for 1 file(s), e.g. ")
    assert "heldout" in sweep._error_line(jobs["bad"].log)
    assert not jobs["orphan"].log.exists()  # never started
    for name in ("base", "broken", "good", "bad"):  # each process saw only the GPU of its slot
        assert re.search(r"^=== .* on .* \(CUDA_VISIBLE_DEVICES=[57]\): python ", jobs[name].log.read_text(), re.M)
    for name in ("broken", "bad"):
        assert f"  {jobs[name].id}: {sweep._error_line(jobs[name].log)}\n    log: {jobs[name].log}" in printed
    assert f"  {jobs['orphan'].id}: its synthetic set ({jobs['broken'].id}) is not made" in printed
    assert "| demo | good | 1 | 1 |" in printed  # the report of what finished
    capsys.readouterr()
    sweep.main(["status", str(root)])
    shown = capsys.readouterr().out
    assert "5 jobs: done 2, failed 3" in shown and f"log: {jobs['bad'].log}" in shown


def test_report_audits_every_run_when_the_sweep_file_asks(reference, tmp_path):
    """audit: {splits: [test, val]} in the sweep file: the report runs audit.py on every run folder
    (audit.json, audit_val.json) and writes the methods compared per split; the audit's name probe on
    the test split is the class's test accuracy that train.py logged."""
    root = tmp_path / "tiny"
    shutil.copytree(reference[0], root)
    sw = sweep.load_sweep(write_sweep(tmp_path, {**TINY, "audit": {"splits": ["test", "val"]}}))
    assert sw.audit == {"splits": ["test", "val"], "oracle": False}
    sweep.report(sw, root)
    assert (root / "compare_demo.md").is_file() and (root / "compare_val_demo.md").is_file()
    assert "compare_demo.md, compare_val_demo.md" in (root / "report.md").read_text()
    for m in ("a", "b"):
        for s in TINY["seeds"]:
            run = root / "demo" / m / f"seed_{s}"
            logged = json.loads((run / "logs.json").read_text())["Digits"][CLASS]["final_results"]
            audited = json.loads((run / "audit.json").read_text())["Digits"][CLASS]
            assert audited["unlearned"]["name"] == pytest.approx(logged["Digits"][CLASS]["cls_acc_test"], abs=1e-6)
            assert CLASS in json.loads((run / "audit_val.json").read_text())["Digits"]
    assert "| a |" in (root / "compare_val_demo.md").read_text()
    bad = write_sweep(tmp_path, {**TINY, "audit": {"split": ["val"]}}, "bad.yaml")
    with pytest.raises(UserError, match=r"audit.split: unknown; did you mean: splits\?"):
        sweep.load_sweep(bad)
    unsaved = write_sweep(tmp_path, {**TINY, "options": {}, "audit": {}}, "unsaved.yaml")
    with pytest.raises(UserError, match=r"audit: the audit reads the unlearned models; set options: "):
        sweep.load_sweep(unsaved)
