#!/bin/sh
# The GPU check: on a CUDA machine with no model weights and no datasets (the two demo CLIPs train on the
# CPU first, side by side: about 6 minutes on 2 cores here),
#   1. the demo pipeline on the GPU: synthetic sets, unlearning (the paper's method, the improved
#      preset and an image-side method with its side sets), the forgetting audit and the comparison;
#      then the paper's method and improved on demo-vit (the demo CLIP with a ViT image tower);
#   2. open_clip's RN50 and ViT-B/16 with random weights at 224 px: synthesis, and two unlearning
#      epochs on real images each (the real architectures' CUDA path: devices, generators, memory);
#   3. the speed benchmarks on the GPU (ours against a naive reference-style loop), fp32 / tf32 / bf16.
# Every step runs even if one before it failed; the last line says how many failed.
# Output (logs, results, benchmark JSON) goes under $OUT, default bench/out/gpu_check.
# It runs .venv/bin/python if there is one, else python3 (a node's own PyTorch; PYTHON=... picks
# another); open_clip and submitit missing there come from the wheels of bench/download_wheels.sh.
#
#   sh bench/gpu_check.sh            # DEVICE=cuda:1 sh bench/gpu_check.sh for another GPU
#   DEVICE=cpu PARTS=1 sh bench/gpu_check.sh   # part 1 alone, on the CPU (no CUDA-only checks)
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/out/gpu_check}
DEV=${DEVICE:-cuda}
PARTS=${PARTS-123}  # the parts to run, e.g. 12; empty: only the environment check
WHEELS=${WHEELS:-wheels}
mkdir -p "$OUT"
# a private data root and cache: the demo datasets and CLIP are made there on first use
export CLIP_FORGET_DATA="$OUT/data" CLIP_FORGET_CACHE="$OUT/cache" PYTHONUNBUFFERED=1
FAILED=0
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
ON=1
run() { [ "$ON" -eq 1 ] || return 0; "$@" || { echo "FAILED ($?): $*"; FAILED=$((FAILED + 1)); }; }
# part N TITLE: the steps after it run only if N is in $PARTS (run does nothing otherwise)
part() { N=$1; shift; case $PARTS in *"$N"*) ON=1; step "$N. $*";; *) ON=0;; esac; }

step "environment: $PY"
# A GPU node's own Python lacks this project's pure-Python packages: install the downloaded wheels
# into a folder of our own and put it on PYTHONPATH (the node's Python stays as it is). --no-deps:
# torch and the rest are the node's; --no-index: there is no network.
if ! "$PY" -c "import open_clip, submitit" 2>/dev/null; then
  if [ -d "$WHEELS" ]; then
    PYLIB="$(cd "$OUT" && pwd)/pylib"
    run "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --upgrade --target "$PYLIB" \
        "$WHEELS"/*.whl
    export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "$PY cannot import open_clip and submitit, and there is no $WHEELS/: run sh bench/download_wheels.sh" \
        "on a machine with network and copy $WHEELS/ here (README, Speed)"
  fi
fi
run "$PY" -c "import open_clip, submitit, torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'open_clip', open_clip.__version__, 'submitit', submitit.__version__)"

case $DEV in
  cuda*)
    step "device"
    run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    run "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', \
torch.__version__, torch.version.cuda, torch.cuda.get_device_name())";;
esac

part 1 "demo pipeline on $DEV"
# the demo CLIPs train on the CPU with one thread each (configs/demo_world.yaml): demo-vit trains in the
# background while the first step trains demo; its own steps below wait for it (the cache's lock)
[ "$ON" -eq 1 ] && "$PY" -c "from models import load_model; load_model('demo-vit')" >"$OUT/demo_vit.log" 2>&1 &
DEMO="--backbone_arch demo --run_ds Digits,Shapes --device $DEV"
run "$PY" datagen.py $DEMO --paper_settings 1 --out_dir "$OUT/gen"
run "$PY" train.py $DEMO --generated_dir "$OUT/gen" --save_best_model 1 --output_dir "$OUT/runs/lipschitz/seed_0"
run "$PY" train.py $DEMO --method improved --save_best_model 1 --output_dir "$OUT/runs/improved/seed_0"
# an image-side method on its confident, held-out and retain sets (datagen.py --method confident)
run "$PY" datagen.py $DEMO --method confident --retain_per_class 4 --out_dir "$OUT/gen_confident"
run "$PY" train.py $DEMO --method hinge --towers image --retain_weight 1 --stop margin --lr 2e-4 \
    --generated_dir "$OUT/gen_confident" --save_best_model 1 --output_dir "$OUT/runs/hinge/seed_0"
