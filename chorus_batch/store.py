"""The SQLite manifest: schema, lock, reading the previous version, committing a new one.

Bulk reads and writes go through ADBC (Arrow in, Arrow out; measured about twice
as fast as `executemany`); one version is one SQLite transaction in WAL mode, so
a killed run leaves the previous version intact. The current rows of the latest
version are also cached as Parquet beside the manifest (a no-change run on a
large site then reads 1M rows in well under a second instead of seconds); the
cache is trusted only while its generation matches the manifest's.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
from filelock import FileLock, Timeout

from .errors import ManifestError, ManifestLocked
from .classify import record_key
from .frames import FINDINGS_SCHEMA, STATE_SCHEMA, empty_state

SCHEMA_VERSION = 2  # 2: file_facts, findings, validations (created on the first write by this version)
OWNER_ONLY = 0o600

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS source_files (
    file_id INTEGER PRIMARY KEY,
    record_id INTEGER,
    person_id TEXT,
    srcfile TEXT NOT NULL,
    modality TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    session_id TEXT,
    start_date TEXT,
    start_time TEXT,
    duration_s REAL,
    segment TEXT,
    parse_error TEXT,
    time_valid TEXT NOT NULL,
    time_invalid TEXT,
    version_valid TEXT NOT NULL,
    version_invalid TEXT
);
CREATE TABLE IF NOT EXISTS registry (
    record_id INTEGER PRIMARY KEY,
    record_key TEXT NOT NULL UNIQUE,
    person_id TEXT,
    session_id TEXT,
    modality TEXT,
    date TEXT,
    time TEXT,
    uploaddir TEXT,
    isactive INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS versions (
    label TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    mode TEXT NOT NULL,
    site TEXT,
    n_added INTEGER NOT NULL,
    n_removed INTEGER NOT NULL,
    n_replaced INTEGER NOT NULL,
    n_renamed INTEGER NOT NULL,
    n_unchanged INTEGER NOT NULL,
    n_errors INTEGER NOT NULL,
    n_files INTEGER NOT NULL,
    total_bytes INTEGER NOT NULL,
    run_id INTEGER
);
CREATE TABLE IF NOT EXISTS changes (
    version TEXT NOT NULL,
    change TEXT NOT NULL,
    srcfile TEXT NOT NULL,
    old_srcfile TEXT,
    file_id INTEGER,
    old_file_id INTEGER
);
CREATE TABLE IF NOT EXISTS scan_errors (
    version TEXT NOT NULL,
    srcfile TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    host TEXT,
    user TEXT,
    pid INTEGER,
    argv TEXT,
    mode TEXT,
    site TEXT,
    version TEXT,
    exit_code INTEGER,
    n_files INTEGER,
    n_hashed INTEGER,
    bytes_hashed INTEGER,
    n_errors INTEGER,
    scan_started_ns INTEGER,
    message TEXT
);
-- What `validate` read from a file's header, by content: a file version's facts never change.
CREATE TABLE IF NOT EXISTS file_facts (
    kind TEXT NOT NULL,
    md5 TEXT NOT NULL,
    facts TEXT NOT NULL,
    PRIMARY KEY (kind, md5)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS findings (
    version TEXT NOT NULL,
    severity TEXT NOT NULL,
    rule TEXT NOT NULL,
    srcfile TEXT,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS validations (
    version TEXT PRIMARY KEY,
    validated_at TEXT NOT NULL,
    n_error INTEGER NOT NULL,
    n_warning INTEGER NOT NULL,
    n_info INTEGER NOT NULL,
    headers_read INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_version ON findings(version);
CREATE INDEX IF NOT EXISTS changes_version ON changes(version);
CREATE INDEX IF NOT EXISTS scan_errors_version ON scan_errors(version);
CREATE INDEX IF NOT EXISTS registry_person ON registry(person_id);
"""

# Indexes on source_files are dropped around the first (bulk) load and rebuilt after it.
_SOURCE_FILES_INDEXES = (
    # At most one current row per path: the manifest's central invariant, enforced.
    "CREATE UNIQUE INDEX IF NOT EXISTS source_files_current ON source_files(srcfile) WHERE time_invalid IS NULL",
    "CREATE INDEX IF NOT EXISTS source_files_path ON source_files(srcfile)",
    "CREATE INDEX IF NOT EXISTS source_files_record ON source_files(record_id)",
)

