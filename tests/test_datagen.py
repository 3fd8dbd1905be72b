"""datagen: acceptance rule, threshold decay, batch = one-at-a-time, file round-trip, errors."""
from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

import datagen
from common import UserError
from datagen import DatagenConfig, ascent_step, passed_level, synthesise, threshold_walk
from synthetic import clip_norm, model_view, noise_seed, read_synthetic, synthetic_path
from train import forget_images
from zeroshot import classifier_weights

from conftest import N_GENERATED as N


def test_saved_images_pass_the_acceptance_rule_as_the_trainer_loads_them(generated, demo, digits, shapes):
    out, metas = generated
    assert {(m["dataset"], m["classname"]) for m in metas} == {("Digits", "three"), ("Shapes", "red star")}
    for ds, cls in (("Digits", "three"), ("Shapes", "red star")):
        dset = {"Digits": digits, "Shapes": shapes}[ds]
        data = read_synthetic(synthetic_path(out, ds, cls))
        x = forget_images(demo, dset, cls, data["meta"]["model_key"], str(out), 0)[0]  # exactly the trainer's view
        w = classifier_weights(demo, dset, "cpu")
        with torch.no_grad():
            p = (100 * torch.nn.functional.normalize(demo.model.encode_image(x), dim=-1) @ w).softmax(-1)
        idx = dset.classnames.index(cls)
        assert len(x) == N and data["meta"]["complete"] and "incomplete" not in data["meta"]
        assert (p.argmax(1) == idx).all() and (p[:, idx] > data["thresholds"]).all()
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


# ------------------------------------------------------------ batched = the paper's one-at-a-time loop
K = 3  # classes of the scripted model; the target is class 0


class ScriptedModel(torch.nn.Module):
    """A stand-in CLIP whose zero-shot output follows a script: at its t-th acceptance check,
    attempt k (numbered by first appearance, i.e. in start order) has class-0 probability p and is
    or is not the top-1, where (p, top1) = script(k)[t]. It gives the image no gradient (with
    l2_reg 0 the ascent step is zero, and blur runs only at step 1), so an attempt's image stays
    put and identifies it. Use with weights = identity."""

    def __init__(self, script):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.preprocess_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.0))
        self.script, self.seen, self.checks = script, [], []

    def attempt(self, view: torch.Tensor) -> int:
        k = next((k for k, v in enumerate(self.seen) if torch.allclose(v, view, rtol=0, atol=1e-4)), None)
        if k is None:
            self.seen.append(view.clone())
            self.checks.append(0)
            k = len(self.seen) - 1
        return k

    def encode_image(self, views: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # the ascent step: a constant objective
            return torch.ones(len(views), K)
        rows = []
        for view in views:
            k = self.attempt(view)
            p, top1 = self.script(k)[self.checks[k]]
            self.checks[k] += 1
            probs = torch.tensor([p, (1 - p) / 2, (1 - p) / 2] if top1 else [p, 1 - p - 0.01, 0.01], dtype=torch.float64)
            z = probs.log() - probs.log().mean()  # unit features u with 100 u = z + c: softmax(100 u) = probs
            rows.append((z + ((1e4 - (z ** 2).sum()) / K).sqrt()) / 100)
        return torch.stack(rows).float()


def paper_loop(script, cfg: DatagenConfig) -> tuple[list[tuple[int, int, float]], int, int]:
    """The control flow of the paper's generate_images on scripted attempts, one after another:
    attempt k is accepted at its first step t + 1 where script(k)[t] is top-1 with p above the
    threshold; the threshold drops before an attempt that follows one which reached its last step
    (accepted there or not). Returns [(attempt, step, threshold)] of the kept images, the failed
    attempts and the drops (counting the one the next attempt would make). The max_failed stop is
    ours: the paper's loop would go on."""
    threshold, kept, failed, drops, lower, k = cfg.high_prob, [], 0, 0, False, 0
    while len(kept) < cfg.n_generated and failed < cfg.max_failed:
        if lower:
            threshold, drops = max(threshold - cfg.sub_prob, cfg.min_prob), drops + 1
        step = next((t + 1 for t, (p, top1) in enumerate(script(k)[:cfg.max_steps])
                     if top1 and torch.tensor(p, dtype=torch.float32) > threshold), None)
        if step is None:
            failed += 1
        else:
            kept.append((k, step, threshold))
        lower = step is None or step == cfg.max_steps
        k += 1
    return kept, failed, drops + lower


def run_scripted(script, cfg: DatagenConfig):
    model = ScriptedModel(script)
    res = synthesise(model, torch.eye(K), 0, 8, cfg, torch.Generator().manual_seed(0), "cpu")
    mean, std = clip_norm(model)
    ids = [model.attempt(v) for v in model_view(res.images, mean, std)]
    return res, list(zip(ids, res.steps.tolist(), res.thresholds.tolist()))


def scripted_cfg(**kw) -> DatagenConfig:  # no gradient, one blur (step 1): the images stay put
    return DatagenConfig(**{"l2_reg": 0.0, "blur_every": 10 ** 6, "max_failed": 1000, **kw})


def assert_same(ours, paper):
    assert [(k, s) for k, s, _ in ours] == [(k, s) for k, s, _ in paper]
    assert all(abs(a[2] - b[2]) < 1e-6 for a, b in zip(ours, paper))  # float32 copies of the paper's floats


def test_a_round_where_every_slot_misses_the_start_threshold_walks_it_as_the_paper_does():
    # every image is top-1 with p 0.6125 from its first step: the paper fails its attempts at
    # 0.8, 0.775, ..., 0.625 (8 drops), then accepts every image at 0.6 at step 1. All 16 slots of
    # the first batch run at once; none passes 0.8, but they are judged at the paper's thresholds
    cfg = scripted_cfg(n_generated=16, batch_size=16, max_steps=3)
    script = lambda k: [(0.6125, True)] * cfg.max_steps  # noqa: E731
    paper, failed, drops = paper_loop(script, cfg)
    res, ours = run_scripted(script, cfg)
    assert failed == drops == 8 and {round(t, 6) for _, _, t in paper} == {0.6}
    assert_same(ours, paper)
    assert res.failed == failed and res.threshold_drops == drops and res.complete
    assert res.final_threshold == threshold_walk(cfg)[drops][0]
    assert (res.steps == 1).all()  # kept from the step the paper would have accepted it at
    assert torch.allclose(res.probs, torch.full((16,), 0.6125), atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 5, 12])
