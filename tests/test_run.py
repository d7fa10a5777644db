"""End to end on real trees: versions, rows, registry, errors, modes and options."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import time
from pathlib import Path

import polars as pl
import pytest

from chorus_batch import ExitCode
from chorus_batch.errors import UsageError
from chorus_batch.sources import LocalSource
from chorus_batch.testdata import Spec, write_snapshot

from conftest import cli, current_rows, query, run_site, scan_and_commit, tree_md5, write

WAVE = "000123/Waveforms/000123_20200101_101010_60.dat"
IMAGE = "000123/Images/ST1/SE1/000123_20200101_101010_CT_SE1_0001.dcm"


@contextlib.contextmanager
def unreadable(*paths: Path):
    """`paths` with no permission at all for the duration (their modes put back after)."""
    modes = [stat.S_IMODE(p.stat().st_mode) for p in paths]
    for p in paths:
        os.chmod(p, 0o000)
    try:
        yield
    finally:
        for p, mode in zip(paths, modes):
            os.chmod(p, mode)


def age(root: Path, seconds: float = 10) -> None:
    """Backdate every file so the racily-clean rule does not rehash them."""
    past = time.time() - seconds
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.utime(Path(dirpath) / name, (past, past), follow_symlinks=False)


def test_first_run_records_every_file_with_its_md5(site, db):
    write_snapshot(site, Spec(persons=3, files_per_person=10, size=100, seed=3))
    result = run_site(site, db)
    assert result.exit_code == ExitCode.OK
    assert current_rows(db) == tree_md5(site)
    assert result.counts["added"] == len(tree_md5(site))
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert label == result.label and len(label) == 14 and label.isdigit()


def test_testdata_second_snapshot_gives_every_change_kind(tmp_path, db):
    spec = Spec(persons=10, files_per_person=20, size=64, seed=5)
    site = tmp_path / "site"
    write_snapshot(site, spec)
    first = run_site(site, db)
    before = tree_md5(site)
    from chorus_batch.testdata import sync_tree

    sync_tree(site, spec)
    second = run_site(site, db)
    after = tree_md5(site)
    assert current_rows(db) == after
    # independent expectation from the two trees
    removed_paths = before.keys() - after.keys()
    added_paths = after.keys() - before.keys()
    replaced = {p for p in before.keys() & after.keys() if before[p] != after[p]}
    c = second.counts
    assert c["replaced"] == len(replaced) > 0
    assert c["renamed"] > 0 and c["removed"] > 0 and c["added"] > 0
    assert c["renamed"] + c["removed"] == len(removed_paths)
    assert c["renamed"] + c["added"] == len(added_paths)
    assert first.label < second.label
    # Both snapshots are format-valid: the validator finds nothing to warn about.
    for result in (first, second):
        assert result.exit_code == ExitCode.OK
        assert result.findings is not None and result.findings.filter(pl.col("severity") != "info").height == 0


def test_no_change_run_writes_nothing_but_the_run_log(site, db):
    write(site, WAVE, b"a")
    age(site)
    run_site(site, db)
    counts = [query(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("source_files", "registry", "versions", "changes")]
    generation = query(db, "SELECT value FROM meta WHERE key = 'state_generation'")
    result = run_site(site, db)
    assert result.label is None and result.n_hashed == 0
    # not even a refresh of the rows: the state generation moves with every write to source_files
    assert query(db, "SELECT value FROM meta WHERE key = 'state_generation'") == generation
    assert [query(db, f"SELECT count(*) FROM {t}")[0][0] for t in ("source_files", "registry", "versions", "changes")] == counts
    assert query(db, "SELECT count(*) FROM runs")[0][0] == 2


def test_replaced_file_keeps_its_record_and_invalidates_the_old_row(site, db):
    write(site, WAVE, b"one")
    first = run_site(site, db)
    write(site, WAVE, b"two")
    second = run_site(site, db)
    rows = query(db, "SELECT md5, record_id, time_invalid, version_valid, version_invalid FROM source_files WHERE srcfile = ? ORDER BY file_id", (WAVE,))
    assert len(rows) == 2
    assert rows[0][1] == rows[1][1]  # same record
    assert rows[0][2] is not None and rows[0][4] == second.label
    assert rows[1][2] is None and rows[1][3] == second.label
    assert second.counts["replaced"] == 1 and first.counts["added"] == 1


def test_registry_goes_inactive_when_its_last_file_is_removed(site, db):
    write(site, WAVE, b"w")
    write(site, IMAGE, b"i")
    run_site(site, db)
    assert sorted(query(db, "SELECT modality, person_id, date, time, isactive FROM registry")) == [
        ("Images", "000123", "2020-01-01", "10:10:10", 1),
        ("Waveforms", "000123", "2020-01-01", "10:10:10", 1),
    ]
    (site / WAVE).unlink()
    result = run_site(site, db)
    assert result.counts["removed"] == 1
    assert sorted(query(db, "SELECT modality, isactive FROM registry")) == [("Images", 1), ("Waveforms", 0)]
    write(site, WAVE, b"w2")  # the record comes back: same record id, active again
    run_site(site, db)
    assert sorted(query(db, "SELECT modality, isactive FROM registry")) == [("Images", 1), ("Waveforms", 1)]


def test_records_without_a_date_before_dated_ones_in_key_order_are_read_back_in_batches(site, db, monkeypatch):
    """A site whose first 1024 records in key order had no start date (Images|..., sessions without a stamp) and a
    later one a date (a flat Waveforms file): every run that added files to recorded records stopped with 'internal
    error: Type mismatch in column 2: expected INT64 but got STRING' (exit 3): the records were read back in the
    driver's batches of 1024 rows, whose first one typed the all-NULL date as an integer. Reads on a cursor now take
    the manifest's batches and read a result typed only after its first batch again (pinned low: 4 rows)."""
    from chorus_batch.store import manifest as manifest_module

    monkeypatch.setattr(manifest_module, "QUERY_BATCH_ROWS", 4)
    sessions = 1030  # more than the driver's own batch, 1024
    for i in range(sessions):
        write(site, f"000123/Images/CT/A{i:05d}/1.2.3/1.dcm", b"i%d" % i)
    write(site, WAVE, b"w")
    run_site(site, db, validate_site=False)
    for i in range(sessions):
        write(site, f"000123/Images/CT/A{i:05d}/1.2.3/2.dcm", b"j%d" % i)
    write(site, WAVE.replace(".dat", ".hea"), b"h")
    result = run_site(site, db, validate_site=False)
    assert result.counts["added"] == sessions + 1
    assert query(db, "SELECT count(*), count(date), count(DISTINCT record_id) FROM registry") == [(sessions + 1, 1, sessions + 1)]
    assert query(db, "SELECT date, time FROM registry WHERE modality = 'Waveforms'") == [("2020-01-01", "10:10:10")]
    # each file joined its session's record: two files a record
    assert query(db, "SELECT count(*) FROM (SELECT record_id FROM source_files WHERE time_invalid IS NULL "
                     "GROUP BY record_id HAVING count(*) = 2)") == [(sessions + 1,)]


def test_rename_is_one_change_with_both_paths(site, db):
    write(site, WAVE, b"same bytes")
    run_site(site, db)
    new = WAVE.replace("_60.dat", "_61.dat")
    (site / WAVE).rename(site / new)
    result = run_site(site, db)
    assert result.counts["renamed"] == 1 and result.counts["added"] == result.counts["removed"] == 0
    assert query(db, "SELECT change, srcfile, old_srcfile FROM changes WHERE version = ?", (result.label,)) == [("renamed", new, WAVE)]


def test_person_ids_keep_leading_zeros(site, db):
    write(site, "000007/Waveforms/000007_20200101_101010_60.dat")
    run_site(site, db)
    assert query(db, "SELECT person_id FROM source_files") == [("000007",)]
    assert query(db, "SELECT person_id FROM registry") == [("000007",)]


