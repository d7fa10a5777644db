"""Hashing overlaps the listing (issue 15): the files a block of the listing certainly needs read are hashed
while the listing goes on, and the ScanResult is the one a scan that hashed after the listing gives.

A GatedSource lists a real tree in two batches and, between them, waits until a file of its first batch has
been hashed (its hash_file leaves the path in a log file, which worker processes can write too). A scan that
hashed only after the listing would never let it go on: the wait times out and the scan fails (it does not
hang). The reference is the same tree scanned through a plain LocalSource with blocks larger than the site, so
that everything is planned and hashed after the listing, as before.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from chorus_batch import hashing
from chorus_batch import scan as scan_module
from chorus_batch.exclude import Excludes
from chorus_batch.frames import empty_state
from chorus_batch.scan import Root, ScanResult, scan
from chorus_batch.sources import LocalSource
from chorus_batch.store import Manifest
from chorus_batch.testdata import Spec, write_snapshot

from conftest import scan_and_commit, write

GATE_S = 60.0  # how long the listing waits for a hash before it fails the scan
HOUR_AGO = time.time() - 3600


class NoOverlap(RuntimeError):
    pass


class GatedSource:
    """A LocalSource whose listing yields `first` rows, then waits until one of them was hashed, then the rest."""

    def __init__(self, root: Path, log: Path, first: int):
        self.inner = LocalSource(root)  # walked in-process: a fixed order
        self.log = str(log)
        self.first = first
        self.description, self.location = self.inner.description, self.inner.location
        self.parallel_local, self.server_md5 = True, False

    def check(self) -> None:
        self.inner.check()

    def list_files(self, errors: list) -> Iterator[pa.RecordBatch]:
        listed = pa.Table.from_batches(list(self.inner.list_files(errors)))
        head = listed.slice(0, self.first)
        yield from head.to_batches()
        # The scan asks for more only after it dealt with the first batch: its hashing must go on meanwhile.
        wanted = set(head.column("srcfile").to_pylist())
        deadline = time.monotonic() + GATE_S
        while not wanted & set(Path(self.log).read_text().splitlines() if Path(self.log).exists() else []):
            if time.monotonic() > deadline:
                raise NoOverlap(f"no file of the first batch was hashed within {GATE_S} s while the listing waited")
            time.sleep(0.01)
        yield from listed.slice(self.first).to_batches()

    def stat(self, srcfile: str):
        return self.inner.stat(srcfile)

    def open(self, srcfile: str):
        return self.inner.open(srcfile)

    def hash_file(self, srcfile: str, buffer: bytearray, parse=None):
        outcome = self.inner.hash_file(srcfile, buffer, parse)
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # worker processes too
        try:
            os.write(fd, (srcfile + "\n").encode())
        finally:
            os.close(fd)
        return outcome


def same(a: ScanResult, b: ScanResult) -> None:
    assert a.files.equals(b.files)
    assert a.errors.equals(b.errors)
    assert (a.facts is None and b.facts is None) or a.facts.equals(b.facts)  # type: ignore[union-attr]
    assert (a.n_hashed, a.bytes_hashed, a.excluded, a.roots, a.based_on, a.coverage) == (
        b.n_hashed, b.bytes_hashed, b.excluded, b.roots, b.based_on, b.coverage)


def reference(monkeypatch, roots: list[Root], previous: pl.DataFrame, **kwargs) -> ScanResult:
    """The scan planned and hashed after the whole listing (one block larger than the site)."""
    with monkeypatch.context() as m:
        m.setattr(scan_module, "BLOCK_ROWS", 10**9)
        return scan(roots, previous, **kwargs)


@pytest.fixture
def changed_site(tmp_path: Path) -> tuple[Path, Path, pl.DataFrame, dict]:
    """A committed version, then changes: the first person folder's files grown, new files, junk and a
    user-excluded file; unchanged files an hour old (never racily clean)."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write_snapshot(site, Spec(persons=6, files_per_person=20, size=64, seed=3))
    for path in site.rglob("*"):
        if path.is_file():
            os.utime(path, (HOUR_AGO, HOUR_AGO))
    scan_and_commit(db, [Root(LocalSource(site))])
    first_person = sorted(p for p in site.iterdir() if p.is_dir() and p.name[0].isdigit())[0]
    for path in sorted(first_person.rglob("*"))[:40]:
        if path.is_file():
            with path.open("ab") as f:
                f.write(b"grown")
    for i in range(30):
        write(site, f"{first_person.name}/new/n{i:02d}.dat", os.urandom(100))
        write(site, f"999999/new/m{i:02d}.dat", os.urandom(100))
    write(site, f"{first_person.name}/.DS_Store", b"junk")
    write(site, "999999/scratch.tmp", b"tmp")
    manifest = Manifest(db)
    kwargs = {"based_on": manifest.latest_version()["label"], "last_scan_ns": manifest.last_scan_started_ns(),
              "verify_percent": 20.0, "verify_max_bytes": 1 << 30, "facts": True,
              "excludes": Excludes(user=("*.tmp",))}
    return site, tmp_path / "hashed.log", manifest.previous_state(), kwargs


