"""train: the loss, layer selection, frozen parameters, BatchNorm, rollback, logs and resume."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import yaml

import train
from common import REPO
from models import load_model
from train import Snapshot, UnlearnConfig, freeze, lipschitz_loss, select_top_k, unlearn


class _Toy(torch.nn.Module):
    """Linear towers: embeddings the test can recompute by hand."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.img = torch.nn.Parameter(torch.randn(12, 3, generator=g))
        self.txt = torch.nn.Parameter(torch.randn(4, 3, generator=g))

    def encode_image(self, x):
        return x.flatten(1) @ self.img

    def encode_text(self, t):
        return t.float() @ self.txt


def test_lipschitz_loss_equals_hand_computation():
    model = _Toy()
    x = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[1, 0, 2, 0], [1, 0, 2, 0]])
    loss = lipschitz_loss(model, x, tokens, std=0.5, n_samples=3, generator=torch.Generator().manual_seed(7))
    # by hand, one draw and one image at a time, with the same noise stream
    noise = torch.randn((3, 2, 3, 2, 2), generator=torch.Generator().manual_seed(7)) * 0.5
    lo, hi = x.min().item(), x.max().item()
    total = 0.0
    for s in range(3):
        for b in range(2):
            xb = x[b].flatten()
            xn = (xb + noise[s, b].flatten()).clamp(lo, hi)
            e_t = tokens[b].float() @ model.txt
            e_x, e_n = xb @ model.img, xn @ model.img
            total += ((e_t - e_n).norm() + (e_x - e_n).norm()).item() / (2 * (xb - xn).norm().item())
    assert loss.item() == pytest.approx(total / (2 * 3), rel=1e-5)
    loss.backward()  # gradients reach both towers
    assert model.img.grad.abs().sum() > 0 and model.txt.grad.abs().sum() > 0


@pytest.mark.parametrize("arch,tag,k", [("RN50", "RN50", 5), ("ViT-B/16", "ViT-B-16", 25)])
def test_layer_selection_keeps_exactly_top_k_and_never_a_frozen_tensor(arch, tag, k):
    lm = load_model(arch, pretrained="none")
    model = lm.model
    acfg = yaml.safe_load((REPO / "configs" / "archs" / f"{tag}.yaml").read_text())
    vis, txt = freeze(model, acfg["frozen"])
    names = [n for n, _ in vis + txt]
    if tag == "RN50":  # what SPEC §2 leaves trainable in RN50's image tower: the attention pool
        assert sorted(n for n, _ in vis) == sorted(f"visual.attnpool.{a}_proj.{b}" for a in "qkvc"
                                                  for b in ("weight", "bias"))
    assert not any(re.search(r"conv\d*\.weight$|downsample|positional_embedding|\.bn\d|ln_final|token_emb", n)
                   for n in names if tag == "RN50") and all(n.startswith("transformer.") for n, _ in txt)
    g = torch.Generator().manual_seed(0)
    for _, p in vis + txt:  # gradients with a known ranking
        p.grad = torch.randn(p.shape, generator=g) * torch.rand(1, generator=g)
    expected = {t: sorted(lst, key=lambda np: -(np[1].grad.abs().sum() / np[1].numel()).item())[:k]
                for t, lst in (("v", vis), ("t", txt))}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    kept = select_top_k(vis, k) + select_top_k(txt, k)
    assert {n for n, _ in kept} == {n for n, _ in expected["v"] + expected["t"]}
    assert sum(p.grad is not None for _, p in model.named_parameters()) == len(kept) == 2 * k if tag != "RN50" \
        else len(kept) == 5 + 5
    opt = torch.optim.Adam([p for _, p in vis + txt], lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    opt.step()
    kept_names = {n for n, _ in kept}
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in kept_names), n  # changed iff selected
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n


def test_rollback_restores_model_and_optimiser_exactly(demo):
    model = copy.deepcopy(demo.model)
    params = [p for p in model.transformer.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=0.2)

    def step(seed):
        g = torch.Generator().manual_seed(seed)
        for p in params[:6]:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(0)  # some optimiser state exists for the first 6 tensors, none for the rest
    state_before = copy.deepcopy(opt.state_dict())
    params_before = [p.detach().clone() for p in params]
    snap = Snapshot(opt)
    for seed in (1, 2):
        snap.before_change(params[:6] + params[10:12])  # includes tensors with no Adam state yet
        for p in params[10:12]:
            p.grad = torch.ones_like(p)
        step(seed)
    snap.restore()
    assert all(torch.equal(a, b) for a, b in zip(params, params_before))
    after = opt.state_dict()
    assert after["state"].keys() == state_before["state"].keys()
    for i, st in state_before["state"].items():
        assert all(torch.equal(st[k], after["state"][i][k]) for k in st)


