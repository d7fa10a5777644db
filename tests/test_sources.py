"""Sources: the local fast path (in-process and with worker processes) and fsspec."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from chorus_batch.sources import FsspecSource, LocalSource, open_source
from chorus_batch.testdata import Spec, write_snapshot

from conftest import cli, current_rows, query, settings, tree_md5, write


def listing(source) -> tuple[pl.DataFrame, list]:
    errors: list = []
    table = pa.Table.from_batches(list(source.list_files(errors)))
    return pl.from_arrow(table).sort("srcfile"), errors


def test_worker_processes_list_the_same_tree_as_one_process(site):
    write_snapshot(site, Spec(persons=40, files_per_person=15, size=10, seed=1))
    one, _ = listing(LocalSource(site, workers=1))
    many, _ = listing(LocalSource(site, workers=2, inprocess_budget_s=0))
    assert one.height == len(tree_md5(site))
    assert one.equals(many)
    assert set(one["srcfile"]) == set(tree_md5(site))


def test_paths_are_posix_and_site_relative(site):
    write(site, "000001/Images/ST/SE/000001_20200101_101010_CT_SE_1.dcm")
    frame, _ = listing(LocalSource(site))
    assert frame["srcfile"].to_list() == ["000001/Images/ST/SE/000001_20200101_101010_CT_SE_1.dcm"]


def test_hash_is_streamed_md5(site):
    import hashlib

    data = bytes(range(256)) * 5000
    write(site, "OMOP/x.csv", data)
    out = LocalSource(site).hash_file("OMOP/x.csv", bytearray(64 * 1024))
    assert out.md5 == hashlib.md5(data).hexdigest() and out.size == len(data)


def test_fsspec_source_runs_the_same_pipeline(tmp_path):
    import fsspec

    from chorus_batch import run

    fs = fsspec.filesystem("memory")
    fs.pipe({"/site/OMOP/person.csv": b"person_id\n1\n", "/site/000001/Waveforms/000001_20200101_101010_60.dat": b"w"})
    assert isinstance(open_source("memory://site"), FsspecSource)
    db = tmp_path / "m.sqlite"
    result = run(settings("memory://site", db))
    assert result.counts["added"] == 2
    import hashlib

    assert current_rows(db) == {
        "OMOP/person.csv": hashlib.md5(b"person_id\n1\n").hexdigest(),
        "000001/Waveforms/000001_20200101_101010_60.dat": hashlib.md5(b"w").hexdigest(),
    }
    fs.rm("/site", recursive=True)


def test_a_cloud_root_spelt_with_or_without_a_trailing_slash_is_one_root(tmp_path):
    """`--site az://c/site/` one night and `az://c/site` the next added a second `roots` row for the same prefix (and
    a third for `site//`), recorded each file under another root. The URL is recorded without the '/' after its path,
    and a manifest that recorded it with one (an older release) finds it again under either spelling."""
    import fsspec

    from chorus_batch import run

    fs = fsspec.filesystem("memory")
    fs.pipe({"/trail/OMOP/person.csv": b"person_id\n1\n", "/trail/000001/Waveforms/a.dat": b"w"})
    db = tmp_path / "m.sqlite"
    try:
        assert run(settings("memory://trail/", db, validate=False)).counts["added"] == 2
        for spelt in ("memory://trail", "memory://trail//", "memory://trail/"):
            again = run(settings(spelt, db, validate=False))
            assert again.label is None and again.counts["unchanged"] == 2, (spelt, again.counts)
        assert query(db, "SELECT root_id, location FROM roots") == [(1, "memory://trail")]
        with contextlib.closing(sqlite3.connect(db)) as con, con:  # as an older release recorded it
            con.execute("UPDATE roots SET location = 'memory://trail/'")
        for spelt in ("memory://trail", "memory://trail/"):
            assert run(settings(spelt, db, validate=False)).label is None
        assert query(db, "SELECT root_id FROM roots") == [(1,)]
        assert query(db, "SELECT DISTINCT root_id FROM source_files") == [(1,)]
    finally:
        fs.rm("/trail", recursive=True)


def test_a_file_replaced_by_a_link_is_not_read_through_it_where_open_cannot_refuse_links(tmp_path, monkeypatch):
    """A run that does not follow links refuses a listed file replaced by a link since (open with O_NOFOLLOW). Windows
    has no O_NOFOLLOW: the link was read through there, its target (outside the site) hashed as the site's file. The
    name is now checked after the open; a regular file still opens."""
    from chorus_batch.sources import local

    monkeypatch.setattr(local, "_O_NOFOLLOW", 0)  # as on Windows
    outside = write(tmp_path / "elsewhere", "person.csv", b"person_id\n2\n")
    plain = write(tmp_path / "site", "OMOP/a.csv", b"a")
    link = tmp_path / "site" / "OMOP" / "person.csv"
    link.symlink_to(outside)
    with pytest.raises(OSError, match="replaced by a symbolic link since it was listed"):
        local._open_regular(str(link), nofollow=True)
    os.close(local._open_regular(str(link))[0])  # (following links: read through it)
    os.close(local._open_regular(str(plain), nofollow=True)[0])


def test_a_modality_root_is_scanned_and_checked(tmp_path):
    from chorus_batch import run

    main, waves = tmp_path / "main", tmp_path / "waves"
    write(main, "OMOP/person.csv", b"p")
    write(waves, "000001/Waveforms/000001_20200101_101010_60.dat", b"w")
    write(waves, "000001/Images/ST/SE/000001_20200101_101010_CT_SE_1.dcm", b"i")
    db = tmp_path / "m.sqlite"
    result = run(settings(main, db, roots={"Waveforms": str(waves)}))
    assert set(current_rows(db)) == {
        "OMOP/person.csv", "000001/Waveforms/000001_20200101_101010_60.dat", "000001/Images/ST/SE/000001_20200101_101010_CT_SE_1.dcm"}
    (message,) = result.errors.filter(pl.col("kind") == "unparseable")["message"].to_list()
    assert "under the Waveforms root classifies as Images" in message


def test_worker_processes_hash_like_one_thread(site):
    import hashlib

    from chorus_batch.hashing import PROCESS_MIN_FILES, hash_files

    for i in range(PROCESS_MIN_FILES + 100):
        write(site, f"OMOP/f{i:05d}.csv", str(i).encode())
    frame, _ = listing(LocalSource(site))
    todo = frame.select("srcfile", "size", "mtime_ns", root_id=pl.lit(0, pl.Int64))
    todo = pl.concat([todo, pl.DataFrame({"srcfile": ["OMOP/gone.csv"], "size": [1], "mtime_ns": [0], "root_id": [0]})],
                     how="vertical_relaxed").sort("srcfile")
    source = LocalSource(site)
    in_processes = hash_files([source], todo, workers=2)
    in_thread = hash_files([source], todo, workers=1)
    assert in_processes.equals(in_thread)
    row = in_processes.filter(pl.col("srcfile") == "OMOP/f00007.csv").row(0, named=True)
    assert row["md5"] == hashlib.md5(b"7").hexdigest() and row["hashed_size"] == 1
    gone = in_processes.filter(pl.col("srcfile") == "OMOP/gone.csv").row(0, named=True)
    assert (gone["md5"], gone["error_kind"]) == (None, "vanished")


def test_worker_functions_run_in_spawned_processes(site):
    """Windows and macOS start workers with spawn: the functions must import and pickle cleanly."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from chorus_batch.sources import walk_local
    from chorus_batch.workers import hash_chunk

    write(site, "OMOP/a.csv", b"abc")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        walked = pool.submit(walk_local, str(site), ["OMOP"], False).result()
        hashed = pool.submit(hash_chunk, LocalSource(site), ["OMOP/a.csv"]).result()
    assert walked.chunks[0][0] == ["OMOP/a.csv"]
    assert hashed.digests.hex() == __import__("hashlib").md5(b"abc").hexdigest()


