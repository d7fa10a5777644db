"""A manifest in Azure (--db az://container/path/manifest.sqlite), against a real Azurite: a leased
local working copy, uploaded back only after a successful run; refused while another run holds the
lease; `unlock`; a failed or killed run leaves the remote manifest as it was."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import cli, paused, query, write
from services import ACCOUNT_KEY

BLOB = "m/manifest.sqlite"
AZURE_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT",
              "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY")


def small_site(root: Path) -> Path:
    write(root, "OMOP/person.csv", b"person_id\n1\n")
    write(root, "000001/Waveforms/S1/S1.dat", b"signal one")
    write(root, "000001/Waveforms/S1/S1.hea", b"S1 1 250 3\n")
    return root


@pytest.fixture
def az(azurite, tmp_path, monkeypatch):
    for name in AZURE_VARS:
        monkeypatch.delenv(name, raising=False)
    container = azurite.new_container("man")
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "CHORUS_BATCH_RETRY_BASE_S": "0.01",
           "CHORUS_BATCH_CACHE_DIR": str(tmp_path / "cache")}
    service = azurite.service_client()
    return SimpleNamespace(container=container, env=env, url=f"az://{container}/{BLOB}", cache=tmp_path / "cache",
                           blob=service.get_blob_client(container, BLOB), service=service,
                           lock=service.get_blob_client(container, BLOB + ".lock"))


def run(az, site: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("run", "--site", str(site), "--db", az.url, "--workers", "2", "--no-validate", *extra,
               env={**az.env, **(env or {})})


def download(az, to: Path) -> Path:
    to.write_bytes(az.blob.download_blob().readall())
    return to


def state(az) -> tuple[str, bytes, str]:
    """(etag, MD5 of the bytes) of the remote manifest, and the lease state of its lock blob."""
    props = az.blob.get_blob_properties()
    return props.etag, hashlib.md5(az.blob.download_blob().readall()).digest(), lease_state(az)


def lease_state(az) -> str:
    return str(az.lock.get_blob_properties().lease.state)


def no_secret(*texts: str) -> None:
    for text in texts:
        assert ACCOUNT_KEY not in text and ACCOUNT_KEY[:20] not in text, text


def test_a_run_creates_and_uploads_the_manifest_and_the_next_run_uses_it(az, tmp_path):
    site = small_site(tmp_path / "site")
    first = run(az, site)
    assert first.returncode == 0, first.stderr
    props = az.blob.get_blob_properties()
    copy = download(az, tmp_path / "check.sqlite")
    assert props.content_settings.content_md5 == hashlib.md5(copy.read_bytes()).digest()  # Content-MD5 set
    assert lease_state(az) == "available"  # released after the upload
    assert len(query(copy, "SELECT label FROM versions")) == 1
    assert len(query(copy, "SELECT srcfile FROM source_files WHERE time_invalid IS NULL")) == 3
    assert f"az://{az.container}/{BLOB}" in first.stdout

    second = run(az, site)
    assert second.returncode == 0, second.stderr
    assert "no changes since version" in second.stdout
    copy = download(az, tmp_path / "check2.sqlite")
    assert len(query(copy, "SELECT label FROM versions")) == 1
    runs = query(copy, "SELECT argv, exit_code FROM runs ORDER BY run_id")
    assert [code for _, code in runs] == [0, 0]  # the no-change run's row was uploaded too

    # Another machine (its own working folder) commits a change; this machine's copy is then stale
    # (etag differs) and is downloaded again.
    write(site, "000001/Waveforms/S1/S1b.dat", b"signal one b")
    other = run(az, site, env={"CHORUS_BATCH_CACHE_DIR": str(tmp_path / "other-cache")})
    assert other.returncode == 0, other.stderr
    (site / "000001/Waveforms/S1/S1b.dat").unlink()
    third = run(az, site)
    assert third.returncode == 0, third.stderr
    assert "1 removed" in third.stdout or "removed" in third.stdout, third.stdout
    copy = download(az, tmp_path / "check3.sqlite")
    assert len(query(copy, "SELECT label FROM versions")) == 3

    versions = cli("versions", "--db", az.url, "--json", env=az.env)
    assert versions.returncode == 0, versions.stderr
    assert versions.stdout.count('"label"') == 3

    # No secret anywhere: output, the runs log, the working folder's names (and its files are private).
    no_secret(first.stdout, first.stderr, second.stdout, third.stdout, versions.stdout)
    no_secret(repr(query(copy, "SELECT * FROM runs")))
    for path in az.cache.rglob("*"):
        no_secret(str(path))
    work = next(p for p in (az.cache / "manifests").iterdir())
    assert oct(work.stat().st_mode & 0o777) == "0o700"
    assert (work / "manifest.sqlite").exists()


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_the_working_copy_cache_is_owner_only_whatever_the_umask(az, tmp_path, umask):
    """Under umask 000 a run against az:// made the cache's folders above the working copy (`chorus-batch/`,
    `manifests/`) 0777 and its url.txt 0666: mkdir(parents=True, mode=0o700) gave only the last folder that mode.
    Every folder the cache makes is 0700 and every file 0600, for the run and for the read-only commands' copy."""
    site = small_site(tmp_path / "site")
    cache = tmp_path / "home" / ".cache" / "chorus-batch"  # none of it there yet
    env = {**os.environ, **az.env, "CHORUS_BATCH_CACHE_DIR": str(cache)}
    if umask == 0o022:  # as an earlier release left it under umask 000: `manifests/` 0777 is made owner-only
        (cache / "manifests").mkdir(parents=True)
        for folder in (cache / "manifests", cache, cache.parent, cache.parent.parent):
            folder.chmod(0o700 if folder != cache / "manifests" else 0o777)
    for args in (["run", "--site", str(site), "--db", az.url, "--workers", "2", "--no-validate"],
                 ["versions", "--db", az.url]):
        done = subprocess.run([sys.executable, "-m", "chorus_batch", *args], env=env, capture_output=True, text=True,
                              timeout=120, preexec_fn=lambda: os.umask(umask), check=False)
        assert done.returncode == 0, done.stderr
    made = [cache.parent.parent, *cache.parent.parent.rglob("*")]
    assert any(path.name == "url.txt" for path in made) and any(path.name == "read" for path in made)
    loose = [f"{oct(path.stat().st_mode & 0o777)} {path}" for path in made
             if path.stat().st_mode & 0o777 != (0o700 if path.is_dir() else 0o600)]
    assert not loose, loose


