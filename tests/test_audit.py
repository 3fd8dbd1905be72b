"""audit.py: the forgetting probes (name, ensemble, alias, linear probe, relearn, blast radius), on the demo."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

import audit
from audit import Auditor
from models import applied
from probes import AuditConfig, Subject, class_accuracy, prompt_shift, relearn
import tokens
from common import REPO
from common import run_cli
from datasets import build_dataset
from demo_world import demo_config
from forget_cls import FORGET_CLASSES

CFG = AuditConfig(relearn_steps=4)  # a short relearning budget keeps the tests fast


@pytest.fixture(scope="module")
def demo_datasets(data_root) -> dict:
    return {name: build_dataset(name, data_root) for name in demo_config()["datasets"]}


def prompt_tokens(lm, datasets: dict) -> dict[str, torch.Tensor]:
    return {n: lm.tokenizer([ds.prompt(c) for c in ds.classnames]) for n, ds in datasets.items()}


def own_tokens(lm, datasets: dict, ds_name: str, classname: str) -> list[int]:
    """Token ids of the class's prompt that no other class prompt of the datasets uses (the token-row
    method's rows, computed here from the tokenizer alone)."""
    tokens = prompt_tokens(lm, datasets)
    idx = datasets[ds_name].classnames.index(classname)
    others = {t for n, tok in tokens.items() for i, row in enumerate(tok) if (n, i) != (ds_name, idx)
              for t in row.tolist()}
    return sorted(set(tokens[ds_name][idx].tolist()) - others)


def two_names(lm, datasets: dict) -> tuple[str, str, list[int], list[int], str]:
    """A demo forget class whose name has tokens of its own, and an alias made of fresh whole-word
    tokens in their place: (dataset, class, own token ids, alias token ids, alias)."""
    used = {t for tok in prompt_tokens(lm, datasets).values() for t in tok.flatten().tolist()}
    fresh = iter(i for w, i in sorted(lm.tokenizer.encoder.items(), key=lambda kv: kv[1])
                 if w.endswith("</w>") and w[:-4].isalpha() and len(w) > 7 and i not in used)
    for ds_name in datasets:
        for cls in FORGET_CLASSES.get(ds_name, []):
            own = own_tokens(lm, datasets, ds_name, cls)
            if not own:
                continue
            new = [next(fresh) for _ in own]
            name_ids = lm.tokenizer([cls])[0]
            name_ids = name_ids[1:int(name_ids.argmax())].tolist()  # between start and end of text
            alias = lm.tokenizer.decode([new[own.index(t)] if t in own else t for t in name_ids]).strip()
            ds = datasets[ds_name]
            swapped = lm.tokenizer([ds.prompt(cls)])[0].apply_(lambda t: new[own.index(t)] if t in own else t)
            if torch.equal(lm.tokenizer([ds.template.format(alias)])[0], swapped):  # the alias reads back
                return ds_name, cls, own, new, alias
    raise AssertionError("no demo forget class has a name of whole-word tokens of its own")


@pytest.fixture(scope="module")
def token_edit(demo, demo_datasets):
    """A demo CLIP that knows a forget class under two names (the alias's token rows are copies of the
    name's), the audit of it, and of the same model with the name's own token rows overwritten. The
    template ensemble is the demo CLIP's training templates."""
    lm = copy.deepcopy(demo)
    ds_name, cls, own, new, alias = two_names(lm, demo_datasets)
    emb = lm.model.token_embedding.weight
    with torch.no_grad():
        emb[new] = emb[own]
        edited = emb.detach().clone()
        g = torch.Generator().manual_seed(0)
        edited[own] = torch.randn(len(own), emb.shape[1], generator=g) * emb.std()
    datasets = {**demo_datasets, ds_name: dataclasses.replace(demo_datasets[ds_name], aliases={cls: [alias]})}
    auditor = Auditor(lm, datasets, CFG, device="cpu")
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    changed = {"token_embedding.weight": edited}
    entry = auditor.audit_class(ds_name, cls, changed)
    return {"auditor": auditor, "entry": entry, "ds": ds_name, "cls": cls, "own": own, "before": before,
            "changed": changed}


def test_alias_probe_still_recognises_a_class_whose_name_tokens_were_edited(token_edit):
    b, a = token_edit["entry"]["original"], token_edit["entry"]["unlearned"]
    assert token_edit["entry"]["changed_towers"] == ["text"]
    assert b["name"] > 0.8 and b["alias"] == pytest.approx(b["name"])  # the model knows both names
    assert a["name"] < 0.5 * b["name"]  # the paper's figure: forgotten
    assert a["alias"] == pytest.approx(b["alias"])  # by its other name the class is still there
    assert b["ensemble"] > 0.8 and a["ensemble"] < 0.5 * b["ensemble"]  # every template holds the name


