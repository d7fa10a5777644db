"""`validate` inside `run` and on its own: findings stored per version, headers read
only for new contents, cached facts reused, unreadable files retried."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

import chorus_batch.validate as validate_module
from chorus_batch.review import open_manifest
from chorus_batch.store.schema import SCHEMA_VERSION
from chorus_batch.validate import readers
from conftest import cli, main_here, paused, query, run_site
from sitegen import build_clean_site, edf_bytes, person_ids, sessions_of, write


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    build_clean_site(root, persons=3)
    return root


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The files whose headers validate reads, in order."""
    seen: list[str] = []
    original = readers.read_facts

    def counting(source, srcfile, kind):
        seen.append(srcfile)
        return original(source, srcfile, kind)

    monkeypatch.setattr(readers, "read_facts", counting)
    return seen


def severities(findings: pl.DataFrame) -> set[str]:
    return set(findings["severity"])


def test_run_validates_the_new_version_and_stores_its_findings(clean, db, reads):
    result = run_site(clean, db)
    assert result.findings is not None and "error" not in severities(result.findings)
    assert int(result.exit_code) == 0
    assert reads == [], "the first run parses the headers as it hashes them: validation reads none (tests/test_one_read.py)"
    assert query(db, "SELECT count(*) FROM file_facts")[0][0] > 0
    stored = open_manifest(db).findings(result.label)
    assert stored.equals(result.findings.sort("srcfile", "rule", "message"))
    assert query(db, "SELECT version, n_error, headers_read FROM validations") == [(result.label, 0, 0)]


def test_a_no_change_run_reads_no_header_and_reports_the_stored_findings(clean, db, reads):
    first = run_site(clean, db)
    reads.clear()
    again = run_site(clean, db)
    assert again.label is None and reads == []
    assert again.findings.equals(first.findings)


def test_a_changed_header_is_the_only_one_read_and_its_finding_appears(clean, db, reads):
    run_site(clean, db)
    person = person_ids(3)[0]
    session = sessions_of(person, 0)["single"]
    header = f"{person}/Waveforms/Telemetry/{session}/{session}.hea"
    write(clean, header, b"\x00\x01garbage")
    reads.clear()
    result = run_site(clean, db)
    assert reads == []  # its facts were parsed as it was hashed (the only file read)
    errors = result.findings.filter(pl.col("severity") == "error")
    assert ("wfdb.bad_header", header) in set(zip(errors["rule"], errors["srcfile"]))
    assert int(result.exit_code) == 1
    # The previous version's findings are kept as they were.
    assert "error" not in severities(open_manifest(db).findings(query(db, "SELECT min(label) FROM versions")[0][0]))


def test_renamed_files_reuse_the_facts_of_their_content(clean, db, reads):
    run_site(clean, db)
    person = person_ids(3)[2]
    dicoms = sorted(p for p in clean.joinpath(person, "Images").rglob("*.dcm"))
    dicoms[0].rename(dicoms[0].with_name("renamed.dcm"))
    reads.clear()
    result = run_site(clean, db)
    assert result.counts["renamed"] == 1 and reads == []


