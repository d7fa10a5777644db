"""What the reviewer's commands write: a reader that leaves mid-output (`| head -1`) ends a command quietly with
its own exit code (`report --out -`, whose page is its product: 141, as `cat`), whether Python's stdout is buffered or not (PYTHONUNBUFFERED=1, as in containers and Jupyter)."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import polars as pl
import pytest
import zygote
from conftest import cli, run_site

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
    if not proc.stdout.readline():  # (seen once on a loaded machine: say what the command said)
        pytest.fail(f"{args}: no output, exit {proc.wait(timeout=120)}: {proc.stderr.read().decode()}")
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
    full = cli(*args)
    assert full.returncode == 0, full.stderr
    if len(full.stdout.encode()) < 128 * 1024:  # more than a pipe holds (64 KiB) and a read takes
        pytest.fail(f"{command}: only {len(full.stdout.encode())} bytes: the reader would leave after the command ended")
    code, err = first_line_then_leave(args, unbuffered)
    # the page is report's product: cut, it ends as `cat` ends (141), not as written; a listing with its own code
    assert code == (141 if command[0] == "report" else 0), err
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
    out = cli("files", "--db", str(db), "--csv", timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("no pattern: late") == 1 and len(out.stdout.splitlines()) > 140_000


# Names a terminal shows alike (a trailing space, a tab, a zero-width space, a right-to-left override, a no-break
# space, a decomposed é beside the composed one, a name that starts with a quote), and how the tables show them.
ODD_NAMES = {
    "OMOP/trail.csv ": "'OMOP/trail.csv '", "OMOP/trail.csv": "OMOP/trail.csv",
    "OMOP/tab\tname.csv": "'OMOP/tab\\tname.csv'", "OMOP/zw\u200bsp.csv": "'OMOP/zw\\u200bsp.csv'",
    "OMOP/rtl\u202ecod.csv": "'OMOP/rtl\\u202ecod.csv'", "OMOP/nbsp\u00a0.csv": "'OMOP/nbsp\\xa0.csv'",
    "OMOP/cafe\u0301.csv": "'OMOP/cafe\\u0301.csv'", "OMOP/caf\u00e9.csv": "OMOP/caf\u00e9.csv",
    "OMOP/'q'.csv": "OMOP/'q'.csv", "'OMOP/q.csv '": "\"'OMOP/q.csv '\"",  # the second is no quoted form of the first
}


def path_cells(stdout: str, column: str) -> list[str]:
    """The cells of a text table's column (the tables are two spaces between columns, text padded to the left)."""
    from chorus_batch.report.summary import HEADINGS

    lines = stdout.splitlines()
    column = HEADINGS.get(column, column)  # (as the tables head it: srcfile is "path")
    header = next(i for i, line in enumerate(lines) if line.startswith(column) or f"  {column}  " in line)
    start = lines[header].index(column)
    rows = [line for line in lines[header + 2:] if line and not line.startswith("... and")]
    return [row[start:].split("  ")[0] for row in rows]


