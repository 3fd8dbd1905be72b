"""sweep: the whole benchmark as one command, here, on several GPUs, on a SLURM cluster or on any scheduler.

A sweep file (configs/sweeps/*.yaml) names backbones, datasets, forget classes, seeds, the synthetic-set
settings (datagen.py options) and the methods (train.py options, and the synthetic set each trains on, or
none). It expands into jobs: one synthetic set per (backbone, class, datagen setting, seed), made once and
shared by every method that trains on it, then one unlearning run per (backbone, class, method, seed).

    python sweep.py configs/sweeps/demo.yaml                    # every job here, one after another; then the report
    python sweep.py configs/sweeps/paper.yaml --jobs 4          # four at once, one GPU each
    python sweep.py configs/sweeps/paper.yaml --executor slurm --partition gpu --time 240 [--dry_run]
    python sweep.py configs/sweeps/paper.yaml --shard 2/8       # the 2nd of 8 self-contained parts (any scheduler)
    python sweep.py status configs/sweeps/paper.yaml            # done / running / failed / to do
    python sweep.py report configs/sweeps/paper.yaml            # mean ± std over seeds: tables and a plot

Everything goes under <results>/<name>/ (default results/<name>/):
    generated/<backbone>/<setting>/seed_<s>/<dataset>/<class>.pt   synthetic sets (datagen.py --out_dir)
    <backbone>/<method>/seed_<s>/                                  run folders in train.py's layout
    _sweep/logs/<job>.log, _sweep/state/<job>.json                 one log and one state file per job
    sweep.yaml, report.csv, report_methods.csv, report.md, report.png
A rerun skips finished jobs: an unlearning job is finished when its class has final_results in the run
folder's logs.json, a synthetic set when datagen.py ended well and its file is there.
"""
from __future__ import annotations

import interrupts  # noqa: F401  (first: Ctrl-C during the imports below is one line)

import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from common import ArgumentParser, REPO, UserError, _atomic, atomic_write_json, atomic_write_text, check_all, \
    check_writable, close_names, default_data_root, run_cli
from runs import RunFolder
from synthetic import safe_name, synthetic_path

if TYPE_CHECKING:
    import pandas as pd

STAGES = ("datagen", "train")  # synthetic sets first, then the unlearning runs that need them
SCRIPTS = {"datagen": "datagen.py", "train": "train.py"}
SWEEP_KEYS = ("name", "backbones", "datasets", "classes", "seeds", "options", "datagen", "methods", "audit", "slurm")
AUDIT_KEYS = ("splits", "oracle")  # the sweep file's audit: {splits: [test, val], oracle: true}
OPTION_GROUPS = ("all", "datagen", "train")  # options.all goes to both scripts
# options the sweep sets itself on every job (identity and folders)
OWNED = ("backbone_arch", "run_ds", "forget_labels", "seed", "out_dir", "output_dir", "generated_dir")
SLURM_DEFAULTS = {"partition": None, "time": 120, "gpus": 1, "mem_gb": 32, "cpus": 8, "array_parallelism": 64,
                  "account": None, "qos": None, "constraint": None, "additional": {}}  # time in minutes
SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")  # method and setting names become folder names
STATE_DIR, LOG_DIR = "_sweep/state", "_sweep/logs"
# A job's process dies with the process that started it (Linux prctl PR_SET_PDEATHSIG), so a sweep killed
# with SIGKILL leaves no orphan writing into its folders while the rerun redoes that job.
CHILD = ("import ctypes, os, runpy, signal, sys\n"
         "try:\n    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\nexcept (OSError, AttributeError):\n    pass\n"
         "if os.getppid() != int(sys.argv[1]):\n    sys.exit(137)\n"
         "sys.argv = sys.argv[2:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n")


# ----------------------------------------------------------------------------- the sweep file
@dataclass
class Method:
    datagen: str | None  # the synthetic-set setting it trains on; None: needs no synthetic images
    train: dict  # train.py options


@dataclass
class Sweep:
    name: str
    file: Path
    backbones: list[str]
    tags: list[str]  # folder names of the backbones ('ViT-B/16' -> 'ViT-B-16')
    datasets: list[str]
    classes: list[tuple[str, str]]  # (dataset, class)
    seeds: list[int]
    options: dict[str, dict]  # all / datagen / train
    datagen: dict[str, dict]  # setting -> datagen.py options
    methods: dict[str, Method]
    slurm: dict  # sbatch settings (SLURM_DEFAULTS, the file's 'slurm', the command line)
    audit: dict | None = None  # the report audits every run folder first (audit.py): {splits, oracle}