@pytest.mark.parametrize("holder, said", [("validate --force --db x", "command"), ("run --site /x", "run")])
def test_the_lease_is_said_held_by_the_command_that_holds_it(az, tmp_path, holder, said):
    """A run turned away while `validate --force` held the lease was told "locked by another run"."""
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    lease = az.lock.acquire_lease(lease_duration=60)
    try:
        az.lock.set_blob_metadata({"chorus_pid": "4242", "chorus_host": "otherhost", "chorus_user": "alice",
                                   "chorus_started": "2026-01-01T00:00:00Z", "chorus_command": holder}, lease=lease)
        refused = run(az, site)
        assert refused.returncode == 4, refused.stderr
        assert f"locked by another {said}: pid 4242" in refused.stderr and f"wait for that {said}" in refused.stderr
    finally:
        lease.release()


def test_a_run_is_refused_while_another_holds_the_lease_and_unlock_breaks_it(az, tmp_path):
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    before = state(az)
    lease = az.lock.acquire_lease(lease_duration=60)
    az.lock.set_blob_metadata({"chorus_pid": "4242", "chorus_host": "otherhost", "chorus_user": "alice",
                               "chorus_started": "2026-01-01T00:00:00Z", "chorus_command": "run --site /x"}, lease=lease)

    refused = run(az, site)
    assert refused.returncode == 4, refused.stderr
    assert "pid 4242 on host otherhost (user alice)" in refused.stderr
    assert f"chorus-batch unlock --db {az.url}" in refused.stderr

    no_tty = subprocess.run([sys.executable, "-m", "chorus_batch", "unlock", "--db", az.url],
                            env={**os.environ, **az.env}, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60)
    assert no_tty.returncode == 2 and "--yes" in no_tty.stderr, no_tty.stderr
    assert lease_state(az) == "leased"

    unlocked = cli("unlock", "--db", az.url, "--yes", env=az.env)
    assert unlocked.returncode == 0, unlocked.stderr
    assert "pid 4242 on host otherhost (user alice), started 2026-01-01T00:00:00Z" in unlocked.stdout
    assert lease_state(az) != "leased"
    assert state(az)[:2] == before[:2]  # the manifest untouched by the refusal and the unlock

    again = run(az, site)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in cli("unlock", "--db", az.url, "--yes", env=az.env).stdout
    no_secret(refused.stderr, unlocked.stdout, no_tty.stderr)


