"""FLOP counts against the specification, the 1-GPU-vs-2-GPU benchmark's result files, and
how bench-comm-wait judges its figure."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from alexnet_mp import build_model
from alexnet_mp.net.arch import full_spec
from alexnet_mp.job.cli import data_overrides
from alexnet_mp.errors import UserError
from alexnet_mp.net.flops import forward_flops, forward_macs, layer_macs, train_flops
from alexnet_mp.net.model import AlexNet
from alexnet_mp.paper.student_t import spread
from benchmarks.comm_wait.bench_comm_wait import judge
from benchmarks.one_vs_two import bench_1gpu_vs_2gpu as bench
from benchmarks.one_vs_two.configs import CONFIGS, DEVICES_OF, NAME, SUMMARY_KEYS
from benchmarks.one_vs_two.report import spread_text
from benchmarks.one_vs_two.timing_summary import exposed_waits, merge_rounds, summarise_time
from helpers import CONF, ROOT


def _tower(index: int, **kw) -> AlexNet:
    return AlexNet(full_spec(kw.pop("num_classes", 1000)), tower=(index, 2), init=None, **kw)


# -- FLOPs ------------------------------------------------------------------------------------------

def test_forward_macs_match_the_specification_at_224():
    full, half = build_model("full"), build_model("half")
    # Spec sec. 1 and 2: about 724M (full), 362M (a tower), 391M (the half net).
    assert forward_macs(full) == pytest.approx(724.3e6, rel=1e-3)
    assert forward_macs(half) == pytest.approx(391e6, rel=2e-3)
    for index in (0, 1):
        assert forward_macs(_tower(index)) == pytest.approx(362e6, rel=2e-3)
    # The towers split every layer's work, conv1 included (each its 48 kernels of the same image).
    assert forward_macs(_tower(0)) + forward_macs(_tower(1)) == forward_macs(full)
    # Layer by layer from the spec's table: output map x kernels x kernel volume; fc in x out.
    assert layer_macs(full) == {
        "conv1": 55 * 55 * 96 * 11 * 11 * 3, "conv2": 27 * 27 * 256 * 5 * 5 * 48,
        "conv3": 13 * 13 * 384 * 3 * 3 * 256, "conv4": 13 * 13 * 384 * 3 * 3 * 192,
        "conv5": 13 * 13 * 256 * 3 * 3 * 192, "fc6": 9216 * 4096, "fc7": 4096 * 4096, "fc8": 4096 * 1000}
    assert layer_macs(build_model("full", input_size=227, geometry="227")) == layer_macs(full)
    assert forward_flops(full) == 2 * forward_macs(full) and train_flops(full) == 3 * forward_flops(full)


@pytest.mark.parametrize("name, size, geometry", [("full", 67, "224"), ("half", 67, "224"), ("full", 96, "227"),
                                                  ("half", 100, "224")])
def test_forward_macs_equal_what_the_layers_compute(name, size, geometry):
    """Counted from shapes, checked against the output shapes an actual forward pass produces."""
    net = build_model(name, num_classes=10, input_size=size, geometry=geometry).eval()
    seen = {}

    def hook(module, _inputs, out):
        if isinstance(module, torch.nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            seen[module] = out[0].numel() * per_output
        else:
            seen[module] = module.in_features * module.out_features

    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    assert forward_macs(net) == sum(seen.values())


# -- the benchmark's results ------------------------------------------------------------------------

def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("bench", overrides=[f"output_dir={tmp_path / 'results'}", *overrides])


def _fake_run(errors: dict[str, tuple[float, float, float, float]]):
    """A stand-in for training + evaluation that writes the files the real entry points write."""

    def run(name: str, seed: int, cfg, run_dir: Path) -> dict:
        c1, c5, t1, t5 = errors[name]
        c1 += 0.01 * seed * (2 if name == "full-2dev" else 1)  # differences that vary over seeds
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({
            "val_top1_err": c1, "val_top5_err": c5, "images_per_s": 100.0 if name == "half-1dev" else 120.0,
            "seconds": 9.0, "final_model": str(run_dir / "model_final.pt")}))
        (run_dir / "eval.json").write_text(json.dumps({
            "center": {"top1_err": c1, "top5_err": c5}, "ten_crop": {"top1_err": t1, "top5_err": t5}, "images": 50}))
        return bench.read_run(run_dir)

    return run


def test_benchmark_writes_every_figure_on_a_tiny_configuration(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "train_and_evaluate",
                        _fake_run({"half-1dev": (0.40, 0.20, 0.38, 0.19), "full-2dev": (0.37, 0.18, 0.36, 0.17)}))
    cfg = _cfg(tmp_path, "device=cpu", "input_size=67", "batch=2", "warmup_steps=1", "timed_steps=1",
               "peak_matmul_size=64", "peak_matmul_seconds=0.01", "seeds=[0,1]")
    results, paths = bench.run_benchmark(cfg, tmp_path / "runs")

    assert {p.name for p in paths.values()} == {f"{NAME}.{e}" for e in ("json", "md", "png")}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads(paths["json"].read_text())
    assert on_disk["configurations"].keys() == set(CONFIGS)
    assert on_disk["environment"]["batch"] == 2 and on_disk["environment"]["torch"] == torch.__version__
    for key in ("device_names", "threads_per_device", "git_commit", "device_kind"):
        assert key in on_disk["environment"]
    assert on_disk["environment"]["device_kind"] == "cpu" and on_disk["environment"]["threads_per_device"] == 1

    for name, c in on_disk["configurations"].items():
        t = c["time"]
        assert t["batch"] == 2 and t["input_size"] == 67 and len(t["per_device"]) == DEVICES_OF[name]
        st = t["step_seconds"]
        assert 0 < st["min"] <= st["median"] <= st["max"]
        assert t["images_per_s"] == pytest.approx(2 / st["median"])
        assert 0 <= t["other_processes_cpu_share"] <= 1
        for d in t["per_device"]:
            assert d["peak_memory_bytes"] > 0 and d["peak_flops_per_s"] > 0 and 0 < d["mfu"]
            assert 0 < d["on_cpu_share"] <= 1.1  # one thread per device
            assert d["train_flops_per_image"] == 6 * d["forward_macs_per_image"]
            assert d["achieved_flops_per_s"] == pytest.approx(d["train_flops_per_image"] * 2 / st["median"])
    # The per-device work and parameters are the model's own.
    half, neighbour, full2, full1 = (on_disk["configurations"][n]["time"] for n in CONFIGS)
    assert neighbour["per_device"][0]["parameters"] == half["per_device"][0]["parameters"]
    assert half["per_device"][0]["forward_macs_per_image"] == forward_macs(build_model("half", num_classes=1000,
                                                                                       input_size=67))
    assert sum(d["parameters"] for d in full2["per_device"]) == full1["per_device"][0]["parameters"]
    assert [d["device"] for d in full2["per_device"]] != [full2["per_device"][0]["device"]] * 2  # own cores
    # Only the two-device run talks, and what it sends is counted by the benchmark's tracer (alexnet_mp.parallel.comm_trace).
    assert half["comm"] is None and full1["comm"] is None and neighbour["comm"] is None
    assert full2["comm"]["bytes_per_image_per_device"] > 0 and 0 <= full2["comm"]["share_of_step"] < 1
    comm = full2["comm"]
    assert 0 <= comm["exposed_mean_share_of_step"] <= comm["waited_share_of_step"] <= comm["share_of_step"] + 1e-9
    assert comm["exposed_mean_share_of_step"] <= comm["exposed_upper_share_of_step"] <= comm["exposed_share_of_step"]
    # gloo's threads' CPU (from /proc: nanoseconds in schedstat; without it, clock ticks, of which
    # a tiny step may take none).
    assert comm["helper_cpu_share_of_step"] > 0 or not os.path.exists("/proc/self/schedstat")
    assert {"conv3.forward", "fc6.forward", "fc7.forward", "fc8.forward", "logits.forward",
            "conv3.backward"} <= full2["per_device"][0]["comm_by_layer"].keys()

    r = on_disk["ratios"]
    assert r["full-2dev/half-1dev"]["step_time"] == pytest.approx(full2["step_seconds"]["median"]
                                                                  / half["step_seconds"]["median"])
    assert r["full-2dev/full-1dev"]["images_per_s"] == pytest.approx(full2["images_per_s"] / full1["images_per_s"])
    assert r["full-2dev/half-1dev"]["train_images_per_s"] == pytest.approx(1.2)
    assert r["full-2dev/half-1dev+neighbour"]["step_time"] == pytest.approx(full2["step_seconds"]["median"]
                                                                            / neighbour["step_seconds"]["median"])
    assert [t["limit"] for t in on_disk["targets"]] == [0.95, 0.53, 0.015]
    assert all(isinstance(t["met"], bool) and t["value"] is not None for t in on_disk["targets"])

    e = on_disk["configurations"]["half-1dev"]["error"]
    assert e["seeds"] == [0, 1] and e["center"]["top1_err"]["mean"] == pytest.approx(0.405)
    assert e["center"]["top1_err"]["std"] == pytest.approx(0.00707, rel=1e-2)
    d = on_disk["error_differences"]
    assert d["center"]["top1_err"]["per_seed"] == pytest.approx([-0.03, -0.02])
    # mean -0.025, std 0.00707 over 2 seeds: half-width t(0.975, 1) 12.706 x 0.00707 / sqrt(2) = 0.0635
    assert d["center"]["top1_err"]["low"] == pytest.approx(-0.0885, abs=1e-4)
    assert d["center"]["top1_err"]["high"] == pytest.approx(0.0385, abs=1e-4)
    assert d["center"]["top1_err"]["resolved"] is False
    assert d["ten_crop"]["top5_err"]["mean"] == pytest.approx(-0.02)
    assert d["paper"] == {"top1_err": -0.017, "top5_err": -0.012}
    assert on_disk["settings"]["speed"]["precision"] == "fp32" and on_disk["settings"]["overlap"] is True

    md = paths["md"].read_text()
    for text in (*CONFIGS, "full-2dev/half-1dev", "full-2dev/full-1dev", "-2.50 (0.71; 95% [-8.85, +3.85])",
                 "paper"):
        assert text in md


def test_skipped_parts_are_written_as_skipped(tmp_path):
    results, paths = bench.run_benchmark(_cfg(tmp_path, "skip_time=true", "skip_error=true"), tmp_path / "runs")
    assert all(c["time"] == {"skipped": "skip_time=true"} for c in results["configurations"].values())
    assert results["configurations"]["full-2dev"]["error"] == {"skipped": "skip_error=true"}
    assert results["ratios"]["full-2dev/half-1dev"] is None and results["error_differences"] is None
    assert all(t["met"] is None for t in results["targets"])
    assert all(p.is_file() for p in paths.values())


def test_read_run_rejects_incomplete_or_impossible_results(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"val_top1_err": 0.5}))
    with pytest.raises(UserError, match="lacks"):
        bench.read_run(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps(dict.fromkeys(SUMMARY_KEYS, 1.0)))
    (tmp_path / "eval.json").write_text(json.dumps({"center": {"top1_err": 42.0, "top5_err": 0.1},
                                                    "ten_crop": {"top1_err": 0.1, "top5_err": 0.1}, "images": 3}))
    with pytest.raises(UserError, match="fraction"):
        bench.read_run(tmp_path)


def test_the_trainer_gets_the_benchmarks_data_and_budget(tmp_path):
    cfg = _cfg(tmp_path, "data=imagefolder", "data.root=/data/my images", "epochs=3", "threads=1")
    cmd = bench.training_command("full-2dev", 5, 3, tmp_path / "run", cfg)
    assert "--nproc_per_node=2" in cmd and "model=full" in cmd and "seed=5" in cmd and "epochs=3" in cmd
    assert "data=imagefolder" in cmd and "data.root='/data/my images'" in cmd and "progress=false" in cmd
    assert "--nproc_per_node=1" in bench.training_command("half-1dev", 5, 3, tmp_path, cfg)
    assert "model=half" in bench.training_command("half-1dev", 5, 3, tmp_path, cfg)
    with pytest.raises(UserError, match="data.root"):
        data_overrides(_cfg(tmp_path, "data=imagefolder").data)


@pytest.mark.parametrize("data_args", [(), ("data=imagefolder", "data.root=/data/my images", "data.image_size=77")])
def test_the_trainer_and_evaluator_commands_compose_against_their_configs(tmp_path, data_args):
    from hydra import compose, initialize_config_dir

    cfg = _cfg(tmp_path, *data_args, "epochs=3")
    train = bench.training_command("full-2dev", 5, 3, tmp_path / "run", cfg)
    evaluate = bench.evaluate_command(str(tmp_path / "run" / "model_final.pt"), tmp_path / "run", cfg)
    script_at = lambda cmd, name: next(i for i, a in enumerate(cmd) if a.endswith(name))  # noqa: E731
    train_args = [a for a in train[script_at(train, "train.py") + 1:] if not a.startswith("hydra.")]
    eval_args = evaluate[script_at(evaluate, "evaluate.py") + 1:]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        trained = compose(config_name="config", overrides=train_args)
        evaluated = compose(config_name="evaluate", overrides=eval_args)
    assert trained.model.name == "full" and trained.seed == 5 and trained.epochs == 3
    assert evaluated.checkpoint.endswith("model_final.pt")
    assert evaluated.data.name == trained.data.name == cfg.data.name


def test_one_seed_has_no_spread_and_says_so():
    one, two = spread([0.25]), spread([0.25, 0.35])
    assert one["std"] is None and one["n"] == 1 and two["std"] == pytest.approx(0.0707, rel=1e-2)
    assert spread_text(None) == "n/a" and spread_text(0.0123) == "1.23%"
    assert spread_text(None, points=True) == "n/a"


def test_devices_n_times_the_half_net_replicas_against_the_tower_pair_replicas(tmp_path):
    # devices=2 on this 2-core machine: half-2dev is two data-parallel replicas of the half net
    # (DDP), full-2dev one pair; both through the trainer's placement, as on N devices. skip_time
    # skips the four rows of the paper's comparison, not the rows devices=N asks for.
    cfg = _cfg(tmp_path, "device=cpu", "input_size=67", "batch=4", "warmup_steps=1", "timed_steps=1",
               "peak_matmul_size=64", "peak_matmul_seconds=0.01", "skip_error=true", "skip_time=true", "devices=2")
    results, paths = bench.run_benchmark(cfg, tmp_path / "runs")
    scale = results["scale"]
    rows = scale["configurations"]
    assert scale["devices"] == 2 and set(rows) == {"half-2dev", "full-2dev"}
    assert (rows["half-2dev"]["replicas"], rows["half-2dev"]["towers"]) == (2, 1)
    assert (rows["full-2dev"]["replicas"], rows["full-2dev"]["towers"]) == (1, 2)
    assert all(len(r["per_device"]) == 2 and r["step_seconds"]["median"] > 0 for r in rows.values())
    assert rows["half-2dev"]["comm"] is None or rows["half-2dev"]["comm"]["bytes_per_image_per_device"] == 0
    assert "2 devices: the half net as 2 data-parallel replicas" in paths["md"].read_text()
    with pytest.raises(UserError, match="devices=3: give an even number"):
        bench.run_benchmark(_cfg(tmp_path, "device=cpu", "skip_error=true", "skip_time=true", "devices=3"),
                            tmp_path / "runs3")
    with pytest.raises(UserError, match="devices=64 needs 64 devices"):
        bench.run_benchmark(_cfg(tmp_path, "device=cpu", "skip_error=true", "skip_time=true", "devices=64"),
                            tmp_path / "runs64")


def _rank(rank: int, steps: list[float], macs: int = 1000) -> dict:
    """A timing process's report, as benchmarks/one_vs_two/timing.py writes it, with made-up figures."""
    return {"rank": rank, "device": f"cpu core {rank}", "core": rank, "threads": 1, "parameters": 10,
            "forward_macs_per_image": macs, "peak_flops_per_s": 1e9, "peak_flops_alone_per_s": 1e9,
            "transfer_bytes_per_s": None, "peak_memory_bytes": 100 + rank, "baseline_memory_bytes": 1,
            "memory_kind": "rss", "step_seconds": steps, "comm_seconds": [0.0] * len(steps),
            "waited_by_step": [{} for _ in steps], "timeline_by_step": None, "helper_cpu_by_step": None,
            "comm_bytes": 0, "comm_by_layer": {},
            "timed_wall_seconds": sum(steps), "timed_cpu_seconds": sum(steps), "machine_busy_seconds": None}


