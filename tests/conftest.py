"""Shared helpers: small real trees on disk and independent views of a manifest."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import zygote
from hypothesis import settings

from chorus_batch import RunSettings, run

# Real cloud services (Azurite, Azurite https+OAuth with a managed-identity endpoint, moto S3) as
# session fixtures; tests import the helpers with `from services import upload_tree, ...`.
from services import azurite, azurite_oauth, moto_s3  # noqa: F401  (fixtures registered by import)
# A real single-node Slurm cluster (munged, slurmctld, slurmd) as a session fixture; see tests/slurm_cluster.py.
from slurm_cluster import slurm  # noqa: F401  (fixture registered by import)

ROOT = Path(__file__).resolve().parent.parent

# No property test is timed: hypothesis' default 200 ms deadline per example failed a date-parsing test whose first
# call (strptime's lazy import) took 273 ms on a machine at load 20; speed is measured by benchmarks/, not tests.
settings.register_profile("chorus", deadline=None)
settings.load_profile("chorus")

# The test files as pytest-xdist's --dist loadfile hands them to its two workers: the longest first, so that the two
# end together. In the alphabetical order test_unattended.py, test_upload.py and test_validate.py (a third of the
# suite's time between them) came last, and one worker ran the last of them alone. The seconds each file's tests
# took, summed (pytest --durations=0 on an idle machine, 2026-12-07: 2,707 s in all; files not named here follow, in
# their own order).
_FILE_SECONDS = {
    "test_upload.py": 393, "test_validate.py": 226, "test_slurm.py": 215, "test_unattended.py": 189,
    "test_notebook.py": 149, "test_cli.py": 117, "test_registries.py": 98, "test_shards.py": 94, "test_report.py": 87,
    "test_cloud_access.py": 85, "test_import_journal.py": 82, "test_remote_manifest.py": 75, "test_unanswered.py": 72,
    "test_review.py": 64, "test_validate_run.py": 63, "test_reviewer_outputs.py": 57,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -_FILE_SECONDS.get(item.path.name, 0))  # (stable: each file's tests keep their order)


def write(root: Path, rel: str, data: bytes = b"x") -> Path:
    path = root.joinpath(*rel.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def settings(site: Path, db: Path, **overrides) -> RunSettings:
    # Re-verification off unless a test is about it: it would re-read files the tests count as unchanged.
    values = {"site": str(site), "db": str(db), "workers": 2, "verify_sample": 0.0, **overrides}
    return RunSettings(**values)


def run_site(site: Path, db: Path, **overrides):
    return run(settings(site, db, **overrides))


def scan_and_commit(db: Path, roots: list):
    """The library's two stages by hand, for a source the tests build themselves: scan the
    roots (the whole site), commit the result."""
    from chorus_batch.classify import build_patterns
    from chorus_batch.commit import commit
    from chorus_batch.scan import scan
    from chorus_batch.store import Manifest

    manifest = Manifest(db)
    manifest.ensure_schema()
    previous = manifest.previous_state()
    latest = manifest.latest_version()
    label = latest["label"] if latest else None
    scanned = scan(roots, previous, based_on=label, workers=2)
    return commit(manifest, scanned, previous, previous_label=label, patterns=build_patterns(None))


def tree_md5(root: Path) -> dict[str, str]:
    """path -> MD5 of every regular file, computed independently of chorus_batch."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            out[path.relative_to(root).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def current_rows(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT srcfile, md5 FROM source_files WHERE time_invalid IS NULL"))
    finally:
        con.close()


def backup_copy(source, target) -> None:
    """A whole copy of a manifest (SQLite's online backup: its WAL folded in), as a backup tool makes one."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real command line in a process of its own: a fork of the pre-imported zygote (tests/zygote.py), or a
    plain subprocess where the environment changes what an import does."""
    environment = {**os.environ, **(env or {})}
    done = zygote.run(list(args), str(cwd or os.getcwd()), environment, timeout)
    if done is not None:
        return done
    return subprocess.run(
        [sys.executable, "-m", "chorus_batch", *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout,
    )


def main_here(*args: str) -> subprocess.CompletedProcess:
    """The command line's main() run in this process, its streams captured: for a command a test only needs the
    outcome of (setup, a read to check), where the process itself (its exit, signals, imports, environment) is not
    the point. Cheaper than cli()'s fork (~0.1-0.3 s each). The signal handlers and log handler main() installs are
    put back."""
    import io
    import logging
    import signal

    from chorus_batch.cli import main

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    logger = logging.getLogger("chorus_batch")
    log_state = (logger.handlers[:], logger.level, logger.propagate)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # (argparse's usage errors)
                code = stop.code if isinstance(stop.code, int) else 2
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        logger.handlers[:], logger.propagate = log_state[0], log_state[2]
        logger.setLevel(log_state[1])
    return subprocess.CompletedProcess(["chorus-batch", *args], int(code), out.getvalue(), err.getvalue())


def paused(*args: str, at: str, cwd: Path | None = None, env: dict | None = None,
           resume: Path | None = None) -> subprocess.Popen:
    """The real command line started in the background, returned once it waits at its fault-injection point `at`
    (CHORUS_BATCH_TEST_PAUSE; `at` may end with '+SECONDS'): its Popen, stdout and stderr piped as text. With
    `resume` (CHORUS_BATCH_TEST_RESUME), it goes on as soon as the test creates that file, not after the whole wait."""
    point = at.partition("+")[0]
    more = {"CHORUS_BATCH_TEST_RESUME": str(resume)} if resume else {}
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", *args], cwd=cwd,
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": at, **more, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while f"test pause at {point}" not in (line := proc.stderr.readline()):
        assert line or proc.poll() is None, f"the command ended before its pause at {point}"
    return proc


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    root.mkdir()
    return root


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "manifest.sqlite"


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (the tests run as root, as on the CI machine): a folder that fills up (manifest, staging)."""
    folder = tmp_path / "small"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):  # until ENOSPC
        while True:
            f.write(b"\0" * 4096)
    return filler


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A clean site of the procedures (sitegen.build_clean_site), built once per module: tests change a copy (clean)."""
    import sitegen

    root = tmp_path_factory.mktemp("template") / "site"
    sitegen.build_clean_site(root)
    return root


@pytest.fixture
def clean(template: Path, tmp_path: Path) -> Path:
    """A copy of the clean site to change (a module may define its own)."""
    import shutil

    root = tmp_path / "site"
    shutil.copytree(template, root)
    return root
