#!/bin/sh
# The GPU check: on a CUDA machine with no model weights and no datasets, in about 5 minutes,
#   1. the demo pipeline on the GPU: synthetic sets, unlearning (the paper's method, the improved
#      preset and an image-side method with its side sets), the forgetting audit and the comparison;
#   2. open_clip's RN50 and ViT-B/16 with random weights at 224 px: synthesis, and two unlearning
#      epochs on real images each (the real architectures' CUDA path: devices, generators, memory);
#   3. the speed benchmarks on the GPU (ours against a naive reference-style loop), fp32 / tf32 / bf16.
# Every step runs even if one before it failed; the last line says how many failed.
# Output (logs, results, benchmark JSON) goes under $OUT, default bench/out/gpu_check.
#
#   sh bench/gpu_check.sh            # DEVICE=cuda:1 sh bench/gpu_check.sh for another GPU
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/out/gpu_check}
DEV=${DEVICE:-cuda}
mkdir -p "$OUT"
# a private data root and cache: the demo datasets and CLIP are made there on first use
export CLIP_FORGET_DATA="$OUT/data" CLIP_FORGET_CACHE="$OUT/cache" PYTHONUNBUFFERED=1
FAILED=0
step() { printf '\n== %s (%s)\n' "$*" "$(date +%T)"; }
run() { "$@" || { echo "FAILED ($?): $*"; FAILED=$((FAILED + 1)); }; }

step "device"
run nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
run "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__, \
torch.version.cuda, torch.cuda.get_device_name())"

step "1. demo pipeline on $DEV"
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

step "2. RN50 and ViT-B/16 with random weights at 224 px"
for ARCH in RN50 ViT-B/16; do
  TAG=$(echo "$ARCH" | tr / -)
  # random weights may never make the class the top-1: 50 steps and 16 attempts bound the time, and
  # the unlearning runs on the class's real images (--generated_data 0, the paper's real-data mode)
  run "$PY" datagen.py --backbone_arch "$ARCH" --pretrained none --run_ds Digits --forget_labels three \
      --device "$DEV" --out_dir "$OUT/gen_$TAG" --n_generated 16 --high_prob 0.2 --min_prob 0.2 --max_steps 50 \
      --max_failed 16
  run "$PY" train.py --backbone_arch "$ARCH" --pretrained none --run_ds Digits --eval_ds Digits \
      --forget_labels three --device "$DEV" --generated_data 0 --max_epochs 2 --n_samples 25 \
      --output_dir "$OUT/runs/random_$TAG/seed_0"
done

step "3. speed on $DEV"
run "$PY" bench/bench_datagen.py --device "$DEV" --n 64 --batch_size 64 --out "$OUT/bench/datagen_demo.json"
run "$PY" bench/bench_datagen.py --arch RN50 --pretrained none --device "$DEV" --n 16 --batch_size 16 \
    --max_steps 20 --high_prob 0.99 --out "$OUT/bench/datagen_RN50_random.json"
run "$PY" bench/bench_textspace.py --device "$DEV" --steps 300 --out "$OUT/bench/textspace_demo.json"
run "$PY" bench/bench_textspace.py --arch RN50 --pretrained none --dataset StanfordDogs --classes 40 --templates 8 \
    --device "$DEV" --steps 100 --out "$OUT/bench/textspace_RN50_random.json"
for P in fp32 tf32 bf16; do
  run "$PY" bench/bench_train.py --device "$DEV" --precision "$P" --out "$OUT/bench/train_demo_$P.json"
  for ARCH in RN50 ViT-B/16; do
    TAG=$(echo "$ARCH" | tr / -)
    run "$PY" bench/bench_train.py --arch "$ARCH" --pretrained none --batch 64 --n_samples 25 --steps 3 \
        --device "$DEV" --precision "$P" --out "$OUT/bench/train_${TAG}_$P.json"
  done
done

step "done: $FAILED step(s) failed; output in $OUT"
[ "$FAILED" -eq 0 ]
