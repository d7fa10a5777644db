"""`import-journal`: a chorus-upload journal (real ones, both schemas: tests/fixtures/chorus-upload, see its
README) becomes a manifest whose every version holds the tree upstream recorded, whose upload marks are in the
uploads ledger, and after which the next run hashes nothing upstream hashed and `upload` sends only what upstream
had not sent (against a real Azurite)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import cli, main_here, paused, query
from services import set_content_md5
from test_upload import blobs, central_for

FIXTURES = Path(__file__).parent / "fixtures" / "chorus-upload"
JOURNALS = {"A": FIXTURES / "journal_A.db", "B": FIXTURES / "journal_B.db"}
V1, V2 = "20250101000000", "20250201000000"


def make_site():
    spec = importlib.util.spec_from_file_location("make_site", FIXTURES / "make_site.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree(state: str, *, schema: str) -> dict[str, tuple[int, str]]:
    """path -> (size, md5) of the fixture site's version (journal B's old release tracked no Metadata/)."""
    states = {"v1": make_site().state_v1, "v2": make_site().state_v2}[state]()
    return {path: (len(data), hashlib.md5(data).hexdigest()) for path, (data, _) in states.items()
            if not (schema == "B" and path.startswith("Metadata/"))}


def build_site(tmp_path: Path, state: str = "v2") -> Path:
    site = tmp_path / f"site_{state}"
    make_site().build(str(site), state)
    return site


def files_as_of(db: Path, label: str) -> dict[str, tuple[int, str]]:
    out = main_here("files", "--db", str(db), "--as-of", label, "--json")
    assert out.returncode == 0, out.stderr
    return {row["srcfile"]: (row["size"], row["md5"]) for row in json.loads(out.stdout)}


def import_journal(journal: Path, db: Path, *extra: str, env: dict | None = None):
    if env:  # (an environment of its own: its own process)
        return cli("import-journal", str(journal), "--db", str(db), *extra, env=env)
    return main_here("import-journal", str(journal), "--db", str(db), *extra)


def edited_journal(tmp_path: Path, schema: str, sql: str) -> Path:
    """A copy of journal `schema` ("A", "B") in tmp_path with the statements `sql` run on it."""
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS[schema], journal)
    con = sqlite3.connect(journal)
    with con:
        con.executescript(sql)
    con.close()
    return journal


def journal_marks(journal: Path) -> set[tuple[str, str, str]]:
    """(path, version, md5) of every upload mark, read from the journal with the fixture README's queries."""
    con = sqlite3.connect(journal)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal_v2'").fetchone():
            rows = con.execute(
                "SELECT s.SRC_PATH || '/' || j.FILENAME, v.VERSION, j.MD5 FROM journal_v2 j "
                "JOIN srcpaths s ON s.id = j.SRC_PATH_ID JOIN versions v ON v.id = j.VERSION_ID "
                "WHERE j.UPLOAD_DT_ID IS NOT NULL").fetchall()
        else:
            rows = con.execute("SELECT FILEPATH, VERSION, MD5 FROM journal WHERE UPLOAD_DTSTR IS NOT NULL").fetchall()
    finally:
        con.close()
    return set(rows)


@pytest.fixture
def central(azurite, monkeypatch, tmp_path):
    return central_for(azurite, monkeypatch, tmp_path)


# ----------------------------------------------------------------------------- the whole history


@pytest.mark.parametrize("schema", ["A", "B"])
def test_every_version_of_the_journal_is_the_tree_upstream_recorded(schema, tmp_path):
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS[schema], db, "--site", str(build_site(tmp_path)), "--to", "az://central/")
    assert out.returncode == 1, out.stderr  # findings: today's Images layout does not fit the fixture's paths
    assert "Traceback" not in out.stderr
    assert [row[0] for row in query(db, "SELECT label FROM versions ORDER BY label")] == [V1, V2]
    assert files_as_of(db, V1) == tree("v1", schema=schema)
    assert files_as_of(db, V2) == tree("v2", schema=schema)

    # Our own diff: the rename upstream saw as a removal and an addition, the content changes as replaced,
    # the touched OMOP/person.csv not at all (its row is the same file version, with the new mtime).
    changes = {(c, p, o) for c, p, o in query(db, "SELECT change, srcfile, old_srcfile FROM changes WHERE version = ?", (V2,))}
    assert ("renamed", "550001/Images/XR_20240120/view_1/IMG0001_PA.dcm",
            "550001/Images/XR_20240120/view_1/IMG0001.dcm") in changes
    assert {p for c, p, _ in changes if c == "replaced"} == {"OMOP/measurement.csv",
                                                             "000123/Waveforms/20240101/000123_20240101_083000.dat"}
    assert not any(p == "OMOP/person.csv" for _, p, _ in changes)
    person_csv = query(db, "SELECT version_valid, mtime_ns FROM source_files WHERE srcfile = 'OMOP/person.csv'")
    assert person_csv == [(V1, make_site().state_v2()["OMOP/person.csv"][1] * 10**9)]

    # Person ids from the folders (the journal's integer column lost the zeros), times from upstream's runs.
    persons = {p for (p,) in query(db, "SELECT DISTINCT person_id FROM source_files WHERE person_id IS NOT NULL")}
    assert persons == {"000123", "104567", "2087", "550001", "000045"}
    started = [row[0] for row in query(db, "SELECT started_at FROM versions ORDER BY label")]
    assert all(s.startswith("2026-12-01T14:38:") for s in started)
    assert query(db, "SELECT DISTINCT md5_source FROM source_files") == [("imported",)]

    # Upload marks: one ledger row per (path, version, MD5), imported and not verified, at <central>/<version>/<path>.
    ledger = query(db, "SELECT f.srcfile, u.version, u.md5, u.state, u.destination, u.verify_state FROM uploads u "
                       "JOIN source_files f ON f.file_id = u.file_id")
    assert {(p, v, m) for p, v, m, *_ in ledger} == journal_marks(JOURNALS[schema])
    assert {(state, verify) for _, _, _, state, _, verify in ledger} == {("imported", None)}
    assert all(dest == f"az://central/{v}/{p}" for p, v, _, _, dest, _ in ledger)


@pytest.mark.parametrize("step", ["1_update_v1", "2_mark_u1", "3_update_v2", "4_mark_u2"])
def test_each_step_of_the_journal_imports_the_versions_it_had(step, tmp_path):
    db = tmp_path / "m.sqlite"
    journal = FIXTURES / "steps" / f"A_{step}.db"
    out = import_journal(journal, db, "--site", str(build_site(tmp_path)), "--to", "az://central/")
    assert out.returncode in (0, 1), out.stderr
    labels = [row[0] for row in query(db, "SELECT label FROM versions ORDER BY label")]
    assert labels == ([V1] if step < "3" else [V1, V2])
    for label, state in zip(labels, ("v1", "v2")):
        assert files_as_of(db, label) == tree(state, schema="A")
    assert {(p, v, m) for p, v, m in query(
        db, "SELECT f.srcfile, u.version, u.md5 FROM uploads u JOIN source_files f USING (file_id)")} == journal_marks(journal)


def test_the_run_after_an_import_hashes_nothing_and_adds_no_version(tmp_path):
    site = build_site(tmp_path)
    db = tmp_path / "m.sqlite"
    assert import_journal(JOURNALS["A"], db, "--site", str(site), "--to", "az://central/").returncode == 1
    # mtimes upstream kept in microseconds: a file whose clock has nanoseconds below them is the same file
    touched = site / "OMOP" / "visit_occurrence.csv"
    ns = touched.stat().st_mtime_ns
    os.utime(touched, ns=(ns + 789, ns + 789))
    out = main_here("run", "--site", str(site), "--db", str(db), "--json", "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    summary = json.loads(out.stdout)
    assert summary["version"] is None and summary["counts"]["unchanged"] == 41
    assert summary["md5_sources"]["computed"] == 0  # no MD5 computed: every one is upstream's
    assert summary["files_hashed"] == summary["verification"]["files_reverified"]  # only the rolling re-verification
    assert [row[0] for row in query(db, "SELECT label FROM versions ORDER BY label")] == [V1, V2]
    # the in-place refresh keeps the file's own nanoseconds from now on
    assert query(db, "SELECT mtime_ns FROM source_files WHERE srcfile = 'OMOP/visit_occurrence.csv' AND "
                     "time_invalid IS NULL") == [(ns + 789,)]


def test_journal_b_the_next_run_adds_only_the_metadata_the_old_release_did_not_track(tmp_path):
    site = build_site(tmp_path)
    aside = tmp_path / "metadata"
    shutil.move(site / "Metadata", aside)  # the tree as journal B's release saw it: no Metadata modality
    db = tmp_path / "m.sqlite"
    assert import_journal(JOURNALS["B"], db, "--site", str(site), "--to", "az://central/").returncode == 1

    def run() -> dict:
        out = main_here("run", "--site", str(site), "--db", str(db), "--json", "--no-validate", "--verify-sample", "0")
        assert out.returncode in (0, 1), out.stderr
        return json.loads(out.stdout)

    same = run()
    assert same["version"] is None and same["files_hashed"] == 0 and same["counts"]["unchanged"] == 39
    shutil.move(aside, site / "Metadata")
    summary = run()
    metadata = sorted(p for p in make_site().state_v2() if p.startswith("Metadata/"))
    assert summary["counts"]["added"] == len(metadata) and summary["counts"]["replaced"] == 0
    assert summary["files_hashed"] == len(metadata)
    added = [p for (p,) in query(db, "SELECT srcfile FROM changes WHERE version = ?", (summary["version"],))]
    assert sorted(added) == metadata


def test_site_check_says_what_the_next_run_will_commit(tmp_path):
    site = build_site(tmp_path)
    (site / "OMOP" / "specimen.csv").write_text("specimen_id\n1\n")
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS["A"], db, "--site", str(site), "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert [v["label"] for v in result["versions"]] == [V1, V2]
    assert result["upload_marks"] == 26
    check = result["site_check"]
    assert check["counts"]["added"] == 1 and check["counts"]["unchanged"] == 41
    assert [c["srcfile"] for c in check["changes"]] == ["OMOP/specimen.csv"]


@pytest.mark.parametrize("kept", ["nothing", "OMOP"])
def test_site_check_says_when_the_next_run_would_be_refused(kept, tmp_path):
    # A --site that is not the tree upstream scanned (a mount not mounted, another copy, a folder moved away): the check
    # listed every recorded file as "removed", and neither the text nor the exit code said that the next run would be
    # refused (--max-delete, exit 5), nor why; only --json's site_check.refused did.
    site = tmp_path / "site"
    site.mkdir()
    if kept == "OMOP":
        shutil.copytree(build_site(tmp_path) / "OMOP", site / "OMOP")
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS["A"], db, "--site", str(site), "--to", "az://central/")
    assert out.returncode == 1, out.stderr
    status = main_here("status", "--db", str(db), "--site", str(site))
    assert status.returncode == 5
    refusal = status.stderr.split("chorus-batch: error: ", 1)[1].strip()
    assert "refused" in refusal and "--max-delete" in refusal
    assert f"the next run would be refused (exit code 5): {refusal}" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert json.loads(import_journal(JOURNALS["A"], tmp_path / "n.sqlite", "--site", str(site), "--to", "az://central/",
                                     "--json").stdout)["site_check"]["refused"]["error"] in refusal



def test_site_check_reads_max_delete_from_the_chorus_toml_as_the_next_run_will(tmp_path):
    """The check against --site is what the next run will commit: under chorus.toml's [run] max_delete, which it
    passed over (a person's 9 files gone, with max_delete = 5: "would change", not "would be refused")."""
    site = build_site(tmp_path)
    shutil.rmtree(site / "000123")
    (tmp_path / "chorus.toml").write_text('[run]\nmax_delete = 5\n[central]\nto = "az://mgh/"\n', encoding="utf-8")
    out = cli("import-journal", str(JOURNALS["A"]), "--db", "m.sqlite", "--site", str(site), cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert ("the next run would be refused (exit code 5): refused: the run would remove 9 of the previous version's 41 "
            "files (22.0%), more than --max-delete / max_delete 5 allows") in out.stdout, out.stdout


def test_site_check_does_not_blame_a_no_validate_nobody_gave(tmp_path):
    # The check ends as `status` does; it said "validation: not checked (--no-validate)" of a command line without it.
    site = build_site(tmp_path)
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS["A"], db, "--site", str(site), "--to", "az://central/")
    assert out.returncode == 1, out.stderr
    assert "--no-validate" not in out.stdout
    assert f"validation: not part of this check (`chorus-batch validate --db {db} --site {site}`" in out.stdout


