"""datagen: acceptance rule, threshold decay, batch = one-at-a-time, file round-trip, errors."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

import datagen
from common import UserError
from datagen import DatagenConfig, ascent_step, class_probability, synthesise
from synthetic import clip_norm, read_synthetic, synthetic_path
from train import forget_images
from zeroshot import classifier_weights

from conftest import N_GENERATED as N


def test_saved_images_pass_the_acceptance_rule_as_the_trainer_loads_them(generated, demo, digits, shapes):
    out, metas = generated
    assert {(m["dataset"], m["classname"]) for m in metas} == {("Digits", "three"), ("Shapes", "red star")}
    for ds, cls in (("Digits", "three"), ("Shapes", "red star")):
        dset = {"Digits": digits, "Shapes": shapes}[ds]
        data = read_synthetic(synthetic_path(out, ds, cls))
        args = type("A", (), {"generated_data": 1, "generated_dir": str(out)})
        x = forget_images(args, demo, dset, cls, data["meta"]["model_key"])  # exactly the trainer's view
        w = classifier_weights(demo, dset, "cpu")
        with torch.no_grad():
            p = (100 * torch.nn.functional.normalize(demo.model.encode_image(x), dim=-1) @ w).softmax(-1)
        idx = dset.classnames.index(cls)
        assert len(x) == N and data["meta"]["complete"]
        assert (p[:, idx] > data["thresholds"]).all()
        assert torch.allclose(p[:, idx], data["probs"], atol=1e-4)


def test_files_and_metadata_round_trip(generated, demo):
    out, metas = generated
    path = synthetic_path(out, "Shapes", "red star")
    data = read_synthetic(path)
    meta = data["meta"]
    assert meta["model_key"] == metas[1]["model_key"] and meta["class_index"] == 3
    assert meta["dataset"] == "Shapes" and meta["classname"] == "red star" and meta["seed"] == 0
    assert meta["n_images"] == N and meta["config"]["high_prob"] == 0.8
    assert data["images"].shape == (N, 3, 32, 32) and data["steps"].min() >= 1
    grid = Image.open(path.with_suffix(".png"))
    assert grid.size[0] > 8 * 32


def test_threshold_decays_after_failed_attempts_and_stops_at_the_floor(demo, digits):
    w = classifier_weights(demo, digits, "cpu")
    # one step per attempt and a threshold nothing reaches at first: every attempt fails, so the
    # threshold walks 0.999 -> 0.749 -> 0.499 -> 0.45 (floor) until images are accepted
    cfg = DatagenConfig(n_generated=4, high_prob=0.999, sub_prob=0.25, max_steps=1, batch_size=4, max_failed=400)
    res = synthesise(demo.model, w, 3, 32, cfg, torch.Generator().manual_seed(0), "cpu")
    allowed = {0.999, 0.749, 0.499, 0.45}
    assert all(any(abs(t - a) < 1e-6 for a in allowed) for t in res.thresholds.tolist())
    assert res.failed >= 1 and (res.thresholds >= 0.45 - 1e-9).all()
    # with no decay, an unreachable threshold gives up after max_failed and keeps nothing
    cfg = DatagenConfig(n_generated=4, high_prob=0.9999999, sub_prob=0.0, max_steps=2, batch_size=4, max_failed=8)
    res = synthesise(demo.model, w, 3, 32, cfg, torch.Generator().manual_seed(0), "cpu")
    assert not res.complete and res.failed == 8 and len(res.images) == 0


def test_batch_step_equals_one_image_at_a_time(demo, digits):
    w = classifier_weights(demo, digits, "cpu")
    mean, std = clip_norm(demo.model)
    scale = demo.model.logit_scale.exp().detach()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = DatagenConfig()
    batch = ascent_step(demo.model, x, w[:, 3], (5, 11), cfg, mean, std, scale)
    single = torch.cat([ascent_step(demo.model, x[i:i + 1], w[:, 3], (5, 11), cfg, mean, std, scale) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)
    pb = class_probability(demo.model, batch, w, 3, mean, std)
    ps = torch.cat([class_probability(demo.model, batch[i:i + 1], w, 3, mean, std) for i in range(3)])
    assert torch.allclose(pb, ps, atol=1e-5)
    assert not torch.equal(batch, x)  # the step did something


def test_skip_existing_and_refuse_a_file_of_another_model(generated, data_root, capsys):
    out, _ = generated
    path = synthetic_path(out, "Digits", "three")
    before = path.read_bytes()
    datagen.main(["--out_dir", str(out), "--n_generated", str(N), "--data_root", data_root, "--device", "cpu",
                  "--forget_labels", "three"])
    assert "skipped" in capsys.readouterr().out and path.read_bytes() == before
    data = read_synthetic(path)
    data["meta"]["model_key"] = "RN50-openai"
    other = out / "other"
    synthetic_path(other, "Digits", "three").parent.mkdir(parents=True)
    torch.save(data, synthetic_path(other, "Digits", "three"))
    with pytest.raises(UserError, match="made by model 'RN50-openai'"):
        datagen.main(["--out_dir", str(other), "--data_root", data_root, "--device", "cpu", "--forget_labels", "three"])


@pytest.mark.parametrize("argv,message", [
    (["--forget_labels", "thre"], "unknown class 'thre'.*did you mean: three"),
    (["--run_ds", "Digitz"], "unknown dataset 'Digitz'.*did you mean: Digits"),
    (["--high_prob", "1.2"], r"--high_prob must be in \(0, 1\)"),
])
def test_bad_input_is_reported_before_any_work(argv, message, data_root, tmp_path):
    with pytest.raises(UserError, match=message):
        datagen.main(["--out_dir", str(tmp_path), "--data_root", data_root, *argv])
    assert not any(tmp_path.iterdir())
