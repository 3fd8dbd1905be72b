"""train.py --protocol sequential: forget requests that arrive over time, each starting from the model the
previous one left; after each, every class forgotten so far is measured on real test images, and a rerun
resumes from the saved model of the last finished request."""
from __future__ import annotations

import json

import pytest
import torch

import train
from common import UserError
from forget_cls import FORGET_CLASSES
from runs import RunFolder

A, B = FORGET_CLASSES["Digits"][0], FORGET_CLASSES["Shapes"][0]  # the demo's defaults: three, red star


def argv(out, data_root, labels=f"{A},{B}", *extra):
    # improved needs no synthetic image: the requests differ only in what the model already forgot
    return ["--backbone_arch", "demo", "--run_ds", "Digits,Shapes", "--forget_labels", labels, "--method", "improved",
            "--data_root", data_root, "--device", "cpu", "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("sequential") / "run"
    return out, train.main(argv(out, data_root, f"{A},{B}", "--protocol", "sequential"))


def test_each_request_starts_from_the_last_and_every_forgotten_class_stays_forgotten(sequential, data_root,
                                                                                      tmp_path):
    out, logs = sequential
    first, second = logs["Digits"][A], logs["Shapes"][B]
    assert logs["settings"]["protocol"] == "sequential"
    assert [first["request"]["index"], second["request"]["index"]] == [1, 2]
    after1, after2 = first["request"]["after"], second["request"]["after"]
    assert list(after1["Digits"]["forgotten"]) == [A] and after1["Shapes"]["forgotten"] == {}
    # after the second request both classes are measured, and the first is still forgotten
    assert after2["Digits"]["forgotten"][A] <= 0.25 and after2["Shapes"]["forgotten"][B] <= 0.25
    # the second model is the first one's changes plus its own: a delta against the original model
    run = RunFolder(out)
    d1, d2 = run.load_delta("Digits", A)["changed"], run.load_delta("Shapes", B)["changed"]
    assert set(d1) <= set(d2) and run.load_delta("Shapes", B)["protocol"] == "sequential"
    # the first request is the per-class protocol's first class: same model, same figures
    per_class = train.main(argv(tmp_path / "per_class", data_root, A, "--save_best_model", "1"))
    assert per_class["Digits"][A]["final_results"] == first["final_results"]
    alone = RunFolder(tmp_path / "per_class").load_delta("Digits", A)["changed"]
    assert set(alone) == set(d1) and all(torch.equal(t, alone[n]) for n, t in d1.items())
    # kept accuracy leaves out every forgotten class: with both gone, Digits' kept classes exclude three
    assert after2["Digits"]["kept_acc"] >= 0.9 and after2["Shapes"]["kept_acc"] >= 0.9


def test_a_rerun_resumes_from_the_last_finished_request(sequential, data_root, tmp_path):
    out, logs = sequential
    # a folder with only the first request finished: the rerun makes the second from the first's model
    part = tmp_path / "part"
    part.mkdir()
    (part / "models" / "Digits").mkdir(parents=True)
    (part / "models" / "Digits" / f"{A}.pt").write_bytes((out / "models" / "Digits" / f"{A}.pt").read_bytes())
    (part / "zeroshot_before.json").write_bytes((out / "zeroshot_before.json").read_bytes())
    (part / "args.txt").write_bytes((out / "args.txt").read_bytes())
    kept = {k: v for k, v in logs.items() if k != "Shapes"}
    (part / "logs.json").write_text(json.dumps(kept))
    resumed = train.main(argv(part, data_root, f"{A},{B}", "--protocol", "sequential"))
    assert resumed["Shapes"][B]["final_results"] == logs["Shapes"][B]["final_results"]
    assert resumed["Shapes"][B]["request"] == logs["Shapes"][B]["request"]


def test_a_rerun_in_another_order_or_protocol_is_refused(sequential, data_root):
    out, _ = sequential
    with pytest.raises(UserError, match=r"holds sequential requests .* which are not the first of this run's order"):
        train.main(argv(out, data_root, f"{B},{A}", "--protocol", "sequential"))
    with pytest.raises(UserError, match=r"holds a run with other settings \(protocol: sequential vs per_class\)"):
        train.main(argv(out, data_root, f"{A},{B}"))


# ----------------------------------------------------------------------------- the hand-over folder
PLAIN = """
import json, sys
import open_clip, torch
from PIL import Image
name, items, template, classnames = json.load(open(sys.argv[1]))
model, _, preprocess = open_clip.create_model_and_transforms(name)
tokenizer = open_clip.get_tokenizer(name)
model.eval()
with torch.no_grad():
    w = torch.nn.functional.normalize(model.encode_text(tokenizer([template.format(c) for c in classnames])), dim=-1)
    x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p, _ in items])
    f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
print(json.dumps((f @ w.T).argmax(-1).tolist()))
"""


def plain_open_clip_predictions(name: str, ds, tmp_path, env=None) -> list[int]:
    """Zero-shot predictions on `ds`'s test images by open_clip alone: a fresh Python that imports no module
    of this project (run outside the repository, with no PYTHONPATH)."""
    import os
    import subprocess
    import sys
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([name, [(d.impath, d.label) for d in ds.test], ds.template,
                                [c.replace("_", " ") for c in ds.classnames]]))
    script = tmp_path / "plain.py"
    script.write_text(PLAIN)
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, str(script), str(spec)], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data_root):
    root = tmp_path_factory.mktemp("export")
    logs = train.main(argv(root / "run", data_root, A, "--export", str(root / "forgot_three")))
    return root / "forgot_three", logs


