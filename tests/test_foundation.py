"""Model loading, the demo world and zero-shot evaluation."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from common import UserError
from models import load_model, resolve_arch


@pytest.mark.parametrize("arch,name,n_params", [("RN50", "RN50-quickgelu", 102_007_137),
                                                ("ViT-B/16", "ViT-B-16-quickgelu", 149_620_737)])
def test_paper_backbones_build_without_weights(arch, name, n_params):
    lm = load_model(arch, pretrained="none")
    assert lm.name == name
    assert sum(p.numel() for p in lm.model.parameters()) == n_params
    # OpenAI weights need QuickGELU (SPEC §5): the text MLP must use it
    act = lm.model.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"
    x = lm.preprocess(__import__("PIL.Image").Image.new("RGB", (300, 200)))
    assert x.shape == (3, 224, 224)
    mean = lm.preprocess.transforms[-1].mean
    assert tuple(round(m, 4) for m in mean) == (0.4815, 0.4578, 0.4082)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UserError, match="unknown model 'RN5O'.*did you mean.*RN50"):
        resolve_arch("RN5O")


def test_unknown_pretrained_tag_is_a_user_error():
    with pytest.raises(UserError, match="no pretrained weights 'opneai'.*did you mean: openai"):
        load_model("RN50", pretrained="opneai")


def test_demo_model_zero_shot_accuracy(demo, digits, shapes):
    from conftest import zero_shot_bar
    for ds in (digits, shapes):
        full, alias_acc = zero_shot_bar(demo, ds)
        assert full >= 0.90, (ds.name, full)
        assert alias_acc >= 0.80, (ds.name, alias_acc)


def test_demo_classes_are_fine_grained_with_disjoint_aliases(demo, digits, shapes, data_root):
    """Shapes' names share words across classes (as the paper's dog breeds do); every class has an
    alias sharing no token with its name; every training caption fits the text context untruncated."""
    from demo_world import demo_data
    words = Counter(w for c in shapes.classnames for w in c.split())
    assert all(len(c.split()) > 1 and all(words[w] > 1 for w in c.split()) for c in shapes.classnames)
    for ds in (digits, shapes):
        for c in ds.classnames:
            assert ds.aliases.get(c), (ds.name, c)
            assert not set(demo.tokenizer.encode(c)) & set(demo.tokenizer.encode(ds.aliases[c][0])), (c, ds.aliases[c])
    captions = demo_data(data_root).captions
    assert max(len(demo.tokenizer.encode(t)) + 2 for t in captions) <= demo.tokenizer.context_length
    assert any("crimson pentagram" in t for t in captions)  # the aliases are trained on


def test_changed_generator_regenerates_the_demo_data(tmp_path):
    """A dataset written by other generator settings is made again, stale files removed; an
    unchanged one is left alone."""
    from dataclasses import replace
    from datasets import build_dataset, dataset_config
    from datasets.digits import materialise
    cfg = dataset_config("Digits")
    first = build_dataset("Digits", tmp_path)
    image, split = Path(first.test[0].impath), first.root / cfg.split_file
    before = image.read_bytes()
    stale = first.root / cfg.image_dir / "old class" / "train_00000.png"
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    mtime = split.stat().st_mtime_ns
    materialise(first.root, cfg)
    assert split.stat().st_mtime_ns == mtime and stale.exists()  # same generator: nothing rewritten
    materialise(first.root, replace(cfg, extra={**cfg.extra, "seed": cfg.extra["seed"] + 1}))
    assert not stale.exists() and image.read_bytes() != before
    materialise(first.root, cfg)
    assert image.read_bytes() == before


def test_local_checkpoint_round_trip(demo, tmp_path, data_root):
    path = tmp_path / "demo_copy.pt"
    torch.save(demo.model.state_dict(), path)
    again = load_model("demo", pretrained=str(path), data_root=data_root)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(demo.model.encode_image(x), again.model.encode_image(x))
    path.write_bytes(path.read_bytes()[:1000])  # truncated file: a clear error, no traceback
    with pytest.raises(UserError, match="cannot load checkpoint"):
        load_model("demo", pretrained=str(path), data_root=data_root)


def test_demo_splits_are_stratified_disjoint_and_deterministic(digits, shapes, tmp_path):
    from datasets import build_dataset
    for ds in (digits, shapes):
        paths = [set(d.impath for d in ds.split(s)) for s in ("train", "val", "test")]
        assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
        per_class = {s: Counter(d.label for d in ds.split(s)) for s in ("train", "val", "test")}
        for s in per_class:  # stratified: every class has the same share of its images in each split
            shares = [per_class[s][c] / sum(per_class[t][c] for t in per_class) for c in range(len(ds.classnames))]
            assert min(shares) > 0 and max(shares) - min(shares) < 0.02, (ds.name, s, shares)
        again = build_dataset(ds.name, tmp_path)  # regenerated from scratch elsewhere
        assert json.loads((again.root / "split_{}.json".format(ds.name.lower())).read_text()) == \
            json.loads((ds.root / "split_{}.json".format(ds.name.lower())).read_text())
        a, b = ds.test[7].impath, again.test[7].impath
        assert open(a, "rb").read() == open(b, "rb").read()


class _Toy(torch.nn.Module):
    """encode_image returns the first two pixels: embeddings fully under the test's control."""

    def encode_image(self, x):
        return x.flatten(1)[:, :2]


def test_zero_shot_against_hand_computed_case():
    from zeroshot import class_figures, logits, predict
    w = torch.tensor([[1.0, 0.0, 0.7071], [0.0, 1.0, 0.7071]])  # classes along x, y, diagonal
    imgs = torch.tensor([[3.0, 0.1], [0.2, 5.0], [1.0, 1.1], [1.0, -1.0]]).view(4, 2, 1, 1)
    labels = torch.tensor([0, 1, 2, 2])
    lg = logits(_Toy(), imgs, w)
    assert torch.allclose(lg[0], 100 * torch.tensor([3.0, 0.1, 3.1 * 0.7071]) / (3.0 ** 2 + 0.01) ** 0.5)
    preds, ys = predict(_Toy(), [(imgs, labels)], w, "cpu")
    assert preds.tolist() == [0, 1, 2, 0]
    figs = class_figures(preds, ys, 2)
    assert figs == {"cls_acc_test": 0.5, "no_cls_acc": 1.0, "full_acc": 0.75}
