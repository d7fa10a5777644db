"""What the reviewer's commands write: a reader that leaves mid-output (`| head -1`) ends a command quietly with
its own exit code, whether Python's stdout is buffered or not (PYTHONUNBUFFERED=1, as in containers and Jupyter)."""

from __future__ import annotations

import os
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
