"""Every command's configuration as a typed schema: Hydra structured configs registered in
Hydra's ``ConfigStore``, over which the YAML files in ``conf/`` are presets and groups.

One module per command: :mod:`.train` (with the ``model``, ``optim`` and ``schedule`` groups),
:mod:`.data` (the ``data`` group every command shares), :mod:`.evaluate` (evaluate and
figures), :mod:`.prepare`, :mod:`.get_data` (a public dataset fetched), :mod:`.reproduce` (the
sweep), :mod:`.use` (predict, export, compare), :mod:`.figure1` (Figure 1) and :mod:`.figure2` (Figure 2 and the step timeline); :mod:`.schema` holds the rule of a field and the one validator. Importing this package
registers the schema, so ``conf/*.yaml`` can name it in their defaults lists (``- base_train``).
The benchmarks' schemas live beside them (``benchmarks/*/schema.py``), registered by their entry points.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from alexnet_mp.config import data, evaluate, figure1, figure2, get_data, prepare, reproduce, train, use
from alexnet_mp.config.schema import check, describe, explain, flatten, resume_may_change, setting

__all__ = ["check", "describe", "explain", "flatten", "resume_may_change", "setting", "register", "presets", "choices"]

CONF = Path(__file__).resolve().parents[3] / "conf"


def register() -> None:
    """Store every command's schema in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for module in (data, train, evaluate, prepare, get_data, reproduce, use, figure1, figure2):
        module.store(cs)
    if not OmegaConf.has_resolver("alexnet_mp_presets"):
        OmegaConf.register_new_resolver("alexnet_mp_presets", presets)
    if not OmegaConf.has_resolver("alexnet_mp_choices"):
        OmegaConf.register_new_resolver("alexnet_mp_choices", choices)


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


def choices(config_name: str) -> str:
    """The keys of a command's schema that take a closed set of words (``resume: true, false or
    auto``), one a line, for ``--help``: the YAML under it shows a key's value, not what else
    it may be. Read from the fields' rules (:func:`setting`), nested configs included."""
    text = (CONF / f"{config_name}.yaml").read_text() if (CONF / f"{config_name}.yaml").is_file() else ""
    base = re.search(r"^\s*- (base_\w+)\s*$", text, re.M)
    node = ConfigStore.instance().repo.get(f"{base.group(1)}.yaml") if base else None
    schema = OmegaConf.get_type(node.node) if node is not None else None
    rows: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints.get(f.name)
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{prefix}{f.name}.")
            elif "choices" in f.metadata or f.metadata.get("auto"):
                rows.append(f"{prefix}{f.name}: {describe(f)}")
    if schema is not None and dataclasses.is_dataclass(schema):
        walk(schema, "")
    return "\n".join(rows) or "(none)"


register()
