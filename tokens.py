"""Which tokens a text-side edit touches, per forget class, found with the tokenizer alone (no weights):
`python audit.py --tokens`. A class name that shares every sub-word token with other class names (the
paper's `toy poodle`, a person's first name) cannot be forgotten by editing token rows.
"""
from __future__ import annotations

import json

import open_clip
import pandas as pd
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from datasets import dataset_config
from forget_cls import FORGET_CLASSES
from methods.hinge import own_token_rows
from models import resolve_arch
from probes import AuditConfig
from tables import to_markdown
from zeroshot import reference_file


def token_report(tokenizer, classnames: dict[str, list[str]], templates: dict[str, str],
                 forget: dict[str, list[str]], blast_template: str = AuditConfig.blast_template) -> list[dict]:
    """Per forget class, what each text-side method would change, found with the tokenizer alone.

    The token-row method (hinge --towers token) edits the tokens of the class's prompt
    that no other class prompt of the run uses (methods.hinge.own_token_rows, every dataset of `classnames`
    being the run); `imagenet_prompts_hit` counts open_clip's ImageNet prompts that contain one of
    them (they move too). Methods that train the text transformer (the paper's, --towers text/both)
    change the embedding of every prompt; --towers image changes none.
    """
    prompts = {d: [templates[d].format(c.replace("_", " ")) for c in names] for d, names in classnames.items()}
    imagenet = tokenizer([blast_template.format(c) for c in IMAGENET_CLASSNAMES])
    rows = []
    for d, names in forget.items():
        tokens = tokenizer(prompts[d])
        also = tokenizer([p for o in classnames if o != d for p in prompts[o]]) if len(classnames) > 1 else None
        for cls in names:
            idx = classnames[d].index(cls)
            own = own_token_rows(tokens, idx, also)
            in_order = [t for t in tokens[idx].tolist() if t in own]
            hit = torch.isin(imagenet, torch.tensor(own, dtype=imagenet.dtype)).any(1).sum().item() if own else 0
            ids = list(dict.fromkeys(in_order))
            rows.append({"ds": d, "name": cls, "prompt": prompts[d][idx], "token_ids": ids,
                         "token_rows": [token_text(tokenizer, t) for t in ids], "imagenet_prompts_hit": int(hit)})
    return rows


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decoder[token_id].replace("</w>", "")


def paper_token_report(arch: str = "RN50") -> list[dict]:
    """token_report for the paper's 12 classes: class lists from reference/, templates from configs/."""
    ref = json.loads(reference_file(arch, "openai").read_text())
    classnames = {d: list(classes) for d, classes in ref.items()}
    templates = {d: dataset_config(d).template for d in classnames}
    return token_report(open_clip.get_tokenizer(resolve_arch(arch)), classnames, templates,
                        {d: FORGET_CLASSES[d] for d in classnames})


def dataset_token_report(datasets: dict, arch: str = "RN50") -> list[dict]:
    """token_report for every class of `datasets` (name -> DatasetSplits), e.g. the person datasets
    PinsFaces and CelebFaces, whose names share first names and surname pieces: each class is a forget
    class, and the other classes of all the datasets are the run's."""
    classnames = {d: list(ds.classnames) for d, ds in datasets.items()}
    return token_report(open_clip.get_tokenizer(resolve_arch(arch)), classnames,
                        {d: ds.template for d, ds in datasets.items()}, classnames)


def print_token_report(rows: list[dict]) -> None:
    df = pd.DataFrame([{**r, "token_rows": " ".join(f"`{t}`" for t in r["token_rows"]) or "none: cannot run"}
                       for r in rows]).drop(columns="token_ids")
    print("Tokens the token-row method (hinge --towers token) edits: those of the class's prompt that "
          "no other class prompt of the datasets uses; imagenet_prompts_hit: ImageNet prompts that contain one "
          "of them (they move too). Methods that train the text transformer (the paper's, --towers text) change "
          "every prompt's embedding; --towers image changes none.\n")
    print(to_markdown(df), end="")
    print(f"\n{sum(not r['token_rows'] for r in rows)} of {len(rows)} classes have no token of their own.")
