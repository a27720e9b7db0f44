"""The base of every config section, and how a check across keys names the key at fault.

A leaf module (pydantic only): the sections of config/schema.py and the settings classes
that each decoder owns in its own file (models/attention.py, models/transformer.py) derive
from `Section`, so an unknown key or a bad value anywhere is the same one-line error.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are refused, and a validated config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyProblem(ValueError):
    """A bad value of one key of a section, found by a check across its keys: the error then
    names `section.key`, not the section alone."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
