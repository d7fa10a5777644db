"""A cloud service that takes connections and never answers (its process stopped with SIGSTOP: the kernel still
accepts, nothing replies; a hung proxy does the same) ends a run, an upload or a verify within a bound, saying which
service did not answer, for how long, what was committed and what to do, with exit code 3, the previous version
intact and no process left behind. Before the read timeouts were bounded a stopped Azurite held a run 3 minutes
(3 read timeouts of 60 s), a stopped moto server more than 5 minutes at the start and for half an hour mid-hash
(s3fs's retries nested around botocore's). Each service here is the test's own, so the stop touches no other test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import query
from services import Azurite, MotoS3, upload_tree, upload_tree_s3

ROOT = Path(__file__).resolve().parent.parent
AZURE_VARS = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCOUNT",
              "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY")
# Short read timeouts keep the tests short (a call that gets no answer ends in 3 requests of 1 s; 3 s took 9 s);
# test_stopped_azurite_... runs with the defaults (10 s, 30 s). Given only to the command that meets the stopped
# service: the commands before it, with the service answering, run with the defaults (no slow answer fails them).
QUICK = {"CHORUS_BATCH_READ_TIMEOUT_S": "1", "CHORUS_BATCH_RETRY_DEADLINE_S": "2", "CHORUS_BATCH_RETRY_BASE_S": "0.05"}


def _site(root: Path, persons: int, tag: bytes = b"") -> Path:
    for p in range(persons):
        folder = root / f"{p:06d}" / "Waveforms" / "Telemetry" / f"S{p}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"S{p}.dat").write_bytes(b"signal %d " % p * 2000 + tag)
    (root / "OMOP").mkdir(exist_ok=True)
    (root / "OMOP" / "person.csv").write_bytes(b"person_id\n1\n")
    return root


def _env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in AZURE_VARS and not k.startswith("AWS_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _start(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    """The command in a session (process group) of its own: what it leaves behind is found by its group."""
    return subprocess.Popen([sys.executable, "-m", "chorus_batch", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return
    proc.kill()
    raise AssertionError(f"{text!r} did not appear: {''.join(seen)}")


def _ended(proc: subprocess.Popen, started: float, bound: float) -> tuple[str, float]:
    """stderr once the command ended (killed and failed past `bound` seconds); how long it took; its group is empty."""
    try:
        _, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"still running {bound:.0f} s after the service stopped answering") from None
    elapsed = time.monotonic() - started
    with pytest.raises(ProcessLookupError):  # no worker, thread pool process or child of it is left
        os.killpg(proc.pid, 0)
    return err, elapsed


def _said_no_answer(err: str, port: int, timeout: str, *, waited: bool = True) -> None:
    """`waited`: the call was retried by retrying() (the listing, a hash, the lease), which records how long; an upload's
    put is retried by the SDK alone, its message says the read timeout only."""
    assert "Traceback" not in err, err
    assert f"127.0.0.1:{port} did not answer" in err, err
    assert f"no response within {timeout} s (CHORUS_BATCH_READ_TIMEOUT_S) to any request" in err, err
    assert not waited or re.search(r"to any request, after \d+ s and \d+ requests \(", err), err  # how long
    assert "set CHORUS_BATCH_READ_TIMEOUT_S higher" in err, err


def _stopped(proc: subprocess.Popen | None):
    assert proc is not None and proc.poll() is None
    os.kill(proc.pid, signal.SIGSTOP)


def _continued(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)


def test_stopped_azurite_ends_a_run_in_about_30_s_with_defaults_and_keeps_the_version(tmp_path):
    service = Azurite(tmp_path / "azurite")
    service.start()
    try:
        container = service.new_container("s")
        with service.service_client() as client:
            upload_tree(client, container, _site(tmp_path / "site", 3))
        env = _env({"AZURE_STORAGE_CONNECTION_STRING": service.connection_string})
        db = tmp_path / "m.sqlite"
        args = ["run", "--site", f"az://{container}", "--db", str(db), "--no-validate"]
        first = subprocess.run([sys.executable, "-m", "chorus_batch", *args, "--version", "20261101020000"], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert first.returncode in (0, 1), first.stderr
        _stopped(service._proc)  # the listing gets no answer (the kernel still takes the connection)
        started = time.monotonic()
        err, elapsed = _ended(_start(args, env, tmp_path), started, 80)
        assert elapsed < 55, elapsed  # (was 186 s)
        _said_no_answer(err, service.port, "10")
        assert f"az://{container}" in err and "nothing was committed" in err, err
        assert "the manifest holds what it held before" in err, err
    finally:
        _continued(service._proc)
        service.stop()
    assert query(db, "SELECT label FROM versions") == [("20261101020000",)]


def test_moto_stopped_mid_hash_ends_the_run_within_a_bound(tmp_path):
    service = MotoS3(tmp_path / "moto")
    service.start()
    try:
        bucket = service.new_bucket("s")
        upload_tree_s3(service.client(), bucket, _site(tmp_path / "site", 4))
        env = _env({**service.env, "AWS_ENDPOINT_URL": service.endpoint_url})
        db = tmp_path / "m.sqlite"
        args = ["run", "--site", f"s3://{bucket}", "--db", str(db), "--no-validate", "--cloud-md5", "download",
                "--workers", "2"]
        first = subprocess.run([sys.executable, "-m", "chorus_batch", *args, "--version", "20261101020000"], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert first.returncode in (0, 1), first.stderr
        upload_tree_s3(service.client(), bucket, _site(tmp_path / "changed", 4, b"changed"))  # every object new bytes
        resume = tmp_path / "resume"
        proc = _start(args, {**env, **QUICK, "CHORUS_BATCH_TEST_PAUSE": "hashing+60",
                             "CHORUS_BATCH_TEST_RESUME": str(resume)}, tmp_path)
        _wait_for(proc, "test pause at hashing")
        _stopped(service._proc)  # listed; each object's read gets no answer
        resume.touch()
        started = time.monotonic()
        err, elapsed = _ended(proc, started, 60)
        assert elapsed < 40, elapsed  # (was more than 5 minutes)
        _said_no_answer(err, service.port, "1")
        assert "cannot read s3://" in err and "nothing was committed" in err, err
    finally:
        _continued(service._proc)
        service.stop()
    assert query(db, "SELECT label FROM versions") == [("20261101020000",)]


def test_central_azurite_stopped_ends_upload_and_verify_within_a_bound(tmp_path):
    service = Azurite(tmp_path / "azurite")
    service.start()
    try:
        central = service.new_container("central")
        db = tmp_path / "m.sqlite"
        local = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--site", str(_site(tmp_path / "site", 3)),
                                "--db", str(db), "--no-validate", "--version", "20261101020000"], cwd=tmp_path,
                               env=_env({}), capture_output=True, text=True, timeout=120)
        assert local.returncode in (0, 1), local.stderr
        env = _env({"AZURE_STORAGE_CONNECTION_STRING": service.connection_string, **QUICK,
                    "CHORUS_BATCH_CACHE_DIR": str(tmp_path / "cache")})  # (every request meets the stopped service)
        _stopped(service._proc)
        for command in ("upload", "verify"):
            started = time.monotonic()
            err, elapsed = _ended(_start([command, "--db", str(db), "--to", f"az://{central}/"], env, tmp_path),
                                  started, 60)
            assert elapsed < 40, (command, elapsed)
            _said_no_answer(err, service.port, "1")
            if command == "verify":  # (it was "...; run the same command again to resume": verify resumes nothing, and
                # after a failure its fix says what to do first)
                assert "what the uploads ledger recorded before stays" in err and "to resume" not in err, err
    finally:
        _continued(service._proc)
        service.stop()
    assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'") == [(0,)]


def test_central_azurite_stopped_mid_upload_keeps_what_was_confirmed_and_resumes(tmp_path):
    service = Azurite(tmp_path / "azurite")
    service.start()
    try:
        central = service.new_container("central")
        db = tmp_path / "m.sqlite"
        local = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--site", str(_site(tmp_path / "site", 30)),
                                "--db", str(db), "--no-validate", "--version", "20261101020000"], cwd=tmp_path,
                               env=_env({}), capture_output=True, text=True, timeout=120)
        assert local.returncode in (0, 1), local.stderr
        env = _env({"AZURE_STORAGE_CONNECTION_STRING": service.connection_string,
                    "CHORUS_BATCH_CACHE_DIR": str(tmp_path / "cache"), "CHORUS_BATCH_LEDGER_ROWS": "5"})
        args = ["upload", "--db", str(db), "--to", f"az://{central}/", "--workers", "2"]
        resume = tmp_path / "resume"
        proc = _start(args, {**env, **QUICK, "CHORUS_BATCH_TEST_PAUSE": "upload+60",
                             "CHORUS_BATCH_TEST_RESUME": str(resume)}, tmp_path)
        _wait_for(proc, "test pause at upload")  # the first 5 files are confirmed and recorded
        _stopped(service._proc)
        resume.touch()
        started = time.monotonic()
        err, elapsed = _ended(proc, started, 60)
        assert proc.returncode == 3 and elapsed < 40, (proc.returncode, elapsed, err)
        _said_no_answer(err, service.port, "1", waited=False)
        assert "confirmed by this upload are recorded" in err and "run the same command again to resume" in err, err
        confirmed = query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'")[0][0]
        assert confirmed >= 5
        _continued(service._proc)  # the service answers again: the same command sends the rest
        again = subprocess.run([sys.executable, "-m", "chorus_batch", *args], env=env, cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert query(db, "SELECT count(*) FROM uploads WHERE state = 'uploaded'")[0][0] > confirmed
    finally:
        _continued(service._proc)
        service.stop()


def test_azurite_holding_the_manifest_stopped_mid_run_ends_it_and_keeps_the_manifest_blob(tmp_path):
    """--db az://…: the lease's renewal gets no answer; the run ends with the lock named, nothing committed, the
    manifest blob as it was (its lease, unreleased, expires by itself)."""
    service = Azurite(tmp_path / "azurite")
    service.start()
    try:
        container = service.new_container("m")
        site = _site(tmp_path / "site", 5)
        env = _env({"AZURE_STORAGE_CONNECTION_STRING": service.connection_string,
                    "CHORUS_BATCH_CACHE_DIR": str(tmp_path / "cache")})
        args = ["run", "--site", str(site), "--db", f"az://{container}/m.sqlite", "--no-validate"]
        first = subprocess.run([sys.executable, "-m", "chorus_batch", *args, "--version", "20261101020000"], env=env,
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert first.returncode in (0, 1), first.stderr
        with service.service_client() as client:
            before = client.get_blob_client(container, "m.sqlite").get_blob_properties().etag
        _site(site, 5, b"changed")
        resume = tmp_path / "resume"
        proc = _start(args, {**env, **QUICK, "CHORUS_BATCH_TEST_PAUSE": "hashing+60",
                             "CHORUS_BATCH_TEST_RESUME": str(resume)}, tmp_path)
        _wait_for(proc, "test pause at hashing")
        _stopped(service._proc)
        resume.touch()
        started = time.monotonic()
        err, elapsed = _ended(proc, started, 60)
        assert proc.returncode == 3 and elapsed < 45, (proc.returncode, elapsed, err)
        _said_no_answer(err, service.port, "1")
        assert f"az://{container}/m.sqlite" in err and "nothing was committed" in err, err
        _continued(service._proc)
        with service.service_client() as client:
            assert client.get_blob_client(container, "m.sqlite").get_blob_properties().etag == before
    finally:
        _continued(service._proc)
        service.stop()
