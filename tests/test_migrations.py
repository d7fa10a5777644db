"""Schema migrations, on a manifest written by the previous release (tests/fixtures/schema2)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from chorus_batch.errors import ManifestError
from chorus_batch.store import Manifest
from chorus_batch.store import schema as schema_module
from chorus_batch.validate.rules import KINDS

from conftest import cli, fill, paused, query

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "schema2"
# Every table of schema 2 and the columns it had: all of it must read back unchanged.
SCHEMA2_TABLES = ("source_files", "registry", "versions", "changes", "scan_errors", "runs", "file_facts", "findings",
                  "validations", "meta")


def _columns(db: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(f"{db.as_uri()}?immutable=1", uri=True)  # the committed fixture is never written
    try:
        return {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in SCHEMA2_TABLES}
    finally:
        con.close()


SCHEMA2_COLUMNS = _columns(FIXTURE / "manifest.sqlite")


@pytest.fixture
def old(tmp_path: Path) -> Path:
    db = tmp_path / "manifest.sqlite"
    shutil.copy(FIXTURE / "manifest.sqlite", db)
    return db


def dump(db: Path) -> dict[str, list[tuple]]:
    """Every row of the schema-2 tables, in schema 2's columns (later migrations add columns, and drop
    header facts of the kinds whose readers changed: a cache, read again)."""
    con = sqlite3.connect(db)
    try:
        out = {}
        for table, columns in SCHEMA2_COLUMNS.items():
            rows = con.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {columns[0]}, {columns[1]}").fetchall()
            if table == "meta":
                rows = [r for r in rows if r[0] not in ("schema_version", "min_release")]
            if table == "file_facts":
                rows = [r for r in rows if r[0] not in ("dicom", "omop_visits")]
            out[table] = rows
        return out
    finally:
        con.close()


def shape(db: Path) -> dict[str, object]:
    """Tables with their columns (name, type, not null, default, primary key) and the index definitions."""
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out: dict[str, object] = {t: [r[1:] for r in con.execute(f"PRAGMA table_info({t})")] for t in tables}
        out["indexes"] = sorted(r for r in con.execute("SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"))
        return out
    finally:
        con.close()


def test_a_read_only_command_on_an_old_manifest_says_how_to_upgrade(old):
    out = cli("versions", "--db", str(old))
    assert out.returncode == 3
    assert "schema version 2" in out.stderr and f"chorus-batch upgrade --db {old}" in out.stderr
    assert "Traceback" not in out.stderr
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]  # untouched


def test_a_read_only_command_while_an_upgrade_runs_says_so_and_not_to_upgrade(old):
    """While `upgrade` (or a run, which upgrades first) held the lock, `versions`/`report`/`registry` said "upgrade it
    in place" (exit 3): a second upgrade, turned away by the lock. They now name the holder (exit 4, try later).
    Details an older release wrote (no schema) or a command that does not upgrade keep the old answer."""
    from chorus_batch.store.lock import manifest_lock

    for command in ("upgrade", "run"):
        with manifest_lock(old, [command, "--db", str(old)]):
            out = cli("versions", "--db", str(old))
        assert out.returncode == 4, out.stderr
        assert f"locked by pid {os.getpid()}" in out.stderr and f"`chorus-batch {command}`" in out.stderr, out.stderr
        assert "upgrades it to schema" in out.stderr and "run it again once that one has finished" in out.stderr
    holder = Path(f"{old}.lock.json")
    with manifest_lock(old, ["history", "--db", str(old)]):  # (a command that takes no run lock to upgrade)
        assert cli("versions", "--db", str(old)).returncode == 3
    with manifest_lock(old, ["upgrade", "--db", str(old)]):
        details = json.loads(holder.read_text())
        del details["schema"]  # as an older release writes them
        holder.write_text(json.dumps(details))
        out = cli("versions", "--db", str(old))
    assert out.returncode == 3 and "upgrade it in place" in out.stderr, out.stderr
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]  # untouched



@pytest.mark.parametrize("command", ["upload", "verify", "mark-uploaded"])
def test_a_read_only_command_while_upload_upgrades_the_manifest_says_so(old, command):
    """`upload`, `verify` and `mark-uploaded` upgrade an older manifest first, under the run lock (before they sign
    in to the centre): a reader meanwhile was told to upgrade it in place, which the lock then refused. It names the
    upgrade under way, as for a run's (exit 4)."""
    from chorus_batch.store.lock import manifest_lock

    with manifest_lock(old, [command, "--db", str(old)]):  # (as submit.upload._upgraded takes it)
        out = cli("versions", "--db", str(old))
    assert out.returncode == 4 and f"`chorus-batch {command}`" in out.stderr, out.stderr
    assert "upgrades it to schema" in out.stderr and "upgrade it in place" not in out.stderr, out.stderr


@pytest.mark.skipif(os.name != "posix", reason="a process looked up by its pid")
def test_a_read_only_command_after_a_killed_upgrade_is_not_told_to_wait_for_it(old):
    """An upgrade (or a run upgrading first) killed with SIGKILL leaves its details beside the manifest, which it
    left at its old schema; every reading command after it said "locked by pid N ... which upgrades it; run it
    again once that one has finished" (exit 4) of a process gone, night after night. Its process gone from this
    host, the reader says to upgrade (exit 3); another host's holder is still named (it cannot be looked up)."""
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = Path(f"{old}.lock.json")
    details = {"pid": dead.pid, "host": socket.gethostname(), "user": "u", "started_at": "2026-12-05T02:00:00Z",
               "command": "upgrade", "slurm_task": None, "schema": schema_module.SCHEMA_VERSION}
    holder.write_text(json.dumps(details))
    out = cli("versions", "--db", str(old))
    assert out.returncode == 3, out.stderr
    assert "upgrade it in place" in out.stderr and "locked" not in out.stderr, out.stderr
    holder.write_text(json.dumps({**details, "host": "another-node"}))
    out = cli("versions", "--db", str(old))
    assert out.returncode == 4 and f"locked by pid {dead.pid} on host another-node" in out.stderr, out.stderr
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]  # untouched



@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="a process's start time, from Linux /proc")
def test_a_read_only_command_after_an_upgrade_lost_to_a_reboot_is_not_told_to_wait_for_the_pid_reused(old):
    """An upgrade the machine's reboot stopped leaves its details, naming a pid that after the reboot belongs to
    another process (a daemon): the reader said "locked by pid N ... which upgrades it" (exit 4) of it, night after
    night. A process started after the details were written is not their holder: the reader says to upgrade."""
    import socket

    holder = Path(f"{old}.lock.json")
    details = {"pid": os.getpid(), "host": socket.gethostname(), "user": "u", "started_at": "2026-01-05T02:00:00Z",
               "command": "upgrade", "slurm_task": None, "schema": schema_module.SCHEMA_VERSION}
    holder.write_text(json.dumps(details))  # (this test's process: alive, and started long after that)
    out = cli("versions", "--db", str(old))
    assert out.returncode == 3, out.stderr
    assert "upgrade it in place" in out.stderr and "locked" not in out.stderr, out.stderr
    holder.write_text(json.dumps({**details, "started_at": "2126-01-05T02:00:00Z"}))  # (a clock set wrong: kept)
    assert cli("versions", "--db", str(old)).returncode == 4

def test_upgrade_keeps_every_version_row_and_finding(old):
    before = dump(old)
    assert len(before["versions"]) == 2 and len(before["findings"]) == 11 and len(before["source_files"]) == 30
    out = cli("upgrade", "--db", str(old))
    assert out.returncode == 0, out.stderr
    assert f"schema 2 -> {schema_module.SCHEMA_VERSION}" in out.stdout
    assert dump(old) == before
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(schema_module.SCHEMA_VERSION),)]
    # Readable through the review commands afterwards, every version of it.
    versions = cli("versions", "--db", str(old), "--json")
    assert versions.returncode == 0, versions.stderr
    for label in ("20261101020000", "20261102020000"):
        files = cli("files", "--db", str(old), "--as-of", label, "--json")
        assert files.returncode == 0, files.stderr
    again = cli("upgrade", "--db", str(old))
    assert again.returncode == 0 and f"already at schema {schema_module.SCHEMA_VERSION}" in again.stdout


def test_a_migrated_manifest_has_the_schema_of_a_new_one(old, tmp_path):
    Manifest(old).ensure_schema()
    new = Manifest(tmp_path / "new.sqlite")
    new.ensure_schema()
    assert shape(old) == shape(new.path)