def test_unlock_of_a_url_where_there_is_no_manifest_says_so_and_exits_2(az, tmp_path):
    """`unlock --db` with a mistyped URL (nothing there: no manifest, no lock blob) said "is not locked (no run holds
    its lease); nothing to do", exit 0, while the manifest the refused run named stayed locked: the next run was
    refused again with nothing to tell why. It now says there is no manifest there (exit 2, as every command but
    `run` does for a --db that names none); a first run's lock, before any manifest was uploaded, is still found."""
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    lease = az.lock.acquire_lease(lease_duration=60)
    try:
        typo = cli("unlock", "--db", az.url.replace("manifest.sqlite", "manifests.sqlite"), "--yes", env=az.env)
        assert typo.returncode == 2, (typo.returncode, typo.stdout, typo.stderr)
        assert "no manifest at" in typo.stderr and "not locked" not in typo.stdout, typo.stdout + typo.stderr
        assert lease_state(az) == "leased"
    finally:
        lease.release()
    # a first run killed before its first upload: a lock blob and no manifest; unlock still finds the lease
    first = az.service.get_blob_client(az.container, "first/manifest.sqlite.lock")
    first.upload_blob(b"")
    held = first.acquire_lease(lease_duration=60)
    unlocked = cli("unlock", "--db", f"az://{az.container}/first/manifest.sqlite", "--yes", env=az.env)
    assert unlocked.returncode == 0 and "broke the lock" in unlocked.stdout, unlocked.stdout + unlocked.stderr
    del held
    # and a lock blob left unleased with no manifest: not locked, said as before
    free = cli("unlock", "--db", f"az://{az.container}/first/manifest.sqlite", "--yes", env=az.env)
    assert free.returncode == 0 and "not locked" in free.stdout, free.stdout + free.stderr


def test_a_failed_run_leaves_the_remote_manifest_byte_identical_and_unlocked(az, tmp_path):
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    before = state(az)
    failed = run(az, tmp_path / "no-such-site")
    assert failed.returncode in (2, 3), failed.stderr
    after = state(az)
    assert after[:2] == before[:2] and after[2] == "available"
    # A run that fails inside the pipeline (after the download, under the lease): bad --version label.
    bad = run(az, site, "--version", "not a label!")
    assert bad.returncode in (2, 3), bad.stderr
    assert state(az)[:2] == before[:2]
    assert lease_state(az) == "available"
    no_secret(failed.stderr, bad.stderr)


