"""Every command's configuration as a typed schema: Hydra structured configs registered in
Hydra's ``ConfigStore``, over which the YAML files in ``conf/`` are presets and groups.

One module per command: :mod:`.train` (with the ``model``, ``optim`` and ``schedule`` groups),
:mod:`.data` (the ``data`` group every command shares), :mod:`.evaluate` (evaluate and
figures), :mod:`.prepare`, :mod:`.bench` (the two benchmarks) and :mod:`.reproduce` (the
sweep); :mod:`.schema` holds the rule of a field and the one validator. Importing this package
registers the schema, so ``conf/*.yaml`` can name it in their defaults lists (``- base_train``).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from alexnet_mp.config import bench, data, evaluate, prepare, reproduce, train
from alexnet_mp.config.schema import check, describe, explain, flatten, resume_may_change, setting

__all__ = ["check", "describe", "explain", "flatten", "resume_may_change", "setting", "register"]


def register() -> None:
    """Store every command's schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for module in (data, train, evaluate, prepare, bench, reproduce):
        module.store(cs)


register()
