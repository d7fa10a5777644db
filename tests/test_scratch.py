"""Scratch files (DuckDB's spill, a throwaway manifest, a manifest's copy for upload, a file being written):
removed when their work ends, and what a killed process left (it removes nothing) removed by the next
process that writes the same thing in the same place, once no live process can own it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chorus_batch import fsutil
from chorus_batch.diff import duckdb_session
from chorus_batch.fsutil import ABANDONED_AFTER_S, scratch_folder, write_private

from conftest import cli, write

OLD = time.time() - ABANDONED_AFTER_S - 60


def age(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (OLD, OLD))


def abandoned(parent: Path, name: str) -> Path:
    """A scratch folder as a killed process leaves it: its owner lock file there, held by nobody."""
    folder = parent / name
    folder.mkdir(mode=0o700)
    (folder / ".owner.lock").touch()
    (folder / "spill.tmp").write_bytes(b"000123/Waveforms/x.dat")
    age(folder)
    return folder


def test_a_scratch_folder_is_private_and_removed_when_its_work_ends_or_fails(tmp_path):
    with scratch_folder("chorus-x-", tmp_path) as folder:
        assert folder.parent == tmp_path and folder.name.startswith("chorus-x-")
        if os.name != "nt":
            assert folder.stat().st_mode & 0o077 == 0
        (folder / "a").write_text("x")
    assert not folder.exists()
    with pytest.raises(RuntimeError), scratch_folder("chorus-x-", tmp_path) as folder:
        raise RuntimeError("boom")
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_folders_a_killed_process_left_are_removed_and_no_other(tmp_path):
    left = abandoned(tmp_path, "chorus-duckdb-left")
    young = abandoned(tmp_path, "chorus-duckdb-young")
    os.utime(young)  # made just now: its process may not hold its lock yet
    other = abandoned(tmp_path, "chorus-validate-left")  # another kind of scratch: not this one's to judge
    # One whose process is alive: it holds the lock (in another process, as a run would).
    held = abandoned(tmp_path, "chorus-duckdb-held")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)",
                               str(held / ".owner.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        age(held)
        with scratch_folder("chorus-duckdb-", tmp_path) as mine:
            assert mine.exists()
            assert not left.exists()
            assert young.exists() and other.exists() and held.exists()
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chorus-duckdb-held", "chorus-duckdb-young",
                                                          "chorus-validate-left"]


def test_what_a_killed_process_left_before_the_clock_was_set_back_is_removed_too(tmp_path):
    """An mtime far in the future (the clock set back since: a VM restored from a snapshot, a dead RTC corrected at
    boot) was taken as young, and a killed run's spill folder and temporary files stayed until the clock caught up
    with them. One a little ahead (a file server's clock a few minutes fast) is still young; a held lock still keeps."""
    ahead = time.time() + ABANDONED_AFTER_S + 3600
    left = abandoned(tmp_path, "chorus-duckdb-ahead")
    near = abandoned(tmp_path, "chorus-duckdb-near")
    tmp = tmp_path / ".m.sqlite.state.parquet.4242.tmp"
    tmp.write_bytes(b"rows")
    for path in (left, tmp):
        os.utime(path, (ahead, ahead))
    os.utime(near, (time.time() + 60, time.time() + 60))
    with scratch_folder("chorus-duckdb-", tmp_path):
        assert not left.exists() and near.exists()
    write_private(tmp_path / "m.sqlite.state.parquet", b"new")
    assert not tmp.exists()


def test_a_diffs_spill_folder_left_by_a_killed_run_is_removed_by_the_next_diff(tmp_path):
    left = abandoned(tmp_path, "chorus-duckdb-abc123")
    with duckdb_session(spill_parent=tmp_path) as con:
        assert con.execute("SELECT 1").fetchone() == (1,)
        (mine,) = tmp_path.iterdir()
        assert mine != left
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_a_killed_write_left_is_removed_by_the_next_write_of_that_file(tmp_path):
    target = tmp_path / "m.sqlite.state.parquet"
    old = tmp_path / ".m.sqlite.state.parquet.4242.tmp"
    young = tmp_path / ".m.sqlite.state.parquet.4243.tmp"  # another process writing it now
    unrelated = tmp_path / ".report.html.4244.tmp"
    for path in (old, young, unrelated):
        path.write_bytes(b"rows")
    age(old, unrelated)
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert not old.exists() and young.exists() and unrelated.exists()


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_validate_of_a_folder_killed_midway_leaves_a_manifest_that_the_next_one_removes(tmp_path):
    """`validate --site` without --db builds a throwaway manifest (the site's paths) in the temporary folder."""
    site, scratch = tmp_path / "site", tmp_path / "tmp"
    scratch.mkdir()
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/S1/S1.dat", b"abc")
    env = {**os.environ, "TMPDIR": str(scratch), "CHORUS_BATCH_TEST_PAUSE": "commit"}
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "validate", "--site", str(site)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # its progress lines, then the pause
            if "test pause at commit" in line:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (left,) = scratch.glob("chorus-validate-*")
    assert (left / "manifest.sqlite").exists()
    age(left)
    out = cli("validate", "--site", str(site), env={"TMPDIR": str(scratch)})
    assert out.returncode in (0, 1), out.stderr
    assert list(scratch.glob("chorus-*")) == []


def test_every_scratch_folder_of_the_tool_goes_through_scratch_folder():
    """No other way to make one: a folder made otherwise would not be found after a kill."""
    package = Path(fsutil.__file__).parent
    makers = [f"{p.relative_to(package)}" for p in package.rglob("*.py")
              if any(call in p.read_text(encoding="utf-8") for call in ("mkdtemp(", "TemporaryDirectory("))]
    assert makers == ["fsutil.py"]


def test_a_manifest_copy_in_a_folder_named_with_uri_characters_is_opened_read_only(tmp_path):
    """A scratch folder under a TMPDIR with '%', '?' or '#' in its name: SQLite reads a file: URI's '?' and '#' as the
    end of the file name and '%xx' as an escape, so the copy downloaded there was opened as another file or none (the
    centre's copy then taken for no manifest). Every read-only open goes through one escaped URI."""
    import sqlite3

    from chorus_batch.fsutil import read_only_sqlite

    for name in ("a%41b", "q?mode=rw", "h#x", "sp ace"):
        folder = tmp_path / name
        folder.mkdir()
        db = folder / "m.sqlite"
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE meta (key TEXT, value TEXT)")
            con.execute("INSERT INTO meta VALUES ('manifest_id', 'abc')")
        con.close()
        con = read_only_sqlite(db)
        try:
            assert con.execute("SELECT value FROM meta").fetchone() == ("abc",)
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                con.execute("INSERT INTO meta VALUES ('x', 'y')")
        finally:
            con.close()
    # No other place builds a file: URI by hand.
    import chorus_batch

    package = Path(chorus_batch.__file__).parent
    assert not [p for p in package.rglob("*.py") if 'connect(f"file:' in p.read_text(encoding="utf-8")]
