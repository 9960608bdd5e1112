"""Lines for the person watching a run (no torch import: the CLI's ``--help`` uses it)."""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["say"]


def say(text: str, file: Any = None) -> None:
    """Print ``text``; a closed pipe or terminal is not an error (the run's files are
    what matters), and later writes to that stream go nowhere.

    Examples:
        >>> from torchdreamer.training.console import say
        >>> say("update: eager (--compile off)")
        update: eager (--compile off)
    """
    file = sys.stdout if file is None else file
    try:
        print(text, file=file, flush=True)
    except (OSError, ValueError):
        try:  # no "Exception ignored" from the interpreter flushing it at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), file.fileno())
        except (OSError, ValueError):
            pass
