"""Time travel (files as of, diff between any two versions, history) against
independent computations on the testdata snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from chorus_batch.errors import UsageError
from chorus_batch.review import open_manifest
from chorus_batch.times import iso
from chorus_batch.testdata import Spec, make_testdata
from conftest import cli, query, run_site, tree_md5, write

SPEC = Spec(persons=6, files_per_person=15, size=64, seed=11, change_fraction=0.3)


EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def expected_diff(old: dict[str, str], new: dict[str, str]) -> dict:
    """A direct comparison of two trees (path -> MD5), independent of chorus_batch."""
    gone = {p: m for p, m in old.items() if p not in new}
    came = {p: m for p, m in new.items() if p not in old}
    pairs = Counter()
    gone_md5, came_md5 = Counter(gone.values()), Counter(came.values())
    # Empty files all share one MD5 and are never paired as renames (diff.py): one gone, one come is removed + added.
    for md5 in (gone_md5.keys() & came_md5.keys()) - {EMPTY_MD5}:
        pairs[md5] = min(gone_md5[md5], came_md5[md5])
    return {
        "replaced": {p for p in old.keys() & new.keys() if old[p] != new[p]},
        "gone": set(gone), "came": set(came), "renamed_per_md5": +pairs,
    }


def check_diff(frame: pl.DataFrame, old: dict[str, str], new: dict[str, str]) -> None:
    want = expected_diff(old, new)
    by = {k: frame.filter(pl.col("change") == k) for k in ("added", "removed", "replaced", "renamed")}
    assert set(by["replaced"]["srcfile"]) == want["replaced"]
    renamed = by["renamed"]
    # Every path only in the new tree is added or the target of a rename; only in the old, removed or its source.
    assert set(by["added"]["srcfile"]) | set(renamed["srcfile"]) == want["came"]
    assert set(by["removed"]["srcfile"]) | set(renamed["old_srcfile"]) == want["gone"]
    assert set(by["added"]["srcfile"]).isdisjoint(renamed["srcfile"])
    # A rename keeps the content, and as many pairs are made as the contents allow.
    for row in renamed.iter_rows(named=True):
        assert old[row["old_srcfile"]] == new[row["srcfile"]] == row["md5"] == row["old_md5"]
    assert Counter(renamed["md5"]) == want["renamed_per_md5"]
    for row in frame.iter_rows(named=True):  # each row describes its file as the trees have it
        side = old if row["change"] == "removed" else new
        assert side[row["srcfile"]] == row["md5"]


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict:
    """Three versions: the first tree, the second tree, then the second with more edits;
    plus Parquet snapshots of each."""
    base = tmp_path_factory.mktemp("tt")
    make_testdata(base / "data", SPEC)
    site, db, snaps = base / "site", base / "m.sqlite", base / "snap"
    shutil.copytree(base / "data" / "first", site)
    trees, labels = [], []
    for step in range(3):
        if step == 1:
            shutil.rmtree(site)
            shutil.copytree(base / "data" / "second", site)
        if step == 2:  # a replace-back, a rename of a renamed file, a deletion, an addition
            files = sorted(tree_md5(site))
            write(site, files[3], b"new content")
            (site / files[5]).rename(site / (files[5] + ".moved"))
            (site / files[7]).unlink()
            write(site, "000001/Waveforms/000001_20240101_000000_60.dat", b"added at step 3")
        result = run_site(site, db, parquet=str(snaps), version_label=f"v{step + 1}")
        assert result.label == f"v{step + 1}"
        trees.append(tree_md5(site))
        labels.append(result.label)
        if step < 2:  # versions are timed to the whole second (truncated): the next one's commit in a later second
            time.sleep(1.01 - time.time() % 1)
    return {"db": db, "snaps": snaps, "trees": trees, "labels": labels, "site": site}


@pytest.fixture(params=["sqlite", "parquet"])
def reader(request, history):
    return open_manifest(history["db"] if request.param == "sqlite" else history["snaps"])


def as_dict(frame: pl.DataFrame) -> dict[str, str]:
    assert frame["srcfile"].is_unique().all()
    return dict(zip(frame["srcfile"], frame["md5"]))


def test_files_as_of_each_version_equals_that_tree(reader, history):
    for label, tree in zip(history["labels"], history["trees"]):
        assert as_dict(reader.files(label)) == tree
    assert as_dict(reader.files()) == history["trees"][-1]


def test_files_as_of_a_time_picks_the_version_committed_then(history):
    reader = open_manifest(history["db"])
    # Half a second after the first version's recorded commit time (whole seconds), and before
    # the second's (the fixture waits more than a second between runs).
    committed = reader.versions()["finished_at"][0]
    between = datetime.fromisoformat(committed.replace("Z", "+00:00")) + timedelta(milliseconds=500)
    assert as_dict(reader.files(between.isoformat())) == history["trees"][0]
    assert as_dict(reader.files(between)) == history["trees"][0]
    # the zone as people type it (a lowercase z, UTC, a spaced offset) was "not a valid ISO date-time"
    typed = between.astimezone(timezone(timedelta(hours=1))).strftime("%Y-%m-%d %H:%M:%S.%f")
    for spelling in (between.strftime("%Y-%m-%dT%H:%M:%S.%fz"), between.strftime("%Y-%m-%d %H:%M:%S.%f UTC"),
                     f"{typed} +01:00"):
        assert reader.resolve(spelling) == reader.resolve(between), spelling
    with pytest.raises(UsageError, match="no version was committed"):
        reader.files("2001-01-01T00:00:00Z")
    # A time in another zone was said only in it ('before 2026-12-04T05:00:00+09:00' beside a first version
    # 'committed 2026-12-04T04:35:59Z' reads as later); a date alone without saying it is the day's start.
    east = (between - timedelta(hours=1)).astimezone(timezone(timedelta(hours=9)))
    with pytest.raises(UsageError) as said:
        reader.files(east.isoformat())
    assert f"before {east.isoformat()} ({iso(east)})" in str(said.value), str(said.value)
    day = committed[:10]  # the first version's day: its start is before the commit
    with pytest.raises(UsageError, match=f"a date alone is its start; {day}T23:59:59Z is its end"):
        reader.files(day)
    with pytest.raises(UsageError, match="no version 'v9'"):
        reader.files("v9")


def test_a_date_in_another_zone_is_that_days_start_there_and_a_time_needs_a_t_or_a_space(history):
    """`--version 2026-12-07+05:00` (a date with its zone, as XML Schema writes one) selected the version of 05:00 UTC
    that day: Python's fromisoformat takes any one character between the date and a time, so the zone was read as a
    time of day; `2026-12-07x07:00` or `2026-12-07/08` were times too. A date with a zone is its start in that zone
    (the day before in UTC, east of Greenwich), and a date and a time are joined by a T or a space, or refused."""
    reader = open_manifest(history["db"])
    day = reader.versions()["finished_at"][0][:10]
    start_utc = (datetime.fromisoformat(day) - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for spelled in (f"{day}+05:00", f"{day} +05:00", f"{day}+0500"):
        with pytest.raises(UsageError) as said:
            reader.resolve(spelled)
        assert f"at or before {day}T00:00:00+05:00 ({start_utc})" in str(said.value), (spelled, str(said.value))
    west = (datetime.fromisoformat(day) + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if reader.versions()["finished_at"][0] > west:  # (committed after 05:00 UTC: that day's start in -05:00 is before it)
        with pytest.raises(UsageError, match=re.escape(f"at or before {day}T00:00:00-05:00 ({west})")):
            reader.resolve(f"{day}-05:00")
    else:  # (committed from 00:00 to 05:00 UTC, as a run after midnight UTC does: that start is after it, which it selects)
        versions = reader.versions()
        before = [label for label, at in zip(versions["label"], versions["finished_at"]) if at <= west]
        assert reader.resolve(f"{day}-05:00") == before[-1]  # the latest committed at or before it (oldest first)
    tomorrow = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
    assert reader.resolve(f"{tomorrow}-05:00") == history["labels"][-1]
    committed = reader.versions()["finished_at"][0]
    for odd in (committed.replace("T", "x"), committed.replace("T", "/"), f"{day}_23:59:59"):
        with pytest.raises(UsageError, match="not a valid ISO date-time"):
            reader.resolve(odd)
    assert reader.resolve(committed.replace("T", " ")) == reader.resolve(committed.replace("T", "t")) == history["labels"][0]
    out = cli("changes", "--db", str(history["db"]), "--version", f"{day}+05:00", "--json")
    assert out.returncode == 2 and f"({start_utc})" in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = cli("changes", "--db", str(history["db"]), "--version", committed.replace("T", "x"), "--json")
    assert out.returncode == 2 and "not a valid ISO date-time" in out.stderr, out.stderr


def test_a_time_in_a_named_zone_or_at_the_edge_of_the_calendar_picks_its_version(reader, history):
    """A notebook's `datetime.now(ZoneInfo("Europe/Berlin"))` (or a pandas Timestamp with a zone) raised polars'
    SchemaError (a Datetime in Europe/Berlin compared with the UTC commit times), and one in a DST gap its
    ComputeError; a time whose UTC falls outside years 1..9999 ('0001-01-01T00:00:00+01:00') was an internal
    error (OverflowError), exit 3. Each is the moment it names: before every version, or after the latest."""
    from zoneinfo import ZoneInfo

    committed = datetime.fromisoformat(reader.versions()["finished_at"][0].replace("Z", "+00:00"))
    between = committed + timedelta(milliseconds=500)
    for zone in ("Europe/Berlin", "America/New_York", "Asia/Tokyo"):
        assert reader.resolve(between.astimezone(ZoneInfo(zone))) == history["labels"][0], zone
    march = datetime(committed.year + 1, 3, 31, 2, 30)  # next year's last Sunday of March, 02:30 in Berlin:
    gap = (march - timedelta(days=(march.weekday() + 1) % 7)).replace(tzinfo=ZoneInfo("Europe/Berlin"))  # no such time
    assert reader.resolve(gap) == history["labels"][-1]
    for early in ("0001-01-01T00:00:00+01:00", datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))):
        with pytest.raises(UsageError, match="no version was committed at or before 0001-01-01T00:00:00"):
            reader.resolve(early)
    for late in ("9999-12-31T23:59:59-01:00", datetime(9999, 12, 31, 23, tzinfo=ZoneInfo("America/New_York"))):
        assert reader.resolve(late) == history["labels"][-1]
    out = cli("files", "--db", str(history["db"]), "--as-of", "0001-01-01T00:00:00+01:00")
    assert out.returncode == 2 and "no version was committed" in out.stderr and "internal error" not in out.stderr


@pytest.fixture
def local_zone(monkeypatch):
    """Sets this process's time zone (TZ) for a test, as a reviewer's kernel away from UTC has it."""
    def set_zone(zone: str) -> None:
        monkeypatch.setenv("TZ", zone)
        time.tzset()
    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_a_datetime_without_a_zone_that_reads_as_two_versions_is_asked_which(reader, history, local_zone):
    """`m.files(datetime.now())` in a kernel in New York: the wall time without a zone was read as UTC, five hours
    back, and answered the version committed before the latest (or "no version was committed"), silently. Where
    UTC and this computer's time select different versions, a UsageError names both and how to give a zone;
    where they select the same one, or in a kernel in UTC, the naive time is answered as before."""
    committed = datetime.fromisoformat(reader.versions()["finished_at"][0].replace("Z", "+00:00"))
    between = (committed + timedelta(milliseconds=500)).replace(tzinfo=None)  # v1's wall time in UTC, no zone
    local_zone("UTC")
    assert reader.resolve(between) == history["labels"][0]
    local_zone("America/New_York")  # read as New York's time, `between` is after every version
    with pytest.raises(UsageError) as said:
        reader.files(between)
    message = str(said.value)
    assert f"has no time zone: read as UTC (as the manifest writes commit times) it selects version " \
           f"{history['labels'][0]}, read as this computer's time (UTC-05:00" in message, message
    assert f"version {history['labels'][-1]}" in message and "datetime.now(timezone.utc)" in message, message
    assert reader.resolve(between.replace(tzinfo=timezone.utc)) == history["labels"][0]  # a zone given: no question
    assert reader.resolve(between.astimezone()) == history["labels"][-1]
    assert reader.resolve(datetime(9999, 12, 31)) == history["labels"][-1]  # the same version either way
    with pytest.raises(UsageError, match="no version was committed at or before 2001-01-01"):
        reader.files(datetime(2001, 1, 1))


def test_history_of_a_path_no_version_has_warns_with_the_path_meant(reader, history):
    """`m.history("OMOP/Person.csv")` typed for OMOP/person.csv, or an absolute path given to `history` (which takes
    the site-relative one), gave an empty frame and nothing else: read as "this file never changed". As
    `files(person=...)` does, a NoSuchPath warning says no version has the path and names the paths meant."""
    import warnings

    from chorus_batch.review import NoSuchPath

    path = sorted(history["trees"][0])[0]
    upper = "/".join(part.upper() for part in path.split("/"))
    with pytest.warns(NoSuchPath, match=f"no file '{upper}' in any version of the manifest: did you mean '{path}'[?]"):
        assert reader.history(upper).height == 0
    with pytest.warns(NoSuchPath, match=f"did you mean '{path}'[?]"):
        assert reader.history_of(upper).height == 0
    with pytest.warns(NoSuchPath, match="'nope.csv' in any version of the manifest; paths are site-relative"):
        assert reader.history_of(Path("nope.csv")).height == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoSuchPath)  # a path the manifest has, as stored or as typed: no warning
        assert reader.history(path).height and reader.history_of(f"./{path}").height
        assert reader.history_of("nope.csv", quiet=True).height == 0
    out = cli("history", "--db", str(history["db"]), upper)  # the command line says it once, as its error
    assert out.returncode == 2 and "NoSuchPath" not in out.stderr and "did you mean" in out.stderr, out.stderr


def test_a_url_given_to_open_manifest_is_said_as_one_and_masked(tmp_path, monkeypatch):
    """`open_manifest("az://c/m.sqlite?sv=...&sig=...")` said "no manifest at <cwd>/az:/c/m.sqlite?...&sig=<the
    signature>" (twice): a URL taken for a path, its secret printed into the notebook. A URL is said as one, masked."""
    monkeypatch.chdir(tmp_path)
    cases = {"az://c/m.sqlite?sv=1&sig=SECRET": "not one in Azure: az://c/m.sqlite?sv=***&sig=***",
             "https://a.blob.core.windows.net/c/m.sqlite?sig=SECRET": "is a URL (https://)",
             "s3://b/m.sqlite": "is a URL (s3://)", f"file://{tmp_path}/m.sqlite": f"give the path itself: {tmp_path}/m.sqlite",
             f"file:{tmp_path}/m.sqlite": f"give the path itself: {tmp_path}/m.sqlite"}
    for url, said in cases.items():
        with pytest.raises(UsageError) as refused:
            open_manifest(url)
        assert said in str(refused.value) and "SECRET" not in str(refused.value), str(refused.value)
        assert "no manifest at" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_files_filters_by_modality_and_person(reader, history):
    tree = history["trees"][0]
    person = {p: m for p, m in tree.items() if p.startswith("000002/")}
    assert as_dict(reader.files("v1", person="000002")) == person
    omop = reader.files("v1", modality="OMOP")
    assert set(omop["srcfile"]) == {p for p in tree if p.startswith("OMOP/")}


