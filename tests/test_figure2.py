"""launch/figure2.py: Figure 2's bytes per crossing against the net's own tensor shapes, and one
traced training step of two real gloo processes with every crossing's collective in it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from alexnet_mp import build_model
from alexnet_mp.paper.figure2 import crossings, figure_spec, make_figure2
from helpers import ROOT

SIZE, BATCH, CLASSES = 67, 2, 7  # 7 classes: the logits split 4 + 3 and travel padded to 4
PAPER_CROSSINGS = ("conv3", "fc6", "fc7", "fc8")  # sec. 3.2: the layers that read both towers


def bytes_from_shapes(size: int, classes: int, remove: str | None = None) -> dict[str, int]:
    """Per image and tower, fp32: the larger tower's half of each crossing layer's input (and of
    the logits), read off a forward pass of the one-process net."""
    import torch

    net = build_model("full", num_classes=classes, input_size=size, remove=remove, init=None)
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].shape
        return hook

    for name, module in net.named_children():
        module.register_forward_pre_hook(record(name))
    with torch.no_grad():
        logits = net(torch.zeros(1, 3, size, size))
    crossing = [n for n in PAPER_CROSSINGS if n in seen]
    if remove == "conv3":  # sec. 7's ablation keeps the towers meeting at that depth: conv4 reads both
        crossing = ["conv4", *crossing]
    out = {n: math.ceil(seen[n][1] / 2) * math.prod(seen[n][2:]) * 4 for n in crossing}
    out["logits"] = math.ceil(logits.shape[1] / 2) * 4
    return out


def figure_bytes(remove: str | None, size: int, classes: int) -> dict[str, tuple[int, int]]:
    spec = figure_spec({"name": "full", "num_classes": classes, "remove": remove})
    return {c.name: (c.forward_bytes, c.backward_bytes) for c in crossings(spec, size)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("figure2")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "figure2.py"), f"output_dir={out}",
                           f"image_size={SIZE}", f"batch_size={BATCH}", f"model.num_classes={CLASSES}",
                           "warmup_steps=0", "device=cpu"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_trace_has_both_ranks_and_every_crossing(run):
    trace = json.loads((run / "step-timeline.json").read_text())
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(names) == [0, 1]
    expected = bytes_from_shapes(SIZE, CLASSES)
    for rank in (0, 1):
        mine = [e for e in events if e["ph"] == "X" and e["pid"] == rank]
        assert any(e["cat"] == "compute" for e in mine) and any(e["cat"] == "collective" for e in mine)
        moved = {(e["args"]["layer"], e["args"]["direction"]): e["args"]["bytes_per_image"]
                 for e in mine if e["cat"] == "collective"}
        assert {layer for layer, _ in moved} == set(expected) == {*PAPER_CROSSINGS, "logits"}
        for layer, nbytes in expected.items():
            assert moved[(layer, "forward")] == nbytes
            if layer != "logits":  # on gloo the input gradient is all-reduced: twice the reduce-scatter
                assert moved[(layer, "backward")] == 2 * nbytes
        assert ("logits", "backward") not in moved
        spans = [e for e in mine if e["cat"] == "collective"]
        waits = [e for e in mine if e["cat"] == "wait"]
        assert len(waits) == len(spans) == 9
    drawn = {c["name"]: (c["forward_bytes_per_image"], c["backward_bytes_per_image"])
             for c in trace["otherData"]["figure2_crossings"]}
    assert drawn == {n: (b, 0 if n == "logits" else b) for n, b in expected.items()}
    for png in ("figure2.png", "step-timeline.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("remove,size", [(None, 224), ("conv4", SIZE), ("conv5", SIZE), ("conv3", SIZE)])
def test_figure_bytes_follow_the_table(remove, size):
    expected = bytes_from_shapes(size, 1000, remove)
    assert figure_bytes(remove, size, 1000) == {n: (b, 0 if n == "logits" else b) for n, b in expected.items()}


def test_an_ablation_changes_the_picture(tmp_path):
    full, no_conv4, no_conv5 = (figure_bytes(r, SIZE, 1000) for r in (None, "conv4", "conv5"))
    assert no_conv4 == full  # conv4 reads only its own tower: the crossings stay
    assert no_conv5["fc6"] != full["fc6"]  # fc6 now reads conv4's 384 channels
    assert figure_bytes(None, 224, 1000)["conv3"] != full["conv3"]  # the map's side follows the image size
    pngs = []
    for remove in (None, "conv4"):
        cfg = OmegaConf.create({"model": {"name": "full", "num_classes": 1000, "remove": remove},
                                "output_dir": str(tmp_path / str(remove)), "image_size": SIZE, "timeline": False})
        pngs.append(Path(make_figure2(cfg)[0]).read_bytes())
    assert pngs[0] != pngs[1]