# ----------------------------------------------------------------------------- upload and verify


@pytest.mark.parametrize("schema", ["A", "B"])
def test_upload_after_the_import_sends_only_what_upstream_had_not_and_verify_checks_the_marks(schema, central, azurite,
                                                                                              tmp_path):
    site = build_site(tmp_path)
    if schema == "B":  # its release tracked no Metadata/
        shutil.rmtree(site / "Metadata")
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS[schema], db, "--site", str(site), "--to", central.url, env=central.env)
    assert out.returncode == 1, out.stderr
    marked = journal_marks(JOURNALS[schema])
    # What upstream sent is at the centre, as chorus-upload put it: <version>/<path>, no Content-MD5 of ours.
    by_md5 = {hashlib.md5(data).hexdigest(): data
              for state in (make_site().state_v1(), make_site().state_v2()) for data, _ in state.values()}
    for path, version, md5 in marked:
        central.client.upload_blob(f"{version}/{path}", by_md5[md5], overwrite=True)
    # Put Blob gives a blob the service's Content-MD5; the ones chorus-upload sent in blocks have none
    in_blocks = sorted(f"{v}/{p}" for p, v, _ in marked if p.endswith(".dat"))
    assert in_blocks
    for name in in_blocks:
        set_content_md5(azurite.service_client(), central.container, name, None)

    versions = main_here("versions", "--db", str(db), "--json")
    assert "imported from chorus-upload and not verified" in versions.stdout

    up = cli("upload", "--db", str(db), "--to", central.url, "--workers", "2", "--json", env=central.env)
    # it sends, then verifies each version: the blobs without a Content-MD5 are what the listing cannot vouch for
    assert up.returncode == 1, up.stderr
    assert up.stdout.count("only `chorus-batch verify --download` can check its bytes") == len(in_blocks)
    sent = {(row[0], row[1]) for row in query(
        db, "SELECT version, f.srcfile FROM uploads u JOIN source_files f USING (file_id) WHERE u.state = 'uploaded'")}
    submitted = {(v, p) for v, p in query(
        db, "SELECT c.version, c.srcfile FROM changes c WHERE c.change IN ('added', 'replaced', 'renamed')")}
    # all but what upstream had sent, and a file removed before anyone sent it (its bytes are gone)
    gone = (V1, "Metadata/legacy_notes.txt") if schema == "A" else (None, None)
    assert sent == submitted - {(v, p) for p, v, _ in marked} - {gone}
    if schema == "A":
        assert query(db, "SELECT u.state FROM uploads u JOIN source_files f USING (file_id) WHERE f.srcfile = ?",
                     (gone[1],)) == [("superseded",)]
    assert ("20250201000000", "550001/Images/XR_20240120/view_1/IMG0001_PA.dcm") in sent  # upstream never sent it
    on_central = set(blobs(central))
    assert {f"{v}/{p}" for v, p in submitted - {gone}} <= on_central

    # The listing cannot vouch for blobs chorus-upload sent without a Content-MD5 ...
    listing = cli("verify", "--db", str(db), "--to", central.url, "--all", "--json", env=central.env)
    assert listing.returncode == 1, listing.stderr
    problems = json.loads(listing.stdout)["problems"]
    assert sorted(f"{p['version']}/{p['srcfile']}" for p in problems) == in_blocks
    assert {p["verify_state"] for p in problems} == {"no_md5"}
    assert all("verify --download" in p["message"] for p in problems)
    # ... their bytes can: read back, every imported mark checks out
    download = cli("verify", "--db", str(db), "--to", central.url, "--all", "--download", "--json", env=central.env)
    assert download.returncode == 0, download.stdout + download.stderr
    assert query(db, "SELECT DISTINCT verify_state FROM uploads WHERE state != 'superseded'") == [("ok",)]
    assert "not verified" not in main_here("versions", "--db", str(db), "--json").stdout


# chorus-upload's `file upload` sends the current rows, then marks with its clock time also the rows replaced or removed
# before it ran, which it never sent (their bytes were gone). Those marks were imported as uploads: the ledger said
# Metadata/legacy_notes.txt (removed in V2, never sent) was at the centre, and `verify --all` said it missing, for good.
# (journal B: its release wrote them in `file upload` itself; A: a release whose code ran, as it is at HEAD).
# Each: the schema, the edit that makes one ended row unmarked before the upload, that row (its path, FILE_ID).
UNSENT = {"A": ("", "Metadata/legacy_notes.txt", 38),  # (removed in V2, never marked: as the fixture is)
          "B": ("UPDATE journal SET UPLOAD_DTSTR = NULL WHERE FILE_ID = 19;",
                "550001/Images/XR_20240120/view_1/IMG0001.dcm", 19)}  # (renamed away in V2, its mark taken off)