def test_the_exported_folder_loads_in_plain_open_clip_with_the_runs_figures(exported, digits, tmp_path):
    folder, logs = exported
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "open_clip_config.json",
                                                        "open_clip_model.safetensors", "unlearning.json"]
    preds = torch.tensor(plain_open_clip_predictions(f"local-dir:{folder}", digits, tmp_path))
    labels = torch.tensor([d.label for d in digits.test])
    idx = digits.classnames.index(A)
    final = logs["Digits"][A]["final_results"]["Digits"][A]
    assert (preds[labels == idx] == idx).float().mean().item() == pytest.approx(final["cls_acc_test"], abs=1e-6)
    assert (preds[labels != idx] == labels[labels != idx]).float().mean().item() == \
        pytest.approx(final["no_cls_acc"], abs=1e-6)
    info = json.loads((folder / "unlearning.json").read_text())
    assert info["forgotten"] == [["Digits", A]] and info["protocol"] == "per_class" and info["method"] == "improved"
    assert info["base_model"]["tag"] == "demo" and len(info["base_model"]["weights_sha1"]) == 16
    assert info["method_config"] == logs["settings"]["method_config"] and info["seed"] == 0
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: open_clip\n") and f"`{A}` (Digits)" in card


def test_an_exported_model_is_a_model_name_everywhere_also_from_an_offline_hub_cache(exported, data_root, tmp_path):
    import os
    import subprocess
    import sys

    import zeroshot
    from common import REPO
    folder, logs = exported
    final = logs["Digits"][A]["final_results"]["Digits"][A]
    figs = zeroshot.main(["--backbone_arch", f"local-dir:{folder}", "--run_ds", "Digits", "--data_root", data_root,
                          "--device", "cpu"])
    assert figs["Digits"][A]["cls_acc_test"] == pytest.approx(final["cls_acc_test"], abs=1e-6)
    # the same folder as a Hub repo in a prepared cache, read with no network
    snapshot = tmp_path / "hub" / "models--someone--forgot-three" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (tmp_path / "hub" / "models--someone--forgot-three" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--forgot-three" / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = tmp_path / "z.json"
    p = subprocess.run([sys.executable, "zeroshot.py", "--backbone_arch", "hf-hub:someone/forgot-three", "--run_ds",
                        "Digits", "--data_root", data_root, "--device", "cpu", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(out.read_text())["Digits"][A]["cls_acc_test"] == pytest.approx(final["cls_acc_test"], abs=1e-6)
    p = subprocess.run([sys.executable, "zeroshot.py", "--backbone_arch", "hf-hub:someone/not-there", "--run_ds",
                        "Digits", "--data_root", data_root], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "HF_HUB_OFFLINE" in p.stderr, p.stderr


def test_export_needs_one_model_and_a_new_folder(exported, data_root, tmp_path):
    folder, _ = exported
    with pytest.raises(UserError, match=r"--export writes one model, and --protocol per_class makes one per class"):
        train.main(argv(tmp_path / "run", data_root, f"{A},{B}", "--export", str(tmp_path / "new")))
    with pytest.raises(UserError, match=r"exists and is not an empty folder"):
        train.main(argv(tmp_path / "run", data_root, A, "--export", str(folder)))
    with pytest.raises(UserError, match=r"has no open_clip_config.json: not an open_clip model folder"):
        train.main(argv(tmp_path / "run2", data_root, A) + ["--backbone_arch", f"local-dir:{tmp_path}"])