def test_names_that_look_alike_are_told_apart_in_the_text_outputs(tmp_path):
    """`files` showed `OMOP/trail.csv ` and `OMOP/trail.csv` as two identical lines (and a zero-width space, a
    right-to-left override or a decomposed é not at all): a reviewer could not tell which file a line meant nor
    type its name. The tables of files, changes, diff, history and status, and the paths of the run's and
    validation's lines, quote such names with escapes (units.shown_name); JSON and CSV keep them exact."""
    from conftest import cli, write

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "OMOP/gone.csv", b"gone")
    run_site(site, db)
    (site / "OMOP" / "gone.csv").unlink()
    for i, name in enumerate(ODD_NAMES):
        write(site, name, f"{i}\n".encode())
    run_site(site, db)
    first = open_manifest(db).versions()["label"][0]

    def text(*args: str) -> str:
        out = cli(*args, "--db", str(db), timeout=300)
        assert out.returncode in (0, 1), out.stderr
        return out.stdout

    shown = set(ODD_NAMES.values())
    listed = path_cells(text("files"), "srcfile")
    assert len(listed) == len(set(listed)) == len(ODD_NAMES) + 1 and shown <= set(listed), listed
    changed = path_cells(text("changes"), "srcfile")
    assert len(changed) == len(set(changed)) and shown <= set(changed), changed
    diffed = path_cells(text("diff", "--from", first), "srcfile")
    assert len(diffed) == len(set(diffed)) and shown <= set(diffed), diffed
    assert path_cells(text("history", "OMOP/trail.csv "), "srcfile") == ["'OMOP/trail.csv '"]
    assert path_cells(text("history", "OMOP/cafe\u0301.csv"), "srcfile") == ["'OMOP/cafe\\u0301.csv'"]
    validated = text("validate")  # a finding's path, as the table shows it
    assert "'OMOP/trail.csv ': " in validated and "OMOP/trail.csv : " not in validated, validated

    write(site, "OMOP/new\u200b.csv", b"new")
    status = cli("status", "--site", str(site), "--db", str(db), "--all", timeout=300)
    assert "'OMOP/new\\u200b.csv'" in path_cells(status.stdout, "srcfile"), status.stdout

    exact = {row["srcfile"] for row in json.loads(text("files", "--json"))}
    assert set(ODD_NAMES) <= exact  # machine outputs: the names as they are
    assert set(ODD_NAMES) <= set(pl.read_csv(io.StringIO(text("files", "--csv")))["srcfile"])

    report = tmp_path / "r.html"
    assert cli("report", "--db", str(db), "--out", str(report)).returncode == 0
    page = report.read_text(encoding="utf-8")  # a browser hides a trailing space too
    assert "&#39;OMOP/trail.csv &#39;" in page and "OMOP/trail.csv </" not in page


def test_wide_characters_keep_the_text_tables_columns_in_line():
    """A CJK name or an emoji takes two columns of a terminal, but the tables padded by characters: every column
    right of such a name started one column further right per wide character than the header's. Padding is by
    terminal columns (units.text_width), including a number column aligned right."""
    from chorus_batch.report import frame_text
    from chorus_batch.units import text_width

    frame = pl.DataFrame({"srcfile": ["OMOP/患者記録.csv", "Images/🩻scan.dcm", "OMOP/plain.csv"],
                          "modality": ["OMOP", "Images", "OMOP"], "size": [12, 3456, 7],
                          "old_srcfile": ["データ", None, "x"], "md5": ["a" * 32, "b" * 32, "c" * 32]})
    lines = frame_text(frame).splitlines()
    header = lines[0]
    from chorus_batch.report.summary import HEADINGS

    for column in ("modality", "old_srcfile", "md5"):  # where each column starts, in terminal columns
        at = text_width(header[:header.index(HEADINGS.get(column, column))])
        for line, value in zip(lines[2:], frame[column].to_list()):
            if value is not None:
                assert text_width(line[:line.index(f"  {value}") + 2]) == at, (column, lines)
    size_end = text_width(header[:header.index("size") + len("size")])  # numbers end under the header's end
    for line, n in zip(lines[2:], frame["size"].to_list()):
        assert text_width(line[:line.index(f" {n} ") + len(f" {n}")]) == size_end, lines