def test_quotes_and_unicode_in_names(site, db):
    names = ["OMOP/o'brien.csv", 'OMOP/say "hi".csv', "Metadata/naïve; DROP TABLE x.json", "OMOP/ünïcödé/ファイル.csv"]
    for n in names:
        write(site, n, n.encode())
    result = run_site(site, db, validate_site=False)  # names, not the procedures, are tested here
    assert result.exit_code == ExitCode.OK
    assert current_rows(db) == tree_md5(site)


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names can hold undecodable bytes")
def test_non_utf8_names_are_recorded_not_tracked(site, db):
    write(site, "OMOP/good.csv")
    bad = os.fsencode(site / "OMOP") + b"/bad\xff.csv"
    with open(bad, "wb") as f:
        f.write(b"x")
    result = run_site(site, db)
    assert result.exit_code == ExitCode.FINDINGS
    assert list(current_rows(db)) == ["OMOP/good.csv"]
    assert query(db, "SELECT srcfile, kind FROM scan_errors") == [("OMOP/bad\\xff.csv", "non_utf8_name")]


@pytest.mark.skipif(os.name == "nt", reason="POSIX paths can hold undecodable bytes")
def test_paths_around_the_site_that_are_not_utf8_are_refused_or_escaped_never_an_internal_error(tmp_path, db):
    """A site under a Latin-1 folder (/data/caf\xe9/site), reached as it is or through a link, a --db or --parquet
    there, an --exclude glob typed in a Latin-1 shell, a followed link into such a folder: each was 'internal error:
    UnicodeEncodeError ... surrogates not allowed' (the runs row, the roots, the scan errors), or for --parquet a
    committed version and 'TypeError: Object does not have a .write() method'."""
    latin = Path(os.fsdecode(os.fsencode(tmp_path) + b"/lat\xe9"))
    site = latin / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")

    def refused(*args: str, says: str) -> None:
        out = cli("run", "--no-validate", *args)
        assert out.returncode == ExitCode.USAGE and says in out.stderr, out.stderr
        assert "internal error" not in out.stderr and "\\udc" not in out.stderr, out.stderr

    refused("--site", str(site), "--db", str(db), says="site root " + str(tmp_path) + "/lat\\xe9/site has a folder name")
    write(tmp_path / "other", "OMOP/person.csv", b"person_id\n1\n")
    refused("--site", str(tmp_path / "other"), "--db", str(latin / "m.sqlite"), says="is not valid UTF-8")
    refused("--site", str(tmp_path / "nowhere"), "--db", str(db), "--parquet", str(latin / "snaps"),
            says="--parquet " + str(tmp_path) + "/lat\\xe9/snaps: the folder's path is not valid UTF-8")
    refused("--site", str(tmp_path / "nowhere"), "--db", str(db), "--exclude", "*\udce9*",
            says="invalid exclusion glob '*\\xe9*': it is not valid UTF-8 text")
    assert not db.exists() and not (latin / "snaps").exists()

    # through a link whose own path is UTF-8 (as the refusal says to): the site is recorded, its runs row escaped
    (tmp_path / "link").symlink_to(site, target_is_directory=True)
    out = cli("run", "--no-validate", "-q", "--site", str(tmp_path / "link"), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert query(db, "SELECT site FROM versions") == [(str(tmp_path) + "/lat\\xe9/site",)]
    # a followed link into such a folder: its file is tracked, the link's problems named with escapes
    write(latin, "outside/extra.csv", b"e")
    (tmp_path / "link" / "Metadata").mkdir()
    (tmp_path / "link" / "Metadata" / "a").symlink_to(latin / "outside", target_is_directory=True)
    (tmp_path / "link" / "Metadata" / "b").symlink_to(latin / "outside", target_is_directory=True)
    (tmp_path / "link" / "Metadata" / "gone").symlink_to(latin / "gone")
    out = cli("run", "--no-validate", "-q", "--follow-symlinks", "--site", str(tmp_path / "link"), "--db", str(db))
    assert out.returncode == ExitCode.FINDINGS and "internal error" not in out.stderr, out.stderr
    assert "Metadata/a/extra.csv" in current_rows(db)
    messages = dict(query(db, "SELECT srcfile, message FROM scan_errors"))
    assert "lat\\xe9/gone" in messages["Metadata/gone"] and "lat\\xe9/outside" in messages["Metadata/b"], messages


def test_unparseable_files_are_tracked_and_recorded(site, db):
    write(site, "notes.txt", b"n")
    write(site, "000123/Waveforms/garbage.bin", b"g")
    result = run_site(site, db)
    assert result.exit_code == ExitCode.FINDINGS
    assert set(current_rows(db)) == {"notes.txt", "000123/Waveforms/garbage.bin"}
    kinds = query(db, "SELECT srcfile, kind FROM scan_errors ORDER BY srcfile")
    assert kinds == [("000123/Waveforms/garbage.bin", "unparseable"), ("notes.txt", "unparseable")]
    assert query(db, "SELECT count(*) FROM registry")[0][0] == 0
    # unchanged on the next run: no new version, still reported
    again = run_site(site, db)
    assert again.label is None and again.errors.height == 2


@pytest.mark.skipif(os.name == "nt", reason="symlinks and FIFOs")
def test_symlinks_and_special_files_are_skipped_with_a_reason(site, db):
    write(site, "OMOP/real.csv", b"r")
    os.symlink(site / "OMOP/real.csv", site / "OMOP/link.csv")
    os.mkfifo(site / "OMOP/pipe")
    result = run_site(site, db)
    assert list(current_rows(db)) == ["OMOP/real.csv"]
    assert dict(result.errors.select("srcfile", "kind").iter_rows()) == {"OMOP/link.csv": "symlink", "OMOP/pipe": "special_file"}
    # how to follow it: the flag and the setting, where it goes
    said = dict(result.errors.select("srcfile", "message").iter_rows())["OMOP/link.csv"]
    assert "--follow-symlinks" in said and "[run]" in said
    # Followed, a link to a file of the site is said once, not listed twice (as a link to a folder of it); one
    # to a file outside the site is read as that file, under the link's path.
    outside = write(site.parent / "outside", "ext.csv", b"e")
    os.symlink(outside, site / "OMOP/ext.csv")
    followed = run_site(site, db, follow_symlinks=True)
    assert sorted(current_rows(db)) == ["OMOP/ext.csv", "OMOP/real.csv"] and followed.counts["added"] == 1
    assert dict(followed.errors.select("srcfile", "message").iter_rows()) == {
        "OMOP/link.csv": "link to OMOP/real.csv, a file of the site: not followed (it is listed under its own path)",
        "OMOP/pipe": "not a regular file (device, socket or FIFO); skipped"}


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_a_link_no_longer_followed_says_the_files_recorded_through_it_are_removed(site, db):
    """A run without --follow-symlinks (a cron line or `status` without the flag) after runs that followed them
    recorded every file reached through a link as removed, while the link's error said only "not followed": the
    removals were not tied to the setting that made them."""
    write(site, "OMOP/real.csv", b"r")
    outside = site.parent / "outside"
    write(outside, "ext.csv", b"e")
    write(outside, "wave/a.dat", b"a")
    write(outside, "wave/b.dat", b"b")
    os.symlink(outside / "ext.csv", site / "OMOP/ext.csv")
    os.symlink(outside / "wave", site / "waves")
    os.symlink(site / "OMOP/real.csv", site / "OMOP/unrecorded.csv")
    run_site(site, db, follow_symlinks=True, validate_site=False)
    assert sorted(current_rows(db)) == ["OMOP/ext.csv", "OMOP/real.csv", "waves/a.dat", "waves/b.dat"]
    result = run_site(site, db, validate_site=False, max_delete="all")
    assert result.counts["removed"] == 3 and sorted(current_rows(db)) == ["OMOP/real.csv"]
    said = dict(result.errors.select("srcfile", "message").iter_rows())
    assert said["OMOP/ext.csv"].endswith(
        "; the previous version recorded a file at its path: recorded as removed in this version "
        "(--follow-symlinks keeps it)")
    assert said["waves"].endswith(
        "; the previous version recorded 2 files under it: recorded as removed in this version "
        "(--follow-symlinks keeps them)")
    assert "recorded as removed" not in said["OMOP/unrecorded.csv"]


@pytest.mark.skipif(os.name == "nt", reason="symlinks and FIFOs")
def test_the_error_summary_lists_each_kinds_examples_under_its_own_heading(site, db):
    """With two kinds of errors, the summary gave both counts, then every example under the last kind's heading,
    as if all were of that kind."""
    write(site, "OMOP/real.csv", b"r")
    for i in range(12):
        os.symlink(site / "OMOP/real.csv", site / f"OMOP/link{i:02d}.csv")
    os.mkfifo(site / "OMOP/pipe")
    out = cli("run", "--site", str(site), "--db", str(db), "-q", "--no-validate")
    assert out.returncode == 1, out.stderr  # (errors: exit 1)
    errors = out.stdout.split("\nerrors: 13 (")[1].split("\n")[1:]
    # (each kind in words, its name as scan_errors holds it after them)
    assert errors[:3] == ["  not a regular file (special_file): 1",
                          "    OMOP/pipe: not a regular file (device, socket or FIFO); skipped",
                          "  link not followed (symlink): 12"], out.stdout
    assert [line.split(":")[0] for line in errors[3:8]] == [f"    OMOP/link{i:02d}.csv" for i in range(5)], out.stdout
    assert errors[8].startswith("  ... and 7 more: `chorus-batch report"), out.stdout  # 10 examples in all


def test_vanished_file_between_listing_and_hashing(site, db):
    write(site, "OMOP/keep.csv", b"k")
    write(site, "OMOP/gone.csv", b"g")

    class VanishingSource(LocalSource):
        def list_files(self, errors):
            batches = list(super().list_files(errors))
            (site / "OMOP/gone.csv").unlink()  # really gone before the hash stage
            yield from batches

    from chorus_batch.scan import Root

    result = scan_and_commit(db, [Root(VanishingSource(site))])
    assert list(current_rows(db)) == ["OMOP/keep.csv"]
    assert result.errors.filter(pl.col("kind") == "vanished")["srcfile"].to_list() == ["OMOP/gone.csv"]
    # a file no version recorded: nothing of it stays, and no next run records it as removed (the message said both)
    message, = result.errors.filter(pl.col("kind") == "vanished")["message"].to_list()
    assert "stays in this version" not in message and "records it as removed" not in message, message
    assert "no version recorded it, nor does this one" in message and "nothing to do unless it recurs" in message
    # a recorded file that changed, then vanished as it was to be hashed: its row stays, and the message says so and
    # what comes next ("disappeared" alone gave no next step)
    write(site, "OMOP/keep.csv", b"changed")
    (site / "OMOP/gone.csv").write_bytes(b"g")

    class VanishingKeep(LocalSource):
        def list_files(self, errors):
            batches = list(super().list_files(errors))
            (site / "OMOP/keep.csv").unlink()
            yield from batches

    result = scan_and_commit(db, [Root(VanishingKeep(site))])
    assert sorted(current_rows(db)) == ["OMOP/gone.csv", "OMOP/keep.csv"]
    message, = result.errors.filter(pl.col("kind") == "vanished")["message"].to_list()
    assert "what was recorded of it stays in this version; the next run records it as removed" in message, message
    assert "nothing to do unless it recurs" in message


def test_files_that_vanished_before_hashing_are_not_counted_as_hashed(site):
    """The summary said "hashed: 31 files, 2 B" when 30 of them had vanished before they could be read."""
    from chorus_batch.frames import empty_state
    from chorus_batch.scan import Root, scan

    write(site, "OMOP/keep.csv", b"k")
    for k in range(3):
        write(site, f"OMOP/gone{k}.csv", b"g")

    class VanishingSource(LocalSource):
        def list_files(self, errors):
            batches = list(super().list_files(errors))
            for k in range(3):
                (site / f"OMOP/gone{k}.csv").unlink()
            yield from batches

    scanned = scan([Root(VanishingSource(site))], empty_state(), based_on=None, workers=2)
    assert scanned.errors.filter(pl.col("kind") == "vanished").height == 3
    assert (scanned.n_hashed, scanned.bytes_hashed) == (1, 1)


def test_file_changing_while_hashed_is_recorded_and_keeps_the_previous_row(site, db):
    import threading

    big = write(site, "OMOP/big.csv", b"a" * 1_000)
    run_site(site, db)
    big.write_bytes(os.urandom(48 << 20))
    stop = threading.Event()

    def keep_writing():
        with open(big, "ab") as f:
            while not stop.is_set():
                f.write(b"z")
                f.flush()
                time.sleep(0.0005)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = run_site(site, db)
    finally:
        stop.set()
        writer.join()
    changed = result.errors.filter(pl.col("kind") == "changed_while_hashing")
    assert changed["srcfile"].to_list() == ["OMOP/big.csv"]
    # what it means and what to do (the path is the error's own column, not repeated)
    assert "kept" in changed["message"][0] and "run again" in changed["message"][0] and "big.csv" not in changed["message"][0]
    # nothing already recorded is lost: the old row stays current
    assert current_rows(db) == {"OMOP/big.csv": __import__("hashlib").md5(b"a" * 1_000).hexdigest()}


@pytest.mark.parametrize("linked", [False, True])  # a second name of its inode (a hard-linked backup tree): it keeps
@pytest.mark.parametrize("change", ["replaced", "deleted", "truncated"])  # the old bytes linked, st_nlink never falls to 0
def test_a_file_replaced_or_deleted_while_hashed_is_not_recorded_with_the_content_it_no_longer_has(site, change, linked,
                                                                                                   tmp_path):
    """A file replaced by a rename (an rsync or a re-export finishing) or deleted while its bytes were read kept its
    size and mtime under the open descriptor: the run recorded the old content's MD5 for a path that held other
    content, or none. Now the file is read again (the new content, with its own size and mtime), or said to be
    gone. (The change is made by the parser the hashing calls between its two looks at the file.)"""
    import hashlib

    from chorus_batch.workers import hash_one

    path = write(site, "OMOP/person.csv", b"person_id\n1\n")
    if linked:
        os.link(path, tmp_path / "backup.csv")
    done = []

    def change_once(f):
        if not done:
            done.append(f.read())
            if change == "replaced":
                write(site, "OMOP/.person.csv.new", b"person_id\n1\n2\n3\n")
                os.replace(site / "OMOP/.person.csv.new", path)
            elif change == "truncated":  # (as `> file` in a shell: size and mtime move, the descriptor reads on)
                os.truncate(path, 0)
            else:
                path.unlink()
        return None

    out = hash_one(LocalSource(site), "OMOP/person.csv", bytearray(1 << 16), change_once)
    if change != "deleted":
        assert not isinstance(out, tuple), out
        assert out.digest == hashlib.md5(path.read_bytes()).digest() and out.size == path.stat().st_size
    else:
        assert isinstance(out, tuple) and out[0] == "vanished", out
        assert "deleted or moved while this run went on" in out[1]

def test_a_file_rewritten_in_place_while_hashed_with_its_mtime_put_back_is_read_again(site):
    """A file overwritten at the same size while its bytes were read, its mtime then put back (a copy that keeps
    timestamps, `touch -d`), kept size and mtime between the hashing's two looks at it: the MD5 recorded was of the
    old bytes read before the write and the new ones after, which the path never held. Its change time shows the
    write: the file is read again."""
    import hashlib

    from chorus_batch.workers import hash_one

    old, new = b"person_id\n1\n" + b"a" * 200_000, b"person_id\n2\n" + b"b" * 200_000
    path = write(site, "OMOP/person.csv", old)
    st = path.stat()
    done = []

    def rewrite_once(f):
        if not done:
            done.append(f.read(64))
            with open(path, "r+b") as out:
                out.write(new)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        return None

    out = hash_one(LocalSource(site), "OMOP/person.csv", bytearray(1 << 16), rewrite_once)
    assert not isinstance(out, tuple), out
    assert out.digest == hashlib.md5(new).digest() and done


def test_a_file_whose_folder_became_a_file_before_it_was_hashed_is_vanished_not_unreadable(site):
    """Its folder replaced by a file between the listing and the hashing (a re-delivery as an archive): the file was
    "unreadable: cannot read: Not a directory", kept as if it were still there to be given permissions."""
    import shutil

    from chorus_batch.workers import hash_one

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    shutil.rmtree(site / "OMOP")
    (site / "OMOP").write_bytes(b"now a file")
    out = hash_one(LocalSource(site), "OMOP/person.csv", bytearray(1 << 16))
    assert isinstance(out, tuple) and out[0] == "vanished", out


def test_racily_clean_files_are_rehashed(site, db):
    path = write(site, "OMOP/a.csv", b"aaaa")
    run_site(site, db)  # mtime is within the racy window of this scan's start
    st = path.stat()
    path.write_bytes(b"bbbb")  # same size; restore the old mtime, as a coarse clock would show it
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = run_site(site, db)
    assert result.counts["replaced"] == 1
    assert current_rows(db)["OMOP/a.csv"] == __import__("hashlib").md5(b"bbbb").hexdigest()


def test_a_racily_clean_file_is_rehashed_after_a_run_that_did_not_list_it(site, db, tmp_path):
    """The racily-clean check took only the last run's scan start: a run in between that did not list the file (an
    append delivery from another folder) moved it past the file's mtime, and a write in the clock tick of the first
    run's read went unseen for good (the manifest kept the old MD5)."""
    path = write(site, "OMOP/a.csv", b"aaaa")
    write(site, "OMOP/k.csv", b"keep")
    run_site(site, db)  # a.csv's mtime is within the racy window of this scan's start
    st = path.stat()
    path.write_bytes(b"bbbb")  # same size, old mtime: a write in the same clock tick
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(2.1)  # the next run's scan starts past the racy window of a.csv's mtime
    delivery = tmp_path / "delivery"
    write(delivery, "OMOP/new.csv", b"new")
    assert run_site(delivery, db, mode="append").counts["added"] == 1
    result = run_site(site, db, max_delete="all")
    assert current_rows(db)["OMOP/a.csv"] == hashlib.md5(b"bbbb").hexdigest(), result.counts


def test_unchanged_stat_reuses_the_hash_and_rehash_forces_it(site, db):
    path = write(site, "OMOP/a.csv", b"aaaa")
    age(site)
    run_site(site, db)
    st = path.stat()
    path.write_bytes(b"bbbb")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # content changed behind an unchanged stat
    assert run_site(site, db).n_hashed == 0
    result = run_site(site, db, rehash=True)
    assert result.n_hashed == 1 and result.counts["replaced"] == 1


def test_rehash_is_a_re_verification_a_silent_change_is_an_error_and_the_reads_are_recorded(site, db):
    """--rehash reads every file: one whose bytes changed behind an unchanged size and mtime was recorded as a plain
    `replaced`, exit 0 (the rolling sample calls it file.silent_change, an error), and the unchanged files it read kept
    their old verified_ns (the summary called files just read "never read", in the cloud)."""
    path = write(site, "OMOP/a.csv", b"aaaa")
    write(site, "OMOP/b.csv", b"bbbb")
    age(site)
    run_site(site, db)
    with contextlib.closing(__import__("sqlite3").connect(db)) as con, con:
        con.execute("UPDATE source_files SET verified_ns = NULL")  # as an MD5 the storage held: never read
    st = path.stat()
    path.write_bytes(b"cccc")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # content changed behind an unchanged stat
    result = run_site(site, db, rehash=True)
    assert result.n_hashed == 2 and result.counts["replaced"] == 1
    assert query(db, "SELECT srcfile, kind FROM scan_errors") == [("OMOP/a.csv", "silent_change")]
    assert result.exit_code == ExitCode.FINDINGS
    assert result.verification["files_reverified"] == 2 and result.verification["never_verified"] == 0
    assert query(db, "SELECT count(*) FROM source_files WHERE time_invalid IS NULL AND verified_ns IS NULL") == [(0,)]
    # the summary said "re-verified: 2 unchanged files", one of them the file it had just found changed
    from chorus_batch.report.summary import summary_text
    assert result.verification["files_found_changed"] == 1
    line = next(line for line in summary_text(result).splitlines() if line.startswith("re-verified:"))
    assert line.startswith("re-verified: 2 files (8 B) this run, 1 unchanged and 1 whose bytes did not have the MD5 recorded "
                           "(recorded replaced);"), line
    again = run_site(site, db, rehash=True)  # nothing changed since: the line as it was
    assert again.verification["files_found_changed"] == 0
    line = next(line for line in summary_text(again).splitlines() if line.startswith("re-verified:"))
    assert line.startswith("re-verified: 2 unchanged files (8 B) this run;"), line


def test_touched_file_is_not_a_change_and_is_not_hashed_again(site, db):
    path = write(site, "OMOP/a.csv", b"aaaa")
    age(site, 100)
    run_site(site, db)
    past = time.time() - 50
    os.utime(path, (past, past))
    result = run_site(site, db)
    assert result.label is None and result.n_hashed == 1
    assert run_site(site, db).n_hashed == 0


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_manifest_and_its_companions_are_owner_only(site, db):
    write(site, WAVE)
    run_site(site, db)
    for path in [db, Path(f"{db}.state.parquet"), Path(f"{db}.lock")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_dry_run_writes_nothing(site, db):
    write(site, WAVE)
    result = run_site(site, db, dry_run=True)
    assert result.counts["added"] == 1 and result.label is None
    assert not db.exists()


def test_append_mode_keeps_unlisted_files_and_applies_the_delete_list(site, db, tmp_path):
    write(site, "OMOP/a.csv", b"a")
    write(site, "OMOP/b.csv", b"b")
    run_site(site, db)
    (site / "OMOP/a.csv").unlink()
    (site / "OMOP/b.csv").unlink()
    write(site, "OMOP/c.csv", b"c")
    deletions = tmp_path / "deleted.txt"
    deletions.write_text("# removed at the site\n./OMOP/a.csv\nOMOP/missing.csv\n")
    result = run_site(site, db, mode="append", delete_list=str(deletions))
    assert set(current_rows(db)) == {"OMOP/b.csv", "OMOP/c.csv"}
    assert result.counts["removed"] == 1 and result.counts["added"] == 1
    # b.csv, not listed, is carried over unchanged: the counts add up to the version's files (unchanged was 0)
    assert result.counts["unchanged"] == 1 and result.n_files == 2
    assert result.by_modality.filter(pl.col("change") == "unchanged").select("modality", "n").rows() == [("OMOP", 1)]
    assert query(db, "SELECT n_unchanged FROM versions ORDER BY label DESC LIMIT 1") == [(1,)]
    assert result.errors.filter(pl.col("kind") == "delete_list")["srcfile"].to_list() == ["OMOP/missing.csv"]


def test_an_append_run_whose_root_lists_nothing_where_files_were_recorded_is_refused(site, db, tmp_path):
    """`--mode append` on a root the previous version holds files under (the site, a delivery folder whose files
    stay) that lists none — an emptied folder, a mount point not mounted — ended "no changes since version ...",
    exit 0, every night the disk was missing: a cron took it for a quiet night. It is refused as full mode refuses
    it (exit 5, recorded in `runs`; `status` says it), and so is one whose exclusion globs leave out every file; a
    delivery folder of its own that holds nothing tonight (no recorded file under it) is a night with nothing
    delivered, and `--max-delete all` passes an emptied folder."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    (site / "OMOP/person.csv").rename(tmp_path / "person.csv")
    base = ("--no-validate", "--mode", "append", "--db", str(db), "-q")
    out = cli("run", "--site", str(site), *base)
    assert out.returncode == 5, out.stdout + out.stderr
    assert f"refused: root {site} lists no files at all, though the previous version had files there; nothing was " \
           "committed" in out.stderr and "holds its deliveries" in out.stderr, out.stderr
    assert "no changes since" not in out.stdout
    assert query(db, "SELECT exit_code FROM runs ORDER BY run_id DESC LIMIT 1") == [(5,)]
    assert cli("status", "--site", str(site), *base).returncode == 5
    tonight = tmp_path / "delivery-tonight"
    tonight.mkdir()
    assert cli("run", "--site", str(tonight), *base).returncode == 0
    assert cli("run", "--site", str(site), *base, "--max-delete", "all").returncode == 0
    (tmp_path / "person.csv").rename(site / "OMOP/person.csv")
    out = cli("run", "--site", str(site), *base, "--exclude", "person*")
    assert out.returncode == 5 and "the exclusion globs leave out every file root" in out.stderr, out.stderr
    # tonight's own folder whose delivery the user's globs leave out whole: files delivered, none recorded
    write(tonight, "OMOP/note.csv", b"note_id\n")
    out = cli("run", "--site", str(tonight), *base, "--exclude", "note*")
    assert out.returncode == 5 and "so none of them would be recorded" in out.stderr, out.stderr
    (tonight / "OMOP/note.csv").unlink()
    write(tonight, ".DS_Store", b"x")  # (the default list's: nothing was delivered)
    assert cli("run", "--site", str(tonight), *base).returncode == 0
    assert len(query(db, "SELECT label FROM versions")) == 1


def test_a_delete_list_line_is_taken_as_written_and_named_by_its_number(site, db, tmp_path):
    """A line with a space at either end, or a leading '/', was stripped and matched (' OMOP/a.csv' removed
    OMOP/a.csv; a name may end with a space), and the messages showed the stripped path. Such lines are refused by
    number before anything is recorded; './' and '\\' forms are read, and each message names its line."""
    for name in ("OMOP/a.csv", "OMOP/b.csv", "OMOP/c.csv", "OMOP/d.csv"):
        write(site, name, name.encode())
    run_site(site, db)
    for name in ("OMOP/a.csv", "OMOP/b.csv", "OMOP/c.csv"):
        (site / name).unlink()
    deletions = tmp_path / "deleted.txt"
    deletions.write_text("# removed\n OMOP/a.csv\nOMOP/b.csv\t\n/OMOP/c.csv\n")
    with pytest.raises(UsageError) as refused:
        run_site(site, db, mode="append", delete_list=str(deletions), max_delete="all")
    assert ("3 lines of the delete list are not site-relative paths as the manifest stores them (line 2 "
            "' OMOP/a.csv': starts or ends with a space or tab; line 3 'OMOP/b.csv\\t': starts or ends with a space "
            "or tab; line 4 '/OMOP/c.csv': starts with '/', an absolute path)") in str(refused.value)
    # nothing recorded: read before the manifest is opened, so not even a `runs` row
    assert len(query(db, "SELECT label FROM versions")) == 1 and len(query(db, "SELECT * FROM runs")) == 1
    deletions.write_text("./OMOP/a.csv\r\nOMOP\\b.csv\nOMOP/c.csv\nOMOP/d.csv\n")
    result = run_site(site, db, mode="append", delete_list=str(deletions), max_delete="all")
    assert set(current_rows(db)) == {"OMOP/d.csv"} and result.counts["removed"] == 3
    assert result.errors.filter(pl.col("kind") == "delete_list").select("srcfile", "message").rows() == [
        ("OMOP/d.csv", "listed for deletion (line 4) but still present in the tree; not removed")]
    deletions.write_text("# again\n./OMOP/a.csv\nOMOP/never.csv\n")
    result = run_site(site, db, mode="append", delete_list=str(deletions))
    assert result.errors.filter(pl.col("kind") == "delete_list")["message"].to_list() == [
        "listed for deletion (line 3) but not in the manifest; ignored"]


def test_a_delete_list_line_with_a_windows_absolute_path_is_refused_by_its_number(site, db, tmp_path):
    """A line copied from the Windows machine's Explorer (C:\\data\\site\\OMOP\\a.csv, \\\\server\\share\\...) was read
    as the site-relative 'C:/data/site/OMOP/a.csv': "not in the manifest; ignored", the other lines applied, and the file
    stayed recorded. Refused with its line as a leading '/' is, before anything is recorded, quoted as written."""
    write(site, "OMOP/a.csv", b"a")
    write(site, "OMOP/b.csv", b"b")
    run_site(site, db)
    (site / "OMOP/a.csv").unlink()
    (site / "OMOP/b.csv").unlink()
    deletions = tmp_path / "deleted.txt"
    deletions.write_bytes(b"\xef\xbb\xbfOMOP\\b.csv\r\nC:\\data\\site\\OMOP\\a.csv\r\n\\\\srv\\share\\OMOP\\a.csv\r\n")
    with pytest.raises(UsageError) as refused:
        run_site(site, db, mode="append", delete_list=str(deletions), max_delete="all")
    assert ("2 lines of the delete list are not site-relative paths as the manifest stores them (line 2 "
            "'C:\\data\\site\\OMOP\\a.csv': starts with a drive or network share, a Windows absolute path; line 3 "
            "'\\\\srv\\share\\OMOP\\a.csv': starts with a drive or network share, a Windows absolute path)"
            ) in str(refused.value), str(refused.value)
    assert "nor drive" in refused.value.fix
    assert len(query(db, "SELECT label FROM versions")) == 1 and set(current_rows(db)) == {"OMOP/a.csv", "OMOP/b.csv"}


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_a_delete_list_saved_on_windows_is_read(site, db, tmp_path, encoding):
    """A delete list with a byte-order mark (Notepad, Excel's "CSV UTF-8") had U+FEFF read into its first path, which
    was then "not in the manifest" and not removed; one saved as UTF-16 ("Unicode") could not be read at all."""
    write(site, "OMOP/a.csv", b"a")
    write(site, "OMOP/b.csv", b"b")
    run_site(site, db)
    (site / "OMOP/a.csv").unlink()
    deletions = tmp_path / "deleted.txt"
    deletions.write_bytes("OMOP/a.csv\r\n".encode(encoding))
    result = run_site(site, db, mode="append", delete_list=str(deletions))
    assert result.counts["removed"] == 1 and set(current_rows(db)) == {"OMOP/b.csv"}, result.errors
    assert result.errors.filter(pl.col("kind") == "delete_list").height == 0


def test_a_delete_list_applied_again_is_no_finding(site, db, tmp_path):
    """A site's delete list re-applied each night: a line for a file an earlier version removed said "not in the
    manifest; ignored", a finding, so every night exited 1. It is a note (naming the version that removed it)."""
    write(site, "OMOP/a.csv", b"a")
    write(site, "OMOP/b.csv", b"b")
    run_site(site, db)
    (site / "OMOP/a.csv").unlink()
    deletions = tmp_path / "deleted.txt"
    deletions.write_text("OMOP/a.csv\n")
    nightly = ("run", "--no-validate", "--mode", "append", "--delete-list", str(deletions), "--site", str(site),
               "--db", str(db))
    first = cli(*nightly)
    assert first.returncode == 0 and "removed  " in first.stdout, first.stdout + first.stderr
    (label,), = query(db, "SELECT label FROM versions ORDER BY label DESC LIMIT 1")
    again = cli(*nightly)
    assert again.returncode == 0 and "not in the manifest" not in again.stdout + again.stderr, again.stdout
    assert f"line 1, OMOP/a.csv: removed in version {label}); nothing to do" in again.stderr, again.stderr



def test_a_delete_list_line_naming_a_folder_says_so(site, db, tmp_path):
    """A line naming a folder of recorded files (to remove a whole session) was answered "not in the manifest;
    ignored", though the manifest held every file under it: the message now says it is a folder, of how many
    files, and how to list them."""
    for name in ("000001/Waveforms/Telemetry/1000/1000.hea", "000001/Waveforms/Telemetry/1000/1000.dat",
                 "000001/Waveforms/Telemetry/10001/10001.hea", "OMOP/a.csv"):
        write(site, name, name.encode())
    run_site(site, db)
    shutil.rmtree(site / "000001/Waveforms/Telemetry/1000")
    deletions = tmp_path / "deleted.txt"
    deletions.write_text("000001/Waveforms/Telemetry/1000\nOMOP/missing.csv\n")
    result = run_site(site, db, mode="append", delete_list=str(deletions))
    assert result.counts["removed"] == 0 and len(current_rows(db)) == 4
    assert result.errors.filter(pl.col("kind") == "delete_list").select("srcfile", "message").rows() == [
        ("000001/Waveforms/Telemetry/1000", "listed for deletion (line 1) but a folder of 2 recorded files, not a file; "
         "ignored: list its files instead (chorus-batch files --path 000001/Waveforms/Telemetry/1000)"),
        ("OMOP/missing.csv", "listed for deletion (line 2) but not in the manifest; ignored")]


def test_a_delete_list_line_in_other_case_or_unicode_form_names_the_recorded_path(site, db, tmp_path):
    """A delete list written on macOS (its names decomposed, NFD: 'cafe\u0301') or typed with other letter case on
    Windows was answered "not in the manifest; ignored", beside a recorded path that looks the same: the message
    now names the recorded spelling and how the two differ. Nothing is removed by such a line."""
    for name in ("Metadata/caf\u00e9.md", "Metadata/Notes.md", "OMOP/a.csv"):
        write(site, name, name.encode())
    run_site(site, db)
    for name in ("Metadata/caf\u00e9.md", "Metadata/Notes.md"):
        (site / name).unlink()
    deletions = tmp_path / "deleted.txt"
    deletions.write_text("Metadata/cafe\u0301.md\nMetadata/notes.md\nOMOP/missing.csv\n", encoding="utf-8")
    result = run_site(site, db, mode="append", delete_list=str(deletions))
    assert result.counts["removed"] == 0 and len(current_rows(db)) == 3
    assert result.errors.filter(pl.col("kind") == "delete_list").select("srcfile", "message").sort("srcfile").rows() == [
        ("Metadata/cafe\u0301.md", "listed for deletion (line 1) but not in the manifest, which records "
         "Metadata/caf\u00e9.md: the same path but for Unicode form (\u00e9 as one character or as e + accent, as macOS "
         "writes names); ignored: write the line as the manifest records it"),
        ("Metadata/notes.md", "listed for deletion (line 2) but not in the manifest, which records Metadata/Notes.md: "
         "the same path but for letter case; ignored: write the line as the manifest records it"),
        ("OMOP/missing.csv", "listed for deletion (line 3) but not in the manifest; ignored")]


def test_a_delete_list_line_with_a_backslash_names_the_recorded_file_that_has_one(site, db, tmp_path):
    """A backslash is a character of a POSIX (or S3) name, and the manifest tracks OMOP/a\\b.csv: its line was read
    with the backslash as a Windows separator (OMOP/a/b.csv), "not in the manifest; ignored", so no delete list could
    remove it. The line as written is taken where the manifest records it; else '\\' still separates."""
    for name in ("OMOP/a\\b.csv", "OMOP/c.csv", "OMOP/d.csv", "OMOP/e\\f.csv"):
        write(site, name, name.encode())
    run_site(site, db)
    for name in ("OMOP/a\\b.csv", "OMOP/c.csv"):
        (site / name).unlink()
    deletions = tmp_path / "deleted.txt"
    deletions.write_text("OMOP/a\\b.csv\nOMOP\\c.csv\nOMOP/e\\f.csv\n")
    result = run_site(site, db, mode="append", delete_list=str(deletions))
    assert set(current_rows(db)) == {"OMOP/d.csv", "OMOP/e\\f.csv"} and result.counts["removed"] == 2
    assert result.errors.filter(pl.col("kind") == "delete_list").select("srcfile", "message").rows() == [
        ("OMOP/e\\f.csv", "listed for deletion (line 3) but still present in the tree; not removed")]


def test_a_delete_list_line_quoted_as_files_shows_it_names_that_file(site, db, tmp_path):
    """A name with a space at its end (or a line break, or decomposed) is a name the manifest tracks, but its line was
    refused ("starts or ends with a space or tab"; the fix said to write it as `files` shows it, 'OMOP/c.csv ',
    which was then not in the manifest): no delete list could remove it. The quoted form `files` shows is read as
    the name it shows, exactly."""
    for name in ("OMOP/c.csv ", "OMOP/new\nline.csv", "Metadata/cafe\u0301.md", "OMOP/d.csv"):
        write(site, name, name.encode())
    run_site(site, db)
    for name in ("OMOP/c.csv ", "OMOP/new\nline.csv", "Metadata/cafe\u0301.md"):
        (site / name).unlink()
    shown = cli("files", "--db", str(db)).stdout  # the lines below are these, copied
    assert all(f"{name} " in shown for name in ("'OMOP/c.csv '", "'OMOP/new\\nline.csv'", "'Metadata/cafe\\u0301.md'"))
    deletions = tmp_path / "deleted.txt"
    deletions.write_text("'OMOP/c.csv '\n'OMOP/new\\nline.csv'\n'Metadata/cafe\\u0301.md'\n", encoding="utf-8")
    result = run_site(site, db, mode="append", delete_list=str(deletions), max_delete="all")
    assert set(current_rows(db)) == {"OMOP/d.csv"} and result.counts["removed"] == 3, result.errors
    assert result.errors.filter(pl.col("kind") == "delete_list").height == 0


def test_delete_list_outside_append_mode_is_a_usage_error(site, db, tmp_path):
    with pytest.raises(UsageError, match="append mode"):
        run_site(site, db, delete_list=str(tmp_path / "x"))


def test_parquet_snapshots_are_partitioned_by_version(site, db, tmp_path):
    write(site, WAVE, b"1")
    snapshots = tmp_path / "snap"
    result = run_site(site, db, parquet=str(snapshots))
    folder = snapshots / f"version={result.label}"
    manifest = pl.read_parquet(folder / "manifest.parquet")
    changes = pl.read_parquet(folder / "changes.parquet")
    assert manifest["srcfile"].to_list() == [WAVE]
    assert changes["change"].to_list() == ["added"]


def test_a_snapshot_a_killed_run_left_incomplete_is_written_by_the_next_run(site, db, tmp_path):
    write(site, WAVE, b"1")
    snapshots = tmp_path / "snap"
    label = run_site(site, db, parquet=str(snapshots)).label
    folder = snapshots / f"version={label}"
    (folder / "findings.parquet").unlink()  # killed after the commit, before its snapshot was written
    again = run_site(site, db, parquet=str(snapshots))
    assert again.label is None  # nothing changed: no version, but the latest one's snapshot is complete
    assert pl.read_parquet(folder / "manifest.parquet")["srcfile"].to_list() == [WAVE]
    assert (folder / "findings.parquet").is_file()
    kept = (folder / "manifest.parquet").stat().st_mtime_ns
    run_site(site, db, parquet=str(snapshots))
    assert (folder / "manifest.parquet").stat().st_mtime_ns == kept  # a complete snapshot is not written again


def test_unreadable_directory_and_file_keep_their_rows(site, db):
    """Permission errors are recorded; nothing recorded earlier is removed because of them."""
    import json

    write(site, "000001/Waveforms/000001_20200101_101010_60.dat", b"1")
    write(site, "000002/Waveforms/000002_20200101_101010_60.dat", b"2")
    secret = write(site, "OMOP/secret.csv", b"s")
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db), "--json", "-q"]
    assert run_without_override(args).returncode == 0
    secret.write_bytes(b"changed")
    with unreadable(site / "000002", secret):
        second = run_without_override(args)
    assert second.returncode == ExitCode.FINDINGS, second.stderr
    summary = json.loads(second.stdout)
    assert summary["counts"]["removed"] == 0
    assert summary["errors"]["by_kind"] == {"unreadable": 1, "unreadable_dir": 1}
    said = {e["srcfile"]: e["message"] for e in summary["errors"]["examples"]}
    assert said["OMOP/secret.csv"] == "permission denied: this user may not read the file (give it read permission)"
    # a folder it cannot list: what that means for its recorded files and what to do
    assert said["000002/"].startswith("cannot list directory: Permission denied") and "kept" in said["000002/"]
    assert "permission" in said["000002/"].split("Permission denied", 1)[1]
    assert set(current_rows(db)) == {
        "000001/Waveforms/000001_20200101_101010_60.dat", "000002/Waveforms/000002_20200101_101010_60.dat", "OMOP/secret.csv"}
    # readable again: the change is picked up
    third = run_without_override(args)
    assert json.loads(third.stdout)["counts"]["replaced"] == 1


def test_many_unreadable_folders_keep_their_rows_and_a_removed_one_is_removed(site, db):
    """Each folder that could not be listed was a starts_with over every recorded row (1,000 of them over 1M rows:
    6.7 s per partition); from frames.SORTED_FROM folders on they are ranges in the sorted paths. The rows kept are
    the same: every file under the unreadable folders, none of a folder really removed."""
    import json

    from chorus_batch.frames import SORTED_FROM

    persons = [f"{k:06d}" for k in range(1, SORTED_FROM + 12)]
    for person in persons:
        write(site, f"{person}/Waveforms/{person}_20200101_101010_60.dat", person.encode())
        write(site, f"{person}/Waveforms/{person}_20200102_101010_60.dat", person.encode())
    write(site, "OMOP/person.csv", b"person_id\n")
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db), "--json", "-q"]
    assert run_without_override(args).returncode == 0
    shutil.rmtree(site / persons[-1])
    with unreadable(*(site / person for person in persons[:-1])):
        second = run_without_override(args)
    assert second.returncode == ExitCode.FINDINGS, second.stderr
    summary = json.loads(second.stdout)
    assert summary["errors"]["by_kind"] == {"unreadable_dir": len(persons) - 1}
    assert summary["counts"]["removed"] == 2
    assert set(current_rows(db)) == {"OMOP/person.csv"} | {
        f"{p}/Waveforms/{p}_2020010{day}_101010_60.dat" for p in persons[:-1] for day in (1, 2)}


