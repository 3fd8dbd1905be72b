"""The run folder: the one module that knows its files, their names and layout. train.py writes a run
folder, audit.py adds its audit, clip_forget_utils.py and sweep.py read it: all of them through here.

    <run>/args.txt                       the run's settings as JSON (a copy of logs.json's, for the paper's readers)
    <run>/logs.json                      one record per finished forget request, in the paper's layout
                                         {dataset: {class: record}}, and the run's settings under "settings"
    <run>/zeroshot_before.json           {dataset: {class: figures}}: the model before unlearning
    <run>/models/<dataset>/<class>.pt    the unlearned model of a request: its changed tensors (a delta)
    <run>/models/joint.pt                the one model of a --protocol joint run (every class of its set)
    <run>/audit.json, audit_<split>.json the forgetting audit of each split (and audit[_<split>].png)
    <run>/results.md, results.png        the report of clip_forget_utils.py

The unit is a forget request, the classes one unlearning run removes. A one-class request is recorded
where the paper's create_results and notebooks read it: logs[dataset][class], with the paper's
"final_results" and per-noise-level entries. A request of several classes (--protocol joint) gives each
class its record there, every one with the same "request" entry (its index, its classes, the set's figures
before and after); they are written together. A request is finished when its records have final_results.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from common import UserError, atomic_torch_save, atomic_write_json, atomic_write_text, read_json, torch_load, update_json
from synthetic import safe_name

LOGS, ARGS, BEFORE, MODELS = "logs.json", "args.txt", "zeroshot_before.json", "models"
SETTINGS = "settings"  # the reserved key of logs.json beside the dataset names
# settings that must agree between runs writing into one folder (the rest may differ, e.g. --forget_labels),
# besides the method's configuration as it ran (method_config)
SETTINGS_KEYS = ("backbone_arch", "pretrained", "generated_data", "seed", "debug", "method", "precision", "protocol",
                 "retain_scope")


class RunFolder:
    """One run folder (`path`); `log_name` reads another logs file of it, as the paper's create_results can."""

    def __init__(self, path: str | Path, log_name: str = LOGS):
        self.path, self.log_name = Path(path), log_name

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ reading
    @property
    def logs_file(self) -> Path:
        return self.path / self.log_name

    def problems(self) -> list[str]:
        """Why this is no run folder to read (empty if it is one): a file, a missing folder, no logs yet."""
        if not self.path.is_dir():
            return [f"{self.path} is a file, not a run folder" if self.path.exists()
                    else f"run folder {self.path} not found"]
        if not self.logs_file.is_file():
            seeds = sorted(p.name for p in self.path.glob("seed_*") if p.is_dir())
            hint = f"; pass one of its seed folders: {', '.join(seeds)}" if seeds else " (has train.py run there?)"
            return [f"no {self.log_name} in {self.path}{hint}"]
        return []

    def logs(self) -> dict:
        """logs.json as written ({} before the first record); a broken file is a user error naming it."""
        if not self.logs_file.is_file():
            return {}
        logs = read_json(self.logs_file)
        if not isinstance(logs, dict):
            raise UserError(f"{self.logs_file} is not a logs object")
        return logs

    def settings(self) -> dict:
        """The run's settings: logs.json's (the one source), else a JSON args.txt (folders from before logs held
        them), else {} (the paper's code writes args.txt as Python text)."""
        settings = self.logs().get(SETTINGS)
        if isinstance(settings, dict) and settings:
            return settings
        try:
            args = json.loads(self.args_text() or "{}")
        except json.JSONDecodeError:
            return {}
        return args if isinstance(args, dict) else {}

    def args_text(self) -> str:
        """The raw text of args.txt ('' without one): what the paper's create_results returns beside its frame."""
        path = self.path / ARGS
        return path.read_text() if path.is_file() else ""

    def records(self, logs: dict | None = None) -> dict[tuple[str, str], dict]:
        """(dataset, class) -> its record, for every class with one, in logs order ({} marks a class not run)."""
        logs = self.logs() if logs is None else logs
        return {(ds, cls): record for ds, classes in logs.items() if ds != SETTINGS and isinstance(classes, dict)
                for cls, record in classes.items() if isinstance(record, dict) and record}

    def finished(self) -> list[tuple[str, str]]:
        """The (dataset, class) requests whose record has final_results (read once per change of the file)."""
        try:
            st = self.logs_file.stat()
        except OSError:  # none yet, or the folder's path runs through a file
            return []
        return list(_finished(str(self.logs_file), st.st_mtime_ns, st.st_size))

    def before(self) -> dict:
        """zeroshot_before.json ({} without one): {dataset: {class: figures}} of the model before unlearning."""
        path = self.path / BEFORE
        return read_json(path) if path.is_file() else {}

    def protocol(self) -> str:
        """The run's --protocol (per_class for folders from before it existed)."""
        return self.settings().get("protocol", "per_class")

    def delta_file(self, dataset: str, classname: str) -> Path:
        """The saved model that forgot `classname`: its own, or the one model of a joint run."""
        if self.protocol() == "joint":
            return self.path / MODELS / "joint.pt"
        return self.path / MODELS / dataset / f"{safe_name(classname)}.pt"

    def load_delta(self, dataset: str, classname: str) -> dict:
        """A request's saved model (CPU): {"changed": tensors, and what they were made from}; a file that is
        not one is a user error."""
        path = self.delta_file(dataset, classname)
        try:
            saved = torch_load(path)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        if not isinstance(saved, dict) or "changed" not in saved:
            raise UserError(f"{path} is not a train.py model file (no 'changed' tensors)")
        return saved

    def audit_file(self, split: str = "test") -> Path:
        """audit.json for the test split (what create_results reads), audit_<split>.json otherwise."""
        return self.path / ("audit.json" if split == "test" else f"audit_{split}.json")

    def audit_plot_file(self, split: str = "test") -> Path:
        return self.audit_file(split).with_suffix(".png")

    def report_files(self) -> tuple[Path, Path]:
        """The report's table and plot (clip_forget_utils.py)."""
        return self.path / "results.md", self.path / "results.png"

    def audit(self, split: str = "test") -> dict | None:
        path = self.audit_file(split)
        return read_json(path) if path.is_file() else None

    def audited(self, split: str = "test") -> dict[tuple[str, str], dict]:
        """(dataset, class) -> its audit entry, from the split's audit file ({} without one)."""
        audit = self.audit(split) or {}
        return {(ds, cls): e for ds, classes in audit.items() if ds != SETTINGS and isinstance(classes, dict)
                for cls, e in classes.items()}

    # ------------------------------------------------------------------ writing
    def check_settings(self, settings: dict, with_method: bool = True) -> list[str]:
        """A problem line if the folder holds a run with other settings (see settings_problems)."""
        return settings_problems(self.path, self.logs().get(SETTINGS, {}), settings, with_method)

    def begin(self, settings: dict) -> None:
        """Before the first request: the settings written to args.txt (logs.json gets them with the first record)."""
        atomic_write_text(self.path / ARGS, json.dumps(settings, indent=1))

    def add_before(self, figures: dict) -> None:
        """Add the model's figures before unlearning; a rerun adds, never drops (several processes may)."""
        update_json(self.path / BEFORE, lambda old: old.update(figures))

    def add_records(self, records: dict[tuple[str, str], dict], settings: dict) -> dict:
        """Record a finished request, its classes' records in one write; the settings are checked again under
        the lock, since another process (sweep.py runs several classes into one folder) may have written
        since. Returns the new logs."""
        def add(logs: dict) -> None:
            problems = settings_problems(self.path, logs.get(SETTINGS, {}), settings)
            if problems:
                raise UserError(problems[0])
            logs[SETTINGS] = settings
            for (dataset, classname), record in records.items():
                logs.setdefault(dataset, {})[classname] = record
        return update_json(self.logs_file, add)

    def save_delta(self, dataset: str, classname: str, changed: dict, meta: dict) -> None:
        """The unlearned model of a request: its changed tensors (CPU), and what they were made from."""
        atomic_torch_save(self.delta_file(dataset, classname),
                          {"changed": {n: t.cpu() for n, t in changed.items()}, **meta})

    def write_audit(self, split: str, audit: dict) -> None:
        atomic_write_json(self.audit_file(split), audit)


def settings_problems(folder: Path, old: dict, new: dict, with_method: bool = True) -> list[str]:
    """A problem line if `old` settings of a folder disagree with `new` ones on SETTINGS_KEYS and, with_method,
    on the method's configuration as it ran (not when the model is unknown: its per-backbone settings are too)."""
    def flat(s: dict) -> dict:
        protocol = {"protocol": "per_class"} if s else {}  # folders written before --protocol existed
        return {**protocol, **{k: s[k] for k in SETTINGS_KEYS if k in s},
                **(s.get("method_config", {}) if with_method else {})}
    old, new = flat(old), flat(new)
    diff = [k for k in new if k in old and old[k] != new[k]]
    if not diff:
        return []
    return [f"{folder} holds a run with other settings ({', '.join(f'{k}: {old[k]} vs {new[k]}' for k in diff)}); "
            "use another --output_dir (with train.sh: another ATTEMPT number)"]


@lru_cache(maxsize=64)
def _finished(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    try:
        logs = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return ()
    return tuple(k for k, record in RunFolder(Path(path).parent).records(logs).items() if record.get("final_results"))

