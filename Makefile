# Two commands from a fresh clone:  `make demo`  and  `make test`.
# Each creates (or reuses) the local virtual environment .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

# constraints.txt: CI's PyTorch release, where requirements.txt has only a floor. --no-compile: Python
# compiles a module when it is first imported; compiling all of torch, CUDA's and transformers' files at
# install time took half of the install (3 min 45 s against 1 min 53 s on 2 cores)
$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --disable-pip-version-check -r requirements.txt -r requirements-dev.txt \
		-c constraints.txt
	touch $(STAMP)

# the whole pipeline on the embedded demo world: synthetic forget sets, unlearning, the forgetting
# audit, results; the paper's method and the improved preset side by side
demo: $(STAMP)
	$(PY) zeroshot.py --backbone_arch demo --run_ds Digits,Shapes
	sh datagen.sh demo
	sh train.sh 1 1 0 1 25 0.1 "Digits,Shapes" demo
	$(PY) train.py --backbone_arch demo --run_ds Digits,Shapes --method improved --save_best_model 1 \
		--output_dir results/results1_improved/seed_0
	$(PY) audit.py results/results1/seed_0/ results/results1_improved/seed_0/
	$(PY) clip_forget_utils.py results/results1/seed_0/ results/results1_improved/seed_0/ --all_res 1
	$(PY) clip_forget_utils.py compare results/results1 results/results1_improved

# two workers (pytest-xdist; a test file stays on one worker, so its fixtures are made once; the longest
# files first: tests/conftest.py LONGEST_FIRST), one thread
# each, and passive OpenMP waits: the demo CLIPs train with one thread each beside the other worker, and spinning
# OpenMP threads of two processes on a small machine slow both down several times
test: $(STAMP)
	OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

bench: $(STAMP)
	$(PY) bench/bench_datagen.py
	$(PY) bench/bench_datagen.py --arch RN50 --pretrained none --n 8 --batch_size 8 --max_steps 6 --high_prob 0.12
	$(PY) bench/bench_train.py
	$(PY) bench/bench_train.py --arch RN50 --pretrained none --batch 4 --n_samples 5 --steps 2
	$(PY) bench/bench_train.py --arch ViT-B/16 --pretrained none --batch 4 --n_samples 5 --steps 2
	$(PY) bench/bench_textspace.py --steps 300

clean:
	rm -rf results generated_demo generated_demo_confident .cache bench/out
