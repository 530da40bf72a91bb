"""The sweep's runs handed to submitit: its local executor or a Slurm cluster.

Each run of ``launch/reproduce.py`` (train, then evaluate and measure) becomes one
submitit job, a :class:`RunJob`. On Slurm the job holds a node's share (two GPUs for the
two-tower nets, one for the half net) and runs ``torchrun`` with the run's overrides; the
command is built when the job starts, with ``resume=true`` when the run already has a
checkpoint (what the trainer's ``resume=auto`` does), so a requeued job continues from
the checkpoint its previous attempt left.
Before the time limit (``slurm.signal_delay_s``) or at preemption Slurm signals the job;
submitit calls :meth:`RunJob.checkpoint`, which asks the trainer to save its position
(``SIGTERM`` to torchrun, which passes it to every rank; the trainer's fault handling
saves on it) and requeues the same job.

The sweep folder holds submitit's job folders (``submitit/``: scripts, logs, pickles) and
``sweep-state.json``: per run, the job id it was submitted under and its state. A run with
a ``result.json`` is finished and never submitted again; a Slurm job still queued or
running is waited for, not resubmitted.

Why submitit directly and not ``hydra-submitit-launcher``: the Hydra plugin turns each
``--multirun`` override set of *this* command into one job running this command's
function. Our job is another program (torchrun over ``launch/train.py``, then
``launch/evaluate.py``) chosen per run (GPUs by configuration), and the sweep must keep
its own resumable state and write the paired report as each result arrives; the plugin
waits for the whole multirun and owns the job folders. The executor API gives the same
Slurm machinery (sbatch script, signal, requeue) with the sweep in charge.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alexnet_mp.config.reproduce import LAUNCHERS  # the schema owns the names
from alexnet_mp.errors import UserError
from alexnet_mp.io import atomic_write

__all__ = ["LAUNCHERS", "RUNNING", "RunJob", "make_executor", "SweepState", "submit_runs", "job_parameters",
           "run_logged"]

log = logging.getLogger("alexnet_mp")
# The training and evaluation processes this job runs now (run_logged adds them).
RUNNING: set[subprocess.Popen] = set()
# Slurm states of a job that will still run or is running: wait for it, do not resubmit.
_LIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "UNKNOWN"}

try:
    import submitit

    _Checkpointable: Any = submitit.helpers.Checkpointable
except ImportError:  # launcher=local needs no submitit
    submitit = None
    _Checkpointable = object


# prctl(2), resolved here, in the parent: the child between fork and exec only calls it.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _dies_with(parent: int):
    """A ``preexec_fn``: the child gets SIGTERM when the thread that started it ends, as when
    the sweep's process is killed (kill -9, the OOM killer): no run trains on as an orphan
    holding its run directory's lock. SIGTERM, not SIGKILL: train.py saves the step reached
    (torchrun passes the signal on to its ranks), so the next sweep resumes it.

    Why this and not a watchdog in the child: the child is torchrun or launch/train.py,
    which know nothing of a sweep, and torchrun is not ours to change. The death signal
    follows the starting *thread*; every run is started and waited for by the same thread of
    the sweep, which therefore outlives it. The flag survives the exec. Only a prepared
    foreign-function call runs between fork and exec (no import, no lock), which is what
    makes ``preexec_fn`` safe here beside the sweep's other threads."""
    def set_death_signal() -> None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the sweep died before the flag was set: do not start
            os._exit(128 + int(signal.SIGTERM))
    return set_death_signal if _PRCTL is not None else None


def run_logged(cmd: list[str], log_path: Path, *, cwd: Path, env: Mapping[str, str] | None = None,
               echo: str | None = None, append: bool = False) -> int:
    """Run ``cmd`` to its end with its output and errors in ``log_path``, after a ``$ cmd``
    line; ``echo``: also print each line after this prefix. While it runs it is in
    :data:`RUNNING` (a submitit job's checkpoint() signals it to save); it does not outlive
    this process (:func:`_dies_with`). Returns its exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a" if append else "w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        piped = echo is not None
        with subprocess.Popen(cmd, cwd=cwd, env=None if env is None else dict(env), stderr=subprocess.STDOUT,
                              stdout=subprocess.PIPE if piped else out, text=True, bufsize=1 if piped else -1,
                              preexec_fn=_dies_with(os.getpid())) as proc:
            RUNNING.add(proc)
            try:
                for line in proc.stdout if piped else ():
                    out.write(line)
                    print(f"{echo} {line.rstrip()}", flush=True)
                proc.wait()
            finally:
                RUNNING.discard(proc)
    return proc.returncode


def _submitit():
    if submitit is None:
        raise UserError("launcher=submitit_local|slurm needs submitit: pip install submitit (make install does)")
    return submitit


class RunJob(_Checkpointable):
    """One run of the sweep (train, evaluate, measure) as a submitit job; returns its result."""

    def __init__(self, cfg: dict, config: str, seed: int, data_args: list[str], repo: str | None = None):
        """``repo``: the checkout the sweep was started from (the job runs its launch/ scripts)."""
        from alexnet_mp.paper.reproduce.plan import REPO

        self.cfg, self.config, self.seed, self.data_args = cfg, config, seed, data_args
        self.repo = repo or str(REPO)

    def __call__(self) -> dict:
        from alexnet_mp.paper.reproduce import Sweep

        return Sweep(OmegaConf.create(self.cfg), self.repo).run(self.config, self.seed, self.data_args)

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Slurm's warning or preemption: let the trainer save where it is, then requeue this job."""
        wait = float(self.cfg.get("slurm", {}).get("save_wait_s", 60))
        for proc in list(RUNNING):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
        deadline = time.monotonic() + wait
        for proc in list(RUNNING):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # its last checkpoint is kept; the requeued job resumes from that
        return _submitit().helpers.DelayedSubmission(RunJob(self.cfg, self.config, self.seed, self.data_args,
                                                            self.repo))


