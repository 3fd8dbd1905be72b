"""One way to get a model for every script: open_clip backbones, local checkpoints and the demo.

`load_model(arch, pretrained, device)` returns the model (fp32, eval mode), its test-time
preprocessing (taken from open_clip, SPEC §5) and its tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch

from common import REPO, UserError, atomic_torch_save, atomic_write_json, cache_dir, check_all, close_names, \
    default_data_root

# The paper's spellings -> open_clip configs with QuickGELU, which OpenAI's weights were trained with
# (the plain configs use GELU and only warn when given OpenAI weights: SPEC §5).
ALIASES = {
    "RN50": "RN50-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-B-16": "ViT-B-16-quickgelu",
}
DEMO = "demo"
MODEL_CONFIGS = REPO / "configs" / "models"
open_clip.add_model_config(MODEL_CONFIGS)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> normalised tensor, as open_clip does at test time
    tokenizer: Callable
    name: str  # the open_clip config name, e.g. "RN50-quickgelu"
    tag: str  # short name for folders and tables, e.g. "RN50", "ViT-B-16", "demo"
    pretrained: str  # "openai", "none", a file path, ...


def arch_tag(arch: str) -> str:
    """The short architecture name used in folder names: 'ViT-B/16' -> 'ViT-B-16'."""
    name = resolve_arch(arch)
    return name.removesuffix("-quickgelu")


def resolve_arch(arch: str) -> str:
    """The open_clip config name for an architecture; unknown names suggest close ones."""
    if arch in ALIASES:
        return ALIASES[arch]
    known = open_clip.list_models()
    if arch in known:
        return arch
    raise UserError(f"unknown model '{arch}'{close_names(arch, [*ALIASES, *known])}"
                    f" (open_clip knows {len(known)} models: see open_clip.list_models())")


def config_image_size(arch: str) -> int | None:
    """The input image size of `arch`, read from its open_clip config without building the model."""
    size = ((open_clip.get_model_config(resolve_arch(arch)) or {}).get("vision_cfg") or {}).get("image_size")
    return size[0] if isinstance(size, (tuple, list)) else size


def default_pretrained(arch: str) -> str:
    return "demo" if resolve_arch(arch) == DEMO else "openai"


def check_pretrained(arch: str, pretrained: str) -> list[str]:
    """Problems with a --pretrained value, found without building anything."""
    name = resolve_arch(arch)
    if pretrained in ("none", "demo") and (pretrained == "none" or name == DEMO):
        return []
    if Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors") or "/" in pretrained:
        return [] if Path(pretrained).is_file() else [f"checkpoint file {pretrained} not found"]
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        return [f"model '{name}' has no pretrained weights '{pretrained}'"
                f"{close_names(pretrained, tags)} (known: {', '.join(tags) or 'none'}; or 'none', or a file)"]
    return []


def check_model(arch: str, pretrained: str | None) -> tuple[str | None, list[str]]:
    """(short tag or None, problems) for a model name and --pretrained value, building nothing."""
    try:
        tag = arch_tag(arch)
        return tag, check_pretrained(arch, pretrained) if pretrained else []
    except UserError as e:
        return None, [str(e)]


def load_model(arch: str, pretrained: str | None = None, device: str = "cpu",
               data_root: str | None = None) -> LoadedModel:
    """Build `arch` with `pretrained` weights ('openai', another open_clip tag, 'none' for random
    weights, a checkpoint file, or for `demo` the cached demo weights) on `device`."""
    name = resolve_arch(arch)
    pretrained = pretrained or default_pretrained(arch)
    problems = check_pretrained(arch, pretrained)
    if problems:
        raise UserError(problems[0])
    is_file = Path(pretrained).is_file()
    random_init = pretrained in ("none", "demo") or is_file
    if random_init:  # open_clip warns that it initialised randomly: that is what we asked for
        logging.disable(logging.WARNING)
    try:
        with torch.random.fork_rng():  # random initial weights are the same in every process
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None if random_init else pretrained)
    finally:
        logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer(name)
    if is_file:
        ckpt = read_checkpoint(pretrained)
        if isinstance(ckpt, dict) and "changed" in ckpt:  # train.py's delta: base weights + changed tensors
            lm = load_model(arch, ckpt["pretrained"], device, data_root)
            apply_state(lm.model, {**lm.model.state_dict(), **ckpt["changed"]}, pretrained)
            lm.pretrained = pretrained
            return lm
        apply_state(model, ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt, pretrained)
    elif name == DEMO and pretrained == "demo":
        model.load_state_dict(_demo_weights(model, preprocess, tokenizer, data_root or default_data_root()))
    model = model.float().to(device).eval()
    return LoadedModel(model, preprocess, tokenizer, name, name.removesuffix("-quickgelu"), pretrained)


def read_checkpoint(path: str):
    """Read a checkpoint safely (weights_only: no pickled code); a broken file is a user error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        why = (str(e).splitlines() or [type(e).__name__])[0]  # an empty file's error has no message
        raise UserError(f"cannot load checkpoint {path}: {why}") from None


