"""How long the workers of a torchrun job outlive their launcher killed alone (docs/reliability.md).

Each repetition starts the smoke run (two towers, synthetic data, the CPU), waits for its
first checkpoint, waits a little longer each time (so the kill falls at other moments of a
step), then ``kill -9``s torchrun alone and times until no worker is left. Prints each
time with the workers' one line, then the median.

    python benchmarks/bench_launcher_death.py [REPEATS] [RUN_ROOT]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def once(run: Path, delay: float) -> tuple[float, list[str]]:
    """Seconds from kill -9 of torchrun to no worker left, and the lines the workers printed."""
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "launch/train.py",
           "experiment=smoke", "progress=false", "epochs=3", "data.workers=0", "checkpoint.every_steps=5",
           f"hydra.run.dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (run / "checkpoints" / "latest").is_file() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(delay)
    workers = _children(proc.pid)
    proc.kill()
    killed = time.monotonic()
    proc.wait()
    while any(_alive(w) for w in workers):
        time.sleep(0.01)
    seconds = time.monotonic() - killed
    return seconds, [l for l in proc.stdout.read().splitlines() if l.startswith("alexnet_mp:")]


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    runs = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="launcher-death-"))
    times = []
    for i in range(repeats):
        seconds, lines = once(runs / f"run{i}", 0.3 * i)
        times.append(seconds)
        print(f"{seconds:.2f} s  {lines}", flush=True)
    print(f"median {statistics.median(times):.2f} s over {repeats}: {' '.join(f'{t:.2f}' for t in sorted(times))}")


if __name__ == "__main__":
    main()