def test_a_failed_first_run_says_no_manifest_was_made_at_the_url_not_at_the_cache_copy(az, azurite, tmp_path):
    """A first run with --db az://... that failed said "no manifest was made at <the working copy in the cache>" (a
    site root not found), or "the manifest holds what it held before (`chorus-batch versions` lists it)" of a manifest
    that is not there (a SAS token that may not create the lock blob). Both now name the URL where none was made."""
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    missing = run(az, f"az://{az.container}/no-such-site")  # (a cloud root not found: exit 3, after the lease)
    config = tmp_path / "chorus.toml"
    config.write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    sas = generate_container_sas(azurite.account_name, az.container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    env = {**az.env, "AZURE_STORAGE_CONNECTION_STRING": "", "AZURE_STORAGE_SAS_TOKEN": sas}
    read_only = cli("run", "--config", str(config), "--site", str(small_site(tmp_path / "site")), "--db", az.url,
                    "--no-validate", env=env)
    for out in (missing, read_only):
        assert out.returncode == 3, (out.returncode, out.stderr)
        assert f"nothing was committed; no manifest was made at {az.url}" in out.stderr, out.stderr
        assert str(az.cache) not in out.stderr and "holds what it held before" not in out.stderr, out.stderr
    assert az.blob.exists() is False
    assert az.lock.exists() is False  # (the lock blob the failed first run made is not left beside no manifest)


def test_a_killed_run_leaves_the_remote_unchanged_and_its_lease_expires(az, tmp_path):
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    before = state(az)
    write(site, "000001/Waveforms/S1/S1c.dat", b"new file")
    env = {**os.environ, **az.env, "CHORUS_BATCH_LEASE_S": "15", "CHORUS_BATCH_TEST_PAUSE": "commit"}
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", str(site), "--db", az.url,
                             "--workers", "2", "--no-validate"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "test pause at commit" not in line:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, "the run ended before the commit point"
            assert time.monotonic() < deadline
        time.sleep(6)  # past one renewal (every 5 s for a 15 s lease): the lease is kept alive
        assert lease_state(az) == "leased"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    killed_at = time.monotonic()
    assert state(az)[:2] == before[:2]  # nothing uploaded
    refused = run(az, site)
    assert refused.returncode == 4 and f"pid {proc.pid} " in refused.stderr, refused.stderr
    while lease_state(az) == "leased":
        assert time.monotonic() - killed_at < 30, "the lease of a killed run did not expire"
        time.sleep(0.2)
    after = run(az, site)
    assert after.returncode == 0, after.stderr
    copy = download(az, tmp_path / "check.sqlite")
    assert len(query(copy, "SELECT label FROM versions")) == 2
    assert "000001/Waveforms/S1/S1c.dat" in dict(query(copy, "SELECT srcfile, md5 FROM source_files "
                                                              "WHERE time_invalid IS NULL"))


def test_read_only_commands_missing_manifests_and_containers_and_local_unlock(az, azurite, tmp_path):
    missing = cli("versions", "--db", az.url, env=az.env)
    assert missing.returncode == 2 and "no manifest at" in missing.stderr, missing.stderr
    no_container = cli(
        "run", "--site", str(small_site(tmp_path / "site")), "--db", f"az://no-such-container-x/{BLOB}", "--no-validate",
        env=az.env)
    assert no_container.returncode == 3 and "container" in no_container.stderr, no_container.stderr
    wrong_key = cli("versions", "--db", az.url,
                    env={**az.env, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string.replace(
                        ACCOUNT_KEY, "A" * 86 + "==")})
    assert wrong_key.returncode == 3 and "sign-in failed" in wrong_key.stderr, wrong_key.stderr
    local = cli("unlock", "--db", str(tmp_path / "local.sqlite"), env=az.env)  # (no manifest there: said so)
    assert local.returncode == 2 and "no manifest at" in local.stderr and "az://" in local.stderr
    refused = cli("upgrade", "--db", az.url, env=az.env)
    assert refused.returncode == 2 and "local manifest only" in refused.stderr
    no_secret(missing.stderr, no_container.stderr, wrong_key.stderr)


def test_status_reads_the_manifest_without_its_lease_and_writes_nothing_back(az, tmp_path):
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    write(site, "000001/Waveforms/S1/S1b.dat", b"signal one b")
    etag, md5, _ = state(az)
    lease = az.lock.acquire_lease(lease_duration=60)  # a run holds the lock: status neither waits nor needs it
    try:
        out = cli("status", "--site", str(site), "--db", az.url, "--json", "-q", env=az.env)
        assert lease_state(az) == "leased"
    finally:
        lease.release()
    assert out.returncode in (0, 1), out.stderr
    assert [(c["change"], c["srcfile"]) for c in json.loads(out.stdout)["changes"]] == [
        ("added", "000001/Waveforms/S1/S1b.dat")]
    assert state(az) == (etag, md5, "available")  # nothing uploaded
    no_secret(out.stdout, out.stderr)


def test_a_report_names_a_manifest_in_azure_by_its_url_not_by_the_cache_copy_it_read(az, tmp_path):
    """The page named the read copy in the cache as "the manifest", and told to run `chorus-batch validate --db
    <that copy>`: findings recorded in a throwaway copy, never in the manifest in Azure."""
    import html
    import re

    assert run(az, small_site(tmp_path / "site")).returncode == 0  # (--no-validate: the page says how to check it)
    out = tmp_path / "report.html"
    done = cli("report", "--db", az.url, "--out", str(out), env=az.env)
    assert done.returncode == 0, done.stderr
    page = html.unescape(out.read_text(encoding="utf-8"))
    assert re.search(r"<dt>manifest</dt><dd>(.*?)</dd>", page).group(1) == az.url
    unchecked = next(line for line in done.stdout.splitlines() if "was not validated" in line)
    assert f"chorus-batch run --db {az.url}" in unchecked and "validate --db" not in unchecked, unchecked
    assert unchecked.split("needs a look: ")[1] in page
    # the copy is named only where a local file is needed: open_manifest in the `python -c` commands
    cache = str(az.cache.resolve())
    assert all(line.lstrip().startswith("python -c") for line in re.findall(r"<code>(.*?)</code>", page) if cache in line)
    assert cache not in re.sub(r"<code>python -c.*?</code>", "", page, flags=re.DOTALL)


def test_review_names_a_manifest_in_azure_by_its_url_not_by_the_cache_copy_it_read(az, tmp_path):
    """`review --db az://...` ran the notebook on the read copy in the cache: it printed that copy as "manifest"
    and said `chorus-batch validate` (with no --db: ./chorus_manifest.sqlite, or the copy) for a version not
    validated. As the report, it names the URL, and says that the runs of a manifest in Azure validate it."""
    import nbformat

    assert run(az, small_site(tmp_path / "site")).returncode == 0  # --no-validate
    out = tmp_path / "review.ipynb"
    done = cli("review", "--db", az.url, "--out", str(out), env=az.env, timeout=300)
    assert done.returncode == 0, done.stderr
    said = "".join(o["text"] for cell in nbformat.read(out, as_version=4).cells if cell.cell_type == "code"
                   for o in cell.get("outputs", []) if o["output_type"] == "stream")
    assert f"manifest   {az.url}\n" in said and f"(first version) in {az.url}\n" in said, said
    assert f"(a manifest in Azure is checked by its runs: chorus-batch run --db {az.url} without --no-validate" in said
    assert "validate --db" not in said and "`chorus-batch validate`" not in said
    assert str(az.cache.resolve()) not in said
    no_secret(said, done.stdout, done.stderr)


def test_history_of_a_path_not_there_names_the_manifest_in_azure_not_its_read_copy(az, tmp_path):
    """`history PATH --db az://...` of a path the manifest does not hold named the private read copy in the cache as
    `where` (downloaded once more for the message)."""
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    out = cli("history", "OMOP/no_such.csv", "--db", az.url, env=az.env)
    assert out.returncode == 2 and "no file 'OMOP/no_such.csv' in the manifest" in out.stderr, out.stderr
    assert f"where: {az.url}" in out.stderr and str(az.cache.resolve()) not in out.stderr, out.stderr


def test_a_percent_in_a_db_url_is_a_character_of_the_name_as_in_site_and_to(az, tmp_path):
    # --db decoded %-escapes (az://c/m/my%20m.sqlite was the blob 'm/my m.sqlite') while --site and --to take
    # az:// URLs as written: one URL named two blobs depending on the flag. Now '%' is a character everywhere.
    site = small_site(tmp_path / "site")
    url = f"az://{az.container}/m/my%20m.sqlite"
    first = cli("run", "--site", str(site), "--db", url, "--workers", "2", "--no-validate", env=az.env)
    assert first.returncode == 0, first.stderr
    names = {b.name for b in az.service.get_container_client(az.container).list_blobs()}
    assert "m/my%20m.sqlite" in names and "m/my m.sqlite" not in names, names
    # A manifest an earlier chorus-batch put at the decoded name is not taken for a missing one (a new manifest
    # would start over): the run is refused and names the URL that reads it.
    decoded = az.service.get_blob_client(az.container, "m/my m.sqlite")
    decoded.upload_blob(az.service.get_blob_client(az.container, "m/my%20m.sqlite").download_blob().readall())
    az.service.get_blob_client(az.container, "m/my%20m.sqlite").delete_blob()
    again = cli("run", "--site", str(site), "--db", url, "--workers", "2", "--no-validate", env=az.env)
    assert again.returncode == 2 and "'m/my m.sqlite'" in again.stderr and "Traceback" not in again.stderr, again.stderr
    assert f"'az://{az.container}/m/my m.sqlite'" in again.stderr
    names = {b.name for b in az.service.get_container_client(az.container).list_blobs()}
    assert "m/my%20m.sqlite" not in names, names  # nothing started over
    read = cli("versions", "--db", f"az://{az.container}/m/my m.sqlite", "--json", env=az.env)
    assert read.returncode == 0 and read.stdout.count('"label"') == 1, read.stdout + read.stderr


def test_a_manifest_blob_inside_the_cloud_site_root_is_refused_before_anything_is_written(az, tmp_path):
    """`--db az://c/site/manifest.sqlite` (or one spelt abfs://) with `--site az://c/site`: a local manifest inside
    the site's root is refused (exit 2), a manifest blob there was taken: committed, and with its .lock blob listed
    by every later run as files of the site ("file at the site root"), each commit a new version of it, and
    `upload` would send them to the centre. It is now refused alike, before the lease is taken."""
    from services import upload_tree

    site = small_site(tmp_path / "site")
    upload_tree(az.service, az.container, site, "site")
    for db in (f"az://{az.container}/site/manifest.sqlite", f"abfs://{az.container}/site/OMOP/",
               f"az://{az.container}/site"):
        out = cli("run", "--site", f"az://{az.container}/site/", "--db", db, "--no-validate", env=az.env)
        assert out.returncode == 2, (db, out.returncode, out.stdout, out.stderr)
        assert "the manifest would lie inside the site's root" in out.stderr, out.stderr
    names = {blob.name for blob in az.service.get_container_client(az.container).list_blobs()}
    assert names == {f"site/{rel}" for rel in ("OMOP/person.csv", "000001/Waveforms/S1/S1.dat",
                                               "000001/Waveforms/S1/S1.hea")}, names  # no manifest, no lock blob
    beside = cli("run", "--site", f"az://{az.container}/site", "--db", f"az://{az.container}/site.sqlite",
                 "--no-validate", env=az.env)  # a sibling of the prefix is outside it
    assert beside.returncode == 0, beside.stderr


def test_a_blob_that_is_not_a_manifest_is_named_by_its_url_not_by_the_working_copy(az, tmp_path):
    """`--db az://...` naming a blob of another file (a CSV, another program's SQLite database): run and versions
    said "where: ~/.cache/chorus-batch/manifests/<hash>/person.csv" and "move this one aside to start a new
    manifest" -- a cache file, which the next download put back. They now name the blob's URL (the working copy
    after it) and say to check the URL; the blob is left as it was."""
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    site = small_site(tmp_path / "site")
    for content in (b"person_id\n1\n", other.read_bytes()):
        az.blob.upload_blob(content, overwrite=True)
        etag = az.blob.get_blob_properties().etag
        for out in (run(az, site), cli("versions", "--db", az.url, env=az.env),
                    cli("upload", "--db", az.url, "--to", f"az://{az.container}-central/", env=az.env)):
            assert out.returncode == 3, (out.returncode, out.stderr)
            assert f"where: {az.url}\n" in out.stderr, out.stderr
            assert "check the URL" in out.stderr and "move this one aside" not in out.stderr, out.stderr
            # (it is no manifest: "the manifest holds what it held before" was untrue; and its bytes, a CSV of
            # person ids perhaps, stayed in the cache)
            assert "the manifest holds what it held before" not in out.stderr, out.stderr
            assert not [p for p in az.cache.rglob("*") if p.is_file() and p.name != "url.txt"], out.stderr
        assert az.blob.get_blob_properties().etag == etag and az.blob.download_blob().readall() == content
        # Left as it is, and so is its folder: the lock blob the run made beside it was left there for good
        assert not az.lock.exists(), "a lock blob was left beside a blob that is no manifest"


def test_a_db_url_that_names_a_folder_is_refused_not_made_a_blob(az, tmp_path):
    """`--db az://c/manifests/` (a trailing '/') and `--db az://c/manifests` where blobs lie under manifests/: the run
    made a blob named 'manifests' beside the folder (the '/' stripped; a hierarchical-namespace account cannot hold
    both) and committed there. Both are now refused as a local folder is (exit 2), nothing written."""
    az.service.get_blob_client(az.container, "manifests/other/old.sqlite").upload_blob(b"x")
    site = small_site(tmp_path / "site")
    for url in (f"az://{az.container}/new/", f"az://{az.container}/manifests"):
        for out in (cli("run", "--site", str(site), "--db", url, "--no-validate", env=az.env),
                    cli("versions", "--db", url, env=az.env)):
            assert out.returncode == 2, (url, out.returncode, out.stdout, out.stderr)
            assert "does not name a blob" in out.stderr or "names a folder" in out.stderr, out.stderr
    names = {blob.name for blob in az.service.get_container_client(az.container).list_blobs()}
    assert names == {"manifests/other/old.sqlite"}, names


def test_a_db_url_that_names_the_lock_blob_of_a_manifest_is_refused_not_made_a_manifest(az, tmp_path):
    """`--db az://.../manifest.sqlite.lock` (the name completed from a listing) made a manifest of the lock blob of
    the manifest beside it (its bytes replaced by a SQLite database) and a `manifest.sqlite.lock.lock` beside that.
    It is refused (exit 2) before anything is written, naming the manifest's own URL."""
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    lock_before = az.lock.get_blob_properties()
    out = cli("run", "--site", str(site), "--db", az.url + ".lock", "--no-validate", env=az.env)
    assert out.returncode == 2, out.stderr
    assert f"is the lock blob of the manifest {az.url}" in out.stderr and f"--db {az.url}\n" in out.stderr, out.stderr
    after = az.lock.get_blob_properties()
    assert (after.etag, after.size) == (lock_before.etag, 0)
    assert not az.service.get_blob_client(az.container, BLOB + ".lock.lock").exists()


def test_a_sas_token_that_may_only_read_asks_for_write_permission_to_lock_the_manifest(az, azurite, tmp_path):
    """A SAS token with read and list (rl) only, for `run --db az://...`: "cannot create the lock blob beside ...:
    signed in, but not allowed to list or read ... use a SAS token with read (r) and list (l) permissions" -- what the
    token already had; the lease (the lock blob there from an earlier run) and `unlock` said the same. They now say
    the token may not write there and ask for a SAS token with racwl. They name what the token allows (its sp=, 'rl'),
    as a site's listing and an upload do, and no longer ask to grant a Contributor role: a SAS token sign-in has
    no identity to grant it to."""
    import datetime

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    site = small_site(tmp_path / "site")
    config = tmp_path / "chorus.toml"
    config.write_text(f'[azure]\naccount_url = "{azurite.blob_endpoint}"\n')
    sas = generate_container_sas(azurite.account_name, az.container, account_key=azurite.account_key,
                                 permission=ContainerSasPermissions(read=True, list=True),
                                 expiry=datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1))
    env = {**az.env, "AZURE_STORAGE_CONNECTION_STRING": "", "AZURE_STORAGE_SAS_TOKEN": sas}
    first = cli("run", "--config", str(config), "--site", str(site), "--db", az.url, "--no-validate", env=env)
    assert run(az, site).returncode == 0  # (with the connection string: the lock blob is there now)
    second = cli("run", "--config", str(config), "--site", str(site), "--db", az.url, "--no-validate", env=env)
    az.lock.acquire_lease(lease_duration=15)
    unlock = cli("unlock", "--config", str(config), "--db", az.url, "--yes", env=env)
    for out in (first, second, unlock):
        assert out.returncode == 3, (out.returncode, out.stderr)
        assert "not allowed to add, create and write (a, c, w)" in out.stderr and "racwl" in out.stderr, out.stderr
        assert "the SAS token allows only 'rl' (its sp=)" in out.stderr, out.stderr
        assert "Storage Blob Data" not in out.stderr and "sig=" not in out.stderr, out.stderr