def test_a_folder_replaced_by_a_file_while_the_tree_is_listed_is_said_gone_not_a_permission_problem(site):
    """The root's folders are listed, then walked (by worker processes on a large site): a person folder replaced by
    a file in between (a re-delivery as an archive) was "cannot list directory: Not a directory; ... give this user
    read and search (x) permission on it", advice that changes nothing. It is said as a folder gone now."""
    import shutil

    from chorus_batch.walk import walk_local

    write(site, "000001/Metadata/a.txt", b"a")
    write(site, "000002/Metadata/b.txt", b"b")
    top = walk_local(str(site), [""], False, collect_dirs=True)
    shutil.rmtree(site / "000001")
    (site / "000001").write_bytes(b"now a file")
    walked = walk_local(str(site), sorted(top.subdirs), False)
    assert [chunk[0] for chunk in walked.chunks] == [["000002/Metadata/b.txt"]]
    assert [error[:2] for error in walked.errors] == [("000001/", "vanished_dir")], walked.errors
    said = walked.errors[0][2]
    assert said.startswith("directory disappeared (deleted, moved, or replaced by a file) after its folder was listed, "
                           "so that listing of the site root is out of date") and "permission" not in said, said


def test_a_folder_replaced_by_a_link_while_the_tree_is_listed_is_not_walked_through_it(site, tmp_path):
    """The root's folders are listed, then walked (by worker processes, long after on a large site): a person folder
    moved to another disk and linked back in between was walked through the link by a run that does not follow links,
    its files outside the site listed, hashed and recorded as the site's. It is said as the next run says the link."""
    import shutil

    from chorus_batch.walk import walk_local

    write(site, "000001/Metadata/a.txt", b"a")
    write(site, "000002/Metadata/b.txt", b"b")
    write(tmp_path / "other_disk", "000001/Metadata/a.txt", b"a")
    write(tmp_path / "other_disk", "000001/private/key.txt", b"not the site's")
    top = walk_local(str(site), [""], False, collect_dirs=True)
    shutil.rmtree(site / "000001")
    (site / "000001").symlink_to(tmp_path / "other_disk" / "000001")
    walked = walk_local(str(site), sorted(top.subdirs), False)
    assert [chunk[0] for chunk in walked.chunks] == [["000002/Metadata/b.txt"]] and not walked.linked
    assert walked.errors == [("000001", "symlink", "symbolic link not followed (a folder when the tree's listing "
                              "began, replaced by a link since; --follow-symlinks, or follow_symlinks = true in [run] "
                              "of chorus.toml, follows it)")], walked.errors
    # as a folder below it is walked too, and as the next run's listing says it
    assert walk_local(str(site), [""], False).errors == [("000001", "symlink", "symbolic link not followed "
                                                          "(--follow-symlinks, or follow_symlinks = true in [run] of "
                                                          "chorus.toml, follows it)")]
    followed = walk_local(str(site), sorted(top.subdirs), True)  # followed: walked through it, as the link's
    assert sorted(row[0] for row in followed.linked) == ["000001/Metadata/a.txt", "000001/private/key.txt"]


