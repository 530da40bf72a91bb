#!/usr/bin/env bash
# The device check, one prepared script (at most about 8 minutes on an H200; docs/gpu.md):
#   1. the tests marked cuda (no host synchronisation in a step, bf16/channels_last/compile against fp32)
#      and the fused LRN's tests on the GPU (tests/test_lrn_triton.py);
#   2. benchmarks/gpu_check/gpu_check.py: LRN forward+backward (torch's, alexnet_mp.net.lrn, the fused Triton one; eager and
#      compiled; fp32 and bf16), two processes sharing the GPU (exactness, launch/train.py sync-free, kill -9
#      and resume bit-identical, eager and compiled), the step rows of full-1dev and one tower, the data path.
# Writes outputs/benchmarks/gpu-check.{json,md} after each part (and the test log beside them);
# OUT_DIR=benchmarks/results rewrites the published figures.
# On a GPU machine without the project's venv (say torch 2.11 preinstalled, no network), run it with
# PYTHON=python3 and PYTHONPATH=src, the wheels of hydra-core, omegaconf and antlr4 in .whl/ of the checkout.
set -uo pipefail
cd "$(dirname "$0")/../.."   # the repository root
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT_DIR:-outputs/benchmarks}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
{ timeout 80 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/
  timeout 30 "$PY" -m pytest -q -p no:cacheprovider tests/test_lrn_triton.py; } 2>&1 \
    | tee "$OUT/gpu-check-tests.log" | tail -15
timeout 370 "$PY" benchmarks/gpu_check/gpu_check.py "output_dir=$OUT" deadline_s=100 two_deadline_s=170 "$@"   # "$@": more overrides
