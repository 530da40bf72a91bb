"""launch/get_data.py (``make data``) end to end, offline: a tiny archive in the official
CIFAR-10 format (pickled batches in cifar-10-batches-py/, tar.gz) served on 127.0.0.1 by
http.server (torchvision's downloader cannot read file:// URLs: urllib's file response has no
``length``) and fetched through torchvision's downloader, its md5 checked, and the image folders it writes read back
by the training data path."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import launch, ok, one_error_line, one_line

CLASSES = ["airplane", "automobile", "bird"]


def _batch(rng: np.random.Generator, per_class: int) -> dict:
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    rng.shuffle(labels)
    # Each image a flat colour per channel, its value coding the label, so pixels can be traced.
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return {"batch_label": "tiny", "labels": labels.tolist(), "data": data,
            "filenames": [f"img{i}.png" for i in range(len(labels))]}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A CIFAR-10-format archive (5 train batches of 2 images per class, a test batch of 1 per class)
    served over HTTP on 127.0.0.1: (url, md5, the batches)."""
    root = tmp_path_factory.mktemp("archive")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _batch(rng, 2) for i in range(1, 6)} | {"test_batch": _batch(rng, 1)}
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES, "num_cases_per_batch": 6}))
    path = root / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    handler = functools.partial(_Quiet, directory=str(root))
    server = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    yield url, hashlib.md5(path.read_bytes()).hexdigest(), batches
    server.shutdown()
    server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # the downloader's first request (for redirects) hangs up before the body: not an error


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _get(out: Path, archive: tuple, *args: str):
    url, md5, _ = archive
    return launch([f"out={out}", f"url={url}", f"md5={md5}", "progress=false", *args],
                  nproc=0, script="get_data", timeout=120)


def test_get_data_writes_the_official_splits_and_training_reads_them(tmp_path, archive):
    from alexnet_mp.data.images import ImageFolderImages

    out = tmp_path / "cifar10"
    text = ok(_get(out, archive))
    assert "train 30, val 3 (= test), test 3 images, 3 classes" in text, text
    train = ImageFolderImages(out, "train", 32)
    assert train.classes == sorted(CLASSES) and len(train) == 30
    # The 8th training image (batch 2, row 1) lies losslessly under its class as 00007.png.
    batch = archive[2]["data_batch_2"]
    want = batch["data"][1].reshape(3, 32, 32).transpose(1, 2, 0)
    got = np.asarray(Image.open(out / "train" / CLASSES[batch["labels"][1]] / "00007.png"))
    assert np.array_equal(got, want)
    assert (out / "val").resolve() == (out / "test").resolve() and len(ImageFolderImages(out, "val", 32)) == 3
    assert (out / "cifar-10-python.tar.gz").is_file() and not (out / ".get_data-partial").exists()


def test_get_data_holds_val_out_of_train_with_a_seed(tmp_path, archive):
    out = tmp_path / "held"
    text = ok(_get(out, archive, "val=1", "train_per_class=2", "seed=3", "format=jpeg", "keep_archive=false"))
    assert "train 6, val 3, test 3 images" in text, text
    train = {p.name for p in (out / "train").rglob("*.jpg")}
    val = {p.name for p in (out / "val").rglob("*.jpg")}
    assert len(train) == 6 and len(val) == 3 and not train & val
    assert {len(list((out / "val" / c).iterdir())) for c in CLASSES} == {1}
    assert not (out / "cifar-10-python.tar.gz").exists()


def test_get_data_bad_checksum_is_one_line_and_writes_nothing(tmp_path, archive):
    out = tmp_path / "bad"
    line = one_error_line(_get(out, archive, "md5=" + "0" * 32))
    assert "bad checksum" in line and archive[1] in line, line
    assert not any(out.iterdir())


def test_a_torchvision_cifar10_root_names_make_data(tmp_path):
    from alexnet_mp.data.images import ImageFolderImages
    from alexnet_mp.errors import UserError

    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
    with pytest.raises(UserError) as err:
        ImageFolderImages(tmp_path, "train", 32)
    line = one_line(err)
    assert "split folder" in line and "does not exist" in line and "make data" in line, line


def test_the_flat_ilsvrc2012_val_folder_names_the_docs_step(tmp_path):
    from alexnet_mp.data.images import ImageFolderImages
    from alexnet_mp.errors import UserError

    (tmp_path / "val").mkdir()
    for i in (1, 2):
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(UserError) as err:
        ImageFolderImages(tmp_path, "val", 32)
    line = one_line(err)
    assert "no class folders" in line and "ImageNet from the official archives" in line, line
    assert "ImageNet from the official archives" in (Path(__file__).parents[1] / "docs" / "data.md").read_text()