def test_a_failing_migration_leaves_the_manifest_at_its_schema(old, monkeypatch):
    before = dump(old)

    def broken(con):
        con.execute("ALTER TABLE source_files ADD COLUMN root_id INTEGER")
        raise sqlite3.OperationalError("disk I/O error (injected)")

    monkeypatch.setitem(schema_module.MIGRATIONS, 3, broken)
    with pytest.raises(ManifestError, match="left unchanged at schema 2"):
        Manifest(old).ensure_schema()
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert "root_id" not in [r[1] for r in query(old, "PRAGMA table_info(source_files)")]
    assert dump(old) == before


def test_the_next_run_after_the_upgrade_records_the_roots_and_commits_nothing_new(old, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(FIXTURE / "site", site)
    out = cli("run", "--site", str(site), "--db", str(old), "--json", "-q")
    # Exit 1: the latest version, checked by that release's rules, is checked by today's, which that site fails
    # (OMOP tables and Metadata/ files asked for since, the registries)
    assert out.returncode == 1, out.stderr
    assert {"error:omop.missing_table", "error:registry.absent"} <= set(json.loads(out.stdout)["findings"]["by_rule"])
    assert query(old, "SELECT count(*) FROM versions") == [(2,)]  # same contents: no new version
    assert query(old, "SELECT count(*) FROM source_files WHERE time_invalid IS NULL AND root_id IS NULL") == [(0,)]
    assert query(old, "SELECT location, modality FROM roots") == [(site.as_posix(), None)]
    checked = cli("validate", "--db", str(old), "--json", cwd=tmp_path)  # from the recorded root, no --site
    assert checked.returncode == 1 and "registry.absent" in checked.stdout, checked.stderr


def test_registry_on_an_old_manifest_says_how_to_upgrade_and_leaves_it_as_it_was(old, tmp_path):
    # `registry` upgraded the manifest, then needed --site (schema 2 records no roots) and exited 2, which reads as
    # "nothing was done": it asks for the upgrade as the read-only commands do, and changes nothing.
    before = old.read_bytes()
    out = cli("registry", "--db", str(old), "--out", str(tmp_path / "r"), "-q")
    assert out.returncode == 3 and "schema version 2" in out.stderr, out.stderr
    assert f"chorus-batch upgrade --db {old}" in out.stderr and "upgraded the manifest" not in out.stderr
    assert old.read_bytes() == before and not (tmp_path / "r").exists()
    # refused before it gave any: it said "the proc_ids given so far stay recorded in the manifest", its word on a
    # failure midway
    assert "proc_ids" not in out.stderr and "the manifest is as it was" in out.stderr, out.stderr


def test_new_patterns_reclassify_the_current_rows_in_place(tmp_path):
    """Files committed under other patterns (an older release, or chorus.toml) are classified again on the
    next run: records, parse errors, category and layout follow, and no content change is invented."""
    from conftest import run_site, write

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    session = "000101/Waveforms/Telemetry/900001/900001"
    for ext in (".hea", ".dat"):
        write(site, session + ext, b"x")
    write(site, "OMOP/person.csv", b"person_id\n101\n")
    for path in site.rglob("*"):  # (written long enough ago: a racily clean file is read again, and its read recorded)
        if path.is_file():
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - 60 * 10**9))
    first = run_site(site, db, validate_site=False, patterns={"Waveforms": ["^(?P<person_id>nomatch)$"]})
    assert first.errors.filter(pl.col("kind") == "unparseable").height == 2
    second = run_site(site, db, validate_site=False)
    assert second.label is None  # no file changed: no version; the rows are classified again in place
    assert second.counts == {"added": 0, "removed": 0, "replaced": 0, "renamed": 0, "unchanged": 3}
    assert second.errors.height == 0
    rows = query(db, "SELECT srcfile, parse_error, category, layout, record_id IS NOT NULL FROM source_files "
                     "WHERE modality = 'Waveforms' ORDER BY srcfile")
    assert rows == [(session + ".dat", None, "Telemetry", "current", 1), (session + ".hea", None, "Telemetry", "current", 1)]
    assert query(db, "SELECT record_key, isactive FROM registry WHERE modality = 'Waveforms'") == [
        ("Waveforms|000101|Telemetry/900001", 1)]
    assert query(db, "SELECT count(*) FROM run_errors") == [(0,)] and query(db, "SELECT count(*) FROM versions") == [(1,)]
    generation = query(db, "SELECT value FROM meta WHERE key = 'state_generation'")
    run_site(site, db, validate_site=False)
    assert query(db, "SELECT value FROM meta WHERE key = 'state_generation'") == generation


def test_an_upgraded_manifest_gets_todays_classification_without_a_new_version(old, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(FIXTURE / "site", site)
    assert cli("run", "--site", str(site), "--db", str(old), "-q", "--no-validate").returncode == 0
    assert query(old, "SELECT count(*) FROM versions") == [(2,)]
    assert query(old, "SELECT count(*) FROM source_files WHERE time_invalid IS NULL AND layout IS NULL "
                      "AND parse_error IS NULL") == [(0,)]
    assert query(old, "SELECT value IS NOT NULL FROM meta WHERE key = 'classification'") == [(1,)]


# ----------------------------------------------------------------------------- the release before (schema 6)

SCHEMA6 = Path(__file__).resolve().parent / "fixtures" / "schema6"


def test_a_schema_6_manifest_of_the_previous_release_upgrades_without_rewriting_a_row(tmp_path):
    from conftest import run_site

    db = tmp_path / "manifest.sqlite"
    shutil.copy(SCHEMA6 / "manifest.sqlite", db)
    before_columns = [r[1] for r in query(db, "PRAGMA table_info(source_files)")]
    before = query(db, f"SELECT {', '.join(before_columns)} FROM source_files ORDER BY file_id")
    assert [r[3] for r in query(db, "PRAGMA table_info(source_files)") if r[1] == "md5"] == [1]  # NOT NULL then
    out = cli("upgrade", "--db", str(db))
    assert out.returncode == 0 and f"schema 6 -> {schema_module.SCHEMA_VERSION}" in out.stdout, out.stderr
    assert query(db, f"SELECT {', '.join(before_columns)} FROM source_files ORDER BY file_id") == before
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert [r[3] for r in query(db, "PRAGMA table_info(source_files)") if r[1] == "md5"] == [0]  # NULL allowed now
    # Every row was read and hashed by that release (local roots): computed; no etag (not a cloud file).
    assert query(db, "SELECT md5_source, count(*), count(etag) FROM source_files GROUP BY 1") == [("computed", len(before), 0)]

    site = tmp_path / "site"
    shutil.copytree(SCHEMA6 / "site", site)
    result = run_site(site, db, validate_site=False)
    assert result.label is None  # same contents: nothing to commit (the roots moved: rows refreshed)
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]



