"""launch/train.py end to end: real torchrun launches with two gloo processes where it matters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet_mp import data
from alexnet_mp.parallel import ranks
from helpers import KILLED, ROOT, SHARED_DATA, TINY, compose_config, config_error, error_line, final_state, image_folder, launch, ok, one_line, published_checkpoint, start
from distributed import run_ranks

pytestmark = pytest.mark.slow


# -- both towers see the same batches -----------------------------------------------------------

def _batches_on_both_towers(rank: int) -> list[bool]:
    from alexnet_mp.data import BatchAugment

    ds = data.SyntheticImages("train", 10, 48, 77, seed=0)
    stats = data.compute_stats(ds, 48, 0, progress=False)
    augment = BatchAugment(stats, 67, seed=0, pca_sigma=0.1)
    # Rank 1 loads with a worker process and rank 0 without: the batches must still match.
    loader = data.BatchLoader(ds, 16, shuffle=True, seed=0, workers=1 if rank else 0, drop_last=True)
    same, first = [], []
    for epoch in (0, 1):
        for batch in loader.epoch(epoch):
            images = augment.train(batch.images, batch.indices, batch.epoch)
            same.append(ranks.all_equal(images) and ranks.all_equal(batch.labels))
            first = first or [images]
        first.append(images)
    # and a different epoch must give different batches (augmentation is on)
    return same + [not torch.equal(first[1], first[2])]


def test_both_towers_get_identical_augmented_batches():
    for result in run_ranks(_batches_on_both_towers):
        assert len(result) == 7 and all(result)


# -- the two-tower run trains the same net as one process: tests/test_scale.py (1, 2 and 4 processes)

# -- a crash at any moment loses nothing -------------------------------------------------------

def _stopped(run: Path, args: list[str], stop: str, latest: str) -> None:
    """``args`` stopped by ``stop``, ``debug.max_steps=N`` (a clean stop, exit 0) or ``kill -9 after N``
    (every rank SIGKILLs itself after step N and its checkpoint, tests/train_killed.py): ``latest``
    named, no summary yet."""
    if stop.startswith("kill -9 after "):
        stopped = launch([*args, f"hydra.run.dir={run}"], script=KILLED, env={"KILL_AT_STEP": stop.split()[-1]})
    else:
        stopped = launch([*args, f"hydra.run.dir={run}", stop])
    assert (stopped.returncode == 0) == stop.startswith("debug.max_steps")
    assert published_checkpoint(run) == latest
    assert not (run / "summary.json").exists()


def _resumed_as_straight(run: Path, straight_run: Path) -> None:
    """A finished resumed run: the straight run's weights bit for bit, its metrics and its files."""
    straight, resumed = final_state(straight_run), final_state(run)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    rows = lambda d: [{k: v for k, v in json.loads(l).items() if k not in ("seconds", "images_per_s", "data_wait_share")}  # noqa: E731
                      for l in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(straight_run) == rows(run) and len(rows(run)) == 2
    for f in ("config.yaml", "learning_curves.png", "summary.json"):
        assert (run / f).is_file(), f
    assert list((run / "tensorboard").iterdir())


@pytest.mark.parametrize("every, stop, latest", [
    (3, "kill -9 after 11", "step-00000009-epoch-0001-batch-0000001"),  # killed two steps after a checkpoint
    (8, "kill -9 after 8", "step-00000008-epoch-0000-batch-0000008"),   # killed before epoch 1's evaluation
])
def test_stopped_run_resumes_to_the_same_weights_bit_for_bit(tmp_path, straight_run, every, stop, latest):
    args = [*TINY, f"checkpoint.every_steps={every}"]
    _stopped(tmp_path / "crash", args, stop, latest)
    ok(launch([*args, f"hydra.run.dir={tmp_path / 'crash'}", "resume=true"]))
    _resumed_as_straight(tmp_path / "crash", straight_run)


def test_sigterm_to_the_whole_job_after_a_clean_stop_saves_and_resumes_bit_for_bit(tmp_path, straight_run):
    """One job stopped twice, each stop then resumed: a clean stop on a checkpoint step (step 6),
    then a scheduler's SIGTERM to every process of the resumed torchrun job (torchrun forwards it
    too, so each rank gets it twice), sent after the periodic checkpoint at step 10: every rank
    stops at one step, saves it, and prints nothing about a lost rank; resuming ends where the
    straight run does. (Two stops in one job: one launch fewer than a job for each.)"""
    import os
    import signal
    import time

    run = tmp_path / "run"
    _stopped(run, [*TINY, "checkpoint.every_steps=3"], "debug.max_steps=6", "step-00000006-epoch-0000-batch-0000006")
    args = [*TINY, "checkpoint.every_steps=5"]
    # Its own process group, as a scheduler's job has, with a loader worker per rank: they get the SIGTERM too.
    proc = start([*args, "data.workers=1", f"hydra.run.dir={run}", "resume=true"])
    deadline = time.monotonic() + 180
    while not published_checkpoint(run).startswith("step-00000010") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    lines = [l for l in out.splitlines() if l.startswith("alexnet_mp: ")]
    assert len(lines) == 1 and lines[0].startswith("alexnet_mp: stopped by SIGTERM at step "), out[-3000:]
    assert "lost rank" not in out and "alexnet_mp: error" not in out and "DataLoader worker" not in out
    # The only traceback is torchrun's own, of the signal it got (docs/reliability.md): none from a rank.
    assert out.count("Traceback") == out.count("SignalException: Process"), out[-3000:]
    step = int(lines[0].split("at step ")[1].split(";")[0])
    latest = published_checkpoint(run)
    assert 10 <= step < 16 and latest.startswith(f"step-{step:08d}") and f"saved {run / 'checkpoints' / latest};" in lines[0]
    meta = json.loads((run / "checkpoints" / latest / "meta.json").read_text())
    assert meta["step"] == step and meta["reason"] in ("preempted", "every_steps")
    assert not (run / "summary.json").exists()
    ok(launch([*args, f"hydra.run.dir={run}", "resume=auto"]))
    _resumed_as_straight(run, straight_run)


def test_a_finished_run_is_never_overwritten(tmp_path, straight_one_process):
    run = tmp_path / "run"
    shutil.copytree(straight_one_process, run)
    before = (run / "model_final.pt").read_bytes()
    line = error_line(launch([*TINY, "epochs=1", f"hydra.run.dir={run}"], nproc=0))
    assert "already holds a run" in line
    assert (run / "model_final.pt").read_bytes() == before
    # and a checkpoint from another configuration is refused on resume
    (run / "summary.json").unlink()
    line = error_line(launch([*TINY, "epochs=2", "model=half", f"hydra.run.dir={run}", "resume=true"], nproc=0))
    assert "written for another configuration" in line and "name='full' here 'half'" in line
    # Other settings meet the same check (the launch above shows it becomes the launcher's line):
    # the checkpoint's recorded configuration against the one composed for the resumption.
    from omegaconf import OmegaConf

    from alexnet_mp.errors import UserError
    from alexnet_mp.train import check_resumable

    latest = run / "checkpoints" / published_checkpoint(run)
    saved = json.loads((latest / "meta.json").read_text())["config"]
    for override, words in (("data.num_classes=5", "num_classes=10 here 5"), ("batch_size=8", "batch_size=16 here 8")):
        now = OmegaConf.to_container(compose_config("config", [*TINY, "epochs=2", override, "resume=true"]), resolve=True)
        with pytest.raises(UserError) as err:
            check_resumable(saved, now, latest)
        assert "another configuration" in str(err.value) and words in str(err.value)


# -- bad input: one line, exit status 1 ---------------------------------------------------------

@pytest.mark.parametrize("case", ["missing", "empty", "mismatch", "no_root"])
def test_bad_data_root_is_a_one_line_error(tmp_path, case):
    root = tmp_path / "data"
    if case == "empty":
        root.mkdir()
    if case == "mismatch":
        image_folder(root, {"train": ["cat", "dog"], "val": ["cat", "emu"]})
    extra = [] if case == "no_root" else [f"data.root={root}"]
    proc = launch(["data=imagefolder", *extra, "progress=false", f"hydra.run.dir={tmp_path / 'run'}"], nproc=0)
    line = error_line(proc)
    assert proc.returncode == 1
    expected = {"missing": str(root), "empty": str(root), "mismatch": "emu", "no_root": "data.root"}[case]
    assert expected in line


@pytest.mark.parametrize("override, words", [
    ("batch_size=abc", "batch_size must be a positive integer"),
    ("log_every_steps=0", "log_every_steps must be a positive integer"),
    ("resume=no", "resume must be true, false or auto"),
    ("data.pca_scale=cubic", "data.pca_scale must be sqrt or eigenvalue"),
    ("compile_mode=fast", "compile_mode must be default, reduce-overhead or max-autotune-no-cudagraphs"),
])
def test_bad_values_are_one_line_errors(override, words):
    # The schema's check, composed in this process as launch/train.py composes it: that the launcher
    # prints such a line once and exits 1 is test_config's (test_a_launcher_prints_...) and
    # test_faults_user's (batch_size=abc, log_every_steps=0 launched: no run directory left).
    assert words in config_error("config", *TINY, override)


def test_a_batch_larger_than_the_data_is_a_one_line_error(tmp_path):
    line = error_line(launch([*TINY, "batch_size=4096", f"hydra.run.dir={tmp_path}"], nproc=0))
    assert "larger than the 128 training images" in line


def test_wrong_process_counts_are_one_line_errors(tmp_path, monkeypatch):
    # The full net on 3 processes is refused by each rank before any process group is joined:
    # checked here as a rank of such a launch checks it. The half net's batch, which must split
    # over the replicas, is checked after the 3 processes joined: launched.
    from alexnet_mp.errors import UserError
    from alexnet_mp.parallel.placement import place

    with monkeypatch.context() as env:
        env.setenv("WORLD_SIZE", "3")
        with pytest.raises(UserError) as err:
            place(2)
    assert "got WORLD_SIZE=3" in one_line(err)
    line = error_line(launch([*TINY, "model=half", f"hydra.run.dir={tmp_path}/b"], nproc=3))
    assert "batch_size=16 is the global batch and must split evenly over the 3 replicas" in line


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    line = error_line(launch([*TINY, "optim.lr=1e9", "schedule.warmup_steps=0", "checkpoint.every_steps=1",
                              f"hydra.run.dir={run}"], nproc=0))
    assert ("the loss became" in line or "the weights became non-finite" in line) and "Last good checkpoint" in line
    latest = (run / "checkpoints" / "latest").read_text()
    shard = torch.load(run / "checkpoints" / latest / "tower0.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in shard["model"].values())


def test_corrupt_images_are_skipped_counted_and_evaluated(tmp_path):
    root = image_folder(tmp_path / "data", {"train": ["a", "b"], "val": ["a", "b"]}, per_class=8)
    (root / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    Image.new("L", (60, 40), 128).save(root / "train" / "b" / "grey.jpg")  # greyscale is converted
    Image.new("CMYK", (60, 40), (0, 50, 90, 10)).save(root / "val" / "b" / "cmyk.jpg")
    run = tmp_path / "run"
    args = ["data=imagefolder", f"data.root={root}", "data.image_size=77", "batch_size=4", "epochs=1",
            "progress=false", "data.workers=0"]
    proc = launch([*args, f"hydra.run.dir={run}"], nproc=2)
    ok(proc)
    assert "broken.jpg" in proc.stdout + proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped_images"] == 1 and summary["towers"] == 2
    # Without data=..., evaluation reads the data settings saved with the model.
    proc = launch([f"checkpoint={run}", f"output={tmp_path / 'eval.json'}", "progress=false"], nproc=0,
                  script="evaluate")
    ok(proc)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 17
    # The centre patch of the ten is the crop that validation during training used.
    assert result["center"]["top1_err"] == pytest.approx(summary["val_top1_err"])
    assert result["center"]["top5_err"] == pytest.approx(summary["val_top5_err"])
    for kind in ("center", "ten_crop"):
        assert 0.0 <= result[kind]["top5_err"] <= result[kind]["top1_err"] <= 1.0


@pytest.mark.skipif(not (SHARED_DATA / "cifar10").is_dir(), reason="../shared/data/cifar10 is not here")
def test_trains_on_real_photographs(tmp_path):
    # A few steps on CIFAR-10 photographs through the ImageFolder pipeline, two towers.
    proc = launch(["data=imagefolder", f"data.root={SHARED_DATA / 'cifar10'}", "data.image_size=77",
                   "data.stats_samples=200", "data.stats_cache=run", "batch_size=16", "debug.max_steps=3", "progress=false",
                   f"hydra.run.dir={tmp_path / 'run'}"])
    ok(proc)
    blob = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)
    assert blob["model"]["num_classes"] == 10 and blob["data"]["crop"] == 67


# -- the recipe through real training loops ------------------------------------------------------

PLATEAU = ["schedule.warmup_steps=0", "schedule.patience=0", "schedule.threshold=1.0", "epochs=3"]  # nothing counts as better


@pytest.fixture(scope="module")
def paper_rule_runs(tmp_path_factory):
    """The paper's update rule with plateau drops: straight through, and stopped then resumed.
    Half the smoke data (4 steps an epoch): three epochs are what the drops need, not their size;
    checkpoints only at the ends of epochs and at the stop (each writes the whole net)."""
    tmp = tmp_path_factory.mktemp("paper-rule")
    args = [*TINY, *PLATEAU, "data.train_size=64", "data.val_size=32", "optim.rule=paper"]
    ok(launch([*args, f"hydra.run.dir={tmp / 'straight'}"], nproc=0))
    ok(launch([*args, f"hydra.run.dir={tmp / 'resumed'}", "debug.max_steps=10"], nproc=0))  # in epoch 3
    checkpoint = next((tmp / "resumed" / "checkpoints").glob("step-00000010*")) / "tower0.pt"
    shard = torch.load(checkpoint, weights_only=True)
    ok(launch([*args, f"hydra.run.dir={tmp / 'resumed'}", "resume=true"], nproc=0))
    return tmp, shard


def test_plateau_drops_the_rate_inside_a_training_loop(paper_rule_runs):
    tmp = paper_rule_runs[0]
    for run in ("straight", "resumed"):
        rows = [json.loads(l) for l in (tmp / run / "metrics.jsonl").read_text().splitlines()]
        # epoch 1 sets the best; epochs 2 and 3 "do not improve" (threshold 1.0): each drops the
        # rate by 10 after it, and the next epoch trains at the lower rate
        assert [r["lr"] for r in rows] == pytest.approx([0.002, 0.002, 0.0002]), run


def test_paper_rule_trains_and_resumes_bit_for_bit_across_a_drop(paper_rule_runs):
    tmp, shard = paper_rule_runs
    assert "velocity" in next(iter(shard["optimizer"]["state"].values()))  # the paper's rule, saved
    assert shard["schedule"]["drops"] == 1
    straight, resumed = final_state(tmp / "straight"), final_state(tmp / "resumed")
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_experiment_paper_composes_with_the_papers_values():
    from hydra import compose, initialize_config_dir

    from alexnet_mp.config import check

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=paper", "data.root=/data/ilsvrc2012-256"])
    assert (cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (90, 128, 0.01, 0.9, 5e-4)
    assert (cfg.model.name, cfg.model.init, cfg.model.geometry, cfg.model.lrn) == ("full", "paper", "224", "paper")
    assert (cfg.model.pool, cfg.model.dropout, cfg.model.remove) == ("overlap", 0.5, None)
    assert (cfg.data.name, cfg.data.image_size, cfg.schedule.warmup_steps, cfg.schedule.factor) == ("prepared", 256, 0, 0.1)
    assert cfg.schedule.max_drops == 3 and cfg.optim.bias_decay is True and cfg.optim.bias_lr_mult == 1.0
    check(cfg)
