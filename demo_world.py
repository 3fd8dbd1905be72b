"""The embedded demo CLIP: a small open_clip model trained on CPU on Digits + Shapes.

It lets the whole pipeline run for real without downloading anything. Training is
deterministic for a seed; the weights are cached (see models.load_model) and never committed.
Each step contrasts a batch of images against one caption per class of both datasets, so the
text tower learns every class name and the image tower learns to match them.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from common import REPO, seed_everything
from datasets import build_dataset
from datasets.base import load_rgb

CONFIG = REPO / "configs" / "demo_world.yaml"


def demo_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _load_split(ds, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([preprocess(load_rgb(d.impath)) for d in ds.train])
    y = torch.tensor([d.label for d in ds.train])
    return x, y


def train_demo_model(model: torch.nn.Module, preprocess, tokenizer, data_root: str) -> dict:
    """Train `model` in place on the demo datasets; returns a small record of the run."""
    cfg = demo_config()
    seed_everything(cfg["seed"])
    # CPU float sums depend on the thread count: fix it, so every machine trains the same model
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg["threads"])
    try:
        return _train(model, preprocess, tokenizer, data_root, cfg)
    finally:
        torch.set_num_threads(threads)


def _train(model: torch.nn.Module, preprocess, tokenizer, data_root: str, cfg: dict) -> dict:
    xs, ys, prompts, offset = [], [], [], 0
    for name in cfg["datasets"]:
        ds = build_dataset(name, data_root)
        x, y = _load_split(ds, preprocess)
        xs.append(x)
        ys.append(y + offset)
        offset += len(ds.classnames)
        # tokens[t][c]: class c written with template t of its dataset
        prompts.append([[t.format(c) for c in ds.classnames] for t in cfg["templates"][name]])
    x, y = torch.cat(xs), torch.cat(ys)
    tokens = [tokenizer([p for t in ds_prompts for p in t]).view(len(ds_prompts), -1, tokenizer.context_length)
              for ds_prompts in prompts]

    g = torch.Generator().manual_seed(cfg["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = cfg["epochs"] * (len(x) // cfg["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps, pct_start=0.1)
    model.train()
    start = time.time()
    bar = tqdm(total=steps, desc="training the demo CLIP", unit="step")
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // cfg["batch_size"]):
            idx = perm[i * cfg["batch_size"]:(i + 1) * cfg["batch_size"]]
            # one random template per class, per dataset
            text = torch.cat([tok[torch.randint(len(tok), (tok.shape[1],), generator=g), torch.arange(tok.shape[1])]
                              for tok in tokens])
            img_f = F.normalize(model.encode_image(x[idx]), dim=-1)
            txt_f = F.normalize(model.encode_text(text), dim=-1)
            logits = model.logit_scale.exp() * img_f @ txt_f.T
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)  # as in CLIP: scale at most 100
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return {"seconds": round(time.time() - start, 1), "steps": steps, "final_loss": round(loss.item(), 4)}
