"""`chorus-batch registry`: the linkage registries, checked against an independent computation
(pydicom, wfdb and the csv module on the site's files), stable ids across versions, proc_id ranges."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import sitegen
from conftest import cli, paused, query
from sitegen import write

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def expected_time(site: Path, rel: str) -> datetime | None:
    """The capture time by the procedure, computed with pydicom / wfdb directly."""
    import pydicom
    import wfdb

    path = site / rel
    if rel.endswith(".dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pairs = (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                 ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime"))
        for day, tm in pairs:  # a date with its time first; a date alone only where no pair has both
            if ds.get(day) and ds.get(tm):
                return datetime.strptime(ds.get(day) + str(ds.get(tm))[:6].ljust(6, "0"), "%Y%m%d%H%M%S")
        for day, _ in pairs:
            if ds.get(day):
                return datetime.strptime(ds.get(day), "%Y%m%d")
        return None
    session = path.parent.name
    header = wfdb.rdheader(str(path.parent / session))
    if header.base_date is None or header.base_time is None:
        return None
    return datetime.combine(header.base_date, header.base_time)


def delivered(site: Path, row: dict[str, str]) -> str:
    """The site-relative path of a registry row's file: trg_file (waveforms), or src_file below the site (images:
    the Imaging SOP leaves trg_file blank, "populated centrally")."""
    if row["trg_file"]:
        return row["trg_file"]
    prefix = f"{site.as_posix()}/"
    assert row["src_file"].startswith(prefix), row
    return row["src_file"][len(prefix):]


def expected_visit(site: Path, person: str, when: datetime | None) -> str:
    if when is None:
        return ""
    hits = []
    for row in read_csv(site / "OMOP" / "visit_occurrence.csv"):
        start = datetime.fromisoformat(row["visit_start_datetime"])
        end = datetime.fromisoformat(row["visit_end_datetime"])
        if int(row["person_id"]) == int(person) and start <= when <= end:
            hits.append((start, row["visit_occurrence_id"]))
    return max(hits)[1] if hits else ""


_CLEAN_SITES: dict[int, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _clean_site_templates(tmp_path_factory):
    """Where clean_site keeps the sites it built for this module."""
    _CLEAN_SITES.clear()
    _CLEAN_SITES[0] = tmp_path_factory.mktemp("clean-sites")
    yield
    _CLEAN_SITES.clear()


def clean_site(root: Path, persons: int = 3) -> None:
    """sitegen.build_clean_site(root, persons), which writes the same bytes each time: built once per module and
    copied (the copies' files written now, as a build would)."""
    import shutil

    if persons not in _CLEAN_SITES:
        _CLEAN_SITES[persons] = _CLEAN_SITES[0] / str(persons)
        sitegen.build_clean_site(_CLEAN_SITES[persons], persons=persons)
    shutil.copytree(_CLEAN_SITES[persons], root, copy_function=shutil.copy, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def released_once(tmp_path_factory) -> Path:
    """The clean site, its run and its registries (--omop), made once for the module: `released` copies them."""
    base = tmp_path_factory.mktemp("released")
    site, db, out = base / "site", base / "m.sqlite", base / "release"
    clean_site(site)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 0, done.stderr
    return base


@pytest.fixture
def released(released_once: Path, tmp_path: Path):
    """A test's own copy of `released_once` in its tmp_path, as if run and registered there: the root the manifest
    records and the registries' src_file name the copy (the files keep their mtimes, which the manifest records)."""
    import shutil
    import sqlite3

    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    shutil.copytree(released_once / "site", site)
    shutil.copytree(released_once / "release", out)
    for manifest in released_once.glob("m.sqlite*"):
        shutil.copy2(manifest, tmp_path / manifest.name)
    old, new = f"{released_once}/", f"{tmp_path}/"
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE roots SET location = replace(location, ?, ?)", (old, new))
        con.execute("UPDATE versions SET site = replace(site, ?, ?)", (old, new))
        con.execute("UPDATE runs SET argv = replace(argv, ?, ?), site = replace(site, ?, ?)", (old, new, old, new))
    con.close()
    for registry in out.iterdir():
        registry.write_bytes(registry.read_bytes().replace(old.encode(), new.encode()))
    return site, db, out


def test_one_row_per_file_with_the_visit_its_capture_time_falls_in(released):
    site, _db, out = released
    waveforms, images = read_csv(out / "waveform_registry.csv"), read_csv(out / "image_registry.csv")
    files = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert sorted(r["trg_file"] for r in waveforms) == sorted(f for f in files if "/Waveforms/" in f)
    # the Imaging SOP's image_registry: "trg_file ... this will be populated centrally, leave blank or null"
    assert {r["trg_file"] for r in images} == {""}
    assert sorted(delivered(site, r) for r in images) == sorted(f for f in files if "/Images/" in f)
    assert list(images[0]) == ["image_registry_id", *sitegen_columns()]
    assert list(waveforms[0]) == sitegen_columns()
    visited = 0
    for row in waveforms + images:
        when = expected_time(site, delivered(site, row))
        assert row["datetime"] == (f"{when:%Y-%m-%d %H:%M:%S}" if when else ""), row
        assert row["visit_id"] == expected_visit(site, row["person_id"], when), row
        assert row["src_file"] == f"{site.as_posix()}/{delivered(site, row)}"
        assert row["person_id"] == delivered(site, row).split("/")[0]
        visited += bool(row["visit_id"])
    assert visited and visited < len(waveforms) + len(images)  # the multi-segment records start between visits
    assert len({r["file_id"] for r in waveforms + images}) == len(waveforms) + len(images)


def sitegen_columns() -> list[str]:
    return ["file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime", "src_file", "trg_file"]


def test_a_proc_id_per_session_or_accession_in_its_range(released):
    _site, _db, out = released
    waveforms, images = read_csv(out / "waveform_registry.csv"), read_csv(out / "image_registry.csv")
    for rows, (first, last) in ((images, (2_000_000_000, 2_000_999_999)), (waveforms, (2_001_000_000, 2_999_999_999))):
        groups: dict[tuple[str, str], set[str]] = {}
        for r in rows:
            # a waveform session is its folder; an image accession spans its series folders
            group = r["group_id"] if not r["trg_file"] else r["trg_file"].rsplit("/", 1)[0]
            groups.setdefault((r["person_id"], group), set()).add(r["proc_id"])
            assert first <= int(r["proc_id"]) <= last
        assert all(len(ids) == 1 for ids in groups.values())
        assert len({next(iter(ids)) for ids in groups.values()}) == len(groups)
    procedures = read_csv(out / "procedure_occurrence.csv")
    assert len(procedures) == len({r["proc_id"] for r in waveforms + images})
    assert {r["procedure_concept_id"] for r in procedures} == {"4180938", "4141651"}
    assert all(r["procedure_source_value"].startswith("path: ") and ", group: " in r["procedure_source_value"]
               for r in procedures)


def test_a_procedures_source_value_names_its_session_or_accession_folder(released):
    """An accession of two series gave procedure_source_value 'path: <the first series folder>': the procedure's
    files were not all under the path it named. The path is now the session's or accession's folder."""
    site, _db, out = released
    rows = read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")
    folders: dict[str, set[str]] = {}
    for r in rows:
        folders.setdefault(r["proc_id"], set()).add(delivered(site, r).rsplit("/", 1)[0])
    assert any(len(f) > 1 for f in folders.values())  # an accession with more than one series folder
    for row in read_csv(out / "procedure_occurrence.csv"):
        group = next(r["group_id"] for r in rows if r["proc_id"] == row["procedure_occurrence_id"])
        parts = min(folders[row["procedure_occurrence_id"]]).split("/")
        folder = "/".join(parts[:parts.index(group, 1) + 1])
        assert all(f == folder or f.startswith(folder + "/") for f in folders[row["procedure_occurrence_id"]])
        assert row["procedure_source_value"] == f"path: {folder}, group: {group}", row


def test_a_procedures_visit_is_that_of_its_earliest_capture(tmp_path):
    """An accession whose series fall in two visits got the visit of its first file by path (a later series, its
    folder's UID sorting first), not that of its earliest capture, as the procedure's date and time are."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    assert cli("registry", "--db", str(db), "--out", str(out)).returncode == 0
    rows = read_csv(out / "image_registry.csv")
    # an accession whose first file by path was captured after another of its files
    first = next(r for r in rows if min(x["datetime"] for x in rows if x["proc_id"] == r["proc_id"]) < r["datetime"]
                 and r is next(x for x in rows if x["proc_id"] == r["proc_id"]))
    later = datetime.strptime(first["datetime"], "%Y-%m-%d %H:%M:%S")
    # a visit of that person from just before the later capture: the later files' visit (the latest-starting one)
    with (site / "OMOP" / "visit_occurrence.csv").open("a") as f:
        f.write(f"999999,{first['person_id']},9201,{later:%Y-%m-%d},{later.replace(second=0, minute=later.minute - 1)},"
                f"{later:%Y-%m-%d},{later.replace(minute=later.minute + 5)},32817\n")
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    assert cli("registry", "--db", str(db), "--out", str(out), "--omop").returncode == 0
    rows = [r for r in read_csv(out / "image_registry.csv") if r["proc_id"] == first["proc_id"]]
    assert {r["visit_id"] for r in rows} == {"999999", min(rows, key=lambda r: r["datetime"])["visit_id"]} != {"999999"}
    procedure = next(p for p in read_csv(out / "procedure_occurrence.csv") if p["procedure_occurrence_id"] == first["proc_id"])
    earliest = min(rows, key=lambda r: r["datetime"])
    assert (procedure["procedure_datetime"], procedure["visit_occurrence_id"]) == (earliest["datetime"], earliest["visit_id"])


def test_ids_are_stable_across_versions(released, tmp_path):
    site, db, out = released
    before = {r["trg_file"]: (r["file_id"], r["proc_id"]) for r in read_csv(out / "waveform_registry.csv")}
    p0 = sitegen.person_ids(1)[0]
    single = sitegen.sessions_of(p0, 0)["single"]
    numerics = f"{p0}/Waveforms/Telemetry/{single}/{single}n.csv"
    write(site, numerics, "time_s,HR\n0,77\n")  # replaced: same path, new content
    write(site, f"{p0}/Waveforms/Telemetry/900777/900777.edf", sitegen.edf_bytes(None))
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    again = tmp_path / "again"
    done = cli("registry", "--db", str(db), "--out", str(again))
    # (exit 1: the EDF session's header is de-identified, "Startdate X": its rows have no capture time, which is warned of)
    assert done.returncode == 1 and "900777/" in done.stderr and "no capture time" in done.stderr, done.stderr
    after = {r["trg_file"]: (r["file_id"], r["proc_id"]) for r in read_csv(again / "waveform_registry.csv")}
    assert {k: v for k, v in after.items() if k in before} == before  # the replaced file too
    new = after[f"{p0}/Waveforms/Telemetry/900777/900777.edf"]
    assert int(new[1]) > max(int(v[1]) for v in before.values())
    # and the first version's registries are still the same when asked for again
    labels = [r[0] for r in query(db, "SELECT label FROM versions ORDER BY label")]
    old = tmp_path / "old"
    assert cli("registry", "--db", str(db), "--out", str(old), "--version", labels[0]).returncode == 0
    assert {r["trg_file"]: (r["file_id"], r["proc_id"]) for r in read_csv(old / "waveform_registry.csv")} == before


def test_a_header_written_since_its_version_is_not_read_as_that_versions(tmp_path):
    """The registries read headers the manifest had no facts of (a run with --no-validate) without the size and mtime
    the version recorded: a DICOM written since gave that version's row the new content's capture time (and visit),
    cached under the recorded MD5 for good, so the registry of that version said so ever after. Now such a file's
    header is not read: its datetime comes from the path (none here: empty), the command says so and exits 1."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    dicoms = sorted(site.rglob("*.dcm"))
    first = next(p for p in dicoms if expected_time(site, p.relative_to(site).as_posix()) is not None)
    other = next(p for p in dicoms if expected_time(site, p.relative_to(site).as_posix())
                 not in (None, expected_time(site, first.relative_to(site).as_posix())))
    rel = first.relative_to(site).as_posix()
    recorded = expected_time(site, rel)
    first.write_bytes(other.read_bytes())  # written after the version: another capture time
    later = expected_time(site, rel)
    assert later != recorded

    def row(out: Path) -> dict[str, str]:
        return next(r for r in read_csv(out / "image_registry.csv") if delivered(site, r) == rel)

    done = cli("registry", "--db", str(db), "--out", str(tmp_path / "now"))
    assert done.returncode == 1, done.stderr
    assert "no longer as it recorded them" in done.stderr and rel in done.stderr and "chorus-batch run" in done.stderr
    assert row(tmp_path / "now")["datetime"] != f"{later:%Y-%m-%d %H:%M:%S}"
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    labels = [r[0] for r in query(db, "SELECT label FROM versions ORDER BY label")]
    old = cli("registry", "--db", str(db), "--out", str(tmp_path / "old"), "--version", labels[0])
    assert old.returncode == 1 and rel in old.stderr
    assert row(tmp_path / "old")["datetime"] != f"{later:%Y-%m-%d %H:%M:%S}"
    latest = cli("registry", "--db", str(db), "--out", str(tmp_path / "latest"))
    assert latest.returncode == 0, latest.stderr
    assert row(tmp_path / "latest")["datetime"] == f"{later:%Y-%m-%d %H:%M:%S}"


@pytest.mark.parametrize("form", ["midnight", "us", "compact"])
def test_visits_whose_dates_are_written_otherwise_are_read_or_told(tmp_path, form):
    """visit_occurrence.csv with its dates as a database export writes a DATE column (2020-01-01 00:00:00) and no
    datetimes gave every file an empty visit_id, exit 0, without a word; so did dates in another form (01/01/2020,
    20200101). The first are that day; the others are told (exit 1), naming a visit and its dates as written."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    visits = site / "OMOP" / "visit_occurrence.csv"
    day = {"midnight": lambda d: f"{d} 00:00:00", "us": lambda d: f"{d[5:7]}/{d[8:10]}/{d[:4]}",
           "compact": lambda d: d.replace("-", "")}[form]
    rows = read_csv(visits)
    with visits.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            starts, ends = row["visit_start_datetime"], row["visit_end_datetime"]
            w.writerow({**row, "visit_start_datetime": "", "visit_end_datetime": "",
                        "visit_start_date": day(starts[:10]), "visit_end_date": day(ends[:10])})
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out))
    given = [r["visit_id"] for r in read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")]
    if form == "midnight":
        assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
        assert any(given), given
    else:
        assert done.returncode == 1, done.stderr
        assert "visit_occurrence.csv" in done.stderr and "not a date (yyyy-mm-dd)" in done.stderr, done.stderr
        assert f"start {day(rows[0]['visit_start_datetime'][:10])!r}" in done.stderr or "e.g. visit" in done.stderr
        assert not any(given), given


def test_visit_datetimes_written_to_the_minute_are_read_as_that_minute(tmp_path):
    """visit_occurrence.csv with its datetimes to the minute (2024-01-01 13:00, as a spreadsheet saves them): each was
    read as no datetime and its visit as the whole day, so a file captured at 14:00 took the morning visit (00:00 to
    12:00, the smaller id of two whole days) and one captured between the visits took one too, exit 0, without a
    word. The Multimodal-Linkage procedure asks for the visit that overlaps the capture time: read to the minute."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    visits = site / "OMOP" / "visit_occurrence.csv"
    with_seconds = visits.read_text()
    to_minute = "\n".join(",".join(cell[:16] if len(cell) == 19 and cell[10] == " " else cell for cell in line.split(","))
                           for line in with_seconds.splitlines()) + "\n"
    assert "13:00," in to_minute and "13:00:00" not in to_minute
    visits.write_text(to_minute)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 0, done.stderr
    visits.write_text(with_seconds)  # (the expected visits, computed from the table with its seconds)
    written = read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")
    assert written and any(r["visit_id"] for r in written) and any(not r["visit_id"] for r in written)
    for r in written:
        assert r["visit_id"] == expected_visit(site, r["person_id"], datetime.fromisoformat(r["datetime"])), r


def test_ids_the_omop_tables_write_as_decimals_are_read_as_integers(tmp_path):
    """visit_occurrence.csv and procedure_occurrence.csv written by pandas from id columns with empty cells (1.0 for
    1): no visit matched a person (every visit_id empty, exit 0, without a word), and a procedure_occurrence_id
    2001000003.0 in the waveform range was not seen, so the registry gave that id to a session of files."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    visits = site / "OMOP" / "visit_occurrence.csv"
    rows = read_csv(visits)
    with visits.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**row, "visit_occurrence_id": f"{int(row['visit_occurrence_id'])}.0",
                     "person_id": f"{int(row['person_id'])}.0"} for row in rows)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 0, done.stderr
    given = {r["visit_id"] for r in read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")}
    assert given - {""} and given <= {"", *(str(int(r["visit_occurrence_id"])) for r in rows)}, given
    with (site / "OMOP" / "procedure_occurrence.csv").open("a") as f:
        f.write("2001999999.0,1,4000,2020-01-01,32817,\n")
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    again = cli("registry", "--db", str(db), "--out", str(tmp_path / "again"))
    assert again.returncode == 2 and "already uses ids in the waveform registry range" in again.stderr, again.stderr


def test_an_older_versions_registry_says_the_visit_table_is_no_longer_that_versions(tmp_path):
    """The registry of an earlier version took its visits from OMOP/visit_occurrence.csv as it is now, without a word:
    a visit removed since left that version's rows without it. The table is still read as it is (the version's content
    is no longer on the site), but the command says so and exits 1; a table only touched since is read as recorded."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    visits = site / "OMOP" / "visit_occurrence.csv"
    text = visits.read_text()
    os.utime(visits, ns=(1, 1))  # a copy that kept the content, not the mtime
    first = cli("registry", "--db", str(db), "--out", str(tmp_path / "same"))
    assert first.returncode == 0 and "warning" not in first.stderr, first.stderr
    visits.write_text("".join(text.splitlines(keepends=True)[:2]))  # the other visits removed
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    labels = [r[0] for r in query(db, "SELECT label FROM versions ORDER BY label")]
    old = cli("registry", "--db", str(db), "--out", str(tmp_path / "old"), "--version", labels[0])
    assert old.returncode == 1, old.stderr
    assert "OMOP/visit_occurrence.csv is no longer as version " + labels[0] in old.stderr
    latest = cli("registry", "--db", str(db), "--out", str(tmp_path / "latest"))
    assert latest.returncode == 0 and "warning" not in latest.stderr, latest.stderr


def test_files_of_the_image_and_waveform_folders_that_fit_no_layout_are_told_not_left_out_silently(released, tmp_path):
    """The linkage procedure asks for a row per file; a DICOM outside its series folder or a signal file named by no
    session has no accession or session (no group_id, no proc_id) and got no row, while registry exited 0 as though the
    registries listed every file. They are still left out, but the command names them and exits 1."""
    site, db, _out = released
    p0 = sitegen.person_ids(1)[0]
    single = sitegen.sessions_of(p0, 0)["single"]
    dicom = next((site / p0 / "Images").rglob("*.dcm"))
    loose = dicom.parent.parent / "loose.dcm"  # in the accession folder, not in a series folder
    loose.write_bytes(dicom.read_bytes())
    write(site, f"{p0}/Waveforms/Telemetry/{single}/other.dat", b"\0" * 16)  # named by no session
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(tmp_path / "again"))
    assert done.returncode == 1, done.stderr
    assert "2 waveform or image files" in done.stderr and "no row in the registries" in done.stderr
    assert loose.relative_to(site).as_posix() in done.stderr and f"Telemetry/{single}/other.dat" in done.stderr
    listed = {delivered(site, r) for r in read_csv(tmp_path / "again" / "image_registry.csv")}
    assert dicom.relative_to(site).as_posix() in listed and loose.relative_to(site).as_posix() not in listed