# Updates land on random pages of a large manifest; with SQLite's default 2 MB page
# cache they spill and are rewritten mid-transaction (measured: 30k row updates on a
# 1M-row manifest 1.5 s -> 0.14 s with 128 MB). Not used for the first, append-only load.
_UPDATE_CACHE = "PRAGMA cache_size = -131072"

# Change-set rows as `changes` and the review API return them.
CHANGES_SCHEMA = {
    "version": pl.String, "change": pl.String, "srcfile": pl.String, "old_srcfile": pl.String, "file_id": pl.Int64,
    "old_file_id": pl.Int64, "md5": pl.String, "size": pl.Int64, "modality": pl.String, "person_id": pl.String,
}

# What the validation rules read of each current file.
VALIDATION_SCHEMA = {
    "srcfile": pl.String, "size": pl.Int64, "md5": pl.String, "modality": pl.String, "person_id": pl.String,
    "session_id": pl.String, "start_date": pl.String, "start_time": pl.String, "duration_s": pl.Float64,
    "segment": pl.String, "parse_error": pl.String,
}

# Columns written for a new file version (besides the validity columns).
NEW_ROW_COLUMNS = (
    "file_id", "record_id", "person_id", "srcfile", "modality", "size", "mtime_ns", "md5",
    "session_id", "start_date", "start_time", "duration_s", "segment", "parse_error",
)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class VersionRecord:
    label: str
    started_at: str
    finished_at: str
    mode: str
    site: str
    counts: dict[str, int]
    n_errors: int
    n_files: int
    total_bytes: int
    run_id: int | None


@dataclass
class CommitResult:
    changes: pl.DataFrame  # as written to `changes`
    new_rows: pl.DataFrame  # the new source_files rows, with file_id and record_id
    generation: str


def create_private(path: str | Path, *, truncate: bool = True) -> int:
    """Open (creating) a file readable by its owner only; returns the descriptor.
    Outputs of this tool hold person identifiers."""
    flags = os.O_CREAT | os.O_WRONLY | getattr(os, "O_BINARY", 0) | (os.O_TRUNC if truncate else 0)
    return os.open(path, flags, OWNER_ONLY)


