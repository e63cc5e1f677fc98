"""Progress for long work (layers, calibration batches): a bar on a terminal, sparse plain
lines otherwise (at most about ten per loop), nothing when OPTIMIZER_PROGRESS=0."""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, label: str) -> Iterator[T]:
    stream = sys.stderr
    if os.environ.get("OPTIMIZER_PROGRESS") == "0" or total <= 0:
        yield from items
        return
    tty = stream.isatty()
    start = time.perf_counter()
    every = max(1, total // 10)
    for i, item in enumerate(items, 1):
        yield item
        elapsed = time.perf_counter() - start
        if tty:
            filled = int(30 * i / total)
            stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {i}/{total} "
                         f"{elapsed:.0f}s")
            if i == total:
                stream.write("\n")
            stream.flush()
        elif i % every == 0 or i == total:
            stream.write(f"{label}: {i}/{total} ({elapsed:.1f} s)\n")
            stream.flush()
