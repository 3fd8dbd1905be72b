"""train: the paper's loss, layer selection, frozen parameters, BatchNorm, rollback, the loop's edge
cases as the paper's code has them, evaluation datasets, logs and resume."""
from __future__ import annotations

import copy
import dataclasses
import json
import re

import pytest
import torch
import yaml

import methods
import methods.lipschitz as lip
import train
from common import REPO
from methods.base import ForgetTask, Snapshot, freeze
from methods.lipschitz import Config as UnlearnConfig
from methods.lipschitz import select_top_k, unlearn
from methods.pieces import lipschitz_loss
from models import load_model


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


def _task(demo, model, x, acc, **kw) -> ForgetTask:
    return ForgetTask(model=model, tokenizer=demo.tokenizer, classnames=["three"], template="{}", class_index=0,
                      images=x, caption="A picture of three", other_prompts=[], syn_accuracy=acc,
                      generator=torch.Generator().manual_seed(0), **kw)


@pytest.fixture(scope="module")
def three(demo, generated, digits):
    return train.forget_images(demo, digits, "three", generated[1][0]["model_key"], str(generated[0]), 0)[0]


def test_batchnorm_statistics_unchanged_and_model_restored_by_unlearning(demo, three):
    model = copy.deepcopy(demo.model)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = UnlearnConfig(lr=1e-3, n_samples=3, max_epochs=2, frozen=[r"(^|\.)conv\d*\.weight$"])
    res = unlearn(_task(demo, model, three, lambda: 1.0), cfg)  # accuracy stays 1: every epoch is rolled back
    assert res.summary["rollbacks"] == 2 and res.summary["epochs"] == 2 and res.summary["no_epoch_improved"]
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())


def test_first_epoch_always_runs_as_in_the_paper(demo, three):
    # the paper's best accuracy starts at 1.0: a class already below the stop accuracy is still trained once
    model = copy.deepcopy(demo.model)
    res = unlearn(_task(demo, model, three, lambda: 0.05), UnlearnConfig(lr=1e-3, n_samples=2))
    assert res.summary["epochs"] == 1 and res.summary["steps"] == 1 and not res.summary["no_epoch_improved"]
    assert res.changed and res.log["0.1"]["improved"]


def test_without_improvement_the_result_is_the_model_before_the_last_rollback(demo, three):
    # one epoch that does not improve (accuracy stays 1) is rolled back, and the paper then evaluates the
    # model as that epoch left it: the very model the same epoch gives when it does improve
    cfg = UnlearnConfig(lr=1e-3, n_samples=2, max_epochs=1)
    stuck = unlearn(_task(demo, copy.deepcopy(demo.model), three, lambda: 1.0), cfg)
    better = unlearn(_task(demo, copy.deepcopy(demo.model), three, lambda: 0.5), cfg)
    assert stuck.summary["no_epoch_improved"] and stuck.summary["rollbacks"] == 1
    assert not better.summary["no_epoch_improved"] and better.summary["rollbacks"] == 0
    assert stuck.changed.keys() == better.changed.keys() and stuck.changed
    assert all(torch.equal(stuck.changed[n], better.changed[n]) for n in stuck.changed)