def test_a_file_name_with_control_characters_is_shown_escaped_in_the_warnings(released, tmp_path):
    """The warnings named the site's files as they are: a file named with an escape sequence (ESC ]0;... BEL) retitled
    the terminal of whoever ran `registry`, and a line break in a name split the warning. They are shown escaped, as
    every other text output shows them; the registries themselves keep the names exact."""
    site, db, _out = released
    p0 = sitegen.person_ids(1)[0]
    single = sitegen.sessions_of(p0, 0)["single"]
    write(site, f"{p0}/Waveforms/Telemetry/{single}/\x1b]0;pwned\x07.dat", b"\0" * 16)
    write(site, f"{p0}/Waveforms/Telemetry/{single}/line\nbreak.dat", b"\0" * 16)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(tmp_path / "again"))
    assert done.returncode == 1, done.stderr
    assert "no row in the registries" in done.stderr
    assert "\x1b" not in done.stderr and "\x07" not in done.stderr and "line\nbreak" not in done.stderr
    assert "\\x1b]0;pwned\\x07.dat" in done.stderr and "line\\nbreak.dat" in done.stderr


def test_rows_whose_header_gives_no_capture_time_are_told(tmp_path):
    """A DICOM without acquisition, content, series or study dates (a de-identification that dropped them) gave a row
    with an empty datetime and visit_id, and with --omop a procedure without procedure_date (OMOP requires it), while
    registry exited 0. Now a warning names such rows and registry exits 1."""
    import pydicom

    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    p0 = sitegen.person_ids(1)[0]
    accession = sorted((site / p0 / "Images").glob("*/*"))[0]
    dicoms = sorted(accession.rglob("*.dcm"))
    for path in dicoms:
        ds = pydicom.dcmread(path)
        for kind in ("Acquisition", "Content", "Series", "Study"):
            for part in ("Date", "Time", "DateTime"):
                if kind + part in ds:
                    delattr(ds, kind + part)
        ds.save_as(path)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 1, done.stderr
    assert f"{len(dicoms)} image registry rows" in done.stderr and "no capture time" in done.stderr
    assert dicoms[0].relative_to(site).as_posix() in done.stderr
    rows = [r for r in read_csv(out / "image_registry.csv") if delivered(site, r) in
            {p.relative_to(site).as_posix() for p in dicoms}]
    assert len(rows) == len(dicoms) and {r["datetime"] for r in rows} == {""}
    procedure = next(p for p in read_csv(out / "procedure_occurrence.csv") if p["procedure_occurrence_id"] == rows[0]["proc_id"])
    assert procedure["procedure_date"] == ""


def test_a_date_without_its_time_gives_way_to_a_full_date_and_time_and_a_date_alone_is_told(tmp_path):
    """An AcquisitionDate whose AcquisitionTime a de-identifier removed was written as that day's 00:00:00 over the
    header's full StudyDate and StudyTime, and the visit looked up at that midnight (here: none), exit 0, without a
    word. Now the first date that has its time gives the datetime; a header with dates but no time gives the day's
    midnight, and registry says which rows (exit 1)."""
    import pydicom

    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    p0 = sitegen.person_ids(1)[0]
    dicoms = sorted(sorted((site / p0 / "Images").glob("*/*"))[0].rglob("*.dcm"))
    assert len(dicoms) >= 2
    day = "20200101"
    for path, study_time in ((dicoms[0], "101500"), (dicoms[1], None)):
        ds = pydicom.dcmread(path)
        for kind in ("Acquisition", "Content", "Series", "Study"):
            for part in ("Date", "Time", "DateTime"):
                if kind + part in ds:
                    delattr(ds, kind + part)
        ds.AcquisitionDate, ds.StudyDate = day, day
        if study_time:
            ds.StudyTime = study_time
        ds.save_as(path)
    # the one visit of the person: that morning, after midnight
    (site / "OMOP" / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_start_datetime,visit_end_date,"
        f"visit_end_datetime,visit_type_concept_id\n77,{p0},9201,2020-01-01,2020-01-01 08:00:00,2020-01-01,"
        "2020-01-01 12:00:00,32817\n")
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 1, done.stderr
    rows = {delivered(site, r): r for r in read_csv(out / "image_registry.csv")}
    full, alone = (rows[p.relative_to(site).as_posix()] for p in dicoms[:2])
    assert (full["datetime"], full["visit_id"]) == ("2020-01-01 10:15:00", "77")
    assert (alone["datetime"], alone["visit_id"]) == ("2020-01-01 00:00:00", "")
    assert "1 image registry row" in done.stderr and "a capture date without a time" in done.stderr
    assert dicoms[1].relative_to(site).as_posix() in done.stderr
    assert dicoms[0].relative_to(site).as_posix() not in done.stderr
    assert "Traceback" not in done.stderr


