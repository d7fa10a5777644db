"""Reading a chorus-upload journal (both of its schemas) and rebuilding the tree of each of its versions.

chorus-upload (github.com/chorus-ai/chorus-extract-upload) keeps one SQLite journal per site:

  v2  `journal_v2` with lookup tables `srcpaths`, `modalities`, `versions`, `uploads` (joined on their
      ids, which have gaps), and `command_history_v2`
  v1  one `journal` table (FILEPATH, MODALITY, VERSION, UPLOAD_DTSTR, STATE) and `command_history`

One row is one content state of one path, valid from TIME_VALID_us until TIME_INVALID_us (NULL: still
current), in integer microseconds of the wall clock of the `journal update` run that wrote it. A
version's tree is not "the rows labelled up to V" (an mtime-only change copies the old row's label and
upload mark onto a new row): it is the rows whose interval covers the start of the next update, the
updates being the `journal update` commands of the command history. Upload marks (a version label, or
the clock time of `file upload`) stay on replaced and deleted rows and repeat on touched rows.

What cannot be mapped is never dropped silently: each problem becomes a row of `problems`
(rule, srcfile, message), reported as findings of the first imported version.
"""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from ..errors import UsageError, salvage_command
from ..frames import OUTSIDE_PATH, fmt
from ..fsutil import read_only_sqlite
from ..sources.remote import mask_url
from ..times import parse_time
from ..urls import scrub
from .config import url_secrets

# One journal row, whichever the schema.
ROW_SCHEMA = {
    "row_id": pl.Int64,  # FILE_ID
    "srcfile": pl.String,
    "modality": pl.String,
    "size": pl.Int64,
    "md5": pl.String,
    "mtime_us": pl.Int64,
    "valid_us": pl.Int64,
    "invalid_us": pl.Int64,
    "label": pl.String,  # the row's VERSION
    "mark": pl.String,  # its upload mark (UPLOAD_DT / UPLOAD_DTSTR); NULL: not uploaded
    "unusable": pl.String,  # why the row cannot be placed at all (a value of the wrong type, a broken link), or ''
    "flaws": pl.String,  # what of the row is lost though the row is kept (its version's or mark's link), or ''
}
PROBLEM_SCHEMA = {"rule": pl.String, "srcfile": pl.String, "message": pl.String}

# SQLite keeps any value in any column: each is taken only when it has the type chorus-upload writes (else NULL,
# and `unusable` says what it was), so that nothing is cast into something else (12.5 into 12, text into 0).
def _typed(column: str, kind: str) -> str:
    return f"CASE WHEN typeof({column}) = '{kind}' THEN {column} END"


def _wrong(column: str, name: str, kinds: tuple[str, ...]) -> str:
    allowed = ", ".join(f"'{k}'" for k in kinds)
    return (f"CASE WHEN typeof({column}) NOT IN ({allowed}) THEN '{name} is ' || substr(quote({column}), 1, 40) || "
            "'; ' ELSE '' END")


def _unusable(j: str, path_parts: list[str]) -> str:
    return " || ".join([*path_parts, _wrong(f"{j}SIZE", "SIZE", ("integer",)), _wrong(f"{j}MD5", "MD5", ("text",)),
                        _wrong(f"{j}SRC_MODTIME_us", "SRC_MODTIME_us", ("integer",)),
                        _wrong(f"{j}TIME_VALID_us", "TIME_VALID_us", ("integer",)),
                        _wrong(f"{j}TIME_INVALID_us", "TIME_INVALID_us", ("integer", "null"))])


