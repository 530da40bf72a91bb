"""bench-1gpu-vs-2gpu, parts taken from earlier results instead of measured again.

- ``error_from=results/reproduce.json``: the error part from a reproduce sweep's report
  (``launch/reproduce.py``): its full net as full-2dev (trained as one process with ``groups=2``,
  the two towers' function, which the exactness tests prove; or as two towers with
  ``full_processes=2``) and its half net as half-1dev, paired by seed, with the sweep's data,
  recipe, seeds, epochs, device and commit;
- ``timing_from=benchmarks/results/bench-1gpu-vs-2gpu.json``: the time part (and ``devices=N``'s
  section) of a benchmark result, with the run's own settings, environment, date and commit.

Each returns the part and its ``source``, which the results carry under ``sources`` and the
report states beside the figures.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from alexnet_mp.errors import UserError
from alexnet_mp.job.provenance import last_commit
from alexnet_mp.paper.student_t import spread

from benchmarks.one_vs_two.configs import NAME

__all__ = ["error_from_reproduce", "timing_from_result", "TIMING_SETTINGS"]

# The settings a time part was measured with: they travel with it.
TIMING_SETTINGS = ("device", "batch", "input_size", "geometry", "num_classes", "warmup_steps", "timed_steps", "rounds",
                   "threads", "peak_matmul_size", "peak_matmul_seconds", "speed", "overlap", "time_seed", "skip_time")
_AS = {"full-2dev": "full", "half-1dev": "half"}  # the benchmark's trained pair, as the sweep names them


def _read(path: Path, what: str) -> dict:
    try:
        blob = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({what}): {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if not isinstance(blob, dict):
        raise UserError(f"{path} is not {what}: not a JSON object")
    return blob


def _errors(runs: dict[int, dict], seeds: list[int], sweep_dir: str | None, config: str) -> dict:
    """One configuration's error part in the benchmark's form (``summarise_errors``), from sweep results.
    The sweep ran its runs side by side, so their training speed is not a speed of the net: none is given."""
    rows = []
    for seed in seeds:
        r = runs[seed]
        rows.append({"seed": seed, "run_dir": f"{sweep_dir}/runs/{config}-seed{seed}" if sweep_dir else None,
                     "eval_images": r.get("val_images"), "train_images_per_s": None,
                     "train_seconds": r["train_seconds"], "trainer_val_top1_err": r.get("trainer_val_top1_err"),
                     "chance_top1_err": r.get("chance_top1_err"),
                     **{crop: {k: float(r[crop][k]) for k in ("top1_err", "top5_err")}
                        for crop in ("center", "ten_crop")}})
    out = {"seeds": seeds, "runs": rows, "train_images_per_s": None,
           "train_seconds": statistics.fmean(r["train_seconds"] for r in rows)}
    for crop in ("center", "ten_crop"):
        out[crop] = {k: spread([r[crop][k] for r in rows]) for k in ("top1_err", "top5_err")}
    return out


def error_from_reproduce(path: Path) -> tuple[dict[str, dict], dict]:
    """The error part of full-2dev and half-1dev from the reproduce report at ``path``, over the
    seeds on which both finished; and where it came from."""
    blob = _read(path, "a reproduce report (launch/reproduce.py's JSON)")
    if not isinstance(blob.get("runs"), list) or not isinstance(blob.get("settings"), dict):
        raise UserError(f"{path} is not a reproduce report (launch/reproduce.py's JSON): it has no runs and settings")
    try:
        by = {c: {int(r["seed"]): r for r in blob["runs"] if r["config"] == c} for c in _AS.values()}
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: a run without its config or seed ({err})") from None
    seeds = sorted(set(by["full"]) & set(by["half"]))
    if not seeds:
        raise UserError(f"{path} holds no seed on which both the full and the half net finished "
                        f"(full: {sorted(by['full'])}, half: {sorted(by['half'])})")
    s = blob["settings"]
    prov = s.get("provenance") or {}
    try:
        part = {name: _errors(by[config], seeds, s.get("sweep_dir"), config) for name, config in _AS.items()}
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: a run lacks its errors or training time ({type(err).__name__}: {err})") from None
    source = {"file": str(path), "kind": "reproduce sweep", "as": dict(_AS), "seeds": seeds,
              "epochs": s.get("epochs"), "data": s.get("data"), "data_overrides": s.get("data_overrides"),
              "train_overrides": s.get("train_overrides"), "full_processes": s.get("full_processes"),
              "devices": prov.get("devices"), "versions": prov.get("versions"), "git": prov.get("git"),
              "committed_in": last_commit(path)}
    return part, source


def timing_from_result(path: Path) -> tuple[dict[str, dict], dict | None, dict, dict, dict]:
    """(time part, devices=N section, environment, timing settings, source) of the benchmark result at
    ``path``; a result that itself took its timing from another keeps that one's source."""
    blob = _read(path, f"a {NAME} result")
    if blob.get("benchmark") != NAME or not isinstance(blob.get("configurations"), dict):
        raise UserError(f"{path} is not a {NAME} result (its \"benchmark\" is {blob.get('benchmark')!r})")
    times = {name: c.get("time") for name, c in blob["configurations"].items()}
    if not any(isinstance(t, dict) and "skipped" not in t for t in times.values()):
        raise UserError(f"{path} has no measured time part (every configuration's was skipped)")
    env, settings = blob.get("environment") or {}, blob.get("settings") or {}
    source = (blob.get("sources") or {}).get("timing") or {
        "file": str(path), "created": blob.get("created"), "commit": env.get("git_commit"),
        "dirty": env.get("git_dirty"), "devices": env.get("device_names"), "torch": env.get("torch"),
        "committed_in": last_commit(path)}
    return times, blob.get("scale"), env, {k: settings[k] for k in TIMING_SETTINGS if k in settings}, source