def test_waveform_sessions_without_a_capture_time_are_told(tmp_path):
    """A WFDB record whose headers give no base date and time, and an EDF session whose EDF+ header knows no date
    ("Startdate X", de-identified), gave rows with an empty datetime and visit_id and, with --omop, a procedure without procedure_date, while
    registry exited 0 (and validate warned of the registry it wrote: registry.values). Now a warning names the
    sessions and registry exits 1."""
    import re

    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    p0, p1 = sitegen.person_ids(2)
    session = sorted((site / p0 / "Waveforms" / "Telemetry").iterdir())[0]
    for header in session.glob("*.hea"):
        first, rest = header.read_text().split("\n", 1)
        header.write_text(re.sub(r"^(\S+ \d+ \S+ \d+) .*$", r"\1", first) + "\n" + rest)
    write(site, f"{p1}/Waveforms/EEG/900777/900777.edf", sitegen.edf_bytes(None))
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 1, done.stderr
    assert "2 sessions" in done.stderr and "no capture time" in done.stderr, done.stderr
    assert f"{session.relative_to(site).as_posix()}/" in done.stderr and f"{p1}/Waveforms/EEG/900777/" in done.stderr
    rows = read_csv(out / "waveform_registry.csv")
    undated = [r for r in rows if r["datetime"] == ""]
    assert undated and {r["group_id"] for r in undated} == {session.name, "900777"}
    procedures = {p["procedure_occurrence_id"]: p for p in read_csv(out / "procedure_occurrence.csv")}
    assert {procedures[r["proc_id"]]["procedure_date"] for r in undated} == {""}


def test_an_older_versions_registry_is_written_after_a_later_version_removed_its_omop_tables(tmp_path):
    """Once a later version removed OMOP/visit_occurrence.csv (and procedure_occurrence.csv), the registry of an
    earlier version stopped for good (exit 2, 'if the site moved since the run that recorded it, pass --site'): the
    tables are not on the site. It is now written, without visits, and a warning says why (exit 1)."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    (site / "OMOP" / "visit_occurrence.csv").unlink()
    (site / "OMOP" / "procedure_occurrence.csv").unlink()
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    labels = [r[0] for r in query(db, "SELECT label FROM versions ORDER BY label")]
    old = cli("registry", "--db", str(db), "--out", str(tmp_path / "old"), "--version", labels[0], "--omop")
    assert old.returncode == 1, old.stderr
    assert f"OMOP/visit_occurrence.csv of version {labels[0]} is no longer on the site" in old.stderr
    assert "pass --site" not in old.stderr
    rows = read_csv(tmp_path / "old" / "waveform_registry.csv")
    assert rows and {r["visit_id"] for r in rows} == {""}


def test_a_range_the_sites_procedures_use_is_refused(tmp_path):
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    rows = read_csv(site / "OMOP" / "procedure_occurrence.csv")
    rows[0]["procedure_occurrence_id"] = "2000000005"
    with (site / "OMOP" / "procedure_occurrence.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    out = cli("registry", "--db", str(db), "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "2000000005" in out.stderr and "image_proc_ids" in out.stderr
    assert "Traceback" not in out.stderr
    assert query(db, "SELECT count(*) FROM registry WHERE proc_id IS NOT NULL") == [(0,)]
    # (a range apart from the default waveform one, 2001000000-2999999999: one inside it is refused as overlapping)
    (tmp_path / "chorus.toml").write_text('[registry]\nimage_proc_ids = [1500000000, 1500999999]\n')
    moved = cli("registry", "--db", str(db), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert moved.returncode == 0, moved.stderr
    assert read_csv(tmp_path / "r" / "image_registry.csv")[0]["proc_id"] == "1500000000"


def test_registry_needs_a_manifest(tmp_path):
    out = cli("registry", "--db", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "no manifest" in out.stderr and "fix:" in out.stderr


def test_without_omop_an_older_procedure_occurrence_in_out_is_not_left_beside_fresh_registries(released):
    """`registry --out DIR` (no --omop) into the folder of an earlier `--omop` rewrote the two registries and left
    the older procedure_occurrence.csv there, stale beside fresh: refused (exit 2), nothing written."""
    _, db, out = released
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "waveform_registry.csv").write_text("older\n")
    again = cli("registry", "--db", str(db), "--out", str(out))
    assert again.returncode == 2 and "procedure_occurrence.csv" in again.stderr and "--omop" in again.stderr
    assert (out / "waveform_registry.csv").read_text() == "older\n"  # nothing written
    assert cli("registry", "--db", str(db), "--out", str(out), "--omop").returncode == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_manifest_the_user_may_only_read_gives_its_registries_when_there_is_nothing_to_write(released, tmp_path):
    """Every proc_id given and header read: nothing to write, so no lock to take. A reviewer with read access (file
    0444 in a 0555 folder) got exit 3 "cannot create or open the manifest's lock file"; a first registry, which
    allocates, still needs the lock (and says so)."""
    import sqlite3

    from test_review import without_override

    _, db, out = released
    shared = tmp_path / "shared"
    shared.mkdir()
    copy = shared / "m.sqlite"
    copy.write_bytes(db.read_bytes())
    fresh = shared / "fresh.sqlite"  # no proc_id given yet
    fresh.write_bytes(copy.read_bytes())
    with sqlite3.connect(fresh) as con:
        con.execute("UPDATE registry SET proc_id = NULL")
    before = copy.read_bytes()
    for f in (copy, fresh):
        os.chmod(f, 0o444)
    os.chmod(shared, 0o555)
    try:
        done = without_override("registry", "--db", str(copy), "--out", str(tmp_path / "again"), "--omop", "-q")
        first = without_override("registry", "--db", str(fresh), "--out", str(tmp_path / "first"), "-q")
    finally:
        os.chmod(shared, 0o755)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "again" / "waveform_registry.csv").read_bytes() == (out / "waveform_registry.csv").read_bytes()
    assert copy.read_bytes() == before
    # (a folder this user cannot write: a path to fix, exit 2, as every output's)
    assert first.returncode == 2 and "lock" in first.stderr, first.stderr


def test_an_unknown_version_makes_no_out_folder(released, tmp_path):
    # exit 2 says nothing was done, but the --out folder had been made (empty) before the version was looked up
    _, db, _ = released
    out = cli("registry", "--db", str(db), "--out", str(tmp_path / "new"), "--version", "nope")
    assert out.returncode == 2 and "no version 'nope'" in out.stderr, out.stderr
    assert not (tmp_path / "new").exists()


def test_a_registry_stopped_before_writing_leaves_no_out_folder_it_made(released, tmp_path):
    """A registry stopped (SIGTERM) before its files were put in place left the new --out folder it had made, empty."""
    _, db, _ = released
    new = tmp_path / "new" / "release"
    proc = paused("registry", "--db", str(db), "--out", str(new), at="written-aside")
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))


def test_out_dash_is_not_taken_as_a_folder_named_dash(released, tmp_path):
    """`report --out -` and `review --out -` print to standard output; `registry --out -` made a folder named `-`
    in the current folder (awkward to remove: `rm -r -` is not it) and said it wrote its files there. The registry
    is two or three files, which standard output cannot hold apart: refused (exit 2), nothing made."""
    site, db, _ = released
    out = cli("registry", "--db", str(db), "--out", "-", cwd=tmp_path)
    assert out.returncode == 2 and "--out" in out.stderr and "fix:" in out.stderr, out.stderr
    assert not (tmp_path / "-").exists() and out.stdout == ""


def test_a_quoted_tilde_in_db_and_out_is_the_home_folder_not_a_folder_named_tilde(released, tmp_path):
    """`--db "~/m.sqlite"` and `--out "~/release"` as a cron line or a unit file quotes them (no shell to expand
    them): `--site "~/site"` and `db = "~/m.sqlite"` in chorus.toml are the home folder, but --db was looked for in
    ./~/ ("no manifest at …/~/m.sqlite") and registry --out made a folder named '~' here and wrote into it."""
    import shutil

    _, db, _ = released
    home, here = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    here.mkdir()
    shutil.copyfile(db, home / "m.sqlite")
    done = cli("registry", "--db", "~/m.sqlite", "--out", "~/release", cwd=here, env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert (home / "release" / "waveform_registry.csv").is_file() and list(here.iterdir()) == []
    listed = cli("files", "--db", "~/m.sqlite", "--json", cwd=here, env={"HOME": str(home)})
    assert listed.returncode == 0 and listed.stdout.startswith("["), listed.stderr


def test_the_testdata_sites_registries_match_an_independent_computation(tmp_path):
    """The synthetic site of `chorus-batch testdata` (both snapshots, as two versions)."""
    from chorus_batch.testdata import Spec, make_testdata

    make_testdata(tmp_path / "td", Spec(persons=6, files_per_person=12, size=256, seed=4))
    db = tmp_path / "m.sqlite"
    outs = []
    for snap in ("first", "second"):
        site = tmp_path / "td" / snap
        assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
        out = tmp_path / f"reg-{snap}"
        done = cli("registry", "--db", str(db), "--out", str(out))
        assert done.returncode == 0, done.stderr
        rows = read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")
        files = {p.relative_to(site).as_posix() for p in site.rglob("*")
                 if p.is_file() and ("/Waveforms/" in p.as_posix() or "/Images/" in p.as_posix())}
        assert sorted(delivered(site, r) for r in rows) == sorted(files)  # one row per file
        for row in rows:
            when = expected_time(site, delivered(site, row))
            assert row["visit_id"] == expected_visit(site, row["person_id"], when), row
        outs.append({delivered(site, r): (r["file_id"], r["proc_id"]) for r in rows})
    first, second = outs
    kept = first.keys() & second.keys()
    assert kept and all(first[p] == second[p] for p in kept)  # stable ids for the paths both versions have
    assert any(not r for r in (row["visit_id"] for row in read_csv(tmp_path / "reg-second" / "image_registry.csv")))


def test_the_registries_written_validate_clean_when_shipped_with_the_site(released):
    """The writer and the registry.* rules read the procedures alike: shipped at the site root, the registries
    `registry` wrote give no finding (the image registry's trg_file blank, as the Imaging SOP asks), with the
    PROCEDURE_OCCURRENCE rows `--omop` made of them in the site's table (registry.no_procedure without)."""
    site, db, out = released
    for name in ("waveform_registry.csv", "image_registry.csv"):
        (site / name).write_bytes((out / name).read_bytes())
    table = site / "OMOP" / "procedure_occurrence.csv"
    rows = read_csv(table)
    fields = list(rows[0])
    # (the linkage rows of sitegen's registries go with them, as a site that ships new registries makes its rows anew:
    # kept, they link no file, registry.linkage_without_files)
    rows = [r for r in rows if r["procedure_concept_id"] not in ("4180938", "4141651")]
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows + [{k: r.get(k, "") for k in fields} for r in read_csv(out / "procedure_occurrence.csv")])
    # (the folder as it is now, in a temporary manifest: the run's manifest holds the version before the copies, whose
    # registries are sitegen's, and `validate --db` checks that version)
    done = cli("validate", "--site", str(site), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"rule"' not in done.stdout, done.stdout


def test_the_procedure_rows_a_site_made_from_its_registries_do_not_block_the_next_registry(released, tmp_path):
    """Multimodal-Linkage: the registries are used "directly to create rows in your OMOP PROCEDURE_OCCURRENCE table".
    A site that did so (registry --omop, rows appended to OMOP/procedure_occurrence.csv) was refused by the next
    `registry`: its own proc_ids counted as the site's EHR procedures in the range. Ids this manifest gave are its
    own; an id in the range that it did not give still is refused."""
    site, db, out = released
    table = site / "OMOP" / "procedure_occurrence.csv"
    rows = read_csv(table)
    fields = list(rows[0])
    merged = rows + [{k: r.get(k, "") for k in fields} for r in read_csv(out / "procedure_occurrence.csv")]

    def write_table(rows: list[dict[str, str]]) -> None:
        with table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    write_table(merged)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    again = cli("registry", "--db", str(db), "--out", str(tmp_path / "again"), "--omop")
    assert again.returncode == 0, again.stderr
    assert read_csv(tmp_path / "again" / "image_registry.csv") == read_csv(out / "image_registry.csv")
    stray = max(int(r["proc_id"]) for r in read_csv(out / "image_registry.csv")) + 1
    write_table([*merged, {**rows[0], "procedure_occurrence_id": str(stray)}])
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    refused = cli("registry", "--db", str(db), "--out", str(tmp_path / "third"))
    assert refused.returncode == 2 and str(stray) in refused.stderr, refused.stderr


@pytest.mark.parametrize("damage", [b"9,000888,SECRET-VALUE\n", b"\0" * 4096], ids=["short_row", "zeros"])
def test_a_visit_table_it_cannot_read_is_told_without_its_rows(tmp_path, damage):
    """`registry` read visit_occurrence.csv and, on a row of too few fields, printed pyarrow's error with a copy of the
    row: "Expected 8 columns, got 3: 9,000888,SECRET" (a person id and a clinical value on the console, in cron
    mail). It now names the row by number, and the zeros of an unfinished copy as such."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    visits = site / "OMOP" / "visit_occurrence.csv"
    visits.write_bytes(visits.read_bytes() + damage)
    cli("run", "-q", "--site", str(site), "--db", str(db))
    out = cli("registry", "--db", str(db), "--out", str(tmp_path / "r"), "--omop")
    assert out.returncode == 2 and "cannot read OMOP/visit_occurrence.csv" in out.stderr, out.stderr
    assert "000888" not in out.stderr and "SECRET" not in out.stderr and "\\x00" not in out.stderr, out.stderr
    assert ("Row #" in out.stderr) if damage[0] != 0 else ("NUL bytes" in out.stderr), out.stderr
    assert "Traceback" not in out.stderr


def test_a_site_moved_since_the_run_is_said_with_how_to_point_at_it(tmp_path):
    """`registry` after the site moved away from the root the manifest records: reading visit_occurrence.csv raised
    FileNotFoundError, said as "internal error" (exit 3, "report it"). It is a usage error naming the file and
    --site; with --site it works."""
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    moved = site.rename(tmp_path / "moved")
    out = cli("registry", "--db", str(db), "--out", str(tmp_path / "r"))
    assert out.returncode == 2 and "internal error" not in out.stderr, out.stderr
    assert "OMOP/visit_occurrence.csv" in out.stderr and "--site" in out.stderr, out.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    again = cli("registry", "--db", str(db), "--out", str(tmp_path / "r"), "--site", str(moved))
    assert again.returncode == 0, again.stderr


def test_a_root_gone_with_headers_never_read_stops_once_as_validate_does(tmp_path):
    """A run without validation (its headers never read), then the site's disk not mounted: registry read each header
    from the recorded root, warned that every one was "no longer as it recorded them", wrote registries without
    capture times and exited 1. It stops once before reading (validate's refuse_unreachable), exit 2, nothing
    written, naming the root and --site; with --site the capture times are read."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    for table in ("visit_occurrence", "procedure_occurrence"):  # (else reading the OMOP tables stops it first)
        (site / "OMOP" / f"{table}.csv").unlink()
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    moved = site.rename(tmp_path / "moved")
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("error") == 1 and "no longer as it recorded" not in done.stderr, done.stderr
    assert f"the root it is recorded under, {site}, does not exist" in done.stderr, done.stderr
    assert "give --site the folder the site is in now" in done.stderr and "no registry written" in done.stderr
    assert not out.exists() or not any(out.iterdir())
    again = cli("registry", "--db", str(db), "--out", str(out), "--site", str(moved))
    assert again.returncode == 1 and "no longer as it recorded" not in again.stderr, again.stderr
    assert all(r["datetime"] for r in read_csv(out / "image_registry.csv"))


def test_the_readmes_demo_registry_command_and_rows_are_what_the_demo_gives(tmp_path):
    """The README's "Linkage registries" shows a command and the demo site's first rows: `chorus-batch run &&
    chorus-batch registry --out release --omop` stopped at once (no site given; exit 2). Its command, run as written,
    writes those rows (with the demo site's folder for /data/site)."""
    import shlex

    from conftest import ROOT
    from chorus_batch.cli import demo_site

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = readme.split("The demo site's first rows", 1)[1].split("\n## ", 1)[0]
    blocks = [block for block in shown.split("\n\n") if block.startswith("    ")]
    command, files = blocks[0].strip(), blocks[1:]
    for step in command.split("&&"):
        words = shlex.split(step)
        assert words[0] == "chorus-batch", command
        out = cli(*words[1:], cwd=tmp_path)
        assert out.returncode == 0, (step, out.stderr)
    for block in files:
        name, *rows = [line.strip() for line in block.splitlines()]
        written = (tmp_path / "release" / name.removeprefix("# ")).read_text(encoding="utf-8").splitlines()
        assert written[:len(rows)] == [row.replace("/data/site/", f"{demo_site().resolve()}/") for row in rows], name


def _second_version(site: Path, db: Path) -> None:
    p0 = sitegen.person_ids(1)[0]
    write(site, f"{p0}/Waveforms/Telemetry/900777/900777.edf", sitegen.edf_bytes(None))
    write(site, f"{p0}/Images/CT/900778/1.2.3.4/000.dcm", b"\0" * 132)
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_registry_stopped_while_writing_leaves_the_earlier_set_whole(released, signum):
    """The registry files were written one after the other: a SIGTERM (or a full disk) between two left the new
    version's waveform registry beside the old version's image registry and procedures, read as one release."""
    site, db, out = released
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _second_version(site, db)
    proc = paused("registry", "--db", str(db), "--out", str(out), "--omop", at="written-aside")
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGKILL: -9, signal.SIGTERM: 143, signal.SIGINT: 130}[signum], err
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
    if signum != signal.SIGKILL:
        assert "the registry files in --out are as they were" in err, err
        assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # nothing of its own left
    again = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    # (exit 1: the second version's DICOM is no DICOM, its row has no capture time, which is warned of)
    assert again.returncode == 1 and "no capture time" in again.stderr, again.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in after)


