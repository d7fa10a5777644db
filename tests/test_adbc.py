"""The manifest's ADBC connection over the low-level driver-manager API (chorus_batch/store/adbc.py):
the DB-API subset the manifest uses, and that a run does not import pandas through it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import polars as pl
import pyarrow as pa
import pytest

from chorus_batch.errors import ManifestError
from chorus_batch.store import Manifest
from chorus_batch.store import adbc

from conftest import ROOT


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "t.sqlite")


def rows(path: str, sql: str) -> list[tuple]:
    """Read with plain sqlite3: what another connection sees."""
    with sqlite3.connect(path) as con:
        return con.execute(sql).fetchall()


def test_parameters_of_each_type_and_null_round_trip(path):
    with adbc.connect(path) as con, con.cursor() as cur:
        cur.execute("CREATE TABLE t (i INTEGER, f REAL, s TEXT, n TEXT)")
        cur.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (7, 2.5, "é x", None))
        cur.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (-(2**62), None, None, "n"))
        con.commit()
        cur.execute("SELECT i, f, s, n FROM t WHERE i = ? AND f = ? AND s = ? AND n IS ?", (7, 2.5, "é x", None))
        assert cur.fetchone() == (7, 2.5, "é x", None)
        assert cur.fetchone() is None
        cur.execute("SELECT i, f, s, n FROM t ORDER BY i")
        assert cur.fetchall() == [(-(2**62), None, None, "n"), (7, 2.5, "é x", None)]
        cur.execute("SELECT count(*) FROM t")  # no parameters
        assert cur.fetchall() == [(2,)]
    assert rows(path, "SELECT i, f, s, n FROM t ORDER BY i") == [(-(2**62), None, None, "n"), (7, 2.5, "é x", None)]


def test_fetchone_and_fetchall_cross_batches(path):
    with adbc.connect(path) as con, con.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "3"})
        cur.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 10) SELECT x FROM c")
        assert cur.fetchone() == (1,)
        assert cur.fetchall() == [(x,) for x in range(2, 11)]
        assert cur.fetchone() is None


def test_fetch_batches(path):
    with adbc.connect(path) as con, con.cursor() as cur:
        cur.execute("CREATE TABLE t (i INTEGER, s TEXT)")
        cur.execute("INSERT INTO t VALUES (1, 'a'), (2, NULL)")
        cur.execute("SELECT i, s FROM t ORDER BY i")
        schema, batches = cur.fetch_batches()
        table = pa.Table.from_batches(list(batches), schema)
        assert isinstance(table, pa.Table)
        assert table.to_pydict() == {"i": [1, 2], "s": ["a", None]}
        assert table.schema.types == [pa.int64(), pa.string()]


def test_fetch_batches_of_an_empty_result_has_its_columns_and_query_frame_its_schema(path):
    manifest = Manifest(path)
    manifest.ensure_schema()
    with adbc.connect(path) as con, con.cursor() as cur:
        cur.execute("SELECT label, n_files FROM versions WHERE label = ?", ("nope",))
        schema, batches = cur.fetch_batches()
        table = pa.Table.from_batches(list(batches), schema)
    assert isinstance(table, pa.Table)
    assert table.num_rows == 0
    assert table.column_names == ["label", "n_files"]
    # No rows to infer types from: the driver says int64; query_frame's schema gives the real ones.
    assert table.schema.types == [pa.int64(), pa.int64()]
    frame = manifest.query_frame("SELECT label, n_files FROM versions", schema={"label": pl.String, "n_files": pl.Int64})
    assert frame.height == 0 and frame.schema == pl.Schema({"label": pl.String, "n_files": pl.Int64})


def test_a_read_reserves_memory_for_its_rows_not_a_billion_and_the_process_can_fork_after_it(path):
    """Reads took the whole result as one batch of 1 << 30 rows, whose buffers the driver reserves up front: ~200 GB
    of address space, kept while the frame lived. A fork then (validation's header readers on a 1M-file run, or
    after an upgrade that reads every header again) was refused with ENOMEM on a 24 GiB machine: 'out of memory'
    after the commit. Now a read reserves a batch of QUERY_BATCH_ROWS, and the process forks after it."""
    manifest = Manifest(path)
    manifest.ensure_schema()

    def address_space() -> int:
        with open(f"/proc/{os.getpid()}/status") as status:
            return next(int(line.split()[1]) << 10 for line in status if line.startswith("VmSize:"))

    before = address_space()
    frame = manifest.validation.current_files()
    assert address_space() - before < 8 << 30, (before, address_space())
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    del frame


def _c_heap_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back (where the SQLite driver's buffers live)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def test_a_read_frame_holds_none_of_the_drivers_buffers(path, monkeypatch):
    """A frame converted from the driver's batches kept every one of them (a text column's views point into the
    driver's text buffer; one column kept its batch's every buffer), with their slack: a 1M-row read of a version's
    files held 376 MiB for a frame of 151. The frame is now a copy in polars' memory, and the batches are freed."""
    from chorus_batch.store import manifest as manifest_module

    manifest = Manifest(path)
    manifest.ensure_schema()
    rows = 120_000
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (k INTEGER, name TEXT, md5 TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?)",
                        ((i, f"{i:06d}/Waveforms/Telemetry/1000/record_{i:08d}.dat", f"{i:032x}") for i in range(rows)))
    monkeypatch.setattr(manifest_module, "QUERY_BATCH_ROWS", 16_384)  # several batches, as any large read
    manifest.query_frame("SELECT k, name, md5 FROM t LIMIT 10")  # the driver and its libraries loaded first
    before = _c_heap_in_use()
    frame = manifest.query_frame("SELECT k, name, md5 FROM t ORDER BY k")
    held = _c_heap_in_use() - before
    last = rows - 1
    assert frame.height == rows and frame["name"][last] == f"{last:06d}/Waveforms/Telemetry/1000/record_{last:08d}.dat"
    data = rows * (8 + 45 + 32)  # the result's own bytes (~10 MB)
    assert held < data // 4, f"{held:,} bytes of the C heap held after the read (the result: {data:,})"


