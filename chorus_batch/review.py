"""Reading a manifest for review: time travel, diffs between any two versions, file histories.

In a notebook:

    from chorus_batch.review import open_manifest
    m = open_manifest("site_manifest.sqlite")   # or a `run --parquet DIR` snapshot folder
    m.files()                                    # polars frame: the current files

Every method returns a polars frame. `as_of` and version arguments take a version
label or an ISO date-time (the latest version committed at or before it).
The SQLite reader answers from the manifest's indexes (the current-row index,
the path index, the change set's version index), so `files`, `diff` and `history`
stay well under a second on a 1M-row manifest; the Parquet reader reads one
snapshot per version.
"""

from __future__ import annotations

import contextlib
import itertools
import numbers
import os
import re
import unicodedata
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl

from .config_file import MODALITIES  # (not .config: its pydantic models cost the kernel 0.3 s CPU)
from .diff import compute_diff, private_duckdb
from .errors import UsageError, first_run_command, named, pass_db
from .frames import columns_of, schema_of
from .store import Manifest
from .store.runs import RUN_OK_CODES, run_advice, run_message, run_outcome  # noqa: F401  (the review API's words)
from .times import ISO_LIKE, iso, parse_time
from .units import home_relative, plural, shown_name

# What `files`, `diff` and `history` return: every source_files column, the ones a reviewer reads
# first at the front (diff and history add their own columns before these).
_FIRST = ("srcfile", "md5", "size", "person_id", "modality", "session_id", "start_date", "start_time",
          "duration_s", "segment", "parse_error", "version_valid", "version_invalid", "time_valid", "time_invalid")
FILE_COLUMNS = (*_FIRST, *(c for c in columns_of("source_files") if c not in _FIRST))
FILE_SCHEMA = schema_of("source_files", FILE_COLUMNS)
DIFF_SCHEMA = {"change": pl.String, "old_srcfile": pl.String, "old_md5": pl.String, **FILE_SCHEMA}
HISTORY_SCHEMA = {"change": pl.String, "old_srcfile": pl.String, "ended_by": pl.String, "renamed_to": pl.String, **FILE_SCHEMA}
CHANGE_KINDS = ("added", "removed", "replaced", "renamed")
# What `change_counts` returns, from either storage (the snapshot folder's count was UInt32, the manifest's Int64)
CHANGE_COUNTS_SCHEMA = {"version": pl.String, "modality": pl.String, "change": pl.String, "n": pl.Int64}
REVIEW_MEMORY = "64MB"  # DuckDB's cap in `ManifestReader.duckdb`
SLICE_ROWS = 20_000  # manifest rows read at a time into `ManifestReader.duckdb`'s tables (about 20 MB of polars frame)
# The version whose files each review database (`ManifestReader.review_database`) holds in its table `files`.
_DATABASE_VERSION: weakref.WeakKeyDictionary[duckdb.DuckDBPyConnection, str] = weakref.WeakKeyDictionary()
# Review rules shared by the HTML report and the notebook.
PLAUSIBLE_FROM = datetime(1980, 1, 1)  # a waveform session starting earlier is a parse or clock error
OUTLIER_IQR = 3.0  # fences: quartile +/- 3 IQR of log10(size) ...
OUTLIER_MIN_DECADES = 1.0  # ... and at least 10x beyond the quartile
OUTLIER_MIN_FILES = 10  # non-empty files a modality needs before outliers are flagged


SEVERITY_WORD = {"error": "error", "warning": "warning", "info": "note"}  # a finding's severity as a count's noun


def severity_counts(findings: pl.DataFrame) -> list[tuple[str, int]]:
    """A version's findings counted by severity, most serious first, each as its count's noun ("errors", "1 warning",
    "3 notes", as `validate` says them): the HTML report and the notebook's checklist say them alike (the notebook
    said "2 error, 1 info, 1 warning", by the severities' alphabetical order)."""
    return _severity_words(findings.select(severity=pl.col("severity").fill_null("unknown")).group_by("severity").len())


def _severity_words(counts: pl.DataFrame) -> list[tuple[str, int]]:
    """severity_counts of the counts per severity (severity, len)."""
    from .frames import SEVERITY_ORDER

    counts = (counts.with_columns(_rank=pl.col("severity").str.to_lowercase()
                            .replace_strict(SEVERITY_ORDER, default=3, return_dtype=pl.Int64))
              .sort("_rank", "severity"))
    return [(SEVERITY_WORD[severity] + ("" if n == 1 else "s") if severity in SEVERITY_WORD else severity, n)
            for severity, n in counts.select("severity", "len").iter_rows()]


def _clock_behind(timed: pl.DataFrame, at: datetime) -> str:
    """What to add to "no version was committed at or before `at`" where a version's recorded commit time is at or
    before `at` but an earlier version's is not (its run's clock was behind): why that version is not the answer."""
    behind = timed.filter((pl.col("_recorded") <= at) & (pl.col("_recorded") < pl.col("_at")))
    if behind.is_empty():
        return ""
    label, recorded, since = behind.select("label", "finished_at", "_at").row(0)
    before = timed.filter((pl.col("label") < label) & (pl.col("_recorded") == since)).row(0, named=True)
    return (f"; version {label} records {recorded}, but it was committed after version {before['label']} "
            f"(committed {before['finished_at']}) by a run whose clock was behind: it counts from then")


class NoSuchPerson(UserWarning):
    """`files(person=...)` of a person the version has no file of (the command line prints it as its own note)."""


class NoSuchPath(UserWarning):
    """`history(path)` or `history_of(path)` of a path no version has (the command line says it as its error)."""


def text_argument(value: object, what: str, where: str, example: str) -> str:
    """A path, person or modality a notebook passes, as text (a pathlib path too); any other type is a UsageError
    that says what to give, not a TypeError or a polars error from deep inside (person=123 cannot mean "000123")."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise UsageError(f"{what} is text, not {type(value).__name__} {value!r}", where=where,
                         fix=f"give {what} as a string, such as {example}")
    return value


def share_argument(value: object, name: str) -> float:
    """A share a notebook parameter gives (papermill passes `-p large_change_share 5%` as text, `5` as a number): a
    number from 0 to 1, or a percentage as text ("5%"); anything else is a UsageError that says what to give (5 read
    as 500% flagged nothing, and "5%" failed in a format string two sections later)."""
    text = value.strip() if isinstance(value, str) else None
    try:
        share = float(text[:-1]) / 100 if text and text.endswith("%") else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        share = None
    if isinstance(value, bool) or share is None or not 0 <= share <= 1:  # (NaN too)
        raise UsageError(f"{name} is a share of the files from 0 to 1, not {value!r}", where=name,
                         fix='give a number such as 0.05, or a percentage as text such as "5%", to flag more than 5%')
    return share


def count_argument(value: object, name: str, where: str) -> int:
    """A count a notebook passes (`limit`): a whole number, 0 or more; anything else is a UsageError that says what
    to give (limit="3" was a TypeError from a slice or a polars comparison, limit=-1 gave every suggestion but the
    last, limit=True one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{name} is a whole number of 0 or more, not {type(value).__name__} {value!r}"[:200],
                         where=where, fix=f"give {name} as a number such as {name}=5")
    return value


def columns_argument(columns: object, where: str) -> tuple[str, ...]:
    """The file columns a notebook asks for (`files_part(columns=...)`): names of `FILE_COLUMNS`, one name alone as
    text too; anything else is a UsageError that names the columns there are (a misspelt name was a KeyError from
    the schema, one name as text a KeyError of its first letter, an empty tuple an empty frame without a count)."""
    if isinstance(columns, str):
        columns = (columns,)
    try:
        names = tuple(columns)  # type: ignore[arg-type]
    except TypeError:
        names = None
    unknown = [c for c in names or () if not isinstance(c, str) or c not in FILE_COLUMNS]
    if not names or unknown:
        import difflib

        meant = (difflib.get_close_matches(unknown[0], FILE_COLUMNS, n=1)
                 if unknown and isinstance(unknown[0], str) else [])
        said = (f"no file column {unknown[0]!r}" + (f"; did you mean {meant[0]!r}?" if meant else "") if unknown
                else f"columns names no column: {columns!r}")
        raise UsageError(said[:200], where=where,
                         fix=f"give names of the columns `files` returns, such as columns=(\"srcfile\", \"md5\"): "
                             f"{', '.join(FILE_COLUMNS)}")
    return tuple(dict.fromkeys(names))


def _as_date(text: str) -> str:
    """What a date written without its dashes (20261205, as the labels' own digits are) means as a time: `--as-of
    20261205` was "no version '20261205'", with an example of a whole ISO time only."""
    if len(text) == 14 and text.isascii() and text.isdigit():
        # a time in the labels' own form (20261207000000, as `date -u +%Y%m%d%H%M%S` prints it): "no version", with
        # the nearest labels suggested, the later one first, which is not the version that time selects
        try:
            moment = datetime.strptime(text, "%Y%m%d%H%M%S")
        except ValueError:
            return ""
        return (f"; as a time (the version committed at or before it), write it {moment.isoformat()}Z or "
                f"{moment.strftime('%Y%m%dT%H%M%S')}Z")
    if not (len(text) == 8 and text.isascii() and text.isdigit()):
        return ""
    try:
        day = date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return ""
    return (f"; as a date, write it {day.isoformat()} (the state at its start, UTC) or {day.isoformat()}T23:59:59Z "
            "(at its end)")


def _same_number(label: str, typed: str) -> bool:
    """Whether a label and what was typed are the same whole number with other leading zeros ('001' and '1')."""
    return (label.isascii() and typed.isascii() and label.isdigit() and typed.isdigit() and label != typed
            and label.lstrip("0") == typed.lstrip("0"))


