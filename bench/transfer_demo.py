"""Transfer figure: do a model's synthetic images carry its classes?

For every class of each dataset, synthesise --n images from noise with datagen.synthesise (as
the forget sets are made), train a logistic regression on the model's image features of those
synthetic images only, and test it on the real test images. For scale, the same classifier
trained on --n real training images per class, and the model's zero-shot accuracy.

    python bench/transfer_demo.py                         # the demo CLIP, Digits and Shapes
    python bench/transfer_demo.py --pretrained FILE.pt    # a variant of it (e.g. an oracle)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import add_common_args, atomic_write_json, check_all, check_writable, class_seed, run_cli  # noqa: E402
from datagen import DatagenConfig, synthesise  # noqa: E402
from datasets import build_datasets  # noqa: E402
from models import check_model, load_model  # noqa: E402
from synthetic import clip_norm, model_view  # noqa: E402
from zeroshot import classifier_weights, loader  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument("--n", type=int, default=16, help="synthetic (and real, for scale) images per class")
    p.add_argument("--max_steps", type=int, default=300, help="datagen steps before an attempt is given up")
    p.add_argument("--high_prob", type=float, default=DatagenConfig.high_prob, help="datagen's acceptance threshold")
    p.add_argument("--out", default="bench/out/transfer_demo.json", help="JSON file for the figures")
    return p.parse_args(argv)


@torch.no_grad()
def features(model, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(images), dim=-1).cpu()


def encode(model, items, preprocess, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features and labels of real images."""
    feats, labels = zip(*[(features(model, x.to(device)), y) for x, y in loader(items, preprocess, device)])
    return torch.cat(feats), torch.cat(labels)


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    clf = LogisticRegression(max_iter=2000).fit(train_x.numpy(), train_y.numpy())
    return float((clf.predict(test_x.numpy()) == test_y.numpy()).mean())


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    problems = [f"--{k} must be at least 1" for k in ("n", "max_steps") if getattr(args, k) < 1]
    problems += check_model(args.backbone_arch, args.pretrained)[1] + check_writable(Path(args.out).parent)
    datasets, ds_problems = build_datasets(args.run_ds, args.data_root)
    check_all(problems + ds_problems)
    lm = load_model(args.backbone_arch, args.pretrained, args.device, args.data_root)
    model, size = lm.model, lm.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean, std = clip_norm(model)
    cfg = DatagenConfig(n_generated=args.n, batch_size=args.n, max_steps=args.max_steps, high_prob=args.high_prob)
    out = {"model": lm.pretrained, "n": args.n, "max_steps": args.max_steps, "high_prob": args.high_prob}
    for name, ds in datasets.items():
        start = time.time()
        w = classifier_weights(lm, ds, args.device)
        test_x, test_y = encode(model, ds.test, lm.preprocess, args.device)
        syn_x, syn_y, real_items, steps = [], [], [], []
        for label, classname in enumerate(tqdm(ds.classnames, desc=f"{name}: synthesising", unit="class")):
            gen = torch.Generator().manual_seed(class_seed(args.seed, name, classname))
            res = synthesise(model, w, label, size, cfg, gen, args.device)
            syn_x.append(features(model, model_view(res.images.to(args.device), mean, std)))
            syn_y += [label] * len(res.images)
            steps.append(res.steps.float())
            real_items += [d for d in ds.train if d.label == label][:args.n]
        real_x, real_y = encode(model, real_items, lm.preprocess, args.device)
        out[name] = {
            "zero_shot_acc": float(((test_x @ w.cpu()).argmax(-1) == test_y).float().mean()),
            "transfer_acc": probe_accuracy(torch.cat(syn_x), torch.tensor(syn_y), test_x, test_y),
            "real_probe_acc": probe_accuracy(real_x, real_y, test_x, test_y),
            "synthetic_images": len(syn_y), "median_steps": float(torch.cat(steps).median()),
            "seconds": round(time.time() - start, 1)}
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in out[name].items()})
    atomic_write_json(args.out, out)
    print(f"-> {args.out}")
    return out


if __name__ == "__main__":
    run_cli(main)