def _extra_lines(lines: list[str]) -> dict[str, Any]:
    """``slurm.extra`` lines (``--qos=high``, ``#SBATCH --exclusive``) as submitit's additional parameters."""
    out: dict[str, Any] = {}
    for line in map(str, lines):
        flag = line.removeprefix("#SBATCH").strip().lstrip("-")
        if not flag:
            continue
        key, _, value = flag.partition("=")
        out[key.strip().replace("-", "_")] = value.strip() if value else True
    return out


def job_parameters(cfg: DictConfig, gpus: int) -> dict[str, Any]:
    """The sbatch settings of one job holding ``gpus`` GPUs."""
    s = cfg.slurm
    params: dict[str, Any] = {"job_name": f"alexnet_mp-{cfg.output_name}", "time": int(s.time_min), "nodes": 1,
                              "ntasks_per_node": 1, "cpus_per_task": int(s.cpus_per_gpu) * max(gpus, 1),
                              "signal_delay_s": int(s.signal_delay_s), "setup": list(map(str, s.setup)),
                              # the job may be requeued (preemption, or submitit at the time limit)
                              "additional_parameters": {"requeue": True, **_extra_lines(list(s.extra))}}
    if gpus:
        params["gpus_per_node"] = gpus
    for key in ("partition", "account", "mem", "qos", "constraint"):
        if s.get(key):
            params[key] = str(s[key])
    return params


def make_executor(cfg: DictConfig, folder: Path):
    """submitit's executor for ``cfg.launcher`` with its job folders in ``folder``."""
    sub = _submitit()
    if cfg.launcher == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]  # submitit needs both
        if missing:
            raise UserError(f"launcher=slurm but {' and '.join(missing)} is not on PATH: run the sweep on a Slurm "
                            "login node, or use launcher=local or launcher=submitit_local")
        return sub.SlurmExecutor(folder=folder / "%j", max_num_timeout=int(cfg.slurm.max_requeues))
    executor = sub.LocalExecutor(folder=folder / "%j", max_num_timeout=int(cfg.slurm.max_requeues))
    executor.update_parameters(timeout_min=int(cfg.slurm.time_min))
    return executor


class SweepState:
    """``sweep-state.json``: per run, the launcher, the job id and the state it was last seen in."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.runs: dict[str, dict] = json.loads(self.path.read_text())["runs"] if self.path.is_file() else {}

    def set(self, name: str, **fields: Any) -> None:
        self.runs[name] = {**self.runs.get(name, {}), **fields, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        atomic_write(self.path, json.dumps({"runs": self.runs}, indent=1))


def _still_queued(cfg: DictConfig, folder: Path, entry: dict | None):
    """The Slurm job of an earlier sweep that is still queued or running, or None."""
    if cfg.launcher != "slurm" or not entry or entry.get("launcher") != "slurm" or not entry.get("job_id"):
        return None
    job = _submitit().SlurmJob(folder=folder / "%j", job_id=str(entry["job_id"]))
    return job if job.state in _LIVE else None


def submit_runs(cfg: DictConfig, sweep, todo: list[tuple[str, int]], data_args: list[str],
                state: SweepState) -> list[tuple]:
    """Submit each unfinished run once (a Slurm job still queued is kept): [(config, seed, job)]."""
    folder = sweep.dir / "submitit"
    executor = make_executor(cfg, folder)
    plain = OmegaConf.to_container(cfg, resolve=True)
    jobs = []
    for config, seed in todo:
        name = f"{config}-seed{seed}"
        job = _still_queued(cfg, folder, state.runs.get(name))
        if job is None:
            if cfg.launcher == "slurm":
                executor.update_parameters(**job_parameters(cfg, sweep.processes(config)))
            job = executor.submit(RunJob(plain, config, seed, data_args, str(sweep.repo)))
            state.set(name, launcher=str(cfg.launcher), job_id=str(job.job_id), state="submitted")
            log.info("%s: submitted as job %s (%s)", name, job.job_id, cfg.launcher)
        else:
            log.info("%s: job %s is still %s; waiting for it", name, job.job_id, job.state.lower())
        jobs.append((config, seed, job))
    return jobs
