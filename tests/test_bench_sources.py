"""bench-1gpu-vs-2gpu from earlier results: the error part from a reproduce report (error_from), the time part
from a benchmark result (timing_from), each stated with its provenance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from alexnet_mp.errors import UserError
from benchmarks.one_vs_two import bench_1gpu_vs_2gpu as bench
from helpers import ROOT, compose_config

TIMED = ROOT / "benchmarks" / "results" / "bench-1gpu-vs-2gpu.json"  # a real, committed time part
# (config, seed) -> (centre top-1, centre top-5, ten-crop top-1, ten-crop top-5)
ERRORS = {("full", 0): (0.30, 0.08, 0.29, 0.07), ("full", 1): (0.32, 0.09, 0.30, 0.08),
          ("full", 2): (0.31, 0.10, 0.30, 0.09), ("half", 0): (0.35, 0.10, 0.33, 0.09),
          ("half", 1): (0.34, 0.12, 0.33, 0.10), ("no_lrn", 0): (0.50, 0.20, 0.50, 0.20)}


def _reproduce_report(path: Path, errors=ERRORS) -> Path:
    runs = [{"config": c, "seed": s, "center": {"top1_err": e[0], "top5_err": e[1]},
             "ten_crop": {"top1_err": e[2], "top5_err": e[3]}, "val_images": 2000, "train_seconds": 60.0 + s,
             "chance_top1_err": 0.9, "trainer_val_top1_err": e[0]} for (c, s), e in errors.items()]
    settings = {"data": "data=imagefolder /d/cifar10-full, 77 px", "epochs": 30, "seeds": [0, 1, 2],
                "data_overrides": ["data=imagefolder", "data.root=/d/cifar10-full", "data.image_size=77"],
                "train_overrides": ["progress=false", "batch_size=128"], "full_processes": 1,
                "sweep_dir": "/s/reproduce-gpu",
                "provenance": {"git": {"commit": "abcdef1234567890", "dirty": False}, "devices": ["NVIDIA H200"],
                               "versions": {"torch": "2.11.0"}}}
    path.write_text(json.dumps({"settings": settings, "summary": {}, "runs": runs}))
    return path


def _run(tmp_path: Path, *overrides: str) -> tuple[dict, dict]:
    cfg = compose_config("bench", [f"output_dir={tmp_path / 'results'}", *overrides])
    return bench.run_benchmark(cfg, tmp_path / "runs")


def test_both_halves_from_earlier_results_with_their_provenance(tmp_path):
    source = _reproduce_report(tmp_path / "reproduce.json")
    results, paths = _run(tmp_path, f"timing_from={TIMED}", f"error_from={source}")
    timed = json.loads(TIMED.read_text())

    # the time part, its settings and environment are the earlier run's, its date and commit stated
    for name, c in results["configurations"].items():
        assert c["time"] == timed["configurations"][name]["time"]
    assert results["ratios"]["full-2dev/full-1dev"] == timed["ratios"]["full-2dev/full-1dev"]
    assert results["environment"] == timed["environment"] and results["settings"]["batch"] == timed["settings"]["batch"]
    first = (timed.get("sources") or {}).get("timing") or {"created": timed["created"]}
    assert results["sources"]["timing"]["created"] == first["created"] != results["created"]
    # the error part: the sweep's full and half nets on the seeds both finished, paired
    e_full, e_half = (results["configurations"][n]["error"] for n in ("full-2dev", "half-1dev"))
    assert e_full["seeds"] == e_half["seeds"] == [0, 1] and e_full["train_images_per_s"] is None
    assert e_full["center"]["top1_err"]["mean"] == pytest.approx(0.31)
    assert e_half["ten_crop"]["top5_err"]["mean"] == pytest.approx(0.095)
    d = results["error_differences"]["center"]
    assert d["top1_err"]["per_seed"] == pytest.approx([-0.05, -0.02]) and d["top5_err"]["mean"] == pytest.approx(-0.025)
    assert "train_images_per_s" not in results["ratios"]["full-2dev/half-1dev"]
    assert results["settings"]["seeds"] == [0, 1] and results["settings"]["epochs"] == 30
    e = results["sources"]["error"]
    assert e["git"]["commit"] == "abcdef1234567890" and e["devices"] == ["NVIDIA H200"] and e["full_processes"] == 1
    assert json.loads(paths["json"].read_text())["sources"] == results["sources"]

    md = paths["md"].read_text()
    assert f"The time part was not measured again: it is the run of {first['created']}" in md
    assert f"{first['created']}." in md.split("\n\n")[2]  # the header's date is the timing's, not today's
    assert "From the reproduce sweep" in md and "NVIDIA H200; commit abcdef1234" in md
    assert "paired on seeds [0, 1]; 30 epochs each, data data=imagefolder /d/cifar10-full, 77 px" in md
    assert "| full-2dev - half-1dev (points) | -3.50 (2.12; 95% [" in md and "error part skipped" not in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # regenerated from the regenerated result, the time part keeps its first source
    again, _ = _run(tmp_path / "again", f"timing_from={paths['json']}", f"error_from={source}")
    assert again["sources"]["timing"] == results["sources"]["timing"]


def test_earlier_results_that_cannot_serve_are_one_line_errors(tmp_path):
    no_half = _reproduce_report(tmp_path / "no_half.json", {k: v for k, v in ERRORS.items() if k[0] != "half"})
    cases = [((f"error_from={tmp_path / 'absent.json'}",), "cannot read"),
             ((f"error_from={no_half}",), "no seed on which both the full and the half net finished"),
             ((f"timing_from={no_half}",), "is not a bench-1gpu-vs-2gpu result"),
             ((f"error_from={no_half}", "skip_error=true"), "drop skip_error"),
             ((f"timing_from={TIMED}", "devices=2"), "drop skip_time and devices")]
    for overrides, message in cases:
        with pytest.raises(UserError, match=message):
            _run(tmp_path, *overrides)
