"""Runs write under outputs/ by default: the committed results/ change only when asked for
(``output_dir=results``, ``make reproduce-publish``). Composed as each command composes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import ROOT, compose_config

# Every command's key that names where it writes, and its config name.
WRITERS = [("reproduce", "output_dir"), ("reproduce", "sweep_dir"), ("figure1", "output_dir"),
           ("figure2", "output_dir")]


@pytest.mark.parametrize("name,key", WRITERS)
def test_default_output_is_under_outputs(name, key):
    cfg = compose_config(name, [])
    assert Path(str(cfg[key])).parts[0] == "outputs", (name, key, cfg[key])


def test_gpu_sweep_script_writes_under_outputs_by_default():
    text = (ROOT / "benchmarks" / "gpu_sweep" / "gpu_sweep.sh").read_text()
    assert "RESULTS=${RESULTS_DIR:-outputs/" in text


def test_make_reproduce_publish_is_the_one_way_to_results():
    make = (ROOT / "Makefile").read_text()
    publish = make.split("\nreproduce-publish:", 1)[1].split("\n\n", 1)[0]
    assert "output_dir=results" in publish
    reproduce = make.split("\nreproduce:", 1)[1].split("\n\n", 1)[0]
    assert "output_dir=" not in reproduce.split("\n", 1)[1]
