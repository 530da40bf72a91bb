"""Faults a cluster run meets (docs/reliability.md): a stop signal to a one-process run and its
loader workers, a full disk,
damaged checkpoints, a second launch into a live run directory, an unwritable one, and an
error on every rank printed once. Real launches at the smoke size; the damaged checkpoints
share one two-tower run."""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import ROOT, TINY, command, error_line, final_state, job_env, launch, ok, start

pytestmark = pytest.mark.slow

ONE_PROCESS = [*TINY, "epochs=1"]  # the whole net in one process: one 160 MB shard per checkpoint


def _latest(run: Path) -> str:
    pointer = run / "checkpoints" / "latest"
    return pointer.read_text() if pointer.is_file() else ""


def _temporaries(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if ".tmp-" in p.name]


# -- a stop signal on a plain python run --------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[Path, int, str]:
    """A one-process run with two loader workers, its whole process group sent SIGTERM (what
    Slurm sends at a time limit or preemption) after its checkpoint at step 2: the workers get
    it too. (SIGUSR1 and SIGINT take the same path: preempt.STOP_SIGNALS.)"""
    run = tmp_path_factory.mktemp("stopped") / "run"
    proc = start([*ONE_PROCESS, "checkpoint.every_steps=2", "data.workers=2", f"hydra.run.dir={run}"], nproc=0)
    deadline = time.monotonic() + 120
    while not _latest(run).startswith("step-00000002") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return run, proc.returncode, out


def test_a_stop_signal_saves_and_exits_with_the_preemption_status(stopped):
    from alexnet_mp.job.preempt import EXIT_PREEMPTED

    run, status, out = stopped
    lines = [l for l in out.splitlines() if l.startswith("alexnet_mp: ")]
    assert status == EXIT_PREEMPTED == 75, out[-2000:]
    assert len(lines) == 1 and lines[0].startswith("alexnet_mp: stopped by SIGTERM at step "), out[-2000:]
    step = int(lines[0].split("at step ")[1].split(";")[0])
    assert _latest(run).startswith(f"step-{step:08d}") and "Traceback" not in out
    assert (run / "checkpoints" / _latest(run) / "meta.json").is_file()


def test_a_run_stopped_with_its_loader_workers_resumes_bit_for_bit(stopped, straight_one_process, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    ok(launch([*ONE_PROCESS, "checkpoint.every_steps=2", f"hydra.run.dir={run}", "resume=true"], nproc=0))
    straight, resumed = final_state(straight_one_process), final_state(run)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


# -- a full disk --------------------------------------------------------------------------------------

def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def _run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess:
    return subprocess.run(command(args, nproc=0), cwd=ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=240, preexec_fn=_limit_file_size(limit))


def _assert_clean_disk_full(proc, run: Path, before: str, words: str) -> None:
    line = error_line(proc)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert words in line and "needed " in line and "MiB" in line and "free" in line, line
    assert not _temporaries(run), _temporaries(run)
    assert _latest(run) == before  # the newest complete checkpoint, still named
    assert (run / "checkpoints" / before / "meta.json").is_file()


def test_a_file_size_limit_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped[0], run)
    before, listed = _latest(run), sorted(p.name for p in (run / "checkpoints").iterdir())
    proc = _run_limited([*ONE_PROCESS, "checkpoint.every_steps=1", f"hydra.run.dir={run}", "resume=true"],
                        limit=50 * 2 ** 20)
    _assert_clean_disk_full(proc, run, before, "file too large")
    assert "tower0.pt" in error_line(proc)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == listed  # the torn save's folder is gone