@pytest.mark.parametrize("schema", ["A", "B"])
def test_marks_chorus_upload_sets_on_rows_that_had_ended_are_no_uploads(schema, central, tmp_path):
    sent_at = "20261201143900"  # after the V2 update (2026-12-01 14:38:39 UTC; B: :48): the time of `file upload`
    unmark, gone, file_id = UNSENT[schema]
    journal = edited_journal(tmp_path, schema, unmark + (f"""
        INSERT INTO uploads (UPLOAD_DT) VALUES ('{sent_at}');
        UPDATE journal_v2 SET UPLOAD_DT_ID = (SELECT id FROM uploads WHERE UPLOAD_DT = '{sent_at}')
            WHERE UPLOAD_DT_ID IS NULL;""" if schema == "A" else
        f"UPDATE journal SET UPLOAD_DTSTR = '{sent_at}' WHERE UPLOAD_DTSTR IS NULL;"))
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", central.url, "--json", env=central.env)
    assert out.returncode == 1, out.stderr  # (the fixture's Images paths fit none of today's layouts)
    ledger = {(p, v) for p, v in query(db, "SELECT f.srcfile, u.version FROM uploads u JOIN source_files f USING (file_id)")}
    assert (gone, V1) not in ledger
    assert ("000123/Waveforms/20240315/000123_20240315_101500.hea", V2) in ledger  # added in V2, sent: a real mark
    assert len(ledger) == len(journal_marks(journal)) - 1
    notes = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.unsent-mark"]
    assert [(f["severity"], f["srcfile"]) for f in notes] == [("info", gone)]
    assert sent_at in notes[0]["message"] and f"FILE_ID {file_id}" in notes[0]["message"]

    # The centre holds what upstream sent; `verify` finds every recorded mark there and nothing missing.
    by_md5 = {hashlib.md5(data).hexdigest(): data
              for state in (make_site().state_v1(), make_site().state_v2()) for data, _ in state.values()}
    for path, version, md5 in query(db, "SELECT f.srcfile, u.version, u.md5 FROM uploads u JOIN source_files f USING (file_id)"):
        central.client.upload_blob(f"{version}/{path}", by_md5[md5], overwrite=True)
    verify = cli("verify", "--db", str(db), "--to", central.url, "--all", "--json", env=central.env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "legacy_notes" not in verify.stdout


# ----------------------------------------------------------------------------- what cannot be mapped


def damaged_journal(tmp_path: Path) -> Path:
    """The journal after its first update and upload marks (one version), with three rows spoilt."""
    journal = tmp_path / "damaged.db"
    shutil.copy(FIXTURES / "steps" / "A_2_mark_u1.db", journal)
    con = sqlite3.connect(journal)
    with con:
        # invalid before valid
        con.execute("UPDATE journal_v2 SET TIME_INVALID_us = TIME_VALID_us - 5 WHERE FILE_ID = 2")
        # a second active row for one path (a later content of OMOP/drug_exposure.csv, never ended)
        con.execute("INSERT INTO journal_v2 (PERSON_ID, SRC_PATH_ID, FILENAME, MODALITY_ID, SRC_MODTIME_us, SIZE, MD5, "
                    "TIME_VALID_us, TIME_INVALID_us, UPLOAD_DT_ID, VERSION_ID) SELECT PERSON_ID, SRC_PATH_ID, FILENAME, "
                    "MODALITY_ID, SRC_MODTIME_us + 1000000, SIZE + 1, '0123456789abcdef0123456789abcdef', "
                    "(SELECT max(TIME_VALID_us) FROM journal_v2), NULL, NULL, VERSION_ID FROM journal_v2 "
                    "WHERE FILE_ID = 5")
        # a path no pattern fits
        scratch = con.execute("INSERT INTO srcpaths (SRC_PATH) VALUES ('scratch/old export')").lastrowid
        con.execute("UPDATE journal_v2 SET FILENAME = 'stray notes.txt', SRC_PATH_ID = ? WHERE FILE_ID = 1", (scratch,))
    con.close()
    return journal


def test_impossible_rows_are_imported_as_findings_that_name_them(tmp_path):
    db = tmp_path / "m.sqlite"
    out = import_journal(damaged_journal(tmp_path), db, "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr
    findings = json.loads(out.stdout)["findings"]
    by_rule = {}
    for f in findings:
        by_rule.setdefault(f["rule"], []).append(f)
    impossible = by_rule["import.impossible-interval"]
    assert [f["srcfile"] for f in impossible] == ["OMOP/procedure_occurrence.csv"]
    assert "FILE_ID 2" in impossible[0]["message"] and "invalid before" in impossible[0]["message"]
    overlapping = by_rule["import.overlapping-rows"]
    assert [f["srcfile"] for f in overlapping] == ["OMOP/drug_exposure.csv"]
    assert "two active rows" in overlapping[0]["message"] and "FILE_ID 5" in overlapping[0]["message"]
    assert any(f["srcfile"] == "scratch/old export/stray notes.txt" for f in by_rule["import.unparseable-path"])
    # recorded as findings of the first version, where `validate` and the report show them
    first = query(db, "SELECT rule, srcfile FROM findings WHERE version = ?", (V1,))
    assert ("import.impossible-interval", "OMOP/procedure_occurrence.csv") in first
    assert ("import.overlapping-rows", "OMOP/drug_exposure.csv") in first
    # the later row wins: it is the current one
    assert query(db, "SELECT md5 FROM source_files WHERE srcfile = 'OMOP/drug_exposure.csv' AND time_invalid IS NULL") == [
        ("0123456789abcdef0123456789abcdef",)]
    # the findings stay when the first version is validated (they are the import's, not the check's)
    site = build_site(tmp_path, "v1")
    assert main_here("validate", "--db", str(db), "--site", str(site)).returncode == 1
    checked = query(db, "SELECT rule, srcfile FROM findings WHERE version = ?", (V1,))
    assert ("import.impossible-interval", "OMOP/procedure_occurrence.csv") in checked
    # the journal's later drug_exposure row has an MD5 the file on disk does not have: its read is not
    # taken for that content, and the version is not marked checked (the next check reads it again)
    assert ("file.unread", "OMOP/drug_exposure.csv") in checked
    assert query(db, "SELECT count(*) FROM validations WHERE version = ?", (V1,)) == [(0,)]


# Two rows of one path from the same instant (a journal update run twice at once, a copy merged in): the earlier
# is taken as ended as it began, and its upload mark went with it, unsaid: `upload` would send the file again. The
# mark of an identical twin is the twin's; one of another content is said as a mark no file version has.
@pytest.mark.parametrize("twin_md5, recorded", [(None, True), ("0123456789abcdef0123456789abcdef", False)])
def test_the_mark_of_a_row_its_twin_replaces_at_once_is_not_lost(twin_md5, recorded, tmp_path):
    md5 = f"'{twin_md5}'" if twin_md5 else "MD5"
    journal = edited_journal(tmp_path, "A", (
        "INSERT INTO journal_v2 (PERSON_ID, SRC_PATH_ID, FILENAME, MODALITY_ID, SRC_MODTIME_us, SIZE, MD5, "
        "TIME_VALID_us, TIME_INVALID_us, UPLOAD_DT_ID, VERSION_ID) SELECT PERSON_ID, SRC_PATH_ID, FILENAME, MODALITY_ID, "
        f"SRC_MODTIME_us, SIZE, {md5}, TIME_VALID_us, TIME_INVALID_us, NULL, VERSION_ID FROM journal_v2 "
        "WHERE FILENAME = 'drug_exposure.csv'"))
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr
    findings = json.loads(out.stdout)["findings"]
    assert [f["srcfile"] for f in findings if f["rule"] == "import.overlapping-rows"] == ["OMOP/drug_exposure.csv"]
    ledger = query(db, "SELECT u.version FROM uploads u JOIN source_files f USING (file_id) "
                       "WHERE f.srcfile = 'OMOP/drug_exposure.csv'")
    unmapped = [f for f in findings if f["rule"] == "import.unmapped-mark" and f["srcfile"] == "OMOP/drug_exposure.csv"]
    if recorded:
        assert ledger == [(V1,)] and not unmapped
    else:
        assert ledger == [] and len(unmapped) == 1 and "matches no file version" in unmapped[0]["message"]


@pytest.mark.parametrize("content, words", [
    (b"this is not a database, just text\n" * 20, "not an SQLite database"),
    (None, "no journal_v2 or journal table"),
    ("manifest", "chorus-batch manifest already"),
])
def test_a_file_that_is_not_a_journal_is_refused_clearly(content, words, tmp_path):
    bad = tmp_path / "bad.db"
    if content is None:
        con = sqlite3.connect(bad)
        con.execute("CREATE TABLE something (x)")
        con.close()
    elif content == "manifest":
        site = build_site(tmp_path)
        assert main_here("run", "--site", str(site), "--db", str(bad), "--no-validate").returncode in (0, 1)
    else:
        bad.write_bytes(content)
    db = tmp_path / "m.sqlite"
    out = import_journal(bad, db)
    assert out.returncode == 2, out.stderr
    assert "is not a chorus-upload journal" in out.stderr and words in out.stderr
    assert "fix:" in out.stderr and "Traceback" not in out.stderr
    # (the journal named where: a list of its tables stood in for its name)
    assert f"{bad} is not a chorus-upload journal" in out.stderr and f"where: {bad}" in out.stderr, out.stderr
    assert "no manifest was written" not in out.stderr or not db.exists()
    assert not db.exists() and not list(tmp_path.glob(".m.sqlite*"))


# A journal whose column another tool renamed was refused with SQLite's "no such column: j.FILENAME", of a query the
# user never saw: the table, the missing column and the columns it has are named, for every table the import reads.
@pytest.mark.parametrize("schema, table, column", [
    ("A", "journal_v2", "FILENAME"), ("A", "uploads", "UPLOAD_DT"), ("A", "command_history_v2", "DATETIME"),
    ("B", "journal", "UPLOAD_DTSTR"), ("B", "command_history", "SRC_PATHS")])
def test_a_journal_table_without_a_column_names_the_table_and_its_columns(schema, table, column, tmp_path):
    journal = edited_journal(tmp_path, schema, f"ALTER TABLE {table} RENAME COLUMN {column} TO renamed_{column}")
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"its {table} table has no {column} column" in out.stderr, out.stderr
    assert f"renamed_{column}" in out.stderr and "no such column" not in out.stderr
    assert f"ALTER TABLE {table} RENAME COLUMN <its name> TO {column}" in out.stderr
    assert not db.exists()


# A path written with a '//' or a '/./' inside (a tool that joined 'OMOP/' and '/x') was refused as "not a
# site-relative path (it would lead outside the site)": the file, its history and its upload mark were lost, and the
# next run hashed it again. It is the same path, as a leading './' is; only a '..' part (or '/' first) is refused.
@pytest.mark.parametrize("written", ["OMOP//person.csv", "OMOP/./person.csv", "./OMOP//./person.csv"])
def test_a_path_written_with_a_double_slash_or_a_dot_part_is_that_path(written, tmp_path):
    journal = edited_journal(tmp_path, "B", f"UPDATE journal SET FILEPATH = '{written}' WHERE FILEPATH = 'OMOP/person.csv'")
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr  # (the fixture's Images paths fit none of today's layouts)
    findings = json.loads(out.stdout)["findings"]
    assert not [f for f in findings if f["rule"] == "import.unusable-row"], findings
    assert files_as_of(db, V1) == tree("v1", schema="B") and files_as_of(db, V2) == tree("v2", schema="B")
    assert {(p, v, m) for p, v, m in query(
        db, "SELECT f.srcfile, u.version, u.md5 FROM uploads u JOIN source_files f USING (file_id)")} == journal_marks(
        JOURNALS["B"])
    (tmp_path / "dotdot").mkdir()
    dotdot = edited_journal(tmp_path / "dotdot", "B", "UPDATE journal SET FILEPATH = 'OMOP/x/../person.csv' "
                                                      "WHERE FILEPATH = 'OMOP/person.csv'")
    out = import_journal(dotdot, tmp_path / "dotdot.sqlite", "--to", "az://central/", "--json")
    said = [f["message"] for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.unusable-row"]
    assert said and all("has a '..' or a final '.' part" in m and "outside the site" not in m for m in said), said


# A journal from a Windows site (two CHoRUS sites run chorus-upload there): its paths joined with '\\' were kept as names
# holding a backslash, so every upload mark of them was lost (a finding each), and the first run saw each file as
# renamed: `upload` sent again what chorus-upload had sent. There a '\\' is a folder separator, as `run` lists it.
@pytest.mark.parametrize("schema", ["A", "B"])
def test_a_windows_sites_journal_with_backslash_paths_is_its_site_and_keeps_its_marks(schema, tmp_path):
    roots = """'{"OMOP": "D:\\\\chorus\\\\site", "Images": "D:\\\\chorus\\\\site", "Waveforms": "D:\\\\chorus\\\\site"}'"""
    if schema == "A":
        sql = (r"UPDATE srcpaths SET SRC_PATH = replace(SRC_PATH, '/', '\'); "
               f"UPDATE command_history_v2 SET SRC_PATHS = {roots} WHERE COMMAND = 'journal update';")
    else:
        sql = (r"UPDATE journal SET FILEPATH = replace(FILEPATH, '/', '\'); "
               f"UPDATE command_history SET SRC_PATHS = {roots} WHERE COMMAND = 'journal update';")
    journal = edited_journal(tmp_path, schema, sql)
    assert any("\\" in path for path, _, _ in journal_marks(journal))
    site = build_site(tmp_path)
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--site", str(site), "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr  # (the fixture's Images paths fit none of today's layouts)
    findings = json.loads(out.stdout)["findings"]
    assert not [f for f in findings if f["rule"] in ("import.unmapped-mark", "import.unusable-row")], findings
    assert files_as_of(db, V1) == tree("v1", schema=schema) and files_as_of(db, V2) == tree("v2", schema=schema)
    assert {(p, v, m) for p, v, m in query(
        db, "SELECT f.srcfile, u.version, u.md5 FROM uploads u JOIN source_files f USING (file_id)")} == journal_marks(
        JOURNALS[schema])
    out = main_here("run", "--site", str(site), "--db", str(db), "--json", "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    counts = json.loads(out.stdout)["counts"]
    assert counts["renamed"] == 0 and counts["unchanged"] == len(tree("v2", schema=schema)), counts


# A Windows site's folder spelled two ways in one update's SRC_PATHS (a drive letter in either case, '/' or '\\'): it
# was the site's root and, beside it, an Images root naming the same folder.
def test_a_windows_site_folder_spelled_two_ways_is_one_root(tmp_path):
    roots = """'{"OMOP": "d:/Chorus\\\\Site", "Images": "D:\\\\Chorus\\\\Site\\\\", "Waveforms": "D:\\\\Chorus\\\\Site"}'"""
    journal = edited_journal(tmp_path, "A", r"UPDATE srcpaths SET SRC_PATH = replace(SRC_PATH, '/', '\') WHERE id % 2 = 0; "
                                            f"UPDATE command_history_v2 SET SRC_PATHS = {roots} WHERE COMMAND = 'journal update';")
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 1, out.stderr
    (location, modality), = query(db, "SELECT location, modality FROM roots")
    assert location.casefold() == "d:/chorus/site" and modality is None
    assert files_as_of(db, V2) == tree("v2", schema="A")


# A row's path from a drive letter (C:\data\site\OMOP\person.csv) was imported as a file of that name under the root.
def test_a_row_path_with_a_drive_letter_is_no_site_path_and_is_said_so(tmp_path):
    journal = edited_journal(tmp_path, "B", r"UPDATE journal SET FILEPATH = 'C:\data\site\' || FILEPATH "
                                            "WHERE FILEPATH = 'OMOP/person.csv'")
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr
    said = [f["message"] for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.unusable-row"]
    assert said and all("is a Windows path from a drive letter or a network share" in m for m in said), said
    assert not [p for p in files_as_of(db, V2) if "person.csv" in p]


def test_an_existing_manifest_is_never_written_over(tmp_path):
    db = tmp_path / "m.sqlite"
    db.write_bytes(b"precious")
    out = import_journal(JOURNALS["A"], db, "--to", "az://central/")
    assert out.returncode == 2 and "never writes over" in out.stderr
    assert db.read_bytes() == b"precious"


def test_a_manifest_a_killed_first_run_left_without_a_version_is_imported_into(tmp_path):
    # (it was refused with "never writes over one; move the existing manifest away", though it held nothing)
    db, site = tmp_path / "m.sqlite", build_site(tmp_path)
    proc = paused("run", "--site", str(site), "--db", str(db), "-q", at="commit", env={"CHORUS_BATCH_CHECKPOINT_S": "0"})
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert db.exists() and query(db, "SELECT count(*) FROM versions") == [(0,)]
    # The killed run's hash checkpoint folder and the room it took for its outcome stayed beside the manifest the
    # import put in its place (the site's paths, of a manifest that is gone); the outcome it noted there (a disk too
    # full for `runs`) was read by no one, and its carried `runs` row said "killed" (137).
    ((killed, pid),) = query(db, "SELECT run_id, pid FROM runs")
    outcome, checkpoint = Path(f"{db}.run-outcome"), Path(f"{db}.checkpoint")
    assert checkpoint.is_dir() and outcome.is_file()
    outcome.write_text(json.dumps({"run": killed, "pid": pid, "finished_at": "2026-01-01T00:00:00Z", "exit_code": 3,
                                   "version": None, "message": "the disk is full"}).ljust(4096))
    out = import_journal(JOURNALS["A"], db, "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr  # (journal A's own warnings)
    assert not checkpoint.exists() and not outcome.exists()
    assert query(db, "SELECT exit_code, message LIKE 'the disk is full; recorded by the next run%' FROM runs "
                     "WHERE run_id = ?", (killed,)) == [(3, 1)]
    assert not list(tmp_path.glob(".m.sqlite.importing-*"))
    notes = [f["message"] for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.replaced-empty-manifest"]
    assert notes and "held no version" in notes[0], out.stdout
    assert [label for (label,) in query(db, "SELECT label FROM versions ORDER BY label")] == [V1, V2]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert files_as_of(db, V2) == tree("v2", schema="A")
    # a manifest with a version is history: still never written over
    again = import_journal(JOURNALS["A"], db, "--to", "az://central/")
    assert again.returncode == 2 and "never writes over" in again.stderr


def test_the_runs_a_replaced_manifest_recorded_are_kept_in_the_import(tmp_path):
    # (the killed run's `runs` row and its run_errors went with the file the import replaced: recorded, then lost)
    db, site = tmp_path / "m.sqlite", build_site(tmp_path)
    proc = paused("run", "--site", str(site), "--db", str(db), "-q", at="commit")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # what a run records of a file it could not read
        (killed,) = con.execute("SELECT run_id FROM runs").fetchone()
        con.execute("INSERT INTO run_errors VALUES (?, 'OMOP/person.csv', 'unreadable', 'permission denied')",
                    (killed,))
    before = query(db, "SELECT run_id, started_at, pid, argv, mode, site FROM runs")
    assert len(before) == 1
    out = import_journal(JOURNALS["A"], db, "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr
    runs = query(db, "SELECT run_id, started_at, pid, argv, mode, site FROM runs ORDER BY run_id")
    assert runs[0] == before[0] and len(runs) == 2, runs
    # the killed run is said as such (as the next run says it), the import is the run after it and made the versions
    assert query(db, "SELECT exit_code, message LIKE 'killed:%' FROM runs WHERE run_id = ?", (killed,)) == [(137, 1)]
    (imported,) = [run_id for run_id, *_ in runs if run_id != killed]
    assert imported > killed
    assert query(db, "SELECT DISTINCT run_id FROM versions") == [(imported,)]
    assert query(db, "SELECT mode, exit_code FROM runs WHERE run_id = ?", (imported,)) == [("import", 1)]
    assert query(db, "SELECT run_id, srcfile, kind, message FROM run_errors") == [
        (killed, "OMOP/person.csv", "unreadable", "permission denied")]
    notes = [f["message"] for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.replaced-empty-manifest"]
    assert notes and "kept" in notes[0], notes



def test_a_db_that_is_a_folder_is_said_to_be_a_folder(tmp_path):
    folder = tmp_path / "manifests"
    folder.mkdir()
    out = import_journal(JOURNALS["A"], folder, "--to", "az://central/")
    assert out.returncode == 2, out.stderr
    assert "names a folder, not a manifest file" in out.stderr and "manifests/chorus_manifest.sqlite" in out.stderr
    assert "move the existing manifest" not in out.stderr and list(folder.iterdir()) == []


def test_the_db_and_the_central_container_come_from_the_chorus_toml_here(tmp_path):
    """As README says (and `import-config --out chorus.toml` may come first): with no --db and no --to, ./chorus.toml's
    [manifest] db and [central] to are used, without --config; with no [central] to, the fix said "set [central] to
    in chorus.toml and pass --config", as if the ./chorus.toml were not read."""
    (tmp_path / "chorus.toml").write_text('[manifest]\ndb = "from_config.sqlite"\n', encoding="utf-8")
    asked = cli("import-journal", str(JOURNALS["A"]), cwd=tmp_path)
    assert asked.returncode == 2 and "pass --to az://" in asked.stderr, asked.stderr
    assert "pass --config" not in asked.stderr and "./chorus.toml" in asked.stderr, asked.stderr
    (tmp_path / "chorus.toml").write_text('[manifest]\ndb = "from_config.sqlite"\n[central]\nto = "az://mgh/"\n',
                                          encoding="utf-8")
    out = cli("import-journal", str(JOURNALS["A"]), cwd=tmp_path)
    assert out.returncode == 1 and "for az://mgh as imported" in out.stdout, out.stderr
    assert query(tmp_path / "from_config.sqlite", "SELECT DISTINCT central FROM uploads") == [("az://mgh",)]

@pytest.mark.skipif(os.name == "nt", reason="a Windows path is a path there")
@pytest.mark.parametrize("root", ["D:\\\\CHoRUS\\\\site", "\\\\\\\\fileserver\\\\share\\\\site", "D:/CHoRUS/site"])
def test_a_windows_site_root_in_the_chorus_toml_here_is_said_to_be_one(root, tmp_path):
    """A chorus.toml from the site's Windows machine (import-config keeps its site path, for that machine): the
    import's check against [site] root said "<here>/D:\\CHoRUS\\site does not exist (a typo, or a disk that is not
    mounted?)"; it says the root is a Windows path on a machine that is not Windows. Nothing is written."""
    (tmp_path / "chorus.toml").write_text(f'[site]\nroot = "{root}"\n[central]\nto = "az://mgh/"\n', encoding="utf-8")
    out = cli("import-journal", str(JOURNALS["A"]), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "a Windows path (a drive or a network share), and this machine is not Windows" in out.stderr, out.stderr
    assert "a typo" not in out.stderr and not (tmp_path / "chorus_manifest.sqlite").exists()


def test_a_journal_none_of_whose_rows_can_be_imported_says_why(tmp_path):
    """Every row refused (absolute paths, as a journal edited by hand or written elsewhere holds them): it said "no
    upstream version holds any file ... there is no history to import", of a journal of 44 rows, and the reasons,
    findings of a manifest that is not written, were lost. It says how many rows were refused, and one reason."""
    journal = edited_journal(tmp_path, "B", "UPDATE journal SET FILEPATH = '/data/site/' || FILEPATH")
    out = import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "no history to import" not in out.stderr, out.stderr
    assert "44 of the journal's 44 rows" in out.stderr and "is not a site-relative path" in out.stderr, out.stderr
    assert not (tmp_path / "m.sqlite").exists()


def test_a_site_upstream_scanned_by_a_relative_path_needs_site(tmp_path):
    """chorus-upload run with a relative site path records it relative to the folder it ran in, which the journal
    does not hold: the import recorded the root 'site' as it was, which later commands read from wherever they run
    (validate: every file unread). It asks for --site, before any work; with --site the root is that folder."""
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["B"], journal)
    con = sqlite3.connect(journal)
    with con:
        con.execute("""UPDATE command_history SET SRC_PATHS = '{"OMOP": "site", "Images": "site", "Waveforms": "site"}'
                       WHERE COMMAND = 'journal update'""")
    con.close()
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2 and "relative" in out.stderr and "--site" in out.stderr, out.stderr
    assert not db.exists()
    site = build_site(tmp_path)
    out = import_journal(journal, db, "--to", "az://central/", "--site", str(site))
    assert out.returncode == 1, out.stderr
    assert query(db, "SELECT location FROM roots") == [(site.as_posix(),)]


def test_a_db_under_a_file_is_said_to_be_under_a_file(tmp_path):
    """--db in a "folder" that is a file: it was said not to exist, with "create it" (which mkdir refuses)."""
    (tmp_path / "notes.txt").write_text("mine\n", encoding="utf-8")
    out = import_journal(JOURNALS["A"], tmp_path / "notes.txt" / "m.sqlite", "--to", "az://central/")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "notes.txt is a file, not a folder" in out.stderr and "does not exist" not in out.stderr
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine\n"


def test_a_db_inside_the_site_is_refused_before_anything_is_written(tmp_path):
    """--db inside --site: the import built the manifest there (and its lock), and only its check of the site said
    that the manifest would lie inside the site's root, leaving it there for every run to list, exit 2 all the same."""
    site = build_site(tmp_path)
    before = sorted(p.relative_to(site) for p in site.rglob("*"))
    out = import_journal(JOURNALS["A"], site / "chorus_manifest.sqlite", "--site", str(site), "--to", "az://central/")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "the manifest would lie inside the site's root" in out.stderr
    assert "was written" not in out.stderr and "importing version" not in out.stderr
    assert sorted(p.relative_to(site) for p in site.rglob("*")) == before


def test_upload_marks_need_a_central_container_chorus_batch_can_name(tmp_path):
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS["A"], db)  # upstream sent to /data/central, a local folder
    assert out.returncode == 2
    assert "26 upload marks" in out.stderr and "--to az://" in out.stderr
    assert not db.exists()


def test_marks_for_an_abfs_url_with_its_account_are_the_ledger_upload_to_az_uses(tmp_path):
    # abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/ (how chorus-upload's DEST_PATH may name it) was recorded as the
    # central "az://CONTAINER@ACCOUNT...": `upload --to az://CONTAINER/` saw none of the marks and sent it all again.
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS["A"], db, "--to", "abfs://central@mysite.dfs.core.windows.net/")
    assert out.returncode in (0, 1), out.stderr
    assert query(db, "SELECT DISTINCT central FROM uploads") == [("az://central",)]
    assert query(db, "SELECT count(*) FROM uploads WHERE destination LIKE '%@%'") == [(0,)]


def test_a_dry_run_reports_and_leaves_nothing(tmp_path):
    site = build_site(tmp_path)
    db = tmp_path / "m.sqlite"
    out = import_journal(JOURNALS["B"], db, "--site", str(site), "--to", "az://central/", "--dry-run")
    assert out.returncode == 1, out.stderr
    assert "removed: --dry-run" in out.stdout and "20250201000000: 39 files" in out.stdout
    assert "what a run would commit" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site_v2"]


def test_a_dry_run_holds_the_lock_so_an_import_into_the_same_db_waits_its_turn(tmp_path):
    """A dry run builds its temporary manifest beside --db, as an import does; it took no lock, so an import into the
    same --db meanwhile removed that file as a killed import's leftover, under the dry run's feet."""
    db = tmp_path / "m.sqlite"
    dry = paused("import-journal", str(JOURNALS["A"]), "--db", str(db), "--to", "az://central/", "--dry-run",
                 at="commit")
    try:
        building = list(tmp_path.glob(".m.sqlite.importing-*"))
        assert building
        out = import_journal(JOURNALS["A"], db, "--to", "az://central/")
        assert out.returncode == 4, out.stderr
        assert "locked by another command" in out.stderr and "`chorus-batch import-journal`" in out.stderr, out.stderr
        assert all(path.exists() for path in building) and not db.exists()
    finally:
        dry.send_signal(signal.SIGTERM)
        dry.communicate(timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failure_once_the_manifest_has_its_name_says_it_was_written(tmp_path, monkeypatch):
    """Once the manifest was linked to its name, a failure (a full disk as SQLite goes back to WAL) said "no manifest
    was written" of a complete manifest."""
    from chorus_batch.errors import WriteError
    from chorus_batch.upstream import importer

    def full_disk(target):
        raise WriteError("database or disk is full", where=str(target), fix="free space")

    monkeypatch.setattr(importer, "_keep_wal", full_disk)
    db = tmp_path / "m.sqlite"
    with pytest.raises(WriteError) as raised:
        importer.import_journal(str(JOURNALS["A"]), str(db), central="az://central/")
    assert raised.value.outcome.startswith(f"the manifest was written to {db}, with the journal's ")
    assert query(db, "SELECT count(*) FROM versions")[0][0] >= 1


def test_the_journal_is_only_read(tmp_path):
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["A"], journal)
    before = journal.read_bytes()
    assert import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/").returncode == 1
    assert journal.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.db", "m.sqlite", "m.sqlite.lock"]  # (as a run leaves it)
    assert (os.stat(tmp_path / "m.sqlite").st_mode & 0o077) == 0


def test_labels_that_do_not_sort_in_the_order_of_the_updates_are_refused_clearly(tmp_path):
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["B"], journal)
    con = sqlite3.connect(journal)
    with con:  # the second update labelled so that it sorts first
        con.execute("UPDATE journal SET VERSION = '20241201000000' WHERE VERSION = ?", (V2,))
        con.execute("UPDATE command_history SET PARAMS = '--version 20241201000000' WHERE PARAMS = ?", (f"--version {V2}",))
    con.close()
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2, out.stderr
    assert "'20241201000000' was recorded after '20250101000000'" in out.stderr and "Traceback" not in out.stderr
    assert not db.exists()


def test_labels_that_differ_only_in_letter_case_are_refused_as_run_refuses_them(tmp_path):
    """`run --version v1` after a version V1 is refused (one folder on Windows and macOS: the Parquet snapshots, a
    reviewer's download of the central container); an import of a journal with versions Site-A and site-a made both."""
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["B"], journal)
    with contextlib.closing(sqlite3.connect(journal)) as con, con:
        for old, new in ((V1, "Site-A"), (V2, "site-a")):  # (they sort in the order of the updates: 'S' < 's')
            con.execute("UPDATE journal SET VERSION = ? WHERE VERSION = ?", (new, old))
            con.execute("UPDATE command_history SET PARAMS = ? WHERE PARAMS = ?", (f"--version {new}", f"--version {old}"))
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "upstream version 'site-a' differs from the label of version 'Site-A' only in letter case" in out.stderr
    assert "nothing was imported" in out.stderr and "fix:" in out.stderr, out.stderr
    assert not db.exists()


# ----------------------------------------------------------------------------- killed, signalled, in the cloud


@pytest.mark.parametrize("schema", ["A", "B"])
def test_a_label_with_a_space_is_read_whole_as_chorus_upload_wrote_it_unquoted(schema, tmp_path):
    """chorus-upload writes PARAMS without quoting (`--version release 20250101000000`): the import took the first word,
    made the two versions one version 'release' (41 files added by "2 update runs"), and lost every upload mark as
    matching no file version (exit 1). The label is the whole value, which chorus-batch cannot keep: refused, naming it."""
    table, history = ("versions", "command_history_v2") if schema == "A" else ("journal", "command_history")
    journal = edited_journal(tmp_path, schema, f"""
        UPDATE {table} SET VERSION = 'release ' || VERSION;
        UPDATE {history} SET PARAMS = replace(PARAMS, '--version ', '--version release ');""")
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert f"upstream version label 'release {V1}' is not a label chorus-batch can keep" in out.stderr, out.stderr
    assert not db.exists()


def _start(journal: Path, db: Path, *extra: str, pause: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "import-journal", str(journal), "--db", str(db),
                             *extra], env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": pause},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if f"test pause at {pause}" in line:
            return proc
    proc.wait(timeout=60)
    raise AssertionError(f"the import never reached {pause}: exit {proc.returncode}")


def test_a_killed_import_leaves_no_manifest_and_the_next_one_cleans_up(tmp_path):
    db = tmp_path / "m.sqlite"
    proc = _start(JOURNALS["A"], db, "--to", "az://central/", pause="commit")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not db.exists()
    assert list(tmp_path.glob(".m.sqlite.importing-*"))  # what the killed process was building
    out = import_journal(JOURNALS["A"], db, "--to", "az://central/")
    assert out.returncode == 1, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sqlite", "m.sqlite.lock"]
    assert [row[0] for row in query(db, "SELECT label FROM versions ORDER BY label")] == [V1, V2]


def test_a_terminated_import_says_nothing_was_written(tmp_path):
    db = tmp_path / "m.sqlite"
    proc = _start(JOURNALS["A"], db, "--to", "az://central/", pause="commit")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "no manifest was written" in err
    assert list(tmp_path.iterdir()) == []


def test_a_journal_in_azure_is_read_through_a_private_copy(central, tmp_path):
    central.client.upload_blob("chorus-upload/journal.db", JOURNALS["A"].read_bytes())
    db = tmp_path / "m.sqlite"
    url = f"az://{central.container}/chorus-upload/journal.db"
    out = import_journal(url, db, "--to", central.url, "--json", env=central.env)
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["journal"] == url
    assert files_as_of(db, V2) == tree("v2", schema="A")
    assert not list(Path(central.env["CHORUS_BATCH_CACHE_DIR"]).rglob("journal.db*"))  # the copy is gone
    missing = import_journal(url.replace("journal.db", "nothing.db"), tmp_path / "n.sqlite", env=central.env)
    assert missing.returncode == 2 and "no chorus-upload journal at" in missing.stderr
    # The journal's folder given: the blob under it is named, not a manifest's name and place (the fix said
    # "az://CONTAINER/path/manifest.sqlite; a manifest is kept outside the site's roots")
    folder = import_journal(url.rsplit("/", 1)[0], tmp_path / "f.sqlite", env=central.env)
    assert folder.returncode == 2 and "names a folder" in folder.stderr, folder.stderr
    assert "manifest" not in folder.stderr and url in folder.stderr


def test_a_journal_without_its_command_history_cuts_versions_at_their_labels(tmp_path):
    """A journal converted by chorus-upload's `journal upgrade`, or whose history was cleared, has rows older than
    its first recorded update: each version then starts at its label's first row (and the import says so)."""
    journal = edited_journal(tmp_path, "A", "DELETE FROM command_history_v2")
    db = tmp_path / "m.sqlite"
    no_site = import_journal(journal, db, "--to", "az://central/")
    assert no_site.returncode == 2 and "does not record where the site was scanned" in no_site.stderr
    out = import_journal(journal, db, "--to", "az://central/", "--json", "--site", str(build_site(tmp_path)))
    assert out.returncode == 1, out.stderr
    assert any(f["rule"] == "import.no-history" and f["severity"] == "info" for f in json.loads(out.stdout)["findings"])
    assert files_as_of(db, V1) == tree("v1", schema="A")
    assert files_as_of(db, V2) == tree("v2", schema="A")


def test_one_import_at_a_time_and_a_missing_site_before_any_work(tmp_path):
    db = tmp_path / "m.sqlite"
    proc = _start(JOURNALS["A"], db, "--to", "az://central/", pause="commit")
    try:
        second = import_journal(JOURNALS["A"], db, "--to", "az://central/")
        assert second.returncode == 4 and "locked by another command" in second.stderr and "import-journal" in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    missing = import_journal(JOURNALS["A"], db, "--to", "az://central/", "--site", str(tmp_path / "nowhere"))
    assert missing.returncode == 2, missing.stderr
    assert "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    assert not db.exists() and not list(tmp_path.glob(".m.sqlite*"))


# Each: a journal spoilt as a journal can be (SQLite keeps any value anywhere), the rule it must be reported under,
# words of its message. The import goes on with the rest: exit 1, never a failure or an internal error.
SPOILT = [
    ("B", "UPDATE journal SET TIME_INVALID_us = 9000000000000000000 WHERE STATE = 'DELETED'", "import.unusable-row",
     "TIME_INVALID_us 9000000000000000000 is not a possible time"),
    ("A", "UPDATE journal_v2 SET TIME_VALID_us = 253402300800000000 WHERE FILE_ID = 3", "import.unusable-row",
     "TIME_VALID_us 253402300800000000 is not a possible time"),
    ("B", "UPDATE journal SET SRC_MODTIME_us = 9000000000000000000 WHERE FILE_ID = 4", "import.unusable-row",
     "SRC_MODTIME_us 9000000000000000000 is not a possible time"),
    ("A", "UPDATE journal_v2 SET SIZE = -5 WHERE FILE_ID = 2", "import.unusable-row", "SIZE -5 is negative"),
    ("B", "UPDATE journal SET SIZE = 12.5 WHERE FILE_ID = 2", "import.unusable-row", "SIZE is 12.5"),
    ("B", "UPDATE journal SET SIZE = 'big' WHERE FILE_ID = 2", "import.unusable-row", "SIZE is 'big'"),
    ("A", "UPDATE journal_v2 SET MD5 = 'not-an-md5' WHERE FILE_ID = 2", "import.unusable-row", "MD5 not-an-md5 is not"),
    ("B", "UPDATE journal SET FILEPATH = '../../outside/secret.csv' WHERE FILE_ID = 2", "import.unusable-row",
     "not a site-relative path"),
    ("B", "UPDATE journal SET FILEPATH = '/etc/passwd' WHERE FILE_ID = 2", "import.unusable-row", "not a site-relative"),
    # An empty FILENAME was imported as the file 'OMOP/', with an upload mark for a blob named '<version>/OMOP/'.
    ("A", "UPDATE journal_v2 SET FILENAME = '' WHERE FILE_ID = 1", "import.unusable-row",
     "journal row FILE_ID 1: its path OMOP/ names no file (an empty file name); not imported"),
    ("B", "UPDATE journal SET FILEPATH = 'OMOP/' WHERE FILE_ID = 2", "import.unusable-row", "its path OMOP/ names no file"),
    ("A", "UPDATE journal_v2 SET SRC_PATH_ID = 999 WHERE FILE_ID = 1", "import.unusable-row",
     "SRC_PATH_ID 999 is not in srcpaths"),
    ("A", "UPDATE journal_v2 SET UPLOAD_DT_ID = 999 WHERE FILE_ID = 1", "import.broken-link",
     "UPLOAD_DT_ID 999 is not in uploads"),
    ("A", "UPDATE journal_v2 SET VERSION_ID = 999 WHERE FILE_ID = 1", "import.broken-link",
     "VERSION_ID 999 is not in versions"),
    ("B", "UPDATE journal SET VERSION = NULL WHERE FILE_ID = (SELECT min(FILE_ID) FROM journal WHERE UPLOAD_DTSTR "
          "IS NOT NULL)", "import.unmapped-mark", "on a row without a version label"),
    # A marked row whose name no blob can have (Azure rewrites or refuses it) was recorded as sent to that blob.
    ("A", "UPDATE journal_v2 SET FILENAME = 'notes.' WHERE FILE_ID = (SELECT min(FILE_ID) FROM journal_v2 WHERE "
          "UPLOAD_DT_ID IS NOT NULL)", "import.unmapped-mark", "names no blob the centre can hold: a part of its name "
                                                              "ends with '.'"),
    ("B", "UPDATE journal SET FILEPATH = 'OMOP/a' || char(92) || 'b.csv' WHERE FILE_ID = (SELECT min(FILE_ID) FROM "
          "journal WHERE UPLOAD_DTSTR IS NOT NULL)", "import.unmapped-mark", "its name holds a backslash"),
    ("B", "UPDATE journal SET FILEPATH = 'OMOP/a' || char(127) || '.csv' WHERE FILE_ID = (SELECT min(FILE_ID) FROM "
          "journal WHERE UPLOAD_DTSTR IS NOT NULL)", "import.unmapped-mark", "holds a control character"),
    # A line break or a tab in a name (which `run` records, with a scan error): the row was refused as "not a
    # site-relative path (it would lead outside the site)", and the next run hashed the file again; only its mark is.
    ("A", "UPDATE journal_v2 SET FILENAME = 'a' || char(10) || 'b.csv' WHERE FILE_ID = (SELECT min(FILE_ID) FROM "
          "journal_v2 WHERE UPLOAD_DT_ID IS NOT NULL)", "import.unmapped-mark", "holds a control character"),
    ("B", "UPDATE journal SET FILEPATH = 'OMOP/a' || char(9) || 'b.csv' WHERE FILE_ID = (SELECT min(FILE_ID) FROM "
          "journal WHERE UPLOAD_DTSTR IS NOT NULL)", "import.unmapped-mark", "holds a control character"),
    ("A", "UPDATE journal_v2 SET FILENAME = 'a' || char(0) || 'b.csv' WHERE FILE_ID = 1", "import.unusable-row",
     "holds a NUL character, which no file's name can; not imported"),
    ("A", "UPDATE journal_v2 SET FILENAME = replace(hex(zeroblob(550)), '0', 'x') || '.csv' WHERE FILE_ID = (SELECT "
          "min(FILE_ID) FROM journal_v2 WHERE UPLOAD_DT_ID IS NOT NULL)", "import.unmapped-mark",
     "its blob name is longer than 1024 characters"),
    ("B", "UPDATE journal SET TIME_VALID_us = 1 WHERE FILE_ID = 5", "import.impossible-interval",
     "before the first `journal update`"),
    # text that is not UTF-8 (SQLite keeps whatever bytes it is given): the row's finding, not the import's end
    ("A", "UPDATE journal_v2 SET FILENAME = CAST(X'66ff2e637376' AS TEXT) WHERE FILE_ID = 1", "import.unusable-row",
     "its path OMOP/f\\xff.csv is not UTF-8 text; not imported"),
    ("B", "UPDATE journal SET MD5 = CAST(X'ff' AS TEXT) WHERE FILE_ID = 2", "import.unusable-row",
     "its MD5 \\xff is not UTF-8 text"),
    ("A", "UPDATE journal_v2 SET MD5 = '' WHERE FILE_ID = 2", "import.unusable-row",
     "journal row FILE_ID 2: its MD5 is empty (no MD5 was recorded); not imported"),
    ("B", "UPDATE journal SET MD5 = '  ' WHERE FILE_ID = 2", "import.unusable-row",
     "journal row FILE_ID 2: its MD5 is empty (no MD5 was recorded); not imported"),
    ("B", "UPDATE journal SET UPLOAD_DTSTR = CAST(X'66ff' AS TEXT) WHERE FILE_ID = 2", "import.broken-link",
     "its upload mark f\\xff is not UTF-8 text (its upload mark is lost"),
    ("A", "UPDATE modalities SET MODALITY = CAST(X'4fff' AS TEXT) WHERE id = 1; UPDATE command_history_v2 SET "
          "PARAMS = CAST(X'66ff' AS TEXT) WHERE COMMAND_ID = 1", "import.broken-link", "its MODALITY O\\xff is not UTF-8"),
]


@pytest.mark.parametrize("schema, sql, rule, words", SPOILT, ids=[f"{s[0]}-{s[2]}-{i}" for i, s in enumerate(SPOILT)])
def test_a_spoilt_row_is_a_finding_that_names_it_and_the_rest_imports(schema, sql, rule, words, tmp_path):
    journal = edited_journal(tmp_path, schema, sql)
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/", "--json", "--site", str(build_site(tmp_path)))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    findings = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == rule]
    assert any(words in f["message"] for f in findings), findings
    assert [row[0] for row in query(db, "SELECT label FROM versions ORDER BY label")] == [V1, V2]
    # nothing outside the site, no impossible value, no time beyond what can be written
    assert query(db, "SELECT count(*) FROM source_files WHERE srcfile LIKE '/%' OR srcfile LIKE '%../%' OR size < 0 "
                     "OR mtime_ns < 0 OR srcfile LIKE '%/'") == [(0,)]
    assert query(db, "SELECT count(*) FROM uploads WHERE destination LIKE '%/'") == [(0,)]  # every mark names a blob
    assert query(db, "SELECT count(*) FROM uploads WHERE destination LIKE '%.' OR instr(destination, char(92)) OR "
                     "instr(destination, char(127)) OR length(destination) > 1024") == [(0,)]


def test_md5s_a_cloud_site_recorded_as_base64_or_its_hex_are_the_same_md5s(tmp_path):
    """A journal of an az:// site holds each blob's Content-MD5 property as hex: the hex of its base64 text when an
    uploader set it so (48 digits), or base64 itself, upper-case hex, an S3 ETag in its quotes, or with spaces around.
    Each is the MD5 it stands for: the file is imported, its mark kept, and the next run sees it unchanged (each such
    row was left out, the file 'added')."""
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["A"], journal)
    con = sqlite3.connect(journal)
    with con:
        for row_id, md5 in con.execute("SELECT FILE_ID, MD5 FROM journal_v2").fetchall():
            b64 = base64.b64encode(bytes.fromhex(md5))
            con.execute("UPDATE journal_v2 SET MD5 = ? WHERE FILE_ID = ?",
                        ([b64.hex(), b64.decode(), md5.upper(), f'"{md5}"', f" {md5}\n"][row_id % 5], row_id))
    con.close()
    site = build_site(tmp_path)
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--site", str(site), "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr  # (the fixture's paths that fit no pattern)
    report = json.loads(out.stdout)
    assert not [f for f in report["findings"] if f["rule"] != "import.unparseable-path"], report["findings"]
    assert files_as_of(db, V1) == tree("v1", schema="A") and files_as_of(db, V2) == tree("v2", schema="A")
    assert {(p, v, m) for p, v, m in query(db, "SELECT substr(destination, length('az://central/') + 16), version, "
                                               "md5 FROM uploads")} == journal_marks(JOURNALS["A"])
    run = main_here("run", "--site", str(site), "--db", str(db), "--json", "--no-validate")
    summary = json.loads(run.stdout)
    assert summary["version"] is None and summary["counts"]["unchanged"] == 41, run.stderr


def test_notes_alone_are_exit_code_0(tmp_path):
    """Two updates with one --version (a note: imported as one version) and nothing else to say."""
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["B"], journal)
    con = sqlite3.connect(journal)
    with con:
        con.execute(f"UPDATE command_history SET PARAMS = '--version {V1}' WHERE PARAMS = '--version {V2}'")
        con.execute(f"UPDATE journal SET VERSION = '{V1}'")
        con.execute("DELETE FROM journal WHERE FILEPATH LIKE '%/Images/%'")  # paths today's patterns do not fit
        con.execute("UPDATE journal SET UPLOAD_DTSTR = NULL WHERE TIME_INVALID_us IS NOT NULL")
    con.close()
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert {f["severity"] for f in json.loads(out.stdout)["findings"]} == {"info"}
    assert query(db, "SELECT exit_code FROM runs") == [(0,)]
    assert [row[0] for row in query(db, "SELECT label FROM versions")] == [V1]



V3 = "20250301000000"
EVERY_FILE_GONE = f"""
INSERT INTO versions (VERSION) VALUES ('{V3}');
INSERT INTO command_history_v2 (DATETIME, COMMON_PARAMS, COMMAND, PARAMS, SRC_PATHS, DEST_PATH, Duration)
    VALUES ('2026-12-01 14:48:50 UTC', '--config /data/config.toml', 'journal update', '--version {V3}',
            '{{"OMOP": "/data/site"}}', 'None', 0.1);
UPDATE journal_v2 SET TIME_INVALID_us = CAST(strftime('%s', '2026-12-01 14:48:50') AS INTEGER) * 1000000
    WHERE TIME_INVALID_us IS NULL;
"""


@pytest.mark.parametrize("max_delete", [None, "all"])
def test_a_version_that_removes_what_run_would_refuse_to_is_said_with_its_label_and_count(max_delete, tmp_path):
    """chorus-upload has no mass-removal guard: a `journal update` run while the site was unmounted recorded every
    file removed. Imported as recorded, but said (a warning, exit 1), as `run` would have refused it under [run]
    max_delete, with what it means when it is the latest version: the next run adds every file back."""
    journal = edited_journal(tmp_path, "A", EVERY_FILE_GONE)
    if max_delete is not None:
        (tmp_path / "chorus.toml").write_text(f'[run]\nmax_delete = "{max_delete}"\n', encoding="utf-8")
    out = cli("import-journal", str(journal), "--db", "m.sqlite", "--to", "az://mgh/", "--json", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert [row[0] for row in query(tmp_path / "m.sqlite", "SELECT label FROM versions")] == [V1, V2, V3]
    said = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.mass-removal"]
    if max_delete == "all":  # (as `run --max-delete all` takes it without a word)
        assert said == []
        return
    (finding,) = said
    assert finding["severity"] == "warning"
    assert (f"upstream version {V3} removes 41 of the 41 files of version {V2} (100.0%: every file)"
            in finding["message"])
    assert "max_delete 50%" in finding["message"] and "the next run adds back every file" in finding["message"]


def test_credentials_in_the_journal_are_named_masked_and_never_kept(tmp_path):
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["A"], journal)
    sas = "sv=2022-11-02&sig=ALLSECRETSIG"
    con = sqlite3.connect(journal)
    with con:
        con.execute("UPDATE command_history_v2 SET SRC_PATHS = ? WHERE COMMAND = 'journal update'",
                    (json.dumps({m: f"az://site/data?{sas}" for m in ("OMOP", "Images", "Waveforms", "Metadata")}),))
        con.execute("UPDATE command_history_v2 SET DEST_PATH = ? WHERE COMMAND LIKE 'file %'", (f"az://central/?{sas}",))
    con.close()
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--json")  # the central container from the journal, without its token
    assert out.returncode == 1, out.stderr
    assert "ALLSECRETSIG" not in out.stdout + out.stderr
    assert "ALLSECRETSIG".encode() not in db.read_bytes()
    secrets = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.secret-in-journal"]
    assert len(secrets) == 2 and all("rotate it" in f["message"] and "sig=***" in f["message"] for f in secrets)
    assert query(db, "SELECT location FROM roots") == [("az://site/data",)]
    assert query(db, "SELECT DISTINCT central FROM uploads") == [("az://central",)]
    report = main_here("report", "--db", str(db), "--out", str(tmp_path / "r.html"))
    assert report.returncode == 0 and "ALLSECRETSIG" not in (tmp_path / "r.html").read_text()


def test_a_connection_string_in_the_journals_history_is_named_masked_and_never_kept(tmp_path):
    """A DEST_PATH that is no URL but a connection string: its key was taken as the central place as it was (said
    unmasked but for the output's own scrub, and never named as a credential to rotate)."""
    key = "AccountKey=QUxMU0VDUkVUS0VZ" + "A" * 60 + "=="
    journal = edited_journal(tmp_path, "A", f"UPDATE command_history_v2 SET DEST_PATH = "
                                            f"'DefaultEndpointsProtocol=https;AccountName=acct;{key}' "
                                            f"WHERE COMMAND LIKE 'file %'")
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--json", "--to", "az://central/")
    assert out.returncode == 1, out.stderr
    assert "QUxMU0VDUkVUS0VZ" not in out.stdout + out.stderr and b"QUxMU0VDUkVUS0VZ" not in db.read_bytes()
    (secret,) = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.secret-in-journal"]
    assert "AccountKey=***" in secret["message"] and "DEST_PATH of command 2" in secret["message"]
    assert "rotate it" in secret["message"]
    # without --to: the place is said masked, whole, and --to asked for
    out = import_journal(journal, tmp_path / "n.sqlite")
    assert out.returncode == 2 and "AccountName=acct;AccountKey=***)" in out.stderr, out.stderr
    assert "QUxMU0VDUkVUS0VZ" not in out.stdout + out.stderr


def test_a_token_before_a_roots_host_in_the_journal_is_never_kept(tmp_path):
    """https://TOKEN@host/... in the command history (a token as the URL's user): only user:password and a query
    were taken out, so the manifest's roots table kept the token."""
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["A"], journal)
    con = sqlite3.connect(journal)
    with con:
        con.execute("UPDATE command_history_v2 SET SRC_PATHS = ? WHERE COMMAND = 'journal update'",
                    (json.dumps({m: "https://TOKENSECRET@acct.blob.core.windows.net/site/data"
                                 for m in ("OMOP", "Images", "Waveforms", "Metadata")}),))
    con.close()
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--json", "--to", "az://central/")
    assert out.returncode == 1, out.stderr
    assert "TOKENSECRET" not in out.stdout + out.stderr
    assert b"TOKENSECRET" not in db.read_bytes()
    assert query(db, "SELECT location FROM roots") == [("https://acct.blob.core.windows.net/site/data",)]
    secrets = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.secret-in-journal"]
    assert secrets and all("rotate it" in f["message"] and "https://***@acct" in f["message"] for f in secrets)


def test_output_that_cannot_be_written_is_said_truthfully(tmp_path):
    db = tmp_path / "m.sqlite"
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "import-journal", str(JOURNALS["A"]), "--db",
                              str(db), "--to", "az://central/"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert out.returncode == 3
    assert "could not write the output to standard output" in out.stderr and "internal error" not in out.stderr
    assert "no manifest was written" not in out.stderr and db.exists()


def test_a_damaged_journal_is_said_to_be_damaged(tmp_path):
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["A"], journal)
    with open(journal, "r+b") as f:  # pages overwritten mid-file, as a bad disk or a cut copy leaves them
        f.seek(20000)
        f.write(b"\xff" * 8000)
    out = import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/")
    assert out.returncode == 2, out.stderr
    assert "is damaged" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m.sqlite").exists()
    if shutil.which("sqlite3"):  # the salvage told, run as given (`.recover` wrote no table with Debian's sqlite3 3.40)
        command = out.stderr.split("history that can still be imported): ")[1].splitlines()[0]
        salvaged = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
        assert salvaged.returncode == 0 and Path(f"{journal}.salvaged").stat().st_size > 0, salvaged.stderr


@pytest.mark.parametrize("size, rows", [(40000, 0), (50000, 0), (66000, 4)])
def test_the_salvage_told_for_a_cut_journal_copies_what_is_left_without_errors(tmp_path, size, rows):
    """A journal cut short (a copy stopped midway): `.dump` reads a table it cannot finish again backwards, writing its
    first rows twice, and a page cut short gives rows of zeros; the salvage told printed "UNIQUE constraint failed:
    versions.id" / "NOT NULL constraint failed", exited 1, and skipped those statements. Now it copies every readable
    row once, exit 0, and the copy imports (or, with no file row left, says so)."""
    journal = tmp_path / "journal.db"
    journal.write_bytes(JOURNALS["A"].read_bytes()[:size])
    out = import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/")
    assert out.returncode == 2 and "is damaged" in out.stderr, out.stderr
    command = out.stderr.split("history that can still be imported): ")[1].splitlines()[0]
    salvaged = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert salvaged.returncode == 0 and salvaged.stderr == "", salvaged.stderr
    copy = Path(f"{journal}.salvaged")
    assert query(copy, "SELECT count(*) FROM journal_v2") == [(rows,)]
    assert query(copy, "SELECT count(*) FROM versions WHERE VERSION IS NULL") == [(0,)] or size == 40000
    imported = import_journal(copy, tmp_path / "s.sqlite", "--to", "az://central/")
    assert "Traceback" not in imported.stderr
    assert imported.returncode == (1 if rows else 2), imported.stderr


# Damage the queries of the import never meet: a journal_v2 leaf read as empty (its rows lost), the history's page
# (the site's roots lost), sqlite_sequence's, the last page cut short. Each was imported, exit 1 as any import of
# journal A, with a shorter history and no word of damage; `PRAGMA quick_check` finds each.
@pytest.mark.parametrize("page, fill", [(17, b"\x00"), (2, b"\x00"), (3, b"\xff"), (18, None)])
def test_a_journal_with_a_damaged_page_the_import_does_not_read_is_said_to_be_damaged(page, fill, tmp_path):
    journal = tmp_path / "journal.db"
    data = bytearray(JOURNALS["A"].read_bytes())
    page_size = 4096
    if fill is None:  # cut short inside its last page
        data = data[:(page - 1) * page_size + 2000]
    else:  # the page's cells overwritten (its header kept)
        data[(page - 1) * page_size + 8:page * page_size - 8] = fill * (page_size - 16)
    journal.write_bytes(bytes(data))
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2 and "is damaged" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "history that can still be imported): " in out.stderr and not db.exists()


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 command-line shell")
def test_the_salvage_told_never_mixes_its_copy_into_a_file_already_there(tmp_path):
    """A .salvaged left by an earlier salvage (here of another journal): the command told ran the copy into it, its
    CREATEs failing and its rows merged INSERT OR IGNORE with the old ones (a mix of two histories, exit 1). It now
    leaves that file as it is and says to move it away."""
    journal = tmp_path / "journal.db"
    journal.write_bytes(JOURNALS["A"].read_bytes()[:66000])
    out = import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/")
    assert out.returncode == 2 and "is damaged" in out.stderr, out.stderr
    command = out.stderr.split("history that can still be imported): ")[1].splitlines()[0]
    earlier = Path(f"{journal}.salvaged")
    shutil.copy(JOURNALS["B"], earlier)
    salvaged = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert salvaged.returncode != 0 and f"{earlier} exists" in salvaged.stderr, salvaged.stderr
    assert earlier.read_bytes() == JOURNALS["B"].read_bytes()
    earlier.unlink()  # moved away: the same command copies
    salvaged = subprocess.run(["sh", "-c", command], capture_output=True, text=True)
    assert salvaged.returncode == 0 and salvaged.stderr == "", salvaged.stderr
    assert query(earlier, "SELECT count(*) FROM journal_v2") == [(4,)]


def test_a_journal_a_stopped_chorus_upload_left_mid_write_says_how_to_roll_it_back(tmp_path):
    """A chorus-upload command killed mid-write leaves a hot rollback journal (journal.db-journal): the read-only
    import said "cannot read the journal (attempt to write a readonly database)", fix "run again", which failed
    again every time. It now says what happened and how to have SQLite roll the write back; then it imports."""
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS["A"], journal)
    killed = subprocess.run([sys.executable, "-c", (
        "import os, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('PRAGMA cache_size = 1')\n"  # (pages spill to the file before the commit)
        "con.execute('BEGIN')\n"
        "con.execute(\"UPDATE journal_v2 SET MD5 = '00000000000000000000000000000000'\")\n"
        "con.execute(\"INSERT INTO srcpaths (SRC_PATH) SELECT SRC_PATH || 'x' FROM srcpaths\")\n"
        "os._exit(9)\n"), str(journal)])
    assert killed.returncode == 9 and Path(f"{journal}-journal").stat().st_size > 0
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "did not finish" in out.stderr and f"{journal}-journal" in out.stderr and "PRAGMA quick_check" in out.stderr
    assert not db.exists() and Path(f"{journal}-journal").stat().st_size > 0  # (the journal is only read)
    con = sqlite3.connect(journal)  # what the message says to do
    con.execute("PRAGMA quick_check").fetchall()
    con.close()
    assert import_journal(journal, db, "--to", "az://central/").returncode == 1
    assert files_as_of(db, V2) == tree("v2", schema="A")