def test_followed_link_whose_target_cannot_be_reached_keeps_the_files_under_it(site, db, tmp_path):
    """A followed link to a folder outside the site (data on another disk) whose target this user can no longer
    reach (EACCES; on a cluster also ESTALE, EIO) was not looked into: its files were recorded as removed, where
    a folder of the site that cannot be listed keeps them."""
    import json

    outside = tmp_path / "archive"
    write(outside, "store/000001_20200101_101010_60.dat", b"a")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (site / "000001").mkdir()
    os.symlink(outside / "store", site / "000001" / "Waveforms")
    args = ["run", "--no-validate", "--follow-symlinks", "--site", str(site), "--db", str(db), "--json", "-q"]
    first = run_without_override(args)
    assert first.returncode == 0, first.stdout
    assert "000001/Waveforms/000001_20200101_101010_60.dat" in current_rows(db)
    with unreadable(outside):
        second = run_without_override(args)
    assert second.returncode == ExitCode.FINDINGS, second.stderr
    summary = json.loads(second.stdout)
    assert summary["counts"]["removed"] == 0
    assert summary["errors"]["by_kind"] == {"unreadable_link": 1}
    said = {e["srcfile"]: e["message"] for e in summary["errors"]["examples"]}
    assert "Permission denied" in said["000001/Waveforms"] and "kept" in said["000001/Waveforms"]
    assert "000001/Waveforms/000001_20200101_101010_60.dat" in current_rows(db)


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_followed_link_whose_target_is_gone_keeps_its_files_until_the_link_is_removed(site, db, tmp_path):
    """A followed link into another file system that is not mounted now (its target missing) had every file recorded
    under it removed, then added again, with a new history and a new upload, once it was mounted again. Its files
    are kept, as those of a folder that cannot be listed, until the link itself is removed."""
    disk = tmp_path / "disk"
    write(disk, "store/000001_20200101_101010_60.dat", b"a")
    write(disk, "one.csv", b"o")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (site / "000001").mkdir()
    os.symlink(disk / "store", site / "000001" / "Waveforms")
    os.symlink(disk / "one.csv", site / "OMOP" / "linked.csv")
    first = run_site(site, db, validate_site=False, follow_symlinks=True)
    recorded = current_rows(db)
    assert "000001/Waveforms/000001_20200101_101010_60.dat" in recorded and "OMOP/linked.csv" in recorded
    disk.rename(tmp_path / "unmounted")
    second = run_site(site, db, validate_site=False, follow_symlinks=True)
    assert second.counts["removed"] == 0 and current_rows(db) == recorded
    said = dict(second.errors.filter(pl.col("kind") == "broken_symlink").select("srcfile", "message").iter_rows())
    assert set(said) == {"000001/Waveforms", "OMOP/linked.csv"}
    assert "kept" in said["000001/Waveforms"] and "remove the link" in said["000001/Waveforms"]
    (tmp_path / "unmounted").rename(disk)  # mounted again: the same files, nothing added
    third = run_site(site, db, validate_site=False, follow_symlinks=True)
    assert third.counts["added"] == 0 and third.label is None and first.label is not None
    disk.rename(tmp_path / "unmounted")
    (site / "000001" / "Waveforms").unlink()  # the link removed: its files are removed
    fourth = run_site(site, db, validate_site=False, follow_symlinks=True)
    assert fourth.counts["removed"] == 1 and "OMOP/linked.csv" in current_rows(db)