run "$PY" audit.py "$OUT/runs/lipschitz/seed_0" "$OUT/runs/improved/seed_0" "$OUT/runs/hinge/seed_0" --device "$DEV"
run "$PY" clip_forget_utils.py compare "$OUT/runs/lipschitz" "$OUT/runs/improved" "$OUT/runs/hinge"
# demo-vit, the demo CLIP with a ViT image tower (trained here first): the paper's method and improved
VIT="--backbone_arch demo-vit --run_ds Digits,Shapes --device $DEV"
run "$PY" datagen.py $VIT --paper_settings 1 --out_dir "$OUT/gen_vit"
run "$PY" train.py $VIT --generated_dir "$OUT/gen_vit" --save_best_model 1 --output_dir "$OUT/runs_vit/lipschitz/seed_0"
run "$PY" train.py $VIT --method improved --save_best_model 1 --output_dir "$OUT/runs_vit/improved/seed_0"
run "$PY" clip_forget_utils.py compare "$OUT/runs_vit/lipschitz" "$OUT/runs_vit/improved"

part 2 "RN50 and ViT-B/16 with random weights at 224 px"
# random weights give every image one class, so datagen may accept no image of `three`: that ends in its
# one-line error (exit 2, "no image accepted"), which is the expected outcome here; a crash fails the step
synth() {
  "$PY" datagen.py "$@" >"$OUT/datagen_$TAG.log" 2>&1; RC=$?; cat "$OUT/datagen_$TAG.log"
  [ "$RC" -eq 0 ] || { [ "$RC" -eq 2 ] && grep -q "no image accepted" "$OUT/datagen_$TAG.log"; }
}
for ARCH in RN50 ViT-B/16; do
  TAG=$(echo "$ARCH" | tr / -)
  # random weights may never make the class the top-1: 50 steps and 16 attempts bound the time, and
  # the unlearning runs on the class's real images (--generated_data 0, the paper's real-data mode)
  run synth --backbone_arch "$ARCH" --pretrained none --run_ds Digits --forget_labels three \
      --device "$DEV" --out_dir "$OUT/gen_$TAG" --n_generated 16 --high_prob 0.2 --min_prob 0.2 --max_steps 50 \
      --max_failed 16
  run "$PY" train.py --backbone_arch "$ARCH" --pretrained none --run_ds Digits --eval_ds Digits \
      --forget_labels three --device "$DEV" --generated_data 0 --max_epochs 2 --n_samples 25 \
      --output_dir "$OUT/runs/random_$TAG/seed_0"
done

part 3 "speed on $DEV"
run "$PY" bench/bench_datagen.py --device "$DEV" --n 64 --batch_size 64 --out "$OUT/bench/datagen_demo.json"
run "$PY" bench/bench_datagen.py --arch RN50 --pretrained none --device "$DEV" --n 16 --batch_size 16 \
    --max_steps 20 --high_prob 0.99 --out "$OUT/bench/datagen_RN50_random.json"
run "$PY" bench/bench_textspace.py --device "$DEV" --steps 300 --out "$OUT/bench/textspace_demo.json"
run "$PY" bench/bench_textspace.py --arch RN50 --pretrained none --dataset StanfordDogs --classes 40 --templates 8 \
    --device "$DEV" --steps 100 --out "$OUT/bench/textspace_RN50_random.json"
# TF32 is a CUDA tensor-core format (the scripts refuse it elsewhere)
case $DEV in cuda*) PRECISIONS="fp32 tf32 bf16";; *) PRECISIONS="fp32 bf16";; esac
for P in $PRECISIONS; do
  run "$PY" bench/bench_train.py --device "$DEV" --precision "$P" --out "$OUT/bench/train_demo_$P.json"
  for ARCH in RN50 ViT-B/16; do
    TAG=$(echo "$ARCH" | tr / -)
    run "$PY" bench/bench_train.py --arch "$ARCH" --pretrained none --batch 64 --n_samples 25 --steps 3 \
        --device "$DEV" --precision "$P" --out "$OUT/bench/train_${TAG}_$P.json"
  done
done

step "done: $FAILED step(s) failed; output in $OUT"
[ "$FAILED" -eq 0 ]
