"""The rules every command's configuration follows, and the one validator that applies them.

A setting is a dataclass field made with :func:`setting`; its metadata holds what OmegaConf's
types cannot say: a range (``ge``, ``gt``, ``le``, ``lt``), a closed set of words
(``choices``), ``auto`` as a further allowed word, and whether the key may change when a
training run is resumed (``resume="may_change"``).

Why ``str`` fields with ``choices`` rather than ``Literal`` or ``Enum``: OmegaConf 2.3 (the
version installed with Hydra 1.3) rejects ``Literal`` annotations, and an ``Enum`` field turns
the value into an Enum member, so ``str(cfg.model.pool)`` would read ``Pool.overlap`` and
names such as ``2x2``, ``224`` or ``reduce-overhead`` are not identifiers. OmegaConf checks
the type when Hydra merges each override; :func:`check` checks ranges and words once the
config is composed; :func:`explain` turns either failure into the one line the launchers print.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from alexnet_mp.errors import UserError

__all__ = ["setting", "check", "describe", "explain", "resume_may_change", "flatten", "MAY_CHANGE"]

MAY_CHANGE = "may_change"  # metadata["resume"]: a run may be resumed with another value


def setting(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, choices: tuple | None = None, auto: bool = False,
            means: str | None = None, resume: str | None = None, factory: Any = None) -> Any:
    """A dataclass field with its rule in the metadata (see the module docstring).

    ``means`` replaces the generated description (e.g. "a drop probability in [0, 1)");
    ``factory`` builds a list or nested config default."""
    rule = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, auto=auto or None,
                                  means=means, resume=resume).items() if v is not None}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=rule)
    return dataclasses.field(default=default, metadata=rule)


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _show(choice: Any) -> str:
    return {True: "true", False: "false", None: "null"}.get(choice, str(choice)) \
        if isinstance(choice, (bool, type(None))) else str(choice)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number_words(rule: dict, integer: bool) -> str:
    """"a positive integer", "an integer from 1 to 100", "a number in (0, 1)", ..."""
    noun = "integer" if integer else "number"
    low = ("ge", rule["ge"]) if "ge" in rule else ("gt", rule["gt"]) if "gt" in rule else None
    high = ("le", rule["le"]) if "le" in rule else ("lt", rule["lt"]) if "lt" in rule else None
    if high is None and low in (("gt", 0), ("ge", 1) if integer else None):
        return f"a positive {noun}"
    if high is None and low == ("ge", 0):
        return f"a non-negative {noun}"
    if low and high:
        if integer and low[0] == "ge" and high[0] == "le":
            return f"an integer from {low[1]} to {high[1]}"
        return f"a {noun} in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
    sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    bound = low or high
    article = "an" if integer else "a"
    return f"{article} {noun} {sign[bound[0]]} {bound[1]}" if bound else f"{article} {noun}"


def _kind(f: dataclasses.Field) -> str:
    """The field's value type as one word (``int``, ``float``, ``bool``, ``str``, ``any``)."""
    text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for kind in ("bool", "int", "float", "str"):
        if re.search(rf"\b{kind}\b", text):
            return kind
    return "any"


def describe(f: dataclasses.Field) -> str:
    """What a value of the field must be, in words ("a positive integer", "fp32 or bf16")."""
    rule, kind = f.metadata, _kind(f)
    if "means" in rule:
        return rule["means"]
    optional = "Optional" in str(f.type)
    if "choices" in rule:
        text = _words([_show(c) for c in rule["choices"]])
    elif kind == "bool":
        text = "true or false"
    elif kind in ("int", "float") or any(k in rule for k in ("ge", "gt", "le", "lt")):
        text = _number_words(rule, integer=kind != "float")
    elif kind == "str":
        text = "a string"
    else:
        text = "a value"
    if rule.get("auto"):
        text = f"auto or {text}"
    return f"null or {text}" if optional and "choices" not in rule else text


_BOUNDS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def _ok(value: Any, f: dataclasses.Field) -> bool:
    rule, kind = f.metadata, _kind(f)
    if value is None:
        return "Optional" in str(f.type) or None in rule.get("choices", ())
    if rule.get("auto") and value == "auto":
        return True
    if "choices" in rule:  # by type too: 1 is not true, "1" is not 1
        return any(type(value) is type(c) and value == c for c in rule["choices"])
    if kind in ("int", "any") and not _is_int(value):  # an untyped field with a range: auto or an integer
        return False
    if kind == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return False
    if kind not in ("int", "float", "any"):
        return True
    return all(test(value, rule[k]) for k, test in _BOUNDS.items() if k in rule)


