"""The sweep's report: per configuration the mean and spread of its error over seeds, the
paired difference from the full net with its 95% interval beside the paper's stated
difference (``summarise``), as markdown tables (``markdown``) and a figure (``plot``),
written together by ``write_report``."""

from __future__ import annotations

import json
from pathlib import Path

from alexnet_mp.io import atomic_write
from alexnet_mp.paper.reproduce.plan import PAPER_DELTAS
from alexnet_mp.paper.student_t import paired_difference, spread

__all__ = ["ERRORS", "CROPS", "summarise", "markdown", "plot", "write_report"]

ERRORS = ("top1_err", "top5_err")
CROPS = ("ten_crop", "center")


def summarise(results: list[dict], configs: list[str]) -> dict:
    """Per configuration: mean and spread over seeds; against the full net: the paired difference."""
    by = {c: {r["seed"]: r for r in results if r["config"] == c} for c in configs}
    out = {}
    for c in configs:
        runs = by[c]
        if not runs:
            out[c] = {"seeds": []}
            continue
        row: dict = {"seeds": sorted(runs)}
        for crop in CROPS:
            row[crop] = {e: spread([r[crop][e] for r in runs.values()]) for e in ERRORS}
        shares = [r["chromatic_share"] for r in runs.values()]
        row["chromatic_share"] = [spread([s[t] for s in shares]) for t in range(len(shares[0]))]
        losses = [r["train_loss"] for r in runs.values() if r.get("train_loss") is not None]
        row["train_loss"] = spread(losses) if losses else None  # with dropout and augmentation on
        row["train_seconds"] = spread([r["train_seconds"] for r in runs.values()])
        # a run whose validation error ends at chance stopped learning (e.g. every ReLU dead)
        row["at_chance"] = sorted(s for s, r in runs.items() if r.get("chance_top1_err") is not None
                                  and r["ten_crop"]["top1_err"] >= r["chance_top1_err"] - 0.005)
        if c != "full":
            row["vs_full"] = {crop: {e: paired_difference({s: r[crop][e] for s, r in runs.items()},
                                                          {s: r[crop][e] for s, r in by["full"].items()})
                                     for e in ERRORS} for crop in CROPS}
            row["paper"] = PAPER_DELTAS.get(c)
        out[c] = row
    return out


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _mean_std(s: dict) -> str:
    return f"{_pct(s['mean'])} ± {_pct(s['std'])}" if s["std"] is not None else f"{_pct(s['mean'])} ± n/a"


def _loss(s: dict | None) -> str:
    if s is None:
        return "n/a"
    spread_text = f"{s['std']:.3f}" if s["std"] is not None else "n/a"
    return f"{s['mean']:.3f} ± {spread_text}"


def _verdict(d: dict) -> str:
    if d["resolved"] is None:
        return "n/a (fewer than 2 paired seeds)"
    if not d["resolved"]:
        return "not resolved at this budget"
    return "resolved: worse than full" if d["mean"] > 0 else "resolved: better than full"


def markdown(summary: dict, settings: dict) -> str:
    lines = [f"# reproduce: the paper's comparisons ({settings['data']}, {settings['epochs']} epochs)", "",
             "Error in % (mean ± standard deviation over seeds; ± n/a with one seed). Ten-crop and centre-crop "
             "top-1 / top-5 on the validation set. The train loss is the last epoch's mean, with dropout and "
             "augmentation on (a lower train loss at a higher validation error is overfitting).", "",
             "| configuration | seeds | ten-crop top-1 | ten-crop top-5 | centre top-1 | centre top-5 | "
             "last epoch's train loss | chromatic share of conv1 energy, per tower |",
             "|---|---|---|---|---|---|---|---|"]
    for c, row in summary.items():
        if not row["seeds"]:
            lines.append(f"| {c} | 0 | - | - | - | - | - | - |")
            continue
        chroma = " / ".join(_mean_std({"mean": s["mean"], "std": s["std"]}) for s in row["chromatic_share"])
        lines.append(f"| {c} | {len(row['seeds'])} | {_mean_std(row['ten_crop']['top1_err'])} | "
                     f"{_mean_std(row['ten_crop']['top5_err'])} | {_mean_std(row['center']['top1_err'])} | "
                     f"{_mean_std(row['center']['top5_err'])} | {_loss(row['train_loss'])} | {chroma} |")
    stuck = [f"{c} (seed {', '.join(map(str, r['at_chance']))})" for c, r in summary.items() if r.get("at_chance")]
    lines += ["", "Runs that ended at chance error (the net stopped learning; their differences measure a training "
              "failure): " + (", ".join(stuck) if stuck else "none") + "."]
    for crop, title in (("ten_crop", "ten-crop"), ("center", "centre-crop")):
        lines += ["", f"Against the full net trained from the same seeds, {title}: error of the configuration minus "
                  "the full net's, in points, with the 95% interval (Student's t over the paired seeds; with 2 seeds "
                  "it has 1 degree of freedom, t = 12.7), and the paper's stated difference (ImageNet, ten-crop). "
                  "An interval that includes 0 is not resolved at this budget.", "",
                  f"| configuration | pairs | {title} top-1: difference [95% interval] | paper | verdict | "
                  f"{title} top-5: difference [95% interval] | paper | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for c, row in summary.items():
            if c == "full" or not row["seeds"]:
                continue
            cells = []
            for e in ERRORS:
                d = row["vs_full"][crop][e]
                interval = f"[{_pct(d['low'], True)}, {_pct(d['high'], True)}]" if d["low"] is not None else "[n/a]"
                paper = (row.get("paper") or {}).get(e)
                cells += [f"{_pct(d['mean'], True)} {interval}", _pct(paper, True) if paper is not None else "n/a",
                          _verdict(d)]
            lines.append(f"| {c} | {row['vs_full'][crop]['top1_err']['n']} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's claims, by configuration:", ""]
    lines += [f"- `{c}`: {PAPER_DELTAS[c]['source']}" for c in summary if c in PAPER_DELTAS]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Each configuration's paired top-1 / top-5 difference with its interval, and the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [c for c, r in summary.items() if c != "full" and r["seeds"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * max(len(rows), 2) + 1.6), sharey=True)
    for ax, e in zip(axes, ERRORS):
        pending = ["measured, 95% interval", "paper (ImageNet)"]

        def once(name: str) -> str | None:  # each legend entry labels its first point only
            return pending.remove(name) or name if name in pending else None
        for y, c in enumerate(rows):
            d = summary[c]["vs_full"]["ten_crop"][e]
            if d["mean"] is None:
                continue
            if d["low"] is not None:
                ax.plot([100 * d["low"], 100 * d["high"]], [y, y], color="tab:blue", lw=2)
            ax.plot(100 * d["mean"], y, "o", color="tab:blue", label=once("measured, 95% interval"))
            paper = (summary[c].get("paper") or {}).get(e)
            if paper is not None:
                ax.plot(100 * paper, y, "D", color="tab:red", label=once("paper (ImageNet)"))
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(f"ten-crop {e.split('_')[0]} error minus the full net's (points)")
        ax.set_yticks(range(len(rows)), rows)
        if len(pending) < 2:
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(summary: dict, settings: dict, results: list[dict], out_dir: Path, name: str) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{name}.{k}" for k in ("json", "md", "png")}
    atomic_write(paths["json"], json.dumps({"settings": settings, "summary": summary, "runs": results}, indent=1))
    atomic_write(paths["md"], markdown(summary, settings))
    plot(summary, paths["png"])
    return paths
