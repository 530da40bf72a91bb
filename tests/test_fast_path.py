"""The fast data path end to end: a prepared dataset gives the training the same batches as
the image folder it came from, and two towers on it train the same net as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet_mp import data
from alexnet_mp.data import BatchAugment
from alexnet_mp.data import PreparedImages
from helpers import ROOT, error_line, final_state, launch, ok, rel_diff

pytestmark = pytest.mark.slow
SIZE = 77  # 67 px crops, the smallest the net takes


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, Path]:
    """A small image tree of JPEG photographs-like images, and its prepared copy."""
    root = tmp_path_factory.mktemp("photos")
    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 12), ("val", 4)):
        for c in ("ant", "bee", "cat"):
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                h, w = (int(v) for v in torch.randint(60, 140, (2,), generator=g))
                smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(h, w),
                                                         mode="bilinear")[0]
                pixels = (smooth * 255).round().byte().permute(1, 2, 0).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.jpg", quality=90)
    out = root.parent / f"{root.name}-prepared"
    proc = subprocess.run([sys.executable, "launch/prepare.py", f"data.root={root}", f"out={out}",
                           f"data.image_size={SIZE}", "progress=false"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, out


def test_prepared_and_imagefolder_give_the_same_training_batches(photos):
    root, prepared = photos
    folder, ready = data.ImageFolderImages(root, "train", SIZE), PreparedImages(prepared, "train", SIZE)
    assert len(folder) == len(ready) == 36 and folder.classes == ready.classes
    stats = ready.stats()
    augment = BatchAugment(stats, 67, seed=5)
    slow = data.BatchLoader(folder, 8, shuffle=True, seed=5, workers=0, drop_last=True)
    fast = data.BatchLoader(ready, 8, shuffle=True, seed=5, workers=2, drop_last=True)
    for epoch in (0, 3):
        pairs = list(zip(slow.epoch(epoch), fast.epoch(epoch)))
        assert len(pairs) == 4
        for a, b in pairs:
            assert torch.equal(a.labels, b.labels) and torch.equal(a.indices, b.indices)
            assert torch.equal(a.images, b.images)  # the same stored pixels
            x, y = augment.train(a.images, a.indices, epoch), augment.train(b.images, b.indices, epoch)
            assert torch.equal(x, y)


def test_two_towers_on_prepared_data_equal_one_process(photos, tmp_path):
    _, prepared = photos
    args = ["data=prepared", f"data.root={prepared}", f"data.image_size={SIZE}", "batch_size=12", "epochs=1",
            "progress=false", "optim.lr=0.0001", "debug.check_batches=true"]
    ok(launch([*args, f"hydra.run.dir={tmp_path / 'two'}"], nproc=2))
    ok(launch([*args, f"hydra.run.dir={tmp_path / 'one'}"], nproc=0))
    two, one = final_state(tmp_path / "two"), final_state(tmp_path / "one")
    for name, ref in one.items():
        assert rel_diff(two[name], ref) < 1e-5, name
    row = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 3 and row["val_images"] == 12 and 0.0 <= row["data_wait_share"] < 1.0
    # evaluation reads the same prepared data, ten-crop on the device
    proc = launch([f"checkpoint={tmp_path / 'two'}", f"output={tmp_path / 'eval.json'}", "progress=false"], nproc=0,
                  script="evaluate")
    ok(proc)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 12 and result["center"]["top1_err"] == pytest.approx(row["val_top1_err"])


def test_training_refuses_a_raw_tree_or_another_size(photos, tmp_path):
    root, prepared = photos
    line = error_line(launch(["data=prepared", f"data.root={root}", f"data.image_size={SIZE}", "progress=false",
                              f"hydra.run.dir={tmp_path / 'a'}"], nproc=0))
    assert "launch/prepare.py" in line
    line = error_line(launch(["data=prepared", f"data.root={prepared}", "data.image_size=99", "progress=false",
                              f"hydra.run.dir={tmp_path / 'b'}"], nproc=0))
    assert "99" in line and str(SIZE) in line