def test_a_schema_6_source_files_table_a_database_browser_rebuilt_upgrades(tmp_path):
    """A site that edited its manifest in DB Browser for SQLite (a column or index of its own) has source_files
    rebuilt as that tool declares a table: every name quoted, tabs between ("md5"\tTEXT\tNOT NULL). The step to
    schema 7 looked for 'md5 TEXT NOT NULL' unquoted, found none and failed with 'SQLite failed on the manifest ...
    report it' on every try; the same rows under the same columns now upgrade."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(SCHEMA6 / "manifest.sqlite", db)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        columns = con.execute("PRAGMA table_info(source_files)").fetchall()
        indexes = [sql for (sql,) in con.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'source_files' AND sql IS NOT NULL")]
        declared = [f'\t"{name}"\t{kind}' + ("\tNOT NULL" if not_null else "")
                    for _, name, kind, not_null, _, _ in columns]
        primary = [name for _, name, _, _, _, pk in columns if pk]
        con.execute('CREATE TABLE "browser_new" (\n' + ",\n".join(declared) + f',\n\tPRIMARY KEY("{primary[0]}")\n)')
        con.execute("INSERT INTO browser_new SELECT * FROM source_files")
        con.execute("DROP TABLE source_files")
        con.execute('ALTER TABLE browser_new RENAME TO "source_files"')
        for sql in indexes:
            con.execute(sql)
    assert '"md5"\tTEXT\tNOT NULL' in query(db, "SELECT sql FROM sqlite_master WHERE name = 'source_files'")[0][0]
    names = [r[1] for r in columns]
    before = query(db, f"SELECT {', '.join(names)} FROM source_files ORDER BY file_id")

    out = cli("upgrade", "--db", str(db))
    assert out.returncode == 0 and f"schema 6 -> {schema_module.SCHEMA_VERSION}" in out.stdout, out.stderr
    assert query(db, f"SELECT {', '.join(names)} FROM source_files ORDER BY file_id") == before
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert [r[3] for r in query(db, "PRAGMA table_info(source_files)") if r[1] == "md5"] == [0]  # NULL allowed now
    assert query(db, "SELECT md5_source, count(*) FROM source_files GROUP BY 1") == [("computed", len(before))]


# ----------------------------------------------------------------------------- the release before (schema 7)

def upgrades_keeping_every_row(fixture: Path, db: Path, schema: int, *, grown: tuple[str, ...]) -> None:
    """`upgrade` of the fixture's manifest (copied to db) from `schema`: every row reads back as it was; the
    tables in `grown` gain one last column, NULL for the rows written before."""
    shutil.copy(fixture / "manifest.sqlite", db)
    tables = [r[0] for r in query(db, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    before = {table: query(db, f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}
    out = cli("upgrade", "--db", str(db))
    assert out.returncode == 0 and f"schema {schema} -> {schema_module.SCHEMA_VERSION}" in out.stdout, out.stderr
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    for table in tables:
        after = query(db, f"SELECT * FROM {table} ORDER BY 1, 2")
        if table in grown:
            assert [row[:-1] for row in after] == before[table] and {row[-1] for row in after} == {None}, table
        elif table == "meta":
            assert dict(after) == {**dict(before[table]), "schema_version": str(schema_module.SCHEMA_VERSION),
                                   "min_release": schema_module.MIN_RELEASE}
        else:
            assert after == before[table], table


SCHEMA7 = Path(__file__).resolve().parent / "fixtures" / "schema7"


def test_a_schema_7_manifest_of_the_previous_release_gets_an_empty_uploads_ledger(tmp_path):
    from conftest import run_site

    db = tmp_path / "manifest.sqlite"
    # every row kept; runs and versions gain a release column, validations the rules that checked it (schema 9)
    upgrades_keeping_every_row(SCHEMA7, db, 7, grown=("runs", "versions", "validations"))
    # Nothing of either version was uploaded: the ledger and the submissions are empty.
    assert query(db, "SELECT count(*) FROM uploads") == [(0,)]
    assert query(db, "SELECT count(*) FROM submissions") == [(0,)]
    upload_state = cli("versions", "--db", str(db), "--json")
    assert upload_state.returncode == 0, upload_state.stderr

    site = tmp_path / "site"
    shutil.copytree(SCHEMA7 / "site", site)
    result = run_site(site, db, validate_site=False)
    assert result.label is None  # same contents: nothing to commit
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]
    from chorus_batch import release

    assert query(db, "SELECT release FROM runs ORDER BY run_id DESC LIMIT 1") == [(release(),)]


def test_a_migration_failing_after_others_succeeded_leaves_the_manifest_as_it_was(old, monkeypatch):
    before, tables = dump(old), shape(old)

    def broken(con):
        raise sqlite3.OperationalError("disk I/O error (injected)")

    monkeypatch.setitem(schema_module.MIGRATIONS, 5, broken)  # steps 3 and 4 succeed first
    with pytest.raises(ManifestError, match="from schema 2 failed at the step to schema 5.*left unchanged at schema 2"):
        Manifest(old).ensure_schema()
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert shape(old) == tables and dump(old) == before


def test_another_programs_database_with_a_meta_table_is_refused_and_not_changed(tmp_path, site):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    con.execute("INSERT INTO meta VALUES ('foo', 'bar')")
    con.commit()
    con.close()
    (site / "OMOP").mkdir()
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    data = other.read_bytes()
    for args in (("run", "--site", str(site)), ("upgrade",), ("versions",)):
        out = cli(*args, "--db", str(other))
        assert out.returncode == 3 and "not a chorus-batch manifest" in out.stderr, out.stderr
        assert "internal error" not in out.stderr and other.read_bytes() == data


@pytest.mark.parametrize("value, words", [
    (None, "has no schema version"), ("abc", "schema version is 'abc'"), ("", "schema version is ''"),
    ("-1", "schema version is '-1'"), ("0", "schema version is '0'"),
])
def test_a_damaged_schema_version_is_refused_and_nothing_is_changed(old, tmp_path, value, words):
    con = sqlite3.connect(old)
    if value is None:
        con.execute("DELETE FROM meta WHERE key = 'schema_version'")
    else:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (value,))
    con.commit()
    con.close()
    data = old.read_bytes()
    site = tmp_path / "site"  # (beside the manifest: one inside the site root is refused before it is opened)
    site.mkdir()
    for args in (("run", "--site", str(site)), ("upgrade",), ("versions",)):
        out = cli(*args, "--db", str(old))
        assert out.returncode == 3 and words in out.stderr and "fix:" in out.stderr, out.stderr
        assert "internal error" not in out.stderr and "Traceback" not in out.stderr
        assert old.read_bytes() == data


@pytest.mark.parametrize("edit, words", [
    ("UPDATE meta SET value = '12' WHERE key = 'schema_version'", "schema version 12, newer than"),
    ("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'", "schema version is 'abc'"),
    ("INSERT OR REPLACE INTO meta VALUES ('min_release', '9.1.0')", "written by chorus-batch 9.1.0 or later"),
])
def test_a_manifest_refused_for_what_it_holds_is_not_said_to_need_the_command_run_again(old, tmp_path, edit, words):
    """A manifest of a newer schema (a site that rolled back its release), a damaged schema version or a later
    release's mark: `upgrade`, `validate` and `registry` said the command's own word on a failure, "run the same
    command again" (no rerun of this release gets past it), and registry that "the proc_ids given so far stay recorded"
    (none was given). Now each says the manifest is as it was, and it is."""
    assert cli("upgrade", "--db", str(old)).returncode == 0
    with sqlite3.connect(old) as con:
        con.execute(edit)
    con.close()
    data = old.read_bytes()
    registry = () if "min_release" in edit else (("registry", "--out", str(tmp_path / "reg")),)  # (it reads that one)
    for args in (("upgrade",), ("validate",), *registry):
        out = cli(*args, "--db", str(old))
        assert out.returncode == 3 and words in out.stderr, (args, out.stderr)
        assert "the manifest is as it was" in out.stderr, (args, out.stderr)
        assert "run the same command again" not in out.stderr and "proc_ids" not in out.stderr, (args, out.stderr)
        assert old.read_bytes() == data
    assert not (tmp_path / "reg").exists()


def test_a_manifest_of_a_newer_schema_names_the_release_that_wrote_it_to_every_command(old, tmp_path):
    """A manifest a later release wrote (a schema this one does not know; a site that rolled back, a reviewer's
    older install): every command said "upgrade chorus-batch (pip install -U chorus-batch)", naming no release, of a
    manifest that records which release wrote it (its latest run's). Each now names it, and leaves the file as it was."""
    from chorus_batch import release
    from chorus_batch.review import open_manifest

    assert cli("upgrade", "--db", str(old)).returncode == 0
    with sqlite3.connect(old) as con:
        con.execute("UPDATE meta SET value = '12' WHERE key = 'schema_version'")
        con.execute("INSERT INTO runs (run_id, started_at, release) VALUES (99, '2027-01-05T02:00:00Z', '7.3.1+abc')")
    con.close()
    data = old.read_bytes()
    site = tmp_path / "site"
    shutil.copytree(FIXTURE / "site", site)
    azure = {"AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;"
                                                "BlobEndpoint=http://127.0.0.1:9/a;"}
    for args in (("versions",), ("files",), ("changes",), ("diff", "--from", "20261101020000"), ("history", "x"),
                 ("report", "--out", str(tmp_path / "r.html")), ("status", "--site", str(site)),
                 ("run", "--site", str(site)), ("upgrade",), ("validate",), ("registry", "--out", str(tmp_path / "reg")),
                 ("upload", "--dry-run", "--site", str(site), "--to", "az://central/"), ("verify", "--to", "az://central/")):
        out = cli(*args, "--db", str(old), cwd=tmp_path, env=azure)
        assert out.returncode == 3 and "schema version 12, newer than" in out.stderr, (args, out.stderr)
        assert "chorus-batch 7.3.1 wrote it" in out.stderr and "pip install -U 'chorus-batch>=7.3.1'" in out.stderr, (
            args, out.stderr)
        assert "the manifest is as it was" in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
        assert old.read_bytes() == data
    with pytest.raises(ManifestError) as refused:
        open_manifest(old)
    assert "chorus-batch 7.3.1 wrote it" in str(refused.value) and f"({release()})" in str(refused.value)
    assert old.read_bytes() == data
    # one that recorded no later release than this one's is sent to a later release, not told to install this one
    with sqlite3.connect(old) as con:
        con.execute("DELETE FROM runs WHERE run_id = 99")
    con.close()
    out = cli("versions", "--db", str(old))
    assert out.returncode == 3 and "7.3.1" not in out.stderr and f"one later than {release()}" in out.stderr, out.stderr


@pytest.mark.parametrize("edit, words", [
    ("DROP TABLE uploads", "lacks its table uploads"),
    ("DROP TABLE changes", "lacks its table changes"),
    ("ALTER TABLE versions DROP COLUMN mode", "lacks its column versions.mode"),
])
def test_a_current_manifest_with_a_table_dropped_by_hand_is_refused_by_every_command(old, tmp_path, edit, words):
    """A schema-11 manifest with a table (or a column) dropped in a database browser: `versions`, `report` and
    `upload` said "SQLite failed on the manifest: no such table: uploads" with the query and "report it", and `run`
    and `validate` went on and exited 0 on it. Now each says what is missing and how to restore it, exit 3, and the
    file is as it was."""
    assert cli("upgrade", "--db", str(old)).returncode == 0
    with sqlite3.connect(old) as con:
        con.execute(edit)
    con.close()
    data = old.read_bytes()
    site = tmp_path / "site"
    shutil.copytree(FIXTURE / "site", site)
    for args in (("versions",), ("files",), ("validate",), ("upgrade",), ("run", "--site", str(site)),
                 ("report", "--out", str(tmp_path / "r.html")), ("upload", "--script", "bash", "--to", "az://central/")):
        out = cli(*args, "--db", str(old))
        assert out.returncode == 3 and words in out.stderr and "restore it from a backup" in out.stderr, (args, out.stderr)
        assert "the manifest is as it was" in out.stderr and "no such" not in out.stderr, (args, out.stderr)
        assert old.read_bytes() == data
    assert not (tmp_path / "r.html").exists()


_CUT_SHORT = """
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA journal_mode = DELETE")
con.execute("PRAGMA cache_size = 1")  # (the edit's pages reach the file before its end)
con.execute("BEGIN")
con.execute("UPDATE source_files SET md5 = 'edited'")
con.execute("DELETE FROM versions")
os._exit(9)  # killed mid-edit: a hot -journal beside the manifest
"""


def test_a_manifest_with_an_edit_cut_short_in_a_folder_the_reader_cannot_write_is_not_called_damaged(old, tmp_path):
    """A manifest beside a hot -journal (a sqlite3 session or program killed while it edited it) read by a reviewer
    who may not write its folder: read as it is (immutable), `versions` and `report` said "the manifest is damaged:
    database disk image is malformed ... restore it from a backup" of an intact manifest. Now they say what the
    -journal is and who can undo it; once the owner opens it, SQLite undoes the edit and nothing recorded is lost."""
    assert cli("upgrade", "--db", str(old)).returncode == 0
    versions = query(old, "SELECT label FROM versions ORDER BY label")
    subprocess.run([sys.executable, "-c", _CUT_SHORT, str(old)], check=False)
    journal = Path(f"{old}-journal")
    assert journal.stat().st_size > 0
    caps = "-dac_override,-dac_read_search"  # (root's permission override dropped: the reviewer's view)
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"] if os.geteuid() == 0 else []
    os.chmod(old.parent, 0o555)
    try:
        outs = [subprocess.run([*prefix, sys.executable, "-m", "chorus_batch", *args, "--db", str(old)],
                               capture_output=True, text=True, timeout=120, cwd=tmp_path)
                for args in (("versions",), ("files",), ("report", "--out", "-"))]
    finally:
        os.chmod(old.parent, 0o755)
    for out in outs:
        assert out.returncode == 3 and "holds an edit that was cut short" in out.stderr, out.stderr
        assert "damaged" in out.stderr and "is not damaged" in out.stderr and "restore it from a backup" not in out.stderr
        assert str(journal) in out.stderr and "internal error" not in out.stderr
    assert journal.exists()
    owner = cli("versions", "--db", str(old))  # the owner's open undoes the edit
    assert owner.returncode == 0, owner.stderr
    assert query(old, "SELECT label FROM versions ORDER BY label") == versions
    assert query(old, "SELECT count(*) FROM source_files WHERE md5 = 'edited'") == [(0,)]


def test_upgrade_on_a_read_only_mount_is_not_told_to_run_the_same_command_again(tmp_path):
    """An old manifest on a file system mounted read-only (a backup): `upgrade` said to pass --db on a writable file
    system, then "run the same command again", which fails the same way. After a failure the command's own fix says
    what to do; "run the same command again" follows a signal only."""
    source, mounted = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    mounted.mkdir()
    shutil.copy(FIXTURE / "manifest.sqlite", source / "manifest.sqlite")
    assert os.geteuid() == 0, "mounting a folder read-only needs root (as CI runs)"
    subprocess.run(["mount", "--bind", str(source), str(mounted)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        out = cli("upgrade", "--db", str(mounted / "manifest.sqlite"))
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    # (exit 2, a path to fix, nothing done: the lock file that cannot be made there is an output where this user
    # cannot write, as every such output is; it was exit 3, "the manifest was not upgraded")
    assert out.returncode == 2 and "Read-only file system" in out.stderr and "writable" in out.stderr, out.stderr
    assert "run the same command again" not in out.stderr, out.stderr


def test_upgrade_of_an_empty_file_creates_nothing(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    out = cli("upgrade", "--db", str(empty))
    assert out.returncode == 2 and "an empty file" in out.stderr and "schema None" not in out.stdout, out.stdout
    assert empty.stat().st_size == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.sqlite"]  # (no lock file: "nothing was changed")


# ----------------------------------------------------------------------------- the release before (schema 8)

SCHEMA8 = Path(__file__).resolve().parent / "fixtures" / "schema8"


def test_a_schema_8_manifest_is_checked_again_by_todays_rules_not_shown_the_old_findings(tmp_path):
    """A release that adds rules (registry.absent here) must not keep showing an earlier release's findings for
    the versions that release checked: after the upgrade, the latest version is checked again, once, from the
    facts cached with it (only a file whose kind is newer than them is read), and its findings say which rules
    made them."""
    db = tmp_path / "manifest.sqlite"
    upgrades_keeping_every_row(SCHEMA8, db, 8, grown=("validations",))  # + the rules that checked it: NULL, unknown
    latest = "20261203020000"
    assert query(db, "SELECT rule FROM findings WHERE version = ?", (latest,)) == []  # the old release's: none

    site = tmp_path / "site"
    shutil.copytree(SCHEMA8 / "site", site)
    checked = cli("validate", "--db", str(db), "--site", str(site))
    assert "registry.absent" in checked.stdout, checked.stdout + checked.stderr
    assert f"version {latest} was checked by other rules" in checked.stderr
    assert query(db, "SELECT rule FROM findings WHERE version = ?", (latest,)) == [("registry.absent",)]
    from chorus_batch.validate.rules import edition

    # (the files whose kinds are newer than the manifest's facts are read: its 15 CSV files, each CSV kind's header row
    # now read as a CSV record (omop_csv.v2 and the others); the 7 WFDB headers, wfdb_header.v11; READINESS.md and
    # SUBMISSION.md, metadata_md.v5)
    assert query(db, "SELECT rules, headers_read FROM validations WHERE version = ?", (latest,)) == [(edition(), 15 + 7 + 2)]
    # Checked by today's rules now: the next look shows what is stored, and says nothing of other rules.
    again = cli("validate", "--db", str(db), "--site", str(site))
    assert again.returncode == checked.returncode and "registry.absent" in again.stdout
    assert "other rules" not in again.stderr
    # The first version was not asked about: it keeps the old release's findings, marked as such.
    assert query(db, "SELECT rules FROM validations WHERE version = '20261202020000'") == [(None,)]


# ----------------------------------------------------------------------------- the previous release (d460234, schema 9)

RELEASE_D460234 = Path(__file__).resolve().parent / "fixtures" / "release-d460234"


def test_the_previous_releases_manifest_is_classified_and_read_again_once_and_keeps_every_row(tmp_path):
    """Same schema, other classification logic and fact kinds (README there): today's first run classifies the
    current rows again in place, reads the files of newer kinds once, checks the latest version by today's rules,
    and keeps what that release recorded; the next run does nothing again."""
    db, site = tmp_path / "manifest.sqlite", tmp_path / "site"
    shutil.copy(RELEASE_D460234 / "manifest.sqlite", db)
    shutil.copytree(RELEASE_D460234 / "site", site)
    first, latest = "20261203020000", "20261204020000"
    kept = {"versions": "SELECT * FROM versions", "changes": "SELECT * FROM changes",
            "registry": "SELECT * FROM registry", "scan_errors": "SELECT * FROM scan_errors",
            "first findings": f"SELECT * FROM findings WHERE version = '{first}'",
            "first validation": f"SELECT * FROM validations WHERE version = '{first}'",
            "files": "SELECT file_id, srcfile, md5, size, time_valid, time_invalid, version_valid, version_invalid "
                     "FROM source_files", "facts": "SELECT * FROM file_facts"}
    before = {name: sorted(query(db, sql)) for name, sql in kept.items()}
    looks = [("files", "--as-of", first, "--md5sum"), ("files", "--as-of", latest, "--md5sum"),
             ("changes", "--version", latest, "--md5sum"), ("diff", "--from", first, "--to", latest, "--md5sum")]
    # `upgrade` (what a site runs after installing): schema 10 (min_release) and on, and what the next run will do
    said = cli("upgrade", "--db", str(db))
    assert said.returncode == 0, said.stderr
    assert f"schema 9 -> {schema_module.SCHEMA_VERSION}; the next run classifies the current rows again" in said.stdout
    assert f"checks version {latest} again by this release's rules" in said.stdout, said.stdout
    seen = [cli(*look, "--db", str(db)).stdout for look in looks]  # (what schema 9 showed: the step adds one meta row)
    assert all(seen), seen

    out = cli("run", "--site", str(site), "--db", str(db), "--json", "--verify-sample", "0")
    assert out.returncode == 1, out.stderr  # today's rule registry.procedure_person: an error
    # Said: why an unchanged file is unparseable now, and that nothing but its classification changed.
    assert "1 unchanged file is classified otherwise now, updated in place" in out.stderr, out.stderr
    result = json.loads(out.stdout)
    assert result["version"] is None and query(db, "SELECT count(*) FROM versions") == [(2,)]  # no content changed
    for name, sql in kept.items():
        after = sorted(query(db, sql))
        # (facts: those of kinds still read kept, the others deleted, today's kinds added)
        assert after == before[name] or name == "facts" and {row for row in before[name] if row[0] in KINDS} < set(after), name
    assert [cli(*look, "--db", str(db)).stdout for look in looks] == seen  # time travel shows what it showed

    # Classified again in place: 10001.h5 is not a file of session 1000 any more; its record stays (1000.*).
    assert query(db, "SELECT parse_error IS NOT NULL, record_id, category FROM source_files "
                     "WHERE srcfile LIKE '%/10001.h5' AND time_invalid IS NULL") == [(1, None, None)]
    from chorus_batch.classify import CLASSIFY_LOGIC

    assert query(db, "SELECT value FROM meta WHERE key = 'classification'")[0][0].startswith(f"{CLASSIFY_LOGIC}:")
    # The newer kinds read once each (procedure_occurrence.csv; waveform_registry.csv; visit_occurrence.csv; READINESS.md
    # and SUBMISSION.md; the WFDB headers, wfdb_header.v11), and today's rules applied.
    assert query(db, "SELECT kind, count(*) FROM file_facts WHERE kind IN ('omop_procedures.v7', 'registry_csv.v18', "
                     "'omop_visits.v11', 'metadata_md.v5', 'wfdb_header.v11', 'dicom.v17') GROUP BY kind ORDER BY kind") == [
        ("metadata_md.v5", 2), ("omop_procedures.v7", 1), ("omop_visits.v11", 1), ("registry_csv.v18", 1),
        ("wfdb_header.v11", 7)]
    from chorus_batch.validate.rules import edition

    # (its 18 CSV files too: every CSV kind is newer, its header row read as a CSV record)
    assert query(db, "SELECT rules, headers_read FROM validations WHERE version = ?", (latest,)) == [(edition(), 18 + 7)]
    rules = {rule for (rule,) in query(db, "SELECT rule FROM findings WHERE version = ?", (latest,))}
    assert {"registry.procedure_person", "path.unparsed"} <= rules

    # The next run: nothing classified, read or checked again; the manifest's state stays as it is.
    state = query(db, "SELECT key, value FROM meta ORDER BY key")
    facts, findings = query(db, "SELECT count(*) FROM file_facts"), sorted(query(db, "SELECT * FROM findings"))
    again = cli("run", "--site", str(site), "--db", str(db), "--json", "--verify-sample", "0")
    assert again.returncode == 1 and json.loads(again.stdout)["version"] is None, again.stderr
    assert "classified otherwise" not in again.stderr and "other rules" not in again.stderr
    assert query(db, "SELECT key, value FROM meta ORDER BY key") == state
    assert query(db, "SELECT count(*) FROM file_facts") == facts and sorted(query(db, "SELECT * FROM findings")) == findings
    assert query(db, "SELECT headers_read FROM validations WHERE version = ?", (latest,)) == [(18 + 7,)]
    assert cli("upgrade", "--db", str(db)).stdout.endswith(f"already at schema {schema_module.SCHEMA_VERSION}; nothing to do\n")


def test_a_version_checked_by_a_later_release_is_not_said_to_be_an_earlier_ones(tmp_path):
    """A site that rolled back (a later release of the same schema ran, then this one): the latest version's
    rules are that release's; the run says which rules checked it, not 'an earlier release's'."""
    db, site = tmp_path / "manifest.sqlite", tmp_path / "site"
    shutil.copy(RELEASE_D460234 / "manifest.sqlite", db)
    shutil.copytree(RELEASE_D460234 / "site", site)
    later = "0.2.0+0123456789ab"
    con = sqlite3.connect(db)
    con.execute("UPDATE validations SET rules = ? WHERE version = '20261204020000'", (later,))
    con.commit()
    con.close()
    out = cli("validate", "--db", str(db), "--site", str(site))
    from chorus_batch.validate.rules import edition

    assert f"version 20261204020000 was checked by other rules ({later}; this release's: {edition()}): checking it again " \
           "with this release's, from the facts already read (files of kinds this release reads otherwise are read " \
           "again)" in out.stderr, \
        out.stderr
    assert "earlier release" not in out.stderr


def test_a_manifest_a_later_release_marked_is_read_but_not_written_by_this_one(tmp_path):
    """A site that rolled back: the previous release (schema 9) ran on a manifest this one had classified and
    checked, and undid both without a word. Schema 10 keeps meta.min_release: a release older than it refuses to
    write (run, validate, upgrade, registry giving proc_ids: exit 3, nothing changed, the release to install named),
    and still reads."""
    db, site = tmp_path / "manifest.sqlite", tmp_path / "site"
    shutil.copy(RELEASE_D460234 / "manifest.sqlite", db)
    shutil.copytree(RELEASE_D460234 / "site", site)
    assert cli("upgrade", "--db", str(db)).returncode == 0
    assert query(db, "SELECT value FROM meta WHERE key = 'min_release'") == [(schema_module.MIN_RELEASE,)]
    with sqlite3.connect(db) as con:  # as a later release leaves it
        con.execute("UPDATE meta SET value = '9.1.0' WHERE key = 'min_release'")
    before = {t: query(db, f"SELECT * FROM {t} ORDER BY 1") for t in ("meta", "versions", "source_files", "findings",
                                                                       "registry")}
    assert query(db, "SELECT count(*) FROM registry WHERE proc_id IS NULL")[0][0] > 0  # registry would give proc_ids
    # (registry gave them by this release's rules, exit 0)
    for argv in (("run", "--site", str(site)), ("validate",), ("upgrade",),
                 ("registry", "--site", str(site), "--out", str(tmp_path / "reg"))):
        out = cli(*argv, "--db", str(db))
        assert out.returncode == 3, (argv, out.stderr)
        assert "written by chorus-batch 9.1.0 or later" in out.stderr and "install chorus-batch 9.1.0 or later" in out.stderr
        assert "Traceback" not in out.stderr
    assert {t: query(db, f"SELECT * FROM {t} ORDER BY 1") for t in before} == before
    assert not (tmp_path / "reg").exists()
    assert cli("versions", "--db", str(db)).returncode == 0  # reading it works


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_in_the_upgrades_transaction_leaves_schema_2_and_the_next_upgrade_succeeds(old, signum):
    proc = paused("upgrade", "--db", str(old), at="upgrade")
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[signum], err
    if signum != signal.SIGKILL:
        assert "the manifest was not upgraded" in err and "had been committed" not in err, err
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]
    assert query(old, "PRAGMA integrity_check") == [("ok",)]
    again = cli("upgrade", "--db", str(old))
    assert again.returncode == 0 and "schema 2 -> " in again.stdout, again.stderr
    assert cli("versions", "--db", str(old)).returncode == 0


@pytest.mark.parametrize("command", ["upgrade", "run"])
def test_a_signal_raised_once_the_upgrade_committed_says_it_was_upgraded(old, command, tmp_path):
    """SQLite commits in C: a SIGTERM that came while the commit wrote is raised after it. The message said "the
    manifest was not upgraded (... undone when cut short)" of a manifest at the new schema."""
    args = ["--site", str(FIXTURE / "site"), "--no-validate"] if command == "run" else []
    proc = paused(command, "--db", str(old), *args, at="upgraded", cwd=tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(schema_module.SCHEMA_VERSION),)]
    assert "not upgraded" not in err, err
    assert f"the upgrade of the manifest from schema 2 to {schema_module.SCHEMA_VERSION} had been committed" in err, err
    if command == "run":
        assert "nothing was committed" in err, err  # no version: the run stopped before its work
    assert query(old, "SELECT count(*) FROM versions") == [(2,)]
    assert cli("versions", "--db", str(old)).returncode == 0
    again = cli("upgrade", "--db", str(old))
    assert again.returncode == 0 and "already at schema" in again.stdout, again.stderr


# ----------------------------------------------------------------------------- the previous release (f9a987f, schema 10)

RELEASE_F9A987F = Path(__file__).resolve().parent / "fixtures" / "release-f9a987f"


def test_the_copy_of_many_facts_is_said_before_it_starts(tmp_path, monkeypatch, caplog):
    """10 -> 11 copies every cached fact (650k: 6.9 s), and the upgrade printed nothing meanwhile: said first, with
    the count, and that a stopped upgrade leaves the manifest as it was."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    n = query(db, "SELECT count(*) FROM file_facts")[0][0]
    monkeypatch.setattr(schema_module, "SAY_COPY_FROM", n)
    with caplog.at_level(logging.INFO, logger="chorus_batch"):
        assert Manifest(db).ensure_schema(create=False) == (10, schema_module.SCHEMA_VERSION)
    said = [r.getMessage() for r in caplog.records if "copying" in r.getMessage()]
    assert len(said) == 1 and f"its {n} cached header facts" in said[0] and "stays as it was" in said[0], said
    caplog.clear()
    monkeypatch.setattr(schema_module, "SAY_COPY_FROM", n + 1)  # fewer: nothing said
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    Manifest(db).ensure_schema(create=False)
    assert not [r for r in caplog.records if "copying" in r.getMessage()]


def test_the_schema_10_facts_table_is_rebuilt_with_every_fact_and_none_is_read_again(tmp_path):
    """10 -> 11: header facts leave the WITHOUT ROWID table for a rowid one with a unique (kind, md5) index; every
    fact is kept, so neither the next run nor a forced check reads a header again."""
    db, site = tmp_path / "manifest.sqlite", tmp_path / "site"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    shutil.copytree(RELEASE_F9A987F / "site", site)
    latest = "20261202020000"
    kept = {table: sorted(query(db, f"SELECT * FROM {table}"))
            for table in ("file_facts", "source_files", "versions", "changes", "findings", "registry")}
    assert query(db, "SELECT count(*) FROM file_facts")[0][0] > 30
    assert "WITHOUT ROWID" in query(db, "SELECT sql FROM sqlite_master WHERE name = 'file_facts'")[0][0]

    said = cli("upgrade", "--db", str(db))
    assert said.returncode == 0 and f"schema 10 -> {schema_module.SCHEMA_VERSION}" in said.stdout, said.stdout
    assert "WITHOUT ROWID" not in query(db, "SELECT sql FROM sqlite_master WHERE name = 'file_facts'")[0][0]
    assert {table: sorted(query(db, f"SELECT * FROM {table}")) for table in kept} == kept
    con = sqlite3.connect(db)
    try:  # still one row per content and kind
        kind, md5, facts = con.execute("SELECT kind, md5, facts FROM file_facts LIMIT 1").fetchone()
        with pytest.raises(sqlite3.IntegrityError):
            con.execute("INSERT INTO file_facts VALUES (?, ?, ?)", (kind, md5, facts))
    finally:
        con.close()
    new = Manifest(tmp_path / "new.sqlite")
    new.ensure_schema()
    assert shape(db) == shape(new.path)

    out = cli("run", "--site", str(site), "--db", str(db), "--json", "--verify-sample", "0")
    assert out.returncode == 0 and json.loads(out.stdout)["version"] is None, out.stderr
    # (stamped far back: the run may have checked it again within this second, by rules added since the fixture)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("UPDATE validations SET validated_at = '2000-01-01T00:00:00Z' WHERE version = ?", (latest,))
    forced = cli("validate", "--db", str(db), "--site", str(site), "--force")
    assert forced.returncode == 0, forced.stderr
    # checked again (a new stamp), from the facts kept: no header read
    assert query(db, "SELECT validated_at > '2000-01-01T00:00:00Z', headers_read FROM validations WHERE version = ?",
                 (latest,)) == [(1, 0)]
    # every fact of a kind still read kept; a kind whose reader changed since the fixture (registry_csv.v18) is read
    # once, by the run, and the old kind's facts deleted (store.validation._forget_other_kinds)
    after = sorted(query(db, "SELECT * FROM file_facts"))
    fixture_kinds = {kind for kind, _, _ in kept["file_facts"]}
    assert [row for row in after if row[0] in fixture_kinds] == [row for row in kept["file_facts"] if row[0] in KINDS]
    assert {row[0] for row in after} <= set(KINDS)


def test_upgrade_of_a_current_manifest_in_a_folder_the_reader_cannot_write_says_there_is_nothing_to_do(site, db):
    """A reviewer's `upgrade` of a manifest already at this schema, in a folder they cannot write, took the run lock
    first: "cannot create or open the manifest's lock file ... the manifest was not upgraded", exit 3, of a manifest
    that needed no upgrade. It is read first now; the lock is taken only for an upgrade to do."""
    import sys

    (site / "OMOP").mkdir(parents=True, exist_ok=True)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    caps = "-dac_override,-dac_read_search"  # (root's permission override dropped: the reviewer's view)
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"] if os.geteuid() == 0 else []
    for side in db.parent.glob(f"{db.name}.*"):  # (a reviewer's copy of the manifest alone)
        side.unlink()
    os.chmod(db.parent, 0o555)
    try:
        out = subprocess.run([*prefix, sys.executable, "-m", "chorus_batch", "upgrade", "--db", str(db)],
                             capture_output=True, text=True, timeout=120)
    finally:
        os.chmod(db.parent, 0o755)
    assert out.returncode == 0, out.stderr
    assert f"already at schema {schema_module.SCHEMA_VERSION}" in out.stdout


def test_an_index_dropped_by_hand_is_created_again_by_the_next_run_and_by_upgrade(site, db):
    """An index of the manifest dropped by hand (`DROP INDEX source_files_path` in sqlite3) stayed dropped: every run
    after read the whole source_files table for each lookup by path, slower with each version, with no word."""
    (site / "OMOP").mkdir(parents=True, exist_ok=True)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    every = sorted(schema_module.index_name(d) for d in (*schema_module.INDEXES, *schema_module.SOURCE_FILES_INDEXES))

    def indexes() -> list[str]:
        return sorted(n for (n,) in query(db, "SELECT name FROM sqlite_master WHERE type = 'index' "
                                              "AND name NOT LIKE 'sqlite_autoindex%'"))

    assert indexes() == every
    query(db, "DROP INDEX source_files_path")
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "lacks its index source_files_path" in out.stderr and indexes() == every
    query(db, "DROP INDEX findings_version")
    query(db, "DROP INDEX source_files_current")
    out = cli("upgrade", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "created again its indexes findings_version, source_files_current" in out.stdout and indexes() == every
    assert "nothing to do" in cli("upgrade", "--db", str(db)).stdout


def test_a_command_that_only_reads_a_manifest_names_an_index_dropped_by_hand(site, db):
    """The commands that only read a manifest (`versions`, `files`, `diff`, `history`) answered a manifest whose
    indexes were dropped by hand rightly but without a word, each question walking a whole table: a reviewer waited
    and never learnt why (only a run or `upgrade` creates them again, and says so). Each now names them once, with
    the command that creates them again, answers as before, and changes nothing."""
    (site / "OMOP").mkdir(parents=True, exist_ok=True)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v1").returncode == 0
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n2\n")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v2").returncode == 0
    commands = (("versions",), ("files", "--as-of", "v1"), ("diff", "--from", "v1", "--to", "v2"),
                ("history", "OMOP/person.csv"))
    answers = {args: cli(*args, "--db", str(db)).stdout for args in commands}
    query(db, "DROP INDEX source_files_path")
    query(db, "DROP INDEX changes_version")
    for args in commands:
        out = cli(*args, "--db", str(db))
        assert out.returncode == 0 and out.stdout == answers[args], (args, out.stderr)
        assert out.stderr.count("lacks its indexes changes_version, source_files_path") == 1, (args, out.stderr)
        assert f"chorus-batch upgrade --db {db}" in out.stderr
    assert {"changes_version", "source_files_path"} <= set(schema_module.missing_indexes(sqlite3.connect(db)))
    assert cli("upgrade", "--db", str(db)).returncode == 0
    assert "lacks" not in cli("files", "--db", str(db)).stderr


def test_an_upgrade_whose_temporary_folder_fills_names_that_folder_not_the_manifests(tmp_path, small_disk, monkeypatch):
    """Step 11 builds the facts' unique index in SQLite's temporary folder ($SQLITE_TMPDIR, else $TMPDIR: a compute
    node's small tmpfs). The upgrade said "check the free space and permissions of the manifest's folder", a disk with
    gigabytes free; it names the temporary folder and SQLITE_TMPDIR, as a run does, and the manifest stays at 10."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(Path(__file__).resolve().parent / "fixtures" / "release-f9a987f" / "manifest.sqlite", db)
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # facts enough that the index build sorts on disk
        con.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150000) "
                    "INSERT INTO file_facts SELECT 'filler.v1', printf('%032x', i), printf('{\"pad\": \"%s\"}', "
                    "hex(randomblob(60))) FROM n")
    before = query(db, "SELECT count(*) FROM file_facts")
    filler = fill(small_disk)
    monkeypatch.delenv("SQLITE_TMPDIR", raising=False)
    # (a process of its own: SQLite takes its temporary folder from the environment once, when it starts)
    out = subprocess.run([sys.executable, "-m", "chorus_batch", "upgrade", "--db", str(db)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "TMPDIR": str(small_disk)})
    assert out.returncode == 3, out.stderr
    assert f"where: {small_disk} (SQLite's temporary folder" in out.stderr and "SQLITE_TMPDIR=" in out.stderr, out.stderr
    assert "manifest's folder" not in out.stderr and "left unchanged at schema 10" in out.stderr, out.stderr
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("10",)]
    assert query(db, "SELECT count(*) FROM file_facts") == before
    filler.unlink()
    again = cli("upgrade", "--db", str(db), env={"TMPDIR": str(small_disk)})
    assert again.returncode == 0 and "schema 10 -> 11" in again.stdout, again.stderr


