"""What a commit writes, and how: a first version's bulk load (Manifest.commit_version into a manifest with no file
yet), its indexes built once after its rows are in, the manifest it leaves the same as one written row by row; a
no-change run's refresh of rows (refresh_rows), its state cache written while SQLite commits."""

from __future__ import annotations

import sqlite3
import threading

import polars as pl

from chorus_batch.frames import schema_of
from chorus_batch.store import Manifest, VersionRecord
from chorus_batch.store import adbc as adbc_module
from chorus_batch.store.manifest import NEW_ROW_COLUMNS
from chorus_batch.store.schema import INDEXES, SOURCE_FILES_INDEXES, index_name

N = 10_050  # past the 10,000 rows from which a first load is a bulk load


def _rows(n: int, start: int = 0) -> pl.DataFrame:
    columns = [c for c in NEW_ROW_COLUMNS if c not in ("file_id", "record_id")]
    i = pl.int_range(start, start + n, dtype=pl.Int64, eager=True)
    frame = pl.DataFrame({"i": i}).select(
        person_id=pl.format("P{}", pl.col("i") // 10), srcfile=pl.format("P{}/Waveforms/S1/f{}.dat", pl.col("i") // 10, pl.col("i")),
        modality=pl.lit("Waveforms"), size=pl.col("i"), mtime_ns=pl.col("i"),
        md5=pl.format("{}", pl.col("i")).str.pad_start(32, "0"), session_id=pl.lit("S1"), start_date=pl.lit("2024-01-02"),
        start_time=pl.lit("03:04:05"), duration_s=pl.lit(None, pl.Float64), segment=pl.lit(None, pl.String),
        parse_error=pl.lit(None, pl.String), root_id=pl.lit(0, pl.Int64), category=pl.lit(None, pl.String),
        layout=pl.lit(None, pl.String), verified_ns=pl.col("i"), md5_source=pl.lit("computed"), etag=pl.lit(None, pl.String))
    return frame.cast(schema_of("source_files", columns)).with_columns(change=pl.lit("added"))


def _commit(manifest: Manifest, label: str, rows: pl.DataFrame) -> None:
    record = VersionRecord(label=label, started_at=f"2026-01-0{label[-1]}T00:00:00Z", finished_at=f"2026-01-0{label[-1]}T00:00:01Z",
                           mode="append", site="s", counts=dict(added=rows.height, removed=0, replaced=0, renamed=0, unchanged=0),
                           n_errors=0, n_files=rows.height, total_bytes=0, run_id=None)
    manifest.commit_version(
        record, new_rows=rows, change_set=rows.select("change", "srcfile", old_srcfile=pl.lit(None, pl.String),
                                                      old_file_id=pl.lit(None, pl.Int64)),
        invalidated_ids=pl.Series("file_id", [], pl.Int64),
        touched=pl.DataFrame(schema={"file_id": pl.Int64, "mtime_ns": pl.Int64, "root_id": pl.Int64, "verified_ns": pl.Int64,
                                     "etag": pl.String, "md5": pl.String, "md5_source": pl.String}),
        errors=pl.DataFrame(schema={"srcfile": pl.String, "kind": pl.String, "message": pl.String}), roots=[("/site", None)])


def _statements(monkeypatch) -> list[str]:
    """What each ADBC cursor runs from now on, in order: SQL, and 'ingest <table>'."""
    said: list[str] = []
    execute, ingest = adbc_module.Cursor.execute, adbc_module.Cursor.adbc_ingest

    def execute_said(self, sql, params=None):
        said.append(sql)
        return execute(self, sql, params)

    def ingest_said(self, table, data, mode="create", *, temporary=False):
        said.append(f"ingest {table}")
        return ingest(self, table, data, mode, temporary=temporary)

    monkeypatch.setattr(adbc_module.Cursor, "execute", execute_said)
    monkeypatch.setattr(adbc_module.Cursor, "adbc_ingest", ingest_said)
    return said


def test_a_first_load_builds_its_indexes_after_its_rows_and_changes(db, monkeypatch):
    manifest = Manifest(db)
    manifest.ensure_schema()
    said = _statements(monkeypatch)
    _commit(manifest, "v1", _rows(N))
    late = [*SOURCE_FILES_INDEXES, next(ddl for ddl in INDEXES if index_name(ddl) == "changes_version")]
    built = [said.index(ddl) for ddl in late]
    # each dropped first, and built once every row of the version is in (source_files', and changes')
    assert all(said.index(f"DROP INDEX IF EXISTS {index_name(ddl)}") < said.index("ingest source_files") for ddl in late)
    assert min(built) > max(said.index("ingest source_files"), said.index("ingest changes"), said.index("ingest registry"))
    assert "ingest _keys" not in said  # (no record is known yet: none is looked up)

    with sqlite3.connect(db) as con:  # the manifest as a new one is: every index of the schema, its rows whole
        have = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        assert have == {index_name(ddl) for ddl in (*INDEXES, *SOURCE_FILES_INDEXES)}
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*), count(DISTINCT record_id) FROM source_files").fetchone() == (N, N // 10)
        assert con.execute("SELECT count(*) FROM changes WHERE version = 'v1'").fetchone() == (N,)
        assert con.execute("SELECT count(*) FROM registry WHERE isactive = 1").fetchone() == (N // 10,)


def test_a_load_after_the_first_keeps_the_indexes_and_finds_its_records(db, monkeypatch):
    manifest = Manifest(db)
    manifest.ensure_schema()
    _commit(manifest, "v1", _rows(N))
    said = _statements(monkeypatch)
    _commit(manifest, "v2", _rows(20, start=N).with_columns(person_id=pl.lit("P0")))  # (P0's record gains files)
    assert not [sql for sql in said if sql.startswith(("DROP INDEX", "CREATE"))]
    assert "ingest _keys" in said  # the records already known are looked up
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*) FROM changes").fetchone() == (N + 20,)
        assert con.execute("SELECT count(*) FROM registry").fetchone() == (N // 10,)
        assert con.execute("SELECT count(*) FROM source_files s JOIN registry r USING (record_id) "
                           "WHERE r.person_id = 'P0'").fetchone() == (30,)


def _touched(file_ids: list[int], verified_ns: int) -> pl.DataFrame:
    return pl.DataFrame({"file_id": file_ids}, schema={"file_id": pl.Int64}).with_columns(
        mtime_ns=pl.col("file_id"), root_id=pl.lit(0, pl.Int64), verified_ns=pl.lit(verified_ns, pl.Int64),
        etag=pl.lit(None, pl.String), md5=pl.lit(None, pl.String), md5_source=pl.lit(None, pl.String))


def test_refresh_rows_runs_its_on_commit_beside_the_commit_and_raises_its_error_after(db):
    manifest = Manifest(db)
    manifest.ensure_schema()
    _commit(manifest, "v1", _rows(30))
    seen = []

    def on_commit(written):
        seen.append((threading.current_thread() is not threading.main_thread(), written.generation, written.root_ids))

    generation, root_ids = manifest.refresh_rows(_touched([1, 2], 77), [("/site", None)], on_commit=on_commit)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'state_generation'").fetchone() == (generation,)
        assert con.execute("SELECT count(*) FROM source_files WHERE verified_ns = 77").fetchone() == (2,)
    assert seen == [(True, generation, root_ids)]

    def broken(written):
        raise RuntimeError("cache writer broke")

    try:
        manifest.refresh_rows(_touched([3], 78), [("/site", None)], on_commit=broken)
    except RuntimeError as exc:
        assert "cache writer broke" in str(exc)
    else:
        raise AssertionError("the error of on_commit was not raised")
    with sqlite3.connect(db) as con:  # (committed all the same: the cache is only a cache)
        assert con.execute("SELECT count(*) FROM source_files WHERE verified_ns = 78").fetchone() == (1,)


def test_a_state_cache_written_from_rows_in_bucket_order_is_the_one_written_from_rows_out_of_it(db, tmp_path):
    from chorus_batch.frames import STATE_SCHEMA
    from chorus_batch.partitions import BUCKET, with_bucket

    manifest = Manifest(db)
    manifest.ensure_schema()
    _commit(manifest, "v1", _rows(3000))
    state = with_bucket(manifest.query_frame(f"SELECT {', '.join(STATE_SCHEMA)} FROM source_files").cast(STATE_SCHEMA))
    in_order = state.sample(fraction=1.0, shuffle=True, seed=1).sort(BUCKET, maintain_order=True)
    assert in_order[BUCKET].n_unique() > 100
    for rows in (in_order, in_order.reverse()):
        manifest.save_state(rows, "1-x")
        read = pl.read_parquet(manifest.cache_path)
        assert read[BUCKET].is_sorted() and read.sort("file_id").equals(in_order.sort("file_id"))
        if rows is in_order:  # (taken as it is: the rows' own order within a bucket kept)
            assert read.equals(in_order)