def test_accumulation_over_several_batches_as_in_the_papers_real_data_mode(demo, monkeypatch):
    """7 batches, accumulation 5: the loss of each batch is divided by 5, optimiser steps after batches 5
    and 7, the top-k selection after every backward, and the epoch stops at the first check <= min_acc."""
    model = copy.deepcopy(demo.model)
    x = torch.randn(28, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    cfg = UnlearnConfig(lr=1e-3, n_samples=2, batch_size=4, max_epochs=1, k_v=1000, k_t=1000, inc_v=[0] * 7,
                        inc_t=[0] * 7)
    grads, selections = [], []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            grads.append([p.grad.clone() if p.grad is not None else None for g in self.param_groups for p in g["params"]])
            return super().step(closure)

    monkeypatch.setattr(lip.torch.optim, "Adam", RecordingAdam)
    real_select = lip.select_top_k
    monkeypatch.setattr(lip, "select_top_k", lambda named, k: selections.append(k) or real_select(named, k))
    checks = []
    res = unlearn(_task(demo, model, x, lambda: checks.append(1) or 0.5, train_view=lambda: x), cfg)
    assert res.summary["steps"] == 2 and len(grads) == 2 and len(selections) == 2 * 7
    assert len(checks) == 1 + 2  # before, and after each step (between steps the model does not change)
    # by hand: the same order and noise stream; the first step holds the sum of 5 batches' gradients / 5
    vis, txt = freeze(model, cfg.frozen)
    params = [p for _, p in vis + txt]
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(28, generator=g)
    tokens = demo.tokenizer(["A picture of three"] * 4)
    for idx in order.split(4)[:5]:
        (lipschitz_loss(model, x[idx], tokens, cfg.stds[0], 2, g) / 5).backward()
    for p, recorded in zip(params, grads[0]):
        assert recorded is not None and torch.allclose(p.grad, recorded, rtol=1e-4, atol=1e-7)
    # a check <= min_acc after the first step ends the epoch before batches 6 and 7
    grads.clear()
    res = unlearn(_task(demo, copy.deepcopy(demo.model), x, iter([0.5, 0.05]).__next__, train_view=lambda: x), cfg)
    assert res.summary["steps"] == 1 and len(grads) == 1


def test_logs_follow_the_paper_schema(demo_run):
    out, logs = demo_run
    on_disk = json.loads((out / "logs.json").read_text())
    assert on_disk == json.loads(json.dumps(logs))
    settings = on_disk["settings"]
    assert settings["method_config"]["n_samples"] == 5 and json.loads((out / "args.txt").read_text())["seed"] == 0
    assert not {f.name for m in methods.METHODS.values() for f in dataclasses.fields(m.Config)} & set(settings)
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
    # --run_ds Shapes alone: every dataset of the demo world is still evaluated after the class, as the paper does
    assert set(logs["Shapes"]["red star"]["final_results"]) == {"Shapes", "Digits"}
    assert logs["settings"]["eval_ds"] == "Shapes,Digits"


def test_eval_ds_limits_the_evaluated_datasets(generated, data_root, tmp_path):
    logs = train.main(["--output_dir", str(tmp_path / "run"), "--generated_dir", str(generated[0]), "--n_samples", "2",
                       "--max_epochs", "1", "--data_root", data_root, "--device", "cpu", "--forget_labels", "red star",
                       "--run_ds", "Shapes", "--eval_ds", "shapes"])
    assert set(logs["Shapes"]["red star"]["final_results"]) == {"Shapes"}
    assert json.loads((tmp_path / "run" / "zeroshot_before.json").read_text()).keys() == {"Shapes"}


def test_bf16_optimisation_runs_close_to_fp32_and_tf32_needs_cuda(generated, data_root, tmp_path):
    def run(*extra):
        return train.main(["--output_dir", str(tmp_path / "_".join(extra or ("fp32",))), "--generated_dir",
                           str(generated[0]), "--n_samples", "2", "--max_epochs", "1", "--data_root", data_root,
                           "--device", "cpu", "--forget_labels", "three", "--run_ds", "Digits", "--eval_ds", "Digits",
                           *extra])["Digits"]["three"]
    fp32, bf16 = run(), run("--precision", "bf16")
    a, b = fp32["0.1"]["epochs"][0]["loss"], bf16["0.1"]["epochs"][0]["loss"]
    assert a != b and b == pytest.approx(a, rel=0.05)  # autocast really ran, and computed the same loss roughly
    from common import UserError
    with pytest.raises(UserError, match="--precision tf32 is for CUDA devices"):
        run("--precision", "tf32")
