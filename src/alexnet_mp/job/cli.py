"""What the launchers in ``launch/`` share: logging per rank, the schema check, and one-line
errors (a bad value on the command line, from Hydra's composition or from the schema, is one
``alexnet_mp: error: ...`` line like every other user error)."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from alexnet_mp.job import launcher as job
from alexnet_mp.errors import QuietStop, UserError, first_error_of_job
from alexnet_mp.job.preempt import Preempted, exit_preempted

__all__ = ["run_entry_point", "run_hydra", "check_run_dir_override", "hydra_run_dir", "override_value",
           "data_overrides", "train_command", "checkout"]


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


# The run directory made for this job (by check_run_dir_override, or Hydra's default made just
# now): a job that fails before writing into it removes it again (rundir.remove_if_unused).
_fresh_run_dir: Path | None = None
_run_dir_given = False


def _leave(failed: bool) -> None:
    """This process is done: the job's notes (the last process removes them) and, after a
    failure, the run directory made for nothing."""
    job.leave()
    if failed and _fresh_run_dir is not None:
        from alexnet_mp.job.rundir import remove_if_unused

        # Hydra's default (outputs/DATE/TIME) also made its parents in the working directory.
        remove_if_unused(_fresh_run_dir, within=None if _run_dir_given else Path.cwd())


def _fail(message: str) -> None:
    if first_error_of_job():
        print(f"alexnet_mp: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    _leave(failed=True)
    # Leave at once, without tearing down the process group: another rank may still be
    # inside a collective, and destroying an NCCL group then can block. torchrun stops the
    # other ranks when this one exits.
    os._exit(1)


def check_run_dir_override(argv: list[str]) -> None:
    """An unwritable ``hydra.run.dir=`` as one line, before Hydra makes the folder (it would
    print a traceback) and before any training."""
    global _fresh_run_dir, _run_dir_given
    given = [a.split("=", 1)[1] for a in argv if a.startswith(("hydra.run.dir=", "++hydra.run.dir="))]
    if not given or "${" in given[-1]:
        return
    from alexnet_mp.job.rundir import check_writable, make_run_dir

    _run_dir_given = True
    try:
        folder = Path(given[-1].strip("'\"")).expanduser()
        fresh = not folder.exists()
        make_run_dir(folder)
        if fresh:
            _fresh_run_dir = folder
        check_writable(folder)
    except UserError as err:
        _fail(str(err))


_task_started = False  # composition is over: an OmegaConf error from now on is a bug, not input


def run_hydra(main: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` function; an error composing the config (a value of the wrong
    type, an unknown key or group option, an override Hydra cannot parse) becomes one line.

    Hydra prints such errors over several lines and exits itself; with ``HYDRA_FULL_ERROR``
    it raises them instead, so that they can be said in one line here."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from alexnet_mp import config

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException) as err:
        if _task_started:
            raise
        _fail(config.explain(err))
    except KeyboardInterrupt:  # Ctrl-C before the task (composing the config)
        _interrupted()


def _interrupted() -> None:
    """Ctrl-C outside training (which saves and exits 75): one line, and 130 as a shell's Ctrl-C
    status. What was written so far is whole (io.atomic_write) and stays."""
    print("alexnet_mp: stopped by SIGINT (Ctrl-C); files already written are kept", file=sys.stderr, flush=True)
    sys.stdout.flush()
    _leave(failed=True)
    os._exit(130)


def run_entry_point(fn: Callable[[], object], cfg: DictConfig | None = None, run_dir: Path | None = None) -> None:
    """Check ``cfg`` against its schema, then call ``fn``; a :class:`UserError` becomes one line
    on stderr (once per job) and exit status 1; a preemption (:class:`Preempted`) one line from
    rank 0 and exit status 75. ``run_dir``: Hydra's run directory of a training job, removed
    again when the job fails before writing into it (unless it was there before the launch)."""
    global _task_started, _fresh_run_dir
    _task_started = True
    if run_dir is not None and not _run_dir_given:
        _fresh_run_dir = run_dir  # Hydra's default folder, made for this job
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        job.remove_stale_notes()
    rank = int(os.environ.get("RANK", "0"))
    logging.getLogger("alexnet_mp").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    try:
        if cfg is not None:
            from alexnet_mp import config

            config.check(cfg)
        fn()
    except Preempted as stop:
        job.leave()
        exit_preempted(str(stop), main=rank == 0)
    except KeyboardInterrupt:
        _interrupted()
    except QuietStop:
        sys.stdout.flush()
        _leave(failed=True)
        os._exit(1)  # another rank has printed the job's one line
    except UserError as err:
        _fail(str(err))
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or str(err).splitlines()[0]
        _fail(f"no value for {key}: set it on the command line ({key}=...)")
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    job.leave()


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
