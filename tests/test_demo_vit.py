"""demo-vit: the demo CLIP with a ViT image tower, and the paper's ViT-B/16 rules scaled to it."""
from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import yaml

from forget_cls import FORGET_CLASSES

DIGIT = FORGET_CLASSES["Digits"][0]
B16_K, B16_INC = 25, [0, 2, 5, 8, 10, 15, 20]  # SPEC §2: ViT-B/16's top-k schedule, both towers


def tower_counts(arch: str) -> tuple[int, int]:
    """(image, text) tensors that methods.base.freeze leaves trainable with the backbone's frozen patterns,
    counted on the meta device (no weights: only the names count)."""
    from methods.base import freeze
    from models import arch_settings, resolve_arch
    with torch.device("meta"):
        model = open_clip.create_model(resolve_arch(arch), device="meta")
    vis, txt = freeze(model, arch_settings(arch)["frozen"])
    return len(vis), len(txt)


def scaled(n: int, big_n: int) -> list[int]:
    """configs/archs/demo-vit.yaml's rule: at each noise level, ViT-B/16's share of its tower (halves up)."""
    return [int(n / big_n * (B16_K + inc) + 0.5) for inc in B16_INC]


def test_demo_vit_is_a_second_demo_clip_with_its_own_cache_keys():
    from demo_world import OWN_SETTINGS, demo_config
    from models import DEMO_MODELS, demo_weights_path
    from zeroshot import run_model_key
    assert {"demo", "demo-vit"} <= set(DEMO_MODELS)
    vit, rn = open_clip.get_model_config("demo-vit"), open_clip.get_model_config("demo")
    assert vit["text_cfg"] == rn["text_cfg"] and vit["embed_dim"] == rn["embed_dim"]
    assert isinstance(vit["vision_cfg"]["layers"], int) and isinstance(rn["vision_cfg"]["layers"], list)
    # the same data, captions, noise and seed: only how it is optimised and shifted may differ
    recipe = {k: v for k, v in demo_config("demo").items() if k not in OWN_SETTINGS}
    assert {k: demo_config("demo-vit")[k] for k in recipe} == recipe
    pair = ("Digits", DIGIT)
    paths = {demo_weights_path(lo, a) for a in ("demo", "demo-vit") for lo in ((), [pair])}
    assert len(paths) == 4  # each model, and each model's oracle, has its own file
    assert run_model_key("demo-vit", None, 0) == demo_weights_path(arch="demo-vit").stem
    assert run_model_key("demo-vit", None, 0) != run_model_key("demo", None, 0)


def test_a_models_own_recipe_entry_may_change_only_its_optimisation_and_shifts(tmp_path, monkeypatch):
    import demo_world
    from common import UserError
    cfg = yaml.safe_load(demo_world.CONFIG.read_text())
    cfg["per_model"] = {"demo-vit": {"epochs": 2, "noise": 0.0}}
    path = tmp_path / "demo_world.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(demo_world, "CONFIG", path)
    with pytest.raises(UserError, match=r"per_model.demo-vit may set only epochs, lr, weight_decay, batch_size, "
                                        r"shift, not noise"):
        demo_world.demo_config("demo-vit")
    assert demo_world.demo_config("demo")["noise"] == cfg["noise"]  # another model's entry is not read


def test_demo_vit_training_is_deterministic(data_root):
    """Two trainings with the same seed give bit-identical weights (one epoch of demo-vit's recipe, through
    the code path of the full training)."""
    from demo_world import demo_config, train_demo_model
    from models import load_model
    cfg = {**demo_config("demo-vit"), "epochs": 1}
    states = []
    for _ in range(2):
        lm = load_model("demo-vit", "none")
        start = copy.deepcopy(lm.model.state_dict())
        train_demo_model(lm.model, lm.preprocess, lm.tokenizer, data_root, cfg)
        states.append(lm.model.state_dict())
    assert not torch.equal(states[0]["visual.conv1.weight"], start["visual.conv1.weight"])  # it trained
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])


def test_demo_vit_oracle_is_demo_vits_training_without_the_class(data_root, tmp_path, monkeypatch):
    """load_demo_oracle(arch='demo-vit') retrains demo-vit, not demo, without the class's images, and is
    cached apart (one epoch of the recipe, in a cache of its own)."""
    import json
    import demo_world
    from models import demo_weights_path, load_demo_oracle
    monkeypatch.setenv("CLIP_FORGET_CACHE", str(tmp_path))
    recipe = demo_world.demo_config
    monkeypatch.setattr(demo_world, "demo_config", lambda arch="demo": {**recipe(arch), "epochs": 1})
    pair = ("Digits", DIGIT)
    oracle = load_demo_oracle([pair], data_root=data_root, arch="demo-vit")
    assert type(oracle.model.visual).__name__ == "VisionTransformer"
    assert oracle.pretrained == str(demo_weights_path([pair], "demo-vit"))
    record = json.loads(demo_weights_path([pair], "demo-vit").with_suffix(".json").read_text())
    data = demo_world.demo_data(data_root)
    assert record["model"] == "demo-vit" and record["left_out"] == [list(pair)]
    assert record["images"] == len(data.items) - int(demo_world.left_out_mask(data, [pair]).sum())


