"""What a new user meets first: the smoke preset learns, a misspelled preset names the form
that works, and --help names the words a key takes."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT, config_error, job_env, launch, ok


def test_the_smoke_preset_training_loss_falls(tmp_path):
    ok(launch(["experiment=smoke", f"hydra.run.dir={tmp_path}"], nproc=0, timeout=300))
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], rows


def test_a_misspelled_ablation_names_the_plus_form_that_works():
    line = config_error("config", "+ablation=no_lrnn")
    assert line.startswith("no ablation called 'no_lrnn'") and "no_lrn" in line and line.endswith("(+ablation=NAME)")
    # a group of the defaults list keeps its plain form
    assert config_error("config", "model=quarter").endswith("(model=NAME)")


def test_help_names_the_choices_of_keys_like_resume():
    proc = subprocess.run([sys.executable, "launch/train.py", "--help"], cwd=ROOT, env=job_env(), capture_output=True,
                          text=True, timeout=60)
    text = ok(proc)
    assert "resume: true, false or auto" in text and "precision: fp32 or bf16" in text, text
