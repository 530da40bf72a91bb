"""The device check's report: the versions of the GPU stack, and every part's figures
(two processes, step times, LRN, data) as ``gpu-check.md``, each figure beside its target."""

from __future__ import annotations

import torch

__all__ = ["versions", "markdown"]


def versions() -> dict:
    """torch's, CUDA's, cuDNN's, NCCL's and Triton's versions on this machine."""
    from alexnet_mp.parallel.placement import nccl_version

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    nccl = nccl_version() if torch.cuda.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "nccl": ".".join(map(str, nccl)) if nccl else None, "triton": triton_version}


def _compiled(row: dict) -> str:
    return str(row.get("compile_mode", "default")) if row["compile"] else "False"


def markdown(r: dict) -> str:
    """The device check's results as Markdown, part by part."""
    v = r.get("versions", {})
    lines = ["# gpu-check", "", f"{r['device']}, torch {r['torch']} (CUDA {v.get('cuda')}, cuDNN {v.get('cudnn')}, "
             f"NCCL {v.get('nccl')}, Triton {v.get('triton')}), {r['created']}; TF32 {r['tf32']}.", ""]
    lines += _two_processes(r.get("two_processes") or {}) + _step_table(r["steps"]) + _targets(r) + _lrn(r)
    d = r.get("data")
    if d:
        lines += ["", f"Data: the whole net ({d['precision']}, batch {d['batch']}) fed by the prepared loader "
                      f"({d['workers']} workers) at {d['loader_images_per_s']:.0f} images/s against "
                      f"{d['memory_images_per_s']:.0f} from GPU memory: ratio {d['ratio']:.3f} (target >= 0.9)."]
    if r.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{part} ({why})" for part, why in r["skipped"].items()) + "."]
    return "\n".join(lines) + "\n"


def _two_processes(t: dict) -> list[str]:
    if not t:
        return []
    lines = [f"Two processes on one GPU ({t.get('backend')}): exact {t.get('exact')}, sync_free "
             f"{t.get('sync_free')}, steps {t.get('steps')}; launch/train.py kill -9 and resume:", ""]
    lines += [f"- {name}: " + (run.get("skipped") or run.get("error") and f"failed: {run.get('error')}" or
                               f"bit-identical {run.get('bit_identical')}, largest difference "
                               f"{run.get('max_rel_diff', 0):.1e}")
              for name, run in t.get("runs", {}).items()]
    return lines + [""]


def _step_table(steps: list[dict]) -> list[str]:
    lines = ["| configuration | batch | precision | channels_last | compile | step | images/s | MFU |",
             "|---|---|---|---|---|---|---|---|"]
    for x in steps:
        if "note" in x:  # the two-process row
            lines.append(f"| {x['configuration']} | {x['batch']} | {x['precision']} | {x['channels_last']} | "
                         f"False | | {x['images_per_s']:.0f} | ({x['note']}) |")
            continue
        if "skipped" in x:
            lines.append(f"| {x['configuration']} | {x['batch']} | {x['precision']} | {x['channels_last']} | "
                         f"{_compiled(x)} | not run: {x['skipped']} | | |")
            continue
        lines.append(f"| {x['configuration']} | {x['batch']} | {x['precision']} | {x['channels_last']} | "
                     f"{_compiled(x)} | {x['step_seconds'] * 1e3:.2f} ms | {x['images_per_s']:.0f} | "
                     f"{100 * x['mfu']:.0f}% |")
    return lines


def _targets(r: dict) -> list[str]:
    """The step part against its targets: a tower's step against the whole net's, images/s, LRN's share."""
    lines: list[str] = []
    best: dict = {}
    for x in (x for x in r["steps"] if "skipped" not in x and "note" not in x):
        key = (x["batch"], x["precision"], x["channels_last"], _compiled(x))
        best.setdefault(key, {})[x["configuration"]] = x["step_seconds"]
    ratios = [v["tower"] / v["full-1dev"] for v in best.values() if len(v) == 2]
    if ratios:
        lines += ["", f"tower / full-1dev step time: {min(ratios):.3f} to {max(ratios):.3f} (target <= 0.5)."]
    b128 = [x["images_per_s"] for x in r["steps"]
            if "skipped" not in x and x["configuration"] == "full-1dev" and x["batch"] == 128
            and x["precision"] == "bf16"]
    if b128:
        lines += ["", f"full-1dev bf16 at batch 128, fastest option set: {max(b128):.0f} images/s (target >= 25000)."]
        fused = [x["seconds"] for x in r.get("lrn", []) if x["precision"] == "bf16" and x["batch"] == 128
                 and x["implementation"].startswith("fused")]
        if fused:
            lines += ["", f"fastest fused LRN forward+backward: {100 * min(fused) * max(b128) / 128:.1f}% of that "
                          f"step (target <= 10%)."]
    return lines


def _lrn(r: dict) -> list[str]:
    lines: list[str] = []
    if r.get("lrn_error"):
        lines += ["", f"LRN part failed: {r['lrn_error']}"]
    if r.get("lrn"):
        torchs = {x["precision"]: x["seconds"] for x in r["lrn"] if x["implementation"] == "torch"}
        lines += ["", "LRN of the whole net (conv1 and conv2, per tower), forward + backward:", "",
                  "| implementation | precision | batch | time | / torch's | largest difference from torch's |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {x['implementation']} | {x['precision']} | {x['batch']} | {x['seconds'] * 1e3:.2f} ms | "
                  f"{x['seconds'] / torchs[x['precision']]:.2f} | {x['max_rel_diff_from_torch']:.1e} |"
                  for x in r["lrn"]]
    return lines