def _manifest_with_table(path, rows: int) -> Manifest:
    """A manifest holding, beside its own tables, t(k, size, name) of `rows` rows (waveform-like names)."""
    manifest = Manifest(path)
    manifest.ensure_schema()
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (k INTEGER, size INTEGER, name TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?, ?)",
                        ((i, i * 7, f"{i:06d}/Waveforms/Telemetry/1000/record_{i:08d}.dat") for i in range(rows)))
    return manifest


def test_a_read_frame_is_its_batches_copies_not_a_copy_of_them(path, monkeypatch):
    """The copies of the driver's batches are the frame's chunks: joined into one chunk, the whole result was copied
    again while every batch's copy was still held (`files` of 1M files: the read peaked at 860 MiB, now 645 MiB)."""
    from chorus_batch.store import manifest as manifest_module

    rows = 50_000
    manifest = _manifest_with_table(path, rows)
    monkeypatch.setattr(manifest_module, "QUERY_BATCH_ROWS", 8_192)
    copies: list[pl.DataFrame] = []
    own_copy = manifest_module._own_copy

    def kept(part: pl.DataFrame) -> pl.DataFrame:
        copies.append(own_copy(part))
        return copies[-1]

    monkeypatch.setattr(manifest_module, "_own_copy", kept)
    frame = manifest.query_frame("SELECT k, size, name FROM t ORDER BY k")
    assert frame["size"].to_list() == [i * 7 for i in range(rows)] and frame["name"][-1].endswith(f"{rows - 1:08d}.dat")
    assert len(copies) == -(-rows // 8_192)

    def addresses(part: pl.DataFrame) -> list[int]:  # where each chunk's numbers are
        return [chunk.buffers()[1].address for chunk in part.to_arrow().column("size").chunks]

    assert addresses(frame) == [address for part in copies for address in addresses(part)]


def test_each_batch_is_copied_whole_as_it_comes(path, monkeypatch):
    """While a read collects its batches, each copy must hold none of the driver's batch: its numbers pointed into
    it (copied only by the final concat), so every batch stayed alive until the end of the read, and a 1M-row read
    of a version's files peaked at 796 MiB (653 MiB with the numbers copied as they come)."""
    from chorus_batch.store import manifest as manifest_module

    rows = 120_000
    manifest = _manifest_with_table(path, rows)
    manifest.query_frame("SELECT k, size, name FROM t LIMIT 10")  # the driver and its libraries loaded first
    with manifest.adbc() as con, con.cursor() as cur:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": "16384"})
        cur.execute("SELECT k, size, name FROM t ORDER BY k")
        before = _c_heap_in_use()
        _, batches = cur.fetch_batches()
        parts = [manifest_module._own_copy(pl.from_arrow(pa.Table.from_batches([batch]))) for batch in batches]
        held = _c_heap_in_use() - before
    assert sum(part.height for part in parts) == rows and len(parts) > 4
    assert pl.concat(parts)["size"].to_list() == [i * 7 for i in range(rows)]
    data = rows * (8 + 8 + 45)  # the result's own bytes (~7 MB)
    assert held < data // 4, f"{held:,} bytes of the C heap held by the copies of the batches (the result: {data:,})"


def test_a_column_null_throughout_the_first_batch_is_read_with_its_type(path, monkeypatch):
    """The driver infers a column's type from its first batch: NULL throughout it and text later was 'Type
    mismatch ... expected INT64 but got STRING'. Such a result is read again as one batch of its own size."""
    from chorus_batch.store import manifest as manifest_module

    manifest = Manifest(path)
    manifest.ensure_schema()
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE t (k INTEGER, note TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(i, None) for i in range(9)] + [(9, "late")])
    monkeypatch.setattr(manifest_module, "QUERY_BATCH_ROWS", 4)
    frame = manifest.query_frame("SELECT k, note FROM t ORDER BY k")
    assert frame["note"].to_list() == [None] * 9 + ["late"] and frame["k"].to_list() == list(range(10))
    with pytest.raises(ManifestError):  # any other failure is not read again
        manifest.query_frame("SELECT nope FROM t")


