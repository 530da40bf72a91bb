"""What several test modules share, as plain functions and constants (fixtures live in
conftest.py): where the repository is, launching the entry points as a user does (``launch``,
``ok``, ``error_line``), reading what they leave (``final_state``), composing a command's
configuration (``compose_config``, ``config_error``), one-line errors (``one_line``) and the
relative difference every exactness comparison uses (``rel_diff``, the device check's measure).

Test modules import these by name (``from helpers import launch, ok``): ``tests/`` is on the
path through pytest's ``pythonpath`` option (setup.cfg), and in spawned processes through
``sys.path``, which they inherit; helpers that spawned processes must import live in
``distributed.py``.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import alexnet_mp.config  # noqa: F401 - registers the schema that conf/*.yaml names (base_train, ...)
from benchmarks.shared.exactness import rel_diff  # noqa: F401 - the exactness measure, one with the device check's

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"
# 128 train / 64 val synthetic images, batch 16, 2 epochs: the smoke preset, with the short run's
# dropout and rate put back, so that resuming and replicas are tested with dropout masks drawn.
TINY = ["experiment=smoke", "progress=false", "model.dropout=0.5", "optim.lr=0.002", "schedule.warmup_steps=60"]


# -- the entry points, launched as a user launches them ------------------------------------------

def job_env(**extra: str) -> dict[str, str]:
    """The environment of a launched job: unbuffered output, one thread per process."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}


def command(args: list[str], nproc: int = 2, script: str = "train", torchrun: tuple[str, ...] = ()) -> list[str]:
    """``launch/<script>.py args`` (or ``script`` itself, a path such as ``tests/train_killed.py``)
    under torchrun with ``nproc`` processes, or plain python (``nproc=0``)."""
    path = script if script.endswith(".py") else f"launch/{script}.py"
    if nproc == 0:
        return [sys.executable, path, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *torchrun,
            path, *args]


def launch(args: list[str], nproc: int = 2, script: str = "train", timeout: int = 240,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run :func:`command` from the repository root to its end (``env``: added to :func:`job_env`'s);
    its output captured."""
    return subprocess.run(command(args, nproc, script), cwd=ROOT, env=job_env(**(env or {})), capture_output=True,
                          text=True, timeout=timeout)


KILLED = "tests/train_killed.py"  # launch/train.py that SIGKILLs itself after step $KILL_AT_STEP (and its checkpoint)


def start(args: list[str], nproc: int = 2, script: str = "train") -> subprocess.Popen:
    """:func:`command` started in its own process group (as a scheduler's job is), output merged."""
    return subprocess.Popen(command(args, nproc, script), cwd=ROOT, env=job_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def ok(proc: subprocess.CompletedProcess) -> str:
    """Fails with the output's tail unless ``proc`` exited 0; returns its output."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The first ``alexnet_mp: error:`` line of a failed run."""
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("alexnet_mp: error: ")]
    assert proc.returncode != 0 and lines, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return lines[0]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """A run that exited 1 with exactly one line on stderr, ``alexnet_mp: error: ...``, and no traceback."""
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alexnet_mp: error: "), proc.stderr
    return lines[0]


def one_line(err: pytest.ExceptionInfo) -> str:
    """A raised error's message, which must be one non-empty line."""
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


def final_state(run_dir: Path) -> dict:
    """The weights a finished training run saved."""
    return torch.load(run_dir / "model_final.pt", weights_only=True)["state_dict"]


# -- configurations -------------------------------------------------------------------------------

def compose_config(name: str, overrides: list[str]):
    """``conf/<name>.yaml`` composed with ``overrides`` as a launcher composes it, and checked
    against its schema (raises the UserError the launcher would print)."""
    from hydra import compose, initialize_config_dir

    from alexnet_mp import config

    register_benchmark_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides)
    config.check(cfg)
    return cfg


def register_benchmark_schemas() -> None:
    """The benchmarks' schemas (``benchmarks/*/schema.py``, which the product's config package
    does not hold; each benchmark's entry point registers its own), so their conf/ files compose."""
    import importlib

    for schema in sorted((ROOT / "benchmarks").glob("*/schema.py")):
        importlib.import_module(f"benchmarks.{schema.parent.name}.schema").register()


def config_error(name: str, *overrides: str) -> str:
    """The one line a launcher prints for ``overrides`` of ``conf/<name>.yaml`` (an error in
    Hydra's composition or in the schema's check); fails when there is none."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from alexnet_mp import config
    from alexnet_mp.errors import UserError

    try:
        compose_config(name, list(overrides))
    except UserError as err:
        return str(err)
    except (HydraException, OmegaConfBaseException) as err:
        return config.explain(err)
    raise AssertionError(f"{name} {' '.join(overrides)} composed and passed its checks")


def published_checkpoint(run: Path) -> str:
    """The checkpoint a run's ``latest`` names ("" before its first)."""
    try:
        return (run / "checkpoints" / "latest").read_text()
    except OSError:
        return ""


def image_folder(root: Path, classes_by_split: dict[str, list[str]], per_class: int = 3) -> Path:
    """An ImageFolder tree of random 40x50 JPEGs: ``{split: [class, ...]}``, ``per_class`` each."""
    g = torch.Generator().manual_seed(0)
    for split, classes in classes_by_split.items():
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (40, 50, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg")
    return root
