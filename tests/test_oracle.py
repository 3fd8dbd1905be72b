"""The oracle of unlearning: the demo CLIP retrained without some classes (models.load_demo_oracle)."""
from __future__ import annotations

import pytest
import torch

from common import UserError
from conftest import ORACLE_LEFT_OUT

LEFT_OUT = ORACLE_LEFT_OUT  # red star: a class whose words other classes share


@pytest.mark.parametrize("arch", ["demo", "demo-vit"])
def test_oracle_trains_on_the_same_batches_minus_the_left_out_images(arch, data_root):
    """demo-vit's plan also shifts its images (configs/demo_world.yaml): the oracle's shifts are its own images'."""
    from demo_world import batch_plan, demo_config, demo_data, left_out_mask, n_steps
    cfg = {**demo_config(arch), "epochs": min(demo_config(arch)["epochs"], 30)}
    data = demo_data(data_root, cfg)
    dropped = left_out_mask(data, LEFT_OUT)
    gone = data.classes.index(LEFT_OUT[0])
    assert dropped.sum() == (data.labels == gone).sum() > 0
    steps, seen, seen_full = 0, torch.zeros(len(data.items), dtype=torch.long), 0
    for full, oracle in zip(batch_plan(data, cfg, 32), batch_plan(data, cfg, 32, dropped), strict=True):
        keep = ~dropped[full.idx]
        assert torch.equal(oracle.idx, full.idx[keep])
        assert torch.equal(oracle.captions, full.captions)  # the left-out class keeps its captions
        assert torch.equal(oracle.noise, full.noise[keep])
        assert (full.shift is None) == (cfg["shift"] == 0)  # a model without shifts draws none
        assert full.shift is None or torch.equal(oracle.shift, full.shift[keep])
        seen.index_add_(0, oracle.idx, torch.ones(len(oracle.idx), dtype=torch.long))
        seen_full += int((data.labels[full.idx] == gone).sum())
        steps += 1
    assert steps == n_steps(data, cfg)
    assert seen_full > 0 and seen[data.labels == gone].sum() == 0  # the demo CLIP sees the class, the oracle never
    assert (seen[~dropped] > 0).all()  # and the oracle sees every other training image


def test_a_shift_moves_each_image_by_its_own_pixels_and_repeats_the_edge():
    from demo_world import shifted
    x = torch.arange(2 * 16, dtype=torch.float).view(2, 1, 4, 4)
    out = shifted(x, torch.tensor([[1, -2], [0, 0]]))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[0, 0, 1:, :2], x[0, 0, :3, 2:])  # one down, two left
    assert torch.equal(out[0, 0, 0, :2], x[0, 0, 0, 2:])  # the top row repeats the first row
    assert torch.equal(out[0, 0, 1:, 2:], x[0, 0, :3, 3:].expand(3, 2))  # the right columns repeat the last column


def test_oracle_cache_key_is_the_left_out_set():
    from models import demo_weights_path
    a, b = ("Shapes", "red star"), ("Digits", "three")
    paths = {demo_weights_path(), demo_weights_path([a]), demo_weights_path([b]), demo_weights_path([a, b])}
    assert len(paths) == 4
    assert demo_weights_path([a, b]) == demo_weights_path([b, a]) == demo_weights_path([b, a, b])


@pytest.mark.parametrize("left_out,message", [
    ([("Shapes", "red stra")], "Shapes has no class 'red stra'; did you mean: red star"),
    ([("Shape", "red star")], "no dataset 'Shape'; did you mean: Shapes"),
    ([], "at least one"),
])
def test_oracle_rejects_bad_left_out_sets_before_training(left_out, message, data_root):
    from models import load_demo_oracle
    with pytest.raises(UserError, match=message):
        load_demo_oracle(left_out, data_root=data_root)


def test_oracle_does_not_know_the_left_out_class_and_knows_its_neighbours(shapes, data_root):
    """Trained (once, then cached) without red star: most of its red stars go to other classes (a few are
    still called 'red star': the name composes from words the oracle learnt on red circles and blue
    stars), while blue stars and red circles are still recognised."""
    from models import load_demo_oracle, load_model
    from zeroshot import compute_baselines
    oracle = load_demo_oracle(LEFT_OUT, data_root=data_root)
    figs = compute_baselines(oracle, shapes, "cpu")
    assert figs["red star"]["cls_acc_test"] <= 0.35, figs["red star"]  # the demo CLIP: >= 0.9
    assert figs["blue star"]["cls_acc_test"] >= 0.8 and figs["red circle"]["cls_acc_test"] >= 0.8
    assert figs["red star"]["no_cls_acc"] >= 0.85
    again = load_model("demo", pretrained=oracle.pretrained, data_root=data_root)  # the cached file is the oracle
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.model.encode_image(x), oracle.model.encode_image(x))
