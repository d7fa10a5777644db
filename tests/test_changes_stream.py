"""The `changes` rows of a commit are written slice by slice (issue 12): no frame of the whole change set joined
with the new rows' ids is held beside them, and the slices give what that join gave."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from chorus_batch.frames import columns_of
from chorus_batch.store import manifest as manifest_module
from chorus_batch.store.manifest import _changes_stream


def _change_set(n: int) -> pl.DataFrame:
    i = pl.int_range(0, n, eager=True)
    kind = i % 4
    return pl.DataFrame({
        "change": pl.select(pl.when(kind == 0).then(pl.lit("removed")).when(kind == 1).then(pl.lit("renamed"))
                            .otherwise(pl.lit("added")))[:, 0],
        "srcfile": i.reverse().cast(pl.String).str.zfill(7),  # not in path order
        "old_srcfile": pl.select(pl.when(kind == 1).then(pl.lit("old/") + i.cast(pl.String)))[:, 0],
        "old_file_id": pl.select(pl.when(kind <= 1).then(i))[:, 0].cast(pl.Int64),
    })


def test_the_changes_are_given_their_file_ids_a_slice_at_a_time_as_a_join_gives_them():
    change_set = _change_set(2_500)
    new_rows = (change_set.filter(pl.col("change") != "removed").select("srcfile").sort("srcfile")
                .with_row_index("file_id", offset=1_000).with_columns(pl.col("file_id").cast(pl.Int64)))
    reader = _changes_stream(change_set, new_rows, "v1", rows=1_000)
    batches = list(reader)
    assert [b.num_rows for b in batches] == [1_000, 1_000, 500]  # never the whole change set at once
    joined = change_set.join(new_rows, on="srcfile", how="left", maintain_order="left").with_columns(
        version=pl.lit("v1")).select(columns_of("changes"))
    assert pl.from_arrow(pa.Table.from_batches(batches)).equals(joined)
    assert joined.filter(pl.col("change") == "removed")["file_id"].null_count() == change_set.height // 4


def test_changes_without_new_rows_have_no_file_id():
    change_set = _change_set(10).filter(pl.col("change") == "removed")
    none = pl.DataFrame(schema={"srcfile": pl.String, "file_id": pl.Int64})
    table = _changes_stream(change_set, none, "v2").read_all()
    assert table.column("file_id").null_count == change_set.height
    assert table.column_names == list(columns_of("changes"))


def test_the_commit_writes_its_changes_in_slices(tmp_path, monkeypatch):
    """A first load of 2,500 files with 1,000-row slices: the changes go to SQLite as three batches."""
    from chorus_batch.classify import build_patterns
    from chorus_batch.commit import commit
    from chorus_batch.frames import SCANNED_SCHEMA, empty_errors
    from chorus_batch.scan import ScanResult
    from chorus_batch.store import Manifest

    monkeypatch.setattr(manifest_module, "CHANGES_SLICE_ROWS", 1_000)
    sizes: list[int] = []
    real = manifest_module._changes_stream

    def spied(*args, **kwargs):
        reader = real(*args, **kwargs)

        def batches():
            for batch in reader:
                sizes.append(batch.num_rows)
                yield batch
        return pa.RecordBatchReader.from_batches(reader.schema, batches())

    monkeypatch.setattr(manifest_module, "_changes_stream", spied)
    n = 2_500
    files = pl.DataFrame({"srcfile": [f"p{i // 100}/f{i:05d}.dat" for i in range(n)]}).with_columns(
        root_id=pl.lit(0, pl.Int64), size=pl.lit(1, pl.Int64), mtime_ns=pl.lit(1, pl.Int64),
        md5=pl.lit("0" * 32), read=pl.lit(True), verify=pl.lit(False), md5_source=pl.lit("computed"),
        etag=pl.lit(None, pl.String), read_ns=pl.lit(None, pl.Int64)).select(
        [pl.col(c).cast(t) for c, t in SCANNED_SCHEMA.items()])
    manifest = Manifest(tmp_path / "m.sqlite")
    manifest.ensure_schema()
    scanned = ScanResult(files=files, errors=empty_errors(), roots=[("/site", None)], scan_started_ns=1)
    commit(manifest, scanned, manifest.previous_state(), previous_label=None, patterns=build_patterns(None))
    assert sizes == [1_000, 1_000, 500]
    changes = manifest.query_frame("SELECT c.srcfile, c.file_id, s.srcfile AS s FROM changes c "
                                   "JOIN source_files s USING (file_id)")
    assert changes.height == n and (changes["srcfile"] == changes["s"]).all()
