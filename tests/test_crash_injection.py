"""Crash injection: SIGKILL `run` at 12 points spread over its life (start-up, listing, hashing in
worker processes, diff, the commit, validation, Parquet snapshots), and at six fault points (while
the libraries load, hashing, the diff's end, inside the commit's transaction, validating, writing a
snapshot), and check after each kill that

  - PRAGMA integrity_check is ok,
  - the latest version is the previous one, or the complete new one,
  - no path has more than one current row,
  - no worker process outlives the killed run,
  - the next run makes the current rows equal the tree, and the latest version's snapshot complete;

and at the end that no scratch file of a killed run (DuckDB's spill, a file half written) is left once
the next runs have found it abandoned.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from chorus_batch.fsutil import ABANDONED_AFTER_S
from chorus_batch.store import Manifest
from chorus_batch.store.snapshots import has_snapshot
from chorus_batch.testdata import Spec, make_testdata

from conftest import current_rows, tree_md5
from test_unattended import alive, children_of

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
# 50 timed kills took 174 s of a 1486 s CI run (stop 29), 24 took 66 s; 12 still land one every ~8% of the run
# (start-up, listing, hashing, the commit, validation, snapshots: kills past ~80% of it leave the new version), and
# the fault points below pin kills on each side of the commit, and in the snapshot, whatever the machine's load.
POINTS = 12


@pytest.fixture(autouse=True)
def own_temporary_folder(tmp_path, monkeypatch):
    """The runs' temporary folder (TMPDIR), to see what they leave in it."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))


def command(site: Path, db: Path, snap: Path) -> list[str]:
    return [sys.executable, "-m", "chorus_batch", "run", "-q", "--workers", "2", "--site", str(site), "--db", str(db),
            "--parquet", str(snap), "--max-delete", "all"]


def test_a_run_killed_anywhere_leaves_a_consistent_manifest(tmp_path, monkeypatch, capsys):
    from chorus_batch.cli import main

    # The run after each kill is in this process (what it finds is the point, not its own process start), its
    # scratch in the runs' temporary folder as theirs is (tempfile keeps the folder it first found).
    monkeypatch.setattr(tempfile, "tempdir", None)
    make_testdata(tmp_path / "td", Spec(persons=20, files_per_person=40, size=2048, seed=11))
    first, second = tmp_path / "td" / "first", tmp_path / "td" / "second"
    base, snap = tmp_path / "v1.sqlite", tmp_path / "snap"
    assert subprocess.run(command(first, base, snap), capture_output=True).returncode in (0, 1)
    (v1,) = sqlite3.connect(base).execute("SELECT max(label) FROM versions").fetchone()
    expected = tree_md5(second)

    # How long a run from v1 to the second tree takes here: the kills are spread over it.
    db = tmp_path / "m.sqlite"
    shutil.copy(base, db)
    started = time.monotonic()
    assert subprocess.run(command(second, db, snap), capture_output=True).returncode in (0, 1)
    duration = time.monotonic() - started

    outcomes = {"previous": 0, "new": 0}

    def kill(point: str, *, after_s: float = 0.0, pause: str | None = None) -> None:
        """Start the run from v1, SIGKILL it `after_s` seconds in (or once it reports the fault point `pause`),
        and check what it left; then the next run must recover."""
        for leftover in tmp_path.glob("m.sqlite*"):  # the hash checkpoint (m.sqlite.checkpoint/) too
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        shutil.copy(base, db)
        env = {**os.environ, **({"CHORUS_BATCH_TEST_PAUSE": pause} if pause else {})}
        proc = subprocess.Popen(command(second, db, snap), stdout=subprocess.DEVNULL, env=env,
                                stderr=subprocess.PIPE if pause else subprocess.DEVNULL, text=True)
        if pause:
            assert proc.stderr is not None
            said = iter(proc.stderr.readline, "")
            assert any(f"test pause at {pause}" in line for line in said), f"{point}: never reached"
        time.sleep(after_s)
        workers = children_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
        deadline = time.monotonic() + 10
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in workers), f"point {point}: orphaned workers {workers}"
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",), point
            (latest,) = con.execute("SELECT max(label) FROM versions").fetchone()
            twins = con.execute("SELECT srcfile FROM source_files WHERE time_invalid IS NULL "
                                "GROUP BY srcfile HAVING count(*) > 1").fetchall()
        finally:
            con.close()
        assert twins == [], f"point {point}: {twins[:3]}"
        if latest == v1:
            outcomes["previous"] += 1
        else:
            outcomes["new"] += 1
            assert current_rows(db) == expected, f"point {point}: the new version {latest} is incomplete"
        capsys.readouterr()
        recovered = main(command(second, db, snap)[3:])
        assert recovered in (0, 1), f"point {point}: {capsys.readouterr().err}"
        assert current_rows(db) == expected, f"point {point}"
        for version in Manifest(db).versions().iter_rows(named=True):  # every version's, not only the latest
            assert has_snapshot(version["label"], str(snap), version), \
                f"point {point}: the snapshot of {version['label']} is incomplete"

    for point in range(POINTS):
        kill(str(point), after_s=duration * (0.1 + 0.95 * point / POINTS))
    # At fault points too, so that kills land before and after the commit however the machine's load varies
    # the timed ones: while the libraries load (the early listing's workers walking), hashing, at the end of the
    # diff (its DuckDB spill folder still there), the commit's transaction, and validation (after the commit).
    before = outcomes["previous"]
    for pause in ("early-listing", "hashing", "scratch-folder-end", "commit"):
        kill(pause, pause=pause)
    assert outcomes["previous"] == before + 4  # each of these kills left the previous version
    new = outcomes["new"]
    kill("validate", pause="validate")
    assert outcomes["new"] == new + 1  # killed after its commit: the new version stays, complete
    kill("snapshot", pause="snapshot")  # killed halfway through its snapshot: the next run writes it whole
    assert outcomes["new"] == new + 2
    print(f"crash injection: {POINTS} kills over {duration:.1f} s runs; latest version after the kill: {outcomes}")
    assert outcomes["previous"] and outcomes["new"]  # kills landed both before and after the commit

    # What the killed runs left, once old enough that no live run can own it, goes with the next run that
    # writes the same kind of thing there (a diff from v1, the state cache, the snapshots).
    left = [p for p in tmp_path.rglob("*") if p.name.startswith("chorus-duckdb-") or p.name.endswith(".tmp")]
    old = time.time() - ABANDONED_AFTER_S - 60
    for path in left:
        os.utime(path, (old, old))
    shutil.copy(base, db)
    assert subprocess.run(command(second, db, snap), capture_output=True).returncode in (0, 1)
    still = [p for p in tmp_path.rglob("*") if p.name.startswith("chorus-duckdb-") or p.name.endswith(".tmp")]
    print(f"scratch files the killed runs left: {len(left)}")
    assert any(p.name.startswith("chorus-duckdb-") for p in left)  # (the kill at the diff's end left its folder)
    assert still == [], f"left by killed runs: {len(left)}, still there: {still[:5]}"
