"""The hand-over folder: an unlearned model in open_clip's Hugging Face layout, which plain open_clip loads
with no code of this project (`open_clip.create_model_and_transforms("local-dir:DIR")`; after `hf upload`,
`"hf-hub:USER/REPO"`), and which this project's scripts take as `--backbone_arch local-dir:DIR`:

    open_clip_config.json        the model config and preprocessing (open_clip.push_to_hf_hub.save_config_for_hf)
    open_clip_model.safetensors  every tensor of the unlearned model
    unlearning.json              what was forgotten and how: the base model and its weights' hash, the classes,
                                 the protocol, the method and its full config, the seed, the project's commit,
                                 and the audit's headline once audit.py has audited the run (add_audit)
    README.md                    a model card, with the YAML header the Hub reads

open_clip's save_for_hf also saves a Hugging Face tokenizer, which open_clip's own BPE tokenizer (RN50,
ViT-B/16, the demo) does not have; the config alone is enough for open_clip to rebuild that tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from open_clip.push_to_hf_hub import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, save_config_for_hf

from common import REPO, atomic_write_json, atomic_write_text

INFO, CARD = "unlearning.json", "README.md"


def weights_hash(model: torch.nn.Module) -> str:
    """sha1 of every tensor of a model's state, in name order: the same weights, the same hash."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def commit() -> str:
    """The project's git commit, with '+changes' when the work tree differs from it ('unknown' outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty else "")


def export_model(model: torch.nn.Module, model_cfg: dict, out: str | Path, info: dict) -> Path:
    """Write `model` (as it is now) into the folder `out` in open_clip's layout, with `info` as unlearning.json
    and a model card. The folder appears whole or not at all (written beside it, then renamed; a folder
    already there is replaced)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        state = {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
        safetensors.torch.save_file(state, tmp / HF_SAFE_WEIGHTS_NAME)
        save_config_for_hf(model, tmp / HF_CONFIG_NAME, model_config=model_cfg)
        atomic_write_json(tmp / INFO, info)
        (tmp / CARD).write_text(model_card(info))
        old = None
        if out.exists():  # validated by the caller: empty, or an earlier export of the same run
            old = out.rename(out.parent / f".{out.name}.old.{tmp.name}")
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def model_card(info: dict) -> str:
    """README.md of an exported model: the Hub's YAML header, then what was forgotten, how, and how to load it."""
    forgotten = ", ".join(f"`{c}` ({d})" for d, c in info["forgotten"])
    header = "\n".join(["---", "library_name: open_clip", "license: other", "tags:", "- clip", "- open_clip",
                        "- machine-unlearning", "pipeline_tag: zero-shot-image-classification", "---"])
    audit = info.get("audit")
    lines = [header, "", f"# {info['base_model']['arch']} with classes forgotten", "",
             f"An open_clip CLIP model ({info['base_model']['arch']}, weights `{info['base_model']['pretrained']}`) "
             f"from which these classes were unlearned: {forgotten}.", "",
             f"- method: `{info['method']}`, protocol: `{info['protocol']}`, seed {info['seed']}",
             f"- base weights' hash: `{info['base_model']['weights_sha1']}`; project commit `{info['commit']}`",
             "- the full configuration is in `unlearning.json`", ""]
    if audit:
        lines += ["Audit (original → unlearned, on the forgotten classes' test images; blast: text embeddings of "
                  "prompts outside the run that moved):", ""] + \
                 [f"- {k}: {v}" for k, v in audit.items()] + [""]
    lines += ["```python", "import open_clip",
              "model, _, preprocess = open_clip.create_model_and_transforms(\"local-dir:PATH\")  # or hf-hub:USER/REPO",
              "tokenizer = open_clip.get_tokenizer(\"local-dir:PATH\")", "```", ""]
    return "\n".join(lines)


def add_audit(folder: str | Path, headline: dict[str, str]) -> None:
    """Put the audit's headline figures (`headline`: label -> text) into an exported folder's unlearning.json
    and model card, each file replaced whole."""
    folder = Path(folder)
    info = json.loads((folder / INFO).read_text())
    info["audit"] = headline
    atomic_write_json(folder / INFO, info)
    atomic_write_text(folder / CARD, model_card(info))


def weights_file(name: str) -> Path:
    """The weights file of a local-dir: model, or of a hf-hub: model (from the Hugging Face cache, downloaded
    there first if need be): its content keys the model's cached figures and synthetic sets."""
    if name.startswith("local-dir:"):
        return Path(name.split(":", 1)[1]) / HF_SAFE_WEIGHTS_NAME
    from huggingface_hub import hf_hub_download
    return Path(hf_hub_download(name.split(":", 1)[1], HF_SAFE_WEIGHTS_NAME))


def read_info(name: str) -> dict | None:
    """unlearning.json of a local-dir: model (None for other names, or a folder without one)."""
    if not name.startswith("local-dir:"):
        return None
    path = Path(name.split(":", 1)[1]) / INFO
    return json.loads(path.read_text()) if path.is_file() else None


def base_tag(name: str) -> str | None:
    """The base model's short name of an exported model (its configs/archs settings apply), else None."""
    info = read_info(name)
    return info["base_model"]["tag"] if info else None


def describe_missing(name: str, error: Exception) -> str:
    """One line for a local-dir: / hf-hub: name that gives no open_clip model."""
    if name.startswith("local-dir:"):
        folder = Path(name.split(":", 1)[1])
        if not folder.is_dir():
            return f"{name}: folder {folder} not found"
        return f"{name}: {folder} has no {HF_CONFIG_NAME}: not an open_clip model folder (train.py --export writes one)"
    return (f"{name}: cannot get its {HF_CONFIG_NAME} ({type(error).__name__}); without network, download the repo "
            "once (huggingface-cli download ORG/REPO) and set HF_HUB_OFFLINE=1")