def test_linear_probe_of_an_unchanged_image_tower_is_identical(token_edit):
    b, a = token_edit["entry"]["original"], token_edit["entry"]["unlearned"]
    assert b["probe"] > 0.8  # the probe knows the class on held-out test images
    assert a["probe"] == b["probe"]


def test_relearning_needs_no_step_on_the_original_and_some_after_the_edit(token_edit):
    b, a = token_edit["entry"]["original"], token_edit["entry"]["unlearned"]
    assert b["relearn_steps"] == 0
    assert a["relearn_steps"] is None or a["relearn_steps"] >= 1
    assert len(a["relearn_curve"]) == CFG.relearn_steps + 1 and a["relearn_curve"][0] == pytest.approx(a["name"])
    assert a["relearn_k"] == CFG.relearn_k
    model = token_edit["auditor"].lm.model  # relearning and the audit put every weight back
    assert all(torch.equal(p, token_edit["before"][n]) for n, p in model.named_parameters())


def test_blast_radius_moves_exactly_the_prompts_with_an_edited_token(token_edit):
    auditor, a = token_edit["auditor"], token_edit["entry"]["unlearned"]
    assert token_edit["entry"]["blast_prompts"] == len(auditor.prompts) >= 990
    own_prompts = {ds.prompt(c) for ds in auditor.datasets.values() for c in ds.classnames}
    assert not own_prompts & set(auditor.prompts)
    hit = torch.isin(auditor.lm.tokenizer(list(auditor.prompts)), torch.tensor(token_edit["own"])).any(1)
    with applied(auditor.lm.model, token_edit["changed"]):
        edited = Subject("edited", auditor.lm, "cpu", CFG, auditor.original, same_image=True)
        shift = prompt_shift(edited, auditor.original, auditor.prompts)
    assert (shift[~hit] == 0).all()  # the causal text transformer: a prompt without the token is untouched
    assert (shift[hit] > 0).all()
    assert a["blast_mean"] == pytest.approx(shift.mean().item())
    assert a["blast_count"] == int((shift > CFG.blast_threshold).sum()) <= int(hit.sum())


def test_unchanged_text_tower_has_a_blast_radius_of_exactly_zero(demo, demo_datasets):
    from zeroshot import class_figures, classifier_weights, loader, predict
    lm = copy.deepcopy(demo)
    auditor = Auditor(lm, demo_datasets, CFG, device="cpu")
    ds_name = next(iter(demo_datasets))
    ds, cls = demo_datasets[ds_name], FORGET_CLASSES[ds_name][0]
    name = "visual.attnpool.c_proj.weight"
    w = dict(lm.model.named_parameters())[name]
    changed = {name: w.detach() + 0.5 * w.detach().std() * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))}
    entry = auditor.audit_class(ds_name, cls, changed)
    a = entry["unlearned"]
    assert entry["changed_towers"] == ["image"]
    assert (a["blast_mean"], a["blast_count"]) == (0.0, 0)
    with applied(lm.model, changed):  # the audit saw the changed image tower (zeroshot.py's own figure)
        expected = class_figures(*predict(lm.model, loader(ds.test, lm.preprocess, "cpu"),
                                          classifier_weights(lm, ds, "cpu"), "cpu"), ds.classnames.index(cls))
    assert a["name"] == pytest.approx(expected["cls_acc_test"])


def test_relearn_on_the_original_model_needs_zero_steps(demo, demo_datasets):
    ds_name = next(iter(demo_datasets))
    ds, cls = demo_datasets[ds_name], FORGET_CLASSES[ds_name][0]
    idx = ds.classnames.index(cls)
    lm = copy.deepcopy(demo)
    subject = Subject("original", lm, "cpu", CFG)
    acc = class_accuracy(*subject.features(ds, "test"), subject.classifier(ds), idx)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    out = relearn(lm, ds, idx, 0.5 * acc, CFG, seed=0, device="cpu")
    assert out["steps"] == 0 and out["curve"][0] == pytest.approx(acc)
    again = relearn(lm, ds, idx, 0.5 * acc, CFG, seed=0, device="cpu")
    assert again["curve"] == out["curve"]  # the seed fixes the images: the same curve
    assert all(torch.equal(p, before[n]) for n, p in lm.model.named_parameters())


