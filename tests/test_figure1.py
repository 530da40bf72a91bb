"""Figure 1 (alexnet_mp.paper.figure1): both readings of the net (their tables, initial scales and inputs
against the spec's numbers, their shapes against a hand-written reference), the rate search, the reading
of the epoch reaching 25%, and the command run tiny with both readings as rows of one folder."""

import json
import subprocess

import pytest
import torch
import torch.nn.functional as F

from alexnet_mp.config.figure1 import NETS
from alexnet_mp.errors import UserError
from alexnet_mp.paper.figure1 import DEFAULT_READING, READINGS, Images, Recipe, build_net, epoch_at_target, \
    fastest_rate, figure1, figure1_spec, map_sizes, ratio_summary, train_curve
from alexnet_mp.paper.figure1.training import optimizer
from helpers import ROOT, SHARED_DATA, command, compose_config, job_env


# -- the nets -----------------------------------------------------------------------------------------

# The spec's sec. 8 (../shared/reference/alexnet-2012.md, "Figure 1", corrected in turn 5), cuda-convnet's
# layers-80sec.cfg written out: (name, kind, width, kernel, pad, neuron, pool after it, initW).
LAYERS_80SEC = [("conv1", "conv", 32, 5, 2, True, "max", 0.0001), ("conv2", "conv", 32, 5, 2, True, "avg", 0.01),
                ("conv3", "conv", 64, 5, 2, True, "avg", 0.01), ("fc64", "fc", 64, 0, 0, True, False, 0.1),
                ("fc10", "fc", 10, 0, 0, False, False, 0.1)]


def _rows(spec):
    return [(l.name, l.kind, l.width, l.kernel, l.padding, l.relu, l.pool and l.pool_kind) for l in spec.layers]


def test_the_default_reading_is_layers_80sec_as_the_file_defines_it():
    """Reading (a), spec sec. 8: the file's five weight layers, its initW per layer, 0-255 input less the
    mean, epsB = 2 epsW (0.002 against 0.001)."""
    assert DEFAULT_READING == "layers80sec" == NETS[0] and tuple(READINGS) == NETS
    spec, reading = figure1_spec(), READINGS["layers80sec"]
    assert _rows(spec) == [row[:7] for row in LAYERS_80SEC]
    assert dict(reading.weight_std) == {row[0]: row[7] for row in LAYERS_80SEC}
    assert spec.pool == (3, 2) and spec.dropout_p == 0.0 and not any(l.lrn or l.dropout for l in spec.layers)
    assert map_sizes(spec, 32) == {"conv1": 16, "conv2": 8, "conv3": 4}  # cuda-convnet's pooled sizes
    assert reading.pixel_divisor == 1.0 and reading.bias_lr_scale == 0.002 / 0.001
    assert 0.001 in reading.rates  # the file's own epsW is searched
    # The weights drawn: each layer's sample std within 10% of initW (the smallest layer, fc10, has 640 weights).
    torch.manual_seed(0)
    net = build_net("layers80sec", "relu")
    for name, *_, init_w in LAYERS_80SEC:
        layer = getattr(net, name)
        assert layer.weight.std().item() == pytest.approx(init_w, rel=0.1) and not layer.bias.any()
    assert net.fc64.in_features == 64 * 4 * 4 and net.fc10.in_features == 64


def test_the_four_layer_reading_drops_fc64_and_starts_at_lecun():
    spec, reading = figure1_spec(reading="four_layer"), READINGS["four_layer"]
    assert _rows(spec) == [row[:7] for row in LAYERS_80SEC if row[0] != "fc64"]
    assert reading.weight_std is None and reading.pixel_divisor == 255.0 and reading.bias_lr_scale == 1.0
    torch.manual_seed(0)
    net = build_net("four_layer", "tanh")
    for layer in (net.conv1, net.conv2, net.conv3, net.fc10):  # N(0, 1/fan-in)
        assert layer.weight.std().item() == pytest.approx(layer.weight[0].numel() ** -0.5, rel=0.1)