# A command history's DATETIME as other tools or hands write it: the usual spellings are read; what cannot be read is a
# finding naming its row and value, and the version is still cut where it belongs (its label, the command before it).
# Each: a strftime spelling of the update's own time (shifted by hours), and how an unreadable one is said (None: read).
HISTORY_TIMES = [("%Y-%m-%dT%H:%M:%SZ", 0, None), ("%Y-%m-%dT%H:%M:%S.1+01:00", 1, None), ("%Y-%m-%d %H:%M:%S", 0, None),
                 ("", 0, "''"), ("garbage", 0, "'garbage'"), ("2026-12-01", 0, "'2026-12-01'")]


@pytest.mark.parametrize("schema", ["A", "B"])
@pytest.mark.parametrize("spelling, hours, said", HISTORY_TIMES)
@pytest.mark.parametrize("label", [True, False], ids=["label", "no-label"])
def test_a_history_time_that_cannot_be_read_is_a_finding_and_the_version_is_still_cut(schema, spelling, hours, said,
                                                                                    label, tmp_path):
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS[schema], journal)
    table = {"A": "command_history_v2", "B": "command_history"}[schema]
    con = sqlite3.connect(journal)
    with con:
        (was,) = con.execute(f"SELECT DATETIME FROM {table} WHERE PARAMS = '--version {V2}'").fetchone()
        when = (datetime.strptime(was, "%Y-%m-%d %H:%M:%S UTC") + timedelta(hours=hours)).strftime(spelling)
        con.execute(f"UPDATE {table} SET DATETIME = ? WHERE PARAMS = '--version {V2}'", (when,))
        if not label:  # an update recorded without --version: placed after the command before it
            con.execute(f"UPDATE {table} SET PARAMS = NULL WHERE PARAMS = '--version {V2}'")
    con.close()
    db = tmp_path / "m.sqlite"
    findings = _imports_both_versions(journal, db, schema)
    assert {(p, v, m) for p, v, m in query(
        db, "SELECT f.srcfile, u.version, u.md5 FROM uploads u JOIN source_files f USING (file_id)")} == journal_marks(journal)
    assert not [f for f in findings if f["rule"] == "import.unmapped-mark"]
    unread = [f["message"] for f in findings if f["rule"] == "import.unreadable-history"]
    if said is None:
        assert unread == []
    else:
        assert len(unread) == 1 and f"{table} row COMMAND_ID 3" in unread[0] and f"DATETIME {said}" in unread[0]


