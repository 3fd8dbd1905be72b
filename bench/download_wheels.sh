#!/bin/sh
# The wheels for a GPU node without network: run this where pip reaches PyPI, copy the project with
# its wheels/ folder to the node, and bench/gpu_check.sh installs them from there (pip --no-index)
# when the node's Python cannot import open_clip or submitit.
#
# A GPU node typically has its own PyTorch stack (torch, torchvision, timm, huggingface-hub, numpy,
# pandas, scikit-learn, ...) but not this project's pure-Python packages: open_clip_torch and its
# ftfy and wcwidth, and submitit. Only those are fetched, at requirements.txt's versions, as
# py3-none-any wheels that install on any Python from 3.10 on; never torch.
#
#   sh bench/download_wheels.sh            # into wheels/ (ignored by git)
#   sh bench/download_wheels.sh DIR        # into DIR; gpu_check.sh then needs WHEELS=DIR
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/wheels}
PY=${PYTHON:-python3}
# the version ranges come from requirements.txt (comments stripped), so the two cannot drift apart
SPECS=$(grep -E '^(open_clip_torch|submitit)[<>=!~ ]' "$ROOT/requirements.txt" | sed 's/ *#.*//')
[ "$(echo "$SPECS" | wc -l)" -eq 2 ] || { echo "requirements.txt: expected open_clip_torch and submitit lines" >&2; exit 2; }
# shellcheck disable=SC2086  # SPECS holds one requirement per line, none with a space
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.10 --implementation py --abi none \
    --platform any -d "$DIR" $SPECS ftfy wcwidth || exit 1
echo "wheels in $DIR:"
ls "$DIR"