def test_the_input_scale_is_the_readings():
    pixels = torch.tensor([[[[0, 255]]], [[[100, 55]]]], dtype=torch.uint8).expand(2, 3, 1, 2).contiguous()
    raw = Images(pixels, torch.tensor([0, 1]), READINGS["layers80sec"].pixel_divisor).batch(torch.tensor([0, 1]), False)
    unit = Images(pixels, torch.tensor([0, 1]), READINGS["four_layer"].pixel_divisor).batch(torch.tensor([0, 1]), False)
    torch.testing.assert_close(raw[0][:, 0, 0], torch.tensor([[-50.0, 100.0], [50.0, -100.0]]))
    torch.testing.assert_close(unit[0], raw[0] / 255)


@pytest.mark.parametrize("reading", sorted(READINGS))
@pytest.mark.parametrize("neuron, f", [("relu", torch.relu), ("tanh", torch.tanh)])
def test_the_net_computes_the_table(reading, neuron, f):
    """32x32 -> 10 logits, equal to the layers written out by hand with the same weights. conv1's neuron
    comes after its max-pool, as in the file (both neurons commute with a max)."""
    torch.manual_seed(0)
    net = build_net(reading, neuron)
    x = torch.randn(3, 3, 32, 32) * (255 if reading == "layers80sec" else 1)
    h = f(F.max_pool2d(net.conv1(x), 3, 2, ceil_mode=True))
    h = F.avg_pool2d(f(net.conv2(h)), 3, 2, ceil_mode=True)
    h = F.avg_pool2d(f(net.conv3(h)), 3, 2, ceil_mode=True).flatten(1)
    if reading == "layers80sec":
        h = f(net.fc64(h))
    want = net.fc10(h)
    torch.testing.assert_close(net(x), want)
    assert net(x).shape == (3, 10)


@pytest.mark.parametrize("reading, bias_scale", [("layers80sec", 2.0), ("four_layer", 1.0)])
def test_the_biases_learn_at_the_readings_multiple_of_the_rate(reading, bias_scale):
    """The first SGD step (momentum starts at zero): each weight moves by -rate x its gradient, each bias by
    -rate x the reading's multiple x its own (layers80sec: epsB / epsW = 2)."""
    torch.manual_seed(0)
    net = build_net(reading, "tanh", num_classes=2, input_size=8)
    x = torch.randn(4, 3, 8, 8) * 50
    F.cross_entropy(net(x), torch.tensor([0, 1, 0, 1])).backward()
    before = {k: (v.detach().clone(), v.grad.clone()) for k, v in net.named_parameters()}
    optimizer(net, 0.01, Recipe(reading=reading)).step()
    for name, p in net.named_parameters():
        value, grad = before[name]
        rate = 0.01 * (bias_scale if name.endswith("bias") else 1.0)
        torch.testing.assert_close(p.detach(), value - rate * grad)


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
    recipe = Recipe(batch_size=16, num_classes=4, channels_last=False, reading="four_layer")
    tried = {lr: train_curve(images, "relu", lr, 0, 2, recipe) for lr in (1e-5, 0.05, 1e6)}
    assert tried[1e6]["diverged"] and not tried[0.05]["diverged"]
    assert tried[0.05]["errors"][-1] < tried[1e-5]["errors"][-1]
    assert fastest_rate(tried) == 0.05


# -- the command --------------------------------------------------------------------------------------

def test_the_presets_compose():
    gpu = compose_config("figure1", ["figure1=gpu", "data.root=/x"])
    assert gpu.data.train_size == 0 and gpu.epochs >= 35 and len(gpu.seeds) >= 3 and gpu.search.rates is None
    cpu = compose_config("figure1", ["data.root=/x"])
    assert cpu.data.train_size > 0 and len(cpu.seeds) >= 3 and cpu.threads == 1 and cpu.net == DEFAULT_READING
    assert all(len(r.rates) > 1 for r in READINGS.values())  # search.rates null: each net searches its own grid


