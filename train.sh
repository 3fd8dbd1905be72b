#!/bin/sh
# The paper's positional arguments:
#   sh train.sh GEN_DATA ATTEMPT SEED DEBUG N_SAMPLES MINSTOPACC RUNDS ARCH [extra train.py options]
#   sh train.sh 1 1 0 1 25 0.1 "StanfordDogs,StanfordCars,Caltech101,OxfordFlowers" RN50
#   sh train.sh 1 1 0 1 25 0.1 "Digits,Shapes" demo
# Results go to results/results${ATTEMPT}/seed_${SEED}/. N_SAMPLES and MINSTOPACC are options of the
# paper's method (lipschitz): other methods (--method) are run with train.py itself (README "Methods").
set -e
cd "$(dirname "$0")"
if [ "$#" -lt 8 ]; then
  echo "usage: sh train.sh GEN_DATA ATTEMPT SEED DEBUG N_SAMPLES MINSTOPACC RUNDS ARCH [train.py options]" >&2
  exit 2
fi
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
GEN_DATA=$1; ATTEMPT=$2; SEED=$3; DEBUG=$4; N_SAMPLES=$5; MINSTOPACC=$6; RUNDS=$7; ARCH=$8
shift 8
exec "$PY" train.py --generated_data "$GEN_DATA" --seed "$SEED" --debug "$DEBUG" --n_samples "$N_SAMPLES" \
  --min_train_acc_stop "$MINSTOPACC" --run_ds "$RUNDS" --backbone_arch "$ARCH" --save_best_model 1 \
  --output_dir "results/results${ATTEMPT}/seed_${SEED}" "$@"
