"""`chorus-batch status` and `run --dry-run` (issue 16): what a run would commit, path by path, and what
validation would find, with nothing written; progress lines with an ETA under a scheduler; the site
recorded absolute; path filters of `files` and `changes` as people type paths."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from chorus_batch import ExitCode
from chorus_batch.progress import Progress, progress_line

from conftest import cli, query, settings, write
from test_validate_run import reads  # noqa: F401  (the fixture: files whose headers validation reads)

# Files added to the synthetic site (testdata: OMOP tables, metadata, waveform sessions, DICOM series) so that a
# second run has one change of each kind.
PERSON = "000001"
KEEP = f"{PERSON}/Waveforms/Telemetry/1001/1001_0001.dat"
GONE = f"{PERSON}/Waveforms/Telemetry/1001/1001_0002.dat"
EDITED = "OMOP/measurement.csv"
OLD_NAME = f"{PERSON}/Waveforms/Telemetry/1001/1001_0003.dat"
NEW_NAME = f"{PERSON}/Waveforms/Telemetry/1001/1001_0004.dat"
ADDED = f"{PERSON}/Waveforms/Telemetry/1001/1001_0005.dat"


def _first_version(tmp_path: Path) -> tuple[Path, Path]:
    from chorus_batch.testdata import Spec, make_testdata

    make_testdata(tmp_path / "td", Spec(persons=2, files_per_person=6))
    site, db = tmp_path / "td" / "first", tmp_path / "manifest.sqlite"
    write(site, KEEP, b"kept")
    write(site, GONE, b"will be removed")
    write(site, OLD_NAME, b"content that moves")
    done = cli("run", "--site", str(site), "--db", str(db), "-q")
    assert done.returncode in (0, 1), done.stderr
    # the changes a second run would commit: one of each kind
    (site / GONE).unlink()
    write(site, EDITED, b"measurement_id,person_id,measurement_concept_id,measurement_date,measurement_type_concept_id\n"
                        b"1,1,0,2024-01-01,0\n")
    (site / OLD_NAME).rename(site / NEW_NAME)
    write(site, ADDED, b"note_id,person_id\n1,1\n")
    return site, db


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` (the manifest's folder: the manifest and its companions), with size and mtime."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and "td" not in p.relative_to(folder).parts}


def _expected() -> set[tuple[str, str, str | None]]:
    return {("added", ADDED, None), ("removed", GONE, None), ("replaced", EDITED, None), ("renamed", NEW_NAME, OLD_NAME)}


def _kinds(rows: list[dict]) -> set[tuple[str, str, str | None]]:
    return {(r["change"], r["srcfile"], r["old_srcfile"] or None) for r in rows}


def test_status_lists_every_change_path_by_path_in_table_json_and_csv_and_writes_nothing(tmp_path):
    site, db = _first_version(tmp_path)
    before, manifest_bytes = _listing(tmp_path), db.read_bytes()
    runs_before = query(db, "SELECT count(*) FROM runs")[0][0]

    table = cli("status", "--site", str(site), "--db", str(db), "--all", "-q")
    assert table.returncode == 0, table.stderr
    assert "would change: 1 added, 1 removed, 1 replaced, 1 renamed" in table.stdout
    assert "nothing was written" in table.stdout
    lines = table.stdout.splitlines()
    # the table is headed in words (the manifest's column names srcfile and old_srcfile stay in --csv and --json)
    assert next(line for line in lines if line.startswith("change ")).split() == \
        ["change", "path", "renamed", "from", "modality", "person_id", "size", "md5"], table.stdout
    for change, path, old in _expected():
        row = next(line for line in lines if line.startswith(change + " ") and f" {path} " in f" {line} ")
        assert old is None or old in row, row
    assert "validation: 0 errors" in table.stdout

    as_json = cli("status", "--site", str(site), "--db", str(db), "--json", "-q")
    assert as_json.returncode == 0, as_json.stderr
    d = json.loads(as_json.stdout)
    assert _kinds(d["changes"]) == _expected()
    # the files this test wrote are not in the registry the synthetic site ships: that is all validation says
    assert d["dry_run"] is True and d["committed"] is False
    assert {(f["rule"], f["srcfile"]) for f in d["findings_list"]} <= {
        ("registry.unlisted_file", p) for p in (KEEP, NEW_NAME, ADDED)}
    renamed = next(r for r in d["changes"] if r["change"] == "renamed")
    assert renamed["modality"] == "Waveforms" and renamed["person_id"] == PERSON and len(renamed["md5"]) == 32

    as_csv = cli("status", "--site", str(site), "--db", str(db), "--csv", "-q")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert _kinds(rows) == _expected()
    assert list(rows[0]) == ["change", "srcfile", "old_srcfile", "modality", "person_id", "size", "md5"]
    removed = next(r for r in rows if r["change"] == "removed")
    assert removed["size"] == str(len(b"will be removed"))  # a removed file: as it was

    # Nothing written: the same files beside the manifest (no cache, no lock file of a new kind), the same bytes,
    # no run row, no version.
    assert _listing(tmp_path) == before
    assert db.read_bytes() == manifest_bytes
    assert query(db, "SELECT count(*) FROM runs")[0][0] == runs_before
    assert query(db, "SELECT count(*) FROM versions")[0][0] == 1


def test_run_dry_run_shows_the_first_paths_and_status_limits_its_table(tmp_path):
    site, db = _first_version(tmp_path)
    dry = cli("run", "--site", str(site), "--db", str(db), "--dry-run", "-q")
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing written" in dry.stdout and f"renamed   {NEW_NAME}" in dry.stdout
    limited = cli("status", "--site", str(site), "--db", str(db), "--limit", "2", "-q")
    assert limited.returncode == 0, limited.stderr
    assert "... and 2 more rows (4 in all); --limit N or --all shows more, --csv or --json lists them all" in limited.stdout
    as_json = json.loads(cli("run", "--site", str(site), "--db", str(db), "--dry-run", "--json", "-q").stdout)
    assert _kinds(as_json["changes"]) == _expected()


def test_status_before_the_first_run_creates_no_manifest_and_lists_the_findings(tmp_path):
    site = tmp_path / "site"
    # no OMOP/ folder (an error: layout.no_omop) and an empty file (a warning: file.empty)
    write(site, f"{PERSON}/Waveforms/Telemetry/1001/1001.hea", b"1001 1 250 10\n1001.dat 16 200 16 0 0 0 0 ECG\n")
    write(site, f"{PERSON}/Waveforms/Telemetry/1001/1001.dat", b"\0" * 20)
    write(site, f"{PERSON}/Waveforms/Telemetry/1001/empty.txt", b"")
    parquet = tmp_path / "snapshots"
    db = tmp_path / "new.sqlite"
    before = sorted(p.name for p in tmp_path.iterdir())

    out = cli("status", "--site", str(site), "--db", str(db), "-q")
    assert out.returncode == int(ExitCode.FINDINGS), out.stderr
    assert "no version yet" in out.stdout and "would change: 3 added" in out.stdout
    assert "error:layout.no_omop" in out.stdout and "warning:file.empty" in out.stdout
    assert f"warning: {PERSON}/Waveforms/Telemetry/1001/empty.txt:" in out.stdout  # listed, not only counted

    as_json = json.loads(cli("status", "--site", str(site), "--db", str(db), "--json", "-q").stdout)
    rules = {f["rule"] for f in as_json["findings_list"]}
    assert {"layout.no_omop", "file.empty"} <= rules and as_json["exit_code"] == 1

    dry = cli("run", "--site", str(site), "--db", str(db), "--parquet", str(parquet), "--dry-run", "-q")
    assert dry.returncode == int(ExitCode.FINDINGS) and "layout.no_omop" in dry.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no manifest, no Parquet folder, no cache

    unchecked = cli("status", "--site", str(site), "--db", str(db), "--no-validate", "-q")
    assert "validation: not checked" in unchecked.stdout
    # still exit code 1: the run would record a problem (empty.txt fits no naming pattern), and lists it
    assert unchecked.returncode == 1 and "problems the run would record: 1" in unchecked.stdout
    # its kind in words, the kind's name (as scan_errors and --json hold it) after them: "unparseable: " alone was
    # a word of the code's
    assert (f"    path fits no part of the site layout (unparseable): {PERSON}/Waveforms/Telemetry/1001/empty.txt: "
            in unchecked.stdout), unchecked.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before

    # append mode with a delete list: it made an empty file at --db, then "SQLite failed on the manifest: no such
    # table: source_files", exit 3
    listed = tmp_path / "deleted.txt"
    listed.write_text("gone.csv\n")
    appended = cli("status", "--site", str(site), "--db", str(db), "--mode", "append", "--delete-list", str(listed),
                   "--no-validate", "-q")
    assert appended.returncode == 1, appended.stderr
    assert "delete-list line not applied (delete_list): gone.csv: listed for deletion (line 1) but not in the " \
        "manifest" in appended.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "deleted.txt"])


def test_status_reads_headers_only_of_new_contents_and_caches_nothing(tmp_path, reads):  # noqa: F811
    from chorus_batch.pipeline import status

    site, db = _first_version(tmp_path)
    facts_before = query(db, "SELECT count(*) FROM file_facts")[0][0]
    result = status(settings(site, db))
    assert result.label is None and result.findings is not None
    assert set(reads) == {EDITED}  # the one changed table; the rest is known from the first run
    assert query(db, "SELECT count(*) FROM file_facts")[0][0] == facts_before
    assert result.exit_code == ExitCode.OK


def test_a_run_that_would_be_refused_is_refused_by_status_too(tmp_path):
    site, db = _first_version(tmp_path)
    out = cli("status", "--site", str(site), "--db", str(db), "--max-delete", "0", "-q")
    assert out.returncode == int(ExitCode.REFUSED) and "refused" in out.stderr
    # the files it would remove are shown all the same: what the user needs to choose a larger --max-delete
    assert any(line.split()[:2] == ["removed", GONE] for line in out.stdout.splitlines())
    assert "would change: 1 added, 1 removed" in out.stdout
    as_json = cli("status", "--site", str(site), "--db", str(db), "--max-delete", "0", "--json", "-q")
    d = json.loads(as_json.stdout)
    assert as_json.returncode == int(ExitCode.REFUSED) and d["exit_code"] == int(ExitCode.REFUSED)
    assert _kinds(d["changes"]) == _expected() and "--max-delete" in d["refused"]["error"]
    dry = cli("run", "--site", str(site), "--db", str(db), "--max-delete", "0", "--dry-run", "-q")
    assert dry.returncode == int(ExitCode.REFUSED) and "refused" in dry.stderr
    assert any(line.split()[:2] == ["removed", GONE] for line in dry.stdout.splitlines())
    assert query(db, "SELECT count(*) FROM versions")[0][0] == 1
    refused = cli("run", "--site", str(site), "--db", str(db), "--max-delete", "0", "-q")  # a real run still raises
    assert refused.returncode == int(ExitCode.REFUSED) and query(db, "SELECT count(*) FROM versions")[0][0] == 1


def test_a_parquet_setting_the_run_would_refuse_is_refused_by_status_and_a_dry_run_too(tmp_path):
    """`status` dropped chorus.toml's [manifest] parquet, and a dry run checked it only as a URL: a snapshot folder that
    is a file, a URL, or another manifest's snapshots passed (exit 0, "would change: ...") where the run itself is
    refused (exit 2). Checked alike now; still nothing is written (no folder made, no manifest)."""
    site, db = _first_version(tmp_path)
    other_db, snaps = tmp_path / "other.sqlite", tmp_path / "snaps"
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(other_db), "--parquet", str(snaps)).returncode == 0
    (tmp_path / "a_file").write_bytes(b"x")
    config = tmp_path / "c.toml"
    for parquet, said in (("az://c/snaps", "written to a local folder"), (str(tmp_path / "a_file"), "names a file"),
                          (str(snaps), "holds the snapshots of another manifest")):
        config.write_text(f"[manifest]\nparquet = {json.dumps(parquet)}\n")
        for args in (("status",), ("run", "--dry-run")):
            out = cli(*args, "--config", str(config), "--site", str(site), "--db", str(db), "-q")
            assert out.returncode == 2 and said in out.stderr, (args, parquet, out.stdout, out.stderr)
    config.write_text(f"[manifest]\nparquet = {json.dumps(str(tmp_path / 'new_snaps'))}\n")
    for args in (("status",), ("run", "--dry-run")):
        assert cli(*args, "--config", str(config), "--site", str(site), "--db", str(db), "-q").returncode == 0
        assert not (tmp_path / "new_snaps").exists()
    assert query(db, "SELECT count(*) FROM versions")[0][0] == 1


def test_status_names_the_latest_version_as_the_one_changes_are_counted_from(tmp_path):
    site, db = _first_version(tmp_path)
    latest = query(db, "SELECT label FROM versions")[0][0]
    out = cli("status", "--site", str(site), "--db", str(db), "-q")
    # not "(version X)", which read as the version a run would make
    assert f"(changes since its latest version, {latest}); nothing was written" in out.stdout


def test_status_json_lists_every_problem_the_run_would_record(tmp_path):
    site, db = _first_version(tmp_path)
    for i in range(25):  # fit no pattern: a problem each, more than the summary's 20 examples
        write(site, f"stray/{i:02d}.txt", b"x")
    d = json.loads(cli("status", "--site", str(site), "--db", str(db), "--json", "--no-validate", "-q").stdout)
    strays = {e["srcfile"] for e in d["errors_list"] if e["srcfile"].startswith("stray/")}
    assert len(strays) == 25 and d["errors"]["total"] == len(d["errors_list"])


def test_status_help_has_an_example():
    out = cli("status", "--help")
    assert out.returncode == 0 and "chorus-batch status --site" in out.stdout and "exit codes" in out.stdout


# ----------------------------------------------------------------------------- progress


def test_progress_lines_have_a_rate_and_an_eta():
    # hashing: ETA from the bytes left at the byte rate
    line = progress_line("hashing", "file", 12_000, 1_000 * 2**20, (20_000, 4_000 * 2**20), 10.0)
    assert line == "hashing: 12,000/20,000 files, 1,000.0 MiB/3.9 GiB, 100.0 MiB/s, ETA 00:30, 00:10 elapsed"
    # header reads: no bytes, ETA from the files left at the file rate
    line = progress_line("reading headers", "file", 3_000, 0, (38_000, 0), 10.0)
    assert line == "reading headers: 3,000/38,000 files, 300 files/s, ETA 01:56, 00:10 elapsed"
    assert progress_line("reading headers", "file", 3_000, 0, (38_000, 0), 3_700.0).endswith("1:01:40 elapsed")
    # a total unknown (listing): no ETA
    assert progress_line("listing", "file", 1, 0, None, 1.0) == "listing: 1 file, 1 files/s, 00:01 elapsed"
    done = progress_line("hashing", "file", 5, 50, (5, 50), 2.0, done=True)
    assert done == "hashing: 5/5 files, 50 B/50 B, 25 B/s, done in 00:02"
    # more bytes than listed (files grew, or were read again, since the listing): said so, the ETA from the files
    # ("1.2 GiB/1.0 GiB ... ETA 00:00" read as a broken meter)
    line = progress_line("hashing", "file", 2, 1_200 * 2**20, (4, 1_000 * 2**20), 10.0)
    assert line == ("hashing: 2/4 files, 1.2 GiB (more than the 1,000.0 MiB listed: files grew or were read again "
                    "since), 120.0 MiB/s, ETA 00:10, 00:10 elapsed"), line


def test_validation_logs_progress_when_not_a_terminal(tmp_path):
    site = tmp_path / "site"
    for i in range(3):
        write(site, f"{PERSON}/Waveforms/Telemetry/100{i}/100{i}.hea", f"100{i} 1 250 10\n100{i}.dat 16 200 16 0 0 0 0 ECG\n".encode())
    out = cli("status", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), env={"CHORUS_BATCH_PROGRESS_S": "0"})
    assert out.returncode == 1, out.stderr  # no OMOP/
    assert "reading headers: 3/3 files" in out.stderr and "done in" in out.stderr
    assert "hashing: 3/3 files" in out.stderr
    assert "checking: 3/3 files" in out.stderr  # the rules, part by part (a large site's: minutes)
    assert not list(tmp_path.glob("m.sqlite*"))


def test_a_quiet_progress_logs_nothing(caplog):
    progress = Progress(quiet=True, interval_s=0)
    caplog.set_level(logging.INFO, logger="chorus_batch")
    with progress.counter("hashing", "file", lambda: (1, 1), total=(1, 1)):
        pass
    assert not [r for r in caplog.records if r.getMessage().startswith("hashing")]


# ----------------------------------------------------------------------------- the site, the path filters


def test_a_relative_site_is_recorded_absolute(tmp_path):
    site = tmp_path / "here" / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    out = cli("run", "--site", "site", "--db", "m.sqlite", "--no-validate", "-q", cwd=tmp_path / "here")
    assert out.returncode in (0, 1), out.stderr
    db = tmp_path / "here" / "m.sqlite"
    expected = site.resolve().as_posix()
    assert query(db, "SELECT site FROM runs") == [(expected,)]
    assert query(db, "SELECT site FROM versions") == [(expected,)]


def test_a_url_site_is_recorded_with_its_secrets_masked():
    from chorus_batch.pipeline import site_location

    masked = site_location("az://c/site?sv=2020&sig=SECRET")
    assert masked.startswith("az://c/site?") and "SECRET" not in masked
    assert site_location("s3://bucket/site") == "s3://bucket/site"


def test_files_and_changes_take_paths_as_history_does(tmp_path):
    site, db = _first_version(tmp_path)
    assert cli("run", "--site", str(site), "--db", str(db), "-q").returncode in (0, 1)
    folder = f"{PERSON}/Waveforms/Telemetry/1001"
    for path in (str(site / PERSON / "Waveforms" / "Telemetry" / "1001"), folder.replace("/", "\\"), "./" + folder,
                 folder + "/"):
        files = json.loads(cli("files", "--db", str(db), "--path", path, "--json").stdout)
        assert {f["srcfile"] for f in files} >= {KEEP, NEW_NAME}, path
        assert all(f["srcfile"].startswith(folder + "/") for f in files), path
        changes = json.loads(cli("changes", "--db", str(db), "--path", path, "--json").stdout)
        assert _kinds(changes) == _expected() - {("replaced", EDITED, None)}, path
    one = json.loads(cli("files", "--db", str(db), "--path", str(site / EDITED), "--json").stdout)
    assert [f["srcfile"] for f in one] == [EDITED]
    # a rename is found by its old path too
    old = json.loads(cli("changes", "--db", str(db), "--path", OLD_NAME, "--json").stdout)
    assert _kinds(old) == {("renamed", NEW_NAME, OLD_NAME)}
    everything = json.loads(cli("files", "--db", str(db), "--path", str(site), "--json").stdout)
    assert len(everything) == len(json.loads(cli("files", "--db", str(db), "--json").stdout))
    # `/` (or a folder above the site) is no recorded root: it names none of the site's files, not all of them
    for outside in ("/", str(site.parent)):
        assert json.loads(cli("files", "--db", str(db), "--path", outside, "--json").stdout) == [], outside
        assert json.loads(cli("changes", "--db", str(db), "--path", outside, "--json").stdout) == [], outside


def test_files_under_a_mistyped_path_says_so_and_what_it_may_mean(tmp_path):
    """`files --path 000001/waveforms` (a folder in the wrong case) printed "0 files" and nothing else, where
    `history` suggests what a path may mean. It says on stderr that nothing lies there and names the folders or files
    it may mean (exit 0: an empty listing is an answer)."""
    site, db = _first_version(tmp_path)
    folder = f"{PERSON}/Waveforms/Telemetry/"
    for typed, meant in ((folder.lower(), folder), (folder.upper().rstrip("/"), folder), (EDITED.upper(), EDITED)):
        out = cli("files", "--db", str(db), "--path", typed, "--json")
        assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
        assert f"no files under {typed!r}; did you mean {meant!r}?" in out.stderr, out.stderr
    out = cli("files", "--db", str(db), "--path", "no/such/folder")
    assert out.returncode == 0 and "no files under 'no/such/folder' (paths are site-relative" in out.stderr
    assert "no files under" not in cli("files", "--db", str(db), "--path", folder).stderr


def test_changes_under_a_mistyped_path_or_a_pattern_says_so(tmp_path):
    """`changes --path 000001/waveforms` and `files`/`changes --path 'OMOP/*.csv'` (a pattern, taken as a name) printed
    "0 changes" / nothing, exit 0, as if nothing there had changed. Both say on stderr that the path names nothing,
    with the path it may mean, or that --path takes no pattern; a folder of unchanged files stays quiet."""
    site, db = _first_version(tmp_path)
    folder = f"{PERSON}/Waveforms/Telemetry/"
    out = cli("changes", "--db", str(db), "--path", folder.lower(), "--json")
    assert out.returncode == 0 and json.loads(out.stdout) == [], out.stderr
    assert f"under {folder.lower()!r}; did you mean {folder!r}?" in out.stderr, out.stderr
    for command in ("files", "changes"):
        out = cli(command, "--db", str(db), "--path", f"{PERSON}/*", "--csv")
        assert out.returncode == 0 and "not a pattern: * ? [ are read as part of a name" in out.stderr, out.stderr
    assert cli("run", "--site", str(site), "--db", str(db), "-q").returncode in (0, 1)
    out = cli("changes", "--db", str(db), "--path", "Metadata", "--json")  # there, and unchanged in this version
    assert out.returncode == 0 and json.loads(out.stdout) == [] and out.stderr == "", out.stderr


@pytest.mark.skipif(os.name == "nt", reason="POSIX paths")
def test_the_manifest_is_not_touched_by_a_dry_run_of_an_older_schema(tmp_path):
    """A dry run only reads: a manifest it cannot read without upgrading is refused, and left as it was."""
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.commit()
    con.close()
    before = db.read_bytes()
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    out = cli("status", "--site", str(site), "--db", str(db), "-q")
    assert out.returncode in (2, 3) and "upgrade" in out.stderr
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["old.sqlite", "site"]


def test_the_commit_logs_its_rows_when_not_a_terminal(tmp_path):
    site = tmp_path / "site"
    for i in range(3):
        write(site, f"OMOP/table_{i}.csv", b"a\n1\n")
    out = cli("run", "--site", str(site), "--db", str(tmp_path / "m.sqlite"), "--version", "20261101020000",
              "--no-validate", env={"CHORUS_BATCH_PROGRESS_S": "0"})
    assert out.returncode in (0, 1), out.stderr
    assert "committing version 20261101020000: 3/3 rows" in out.stderr, out.stderr


def test_status_of_a_site_at_a_new_folder_finds_what_the_run_would_not_files_written_since_listed(tmp_path):
    """A manifest of one folder, status given another snapshot of the site (same content, new modification times):
    the kept files are read where this scan listed them and compared with the stat it listed, as the run records them
    before its check. They were compared with the stat recorded under the old folder: every kept file whose facts
    were not cached was "written since it was listed", errors the run itself does not give."""
    import shutil

    from chorus_batch.pipeline import run, status
    from chorus_batch.testdata import Spec, make_testdata

    make_testdata(tmp_path / "td", Spec(persons=2, files_per_person=6))
    first, second, db = tmp_path / "td" / "first", tmp_path / "td" / "second", tmp_path / "manifest.sqlite"
    for path in second.rglob("*"):  # (the unchanged files' stat moved for sure, not by the clock's grain)
        if path.is_file():
            os.utime(path, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    run(settings(first, db, validate_site=False))  # no facts cached: the check reads every header
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(db, copy)

    said = status(settings(second, db)).findings
    done = run(settings(second, copy)).findings
    assert said is not None and done is not None
    assert not said.filter(said["message"].str.contains("written since it was listed")).height
    assert sorted(said.select("severity", "rule", "srcfile").rows()) == sorted(done.select("severity", "rule", "srcfile").rows())
    # the recorded folder: as before
    shutil.copyfile(db, copy)
    assert sorted(status(settings(first, db)).findings.select("rule", "srcfile").rows()) == \
        sorted(run(settings(first, copy)).findings.select("rule", "srcfile").rows())


def test_status_v_does_not_log_a_commit_of_a_dry_run_nor_a_run_with_nothing_to_commit(tmp_path):
    # `status -v` logged "commit took 0.012 s" of a dry run, and `run -v` the same of a night with no change
    site = tmp_path / "site"
    write(site, "000001/Waveforms/000001_20260101_000000_60.dat", b"x" * 100)
    db = tmp_path / "m.sqlite"
    first = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "-v")
    assert first.returncode == 0 and "commit took" in first.stderr, first.stderr
    write(site, "000002/Waveforms/000002_20260101_000000_60.dat", b"y" * 100)
    dry = cli("status", "--site", str(site), "--db", str(db), "--no-validate", "-v")
    assert dry.returncode in (0, 1), dry.stderr
    assert "commit took" not in dry.stderr and "what would be committed (a dry run: nothing written) took" in dry.stderr
    write(site, "000002/Waveforms/000002_20260101_000000_60.dat", b"y" * 100)
    (site / "000002/Waveforms/000002_20260101_000000_60.dat").unlink()
    same = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "-v")
    assert same.returncode == 0, same.stderr
    assert "commit took" not in same.stderr and "(nothing to commit) took" in same.stderr, same.stderr
    (line,) = [line for line in same.stdout.splitlines() if line.startswith("time by stage: ")]
    assert "(nothing to commit) " in line and ", commit " not in line, line