_V2_ROWS = f"""
SELECT j.FILE_ID,
       CASE WHEN typeof(j.FILENAME) != 'text' OR s.id IS NULL THEN NULL
            WHEN s.SRC_PATH IN ('.', '') OR s.SRC_PATH IS NULL THEN j.FILENAME
            ELSE rtrim(s.SRC_PATH, '/') || '/' || j.FILENAME END,
       m.MODALITY, {_typed("j.SIZE", "integer")}, {_typed("j.MD5", "text")}, {_typed("j.SRC_MODTIME_us", "integer")},
       {_typed("j.TIME_VALID_us", "integer")}, {_typed("j.TIME_INVALID_us", "integer")},
       {_typed("v.VERSION", "text")}, {_typed("u.UPLOAD_DT", "text")},
       {_unusable("j.", [_wrong("j.FILENAME", "FILENAME", ("text",)),
                         "CASE WHEN s.id IS NULL THEN 'its SRC_PATH_ID ' || quote(j.SRC_PATH_ID) || ' is not in srcpaths; ' "
                         "ELSE '' END"])},
       CASE WHEN j.VERSION_ID IS NOT NULL AND v.id IS NULL THEN 'its VERSION_ID ' || quote(j.VERSION_ID) ||
                 ' is not in versions (its version label is lost); ' ELSE '' END
       || CASE WHEN j.UPLOAD_DT_ID IS NOT NULL AND u.id IS NULL THEN 'its UPLOAD_DT_ID ' || quote(j.UPLOAD_DT_ID) ||
                 ' is not in uploads (its upload mark is lost: `upload` will send it again); ' ELSE '' END
       || {_wrong("v.VERSION", "its version label VERSION", ("text", "null"))}
       || {_wrong("u.UPLOAD_DT", "its upload mark UPLOAD_DT", ("text", "null"))}
FROM journal_v2 j
LEFT JOIN srcpaths s ON s.id = j.SRC_PATH_ID
LEFT JOIN modalities m ON m.id = j.MODALITY_ID
LEFT JOIN versions v ON v.id = j.VERSION_ID
LEFT JOIN uploads u ON u.id = j.UPLOAD_DT_ID
ORDER BY j.FILE_ID
"""
_V1_ROWS = f"""
SELECT FILE_ID, {_typed("FILEPATH", "text")}, MODALITY, {_typed("SIZE", "integer")}, {_typed("MD5", "text")},
       {_typed("SRC_MODTIME_us", "integer")}, {_typed("TIME_VALID_us", "integer")}, {_typed("TIME_INVALID_us", "integer")},
       {_typed("VERSION", "text")}, {_typed("UPLOAD_DTSTR", "text")},
       {_unusable("", [_wrong("FILEPATH", "FILEPATH", ("text",))])},
       {_wrong("VERSION", "VERSION", ("text", "null"))} || {_wrong("UPLOAD_DTSTR", "UPLOAD_DTSTR", ("text", "null"))}
FROM journal ORDER BY FILE_ID
"""
# The columns of each schema's journal table that chorus-upload writes (upper case: SQLite's names ignore case).
_KNOWN_COLUMNS = {
    "journal_v2": {"FILE_ID", "PERSON_ID", "SRC_PATH_ID", "FILENAME", "MODALITY_ID", "SRC_MODTIME_US", "SIZE", "MD5",
                   "TIME_VALID_US", "TIME_INVALID_US", "UPLOAD_DT_ID", "VERSION_ID"},
    "journal": {"FILE_ID", "PERSON_ID", "FILEPATH", "MODALITY", "SRC_MODTIME_US", "SIZE", "MD5", "TIME_VALID_US",
                "TIME_INVALID_US", "UPLOAD_DTSTR", "VERSION", "STATE", "MD5_DURATION", "UPLOAD_DURATION",
                "VERIFY_DURATION"},
}
# The columns each table must have to be read (those the queries above and _history name): a table without one is
# said with its own columns up front, not as SQLite's "no such column: j.FILENAME" of a query the user never saw.
_READ_COLUMNS = {
    "journal_v2": ("FILE_ID", "SRC_PATH_ID", "FILENAME", "MODALITY_ID", "SRC_MODTIME_us", "SIZE", "MD5",
                   "TIME_VALID_us", "TIME_INVALID_us", "UPLOAD_DT_ID", "VERSION_ID"),
    "srcpaths": ("id", "SRC_PATH"), "modalities": ("id", "MODALITY"), "versions": ("id", "VERSION"),
    "uploads": ("id", "UPLOAD_DT"),
    "journal": ("FILE_ID", "FILEPATH", "MODALITY", "SRC_MODTIME_us", "SIZE", "MD5", "TIME_VALID_us", "TIME_INVALID_us",
                "UPLOAD_DTSTR", "VERSION"),
    "command_history_v2": ("COMMAND_ID", "DATETIME", "COMMAND", "PARAMS", "SRC_PATHS", "DEST_PATH"),
    "command_history": ("COMMAND_ID", "DATETIME", "COMMAND", "PARAMS", "SRC_PATHS", "DEST_PATH"),
}
_FETCH_ROWS = 200_000  # rows turned into a frame at a time: a journal of millions of rows is never a list of tuples
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
# The same 16 bytes in the other spellings a cloud site's journal holds (chorus-upload's MD5 of an az:// file is its
# Content-MD5 property as hex: a blob whose property was set to the base64 text, as some uploaders do, gives the hex
# of those 24 characters, which upstream itself reads back with b64decode): base64 of 16 bytes ('...==') and the hex
# of that base64 text (48 hex digits ending in '3d3d', '=='); read as the 32 hex digits they stand for.
_BASE64_MD5 = r"^[A-Za-z0-9+/]{21}[AQgw]==$"
_HEX_OF_BASE64_MD5 = r"^(?:[0-9a-fA-F]{2}){22}3[dD]3[dD]$"


@dataclass
class Update:
    """One `journal update` of the command history."""

    command_id: int
    start_us: int | None  # its DATETIME (written before the scan: at or before all of its rows); None: unreadable
    label: str | None  # its --version
    roots: dict[str, str]  # modality -> the site path it scanned (SRC_PATHS)
    datetime: str = ""  # its DATETIME as written (said when it cannot be read)
    # its Duration is empty (chorus-upload writes it once the command has returned): "stopped" (a later command ran),
    # "open" (the last command: stopped, or still running); its rows are what it had written by then. "": it ended
    unfinished: str = ""


@dataclass
class Journal:
    path: str
    schema: int  # 1 or 2
    rows: pl.DataFrame  # ROW_SCHEMA
    updates: list[Update]
    central: str | None  # where upstream sent files (DEST_PATH of its upload commands), without any credential
    history: str = "command_history_v2"  # the command history's table (named in findings)
    times: dict[int, int] = field(default_factory=dict)  # every command's readable DATETIME (µs), by COMMAND_ID
    # credentials found in the command history, not kept: (where, the location with them masked)
    secrets: list[tuple[str, str]] = field(default_factory=list)
    # columns of its journal table chorus-upload's releases known here do not write (a newer release's): not read
    unread_columns: list[str] = field(default_factory=list)
    # its tables chorus-batch does not read, each with its row count (a newer release's, the other schema's)
    unread_tables: list[str] = field(default_factory=list)

    @property
    def windows(self) -> bool:
        """Written on Windows: a site path it scanned (SRC_PATHS) is a Windows one (a drive letter, a network share, a
        '\\' in it). Its rows' paths may then be joined with '\\' (os.path on Windows): a folder separator there, as
        it is in every path of a Windows site (no name holds one), not part of a name."""
        return any(_WINDOWS_PATH.match(path) or "\\" in path for update in self.updates for path in update.roots.values())


_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # a drive letter or a network share (\\server\share)


