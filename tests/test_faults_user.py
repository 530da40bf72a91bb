"""Faults a new user met, each ending in one true line: the launcher killed alone,
the divergence line on one-shard layouts, resume=true into an empty folder, other classes at
evaluation, an output path that is a folder, and the smaller ones (an unreadable image said
once, no empty run directory left by a rejected configuration, no note folders left behind).
Real launches at the smoke size."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from alexnet_mp.job.launcher import alive
from helpers import (ROOT, TINY, command, error_line, final_state, image_folder, job_env, launch, ok,
                      published_checkpoint)

pytestmark = pytest.mark.slow


def _workers(pid: int) -> list[int]:
    """torchrun ``pid``'s workers: its children running launch/train.py."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and b"launch/train.py" in (stat.parent / "cmdline").read_bytes():
                kids.append(int(stat.parent.name))
        except OSError:
            continue
    return kids


# -- 1. the launcher killed alone -------------------------------------------------------------

def test_a_killed_launcher_stops_its_workers_which_save_and_resume_bit_for_bit(tmp_path, straight_run):
    """kill -9 of torchrun alone (its workers run in sessions of their own): within seconds every
    worker saves the step reached, rank 0 says so in one line, the lock is free, and resuming
    ends bit-identical to the uninterrupted run."""
    run = tmp_path / "run"
    args = [*TINY, "checkpoint.every_steps=5", "data.workers=0"]
    proc = subprocess.Popen(command([*args, f"hydra.run.dir={run}"]), cwd=ROOT, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not published_checkpoint(run).startswith("step-00000005") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _workers(proc.pid)
    assert len(workers) == 2 and proc.poll() is None, workers
    proc.kill()
    killed = time.monotonic()
    proc.wait()
    try:
        while any(alive(w) for w in workers) and time.monotonic() - killed < 30:
            time.sleep(0.05)
        assert not any(alive(w) for w in workers), "the workers trained on without their launcher"
    finally:
        for w in workers:
            if alive(w):
                os.kill(w, signal.SIGKILL)
    out = proc.stdout.read()  # every writer of the pipe is gone
    lines = [l for l in out.splitlines() if l.startswith("alexnet_mp: ")]
    assert len(lines) == 1, out[-3000:]
    found = re.fullmatch(rf"alexnet_mp: the launcher \(torchrun, pid {proc.pid}\) is gone; stopped at step (\d+); "
                         rf"saved (\S+); continue with resume=true \(or resume=auto\)", lines[0])
    assert found, lines[0]
    step, latest = int(found[1]), published_checkpoint(run)
    assert 5 <= step < 16 and latest.startswith(f"step-{step:08d}") and found[2] == str(run / "checkpoints" / latest)
    assert not (run / "summary.json").exists() and "Traceback" not in out
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lock went with the workers
    finally:
        os.close(fd)
    ok(launch([*args, f"hydra.run.dir={run}", "resume=true"]))
    straight, resumed = final_state(straight_run), final_state(run)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


# -- 2. the divergence line names the newest good checkpoint, one shard or two -------------------

@pytest.mark.parametrize("nproc", [0, 2])
def test_divergence_names_the_last_good_checkpoint_of_a_one_shard_run(tmp_path, nproc):
    run = tmp_path / "run"
    line = error_line(launch(["model=half", "data.train_size=256", "data.val_size=64", "data.image_size=77",
                              "batch_size=16", "epochs=1", "progress=false", "checkpoint.every_steps=1",
                              "log_every_steps=1", "optim.lr=1e6", "data.workers=0", f"hydra.run.dir={run}"],
                             nproc=nproc))
    latest = published_checkpoint(run)
    assert latest and f"Last good checkpoint: {run / 'checkpoints' / latest} " in line, line


# -- 3. resume=true needs something to resume; resume=auto says it starts fresh ------------------

def test_resume_true_with_nothing_to_resume_is_one_line_before_any_work(tmp_path):
    run = tmp_path / "mistyped"
    proc = launch([*TINY, "resume=true", f"hydra.run.dir={run}"], nproc=0)
    assert proc.returncode == 1 and proc.stderr.startswith("alexnet_mp: error: resume=true but "), proc.stderr
    assert "no checkpoint" in proc.stderr and "resume=auto" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "training full net" not in proc.stdout
    assert not run.exists()  # and no empty run directory is left behind
    proc = launch([*TINY, "resume=auto", "debug.max_steps=1", f"hydra.run.dir={run}"], nproc=0)
    ok(proc)
    assert re.search(r"resume=auto: \S+ has no checkpoint yet; starting from scratch", proc.stdout), proc.stdout


# -- a trained net, for evaluation and the outputs -----------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A half net trained two epochs on folders of photographs (classes a, b) holding one
    broken file, with a loader worker: the file is met by the statistics, then each epoch."""
    tmp = tmp_path_factory.mktemp("trained")
    root = image_folder(tmp / "data", {"train": ["a", "b"], "val": ["a", "b"]}, per_class=4)
    (root / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    run = tmp / "run"
    proc = launch(["model=half", "data=imagefolder", f"data.root={root}", "data.image_size=77", "batch_size=4",
                   "epochs=2", "progress=false", "data.workers=1", f"hydra.run.dir={run}"], nproc=0)
    ok(proc)
    return run, proc


def test_an_unreadable_image_is_said_once_per_job_on_one_line(trained):
    _, proc = trained
    said = [l for l in (proc.stdout + proc.stderr).splitlines() if "broken.jpg" in l]
    assert len(said) == 1 and "skipping unreadable image" in said[0] and "BytesIO" not in said[0], said
    assert "UserWarning" not in proc.stdout + proc.stderr


# -- 4. evaluation on data with other class names ------------------------------------------------

def test_evaluating_on_other_classes_is_an_error_unless_allowed(trained, tmp_path):
    run, _ = trained
    other = image_folder(tmp_path / "other", {"train": ["c", "d"], "val": ["c", "d"]}, per_class=2)
    args = [f"checkpoint={run}", "data=imagefolder", f"data.root={other}", "data.image_size=77", "progress=false",
            "workers=0", f"output={tmp_path / 'eval.json'}"]
    line = error_line(launch(args, nproc=0, script="evaluate"))
    assert "class names" in line and "allow_class_mismatch=true" in line
    assert not (tmp_path / "eval.json").exists()
    proc = launch([*args, "allow_class_mismatch=true"], nproc=0, script="evaluate")
    ok(proc)
    assert (tmp_path / "eval.json").is_file() and "class names" in proc.stdout + proc.stderr
    # Figures 3 and 4 read the data the same way, and say the same option
    line = error_line(launch([f"checkpoint={run}", "data=imagefolder", f"data.root={other}", "data.image_size=77",
                              f"output_dir={tmp_path / 'figs'}"], nproc=0, script="figures"))
    assert "class names" in line and "allow_class_mismatch=true" in line


# -- 5. an output path that is a folder ----------------------------------------------------------

@pytest.mark.parametrize("script, option", [("export", "out"), ("predict", "output"),
                                            ("evaluate", "output")])
def test_an_output_path_that_is_a_folder_is_one_line_before_the_work(trained, tmp_path, script, option):
    run, _ = trained
    folder = tmp_path / "out.onnx"  # a name export accepts, but a folder
    folder.mkdir()
    extra = [f"images={run.parent / 'data' / 'val'}", "progress=false"] if "predict" in script else \
        ["progress=false", "workers=0"] if "evaluate" in script else []
    started = time.monotonic()
    proc = launch([f"checkpoint={run}", f"{option}={folder}", *extra], nproc=0, script=script)
    line = error_line(proc)
    assert "is a folder" in line and str(folder) in line and "Traceback" not in proc.stderr
    assert "centre crop" not in proc.stdout and "wrote" not in proc.stdout  # before the work
    assert time.monotonic() - started < 60


# -- 6. a rejected configuration leaves no run directory; note folders do not pile up ------------

@pytest.mark.parametrize("bad", ["batch_size=abc", "log_every_steps=0"])
def test_a_rejected_configuration_leaves_no_empty_run_directory(tmp_path, bad):
    run = tmp_path / "run"
    line = error_line(launch([*TINY, bad, f"hydra.run.dir={run}"], nproc=0))
    assert f"{bad.split('=')[0]} must be a positive integer" in line
    assert not run.exists()


def test_the_jobs_note_folders_are_removed_and_stale_ones_cleaned(tmp_path):
    notes = tmp_path / "tmp"
    notes.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    # Left by a job whose processes are gone.
    stale = notes / f"alexnet_mp-job-pid{dead.pid}-x"
    stale.mkdir()
    (stale / "error").touch()
    cmd = command(["data=imagefolder", f"data.root={tmp_path / 'nowhere'}", "progress=false",
                   f"hydra.run.dir={tmp_path / 'r'}"])
    proc = subprocess.run(cmd, cwd=ROOT, env=job_env(TMPDIR=str(notes)), capture_output=True, text=True, timeout=240)
    assert (proc.stdout + proc.stderr).count("alexnet_mp: error:") == 1, proc.stderr[-2000:]
    assert not list(notes.glob("alexnet_mp-job-*")), list(notes.iterdir())