def test_rounds_take_each_ratio_within_a_round(tmp_path, monkeypatch):
    # The machine slows down between full-2dev and half-1dev in round 1 only: within a round the
    # ratio full-2dev/half-1dev is 18/10 = 1.8, then 18/20 = 0.9, then 9/10 = 0.9; median 0.9. Pooled
    # over every step (medians 18 and 10) it would read 1.8.
    step = {"half-1dev": [10, 20, 10], "half-1dev+neighbour": [11, 22, 11], "full-2dev": [18, 18, 9],
            "full-1dev": [17, 34, 17]}
    calls: dict[str, int] = {}

    def fake_time(name, cfg, plan, shape=None):
        calls[name] = calls.get(name, 0) + 1
        return [_rank(r, [step[name][calls[name] - 1]] * 2) for r in range(DEVICES_OF[name])]

    monkeypatch.setattr(bench, "time_configuration", fake_time)
    cfg = _cfg(tmp_path, "device=cpu", "skip_error=true", "rounds=3")
    results, paths = bench.run_benchmark(cfg, tmp_path / "runs")
    assert calls == {name: 3 for name in CONFIGS}  # every configuration once per round
    full = results["configurations"]["full-2dev"]["time"]
    assert full["round_medians"] == [18, 18, 9] and full["timed_steps"] == 6
    assert full["per_device"][0]["peak_memory_bytes"] == 100
    ratio = results["ratios"]["full-2dev/half-1dev"]
    assert ratio["per_round"] == pytest.approx([1.8, 0.9, 0.9]) and ratio["step_time"] == pytest.approx(0.9)
    assert results["ratios"]["full-2dev/full-1dev"]["step_time"] == pytest.approx(18 / 34)
    assert results["settings"]["rounds"] == 3
    assert "median of the rounds' 1.800, 0.900, 0.900" in paths["md"].read_text()
    with pytest.raises(UserError, match="rounds must be a positive integer, not 0"):
        bench.run_benchmark(_cfg(tmp_path, "device=cpu", "skip_error=true", "rounds=0"), tmp_path / "runs0")