def test_arguments_of_a_wrong_type_are_usage_errors_that_say_what_to_give(reader, history):
    # They were a polars ComputeError (person=2), an InvalidOperationError (person=[...]), an AttributeError
    # (modality=3) or a TypeError from pathlib (history(None), open_manifest(None)) from deep inside
    for call, said in ((lambda: reader.files(person=2), "a person is text, not int 2"),
                       (lambda: reader.files("v1", person=["000002"]), "a person is text, not list"),
                       (lambda: reader.files(modality=3), "a modality is text, not int 3"),
                       (lambda: reader.history(None), "a path is text, not NoneType"),
                       (lambda: reader.history_of(7), "a path is text, not int 7"),
                       (lambda: open_manifest(None), "the manifest is text, not NoneType"),
                       # an AttributeError ('int' object has no attribute 'lstrip' / 'rstrip'), a TypeError from weakref
                       (lambda: reader.person_suggestions(12), "a person is text, not int 12"),
                       (lambda: reader.rows_under(reader.files(), 5), "a path is text, not int 5"),
                       (lambda: reader.sessions(con="files"), "con is a DuckDB connection, not str 'files'"),
                       # pandas' missing time (a datetime to isinstance) was a ValueError from astimezone
                       (lambda: reader.files(pytest.importorskip("pandas").NaT), "not a time: NaT")):
        with pytest.raises(UsageError, match=said) as raised:
            call()
        assert "such as" in raised.value.fix or "pass the connection" in raised.value.fix
    # a pathlib path stays welcome (rows_under said 'PosixPath' object has no attribute 'rstrip')
    assert reader.history(Path("OMOP/person.csv")).height > 0
    assert reader.rows_under(reader.files(), Path("OMOP")).height == reader.rows_under(reader.files(), "OMOP").height > 0
    # a notebook cell ending in the reader shows the manifest and its versions, no object address, no rows
    assert repr(reader) == f"<{type(reader).__name__} {str(reader.path)!r}: 3 versions, v1 .. v3>"


def test_an_empty_manifest_path_or_one_versions_snapshot_is_said_as_such(history, monkeypatch):
    """open_manifest("") (a notebook's unset parameter) read the current folder and said "no Parquet snapshots in .";
    a single `version=<label>` snapshot folder was "no Parquet snapshots in …/version=v1", with no word of its parent."""
    monkeypatch.chdir(history["snaps"])  # even where snapshots are: an empty path is not the current folder
    for empty in ("", "  "):
        with pytest.raises(UsageError, match="the manifest's path is empty") as raised:
            open_manifest(empty)
        assert "such as" in raised.value.fix
    with pytest.raises(UsageError, match="one version's snapshot folder") as raised:
        open_manifest(history["snaps"] / "version=v1")
    assert str(history["snaps"]) in raised.value.fix
    out = cli("files", "--db", str(history["snaps"] / "version=v1"))
    assert out.returncode == 2 and "one version's snapshot folder" in out.stderr, out.stderr


def test_no_manifest_is_said_with_the_folder_it_was_looked_for_in(tmp_path):
    """`files`, `diff` and `history` in a folder without a manifest said "no manifest at chorus_manifest.sqlite",
    naming no folder (a cron job's current folder is not the shell's): the path is absolute, as `versions` says it."""
    for command in (("files",), ("diff", "--from", "x"), ("history", "a.csv")):
        out = cli(*command, cwd=tmp_path)
        assert out.returncode == 2 and f"no manifest at {tmp_path / 'chorus_manifest.sqlite'}" in out.stderr, out.stderr
        assert f"where: {tmp_path / 'chorus_manifest.sqlite'}" in out.stderr, out.stderr


def test_a_dangling_link_a_path_under_a_file_or_a_loop_as_db_is_said_alike_by_every_command(tmp_path):
    """A --db that is a symbolic link to nothing said only "no manifest at <the link's target>" (versions, changes,
    validate) or "<the link>" (files, diff, history), never that it was a link, nor where it pointed; a --db under a
    file was "no manifest" in files, diff and history, "a path under a file" in the others. One check of the path,
    made for every command before its work (cli._resolve) and by open_manifest, says each the same way."""
    from chorus_batch import cli as cli_module

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "unmounted").mkdir()  # an empty mount point: a run made a new manifest there, through the link
    write(tmp_path / "site", "OMOP/person.csv")
    (tmp_path / "gone.sqlite").symlink_to(tmp_path / "unmounted" / "m.sqlite")
    (tmp_path / "disk").symlink_to("nowhere")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    said = {"gone.sqlite": f"is a symbolic link to {tmp_path / 'unmounted' / 'm.sqlite'}, which does not exist",
            "disk/m.sqlite": f"leads through the symbolic link {tmp_path / 'disk'} to nowhere ({tmp_path / 'nowhere'}), "
                             "which does not exist",
            "notes.txt/m.sqlite": f"lies under a file: {tmp_path / 'notes.txt'} is a file, not a folder",
            "loop1": "is a loop of symbolic links"}
    site = str(tmp_path / "site")
    commands = [["versions"], ["files"], ["changes"], ["diff", "--from", "v1"], ["history", "x"], ["validate"],
                ["upgrade"], ["status", "--site", site], ["run", "--site", site], ["registry", "--out", "r"],
                ["report", "--out", "r.html"], ["import-journal", "j.jsonl"]]
    for given, words in said.items():
        for command in commands:
            args = cli_module._parser().parse_args([*command, "--db", str(tmp_path / given)])
            with pytest.raises(UsageError) as raised:
                cli_module._resolve(args)
            assert f"the manifest's path {tmp_path / given} {words}" in str(raised.value), (command, raised.value)
        with pytest.raises(UsageError, match=words.split(" (")[0].replace("(", r"\(")):
            open_manifest(tmp_path / given)
    out = cli("files", "--db", "gone.sqlite", cwd=tmp_path)
    assert out.returncode == 2 and "the link points nowhere" in out.stderr and "fix:" in out.stderr, out.stderr
    assert "no manifest at" not in out.stderr
    out = cli("run", "--site", site, "--db", "gone.sqlite", cwd=tmp_path)  # never a new manifest through the link
    assert out.returncode == 2 and "the link points nowhere" in out.stderr, out.stderr
    assert list((tmp_path / "unmounted").iterdir()) == []


def test_the_library_manifest_says_a_dangling_link_as_open_manifest_does(tmp_path):
    """Manifest(<a symbolic link to nothing>).versions() said "no manifest at <the link's target>" (Manifest resolves
    its path), where open_manifest and every command say the link points nowhere: one check decides for all."""
    from chorus_batch import Manifest

    (tmp_path / "gone.sqlite").symlink_to(tmp_path / "unmounted" / "m.sqlite")
    (tmp_path / "disk").symlink_to("nowhere")
    for given in ("gone.sqlite", "disk/m.sqlite"):
        with pytest.raises(UsageError) as opened:
            open_manifest(tmp_path / given)
        for call in (lambda m: m.versions(), lambda m: m.ensure_schema()):
            with pytest.raises(UsageError) as raised:
                call(Manifest(tmp_path / given))
            assert str(raised.value) == str(opened.value) and "the link points nowhere" in str(raised.value)
            assert "no manifest at" not in str(raised.value)
    assert list(tmp_path.iterdir()) and not (tmp_path / "unmounted").exists()  # no manifest made through the link


def test_a_path_typed_under_a_windows_drive_or_network_share_is_taken_in_any_case():
    r"""A Windows site's root is recorded as C:/Data/Site or, on a network share, //FileSrv/CHORUS/site; a path
    typed under it in other letter case is the same on Windows: it was matched for a drive letter only, and a path
    under \\filesrv\chorus\site named no file. A POSIX root keeps its case."""
    from chorus_batch.review import ManifestReader

    class Roots(ManifestReader):
        path = Path("m.sqlite")

        def root_locations(self) -> list[str]:
            return ["C:/Data/Site", "//FileSrv/CHORUS/site", "/data/Site"]

    reader = Roots()
    assert reader.site_relative("c:\\data\\site\\OMOP\\person.csv") == "OMOP/person.csv"
    assert reader.site_relative("\\\\filesrv\\chorus\\SITE\\000001\\Waveforms") == "000001/Waveforms"
    assert reader.site_relative("//FileSrv/CHORUS/site/OMOP/a.csv") == "OMOP/a.csv"
    assert reader.site_relative("/data/site/OMOP/a.csv") == "/data/site/OMOP/a.csv"  # another folder on POSIX
    assert reader.site_relative("/data/Site/OMOP/a.csv") == "OMOP/a.csv"