def test_a_folder_replaced_by_a_file_after_it_was_read_has_its_files_said_gone_not_unreadable(site, monkeypatch):
    """A folder read (its names in hand) and replaced by a file before its files were stat'ed: each was "cannot stat:
    Not a directory; ... give this user search (x) permission on its folder", advice that changes nothing."""
    import shutil

    from chorus_batch.walk import walk_local

    write(site, "000001/Metadata/a.txt", b"a")
    folder = site / "000001/Metadata"
    scandir = os.scandir

    class Replaced:  # the folder's entries, then the folder replaced, as it is left
        def __init__(self, path):
            self.it = scandir(path)
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.it.close()

        def __iter__(self):
            yield from self.it
            if self.path == str(folder):
                shutil.rmtree(folder)
                folder.write_bytes(b"now a file")

    monkeypatch.setattr(os, "scandir", Replaced)
    walked = walk_local(str(site), ["000001"], False)
    assert walked.chunks == [] and [(path, kind) for path, kind, _ in walked.errors] == [
        ("000001/Metadata/a.txt", "vanished")], walked.errors


def test_names_that_differ_only_in_case_or_unicode_form_are_each_kept_and_named(tmp_path):
    """A macOS copy (NFD) beside the original (NFC), a Windows-made Person.csv beside person.csv: each file is
    recorded under its exact name (nothing merged), and validation says that a copy of the site on a disk that
    ignores case or Unicode form keeps one of each pair (it read both person tables as one, saying nothing)."""
    import json

    from conftest import cli

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    names = {"OMOP/person.csv": b"person_id\n1\n", "OMOP/Person.csv": b"person_id\n1\n2\n",
             "OMOP/caf\u00e9.csv": b"a", "OMOP/cafe\u0301.csv": b"b", "OMOP/visit_occurrence.csv": b"x"}
    for name, data in names.items():
        write(site, name, data)
    run = cli("run", "--site", str(site), "--db", str(db))
    assert run.returncode == 1 and "file.name_clash: 4" in run.stdout, run.stdout + run.stderr
    assert current_rows(db).keys() == names.keys()
    found = json.loads(cli("validate", "--db", str(db), "--json").stdout)["findings"]
    clashes = {f["srcfile"]: f["message"] for f in found if f["rule"] == "file.name_clash"}
    assert clashes.keys() == names.keys() - {"OMOP/visit_occurrence.csv"}, clashes
    assert clashes["OMOP/Person.csv"].startswith("its path differs from OMOP/person.csv only in letter case:")
    assert "from OMOP/caf\u00e9.csv only in Unicode form (this one is decomposed, NFD" in clashes["OMOP/cafe\u0301.csv"]
    assert "from OMOP/cafe\u0301.csv only in Unicode form (this one is composed, NFC" in clashes["OMOP/caf\u00e9.csv"]


def test_ids_written_in_another_scripts_digits_are_not_taken_for_integers(tmp_path):
    """A person folder ٠٠٠٠٠١ (Arabic-Indic digits: the regex engine's \\d takes them, and so does Python's int,
    which reads it as 1) was only "no row in person.csv", as if a typo; a session folder ١٠٠٠ passed as the
    integer session id the procedure asks for. The person finding says what is odd about the name, and the
    session id is an integer only in 0-9."""
    import json

    from conftest import cli

    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/Telemetry/\u0661\u0660\u0660\u0660/\u0661\u0660\u0660\u0660.hea", b"x")
    write(site, "\u0660" * 5 + "\u0661/Waveforms/Telemetry/1000/1000.hea", b"y")
    out = cli("validate", "--site", str(site), "--json")
    found = {(f["rule"], f["srcfile"]): f["message"] for f in json.loads(out.stdout)["findings"]}
    folder = "\u0660" * 5 + "\u0661/"
    assert "digits other than 0-9, from another script" in found[("person.no_omop_row", folder)], found
    assert ("waveforms.session_id", "000001/Waveforms/Telemetry/\u0661\u0660\u0660\u0660/") in found, found