def test_one_path_far_longer_than_the_others_overflows_its_cell_and_does_not_widen_the_table():
    """`changes` padded every row's path to the longest one: one 220-character path put every size and MD5 two
    screens right and wrapped each line. A name far wider than the others (over 60 columns, and twice the median
    name) now overflows its own cell; the other rows stay as wide as their names need, the long path whole."""
    from chorus_batch.report import frame_text

    long = "000001/Waveforms/" + "/".join(["x" * 40] * 4) + "/" + "y" * 30 + ".dat"
    frame = pl.DataFrame({"change": ["added", "added", "removed", "renamed"],
                          "srcfile": [long, "OMOP/new.csv", "OMOP/person.csv", "Metadata/b.md"],
                          "old_srcfile": [None, None, None, "Metadata/a.md"], "size": [3, 2, 184, 9],
                          "md5": ["a" * 32, "b" * 32, "c" * 32, "d" * 32]})
    lines = frame_text(frame).splitlines()
    assert lines[0] == "change   path             renamed from   size  md5", lines  # (headed in words)
    assert [len(line) for line in lines[1:] if long not in line] == [len(lines[1])] * 4, lines
    assert f"added    {long}  " in lines[2] and lines[2].endswith(" 3  " + "a" * 32), lines
    # names alike in width keep their column however wide it is (DICOM paths of two UIDs: 150 characters each)
    uids = pl.DataFrame({"srcfile": [f"000001/Images/CT/1/2.25.{'1' * 60}/2.25.{n * 60}/001.dcm" for n in "234"],
                         "size": [1, 22, 333]})
    lines = frame_text(uids).splitlines()
    assert {line.index("  ") for line in lines[1:]} == {len(uids["srcfile"][0])}, lines


def test_paths_inside_validation_messages_are_told_apart_too(tmp_path):
    """The findings' own path column was escaped (shown_name), but not the paths their messages embed: `validate`
    and the report said 'its path differs from OMOP/café.csv' of a decomposed é (the composed one's twin on
    screen), 'from OMOP/nb .csv' of a no-break space, and wrote a right-to-left override raw, which reverses
    the rest of the line. Messages are now escaped where they stand (units.shown_text); JSON keeps them exact."""
    from conftest import cli, write

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    odd = {"OMOP/cafe\u0301.csv": "OMOP/cafe\\u0301.csv", "OMOP/nb\u00a0.csv": "OMOP/nb\\xa0.csv",
           "OMOP/x\u202evsc.csv": "OMOP/x\\u202evsc.csv", "OMOP/z\u200bw.csv": "OMOP/z\\u200bw.csv"}
    for i, name in enumerate(odd):  # each with a twin in other letter case or form: file.name_clash names it
        write(site, name, f"{i}\n".encode())
        write(site, "OMOP/Caf\u00e9.csv" if "cafe" in name else "OMOP/" + name[5:].upper(), f"{i}b\n".encode())
    run_site(site, db)
    raw = ("\u0301", "\u00a0", "\u202e", "\u200b")

    out = cli("validate", "--db", str(db), timeout=300)
    assert out.returncode == 1, out.stderr
    said = [line for line in out.stdout.splitlines() if "differs from" in line]
    assert said and not any(c in line for line in said for c in raw), said
    for escaped in odd.values():
        assert any(f"differs from {escaped} only" in line for line in said), (escaped, said)

    report = tmp_path / "r.html"
    assert cli("report", "--db", str(db), "--out", str(report)).returncode == 0
    page = report.read_text(encoding="utf-8")
    assert not any(c in page for c in raw), [c for c in raw if c in page]
    assert "differs from OMOP/cafe\\u0301.csv only" in page

    exact = json.loads(cli("validate", "--db", str(db), "--json", timeout=300).stdout)["findings"]
    messages = " ".join(f["message"] for f in exact)
    assert all(name in messages for name in ("OMOP/cafe\u0301.csv", "OMOP/nb\u00a0.csv"))  # machine output: exact


