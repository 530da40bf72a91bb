"""What a run writes for people: metrics.jsonl, TensorBoard events and a learning-curve plot.

Only rank 0 writes (``enabled``); other ranks keep the history in memory so every
rank can build the same summary. Every file goes through :func:`alexnet_mp.io.atomic_write`
(metrics.jsonl is rewritten whole each epoch: a few rows), and a full disk under TensorBoard's
writer becomes the same one-line :class:`~alexnet_mp.io.DiskFull`.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

from alexnet_mp.parallel import ranks
from alexnet_mp.io import atomic_write, disk_full_error

__all__ = ["MetricsLog", "plot_learning_curves", "save_png"]


def _read_rows(path: Path, last_epoch: int) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a crash mid-append
                continue
            if row.get("epoch", last_epoch + 1) <= last_epoch:
                rows.append(row)
    return rows


class MetricsLog:
    def __init__(self, run_dir: Path, *, enabled: bool, last_epoch: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.run_dir, self.enabled = Path(run_dir), enabled
        # On resume keep the epochs the checkpoint had finished; later ones are re-run. Rank 0
        # reads and rewrites the file and hands the rows to the others, who never touch it.
        rows = _read_rows(self.path, last_epoch) if enabled else None
        self._rows: list[dict] = ranks.broadcast_object(rows) or []
        if enabled and self.path.is_file():
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self._rows))
        self._writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._writer = None

    @contextlib.contextmanager
    def _tensorboard(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            full = disk_full_error(err, self.run_dir / "tensorboard" / "events")
            if full is None:
                raise
            self._writer = None  # nothing more can be written there
            raise full from None

    def scalar(self, name: str, value: float, step: int) -> None:
        if self._writer is not None:
            with self._tensorboard():
                self._writer.add_scalar(name, value, step)

    def epoch(self, row: dict) -> None:
        self._rows.append(row)
        if not self.enabled:
            return
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self._rows))
        for key in ("train_loss", "val_top1_err", "val_top5_err", "lr", "images_per_s"):
            self.scalar(f"epoch/{key}", row[key], row["epoch"])
        if self._writer is not None:
            with self._tensorboard():
                self._writer.flush()
        plot_learning_curves(self._rows, self.run_dir / "learning_curves.png")

    def history(self) -> list[dict]:
        return list(self._rows)

    def close(self, plot: bool = True) -> None:
        if self._writer is not None:
            with self._tensorboard():
                self._writer.close()
        if plot and self.enabled and self._rows:
            plot_learning_curves(self._rows, self.run_dir / "learning_curves.png")


def plot_learning_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in rows], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    right.plot(epochs, [100 * r["val_top1_err"] for r in rows], marker="o", label="top-1")
    right.plot(epochs, [100 * r["val_top5_err"] for r in rows], marker="o", label="top-5")
    right.set(xlabel="epoch", ylabel="validation error (%)", title="Validation error (centre crop)")
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path, dpi=100)


def save_png(fig, path: Path, **savefig: object) -> str:
    """``fig`` (a matplotlib figure, closed after) as a PNG at ``path``: rendered in memory and
    written with :func:`alexnet_mp.io.atomic_write`, so a reader never sees half a file."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return str(path)