def test_a_full_tmpfs_while_checkpointing_is_one_line(stopped, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    # Room for one checkpoint of the net (160 MB) and the run's small files, not for a second.
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=260m", "tmpfs", str(mount)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        run, before = mount / "run", _latest(stopped[0])
        shutil.copytree(stopped[0], run, ignore=lambda folder, names: [
            n for n in names if n == "tensorboard" or (n.startswith("step-") and n != before)])
        proc = launch([*ONE_PROCESS, "checkpoint.every_steps=1", f"hydra.run.dir={run}", "resume=true"], nproc=0)
        _assert_clean_disk_full(proc, run, before, "no space left on device")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_the_metrics_and_tensorboard_is_one_line(tmp_path):
    from alexnet_mp.io import DiskFull
    from alexnet_mp.job.metrics_log import MetricsLog

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    metrics = MetricsLog(tmp_path, enabled=True)
    row = {"epoch": 1, "train_loss": 2.0, "val_top1_err": 0.5, "val_top5_err": 0.1, "lr": 0.01, "images_per_s": 1.0,
           "padding": "x" * 4096}
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
        with pytest.raises(DiskFull, match="metrics.jsonl"):
            metrics.epoch(row)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not _temporaries(tmp_path)


# -- damaged checkpoints ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory) -> Path:
    """A two-tower run stopped at step 6 with checkpoints at steps 2, 4 and 6."""
    run = tmp_path_factory.mktemp("three") / "run"
    ok(launch([*TINY, "checkpoint.every_steps=2", "checkpoint.keep=3", "debug.max_steps=6", f"hydra.run.dir={run}"]))
    assert len(list((run / "checkpoints").glob("step-*"))) == 3
    return run


def _step(run: Path, n: int) -> Path:
    return next((run / "checkpoints").glob(f"step-{n:08d}-*"))


def test_a_corrupt_shard_of_the_same_size_fails_its_checksum(three_checkpoints, tmp_path):
    from alexnet_mp.job.checkpoint import CheckpointStore

    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    shard = _step(run, 6) / "tower1.pt"
    with open(shard, "r+b") as f:  # one byte flipped in the middle: torch.load might not notice
        f.seek(shard.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    store = CheckpointStore(run, 1)
    assert "sha256" in store.problem(_step(run, 6), [1])
    assert store.problem(_step(run, 6), [0]) is None and store.last_good([0, 1]) == _step(run, 4)


def test_damaged_checkpoints_are_skipped_and_the_newest_good_one_resumes(three_checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(three_checkpoints, run)
    newest, middle = _step(run, 6), _step(run, 4)
    shard = newest / "tower1.pt"  # rank 1's shard: rank 0 alone could not see it is torn
    os.truncate(shard, shard.stat().st_size // 3)
    (middle / "tower0.pt").unlink()
    (run / "checkpoints" / "latest").write_text("step-00000099-epoch-0009-batch-0000009")
    proc = launch([*TINY, "checkpoint.every_steps=2", "checkpoint.keep=3", "debug.max_steps=7",
                   f"hydra.run.dir={run}", "resume=true"])
    ok(proc)
    out = proc.stdout + proc.stderr
    assert out.count("skipping checkpoint") == 2 and "lost rank" not in out, out[-3000:]
    assert f"skipping checkpoint {newest}: tower1.pt has" in out and "truncated" in out
    assert f"skipping checkpoint {middle}: tower0.pt is missing" in out
    assert "names step-00000099-epoch-0009-batch-0000009, which is not there" in out
    assert "resuming from" in out and "step 2)" in out and "alexnet_mp: error" not in out
    # and when none is usable, one line
    for shard in (run / "checkpoints").glob("step-*/tower0.pt"):
        os.truncate(shard, 100)
    proc = launch([*TINY, f"hydra.run.dir={run}", "resume=true"])
    line = error_line(proc)
    assert "no usable checkpoint" in line and "tower0.pt has 100 bytes" in line
    assert (proc.stdout + proc.stderr).count("alexnet_mp: error") == 1


# -- one run directory, one job -----------------------------------------------------------------------

def test_a_live_job_locks_its_run_directory_and_a_killed_one_does_not(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); print('locked', flush=True)\n"
                               "time.sleep(300)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = error_line(launch([*TINY, "debug.max_steps=1", f"hydra.run.dir={run}"], nproc=2))
        assert "in use by a live job" in line and ".lock" in line
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    proc = launch([*ONE_PROCESS, "debug.max_steps=1", f"hydra.run.dir={run}"], nproc=0)
    ok(proc)
    fd = os.open(run / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and the finished job left it free
    finally:
        os.close(fd)


def test_an_unwritable_run_directory_is_one_line_before_training(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    mounted = os.geteuid() == 0 and not subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(parent)], capture_output=True).returncode
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root ignores permission bits and no read-only tmpfs can be mounted here")
        parent.chmod(0o555)
    try:
        proc = launch([*TINY, f"hydra.run.dir={parent / 'run'}"], nproc=2)
        line = error_line(proc)
        assert "cannot create the run directory" in line and str(parent / "run") in line
        assert "training full net" not in proc.stdout + proc.stderr
        line = error_line(launch([f"checkpoint={tmp_path}", f"output={parent / 'eval.json'}"], nproc=0,
                                 script="evaluate"))
        assert f"cannot write {parent / 'eval.json'}: the folder {parent} is not writable" in line, line
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(parent)], check=False)
        else:
            parent.chmod(0o755)


# -- one line per job, not per rank -------------------------------------------------------------------

def test_an_error_every_rank_meets_is_printed_once(tmp_path):
    proc = launch(["data=imagefolder", f"data.root={tmp_path / 'nowhere'}", "progress=false",
                   f"hydra.run.dir={tmp_path / 'run'}"], nproc=2)
    error_line(proc)
    assert (proc.stdout + proc.stderr).count("alexnet_mp: error:") == 1, proc.stderr[-2000:]