def test_a_name_copied_as_the_tables_show_it_is_found(tmp_path):
    """`history "'OMOP/new\\nline.csv'"` -- the path copied from `files`, which quotes a name with a line break,
    tab or look-alike character -- said "no file ... give the site-relative path as `chorus-batch files` prints
    it", and `files --path` / `changes --path` with it listed nothing. A path is also read as the name the text
    tables show that way (units.shown_name, inverted exactly); a name as typed still comes first."""
    from conftest import cli, write

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    names = [*ODD_NAMES, "OMOP/person.csv", "OMOP/new\nline.csv", "OMOP/back\\slash\t.csv"]
    for i, name in enumerate(names):
        write(site, name, f"{i}\n".encode())
    run_site(site, db)
    reader = open_manifest(db)
    from chorus_batch.units import shown_name

    for name in names:
        copied = shown_name(name)
        assert reader.history_of(copied)["srcfile"].to_list() == [name], (name, copied)
        assert reader.rows_under(reader.files(), copied)["srcfile"].to_list() == [name], (name, copied)
    out = cli("history", shown_name("OMOP/new\nline.csv"), "--db", str(db), "--json")
    assert out.returncode == 0 and [r["srcfile"] for r in json.loads(out.stdout)] == ["OMOP/new\nline.csv"], out.stderr
    out = cli("files", "--path", shown_name("OMOP/tab\tname.csv"), "--db", str(db), "--json")
    assert out.returncode == 0 and [r["srcfile"] for r in json.loads(out.stdout)] == ["OMOP/tab\tname.csv"], out.stderr
    # what is not a table's quoted form is no name: a quoted text that the tables would show otherwise
    assert reader.history_of("'OMOP/person.csv'").height == 0


# Names a spreadsheet would run as formulas (CSV injection), one that only looks quoted already, and harmless ones.
FORMULA_NAMES = ['=HYPERLINK("http:__x","y")', "+cmd", "-1+1", "@SUM(1,2)", "'=already", "OMOP/=mid.csv"]


