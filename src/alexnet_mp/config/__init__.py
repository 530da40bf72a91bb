"""Every command's configuration as a typed schema: Hydra structured configs registered in
Hydra's ``ConfigStore``, over which the YAML files in ``conf/`` are presets and groups.

One module per command: :mod:`.train` (with the ``model``, ``optim`` and ``schedule`` groups), :mod:`.scheme` (its ``scheme`` group),
:mod:`.data` (the ``data`` group every command shares), :mod:`.evaluate` (evaluate and
figures), :mod:`.prepare`, :mod:`.bench` (the two benchmarks), :mod:`.reproduce` (the
sweep), :mod:`.use` (predict, export, compare), :mod:`.figure1` (Figure 1) and :mod:`.figure2` (Figure 2 and the step timeline); :mod:`.schema` holds the rule of a field and the one validator. Importing this package
registers the schema, so ``conf/*.yaml`` can name it in their defaults lists (``- base_train``).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from alexnet_mp.config import bench, data, evaluate, figure1, figure2, prepare, reproduce, scheme, train, use
from alexnet_mp.config.schema import check, describe, explain, flatten, resume_may_change, setting

__all__ = ["check", "describe", "explain", "flatten", "resume_may_change", "setting", "register", "presets"]

CONF = Path(__file__).resolve().parents[3] / "conf"


def register() -> None:
    """Store every command's schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for module in (data, train, scheme, evaluate, prepare, bench, reproduce, use, figure1, figure2):
        module.store(cs)
    if not OmegaConf.has_resolver("alexnet_mp_presets"):
        OmegaConf.register_new_resolver("alexnet_mp_presets", presets)


def presets(config_name: str) -> str:
    """The preset groups a command composes (``--help``): each group of ``conf/`` that its
    YAML names, or that training adds (``experiment``, ``ablation``; launch/figure2.py takes
    ``ablation`` too), with its options."""
    text = (CONF / f"{config_name}.yaml").read_text() if (CONF / f"{config_name}.yaml").is_file() else ""
    rows = []
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        if f"- {group.name}:" in text or f"/{group.name}:" in text or (
                config_name in ("config", "figure2") and group.name == "ablation"):
            names = sorted(y.stem for y in group.glob("*.yaml"))
            rows.append(f"{group.name}: {', '.join(names)}")
    return "\n".join(rows) or "(none)"


register()
