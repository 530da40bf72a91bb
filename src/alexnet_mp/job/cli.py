"""What the launchers in ``launch/`` share: composing the config (:func:`run_hydra`), and a
:class:`Job` that owns the command's start and stop in this process: logging per rank, the
schema check, and one-line errors (a bad value on the command line, from Hydra's composition or
from the schema, is one ``alexnet_mp: error: ...`` line like every other user error)."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from alexnet_mp.job.launcher import Launcher
from alexnet_mp.errors import QuietStop, UserError, first_error_of_job
from alexnet_mp.job.preempt import EXIT_PREEMPTED, Preempted, say_preempted

__all__ = ["Job", "run_hydra", "hydra_run_dir", "override_value", "data_overrides", "train_command", "checkout"]


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


class Job:
    """One command's start and stop in this process, made by :func:`run_hydra` and given to the
    entry point: the run directory made for it (removed again when the job fails before
    writing into it), whether composing the config is over (an OmegaConf error after that is a
    bug, not input), and the ways out: one line and status 1 on a user error, status 75 on a
    preemption, the job's notes left (:meth:`Launcher.leave`) either way. ``launcher``: this
    process's launcher and the job's notes (:class:`Launcher`), read when the job is made, at the
    worker's start (before torchrun can have died), and passed from here to what needs it."""

    def __init__(self) -> None:
        self.launcher = Launcher.of_this_process()
        self.fresh_run_dir: Path | None = None  # made for this job (by the check below, or Hydra's default)
        self.run_dir_given = False
        self.task_started = False

    def check_run_dir_override(self, argv: list[str]) -> None:
        """An unwritable ``hydra.run.dir=`` as one line, before Hydra makes the folder (it would
        print a traceback) and before any training."""
        given = [a.split("=", 1)[1] for a in argv if a.startswith(("hydra.run.dir=", "++hydra.run.dir="))]
        if not given or "${" in given[-1]:
            return
        from alexnet_mp.job.rundir import check_writable, make_run_dir

        self.run_dir_given = True
        try:
            folder = Path(given[-1].strip("'\"")).expanduser()
            fresh = not folder.exists()
            make_run_dir(folder)
            if fresh:
                self.fresh_run_dir = folder
            check_writable(folder)
        except UserError as err:
            self.fail(str(err))

    def run(self, fn: Callable[[], object], cfg: DictConfig | None = None, run_dir: Path | None = None) -> None:
        """Check ``cfg`` against its schema, then call ``fn``; a :class:`UserError` becomes one line
        on stderr (once per job) and exit status 1; a preemption (:class:`Preempted`) one line from
        rank 0 and exit status 75. ``run_dir``: Hydra's run directory of a training job, removed
        again when the job fails before writing into it (unless it was there before the launch)."""
        self.task_started = True
        if run_dir is not None and not self.run_dir_given:
            self.fresh_run_dir = run_dir  # Hydra's default folder, made for this job
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            self.launcher.remove_stale_notes()
        rank = int(os.environ.get("RANK", "0"))
        logging.getLogger("alexnet_mp").setLevel(logging.INFO if rank == 0 else logging.WARNING)
        try:
            if cfg is not None:
                from alexnet_mp import config

                config.check(cfg)
            fn()
        except Preempted as stop:
            self.launcher.leave()
            say_preempted(str(stop), main=rank == 0)
            self._exit(EXIT_PREEMPTED)
        except KeyboardInterrupt:
            self.interrupted()
        except QuietStop:
            self.fail(None)  # another rank has printed the job's one line
        except UserError as err:
            self.fail(str(err))
        except MissingMandatoryValue as err:
            key = getattr(err, "full_key", None) or str(err).splitlines()[0]
            self.fail(f"no value for {key}: set it on the command line ({key}=...)")
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.launcher.leave()

    def fail(self, message: str | None) -> NoReturn:
        """Say ``message`` (once per job; None: another process has said it) and exit with status 1,
        leaving the job's notes and the run directory made for nothing."""
        if message is not None and first_error_of_job(self.launcher):
            print(f"alexnet_mp: error: {message}", file=sys.stderr, flush=True)
        self._leave_failed()
        self._exit(1)

    def interrupted(self) -> NoReturn:
        """Ctrl-C outside training (which saves and exits 75): one line, and 130 as a shell's Ctrl-C
        status. What was written so far is whole (io.atomic_write) and stays."""
        print("alexnet_mp: stopped by SIGINT (Ctrl-C); files already written are kept", file=sys.stderr, flush=True)
        self._leave_failed()
        self._exit(130)

    def _leave_failed(self) -> None:
        sys.stdout.flush()
        self.launcher.leave()
        if self.fresh_run_dir is not None:
            from alexnet_mp.job.rundir import remove_if_unused

            # Hydra's default (outputs/DATE/TIME) also made its parents in the working directory.
            remove_if_unused(self.fresh_run_dir, within=None if self.run_dir_given else Path.cwd())

    @staticmethod
    def _exit(status: int) -> NoReturn:
        # os._exit, not sys.exit: leave at once, without tearing down the process group or
        # unwinding into Hydra and atexit. Another rank may still be inside a collective, and
        # destroying an NCCL group then (as interpreter shutdown does) can block; torchrun stops
        # the other ranks when this one exits. What must be said or saved has been by now.
        os._exit(status)


