"""Figure 1 (alexnet_mp.paper.figure1): the four-layer net's table and shapes against a hand-written
reference, the rate search, the reading of the epoch reaching 25%, and the command run tiny."""

import json
import subprocess

import pytest
import torch
import torch.nn.functional as F

from alexnet_mp.errors import UserError
from alexnet_mp.paper.figure1 import Figure1Net, Images, Recipe, epoch_at_target, fastest_rate, figure1, figure1_spec, \
    map_sizes, ratio_summary, train_curve
from helpers import ROOT, SHARED_DATA, command, compose_config, job_env


# -- the net ------------------------------------------------------------------------------------------

def test_the_table_is_cuda_convnets_80sec_net():
    spec = figure1_spec()
    rows = [(l.name, l.kind, l.width, l.kernel, l.padding, l.relu, l.pool and l.pool_kind) for l in spec.layers]
    assert rows == [("conv1", "conv", 32, 5, 2, True, "max"), ("conv2", "conv", 32, 5, 2, True, "avg"),
                    ("conv3", "conv", 64, 5, 2, True, "avg"), ("fc10", "fc", 10, 0, 0, False, False)]
    assert spec.pool == (3, 2) and spec.dropout_p == 0.0 and not any(l.lrn or l.dropout for l in spec.layers)
    assert map_sizes(spec, 32) == {"conv1": 16, "conv2": 8, "conv3": 4}  # cuda-convnet's pooled sizes


@pytest.mark.parametrize("neuron, f", [("relu", torch.relu), ("tanh", torch.tanh)])
def test_the_net_computes_the_table(neuron, f):
    """32x32 -> 10 logits, equal to the layers written out by hand with the same weights."""
    torch.manual_seed(0)
    net = Figure1Net(figure1_spec(), neuron)
    x = torch.randn(3, 3, 32, 32)
    h = F.max_pool2d(f(net.conv1(x)), 3, 2, ceil_mode=True)
    h = F.avg_pool2d(f(net.conv2(h)), 3, 2, ceil_mode=True)
    h = F.avg_pool2d(f(net.conv3(h)), 3, 2, ceil_mode=True)
    want = net.fc10(h.flatten(1))
    assert net.fc10.in_features == 64 * 4 * 4
    torch.testing.assert_close(net(x), want)
    assert net(x).shape == (3, 10)


# -- reading the curves -------------------------------------------------------------------------------

def test_the_epoch_reaching_the_target_is_read_from_the_curve():
    assert epoch_at_target([0.8, 0.5, 0.3, 0.2, 0.1]) == {"first_epoch": 4, "interpolated": pytest.approx(3.5)}
    assert epoch_at_target([0.6, 0.25, 0.1]) == {"first_epoch": 2, "interpolated": pytest.approx(2.0)}
    # Before epoch 1 the error is chance (0.9 by default): 0.65 of the way down to 0.2 in epoch 1.
    assert epoch_at_target([0.2])["interpolated"] == pytest.approx(0.65 / 0.7)
    assert epoch_at_target([0.8, 0.5, 0.26]) == {"first_epoch": None, "interpolated": None}
    assert epoch_at_target([]) == {"first_epoch": None, "interpolated": None}
    assert epoch_at_target([0.5, 0.4], target=0.45)["first_epoch"] == 2


def test_the_ratio_over_seeds_and_its_lower_bounds():
    r = ratio_summary({0: 12.0, 1: None, 2: 9.0}, {0: 3.0, 1: 4.0, 2: None}, epochs=20)
    assert r["seeds"] == [0, 1] and r["per_seed"] == {0: 4.0} and r["lower_bounds"] == {1: 5.0} and r["at_least"]
    assert r["spread"]["n"] == 2 and r["spread"]["mean"] == pytest.approx(4.5)
    assert ratio_summary({0: None}, {0: None}, epochs=5)["spread"] is None


def test_the_search_ranks_by_the_last_error_diverged_last():
    run = lambda errors, diverged=False: {"errors": errors, "diverged": diverged}  # noqa: E731
    assert fastest_rate({0.01: run([0.7, 0.5]), 0.1: run([0.6, 0.4]), 1.0: run([0.3], True)}) == 0.1
    assert fastest_rate({0.1: run([0.5]), 0.01: run([0.5])}) == 0.01  # a tie: the smaller rate
    assert fastest_rate({0.1: run([]), 0.3: run([0.9])}) == 0.3


