"""Times as the manifest stores them: UTC, ISO 8601 to the second, with a Z; file times as 64-bit nanoseconds."""

from __future__ import annotations

import re
from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# Extended (2026-11-27T03:00:00Z) or basic form (20261127T030000Z, which `date -u +%Y%m%dT%H%M%SZ` prints); a date
# alone in the basic form (20261127) is not taken: digits alone are version labels (20261127030000).
ISO_LIKE = re.compile(r"^(\d{4}-\d{2}-\d{2}|\d{8}T\d{2})", re.IGNORECASE)


_ZONE_WORD = re.compile(r"\s*(UTC|GMT|Z)$", re.IGNORECASE)
_SPACED_OFFSET = re.compile(r"\s+(?=[+-]\d\d:?\d\d$)")
# A date with a zone (XML Schema's xs:date, 2026-12-07+05:00 or 2026-12-07-05:00): that day's start in that zone.
# Python's fromisoformat takes any one character between the date and the time, so it read the zone as a time of day
# in UTC (05:00Z), and 2026-12-07x07:00 or 2026-12-07/08 as times: a version other than the one meant, silently.
_DATE_ZONE = re.compile(r"^(\d{4}-\d{2}-\d{2})([+-]\d\d:?\d\d)$")


def parse_time(text: str) -> datetime | None:
    """An ISO date or date-time (naive means UTC; the basic form 20261127T030000Z too), its zone also spelled z, UTC,
    GMT or ' +01:00' (as people type it); None if `text` is not one."""
    text = text.strip()
    if not ISO_LIKE.match(text):
        return None
    text = _SPACED_OFFSET.sub("", _ZONE_WORD.sub("+00:00", text))
    if dated := _DATE_ZONE.match(text):
        text = f"{dated.group(1)}T00:00:00{dated.group(2)}"
    elif len(text) > 10 and text[4] == "-" and text[10] not in "Tt ":  # the extended form: T or a space, as ISO 8601
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


MAX_NS, MIN_NS = 2**63 - 1, -(2**63)  # int64 nanoseconds: 1677-09-21 .. 2262-04-11


def clamp_ns(ns: int) -> int:
    """A time in nanoseconds as the manifest's 64-bit column holds it (the nearest representable one)."""
    return min(max(ns, MIN_NS), MAX_NS)
