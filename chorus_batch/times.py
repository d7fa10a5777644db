"""Times as the manifest stores them: UTC, ISO 8601 to the second, with a Z; file times as 64-bit nanoseconds."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


MAX_NS, MIN_NS = 2**63 - 1, -(2**63)  # int64 nanoseconds: 1677-09-21 .. 2262-04-11


def clamp_ns(ns: int) -> int:
    """A time in nanoseconds as the manifest's 64-bit column holds it (the nearest representable one)."""
    return min(max(ns, MIN_NS), MAX_NS)
