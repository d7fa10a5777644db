"""A killed run resumes: the hashes it checkpointed beside the manifest are reused by the next run for every
file that is unchanged since, and only the files not yet hashed are read again (checkpoint.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from array import array
from pathlib import Path

import polars as pl
import pytest

from chorus_batch import checkpoint as ckpt_module
from chorus_batch.checkpoint import Checkpoint, folder_of, reuse
from chorus_batch.scan import Root, scan
from chorus_batch.sources import open_source
from chorus_batch.store import Manifest
from chorus_batch.workers import HashedChunk

from conftest import cli, query, run_site, tree_md5, write

HOUR_AGO = time.time() - 3600


def make_site(site: Path, n: int, *, size: int = 64) -> None:
    """n files whose mtimes lie an hour back (out of any racy window)."""
    for i in range(n):
        path = write(site, f"{1000 + i % 7}/Waveforms/Telemetry/{9000 + i}/{9000 + i}.dat", os.urandom(size))
        os.utime(path, (HOUR_AGO, HOUR_AGO))


def command(site: Path, db: Path, workers: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--verify-sample", "0", "--workers",
            str(workers), "--site", str(site), "--db", str(db), *extra]


def killed_after_first_checkpoint(site: Path, db: Path, workers: int) -> None:
    """Start a run, wait until it has flushed its first checkpoint segment, SIGKILL it."""
    env = {**os.environ, "CHORUS_BATCH_TEST_PAUSE": "checkpoint", "CHORUS_BATCH_CHECKPOINT_S": "0"}
    proc = subprocess.Popen(command(site, db, workers, "-q"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "test pause at checkpoint" in line:
                break
            if not line and proc.poll() is not None:
                raise AssertionError(f"the run ended ({proc.returncode}) without a checkpoint: {proc.stderr.read()}")
        else:
            raise AssertionError("the run never flushed a checkpoint")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def checkpointed(db: Path) -> pl.DataFrame:
    found = Checkpoint.open(db, *Manifest(db).state_identity(), writable=False)
    assert found is not None
    return found.known()


def rows(db: Path) -> list[tuple]:
    return query(db, "SELECT srcfile, size, mtime_ns, md5, md5_source FROM source_files WHERE time_invalid IS NULL "
                     "ORDER BY srcfile")


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
@pytest.mark.parametrize("workers, n", [(1, 200), (2, 2100)], ids=["threads", "processes"])
def test_a_killed_first_run_resumes_and_reads_only_the_files_not_yet_hashed(tmp_path, workers, n):
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    make_site(site, n)
    killed_after_first_checkpoint(site, db, workers)

    assert query(db, "SELECT count(*) FROM versions") == [(0,)]  # nothing committed
    folder = folder_of(db)
    assert set(modes(folder).values()) <= {0o700, 0o600} and modes(folder)[folder.name] == 0o700
    assert all(m == 0o600 for name, m in modes(folder).items() if name != folder.name)
    done = checkpointed(db)
    assert 0 < done.height < n
    truth = tree_md5(site)
    assert all(truth[f] == md5 for f, md5 in done.select("srcfile", "md5").iter_rows())

    # A dry run reads the checkpoint but writes nothing to it.
    before = modes(folder)
    dry = subprocess.run(command(site, db, workers, "--dry-run", "--json"), capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["files_hashed"] == n - done.height
    assert modes(folder) == before

    again = subprocess.run(command(site, db, workers, "--json"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_hashed"] == n - done.height  # only the files not yet hashed were read
    assert not folder.exists()  # removed after the commit

    clean = tmp_path / "clean.sqlite"
    single = subprocess.run(command(site, clean, workers, "--json"), capture_output=True, text=True)
    assert json.loads(single.stdout)["files_hashed"] == n
    assert rows(db) == rows(clean)  # the resumed manifest equals a clean single run's
    assert dict((r[0], r[3]) for r in rows(db)) == truth
    assert not folder_of(clean).exists()


@pytest.mark.skipif(os.name == "nt", reason="signals")
@pytest.mark.parametrize("workers, n, signum", [(1, 200, signal.SIGTERM), (2, 2100, signal.SIGINT)],
                         ids=["threads-sigterm", "processes-ctrl-c"])
def test_a_run_stopped_by_a_signal_checkpoints_what_it_hashed_since_the_last_flush(tmp_path, workers, n, signum):
    """SIGTERM (Slurm's time limit, systemd), Ctrl-C: the files hashed since the last periodic flush are
    checkpointed before the run exits (they were lost, up to CHORUS_BATCH_CHECKPOINT_S of hashing read again)."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    make_site(site, n)
    env = {**os.environ, "CHORUS_BATCH_TEST_PAUSE": "hashed-chunk", "CHORUS_BATCH_CHECKPOINT_S": "3600"}
    proc = subprocess.Popen(command(site, db, workers, "-q"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        assert any("test pause at hashed-chunk" in line for line in iter(proc.stderr.readline, "")), \
            "the run never hashed a chunk"
        proc.send_signal(signum)  # a chunk hashed, none flushed yet (no flush for an hour)
        said = proc.stderr.read()
        assert proc.wait(timeout=60) == 128 + signum, said
    finally:
        proc.kill()
        proc.wait()

    # what the rerun does, said (it said "nothing was committed" only, as if all were lost)
    assert f"nothing was committed: no version was written, and the manifest holds none yet; the files it hashed are " \
           f"checkpointed in {folder_of(db)}: run the same command again, and they are not read again" in said
    assert query(db, "SELECT count(*) FROM versions") == [(0,)]
    done = checkpointed(db)
    assert 0 < done.height < n
    truth = tree_md5(site)
    assert all(truth[f] == md5 for f, md5 in done.select("srcfile", "md5").iter_rows())
    again = subprocess.run(command(site, db, workers, "--json"), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_hashed"] == n - done.height
    assert dict((r[0], r[3]) for r in rows(db)) == truth


def interrupted_scan(site: Path, db: Path, *, racy_window_s: float = 2.0) -> Checkpoint:
    """A run's scan, hashed and checkpointed, without its commit (as if killed right before it)."""
    manifest = Manifest(db)
    manifest.ensure_schema()
    found = Checkpoint.open(db, *manifest.state_identity(), writable=True)
    assert found is not None
    scan([Root(open_source(str(site)))], manifest.previous_state(), based_on=None, workers=1,
         racy_window_s=racy_window_s, checkpoint=found)
    assert found.folder.is_dir()
    return found


def test_a_file_changed_after_the_checkpoint_is_hashed_again(site, db):
    make_site(site, 30)
    interrupted_scan(site, db)
    assert checkpointed(db).height == 30
    changed = site / "1000" / "Waveforms" / "Telemetry" / "9000" / "9000.dat"
    changed.write_bytes(b"new content, another size")
    os.utime(changed, (HOUR_AGO + 60, HOUR_AGO + 60))
    result = run_site(site, db, validate_site=False)
    assert result.n_hashed == 1
    assert query(db, "SELECT srcfile, md5 FROM source_files WHERE time_invalid IS NULL") and \
        dict(query(db, "SELECT srcfile, md5 FROM source_files WHERE time_invalid IS NULL")) == tree_md5(site)
    assert not folder_of(db).exists()


def test_a_file_whose_md5_came_from_the_checkpoint_is_recorded_as_read_when_the_interrupted_run_read_it(site, db):
    """verified_ns (status's "longest unverified", the re-verification order) of a resumed file is the killed run's
    reading, not the resuming run's scan start: its bytes were not read again."""
    make_site(site, 5)
    before = time.time_ns()
    interrupted_scan(site, db)
    between = time.time_ns()
    changed = site / "1000" / "Waveforms" / "Telemetry" / "9000" / "9000.dat"
    changed.write_bytes(b"new content, another size")
    os.utime(changed, (HOUR_AGO + 60, HOUR_AGO + 60))
    assert run_site(site, db, validate_site=False).n_hashed == 1
    read = dict(query(db, "SELECT srcfile, verified_ns FROM source_files WHERE time_invalid IS NULL"))
    assert read.pop("1000/Waveforms/Telemetry/9000/9000.dat") > between  # read by the rerun
    assert len(read) == 4 and all(before <= ns < between for ns in read.values()), read


@pytest.mark.skipif(os.name == "nt", reason="the change time (POSIX)")
def test_a_file_replaced_at_the_same_size_with_its_mtime_set_back_is_hashed_again(site, db):
    """`touch -r old new` (or a copy keeping timestamps) after the kill: size and mtime as checkpointed, but not the
    inode (renamed over) or the change time (rewritten in place); the checkpointed MD5 is not the file's."""
    make_site(site, 6)
    interrupted_scan(site, db)
    renamed, rewritten = (site / "1000/Waveforms/Telemetry/9000/9000.dat", site / "1001/Waveforms/Telemetry/9001/9001.dat")
    for path in (renamed, rewritten):
        old = path.stat()
        if path == renamed:
            (path.parent / "new").write_bytes(os.urandom(old.st_size))
            os.replace(path.parent / "new", path)
        else:
            path.write_bytes(os.urandom(old.st_size))
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert run_site(site, db, validate_site=False).n_hashed == 2
    assert dict(query(db, "SELECT srcfile, md5 FROM source_files WHERE time_invalid IS NULL")) == tree_md5(site)


def test_a_file_modified_within_the_racy_window_of_the_checkpoint_is_hashed_again(site, db):
    make_site(site, 10)
    fresh = write(site, "OMOP/person.csv", b"person_id\n1\n")  # mtime now: racily clean for the checkpoint
    interrupted_scan(site, db)
    assert "OMOP/person.csv" not in checkpointed(db)["srcfile"].to_list()
    assert checkpointed(db).height == 10
    result = run_site(site, db, validate_site=False)
    assert result.n_hashed == 1
    assert dict(query(db, "SELECT srcfile, md5 FROM source_files WHERE srcfile = 'OMOP/person.csv'")) == {
        "OMOP/person.csv": tree_md5(site)["OMOP/person.csv"]}
    assert fresh.exists()


def test_a_checkpoint_of_another_manifest_or_an_older_state_is_ignored_and_removed(site, db, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="chorus_batch")
    make_site(site, 20)
    interrupted_scan(site, db)
    saved = tmp_path / "saved"
    shutil.copytree(folder_of(db), saved)

    other = tmp_path / "other.sqlite"  # another manifest (another manifest_id) finds A's checkpoint beside it
    shutil.copytree(saved, folder_of(other))
    result = run_site(site, other, validate_site=False)
    assert result.n_hashed == 20
    assert not folder_of(other).exists()
    assert "it was written for another manifest" in caplog.text and "hashed again" in caplog.text

    # The first manifest commits (the checkpoint is used, then removed); an old copy put back is stale.
    assert run_site(site, db, validate_site=False).n_hashed == 0
    assert not folder_of(db).exists()
    shutil.copytree(saved, folder_of(db))
    manifest = Manifest(db)
    assert Checkpoint.open(db, *manifest.state_identity(), writable=False) is None  # a dry run ignores it
    assert folder_of(db).exists()
    caplog.clear()
    stale = Checkpoint.open(db, *manifest.state_identity(), writable=True)
    assert stale is not None and stale.known().height == 0
    assert not folder_of(db).exists()
    # (a run stopped after its commit leaves one so: "ignoring ... another manifest or state" read as hashes lost)
    assert "a run updated the manifest since it was written" in caplog.text and "nothing to do" in caplog.text
    assert "another manifest" not in caplog.text


def test_the_checkpoint_of_a_renamed_manifest_is_taken_along_not_left_behind(site, db, tmp_path):
    """A manifest renamed after a killed run (mv m.sqlite site-a.sqlite) left m.sqlite.checkpoint/ beside it for good
    (person ids, MD5s), and the run hashed everything again. The run of the renamed manifest takes it as its own; a
    copy's run leaves the checkpoint of the manifest still there alone."""
    make_site(site, 20)
    interrupted_scan(site, db)
    old = folder_of(db)
    copy = tmp_path / "copy.sqlite"
    shutil.copy(db, copy)  # a copy: db is still there, its checkpoint is db's
    assert run_site(site, copy, validate_site=False).n_hashed == 20 and old.is_dir()
    os.remove(copy)
    renamed = tmp_path / "site-a.sqlite"
    db.rename(renamed)
    assert run_site(site, renamed, validate_site=False).n_hashed == 0  # resumed from the killed run's hashes
    assert not old.exists() and not folder_of(renamed).exists()  # taken along, then removed after the commit


def test_a_checkpoint_made_readable_by_others_is_made_owner_only_again_by_the_run_that_keeps_it(site, db):
    """A checkpoint copied or restored under umask 022 (0755 folder, 0644 segments: person ids and MD5s) is made
    owner-only, as the manifest's own files are, by the next run that goes on writing into it."""
    make_site(site, 20)
    interrupted_scan(site, db)
    folder = folder_of(db)
    for path in [folder, *folder.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    kept = Checkpoint.open(db, *Manifest(db).state_identity(), writable=True)
    assert kept is not None and kept.known().height == 20
    assert modes(folder)[folder.name] == 0o700
    assert all(m == 0o600 for name, m in modes(folder).items() if name != folder.name)
    folder.chmod(0o755)
    assert Checkpoint.open(db, *Manifest(db).state_identity(), writable=False) is not None  # a dry run: read only
    assert modes(folder)[folder.name] == 0o755


def test_a_file_where_the_checkpoint_folder_belongs_is_replaced_by_one(site, db):
    """A file at <manifest>.checkpoint (a stray copy, a restore) was said to be "ignored" but stayed: rmtree leaves a
    file, so no run of this manifest could checkpoint again ("cannot write the hash checkpoint ... File exists")."""
    make_site(site, 10)
    run_site(site, db, validate_site=False)
    folder_of(db).write_text("not a checkpoint")
    found = Checkpoint.open(db, *Manifest(db).state_identity(), writable=True)
    assert found is not None and not folder_of(db).exists()
    found._prepare()  # (what a run's first flush does)
    assert folder_of(db).is_dir()


@pytest.mark.parametrize("damage", ["truncated", "missing", "[1]", '"text"', "null"])
def test_a_checkpoint_whose_meta_is_damaged_is_said_to_be_ignored(site, db, damage):
    """Its hashes are dropped (nothing ties them to this manifest): the run says so, not only hashes everything.
    JSON that is not an object (a list, a string) is as damaged as a truncated one, not an internal error."""
    make_site(site, 10)
    interrupted_scan(site, db)
    meta = folder_of(db) / "meta.json"
    if damage == "missing":
        meta.unlink()
    else:
        meta.write_text('{"format": "2", "manif' if damage == "truncated" else damage)
    out = cli("run", "--no-validate", "--dry-run", "--site", str(site), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert f"ignoring the hash checkpoint {folder_of(db)}: its meta.json" in out.stderr
    assert folder_of(db).exists()  # a dry run leaves it
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "ignoring the hash checkpoint" in out.stderr and "hashing 10 new" in out.stderr
    assert not folder_of(db).exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="gives the checkpoint to another user")
def test_a_checkpoint_of_another_user_is_not_trusted(site, db, caplog):
    """A checkpoint folder beside the manifest that another user owns (planted in a shared folder, or a symbolic
    link to one) could hand this run any MD5 for any file: it is named and left alone, its hashes unread."""
    make_site(site, 20)
    interrupted_scan(site, db)
    folder = folder_of(db)
    os.chown(folder, 54321, 54321)
    caplog.set_level("WARNING", logger="chorus_batch")
    logger = logging.getLogger("chorus_batch")
    logger.addHandler(caplog.handler)  # it may not propagate (setup_logging)
    try:
        assert Checkpoint.open(db, *Manifest(db).state_identity(), writable=False) is None
        result = run_site(site, db, validate_site=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert result.n_hashed == 20  # none taken from it
    assert f"ignoring the hash checkpoint {folder}: it belongs to another user, uid 54321" in caplog.text
    assert folder.is_dir() and folder.stat().st_uid == 54321  # not theirs to remove


def test_a_no_change_run_and_rehash_remove_the_checkpoint(site, db):
    make_site(site, 10)
    assert run_site(site, db, validate_site=False).n_hashed == 10
    write(site, "OMOP/new.csv", b"x")
    os.utime(site / "OMOP" / "new.csv", (HOUR_AGO, HOUR_AGO))
    interrupted_scan(site, db)
    assert checkpointed(db).height == 1
    assert run_site(site, db, validate_site=False, rehash=True).n_hashed == 11  # --rehash trusts no checkpoint
    assert not folder_of(db).exists()
    assert run_site(site, db, validate_site=False).label is None  # no change: nothing is left behind either
    assert not folder_of(db).exists()


def test_segments_are_merged_in_tiers_and_damaged_ones_are_ignored(site, db, monkeypatch):
    monkeypatch.setattr(ckpt_module, "FANOUT", 2)
    monkeypatch.setenv("CHORUS_BATCH_CHECKPOINT_S", "0")  # a segment per chunk
    make_site(site, 64)
    found = interrupted_scan(site, db)
    segments = [p.name for p in found.folder.iterdir() if p.suffix == ".arrow"]
    assert len(segments) <= 4 and any(not s.startswith("t0-") for s in segments)  # merged (tens of chunks)
    assert checkpointed(db).height == 64
    (found.folder / ".t0-1.arrow.123.tmp").write_bytes(b"torn")  # a write killed before its rename
    (found.folder / "t0-00000000000000000001-deadbeef.arrow").write_bytes(b"garbage")
    assert checkpointed(db).height == 64
    assert run_site(site, db, validate_site=False).n_hashed == 0


def test_a_damaged_segment_is_left_out_of_a_merge_and_the_run_goes_on_checkpointing(site, db, monkeypatch, caplog):
    """A segment damaged on disk (an I/O error, a power cut on a file system that did not honour the fsync) was
    ignored when read, but the next merge of its tier read it too and failed: the resumed run stopped checkpointing,
    saying it 'cannot write the hash checkpoint', and so did every later resume (the segment stayed)."""
    monkeypatch.setattr(ckpt_module, "FANOUT", 2)
    monkeypatch.setenv("CHORUS_BATCH_CHECKPOINT_S", "0")  # a segment per chunk
    make_site(site, 8)
    found = interrupted_scan(site, db)
    damaged = found.folder / "t0-00000000000000000001-deadbeef.arrow"
    damaged.write_bytes(b"garbage")
    for i in range(8, 64):  # more to hash: the resumed run merges the damaged segment's tier
        path = write(site, f"{1000 + i % 7}/Waveforms/Telemetry/{9000 + i}/{9000 + i}.dat", os.urandom(64))
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    caplog.set_level(logging.INFO, logger="chorus_batch")
    resumed = interrupted_scan(site, db)
    assert not resumed.broken, caplog.text
    assert "cannot write the hash checkpoint" not in caplog.text
    assert not damaged.exists() and "damaged hash checkpoint segment" in caplog.text
    assert checkpointed(db).height == 64
    assert run_site(site, db, validate_site=False).n_hashed == 0


def test_segments_larger_than_the_merge_limit_are_not_merged(site, db, monkeypatch):
    """A merge holds its segments in memory: a tier whose segments exceed COMPACT_MAX_BYTES keeps them."""
    monkeypatch.setattr(ckpt_module, "FANOUT", 2)
    monkeypatch.setattr(ckpt_module, "COMPACT_MAX_BYTES", 1)
    monkeypatch.setenv("CHORUS_BATCH_CHECKPOINT_S", "0")  # a segment per chunk
    make_site(site, 64)
    found = interrupted_scan(site, db)
    segments = [p.name for p in found.folder.iterdir() if p.suffix == ".arrow"]
    assert len(segments) >= 4 and all(s.startswith("t0-") for s in segments)  # one a chunk (FANOUT 2), none merged
    assert checkpointed(db).height == 64


def test_a_checkpoint_that_cannot_be_written_never_fails_the_run(site, db):
    make_site(site, 10)
    folder_of(db).write_bytes(b"in the way")  # a file where the folder should go
    result = run_site(site, db, validate_site=False)
    assert result.n_hashed == 10 and result.label is not None


def test_the_key_holds_the_etag_for_cloud_objects(tmp_path):
    """A cloud object hashed under one etag is not reused when it is listed with another."""
    found = Checkpoint(tmp_path / "m.sqlite.checkpoint", {"format": "1", "manifest_id": "x", "state_generation": "0"},
                       writable=True)
    todo = pl.DataFrame({"srcfile": ["a", "b", "c"], "size": [1, 1, 1], "etag": ["e1", "e2", None]})
    writer = found.writer(todo, scan_started_ns=time.time_ns(), racy_window_s=2.0)
    assert writer is not None
    old = int(HOUR_AGO * 1e9)
    writer(0, HashedChunk(bytes(range(16)) * 3, array("q", [1, 1, 1]), array("q", [old, old, old]), []))
    writer.close()
    planned = pl.DataFrame({"srcfile": ["a", "b", "c"], "size": [1, 1, 1], "mtime_ns": [old, old, old],
                            "etag": ["e1", "e2-new", None], "needs_md5": [True] * 3, "needs_read": [True] * 3,
                            "verify": [False] * 3})
    out, n = reuse(planned, found)
    assert n == 2
    assert out.filter(pl.col("needs_read"))["srcfile"].to_list() == ["b"]
    assert out["resumed_md5"].to_list() == [bytes(range(16)).hex(), None, bytes(range(16)).hex()]


def test_the_command_line_without_a_checkpoint_leaves_nothing_beside_the_manifest(site, db):
    make_site(site, 5)
    out = cli("run", "--no-validate", "--dry-run", "--site", str(site), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert not folder_of(db).exists()


def test_a_merge_that_commits_removes_the_checkpoint_an_interrupted_run_left(site, db, tmp_path):
    """The shards' merge commits the whole site's hashes: the checkpoint a killed plain run left (person ids and
    MD5s) goes with that commit, as with a plain run's; a dry-run merge leaves it. (It was kept until some later
    plain run, for good on a site only ever run as Slurm shards.)"""
    make_site(site, 10)
    interrupted_scan(site, db)
    staging = tmp_path / "staging"
    for k in range(2):
        out = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--shard", f"{k}/2", "--staging",
                  str(staging))
        assert out.returncode == 0, out.stderr
    out = cli("run", "--no-validate", "--dry-run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 0, out.stderr
    assert folder_of(db).is_dir()
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 0, out.stderr
    assert not folder_of(db).exists()
    assert f"removing the hash checkpoint {folder_of(db)}" in out.stderr
    assert [r[0] for r in rows(db)] == sorted(str(p.relative_to(site)) for p in site.rglob("*.dat"))


def test_a_checkpoint_that_could_not_be_written_leaves_no_folder_nor_a_word_of_it(site, small_disk):
    """The disk filled while the run hashed: the checkpoint folder was made, its meta.json could not be written, and
    the empty folder stayed; the run's error then said "the files it hashed are checkpointed in" it. A folder with
    nothing to resume from is removed."""
    from conftest import fill, paused

    db = small_disk / "m.sqlite"
    make_site(site, 5)
    assert cli("run", "--no-validate", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    make_site(site, 300)
    proc = paused("run", "--no-validate", "-q", "--site", str(site), "--db", str(db), at="hashing+2")
    fill(small_disk)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "the disk is full" in err, err
    assert "cannot write the hash checkpoint" in err, err
    # the warning is one line, ending with what it means for the run (the write error's own "where:" and "fix:"
    # lines split it, read in the log as the run's error)
    (warning,) = [line for line in err.splitlines() if "cannot write the hash checkpoint" in line]
    assert warning.endswith("the next run hashes these files again"), err
    assert not folder_of(db).exists() and "checkpointed in" not in err, err


def test_the_resuming_line_is_said_in_the_right_number(caplog):
    """A cron log after a killed night read "resuming: 1 file hashed by an interrupted run are not read again"."""
    from chorus_batch.checkpoint import announce

    logger = logging.getLogger("chorus_batch")
    logger.addHandler(caplog.handler)  # it may not propagate (setup_logging)
    caplog.set_level(logging.INFO, logger="chorus_batch")
    try:
        announce(1, None)
        announce(1200, None)
    finally:
        logger.removeHandler(caplog.handler)
    assert "resuming: 1 file hashed by an interrupted run is not read again" in caplog.text, caplog.text
    assert "resuming: 1,200 files hashed by an interrupted run are not read again" in caplog.text, caplog.text


def test_a_status_beside_a_run_still_going_names_that_run_not_an_interrupted_one(site, db, tmp_path):
    """`status` (a dry run, no lock) while the nightly run waits in its commit read that run's checkpoint and said
    "N files hashed by an interrupted run reused": the run was not interrupted, it was going on (pid named in the
    lock's details); a reviewer went looking for a killed run that never was."""
    from conftest import paused

    for i in range(6):
        write(site, f"OMOP/t{i}.csv", b"x" * (i + 1))
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    for i in range(6):
        write(site, f"OMOP/n{i}.csv", b"y" * (i + 1))
    past = time.time() - 3600  # (older than any racy window: the checkpointed hashes are trusted)
    for p in (site / "OMOP").iterdir():
        os.utime(p, (past, past))
    resume = tmp_path / "resume"
    holder = paused("run", "--no-validate", "--site", str(site), "--db", str(db), at="commit", resume=resume)
    try:
        status = cli("status", "--no-validate", "--site", str(site), "--db", str(db))
    finally:
        resume.touch()
        holder.communicate(timeout=120)
    assert holder.returncode == 0
    assert "reused" in status.stderr or "not read again" in status.stderr, status.stderr
    assert "interrupted run" not in status.stderr, status.stderr
    assert f"pid {holder.pid}" in status.stderr, status.stderr
