"""The one override syntax of every configuration the platform reads: ``dotted.field=VALUE``.

    raw = apply_overrides(raw, ["optim.lr=0.02", "model.norm=gn"])        # isrn train SPEC --set …
    raw = apply_overrides(raw, ["mlflow.port=5001"])                       # ISRN_MLFLOW_PORT=5001

The value is read as YAML (numbers, booleans, lists, ``null``), so ``--set loader.augment.out_size=256``
sets an int and ``--set optim.milestones=[0.5,0.8]`` a list. The job spec takes them from
``--set``; the local platform's configuration from ``ISRN_<SECTION>_<FIELD>`` variables, each of
which is exactly the override ``section.field=VALUE``. Validation is the section's own, after all
overrides are applied, so an error names the dotted field whatever set it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import yaml

from jobs.errors import ConfigError


def parse_override(text: str, *, flag: str = "--set") -> tuple[str, Any]:
    """`train.lr=0.02` -> ("train.lr", 0.02); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"{flag} {text!r}: expected FIELD=VALUE, e.g. optim.lr=0.02")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"{flag} {text!r}: the value is not valid YAML: {error}") from None
    if isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, *, flag: str = "--set") -> None:
    """Set `tree[a][b][c] = value` for `a.b.c`, creating the sections on the way."""
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1], 1):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{flag} {dotted}: '{key}' is a value, not a section: {flag} "
                              f"{'.'.join(keys[:depth])}=VALUE")
        node = child
    node[keys[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str], *, flag: str = "--set") -> dict[str, Any]:
    """A copy of the raw configuration tree with each `FIELD=VALUE` override applied in order."""
    tree = copy.deepcopy(raw)
    for text in overrides:
        set_dotted(tree, *parse_override(text, flag=flag), flag=flag)
    return tree
