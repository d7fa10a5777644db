"""Which findings a reader asks for: one filter for `validate --rule/--severity/--path` and the review API's
`findings(rule=, severity=, path=)`, so that the command line and a notebook never keep different findings."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import polars as pl

from ..errors import UsageError
from ..units import closest, shown

SEVERITIES = ("error", "warning", "info")  # most serious first: --severity warning keeps errors and warnings


def finding_filter(rule: str | Iterable[str] | None = None, severity: str | None = None, path: str | None = None,
                   *, cli: bool = False) -> Callable[[pl.DataFrame], pl.DataFrame] | None:
    """The filter keeping the findings of these rules (an id, a family `dicom.` or `dicom.*`, a glob), of this
    severity or a more serious one, and of this file or the files under this folder (site-relative; a glob matches
    whole paths); None where nothing is asked. Checked before anything is read: a rule id no rule has, an unknown
    severity or an empty path is a UsageError naming the option (`--rule` with `cli`, else `rule=`)."""
    def named(option: str) -> str:
        return f"--{option}" if cli else f"{option}="

    # (one rule not text, rule=5, is said as such below: it was a TypeError, 'int' object is not iterable)
    rules = [rule] if isinstance(rule, str) or not isinstance(rule, Iterable) else list(rule)
    rules = [] if rules == [None] else rules
    if not rules and severity is None and path is None:
        return None
    from . import RULES

    # (import.*: the findings `import-journal` gives a first version, named by the journal's rows, not checks here)
    ids = [r.id for r in RULES] + ["import.*"]
    patterns: list[str] = []
    for typed in rules:
        if not isinstance(typed, str):
            raise UsageError(f"a rule is text, not {type(typed).__name__} {typed!r}", where=named("rule"),
                             fix="give a rule id (wfdb.bad_header), a family (dicom.) or a glob (*.missing*)")
        word = typed.strip()
        pattern = word + "*" if word.endswith(".") else word  # dicom. is the family, as dicom.* is
        if not word or not (fnmatch.filter(ids, pattern) or word.startswith("import.")):
            families = sorted({i.split(".")[0] + "." for i in ids})
            meant = closest(word, ids) or closest(word.rstrip(".*") + ".", families)
            raise UsageError(f"no validation rule is {shown(typed)!s}" + (f"; did you mean {meant}?" if meant else ""),
                             where=named("rule"),
                             fix="give a rule id as `chorus-batch validate --help` lists them (wfdb.bad_header), a "
                                 "family (dicom.) or a glob (*.missing*)")
        patterns.append(pattern)
    if severity is not None and severity not in SEVERITIES:
        raise UsageError(f"no severity is {severity!r}", where=named("severity"),
                         fix="give error, warning or info (warning keeps the errors and the warnings)")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise UsageError(f"{named('path')} is {'empty' if isinstance(path, str) else f'not text: {path!r}'}",
                         where=named("path"),
                         fix="give a site-relative file or folder (OMOP, 000123) or a glob ('*/Images/*')")

    def chosen(findings: pl.DataFrame, folder_of: Callable[[str], str | None] | None = None) -> pl.DataFrame:
        """`folder_of`: a reader's ManifestReader._folder, reading a path as `files --path` does (`./`, an absolute
        path under a recorded root; one under none: nothing). Without it `validate --path ./000001` or the site's
        absolute path showed no finding, and `/000001` (no root) those of 000001."""
        keep = pl.lit(True)
        if patterns:
            names = [r for r in findings["rule"].unique().to_list() if any(fnmatch.fnmatchcase(r, p) for p in patterns)]
            keep = keep & pl.col("rule").is_in(names)
        if severity is not None:
            keep = keep & pl.col("severity").is_in(list(SEVERITIES[:SEVERITIES.index(severity) + 1]))
        if path is not None:
            where = path.strip().replace("\\", "/").strip("/")
            if any(c in where for c in "*?["):
                files = [f for f in findings["srcfile"].drop_nulls().unique().to_list()
                         if fnmatch.fnmatchcase(f, where) or fnmatch.fnmatchcase(f.rstrip("/"), where)]
                keep = keep & pl.col("srcfile").is_in(files)
            else:
                if folder_of is not None:
                    where = folder_of(path.strip())
                if where is None:
                    keep = pl.lit(False)
                elif where or folder_of is None:  # (read by a reader, "" is the site's root: every finding)
                    keep = keep & ((pl.col("srcfile").str.strip_chars_end("/") == where)
                                   | pl.col("srcfile").str.starts_with(where + "/"))
        return findings.filter(keep)

    return chosen