def test_one_person_in_two_folders_spelled_with_other_leading_zeros_is_named(tmp_path):
    """Person folders 0001/ and 000001/ both name person_id 1 (ids are compared without leading zeros): validation
    said nothing, though that person's files lie in two folders at the centre and `files --person 000001` misses
    the other's. Each folder is named with the other spelling; with or without a person.csv."""
    import json

    from conftest import cli

    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    write(site, "000001/Waveforms/Telemetry/1000/1000.hea", b"a")
    write(site, "0001/Waveforms/Telemetry/1001/1001.hea", b"b")
    write(site, "000002/Waveforms/Telemetry/2000/2000.hea", b"c")
    for without_person_csv in (False, True):
        if without_person_csv:
            (site / "OMOP" / "person.csv").unlink()
        out = cli("validate", "--site", str(site), "--json")
        found = {(f["rule"], f["srcfile"]): f["message"] for f in json.loads(out.stdout)["findings"]}
        split = {srcfile: message for (rule, srcfile), message in found.items() if rule == "person.split_folders"}
        assert split.keys() == {"000001/", "0001/"}, (without_person_csv, found)
        assert split["0001/"].startswith("person folder 0001 names the same person_id as 000001/"), split
        assert out.returncode == 1


def test_a_folder_whose_name_is_not_utf8_is_said_once_as_a_folder(site):
    """Below the top level, each file of a folder whose name is not UTF-8 was an error saying "file name is not valid
    UTF-8" though the file's own name was fine (a series of 10,000 slices: 10,000 such errors); the folder is now
    said once, as the top-level folders are, in one process or in worker processes."""
    import os

    write(site, "000001/Waveforms/ok.dat")
    bad = os.path.join(os.fsencode(site), b"000001", b"Waveforms", b"s\xffries")
    os.makedirs(os.path.join(bad, b"sub"))
    for name in (b"a.dat", b"b.dat", b"sub/c.dat"):
        with open(os.path.join(bad, name), "wb") as f:
            f.write(b"x")
    for source in (LocalSource(site, workers=1), LocalSource(site, workers=2, inprocess_budget_s=0)):
        frame, errors = listing(source)
        assert frame["srcfile"].to_list() == ["000001/Waveforms/ok.dat"]
        assert errors == [("000001/Waveforms/s\\xffries/", "non_utf8_name",
                           "folder name is not valid UTF-8; rename it to track its files")]


@pytest.mark.parametrize("workers, budget", [(1, 60.0), (2, 0.0)])  # walked here; by worker processes
def test_links_to_one_outside_folder_list_its_files_once(tmp_path, workers, budget):
    """With links followed, two links to one folder outside the site (or one to a folder inside another's) listed
    its files once per link: two rows, two uploads, a duplicate under two persons. Each outside file is now listed
    once, under its first path (in path order, whatever walks it), and the other link is named."""
    site, outside = tmp_path / "site", tmp_path / "outside"
    write(outside, "ext/e.txt", b"e")
    write(outside, "ext/sub/s.txt", b"s")
    write(outside, "lone.txt", b"l")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (site / "000001").mkdir()
    (site / "000001/Waveforms").symlink_to(outside / "ext", target_is_directory=True)
    (site / "000002").mkdir()
    (site / "000002/Waveforms").symlink_to(outside / "ext", target_is_directory=True)
    (site / "000003").mkdir()
    (site / "000003/Waveforms").symlink_to(outside / "ext/sub", target_is_directory=True)
    (site / "a.txt").symlink_to(outside / "lone.txt")
    (site / "b.txt").symlink_to(outside / "lone.txt")
    errors: list = []
    source = LocalSource(site, follow_symlinks=True, workers=workers, inprocess_budget_s=budget)
    listed = pl.from_arrow(pa.Table.from_batches(list(source.list_files(errors))))
    assert sorted(listed["srcfile"]) == ["000001/Waveforms/e.txt", "000001/Waveforms/sub/s.txt", "OMOP/person.csv",
                                         "a.txt"]
    assert sorted((path, kind, message.split(" (")[0]) for path, kind, message in errors) == [
        ("000002/Waveforms", "symlink_duplicate", "2 files here are also reached through 000001/Waveforms"),
        ("000003/Waveforms", "symlink_duplicate", "1 file here is also reached through 000001/Waveforms/sub"),
        ("b.txt", "symlink_duplicate", "1 file here is also reached through a.txt")]


