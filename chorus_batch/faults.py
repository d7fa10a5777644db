"""Fault-injection points for the crash and signal tests: with CHORUS_BATCH_TEST_PAUSE=<point>,
the run announces the point on stderr and waits there to be killed or signalled. Costs one
environment lookup per point reached."""

from __future__ import annotations

import os
import sys
import time


def pause(point: str) -> None:
    if os.environ.get("CHORUS_BATCH_TEST_PAUSE") == point:
        print(f"chorus-batch: test pause at {point}", file=sys.stderr, flush=True)
        time.sleep(600)
