"""Fault-injection points for the crash and signal tests: with CHORUS_BATCH_TEST_PAUSE=<point>,
the run announces the point on stderr and waits there to be killed or signalled; with
<point>+<seconds> it waits that long and goes on (time for a test to break something under it,
e.g. stop a storage service mid-run). With CHORUS_BATCH_TEST_RESUME=<file> too, it goes on as soon as that
file exists (a test lets it go once it has seen what it waits for, rather than sleeping a fixed time).
Costs one environment lookup per point reached."""

from __future__ import annotations

import os
import sys
import time


def pause(point: str) -> None:
    wanted = os.environ.get("CHORUS_BATCH_TEST_PAUSE")
    if wanted is None or wanted.partition("+")[0] != point:
        return
    print(f"chorus-batch: test pause at {point}", file=sys.stderr, flush=True)
    # In short sleeps: a signal the kernel hands to another thread (polars', jemalloc's) does not wake a long
    # sleep of the main thread, whose handler then waited the whole pause (a CI test timed out at 60 s of 600)
    until = time.monotonic() + float(wanted.partition("+")[2] or 600)
    resume = os.environ.get("CHORUS_BATCH_TEST_RESUME")
    while time.monotonic() < until and not (resume and os.path.exists(resume)):
        time.sleep(0.05)