@pytest.mark.parametrize("workers, budget", [(1, 60.0), (2, 0.0)])  # walked here; by worker processes
def test_a_link_inside_an_outside_folder_to_its_own_file_names_the_other_path_whole(tmp_path, workers, budget):
    """A folder outside the site, linked in, holding a link to one of its own files (/etc holds many): that file is
    reached twice through the one link into the site. The message named a path cut at the wrong length, one that is
    nowhere in the site ('000001/W'), as the other place it is reached through."""
    site, outside = tmp_path / "site", tmp_path / "outside"
    write(outside, "ext/dir/f.txt", b"f")
    (outside / "ext/a").symlink_to(outside / "ext/dir/f.txt")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (site / "000001").mkdir()
    (site / "000001/Waveforms").symlink_to(outside / "ext", target_is_directory=True)
    errors: list = []
    source = LocalSource(site, follow_symlinks=True, workers=workers, inprocess_budget_s=budget)
    listed = pl.from_arrow(pa.Table.from_batches(list(source.list_files(errors))))
    assert sorted(listed["srcfile"]) == ["000001/Waveforms/a", "OMOP/person.csv"]
    assert errors == [("000001/Waveforms", "symlink_duplicate", (
        "1 file here is also reached through 000001/Waveforms/a (links to one place outside the site, "
        f"{os.path.realpath(outside / 'ext/dir/f.txt')}): listed once, there; remove one of the links"))]


def test_a_link_back_to_the_site_root_from_an_outside_folder_is_a_loop(tmp_path):
    """A folder outside the site, linked in, holding a link back to the site root: said 'link to ./, a folder of the
    site' (symlink_inside), a name of no folder to the user; it is the loop a link to the root is from inside."""
    site, outside = tmp_path / "site", tmp_path / "outside"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    outside.mkdir()
    (outside / "back").symlink_to(site, target_is_directory=True)
    (site / "ext").symlink_to(outside, target_is_directory=True)
    errors: list = []
    listed = pl.from_arrow(pa.Table.from_batches(list(LocalSource(site, follow_symlinks=True).list_files(errors))))
    assert listed["srcfile"].to_list() == ["OMOP/person.csv"]
    assert errors == [("ext/back", "symlink_loop", f"link to the site root ({os.path.realpath(site)}): a loop, not followed")]


def test_a_site_folder_named_with_a_control_character_is_recorded_as_it_is_and_shown_escaped(tmp_path):
    """`--site` of a folder whose name holds a line break: the manifest records the real path (the next run finds the
    folder again), but the progress line printed it raw, splitting a cron log's line (the summary escapes it)."""
    site = tmp_path / "si\nte"
    write(site, "OMOP/person.csv", b"1")
    db = tmp_path / "m.sqlite"
    done = cli("run", "--no-validate", "--site", str(site), "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert "listing " + repr(str(site)) in done.stderr and "si\nte" not in done.stderr, done.stderr
    assert query(db, "SELECT DISTINCT site FROM runs") == [(str(site),)]
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]  # the same root: no changes


def test_a_folder_deeper_than_path_max_is_said_to_be_too_long_not_unreadable(site, tmp_path):
    """A folder whose path exceeds PATH_MAX cannot be listed (ENAMETOOLONG): the run told the user to give read and
    search permission on it, which changes nothing."""
    write(site, "OMOP/person.csv", b"1")
    here = os.getcwd()
    try:
        os.chdir(site / "OMOP")
        for _ in range(19):
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
        os.mkdir("e" * 100)  # a folder that can be listed, holding a file whose path is past 4096 bytes
        (Path("e" * 100) / ("f" * 200 + ".csv")).write_bytes(b"x")
        for _ in range(6):  # and folders past it
            os.mkdir("d" * 200)
            os.chdir("d" * 200)
    finally:
        os.chdir(here)
    db = tmp_path / "m.sqlite"
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 1
    said = query(db, "SELECT kind, message FROM scan_errors")
    assert sorted(kind for kind, _ in said) == ["unreadable", "unreadable_dir"]
    assert all("longer than the system allows" in m and "permission" not in m for _, m in said), said


# The command line with its worker processes started as Windows starts them (spawn: a fresh interpreter that imports
# the work functions; nothing inherited from the caller), however this system would start them.
_SPAWNED = ("import multiprocessing, sys\nimport chorus_batch.processes as p\n"
            "p._pool_context = lambda: multiprocessing.get_context('spawn')\n"
            "from chorus_batch.cli import main\nsys.exit(main(sys.argv[1:]))\n")