@pytest.mark.parametrize("workers,process_min", [(1, hashing.PROCESS_MIN_FILES), (2, 1)], ids=["threads", "processes"])
def test_hashing_starts_on_the_first_batch_while_the_listing_goes_on(changed_site, monkeypatch, workers, process_min):
    site, log, previous, kwargs = changed_site
    monkeypatch.setattr(hashing, "PROCESS_MIN_FILES", process_min)  # 1: worker processes even for a small site
    expected = reference(monkeypatch, [Root(LocalSource(site))], previous, workers=workers, **kwargs)
    monkeypatch.setattr(scan_module, "BLOCK_ROWS", 1)  # each batch a block
    overlapped = scan([Root(GatedSource(site, log, first=60))], previous, workers=workers, **kwargs)
    same(overlapped, expected)
    assert overlapped.files["verify"].sum() > 0 and overlapped.n_excluded == 2  # the global decisions were made
    assert 0 < overlapped.n_hashed < overlapped.files.height


def test_a_first_run_overlaps_with_the_default_blocks(tmp_path, monkeypatch):
    """A first run of a site larger than a block, in worker processes: the first block is hashed while the
    rest is listed."""
    site = tmp_path / "site"
    for i in range(scan_module.BLOCK_ROWS + 500):
        write(site, f"{100000 + i // 100}/f{i:05d}.dat", str(i).encode())
    kwargs = {"based_on": None, "workers": 2, "verify_percent": 5.0, "verify_max_bytes": 1 << 30}
    expected = reference(monkeypatch, [Root(LocalSource(site))], empty_state(), **kwargs)
    overlapped = scan([Root(GatedSource(site, tmp_path / "hashed.log", first=scan_module.BLOCK_ROWS))], empty_state(),
                      **kwargs)
    same(overlapped, expected)
    assert overlapped.n_hashed == overlapped.files.height == scan_module.BLOCK_ROWS + 500
    md5 = dict(zip(overlapped.files["srcfile"], overlapped.files["md5"]))
    assert md5["100000/f00007.dat"] == hashlib.md5(b"7").hexdigest()


class FailingSource(LocalSource):
    def hash_file(self, srcfile, buffer, parse=None):
        raise RuntimeError(f"a bug while hashing {srcfile}")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failure_while_hashing_during_the_listing_fails_the_scan(tmp_path, monkeypatch, workers):
    site = tmp_path / "site"
    for i in range(50):
        write(site, f"{100000 + i}/f.dat", b"x")
    monkeypatch.setattr(hashing, "PROCESS_MIN_FILES", 1)
    monkeypatch.setattr(scan_module, "BLOCK_ROWS", 1)
    with pytest.raises(RuntimeError, match="a bug while hashing"):
        scan([Root(FailingSource(site))], empty_state(), based_on=None, workers=workers)


