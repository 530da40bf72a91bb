"""How long the workers of a torchrun job outlive their launcher killed alone (docs/reliability.md).

Each kill starts the smoke run (two towers, synthetic data, the CPU), waits for its first
checkpoint, waits a little longer each time (``delay_step_s`` more, so the kill falls at other
moments of a step), then ``kill -9``s torchrun alone and times until no worker is left.
Reports each time with the workers' one line, and the median.

    python benchmarks/launcher_death/bench_launcher_death.py
    python benchmarks/launcher_death/bench_launcher_death.py kills=1

Writes ``bench-launcher-death.json`` and ``.md`` to ``output_dir`` (default outputs/benchmarks;
the published figures: ``output_dir=benchmarks/results``).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, so `benchmarks` imports as a package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from alexnet_mp.job.cli import Job, run_hydra
from alexnet_mp.job.launcher import alive
from benchmarks.shared.machine import REPO, cpu_name, torchrun_workers
from benchmarks.shared.output import write_results
from benchmarks.launcher_death.schema import register

register()  # the schema conf/ names (``- base_...``), which the product's config package does not hold

NAME = "bench-launcher-death"


def once(run: Path, delay: float) -> tuple[float, list[str]]:
    """Seconds from kill -9 of torchrun to no worker left, and the lines the workers printed."""
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "launch/train.py",
           "experiment=smoke", "progress=false", "epochs=3", "data.workers=0", "checkpoint.every_steps=5",
           f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (run / "checkpoints" / "latest").is_file() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    workers = torchrun_workers(proc.pid)
    proc.kill()
    killed = time.monotonic()
    proc.wait()
    while any(alive(w) for w in workers):
        time.sleep(0.01)
    seconds = time.monotonic() - killed
    return seconds, [l for l in proc.stdout.read().splitlines() if l.startswith("alexnet_mp:")]


def markdown(r: dict) -> str:
    rows = [f"| {k + 1} | {k * r['settings']['delay_step_s']:.1f} | {t['seconds']:.2f} | {' '.join(t['lines'])} |"
            for k, t in enumerate(r["kills"])]
    return "\n".join([f"# {NAME}", "",
                      f"The smoke run (two towers, synthetic data) on {r['environment']['cpu']} "
                      f"({r['environment']['cores']} cores), torch {r['environment']['torch']}, {r['created']}: "
                      "seconds from `kill -9` of torchrun alone to no worker left.", "",
                      "| kill | after the first checkpoint (s) | seconds | the workers' line |", "|---|---|---|---|",
                      *rows, "", f"Median **{r['median_s']:.2f} s** over {len(r['kills'])}."]) + "\n"


def run(cfg: DictConfig) -> dict:
    runs = Path(cfg.run_root) if cfg.run_root else Path(tempfile.mkdtemp(prefix="launcher-death-"))
    kills = []
    for i in range(int(cfg.kills)):
        seconds, lines = once(runs / f"run{i}", float(cfg.delay_step_s) * i)
        kills.append({"seconds": seconds, "lines": lines})
        print(f"{seconds:.2f} s  {lines}", flush=True)
    result = {"benchmark": NAME, "created": _dt.datetime.now().isoformat(timespec="seconds"),
              "settings": OmegaConf.to_container(cfg, resolve=True),
              "environment": {"cpu": cpu_name(), "torch": torch.__version__, "cores": os.cpu_count(),
                              "load_average": os.getloadavg()[0]},
              "kills": kills, "median_s": statistics.median(k["seconds"] for k in kills)}
    write_results(str(cfg.output_dir), NAME, result, markdown(result))
    print(markdown(result), flush=True)
    return result


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: run(cfg), cfg)


if __name__ == "__main__":
    run_hydra(main, config_name="bench_launcher_death", config_path="../../conf")
