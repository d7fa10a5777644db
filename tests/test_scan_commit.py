"""Scan and commit apart: a ScanResult as Parquet, shards and their merge, the version a scan
is based on, and MD5s held by the storage (stored_md5)."""

from __future__ import annotations

import hashlib
import random
import threading
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from chorus_batch.classify import build_patterns
from chorus_batch.commit import commit
from chorus_batch.errors import UsageError
from chorus_batch.frames import LISTING_SCHEMA
from chorus_batch.frames import empty_state
from chorus_batch.partitions import bucket_range, part_of
from chorus_batch.scan import Coverage, Root, ScanResult, merge_scans, scan, shard_of
from chorus_batch.sources import FsspecSource, LocalSource
from chorus_batch.store import Manifest
from chorus_batch.testdata import Spec, write_snapshot

from conftest import current_rows, query, scan_and_commit, tree_md5, write

SPEC = Spec(persons=12, files_per_person=6, size=32, seed=1)


def state(db: Path) -> tuple[Manifest, pl.DataFrame, str | None]:
    manifest = Manifest(db)
    manifest.ensure_schema()
    latest = manifest.latest_version()
    return manifest, manifest.previous_state(), latest["label"] if latest else None


def commit_scan(db: Path, scanned: ScanResult):
    manifest, previous, label = state(db)
    return commit(manifest, scanned, previous, previous_label=label, patterns=build_patterns(None))


def scan_site(db: Path, roots: list[Root], **kwargs) -> ScanResult:
    _manifest, previous, label = state(db)
    return scan(roots, previous, based_on=label, workers=1, **kwargs)


@pytest.fixture
def snapshot_site(site: Path) -> Path:
    write_snapshot(site, SPEC)
    return site


# ----------------------------------------------------------------------------- ScanResult as Parquet


def test_a_scan_result_round_trips_through_parquet(snapshot_site, db, tmp_path):
    (snapshot_site / "link.dat").symlink_to(snapshot_site / "OMOP" / "person.csv")  # one listing error
    scan_and_commit(db, [Root(LocalSource(snapshot_site))])
    write(snapshot_site, "OMOP/new_table.csv", b"new")  # in shard 0, with the other shared files
    scanned = scan_site(db, [Root(LocalSource(snapshot_site))], coverage=Coverage(0, 3))
    assert scanned.errors.height >= 1 and scanned.based_on is not None and scanned.n_hashed >= 1

    back = ScanResult.read(scanned.write(tmp_path / "scan"))
    # the same files (written in bucket order, so that a merge reads a partition's rows alone)
    assert back.files.sort("srcfile").equals(scanned.files.sort("srcfile")) and back.files.schema == scanned.files.schema
    files = ScanResult.read(tmp_path / "scan", files=False)
    assert files.files.height == 0 and files.errors.equals(scanned.errors)
    halves = [ScanResult.read_files(tmp_path / "scan", bucket_range(k, 2)) for k in (0, 1)]
    assert pl.concat(halves).sort("srcfile").equals(back.files.sort("srcfile"))
    assert set(halves[0]["srcfile"]) == set(back.files.filter(part_of(back.files["srcfile"], 2) == 0)["srcfile"])
    assert back.errors.equals(scanned.errors) and back.errors.schema == scanned.errors.schema
    assert back.roots == scanned.roots
    assert back.coverage == Coverage(0, 3)
    assert back.based_on == scanned.based_on
    assert (back.scan_started_ns, back.n_hashed, back.bytes_hashed, back.hash_s) == (
        scanned.scan_started_ns, scanned.n_hashed, scanned.bytes_hashed, scanned.hash_s)


def test_a_scan_result_without_its_completion_record_is_refused(site, tmp_path):
    write(site, "OMOP/person.csv", b"p")
    folder = scan([Root(LocalSource(site))], empty_state(), based_on=None).write(tmp_path / "scan")
    (folder / "scan.json").unlink()
    with pytest.raises(UsageError, match="not a complete scan result"):
        ScanResult.read(folder)
    with pytest.raises(UsageError):
        ScanResult.read(tmp_path / "never_written")