def _restrict(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.chmod(path, OWNER_ONLY)


class Manifest:
    """One manifest file (SQLite) and the files beside it (lock, state cache)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.lock_path = Path(f"{self.path}.lock")
        self.holder_path = Path(f"{self.path}.lock.json")
        self.cache_path = Path(f"{self.path}.state.parquet")
        self._manifest_id: str | None = None

    # ------------------------------------------------------------------ opening

    def connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=30)
        except sqlite3.Error as exc:
            raise ManifestError(
                f"cannot open the manifest: {exc}",
                where=str(self.path),
                fix="check that the folder exists and is writable, or pass --db with another path",
            ) from None
        con.execute("PRAGMA foreign_keys = ON")
        return con

    def ensure_schema(self) -> None:
        """Create or check the schema; new manifests are readable by their owner only."""
        is_new = not self.path.exists()
        if is_new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Create the file with owner-only permissions before SQLite writes to it.
            os.close(create_private(self.path, truncate=False))
        con = self.connect()
        try:
            try:
                con.execute("PRAGMA journal_mode = WAL")
                version = con.execute(
                    "SELECT value FROM meta WHERE key = 'schema_version'"
                ).fetchone() if self._has_table(con, "meta") else None
            except sqlite3.DatabaseError as exc:
                raise ManifestError(
                    f"the manifest is not a readable SQLite database: {exc}",
                    where=str(self.path),
                    fix="pass --db with the right file, or move this one aside to start a new manifest",
                ) from None
            if version is not None and int(version[0]) > SCHEMA_VERSION:
                raise ManifestError(
                    f"the manifest has schema version {version[0]}, newer than this chorus-batch understands ({SCHEMA_VERSION})",
                    where=str(self.path),
                    fix="upgrade chorus-batch (pip install -U chorus-batch)",
                )
            with con:
                con.executescript(_TABLES)
                for ddl in _SOURCE_FILES_INDEXES:
                    con.execute(ddl)
                con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                # Upgrades only add tables (above), so an older manifest just moves up.
                con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
                con.execute("INSERT OR IGNORE INTO meta VALUES ('manifest_id', ?)", (uuid.uuid4().hex,))
                con.execute("INSERT OR IGNORE INTO meta VALUES ('state_generation', '0')")
        finally:
            con.close()
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{self.path}{suffix}").exists():
                _restrict(f"{self.path}{suffix}")

    def has_table(self, name: str) -> bool:
        con = self.connect()
        try:
            return self._has_table(con, name)
        finally:
            con.close()

    @staticmethod
    def _has_table(con: sqlite3.Connection, name: str) -> bool:
        return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)).fetchone() is not None

    def require(self) -> None:
        if not self.path.exists():
            raise ManifestError(
                f"no manifest at {self.path}",
                where=str(self.path),
                fix="run `chorus-batch run` first, or pass --db with the manifest's path",
            )

    # ------------------------------------------------------------------ lock

    @contextlib.contextmanager
    def lock(self, argv: list[str]) -> Iterator[None]:
        """Exclusive for one run; a second run fails at once, naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path, timeout=0, mode=OWNER_ONLY)
        try:
            lock.acquire()
        except Timeout:
            holder = "an unknown process (it has not written its details yet)"
            with contextlib.suppress(OSError, ValueError):
                info = json.loads(self.holder_path.read_text(encoding="utf-8"))
                holder = f"pid {info['pid']} on host {info['host']} (user {info['user']}), started {info['started_at']}"
            raise ManifestLocked(
                f"the manifest is locked by another run: {holder}",
                where=str(self.lock_path),
                fix="wait for that run to finish; if it is gone, the lock is released automatically",
            ) from None
        try:
            with os.fdopen(create_private(self.holder_path), "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "user": _user(), "started_at": iso(utc_now()),
                           "command": " ".join(argv[:2])}, f)
            yield
        finally:
            with contextlib.suppress(OSError):
                self.holder_path.unlink()
            lock.release()

    # ------------------------------------------------------------------ reads

    def meta(self, con: sqlite3.Connection, key: str) -> str | None:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def latest_version(self) -> dict | None:
        if not self.path.exists():
            return None
        con = self.connect()
        try:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM versions ORDER BY label DESC LIMIT 1").fetchone()
            return dict(row) if row else None
        finally:
            con.close()

    def last_scan_started_ns(self) -> int | None:
        """Scan start of the last run that finished (for the racily-clean check)."""
        if not self.path.exists():
            return None
        con = self.connect()
        try:
            row = con.execute(
                "SELECT scan_started_ns FROM runs WHERE exit_code IN (0, 1) AND scan_started_ns IS NOT NULL "
                "ORDER BY run_id DESC LIMIT 1"
            ).fetchone()
            return row[0] if row else None
        finally:
            con.close()

    def version_errors(self, label: str | None) -> pl.DataFrame:
        if label is None or not self.path.exists():
            return pl.DataFrame(schema={"srcfile": pl.String, "kind": pl.String, "message": pl.String})
        con = self.connect()  # few rows: plain sqlite3, no ADBC start-up on a no-change run
        try:
            rows = con.execute(
                "SELECT srcfile, kind, message FROM scan_errors WHERE version = ? ORDER BY srcfile, kind, message", (label,)
            ).fetchall()
        finally:
            con.close()
        return pl.DataFrame(rows, schema={"srcfile": pl.String, "kind": pl.String, "message": pl.String}, orient="row")

    def previous_state(self) -> pl.DataFrame:
        """Current rows of the latest version (STATE_SCHEMA), from the cache when it is fresh."""
        if not self.path.exists():
            return empty_state()
        con = self.connect()
        try:
            manifest_id = self._manifest_id = self.meta(con, "manifest_id")
            generation = self.meta(con, "state_generation")
        finally:
            con.close()
        cached = self._read_cache(manifest_id, generation)
        if cached is not None:
            return cached
        state = self.query_frame(
            f"SELECT {', '.join(STATE_SCHEMA)} FROM source_files WHERE time_invalid IS NULL",
            schema=STATE_SCHEMA,
        )
        self._write_cache(state, manifest_id, generation)
        return state

    def _read_cache(self, manifest_id: str | None, generation: str | None) -> pl.DataFrame | None:
        try:
            meta = pl.read_parquet_metadata(self.cache_path)
        except Exception:  # missing or damaged: it is only a cache
            return None
        if meta.get("manifest_id") != str(manifest_id) or meta.get("generation") != str(generation):
            return None
        try:
            return pl.read_parquet(self.cache_path).cast(STATE_SCHEMA)  # type: ignore[arg-type]
        except Exception:
            return None

    def _write_cache(self, state: pl.DataFrame, manifest_id: str | None, generation: str | None) -> None:
        tmp = Path(f"{self.cache_path}.{os.getpid()}.tmp")
        try:
            os.close(create_private(tmp))
            state.write_parquet(tmp, compression="lz4", metadata={"manifest_id": str(manifest_id), "generation": str(generation)})
            os.replace(tmp, self.cache_path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def query_frame(self, sql: str, params: tuple = (), *, schema: dict | None = None) -> pl.DataFrame:
        """Run a read query through ADBC and return a polars frame."""
        import adbc_driver_sqlite.dbapi as adbc

        with adbc.connect(str(self.path)) as con, con.cursor() as cur:
            # Large batches: the default 1024 rows costs about 40% more on million-row reads.
            cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "131072"})
            cur.execute(sql, params or None)
            table = cur.fetch_arrow_table()
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        if schema is not None:
            if frame.width == 0 or frame.height == 0:
                return pl.DataFrame(schema=schema)
            frame = frame.cast(schema)  # type: ignore[arg-type]
        return frame

    # ------------------------------------------------------------------ runs

    def begin_run(self, argv: list[str], mode: str, site: str) -> int:
        con = self.connect()
        try:
            with con:
                cur = con.execute(
                    "INSERT INTO runs (started_at, host, user, pid, argv, mode, site) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (iso(utc_now()), socket.gethostname(), _user(), os.getpid(), json.dumps(argv), mode, site),
                )
                return int(cur.lastrowid or 0)
        finally:
            con.close()

    def finish_run(self, run_id: int, *, exit_code: int, version: str | None, n_files: int = 0, n_hashed: int = 0,
                   bytes_hashed: int = 0, n_errors: int = 0, scan_started_ns: int | None = None, message: str | None = None) -> None:
        con = self.connect()
        try:
            with con:
                con.execute(
                    "UPDATE runs SET finished_at=?, exit_code=?, version=?, n_files=?, n_hashed=?, bytes_hashed=?, "
                    "n_errors=?, scan_started_ns=?, message=? WHERE run_id=?",
                    (iso(utc_now()), exit_code, version, n_files, n_hashed, bytes_hashed, n_errors, scan_started_ns, message, run_id),
                )
        finally:
            con.close()

    # ------------------------------------------------------------------ writes

    def refresh_mtimes(self, touched: pl.DataFrame) -> str | None:
        """Content unchanged, mtime moved (e.g. a copy without -p): remember the new
        stat so the next run need not hash these files again. Not a new version."""
        if touched.height == 0:
            return None
        import adbc_driver_sqlite.dbapi as adbc

        with adbc.connect(str(self.path)) as con:
            with con.cursor() as cur:
                cur.execute(_UPDATE_CACHE)
                cur.adbc_ingest("_touch", touched.select("file_id", "mtime_ns").to_arrow(), mode="create", temporary=True)
                cur.execute(
                    "UPDATE source_files SET mtime_ns = t.mtime_ns FROM temp._touch t "
                    "WHERE source_files.file_id = t.file_id"
                )
                generation = self._bump_generation(cur)
            con.commit()
        return generation

    @staticmethod
    def _bump_generation(cur) -> str:
        cur.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'state_generation'")
        cur.execute("SELECT value FROM meta WHERE key = 'state_generation'")
        return str(cur.fetchone()[0])

    def commit_version(
        self,
        version: VersionRecord,
        *,
        new_rows: pl.DataFrame,
        change_set: pl.DataFrame,
        invalidated_ids: pl.Series,
        touched: pl.DataFrame,
        errors: pl.DataFrame,
    ) -> CommitResult:
        """Write one version in one transaction. `new_rows` carries NEW_ROW_COLUMNS
        except file_id/record_id; returns the change set with file ids."""
        import adbc_driver_sqlite.dbapi as adbc

        with adbc.connect(str(self.path)) as con:
            with con.cursor() as cur:
                cur.execute("SELECT coalesce(max(file_id), 0), (SELECT count(*) FROM source_files) FROM source_files")
                max_file_id, n_rows = cur.fetchone()
                if n_rows:
                    cur.execute(_UPDATE_CACHE)
                new_rows = new_rows.with_columns(
                    file_id=pl.int_range(max_file_id + 1, max_file_id + 1 + new_rows.height, dtype=pl.Int64))
                cur.execute("SELECT coalesce(max(record_id), 0) FROM registry")
                (max_record_id,) = cur.fetchone()
                new_rows = self._assign_records(cur, new_rows, max_record_id)
                now, label = version.finished_at, version.label

                if invalidated_ids.len():
                    cur.adbc_ingest("_old", pl.DataFrame({"file_id": invalidated_ids}).to_arrow(), mode="create", temporary=True)
                    cur.execute(
                        "UPDATE source_files SET time_invalid = ?, version_invalid = ? "
                        "WHERE file_id IN (SELECT file_id FROM temp._old)",
                        (now, label),
                    )
                bulk = n_rows == 0 and new_rows.height > 10_000
                if bulk:  # first load: build indexes once, after the rows are in
                    for ddl in _SOURCE_FILES_INDEXES:
                        cur.execute("DROP INDEX IF EXISTS " + ddl.split(" ON ")[0].split()[-1])
                if new_rows.height:
                    validity = {"time_valid": now, "time_invalid": None, "version_valid": label, "version_invalid": None}
                    cur.adbc_ingest("source_files", _arrow_stream(new_rows.select(NEW_ROW_COLUMNS), validity), mode="append")
                if bulk:
                    for ddl in _SOURCE_FILES_INDEXES:
                        cur.execute(ddl)

                # A record stays active while any current file maps to it.
                # Records created just now are active already; recheck the ones that existed.
                affected = pl.concat([
                    new_rows.filter(pl.col("record_id") <= max_record_id).select("record_id"),
                    self._records_of(cur, invalidated_ids),
                ]).unique()
                if affected.height:
                    cur.adbc_ingest("_rec", affected.to_arrow(), mode="create", temporary=True)
                    cur.execute(
                        "UPDATE registry SET isactive = EXISTS (SELECT 1 FROM source_files s "
                        "WHERE s.record_id = registry.record_id AND s.time_invalid IS NULL) "
                        "WHERE record_id IN (SELECT record_id FROM temp._rec)"
                    )

                ids = new_rows.select("srcfile", "file_id")
                changes = change_set.join(ids, on="srcfile", how="left").with_columns(
                    version=pl.lit(label),
                ).select("version", "change", "srcfile", "old_srcfile", "file_id", "old_file_id")
                if changes.height:
                    cur.adbc_ingest("changes", _arrow_stream(changes), mode="append")
                if errors.height:
                    cur.adbc_ingest(
                        "scan_errors",
                        errors.select(pl.lit(label).alias("version"), "srcfile", "kind", "message").to_arrow(),
                        mode="append",
                    )
                if touched.height:
                    cur.adbc_ingest("_touch", touched.select("file_id", "mtime_ns").to_arrow(), mode="create", temporary=True)
                    cur.execute(
                        "UPDATE source_files SET mtime_ns = t.mtime_ns FROM temp._touch t WHERE source_files.file_id = t.file_id"
                    )
                c = version.counts
                cur.execute(
                    "INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (label, version.started_at, version.finished_at, version.mode, version.site,
                     c["added"], c["removed"], c["replaced"], c["renamed"], c["unchanged"],
                     version.n_errors, version.n_files, version.total_bytes, version.run_id),
                )
                generation = self._bump_generation(cur)
                _test_pause("commit")
            con.commit()
        self.after_commit()
        return CommitResult(changes=changes, new_rows=new_rows, generation=generation)

    def _assign_records(self, cur, new_rows: pl.DataFrame, max_record_id: int) -> pl.DataFrame:
        """record_id for each new row: existing records by key, new ones appended."""
        keys = new_rows.select(record_key())
        keyed = new_rows.select("person_id", "session_id", "modality", "start_date", "start_time").with_columns(
            keys["record_key"]).filter(pl.col("record_key").is_not_null())
        if keyed.height == 0:
            return new_rows.with_columns(record_id=pl.lit(None, pl.Int64))
        # A record starts at its earliest file (ISO date and time sort as text).
        records = keyed.group_by("record_key").agg(
            pl.col("person_id").first(), pl.col("session_id").first(), pl.col("modality").first(),
            pl.concat_str(["start_date", "start_time"], separator=" ").min().alias("_start"),
        ).sort("record_key").with_columns(
            date=pl.col("_start").str.slice(0, 10), time=pl.col("_start").str.slice(11, 8),
        ).drop("_start")
        cur.adbc_ingest("_keys", records.select("record_key").to_arrow(), mode="create", temporary=True)
        cur.execute("SELECT r.record_key, r.record_id FROM temp._keys k JOIN registry r ON r.record_key = k.record_key")
        known = pl.from_arrow(cur.fetch_arrow_table())
        assert isinstance(known, pl.DataFrame)
        known = known.cast({"record_key": pl.String, "record_id": pl.Int64}) if known.height else pl.DataFrame(
            schema={"record_key": pl.String, "record_id": pl.Int64})
        fresh = records.join(known, on="record_key", how="anti").with_row_index("record_id", offset=max_record_id + 1)
        fresh = fresh.with_columns(pl.col("record_id").cast(pl.Int64), isactive=pl.lit(1, pl.Int64), uploaddir=pl.lit(None, pl.String))
        if fresh.height:
            cur.adbc_ingest(
                "registry",
                _arrow_stream(fresh.select("record_id", "record_key", "person_id", "session_id", "modality", "date", "time", "uploaddir", "isactive")),
                mode="append",
            )
        del keyed, records
        ids = pl.concat([known, fresh.select("record_key", "record_id")])
        # Only the key column is joined; the wide frame just gains a column (no copy of it).
        record_ids = keys.join(ids, on="record_key", how="left", maintain_order="left")["record_id"]
        return new_rows.with_columns(record_id=record_ids)

    @staticmethod
    def _records_of(cur, file_ids: pl.Series) -> pl.DataFrame:
        if not file_ids.len():
            return pl.DataFrame(schema={"record_id": pl.Int64})
        cur.execute("SELECT DISTINCT s.record_id FROM source_files s JOIN temp._old o ON o.file_id = s.file_id WHERE s.record_id IS NOT NULL")
        frame = pl.from_arrow(cur.fetch_arrow_table())
        assert isinstance(frame, pl.DataFrame)
        return frame.cast({"record_id": pl.Int64}) if frame.height else pl.DataFrame(schema={"record_id": pl.Int64})

    def save_state(self, state: pl.DataFrame, generation: str) -> None:
        """Cache the current rows after a write (computed by the caller, not re-read)."""
        self._write_cache(state.select(list(STATE_SCHEMA)), self._manifest_id, generation)

    def after_commit(self) -> None:
        """Keep the files beside the manifest private."""
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{self.path}{suffix}").exists():
                _restrict(f"{self.path}{suffix}")

    # ------------------------------------------------------------------ validation

    def is_validated(self, label: str) -> bool:
        if not self.path.exists():
            return False
        con = self.connect()
        try:
            return self._has_table(con, "validations") and con.execute(
                "SELECT 1 FROM validations WHERE version = ?", (label,)).fetchone() is not None
        finally:
            con.close()

    def findings(self, label: str) -> pl.DataFrame:
        con = self.connect()  # few rows: plain sqlite3, no ADBC start-up on a no-change run
        try:
            rows = con.execute(
                "SELECT severity, rule, srcfile, message FROM findings WHERE version = ? ORDER BY srcfile, rule, message",
                (label,)).fetchall() if self._has_table(con, "findings") else []
        finally:
            con.close()
        return pl.DataFrame(rows, schema=FINDINGS_SCHEMA, orient="row")

    def validation_input(self) -> pl.DataFrame:
        """The current files with the columns the rules read."""
        return self.query_frame(
            f"SELECT {', '.join(VALIDATION_SCHEMA)} FROM source_files WHERE time_invalid IS NULL", schema=VALIDATION_SCHEMA)

    def known_facts(self, wanted: pl.DataFrame) -> pl.DataFrame:
        """Cached facts for the (kind, md5) pairs in `wanted`."""
        import adbc_driver_sqlite.dbapi as adbc

        schema = {"kind": pl.String, "md5": pl.String, "facts": pl.String}
        if wanted.height == 0:
            return pl.DataFrame(schema=schema)
        with adbc.connect(str(self.path)) as con, con.cursor() as cur:
            cur.adbc_ingest("_want", wanted.select("kind", "md5").unique().to_arrow(), mode="create", temporary=True)
            cur.execute("SELECT f.kind, f.md5, f.facts FROM temp._want w JOIN file_facts f ON f.kind = w.kind AND f.md5 = w.md5")
            frame = pl.from_arrow(cur.fetch_arrow_table())
        assert isinstance(frame, pl.DataFrame)
        return frame.cast(schema) if frame.height else pl.DataFrame(schema=schema)  # type: ignore[arg-type]

    def save_validation(self, label: str, new_facts: pl.DataFrame, findings: pl.DataFrame, *, complete: bool = True) -> None:
        """One transaction: the facts read this time, and the version's findings (replacing any earlier ones).
        An incomplete check (some files could not be read) is stored but not marked as done."""
        import adbc_driver_sqlite.dbapi as adbc

        counts = dict(findings.group_by("severity").len().iter_rows()) if findings.height else {}
        with adbc.connect(str(self.path)) as con:
            with con.cursor() as cur:
                if new_facts.height:
                    cur.adbc_ingest("_facts", new_facts.select("kind", "md5", "facts").to_arrow(), mode="create", temporary=True)
                    cur.execute("INSERT OR REPLACE INTO file_facts SELECT kind, md5, facts FROM temp._facts")
                cur.execute("DELETE FROM findings WHERE version = ?", (label,))
                if findings.height:
                    cur.adbc_ingest("findings", _arrow_stream(findings.select(
                        pl.lit(label).alias("version"), "severity", "rule", "srcfile", "message")), mode="append")
                _test_pause("validate")
                cur.execute("DELETE FROM validations WHERE version = ?", (label,))
                if complete:
                    cur.execute(
                        "INSERT INTO validations VALUES (?, ?, ?, ?, ?, ?)",
                        (label, iso(utc_now()), counts.get("error", 0), counts.get("warning", 0), counts.get("info", 0),
                         new_facts.height),
                    )
            con.commit()
        self.after_commit()

    # ------------------------------------------------------------------ queries

    def versions(self) -> pl.DataFrame:
        self.require()
        return self.query_frame("SELECT * FROM versions ORDER BY label")

    def changes(self, label: str | None) -> tuple[str | None, pl.DataFrame]:
        self.require()
        if label is None:
            latest = self.latest_version()
            label = latest["label"] if latest else None
        frame = self.changes_query("c.version = ?", (label or "",))
        if label is not None and frame.height == 0 and not self._version_exists(label):
            raise ManifestError(
                f"no version {label!r} in the manifest",
                where=str(self.path),
                fix="list the versions with `chorus-batch versions`",
            )
        return label, frame

    def changes_query(self, where: str, params: tuple) -> pl.DataFrame:
        """Change-set rows with the file's md5, size, modality and person (new side, else old)."""
        return self.query_frame(
            "SELECT c.version, c.change, c.srcfile, c.old_srcfile, c.file_id, c.old_file_id, "
            "coalesce(n.md5, o.md5) AS md5, coalesce(n.size, o.size) AS size, coalesce(n.modality, o.modality) AS modality, "
            "coalesce(n.person_id, o.person_id) AS person_id "
            "FROM changes c LEFT JOIN source_files n ON n.file_id = c.file_id LEFT JOIN source_files o ON o.file_id = c.old_file_id "
            f"WHERE {where} ORDER BY c.version, c.change, c.srcfile",
            params,
            schema=CHANGES_SCHEMA,
        )

    def _version_exists(self, label: str) -> bool:
        con = self.connect()
        try:
            return con.execute("SELECT 1 FROM versions WHERE label = ?", (label,)).fetchone() is not None
        finally:
            con.close()


def _arrow_stream(frame: pl.DataFrame, constants: dict[str, str | None] | None = None, rows: int = 100_000) -> pa.RecordBatchReader:
    """Convert to Arrow slice by slice while ADBC writes, instead of all at once;
    `constants` become text columns filled per slice."""
    constants = constants or {}

    def part_table(part: pl.DataFrame) -> pa.Table:
        table = part.to_arrow()
        for name, value in constants.items():
            table = table.append_column(name, pa.array([value] * part.height, pa.string()))
        return table

    schema = part_table(frame.head(0)).schema
    batches = (batch for part in frame.iter_slices(rows) for batch in part_table(part).cast(schema).to_batches())
    return pa.RecordBatchReader.from_batches(schema, batches)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without passwd entries
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _test_pause(point: str) -> None:
    """Fault-injection point for the crash tests: with CHORUS_BATCH_TEST_PAUSE=<point>,
    announce the point on stderr and wait there to be killed."""
    if os.environ.get("CHORUS_BATCH_TEST_PAUSE") == point:
        print(f"chorus-batch: test pause at {point}", file=sys.stderr, flush=True)
        time.sleep(600)