def test_a_run_with_spawned_workers_commits_what_a_forked_run_commits(tmp_path):
    """Windows has only spawn: workers import the work functions afresh and inherit nothing. A run so started
    commits what a forked run commits, file by file (it could hang at the end of its hashing: see the test below)."""
    import subprocess
    import sys

    from chorus_batch.hashing import PROCESS_MIN_FILES

    write_snapshot(tmp_path / "site", Spec(persons=30, files_per_person=PROCESS_MIN_FILES // 25, size=64, seed=3))
    site = str(tmp_path / "site")
    md5sums = {}
    for how in ("spawn", "fork"):
        db = str(tmp_path / f"{how}.sqlite")
        start = [sys.executable, "-c", _SPAWNED] if how == "spawn" else [sys.executable, "-m", "chorus_batch"]
        done = subprocess.run([*start, "run", "--site", site, "--db", db, "--workers", "2", "-q"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        md5sums[how] = cli("files", "--db", db, "--md5sum").stdout
    assert md5sums["spawn"] == md5sums["fork"] and md5sums["spawn"].count("\n") >= PROCESS_MIN_FILES


def test_more_workers_than_windows_allows_in_a_pool_are_capped_and_said_not_an_internal_error(monkeypatch, caplog):
    """`--workers` takes 1 to 256, but Windows' process pools take at most 61 (concurrent.futures raised ValueError
    "max_workers must be <= 61"): `run --workers 64` on a Windows machine was an internal error once its site had
    files enough to hash in processes. The pool gets 61, and the caller is told once."""
    import sys

    from chorus_batch import processes

    monkeypatch.setattr(sys, "platform", "win32")  # (the pool's own test reads it when made; no process starts here)
    monkeypatch.setattr(processes, "_said_windows_workers", set(), raising=False)
    for _ in range(2):
        executor = processes.pool_executor(64)
        try:
            assert executor._max_workers == processes.MAX_WINDOWS_WORKERS == 61
        finally:
            processes.stop_pool(executor)
    said = [r.getMessage() for r in caplog.records if "Windows runs at most 61" in r.getMessage()]
    assert len(said) == 1 and "--workers 61 or fewer" in said[0], said
    executor = processes.pool_executor(8)
    try:
        assert executor._max_workers == 8
    finally:
        processes.stop_pool(executor)


def test_a_spawned_worker_outlives_the_thread_that_started_it(monkeypatch):
    """A spawn pool (Windows) starts a worker from whichever thread submits when none is idle: the Hasher's feeder
    thread. Such a worker was killed when that thread ended (the parent-death signal is the starting thread's),
    and one killed while waiting for work left the others waiting on the queue's lock: the run hung."""
    import multiprocessing
    import threading
    import time

    from chorus_batch import processes

    monkeypatch.setattr(processes, "_pool_context", lambda: multiprocessing.get_context("spawn"))
    executor = processes.pool_executor(2)
    try:
        executor.submit(int).result(timeout=60)  # the first worker, started by this thread
        feeder = threading.Thread(target=lambda: [f.result(timeout=60) for f in
                                                  [executor.submit(time.sleep, 0.3) for _ in range(2)]])
        feeder.start()  # its second submit finds no worker idle: the second worker is started by the feeder
        feeder.join()
        started = list(executor._processes.values())
        assert len(started) == 2
        time.sleep(1)
        assert [p.exitcode for p in started] == [None, None]
        assert sorted(executor.map(abs, [-1, -2, -3], timeout=60)) == [1, 2, 3]
    finally:
        processes.stop_pool(executor)


def test_a_script_that_runs_at_import_is_told_to_guard_it_where_workers_are_spawned(tmp_path):
    """The package's own example, `run(RunSettings(...))` at a script's top level, on Windows: each spawned worker
    imports the script and ran the run again; the caller said "the manifest is locked by another run: pid <its own
    pid>", then "a worker process ended abruptly ... the kernel's out-of-memory killer". The workers now stop at
    once and the caller says what is wrong and where: the script, and its missing `if __name__ == "__main__":`."""
    import subprocess
    import sys

    from chorus_batch.hashing import PROCESS_MIN_FILES

    write_snapshot(tmp_path / "site", Spec(persons=30, files_per_person=PROCESS_MIN_FILES // 25, size=64, seed=4))
    script = tmp_path / "nightly.py"
    body = ("import multiprocessing\nimport chorus_batch.processes as p\n"
            "p._pool_context = lambda: multiprocessing.get_context('spawn')  # as on Windows\n"
            "from chorus_batch import RunSettings, run\n")
    call = f"result = run(RunSettings(site={str(tmp_path / 'site')!r}, db='m.sqlite', workers=2, validate=False))\n"
    script.write_text(body + call)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1 and "UsageError: the worker processes could not start" in done.stderr, done.stderr
    assert f"which imports {script} in each of them" in done.stderr and '__name__ == "__main__"' in done.stderr
    assert "locked" not in done.stderr and "out-of-memory" not in done.stderr, done.stderr
    assert query(tmp_path / "m.sqlite", "SELECT count(*) FROM versions") == [(0,)]
    script.write_text(body + "if __name__ == '__main__':\n    " + call)  # guarded: the same script runs
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(current_rows(tmp_path / "m.sqlite")) >= PROCESS_MIN_FILES


def test_spawned_workers_say_the_bytes_read_within_a_large_file(site, monkeypatch):
    """The progress line moves within a large file through a shared counter the hashing workers add to every 16 MiB
    read; forked workers inherited it, spawned ones (Windows) never had it: the line stood still while a 200 GB file
    was read. The pool gives it to each worker."""
    import multiprocessing

    from chorus_batch import processes
    from chorus_batch.hashing import _shared_counter
    from chorus_batch.sources.base import METER_STEP, set_meter
    from chorus_batch.workers import hash_chunk

    monkeypatch.setattr(processes, "_pool_context", lambda: multiprocessing.get_context("spawn"))
    write(site, "000001/Waveforms/big.dat", b"\1" * (2 * METER_STEP + 5))
    counter = _shared_counter()
    with processes.pool(1, (set_meter, counter)) as executor:
        chunk = executor.submit(hash_chunk, LocalSource(site), ["000001/Waveforms/big.dat"]).result(timeout=60)
    assert chunk.metered == counter.value >= METER_STEP  # said in the worker, seen here


@pytest.mark.parametrize("given, expected", [
    ("C:\\data\\site", "\\\\?\\C:\\data\\site"),
    ("C:/data/site/000001/Waveforms", "\\\\?\\C:\\data\\site\\000001\\Waveforms"),  # '/' as os.path.join leaves it
    ("D:\\data\\site\\..\\site2\\.\\OMOP", "\\\\?\\D:\\data\\site2\\OMOP"),  # the prefix stops Windows resolving ..
    ("C:\\", "\\\\?\\C:\\"),
    ("\\\\server\\share\\chorus\\site", "\\\\?\\UNC\\server\\share\\chorus\\site"),
    ("//server/share/chorus", "\\\\?\\UNC\\server\\share\\chorus"),
    ("\\\\?\\C:\\data\\site", "\\\\?\\C:\\data\\site"),  # already in that form
    ("\\\\?\\UNC\\server\\share", "\\\\?\\UNC\\server\\share"),
    ("\\\\.\\PhysicalDrive0", "\\\\.\\PhysicalDrive0"),
    ("site\\OMOP", "site\\OMOP"),  # relative: left to the system
])
def test_windows_paths_past_260_characters_are_given_in_the_extended_length_form(given, expected):
    """A Windows site whose deepest files lie past MAX_PATH (260 characters, a DICOM series under a long UID): without
    long paths enabled on the computer, Windows found neither them nor their folders, and the run recorded them as
    vanished (folders as gone, what was recorded below kept). The system calls are given the \\\\?\\ form, which
    Windows opens whatever the length. (Windows' own rules, ntpath, tested here; on Windows itself unproven.)"""
    import ntpath

    from chorus_batch.walk import long_path

    assert long_path(given, windows=True) == expected
    assert long_path(given, windows=False) == given  # elsewhere nothing changes
    long = "C:\\data\\site\\000001\\Images\\CT\\" + "\\".join(["2.25." + "1" * 38] * 8) + "\\000.dcm"
    assert len(long) > 260 and long_path(long, windows=True) == "\\\\?\\" + long
    assert ntpath.normpath(long_path(long, windows=True)[4:]) == long


def test_the_walk_and_the_reads_go_through_the_long_path_form(tmp_path, monkeypatch):
    """Every folder listed and every file opened, stat'ed or hashed is given to the system as walk.long_path makes
    it (on Windows the \\\\?\\ form); what is recorded stays site-relative, as listed."""
    import chorus_batch.sources.local as local
    import chorus_batch.walk as walk

    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/a/a.hea", b"a 1 250 10\n")
    seen: list[str] = []

    def spy(path: str, **_kw) -> str:
        seen.append(path)
        return path

    monkeypatch.setattr(walk, "long_path", spy)
    monkeypatch.setattr(local, "long_path", spy)
    source = LocalSource(site)
    errors: list = []
    listed = sorted(p for batch in source.list_files(errors) for p in batch.column("srcfile").to_pylist())
    assert listed == ["000001/Waveforms/a/a.hea", "OMOP/person.csv"] and errors == []
    assert {os.path.join(str(site), *d.split("/")) if d else str(site)
            for d in ("", "OMOP", "000001", "000001/Waveforms", "000001/Waveforms/a")} <= set(seen)
    seen.clear()
    source.hash_file("OMOP/person.csv", bytearray(1 << 16))
    source.stat("000001/Waveforms/a/a.hea")
    source.open("OMOP/person.csv").close()
    assert seen == [str(site / "OMOP" / "person.csv"), str(site / "000001" / "Waveforms" / "a" / "a.hea"),
                    str(site / "OMOP" / "person.csv")]


@pytest.mark.skipif(os.sep != "/", reason="the POSIX form of a path (Windows: the long_path test above)")
def test_hashing_a_file_joins_no_path_parts(tmp_path, monkeypatch):
    """A listed path is relative and '/'-separated: on POSIX the root and it are put together as they are, not split
    and joined again per file (os.path.join was a tenth of the hashing of a 4 KiB file); same file, same MD5, and the
    root '/' gives no doubled slash."""
    import hashlib
    import posixpath

    site = tmp_path / "site"
    write(site, "000001/Waveforms/a/a.dat", b"x" * 4096)
    source = LocalSource(site)

    def no_join(*_parts):
        raise AssertionError("os.path.join called per file")

    monkeypatch.setattr(posixpath, "join", no_join)
    out = source.hash_file("000001/Waveforms/a/a.dat", bytearray(1 << 16))
    assert out.md5 == hashlib.md5(b"x" * 4096).hexdigest() and out.size == 4096
    assert source.absolute("000001/Waveforms/a/a.dat") == str(site / "000001" / "Waveforms" / "a" / "a.dat")
    assert LocalSource("/").absolute("etc/passwd") == "/etc/passwd"


def test_links_and_folders_are_no_junctions_and_a_link_not_followed_is_named_as_one(tmp_path):
    """walk.is_junction takes a Windows directory junction for the link it is (the walk went through junctions
    whether links were followed or not). Here, with no junction to make: a folder is no junction (it is walked), a
    symbolic link to one is none either (it stays a symbolic link, said so). The junction itself is unproven here."""
    from chorus_batch.walk import is_junction, walk_local

    site = tmp_path / "site"
    write(site, "000001/Waveforms/a/a.hea", b"a 1 250 10\n")
    (site / "000002").symlink_to(site / "000001", target_is_directory=True)
    assert {entry.name: is_junction(entry) for entry in os.scandir(site)} == {"000001": False, "000002": False}
    walked = walk_local(str(site), [""], False)
    assert [chunk[0] for chunk in walked.chunks] == [["000001/Waveforms/a/a.hea"]]
    assert [(path, kind) for path, kind, _ in walked.errors] == [("000002", "symlink")]
    assert walked.errors[0][2].startswith("symbolic link not followed")


def test_a_site_root_typed_with_windows_separators_is_said_to_be_one(tmp_path):
    """`--site data\\site` (from the Windows machine's notes) on Linux: "does not exist (a typo, or a disk that is not
    mounted?)" of a folder that is there; now it names the '/' form that exists."""
    from chorus_batch.errors import ConfigError

    write(tmp_path / "data" / "site", "OMOP/person.csv", b"person_id\n1\n")
    with pytest.raises(ConfigError) as caught:
        LocalSource(str(tmp_path / "data") + "\\site").check()
    said = str(caught.value)
    assert f"but {tmp_path}/data/site does: '\\' separates folders on Windows only" in said, said
    assert "a typo" not in said
    with pytest.raises(ConfigError, match="a typo, or a disk that is not mounted"):  # no such folder either way
        LocalSource(str(tmp_path / "data") + "\\other").check()


def test_a_site_root_given_as_dash_is_said_not_to_be_standard_input(tmp_path):
    """`--site -` (as `report --out -` writes to standard output): "/work/- does not exist (a typo, or a disk that is
    not mounted?)". Said as what it is; a folder of that very name is still taken."""
    for command in (["status", "--db", "m.sqlite"], ["run", "--db", "m.sqlite"], ["validate"]):
        done = cli(*command, "--site", "-", cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "`-` is not standard input here" in done.stderr and "a typo" not in done.stderr, done.stderr
        assert not (tmp_path / "m.sqlite").exists()
    write(tmp_path / "-", "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "--site", "-", "--db", "m.sqlite", "-q", "--no-validate", cwd=tmp_path).returncode == 0
    assert len(current_rows(tmp_path / "m.sqlite")) == 1


def test_a_site_root_with_dot_dot_after_a_link_is_the_folder_the_system_names(tmp_path):
    """`--site /scratch/me/../project/site`, /scratch/me a link (as HPC home and scratch folders are): '..' is the
    folder above where the link leads, as the shell and every other tool take it. os.path.abspath dropped `me/..` as
    text: another folder of that name (a copy of the site) was listed, while the summary named the folder meant."""
    real = tmp_path / "lustre" / "me"
    real.mkdir(parents=True)
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "me").symlink_to(real)
    write(tmp_path / "lustre" / "site", "OMOP/person.csv", b"meant")
    write(tmp_path / "scratch" / "site", "OMOP/person.csv", b"a copy of it")
    given = f"{tmp_path}/scratch/me/../site"
    assert os.listdir(given) == ["OMOP"] and open(f"{given}/OMOP/person.csv", "rb").read() == b"meant"
    for workers in (1, 2):
        source = LocalSource(given, workers=workers, inprocess_budget_s=0)
        assert source.root == str(tmp_path / "lustre" / "site")
        frame, errors = listing(source)
        assert frame["srcfile"].to_list() == ["OMOP/person.csv"] and frame["size"].to_list() == [5] and not errors
    relative = cli("status", "--json", "--no-validate", "--site", "me/../site", "--db", str(tmp_path / "m.sqlite"),
                   cwd=tmp_path / "scratch")
    assert relative.returncode == 0, relative.stderr
    assert f"listing {tmp_path / 'lustre' / 'site'}" in relative.stderr and '"bytes": 5' in relative.stdout
    # no '..': the root keeps the form given (a link to the site is recorded as given)
    assert LocalSource(f"{tmp_path}/scratch/me/./").root == str(tmp_path / "scratch" / "me")
