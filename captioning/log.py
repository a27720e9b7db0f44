"""How the package's log lines look, set once for each kind of process that shows them: the
`captioning` command, a sweep's trial workers and the feature-extraction child process.

A leaf module: standard library only.
"""

from __future__ import annotations

import logging

FORMAT = "%(levelname)s %(name)s: %(message)s"


def show_info_logs() -> None:
    """Show INFO lines and above on stderr (a process that starts with logging unset)."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
