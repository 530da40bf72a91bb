"""launch/train.py with a crash without warning, for the tests of resumption: each chosen rank
SIGKILLs itself right after optimizer step ``KILL_AT_STEP`` and its checkpoint (an after-step
hook, :class:`alexnet_mp.train.StepHooks`; the product's loop runs none of its own).

    KILL_AT_STEP=11 [KILL_RANK=1] torchrun --nproc_per_node=2 tests/train_killed.py experiment=smoke ...

``KILL_RANK``: only that rank (default -1: every rank). Never after a torchrun restart, so the
restarted job can finish.
"""

import os
import signal

from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import Job, hydra_run_dir, run_hydra
from alexnet_mp.train import StepHooks, train


def _kill_after(step: int):
    def kill(state) -> None:
        if state.position.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
    return kill


def _hooks() -> StepHooks:
    step, rank = int(os.environ["KILL_AT_STEP"]), int(os.environ.get("KILL_RANK", "-1"))
    if rank not in (-1, int(os.environ.get("RANK", "0"))) or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return StepHooks()
    return StepHooks(after_step=(_kill_after(step),))


def main(cfg: DictConfig, job: Job) -> None:
    job.run(lambda: train(cfg, hydra_run_dir(), hooks=_hooks(), launcher=job.launcher), cfg, run_dir=hydra_run_dir())


if __name__ == "__main__":
    run_hydra(main, config_name="config", config_path="../conf", check_run_dir=True)
