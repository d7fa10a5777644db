"""The log an `upload --script` run writes (`uploaded<TAB><blob name>` per file sent), as `mark-uploaded` reads it:
the blob names it logged, those that are not a <version>/<site-relative path> blob, and the lines it does not know."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ..commit import _LABEL_RE
from ..errors import UsageError
from ..frames import UNSAFE_PATH, fmt

_LINE = r"^uploaded\t(.*)$"
_FIX = ("pass --from-log with the log the upload script wrote (upload.log by default, or $CHORUS_UPLOAD_LOG), as it "
        "wrote it or saved as UTF-8 (or UTF-16 with a byte-order mark, as Windows saves \"Unicode\")")


# How a line came to be cut short (a run of the script was stopped while it wrote it): the log ends in it, without its
# line end; a later run of an older script logged straight after it, on the same line; a later run ended it first (as
# the script does now) and logged after it, so it reads as a line of its own whose name is only the start of one.
_CUT = {
    "last": "the log's last line has no line end: the script was stopped while it wrote it, or the log was copied while "
            "the script ran",
    "joined": "a run of the script was stopped while it wrote it, and a later run logged after it on the same line",
    "ended": "a run of the script was stopped while it wrote it, and a later run logged after it",
}


@dataclass
class UploadLog:
    names: pl.DataFrame  # name, label, srcfile: each blob logged as sent (once), under the container's prefix
    invalid: list[tuple[str, str]]  # (blob name, why it names no file version)
    n_lines: int  # lines that are not blank
    not_understood: int  # lines that are not `uploaded<TAB><blob name>`
    example: str = ""  # the first of them: 'line N: ...'
    # blob name -> (its line, how it is cut: a _CUT key) of lines cut short (the script ends every line it writes with
    # '\n'): the name may be only the start of one, so what rejects it says so (a complete one the centre shows is still
    # recorded, and a name also logged whole on another line is that whole name)
    cut: dict[str, tuple[int, str]] = field(default_factory=dict)
    lines: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"name": pl.String, "line": pl.UInt32}))
    # (name, line: the first line that logs it) of every blob name logged

    def cut_short(self, name: str, why: str) -> str:
        """Why the blob `name` is not recorded: `why`, or that its line is cut short when it is one of the log's cut
        lines (then `why`, "not in that version's change set" of the start of a real name, sends the reader astray)."""
        if name not in self.cut:
            return why
        line, how = self.cut[name]
        where = f"line {line}, the log's last," if how == "last" else f"line {line}"
        return (f"{where} is cut short ({_CUT[how]}): the name may be only the start of one, and the centre shows no "
                f"blob of that name; run the script again to send and log that file, or `chorus-batch upload`")

    def ended_cut(self, names: pl.Series, known: pl.Series) -> None:
        """Note as cut short those of the logged `names` that are the start of one of the `known` blob names (the
        manifest's) and not one of them: a line a later run ended and logged after."""
        starts = pl.DataFrame({"name": names.filter(strict_starts(names, known))}, schema={"name": pl.String})
        found = self.lines.join(starts, on="name", how="semi").filter(~pl.col("name").is_in(list(self.cut)))
        self.cut.update({name: (line, "ended") for name, line in found.iter_rows()})


def strict_starts(names: pl.Series, of: pl.Series) -> pl.Series:
    """Whether each of `names` is the start of one of `of` without being one of them."""
    known = of.drop_nulls().unique().sort()
    if known.is_empty() or names.is_empty():
        return pl.Series([False] * names.len(), dtype=pl.Boolean)
    at = known.search_sorted(names, side="left")  # the first of `of` not before it: all that start with it follow it
    after = known.gather(at.clip(upper_bound=known.len() - 1))
    return ((at < known.len()) & (after != names) & after.str.starts_with(names)).fill_null(False)


def read_log(path: str, prefix: str, url: str) -> UploadLog:
    """The log at `path`; a UsageError when it cannot be read or is not text (a binary file, UTF-16 without a
    byte-order mark). UTF-8, with or without a byte-order mark, or UTF-16 with one: Windows PowerShell 5's `>` and
    Out-File write UTF-16LE with its mark (`.\\upload.ps1 > upload.log`, a log copied through Notepad's "Unicode"),
    whose encoding the mark makes unambiguous; it was refused as "not a text log", nothing recorded of what was sent."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the log: {exc.strerror or exc}", where=path, fix=_FIX) from None
    utf16 = raw.startswith((b"\xff\xfe", b"\xfe\xff"))
    try:
        if utf16:
            text = raw.decode("utf-16")
            if "\0" in text:  # (UTF-32LE begins with the same two bytes; or binary: nothing the script writes)
                raise UnicodeDecodeError("utf-16", raw, 0, 2, "a NUL character")
        else:
            if b"\0" in raw:  # UTF-16 without its mark, or binary: valid UTF-8 of nothing the script writes
                raise UnicodeDecodeError("utf-8", raw, raw.index(b"\0"), raw.index(b"\0") + 1, "a NUL byte")
            text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a text log of `upload --script` (" + (
            "it begins with a UTF-16 byte-order mark but is not UTF-16 text: cut short within a character, or a "
            "binary file" if utf16 else f"byte {exc.start} is not UTF-8 text: a binary file, or a log saved in another "
            "encoding such as UTF-16 without a byte-order mark") + ")", where=path, fix=_FIX) from None
    # Lines as the script ends them, '\n' (a '\r' before it, a log copied through Windows, is no part of a name: a
    # control character is no blob name upload sends). Not str.splitlines(), nor white space stripped: a name may
    # hold U+2028 or end with a space, sent as it is, and the log was read as another name ("not in that version's
    # change set") and a line not understood. A line holding `uploaded<TAB>` after its start is two: the first cut
    # short, and a later run of an older script logged straight after it (a tab is no part of a name either).
    lines = pl.DataFrame({"text": pl.Series(text.split("\n"), dtype=pl.String)}).with_row_index("line", offset=1)
    last_line = text.count("\n") + 1 if not text.endswith("\n") else 0  # (0: none, lines count from 1)
    lines = lines.with_columns(pl.col("text").str.strip_suffix("\r"), joined=pl.lit(False))
    two = pl.col("text").str.slice(1).str.contains("uploaded\t", literal=True)
    if (joined := lines.filter(two)).height:
        joined = (joined.with_columns(pl.col("text").str.replace_all("(.)uploaded\t", "${1}\0uploaded\t").str.split("\0"))
                  .explode("text").with_columns(joined=pl.int_range(pl.len()).over("line") < pl.len().over("line") - 1))
        lines = pl.concat([lines.filter(~two), joined]).sort("line", maintain_order=True)
    lines = lines.filter(pl.col("text").str.strip_chars() != "")
    lines = lines.with_columns(name=pl.col("text").str.extract(_LINE)).with_columns(
        cut=pl.when(pl.col("joined")).then(pl.lit("joined"))
        .when((pl.col("line") == last_line) & (pl.int_range(pl.len()) == pl.len() - 1)).then(pl.lit("last"))
        # (a line that is only the start of `uploaded<TAB>`: cut before its name began)
        .when(pl.col("name").is_null() & pl.lit("uploaded\t").str.starts_with(pl.col("text"))).then(pl.lit("ended")))
    unknown = lines.filter(pl.col("name").is_null() | (pl.col("name") == ""))
    example = "".join(f"line {n}: {t.strip()[:80]!r}" + (f" (cut short: {_CUT[how].split(':')[0]})" if how else "")
                      for n, t, how in unknown.head(1).select("line", "text", "cut").iter_rows())
    logged = lines.filter(pl.col("name") != "")
    # a name cut short on one line and logged whole on another is that whole name: nothing of it is cut
    cut = logged.filter(pl.col("cut").is_not_null()).unique("name", keep="first", maintain_order=True).join(
        logged.filter(pl.col("cut").is_null()), on="name", how="anti")
    names = logged.unique("name", keep="first", maintain_order=True).select("name", "line")
    under = pl.col("name").str.starts_with(prefix + "/") if prefix else pl.lit(True)
    relative = pl.col("name").str.slice(len(prefix) + 1) if prefix else pl.col("name")
    names = names.with_columns(under=under, label=relative.str.extract(r"^([^/]*)/"),
                               srcfile=relative.str.extract(r"^[^/]*/(.*)$"))
    why = (pl.when(~pl.col("under") | pl.col("label").is_null())
           .then(pl.lit(f"not a <version>/<path> blob under {url}"))
           .when(~pl.col("label").str.contains(_LABEL_RE.pattern)).then(fmt(
               "not a valid blob name: {} is not a version label (a blob is <version>/<site-relative path>)",
               pl.col("label").str.slice(0, 64)))
           .when((pl.col("srcfile") == "") | pl.col("srcfile").str.contains(UNSAFE_PATH)).then(fmt(
               "not a valid blob name: {} is not a site-relative path", pl.col("srcfile").str.slice(0, 200))))
    names = names.with_columns(why=why)
    invalid = names.filter(pl.col("why").is_not_null())
    log = UploadLog(names=names.filter(pl.col("why").is_null()).select("name", "label", "srcfile"),
                    invalid=[], n_lines=lines.height, not_understood=unknown.height, example=example,
                    cut={name: (line, how) for name, line, how in cut.select("name", "line", "cut").iter_rows()},
                    lines=names.select("name", "line"))
    log.invalid = [(name, why) for name, why in invalid.select("name", "why").iter_rows()]
    return log
