"""The one-process nets built from the architecture table."""

from __future__ import annotations

import pytest
import torch

from alexnet_mp import build_model, count_parameters
from alexnet_mp.net.arch import LRN_OPTIONS, feature_map_sizes
from alexnet_mp.errors import UserError
from helpers import config_error

# Per-layer counts with biases, from the specification (sec. 1).
PAPER_COUNTS = {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936, "conv5": 442_624,
                "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}


def test_full_net_has_the_papers_parameter_count():
    net = build_model("full", num_classes=1000)
    assert count_parameters(net) == 60_965_224
    for layer, count in PAPER_COUNTS.items():
        assert sum(p.numel() for p in getattr(net, layer).parameters()) == count, layer


def test_half_net_halves_conv1_to_conv4_only():
    net = build_model("half", num_classes=1000)
    widths = [getattr(net, f"conv{i}").out_channels for i in range(1, 6)]
    assert widths == [48, 128, 192, 192, 256]
    assert [getattr(net, f"fc{i}").out_features for i in (6, 7, 8)] == [4096, 4096, 1000]
    assert all(getattr(net, f"conv{i}").groups == 1 for i in range(1, 6))
    assert 59_500_000 < count_parameters(net) < 60_000_000  # "about 59.8M" (spec, sec. 2)


def test_full_net_groups_only_the_layers_that_stay_in_their_tower():
    net = build_model("full")
    assert {f"conv{i}": getattr(net, f"conv{i}").groups for i in range(1, 6)} == {
        "conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}


@pytest.mark.parametrize(
    "size, geometry, fc6_in",
    [(67, "224", 256 * 1), (67, "227", 256 * 1), (96, "224", 256 * 4), (96, "227", 256 * 1),
     (224, "224", 9216), (224, "227", 256 * 25), (227, "227", 9216), (227, "224", 9216)],
)
@pytest.mark.parametrize("name", ["full", "half"])
def test_output_shapes_follow_the_input_size(name, size, geometry, fc6_in):
    net = build_model(name, num_classes=13, input_size=size, geometry=geometry).eval()
    assert net.fc6.in_features == fc6_in
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size)).shape == (2, 13)


def test_conv1_gives_55x55_from_224_with_cuda_convnet_padding_and_from_227_with_caffe():
    for size, geometry in ((224, "224"), (227, "227")):
        net = build_model("full", input_size=size, geometry=geometry)
        x = torch.nn.functional.pad(torch.zeros(1, 3, size, size), (0, net.pad, 0, net.pad))
        assert net.conv1(x).shape[-2:] == (55, 55)
    assert build_model("full", geometry="224").pad == 3 and build_model("full", geometry="227").pad == 0
    assert feature_map_sizes(224, "224")["conv5"] == 6


def _lrn_by_the_papers_equation(a: torch.Tensor, alpha: float, k: float, n: int, beta: float) -> torch.Tensor:
    # b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta   (sec. 3.3)
    b = torch.empty_like(a)
    channels = a.shape[1]
    for i in range(channels):
        lo, hi = max(0, i - n // 2), min(channels - 1, i + n // 2)
        b[:, i] = a[:, i] / (k + alpha * (a[:, lo : hi + 1] ** 2).sum(1)) ** beta
    return b


@pytest.mark.parametrize("option, printed_alpha", [("paper", 1e-4), ("cuda-convnet", 1e-4 / 5)])
def test_lrn_matches_the_papers_equation(option, printed_alpha):
    net = build_model("half", lrn=option, input_size=67)
    a = torch.rand(2, 12, 5, 5, dtype=torch.float64) * 60  # large enough that alpha matters
    expected = _lrn_by_the_papers_equation(a, printed_alpha, k=2.0, n=5, beta=0.75)
    torch.testing.assert_close(net._lrn(a), expected, rtol=1e-12, atol=0)
    assert LRN_OPTIONS[option]["alpha"] / LRN_OPTIONS[option]["size"] == pytest.approx(printed_alpha)


def test_lrn_window_never_crosses_the_tower_boundary():
    net = build_model("full", input_size=67)  # two towers in one process
    a = torch.rand(1, 8, 3, 3, dtype=torch.float64) * 60
    per_tower = torch.cat([_lrn_by_the_papers_equation(c, 1e-4, 2.0, 5, 0.75) for c in a.chunk(2, 1)], 1)
    torch.testing.assert_close(net._lrn(a), per_tower, rtol=1e-12, atol=0)
    assert not torch.allclose(net._lrn(a), _lrn_by_the_papers_equation(a, 1e-4, 2.0, 5, 0.75))


def test_initialisation_follows_section_5():
    torch.manual_seed(0)
    net = build_model("full")
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}
    for name in PAPER_COUNTS:
        layer = getattr(net, name)
        assert torch.all(layer.bias == (1.0 if name in ones else 0.0)), name
        assert layer.weight.mean().abs() < 1e-3 and abs(layer.weight.std().item() - 0.01) < 5e-4, name


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_dropout_mask_rate_and_scale_on_a_constant_input(p):
    """Independent of the weights: a constant input comes out 0 or 1/(1-p) at the rate p."""
    torch.manual_seed(0)
    net = build_model("full", num_classes=10, input_size=67, dropout=p)
    drop = net.fc6_dropout
    x = torch.full((256, drop.width), 3.0)
    out = drop(x)
    kept = out != 0
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 3.0 / (1 - p)))
    assert abs((~kept).float().mean().item() - p) < 0.01  # 2**20 draws: the standard error is < 5e-4
    drop.eval()
    assert torch.equal(drop(x), x)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = build_model("full", num_classes=10, input_size=67).eval()
    x = torch.randn(8, 3, 67, 67) * 50
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        net.train()
        torch.manual_seed(1)
        a = net(x)
        torch.manual_seed(2)
        assert not torch.equal(a, net(x))  # different masks, different outputs


@pytest.mark.parametrize("kwargs, words", [
    (dict(name="full", input_size=66), "too small"),
    (dict(name="quarter"), "unknown model"),
    (dict(name="full", num_classes=1), "num_classes"),  # a folder's class count is known only at run time
])
def test_bad_options_are_one_line_errors(kwargs, words):
    with pytest.raises(UserError, match=words) as err:
        build_model(**kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override, words", [
    ("model.geometry=225", "model.geometry must be 224 or 227, not '225'"),
    ("model.lrn=caffe", "model.lrn must be paper, cuda-convnet or none, not 'caffe'"),
    ("model=quarter", "no model called 'quarter': choose one of full, half (model=NAME)"),
    ("data.num_classes=1", "data.num_classes must be an integer >= 2, not 1"),
])
def test_bad_model_settings_are_one_line_errors(override, words):
    # A config's words are the schema's to check (alexnet_mp.config.train), once.
    line = config_error("config", override)
    assert words in line and "\n" not in line


def test_wrong_image_shape_is_a_clear_error():
    net = build_model("full", input_size=67)
    with pytest.raises(UserError, match="expected images of shape"):
        net(torch.zeros(1, 3, 64, 64))