def test_a_signal_while_the_registries_are_put_in_place_waits_for_all_of_them(released):
    site, db, out = released
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _second_version(site, db)
    resume = out.parent / "resume"
    proc = paused("registry", "--db", str(db), "--out", str(out), "--omop", at="put-in-place+60",  # after the first
                  resume=resume)
    os.kill(proc.pid, signal.SIGTERM)
    resume.touch()  # (the signal is pending in the process before it goes on)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in after)  # all new
    assert "every registry file had been written to --out before the signal came" in err, err
    assert "as they were" not in err, err


def test_a_registry_killed_between_its_renames_has_its_set_completed_by_the_next_one(released):
    """SIGKILL cannot be held off: a registry killed between two renames left the new waveform registry beside the
    old image registry and procedures, which read as one release, with nothing to tell them apart. The next
    registry into the folder puts the rest of the killed run's set (written whole beside it first) in place before
    anything else, and says so, so that the folder holds one set even when that command then stops."""
    site, db, out = released
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _second_version(site, db)
    proc = paused("registry", "--db", str(db), "--out", str(out), "--omop", at="put-in-place")  # one renamed
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    mixed = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
    assert sum(mixed[name] != before[name] for name in before) == 1  # (what the fix is for)
    # without --omop the folder is refused for its procedure_occurrence.csv: nothing new is written, but the
    # killed run's set is whole by then
    refused = cli("registry", "--db", str(db), "--out", str(out))
    assert refused.returncode == 2, refused.stderr
    assert "was killed while it put its files in place" in refused.stderr, refused.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in after), after.keys()


def test_a_registry_failing_between_its_renames_puts_the_earlier_set_back(released):
    """A write error (not a signal) after the first rename left the new waveform registry beside the old image
    registry and procedures, read as one release, and the message said nothing of it. The renames done are undone."""
    site, db, out = released
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _second_version(site, db)
    resume = out.parent / "resume"
    proc = paused("registry", "--db", str(db), "--out", str(out), "--omop", at="put-in-place+60",  # one renamed
                  resume=resume)
    (out / "image_registry.csv").unlink()
    (out / "image_registry.csv").mkdir()  # the next rename fails
    (out / "image_registry.csv" / "x").write_text("x")
    resume.touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "image_registry.csv is a folder" in err and "waveform_registry.csv had been put in place and was put back" in err, err
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # nothing of its own left
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == {
        name: data for name, data in before.items() if name != "image_registry.csv"}


def test_two_signals_held_while_the_registries_are_put_in_place_are_said_as_the_first(released):
    """SIGHUP then SIGTERM, both held while the files are renamed: the command exited 143 "terminated (SIGTERM)",
    the last one held, where a run stopping on a SIGHUP says that one whatever comes after it."""
    site, db, out = released
    _second_version(site, db)
    resume = out.parent / "resume"
    proc = paused("registry", "--db", str(db), "--out", str(out), "--omop", at="put-in-place+60",  # after the first
                  resume=resume)
    os.kill(proc.pid, signal.SIGHUP)
    os.kill(proc.pid, signal.SIGTERM)
    resume.touch()  # (both signals are pending in the process before it goes on)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129 and "hung up (SIGHUP)" in err and "SIGTERM" not in err, err
    assert "every registry file had been written to --out before the signal came" in err, err


def test_a_compressed_waveform_file_has_no_registry_row_and_is_told(tmp_path):
    """validate counted a compressed copy (file.compressed: decompress it) as no file to list, while the registry
    command gave it a row naming a .gz to deliver. One definition of the files a registry lists serves both."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    session = next(p for p in site.glob("*/Waveforms/Telemetry/*") if p.is_dir())
    gz = session / f"{session.name}n.csv.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert "1 compressed waveform or image file" in done.stderr and gz.name in done.stderr, done.stderr
    assert "fit no layout" not in done.stderr, done.stderr
    assert all(not row["trg_file"].endswith(".gz") for row in read_csv(out / "waveform_registry.csv"))


def test_the_registry_reads_the_version_file_list_once(tmp_path, monkeypatch):
    """A first `registry` builds without the lock, meets proc_ids to allocate, and builds again under it: each
    build read the version's whole file list from the manifest (a million-file site: twice the longest query)."""
    from chorus_batch.registries import make_registries
    from chorus_batch.review import SQLiteReader

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    reads = []
    real = SQLiteReader._files_at
    monkeypatch.setattr(SQLiteReader, "_files_at", lambda self, *a: reads.append(a) or real(self, *a))
    registries, written = make_registries(str(db), tmp_path / "release", argv=["registry"])
    assert registries.new_proc_ids > 0 and len(written) == 2  # (it did build twice: the second under the lock)
    assert len(reads) == 1, reads