def _imports_both_versions(journal: Path, db: Path, schema: str) -> list[dict]:
    """import-journal of an edited copy of a fixture journal: exit 1 (its findings), both upstream versions with their
    trees; the findings."""
    out = import_journal(journal, db, "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr
    assert [row[0] for row in query(db, "SELECT label FROM versions ORDER BY label")] == [V1, V2]
    assert files_as_of(db, V1) == tree("v1", schema=schema)
    assert files_as_of(db, V2) == tree("v2", schema=schema)
    return json.loads(out.stdout)["findings"]


# A clock set back (or ahead) on one run: its DATETIME is readable but out of order with the commands before and after
# it (COMMAND_ID counts up). It is taken as an unreadable one (the version placed by its rows, a finding saying why),
# not told as versions whose labels are out of order with the advice to give up on the history.
@pytest.mark.parametrize("schema", ["A", "B"])
@pytest.mark.parametrize("version, shift", [(V2, timedelta(hours=-3)), (V2, timedelta(seconds=-9)),
                                            (V1, timedelta(days=400))], ids=["back", "back-seconds", "ahead"])
def test_a_history_time_out_of_order_is_taken_as_unreadable_and_the_version_is_still_cut(schema, version, shift,
                                                                                         tmp_path):
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS[schema], journal)
    table = {"A": "command_history_v2", "B": "command_history"}[schema]
    con = sqlite3.connect(journal)
    with con:
        (command, was) = con.execute(f"SELECT COMMAND_ID, DATETIME FROM {table} WHERE PARAMS = '--version {version}'"
                                     ).fetchone()
        when = (datetime.strptime(was, "%Y-%m-%d %H:%M:%S UTC") + shift).strftime("%Y-%m-%d %H:%M:%S UTC")
        con.execute(f"UPDATE {table} SET DATETIME = ? WHERE COMMAND_ID = ?", (when, command))
    con.close()
    db = tmp_path / "m.sqlite"
    unread = [f["message"] for f in _imports_both_versions(journal, db, schema) if f["rule"] == "import.unreadable-history"]
    assert len(unread) == 1 and f"{table} row COMMAND_ID {command}" in unread[0], unread
    assert f"DATETIME {when!r} is out of order" in unread[0] and "clock" in unread[0]


