"""One way to get a model for every script: open_clip backbones, local checkpoints and the demo.

`load_model(arch, pretrained, device)` returns the model (fp32, eval mode), its test-time
preprocessing (taken from open_clip, SPEC §5) and its tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import open_clip
import torch
import yaml

from common import REPO, UserError, atomic_torch_save, atomic_write_json, cache_dir, check_all, close_names, \
    default_data_root, locked, torch_load, unreadable_reason
from export import base_tag, describe_missing, weights_file

# The paper's spellings -> open_clip configs with QuickGELU, which OpenAI's weights were trained with
# (the plain configs use GELU and only warn when given OpenAI weights: SPEC §5).
ALIASES = {
    "RN50": "RN50-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-B-16": "ViT-B-16-quickgelu",
    "RN": "RN50-quickgelu",  # the paper's scripts name its two backbones RN and ViT (datagen.sh, train.sh)
    "ViT": "ViT-B-16-quickgelu",
}
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
DEMO = "demo"
MODEL_CONFIGS = REPO / "configs" / "models"  # the demo CLIPs' open_clip configs, one file each
DEMO_MODELS = tuple(sorted(p.stem for p in MODEL_CONFIGS.glob("*.json")))  # demo (ResNet), demo-vit (ViT)
ARCH_CONFIGS = REPO / "configs" / "archs"
open_clip.add_model_config(MODEL_CONFIGS)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> normalised tensor, as open_clip does at test time
    tokenizer: Callable
    name: str  # the open_clip config name, e.g. "RN50-quickgelu"
    tag: str  # short name for folders and tables, e.g. "RN50", "ViT-B-16", "demo"
    pretrained: str  # "openai", "none", a file path, ...


# open_clip's names of a model in its Hugging Face layout (what train.py --export writes): a folder, or a Hub repo
HUB_PREFIXES = ("local-dir:", "hf-hub:")
EXPORTED = "exported"  # the tag of an exported model whose folder or repo name gives none


def is_hub_name(arch: str) -> bool:
    return arch.startswith(HUB_PREFIXES)


def arch_tag(arch: str) -> str:
    """The short architecture name used in folder names: 'ViT-B/16' -> 'ViT-B-16'; a local-dir: or hf-hub:
    model is named by its folder or repo ('hf-hub:org/repo' -> 'org-repo')."""
    name = resolve_arch(arch)
    if is_hub_name(name):
        ident = name.split(":", 1)[1].rstrip("/")
        ident = Path(ident).name if name.startswith("local-dir:") else ident.replace("/", "-")
        return re.sub(r"[^\w.-]+", "-", ident).strip("-") or EXPORTED
    return name.removesuffix("-quickgelu")


def hub_config(name: str) -> dict:
    """The model config of a local-dir: or hf-hub: model (its open_clip_config.json); one line if there is none."""
    try:
        cfg = open_clip.get_model_config(name)
    except (OSError, ValueError) as e:
        raise UserError(describe_missing(name, e)) from None
    if not cfg:
        raise UserError(f"{name}: its open_clip_config.json has no model config")
    return cfg


def resolve_arch(arch: str) -> str:
    """The open_clip config name for an architecture; unknown names suggest close ones."""
    if is_hub_name(arch):
        return arch
    if arch in ALIASES:
        return ALIASES[arch]
    known = open_clip.list_models()
    if arch in known:
        return arch
    raise UserError(f"unknown model '{arch}'{close_names(arch, [*ALIASES, *known])}"
                    f" (open_clip knows {len(known)} models: see open_clip.list_models())")


def model_config(arch: str) -> dict | None:
    """The open_clip model config of `arch` (a local-dir: / hf-hub: model's from its open_clip_config.json)."""
    name = resolve_arch(arch)
    return hub_config(name) if is_hub_name(name) else open_clip.get_model_config(name)


def config_image_size(arch: str) -> int | None:
    """The input image size of `arch`, read from its open_clip config without building the model."""
    size = ((model_config(arch) or {}).get("vision_cfg") or {}).get("image_size")
    return size[0] if isinstance(size, (tuple, list)) else size


def default_pretrained(arch: str) -> str:
    """The weights a model name means alone: OpenAI's, the demo's, or a local-dir: / hf-hub: model's own file
    (its content keys cached figures and synthetic sets)."""
    name = resolve_arch(arch)
    if is_hub_name(name):
        hub_config(name)  # a name that gives no model is one line, before its weights are looked for
        try:
            return str(weights_file(name))
        except (OSError, ValueError) as e:  # the hub's errors (not cached offline, no such file) are OSErrors
            raise UserError(describe_missing(name, e)) from None
    return "demo" if name in DEMO_MODELS else "openai"


def check_pretrained(arch: str, pretrained: str) -> list[str]:
    """Problems with a --pretrained value, found without building anything: a tag of the model (a
    known tag wins over a file of the same name), 'none', a checkpoint file, or for a demo CLIP 'demo'."""
    name = resolve_arch(arch)
    if is_hub_name(name):  # default_pretrained checks that the folder or repo holds an open_clip model
        return [] if pretrained == default_pretrained(name) else \
            [f"--pretrained is not used with {name}: its weights come with it"]
    if pretrained == "none" or (pretrained == "demo" and name in DEMO_MODELS):
        return []
    tags = open_clip.list_pretrained_tags_by_model(name)
    path = Path(pretrained)
    if pretrained in tags or path.is_file():
        return []
    if path.is_dir():
        return [f"--pretrained {pretrained} is a folder, not a checkpoint file"]
    if path.suffix in CHECKPOINT_SUFFIXES or "/" in pretrained:
        return [f"checkpoint file {pretrained} not found"]
    return [f"model '{name}' has no pretrained weights '{pretrained}'"
            f"{close_names(pretrained, tags)} (known: {', '.join(tags) or 'none'}; or 'none', or a file)"]


def check_model(arch: str, pretrained: str | None) -> tuple[str | None, list[str]]:
    """(short tag or None, problems) for a model name and --pretrained value, building nothing."""
    try:
        tag = arch_tag(arch)
        return tag, check_pretrained(arch, pretrained or default_pretrained(arch))
    except UserError as e:
        return None, [str(e)]


def load_model(arch: str, pretrained: str | None = None, device: str = "cpu",
               data_root: str | None = None) -> LoadedModel:
    """Build `arch` with `pretrained` weights ('openai', another open_clip tag, 'none' for random
    weights, a checkpoint file, or for a demo CLIP (DEMO_MODELS) 'demo', its cached trained weights) on
    `device`."""
    name = resolve_arch(arch)
    pretrained = pretrained or default_pretrained(arch)
    problems = check_pretrained(arch, pretrained)
    if problems:
        raise UserError(problems[0])
    hub = is_hub_name(name)
    is_tag = not hub and pretrained in open_clip.list_pretrained_tags_by_model(name)
    is_file = not (is_tag or hub) and Path(pretrained).is_file()
    delta = read_delta(pretrained, name) if is_file else None
    if delta is not None:  # train.py's delta: its base weights + the changed tensors
        lm = load_model(arch, delta["pretrained"], device, data_root)
        apply_state(lm.model, {**lm.model.state_dict(), **delta["changed"]}, pretrained)
        lm.pretrained = pretrained
        return lm
    with torch.random.fork_rng(), quiet_logs(not is_tag):  # random initial weights: the same in every process
        torch.manual_seed(0)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained if is_tag else None)
        except (RuntimeError, OSError) as e:
            if is_tag and "download" in str(e).lower():
                raise UserError(download_advice(name, pretrained)) from None
            if hub:
                raise UserError(f"cannot load {name}: {e}") from None
            raise
    tokenizer = open_clip.get_tokenizer(name)
    if is_file:
        apply_state(model, None, pretrained)
    elif name in DEMO_MODELS and pretrained == "demo":
        model.load_state_dict(_demo_weights(name, model, preprocess, tokenizer, data_root or default_data_root()))
    model = model.float().to(device).eval()
    return LoadedModel(model, preprocess, tokenizer, name, arch_tag(name), pretrained)