def test_no_validate_skips_the_checks_and_validate_does_them_later(clean, db):
    result = run_site(clean, db, validate_site=False)
    assert result.findings is None
    assert query(db, "SELECT count(*) FROM validations") == [(0,)]
    out = main_here("validate", "--site", str(clean), "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["version"] == result.label and report["by_severity"]["error"] == 0
    assert report["exit_code"] == 0  # (as `run --json` has it: a script reads one object, not the shell's $?)
    assert query(db, "SELECT version FROM validations") == [(result.label,)]


def test_facts_of_kinds_no_longer_read_are_deleted_with_their_bytes_once(clean, db):
    """Facts cached under a kind this release does not read (dicom.v5, before its reader kept only whether the
    identifying attributes are filled) stayed in the manifest for good, the patient's name, birth date and ids as
    written among them. The next check deletes them, once, and their bytes do not stay in the file's free pages."""
    run_site(clean, db)
    kinds = query(db, "SELECT value FROM meta WHERE key = 'fact_kinds'")
    con = sqlite3.connect(db)
    with con:
        con.execute("INSERT INTO file_facts VALUES ('dicom.v5', 'd41d8cd98f00b204e9800998ecf8427e', "
                    "'{\"patient_name\": \"DOE^JANE-SECRET\", \"other_patient_ids\": \"MRN4711-SECRET\"}')")
        con.execute("DELETE FROM meta WHERE key = 'fact_kinds'")  # as a manifest of an earlier release has it
    con.close()
    facts_before = query(db, "SELECT count(*) FROM file_facts WHERE kind != 'dicom.v5'")
    (clean / "OMOP" / "note.csv").write_text("note_id,person_id\n")  # a change: the next run checks a new version
    run_site(clean, db)
    assert query(db, "SELECT count(*) FROM file_facts WHERE kind = 'dicom.v5'") == [(0,)]
    assert query(db, "SELECT count(*) FROM file_facts WHERE kind != 'dicom.v5'")[0][0] >= facts_before[0][0]
    assert query(db, "SELECT value FROM meta WHERE key = 'fact_kinds'") == kinds
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    assert b"-SECRET" not in db.read_bytes()


def test_validate_cli_exit_code_and_cache(clean, db):
    (clean / "OMOP" / "person.csv").unlink()
    run_site(clean, db, validate_site=False)
    first = main_here("validate", "--site", str(clean), "--db", str(db))
    assert first.returncode == 1, first.stderr
    assert "omop.missing_table" in first.stdout
    # Checked already: the stored findings, even without the site.
    again = main_here("validate", "--db", str(db), "--json")
    assert again.returncode == 1
    assert any(f["rule"] == "omop.missing_table" for f in json.loads(again.stdout)["findings"])


def test_unreadable_files_are_reported_not_cached_and_read_again_later(clean, db, reads):
    run_site(clean, db, validate_site=False)
    person = person_ids(3)[1]
    session = sessions_of(person, 1)["single"]
    header = clean / person / "Waveforms" / "Telemetry" / session / f"{session}.hea"
    content = header.read_bytes()
    header.unlink()  # gone between the run and the check
    out = main_here("validate", "--site", str(clean), "--db", str(db), "--json")
    found = json.loads(out.stdout)["findings"]
    assert any(f["srcfile"].endswith(f"{session}.hea") and "cannot read" in f["message"] for f in found), found
    assert query(db, "SELECT count(*) FROM validations") == [(0,)]  # not marked as checked
    header.write_bytes(content)
    reads.clear()
    result = run_site(clean, db)  # no change to commit, but the version is checked again
    assert result.label is None
    assert [Path(r).name for r in reads] == [header.name]  # same size: not parsed while hashed (facts likely cached)
    assert not any("cannot read" in m for m in result.findings["message"])
    assert query(db, "SELECT count(*) FROM validations") == [(1,)]


def _as_a_user(*args: str) -> subprocess.CompletedProcess:
    """The command line as a user bound by file permissions: root, as CI runs, without the capabilities that
    override them."""
    import shutil

    command = [sys.executable, "-m", "chorus_batch", *args]
    if os.geteuid() == 0:
        assert shutil.which("setpriv"), "util-linux's setpriv drops root's capabilities for this test"
        command = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps",
                   "-dac_override,-dac_read_search", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_a_file_unread_says_what_to_do_as_is_true_of_why(clean, db):
    # file.unread said "the next run records a change and reads it again" of every failed read. A file this user may
    # not read (a chmod keeps its size and mtime) is no change: the next run did not read it, and the finding stayed
    # night after night. Now each cause says its own remedy; a file gone is the one the next run records.
    run_site(clean, db, validate_site=False)
    person = person_ids(3)[1]
    session = sessions_of(person, 1)["single"]
    header = clean / person / "Waveforms" / "Telemetry" / session / f"{session}.hea"
    person_csv = clean / "OMOP" / "person.csv"
    header.chmod(0)
    person_csv.unlink()
    out = _as_a_user("validate", "--db", str(db), "--json")
    assert out.returncode == 1, out.stderr
    said = {f["srcfile"]: f["message"] for f in json.loads(out.stdout)["findings"] if f["rule"] == "file.unread"}
    denied, gone = said[header.relative_to(clean).as_posix()], said["OMOP/person.csv"]
    assert "Permission denied" in denied and "give this user read permission on it" in denied, denied
    assert "the next run records" not in denied and "the next run sees no change" in denied, denied
    assert "No such file" in gone and "the next run records that" in gone, gone
    header.chmod(0o644)  # readable again: the next check reads it, and the finding is gone
    again = _as_a_user("validate", "--db", str(db), "--json")
    assert not any(f["rule"] == "file.unread" and f["srcfile"].endswith(header.name)
                   for f in json.loads(again.stdout)["findings"]), again.stdout


def test_a_file_there_that_the_scan_could_not_take_is_not_called_missing(clean, db):
    # A signal file this user may not read is a scan error (unreadable) and in no version. Validation looked for it
    # among the version's files only and told the site it "is not in its folder: add it", and the registry that its
    # row is "not on the site": untrue of a file that is there, whose fix is a permission.
    person = person_ids(3)[1]
    session = sessions_of(person, 1)["single"]
    folder = clean / person / "Waveforms" / "Telemetry" / session
    dat = next(folder.glob("*.dat"))
    dat.chmod(0)
    out = _as_a_user("run", "--site", str(clean), "--db", str(db), "--json")
    assert out.returncode == 1, out.stderr
    errors = json.loads(out.stdout)["errors"]["examples"]
    rel = dat.relative_to(clean).as_posix()
    assert [e["kind"] for e in errors if e["srcfile"] == rel] == ["unreadable"], errors
    findings = json.loads(_as_a_user("validate", "--db", str(db), "--json").stdout)["findings"]
    said = [(f["rule"], f["message"]) for f in findings if dat.name in f["message"]]
    assert said and all("not in its folder" not in m and "not on the site" not in m for _, m in said), said
    there = (f"signal file {dat.name} named in this header is there but the scan could not take it (permission "
             "denied: this user may not read the file (give it read permission)), so it is in no version and no rule "
             "read it: fix that and run again")
    assert ("wfdb.missing_dat", there) in said, said
    dat.chmod(0o644)  # readable: the next run takes it, and nothing is said of it
    assert _as_a_user("run", "--site", str(clean), "--db", str(db)).returncode == 0
    again = _as_a_user("validate", "--db", str(db), "--json")
    assert not [f for f in json.loads(again.stdout)["findings"] if dat.name in f["message"]], again.stdout


def test_files_in_a_folder_the_scan_could_not_list_are_not_called_missing(clean, db):
    # Metadata/ this user may not list: validation said "the site has waveforms but no Metadata/READINESS.md: add it".
    (clean / "Metadata").chmod(0)
    try:
        out = _as_a_user("run", "--site", str(clean), "--db", str(db), "--json")
        assert out.returncode == 1, out.stderr
        assert json.loads(out.stdout)["errors"]["by_kind"] == {"unreadable_dir": 1}, out.stdout
        findings = json.loads(_as_a_user("validate", "--db", str(db), "--json").stdout)["findings"]
    finally:
        (clean / "Metadata").chmod(0o755)
    said = {f["srcfile"]: f["message"] for f in findings if f["srcfile"].startswith("Metadata/")}
    assert "Metadata/READINESS.md" in said, findings
    for path, message in said.items():
        assert "add it" not in message and message.startswith(
            f"{path} may be there: the scan could not list or follow Metadata/ (cannot list directory: Permission "
            "denied;"), message


def test_a_header_written_after_the_run_gives_no_facts_to_its_recorded_md5(clean, db):
    # Facts are cached under the MD5 the run recorded. A header rewritten between the run and a later check (here:
    # `run --no-validate`, then `validate`) put the new content's facts there, for every file with that MD5, for
    # good, and its findings told of content the manifest does not hold.
    run_site(clean, db, validate_site=False)
    person = person_ids(3)[1]
    session = sessions_of(person, 1)["single"]
    header = clean / person / "Waveforms" / "Telemetry" / session / f"{session}.hea"
    recorded = query(db, "SELECT md5 FROM source_files WHERE srcfile LIKE ? AND time_invalid IS NULL",
                     (f"%/{session}.hea",))[0][0]
    header.write_bytes(b"OTHER 3 999 77\n")
    out = main_here("validate", "--db", str(db), "--json")
    assert out.returncode == 1, out.stderr
    found = [(f["rule"], f["message"]) for f in json.loads(out.stdout)["findings"] if f["srcfile"].endswith(header.name)]
    assert [rule for rule, _ in found] == ["file.unread"], found
    assert "written since it was recorded (its MD5 is no longer the recorded one)" in found[0][1]
    assert query(db, "SELECT count(*) FROM file_facts WHERE md5 = ?", (recorded,)) == [(0,)]
    # The next run records the change and caches the new content's facts under its own MD5.
    result = run_site(clean, db)
    new_md5 = query(db, "SELECT md5 FROM source_files WHERE srcfile LIKE ? AND time_invalid IS NULL",
                    (f"%/{session}.hea",))[0][0]
    assert new_md5 != recorded and query(db, "SELECT count(*) FROM file_facts WHERE md5 = ?", (new_md5,)) == [(1,)]
    assert {r for r, s in result.findings.select("rule", "srcfile").rows() if s.endswith(header.name)} == {
        "wfdb.bad_header"}


def test_a_header_touched_after_the_run_is_read_as_recorded(clean, db):
    # A copy or restore that keeps the content but not the mtimes (rsync without -t, a checkout) is not "written
    # since": the file is hashed, and its facts are those of the recorded MD5.
    run_site(clean, db, validate_site=False)
    session = sessions_of(person_ids(3)[1], 1)["single"]
    header = next(clean.rglob(f"{session}.hea"))
    os.utime(header, ns=(1_000_000_000, 1_000_000_000))
    recorded = query(db, "SELECT md5 FROM source_files WHERE srcfile LIKE ? AND time_invalid IS NULL",
                     (f"%/{session}.hea",))[0][0]
    out = main_here("validate", "--db", str(db), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert query(db, "SELECT count(*) FROM file_facts WHERE md5 = ?", (recorded,)) == [(1,)]


def test_validate_without_a_site_reads_the_roots_the_manifest_records(clean, db, reads):
    run_site(clean, db, validate_site=False)
    out = cli("validate", "--db", str(db), "--json", cwd=db.parent)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["by_severity"]["error"] == 0
    assert not any("cannot read" in f["message"] for f in report["findings"])


def test_a_file_not_read_for_want_of_a_site_is_never_an_error_finding(clean, db):
    """A manifest that does not record its roots (written before schema 3), and no --site:
    validate says what to pass and stores nothing (it used to store "no readable header" errors)."""
    run_site(clean, db, validate_site=False)
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM roots")
        con.execute("UPDATE source_files SET root_id = NULL")
    con.close()
    out = cli("validate", "--db", str(db), "--json", cwd=db.parent)
    assert out.returncode == 2, out.stderr
    assert "never read" in out.stderr and "pass --site" in out.stderr and "Traceback" not in out.stderr
    assert query(db, "SELECT count(*) FROM findings") == [(0,)]
    assert query(db, "SELECT count(*) FROM validations") == [(0,)]
    given = cli("validate", "--db", str(db), "--site", str(clean), "--json", cwd=db.parent)
    assert given.returncode == 0, given.stderr


def test_a_schema_1_manifest_is_upgraded_on_the_next_run(clean, db):
    from chorus_batch.errors import ManifestError

    run_site(clean, db, validate_site=False)
    con = sqlite3.connect(db)
    with con:
        for table in ("file_facts", "findings", "validations", "roots", "run_errors", "uploads", "submissions"):
            con.execute(f"DROP TABLE {table}")
        con.execute("DROP INDEX registry_proc")
        for table, column in (("source_files", "root_id"), ("source_files", "category"), ("source_files", "layout"),
                              ("source_files", "verified_ns"), ("source_files", "md5_source"), ("source_files", "etag"),
                              ("registry", "category"), ("registry", "proc_id"), ("runs", "release"),
                              ("versions", "release")):
            con.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(ManifestError, match="chorus-batch upgrade"):  # a reader says how to upgrade
        open_manifest(db).findings()
    write(clean, "OMOP/extra_notes.txt", "not a table\n")
    result = run_site(clean, db)
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
    assert "omop.unexpected_file" in set(result.findings["rule"])


def test_findings_are_in_the_summary_and_the_parquet_snapshot(clean, db, tmp_path):
    write(clean, "stray.txt", "left behind\n")
    out = main_here("run", "--site", str(clean), "--db", str(db), "--json", "--parquet", str(tmp_path / "snap"))
    summary = json.loads(out.stdout)
    assert summary["findings"]["by_severity"]["warning"] >= 1
    assert "warning:layout.root_file" in summary["findings"]["by_rule"]
    snap = open_manifest(tmp_path / "snap")
    assert "layout.root_file" in set(snap.findings()["rule"])
    text = main_here("run", "--site", str(clean), "--db", str(db))
    assert "validation: 0 errors" in text.stdout


def test_the_readme_lists_every_rule_with_its_severity():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    for rule in validate_module.RULES:
        assert f"| `{rule.id}` | {rule.severity} |" in readme, rule.id


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_a_run_killed_while_storing_findings_keeps_its_version_and_the_next_run_checks_it(clean, db):
    proc = subprocess.Popen(
        [sys.executable, "-m", "chorus_batch", "run", "--site", str(clean), "--db", str(db)],
        env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "validate"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "test pause at validate" not in (proc.stderr.readline() or "x"):
        pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]  # the version itself was committed
    assert query(db, "SELECT count(*) FROM validations") == [(0,)]
    assert query(db, "SELECT count(*) FROM findings") == [(0,)]  # nothing half-written
    again = run_site(clean, db)
    assert again.label is None and again.findings is not None and "error" not in set(again.findings["severity"])
    assert query(db, "SELECT count(*) FROM validations") == [(1,)]


def test_headers_read_in_worker_processes_give_the_same_facts(clean, monkeypatch):
    from chorus_batch.sources import LocalSource
    from sitegen import scan_current

    needed = validate_module.facts_needed(scan_current(clean))
    source = LocalSource(clean, workers=2)
    in_process = validate_module.extract_facts(source, needed, workers=1)
    monkeypatch.setattr(readers, "_PROCESS_MIN_JOBS", 1)  # the process path, on a small site
    monkeypatch.setattr(readers, "_CHUNK_JOBS", 3)
    in_workers = validate_module.extract_facts(source, needed, workers=2)
    assert in_workers.sort("kind", "md5").equals(in_process.sort("kind", "md5"))
    assert set(in_workers["kind"]) >= {"wfdb_header.v11", "dicom.v17", "metadata_md.v5", "mapping_csv.v7", "omop_person.v9"}


def test_validate_a_folder_that_was_never_run_leaves_nothing_behind(clean, tmp_path):
    # A temporary folder of its own: the shared one also holds other tests' (running beside it) scratch files.
    cwd, scratch = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    scratch.mkdir()
    out = cli("validate", "--site", str(clean), "--json", cwd=cwd, env={"TMPDIR": str(scratch)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["version"] is None and report["by_severity"]["error"] == 0
    assert list(cwd.iterdir()) == []  # no manifest, lock or cache in the working folder
    assert list(scratch.iterdir()) == []  # the temporary manifest is gone
    write(clean, "stray.txt", "left behind\n")
    (clean / "OMOP" / "person.csv").unlink()
    text = cli("validate", "--site", str(clean), cwd=cwd, env={"TMPDIR": str(scratch)})
    assert text.returncode == 1 and "omop.missing_table" in text.stdout and "temporary manifest" in text.stdout
    assert list(cwd.iterdir()) == []


def test_validate_a_folder_into_a_new_manifest_keeps_it(clean, tmp_path):
    db = tmp_path / "new" / "m.sqlite"
    db.parent.mkdir()  # (a new manifest starts only in a folder that exists)
    out = cli("validate", "--site", str(clean), "--db", str(db), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == query(db, "SELECT label FROM versions")[0][0]
    assert query(db, "SELECT count(*) FROM validations") == [(1,)]


def test_a_site_checked_in_parts_gets_the_findings_of_one_check(clean, tmp_path, monkeypatch):
    """A large site is checked a few person folders at a time (PART_FILES files a part, to bound memory): the
    findings are those of one check of the whole, the rules across person folders included, whether the
    facts were parsed while hashing (a run), read back from the cache (`validate --force`) or read by the check."""
    from chorus_batch.validate import checks
    from chorus_batch.validate import run as validate_run

    p0, p1, _p2 = person_ids(3)
    single = sessions_of(p0, 0)["single"]
    telemetry = clean / p0 / "Waveforms" / "Telemetry" / single
    write(clean, f"{p1}/Metadata/copy.csv", (telemetry / f"{single}n.csv").read_bytes())  # file.duplicate
    write(clean, f"{p1}/Waveforms/EEG/{single}/{single}.edf", edf_bytes(None))  # waveforms.id_collision
    person_csv = clean / "OMOP" / "person.csv"
    person_csv.write_text(person_csv.read_text() + "000199" + "," * (person_csv.read_text().splitlines()[0].count(","))
                          + "\n")  # person.no_folder
    whole = run_site(clean, tmp_path / "whole.sqlite").findings
    assert {"file.duplicate", "waveforms.id_collision", "person.no_folder"} <= set(whole["rule"]), whole.to_dicts()

    parts: list[int] = []
    in_part = checks._in_part
    monkeypatch.setattr(checks, "_in_part", lambda site, across, **kw: parts.append(1) or in_part(site, across, **kw))
    monkeypatch.setattr(validate_run, "PART_FILES", 1)  # as many parts as files: each person in its own
    parted = run_site(clean, tmp_path / "parts.sqlite")
    assert len(parts) >= 3, "three person folders, checked a part at a time"
    assert parted.findings.equals(whole)
    parts.clear()
    _label, again = validate_run.validate_manifest(str(tmp_path / "parts.sqlite"), argv=["validate"], force=True)
    assert len(parts) >= 3 and again.equals(whole)
    # ... or read by validation itself, the run having left the checks for later
    run_site(clean, tmp_path / "later.sqlite", validate_site=False)
    _label, later = validate_run.validate_manifest(str(tmp_path / "later.sqlite"), argv=["validate"])
    assert later.equals(whole)


def test_known_facts_are_found_alike_by_lookups_and_by_reading_all_keys(clean, db, monkeypatch):
    """A version's check wants most of the cache: its keys are then read all at once, not looked up one by one
    (store/validation.py, _LOOKUP_RATIO); both ways give the same pairs, new contents among them left out."""
    from chorus_batch.store import Manifest
    from chorus_batch.store import validation as store_validation
    from chorus_batch.validate.kinds import facts_needed

    run_site(clean, db)
    cache = Manifest(db).validation
    wanted = pl.concat([facts_needed(cache.current_files()).select("kind", "md5"),
                        pl.DataFrame({"kind": ["wfdb_header.v11"], "md5": ["0" * 32]})])  # a content never seen
    monkeypatch.setattr(store_validation, "_LOOKUP_RATIO", 10**9)
    looked_up = cache.known_keys(wanted)
    monkeypatch.setattr(store_validation, "_LOOKUP_RATIO", 0)
    read_all = cache.known_keys(wanted)
    assert looked_up.height == wanted.height - 1
    assert read_all.sort("kind", "md5").equals(looked_up.sort("kind", "md5"))


def test_a_person_folder_with_letters_gets_its_findings_not_a_traceback(clean, tmp_path):
    """A person id with letters ("P000101") takes the DICOM PatientID rule's other branch than numeric ids; the
    message of its findings was built with pl.format, which polars 2.1 panics on when the frame has several chunks
    and a filter empties some (the DICOM facts are joined in chunks): validate ended in a Rust panic and a
    traceback. The findings now say where and what to do."""
    first = person_ids(3)[0]
    (clean / first).rename(clean / f"P{first}")
    person = clean / "OMOP" / "person.csv"
    person.write_text(person.read_text().replace(f"\n{first},", f"\nP{first},"))
    out = cli("validate", "--site", str(clean), "--json", cwd=tmp_path)
    assert "Traceback" not in out.stderr and "panicked" not in out.stderr, out.stderr[-2000:]
    assert out.returncode == 1, out.stderr[-2000:]
    findings = json.loads(out.stdout)["findings"]
    patient = [f for f in findings if f["rule"] == "dicom.patient_id"]
    assert patient and all(f["srcfile"].startswith(f"P{first}/Images/") for f in patient)
    assert all(f"is not the person folder P{first}" in f["message"] for f in patient)


@pytest.mark.parametrize("inner, words", [("", "is the same folder as --site / [site] root"),
                                          ("/{first}", "lies inside --site / [site] root"),
                                          # the same folder as a file URL (it was compared as a URL, not a folder)
                                          ("uri", "is the same folder as --site / [site] root")])
def test_roots_that_overlap_are_refused_before_anything_is_listed(clean, tmp_path, inner, words):
    """Every root is listed whole: a [site.roots] entry equal to the site root, or inside it, had every file tracked
    twice (a duplicate_path scan error per file each night, or the person folder's files again as Waveforms/... at
    the top level, uploaded twice). Refused up front, exit 2, nothing written; an exclusion glob that leaves the
    inner tree out of the site root makes it a separate tree again."""
    first = person_ids(3)[0]
    root = clean.as_uri() if inner == "uri" else f"{clean}{inner.format(first=first)}"
    config = tmp_path / "site.toml"
    config.write_text(f'[site]\nroot = "{clean}"\n[site.roots]\nWaveforms = "{root}"\n[manifest]\ndb = "m.sqlite"\n')
    out = cli("run", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and words in out.stderr and "[site.roots] Waveforms" in out.stderr, out.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site", "site.toml"]
    if inner.startswith("/"):
        config.write_text(config.read_text() + f'[run]\nexclude = ["{first}/*"]\n')
        assert cli("run", "--config", str(config), cwd=tmp_path).returncode in (0, 1)


def test_validate_a_folder_names_the_files_its_scan_could_not_take(clean, tmp_path):
    """A file the scan does not take (here a symbolic link, not followed) is in no version, so no rule sees it; the
    temporary manifest that recorded why is removed. validate --site said only "0 errors" about such a site."""
    first = person_ids(3)[0]
    assert cli("validate", "--site", str(clean), cwd=tmp_path).returncode == 0  # (a clean site: no finding)
    (clean / "linked").symlink_to(clean / first, target_is_directory=True)
    text = cli("validate", "--site", str(clean), cwd=tmp_path)
    assert "not checked: 1 file the scan could not take" in text.stdout, text.stdout
    assert text.returncode == 1, "files no rule saw are findings (exit 1), as a run's scan errors are"
    assert "linked: symbolic link not followed" in text.stdout
    report = json.loads(cli("validate", "--site", str(clean), "--json", cwd=tmp_path).stdout)
    assert [(f["srcfile"], f["kind"]) for f in report["not_checked"]] == [("linked", "symlink")]
    assert report["exit_code"] == 1
    # the keys `validate --help` names for --json are the ones printed (it named a `counts` there was none of)
    import re

    from chorus_batch.cli import _parser

    said = next(action.help for action in _parser().commands["validate"]._actions if "--json" in action.option_strings)
    named = {key.split(":")[0].strip() for key in re.search(r"\{(.*?)\}", said).group(1).split(",")} | {"not_checked"}
    assert named == set(report), (named, set(report))


def test_validate_a_manifest_from_a_site_that_is_not_there_is_a_usage_error(clean, db, tmp_path):
    """`validate --db M --site TYPO`: the facts of every file were cached, so nothing was read from the mistyped
    folder and the command reported the findings as checked there. The folder given is checked first."""
    run_site(clean, db)
    out = cli("validate", "--db", str(db), "--site", str(tmp_path / "no_such_site"), cwd=tmp_path)
    assert out.returncode == 2 and "site root is not a readable directory" in out.stderr, (out.returncode, out.stderr)
    assert cli("validate", "--db", str(db), "--site", str(clean), cwd=tmp_path).returncode in (0, 1)


def test_validate_names_a_missing_modality_root_as_that_root_not_as_the_site_root(tmp_path):
    """A [site.roots] folder not mounted: `validate` (and `registry`) said "site root is not a readable directory"
    at "--site / [site] root", and told to point --site at the folder that holds OMOP/."""
    site, wave = tmp_path / "site", tmp_path / "wave"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(wave, "000001/Waveforms/Telemetry/1/1.hea", b"1 1 250 10\n")
    config = tmp_path / "chorus.toml"
    config.write_text(f'[site]\nroot = "{site}"\n[site.roots]\nWaveforms = "{wave}"\n[manifest]\ndb = "m.sqlite"\n')
    assert cli("run", "--no-validate", cwd=tmp_path).returncode in (0, 1)
    wave.rename(tmp_path / "away")
    for command in (["validate"], ["validate", "--force"], ["registry", "--out", str(tmp_path / "reg")]):
        out = cli(*command, cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"root is not a readable directory: {wave}" in out.stderr and "site root" not in out.stderr, out.stderr
        assert "where: chorus.toml, line 4: [site.roots] Waveforms" in out.stderr, out.stderr


def test_a_table_the_scan_could_not_take_is_not_called_missing(clean, tmp_path):
    """OMOP/person.csv as a symbolic link (not followed) is in no version: omop.missing_table told the site to "add
    OMOP/person.csv", which is there. The finding now says why the table was not read."""
    real = tmp_path / "person_elsewhere.csv"
    (clean / "OMOP" / "person.csv").rename(real)
    (clean / "OMOP" / "person.csv").symlink_to(real)
    report = json.loads(cli("validate", "--site", str(clean), "--json", cwd=tmp_path).stdout)
    missing = [f for f in report["findings"] if f["rule"] == "omop.missing_table"]
    assert [f["srcfile"] for f in missing] == ["OMOP/person.csv"]
    assert "is there but the scan could not take it (symbolic link not followed" in missing[0]["message"]
    assert "add OMOP/person.csv" not in missing[0]["message"]


@pytest.mark.parametrize("extra", [[], ["--json"], ["--db", "new.sqlite", "--json"]])
def test_validate_an_empty_folder_says_there_is_nothing_to_check(tmp_path, extra):
    """An empty folder (a wrong --site) printed a heading and nothing else with exit 0; with --db NEW --json it was
    an internal error (no findings to list). Now: exit 2, nothing to check, where and what to do."""
    empty = tmp_path / "empty"
    empty.mkdir()
    out = cli("validate", "--site", str(empty), *extra, cwd=tmp_path)
    assert out.returncode == 2 and "the folder lists no files: nothing to check" in out.stderr, (out.returncode, out.stderr)
    assert "internal error" not in out.stderr


def test_no_message_of_the_package_is_built_with_pl_format():
    """The panic above is polars' own: every message (findings, scan errors, import and upload problems) is built by
    frames.fmt, so a frame's chunks never decide whether a run ends in a traceback."""
    import re
    from pathlib import Path

    import chorus_batch

    package = Path(chorus_batch.__file__).parent
    users = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py"))
             if re.search(r"\bpl\.format\(|\.str\.format\(", p.read_text(encoding="utf-8").replace("pl.format's", ""))]
    assert users == [], users


def test_validate_help_names_what_today_s_procedures_ask_for():
    """`validate --help` said it checks "sessions vs waveform_visit_links.csv", the links table of Waveform File Format
    v2.0 that the linkage registries replaced; it named neither the registries nor Metadata/."""
    from chorus_batch.cli import _parser

    description = _parser().commands["validate"].description
    assert "waveform_visit_links" not in description
    assert "registries" in description and "Metadata/" in description and "mappings" in description


@pytest.mark.parametrize("point", ["validate", "validated"])
def test_a_signal_at_the_end_of_validate_says_truly_whether_its_findings_were_recorded(clean, db, point):
    """SQLite commits in C: a SIGTERM that came while validate's one transaction was committed is raised after it.
    The message said "no findings of this check were recorded" of findings the manifest then held."""
    assert main_here("run", "--site", str(clean), "--db", str(db), "--no-validate").returncode == 0
    assert query(db, "SELECT count(*) FROM validations") == [(0,)]
    proc = paused("validate", "--db", str(db), at=point)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    recorded = query(db, "SELECT count(*) FROM validations") == [(1,)]
    assert recorded == (point == "validated")
    if recorded:
        assert "had been recorded before the signal came; they stay" in err and "no findings" not in err, err
    else:
        assert "no findings of this check were recorded" in err, err
    shown = main_here("validate", "--db", str(db))
    assert shown.returncode == 0 and "validation: 0 errors" in shown.stdout, shown.stderr


def test_an_empty_omop_folder_is_not_said_to_be_missing(clean):
    """An OMOP/ folder whose tables were not copied yet was "the site has no OMOP/ folder" (a version records files,
    not folders): the site engineer looked, saw the folder, and took the finding for a wrong one."""
    import shutil

    shutil.rmtree(clean / "OMOP")
    (clean / "OMOP").mkdir()
    out = main_here("validate", "--site", str(clean), "--json")
    found = {f["rule"]: f["message"] for f in json.loads(out.stdout)["findings"]}
    assert out.returncode == 1 and found["layout.no_omop"].startswith(
        "the site has no file in an OMOP/ folder (none, or an empty one): add OMOP/"), found


def test_validate_of_a_folder_that_is_not_there_does_not_say_it_was_checked(tmp_path):
    """`validate --site TYPO` (no --db) ended "nothing was written (the folder was checked in a temporary manifest,
    now removed)": nothing was checked, the folder was refused before its listing."""
    out = cli("validate", "--site", str(tmp_path / "no_such_site"), cwd=tmp_path)
    assert out.returncode == 2 and "does not exist" in out.stderr, out.stderr
    assert out.stderr.rstrip().endswith("nothing was written") and "checked in a temporary" not in out.stderr, out.stderr


def test_validate_of_a_folder_without_a_manifest_does_not_log_a_version_committed(clean, tmp_path):
    """`validate --site DIR` (no --db) logged "committing version X" of the temporary manifest it then removed: no
    version of any manifest that stays. It says what it does: records the files to check them."""
    out = cli("validate", "--site", str(clean), cwd=tmp_path)
    assert out.returncode in (0, 1), out.stderr
    assert "committing version" not in out.stderr, out.stderr
    assert "recording the folder's files in a temporary manifest, to check them" in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == [clean]


@pytest.mark.parametrize("recorded", ["C:/data/site", "/mnt/not-mounted/site", "EMPTY"])
def test_validate_of_a_manifest_whose_recorded_root_is_not_there_says_so_once_and_records_nothing(
        clean, tmp_path, recorded):
    """A manifest copied from the site's Windows machine (its root recorded as C:/data/site, a folder under the working
    one here), or one whose disk is not mounted: `validate --force --db` said of every file "it is gone (removed or
    moved since the run recorded it)", then (naming the root) one `file.unread` error per file, each repeating the same
    cause, stored with the version: thousands on a real site. It stops once, before reading, as for a manifest that
    does not record its roots: exit 2, the root and why it is not there, what to give; no finding is recorded.
    So for a root that is an empty folder (EMPTY: the mount point of an NFS share that did not come up)."""
    db = tmp_path / "m.sqlite"
    run_site(clean, db)
    if recorded == "EMPTY":
        recorded = str(tmp_path / "mnt")
        os.mkdir(recorded)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE roots SET location = ?", (recorded,))
        con.execute("DELETE FROM file_facts")
    before = query(db, "SELECT * FROM findings ORDER BY 1, 2, 3"), query(db, "SELECT * FROM validations")
    done = cli("validate", "--force", "--db", str(db), "--json", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    said = done.stderr
    assert said.count("chorus-batch: error:") == 1 and "Traceback" not in said, said
    assert "must be read to check it" in said, said
    assert ("is an empty folder (a file system not mounted there?)" in said if recorded.endswith("mnt")
            else "the root it is recorded under" in said), said
    assert "give --site the folder the site is in now, or mount" in said, said
    assert ("Windows path" in said) == recorded.startswith("C:"), said
    assert (query(db, "SELECT * FROM findings ORDER BY 1, 2, 3"), query(db, "SELECT * FROM validations")) == before


SCHEMA8 = Path(__file__).resolve().parent / "fixtures" / "schema8"


def test_validate_of_a_moved_site_stops_before_reading_any_file(tmp_path, reads):
    """The schema-8 fixture's root, /tmp/s8/td/second, is not there: `validate --db` (an upgrade, then its latest
    version checked again by today's rules) gave 24 `file.unread` errors, each saying the same of the root. It stops
    once before reading a file, exit 2, naming the root; `--site` with the tree's new place checks it. The library
    (validate_manifest, as cli calls it) says the same in its own words."""
    import shutil

    from chorus_batch.errors import ChorusError, ExitCode
    from chorus_batch.validate.run import validate_manifest

    shutil.copytree(SCHEMA8, tmp_path / "s8")
    db, site = tmp_path / "s8" / "manifest.sqlite", tmp_path / "s8" / "site"
    assert not Path("/tmp/s8/td/second").exists()
    out = cli("validate", "--db", str(db), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "file.unread" not in out.stdout + out.stderr, out.stdout
    assert "24 files of version 20261203020000" in out.stderr, out.stderr
    assert "/tmp/s8/td/second, does not exist (a typo, or a disk that is not mounted?)" in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM findings WHERE version = '20261203020000'") == [(0,)]
    with pytest.raises(ChorusError) as raised:
        validate_manifest(str(db), argv=["test"])
    assert raised.value.exit_code == ExitCode.USAGE and reads == []
    assert "/tmp/s8/td/second" in str(raised.value) and "call validate_manifest(db, overrides={None: DIR})" in \
        str(raised.value) and "--site" not in str(raised.value), str(raised.value)
    label, findings = validate_manifest(str(db), argv=["test"], overrides={None: str(site)})
    assert label == "20261203020000" and "file.unread" not in set(findings["rule"])
    assert reads, "the files are read from the site's new place"


def test_a_root_that_lost_some_files_keeps_a_finding_per_file(clean, tmp_path):
    """Only a root that is not there at all stops validate: one that is there but lost files since the run says so of
    each file (`file.unread`, "it is gone"), as before."""
    db = tmp_path / "m.sqlite"
    run_site(clean, db)
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM file_facts")
    gone = next(clean.rglob("*.hea"))
    gone.unlink()
    done = cli("validate", "--force", "--db", str(db), "--json", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    unread = [f for f in json.loads(done.stdout)["findings"] if f["rule"] == "file.unread"]
    assert [f["srcfile"] for f in unread] == [gone.relative_to(clean).as_posix()], unread
    assert "it is gone" in unread[0]["message"], unread


def test_the_examples_of_a_summary_show_each_rule_before_a_second_of_any(clean, db):
    """The examples were the first 10 (20 in --json) findings by severity and path: twelve compressed files in a person
    folder (paths starting with digits) filled them, and the one error of another rule (Metadata/READINESS.md missing)
    was a count with no message in the run's summary, `validate` and `--json`'s examples. Each rule now gives its
    first example before any rule gives a second, the most serious first; they are listed in path order."""
    person = person_ids(3)[0]
    for i in range(12):
        write(clean, f"{person}/Waveforms/Telemetry/{sessions_of(person, 0)['single']}/archive{i:02}.zip", b"PK\x03\x04")
    (clean / "Metadata" / "READINESS.md").unlink()
    run = main_here("run", "--site", str(clean), "--db", str(db))
    assert run.returncode == 1, run.stderr
    for out in (run.stdout, main_here("validate", "--db", str(db)).stdout):
        listed = [line.strip() for line in out.splitlines() if line.startswith("    error: ")]
        assert any("Metadata/READINESS.md:" in line for line in listed), out
        assert any("archive00.zip:" in line for line in listed)
        assert listed == sorted(listed)  # still in path order
    summary = json.loads(main_here("validate", "--db", str(db), "--json").stdout)
    examples = summary["examples"]
    assert summary["by_rule"]["error:file.compressed"] == 12
    rules = [e["rule"] for e in examples]
    assert "metadata.missing" in rules and rules.count("file.compressed") > 1
    # every rule found has an example, and the errors come first
    assert {e["severity"] + ":" + e["rule"] for e in examples} == set(summary["by_rule"])
    assert [e["severity"] for e in examples] == sorted((e["severity"] for e in examples),
                                                        key=["error", "warning", "info"].index)


def test_validate_shows_the_findings_of_a_rule_a_severity_or_a_path_and_says_it_is_a_part(clean, db):
    """A site engineer fixing one problem at a time asks for its findings alone: by rule (an id, a family, a glob),
    by severity (this one and more serious) and by file, folder (a person) or glob; the list, its counts and the
    exit code are those shown, and the header says how many of all they are. Before, `validate` took none of these
    (argparse: unrecognized arguments, exit 2), and thousands of warnings hid the one error of a person."""
    (clean / "OMOP" / "death.csv").unlink()
    person = sorted(p.name for p in clean.iterdir() if p.name.isdigit())[0]
    for i in range(3):
        (clean / person / f"stray{i}.txt").write_text(f"{i}\n")
    run_site(clean, db)

    def shown(*args: str) -> tuple[int, dict]:
        done = main_here("validate", "--db", str(db), "--json", *args)
        assert "Traceback" not in done.stderr
        return done.returncode, json.loads(done.stdout)

    code, whole = shown()
    assert code == 1 and whole["total"] >= 4 and "filter" not in whole
    code, one = shown("--rule", "omop.missing_table")
    assert code == 1 and {f["rule"] for f in one["findings"]} == {"omop.missing_table"}
    assert one["all_findings"] == whole["total"] and one["filter"] == "--rule omop.missing_table"
    code, layout = shown("--rule", "layout.", "--rule", "layout.*")  # a family, as typed either way
    assert code == 0, "only warnings shown: the exit code is of them"
    assert {f["rule"] for f in layout["findings"]} == {"layout.person_file"} and layout["total"] == 3
    code, errors = shown("--severity", "error")
    assert {f["severity"] for f in errors["findings"]} == {"error"}
    code, warnings = shown("--severity", "warning")
    assert {f["severity"] for f in warnings["findings"]} == {"error", "warning"}
    code, mine = shown("--path", person)
    assert code == 0 and mine["total"] == 3 and all(f["srcfile"].startswith(person + "/") for f in mine["findings"])
    code, globbed = shown("--path", "*/stray1.txt")
    assert [f["srcfile"] for f in globbed["findings"]] == [f"{person}/stray1.txt"]
    code, omop = shown("--path", "OMOP/death.csv")
    assert code == 1 and [f["rule"] for f in omop["findings"]] == ["omop.missing_table"]

    text = main_here("validate", "--db", str(db), "--rule", "omop.missing_table")
    assert text.returncode == 1
    assert f"--rule omop.missing_table: 1 of {whole['total']} findings shown" in text.stdout

    # a rule misspelt is refused before anything is read, with the id it may mean
    wrong = main_here("validate", "--db", str(db), "--rule", "omop.mising_table")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "no validation rule is omop.mising_table; did you mean omop.missing_table?" in wrong.stderr
    family = main_here("validate", "--db", str(db), "--rule", "dicm.")
    assert family.returncode == 2 and "did you mean dicom.?" in family.stderr


def test_the_review_api_keeps_the_findings_validate_keeps_by_rule_severity_and_path(clean, db, tmp_path):
    """A reviewer in a notebook asks `m.findings(rule=, severity=, path=)` for what `validate --rule/--severity/--path`
    shows, and gets the same rows from the manifest and from its snapshot folder (one filter). Before, `findings()`
    took a version only (TypeError: unexpected keyword argument 'rule'), so a notebook filtered by hand and could
    keep other findings than the command line (a family `dicom.`, a folder, the severities above one)."""
    from chorus_batch.errors import UsageError

    (clean / "OMOP" / "death.csv").unlink()
    person = sorted(p.name for p in clean.iterdir() if p.name.isdigit())[0]
    for i in range(3):
        (clean / person / f"stray{i}.txt").write_text(f"{i}\n")
    snaps = tmp_path / "snaps"
    run_site(clean, db, parquet=str(snaps))
    readers_ = (open_manifest(db), open_manifest(snaps))

    def by_cli(*args: str) -> list[tuple]:
        done = main_here("validate", "--db", str(db), "--json", *args)
        assert "Traceback" not in done.stderr
        return sorted((f["rule"], f["severity"], f["srcfile"]) for f in json.loads(done.stdout)["findings"])

    for args, asked in [(("--rule", "omop.missing_table"), {"rule": "omop.missing_table"}),
                        (("--rule", "layout.", "--rule", "omop.*"), {"rule": ["layout.", "omop.*"]}),
                        (("--severity", "warning"), {"severity": "warning"}),
                        (("--severity", "error"), {"severity": "error"}),
                        (("--path", person), {"path": person}),
                        (("--path", "*/stray1.txt", "--severity", "info"), {"path": "*/stray1.txt", "severity": "info"})]:
        expected = by_cli(*args)
        assert expected, args
        for m in readers_:
            got = m.findings(**asked)
            assert sorted(got.select("rule", "severity", "srcfile").iter_rows()) == expected, (m, asked)
    assert readers_[0].findings(rule="layout.").height == 3 < readers_[0].findings().height

    # a misspelt rule or severity is said as an argument of findings(), with what it may mean, before anything is read
    with pytest.raises(UsageError, match=r"no validation rule is omop.mising_table; did you mean omop.missing_table\?"
                       ) as said:
        readers_[0].findings(rule="omop.mising_table")
    assert said.value.where == "rule="
    with pytest.raises(UsageError, match="no severity is 'errors'") as said:
        readers_[1].findings(severity="errors")
    assert said.value.where == "severity="
    wrong = main_here("validate", "--db", str(db), "--rule", "omop.mising_table")
    assert wrong.returncode == 2 and "--rule" in wrong.stderr and "did you mean omop.missing_table?" in wrong.stderr


def test_validate_version_shows_an_earlier_versions_stored_findings_and_says_they_are_stored(clean, db):
    """`validate --version` of an earlier version: its findings as stored when it was checked (its files are no
    longer there as it recorded them), said so, never checked again; a version never checked is said, exit 2, not
    shown as clean. Before, `validate` took no --version (exit 2, "not an option of validate")."""
    (clean / "OMOP" / "death.csv").unlink()
    first = run_site(clean, db)
    (clean / "OMOP" / "death.csv").write_text("person_id,death_date\n")
    second = run_site(clean, db)
    assert not any(second.findings["rule"] == "omop.missing_table")

    done = main_here("validate", "--db", str(db), "--version", first.label, "--json")
    assert done.returncode == 1, done.stderr
    shown = json.loads(done.stdout)
    assert shown["version"] == first.label and "omop.missing_table" in {f["rule"] for f in shown["findings"]}
    assert "not checked again" in shown["stored"] and second.label in shown["stored"]
    assert query(db, "SELECT count(*) FROM validations")[0][0] == 2, "nothing checked nor stored"
    text = main_here("validate", "--db", str(db), "--version", first.label, "--rule", "omop.")
    assert text.returncode == 1 and f"the findings stored when version {first.label} was checked" in text.stdout
    latest = main_here("validate", "--db", str(db), "--version", second.label, "--json")
    assert latest.returncode == json.loads(latest.stdout)["exit_code"] and "stored" not in json.loads(latest.stdout)

    forced = main_here("validate", "--db", str(db), "--version", first.label, "--force")
    assert forced.returncode == 2 and "--force checks the latest version again" in forced.stderr
    (clean / "stray.txt").write_text("x\n")
    third = run_site(clean, db, validate_site=False)
    (clean / "stray.txt").unlink()
    run_site(clean, db)
    never = main_here("validate", "--db", str(db), "--version", third.label)
    assert never.returncode == 2 and "Traceback" not in never.stderr
    assert f"Version {third.label} was not validated" in never.stderr
    folder = main_here("validate", "--site", str(clean), "--version", first.label)
    assert folder.returncode == 2 and "no manifest" in folder.stderr


def test_the_run_summary_says_what_was_fixed_what_is_new_and_what_is_still_open_since_the_previous_version(clean, db):
    """A site that fixed a problem reads in the next run's summary what its work did, by the previous version's
    findings (a finding: its severity, rule and file): fixed, new, still open. Before, only the new totals, to be
    compared by hand with last night's mail."""
    from chorus_batch.report import summary_dict, summary_text

    (clean / "OMOP" / "death.csv").unlink()
    person = sorted(p.name for p in clean.iterdir() if p.name.isdigit())[0]
    (clean / person / "stray.txt").write_text("x\n")
    first = run_site(clean, db)
    assert summary_dict(first)["findings_since"] is None, "a first version has nothing to compare with"
    (clean / "OMOP" / "death.csv").write_text("person_id,death_date\n")
    (clean / "Unexpected").mkdir()
    (clean / "Unexpected" / "a.txt").write_text("a\n")
    second = run_site(clean, db)
    since = summary_dict(second)["findings_since"]
    assert since["since"] == first.label
    assert since["fixed"]["error"] == 1 and since["fixed"]["total"] == 1  # omop.missing_table
    assert since["new"]["warning"] >= 1 and since["new"]["error"] == 0  # layout.unexpected_folder
    assert since["still_open"]["total"] >= 1  # layout.person_file of stray.txt
    text = summary_text(second)
    assert f"  since version {first.label}: fixed 1 (1 error, 0 warnings, 0 notes); new " in text
    assert text.index("since version") < text.index("warning:layout.person_file"), "under the counts"
    done = main_here("run", "--site", str(clean), "--db", str(db), "--json")
    assert json.loads(done.stdout)["findings_since"] is None, "no new version: the same findings, nothing to compare"
    (clean / "Unexpected" / "a.txt").unlink()
    (clean / "Unexpected").rmdir()
    unchecked = run_site(clean, db, validate_site=False)
    assert summary_dict(unchecked)["findings_since"] is None, "not checked: nothing to compare"
    (clean / person / "stray.txt").unlink()
    after_unchecked = run_site(clean, db)
    assert summary_dict(after_unchecked)["findings_since"] is None, "the previous version was not checked"


def test_a_manifest_whose_runs_all_failed_is_said_so_not_as_if_no_run_was_tried(tmp_path):
    """validate (and changes) said "no versions yet ... run `chorus-batch run`" to a cron whose first runs had all
    failed: now how many runs were recorded and how the latest ended."""
    from chorus_batch.store import Manifest

    db = tmp_path / "m.sqlite"
    manifest = Manifest(db)
    manifest.ensure_schema()
    for code, message in ((3, "the storage failed"), (143, "stopped by signal 15")):
        manifest.finish_run(manifest.begin_run(["run"], "full", str(tmp_path / "site")), exit_code=code, version=None,
                            message=message)
    for command in ("validate", "changes"):
        out = main_here(command, "--db", str(db))
        assert out.returncode == 2, out.stderr
        assert "no versions yet: 2 runs were recorded, none committed a version" in out.stderr, out.stderr
        assert "stopped by SIGTERM; no version committed (stopped by signal 15)" in out.stderr, out.stderr
        assert "give the run the time it needs" in out.stderr and "then run again" in " ".join(out.stderr.split())
        assert "commit one first" not in out.stderr and "Traceback" not in out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    db2 = tmp_path / "e.sqlite"
    # a first run refused as its root lists no file: said with its refusal, and what to do about it
    assert main_here("run", "-q", "--site", str(empty), "--db", str(db2), "--no-validate").returncode == 5
    out = main_here("validate", "--db", str(db2))
    assert out.returncode == 2 and f"refused: root {empty} lists no files at all" in out.stderr, out.stderr
    assert "holds OMOP/ and the person folders" in " ".join(out.stderr.split()), out.stderr
    # one let through (--max-delete all: a site whose files are to come) ended with nothing to commit
    db3 = tmp_path / "a.sqlite"
    assert main_here("run", "-q", "--site", str(empty), "--db", str(db3), "--no-validate", "--max-delete", "all").returncode == 0
    out = main_here("validate", "--db", str(db3))
    assert out.returncode == 2 and f"listed no files in {empty}" in out.stderr, out.stderr
    assert "holds OMOP/ and the person folders" in out.stderr


def test_validate_fail_on_judges_every_finding_whatever_the_filters_show(clean, db):
    """A cron filtered what it logs (--path, --rule) and lost its exit code: the exit code was of the findings shown
    only, so an error elsewhere ended 0; nor could it fail on warnings. --fail-on counts every finding."""
    (clean / "OMOP" / "death.csv").unlink()  # an error (omop.missing_table)
    person = sorted(p.name for p in clean.iterdir() if p.name.isdigit())[0]
    (clean / person / "stray.txt").write_text("x\n")  # a warning (layout.person_file)
    run_site(clean, db)

    def code(*args: str) -> int:
        done = main_here("validate", "--db", str(db), "--json", *args)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode

    assert code("--path", person) == 0  # only a warning shown: without --fail-on, the shown findings decide
    assert code("--path", person, "--fail-on", "error") == 1  # the error in OMOP/ counts, though not shown
    assert code("--rule", "layout.person_file", "--fail-on", "warning") == 1
    assert code("--fail-on", "never") == 0
    text = main_here("validate", "--db", str(db), "--path", person, "--fail-on", "error")  # why 1, when the list shows none
    assert text.returncode == 1 and "validation: 0 errors, 1 warning" in text.stdout, text.stdout
    assert "--fail-on error: exit 1, the version has 1 error (of all its findings, not only those shown)" in text.stdout
    (clean / person / "stray.txt").unlink()
    run_site(clean, db)
    assert code("--fail-on", "warning") == 1  # the error alone: warning means errors and warnings
    build_clean_site(clean, persons=3)  # death.csv back: no error left
    run_site(clean, db)
    assert code("--fail-on", "error") == 0 and code() == 0


def test_validate_explain_prints_a_rules_text_from_the_registry():
    rule = next(r for r in validate_module.RULES if r.id == "dicom.patient_id")
    done = main_here("validate", "--explain", rule.id, "--db", "/nonexistent/m.sqlite")  # reads no manifest
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{rule.id} ({rule.severity}): {rule.title}\n")
    assert " ".join(done.stdout.split("\n", 1)[1].split()) == " ".join(
        [rule.description, f"Procedure: {rule.procedure()}.", f"What to do: {rule.remedy}"])
    assert "Imaging-Data: DICOM with metadata that needs deidentification" in done.stdout
    own = main_here("validate", "--explain", "file.unread").stdout  # a check of the tool's own says so
    assert "Procedure: none (the tool's own" in own
    kept = main_here("validate", "--explain", "dicom.study_metadata").stdout  # its text says what to do: said once
    assert "keep them when de-identifying" in kept and "What to do" not in kept
    family = main_here("validate", "--explain", "registry.", "--json")
    assert [r["rule"] for r in json.loads(family.stdout)] == [r.id for r in validate_module.RULES
                                                               if r.id.startswith("registry.")]
    wrong = main_here("validate", "--explain", "dicom.patiant_id")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "did you mean dicom.patient_id?" in wrong.stderr


def test_every_rule_cites_a_section_of_the_procedures_text_or_says_it_is_the_tools_own():
    """`validate --explain` told what a rule checks, not which procedure asks for it nor what to do. Every rule now
    cites (document, section) pairs; each document is a file of the procedures' text and each section is written in
    it (CHORUS_SOP_DIR: the folder of that text), or the rule says why it is the tool's own."""
    import os

    from chorus_batch.validate.rules import OWN, SOP_DOCUMENTS

    # The procedures' text is not part of the project: where it is on the machine (a developer's, beside the
    # project), every cited section is found in it; elsewhere the citations are checked for their form only.
    folder = Path(os.environ.get("CHORUS_SOP_DIR", Path(__file__).resolve().parents[2] / "shared/reference/chorus-sop"))
    texts = ({document: " ".join((folder / document).read_text(encoding="utf-8").replace("\u200b", "").split())
              for document in SOP_DOCUMENTS} if folder.is_dir() else {})
    for rule in validate_module.RULES:
        assert rule.sop, rule.id
        for document, section in rule.sop:
            assert section.strip(), rule.id
            if document == OWN:
                assert section.startswith("the tool's own") or "not kept as text" in section, rule.id
                continue
            assert document in SOP_DOCUMENTS, (rule.id, document)
            if texts:
                assert " ".join(section.split()) in texts[document], (rule.id, document, section)
        assert rule.remedy == "" or rule.remedy.endswith((".", "...")), rule.id


def test_a_rule_citing_an_earlier_edition_cites_todays_text_unless_it_checks_only_earlier_layouts():
    """The WFDB rules (bad_header, missing_dat, dat_size, the segment rules, ...) cited only
    DEPRECATED-Waveform-File-Format, the v1.0 edition sites are not to follow: `--explain` named a superseded text as
    the procedure asking for them. Today's Waveform File Format asks for files the CHoRUS to WFDB converter can read
    (3. Preparing Waveforms); a rule that still cites only an earlier edition checks only that edition's files."""
    from chorus_batch.validate.rules import OWN, UPLOAD_V1, WAVEFORM_FORMAT_V1

    earlier_only = {"records.unlisted", "records.absent", "records.unreadable", "wfdb.name_mismatch"}
    cites_only_earlier = {rule.id for rule in validate_module.RULES
                          if rule.sop and all(doc in (UPLOAD_V1, WAVEFORM_FORMAT_V1) for doc, _ in rule.sop)}
    assert cites_only_earlier == earlier_only
    for rule in validate_module.RULES:  # today's text first: --explain's "Procedure:" leads with it
        if rule.id not in earlier_only and rule.sop[0][0] != OWN:
            assert rule.sop[0][0] not in (UPLOAD_V1, WAVEFORM_FORMAT_V1), rule.id


def test_the_readmes_rules_table_is_the_registry_rule_for_rule():
    """The README's table repeated the registry's texts by hand and had drifted (backticks one side only); only
    ids and severities were compared, and a rule dropped from the code stayed in the table."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| (error|warning|info) \| (.*) \| (.*) \|$", readme, re.M)
    table = {rule: (severity, text.replace("\\|", "|"), procedure.replace("\\|", "|"))
             for rule, severity, text, procedure in rows}
    assert len(table) == len(rows)
    assert table == {r.id: (r.severity, r.description, r.procedure()) for r in validate_module.RULES}


def test_a_mutated_runs_findings_are_those_of_a_full_check(tmp_path):
    """A run after part of the site changed checks the new version from the facts it has (most of them cached by the
    run before): its findings are exactly those of `validate --force` of that version, the findings of files that did
    not change among them (an empty DICOM and a duplicate written before the first run, left alone by the change) as
    well as those of the files that did. The guard for any step that reuses an earlier version's findings."""
    from chorus_batch.testdata import Spec, sync_tree, write_snapshot
    from chorus_batch.validate import run as validate_run

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    spec = Spec(persons=6, files_per_person=12, size=512, seed=3, change_fraction=0.3)
    write_snapshot(site, spec)
    person = sorted(p.name for p in site.iterdir() if p.name[0].isdigit())[1]
    some_dicom = next((site / person).rglob("*.dcm"))
    write(site, f"{person}/Images/empty.dcm", b"")  # per file, in no folder the change touches
    write(site, f"{person}/Metadata/kept_copy.dcm", some_dicom.read_bytes())  # a content twice on the site
    first = run_site(site, db)
    assert first.findings["rule"].n_unique() >= 3, first.findings.to_dicts()
    time.sleep(1.1)  # the change is not in the first run's racy window
    assert sync_tree(site, spec) > 0
    write(site, f"{person}/Images/empty_too.dcm", b"")  # a new file with a finding
    mutated = run_site(site, db)
    assert mutated.label != first.label and mutated.findings["rule"].n_unique() >= 3
    assert mutated.findings.filter(pl.col("srcfile").str.ends_with("/Images/empty.dcm")).height
    label, forced = validate_run.validate_manifest(str(db), argv=["validate", "--force"], force=True)
    assert label == mutated.label
    assert mutated.findings.equals(forced), (mutated.findings.join(forced, on=list(forced.columns), how="anti").to_dicts(),
                                             forced.join(mutated.findings, on=list(forced.columns), how="anti").to_dicts())


def test_validate_path_reads_a_path_as_files_path_does(clean, db):
    """`validate --path ./000001` and the site's absolute path of a person folder showed no finding of it, and
    `--path /000001` (an absolute path under no folder the manifest records) those of 000001: the filter read the
    path its own way (stripping '/'). It is read as `files --path` reads it; the review API's findings(path=) too."""
    from chorus_batch.review import open_manifest

    person = sorted(p.name for p in clean.iterdir() if p.name.isdigit())[0]
    (clean / person / "stray.txt").write_text("x\n")  # a warning (layout.person_file)
    run_site(clean, db)

    def shown(path: str) -> int:
        done = main_here("validate", "--db", str(db), "--json", "--path", path)
        assert "Traceback" not in done.stderr, done.stderr
        return len(json.loads(done.stdout)["findings"])

    assert shown(person) == 1
    assert shown(f"./{person}") == shown(str(clean / person)) == shown(f"{person}/") == 1
    assert shown(f"/{person}") == 0
    reader = open_manifest(db)
    assert reader.findings(path=f"./{person}").height == reader.findings(path=str(clean / person)).height == 1
    assert reader.findings(path=f"/{person}").height == 0


def test_a_person_folder_renamed_after_the_registries_is_told_once_as_the_cause(db, tmp_path):
    """A person folder renamed (000101 -> 000601) after the site's registries were written gave a
    registry.missing_file, registry.unlisted_file and dicom.patient_id for its files, and nothing said the folder had
    been renamed, which the manifest knew (its change set: renamed). One registry.renamed_folder on the folder names
    both names and what to do; the per-file findings point to it. A fresh manifest knows no earlier name: as before."""
    clean = tmp_path / "one"
    build_clean_site(clean, persons=1)  # (one person: cheap)
    assert run_site(clean, db).findings.height == 0
    old = person_ids(1)[0]
    new = f"{int(old) + 500:06d}"
    (clean / old).rename(clean / new)
    findings = run_site(clean, db).findings
    told = findings.filter(pl.col("rule") == "registry.renamed_folder")
    assert told.select("srcfile", "severity").rows() == [(f"{new}/", "error")]
    message = told["message"][0]
    assert f"person folder {old}/ was renamed {new}/" in message and "waveform_registry.csv" in message
    assert "`chorus-batch registry`" in message and f"rename the folder back to {old}/" in message
    pointed = findings.filter(pl.col("rule").is_in(["registry.unlisted_file", "registry.missing_file",
                                                    "dicom.patient_id"]))
    assert pointed.height > 3 and pointed["message"].str.contains("see registry.renamed_folder", literal=True).all()
    # a fresh manifest's one version records no rename (its files all added): nothing is known of an earlier name,
    # and validate says no more than before (the rule is fed by these alone)
    from chorus_batch.store import Manifest
    from chorus_batch.validate.run import renamed_folders

    first, second = (label for (label,) in query(db, "SELECT label FROM versions ORDER BY label"))
    assert renamed_folders(Manifest(db), first).height == 0
    assert renamed_folders(Manifest(db), second).rows() == [(old, new, second)]