# ------------------------------------------------------------------ run folders

def test_audit_of_a_run_folder(demo_run, data_root, capsys):
    from clip_forget_utils import create_results
    out, logs = demo_run
    paper, _ = create_results(out, all_res=True)
    audit.main([str(out), "--relearn_steps", "3", "--device", "cpu", "--data_root", data_root])
    saved = json.loads((out / "audit.json").read_text())
    before = json.loads((out / "zeroshot_before.json").read_text())
    classes = [(d, c) for d in logs if d != "settings" for c in logs[d] if logs[d][c].get("final_results")]
    assert classes and all(c in saved[d] for d, c in classes)
    for d, c in classes:
        e = saved[d][c]
        final = logs[d][c]["final_results"]
        assert e["unlearned"]["name"] == pytest.approx(final[d][c]["cls_acc_test"])
        assert e["original"]["name"] == pytest.approx(before[d][c]["cls_acc_test"])
        # the rest of its dataset and the other datasets, measured again by the audit, as train.py measured them
        assert e["unlearned"]["rest"] == pytest.approx(final[d][c]["no_cls_acc"])
        assert e["unlearned"]["others"] == pytest.approx({o: v["all"]["all_ds"] for o, v in final.items() if o != d})
        assert sorted(e["changed_towers"]) == sorted({"image" if n.startswith("visual.") else "text"
                                                      for n in logs[d][c]["summary"]["changed_tensors"]})
    with __import__("PIL").Image.open(out / "audit.png") as im:
        assert im.format == "PNG" and im.size[1] >= 250
    # create_results: the paper's columns as they were, the audit's after them
    df, _ = create_results(out, all_res=True)
    assert list(df.columns[:len(paper.columns)]) == list(paper.columns)
    assert df[paper.columns].equals(paper)
    row = df.set_index("name").loc[classes[0][1]]
    assert row["audit_probe"] == saved[classes[0][0]][classes[0][1]]["unlearned"]["probe"]
    assert row["audit_relearn_steps_original"] == 0
    # a rerun skips what is done; other settings are refused before any work
    text = (out / "audit.json").read_text()
    capsys.readouterr()
    audit.main([str(out), "--relearn_steps", "3", "--device", "cpu", "--data_root", data_root])
    assert capsys.readouterr().out.count("skipped") == len(classes)
    assert (out / "audit.json").read_text() == text
    with pytest.raises(SystemExit) as e:
        run_cli(audit.main, [str(out), "--relearn_steps", "5", "--device", "cpu", "--data_root", data_root])
    assert e.value.code == 2 and "--redo" in capsys.readouterr().err