def open_manifest(path: str | Path, *, parameter: str | None = None) -> "ManifestReader":
    """A SQLite manifest file, or a folder of `version=<label>/` Parquet snapshots. `parameter`: the notebook
    parameter that gave `path` (the review notebook's `manifest`): its errors say to set it in the parameters cell,
    not to pass --db. The reader's `path` is absolute and tidied ('..' and links of its folders resolved)."""
    asked = f"the notebook's `{parameter}` parameter" if parameter else "open_manifest(path)"
    path = text_argument(path, "the manifest", asked, '"chorus_manifest.sqlite"')
    give = (f"set `{parameter}` in the notebook's parameters cell (its first code cell) to " if parameter else "give ")
    if not path.strip():  # Path("") is the current folder: a notebook's unset parameter read whatever was there
        raise UsageError("the manifest's path is empty", where=asked,
                         fix=f'{give}the manifest file written by `chorus-batch run`, such as "chorus_manifest.sqlite", '
                             "or its --parquet folder")
    from .urls import AZURE_PROTOCOLS, expand_home, mask_url, protocol_of, refuse_file_url, refuse_url

    if "://" in path and protocol_of(path) in AZURE_PROTOCOLS and not os.path.lexists(path):
        # (it was "no manifest at /cwd/az:/c/m.sqlite?sv=...&sig=<the SAS signature>", twice, kept in the notebook)
        raise UsageError(f"open_manifest reads a manifest on this machine, not one in Azure: {mask_url(path)}",
                         where=asked,
                         fix="`chorus-batch review --db az://... --out review.ipynb` runs the review notebook on a local "
                             "copy of it; or copy it here (azcopy copy) and give the local file")
    refuse_url(path, asked, writes=False)  # s3://, https://: said, masked; file:// gives the path
    refuse_file_url(path, asked)
    path = Path(expand_home(path, asked))  # "~/m.sqlite" as --db reads it, not a folder '~' here
    from .fsutil import require_reachable

    require_reachable(path)  # a folder on the way this user may not enter: said, not a PermissionError from is_dir
    # Tidied: `-p manifest ../m.sqlite` was "manifest /x/run/../m.sqlite" in the review and the commands it suggests.
    # The folders resolved (a '..' after a link is the link target's parent, as the system reads it), the name kept (a
    # manifest that is a link is still named by the link).
    whole = path.absolute()
    tidy = whole.resolve() if whole.name in ("", ".", "..") else whole.parent.resolve() / whole.name
    if tidy.is_dir():
        from .store.snapshots import ParquetReader

        return ParquetReader(tidy)
    if not tidy.exists():  # said absolute, as `versions` says it: the current folder of a cron job is not the shell's
        raise UsageError(f"no manifest at {tidy}", where=str(tidy),  # a --db naming nothing
                         fix=(f"{give}the manifest file written by `chorus-batch run`, or its --parquet folder (a "
                              f"relative path is read from the notebook's folder, {home_relative(str(Path.cwd()))})"
                              if parameter else  # (said as every command's "no manifest" is: store/manifest.py)
                              pass_db("the manifest's path (or its --parquet folder)")
                              + f"; or start one there: {first_run_command(tidy)}"))
    return SQLiteReader(tidy)


def _under_folder(folder: str | None, columns: tuple[str, ...] = ("srcfile",)) -> pl.Expr:
    """Rows whose path (any of `columns`) is `folder` or lies under it (see ManifestReader._folder: "" every row,
    None none)."""
    if folder is None:
        return pl.lit(False)
    if not folder:
        return pl.lit(True)
    return pl.any_horizontal([(pl.col(c) == folder) | pl.col(c).str.starts_with(folder + "/") for c in columns])


@dataclass(frozen=True)
class FindingsOverview:
    """ManifestReader.findings_overview: a version's findings counted, not held."""
    total: int  # findings of the version
    groups: pl.DataFrame  # severity, rule, n, ex (first paths), msg (their messages), in no particular order
    validated: bool | None  # as ManifestReader.validation
    other_rules: str | None
    since: dict | None  # report.summary.findings_compared of the previous version's and this one's, or None

    def severity_counts(self) -> list[tuple[str, int]]:
        return _severity_words(self.groups.group_by("severity").agg(len=pl.col("n").sum()))