def apply_state(model: torch.nn.Module, state: dict, path: str) -> None:
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"checkpoint {path} does not fit this model: {why}") from None


def _demo_key() -> str:
    """Cache key of the demo weights: changes when the model, data or training recipe changes."""
    h = hashlib.sha1()
    for f in [MODEL_CONFIGS / "demo.json", REPO / "configs" / "demo_world.yaml", REPO / "demo_world.py", REPO / "models.py",
              REPO / "configs" / "datasets" / "Digits.yaml", REPO / "configs" / "datasets" / "Shapes.yaml",
              REPO / "datasets" / "digits.py", REPO / "datasets" / "shapes.py"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def demo_weights_path(left_out: Sequence[tuple[str, str]] = ()) -> Path:
    """Where the demo weights are cached; with `left_out`, those of the oracle without those classes."""
    if not left_out:
        return cache_dir() / "demo" / f"demo-{_demo_key()}.pt"
    key = hashlib.sha1(json.dumps(sorted({tuple(p) for p in left_out})).encode()).hexdigest()[:12]
    return cache_dir() / "demo" / f"oracle-{_demo_key()}-{key}.pt"


def _demo_weights(model, preprocess, tokenizer, data_root: str, left_out: Sequence[tuple[str, str]] = ()) -> dict:
    """The demo CLIP's (or an oracle's) weights: trained once on CPU (deterministic), then read from the cache."""
    path = demo_weights_path(left_out)
    if not path.is_file():
        from demo_world import train_demo_model
        what = f"the demo CLIP without {sorted(map(tuple, left_out))}" if left_out else "the demo CLIP"
        print(f"training {what} once (cached at {path}) ...")
        record = train_demo_model(model, preprocess, tokenizer, data_root, left_out)
        print(f"{what} trained in {record['seconds']} s")
        atomic_torch_save(path, model.state_dict())
        atomic_write_json(path.with_suffix(".json"), record)  # what the file is, for people
    return torch.load(path, map_location="cpu", weights_only=True)


def load_demo_oracle(left_out: Sequence[tuple[str, str]], device: str = "cpu",
                     data_root: str | None = None) -> LoadedModel:
    """The oracle of unlearning: the demo CLIP retrained without the images of the `left_out`
    (dataset, classname) pairs (same seed, captions and schedule: demo_world.py), trained on
    first use and cached. Its `pretrained` is the cached file, so its baselines and results are
    keyed apart from the demo CLIP's."""
    from demo_world import demo_data, left_out_problems
    data_root = data_root or default_data_root()
    left_out = sorted({tuple(p) for p in left_out}) if not isinstance(left_out, str) else [left_out]
    problems = left_out_problems(demo_data(data_root).classes, left_out)
    check_all(problems or ([] if left_out else ["the oracle needs at least one (dataset, classname) to leave out"]))
    lm = load_model(DEMO, "none", "cpu")
    lm.model.load_state_dict(_demo_weights(lm.model, lm.preprocess, lm.tokenizer, data_root, left_out))
    lm.model = lm.model.to(device).eval()
    lm.pretrained = str(demo_weights_path(left_out))
    return lm
