"""The paper's comparisons re-run with seeds: ``make reproduce`` (``launch/reproduce.py``).

Every configuration (the full net, the half net and each ablation in ``conf/ablation/``)
is trained from each seed with the trainer, evaluated with the evaluator (centre crop and
ten-crop), and its conv1 kernels measured (:mod:`alexnet_mp.figures`). Each run's result is
written to ``<sweep_dir>/<config>-seed<k>/result.json`` as it finishes, so a sweep that is
stopped continues where it stopped; a run stopped mid-way resumes from its checkpoint.

The report compares each configuration with the full net trained from the same seeds: the
paired difference in error, its 95% interval (Student's t over seeds) and the paper's
stated difference beside it. An interval that includes 0 is "not resolved at this budget".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alexnet_mp.arch import spec_for
from alexnet_mp.checkpoint import atomic_write_text, load_file
from alexnet_mp.cli import data_overrides, override_value
from alexnet_mp.errors import UserError
from alexnet_mp.figures import tower_chromatic_shares
from alexnet_mp.launchers import LAUNCHERS, RUNNING, SweepState, submit_runs
from alexnet_mp import provenance
from alexnet_mp.stats import paired_difference, spread

__all__ = ["CONFIGS", "PAPER_DELTAS", "reproduce", "plan_runs", "summarise", "markdown", "preset_keys"]

log = logging.getLogger("alexnet_mp")
REPO = Path(__file__).resolve().parents[2]
ERRORS = ("top1_err", "top5_err")
CROPS = ("ten_crop", "center")

# name -> (overrides for launch/train.py, what the paper says of it). "full" is the reference.
CONFIGS = {
    "full": [],
    "half": ["+ablation=half"],
    "no_lrn": ["+ablation=no_lrn"],
    "pool_2x2": ["+ablation=pool_2x2"],
    "no_pca": ["+ablation=no_pca"],
    "no_dropout": ["+ablation=no_dropout"],
    "no_conv4": ["+ablation=no_conv4"],
}
# The paper's error of each configuration minus the full net's, as fractions (None: no number).
PAPER_DELTAS = {
    "half": {"top1_err": 0.017, "top5_err": 0.012, "source": "sec. 3.2: two GPUs 1.7 and 1.2 points better"},
    "no_lrn": {"top1_err": 0.014, "top5_err": 0.012, "source": "sec. 3.3: LRN 1.4 and 1.2 points"},
    "pool_2x2": {"top1_err": 0.004, "top5_err": 0.003, "source": "sec. 3.4: overlap 0.4 and 0.3 points"},
    "no_pca": {"top1_err": 0.01, "top5_err": None, "source": "sec. 4.1: over 1 point of top-1"},
    "no_dropout": {"top1_err": None, "top5_err": None, "source": "sec. 4.2: substantial overfitting, no number"},
    "no_conv4": {"top1_err": 0.02, "top5_err": None, "source": "sec. 7: about 2 points of top-1"},
}


def preset_keys(config: str) -> set[str]:
    """The dotted keys an ablation preset sets (its overrides must win over the data's)."""
    keys: set[str] = set()
    for override in CONFIGS[config]:
        path = REPO / "conf" / "ablation" / f"{override.split('=', 1)[1]}.yaml"
        blob = OmegaConf.to_container(OmegaConf.load(path))
        blob.pop("defaults", None)

        def walk(d: dict, prefix: str = "") -> None:
            for k, v in d.items():
                walk(v, f"{prefix}{k}.") if isinstance(v, dict) else keys.add(f"{prefix}{k}")
        walk(blob)
    return keys


def plan_runs(configs: list[str], seeds: list[int], ablation_seeds: int) -> list[tuple[str, int]]:
    """(configuration, seed) pairs, seed-major so that every finished seed gives pairs early:
    the full and half nets on every seed, the ablations on the first ``ablation_seeds``."""
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise UserError(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}")
    if "full" not in configs:
        raise UserError("configs must include full: every difference is taken against it")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must list distinct seeds, got {seeds}")
    return [(c, s) for i, s in enumerate(seeds) for c in configs if c in ("full", "half") or i < ablation_seeds]


class Sweep:
    """Runs, resumes and reads the sweep's training runs."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.dir = Path(str(cfg.sweep_dir)).resolve()
        self.threads = int(cfg.threads)
        self.full_processes = int(cfg.full_processes)  # 1 or 2, epochs and threads >= 1: the schema's
        self.launcher = str(cfg.launcher)  # local, submitit_local or slurm: the schema's
        self.lock = threading.Lock()

    # -- data ------------------------------------------------------------------------------------
    def data_args(self) -> list[str]:
        """The data every run trains on: an image folder is prepared once (sec. 2's
        preprocessing) into the sweep folder when ``prepare`` is set."""
        d = self.cfg.data
        args = data_overrides(d)
        if d.name != "imagefolder" or not bool(self.cfg.prepare):
            return args + [f"data.workers={override_value(self.cfg.workers)}"]
        out = self.dir / f"prepared-{int(d.image_size)}"
        if not (out / "done.json").is_file() and not (out / "meta.json").is_file():
            log.info("preparing %s once into %s", d.root, out)
        cmd = [sys.executable, str(REPO / "launch" / "prepare.py"), f"out={override_value(str(out))}",
               *args, "progress=false"]
        self._run(cmd, self.dir / "prepare.log")
        kept = ("seed", "image_size", "mean_subtraction", "flip", "pca_sigma", "pca_scale", "augment")
        plain = OmegaConf.to_container(d, resolve=True)
        return (["data=prepared", f"data.root={override_value(str(out))}"]
                + [f"data.{k}={override_value(plain[k])}" for k in kept if k in plain]
                + [f"data.workers={override_value(self.cfg.workers)}"])

    # -- one run ---------------------------------------------------------------------------------
    def run_dir(self, config: str, seed: int) -> Path:
        return self.dir / "runs" / f"{config}-seed{seed}"

    def processes(self, config: str) -> int:
        """Training processes (on Slurm: GPUs) of one run: one per tower, or one for the half net."""
        if config == "half":
            return 1
        return int(self.cfg.slurm.gpus_full) if self.launcher == "slurm" else self.full_processes

    def train_command(self, config: str, seed: int, data_args: list[str]) -> list[str]:
        run_dir = self.run_dir(config, seed)
        launcher = [sys.executable, str(REPO / "launch" / "train.py")]
        if self.launcher != "local" or self.processes(config) == 2:  # a submitit job always runs torchrun
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                        f"--nproc_per_node={self.processes(config)}", str(REPO / "launch" / "train.py")]
        named = preset_keys(config)  # the preset's own keys win over the data's
        data_args = [a for a in data_args if a.split("=", 1)[0] not in named]
        # Decided when the job (re)starts, so a requeued Slurm job resumes what its last attempt saved:
        # the trainer's resume=auto, which this trainer's config does not accept yet (the faults issue adds it).
        resume = ["resume=true"] if self._has_checkpoint(run_dir) else []
        return [*launcher, *CONFIGS[config], f"seed={seed}", f"epochs={int(self.cfg.epochs)}",
                f"threads={self.threads}", f"device={self.cfg.device}",
                f"hydra.run.dir={override_value(str(run_dir))}", *data_args, *map(str, self.cfg.train_overrides),
                *resume]

    @staticmethod
    def _has_checkpoint(run_dir: Path) -> bool:
        return any((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else False

    def _run(self, cmd: list[str], log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": str(self.threads)})
            RUNNING.add(proc)  # a submitit job's checkpoint() signals it to save
            try:
                proc.wait()
            finally:
                RUNNING.discard(proc)
        if proc.returncode:
            tail = [l for l in log_path.read_text().splitlines() if "error" in l.lower()][-1:] or ["(no error line)"]
            raise RuntimeError(f"{' '.join(cmd[1:3])}... exited with status {proc.returncode}: {tail[0]} "
                               f"(log: {log_path})")

    def result(self, config: str, seed: int) -> dict | None:
        path = self.run_dir(config, seed) / "result.json"
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if "chance_top1_err" not in result:  # results written before it was recorded
            result["chance_top1_err"] = json.loads((path.parent / "summary.json").read_text()).get("chance_top1_err")
        return result

    def run(self, config: str, seed: int, data_args: list[str]) -> dict:
        """Train (or resume), evaluate and measure one run; its result.json is written last."""
        done = self.result(config, seed)
        if done is not None:
            return done
        run_dir = self.run_dir(config, seed)
        logs = self.dir / "logs"
        if not (run_dir / "summary.json").is_file():
            if run_dir.is_dir() and not self._has_checkpoint(run_dir):
                shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to keep
            self._run(self.train_command(config, seed, data_args), logs / f"{config}-seed{seed}.train.log")
        if not (run_dir / "summary.json").is_file():
            raise RuntimeError(f"training stopped before its last epoch (no summary.json in {run_dir}); "
                               "run the sweep again to resume it")
        summary = json.loads((run_dir / "summary.json").read_text())
        self._run([sys.executable, str(REPO / "launch" / "evaluate.py"), f"checkpoint={override_value(str(run_dir))}",
                   f"output={override_value(str(run_dir / 'eval.json'))}", f"device={self.cfg.device}",
                   f"threads={self.threads}", "workers=0", "progress=false"], logs / f"{config}-seed{seed}.eval.log")
        ev = json.loads((run_dir / "eval.json").read_text())
        blob = load_file(run_dir / "model_final.pt")
        result = {"config": config, "seed": seed, "overrides": CONFIGS[config],
                  "center": ev["center"], "ten_crop": ev["ten_crop"], "val_images": ev["images"],
                  "trainer_val_top1_err": summary["val_top1_err"], "train_loss": summary.get("train_loss"),
                  "chance_top1_err": summary.get("chance_top1_err"),
                  "train_seconds": summary["seconds"], "epochs": summary["epochs"],
                  # per tower of the net (two for the full net, also when it ran as one process)
                  "chromatic_share": tower_chromatic_shares(blob["state_dict"]["conv1.weight"],
                                                            spec_for(blob["model"]["name"], 2).towers)}
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=1))
        return result


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
    atomic_write_text(paths["json"], json.dumps({"settings": settings, "summary": summary, "runs": results}, indent=1))
    atomic_write_text(paths["md"], markdown(summary, settings))
    plot(summary, paths["png"])
    return paths


def _data_name(d: DictConfig) -> str:
    where = f" {d.root}" if d.get("root") else ""
    return f"data={d.name}{where}, {d.image_size} px"


def _run_here(sweep: Sweep, todo: list[tuple[str, int]], data_args: list[str], parallel: int, arrived) -> None:
    """launcher=local: the runs as this process's subprocesses, ``parallel`` at a time."""
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(sweep.run, c, s, data_args): (c, s) for c, s in todo}
        for done, future in enumerate(as_completed(futures), 1):
            try:
                outcome = future.result()
            except Exception as err:  # noqa: BLE001 - one run's failure must not stop the others; all are reported
                outcome = err
            arrived(done, *futures[future], outcome)


