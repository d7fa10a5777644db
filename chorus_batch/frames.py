"""The frame schemas passed between pipeline stages, and the manifest's column registry.

scan -> LISTING (+ md5: SCANNED), classify adds CLASSIFIED_SCHEMA, diff emits a change set.
Keeping them in one place is what lets a cloud source, a Slurm shard or a Parquet snapshot
plug into the same stages.

MANIFEST_TABLES is the one list of the manifest's tables and columns: the DDL of a new
manifest (store/schema.py), the writer's column lists and the review reader's derive from
it. A column added here needs a migration in store/schema.py that adds it to older manifests
(a test compares a migrated manifest with a new one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import polars as pl

# A site-relative path (srcfile) is none of: a leading '/', a '.' or '..' segment, an empty segment (OUTSIDE_PATH),
# a control character (a file's name may hold one but for NUL: `run` records such a file, with a scan error).
OUTSIDE_PATH = r"^/|(^|/)\.{1,2}(/|$)|//"
UNSAFE_PATH = OUTSIDE_PATH + r"|[\x00-\x1f]"

# One row per file found by a source. srcfile is the site-relative POSIX path; stored_md5 is
# the MD5 the storage itself holds (sources with the server_md5 capability), else NULL; etag is
# the storage's version tag of the object (cloud sources; NULL for local files).
# Strings are large_string, as polars makes them: a batch built by polars needs no cast (a cast imports
# pyarrow.compute, ~25 ms of every run's start-up).
LISTING_SCHEMA = pa.schema(
    [
        ("srcfile", pa.large_string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("stored_md5", pa.large_string()),
        ("etag", pa.large_string()),
        # what a replacement changes though it keeps size and mtime (`touch -r`): the inode (NULL where the file
        # system gives none: 0, Windows' listing) and the change time (POSIX only: Windows' st_ctime is the creation
        # time), from the stat the walk makes anyway; NULL for cloud objects (the etag serves). checkpoint.py keys on them.
        ("ino", pa.uint64()),
        ("ctime_ns", pa.int64()),
    ]
)

# How a file version's MD5 was obtained (source_files.md5_source):
#   computed      its bytes were read and hashed by chorus-batch
#   stored        the storage's own MD5 (Azure Content-MD5, an S3 single-part ETag), taken from the listing
#   reused        unchanged since the previous version (same size and mtime; same etag in the cloud)
#   unverifiable  no MD5: the storage holds none and --cloud-md5 stored-only forbids reading it
#   imported      recorded by chorus-upload (its journal, read by `import-journal`); not among the sources a scan has
MD5_SOURCES = ("computed", "stored", "reused", "unverifiable")
# --cloud-md5 / cloud_md5 in [run]: where a cloud file's MD5 may come from.
CLOUD_MD5_POLICIES = ("stored-or-download", "download", "stored-only")

# What a scan saw of each listed file: its root, stat and MD5 (NULL where it could not be hashed).
# `read`: the MD5 was computed from the bytes in this scan; `verify`: read only to re-verify an unchanged file.
# `md5_source` (MD5_SOURCES): how `md5` was obtained; NULL where it could not be hashed.
# `read_ns`: when a file `read` was read if not by this scan (an interrupted run's scan start: its MD5 came from the
# checkpoint, checkpoint.py); NULL: this scan's start (the verified_ns the commit records).
SCANNED_SCHEMA = {"root_id": pl.Int64, "srcfile": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64, "md5": pl.String,
                  "read": pl.Boolean, "verify": pl.Boolean, "md5_source": pl.String, "etag": pl.String,
                  "read_ns": pl.Int64}

# A shard's paths reached through links to outside the site (walk.unique_linked): the merge keeps each outside file
# once across the shards, as a single-node listing does.
LINKED_SCHEMA = {"root_id": pl.Int64, "srcfile": pl.String, "real": pl.String, "link": pl.String}

# Problems found while listing, hashing or parsing; one row each.
ERRORS_SCHEMA = {"srcfile": pl.String, "kind": pl.String, "message": pl.String}

# Added by classify, from the path alone.
CLASSIFIED_SCHEMA = {
    "modality": pl.String,
    "person_id": pl.String,
    "session_id": pl.String,
    "start_date": pl.String,  # YYYY-MM-DD
    "start_time": pl.String,  # HH:MM:SS
    "duration_s": pl.Float64,
    "segment": pl.String,
    "parse_error": pl.String,  # why the path fits no pattern; NULL when it does
    "category": pl.String,  # Telemetry / EEG (waveforms), the DICOM modality folder (images)
    "layout": pl.String,  # "current", or the superseded layout the path follows (classify.SUPERSEDED)
}

# The current rows of the previous version, as the pipeline needs them.
STATE_SCHEMA = {
    "file_id": pl.Int64,
    "srcfile": pl.String,
    "size": pl.Int64,
    "mtime_ns": pl.Int64,
    "md5": pl.String,
    "record_id": pl.Int64,
    "modality": pl.String,
    "person_id": pl.String,
    "parse_error": pl.String,
    "root_id": pl.Int64,
    "verified_ns": pl.Int64,
    "etag": pl.String,
}

# One finding of `validate`: severity error | warning | info, the rule's id, where, and what to fix.
FINDINGS_SCHEMA = {"severity": pl.String, "rule": pl.String, "srcfile": pl.String, "message": pl.String}
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}  # most serious first, wherever findings are listed


# Rows a read of many (findings, scan errors) turns into Python objects at a time (fetched_frame).
FETCH_ROWS = 50_000


def fetched_frame(cursor, schema: dict) -> pl.DataFrame:
    """A sqlite3 query's rows as a frame of `schema`, fetched FETCH_ROWS at a time: a version's million findings
    fetched at once were a million Python tuples of four strings (~0.5 GB) held beside the frame built from them,
    and `report` of a 1M-file site with a finding for every file went past 1 GiB."""
    parts = []
    while rows := cursor.fetchmany(FETCH_ROWS):
        parts.append(pl.DataFrame(rows, schema=schema, orient="row"))
    return pl.concat(parts, rechunk=False) if parts else pl.DataFrame(schema=schema)


def empty_errors() -> pl.DataFrame:
    return pl.DataFrame(schema=ERRORS_SCHEMA)


def empty_state() -> pl.DataFrame:
    return pl.DataFrame(schema=STATE_SCHEMA)


# ----------------------------------------------------------------------------- the manifest's columns


@dataclass(frozen=True)
class Column:
    name: str
    sql: str  # type and constraints, as in CREATE TABLE
    dtype: pl.DataType | type[pl.DataType]


def _columns(*spec: tuple[str, str, object]) -> tuple[Column, ...]:
    return tuple(Column(name, sql, dtype) for name, sql, dtype in spec)  # type: ignore[arg-type]


_S, _I, _F = pl.String, pl.Int64, pl.Float64
# Table -> columns, in the order of the CREATE TABLE of a new manifest (columns added by a
# migration come last, where ALTER TABLE puts them in an older manifest).
MANIFEST_TABLES: dict[str, tuple[Column, ...]] = {
    "meta": _columns(("key", "TEXT PRIMARY KEY", _S), ("value", "TEXT NOT NULL", _S)),
    "source_files": _columns(
        ("file_id", "INTEGER PRIMARY KEY", _I), ("record_id", "INTEGER", _I), ("person_id", "TEXT", _S),
        ("srcfile", "TEXT NOT NULL", _S), ("modality", "TEXT", _S), ("size", "INTEGER NOT NULL", _I),
        ("mtime_ns", "INTEGER NOT NULL", _I),
        ("md5", "TEXT", _S),  # NULL only when md5_source is 'unverifiable' (schema 7; NOT NULL before)
        ("session_id", "TEXT", _S),
        ("start_date", "TEXT", _S), ("start_time", "TEXT", _S), ("duration_s", "REAL", _F), ("segment", "TEXT", _S),
        ("parse_error", "TEXT", _S), ("time_valid", "TEXT NOT NULL", _S), ("time_invalid", "TEXT", _S),
        ("version_valid", "TEXT NOT NULL", _S), ("version_invalid", "TEXT", _S),
        ("root_id", "INTEGER", _I),  # schema 3: the root the file was found under (roots.root_id)
        ("category", "TEXT", _S), ("layout", "TEXT", _S),  # schema 4
        ("verified_ns", "INTEGER", _I),  # schema 6: when the bytes were last read and found to have this MD5
        # schema 7: how the MD5 was obtained (MD5_SOURCES; NULL: not recorded, before schema 7), and the
        # storage's etag of a cloud file (its change detection beside size and mtime)
        ("md5_source", "TEXT", _S), ("etag", "TEXT", _S),
    ),
    "registry": _columns(
        ("record_id", "INTEGER PRIMARY KEY", _I), ("record_key", "TEXT NOT NULL UNIQUE", _S), ("person_id", "TEXT", _S),
        ("session_id", "TEXT", _S), ("modality", "TEXT", _S), ("date", "TEXT", _S), ("time", "TEXT", _S),
        ("uploaddir", "TEXT", _S), ("isactive", "INTEGER NOT NULL DEFAULT 1", _I),
        # schema 4: Telemetry/EEG or the DICOM modality; the procedure id of the linkage registries,
        # allocated once per record and never changed
        ("category", "TEXT", _S), ("proc_id", "INTEGER", _I),
    ),
    "versions": _columns(
        ("label", "TEXT PRIMARY KEY", _S), ("started_at", "TEXT NOT NULL", _S), ("finished_at", "TEXT NOT NULL", _S),
        ("mode", "TEXT NOT NULL", _S), ("site", "TEXT", _S), ("n_added", "INTEGER NOT NULL", _I),
        ("n_removed", "INTEGER NOT NULL", _I), ("n_replaced", "INTEGER NOT NULL", _I),
        ("n_renamed", "INTEGER NOT NULL", _I), ("n_unchanged", "INTEGER NOT NULL", _I),
        ("n_errors", "INTEGER NOT NULL", _I), ("n_files", "INTEGER NOT NULL", _I),
        ("total_bytes", "INTEGER NOT NULL", _I), ("run_id", "INTEGER", _I),
        ("release", "TEXT", _S),  # schema 8: the chorus-batch release that committed it
    ),
    "changes": _columns(
        ("version", "TEXT NOT NULL", _S), ("change", "TEXT NOT NULL", _S), ("srcfile", "TEXT NOT NULL", _S),
        ("old_srcfile", "TEXT", _S), ("file_id", "INTEGER", _I), ("old_file_id", "INTEGER", _I),
    ),
    "scan_errors": _columns(
        ("version", "TEXT NOT NULL", _S), ("srcfile", "TEXT", _S), ("kind", "TEXT NOT NULL", _S),
        ("message", "TEXT NOT NULL", _S),
    ),
    "runs": _columns(
        ("run_id", "INTEGER PRIMARY KEY", _I), ("started_at", "TEXT NOT NULL", _S), ("finished_at", "TEXT", _S),
        ("host", "TEXT", _S), ("user", "TEXT", _S), ("pid", "INTEGER", _I), ("argv", "TEXT", _S), ("mode", "TEXT", _S),
        ("site", "TEXT", _S), ("version", "TEXT", _S), ("exit_code", "INTEGER", _I), ("n_files", "INTEGER", _I),
        ("n_hashed", "INTEGER", _I), ("bytes_hashed", "INTEGER", _I), ("n_errors", "INTEGER", _I),
        ("scan_started_ns", "INTEGER", _I), ("message", "TEXT", _S),
        ("release", "TEXT", _S),  # schema 8: the chorus-batch release that ran
    ),
    # What `validate` read from a file's header, by content: a file version's facts never change. Schema 11: rows in
    # the order cached, keyed by a unique index on (kind, md5) (store/schema.py; was a WITHOUT ROWID table).
    "file_facts": _columns(("kind", "TEXT NOT NULL", _S), ("md5", "TEXT NOT NULL", _S), ("facts", "TEXT NOT NULL", _S)),
    "findings": _columns(
        ("version", "TEXT NOT NULL", _S), ("severity", "TEXT NOT NULL", _S), ("rule", "TEXT NOT NULL", _S),
        ("srcfile", "TEXT", _S), ("message", "TEXT NOT NULL", _S),
    ),
    "validations": _columns(
        ("version", "TEXT PRIMARY KEY", _S), ("validated_at", "TEXT NOT NULL", _S), ("n_error", "INTEGER NOT NULL", _I),
        ("n_warning", "INTEGER NOT NULL", _I), ("n_info", "INTEGER NOT NULL", _I),
        ("headers_read", "INTEGER NOT NULL", _I),
        ("rules", "TEXT", _S),  # schema 9: the rules that checked it (validate.rules.edition); NULL: an earlier release's
    ),
    # schema 5: problems met by a run that committed no version (no file changed, only what could not be read did)
    "run_errors": _columns(
        ("run_id", "INTEGER NOT NULL", _I), ("srcfile", "TEXT", _S), ("kind", "TEXT NOT NULL", _S),
        ("message", "TEXT NOT NULL", _S),
    ),
    # schema 3: the places a site's files were found (a POSIX path or a URL without secrets).
    "roots": _columns(
        ("root_id", "INTEGER PRIMARY KEY", _I), ("location", "TEXT NOT NULL", _S), ("modality", "TEXT", _S),
        ("first_version", "TEXT", _S),
    ),
    # schema 8: the uploads ledger. One row per file version sent (or to be sent) to a central container:
    # `central` is the destination container/prefix (a URL without secrets), `destination` the blob's URL
    # (<central>/<version>/<srcfile>). state: uploaded | failed | stale (its size, mtime or bytes no longer
    # match the row) | missing (gone from its root) | superseded (replaced before it was sent: its bytes are
    # no longer on disk) | no_md5 (unverifiable: no MD5 to give the blob) | conflict (the centre holds other
    # content there: not replaced) | bad_name (a name Azure cannot store as it is) | imported (from another tool's
    # journal, not verified). md5: the blob's Content-MD5 after the upload, as the service reports it.
    # confirmed_by: 'service' (Put Blob: the service hashed the bytes it stored), 'blocks' (each block's MD5
    # checked by the service; the whole file hashed from the bytes sent), 'found' (already at the centre with this
    # size and MD5: not sent again), 'listing' (mark-uploaded: size and
    # Content-MD5 found at the centre), 'journal' (imported). verify_state: ok | missing | size | md5 | content (bytes
    # differ) | no_md5 (the blob has no Content-MD5 to compare: sent by another tool; --download checks the bytes) |
    # rewritten (written at the centre since the ledger recorded its etag; --download checks the bytes) |
    # archived (--download: the blob is in the Archive tier, its bytes could not be read back; not sent again).
    # etag: the blob's as sent, or as verify found it damaged (the one blob the next upload may replace).
    "uploads": _columns(
        ("central", "TEXT NOT NULL", _S), ("version", "TEXT NOT NULL", _S), ("file_id", "INTEGER NOT NULL", _I),
        ("destination", "TEXT NOT NULL", _S), ("state", "TEXT NOT NULL", _S), ("uploaded_at", "TEXT", _S),
        ("bytes", "INTEGER", _I), ("md5", "TEXT", _S), ("etag", "TEXT", _S), ("confirmed_by", "TEXT", _S),
        ("attempts", "INTEGER NOT NULL DEFAULT 0", _I), ("last_error", "TEXT", _S), ("verified_at", "TEXT", _S),
        ("verify_state", "TEXT", _S), ("verify_method", "TEXT", _S),
    ),
    # schema 8: per version and central container, the submission as a whole: when its files were all
    # sent, when it was last verified and how, and when the manifest's copy went next to it.
    "submissions": _columns(
        ("central", "TEXT NOT NULL", _S), ("version", "TEXT NOT NULL", _S), ("started_at", "TEXT", _S),
        ("finished_at", "TEXT", _S), ("verified_at", "TEXT", _S), ("verify_method", "TEXT", _S),
        ("n_bad", "INTEGER", _I), ("manifest_copied_at", "TEXT", _S),
    ),
}
# Table constraints after the columns.
TABLE_SUFFIX = {"uploads": ", PRIMARY KEY (central, version, file_id)) WITHOUT ROWID",
                "submissions": ", PRIMARY KEY (central, version)) WITHOUT ROWID"}


def columns_of(table: str) -> tuple[str, ...]:
    return tuple(c.name for c in MANIFEST_TABLES[table])


def schema_of(table: str, names: tuple[str, ...] | list[str] | None = None) -> dict[str, pl.DataType]:
    """The polars schema of a manifest table (or of some of its columns, in the order given)."""
    dtypes = {c.name: c.dtype for c in MANIFEST_TABLES[table]}
    return {name: dtypes[name] for name in (names or dtypes)}  # type: ignore[misc]


# Header facts cached by content (file_facts): what validation reads of a file, as JSON text; parsed while
# hashing (ScanResult.facts) or by validate.readers, and read back from the cache.
FACTS_SCHEMA = schema_of("file_facts")


def packed_frame(n: int, columns: dict[str, tuple[pa.DataType, object]]) -> pl.DataFrame:
    """n rows of fixed-width values packed in buffers (name -> (Arrow type, buffer): 16-byte MD5 digests as
    pa.binary(16), int64 arrays) as a polars frame, no Python object per value. Built as one record batch:
    pl.Series of a single Arrow array imports pyarrow.compute (~25 ms of a run's start-up)."""
    arrays = [pa.Array.from_buffers(dtype, n, [None, pa.py_buffer(buffer)]) for dtype, buffer in columns.values()]
    frame = pl.from_arrow(pa.RecordBatch.from_arrays(arrays, names=list(columns)))
    assert isinstance(frame, pl.DataFrame)
    return frame


_PLACES = re.compile(r"(\{\}|\{[^{}|]*\|[^{}|]*\})")  # "{}" (an argument) or "{one|many}" (a word that agrees)


def shown(name: pl.Expr) -> pl.Expr:
    """A name or id inside a message as units.shown_name shows it (quoted, escaped, where a space at an end, a
    control or odd character would be unseen: "person folder 000004  has no row" hid the folder's trailing space).
    Only names that may need it go through Python (a few of a site's; none of most)."""
    from .units import shown_name

    odd = name.str.contains(r"^\s|\s$|^['\"]|[^\x20-\x7e]")
    # (the others are null here, and map_elements skips nulls: Python sees the odd names only)
    return pl.coalesce(pl.when(odd).then(name).map_elements(shown_name, return_dtype=pl.String), name)


def fmt(template: str, *args: pl.Expr | str, n: pl.Expr | str | None = None) -> pl.Expr:
    """pl.format's "{}" template, built with concat_str (null where an argument is null, as pl.format is).
    polars 2.1's pl.format (str.format) panics on a frame of several chunks once a filter leaves some of them
    empty ("assertion failed: i < self.len()"): the findings of a site with a non-numeric person folder, for one,
    ended in a traceback. A str argument is a column name, as in pl.format.

    "{one|many}" is a word that agrees with a count (texts said "1 row(s) have"): "{} row{|s} {has|have}" gives
    "1 row has", "3 rows have". The count is `n` where given (a list's length, say), else the argument of the
    nearest "{}" before the word."""
    parts = _PLACES.split(template)
    texts, places = parts[0::2], parts[1::2]
    n_args = places.count("{}")
    if n_args != len(args):
        raise ValueError(f"template has {n_args} placeholders but {len(args)} arguments were given")
    exprs: list[pl.Expr] = [pl.lit(texts[0])] if texts[0] else []
    count = pl.col(n) if isinstance(n, str) else n
    taken = 0
    for place, text in zip(places, texts[1:]):
        if place == "{}":
            arg = args[taken]
            taken += 1
            exprs.append(pl.col(arg) if isinstance(arg, str) else arg)
            if n is None:
                count = exprs[-1]
        else:
            if count is None:
                raise ValueError(f"{place} in {template!r} has no count before it and no n= to agree with")
            one, many = place[1:-1].split("|")
            exprs.append(pl.when(count == 1).then(pl.lit(one)).otherwise(pl.lit(many)))
        if text:
            exprs.append(pl.lit(text))
    return pl.concat_str(exprs) if exprs else pl.lit("")


SORTED_FROM = 100  # folders: below, a starts_with each is cheaper than sorting the paths (see under_folders)


def under_folders(paths: pl.Series, folders: list[str]) -> pl.Series:
    """For each path, whether it lies under one of `folders` (relative folder paths ending in '/'; '' is the root,
    under which everything lies). A `starts_with` per folder costs about 7 ms per folder per 1M paths: 1,000
    unreadable folders over 1M rows took 6.7 s (a loaded machine). From SORTED_FROM folders on, by ranges in the
    sorted paths instead (about 1 s per 1M paths, whatever the folders): everything under 'a/' sorts in
    ['a/', 'a0'), as '0' follows '/'."""
    import numpy as np

    n = paths.len()
    if "" in folders:
        return pl.Series(paths.name, np.ones(n, dtype=bool))
    if not folders or n == 0:
        return pl.Series(paths.name, np.zeros(n, dtype=bool))
    if len(folders) < SORTED_FROM:
        return paths.to_frame("p").select(pl.any_horizontal(
            [pl.col("p").str.starts_with(f) for f in folders]).alias(paths.name)).to_series()
    order = paths.arg_sort().to_numpy()
    ordered = paths.gather(order)
    starts = ordered.search_sorted(pl.Series(folders, dtype=pl.String), side="left").to_numpy()
    ends = ordered.search_sorted(pl.Series([f[:-1] + chr(ord(f[-1]) + 1) for f in folders], dtype=pl.String),
                                 side="left").to_numpy()
    inside = np.zeros(n + 1, dtype=np.int64)  # +1 where a range starts, -1 where it ends; covered while above 0
    np.add.at(inside, starts, 1)
    np.add.at(inside, ends, -1)
    covered = np.empty(n, dtype=bool)
    covered[order] = np.cumsum(inside[:n]) > 0
    return pl.Series(paths.name, covered)


STAMP = "%Y-%m-%d %H:%M:%S"  # the linkage procedure's datetime (yyyy-MM-dd HH:mm:ss; 'T' and fractions read too)


def capture_moment(text: pl.Expr) -> pl.Expr:
    """A registry row's datetime (as written) as a Datetime, null where it reads as none: yyyy-MM-dd HH:mm:ss as the
    Imaging SOP's text asks (a 'T' and fractions of a second read too), or month/day/year H:mm:ss as its example
    registry (Table 2.0) writes it, 8/18/2022 22:41:11 (a four-digit year; the month first, as 9/22/2023 shows)."""
    text = text.fill_null("").str.strip_chars()
    iso = text.str.replace("T", " ").str.replace(r"\.\d+$", "").str.strptime(pl.Datetime, STAMP, strict=False)
    us = (pl.when(text.str.contains(r"^\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d{2}:\d{2}$"))
          .then(text).str.strptime(pl.Datetime, "%m/%d/%Y %H:%M:%S", strict=False))
    return pl.coalesce(iso, us)


# A visit datetime as written that names a time zone (2020-01-01T08:00:00Z, +01:00): visit_moment reads its clock time,
# the zone dropped; `registry` and validate's registry.visit_time/visit_missing say so in these words
ZONE_DROPPED = ("read as the clock time written, the zone dropped and nothing converted, while the capture times are "
                "the site's local time (the linkage procedure's): a visit written in UTC or another zone is off by its "
                "offset, and files captured near its start or end take another visit_id (or none)")


def has_zone(text: pl.Expr) -> pl.Expr:
    """True where a visit datetime as written (text) names a time zone (Z, +01:00, -0500) after its clock time."""
    return text.fill_null("").str.strip_chars().str.contains(r"\d:\d{2}(?:\.\d+)?\s*(?:[zZ]|[+-]\d{2}:?\d{2})$")


def visit_moment(exact: pl.Expr, day: pl.Expr, *, end: bool) -> pl.Expr:
    """A visit's start (or end) as a Datetime: `exact` (visit_*_datetime) where it reads as one, else `day`
    (visit_*_date) as the whole day: its first second, or its last for an end. A DATE column a database export wrote
    with its midnight time (2020-01-01 00:00:00) is that day. Null where neither reads."""
    # (a datetime written to the minute, 2020-01-01 13:00 as a spreadsheet saves it, is that minute: read as not a
    # datetime, its visit became the whole day, and a file captured in the afternoon took the morning's visit)
    text = exact.str.strip_chars().str.replace("T", " ")
    exact_at = pl.coalesce(text.str.slice(0, 19).str.strptime(pl.Datetime, STAMP, strict=False),
                           text.str.extract(r"^(\d{4}-\d{2}-\d{2} \d{1,2}:\d{2})(?:$|[^0-9:])")
                           .str.strptime(pl.Datetime, "%Y-%m-%d %H:%M", strict=False))
    whole = (day.str.strip_chars().str.extract(r"^(\d{4}-\d{2}-\d{2})(?:[ T][0-9:.]*)?$")
             .str.strptime(pl.Date, "%Y-%m-%d", strict=False).cast(pl.Datetime))
    if end:
        # An end datetime at the midnight that starts its own end date is a time not given (OMOP ETLs "set time to
        # midnight 00:00:00" where the source has none): the whole end day. Read as that instant, a one-day visit
        # (2024-01-01 00:00:00 to 2024-01-01 00:00:00) enclosed no capture and a stay lost its discharge day: the
        # files' visit_id was empty, exit 0, without a word
        exact_at = pl.when(exact_at == whole).then(None).otherwise(exact_at)
    return pl.coalesce(exact_at, whole + pl.duration(days=1) - pl.duration(seconds=1) if end else whole)


def linkage_without_rows(procedures: pl.DataFrame | pl.LazyFrame,
                         proc_ids: pl.Series | pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The linkage rows of a site's procedure_occurrence.csv whose procedure_occurrence_id is no registry row's proc_id.

    `procedures`: id (Int64) and linkage (the row's procedure_concept_id is 4180938 Imaging or 4141651 Monitoring, the
    concepts of the rows the Multimodal-Linkage procedure makes from the registries); `proc_ids`: the registries'
    proc_ids (Int64; a frame's column proc_id). Such a row was made from a registry row since gone (its session
    deleted, its person removed, after the rows were merged): a procedure linking no file delivered. `registry` warns
    of those whose id it gave; `validate` tells them as registry.linkage_without_files. Returns the rows' ids (id)."""
    given = proc_ids.to_frame("proc_id") if isinstance(proc_ids, pl.Series) else proc_ids
    return (procedures.lazy().filter(pl.col("linkage")).select("id").unique()
            .join(given.lazy().select(id=pl.col("proc_id")).drop_nulls().unique(), on="id", how="anti"))
