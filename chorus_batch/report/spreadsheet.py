"""CSV that a spreadsheet opens as text: a cell is never run as a formula.

A file named `=HYPERLINK("http://…",…)`, `+cmd`, `-1+1` or `@SUM(…)` is a formula to Excel, LibreOffice and
Google Sheets when a reviewer opens `changes.csv` (CSV injection). As OWASP advises, a text cell that starts with
`=`, `+`, `-`, `@`, a tab or a carriage return is written with a `'` in front, which the spreadsheet shows and
does not run. So that nothing is lost for a program reading the CSV, a cell that starts with quotes followed by
one of those characters gets one quote more too (`'=x` is written `''=x`): the program removes one leading `'`
from a cell matching `^'+[=+\\-@\\t\\r]` (`unquote`) and has the name exactly. Every other cell, numbers included,
is written as it is. `--json` gives every name exactly.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

FORMULA_START = r"^'*[=+\-@\t\r]"  # a cell a spreadsheet would run, or one already quoted for it
_QUOTED = r"^'+[=+\-@\t\r]"
PROTECTED_NOTE = ("{n} with =, +, -, @, a tab or a carriage return, which a spreadsheet runs as a formula: "
                  "written with a ' in front (one more ' where a cell already began with ' before one of them), "
                  "which a spreadsheet shows as text; --json gives every name exactly")


def protect(frame: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The frame with its risky text cells quoted, and how many were."""
    text = [name for name, dtype in frame.schema.items() if dtype == pl.String]
    if not text or frame.height == 0:
        return frame, 0
    risky = {name: pl.col(name).str.contains(FORMULA_START).fill_null(False) for name in text}
    count = int(frame.select(pl.sum_horizontal(expr.sum() for expr in risky.values())).item())
    if count == 0:
        return frame, 0
    return frame.with_columns(pl.when(risky[name]).then(pl.lit("'") + pl.col(name)).otherwise(pl.col(name)).alias(name)
                              for name in text), count


def unquote(frame: pl.DataFrame) -> pl.DataFrame:
    """What `protect` wrote, read back exactly (every text column)."""
    return frame.with_columns(pl.when(pl.col(name).str.contains(_QUOTED)).then(pl.col(name).str.slice(1))
                              .otherwise(pl.col(name)).alias(name)
                              for name, dtype in frame.schema.items() if dtype == pl.String)


def csv_text(frame: pl.DataFrame) -> tuple[str, int]:
    """The frame as CSV with a header row, safe to open in a spreadsheet; and how many cells were quoted."""
    safe, count = protect(frame)
    return safe.write_csv(), count


def write_csv(frame: pl.DataFrame, path: str | Path) -> int:
    """Write the frame to `path` as `csv_text` does, atomically and owner-only (it holds person ids); returns how
    many cells were quoted."""
    from ..fsutil import write_private

    text, count = csv_text(frame)
    write_private(path, text.encode("utf-8"))
    return count


def protected_note(count: int) -> str:
    """The line said on stderr when cells were quoted (count > 0)."""
    return PROTECTED_NOTE.format(n="1 cell starts" if count == 1 else f"{count:,} cells start")
