"""The base of every config section, and how a check across keys names the key at fault.

A leaf module (pydantic only): the sections of config/schema.py and the settings classes
that each decoder owns in its own file (config/attention.py, config/transformer.py) derive
from `Section`, so an unknown key or a bad value anywhere is the same one-line error.
"""

from __future__ import annotations

from typing import Any

from pydantic import AfterValidator, BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are refused, no number is infinite or NaN (a rate of
    .inf trains to a NaN loss), and a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def at_most(limit: float, why: str) -> AfterValidator:
    """The upper bound of a size, length, width or count a file or flag can set, with the
    reason it is there, for `Annotated[int, Field(ge=1), at_most(20, "...")]`: every such key
    has one, so no input can ask for unbounded time or memory."""

    def check(value: Any) -> Any:
        if value is not None and value > limit:
            raise ValueError(f"{value} is above the limit of {limit:,}: {why}")
        return value

    return AfterValidator(check)


class KeyProblem(ValueError):
    """A bad value of one key of a section, found by a check across its keys: the error then
    names `section.key`, not the section alone."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
