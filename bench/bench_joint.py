"""Benchmark: a set of classes forgotten jointly (one run, one model) against one run per class.

Both in this process, on the same demo CLIP and classes: `train.py --protocol per_class` (the baseline:
every class forgotten from the original model, evaluated after each) and `--protocol joint` (one
unlearning run of the whole set, evaluated once). Time is train.main's whole call, evaluation included;
the figures each gives are printed beside it. The image-side methods read synthetic sets from
--generated_dir (datagen.py of the same classes).

    python bench/bench_joint.py                                                   # improved, 3 classes
    python bench/bench_joint.py --method faithful --generated_dir generated_demo  # the paper's method
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from common import atomic_write_json, default_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", default="red star,blue star,three")
    p.add_argument("--method", default="improved")
    p.add_argument("--generated_dir", default=None)
    p.add_argument("--device", default=default_device())
    p.add_argument("--out", default=None, help="default: bench/out/joint_<method>.json")
    args = p.parse_args()
    common = ["--backbone_arch", "demo", "--run_ds", "Digits,Shapes", "--forget_labels", args.classes,
              "--method", args.method, "--device", args.device, "--debug", "0",
              *(["--generated_dir", args.generated_dir] if args.generated_dir else [])]
    row = {"classes": args.classes, "method": args.method, "device": args.device}
    for protocol in ("per_class", "joint"):
        with tempfile.TemporaryDirectory() as out:
            start = time.time()
            logs = train.main([*common, "--protocol", protocol, "--output_dir", out])
            row[f"{protocol}_s"] = round(time.time() - start, 2)
        row[f"{protocol}_forgotten"] = {c: round(logs[d][c]["final_results"][d][c]["cls_acc_test"], 3)
                                        for d, classes in logs.items() if d != "settings" for c in classes}
    row["speedup"] = round(row["per_class_s"] / row["joint_s"], 2)
    print(f"{args.method} on {args.classes}: per class {row['per_class_s']} s, joint {row['joint_s']} s "
          f"({row['speedup']}x); forgotten per class {row['per_class_forgotten']}, joint {row['joint_forgotten']}")
    atomic_write_json(args.out or f"bench/out/joint_{args.method}.json", row)


if __name__ == "__main__":
    main()