def test_csv_on_standard_output_is_utf8_whatever_its_encoding(tmp_path):
    """On Windows, Python writes redirected standard output in the ANSI code page (cp1252): `files --csv > files.csv`
    wrote a name outside it with escapes (OMOP/note_\\u4e2d.csv), a path the site does not hold. CSV is data, in UTF-8
    as `registry --out` writes it; the table for people keeps the stream's escapes."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    (site / "OMOP").mkdir(parents=True)
    (site / "OMOP" / "note_\u4e2d\u6587_\u00e9.csv").write_bytes(b"x\n")
    assert run_site(site, db).n_files == 1
    windows = {**os.environ, "PYTHONIOENCODING": "cp1252"}  # what a redirect gives on Windows
    for command in (["files", "--csv"], ["changes", "--csv"], ["status", "--site", str(site), "--csv"]):
        out = subprocess.run([sys.executable, "-m", "chorus_batch", *command, "--db", str(db)], capture_output=True,
                             env=windows, timeout=120)
        assert out.returncode in (0, 1) and b"Traceback" not in out.stderr, out.stderr.decode()  # (1: findings)
        if command[0] != "status":  # (nothing would change: its CSV is the header)
            assert "OMOP/note_\u4e2d\u6587_\u00e9.csv".encode() in out.stdout and b"\\u4e2d" not in out.stdout, command
    table = subprocess.run([sys.executable, "-m", "chorus_batch", "files", "--db", str(db)], capture_output=True,
                           env=windows, timeout=120)
    assert b"note_\\u4e2d\\u6587_\xe9.csv" in table.stdout  # (cp1252 holds the e-acute)


def test_a_page_a_script_or_a_config_on_standard_output_is_utf8_whatever_its_encoding(tmp_path):
    """What `> file` keeps of `report --out -`, `upload --script`, `slurm-script` and `import-config` is a file, in
    UTF-8 as --out writes one. On Windows, Python writes redirected output in the ANSI code page (cp1252): the page,
    which says it is UTF-8, had its dashes as cp1252 bytes and log\u2081\u2080 as the text "\\u2081\\u2080"; the
    script named note_\u4e2d\u6587_\u00e9.csv as note_\\u4e2d\\u6587_ and a cp1252 byte (a file not there: never
    sent); the converted chorus.toml held its site folder in cp1252. Standard output is made here as Windows makes
    it (PYTHONIOENCODING=cp1252); the scripts' line ends are test_upload's."""
    import base64

    name = "OMOP/note_\u4e2d\u6587_\u00e9.csv"
    site, db = tmp_path / "sit\u00e9", tmp_path / "m.sqlite"
    (site / "OMOP").mkdir(parents=True)
    (site / name).write_bytes(b"x\n")
    assert run_site(site, db).n_files == 1
    key = base64.b64encode(b"not a real key").decode()
    windows = {**{k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}, "PYTHONIOENCODING": "cp1252",
               "AZURE_STORAGE_CONNECTION_STRING": f"AccountName=mgh;AccountKey={key};EndpointSuffix=core.windows.net"}
    (tmp_path / "up.toml").write_text('[site_path.default]\npath = "/data/donn\u00e9es/\u4e2d\u6587"\n', encoding="utf-8")

    def stdout(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", *args], capture_output=True, env=windows,
                             cwd=tmp_path, timeout=120)
        assert out.returncode in (0, 1) and b"Traceback" not in out.stderr, (args, out.stderr.decode())  # (1: warnings)
        return out.stdout.decode("utf-8")  # (strict: a cp1252 byte fails here)

    page = stdout("report", "--db", str(db), "--out", "-")
    assert "log\u2081\u2080" in page and "\\u2081" not in page
    for kind in ("bash", "azcopy"):
        script = stdout("upload", "--db", str(db), "--to", "az://central/", "--script", kind)
        assert f"{site}/{name}" in script and "\\u4e2d" not in script, script
    assert str(site) in stdout("slurm-script", "--site", str(site), "--db", str(db))
    config = stdout("import-config", "up.toml")
    assert tomllib.loads(config)["site"]["root"] == "/data/donn\u00e9es/\u4e2d\u6587", config


def test_json_on_standard_output_is_utf8_json_whatever_its_encoding(tmp_path):
    """A Windows redirect writes the ANSI code page (cp1252, made here with PYTHONIOENCODING), which holds \u00e9:
    `files --json > files.json` wrote it as the byte 0xE9, and so did `validate --explain --json` its rules' text:
    JSON that a reader (UTF-8, RFC 8259) refuses. Written with JSON's own escapes, it reads back exactly."""
    name = "OMOP/r\u00e9sum\u00e9.csv"
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    (site / "OMOP").mkdir(parents=True)
    (site / name).write_bytes(b"x\n")
    assert run_site(site, db).n_files == 1
    windows = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    for command in (["files", "--json", "--db", str(db)], ["changes", "--json", "--db", str(db)],
                    ["validate", "--explain", "file.name_clash", "--json"]):
        out = subprocess.run([sys.executable, "-m", "chorus_batch", *command], capture_output=True, env=windows,
                             timeout=120)
        assert out.returncode == 0, out.stderr.decode()
        read = json.loads(out.stdout.decode("utf-8"))  # (strict: a cp1252 byte fails here)
        if command[0] == "validate":
            assert "\u00e9" in read[0]["checks"], read
        else:
            assert [row["srcfile"] for row in read] == [name], read


