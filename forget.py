"""forget: make any open_clip model forget class names, with no image and no dataset, and hand it over.

For a user who has names and nothing else: the forgotten names are removed in one request (as
train.py --protocol joint) by a method that needs no image (`improved`, `textspace`, `projedit`), against a keep set of names that must stay where they are (default: open_clip's 1,000 ImageNet
class names), each in the context templates. The result is written as an open_clip model folder
(export.py: plain open_clip loads it as local-dir:DIR) with a blast-radius report, the one audit figure
that needs no image: how far the text embeddings of names outside both sets moved (in its
unlearning.json, under "report"; the headline under "audit", also in the model card).

    python forget.py --model RN50 --pretrained openai --classes "Pekinese,toy poodle" --out forgot_dogs
    python forget.py --model demo --classes three --keep my_names.txt --out forgot_three

From a notebook, the same without files:

    from forget import apply, unlearn
    changed = unlearn(model, tokenizer, forget=["toy poodle"], keep=["beagle", "tabby cat"])
    apply(model, changed)            # the model no longer knows "toy poodle"
"""
from __future__ import annotations

import interrupts  # noqa: F401  (first: Ctrl-C during the imports below is one line)

import argparse
import json
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import methods
from common import ArgumentParser, UserError, check_all, check_device, check_writable, class_seed, default_device, \
    run_cli, seed_everything
from export import commit, export_model, weights_hash
from methods.base import ForgetTask, fill
from methods.pieces import name_words, unrelated_words
from models import applied, apply_changes, check_model, load_model, model_config, resolve_arch
from zeroshot import build_classifier

ZERO_SHOT = "a photo of a {}."  # open_clip's ImageNet zero-shot prompt, the first template
NAMES = "names"  # the dataset name of a request made from names alone (unlearning.json, the seeds)
TEMPLATE_SETS = ("simple", "openai")  # open_clip's 7 simple ImageNet templates, or its 80 OpenAI ones
BLAST_PROMPTS = 1000  # names of the report's blast radius, from the tokenizer's vocabulary
BLAST_THRESHOLD = 0.05  # a prompt "moved" when 1 - cos exceeds this (the audit's default)


