"""Faults a new user's third probe met (issue 35), each ending in one true line: a loader
worker killed outright, a damaged prepared dataset, a garbled ``checkpoints/latest``, an
unfinished checkpoint at retention, a killed sweep driver, Ctrl-C in the other entry points,
and the output paths of evaluate and predict. (A stop signal to every process of a run,
loader workers included: ``test_faults.py::stopped`` and ``test_train.py``'s whole-job SIGTERM.)"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet_mp.job.checkpoint import CheckpointStore
from helpers import ROOT, TINY, job_env, published_checkpoint, start


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


# -- 2. kill -9 of one loader worker ------------------------------------------------------------

def _killed_worker(run: Path, stop_first: bool) -> tuple[subprocess.Popen, str, int]:
    """A one-process run with a loader worker, the worker killed (kill -9) after the step-2
    checkpoint; ``stop_first``: SIGTERM to the main process just before."""
    proc = start([*TINY, "epochs=1", "checkpoint.every_steps=2", "data.workers=1", f"hydra.run.dir={run}"], nproc=0)
    deadline = time.monotonic() + 120
    while not published_checkpoint(run).startswith("step-00000002") and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _children(proc.pid)
    assert len(workers) == 1 and proc.poll() is None, workers
    if stop_first:
        os.kill(proc.pid, signal.SIGTERM)
    os.kill(workers[0], signal.SIGKILL)  # the OOM killer's usual victim
    out, _ = proc.communicate(timeout=60)
    return proc, out, workers[0]


@pytest.mark.slow
def test_a_killed_loader_worker_is_one_line_naming_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc, out, worker = _killed_worker(run, stop_first=False)
    lines = [l for l in out.splitlines() if l.startswith("alexnet_mp: ")]
    assert proc.returncode == 1 and "Traceback" not in out and len(lines) == 1, out[-3000:]
    latest = published_checkpoint(run)
    # torch's words: its SIGCHLD handler's, or its fetch's when the worker held the batch being fetched
    # (loader.fetch_failure's own, should torch not name the worker within a second)
    assert re.match(rf"alexnet_mp: error: a data loader worker of rank 0 died \(DataLoader worker (\(pid(\(s\))? "
                    rf"{worker}\) (is killed by signal: Killed|exited unexpectedly)|died while handing over a batch "
                    r"\(\w+\))\); rank 0 stopped\. Last good checkpoint: ", lines[0]), lines[0]
    assert f"Last good checkpoint: {run / 'checkpoints' / latest} " in lines[0] and latest >= "step-00000002"


@pytest.mark.slow
def test_a_loader_worker_dying_while_a_stop_is_pending_is_the_stop(tmp_path):
    """The worker dies after the main process got its stop signal (as when a scheduler's
    SIGKILL follows its SIGTERM too soon): the stop goes on, saves, exits 75."""
    run = tmp_path / "run"
    proc, out, _ = _killed_worker(run, stop_first=True)
    lines = [l for l in out.splitlines() if l.startswith("alexnet_mp: ")]
    assert proc.returncode == 75 and "Traceback" not in out and len(lines) == 1, out[-3000:]
    step = int(re.match(r"alexnet_mp: stopped by SIGTERM at step (\d+); saved ", lines[0])[1])
    assert published_checkpoint(run).startswith(f"step-{step:08d}")
    assert (run / "checkpoints" / published_checkpoint(run) / "meta.json").is_file()


# -- 5, 6. a garbled ``latest``; retention with an unfinished checkpoint --------------------------

def _save(store: CheckpointStore, step: int) -> Path:
    return store.save(f"step-{step:08d}", {"w": torch.full((4,), float(step))}, {"step": step})


def _unfinished(store: CheckpointStore, step: int) -> Path:
    """What a save cut short leaves: a shard, a temporary, no meta.json."""
    folder = store.root / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "tower0.pt").write_bytes(b"x" * 100)
    (folder / ".tower1.pt.tmp-123").write_bytes(b"x" * 10)
    return folder


@pytest.mark.parametrize("garbled", [b"\xff\xfe\x80step", b"", b"\0" * 40])
def test_a_garbled_latest_falls_back_to_the_newest_good_checkpoint(tmp_path, garbled):
    store = CheckpointStore(tmp_path, 0)
    _save(store, 31)
    newest = _save(store, 62)
    (store.root / "latest").write_bytes(garbled)
    assert store.latest() is None and store.has_any()
    assert store.choose() == (newest, [])
    assert _save(store, 93) == store.root / "step-00000093" == store.latest()


def test_retention_counts_only_complete_checkpoints(tmp_path):
    """A rank froze while saving step 93; the run resumed from step 62 with keep=2."""
    store = CheckpointStore(tmp_path, 0, keep=2)
    _save(store, 31)
    _save(store, 62)
    stale, frozen = _unfinished(store, 50), _unfinished(store, 93)
    _save(store, 70)
    kept = sorted(p.name for p in store.root.glob("step-*"))
    assert kept == ["step-00000062", "step-00000070", "step-00000093"], kept  # 50 is past; 93 may be written again
    assert all((store.root / n / "meta.json").is_file() for n in kept[:2]) and not stale.exists()
    assert store.last_good([0]) == store.root / "step-00000070"
    _save(store, 93)  # the resumed run reaches step 93 and saves it whole
    assert sorted(p.name for p in store.root.glob("step-*")) == ["step-00000070", "step-00000093"]
    assert (frozen / "meta.json").is_file()


# -- 7. kill -9 of the sweep driver; 8. the sweep runs its own checkout's train.py ---------------

def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_a_killed_sweep_takes_its_runs_with_it_and_they_save(tmp_path):
    """kill -9 of launch/reproduce.py: its train.py gets SIGTERM (the death signal), saves the
    step reached and ends within seconds; the run directory is free for the next sweep."""
    run = tmp_path / "sweep" / "runs" / "full-seed0"
    proc = subprocess.Popen(
        [sys.executable, "launch/reproduce.py", "configs=[full]", "seeds=[0]", "epochs=1", "data.train_size=512",
         "data.val_size=32", "data.stats_samples=64", f"sweep_dir={tmp_path / 'sweep'}",
         f"output_dir={tmp_path / 'out'}",
         'train_overrides=["progress=false","batch_size=16","checkpoint.every_steps=1"]'],
        cwd=ROOT, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not published_checkpoint(run) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        runs = _children(proc.pid)
        assert len(runs) == 1 and proc.poll() is None, runs
        proc.kill()
        proc.wait()
        killed = time.monotonic()
        while _alive(runs[0]) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        assert not _alive(runs[0]), "the run trained on without its sweep"
        assert time.monotonic() - killed < 15
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the sweep's process group
    log = (tmp_path / "sweep" / "logs" / "full-seed0.train.log").read_text()
    assert "alexnet_mp: stopped by SIGTERM at step " in log and "Traceback" not in log, log[-3000:]
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a sweep run again now finds the run free
    finally:
        os.close(fd)


def test_the_sweep_runs_the_train_py_of_the_checkout_it_was_started_from(tmp_path, monkeypatch):
    from alexnet_mp.job.cli import checkout, train_command

    other = tmp_path / "other-checkout"
    (other / "launch").mkdir(parents=True)
    (other / "launch" / "train.py").write_text("")
    monkeypatch.setattr(sys, "argv", [str(other / "launch" / "reproduce.py"), "epochs=1"])
    assert checkout() == other.resolve()
    assert train_command(["epochs=1"], torchrun=False)[1:] == [str(other.resolve() / "launch" / "train.py"), "epochs=1"]
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "elsewhere.py")])  # no checkout above: the package's own
    assert train_command([], torchrun=False)[1] == str(ROOT / "launch" / "train.py")


# -- 8. Ctrl-C outside training; the output paths of evaluate and predict -------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script, module, function, args", [
    ("evaluate", "alexnet_mp.use.evaluate", "evaluate_checkpoint", ["checkpoint=RUN"]),
    ("predict", "alexnet_mp.use.predict", "predict", ["checkpoint=RUN", "images=RUN"]),
    ("figure1", "alexnet_mp.paper.figure1", "figure1", ["data.root=RUN"]),
])
def test_ctrl_c_in_the_other_entry_points_is_one_line(tmp_path, script, module, function, args):
    """The launch script as a user runs it, its work interrupted (KeyboardInterrupt, what
    Ctrl-C raises) at a moment the test chooses rather than one a timer guesses."""
    argv = [str(ROOT / "launch" / f"{script}.py"), *(a.replace("RUN", str(tmp_path)) for a in args)]
    code = (f"import importlib, runpy, sys; m = importlib.import_module({module!r}); "
            f"m.{function} = lambda cfg, *args, **kwargs: (_ for _ in ()).throw(KeyboardInterrupt()); "
            f"sys.argv = {argv!r}; runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=job_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    said = proc.stderr.strip().splitlines()
    assert said == ["alexnet_mp: stopped by SIGINT (Ctrl-C); files already written are kept"], said


def test_evaluate_refuses_a_missing_output_folder_as_predict_and_export_do(tmp_path):
    from omegaconf import OmegaConf

    from alexnet_mp.errors import UserError
    from alexnet_mp.use.evaluate import _output_path

    cfg = OmegaConf.create({"checkpoint": str(tmp_path), "output": str(tmp_path / "missing" / "eval.json"),
                            "data": None})
    with pytest.raises(UserError, match=r"the folder .*missing does not exist"):
        _output_path(cfg)
    assert not (tmp_path / "missing").exists()


def test_an_output_under_a_file_names_the_file(tmp_path):
    from alexnet_mp.errors import UserError
    from alexnet_mp.use.predict import check_output_path

    (tmp_path / "notes.txt").write_text("a file")
    for out in (tmp_path / "notes.txt" / "out.json", tmp_path / "notes.txt" / "sub" / "out.json"):
        with pytest.raises(UserError) as err:
            check_output_path(out)
        assert str(err.value) == f"cannot write {out}: {tmp_path / 'notes.txt'} is a file, not a folder"
