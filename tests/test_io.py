"""alexnet_mp.io.publish: a temporary written in place becomes the file, durably, and is forgotten."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.format import open_memmap

from alexnet_mp import io


def test_publish_renames_a_memory_mapped_temporary_over_the_target(tmp_path):
    target = tmp_path / "images.npy"
    target.write_bytes(b"old")
    tmp = io.temporary_name(target)
    assert io.is_temporary(tmp) and tmp.parent == tmp_path
    array = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(2, 3))
    array[:] = 7
    array.flush()
    del array
    io.publish(tmp, target)
    assert not tmp.exists() and np.load(target).tolist() == [[7] * 3] * 2
    io.remove_temporaries()  # the published file is no longer this process's temporary
    assert target.is_file()


def test_publish_of_a_missing_temporary_raises_and_leaves_the_target(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"kept")
    with pytest.raises(FileNotFoundError):
        io.publish(io.temporary_name(target), target)
    assert target.read_bytes() == b"kept"