def test_open_manifest_reads_a_path_under_the_home_folder_as_the_command_line_does(history, tmp_path, monkeypatch):
    """open_manifest("~/m.sqlite") in a notebook said "no manifest at …/~/m.sqlite", where `--db "~/m.sqlite"` reads the
    home folder's manifest."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(history["db"], home / "m.sqlite")
    monkeypatch.setenv("HOME", str(home))
    assert open_manifest("~/m.sqlite").versions()["label"].to_list() == history["labels"]


def test_run_settings_and_manifest_read_a_path_under_the_home_folder_as_the_command_line_does(history, tmp_path,
                                                                                               monkeypatch):
    """RunSettings(db="~/m.sqlite") failed with "the manifest's folder ./~ does not exist ... mkdir -p './~'" (its
    site="~/..." was read as the home's), and Manifest("~/m.sqlite") said "no manifest at ./~/m.sqlite"."""
    from chorus_batch import Manifest, RunSettings, run

    home, elsewhere = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    elsewhere.mkdir()
    shutil.copytree(history["site"], home / "site")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    settings = RunSettings(site="~/site", db=Path("~/m.sqlite"), parquet="~/snapshots", workers=1, validate=False)
    assert (settings.db, settings.parquet) == (str(home / "m.sqlite"), str(home / "snapshots"))
    result = run(settings)
    assert result.counts["added"] > 0
    assert Manifest("~/m.sqlite").versions()["label"].to_list() == [result.label]
    assert (home / "snapshots").is_dir() and not any(elsewhere.iterdir())  # no folder '~' made here


def test_run_given_a_dict_says_it_takes_run_settings(history, tmp_path):
    from chorus_batch import run

    with pytest.raises(UsageError, match="run\\(\\) takes a RunSettings, not dict"):
        run({"site": str(history["site"]), "db": str(tmp_path / "m.sqlite")})
    from chorus_batch import load_config

    for wrong in (None, ""):  # a TypeError from pathlib, and "" read the current folder as the file
        with pytest.raises(UsageError, match="load_config takes the path of a chorus.toml"):
            load_config(wrong)
    from chorus_batch import Manifest

    for wrong in (None, "", 3):  # a TypeError from os.path; "" was the current folder
        with pytest.raises(UsageError, match="Manifest\\(\\) takes the manifest's path"):
            Manifest(wrong)
    assert not (tmp_path / "m.sqlite").exists()


@pytest.mark.parametrize("a,b", [(0, 2), (0, 1), (1, 2), (2, 0), (1, 0)])
def test_diff_between_any_two_versions_equals_comparing_the_trees(reader, history, a, b):
    frame = reader.diff(history["labels"][a], history["labels"][b])
    check_diff(frame, history["trees"][a], history["trees"][b])


def test_a_version_argument_that_names_no_version_is_said_by_its_name(reader, history, tmp_path):
    # `diff --from A --to B` and `review --version A --compare-to B` said "no version 'B'": not which of the two
    first, last = history["labels"][0], history["labels"][-1]
    # (a library caller is told its arguments' names, the command line its flags: "--to / to_version" was both)
    with pytest.raises(UsageError, match=r"^to_version: no version 'nope'"):
        reader.diff(first, "nope")
    with pytest.raises(UsageError, match=r"^from_version: no version was committed at or before 2001"):
        reader.diff("2001-01-01", last)
    with pytest.raises(UsageError, match=r"^compare_to: no version 'nope'"):
        reader.compared_with(last, "nope")
    with pytest.raises(UsageError, match=r"^no version 'nope'"):  # one version asked: as before
        reader.files("nope")
    done = cli("diff", "--db", str(history["db"]), "--from", first, "--to", "v9")
    assert done.returncode == 2 and done.stderr.startswith("chorus-batch: error: --to: no version 'v9'"), done.stderr
    done = cli("review", "--db", str(history["db"]), "--version", "v8", "--compare-to", first,
               "--out", str(tmp_path / "r.ipynb"))
    assert done.returncode == 2 and done.stderr.startswith("chorus-batch: error: --version: no version 'v8'")
    assert not (tmp_path / "r.ipynb").exists()


def test_a_time_given_to_a_reading_command_says_the_version_it_selected(history, capsys):
    """`files --as-of 2099-01-01 --json` listed the latest version's files without a word (--json and --csv name no
    version), `changes --version TIME`, `diff --from TIME` alike, while `report` and `review` said which version a
    time selected: every reading command says it on stderr now, and names its option when the version is unknown."""
    from chorus_batch import cli as cli_module

    db, (first, second, last) = str(history["db"]), history["labels"]
    versions = open_manifest(history["db"]).versions()
    between = versions["finished_at"][1]  # the second version's own commit time: that version, in force then
    assert cli_module.main(["files", "--db", db, "--as-of", "2099-01-01", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == versions["n_files"][-1]
    assert (f"chorus-batch: as of 2099-01-01 (a time in the future): no version was committed after {last}"
            f" (committed {versions['finished_at'][-1]}), so the latest version, {last}, is shown") in err, err
    assert cli_module.main(["changes", "--db", db, "--version", between, "--csv"]) == 0
    out, err = capsys.readouterr()
    assert f"as of {between}: version {second}, committed {between} (the version in force then)" in err, err
    assert cli_module.main(["diff", "--db", db, "--from", between]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{second} -> {last}:") and f"as of {between}: version {second}" in err, err
    assert cli_module.main(["files", "--db", db, "--as-of", first, "--csv"]) == 0  # a label: nothing to say
    assert capsys.readouterr().err == ""
    assert cli_module.main(["files", "--db", db, "--as-of", "nope"]) == 2
    assert capsys.readouterr().err.startswith("chorus-batch: error: --as-of: no version 'nope'")


def test_a_table_one_row_short_of_its_limit_says_one_more_row(history, capsys, monkeypatch):
    """The tables' limit line (files, changes, status, run --dry-run: one head_text) said "... and 1 more rows"."""
    from chorus_batch import cli as cli_module

    total = open_manifest(history["db"]).versions()["n_files"][-1]
    monkeypatch.setattr(cli_module, "FILE_TABLE_ROWS", total - 1)
    assert cli_module.main(["files", "--db", str(history["db"])]) == 0
    out = capsys.readouterr().out
    assert f"... and 1 more row ({total} in all); --csv or --json lists them all" in out, out


def test_validated_tells_a_clean_version_from_an_unchecked_one(history, tmp_path):
    """An empty `findings` is either; `validated` says which (a snapshot folder does not record it: None)."""
    assert open_manifest(history["db"]).validated("v1") is True  # run validates
    assert open_manifest(history["snaps"]).validated("v1") is None
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    m = open_manifest(db)
    assert m.findings().height == 0 and m.validated() is False
    with pytest.raises(UsageError, match="no version 'nope'"):
        m.validated("nope")


def test_diff_of_a_version_with_itself_is_empty(reader):
    assert reader.diff("v2", "v2").height == 0


def test_diff_without_a_version_to_compare_from_is_refused_as_diff_without_from_is(reader, history):
    """m.diff(None) (a notebook's unset parameter) compared the latest version with itself: an empty frame, read as
    "no changes". `diff` needs --from; the library needs from_version alike (to_version None stays the latest)."""
    for call in (lambda: reader.diff(None), lambda: reader.diff(None, "v2")):
        with pytest.raises(UsageError, match=r"^from_version is needed") as raised:
            call()
        assert "versions --db" in raised.value.fix
    assert reader.diff("v1").equals(reader.diff("v1", "v3"))
    done = cli("diff", "--db", str(history["db"]))
    assert done.returncode == 2 and "--from" in done.stderr, done.stderr


def test_a_count_of_a_wrong_type_or_below_zero_is_a_usage_error_that_says_what_to_give(reader):
    """similar_paths(path, limit="3") (papermill passes parameters as text) was a TypeError from deep inside, limit=2.5
    another, limit=-1 every suggestion but the last, limit=True one suggestion; person_suggestions(limit=...) alike."""
    for bad in ("3", -1, 2.5, True, None):
        for call in (lambda: reader.similar_paths("omop/PERSON.csv", limit=bad),
                     lambda: reader.person_suggestions("1", limit=bad)):
            with pytest.raises(UsageError, match=r"^limit is a whole number of 0 or more, not ") as raised:
                call()
            assert "limit=5" in raised.value.fix
    assert reader.similar_paths("omop/PERSON.csv", limit=1) == ["OMOP/person.csv"]
    assert reader.similar_paths("omop/PERSON.csv", limit=0) == []
    assert len(reader.person_suggestions("0", limit=1)) == 1


def test_files_part_and_files_sliced_say_a_wrong_column_limit_or_slice_size_as_usage_errors(reader):
    """files_part(columns=("srcfil",)) was a KeyError, columns="srcfile" a KeyError of 's', limit=-1 every row but the
    last (the Parquet reader); files_sliced(rows=0) an IndexError, rows=-1 alike."""
    whole = reader.files()
    for columns, said in ((("srcfil",), "no file column 'srcfil'; did you mean 'srcfile'?"), (("md5", 3), "no file column 3"),
                          ((), "columns names no column"), (5, "columns names no column")):
        with pytest.raises(UsageError, match=re.escape(said)) as raised:
            reader.files_part(columns=columns)
        assert raised.value.where == "files_part(columns=...)" and "srcfile, md5, size" in raised.value.fix
    for bad in (-1, "3", True):
        with pytest.raises(UsageError, match=r"^limit is a whole number of 0 or more"):
            reader.files_part(limit=bad)
    for bad, said in ((0, "1 or more, not 0"), (-1, "0 or more, not int -1"), ("5", "not str '5'")):
        with pytest.raises(UsageError, match=re.escape(said)):
            reader.files_sliced(rows=bad)
    # one column named alone, as text; rows counted as files gives them
    count, frame = reader.files_part(columns="srcfile")
    assert count == whole.height and frame.equals(whole.select("srcfile"))
    assert pl.concat(list(reader.files_sliced(rows=1))).equals(whole)


def test_findings_of_a_rule_not_text_and_runs_of_failed_not_a_truth_value_are_usage_errors(reader):
    """findings(rule=5) was a TypeError ('int' object is not iterable); runs(failed="no") kept the failed runs only
    (any text is true), runs(failed="yes") alike, unsaid."""
    for rule in (5, [5]):
        with pytest.raises(UsageError, match=r"^a rule is text, not int 5") as said:
            reader.findings(rule=rule)
        assert said.value.where == "rule="
    for failed in ("no", "yes", 2, None):
        with pytest.raises(UsageError, match=r"^failed is True or False, not ") as said:
            reader.runs(failed=failed)
        assert said.value.where == "runs(failed=...)" and "failed=True" in said.value.fix
    assert reader.findings(rule=None).equals(reader.findings())
    assert reader.runs(failed=False).equals(reader.runs()) and reader.runs(failed=True).height <= reader.runs().height


def test_files_part_of_columns_without_the_path_reads_the_latest_version(reader):
    """The latest version's query orders a UNION by srcfile: columns=("md5",) was "SQLite failed on the manifest: 1st
    ORDER BY term does not match any column in the result set" (an earlier version's query had no UNION)."""
    whole = reader.files()
    for limit in (None, 2):
        count, frame = reader.files_part(columns=("md5", "size"), limit=limit)
        assert count == whole.height
        assert frame.equals(whole.select("md5", "size").head(limit or whole.height))


def test_a_reader_used_in_a_with_block_is_closed_at_its_end(reader):
    """The reader's `close()` removes the scratch folders of the DuckDB connections it gave; `with open_manifest(db)
    as m:` was a TypeError (no context manager), so a notebook had to remember to close it."""
    with open_manifest(reader.path) as m:
        con = m.duckdb()
        assert con.execute("SELECT count(*) FROM files").fetchone()[0] == m.files().height > 0
        scratch = [Path(row[2]).parent for row in con.execute("PRAGMA database_list").fetchall() if row[2]]
        assert scratch and all(folder.exists() for folder in scratch)
    assert not any(folder.exists() for folder in scratch)
    assert "_sessions" not in m.__dict__


def test_library_messages_name_the_arguments_the_command_line_its_flags(tmp_path):
    """Manifest("nope.sqlite").versions() told a notebook to "pass --db with the manifest's path": the library names
    its own arguments; the command line still names --db (errors.pass_db, errors.named decide it in one place)."""
    from chorus_batch import Manifest

    (tmp_path / "folder.sqlite").mkdir()
    for db, said in ((tmp_path / "nope.sqlite", "no manifest at"), (tmp_path / "folder.sqlite", "names a folder")):
        with pytest.raises(UsageError, match=said) as raised:
            Manifest(db).versions()
        assert "--db" not in str(raised.value) and "give Manifest() or open_manifest()" in raised.value.fix
        done = cli("upgrade", "--db", str(db))  # (which reads a folder as a manifest file, as Manifest does)
        assert done.returncode == 2 and said in done.stderr and "pass --db with" in done.stderr, done.stderr


def test_history_follows_a_file_through_its_versions(reader, history):
    site_files = sorted(history["trees"][1])
    replaced = site_files[3]  # replaced at step 3 (see the fixture)
    rows = reader.history(replaced)
    assert rows["version_valid"].to_list()[-1] == "v3"
    assert rows["change"].to_list()[-1] == "replaced"
    assert rows["md5"].to_list()[-1] == history["trees"][2][replaced]
    assert rows["ended_by"].to_list()[-2] == "replaced"
    moved = site_files[5] + ".moved"
    rows = reader.history(moved)
    # The renamed file's earlier rows come along under the old path.
    assert rows["srcfile"].to_list()[-2:] == [site_files[5], moved]
    assert rows["ended_by"].to_list()[-2] == "renamed" and rows["renamed_to"].to_list()[-2] == moved
    assert rows["change"].to_list()[-1] == "renamed"
    deleted = reader.history(site_files[7])
    assert deleted["ended_by"].to_list()[-1] == "removed" and deleted["version_invalid"].to_list()[-1] == "v3"


def test_a_path_typed_absolute_under_the_site_is_read_by_a_snapshot_folder_as_by_the_manifest(reader, history):
    """`history /data/site/OMOP/a.csv` (and `files --path` of an absolute folder) read the site-relative path from the
    manifest's roots; a --parquet snapshot folder, which the README says answers as the manifest does, knew no root
    and said `no file '/data/site/...' in the manifest`. Its versions.parquet records each version's site."""
    site = history["site"]
    moved = sorted(history["trees"][1])[5] + ".moved"
    assert reader.history_of(str(site / moved)).equals(reader.history(moved))
    folder = moved.split("/")[0]
    typed = reader.rows_under(reader.files(), str(site / folder))
    assert typed.height and typed.equals(reader.rows_under(reader.files(), folder))
    out = cli("history", "--db", str(history["db"] if reader.path.suffix else history["snaps"]), str(site / moved))
    assert out.returncode == 0 and moved in out.stdout, out.stderr


def test_a_path_typed_absolute_under_a_copy_of_the_site_names_the_recorded_site_and_the_path_meant(history, tmp_path):
    """A manifest read on another machine, beside a copy of the site: `history /copy/site/OMOP/a.csv` said only "no
    file … in the manifest" (and `files --path` "paths are site-relative"), as if the file were not tracked. Now the
    folder the manifest records its site in is named, with the site-relative path the typed one ends in."""
    moved = sorted(history["trees"][1])[5] + ".moved"
    copy = tmp_path / "elsewhere" / "site"
    for db in (history["db"], history["snaps"]):
        out = cli("history", "--db", str(db), str(copy / moved))
        assert out.returncode == 2, out.stderr
        assert str(history["site"]) in out.stderr and f"did you mean {moved!r}?" in out.stderr, out.stderr
        out = cli("files", "--db", str(db), "--path", str(copy / moved.split("/")[0]))
        assert out.returncode == 0 and f"did you mean {moved.split('/')[0]!r}?" in out.stderr, out.stderr
        out = cli("history", "--db", str(db), str(tmp_path / "no" / "such.csv"))
        assert out.returncode == 2 and "absolute path under none of the folders" in out.stderr, out.stderr
        assert "did you mean" not in out.stderr


def test_sqlite_and_parquet_readers_agree(history):
    sqlite, parquet = open_manifest(history["db"]), open_manifest(history["snaps"])
    # A snapshot keeps each row's stat and last verification of that time (the manifest updates them in
    # place); when a later version ended the row is read from the change sets, as the manifest says it
    # (files --as-of and diff of a snapshot folder said version_invalid and time_invalid null).
    as_then = ["mtime_ns", "verified_ns"]
    for label in history["labels"]:
        assert sqlite.files(label).drop(as_then).equals(parquet.files(label).drop(as_then))
        assert sqlite.files(label)["version_invalid"].drop_nulls().len() > 0 or label == history["labels"][-1]
    for a, b in (("v1", "v3"), ("v3", "v1"), ("v2", "v3")):
        assert sqlite.diff(a, b).drop(as_then).equals(parquet.diff(a, b).drop(as_then)), (a, b)
        assert sqlite.changes(label).sort("change", "srcfile").select("change", "srcfile", "md5").equals(
            parquet.changes(label).sort("change", "srcfile").select("change", "srcfile", "md5"))
    assert sqlite.change_counts().equals(parquet.change_counts())
    assert sqlite.registry().height == parquet.registry().height


def test_the_two_readers_give_frames_of_the_same_columns_and_types(history):
    """A reviewer's code reads a manifest or its snapshot folder alike: `change_counts()["n"]` was Int64 from the
    manifest and UInt32 from the snapshots (`equals` does not compare types: the test above could not see it)."""
    sqlite, parquet = open_manifest(history["db"]), open_manifest(history["snaps"])
    first, second, last = history["labels"]
    some = sorted(history["trees"][0])[3]
    asked = {"files": lambda m: m.files(first), "changes": lambda m: m.changes(second), "all_changes": lambda m: m.all_changes(),
             "change_counts": lambda m: m.change_counts(), "registry": lambda m: m.registry(),
             "scan_errors": lambda m: m.scan_errors(last), "findings": lambda m: m.findings(last),
             "diff": lambda m: m.diff(first, last), "history": lambda m: m.history(some),
             "files_per_person": lambda m: m.files_per_person(), "sessions": lambda m: m.sessions(),
             "duplicates": lambda m: m.duplicates(), "runs": lambda m: m.runs(),
             "files_part": lambda m: m.files_part(columns=("md5", "size"))[1]}
    for name, ask in asked.items():
        assert ask(sqlite).schema == ask(parquet).schema, name


def test_cli_json_and_csv_have_the_documented_fields(history):
    db = str(history["db"])
    files = cli("files", "--db", db, "--as-of", "v1", "--json")
    assert files.returncode == 0, files.stderr
    rows = json.loads(files.stdout)
    assert {r["srcfile"]: r["md5"] for r in rows} == history["trees"][0]
    assert {"srcfile", "md5", "size", "person_id", "modality", "version_valid"} <= rows[0].keys()
    diff = cli("diff", "--db", db, "--from", "v1", "--to", "v3", "--csv")
    assert diff.returncode == 0, diff.stderr
    frame = pl.read_csv(diff.stdout.encode(), infer_schema=False)
    check_diff(frame.with_columns(size=pl.col("size").cast(pl.Int64)), history["trees"][0], history["trees"][2])
    history_out = cli("history", "--db", str(history["snaps"]), sorted(history["trees"][1])[3], "--json")
    assert history_out.returncode == 0, history_out.stderr
    assert [r["version_valid"] for r in json.loads(history_out.stdout)][-1] == "v3"
    table = cli("diff", "--db", db, "--from", "v3", "--to", "v1")
    assert table.returncode == 0 and table.stdout.startswith("v3 -> v1:")


def test_an_iso_time_in_the_basic_form_selects_a_version(reader):
    """`--as-of 20261127T030000Z` (ISO 8601's basic form, what `date -u +%Y%m%dT%H%M%SZ` prints) was taken as a
    mistyped label ("did you mean" two labels, either a wrong answer); it is the time it spells. Digits alone stay
    labels (eight that spell a date are said with its ISO form), and a basic form that is no time is said to be no
    valid ISO date-time."""
    second = reader.versions().row(1, named=True)
    # The second version's own commit time (whole seconds): the third, committed more than a second after
    # the second, is always later. One second more was the third's time when that run took under 0.9 s.
    at = datetime.fromisoformat(second["finished_at"].replace("Z", "+00:00"))
    assert at.microsecond == 0
    assert reader.resolve(at.strftime("%Y%m%dT%H%M%SZ")) == reader.resolve(iso(at)) == second["label"]
    assert reader.resolve(at.strftime("%Y%m%dT%H%M%S+0000")) == second["label"]
    with pytest.raises(UsageError, match="it is not a valid ISO date-time"):
        reader.resolve(at.strftime("%Y%m%dT99"))
    # Eight digits stay a label, said with the date they spell (`--as-of 20261205` had only a whole ISO time's example)
    day = at.date().isoformat()
    with pytest.raises(UsageError, match=rf"no version '\d{{8}}' in the manifest; as a date, write it {day} \(the state "
                                         rf"at its start, UTC\) or {day}T23:59:59Z \(at its end\)\n"):
        reader.resolve(at.strftime("%Y%m%d"))
    with pytest.raises(UsageError, match=r"no version '20261399' in the manifest\n"):  # (no date)
        reader.resolve("20261399")
    # Fourteen digits that are no label, in the labels' own form (`date -u +%Y%m%d%H%M%S`), are said with the time they
    # spell, which selects a version: "no version", with the nearest labels (the later first), was all it said.
    typed = at.strftime("%Y%m%d%H%M%S")
    with pytest.raises(UsageError, match=rf"as a time \(the version committed at or before it\), write it "
                                         rf"{at.strftime('%Y-%m-%dT%H:%M:%S')}Z or {at.strftime('%Y%m%dT%H%M%S')}Z\n"):
        reader.resolve(typed)
    assert reader.resolve(f"{at.strftime('%Y%m%dT%H%M%S')}Z") == second["label"]
    with pytest.raises(UsageError, match=r"no version '20261399000000' in the manifest\n"):  # (no time)
        reader.resolve("20261399000000")


def test_cli_errors_say_what_where_and_how_to_fix(history, tmp_path):
    missing = cli("files", "--db", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 2 and "no manifest" in missing.stderr and "fix:" in missing.stderr
    for command in (["files"], ["versions"], ["report", "--out", str(tmp_path / "r.html")]):  # a folder, not snapshots
        folder = cli(*command, "--db", str(tmp_path))
        assert folder.returncode == 2 and "no Parquet snapshots in" in folder.stderr, folder.stderr
    bad = cli("diff", "--db", str(history["db"]), "--from", "yesterday")
    assert bad.returncode == 2 and "no version 'yesterday'" in bad.stderr and "fix:" in bad.stderr
    unknown = cli("history", "--db", str(history["db"]), "no/such/file")
    assert unknown.returncode == 2 and "no file" in unknown.stderr
    folder = cli("history", "--db", str(history["db"]), "OMOP/")  # said "no file", as if nothing were there
    assert folder.returncode == 2 and "'OMOP/' is a folder of" in folder.stderr
    # (the commands suggested read the manifest asked: pasted without --db they read the shell folder's default)
    assert f"chorus-batch files --db {shlex.quote(str(history['db']))} --path OMOP/" in folder.stderr, folder.stderr
    empty = cli("history", "--db", str(history["db"]), "")  # was "'' is a folder of N current files"
    assert empty.returncode == 2 and "PATH is empty" in empty.stderr
    assert "Traceback" not in missing.stderr + bad.stderr + unknown.stderr
    for wrong in ("2026-13-45", "2026-02-30T10:00:00Z", "2026-11-27T25:00"):  # a time meant, not a valid one
        out = cli("files", "--db", str(history["db"]), "--as-of", wrong)
        assert out.returncode == 2 and f"no version '{wrong}' in the manifest, and it is not a valid ISO date-time" in out.stderr


def without_override(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The real CLI, subject to file permissions as a reviewer with read access is, even when the tests
    run as root (root's permission-override capabilities are dropped: in a fork of the tests' pre-imported zygote,
    as util-linux setpriv drops them, or by setpriv where the command runs as a plain subprocess)."""
    import zygote  # (a fork of the pre-imported zygote, its overrides dropped as setpriv drops them)

    done = zygote.run(list(args), str(cwd or os.getcwd()), dict(os.environ), 120, drop_override=os.geteuid() == 0)
    if done is not None:
        return done
    prefix = []
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    return subprocess.run([*prefix, sys.executable, "-m", "chorus_batch", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_a_manifest_in_a_read_only_folder_is_read_and_never_changed(history, tmp_path):
    """A reviewer with read access (file 0444 in a 0555 folder): SQLite could not make the WAL manifest's
    -shm file, and every read command failed with "the manifest cannot be written"."""
    shared, out = tmp_path / "shared", tmp_path / "out"
    shared.mkdir()
    out.mkdir()
    db = shared / "m.sqlite"
    shutil.copyfile(history["db"], db)
    before = hashlib.md5(db.read_bytes()).hexdigest()
    os.chmod(db, 0o444)
    os.chmod(shared, 0o555)
    try:
        versions = without_override("versions", "--db", str(db), "--json", cwd=out)
        files = without_override("files", "--db", str(db), "--as-of", "v1", "--json", cwd=out)
        diff = without_override("diff", "--db", str(db), "--from", "v1", "--to", "v3", "--json", cwd=out)
        path = sorted(history["trees"][1])[3]
        hist = without_override("history", "--db", str(db), path, "--json", cwd=out)
        changes = without_override("changes", "--db", str(db), "--version", "v2", "--json", cwd=out)
        report = without_override("report", "--db", str(db), "--out", str(out / "r.html"), cwd=out)
        # the stored findings of the latest version: read without the lock the reviewer cannot take
        validated = without_override("validate", "--db", str(db), "--json", cwd=out)
        # A -wal not yet checkpointed holds commits the file lacks: said, not read past.
        os.chmod(shared, 0o755)
        (shared / "m.sqlite-wal").write_bytes(b"x" * 100)
        os.chmod(shared, 0o555)
        walled = without_override("versions", "--db", str(db), cwd=out)
    finally:
        os.chmod(shared, 0o755)
    for done in (versions, files, diff, hist, changes, report):
        assert done.returncode == 0, done.stderr
    assert validated.returncode in (0, 1) and json.loads(validated.stdout)["version"] == "v3", validated.stderr
    assert [v["label"] for v in json.loads(versions.stdout)] == ["v1", "v2", "v3"]
    assert {r["srcfile"]: r["md5"] for r in json.loads(files.stdout)} == history["trees"][0]
    check_diff(pl.DataFrame(json.loads(diff.stdout)), history["trees"][0], history["trees"][2])
    assert json.loads(hist.stdout)[-1]["version_valid"] == "v3"
    assert {r["version"] for r in json.loads(changes.stdout)} == {"v2"}
    assert (out / "r.html").stat().st_size > 0
    assert walled.returncode == 3 and "-wal file holds commits" in walled.stderr and "fix:" in walled.stderr
    assert "Traceback" not in walled.stderr
    (shared / "m.sqlite-wal").unlink()
    assert sorted(p.name for p in shared.iterdir()) == ["m.sqlite"]
    assert hashlib.md5(db.read_bytes()).hexdigest() == before


def test_a_files_path_typed_with_a_trailing_slash_is_not_called_a_folder(site, db):
    """`history OMOP/person.csv/` said "'OMOP/person.csv/' is a folder of 1 current file, not a file": untrue, the
    one "file in it" being the file itself. It now says the path names a file and how to ask its history."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/visit/a.csv", b"a")
    run_site(site, db, validate_site=False)
    for typed in ("OMOP/person.csv/", "OMOP\\person.csv\\"):
        out = cli("history", "--db", str(db), typed)
        assert out.returncode == 2 and "is a folder of" not in out.stderr, out.stderr
        assert "'OMOP/person.csv' is a file" in out.stderr, out.stderr
        assert f"chorus-batch history --db {shlex.quote(str(db))} OMOP/person.csv" in out.stderr, out.stderr
    folder = cli("history", "--db", str(db), "OMOP/visit/")  # a real folder is still said as one
    assert folder.returncode == 2 and "is a folder of 1 current file" in folder.stderr, folder.stderr


def test_a_file_replaced_by_a_folder_of_its_name_is_said_a_folder_with_the_file_it_was(site, db):
    """`history stray/` where the file `stray` was replaced by a folder `stray/` said "'stray' is a file, not a
    folder": untrue of today's tree. It is said as the folder it is, naming the file it was and until when; a file
    removed since is said to have been one."""
    write(site, "OMOP/person.csv", b"person_id\n")
    write(site, "stray", b"abc")
    write(site, "gone.txt", b"g")
    first = run_site(site, db, validate_site=False).label
    (site / "stray").unlink()
    (site / "gone.txt").unlink()
    write(site, "stray/inner", b"abc")
    second = run_site(site, db, validate_site=False, max_delete="all").label
    assert second and second != first
    out = cli("history", "--db", str(db), "stray/")
    assert out.returncode == 2 and "is a file, not a folder" not in out.stderr, out.stderr
    assert "'stray/' is a folder of 1 current file" in out.stderr, out.stderr
    assert f"'stray' was a file until version {second}" in out.stderr, out.stderr
    assert f"chorus-batch history --db {shlex.quote(str(db))} stray" in out.stderr, out.stderr
    out = cli("history", "--db", str(db), "gone.txt/")
    assert out.returncode == 2 and f"'gone.txt' was a file (until version {second}), not a folder" in out.stderr, out.stderr


def test_history_of_a_removed_file_typed_in_another_case_suggests_its_path(site, db, tmp_path):
    """`history 000001/waveforms/b.dat` of a file removed (or renamed away) since said "no file ... in the manifest"
    with no suggestion: the paths it may mean were looked for in the latest version only, which has no such file,
    though the manifest holds its whole story. It now suggests the paths of every version."""
    write(site, "OMOP/person.csv", b"person_id\n")
    write(site, "000001/Waveforms/b.dat", b"bb")
    write(site, "000001/Waveforms/z.dat", b"zz")
    run_site(site, db, validate_site=False, parquet=str(tmp_path / "snaps"))
    (site / "000001" / "Waveforms" / "b.dat").unlink()
    (site / "000001" / "Waveforms" / "z.dat").rename(site / "000001" / "Waveforms" / "Z.dat")
    run_site(site, db, validate_site=False, max_delete="all", parquet=str(tmp_path / "snaps"))
    out = cli("history", "--db", str(db), "000001/waveforms/b.dat")
    assert out.returncode == 2 and "did you mean '000001/Waveforms/b.dat'?" in out.stderr, out.stderr
    out = cli("history", "--db", str(db), "000001/waveforms/z.dat")
    assert out.returncode == 2 and "did you mean '000001/Waveforms/Z.dat', '000001/Waveforms/z.dat'?" in out.stderr
    for reader in (open_manifest(db), open_manifest(tmp_path / "snaps")):
        assert reader.similar_paths("000001/WAVEFORMS/B.DAT", ever=True) == ["000001/Waveforms/b.dat"]
        assert reader.similar_paths("000001/WAVEFORMS/B.DAT") == []  # `files --path`: the latest version's
    out = cli("files", "--db", str(db), "--path", "000001/waveforms/b.dat")  # not in the latest version: not suggested
    assert "000001/Waveforms/b.dat" not in out.stdout + out.stderr, out


def test_files_as_of_an_earlier_version_suggests_that_versions_paths(site, db):
    """`files --as-of V1 --path 000001/waveforms/z.dat` suggested '000001/Waveforms/Z.dat', a path of the latest
    version that V1 did not have (asked as suggested: 0 files again), and not V1's own '000001/Waveforms/b.dat' for
    `.../b.dat`: the paths a mistyped --path may mean were those of the latest version, whatever version was asked."""
    write(site, "OMOP/person.csv", b"person_id\n")
    write(site, "000001/Waveforms/b.dat", b"bb")
    first = run_site(site, db, validate_site=False).label
    (site / "000001" / "Waveforms" / "b.dat").unlink()
    write(site, "000001/Waveforms/Z.dat", b"zz")
    run_site(site, db, validate_site=False, max_delete="all")
    out = cli("files", "--db", str(db), "--as-of", first, "--path", "000001/waveforms/b.dat")
    assert "did you mean '000001/Waveforms/b.dat'?" in out.stderr, out.stderr
    out = cli("files", "--db", str(db), "--as-of", first, "--path", "000001/waveforms/z.dat")
    assert "Z.dat" not in out.stderr, out.stderr
    out = cli("files", "--db", str(db), "--path", "000001/waveforms/z.dat")  # the latest version's, as before
    assert "did you mean '000001/Waveforms/Z.dat'?" in out.stderr, out.stderr


def test_a_backslash_in_a_posix_name_is_looked_up_as_typed(site, db):
    """`history 'OMOP/a\\b.csv'` turned the backslash into a separator and found no file (or another one):
    the path as typed comes first, the Windows reading only when no file has that name."""
    write(site, "OMOP/a\\b.csv", b"named with a backslash")
    write(site, "OMOP/a/b.csv", b"in folder a")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    md5 = {p: m for p, m in tree_md5(site).items()}
    reader = open_manifest(db)
    assert reader.history_of("OMOP/a\\b.csv")["md5"].to_list() == [md5["OMOP/a\\b.csv"]]
    assert reader.history_of(f"{site}/OMOP/a\\b.csv")["srcfile"].to_list() == ["OMOP/a\\b.csv"]
    assert reader.history_of("OMOP\\a\\b.csv")["md5"].to_list() == [md5["OMOP/a/b.csv"]]  # Windows separators
    assert reader.history_of("OMOP\\person.csv")["srcfile"].to_list() == ["OMOP/person.csv"]
    assert reader.rows_under(reader.files(), "OMOP/a\\b.csv")["srcfile"].to_list() == ["OMOP/a\\b.csv"]
    assert reader.rows_under(reader.files(), "OMOP\\a")["srcfile"].to_list() == ["OMOP/a/b.csv"]
    out = cli("history", "--db", str(db), "OMOP/a\\b.csv", "--json")
    assert out.returncode == 0 and [r["srcfile"] for r in json.loads(out.stdout)] == ["OMOP/a\\b.csv"], out.stderr
    listed = cli("changes", "--db", str(db), "--path", "OMOP/a\\b.csv", "--json")
    assert [r["srcfile"] for r in json.loads(listed.stdout)] == ["OMOP/a\\b.csv"], listed.stderr
    missing = cli("history", "--db", str(db), "OMOP/no\\such.csv")
    assert missing.returncode == 2 and "no file 'OMOP/no\\such.csv' in the manifest" in missing.stderr


def test_a_name_starting_with_a_dash_is_told_how_to_be_typed(site, db):
    """`history -1+1` said "the following arguments are required: path" and `files --path -notes.txt` "argument
    --path: expected one argument", of a path the reviewer had given: a word starting with '-' is read as a flag.
    The message now names the word and how to write it; written so, the file is found."""
    write(site, "-1+1", b"a")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    out = cli("history", "--db", str(db), "-1+1")
    assert out.returncode == 2 and "'-1+1' starts with '-', so it was read as a flag" in out.stderr, out.stderr
    assert "write ./-1+1, or -- -1+1 at the end of the command line" in out.stderr
    for command in ("files", "changes"):
        out = cli(command, "--db", str(db), "--path", "-1+1")
        assert out.returncode == 2 and "write --path=-1+1 or --path ./-1+1" in out.stderr, out.stderr
        for typed in (["--path=-1+1"], ["--path", "./-1+1"]):
            found = cli(command, "--db", str(db), *typed, "--json")
            assert [r["srcfile"] for r in json.loads(found.stdout)] == ["-1+1"], found.stderr
    for typed in (["./-1+1"], ["--", "-1+1"]):
        found = cli("history", "--db", str(db), "--json", *typed)
        assert [r["srcfile"] for r in json.loads(found.stdout)] == ["-1+1"], found.stderr
    plain = cli("history", "--db", str(db))  # no dashed word: argparse's message as it was
    assert plain.returncode == 2 and plain.stderr.rstrip().endswith("the following arguments are required: path")


def test_one_change_and_one_file_are_said_in_the_singular(site, db):
    """`changes` said "version ...: 1 changes" and `history FOLDER` "a folder of 1 current files"."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    out = cli("changes", "--db", str(db))
    assert out.returncode == 0 and out.stdout.startswith(f"version {open_manifest(db).latest()}: 1 change\n"), out.stdout
    out = cli("history", "--db", str(db), "OMOP")
    assert out.returncode == 2 and "'OMOP' is a folder of 1 current file, not a file" in out.stderr, out.stderr


def test_a_name_typed_in_the_other_unicode_form_is_found_and_a_near_miss_is_named(site, db):
    """`history OMOP/café.csv` typed composed (NFC) found no file recorded decomposed (NFD, a macOS copy) and
    said "no file 'OMOP/café.csv'", the very name `files` shows; a name recorded with a trailing space or in
    another case was "no file" with no hint. The other Unicode form is looked up too (after the exact one: a
    twin in the typed form wins), and a near miss is named, quoted so that the difference shows."""
    nfc, nfd = "OMOP/caf\u00e9.csv", "OMOP/cafe\u0301.csv"
    write(site, nfd, b"decomposed")
    write(site, "OMOP/trail.csv ", b"space at the end")
    write(site, "OMOP/Person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    reader = open_manifest(db)
    assert reader.history_of(nfc)["srcfile"].to_list() == [nfd]
    assert reader.rows_under(reader.files(), nfc)["srcfile"].to_list() == [nfd]
    out = cli("history", "--db", str(db), nfc, "--json")
    assert out.returncode == 0 and [r["srcfile"] for r in json.loads(out.stdout)] == [nfd], out.stderr
    listed = cli("files", "--db", str(db), "--path", nfc, "--json")
    assert [r["srcfile"] for r in json.loads(listed.stdout)] == [nfd], listed.stderr
    spaced = cli("history", "--db", str(db), "OMOP/trail.csv")
    assert spaced.returncode == 2 and "no file 'OMOP/trail.csv' in the manifest; did you mean 'OMOP/trail.csv '?" \
        in spaced.stderr, spaced.stderr
    cased = cli("history", "--db", str(db), "OMOP/person.csv")
    assert cased.returncode == 2 and "did you mean 'OMOP/Person.csv'?" in cased.stderr, cased.stderr
    write(site, nfc, b"composed")  # now both forms: each is found as typed
    run_site(site, db, validate_site=False)
    reader = open_manifest(db)
    assert reader.history_of(nfc)["srcfile"].to_list() == [nfc] and reader.history_of(nfd)["srcfile"].to_list() == [nfd]


def test_a_manifest_without_versions_is_one_usage_error_in_every_reading_command(tmp_path):
    """files, diff, report and registry said "the manifest has no versions yet" with exit 3 (a failure),
    validate the same with exit 2: asking a manifest with no version for one is a usage error."""
    from chorus_batch.store import Manifest

    db = tmp_path / "m.sqlite"
    Manifest(db).ensure_schema()
    for args in (["files"], ["files", "--json"], ["diff", "--from", "x"], ["report", "--out", str(tmp_path / "r.html")],
                 ["registry", "--out", str(tmp_path / "reg")], ["validate"],
                 # changes said "no versions yet" with exit 0 (`--json`: [], as if a version had changed nothing),
                 # history "no file PATH", and review failed in the notebook's cell 5 with exit 3
                 ["changes"], ["changes", "--json"], ["changes", "--csv"], ["history", "OMOP/person.csv"],
                 ["history", "OMOP/person.csv", "--json"], ["review", "--out", str(tmp_path / "r.ipynb")]):
        out = cli(*args, "--db", str(db))
        assert out.returncode == 2, (args, out.stderr)
        assert "no versions yet" in out.stderr and "fix:" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(UsageError, match="no versions yet"):
        open_manifest(db).files()


def test_a_manifest_this_user_cannot_reach_or_read_is_said_as_such(history, tmp_path):
    """A manifest in a folder the user may not enter (mode 0700 of another user) was an "internal error:
    PermissionError" in every command (pathlib's is_dir/exists raise it on Python 3.11); one the user may not read
    (mode 0000) was "unable to open database file" with the advice to check that the folder is writable. Both are now
    said with the folder or the file and its mode, exit 3, in every command and in the library."""
    shared = tmp_path / "shared"
    shared.mkdir()
    db = shared / "m.sqlite"
    shutil.copyfile(history["db"], db)
    site = str(history["site"])
    commands = [["versions"], ["files", "--as-of", "v1"], ["changes", "--csv"], ["diff", "--from", "v1"], ["history", "x"],
                ["status", "--site", site], ["run", "--site", site], ["validate"], ["upgrade"],
                ["registry", "--out", str(tmp_path / "reg")]]
    os.chmod(shared, 0o000)
    try:
        for command in commands:
            out = without_override(*command, "--db", str(db))
            assert out.returncode == 3 and "internal error" not in out.stderr, (command, out.stderr)
            assert f"this user may not enter the folder {shared} (permission denied)" in out.stderr, (command, out.stderr)
        script = (f"from chorus_batch.review import open_manifest\nopen_manifest({str(db)!r})")
        out = subprocess.run(["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                              "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c", script]
                             if os.geteuid() == 0 else [sys.executable, "-c", script], capture_output=True, text=True)
        assert "ManifestError" in out.stderr and "may not enter the folder" in out.stderr, out.stderr
    finally:
        os.chmod(shared, 0o755)
    os.chmod(db, 0o000)
    try:
        for command in commands[:3]:
            out = without_override(*command, "--db", str(db))
            assert out.returncode == 3 and "cannot be read by this user (permission denied: mode 0000)" in out.stderr, (
                command, out.stderr)
            assert "writable" not in out.stderr
    finally:
        os.chmod(db, 0o600)


def test_a_manifest_with_commits_in_its_wal_on_a_read_only_mount_says_to_copy_both(history, tmp_path):
    """A manifest copied with a -wal still holding commits, on a file system mounted read-only (a backup, a snapshot):
    the refusal said to read it again "once the run has ended", which no run on that mount ever does. It now says the
    file system is read-only and to copy the manifest with its -wal to a writable folder, which then reads whole."""
    import sqlite3

    source, mounted = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    shutil.copyfile(history["db"], source / "m.sqlite")
    con = sqlite3.connect(source / "m.sqlite")  # held open: the -wal keeps the commit (no checkpoint at close yet)
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("INSERT INTO meta (key, value) VALUES ('test_note', 'in the wal only')")
    con.commit()
    shutil.copyfile(source / "m.sqlite", tmp_path / "m.sqlite")
    shutil.copyfile(source / "m.sqlite-wal", tmp_path / "m.sqlite-wal")
    con.close()
    for name in ("m.sqlite", "m.sqlite-wal"):
        shutil.copyfile(tmp_path / name, source / name)
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(source), str(mounted)]).returncode:
        pytest.skip("needs root to mount a folder read-only")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        out = cli("files", "--db", str(mounted / "m.sqlite"))
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    assert out.returncode == 3 and "it lies on a read-only file system" in out.stderr, out.stderr
    assert "once the run has ended" not in out.stderr and "copy the manifest with its -wal file" in out.stderr
    copied = tmp_path / "copy"
    copied.mkdir()
    for name in ("m.sqlite", "m.sqlite-wal"):
        shutil.copyfile(source / name, copied / name)
    assert cli("versions", "--db", str(copied / "m.sqlite")).returncode == 0


def test_an_old_manifest_read_only_says_how_to_read_a_copy(tmp_path):
    """A reviewer with read access to a schema-2 manifest was told only to upgrade it in place, which they
    may not: the message also says how to read an upgraded copy; the file is not changed."""
    from pathlib import Path

    shared = tmp_path / "shared folder"  # (a space: the commands said are quoted)
    shared.mkdir()
    db = shared / "m.sqlite"
    shutil.copyfile(Path(__file__).parent / "fixtures" / "schema2" / "manifest.sqlite", db)
    before = hashlib.md5(db.read_bytes()).hexdigest()
    os.chmod(db, 0o444)
    os.chmod(shared, 0o555)
    try:
        out = without_override("files", "--db", str(db), cwd=tmp_path)
    finally:
        os.chmod(shared, 0o755)
    assert out.returncode == 3 and "schema version 2" in out.stderr and "Traceback" not in out.stderr
    # the commands paste ("cp <manifest> copy.sqlite" before: a shell reads `<manifest` as a redirection)
    said = out.stderr.split("upgrades a copy: `")[1].split("`")[0]
    assert said == (f"sqlite3 {shlex.quote(str(db))} '.backup copy.sqlite' && chorus-batch upgrade --db "
                    "copy.sqlite"), out.stderr
    assert f"`chorus-batch upgrade --db {shlex.quote(str(db))}`" in out.stderr
    this = f"{shlex.quote(sys.executable)} -m chorus_batch"  # (the chorus-batch of this checkout)
    pasted = subprocess.run(["bash", "-c", said.replace("chorus-batch", this)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert pasted.returncode == 0, pasted.stderr
    assert cli("versions", "--db", str(tmp_path / "copy.sqlite")).returncode == 0
    assert hashlib.md5(db.read_bytes()).hexdigest() == before and sorted(p.name for p in shared.iterdir()) == ["m.sqlite"]


def test_the_copy_an_old_manifest_on_a_read_only_mount_says_to_make_keeps_the_commits_in_its_wal(tmp_path):
    """An older release's run killed after its commit leaves that commit in the manifest's -wal file; on a share the
    reviewer may only read, no checkpoint folds it in. The copy the message said to make (`cp <manifest> copy.sqlite`)
    took the main file alone: the upgraded copy lacked the commit. The command it says reads through the WAL."""
    from pathlib import Path

    source, mounted = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    shutil.copyfile(Path(__file__).parent / "fixtures" / "schema2" / "manifest.sqlite", source / "m.sqlite")
    killed_run = ("import os, sqlite3, sys; con = sqlite3.connect(sys.argv[1], isolation_level=None); "
                  "con.execute('PRAGMA wal_autocheckpoint = 0'); "
                  "con.execute(\"INSERT INTO scan_errors (version, srcfile, kind, message) VALUES "
                  "('20261102020000', 'OMOP/x.csv', 'from_wal', 'committed, in the -wal file only')\"); os._exit(0)")
    subprocess.run([sys.executable, "-c", killed_run, str(source / "m.sqlite")], check=True)
    assert (source / "m.sqlite-wal").stat().st_size > 0
    assert os.geteuid() == 0, "mounting a folder read-only needs root (as CI runs)"
    subprocess.run(["mount", "--bind", str(source), str(mounted)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        out = without_override("versions", "--db", str(mounted / "m.sqlite"), cwd=tmp_path)
        said = out.stderr.split("upgrades a copy: `")[1].split("`")[0]
        this = f"{shlex.quote(sys.executable)} -m chorus_batch"
        pasted = subprocess.run(["bash", "-c", said.replace("chorus-batch", this)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    assert out.returncode == 3 and pasted.returncode == 0, (out.stderr, pasted.stderr)
    copy = tmp_path / "copy.sqlite"
    assert query(copy, "SELECT message FROM scan_errors WHERE kind = 'from_wal'") == [
        ("committed, in the -wal file only",)]
    assert cli("versions", "--db", str(copy)).returncode == 0


def test_versions_and_paths_as_a_notebook_spells_them(history, site, db):
    """In a notebook `m.files(date(...))`, `m.diff(20261127034021)` (a label as a number) and
    `m.history(Path(...))` raised TypeErrors from deep inside: a date is its midnight UTC (as the ISO date
    is), a whole number is the label it spells, a path object is its text; anything else is a UsageError."""
    from datetime import date
    from pathlib import Path

    import numpy as np

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False, version_label="1001")
    write(site, "OMOP/person.csv", b"person_id\n2\n")
    run_site(site, db, validate_site=False, version_label="1002")
    numbered = open_manifest(db)
    assert numbered.resolve(1001) == numbered.resolve(np.int64(1001)) == "1001"
    assert numbered.diff(1001, 1002)["change"].to_list() == ["replaced"]
    m = open_manifest(history["db"])
    first = datetime.fromisoformat(m.versions()["finished_at"][0].replace("Z", "+00:00"))
    assert m.resolve(first.date() + timedelta(days=1)) == m.resolve(str(first.date() + timedelta(days=1)))
    with pytest.raises(UsageError, match="no version was committed at or before"):
        m.resolve(date(1999, 1, 1))
    with pytest.raises(UsageError, match="a version is a label or an ISO date-time, not float"):
        m.files(2.5)
    path = sorted(history["trees"][1])[3]
    assert m.history(Path(path)).equals(m.history(path)) and m.history(path).height
    assert m.history_of(Path(path)).equals(m.history(path))


def test_versions_and_changes_read_a_snapshot_folder_as_the_other_commands_do(history):
    """files, diff, history and report took a `run --parquet` folder as --db; versions and changes said
    "--db names a folder, not a manifest file" and suggested a manifest path inside it."""
    snaps, db = str(history["snaps"]), str(history["db"])
    versions = cli("versions", "--db", snaps, "--json")
    assert versions.returncode == 0, versions.stderr
    assert [v["label"] for v in json.loads(versions.stdout)] == ["v1", "v2", "v3"]
    table = cli("versions", "--db", snaps)
    assert table.returncode == 0 and "v3" in table.stdout, table.stderr
    from_snaps = cli("changes", "--db", snaps, "--version", "v2", "--json")
    from_db = cli("changes", "--db", db, "--version", "v2", "--json")
    assert from_snaps.returncode == 0, from_snaps.stderr
    key = lambda rows: sorted((r["change"], r["srcfile"], r["old_srcfile"], r["md5"]) for r in rows)  # noqa: E731
    assert key(json.loads(from_snaps.stdout)) == key(json.loads(from_db.stdout)) != []
    wrong = cli("changes", "--db", snaps, "--version", "v9")
    assert wrong.returncode == 2 and "no version 'v9'" in wrong.stderr


def test_versions_json_gives_null_for_a_version_never_uploaded(history):
    """`versions --json` gave "upload": "" for a version nothing was sent of, where every other field with nothing
    to say is null; the table still shows it blank."""
    db = str(history["db"])
    shown = json.loads(cli("versions", "--db", db, "--json").stdout)
    assert [v["upload"] for v in shown] == [None, None, None]
    table = cli("versions", "--db", db)
    assert table.returncode == 0 and "None" not in table.stdout and "null" not in table.stdout, table.stdout


def test_a_version_committed_by_a_clock_behind_its_predecessors_counts_from_that_commit(site, db, monkeypatch,
                                                                                          caplog):
    """A run on a node whose clock was an hour behind (labelled one second after the latest, as next_label does)
    recorded a commit time before the previous version's: `files --as-of` a time between the two selected it, the
    second version's files, at a time when the version it was built on did not exist yet by the record. Commit
    times are now taken as never going back, and the refusal of an earlier time says why that version is no answer."""
    import chorus_batch.commit
    import chorus_batch.pipeline
    import chorus_batch.store.manifest
    from chorus_batch.times import utc_now

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False)
    first = open_manifest(db).versions().row(0, named=True)
    behind = lambda: utc_now() - timedelta(hours=1)  # noqa: E731
    monkeypatch.setattr(chorus_batch.pipeline, "utc_now", behind)
    monkeypatch.setattr(chorus_batch.commit, "utc_now", behind)
    # (the run log's times too: one machine's clock gives both, and a version whose time disagrees with its run's is
    # one edited by hand, refused otherwise)
    monkeypatch.setattr(chorus_batch.store.manifest, "utc_now", behind)
    write(site, "OMOP/person.csv", b"person_id\n2\n")
    with caplog.at_level("WARNING"):
        run_site(site, db, validate_site=False)
    assert "this machine's clock" in caplog.text and f"is behind the time version {first['label']} was committed" \
        in caplog.text and "set the clock right" in caplog.text, caplog.text
    m = open_manifest(db)
    second = m.versions().row(1, named=True)
    assert second["label"] > first["label"] and second["finished_at"] < first["finished_at"]
    between = iso(datetime.fromisoformat(second["finished_at"].replace("Z", "+00:00")) + timedelta(minutes=1))
    with pytest.raises(UsageError, match=f"records {second['finished_at']}, but it was committed after version "
                                         f"{first['label']}"):
        m.resolve(between)
    assert m.resolve(first["finished_at"]) == second["label"]  # both exist by then: the later one
    out = cli("files", "--db", str(db), "--as-of", between)
    assert out.returncode == 2 and "clock was behind" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_a_snapshot_folder_without_commit_times_says_so_when_asked_for_a_time(history, tmp_path):
    """Snapshots without versions.parquet (an older release's, or version folders copied alone) record no commit
    times: `files --as-of 2030-01-01` said "no version was committed at or before 2030-01-01 ... the first version is
    v1, committed None", untrue of versions that exist. It now says the times are not recorded and to give a label."""
    snaps = tmp_path / "snap"
    shutil.copytree(history["snaps"], snaps)
    (snaps / "versions.parquet").unlink()
    assert open_manifest(snaps).resolve("v2") == "v2"  # labels still work
    for args in (["files", "--as-of", "2030-01-01"], ["diff", "--from", "2000-01-01T00:00:00Z"]):
        out = cli(*args, "--db", str(snaps))
        assert out.returncode == 2 and "None" not in out.stderr and "no version was committed" not in out.stderr, out.stderr
        assert "commit times" in out.stderr and "v1 .. v3" in out.stderr and "fix:" in out.stderr, out.stderr


def test_a_relative_db_is_named_absolute_in_every_read_commands_error(history, tmp_path):
    """`changes --db m.sqlite --version nope` said `where: /abs/m.sqlite`, but files, diff and history (read through
    open_manifest) said `where: m.sqlite`: the folder a cron job ran in is not the shell's. Every one now says it
    absolute, as versions and changes do."""
    shutil.copyfile(history["db"], tmp_path / "m.sqlite")
    expected = f"where: {tmp_path / 'm.sqlite'}"
    for command in (["files", "--as-of", "nope"], ["diff", "--from", "nope"], ["changes", "--version", "nope"],
                    ["report", "--out", "r.html", "--version", "nope"], ["history", "nope.csv"]):  # (history said m.sqlite)
        out = cli(*command, "--db", "m.sqlite", cwd=tmp_path)
        assert out.returncode == 2 and expected in out.stderr, (command, out.stderr)


def test_a_label_copied_with_a_space_or_mistyped_is_answered_with_the_label_meant(history):
    """`--version "v2 "` (copied with a space) and `--as-of v22` said only "no version ... give a label from
    `chorus-batch versions`": the answer now names the label probably meant, and the range of the manifest's."""
    db = str(history["db"])
    for command in (["changes", "--version"], ["files", "--as-of"], ["report", "--out", "r.html", "--version"]):
        out = cli(*command, "v2 ", "--db", db)
        assert out.returncode == 2 and "no version 'v2 ' in the manifest; did you mean v2?" in out.stderr, out.stderr
        assert "(3 in the manifest, v1 .. v3)" in out.stderr
    out = cli("diff", "--from", "v22", "--db", db)
    assert out.returncode == 2 and "no version 'v22' in the manifest; did you mean v2" in out.stderr, out.stderr
    out = cli("changes", "--version", "20990101000000", "--db", db)  # nothing like it: no guess
    assert out.returncode == 2 and "did you mean" not in out.stderr, out.stderr


def test_a_modality_is_taken_in_any_case_and_an_unknown_one_is_said(reader, history):
    """`files --modality waveforms` listed an empty version (0 files, exit 0), as if it held no waveforms."""
    assert reader.files("v2", modality="waveforms").equals(reader.files("v2", modality="Waveforms"))
    assert reader.files("v2", modality="WAVEFORMS").height > 0
    with pytest.raises(UsageError, match="no modality 'wave'"):
        reader.files("v2", modality="wave")
    out = cli("files", "--db", str(history["db"]), "--modality", "omop", "--json")
    assert out.returncode == 0 and {r["modality"] for r in json.loads(out.stdout)} == {"OMOP"}
    wrong = cli("files", "--db", str(history["db"]), "--modality", "ECG")
    assert wrong.returncode == 2 and "give one of OMOP, Metadata, Waveforms, Images, Other" in wrong.stderr


def test_changes_takes_a_version_as_a_time_as_files_and_diff_do(history):
    """`changes --version 2026-11-27T03:00:00Z` said "no version" while files --as-of, diff and report took
    the time (the latest version committed at or before it)."""
    db = str(history["db"])
    second = json.loads(cli("versions", "--db", db, "--json").stdout)[1]
    by_time = cli("changes", "--db", db, "--version", second["finished_at"], "--json")
    by_label = cli("changes", "--db", db, "--version", "v2", "--json")
    assert by_time.returncode == 0, by_time.stderr
    assert json.loads(by_time.stdout) == json.loads(by_label.stdout) != []


def test_a_notebook_reading_a_read_only_manifest_is_stopped_when_a_run_commits(history, tmp_path):
    """A reader that could only open the file as it is (no -shm: immutable) kept doing so after a run
    began committing into the -wal beside it, and would have read the file while it is checkpointed."""
    shared = tmp_path / "shared"
    shared.mkdir()
    db = shared / "m.sqlite"
    shutil.copyfile(history["db"], db)
    os.chmod(shared, 0o555)
    script = ("import sys\nfrom chorus_batch.errors import ManifestError\nfrom chorus_batch.review import open_manifest\n"
              f"m = open_manifest({str(db)!r})\nprint(m.files('v1').height, flush=True)\nsys.stdin.readline()\n"
              "try:\n    m.files('v2')\nexcept ManifestError as exc:\n    print('refused:', exc.what)\n")
    prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    child = subprocess.Popen([*(prefix if os.geteuid() == 0 else []), sys.executable, "-c", script],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert int(child.stdout.readline()) == len(history["trees"][0]), child.stderr.read()
        os.chmod(shared, 0o755)
        (shared / "m.sqlite-wal").write_bytes(b"x" * 100)  # a run's commit, not checkpointed yet
        os.chmod(shared, 0o555)
        out, err = child.communicate("go\n", timeout=60)
    finally:
        os.chmod(shared, 0o755)
        if child.poll() is None:
            child.kill()
    assert "refused: cannot read the manifest" in out and "-wal file holds commits" in out, out + err


def test_a_reader_leaves_nothing_beside_a_manifest_it_may_not_write(history, tmp_path):
    """A manifest 0444 in a folder the reviewer may write (a shared, sticky one): SQLite opened it read-only
    and left a -shm and -wal of the reviewer's beside it, which the owner's runs could then not use or remove."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    db = shared / "m.sqlite"
    shutil.copyfile(history["db"], db)
    os.chmod(db, 0o444)
    try:
        files = without_override("files", "--db", str(db), "--as-of", "v1", "--json", cwd=tmp_path)
        diff = without_override("diff", "--db", str(db), "--from", "v1", "--json", cwd=tmp_path)
    finally:
        os.chmod(db, 0o644)
    assert files.returncode == 0 and diff.returncode == 0, files.stderr + diff.stderr
    assert {r["srcfile"]: r["md5"] for r in json.loads(files.stdout)} == history["trees"][0]
    assert sorted(p.name for p in shared.iterdir()) == ["m.sqlite"]


def test_history_brings_in_every_rename_into_the_path_not_only_the_first(site, db, tmp_path):
    """`history OMOP/a.csv` after a.csv -> b.csv -> a.csv showed a.csv "ended renamed to b.csv" and then
    "renamed from b.csv", but not the version it lived as b.csv: only the path's first row was followed
    through a rename. The same for a path removed and later the target of a rename (c.csv below)."""
    snaps = tmp_path / "snaps"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/a.csv", b"travels")
    write(site, "OMOP/c.csv", b"first c")
    write(site, "OMOP/d.csv", b"becomes c")
    moves = [None, ("OMOP/a.csv", "OMOP/b.csv"), ("OMOP/b.csv", "OMOP/a.csv"), ("OMOP/c.csv", None),
             ("OMOP/d.csv", "OMOP/c.csv")]
    for step, move in enumerate(moves):
        if move is not None:
            old, new = (site / move[0]), move[1]
            old.rename(site / new) if new else old.unlink()
        run_site(site, db, parquet=str(snaps), validate_site=False, version_label=f"v{step + 1}")
    for reader in (open_manifest(db), open_manifest(snaps)):
        rows = reader.history("OMOP/a.csv")
        assert rows.select("srcfile", "change", "version_valid", "version_invalid", "ended_by").rows() == [
            ("OMOP/a.csv", "added", "v1", "v2", "renamed"),
            ("OMOP/b.csv", "renamed", "v2", "v3", "renamed"),
            ("OMOP/a.csv", "renamed", "v3", None, None)], reader
        rows = reader.history("OMOP/c.csv")
        assert rows.select("srcfile", "change", "version_valid", "version_invalid", "ended_by").rows() == [
            ("OMOP/c.csv", "added", "v1", "v4", "removed"),
            ("OMOP/d.csv", "added", "v1", "v5", "renamed"),
            ("OMOP/c.csv", "renamed", "v5", None, None)], reader
    out = cli("history", "--db", str(db), "OMOP/a.csv", "--json")
    assert [r["srcfile"] for r in json.loads(out.stdout)] == ["OMOP/a.csv", "OMOP/b.csv", "OMOP/a.csv"], out.stderr


def test_history_of_a_snapshot_folder_gives_the_rows_as_the_manifest_holds_them(site, db, tmp_path):
    """A file rewritten with the same bytes keeps its row, with the new mtime recorded in place; the snapshot
    folder's history took the row from any snapshot (here the first, with the old mtime)."""
    snaps = tmp_path / "snaps"
    person = write(site, "OMOP/person.csv", b"person_id\n1\n")
    for step in range(3):
        if step:
            os.utime(person, ns=(person.stat().st_atime_ns, person.stat().st_mtime_ns + 10**9 * 3600 * step))
        run_site(site, db, parquet=str(snaps), validate_site=False, version_label=f"v{step + 1}")
        write(site, f"OMOP/note{step}.csv", b"a version each step")  # so that every run commits one
    sqlite, parquet = open_manifest(db), open_manifest(snaps)
    assert sqlite.history("OMOP/person.csv").equals(parquet.history("OMOP/person.csv"))
    assert sqlite.history("OMOP/person.csv")["mtime_ns"].to_list() == [person.stat().st_mtime_ns]


def test_the_version_compared_with_is_the_one_before_or_the_one_asked_never_the_version_itself(history):
    # The notebook, run by hand with compare_to equal to its version, called that version "(first version)"
    m = open_manifest(history["db"])
    labels = history["labels"]
    assert m.compared_with(labels[0]) is None and m.compared_with(labels[2]) == labels[1]
    assert m.compared_with(labels[2], labels[0]) == labels[0]
    with pytest.raises(UsageError, match="is the version reviewed"):
        m.compared_with(labels[1], labels[1])


def test_the_version_compared_with_is_resolved_as_every_version_argument_is(history):
    # compared_with compared its `label` as text with the labels: a time (or papermill's number) named no label, and the
    # version "had none before it" (the notebook skipped every comparison as for a first version), or polars failed
    m = open_manifest(history["db"])
    labels, committed = history["labels"], m.versions()["finished_at"].to_list()
    assert m.compared_with(committed[2]) == labels[1]
    assert m.compared_with(datetime.fromisoformat(committed[1].replace("Z", "+00:00"))) == labels[0]
    assert m.compared_with(None) == labels[1]  # the latest, as everywhere else
    with pytest.raises(UsageError, match="is the version reviewed"):
        m.compared_with(committed[1], labels[1])


def test_the_registry_has_the_tables_types_when_a_column_is_null_throughout(tmp_path):
    # A site whose session names carry no stamp (today's layout) has no registry date or time: the SQLite reader
    # typed them Int64 (the Parquet one String), and `m.registry().filter(pl.col("date") >= "2024-01-01")` failed
    from chorus_batch.frames import schema_of

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, parquet=str(tmp_path / "snap"))
    for reader in (open_manifest(db), open_manifest(tmp_path / "snap")):
        registry = reader.registry()
        assert registry["date"].null_count() == registry.height > 0
        assert registry.schema == schema_of("registry")
        assert registry.filter(pl.col("date") >= "2024-01-01").height == 0


@pytest.mark.parametrize("storage", ["sqlite", "parquet"])
def test_a_version_committed_after_the_reader_read_the_versions_is_not_said_to_be_missing(tmp_path, storage):
    # A notebook left open over a nightly run, asked for the label `chorus-batch versions` now lists, was told "no version
    # ... in the manifest"; it is told that the version came after the reader read the versions, and how to read it
    site, db, snaps = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "snap"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    first = run_site(site, db, parquet=str(snaps), version_label="v1").label
    m = open_manifest(db if storage == "sqlite" else snaps)
    assert m.files().height == 1 and m.latest() == first
    write(site, "OMOP/death.csv", b"person_id\n")
    second = run_site(site, db, parquet=str(snaps), version_label="v2").label
    with pytest.raises(UsageError, match=f"version {second} was committed after this reader read the manifest's "
                                         f"versions \\(it knows 1, {first} .. {first}\\)") as raised:
        m.files(second)
    assert "open the manifest again" in raised.value.fix and "no version" not in str(raised.value)
    assert m.files().height == 1  # the reader still reads the state it opened
    assert open_manifest(db if storage == "sqlite" else snaps).files(second).height == 2
    with pytest.raises(UsageError, match="no version 'v1 ' in the manifest; did you mean v1"):  # a known one: as before
        m.files("v1 ")
    with pytest.raises(UsageError, match="no version 'v9' in the manifest"):  # a label no storage holds: as before
        m.files("v9")
    with pytest.raises(UsageError, match="no version '../m' in the manifest"):
        m.files("../m")


def test_run_settings_refuse_a_setting_they_do_not_take_and_take_paths_and_the_config_files_names(tmp_path):
    # RunSettings ignored a keyword it does not take: `validate=False` (chorus.toml's name) validated anyway and
    # `version="nightly"` (for version_label) committed an unlabelled version; a pathlib path was refused as "not a
    # valid string"; verify_sample=500 (a percentage) was taken
    # A mistake was pydantic's ValidationError (its traceback, a link to its web pages): now a SettingError (a
    # ConfigError, and a ValueError as that was) saying which keyword, what is wrong and what to give
    from chorus_batch import RunSettings, run
    from chorus_batch.errors import ConfigError, SettingError

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(tmp_path / "images", "000001/Images/CT/1/x.dcm", b"dicm")
    for wrong, said in (({"version": "nightly"}, "version is not a setting RunSettings takes; did you mean 'version_label'?"),
                        ({"validate_sites": False}, "validate_sites is not a setting RunSettings takes; did you mean "),
                        ({"verify_sample": 500}, "verify_sample should be less than or equal to 100, not 500"),
                        ({"racy_window_s": -1}, "racy_window_s should be greater than or equal to 0, not -1"),
                        ({"exclude": ["*.tmp", 1]}, "exclude its entry 2 should be text"),
                        # a key unknown inside a table: "cloud is not a setting RunSettings takes; did you mean 'cloud'?"
                        ({"cloud": {"azure": {"acount_name": "a"}}},
                         "cloud.azure.acount_name is not a setting cloud.azure takes; did you mean 'account_name'?"),
                        # taken, and refused only inside run() as "--max-delete / max_delete in [run]" (or True: 1 file)
                        ({"max_delete": -3}, "max_delete -3 is not a percentage"),
                        ({"max_delete": True}, "max_delete True is not a percentage"),
                        ({"verify_max_bytes": "lots"}, "verify_max_bytes 'lots' is not a byte count")):
        with pytest.raises(SettingError) as refused:
            RunSettings(site=str(site), db=str(db), **wrong)
        assert str(refused.value).startswith(f"RunSettings: {said}"), str(refused.value)
        assert isinstance(refused.value, (ConfigError, ValueError)) and "fix:" in str(refused.value)
        assert refused.value.setting == next(iter(wrong)) and "pydantic" not in str(refused.value)
    with pytest.raises(SettingError, match="RunSettings: db is missing"):
        RunSettings(site=str(site))
    assert not db.exists()
    result = run(RunSettings(site=site, db=db, roots={"Images": tmp_path / "images"}, workers=1, validate=False,
                             version_label="nightly"))
    assert result.label == "nightly"
    assert open_manifest(db).validated("nightly") is False  # validate=False was heard
    assert RunSettings(site="s", db="m", validate_site=False).validate_site is False
    assert RunSettings(site="s", db="m").validate_site is True


def test_run_refuses_settings_of_a_shard_rather_than_committing_the_whole_site(tmp_path):
    # run() ignored shard and staging (the command line sends them to scan_shard): a script meaning one Slurm array
    # task's listing committed a version of the whole site, and wrote no shard
    from chorus_batch import RunSettings, run
    from chorus_batch.errors import UsageError

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    for given in ({"shard": "0/2", "staging": str(tmp_path / "staging")}, {"shard": "2/1"}):
        with pytest.raises(UsageError, match=r"run\(\) commits the whole site; RunSettings\(shard=") as refused:
            run(RunSettings(site=site, db=db, workers=1, **given))
        assert "scan_shard" in refused.value.fix
    assert not db.exists() and not (tmp_path / "staging").exists()


def test_a_review_database_holds_the_versions_up_to_the_one_asked_and_its_diff(reader, history):
    """`m.duckdb(v)` held every version's change set (and versions row), later ones and those a run committed since the
    reader opened: a notebook reviewing an earlier version counted later removals as its own. It holds those up to
    the later of the version and compare_to. With compare_to, its view `diff` is `m.diff(compare_to, v)`'s rows,
    computed in DuckDB: the report and the notebook read the counts and first rows of a million-file diff from it."""
    from chorus_batch.review import DIFF_SCHEMA

    first, second, third = history["labels"]
    try:
        for asked, compare_to, upto in ((first, None, first), (second, first, second), (first, third, third)):
            con = reader.duckdb(asked, compare_to=compare_to)
            assert {v for (v,) in con.sql("SELECT DISTINCT version FROM changes").fetchall()} == \
                {v for v in history["labels"] if v <= upto}
            assert [v for (v,) in con.sql("SELECT label FROM versions ORDER BY 1").fetchall()] == \
                [v for v in history["labels"] if v <= upto]
            if compare_to is not None:
                rows = con.sql("SELECT * FROM diff").pl().select(list(DIFF_SCHEMA)).cast(DIFF_SCHEMA)
                assert rows.sort("change", "srcfile").equals(reader.diff(compare_to, asked))
    finally:
        reader.close()


def test_sessions_of_a_review_database_are_those_of_its_version(history):
    """`m.sessions(v, con=m.duckdb(w))` grouped w's files and gave them as v's sessions: it is refused, saying which
    connection to pass; without a version the connection's own is taken."""
    m = open_manifest(history["db"])
    first, _, third = history["labels"]
    try:
        con = m.duckdb(third)
        with pytest.raises(UsageError, match=f"sessions of version {first} were asked of a DuckDB connection that holds "
                                             f"the files of version {third}") as raised:
            m.sessions(first, con=con)
        assert f"m.duckdb('{first}')" in raised.value.fix
        assert m.sessions(con=con).equals(m.sessions(third)) and m.sessions(third, con=con).equals(m.sessions(third))
        assert m.sessions(con=m.duckdb(first)).equals(m.sessions(first))
    finally:
        m.close()


def test_a_version_not_found_names_the_command_that_lists_this_manifests_versions(history):
    # "give a label from `chorus-batch versions`": without --db, pasted from a notebook it read the chorus.toml (or
    # ./chorus_manifest.sqlite) of the shell's folder, another manifest or none
    m = open_manifest(history["db"])
    listing = shlex.join(["chorus-batch", "versions", "--db", str(history["db"])])
    for call in (lambda: m.files("v9"), lambda: m.files(3.5), lambda: m.compared_with("v2", "v2")):
        with pytest.raises(UsageError) as raised:
            call()
        assert f"`{listing}`" in raised.value.fix, raised.value.fix


def test_a_blob_without_an_md5_rewritten_at_the_same_size_is_in_the_diff_as_in_the_change_set(azurite, tmp_path,
                                                                                                monkeypatch):
    """A file without an MD5 (a block blob, `--cloud-md5 stored-only`) was compared by `diff` by size alone: rewritten
    at the same size, the run's change set recorded it replaced and `diff` (and the report's, the notebook's `diff`
    view) left it out. It is compared by etag, size and mtime, as the run compares it."""
    from services import upload_tree

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    local, db, name = tmp_path / "site", tmp_path / "m.sqlite", "000001/Waveforms/S1/S1.dat"
    write(local, "OMOP/person.csv", b"person_id\n1\n")
    write(local, name, b"first bytes " * 10)
    container, client = azurite.new_container(), azurite.service_client()
    upload_tree(client, container, local, content_md5=False, blocks=True)  # no Content-MD5: unverifiable
    run_site(f"az://{container}", db, validate_site=False, cloud_md5="stored-only", version_label="v1")
    blob = client.get_blob_client(container, name)
    blob.stage_block("b1", b"other bytes " * 10)  # the same size
    blob.commit_block_list(["b1"])
    run_site(f"az://{container}", db, validate_site=False, cloud_md5="stored-only", version_label="v2")
    m = open_manifest(db)
    assert m.changes("v2").select("change", "srcfile").rows() == [("replaced", name)]
    assert m.diff("v1", "v2").select("change", "srcfile").rows() == [("replaced", name)]
    assert m.diff("v2", "v1").select("change", "srcfile").rows() == [("replaced", name)]
    con = m.duckdb("v2", compare_to="v1")
    assert con.execute("SELECT change, srcfile FROM diff").fetchall() == [("replaced", name)]
    m.close()


def test_a_person_typed_without_its_zeros_or_pasted_with_a_space_is_answered_with_the_id_meant(history):
    """Person ids are text with leading zeros ('000001'): `files(person="1")` warns with the id meant; one pasted with
    a space or a line break around it (' 000001') was said to match nothing, with no id suggested."""
    from chorus_batch.review import NoSuchPerson

    m = open_manifest(history["db"])
    for typed in ("1", " 000001", "000001\n", "01"):
        with pytest.warns(NoSuchPerson, match="did you mean 000001[?]"):
            assert m.files(person=typed).height == 0
    assert m.files(person="000001").height > 0


def test_a_non_utf8_name_copied_as_the_run_shows_it_is_said_to_be_a_scan_error(site, db):
    """A file whose name is not UTF-8 is a scan error, shown as `OMOP/bad\\xffname.csv` by the run, `status` and the
    report. That text copied into `history` was "no file" as if mistyped, and into `files --path` "no files under
    'OMOP/bad\\\\xffname.csv'" (repr doubled the backslash, so it no longer read as shown). Both say it is a scan error
    of the version, what kind, with the name as shown everywhere."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (site / "OMOP").joinpath(os.fsdecode(b"bad\xffname.csv")).write_bytes(b"x")
    run = cli("run", "--site", str(site), "--db", str(db), "--no-validate")
    shown = "OMOP/bad\\xffname.csv"
    assert f"{shown}: file name is not valid UTF-8" in run.stdout, run.stdout
    said = "; it is a scan error of version "
    out = cli("history", "--db", str(db), shown)
    assert out.returncode == 2 and f"no file '{shown}' in the manifest{said}" in out.stderr, out.stderr
    assert "(non_utf8_name: " in out.stderr
    for command in (("files",), ("changes",)):
        out = cli(*command, "--db", str(db), "--path", shown)
        assert out.returncode == 0 and f"under '{shown}'{said}" in out.stderr, out.stderr


def test_a_snapshot_that_versions_parquet_does_not_list_yet_is_read(history, tmp_path):
    """A run killed after writing a version's snapshot but before versions.parquet leaves a complete snapshot the
    table does not list: the reader left it out of `versions`, and asking for it said it "was committed after this
    reader read the manifest's versions" (opening again changed nothing). It is read; no time selects it (its commit
    time is unknown), its label does."""
    snaps = tmp_path / "snap"
    shutil.copytree(history["snaps"], snaps)
    first, *_, last = history["labels"]
    table = pl.read_parquet(snaps / "versions.parquet")
    table.filter(pl.col("label") != last).write_parquet(snaps / "versions.parquet")  # as the kill leaves it
    m = open_manifest(snaps)
    assert m.versions()["label"].to_list() == history["labels"]
    assert as_dict(m.files(last)) == history["trees"][-1]
    assert m.resolve("2999-01-01T00:00:00Z") == history["labels"][-2]
    out = cli("versions", "--db", str(snaps))
    assert out.returncode == 0 and last in out.stdout, out.stderr


def test_a_reader_open_while_a_run_commits_answers_as_of_the_versions_it_knows(site, db):
    """A notebook's reader keeps the versions it found when opened, but its rows carried their ends as the manifest
    holds them now: after a run committed, `history` showed the new version's row and an `ended_by` from it, a
    version the same reader's `changes` called unknown, and `files` of an earlier version said the row ended there.
    Every answer is as of the versions the reader knows; opened again, it reads the new one."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/kept.csv", b"first")
    run_site(site, db, version_label="v1")
    m = open_manifest(db)
    assert m.latest() == "v1"  # (the notebook's first cells list the versions)
    write(site, "OMOP/kept.csv", b"second")  # replaced by a run that commits while the notebook is open
    run_site(site, db, version_label="v2")
    known = m.history("OMOP/kept.csv")
    assert known.select("version_valid", "version_invalid", "ended_by").rows() == [("v1", None, None)]
    assert m.files("v1").filter(pl.col("srcfile") == "OMOP/kept.csv")["version_invalid"].to_list() == [None]
    con = m.duckdb("v1")
    assert con.execute("SELECT count(*) FROM files WHERE version_invalid IS NOT NULL").fetchone() == (0,)
    m.close()
    again = open_manifest(db).history("OMOP/kept.csv")
    assert again.select("version_valid", "ended_by").rows() == [("v1", "replaced"), ("v2", None)]


def test_history_as_a_table_says_where_a_file_was_renamed_to(site, db):
    """`history` of a path renamed away said "ended_by renamed" and no more: the table had no column of where to,
    which its help promises ("ended (removed, replaced, renamed to)") and only --json/--csv held."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/a.csv", b"travels")
    run_site(site, db, validate_site=False)
    (site / "OMOP" / "a.csv").rename(site / "OMOP" / "b.csv")
    run_site(site, db, validate_site=False)
    out = cli("history", "--db", str(db), "OMOP/a.csv")
    assert out.returncode == 0, out.stderr
    header, _rule, row = out.stdout.splitlines()[:3]
    assert "renamed_to" in header.split() and row.split()[3:5] == ["renamed", "OMOP/b.csv"], out.stdout


def test_a_snapshot_of_a_version_a_restored_manifest_lost_is_not_read_as_one_of_its_versions(site, db, tmp_path):
    """A manifest restored from a backup lost the versions committed after the backup; their snapshots stayed in the
    --parquet folder, and the folder answered with them as with versions of the manifest: `versions` listed one the
    manifest does not have, and `history` said a file still current had been removed in it (its file ids are the
    restored manifest's too). A snapshot versions.parquet does not list is read only after the last it lists (a run
    killed before it wrote versions.parquet); one before is a lost version's: left out, and said."""
    from conftest import backup_copy as copy

    snaps, backup = tmp_path / "snaps", tmp_path / "backup.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/b.csv", b"kept")
    run_site(site, db, parquet=str(snaps), validate_site=False, version_label="v1")
    copy(db, backup)
    (site / "OMOP" / "b.csv").unlink()
    run_site(site, db, parquet=str(snaps), validate_site=False, version_label="v2")  # lost with the restore
    copy(backup, db)
    write(site, "OMOP/b.csv", b"kept")
    write(site, "OMOP/c.csv", b"new")
    run_site(site, db, parquet=str(snaps), validate_site=False, version_label="v3")
    manifest = open_manifest(db)
    reader = open_manifest(snaps)
    assert reader.versions()["label"].to_list() == manifest.versions()["label"].to_list() == ["v1", "v3"]
    columns = ["srcfile", "change", "version_valid", "version_invalid", "ended_by"]
    assert reader.history("OMOP/b.csv").select(columns).rows() == manifest.history("OMOP/b.csv").select(columns).rows() \
        == [("OMOP/b.csv", "added", "v1", None, None)]
    out = cli("versions", "--db", str(snaps))
    assert out.returncode == 0 and "v2" not in out.stdout and "version=v2" in out.stderr, (out.stdout, out.stderr)


def test_every_in_memory_duckdb_spills_into_an_owner_only_folder_it_removes(tmp_path, monkeypatch):
    """DuckDB spills to `.tmp` under the working directory by default, with the umask's modes: the review and snapshot
    readers opened their in-memory connections so, and rows of person paths a query spilled would lie beside the
    reviewer's notebook, readable by others, and stay. Every in-memory DuckDB goes through diff.private_duckdb."""
    import re
    import stat

    from chorus_batch.diff import private_duckdb

    monkeypatch.chdir(tmp_path)
    parent = tmp_path / "spill"
    parent.mkdir()
    with private_duckdb({"threads": 1, "memory_limit": "32MB"}, spill_parent=parent) as con:
        (spill,) = parent.iterdir()
        assert stat.S_IMODE(spill.stat().st_mode) == 0o700
        con.execute("CREATE TABLE t AS SELECT md5(range::VARCHAR) AS s FROM range(2000000)")
        assert con.execute("SELECT count(*) FROM (SELECT s FROM t ORDER BY s)").fetchone() == (2000000,)
        assert con.execute("SELECT current_setting('temp_directory')").fetchone() == (str(spill),)
    assert list(parent.iterdir()) == [] and not (tmp_path / ".tmp").exists()
    # no other in-memory connection: every duckdb.connect( of the package is private_duckdb's, or names its own
    # temp_directory (the review database, a file in a private folder)
    package = Path(__file__).resolve().parent.parent / "chorus_batch"
    bare = []
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"duckdb\.connect\(", text):
            call = text[match.start():match.start() + 300]
            if "temp_directory" not in call:
                bare.append(f"{path.name}:{text.count(chr(10), 0, match.start()) + 1}")
    assert not bare, bare


def test_snapshots_read_as_the_readme_says_give_each_version_its_label_as_text(tmp_path):
    """A snapshot folder's `version=<label>` read by polars or DuckDB as hive partitions, as the README showed it
    (`pl.scan_parquet("DIR/version=*/manifest.parquet", hive_partitioning=True)`), typed the label by its value:
    polars read the labels 001, 002 as the numbers 1, 2 (the label lost) and both read the default labels as
    integers, which matched none of versions.parquet's labels. The README's reads and `scan_snapshots` give text."""
    import re

    import duckdb

    from chorus_batch.store.snapshots import SNAPSHOT_PARTS, scan_snapshots

    make_testdata(tmp_path / "data", Spec(persons=2, files_per_person=4, size=64, seed=5))
    site, db, snaps = tmp_path / "data" / "first", tmp_path / "m.sqlite", tmp_path / "snaps"
    for label in ("001", "002", None):  # a site's own numbering, then a default label after it
        if label != "001":
            write(site, "Metadata/READINESS.md", f"delivery after {label}\n".encode())
        run_site(site, db, parquet=str(snaps), version_label=label, validate_site=False)
    labels = open_manifest(db).versions()["label"].to_list()
    assert labels[:2] == ["001", "002"] and len(labels) == 3 and labels[2].isdigit()  # (a UTC start: sorts after)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    polars_read = re.search(r'`(pl\.scan_parquet\("DIR/version=\*/manifest\.parquet"[^`]*)`', readme).group(1)
    duckdb_read = re.search(r"`(read_parquet\('DIR/version=\*/manifest\.parquet'[^`]*)`", readme).group(1)
    by_polars = eval(polars_read.replace("DIR", str(snaps)), {"pl": pl}).collect()  # (the README's line, as a reader pastes it)
    assert by_polars.schema["version"] == pl.String
    assert sorted(by_polars["version"].unique()) == labels
    with duckdb.connect() as con:
        rows = con.sql(f"SELECT DISTINCT version, typeof(version) FROM {duckdb_read.replace('DIR', str(snaps))} ORDER BY 1")
        assert rows.fetchall() == [(label, "VARCHAR") for label in labels]
    # the library's scan: every part, labels as text, joined to versions.parquet by them
    versions = pl.read_parquet(snaps / "versions.parquet")
    for part in SNAPSHOT_PARTS:
        frame = scan_snapshots(snaps, part).collect()
        assert frame.schema["version"] == pl.String, part
        assert set(frame["version"]) <= set(labels), part
    files = scan_snapshots(snaps).group_by("version").len().collect().join(versions, left_on="version", right_on="label")
    assert sorted(files.select("version", "len", "n_files").rows()) == [(v, n, n) for v, n in
                                                                        zip(labels, versions["n_files"])]
    assert sorted(scan_snapshots(snaps, "changes").collect()["version"].unique()) == labels
    with pytest.raises(UsageError, match="not a folder of Parquet snapshots"):
        scan_snapshots(db)


def test_a_label_of_leading_zeros_passed_as_a_number_is_the_label_that_spells_it(tmp_path):
    """A site numbering its versions by hand (001, 002): `papermill review.ipynb out -p version 002` passes the number
    2 (papermill and YAML read 002 as an integer), and the review stopped at "no version '2' in the manifest", with no
    word of 002. The number is now the one label spelling it; the text '2' is answered with the label meant."""
    make_testdata(tmp_path / "data", Spec(persons=2, files_per_person=4, size=64, seed=5))
    site, db = tmp_path / "data" / "first", tmp_path / "m.sqlite"
    for label in ("001", "002"):
        write(site, "Metadata/READINESS.md", f"delivery {label}\n".encode())
        run_site(site, db, version_label=label, validate_site=False)
    reader = open_manifest(db)
    assert [reader.resolve(n) for n in (1, 2)] == ["001", "002"]
    assert reader.resolve("002") == "002"
    with pytest.raises(UsageError, match="no version '3'"):
        reader.resolve(3)
    out = cli("files", "--db", str(db), "--as-of", "2")
    assert out.returncode == 2 and "no version '2' in the manifest; did you mean 002?" in out.stderr
    assert reader.files(2).height == reader.files("002").height > 0


def test_a_person_typed_in_the_other_unicode_form_or_case_is_answered_with_the_id_meant(tmp_path):
    """A person folder named with an accent, its id pasted from macOS (é as e + combining accent) or typed in
    capitals, was answered "no files for person ..." and "`files` lists them", as if no such person were there."""
    import unicodedata

    from chorus_batch.review import NoSuchPerson

    make_testdata(tmp_path / "data", Spec(persons=2, files_per_person=4, size=64, seed=5))
    site, db = tmp_path / "data" / "first", tmp_path / "m.sqlite"
    write(site, "Zoé/Waveforms/1.dat", b"x")
    run_site(site, db, validate_site=False)
    reader = open_manifest(db)
    assert reader.files(person="Zoé").height == 1
    with pytest.warns(NoSuchPerson, match="did you mean Zoé\\? \\(the same letters in the other Unicode form"):
        assert reader.files(person=unicodedata.normalize("NFD", "Zoé")).height == 0
    with pytest.warns(NoSuchPerson, match="did you mean Zoé\\?$"):
        reader.files(person="ZOÉ")


def test_a_person_pasted_with_a_space_is_not_said_to_be_in_the_other_unicode_form(tmp_path):
    """`files --person ' 000002'` (an id pasted with a space) was answered "did you mean 000002? (the same letters
    in the other Unicode form ...)": the difference is the space, which the hint did not name."""
    import unicodedata

    from chorus_batch.review import NoSuchPerson

    make_testdata(tmp_path / "data", Spec(persons=2, files_per_person=4, size=64, seed=5))
    site, db = tmp_path / "data" / "first", tmp_path / "m.sqlite"
    write(site, "Zoé/Waveforms/1.dat", b"x")
    run_site(site, db, validate_site=False)
    reader = open_manifest(db)
    with pytest.warns(NoSuchPerson, match="did you mean 000002\\? \\(the id typed has a space or line break at an "
                                          "end: leave it out\\)$"):
        assert reader.files(person=" 000002").height == 0
    with pytest.warns(NoSuchPerson, match="did you mean Zoé\\? \\(the id typed has a space .*\\) \\(the same letters "
                                          "in the other Unicode form"):
        reader.files(person=unicodedata.normalize("NFD", "Zoé") + "\n")
    out = cli("files", "--db", str(db), "--person", "000002 ")
    assert out.returncode == 0 and "did you mean 000002? (the id typed has a space" in out.stderr, out.stderr
    assert "Unicode" not in out.stderr


def test_a_person_folder_named_with_a_space_at_its_end_is_suggested_quoted(site, db):
    """A person folder '000004 ' (a space at its end, a name Linux and S3 keep): `files --person 000004` said "did you
    mean 000004 ?", the space invisible before the question mark, and the id copied from it found nothing again. The
    suggestion is shown as `files` shows the id, quoted where a space or other unseen character is part of it."""
    write(site, "000004 /Waveforms/Telemetry/4000/4000.dat", b"x")
    write(site, "OMOP/person.csv", b"person_id\n4\n")
    run_site(site, db, validate_site=False)
    out = cli("files", "--db", str(db), "--person", "000004")
    assert out.returncode == 0 and "did you mean '000004 '?" in out.stderr, out.stderr
    assert cli("files", "--db", str(db), "--person", "000004 ").stdout.count("4000.dat") == 1


def test_a_path_asked_of_a_version_that_removed_it_is_said_to_be_a_file_of_other_versions(site, db):
    """`files --as-of V --path P` of a file V had removed (and a later version added again) said "no files under P
    (paths are site-relative, as `chorus-batch files` prints them)", as if P were mistyped: it names the versions
    that hold it and the history command, spans of a file replaced in place as one."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/note.csv", b"a\n")
    run_site(site, db, validate_site=False, version_label="v1")
    (site / "OMOP" / "note.csv").unlink()
    run_site(site, db, validate_site=False, version_label="v2", max_delete="all")
    write(site, "OMOP/note.csv", b"a\n")
    run_site(site, db, validate_site=False, version_label="v3")
    write(site, "OMOP/note.csv", b"ab\n")
    run_site(site, db, validate_site=False, version_label="v4")
    out = cli("files", "--db", str(db), "--as-of", "v2", "--path", "./OMOP/note.csv", "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == []
    assert ("no files under './OMOP/note.csv'; 'OMOP/note.csv' is a file of other versions (from v1 until v2, from v3 "
            f"on): `chorus-batch history --db {shlex.quote(str(db))} OMOP/note.csv` lists them") in out.stderr, out.stderr
    assert "site-relative" not in out.stderr
    mistyped = cli("files", "--db", str(db), "--as-of", "v2", "--path", "OMOP/nope.csv")
    assert "(paths are site-relative, as `chorus-batch files` prints them)" in mistyped.stderr, mistyped.stderr


def test_a_path_with_an_empty_or_dot_part_is_the_file_it_names(history):
    """`history OMOP//note.csv` (`"$DIR/"/note.csv`) or `OMOP/./note.csv` said "no file ... in the manifest" while
    `./OMOP/note.csv` was found: the shell reads all three as one file, which the manifest records once."""
    reader = open_manifest(history["db"])
    assert reader.site_relative("OMOP//a.csv") == reader.site_relative("OMOP/.//./a.csv") == "OMOP/a.csv"
    assert reader.site_relative(".//OMOP/./.hidden/../a.csv") == "OMOP/.hidden/../a.csv"  # '..' and dot names kept
    assert reader.site_relative("//FileSrv/share//x") == "//FileSrv/share/x"  # a network share's '//' stays
    path = sorted(history["trees"][2])[0]
    folder, name = path.rsplit("/", 1)
    db = str(history["db"])
    for typed in (f"{folder}//{name}", f"{folder}/./{name}"):
        out = cli("history", "--db", db, typed, "--json")
        assert out.returncode == 0 and path in {r["srcfile"] for r in json.loads(out.stdout)}, out.stdout + out.stderr
    files = cli("files", "--db", db, "--path", f"{folder}/./{name}", "--json")
    assert [r["srcfile"] for r in json.loads(files.stdout)] == [path], files.stdout + files.stderr


def test_a_label_typed_in_other_letter_case_is_answered_with_the_label_meant(site, db):
    """`--as-of V1` of a manifest whose label is v1 (a site naming its deliveries by hand) was "no version 'V1' in the
    manifest" with no word of v1: the close matches took it as only half alike."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db, validate_site=False, version_label="nov-delivery")
    out = cli("files", "--db", str(db), "--as-of", "NOV-Delivery")
    assert out.returncode == 2 and "no version 'NOV-Delivery' in the manifest; did you mean nov-delivery?" \
        in out.stderr, out.stderr


def test_the_package_offers_its_names_to_a_notebook_and_its_docstring_names_the_change_sets_columns(tmp_path):
    """`dir(chorus_batch)` (a notebook's Tab completion) held none of run, RunSettings, Manifest (loaded lazily), and
    the package's docstring left version and file_id out of the change set's columns."""
    import re

    import chorus_batch
    from chorus_batch import RunSettings, run

    assert set(chorus_batch.__all__) <= set(dir(chorus_batch))
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    result = run(RunSettings(site=site, db=tmp_path / "m.sqlite", workers=1, validate=False))
    said = re.search(r"result\.change_set\s+# polars frame: ([^\n]*(?:\n\s+#[^\n]*)*)", chorus_batch.__doc__)
    assert said is not None
    named = [name.strip() for name in re.sub(r"\n\s+#", " ", said.group(1)).split(",")]
    assert named == result.change_set.columns


def test_a_notebook_shows_what_stands_after_a_run_s_error(tmp_path):
    """IPython shows a ChorusError as its `_render_traceback_` lines: the error alone, without what stands (`outcome`,
    which the command line prints after it) nor its notes."""
    from chorus_batch import RunSettings, run
    from chorus_batch.errors import ChorusError

    with pytest.raises(ChorusError) as refused:
        run(RunSettings(site=tmp_path / "no-site", db=tmp_path / "m.sqlite", workers=1))
    refused.value.add_note("a note")
    shown = refused.value._render_traceback_()
    assert shown[0].startswith(f"{type(refused.value).__name__}: site root is not a readable directory"), shown
    assert shown[1:] == [f"  nothing was committed; no manifest was made at {tmp_path / 'm.sqlite'}", "a note"], shown


def test_library_messages_about_a_manifest_path_never_name_a_flag(tmp_path, site):
    """A manifest path under a file, a loop of links, a link to nothing, none at all (open_manifest), or a run's
    manifest that cannot be made: the library was told "pass --db (or [manifest] db) ...", "pass --db with the
    manifest file's own path", "pass the manifest file written by `chorus-batch run` (--db)"; each fix now comes from
    errors.pass_db, which names the library's arguments there and --db on the command line."""
    import chorus_batch
    from chorus_batch import Manifest, RunSettings

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "dangling.sqlite").symlink_to(tmp_path / "gone" / "m.sqlite")
    cases = [(tmp_path / "afile" / "x.sqlite", "lies under a file"), (tmp_path / "loop1", "a loop of symbolic links"),
             (tmp_path / "dangling.sqlite", "which does not exist|no manifest at")]
    for db, said in cases:
        for call in (lambda: Manifest(db).versions(), lambda: open_manifest(db)):
            with pytest.raises(UsageError, match=said) as raised:
                call()
            assert "--db" not in str(raised.value) and "give Manifest() or open_manifest()" in raised.value.fix
        done = cli("versions", "--db", str(db))
        assert done.returncode == 2 and "pass --db with" in done.stderr, done.stderr
    with pytest.raises(UsageError, match="no manifest at") as raised:
        open_manifest(tmp_path / "nope.sqlite")
    assert "--db" not in str(raised.value) and "chorus-batch run" not in str(raised.value)
    with pytest.raises(chorus_batch.ChorusError) as raised:
        chorus_batch.run(RunSettings(site=str(site), db=str(tmp_path / "afile" / "m.sqlite"), validate_site=False))
    assert "--db" not in str(raised.value), str(raised.value)