def run_without_override(args: list[str]):
    """The real CLI, subject to file permissions even when the tests run as root
    (root's permission-override capabilities are dropped with util-linux setpriv)."""
    import subprocess
    import sys

    prefix = []
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    return subprocess.run([*prefix, sys.executable, "-m", "chorus_batch", *args], capture_output=True, text=True, timeout=120)


def test_unreadable_site_root_fails_without_touching_the_manifest(site, db):
    write(site, "OMOP/a.csv", b"a")
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db), "-q"]
    assert run_without_override(args).returncode == 0
    before = current_rows(db)
    with unreadable(site):
        out = run_without_override(args)
    assert out.returncode == ExitCode.FAILED, out.stderr
    assert "cannot list the site root" in out.stderr and "fix:" in out.stderr
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions")[0][0] == 1


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_folder_that_can_be_listed_but_not_searched_is_named_as_the_cause(site, db):
    """`chmod -R 644` takes the search (x) permission off every folder: a person folder can then be listed, but no
    folder in it opened. The message named each folder below it ("give this user read and search (x) permission on
    it"), which had both: the site changed them and the run failed the same way. It names the folder without x."""
    write(site, WAVE, b"w")
    write(site, "000123/Images/CT/7/1.2/1.dcm", b"d")
    write(site, "OMOP/a.csv", b"a")
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db)]
    os.chmod(site / "000123", 0o644)
    try:
        out = run_without_override(args)
    finally:
        os.chmod(site / "000123", 0o755)
    assert out.returncode == 1, out.stderr
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("000123/")]
    assert len(lines) == 2 and all(("give this user search (x) permission on 000123/," in line
                                    and "may be listed but not searched" in line) for line in lines), out.stdout


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_root_whose_folders_cannot_be_listed_is_not_taken_for_an_unmounted_one(site, db):
    """A nightly run under another user, the site's folders 0700: the root lists no file, each folder is an
    unreadable_dir whose recorded files are kept, and nothing would be removed. It was refused as an unmounted file
    system (exit 5, "check that each root named is mounted"), the folders' permission errors unsaid. It is now what
    it is: no file removed, the folders named with what to do (exit 1)."""
    write(site, WAVE, b"w")
    write(site, "OMOP/a.csv", b"a")
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db)]
    assert run_without_override(args).returncode == 0
    before = current_rows(db)
    with unreadable(site / "000123", site / "OMOP"):
        out = run_without_override(args)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "mounted" not in out.stdout + out.stderr
    assert "000123/: cannot list directory: Permission denied" in out.stdout and "OMOP/: cannot list" in out.stdout
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions")[0][0] == 1