def test_an_upgrade_of_a_torn_copy_says_it_is_damaged_and_how_to_restore_it(old):
    """A manifest copied while a run wrote it (a backup job's torn copy) holds pages of two moments: SQLite says
    "database disk image is malformed" in the upgrade's steps, and the upgrade said "check the free space and
    permissions of the manifest's folder, then run again", which fails the same way every night. It says the
    manifest is damaged, how to restore or salvage it, and the manifest stays at schema 2."""
    with contextlib.closing(sqlite3.connect(old)) as con:
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'source_files'").fetchone()[0]
        page = con.execute("PRAGMA page_size").fetchone()[0]
    with open(old, "r+b") as f:  # the table's root page from another moment: not a b-tree page SQLite can read
        f.seek((root - 1) * page)
        f.write(b"\x0d" + b"\xff" * (page - 1))
    out = cli("upgrade", "--db", str(old))
    assert out.returncode == 3 and "the manifest is damaged" in out.stderr and "malformed" in out.stderr, out.stderr
    assert "restore it from a backup" in out.stderr and ".salvaged" in out.stderr, out.stderr
    assert "free space" not in out.stderr and "left unchanged at schema 2" in out.stderr, out.stderr
    assert query(old, "SELECT value FROM meta WHERE key = 'schema_version'") == [("2",)]


