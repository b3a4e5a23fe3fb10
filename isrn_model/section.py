"""One way to declare a configuration section, for ``isrn_model`` and ``data_shards`` alike.

    @config_section
    class ModelConfig(Section):
        depth: Literal[18, 34, 50, 101] = 18
        '''ResNet depth.'''
        base_width: int = Field(default=64, gt=0)
        '''Channels of the first stage.'''

A section is a frozen, keyword-only **pydantic dataclass** (torchtitan's typed config, with the
checking declared on the fields instead of hand-written): types, choices (``Literal``) and bounds
(``Field(gt=…)``) are validated on construction, ``dataclasses.replace`` validates again, unknown keys
are rejected by name, and the docstring under each field becomes its description
(``use_attribute_docstrings``), so the job spec (a pydantic model that embeds these sections) and its
JSON schema see every field's description. Cross-field rules go in ``__post_init__`` and raise
``ValueError`` naming the fields.

Constructing a section directly raises :class:`ConfigError` (a ``ValueError``) whose message names
``Section.field``; nested in another section, the errors keep their dotted location instead.
This module needs only pydantic: ``jobs.spec`` imports the sections without torch or OpenCV.

It is the project's one configuration system: the detector's sections here, the data layer's
(``data_shards.config``), the job spec and its sections (``jobs.spec``, ``jobs.tune.config``) and
the local platform's configuration (``jobs.local_platform.config``) are all ``config_section``
classes, described by the docstrings under their fields, and fail with :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Self, TypeVar

import pydantic
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError

T = TypeVar("T")

SECTION_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)
"""Unknown keys are errors; field docstrings are descriptions; defaults are checked like values."""


def unit_field(default: float) -> Any:
    """A field holding a probability or an IoU: a number in [0, 1]."""
    return Field(default=default, ge=0.0, le=1.0)


class ConfigError(ValueError):
    """A configuration section got a bad value: the message names ``Section.field`` and the problem."""


def describe_errors(owner: str, error: ValidationError) -> str:
    """``Owner.field: problem`` for each error of a pydantic validation, joined by "; " (no owner: ``field``)."""
    problems = []
    for item in error.errors():
        where = ".".join(str(p) for p in ((owner, *item["loc"]) if owner else item["loc"])) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in {"unexpected_keyword_argument", "extra_forbidden"}:
            message = "unknown key"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)


def config_section(cls: type[T]) -> type[T]:
    """Make ``cls`` a validated, frozen, keyword-only configuration section (see the module docstring)."""
    section = pydantic.dataclasses.dataclass(frozen=True, kw_only=True, config=SECTION_CONFIG)(cls)
    validating_init = section.__init__

    @functools.wraps(validating_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:  # pydantic's kw_only dataclass would bind them to some field silently
            raise TypeError(f"{section.__name__} takes keyword arguments only, got {len(args)} positional")
        try:
            validating_init(self, **kwargs)
        except ValidationError as error:
            raise ConfigError(describe_errors(section.__name__, error)) from None

    section.__init__ = __init__
    return section


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    # Building a TypeAdapter compiles the class's validator: once per class, not per call.
    return TypeAdapter(cls)


class Section:
    """Base of every section: ``to_dict`` / ``from_dict`` through plain Python values."""

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (tuples become lists, nested sections dicts): YAML/JSON-serialisable."""
        return _adapter(type(self)).dump_python(self, mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, owner: str | None = None) -> Self:
        """Build from a mapping (lists accepted for tuples); ConfigError names any bad or unknown key,
        prefixed by ``owner`` (default: the class name; "" for bare dotted field paths)."""
        owner = cls.__name__ if owner is None else owner
        if not isinstance(data, dict):
            raise ConfigError(f"{owner or cls.__name__}: expected a mapping of field names, got {type(data).__name__}")
        try:
            return _adapter(cls).validate_python(data)
        except ValidationError as error:
            raise ConfigError(describe_errors(owner, error) or f"{owner}: invalid") from None

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON schema of the section, with every field's description."""
        return _adapter(cls).json_schema()


def section_fields(cls: Any) -> dict[str, Any]:
    """Field name → pydantic ``FieldInfo`` of a section class ({} for anything else)."""
    return dict(getattr(cls, "__pydantic_fields__", None) or {}) if isinstance(cls, type) else {}


def field_descriptions(cls: type) -> dict[str, str | None]:
    """Field name → its description (the docstring under the field), for ``--explain`` and tests."""
    return {f.name: cls.__pydantic_fields__[f.name].description for f in dataclasses.fields(cls)}