def test_audit_user_errors(tmp_path, demo_run, capsys):
    out, _ = demo_run
    for argv, message in (([str(tmp_path / "nope")], "not found"),
                          ([str(tmp_path)], "no logs.json"),
                          ([str(out), "--relearn_k", "0"], "--relearn_k must be at least 1"),
                          ([], "no run folder")):
        with pytest.raises(SystemExit) as e:
            run_cli(audit.main, argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    bare = tmp_path / "no_models"
    bare.mkdir()
    for f in ("logs.json", "args.txt"):
        (bare / f).write_text((out / f).read_text())
    with pytest.raises(SystemExit) as e:
        run_cli(audit.main, [str(bare)])
    assert e.value.code == 2 and "--save_best_model 1" in capsys.readouterr().err


# ------------------------------------------------------------------ the paper's 12 classes: tokens

def test_paper_classes_tokens_each_text_side_method_touches(capsys):
    import open_clip
    rows = tokens.paper_token_report("RN50")  # RN50's tokenizer, which ships with open_clip: no weights
    paper = {d: cs for d, cs in FORGET_CLASSES.items() if d in ("StanfordDogs", "StanfordCars", "Caltech101",
                                                                "OxfordFlowers")}
    assert [(r["ds"], r["name"]) for r in rows] == [(d, c) for d, cs in paper.items() for c in cs]
    by_name = {r["name"]: r for r in rows}
    # what we found (issue #13 said 'minaret edits min': its rows are min and aret)
    assert {c for c, r in by_name.items() if not r["token_rows"]} == {
        "toy poodle", "2009 Spyker C8 Coupe", "2010 Dodge Ram Pickup 3500 Crew Cab", "tree mallow"}
    assert by_name["platypus"]["token_rows"] == ["plat", "y", "pus"]
    assert by_name["minaret"]["token_rows"] == ["min", "aret"]
    assert by_name["Pekinese"]["token_rows"] == ["kine", "se"]
    assert by_name["Scotch terrier"]["token_rows"] == ["scotch"]
    # every reported token is in the class's prompt and in no other class prompt of the four datasets
    tok = open_clip.get_tokenizer("RN50-quickgelu")
    ref = json.loads((REPO / "reference" / "zeroshot_openai_RN50.json").read_text())
    from datasets import dataset_config
    ids = {(d, c): set(tok([dataset_config(d).template.format(c)])[0].tolist()) for d, cs in ref.items() for c in cs}
    for r in rows:
        own = set(r["token_ids"])
        assert own <= ids[(r["ds"], r["name"])]
        assert not any(own & other for k, other in ids.items() if k != (r["ds"], r["name"]))
        assert r["token_rows"] == [tokens.token_text(tok, t) for t in r["token_ids"]]
    audit.main(["--tokens"])
    printed = capsys.readouterr().out
    assert "4 of 12 classes have no token of their own" in printed and "`plat` `y` `pus`" in printed


def test_token_report_on_the_demo_matches_the_token_rows(demo, demo_datasets):
    """The report's rows are the rows the token method edits (own_tokens above, from the tokenizer)."""
    classnames = {n: ds.classnames for n, ds in demo_datasets.items()}
    templates = {n: ds.template for n, ds in demo_datasets.items()}
    forget = {n: FORGET_CLASSES[n] for n in demo_datasets}
    for r in tokens.token_report(demo.tokenizer, classnames, templates, forget):
        expected = own_tokens(demo, demo_datasets, r["ds"], r["name"])
        assert sorted(r["token_ids"]) == expected


def test_val_split_audit_measures_the_class_on_its_validation_images(demo_run, data_root):
    """audit.py --split val (what methods are chosen by) writes audit_val.json; its name probe of the
    unlearned model is the class's real val accuracy that train.py logs (acc_val_true_data)."""
    out, logs = demo_run
    audit.main([str(out), "--split", "val", "--relearn_steps", "2", "--device", "cpu", "--data_root", data_root])
    saved = json.loads((out / "audit_val.json").read_text())
    assert saved["settings"]["split"] == "val" and (out / "audit_val.png").is_file()
    for d in (d for d in logs if d != "settings"):
        for c, log in logs[d].items():
            assert saved[d][c]["unlearned"]["name"] == pytest.approx(log["final_results"][d][c]["acc_val_true_data"])


def test_oracle_column_comes_from_the_retrained_weights(demo_run, data_root, tmp_path):
    """audit.py --oracle audits the demo CLIP retrained without the class beside the unlearned model:
    its figures are the retrained model's own (measured here directly), not the original's."""
    import shutil

    from datasets import build_dataset
    from models import load_demo_oracle
    from zeroshot import class_figures, classifier_weights, loader, predict
    out, logs = demo_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    shutil.rmtree(run / "models" / "Digits")  # one class is enough: the Shapes forget class
    (run / "logs.json").write_text(json.dumps({k: v for k, v in logs.items() if k != "Digits"}))
    cls = FORGET_CLASSES["Shapes"][0]
    audit.main([str(run), "--oracle", "--redo", "--relearn_steps", "2", "--device", "cpu", "--data_root", data_root])
    e = json.loads((run / "audit.json").read_text())["Shapes"][cls]
    oracle = load_demo_oracle([("Shapes", cls)], "cpu", data_root)
    shapes = build_dataset("Shapes", data_root)
    idx = shapes.classnames.index(cls)
    direct = class_figures(*predict(oracle.model, loader(shapes.test, oracle.preprocess, "cpu"),
                                    classifier_weights(oracle, shapes, "cpu"), "cpu"), idx)
    assert e["oracle"]["name"] == pytest.approx(direct["cls_acc_test"])
    assert e["oracle"]["rest"] == pytest.approx(direct["no_cls_acc"])
    assert e["oracle"]["name"] < e["original"]["name"] - 0.5  # it never saw the class
    agree = sum(a == b for a, b in zip(e["unlearned"]["forget_preds"], e["oracle"]["forget_preds"]))
    assert e["unlearned"]["oracle_agreement"] == pytest.approx(agree / len(e["oracle"]["forget_preds"]))
    from clip_forget_utils import create_results
    df, _ = create_results(run, all_res=True)
    assert df.set_index("name").loc[cls, "audit_name_oracle"] == pytest.approx(direct["cls_acc_test"])
