"""Errors the toolchain raises on purpose.

`InvalidInput` is bad input from the user (a malformed file, a missing config key, an
unsupported architecture): the CLI prints its one line and exits 2. Anything else is an
internal or I/O error and exits 1.
"""

from __future__ import annotations

from pathlib import Path


class InvalidInput(Exception):
    """The user's input is wrong. `str()` is one line naming the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