class ManifestReader:
    """What a reviewer can ask of a manifest; two storages below (SQLite, Parquet)."""

    path: Path

    # -- to be provided by each storage
    def versions(self) -> pl.DataFrame:
        raise NotImplementedError

    def _files_at(self, label: str, modality: str | None, person: str | None) -> pl.DataFrame:
        raise NotImplementedError

    def _changed_between(self, older: str, newer: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(rows valid at `older` but not at `newer`, rows valid at `newer` but not at `older`)."""
        raise NotImplementedError

    def _path_rows(self, srcfile: str, before_file_id: int | None) -> pl.DataFrame:
        """HISTORY_SCHEMA rows of one path (older than a file id, if given), oldest first."""
        raise NotImplementedError

    def changes(self, version: str | None = None) -> pl.DataFrame:
        raise NotImplementedError

    def registry(self) -> pl.DataFrame:
        raise NotImplementedError

    def scan_errors(self, version: str | None = None) -> pl.DataFrame:
        raise NotImplementedError

    def change_counts(self) -> pl.DataFrame:
        """version, modality, change, n: every version's change set by modality."""
        raise NotImplementedError

    def _findings(self, label: str) -> pl.DataFrame:
        raise NotImplementedError

    def findings(self, version: str | None = None, *, rule: str | list[str] | None = None,
                 severity: str | None = None, path: str | None = None) -> pl.DataFrame:
        """The `validate` findings of a version (FINDINGS_SCHEMA); empty if it was not validated. `rule`, `severity`
        and `path` keep what `validate --rule/--severity/--path` keep (one filter): a rule id, a family (`dicom.`) or
        a glob, or a list of them; this severity or a more serious one (`"warning"`: errors and warnings); a file, or
        the files under a folder (a person: `"000123"`), site-relative, or a glob of whole paths."""
        from .validate.select import finding_filter

        chosen = finding_filter(rule, severity, path)  # before anything is read: a misspelt rule is said at once
        found = self._findings(self.resolve(version))
        return found if chosen is None else chosen(found, self._folder)

    def validated(self, version: str | None = None) -> bool | None:
        """Whether `validate` checked the version (by any release's rules): an empty `findings` is then a clean
        version, else an unchecked one; None where the storage does not record it (a snapshot folder)."""
        return None

    def other_rules(self, version: str | None = None) -> str | None:
        """The rules that checked the version where they are not this release's (an earlier release's, before an
        upgrade): its findings are theirs, and may lack what today's rules find. None where this release's rules
        checked it, nothing did, or the storage does not record it (a snapshot folder)."""
        return None

    def _run_rows(self) -> pl.DataFrame | None:
        """The `runs` table's rows (RUN_COLUMNS), or None where the storage does not record runs (a snapshot folder)."""
        return None

    def runs(self, since: str | datetime | date | None = None, *, until: str | datetime | date | None = None,
             failed: bool = False) -> pl.DataFrame:
        """The runs recorded in the manifest (`runs`), the most recent first: when each started and ended, its mode,
        exit code, the version it committed (null: none), what happened (`outcome`, and its own `message`) and
        `what_to_do`. `since`: a version (label or time): only the runs started after it was committed; `until`: a
        version: only the runs started before it was committed (not the run that committed it). `failed`: only the
        runs that failed (an exit code other than 0 and 1: refused by the lock, a mass removal refused, a failure, a
        signal, killed), the nights a cron job committed nothing. No host, user, pid or command line: a message's
        paths inside the site are cut at its root (a path names a person's folder) and a user it names is left out.
        Empty from a snapshot folder, which does not record runs (`records_runs` is False)."""
        if isinstance(failed, str) or failed not in (True, False):  # failed="no" kept the failed runs
            raise UsageError(f"failed is True or False, not {type(failed).__name__} {failed!r}"[:200],
                             where="runs(failed=...)", fix="give failed=True for the failed runs only, or leave it out")
        rows = self._run_rows()
        if rows is None:
            return pl.DataFrame(schema=RUNS_SCHEMA)
        # (times are to the second: a run started in the second of a commit is before or after it as its run_id is
        # before or after the run that made the version; a version no run made, an imported one: after it)
        for bound, asked, after in ((since, "since", True), (until, "until", False)):
            if bound is None:
                continue
            label = self.resolve(bound, asked=asked)
            committed = self.versions().filter(pl.col("label") == label)["finished_at"]
            at = parse_time(str(committed[0])) if committed.len() and committed[0] else None
            maker = rows.filter(pl.col("version") == label)["run_id"]
            made_by = maker[0] if maker.len() else None
            if at is not None:
                rows = rows.filter(pl.Series([
                    v != label and ((t := parse_time(str(s or ""))) is None
                                    or (t > at if after else t < at)
                                    or (t == at and (after if made_by is None else (r > made_by) == after)))
                    for r, s, v in rows.select("run_id", "started_at", "version").iter_rows()], dtype=pl.Boolean))
        if failed:
            rows = rows.filter(pl.col("exit_code").is_null().not_() & ~pl.col("exit_code").is_in(list(RUN_OK_CODES)))
        roots = self._root_locations_all()
        # (the runs the lock turned away are added to `runs` when the holder ends: their run_id is no order; by start,
        # then end: a run not finished yet first, a killed one, which has no end, as ended when it started)
        end = (pl.when(pl.col("exit_code").is_null()).then(pl.lit("~"))
               .otherwise(pl.coalesce("finished_at", "started_at")))
        rows = rows.sort([pl.col("started_at"), end, pl.col("run_id")], descending=True, nulls_last=True)
        return rows.with_columns(
            outcome=pl.Series([run_outcome(code, version) for code, version in rows.select("exit_code", "version").iter_rows()],
                              dtype=pl.String),
            message=pl.Series([None if m is None else run_message(m, roots) for m in rows["message"]], dtype=pl.String),
            what_to_do=pl.Series([run_advice(code) for code in rows["exit_code"]], dtype=pl.String),
        ).select(list(RUNS_SCHEMA))

    @property
    def records_runs(self) -> bool:
        """Whether the storage records runs (`runs`): a SQLite manifest does, a snapshot folder does not."""
        return False

    def _root_locations_all(self) -> list[str]:
        return []

    def validation(self, version: str | None = None) -> tuple[pl.DataFrame, bool | None, str | None]:
        """(`findings`, `validated`, `other_rules`) of a version, read at once: one state of the manifest (a
        `validate` committing between separate reads paired findings of before it with the state after it)."""
        label = self.resolve(version)
        return self.findings(label), self.validated(label), self.other_rules(label)

    def findings_overview(self, version: str | None = None, previous: str | None = None, *,
                          examples: int = 3) -> FindingsOverview:
        """A version's findings as the report shows them, without the findings themselves: counts by severity and
        rule with each group's first `examples` (path, message) by path, whether and by which rules it was checked,
        and what it fixed, brought and kept of version `previous`'s findings (None where either was not checked).
        A 1M-file site with 500k findings in each of two versions held both as frames (~0.6 GB for `report`); a
        SQLite manifest counts them in SQLite (SQLiteReader), a snapshot folder here."""
        from .report.summary import findings_compared

        label = self.resolve(version)
        findings, validated, rules = self.validation(label)
        groups = (findings.with_columns(severity=pl.col("severity").fill_null("unknown"), rule=pl.col("rule").fill_null(""))
                  .group_by("severity", "rule").agg(n=pl.len(), ex=pl.col("srcfile").head(examples),
                                                    msg=pl.col("message").head(examples)))
        since = None
        if previous is not None and validated is True:
            before, checked, _rules = self.validation(previous)
            if checked is True:
                since = findings_compared(before, findings, previous)
        return FindingsOverview(findings.height, groups, validated, rules, since)

    # -- shared

    def __repr__(self) -> str:
        """The manifest and the versions this reader knows, never rows (a notebook cell ending in `m` showed
        `<chorus_batch.review.SQLiteReader object at 0x7f...>`)."""
        try:
            labels = self.versions()["label"]
        except Exception:  # (a repr that raises hides the object: what is known, then)
            return f"<{type(self).__name__} {str(self.path)!r}>"
        known = (f"{plural(labels.len(), 'version')}, {labels[0]} .. {labels[-1]}" if labels.len() > 1 else
                 f"1 version, {labels[0]}" if labels.len() else "no versions yet")
        return f"<{type(self).__name__} {str(self.path)!r}: {known}>"

    def _refuse_edited_times(self, asked: object) -> None:
        """A version asked by a time is found by the versions' commit times: refused where they were edited by hand."""

    def versions_command(self) -> str:
        """The command that lists this manifest's versions, to paste into a shell (a notebook's messages name it:
        `chorus-batch versions` alone read the chorus.toml or default manifest of the shell's folder)."""
        import shlex

        return shlex.join(["chorus-batch", "versions", "--db", str(self.path)])

    def latest(self) -> str | None:
        labels = self.versions()["label"]
        return labels[-1] if labels.len() else None

    def _known(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame`'s rows as of the versions this reader knows (it keeps those it found when opened: one state of
        the manifest for a whole review): a row a run committed since is left out, and an end it gave a row (its
        `version_invalid`, `time_invalid`, `ended_by`, `renamed_to`) is not one yet. The rows carry their ends as
        the manifest holds them now: `history` showed a version the reader's `changes` called unknown."""
        latest = self.latest()
        if latest is None or frame.height == 0:
            return frame
        later = pl.col("version_invalid") > latest
        ends = [pl.when(later).then(None).otherwise(pl.col(c)).alias(c)
                for c in ("version_invalid", "time_invalid", "ended_by", "renamed_to") if c in frame.columns]
        return frame.filter(pl.col("version_valid") <= latest).with_columns(ends)

    def resolve(self, version: str | datetime | None, *, asked: str | None = None) -> str:
        """A version label, from a label, an ISO date-time, or None (the latest). `asked`: the argument `version`
        came as, named in the message where it names no version (`diff --from A --to B` said "no version 'B'"
        without saying which of the two it was)."""
        try:
            return self._resolve(version)
        except UsageError as error:
            if asked and self.versions().height:  # (a manifest without versions: not about the argument)
                error.what = f"{asked}: {error.what}"
                error.args = (error.what,)
            raise

    def _no_versions(self) -> UsageError:
        """A storage without versions (exit 2): a snapshot folder records no runs to say more of."""
        return UsageError("the manifest has no versions yet", where=str(self.path),
                          fix="run `chorus-batch run` to commit the first version")

    def _resolve(self, version: str | datetime | None) -> str:
        versions = self.versions()
        if versions.height == 0:
            raise self._no_versions()
        if version is None:
            return versions["label"][-1]
        if isinstance(version, numbers.Integral) and not isinstance(version, bool):
            # A label typed as a number (20261127034021), in a notebook as by papermill. A site's own numbering, 001,
            # comes as 1 from papermill's `-p version 001` (and YAML): the one label spelling that number is meant.
            spelled = [label for label in versions["label"].to_list() if _same_number(label, str(version))]
            version = spelled[0] if len(spelled) == 1 and str(version) not in spelled else str(version)
        elif isinstance(version, date) and not isinstance(version, datetime):
            version = datetime(version.year, version.month, version.day, tzinfo=timezone.utc)  # as "2026-11-27"
        elif isinstance(version, datetime) and version != version:  # pandas' NaT, a datetime that is no time
            raise UsageError(f"a version is a label or an ISO date-time, not a time: {version!r} (a missing value)",
                             where=str(self.path), fix=f"give a label from `{self.versions_command()}` (text), a datetime, "
                                                       "or an ISO time such as 2026-11-27T03:00:00Z")
        elif not isinstance(version, (str, datetime)):
            raise UsageError(f"a version is a label or an ISO date-time, not {type(version).__name__} {version!r}",
                             where=str(self.path), fix=f"give a label from `{self.versions_command()}` (text), a datetime, "
                                                       "or an ISO time such as 2026-11-27T03:00:00Z")
        if isinstance(version, str) and version in set(versions["label"].to_list()):
            return version
        moment = version if isinstance(version, datetime) else parse_time(version)
        labels = versions["label"].to_list()
        if moment is None and version.strip() not in labels and self._committed_since_open(version.strip()):
            # A reader keeps the versions it found when opened (one state of the manifest for a whole review): a version
            # a run committed since was said to be "not in the manifest", which `chorus-batch versions` listed.
            raise UsageError(f"version {version.strip()} was committed after this reader read the manifest's versions "
                             f"(it knows {len(labels)}, {labels[0]} .. {labels[-1]})", where=str(self.path),
                             fix=f"open the manifest again to read it: open_manifest({str(self.path)!r})")
        if moment is None:
            from difflib import get_close_matches

            dated = ISO_LIKE.match(version.strip()) is not None  # meant as a time: say what is wrong with it
            # a label copied with a space, or mistyped in a digit: the labels it is probably meant to be
            # (or typed without its leading zeros: 1 for the label 001)
            # (or in other letter case: `--as-of V1` of the label v1, which the close matches' ratio, 0.5, left out)
            close = ([version.strip()] if version.strip() in labels
                     else [label for label in labels if _same_number(label, version.strip())][:3]
                     or [label for label in labels if label.casefold() == version.strip().casefold()][:3]
                     or get_close_matches(version.strip(), labels, n=3, cutoff=0.8))
            raise UsageError(f"no version {version!r} in the manifest"
                             + (", and it is not a valid ISO date-time" if dated else "")
                             + (f"; did you mean {', '.join(close)}?" if close else "") + _as_date(version.strip()),
                             where=str(self.path),
                             fix=f"give a label from `{self.versions_command()}` ({len(labels)} in the manifest, "
                                 f"{labels[0]} .. {labels[-1]}), or an ISO time such as 2026-11-27T03:00:00Z")
        self._refuse_edited_times(version)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        # Compared in UTC, as the commit times are: polars refused a named zone (a ZoneInfo, a pandas Timestamp's)
        # beside them, and a wall time in a DST gap. A UTC before year 1 or after 9999 (an offset on the calendar's
        # first or last day) is before every version or after the latest: the calendar's ends stand in for it.
        try:
            at, beyond = moment.astimezone(timezone.utc), False
        except OverflowError:
            at, beyond = (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=timezone.utc), True
        # A version exists only after every version before it: one whose run's clock was behind (a skewed node, a
        # clock set back) recorded a commit time before its predecessor's, and a time between the two selected it
        # ahead of the version it was built on (whose files it holds). Times are taken as never going back.
        timed = versions.with_columns(_at=pl.col("finished_at").str.to_datetime(time_zone="UTC", strict=False)
                                      ).with_columns(_recorded=pl.col("_at"), _at=pl.col("_at").cum_max())
        if timed["_at"].null_count() == timed.height:
            # Snapshots without versions.parquet (an older release's, or version folders copied alone): no version
            # is known to have been committed before any time; saying so of v1 "committed None" was untrue.
            labels = versions["label"].to_list()
            raise UsageError(f"no version can be found by the time {moment.isoformat()}: the commit times of these "
                             "versions are not recorded (a snapshot folder without versions.parquet)",
                             where=str(self.path),
                             fix=f"give a version label ({len(labels)} here, {labels[0]} .. {labels[-1]}), or open "
                                 "the SQLite manifest the snapshots were written from, which records the times")
        committed = timed.filter(pl.col("_at") <= at)
        if isinstance(version, datetime) and version.tzinfo is None:
            self._said_naive(version, at, committed, timed)
        if committed.height == 0:
            first = versions.row(0, named=True)
            # Said in UTC too, as the manifest writes commit times: '05:00+09:00' beside '04:35:59Z' read as later;
            # and a date alone is that day's start, not its end.
            asked = moment.isoformat() + ("" if beyond or moment.utcoffset() == timedelta(0) else f" ({iso(at)})")
            if isinstance(version, str) and re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", version):
                asked += f" (a date alone is its start; {version.strip()}T23:59:59Z is its end)"
            raise UsageError(f"no version was committed at or before {asked}" + _clock_behind(timed, at),
                             where=str(self.path),
                             fix=f"the first version is {first['label']}, committed {first['finished_at']}")
        return committed["label"][-1]

    def as_of_note(self, version: str | datetime | None, label: str) -> str | None:
        """What a time given as the version selected, in words: `label` (resolve's answer) was the version in force
        then, committed when; a time after the latest version's commit (or in the future) is said to show the latest
        one, which a review as of a future date showed without a word. None: `version` was a label (or None)."""
        if version is None or isinstance(version, (bool, numbers.Integral)):
            return None
        labels = self.versions()["label"].to_list()
        if isinstance(version, str) and (version in labels or version.strip() in labels):
            return None
        if isinstance(version, str):
            moment, asked = parse_time(version), version.strip()
        elif isinstance(version, datetime):
            moment, asked = version, version.isoformat()
        elif isinstance(version, date):
            moment, asked = datetime(version.year, version.month, version.day, tzinfo=timezone.utc), version.isoformat()
        else:
            return None
        if moment is None:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)  # as resolve reads it
        committed = self.versions().filter(pl.col("label") == label)["finished_at"][0]
        if label != labels[-1]:
            return f"as of {asked}: version {label}, committed {committed} (the version in force then)"
        try:
            future = moment.astimezone(timezone.utc) > datetime.now(timezone.utc)
        except OverflowError:
            future = moment.year > 1
        return (f"as of {asked}{' (a time in the future)' if future else ''}: no version was committed after "
                f"{label} (committed {committed}), so the latest version, {label}, is shown")

    def _said_naive(self, version: datetime, at: datetime, committed: pl.DataFrame, timed: pl.DataFrame) -> None:
        """A `datetime` without a zone is read as UTC, as the manifest writes its commit times; but Python's
        `datetime.now()` and `pd.Timestamp.now()` give this computer's wall time without a zone: in a kernel not in
        UTC, `m.files(datetime.now())` answered the version of hours before (or "no version was committed"). Where
        the two readings select different versions, the reviewer is asked which one is meant."""
        try:
            local = version.astimezone(timezone.utc)  # a naive datetime: this computer's time zone
        except (OverflowError, ValueError, OSError):
            return  # at the calendar's ends: before every version or after the latest either way
        if local == at:
            return
        mine = timed.filter(pl.col("_at") <= local)

        def said(frame: pl.DataFrame) -> str:
            return f"version {frame['label'][-1]}" if frame.height else "no version (before the first)"

        if said(mine) == said(committed):
            return
        offset = version.astimezone().strftime("%z")
        offset = f"UTC{offset[:3]}:{offset[3:]}"
        raise UsageError(f"the datetime {version.isoformat(sep=' ')} has no time zone: read as UTC (as the manifest "
                         f"writes commit times) it selects {said(committed)}, read as this computer's time "
                         f"({offset}: {iso(local)}) {said(mine)}", where=str(self.path),
                         fix="give it a zone: `datetime.now(timezone.utc)` or `.replace(tzinfo=timezone.utc)` for UTC, "
                             "`.astimezone()` for this computer's time, or an ISO text such as 2026-11-27T03:00:00Z")

    def compared_with(self, label: str | datetime | None, compare_to: str | datetime | None = None) -> str | None:
        """The version `label` is reviewed against: `compare_to`, else the one before it (None: `label` is the
        first). A `compare_to` that is `label` itself is refused: there is nothing to compare, and the review
        called the version the first one."""
        label = self.resolve(label)  # a label as a number (papermill's), a date-time: compared as the label it names
        if compare_to is None:
            earlier = self.versions().filter(pl.col("label") < label)["label"]
            return earlier[-1] if earlier.len() else None
        asked = named("--compare-to", "compare_to")
        base = self.resolve(compare_to, asked=asked)
        if base == label:
            raise UsageError(f"{asked} {compare_to} is the version reviewed ({label}): there is nothing to compare",
                             where=asked, fix="give another version, or leave it out (None) to compare with the version "
                                 f"before (`{self.versions_command()}` lists them)")
        return base

    def _file_question(self, as_of: str | datetime | None, modality: str | None,
                       person: str | None) -> tuple[str, str | None, str | None]:
        """(the version's label, the modality as the manifest names it, the person id as text) of a question about
        a version's files: `files`, `files_part` and `files_sliced` read their arguments alike."""
        label = self.resolve(as_of)
        if modality is not None:
            modality = self.modality_name(modality)
        if person is not None:
            person = text_argument(person, "a person", str(self.path), '"000123" (the person folder\'s name)')
        return label, modality, person

    def files(self, as_of: str | datetime | None = None, *, modality: str | None = None,
              person: str | None = None) -> pl.DataFrame:
        """The file set as it was at a version (default: now), optionally one modality or person.
        The whole set of the version asked last is kept, so a review's many questions about one
        version read it once (polars frames are immutable: sharing it is safe)."""
        label, modality, person = self._file_question(as_of, modality, person)
        cached = getattr(self, "_file_set", None)
        if cached is None or cached[0] != label:
            if modality is not None or person is not None:  # a narrow question: let the storage filter
                frame = self._known(self._files_at(label, modality, person).select(FILE_COLUMNS))
                self._said_unknown_person(person, label, frame)
                return frame
            cached = self._file_set = (label, self._known(self._files_at(label, None, None).select(FILE_COLUMNS)))
        frame = cached[1]
        if modality is not None:
            frame = frame.filter(pl.col("modality") == modality)
        if person is not None:
            frame = frame.filter(pl.col("person_id") == person)
            self._said_unknown_person(person, label, frame)
        return frame

    def files_part(self, as_of: str | datetime | None = None, *, modality: str | None = None,
                   person: str | None = None, columns: tuple[str, ...] = FILE_COLUMNS,
                   limit: int | None = None, path: str | None = None) -> tuple[int, pl.DataFrame]:
        """(how many files `files` of the same arguments gives, `columns` of its first `limit` rows (None: all)): a
        storage that can reads only those. `files` of 1M files read all 16 columns of each to show 200 (893 MiB
        peak), `files --md5sum` all of them for two. `path`: of the rows `rows_under` keeps (as files_sliced), counted
        and chosen by the storage where it can (`files --path P` held every row under P to show 200)."""
        columns = columns_argument(columns, "files_part(columns=...)")
        if limit is not None:
            limit = count_argument(limit, "limit", "files_part(limit=...)")  # (-1 gave every row but the last)
        label, modality, person = self._file_question(as_of, modality, person)
        folders = None if path is None else self._folders(path)
        count, frame = self._files_part(label, modality, person, columns, limit, folders)
        self._said_unknown_person(person, label, frame)
        return count, frame.select(columns)

    def _files_part(self, label: str, modality: str | None, person: str | None, columns: tuple[str, ...],
                    limit: int | None, folders: list[str | None] | None = None) -> tuple[int, pl.DataFrame]:
        """`folders` (see _folders): the rows under the first that has any, else none."""
        frame = self._known(self._files_at(label, modality, person).select(FILE_COLUMNS))
        for tried, folder in enumerate(folders or [], 1):
            kept = frame.filter(_under_folder(folder))
            if kept.height or tried == len(folders):
                frame = kept
                break
        return frame.height, frame.select(columns) if limit is None else frame.select(columns).head(limit)

    def files_sliced(self, as_of: str | datetime | None = None, *, modality: str | None = None,
                     person: str | None = None, path: str | None = None,
                     rows: int = SLICE_ROWS) -> Iterator[pl.DataFrame]:
        """The rows `files` of the same arguments gives, in its order, `rows` at a time (the first slice possibly
        empty, the others not): a storage that can reads a slice at a time. `files --json`/`--csv` of 1M files read
        the whole version first (~640 MiB peak) to write it a slice at a time. `path`: only the rows `rows_under`
        keeps of them, chosen by the storage where it can (`files --path P --json` read every slice of the version and
        held the rows under P). A person the version has no file of is said (NoSuchPerson) before this returns."""
        if count_argument(rows, "rows", "files_sliced(rows=...)") == 0:  # (an IndexError from the first slice)
            raise UsageError("rows is the number of rows a slice holds: 1 or more, not 0", where="files_sliced(rows=...)",
                             fix=f"give rows as a number such as rows={SLICE_ROWS}, or leave it out")
        label, modality, person = self._file_question(as_of, modality, person)
        folders = None if path is None else self._folders(path)
        slices = iter(self._files_sliced(label, modality, person, rows, folders))
        first = next(slices)
        self._said_unknown_person(person, label, first)
        return itertools.chain([first], slices)

    def _files_sliced(self, label: str, modality: str | None, person: str | None, rows: int,
                      folders: list[str | None] | None = None) -> Iterator[pl.DataFrame]:
        """`folders` (see _folders): the rows under the first that has any, else none."""
        frame = self._known(self._files_at(label, modality, person).select(FILE_COLUMNS))  # (read whole, given in slices)
        for tried, folder in enumerate(folders or [], 1):
            kept = frame.filter(_under_folder(folder))
            if kept.height or tried == len(folders):
                frame = kept
                break
        if frame.height == 0:
            yield frame
        yield from frame.iter_slices(rows)

    def _said_unknown_person(self, person: str | None, label: str, frame: pl.DataFrame) -> None:
        """A person the version has no file of is said (a NoSuchPerson warning: Jupyter shows it, the command line
        prints it): an empty frame alone read as "this person has no files", where '12' meant '000012'."""
        if person is None or frame.height:
            return
        if self._files_at(label, None, person).height:  # the person is there, just not in that modality
            return
        maybe = self.person_suggestions(person, label)
        # one that looks the same as typed is said as such: a space or line break at an end (' 000002' pasted),
        # its letters in the other Unicode form (é as e + accent); a space was said to be the other Unicode form
        typed = person.strip()
        alike = [m for m in maybe if unicodedata.normalize("NFC", m) == unicodedata.normalize("NFC", typed)]
        spaced = typed != person and bool(alike)
        other_form = any(m != typed for m in alike)
        warnings.warn(NoSuchPerson(
            f"no files for person {person!r} in version {label}; person ids are text, as the site writes them"
            # (as `files` shows them: a space at an end was unseen before the '?', '000004 ')
            + (f": did you mean {', '.join(map(shown_name, maybe))}?" if maybe else
               " (`files` lists them in its person_id column)")
            + (" (the id typed has a space or line break at an end: leave it out)" if spaced else "")
            + (" (the same letters in the other Unicode form: copy the id as `files` lists it)" if other_form else "")),
            stacklevel=3)

    def modality_name(self, modality: str) -> str:
        """A modality as the manifest spells it (`waveforms` is Waveforms); one it never records is a
        UsageError: filtering by it would show an empty version, as if it held none of those files."""
        known = (*MODALITIES, "Other")
        modality = text_argument(modality, "a modality", str(self.path), '"Waveforms"')
        for name in known:
            if name.lower() == modality.strip().lower():
                return name
        raise UsageError(f"no modality {modality!r}", where=str(self.path),
                         fix=f"give one of {', '.join(known)} (Other: files no pattern of the layout fits)")

    def diff(self, from_version: str | datetime, to_version: str | datetime | None = None) -> pl.DataFrame:
        """added / removed / replaced / renamed between any two versions (DIFF_SCHEMA); `to_version` None: the latest.
        Rows describe the `to` side; removed rows describe the file as it was. `from_version` is needed, as `diff
        --from` is: None (a notebook's unset parameter) is refused, not read as the latest, whose diff with itself
        is empty and read as "no changes"."""
        asked = named("--from", "from_version")
        if from_version is None:
            raise UsageError(f"{asked} is needed: the version to compare from", where=asked,
                             fix=f"give a version label or an ISO time (`{self.versions_command()}` lists them); "
                                 "m.changes(v) gives what version v itself changed")
        older = self.resolve(from_version, asked=asked)
        newer = self.resolve(to_version, asked=named("--to", "to_version"))
        if older == newer:
            return pl.DataFrame(schema=DIFF_SCHEMA)
        backwards = older > newer
        if backwards:
            older, newer = newer, older
        gone, came = self._changed_between(older, newer)
        if backwards:  # the same sets, read the other way
            gone, came = came, gone
        # The set logic is the run's own (diff.py): every row valid on one side only is a candidate. A file without
        # an MD5 (unverifiable) is compared by etag, size and mtime as the run compares it: by size alone, a blob
        # rewritten at the same size was missing here while the run's change set recorded it replaced.
        compared = ("srcfile", "size", "mtime_ns", "md5", "etag")
        change_set = compute_diff(gone.select("file_id", *compared), came.select(*compared), threads=1).change_set
        came_rows = change_set.filter(pl.col("change") != "removed").join(
            came.select(FILE_COLUMNS), on="srcfile", how="left").join(
            gone.select(pl.col("file_id").alias("old_file_id"), pl.col("md5").alias("old_md5")), on="old_file_id", how="left")
        gone_rows = change_set.filter(pl.col("change") == "removed").select("change", "old_srcfile", "old_file_id").join(
            gone.select(FILE_COLUMNS).with_columns(old_file_id=pl.col("file_id")), on="old_file_id", how="left"
        ).with_columns(old_md5=pl.col("md5"))
        frame = pl.concat([came_rows.select(list(DIFF_SCHEMA)), gone_rows.select(list(DIFF_SCHEMA))])
        return self._known(frame.cast(DIFF_SCHEMA)).sort("change", "srcfile")  # type: ignore[arg-type]

    def history(self, srcfile: str) -> pl.DataFrame:  # srcfile: site-relative (see site_relative)
        """Every version of one file, oldest first: each row says how it began (`change`,
        `old_srcfile`) and ended (`ended_by`, `renamed_to`). A rename into the path brings
        in the renamed file's earlier rows too, under their old path. A path no version has warns (NoSuchPath)."""
        frame = self._history(srcfile)
        if frame.height == 0:
            self._said_unknown_path(text_argument(srcfile, "a path", str(self.path), '"OMOP/person.csv"'))
        return frame

    def _said_unknown_path(self, path: str) -> None:
        """A path no version has is said (a NoSuchPath warning, shown by Jupyter), with the paths it may mean: an
        empty history alone read as "this file never changed" of 'OMOP/Person.csv' typed for 'OMOP/person.csv', or
        of an absolute path given to `history`, which takes the site-relative one."""
        similar = self.similar_paths(path, ever=True) if self.latest() else []  # (an absolute path: its site-relative one)
        hint = (f": did you mean {', '.join(map(repr, similar))}?" if similar
                else "; paths are site-relative, as the `srcfile` column of `m.files()` has them")
        warnings.warn(NoSuchPath(f"no file {path!r} in any version of the manifest{hint}"), stacklevel=3)

    def _history(self, srcfile: str) -> pl.DataFrame:
        srcfile = text_argument(srcfile, "a path", str(self.path), '"OMOP/person.csv"')  # a pathlib path too
        rows = self._path_rows(srcfile, None)
        frames, asked = [rows], set()
        # Every row that began as a rename brings in its old path's earlier rows, not only the path's first
        # row: a path renamed away and back (a -> b -> a), or removed and later the target of a rename, had
        # the time under the other path left out. One query per rename hop; file ids grow, so it ends.
        pending = rows
        while pending.height:
            hops = pending.filter(pl.col("change") == "renamed").select("old_srcfile", "file_id").rows()
            found = [self._path_rows(old, before) for old, before in hops if (old, before) not in asked]
            asked.update(hops)
            known = pl.concat(frames)["file_id"].implode()
            pending = pl.concat(found).filter(~pl.col("file_id").is_in(known)) if found else rows.clear()
            frames.append(pending)
        # file ids are handed out in commit order: sorted by them, the rows are the file's life in order
        return self._known(pl.concat(frames).unique("file_id", keep="first").sort("file_id").select(list(HISTORY_SCHEMA)))

    def _committed_since_open(self, label: str) -> bool:
        """Whether the storage now holds a version `label` this reader, opened before, does not know."""
        return False

    def root_locations(self) -> list[str]:
        """Where the site's files were found (the manifest's `roots`); none known to this reader."""
        return []

    def site_relative(self, path: str, *, backslash_separates: bool = True) -> str:
        """A path as people type it: Windows separators, './', or an absolute path under a recorded root,
        as the site-relative path the manifest keys files by. With `backslash_separates` False a backslash
        stays part of a name (a POSIX file may be called `a\\b.csv`)."""
        path = text_argument(path, "a path", str(self.path), '"OMOP/person.csv"')  # a PureWindowsPath's \ separate
        if backslash_separates:
            path = path.replace("\\", "/")
        # empty and '.' parts name the same file as the shell reads them (`"$DIR/"/a.csv`, `OMOP/./a.csv`): the
        # manifest records neither; a leading '//' (a network share) stays
        path = path[:1] + re.sub(r"/(?:\./|/)+", "/", path[1:])
        for root in sorted(self.root_locations(), key=len, reverse=True):
            root = root.rstrip("/") + "/"
            # a drive (C:/) or a network share (\\server\share as //server/share/, as a Windows site records it): any case
            windows = re.match(r"^(?:[A-Za-z]:/|//[^/]+/[^/]+/)", root) is not None
            if path.startswith(root) or (windows and path.lower().startswith(root.lower())):
                return path[len(root):]
        while path.startswith("./"):
            path = path[2:]
        return path

    def spellings(self, path: str) -> list[str]:
        """The site-relative paths `path` may name: as typed (a backslash is a character of a POSIX name),
        then with backslashes as Windows separators, then each in the other Unicode form (a name typed or
        pasted on macOS is decomposed, NFD; elsewhere composed, NFC: the same letters on screen), then the name
        the text tables show quoted this way ('OMOP/new\\nline.csv', copied from `files`); no repeats."""
        from .units import unshown_name

        literal, windows = self.site_relative(path, backslash_separates=False), self.site_relative(path)
        copied = unshown_name(os.fspath(path)) if isinstance(path, str | os.PathLike) else None  # (a Path, in a notebook)
        return list(dict.fromkeys([literal, windows, *(unicodedata.normalize(form, spelling)
                                                       for spelling in (literal, windows) for form in ("NFC", "NFD")),
                                   *([self.site_relative(copied, backslash_separates=False)] if copied else [])]))

    def history_of(self, path: str, *, quiet: bool = False) -> pl.DataFrame:
        """`history` of a path as people type it (see spellings): the first spelling the manifest records. A path no
        version has warns (NoSuchPath), unless `quiet` (the command line says it as its error)."""
        spellings = self.spellings(path)
        for srcfile in spellings[:-1]:
            found = self._history(srcfile)
            if found.height:
                return found
        found = self._history(spellings[-1])
        if found.height == 0 and not quiet:
            self._said_unknown_path(text_argument(path, "a path", str(self.path), '"OMOP/person.csv"'))
        return found

    def similar_paths(self, path: str, limit: int = 5, *, folders: bool = False, ever: bool = False,
                      as_of: str | datetime | None = None) -> list[str]:
        """Paths of the latest version (or of version `as_of`) that `path` may mean, when none is it: the same but for
        letter case, Unicode form or spaces around a part of the name (`trail.csv ` looks like `trail.csv`); with
        `folders`, when no file is such, the folders (ending in '/') that are; with `ever`, the paths of any version
        (`history` follows files removed or renamed since: their paths are not in the latest). `files --as-of V --path`
        asks V's: the latest's named files V did not have, and left out those it had."""
        limit = count_argument(limit, "limit", "similar_paths(path, limit)")
        if not self.latest():
            return []

        def key(expr: pl.Expr) -> pl.Expr:
            return (expr.str.normalize("NFC").str.to_lowercase().str.split("/")
                    .list.eval(pl.element().str.strip_chars(" ")).list.join("/"))

        files = self._paths_ever() if ever else self._paths_at(as_of)
        wanted = pl.DataFrame({"srcfile": self.spellings(path)}).select(key(pl.col("srcfile")))["srcfile"]
        found = files.filter(key(pl.col("srcfile")).is_in(wanted.implode()))["srcfile"].sort().head(limit).to_list()
        if found or not folders:
            return found
        # A folder (`files --path 000001/waveforms` said "0 files"): the folders whose files' keys lie under its key,
        # spelled as the manifest has them
        keyed = files.with_columns(key=key(pl.col("srcfile")))
        under = [(w.rstrip("/") + "/", w.rstrip("/").count("/") + 1) for w in wanted.unique().to_list() if w.strip("/")]
        return sorted({"/".join(srcfile.split("/")[:depth]) + "/" for prefix, depth in under
                       for srcfile in keyed.filter(pl.col("key").str.starts_with(prefix))["srcfile"].head(1000)})[:limit]

    def _paths_at(self, as_of: str | datetime | None = None) -> pl.DataFrame:
        """The paths (`srcfile`) of the files of version `as_of`, as `files` orders them: the version `files` holds,
        or the path column alone (`files --path` of a path naming nothing read all 16 columns of the version to
        suggest the paths it may mean)."""
        label = self.resolve(as_of)
        cached = getattr(self, "_file_set", None)
        if cached is not None and cached[0] == label:
            return cached[1].select("srcfile")
        return self.files_part(label, columns=("srcfile",))[1]

    def _folder(self, path: str, *, backslash_separates: bool = True) -> str | None:
        """The site-relative path `under` keeps the rows of: "" the site root (every row), None nothing (an absolute
        path under no recorded root)."""
        path = text_argument(path, "a path", str(self.path), '"OMOP"')  # a pathlib path too
        folder = self.site_relative(path.rstrip("/\\") + "/", backslash_separates=backslash_separates)
        if folder.startswith("/"):  # absolute, under no recorded root (`/`: not the site's root, which matched all)
            return None
        return folder.rstrip("/")

    def _folders(self, path: str) -> list[str | None]:
        """The folders (see _folder) `rows_under` tries in turn for `path`, the first that keeps any rows kept."""
        path = text_argument(path, "a path", str(self.path), '"OMOP"')
        return list(dict.fromkeys([self._folder(spelling, backslash_separates=False)
                                   for spelling in [path, *self.spellings(path)[1:]]]))

    def under(self, path: str, columns: tuple[str, ...] = ("srcfile",), *, backslash_separates: bool = True) -> pl.Expr:
        """Rows whose path (any of `columns`) is `path` or lies under it, `path` taken as people type it
        (site_relative: absolute under a recorded root, Windows separators, './'); the site root: every row."""
        return _under_folder(self._folder(path, backslash_separates=backslash_separates), columns)

    def rows_under(self, frame: pl.DataFrame, path: str, columns: tuple[str, ...] = ("srcfile",)) -> pl.DataFrame:
        """The rows of `frame` under `path` (see under) in the first of its spellings that has any, as
        `history_of` reads a path."""
        path = text_argument(path, "a path", str(self.path), '"OMOP"')  # a pathlib path too

        def kept(spelling: str) -> pl.DataFrame:  # `frame` may be a function giving its slices (files_sliced): the
            chosen = self.under(spelling, columns, backslash_separates=False)  # rows under, not the whole, held
            return frame.filter(chosen) if isinstance(frame, pl.DataFrame) else pl.concat(
                [part.filter(chosen) for part in frame()], how="vertical")

        rows = kept(path)
        if rows.height:
            return rows
        for spelling in self.spellings(path)[1:]:  # already site-relative, backslashes resolved as they were meant
            rows = kept(spelling)
            if rows.height:
                return rows
        return rows

    def person_suggestions(self, person: str, as_of: str | datetime | None = None, limit: int = 5) -> list[str]:
        """Person ids of the version that `person` may mean: the same number with other leading zeros
        ('12' -> '000012'), else ids that contain it."""
        person = text_argument(person, "a person", str(self.path), '"000123" (the person folder\'s name)')
        limit = count_argument(limit, "limit", "person_suggestions(person, limit=...)")
        person = person.strip()  # an id pasted with a space or a line break (' 000123') was said to match nothing
        ids = self.files(as_of).select(pl.col("person_id").drop_nulls().unique()).to_series()
        same_number = ids.filter(ids.str.strip_chars_start("0") == person.lstrip("0")) if person.lstrip("0") else ids.head(0)
        # else ids that hold it, in either Unicode form and any case: a folder name pasted from macOS (é as e + accent)
        folded = ids.str.normalize("NFC").str.to_lowercase()
        typed = unicodedata.normalize("NFC", person).lower()
        found = same_number if same_number.len() else ids.filter(folded.str.contains(typed, literal=True))
        return sorted(found.to_list())[:limit]

    def files_per_person(self, as_of: str | datetime | None = None) -> pl.DataFrame:
        files = self.files(as_of)
        return (files.filter(pl.col("person_id").is_not_null())
                .group_by("person_id").agg(files=pl.len(), bytes=pl.col("size").sum(),
                                           modalities=pl.col("modality").unique().sort().str.join(","))
                .sort("person_id"))

    def sessions(self, as_of: str | datetime | None = None, *, con: duckdb.DuckDBPyConnection | None = None) -> pl.DataFrame:
        """One row per waveform session: person, category, start, duration, files, bytes. The start and
        duration come from the names (a stamp) or, where the names carry none (today's integer session
        ids), from the session's WFDB header as validation read it (base date/time, length / frequency).
        With `con` (from `duckdb`), the files are grouped in DuckDB, from its table `files`: only the
        sessions come into memory."""
        # Person-level files (Waveforms/RECORDS) form a record with an empty session: not a session.
        # A session is a record (person, session, modality): grouping by its integer id is ~3x faster.
        # Its main header is the file named <session>.hea.
        query = """SELECT record_id, first(person_id) AS person_id, first(category) AS category,
                          first(session_id) AS session_id, min(start_date) AS start_date, min(start_time) AS start_time,
                          max(duration_s) AS duration_s, count(*) AS files, sum(size)::BIGINT AS bytes,
                          min(md5) FILTER (WHERE string_split(srcfile, '/')[-1] = session_id || '.hea') AS _hea
                   FROM files WHERE modality = 'Waveforms' AND record_id IS NOT NULL AND session_id <> ''
                   GROUP BY record_id"""
        if con is not None and not isinstance(con, duckdb.DuckDBPyConnection):
            raise UsageError(f"con is a DuckDB connection, not {type(con).__name__} {con!r}"[:200],
                             where="sessions(as_of, con=...)", fix="pass the connection m.duckdb(version) gives, or leave "
                                                                   "out con (the version's files are read here)")
        if con is not None:
            held = _DATABASE_VERSION.get(con)
            if as_of is None and held is not None:
                as_of = held
            elif held is not None and self.resolve(as_of) != held:
                # (the sessions of the connection's version came back under the version asked for)
                raise UsageError(f"sessions of version {self.resolve(as_of)} were asked of a DuckDB connection that "
                                 f"holds the files of version {held}", where="sessions(as_of, con=...)",
                                 fix=f"pass the connection of that version, m.duckdb({self.resolve(as_of)!r}), or "
                                     f"leave out as_of (the connection's version)")
        if con is None:
            with private_duckdb() as own:
                own.register("files", self.files(as_of, modality="Waveforms").to_arrow())
                grouped = own.sql(query).pl()
        else:
            grouped = con.sql(query).pl()
        headers = self._header_starts(grouped.filter(pl.col("_hea").is_not_null()).select("record_id", md5="_hea"))
        return (grouped.drop("_hea").cast({"files": pl.UInt32})
                .join(headers, on="record_id", how="left")
                .with_columns(start=pl.coalesce(pl.concat_str("start_date", "start_time", separator=" ")
                                                .str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False), "_start"),
                              duration_s=pl.coalesce("duration_s", "_duration"))
                .with_columns(start_date=pl.col("start").dt.strftime("%Y-%m-%d"),
                              start_time=pl.col("start").dt.strftime("%H:%M:%S"))
                .drop("record_id", "_start", "_duration").sort("person_id", "category", "session_id"))

    def _header_starts(self, headers: pl.DataFrame) -> pl.DataFrame:
        """record_id, _start, _duration of the sessions' main WFDB headers, from the facts validation read
        (none in a snapshot folder)."""
        return pl.DataFrame(schema={"record_id": pl.Int64, "_start": pl.Datetime("us"), "_duration": pl.Float64})

    def duplicates(self, as_of: str | datetime | None = None) -> pl.DataFrame:
        """Non-empty contents (MD5) present at more than one path. Files without an MD5 (unverifiable cloud files)
        are no one's twins: they were listed as one content at all their paths."""
        files = self.files(as_of).filter((pl.col("size") > 0) & pl.col("md5").is_not_null())
        return (files.filter(pl.col("md5").is_duplicated())
                .group_by("md5").agg(paths=pl.len(), size=pl.col("size").first(),
                                     persons=pl.col("person_id").drop_nulls().n_unique(), srcfiles=pl.col("srcfile").sort())
                .sort("paths", "md5", descending=[True, False]))

    def duckdb(self, as_of: str | datetime | None = None, *, compare_to: str | datetime | None = None
               ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with the tables files (the version's), base_files (`compare_to`'s, when given, and
        the view diff: `diff(compare_to, as_of)`'s rows, computed in DuckDB),
        versions and changes (the versions up to the later of the two, as the manifest stood then: not those a
        run committed after them), registry and scan_errors. They are copied in slices of SLICE_ROWS
        rows into a DuckDB database capped at REVIEW_MEMORY in an owner-only scratch folder (fsutil.scratch_folder):
        a notebook's memory does not grow with the manifest (it held two million-row polars frames, ~5 GB, at
        1M files). The scratch folder goes when the reader is closed (`close()`), else with the process.
        `sessions(con=con)` groups the connection's version's files."""
        label = self.resolve(as_of)
        base = self.resolve(compare_to) if compare_to is not None else None
        upto = max(label, base or label)  # (a later compare_to: the changes up to it)
        # Later versions' change sets were there too: a review of an earlier version counted, as its own, the
        # removals and replacements made after it (and those of a run that committed since the reader opened).
        tables = {"files": map(self._known, self._file_slices(label)), "changes": self._change_slices(upto),
                  "versions": iter([self.versions().filter(pl.col("label") <= upto)]),
                  "registry": iter([self.registry()]), "scan_errors": iter([self.scan_errors(label)])}
        if base is not None:
            tables["base_files"] = map(self._known, self._file_slices(base))
        con, stack = self.review_database(tables, version=label)
        self.__dict__.setdefault("_sessions", []).append(stack)
        return con

    @staticmethod
    def review_database(tables: dict[str, Iterator[pl.DataFrame]], *, version: str
                        ) -> tuple[duckdb.DuckDBPyConnection, contextlib.ExitStack]:
        """(a connection, the stack that closes it and removes its scratch folder) of a DuckDB database capped at
        REVIEW_MEMORY holding `tables`, each filled from its slices (`duckdb`; the HTML report fills `files` alone),
        `files` being those of `version` (what `sessions(con=...)` checks its version against)."""
        from .fsutil import scratch_folder

        stack = contextlib.ExitStack()
        try:
            folder = stack.enter_context(scratch_folder("chorus-duckdb-", None))
            # A database file, not an in-memory one: its tables' blocks leave memory for the file beyond the cap.
            # One thread: the sessions' grouping of a 1M-file version (335k records) needed more than the cap on two
            # (each thread's share), and failed; on one it spills (1M records: 1.4 s).
            con = duckdb.connect(str(folder / "review.duckdb"), config={
                "threads": 1, "memory_limit": REVIEW_MEMORY, "temp_directory": str(folder), "preserve_insertion_order": False})
            stack.callback(con.close)
            for name, slices in tables.items():
                for i, part in enumerate(slices):
                    con.register("_slice", part.to_arrow())
                    con.execute(f"CREATE TABLE {name} AS SELECT * FROM _slice" if i == 0 else f"INSERT INTO {name} SELECT * FROM _slice")
                    con.unregister("_slice")
            if "base_files" in tables:
                _diff_table(con)
        except BaseException:  # a manifest error or Ctrl-C while filling: no scratch folder left behind
            stack.close()
            raise
        _DATABASE_VERSION[con] = version
        return con, stack

    def close(self) -> None:
        """End the DuckDB connections `duckdb` gave and remove their scratch folders."""
        for stack in self.__dict__.pop("_sessions", []):
            stack.close()

    def __enter__(self) -> "ManifestReader":
        return self

    def __exit__(self, *exc: object) -> None:  # `with open_manifest(db) as m:` closes what `duckdb` opened
        self.close()

    def _file_slices(self, label: str) -> Iterator[pl.DataFrame]:
        """The version's files (FILE_COLUMNS) in slices, the first possibly empty; a storage that cannot read
        part of a version gives it whole."""
        yield self._files_at(label, None, None).select(FILE_COLUMNS)

    def _change_slices(self, upto: str) -> Iterator[pl.DataFrame]:
        """The change sets of the versions up to `upto` (this reader's), in slices."""
        yield self.all_changes().filter(pl.col("version") <= upto)

    def _paths_ever(self) -> pl.DataFrame:
        """`srcfile`: every path a version of this reader held (each came in by a change: added, replaced, renamed)."""
        return self.all_changes().select("srcfile").unique()

    def all_changes(self) -> pl.DataFrame:
        frames = [self.changes(label) for label in self.versions()["label"].to_list()]
        return pl.concat(frames, how="diagonal_relaxed") if frames else self.changes(None)


def _diff_table(con: duckdb.DuckDBPyConnection) -> None:
    """The view `diff` of a review database holding `files` and `base_files`: `diff(compare_to, version)` as rows
    (DIFF_SCHEMA), its change set computed in DuckDB (diff.py's rule, as `diff` applies it: by MD5 and size, a file
    without an MD5 by etag, size and mtime as the run compares it) into
    the table `_change_set`. A version that replaced a million files was read whole as a polars frame (1.7 GB, and
    a minute) by the report and the notebook, which show its counts and first rows."""
    from .diff import change_set_sql

    # The rows of one side only, as `diff` compares them: a row of both versions is the same file, unchanged. The
    # whole sides joined needed more than the database's cap at 160k files (the query's CTEs are held in memory).
    for side, table, other, key in (("previous_files", "base_files", "files", "file_id, "),
                                    ("current_files", "files", "base_files", "")):
        con.execute(f"CREATE TEMP VIEW {side} AS SELECT {key}srcfile, size, mtime_ns, md5, etag "
                    f"FROM {table} ANTI JOIN {other} USING (file_id)")
    con.execute(f"CREATE TABLE _change_set AS {change_set_sql()}")
    con.execute("DROP VIEW previous_files; DROP VIEW current_files")
    con.execute("""CREATE VIEW diff AS
        SELECT d.change, d.old_srcfile, o.md5 AS old_md5, f.* FROM _change_set d JOIN files f USING (srcfile)
            LEFT JOIN base_files o ON o.file_id = d.old_file_id WHERE d.change <> 'removed'
        UNION ALL
        SELECT d.change, d.old_srcfile, o.md5 AS old_md5, o.* FROM _change_set d
            JOIN base_files o ON o.file_id = d.old_file_id WHERE d.change = 'removed'""")


class SQLiteReader(ManifestReader):
    def __init__(self, path: Path):
        self.path = Path(path)
        self._manifest = Manifest(self.path)
        self._manifest.require()
        self._versions: pl.DataFrame | None = None

    def _query(self, sql: str, params: tuple = (), schema: dict | None = None) -> pl.DataFrame:
        return self._manifest.query_frame(sql, params, schema=schema)

    def root_locations(self) -> list[str]:
        return [loc for loc in self._manifest.roots()["location"].to_list() if "://" not in loc]

    def _committed_since_open(self, label: str) -> bool:
        return self._query("SELECT count(*) AS n FROM versions WHERE label = ?", (label,))["n"][0] > 0

    def _refuse_edited_times(self, asked: object) -> None:
        edited = self._manifest.edited_version_times()
        if edited:
            raise UsageError(
                f"no version can be found by the time {asked}: the commit times of the manifest's versions were edited "
                f"({'; '.join(edited)}), so which version was current then cannot be told; nothing was read",
                where=str(self.path),
                fix="give a version label instead (labels are not affected; `" + self.versions_command() + "` lists "
                    "them); or set each version's finished_at back to a time within its run's (the versions and runs "
                    "tables; a backup of the manifest has them)")

    def _paths_ever(self) -> pl.DataFrame:
        # the path index, not the change sets; rows of a version committed since this reader listed its versions left out
        return self._query("SELECT DISTINCT srcfile FROM source_files WHERE version_valid <= ?", (self.latest(),),
                           {"srcfile": pl.String})

    def versions(self) -> pl.DataFrame:
        if self._versions is None:  # with each version's upload state (store/uploads.py)
            from .store.uploads import versions_with_upload_state

            self._versions = versions_with_upload_state(self._manifest)
        return self._versions

    def _files_at(self, label: str, modality: str | None, person: str | None) -> pl.DataFrame:
        sql, params = self._files_sql(label, modality, person, FILE_COLUMNS)
        return self._query(sql, params, FILE_SCHEMA)

    def _files_part(self, label: str, modality: str | None, person: str | None, columns: tuple[str, ...],
                    limit: int | None, folders: list[str | None] | None = None) -> tuple[int, pl.DataFrame]:
        from .store.manifest import read_frame

        # (_known reads version_valid; the latest version's query, a UNION, is ordered by srcfile, which a compound
        # SELECT can only order by a column it gives: columns=("md5",) was "SQLite failed on the manifest")
        columns = tuple(dict.fromkeys([*columns, "version_valid", "srcfile"]))
        schema = {c: FILE_SCHEMA[c] for c in columns}
        tried = [""] if folders is None else folders
        with self._manifest.adbc() as con, con.cursor() as cur:  # one transaction: the count and the rows of one state
            for number, folder in enumerate(tried, 1):  # `folders`: the first with rows, counted in the query
                sql, params = self._files_sql(label, modality, person, columns, folder=folder)
                if limit is None:
                    frame = read_frame(cur, sql, params)
                    count = frame.height
                else:
                    count = int(read_frame(cur, f"SELECT count(*) AS n FROM ({sql})", params)["n"][0])
                if count == 0 and number < len(tried):
                    continue  # none under this spelling: the next
                if limit is not None:
                    frame = read_frame(cur, f"{sql} LIMIT ?", (*params, limit))
                break
        frame = pl.DataFrame(schema=schema) if frame.width == 0 or frame.height == 0 else frame.cast(schema)
        return count, self._known(frame)

    def _files_sliced(self, label: str, modality: str | None, person: str | None, rows: int,
                      folders: list[str | None] | None = None) -> Iterator[pl.DataFrame]:
        # Pages by path (keyset: the paths after the last one read, by the index on srcfile), each one bounded query;
        # a path is one file of a version. Each page is of the version's rows whatever a run commits between two.
        # (A connection a page: none held open between two, when the caller reads the manifest in between.)
        # `folders`: in the query too, the first that has rows (`files --path P --json` held every row under P).
        tried = [""] if folders is None else folders
        for number, folder in enumerate(tried, 1):
            after: str | None = None
            while True:
                sql, params = self._files_sql(label, modality, person, FILE_COLUMNS, after=after, folder=folder)
                frame = self._query(f"{sql} LIMIT ?", (*params, rows), FILE_SCHEMA)
                if after is None and frame.height == 0 and number < len(tried):
                    break  # none under this spelling: the next
                if frame.height or after is None:
                    yield self._known(frame)
                if frame.height < rows:
                    return
                after = frame["srcfile"][-1]

    def _files_sql(self, label: str, modality: str | None, person: str | None, columns: tuple[str, ...], *,
                   after: str | None = None, folder: str | None = "") -> tuple[str, tuple]:
        """The query of the files of version `label` (one modality, one person), `columns` of each, by path; `after`:
        those whose path sorts after it; `folder` (see ManifestReader._folder): those under it."""
        filters, extra = "", []
        for column, value in (("modality", modality), ("person_id", person), ("srcfile", after)):
            if value is not None:
                filters += f" AND {column} {'>' if column == 'srcfile' else '='} ?"
                extra.append(value)
        if folder is None:
            filters += " AND 0"
        elif folder:
            # the path itself, or one in [folder/, folder0): '0' follows '/', and SQLite compares text byte by byte
            # as polars' starts_with does (no LIKE: a '%' or '_' of a name is no pattern; the index on srcfile serves)
            filters += " AND (srcfile = ? OR (srcfile >= ? AND srcfile < ?))"
            extra += [folder, folder + "/", folder + "0"]
        cols = ", ".join(columns)
        ended_filters = re.sub(r"\b(modality|person_id|srcfile)\b", r"s.\1", filters)  # (of the joined rows)
        if label == self.latest():
            # The latest version this reader knows: the current rows (their partial index), less those a run
            # committed since, plus the rows such a run ended (the change sets' version index; none if no run did).
            # One statement: one read of the manifest, whichever version it holds by then. The current rows alone
            # were the next version's under this one's label, for a notebook open while a run committed.
            sql = (f"SELECT {cols} FROM source_files WHERE time_invalid IS NULL AND version_valid <= ?{filters} "
                   f"UNION ALL SELECT {', '.join(f's.{c}' for c in columns)} FROM changes c "
                   "JOIN source_files s ON s.file_id = c.old_file_id "
                   f"WHERE c.version > ? AND s.version_valid <= ?{ended_filters} ORDER BY srcfile")
            params = (label, *extra, label, label, *extra)
        else:
            sql = (f"SELECT {cols} FROM source_files WHERE version_valid <= ? AND (version_invalid IS NULL OR "
                   f"version_invalid > ?){filters} ORDER BY srcfile")
            params = (label, label, *extra)
        return sql, params

    def _file_slices(self, label: str) -> Iterator[pl.DataFrame]:
        # Ranges of file ids (the rowid): each slice is one bounded query, whatever the manifest's size. Each
        # asks for the rows valid at `label`, never for the current rows (time_invalid IS NULL): a run that commits
        # between two slices ends current rows, and the later slices left them out (a version read half).
        yield from self._slices("source_files", "file_id", f"SELECT {', '.join(FILE_COLUMNS)} FROM source_files "
                                "WHERE file_id BETWEEN ? AND ? AND version_valid <= ? "
                                "AND (version_invalid IS NULL OR version_invalid > ?)", (label, label), FILE_SCHEMA)

    def _change_slices(self, upto: str) -> Iterator[pl.DataFrame]:
        first, last = self._query("SELECT min(rowid), max(rowid) FROM changes").row(0)
        for start in range(first or 0, (last or -1) + 1, SLICE_ROWS):
            yield self._manifest.changes_query("c.rowid BETWEEN ? AND ? AND c.version <= ?",
                                               (start, start + SLICE_ROWS - 1, upto))
        if first is None:
            yield self._manifest.changes_query("1 = 0", ())

    def _slices(self, table: str, key: str, sql: str, params: tuple, schema: dict) -> Iterator[pl.DataFrame]:
        first, last = self._query(f"SELECT min({key}), max({key}) FROM {table}").row(0)
        if first is None:
            yield pl.DataFrame(schema=schema)
        for start in range(first or 0, (last or -1) + 1, SLICE_ROWS):
            yield self._query(sql, (start, start + SLICE_ROWS - 1, *params), schema)

    def _changed_between(self, older: str, newer: str) -> tuple[pl.DataFrame, pl.DataFrame]:
        # Every row created or ended in (older, newer] is in those versions' change sets
        # (indexed by version), so neither side scans the whole manifest.
        cols = ", ".join(f"s.{c}" for c in FILE_COLUMNS)
        gone = self._query(
            f"SELECT DISTINCT {cols} FROM changes c JOIN source_files s ON s.file_id = c.old_file_id "
            "WHERE c.version > ? AND c.version <= ? AND s.version_valid <= ?", (older, newer, older), FILE_SCHEMA)
        came = self._query(
            f"SELECT DISTINCT {cols} FROM changes c JOIN source_files s ON s.file_id = c.file_id "
            "WHERE c.version > ? AND c.version <= ? AND (s.version_invalid IS NULL OR s.version_invalid > ?)",
            (older, newer, newer), FILE_SCHEMA)
        return gone, came

    def _path_rows(self, srcfile: str, before_file_id: int | None) -> pl.DataFrame:
        cols = ", ".join(f"s.{c}" for c in FILE_COLUMNS)
        before, params = ("AND s.file_id < ? ", (srcfile, before_file_id)) if before_file_id is not None else ("", (srcfile,))
        return self._query(
            f"SELECT b.change, b.old_srcfile, e.change AS ended_by, "
            f"CASE WHEN e.change = 'renamed' THEN e.srcfile END AS renamed_to, {cols} "
            "FROM source_files s "  # the path index, then the change sets by version
            "LEFT JOIN changes b ON b.version = s.version_valid AND b.file_id = s.file_id "
            "LEFT JOIN changes e ON e.version = s.version_invalid AND e.old_file_id = s.file_id "
            f"WHERE s.srcfile = ? {before}ORDER BY s.file_id", params, HISTORY_SCHEMA)

    def changes(self, version: str | None = None) -> pl.DataFrame:
        label = self.resolve(version)
        return self._manifest.changes(label)[1]

    def all_changes(self) -> pl.DataFrame:
        return self._manifest.changes_query("1 = 1", ())

    def change_counts(self) -> pl.DataFrame:
        return self._query(
            "SELECT c.version, coalesce(n.modality, o.modality, 'Other') AS modality, c.change, count(*) AS n "
            "FROM changes c LEFT JOIN source_files n ON n.file_id = c.file_id LEFT JOIN source_files o ON o.file_id = c.old_file_id "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            schema=CHANGE_COUNTS_SCHEMA)

    def registry(self) -> pl.DataFrame:
        # Typed as the table is: a column null throughout (`date`, `time` of a site whose session names carry no
        # stamp, today's layout) came back Int64, and comparing it with a date string was a polars error.
        return self._query("SELECT * FROM registry ORDER BY record_id", schema=schema_of("registry"))

    def _header_starts(self, headers: pl.DataFrame) -> pl.DataFrame:
        from .validate.rules import KIND_WFDB

        facts = self._manifest.validation.known_facts(headers.select("md5", kind=pl.lit(KIND_WFDB)))
        decoded = facts.select("md5", pl.col("facts").str.json_decode(pl.Struct({
            "base_date": pl.String, "base_time": pl.String, "sig_len": pl.Int64, "fs": pl.Float64})).alias("_f")).unnest("_f")
        return headers.join(decoded, on="md5").select(
            "record_id",
            _start=pl.concat_str("base_date", pl.lit(" "), pl.col("base_time").str.slice(0, 8)).str.to_datetime(
                "%Y-%m-%d %H:%M:%S", strict=False),
            _duration=pl.col("sig_len") / pl.col("fs"),
        ).unique("record_id")

    def scan_errors(self, version: str | None = None) -> pl.DataFrame:
        label = self.resolve(version)
        return self._manifest.version_errors(label)

    def _findings(self, label: str) -> pl.DataFrame:
        return self._manifest.validation.findings(label)

    def validated(self, version: str | None = None) -> bool | None:
        return self.validation(version)[1]

    def other_rules(self, version: str | None = None) -> str | None:
        return self.validation(version)[2]

    def _no_versions(self) -> UsageError:
        return self._manifest.no_version_error()  # (what the runs recorded say: how many, how the latest ended)

    def _run_rows(self) -> pl.DataFrame | None:
        return self._query(f"SELECT {', '.join(_RUN_READ)} FROM runs", schema={c: RUNS_SCHEMA[c] for c in _RUN_READ})

    @property
    def records_runs(self) -> bool:
        return True

    def _root_locations_all(self) -> list[str]:
        return self._manifest.roots()["location"].to_list()

    def validation(self, version: str | None = None) -> tuple[pl.DataFrame, bool | None, str | None]:
        from .validate.rules import edition

        findings, rules = self._manifest.validation.checked(self.resolve(version))
        if not rules or edition() in rules:  # unchecked, or checked by this release's rules
            return findings, bool(rules), None
        return findings, True, next((r for r in rules if r), None) or "not recorded: a release before schema 9"

    def findings_overview(self, version: str | None = None, previous: str | None = None, *,
                          examples: int = 3) -> FindingsOverview:
        from .validate.rules import edition

        label = self.resolve(version)
        total, groups, rules, before_rules, since = self._manifest.validation.overview(label, previous, examples)
        if not rules or edition() in rules:
            validated, other = bool(rules), None
        else:
            validated, other = True, next((r for r in rules if r), None) or "not recorded: a release before schema 9"
        if previous is None or not (validated and before_rules):
            since = None  # (either version not checked: nothing to compare)
        return FindingsOverview(total, groups, validated, other, since)


# ----------------------------------------------------------------------------- runs (ManifestReader.runs)

RUNS_SCHEMA = {"run_id": pl.Int64, "started_at": pl.String, "finished_at": pl.String, "mode": pl.String,
               "exit_code": pl.Int64, "version": pl.String, "outcome": pl.String, "message": pl.String,
               "what_to_do": pl.String}
_RUN_READ = ("run_id", "started_at", "finished_at", "mode", "exit_code", "version", "message")
RUNS_SHOWN = 30  # failed runs the report lists (the most recent); older ones are counted


# The change kinds whose rows have content in the newer version (what a checksum list of a change set lists).
CONTENT_CHANGES = ("added", "replaced", "renamed")


def _with_content(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows of files, a change set or a diff that name a file present in the (newer) version."""
    return frame.filter(pl.col("change").is_in(CONTENT_CHANGES)) if "change" in frame.columns else frame


def md5sum_lines(frame: pl.DataFrame) -> Iterator[str]:
    r"""The lines `md5sum -c` checks, `<md5>  <path>` (text mode), sorted by path, of the files of a
    `files`, `changes` or `diff` frame: paths are site-relative, which is also the path under the version
    folder. Of a change set or diff only added, replaced and renamed files; rows without an MD5
    (unverifiable cloud files) are left out: `without_md5` returns them. A path with a backslash, newline
    or carriage return is written as GNU md5sum writes it: the line starts with a backslash and those
    characters become `\\`, `\n`, `\r`."""
    rows = _with_content(frame).filter(pl.col("md5").is_not_null()).select("srcfile", "md5").sort("srcfile")
    for path, md5 in rows.iter_rows():
        if "\\" in path or "\n" in path or "\r" in path:
            escaped = path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            yield f"\\{md5}  {escaped}"
        else:
            yield f"{md5}  {path}"


def without_md5(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows `md5sum_lines` leaves out for want of an MD5 (sorted by path)."""
    return _with_content(frame).filter(pl.col("md5").is_null()).sort("srcfile")


def size_flags(files: pl.DataFrame | duckdb.DuckDBPyConnection) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per-modality size statistics, flagged files) of a files frame, or of the table `files` of a DuckDB
    connection (`ManifestReader.duckdb`: only the statistics and the flagged files come into memory). A file
    is flagged `empty` (size 0), or `large` / `small` when log10(size) is beyond its modality's quartiles by
    more than OUTLIER_IQR interquartile ranges and by at least OUTLIER_MIN_DECADES (a factor 10); modalities
    with fewer than OUTLIER_MIN_FILES non-empty files are not checked for outliers."""
    if isinstance(files, pl.DataFrame):
        with private_duckdb() as con:
            con.register("files", files.select("srcfile", "modality", "person_id", "size").to_arrow())
            return size_flags(con)
    con = files
    # One pass of the rule in SQL. The quartiles of log10(size) are polars' quantile(q, "linear") (quantile_cont),
    # computed from the count of each distinct size: quantile_cont holds every value of a modality in memory, which
    # at 3M files passed the review database's cap (the report failed: "Out of Memory Error"); the counts are a
    # grouping DuckDB can spill, and a site has far fewer distinct sizes than files.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _size_stats AS
        WITH f AS (SELECT coalesce(modality, 'Other') AS modality, size FROM files),
        s AS (SELECT modality, count(*) AS files, count(*) FILTER (WHERE size = 0) AS empty,
                     count(*) FILTER (WHERE size > 0) AS nonempty,
                     min(size) FILTER (WHERE size > 0) AS min, max(size) FILTER (WHERE size > 0) AS max,
                     coalesce(sum(size) FILTER (WHERE size > 0), 0)::BIGINT AS bytes
              FROM f GROUP BY modality),
        c AS (SELECT modality, size, count(*) AS n FROM f WHERE size > 0 GROUP BY modality, size),
        r AS (SELECT modality, log10(size) AS v, sum(n) OVER w - n AS first, sum(n) OVER w - 1 AS last,
                     sum(n) OVER (PARTITION BY modality) AS total
              FROM c WINDOW w AS (PARTITION BY modality ORDER BY size ROWS UNBOUNDED PRECEDING)),
        h AS (SELECT modality, q, (total - 1) * q AS pos FROM (SELECT DISTINCT modality, total FROM r),
              (VALUES (0.25), (0.5), (0.75)) AS qs(q)),
        k AS (SELECT h.modality, h.q, h.pos,
                     (SELECT v FROM r WHERE r.modality = h.modality AND floor(h.pos) BETWEEN r.first AND r.last) AS v_lo,
                     (SELECT v FROM r WHERE r.modality = h.modality AND ceil(h.pos) BETWEEN r.first AND r.last) AS v_hi
              FROM h),
        qn AS (SELECT modality, max(v_lo + (pos - floor(pos)) * (v_hi - v_lo)) FILTER (WHERE q = 0.25) AS q1,
                      max(v_lo + (pos - floor(pos)) * (v_hi - v_lo)) FILTER (WHERE q = 0.5) AS median,
                      max(v_lo + (pos - floor(pos)) * (v_hi - v_lo)) FILTER (WHERE q = 0.75) AS q3
               FROM k GROUP BY modality)
        SELECT s.*, qn.q1, qn.median, qn.q3, nonempty >= {OUTLIER_MIN_FILES} AS checked,
               q1 - greatest({OUTLIER_IQR} * (q3 - q1), {OUTLIER_MIN_DECADES}) AS lo,
               q3 + greatest({OUTLIER_IQR} * (q3 - q1), {OUTLIER_MIN_DECADES}) AS hi
        FROM s LEFT JOIN qn USING (modality)""")
    flagged = con.sql("""
        WITH f AS (SELECT srcfile, coalesce(modality, 'Other') AS modality, person_id, size,
                          CASE WHEN size > 0 THEN log10(size) END AS _log FROM files)
        SELECT f.srcfile, f.modality, f.person_id, f.size,
               CASE WHEN f.size = 0 THEN 'empty' WHEN _log > s.hi THEN 'large' ELSE 'small' END AS flag,
               CASE WHEN f.size > 0 THEN round(power(10, s.median))::BIGINT END AS modality_median
        FROM f JOIN _size_stats s USING (modality)
        WHERE f.size = 0 OR (s.checked AND (_log > s.hi OR _log < s.lo))
        ORDER BY CASE WHEN f.size = 0 THEN 'Infinity'::DOUBLE ELSE abs(_log - s.median) END DESC, f.srcfile""").pl()
    # the range of the sizes within the fences (a box plot's whiskers)
    stats = con.sql("""
        WITH f AS (SELECT coalesce(modality, 'Other') AS modality, size, log10(size) AS _log FROM files WHERE size > 0),
        w AS (SELECT f.modality, min(size) AS low, max(size) AS high FROM f JOIN _size_stats s USING (modality)
              WHERE NOT s.checked OR _log BETWEEN s.lo AND s.hi GROUP BY f.modality)
        SELECT s.*, w.low, w.high FROM _size_stats s LEFT JOIN w USING (modality) ORDER BY modality""").pl()
    outliers = flagged.filter(pl.col("flag") != "empty").group_by("modality").agg(outliers=pl.len())
    stats = (stats.join(outliers, on="modality", how="left").with_columns(pl.col("outliers").fill_null(0))
             .select("modality", "files", "empty", "nonempty", "min", "max", "bytes", "q1", "median", "q3", "checked",
                     "lo", "hi", "outliers", "low", "high")
             .cast({"files": pl.UInt32, "empty": pl.UInt32, "nonempty": pl.UInt32}))  # as polars counts them
    con.execute("DROP TABLE _size_stats")
    return stats, flagged


def shown_frame(frame: pl.DataFrame, edge: int = 50) -> pl.DataFrame:
    """The frame as a notebook shows it to people: names (`srcfile`, `old_srcfile`, `person_id`, … and lists of
    them) as the text tables show them (units.shown_name: a line break, a right-to-left override or a trailing
    space quoted with escapes), other text with its control and invisible characters escaped (units.shown_text).
    Only the first and last `edge` rows are changed, the ones a table shows; the shape stays. For display only:
    the values are no longer the names (the review notebook registers it as the frames' display)."""
    from .report.summary import NAME_COLUMNS
    from .units import shown_name, shown_text

    def one(column: pl.Series) -> pl.Series:
        name = column.name in NAME_COLUMNS or "srcfile" in column.name
        show = shown_name if name else shown_text
        if column.dtype == pl.String:
            return pl.Series(column.name, [None if v is None else show(v) for v in column.to_list()], pl.String)
        return pl.Series(column.name, [None if v is None else [None if x is None else show(x) for x in v]
                                       for v in column.to_list()], pl.List(pl.String))

    text = [c for c, t in frame.schema.items() if t == pl.String or t == pl.List(pl.String)]
    if not text or frame.height == 0:
        return frame
    parts = ([frame] if frame.height <= 2 * edge else
             [frame.head(edge), frame.slice(edge, frame.height - 2 * edge), frame.tail(edge)])
    shown_parts = [part if i == 1 else part.with_columns(one(part[c]) for c in text) for i, part in enumerate(parts)]
    return pl.concat(shown_parts) if len(shown_parts) > 1 else shown_parts[0]


def other_rules_advice(label: str, rules: str, latest: str | None, db: str, *, remote: bool = False) -> str:
    """That the findings of `label` are those of other rules than this release's (`rules`, as `other_rules` gives
    them) and what checks it by today's, as the HTML report and the review notebook say it (`db`, `remote`: as for
    unvalidated_advice). The findings were shown as today's: a rule added since found nothing, unsaid."""
    from .validate.rules import edition

    how = _what_checks(label, latest, db, remote=remote)
    return (f"Version {label} was validated by other rules than this release's ({rules}; this release's: "
            f"{edition()}): its findings are those rules', and may lack what this release's rules find ({how}).")


def unvalidated_advice(label: str, latest: str | None, db: str, *, remote: bool = False) -> str:
    """Why the findings of `label`, a version `run --no-validate` committed, are unknown and what checks them, as
    the HTML report and the review notebook say it: `db` is the manifest as its commands take it (the az:// URL
    of a manifest in Azure, masked, `remote`; not the local copy a reader reads)."""
    return f"Version {label} was not validated: its findings are unknown ({_what_checks(label, latest, db, remote=remote)})."


def _what_checks(label: str, latest: str | None, db: str, *, remote: bool) -> str:
    """Which command checks version `label` by this release's rules (see unvalidated_advice)."""
    import shlex

    def cli(*args: str) -> str:
        return shlex.join(["chorus-batch", *args])

    if label != latest:
        how = "chorus-batch validate checks only the latest version"
    elif remote:  # `validate` works on a local manifest only; a run checks the latest version
        how = (f"a manifest in Azure is checked by its runs: {cli('run', '--db', db)} without --no-validate checks "
               "its latest version; chorus-batch validate works on a local manifest only")
    else:
        how = f"{cli('validate', '--db', db)} checks it"
    return how
