"""model=one_tower: the one-column net of 2014, and torchvision's alexnet through it."""

import pytest
import torch

from alexnet_mp.net.arch import feature_map_sizes, one_tower_spec
from alexnet_mp.net.model import build_model, count_parameters
from alexnet_mp.net.torchvision_keys import from_torchvision, to_torchvision

torchvision = pytest.importorskip("torchvision")


def test_one_tower_is_the_2014_column():
    spec = one_tower_spec(1000)
    assert [l.width for l in spec.convs] == [64, 192, 384, 256, 256]
    assert [l.width for l in spec.fcs] == [4096, 4096, 1000]
    assert [l.name for l in spec.layers if l.lrn] == ["conv1", "conv2"]
    assert all(l.crosses for l in spec.layers[1:])  # one column: every layer dense
    assert feature_map_sizes(224, "224", spec)["conv5"] == 6  # cuda-convnet2's 224 px crops


def test_torchvision_alexnet_computes_the_same_logits_from_our_state_dict():
    torch.manual_seed(0)
    ours = build_model("one_tower", lrn="none", geometry="torchvision", init="he").eval()
    theirs = torchvision.models.alexnet(weights=None).eval()
    theirs.load_state_dict(to_torchvision(ours.state_dict()))
    assert count_parameters(ours) == count_parameters(theirs)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        mine, tv = ours(x), theirs(x)
    assert mine.abs().max() > 0
    torch.testing.assert_close(mine, tv, rtol=1e-5, atol=1e-5 * float(tv.abs().max()))
    back = from_torchvision(theirs.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())


def test_torchvision_weights_as_a_model_file_compute_torchvisions_logits_on_its_input(tmp_path):
    from alexnet_mp.use.evaluate import load_trained_model
    from alexnet_mp.use.torchvision_weights import IMAGENET_MEAN, IMAGENET_STD, write_model_file
    torch.manual_seed(0)
    theirs = torchvision.models.alexnet(weights=None, num_classes=5).eval()
    path = write_model_file(theirs.state_dict(), list("abcde"), tmp_path / "tv.pt")
    ours, blob = load_trained_model(path)
    pixels = torch.rand(2, 3, 224, 224) * 255  # 0..255, as the data pipeline gives them
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tv = theirs((pixels / 255 - mean) / std)
        mine = ours(pixels - blob["stats"]["mean_image"][:, :224, :224])
    torch.testing.assert_close(mine, tv, rtol=1e-4, atol=1e-4 * float(tv.abs().max()))