def test_a_run_whose_upgrade_fails_is_recorded_in_runs_once_the_manifest_is_back(old, tmp_path):
    """A `run` whose upgrade of an older manifest failed (here a torn copy; a full disk alike) left no `runs` row: its
    table could not be written, and the nights it failed read as a quiet site in the report. Its row waits beside the
    manifest, as a run the lock turned away does, and the next run that ends on it (restored from a backup) records
    it, with its exit code and why."""
    site = tmp_path / "site"
    shutil.copytree(FIXTURE / "site", site)
    with contextlib.closing(sqlite3.connect(old)) as con:
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'source_files'").fetchone()[0]
        page = con.execute("PRAGMA page_size").fetchone()[0]
    with open(old, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"\x0d" + b"\xff" * (page - 1))
    failed = cli("run", "--site", str(site), "--db", str(old), "--no-validate", "-q")
    assert failed.returncode == 3 and "the manifest is damaged" in failed.stderr, failed.stderr
    shutil.copy(FIXTURE / "manifest.sqlite", old)  # restored from a backup
    before = query(old, "SELECT count(*) FROM runs")[0][0]
    again = cli("run", "--site", str(site), "--db", str(old), "--no-validate", "-q")
    assert again.returncode in (0, 1), again.stderr
    rows = query(old, "SELECT exit_code, version, message FROM runs ORDER BY run_id")[before:]
    assert sorted(code for code, _, _ in rows) == [again.returncode, 3], rows
    code, version, message = next(row for row in rows if row[0] == 3)
    assert version is None and "the manifest is damaged" in message and "nothing was committed" in message, message