def test_the_search_picks_the_rate_that_trains_fastest():
    """On an easy task (each class one colour), a rate too small barely moves in two epochs and
    one far too large diverges: the search picks the one in between."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 4
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], dtype=torch.float32)
    pixels = (colours[labels][:, :, None, None] + 20 * torch.randn(64, 3, 8, 8, generator=g)).clamp(0, 255)
    images = Images(pixels.to(torch.uint8), labels)
    recipe = Recipe(batch_size=16, num_classes=4, channels_last=False)
    tried = {lr: train_curve(images, "relu", lr, 0, 2, recipe) for lr in (1e-5, 0.05, 1e6)}
    assert tried[1e6]["diverged"] and not tried[0.05]["diverged"]
    assert tried[0.05]["errors"][-1] < tried[1e-5]["errors"][-1]
    assert fastest_rate(tried) == 0.05


# -- the command --------------------------------------------------------------------------------------

def test_the_presets_compose():
    gpu = compose_config("figure1", ["figure1=gpu", "data.root=/x"])
    assert gpu.data.train_size == 0 and gpu.epochs >= 35 and len(gpu.seeds) >= 3 and len(gpu.search.rates) > 1
    cpu = compose_config("figure1", ["data.root=/x"])
    assert cpu.data.train_size > 0 and len(cpu.seeds) >= 3 and cpu.threads == 1


TINY = ["data.name=synthetic", "data.train_size=48", "data.image_size=16", "epochs=2", "seeds=[0,1]",
        "search.rates=[0.01,0.1]", "search.epochs=1", "batch_size=16"]


@pytest.fixture
def threads_kept():
    """figure1() sets torch's thread count as configured: give this test process its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_command_runs_tiny_and_keeps_finished_runs(tmp_path, threads_kept):
    cmd, env = command([*TINY, f"output_dir={tmp_path}"], nproc=0, script="figure1"), job_env()
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    result = json.loads((tmp_path / "figure1.json").read_text())
    assert (tmp_path / "figure1.png").stat().st_size > 0 and "| relu |" in (tmp_path / "figure1.md").read_text()
    assert result["complete"] and result["provenance"]["git"]["commit"]
    for neuron in ("relu", "tanh"):
        n = result["neurons"][neuron]
        assert n["lr"] in (0.01, 0.1) and set(n["search"]) == {"0.01", "0.1"}
        assert set(n["seeds"]) == {"0", "1"} and all(len(s["errors"]) == 2 for s in n["seeds"].values())
    assert first.stdout.count("epoch 2/2") == 4  # a line per epoch
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "8 finished runs kept" in again.stdout and "epoch 1/" not in again.stdout
    with pytest.raises(UserError, match="other settings"):  # runs of another recipe are never mixed in
        figure1(compose_config("figure1", [*TINY, "momentum=0.5", f"output_dir={tmp_path}"]))
    assert json.loads((tmp_path / "figure1.json").read_text())["runs"] == result["runs"]  # nothing lost


def test_bad_lists_are_named_before_any_work(tmp_path):
    with pytest.raises(UserError, match=r"neurons must be .*sigmoid"):
        figure1(compose_config("figure1", [*TINY, "neurons=[relu,sigmoid]", f"output_dir={tmp_path}"]))
    with pytest.raises(UserError, match="data.root=PATH is needed"):
        figure1(compose_config("figure1", [f"output_dir={tmp_path}"]))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-full" / "train").is_dir(), reason="needs ../shared/data/cifar10-full")
def test_the_command_reads_cifar10(tmp_path, threads_kept):
    result = figure1(compose_config("figure1", [f"data.root={SHARED_DATA / 'cifar10-full'}", "data.train_size=64",
                                                "epochs=1", "seeds=[0]", "search.rates=[0.01]", "neurons=[relu]",
                                                f"output_dir={tmp_path}", "progress=false"]))
    assert result["data"]["images"] == 64 and result["data"]["classes"] == 10 and result["data"]["of"] == 48000
    assert len(result["neurons"]["relu"]["seeds"]["0"]["errors"]) == 1 and result["ratio"] is None
