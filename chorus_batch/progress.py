"""Progress for people and for batch schedulers.

On a terminal: tqdm bars on stderr. Elsewhere (a Slurm log, a cron mail): one
plain, timestamped line every few seconds (CHORUS_BATCH_PROGRESS_S, default 5), so a log shows the
run is alive without filling up, with the rate and, where the total is known, the time left
("hashing: 12,000/20,000 files, 1.1 GiB/4.0 GiB, 310.2 MiB/s, ETA 00:09"), and a last line when
the stage ends.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from .units import human_bytes, plural

log = logging.getLogger("chorus_batch")


class Progress:
    def __init__(self, *, stream: TextIO | None = None, quiet: bool = False, interval_s: float | None = None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        # tqdm's bars need a width: a terminal that reports 0 columns (`script`, some CI consoles and serial
        # lines, with no `stty cols`) showed no bar at all, a 9-second stage silent; there, the log lines
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) and terminal_columns(self.stream) > 0
        self.interval_s = interval_s if interval_s is not None else log_interval_s()

    def stage(self, message: str) -> None:
        if not self.quiet:
            log.info(message)

    @contextmanager
    def counter(self, label: str, unit: str, poll: Callable[[], tuple[int, int]], total: tuple[int, int] | None = None,
                detail: Callable[[], str] | None = None) -> Iterator[None]:
        """Report `poll()` = (items, bytes) until the block ends. `unit` is the singular ("file"); the lines
        say "1 file", "0 files", "3/5 files"; `detail()`: what the items are, said after them ("3 sent, 1 skipped")."""
        if self.quiet:
            yield
            return
        stop, failed = threading.Event(), threading.Event()
        bar = None
        if self.tty:
            from tqdm import tqdm

            # tqdm glues its unit to the number ("0files", "?files/s"): give it the space, in the plural.
            units = plural(0, unit).partition(" ")[2]
            bar = tqdm(total=total[0] if total else None, desc=label, unit=" " + units, file=self.stream, leave=False,
                       dynamic_ncols=True, mininterval=0.2)

        def report() -> None:
            started = last_log = time.monotonic()
            shown = logged = 0
            while not stop.wait(min(0.2, self.interval_s) or 0.05):
                items, size = poll()
                if bar is not None:
                    bar.update(items - shown)
                    shown = items
                    said = ", ".join(part for part in (detail() if detail else "", human_bytes(size) if size else "") if part)
                    if said:
                        bar.set_postfix_str(said, refresh=False)
                elif time.monotonic() - last_log >= self.interval_s:
                    last_log = time.monotonic()
                    log.info(progress_line(label, unit, items, size, total, last_log - started,
                                           detail=detail() if detail else ""))
                    logged += 1
            if bar is None and (logged or self.interval_s == 0):  # under a scheduler: say that the stage ended
                items, size = poll()
                log.info(progress_line(label, unit, items, size, total, time.monotonic() - started, done=True,
                                       stopped=failed.is_set(), detail=detail() if detail else ""))

        thread = threading.Thread(target=report, name="chorus-progress", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:  # a signal, an error: the stage did not finish, and its last line says so
            failed.set()
            raise
        finally:
            stop.set()
            thread.join()
            if bar is not None:
                bar.close()


def terminal_columns(stream: TextIO) -> int:
    """The width the terminal `stream` reports (0: none reported, or not known)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):  # (no file descriptor, or not a terminal's)
        return 0


def log_interval_s() -> float:
    """Seconds between progress lines when not on a terminal: CHORUS_BATCH_PROGRESS_S, else 5."""
    try:
        return max(0.0, float(os.environ.get("CHORUS_BATCH_PROGRESS_S", "5")))
    except ValueError:
        return 5.0