@pytest.mark.parametrize("table", ["source_files", "runs"])
def test_a_damaged_old_manifest_is_refused_before_the_upgrade_writes_it(tmp_path, table):
    """A schema-10 manifest with a damaged page in a table no step reads (source_files, runs): the steps went past
    it, `upgrade` said "upgraded ... from schema 10 to 11" (exit 0) of the damaged file, and a `run` upgraded it, then
    failed "the manifest is damaged ... nothing was written to it". Checked before the first step: refused (exit 3),
    the file as it was, as a damaged manifest is in every command."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        page = con.execute("PRAGMA page_size").fetchone()[0]
    with open(db, "r+b") as f:  # the start of the table's root page lost (a disk that lost a write)
        f.seek((root - 1) * page)
        f.write(b"\xff" * 64)
    data = db.read_bytes()
    site = tmp_path / "site"
    shutil.copytree(RELEASE_F9A987F / "site", site)
    for args in (("upgrade",), ("run", "--site", str(site)), ("validate", "--site", str(site))):
        out = cli(*args, "--db", str(db))
        assert out.returncode == 3 and "the manifest is damaged" in out.stderr, (args, out.stderr)
        assert "restore it from a backup" in out.stderr and "nothing was written to it" in out.stderr, out.stderr
        assert "upgraded the manifest" not in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert db.read_bytes() == data, args


def test_an_upgrade_another_program_keeps_from_beginning_names_no_step(tmp_path):
    """Another program writing the old manifest (a database browser's open transaction): the upgrade's transaction
    could not begin, and it said "failed at the step to schema 10" of a manifest at schema 10, a step there is not.
    It says it could not begin, that the manifest is busy, and the manifest stays as it was."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as writer, \
            contextlib.closing(sqlite3.connect(db, timeout=0)) as con:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO meta VALUES ('browser', 'editing')")
        with pytest.raises(ManifestError) as refused:
            schema_module.upgrade(con, str(db), Manifest(db).failure)
        writer.execute("ROLLBACK")
    said = str(refused.value)
    assert "from schema 10 could not begin" in said and "the manifest is busy" in said, said
    assert "step to schema 10" not in said and "left unchanged at schema 10" in said, said
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("10",)]


