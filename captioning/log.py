"""How the package's log lines look, set once for each kind of process that shows them: the
`captioning` command, a sweep's trial workers and the feature-extraction child process; and
TensorFlow's and JAX's start-up lines kept out of them.

A leaf module: standard library only.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

FORMAT = "%(levelname)s %(name)s: %(message)s"


def show_info_logs() -> None:
    """Show INFO lines and above on stderr (a process that starts with logging unset)."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)


# TensorFlow's C++ log level where the user set none: its INFO, WARNING and ERROR lines hidden
# (`failed call to cuInit` on a machine without a GPU is an ERROR line). Ours are Python's.
TF_LOG_LEVEL = "3"
# Drops the lines TensorFlow writes before it reads TF_CPP_MIN_LOG_LEVEL (absl logs each one
# to stderr until it is initialised: `oneDNN custom operations are on`, `Could not find cuda
# drivers`) whose severity the level hides, and absl's line that says so; passes on the rest,
# a line at a time. A process of its own, so that what a crash of the import wrote still
# reaches the terminal.
_FILTER = r"""
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's, not the filter's
level = int(sys.argv[1])
logged = re.compile(rb"([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
try:
    for line in sys.stdin.buffer:
        found = logged.match(line)
        if (found and "IWEF".index(found[1].decode()) < level
                or line.startswith(b"WARNING: All log messages before absl::InitializeLog()")):
            continue
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
except OSError:
    pass
"""


def tensorflow_log_level() -> int:
    """TensorFlow's C++ log level for this process: TF_CPP_MIN_LOG_LEVEL (0 shows every line,
    3 only FATAL ones), 0 where it is not a number."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def quiet_start_up() -> None:
    """Keep TensorFlow's and JAX's start-up lines off stderr (they are not ours, and one
    reads as an error), unless the user set TF_CPP_MIN_LOG_LEVEL (0 shows them all): it is
    set to 3, which the processes this one starts inherit; the lines TensorFlow writes before
    it reads the variable are filtered by it when `import tensorflow` runs; JAX's INFO lines
    (`Unable to initialize backend 'tpu'`) are hidden, its warnings kept."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    level = tensorflow_log_level()
    if level > 0:
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    if level > 0 and "tensorflow" not in sys.modules and sys.executable \
            and not any(isinstance(finder, _QuietImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport(level))


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do, its module run with stderr filtered."""

    def __init__(self, level: int) -> None:
        self.level = level

    def find_spec(self, name: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: find the real one, then get out of the way
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None \
                and hasattr(spec.loader, "exec_module"):
            run = spec.loader.exec_module
            level = self.level

            def exec_module(module: ModuleType) -> None:
                with stderr_filtered(level):
                    run(module)

            spec.loader.exec_module = exec_module  # this spec's own loader object
        return spec


@contextmanager
def stderr_filtered(level: int) -> Iterator[None]:
    """File descriptor 2 (C++ code's stderr, and Python's) piped through `_FILTER` at
    `level` for the duration, every line it keeps written out before this returns."""
    sys.stderr.flush()
    saved = os.dup(2)
    read, write = os.pipe()
    try:
        filtering = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, str(level)],
                                     stdin=read, stdout=saved, stderr=saved)
    except OSError:  # no filter, no filtering: the lines are shown
        for fd in (read, write, saved):
            os.close(fd)
        yield
        return
    os.close(read)
    os.dup2(write, 2)
    os.close(write)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer gone: the filter reads to its end
        os.close(saved)
        try:
            filtering.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a process the import started holds the pipe
            pass
