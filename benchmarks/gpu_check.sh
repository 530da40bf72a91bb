#!/usr/bin/env bash
# The device check, one prepared script (at most about 8 minutes on an H200):
#   1. the tests marked cuda (no host synchronisation in a step, bf16/channels_last/compile against fp32);
#   2. benchmarks/gpu_check.py: step times of full-1dev and one tower at batch 128 and 512, fp32/bf16,
#      +-channels_last, +-compile, and the prepared loader feeding the whole net against GPU memory.
# Writes benchmarks/results/gpu-check.{json,md} (and the test log beside them).
# On a machine without the project's venv (the device machine: torch 2.11 preinstalled), run it with
# PYTHON=python3 and PYTHONPATH=src, carrying the wheels of hydra-core, omegaconf and antlr4.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT_DIR:-benchmarks/results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 150 "$PY" -m pytest -q -m cuda tests/ 2>&1 | tee "$OUT/gpu-check-tests.log" | tail -15
timeout 400 "$PY" benchmarks/gpu_check.py --output-dir "$OUT" "$@"