@dataclass
class VersionTree:
    label: str
    started_us: int  # the update's start
    finished_us: int  # its last timestamp (rows written or ended by it)
    end_us: int | None  # the next update's start: the tree is the rows valid then (None: the last, the rows current now)
    roots: dict[str, str]
    updates: list[int] = field(default_factory=list)  # the command ids it stands for (consecutive updates, same label)

    def files(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The tree (srcfile, modality, size, md5, mtime_us, valid_us: each path's upstream row valid at the cut), from
        checked_rows' rows; built when it is committed, so that an import holds one tree at a time, not one per version."""
        end = self.end_us
        current = pl.col("invalid_us").is_null() if end is None else (pl.col("valid_us") < end) & (
            pl.col("invalid_us").is_null() | (pl.col("invalid_us") >= end))
        return rows.filter(current).select("srcfile", "modality", "size", "md5", "mtime_us", "valid_us")


def _not_a_journal(path: str, why: str, fix: str | None = None) -> UsageError:
    return UsageError(f"{path} is not a chorus-upload journal: {why}", where=path,
                      fix=fix or "give the journal.db that chorus-upload's `journal update` writes (its [journal] "
                                 "path in config.toml, or az://CONTAINER/path/journal.db for its [journal.source] "
                                 "in Azure)")


def _unreadable(path: str, exc: Exception, file: str | None = None) -> UsageError:
    """`file`: the journal's local file (`path` is how it is named), whose side files say what happened."""
    rollback = Path(f"{file or path}-journal")
    if "readonly" in str(exc) and rollback.is_file() and rollback.stat().st_size > 0:
        # A hot rollback journal: a write stopped midway, which SQLite undoes only on a connection that may write
        # (this one only reads): "run again" failed again every time.
        return UsageError(f"the journal {path} holds a write that a chorus-upload command did not finish (it was "
                          f"stopped or crashed: its rollback file {rollback} is beside it); SQLite undoes such a write "
                          "the next time the journal is opened for writing, which import-journal never does",
                          where=path,
                          fix="once no chorus-upload command is running, let SQLite undo it: `sqlite3 "
                              f"{shlex.quote(str(file or path))} 'PRAGMA quick_check'` (or run any chorus-upload "
                              "command), then run import-journal again")
    if "malformed" in str(exc) or "corrupt" in str(exc):
        return UsageError(f"the journal {path} is damaged ({exc})", where=path,
                          fix="import a good copy (a backup, or the copy chorus-upload keeps in its [journal.source]); "
                              "with none, copy out what is still readable and import that (rows on damaged or missing pages are lost; "
                              f"what it copied is the history that can still be imported): {salvage_command(str(path))}")
    return UsageError(f"cannot read the journal {path} ({exc})", where=path,
                      fix="check that it is readable by you and that no chorus-upload command is writing it, then "
                          "run again (the journal is only read)")


def read_journal(path: str | Path, name: str | None = None) -> Journal:
    """The journal at `path`, read only; a UsageError when it is missing or is not a chorus-upload journal. `name`:
    the journal as the user gave it, in messages (a blob read through a local copy)."""
    path = str(path)
    shown = name or path
    if Path(path).is_dir():
        raise UsageError(f"{path} is a folder, not a journal", where=path,
                         fix="give the journal file itself (chorus-upload's journal.db; its [journal] path in config.toml)")
    if not Path(path).is_file():
        raise UsageError(f"no journal at {path}", where=path, fix="give the path of chorus-upload's journal.db")
    try:
        con = read_only_sqlite(path)
    except sqlite3.Error as exc:
        raise _not_a_journal(shown, f"SQLite cannot open it ({exc})") from None
    try:
        try:
            tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError as exc:  # unreadable, locked by a writer, ...
            raise _unreadable(shown, exc, path) from None
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc):
                raise _unreadable(shown, exc, path) from None
            raise _not_a_journal(shown, f"it is not an SQLite database ({exc})") from None
        # A page damaged or cut off (a copy stopped midway, a bad disk) is not always met by the queries below: a
        # lookup table's or the history's page read as empty, or a leaf of journal_v2 lost, imported a shorter history
        # with no word of damage. SQLite's own check of every page says so up front.
        _check_pages(con, shown, path)
        if "journal_v2" in tables:
            schema, sql, history = 2, _V2_ROWS, "command_history_v2"
            missing = {"srcpaths", "modalities", "versions", "uploads"} - tables
            if missing:
                raise _not_a_journal(shown, f"it has journal_v2 but not its lookup tables {sorted(missing)}")
        elif "journal" in tables:
            schema, sql, history = 1, _V1_ROWS, "command_history"
        elif {"source_files", "versions", "meta"} <= tables:
            raise _not_a_journal(shown, "it is a chorus-batch manifest already",
                                 fix=f"it needs no import: pass --db {shown} to chorus-batch's commands")
        else:
            listed = ", ".join(sorted(tables)[:8]) or "none"
            raise _not_a_journal(shown, f"it has no journal_v2 or journal table (its tables: {listed})")
        try:
            _check_columns(con, shown, [*(["journal_v2", "srcpaths", "modalities", "versions", "uploads"]
                                          if schema == 2 else ["journal"]), *([history] if history in tables else [])])
            try:
                rows = _arrow_rows(path, sql)
                rows = _rows(con, sql) if rows is None else rows
            except sqlite3.OperationalError as exc:
                if "decode to UTF-8" not in str(exc):
                    raise
                # A text value that is not UTF-8 (SQLite stores what it is given): read again, marking such
                # values, so that each is its row's finding, not the end of the import.
                con.text_factory = _lenient
                rows = _not_utf8(_rows(con, sql))
            secrets: list[tuple[str, str]] = []
            times: dict[int, int] = {}
            con.text_factory = _lenient  # (a few rows: a value that is not UTF-8 is read as text, escaped)
            labels = set(rows["label"].drop_nulls().unique().to_list())
            updates, central = _history(con, history, secrets, times, labels) if history in tables else ([], None)
            table = "journal_v2" if schema == 2 else "journal"
            unread = [name for (name,) in con.execute(f"SELECT name FROM pragma_table_info('{table}')")
                      if name.upper() not in _KNOWN_COLUMNS[table]]
            unread_tables = _unread_tables(con, tables, schema)
        except sqlite3.OperationalError as exc:
            if "no such column" not in str(exc):
                raise _unreadable(shown, exc, path) from None
            raise _not_a_journal(shown, f"its tables do not have chorus-upload's columns ({exc})") from None
        except sqlite3.DatabaseError as exc:
            if "malformed" in str(exc):
                raise _unreadable(shown, exc, path) from None
            raise _not_a_journal(shown, f"its tables do not have chorus-upload's columns ({exc})") from None
        except sqlite3.Error as exc:
            raise _not_a_journal(shown, f"its tables do not have chorus-upload's columns ({exc})") from None
    finally:
        con.close()
    return Journal(path=path, schema=schema, rows=rows, updates=updates, central=central, secrets=secrets,
                   history=history, times=times, unread_columns=unread, unread_tables=unread_tables)


_READ_TABLES = {2: {"journal_v2", "srcpaths", "modalities", "versions", "uploads", "command_history_v2"},
                1: {"journal", "command_history"}}


def _unread_tables(con: sqlite3.Connection, tables: set[str], schema: int) -> list[str]:
    """The journal's tables the import does not read, each with its row count ('journal_v3 (1,204 rows)'): a newer
    chorus-upload's, or the other schema's left beside it. Passed over without a word, what they held was lost."""
    out = []
    for name in sorted(t for t in tables if t not in _READ_TABLES[schema] and not t.lower().startswith("sqlite_")):
        try:
            (count,) = con.execute('SELECT count(*) FROM "{}"'.format(name.replace('"', '""'))).fetchone()
            out.append(f"{name} ({count:,} row{'' if count == 1 else 's'})")
        except sqlite3.Error:
            out.append(f"{name} (its rows cannot be counted)")
    return out


def _check_pages(con: sqlite3.Connection, shown: str, file: str) -> None:
    """A UsageError (damaged, with the salvage) when `PRAGMA quick_check` finds a page that is not sound."""
    try:
        problems = [line for (line,) in con.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:  # (a page it cannot even walk: "malformed")
        raise _unreadable(shown, exc, file) from None
    if problems != ["ok"]:
        lines = [line.strip() for text in problems for line in text.splitlines()
                 if line.strip() and not line.startswith("*** in database")]
        said = "; ".join(lines[:2]) + (" and more" if len(lines) > 2 else "")
        raise _unreadable(shown, sqlite3.DatabaseError(f"database disk image is malformed: {said}"), file)


def _check_columns(con: sqlite3.Connection, shown: str, tables: list[str]) -> None:
    """A UsageError naming the first table that lacks a column chorus-upload writes and import-journal reads (renamed
    or dropped by another tool or by hand), with the columns it has."""
    for table in tables:
        present = [name for (name,) in con.execute("SELECT name FROM pragma_table_info(?)", (table,))]
        missing = [c for c in _READ_COLUMNS[table] if c.upper() not in {p.upper() for p in present}]
        if missing:
            raise _not_a_journal(
                shown, f"its {table} table has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}, which "
                       f"chorus-upload writes (its columns: {', '.join(present) or 'none'})",
                fix="import the journal as chorus-upload wrote it (its [journal.source] copy, or a backup); a column "
                    "renamed by another tool can be renamed back in a copy (sqlite3 COPY.db 'ALTER TABLE "
                    f"{table} RENAME COLUMN <its name> TO {missing[0]}') and the copy imported")


def _arrow_rows(path: str, sql: str) -> pl.DataFrame | None:
    """The rows read through ADBC, as Arrow batches column by column (1M-row journal: 2.7 CPU-s instead of 6.6 through
    sqlite3's tuples, and a read peak of 519 MiB instead of 630); None when a column holds a value of another type than
    the first batch gave it, or text that is not UTF-8 (the driver checks neither): _rows reads those and says them."""
    import adbc_driver_manager
    import pyarrow as pa

    from ..store import adbc
    from ..store.manifest import _own_copy, give_back_freed_memory

    numbers = {name for name, dtype in ROW_SCHEMA.items() if dtype == pl.Int64}
    parts = []
    try:
        with adbc.connect(f"{Path(path).resolve().as_uri()}?mode=ro") as con, con.cursor() as cur:
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(_FETCH_ROWS)})
            cur.execute(sql)
            _, batches = cur.fetch_batches()
            for batch in batches:
                batch.validate(full=True)  # (text that is not UTF-8: ArrowInvalid)
                for name, column in zip(ROW_SCHEMA, batch.columns):
                    fits = pa.types.is_int64(column.type) if name in numbers else pa.types.is_string(column.type)
                    if not fits and column.null_count < len(column):
                        return None
                frame = pl.from_arrow(pa.Table.from_batches([batch]))
                assert isinstance(frame, pl.DataFrame)
                frame.columns = list(ROW_SCHEMA)
                parts.append(_own_copy(frame.cast(ROW_SCHEMA)))  # type: ignore[arg-type]
    except (adbc_driver_manager.Error, pa.ArrowException, OSError, UnicodeDecodeError):
        return None
    give_back_freed_memory()
    return pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=ROW_SCHEMA)


