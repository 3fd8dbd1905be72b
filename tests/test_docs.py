"""Every command that README.md and docs/ show parses: through the script's own parser and option checks
(train.option_problems, datagen.option_problems, the sweep file's pre-check), and the shell scripts through
the python command they build. `make demo` runs the README's demo commands for real; this keeps the rest
from drifting (a renamed option, a preset that no longer exists, a sweep file that no longer parses)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import audit
import clip_forget_utils
import datagen
import forget
import methods
import sweep
import train
import zeroshot
from common import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PARSERS = {"train.py": train.parse_args, "datagen.py": datagen.parse_args, "zeroshot.py": zeroshot.parse_args,
           "audit.py": audit.parse_args, "sweep.py": sweep.parse_args, "forget.py": forget.parse_args}


def shown_commands() -> list[tuple[str, list[str]]]:
    """(where, words) of every command in the ```sh blocks of the docs, continuation lines joined and
    shell variables set in the block substituted."""
    out = []
    for doc in DOCS:
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            variables: dict[str, str] = {}
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if len(words) == 1 and re.fullmatch(r"\w+=.*", words[0]):
                        name, value = words[0].split("=", 1)
                        variables[name] = value
                        continue
                    words = [re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), w) for w in words]
                    if words:
                        out.append((f"{doc.name}: {part.strip()}", words))
    return out


def shell_argv(words: list[str], tmp_path: Path) -> tuple[str, list[str]]:
    """The python command that `sh train.sh ...` / `sh datagen.sh ...` runs: the script is run with a
    PYTHON that only records its arguments."""
    fake, record = tmp_path / "python", tmp_path / "argv"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
    fake.chmod(0o755)
    p = subprocess.run(["sh", *words[1:]], cwd=REPO, env={**os.environ, "PYTHON": str(fake)},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    script, *argv = record.read_text().splitlines()
    return script, argv


def check(where: str, script: str, argv: list[str]) -> None:
    if script == "clip_forget_utils.py":
        (clip_forget_utils.parse_compare_args if argv[:1] == ["compare"] else clip_forget_utils.parse_args)(
            argv[1:] if argv[:1] == ["compare"] else argv)
        return
    assert script in PARSERS, f"{where}: a script the docs show that this test does not know: {script}"
    args = PARSERS[script](argv)
    if script == "train.py":
        assert train.option_problems(args)[2] == [], where
    elif script == "datagen.py":
        assert datagen.option_problems(args) == [], where
    elif script == "forget.py":
        forget.template_set(args.templates)
        forget.configure(args.method, {k: getattr(args, k) for k in methods.option_fields()
                                       if getattr(args, k, None) is not None})
    elif script == "sweep.py":
        path = Path(args.sweep)
        assert (REPO / path).is_file(), f"{where}: no sweep file {path}"
        sweep.load_sweep(REPO / path, check_data=False)


def test_every_command_in_the_docs_parses(tmp_path):
    commands = shown_commands()
    scripts = set()
    for where, words in commands:
        if words[0] == "python" and words[1].endswith(".py") and not words[1].startswith("bench/"):
            check(where, words[1], words[2:])
            scripts.add(words[1])
        elif words[0] == "sh" and words[1] in ("train.sh", "datagen.sh"):
            check(where, *shell_argv(words, tmp_path))
            scripts.add(words[1])
        elif words[0] == "sh":
            assert (REPO / words[1]).is_file(), where
    # the docs show every script of the pipeline
    assert {"train.py", "datagen.py", "zeroshot.py", "audit.py", "sweep.py", "clip_forget_utils.py", "train.sh",
            "datagen.sh", "forget.py"} <= scripts, scripts
    assert len(commands) >= 20


@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_links_between_the_docs_resolve(doc):
    path = next(d for d in DOCS if d.name == doc)
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{doc}: link to {target}, which does not exist"


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 185