@contextmanager
def quiet_logs(everything: bool) -> Iterator[None]:
    """Inside: no log lines from open_clip and the Hugging Face hub below ERROR (every line with
    `everything`: open_clip warns that it initialised randomly, which is what was asked). A failed
    download becomes one UserError line instead of the hub's retry warnings and open_clip's log."""
    logging.disable(logging.CRITICAL if everything else logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def download_advice(name: str, tag: str) -> str:
    """What to do when open_clip cannot download a model's weights (an offline node, usually)."""
    from huggingface_hub.constants import HF_HUB_CACHE
    return (f"cannot download the '{tag}' weights of {name} (no network here?): download them once on a machine "
            f"with network (python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\") "
            f"into the Hugging Face cache this machine reads ({HF_HUB_CACHE}; HF_HOME moves it), or pass "
            "--pretrained path/to/weights.pt; HF_HUB_OFFLINE=1 makes this error come at once instead of after retries")


def read_delta(path: str, name: str) -> dict | None:
    """A train.py model file (the changed tensors of an unlearned model) at `path`, checked against the
    model `name` it is given for; None for any other checkpoint. Only the file's structure is read
    (mmap): a plain checkpoint is then loaded once, by open_clip."""
    if Path(path).suffix == ".safetensors":
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip archive (torch.save's legacy format, or not a checkpoint at all)
        ckpt = read_checkpoint(path)
    except Exception as e:
        raise UserError(f"cannot load checkpoint {path}: {unreadable_reason(Path(path), e)}") from None
    if not (isinstance(ckpt, dict) and "changed" in ckpt):
        return None
    saved_for = ckpt.get("arch")
    if saved_for not in (None, name):
        raise UserError(f"{path} was saved for {saved_for.removesuffix('-quickgelu')}, not "
                        f"{name.removesuffix('-quickgelu')}: pass --backbone_arch {saved_for.removesuffix('-quickgelu')}")
    return ckpt


def read_checkpoint(path: str):
    """Read a checkpoint safely (weights_only: no pickled code); a broken file is a user error."""
    try:
        return torch_load(path)
    except ValueError as e:
        raise UserError(f"cannot load checkpoint {path}: {e}") from None


def apply_state(model: torch.nn.Module, state: dict | None, path: str) -> None:
    """Load `state` into the model, or with None the plain checkpoint file at `path` through open_clip's
    load_checkpoint (a 'state_dict' key, 'module.' prefixes, resized position embeddings). The file
    has been read once already (read_delta), so what fails here is its content: one line saying how."""
    try:
        if state is None:
            open_clip.load_checkpoint(model, path)
        else:
            model.load_state_dict(state)
    except Exception as e:
        if "Error(s) in loading state_dict" not in str(e):
            raise UserError(f"cannot load checkpoint {path}: it holds no state dict of model weights") from None
        raise UserError(f"checkpoint {path} does not fit this model: {state_mismatch(e)}") from None


def state_mismatch(error: Exception) -> str:
    """load_state_dict's mismatch report in one line: counts of missing and unexpected keys, and the
    first size mismatch (its own message is a paragraph, one line per key)."""
    text = str(error)
    missing = re.search(r"Missing key\(s\) in state_dict: (.*?)\.\s*$", text, flags=re.M)
    unexpected = re.search(r"Unexpected key\(s\) in state_dict: (.*?)\.\s*$", text, flags=re.M)
    size = re.search(r"size mismatch for ([^:]+): (.*?)\.\s*$", text, flags=re.M)
    parts = []
    for label, m in (("missing", missing), ("unexpected", unexpected)):
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            parts.append(f"{len(keys)} {label} key(s), e.g. {keys[0]}" if keys else label + " keys")
    n_size = len(re.findall(r"size mismatch for ", text))
    if size:
        parts.append(f"{n_size} tensor(s) of another shape, e.g. {size.group(1)}: {size.group(2)}")
    return "; ".join(parts) or (text.strip().splitlines() or [type(error).__name__])[0]


def arch_settings(arch: str) -> dict:
    """The unlearning settings of a backbone, configs/archs/<tag>.yaml (the paper's per-backbone top-k
    schedule, frozen tensors and lr); another open_clip model gets RN50's or ViT-B-16's by the type of
    its image tower (open_clip configs give a ModifiedResNet tower its layers per stage, a list)."""
    tag = base_tag(resolve_arch(arch)) or arch_tag(arch)  # an exported model keeps its base model's settings
    path = ARCH_CONFIGS / f"{tag}.yaml"
    if not path.is_file():
        layers = ((model_config(arch) or {}).get("vision_cfg") or {}).get("layers")
        path = ARCH_CONFIGS / ("RN50.yaml" if isinstance(layers, (list, tuple)) else "ViT-B-16.yaml")
        print(f"note: no configs/archs/{tag}.yaml; using {path.name}")
    return yaml.safe_load(path.read_text())


def _state_for(model: torch.nn.Module, changed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state_dict, once every name of `changed` is known to be in it."""
    state = model.state_dict()
    unknown = [n for n in changed if n not in state]
    if unknown:
        raise UserError(f"changed tensor '{unknown[0]}' is not a parameter of this model")
    return state


def apply_changes(model: torch.nn.Module, changed: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Put `changed` tensors (state_dict names: an unlearned model's delta) into the model for good, in
    place; returns the model."""
    state = _state_for(model, changed)
    with torch.no_grad():
        for n, t in changed.items():
            state[n].copy_(t)
    return model


@contextmanager
def applied(model: torch.nn.Module, changed: dict[str, torch.Tensor]) -> Iterator[None]:
    """The model with `changed` tensors (state_dict names: an unlearned model's delta) in place of its
    own, restored on exit."""
    state = _state_for(model, changed)
    kept = {n: state[n].clone() for n in changed}
    try:
        for n, t in changed.items():
            state[n].copy_(t)
        yield
    finally:
        for n, t in kept.items():
            state[n].copy_(t)


def towers_changed(changed: dict[str, torch.Tensor]) -> dict[str, bool]:
    """Which towers a set of changed tensors touches (the logit scale belongs to neither: evaluation
    uses the fixed scale 100)."""
    return {"image": any(n.startswith("visual.") for n in changed),
            "text": any(not n.startswith("visual.") and n != "logit_scale" for n in changed)}


def batchnorm_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters of every BatchNorm layer (frozen when unlearning, left alone when relearning)."""
    return {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for p in m.parameters()}


def _demo_key(arch: str) -> str:
    """Cache key of a demo CLIP's weights: changes when its model config, the data or the training recipe
    changes."""
    from demo_world import demo_config
    h = hashlib.sha1(json.dumps(demo_config(arch), sort_keys=True).encode())  # its recipe, not the others' entries
    for f in [MODEL_CONFIGS / f"{arch}.json", REPO / "demo_world.py",
              REPO / "configs" / "datasets" / "Digits.yaml", REPO / "configs" / "datasets" / "Shapes.yaml",
              REPO / "datasets" / "digits.py", REPO / "datasets" / "shapes.py"]:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def demo_weights_path(left_out: Sequence[tuple[str, str]] = (), arch: str = DEMO) -> Path:
    """Where a demo CLIP's weights are cached; with `left_out`, those of its oracle without those classes."""
    if not left_out:
        return cache_dir() / "demo" / f"{arch}-{_demo_key(arch)}.pt"
    key = hashlib.sha1(json.dumps(sorted({tuple(p) for p in left_out})).encode()).hexdigest()[:12]
    return cache_dir() / "demo" / f"oracle-{_demo_key(arch)}-{key}.pt"  # the model's key tells the models apart


def _demo_weights(arch: str, model, preprocess, tokenizer, data_root: str,
                  left_out: Sequence[tuple[str, str]] = ()) -> dict:
    """A demo CLIP's (or an oracle's) weights: trained once on CPU (deterministic), then read from the cache."""
    path = demo_weights_path(left_out, arch)
    with locked(path):  # processes that start at once (sweep jobs, test workers) train it once
        if not path.is_file():
            from demo_world import demo_config, train_demo_model
            what = f"the demo CLIP {arch}" + (f" without {sorted(map(tuple, left_out))}" if left_out else "")
            print(f"training {what} once (cached at {path}) ...")
            record = train_demo_model(model, preprocess, tokenizer, data_root, demo_config(arch), left_out)
            print(f"{what} trained in {record['seconds']} s")
            atomic_torch_save(path, model.state_dict())
            atomic_write_json(path.with_suffix(".json"), {"model": arch, **record})  # what the file is, for people
    return torch.load(path, map_location="cpu", weights_only=True)


def load_demo_oracle(left_out: Sequence[tuple[str, str]], device: str = "cpu",
                     data_root: str | None = None, arch: str = DEMO) -> LoadedModel:
    """The oracle of unlearning: demo CLIP `arch` retrained without the images of the `left_out`
    (dataset, classname) pairs (same seed, captions and schedule: demo_world.py), trained on
    first use and cached. Its `pretrained` is the cached file, so its baselines and results are
    keyed apart from the demo CLIP's."""
    from demo_world import demo_data, left_out_problems
    name = resolve_arch(arch)
    if name not in DEMO_MODELS:
        raise UserError(f"the oracle retrains a demo CLIP ({', '.join(DEMO_MODELS)}), not '{arch}'")
    data_root = data_root or default_data_root()
    left_out = sorted({tuple(p) for p in left_out}) if not isinstance(left_out, str) else [left_out]
    problems = left_out_problems(demo_data(data_root).classes, left_out)
    check_all(problems or ([] if left_out else ["the oracle needs at least one (dataset, classname) to leave out"]))
    lm = load_model(name, "none", "cpu")
    lm.model.load_state_dict(_demo_weights(name, lm.model, lm.preprocess, lm.tokenizer, data_root, left_out))
    lm.model = lm.model.to(device).eval()
    lm.pretrained = str(demo_weights_path(left_out, name))
    return lm
