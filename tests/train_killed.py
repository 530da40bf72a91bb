"""launch/train.py with a crash without warning, for the tests of resumption: each chosen rank
SIGKILLs itself right after optimizer step ``KILL_AT_STEP`` and its checkpoint (an after-step
hook, :class:`alexnet_mp.train.StepHooks`; the product's loop runs none of its own).

    KILL_AT_STEP=11 [KILL_RANK=1] torchrun --nproc_per_node=2 tests/train_killed.py experiment=smoke ...

``KILL_RANK``: only that rank (default -1: every rank). Never after a torchrun restart, so the
restarted job can finish.
"""

import os
import signal
import sys

import hydra
from omegaconf import DictConfig

import alexnet_mp.config  # noqa: F401 - registers the schema conf/ names
from alexnet_mp.job.cli import check_run_dir_override, hydra_run_dir, run_entry_point, run_hydra
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


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda: train(cfg, hydra_run_dir(), hooks=_hooks()), cfg, run_dir=hydra_run_dir())


if __name__ == "__main__":
    check_run_dir_override(sys.argv[1:])
    run_hydra(main)
