"""What long-running commands (the radar, the examples, the benchmarks) say while they work, on stderr.

``progress(label)`` prints ``label ...`` before a step and its duration after it; on a terminal the
elapsed seconds tick while it runs (a compile takes minutes). ``progress(label, total=n)`` yields an
``advance()`` to call after each of ``n`` parts and draws a bar of the parts done.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

BAR_WIDTH = 24


@contextlib.contextmanager
def progress(label: str, total: int | None = None, stream: TextIO | None = None) -> Iterator[Callable[[], None]]:
    """Say ``label`` before a step and its duration after it; with ``total``, a bar advanced by the yielded function."""
    out = stream if stream is not None else sys.stderr
    live = out.isatty()
    started = time.perf_counter()
    done = 0
    lock = threading.Lock()

    def line() -> str:
        elapsed = f"{time.perf_counter() - started:.0f} s"
        if total is None:
            return f"{label} ... {elapsed}"
        filled = BAR_WIDTH * done // max(total, 1)
        return f"{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} {elapsed}"

    def draw() -> None:
        with lock:
            out.write("\r" + line())
            out.flush()

    def advance() -> None:
        nonlocal done
        done += 1
        if live:
            draw()
        elif done == total or done % max(1, (total or 1) // 10) == 0:  # a log: about ten lines per bar
            out.write(line() + "\n")
            out.flush()

    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(1.0):
            draw()

    ticker = threading.Thread(target=tick, daemon=True)
    if live:
        draw()
        ticker.start()
    else:
        out.write(f"{label} ...\n")
        out.flush()
    outcome = "failed after"
    try:
        yield advance
        outcome = "done in"
    finally:
        stop.set()
        if live:
            ticker.join()
        parts = f" {done}/{total}" if total is not None else ""
        end = f"{label}:{parts} {outcome} {time.perf_counter() - started:.1f} s"
        with lock:
            out.write(("\r" + end.ljust(len(line())) if live else end) + "\n")
            out.flush()