def test_a_scan_result_with_fewer_files_than_its_record_is_refused(site, tmp_path):
    write(site, "OMOP/person.csv", b"p")
    write(site, "OMOP/visit_occurrence.csv", b"v")
    folder = scan([Root(LocalSource(site))], empty_state(), based_on=None).write(tmp_path / "scan")
    pl.read_parquet(folder / "files.parquet").head(1).write_parquet(folder / "files.parquet")
    with pytest.raises(UsageError, match="damaged"):
        ScanResult.read(folder)


@pytest.mark.parametrize("field, value", [("linked", "3"), ("facts", "yes"), ("n_files", "1"), ("host", 7),
                                          ("follow_symlinks", "true"), ("empty_roots", ["0"]), ("arguments", "run")])
def test_a_scan_record_field_of_another_type_is_told_as_such_not_read_as_absent(site, tmp_path, field, value):
    """A scan.json edited or damaged so that a field holds another type ("linked": "3", "facts": "yes") was read as if
    the field were absent (a record of an earlier release): the shard's linked paths dropped, its facts ignored, its
    host unknown; "n_files": "1" was "damaged: 1 files, its record says 1". It is named, with its value."""
    import json

    write(site, "OMOP/person.csv", b"p")
    folder = scan([Root(LocalSource(site))], empty_state(), based_on=None).write(tmp_path / "scan")
    record = json.loads((folder / "scan.json").read_text("utf-8"))
    (folder / "scan.json").write_text(json.dumps({**record, field: value}), "utf-8")
    with pytest.raises(UsageError) as raised:
        ScanResult.read(folder)
    said = str(raised.value)
    assert "does not hold what it should" in said and f"{field} is {value!r}" in said, said
    (folder / "scan.json").write_text(json.dumps({**record, field: None}), "utf-8")  # absent: an earlier release's
    if field != "n_files":
        ScanResult.read(folder)


# ----------------------------------------------------------------------------- shard_of


def test_shared_folders_and_root_files_are_in_shard_zero():
    paths = pl.Series(["OMOP/person.csv", "omop/x.csv", "Metadata/site_description.json", "metadata/a/b.json",
                       "README.txt", "chorus.toml"])
    for shards in (1, 2, 3, 7):
        assert shard_of(paths, shards).to_list() == [0] * paths.len()


def test_a_person_folder_stays_in_one_shard_and_shards_are_stable():
    persons = [f"{k:06d}" for k in range(60)]
    paths = [f"{p}/{sub}" for p in persons for sub in ("Waveforms/a.dat", "Waveforms/s/b.dat", "Images/ST/SE/c.dcm", "x")]
    series = pl.Series(paths)
    shards = shard_of(series, 3)
    assert shards.len() == len(paths)
    assert shards.dtype.is_integer() and set(shards.to_list()) == {0, 1, 2}  # 60 persons reach every shard
    by_person: dict[str, set[int]] = {}
    for path, shard in zip(paths, shards.to_list(), strict=True):
        by_person.setdefault(path.split("/")[0], set()).add(shard)
    assert all(len(s) == 1 for s in by_person.values())
    assert shard_of(series, 3).to_list() == shards.to_list()  # the same twice
    mapping = dict(zip(paths, shards.to_list(), strict=True))
    shuffled = paths[:]
    random.Random(3).shuffle(shuffled)
    assert dict(zip(shuffled, shard_of(pl.Series(shuffled), 3).to_list(), strict=True)) == mapping  # not by row order
    assert dict(zip(paths[:7], shard_of(pl.Series(paths[:7]), 3).to_list(), strict=True)) == {
        p: mapping[p] for p in paths[:7]}  # nor by which other paths are present


# ----------------------------------------------------------------------------- shards, merge, commit


@pytest.fixture
def shards(snapshot_site, db) -> list[ScanResult]:
    return [scan_site(db, [Root(LocalSource(snapshot_site))], coverage=Coverage(k, 3)) for k in range(3)]


def test_shards_partition_the_whole_site(snapshot_site, db, shards):
    whole = scan_site(db, [Root(LocalSource(snapshot_site))])
    sets = [set(s.files["srcfile"]) for s in shards]
    assert all(sets)  # 12 persons reach all three shards
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set().union(*sets) == set(whole.files["srcfile"]) == set(tree_md5(snapshot_site))
    shared = {p for p in whole.files["srcfile"] if "/" not in p or p.split("/")[0] in ("OMOP", "Metadata")}
    assert shared and shared <= sets[0]
    md5s = {r["srcfile"]: r["md5"] for s in shards for r in s.files.iter_rows(named=True)}
    assert md5s == tree_md5(snapshot_site)


