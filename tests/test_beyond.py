"""Options beyond the paper (beyond.py, issue 8): each test can fail if the piece stops doing its job."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import beyond


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
    assert beyond.forget_margin(beyond.image_logits(model, fragile, W2), 0).item() > 20
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


# ----------------------------------------------------------------------------- with the demo CLIP
@pytest.fixture()
def model(demo):
    m = copy.deepcopy(demo.model)
    m.eval()
    return m


@pytest.fixture(scope="module")
def prompts(demo, digits):
    return demo.tokenizer([digits.prompt(c) for c in digits.classnames])


def test_retain_term_is_zero_for_the_original_model_and_grows_with_drift(model, prompts):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(12, 3, 32, 32, generator=g)
    keep = [i for i in range(10) if i != 3]
    term = beyond.RetainTerm(model, images, prompts, keep)
    with torch.no_grad():
        base = term(model).item()
        assert abs(base) < 1e-4
        p = dict(model.named_parameters())["transformer.resblocks.1.mlp.c_fc.weight"]
        p.add_(0.05 * torch.randn(p.shape, generator=g))
        text_drift = term(model).item()
        v = dict(model.named_parameters())["visual.attnpool.c_proj.weight"]
        v.add_(0.05 * torch.randn(v.shape, generator=g))
        both_drift = term(model).item()
    assert text_drift > base + 1e-3
    assert both_drift > text_drift


def test_hinge_loop_changes_only_the_chosen_tower_and_lowers_the_forget_margin(model, prompts):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=g)
    idx = 3
    with torch.no_grad():
        before = beyond.forget_margin(beyond.image_logits(model, images, beyond.text_weights(model, prompts)), idx)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = beyond.DirectConfig(hinge_margin=50, max_steps=5, stop_at=-1.0, lr=1e-3,
                              frozen=beyond.tower_patterns("text"))
    best, rec = beyond.unlearn_direct(model, images, prompts, prompts[:1], idx, lambda: 1.0, cfg, g)
    assert rec.steps == 5 and len(rec.trace) == 5
    assert best and all(n.startswith("transformer.") for n in best)
    for k, v in model.state_dict().items():  # the model is handed back unchanged
        assert torch.equal(v, state[k]), k
    model.load_state_dict({**state, **best})
    with torch.no_grad():
        after = beyond.forget_margin(beyond.image_logits(model, images, beyond.text_weights(model, prompts)), idx)
    assert after.mean() < before.mean() - 1


def test_token_tower_changes_only_the_forget_class_name_rows(model, prompts, demo, digits):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=g)
    idx = digits.classnames.index("three")
    rows = beyond.own_token_rows(prompts, idx)
    assert rows == demo.tokenizer(["three"])[0, 1:2].tolist()  # the name's token; template tokens are shared
    with torch.no_grad():
        w0 = beyond.text_weights(model, prompts)
    cfg = beyond.DirectConfig(hinge_margin=50, max_steps=5, stop_at=-1.0, lr=2e-3, token_rows=rows,
                              frozen=beyond.tower_patterns("token"))
    best, _ = beyond.unlearn_direct(model, images, prompts, prompts[:1], idx, lambda: 1.0, cfg, g)
    assert list(best) == ["token_embedding.weight"]
    changed = (best["token_embedding.weight"] != model.token_embedding.weight).any(1).nonzero().flatten().tolist()
    assert changed == rows
    model.token_embedding.weight.data.copy_(best["token_embedding.weight"])
    with torch.no_grad():
        w1 = beyond.text_weights(model, prompts)
    others = [i for i in range(10) if i != idx]
    assert torch.allclose(w1[:, others], w0[:, others], atol=1e-6)  # every other class's prompt: unchanged
    assert (w1[:, idx] * w0[:, idx]).sum() < 0.999


def test_token_rows_exclude_tokens_of_the_other_datasets_prompts(model, prompts, demo, digits):
    idx = digits.classnames.index("three")
    rows = beyond.own_token_rows(prompts, idx)
    assert beyond.own_token_rows(prompts, idx, demo.tokenizer(["a photo of a square."])) == rows
    assert beyond.own_token_rows(prompts, idx, demo.tokenizer(["three circles."])) == []  # "three" shared
    cfg = beyond.DirectConfig(max_steps=1, stop_at=-1.0, token_rows=[], frozen=beyond.tower_patterns("token"))
    with pytest.raises(beyond.UserError, match="--towers text"):
        beyond.unlearn_direct(model, torch.zeros(2, 3, 32, 32), prompts, prompts[:1], idx, lambda: 1.0, cfg,
                              torch.Generator())


def test_heldout_rule_counts_images_above_the_margin(model, prompts):
    g = torch.Generator().manual_seed(0)
    held = torch.randn(10, 3, 32, 32, generator=g)
    with torch.no_grad():
        m = beyond.forget_margin(beyond.image_logits(model, held, beyond.text_weights(model, prompts)), 3)
    for stop_margin in (0.0, 30.0, 1e6):
        rule = beyond.heldout_rule(model, held, prompts, 3, stop_margin, text_frozen=False)
        assert rule() == pytest.approx((m > -stop_margin).float().mean().item())
    assert beyond.heldout_rule(model, held, prompts, 3, 1e6, text_frozen=True)() == 1.0


# ----------------------------------------------------------------------------- through the scripts
def _datagen(tmp_path, data_root, out, *extra):
    import datagen
    return datagen.main(["--backbone_arch", "demo", "--run_ds", "Shapes", "--forget_labels", "red star",
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
    meta = read_synthetic(root / "gen" / "Shapes" / "red star.pt")["meta"]
    g = torch.Generator().manual_seed(0)
    for i, c in enumerate(shapes.classnames):
        save_synthetic(synthetic_path(root / "gen" / "retain", "Shapes", c), torch.randn(2, 3, 32, 32, generator=g),
                       torch.ones(2), torch.ones(2, dtype=torch.long), torch.ones(2),
                       {**meta, "classname": c, "class_index": i})
    return root / "gen"


def test_heldout_set_is_not_the_training_set(star_sets, data_root):
    from synthetic import read_synthetic
    train_file, held_file = star_sets / "Shapes" / "red star.pt", star_sets / "heldout" / "Shapes" / "red star.pt"
    tr, he = read_synthetic(train_file), read_synthetic(held_file)
    assert beyond.noise_seed(tr["meta"]) != beyond.noise_seed(he["meta"])
    flat_tr, flat_he = tr["images"].flatten(1), he["images"].flatten(1)
    assert torch.cdist(flat_he, flat_tr).min() > 1.0  # no held-out image is (close to) a training image
    # check_side_files refuses a held-out set made with the training set's noise seed
    from datasets import build_dataset
    args = type("A", (), {"stop": "margin", "retain_weight": 0.0, "heldout_dir": str(star_sets / "heldout"),
                          "generated_dir": str(star_sets)})()
    ds = {"Shapes": build_dataset("Shapes", data_root)}
    key = tr["meta"]["model_key"]
    assert beyond.check_side_files(args, ds, [("Shapes", "red star")], key) == []
    args.heldout_dir = str(star_sets)  # the training set itself as "held-out"
    problems = beyond.check_side_files(args, ds, [("Shapes", "red star")], key)
    assert problems and "same noise seed" in problems[0]


def _train(tmp_path, data_root, gen, out, *extra):
    import train
    return train.main(["--backbone_arch", "demo", "--run_ds", "Digits,Shapes", "--forget_labels", "red star",
                       "--generated_dir", str(gen), "--output_dir", str(tmp_path / out), "--data_root", data_root,
                       "--device", "cpu", "--max_epochs", "2", "--n_samples", "2", "--seed", "0", *extra])


def test_default_path_is_the_papers_loop_unchanged(tmp_path, data_root, star_sets, monkeypatch):
    import train
    calls = []
    real_unlearn = train.unlearn
    monkeypatch.setattr(train, "unlearn", lambda *a, **k: calls.append("paper") or real_unlearn(*a, **k))
    monkeypatch.setattr(beyond, "unlearn_class", lambda *a, **k: pytest.fail("beyond loop used by default"))
    default = _train(tmp_path, data_root, star_sets, "default")
    explicit = _train(tmp_path, data_root, star_sets, "explicit", "--method", "faithful", "--objective", "lipschitz",
                      "--stop", "acc", "--towers", "both")
    assert calls == ["paper", "paper"]
    a, b = default["Shapes"]["red star"], explicit["Shapes"]["red star"]
    assert "trace" not in a["summary"]
    assert json.dumps(a["final_results"]) == json.dumps(b["final_results"])
    assert {k: v for k, v in a.items() if k not in ("summary", "final_results")} == \
        {k: v for k, v in b.items() if k not in ("summary", "final_results")}
    assert a["summary"]["changed_tensors"] == b["summary"]["changed_tensors"]
    saved = json.loads((tmp_path / "default" / "args.txt").read_text())
    assert saved["method"] == "faithful" and saved["objective"] == "lipschitz" and saved["retain_weight"] == 0.0


def test_improved_method_runs_with_its_side_sets(tmp_path, data_root, star_sets):
    logs = _train(tmp_path, data_root, star_sets, "improved", "--method", "improved", "--max_steps", "3")
    s = logs["Shapes"]["red star"]["summary"]
    assert s["status"] == "done" and 1 <= s["steps"] <= 3 and len(s["trace"]) == s["steps"]
    assert s["changed_tensors"] == ["token_embedding.weight"]
    assert all(t["retain"] == 0 for t in s["trace"])  # the preset has no retain term ...
    settings = json.loads((tmp_path / "improved" / "args.txt").read_text())
    assert settings["objective"] == "hinge" and settings["stop"] == "margin" and settings["towers"] == "token"
    assert settings["heldout_dir"].endswith("heldout") and settings["retain_dir"] is None
    # ... an explicit --retain_weight adds it, read from the retain sets, and drifts from 0 after the first step
    logs = _train(tmp_path, data_root, star_sets, "retain", "--method", "improved", "--towers", "text",
                  "--lr", "2e-4", "--retain_weight", "1", "--max_steps", "3", "--stop_margin", "1000")
    trace = logs["Shapes"]["red star"]["summary"]["trace"]
    assert trace[0]["retain"] == 0 and trace[-1]["retain"] > 0


def test_datagen_improved_makes_forget_and_heldout_sets_and_retain_on_request(tmp_path, data_root, shapes):
    from synthetic import read_synthetic
    fast = ["--accept_margin", "2", "--max_steps", "30", "--n_generated", "3", "--high_prob", "0.5", "--max_failed", "2"]
    _datagen(tmp_path, data_root, tmp_path / "a", "--method", "improved", *fast)
    forget, held = read_synthetic(tmp_path / "a" / "Shapes" / "red star.pt"), \
        read_synthetic(tmp_path / "a" / "heldout" / "Shapes" / "red star.pt")
    assert forget["meta"]["config"]["accept_margin"] == 2.0  # the user's option wins over the preset's 30
    assert len(forget["images"]) == 3 and len(held["images"]) == beyond.DATAGEN_PRESETS["improved"]["heldout_n"]
    assert beyond.noise_seed(held["meta"]) != beyond.noise_seed(forget["meta"])
    assert not (tmp_path / "a" / "retain").exists()
    _datagen(tmp_path, data_root, tmp_path / "b", "--method", "improved", "--retain_per_class", "2", *fast)
    retain = sorted(p.stem for p in (tmp_path / "b" / "retain" / "Shapes").glob("*.pt"))
    assert retain == sorted(shapes.classnames)
    from common import UserError
    with pytest.raises(UserError, match="--retain_per_class needs --method improved"):
        _datagen(tmp_path, data_root, tmp_path / "c", "--retain_per_class", "2")


def test_options_are_validated_and_documented(tmp_path, data_root, star_sets, capsys):
    from common import UserError
    with pytest.raises(UserError, match="retain_weight needs"):
        _train(tmp_path, data_root, star_sets, "bad", "--retain_weight", "1")
    with pytest.raises(UserError, match="held-out"):
        _train(tmp_path, data_root, star_sets, "bad2", "--stop", "margin", "--heldout_dir", str(tmp_path / "none"))
    import train
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = capsys.readouterr().out
    for opt in ("--method", "--objective", "--hinge_margin", "--retain_weight", "--stop", "--stop_margin",
                "--heldout_dir", "--towers", "--augment"):
        assert opt in text
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
    meta = read_synthetic(star_sets / "Shapes" / "red star.pt")["meta"]  # made without the new options
    assert "noise_seed" not in meta and meta["config"]["accept_margin"] == 0 and meta["config"]["augment_accept"] == 0
