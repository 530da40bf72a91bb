"""Lost processes: a run whose peer process or loader worker died, or whose peer hung, stops
with one line naming what was lost and the last good checkpoint, never a hang or a page of
tracebacks from every rank. (A stop signal is the checkpointing policy's:
:meth:`alexnet_mp.train.checkpoint_policy.Checkpoints.saved_on_stop`.)"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from alexnet_mp.data.loader import worker_death
from alexnet_mp.parallel import ranks
from alexnet_mp.job.checkpoint import CheckpointStore
from alexnet_mp.errors import QuietStop, UserError, another_rank_reported
from alexnet_mp.job.launcher import Launcher
from alexnet_mp.parallel.placement import Placement

__all__ = ["lost_processes_stop_the_run"]


@contextlib.contextmanager
def lost_processes_stop_the_run(placement: Placement, store: CheckpointStore, launcher: Launcher) -> Iterator[None]:
    """A lost process never hangs the run: a collective that loses its peer fails (at once
    when the peer's connection closes, after ``dist_timeout_s`` when it hangs) and becomes one
    line naming the lost rank and the last good checkpoint (one whose shards pass their
    checksums). When the peer stopped on an error it has printed (a note in ``launcher``'s
    folder), this rank stays quiet.
    torchrun's SIGTERM to the survivors only sets the stop flag (preempt.py): the next
    collective finds the lost peer. A loader worker that died (kill -9, the OOM killer) is the
    same kind of loss: one line from its rank, the others then lose that rank quietly."""
    try:
        yield
    except RuntimeError as err:
        died = worker_death(err)
        if died is not None:
            good = store.last_good(list(range(placement.towers))) or "none"
            raise UserError(f"a data loader worker of rank {placement.rank} died ({died}); rank {placement.rank} "
                            f"stopped. Last good checkpoint: {good} (relaunch with resume=true; if it ran out of "
                            f"memory, lower data.workers)") from None
        if placement.world_size == 1 or not ranks.is_lost_peer(err):
            raise
        if another_rank_reported(launcher):
            raise QuietStop() from None
        who = (f"rank {1 - placement.rank}" if placement.world_size == 2
               else "another rank (torchrun's report names it)")
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        why = re.sub(r"^\[[^\]]*\]\s*", "", why).split(". ")[0][:160]  # gloo's "[file:line] Read error ...: reset"
        raise UserError(f"lost {who} of this run ({why}); rank {placement.rank} stopped. Last good checkpoint: "
                        f"{store.last_good(list(range(placement.towers))) or 'none'} "
                        f"(relaunch with resume=true)") from None