def template_set(spec: str) -> list:
    """The context templates: ZERO_SHOT, then open_clip's simple (7) or OpenAI (80) ImageNet templates, or a
    ';'-separated list of '{}' format strings (the first is the zero-shot one)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES
    if spec in TEMPLATE_SETS:
        return [ZERO_SHOT, *(SIMPLE_IMAGENET_TEMPLATES if spec == "simple" else OPENAI_IMAGENET_TEMPLATES)]
    given = [t.strip() for t in spec.split(";") if t.strip()]
    bad = [t for t in given if t.count("{}") != 1]
    if not given or bad:
        raise UserError(f"--templates: each template needs exactly one '{{}}' for the name, got {bad[0] if bad else spec!r}"
                        f" (or one of: {', '.join(TEMPLATE_SETS)})")
    return given


def configure(method: str, options: dict[str, Any]) -> tuple[Any, Any]:
    """The method module and its Config with `options`; a method that needs images, or an unknown option,
    is a UserError."""
    fields = methods.option_fields()
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise UserError(f"unknown option '{unknown[0]}' (options of --method {method}: see train.py --help)")
    mod, cfg, problems = methods.configure(method, argparse.Namespace(**{k: options.get(k) for k in fields}), {})
    if methods.needs_images(mod, cfg) or methods.side_sets(mod, cfg):
        problems.append(f"--method {method} trains on synthetic images: forget.py takes methods that need none "
                        "(improved, textspace, projedit); for image-side methods run datagen.py and train.py")
    check_all(problems)
    return mod, cfg


def unlearn(model: torch.nn.Module, tokenizer: Callable, forget: Sequence[str], keep: Sequence[str],
            method: str = "improved", templates: Sequence | None = None, seed: int = 0,
            **options: Any) -> dict[str, torch.Tensor]:
    """Forget the names `forget` from an open_clip CLIP `model`, keeping the names `keep` in place, in
    `templates` (str with '{}' or open_clip's callables; default ZERO_SHOT and open_clip's simple ImageNet
    ones). `options`: the method's options (train.py --help). Returns the changed tensors by state_dict
    name (the model itself is handed back as it was); `apply` puts them in. Every draw comes from `seed`."""
    forget, keep = list(forget), list(keep)
    both = sorted(set(forget) & set(keep))
    if both:
        raise UserError(f"'{both[0]}' is both to forget and to keep: take it out of the keep list")
    twice = sorted({c for c in forget if forget.count(c) > 1})
    if twice or not forget:
        raise UserError(f"forget names '{twice[0]}' twice" if twice else "no name to forget")
    mod, cfg = configure(method, options)
    if len(forget) > 1 and not methods.forgets_sets(mod, cfg):
        raise UserError(f"--method {method} forgets one name at a time (methods that forget a set: "
                        f"{', '.join(methods.SET_METHODS)})")
    ts = list(templates) if templates else template_set("simple")
    names = forget + keep
    device = next(model.parameters()).device
    tasks = [ForgetTask(model=model, tokenizer=tokenizer, classnames=names, template=ts[0], templates=ts,
                        class_index=i, images=None, caption="", other_prompts=[], dataset=NAMES,
                        syn_accuracy=lambda: float("nan"), seed=class_seed(seed, NAMES, c),
                        generator=torch.Generator(device=device).manual_seed(class_seed(seed, NAMES, c)))
             for i, c in enumerate(forget)]
    was_training = model.training
    model.eval()
    try:
        result = mod.unlearn(tasks[0], cfg) if len(tasks) == 1 else mod.unlearn_set(tasks, cfg)
    finally:
        model.train(was_training)
    return result.changed


apply = apply_changes  # put the tensors `unlearn` returned into the model, for good (models.apply_changes)


@torch.no_grad()
def report(model: torch.nn.Module, tokenizer: Callable, changed: dict, forget: list[str], keep: list[str],
           ts: list, n_unrelated: int = 0) -> dict:
    """What forgetting did to the text side, with no image: each forgotten name's zero-shot score against the
    keep set, before and after (the softmax share of its prompt on its own original embedding, the image
    stand-in the text-side methods use), and the blast radius on BLAST_PROMPTS names of the tokenizer's
    vocabulary that neither the keep set, the forget set nor the method's own `n_unrelated` unrelated
    prompts use (methods.pieces.unrelated_prompts: trained to stay, they would hide the damage)."""
    device = str(next(model.parameters()).device)
    every = [partial(fill, t) for t in ts]  # open_clip's classifier takes one kind of template: callables
    own = name_words(forget + keep)
    used = own | name_words(unrelated_words(tokenizer, n_unrelated, own) if n_unrelated else [])
    words = unrelated_words(tokenizer, BLAST_PROMPTS, used)
    blast = [fill(ts[0], w) for w in words]

    def embeddings() -> tuple[torch.Tensor, torch.Tensor]:
        """(names' unit mean embeddings over the templates, the blast prompts' unit embeddings), rows, CPU."""
        return (build_classifier(model, tokenizer, forget + keep, every, device).T.cpu(),
                build_classifier(model, tokenizer, words, [partial(fill, ts[0])], device).T.cpu())
    w0, b0 = embeddings()
    with applied(model, changed):
        w1, b1 = embeddings()
    proxy = w0[:len(forget)]  # each forgotten name's original embedding stands in for its images
    score = lambda w: (100 * proxy @ w.T).softmax(-1).diagonal()  # noqa: E731
    moved = (b1 - b0).pow(2).sum(-1) / 2
    top = moved.topk(5)
    return {"forgotten": {c: {"score_before": round(s0, 4), "score_after": round(s1, 4)}
                          for c, s0, s1 in zip(forget, score(w0).tolist(), score(w1).tolist())},
            "keep_moved_mean": round(((w1[len(forget):] - w0[len(forget):]).pow(2).sum(-1) / 2).mean().item(), 5),
            "blast_mean": round(moved.mean().item(), 5), "blast_count": int((moved > BLAST_THRESHOLD).sum()),
            "blast_prompts": len(blast), "blast_top": [[blast[i], round(v, 4)] for v, i in
                                                      zip(top.values.tolist(), top.indices.tolist())]}


# ----------------------------------------------------------------------------- command line
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description="Make an open_clip model forget class names (no image, no dataset) and write "
                                   "it as an open_clip model folder with a blast-radius report.")
    p.add_argument("--model", "--backbone_arch", dest="model", default="demo",
                   help="RN50, ViT-B/16, demo, any open_clip model, local-dir:DIR or hf-hub:ORG/REPO (default: demo)")
    p.add_argument("--pretrained", default=None, help="weights: openai (default for open_clip models), another "
                                                      "open_clip tag, a checkpoint file; the demo uses its own")
    p.add_argument("--classes", required=True, help="comma-separated names to forget")
    p.add_argument("--keep", default=None, metavar="FILE",
                   help="a text file of names to keep, one per line (default: open_clip's ImageNet class names)")
    p.add_argument("--templates", default="simple",
                   help="context templates: simple (a photo of a {}. and open_clip's 7), openai (its 80), or "
                        "';'-separated '{}' strings, the first the zero-shot one (default: simple)")
    p.add_argument("--method", default="improved", choices=methods.CHOICES,
                   help="a method that needs no image: improved (= textspace --adapt blocks+proj --margin 50), "
                        "textspace, projedit")
    p.add_argument("--out", required=True, metavar="DIR", help="the new model folder (must not exist, or be empty)")
    p.add_argument("--device", default=default_device())
    p.add_argument("--seed", type=int, default=0, help="fixes every random choice (default: 0)")
    p.add_argument("--data_root", default=None, help="where the demo model's data lives (demo only)")
    methods.add_options(p)
    return p.parse_args(argv)


def keep_names(path: str | None, forget: list[str]) -> list[str]:
    """The keep list: the file's names (a forgotten one in it is an error), or open_clip's ImageNet class
    names without the forgotten ones."""
    if path is None:
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
        return [c for c in dict.fromkeys(IMAGENET_CLASSNAMES) if c not in forget]
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--keep {path}: no such file (one name per line)")
    names = list(dict.fromkeys(line.strip() for line in file.read_text().splitlines() if line.strip()))
    both = [c for c in forget if c in names]
    if both:
        raise UserError(f"'{both[0]}' is in --classes and in the keep list {path}: take it out of one of them")
    if not names:
        raise UserError(f"--keep {path} names no class")
    return names


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    forget = [c.strip() for c in args.classes.split(",") if c.strip()]
    options = {k: getattr(args, k) for k in methods.option_fields() if getattr(args, k, None) is not None}
    _, problems = check_model(args.model, args.pretrained)
    out = Path(args.out)
    problems += check_device(args.device) + check_writable(str(out.parent))
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        problems.append(f"--out {out} exists and is not an empty folder: choose a new one")
    try:
        ts, keep = template_set(args.templates), keep_names(args.keep, forget)
        _, cfg = configure(args.method, options)
    except UserError as e:
        problems.append(str(e))
    check_all(problems)
    seed_everything(args.seed)
    lm = load_model(args.model, args.pretrained, args.device, args.data_root)
    print(f"forgetting {', '.join(forget)} from {lm.name} ({lm.pretrained}); keeping {len(keep)} names in "
          f"{len(ts)} templates")
    changed = unlearn(lm.model, lm.tokenizer, forget, keep, args.method, ts, args.seed, **options)
    figures = report(lm.model, lm.tokenizer, changed, forget, keep, ts, getattr(cfg, "n_unrelated", 0))
    info = {"base_model": {"arch": lm.name, "tag": lm.tag, "pretrained": lm.pretrained,
                           "weights_sha1": weights_hash(lm.model)},
            "forgotten": [[NAMES, c] for c in forget], "protocol": "joint", "method": args.method,
            "method_config": json.loads(json.dumps(asdict(cfg))),
            "seed": args.seed, "keep": {"file": args.keep, "names": len(keep), "templates": len(ts)},
            "commit": commit(), "audit": {"blast_mean": figures["blast_mean"], "blast_count": figures["blast_count"],
                                          "blast_prompts": figures["blast_prompts"],
                                          **{f"score_{c}": f"{v['score_before']:.3f} → {v['score_after']:.3f}"
                                             for c, v in figures["forgotten"].items()}},
            "report": figures}
    with applied(lm.model, changed):
        path = export_model(lm.model, model_config(resolve_arch(args.model)), out, info)
    for c, v in figures["forgotten"].items():
        print(f"{c}: zero-shot score against the keep set {v['score_before']:.3f} -> {v['score_after']:.3f}")
    print(f"keep set moved {figures['keep_moved_mean']:.4f} (mean 1-cos); blast radius {figures['blast_mean']:.4f}, "
          f"{figures['blast_count']}/{figures['blast_prompts']} names moved > {BLAST_THRESHOLD}")
    print(f"wrote {path}: open_clip.create_model_and_transforms('local-dir:{path}')")
    return figures


if __name__ == "__main__":
    run_cli(main)