def test_merge_rounds_pools_steps_and_collectives():
    one, two = _rank(0, [1.0, 2.0]), _rank(0, [3.0])
    one.update(comm_seconds=[0.1, 0.2], waited_by_step=[{"conv3.forward": 0.05}, {}], comm_bytes=100, transfer_bytes_per_s=2e9,
               comm_by_layer={"conv3.forward": {"bytes": 60, "seconds": 0.2, "waited_seconds": 0.05, "calls": 2}},
               peak_memory_bytes=500, baseline_memory_bytes=7)
    two.update(comm_seconds=[0.3], waited_by_step=[{"conv3.forward": 0.1}], comm_bytes=50, transfer_bytes_per_s=1e9,
               comm_by_layer={"conv3.forward": {"bytes": 30, "seconds": 0.3, "waited_seconds": 0.1, "calls": 1},
                              "fc6.forward": {"bytes": 5, "seconds": 0.01, "waited_seconds": 0.0, "calls": 1}},
               peak_memory_bytes=400, baseline_memory_bytes=9)
    (m,) = merge_rounds([[one], [two]])
    assert m["step_seconds"] == [1.0, 2.0, 3.0] and m["comm_seconds"] == [0.1, 0.2, 0.3]
    assert m["waited_by_step"] == [{"conv3.forward": 0.05}, {}, {"conv3.forward": 0.1}] and m["comm_bytes"] == 150
    assert m["timed_wall_seconds"] == 6.0 and m["machine_busy_seconds"] is None
    assert m["timeline_by_step"] is None  # no host timestamps in either round
    one["timeline_by_step"], two["timeline_by_step"] = [["a"], ["b"]], [["c"]]
    assert merge_rounds([[one], [two]])[0]["timeline_by_step"] == [["a"], ["b"], ["c"]]
    assert m["transfer_bytes_per_s"] == pytest.approx(1.5e9)
    assert (m["peak_memory_bytes"], m["baseline_memory_bytes"]) == (500, 7)  # one round's peak with its baseline
    assert m["comm_by_layer"]["conv3.forward"] == pytest.approx(
        {"bytes": 90, "seconds": 0.5, "waited_seconds": 0.15, "calls": 3})
    assert m["comm_by_layer"]["fc6.forward"]["calls"] == 1