def test_a_committed_runs_change_set_is_read_from_the_manifest_when_asked(site, db):
    """The run does not hold a committed version's change set (a first run's is every file): `change_set`
    reads it from the manifest, path by path with each file's modality, person, size and MD5; a dry run's
    (nothing committed) is held."""
    write(site, WAVE, b"1")
    write(site, "OMOP/person.csv", b"person_id\n123\n")
    first = run_site(site, db, validate_site=False)
    write(site, WAVE, b"2")
    (site / "OMOP" / "person.csv").unlink()
    dry = run_site(site, db, validate_site=False, dry_run=True)
    second = run_site(site, db, validate_site=False)
    assert first._change_set is None and second._change_set is None  # not held after the run
    assert first.change_set.select("change", "srcfile", "modality", "person_id", "size").rows() == [
        ("added", "000123/Waveforms/000123_20200101_101010_60.dat", "Waveforms", "000123", 1),
        ("added", "OMOP/person.csv", "OMOP", None, 14)]
    assert second.change_set.select("version", "change", "srcfile", "size").rows() == [
        (second.label, "removed", "OMOP/person.csv", 14), (second.label, "replaced", WAVE, 1)]
    assert second.change_set["md5"].to_list()[1] == tree_md5(site)[WAVE]
    assert dry._change_set is not None  # nothing committed: held, as it would be written
    assert dry.change_set.select("change", "srcfile").rows() == second.change_set.select("change", "srcfile").rows()