def _fields(node: DictConfig) -> list[dataclasses.Field]:
    schema = OmegaConf.get_type(node)
    return list(dataclasses.fields(schema)) if schema is not None and dataclasses.is_dataclass(schema) else []


def _unknown(key: str) -> str:
    return f"unknown key {key}: no setting of this command has that name (--cfg job lists every key)"


def check(cfg: DictConfig, prefix: str = "") -> None:
    """Raise a one-line :class:`UserError` for the first value outside its field's rule.

    Walks the composed config beside its schema (each node's dataclass); a missing value
    (``???``) is left to the command, which names the key when it needs it."""
    fields = _fields(cfg)
    unknown = sorted(set(map(str, cfg.keys())) - {f.name for f in fields}) if fields else []
    if unknown:  # Hydra's +key=value adds a key even to a structured config
        raise UserError(_unknown(f"{prefix}{unknown[0]}"))
    for f in fields:
        key = f"{prefix}{f.name}"
        if OmegaConf.is_missing(cfg, f.name) or OmegaConf.is_interpolation(cfg, f.name):
            continue  # a missing value is named by the command; an interpolation's source is checked
        value = cfg[f.name]
        if isinstance(value, DictConfig):
            check(value, f"{key}.")
        elif isinstance(value, ListConfig):
            continue  # OmegaConf has typed its elements (List[int], List[str])
        elif not _ok(value, f):
            raise UserError(f"{key} must be {describe(f)}, not {value!r}")


def resume_may_change(*schemas: type) -> tuple[str, ...]:
    """The dotted keys (a nested config's as ``"name."``) that a resumed run may change,
    read from the fields' ``resume`` metadata of ``schemas`` and of their nested configs."""
    keys: list[str] = []

    def walk(schema: type, prefix: str) -> None:
        for f in dataclasses.fields(schema):
            nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if f.metadata.get("resume") == MAY_CHANGE:
                keys.append(f"{prefix}{f.name}" + ("." if dataclasses.is_dataclass(nested) else ""))
            elif dataclasses.is_dataclass(nested):
                walk(nested, f"{prefix}{f.name}.")
    for schema in schemas:
        walk(schema, "")
    return tuple(dict.fromkeys(keys))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested dict as ``{"a.b": value}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _field_of(schema: Any, key: Any) -> dataclasses.Field | None:
    if schema is None or not dataclasses.is_dataclass(schema):
        return None
    return next((f for f in dataclasses.fields(schema) if f.name == key), None)


def _group_override(group: str) -> str:
    """How a group is chosen on the command line: ``group`` where a command's defaults list names
    it (``model=half``), ``+group`` where it is added to the list (``+ablation=no_lrn``)."""
    from pathlib import Path

    conf = Path(__file__).resolve().parents[3] / "conf"
    listed = any(re.search(rf"^\s*- (override /)?{re.escape(group)}:", p.read_text(), re.M)
                 for p in conf.glob("**/*.yaml") if p.is_file())
    return group if listed else f"+{group}"


def explain(err: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while composing the config: a value of
    the wrong type is described by its field's rule, an unknown key or group option is named,
    anything else is Hydra's message on one line."""
    options = getattr(err, "options", None)
    missing = getattr(err, "missing_cfg_file", None)
    if missing and options is not None:  # hydra.errors.MissingConfigException: model=quarter
        group, _, name = str(missing).rpartition("/")
        shown = [o for o in options if not o.startswith("base_")]  # the schema nodes are not presets
        return f"no {group} called {name!r}: choose one of {', '.join(shown)} ({_group_override(group)}=NAME)"
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        full_key = getattr(cause, "full_key", None) or getattr(cause, "key", None)
        f = _field_of(getattr(cause, "object_type", None), getattr(cause, "key", None))
        if f is not None and isinstance(cause, ValidationError):
            return f"{full_key} must be {describe(f)}, not {getattr(cause, 'value', None)!r}"
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            return _unknown(full_key)
    text = str(err) + (f": {cause}" if cause is not None and cause is not err else "")
    lines = [line.strip() for line in text.splitlines() if line.strip()
             and not line.strip().startswith(("full_key:", "object_type=", "reference_type="))]
    return "; ".join(lines)
