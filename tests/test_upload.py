"""Submission to the central container, against a real Azurite: `upload` sends each version's change set
under <version>/ with the manifest's MD5 as Content-MD5 and records it in the ledger; `verify` checks the
ledger against the container (and the bytes, with --download); a killed or cut-off upload resumes without
sending confirmed files again; `upload --script` and `mark-uploaded` for sites that use the Azure CLI."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from conftest import cli, paused, query, write
from services import Azurite, set_content_md5

AZURE_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT",
              "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY")


def _files_confirmed(n: int) -> str:
    """What an upload stopped early says it recorded ('1 file ... is', '3 files ... are')."""
    return f"{n} file confirmed by this upload is" if n == 1 else f"{n} files confirmed by this upload are"


def central_for(azurite, monkeypatch, tmp_path) -> SimpleNamespace:
    for name in AZURE_VARS:
        monkeypatch.delenv(name, raising=False)
    container = azurite.new_container("central")
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "CHORUS_BATCH_RETRY_BASE_S": "0.01",
           "CHORUS_BATCH_RETRY_DEADLINE_S": "3", "CHORUS_BATCH_CACHE_DIR": str(tmp_path / "cache")}
    return SimpleNamespace(container=container, url=f"az://{container}/", env=env,
                           client=azurite.service_client().get_container_client(container))


@pytest.fixture
def central(azurite, monkeypatch, tmp_path):
    return central_for(azurite, monkeypatch, tmp_path)


def settled_blobs(central, prefix: str = "") -> dict[str, tuple[int, str | None, str]]:
    """blobs() once the storage has finished the writes of an upload killed with SIGKILL: a request it had sent
    completes at the storage after the process is gone (a loaded machine: one blob of the killed upload appeared after
    the listing taken as "before" and was taken for the second upload's). Two listings 0.5 s apart that agree."""
    listed = blobs(central, prefix)
    for _ in range(40):
        time.sleep(0.5)
        again = blobs(central, prefix)
        if again == listed:
            return listed
        listed = again
    return listed


def blobs(central, prefix: str = "") -> dict[str, tuple[int, str | None, str]]:
    """name -> (size, Content-MD5 as hex, etag) of every blob (under prefix) but the claims upload writes in each
    version folder before its first file (<version>/_manifest/owner: claim_of() reads them)."""
    out = {}
    for item in central.client.list_blobs(name_starts_with=prefix or None):
        if item.name.endswith("/_manifest/owner"):
            continue
        md5 = item.content_settings.content_md5
        out[item.name] = (item.size, bytes(md5).hex() if md5 else None, item.etag)
    return out


def claim_of(central, version: str) -> str | None:
    """The manifest id the claim of <version>/ names (None: no claim)."""
    blob = central.client.get_blob_client(f"{version}/_manifest/owner")
    return blob.get_blob_properties().metadata["chorus_manifest_id"] if blob.exists() else None


def submitted(db: Path, version: str) -> dict[str, tuple[int, str]]:
    """srcfile -> (size, md5) of the files `version` added, replaced or renamed."""
    rows = query(db, "SELECT f.srcfile, f.size, f.md5 FROM changes c JOIN source_files f ON f.file_id = c.file_id "
                     "WHERE c.version = ? AND c.change IN ('added', 'replaced', 'renamed')", (version,))
    return {srcfile: (size, md5) for srcfile, size, md5 in rows}


def up(central, db: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("upload", "--db", str(db), "--to", central.url, "--workers", "2", *extra, env={**central.env, **(env or {})})


def commit(site: Path, db: Path, label: str) -> None:
    out = cli("run", "--site", str(site), "--db", str(db), "--version", label, "--workers", "2", "--no-validate")
    assert out.returncode in (0, 1), out.stderr


def make_testdata(tmp_path: Path, persons: int = 3, files: int = 6) -> Path:
    out = cli("testdata", str(tmp_path / "td"), "--persons", str(persons), "--files-per-person", str(files),
              "--size", "3000", "--seed", "11", "--workers", "1")
    assert out.returncode == 0, out.stderr
    return tmp_path / "td"


# ----------------------------------------------------------------------------- the whole submission


def test_two_snapshots_uploaded_version_by_version_hold_exactly_each_change_set(central, tmp_path):
    td = make_testdata(tmp_path)
    big = os.urandom(9 << 20) + b"tail"  # above the single-put size: sent in blocks
    write(td / "first", "000001/Images/CT/1234/5678/big.dcm", big)
    write(td / "second", "000001/Images/CT/1234/5678/big.dcm", big)
    db = tmp_path / "m.sqlite"

    commit(td / "first", db, "20261101020000")
    dry = up(central, db, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would send" in dry.stdout and "nothing was sent or recorded" in dry.stdout
    assert blobs(central) == {} and query(db, "SELECT count(*) FROM uploads") == [(0,)]

    first = up(central, db)
    assert first.returncode == 0, first.stdout + first.stderr
    commit(td / "second", db, "20261102020000")
    second = up(central, db, "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    summary = json.loads(second.stdout)
    assert [v["version"] for v in summary["versions"]] == ["20261102020000"]  # the first is complete: not again

    held = blobs(central)
    for version in ("20261101020000", "20261102020000"):
        expected = submitted(db, version)
        assert {"renamed", "replaced", "added"} & {c for (c,) in query(db, "SELECT DISTINCT change FROM changes WHERE version = ?", (version,))}
        under = {name[len(version) + 1:]: value for name, value in held.items()
                 if name.startswith(version + "/") and "/_manifest/" not in name}
        assert {k: v[:2] for k, v in under.items()} == expected, version  # exactly its change set, right MD5
        assert f"{version}/_manifest/manifest.sqlite" in held
    # The second version's renamed and replaced files are there; what it removed was not deleted centrally.
    removed = query(db, "SELECT srcfile FROM changes WHERE version = '20261102020000' AND change = 'removed'")
    assert removed and all(f"20261101020000/{path}" in held for (path,) in removed if path in submitted(db, "20261101020000"))
    assert held["20261101020000/000001/Images/CT/1234/5678/big.dcm"][1] == hashlib.md5(big).hexdigest()
    assert query(db, "SELECT DISTINCT confirmed_by FROM uploads WHERE file_id IN (SELECT file_id FROM source_files "
                     "WHERE srcfile LIKE '%big.dcm')") == [("blocks",)]

    # The ledger equals the container, and a copy of the manifest (with the ledger) is next to each version.
    ledger = {dest.split("/", 3)[3] for (dest,) in query(db, "SELECT destination FROM uploads WHERE state = 'uploaded'")}
    assert ledger == {name for name in held if "/_manifest/" not in name}
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(central.client.get_blob_client("20261102020000/_manifest/manifest.sqlite").download_blob().readall())
    assert query(copy, "SELECT count(*) FROM uploads WHERE version = '20261102020000'") == \
        [(len(submitted(db, "20261102020000")),)]

    verified = cli("verify", "--db", str(db), "--to", central.url, "--all", "--download", env=central.env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "all as recorded" in verified.stdout
    versions = json.loads(cli("versions", "--db", str(db), "--json").stdout)
    assert all("sent" in v["upload"] and "verified (download)" in v["upload"] for v in versions)
    report = tmp_path / "report.html"
    assert cli("report", "--db", str(db), "--out", str(report)).returncode == 0
    assert "verified (download)" in report.read_text()
    again = up(central, db)
    assert again.returncode == 0 and "nothing to upload" in again.stdout
    assert {k: v[2] for k, v in blobs(central).items() if "_manifest" not in k} == \
        {k: v[2] for k, v in held.items() if "_manifest" not in k}  # nothing sent again


def test_a_file_changed_since_its_version_is_not_sent_and_the_version_stays_incomplete(central, tmp_path):
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/Telemetry/S1/S1.dat", b"signal")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")  # changed after the run that recorded it
    out = up(central, db)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "stale: OMOP/person.csv" in out.stdout, out.stdout
    # Said of `chorus-batch run`: "the next run records the change" was taken for the next upload (a cron line
    # running upload alone), which found the file stale night after night; and the summary's "(or after the next
    # run)" the same.
    assert "the next `chorus-batch run` records the change (an upload does not)" in out.stdout, out.stdout
    # What is incomplete and what to do ("once each file above is seen to as it says" said neither)
    assert "incomplete: 1 file of this version not sent (listed above, each with what to do): do that, then upload " \
        "again; for a file changed or gone since the version, run `chorus-batch run` first" in out.stdout, out.stdout
    assert "after the next run" not in out.stdout
    assert up(central, db).stdout.count("stale: OMOP/person.csv") == 1  # (an upload alone records nothing of it)
    assert set(blobs(central)) == {"20261101020000/000001/Waveforms/Telemetry/S1/S1.dat"}  # no manifest copy yet
    assert query(db, "SELECT state FROM uploads u JOIN source_files f USING (file_id) WHERE f.srcfile = 'OMOP/person.csv'") \
        == [("stale",)]
    # The next run records the change; the old version's person.csv is superseded, the new one goes up.
    commit(site, db, "20261102020000")
    out = up(central, db)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "20261102020000/OMOP/person.csv" in blobs(central)
    assert query(db, "SELECT version, finished_at IS NOT NULL FROM submissions ORDER BY version") == \
        [("20261101020000", 1), ("20261102020000", 1)]


@pytest.mark.parametrize("given", [",", "OMOP,", " , Waveforms"])
def test_modalities_with_an_empty_name_is_refused_before_anything_is_sent(central, tmp_path, given):
    # `--modalities "$A,$B"` with a variable unset: "OMOP," sent OMOP alone and ',' every modality, exit 0, where an
    # empty argument is refused
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/Telemetry/S1/S1.dat", b"signal")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    for extra in ([], ["--script", "bash"]):
        out = up(central, db, "--modalities", given, *extra)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"--modalities {given!r}: an empty name in the comma-separated list" in out.stderr, out.stderr
        assert "leave --modalities out to send every modality" in out.stderr and not out.stdout, out.stdout
    assert blobs(central) == {} and query(db, "SELECT COUNT(*) FROM uploads") == [(0,)]


def test_an_upload_of_some_modalities_leaves_the_version_incomplete_and_the_next_upload_sends_the_rest(central, tmp_path):
    # `upload --modalities OMOP` sent the OMOP files, called the version complete ("13 in its change set"), put the
    # manifest's copy next to it and recorded it as finished: the next plain upload said "nothing to upload" and the
    # files of the other modalities were never sent (verify said "upload sends them"; it did not).
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/death.csv", b"person_id\n")
    write(site, "000001/Waveforms/Telemetry/S1/S1.dat", b"signal")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    some = up(central, db, "--modalities", "OMOP")
    assert some.returncode == 0, some.stdout + some.stderr
    assert "2 of --modalities in its change set of 3" in some.stdout, some.stdout
    assert "1 file of other modalities than --modalities not uploaded yet" in some.stdout, some.stdout
    assert "complete;" not in some.stdout and "manifest copy" not in some.stdout, some.stdout
    assert set(blobs(central)) == {"20261101020000/OMOP/person.csv", "20261101020000/OMOP/death.csv"}
    assert query(db, "SELECT finished_at FROM submissions") == [(None,)]
    as_json = json.loads(up(central, db, "--modalities", "OMOP", "--json").stdout)["versions"][0]
    assert (as_json["complete"], as_json["other_modalities_waiting"]) == (False, 1)
    rest = up(central, db)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "sent 1 file" in rest.stdout and "complete; checked" in rest.stdout, rest.stdout
    assert set(blobs(central)) == {"20261101020000/OMOP/person.csv", "20261101020000/OMOP/death.csv",
                                   "20261101020000/000001/Waveforms/Telemetry/S1/S1.dat",
                                   "20261101020000/_manifest/manifest.sqlite"}
    assert query(db, "SELECT finished_at IS NOT NULL FROM submissions") == [(1,)]


def test_a_file_changed_in_place_with_its_mtime_kept_is_not_sent_and_upload_says_a_run_needs_rehash(central, tmp_path):
    # Rewritten with the same size and modification time after its version was committed (a tool that keeps mtimes,
    # damage on disk): its bytes are not the recorded MD5's, so nothing is sent. The upload said "the next run
    # records the change", which a plain run does not (size and mtime are as recorded): the version waited for ever.
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    path = write(site, "000001/Waveforms/Telemetry/S1/S1.dat", b"signal")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    stat = path.stat()
    path.write_bytes(b"SIGNAL")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    out = up(central, db)
    assert out.returncode == 1, out.stdout + out.stderr
    assert set(blobs(central)) == {"20261101020000/OMOP/person.csv"}
    assert "the next run records the change" not in out.stdout, out.stdout
    assert "--rehash" in out.stdout and "size and modification time are as recorded" in out.stdout, out.stdout
    # What it says to do works: a run with --rehash records it as replaced; the first version then finishes
    # (its file is superseded) and the second one sends the bytes as they are now.
    out = cli("run", "--site", str(site), "--db", str(db), "--version", "20261102020000", "--workers", "2",
              "--no-validate", "--rehash")
    assert out.returncode in (0, 1), out.stderr
    out = up(central, db)
    assert out.returncode == 0, out.stdout + out.stderr
    assert blobs(central)["20261102020000/000001/Waveforms/Telemetry/S1/S1.dat"][1] == hashlib.md5(b"SIGNAL").hexdigest()


def test_an_empty_site_root_an_unmounted_file_system_is_refused_not_every_file_called_removed(central, tmp_path):
    # The site's file system not mounted (its mount point an empty folder): upload called every file "missing: not
    # found ...: the next run records it as removed" (a run refuses that, exit 5), recorded them so, and exited 1;
    # the dry run and the script said the same of each file.
    db = committed_site(tmp_path, 3)
    site = tmp_path / "site"
    site.rename(tmp_path / "away")
    site.mkdir()
    for extra in ([], ["--dry-run"], ["--script", "bash"]):
        out = up(central, db, *extra)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"the site root {site} is empty" in out.stderr and "unmounted" in out.stderr, out.stderr
        assert "records it as removed" not in out.stdout + out.stderr
    assert query(db, "SELECT count(*) FROM uploads") == [(0,)]
    assert set(blobs(central)) == set()
    site.rmdir()
    (tmp_path / "away").rename(site)
    out = up(central, db)
    assert out.returncode == 0 and "sent 3 files" in out.stdout, out.stdout + out.stderr


def test_a_cloud_root_holding_only_its_folder_marker_is_refused_not_every_file_called_removed(central, azurite, tmp_path):
    # A cloud site whose files were all moved away, its folder marker left (`site/`, as Storage Explorer makes it):
    # check() took the marker for a root that is there, and upload called every file "missing: ... the next run
    # records it as removed" (that run refuses a root that lists nothing, exit 5), recorded them so, exit 1.
    from services import upload_tree

    site = azurite.new_container("markersite")
    many_files(tmp_path / "local", 3)
    with azurite.service_client() as service:
        upload_tree(service, site, tmp_path / "local", prefix="site")
        service.get_container_client(site).upload_blob("site/", b"")
    db = tmp_path / "m.sqlite"
    committed = cli("run", "--site", f"az://{site}/site", "--db", str(db), "--version", "20261101020000", "--workers",
                    "2", "--no-validate", env=central.env)
    assert committed.returncode in (0, 1), committed.stderr
    with azurite.service_client() as service:
        container = service.get_container_client(site)
        for blob in list(container.list_blobs(name_starts_with="site/")):
            if blob.name != "site/":
                container.delete_blob(blob.name)
    for extra in ([], ["--dry-run"]):
        out = up(central, db, *extra)
        assert out.returncode == 2, out.stdout + out.stderr
        assert f"the site root az://{site}/site holds no file" in out.stderr and "nothing of it was sent" in out.stderr
        assert "records it as removed" not in out.stdout + out.stderr
    assert query(db, "SELECT count(*) FROM uploads") == [(0,)]
    assert set(blobs(central)) == set()
    with azurite.service_client() as service:
        upload_tree(service, site, tmp_path / "local", prefix="site")
    out = up(central, db)
    assert out.returncode == 0 and "sent 3 files" in out.stdout, out.stdout + out.stderr


def _waveforms_root(config: Path, site: Path, wave: Path) -> None:
    config.write_text(f'[site]\nroot = "{site}"\n[site.roots]\nWaveforms = "{wave}"\n')


def _site_with_a_waveforms_root(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(site, its [site.roots] Waveforms folder, chorus.toml, manifest) after a first run: OMOP in one root, a
    waveform header in the other."""
    site, wave = tmp_path / "site", tmp_path / "wave"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(wave, "000001/Waveforms/Telemetry/1/1.hea", b"1 1 250 10\n")
    config, db = tmp_path / "chorus.toml", tmp_path / "m.sqlite"
    _waveforms_root(config, site, wave)
    out = cli("run", "--config", str(config), "--db", str(db), "--no-validate", "--workers", "1")
    assert out.returncode in (0, 1), out.stderr
    return site, wave, config, db


def test_a_modality_root_that_moved_is_read_from_its_new_folder_and_one_missing_is_named_as_that_root(central, tmp_path):
    # [site.roots] Waveforms moved to a new folder: the next run records the files under the new root, but upload
    # checked every root the manifest ever recorded, and refused the whole upload (exit 2) because the old folder was
    # gone, calling it "site root is not a readable directory" at "--site / [site] root".
    site, wave, config, db = _site_with_a_waveforms_root(tmp_path)
    wave.rename(tmp_path / "wave2")
    _waveforms_root(config, site, tmp_path / "wave2")
    out = cli("run", "--config", str(config), "--db", str(db), "--no-validate", "--workers", "1")
    assert out.returncode in (0, 1), out.stderr
    for extra in (["--dry-run"], []):
        out = up(central, db, *extra)
        assert out.returncode == 0, out.stdout + out.stderr
    assert set(blobs(central)) == {f"{v}/{p}" for v, in query(db, "SELECT label FROM versions")
                                   for p in ("OMOP/person.csv", "000001/Waveforms/Telemetry/1/1.hea")} | {
        f"{v}/_manifest/manifest.sqlite" for v, in query(db, "SELECT label FROM versions")}
    # a root files are to be read from, missing: named as the modality's root, not as the site root
    write(wave.parent / "wave2", "000001/Waveforms/Telemetry/1/2.hea", b"1 1 250 10\n")
    out = cli("run", "--config", str(config), "--db", str(db), "--no-validate", "--workers", "1")
    assert out.returncode in (0, 1), out.stderr
    (tmp_path / "wave2").rename(tmp_path / "away")
    out = up(central, db, "--dry-run")
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"root is not a readable directory: {tmp_path / 'wave2'}" in out.stderr and "site root" not in out.stderr
    assert "where: [site.roots] Waveforms" in out.stderr, out.stderr


def test_an_upload_script_reads_a_moved_modality_root_from_site_roots_as_upload_does(central, tmp_path):
    # `upload --site DIR` reads [site.roots] of the config too; `upload --script` took --site alone: a Waveforms
    # root that moved was "not there" whatever was given, and the fix offered (--site) could not move it.
    site, wave, config, db = _site_with_a_waveforms_root(tmp_path)
    wave.rename(tmp_path / "moved")
    _waveforms_root(config, site, tmp_path / "moved")
    out = up(central, db, "--config", str(config), "--script", "bash")
    assert out.returncode == 2 and f"not there (moved, or not mounted?): {wave}" in out.stderr, out.stderr
    assert "where: [site.roots] Waveforms" in out.stderr, out.stderr
    out = up(central, db, "--config", str(config), "--script", "bash", "--site", str(site))
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "moved" / "000001") in out.stdout and f"{wave}/" not in out.stdout


def test_a_file_renamed_before_its_version_was_sent_is_not_said_to_be_gone_from_the_site(central, tmp_path):
    # A file a later version renamed before the first was sent: "its bytes are no longer in the site", though they
    # are, under the new name, and go with the later version.
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/note.csv", b"note_id\n1\n")
    commit(site, db, "20261101020000")
    (site / "OMOP/note.csv").rename(site / "OMOP/note_nlp.csv")
    commit(site, db, "20261102020000")
    out = up(central, db)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "superseded: OMOP/note.csv" in out.stdout and "renamed" in out.stdout, out.stdout
    assert "no longer in the site" not in out.stdout, out.stdout
    assert "20261102020000/OMOP/note_nlp.csv" in blobs(central)


def test_a_dry_run_says_which_files_the_upload_would_leave_out_and_exits_as_the_upload_would(central, tmp_path):
    # A dry run said "would send 4 files", exit 0, of a version whose files were since deleted or changed in the site:
    # the upload then sent 2 and exited 1. It now looks at each file (stat, no read) as the upload does first.
    db = committed_site(tmp_path, 4)
    (tmp_path / "site/000000/Waveforms/Telemetry/S0/S0.dat").unlink()
    write(tmp_path / "site", "000001/Waveforms/Telemetry/S1/S1.dat", b"changed")
    dry = up(central, db, "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "would send 2 files" in dry.stdout and "missing: 000000/Waveforms/Telemetry/S0/S0.dat" in dry.stdout, dry.stdout
    assert "stale: 000001/Waveforms/Telemetry/S1/S1.dat" in dry.stdout and blobs(central) == {}
    assert "the next `chorus-batch run` records it as removed (an upload does not)" in dry.stdout, dry.stdout
    js = json.loads(up(central, db, "--dry-run", "--json").stdout)
    assert js["exit_code"] == 1 and js["versions"][0]["sent"] == 2
    assert sorted(n["state"] for n in js["versions"][0]["not_sent"]) == ["missing", "stale"]
    real = up(central, db)
    assert real.returncode == 1 and "sent 2 files" in real.stdout, real.stdout + real.stderr


def test_a_file_a_run_recorded_through_a_link_is_uploaded_through_it(central, tmp_path):
    # A run with --follow-symlinks records a link to a file on another disk as that file. The upload reopens the
    # recorded root on its own, where a link counted as "not a regular file": the file was never sent ("failed:
    # cannot read it ... not a regular file"), exit 1 night after night. It is read as the run read it.
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    write(site, "000001/Waveforms/Telemetry/S1/S1.hea", b"S1 1 250 10\nS1.dat 16 200 16 0 0 0 0 ECG\n")
    data = write(elsewhere, "S1.dat", os.urandom(20))
    (site / "000001/Waveforms/Telemetry/S1/S1.dat").symlink_to(data)
    db = tmp_path / "m.sqlite"
    out = cli("run", "--site", str(site), "--db", str(db), "--version", "20261101020000", "--follow-symlinks",
              "--no-validate")
    assert out.returncode == 0, out.stderr
    sent = up(central, db)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert blobs(central)["20261101020000/000001/Waveforms/Telemetry/S1/S1.dat"][0] == 20


def damage_keeping_content_md5(central, azurite, name: str, change) -> None:
    """Blob `name` at the centre rewritten as change(its bytes), its metadata and Content-MD5 kept, as a bad copy
    at the centre might be: only a read back of its bytes can tell."""
    blob = central.client.get_blob_client(name)
    props = blob.get_blob_properties()
    blob.upload_blob(change(blob.download_blob().readall()), overwrite=True, metadata=props.metadata)
    set_content_md5(azurite.service_client(), central.container, name, bytes(props.content_settings.content_md5))


def test_verify_download_finds_a_corrupted_blob_whose_content_md5_was_kept(central, azurite, tmp_path):
    db = committed_site(tmp_path, 4)
    assert up(central, db).returncode == 0
    name = "20261101020000/000002/Waveforms/Telemetry/S2/S2.dat"
    damage_keeping_content_md5(central, azurite, name, lambda data: bytes([data[0] ^ 1]) + data[1:])
    # Size and Content-MD5 are as recorded, but the blob was changed since the upload (its etag): the listing reads that
    # blob back (it said "all as recorded", exit 0), and finds its bytes damaged; so does --download
    listing = cli("verify", "--db", str(db), "--to", central.url, "--json", env=central.env)
    assert listing.returncode == 1, listing.stdout + listing.stderr
    assert [(p["srcfile"], p["verify_state"]) for p in json.loads(listing.stdout)["problems"]] == [
        ("000002/Waveforms/Telemetry/S2/S2.dat", "content")]
    download = cli("verify", "--db", str(db), "--to", central.url, "--download", "--json", env=central.env)
    assert download.returncode == 1, download.stdout + download.stderr
    problems = json.loads(download.stdout)["problems"]
    assert [(p["srcfile"], p["verify_state"]) for p in problems] == [("000002/Waveforms/Telemetry/S2/S2.dat", "content")]
    assert query(db, "SELECT count(*) FROM uploads WHERE verify_state = 'content'") == [(1,)]
    # A missing blob is named too.
    central.client.delete_blob("20261101020000/000000/Waveforms/Telemetry/S0/S0.dat")
    missing = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert missing.returncode == 1 and "missing: 000000/Waveforms/Telemetry/S0/S0.dat" in missing.stdout


def test_a_blob_changed_at_the_centre_after_the_upload_is_read_back_by_the_listing_and_its_content_decides(
        central, azurite, tmp_path):
    # Someone at the centre rewrote a blob after the upload, keeping its size and setting its Content-MD5 (a copy that
    # kept it, a tool that set it): verify's listing said "all as recorded", exit 0, though the blob's etag was not the
    # one the ledger recorded. Then every blob whose etag moved was called "rewritten", exit 1, also one whose metadata
    # alone the centre set (a "reviewed" tag), night after night until a --download. The listing reads back those
    # blobs alone: content decides.
    db = committed_site(tmp_path, 3)
    assert up(central, db).returncode == 0
    bad, touched = "000000/Waveforms/Telemetry/S0/S0.dat", "000001/Waveforms/Telemetry/S1/S1.dat"
    damage_keeping_content_md5(central, azurite, f"20261101020000/{bad}", lambda data: bytes([data[0] ^ 1]) + data[1:])
    touched_blob = central.client.get_blob_client(f"20261101020000/{touched}")
    touched_blob.set_blob_metadata({"reviewed": "yes"})  # bytes as sent
    new_etag = touched_blob.get_blob_properties().etag.strip('"')
    listing = cli("verify", "--db", str(db), "--to", central.url, "--json", env=central.env)
    assert listing.returncode == 1, listing.stdout + listing.stderr
    assert [(p["srcfile"], p["verify_state"]) for p in json.loads(listing.stdout)["problems"]] == [(bad, "content")]
    # The metadata-only change is verified, its new etag recorded (the next listing does not read it again)
    assert query(db, "SELECT u.verify_state, trim(u.etag, '\"') FROM uploads u JOIN source_files f USING (file_id) "
                     "WHERE f.srcfile = ?", (touched,)) == [("ok", new_etag)]
    # The upload's listing check sees it too, and the next upload sends the damaged blob again
    again = up(central, db, "--version", "20261101020000")
    assert again.returncode == 0, again.stdout + again.stderr
    final = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert final.returncode == 0 and "all as recorded" in final.stdout, final.stdout + final.stderr
    assert "rewritten" not in final.stdout


def test_verify_download_names_blobs_the_centre_moved_to_the_archive_tier_and_reads_back_the_others(central,
                                                                                                      tmp_path):
    """A centre's lifecycle rule moves blobs to the Archive tier; their bytes cannot be read until rehydrated (409
    BlobArchived). verify --download failed as a whole for one such blob ("cannot read ...: check the URL and that the
    credentials for it are in the environment", exit 3), nothing recorded; and so for the manifest's copy."""
    db = committed_site(tmp_path, 3)
    assert up(central, db).returncode == 0
    label, archived = "20261101020000", "000001/Waveforms/Telemetry/S1/S1.dat"
    central.client.get_blob_client(f"{label}/{archived}").set_standard_blob_tier("Archive")
    central.client.get_blob_client(f"{label}/_manifest/manifest.sqlite").set_standard_blob_tier("Archive")
    download = cli("verify", "--db", str(db), "--to", central.url, "--download", "--json", env=central.env)
    assert download.returncode == 1, download.stdout + download.stderr
    problems = {p["srcfile"]: (p["verify_state"], p["message"]) for p in json.loads(download.stdout)["problems"]}
    assert problems.keys() == {archived, "_manifest/manifest.sqlite"}, problems
    assert all(state == "archived" and "in the Archive tier" in message and "rehydrate" in message
               for state, message in problems.values()), problems
    rows = dict(query(db, "SELECT f.srcfile, u.verify_state || '/' || u.verify_method FROM uploads u "
                          "JOIN source_files f USING (file_id)"))
    assert rows.pop(archived) == "archived/download" and set(rows.values()) == {"ok/download"}, rows
    # not damaged: nothing is sent again, and the version stays completely uploaded
    again = up(central, db)
    assert again.returncode == 0 and "nothing to upload" in again.stdout, again.stdout + again.stderr
    from azure.storage.blob import ContentSettings

    # A blob found without a Content-MD5 is read back to confirm it: archived, the upload says so (it printed the SDK's
    # error page and "run upload again once the files above are in place")
    site, db2 = tmp_path / "site2", tmp_path / "m2.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db2, "20261102020000")
    blob = central.client.get_blob_client("20261102020000/OMOP/person.csv")
    blob.upload_blob(b"person_id\n1\n")
    blob.set_http_headers(ContentSettings())  # no Content-MD5, as a tool that sends in blocks leaves it
    blob.set_standard_blob_tier("Archive")
    sent = up(central, db2)
    assert sent.returncode == 1, sent.stdout + sent.stderr
    assert "is there without a Content-MD5 and in the Archive tier" in sent.stdout and "rehydrate" in sent.stdout
    assert "ErrorCode" not in sent.stdout, sent.stdout


def test_verify_download_reads_a_blob_with_a_content_encoding_as_the_bytes_it_holds(central, azurite, tmp_path):
    """A blob at the centre given a Content-Encoding (gzip: a tool that serves .gz files set it) was read back decoded
    by the SDK's default: its intact bytes were "damaged" (another MD5, or no gzip to decode) and upload sent it again."""
    from azure.storage.blob import ContentSettings

    db = committed_site(tmp_path, 4)
    assert up(central, db).returncode == 0
    name = "20261101020000/000002/Waveforms/Telemetry/S2/S2.dat"
    blob = central.client.get_blob_client(name)
    settings = blob.get_blob_properties().content_settings
    blob.set_http_headers(ContentSettings(content_type=settings.content_type, content_encoding="gzip",
                                          content_md5=settings.content_md5))
    download = cli("verify", "--db", str(db), "--to", central.url, "--download", "--json", env=central.env)
    assert download.returncode == 0, download.stdout + download.stderr
    assert json.loads(download.stdout)["problems"] == []


def test_a_blob_without_content_md5_read_back_by_verify_download_stays_verified_until_it_changes(central, azurite,
                                                                                                 tmp_path):
    # A blob at the centre without a Content-MD5 (another tool wrote it, or its properties): the listing cannot vouch
    # for it. verify --download read its bytes and found them right, and still every later verify (and every upload's
    # listing check) said `no_md5`, exit 1, for ever: nothing any command did cleared it.
    db = committed_site(tmp_path, 3)
    label = "20261101020000"
    name = f"{label}/000001/Waveforms/Telemetry/S1/S1.dat"
    assert up(central, db).returncode == 0
    set_content_md5(azurite.service_client(), central.container, name, None)

    def verify(*extra):
        return cli("verify", "--db", str(db), "--to", central.url, "--json", *extra, env=central.env)

    assert [p["verify_state"] for p in json.loads(verify().stdout)["problems"]] == ["no_md5"]
    checked = verify("--download")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    again = verify()
    assert again.returncode == 0, again.stdout + again.stderr  # the bytes read back vouch for the blob as it is
    assert json.loads(again.stdout)["problems"] == []
    assert query(db, "SELECT verify_state, verify_method FROM uploads u JOIN source_files f USING (file_id) "
                     "WHERE f.srcfile = '000001/Waveforms/Telemetry/S1/S1.dat'") == [("ok", "download")]
    assert up(central, db, "--version", label).returncode == 0  # (its listing check too)
    # The blob written again (other bytes of that size, still no Content-MD5): what was read back no longer vouches.
    size = central.client.get_blob_client(name).get_blob_properties().size
    central.client.upload_blob(name, bytes(size), overwrite=True)
    set_content_md5(azurite.service_client(), central.container, name, None)
    changed = verify()
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert [p["verify_state"] for p in json.loads(changed.stdout)["problems"]] == ["no_md5"]


def test_an_upload_that_finds_a_blob_without_content_md5_and_reads_it_right_finishes_the_version(central, tmp_path):
    # Another tool sent a file in blocks before this upload (chorus-upload, AzCopy): no Content-MD5. The upload read
    # its bytes, found them right and confirmed it, then its own listing check called it `no_md5`: exit 1, the version
    # unfinished (no manifest copy) until someone ran verify --download to read the same bytes again.
    from azure.storage.blob import BlobBlock

    db = committed_site(tmp_path, 3)
    label = "20261101020000"
    name = f"{label}/000001/Waveforms/Telemetry/S1/S1.dat"
    data = (tmp_path / "site" / "000001/Waveforms/Telemetry/S1/S1.dat").read_bytes()
    blob = central.client.get_blob_client(name)
    blob.stage_block("b1", data[:100])
    blob.stage_block("b2", data[100:])
    blob.commit_block_list([BlobBlock("b1"), BlobBlock("b2")])
    assert blobs(central)[name][1] is None
    first = up(central, db)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{label}/_manifest/manifest.sqlite" in blobs(central)
    assert query(db, "SELECT confirmed_by, verify_state, verify_method FROM uploads u JOIN source_files f USING "
                     "(file_id) WHERE f.srcfile = '000001/Waveforms/Telemetry/S1/S1.dat'") == [("found", "ok", "download")]
    listing = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert listing.returncode == 0, listing.stdout + listing.stderr


def test_verify_reports_blobs_at_the_centre_that_the_manifest_does_not_list(central, tmp_path):
    # A blob another tool (or an older, abandoned submission) left under <version>/ passed verify silently: a
    # reviewer at the centre reads every blob there as part of the site's submission.
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 0
    for i in range(12):
        central.client.upload_blob(f"20261101020000/000009/OMOP/stale_{i:02}.csv", b"person_id\n9\n")
    text = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert text.returncode == 1, text.stdout + text.stderr
    assert "12 blobs at the centre that the manifest does not list" in text.stdout, text.stdout
    # named as --json names them: within the version's folder (the text had the version in front, --json not)
    assert "version 20261101020000: 12: 000009/OMOP/stale_00.csv, 000009/OMOP/stale_01.csv" in text.stdout
    assert "2 more (--json lists them all)" in text.stdout and "20261101020000/000009" not in text.stdout
    assert "all as recorded" not in text.stdout and "never deletes" in text.stdout
    js = cli("verify", "--db", str(db), "--to", central.url, "--json", env=central.env)
    assert js.returncode == 1 and json.loads(js.stdout)["exit_code"] == 1
    assert [u["name"] for u in json.loads(js.stdout)["unlisted"]] == [f"000009/OMOP/stale_{i:02}.csv" for i in range(12)]
    assert json.loads(js.stdout)["problems"] == []  # the files of the version are all as recorded
    for i in range(12):
        central.client.delete_blob(f"20261101020000/000009/OMOP/stale_{i:02}.csv")
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 0


def test_versions_says_a_version_the_upload_left_unfinished_over_blobs_it_does_not_list_is_not_complete(central,
                                                                                                     tmp_path):
    # The upload sent every file but left the version unfinished over another tool's blob in its folder; `versions`
    # read "2/2 sent, verified (listing)", as of a complete version, while each verify exited 1 over that blob.
    db = committed_site(tmp_path, 2)
    central.client.upload_blob("20261101020000/000009/OMOP/stray.csv", b"person_id\n9\n")
    assert up(central, db).returncode == 1
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    out = cli("versions", "--db", str(db))
    assert "2/2 sent, verified (listing), not complete: blobs in its folder the manifest does not list" in out.stdout, \
        out.stdout
    central.client.delete_blob("20261101020000/000009/OMOP/stray.csv")
    assert up(central, db).returncode == 0
    out = cli("versions", "--db", str(db))
    assert "2/2 sent" in out.stdout and "not complete" not in out.stdout, out.stdout


def test_a_blob_added_to_a_complete_version_makes_it_not_complete_until_it_is_gone(central, tmp_path):
    # A stray blob put under <version>/ after the version was complete: verify named it (exit 1) but `versions` still
    # read "2/2 sent, verified (listing)" and the nightly upload "nothing to upload", the blob unmentioned.
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    central.client.upload_blob("20261101020000/000009/OMOP/stray.csv", b"person_id\n9\n")
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    out = cli("versions", "--db", str(db))
    assert "not complete: blobs in its folder the manifest does not list" in out.stdout, out.stdout
    again = up(central, db)
    assert again.returncode == 1 and "000009/OMOP/stray.csv" in again.stdout, again.stdout + again.stderr
    assert "nothing to upload" not in again.stdout
    central.client.delete_blob("20261101020000/000009/OMOP/stray.csv")
    # gone, and all else as recorded: verify finds the version whole again (no upload needed to say so)
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 0
    out = cli("versions", "--db", str(db))
    assert "2/2 sent, verified (listing)" in out.stdout and "not complete" not in out.stdout, out.stdout
    assert "nothing to upload" in up(central, db).stdout


def test_upload_version_of_a_complete_version_with_a_blob_added_leaves_it_not_complete(central, tmp_path):
    # `upload --version X` of a complete version found a blob added to its folder and said so (exit 1), but left it
    # recorded as complete: the next nightly upload said "nothing to upload", the blob unmentioned.
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    central.client.upload_blob("20261101020000/000009/OMOP/stray.csv", b"person_id\n9\n")
    again = up(central, db, "--version", "20261101020000")
    assert again.returncode == 1 and "000009/OMOP/stray.csv" in again.stdout, again.stdout + again.stderr
    assert query(db, "SELECT finished_at FROM submissions") == [(None,)]
    nightly = up(central, db)
    assert nightly.returncode == 1 and "nothing to upload" not in nightly.stdout, nightly.stdout + nightly.stderr
    assert "000009/OMOP/stray.csv" in nightly.stdout


def test_upload_json_says_not_complete_of_a_version_whose_folder_holds_blobs_it_does_not_list(central, tmp_path):
    # Every file sent, but another tool's blob in the folder: --json said "complete": true (and the text "complete;
    # ... all there") of a version the ledger leaves unfinished, exit 1.
    db = committed_site(tmp_path, 2)
    central.client.upload_blob("20261101020000/000009/OMOP/stray.csv", b"person_id\n9\n")
    out = up(central, db, "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    version = json.loads(out.stdout)["versions"][0]
    assert version["complete"] is False and [u["name"] for u in version["unlisted"]] == ["000009/OMOP/stray.csv"]
    assert query(db, "SELECT finished_at FROM submissions") == [(None,)]
    text = up(central, db)
    assert text.returncode == 1 and "complete;" not in text.stdout and "not complete" in text.stdout, text.stdout
    central.client.delete_blob("20261101020000/000009/OMOP/stray.csv")
    done = up(central, db, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["versions"][0]["complete"] is True, done.stdout


def test_folder_entries_of_a_hierarchical_namespace_centre_are_no_blobs_the_manifest_does_not_list(central, tmp_path):
    # At a centre with a hierarchical namespace (ADLS Gen2) every folder is an entry of its own, listed as an empty
    # blob with hdi_isfolder=true (Storage Explorer and azcopy make such markers too): upload called each one a blob
    # the manifest does not list, the version never finished, and verify exited 1 for the folders of its own files.
    db = committed_site(tmp_path, 2)
    label = "20261101020000"
    folders = {f"{label}/{'/'.join(srcfile.split('/')[:depth])}" for srcfile in submitted(db, label)
               for depth in range(1, srcfile.count("/") + 1)} | {f"{label}/_manifest"}
    for folder in folders:  # (Azurite has no hierarchical namespace: the entries it would list, made by hand)
        central.client.upload_blob(folder, b"", metadata={"hdi_isfolder": "true"})
    central.client.upload_blob(f"{label}/000000/", b"")  # a marker named with its '/' (some tools make these)
    out = up(central, db)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "complete; checked" in out.stdout and "does not list" not in out.stdout, out.stdout
    assert query(db, "SELECT finished_at IS NOT NULL FROM submissions") == [(1,)]
    verified = cli("verify", "--db", str(db), "--to", central.url, "--download", env=central.env)
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr
    # A folder entry that holds bytes is no folder: it is named as any blob the manifest does not list.
    central.client.upload_blob(f"{label}/000001", b"bytes", metadata={"hdi_isfolder": "true"}, overwrite=True)
    verified = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert verified.returncode == 1 and f"version {label}: 1: 000001" in verified.stdout, verified.stdout + verified.stderr


def test_upload_says_when_the_version_folder_holds_blobs_it_did_not_write_and_keeps_saying_so(central, tmp_path):
    # An abandoned submission's (or another tool's) blob already under <version>/: upload called the version
    # complete with exit 0 and never looked again; only a verify someone remembered to run said so.
    db = committed_site(tmp_path, 3)
    central.client.upload_blob("20261101020000/000009/OMOP/stale.csv", b"person_id\n9\n")
    first = up(central, db)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 blob at the centre that the manifest does not list" in first.stdout, first.stdout
    assert "version 20261101020000: 1: 000009/OMOP/stale.csv" in first.stdout and "then upload again" in first.stdout
    assert "manifest copy:" in first.stdout  # (the copy says which blobs are the submission)
    assert blobs(central)["20261101020000/000009/OMOP/stale.csv"][0] == 12  # never deleted here
    again = up(central, db, "--json")  # not finished: the nightly upload says it again, sending nothing
    assert again.returncode == 1, again.stdout + again.stderr
    version = json.loads(again.stdout)["versions"][0]
    assert version["sent"] == 0 and version["sent_before"] == 3
    assert [u["name"] for u in version["unlisted"]] == ["000009/OMOP/stale.csv"]
    central.client.delete_blob("20261101020000/000009/OMOP/stale.csv")
    cleared = up(central, db)
    assert cleared.returncode == 0 and "all there" in cleared.stdout, cleared.stdout + cleared.stderr
    assert "nothing to upload" in up(central, db).stdout


def test_an_abfs_central_url_is_the_same_ledger_as_az_and_another_account_is_refused(central, tmp_path):
    # --to abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/ took "CONTAINER@ACCOUNT..." for the container's name
    # (the service: "the storage account is not known"); the ledger would have been another than az://CONTAINER/'s.
    db = committed_site(tmp_path, 2)
    other = cli("upload", "--db", str(db), "--to", f"abfs://{central.container}@otheracct.dfs.core.windows.net/",
                env=central.env)  # (not up(): its --to and this one are two values of one option, refused)
    assert other.returncode == 2, other.stdout + other.stderr
    assert "names the storage account 'otheracct'" in other.stderr and blobs(central) == {}
    abfs = f"abfs://{central.container}@devstoreaccount1.dfs.core.windows.net/"
    sent = cli("upload", "--db", str(db), "--to", abfs, env=central.env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert query(db, "SELECT DISTINCT central FROM uploads") == [(f"az://{central.container}",)]
    assert "nothing to upload" in up(central, db).stdout  # az://CONTAINER/: the same ledger
    assert cli("verify", "--db", str(db), "--to", abfs, env=central.env).returncode == 0


def test_verify_of_a_container_nothing_was_uploaded_to_names_the_ones_the_ledger_holds(azurite, central, tmp_path):
    # A mistyped --to (or [central] to) made the nightly verify say "nothing to verify" with exit 0, for ever.
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    other = f"az://{azurite.new_container('other')}/"  # (a container that is there, nothing uploaded to it)
    typo = cli("verify", "--db", str(db), "--to", other, "--json", env=central.env)
    assert typo.returncode == 1, typo.stdout + typo.stderr
    assert json.loads(typo.stdout)["uploaded_elsewhere"] == [f"az://{central.container}"]
    said = cli("verify", "--db", str(db), "--to", other, env=central.env)
    assert said.returncode == 1 and f"uploaded to az://{central.container}" in said.stdout, said.stdout
    assert "check --to" in said.stdout and "nothing to verify" not in said.stdout


def test_verify_of_a_container_that_does_not_exist_says_so_where_the_files_went_and_exits_3(central, tmp_path):
    # A --to whose container is not there, with files recorded at another: verify said only "no file is recorded as
    # uploaded to az://no-such-container", exit 1, never that the container does not exist (upload said so, exit 3).
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    before = query(db, "SELECT * FROM uploads ORDER BY file_id")
    said = cli("verify", "--db", str(db), "--to", "az://no-such-container/", env=central.env)
    assert said.returncode == 3, said.stdout + said.stderr
    assert "the container does not exist" in said.stderr and "where: az://no-such-container" in said.stderr, said.stderr
    assert f"records files uploaded to az://{central.container}" in said.stderr and "check --to" in said.stderr
    assert "what the uploads ledger recorded before stays" in said.stderr and "Traceback" not in said.stderr
    js = cli("verify", "--db", str(db), "--to", "az://no-such-container/", "--json", env=central.env)
    assert js.returncode == 3 and json.loads(js.stdout)["exit_code"] == 3, js.stdout + js.stderr
    assert "does not exist" in json.loads(js.stdout)["error"]
    assert query(db, "SELECT * FROM uploads ORDER BY file_id") == before


def test_a_cloud_file_whose_stored_md5_is_wrong_is_not_called_changed_since(azurite, central, tmp_path):
    # A blob with a wrong Content-MD5 (set by a copy tool) is recorded with it; upload read other bytes and said
    # "changed since the version recorded it ... the next run records the change": the next run saw no change.
    from services import set_content_md5

    container = azurite.new_container("site")
    with azurite.service_client() as service:
        client = service.get_container_client(container)
        client.upload_blob("data/OMOP/person.csv", b"person_id\n1\n")
        client.upload_blob("data/OMOP/visit.csv", b"visit_id\n1\n")
        set_content_md5(service, container, "data/OMOP/visit.csv", hashlib.md5(b"something else").digest())
    db = tmp_path / "m.sqlite"
    site = ("--site", f"az://{container}/data", "--db", str(db), "--no-validate", "--verify-sample", "0")
    assert cli("run", *site, "--version", "20261101020000", env=central.env).returncode == 0
    out = up(central, db)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "OMOP/visit.csv" in out.stdout and "same etag" in out.stdout and "its Content-MD5" in out.stdout, out.stdout
    assert "next run records the change" not in out.stdout and "changed since" not in out.stdout
    assert query(db, "SELECT state FROM uploads u JOIN source_files f USING (file_id) WHERE f.srcfile = 'OMOP/visit.csv'") \
        == [("failed",)]
    # What it says to do works: --rehash records the MD5 of its bytes, and the next upload sends it.
    assert cli("run", *site, "--rehash", "--version", "20261102020000", env=central.env).returncode in (0, 1)
    again = up(central, db)
    assert again.returncode == 0, again.stdout + again.stderr
    assert blobs(central)["20261102020000/OMOP/visit.csv"][1] == hashlib.md5(b"visit_id\n1\n").hexdigest()


def test_verify_finds_the_manifest_copy_gone_or_replaced_and_the_next_upload_puts_it_again(central, tmp_path):
    # The copy next to a version is what the centre's reviewers read; verify never looked at it, so a copy
    # someone deleted (or wrote over) stayed gone, and the version stayed "complete".
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    copy = "20261101020000/_manifest/manifest.sqlite"
    central.client.delete_blob(copy)
    gone = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert gone.returncode == 1, gone.stdout + gone.stderr
    assert "_manifest/manifest.sqlite: the manifest's copy upload put here is gone" in gone.stdout, gone.stdout
    back = up(central, db)
    assert back.returncode == 0 and "manifest copy:" in back.stdout, back.stdout + back.stderr
    assert copy in blobs(central)
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 0
    central.client.upload_blob(copy, b"not a manifest", overwrite=True)
    other = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert other.returncode == 1 and "was replaced by another manifest's" in other.stdout, other.stdout
    refused = up(central, db)  # never written over: said, with what to do
    assert refused.returncode == 5 and "manifest copy refused" in refused.stdout, refused.stdout + refused.stderr
    # What is there is named for what it is: no manifest's copy (it was called "the copy of another manifest").
    assert "copy of another manifest" not in refused.stdout and "14 bytes that is no manifest's copy" in refused.stdout
    assert central.client.get_blob_client(copy).download_blob().readall() == b"not a manifest"
    central.client.delete_blob("20261101020000/000000/Waveforms/Telemetry/S0/S0.dat")  # a file to send again
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    held = up(central, db)  # nothing is added to a folder whose copy is not this manifest's, and it says what is there
    assert held.returncode == 5, held.stdout + held.stderr
    assert "another manifest's id" not in held.stdout and "is no manifest's" in held.stdout, held.stdout


def test_a_version_with_no_file_to_send_is_verified_by_its_manifest_copy(central, tmp_path):
    # A version that only removed files is complete once its manifest copy is there (the centre learns the removals
    # from it). verify --version said "no file is recorded as uploaded: upload it first" of it, where upload said
    # "nothing to upload", and verify --all never looked at its copy: deleted, it stayed gone, exit 0. (And of any
    # version: a second verify before the next upload no longer looked at a copy the first had found gone.)
    db = committed_site(tmp_path, 3)
    (tmp_path / "site" / "000002" / "Waveforms" / "Telemetry" / "S2" / "S2.dat").unlink()
    commit(tmp_path / "site", db, "20261102020000")
    assert up(central, db).returncode == 0
    copy = "20261102020000/_manifest/manifest.sqlite"
    assert copy in blobs(central)
    one = cli("verify", "--db", str(db), "--to", central.url, "--version", "20261102020000", env=central.env)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "verified 0 files and 1 manifest copy of 1 version (20261102020000)" in one.stdout and "upload it first" not in one.stdout
    said = json.loads(cli("verify", "--db", str(db), "--to", central.url, "--version", "20261102020000", "--json",
                          env=central.env).stdout)
    assert (said["files"], said["manifest_copies"], said["exit_code"]) == (0, 1, 0), said
    central.client.delete_blob(copy)
    gone = cli("verify", "--db", str(db), "--to", central.url, "--all", env=central.env)
    assert gone.returncode == 1, gone.stdout + gone.stderr
    assert "version 20261102020000:" in gone.stdout and "_manifest/manifest.sqlite: the manifest's copy upload put here is gone" in gone.stdout
    # Verified again before an upload (a nightly verify): still gone, still said (it said "all as recorded", exit 0).
    again = cli("verify", "--db", str(db), "--to", central.url, "--all", env=central.env)
    assert again.returncode == 1 and "upload put here is gone" in again.stdout, again.stdout + again.stderr
    back = up(central, db)
    assert back.returncode == 0 and "20261102020000/_manifest/manifest.sqlite" in back.stdout, back.stdout + back.stderr
    assert cli("verify", "--db", str(db), "--to", central.url, "--all", env=central.env).returncode == 0


def test_verify_download_reads_back_the_manifest_copy_and_the_next_upload_puts_it_again(central, azurite, tmp_path):
    # --download, "the only check of the bytes the centre holds", read back every file but the manifest's copy the
    # reviewers open: a copy damaged at the centre (metadata and Content-MD5 kept) was "all as recorded".
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    name = "20261101020000/_manifest/manifest.sqlite"
    damage_keeping_content_md5(central, azurite, name, lambda data: data[:100] + b"\xff" * 3900 + data[4000:])
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 0  # (the listing cannot see it)
    out = cli("verify", "--db", str(db), "--to", central.url, "--download", env=central.env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "content: _manifest/manifest.sqlite: the manifest's copy upload put here: its bytes, read back" in out.stdout
    back = up(central, db)
    assert back.returncode == 0 and "manifest copy:" in back.stdout, back.stdout + back.stderr
    again = cli("verify", "--db", str(db), "--to", central.url, "--download", env=central.env)
    assert again.returncode == 0 and "all as recorded" in again.stdout, again.stdout + again.stderr


def test_a_deleted_central_container_says_the_files_recorded_there_are_gone_and_how_to_send_them_again(
        central, azurite, tmp_path):
    # verify and upload said "check the container name ... or create it": created empty, `upload` then said
    # "nothing to upload" of files the centre no longer held.
    db = committed_site(tmp_path, 3)
    assert up(central, db).returncode == 0
    service = azurite.service_client()
    service.delete_container(central.container)
    log = tmp_path / "upload.log"
    log.write_text("uploaded\t20261101020000/000000/Waveforms/Telemetry/S0/S0.dat\n")
    for out in (cli("verify", "--db", str(db), "--to", central.url, env=central.env), up(central, db),
                cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)):
        assert out.returncode == 3, out.stdout + out.stderr
        assert f"records 3 files of 1 version as uploaded to {central.url.rstrip('/')}" in out.stderr, out.stderr
        assert "they are gone from the centre" in out.stderr and "`chorus-batch verify --all`" in out.stderr
    for _ in range(60):  # (Azure and Azurite refuse the name for a moment while the old one is deleted)
        try:
            service.create_container(central.container)
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    assert cli("verify", "--db", str(db), "--to", central.url, "--all", env=central.env).returncode == 1
    assert up(central, db).returncode == 0  # what the fix said: sent again
    assert len([n for n in blobs(central) if "/_manifest/" not in n]) == 3


# ----------------------------------------------------------------------------- faults


def many_files(site: Path, n: int) -> None:
    for i in range(n):
        write(site, f"{i:06d}/Waveforms/Telemetry/S{i}/S{i}.dat", f"signal {i} ".encode() * 40)


def put_first_file(central, db: Path, site: Path) -> str:
    """The first file version 20261101020000 submits, put at the centre as the upload script puts it (its
    Content-MD5 set); its srcfile."""
    from azure.storage.blob import ContentSettings

    (srcfile, (_, md5)), *_ = submitted(db, "20261101020000").items()
    central.client.get_blob_client(f"20261101020000/{srcfile}").upload_blob(
        (site / srcfile).read_bytes(), content_settings=ContentSettings(content_md5=bytearray.fromhex(md5)))
    return srcfile


def committed_site(tmp_path: Path, n: int) -> Path:
    """A site of `n` waveform files committed as version 20261101020000; its manifest."""
    many_files(tmp_path / "site", n)
    db = tmp_path / "m.sqlite"
    commit(tmp_path / "site", db, "20261101020000")
    return db


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> str:
    """stderr lines until `text` appears (the process keeps running)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"{text!r} did not appear: {''.join(seen)}")


def upload_process(central, db: Path, pause: str, rows: int = 5, resume: Path | None = None) -> subprocess.Popen:
    """An upload paused at `pause`; with `resume`, a pause 'point+SECONDS' ends early once the test creates that file
    (once it has broken what it breaks), not after the whole fixed wait."""
    env = {**os.environ, **central.env, "CHORUS_BATCH_TEST_PAUSE": pause, "CHORUS_BATCH_LEDGER_ROWS": str(rows),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           **({"CHORUS_BATCH_TEST_RESUME": str(resume)} if resume else {})}
    return subprocess.Popen([sys.executable, "-m", "chorus_batch", "upload", "--db", str(db), "--to", central.url,
                             "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def ledger_names(db: Path) -> set[str]:
    return {dest.split("/", 3)[3] for (dest,) in query(db, "SELECT destination FROM uploads WHERE state = 'uploaded'")}


def test_a_killed_upload_resumes_sending_only_the_batch_it_had_not_recorded(central, tmp_path):
    db = committed_site(tmp_path, 40)
    proc = upload_process(central, db, "upload")
    wait_for(proc, "test pause at upload")  # the first batch (5 or more: futures finish together) is in the
    time.sleep(0.5)  # ledger; the threads finish theirs
    at_kill = {name: etag for name, (_, _, etag) in blobs(central).items()}
    recorded = ledger_names(db)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < len(recorded) < 5 + 2 * 2 and recorded <= set(at_kill)  # fewer if 2 s passed first

    out = up(central, db)
    assert out.returncode == 0, out.stdout + out.stderr
    after = {name: etag for name, (_, _, etag) in blobs(central).items() if "/_manifest/" not in name}
    resent = {name for name, etag in at_kill.items() if after.get(name) != etag}
    assert not resent & recorded  # no confirmed file was sent again
    assert resent <= set(at_kill) - recorded and len(resent) <= 2 * 2 + 5  # only the batch in flight
    assert set(after) == {f"20261101020000/{path}" for path in submitted(db, "20261101020000")}
    assert ledger_names(db) == set(after)  # the ledger equals the container
    assert query(db, "SELECT max(attempts) FROM uploads") == [(1,)]


def test_the_progress_of_an_upload_that_finds_blobs_at_the_centre_reaches_its_total(central, tmp_path):
    # A resumed upload finds the blobs its killed run sent but had not recorded: they counted as files done but not as
    # bytes, and its last line said "35/35 files, 1.2 MiB/1.3 MiB ... done" of a version wholly at the centre.
    db = committed_site(tmp_path, 4)
    put_first_file(central, db, tmp_path / "site")
    out = up(central, db, env={"CHORUS_BATCH_PROGRESS_S": "0"})
    assert out.returncode == 0 and "1 already at the centre" in out.stdout, out.stdout + out.stderr
    done = [line for line in out.stderr.splitlines() if "upload 20261101020000:" in line and "done in" in line]
    assert done, out.stderr
    rest = done[-1].split("upload 20261101020000: ", 1)[1]  # ("4/4 files (3 sent, ...), 1.2 MiB/1.2 MiB, ...")
    files, size = rest.split(" (", 1)[0], rest.split("), ", 1)[1].split(", ")[0]
    assert files == "4/4 files", done[-1]
    sent, total = size.split("/")
    assert sent == total, done[-1]


def test_the_progress_and_the_summary_of_an_upload_count_the_same_files_in_the_same_words(central, tmp_path):
    # The progress counted files found at the centre and files not sent among its "4/4 files", and the summary then
    # said "sent 2 files": the two now say sent / already at the centre / skipped alike.
    db = committed_site(tmp_path, 4)
    put_first_file(central, db, tmp_path / "site")
    gone = sorted(submitted(db, "20261101020000"))[-1]
    (tmp_path / "site" / gone).unlink()  # (missing: skipped)
    out = up(central, db, env={"CHORUS_BATCH_PROGRESS_S": "0"})
    assert out.returncode == 1, out.stdout + out.stderr
    done = [line for line in out.stderr.splitlines() if "upload 20261101020000:" in line and "done in" in line]
    assert done and "4/4 files (2 sent, 1 already at the centre, 1 skipped)" in done[-1], out.stderr
    assert "sent 2 files" in out.stdout and "; 1 already at the centre" in out.stdout, out.stdout
    assert "; 1 skipped (listed below)" in out.stdout and "skipped, not sent: 1 file" in out.stdout, out.stdout
    assert "2 files (" in out.stdout and ") sent, 1 already at the centre, 1 skipped in " in out.stdout, out.stdout


def test_the_progress_of_a_large_file_counts_its_blocks_while_it_is_sent(central, tmp_path):
    # A file sent in blocks counted only once it settled: a 320 MiB file's send said "0/1 file, 0 files/s" from its
    # first block to its last, with no bytes and no ETA, as if the upload were stuck.
    site = tmp_path / "site"
    write(site, "000001/Waveforms/000001_20260101_000000_60.dat", b"\0" * (48 << 20) + b"tail")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    out = up(central, db, env={"CHORUS_BATCH_PROGRESS_S": "0"})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.split("upload 20261101020000: ", 1)[1] for line in out.stderr.splitlines()
             if "upload 20261101020000: 0/1 file (0 sent, 0 already at the centre, 0 skipped), " in line]
    sent = [line.split("), ", 1)[1].split(", ")[0].split("/")[0] for line in lines]
    assert any(size.endswith("MiB") and size != "0 B" for size in sent), out.stderr  # blocks counted mid-file


def test_verify_of_a_partly_uploaded_version_says_what_is_not_uploaded_yet_and_exits_1(central, tmp_path):
    # An upload killed after its first batch: verify said "all as recorded", exit 0, of a version the centre holds
    # a part of (it checks the files recorded as uploaded, and those were as recorded).
    db = committed_site(tmp_path, 20)
    proc = upload_process(central, db, "upload")
    wait_for(proc, "test pause at upload")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_recorded = len(ledger_names(db))
    assert 0 < n_recorded < 20
    out = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "all as recorded" not in out.stdout
    assert f"version 20261101020000: {20 - n_recorded} of its 20 files not uploaded yet" in out.stdout
    assert "run `chorus-batch upload`" in out.stdout
    # ... and `verify --help` says so: its exit codes and description named only blobs missing or not matching
    said = " ".join(cli("verify", "--help").stdout.split())
    assert "verify: blobs missing or not matching, or files of the verified version not uploaded yet" in said, said
    assert "and so do files of a verified version not uploaded yet" in said, said
    as_json = json.loads(cli("verify", "--db", str(db), "--to", central.url, "--json", env=central.env).stdout)
    assert as_json["not_uploaded_yet"] == [{"version": "20261101020000", "not_uploaded": 20 - n_recorded, "files": 20}]
    assert up(central, db).returncode == 0
    done = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert done.returncode == 0 and "all as recorded" in done.stdout, done.stdout + done.stderr


def test_upload_of_a_named_version_that_is_complete_checks_it_and_leaves_its_manifest_copy(central, tmp_path):
    # `upload --version X` of a version completely uploaded sent nothing, yet put a copy of the manifest as it is now
    # (with later versions and another ledger) over the one the centre had read as that submission's.
    db = committed_site(tmp_path, 3)
    assert up(central, db).returncode == 0
    copy = "20261101020000/_manifest/manifest.sqlite"
    before = blobs(central)[copy]
    many_files(tmp_path / "site", 4)
    commit(tmp_path / "site", db, "20261102020000")  # the manifest moved on
    again = up(central, db, "--version", "20261101020000", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    [version] = json.loads(again.stdout)["versions"]
    assert version["manifest_copy"] is None and version["manifest_copy_kept"] == f"{central.url}{copy}"
    assert blobs(central)[copy] == before
    assert "left as it is" in up(central, db, "--version", "20261101020000").stdout
    # Its dry run says so too (it said nothing of the copy the upload then leaves as it is).
    dry = up(central, db, "--version", "20261101020000", "--dry-run")
    assert dry.returncode == 0 and f"manifest copy: {central.url}{copy}, put there when the version was completed, " \
        "would be left as it is" in dry.stdout, dry.stdout + dry.stderr
    # A copy gone is put there again by the same command.
    central.client.delete_blob(copy)
    back = up(central, db, "--version", "20261101020000")
    assert back.returncode == 0 and f"manifest copy: {central.url}{copy}\n" in back.stdout, back.stdout + back.stderr


def test_upload_and_its_dry_run_keep_a_complete_versions_copy_only_when_it_is_this_commits(central, tmp_path):
    # verify took the copy for this manifest's by its id and this commit's fingerprint; `upload --version` of a
    # complete version (and its dry run) by the id alone: a copy put there by a copy of this manifest that committed
    # its own version under the label was "left as it is" (exit 0), while verify said it was not this commit's.
    db = committed_site(tmp_path, 1)
    assert up(central, db).returncode == 0
    copy = central.client.get_blob_client("20261101020000/_manifest/manifest.sqlite")
    metadata = copy.get_blob_properties().metadata
    copy.set_blob_metadata({**metadata, "chorus_version_fingerprint": "another commit"})  # (the twin's copy)
    before = blobs(central)
    for extra in (("--dry-run",), ()):
        out = up(central, db, "--version", "20261101020000", *extra)
        assert out.returncode == 5, out.stdout + out.stderr
        assert "another commit of this version label by a copy of this manifest" in out.stdout, out.stdout
        assert "left as it is" not in out.stdout and "would be put at" not in out.stdout, out.stdout
    assert blobs(central) == before


def test_storage_stopped_mid_upload_fails_clearly_and_resumes_after_restart(monkeypatch, tmp_path):
    service = Azurite(tmp_path / "own-azurite")
    service.start()
    try:
        central = central_for(service, monkeypatch, tmp_path)
        db = committed_site(tmp_path, 30)
        proc = upload_process(central, db, "upload+4", resume=tmp_path / "resume")
        wait_for(proc, "test pause at upload")
        service.stop()  # the service goes away while the upload waits at its first batch
        (tmp_path / "resume").touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, out + err
        assert "cannot upload to" in err and "Traceback" not in err
        assert "confirmed by this upload are recorded" in err and "run the same command again to resume" in err
        confirmed_before = ledger_names(db)
        assert len(confirmed_before) >= 5

        service.start()
        out = up(central, db)
        assert out.returncode == 0, out.stdout + out.stderr
        held = {name for name in blobs(central) if "/_manifest/" not in name}
        assert held == ledger_names(db) == {f"20261101020000/{p}" for p in submitted(db, "20261101020000")}
    finally:
        service.stop()


def test_bad_destinations_and_sign_in_say_what_to_do(central, tmp_path):
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    no_to = cli("upload", "--db", str(db), env=central.env)
    assert no_to.returncode == 2 and "--to" in no_to.stderr and "[central] to" in no_to.stderr
    sas = cli("upload", "--db", str(db), "--to", central.url + "?sv=2020&sig=SECRET", env=central.env)
    assert sas.returncode == 2 and "SECRET" not in sas.stderr and "AZURE_STORAGE_SAS_TOKEN" in sas.stderr
    # A '?' was told as a SAS token; '//' was sent to the prefix without it. Each is named, nothing is sent.
    # (a query item without '=' is shown masked whole, as a %-escaped SAS would be: x?***)
    for to, said, shown in ((central.url + "x?y/", "'?' starts a query", central.url + "x?***"),
                            (central.url + "/x", "has an empty folder name", central.url + "/x")):
        odd = cli("upload", "--db", str(db), "--to", to, env=central.env)
        assert odd.returncode == 2 and said in odd.stderr and shown in odd.stderr, odd.stderr
        assert blobs(central) == {} and query(db, "SELECT count(*) FROM uploads") == [(0,)]
    missing = cli("upload", "--db", str(db), "--to", "az://no-such-container/", env=central.env)
    assert missing.returncode == 3 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    assert "nothing" not in missing.stdout and query(db, "SELECT count(*) FROM uploads") == [(0,)]
    before = cli("verify", "--db", str(db), "--to", central.url, "--version", "20261101020000", env=central.env)
    # A version asked for by name and never uploaded is not verified, and that is not a success.
    assert before.returncode == 1, before.stdout + before.stderr
    assert "not verified: no file of version 20261101020000 is recorded as uploaded" in before.stdout
    assert "chorus-batch upload --version 20261101020000" in before.stdout
    assert query(db, "SELECT count(*) FROM submissions") == [(0,)]  # not called verified
    latest = cli("verify", "--db", str(db), "--to", central.url, env=central.env)  # no version named: nothing to do
    assert latest.returncode == 0 and "nothing to verify" in latest.stdout, latest.stdout + latest.stderr
    unknown = cli("upload", "--db", str(db), "--to", central.url, "--version", "20990101000000", env=central.env)
    assert unknown.returncode == 2 and "no version '20990101000000'" in unknown.stderr
    moved = tmp_path / "moved"
    shutil.move(site, moved)
    gone = cli("upload", "--db", str(db), "--to", central.url, env=central.env)
    assert gone.returncode == 2 and "--site" in gone.stderr, gone.stderr
    there = cli("upload", "--db", str(db), "--to", central.url, "--site", str(moved), env=central.env)
    assert there.returncode == 0, there.stdout + there.stderr


# ----------------------------------------------------------------------------- scripts for the Azure CLI / AzCopy


@pytest.mark.parametrize("kind", ["bash", "azcopy"])
def test_an_upload_script_and_mark_uploaded_from_its_log(central, tmp_path, kind):
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/Telemetry/S1/S1 one.dat", b"signal with a space in its name")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", kind, env=central.env)
    assert out.returncode == 0, out.stderr
    script = out.stdout
    assert "mark-uploaded" in out.stderr and "AccountKey" not in script and "sig=" not in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    tool = "az storage blob upload" if kind == "bash" else "azcopy copy"
    assert tool in script
    expected = submitted(db, "20261101020000")
    for srcfile, (_, md5) in expected.items():
        assert md5 in script and base64.b64encode(bytes.fromhex(md5)).decode() in script
    # What the script's commands do (a blob with the manifest's MD5 as Content-MD5), done here with the SDK,
    # and the lines it logs; one line names a blob that was never sent.
    from azure.storage.blob import ContentSettings

    log = tmp_path / "upload.log"
    lines = []
    for srcfile, (_, md5) in expected.items():
        name = f"20261101020000/{srcfile}"
        central.client.get_blob_client(name).upload_blob(
            (site / srcfile).read_bytes(), content_settings=ContentSettings(content_md5=bytearray.fromhex(md5)))
        lines.append(f"uploaded\t{name}")
    lines.append("uploaded\t20261101020000/OMOP/never_sent.csv")
    log.write_text("\n".join(lines) + "\n")
    marked = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert marked.returncode == 1, marked.stdout + marked.stderr
    assert "recorded 2 uploads" in marked.stdout and "never_sent.csv" in marked.stdout
    assert query(db, "SELECT count(*), min(confirmed_by) FROM uploads WHERE state = 'uploaded'") == [(2, "listing")]
    finish = up(central, db)  # nothing left to send: checks the version and copies the manifest next to it
    assert finish.returncode == 0 and "sent 0 files" in finish.stdout, finish.stdout + finish.stderr
    assert "20261101020000/_manifest/manifest.sqlite" in blobs(central)


def test_a_manifest_in_azure_gets_its_ledger_back_under_the_lease(central, azurite, tmp_path):
    site = tmp_path / "site"
    many_files(site, 3)
    manifest_container = azurite.new_container("man")
    db_url = f"az://{manifest_container}/site/manifest.sqlite"
    out = cli("run", "--site", str(site), "--db", db_url, "--version", "20261101020000", "--no-validate",
              env=central.env)
    assert out.returncode == 0, out.stderr
    sent = cli("upload", "--db", db_url, "--to", central.url, env=central.env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    remote = azurite.service_client().get_blob_client(manifest_container, "site/manifest.sqlite")
    copy = tmp_path / "remote.sqlite"
    copy.write_bytes(remote.download_blob().readall())
    assert query(copy, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(3,)]
    assert query(copy, "SELECT finished_at IS NOT NULL, manifest_copied_at IS NOT NULL FROM submissions") == [(1, 1)]
    lock = azurite.service_client().get_blob_client(manifest_container, "site/manifest.sqlite.lock")
    assert str(lock.get_blob_properties().lease.state) != "leased"


def test_sigterm_stops_an_upload_and_says_what_it_recorded(central, tmp_path):
    db = committed_site(tmp_path, 20)
    proc = upload_process(central, db, "upload")
    wait_for(proc, "test pause at upload")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    recorded = ledger_names(db)
    assert f"terminated (SIGTERM); {_files_confirmed(len(recorded))} recorded" in err, err
    assert "Traceback" not in err and "nothing was committed" not in err
    finish = up(central, db)
    assert finish.returncode == 0 and ledger_names(db) == {f"20261101020000/{p}" for p in submitted(db, "20261101020000")}


def test_the_ledger_keeps_every_column_of_a_mixed_batch_and_never_unconfirms(tmp_path):
    from chorus_batch.store import Manifest
    from chorus_batch.store.uploads import UploadLedger

    db = committed_site(tmp_path, 2)
    ledger = UploadLedger(Manifest(db), "az://c")
    (a, _), (b, _) = query(db, "SELECT file_id, srcfile FROM source_files ORDER BY file_id")
    failed = {"version": "20261101020000", "file_id": a, "destination": "az://c/x", "state": "failed",
              "last_error": "boom", "attempts": 1}
    sent = {"version": "20261101020000", "file_id": b, "destination": "az://c/y", "state": "uploaded", "bytes": 7,
            "md5": "ab", "etag": "e", "confirmed_by": "service", "attempts": 1, "uploaded_at": "t", "last_error": None}
    ledger.record([failed, sent])  # a failure first: the confirmed row after it keeps its bytes and MD5
    assert query(db, "SELECT file_id, state, bytes, md5, attempts FROM uploads ORDER BY file_id") == \
        [(a, "failed", None, None, 1), (b, "uploaded", 7, "ab", 1)]
    ledger.record([{**failed, "file_id": b}, {**sent, "file_id": a}])  # b fails later: it stays confirmed
    assert query(db, "SELECT file_id, state, bytes, attempts FROM uploads ORDER BY file_id") == \
        [(a, "uploaded", 7, 2), (b, "uploaded", 7, 1)]


# ----------------------------------------------------------------------------- what is there already stays


def test_another_manifests_blobs_and_copy_with_the_same_labels_are_never_replaced(central, tmp_path):
    label = "20261101020000"
    dbs = {}
    for site, other in (("a", b"site a's own"), ("b", b"site b's own, longer"), ("c", None)):
        if other is not None:
            write(tmp_path / site, "OMOP/person.csv", other)
        write(tmp_path / site, "OMOP/concept.csv", b"the same in every site")
        dbs[site] = tmp_path / f"{site}.sqlite"
        commit(tmp_path / site, dbs[site], label)
    first = up(central, dbs["a"])
    assert first.returncode == 0, first.stdout + first.stderr
    before = blobs(central)

    # b: its person.csv differs from a's (refused, recorded, named); its concept.csv is a's (confirmed as it is)
    second = up(central, dbs["b"])
    assert second.returncode == 5, second.stdout + second.stderr
    assert f"conflict: OMOP/person.csv: {central.url}{label}/OMOP/person.csv already holds other content" in second.stdout
    assert "--to az://<container>/<prefix>/" in second.stdout
    assert query(dbs["b"], "SELECT f.srcfile, u.state, u.confirmed_by, coalesce(u.last_error, '') LIKE '%already holds other%' "
                           "FROM uploads u JOIN source_files f USING (file_id) ORDER BY 1") == \
        [("OMOP/concept.csv", "uploaded", "found", 0), ("OMOP/person.csv", "conflict", None, 1)]
    assert blobs(central) == before  # nothing replaced, not even the manifest's copy (b's version is incomplete)

    # c's version is complete (its one file is a's): its manifest copy would replace a's, and is refused
    third = up(central, dbs["c"])
    assert third.returncode == 5, third.stdout + third.stderr
    assert "manifest copy refused" in third.stdout and "copy of another manifest" in third.stdout
    assert blobs(central) == before
    assert query(dbs["c"], "SELECT finished_at FROM submissions") == [(None,)]  # not complete: said again next time
    verified = cli("verify", "--db", str(dbs["a"]), "--to", central.url, "--download", env=central.env)
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr


def test_two_copies_of_one_manifest_each_with_its_own_commit_of_a_label_never_mix_at_the_centre(central, tmp_path):
    # A manifest copied to another node (or restored from a backup) has the same manifest id. Each copy committed its own
    # version under one label (a fixed --version): the second upload took the first's folder, claimed and finished by
    # "this manifest", for its own, added its files to it and replaced its manifest copy: a submission of two sites'
    # files. The folder's claim and copy carry which commit of the label they hold: the other copy is refused as another
    # manifest is. A copy holding the same commit (copied after it) confirms what is there, as one manifest does.
    label = "20261101020000"
    write(tmp_path / "a", "OMOP/person.csv", b"person_id\n1\n")
    a = tmp_path / "a.sqlite"
    commit(tmp_path / "a", a, "20261101010000")
    b = tmp_path / "b.sqlite"
    shutil.copyfile(a, b)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    write(tmp_path / "a", "OMOP/visit_occurrence.csv", b"visit_occurrence_id\n1\n")
    commit(tmp_path / "a", a, label)
    same = tmp_path / "same.sqlite"
    shutil.copyfile(a, same)  # (copied after the commit: the same version)
    write(tmp_path / "b", "OMOP/death.csv", b"person_id\n1\n")
    time.sleep(1.1)  # (b's commit starts at another second, as another node's would)
    commit(tmp_path / "b", b, label)
    first = up(central, a)
    assert first.returncode == 0, first.stdout + first.stderr
    before = blobs(central, label)
    # (b sends 20261101010000 too, the commit both copies hold: found there, its copy put again)
    second = up(central, b)
    assert second.returncode == 5, second.stdout + second.stderr
    assert "another commit of this version label by a copy of this manifest" in second.stdout, second.stdout
    assert blobs(central, label) == before  # death.csv not added, a's manifest copy not replaced
    again = up(central, same)
    assert again.returncode == 0, again.stdout + again.stderr
    assert set(blobs(central, label)) == set(before)
    verified = cli("verify", "--db", str(a), "--to", central.url, "--all", env=central.env)
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr


def test_verify_says_when_the_folder_holds_another_copys_commit_of_the_label(central, tmp_path):
    # verify took the version folder for this manifest's by the manifest id alone: a copy of the manifest that
    # committed its own version under the label (and put its manifest copy there once this one's claim and copy were
    # removed at the centre) was called this manifest's, its copy "as recorded". By the commit's fingerprint too.
    label = "20261101020000"
    write(tmp_path / "a", "OMOP/person.csv", b"person_id\n1\n")
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    commit(tmp_path / "a", a, "20261101010000")
    shutil.copyfile(a, b)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    write(tmp_path / "a", "OMOP/visit_occurrence.csv", b"visit_occurrence_id\n1\n")
    commit(tmp_path / "a", a, label)
    write(tmp_path / "b", "OMOP/death.csv", b"person_id\n1\n")
    time.sleep(1.1)  # (b's commit starts at another second, as another node's would)
    commit(tmp_path / "b", b, label)
    assert up(central, a).returncode == 0
    for name in ("owner", "manifest.sqlite"):  # (a's submission taken down at the centre, its files left)
        central.client.delete_blob(f"{label}/_manifest/{name}")
    assert up(central, b).returncode == 1  # (a's visit_occurrence.csv is no file of b's: not complete)
    verified = cli("verify", "--db", str(a), "--to", central.url, "--version", label, env=central.env)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "another commit of this version label by a copy of this manifest" in verified.stdout, verified.stdout
    assert query(a, "SELECT finished_at FROM submissions WHERE version = ?", (label,)) == [(None,)]


def committed_with_names(tmp_path, names: list[str], label: str):
    """A site of OMOP/person.csv and files of these (odd) names, committed as version `label`; its manifest."""
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    for name in names:
        write(site, name, b"a name the centre cannot keep")
    db = tmp_path / "m.sqlite"
    commit(site, db, label)
    return db

def test_names_azure_would_rewrite_are_refused_before_sending_and_never_called_missing(central, azurite, tmp_path,
                                                                                        monkeypatch):
    bad = ["Metadata/back\\slash.md", "Metadata/notes.", "Metadata/ctl\x01x.md"]
    db = committed_with_names(tmp_path, bad, "20261101020000")
    for _ in range(2):  # the same, truthful answer every time
        out = up(central, db)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "bad_name: 3" in out.stdout and "missing" not in out.stdout
        assert "bad_name: Metadata/back\\slash.md: its name holds a backslash" in out.stdout
        assert "rename it in the site" in out.stdout
        assert set(blobs(central)) == {"20261101020000/OMOP/person.csv"}  # no back/slash.md, no manifest copy
    assert sorted(query(db, "SELECT f.srcfile, u.state FROM uploads u JOIN source_files f USING (file_id) "
                            "WHERE u.state != 'uploaded'")) == sorted((name, "bad_name") for name in bad)

    # An Azure site blob with a TAB in its name: listed and hashed by `run`; refused by name, not "missing".
    site_container = azurite.new_container("tabsite")
    client = azurite.service_client().get_container_client(site_container)
    client.upload_blob("OMOP/person.csv", b"person_id\n2\n")
    client.upload_blob("Metadata/tab\tx.md", b"tab")
    cloud_db = tmp_path / "cloud.sqlite"
    ran = cli("run", "--site", f"az://{site_container}/", "--db", str(cloud_db), "--version", "20261101020000",
              "--workers", "2", "--no-validate", env=central.env)
    assert ran.returncode in (0, 1), ran.stderr
    assert query(cloud_db, "SELECT count(*) FROM source_files WHERE srcfile = 'Metadata/tab\tx.md'") == [(1,)]
    out = cli("upload", "--db", str(cloud_db), "--to", f"az://{central.container}/other/", env=central.env)
    assert out.returncode == 1 and "missing" not in out.stdout, out.stdout + out.stderr
    assert "bad_name: 'Metadata/tab\\tx.md': its name holds a control character" in out.stdout  # escaped

    from chorus_batch.sources import open_source

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", central.env["AZURE_STORAGE_CONNECTION_STRING"])
    # the lookup itself finds it (adlfs, parsing the path as a URL, dropped the TAB)
    assert open_source(f"az://{site_container}/").stat("Metadata/tab\tx.md").size == 3


def test_identifiable_lookup_tables_are_never_sent_whatever_validation_said(central, tmp_path):
    """The Imaging SOP's image_map.csv and personal_map.csv map MRNs to person_id: "stays local at the site and is not
    shared". Validation errors do not stop an upload (the centre decides), so these were sent with the version."""
    site, db, label = tmp_path / "site", tmp_path / "m.sqlite", "20261101020000"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/death.csv", b"person_id\n")
    write(site, "OMOP/visit_occurrence.csv", b"visit_occurrence_id\n")
    write(site, "Metadata/personal_map.csv", b"PatientID,person_id\nMRN123456,1\n")
    write(site, "1/Images/Image_Map.CSV", b"AccessionNumber,image_occurrence_id\nACC99,5\n")
    commit(site, db, label)
    out = up(central, db)
    assert out.returncode == 1, out.stdout + out.stderr
    # neither table, and no manifest copy (not complete)
    assert set(blobs(central)) == {f"{label}/OMOP/{t}.csv" for t in ("person", "death", "visit_occurrence")}
    assert "bad_name: Metadata/personal_map.csv: a de-identification lookup table" in out.stdout, out.stdout
    assert '"stays local at the site and is not shared"' in out.stdout
    assert "move it out of the site's folder" in out.stdout
    assert "rename it" not in out.stdout
    script = cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", env=central.env)
    assert script.returncode == 1 and "not in the script: 2 files that are a de-identification" in script.stderr
    assert "personal_map" not in script.stdout and "Image_Map" not in script.stdout
    # kept at the site, outside its folder: the next run records them gone, and the version completes without them
    (site / "Metadata/personal_map.csv").rename(tmp_path / "personal_map.csv")
    (site / "1/Images/Image_Map.CSV").unlink()
    commit(site, db, "20261102020000")
    out = up(central, db)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not [name for name in blobs(central) if "map" in name.lower()]


def test_site_files_in_a_folder_named_manifest_are_refused_by_name_not_sent_and_called_missing_for_ever(central,
                                                                                                        tmp_path):
    """<version>/_manifest/ holds the manifest's copy and the claim. A site's own _manifest/ folder was sent there, then
    left out of every listing check: "missing: not in the central container" of a blob that was there, the version never
    finished and each upload said to run it again; its empty _manifest/owner was confirmed as 'found': the claim."""
    site, db, label = tmp_path / "site", tmp_path / "m.sqlite", "20261101020000"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "_manifest/notes.txt", b"the site's own notes")
    write(site, "_manifest/owner", b"")
    commit(site, db, label)
    for _ in range(2):  # the same, truthful answer every time
        out = up(central, db)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "bad_name: 2" in out.stdout and "missing" not in out.stdout, out.stdout
        assert "bad_name: _manifest/notes.txt: its top folder (or name) '_manifest' is where upload keeps" in out.stdout
        assert set(blobs(central)) == {f"{label}/OMOP/person.csv"}
    assert sorted(query(db, "SELECT f.srcfile, u.state FROM uploads u JOIN source_files f USING (file_id) "
                            "WHERE u.state != 'uploaded'")) == [("_manifest/notes.txt", "bad_name"),
                                                               ("_manifest/owner", "bad_name")]
    checked = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert "missing" not in checked.stdout, checked.stdout
    script = cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", env=central.env)
    assert script.returncode == 1 and "not in the script: 2 files whose name" in script.stderr, script.stderr
    # a central prefix named so is no such folder: the version folders are below it
    assert cli("upload", "--db", str(db), "--to", f"{central.url}_manifest/", "--dry-run",
               env=central.env).returncode == 1


def test_files_verify_found_damaged_are_sent_again_by_the_next_upload(central, tmp_path):
    db = committed_site(tmp_path, 5)
    label = "20261101020000"
    assert up(central, db).returncode == 0
    names = sorted(name for name in blobs(central) if "/_manifest/" not in name)
    copy_etag = blobs(central)[f"{label}/_manifest/manifest.sqlite"][2]
    central.client.delete_blob(names[0])  # missing
    central.client.get_blob_client(names[1]).upload_blob(b"trunc", overwrite=True)  # size and MD5
    original = central.client.get_blob_client(names[2]).download_blob().readall()
    central.client.get_blob_client(names[2]).upload_blob(b"X" + original[1:], overwrite=True)  # same size, bytes differ
    verified = cli("verify", "--db", str(db), "--to", central.url, "--download", env=central.env)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "fix:   run `chorus-batch upload`" in verified.stdout and "sends the missing and damaged" in verified.stdout
    assert "failed verification" in cli("versions", "--db", str(db)).stdout

    again = up(central, db)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "sent 3 files" in again.stdout and "2 sent before" in again.stdout and "all there" in again.stdout
    held = blobs(central)
    expected = submitted(db, label)
    assert {k[len(label) + 1:]: v[:2] for k, v in held.items() if "/_manifest/" not in k} == expected
    assert held[f"{label}/_manifest/manifest.sqlite"][2] != copy_etag  # this manifest's own copy: replaced
    verified = cli("verify", "--db", str(db), "--to", central.url, "--download", env=central.env)
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr
    assert "nothing to upload" in up(central, db).stdout


def test_a_version_sent_on_after_verify_with_blobs_of_others_in_its_folder_stays_unfinished_until_they_go(central,
                                                                                                         tmp_path):
    # A finished version, a blob verify found gone, and a blob another tool put in the folder: the upload sent the
    # file again and said the folder holds blobs the manifest does not list (exit 1, "then upload again"), but the
    # version stayed recorded as finished from before: the next upload said "nothing to upload", exit 0.
    db = committed_site(tmp_path, 3)
    label = "20261101020000"
    assert up(central, db).returncode == 0
    names = sorted(name for name in blobs(central) if "/_manifest/" not in name)
    central.client.delete_blob(names[0])
    central.client.upload_blob(f"{label}/000009/OMOP/other.csv", b"person_id\n9\n")
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    again = up(central, db)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "sent 1 file" in again.stdout and "000009/OMOP/other.csv" in again.stdout, again.stdout
    assert query(db, "SELECT finished_at FROM submissions") == [(None,)]
    still = up(central, db)
    assert still.returncode == 1 and "nothing to upload" not in still.stdout, still.stdout + still.stderr
    assert "000009/OMOP/other.csv" in still.stdout, still.stdout
    central.client.delete_blob(f"{label}/000009/OMOP/other.csv")
    done = up(central, db)
    assert done.returncode == 0 and "complete; checked" in done.stdout, done.stdout + done.stderr
    assert query(db, "SELECT finished_at IS NOT NULL FROM submissions") == [(1,)]
    assert "nothing to upload" in up(central, db).stdout


def test_damaged_files_sent_again_are_no_longer_counted_as_failed_verification_while_the_version_waits(central, tmp_path):
    # A version that cannot finish yet (a file changed since) gets no listing check after an upload: `versions` kept
    # saying "N failed verification" for files the upload had just sent again (their ledger rows were unverified).
    db = committed_site(tmp_path, 4)
    label = "20261101020000"
    write(tmp_path / "site", "000003/Waveforms/Telemetry/S3/S3.dat", b"changed since")  # stale: the version waits
    assert up(central, db).returncode == 1
    names = sorted(name for name in blobs(central) if "/_manifest/" not in name)
    central.client.delete_blob(names[0])
    central.client.get_blob_client(names[1]).upload_blob(b"trunc", overwrite=True)
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    assert "3/4 sent, 1 not sent, 2 failed verification" in cli("versions", "--db", str(db)).stdout
    again = up(central, db)
    assert again.returncode == 1 and "sent 2 files" in again.stdout, again.stdout + again.stderr
    shown = cli("versions", "--db", str(db)).stdout
    assert "failed verification" not in shown and "verified" not in shown and "3/4 sent, 1 not sent" in shown, shown
    # One still damaged stays counted.
    central.client.delete_blob(names[2])
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    assert "1 failed verification" in cli("versions", "--db", str(db)).stdout
    assert query(db, "SELECT n_bad FROM submissions WHERE version = ?", (label,)) == [(1,)]


def test_mark_uploaded_records_what_the_script_left_out_as_superseded_as_upload_would(central, tmp_path):
    # A version whose file a later version replaced before anything was sent: the script left it out without a
    # word, and mark-uploaded never marked that version (`versions` showed it as never uploaded).
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    write(site, "OMOP/visit.csv", b"visit_id\n7\n")
    commit(site, db, "20261102020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", env=central.env)
    assert out.returncode == 0, out.stderr
    assert "sends 2 files" in out.stderr and "not in the script: 1 file a later version replaced" in out.stderr
    from azure.storage.blob import ContentSettings

    lines = []
    for srcfile, (_, md5) in submitted(db, "20261102020000").items():  # what the script's commands do
        central.client.get_blob_client(f"20261102020000/{srcfile}").upload_blob(
            (site / srcfile).read_bytes(), content_settings=ContentSettings(content_md5=bytearray.fromhex(md5)))
        lines.append(f"uploaded\t20261102020000/{srcfile}")
    log = tmp_path / "upload.log"
    log.write_text("\n".join(lines) + "\n")
    marked = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert "recorded 2 uploads" in marked.stdout and "recorded 1 file as superseded" in marked.stdout
    assert query(db, "SELECT version, state FROM uploads WHERE state != 'uploaded'") == [("20261101020000", "superseded")]
    shown = {v["label"]: v["upload"] for v in json.loads(cli("versions", "--db", str(db), "--json").stdout)}
    assert "0/1 sent, 1 not sent" in shown["20261101020000"] and "2/2 sent" in shown["20261102020000"], shown
    finish = up(central, db)  # nothing left to send: checks both versions and copies the manifest next to them
    assert finish.returncode == 0 and "sent 0 files" in finish.stdout, finish.stdout + finish.stderr
    assert "nothing to upload" in up(central, db).stdout


def test_an_azcopy_script_targets_the_endpoint_the_connection_string_names(tmp_path):
    db = committed_site(tmp_path, 1)
    key = base64.b64encode(b"not a real key").decode()
    for conn, endpoint in ((f"DefaultEndpointsProtocol=https;AccountName=mgh;AccountKey={key};"
                            "EndpointSuffix=core.usgovcloudapi.net", "https://mgh.blob.core.usgovcloudapi.net"),
                           (f"AccountName=mgh;AccountKey={key};BlobEndpoint=https://blob.example.org/mgh/",
                            "https://blob.example.org/mgh")):
        env = {name: "" for name in AZURE_VARS} | {"AZURE_STORAGE_CONNECTION_STRING": conn}
        out = cli("upload", "--db", str(db), "--to", "az://central/", "--script", "azcopy", env=env)
        assert out.returncode == 0, out.stderr
        assert f"ACCOUNT_URL={endpoint}\n" in out.stdout
        assert key not in out.stdout + out.stderr and "AccountKey" not in out.stdout


@pytest.mark.parametrize("kind", ["bash", "azcopy"])
def test_a_script_never_writes_a_secret_the_connection_strings_blob_endpoint_carries(tmp_path, kind):
    """A connection string whose BlobEndpoint carries a SAS as its query (the SDK signs in with it) or a
    user:password@: the script's ACCOUNT_URL was the whole value, the SAS signature in a file kept beside the site."""
    db = committed_site(tmp_path, 1)
    sas = "sv=2024-11-04&ss=b&srt=sco&sp=rwl&se=2030-01-01T00%3A00%3A00Z&sig=SeCrEtSiGnAtUrE%3D"
    for conn in (f"BlobEndpoint=https://mgh.blob.core.windows.net/?{sas}",
                 f"BlobEndpoint=https://mgh.blob.core.windows.net?{sas};",
                 f"BlobEndpoint=https://me:SeCrEtSiGnAtUrE@mgh.blob.core.windows.net/;SharedAccessSignature={sas}"):
        env = {name: "" for name in AZURE_VARS} | {"AZURE_STORAGE_CONNECTION_STRING": conn}
        out = cli("upload", "--db", str(db), "--to", "az://central/", "--script", kind, env=env)
        assert out.returncode == 0, out.stderr
        assert "ACCOUNT_URL=https://mgh.blob.core.windows.net\n" in out.stdout, conn
        assert "SeCrEtSiGnAtUrE" not in out.stdout + out.stderr, conn


def script_env() -> dict[str, str]:
    """The environment of an `upload --script` test: a connection string of an account that is not there (the script
    is written, not run against it), no other Azure variable."""
    key = base64.b64encode(b"not a real key").decode()
    return {**{name: "" for name in AZURE_VARS},
            "AZURE_STORAGE_CONNECTION_STRING": f"AccountName=mgh;AccountKey={key};EndpointSuffix=core.windows.net"}


def test_a_script_for_a_site_given_by_a_relative_path_reads_its_files_by_their_full_path(tmp_path):
    """`upload --script bash --site ./site/` wrote the files' paths as given (site/OMOP/...): the script, run later
    from another folder (cron, `bash /path/upload.sh`), found none of them. Paths in the script are absolute."""
    committed_site(tmp_path, 2)  # (m.sqlite, given by its relative name below)
    env = script_env()
    for kind in ("bash", "azcopy"):
        out = cli("upload", "--db", "m.sqlite", "--to", "az://central/", "--script", kind, "--site", "./site/",
                  cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stderr
        sent = [line for line in out.stdout.splitlines() if "site/" in line and not line.startswith("#")]
        assert sent and all(str(tmp_path / "site") + "/" in line for line in sent), sent
        assert " site/" not in out.stdout and "./site" not in out.stdout


def test_a_script_written_where_standard_output_ends_lines_with_crlf_has_lf_line_ends(tmp_path):
    """On Windows, Python's standard output writes each '\\n' as '\\r\\n': `upload --script bash > upload.sh` there
    gave a script bash (Git Bash, WSL) cannot run ($'\\r': command not found on every line). Standard output is
    made here as Windows makes it; the scripts keep '\\n' line ends (the messages on stderr are the system's)."""
    db = committed_site(tmp_path, 1)
    key = base64.b64encode(b"not a real key").decode()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, **{name: "" for name in AZURE_VARS},
           "AZURE_STORAGE_CONNECTION_STRING": f"AccountName=mgh;AccountKey={key};EndpointSuffix=core.windows.net"}
    windows = ("import io, runpy, sys\n"
               "sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding='utf-8', newline='\\r\\n')\n"
               "sys.argv[0] = 'chorus-batch'\nrunpy.run_module('chorus_batch', run_name='__main__', alter_sys=True)\n")
    for args in (["upload", "--db", str(db), "--to", "az://central/", "--script", "bash"],
                 ["upload", "--db", str(db), "--to", "az://central/", "--script", "azcopy"],
                 ["slurm-script", "--site", str(tmp_path / "site"), "--db", str(db)]):
        out = subprocess.run([sys.executable, "-c", windows, *args], capture_output=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout.startswith(b"#!/") and out.stdout.count(b"\n") > 10 and b"\r" not in out.stdout, args


def committed_in_azure(central, azurite, tmp_path, files: int) -> tuple[str, str]:
    """A site of `files` files committed (one version) to a new manifest in Azure: its URL, and its container."""
    many_files(tmp_path / "site", files)
    container = azurite.new_container("man")
    db_url = f"az://{container}/site/manifest.sqlite"
    out = cli("run", "--site", str(tmp_path / "site"), "--db", db_url, "--version", "20261101020000", "--no-validate",
              env=central.env)
    assert out.returncode == 0, out.stderr
    return db_url, container


def test_an_upload_stopped_with_the_manifest_in_azure_writes_its_ledger_back(central, azurite, tmp_path):
    db_url, manifest_container = committed_in_azure(central, azurite, tmp_path, 20)
    proc = upload_process(central, db_url, "upload")
    wait_for(proc, "test pause at upload")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, out + err
    remote = tmp_path / "remote.sqlite"
    remote.write_bytes(azurite.service_client().get_blob_client(manifest_container, "site/manifest.sqlite")
                       .download_blob().readall())
    recorded = ledger_names(remote)
    assert recorded and f"{_files_confirmed(len(recorded))} recorded in the manifest's" in err, err
    at_stop = {name: etag for name, (_, _, etag) in blobs(central).items()}
    finish = cli("upload", "--db", db_url, "--to", central.url, "--json", env=central.env)
    assert finish.returncode == 0, finish.stdout + finish.stderr
    assert json.loads(finish.stdout)["versions"][0]["sent_before"] == len(recorded)  # not sent again
    assert all(blobs(central)[name][2] == at_stop[name] for name in recorded)


def test_a_central_container_inside_the_site_or_holding_it_is_refused(central, azurite, tmp_path):
    site_container = azurite.new_container("site")
    client = azurite.service_client().get_container_client(site_container)
    client.upload_blob("site/OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    ran = cli("run", "--site", f"az://{site_container}/site/", "--db", str(db), "--version", "20261101020000",
              "--workers", "2", "--no-validate", env=central.env)
    assert ran.returncode in (0, 1), ran.stderr
    for to in (f"az://{site_container}/site/", f"az://{site_container}/site/central/", f"az://{site_container}/"):
        out = cli("upload", "--db", str(db), "--to", to, env=central.env)
        assert out.returncode == 2 and "overlaps the site's root" in out.stderr, out.stdout + out.stderr
    assert [b.name for b in client.list_blobs()] == ["site/OMOP/person.csv"]
    elsewhere = cli("upload", "--db", str(db), "--to", f"az://{site_container}/submissions/", env=central.env)
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "uploaded\t20261101020000/x\n".encode("utf-16-le"),
                                     "uploaded\t20261101020000/x\n".encode("utf-16")[:-1],
                                     "uploaded\t20261101020000/x\n".encode("utf-32"),
                                     b"uploaded\t20261101020000/caf\xe9.csv\n"],
                         ids=["binary", "utf-16-without-bom", "utf-16-cut-short", "utf-32", "latin-1"])
def test_mark_uploaded_refuses_a_log_that_is_not_text(central, tmp_path, content):
    db = committed_site(tmp_path, 1)
    log = tmp_path / "bin.log"
    log.write_bytes(content)
    out = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "is not a text log of `upload --script`" in out.stderr and str(log) in out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr
    assert query(db, "SELECT count(*) FROM uploads") == [(0,)]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-8"])
def test_mark_uploaded_reads_a_log_saved_on_windows_with_its_byte_order_mark(central, tmp_path, encoding):
    """A log Windows PowerShell 5 wrote (`.\\upload.ps1 > upload.log`, Out-File: UTF-16LE with its byte-order mark,
    CRLF line ends), or saved as "Unicode" / "UTF-8 with BOM": the mark says how to read it. UTF-16 was refused as
    "not a text log of `upload --script`", exit 2, nothing of what was sent recorded."""
    db = committed_site(tmp_path, 1)
    srcfile = put_first_file(central, db, tmp_path / "site")
    log = tmp_path / "upload.log"
    log.write_bytes("\ufeff".encode(encoding) + f"uploaded\t20261101020000/{srcfile}\r\n".encode(encoding))
    out = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recorded 1 upload confirmed" in out.stdout and "not understood" not in out.stdout, out.stdout
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(1,)]


def test_mark_uploaded_says_what_it_did_not_understand_and_what_it_did_not_record(central, tmp_path):
    db = committed_site(tmp_path, 2)
    srcfile = put_first_file(central, db, tmp_path / "site")
    log = tmp_path / "upload.log"
    log.write_text("\n".join(["garbage line", f"uploaded\t20261101020000/{srcfile}", "uploaded\t../../etc/passwd",
                              "uploaded\t20261101020000/../../etc/passwd", "uploaded\t20261101020000//x", "",
                              "uploaded\t29990101000000/OMOP/x.csv", "uploaded\t"]) + "\n")
    mark = ["mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log)]
    out = cli(*mark, env=central.env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "recorded 1 upload confirmed" in out.stdout
    assert "not understood: 2 lines" in out.stdout and "line 1: 'garbage line'" in out.stdout
    assert "../../etc/passwd: not a valid blob name: .. is not a version label" in out.stdout
    assert "20261101020000/../../etc/passwd: not a valid blob name: ../../etc/passwd is not a site-relative" in out.stdout
    assert "20261101020000//x: not a valid blob name" in out.stdout
    assert "the manifest has no version 29990101000000" in out.stdout
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(1,)]
    assert query(db, "SELECT version FROM submissions") == [("20261101020000",)]
    for text in ("", "\n\n", "garbage line\n"):  # nothing recorded from an empty log, or one of nothing understood
        log.write_text(text)
        out = cli(*mark, env=central.env)
        assert out.returncode == 1 and "recorded 0 uploads" in out.stdout, out.stdout + out.stderr
        assert "nothing was recorded" in out.stdout


def test_a_damaged_blob_whose_file_was_replaced_before_the_resend_lets_its_version_finish(central, tmp_path):
    db = committed_site(tmp_path, 3)
    first, second = "20261101020000", "20261102020000"
    assert up(central, db).returncode == 0
    name = f"{first}/000000/Waveforms/Telemetry/S0/S0.dat"
    central.client.get_blob_client(name).upload_blob(b"trunc", overwrite=True)
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    write(tmp_path / "site", "000000/Waveforms/Telemetry/S0/S0.dat", b"new bytes")  # replaced before the resend
    commit(tmp_path / "site", db, second)

    out = up(central, db, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    versions = {v["version"]: v for v in json.loads(out.stdout)["versions"]}
    assert set(versions) == {first, second}
    assert "central blob stays as verify found it" in json.dumps(versions[first]), versions[first]
    # The first version is finished (its damaged blob cannot be sent again by anyone); the row keeps verify's finding.
    assert query(db, "SELECT version FROM submissions WHERE finished_at IS NOT NULL ORDER BY version") == [(first,), (second,)]
    assert query(db, "SELECT u.state, u.verify_state, u.etag IS NOT NULL, u.uploaded_at IS NOT NULL FROM uploads u JOIN "
                     "source_files f USING (file_id) WHERE u.version = ? AND f.srcfile LIKE '%S0.dat'", (first,)) == \
        [("superseded", "size", 1, 1)]
    assert "nothing to upload" in up(central, db).stdout
    assert central.client.get_blob_client(f"{second}/000000/Waveforms/Telemetry/S0/S0.dat").download_blob().readall() \
        == b"new bytes"


def test_an_upload_script_replaces_a_damaged_blob_only_while_it_is_the_one_verify_saw(central, tmp_path):
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError
    from azure.storage.blob import ContentSettings

    db = committed_site(tmp_path, 2)
    label = "20261101020000"
    assert up(central, db).returncode == 0
    srcfile = "000000/Waveforms/Telemetry/S0/S0.dat"
    name = f"{label}/{srcfile}"
    central.client.get_blob_client(name).upload_blob(b"trunc", overwrite=True)
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 1
    (etag,) = query(db, "SELECT etag FROM uploads WHERE verify_state = 'size'")[0]

    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", env=central.env)
    assert out.returncode == 0, out.stderr
    assert subprocess.run(["bash", "-n"], input=out.stdout, text=True).returncode == 0
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("send ")]
    assert line.startswith(f"send {name} ") and line.endswith(shlex.quote(etag))  # the etag verify saw
    assert '--if-match="$6"' in out.stdout and "--overwrite false" in out.stdout
    # AzCopy cannot make the write conditional: the file is left out, and the script's writer says so.
    azcopy = cli("upload", "--db", str(db), "--to", central.url, "--script", "azcopy", env=central.env)
    assert azcopy.returncode == 1 and "1 file whose central blob verify found damaged" in azcopy.stderr, azcopy.stderr
    assert not [line for line in azcopy.stdout.splitlines() if line.startswith("send ")]

    # What `az storage blob upload --overwrite true --if-match ETAG --content-md5 …` does, done with the SDK: a blob
    # replaced meanwhile is not overwritten; the one verify saw is.
    data = (tmp_path / "site" / srcfile).read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    blob = central.client.get_blob_client(name)
    with pytest.raises(ResourceModifiedError):
        blob.upload_blob(data, overwrite=True, etag='"0x0"', match_condition=MatchConditions.IfNotModified)
    blob.upload_blob(data, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified,
                     content_settings=ContentSettings(content_md5=bytearray.fromhex(md5)))
    log = tmp_path / "upload.log"
    log.write_text(f"uploaded\t{name}\n")
    marked = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert marked.returncode == 0 and "recorded 1 upload confirmed" in marked.stdout, marked.stdout + marked.stderr
    verified = cli("verify", "--db", str(db), "--to", central.url, "--download", env=central.env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "nothing to upload" in up(central, db).stdout


def test_a_storage_outage_with_the_manifest_in_azure_says_where_the_ledger_is_and_the_rerun_finishes(monkeypatch,
                                                                                                    tmp_path):
    service = Azurite(tmp_path / "own-azurite")
    service.start()
    try:
        central = central_for(service, monkeypatch, tmp_path)
        many_files(tmp_path / "site", 30)
        manifest_container = service.new_container("man")
        db_url = f"az://{manifest_container}/site/manifest.sqlite"
        out = cli("run", "--site", str(tmp_path / "site"), "--db", db_url, "--version", "20261101020000",
                  "--no-validate", env=central.env)
        assert out.returncode == 0, out.stderr
        proc = upload_process(central, db_url, "upload+4", resume=tmp_path / "resume")
        wait_for(proc, "test pause at upload")
        service.stop()  # the storage of both the centre and the manifest goes away mid-upload
        (tmp_path / "resume").touch()
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 3, out + err
        assert "Traceback" not in err and "internal error" not in err
        # The write-back failed too: the message says the ledger is in the local working copy only.
        assert "recorded in the local working copy only" in err and "the manifest in Azure does not have them" in err, err

        service.start()
        finish = cli("upload", "--db", db_url, "--to", central.url, "--json", env=central.env)
        assert finish.returncode == 0, finish.stdout + finish.stderr
        remote = tmp_path / "remote.sqlite"
        remote.write_bytes(service.service_client().get_blob_client(manifest_container, "site/manifest.sqlite")
                           .download_blob().readall())
        held = {name for name in blobs(central) if "/_manifest/" not in name}
        assert held == ledger_names(remote) == {f"20261101020000/{p}" for p in submitted(remote, "20261101020000")}
        assert query(remote, "SELECT finished_at IS NOT NULL FROM submissions") == [(1,)]
    finally:
        service.stop()


def test_a_central_container_removed_mid_upload_stops_it_and_the_manifest_in_azure_keeps_the_ledger(central, azurite,
                                                                                                    tmp_path):
    db_url, manifest_container = committed_in_azure(central, azurite, tmp_path, 30)
    proc = upload_process(central, db_url, "upload+4", resume=tmp_path / "resume")
    wait_for(proc, "test pause at upload")
    central.client.delete_container()  # the centre's container goes away while the upload waits at its first batch
    (tmp_path / "resume").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, out + err
    assert "Traceback" not in err and f"az://{central.container}" in err
    assert "confirmed by this upload are recorded in the manifest's uploads ledger" in err, err
    remote = tmp_path / "remote.sqlite"
    remote.write_bytes(azurite.service_client().get_blob_client(manifest_container, "site/manifest.sqlite")
                       .download_blob().readall())
    recorded = ledger_names(remote)
    assert len(recorded) >= 5 and f"{len(recorded)} files confirmed" in err
    lock = azurite.service_client().get_blob_client(manifest_container, "site/manifest.sqlite.lock")
    assert str(lock.get_blob_properties().lease.state) != "leased"


def test_a_version_uploaded_again_finds_a_blob_gone_says_what_to_do_and_the_next_upload_sends_it(central, tmp_path):
    db = committed_site(tmp_path, 3)
    label = "20261101020000"
    assert up(central, db).returncode == 0
    gone = f"{label}/000001/Waveforms/Telemetry/S1/S1.dat"
    central.client.delete_blob(gone)
    again = up(central, db, "--version", label)  # a version uploaded twice: nothing to send, its listing checked
    assert again.returncode == 1, again.stdout + again.stderr
    assert "sent 0 files" in again.stdout and "missing: 000001/Waveforms/Telemetry/S1/S1.dat" in again.stdout
    assert "incomplete: run upload again (same --db and --to): it sends the missing and damaged files again" in again.stdout
    resent = up(central, db)
    assert resent.returncode == 0 and "sent 1 file " in resent.stdout, resent.stdout + resent.stderr
    assert gone in blobs(central)


def sas_for(azurite, container: str, **permissions: bool) -> str:
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(azurite.account_name, container, account_key=azurite.account_key,
                                  permission=ContainerSasPermissions(**permissions),
                                  expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))


def test_a_container_sas_uploads_and_one_that_cannot_list_is_refused_before_anything_is_sent(central, azurite,
                                                                                               tmp_path):
    # A centre hands a site a container SAS; such a SAS may not read the container's properties (which the
    # up-front check asked for): the racwl SAS the fix names was refused with "not allowed to write".
    db = committed_site(tmp_path, 3)
    (tmp_path / "chorus.toml").write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    env = {k: v for k, v in central.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}

    def upload_with(*command: str, **permissions: bool) -> subprocess.CompletedProcess:
        token = sas_for(azurite, central.container, **permissions)
        return cli(*command, "--db", str(db), "--to", central.url, cwd=tmp_path,
                   env={**env, "AZURE_STORAGE_SAS_TOKEN": token})

    write_only = upload_with("upload", write=True, create=True)
    assert write_only.returncode == 3, write_only.stdout + write_only.stderr
    assert "not allowed to read, add and list (r, a, l): the SAS token allows only 'cw'" in write_only.stderr
    assert "racwl" in write_only.stderr
    assert "Traceback" not in write_only.stderr and "sig=" not in write_only.stderr.replace("sig=***", "")
    assert blobs(central) == {} and query(db, "SELECT count(*) FROM uploads") == [(0,)]

    # Without read: the look at the version folder's manifest copy (whose submission is it?) fails before anything
    # is sent. That was "not allowed to write", and the exit-3 message did not say what was recorded.
    no_read = upload_with("upload", create=True, write=True, list=True)
    assert no_read.returncode == 3, no_read.stdout + no_read.stderr
    assert "not allowed to read and add (r, a): the SAS token allows only 'cwl'" in no_read.stderr, no_read.stderr
    assert "racwl" in no_read.stderr
    assert "0 files confirmed by this upload are recorded" in no_read.stderr, no_read.stderr
    # A read+list SAS (what verify needs, handed out for an upload): it said "not allowed to read or write" and
    # "run the same command again to resume", a loop of the same refusal. Now: what the SAS lacks, and fix it first.
    read_list = upload_with("upload", read=True, list=True)
    assert read_list.returncode == 3, read_list.stdout + read_list.stderr
    assert "not allowed to add, create and write (a, c, w): the SAS token allows only 'rl'" in read_list.stderr, read_list.stderr
    assert "again once this is fixed" in read_list.stderr and "to resume" not in read_list.stderr
    assert len(ledger_names(db)) == 0 and blobs(central) == {} and query(db, "SELECT count(*) FROM submissions WHERE finished_at IS NOT NULL") == [(0,)]
    sent = upload_with("upload", read=True, add=True, create=True, write=True, list=True)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert ledger_names(db) == {f"20261101020000/{p}" for p in submitted(db, "20261101020000")}
    verified = upload_with("verify", read=True, list=True)
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr
    no_list = upload_with("verify", read=True)
    assert no_list.returncode == 3 and "not allowed to list (l): the SAS token allows only 'r'" in no_list.stderr, no_list.stderr
    assert "(r) and list (l)" in no_list.stderr


def test_a_connection_string_carrying_a_sas_completes_the_version_and_verifies_it(central, azurite, tmp_path):
    # The portal's "SAS connection string" (BlobEndpoint=...;SharedAccessSignature=...): the SDK keeps the token as
    # the query of the container's url, and the listing check put its parameters after a second '?'. The service
    # answered "Bad Request": upload sent every file but never completed the version (exit 3, "cannot list"), and
    # verify verified nothing, each time the same.
    db = committed_site(tmp_path, 3)
    token = sas_for(azurite, central.container, read=True, add=True, create=True, write=True, list=True)
    env = {"AZURE_STORAGE_CONNECTION_STRING": f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={token}"}
    sent = up(central, db, env=env)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert "complete; checked against the container's listing" in sent.stdout, sent.stdout
    assert "20261101020000/_manifest/manifest.sqlite" in blobs(central)
    verified = cli("verify", "--db", str(db), "--to", central.url, env={**central.env, **env})
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr
    assert token.split("sig=")[1] not in sent.stdout + sent.stderr + verified.stdout + verified.stderr


def _an_upload_beside_a_run_held_in_its_commit(central, tmp_path: Path, db: Path):
    """A run committing version 20261102020000, held in its commit until the file it returns is made (its pause
    at "commit"), and an upload started once the run is held: (that file, the run, the upload)."""
    resume = tmp_path / "resume-the-commit"
    env = {**os.environ, "CHORUS_BATCH_TEST_PAUSE": "commit+120", "CHORUS_BATCH_TEST_RESUME": str(resume),
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", str(tmp_path / "site"), "--db", str(db),
                            "--version", "20261102020000", "--workers", "2", "--no-validate"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(run, "test pause at commit")
        upload = subprocess.Popen([sys.executable, "-m", "chorus_batch", "upload", "--db", str(db), "--to", central.url,
                                   "--workers", "2"], env={**os.environ, **central.env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except BaseException:
        resume.touch()
        run.communicate(timeout=120)
        raise
    return resume, run, upload


def test_an_upload_beside_a_run_committing_waits_for_the_commit_and_a_second_upload_is_refused(central, tmp_path):
    # A run's commit holds SQLite's write lock for its whole transaction (minutes for a large site); the
    # upload's first ledger write gave up after one busy timeout (30 s): exit 3, "another program holds it".
    # The run's commit waits at its pause until the test has seen the first upload waiting and the second refused
    # (CHORUS_BATCH_TEST_RESUME), not a fixed 40 s; the first upload says it waits after its first 1 s try.
    db = committed_site(tmp_path, 4)
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    resume, run, first = _an_upload_beside_a_run_held_in_its_commit(central, tmp_path, db)
    try:
        started = time.monotonic()
        said = wait_for(first, "waiting for it to finish")  # (the commit still holds the write lock)
        assert time.monotonic() - started < 28, said  # said at its first try, not after 30 s of silence
        second = up(central, db)  # the first holds the upload lock while it waits
        assert second.returncode == 4 and "locked by another upload" in second.stderr, second.stderr
        resume.touch()  # the commit goes on; the first upload then writes its ledger
        out, err = first.communicate(timeout=120)
        err = said + err
        assert first.returncode == 0, out + err
        assert "waiting for it to finish" in err and "Traceback" not in err
        assert "version 20261101020000" in out and "complete" in out
    finally:
        resume.touch()
        run_out, run_err = run.communicate(timeout=120)
    assert run.returncode == 0 and "version 20261102020000 committed" in run_out, run_out + run_err
    assert ledger_names(db) == {f"20261101020000/{p}" for p in submitted(db, "20261101020000")}
    after = up(central, db)  # the version the run committed meanwhile is the next upload's
    assert after.returncode == 0 and "version 20261102020000" in after.stdout, after.stdout + after.stderr


def test_a_file_a_run_replaces_while_the_upload_of_its_version_runs_is_superseded_not_stale(central, tmp_path):
    # A file of the version being sent was changed in the site, and a run committed the change as the upload ran: the
    # upload called it 'stale' ("a `chorus-batch run` records the change", as it just had), left the version
    # incomplete (exit 1, no manifest copy) and recorded it so, until the next upload called it superseded.
    db = committed_site(tmp_path, 4)
    changed = next(iter(sorted(submitted(db, "20261101020000"))))
    write(tmp_path / "site", changed, b"new bytes, a longer file than before")
    resume, run, first = _an_upload_beside_a_run_held_in_its_commit(central, tmp_path, db)
    try:
        said = wait_for(first, "waiting for it to finish")  # (it judged the file stale; the commit holds the lock)
        resume.touch()
        out, err = first.communicate(timeout=120)
    finally:
        resume.touch()
        run.communicate(timeout=120)
    assert run.returncode == 0
    assert first.returncode == 0, out + said + err
    assert f"superseded: {changed}: replaced, renamed or removed by a later version" in out and "stale" not in out, out
    assert "complete; checked against the container's listing" in out, out
    assert query(db, "SELECT u.state FROM uploads u JOIN source_files f USING (file_id) WHERE f.srcfile = ? "
                     "AND u.version = '20261101020000'", (changed,)) == [("superseded",)]
    assert "20261101020000/_manifest/manifest.sqlite" in blobs(central)


def test_the_wait_for_a_run_committing_is_set_by_the_environment(central, tmp_path):
    # The 15-minute wait had no setting: a site whose commit takes longer failed its upload, and a cron upload that
    # must not block could not say so. CHORUS_BATCH_BUSY_WAIT_S=2 gives up after about 2 s, naming the setting.
    db = committed_site(tmp_path, 4)
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    env = {**os.environ, "CHORUS_BATCH_TEST_PAUSE": "commit", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    run = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", str(tmp_path / "site"), "--db", str(db),
                            "--workers", "2", "--no-validate"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(run, "test pause at commit")
        started = time.monotonic()
        upload = subprocess.run([sys.executable, "-m", "chorus_batch", "upload", "--db", str(db), "--to", central.url],
                                env={**os.environ, **central.env, "CHORUS_BATCH_BUSY_WAIT_S": "2"},
                                capture_output=True, text=True, timeout=120)
        took = time.monotonic() - started
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=60)
    assert upload.returncode == 3, upload.stdout + upload.stderr
    assert "longer than the 2 s a ledger write waits" in upload.stderr and "set CHORUS_BATCH_BUSY_WAIT_S" in upload.stderr
    assert "Traceback" not in upload.stderr and took < 25, (took, upload.stderr)
    assert run.returncode == 143


def test_an_upload_whose_ledger_cannot_be_written_says_how_many_it_recorded(central, tmp_path, small_disk):
    from conftest import fill

    many_files(tmp_path / "site", 40)
    db = small_disk / "m.sqlite"
    commit(tmp_path / "site", db, "20261101020000")
    proc = upload_process(central, db, "upload+3", resume=tmp_path / "resume")
    wait_for(proc, "test pause at upload")
    filler = fill(small_disk)  # the next batch of the ledger finds the manifest's disk full
    (tmp_path / "resume").touch()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        filler.unlink()
    assert proc.returncode == 3, out + err
    recorded = ledger_names(db)
    assert "disk is full" in err and "Traceback" not in err
    # The batch it could not write was counted as recorded: "8 files ... are recorded" over a ledger of 5.
    assert f"  {_files_confirmed(len(recorded))} recorded" in err, (len(recorded), err)
    assert "more were sent but could not be recorded" in err
    out = up(central, db)  # the centre holds them: confirmed as found, not sent again (and not said to be sent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert ledger_names(db) == {f"20261101020000/{p}" for p in submitted(db, "20261101020000")}
    [(found,)] = query(db, "SELECT count(*) FROM uploads WHERE confirmed_by = 'found'")
    assert found and f"; {found} already at the centre with the manifest's MD5" in out.stdout, out.stdout
    left = 40 - len(recorded) - found
    said = f"{left} file{'' if left == 1 else 's'} ("
    assert f": sent {said}" in out.stdout and f"\n{said}" in out.stdout, out.stdout


def test_an_upload_script_runs_in_bash_with_quotes_and_spaces_and_its_mark_uploaded_hint_works(central, tmp_path):
    # The hint printed after the script was `mark-uploaded --to az://c/sp ace'q/ --from-log upload.log`: not quoted
    # for the shell, and without the --db the script was written from.
    home = tmp_path / "sp ace'q"
    site = home / 'si te"x'
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/it's $(id) `x`.csv", b"odd name")
    write(site, "OMOP/death.csv", b"")
    db = home / "m a n'ifest.sqlite"
    commit(site, db, "20261101020000")
    to = central.url + "pre fix'q/"
    out = cli("upload", "--db", str(db), "--to", to, "--script", "bash", env=central.env, cwd=home)
    assert out.returncode == 0, out.stderr
    (home / "up.sh").write_text(out.stdout)
    ran = subprocess.run(["bash", "up.sh"], cwd=home, capture_output=True, text=True,
                         env={**os.environ, **central.env})
    # Every file was found and matched its manifest MD5 under its quoted name (sending is the Azure CLI's part).
    assert "not sent (changed" not in ran.stderr and "No such file" not in ran.stderr, ran.stderr
    expected = submitted(db, "20261101020000")
    if shutil.which("az") is None:  # no Azure CLI here: each send failed, nothing was logged as sent
        assert ran.returncode == 1 and ran.stderr.count("failed: ") == len(expected), ran.stderr
        from azure.storage.blob import ContentSettings

        lines = []
        for srcfile, (_, md5) in expected.items():  # what each `az storage blob upload` line does, with the SDK
            name = f"pre fix'q/20261101020000/{srcfile}"
            central.client.get_blob_client(name).upload_blob(
                (site / srcfile).read_bytes(), content_settings=ContentSettings(content_md5=bytearray.fromhex(md5)))
            lines.append(f"uploaded\t{name}")
        (home / "upload.log").write_text("\n".join(lines) + "\n")
    hint = out.stderr.split("record what it sent with: ", 1)[1].splitlines()[0]
    words = shlex.split(hint)  # what the shell makes of it, pasted
    assert words[:2] == ["chorus-batch", "mark-uploaded"]
    marked = cli(*words[1:], env=central.env, cwd=home)
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(len(expected),)]


def test_a_container_site_with_a_blob_and_a_folder_of_one_name_and_case_twins_goes_up_whole(azurite, central, tmp_path):
    """Object stores hold what no disk can: a blob `OMOP/x` beside `OMOP/x/y.csv`, and names that differ only in
    case. Each is recorded, uploaded and verified under its exact name; validation names them (a copy of the site
    on a disk keeps one of each)."""
    site = azurite.new_container("site")
    names = {"OMOP/person.csv": b"person_id\n1\n", "OMOP/Person.csv": b"person_id\n2\n", "OMOP/x": b"a blob",
             "OMOP/x/y.csv": b"under it", "OMOP/a#b?c[d]*%2F.csv": b"url and glob characters"}
    with azurite.service_client() as client:
        for name, data in names.items():
            client.get_blob_client(site, f"root/{name}").upload_blob(data)
    db = tmp_path / "m.sqlite"
    run = cli("run", "--site", f"az://{site}/root", "--db", str(db), env=central.env)
    assert run.returncode == 1 and "file.name_clash: 3" in run.stdout, run.stdout + run.stderr
    assert query(db, "SELECT srcfile FROM source_files ORDER BY srcfile") == sorted((n,) for n in names)
    found = json.loads(cli("validate", "--db", str(db), "--json").stdout)["findings"]
    clashes = {f["srcfile"]: f["message"] for f in found if f["rule"] == "file.name_clash"}
    assert clashes.keys() == {"OMOP/person.csv", "OMOP/Person.csv", "OMOP/x"}, clashes
    assert clashes["OMOP/x"].startswith("its path is also a folder of other files"), clashes
    version = query(db, "SELECT label FROM versions")[0][0]
    sent = up(central, db)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert {name.split("/", 1)[1] for name in blobs(central, f"{version}/")} - {"_manifest/manifest.sqlite"} == names.keys()
    checked = cli("verify", "--db", str(db), "--to", central.url, "--download", env=central.env)
    assert checked.returncode == 0 and "all as recorded" in checked.stdout, checked.stdout + checked.stderr


def azcopy_binary() -> str:
    """AzCopy as scripts/test installs it (npm ci: package.json pins @azure-tools/azcopy-linux), or on PATH."""
    pinned = Path(__file__).resolve().parent.parent / "node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64"
    found = shutil.which("azcopy") or (str(pinned) if pinned.exists() else None)
    if found is None:
        pytest.fail(f"AzCopy is not installed ({pinned} is missing). Run scripts/test (it runs `npm ci` and installs "
                    "libsecret-1-0, which AzCopy links against), or put azcopy on PATH.", pytrace=False)
    return found


def test_an_azcopy_script_sends_odd_names_and_leaves_out_what_azcopy_reads_as_a_wildcard(central, azurite, tmp_path):
    """The script AzCopy runs, run for real against the emulator. It failed every file there (AzCopy could not tell
    what kind of destination the endpoint is: no --from-to), and a file named st*r.csv went up as st*r.csv/st*r.csv
    beside st*r.csv/stXr.csv, another file's content (AzCopy reads '*' in a local path as a wildcard and has no
    escape for it). Now each name goes up exactly, and one holding '*' is left out of the script and named."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    names = {"OMOP/person.csv": b"person_id\n1\n", "OMOP/ lead.csv": b"space", "OMOP/[ab].csv": b"brackets",
             "OMOP/a#b?c.csv": b"url characters", "OMOP/p%20q.csv": b"escaped", "OMOP/st*r.csv": b"star",
             "OMOP/stXr.csv": b"what the star matches"}
    for name, data in names.items():
        write(site, name, data)
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "azcopy", env=central.env)
    assert out.returncode == 1, out.stderr
    assert "not in the script: 1 file whose local path holds '*'" in out.stderr, out.stderr
    assert "20261101020000/OMOP/st*r.csv" in out.stderr and "st*r.csv" not in out.stdout
    script, log = tmp_path / "upload.sh", tmp_path / "upload.log"
    script.write_text(out.stdout)
    tools = azcopy_tools(tmp_path)
    sas = generate_container_sas(azurite.account_name, central.container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                                                    list=True),
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    env = {**os.environ, **central.env, "CHORUS_SAS": sas, "CHORUS_UPLOAD_LOG": str(log),
           "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),  # AzCopy's plans and logs
           "AZCOPY_LOG_LOCATION": str(tmp_path / "azlogs"), "AZCOPY_JOB_PLAN_LOCATION": str(tmp_path / "azplans")}
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    sent = {f"20261101020000/{name}" for name in names if "*" not in name}
    assert set(blobs(central)) == sent
    for name in sent:
        assert central.client.download_blob(name).readall() == names[name.split("/", 1)[1]]
    # The claim `upload` writes before a version's first file: the script wrote none, so another manifest's upload
    # could add to this folder while the script's was under way (and the script to another's).
    assert claim_of(central, "20261101020000") == query(db, "SELECT value FROM meta WHERE key = 'manifest_id'")[0][0]
    marked = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert marked.returncode == 0 and "recorded 6 uploads" in marked.stdout, marked.stdout + marked.stderr
    rest = up(central, db)  # the one left out goes with the tool's own upload
    assert rest.returncode == 0 and "sent 1 file (4 B); 6 sent before" in rest.stdout, rest.stdout + rest.stderr
    assert central.client.download_blob("20261101020000/OMOP/st*r.csv").readall() == b"star"


@pytest.mark.parametrize("kept", [False, True], ids=["new", "kept-readable"])
def test_an_upload_scripts_log_is_owner_only_whatever_the_umask(central, azurite, tmp_path, kept):
    """upload.log names every file sent (person ids in the paths); the script appended to it with the caller's umask:
    0644 under umask 022, 0666 under 000. The script sets umask 077: the log is 0600. Run for real with AzCopy.
    A log kept from an earlier run (made readable by all under an earlier script, or copied back) is made 0600 too:
    it was appended to as it was."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    # (one file: each AzCopy call takes 2 s, AzCopy's progress interval, whatever it sends; the log's mode is the point)
    write(site, "000001/Waveforms/Telemetry/S1/S1.dat", b"signal")
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "azcopy", env=central.env)
    assert out.returncode == 0, out.stderr
    script, log = tmp_path / "upload.sh", tmp_path / "upload.log"
    script.write_text(out.stdout)
    sas = generate_container_sas(azurite.account_name, central.container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                                                    list=True),
                                 expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    env = {**os.environ, **central.env, "CHORUS_SAS": sas, "CHORUS_UPLOAD_LOG": str(log),
           "PATH": f"{azcopy_tools(tmp_path)}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "AZCOPY_LOG_LOCATION": str(tmp_path / "azlogs"), "AZCOPY_JOB_PLAN_LOCATION": str(tmp_path / "azplans")}
    if kept:
        log.write_text("uploaded\t20261001020000/OMOP/person.csv\n")
        log.chmod(0o644)
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: os.umask(0), check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "000001/Waveforms/Telemetry/S1/S1.dat" in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600"


FAKE_AZ = """#!{python}
# What the upload script asks of the Azure CLI (`storage blob upload`, `storage blob metadata show`), done with the SDK.
import base64, os, sys
from azure.storage.blob import BlobServiceClient, ContentSettings
if os.environ.get("AZ_ARGV_LOG"):  # (what `ps` shows of each call)
    with open(os.environ["AZ_ARGV_LOG"], "a") as log:
        log.write(repr(sys.argv[1:]) + "\\n")
def expanded(arg):  # as azure-cli-core's _expand_file_prefixed_files: a value `@FILE` is that file's text
    option, eq, value = arg.partition("=")
    value = value if eq else option
    if value.startswith("@") and len(value) > 1:
        try:
            with open(os.path.expanduser(value[1:])) as f:
                value = f.read().rstrip(os.linesep)
        except OSError:
            pass
    return option + eq + value if eq else value
args = [expanded(arg) for arg in sys.argv[1:] if arg != "--"]
def opt(name):
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
blob = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"]).get_blob_client(
    opt("--container-name"), opt("--name"))
try:
    if args[:3] == ["storage", "blob", "upload"]:
        md5, meta = opt("--content-md5"), opt("--metadata")
        with open(opt("--file"), "rb") as f:
            blob.upload_blob(f.read(), overwrite=opt("--overwrite") == "true", metadata=dict([meta.split("=", 1)]) if meta else None,
                             content_settings=ContentSettings(content_md5=bytearray(base64.b64decode(md5))) if md5 else None)
    elif args[:4] == ["storage", "blob", "metadata", "show"]:
        print((blob.get_blob_properties().metadata or {{}}).get(opt("--query"), ""))
except Exception as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def test_a_bash_script_claims_its_folder_and_adds_nothing_to_another_manifests_nor_does_mark_uploaded_record_it(
        central, tmp_path):
    # `upload --script` wrote no claim and looked at none: a script sent its files into another manifest's upload
    # under way (same label), and mark-uploaded recorded them as this manifest's.
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "az").write_text(FAKE_AZ.format(python=sys.executable))
    (tools / "az").chmod(0o700)
    env = {**os.environ, **central.env, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}",
           "CHORUS_UPLOAD_LOG": str(tmp_path / "upload.log")}
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db, "20261101020000")
    mine = query(db, "SELECT value FROM meta WHERE key = 'manifest_id'")[0][0]
    central.client.upload_blob("20261101020000/_manifest/owner", b"", metadata={"chorus_manifest_id": "another"})
    script = tmp_path / "up.sh"
    script.write_text(cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", env=central.env).stdout)
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 1 and "another manifest's submission or upload" in ran.stderr, ran.stdout + ran.stderr
    assert blobs(central) == {} and not (tmp_path / "upload.log").exists()
    # What a script of an older release did all the same: the blob sent, and logged
    from azure.storage.blob import ContentSettings

    md5 = submitted(db, "20261101020000")["OMOP/person.csv"][1]
    central.client.upload_blob("20261101020000/OMOP/person.csv", b"person_id\n1\n",
                               content_settings=ContentSettings(content_md5=bytearray.fromhex(md5)))
    (tmp_path / "upload.log").write_text("uploaded\t20261101020000/OMOP/person.csv\n")
    marked = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(tmp_path / "upload.log"),
                 env=central.env)
    assert marked.returncode == 5, marked.stdout + marked.stderr
    assert "not recorded as this manifest's" in marked.stdout and "recorded 0 uploads" in marked.stdout
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(0,)]
    # A folder nobody holds: the script claims it for this manifest, and sends
    central.client.delete_blob("20261101020000/_manifest/owner")
    central.client.delete_blob("20261101020000/OMOP/person.csv")
    argv_log = tmp_path / "argv.log"
    ran = subprocess.run(["bash", str(script)], env={**env, "AZ_ARGV_LOG": str(argv_log)}, capture_output=True,
                         text=True, timeout=120)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert claim_of(central, "20261101020000") == mine
    assert blobs(central)["20261101020000/OMOP/person.csv"][:2] == (12, md5)
    # The blob's name and the local file (person paths) were on the Azure CLI's command line, which every user of the
    # machine reads in ps: now both come from owner-only files (--name=@FILE, --file=@FILE).
    calls = argv_log.read_text()
    assert "storage', 'blob', 'upload'" in calls and "person.csv" not in calls and str(site) not in calls, calls
    marked = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(tmp_path / "upload.log"),
                 env=central.env)
    assert marked.returncode == 0 and "recorded 1 upload confirmed" in marked.stdout, marked.stdout + marked.stderr


@pytest.mark.parametrize("kind", ["bash", "azcopy"])
def test_a_script_names_the_files_it_leaves_out_for_a_name_azure_would_not_keep(central, tmp_path, kind):
    """A name Azure rewrites (a part ending in '.', a control character) was left out of the script without a word:
    "the script sends 1 files", exit 0, and the files never went up. `upload` names them; so does the script now."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for name in ("OMOP/person.csv", "OMOP/notes.", "OMOP/ctl\x01.csv"):
        write(site, name, name.encode())
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", kind, env=central.env)
    assert out.returncode == 1, out.stderr
    assert "the script sends 1 file (1 version)" in out.stderr
    assert ("not in the script: 2 files whose name the central container cannot keep as it is (e.g. "
            "'20261101020000/OMOP/ctl\\x01.csv': its name holds a control character") in out.stderr, out.stderr
    assert "OMOP/person.csv" in out.stdout and "notes." not in out.stdout and "ctl" not in out.stdout


def test_a_bash_script_hands_the_azure_cli_values_that_start_with_a_dash(central, tmp_path):
    """Under a central prefix that starts with '-' (az://central/-x/) every blob name does too, and the Azure CLI
    (argparse) took `--name -x/...` for an option of its own: "argument --name/-n: expected one argument", every
    file failed (seen with azure-cli 2.x against Azurite). Each value is attached to its option (--name=...)."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/-rf.csv", b"dash")
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url + "-x/", "--script", "bash", env=central.env)
    assert out.returncode == 0, out.stderr
    command = out.stdout.rsplit("az storage blob upload", 1)[1].split("; then", 1)[0]  # (send's; the first: the claim's)
    claim = out.stdout.split("az storage blob upload", 1)[1].split("\n  for", 1)[0]
    assert '--container-name="$CONTAINER"' in claim and '--name="$1/_manifest/owner"' in claim, claim
    for option, value in (("--container-name", "$CONTAINER"), ("--content-md5", "$4")):
        assert f'{option}="{value}"' in command, command
    # (the name and the path from the owner-only $NAME and $LOCAL files: no person path on the command line)
    assert '--name=@"$NAME"' in command and '--file=@"$LOCAL"' in command, command
    assert '--if-match="$6"' in out.stdout
    assert "send -x/20261101020000/OMOP/-rf.csv " in out.stdout


def test_a_dry_run_signs_in_and_lists_the_container_so_wrong_credentials_or_container_fail_it(central, azurite,
                                                                                               tmp_path):
    # `upload --dry-run` never signed in: a wrong container, a SAS that cannot list or a wrong key passed the dry
    # run (exit 0, "would send") and failed the night's upload. It now lists the container (read-only) and says
    # what it checked; it still writes nothing, there or in the manifest.
    db = committed_site(tmp_path, 3)
    (tmp_path / "chorus.toml").write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    env = {k: v for k, v in central.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    missing = up(SimpleNamespace(url="az://no-such-container/", env=central.env), db, "--dry-run")
    assert missing.returncode == 3 and "does not exist" in missing.stderr, missing.stdout + missing.stderr
    assert "would send" not in missing.stdout and "Traceback" not in missing.stderr
    token = sas_for(azurite, central.container, write=True, create=True)  # may write, may not list
    no_list = cli("upload", "--db", str(db), "--to", central.url, "--dry-run", cwd=tmp_path,
                  env={**env, "AZURE_STORAGE_SAS_TOKEN": token})
    assert no_list.returncode == 3 and "not allowed to read and list (r, l)" in no_list.stderr, no_list.stdout + no_list.stderr
    assert token.split("sig=")[1].split("&")[0] not in no_list.stdout + no_list.stderr
    wrong_key = central.env["AZURE_STORAGE_CONNECTION_STRING"].replace(azurite.account_key, "d3Jvbmcga2V5" * 4)
    bad = up(central, db, "--dry-run", env={"AZURE_STORAGE_CONNECTION_STRING": wrong_key})
    assert bad.returncode == 3 and "Traceback" not in bad.stderr and "d3Jvbmcga2V5" not in bad.stderr, bad.stderr
    dry = up(central, db, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    summary = json.loads(dry.stdout)
    assert summary["dry_run"] and summary["signed_in_as"] and summary["versions"][0]["sent"] == 3
    text = up(central, db, "--dry-run")
    assert f"listed {central.url.rstrip('/')}" in text.stdout and "write permission is not tried" in text.stdout
    assert blobs(central) == {} and query(db, "SELECT count(*) FROM uploads") == [(0,)]
    # The roots the files would be read from are opened as the upload opens them: a site that moved is told now.
    shutil.move(tmp_path / "site", tmp_path / "moved")
    moved = up(central, db, "--dry-run")
    assert moved.returncode == 2 and "--site" in moved.stderr and "would send" not in moved.stdout, moved.stderr


def test_a_manifest_older_than_the_one_that_uploaded_is_refused_and_told_where_the_newer_is(central, tmp_path):
    # A site restored its manifest from last week's backup: upload said "nothing to upload: every version is
    # completely uploaded" and verify passed, while the centre held a newer version of this very manifest; the
    # next run's version then forked the centre's history. Upload (and its dry run) now refuse, exit 5.
    db = committed_site(tmp_path, 2)
    backup = tmp_path / "backup.sqlite"
    shutil.copy(db, backup)
    write(tmp_path / "site", "000001/Waveforms/S1/S1_9.dat", b"later")
    commit(tmp_path / "site", db, "20261102020000")
    assert up(central, db).returncode == 0
    shutil.copy(backup, db)
    held = blobs(central)
    for extra in ((), ("--dry-run",)):
        behind = up(central, db, *extra)
        assert behind.returncode == 5, behind.stdout + behind.stderr
        assert "holds 1 version this manifest uploaded and no longer has (20261102020000" in behind.stderr
        assert f"{central.url}20261102020000/_manifest/manifest.sqlite" in behind.stderr
        assert "nothing to upload" not in behind.stdout and "Traceback" not in behind.stderr
    for extra in ((), ("--all",)):  # verify said "nothing to verify" (a backup from before any upload), exit 0
        checked = cli("verify", "--db", str(db), "--to", central.url, *extra, env=central.env)
        assert checked.returncode == 5, checked.stdout + checked.stderr
        assert "no longer has (20261102020000" in checked.stderr and "nothing was verified or recorded" in checked.stderr
        assert "nothing to verify" not in checked.stdout and "Traceback" not in checked.stderr
    assert blobs(central) == held
    # The newest manifest, from the centre's copy, carries on; another manifest's versions there are not this one's.
    newest = tmp_path / "newest.sqlite"
    newest.write_bytes(central.client.get_blob_client("20261102020000/_manifest/manifest.sqlite").download_blob().readall())
    again = up(central, newest)
    assert again.returncode == 0, again.stdout + again.stderr
    other = tmp_path / "other"
    write(other, "OMOP/person.csv", b"person_id\n1\n")
    commit(other, tmp_path / "other.sqlite", "20261101020000")
    theirs = up(central, tmp_path / "other.sqlite")  # (nothing added to our submission: a conflict, not "behind")
    assert theirs.returncode == 5 and "another manifest's submission" in theirs.stdout, theirs.stdout + theirs.stderr
    assert "no longer has" not in theirs.stderr and blobs(central) == {**held, **blobs(central, "20261102020000/")}


def test_verify_json_fields_are_the_ones_the_readme_names(central, tmp_path):
    # The README named `unlisted` and `uploaded_elsewhere` only; `not_uploaded`, `method` and the manifest copy's
    # verify_state `other` were in the output and nowhere else.
    db = committed_site(tmp_path, 1)
    assert up(central, db).returncode == 0
    out = cli("verify", "--db", str(db), "--to", central.url, "--json", env=central.env)
    fields = set(json.loads(out.stdout))
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    said = readme[readme.index("`verify --json` holds"):][:700]
    assert fields and all(f"`{name}`" in said for name in fields), (fields, said)
    assert "`verify_state` `missing`, `other`, `content` or `archived`" in said


def test_upload_checks_its_site_url_up_front_also_when_nothing_is_left_to_send(central, tmp_path):
    # `upload --site 'az://c/site?sig=...'` opened --site only when files were to be sent: with nothing left it said
    # "nothing to upload" (exit 0) and the credentials in the URL were never refused (they end up in cron files).
    db = committed_site(tmp_path, 1)
    assert up(central, db).returncode == 0
    for site, said in (("az://site/x?sv=2024&sig=SECRETSIG", "holds credentials in the URL"),
                       ("gs://bucket/site", "does not read gs:// locations")):
        out = up(central, db, "--site", site)
        assert out.returncode == 2 and said in out.stderr and "--site" in out.stderr, out.stdout + out.stderr
        assert "SECRETSIG" not in out.stdout + out.stderr and "nothing to upload" not in out.stdout


def test_a_failed_sign_in_is_one_message_not_the_sdks_page_per_attempt(central, tmp_path):
    # DefaultAzureCredential logged its own page ("Attempted credentials: EnvironmentCredential ...") once per
    # retry, printed by Python's last-resort handler before chorus-batch's message (what, where, fix).
    db = committed_site(tmp_path, 1)
    env = {**{k: "" for k in AZURE_VARS}, "AZURE_STORAGE_ACCOUNT": "devstoreaccount1",
           "PATH": os.path.dirname(sys.executable)}  # (no `az` here: the CLI credential is unavailable)
    out = cli("upload", "--db", str(db), "--to", central.url, "--dry-run", env={**central.env, **env})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "Attempted credentials" not in out.stderr and out.stderr.count("DefaultAzureCredential failed") <= 1, out.stderr
    assert out.stderr.startswith("chorus-batch: error: cannot list") and "fix:" in out.stderr, out.stderr
    # The service principal's variables exported empty (an env file's template): azure-identity took them as set
    # and raised ValueError, an "internal error". Now exit 2 naming them.
    empty = cli("upload", "--db", str(db), "--to", central.url, "--dry-run",
                env={**central.env, **env, "AZURE_TENANT_ID": "", "AZURE_CLIENT_ID": "", "AZURE_CLIENT_SECRET": ""})
    assert empty.returncode == 2, empty.stdout + empty.stderr
    assert "AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET are set but empty" in empty.stderr, empty.stderr
    assert "internal error" not in empty.stderr and "Traceback" not in empty.stderr


def test_names_with_control_characters_never_break_or_drive_the_terminal_in_what_upload_verify_and_mark_print(
        central, tmp_path):
    # A line break splits a problem line in two (a reader, or a script reading line by line, takes the rest for
    # another line); an escape sequence retitles or clears the terminal of whoever reads the nightly mail.
    label = "20261101020000"
    odd = ["OMOP/new\nline.csv", "OMOP/esc\x1b]0;pwned\x07.csv", "OMOP/tab\tx.csv"]
    db = committed_with_names(tmp_path, odd, label)

    def clean(text: str) -> None:
        assert not {"\x1b", "\x07", "\t", "\u202e"} & set(text), text
        assert not [line for line in text.splitlines() if line.startswith(("line.csv", "x.csv", "md.md"))], text

    out = up(central, db)
    assert out.returncode == 1, out.stdout + out.stderr
    clean(out.stdout)
    assert "bad_name: 'OMOP/new\\nline.csv': its name holds a control character" in out.stdout
    assert "bad_name: 'OMOP/tab\\tx.csv': its name holds a control character" in out.stdout
    assert "bad_name: 'OMOP/esc\\x1b]0;pwned\\x07.csv'" in out.stdout

    # blobs another tool put in the version's folder, named with a tab, a line break and a right-to-left override
    # (what a listing's XML can hold): listed by verify and upload, escaped
    central.client.upload_blob(f"{label}/stray\u202e\tx\nmd.md", b"not ours")
    verified = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    clean(verified.stdout)
    assert "'stray\\u202e\\tx\\nmd.md'" in verified.stdout
    clean(up(central, db).stdout)
    assert json.loads(cli("verify", "--db", str(db), "--to", central.url, "--json", env=central.env).stdout)[
        "unlisted"] == [{"version": label, "name": "stray\u202e\tx\nmd.md", "size": 8}]  # machine output: exact

    # a log naming blobs with controls: what mark-uploaded did not record is named escaped
    log = tmp_path / "upload.log"
    log.write_text(f"uploaded\t{label}/OMOP/gone\x1b[2J.csv\nuploaded\t..\x1b[2J/x\n")
    marked = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert marked.returncode == 1, marked.stdout + marked.stderr
    clean(marked.stdout)
    assert f"'{label}/OMOP/gone\\x1b[2J.csv': not a valid blob name" in marked.stdout
    assert "not a valid blob name: ..\\x1b[2J is not a version label" in marked.stdout


def test_a_manifest_never_adds_files_to_another_manifests_submission_of_the_same_label(central, tmp_path):
    # Site b's manifest (a copy of the site, a test manifest, a --version label reused) uploads to a folder that
    # holds a's complete submission (its manifest copy carries a's id): b's files that are not there were written
    # into it, and a's verify then failed for ever on blobs a reviewer takes for part of a's submission.
    label = "20261101020000"
    for site in ("a", "b"):
        write(tmp_path / site, "OMOP/person.csv", b"the same in both sites")
    write(tmp_path / "b", "OMOP/only_b.csv", b"b's own file")
    dbs = {site: tmp_path / f"{site}.sqlite" for site in ("a", "b")}
    for site, db in dbs.items():
        commit(tmp_path / site, db, label)
    first = up(central, dbs["a"])
    assert first.returncode == 0, first.stdout + first.stderr
    before = blobs(central)

    dry = up(central, dbs["b"], "--dry-run")  # tells what the upload would do there: add nothing, exit 5
    assert dry.returncode == 5, dry.stdout + dry.stderr
    assert "holds another manifest's submission" in dry.stdout and "would send 0 files" in dry.stdout, dry.stdout
    assert blobs(central) == before

    second = up(central, dbs["b"])
    assert second.returncode == 5, second.stdout + second.stderr
    assert blobs(central) == before  # nothing added to a's submission
    assert "conflict: OMOP/only_b.csv:" in second.stdout and "another manifest's submission" in second.stdout
    assert "--to az://<container>/<prefix>/" in second.stdout
    # its end line says what mends a conflict: running upload again does not
    assert "in conflict with what the centre holds" in second.stdout
    assert "run upload again once the files above are in place" not in second.stdout
    assert query(dbs["b"], "SELECT f.srcfile, u.state FROM uploads u JOIN source_files f USING (file_id) ORDER BY 1") \
        == [("OMOP/only_b.csv", "conflict"), ("OMOP/person.csv", "uploaded")]  # a's blob holds b's content: found
    verified = cli("verify", "--db", str(dbs["a"]), "--to", central.url, env=central.env)
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr


def test_a_manifest_adds_nothing_to_a_folder_another_manifest_is_still_uploading(central, tmp_path):
    # Site a's upload of a label was killed half-way (no manifest copy at the centre yet); site b's manifest, with the
    # same label, then wrote its files into a's unfinished folder: nothing told the two apart before a's copy was there.
    label = "20261101020000"
    many_files(tmp_path / "a", 20)
    write(tmp_path / "b", "Waveforms/only_b.dat", b"b's own file")
    dbs = {site: tmp_path / f"{site}.sqlite" for site in ("a", "b")}
    for site, db in dbs.items():
        commit(tmp_path / site, db, label)
    proc = upload_process(central, dbs["a"], "upload")
    wait_for(proc, "test pause at upload")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = settled_blobs(central)
    assert f"{label}/_manifest/manifest.sqlite" not in before and len(before) < 20  # a's upload is unfinished
    a_id = query(dbs["a"], "SELECT value FROM meta WHERE key = 'manifest_id'")[0][0]
    assert claim_of(central, label) == a_id  # written before a's first file

    dry = up(central, dbs["b"], "--dry-run")
    assert dry.returncode == 5, dry.stdout + dry.stderr
    assert "holds another manifest's upload, started there and not finished" in dry.stdout, dry.stdout
    second = up(central, dbs["b"])
    assert second.returncode == 5, second.stdout + second.stderr
    assert blobs(central) == before  # nothing of b's in a's folder
    assert "conflict: Waveforms/only_b.dat:" in second.stdout and f"{label}/_manifest/owner" in second.stdout
    assert query(dbs["b"], "SELECT u.state FROM uploads u") == [("conflict",)]
    assert claim_of(central, label) == a_id

    # a resumes its own folder and finishes it: exactly its change set, its copy, verified
    resumed = up(central, dbs["a"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    held = {name for name in blobs(central) if "/_manifest/" not in name}
    assert held == {f"{label}/{path}" for path in submitted(dbs["a"], label)}
    verified = cli("verify", "--db", str(dbs["a"]), "--to", central.url, env=central.env)
    assert verified.returncode == 0 and "all as recorded" in verified.stdout, verified.stdout + verified.stderr


def test_a_centre_that_cannot_be_looked_at_says_whether_anything_was_waiting(central, tmp_path):
    # upload signs in and lists the centre even with nothing to send ("nothing to upload" is a word about the centre,
    # and a manifest older than the centre's shows only there); when that look failed, a nightly log said only the
    # error: not whether anything had waited to be sent, nor that nothing was sent or recorded.
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    wrong_key = {"AZURE_STORAGE_CONNECTION_STRING": central.env["AZURE_STORAGE_CONNECTION_STRING"].replace(
        "AccountKey=E", "AccountKey=X")}
    waiting = up(central, db, env=wrong_key)
    assert waiting.returncode == 3, waiting.stdout + waiting.stderr
    assert ("nothing was sent or recorded; 1 version waits to be sent to "
            f"{central.url.rstrip('/')} (20261101020000)") in waiting.stderr, waiting.stderr
    assert query(db, "SELECT count(*) FROM uploads") == [(0,)]

    assert up(central, db).returncode == 0
    done = up(central, db, env=wrong_key)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the manifest has no version waiting to be sent" in done.stderr, done.stderr
    assert "by8vdM02" not in done.stderr + done.stdout  # (the key, wrong or right)


_AZCOPY_COPY: list[Path] = []  # the executable copy of the pinned binary, made once per test process


def azcopy_tools(tmp_path: Path) -> Path:
    """A folder holding `azcopy` (to put first on PATH)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    binary = azcopy_binary()
    if not os.access(binary, os.X_OK):
        # npm unpacks the pinned package's binary without its execute bit (the package declares no `bin`): copied
        # with one, once per test process (57 MB: a copy for each test was a fixed cost of each AzCopy test)
        if not _AZCOPY_COPY or not _AZCOPY_COPY[0].exists():
            import atexit
            import tempfile

            folder = tempfile.mkdtemp(prefix="azcopy-")
            atexit.register(shutil.rmtree, folder, True)
            copy = Path(folder) / "azcopy"
            shutil.copy(binary, copy)
            copy.chmod(0o700)
            _AZCOPY_COPY[:] = [copy]
        binary = str(_AZCOPY_COPY[0])
    (tools / "azcopy").symlink_to(binary)
    return tools


def test_mark_uploaded_reads_names_ending_in_a_space_or_holding_a_line_separator_as_the_script_logged_them(
        central, azurite, tmp_path):
    """The script logs each name as it is, one per '\\n'. mark-uploaded split the log with str.splitlines() (U+2028 is a
    line end there) and stripped the names: both files, sent, were "not in that version's change set" (and a line
    "not understood"), exit 1. A log whose lines end in '\\r\\n' is still read."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    site, db, label = tmp_path / "site", tmp_path / "m.sqlite", "20261101020000"
    # (no plain name beside them: each AzCopy call takes 2 s, AzCopy's progress interval)
    names = {"OMOP/trail.csv ": b"a space at its end", "OMOP/ls\u2028x.csv": b"a line separator inside"}
    for name, data in names.items():
        write(site, name, data)
    commit(site, db, label)
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "azcopy", env=central.env)
    assert out.returncode == 0, out.stderr
    script, log = tmp_path / "upload.sh", tmp_path / "upload.log"
    script.write_text(out.stdout)
    sas = generate_container_sas(azurite.account_name, central.container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True, add=True, create=True, write=True,
                                                                    list=True),
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    env = {**os.environ, **central.env, "CHORUS_SAS": sas, "CHORUS_UPLOAD_LOG": str(log),
           "PATH": f"{azcopy_tools(tmp_path)}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "AZCOPY_LOG_LOCATION": str(tmp_path / "azlogs"), "AZCOPY_JOB_PLAN_LOCATION": str(tmp_path / "azplans")}
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert set(blobs(central)) == {f"{label}/{name}" for name in names}
    mark = ["mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log)]
    marked = cli(*mark, env=central.env)
    assert marked.returncode == 0 and "recorded 2 uploads" in marked.stdout, marked.stdout + marked.stderr
    assert "not understood" not in marked.stdout and "not recorded" not in marked.stdout, marked.stdout
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(2,)]
    log.write_bytes(log.read_bytes().replace(b"\n", b"\r\n"))  # the same log, through Windows
    again = cli(*mark, env=central.env)
    assert again.returncode == 0 and "2 more logged blobs were recorded before" in again.stdout, again.stdout
    done = up(central, db)
    assert done.returncode == 0 and "sent 0 files" in done.stdout, done.stdout + done.stderr


def test_an_azcopy_script_says_why_a_file_failed_and_where_a_sas_is_seen(central, azurite, tmp_path):
    """The AzCopy script sent AzCopy's output nowhere and said only "failed: FILE" (a SAS without write permission
    failed every file, and no line said why); a local path with a '%' AzCopy cannot parse ("invalid URL escape") was
    in the script and failed every time; and nothing said that a SAS in CHORUS_SAS is on AzCopy's command line."""
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    # (no plain name beside them: each AzCopy call takes 2 s, AzCopy's progress interval, and this test runs two)
    names = {"OMOP/100%.csv": b"percent", "OMOP/a%41.csv": b"an escape"}
    for name, data in names.items():
        write(site, name, data)
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "azcopy", env=central.env)
    assert out.returncode == 1, out.stderr
    assert ("not in the script: 1 file whose local path holds a '%' not followed by two hex digits, which AzCopy "
            "cannot read") in out.stderr and "20261101020000/OMOP/100%.csv" in out.stderr, out.stderr
    assert "100%.csv" not in out.stdout and "a%41.csv" in out.stdout
    script, log = tmp_path / "upload.sh", tmp_path / "upload.log"
    script.write_text(out.stdout)
    tools = azcopy_tools(tmp_path)

    def run(permission: ContainerSasPermissions) -> tuple[subprocess.CompletedProcess, str]:
        sas = generate_container_sas(azurite.account_name, central.container, account_key=azurite.account_key,
                                     permission=permission,
                                     expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        env = {**os.environ, **central.env, "CHORUS_SAS": sas, "CHORUS_UPLOAD_LOG": str(log),
               "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
               "AZCOPY_LOG_LOCATION": str(tmp_path / "azlogs"), "AZCOPY_JOB_PLAN_LOCATION": str(tmp_path / "azplans")}
        return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300), sas

    refused, sas = run(ContainerSasPermissions(read=True, list=True))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    signature = sas.split("sig=")[1].split("&")[0]
    assert signature not in refused.stdout + refused.stderr
    assert "warning: AzCopy takes a SAS token only in its URL" in refused.stderr and "azcopy login" in refused.stderr
    failed = [line for line in refused.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and all("403" in line and "AzCopy log: " in line for line in failed), refused.stderr
    assert blobs(central) == {} and not log.exists()

    sent, _ = run(ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert set(blobs(central)) == {"20261101020000/OMOP/a%41.csv"}
    assert central.client.download_blob("20261101020000/OMOP/a%41.csv").readall() == b"an escape"


def test_a_version_label_or_central_prefix_ending_in_a_dot_is_refused_as_azure_would_not_keep_it(tmp_path):
    # `run --version v.` committed a version whose folder at the centre, v./, is a name part Azure does not keep as it
    # is (it avoids or rewrites a part ending in '.'); upload checks the file names, not the label, and sent under it.
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    refused = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--version", "v1.")
    assert refused.returncode == 2 and "invalid version label 'v1.'" in refused.stderr, refused.stderr
    assert "not ending in '.'" in refused.stderr and not db.exists()
    for label in ("v1.2", "a", "x_", "1-2"):  # (a dot inside, one character, '_' or '-' last: as before)
        assert cli("run", "--no-validate", "--site", str(site), "--db", str(tmp_path / f"{label}.sqlite"),
                   "--version", label, "-q").returncode == 0, label
    # so is a central prefix with such a part (az://c/pre./): check_names checked the files' names only
    out = cli("upload", "--db", str(tmp_path / "a.sqlite"), "--to", "az://central/pre./", "--dry-run")
    assert out.returncode == 2 and "has a folder name ending in '.' ('pre.')" in out.stderr, out.stderr


@pytest.mark.parametrize("flags", [["--json"], ["--dry-run"], ["--dry-run", "--json"]])
def test_an_upload_script_with_json_or_dry_run_is_refused_not_the_flag_ignored(central, tmp_path, flags):
    # `upload --script bash --json` printed the bash script where a caller parsed JSON (exit 0), and `--dry-run` was
    # ignored: the script was written as without it.
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", *flags, env=central.env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "#!/usr/bin/env bash" not in out.stdout and "does not go with" in out.stderr, out.stdout + out.stderr
    for flag in flags:
        assert flag in out.stderr.split("\n")[0], out.stderr
    if "--json" in flags:
        assert json.loads(out.stdout)["exit_code"] == 2
    else:
        assert out.stdout == ""


@pytest.mark.parametrize("kind", ["bash", "azcopy"])
def test_a_script_for_a_manifest_with_nothing_left_to_send_says_so(central, tmp_path, kind):
    # Once every version was uploaded, the nightly `upload --script` failed with "internal error: ValueError: cannot
    # concat empty list" (exit 3), where `upload` says "nothing to upload".
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db, "20261101020000")
    assert up(central, db).returncode == 0
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", kind, env=central.env)
    assert out.returncode == 0, out.stderr
    assert "nothing to upload: the manifest records every version as completely uploaded to " in out.stderr, out.stderr
    script = tmp_path / "upload.sh"
    script.write_text(out.stdout)
    ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert ran.returncode == 0 and not (tmp_path / "upload.log").exists(), ran.stderr  # it sends nothing


@pytest.mark.parametrize("kind", ["bash", "azcopy"])
def test_a_script_from_a_site_folder_that_is_not_there_is_refused_up_front(central, tmp_path, kind):
    # A site moved (or a share not mounted) since its run: the script was written, and each of its files then failed
    # in it ("No such file"), one by one, where `upload` refuses at once. The script is refused now, exit 2, with
    # --site as the way out; given the folder as it is now, the script is written.
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db, "20261101020000")
    site.rename(tmp_path / "moved")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", kind, env=central.env)
    assert out.returncode == 2 and not out.stdout, out.stderr
    assert f"the folder the files are read from is not there (moved, or not mounted?): {site}" in out.stderr, out.stderr
    assert "--site DIR" in out.stderr
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", kind, "--site", str(tmp_path / "moved"),
              env=central.env)
    assert out.returncode == 0 and str(tmp_path / "moved" / "OMOP" / "person.csv") in out.stdout, out.stderr


def test_mark_uploaded_leaves_what_the_ledger_confirmed_before_as_it_is(central, tmp_path):
    # The script appends to its log on every run, so the next mark-uploaded reads the earlier runs' lines too: it said
    # "recorded 2 uploads" for blobs recorded days before, and reset their verification (verify_state NULL), their
    # time and how they were confirmed.
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/visit.csv", b"visit_id\n1\n")
    commit(site, db, "20261101020000")
    assert up(central, db).returncode == 0
    assert cli("verify", "--db", str(db), "--to", central.url, env=central.env).returncode == 0
    rows = "SELECT u.state, u.confirmed_by, u.verify_state, u.uploaded_at, u.attempts FROM uploads u ORDER BY file_id"
    before = query(db, rows)
    assert {row[2] for row in before} == {"ok"}
    log = tmp_path / "upload.log"
    log.write_text("uploaded\t20261101020000/OMOP/person.csv\nuploaded\t20261101020000/OMOP/visit.csv\n")
    out = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log), env=central.env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recorded 0 uploads" in out.stdout and "2 more logged blobs were recorded before" in out.stdout, out.stdout
    assert "nothing was recorded" not in out.stdout
    assert query(db, rows) == before


def test_mark_uploaded_of_a_log_cut_short_says_how_many_files_still_wait(central, tmp_path):
    # A script stopped after its first file (or a log cut short): mark-uploaded said "recorded 1 upload" and "upload
    # then finds nothing left to send", nothing of the three files not sent; a nightly job took the version as done.
    db = committed_site(tmp_path, 4)
    srcfile = put_first_file(central, db, tmp_path / "site")
    log = tmp_path / "upload.log"
    log.write_text(f"uploaded\t20261101020000/{srcfile}\nuploaded\t20261101020000/Wav")
    mark = ["mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log)]
    out = cli(*mark, env=central.env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "recorded 1 upload confirmed" in out.stdout
    assert "version 20261101020000: 3 of its 4 files are not recorded as at the centre yet" in out.stdout, out.stdout
    assert up(central, db).returncode == 0
    out = cli(*mark, env=central.env)  # all there now: nothing said to wait
    assert "not recorded as at the centre yet" not in out.stdout, out.stdout


@pytest.mark.parametrize("logged", ["uploaded\t20261101020000/OMOP/person.csv\n", ""], ids=["a_line", "empty"])
def test_mark_uploaded_that_fails_at_the_container_says_what_the_ledger_holds(central, tmp_path, logged):
    # mark-uploaded against a container that is not there said only the error: not whether anything was recorded.
    # With an empty log (a script that sent nothing) it recorded the superseded files as the missing container's.
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db, "20261101020000")
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")  # (the first version's file superseded)
    commit(site, db, "20261102020000")
    log = tmp_path / "upload.log"
    log.write_text(logged)
    out = cli("mark-uploaded", "--db", str(db), "--to", central.url.rstrip("/") + "-gone/", "--from-log", str(log),
              env=central.env)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "the container does not exist" in out.stderr
    assert "0 logged uploads were recorded in the manifest's uploads ledger before this" in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM uploads") == [(0,)]


def test_verify_with_a_list_only_sas_records_nothing_and_says_it_needs_read(central, azurite, tmp_path):
    # The file results were recorded as verified now, then reading the manifest's copy failed (exit 3): `versions`
    # said "verified (listing)" at this verify's time, of a version whose copy it never checked.
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    ledger = "SELECT verified_at, verify_method, verify_state FROM uploads UNION ALL " \
             "SELECT verified_at, verify_method, n_bad FROM submissions"
    before = query(db, ledger)
    (tmp_path / "chorus.toml").write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    env = {k: v for k, v in central.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    time.sleep(1.1)  # (a verify recorded would have a later verified_at)
    out = cli("verify", "--db", str(db), "--to", central.url, cwd=tmp_path,
              env={**env, "AZURE_STORAGE_SAS_TOKEN": sas_for(azurite, central.container, list=True)})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "(r) and list (l)" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert query(db, ledger) == before


def test_verify_with_nothing_uploaded_still_signs_in_and_lists_what_to_points_at(central, azurite, tmp_path):
    # With nothing recorded for --to, verify never contacted the container: a wrong key or a mistyped account or
    # container said "nothing to verify", exit 0, every night.
    db = committed_site(tmp_path, 2)
    gone = cli("verify", "--db", str(db), "--to", "az://no-such-container/", env=central.env)
    assert gone.returncode == 3 and "no-such-container" in gone.stderr, gone.stdout + gone.stderr
    wrong_key = central.env["AZURE_STORAGE_CONNECTION_STRING"].replace(azurite.account_key, base64.b64encode(b"x" * 64).decode())
    denied = cli("verify", "--db", str(db), "--to", central.url,
                 env={**central.env, "AZURE_STORAGE_CONNECTION_STRING": wrong_key})
    assert denied.returncode == 3 and "Traceback" not in denied.stderr, denied.stdout + denied.stderr
    fine = cli("verify", "--db", str(db), "--to", central.url, env=central.env)
    assert fine.returncode == 0 and "nothing to verify" in fine.stdout, fine.stdout + fine.stderr
    assert "can be listed" in fine.stdout


def test_verify_all_with_nothing_uploaded_names_the_versions_not_uploaded_yet(central, tmp_path):
    # README: `verify --all` names every version none of whose files is recorded as uploaded, exit 1. With nothing
    # uploaded at all it said "nothing to verify", exit 0: a nightly `verify --all` of a site whose upload never ran
    # passed for ever.
    db = committed_site(tmp_path, 2)
    every = cli("verify", "--db", str(db), "--to", central.url, "--all", env=central.env)
    assert every.returncode == 1, every.stdout + every.stderr
    assert "version 20261101020000: 2 of its 2 files not uploaded yet" in every.stdout, every.stdout
    assert "chorus-batch upload" in every.stdout and "all as recorded" not in every.stdout
    shown = cli("verify", "--db", str(db), "--to", central.url, "--all", "--json", env=central.env)
    said = json.loads(shown.stdout)
    assert shown.returncode == 1 and said["exit_code"] == 1 and said["versions"] == []
    assert said["not_uploaded_yet"] == [{"version": "20261101020000", "not_uploaded": 2, "files": 2}], said


def test_the_readmes_checksums_for_a_version_folder_check_what_upload_put_there(central, tmp_path):
    """The README (and `files --help`) said to ship `files --as-of V --md5sum` with a version and run `md5sum -c` in
    its central folder: a version folder holds that version's changes only, so every file of an earlier version
    failed ("FAILED open or read", exit 1). The README's command, run as written for the second version, lists what
    its folder holds, and the real md5sum checks it there."""
    import shlex

    from conftest import ROOT

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for name in ("OMOP/person.csv", "OMOP/visit_occurrence.csv", "000001/Waveforms/Telemetry/1/1.hea"):
        write(site, name, name.encode())
    commit(site, db, "20261001020000")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000002/Waveforms/Telemetry/2/2.hea", b"new")
    commit(site, db, "20261101020000")
    assert up(central, db).returncode == 0
    folder = tmp_path / "central"
    for name in blobs(central, "20261101020000/"):
        if "/_manifest/" not in name:
            write(folder, name, central.client.download_blob(name).readall())
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("**Checksums for the central side.**", 1)[1]
    shown = next(line for line in readme.splitlines() if line.startswith("    chorus-batch "))
    words = shlex.split(shown.split(">", 1)[0])
    assert "20261101020000" in words, shown
    listed = cli(*words[1:], "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    (folder / "checksums.md5").write_text(listed.stdout)
    check = subprocess.run(["md5sum", "-c", "../checksums.md5"], cwd=folder / "20261101020000", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK\n") == 2


@pytest.mark.parametrize("kind", ["bash", "azcopy"])
def test_an_upload_script_cut_short_by_a_full_disk_runs_nothing(tmp_path, small_disk, kind):
    """`upload --script bash > upload.sh` on a disk that fills while the script is written: chorus-batch exits 3, but
    the part written was a script that ran its first `send` lines, sent part of the files and exited 0. It now checks
    its own last line first: cut short, it sends nothing and exits 2 saying so; whole, it runs."""
    db = committed_site(tmp_path, 300)
    env = script_env()
    whole = cli("upload", "--db", str(db), "--to", "az://central/", "--script", kind, env=env)
    assert whole.returncode == 0, whole.stderr
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - len(whole.stdout) // 2))  # room for half of it
    script = small_disk / "upload.sh"
    with open(script, "wb") as out:  # as the shell's `>` opens it
        written = subprocess.run([sys.executable, "-m", "chorus_batch", "upload", "--db", str(db), "--to",
                                  "az://central/", "--script", kind], stdout=out, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, **env}, timeout=120)
    assert written.returncode == 3, written.stderr  # a full disk writing standard output (README)
    assert 0 < script.stat().st_size < len(whole.stdout)
    tools = tmp_path / "bin"  # az / azcopy that record being called
    tools.mkdir()
    calls = tmp_path / "calls"
    for tool in ("az", "azcopy"):
        (tools / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {calls}\nexit 0\n")
        (tools / tool).chmod(0o755)
    path_env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "CHORUS_UPLOAD_LOG": str(tmp_path / "log")}
    cut = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=path_env, cwd=tmp_path, timeout=60)
    assert cut.returncode == 2 and "is incomplete" in cut.stderr and "nothing was sent" in cut.stderr, cut.stderr
    assert not calls.exists() and not (tmp_path / "log").exists()
    filler.unlink()
    (tmp_path / "whole.sh").write_text(whole.stdout)
    ran = subprocess.run(["bash", str(tmp_path / "whole.sh")], capture_output=True, text=True, env=path_env, cwd=tmp_path,
                         timeout=120)
    assert "is incomplete" not in ran.stderr and calls.exists(), ran.stderr


def in_process(central, monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """The command line run in this process (quicker than cli() for a command that starts no workers)."""
    from chorus_batch.cli import main

    for name, value in central.env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_verify_of_a_version_whose_only_files_are_in_conflict_says_so_not_nothing_to_verify(central, tmp_path,
                                                                                             monkeypatch, capsys):
    # verify said "nothing to verify" (exit 0) of a version whose upload had found another manifest's blob under its
    # file's name, and with --version "upload it first" (the upload had refused to replace it: running it again does
    # not mend that); `versions` then called the version verified.
    label = "20261101020000"
    for site, text in (("a", b"site a's own"), ("b", b"site b's own, longer")):
        write(tmp_path / site, "OMOP/person.csv", text)
        commit(tmp_path / site, tmp_path / f"{site}.sqlite", label)
        up(central, tmp_path / f"{site}.sqlite")
    db = str(tmp_path / "b.sqlite")
    for extra in ((), ("--version", label), ("--all",)):
        code, out, err = in_process(central, monkeypatch, capsys, "verify", "--db", db, "--to", central.url, *extra)
        assert code == 1, out + err
        assert "nothing to verify" not in out and "upload it first" not in out, out
        assert f"not verified: no file of 1 version ({label})" in out
        assert f"conflict: OMOP/person.csv: {central.url}{label}/OMOP/person.csv already holds other content" in out
        assert "--to az://<container>/<prefix>/" in out
    code, out, _ = in_process(central, monkeypatch, capsys, "verify", "--db", db, "--to", central.url, "--json")
    found = json.loads(out)
    assert code == 1 and found["exit_code"] == 1 and found["versions"] == [label] and found["not_uploaded_yet"] == []
    assert [(p["srcfile"], p["verify_state"]) for p in found["problems"]] == [("OMOP/person.csv", "conflict")]
    assert query(tmp_path / "b.sqlite", "SELECT verified_at FROM submissions") == [(None,)]  # nothing was verified


def test_a_container_deleted_mid_verify_all_says_which_versions_were_verified_before_and_which_not(central, azurite,
                                                                                                    tmp_path):
    # verify --all failed at the second version with "the container does not exist" only: the first version's results,
    # recorded as ok, went unmentioned, as if nothing had been recorded (or all of it verified).
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for label in ("20261101020000", "20261102020000"):
        write(site, f"OMOP/{label}.csv", label.encode())
        commit(site, db, label)
    assert up(central, db).returncode == 0
    proc = paused("verify", "--db", str(db), "--to", central.url, "--all", at="verify-next-version+2", env=central.env)
    azurite.service_client().delete_container(central.container)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "the container does not exist" in err and "they are gone from the centre" in err, err
    assert ("1 version (20261101020000; 1 file, 0 problems) had been verified and recorded in the uploads ledger before "
            "this: those results are of the centre as it was then; version 20261102020000 not verified") in err, err


def test_a_cloud_file_recorded_without_an_md5_is_sent_with_its_version_once_a_run_learns_it(central, azurite, tmp_path,
                                                                                          monkeypatch, capsys):
    # A blob recorded without an MD5 (--cloud-md5 stored-only, none stored) cannot be sent (upload: no_md5). The run
    # that then hashed it under the default policy called the same blob `replaced`, a new version: the first version
    # never finished, and the file went up as changed in the second. Its MD5 is now learned: the first version sends it.
    from conftest import run_site
    from services import upload_tree

    site = azurite.new_container("site")
    write(tmp_path / "up", "OMOP/person.csv", b"person_id\n1\n")
    with azurite.service_client() as client:
        upload_tree(client, site, tmp_path / "up", content_md5=False)
    for name, value in central.env.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "m.sqlite"
    first = run_site(f"az://{site}", db, validate_site=False, cloud_md5="stored-only", version_label="20261101020000")
    assert first.label == "20261101020000" and first.exit_code == 1
    code, out, err = in_process(central, monkeypatch, capsys, "upload", "--db", str(db), "--to", central.url)
    assert code == 1 and "no_md5: OMOP/person.csv" in out, out + err
    learned = run_site(f"az://{site}", db, validate_site=False)
    assert learned.label is None and learned.exit_code == 0  # the same blob: its MD5 learned, no new version
    code, out, err = in_process(central, monkeypatch, capsys, "upload", "--db", str(db), "--to", central.url)
    assert code == 0 and "sent 1 file" in out and "complete" in out, out + err
    assert blobs(central, "20261101020000/OMOP")["20261101020000/OMOP/person.csv"][:2] == (
        12, hashlib.md5(b"person_id\n1\n").hexdigest())


def test_an_upload_of_many_versions_checks_a_cloud_root_once(central, moto_s3, tmp_path):
    # Each version's files had their root checked again: a listing round-trip per cloud root and version, for every
    # version of a backlog. A cloud root is now checked once a command (a local one still each version: cheap).
    bucket = moto_s3.new_bucket("site")
    (tmp_path / "chorus.toml").write_text(f'[s3]\nendpoint_url = "{moto_s3.endpoint_url}"\n')
    env = {**central.env, **moto_s3.env}
    db = tmp_path / "m.sqlite"
    for i in range(2):
        moto_s3.client().put_object(Bucket=bucket, Key=f"export/00000{i}/Waveforms/T/S/S.dat", Body=b"x" * (i + 10))
        out = cli("run", "--site", f"s3://{bucket}/export", "--db", str(db), "--version", f"2026110{i + 1}020000",
                  "--no-validate", "--workers", "2", cwd=tmp_path, env=env)
        assert out.returncode in (0, 1), out.stderr
    seen = moto_s3.log.stat().st_size
    out = cli("upload", "--db", str(db), "--to", central.url, "--workers", "2", cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.count("complete;") == 2, out.stdout + out.stderr
    requests = moto_s3.log.read_bytes()[seen:].decode(errors="replace")
    assert requests.count(f"GET /{bucket}?list-type=2&max-keys=1&prefix=export/") == 1, requests


def test_a_script_does_not_log_a_file_written_between_its_md5_check_and_its_send(central, azurite, tmp_path):
    # The script checks each file with md5sum, then the tool reads it again to send it: a file written in between
    # went up and was logged, and the Azure CLI gives a large file's blob the manifest's MD5 whatever bytes it sent
    # (only a single put is checked by the service), so mark-uploaded confirmed other bytes. Its size and
    # modification time are now compared after the send. (The writer: an md5sum that appends to the file after it.)
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "azcopy", env=central.env)
    assert out.returncode == 0, out.stderr
    script, log = tmp_path / "upload.sh", tmp_path / "upload.log"
    script.write_text(out.stdout)
    tools = azcopy_tools(tmp_path)
    (tools / "md5sum").write_text(f'#!/bin/bash\n{shlex.quote(shutil.which("md5sum"))} "$@"\n'
                                  'printf x >> "$WRITER_TARGET"\n')
    (tools / "md5sum").chmod(0o700)
    env = {**os.environ, **central.env, "CHORUS_SAS": sas_for(azurite, central.container, read=True, add=True,
                                                              create=True, write=True, list=True),
           "CHORUS_UPLOAD_LOG": str(log), "WRITER_TARGET": str(site / "OMOP/person.csv"),
           "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "AZCOPY_LOG_LOCATION": str(tmp_path / "azlogs"), "AZCOPY_JOB_PLAN_LOCATION": str(tmp_path / "azplans")}
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "sent, but changed while it was checked and sent" in ran.stderr and "have it removed" in ran.stderr
    assert not log.exists() or "uploaded\t" not in log.read_text(), log.read_text()


def test_an_azcopy_script_sends_a_versions_files_in_one_azcopy_call_and_logs_only_those_its_job_sent(central, azurite,
                                                                                                    tmp_path):
    """The AzCopy script ran one `azcopy copy` a file, each at least 2 s (AzCopy's start-up and progress interval):
    10,000 files took 5.5 hours. It now sends a version's files of a source folder in one call (--list-of-files), and
    logs a file only when AzCopy's own record of the job shows it sent: AzCopy skips a listed file it cannot find with
    an INFO line and exits 0, so its exit status alone logged a file never sent. Run for real with AzCopy; `azcopy` on
    PATH counts its calls and runs the real one. A file gone between its check and the send is not logged, nor
    recorded by mark-uploaded; the same script run again sends it and logs the others again (their blobs there)."""
    db, n = committed_site(tmp_path, 30), 30
    site, label = tmp_path / "site", "20261101020000"
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "azcopy", env=central.env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\nsend ") == n and out.stdout.count("\nbatch ") == 1, out.stdout
    script, log, calls = tmp_path / "upload.sh", tmp_path / "upload.log", tmp_path / "calls"
    script.write_text(out.stdout)
    tools = azcopy_tools(tmp_path)
    (tools / "azcopy").rename(tools / "azcopy-real")
    (tools / "azcopy").write_text(f'#!/bin/bash\necho "$1" >> {shlex.quote(str(calls))}\n'
                                  f'exec {shlex.quote(str(tools / "azcopy-real"))} "$@"\n')
    gone = site / "000007/Waveforms/Telemetry/S7/S7.dat"
    # (md5sum reads the file on its standard input: this one is moved away once checked, before AzCopy sends it)
    (tools / "md5sum").write_text(f'#!/bin/bash\nsrc=$(readlink /proc/$$/fd/0)\n{shlex.quote(shutil.which("md5sum"))} "$@"\n'
                                  f'if [ "$src" = {shlex.quote(str(gone))} ]; then mv "$src" "$src.away"; fi\n')
    for tool in ("azcopy", "md5sum"):
        (tools / tool).chmod(0o700)
    env = {**os.environ, **central.env, "CHORUS_SAS": sas_for(azurite, central.container, read=True, add=True,
                                                              create=True, write=True, list=True),
           "CHORUS_UPLOAD_LOG": str(log), "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "AZCOPY_LOG_LOCATION": str(tmp_path / "azlogs"), "AZCOPY_JOB_PLAN_LOCATION": str(tmp_path / "azplans")}
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    # the version folder's claim, then one call for all 30 files (and AzCopy's record of that job, read back)
    assert calls.read_text().split() == ["copy", "copy", "jobs"], calls.read_text()
    (failed,) = [line for line in ran.stderr.splitlines() if line.startswith("failed: ")]
    assert failed.startswith(f"failed: {gone}: AzCopy's job ") and "did not send it" in failed, ran.stderr
    gone_blob = f"{label}/{gone.relative_to(site)}"
    logged = [line.split("\t", 1)[1] for line in log.read_text().splitlines()]
    assert len(logged) == n - 1 and gone_blob not in logged and set(logged) == set(blobs(central)) - {
        f"{label}/_manifest/owner"}, logged
    mark = ["mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log)]
    marked = cli(*mark, env=central.env)
    assert marked.returncode == 0 and f"recorded {n - 1} uploads" in marked.stdout, marked.stdout + marked.stderr
    assert f"1 of its {n} files is not recorded as at the centre yet" in marked.stdout, marked.stdout
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(n - 1,)]
    (gone.parent / (gone.name + ".away")).rename(gone)
    (tools / "md5sum").unlink()
    calls.unlink()
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert calls.read_text().split() == ["copy", "copy", "jobs"], calls.read_text()
    assert central.client.download_blob(gone_blob).readall() == gone.read_bytes()
    remarked = cli(*mark, env=central.env)
    assert remarked.returncode == 0 and "recorded 1 upload confirmed" in remarked.stdout, remarked.stdout
    assert f"{n - 1} more logged blobs were recorded before" in remarked.stdout, remarked.stdout
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(n,)]


@pytest.mark.parametrize("prefix", ["site\\a", "site\x01a"])
def test_a_central_prefix_azure_would_not_keep_as_it_is_is_refused(tmp_path, prefix):
    # az://c/site\a/: Azure turns the backslash into '/', so every blob went to site/a/<version>/… while the ledger
    # recorded az://c/site\a/<version>/… (check_names checked the files' names, not the prefix); a control character
    # is not kept either. Refused before anything is signed in to or written, by every command that takes --to.
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    commit(tmp_path / "site", tmp_path / "m.sqlite", "20261101020000")
    for command in (["upload", "--dry-run"], ["verify"], ["upload", "--script", "bash"]):
        out = cli(*command, "--db", str(tmp_path / "m.sqlite"), "--to", f"az://central/{prefix}/")
        assert out.returncode == 2, out.stdout + out.stderr
        assert "the prefix of the central URL" in out.stderr and "would not be where the ledger says" in out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize("to", ["az://central/site ", "az://central/site/\r", " az://central/"])
def test_a_central_url_with_white_space_at_an_end_is_refused(tmp_path, to):
    # `--to "$TO"` read from a file saved with Windows line ends, or a space typed: 'az://central/site ' put every blob
    # under "site " (a prefix of its own, beside the site's), and the ledger recorded that; a leading space was "not an
    # Azure URL". Refused by every command that takes --to, naming the URL meant.
    write(tmp_path / "site", "OMOP/person.csv", b"person_id\n1\n")
    commit(tmp_path / "site", tmp_path / "m.sqlite", "20261101020000")
    for command in (["upload", "--dry-run"], ["verify"], ["upload", "--script", "bash"]):
        out = cli(*command, "--db", str(tmp_path / "m.sqlite"), "--to", to)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "with white space" in out.stderr and repr(to.strip()) in out.stderr, out.stderr
        assert ("dos2unix" in out.stderr) == ("\r" in to) and "Traceback" not in out.stderr


def test_mark_uploaded_with_a_read_list_sas_says_its_claim_needs_write(central, azurite, tmp_path):
    # mark-uploaded claims a version folder nobody holds (a write) before it records: refused to a read+list SAS, it
    # said "not allowed to list or read ... use a SAS token with read (r) and list (l)", which that SAS is.
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    commit(site, db, "20261101020000")
    from azure.storage.blob import ContentSettings

    central.client.get_blob_client("20261101020000/OMOP/person.csv").upload_blob(
        b"person_id\n1\n", content_settings=ContentSettings(content_md5=bytearray(hashlib.md5(b"person_id\n1\n").digest())))
    (tmp_path / "upload.log").write_text("uploaded\t20261101020000/OMOP/person.csv\n")
    (tmp_path / "chorus.toml").write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    env = {k: v for k, v in central.env.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    out = cli("mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(tmp_path / "upload.log"),
              cwd=tmp_path, env={**env, "AZURE_STORAGE_SAS_TOKEN": sas_for(azurite, central.container, read=True,
                                                                             list=True)})
    assert out.returncode == 3, out.stdout + out.stderr
    assert "not allowed to add, create and write (a, c, w): the SAS token allows only 'rl'" in out.stderr, out.stderr
    assert "read (r) and list (l) permissions" not in out.stderr and query(db, "SELECT count(*) FROM uploads") == [(0,)]


def test_the_files_not_sent_that_need_someone_to_act_are_named_before_the_superseded_ones(central, tmp_path):
    """An upload lists 10 of the files it did not send. The superseded ones (a later version replaced them: nothing to
    do) came first, and a stale file behind 11 of them was only '... 2 more': the one file the site had to look at
    went unnamed each night. The files someone has to act on are now named first."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    for i in range(11):
        write(site, f"OMOP/t{i:02d}.csv", b"first")
    write(site, "OMOP/z_kept.csv", b"kept")
    commit(site, db, "20261101020000")
    for i in range(11):  # replaced by the next version before the first was sent: superseded
        write(site, f"OMOP/t{i:02d}.csv", b"second")
    commit(site, db, "20261102020000")
    write(site, "OMOP/z_kept.csv", b"changed after both versions")  # stale: the site has to run again
    out = up(central, db)
    assert out.returncode == 1, out.stdout + out.stderr
    first = out.stdout.split("version 20261102020000")[0]
    assert "stale: 1, superseded: 11" in first, out.stdout
    assert "stale: OMOP/z_kept.csv: changed since the version recorded it" in first, out.stdout
    assert "... 2 more" in first and first.count("superseded: OMOP/") == 9, out.stdout


def test_upload_of_a_later_version_says_which_earlier_versions_the_centre_does_not_hold_yet(central, tmp_path):
    """`upload --version` of the third version when the first two were never uploaded said 'complete ... all there',
    exit 0, of a change set the centre cannot apply without those before it; so did its script. Both now name the
    earlier versions waiting (--json: earlier_waiting) and that a plain upload sends them; the exit code stays 0."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/death.csv", b"person_id\n")
    commit(site, db, "20261101020000")
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    commit(site, db, "20261102020000")
    write(site, "OMOP/visit_occurrence.csv", b"visit_occurrence_id\n1\n")
    commit(site, db, "20261103020000")
    script = cli("upload", "--db", str(db), "--to", central.url, "--version", "20261103020000", "--script", "bash",
                 env=central.env)
    assert script.returncode == 0, script.stderr
    assert ("2 earlier versions are not completely uploaded to " + central.url.rstrip("/")
            + " (20261101020000, 20261102020000)") in script.stderr, script.stderr
    out = up(central, db, "--version", "20261103020000", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["earlier_waiting"] == ["20261101020000", "20261102020000"]
    again = up(central, db, "--version", "20261102020000")  # one version before it still waits
    assert again.returncode == 0, again.stdout + again.stderr
    assert "note: 1 earlier version is not completely uploaded" in again.stdout and "(20261101020000)" in again.stdout
    assert "without --version sends it, oldest first" in again.stdout, again.stdout
    rest = up(central, db)  # sends the first; nothing before it waits
    assert rest.returncode == 0 and "note:" not in rest.stdout, rest.stdout + rest.stderr
    assert set(blobs(central)) >= {"20261101020000/OMOP/death.csv", "20261102020000/OMOP/person.csv",
                                   "20261103020000/OMOP/visit_occurrence.csv"}


def test_an_upload_of_a_version_with_validation_errors_says_so_and_sends_it(central, tmp_path):
    """A version whose validation recorded errors (a compressed file, tables missing) was sent with 'complete; ... all
    there' and not a word of them: nothing at upload time told the site it submitted a version the procedures reject.
    It is still sent as it is (the centre decides), exit 0, and the upload now says how many errors and where they are
    listed; a version validation did not check (or found no error in) has no such line."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/visit_occurrence.csv.gz", b"\x1f\x8b\x08\x00 not read")
    ran = cli("run", "--site", str(site), "--db", str(db), "--version", "20261101020000", "--workers", "2")
    assert ran.returncode == 1 and "file.compressed" in ran.stdout, ran.stdout + ran.stderr
    (n,), = query(db, "SELECT count(*) FROM findings WHERE version = '20261101020000' AND severity = 'error'")
    assert n >= 1
    errors = f"validation recorded {n} error{'s' if n > 1 else ''} for this version"
    dry = up(central, db, "--dry-run")
    assert dry.returncode == 0 and errors in dry.stdout and "would be sent as it is" in dry.stdout, dry.stdout
    out = up(central, db, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    version, = json.loads(out.stdout)["versions"]
    assert version["validation_errors"] == n and version["complete"] and version["sent"] == 2
    write(site, "OMOP/death.csv", b"person_id\n")  # a version validation did not check
    commit(site, db, "20261102020000")
    clean = up(central, db)
    assert clean.returncode == 0 and "validation recorded" not in clean.stdout, clean.stdout


@pytest.mark.parametrize("kind", ["bash", "azcopy"])
def test_an_upload_script_piped_into_bash_sends_nothing_as_it_cannot_check_it_is_whole(tmp_path, kind):
    """A script checks its own last line before it sends anything (a script cut short sends nothing), but that read its
    file, `$0`: piped into bash (`upload --script bash | bash`, the writer killed mid-pipe; `ssh host bash -s <
    upload.sh`) or given as `bash <(...)` there is none, the check was skipped, and a cut script sent its first files,
    logged them and exited 0. Not read from its own file, it now sends nothing and exits 2 saying so; as a file, it runs."""
    db = committed_site(tmp_path, 5)
    env = script_env()
    whole = cli("upload", "--db", str(db), "--to", "az://central/", "--script", kind, env=env)
    assert whole.returncode == 0, whole.stderr
    lines = whole.stdout.splitlines(keepends=True)
    first_send = next(i for i, line in enumerate(lines) if line.startswith("send "))
    cut = "".join(lines[:first_send + 1])  # cut short after its first file
    tools, calls, log = tmp_path / "bin", tmp_path / "calls", tmp_path / "upload.log"
    tools.mkdir()
    for tool in ("az", "azcopy"):  # tools that succeed and record being called
        (tools / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {calls}\nexit 0\n")
        (tools / tool).chmod(0o755)
    path_env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "CHORUS_UPLOAD_LOG": str(log)}
    for text in (cut, whole.stdout):
        piped = subprocess.run(["bash"], input=text, capture_output=True, text=True, env=path_env, cwd=tmp_path,
                               timeout=60)
        assert piped.returncode == 2, piped.stdout + piped.stderr
        assert "not read from its own file" in piped.stderr and "nothing was sent" in piped.stderr, piped.stderr
        assert not calls.exists() and not log.exists()
    substituted = subprocess.run(["bash", "-c", 'bash <(cat "$1")', "-", str(tmp_path / "none")], capture_output=True,
                                 text=True, env=path_env, cwd=tmp_path, timeout=60)  # (cat fails: an empty script)
    assert substituted.returncode == 0 and not calls.exists()
    (tmp_path / "cut.sh").write_text(cut)
    substituted = subprocess.run(["bash", "-c", 'bash <(cat "$1")', "-", str(tmp_path / "cut.sh")], capture_output=True,
                                 text=True, env=path_env, cwd=tmp_path, timeout=60)
    assert substituted.returncode == 2 and "not read from its own file" in substituted.stderr, substituted.stderr
    assert not calls.exists() and not log.exists()
    # given as its text (bash -c "$(cat ...)"): cut short, it sends nothing (whole_script, as the Slurm script)
    given = subprocess.run(["bash", "-c", cut], capture_output=True, text=True, env=path_env, cwd=tmp_path, timeout=60)
    assert given.returncode == 2 and "the script given to bash -c is incomplete" in given.stderr, given.stderr
    assert not calls.exists() and not log.exists()
    (tmp_path / "whole.sh").write_text(whole.stdout)
    ran = subprocess.run(["bash", str(tmp_path / "whole.sh")], capture_output=True, text=True, env=path_env,
                         cwd=tmp_path, timeout=120)
    assert "not read from its own file" not in ran.stderr and calls.exists(), ran.stderr


def pasted(script: str, env: dict, cwd: Path, after: str, script_said: str, after_said: str) -> str:
    """`script` pasted into an interactive bash on a pseudo-terminal, then the line `after` typed: what the terminal
    showed (empty once the shell is gone). Each step waits until the terminal shows what it waits for (the prompt;
    `script_said`, then the prompt; `after_said`; the shell gone), at most as long as the fixed waits it had (1, 8, 2
    and 1 s: 12 s of each run)."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # (the child: an interactive shell as a terminal has one)
        os.chdir(cwd)
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], {**env, "PS1": "$ "})
    shown = b""

    def read_for(seconds: float, until=lambda text: False) -> None:
        nonlocal shown
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until(shown.decode(errors="replace")):
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    shown += os.read(fd, 65536)
                except OSError:  # the shell is gone
                    return
    try:
        read_for(1, lambda text: text.endswith("$ "))
        os.write(fd, script.encode())
        read_for(8, lambda text: script_said in text and text.rstrip(" ").endswith("$"))
        with contextlib.suppress(OSError):
            os.write(fd, after.encode() + b"\r")
        read_for(2, lambda text: after_said in text and text.rstrip(" ").endswith("$"))
        with contextlib.suppress(OSError):
            os.write(fd, b"exit\r")
        read_for(1)
    finally:
        os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return shown.decode(errors="replace")


def test_an_upload_script_pasted_into_a_terminal_sends_and_leaves_the_shell_as_it_was(tmp_path):
    """Pasted into an interactive shell (a security review that wants each command seen), the script's last line
    `exit "$failed"` closed the user's terminal (and an ssh session with it), and what it had said of the files not
    sent went with it; `set -u` and umask 077 stayed in the shell until then. Pasted, it now ends without an exit,
    says whether every file was sent, and gives back the umask and `set +u`; the variables of its first check
    (script_file, script_name, last_line) stayed set in the shell, and are unset now."""
    db = committed_site(tmp_path, 3)
    env = script_env()
    whole = cli("upload", "--db", str(db), "--to", "az://central/", "--script", "bash", env=env)
    assert whole.returncode == 0, whole.stderr
    tools, log = tmp_path / "bin", tmp_path / "upload.log"
    tools.mkdir()
    (tools / "az").write_text("#!/bin/sh\nexit 0\n")  # an Azure CLI whose every command succeeds
    (tools / "az").chmod(0o755)
    shell_env = {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "TERM": "dumb",
                 "CHORUS_UPLOAD_LOG": str(log), "AZURE_STORAGE_CONNECTION_STRING": env["AZURE_STORAGE_CONNECTION_STRING"]}
    shown = pasted("umask 022\n" + whole.stdout, shell_env, tmp_path,
                   'echo "still here: flags=$- umask=$(umask) left=[${script_file+f}${script_name+n}${last_line+l}]"',
                   f"logged in {log}", "umask=0")  # (what the commands print, not their text the terminal echoes)
    assert "upload script: every file was sent and logged in" in shown, shown[-2000:]
    assert "still here: flags=" in shown and "umask=0022" in shown, shown[-2000:]
    assert "left=[]" in shown, shown[-2000:]  # (the whole-script check's variables are not left in the user's shell)
    flags = shown.split("still here: flags=")[-1].split()[0]
    assert "u" not in flags, flags
    assert len(log.read_text().splitlines()) == 3


def test_verify_says_which_versions_it_checked_and_names_later_versions_nothing_was_uploaded_of(central, tmp_path):
    # A version none of whose files went up (a name Azure would not keep, a file changed since; or no upload yet) has
    # no row in the ledger as uploaded: `verify` (the latest version with files uploaded) checked the one before and
    # `verify --all` skipped it, both saying "all as recorded", exit 0, without naming the version checked, while the
    # latest version was not at the centre at all.
    db = committed_site(tmp_path, 2)
    assert up(central, db).returncode == 0
    write(tmp_path / "site", "000009/Waveforms/Telemetry/S9/S9.dat", b"new signal")
    commit(tmp_path / "site", db, "20261102020000")
    write(tmp_path / "site", "000009/Waveforms/Telemetry/S9/S9.dat", b"new signal, changed")  # stale: not sent
    sent = up(central, db)
    assert sent.returncode == 1 and "stale: 000009/Waveforms/Telemetry/S9/S9.dat" in sent.stdout, sent.stdout
    for flags in ((), ("--all",)):
        out = cli("verify", "--db", str(db), "--to", central.url, *flags, env=central.env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "all as recorded" not in out.stdout
        assert "of 1 version (20261101020000) at" in out.stdout
        assert "version 20261102020000: 1 of its 1 file not uploaded yet" in out.stdout
        assert "it sends them, or says why it cannot" in out.stdout
        as_json = json.loads(cli("verify", "--db", str(db), "--to", central.url, "--json", *flags,
                                 env=central.env).stdout)
        assert as_json["versions"] == ["20261101020000"] and as_json["exit_code"] == 1
        assert as_json["not_uploaded_yet"] == [{"version": "20261102020000", "not_uploaded": 1, "files": 1}]
    named = cli("verify", "--db", str(db), "--to", central.url, "--version", "20261102020000", env=central.env)
    assert named.returncode == 1 and "upload it first" in named.stdout and "or says why it cannot" in named.stdout
    # Once the next run records the change and the upload sends it, there is nothing left waiting.
    commit(tmp_path / "site", db, "20261103020000")
    assert up(central, db).returncode == 0
    done = cli("verify", "--db", str(db), "--to", central.url, "--all", env=central.env)
    assert done.returncode == 0 and "all as recorded" in done.stdout, done.stdout + done.stderr


def test_a_cloud_file_in_the_archive_tier_is_not_sent_and_upload_says_the_version_waits_for_it(azurite, central,
                                                                                               tmp_path):
    # A site blob moved to the Archive tier after its run: upload quoted the run's word for it, "nothing to do if it
    # is meant to stay archived (the next run tries it again)", where the version never completes until it is sent.
    container = azurite.new_container("site")
    client = azurite.service_client().get_container_client(container)
    client.upload_blob("data/OMOP/person.csv", b"person_id\n1\n")
    client.upload_blob("data/OMOP/death.csv", b"person_id\n1\n2\n")
    db = tmp_path / "m.sqlite"
    site = ("--site", f"az://{container}/data", "--db", str(db), "--no-validate", "--verify-sample", "0")
    assert cli("run", *site, "--version", "20261101020000", env=central.env).returncode == 0
    client.get_blob_client("data/OMOP/death.csv").set_standard_blob_tier("Archive")
    # A dry run said "would send 2 files", exit 0, from the blob's size alone: its tier is in the same properties.
    dry = up(central, db, "--dry-run")
    assert dry.returncode == 1 and "would send 1 file" in dry.stdout, dry.stdout + dry.stderr
    assert "OMOP/death.csv" in dry.stdout and "archive tier" in dry.stdout, dry.stdout
    out = up(central, db)
    assert out.returncode == 1, out.stdout + out.stderr
    said = " ".join(line for line in out.stdout.splitlines() if "OMOP/death.csv" in line)
    assert "archive tier" in said and "stays incomplete" in said and "upload again" in said, out.stdout
    assert "nothing to do" not in said and "next run tries it again" not in said, said
    assert list(blobs(central, "20261101020000/")) == ["20261101020000/OMOP/person.csv"]
    assert query(db, "SELECT f.srcfile, u.state FROM uploads u JOIN source_files f USING (file_id) ORDER BY 1") \
        == [("OMOP/death.csv", "failed"), ("OMOP/person.csv", "uploaded")]
    # Brought back, it is sent and the version completes.
    client.get_blob_client("data/OMOP/death.csv").set_standard_blob_tier("Hot")
    again = up(central, db)
    assert again.returncode == 0 and "complete" in again.stdout, again.stdout + again.stderr


def test_a_dry_run_says_where_it_would_put_the_manifests_copy_of_a_version_that_only_removes_files(central, tmp_path):
    """`upload --dry-run` of a version whose change set only removes files said "would send 0 files" and never that
    the upload would put the version's manifest copy (the one thing it does for it); any version that the dry run
    finds would be completed says where its copy would go."""
    db = committed_site(tmp_path, 3)
    first = up(central, db, "--dry-run")
    assert first.returncode == 0, first.stdout + first.stderr
    where = f"{central.url.rstrip('/')}/20261101020000/_manifest/manifest.sqlite"
    assert f"manifest copy: would be put at {where}" in first.stdout, first.stdout
    assert up(central, db).returncode == 0
    (tmp_path / "site/000000/Waveforms/Telemetry/S0/S0.dat").unlink()
    commit(tmp_path / "site", db, "20261102020000")
    dry = up(central, db, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    where = f"{central.url.rstrip('/')}/20261102020000/_manifest/manifest.sqlite"
    assert "would send 0 files" in dry.stdout and f"manifest copy: would be put at {where}" in dry.stdout, dry.stdout
    assert "its change set adds, replaces or renames no file: only its manifest copy goes" in dry.stdout, dry.stdout
    js = json.loads(up(central, db, "--dry-run", "--json").stdout)["versions"][0]
    assert js["manifest_copy"] is None and js["manifest_copy_would_be"] == where
    assert not [name for name in blobs(central) if name.startswith("20261102020000/")]
    real = up(central, db)
    assert real.returncode == 0 and f"manifest copy: {where}" in real.stdout, real.stdout + real.stderr


def test_the_sending_threads_go_on_sending_while_the_ledger_writes_a_batch(central, tmp_path, monkeypatch):
    # The ledger's batches are written by the thread that hands files to the sending threads, and it handed out one
    # file ahead of each: during every write (a commit waiting on the disk) the threads ran dry. Small files: the
    # upload was a third slower than a plain SDK loop over the same files.
    from chorus_batch.config import CloudSettings
    from chorus_batch.store.uploads import UploadLedger
    from chorus_batch.submit import upload as upload_mod

    db = committed_site(tmp_path, 40)
    for name, value in {**central.env, "CHORUS_BATCH_LEDGER_ROWS": "3"}.items():
        monkeypatch.setenv(name, value)
    started = [0]
    send_one, record = upload_mod._send_one, UploadLedger.record

    def counted(*args, **kwargs):
        started[0] += 1
        return send_one(*args, **kwargs)

    during: list[int] = []  # files the threads started while a batch of sent files was written

    def slow_record(self, rows):
        if any(row.get("state") == "uploaded" for row in rows) and started[0] < 40:
            before, deadline = started[0], time.monotonic() + 5
            while started[0] - before <= 2 and started[0] < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            during.append(started[0] - before)
        return record(self, rows)

    monkeypatch.setattr(upload_mod, "_send_one", counted)
    monkeypatch.setattr(UploadLedger, "record", slow_record)
    result = upload_mod.upload(str(db), central.url, cloud=CloudSettings(), workers=2)
    assert int(result.exit_code) == 0 and result.versions[0].n_sent == 40 and result.versions[0].complete
    assert during and max(during) > 2, during  # more files than threads: the queue did not run dry
    assert len(ledger_names(db)) == 40


def test_the_listing_check_reads_the_list_blobs_xml_itself_and_lists_what_the_sdk_lists(central, monkeypatch):
    # The listing check (upload's completion, every verify) spent about half its time in the SDK's model deserialiser
    # (list_blobs: some fifty calls per blob). It reads the List Blobs XML itself now, page by page: the same names
    # (odd characters, unicode), sizes, Content-MD5s and etags; folder markers and the manifest's copy left out.
    from azure.storage.blob import ContentSettings
    from azure.storage.blob._generated._utils import serialization

    from chorus_batch.config import CloudSettings
    from chorus_batch.submit.central import Central

    names = ["OMOP/person.csv", "000001/Images/odd dir/a#b%20c ü.dcm", "000001/Images/empty.dcm", "x/y+z&w<v>.dat",
             "no_md5.dat", "_manifest/manifest.sqlite"]
    for i, name in enumerate(names):
        data = b"" if "empty" in name else f"bytes {i}".encode()
        central.client.upload_blob(f"20261101020000/{name}", data)
    central.client.get_blob_client("20261101020000/no_md5.dat").set_http_headers(ContentSettings())
    central.client.upload_blob("20261101020000/000001/Images", b"", metadata={"hdi_isfolder": "true"})
    central.client.upload_blob("20261101020001/other.dat", b"another version's")
    expected = sorted((item.name.removeprefix("20261101020000/"), item.size,
                       bytes(item.content_settings.content_md5).hex() if item.content_settings.content_md5 else None,
                       item.etag)
                      for item in central.client.list_blobs(name_starts_with="20261101020000/")
                      if "_manifest" not in item.name and not item.name.endswith("/Images"))
    assert len(expected) == 5 and any(md5 is None for *_, md5, _ in expected)
    for key, value in central.env.items():
        monkeypatch.setenv(key, value)
    deserialised = []
    real = serialization.Deserializer._deserialize
    monkeypatch.setattr(serialization.Deserializer, "_deserialize",
                        lambda self, *args, **kwargs: deserialised.append(1) or real(self, *args, **kwargs))
    monkeypatch.setattr(Central, "list_page", 2)  # (three pages)
    listed = Central(central.url, CloudSettings())
    try:
        rows = listed.listing("20261101020000").sort("name").rows()
    finally:
        listed.close()
    assert rows == expected
    assert deserialised == []
    # An SDK release that moves the private names the XML read uses: the SDK's own listing, the same rows
    monkeypatch.setitem(sys.modules, "azure.storage.blob._shared.response_handlers", None)
    listed = Central(central.url, CloudSettings())
    try:
        assert listed.listing("20261101020000").sort("name").rows() == expected
    finally:
        listed.close()
    assert deserialised


def test_an_upload_to_a_stopped_storage_says_why_the_connection_failed_not_the_request_it_was(central, azurite,
                                                                                                tmp_path):
    """`upload` to an Azurite that is down said "(ServiceRequestError: HTTPConnectionPool(host=…): Max retries
    exceeded with url: /devstoreaccount1/<container>?restype=container&comp=list&maxresults=1 (Caused by
    NewConnectionError("HTTPConnection(" -- the request's path and query, cut before the cause, where `run` and
    `verify` say "Failed to establish a new connection: [Errno 111] Connection refused"."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db, "v1")
    azurite.stop()
    try:  # (a process of its own, as from a shell: the tests' pre-imported zygote's HTTP pools answered otherwise)
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "upload", "--db", str(db), "--to", central.url],
                             env={**os.environ, **central.env}, capture_output=True, text=True, timeout=120)
    finally:
        azurite.start()
    first = out.stderr.split("\n  where:")[0]
    assert out.returncode == 3, out.stderr
    assert f"cannot list az://{central.container}: the storage endpoint cannot be reached" in first, first
    assert "Failed to establish a new connection" in first and "Connection refused" in first, first
    assert "Max retries exceeded" not in first and "restype=" not in first, first
    assert "nothing was sent or recorded" in out.stderr, out.stderr


def test_mark_uploaded_says_a_last_line_without_its_line_end_is_cut_short(central, tmp_path):
    # A log whose last line was cut mid-name (a script stopped while it wrote it, a log copied while it ran): the
    # start of a real name was rejected as "not in that version's change set", which sent users looking for a
    # manifest problem. It is said to be cut short, with its line; a complete name whose line end alone is missing
    # is still recorded when the centre shows it.
    db = committed_site(tmp_path, 3)
    srcfile = put_first_file(central, db, tmp_path / "site")
    log = tmp_path / "upload.log"
    mark = ["mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log)]
    for cut in (f"20261101020000/{srcfile[:-2]}", "2026110"):
        log.write_text(f"uploaded\t20261101020000/{srcfile}\nuploaded\t{cut}")
        out = cli(*mark, env=central.env)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "not in that version's change set" not in out.stdout, out.stdout
        assert "line 2, the log's last, is cut short" in out.stdout, out.stdout
        assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(1,)]
    log.write_text("uploa")
    out = cli(*mark, env=central.env)
    assert out.returncode == 1 and "line 1: 'uploa' (cut short: the log's last line has no line end)" in out.stdout, \
        out.stdout
    log.write_bytes(f"uploaded\t20261101020000/{srcfile}".encode())  # only the line end missing: the blob is there
    out = cli(*mark, env=central.env)
    assert out.returncode == 0 and "cut short" not in out.stdout, out.stdout
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(1,)]


def test_mark_uploaded_says_a_line_cut_in_the_middle_of_the_log_is_cut_short_and_reads_on(central, tmp_path):
    # A run of an older script stopped while it wrote a line; later runs appended to the log: a newer script ends the
    # cut line first, an older one wrote straight after it. The cut line was read as a name "not in that version's
    # change set" (or "not a valid blob name", the next line's name swallowed into it): a user looked for a manifest
    # problem, and a file sent and logged whole was not recorded. It is said to be cut short, with its line, and the
    # lines after it are read on.
    db = committed_site(tmp_path, 3)
    srcfile = put_first_file(central, db, tmp_path / "site")
    log = tmp_path / "upload.log"
    mark = ["mark-uploaded", "--db", str(db), "--to", central.url, "--from-log", str(log)]
    whole = f"uploaded\t20261101020000/{srcfile}"
    for cut in (f"uploaded\t20261101020000/{srcfile[:-2]}", "uploaded\t2026110", "uploa"):
        # ended by a later script before it logged (a log copied through Windows: CRLF), or not (an older script)
        for joined in ("\n", "\r\n", ""):
            with contextlib.closing(sqlite3.connect(db)) as con, con:
                con.execute("DELETE FROM uploads")
            log.write_text(f"{cut}{joined}{whole}\n")
            out = cli(*mark, env=central.env)
            assert out.returncode == 1, out.stdout + out.stderr
            assert "not in that version's change set" not in out.stdout, out.stdout
            assert "not a valid blob name" not in out.stdout and "has no version" not in out.stdout, out.stdout
            said = "line 1: 'uploa' (cut short: a run of the script was stopped" if cut == "uploa" else "line 1 is cut short"
            assert said in out.stdout, (cut, joined, out.stdout)
            assert "Warning" not in out.stderr and "Traceback" not in out.stderr, out.stderr
            assert "recorded 1 upload confirmed" in out.stdout, out.stdout
            assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(1,)], (cut, joined, out.stdout)


def test_an_upload_script_ends_a_line_an_earlier_run_left_cut_short_before_it_logs(central, tmp_path):
    # A run stopped mid-write (or a full disk) left the log's last line without its line end; the next run appended
    # its first line to it, and mark-uploaded read the two as one name of no file: a file sent and logged, not recorded.
    db = committed_site(tmp_path, 2)
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", env=central.env)
    assert out.returncode == 0, out.stderr
    (tmp_path / "up.sh").write_text(out.stdout)
    log = tmp_path / "upload.log"
    log.write_bytes(b"uploaded\t20261101020000/000000/Wav")
    subprocess.run(["bash", "up.sh"], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **central.env})
    text = log.read_text()
    assert text.startswith("uploaded\t20261101020000/000000/Wav\n"), text
    assert all(line.startswith("uploaded\t20261101020000/") for line in text.splitlines()), text
    log.write_bytes(b"uploaded\t20261101020000/000000/Wav\n")  # a log that ends whole is left as it is
    subprocess.run(["bash", "up.sh"], cwd=tmp_path, capture_output=True, text=True, env={**os.environ, **central.env})
    assert log.read_text().startswith("uploaded\t20261101020000/000000/Wav\n") and "\n\n" not in log.read_text()


def test_a_bash_upload_script_masks_a_sas_or_key_in_what_the_azure_cli_says(central, azurite, tmp_path):
    """The bash script printed what `az storage blob upload` said of a file it failed as it was: a SAS or an account
    key that the CLI's message quotes (a request's URL in a connection error, a connection string, JSON of the error)
    went to the terminal and to cron's mail. It goes through the script's `mask`; what is no secret is kept."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobClient, ContainerSasPermissions, generate_container_sas

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    commit(site, db, "20261101020000")
    out = cli("upload", "--db", str(db), "--to", central.url, "--script", "bash", env=central.env)
    assert out.returncode == 0, out.stderr
    script = out.stdout
    assert "| mask >&2; echo \"failed: $2\"" in script  # what the CLI said of a failed file, masked
    start = script.index("mask() {")
    mask = script[start:script.index("\n}\n", start) + 3]
    sas = generate_container_sas(azurite.account_name, central.container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True),
                                 expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
    signature = sas.split("sig=")[1].split("&")[0]
    with pytest.raises(HttpResponseError) as refused:  # what the storage says of a SAS that may not write (no secret)
        BlobClient.from_blob_url(f"{azurite.blob_endpoint}/{central.container}/x?{sas}", retry_total=0
                                 ).upload_blob(b"x")
    said = str(refused.value)
    texts = [said,
             f"HTTPConnectionPool(host='127.0.0.1'): Max retries exceeded with url: /c/x?{sas}(Caused by x)",
             f'{{"error": "{said[:40]}", "url": "/c/x?{quote(sas, safe="")}", "sig": "{signature}"}}',
             f"ValueError: Connection string is either blank or malformed: {azurite.connection_string};x",
             f"token:{sas}:end"]
    env = {"PATH": os.environ["PATH"], "AZURE_STORAGE_SAS_TOKEN": f"?{sas}",
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    for text in texts:
        ran = subprocess.run(["bash", "-c", mask + "mask"], input=text, env=env, capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0 and not ran.stderr, ran.stderr
        shown = ran.stdout
        assert signature not in shown and quote(signature, safe="") not in shown, shown
        assert azurite.account_key not in shown and azurite.account_key[:20] not in shown, shown
    kept = subprocess.run(["bash", "-c", mask + "mask"], input=said, env=env, capture_output=True, text=True,
                          timeout=60).stdout
    assert kept == said + "\n"  # the storage's own words, RequestId and XML, as they were
    # The script run whole (no Azure CLI on this machine: each upload fails, and what bash said of it is shown through
    # `mask`, not swallowed by it)
    (tmp_path / "up.sh").write_text(script)
    ran = subprocess.run(["bash", str(tmp_path / "up.sh")], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, **central.env, "AZURE_STORAGE_SAS_TOKEN": sas}, timeout=300)
    if shutil.which("az") is None:
        assert ran.returncode == 1 and "az: command not found" in ran.stderr, ran.stderr
        assert "failed: " in ran.stderr and signature not in ran.stdout + ran.stderr, ran.stderr