# The clock set back for the rest of the history, the rows written since carrying it too: no time places the versions,
# and cut by these times they would mix. Said as the clock (and how to correct it), nothing imported; not as labels
# out of order with the advice to give up on the history.
@pytest.mark.parametrize("schema", ["A", "B"])
def test_a_clock_set_back_for_the_rest_of_the_history_and_its_rows_is_said_and_nothing_imported(schema, tmp_path):
    table = {"A": "command_history_v2", "B": "command_history"}[schema]
    rows = {"A": "journal_v2", "B": "journal"}[schema]
    journal = tmp_path / "journal.db"
    shutil.copy(JOURNALS[schema], journal)
    con = sqlite3.connect(journal)
    with con:
        (command, was) = con.execute(f"SELECT COMMAND_ID, DATETIME FROM {table} WHERE PARAMS = '--version {V2}'"
                                     ).fetchone()
        cut = int(datetime.strptime(was, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc).timestamp() * 1e6)
        con.execute(f"UPDATE {table} SET DATETIME = strftime('%Y-%m-%d %H:%M:%S UTC', substr(DATETIME, 1, 19), "
                    "'-3 hours') WHERE COMMAND_ID >= ?", (command,))
        for column in ("TIME_VALID_us", "TIME_INVALID_us"):
            con.execute(f"UPDATE {rows} SET {column} = {column} - 10800000000 WHERE {column} >= ?", (cut,))
    con.close()
    db = tmp_path / "m.sqlite"
    out = import_journal(journal, db, "--to", "az://central/")
    assert out.returncode == 2, out.stderr
    assert "clock" in out.stderr and "nothing was imported" in out.stderr and "Traceback" not in out.stderr
    assert "correct the times" in out.stderr and "does not sort after" not in out.stderr
    assert not db.exists()