def _rows(con: sqlite3.Connection, sql: str) -> pl.DataFrame:
    cursor = con.execute(sql)
    frames = []
    while batch := cursor.fetchmany(_FETCH_ROWS):
        # Column by column (a row-wise frame costs several times as much). Values of another affinity (SIZE as
        # text in a v1 journal) are cast where they fit and are NULL where nothing does (checked_rows reports them).
        columns = zip(*batch)
        frames.append(pl.DataFrame([pl.Series(name, values, dtype=dtype, strict=False)
                                    for (name, dtype), values in zip(ROW_SCHEMA.items(), columns)]))
    return pl.concat(frames) if frames else pl.DataFrame(schema=ROW_SCHEMA)


_NOT_UTF8 = "\x00not-utf8\x00"  # prefixes a text value whose bytes are not UTF-8 (what follows: them, escaped)


def _lenient(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _NOT_UTF8 + data.decode("utf-8", "backslashreplace")


# Where a value that is not UTF-8 goes: the row is unusable without it, or only that value is lost.
_NOT_UTF8_COLUMNS = {"srcfile": ("its path", "", "unusable"), "md5": ("its MD5", "", "unusable"),
                     "modality": ("its MODALITY", " (taken as not given)", "flaws"),
                     "label": ("its version label VERSION", " (its version label is lost)", "flaws"),
                     "mark": ("its upload mark", " (its upload mark is lost: `upload` will send it again)", "flaws")}


def _not_utf8(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows read with _lenient: each value that is not UTF-8 is said in `unusable` or `flaws`, and is NULL (the
    path keeps its escaped form: the finding names it)."""
    said: dict[str, list[pl.Expr]] = {"unusable": [pl.col("unusable")], "flaws": [pl.col("flaws")]}
    values = []
    for column, (name, lost, target) in _NOT_UTF8_COLUMNS.items():
        bad = pl.col(column).str.starts_with(_NOT_UTF8)
        escaped = pl.col(column).str.strip_prefix(_NOT_UTF8)
        said[target].append(pl.when(bad).then(fmt(f"{name} {{}} is not UTF-8 text{lost}; ", escaped.str.slice(0, 80)))
                            .otherwise(pl.lit("")))
        values.append(pl.when(bad).then(escaped if column == "srcfile" else None).otherwise(pl.col(column))
                      .alias(column))
    return rows.with_columns(*values, *(pl.concat_str(parts).alias(target) for target, parts in said.items()))


def _history(con: sqlite3.Connection, table: str, secrets: list[tuple[str, str]],
             times: dict[int, int], labels: set[str] = frozenset()) -> tuple[list[Update], str | None]:
    updates, central, timed = [], None, False
    # Duration (chorus-upload's releases all write it, once the command has returned): read when the table has it
    columns = {name.upper() for (name,) in con.execute(f"SELECT name FROM pragma_table_info('{table}')")}
    duration = "Duration" if "DURATION" in columns else "1"
    for command_id, when, command, params, src_paths, dest_path, took in con.execute(
            f"SELECT COMMAND_ID, DATETIME, COMMAND, PARAMS, SRC_PATHS, DEST_PATH, {duration} FROM {table} "
            "ORDER BY COMMAND_ID"):
        # SQLite keeps any value in any column (a blob in a TEXT column): each is taken as text, never trusted.
        command, params, src_paths, dest_path = (_text(v) for v in (command, params, src_paths, dest_path))
        command = (command or "").strip()
        timed = timed or took is not None
        if updates and updates[-1].unfinished == "open":  # a command ran after it: it is not running
            updates[-1].unfinished = "stopped"
        start = _start_us(when)
        if start is not None:
            times[int(command_id)] = start
        if dest_path not in (None, "", "None") and command.startswith("file "):
            central = _without_secret(dest_path, f"DEST_PATH of command {command_id}", secrets)
        if command != "journal update":
            continue
        roots = {modality: _without_secret(path, f"SRC_PATHS ({modality}) of command {command_id}", secrets)
                 for modality, path in _roots(src_paths).items()}
        updates.append(Update(command_id=int(command_id), start_us=start, label=_version_of(params, labels), roots=roots,
                              datetime=_text(when) or "", unfinished="" if took is not None else "open"))
    if not timed:  # no command has one: a release that does not write it (each update is taken as ended)
        updates = [replace(u, unfinished="") for u in updates]
    return updates, central


def _text(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value).removeprefix(_NOT_UTF8)


def _without_secret(location: str, where: str, secrets: list[tuple[str, str]]) -> str:
    """A location as chorus-batch may keep it: a URL without its query (a SAS token) or user:password (as
    import-config strips them); what was left out is named in `secrets`, masked (to be rotated, never copied)."""
    clean, _, password, query = url_secrets(location)
    if password is None and query is None:
        # no URL's secret; a location that is no URL may still hold one (a connection string's AccountKey=, a
        # SharedAccessSignature=, a sig=): kept masked, and named like the others
        masked = scrub(location)
        if masked != location:
            secrets.append((where, masked))
        return masked
    secrets.append((where, mask_url(location)))
    return clean


_ZONE_WORD = re.compile(r"\s*(UTC|GMT|Z)$", re.IGNORECASE)
_HAS_TIME = re.compile(r"[T ]\d\d:?\d\d")


def _start_us(value) -> int | None:
    """A DATETIME in µs since the epoch: chorus-upload's 'YYYY-MM-DD HH:MM:SS UTC' or any ISO 8601 spelling of a time
    (T or space, fractional seconds, Z, UTC or an offset; none: UTC). None when it is not a time of day after 1970."""
    text = (_text(value) or "").strip()
    if not _HAS_TIME.search(text):  # a date alone would cut the version at midnight, before its predecessor's rows
        return None
    text = _ZONE_WORD.sub("+00:00", text)
    when = parse_time(re.sub(r"\s+(?=[+-]\d\d:?\d\d$)", "", text))  # '... 14:38:39 +01:00'
    if when is None:
        return None
    us = (when - _EPOCH) // _ONE_US
    return us if 0 <= us < _LAST_TIME_US else None


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = datetime.resolution


# chorus-upload writes PARAMS as " --<name> <value>" for each option, the value unquoted (history_ops.py,
# _recreate_params): a --version with a space in it runs on to the next option.
_VERSION_UNQUOTED = re.compile(r"(?:^|\s)--version[ =](.*?)(?=\s--[A-Za-z][\w-]*(?:[ =]|$)|$)", re.S)


def _version_of(params: str | None, labels: set[str]) -> str | None:
    """An update's --version: the value as chorus-upload wrote it, unquoted, when the journal's rows carry that
    label ('release 20250101000000', not 'release': the first word made two versions one and lost their marks),
    else as a shell reads it."""
    word = _flag(params, "--version")
    found = _VERSION_UNQUOTED.search(params or "")
    if found and found[1] != word and found[1] in labels:
        return found[1]
    return word


def _flag(params: str | None, name: str) -> str | None:
    try:
        words = shlex.split(params or "")
    except ValueError:
        words = (params or "").split()
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def _roots(src_paths: str | None) -> dict[str, str]:
    try:
        value = json.loads(src_paths or "")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items() if v} if isinstance(value, dict) else {}


# ----------------------------------------------------------------------------- the versions' trees


# Run times (TIME_VALID_us, TIME_INVALID_us) lie after 1970 and before the year 10000; an mtime in nanoseconds must fit
# 64 bits (before 2262, after 1677).
_LAST_TIME_US = 253_402_300_800_000_000
_MTIME_LIMIT_US = 9_223_372_036_854_775  # 2**63 ns, in us


def _md5_as_hex(md5: pl.Expr) -> pl.Expr:
    """An MD5 written as base64 (or as the hex of its base64 text) as its 32 hex digits, one with spaces or quotes
    around it (an S3 ETag as the service gives it: '"..."') without them; any other value as it is."""
    md5 = md5.str.strip_chars(' \t\r\n"')
    md5 = pl.when(md5.str.contains(_HEX_OF_BASE64_MD5)).then(
        md5.str.decode("hex", strict=False).cast(pl.String, strict=False)).otherwise(md5)
    return pl.when(md5.str.contains(_BASE64_MD5)).then(
        md5.str.decode("base64", strict=False).bin.encode("hex")).otherwise(md5)


def checked_rows(rows: pl.DataFrame, *, windows: bool = False) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The rows an import can use, the problems of the others (PROBLEM_SCHEMA), and the marked rows that hold no state
    (ended as they began: for upload_marks, with their own TIME_INVALID_us). Left out, each named: rows with
    a value of the wrong type or out of range (a path that is not site-relative, a negative size, an MD5 that is not
    32 hex digits, an impossible time), a broken link to a lookup table, and rows that end before they start. Kept,
    with a finding: a row whose version or upload mark link is broken. Two rows of one path valid at once (two current
    rows, or overlapping intervals): the later one wins from its start, the earlier one is taken as ended there."""
    def problem(frame: pl.DataFrame, rule: str, message: pl.Expr) -> pl.DataFrame:
        return frame.select(rule=pl.lit(rule), srcfile="srcfile", message=message)

    def text(name: str) -> pl.Expr:  # a value as it goes into a message (NULL said as such)
        return pl.col(name).cast(pl.String).fill_null("NULL")

    row = fmt("journal row FILE_ID {}", text("row_id"))
    rows = rows.with_columns(md5=_md5_as_hex(pl.col("md5")))
    # A leading './', a '/./' or a '//' inside is the same path written another way (as `run` lists it: './OMOP',
    # 'OMOP//x' from a tool that joined 'OMOP/' and '/x'): not a different file, and nothing leading outside the site.
    if windows:  # a journal written on Windows (or read there): '\\' is a folder separator, as `run` there lists it
        rows = rows.with_columns(pl.col("srcfile").str.replace_all("\\", "/", literal=True))
    rows = rows.with_columns(pl.col("srcfile").str.replace_all(r"(?:^|/)/+", "/").str.replace_all(r"/(?:\./)+", "/")
                             .str.replace(r"^(\./)+", ""))
    reasons = pl.concat_str([
        pl.col("unusable"),
        pl.when(pl.col("srcfile").is_null() | (pl.col("srcfile") == "")).then(pl.lit("it has no path; "))
        # (an empty FILENAME under its SRC_PATH: a folder's name, no file's; its upload mark would name no blob)
        .when(pl.col("srcfile").str.ends_with("/")).then(fmt("its path {} names no file (an empty file name); ",
                                                             "srcfile"))
        # (a tab or a line break is not: `run` records such a file, so the import keeps it; only its mark is refused)
        .when(pl.col("srcfile").str.contains(_WINDOWS_PATH.pattern)).then(fmt(
            "its path {} is a Windows path from a drive letter or a network share, not one relative to the site's "
            "root; ", "srcfile"))
        .when(pl.col("srcfile").str.contains(OUTSIDE_PATH)).then(fmt(
            "its path {} is not a site-relative path (it starts with '/', or has a '..' or a final '.' part); ",
            "srcfile"))
        .when(pl.col("srcfile").str.contains("\x00", literal=True)).then(fmt(
            "its path {} holds a NUL character, which no file's name can; ", "srcfile")),
        pl.when(pl.col("size") < 0).then(fmt("its SIZE {} is negative; ", "size")),
        # (an empty one was "its MD5  is not 32 hex digits": a blank where the value should be, said as what it is)
        pl.when(pl.col("md5").str.strip_chars() == "").then(pl.lit("its MD5 is empty (no MD5 was recorded); "))
        .when(pl.col("md5").is_not_null() & ~pl.col("md5").str.contains(_MD5.pattern)).then(
            fmt("its MD5 {} is not 32 hex digits; ", pl.col("md5").str.slice(0, 40))),
        pl.when(pl.col("mtime_us").abs() >= _MTIME_LIMIT_US).then(
            fmt("its SRC_MODTIME_us {} is not a possible time; ", "mtime_us")),
        pl.when((pl.col("valid_us") < 0) | (pl.col("valid_us") >= _LAST_TIME_US)).then(
            fmt("its TIME_VALID_us {} is not a possible time; ", "valid_us")),
        pl.when((pl.col("invalid_us") < 0) | (pl.col("invalid_us") >= _LAST_TIME_US)).then(
            fmt("its TIME_INVALID_us {} is not a possible time; ", "invalid_us")),
        pl.when(pl.col("size").is_null() & (pl.col("unusable") == "")).then(pl.lit("it has no SIZE; ")),
        pl.when(pl.col("md5").is_null() & (pl.col("unusable") == "")).then(pl.lit("it has no MD5; ")),
        pl.when(pl.col("mtime_us").is_null() & (pl.col("unusable") == "")).then(pl.lit("it has no SRC_MODTIME_us; ")),
        pl.when(pl.col("valid_us").is_null() & (pl.col("unusable") == "")).then(pl.lit("it has no TIME_VALID_us; ")),
    ], ignore_nulls=True).str.strip_chars_end("; ")
    rows = rows.with_columns(_why=reasons)
    unusable = pl.col("_why") != ""
    backwards = pl.col("invalid_us").is_not_null() & (pl.col("invalid_us") <= pl.col("valid_us"))
    problems = [
        problem(rows.filter(unusable), "import.unusable-row", fmt("{}: {}; not imported", row, "_why")),
        problem(rows.filter(~unusable & backwards), "import.impossible-interval",
                fmt("{} is invalid before (or as) it is valid (TIME_VALID_us {}, TIME_INVALID_us {}): it was "
                          "never part of any version; not imported", row, text("valid_us"), text("invalid_us"))),
        problem(rows.filter(~unusable & (pl.col("flaws") != "")), "import.broken-link",
                fmt("{}: {}", row, pl.col("flaws").str.strip_chars_end("; "))),
    ]
    # (what is wrong with a row is said above: `unusable` and `flaws`, empty on the rows kept, are not held through the
    # import, 37 MiB at 1M rows)
    rows = rows.filter(~unusable & ~backwards).drop("_why", "unusable", "flaws").with_columns(
        pl.col("md5").str.to_lowercase())
    # Overlaps: each row ends at the latest when the next row of its path (by start) begins.
    ordered = rows.sort("srcfile", "valid_us", "row_id").with_columns(
        _next_valid=pl.col("valid_us").shift(-1).over("srcfile"), _next_row=pl.col("row_id").shift(-1).over("srcfile"))
    overlapping = pl.col("_next_valid").is_not_null() & (pl.col("invalid_us").is_null()
                                                          | (pl.col("invalid_us") > pl.col("_next_valid")))
    problems.append(problem(
        ordered.filter(overlapping), "import.overlapping-rows",
        pl.when(pl.col("invalid_us").is_null())
        .then(fmt("two active rows for one path ({} and FILE_ID {}): the earlier is taken as replaced by the "
                        "later at TIME_VALID_us {}", row, text("_next_row"), text("_next_valid")))
        .otherwise(fmt("{} is still valid when FILE_ID {} of the same path begins (TIME_VALID_us {}): it is "
                             "taken as replaced then", row, text("_next_row"), text("_next_valid")))))
    ordered = ordered.with_columns(
        _end=pl.when(overlapping).then(pl.col("_next_valid")).otherwise(pl.col("invalid_us"))
    ).drop("_next_valid", "_next_row")
    # Rows ended where they began (a later row of the path starts at the same instant) hold no state. Their upload
    # marks are still upstream's word (a duplicate row's mark is its twin's): kept aside, as the journal ends them.
    kept = pl.col("_end").is_null() | (pl.col("_end") > pl.col("valid_us"))
    ended_marks = ordered.filter(~kept & pl.col("mark").is_not_null()).drop("_end").sort("row_id")
    ordered = ordered.filter(kept).with_columns(invalid_us=pl.col("_end")).drop("_end")
    return ordered.sort("row_id"), pl.concat(problems).cast(PROBLEM_SCHEMA), ended_marks  # type: ignore[arg-type]


def version_trees(journal: Journal, rows: pl.DataFrame) -> tuple[list[VersionTree], pl.DataFrame, pl.DataFrame]:
    """The tree after each upstream version, oldest first, from the validity intervals cut at the starts of
    the `journal update` runs; consecutive updates with one label make one version (its tree: after the
    last of them). Also the problems met (PROBLEM_SCHEMA), and the rows as the trees take them (a row that starts
    before any recorded update, under a label that update recorded, is taken as written by it)."""
    problems: list[dict] = []
    updates = sorted(_placed(journal, rows, problems), key=lambda u: (u.start_us, u.command_id))
    early = rows.filter(pl.col("valid_us") < updates[0].start_us - 60_000_000) if updates else rows
    recorded = {u.label for u in updates if u.label}
    if early.height and (not updates or not early["label"].drop_nulls().is_in(list(recorded)).all()):
        # No usable command history (rows of versions it does not record): each label starts at its first row.
        firsts = rows.group_by("label").agg(pl.col("valid_us").min()).drop_nulls("label").sort("valid_us")
        known = {u.start_us for u in updates}
        updates = sorted([*updates, *(Update(command_id=-1, start_us=int(v), label=label, roots={})
                                      for label, v in firsts.iter_rows() if int(v) not in known)],
                         key=lambda u: (u.start_us, u.command_id))
        problems.append({"rule": "import.no-history", "srcfile": None, "message": (
            "the journal's command history does not record every `journal update`: versions start at the first "
            "row of each version label (an update that only removed or touched files is part of the next one)")})
    elif early.height:  # a few rows dated before the history begins: a clock, not a missing update
        first = updates[0].start_us
        problems += early.select(rule=pl.lit("import.impossible-interval"), srcfile="srcfile", message=fmt(
            "journal row FILE_ID {} is valid from TIME_VALID_us {}, before the first `journal update` the journal "
            "records ({}): taken as written by that update", "row_id", "valid_us", pl.lit(first))).to_dicts()
        rows = rows.with_columns(valid_us=pl.max_horizontal("valid_us", pl.lit(first))).filter(
            pl.col("invalid_us").is_null() | (pl.col("invalid_us") > pl.col("valid_us")))
    trees: list[VersionTree] = []
    # When each update ended: its last timestamp (a row written or ended by it), found by binary search.
    stamps = pl.concat([rows["valid_us"], rows["invalid_us"].drop_nulls()]).unique().sort()
    for i, update in enumerate(updates):
        end = updates[i + 1].start_us if i + 1 < len(updates) else None
        in_run = (pl.col("valid_us") >= update.start_us) if end is None else pl.col("valid_us").is_between(
            update.start_us, end, closed="left")
        label = update.label or _label_of(rows.filter(in_run), trees) or time.strftime(
            "%Y%m%d%H%M%S", time.gmtime(update.start_us // 1_000_000))
        last = (stamps.len() if end is None else int(stamps.search_sorted(end, side="left"))) - 1
        finished = int(stamps[last]) if last >= 0 and int(stamps[last]) >= update.start_us else update.start_us
        tree = VersionTree(label=label, started_us=update.start_us, finished_us=finished, end_us=end,
                           roots=update.roots, updates=[update.command_id])
        if trees and trees[-1].label == label:  # the same --version again: one version, as upstream labels it
            tree.started_us, tree.updates = trees[-1].started_us, [*trees[-1].updates, update.command_id]
            trees[-1] = tree
        else:
            trees.append(tree)
    problems += _unfinished(journal, trees)
    return trees, pl.DataFrame(problems, schema=PROBLEM_SCHEMA), rows


def _unfinished(journal: Journal, trees: list[VersionTree]) -> list[dict]:
    """A problem for each `journal update` whose Duration is empty: chorus-upload writes it once the command has
    returned, so the update was stopped or crashed (or, the last command of the history, may still be running), and
    its version holds only what it had written by then. Imported without a word, a half-scanned version passed for
    the site's (and the journal of a running update was read mid-write)."""
    unfinished = {u.command_id: u for u in journal.updates if u.unfinished}
    out = []
    for tree in trees:
        for update in (unfinished[c] for c in tree.updates if c in unfinished):
            command_id, running = update.command_id, update.unfinished == "open"
            out.append({"rule": "import.unreadable-history", "srcfile": None, "message": (
                f"{journal.history} row COMMAND_ID {command_id} (`journal update"
                f"{' --version ' + update.label if update.label else ''}`) has no Duration, which chorus-upload "
                "writes when a command ends: this update "
                + ("was stopped, crashed or is still running" if running else
                   "was stopped or crashed (a later command ran)")
                + f", so version {tree.label} holds only what it had written to the journal by then"
                + ("; if a chorus-upload command is running, wait for it to end and import again" if running else "")
                + "; the next `chorus-batch run` records the site as it is")})
    return out


def _placed(journal: Journal, rows: pl.DataFrame, problems: list[dict]) -> list[Update]:
    """The updates, each with a start: one whose DATETIME cannot be read starts at the first change after the command
    before it when that is not an update (nothing else writes rows), else at the first row of its --version, between
    the readable times around it; each such update is a finding naming its history row."""
    stamps = pl.concat([rows["valid_us"], rows["invalid_us"].drop_nulls()]).unique().sort()
    update_ids = {u.command_id for u in journal.updates}
    # COMMAND_ID counts up (AUTOINCREMENT): a time out of order with the commands around it is a clock set back (or
    # ahead) on that run, and cannot cut the versions; the fewest such times are set aside and taken as unreadable.
    wrong = _out_of_order(journal.times)
    times = {c: t for c, t in journal.times.items() if c not in wrong}
    placed = []
    for update in journal.updates:
        if update.start_us is not None and update.command_id not in wrong:
            placed.append(update)
            continue
        before = max((c for c in times if c < update.command_id), default=None)
        low = times[before] if before is not None else -1
        high = min((t for c, t in times.items() if c > update.command_id), default=_LAST_TIME_US)
        starts = {}
        if before is not None and before not in update_ids:
            after = stamps.filter((stamps >= low) & (stamps < high))
            if after.len():
                starts[int(after[0])] = f"the first change after command {before}"
        if update.label is not None:
            first = rows.filter((pl.col("label") == update.label) & pl.col("valid_us").is_between(low, high, "none"))
            if first.height:
                starts[int(first["valid_us"].min())] = f"the first row of version {update.label}"
        row = (f"{journal.history} row COMMAND_ID {update.command_id} (`journal update"
               f"{' --version ' + update.label if update.label else ''}`): its DATETIME {update.datetime[:40]!r} "
               + ("is out of order with the commands recorded before and after it (the clock of the machine that "
                  "ran it was set back or ahead), so it cannot place the version"
                  if update.command_id in wrong else "is not a time chorus-batch can read"))
        if not starts and update.command_id in wrong:
            # the journal's rows carry the same clock (none of this version lies between its neighbours' times):
            # versions cut by these times would mix, so nothing is imported
            raise UsageError(
                f"{row}, and none of the journal's rows lies between the times of the commands around it: the "
                "rows written after the clock changed carry it too, so the versions cannot be told apart by time; "
                "nothing was imported", where=journal.path,
                fix="import a copy of the journal from before the clock changed (a backup, or the copy chorus-upload "
                    "keeps in its [journal.source]), then run chorus-batch on the site for what came after; or, in a "
                    f"copy of the journal, correct the times written after the change ({journal.history}'s DATETIME "
                    "and the rows' TIME_VALID_us and TIME_INVALID_us) by the clock's error and import that copy")
        if not starts:
            problems.append({"rule": "import.unreadable-history", "srcfile": None, "message": (
                f"{row}, and nothing else places it: its changes are part of the version before it")})
            continue
        start = min(starts)
        placed.append(replace(update, start_us=start))
        problems.append({"rule": "import.unreadable-history", "srcfile": None, "message": (
            f"{row}; its version is taken to start at {starts[start]} (TIME_VALID_us {start})")})
    return placed


def _out_of_order(times: dict[int, int]) -> set[int]:
    """The commands whose times break the order of COMMAND_ID: all but a longest run of times in order (never
    decreasing) through the history (patience sorting)."""
    from bisect import bisect_right

    ids = sorted(times)
    tails: list[int] = []  # tails[k]: the index (in ids) ending the best in-order run of length k + 1 found so far
    ends: list[int] = []  # their times
    back: list[int | None] = []
    for i, command in enumerate(ids):
        k = bisect_right(ends, times[command])
        back.append(tails[k - 1] if k else None)
        if k == len(tails):
            tails.append(i)
            ends.append(times[command])
        else:
            tails[k], ends[k] = i, times[command]
    kept: set[int] = set()
    at = tails[-1] if tails else None
    while at is not None:
        kept.add(ids[at])
        at = back[at]
    return set(ids) - kept


def _label_of(run_rows: pl.DataFrame, earlier: list[VersionTree]) -> str | None:
    """An update recorded without --version: the label its new rows carry (not one copied from an earlier version)."""
    seen = {t.label for t in earlier}
    labels = [label for label in run_rows["label"].drop_nulls().unique().sort().to_list() if label not in seen]
    return labels[-1] if labels else None


def upload_marks(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The upload marks, one per (path, label, MD5, mark): a touched file's new row repeats its old row's. Also the
    marks that record no upload (PROBLEM_SCHEMA): chorus-upload's `file upload` sends the current rows and then marks
    the rows replaced or removed before it ran with its own clock time (YYYYMMDDHHMMSS, UTC) as well, though it never
    sent them (their bytes were gone). Such a mark is at or after its row's end (a real one is before it: a row is
    sent while it is current). A mark that is a version label (`mark_as_uploaded_* --upload-datetime LABEL`, which
    marks current rows only) or no clock time is taken as it is."""
    marked = rows.filter(pl.col("mark").is_not_null())
    when = pl.col("mark").str.strptime(pl.Datetime("us"), "%Y%m%d%H%M%S", strict=False).dt.epoch("us")
    unsent = (pl.col("invalid_us").is_not_null() & (when >= pl.col("invalid_us"))
              & ~pl.col("mark").is_in(rows["label"].drop_nulls().unique().implode())).fill_null(False)
    sent = marked.filter(~unsent)
    # (a file version another, real mark covers is in the ledger anyway: nothing to say of it)
    notes = marked.filter(unsent).join(sent, on=["srcfile", "label", "md5"], how="anti").sort("row_id").select(
        rule=pl.lit("import.unsent-mark"), srcfile="srcfile", message=fmt(
            "upload mark {} of version {} (MD5 {}) was set after this file version had been replaced or removed "
            "(journal row FILE_ID {}, TIME_INVALID_us {}): chorus-upload's `file upload` marks such rows as done "
            "without sending them; not recorded in the uploads ledger", "mark", pl.col("label").fill_null("NULL"),
            "md5", pl.col("row_id").cast(pl.String), pl.col("invalid_us").cast(pl.String)))
    return (sent.group_by("srcfile", "label", "md5", "mark").agg(pl.col("size").first())
            .sort("srcfile", "label", "mark")), notes.cast(PROBLEM_SCHEMA)  # type: ignore[arg-type]