def test_an_edf_sessions_rows_are_dated_by_its_header(tmp_path):
    """The EDF header's own start date and time were not read: an EDF session's rows had no datetime, no visit, and
    their procedure no procedure_date, though the header holds the start. Now they are the header's start, and the
    visit is the one it falls in."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    p1 = sitegen.person_ids(2)[1]
    start = sitegen.visit_hours(1)[0][0] + timedelta(minutes=30)  # in the person's first visit
    write(site, f"{p1}/Waveforms/EEG/900777/900777.edf", sitegen.edf_bytes(start))
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 0, done.stderr
    row = next(r for r in read_csv(out / "waveform_registry.csv") if r["group_id"] == "900777")
    assert row["datetime"] == start.strftime("%Y-%m-%d %H:%M:%S"), row
    assert row["visit_id"] == expected_visit(site, p1, start) != "", row
    procedure = next(p for p in read_csv(out / "procedure_occurrence.csv") if p["procedure_occurrence_id"] == row["proc_id"])
    assert procedure["procedure_date"] == start.strftime("%Y-%m-%d")


def test_a_person_folder_without_a_person_row_is_told_and_a_person_table_it_cannot_read_does_not_stop_it(tmp_path):
    """A person folder with waveforms and images but no row in OMOP/person.csv gave registry rows (and procedures) of
    a person OMOP does not have, exit 0, without a word; validate then refused the shipped registry
    (registry.unknown_person). Now registry names the folder (exit 1); an id written without its leading zeros in
    person.csv is the same person; a person.csv it cannot read is said, and the registries are still written."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    p0, p1, p2 = sitegen.person_ids(3)
    table = site / "OMOP" / "person.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join([lines[0], lines[1].replace(p0, str(int(p0))), lines[2]]) + "\n")  # p2 has no row
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert "1 person folder with registry rows" in done.stderr and f"(e.g. {p2}/)" in done.stderr, done.stderr
    assert f"{p0}/" not in done.stderr and f"{p1}/" not in done.stderr
    assert {r["person_id"] for r in read_csv(out / "waveform_registry.csv")} == {p0, p1, p2}

    table.write_text(table.read_text().replace(",", ";"))
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert "not looked up in OMOP/person.csv" in done.stderr and "split by semicolons" in done.stderr, done.stderr
    assert (out / "waveform_registry.csv").exists() and "Traceback" not in done.stderr


def test_a_person_folder_whose_person_id_is_written_as_a_decimal_is_told(tmp_path):
    """person.csv writing a folder's person_id as 3.0 (pandas, an integer column with empty cells): registry matched
    it and said nothing (exit 0), while validate refuses the folder (person.no_omop_row) and the shipped rows
    (registry.unknown_person). Now registry warns, naming the folder and the id as written (exit 1); an id also
    written as an integer is not told."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    p0, p1, _p2 = sitegen.person_ids(3)
    table = site / "OMOP" / "person.csv"
    lines = table.read_text().splitlines()
    lines[1] = lines[1].replace(p0, f"{int(p0)}.0", 1)
    lines.append(lines[2].replace(p1, f"{int(p1)}.0", 1))  # (p1 also written as an integer)
    table.write_text("\n".join(lines) + "\n")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert ("1 person folder with registry rows of version" in done.stderr
            and f"is in OMOP/person.csv only as a decimal ({p0}/ as {int(p0)}.0)" in done.stderr), done.stderr
    assert f"{p1}/" not in done.stderr and (out / "waveform_registry.csv").exists()


@pytest.mark.parametrize("table", ["visit_occurrence", "procedure_occurrence"])
def test_an_omop_table_split_by_semicolons_is_told_not_an_internal_error(tmp_path, table):
    """A table a European spreadsheet saved with semicolons: its header read as validate reads it gave the column
    names, which the comma-delimited read then did not have ("internal error: ArrowKeyError", exit 3)."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    path = site / "OMOP" / f"{table}.csv"
    path.write_text(path.read_text().replace(",", ";"))
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert f"cannot read OMOP/{table}.csv: its header row is split by semicolons, not commas" in done.stderr, done.stderr
    assert "internal error" not in done.stderr


@pytest.mark.parametrize(("table", "code"), [("person", 1), ("visit_occurrence", 2), ("procedure_occurrence", 2)])
def test_an_omop_table_naming_its_key_twice_is_told_not_an_internal_error(tmp_path, table, code):
    """A header naming its key column twice (person_id,...,PERSON_ID: validate's omop.duplicate_column) gave pyarrow
    both columns, which polars refused ("internal error: DuplicateError", exit 3). Now it is told as a table that
    cannot be read: person.csv as a warning (the registries are written), the others refused as other unreadable
    tables are."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    path = site / "OMOP" / f"{table}.csv"
    header, rest = path.read_text().split("\n", 1)
    names = header.split(",")
    key = f"{table}_id" if table != "person" else "person_id"
    names[-1] = key.upper()  # (case aside, the same name)
    path.write_text(",".join(names) + "\n" + rest)
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == code, done.stderr
    assert f"cannot read OMOP/{table}.csv: its header row names column {key} more than once" in done.stderr, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
    assert (out / "waveform_registry.csv").exists() == (code == 1)


def test_a_set_is_put_in_place_without_renaming_or_removing_an_open_file_where_there_is_no_flock(tmp_path, monkeypatch):
    """Windows has no flock, and a file open there can be neither renamed nor removed (Python opens files without
    FILE_SHARE_DELETE). The set's marker was renamed into place and removed while its descriptor was open: every
    `registry --out` of a Windows site would have failed ("cannot write"), and a marker completed by the next writer
    stayed, to be completed again. Here the platform's rule is checked on Linux: no descriptor of this process is open
    on a file when it is renamed or removed."""
    from chorus_batch import fsutil

    def open_paths() -> set[str]:
        fds = Path("/proc/self/fd")
        return {os.path.realpath(fds / fd) for fd in os.listdir(fds)}

    def refusing_open(real):
        def call(src, *args, **kwargs):
            assert os.path.realpath(src) not in open_paths(), f"{src} is open while it is renamed or removed"
            return real(src, *args, **kwargs)
        return call

    monkeypatch.setattr(fsutil, "_lock", lambda fd, *, wait: None)  # as on Windows
    monkeypatch.setattr(fsutil.os, "replace", refusing_open(os.replace))
    monkeypatch.setattr(fsutil.os, "unlink", refusing_open(os.unlink))
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: refusing_open(os.unlink)(self))
    out = tmp_path / "release"
    out.mkdir()
    written = fsutil.write_private_together({out / "a.csv": b"a\n", out / "b.csv": b"b\n"})
    assert sorted(p.name for p in written) == ["a.csv", "b.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.csv"]  # no marker left beside them

    # a marker a killed writer left (its files written aside, none renamed yet), old enough to be taken as gone
    pid = 999_999
    for name, data in (("a.csv", b"A\n"), ("b.csv", b"B\n")):
        (out / f"{fsutil.aside_stem(name)}.{pid}.tmp").write_bytes(data)
    marker = out / fsutil._SET_MARKER.format(pid)
    marker.write_text(json.dumps({f"{fsutil.aside_stem(n)}.{pid}.tmp": n for n in ("a.csv", "b.csv")}))
    old = time.time() - fsutil.ABANDONED_AFTER_S - 60
    os.utime(marker, (old, old))
    said = fsutil.complete_interrupted_sets(out)
    assert len(said) == 1 and "a.csv, b.csv, was put in place now" in said[0], said
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.csv": b"A\n", "b.csv": b"B\n"}  # marker removed


def test_a_file_an_older_release_recorded_without_its_root_is_said_to_have_no_root_in_src_file(tmp_path):
    """A manifest of schema 2 recorded no roots: the files of its first version ended before the upgrade's first run
    recorded the site's root have none. Their src_file was their site-relative path, beside the other rows' root +
    path, exit 0 without a word."""
    import shutil

    fixture = Path(__file__).resolve().parent / "fixtures" / "schema2"
    db, site = tmp_path / "m.sqlite", tmp_path / "site"
    shutil.copy(fixture / "manifest.sqlite", db)
    shutil.copytree(fixture / "site", site)
    assert cli("upgrade", "--db", str(db)).returncode == 0
    assert cli("run", "--site", str(site), "--db", str(db), "-q").returncode in (0, 1)
    out = cli("registry", "--db", str(db), "--version", "20261101020000", "--out", str(tmp_path / "r"), "-q")
    assert out.returncode == 1, out.stderr
    rows = read_csv(tmp_path / "r" / "waveform_registry.csv") + read_csv(tmp_path / "r" / "image_registry.csv")
    bare = sorted(r["src_file"] for r in rows if not r["src_file"].startswith(site.as_posix() + "/"))
    assert bare and all(not Path(path).is_absolute() for path in bare)
    assert f"{len(bare)} registry rows of version 20261101020000 have a src_file without the site's root" in out.stderr
    assert bare[0] in out.stderr and "schema before 3" in out.stderr
    latest = cli("registry", "--db", str(db), "--out", str(tmp_path / "r2"), "-q")  # every file has its root
    assert latest.returncode == 0 and "without the site's root" not in latest.stderr, latest.stderr


def test_omop_into_the_sites_own_omop_folder_never_replaces_its_procedure_occurrence(released):
    """`registry --out <site>/OMOP --omop` replaced the site's own OMOP/procedure_occurrence.csv (its EHR procedures)
    by the registries' procedures alone, exit 0: refused (exit 2), nothing written; the site root, where the
    registries are shipped, is written as before."""
    site, db, _ = released
    table = site / "OMOP" / "procedure_occurrence.csv"
    before = table.read_bytes()
    for out in (site / "OMOP", site / "OMOP" / ".." / "OMOP"):
        refused = cli("registry", "--db", str(db), "--out", str(out), "--omop")
        assert refused.returncode == 2, refused.stderr
        assert "the site's own OMOP/procedure_occurrence.csv" in refused.stderr and "nothing was written" in refused.stderr
        assert table.read_bytes() == before
        assert not (site / "OMOP" / "waveform_registry.csv").exists()
    for name in ("waveform_registry.csv", "image_registry.csv"):  # (the site's own: see the tests below)
        (site / name).rename(site.parent / f"old_{name}")
    shipped = cli("registry", "--db", str(db), "--out", str(site), "--omop")
    assert shipped.returncode == 0 and (site / "waveform_registry.csv").is_file(), shipped.stderr
    assert table.read_bytes() == before


def test_a_registry_the_site_made_itself_is_not_replaced_by_one_numbered_otherwise(released, tmp_path):
    """A site that ships its own registries (proc_ids its procedure_occurrence.csv has rows of) and ran `registry
    --out <site>` had them replaced by this tool's, numbered from other ranges, exit 0, without a word: the site's
    procedure rows then named proc_ids no registry lists, and the centre's joins broke. Refused (exit 2, nothing
    written), naming the file and an id; a registry this manifest wrote there before is written again."""
    site, db, out = released
    shipped = {name: (site / name).read_bytes() for name in ("waveform_registry.csv", "image_registry.csv")}
    own_id = read_csv(site / "waveform_registry.csv")[0]["proc_id"]
    assert own_id not in {r["proc_id"] for r in read_csv(out / "waveform_registry.csv")}
    refused = cli("registry", "--db", str(db), "--out", str(site))
    assert refused.returncode == 2, refused.stderr
    assert "waveform_registry.csv" in refused.stderr and own_id in refused.stderr and "nothing was written" in refused.stderr
    assert {name: (site / name).read_bytes() for name in shipped} == shipped
    # a copy of it in a release folder is the site's too; this tool's own registries there are rewritten
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "image_registry.csv").write_bytes(shipped["image_registry.csv"])
    assert cli("registry", "--db", str(db), "--out", str(copy)).returncode == 2
    assert (copy / "image_registry.csv").read_bytes() == shipped["image_registry.csv"]
    # ... also saved by a spreadsheet with semicolons, a BOM and CRLF (read as comma-delimited, it had no proc_id
    # column and was replaced, exit 0)
    semicolons = b"\xef\xbb\xbf" + shipped["image_registry.csv"].replace(b",", b";").replace(b"\n", b"\r\n")
    (copy / "image_registry.csv").write_bytes(semicolons)
    refused = cli("registry", "--db", str(db), "--out", str(copy))
    assert refused.returncode == 2 and "image_registry.csv with" in refused.stderr, refused.stderr
    assert (copy / "image_registry.csv").read_bytes() == semicolons
    assert cli("registry", "--db", str(db), "--out", str(out), "--omop").returncode == 0
    for name in shipped:
        (site / name).unlink()
    for _ in range(2):
        again = cli("registry", "--db", str(db), "--out", str(site))
        assert again.returncode == 0, again.stderr
        assert read_csv(site / "waveform_registry.csv") == read_csv(out / "waveform_registry.csv")


def test_a_registry_in_out_with_its_header_repeated_is_refused_naming_the_line(released):
    """Two exports pasted into one registry (`cat a.csv b.csv`, the second with its BOM): refused as "1 proc_id this
    manifest never gave (e.g. proc_id)". Said as what it is, with the line the header repeats on; nothing written."""
    site, db, out = released
    path = out / "waveform_registry.csv"
    written = path.read_bytes()
    lines = written.count(b"\n")
    pasted = written + b"\xef\xbb\xbf" + written
    path.write_bytes(pasted)
    refused = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert refused.returncode == 2, refused.stderr
    assert f"whose header row (file_id,proc_id,person_id,...) is repeated on line {lines + 1}" in refused.stderr, \
        refused.stderr
    assert f"waveform_registry.csv, line {lines + 1}" in refused.stderr and "never gave" not in refused.stderr
    assert "nothing was written" in refused.stderr and "Traceback" not in refused.stderr
    assert path.read_bytes() == pasted
    path.write_bytes(written)
    assert cli("registry", "--db", str(db), "--out", str(out), "--omop").returncode == 0


