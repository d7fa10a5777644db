"""The manifest's ADBC connection, over the driver manager's low-level API.

Why not `adbc_driver_sqlite.dbapi`: it imports `adbc_driver_manager.dbapi`, which imports
`pyarrow.dataset`, which imports pandas. `python -X importtime` put that at 0.3-0.4 s with pyarrow
and polars imported already, as in a run (0.45-0.9 s for the import alone, with pyarrow, as the
machine's load varies), against 8 ms for this module; paid by every run that opens the manifest
through ADBC, a nightly no-change run as much as a 10M-row merge, while the manifest has no use for
pandas. The low-level module (`adbc_driver_manager`, Cython) needs only pyarrow.

This is the part of DB-API the manifest uses, with the same behaviour as the dbapi module's
(whose code it follows): autocommit off, explicit `commit()` / `rollback()`, and an uncommitted
transaction rolled back when the connection closes (SQLite does that on close); `execute(sql,
params)` with positional `?` parameters (bound as a one-row Arrow batch), `fetchone` / `fetchall`
as tuples, `fetch_batches()` (the result's Arrow batches, one at a time), and `adbc_ingest()` of a
pyarrow Table, RecordBatch or RecordBatchReader. The driver's errors are `adbc_driver_manager.Error`,
also while a result is read.
Unlike the dbapi module, calls are not run under its SIGINT handler (which asks the SQLite driver to
cancel, which it cannot: the interrupt surfaced as a NOT_IMPLEMENTED error); Ctrl-C is a
KeyboardInterrupt once the call returns.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import adbc_driver_manager as _lib
import adbc_driver_sqlite
import pyarrow as pa
from adbc_driver_manager import Error
from adbc_driver_manager._reader import AdbcRecordBatchReader  # turns errors while reading into `Error`s

__all__ = ["Connection", "Cursor", "Error", "connect"]

_INGEST_MODES = ("append", "create", "replace", "create_append")
BUSY_TIMEOUT_MS = 30_000  # as sqlite3.connect(timeout=30) in Manifest.connect


def connect(uri: str) -> Connection:
    """A connection to the SQLite database at `uri` (a path), autocommit off."""
    db = adbc_driver_sqlite.connect(uri)
    conn = None
    try:
        conn = _lib.AdbcConnection(db)
        # Wait for a lock as the manifest's sqlite3 connections do (timeout=30): the driver sets no busy timeout, and a
        # reading command that met a run's commit (WAL: the moment its last connection closes and folds the -wal into
        # the manifest, or the next one opens it) failed at once, "the manifest is busy: ... database is locked"
        with _lib.AdbcStatement(conn) as stmt:
            stmt.set_sql_query(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            stmt.execute_update()
        conn.set_autocommit(False)  # writes wait for commit(), as DB-API has it
    except BaseException:
        if conn is not None:
            conn.close()
        db.close()
        raise
    return Connection(db, conn)


def _one_row(params: Sequence[Any]) -> pa.RecordBatch:
    """The parameters as a one-row batch: int64, double, string or null columns (what `pa.record_batch`
    infers, as the dbapi module binds them), built from buffers: `pa.array` of Python objects imports
    pandas (to recognise its types) and would undo what this module is for."""
    columns = []
    for value in params:
        if value is None:
            columns.append(pa.nulls(1))
        elif isinstance(value, int):  # bool too, as SQLite stores it (0 or 1)
            columns.append(pa.Array.from_buffers(pa.int64(), 1, [None, pa.py_buffer(struct.pack("=q", value))]))
        elif isinstance(value, float):
            columns.append(pa.Array.from_buffers(pa.float64(), 1, [None, pa.py_buffer(struct.pack("=d", value))]))
        elif isinstance(value, str):
            data = value.encode()
            offsets = pa.py_buffer(struct.pack("=ii", 0, len(data)))
            columns.append(pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)]))
        else:
            raise TypeError(f"cannot bind a parameter of type {type(value).__name__}: {value!r}")
    return pa.RecordBatch.from_arrays(columns, names=[str(i) for i in range(len(columns))])


class Connection:
    def __init__(self, db: _lib.AdbcDatabase, conn: _lib.AdbcConnection):
        self._db, self._conn = db, conn
        self._cursors: list[Cursor] = []
        self._written = 0  # SQLite's total_changes() as the last transaction ended

    def cursor(self) -> Cursor:
        cursor = Cursor(self._conn)
        self._cursors.append(cursor)
        return cursor

    def commit(self) -> None:
        from .manifest import touch_page_one  # (each transaction that wrote writes page 1 too: see there)

        with Cursor(self._conn) as cursor:
            if cursor.execute("SELECT total_changes()").fetchone() != (self._written,):
                touch_page_one(cursor.execute)
            self._conn.commit()
            (self._written,) = cursor.execute("SELECT total_changes()").fetchone()

    def rollback(self) -> None:
        self._conn.rollback()
        with contextlib.suppress(Exception), Cursor(self._conn) as cursor:  # (at worst: the next commit touches it)
            (self._written,) = cursor.execute("SELECT total_changes()").fetchone()

    def close(self) -> None:
        """Close the cursors, then the connection (SQLite rolls back what was not committed)."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            for cursor in self._cursors:
                cursor.close()
        finally:
            try:
                conn.close()
            finally:
                self._db.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Cursor:
    def __init__(self, conn: _lib.AdbcConnection):
        self._stmt = _lib.AdbcStatement(conn)
        self._query: str | None = None  # the SQL the statement holds (not reset for the same query)
        self._reader: AdbcRecordBatchReader | None = None  # the open result
        self._rows: list[tuple] = []  # the rows of the current batch not fetched yet (reversed)
        self.rowcount = -1

    @property
    def adbc_statement(self) -> _lib.AdbcStatement:
        """The low-level statement (for driver options, e.g. adbc.sqlite.query.batch_rows)."""
        return self._stmt

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> Cursor:
        """Run `sql`; `params` fill its `?` in order (int, float, str or None)."""
        self._clear()
        if sql != self._query:
            self._stmt.set_sql_query(sql)
            self._query = sql
        if params:
            self._stmt.bind(_one_row(params))
        handle, self.rowcount = self._stmt.execute_query()
        self._reader = AdbcRecordBatchReader._import_from_c(handle.address)
        return self

    def fetchone(self) -> tuple | None:
        while not self._rows:
            if self._reader is None:
                return None
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                return None
            self._rows = list(zip(*(column.to_pylist() for column in batch.columns)))[::-1]
        return self._rows.pop()

    def fetchall(self) -> list[tuple]:
        rows = []
        while (row := self.fetchone()) is not None:
            rows.append(row)
        return rows

    def fetch_batches(self) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        """The rest of the result batch by batch (each let go once the caller drops it), and its schema."""
        if self._reader is None:
            raise _lib.ProgrammingError("fetch_batches() without a result: call execute() first",
                                        status_code=_lib.AdbcStatusCode.INVALID_STATE)
        return self._reader.schema, iter(self._reader)

    def adbc_ingest(self, table_name: str, data: pa.Table | pa.RecordBatch | pa.RecordBatchReader,
                    mode: str = "create", *, temporary: bool = False) -> int:
        """Write Arrow data into `table_name`: 'append' to it, 'create' it, 'replace' (drop and create) it,
        or 'create_append'; `temporary` for a table in `temp` (gone when the connection closes).
        Returns the rows written (or -1)."""
        if mode not in _INGEST_MODES:
            raise ValueError(f"Invalid value for 'mode': {mode}")
        self._clear()
        self._query = None  # the statement now holds an ingest, not the last query
        self._stmt.set_options(**{
            _lib.INGEST_OPTION_TARGET_TABLE: table_name,
            _lib.INGEST_OPTION_MODE: f"adbc.ingest.mode.{mode}",
            _lib.StatementOptions.INGEST_TEMPORARY.value: "true" if temporary else "false",
        })
        if hasattr(data, "__arrow_c_array__"):  # a RecordBatch
            self._stmt.bind(data)
        else:  # a Table or RecordBatchReader
            self._stmt.bind_stream(data)
        return self._stmt.execute_update()

    def _clear(self) -> None:
        """Release the current result (SQLite's statement stays open until it is)."""
        self._rows = []
        if self._reader is not None:
            reader, self._reader = self._reader, None
            reader.close()

    def close(self) -> None:
        if self._stmt is None:
            return
        try:
            self._clear()
        finally:
            stmt, self._stmt = self._stmt, None
            stmt.close()

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