def test_csv_outputs_do_not_hand_a_spreadsheet_a_formula(tmp_path):
    """`files --csv > files.csv` wrote a file named `=HYPERLINK(...)`, `+cmd`, `-1+1` or `@SUM(..)` as it is: opened
    in a spreadsheet, the reviewer's cell was a formula (a link that sends data away, a command). Every --csv
    (files, changes, diff, history, status) now writes such a text cell with a ' in front (OWASP), which the
    spreadsheet shows as text; stderr says so and points to --json; a program gets the names back exactly with
    report.spreadsheet.unquote. Numbers are written as they are."""
    from conftest import cli, write

    from chorus_batch.report.spreadsheet import unquote

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    run_site(site, db)
    for i, name in enumerate(FORMULA_NAMES):
        write(site, name, f"{i}\n".encode())
    run_site(site, db)
    first = open_manifest(db).versions()["label"][0]

    def csv_of(*args: str) -> pl.DataFrame:
        out = cli(*args, "--csv", timeout=300)
        assert out.returncode in (0, 1), out.stderr
        assert re.search(r"\d cells? starts? with =, \+, -, @", out.stderr) and "--json gives every name exactly" in out.stderr, out.stderr
        frame = pl.read_csv(io.StringIO(out.stdout), infer_schema=False)
        cells = [c for column in frame.columns for c in frame[column].drop_nulls().to_list()]
        assert not [c for c in cells if c[0] in "=+-@\t\r"], cells  # no cell a spreadsheet runs
        return unquote(frame)

    for args in (["files"], ["changes"], ["diff", "--from", first]):
        frame = csv_of(*args, "--db", str(db))
        assert set(FORMULA_NAMES) <= set(frame["srcfile"]), (args, frame["srcfile"].to_list())
        assert "'+cmd" not in set(frame["srcfile"])  # unquoted: the exact names
    write(site, "-pending", b"p")  # what a run would commit
    assert csv_of("status", "--site", str(site), "--db", str(db), "-q")["srcfile"].to_list() == ["-pending"]
    (site / "-pending").unlink()
    raw = pl.read_csv(io.StringIO(cli("files", "--db", str(db), "--csv").stdout), infer_schema=False)
    assert {"'=HYPERLINK(\"http:__x\",\"y\")", "'+cmd", "'-1+1", "'@SUM(1,2)", "''=already",
            "OMOP/=mid.csv", "OMOP/person.csv"} <= set(raw["srcfile"])
    assert raw["size"].to_list() == [str(s) for s in open_manifest(db).files()["size"].to_list()]  # numbers as they are
    history = csv_of("history", "+cmd", "--db", str(db))
    assert history["srcfile"].to_list() == ["+cmd"]
    quiet = cli("files", "--db", str(db), "--csv", "--path", "OMOP/person.csv")  # nothing quoted: nothing said
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    exact = {row["srcfile"] for row in json.loads(cli("files", "--db", str(db), "--json").stdout)}
    assert set(FORMULA_NAMES) <= exact  # JSON: as they are


