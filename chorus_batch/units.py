"""How sizes are written for people: one formatter, so the run summary, the progress lines,
the HTML report and its plot axes use the same (binary, IEC) units."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float | None, *, significant: int | None = None) -> str:
    """'512 B', '1.5 KiB', '3.2 GiB'; '' for None. With `significant`, that many significant
    digits in every unit ('1.23 KiB', '500 B'), as plot ticks want."""
    if n is None:
        return ""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    if significant is not None:
        return f"{value:.{significant}g} {unit}"
    return f"{round(value):,} B" if unit == "B" else f"{value:,.1f} {unit}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 file', '2 files', '0 errors': the count and the word, in the plural unless the count is one
    (`many` for a word whose plural is not word + 's')."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