def test_batchnorm_statistics_unchanged_and_model_restored_by_unlearning(demo, generated, digits):
    model = copy.deepcopy(demo.model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = type("A", (), {"generated_data": 1, "generated_dir": str(generated[0])})
    x = train.forget_images(args, demo, digits, "three", generated[1][0]["model_key"])
    tokens = demo.tokenizer(["A picture of three"] * len(x))
    acc = lambda: 1.0  # noqa: E731 — never improves: every epoch is rolled back
    cfg = UnlearnConfig(lr=1e-3, n_samples=3, max_epochs=2, frozen=[r"(^|\.)conv\d*\.weight$"])
    best, rec = unlearn(model, x, tokens, acc, cfg, torch.Generator().manual_seed(0))
    assert best == {} and rec.rollbacks == 2 and rec.epochs == 2
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_logs_follow_the_paper_schema(demo_run):
    out, logs = demo_run
    on_disk = json.loads((out / "logs.json").read_text())
    assert on_disk == json.loads(json.dumps(logs))
    assert on_disk["settings"]["n_samples"] == 5 and json.loads((out / "args.txt").read_text())["seed"] == 0
    for ds, cls, other in (("Digits", "three", "Shapes"), ("Shapes", "red star", "Digits")):
        rec = on_disk[ds][cls]
        assert list(rec)[0] == "summary" and list(rec)[-1] == "final_results"
        stds = list(rec)[1:-1]
        assert all(float(s) in UnlearnConfig().stds for s in stds)
        assert rec["summary"]["epochs"] == sum(len(rec[s]["epochs"]) for s in stds)
        final = rec["final_results"]
        assert set(final[ds][cls]) == {"cls_acc_test", "no_cls_acc", "acc_train", "acc_val_hard", "acc_val_true_data"}
        assert 0 <= final[other]["all"]["all_ds"] <= 1
        before = json.loads((out / "zeroshot_before.json").read_text())
        assert before[ds][cls]["cls_acc_test"] > 0.8  # the demo model knows the class before
    from clip_forget_utils import create_results
    df, _ = create_results(str(out), gen_data=True, all_res=True, rn=True)
    row = df.set_index("name").loc["three"]
    assert row["cls_forget"] == pytest.approx(on_disk["Digits"]["three"]["final_results"]["Digits"]["three"]["cls_acc_test"])


def test_rerun_skips_finished_classes(demo_run, generated, data_root, capsys):
    out, logs = demo_run
    before = (out / "logs.json").read_text()
    train.main(["--output_dir", str(out), "--generated_dir", str(generated[0]), "--n_samples", "5",
                "--data_root", data_root, "--device", "cpu"])
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 2
    assert (out / "logs.json").read_text() == before


def test_saved_delta_reproduces_the_unlearned_model(demo_run, generated, data_root, tmp_path):
    import train as t
    out = tmp_path / "run"
    t.main(["--output_dir", str(out), "--generated_dir", str(generated[0]), "--n_samples", "5", "--data_root",
            data_root, "--device", "cpu", "--forget_labels", "red star", "--save_best_model", "1", "--run_ds", "Shapes"])
    logs = json.loads((out / "logs.json").read_text())
    lm = load_model("demo", pretrained=str(out / "models" / "Shapes" / "red star.pt"), data_root=data_root)
    from datasets import build_dataset
    from zeroshot import class_figures, classifier_weights, loader, predict
    ds = build_dataset("Shapes", data_root)
    figs = class_figures(*predict(lm.model, loader(ds.test, lm.preprocess, "cpu"), classifier_weights(lm, ds, "cpu"),
                                  "cpu"), 3)
    assert figs["cls_acc_test"] == pytest.approx(logs["Shapes"]["red star"]["final_results"]["Shapes"]["red star"]["cls_acc_test"])