def test_out_the_site_root_beside_the_sites_own_registry_in_metadata_is_refused(released, tmp_path):
    """A site that ships its registries in Metadata/ (the linkage procedure's place for them is the release; validate
    takes the root or Metadata/) and ran `registry --out <site>` got a second pair at the root, exit 0; the next run
    found two registries of each kind (registry.several, an error), the site's proc_ids in one and this tool's in the
    other. Refused (exit 2, nothing written), naming the site's file; so is --out <site>/Metadata beside the site's
    registry at the root, and a site registry under another name; a folder outside the site is written as before."""
    site, db, out = released
    for name in ("waveform_registry.csv", "image_registry.csv"):
        (site / name).rename(site / "Metadata" / name)
    for target in (site, site / "."):
        refused = cli("registry", "--db", str(db), "--out", str(target))
        assert refused.returncode == 2, refused.stderr
        assert "Metadata/waveform_registry.csv" in refused.stderr and "nothing was written" in refused.stderr
        assert not (site / "waveform_registry.csv").exists() and not (site / "image_registry.csv").exists()
    # the other way round, with this tool's own registries at the root: a copy in Metadata/ would be a second one
    for name in ("waveform_registry.csv", "image_registry.csv"):
        (site / "Metadata" / name).rename(tmp_path / name)
    assert cli("registry", "--db", str(db), "--out", str(site)).returncode == 0
    refused = cli("registry", "--db", str(db), "--out", str(site / "Metadata"))
    assert refused.returncode == 2 and "already ships waveform_registry.csv" in refused.stderr, refused.stderr
    assert not (site / "Metadata" / "waveform_registry.csv").exists()
    # a registry of the site named otherwise is one too (validate: a CSV named *registry* at the root or in Metadata/)
    (site / "waveform_registry.csv").rename(site / "Metadata" / "Wave_Registry_2024.csv")
    refused = cli("registry", "--db", str(db), "--out", str(site))
    assert refused.returncode == 2 and "Metadata/Wave_Registry_2024.csv" in refused.stderr, refused.stderr
    assert not (site / "waveform_registry.csv").exists()
    assert cli("registry", "--db", str(db), "--out", str(out), "--omop").returncode == 0


def test_a_version_without_a_visit_table_is_told_not_given_empty_visit_ids_silently(tmp_path):
    """A site without OMOP/visit_occurrence.csv got registries whose every visit_id was empty, exit 0, without a word:
    read as the procedure's NULL ("no visit for that patient overlaps"), when no visit was looked at. Warned (exit 1);
    the rows are written as before."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "out"
    clean_site(site)
    (site / "OMOP" / "visit_occurrence.csv").unlink()
    cli("run", "-q", "--site", str(site), "--db", str(db))
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 1, done.stderr
    assert "has no OMOP/visit_occurrence.csv" in done.stderr and "every visit_id" in done.stderr, done.stderr
    rows = read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")
    assert rows and {r["visit_id"] for r in rows} == {""} and all(r["datetime"] for r in rows)
    assert {p["visit_occurrence_id"] for p in read_csv(out / "procedure_occurrence.csv")} == {""}


def test_visits_whose_end_datetime_is_the_midnight_of_their_end_date_take_that_whole_day(tmp_path):
    """OMOP ETLs write a datetime whose source has no time as its date at midnight (2024-01-01 00:00:00): a one-day
    visit so written (start and end 2024-01-01 00:00:00) enclosed no capture of that day, and a stay ending so lost
    its discharge day; their files' visit_id was empty, exit 0, without a word. Such an end is the whole end day (the
    procedure: the visit "that overlaps with the timestamp of the file capture"); an end at another time is kept."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    (p0, p1, p2) = sitegen.person_ids(3)
    visits = site / "OMOP" / "visit_occurrence.csv"
    visits.write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_start_datetime,visit_end_date,"
        "visit_end_datetime,visit_type_concept_id\n"
        f"7000,{p0},9202,{sitegen.captured(0)[:10]},{sitegen.captured(0)[:10]} 00:00:00,{sitegen.captured(0)[:10]},"
        f"{sitegen.captured(0)[:10]} 00:00:00,32817\n"  # a one-day visit, no time given
        f"7010,{p1},9201,2023-12-30,2023-12-30 00:00:00,{sitegen.captured(1)[:10]},{sitegen.captured(1)[:10]} 00:00:00,"
        "32817\n"  # a stay whose discharge day has no time
        f"7020,{p2},9201,2023-12-30,2023-12-30 00:00:00,{sitegen.captured(2)[:10]},{sitegen.captured(2)[:10]} 00:00:01,"
        "32817\n")  # an end one second after midnight: that instant
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 0, done.stderr
    rows = read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")
    by_person = {p: {r["visit_id"] for r in rows if r["person_id"] == p} for p in (p0, p1, p2)}
    assert all(r["datetime"][11:] > "00:00:01" for r in rows)  # (every capture is after the first second of its day)
    assert by_person == {p0: {"7000"}, p1: {"7010"}, p2: {""}}, by_person
    assert {p["visit_occurrence_id"] for p in read_csv(out / "procedure_occurrence.csv")} == {"7000", "7010", ""}