def test_one_shard_alone_is_refused_in_full_mode(db, shards):
    with pytest.raises(UsageError, match="shard"):
        commit_scan(db, shards[1])
    assert Manifest(db).latest_version() is None
    assert current_rows(db) == {}


def test_merged_shards_commit_the_same_manifest_as_a_whole_site_run(snapshot_site, db, tmp_path, shards):
    merged = merge_scans([ScanResult.read(s.write(tmp_path / f"shard{k}")) for k, s in enumerate(shards)])
    assert merged.coverage.whole
    done = commit_scan(db, merged)
    assert done.label is not None
    assert current_rows(db) == tree_md5(snapshot_site)

    whole_db = tmp_path / "whole.sqlite"
    whole = scan_and_commit(whole_db, [Root(LocalSource(snapshot_site))])
    assert current_rows(db) == current_rows(whole_db)
    assert done.counts == whole.counts and done.n_files == whole.n_files and done.total_bytes == whole.total_bytes


def test_merge_refuses_a_missing_shard(shards):
    with pytest.raises(UsageError, match="missing 1"):
        merge_scans([shards[0], shards[2]])
    with pytest.raises(UsageError, match="no scan results"):
        merge_scans([])


def test_merge_refuses_a_duplicate_shard(shards):
    with pytest.raises(UsageError, match=r"once each, got \[0, 1, 1, 2\]"):
        merge_scans([shards[0], shards[1], shards[1], shards[2]])
    with pytest.raises(UsageError, match=r"once each, got \[0, 1, 1\].*missing 2"):
        merge_scans([shards[0], shards[1], shards[1]])


def test_merge_refuses_shards_of_another_split(snapshot_site, db, shards):
    other = scan_site(db, [Root(LocalSource(snapshot_site))], coverage=Coverage(1, 2))
    with pytest.raises(UsageError, match="do not cover the site"):
        merge_scans([shards[0], other, shards[2]])


def test_merge_refuses_shards_based_on_different_versions(snapshot_site, db, shards):
    scan_and_commit(db, [Root(LocalSource(snapshot_site))])
    newer = [scan_site(db, [Root(LocalSource(snapshot_site))], coverage=Coverage(k, 3)) for k in (1, 2)]
    assert newer[0].based_on is not None and shards[0].based_on is None
    with pytest.raises(UsageError, match=r"shards \[1, 2\] are based on another version"):
        merge_scans([shards[0], *newer])


def test_merge_refuses_shards_of_different_roots(snapshot_site, tmp_path, db, shards):
    elsewhere = tmp_path / "copy"
    write_snapshot(elsewhere, SPEC)
    other = scan_site(db, [Root(LocalSource(elsewhere))], coverage=Coverage(1, 3))
    with pytest.raises(UsageError, match="different roots"):
        merge_scans([shards[0], other, shards[2]])


# ----------------------------------------------------------------------------- based on


def test_a_scan_based_on_an_older_version_is_refused(site, db):
    write(site, "OMOP/person.csv", b"v1")
    first = scan_and_commit(db, [Root(LocalSource(site))]).label
    stale = scan_site(db, [Root(LocalSource(site))])  # based on `first`
    write(site, "OMOP/visit_occurrence.csv", b"v2")
    second = scan_and_commit(db, [Root(LocalSource(site))]).label
    assert stale.based_on == first and second is not None and second != first

    with pytest.raises(UsageError, match=f"version {first}.*latest version is {second}"):
        commit_scan(db, stale)
    assert Manifest(db).latest_version()["label"] == second
    assert set(current_rows(db)) == {"OMOP/person.csv", "OMOP/visit_occurrence.csv"}
    unbased = scan([Root(LocalSource(site))], empty_state(), based_on=None)
    with pytest.raises(UsageError, match=r"\(none\)"):
        commit_scan(db, unbased)


