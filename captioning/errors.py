"""Errors a person can act on, raised across the package; the CLI prints each as one line.

A leaf module: it imports nothing of ours and nothing heavy, so the CLI catches these
without loading TensorFlow, and every other module may raise them.
"""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of `error`'s message, cut to `limit` characters: what a one-line error
    quotes of a library's (often many-line) exception."""
    return (str(error).strip().splitlines() or [""])[0][:limit]


class CaptioningError(Exception):
    """Base of every error whose message is meant for the user as it is: the CLI prints it as
    `error: <message>` and exits 2, with no traceback."""


class ConfigError(CaptioningError, ValueError):
    """A config file, key or value that cannot be used; the message names it."""


class DatasetError(CaptioningError, ValueError):
    """The dataset on disk is missing or malformed; the message names the file (and line)."""


class ModelDirError(CaptioningError, ValueError):
    """A path that is not a usable captioning model directory."""


class TrackingError(CaptioningError, RuntimeError):
    """The tracking server cannot be used; the message says which and how to fix it."""


class RegistryError(CaptioningError, ValueError):
    """A model cannot be promoted or fetched; the message names the sweep, run or URI."""


class WriteError(CaptioningError, OSError):
    """A file could not be written (disk full, no permission); the message names the file and
    says what was kept. The file it was to replace is unchanged."""


class TrainingError(CaptioningError, RuntimeError):
    """Training cannot go on (the loss is no longer a number); the message says what was kept
    and which setting to change."""
