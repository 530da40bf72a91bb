"""make reproduce: the sweep, its statistics and its resumption; the paper's Figures 3 and 4."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet_mp.use.evaluate import load_trained_model
from alexnet_mp.paper.figures34 import chromatic_share, kernel_grid, nearest_neighbours, tower_chromatic_shares
from alexnet_mp.paper.reproduce import CONFIGS, plan_runs, preset_keys, summarise
from alexnet_mp.paper.student_t import paired_difference, spread, t975
from helpers import ROOT, one_error_line


# -- statistics against hand computations -----------------------------------------------------

def test_spread_and_paired_interval_by_hand():
    a, b = {0: 0.30, 1: 0.32, 2: 0.35}, {0: 0.28, 1: 0.31, 2: 0.30, 7: 0.9}  # seed 7 has no pair
    # differences 0.02, 0.01, 0.05: mean 0.08/3, deviations -0.02/3, -0.05/3, 0.07/3
    mean = 0.08 / 3
    std = math.sqrt(((0.02 / 3) ** 2 + (0.05 / 3) ** 2 + (0.07 / 3) ** 2) / 2)
    half = 4.303 * std / math.sqrt(3)  # t(0.975, 2 degrees of freedom) = 4.303
    d = paired_difference(a, b)
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2]
    assert d["mean"] == pytest.approx(mean) and d["std"] == pytest.approx(std)
    assert (d["low"], d["high"]) == pytest.approx((mean - half, mean + half))
    assert d["resolved"] is False  # the interval [-0.025, 0.078] includes 0
    s = spread([0.30, 0.32, 0.35])
    assert s["mean"] == pytest.approx(0.97 / 3)
    assert s["std"] == pytest.approx(math.sqrt(((0.30 - 0.97 / 3) ** 2 + (0.32 - 0.97 / 3) ** 2 + (0.35 - 0.97 / 3) ** 2) / 2))


def test_a_clear_difference_is_resolved_and_one_seed_has_no_spread():
    d = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.61})  # 0.1, 0.1, 0.09
    assert d["resolved"] is True and d["low"] > 0
    one = paired_difference({0: 0.5}, {0: 0.4})
    assert one["mean"] == pytest.approx(0.1) and one["std"] is None and one["resolved"] is None
    assert spread([0.5])["std"] is None
    assert paired_difference({0: 0.5}, {1: 0.4})["n"] == 0


def test_t_quantiles():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert t975(200) == pytest.approx(1.97, abs=0.005) and t975(10**6) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        t975(0)


def test_plan_and_presets():
    runs = plan_runs(list(CONFIGS), [0, 1, 2], ablation_seeds=2)
    assert len(runs) == 3 * 2 + 2 * 5
    assert runs[:7] == [(c, 0) for c in CONFIGS] and runs[-2:] == [("full", 2), ("half", 2)]
    assert preset_keys("no_pca") == {"data.pca_sigma"} and preset_keys("no_conv4") == {"model.remove"}
    assert preset_keys("half") == set() and preset_keys("full") == set()
    for bad in (dict(configs=["full", "no_such"]), dict(configs=["half"]), dict(seeds=[0, 0])):
        args = {"configs": ["full"], "seeds": [0], "ablation_seeds": 1, **bad}
        with pytest.raises(Exception, match="unknown|must include full|distinct"):
            plan_runs(**args)


def test_summary_pairs_each_configuration_with_the_full_net_of_the_same_seed():
    def run(config, seed, err):
        return {"config": config, "seed": seed, "chromatic_share": [0.5, 0.6] if config == "full" else [0.7],
                "train_loss": 1.0, "train_seconds": 10.0,
                **{crop: {"top1_err": err, "top5_err": err / 2} for crop in ("center", "ten_crop")}}
    results = [run("full", 0, 0.40), run("full", 1, 0.44), run("half", 0, 0.43), run("half", 1, 0.46)]
    s = summarise(results, ["full", "half"])
    d = s["half"]["vs_full"]["ten_crop"]["top1_err"]
    assert d["mean"] == pytest.approx(0.025) and d["n"] == 2
    assert len(s["full"]["chromatic_share"]) == 2 and len(s["half"]["chromatic_share"]) == 1
    assert s["half"]["paper"]["top1_err"] == 0.017


# -- the chromatic-energy number and the neighbours ------------------------------------------------

def test_chromatic_share_of_grey_single_channel_and_opponent_kernels():
    g = torch.Generator().manual_seed(0)
    grey = torch.randn(5, 1, 11, 11, generator=g).expand(5, 3, 11, 11)
    assert chromatic_share(grey) == pytest.approx(0.0, abs=1e-12)
    red = torch.zeros(5, 3, 11, 11)
    red[:, 0] = torch.randn(5, 11, 11, generator=g)
    # one channel a, others 0: deviations 2a/3, -a/3, -a/3 -> (4 + 1 + 1) / 9 of a^2
    assert chromatic_share(red) == pytest.approx(2 / 3)
    opponent = torch.zeros(5, 3, 11, 11)
    opponent[:, 0] = torch.randn(5, 11, 11, generator=g)
    opponent[:, 1] = -opponent[:, 0]
    assert chromatic_share(opponent) == pytest.approx(1.0)  # the maximum: channels sum to zero
    assert chromatic_share(torch.randn(500, 3, 11, 11, generator=g)) == pytest.approx(2 / 3, abs=0.01)
    shares = tower_chromatic_shares(torch.cat([grey[:4], red[:4]]), towers=2)
    assert shares == pytest.approx([0.0, 2 / 3])


def test_nearest_neighbours_against_brute_force():
    g = torch.Generator().manual_seed(0)
    queries, pool = torch.randn(7, 16, generator=g), torch.randn(103, 16, generator=g)
    index, dist = nearest_neighbours(queries, pool, k=6, chunk=10)  # chunks smaller than the pool
    for q in range(7):
        d = [math.sqrt(sum((queries[q, j].item() - pool[i, j].item()) ** 2 for j in range(16))) for i in range(103)]
        brute = sorted(range(103), key=lambda i: d[i])[:6]
        assert index[q].tolist() == brute
        assert dist[q].tolist() == pytest.approx([d[i] for i in brute])


def test_kernel_grid_puts_tower_0_on_top():
    w = torch.zeros(96, 3, 11, 11)
    w[:48, 0] = 1.0  # tower 0 red
    w[48:, 2] = 1.0  # tower 1 blue
    grid = kernel_grid(w, towers=2)
    top, bottom = grid[: grid.shape[0] // 2], grid[grid.shape[0] // 2:]
    red = lambda part: ((part[..., 0] == 1) & (part[..., 1] == 0) & (part[..., 2] == 0)).sum().item()  # noqa: E731
    blue = lambda part: ((part[..., 2] == 1) & (part[..., 0] == 0) & (part[..., 1] == 0)).sum().item()  # noqa: E731
    assert red(top) == 48 * 121 and blue(top) == 0
    assert blue(bottom) == 48 * 121 and red(bottom) == 0


# -- the sweep end to end: stops, resumes, never re-runs a finished run ---------------------------

TINY = ["configs=[full,no_pca]", "seeds=[0]", "ablation_seeds=1", "epochs=1", "data.train_size=64",
        "data.val_size=32", "data.stats_samples=64", "parallel=2"]


def sweep(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch/reproduce.py", *TINY, f"sweep_dir={tmp / 'sweep'}", f"output_dir={tmp / 'out'}",
           *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    # 1. every run stops after 2 steps (of 4): the sweep reports the failures and keeps the checkpoints
    stopped = sweep(tmp, 'train_overrides=["progress=false","batch_size=16","debug.max_steps=2"]')
    # 2. the same sweep again: each run resumes from its checkpoint and finishes
    resumed = sweep(tmp, 'train_overrides=["progress=false","batch_size=16"]')
    stamps = {p: p.stat().st_mtime_ns for p in (tmp / "sweep" / "runs").glob("*/result.json")}
    # 3. and again: nothing is re-run
    again = sweep(tmp, 'train_overrides=["progress=false","batch_size=16"]')
    return tmp, stopped, resumed, again, stamps


def test_sweep_resumes_stopped_runs_and_never_reruns_finished_ones(swept):
    tmp, stopped, resumed, again, stamps = swept
    assert stopped.returncode == 1 and "2 run(s) failed" in stopped.stderr, stopped.stderr[-2000:]
    assert "training stopped before its last epoch" in stopped.stderr
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert sorted(p.parent.name for p in stamps) == ["full-seed0", "no_pca-seed0"]
    for name in ("full-seed0", "no_pca-seed0"):
        log = (tmp / "sweep" / "logs" / f"{name}.train.log").read_text()
        launches = [l for l in log.splitlines() if l.startswith("$ ")]
        assert len(launches) == 2 and "resume=true" in launches[1] and "resume=true" not in launches[0]
        metrics = (tmp / "sweep" / "runs" / name / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[-1])["step"] == 4  # 64 images / 16: the epoch was finished, not restarted
    assert again.returncode == 0 and "2 runs (2 already finished, kept)" in again.stdout + again.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    out = json.loads((tmp / "out" / "reproduce.json").read_text())
    assert [r["config"] for r in out["runs"]] == ["full", "no_pca"]
    prov = out["settings"]["provenance"]  # where the report came from: commit, versions, devices
    assert len(prov["git"]["commit"]) == 40 and prov["versions"]["torch"] and prov["devices"]
    assert (tmp / "out" / "reproduce.png").stat().st_size > 0
    md = (tmp / "out" / "reproduce.md").read_text()
    assert "| no_pca | 1 |" in md and "n/a (fewer than 2 paired seeds)" in md


def test_each_preset_sets_its_own_value_over_the_data_settings(swept):
    tmp = swept[0]
    log = (tmp / "sweep" / "logs" / "no_pca-seed0.train.log").read_text().splitlines()[0]
    assert "+ablation=no_pca" in log and "data.pca_sigma" not in log
    cfg = (tmp / "sweep" / "runs" / "no_pca-seed0" / "config.yaml").read_text()
    assert "pca_sigma: 0.0" in cfg


@torch.no_grad()
def test_ten_crop_error_against_a_hand_computation(swept):
    """launch/evaluate.py's ten-crop error equals: the 10 patches cut by hand, each softmax
    taken alone, averaged, then ranked."""
    tmp = swept[0]
    run = tmp / "sweep" / "runs" / "full-seed0"
    ev = json.loads((run / "eval.json").read_text())
    model, blob = load_trained_model(run)
    from alexnet_mp.data import SyntheticImages

    c = blob["data"]["config"]
    val = SyntheticImages("val", int(c["num_classes"]), int(c["val_size"]), int(c["image_size"]), int(c["seed"]))
    mean, crop = blob["stats"]["mean_image"].float(), blob["data"]["crop"]
    s = int(c["image_size"])
    wrong1 = wrong5 = 0
    for i in range(len(val)):
        img, label = val[i]
        x = img.float() - mean
        probs = []
        for top, left in ((0, 0), (0, s - crop), (s - crop, 0), (s - crop, s - crop), ((s - crop) // 2,) * 2):
            patch = x[:, top:top + crop, left:left + crop]
            for p in (patch, patch.flip(-1)):
                probs.append(model(p[None]).softmax(1)[0])
        avg = sum(probs) / 10
        ranked = avg.argsort(descending=True).tolist()
        wrong1 += ranked[0] != label
        wrong5 += label not in ranked[:5]
    assert ev["images"] == len(val)
    assert ev["ten_crop"]["top1_err"] == pytest.approx(wrong1 / len(val))
    assert ev["ten_crop"]["top5_err"] == pytest.approx(wrong5 / len(val))


def test_figures_draw_and_measure(swept):
    tmp = swept[0]
    run = tmp / "sweep" / "runs" / "full-seed0"
    proc = subprocess.run([sys.executable, "launch/figures.py", f"checkpoint={run}", "threads=1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((run / "figures" / "figures.json").read_text())
    for f in out["files"].values():
        assert Path(f).stat().st_size > 1000, f
    _, blob = load_trained_model(run)
    assert out["chromatic_share"] == pytest.approx(tower_chromatic_shares(blob["state_dict"]["conv1.weight"], 2))
    result = json.loads((run / "result.json").read_text())
    assert result["chromatic_share"] == pytest.approx(out["chromatic_share"])
    assert out["train_images_searched"] == 64
    # the neighbours of Figure 4 against a brute-force search of every training image's fc7
    model, blob = load_trained_model(run)
    from alexnet_mp.data import SyntheticImages

    c = blob["data"]["config"]
    sets = {split: SyntheticImages(split, int(c["num_classes"]), int(c[f"{split}_size"]), int(c["image_size"]),
                                   int(c["seed"])) for split in ("train", "val")}
    mean, crop, s = blob["stats"]["mean_image"].float(), blob["data"]["crop"], int(c["image_size"])
    o = (s - crop) // 2
    fc7 = lambda img: model((img.float() - mean)[None, :, o:o + crop, o:o + crop], until="fc7")[0]  # noqa: E731
    queries = torch.randperm(len(sets["val"]), generator=torch.Generator().manual_seed(0))[:13].tolist()[8:]
    with torch.no_grad():
        pool = torch.stack([fc7(sets["train"][i][0]) for i in range(64)])
        for q, row in zip(queries, out["neighbours"]):
            d = (pool - fc7(sets["val"][q][0])).norm(dim=1)
            assert row == d.argsort()[:6].tolist()
    assert "tower 0" in proc.stdout and "fc7 neighbours" in proc.stdout
    bad = subprocess.run([sys.executable, "launch/figures.py", f"checkpoint={tmp / 'nothing'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("alexnet_mp: error:") and len(bad.stderr.splitlines()) == 1


def test_a_run_that_ends_at_chance_is_named():
    def run(config, seed, err):
        return {"config": config, "seed": seed, "chromatic_share": [0.5], "train_loss": 2.3, "train_seconds": 1.0,
                "chance_top1_err": 0.9, **{crop: {"top1_err": err, "top5_err": 0.5} for crop in ("center", "ten_crop")}}
    s = summarise([run("full", 0, 0.6), run("no_lrn", 0, 0.9), run("no_lrn", 1, 0.7)], ["full", "no_lrn"])
    assert s["full"]["at_chance"] == [] and s["no_lrn"]["at_chance"] == [0]
    from alexnet_mp.paper.reproduce import markdown

    assert "ended at chance error (the net stopped learning; their differences measure a training failure): " \
           "no_lrn (seed 0)." in markdown(s, {"data": "d", "epochs": 1})


# -- the sweep through submitit: its local executor, and Slurm with a stand-in sbatch ----------------

@pytest.fixture(scope="module")
def submitit_swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("submitit")
    args = ["launcher=submitit_local", 'train_overrides=["progress=false","batch_size=16"]']
    first = sweep(tmp, *args)
    jobs = json.loads((tmp / "sweep" / "sweep-state.json").read_text())["runs"]
    again = sweep(tmp, *args)
    return tmp, first, jobs, again


def test_submitit_local_sweep_runs_each_job_once(submitit_swept):
    tmp, first, jobs, again = submitit_swept
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert sorted(jobs) == ["full-seed0", "no_pca-seed0"] and all(j["state"] == "finished" for j in jobs.values())
    for name, job in jobs.items():
        assert (tmp / "sweep" / "submitit" / job["job_id"]).is_dir()  # submitit's logs and pickles
        launch = (tmp / "sweep" / "logs" / f"{name}.train.log").read_text().splitlines()[0]
        assert "torch.distributed.run" in launch and "--nproc_per_node=1" in launch and "resume" not in launch
        assert (tmp / "sweep" / "runs" / name / "result.json").is_file()
    assert again.returncode == 0 and "2 runs (2 already finished, kept)" in again.stdout + again.stderr
    assert json.loads((tmp / "sweep" / "sweep-state.json").read_text())["runs"] == jobs  # nothing resubmitted
    out = json.loads((tmp / "out" / "reproduce.json").read_text())
    assert [r["config"] for r in out["runs"]] == ["full", "no_pca"]
    assert out["settings"]["launcher"] == "submitit_local" and out["settings"]["provenance"]["versions"]["torch"]


STAND_IN_SBATCH = """#!/bin/sh
# A stand-in for Slurm's sbatch: keeps the script it is given, answers a job id.
n=$(ls "{record}" | wc -l)
cp "$1" "{record}/job$n.sh"
echo "Submitted batch job $((4242 + n))"
"""


def test_slurm_jobs_through_a_stand_in_sbatch(tmp_path):
    import pickle

    from omegaconf import OmegaConf

    from alexnet_mp.paper.reproduce import Sweep

    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(STAND_IN_SBATCH.format(record=record))
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it; the jobs never start here
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    args = [sys.executable, "launch/reproduce.py", "configs=[full,half]", "seeds=[0]", "launcher=slurm",
            "slurm.wait=false", "slurm.partition=gpu", "slurm.account=lab", "slurm.time_min=600",
            'slurm.extra=["--qos=high"]', f"sweep_dir={tmp_path / 'sweep'}", f"output_dir={tmp_path / 'out'}"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    first = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    scripts = sorted(record.iterdir())
    assert len(scripts) == 2
    full, half = (p.read_text() for p in scripts)  # submitted in plan order: full, then half
    for script in (full, half):
        for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=600",
                     "#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --qos=high",
                     "#SBATCH --ntasks-per-node=1"):
            assert line in script.splitlines(), (line, script)
        assert "submitit" in script and str(tmp_path / "sweep" / "submitit") in script
    assert "#SBATCH --gpus-per-node=2" in full and "#SBATCH --cpus-per-task=16" in full
    assert "#SBATCH --gpus-per-node=1" in half and "#SBATCH --cpus-per-task=8" in half
    state = json.loads((tmp_path / "sweep" / "sweep-state.json").read_text())["runs"]
    assert {k: v["job_id"] for k, v in state.items()} == {"full-seed0": "4242", "half-seed0": "4243"}
    # the job each script runs: torchrun over the run's overrides, resuming from whatever it left
    for job_id, config, nproc in (("4242", "full", 2), ("4243", "half", 1)):
        with open(tmp_path / "sweep" / "submitit" / job_id / f"{job_id}_submitted.pkl", "rb") as f:
            job = pickle.load(f).function
        assert (job.config, job.seed) == (config, 0)
        cmd = Sweep(OmegaConf.create(job.cfg)).train_command(config, 0, job.data_args)
        assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        assert "seed=0" in cmd and ("+ablation=half" in cmd) == (config == "half") and not any("resume" in a for a in cmd)
        (tmp_path / "sweep" / "runs" / f"{config}-seed0" / "checkpoints" / "step-00000004").mkdir(parents=True)
        requeued = Sweep(OmegaConf.create(job.cfg)).train_command(config, 0, job.data_args)
        assert requeued == [*cmd, "resume=true"]  # a requeued job continues what its last attempt saved
    # again: the jobs are still queued (as far as anyone can tell), so nothing is submitted twice
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and len(list(record.iterdir())) == 2, again.stderr[-3000:]
    no_sbatch = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300,
                               env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"})
    lines = no_sbatch.stderr.strip().splitlines()
    assert no_sbatch.returncode == 1 and lines[-1].startswith("alexnet_mp: error: launcher=slurm but sbatch"), \
        no_sbatch.stderr[-2000:]


def test_a_bad_data_root_stops_the_sweep_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "launch/reproduce.py", "data=imagefolder", f"data.root={tmp_path / 'nowhere'}",
                           f"sweep_dir={tmp_path / 'sweep'}", f"output_dir={tmp_path / 'out'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_error_line(proc)
    assert "nowhere" in line and "does not exist" in line, line
    assert not (tmp_path / "out").exists()