def test_a_stale_scan_given_its_own_based_on_as_previous_label_is_refused(site, db):
    # A script that scans on one machine and commits later passes the scan's based_on (or the `latest` it kept):
    # checked against the manifest, not taken on the caller's word, else the versions since were undone.
    write(site, "OMOP/person.csv", b"v1")
    first = scan_and_commit(db, [Root(LocalSource(site))]).label
    stale = scan_site(db, [Root(LocalSource(site))])
    write(site, "OMOP/person.csv", b"v2")
    second = scan_and_commit(db, [Root(LocalSource(site))]).label
    manifest = Manifest(db)
    with pytest.raises(UsageError, match=f"previous_label is {first}, but the latest version of .* is {second}"):
        commit(manifest, stale, manifest.previous_state(), previous_label=stale.based_on, patterns=build_patterns(None))
    assert [v for v in manifest.versions()["label"]] == [first, second]
    assert current_rows(db)["OMOP/person.csv"] == hashlib.md5(b"v2").hexdigest()


# ----------------------------------------------------------------------------- stored MD5s


class StoredMd5Source(FsspecSource):
    """memory:// whose listing carries an MD5 the storage holds (as Azure's Content-MD5),
    counting what the pipeline reads."""

    server_md5 = True

    def __init__(self, url: str, held: dict[str, str]):
        super().__init__(url)
        self.held = held  # srcfile -> the MD5 the "storage" reports
        self.reads = {"hash_file": 0, "open": 0}
        self._lock = threading.Lock()

    def list_files(self, errors):
        for batch in super().list_files(errors):
            held = [self.held.get(p) for p in batch.column("srcfile").to_pylist()]
            yield batch.set_column(3, "stored_md5", pa.array(held, LISTING_SCHEMA.field("stored_md5").type))

    def _count(self, what: str) -> None:
        with self._lock:
            self.reads[what] += 1

    def hash_file(self, srcfile, buffer):
        self._count("hash_file")
        return super().hash_file(srcfile, buffer)

    def open(self, srcfile):
        self._count("open")
        return super().open(srcfile)


MEMORY_TREE = {
    "OMOP/person.csv": b"person_id\n1\n",
    "Metadata/site_description.json": b"{}",
    "000001/Waveforms/000001_20200101_101010_60.dat": b"wave",
    "000002/Waveforms/000002_20200101_101010_60.dat": b"another wave",
}


@pytest.fixture
def memory_site():
    import fsspec

    fs = fsspec.filesystem("memory")
    base = f"/chorus-scan-{uuid.uuid4().hex}"
    fs.pipe({f"{base}/site/{rel}": data for rel, data in MEMORY_TREE.items()})
    yield f"memory:/{base}/site"
    fs.rm(base, recursive=True)


def real_md5s() -> dict[str, str]:
    return {rel: hashlib.md5(data).hexdigest() for rel, data in MEMORY_TREE.items()}


def test_stored_md5s_are_committed_without_reading_the_files(memory_site, db):
    src = StoredMd5Source(memory_site, real_md5s())
    done = scan_and_commit(db, [Root(src)])
    assert done.counts["added"] == len(MEMORY_TREE)
    assert current_rows(db) == real_md5s()
    assert src.reads == {"hash_file": 0, "open": 0}


def test_the_storage_is_trusted_and_rehash_reads_the_files(memory_site, db):
    held = real_md5s()
    held["OMOP/person.csv"] = "f" * 32  # not the content's MD5: what the storage says is recorded
    src = StoredMd5Source(memory_site, held)
    scan_and_commit(db, [Root(src)])
    assert current_rows(db) == held
    assert src.reads == {"hash_file": 0, "open": 0}

    again = scan_site(db, [Root(src)])  # nothing changed: nothing read, the recorded MD5s reused
    assert src.reads["hash_file"] == 0 and again.n_hashed == 0

    rehashed = scan_site(db, [Root(src)], rehash=True)
    assert src.reads["hash_file"] == len(MEMORY_TREE) and rehashed.n_hashed == len(MEMORY_TREE)
    done = commit_scan(db, rehashed)
    assert done.counts["replaced"] == 1
    assert current_rows(db) == real_md5s()


def test_a_file_the_storage_holds_no_md5_for_is_read(memory_site, db):
    held = real_md5s()
    del held["000002/Waveforms/000002_20200101_101010_60.dat"]
    src = StoredMd5Source(memory_site, held)
    scan_and_commit(db, [Root(src)])
    assert current_rows(db) == real_md5s()
    assert src.reads["hash_file"] == 1


