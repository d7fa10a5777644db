"""Progress for people and for batch schedulers.

On a terminal: tqdm bars on stderr. Elsewhere (a Slurm log, a cron mail): one
plain, timestamped line every few seconds, so a log shows the run is alive
without filling up.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .units import human_bytes, plural

log = logging.getLogger("chorus_batch")


class Progress:
    def __init__(self, *, stream: TextIO | None = None, quiet: bool = False, interval_s: float = 5.0):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s

    def stage(self, message: str) -> None:
        if not self.quiet:
            log.info(message)

    @contextmanager
    def counter(self, label: str, unit: str, poll: Callable[[], tuple[int, int]], total: tuple[int, int] | None = None) -> Iterator[None]:
        """Report `poll()` = (items, bytes) until the block ends. `unit` is the singular ("file"); the lines
        say "1 file", "0 files", "3/5 files"."""
        if self.quiet:
            yield
            return
        stop = threading.Event()
        bar = None
        if self.tty:
            from tqdm import tqdm

            # tqdm glues its unit to the number ("0files", "?files/s"): give it the space, in the plural.
            units = plural(0, unit).partition(" ")[2]
            bar = tqdm(total=total[0] if total else None, desc=label, unit=" " + units, file=self.stream, leave=False,
                       dynamic_ncols=True, mininterval=0.2)

        def report() -> None:
            started = last_log = time.monotonic()
            shown = 0
            while not stop.wait(0.2):
                items, size = poll()
                if bar is not None:
                    bar.update(items - shown)
                    shown = items
                    if size:
                        bar.set_postfix_str(human_bytes(size), refresh=False)
                elif time.monotonic() - last_log >= self.interval_s:
                    last_log = time.monotonic()
                    elapsed = last_log - started
                    rate = f", {human_bytes(size / elapsed)}/s" if size and elapsed else ""
                    sized = f", {human_bytes(size)}" + (f"/{human_bytes(total[1])}" if total else "") if size else ""
                    counted = f"{items}/{plural(total[0], unit)}" if total else plural(items, unit)
                    log.info(f"{label}: {counted}{sized}{rate}, {elapsed:.0f} s")

        thread = threading.Thread(target=report, name="chorus-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if bar is not None:
                bar.close()


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s chorus-batch: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger("chorus_batch")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
