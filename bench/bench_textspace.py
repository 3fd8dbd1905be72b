"""Benchmark: textspace --adapt proj (its default) on cached projection inputs vs the whole text tower per step.

With `--adapt proj` only the text projection trains, so the features entering it are fixed: ours
computes them once and a step is a matrix product; the naive path (textspace.unlearn(cache=False))
runs every prompt through the text transformer, forward and backward, at every step. Both run the
same number of steps (the margin is set out of reach so that neither stops early); time includes
the one-off feature pass of ours.

    python bench/bench_textspace.py                                         # demo model, Digits, CPU
    python bench/bench_textspace.py --arch RN50 --pretrained none --dataset StanfordDogs --classes 20 --templates 4
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import REPO, atomic_write_json, default_device, seed_everything  # noqa: E402
from datasets import dataset_config  # noqa: E402
from datasets.base import ensemble_templates  # noqa: E402
from methods import textspace  # noqa: E402
from methods.base import ForgetTask  # noqa: E402
from models import load_model  # noqa: E402


def class_names(dataset: str, data_root: str | None) -> list[str]:
    """The dataset's class names: the demo's from its data, a real dataset's from the paper's published file."""
    if dataset in ("Digits", "Shapes"):
        from common import default_data_root
        from datasets import build_dataset
        return build_dataset(dataset, data_root or default_data_root()).classnames
    ref = json.loads((REPO / "reference" / "zeroshot_openai_RN50.json").read_text())
    return list(ref[dataset])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="demo")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--dataset", default="Digits", help="Digits, Shapes or one of the paper's four")
    p.add_argument("--classes", type=int, default=0, help="use only this many class names (0 = all)")
    p.add_argument("--templates", type=int, default=0, help="use only this many templates (0 = all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default=default_device())
    p.add_argument("--data_root", default=None)
    p.add_argument("--out", default=None, help="default: bench/out/textspace_<arch>_<dataset>.json")
    args = p.parse_args()
    seed_everything(0)
    lm = load_model(args.arch, args.pretrained, args.device)
    cfg_d = dataset_config(args.dataset)
    names = class_names(args.dataset, args.data_root)[:args.classes or None]
    templates = ensemble_templates(cfg_d)[:args.templates or None]
    cfg = textspace.Config(max_steps=args.steps, margin=1e4)  # out of reach: every run takes --steps steps
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    seconds = {}
    for name, cache in (("naive", False), ("ours", True)):
        task = ForgetTask(model=copy.deepcopy(lm.model), tokenizer=lm.tokenizer, classnames=names,
                          template=cfg_d.template, class_index=0, images=None, caption="", other_prompts=[],
                          syn_accuracy=lambda: float("nan"), templates=templates,
                          generator=torch.Generator(device=args.device).manual_seed(0), seed=0)
        sync()
        t0 = time.perf_counter()
        result = textspace.unlearn(task, cfg, cache=cache)
        sync()
        seconds[name] = time.perf_counter() - t0
        assert result.summary["steps"] == args.steps
    n_prompts = len(names) * len(templates) + cfg.n_unrelated
    row = {"arch": lm.tag, "device": args.device, "dataset": args.dataset, "classes": len(names),
           "templates": len(templates), "prompts": n_prompts, "steps": args.steps,
           "naive_s": seconds["naive"], "ours_s": seconds["ours"], "ratio": seconds["naive"] / seconds["ours"]}
    print(f"{lm.tag} on {args.device}, {args.dataset} ({len(names)} classes x {len(templates)} templates + "
          f"{cfg.n_unrelated} unrelated prompts), {args.steps} steps: naive {seconds['naive']:.2f} s, "
          f"ours {seconds['ours']:.2f} s: {row['ratio']:.1f}x")
    atomic_write_json(args.out or f"bench/out/textspace_{lm.tag}_{args.dataset}.json", row)


if __name__ == "__main__":
    main()