def test_the_spreadsheet_quoting_reads_back_exactly():
    """Quoting for spreadsheets must lose nothing a program reads: protect then unquote gives every text cell back
    (a name that begins with quotes too), and leaves numbers and nulls alone."""
    from chorus_batch.report.spreadsheet import protect, unquote

    names = ["=a", "'=a", "''=a", "'a", "''", "'", "a=b", "-", "\t", "\rx", "@", "+", None, "", "OMOP/x.csv", "'-1"]
    frame = pl.DataFrame({"srcfile": names, "size": list(range(-8, 8))})
    safe, quoted = protect(frame)
    assert quoted == 9
    assert not [c for c in safe["srcfile"].drop_nulls() if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert safe["size"].to_list() == frame["size"].to_list()
    assert unquote(pl.read_csv(io.StringIO(safe.write_csv()), schema=frame.schema)).equals(frame)


@pytest.mark.parametrize("command", [["files", "--md5sum"], ["changes", "--md5sum"], ["diff", "--from", "FIRST", "--md5sum"],
                                     ["files", "--csv"], ["files", "--json"], ["versions"]])
def test_an_output_to_a_full_disk_is_said_as_such(manifest, command):
    """`files --md5sum > /dev/full` (a full disk) was "internal error: OSError: [Errno 28] No space left on device
    ... report it": the checksum lines are bytes, written past the guarded standard output. Every output now says
    that it could not be written, where, and what to do, exit 3."""
    first = open_manifest(manifest).versions()["label"][0]
    args = [first if word == "FIRST" else word for word in command] + ["--db", str(manifest)]
    with open("/dev/full", "w") as full, open(os.devnull, "rb") as stdin, tempfile.TemporaryFile() as said:
        # a fork of the pre-imported zygote writing to /dev/full (a fresh python where the zygote cannot run it)
        started = zygote.start(args, os.getcwd(), dict(os.environ), [stdin.fileno(), full.fileno(), said.fileno()])
        if started is not None:
            code = started.wait(120)
        else:
            code = subprocess.run([sys.executable, "-m", "chorus_batch", *args], stdout=full, stderr=said,
                                  timeout=120).returncode
        said.seek(0)
        stderr = said.read().decode()
    assert code == 3, stderr
    assert "could not write the output to standard output (No space left on device)" in stderr, stderr
    assert "internal error" not in stderr and "fix:" in stderr


@pytest.mark.parametrize("command", [["report", "--out", "OUT/r.html"], ["registry", "--out", "OUT/reg"]])
def test_an_output_file_on_a_full_disk_is_a_failure_not_bad_usage(manifest, small_disk, command):
    """`report --out` (any --out) on a full disk exited 2, 'bad usage or configuration', while a full disk under the
    manifest or standard output is exit 3: the command line was right, the machine failed. Now exit 3 everywhere,
    with the OS's reason, the file and the fix; nothing half-written is left."""
    from conftest import fill

    filler = fill(small_disk)
    try:
        args = [word.replace("OUT", str(small_disk)) for word in command]
        out = cli(*args, "--db", str(manifest), timeout=300)
    finally:
        filler.unlink()
    assert out.returncode == 3, out.stderr
    assert "No space left on device" in out.stderr and "free some space" in out.stderr, out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert sorted(p.name for p in small_disk.iterdir()) in ([], ["reg"]), list(small_disk.iterdir())


def test_a_reader_waits_for_a_lock_as_a_commit_holds_it(manifest):
    """A notebook's reader (and `versions`, `files`, `report`) that asked while a run committed failed now and then at
    once, exit 3, "the manifest is busy: Failed to prepare query: database is locked": their ADBC connection had no
    busy timeout (sqlite3's waits 30 s), and a WAL manifest is locked for a moment as a run's last connection folds
    the -wal into it. Held here for 2 s, after the reader has opened the manifest."""
    reader = open_manifest(manifest)
    latest = reader.latest()
    # (another process: SQLite's locks are POSIX locks, which a process's own connections do not meet)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"con = sqlite3.connect({str(manifest)!r}, timeout=30)\n"
        "con.execute('PRAGMA locking_mode = EXCLUSIVE'); con.execute('BEGIN EXCLUSIVE')\n"
        "con.execute('SELECT count(*) FROM versions').fetchone()\n"
        "print('held', flush=True); time.sleep(2); con.rollback(); con.close()\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        files = reader.files(latest)
    finally:
        holder.wait(30)
    assert files.height > 0


@pytest.mark.parametrize("command", [["validate", "--json"], ["files", "--md5sum"]])
def test_a_reader_that_leaves_keeps_the_exit_code_of_findings(tmp_path, command):
    """`validate --json | head -1` on a version with errors ended 0 (1 when the whole list was read): the exit code
    was decided after the output, which the closed pipe cut short, and main fell back to success. A script under
    `set -o pipefail` (or reading PIPESTATUS) took a site with errors for a clean one. `files --md5sum` alike,
    with files that have no MD5 (unverifiable)."""
    make_testdata(tmp_path / "td", Spec(persons=60, files_per_person=40, size=16))
    site, db = tmp_path / "td" / "first", tmp_path / "m.sqlite"
    for dat in site.rglob("*.dat"):  # truncated records: wfdb.dat_size errors, one a record
        dat.write_bytes(b"x")
    run_site(site, db)
    if command[-1] == "--md5sum":
        con = sqlite3.connect(db)
        with con:  # as `--cloud-md5 stored-only` records an object without an MD5
            con.execute("UPDATE source_files SET md5 = NULL, md5_source = 'unverifiable' WHERE file_id = "
                        "(SELECT max(file_id) FROM source_files)")
        con.close()
    args = [*command, "--db", str(db)]
    full = cli(*args)
    assert full.returncode == 1, full.stderr
    assert len(full.stdout.encode()) > 128 * 1024, len(full.stdout)  # more than a pipe holds: the reader leaves mid-output
    code, err = first_line_then_leave(args, unbuffered=False)
    assert code == 1, err
