"""The one way the jobs package declares a configuration section, and how its errors read.

    class TrainSpec(Section):
        epochs: int = Field(default=1, gt=0)
        \"\"\"Passes over the training split.\"\"\"

A section is a frozen pydantic model that rejects unknown keys; the docstring under a field is
its description (`use_attribute_docstrings`), shown by `isrn train SPEC --explain`. The job spec,
the Tune section and the local platform's configuration are all sections; the model and loader
sections they embed are the `isrn_model` and `data_shards` dataclasses.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              protected_namespaces=())


def describe_errors(error: ValidationError) -> str:
    """`a.b: message; c: unknown key`: every problem of a validation error, by dotted field path."""
    problems = []
    for e in error.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] in {"extra_forbidden", "unexpected_keyword_argument"}:
            message = "unknown key"
        problems.append(f"{where}: {message}")
    return "; ".join(problems)
