"""Every benchmark's result files: ``NAME.json`` (every figure), ``NAME.md`` (the report) and,
for a benchmark that draws one, ``NAME.png``, each written atomically (``alexnet_mp.io``) to
the output folder, so a run cut short leaves the previous complete file, never half of one."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

from alexnet_mp.io import atomic_write

__all__ = ["write_results"]


def write_results(output_dir: Path | str, name: str, results: dict, markdown: str,
                  plot: Callable[[dict, io.BytesIO], None] | None = None) -> dict[str, Path]:
    """``results`` as JSON, ``markdown`` as the report, and ``plot(results, file)``'s PNG; their paths by extension."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: output_dir / f"{name}.{ext}" for ext in ("json", "md", *(("png",) if plot else ()))}
    atomic_write(paths["json"], json.dumps(results, indent=1, default=str) + "\n")
    atomic_write(paths["md"], markdown)
    if plot:
        png = io.BytesIO()
        plot(results, png)
        atomic_write(paths["png"], png.getvalue())
    return paths
