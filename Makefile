# alexnet_mp: `make train` runs the main job on the built-in data, `make test` runs the tests.
# Each target installs what it needs into .venv first (once; later runs skip it).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.14.1 torchvision==0.29.1
ARGS ?=
# Two pytest workers (pytest-xdist): most tests wait on process start-up and imports, so
# two overlap well on 2 cores; a module's tests stay on one worker (its fixtures run once).
TEST_WORKERS ?= 2

.PHONY: help install test train data prepare reproduce reproduce-publish figures figure1 figure2 predict export compare bench-1gpu-vs-2gpu bench-1gpu-vs-2gpu-publish bench-data docs-scaling clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with torch and the package (editable)

test: $(STAMP)  ## run the whole test suite (two-process gloo tests included); TEST_WORKERS=N pytest workers (0: one process)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

train: $(STAMP)  ## train the two-tower net, one tower per process, on the built-in synthetic data
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 launch/train.py $(ARGS)

data: $(STAMP)  ## CIFAR-10 as image folders in data/cifar10 (md5 checked): make data ARGS='out=DIR val=test|N format=png|jpeg'
	$(PY) launch/get_data.py $(ARGS)

prepare: $(STAMP)  ## preprocess an image folder once for data=prepared: make prepare ARGS='data.root=SRC out=DST'
	$(PY) launch/prepare.py $(ARGS)

reproduce: $(STAMP)  ## the paper's comparisons over seeds: make reproduce ARGS='data=imagefolder data.root=PATH ...' (report in outputs/reproduce)
	$(PY) launch/reproduce.py $(ARGS)

reproduce-publish: $(STAMP)  ## make reproduce, its report written over the committed results/reproduce.{json,md,png}
	$(PY) launch/reproduce.py output_dir=results $(ARGS)

figures: $(STAMP)  ## the paper's Figures 3 and 4 from a trained run: make figures ARGS='checkpoint=RUN_DIR'
	$(PY) launch/figures.py $(ARGS)

figure1: $(STAMP)  ## the paper's Figure 1, ReLU against tanh: make figure1 ARGS='data.root=data/cifar10' (after make data) (figure1=gpu: the GPU run)
	$(PY) launch/figure1.py $(ARGS)

figure2: $(STAMP)  ## Figure 2 drawn from arch.py and one traced training step of the two towers (outputs/figure2; output_dir=results: the committed ones)
	$(PY) launch/figure2.py $(ARGS)

predict: $(STAMP)  ## top-k classes of photographs: make predict ARGS='checkpoint=RUN_DIR images=PHOTO_OR_FOLDER'
	$(PY) launch/predict.py $(ARGS)

export: $(STAMP)  ## a trained net as ONNX or torch.export: make export ARGS='checkpoint=RUN_DIR out=alexnet.onnx'
	$(PY) launch/export.py $(ARGS)

compare: $(STAMP)  ## what differs between two runs: make compare ARGS='RUN_A RUN_B'
	$(PY) launch/compare.py $(ARGS)

bench-1gpu-vs-2gpu: $(STAMP)  ## half net on one device vs full net on two: time and error, to outputs/benchmarks/ (devices=N: also on N)
	$(PY) benchmarks/one_vs_two/bench_1gpu_vs_2gpu.py $(if $(devices),devices=$(devices)) $(ARGS)

bench-1gpu-vs-2gpu-publish: $(STAMP)  ## the same, rewriting the committed figures in benchmarks/results/
	$(PY) benchmarks/one_vs_two/bench_1gpu_vs_2gpu.py output_dir=benchmarks/results $(if $(devices),devices=$(devices)) $(ARGS)

bench-data:  $(STAMP)  ## images/s per core of each data path, and the data wait of a training step: make bench-data ARGS='images=PATH'
	$(PY) benchmarks/data/bench_data.py $(ARGS)

docs-scaling:  ## docs/scaling.md, the scaling model, from the committed benchmark results (a docs generator, not a benchmark)
	$(PYTHON) docs/tools/scaling_model.py

clean:  ## remove the virtualenv and run outputs
	rm -rf $(VENV) outputs .pytest_cache