def test_exposed_communication_is_the_wait_for_bytes_in_flight_not_for_the_other_tower():
    # (layer, direction, launch start, launch end, wait start, wait end), one clock for both towers.
    # Step 1, conv3: tower 0 launches at 0.0 and waits from 0.1; tower 1 launches only at 0.3, so
    # tower 0's wait until 0.3 is for tower 1's compute; from 0.3 to 0.5 both wait for the bytes.
    # Step 2: fc6 with the towers the other way round, then fc7 blocking on both (no wait before).
    timelines = {0: [[["conv3", "forward", 0.0, 0.01, 0.1, 0.5]],
                     [["fc6", "forward", 1.2, 1.21, 1.25, 1.3], ["fc7", "forward", 2.0, 2.0, 2.0, 2.1]]],
                 1: [[["conv3", "forward", 0.3, 0.31, 0.45, 0.5]],
                     [["fc6", "forward", 1.0, 1.0, 1.0, 1.3], ["fc7", "forward", 2.0, 2.0, 2.0, 2.1]]]}
    def comm_of(ranks):
        return summarise_time(ranks, batch=4, input_size=67)["comm"]

    ranks = []
    for rank in range(2):
        r = _rank(rank, [1.0, 2.0])
        waited = [{f"{e[0]}.{e[1]}": (e[3] - e[2]) + (e[5] - e[4]) for e in step} for step in timelines[rank]]
        r.update(timeline_by_step=timelines[rank], waited_by_step=waited, comm_seconds=[0.5, 0.4],
                 transfer_bytes_per_s=1e9, comm_bytes=64)
        ranks.append(r)
    step1 = ((0.01 + 0.2) + (0.01 + 0.05)) / 2
    step2 = ((0.01 + 0.05 + 0.1) + (0.1 + 0.1)) / 2  # tower 1 waited 0.2 s for tower 0 at fc6
    exposed = exposed_waits(ranks, towers=2)
    assert exposed["mean"] == pytest.approx([step1, step2])
    # The larger figure of the pair at each collective: tower 0 at conv3 and fc7, tower 1 at fc6.
    assert exposed["upper"] == pytest.approx([0.21, 0.1 + 0.1])
    assert exposed["by_collective"]["fc6.forward"] == pytest.approx({0: 0.06 / 2, 1: 0.1 / 2})
    assert comm_of(ranks)["exposed_mean_share_of_step"] == pytest.approx((step1 + step2) / 3)
    # gloo's threads: 0.02 and 0.03 s of CPU in step 1 on the two towers, 0.01 in step 2.
    for r, cpu in zip(ranks, ([0.02, 0.01], [0.03, 0.01])):
        r["helper_cpu_by_step"] = cpu
    comm = comm_of(ranks)
    bound = [0.21 + 0.03, 0.2 + 0.01]
    assert comm["exposed_seconds_by_step"] == pytest.approx(bound)
    assert comm["exposed_seconds_per_step"] == pytest.approx(sum(bound) / 2)
    assert comm["exposed_share_of_step"] == pytest.approx(sum(bound) / 3)
    assert comm["helper_cpu_share_of_step"] == pytest.approx(0.04 / 3)
    assert comm["waited_seconds_per_step"] == pytest.approx((0.41 + 0.16 + 0.06 + 0.4) / 4)
    assert comm["exposed_mean_share_of_step"] <= comm["exposed_upper_share_of_step"] <= comm["exposed_share_of_step"]
    # Two replicas of the pair: each pair's collectives are matched within the pair.
    other = [dict(r, rank=r["rank"] + 2) for r in ranks]
    assert exposed_waits(ranks + other, towers=2)["mean"] == pytest.approx([step1, step2])
    # Without host timestamps (CUDA events) exposed is not measured; mismatched collectives are an error.
    assert exposed_waits([dict(r, timeline_by_step=None) for r in ranks], towers=2) is None
    odd = dict(ranks[1], timeline_by_step=[timelines[1][0], timelines[1][1][:1]])
    with pytest.raises(RuntimeError, match="different collectives"):
        exposed_waits([ranks[0], odd], towers=2)


