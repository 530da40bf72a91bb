"""The GPU sweep preset (conf/preset/gpu_sweep.yaml) and its script (benchmarks/gpu_sweep/gpu_sweep.sh), dry-run tiny on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, compose_config

from alexnet_mp.paper.reproduce import CONFIGS, plan_runs



def test_the_preset_is_the_whole_comparison_sweep_and_its_recipe_composes_for_every_configuration():
    cfg = compose_config("reproduce", ["preset=gpu_sweep", "data.root=/data/cifar10-full"])
    assert list(cfg.configs) == list(CONFIGS) and len(cfg.seeds) >= 5 and cfg.epochs >= 30
    runs = plan_runs(list(cfg.configs), list(cfg.seeds), cfg.ablation_seeds)
    assert len(runs) == len(CONFIGS) * len(cfg.seeds)  # every configuration on the same seeds
    assert cfg.data.name == "imagefolder" and cfg.data.image_size == 77 and cfg.prepare
    assert cfg.full_processes == 1 and cfg.parallel > 1 and cfg.output_name == "reproduce-gpu"
    for config, overrides in CONFIGS.items():  # the trainer accepts the recipe with each configuration
        train = compose_config("config", [*overrides, "data=prepared", "data.root=/x", *cfg.train_overrides])
        assert train.batch_size == 128 and train.checkpoint.every_epochs == 10 and train.precision == "bf16", config


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for k, colour in enumerate(((200, 40, 40), (40, 40, 200))):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(colour, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def _script(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "DATA_ARCHIVE": str(tmp / "tiny.tar.gz"),
           "DATA_DIR": str(tmp / "data"), "DEVICE": "cpu", "SWEEP_DIR": str(tmp / "sweep"),
           "RESULTS_DIR": str(tmp / "results"), "OUT": str(tmp / "out"), "SWEEP_LIMIT_S": "300"}
    return subprocess.run(["bash", "benchmarks/gpu_sweep/gpu_sweep.sh", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The script on a tiny image folder: 2 configurations x 1 seed x 1 epoch, 2 runs side by side; then
    again on a fresh machine (no sweep folder) with only the runs archive of the first."""
    tmp = tmp_path_factory.mktemp("gpu_sweep")
    _image_folder(tmp / "tiny")
    with tarfile.open(tmp / "tiny.tar.gz", "w:gz") as tar:
        tar.add(tmp / "tiny", arcname="tiny")
    preset = compose_config("reproduce", ["preset=gpu_sweep", "data.root=/x"])
    # the preset's recipe with a tiny batch, in fp32 (bf16 convolutions crawl on a CPU)
    recipe = [o for o in preset.train_overrides if not o.startswith(("batch_size=", "precision="))] + ["batch_size=8"]
    tiny = ["configs=[full,half]", "seeds=[0]", "ablation_seeds=1", "epochs=1", "parallel=2",
            f"train_overrides=[{','.join(map(json.dumps, recipe))}]"]
    (tmp / "out").mkdir()
    first = _script(tmp, *tiny)
    runs = {name: json.loads((tmp / "sweep" / "runs" / name / "result.json").read_text())
            for name in ("full-seed0", "half-seed0")} if first.returncode == 0 else {}
    times = {name: ((tmp / "sweep" / "runs" / name / "config.yaml").stat().st_mtime,
                    (tmp / "sweep" / "runs" / name / "summary.json").stat().st_mtime) for name in runs}
    os.rename(tmp / "sweep", tmp / "sweep-first")
    again = _script(tmp, *tiny)
    return tmp, first, runs, times, again


def test_the_script_unpacks_prepares_once_runs_side_by_side_and_reports(dry_run):
    tmp, first, runs, times, _ = dry_run
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "unpacked" in first.stdout and (tmp / "data" / "tiny" / "train" / "class1" / "11.jpg").is_file()
    prepared = tmp / "sweep-first" / "prepared-77"
    assert json.loads((prepared / "manifest.json").read_text())["splits"]["train"]["shards"]  # decoded once
    for name, result in runs.items():
        config = (tmp / "sweep-first" / "runs" / name / "config.yaml").read_text()
        assert f"root: {tmp / 'sweep' / 'prepared-77'}" in config and "name: prepared" in config  # the one copy
        assert result["val_images"] == 8 and result["epochs"] == 1 and "channels_last: true" in config
    (a0, a1), (b0, b1) = times.values()
    assert a0 < b1 and b0 < a1  # the two runs trained at the same time
    report = json.loads((tmp / "results" / "reproduce-gpu.json").read_text())
    assert [r["config"] for r in report["runs"]] == ["full", "half"] and report["settings"]["parallel"] == 2
    assert report["settings"]["data"].endswith("77 px") and report["settings"]["epochs"] == 1
    assert report["summary"]["half"]["vs_full"]["ten_crop"]["top1_err"]["n"] == 1
    assert sorted(p.name for p in (tmp / "out").iterdir()) == [
        "reproduce-gpu-runs.tar.gz", "reproduce-gpu.json", "reproduce-gpu.md", "reproduce-gpu.png"]


def test_a_fresh_machine_keeps_the_finished_runs_of_the_runs_archive(dry_run):
    tmp, _, runs, _, again = dry_run
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 runs (2 already finished, kept)" in again.stdout + again.stderr
    assert not (tmp / "sweep" / "prepared-77").exists()  # nothing to train: not even the data prepared
    kept = {name: json.loads((tmp / "sweep" / "runs" / name / "result.json").read_text()) for name in runs}
    assert kept == runs