def test_two_roots_the_paths_they_share_are_decided_after_the_listing(tmp_path, monkeypatch):
    """The first root's rows are planned as they come; a modality root's rows wait for the whole listing: a
    path both hold is the first root's (duplicate_path), an excluded one is counted once."""
    site, images = tmp_path / "site", tmp_path / "images"
    for i in range(20):
        write(site, f"{100000 + i}/Images/a.dcm", b"site %d" % i)
    write(site, "100000/Images/Thumbs.db", b"junk")
    for i in range(15, 25):
        write(images, f"{100000 + i}/Images/a.dcm", b"images %d" % i)
    write(images, "100000/Images/Thumbs.db", b"junk too")
    monkeypatch.setattr(scan_module, "BLOCK_ROWS", 1)
    roots = [Root(LocalSource(site)), Root(LocalSource(images), "Images")]
    result = scan(roots, empty_state(), based_on=None, workers=2)
    md5 = dict(zip(result.files["srcfile"], result.files["md5"]))
    assert len(md5) == 25 and result.n_hashed == 25
    assert md5["100017/Images/a.dcm"] == hashlib.md5(b"site 17").hexdigest()  # the first root's
    assert md5["100022/Images/a.dcm"] == hashlib.md5(b"images 22").hexdigest()
    duplicates = result.errors.filter(pl.col("kind") == "duplicate_path")["srcfile"].to_list()
    assert duplicates == [f"{100000 + i}/Images/a.dcm" for i in range(15, 20)]
    assert result.n_excluded == 1  # the junk both roots hold: excluded once (the second is a duplicate)
    same(result, reference(monkeypatch, roots, empty_state(), based_on=None, workers=2))


def test_a_path_two_roots_share_is_said_with_both_roots_and_which_one_is_tracked(tmp_path):
    """duplicate_path said "under two roots; the first root's file is tracked", naming neither root: with a site
    root and [site.roots] folders, which copy to remove was left to guess."""
    site, images = tmp_path / "site", tmp_path / "images"
    write(site, "100000/Images/a.dcm", b"site")
    write(images, "100000/Images/a.dcm", b"images")
    roots = [Root(LocalSource(site)), Root(LocalSource(images), "Images")]
    result = scan(roots, empty_state(), based_on=None, workers=1)
    message = result.errors.filter(pl.col("kind") == "duplicate_path")["message"].to_list()
    assert message == [f"the same site-relative path exists under two roots: the file under {site} (the site root) is "
                       f"tracked, the one under {images} ([site.roots] Images) is not; remove one of the two copies"]


@pytest.mark.parametrize("n_folders, workers", [(1000, 2), (37, 2), (5, 4), (16, 2), (0, 2)])
def test_the_walks_tasks_are_runs_of_neighbouring_folders_in_order(n_folders, workers):
    """Each walk task is a run of neighbouring person folders, the tasks in path order: the listing comes back in
    about path order, so each block of it is compared with the previous version's rows of its range of paths
    only (hashing.rows_for). Every k-th folder for each task made each block span the whole site."""
    from chorus_batch.walk import walk_groups

    folders = [f"P{k:05d}" for k in range(n_folders)]
    groups = walk_groups(folders, workers)
    assert [folder for group in groups for folder in group] == folders  # each once, in order
    assert len(groups) == min(n_folders, workers * 8) and all(groups)
    assert max(map(len, groups), default=0) - min(map(len, groups), default=0) <= 1  # shared out evenly


@pytest.mark.parametrize("n_files", [0, 6])
def test_a_one_root_scan_plans_no_empty_block(tmp_path, monkeypatch, n_files):
    """With one root, every row is planned as the listing gives it: no empty block is planned after it (the other
    roots' rows: none; a last block left empty at a block's boundary), each such planning being a fixed cost of
    polars' steps for nothing. An empty site is still planned once, and the results are those of one block."""
    site = tmp_path / "site"
    site.mkdir()
    for i in range(n_files):
        write(site, f"{100000 + i}/f.dat", b"x%d" % i)
    planned: list[int] = []
    due = hashing.due

    def counted(listing, *args, **kwargs):
        planned.append(listing.height)
        return due(listing, *args, **kwargs)

    expected = reference(monkeypatch, [Root(LocalSource(site))], empty_state(), based_on=None, workers=1)
    monkeypatch.setattr(hashing, "due", counted)
    monkeypatch.setattr(scan_module, "BLOCK_ROWS", 3)  # 6 files: two blocks of 3, the second at the listing's end
    result = scan([Root(LocalSource(site))], empty_state(), based_on=None, workers=1)
    same(result, expected)
    assert sum(planned) == n_files and (planned == [0] if n_files == 0 else 0 not in planned), planned
