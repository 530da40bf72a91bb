"""One run of the sweep: train (or resume) a configuration from a seed with
``launch/train.py``, evaluate it with ``launch/evaluate.py`` (centre crop and ten-crop),
measure its conv1 kernels (sec. 6.1, Figure 3) and write ``result.json`` last, so a sweep
that is stopped continues where it stopped. Also the data every run trains on, prepared
once (sec. 2) when asked."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alexnet_mp.data.images import ImageFolderImages
from alexnet_mp.errors import UserError
from alexnet_mp.net.arch import spec_for
from alexnet_mp.job.checkpoint import load_file
from alexnet_mp.job.cli import data_overrides, override_value, train_command
from alexnet_mp.paper.figures34 import tower_chromatic_shares
from alexnet_mp.io import atomic_write
from alexnet_mp.paper.reproduce.plan import CONFIGS, REPO, preset_keys
from alexnet_mp.paper.reproduce.submit import run_logged

__all__ = ["Sweep"]

log = logging.getLogger("alexnet_mp")


class Sweep:
    """Runs, resumes and reads the sweep's training runs."""

    def __init__(self, cfg: DictConfig, repo: str | Path | None = None):
        """``repo``: the checkout whose ``launch/`` scripts run (default: the one the sweep started from)."""
        self.cfg = cfg
        self.repo = Path(repo) if repo is not None else REPO
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
            ImageFolderImages(d.root, "train", int(d.image_size))  # a bad data root: one line, before any work
            log.info("preparing %s once into %s", d.root, out)
        cmd = [sys.executable, str(self.repo / "launch" / "prepare.py"), f"out={override_value(str(out))}",
               *args, "progress=false"]
        try:
            self._run(cmd, self.dir / "prepare.log")
        except RuntimeError as err:  # every run needs the data: the sweep stops, in one line
            raise UserError(f"preparing the data failed: {err}") from None
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
        torchrun = self.launcher != "local" or self.processes(config) == 2  # a submitit job always runs torchrun
        named = preset_keys(config)  # the preset's own keys win over the data's
        data_args = [a for a in data_args if a.split("=", 1)[0] not in named]
        # Decided when the job (re)starts, so a requeued Slurm job resumes what its last attempt saved
        # (what the trainer's resume=auto does, decided here so the command says which).
        resume = ["resume=true"] if self._has_checkpoint(run_dir) else []
        return train_command([*CONFIGS[config], f"seed={seed}", f"epochs={int(self.cfg.epochs)}",
                              f"threads={self.threads}", f"device={self.cfg.device}",
                              f"hydra.run.dir={override_value(str(run_dir))}", *data_args,
                              *map(str, self.cfg.train_overrides), *resume], self.processes(config), torchrun,
                             repo=self.repo)

    @staticmethod
    def _has_checkpoint(run_dir: Path) -> bool:
        return any((run_dir / "checkpoints").glob("step-*")) if (run_dir / "checkpoints").is_dir() else False

    def _run(self, cmd: list[str], log_path: Path) -> None:
        status = run_logged(cmd, log_path, cwd=self.repo, env={**os.environ, "OMP_NUM_THREADS": str(self.threads)},
                            append=True)
        if status:
            tail = [l for l in log_path.read_text().splitlines() if "error" in l.lower()][-1:] or ["(no error line)"]
            raise RuntimeError(f"{' '.join(cmd[1:3])}... exited with status {status}: {tail[0]} "
                               f"(log: {log_path})")

    @staticmethod
    def _wait_until_free(run_dir: Path, seconds: float = 120.0) -> None:
        """Wait for the job that holds ``run_dir``'s lock to end: the run of a sweep killed just
        now, saving its position on the signal it got as the sweep died (submit.run_logged).
        After ``seconds`` the launch goes ahead, and train.py names the holder."""
        path, deadline, said = run_dir / ".lock", time.monotonic() + seconds, False
        while path.is_file() and time.monotonic() < deadline:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return  # free (a shared lock taken and dropped with the descriptor)
            except OSError:
                if not said:
                    log.info("%s is still held by the job of an earlier sweep; waiting for it to save and end", run_dir)
                    said = True
            finally:
                os.close(fd)
            time.sleep(0.25)

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
            self._wait_until_free(run_dir)
            if run_dir.is_dir() and not self._has_checkpoint(run_dir):
                shutil.rmtree(run_dir)  # stopped before its first checkpoint: nothing to keep
            self._run(self.train_command(config, seed, data_args), logs / f"{config}-seed{seed}.train.log")
        if not (run_dir / "summary.json").is_file():
            raise RuntimeError(f"training stopped before its last epoch (no summary.json in {run_dir}); "
                               "run the sweep again to resume it")
        summary = json.loads((run_dir / "summary.json").read_text())
        self._run([sys.executable, str(self.repo / "launch" / "evaluate.py"), f"checkpoint={override_value(str(run_dir))}",
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
        atomic_write(run_dir / "result.json", json.dumps(result, indent=1))
        return result