@pytest.mark.parametrize("sql, words", [
    ("UPDATE command_history_v2 SET PARAMS = x'00ff', COMMAND = x'00' WHERE COMMAND_ID = 2", None),
    ("UPDATE uploads SET UPLOAD_DT = x'00ff' WHERE id = 3", "its upload mark UPLOAD_DT is X'00FF'"),
    ("UPDATE versions SET VERSION = x'00ff' WHERE id = 5", "its version label VERSION is X'00FF'"),
])
def test_a_value_of_the_wrong_type_in_a_lookup_or_history_table_is_said(sql, words, tmp_path):
    journal = edited_journal(tmp_path, "A", sql)
    out = import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/", "--json")
    assert out.returncode == 1, out.stderr
    assert "internal error" not in out.stderr
    if words:
        assert any(words in f["message"] for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.broken-link")


@pytest.mark.parametrize("url", ["az://", "az://central", "az://central/", "az://central/folder/"])
def test_a_journal_url_that_names_no_blob_is_said_of_the_journal(url, tmp_path):
    out = import_journal(url, tmp_path / "m.sqlite")
    assert out.returncode == 2, out.stderr
    assert f"the journal {url} does not name a blob" in out.stderr and f"JOURNAL {url}" in out.stderr
    assert "--db" not in out.stderr and "Traceback" not in out.stderr


def test_a_manifest_in_azure_given_as_the_journal_is_named_as_given(central, tmp_path):
    db = tmp_path / "m.sqlite"
    assert import_journal(JOURNALS["A"], db, "--to", "az://central/").returncode == 1
    central.client.upload_blob("site/manifest.sqlite", db.read_bytes())
    url = f"az://{central.container}/site/manifest.sqlite"
    out = import_journal(url, tmp_path / "n.sqlite", env=central.env)
    assert out.returncode == 2, out.stderr
    assert f"{url} is not a chorus-upload journal: it is a chorus-batch manifest already" in out.stderr
    assert f"where: {url}" in out.stderr and f"--db {url}" in out.stderr
    assert central.env["CHORUS_BATCH_CACHE_DIR"] not in out.stderr and "download it first" not in out.stderr


@pytest.mark.parametrize("url, said", [("az://central/journal.db?sv=2024&sig=SECRETSIG", "holds credentials in the URL"),
                                       ("az://central//journal.db", "has an empty folder name ('//')")])
def test_a_journal_url_is_checked_as_every_other_url_before_it_is_read(url, said, tmp_path):
    # The JOURNAL URL was never checked: a SAS in it was dropped silently (the blob read with the environment's
    # credentials, the token sent nowhere but kept in the shell's history), '//' named another blob than it seemed.
    out = import_journal(url, tmp_path / "m.sqlite", env={"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
                                                          "CHORUS_BATCH_RETRY_DEADLINE_S": "1"})
    assert out.returncode == 2, out.stderr
    assert said in out.stderr and "JOURNAL" in out.stderr and "SECRETSIG" not in out.stderr + out.stdout
    assert not (tmp_path / "m.sqlite").exists()


@pytest.mark.parametrize("schema, table", [("A", "journal_v2"), ("B", "journal")])
def test_columns_of_a_newer_chorus_upload_are_a_note_not_passed_over(schema, table, tmp_path):
    """A journal whose table has columns chorus-upload's known releases do not write (a newer release's): imported
    as before, and a note names them (what they hold is not imported); it said nothing. The fixtures: no note."""
    plain = import_journal(JOURNALS[schema], tmp_path / "plain.sqlite", "--to", "az://central/", "--json")
    assert not [f for f in json.loads(plain.stdout)["findings"] if f["rule"] == "import.unread-columns"]
    journal = edited_journal(tmp_path, schema, f"ALTER TABLE {table} ADD COLUMN SHA256 TEXT; "
                                               f"ALTER TABLE {table} ADD COLUMN deleted INTEGER DEFAULT 0")
    out = import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/", "--json")
    assert out.returncode == plain.returncode, out.stderr
    (note,) = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.unread-columns"]
    assert note["severity"] == "info" and f"the journal's {table} table has columns" in note["message"], note
    assert "SHA256, deleted; what they hold is not imported" in note["message"], note
    assert query(tmp_path / "m.sqlite", "SELECT count(*) FROM versions") == [(2,)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_import_stopped_while_it_checks_the_site_says_the_manifest_was_written(tmp_path, signum):
    """With --site the import checks the site against the manifest after writing it (a listing, hashing: hours on a
    big site); a SIGTERM then said "no manifest was written" of a manifest holding every version of the journal."""
    db = tmp_path / "m.sqlite"
    proc = paused("import-journal", str(JOURNALS["A"]), "--db", str(db), "--site", str(build_site(tmp_path)),
                  "--to", "az://central/", at="hashing")
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (143 if signum == signal.SIGTERM else 130), err
    n = query(db, "SELECT count(*) FROM versions")[0][0]
    assert n >= 1
    assert "no manifest was written" not in err, err
    assert f"the manifest was written to {db}, with the journal's {n} version{'s' if n != 1 else ''}" in err, err
    assert "only the check of the site against it was cut short" in err and "chorus-batch status --site" in err, err
    assert main_here("versions", "--db", str(db)).returncode == 0


# A journal or --db named in bytes that are not UTF-8 (a Latin-1 folder, as sites that began on old systems keep):
# the journal's name was stored as the run's message, and --db's in the side files a run writes, by code that takes
# UTF-8 text only: 'internal error' after the whole import. Now the journal imports (its name with \x.. escapes in the
# manifest) and such a --db is refused before any work, as `run` refuses it.
def test_a_journal_or_db_whose_name_is_not_utf8(tmp_path):
    journal = os.fsencode(tmp_path) + b"/journal_\xe9t\xe9.db"
    shutil.copy(JOURNALS["A"], journal)

    def run(*args: bytes) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "chorus_batch", "import-journal", *args, b"--to", b"az://central/"],
                              capture_output=True, timeout=120)

    db = tmp_path / "m.sqlite"
    out = run(journal, b"--db", os.fsencode(db))
    assert out.returncode == 1, out.stderr
    assert b"internal error" not in out.stderr
    assert query(db, "SELECT message FROM runs WHERE mode = 'import'") == [
        (f"imported 2 versions from {tmp_path}/journal_\\xe9t\\xe9.db",)]
    assert files_as_of(db, V2) == tree("v2", schema="A")

    bad = os.fsencode(tmp_path) + b"/m\xe9.sqlite"
    out = run(journal, b"--db", bad)
    assert out.returncode == 2, out.stderr
    assert b"internal error" not in out.stderr
    assert b"m\\xe9.sqlite is not valid UTF-8" in out.stderr and b"nothing was done" in out.stderr
    assert not [name for name in os.listdir(tmp_path) if "m\udce9" in name]  # nothing left beside it


