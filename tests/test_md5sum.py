"""`files`, `changes` and `diff` with --md5sum: the lines GNU `md5sum -c` checks, checked by the real md5sum
in the site folder (which is what the central container's version folder holds)."""

from __future__ import annotations

import sqlite3
import subprocess

import polars as pl
from conftest import cli, run_site, write

from chorus_batch.review import md5sum_lines, without_md5

# GNU md5sum (coreutils) is the central side's checker: the tests run it for real (never skipped).

ODD_NAMES = ["OMOP/with space.csv", "OMOP/nön-ascii_é漢.csv", "OMOP/back\\slash.csv", "OMOP/new\nline.csv",
             "OMOP/both\\and\nnewline.csv"]


def md5sum_c(site, lines: str) -> subprocess.CompletedProcess:
    """Write the list into the site folder and run the real `md5sum -c` there."""
    with open(site / "checksums.md5", "w", encoding="utf-8", newline="") as out:
        out.write(lines)
    try:
        return subprocess.run(["md5sum", "-c", "checksums.md5"], cwd=site, capture_output=True, check=False, timeout=60)
    finally:
        (site / "checksums.md5").unlink()


def md5sum_of(site, paths: list[str]) -> str:
    """What md5sum itself prints for these paths (in this order)."""
    return subprocess.run(["md5sum", "--", *paths], cwd=site, capture_output=True, check=True,
                          timeout=60).stdout.decode("utf-8")


def test_files_md5sum_is_what_md5sum_prints_and_md5sum_c_checks_it(site, db):
    paths = ["OMOP/person.csv", "Metadata/notes.txt", "000001/Waveforms/1/1.hea", *ODD_NAMES]
    for i, rel in enumerate(paths):
        write(site, rel, f"content {i}\n".encode())
    run_site(site, db, validate_site=False)
    result = cli("files", "--db", str(db), "--md5sum")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # the same bytes md5sum writes itself, sorted by path (escaped names included)
    assert result.stdout == md5sum_of(site, sorted(paths))
    assert result.stdout.count("\n") == len(paths)
    assert sum(line.startswith("\\") for line in result.stdout.split("\n")) == 3  # the escaped names
    check = md5sum_c(site, result.stdout)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.decode().count(": OK\n") == len(paths)
    # a changed file fails the check
    write(site, "OMOP/nön-ascii_é漢.csv", b"changed after the version was committed")
    check = md5sum_c(site, result.stdout)
    assert check.returncode == 1
    assert "nön-ascii_é漢.csv: FAILED\n" in check.stdout.decode()
    assert check.stdout.decode().count(": OK\n") == len(paths) - 1


def test_changes_and_diff_list_only_the_files_with_new_content(site, db):
    for name in ("kept", "replaced", "renamed", "removed"):
        write(site, f"OMOP/{name}.csv", name.encode())
    first = run_site(site, db, validate_site=False)
    write(site, "OMOP/replaced.csv", b"new content")
    (site / "OMOP" / "renamed.csv").rename(site / "OMOP" / "renamed to.csv")
    (site / "OMOP" / "removed.csv").unlink()
    write(site, "OMOP/added\\one.csv", b"added")
    run_site(site, db, validate_site=False)
    new = sorted(["OMOP/replaced.csv", "OMOP/renamed to.csv", "OMOP/added\\one.csv"])
    changes = cli("changes", "--db", str(db), "--md5sum")
    assert changes.returncode == 0, changes.stderr
    assert changes.stdout == md5sum_of(site, new)
    diff = cli("diff", "--db", str(db), "--from", first.label, "--md5sum")
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout == changes.stdout
    assert md5sum_c(site, diff.stdout).returncode == 0
    # the first version's change set: everything it added
    added = cli("changes", "--db", str(db), "--version", first.label, "--md5sum").stdout
    assert [line.split("  ", 1)[1] for line in added.splitlines()] == [
        "OMOP/kept.csv", "OMOP/removed.csv", "OMOP/renamed.csv", "OMOP/replaced.csv"]


def test_files_without_an_md5_are_left_out_said_on_stderr_and_exit_1(site, db):
    for name in ("a", "b", "c"):
        write(site, f"OMOP/{name}.csv", name.encode())
    run_site(site, db, validate_site=False)
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE source_files SET md5 = NULL, md5_source = 'unverifiable' "
                    "WHERE srcfile IN ('OMOP/a.csv', 'OMOP/c.csv')")
    con.close()
    for args in (["files"], ["changes"]):
        result = cli(*args, "--db", str(db), "--md5sum")
        assert result.returncode == 1
        assert result.stdout == md5sum_of(site, ["OMOP/b.csv"])
        assert "2 files have no MD5 (unverifiable) and are not in the list" in result.stderr
        assert "OMOP/a.csv" in result.stderr and "OMOP/c.csv" in result.stderr


def test_md5sum_lines_is_one_pure_function_for_all_three_frames():
    frame = pl.DataFrame({
        "change": ["removed", "added", "renamed", "replaced", "added"],
        "srcfile": ["gone.csv", "z.csv", "a\\b\nc\rd.csv", "m.csv", "no_md5.csv"],
        "md5": ["0" * 32, "1" * 32, "2" * 32, "3" * 32, None],
    })
    assert list(md5sum_lines(frame)) == [
        "\\" + "2" * 32 + "  a\\\\b\\nc\\rd.csv", "3" * 32 + "  m.csv", "1" * 32 + "  z.csv"]
    assert without_md5(frame)["srcfile"].to_list() == ["no_md5.csv"]
    files = frame.drop("change")  # a `files` frame: every row is a file of the version
    assert len(list(md5sum_lines(files))) == 4
    assert list(md5sum_lines(files.head(0))) == []


def test_md5sum_is_one_of_the_output_formats():
    for command in ("files", "changes", "diff"):
        assert "--md5sum" in cli(command, "--help").stdout
    assert "--md5sum" not in cli("history", "--help").stdout
    both = cli("files", "--json", "--md5sum")
    assert both.returncode == 2 and "not allowed with" in both.stderr
