"""How sizes are written for people: one formatter, so the run summary, the progress lines
and the HTML report use the same (binary, IEC) units."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None) -> str:
    """'512 B', '1.5 KiB', '3.2 GiB'; '' for None."""
    if n is None:
        return ""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{round(value):,} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return ""
