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

from isrn_model.section import describe_errors as _describe_errors


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              protected_namespaces=())


def describe_errors(error: ValidationError) -> str:
    """`a.b: message; c: unknown key`: every problem of a validation error, by dotted field path."""
    return _describe_errors("", error) or "(top level): invalid"
