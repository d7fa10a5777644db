"""The log an `upload --script` run writes (`uploaded<TAB><blob name>` per file sent), as `mark-uploaded` reads it:
the blob names it logged, those that are not a <version>/<site-relative path> blob, and the lines it does not know."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..commit import _LABEL_RE
from ..errors import UsageError
from ..frames import UNSAFE_PATH, fmt

_LINE = r"^uploaded\t(.*)$"
_FIX = ("pass --from-log with the log the upload script wrote (upload.log by default, or $CHORUS_UPLOAD_LOG), as it "
        "wrote it or saved as UTF-8 (or UTF-16 with a byte-order mark, as Windows saves \"Unicode\")")


@dataclass
class UploadLog:
    names: pl.DataFrame  # name, label, srcfile: each blob logged as sent (once), under the container's prefix
    invalid: list[tuple[str, str]]  # (blob name, why it names no file version)
    n_lines: int  # lines that are not blank
    not_understood: int  # lines that are not `uploaded<TAB><blob name>`
    example: str = ""  # the first of them: 'line N: ...'
    # the blob name of the log's last line when that line has no line end (the script ends every line it writes with
    # '\n': the script was stopped while it wrote it, or the log was copied while it ran), and its line number: it may
    # be only the start of a name, so what rejects it says so (a complete one the centre shows is still recorded)
    cut: tuple[str, int] | None = None

    def cut_short(self, name: str, why: str) -> str:
        """Why the blob `name` is not recorded: `why`, or that its line is cut short when it is the log's cut last line
        (then `why`, "not in that version's change set" of the start of a real name, sends the reader astray)."""
        if self.cut is None or name != self.cut[0]:
            return why
        return (f"line {self.cut[1]}, the log's last, is cut short (it has no line end: the script was stopped while it "
                f"wrote it, or the log was copied while the script ran): the name may be only the start of one, and the centre "
                f"shows no blob of that name; run the script again to send and log that file, or `chorus-batch upload`")


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
    # change set") and a line not understood.
    lines = pl.DataFrame({"text": pl.Series(text.split("\n"), dtype=pl.String)}).with_row_index("line", offset=1).filter(
        pl.col("text").str.strip_chars() != "").with_columns(pl.col("text").str.strip_suffix("\r"))
    lines = lines.with_columns(name=pl.col("text").str.extract(_LINE))
    unknown = lines.filter(pl.col("name").is_null() | (pl.col("name") == ""))
    last = lines.tail(1)
    cut_line = last["line"][0] if last.height and not text.endswith("\n") and last["line"][0] == text.count("\n") + 1 \
        else None
    example = "".join(f"line {n}: {t.strip()[:80]!r}"
                      + (" (cut short: the log's last line has no line end)" if n == cut_line else "")
                      for n, t in unknown.head(1).select("line", "text").iter_rows())
    names = lines.filter(pl.col("name") != "").unique("name", keep="first", maintain_order=True).select("name")
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
    cut_name = last["name"][0] if cut_line is not None else None
    log = UploadLog(names=names.filter(pl.col("why").is_null()).select("name", "label", "srcfile"),
                    invalid=[], n_lines=lines.height, not_understood=unknown.height, example=example,
                    # (a cut name logged whole on an earlier line is that whole name: nothing of it is cut)
                    cut=(cut_name, cut_line) if cut_name and lines.filter(pl.col("name") == cut_name).height == 1
                    else None)
    log.invalid = [(name, log.cut_short(name, why)) for name, why in invalid.select("name", "why").iter_rows()]
    return log