def test_comm_wait_is_met_when_every_towers_blocking_median_is_near_one():
    near = [{"blocking": [0.97, 1.0, 1.0], "overlapped": [0.2, 0.5, 0.9]}, {"blocking": [0.5, 0.99, 1.0], "overlapped": [0.4]}]
    judged = judge(near, tolerance=0.05)
    assert judged["met"] is True and judged["median_waited_over_total"]["blocking"] == [1.0, 0.99]
    assert judged["median_waited_over_total"]["overlapped"] == [0.5, 0.4] and judged["value"] == 0.99
    far = [near[0], {"blocking": [0.8, 0.9, 1.0], "overlapped": [0.4]}]  # one tower's median 0.9: missed
    assert judge(far, tolerance=0.05)["met"] is False and judge(far, tolerance=0.05)["value"] == 0.9


def test_the_device_check_says_which_parts_it_skips(tmp_path):
    # With its defaults it has no images (nothing outside the repository): the data part is skipped,
    # and the check names it (one line in its output, "skipped" in gpu-check.json and .md).
    from omegaconf import OmegaConf

    from benchmarks.gpu_check.gpu_check import skipped_parts
    from helpers import compose_config

    def skipped(*overrides: str) -> dict:
        return skipped_parts(OmegaConf.to_object(compose_config("gpu_check", list(overrides))))

    assert list(skipped()) == ["data"] and "no images= given" in skipped()["data"]
    assert skipped(f"images={tmp_path / 'none'}") == {"data": f"images={tmp_path / 'none'} is not a folder"}
    assert skipped(f"images={tmp_path}", "skip_two=true", "lrn_batch=0") == {"LRN": "lrn_batch=0",
                                                                               "two processes": "skip_two=true"}