def test_a_person_folder_renamed_to_another_spelling_of_its_id_is_told_its_procedures_new_proc_ids(released, tmp_path):
    """A person folder renamed 000101 -> 101 (the same OMOP person) gave its sessions and accession new proc_ids (a
    proc_id is kept per record, a record per folder name), exit 0, without a word: the procedure rows the site made
    from the earlier registries named ids no registry listed any more. Told (exit 1), naming both ids; the other
    persons' proc_ids and the visits (read with the id as OMOP reads it) are as before."""
    site, db, out = released
    p0 = sitegen.person_ids(1)[0]
    short = str(int(p0))
    before = {(r["group_id"], r["person_id"]): (r["proc_id"], r["visit_id"])
              for r in read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")}
    (site / p0).rename(site / short)
    for name in ("waveform_registry.csv", "image_registry.csv"):
        (site / name).unlink()  # (the site's own registries name the old paths)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    again = tmp_path / "again"
    done = cli("registry", "--db", str(db), "--out", str(again), "--omop")
    assert done.returncode == 1, done.stderr
    old_image = next(v[0] for (g, p), v in before.items() if p == p0 and v[0].startswith("2000"))
    assert "person folder named otherwise" in done.stderr and f"{p0}/ had {old_image}" in done.stderr, done.stderr
    after = {(r["group_id"], r["person_id"]): (r["proc_id"], r["visit_id"])
             for r in read_csv(again / "waveform_registry.csv") + read_csv(again / "image_registry.csv")}
    assert {k: v for k, v in after.items() if k[1] != short} == {k: v for k, v in before.items() if k[1] != p0}
    assert {(g, v[1]) for (g, p), v in after.items() if p == short} == {(g, v[1]) for (g, p), v in before.items() if p == p0}
    # the first version's registries: the same ids as before, told of the other spelling too
    first = query(db, "SELECT label FROM versions ORDER BY label")[0][0]
    old = tmp_path / "old"
    done = cli("registry", "--db", str(db), "--out", str(old), "--version", first)
    assert done.returncode == 1 and "person folder named otherwise" in done.stderr, done.stderr
    assert {(r["group_id"], r["person_id"]): (r["proc_id"], r["visit_id"])
            for r in read_csv(old / "waveform_registry.csv") + read_csv(old / "image_registry.csv")} == before


def _registry_of_visits(tmp_path, visits):
    """`registry` of a one-person site whose visit_occurrence.csv holds these rows (a format string of {p}, the person
    id, after the header): the command's outcome and the rows it wrote."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site, persons=1)
    (p0,) = sitegen.person_ids(1)
    (site / "OMOP" / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_start_datetime,visit_end_date,"
        "visit_end_datetime,visit_type_concept_id\n" + visits.format(p=p0))
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    done = cli("registry", "--db", str(db), "--out", str(out))
    rows = [r for name in ("waveform_registry.csv", "image_registry.csv") if (out / name).exists()
            for r in read_csv(out / name)]
    return done, rows


def test_of_visits_starting_together_the_smallest_id_is_taken_as_a_number(tmp_path):
    """Two visits of a person starting at the same time both enclose the capture: the smallest id was taken as text,
    so visit 10 came before visit 9 (and 100 before 99)."""
    together = "9201,2023-12-30,2023-12-30 00:00:00,2024-02-01,2024-02-01 00:00:01,32817\n"
    done, rows = _registry_of_visits(tmp_path, "10,{p}," + together + "9,{p}," + together)
    assert done.returncode == 0, done.stderr
    assert rows and {r["visit_id"] for r in rows} == {"9"}


def test_a_visit_that_ends_before_it_starts_is_told_not_left_enclosing_nothing_silently(tmp_path):
    """A visit whose end an ETL or a date shift put before its start enclosed no capture: its files' visit_id was
    empty, exit 0, without a word. Now registry names it, as it names a visit whose dates it cannot read (exit 1)."""
    done, _ = _registry_of_visits(
        tmp_path, "5,{p},9201,2024-02-01,2024-02-01 00:00:00,2023-12-30,2023-12-30 00:00:01,32817\n")
    assert done.returncode == 1, done.stderr
    assert "an end before the start" in done.stderr and "visit 5: start '2024-02-01 00:00:00'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_visit_datetime_with_a_time_zone_is_told_not_read_as_local_time_silently(tmp_path):
    """A visit_occurrence.csv whose datetimes a database export wrote in UTC (2023-12-30T00:00:00Z) or with an offset
    was read as the clock time written, the zone dropped, exit 0, without a word: the capture times are the headers'
    local clock, so files near the visit's start or end took another visit. Now registry says so (exit 1)."""
    done, rows = _registry_of_visits(
        tmp_path, "7,{p},9201,2023-12-30,2023-12-30T00:00:00Z,2024-02-01,2024-02-01T00:00:01+01:00,32817\n")
    assert done.returncode == 1, done.stderr
    assert "1 visit of persons with registry rows" in done.stderr and "with a time zone" in done.stderr, done.stderr
    assert "visit 7: start '2023-12-30T00:00:00Z'" in done.stderr, done.stderr
    assert rows and {r["visit_id"] for r in rows} == {"7"}


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_values_filled_in_by_hand_that_a_new_registry_leaves_empty_are_told(tmp_path, delimiter):
    """The undated-session warning suggests filling in datetime and visit_id in waveform_registry.csv; writing the
    registries again into that folder replaced the filled-in cells by empty ones, exit 0 or 1 for other reasons,
    without a word. Now registry names the rows and the values (a spreadsheet's BOM and CRLF read too, and the
    semicolons it saves in much of Europe: read as comma-delimited, such a file was replaced without a word)."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site, persons=1)
    (site / "OMOP" / "visit_occurrence.csv").write_text(
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_start_datetime,visit_end_date,"
        "visit_end_datetime,visit_type_concept_id\n")
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    assert cli("registry", "--db", str(db), "--out", str(out)).returncode == 0
    path = out / "waveform_registry.csv"
    rows = read_csv(path)
    assert rows and not any(r["visit_id"] for r in rows)
    rows[0]["visit_id"] = "4242"
    with path.open("w", newline="", encoding="utf-8-sig") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\r\n", delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert f"file_id {rows[0]['file_id']}: visit_id '4242'" in done.stderr and "1 row" in done.stderr, done.stderr
    again = cli("registry", "--db", str(db), "--out", str(out))  # (nothing filled in now: nothing to tell)
    assert again.returncode == 0, again.stderr


def test_rows_and_columns_a_site_added_by_hand_are_told_when_the_registry_is_written_again(tmp_path):
    """A row a site typed into waveform_registry.csv in --out (a file_id of no file in the manifest: a file delivered
    otherwise) and a column it added (notes) were gone after `registry` wrote the folder again, exit 0, without a
    word. Now registry names them, with the count and what to do (exit 1); a registry as this tool wrote it is not."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site, persons=1)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    first = cli("registry", "--db", str(db), "--out", str(out))
    path = out / "waveform_registry.csv"
    rows = read_csv(path)
    assert rows, first.stderr
    rows = [{**r, "notes": ""} for r in rows]
    rows[0]["notes"] = "checked by JD"
    rows.append({**rows[0], "file_id": "990001", "src_file": "/elsewhere/x.dat", "trg_file": "x.dat", "notes": ""})
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 1, done.stderr
    assert "1 row" in done.stderr and "file_id 990001" in done.stderr, done.stderr
    assert "'notes'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    again = cli("registry", "--db", str(db), "--out", str(out))  # (as the tool wrote it: nothing to tell)
    assert again.returncode == first.returncode, again.stderr


def test_a_row_typed_in_with_the_file_id_of_an_earlier_versions_file_is_told_not_dropped_silently(tmp_path):
    """A row a site typed into waveform_registry.csv whose file_id is that of a file an earlier version had (a file
    since removed; its own src_file elsewhere) was taken for the manifest's row and dropped, exit 0, without a word,
    when `registry` wrote the folder again. Now it is named (exit 1); the manifest's own row of the removed file,
    written before (at the site's old root too), is not."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site, persons=1)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    assert cli("registry", "--db", str(db), "--out", str(out)).returncode == 0
    path = out / "waveform_registry.csv"
    rows = read_csv(path)
    gone = next(r for r in rows if r["trg_file"].endswith(".dat"))
    (site / gone["trg_file"]).unlink()
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    moved = site.rename(tmp_path / "moved")  # (the old rows name the old root: still the manifest's own)
    typed = {**gone, "src_file": "/mnt/ecg-export/9000.xml", "trg_file": f"{gone['person_id']}/Waveforms/9000.xml"}
    with path.open("a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow(typed)
    done = cli("registry", "--db", str(db), "--out", str(out), "--site", str(moved))
    assert done.returncode == 1, done.stderr
    assert f"1 row that is not the manifest's (file_id {gone['file_id']} src_file '/mnt/ecg-export/9000.xml')" \
        in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    again = cli("registry", "--db", str(db), "--out", str(out), "--site", str(moved))  # (as the tool wrote it)
    assert "not the manifest's" not in again.stderr, again.stderr


def test_registry_of_a_site_given_with_site_names_the_files_where_they_are_now(tmp_path):
    """`registry --site NEW` after the site moved read the headers at NEW but wrote src_file at the root the manifest
    recorded, a folder that holds nothing any more, exit 0. src_file is where the file is: under NEW."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site, persons=1)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    moved = site.rename(tmp_path / "moved")
    done = cli("registry", "--db", str(db), "--out", str(out), "--site", str(moved))
    assert done.returncode == 0, done.stderr
    rows = [r for name in ("waveform_registry.csv", "image_registry.csv") for r in read_csv(out / name)]
    assert rows and all(r["src_file"].startswith(f"{moved.as_posix()}/") for r in rows), rows[0]
    assert all(Path(r["src_file"]).is_file() for r in rows)


def test_a_visit_with_a_time_zone_names_the_registry_rows_whose_visit_id_the_zone_decides(tmp_path):
    """The time-zone warning named the visits (the table's fault, told once) but not which registry rows it put in
    doubt: a site had to work out itself which files were captured near such a visit's start or end. Now it says how
    many rows were captured within a zone's reach (14 hours) of one, naming some; and that none were, where none."""
    near, rows = _registry_of_visits(
        tmp_path / "near", "7,{p},9201,2024-01-01,2024-01-01T00:00:00Z,2024-01-01,2024-01-01T23:59:59Z,32817\n")
    assert near.returncode == 1, near.stderr
    assert rows and "registry rows were captured within 14 hours of such a start or end" in near.stderr, near.stderr
    named = near.stderr.split("within 14 hours")[1]
    assert "/Images/" in named or "/Waveforms/" in named, near.stderr
    far, _ = _registry_of_visits(
        tmp_path / "far", "7,{p},9201,2023-12-01,2023-12-01T00:00:00Z,2024-02-01,2024-02-01T00:00:01Z,32817\n")
    assert far.returncode == 1, far.stderr
    assert "no registry row was captured within 14 hours of such a start or end" in far.stderr, far.stderr


def test_a_registry_in_out_saved_as_utf16_is_refused_not_replaced_with_its_rows_lost(tmp_path):
    """A waveform_registry.csv in --out saved as UTF-16 without a byte-order mark, with a row typed in, could not be
    read, so nothing was compared: it was replaced, the row gone, exit 0, without a word. Now registry refuses (exit 2,
    nothing written, naming the file and what to do). With the mark (a spreadsheet's "Unicode Text", tab-delimited)
    it is read, as the mark makes it unambiguous (it was refused as well): the row typed in is told, as in a UTF-8
    one, exit 1, and the registry written as UTF-8. An empty line (or a spreadsheet's ",,,,") between its rows is no
    row typed in: not told as one."""
    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site, persons=1)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    first = cli("registry", "--db", str(db), "--out", str(out))
    path = out / "waveform_registry.csv"
    text = path.read_text(encoding="utf-8")
    typed = "990001,2001000000,000101,900001,,2024-01-01 08:00:00,/elsewhere/x.dat,x.dat\n"
    path.write_text(text + typed, encoding="utf-16-le")
    before = path.read_bytes()
    done = cli("registry", "--db", str(db), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "waveform_registry.csv, which cannot be read as a registry" in done.stderr and "UTF-8" in done.stderr
    assert "Traceback" not in done.stderr and path.read_bytes() == before
    for encoding in ("utf-16", "utf-16-be"):  # (Python's utf-16 writes the mark; utf-16-be does not: it is added)
        path.write_bytes(("" if encoding == "utf-16" else "\ufeff").encode(encoding)
                         + (text + typed).replace(",", "\t").replace("\n", "\r\n").encode(encoding))
        marked = cli("registry", "--db", str(db), "--out", str(out))
        assert marked.returncode == 1 and "not the manifest's" in marked.stderr, marked.stderr
        assert "cannot be read as a registry" not in marked.stderr
        assert path.read_text(encoding="utf-8") == text
    path.write_text(text + "\n,,,,,,,\n", encoding="utf-8")
    blank = cli("registry", "--db", str(db), "--out", str(out))
    assert blank.returncode == first.returncode and "not the manifest's" not in blank.stderr, blank.stderr


@pytest.mark.parametrize("lock", [".~lock.waveform_registry.csv#", "~$image_registry.csv"])
def test_a_registry_open_in_a_spreadsheet_is_not_replaced_under_it(released, lock):
    """`registry` into a folder whose waveform_registry.csv a site had open in LibreOffice (or Excel) to fill in
    values replaced it, exit 0: the spreadsheet's next save put its copy back over the new registries. Now it is
    refused (exit 2, nothing written), naming the lock file and what to do; without it the registry is written."""
    _, db, out = released
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / lock).write_text("J,host,/home/j,07.12.2026 07:00;")
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 2 and "is open in a spreadsheet" in done.stderr and lock in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != lock} == before
    (out / lock).unlink()
    assert cli("registry", "--db", str(db), "--out", str(out), "--omop").returncode == 0


def test_a_waveform_files_row_typed_into_the_image_registry_is_told_not_dropped_silently(released):
    """A row naming a waveform file (its file_id and src_file) that a site copied into image_registry.csv, two
    registries naming the same file, was taken for the manifest's own and dropped, exit 0, without a word."""
    _, db, out = released
    wave = read_csv(out / "waveform_registry.csv")[0]
    with (out / "image_registry.csv").open("a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow(["99", *(wave[c] for c in list(wave)[:7]), ""])
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 1, done.stderr
    assert f"image_registry.csv had 1 row that is not the manifest's (file_id {wave['file_id']} " in done.stderr, \
        done.stderr


def test_a_registry_after_a_run_opens_no_header_and_each_earlier_registry_once(tmp_path):
    """A run that validates caches every header's facts by content (issue 15: one read per file): the registries
    after it open no WFDB, EDF or DICOM file of the site. Written again into the same folder, the registries there
    before were each opened three times (the proc_ids checked, the values filled in by hand, the rows added by
    hand): now once."""
    from test_one_read import _opens

    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    headers = {p.relative_to(tmp_path).as_posix() for p in site.rglob("*")
               if p.suffix.lower() in (".hea", ".dcm", ".edf", ".bdf")}
    assert headers
    for _ in range(2):
        opens = _opens(tmp_path, tmp_path, "registry", "--db", str(db), "--out", str(out), "-q")
        assert not headers & set(opens), sorted(headers & set(opens))[:3]
    assert {path: n for path, n in opens.items() if path.startswith("release/") and path.endswith("registry.csv")} == {
        "release/waveform_registry.csv": 1, "release/image_registry.csv": 1}


def test_a_first_registry_reads_the_header_facts_once(tmp_path, monkeypatch):
    """A first `registry` after a run that cached every header's facts builds without the lock, meets proc_ids to
    allocate, and builds again under it: the first build read every header's facts from the manifest and dated every
    row before it found the proc_ids to give (a 100k-file site: ~0.5 s of CPU done twice)."""
    from chorus_batch.registries import make_registries
    from chorus_batch.store.validation import ValidationCache

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    clean_site(site)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode == 0
    reads = []
    real = ValidationCache.known_facts
    monkeypatch.setattr(ValidationCache, "known_facts", lambda self, wanted: reads.append(wanted.height) or real(self, wanted))
    registries, written = make_registries(str(db), tmp_path / "release", argv=["registry"])
    assert registries.new_proc_ids > 0 and len(written) == 2  # (it did build twice: the second under the lock)
    assert len(reads) == 1 and reads[0] > 0, reads


def test_folders_named_so_a_spreadsheet_runs_them_as_formulas_have_no_rows_and_are_told(tmp_path):
    """A person folder named =1+2, +cmd, -rf or @x (not the integer person_id the linkage procedure fixes) was written
    into person_id and trg_file, and a session or accession folder so named into group_id, exit 0 or 1: a site opening
    its registry in Excel ran them as formulas. Now those files have no row, proc_id or procedure, and the folders are
    named (exit 1)."""
    import shutil

    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site)
    p0, p1, p2 = sitegen.person_ids(3)
    for name, person in (("=1+2", p0), ("+cmd", p1), ("-rf", p2), ("@x", p0)):
        shutil.copytree(site / person, site / name)
    session = next((site / p1 / "Waveforms" / "EEG").iterdir())
    renamed = session.with_name("=" + session.name)
    session.rename(renamed)
    for f in renamed.iterdir():
        f.rename(renamed / ("=" + f.name))
    accession = next((site / p2 / "Images" / "CT").iterdir())
    accession.rename(accession.with_name("@" + accession.name))
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    done = cli("registry", "--db", str(db), "--out", str(out), "--omop")
    assert done.returncode == 1, done.stderr
    rows = read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")
    assert rows and {r["person_id"] for r in rows} == {p0, p1, p2}
    risky = [cell for r in rows + read_csv(out / "procedure_occurrence.csv") for cell in r.values()
             if cell[:1] in ("=", "+", "-", "@")]
    assert risky == []
    assert "4 person folders of version" in done.stderr and "(e.g. +cmd/, -rf/, =1+2/)" in done.stderr, done.stderr
    assert "2 sessions or accessions of version" in done.stderr, done.stderr
    assert f"{p1}/Waveforms/EEG/={session.name}/" in done.stderr and f"{p2}/Images/CT/@{accession.name}/" in done.stderr
    assert "Traceback" not in done.stderr
    # no proc_id was given to them
    given = query(db, "SELECT count(*) FROM registry WHERE proc_id IS NOT NULL")[0][0]
    assert given == len({r["proc_id"] for r in rows})


