"""The one way this project writes a file: atomically, durably, and a full disk as one line.

Every file a run, a prepare, an evaluation, a benchmark or a sweep leaves behind goes
through :func:`atomic_write`: the bytes go to a hidden temporary beside the target
(``.NAME.tmp-PID``), are flushed and fsynced, and the temporary is renamed over the
target, so a reader sees the old file or the new one, never half of one. When the write
fails, the temporary is removed. A full disk or quota (``ENOSPC``, ``EDQUOT``) or a file
size limit (``EFBIG``) becomes a :class:`DiskFull`, a :class:`~alexnet_mp.errors.UserError`
whose one line names the path, the bytes it needed and the bytes free.

Objects are serialised in memory before the write (:func:`torch_bytes`): ``torch.save``
into a file turns a write error into a ``RuntimeError`` from its C++ writer, while a
plain ``write`` keeps the ``OSError`` and its errno.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Any

from alexnet_mp.errors import UserError

__all__ = ["DiskFull", "atomic_write", "check_not_a_folder", "check_output_path", "atomic_save", "torch_bytes",
           "fsync_dir", "temporary_name", "is_temporary", "remove", "remove_temporaries", "disk_full_error",
           "human_bytes", "publish"]

_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EFBIG: "file too large for this filesystem or limit"}

# This process's temporaries, removed by remove_temporaries() when it is terminated.
_ACTIVE: set[Path] = set()


class DiskFull(UserError):
    """A write that failed for lack of space; its message names the path, the need and what is free."""


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(err: OSError, path: Path, needed: int | None = None) -> DiskFull | None:
    """The one-line error for a full disk, quota or size limit while writing ``path``, else None."""
    if err.errno not in _DISK_FULL:
        return None
    path = Path(path)
    free = _free_bytes(path.parent)
    need = f"needed {human_bytes(needed)}" if needed is not None else "needed more space"
    have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    return DiskFull(f"{_DISK_FULL[err.errno]} while writing {path} ({need}, {have}); the partial file was "
                    f"removed and what was saved before is kept: free some space and re-run the same command")


def check_not_a_folder(path: Path) -> Path:
    """``path``, or a one-line error when it is a folder: an output file named by the user is
    checked before the work whose result it would hold (a rename over a folder fails)."""
    if Path(path).is_dir():
        raise UserError(f"cannot write {path}: it is a folder; name a file (e.g. {Path(path) / 'NAME'})")
    return Path(path)


def check_output_path(path: Path) -> Path:
    """``path`` if its folder exists and can be written and it is no folder itself, else a
    one-line error (before any work)."""
    path = check_not_a_folder(Path(path))
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        above = next((p for p in folder.parents if p.exists()), None) if not folder.exists() else folder
        if above is not None and not above.is_dir():
            raise UserError(f"cannot write {path}: {above} is a file, not a folder")
        raise UserError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: the folder {folder} is not writable")
    return path


def temporary_name(path: Path, tag: str = "") -> Path:
    """A hidden temporary beside ``path`` with this process's id; registered until renamed or removed."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}{tag}")
    _ACTIVE.add(tmp)
    return tmp


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and ".tmp-" in path.name


def done_with(*paths: Path) -> None:
    for p in paths:
        _ACTIVE.discard(p)


def remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass
        _ACTIVE.discard(p)


def remove_temporaries() -> None:
    """Remove every temporary this process still has open (on a signal or before exiting)."""
    remove(*list(_ACTIVE))


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str) -> None:
    """``data`` to a temporary beside ``path``, fsynced, renamed over ``path``; the folder fsynced.

    A full disk raises :class:`DiskFull` with the temporary removed and ``path`` untouched.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        remove(tmp)
        raise disk_full_error(err, path, len(payload)) or err
    except BaseException:
        remove(tmp)
        raise
    done_with(tmp)
    fsync_dir(path.parent)


def publish(tmp: Path, path: Path) -> None:
    """Make ``tmp``, a :func:`temporary_name` written in place (a memory map, a stream of
    records), the file ``path``: fsync it, rename it over ``path`` and forget it.

    For files too large to hold in memory for :func:`atomic_write`. The writer turns its
    own ``OSError`` into :func:`disk_full_error` and removes ``tmp`` on failure; fsyncing
    the folder (:func:`fsync_dir`) is left to the caller, once for all the files it renames.
    """
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    done_with(tmp)


def torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` written with :func:`atomic_write` (load it with ``weights_only=True``)."""
    atomic_write(path, torch_bytes(obj))
