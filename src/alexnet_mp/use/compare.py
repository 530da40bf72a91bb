"""Two runs side by side: the configuration keys and the final metrics that differ.

    python launch/compare.py RUN_A RUN_B

Each run is a directory written by ``launch/train.py`` (``config.yaml``, ``summary.json``
and, when evaluated, ``eval*.json``). Provenance (commit, versions, devices) is compared
as metrics are; wall-clock figures differ between any two runs and are printed last.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alexnet_mp.config.schema import flatten
from alexnet_mp.errors import UserError

__all__ = ["read_run", "differences", "compare_runs"]

# Figures that differ between any two runs, even of the same code on the same machine.
TIMING = ("seconds", "images_per_s", "final_model")


def read_run(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(flattened configuration, flattened final metrics and provenance) of one run directory."""
    run = Path(run)
    if not (run / "summary.json").is_file():
        raise UserError(f"{run} has no summary.json: not a finished training run")
    config = (flatten(OmegaConf.to_container(OmegaConf.load(run / "config.yaml")))
              if (run / "config.yaml").is_file() else {})
    metrics = flatten(json.loads((run / "summary.json").read_text()))
    for ev in sorted(run.glob("eval*.json")):
        metrics.update(flatten(json.loads(ev.read_text()), f"{ev.stem}."))
    return config, metrics


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    missing = object()
    rows = [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))]
    return [(k, "(absent)" if x is missing else x, "(absent)" if y is missing else y) for k, x, y in rows if x != y]


def _table(title: str, rows: list[tuple[str, Any, Any]], names: tuple[str, str]) -> list[str]:
    if not rows:
        return [f"{title}: the same", ""]
    width = max(len(k) for k, _, _ in rows)
    lines = [f"{title}:", f"  {'key':<{width}}  {names[0]:<24}  {names[1]}"]
    lines += [f"  {k:<{width}}  {str(x):<24}  {y}" for k, x, y in rows]
    return lines + [""]


def compare_runs(cfg: DictConfig) -> str:
    a, b = Path(str(cfg.a)), Path(str(cfg.b))
    (config_a, metrics_a), (config_b, metrics_b) = read_run(a), read_run(b)
    names = ("A", "B")
    metric_rows = differences(metrics_a, metrics_b)
    timing = [r for r in metric_rows if r[0].split(".")[-1] in TIMING or r[0] in ("checkpoint",)]
    text = "\n".join([f"A: {a}", f"B: {b}", "",
                      *_table("configuration keys that differ", differences(config_a, config_b), names),
                      *_table("final metrics and provenance that differ", [r for r in metric_rows if r not in timing],
                              names),
                      *_table("timings and paths (differ between any two runs)", timing, names)])
    print(text, flush=True)
    return text