def test_a_sites_own_view_and_trigger_on_the_facts_table_do_not_stop_the_upgrade(tmp_path):
    """A view or trigger a site added by hand (sqlite3 `CREATE VIEW`) that reads file_facts: the step to schema 11
    failed with 'error in view ...: no such table: main.file_facts' between its DROP and RENAME, called the manifest
    damaged and sent the site to a backup holding the same view; every later upgrade failed the same way."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("CREATE VIEW facts_per_kind AS SELECT kind, count(*) AS n FROM file_facts GROUP BY kind")
        con.execute("CREATE TRIGGER site_note AFTER INSERT ON findings BEGIN SELECT count(*) FROM file_facts; END")
        con.execute("CREATE TABLE site_notes (note TEXT)")
        con.execute("CREATE INDEX site_by_md5 ON source_files(md5)")
    per_kind = sorted(query(db, "SELECT kind, count(*) FROM file_facts GROUP BY kind"))

    said = cli("upgrade", "--db", str(db))
    assert said.returncode == 0 and f"schema 10 -> {schema_module.SCHEMA_VERSION}" in said.stdout, said.stderr
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [(str(schema_module.SCHEMA_VERSION),)]
    # the site's own view, trigger, table and index stay, and the view reads the new table
    assert sorted(query(db, "SELECT kind, n FROM facts_per_kind")) == per_kind
    assert {name for (name,) in query(db, "SELECT name FROM sqlite_master")} >= {
        "facts_per_kind", "site_note", "site_notes", "site_by_md5"}
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert query(db, "PRAGMA legacy_alter_table") == [(0,)]  # (a new connection: the default)


def test_an_old_manifest_whose_dropped_unique_index_its_rows_now_break_is_said_so(tmp_path):
    """An old manifest whose one-current-row-per-path index was dropped by hand, and a path made current twice meanwhile:
    the upgrade said it 'failed at the step to schema 11' (a step that had succeeded) and that 'its tables are not those
    of schema 10' (they were); it names the index and the rows, as a run on a current manifest does."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("DROP INDEX source_files_current")
        con.execute("INSERT INTO source_files (record_id, person_id, srcfile, modality, size, mtime_ns, md5, time_valid, "
                    "version_valid) SELECT record_id, person_id, srcfile, modality, size, mtime_ns, md5, time_valid, "
                    "version_valid FROM source_files WHERE time_invalid IS NULL LIMIT 1")
    rows = query(db, "SELECT * FROM source_files ORDER BY file_id")

    out = cli("upgrade", "--db", str(db))
    assert out.returncode == 3, out.stderr
    assert "creating its index source_files_current" in out.stderr and "edited while it was gone" in out.stderr, out.stderr
    assert "the step to schema" not in out.stderr and "not those of schema" not in out.stderr, out.stderr
    assert "restore the manifest from a backup" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("10",)]
    assert query(db, "SELECT * FROM source_files ORDER BY file_id") == rows