def progress_line(label: str, unit: str, items: int, size: int, total: tuple[int, int] | None, elapsed_s: float,
                  *, done: bool = False, stopped: bool = False, detail: str = "") -> str:
    """One log line of a stage: "hashing: 12,000/20,000 files, 1.1 GiB/4.0 GiB, 310.2 MiB/s, ETA 00:09".
    The rate is of bytes where the stage reads them, else of items; the ETA (tqdm's interval format, as
    the terminal's bar shows it) from the bytes left where the total bytes are known, else the items left."""
    from tqdm import tqdm

    word = plural(total[0] if total else items, unit).partition(" ")[2]
    counted = (f"{items:,}/{total[0]:,} {word}" if total else f"{items:,} {word}") + (f" ({detail})" if detail else "")
    # The total is the listed sizes: files written since (grown) or read again (changed while read) pass it, and
    # "1.2 GiB/1.0 GiB" with an ETA of 00:00 read as a broken meter. Said as more than listed, the ETA from the files.
    beyond = bool(total and total[1] and size > total[1])
    sized = (f", {human_bytes(size)}" + (f" (more than the {human_bytes(total[1])} listed: files grew or were read "
                                         "again since)" if beyond else f"/{human_bytes(total[1])}" if total and total[1]
                                         else "")) if size else ""
    if elapsed_s <= 0:
        rate = ""
    elif size:
        rate = f", {human_bytes(size / elapsed_s)}/s"
    else:
        rate = f", {items / elapsed_s:,.0f} {plural(2, unit).partition(' ')[2]}/s"
    if done:
        ended = "stopped after" if stopped else "done in"
        return f"{label}: {counted}{sized}{rate}, {ended} {tqdm.format_interval(elapsed_s)}"
    eta = ""
    if total and elapsed_s > 0:
        if total[1] and size and not beyond:
            eta = f", ETA {tqdm.format_interval(max(0, total[1] - size) / (size / elapsed_s))}"
        elif items:
            eta = f", ETA {tqdm.format_interval(max(0, total[0] - items) / (items / elapsed_s))}"
    return f"{label}: {counted}{sized}{rate}{eta}, {tqdm.format_interval(elapsed_s)} elapsed"


class _MaskingFormatter(logging.Formatter):
    """Log lines, a traceback's (-v) included, with the secrets they quote masked: an exception's text may hold the
    URL or connection string it was given."""

    def format(self, record: logging.LogRecord) -> str:
        from .urls import scrub

        return scrub(super().format(record))


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # each line with its UTC offset: version labels are UTC, and a node's zone (or a DST change) is not the reader's
    handler.setFormatter(_MaskingFormatter("%(asctime)s chorus-batch: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger("chorus_batch")
    root.handlers[:] = [handler]
    # -q silences progress (Progress(quiet)) and the info lines; -v adds stage timings, with -q too: `-q -v` in a cron
    # line asks for the timings without the progress (quiet dropped them without a word)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    # The Azure SDK logs a failed sign-in itself (DefaultAzureCredential: a page per attempt, once per retry); with
    # no handler of ours Python's last-resort handler printed it before the one message that says what to do.
    # --verbose keeps it (the SDK's own account of each credential tried).
    azure = logging.getLogger("azure")
    azure.handlers[:] = [] if verbose else [logging.NullHandler()]
    # A record no handler takes (the SDK's under --verbose, botocore's, urllib3's) went to Python's last-resort
    # handler as it was: a SAS URL or an account key in the SDK's warning reached the cron mail and the job log.
    # The last resort masks too, as ours do (a handler on the root logger, set by whoever embeds us, still wins).
    logging.lastResort = _LastResort()


class _LastResort(logging.StreamHandler):
    """Python's last resort (warnings and worse to whatever stderr is at the time), masked; lines named by their
    logger, as they are not the tool's own."""

    def __init__(self) -> None:
        super().__init__()
        self.setLevel(logging.WARNING)
        self.setFormatter(_MaskingFormatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S%z"))

    @property  # type: ignore[override]
    def stream(self):  # sys.stderr when written: a test's capture, or a stream replaced since
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass
