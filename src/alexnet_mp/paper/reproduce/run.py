"""``reproduce()``: the sweep run (or continued) here or as submitit jobs, with the report
rewritten as each run's result arrives."""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from omegaconf import DictConfig

from alexnet_mp.job import provenance
from alexnet_mp.job.cli import data_overrides
from alexnet_mp.errors import UserError
from alexnet_mp.paper.reproduce.submit import SweepState, submit_runs
from alexnet_mp.paper.reproduce.plan import plan_runs
from alexnet_mp.paper.reproduce.report import markdown, summarise, write_report
from alexnet_mp.paper.reproduce.sweep import Sweep

__all__ = ["reproduce"]

log = logging.getLogger("alexnet_mp")


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


def _shown(path: Path) -> str:
    """``path`` as the report shows it: relative to the working directory when inside it, so a
    committed report names no folder of the machine it ran on."""
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


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
    log.info("reproduce: %d runs (%d already finished, kept), %d side by side, in %s%s",
             len(runs), len(runs) - len(todo), parallel, sweep.dir, "; report only" if cfg.report_only else "")
    todo = [] if cfg.report_only else todo
    data_args = sweep.data_args() if todo else []
    settings = {"data": _data_name(cfg.data), "epochs": int(cfg.epochs), "seeds": seeds,
                "ablation_seeds": int(cfg.ablation_seeds), "configs": configs,
                "data_overrides": data_overrides(cfg.data), "train_overrides": list(map(str, cfg.train_overrides)),
                "full_processes": sweep.full_processes, "threads": sweep.threads, "parallel": parallel,
                "sweep_dir": _shown(sweep.dir), "launcher": sweep.launcher, "provenance": provenance.record(cfg)}
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