def test_upgrade_help_says_the_whole_upgrade_is_one_transaction():
    """The help said 'one numbered step at a time, each one transaction', so a site whose upgrade was killed looked for
    a manifest left between two steps; the upgrade is one transaction (README, schema.upgrade)."""
    out = cli("upgrade", "--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "all in one transaction" in text and "each one transaction" not in text, out.stdout
    assert "leaves the manifest at the schema it had" in text, out.stdout


@pytest.mark.parametrize("command", ["upgrade", "run"])
def test_an_upgrade_of_a_manifest_another_program_holds_exclusively_says_so_within_seconds(tmp_path, command):
    """An sqlite3 shell's `BEGIN EXCLUSIVE` held open on a rollback-journal manifest: every open waited SQLite's 30 s
    (the probe, then the schema read), about a minute, and said "the manifest is busy", exit 3. It says another
    program holds it, how to let it go, exit 4 (locked) within seconds, and the manifest is as it was."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as shell:
        shell.execute("PRAGMA journal_mode = DELETE")
        shell.execute("BEGIN EXCLUSIVE")
        shell.execute("SELECT count(*) FROM meta").fetchone()
        args = ["--site", str(RELEASE_F9A987F / "site"), "--no-validate"] if command == "run" else []
        started = time.monotonic()
        out = cli(command, "--db", str(db), *args, cwd=tmp_path, timeout=55)
        took = time.monotonic() - started
        shell.execute("ROLLBACK")
    assert out.returncode == 4, out.stderr
    assert took < 25, took  # (the lock's wait is a sleep: under load too)
    assert "another program holds the manifest locked" in out.stderr and "ROLLBACK" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "as it was" in out.stderr, out.stderr
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("10",)]


def test_a_run_killed_while_it_upgrades_is_said_by_status_and_recorded_by_the_next_run(tmp_path):
    """A `run` SIGKILLed in its own upgrade's transaction left no `runs` row: the next run upgraded the manifest again
    and nothing said the killed one had been, nor what became of it. A reading command says it (the manifest still at
    the old schema), and the next run records it as killed (137), its upgrade undone; once only."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    site = ["--site", str(RELEASE_F9A987F / "site"), "--no-validate"]
    before = query(db, "SELECT count(*) FROM runs")[0][0]
    proc = paused("run", "--db", str(db), *site, at="upgrade", cwd=tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert query(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [("10",)]
    status = cli("status", "--db", str(db), *site, cwd=tmp_path)
    assert status.returncode == 3, status.stderr
    assert f"pid {proc.pid} " in status.stderr and "was killed before or while it upgraded it" in status.stderr, status.stderr
    assert "the upgrade was undone" in status.stderr and "Traceback" not in status.stderr, status.stderr
    # `upgrade`, as the message says, records it (it takes the details away); the run after it adds no second row
    upgraded = cli("upgrade", "--db", str(db), cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    again = cli("run", "--db", str(db), *site, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    killed = query(db, "SELECT pid, exit_code, message FROM runs WHERE exit_code = 137")
    assert len(killed) == 1 and killed[0][:2] == (proc.pid, 137), killed
    assert "while it upgraded the manifest from schema 10 to 11" in killed[0][2], killed
    assert "the upgrade was undone" in killed[0][2] and "nothing was committed" in killed[0][2], killed
    assert query(db, "SELECT count(*) FROM runs")[0][0] == before + 2


def _release_run_killed_at(tmp_path: Path, at: str):
    """A copy of release f9a987f's manifest and a `run` of its site SIGKILLed at its pause `at`: (db, the run's
    site arguments, the killed process)."""
    db = tmp_path / "manifest.sqlite"
    shutil.copy(RELEASE_F9A987F / "manifest.sqlite", db)
    site = ["--site", str(RELEASE_F9A987F / "site"), "--no-validate"]
    proc = paused("run", "--db", str(db), *site, at=at, cwd=tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return db, site, proc


@pytest.mark.parametrize("after", ["run", "validate"])
def test_a_run_killed_while_it_upgrades_is_recorded_by_the_next_command_that_upgrades(tmp_path, after):
    db, site, proc = _release_run_killed_at(tmp_path, "upgrade")
    out = cli(after, "--db", str(db), *(site if after == "run" else site[:2]), cwd=tmp_path)
    assert out.returncode in (0, 1), out.stderr
    killed = query(db, "SELECT pid, message FROM runs WHERE exit_code = 137")
    assert len(killed) == 1 and killed[0][0] == proc.pid and "from schema 10 to 11" in killed[0][1], killed


def test_a_run_killed_after_it_began_is_recorded_once_as_killed(tmp_path):
    """A run killed once its own `runs` row is written is finished by the next as before, not given a second row."""
    db, site, proc = _release_run_killed_at(tmp_path, "run-finished")
    assert cli("run", "--db", str(db), *site, cwd=tmp_path).returncode == 0
    killed = query(db, "SELECT pid, message FROM runs WHERE pid = ?", (proc.pid,))
    assert len(killed) == 1 and "found by the next run" in killed[0][1] and "upgraded" not in killed[0][1], killed