@pytest.mark.parametrize("ds_name", ["Digits", "Shapes"])
def test_demo_vit_zero_shot_accuracy_by_name_and_alias(ds_name, demo_vit, data_root):
    """The demo's bar (test_foundation.py), on demo-vit."""
    from conftest import zero_shot_bar
    from datasets import build_dataset
    full, alias_acc = zero_shot_bar(demo_vit, build_dataset(ds_name, data_root))
    assert full >= 0.90 and alias_acc >= 0.80, (full, alias_acc)


def test_the_scaled_top_k_rule_gives_demo_vit_its_counts_and_vit_b16_its_own():
    """configs/archs/demo-vit.yaml holds ViT-B/16's schedule scaled to demo-vit's towers; the same rule gives
    ViT-B/16 back its 25 + increments, and does not give RN50 the paper's 5 (its k is a choice per backbone)."""
    from models import arch_settings
    big_v, big_t = tower_counts("ViT-B/16")
    assert (big_v, big_t) == (152, 144)
    b16 = arch_settings("ViT-B/16")
    assert scaled(big_v, big_v) == [b16["k_v"] + i for i in b16["inc_v"]]
    assert scaled(big_t, big_t) == [b16["k_t"] + i for i in b16["inc_t"]]
    n_v, n_t = tower_counts("demo-vit")
    vit = arch_settings("demo-vit")
    assert scaled(n_v, big_v) == [vit["k_v"] + i for i in vit["inc_v"]]
    assert scaled(n_t, big_t) == [vit["k_t"] + i for i in vit["inc_t"]]
    assert vit["frozen"] == b16["frozen"] == [] and max(scaled(n_v, big_v)) < n_v
    rn_v, _ = tower_counts("RN50")
    assert scaled(rn_v, big_v)[0] != arch_settings("RN50")["k_v"]


def test_the_paper_method_on_demo_vit_selects_vit_tensors_by_the_scaled_rule_and_forgets(demo_vit, data_root,
                                                                                         tmp_path, monkeypatch):
    """datagen + the paper's method on demo-vit. Its first step keeps the k_v = 9 image and k_t = 4 text
    tensors with the largest mean |grad| (recomputed here from the gradients it sees), ViT
    tensors by their open_clip names, and the run drives the synthetic images' accuracy to its threshold."""
    import datagen
    import train
    from methods import lipschitz
    gen, out = tmp_path / "gen", tmp_path / "run"
    common = ["--backbone_arch", "demo-vit", "--run_ds", "Digits", "--forget_labels", DIGIT, "--data_root", data_root,
              "--device", "cpu"]
    datagen.main([*common, "--out_dir", str(gen), "--n_generated", "16"])
    calls, select = [], lipschitz.select_top_k

    def recorded(named: list, k: int) -> list:
        scores = {n: (p.grad.abs().sum() / p.numel()).item() for n, p in named if p.grad is not None}
        chosen = select(named, k)
        calls.append((k, [n for n, _ in chosen], sorted(scores, key=lambda n: -scores[n])[:k]))
        return chosen

    monkeypatch.setattr(lipschitz, "select_top_k", recorded)
    logs = train.main([*common, "--generated_dir", str(gen), "--output_dir", str(out)])  # the paper's n_samples
    log = logs["Digits"][DIGIT]
    first_std = str(lipschitz.Config().stds[0])
    first = log[first_std]["epochs"][0]
    assert (first["k_v"], first["k_t"]) == (9, 4)
    image, text = calls[0], calls[1]  # the first step: the image tower's choice, then the text tower's
    assert image[0] == 9 and text[0] == 4
    assert set(image[1]) == set(image[2]) and set(text[1]) == set(text[2])  # the largest mean |grad|
    assert all(n.startswith("visual.") for n in image[1])
    assert all(n.startswith("transformer.resblocks.") for n in text[1])
    assert any(".transformer.resblocks." in n or n.startswith("visual.conv1") for n in image[1])  # ViT tensors
    kept = [e["acc_syn"] for s in log if s not in ("summary", "final_results") for e in log[s]["epochs"]
            if e["improved"]]
    assert log["summary"]["acc_syn_before"] > 0.5 and min(kept) <= lipschitz.Config().min_train_acc_stop, log["summary"]
