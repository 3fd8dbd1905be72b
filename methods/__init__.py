"""Unlearning methods behind one interface (see methods/base.py); `train.py --method NAME` picks one.

Each method's defaults live in its `Config` dataclass, and every field of every Config is a train.py
option of the same name (default: the chosen method's own; --help lists them per method). Precedence,
lowest first: the Config default, the backbone's configs/archs/<tag>.yaml for the fields the method
names in ARCH_KEYS, the preset, the command line. A preset is a method with options.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import MISSING, fields, replace
from types import ModuleType
from typing import Any

from common import UserError, close_names

METHODS: dict[str, ModuleType] = {name: importlib.import_module(f"methods.{name}")
                                  for name in ("lipschitz", "hinge", "neggrad", "textspace", "projedit")}
DEFAULT = "lipschitz"

# preset -> the method and its options. faithful: the paper's method by its old name; improved: textspace
# with no image, the text projection and a LoRA on the last text block's MLP adapted, 50 logits of margin: the
# one candidate that met every target on the val split of both demo CLIPs (ResNet and ViT image towers); it
# runs on any class name (docs/methods.md: how it was chosen)
PRESETS: dict[str, dict[str, Any]] = {
    "faithful": {"method": "lipschitz", "options": {}},
    "improved": {"method": "textspace", "options": {"adapt": "blocks+proj", "margin": 50.0}},
}
CHOICES = [*METHODS, *PRESETS]
SET_METHODS = [n for n, m in METHODS.items() if hasattr(m, "unlearn_set")]  # those that forget a set at once


def resolve(name: str) -> tuple[ModuleType, dict]:
    """(method module, preset options) of a --method value."""
    if name in PRESETS:
        return METHODS[PRESETS[name]["method"]], dict(PRESETS[name]["options"])
    if name in METHODS:
        return METHODS[name], {}
    raise UserError(f"unknown --method '{name}'{close_names(name, CHOICES)} (known: {', '.join(CHOICES)})")


def _default(f) -> Any:
    return f.default if f.default is not MISSING else f.default_factory()


def _parser(example: Any):
    """argparse type of a Config field, from its default: lists and tuples are comma-separated."""
    if isinstance(example, (list, tuple)):
        item = type(example[0]) if example else str
        wrap = tuple if isinstance(example, tuple) else list
        return lambda text: wrap(item(v) for v in text.split(",") if v.strip())
    return type(example)


def option_fields() -> dict[str, list]:
    """Every Config field name -> its (method name, field) pairs, in method order."""
    out: dict[str, list] = {}
    for name, mod in METHODS.items():
        for f in fields(mod.Config):
            out.setdefault(f.name, []).append((name, f))
    return out


def add_options(p: argparse.ArgumentParser) -> None:
    """The methods' options, one argument group per method, each defaulting to None ("the method's own
    default"). An option several methods share is listed in the first one's group, with every method's
    default; the later groups name it."""
    listed: set[str] = set()
    for name, mod in METHODS.items():
        own = [f for f in fields(mod.Config)]
        shared = [f.name for f in own if f.name in listed]
        g = p.add_argument_group(f"--method {name}" + "".join(f" ({k})" for k, v in PRESETS.items()
                                                             if v["method"] == name),
                                 f"also: {', '.join('--' + n for n in shared)} (above)" if shared else None)
        for f in own:
            if f.name in listed:
                continue
            listed.add(f.name)
            owners = option_fields()[f.name]
            shown = "; ".join(f"{m}: {','.join(map(str, d)) if isinstance(d, (list, tuple)) else d}"
                              for m, d in ((m, _default(o)) for m, o in owners))
            g.add_argument(f"--{f.name}", type=_parser(_default(f)), default=None, choices=f.metadata.get("choices"),
                           help=f"{f.metadata.get('help', '')} [default {shown}]".strip())


def configure(name: str, args: argparse.Namespace, arch: dict) -> tuple[ModuleType, Any, list[str]]:
    """The method module of --method `name`, its Config for this run, and every problem found."""
    mod, preset = resolve(name)
    own = {f.name for f in fields(mod.Config)}
    given = {n: getattr(args, n) for n in option_fields() if getattr(args, n, None) is not None}
    problems = [f"--{n} is not an option of --method {name} ({mod.NAME}; its options: "
                f"{', '.join('--' + o for o in sorted(own))})" for n in given if n not in own]
    values = {k: v for k, v in arch.items() if k in getattr(mod, "ARCH_KEYS", ())}
    values.update(preset)
    values.update({k: v for k, v in given.items() if k in own})
    cfg = replace(mod.Config(), **values)
    problems += getattr(mod, "check", lambda c: [])(cfg)
    return mod, cfg, problems


def needs_images(mod: ModuleType, cfg: Any) -> bool:
    """Does the method train on the forget images with this configuration (module constant
    NEEDS_IMAGES, or a function needs_images(cfg) where it depends on the options)?"""
    return bool(mod.needs_images(cfg) if hasattr(mod, "needs_images") else mod.NEEDS_IMAGES)


def forgets_sets(mod: ModuleType, cfg: Any) -> bool:
    """Can the method forget a set of classes in one run with this configuration (unlearn_set, and its
    optional sets_ok(cfg))?"""
    return hasattr(mod, "unlearn_set") and bool(getattr(mod, "sets_ok", lambda c: True)(cfg))


def side_sets(mod: ModuleType, cfg: Any) -> list[str]:
    """Synthetic sets besides the forget set that the method reads with this configuration."""
    return list(getattr(mod, "side_sets", lambda c: [])(cfg))