def test_a_signal_after_the_manifest_was_uploaded_back_says_the_version_is_there(az, tmp_path):
    """SIGTERM between the upload of the committed working copy and its record said "nothing was committed" of a
    version the manifest in Azure already held."""
    site = small_site(tmp_path / "site")
    proc = paused("run", "--site", str(site), "--db", az.url, "--workers", "2", "--no-validate",
                  at="manifest-uploaded", env=az.env)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "nothing was committed" not in err and "was committed and uploaded to az://" in err, err
    assert len(query(download(az, tmp_path / "check.sqlite"), "SELECT label FROM versions")) == 1
    again = run(az, site)  # the lease released; the copy, not recorded, is read from Azure again
    assert again.returncode == 0 and "no changes" in again.stdout.lower(), again.stdout + again.stderr


@pytest.mark.parametrize("point", ["validate", "committed"])
def test_a_signal_after_the_local_commit_says_the_manifest_in_azure_has_not_got_it(az, tmp_path, point):
    """SIGTERM while the run checked the version it had committed to the working copy (or just after that commit)
    said "version X had been committed before; it stays": the manifest in Azure never got it (the copy is uploaded
    back only after a run that ends). Said as such, and the next run commits the changes."""
    site = small_site(tmp_path / "site")
    assert run(az, site).returncode == 0
    (site / "OMOP" / "added.csv").write_text("person_id\n1\n")
    proc = paused("run", "--site", str(site), "--db", az.url, "--workers", "2", at=point, env=az.env)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "had been committed before" not in err, err
    assert "was committed to the local working copy only, and the signal came before it was uploaded: nothing was " \
           f"committed to {az.url}" in err, err
    assert len(query(download(az, tmp_path / "check.sqlite"), "SELECT label FROM versions")) == 1
    again = run(az, site)
    assert again.returncode == 0, again.stderr
    assert len(query(download(az, tmp_path / "check2.sqlite"), "SELECT label FROM versions")) == 2