TINY = ["data.name=synthetic", "data.train_size=48", "data.image_size=16", "epochs=2", "seeds=[0,1]",
        "search.epochs=1", "batch_size=16"]


@pytest.fixture
def threads_kept():
    """figure1() sets torch's thread count as configured: give this test process its own back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _check_row(row, reading):
    grid = READINGS[reading].rates
    assert row["complete"] and row["provenance"]["git"]["commit"] and row["net"]["reading"] == reading
    for neuron in ("relu", "tanh"):
        n = row["neurons"][neuron]
        assert n["lr"] in grid and set(n["search"]) == {repr(r) for r in grid}
        assert set(n["seeds"]) == {"0", "1"} and all(len(s["errors"]) == 2 for s in n["seeds"].values())


def test_the_command_runs_both_readings_tiny_and_keeps_finished_runs(tmp_path, threads_kept):
    """The default net through the command, again (nothing retrained), then four_layer in the same folder:
    two rows side by side; a row of other settings is refused and nothing is lost."""
    cmd, env = command([*TINY, f"output_dir={tmp_path}"], nproc=0, script="figure1"), job_env()
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    doc = json.loads((tmp_path / "figure1.json").read_text())
    assert list(doc["rows"]) == ["layers80sec/48"] and doc["default_net"] == "layers80sec" and doc["complete"]
    _check_row(doc["rows"]["layers80sec/48"], "layers80sec")
    assert (tmp_path / "figure1.png").stat().st_size > 0 and "| relu |" in (tmp_path / "figure1.md").read_text()
    assert first.stdout.count("epoch 2/2") == 4  # a line per epoch
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "12 finished runs of layers80sec/48 kept" in again.stdout
    assert "epoch 1/" not in again.stdout
    doc = json.loads((tmp_path / "figure1.json").read_text())

    row = figure1(compose_config("figure1", [*TINY, "net=four_layer", "progress=false", f"output_dir={tmp_path}"]))
    both = json.loads((tmp_path / "figure1.json").read_text())
    assert list(both["rows"]) == ["layers80sec/48", "four_layer/48"] and both["rows"]["four_layer/48"] == row
    _check_row(row, "four_layer")
    assert both["rows"]["layers80sec/48"] == doc["rows"]["layers80sec/48"]  # the other row untouched
    md = (tmp_path / "figure1.md").read_text()
    assert "| `layers80sec` (default) | 48 of 48 |" in md and "| `four_layer` | 48 of 48 |" in md
    with pytest.raises(UserError, match="other settings"):  # runs of another recipe are never mixed in
        figure1(compose_config("figure1", [*TINY, "net=four_layer", "momentum=0.5", f"output_dir={tmp_path}"]))
    assert json.loads((tmp_path / "figure1.json").read_text()) == both  # nothing lost


def test_bad_lists_are_named_before_any_work(tmp_path):
    with pytest.raises(UserError, match=r"neurons must be .*sigmoid"):
        figure1(compose_config("figure1", [*TINY, "neurons=[relu,sigmoid]", f"output_dir={tmp_path}"]))
    with pytest.raises(UserError, match="data.root=PATH is needed"):
        figure1(compose_config("figure1", [f"output_dir={tmp_path}"]))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(not (SHARED_DATA / "cifar10-full" / "train").is_dir(), reason="needs ../shared/data/cifar10-full")
def test_the_command_reads_cifar10(tmp_path, threads_kept):
    result = figure1(compose_config("figure1", [f"data.root={SHARED_DATA / 'cifar10-full'}", "data.train_size=64",
                                                "epochs=1", "seeds=[0]", "search.rates=[0.001]", "neurons=[relu]",
                                                f"output_dir={tmp_path}", "progress=false"]))
    assert result["data"]["images"] == 64 and result["data"]["classes"] == 10 and result["data"]["of"] == 48000
    assert len(result["neurons"]["relu"]["seeds"]["0"]["errors"]) == 1 and result["ratio"] is None
    assert result["key"] == "layers80sec/64"