@pytest.mark.skipif(os.name == "nt", reason="symlinks")
def test_the_summary_points_to_what_lists_every_problem_of_a_version(site, db):
    # "... and 2 more: chorus-batch changes --json, or query scan_errors": `changes --json` lists the changes only
    from chorus_batch.report.summary import summary_text
    from chorus_batch.review import open_manifest

    for i in range(12):
        write(site, f"stray/{i:02d}.txt", b"x")  # fit no pattern: a problem each, more than the summary's 10
    result = run_site(site, db, validate_site=False)
    more = next(line for line in summary_text(result).splitlines() if "... and 2 more" in line)
    assert "changes --json" not in more and f".scan_errors({result.label!r})" in more, more
    assert open_manifest(db).scan_errors(result.label).height == 12
    # the command named works pasted in another folder (it was a bare `chorus-batch report`: no manifest, no --out)
    import shlex

    report = shlex.split(more.split("`", 2)[1])
    assert report[:2] == ["chorus-batch", "report"], more
    elsewhere = site.parent / "elsewhere"
    elsewhere.mkdir()
    done = cli(*report[1:], cwd=elsewhere)
    assert done.returncode == 0 and (elsewhere / "report.html").stat().st_size, done.stderr


def test_the_summary_says_where_a_runs_problems_were_recorded(site, db):
    """"errors: N (recorded in scan_errors)" was printed whatever was written: a run that committed no version
    keeps problems the latest version does not have in run_errors (scan_errors held none of them), and a dry run
    writes nothing."""
    from chorus_batch.report.summary import summary_text

    write(site, "OMOP/real.csv", b"r")
    os.symlink(site / "OMOP/real.csv", site / "OMOP/link.csv")
    first = run_site(site, db, validate_site=False)
    assert "errors: 1 (recorded in scan_errors with version " + first.label in summary_text(first)
    same = run_site(site, db, validate_site=False)  # nothing changed, the same problem: the latest version holds it
    assert same.label is None and f"the same as version {first.label}'s, recorded with it in scan_errors" in summary_text(same)
    os.symlink(site / "OMOP/real.csv", site / "OMOP/link2.csv")  # a new problem, no file changed: no version
    other = run_site(site, db, validate_site=False)
    assert other.label is None and "no version was committed: recorded with this run in run_errors" in summary_text(other)
    assert query(db, "SELECT count(*) FROM run_errors")[0][0] == 2
    dry = run_site(site, db, validate_site=False, dry_run=True)
    text = summary_text(dry)
    assert "nothing was written" in text and "recorded in" not in text


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_file_whose_folder_is_made_unenterable_after_the_listing_names_the_folder(site):
    """A person folder made `chmod 000` while a run hashes (listed, then closed): each of its files was refused with
    "this user may not read the file (give it read permission)", though the files could be read and the folder was
    the cause. The hashing's message names the folder that may not be entered (the listing's does so too)."""
    import subprocess
    import sys

    write(site, WAVE, b"w")
    write(site, "OMOP/a.csv", b"a")
    code = ("import sys; from chorus_batch.sources.local import LocalSource; from chorus_batch.workers import hash_one; "
            "print(hash_one(LocalSource(sys.argv[1]), sys.argv[2], bytearray(1 << 16)))")
    prefix = []
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]

    def outcome(path: str) -> str:
        out = subprocess.run([*prefix, sys.executable, "-c", code, str(site), path], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    with unreadable(site / "000123"):
        said = outcome(WAVE)
    assert "may not enter its folder 000123/" in said and "may not read the file" not in said, said
    with unreadable(site / "OMOP" / "a.csv"):  # the file's own permission: the file named, as before
        said = outcome("OMOP/a.csv")
    assert "may not read the file (give it read permission)" in said and "folder" not in said, said


def test_a_folder_renamed_aside_and_back_while_it_is_listed_keeps_its_recorded_files(site, db, monkeypatch):
    """A folder listed, then renamed aside before its files were looked at, and back (a sync tool's or an editor's
    move, a folder renamed to and fro during the walk): each file was `vanished`, "this run did not list it", and the
    version recorded it as removed though it was there at the commit. Such a file keeps what was recorded of it, as one
    gone while it is hashed does, and the next run finds it unchanged."""
    write(site, WAVE, b"w")
    write(site, "OMOP/a.csv", b"a")
    age(site)
    run_site(site, db, validate_site=False, workers=1)
    before = current_rows(db)
    folder = str(site / "000123" / "Waveforms")
    real = os.scandir

    class Aside:  # the folder's names read, the folder moved aside, its entries handed out, the folder put back
        def __init__(self, path):
            with real(path) as it:
                self.entries = list(it)
            os.rename(folder, folder + ".aside")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            os.rename(folder + ".aside", folder)

        def __iter__(self):
            return iter(self.entries)

    monkeypatch.setattr(os, "scandir", lambda path: Aside(path) if os.fspath(path) == folder else real(path))
    second = run_site(site, db, validate_site=False, workers=1)
    monkeypatch.undo()
    assert (site / WAVE).read_bytes() == b"w"  # there at the commit
    assert second.counts["removed"] == 0 and current_rows(db) == before, second.counts
    said = second.errors.filter(pl.col("srcfile") == WAVE)
    assert said["kind"].to_list() == ["vanished"] and "what was recorded of it stays in this version" in said["message"][0]
    third = run_site(site, db, validate_site=False, workers=1)
    assert third.label is None and third.counts["removed"] == 0 and third.errors.height == 0


@pytest.mark.parametrize("back", ["before_entered", "while_walked"])
def test_a_folder_renamed_aside_and_back_while_its_folder_is_listed_keeps_its_recorded_files(site, db, monkeypatch,
                                                                                            back):
    """A folder (Waveforms/EEG) renamed to EEG2 and back (a sync tool's or an editor's move) while the walk ran: its
    folder was listed while it was EEG2, and EEG2 was gone when entered (or, entered, its own folders were): EEG was
    never listed, and the version recorded every file under it as removed though all were there at the commit (the
    next run added them all back). The listing of Waveforms/ is out of date: nothing recorded under it is removed in
    this version; a file really removed there meanwhile is recorded removed by the next run."""
    for rel in ("EEG/a.dat", "EEG/sub/b.dat", "gone.dat"):
        write(site, f"000123/Waveforms/{rel}", rel.encode())
    write(site, "OMOP/a.csv", b"a")
    age(site)
    run_site(site, db, validate_site=False, workers=1)
    before = current_rows(db)
    waveforms = str(site / "000123" / "Waveforms")
    eeg, eeg2 = os.path.join(waveforms, "EEG"), os.path.join(waveforms, "EEG2")
    os.remove(os.path.join(waveforms, "gone.dat"))  # a real removal, in the folder whose listing is out of date
    real = os.scandir

    class Renamed:  # the folder renamed aside, its folder listed, the folder put back (here or once it is listed)
        def __init__(self, path):
            path = os.fspath(path)
            if path == waveforms:
                os.rename(eeg, eeg2)
            with real(path) as it:
                self.entries = list(it)
            if (path == waveforms) == (back == "before_entered"):
                os.rename(eeg2, eeg)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def __iter__(self):
            return iter(self.entries)

    seen = (waveforms, eeg2)
    monkeypatch.setattr(os, "scandir", lambda path=".": Renamed(path) if not isinstance(path, int) and os.fspath(path)
                        in seen else real(path))
    second = run_site(site, db, validate_site=False, workers=1)
    monkeypatch.undo()
    assert sorted(p.name for p in Path(eeg).rglob("*.dat")) == ["a.dat", "b.dat"]  # there at the commit
    assert second.counts["removed"] == 0 and current_rows(db) == before, second.counts
    said = second.errors.filter(pl.col("kind") == "vanished_dir")
    assert said["srcfile"].to_list() == ["000123/Waveforms/EEG2/"], second.errors
    assert ("nothing recorded under 000123/Waveforms/ is removed in this version" in said["message"][0]
            and "the next run records what really changed" in said["message"][0]), said["message"][0]
    third = run_site(site, db, validate_site=False, workers=1)
    gone = third.errors.filter(pl.col("kind").str.starts_with("vanished"))
    assert third.counts["removed"] == 1 and gone.height == 0, (third.counts, gone)
    assert set(current_rows(db)) == set(before) - {"000123/Waveforms/gone.dat"}


def test_a_first_run_whose_every_file_is_unreadable_ends_with_findings_not_refused(site, db):
    """A first run that lists files none of which can be read (permissions) records no version but is not the
    refusal of a root that lists nothing (exit 5): it is exit 1 with each file's error recorded with the run, as the
    same files unreadable are once a version exists, and the summary says no first version was committed and why."""
    import json

    files = [write(site, "OMOP/person.csv", b"person_id\n1\n"), write(site, "OMOP/visit_occurrence.csv", b"v\n")]
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db), "-q"]
    with unreadable(*files):
        first = run_without_override(args)
        as_json = run_without_override([*args, "--json"])
    assert first.returncode == ExitCode.FINDINGS, first.stdout + first.stderr
    assert "no file the site lists could be recorded (2 errors, below), so no first version was committed" in first.stdout
    assert "refused" not in first.stderr and "permission denied" in first.stdout, first.stdout
    assert as_json.returncode == ExitCode.FINDINGS and json.loads(as_json.stdout)["errors"]["total"] == 2, as_json.stdout
    assert query(db, "SELECT exit_code, version FROM runs") == [(1, None), (1, None)]
    assert query(db, "SELECT count(*) FROM run_errors") == [(4,)]
    assert query(db, "SELECT count(*) FROM versions") == [(0,)]