def test_a_commit_that_lets_go_of_the_scan_writes_what_one_that_keeps_it_writes(tmp_path):
    """`keep_scan=False` (a run's commit): the scan's files are emptied once compared with the previous
    version, and the versions committed are the same."""
    trees = {"first": tmp_path / "first", "second": tmp_path / "second"}
    write_snapshot(trees["first"], SPEC)
    write_snapshot(trees["second"], SPEC, second=True)
    outcomes = []
    for keep_scan in (True, False):
        db = tmp_path / f"keep-{keep_scan}.sqlite"
        for i, tree in enumerate(trees.values()):
            manifest, previous, label = state(db)
            scanned = scan([Root(LocalSource(tree))], previous, based_on=label, workers=1)
            committed = commit(manifest, scanned, previous, previous_label=label, patterns=build_patterns(None),
                               version_label=f"2027010100000{i}", keep_scan=keep_scan)
            assert (scanned.files.height == 0) is not keep_scan
        outcomes.append((committed.counts, committed.change_set.rows(), current_rows(db)))
    assert outcomes[0] == outcomes[1] and outcomes[0][0]["replaced"]


@pytest.mark.parametrize("hand_label", ["v6", "release-2026.1", "batch-20250101000000", "v6-1-1", "v" + "x" * 48])
def test_default_labels_after_a_hand_label_stay_short_and_increasing(hand_label):
    """After `--version v6`, nightly runs with the default label got v6-1, v6-1-1, v6-1-1-1…: two characters
    longer every run, past the 64 a label may have (its folder at the central container) within a month."""
    from datetime import datetime, timedelta, timezone

    from chorus_batch.commit import _LABEL_RE, next_label

    latest, started = hand_label, datetime(2026, 12, 4, 20, 0, 0, tzinfo=timezone.utc)
    for night in range(100):
        # a clock that stands still (two runs in one second) as well as one that moves on
        label = next_label(started + timedelta(days=night // 2), latest, None)
        assert label > latest and _LABEL_RE.match(label), (night, latest, label)
        assert len(label) <= len(hand_label) + 15
        latest = label


def test_a_record_starts_at_its_earliest_file_also_one_a_later_version_adds(tmp_path):
    """A record (a session) starts at its earliest file; a later version that adds an earlier part of the recording
    left the start the record was created with. It now moves earlier, never later."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    session = "000001/Waveforms/S1/000001_20230101_{}_3600.h5"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, session.format("101530"), b"a")

    def start() -> tuple:
        return query(db, "SELECT date, time FROM registry WHERE record_key = 'Waveforms|000001|S1'")[0]

    scan_and_commit(db, [Root(LocalSource(site))])
    assert start() == ("2023-01-01", "10:15:30")
    write(site, session.format("081530"), b"b")
    scan_and_commit(db, [Root(LocalSource(site))])
    assert start() == ("2023-01-01", "08:15:30")
    write(site, session.format("121530"), b"c")
    scan_and_commit(db, [Root(LocalSource(site))])
    assert start() == ("2023-01-01", "08:15:30")


def test_versions_whose_commit_times_were_edited_are_not_found_by_a_time(site, db):
    """A versions table edited by hand (v2's finished_at moved past v3's: the two versions' times overlap) was read as
    true: `files --as-of` a time after v3's commit named v1, which neither version's run had left current then, and
    `versions` listed it without a word. The version's time is checked against the run that committed it (one clock):
    a time is refused, naming the version and what to do; labels still answer; `versions` says so."""
    import sqlite3

    from conftest import cli

    for label in ("v1", "v2", "v3"):
        write(site, f"OMOP/{label}.csv", label.encode())
        assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--version", label).returncode == 0
    (v3_at,) = query(db, "SELECT finished_at FROM versions WHERE label = 'v3'")[0]
    assert cli("files", "--db", str(db), "--as-of", v3_at).stdout.startswith("version v3")  # (untouched: found)
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE versions SET finished_at = '2999-01-01T00:00:00Z' WHERE label = 'v2'")
    con.close()
    out = cli("files", "--db", str(db), "--as-of", v3_at)
    assert out.returncode == 2 and "version" not in out.stdout, out.stdout
    assert "commit times of the manifest's versions were edited" in out.stderr and "v2 records 2999" in out.stderr
    assert "give a version label" in out.stderr and "Traceback" not in out.stderr
    assert cli("files", "--db", str(db), "--as-of", "v3").stdout.startswith("version v3")
    listed = cli("versions", "--db", str(db))
    assert listed.returncode == 0 and "v2 records 2999" in listed.stderr, listed.stderr
    # the latest version's time edited: the next run does not blame this machine's clock for it
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE versions SET finished_at = '2999-01-01T00:00:00Z' WHERE label = 'v3'")
    con.close()
    write(site, "OMOP/v4.csv", b"v4")
    ran = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v4")
    assert ran.returncode == 0, ran.stderr
    assert "version v3 was edited by hand (v3 records 2999" in ran.stderr and "clock (" not in ran.stderr, ran.stderr


def test_files_moved_from_the_site_root_to_a_named_root_are_said_moved_in_place(tmp_path):
    """A site that moves its Waveforms tree from --site to a [site.roots] root: the files' rows were given the new
    root in place, as of every earlier version too, and the run said only "no changes since version v1". It says now
    which files were found under which root, that their rows name it in place for the earlier versions too, and that
    the old root stays recorded."""
    from conftest import cli

    site, wave, db = tmp_path / "site", tmp_path / "wave", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/EEG/s1/s1_a.edf", b"w")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v1").returncode == 0
    wave.mkdir()
    (site / "000001").rename(wave / "000001")
    config = tmp_path / "chorus.toml"
    config.write_text(f'[site]\nroot = "{site}"\n[site.roots]\nWaveforms = "{wave}"\n')
    out = cli("run", "--no-validate", "--db", str(db), "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"1 file recorded under {site} is now found under {wave} (the Waveforms root), unchanged" in out.stderr
    assert "the earlier ones too" in out.stderr and "no changes since version v1" in out.stdout
    assert query(db, "SELECT location FROM roots ORDER BY root_id") == [(str(site),), (str(wave),)]
    quiet = cli("run", "--no-validate", "--db", str(db), "--config", str(config), cwd=tmp_path)
    assert quiet.returncode == 0 and "now found under" not in quiet.stderr  # said once, when they moved


def test_a_first_commit_writes_with_a_page_cache_sized_for_it(snapshot_site, db, monkeypatch):
    """A first version writes the whole manifest in one transaction (rows, records, change set, then its indexes
    built): with SQLite's 2 MB default page cache its index builds sorted through temporary files and its pages
    spilled mid-transaction (100k files: 0.61 -> 0.53 s of CPU with 32 MiB). The page cache is set before any row."""
    from chorus_batch.store import adbc

    said: list[str] = []
    execute = adbc.Cursor.execute

    def recorded(self, sql, params=None):
        said.append(sql)
        return execute(self, sql, params)

    monkeypatch.setattr(adbc.Cursor, "execute", recorded)
    scan_and_commit(db, [Root(LocalSource(snapshot_site))])
    assert current_rows(db)
    cache = [sql for sql in said if sql.startswith("PRAGMA cache_size")]
    assert cache, said
    assert int(cache[0].split("=")[1].strip().lstrip("-")) >= 32 << 10  # KiB: at least 32 MiB
    assert said.index(cache[0]) < next(i for i, sql in enumerate(said) if sql.startswith("INSERT INTO versions"))


def test_the_label_pattern_and_the_messages_take_the_label_limit_from_label_max():
    # The pattern spelled the limit as {0,62} and the importer's message as "at most 64", apart from LABEL_MAX (and
    # the --version message's 49 is HAND_LABEL_MAX, LABEL_MAX less the "-<UTC start>" the next label adds).
    from chorus_batch.commit import _LABEL_RE, HAND_LABEL_MAX, LABEL_MAX, next_label
    from chorus_batch.upstream.importer import _check_labels
    from chorus_batch.upstream.journal import VersionTree

    assert _LABEL_RE.fullmatch("v" * LABEL_MAX) and not _LABEL_RE.fullmatch("v" * (LABEL_MAX + 1))
    with pytest.raises(UsageError) as refused:
        _check_labels([VersionTree("v" * (LABEL_MAX + 1), 0, 0, None, {})], "journal.db")
    assert f"at most {LABEL_MAX})" in str(refused.value)
    with pytest.raises(UsageError) as refused:
        next_label(None, None, "v" * (LABEL_MAX + 1))
    assert f"use up to {HAND_LABEL_MAX} letters" in str(refused.value.fix)