def test_a_second_sites_registry_into_the_same_out_folder_is_refused_not_written_over_the_first(tmp_path):
    """Two sites (two manifests) writing `registry --out` into one folder: the second's proc_ids, from the same default
    ranges, were ids its manifest gave too, so the first site's registries were replaced, every row gone, exit 1 with
    a warning of rows "added by hand perhaps". Now it is refused (exit 2), nothing written; the first site writes there
    again as before."""
    out = tmp_path / "release"
    made = {}
    for name, persons in (("a", 1), ("b", 2)):  # (b gave every proc_id a did)
        site, db = tmp_path / name, tmp_path / f"{name}.sqlite"
        clean_site(site, persons=persons)
        if name == "b":  # (another site's persons)
            for person in sitegen.person_ids(persons):
                (site / person).rename(site / person.replace("01", "02", 1))
        assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
        assert cli("registry", "--db", str(db), "--out", str(tmp_path / f"own-{name}")).returncode in (0, 1)
        made[name] = db
    assert cli("registry", "--db", str(made["a"]), "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    done = cli("registry", "--db", str(made["b"]), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "none of whose" in done.stderr and "nothing was written" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = cli("registry", "--db", str(made["a"]), "--out", str(out))
    assert again.returncode == 0, again.stderr


def test_an_image_rows_image_registry_id_stays_when_files_are_added_before_it_or_removed(tmp_path):
    """image_registry_id, the Imaging SOP's AUTO_INCREMENT primary key, was the row's number in path order: an accession
    added under a folder that sorts first (or a file removed) renumbered every row after it between two registries of
    the site. Now a file keeps its id while its path lives (its file_id), rows in that order: new files come last."""
    import shutil

    site, db, out = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "release"
    clean_site(site, persons=2)
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    assert cli("registry", "--db", str(db), "--out", str(out)).returncode == 0
    before = {r["file_id"]: r["image_registry_id"] for r in read_csv(out / "image_registry.csv")}
    p0 = sitegen.person_ids(1)[0]
    accession = next((site / p0 / "Images" / "CT").iterdir())
    shutil.copytree(accession, accession.with_name("1" + accession.name))  # (sorts before it)
    gone = next(p for p in sorted((site / sitegen.person_ids(2)[1]).rglob("*.dcm")))
    gone.unlink()
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    assert cli("registry", "--db", str(db), "--out", str(out)).returncode in (0, 1)
    rows = read_csv(out / "image_registry.csv")
    after = {r["file_id"]: r["image_registry_id"] for r in rows}
    kept = set(before) & set(after)
    assert len(kept) == len(before) - 1 and len(after) == len(before) - 1 + 3
    assert {f: after[f] for f in kept} == {f: before[f] for f in kept}
    ids = [int(r["image_registry_id"]) for r in rows]
    assert ids == sorted(set(ids)) and ids[-3:] == [int(r["file_id"]) for r in rows[-3:]]


def test_a_person_folder_renamed_and_renamed_back_is_told_no_longer_once_its_first_ids_are_back(released, tmp_path):
    """A person folder renamed 000101 -> 101 and back to 000101 has its first proc_ids again, those of every registry
    and procedure row made before the rename: the rename warning was said at every later `registry`, exit 1, for good.
    The registries of the version in between (and of the first, whose folder was renamed after it) are still told."""
    site, db, out = released
    p0 = sitegen.person_ids(1)[0]
    short = str(int(p0))
    before = {(r["group_id"], r["person_id"]): r["proc_id"]
              for r in read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")}
    for name in ("waveform_registry.csv", "image_registry.csv"):
        (site / name).unlink()  # (the site's own registries name the old paths)
    (site / p0).rename(site / short)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    renamed = cli("registry", "--db", str(db), "--out", str(tmp_path / "renamed"), "--omop")
    assert renamed.returncode == 1 and "person folder named otherwise" in renamed.stderr, renamed.stderr
    (site / short).rename(site / p0)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    back = tmp_path / "back"
    done = cli("registry", "--db", str(db), "--out", str(back), "--omop")
    assert done.returncode == 0 and "named otherwise" not in done.stderr, done.stderr
    assert {(r["group_id"], r["person_id"]): r["proc_id"]
            for r in read_csv(back / "waveform_registry.csv") + read_csv(back / "image_registry.csv")} == before
    labels = [v for (v,) in query(db, "SELECT label FROM versions ORDER BY label")]
    for label in labels[:-1]:  # the one with the other spelling, and the first, renamed after it
        told = cli("registry", "--db", str(db), "--out", str(tmp_path / label), "--version", label)
        assert told.returncode == 1 and "person folder named otherwise" in told.stderr, (label, told.stderr)


def _merge_procedures(site: Path, out: Path) -> None:
    """The site's OMOP/procedure_occurrence.csv with the rows `registry --omop` wrote in `out` added."""
    table = site / "OMOP" / "procedure_occurrence.csv"
    rows = read_csv(table)
    fields = list(rows[0])
    merged = rows + [{k: r.get(k, "") for k in fields} for r in read_csv(out / "procedure_occurrence.csv")]
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(merged)


def test_linkage_rows_of_ids_the_manifest_never_gave_in_its_range_are_refused_as_linkage_rows(released, tmp_path):
    """procedure_occurrence.csv holding linkage rows (concept 4180938 / 4141651) in the registry's range that this
    manifest never gave (another manifest's `registry --omop`, a site's own registry with the SOP's example ranges) was
    refused as "the site's own procedure ids": said as linkage rows now, with what to do (the site's EHR rows in the range:
test_a_range_the_sites_procedures_use_is_refused)."""
    site, db, out = released
    # (rows of both ranges: the waveform range's were told only once the image range's were removed)
    ids = {r["proc_id"] for name in ("image_registry.csv", "waveform_registry.csv") for r in read_csv(out / name)}
    rows = [{**r, "procedure_occurrence_id": str(int(r["procedure_occurrence_id"]) + 500)}
            for r in read_csv(out / "procedure_occurrence.csv") if r["procedure_occurrence_id"] in ids]
    table = site / "OMOP" / "procedure_occurrence.csv"
    fields = list(read_csv(table)[0])
    with table.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerows([{k: r.get(k, "") for k in fields} for r in rows])
    # (a new manifest of the site: the ids of the rows are none of its own)
    fresh = tmp_path / "fresh.sqlite"
    assert cli("run", "-q", "--site", str(site), "--db", str(fresh)).returncode in (0, 1)
    refused = cli("registry", "--db", str(fresh), "--out", str(tmp_path / "r"), "--omop")
    assert refused.returncode == 2, refused.stderr
    assert "linkage row" in refused.stderr and "4180938" in refused.stderr and "never gave" in refused.stderr
    assert "remove those rows" in refused.stderr and "site's own procedure ids do not use" not in refused.stderr
    # both ranges at once, and the manifest that gave the ids first among the ways out, with the run to record
    assert "in the image range" in refused.stderr and "in the waveform range" in refused.stderr, refused.stderr
    assert "registry --db <that manifest>" in refused.stderr and "`chorus-batch run`" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert query(fresh, "SELECT count(*) FROM registry WHERE proc_id IS NOT NULL") == [(0,)]


def test_linkage_rows_of_a_person_folder_renamed_to_another_person_say_where_the_files_are(released, tmp_path):
    """A person folder renamed to another person_id after the site merged the procedure rows: its sessions are the
    new person's, under new proc_ids, and the old rows link no file. The warning said "its files were removed since,
    or have no row as said above" (nothing was said above, nothing removed); it names the folder they are under now
    and their new ids."""
    site, db, out = released
    _merge_procedures(site, out)
    p0 = sitegen.person_ids(1)[0]
    (site / p0).rename(site / "000999")
    for name in ("waveform_registry.csv", "image_registry.csv"):
        (site / name).unlink()
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    told = cli("registry", "--db", str(db), "--out", str(tmp_path / "again"), "--omop")
    assert told.returncode == 1 and "linking no file delivered" in told.stderr, told.stderr
    assert "all are now under another person folder" in told.stderr and "now under 000999/ as" in told.stderr
    assert "as said above" not in told.stderr and "`chorus-batch run`" in told.stderr


def test_linkage_rows_of_a_session_whose_files_were_removed_are_told(released, tmp_path):
    """A person's files removed after the site added the procedure rows `registry --omop` made: their proc_ids stay
    theirs (never given to another session; the linkage procedure wants them distinct per procedure), but the site's
    procedure_occurrence.csv kept rows of procedures linking no file delivered, exit 0, without a word. Told, naming
    the ids; the registry after the rows are removed is clean again."""
    import shutil

    site, db, out = released
    _merge_procedures(site, out)
    p0 = sitegen.person_ids(1)[0]
    gone = sorted({r["proc_id"] for r in read_csv(out / "waveform_registry.csv") + read_csv(out / "image_registry.csv")
                   if r["person_id"] == p0})
    shutil.rmtree(site / p0)
    for name in ("waveform_registry.csv", "image_registry.csv"):
        (site / name).unlink()  # (the site's own registries name the removed files)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    told = cli("registry", "--db", str(db), "--out", str(tmp_path / "again"), "--omop")
    assert told.returncode == 1 and "linking no file delivered" in told.stderr and gone[0] in told.stderr, told.stderr
    assert "files were removed since" in told.stderr and "now under" not in told.stderr
    rows = read_csv(tmp_path / "again" / "waveform_registry.csv") + read_csv(tmp_path / "again" / "image_registry.csv")
    assert rows and not {r["proc_id"] for r in rows} & set(gone)
    # the rows removed: nothing to tell; the ids stay given (the next new session gets none of them)
    table = site / "OMOP" / "procedure_occurrence.csv"
    kept = [r for r in read_csv(table) if r["procedure_occurrence_id"] not in gone]
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(kept[0]))
        writer.writeheader()
        writer.writerows(kept)
    assert cli("run", "-q", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    clean = cli("registry", "--db", str(db), "--out", str(tmp_path / "third"), "--omop")
    assert clean.returncode == 0, clean.stderr
    assert {str(p) for (p,) in query(db, "SELECT proc_id FROM registry WHERE proc_id IS NOT NULL")} >= set(gone)
