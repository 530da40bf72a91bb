"""The paper's ablations as switches: each changes exactly what it names."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from alexnet_mp import build_model, count_parameters
from alexnet_mp.net.arch import feature_map_sizes
from alexnet_mp.train.optim import PlateauSchedule, build_optimizer, param_groups
from alexnet_mp.parallel.towers import parallelize, shard_state_dict
from helpers import ROOT, config_error, rel_diff
from distributed import run_ranks

FULL = 60_965_224
# Hand-computed from the table (spec, sec. 1): weights k*k*in*out/groups plus biases.
CONV3 = 3 * 3 * 256 * 384 + 384  # 885,120: reads both towers' 128 + 128 channels
CONV4 = 3 * 3 * 192 * 384 + 384  # 663,936: 2 groups of 192 -> 192
CONV5 = 3 * 3 * 192 * 256 + 256  # 442,624: 2 groups of 192 -> 128
FC6_AT_224 = 9216 * 4096 + 4096


def shapes(net):
    return {n: tuple(p.shape) for n, p in net.named_parameters()}


@pytest.mark.parametrize("kwargs", [dict(lrn="none"), dict(pool="2x2"), dict(dropout=0.0)])
def test_lrn_pool_and_dropout_switches_keep_every_parameter(kwargs):
    assert shapes(build_model("full", **kwargs)) == shapes(build_model("full"))


def test_no_conv4_removes_exactly_conv4():
    net = build_model("full", remove="conv4")
    assert count_parameters(net) == FULL - CONV4 == 60_301_288
    assert [l.name for l in net.spec.convs] == ["conv1", "conv2", "conv3", "conv5"]
    assert net.conv5.weight.shape == (256, 192, 3, 3) and net.conv5.groups == 2  # reads conv3, in its tower
    assert net.fc6.in_features == 9216


def test_no_conv3_moves_the_crossing_to_conv4():
    net = build_model("full", remove="conv3")
    # conv4 now reads conv2's 256 channels from both towers (the towers still meet once in the convs)
    assert net.conv4.weight.shape == (384, 256, 3, 3) and net.conv4.groups == 1
    assert count_parameters(net) == FULL - CONV3 - CONV4 + (3 * 3 * 256 * 384 + 384)


def test_no_conv5_moves_its_pool_to_conv4():
    net = build_model("full", remove="conv5")
    assert net.spec.convs[-1].name == "conv4" and net.spec.convs[-1].pool
    assert net.fc6.in_features == 384 * 6 * 6
    assert count_parameters(net) == FULL - CONV5 - FC6_AT_224 + (384 * 36 * 4096 + 4096)


def test_half_net_with_a_switch():
    half = build_model("half", remove="conv4")
    assert count_parameters(half) == count_parameters(build_model("half")) - (3 * 3 * 192 * 192 + 192)


def test_lrn_none_is_the_identity_where_lrn_was():
    seen = []
    net = build_model("full", lrn="none", input_size=67, lrn_function=lambda x, **_: seen.append(x) or x)
    net(torch.randn(1, 3, 67, 67))
    assert seen == [] and not any(l.lrn for l in net.spec.layers)
    assert [l.name for l in build_model("full").spec.layers if l.lrn] == ["conv1", "conv2"]


def test_pool_2x2_pools_with_2x2_windows_and_keeps_the_map_sides(monkeypatch):
    net = build_model("full", pool="2x2", input_size=224)
    assert net.spec.pool == (2, 2) and build_model("full").spec.pool == (3, 2)
    assert feature_map_sizes(224, "224", net.spec) == feature_map_sizes(224, "224") == {
        "conv1": 27, "conv2": 13, "conv3": 13, "conv4": 13, "conv5": 6}

    # the forward pools with that window: record what max_pool2d is called with
    calls = []
    real = F.max_pool2d
    monkeypatch.setattr(F, "max_pool2d", lambda x, *args: calls.append(args) or real(x, *args))
    for net, window in ((build_model("full", pool="2x2", input_size=67), (2, 2)), (build_model("full", input_size=67), (3, 2))):
        calls.clear()
        net(torch.randn(1, 3, 67, 67))
        assert calls == [window] * 3


def test_dropout_zero_draws_no_mask():
    net = build_model("full", dropout=0.0, input_size=67, num_classes=10).train()
    x = torch.randn(4, 3, 67, 67) * 50
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(2)
    assert torch.equal(a, net(x)) and net.fc6_dropout.p == 0.0


@pytest.mark.parametrize("override, words", [
    ("model.remove=conv2", "model.remove must be null, conv3, conv4 or conv5, not 'conv2'"),
    ("model.remove=fc6", "model.remove must be null, conv3, conv4 or conv5, not 'fc6'"),
    ("model.pool=3x3", "model.pool must be overlap or 2x2, not '3x3'"),
    ("model.dropout=1.0", "model.dropout must be a drop probability in [0, 1), not 1.0"),
    ("model.lrn=off", "model.lrn must be paper, cuda-convnet or none, not 'off'")])
def test_bad_switches_are_one_line_errors(override, words):
    # The switches are checked once, by the config's schema (alexnet_mp.config.train).
    line = config_error("config", override)
    assert words in line and "\n" not in line


def test_bias_options_make_their_groups():
    net = build_model("half", input_size=67, num_classes=10)
    assert len(param_groups(net, weight_decay=5e-4)) == 1  # the paper's: one group, as before
    weights, biases = param_groups(net, weight_decay=5e-4, bias_decay=False, bias_lr_mult=2.0)
    assert len(biases["params"]) == 8 and all(p.dim() == 1 for p in biases["params"])
    assert len(weights["params"]) == 8 and all(p.dim() > 1 for p in weights["params"])
    assert biases["weight_decay"] == 0.0 and weights["weight_decay"] == 5e-4
    opt = build_optimizer([weights, biases], lr=0.01, momentum=0.9, weight_decay=5e-4, rule="pytorch")
    schedule = PlateauSchedule(opt, patience=0)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02]
    schedule.step(0.5), schedule.step(0.6)  # no improvement: one drop
    schedule.begin_step(5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.002])


def _ablated_towers(rank: int) -> dict:
    torch.manual_seed(0)
    full = build_model("full", num_classes=10, input_size=96, lrn="none", pool="2x2", remove="conv3")
    tower = parallelize(full)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 96, 96, generator=g) * 50, torch.randint(0, 10, (4,), generator=g)
    torch.manual_seed(5)
    ref = full(x)
    torch.manual_seed(5)
    out = tower(x)
    F.cross_entropy(ref, y).backward()
    F.cross_entropy(out, y).backward()
    grads = shard_state_dict({n: p.grad for n, p in full.named_parameters()}, tower)
    return {"logits": rel_diff(out, ref), "grads": max(rel_diff(p.grad, grads[n]) for n, p in tower.named_parameters())}


def test_ablated_net_on_two_towers_equals_one_process():
    """No LRN, 2x2 pooling and conv3 removed (conv4 crosses instead), over two gloo processes."""
    for result in run_ranks(_ablated_towers):
        assert result["logits"] < 1e-6 and result["grads"] < 2e-6, result


@pytest.mark.parametrize("preset, key, value", [
    ("no_lrn", "model.lrn", "none"), ("pool_2x2", "model.pool", "2x2"), ("no_pca", "data.pca_sigma", 0.0),
    ("no_dropout", "model.dropout", 0.0), ("no_conv4", "model.remove", "conv4"), ("half", "model.name", "half"),
    ("caffe_bias", "optim.bias_lr_mult", 2.0)])
def test_presets_compose_and_set_what_they_name(preset, key, value):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        base = OmegaConf.to_container(compose("config"), resolve=True)
        cfg = OmegaConf.to_container(compose("config", overrides=[f"+ablation={preset}"]), resolve=True)
        paper = compose("config", overrides=["experiment=paper", f"+ablation={preset}", "data.root=/x"])
    assert OmegaConf.select(OmegaConf.create(cfg), key) == value
    assert OmegaConf.select(paper, key) == value and paper.model.init == "paper"

    def flat(d, prefix=""):
        return {f"{prefix}{k}": v for k0, v0 in d.items()
                for k, v in (flat(v0, f"{k0}.").items() if isinstance(v0, dict) else [(k0, v0)])}
    changed = {k for k in flat(cfg) if flat(cfg)[k] != flat(base).get(k)}
    expected = {"optim.bias_decay", "optim.bias_lr_mult"} if preset == "caffe_bias" else {key}
    assert changed == expected, changed


def test_a_checkpoint_from_another_ablation_does_not_resume(tmp_path):
    """The switches are part of the checkpoint's signature."""
    cmd = [sys.executable, str(ROOT / "launch" / "train.py"), "experiment=smoke", "epochs=1",
           "data.train_size=32", "data.val_size=16", f"hydra.run.dir={tmp_path}", "debug.max_steps=1"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    bad = subprocess.run(cmd + ["resume=true", "+ablation=no_lrn"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "another configuration (lrn='paper' here 'none')" in bad.stderr, bad.stderr[-2000:]
