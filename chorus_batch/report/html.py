"""A self-contained HTML data-quality report of one manifest version.

    from chorus_batch.report import write_report
    info = write_report("site_manifest.sqlite", "report.html")        # the latest version
    info.sections, info.images

One file, no external CSS, scripts, fonts or images: the plots (`plots`) are PNGs embedded as
`data:` URIs, and a Content-Security-Policy forbids loading anything else (and, as `default-src` does not cover
them, a `<base>` or a form target: `base-uri 'none'; form-action 'none'`). `_Report` gathers each
section's values from a `ManifestReader`; `templates/report.html.j2` lays them out, and Jinja2's
autoescaping escapes every value. Long tables are cut after `MAX_ROWS` rows with the command that
lists them all. The page holds person identifiers, so it is written owner-only.

Speed and memory: the version's file set is copied once, in slices, into the capped DuckDB database the
notebook uses (`ManifestReader.review_database`), and the page asks it for sums, per-person and per-session rows
and the first rows of long lists: the memory does not grow with the manifest (a 1M-file site). Plots are drawn
from aggregates (histogram counts, quartiles), never from one point per file.
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from jinja2 import Environment, PackageLoader, StrictUndefined

from .. import __version__
from ..frames import SEVERITY_ORDER
from ..fsutil import check_not_manifest, check_target, write_private, write_stdout
from ..review import (CHANGE_KINDS, OUTLIER_IQR, OUTLIER_MIN_DECADES, OUTLIER_MIN_FILES, PLAUSIBLE_FROM, RUN_OK_CODES,
                      RUNS_SHOWN, ManifestReader, open_manifest, other_rules_advice, size_flags,
                      unvalidated_advice)
from ..times import iso, utc_now
from ..units import counted, error_kind, home_relative, human_bytes, number, shown_name, shown_text
from . import plots
from .summary import findings_since_text

# Stable element ids of the sections, in page order, and their titles.
SECTION_IDS = (
    "summary", "runs", "changes-by-version", "persons", "sessions", "sizes",
    "duplicates", "scan-errors", "findings", "deleted",
)
TITLES = {
    "summary": "Summary",
    "runs": "Runs since the previous version",
    "changes-by-version": "Changes per version, modality and change kind",
    "persons": "Files and bytes per person",
    "sessions": "Waveform sessions",
    "sizes": "File sizes per modality: empty files and outliers",
    "duplicates": "Duplicate contents",
    "scan-errors": "Scan errors and unparseable paths",
    "findings": "Validation findings",
    "deleted": "Deleted and replaced since the previous version",
}
MAX_ROWS = 50  # rows shown of a long table
EXAMPLES = 3  # example paths per group
DELETED_SHARE_FLAG = 0.05  # removed + replaced over the previous version's files
PLOT_VERSIONS = 60  # versions drawn in the change plot (the latest ones)




@dataclass(frozen=True)
class ReportInfo:
    path: Path  # the HTML file written
    version: str  # the version label reported
    sections: tuple[str, ...]  # element ids of the sections, in page order
    images: int  # embedded PNG plots
    flags: tuple[str, ...] = field(default=())  # the "needs a look" lines of the summary
    elapsed_s: float = 0.0
    as_of: str | None = None  # a time given as the version: which version it selected (ManifestReader.as_of_note)


def write_report(manifest: str | Path | ManifestReader, out: str | Path, *, version: str | None = None,
                 named: str | None = None) -> ReportInfo:
    """Write the report of `version` (label or ISO time; default: the latest) to `out`, atomically and
    readable by its owner only. `manifest` is a SQLite manifest, a Parquet snapshot folder or an open reader.
    `named`: the manifest as the page names it and the `chorus-batch` commands it suggests take it, where
    `manifest` is a local copy of it (a manifest in Azure: its az:// URL); default: `manifest`'s absolute path."""
    started = time.perf_counter()
    to_stdout = str(out) == "-"  # `report --out - | ssh …`: the page on standard output, as tools take "-"
    if not to_stdout:
        check_target(out, example="report.html")  # before the work of rendering: a folder, a link, a device or a missing folder is refused
        check_not_manifest(out, manifest.path if isinstance(manifest, ManifestReader) else manifest)
    out = Path(out)  # (after: Path("") is ".", and Path("x/") drops the slash that says a folder is meant)
    reader = manifest if isinstance(manifest, ManifestReader) else open_manifest(manifest)
    with _Report(reader, reader.resolve(version), named) as report:
        if to_stdout:  # (UTF-8, as its <meta charset> says, whatever the code page a Windows redirect writes in)
            write_stdout(report.render())
            sys.stdout.flush()
        else:  # rendered into the temporary file once it is made: an unwritable folder fails now, not after the work
            write_private(out, lambda tmp: tmp.write_bytes(report.render().encode("utf-8")))
    return ReportInfo(path=out, version=report.label, sections=SECTION_IDS, images=report.images,
                      flags=tuple(report.flags), elapsed_s=round(time.perf_counter() - started, 3),
                      as_of=reader.as_of_note(version, report.label))


# ----------------------------------------------------------------------------- text of values (also Jinja filters)


_num = number  # (units.number: the notebook writes its numbers so too)


def _cell(value: object) -> str:
    """A table cell or a value of a list: numbers with thousands separators, yes/no, '' for None; control
    characters as escapes, as the terminal shows them (a browser shows a path's line break as a space), and so
    the invisible or look-alike characters of the paths a message embeds (units.shown_text)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return _num(value)
    return "" if value is None else shown_text(str(value))


def _name(value: object) -> str:
    """A path's cell: quoted with escapes where it would look like another path (units.shown_name)."""
    return shown_name(value) if value is None or isinstance(value, str) else _cell(value)


_n = counted  # '1 file', '2 files', '1,234 files' (units.counted, grouped as every number of the page)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _durations_said(durations: pl.Series, sessions: int) -> str:
    """The sessions line's durations: their median and maximum, and how many sessions have none ('1 session has',
    nothing when every session has one: it read '1 sessions have', '0 sessions have no duration')."""
    if not durations.len():
        return "no session has a duration in its names"
    said = f"median {_duration(durations.median())}, max {_duration(durations.max())}"
    without = sessions - durations.len()
    if without:
        has, its = ("has", "its") if without == 1 else ("have", "their")
        said += f"; {_n(without, 'session')} {has} no duration in {its} names"
    return said


@dataclass(frozen=True)
class Examples:
    """A few of a group's items (paths, or (path, message) pairs) and the group's size."""
    shown: list[Any]
    total: int

    @property
    def more(self) -> int:
        return self.total - len(self.shown)


@cache
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("chorus_batch.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(cell=_cell, name=_name, bytes=human_bytes, count=_n, pct=_pct,
                       columns=lambda names, kind, width: [(name, kind, width) for name in names])
    env.globals.update(max_rows=MAX_ROWS, titles=TITLES, section_ids=SECTION_IDS)
    return env


# ----------------------------------------------------------------------------- the sections' values


class _Report:
    """Each section's values for the template: a dict, or None where the section has nothing to show."""

    def __init__(self, reader: ManifestReader, label: str, named: str | None = None):
        self.reader = reader  # it keeps the version's file set after the first read
        self.label = label
        self.images = 0
        self.flags: list[str] = []  # the summary's "needs a look" lines, in page order
        versions = reader.versions()
        self.versions = versions.filter(pl.col("label") <= label)
        labels = self.versions["label"].to_list()
        self.previous = labels[-2] if len(labels) > 1 else None
        self.row = self.versions.row(len(labels) - 1, named=True)
        # The manifest the `python -c` commands open (open_manifest reads a local file or folder), and the one the
        # page names and its `chorus-batch` commands take: the same, unless the file read is a copy (of az://...)
        # (the home folder as '~', which open_manifest and --db read back: a shared page need not name it)
        self.local = home_relative(str(Path(reader.path).absolute()))
        self.remote = named is not None
        self.db = named or self.local
        # The site as the page titles it: a folder under the home folder as '~' too (a URL is left as recorded, its
        # secrets masked): the page's heading named the home folder its manifest line no longer did
        site = self.row.get("site")
        self.site = home_relative(site) if site else None
        # The version's files in DuckDB, not a polars frame: a frame of every file grew with the manifest.
        # Queries run one after the other: concurrent ADBC connections can meet SQLITE_BUSY while
        # one of them recovers the WAL index, and the gain on two cores was small.
        # The previous version's too, when there is one: the deleted section reads the diff in DuckDB (a version
        # that replaced every file of 1M was a 1.7 GB polars frame).
        tables = {"files": reader._file_slices(label)}
        if self.previous is not None:
            tables["base_files"] = reader._file_slices(self.previous)
        self.con, self._closing = reader.review_database(tables, version=label)

    def __enter__(self) -> _Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.close()  # the connection and its scratch folder

    def sql(self, query: str, **params: object) -> pl.DataFrame:
        return self.con.sql(query, params=params or None).pl()

    def one(self, query: str) -> tuple:
        return self.con.execute(query).fetchall()[0]  # (fetchall: the result is finished before the next query)

    # -- helpers
    def plot(self, image: plots.Image) -> plots.Image:
        self.images += 1
        return image

    def cli(self, *args: str) -> str:
        return shlex.join(["chorus-batch", *args])

    def py(self, expression: str, out_csv: str, *, also: str = "", polars: bool = False) -> str:
        # write_csv: owner-only, and a name that a spreadsheet would run as a formula is quoted (report.spreadsheet)
        # `polars`: the expression filters the rows its table shows (pl.col): a table's command writes those rows,
        # not a larger set they are drawn from
        code = (("import polars as pl; " if polars else "")
                + f"from chorus_batch.review import open_manifest{', ' + also if also else ''}; "
                "from chorus_batch.report.spreadsheet import write_csv; "
                f"m = open_manifest({json.dumps(self.local)}); write_csv({expression}, {json.dumps(out_csv)})")
        return shlex.join(["python", "-c", code])

    def flag(self, text: str) -> str:
        """A flag shown in its section and in the summary."""
        self.flags.append(text)
        return text

    # -- the page
    def render(self) -> str:
        # in page order, the summary last: it lists the flags the other sections raise
        sections = {"runs": self.runs(), "changes": self.changes_by_version(), "persons": self.persons(),
                    "persons_gone": self.persons_gone(), "sessions": self.sessions(),
                    "sizes": self.sizes(), "duplicates": self.duplicates(), "scan_errors": self.scan_errors(),
                    "findings": self.findings(), "deleted": self.deleted()}
        return _environment().get_template("report.html.j2").render(
            title=f"chorus-batch report — {shown_name(self.site or self.db)} — version {self.label}",
            summary=self.summary(), flags=self.flags, **sections,
            version=__version__, written=iso(utc_now()))

    # 1
    def summary(self) -> dict:
        row = self.row
        by_modality = self.sql("""SELECT coalesce(modality, 'Other') AS modality, count(*) AS files,
                                         coalesce(sum(size), 0)::BIGINT AS bytes, count(DISTINCT person_id) AS persons
                                  FROM files GROUP BY 1 ORDER BY 1""")
        n_files, n_bytes, n_persons = self.one(
            "SELECT count(*), coalesce(sum(size), 0)::BIGINT, count(DISTINCT person_id) FROM files")
        return {
            "heading": self.site or Path(self.db).name,
            "site": self.site or "unknown",
            "manifest": self.db,
            "label": self.label,
            "position": self.versions.height,
            "versions": self.reader.versions().height,
            "committed": row.get("finished_at") or "unknown",
            "mode": row.get("mode") or "unknown",
            "previous": self.previous or "none (first version)",
            "upload": row.get("upload") or "not uploaded (chorus-batch upload sends it)",
            "files": n_files,
            "bytes": n_bytes,
            "persons": n_persons,
            "by_modality": by_modality.rows(),
        }

    # 1b
    def runs(self) -> dict:
        """The runs since the previous version (every run, before the first version), up to the next version's commit
        (none: up to now): the nights a cron job committed nothing because it failed (refused by the lock, a mass
        removal or an empty root refused, a full disk, a signal, killed) are listed, the most recent first; a latest
        run that failed is flagged. No host, user or command line: the messages as `ManifestReader.runs` gives them."""
        since = f"version {self.previous}" if self.previous else "the first run"
        if not self.reader.records_runs:
            return {"since": since, "recorded": False}
        # an earlier version's report: the runs up to the next version's commit
        after = self.reader.versions().filter(pl.col("label") > self.label)["label"]
        until = after[0] if after.len() else None
        runs = self.reader.runs(since=self.previous, until=until)
        code = pl.col("exit_code")
        failed = runs.filter(code.is_not_null() & ~code.is_in(list(RUN_OK_CODES)))
        latest = runs.row(0, named=True) if runs.height else None
        flag = None
        if latest is not None and latest["exit_code"] is not None and latest["exit_code"] not in RUN_OK_CODES:
            which = f"The last run before version {until}" if until else "The latest run"
            flag = self.flag(f"{which}, started {latest['started_at']}, failed: exit code {latest['exit_code']}, "
                             f"{latest['outcome']}; {_n(failed.height, 'failed run')} since {since} "
                             f"(see “{TITLES['runs']}”).")
        shown = failed.head(RUNS_SHOWN)
        later = f" and before version {until}" if until else ""
        return {
            "since": since + later,
            "recorded": True,
            "runs": runs.height,
            "committed": int(runs["version"].is_not_null().sum()),
            "quiet": runs.filter(pl.col("version").is_null() & code.is_in(list(RUN_OK_CODES))).height,
            "unfinished": int(runs["exit_code"].is_null().sum()),
            "failed": failed.height,
            "flag": flag,
            "rows": [(r["started_at"], r["exit_code"], r["outcome"], r["message"] or "", r["what_to_do"])
                     for r in shown.iter_rows(named=True)],
            "command": self.py(f"m.runs(since={json.dumps(self.previous) if self.previous else None}, "
                               f"until={json.dumps(until) if until else None}, failed=True)", "failed_runs.csv"),
        }

    # 2
    def changes_by_version(self) -> dict | None:
        counts = self.reader.change_counts().filter(pl.col("version") <= self.label)
        if counts.height == 0:
            return None
        kinds = list(CHANGE_KINDS)
        wide = counts.pivot(on="change", index=["version", "modality"], values="n", aggregate_function="sum")
        for k in kinds:
            if k not in wide.columns:
                wide = wide.with_columns(pl.lit(0, pl.Int64).alias(k))
        wide = wide.with_columns([pl.col(k).fill_null(0) for k in kinds]).with_columns(
            total=pl.sum_horizontal(kinds)).sort(["version", "modality"], descending=[True, False])
        # the plot: one bar per version, stacked by change kind; and by modality
        per_version = (counts.group_by("version", "change").agg(pl.col("n").sum())
                       .pivot(on="change", index="version", values="n").sort("version"))
        per_modality = (counts.group_by("version", "modality").agg(pl.col("n").sum())
                        .pivot(on="modality", index="version", values="n").sort("version"))
        all_versions = self.versions.select("label").rename({"label": "version"})
        per_version = all_versions.join(per_version, on="version", how="left").fill_null(0).tail(PLOT_VERSIONS)
        per_modality = all_versions.join(per_modality, on="version", how="left").fill_null(0).tail(PLOT_VERSIONS)
        return {
            "plot": self.plot(plots.changes(per_version, per_modality, kinds)),
            "plotted": per_version.height,
            "versions": self.versions.height,
            "kinds": kinds,
            "rows": wide.select("version", "modality", *kinds, "total").rows(),
            # the table's rows (version, modality), one line per change kind; `versions` gave a version's totals
            "command": self.py(f'm.change_counts().filter(pl.col("version") <= {json.dumps(self.label)})',
                               "changes_per_version.csv", polars=True),
        }

    # 3
    def persons(self) -> dict | None:
        # as ManifestReader.files_per_person: one row per person
        fpp = self.sql("""SELECT person_id, count(*)::UINTEGER AS files, sum(size)::BIGINT AS bytes,
                                 string_agg(DISTINCT modality, ',' ORDER BY modality) AS modalities
                          FROM files WHERE person_id IS NOT NULL GROUP BY person_id ORDER BY person_id""")
        if fpp.height == 0:
            return None
        no_person = self.one("SELECT count(*) FROM files WHERE person_id IS NULL")[0]
        files_n, bytes_n = fpp["files"].to_numpy(), fpp["bytes"].to_numpy().astype(float)
        k = 5
        ranked = fpp.sort(["files", "bytes", "person_id"], descending=[True, True, False])
        rows = [("most files", *r) for r in ranked.head(k).iter_rows()]
        if fpp.height > k:
            rows += [("fewest files", *r) for r in ranked.tail(min(k, fpp.height - k)).reverse().iter_rows()]
        return {
            "persons": fpp.height,
            "files_per_person": f"median {np.median(files_n):,.0f}, min {files_n.min():,}, max {files_n.max():,}",
            "bytes_per_person": (f"median {human_bytes(np.median(bytes_n))}, min {human_bytes(bytes_n.min())}, "
                                 f"max {human_bytes(bytes_n.max())}"),
            "without_person": no_person,
            "plot": self.plot(plots.persons(files_n, bytes_n)),
            "rows": rows,  # (most/fewest files, person, files, bytes, modalities)
            "command": self.py(f"m.files_per_person({json.dumps(self.label)})", "persons.csv"),
        }

    def persons_gone(self) -> str | None:
        """The flag of the persons of the previous version with no file in this one, as the notebook's checklist
        says them ("persons: none disappeared"): the page said nothing of a person that vanished while the
        removals stayed under the deleted section's share (1 person of 100)."""
        if self.previous is None:
            return None
        gone = [row[0] for row in self.con.execute(
            """SELECT DISTINCT person_id FROM base_files WHERE person_id IS NOT NULL
               EXCEPT SELECT DISTINCT person_id FROM files WHERE person_id IS NOT NULL ORDER BY 1""").fetchall()]
        if not gone:
            return None
        shown = ", ".join(shown_name(person) for person in gone[:EXAMPLES])
        more = f" and {len(gone) - EXAMPLES:,} more" if len(gone) > EXAMPLES else ""
        return self.flag(f"{_n(len(gone), 'person')} of the previous version {self.previous} "
                         f"{'has' if len(gone) == 1 else 'have'} no file in this version: {shown}{more}.")

    # 4
    def sessions(self) -> dict | None:
        sessions = self.reader.sessions(self.label, con=self.con)  # grouped in DuckDB
        if sessions.height == 0:
            return None
        committed = datetime.now(UTC).replace(tzinfo=None)  # starts are naive date-times
        with contextlib.suppress(TypeError, ValueError):
            committed = datetime.fromisoformat(str(self.row.get("finished_at"))).astimezone(UTC).replace(tzinfo=None)
        start = pl.col("start")
        plausible = (start >= PLAUSIBLE_FROM) & (start <= committed)
        implausible = sessions.filter(start.is_not_null() & ~plausible)
        good = sessions.filter(start.is_not_null() & plausible)["start"]
        durations = sessions["duration_s"].drop_nulls()
        per_person = sessions.group_by("person_id").len("sessions")
        flag = None
        if implausible.height:
            flag = self.flag(f"{_n(implausible.height, 'waveform session')} start before {PLAUSIBLE_FROM:%Y} "
                             "or after the version was committed (left out of the timeline).")
        return {
            "sessions": sessions.height,
            "persons": per_person.height,
            "first": good.min() if good.len() else "",
            "last": good.max() if good.len() else "",
            "duration": _durations_said(durations, sessions.height),
            "files_bytes": f"{int(sessions['files'].sum()):,} files, {human_bytes(sessions['bytes'].sum())}",
            "no_start": int(sessions["start"].is_null().sum()),
            "flag": flag,
            "timeline": self.plot(plots.session_timeline(good)),
            "histograms": self.plot(plots.session_histograms(durations.to_numpy().astype(float),
                                                             per_person["sessions"].to_numpy())),
            "implausible": implausible.select("person_id", "session_id", "start", "files").head(MAX_ROWS).rows(),
            "total": implausible.height,
            # the sessions the table lists (every session, written before, was not what "all of them" named)
            "command": self.py(f'm.sessions({json.dumps(self.label)}).filter(pl.col("start").is_not_null() & '
                               f'~pl.col("start").is_between(PLAUSIBLE_FROM, pl.datetime({committed.year}, '
                               f"{committed.month}, {committed.day}, {committed.hour}, {committed.minute}, "
                               f"{committed.second}, {committed.microsecond})))", "implausible_sessions.csv",
                               also="PLAUSIBLE_FROM", polars=True),
        }

    # 5
    def sizes(self) -> dict | None:
        lo, hi, n_files = self.one("SELECT min(size) FILTER (WHERE size > 0), max(size) FILTER (WHERE size > 0), "
                                   "count(*) FROM files")
        if n_files == 0:
            return None
        stats, flagged = size_flags(self.con)
        labels = [f"{r['modality']}\n{_n(r['files'], 'file')}, {r['empty']:,} empty, {_n(r['outliers'], 'outlier')}"
                  for r in stats.iter_rows(named=True)]
        lo, hi = (float(lo), float(hi)) if lo is not None else (None, None)
        empty_n = int((flagged["flag"] == "empty").sum())
        if empty_n:
            self.flags.append(f"{_n(empty_n, 'empty file')} (size 0).")
        if flagged.height - empty_n:
            self.flags.append(f"{_n(flagged.height - empty_n, 'file')} with an outlying size for its modality.")
        return {
            "iqr": OUTLIER_IQR, "factor": 10 ** OUTLIER_MIN_DECADES, "min_files": OUTLIER_MIN_FILES,
            "plot": self.plot(plots.sizes(stats, flagged, labels, lo, hi)),
            "stats": [(r["modality"], r["files"], r["empty"], r["min"],
                       10 ** r["median"] if r["median"] is not None else None, r["max"], r["outliers"],
                       "yes" if r["checked"] else f"no (< {OUTLIER_MIN_FILES})") for r in stats.iter_rows(named=True)],
            "flagged": flagged.select("flag", "srcfile", "modality", "size", "modality_median").head(MAX_ROWS).rows(),
            "total": flagged.height,
            "command": self.py(f"size_flags(m.files({json.dumps(self.label)}))[1]", "flagged_sizes.csv",
                               also="size_flags"),
        }

    # 6
    def duplicates(self) -> dict | None:
        # as ManifestReader.duplicates: non-empty contents at more than one path (files without an MD5 are not
        # one content); counted, and the first rows
        twins = """WITH d AS (SELECT md5, count(*) AS paths, first(size) AS size, count(DISTINCT person_id) AS persons
                              FROM files WHERE size > 0 AND md5 IS NOT NULL GROUP BY md5 HAVING count(*) > 1)"""
        n_dups, extra, wasted, cross = self.one(twins + """ SELECT count(*), coalesce(sum(paths - 1), 0)::BIGINT,
            coalesce(sum((paths - 1) * size), 0)::BIGINT, count(*) FILTER (WHERE persons > 1) FROM d""")
        if n_dups == 0:
            return None
        dups = self.sql(twins + f""", top AS (SELECT * FROM d ORDER BY paths DESC, md5 LIMIT {MAX_ROWS}),
            ex AS (SELECT md5, list(srcfile ORDER BY srcfile)[1:{EXAMPLES}] AS srcfiles FROM files
                   WHERE size > 0 AND md5 IN (SELECT md5 FROM top) GROUP BY md5)
            SELECT top.*, ex.srcfiles FROM top JOIN ex USING (md5) ORDER BY paths DESC, md5""")
        self.flags.append(f"Duplicate contents: {_n(n_dups, 'MD5')} found at more than one path "
                          f"({_n(extra, 'extra copy', 'extra copies')}).")
        return {
            "contents": n_dups,
            "extra": extra,
            "wasted": wasted,
            "flag": self.flag(f"{_n(cross, 'duplicated content')} found in the folders of more than one person: "
                              "a file filed under the wrong person?") if cross else None,
            "rows": [(r["md5"], r["paths"], r["size"], r["persons"], Examples(r["srcfiles"], r["paths"]))
                     for r in dups.iter_rows(named=True)],
            "total": n_dups,
            "command": self.py(f"m.duplicates({json.dumps(self.label)}).explode('srcfiles')", "duplicates.csv"),
        }

    # 7
    def scan_errors(self) -> dict | None:
        errors = self.reader.scan_errors(self.label)
        if errors.height == 0:
            return None
        self.flags.append(f"{_n(errors.height, 'scan error or unparseable path', 'scan errors or unparseable paths')}.")
        by_kind = (errors.group_by("kind").agg(n=pl.len(), ex=pl.col("srcfile").head(EXAMPLES),
                                                msg=pl.col("message").head(EXAMPLES))
                   .sort(["n", "kind"], descending=[True, False]))
        unparseable = errors.filter(pl.col("kind") == "unparseable")
        # Each folder outside the layout is its own reason: a site with a stray copy had a million of them, and
        # their examples, built for every reason, took most of the report's time. The table shows MAX_ROWS
        # reasons: those are ranked (a top-k) and given examples; the others are only counted.
        shown = (unparseable.lazy().group_by("message").agg(n=pl.len())
                 .sort(["n", "message"], descending=[True, False]).head(MAX_ROWS).collect())
        examples = (unparseable.join(shown.select("message"), on="message", how="semi")
                    .group_by("message").agg(ex=pl.col("srcfile").head(EXAMPLES)))
        by_reason = shown.join(examples, on="message", how="left", maintain_order="left")
        return {
            "by_kind": [(error_kind(kind), n, Examples(list(zip(ex, msg)), n)) for kind, n, ex, msg in by_kind.iter_rows()],
            "by_reason": [(reason, n, Examples(ex, n)) for reason, n, ex in by_reason.iter_rows()],
            "reasons": unparseable["message"].n_unique(),
            "command": self.py(f"m.scan_errors({json.dumps(self.label)})", "scan_errors.csv"),
        }

    # 8
    def findings(self) -> dict | None:
        # findings counted (by severity and rule, with each group's first few) and whether (and by which rules) the
        # version and the previous one were checked, read at once: one state of the manifest, and never the findings
        # themselves (500k findings in each of two versions were ~0.6 GB of frames)
        seen = self.reader.findings_overview(self.label, self.previous, examples=EXAMPLES)
        validated, rules = seen.validated, seen.other_rules
        # an earlier release's findings were shown as this release's
        old_rules = rules and self.flag(other_rules_advice(self.label, rules, self.reader.latest(), self.db,
                                                           remote=self.remote))
        since = self.findings_since(seen.since)
        if seen.total == 0:
            if validated:
                return {"old_rules": old_rules, "since": since} if old_rules or since else None
            if validated is None:  # a snapshot folder does not record which versions were checked
                return {"unchecked": None}
            # no findings because nothing was checked (`run --no-validate`): not a clean version
            return {"unchecked": self.flag(unvalidated_advice(self.label, self.reader.latest(), self.db,
                                                              remote=self.remote))}
        grouped = (seen.groups
                   .with_columns(_rank=pl.col("severity").str.to_lowercase()
                                 .replace_strict(SEVERITY_ORDER, default=3, return_dtype=pl.Int64))
                   .sort(["_rank", "n", "rule"], descending=[False, True, False]))
        n_errors = int(grouped.filter(pl.col("_rank") == 0)["n"].sum())
        if n_errors:
            self.flags.append(f"{_n(n_errors, 'validation finding')} of severity error.")
        return {
            "old_rules": old_rules,
            "since": since,
            # said as `validate` says them ("2 errors, 1 warning, 3 notes"), not "2 error"
            "by_severity": seen.severity_counts(),  # (review.severity_counts: the notebook says them so too)
            "rows": [(r["severity"], r["rule"], r["n"], Examples(list(zip(r["ex"], r["msg"])), r["n"]))
                     for r in grouped.iter_rows(named=True)],
            "command": self.py(f"m.findings({json.dumps(self.label)})", "findings.csv"),
        }

    def findings_since(self, since: dict | None) -> str | None:
        """What this version fixed, brought and kept of the previous version's findings, as the run's summary says it
        ('since version X: fixed 3 (...); new 0; still open 2 (...)'): the page said only this version's findings, so a
        reviewer could not tell 5 errors fixed and 5 new from nothing done. None where either version was not
        checked (a snapshot folder does not say: None too), or there is no previous version."""
        if since is None:
            return None
        if not (since["fixed"]["total"] or since["new"]["total"] or since["still_open"]["total"]):
            return None  # nothing found in either: "No findings" says it
        return findings_since_text(since, grouped=True).capitalize() + "."

    # 9
    def deleted(self) -> dict | None:
        if self.previous is None:
            return None
        # the view `diff` of the review database: its counts and first rows come into memory, not the diff
        prev_files, lost_n = self.one("SELECT (SELECT count(*) FROM base_files), "
                                      "(SELECT count(*) FROM diff WHERE change IN ('removed', 'replaced'))")
        kinds = list(CHANGE_KINDS)
        counts = self.sql("SELECT coalesce(modality, 'Other') AS modality, change, count(*) AS n FROM diff GROUP BY ALL")
        by_modality = []
        for modality in sorted(counts["modality"].unique().to_list()):
            sub = dict(counts.filter(pl.col("modality") == modality).select("change", "n").iter_rows())
            by_modality.append((modality, *(sub.get(k, 0) for k in kinds)))
        lost = self.sql(f"""SELECT change, srcfile, modality, size, old_md5, md5 FROM diff
                            WHERE change IN ('removed', 'replaced') ORDER BY change, srcfile LIMIT {MAX_ROWS}""")
        flag = None
        if prev_files and lost_n / prev_files > DELETED_SHARE_FLAG:
            flag = self.flag(f"This version removed or replaced {_pct(lost_n, prev_files)} of the previous "
                             f"version's files (more than {DELETED_SHARE_FLAG:.0%}): check that the deliveries "
                             "were meant to go.")
        return {
            "previous": self.previous,
            "previous_files": prev_files,
            "lost": lost_n,
            "flag": flag,
            "kinds": kinds,
            "by_modality": by_modality,
            # (change, path, modality, size, (MD5 before, MD5 now or None where removed))
            "rows": [(r["change"], r["srcfile"], r["modality"], r["size"],
                      (r["old_md5"], None if r["change"] == "removed" else r["md5"]))
                     for r in lost.iter_rows(named=True)],
            # the removed and replaced files the table lists (`diff --csv` listed the added and renamed ones too)
            "command": self.py(f"m.diff({json.dumps(self.previous)}, {json.dumps(self.label)})"
                               '.filter(pl.col("change").is_in(["removed", "replaced"]))', "removed_replaced.csv",
                               polars=True),
        }