def test_batched_attempts_are_decided_as_the_paper_loop_decides_them(batch_size):
    # random probability paths (not monotone; some steps with another class on top), on thresholds
    # 0.6, 0.55, 0.5, 0.45 and 5 steps per attempt; probabilities are odd multiples of 0.0125,
    # never on a threshold
    def script(k: int) -> list[tuple[float, bool]]:
        rng = random.Random(k)
        base = rng.uniform(0.3, 0.65)
        path = []
        for _ in range(5):
            p = 0.0125 * (2 * round((min(max(base + rng.gauss(0, 0.1), 0.34), 0.98) / 0.0125 - 1) / 2) + 1)
            path.append((p, p > 0.5 or rng.random() < 0.6))
        return path

    cfg = scripted_cfg(n_generated=12, batch_size=batch_size, max_steps=5, high_prob=0.6, sub_prob=0.05)
    paper, failed, drops = paper_loop(script, cfg)
    res, ours = run_scripted(script, cfg)
    assert failed >= 2 and len({round(t, 6) for _, _, t in paper}) >= 3  # the walk moved ...
    assert drops > failed  # ... also after an image accepted at the last step
    assert_same(ours, paper)
    assert res.failed == failed and res.threshold_drops == drops
    assert torch.allclose(res.probs, torch.tensor([script(k)[s - 1][0] for k, s, _ in paper]), atol=1e-5)
    # the file's final_threshold: the one the last image was judged at, not the walk after its own drop
    assert res.final_threshold == paper[-1][2]


def test_an_image_whose_top1_is_another_class_is_never_accepted():
    # p 0.4875 passes the floor 0.45, but another class has 0.5025: never accepted, so the class
    # stops at max_failed with nothing; the same p as the top-1 is accepted once the threshold drops
    cfg = scripted_cfg(n_generated=4, batch_size=4, max_steps=2, high_prob=0.5, max_failed=6)
    res, ours = run_scripted(lambda k: [(0.4875, False)] * 2, cfg)
    assert not res.complete and res.failed == 6 and len(res.images) == 0 and res.final_threshold == cfg.high_prob
    assert (res.last_top1 != 0).all()  # what the error message reports: another class was the top-1
    script = lambda k: [(0.4875, True)] * 2  # noqa: E731
    res, ours = run_scripted(script, cfg)
    assert res.complete and res.failed == 1 and abs(res.thresholds - 0.475).max() < 1e-6
    assert_same(ours, paper_loop(script, cfg)[0])


def test_batch_step_equals_one_image_at_a_time(demo, digits):
    w = classifier_weights(demo, digits, "cpu")
    mean, std = clip_norm(demo.model)
    scale = demo.model.logit_scale.exp().detach()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cfg = DatagenConfig()
    batch = ascent_step(demo.model, x, w[:, 3], (5, 11), cfg, mean, std, scale)
    single = torch.cat([ascent_step(demo.model, x[i:i + 1], w[:, 3], (5, 11), cfg, mean, std, scale) for i in range(3)])
    assert torch.allclose(batch, single, atol=1e-5)
    levels = torch.tensor([0.5])
    pb = passed_level(demo.model, batch, w, 3, mean, std, levels, None)[1]
    ps = torch.cat([passed_level(demo.model, batch[i:i + 1], w, 3, mean, std, levels, None)[1] for i in range(3)])
    assert torch.allclose(pb, ps, atol=1e-5)
    assert not torch.equal(batch, x)  # the step did something