def test_ingest_create_append_replace_and_temporary(path):
    schema = pa.schema([("a", pa.int64()), ("b", pa.string())])
    with adbc.connect(path) as con, con.cursor() as cur:
        assert cur.adbc_ingest("t", pa.table({"a": [1, 2], "b": ["x", None]}, schema=schema), mode="create") == 2
        assert cur.adbc_ingest("t", pa.record_batch({"a": [3], "b": ["y"]}, schema=schema), mode="append") == 1
        reader = pa.RecordBatchReader.from_batches(schema, iter([pa.record_batch({"a": [4, 5], "b": ["z", "w"]}, schema=schema)]))
        cur.adbc_ingest("t", reader, mode="append")
        # A query, then an ingest, then the same query again on one cursor: the statement is reset each time.
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (5,)
        cur.adbc_ingest("_tmp", pa.table({"a": [1, 3]}), mode="create", temporary=True)
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone() == (5,)
        cur.execute("SELECT t.b FROM t JOIN temp._tmp USING (a) ORDER BY a")
        assert cur.fetchall() == [("x",), ("y",)]
        cur.adbc_ingest("_tmp", pa.table({"c": ["only"]}), mode="replace", temporary=True)
        cur.execute("SELECT * FROM temp._tmp")
        assert cur.fetchall() == [("only",)]
        with pytest.raises(ValueError):
            cur.adbc_ingest("t", pa.table({"a": [1]}), mode="upsert")
        con.commit()
    assert rows(path, "SELECT a, b FROM t ORDER BY a") == [(1, "x"), (2, None), (3, "y"), (4, "z"), (5, "w")]
    assert rows(path, "SELECT name FROM sqlite_master WHERE name = '_tmp'") == []  # temporary: not in the file


