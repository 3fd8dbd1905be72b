"""datagen options beyond the paper (beyond.py): each test can fail if the piece stops doing its job."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import beyond
from synthetic import noise_seed
from zeroshot import forget_margin, logits


# ----------------------------------------------------------------------------- small fakes
class PatternModel(torch.nn.Module):
    """Class 0 scores by the correlation of the image with a fixed high-frequency pattern (adversarial-like,
    destroyed by any shift); class 1 by a constant. Embeddings are 2-d, classifier weights the identity."""

    def __init__(self, size: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.pattern = torch.randint(0, 2, (3, size, size), generator=g).float() * 2 - 1

    def encode_image(self, x):
        corr = (x * self.pattern).flatten(1).sum(1) / self.pattern.numel()
        return torch.stack([corr, torch.full_like(corr, 0.3)], dim=1)


class MeanModel(torch.nn.Module):
    """Class 0 scores by the mean brightness: robust to shifts, small scalings and pixel noise."""

    def encode_image(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([m, torch.full_like(m, 0.3)], dim=1)


W2 = torch.eye(2)


def test_augmented_acceptance_rejects_an_image_that_only_holds_unaugmented():
    model = PatternModel()
    fragile = model.pattern.unsqueeze(0).clone()  # class 0 by a wide margin, but only pixel-aligned
    gen = torch.Generator().manual_seed(1)
    cand = torch.ones(1, dtype=torch.bool)
    assert forget_margin(logits(model, fragile, W2), 0).item() > 20
    assert beyond.accept_mask(model, fragile, W2, 0, margin=20, n_augment=0, generator=gen, candidates=cand).item()
    assert not beyond.accept_mask(model, fragile, W2, 0, margin=20, n_augment=16, generator=gen, candidates=cand).item()
    robust = torch.full((1, 3, 16, 16), 2.0)
    assert beyond.accept_mask(MeanModel(), robust, W2, 0, margin=20, n_augment=16, generator=gen, candidates=cand).item()
    # the margin alone rejects a borderline image; a non-candidate is never accepted
    border = torch.full((1, 3, 16, 16), 0.32)
    assert not beyond.accept_mask(MeanModel(), border, W2, 0, margin=20, n_augment=0, generator=gen,
                                  candidates=cand).item()
    assert not beyond.accept_mask(MeanModel(), robust, W2, 0, 20, 0, gen, torch.zeros(1, dtype=torch.bool)).item()


def test_accept_margin_decays_after_failed_attempts_so_a_hard_class_finishes(demo, digits):
    from datagen import DatagenConfig, synthesise
    from zeroshot import classifier_weights
    w = classifier_weights(demo, digits, "cpu")
    # a margin no image reaches (1000 logits): every attempt fails until it has dropped to 0 ...
    cfg = DatagenConfig(n_generated=4, high_prob=0.5, max_steps=20, batch_size=4, max_failed=400,
                        accept_margin=1000.0, sub_margin=250.0)
    res = synthesise(demo.model, w, 3, 32, cfg, torch.Generator().manual_seed(0), "cpu")
    assert res.complete and res.failed >= 4 and (res.margins == 0).all()
    # ... without the decay it never finishes and keeps nothing
    cfg.sub_margin, cfg.max_failed = 0.0, 8
    res = synthesise(demo.model, w, 3, 32, cfg, torch.Generator().manual_seed(0), "cpu")
    assert not res.complete and len(res.images) == 0


# ----------------------------------------------------------------------------- through the scripts
def _datagen(tmp_path, data_root, out, *extra):
    import datagen
    return datagen.main(["--backbone_arch", "demo", "--run_ds", "Shapes", "--forget_labels", "star",
                         "--n_generated", "6", "--out_dir", str(out), "--data_root", data_root,
                         "--device", "cpu", *extra])


@pytest.fixture(scope="module")
def star_sets(tmp_path_factory, data_root, shapes):
    """A training set and a held-out set (another noise seed) of the demo model for star, generated
    once, and a retain set for the other Shapes classes (random images in the file format: the
    plumbing is tested here, not the quality of the images)."""
    from synthetic import read_synthetic, save_synthetic, synthetic_path
    root = tmp_path_factory.mktemp("beyond_gen")
    _datagen(root, data_root, root / "gen")
    _datagen(root, data_root, root / "gen" / "heldout", "--noise_seed", "1000")
    meta = read_synthetic(root / "gen" / "Shapes" / "star.pt")["meta"]
    g = torch.Generator().manual_seed(0)
    for i, c in enumerate(shapes.classnames):
        save_synthetic(synthetic_path(root / "gen" / "retain", "Shapes", c), torch.randn(2, 3, 32, 32, generator=g),
                       torch.ones(2), torch.ones(2, dtype=torch.long), torch.ones(2),
                       {**meta, "classname": c, "class_index": i})
    return root / "gen"


def test_datagen_improved_makes_forget_and_heldout_sets_and_retain_on_request(tmp_path, data_root, shapes):
    from synthetic import read_synthetic
    fast = ["--accept_margin", "2", "--max_steps", "30", "--n_generated", "3", "--high_prob", "0.5", "--max_failed", "2"]
    _datagen(tmp_path, data_root, tmp_path / "a", "--method", "improved", *fast)
    forget, held = read_synthetic(tmp_path / "a" / "Shapes" / "star.pt"), \
        read_synthetic(tmp_path / "a" / "heldout" / "Shapes" / "star.pt")
    assert forget["meta"]["config"]["accept_margin"] == 2.0  # the user's option wins over the preset's 30
    assert len(forget["images"]) == 3 and len(held["images"]) == beyond.DATAGEN_PRESETS["improved"]["heldout_n"]
    assert noise_seed(held["meta"]) != noise_seed(forget["meta"])
    assert not (tmp_path / "a" / "retain").exists()
    _datagen(tmp_path, data_root, tmp_path / "b", "--method", "improved", "--retain_per_class", "2", *fast)
    retain = sorted(p.stem for p in (tmp_path / "b" / "retain" / "Shapes").glob("*.pt"))
    assert retain == sorted(shapes.classnames)
    from common import UserError
    with pytest.raises(UserError, match="--retain_per_class needs --method improved"):
        _datagen(tmp_path, data_root, tmp_path / "c", "--retain_per_class", "2")


def test_datagen_options_are_documented(capsys):
    import datagen
    with pytest.raises(SystemExit):
        datagen.parse_args(["--help"])
    text = capsys.readouterr().out
    for opt in ("--accept_margin", "--augment_accept", "--noise_seed", "--method"):
        assert opt in text


def test_datagen_all_classes_and_default_meta(tmp_path, data_root, shapes, star_sets):
    import datagen
    args = datagen.parse_args(["--backbone_arch", "demo", "--run_ds", "Shapes", "--forget_labels", "all",
                               "--out_dir", str(tmp_path / "g"), "--data_root", data_root, "--device", "cpu"])
    _, targets = datagen.validate(args)
    assert targets == [("Shapes", c) for c in shapes.classnames]
    from synthetic import read_synthetic
    meta = read_synthetic(star_sets / "Shapes" / "star.pt")["meta"]  # made without the new options
    assert "noise_seed" not in meta and meta["config"]["accept_margin"] == 0 and meta["config"]["augment_accept"] == 0