# chorus-upload writes a command's Duration once the command has returned: a `journal update` without one was stopped or
# crashed midway (or, the last command of the history, may still be running, its journal read mid-write), and its
# version holds only what it had written by then. Imported without a word, such a half-scanned version passed for the
# site's tree.
@pytest.mark.parametrize("schema", ["A", "B"])
@pytest.mark.parametrize("later, said", [(True, "was stopped or crashed (a later command ran)"),
                                         (False, "if a chorus-upload command is running, wait for it to end and import again")],
                         ids=["stopped", "last-command"])
def test_an_update_that_did_not_finish_is_said_with_its_version(schema, later, said, tmp_path):
    table = {"A": "command_history_v2", "B": "command_history"}[schema]
    journal = edited_journal(tmp_path, schema, f"UPDATE {table} SET Duration = NULL WHERE PARAMS = '--version {V2}';"
                                               + ("" if later else f"DELETE FROM {table} WHERE COMMAND_ID > 3;"))
    findings = _imports_both_versions(journal, tmp_path / "m.sqlite", schema)
    unfinished = [f["message"] for f in findings if f["rule"] == "import.unreadable-history"]
    assert len(unfinished) == 1, findings
    assert f"{table} row COMMAND_ID 3 (`journal update --version {V2}`) has no Duration" in unfinished[0]
    assert f"version {V2} holds only what it had written" in unfinished[0] and said in unfinished[0]


@pytest.mark.parametrize("schema", ["A", "B"])
def test_a_history_with_no_duration_at_all_is_no_unfinished_update(schema, tmp_path):
    """A release that never wrote Duration: nothing can be told of its updates, and nothing is said."""
    table = {"A": "command_history_v2", "B": "command_history"}[schema]
    journal = edited_journal(tmp_path, schema, f"UPDATE {table} SET Duration = NULL")
    findings = _imports_both_versions(journal, tmp_path / "m.sqlite", schema)
    assert not [f for f in findings if f["rule"] == "import.unreadable-history"]


@pytest.mark.parametrize("schema", ["A", "B"])
def test_tables_the_import_does_not_read_are_a_note_with_their_rows(schema, tmp_path):
    """A journal with tables chorus-upload's known releases do not write (a newer release's `journal_v3`, a settings
    table) or the other schema's table left beside the one read: imported as before, and a note names each with its
    rows (what they hold is not imported); it said nothing, so a history kept in such a table was lost unsaid."""
    other = {"A": "journal", "B": "journal_v2"}[schema]
    journal = edited_journal(tmp_path, schema, "CREATE TABLE journal_v3 (FILE_ID INTEGER, MD5 TEXT); "
                                               "INSERT INTO journal_v3 VALUES (1, 'x'), (2, 'y'); "
                                               f"CREATE TABLE \"{other}\" (FILE_ID INTEGER);"
                                               if schema == "A" else
                                               "CREATE TABLE journal_v3 (FILE_ID INTEGER, MD5 TEXT); "
                                               "INSERT INTO journal_v3 VALUES (1, 'x'), (2, 'y'); "
                                               "CREATE TABLE settings (k TEXT, v TEXT);")
    plain = import_journal(JOURNALS[schema], tmp_path / "plain.sqlite", "--to", "az://central/", "--json")
    assert not [f for f in json.loads(plain.stdout)["findings"] if f["rule"] == "import.unread-columns"]
    out = import_journal(journal, tmp_path / "m.sqlite", "--to", "az://central/", "--json")
    assert out.returncode == plain.returncode, out.stderr
    (note,) = [f for f in json.loads(out.stdout)["findings"] if f["rule"] == "import.unread-columns"]
    unread = "journal (0 rows), journal_v3 (2 rows)" if schema == "A" else "journal_v3 (2 rows), settings (0 rows)"
    assert note["severity"] == "info" and f"does not read (a newer chorus-upload's, or the other schema's left " \
        f"beside it?): {unread}; what they hold is not imported" in note["message"], note
    assert query(tmp_path / "m.sqlite", "SELECT count(*) FROM versions") == [(2,)]


def test_a_run_turned_away_by_an_import_is_recorded_in_the_manifest_it_made(tmp_path):
    """A run started while an import held the manifest's lock was refused (exit 4) and noted itself beside the
    manifest, for the holder to record as it lets go, as every command holding the lock does (Manifest.lock): the
    import took the lock its own way, never recorded it, and <db>.runs-pending.jsonl stayed beside the new manifest."""
    db, site = tmp_path / "m.sqlite", build_site(tmp_path)
    resume = tmp_path / "go"
    proc = paused("import-journal", str(JOURNALS["A"]), "--db", str(db), "--to", "az://central/", at="commit",
                  resume=resume)
    try:
        refused = main_here("run", "--site", str(site), "--db", str(db))
        assert refused.returncode == 4 and "locked by another command" in refused.stderr, refused.stderr
        assert "`chorus-batch import-journal`" in refused.stderr and f"pid {proc.pid} on host" in refused.stderr
        assert "started 20" in refused.stderr
    finally:
        resume.touch()
        proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert not Path(f"{db}.runs-pending.jsonl").exists()
    runs = query(db, "SELECT mode, exit_code, message FROM runs ORDER BY run_id")
    assert runs[0][0] == "import" and runs[1][1] == 4 and "locked by another command" in runs[1][2], runs


def test_a_run_after_a_killed_import_removes_the_manifest_it_was_building(tmp_path):
    """An import killed mid-way (SIGKILL: no clean-up) left its temporary manifest beside --db, the site's paths in
    it; only a next import removed it, and a site that went on with `run` kept it for good. Whatever command takes
    the lock next removes it: no import is building one while the lock is held."""
    db, site = tmp_path / "m.sqlite", build_site(tmp_path)
    proc = _start(JOURNALS["A"], db, "--to", "az://central/", pause="commit")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".m.sqlite.importing-*"))
    out = main_here("run", "--site", str(site), "--db", str(db), "-q")
    assert out.returncode in (0, 1), out.stderr
    assert not list(tmp_path.glob(".m.sqlite.importing-*"))
    assert [row[0] for row in query(db, "SELECT count(*) FROM versions")] == [1]