def test_autocommit_is_off_and_an_uncommitted_transaction_is_rolled_back_on_close(path):
    with adbc.connect(path) as con, con.cursor() as cur:
        cur.execute("CREATE TABLE t (a INTEGER)")
        cur.execute("INSERT INTO t VALUES (1)")
        con.commit()
        cur.execute("INSERT INTO t VALUES (2)")
        cur.adbc_ingest("t", pa.table({"a": [3]}), mode="append")
        assert rows(path, "SELECT a FROM t") == [(1,)]  # not visible before the commit
    assert rows(path, "SELECT a FROM t") == [(1,)]
    with adbc.connect(path) as con, con.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (4)")
        con.rollback()
        cur.execute("INSERT INTO t VALUES (5)")
        con.commit()
    assert rows(path, "SELECT a FROM t ORDER BY a") == [(1,), (5,)]


def test_an_exception_in_the_block_rolls_back(path):
    with adbc.connect(path) as con, con.cursor() as cur:
        cur.execute("CREATE TABLE t (a INTEGER)")
        con.commit()
    with pytest.raises(RuntimeError), adbc.connect(path) as con, con.cursor() as cur:
        cur.adbc_ingest("t", pa.table({"a": [1]}), mode="append")
        raise RuntimeError
    assert rows(path, "SELECT a FROM t") == []


def test_sql_errors_are_adbc_errors_and_manifest_turns_them_into_manifest_errors(path):
    with adbc.connect(path) as con, con.cursor() as cur:
        with pytest.raises(adbc.Error, match="no such table"):
            cur.execute("SELECT * FROM missing")
        cur.execute("CREATE TABLE t (a INTEGER)")
        with pytest.raises(adbc.Error, match="already exists"):
            cur.adbc_ingest("t", pa.table({"a": [1]}), mode="create")
    manifest = Manifest(path)
    with pytest.raises(ManifestError, match="no such table") as info:
        manifest.query_frame("SELECT * FROM missing")
    assert info.value.__cause__ is None
    with pytest.raises(ManifestError, match="SQLite failed on the manifest"), manifest.adbc() as con, con.cursor() as cur:
        cur.execute("INSERT INTO t VALUES (?)", ("x", "too many"))


def test_a_manifest_locked_by_another_process_is_a_manifest_error_that_says_busy(tmp_path, monkeypatch):
    path = tmp_path / "m.sqlite"
    manifest = Manifest(path)
    manifest.ensure_schema()
    # A connection waits for a lock as long as the manifest's sqlite3 connections do (30 s) ...
    with manifest.adbc() as con, con.cursor() as cur:
        cur.execute("PRAGMA busy_timeout")
        assert cur.fetchall() == [(30_000,)] == [(adbc.BUSY_TIMEOUT_MS,)]
    # ... which this test need not wait out: the lock is never let go, so a shorter wait ends as the 30 s one does.
    monkeypatch.setattr(adbc, "BUSY_TIMEOUT_MS", 600)
    # Another process: the driver's own SQLite and Python's share POSIX locks within one process.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys; con = sqlite3.connect(sys.argv[1]); con.execute('BEGIN EXCLUSIVE'); "
                               "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(ManifestError, match="busy"), manifest.adbc() as con, con.cursor() as cur:
            cur.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        assert time.monotonic() - started >= 0.5  # it waited for the lock first, not failed at once
    finally:
        holder.communicate("")


def test_opening_the_manifest_and_reading_it_does_not_import_pandas_or_pyarrow_dataset(tmp_path):
    db = tmp_path / "m.sqlite"
    code = textwrap.dedent(f"""
        import sys
        import chorus_batch.store.manifest as m
        manifest = m.Manifest({str(db)!r})
        manifest.ensure_schema()
        manifest.query_frame("SELECT * FROM versions")
        with manifest.adbc() as con, con.cursor() as cur:
            cur.adbc_ingest("_x", m._arrow_stream(m.pl.DataFrame({{"a": [1]}})), mode="create", temporary=True)
            cur.execute("SELECT a FROM temp._x WHERE a = ?", (1,))
            assert cur.fetchall() == [(1,)]
        print('pandas' in sys.modules, 'pyarrow.dataset' in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["False", "False"]