def test_a_class_stopped_by_max_failed_says_so_in_its_file(data_root, tmp_path, capsys, monkeypatch):
    """A class that kept 2 of its 8 images when --max_failed stopped it (synthesise's result cut to that,
    so the test does not hang on which images this demo CLIP accepts): the file and the line say so."""
    import dataclasses
    real = datagen.synthesise

    def stopped(*a, **k):
        res = real(*a, **k)
        return dataclasses.replace(res, images=res.images[:2], probs=res.probs[:2], steps=res.steps[:2],
                                   thresholds=res.thresholds[:2], failed=3, complete=False)
    monkeypatch.setattr(datagen, "synthesise", stopped)
    datagen.main(["--out_dir", str(tmp_path), "--data_root", data_root, "--device", "cpu", "--forget_labels", "three",
                  "--n_generated", "8", "--max_failed", "3"])
    printed = capsys.readouterr().out
    meta = read_synthetic(synthetic_path(tmp_path, "Digits", "three"))["meta"]
    assert meta["n_images"] == 2 and not meta["complete"] and meta["failed_attempts"] == 3
    assert "INCOMPLETE: stopped by --max_failed after 3 failed attempts with 2 of 8 images" in printed
    assert meta["incomplete"].startswith("stopped by --max_failed after 3 failed attempts with 2 of 8 images")


def test_accept_margin_decays_after_failed_attempts_so_a_hard_class_finishes(demo, digits):
    from datagen import DatagenConfig, synthesise
    from zeroshot import classifier_weights
    w = classifier_weights(demo, digits, "cpu")
    # a margin no image reaches (1000 logits): every attempt fails until it has dropped to 0 ...
    cfg = DatagenConfig(n_generated=4, high_prob=0.5, max_steps=20, batch_size=4, max_failed=400,
                        accept_margin=1000.0, sub_margin=250.0)
    res = synthesise(demo.model, w, 3, 32, cfg, torch.Generator().manual_seed(0), "cpu")
    assert res.complete and res.failed >= 4 and res.final_margin == 0
    # ... without the decay it never finishes and keeps nothing
    cfg.sub_margin, cfg.max_failed = 0.0, 8
    res = synthesise(demo.model, w, 3, 32, cfg, torch.Generator().manual_seed(0), "cpu")
    assert not res.complete and len(res.images) == 0


# ----------------------------------------------------------------------------- through the scripts
def _datagen(tmp_path, data_root, out, *extra):
    import datagen
    return datagen.main(["--backbone_arch", "demo", "--run_ds", "Shapes", "--forget_labels", "red star",
                         "--n_generated", "6", "--out_dir", str(out), "--data_root", data_root,
                         "--device", "cpu", *extra])


def test_datagen_confident_makes_forget_and_heldout_sets_and_retain_on_request(tmp_path, data_root, shapes):
    from synthetic import read_synthetic
    fast = ["--accept_margin", "2", "--max_steps", "100", "--n_generated", "3", "--high_prob", "0.5", "--max_failed", "20"]
    _datagen(tmp_path, data_root, tmp_path / "a", "--method", "confident", *fast)
    forget, held = read_synthetic(tmp_path / "a" / "Shapes" / "red star.pt"), \
        read_synthetic(tmp_path / "a" / "heldout" / "Shapes" / "red star.pt")
    assert forget["meta"]["config"]["accept_margin"] == 2.0  # the user's option wins over the preset's 30
    import datagen
    assert len(forget["images"]) == 3 and len(held["images"]) == datagen.PRESETS["confident"]["heldout_n"]
    assert noise_seed(held["meta"]) != noise_seed(forget["meta"])
    assert not (tmp_path / "a" / "retain").exists()
    _datagen(tmp_path, data_root, tmp_path / "b", "--method", "confident", "--retain_per_class", "2", *fast)
    retain = sorted(p.stem for p in (tmp_path / "b" / "retain" / "Shapes").glob("*.pt"))
    assert retain == sorted(shapes.classnames)
    with pytest.raises(UserError, match="--retain_per_class needs --method confident"):
        _datagen(tmp_path, data_root, tmp_path / "c", "--retain_per_class", "2")


def test_datagen_options_are_documented(capsys):
    import datagen
    with pytest.raises(SystemExit):
        datagen.parse_args(["--help"])
    text = capsys.readouterr().out
    for opt in ("--accept_margin", "--augment_accept", "--noise_seed", "--method"):
        assert opt in text


def test_datagen_all_classes_and_default_meta(tmp_path, data_root, shapes, shape_sets):
    import datagen
    args = datagen.parse_args(["--backbone_arch", "demo", "--run_ds", "Shapes", "--forget_labels", "all",
                               "--out_dir", str(tmp_path / "g"), "--data_root", data_root, "--device", "cpu"])
    targets = datagen.validate(args)[1][0].targets
    assert targets == [("Shapes", c) for c in shapes.classnames]
    from synthetic import read_synthetic
    meta = read_synthetic(shape_sets / "Shapes" / "red star.pt")["meta"]  # made without the new options
    assert "noise_seed" not in meta and meta["config"]["accept_margin"] == 0 and meta["config"]["augment_accept"] == 0
