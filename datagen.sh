#!/bin/sh
# Synthesise the forget sets of the paper's benchmark (or of the demo world).
#   sh datagen.sh RN | ViT | demo | demo-vit  [extra datagen.py options]
# RN and ViT use the paper's per-class thresholds (forget_cls.py).
set -e
cd "$(dirname "$0")"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
case "$1" in
  RN)   ARCH=RN50;     DS="StanfordDogs,StanfordCars,Caltech101,OxfordFlowers" ;;
  ViT)  ARCH=ViT-B/16; DS="StanfordDogs,StanfordCars,Caltech101,OxfordFlowers" ;;
  demo) ARCH=demo;     DS="Digits,Shapes" ;;
  demo-vit) ARCH=demo-vit; DS="Digits,Shapes" ;;
  *) echo "usage: sh datagen.sh RN|ViT|demo|demo-vit [datagen.py options]" >&2; exit 2 ;;
esac
shift
exec "$PY" datagen.py --backbone_arch "$ARCH" --run_ds "$DS" --paper_settings 1 "$@"