def run_hydra(entry: Callable[[DictConfig, Job], object], config_name: str, *, config_path: str = "../conf",
              check_run_dir: bool = False) -> None:
    """Compose ``config_name`` from ``config_path`` (relative to ``entry``'s file, as with
    ``@hydra.main``) over the command line and call ``entry(cfg, job)`` with this process's
    :class:`Job`. ``check_run_dir``: a training job's ``hydra.run.dir=`` checked first
    (:meth:`Job.check_run_dir_override`).

    An error composing the config (a value of the wrong type, an unknown key or group option,
    an override Hydra cannot parse) becomes one line: Hydra prints such errors over several
    lines and exits itself; with ``HYDRA_FULL_ERROR`` it raises them instead, so that they can
    be said in one line here."""
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from alexnet_mp import config

    this_job = Job()
    if check_run_dir:
        this_job.check_run_dir_override(sys.argv[1:])

    @functools.wraps(entry)  # Hydra finds the launcher's file (config_path, job name) through __wrapped__
    def task(cfg: DictConfig) -> None:
        entry(cfg, this_job)

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(config_path=config_path, config_name=config_name, version_base="1.3")(task)()
    except (HydraException, OmegaConfBaseException) as err:
        if this_job.task_started:
            raise
        this_job.fail(config.explain(err))
    except KeyboardInterrupt:  # Ctrl-C before the task (composing the config)
        this_job.interrupted()


_HYDRA_WORDS = {"null", "true", "false", "nan", "inf"}


def override_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    # Plain words and paths go as they are; anything Hydra could read as another type is quoted.
    if re.fullmatch(r"[A-Za-z_/][A-Za-z0-9_./-]*", text) and text.lower() not in _HYDRA_WORDS:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def data_overrides(data_cfg: DictConfig) -> list[str]:
    """A composed ``data`` group as command-line overrides for launch/train.py and
    launch/evaluate.py, which compose the same group (the benchmark and the sweep call them)."""
    missing = [k for k in data_cfg if OmegaConf.is_missing(data_cfg, k)]
    if missing:
        raise UserError(f"data={data_cfg.get('name', '?')} needs {', '.join(f'data.{k}=...' for k in missing)}")
    plain = OmegaConf.to_container(data_cfg, resolve=True)
    return [f"data={plain['name']}"] + [f"data.{k}={override_value(v)}" for k, v in plain.items()
                                        if k != "name" and not isinstance(v, (dict, list))]


def checkout() -> Path:
    """The repository this command was started from: the nearest folder holding
    ``launch/train.py`` above the running script (``launch/reproduce.py``, a benchmark), else
    the one this package's source lies in. The sweep and the benchmarks run that checkout's
    ``launch/`` scripts, not those of wherever the package is installed from (an editable
    install of another checkout)."""
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] not in ("", "-c", "-m") else None
    for folder in script.parents if script is not None else ():
        if (folder / "launch" / "train.py").is_file():
            return folder
    return Path(__file__).resolve().parents[3]  # src/alexnet_mp/job/cli.py


def train_command(overrides: list[str], processes: int = 1, torchrun: bool = True,
                  repo: Path | None = None) -> list[str]:
    """``launch/train.py`` of ``repo`` (default :func:`checkout`) with ``overrides``: under
    torchrun with ``processes`` processes on this machine, or (``torchrun=False``) in one plain
    python process; the sweep and the benchmark launch it so."""
    script = str((repo or checkout()) / "launch" / "train.py")
    if not torchrun:
        return [sys.executable, script, *overrides]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", script,
            *overrides]