def option_args(options: dict) -> list[str]:
    """{'n_samples': 25, 'overwrite': True, 'x': None} -> ['--n_samples', '25', '--overwrite']."""
    out = []
    for key, value in options.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not None and value is not False:
            out += [f"--{key}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return out


def load_sweep(path: str | Path, check_data: bool = True) -> Sweep:
    """Read and check a sweep file; every problem is reported at once, before any job starts.

    Option names and values are checked by datagen.py's and train.py's own parsers and option checks, for
    every backbone; with check_data, the datasets are read and the forget classes looked up in them
    (--dry_run skips this: no data needed, and it says so).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file {path} not found (see configs/sweeps/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', None) or str(e).splitlines()[0]}") \
            from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a sweep file is a mapping of {', '.join(SWEEP_KEYS)}")
    problems = [f"unknown key '{k}'{close_names(k, SWEEP_KEYS)} (known: {', '.join(SWEEP_KEYS)})"
                for k in raw if k not in SWEEP_KEYS]
    problems += [f"'{k}' is missing" for k in ("backbones", "datasets", "methods") if not raw.get(k)]
    name = str(raw.get("name") or path.stem)
    backbones = [str(b) for b in _as_list(raw.get("backbones"))]
    datasets = [str(d) for d in _as_list(raw.get("datasets"))]
    seeds = _as_list(raw.get("seeds", [0]))
    if not all(isinstance(s, int) for s in seeds) or len(set(seeds)) < len(seeds):
        problems.append(f"seeds must be distinct integers, got {seeds}")
    options = raw.get("options") or {}
    problems += [f"options.{g}: unknown group{close_names(g, OPTION_GROUPS)} (known: {', '.join(OPTION_GROUPS)})"
                 for g in options if g not in OPTION_GROUPS]
    options = {g: dict(options.get(g) or {}) for g in OPTION_GROUPS}
    settings = {str(k): dict(v or {}) for k, v in (raw.get("datagen") or {}).items()}
    methods = {}
    for m, spec in (raw.get("methods") or {}).items():
        spec = spec or {}
        extra = [k for k in spec if k not in ("datagen", "train")]
        if extra:
            problems.append(f"method '{m}': unknown key(s) {', '.join(map(str, extra))} (known: datagen, train)")
        if spec.get("datagen") is not None and spec["datagen"] not in settings:
            problems.append(f"method '{m}' trains on datagen setting '{spec['datagen']}', which the file does not "
                            f"define{close_names(str(spec['datagen']), settings)} "
                            f"(datagen: {', '.join(settings) or 'none'})")
        methods[str(m)] = Method(spec.get("datagen"), dict(spec.get("train") or {}))
    for kind, names in (("method", methods), ("datagen setting", settings)):
        problems += [f"{kind} name '{n}' must be a folder name (letters, digits, _ . + -)"
                     for n in names if not SAFE_NAME.match(n)]
    for where, opts in [*((f"options.{g}", o) for g, o in options.items()),
                        *((f"datagen.{s}", o) for s, o in settings.items()),
                        *((f"methods.{m}.train", o.train) for m, o in methods.items())]:
        problems += [f"{where}: --{k} is set by the sweep for every job" for k in opts if k in OWNED]
    audit = raw.get("audit")
    if audit is not None:
        audit = {"splits": ["test"], "oracle": False, **(audit if isinstance(audit, dict) else {})}
        problems += [f"audit.{k}: unknown{close_names(k, AUDIT_KEYS)} (known: {', '.join(AUDIT_KEYS)})"
                     for k in audit if k not in AUDIT_KEYS]
        audit["splits"] = [str(x) for x in _as_list(audit.get("splits"))]
        problems += [f"audit.splits: '{x}' is not test or val" for x in audit["splits"] if x not in ("test", "val")]
        unsaved = [m for m, o in methods.items() if not {**options["all"], **options["train"], **o.train}.get(
            "save_best_model")]
        if unsaved:
            problems.append("audit: the audit reads the unlearned models; set options: {train: {save_best_model: 1}}")
    slurm = raw.get("slurm") or {}
    problems += [f"slurm.{k}: unknown{close_names(k, SLURM_DEFAULTS)} (known: {', '.join(SLURM_DEFAULTS)})"
                 for k in slurm if k not in SLURM_DEFAULTS]
    check_all([f"{path}: {p}" for p in problems])

    tags, model_problems = _backbone_tags(backbones, options["all"].get("pretrained"))
    datasets, classes, class_problems = _classes(raw.get("classes", "default"), datasets,
                                                 options["all"].get("data_root") or default_data_root(), check_data)
    sweep = Sweep(name, path, backbones, tags, datasets, classes, seeds, options, settings, methods,
                  {**SLURM_DEFAULTS, **slurm}, audit)
    check_all([f"{path}: {p}" for p in model_problems + class_problems + _option_problems(sweep)])
    return sweep


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _backbone_tags(backbones: list[str], pretrained: str | None) -> tuple[list[str], list[str]]:
    from models import check_model
    tags, problems = [], []
    for b in backbones:
        tag, found = check_model(b, pretrained)
        tags.append(tag)
        problems += found
    doubles = {t for t in tags if t and tags.count(t) > 1}
    problems += [f"backbones {', '.join(b for b, t in zip(backbones, tags) if t == d)} are the same model ({d})"
                 for d in sorted(doubles)]
    return tags, problems


def _classes(spec: Any, datasets: list[str], data_root: str, check_data: bool) -> tuple[list, list, list[str]]:
    """The datasets' own spellings, the (dataset, class) pairs to forget ('default': forget_cls.py's classes
    of every dataset, or {dataset: [class, ...]}) and the problems found."""
    from datasets import build_datasets, dataset_config
    from forget_cls import FORGET_CLASSES, resolve_targets
    problems, names = [], []
    for d in datasets:
        try:
            names.append(dataset_config(d).name)
        except UserError as e:
            problems.append(str(e))
    if problems:
        return datasets, [], problems
    datasets = names
    if spec == "default":
        pairs = [(d, c) for d in datasets for c in FORGET_CLASSES.get(d, [])]
        problems += [f"no default forget classes for {d} (forget_cls.py): list its classes under 'classes'"
                     for d in datasets if d not in FORGET_CLASSES]
    elif isinstance(spec, dict):
        pairs = [(str(d), str(c)) for d, cs in spec.items() for c in _as_list(cs)]
        problems += [f"classes: dataset '{d}' is not in datasets ({', '.join(datasets)})"
                     for d in spec if d not in datasets]
    else:
        return datasets, [], ["classes: 'default' or a mapping {dataset: [class, ...]}"]
    if len(set(pairs)) < len(pairs):
        problems.append("classes: a class is listed twice")
    if not pairs:
        problems.append("classes: no forget class")
    if check_data and not problems:
        built, data_problems = build_datasets(datasets, data_root)
        problems += data_problems
        for d in built:  # each dataset's classes looked up in that dataset alone
            listed = [c for dd, c in pairs if dd == d]
            problems += resolve_targets({d: built[d]}, ",".join(listed), d)[1] if listed else []
        for d, c in pairs:  # train.py --forget_labels forgets a name in every dataset of --run_ds that has it
            owners = [o for o, ds in built.items() if c in ds.classnames]
            if len(owners) > 1:
                problems.append(f"class '{c}' is in {' and '.join(owners)}: one job would forget it in each")
    return datasets, pairs, problems


def _option_problems(sweep: Sweep) -> list[str]:
    """Every datagen setting and method, for every backbone, through the script's own parser and its
    own option checks (train.option_problems: the method's options and values; datagen.option_problems):
    what a job would refuse at its start, found before any job is submitted. A problem every backbone
    shares is listed once."""
    import datagen
    import train
    checks = [(f"datagen setting '{s}'", datagen.parse_args, lambda a: datagen.option_problems(a),
               _datagen_options(sweep, s)) for s in sweep.datagen]
    checks += [(f"method '{m}'", train.parse_args, lambda a: train.option_problems(a)[2], _train_options(sweep, m))
               for m in sweep.methods]
    problems = []
    for what, parse, check, opts in checks:
        found: dict[str, list[str]] = {}
        for backbone in sweep.backbones:
            try:
                lines = check(parse(["--backbone_arch", backbone, *option_args(opts)]))
            except UserError as e:
                lines = str(e).splitlines()
            for line in lines:
                found.setdefault(line, []).append(backbone)
        problems += [f"{what}{'' if len(b) == len(sweep.backbones) else ' (' + ', '.join(b) + ')'}: {line}"
                     for line, b in found.items()]
    return problems


def _datagen_options(sweep: Sweep, setting: str) -> dict:
    return {**sweep.options["all"], **sweep.options["datagen"], **sweep.datagen[setting]}


def _train_options(sweep: Sweep, method: str) -> dict:
    return {**sweep.options["all"], **sweep.options["train"], **sweep.methods[method].train}


# ----------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    kind: str  # "datagen" or "train"
    name: str  # its datagen setting or method
    tag: str  # backbone folder name
    dataset: str
    classname: str
    seed: int
    argv: tuple[str, ...]  # the script's arguments
    out: str  # datagen: the synthetic-set folder; train: the run folder
    root: str  # the sweep's results folder
    needs: tuple[str, ...] = ()  # ids of the synthetic-set jobs a train job trains on
    classes: tuple[tuple[str, str], ...] = ()  # a set run's (--protocol joint / sequential) classes

    @property
    def id(self) -> str:
        return f"{self.kind}/{self.tag}/{self.name}/seed_{self.seed}/{self.dataset}/{safe_name(self.classname)}"

    @property
    def log(self) -> Path:
        return Path(self.root) / LOG_DIR / f"{self.id}.log"

    @property
    def state_file(self) -> Path:
        return state_path(self.root, self.id)

    def command(self) -> list[str]:
        return ["python", SCRIPTS[self.kind], *self.argv]


def generated_dir(root: Path, tag: str, setting: str, seed: int) -> Path:
    """The synthetic sets of one (backbone, datagen setting, seed): a function of those alone."""
    return root / "generated" / tag / setting / f"seed_{seed}"


def run_folder(root: Path, tag: str, method: str, seed: int) -> Path:
    return root / tag / method / f"seed_{seed}"


SET_PROTOCOLS = ("joint", "sequential")  # a method with one of these in its train options: one run of every class


def expand(sweep: Sweep, root: str | Path) -> list[Job]:
    """Every job of the sweep: per backbone, seed and class, its synthetic sets, then its unlearning runs. A
    method whose train options name --protocol joint or sequential makes one unlearning run per backbone and
    seed of every class of the sweep (in the sweep's order), after all their synthetic sets."""
    root = Path(root).absolute()
    run_ds = ",".join(sweep.datasets)
    set_methods = {n for n, m in sweep.methods.items() if _train_options(sweep, n).get("protocol") in SET_PROTOCOLS}
    jobs = []
    for backbone, tag in zip(sweep.backbones, sweep.tags):
        for seed in sweep.seeds:
            sets: dict[str, list[Job]] = {}  # datagen setting -> its jobs of every class
            for ds, cls in sweep.classes:
                ident = ["--backbone_arch", backbone, "--forget_labels", cls, "--seed", str(seed)]
                made: dict[str, Job] = {}
                for m in sweep.methods.values():
                    if m.datagen is not None and m.datagen not in made:
                        out = generated_dir(root, tag, m.datagen, seed)
                        options = _datagen_options(sweep, m.datagen)
                        # retain sets of every dataset (--retain_scope all) need datagen to read them all
                        reads = run_ds if options.get("retain_scope") == "all" else ds
                        argv = [*ident, "--run_ds", reads, "--out_dir", str(out), *option_args(options)]
                        made[m.datagen] = Job("datagen", m.datagen, tag, ds, cls, seed, tuple(argv), str(out),
                                              str(root))
                        sets.setdefault(m.datagen, []).append(made[m.datagen])
                jobs += made.values()
                for name, m in sweep.methods.items():
                    if name in set_methods:
                        continue
                    gen = made.get(m.datagen)
                    jobs.append(train_job(sweep, root, name, backbone, tag, seed, run_ds, [(ds, cls)],
                                          [gen] if gen else []))
            for name in set_methods:
                jobs.append(train_job(sweep, root, name, backbone, tag, seed, run_ds, list(sweep.classes),
                                      sets.get(sweep.methods[name].datagen, [])))
    return jobs


def train_job(sweep: Sweep, root: Path, method: str, backbone: str, tag: str, seed: int, run_ds: str,
              classes: list[tuple[str, str]], made: list[Job]) -> Job:
    """The unlearning run of `method` on `classes` (one, or a set run's), on the synthetic sets `made`."""
    out = run_folder(root, tag, method, seed)
    labels = ",".join(dict.fromkeys(c for _, c in classes))
    argv = ["--backbone_arch", backbone, "--forget_labels", labels, "--seed", str(seed), "--run_ds", run_ds,
            "--output_dir", str(out), *(["--generated_dir", made[0].out] if made else []),
            *option_args(_train_options(sweep, method))]
    ds, cls = classes[0] if len(classes) == 1 else ("set", _train_options(sweep, method)["protocol"])
    return Job("train", method, tag, ds, cls, seed, tuple(argv), str(out), str(root), tuple(j.id for j in made),
               tuple(classes) if len(classes) > 1 else ())


def shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Part `index` (1-based) of `count`: a synthetic-set job and the unlearning jobs that train on it always
    fall in the same part, so no part waits for another: the parts can run at once, in any order. Groups go,
    in order, to the part with the fewest jobs so far."""
    head: dict[str, str] = {}  # a job id -> its group's first job: a set run joins its synthetic sets' groups

    def find(i: str) -> str:
        while head.get(i, i) != i:
            i = head[i]
        return i
    for job in jobs:
        for need in job.needs[1:]:
            head[find(need)] = find(job.needs[0])
    key = {j.id: find(j.needs[0] if j.needs else j.id) for j in jobs}
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(key[job.id], []).append(job)
    sizes, part_of = [0] * count, {}
    for k, group in groups.items():
        part = sizes.index(min(sizes))
        sizes[part] += len(group)
        part_of[k] = part
    return [j for j in jobs if part_of[key[j.id]] == index - 1]


# ----------------------------------------------------------------------------- job state
def state_path(root: str | Path, job_id: str) -> Path:
    return Path(root) / STATE_DIR / f"{job_id}.json"


def read_state(job: Job) -> dict:
    return read_state_by_id(job.root, job.id)


def read_state_by_id(root: str | Path, job_id: str) -> dict:
    try:
        return json.loads(state_path(root, job_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_state(job: Job, **state: Any) -> None:
    atomic_write_json(job.state_file, {"job": job.id, **state})


def finished_classes(folder: str | Path) -> frozenset:
    """(dataset, class) pairs with final_results in a run folder's logs.json (read once per change)."""
    return frozenset(RunFolder(folder).finished())


def outputs_exist(job: Job) -> bool:
    if job.kind == "train":
        return set(job.classes or [(job.dataset, job.classname)]) <= finished_classes(job.out)
    return synthetic_path(job.out, job.dataset, job.classname).is_file()


def is_done(job: Job) -> bool:
    """A train job: its class is in logs.json. A datagen job: it ended well (datagen.py --method confident
    writes several sets, the forget set first) and its synthetic file is there."""
    return outputs_exist(job) and (job.kind == "train" or read_state(job).get("status") == "done")


def job_status(job: Job, submitted: dict) -> str:
    """done, running, failed, submitted (to a scheduler, not started yet) or to do (a job whose process
    is gone is to do again)."""
    if is_done(job):
        return "done"
    state = read_state(job)
    status = state.get("status")
    if status == "running" and state.get("host") == socket.gethostname() and not _alive(state.get("pid")):
        return "to do"
    if status in ("running", "failed"):
        return status
    return "submitted" if job.id in submitted else "to do"


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _error_line(log: Path) -> str:
    """The last 'error: ...' line of a log (the scripts' one-line errors), else its last line."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


# ----------------------------------------------------------------------------- running one job
def run_job(job: Job, env: dict[str, str] | None = None) -> str:
    """Run one job in its own process, appending its output to its log: 'done', 'skipped' (finished
    before) or 'failed' (the reason and the log in its state file). Both executors call this."""
    if is_done(job):
        return "skipped"
    missing = [n for n in job.needs if read_state_by_id(job.root, n).get("status") != "done"]
    if missing:
        dep_log = Path(job.root) / LOG_DIR / f"{missing[0]}.log"
        write_state(job, status="failed", log=str(job.log),
                    error=f"its synthetic set ({missing[0]}) is not made: see {dep_log}")
        return "failed"
    start = time.time()
    write_state(job, status="running", host=socket.gethostname(), pid=os.getpid(), started=_now())
    job.log.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("TQDM_MININTERVAL", "5")  # progress bars in a log file: a line every 5 s is enough
    child_env["PYTHONUNBUFFERED"] = "1"
    with open(job.log, "a") as log:
        gpu = f" (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']})" if env and "CUDA_VISIBLE_DEVICES" in env else ""
        log.write(f"=== {_now()} on {socket.gethostname()}{gpu}: {shlex.join(job.command())}\n")
        log.flush()
        rc = subprocess.call([sys.executable, "-c", CHILD, str(os.getpid()), SCRIPTS[job.kind], *job.argv],
                             cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        log.write(f"=== exit {rc} after {time.time() - start:.1f} s\n")
    seconds = round(time.time() - start, 1)
    if rc in (130, -2):  # Ctrl-C: not a failure, the job is to do again
        job.state_file.unlink(missing_ok=True)
        return "interrupted"
    if rc == 0 and outputs_exist(job):
        write_state(job, status="done", seconds=seconds, finished=_now())
        return "done"
    why = (f"killed by signal {-rc}" if rc < 0 else _error_line(job.log) if rc
           else f"exit 0, but its result is missing from {job.out}")
    write_state(job, status="failed", rc=rc, seconds=seconds, log=str(job.log), error=why)
    return "failed"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class JobFailed(Exception):
    pass


def run_submitted(job: Job) -> str:
    """The function a submitit job runs: run_job, raising on failure so the scheduler marks the task failed."""
    result = run_job(job)
    if result == "failed":
        raise JobFailed(f"{job.id}: {read_state(job).get('error', '')} (log: {job.log})")
    return result


# ----------------------------------------------------------------------------- executors
def run_local(jobs: list[Job], n_parallel: int = 1, gpus: list[str] | None = None,
              total: int | None = None) -> dict[str, str]:
    """Run jobs here, `n_parallel` at once (each on its own GPU from `gpus`), a job only once the synthetic
    set it needs is made; a failed job does not stop the others. Returns {job id: outcome}."""
    from tqdm import tqdm
    outcome: dict[str, str] = {}
    pending = [j for j in jobs if not is_done(j)]
    todo_ids = {j.id for j in pending}
    slots = list(range(n_parallel))
    running: dict = {}
    done_before = (total or len(jobs)) - len(pending)
    bar = tqdm(total=total or len(jobs), initial=done_before, desc="sweep", unit="job", dynamic_ncols=True)

    def waiting(job: Job) -> bool:
        """Its synthetic set is still to be made in this run (run_job refuses it if that failed)."""
        return any(n in todo_ids and n not in outcome for n in job.needs)

    pool = ThreadPoolExecutor(max_workers=n_parallel)
    try:
        while pending or running:
            for job in [j for j in pending if not waiting(j)][:len(slots)]:
                pending.remove(job)
                slot = slots.pop(0)
                env = {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else None
                running[pool.submit(run_job, job, env)] = (job, slot)
            bar.set_postfix(running=len(running), failed=sum(v == "failed" for v in outcome.values()), refresh=True)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job, slot = running.pop(future)
                slots.append(slot)
                outcome[job.id] = future.result()
                if outcome[job.id] == "interrupted":
                    raise KeyboardInterrupt
                if outcome[job.id] == "failed":
                    _report_failure(job, bar)
                bar.update()
    finally:
        pool.shutdown(wait=True)  # on Ctrl-C the jobs got the signal too and end on their own
        bar.close()
    return outcome


def _report_failure(job: Job, bar) -> None:
    state = read_state(job)
    bar.write(f"failed: {job.id}: {state.get('error', '')}\n  log: {state.get('log', job.log)}")


def slurm_parameters(sweep: Sweep, stage: str) -> dict:
    """sbatch parameters of one stage's array job, in submitit's SlurmExecutor names."""
    s = sweep.slurm
    params = {"job_name": f"{sweep.name}-{stage}", "partition": s["partition"], "time": int(s["time"]),
              "gpus_per_node": s["gpus"], "mem": f"{s['mem_gb']}GB", "cpus_per_task": s["cpus"],
              "array_parallelism": s["array_parallelism"], "account": s["account"], "qos": s["qos"],
              "constraint": s["constraint"],
              # the jobs import this file: run them from the repository, wherever sbatch was called
              "additional_parameters": {"chdir": str(REPO), **(s["additional"] or {})}}
    return {k: v for k, v in params.items() if v is not None}


def stages(jobs: list[Job]) -> list[tuple[str, list[Job]]]:
    return [(stage, [j for j in jobs if j.kind == stage]) for stage in STAGES]


def submit(executor, sweep: Sweep, jobs: list[Job], chain: bool) -> list[list]:
    """One array job per stage through a submitit executor. chain: the unlearning array waits for the
    synthetic-set array (SLURM afterany: a failed synthetic set fails only the jobs that need it, fast);
    otherwise (executors without dependencies) the first stage is waited for here."""
    submitted = []
    for stage, group in stages(jobs):
        if not group:
            continue
        if submitted and chain:
            executor.update_parameters(dependency=f"afterany:{submitted[-1][0].job_id.split('_')[0]}")
        elif submitted:
            for j in submitted[-1]:
                j.wait()
        executor.update_parameters(**slurm_parameters(sweep, stage))
        array = executor.map_array(run_submitted, group)
        record_submitted(group, [a.job_id for a in array])
        submitted.append(array)
    return submitted


def record_submitted(jobs: list[Job], scheduler_ids: list[str]) -> None:
    """Remember which scheduler task runs which job (a separate file: a task may start, and write its
    own state, before this returns)."""
    if not jobs:
        return
    path = Path(jobs[0].root) / "_sweep" / "submitted.json"
    known = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_json(path, {**known, **{j.id: {"scheduler_id": i, "submitted": _now()}
                                         for j, i in zip(jobs, scheduler_ids)}})


def submitted_jobs(root: Path) -> dict:
    path = root / "_sweep" / "submitted.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def dry_run_slurm(sweep: Sweep, jobs: list[Job], folder: Path) -> str:
    """The sbatch scripts submitit would write for the two array jobs, and the job list."""
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes, without a cluster
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    text = [f"would submit through submitit (folder {folder}):"]
    previous = False
    for stage, group in stages(jobs):
        if not group:
            continue
        params = slurm_parameters(sweep, stage)
        if previous:
            params["dependency"] = "afterany:DATAGEN_ARRAY_ID"
        text += [f"\n# {stage}: an array of {len(group)} job(s)",
                 _make_sbatch_string(command=command, folder=folder, map_count=len(group), **params).rstrip()]
        previous = True
    return "\n".join(text + ["\n# jobs"] + _job_lines(jobs))


def _job_lines(jobs: list[Job]) -> list[str]:
    return [f"{j.id}: {shlex.join(j.command())}" for j in jobs]


# ----------------------------------------------------------------------------- status
STATUSES = ("done", "running", "submitted", "failed", "to do")


def status(sweep: Sweep, root: Path, show: bool = True) -> dict[str, list[Job]]:
    """Jobs by status: done, running, submitted, failed, to do."""
    jobs, submitted = expand(sweep, root), submitted_jobs(root)
    of = {j.id: job_status(j, submitted) for j in jobs}
    by = {k: [j for j in jobs if of[j.id] == k] for k in STATUSES}
    if show:
        def counts(group: list[Job]) -> str:
            n = Counter(of[j.id] for j in group)
            return ", ".join(f"{k} {n[k]}" for k in STATUSES if n[k])
        print(f"sweep {sweep.name} ({root}): {len(jobs)} jobs: {counts(jobs)}")
        for stage, group in stages(jobs):
            print(f"  {stage}: {len(group)}: {counts(group) or '-'}")
        for job in by["running"]:
            st = read_state(job)
            print(f"running: {job.id} (on {st.get('host')}, pid {st.get('pid')}, since {st.get('started')})")
        for job in by["failed"]:
            st = read_state(job)
            print(f"failed: {job.id}: {st.get('error', '')}\n  log: {st.get('log', job.log)}")
    return by


# ----------------------------------------------------------------------------- report
SUMMARY = ["forget_before", "forget", "rest_before", "rest", "other_before", "other", "score"]


def collect(sweep: Sweep, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per class: mean and std over seeds of every column, from aggregate_seeds; per method: the class
    means of each seed, then mean and std over seeds). Only the sweep's classes, only finished runs."""
    import pandas as pd

    from clip_forget_utils import SET_ROW, aggregate_seeds, class_means, compute_avg_gain, create_results, \
        other_datasets
    wanted = pd.MultiIndex.from_tuples(sweep.classes, names=["ds", "name"])
    per_class, per_seed = [], []
    for tag in sweep.tags:
        for method in sweep.methods:
            folders = {s: f for s in sweep.seeds if finished_classes(f := run_folder(root, tag, method, s))}
            if not folders:
                continue
            agg = aggregate_seeds(list(folders.values()), gen_data=True, all_res=True)
            # the sweep's classes, and a set run's summary rows (clip_forget_utils.set_row: the set score)
            agg = agg[agg.set_index(["ds", "name"]).index.isin(wanted) | (agg.ds == SET_ROW)]
            per_class.append(agg.assign(backbone=tag, method=method))
            for seed, folder in folders.items():
                df, _ = create_results(folder, gen_data=True, all_res=True)
                df = df[df.set_index(["ds", "name"]).index.isin(wanted)]
                others = other_datasets(df)
                per_seed.append(pd.DataFrame({
                    "backbone": tag, "method": method, "seed": seed, "name": df["name"],
                    "forget_before": df.cls_Noforget, "forget": df.cls_forget,
                    "rest_before": df.full_Noforget, "rest": df.full_forget,
                    "other_before": df[[f"full_{d}" for d in others]].mean(axis=1),  # NaN for its own dataset
                    "other": df[[f"res_{d}" for d in others]].mean(axis=1),
                    "score": compute_avg_gain(df)}))
    if not per_class:
        raise UserError(f"no finished unlearning run under {root} yet: run the sweep first")
    classes = pd.concat(per_class, ignore_index=True)
    classes = classes[["backbone", "method"] + [c for c in classes.columns if c not in ("backbone", "method")]]
    methods = class_means(pd.concat(per_seed, ignore_index=True), SUMMARY, keys=["backbone", "method"])
    return classes, methods


def audit_runs(sweep: Sweep, root: Path) -> list[str]:
    """With the sweep file's `audit`: the audit of every run folder with a finished class, for each split
    (resumable: classes already audited are skipped), then the methods compared (compare[_val]_<backbone>.md,
    with the audit's columns and, with the oracle, the retrained model as one more row). Returns the
    comparison files written."""
    import audit
    from clip_forget_utils import compare
    from common import default_device
    written = []
    for tag in sweep.tags:
        methods_done = [m for m in sweep.methods if any(finished_classes(run_folder(root, tag, m, s))
                                                        for s in sweep.seeds)]
        folders = [run_folder(root, tag, m, s) for m in methods_done for s in sweep.seeds
                   if finished_classes(run_folder(root, tag, m, s))]
        if not folders:
            continue
        runs, problems = audit.read_runs(folders, sweep.audit["oracle"])
        check_all(problems)
        for split in sweep.audit["splits"]:
            audit.audit_folders(runs, audit.AuditConfig(split=split), default_device(), oracle=sweep.audit["oracle"])
            out = root / (f"compare_{tag}" if split == "test" else f"compare_{split}_{tag}")
            compare([run_folder(root, tag, m, 0).parent for m in methods_done], out, split, gen_data=True,
                    all_res=True)
            written.append(out.with_suffix(".md").name)
    return written


def report(sweep: Sweep, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write report.csv (per class), report_methods.csv, report.md and report.png next to the results
    (and, with the sweep file's `audit`, the audit of every run and the methods compared)."""
    from clip_forget_utils import mean_std_markdown
    compared = audit_runs(sweep, root) if sweep.audit else []
    classes, methods = collect(sweep, root)
    train_jobs = expand_train(sweep, root)
    n_runs, n_done = len(train_jobs), sum(is_done(j) for j in train_jobs)
    table = mean_std_markdown(methods, SUMMARY, keys=["backbone", "method", "n_seeds", "n_classes"])
    class_table = mean_std_markdown(classes, ["cls_Noforget", "cls_forget", "full_Noforget", "full_forget", "score"],
                                    keys=["backbone", "method", "ds", "name", "n_seeds"])
    text = (f"# Sweep {sweep.name}\n\n{n_done} of {n_runs} unlearning runs finished. Mean ± std over seeds of "
            "the mean over classes: forget = the forget class's test accuracy, rest = the other classes of its "
            "dataset, other = the other datasets (each: before -> after unlearning); score: the paper's "
            "(lower is better); rows of ds 'set': a set run's request (--protocol joint / sequential), its "
            "classes' mean accuracy and the set score (docs/handover.md).\n\n" + table +
            "\n## Per class (mean ± std over seeds)\n\n" + class_table
            + (f"\nThe forgetting audit of every run, per class and method: {', '.join(compared)}.\n"
               if compared else ""))
    atomic_write_text(root / "report.md", text)
    _atomic(root / "report.csv", lambda p: classes.to_csv(p, index=False))
    _atomic(root / "report_methods.csv", lambda p: methods.to_csv(p, index=False))
    plot(methods, root / "report.png")
    print(text.split("\n## Per class")[0].rstrip())
    print(f"\nwrote {root / 'report.md'}, report.csv, report_methods.csv, report.png")
    return classes, methods


def expand_train(sweep: Sweep, root: Path) -> list[Job]:
    return [j for j in expand(sweep, root) if j.kind == "train"]


def plot(methods: pd.DataFrame, path: Path) -> None:
    """Bars per method (± std over seeds), one row per backbone: forget, rest, other accuracy and the score;
    the dashed line is the accuracy before unlearning."""
    import numpy as np
    from matplotlib.figure import Figure
    panels = [("forget", "forget-class accuracy (lower: forgotten)"), ("rest", "rest of its dataset"),
              ("other", "other datasets"), ("score", "paper's score (lower is better)")]
    backbones = list(dict.fromkeys(methods.backbone))
    fig = Figure(figsize=(4 * len(panels), 0.6 + 3.2 * len(backbones)), layout="constrained")
    axes = fig.subplots(len(backbones), len(panels), squeeze=False)
    for row, backbone in zip(axes, backbones):
        m = methods[methods.backbone == backbone]
        x = np.arange(len(m))
        for ax, (col, title) in zip(row, panels):
            bars = ax.bar(x, m[f"{col}_mean"].fillna(0), yerr=m[f"{col}_std"].fillna(0), capsize=3, color="#d9712b")
            ax.bar_label(bars, [f"{v:.3f}" for v in m[f"{col}_mean"]], fontsize=7, padding=2)
            if f"{col}_before_mean" in m:
                ax.axhline(m[f"{col}_before_mean"].mean(), ls="--", c="grey", lw=1, label="before")
                ax.legend(fontsize=7)
            ax.set_xticks(x, m.method, fontsize=8, rotation=20)
            if col != "score":
                ax.set_ylim(0, 1.05)
            ax.set_title(f"{backbone}: {title}", fontsize=9)
    _atomic(path, lambda p: fig.savefig(p, format="png", dpi=100))


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[1] + "\n\n" +
                                __doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="{run,status,report}")
    run = sub.add_parser("run", help="run or submit the jobs still to do (the default: 'sweep.py SWEEP ...')")
    for name, help_ in (("status", "done / running / failed / to do, with the logs of failed jobs"),
                        ("report", "mean ± std over seeds: report.md, report.csv, report.png")):
        sub.add_parser(name, help=help_).add_argument(
            "sweep", help="a sweep file, or its results folder (which holds a copy of it)")
    run.add_argument("sweep", help="a sweep file, e.g. configs/sweeps/demo.yaml")
    for q in [run] + [sub.choices[n] for n in ("status", "report")]:
        q.add_argument("--results", default="results", help="results go to RESULTS/<sweep name>/ (default: results)")
    run.add_argument("--executor", choices=("local", "slurm"), default="local", help="(default: local)")
    run.add_argument("--jobs", type=int, default=1, help="local: jobs at once, each with its own GPU (default: 1)")
    run.add_argument("--gpus", default=None,
                     help="local: GPUs to share out, e.g. 0,1,2,3 (default with --jobs > 1: $CUDA_VISIBLE_DEVICES, "
                          "else 0..JOBS-1)")
    run.add_argument("--shard", default=None, help="i/N: run only part i (1..N) of N self-contained parts")
    run.add_argument("--dry_run", action="store_true", help="print what would run or be submitted; run nothing")
    run.add_argument("--no_report", action="store_true", help="local: do not print the report at the end")
    g = run.add_argument_group("slurm (default: the sweep file's 'slurm' section, else the value shown)")
    g.add_argument("--partition", default=None, help="(default: the cluster's)")
    g.add_argument("--time", type=int, default=None, help=f"minutes per job ({SLURM_DEFAULTS['time']})")
    g.add_argument("--gpus_per_job", type=int, default=None, help=f"({SLURM_DEFAULTS['gpus']})")
    g.add_argument("--mem_gb", type=int, default=None, help=f"({SLURM_DEFAULTS['mem_gb']})")
    g.add_argument("--cpus_per_job", type=int, default=None, help=f"({SLURM_DEFAULTS['cpus']})")
    g.add_argument("--array_parallelism", type=int, default=None,
                   help=f"most tasks of an array at once ({SLURM_DEFAULTS['array_parallelism']})")
    argv = list(argv)
    if argv and argv[0] not in ("run", "status", "report", "-h", "--help"):
        argv.insert(0, "run")
    args = p.parse_args(argv)
    if args.command is None:
        p.error("give a sweep file, e.g. python sweep.py configs/sweeps/demo.yaml")
    return args


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 1 <= int(m[1]) <= int(m[2]):
        raise UserError(f"--shard must be i/N with 1 <= i <= N, got '{text}'")
    return int(m[1]), int(m[2])


def locate(spec: str, results: str, check_data: bool = True) -> tuple[Sweep, Path]:
    """A sweep file, or a results folder holding the sweep.yaml a run left there; and its results folder."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "sweep.yaml").is_file():
            raise UserError(f"{path} holds no sweep.yaml: give the sweep file")
        sweep = load_sweep(path / "sweep.yaml", check_data=False)
        sweep.name = path.name  # the folder is named after the sweep
        return sweep, path.absolute()
    sweep = load_sweep(path, check_data)
    return sweep, (Path(results) / sweep.name).absolute()


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "status":
        sweep, root = locate(args.sweep, args.results, check_data=False)
        return status(sweep, root)
    if args.command == "report":
        sweep, root = locate(args.sweep, args.results, check_data=False)
        return dict(zip(("classes", "methods"), report(sweep, root)))
    part = _parse_shard(args.shard)
    problems = [f"--jobs must be at least 1, got {args.jobs}"] if args.jobs < 1 else []
    if args.executor == "slurm" and (part or args.jobs != 1 or args.gpus):
        problems.append("--shard, --jobs and --gpus are for --executor local")
    check_all(problems)
    check_all(check_writable(args.results))
    sweep, root = locate(args.sweep, args.results, check_data=not args.dry_run)
    overrides = {"partition": args.partition, "time": args.time, "gpus": args.gpus_per_job, "mem_gb": args.mem_gb,
                 "cpus": args.cpus_per_job, "array_parallelism": args.array_parallelism}
    sweep.slurm.update({k: v for k, v in overrides.items() if v is not None})
    everything = expand(sweep, root)
    jobs = shard(everything, *part) if part else everything
    todo = [j for j in jobs if not is_done(j)]
    print(f"sweep {sweep.name}: {len(jobs)} jobs{f' in part {args.shard}' if part else ''} "
          f"({sum(j.kind == 'datagen' for j in jobs)} synthetic sets, {sum(j.kind == 'train' for j in jobs)} "
          f"unlearning runs), {len(jobs) - len(todo)} finished before; results in {root}")
    if args.dry_run:
        print("(--dry_run: the datasets and forget classes were not read; a real run checks them first)")
        folder = root / "_sweep" / "submitit"
        print(dry_run_slurm(sweep, todo, folder) if args.executor == "slurm" else "\n".join(_job_lines(todo)))
        return {"jobs": todo}
    if args.executor == "slurm":
        return {"submitted": submit_slurm(sweep, todo, root)}
    keep_sweep_file(sweep, root)
    gpus = args.gpus.split(",") if args.gpus else None
    if gpus is None and args.jobs > 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = visible.split(",") if visible else [str(i) for i in range(args.jobs)]
    outcome = run_local(todo, args.jobs, gpus, total=len(jobs))
    failed = [j for j in todo if outcome.get(j.id) == "failed"]
    result = {"outcome": outcome, "failed": failed}
    if not args.no_report and any(finished_classes(run_folder(root, j.tag, j.name, j.seed)) for j in jobs):
        print()
        result.update(zip(("classes", "methods"), report(sweep, root)))
    if failed:
        print(f"\n{len(failed)} job(s) failed (the others ran); rerun the same command to retry them:")
        for job in failed:
            state = read_state(job)
            print(f"  {job.id}: {state.get('error', '')}\n    log: {state.get('log', job.log)}")
    return result


def submit_slurm(sweep: Sweep, jobs: list[Job], root: Path) -> list[list]:
    import submitit
    try:
        executor = submitit.SlurmExecutor(folder=root / "_sweep" / "submitit")
    except RuntimeError as e:
        raise UserError(f"no SLURM here ({e}); --dry_run shows what would be submitted") from None
    keep_sweep_file(sweep, root)
    arrays = submit(executor, sweep, jobs, chain=True)
    for (stage, group), array in zip([s for s in stages(jobs) if s[1]], arrays):
        print(f"submitted {stage}: SLURM array {array[0].job_id.split('_')[0]} ({len(group)} tasks)")
    print(f"watch: python sweep.py status {root}\nwhen done: python sweep.py report {root}")
    return arrays


def keep_sweep_file(sweep: Sweep, root: Path) -> None:
    """A copy of the sweep file in its results folder: status and report work from the folder alone."""
    atomic_write_text(root / "sweep.yaml", sweep.file.read_text())


def cli(argv: Sequence[str] | None = None) -> None:
    result = main(argv)
    if result.get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    # run as the module 'sweep', not '__main__': submitit pickles run_submitted by reference, and its
    # workers import it from this file
    import sweep as _module
    run_cli(_module.cli)
