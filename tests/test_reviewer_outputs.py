"""What the reviewer's commands write: a reader that leaves mid-output (`| head -1`) ends a command quietly with
its own exit code, whether Python's stdout is buffered or not (PYTHONUNBUFFERED=1, as in containers and Jupyter)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_site

from chorus_batch.review import open_manifest
from chorus_batch.testdata import Spec, make_testdata


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("outputs")
    make_testdata(tmp / "td", Spec(persons=60, files_per_person=40, size=16, change_fraction=0.5))
    db = tmp / "m.sqlite"
    run_site(tmp / "td" / "first", db)
    run_site(tmp / "td" / "second", db)
    return db


def first_line_then_leave(args: list[str], unbuffered: bool) -> tuple[int, str]:
    """(exit code, stderr) of a command whose reader takes one line and closes the pipe, as `| head -1` does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline()
    proc.stdout.close()  # while the command still writes: its output is larger than a pipe holds
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


@pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("command", [["report", "--out", "-"], ["files", "--json"], ["files", "--csv"],
                                     ["changes", "--json"], ["diff", "--from", "FIRST", "--json"]])
def test_a_reader_that_leaves_mid_output_ends_the_command_quietly(manifest, command, unbuffered):
    """`report --out - | head -1` under PYTHONUNBUFFERED=1 said "wrote the report to standard output": the text
    layer over an unbuffered stdout dropped what a short write left, so the closed pipe was never seen."""
    first = open_manifest(manifest).versions()["label"][0]
    args = [first if word == "FIRST" else word for word in command] + ["--db", str(manifest)]
    full = subprocess.run([sys.executable, "-m", "chorus_batch", *args], capture_output=True)
    assert full.returncode == 0, full.stderr
    if len(full.stdout) < 128 * 1024:  # more than a pipe holds (64 KiB) and a read takes
        pytest.fail(f"{command}: only {len(full.stdout)} bytes: the reader would leave after the command ended")
    code, err = first_line_then_leave(args, unbuffered)
    assert code == 0, err
    assert err == "", err  # no "wrote ...", no traceback, no "error"


def test_a_column_empty_in_the_first_131072_rows_is_read(tmp_path):
    """`files` on a manifest of more than 131072 current files, of which only a late path (in path order) is
    unparseable, was `internal error: OSError: [SQLite] Type mismatch in column 10: expected INT64 but got
    STRING/BINARY`: ADBC's SQLite driver infers each column's type from its first batch (131072 rows), and
    parse_error was NULL in all of them. The manifest reader takes the whole result as one batch."""
    from test_notebook import manifest_of

    db = manifest_of(140_000, tmp_path / "m")
    con = sqlite3.connect(db)
    with con:  # as a run records a path no pattern fits
        con.execute("UPDATE source_files SET parse_error = 'no pattern: late' WHERE file_id = (SELECT file_id FROM "
                    "source_files WHERE time_invalid IS NULL ORDER BY srcfile DESC LIMIT 1)")
    con.close()
    out = subprocess.run([sys.executable, "-m", "chorus_batch", "files", "--db", str(db), "--csv"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("no pattern: late") == 1 and len(out.stdout.splitlines()) > 140_000
