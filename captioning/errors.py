"""Errors a person can act on, raised across modules; the CLI prints them as one line.

Kept in a module with no heavy imports, so the CLI can catch them without loading TensorFlow.
"""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of `error`'s message, cut to `limit` characters: what a one-line error
    quotes of a library's (often many-line) exception."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


class ModelDirError(ValueError):
    """A path that is not a usable captioning model directory."""


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message says which and how to fix it."""


class RegistryError(ValueError):
    """A model cannot be promoted or fetched; the message names the sweep, run or URI."""


class WriteError(OSError):
    """A file could not be written (disk full, no permission); the message names the file and
    says what was kept. The file it was to replace is unchanged."""