def _run_jobs(cfg: DictConfig, sweep: Sweep, todo: list[tuple[str, int]], data_args: list[str], arrived,
              state: SweepState) -> bool:
    """launcher=submitit_local|slurm: each run one submitit job; False when not waiting for them."""
    jobs = submit_runs(cfg, sweep, todo, data_args, state) if todo else []
    if not bool(cfg.slurm.wait) and cfg.launcher == "slurm":
        log.info("%d job(s) submitted or queued (%s); run the same command again to collect the results",
                 len(jobs), ", ".join(str(j.job_id) for _, _, j in jobs) or "none")
        return False
    import submitit

    by_job = {id(j): (c, s) for c, s, j in jobs}
    for done, job in enumerate(submitit.helpers.as_completed([j for _, _, j in jobs], poll_frequency=2), 1):
        try:
            outcome = job.result()
        except Exception as err:  # noqa: BLE001 - the job's own error, its log named
            lines = [line for line in str(err).splitlines() if line.strip()]
            outcome = RuntimeError(f"job {job.job_id}: {lines[-1] if lines else err} (log: {job.paths.stderr})")
        arrived(done, *by_job[id(job)], outcome)
    return True


def reproduce(cfg: DictConfig) -> dict:
    """Run (or continue) the sweep, then write the report. Returns the summary."""
    configs = [str(c) for c in cfg.configs]
    seeds = [int(s) for s in cfg.seeds]
    runs = plan_runs(configs, seeds, int(cfg.ablation_seeds))
    sweep = Sweep(cfg)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_run = sweep.threads * (sweep.full_processes if sweep.full_processes == 2 else 1)
    parallel = max(1, cores // per_run) if str(cfg.parallel) == "auto" else int(cfg.parallel)
    sweep.dir.mkdir(parents=True, exist_ok=True)
    todo = [(c, s) for c, s in runs if sweep.result(c, s) is None]
    log.info("reproduce: %d runs (%d already finished, kept), %d side by side, in %s",
             len(runs), len(runs) - len(todo), parallel, sweep.dir)
    data_args = sweep.data_args() if todo else []
    settings = {"data": _data_name(cfg.data), "epochs": int(cfg.epochs), "seeds": seeds,
                "ablation_seeds": int(cfg.ablation_seeds), "configs": configs,
                "data_overrides": data_overrides(cfg.data), "train_overrides": list(map(str, cfg.train_overrides)),
                "full_processes": sweep.full_processes, "threads": sweep.threads, "parallel": parallel,
                "sweep_dir": str(sweep.dir), "launcher": sweep.launcher, "provenance": provenance.record(cfg)}
    out_dir, name = Path(str(cfg.output_dir)), str(cfg.output_name)

    def report() -> tuple[dict, dict]:
        results = [r for c, s in runs if (r := sweep.result(c, s)) is not None]
        summary = summarise(results, configs)
        return summary, write_report(summary, settings, results, out_dir, name)

    failures, start = [], time.perf_counter()
    state = SweepState(sweep.dir / "sweep-state.json")

    def arrived(done: int, c: str, s: int, outcome) -> None:
        if isinstance(outcome, Exception):
            failures.append(f"{c} seed {s}: {outcome}")
            log.error("[%d/%d] %s seed %d failed: %s", done, len(todo), c, s, outcome)
            state.set(f"{c}-seed{s}", state="failed", error=str(outcome)[:500])
            return
        log.info("[%d/%d] %s seed %d: ten-crop top-1 %.2f%%, top-5 %.2f%% (%.0f s elapsed)", done, len(todo), c, s,
                 100 * outcome["ten_crop"]["top1_err"], 100 * outcome["ten_crop"]["top5_err"],
                 time.perf_counter() - start)
        state.set(f"{c}-seed{s}", state="finished")
        report()  # the report so far, after every run

    if sweep.launcher == "local":
        _run_here(sweep, todo, data_args, parallel, arrived)
    elif not _run_jobs(cfg, sweep, todo, data_args, arrived, state):
        return report()[0]  # submitted, not waited for: run the same command again to collect
    summary, paths = report()
    print(markdown(summary, settings), flush=True)
    log.info("wrote %s", ", ".join(map(str, paths.values())))
    if failures:
        raise UserError(f"{len(failures)} run(s) failed (the others are kept; run again to retry): {failures[0]}")
    return summary
