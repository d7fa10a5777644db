"""A commit read partition by partition (partitions.py, as a merge of shards reads it) writes what a
commit of the whole tree writes: a property over random trees (hypothesis)."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings as hyp_settings, strategies as st

from chorus_batch.classify import build_patterns
from chorus_batch import commit as commit_module
from chorus_batch.commit import commit
from chorus_batch.frames import SCANNED_SCHEMA, STATE_SCHEMA, empty_errors
from chorus_batch.partitions import BUCKETS, TreeParts, bucket_of, bucket_range, in_range, part_of, top_bucket
from chorus_batch.scan import ScanResult, shard_of
from chorus_batch.store import Manifest
from conftest import query

# Persons spread over the buckets; renames and equal contents cross them.
PERSONS = ["000001", "000002", "000017", "000123", "004711", "P-9"]
PATHS = ["OMOP/person.csv", "Metadata/site.json", "stray.txt"] + [
    f"{p}/{kind}" for p in PERSONS for kind in ("Waveforms/S1/S1.dat", "Waveforms/S1/S1.hea",
                                                 "Images/ST1/SE1/x_CT_SE1_0001.dcm")]
CONTENTS = [b"a", b"b", b"ab", b"zz", b""]
STARTED = 1_800_000_000 * 10**9

trees = st.dictionaries(st.sampled_from(PATHS), st.tuples(st.sampled_from(CONTENTS), st.integers(0, 2)), max_size=12)


def scanned(tree: dict, based_on: str | None) -> ScanResult:
    rows = [(0, path, len(content), STARTED - 10**10 + touch, hashlib.md5(content).hexdigest(), True, False, "computed", None, None)
            for path, (content, touch) in sorted(tree.items())]
    files = pl.DataFrame(rows, schema=SCANNED_SCHEMA, orient="row")
    return ScanResult(files=files, errors=empty_errors(), roots=[("/site", None)], scan_started_ns=STARTED,
                      based_on=based_on)


def commit_tree(db: Path, tree: dict, parts: int, label: str) -> object:
    manifest = Manifest(db)
    manifest.ensure_schema()
    latest = manifest.latest_version()
    scan = scanned(tree, latest["label"] if latest else None)
    previous: pl.DataFrame | TreeParts = manifest.previous_state()
    if parts > 1:
        manifest.ensure_state_cache()
        files = scan.files.with_columns(bucket_of(scan.files["srcfile"]))
        previous = TreeParts(parts, lambda k: manifest.state_part(bucket_range(k, parts)),
                             lambda k: files.filter(in_range(*bucket_range(k, parts))).drop("bucket"))
    return commit(manifest, scan, previous, previous_label=scan.based_on, patterns=build_patterns(None),
                  version_label=label, max_delete="all")


def view(db: Path) -> dict:
    return {
        "rows": query(db, "SELECT file_id, srcfile, md5, mtime_ns, time_invalid IS NULL, version_valid, version_invalid, "
                          "modality, person_id, record_id FROM source_files ORDER BY file_id"),
        "changes": query(db, "SELECT version, change, srcfile, old_srcfile, file_id FROM changes ORDER BY 1, 2, 3"),
        "versions": query(db, "SELECT label, n_added, n_removed, n_replaced, n_renamed, n_unchanged, n_errors, n_files, "
                              "total_bytes FROM versions ORDER BY label"),
        "registry": query(db, "SELECT record_id, record_key, isactive FROM registry ORDER BY 1"),
        # the previous version's rows as the next run reads them (from the state cache when it is fresh)
        "state": Manifest(db).previous_state(write_cache=False).sort("file_id").rows(),
    }


def fresh_cache_holds_the_current_rows(db: Path) -> None:
    """A state cache that the next run would read holds exactly the manifest's current rows (one the commit did
    not need to write, e.g. of a manifest with no rows yet, may be missing)."""
    manifest = Manifest(db)
    if Path(f"{db}.state.parquet").exists() and manifest._cache_fresh(manifest._cache_identity()):
        cached = pl.read_parquet(f"{db}.state.parquet").select(list(STATE_SCHEMA)).sort("file_id")
        rows = query(db, f"SELECT {', '.join(STATE_SCHEMA)} FROM source_files WHERE time_invalid IS NULL ORDER BY file_id")
        assert cached.rows() == rows


def outcome(committed) -> tuple:
    return (committed.label, committed.counts, committed.n_files, committed.total_bytes, committed.verification,
            committed.md5_sources, committed.change_set.drop("file_id", strict=False).rows(),
            committed.by_modality.rows(), committed.errors.rows())


@hyp_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(trees, min_size=1, max_size=4), parts=st.sampled_from([2, 3, 7]),
       slice_rows=st.sampled_from([2, 131_072]))
@example(history=[{}, {"000001/Waveforms/S1/S1.dat": (b"a", 0)}, {}], parts=3, slice_rows=2)  # no rows yet, then none left
def test_a_commit_in_partitions_writes_what_a_whole_commit_writes(history, parts, slice_rows):
    """slice_rows: the whole commit writes its state cache in slices of buckets of about that many rows."""
    work = Path(tempfile.mkdtemp(prefix="chorus-partitions-"))
    kept_slice_rows, commit_module._STATE_SLICE_ROWS = commit_module._STATE_SLICE_ROWS, slice_rows
    try:
        whole, split = work / "whole.sqlite", work / "split.sqlite"
        for i, tree in enumerate(history):
            label = f"2027010100000{i}"
            assert outcome(commit_tree(split, tree, parts, label)) == outcome(commit_tree(whole, tree, 1, label))
            assert view(split) == view(whole)
            fresh_cache_holds_the_current_rows(split)
            fresh_cache_holds_the_current_rows(whole)
    finally:
        commit_module._STATE_SLICE_ROWS = kept_slice_rows
        shutil.rmtree(work, ignore_errors=True)


def test_buckets_shards_and_partitions_nest():
    paths = pl.Series([f"{k:06d}/Waveforms/a.dat" for k in range(500)] + ["OMOP/person.csv", "README.txt"])
    buckets = bucket_of(paths)
    assert buckets.dtype == pl.Int32 and buckets.min() >= 0 and buckets.max() < BUCKETS
    assert buckets.to_list()[-2:] == [0, 0]  # shared folders and root files: bucket 0, shard 0
    assert buckets[7] == top_bucket("000007")
    for shards, per_shard in ((1, 4), (3, 2), (4, 5), (7, 3)):
        count = shards * per_shard
        partition = part_of(paths, count)
        assert (partition // per_shard).to_list() == shard_of(paths, shards).to_list()  # a partition lies in a shard
        for k in range(count):
            lo, hi = bucket_range(k, count)
            assert ((buckets >= lo) & (buckets <= hi)).to_list() == (partition == k).to_list()
    # the ranges cover every bucket once
    covered = [b for k in range(7) for b in range(bucket_range(k, 7)[0], bucket_range(k, 7)[1] + 1)]
    assert covered == list(range(BUCKETS))


def test_the_state_cache_is_written_a_row_group_at_a_time_in_bucket_order(tmp_path, monkeypatch):
    """The state cache is sorted by bucket and written a row group at a time (a 1M-file site is never held
    twice for it): with row groups of 3 rows, every group's buckets follow the last one's, whole commits (at
    once, or in slices of buckets of about 4 previous rows) and partitioned ones alike, and the next run reads
    exactly the current rows."""
    import pyarrow.parquet as pq

    from chorus_batch.store import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_CACHE_ROW_GROUP", 3)
    tree = {f"{k:06d}/Waveforms/S{k}/S{k}.dat": (f"content {k}".encode(), k) for k in range(1, 12)}
    tree["OMOP/person.csv"] = (b"person_id\n", 0)
    for parts, db, slice_rows in ((1, tmp_path / "whole.sqlite", 131_072), (1, tmp_path / "sliced.sqlite", 4),
                                  (3, tmp_path / "split.sqlite", 131_072)):
        monkeypatch.setattr(commit_module, "_STATE_SLICE_ROWS", slice_rows)
        commit_tree(db, tree, parts, "20270101000000")
        changed = {**tree, "000001/Waveforms/S1/S1.dat": (b"changed", 1), "000099/Waveforms/S9/S9.dat": (b"new", 2)}
        commit_tree(db, changed, parts, "20270101000001")
        cache = pq.ParquetFile(f"{db}.state.parquet")
        assert cache.metadata.num_row_groups >= 4  # 13 rows in groups of at most 3
        buckets = pl.read_parquet(f"{db}.state.parquet")["bucket"]
        assert buckets.is_sorted()
        manifest = Manifest(db)
        assert manifest._cache_fresh(manifest._cache_identity())
        fresh_cache_holds_the_current_rows(db)
        assert manifest.previous_state().height == len(changed)
