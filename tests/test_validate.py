"""validate: the rules engine over real WFDB, DICOM and OMOP files (built by sitegen)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from chorus_batch.sources import FsspecSource, LocalSource
from chorus_batch.validate import (
    FACTS_SCHEMA,
    FINDINGS_SCHEMA,
    RULES,
    check,
    extract_facts,
    facts_needed,
)

import sitegen
from sitegen import OMOP_COLUMNS, csv_text, dicom_bytes, dicom_name, scan_current, sessions_of, write

# wfdb 4.x (the writers sitegen uses) warns about pandas deprecations.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")

P0, P1, P2 = sitegen.person_ids(3)
S0, S1 = sessions_of(P0, 0), sessions_of(P1, 1)
DAY0 = sitegen.person_day(0)
SINGLE = f"{P0}/Waveforms/{S0['single']}/{S0['single']}"  # + .hea / .dat
MULTI = f"{P0}/Waveforms/{S0['multi']}/{S0['multi']}"
FLAT = f"{P0}/Waveforms/{S0['flat_record']}"
SERIES1 = f"{P0}/Images/study_{DAY0}/series_1"
DCM = f"{SERIES1}/{dicom_name(P0, DAY0, '081500', 'CT', 1, 1)}"
LINKS = "OMOP/waveform_visit_links.csv"


def validate(root: Path, workers: int = 2) -> pl.DataFrame:
    current = scan_current(root)
    facts = extract_facts(LocalSource(root), facts_needed(current), workers=workers)
    return check(current, facts)


def found(root: Path) -> set[tuple[str, str]]:
    return {(rule, srcfile) for rule, srcfile in validate(root).select("rule", "srcfile").rows()}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "site"
    sitegen.build_clean_site(root)
    return root


@pytest.fixture
def clean(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "site"
    shutil.copytree(template, root)
    return root


# ----------------------------------------------------------------------------- mutations


def remove(*rels: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        for rel in rels:
            path = root / rel
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return go


def add(rel: str, data: bytes | str = b"x") -> Callable[[Path], None]:
    return lambda root: write(root, rel, data) and None


def edit(rel: str, change: Callable[[str], str]) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / rel
        path.write_text(change(path.read_text()))
    return go


def rename(rel: str, new: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        (root / new).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).rename(root / new)
    return go


def truncate(rel: str, by: int) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / rel
        path.write_bytes(path.read_bytes()[:-by])
    return go


def table(name: str, columns: list[str], rows: list[list[object]], delimiter: str = ",") -> Callable[[Path], None]:
    return add(f"OMOP/{name}.csv", csv_text(columns, rows, delimiter))


def persons_csv(ids: list[str]) -> Callable[[Path], None]:
    return table("person", OMOP_COLUMNS["person"], sitegen.omop_rows("person", ids))


def add_link(visit: object, session: str) -> Callable[[Path], None]:
    return edit(LINKS, lambda text: text + f"{visit},{session}\n")


def drop_line(rel: str, needle: str) -> Callable[[Path], None]:
    return edit(rel, lambda text: "".join(line for line in text.splitlines(True) if needle not in line))


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        for step in steps:
            step(root)
    return go


OTHER_SESSION = f"{P0}_{DAY0}_230000"

# (case id, mutation of the clean site, the exact findings (rule, srcfile) it must give)
CASES: list[tuple[str, Callable[[Path], None], set[tuple[str, str]]]] = [
    ("no_omop", remove("OMOP"), {("layout.no_omop", "OMOP/")}),
    ("root_file", add("notes.txt"), {("layout.root_file", "notes.txt")}),
    ("unexpected_folder", both(add("scratch/a.txt"), add("scratch/b/c.txt")),
     {("layout.unexpected_folder", "scratch/")}),
    ("person_no_data", both(add("000104/Metadata/consent.json", "{}"), persons_csv([P0, P1, P2, "000104"])),
     {("layout.person_no_data", "000104/")}),
    ("person_file", add(f"{P0}/readme.txt"), {("layout.person_file", f"{P0}/readme.txt")}),
    ("person_subfolder", both(add(f"{P0}/Labs/a.csv", "a"), add(f"{P0}/Labs/b.csv", "b")),
     {("layout.person_subfolder", f"{P0}/Labs/")}),
    ("missing_table", remove("OMOP/measurement.csv"), {("omop.missing_table", "OMOP/measurement.csv")}),
    ("optional_table", remove("OMOP/note_nlp.csv"), {("omop.optional_table_missing", "OMOP/note_nlp.csv")}),
    ("specimen", table("specimen", ["specimen_id", "person_id"], [[1, P0]]), {("omop.specimen", "OMOP/specimen.csv")}),
    ("omop_unexpected", both(add("OMOP/readme.txt"), add("OMOP/old/person.csv", "person_id\n1\n")),
     {("omop.unexpected_file", "OMOP/readme.txt"), ("omop.unexpected_file", "OMOP/old/person.csv")}),
    ("omop_unreadable", add("OMOP/measurement.csv", b"measurement_id,valeur_mesur\xe9e\n1,2\n"),
     {("omop.unreadable", "OMOP/measurement.csv")}),
    ("omop_delimiter", table("observation", OMOP_COLUMNS["observation"],
                             sitegen.omop_rows("observation", [P0]), delimiter="\t"),
     {("omop.delimiter", "OMOP/observation.csv")}),
    ("omop_no_header", add("OMOP/drug_exposure.csv", "1,101,19019073,2024-01-01,5000\n"),
     {("omop.no_header", "OMOP/drug_exposure.csv")}),
    ("omop_missing_key", table("condition_occurrence", ["person_id", "condition_concept_id"], [[P0, 1]]),
     {("omop.missing_key", "OMOP/condition_occurrence.csv")}),
    ("links_missing", remove(LINKS), {("links.missing", LINKS)}),
    ("links_columns", table("waveform_visit_links", ["visit_id", "session_name"], [[5000, S0["single"]]]),
     {("links.columns", LINKS)}),
    ("unlinked_folder_session", drop_line(LINKS, S0["multi"]),
     {("links.unlinked_session", f"{P0}/Waveforms/{S0['multi']}/")}),
    ("unlinked_flat_session", drop_line(LINKS, S0["flat"]),
     {("links.unlinked_session", f"{FLAT}.dat")}),
    ("unknown_session", add_link(5000, OTHER_SESSION), {("links.unknown_session", LINKS)}),
    ("unknown_visit", add_link(9999, S0["single"]), {("links.unknown_visit", LINKS)}),
    ("no_omop_row", persons_csv([P0, P1]), {("person.no_omop_row", f"{P2}/")}),
    ("no_folder", persons_csv([P0, P1, P2, "000199"]), {("person.no_folder", "OMOP/person.csv")}),
    ("bad_header", add(f"{SINGLE}.hea", "this is not a WFDB header\n"), {("wfdb.bad_header", f"{SINGLE}.hea")}),
    ("record_name", edit(f"{SINGLE}.hea", lambda t: t.replace(S0["single"] + " ", "other ", 1)),
     {("wfdb.record_name", f"{SINGLE}.hea")}),
    ("format", edit(f"{SINGLE}.hea", lambda t: t.replace(".dat 16 ", ".dat 999 ")), {("wfdb.format", f"{SINGLE}.hea")}),
    ("missing_dat", remove(f"{SINGLE}.dat"), {("wfdb.missing_dat", f"{SINGLE}.hea")}),
    ("dat_size_212", truncate(f"{MULTI}_0001.dat", 1), {("wfdb.dat_size", f"{MULTI}_0001.dat")}),
    ("dat_size_16", add(f"{SINGLE}.dat", bytes(999)), {("wfdb.dat_size", f"{SINGLE}.dat")}),
    ("unreferenced_dat", add(f"{SINGLE}_old.dat", bytes(10)), {("wfdb.unreferenced_dat", f"{SINGLE}_old.dat")}),
    ("missing_segment", remove(f"{MULTI}_0002.hea"),
     {("wfdb.missing_segment", f"{MULTI}.hea"), ("wfdb.unreferenced_dat", f"{MULTI}_0002.dat")}),
    ("segment_length", edit(f"{MULTI}.hea", lambda t: t.replace(" 151", " 161").replace("_0002 50", "_0002 60")),
     {("wfdb.segment_length", f"{MULTI}_0002.hea")}),
    ("record_length", edit(f"{MULTI}.hea", lambda t: t.replace(" 151", " 999")),
     {("wfdb.segment_length", f"{MULTI}.hea")}),
    ("no_header", add(f"{P0}/Waveforms/{OTHER_SESSION}/{OTHER_SESSION}.dat", bytes(8)),
     {("wfdb.no_header", f"{P0}/Waveforms/{OTHER_SESSION}/"),
      ("links.unlinked_session", f"{P0}/Waveforms/{OTHER_SESSION}/")}),
    ("numerics_name", add(f"{SINGLE}_numerics.csv", "t,HR\n0,80\n"),
     {("wfdb.numerics_name", f"{SINGLE}_numerics.csv")}),
    ("records_missing", remove(f"{P0}/Waveforms/RECORDS"), {("records.missing", f"{P0}/Waveforms/RECORDS")}),
    ("records_session_missing", remove(f"{P1}/Waveforms/{S1['multi']}/RECORDS"),
     {("records.unlisted", f"{P1}/Waveforms/{S1['multi']}/{S1['multi']}.hea")}),
    ("records_unlisted", drop_line(f"{P0}/Waveforms/RECORDS", S0["flat_record"]),
     {("records.unlisted", f"{FLAT}.hea")}),
    ("records_absent", edit(f"{P0}/Waveforms/RECORDS", lambda t: t + OTHER_SESSION + "\n"),
     {("records.absent", f"{P0}/Waveforms/RECORDS")}),
    ("records_unreadable", add(f"{P0}/Waveforms/RECORDS", b"\x00\x01\x02\xff"),
     {("records.unreadable", f"{P0}/Waveforms/RECORDS")}),
    ("dicom_unreadable", add(DCM, os.urandom(300)), {("dicom.unreadable", DCM)}),
    ("outside_series", rename(DCM, f"{P0}/Images/study_{DAY0}/{DCM.rsplit('/', 1)[1]}"),
     {("dicom.outside_series", f"{P0}/Images/study_{DAY0}/{DCM.rsplit('/', 1)[1]}")}),
    ("name_instance", rename(DCM, f"{SERIES1}/{dicom_name(P0, DAY0, '081500', 'CT', 1, 3)}"),
     {("dicom.name_mismatch", f"{SERIES1}/{dicom_name(P0, DAY0, '081500', 'CT', 1, 3)}")}),
    ("name_modality_series", rename(DCM, f"{SERIES1}/{dicom_name(P0, DAY0, '081500', 'MR', 2, 1)}"),
     {("dicom.name_mismatch", f"{SERIES1}/{dicom_name(P0, DAY0, '081500', 'MR', 2, 1)}")}),
    ("datetime", rename(DCM, f"{SERIES1}/{dicom_name(P0, DAY0, '090000', 'CT', 1, 1)}"),
     {("dicom.datetime_mismatch", f"{SERIES1}/{dicom_name(P0, DAY0, '090000', 'CT', 1, 1)}")}),
    ("patient_id", add(DCM, dicom_bytes(person_id="999999", series=1, instance=1, study_date=DAY0,
                                        study_time="081500")),
     {("dicom.patient_id", DCM)}),
    ("person_mismatch", rename(DCM, f"{SERIES1}/{dicom_name(P1, DAY0, '081500', 'CT', 1, 1)}"),
     {("path.person_mismatch", f"{SERIES1}/{dicom_name(P1, DAY0, '081500', 'CT', 1, 1)}")}),
    ("unparsed", add(f"{P0}/Waveforms/foo.txt"), {("path.unparsed", f"{P0}/Waveforms/foo.txt")}),
    ("empty", add(f"{P0}/Metadata/empty.json", b""), {("file.empty", f"{P0}/Metadata/empty.json")}),
    ("duplicate", lambda root: write(root, f"{P1}/Metadata/copy.csv", (root / f"{SINGLE}n.csv").read_bytes()),
     {("file.duplicate", f"{SINGLE}n.csv"), ("file.duplicate", f"{P1}/Metadata/copy.csv")}),
]


def test_clean_site_has_no_findings(clean):
    out = validate(clean)
    assert out.schema == pl.Schema(FINDINGS_SCHEMA)
    assert out.height == 0, out.to_dicts()


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_fires_exactly_where_expected(clean, mutate, expected):
    mutate(clean)
    out = validate(clean)
    assert {(r, s) for r, s in out.select("rule", "srcfile").rows()} == expected, out.to_dicts()
    assert out["message"].str.len_chars().min() > 20  # a sentence: what is wrong, what to do


def test_every_rule_is_exercised_and_well_formed():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert {r.severity for r in RULES} <= {"error", "warning", "info"}
    assert all(r.description.endswith(".") and r.title for r in RULES)
    exercised = {rule for _, _, expected in CASES for rule, _ in expected}
    assert exercised == set(ids)


def test_findings_are_sorted_and_carry_the_rule_severity(clean):
    both(remove(f"{SINGLE}.dat"), add("notes.txt"), remove("OMOP/note.csv"))(clean)
    out = validate(clean)
    assert out.equals(out.sort("srcfile", "rule", "message"))
    severity = {r.id: r.severity for r in RULES}
    assert all(severity[rule] == sev for sev, rule in out.select("severity", "rule").rows())


# ----------------------------------------------------------------------------- facts


def test_garbage_never_raises_and_is_reported(clean):
    write(clean, f"{SINGLE}.hea", os.urandom(2000))
    write(clean, DCM, os.urandom(2000))
    write(clean, "OMOP/observation.csv", "observation_id,date_créée\n1,2024-01-01\n".encode("latin-1"))
    write(clean, "OMOP/note.csv", b"")
    write(clean, f"{MULTI}_0002.hea", b"")
    write(clean, f"{P1}/Images/study_x/series_1/{dicom_name(P1, DAY0, '081500', 'CT', 1, 9)}", b"")
    current = scan_current(clean)
    facts = extract_facts(LocalSource(clean), facts_needed(current))
    assert facts.schema == pl.Schema(FACTS_SCHEMA)
    errors = dict(facts.filter(pl.col("facts").str.contains('"error"')).select("kind", "facts").rows())
    assert set(errors) == {"wfdb_header", "dicom", "omop_csv"}
    out = check(current, facts)
    got = {(r, s) for r, s in out.select("rule", "srcfile").rows()}
    assert {("wfdb.bad_header", f"{SINGLE}.hea"), ("dicom.unreadable", DCM),
            ("omop.unreadable", "OMOP/observation.csv"), ("omop.unreadable", "OMOP/note.csv"),
            ("file.empty", "OMOP/note.csv"), ("wfdb.bad_header", f"{MULTI}_0002.hea"),
            ("file.empty", f"{MULTI}_0002.hea")} <= got
    messages = dict(out.select("srcfile", "message").filter(pl.col("srcfile") == "OMOP/note.csv").rows())
    assert "empty" in messages["OMOP/note.csv"]


def test_unreadable_files_give_facts_marked_for_retry(clean):
    """A file that vanished is not bad content: its facts say so, so the caller does not cache them."""
    todo = pl.DataFrame({"srcfile": [f"{SINGLE}.hea"], "md5": ["0" * 32], "kind": ["wfdb_header"]})
    (clean / f"{SINGLE}.hea").unlink()
    facts = extract_facts(LocalSource(clean), todo)
    assert facts["facts"].str.json_decode(pl.Struct({"error": pl.String, "retry": pl.Boolean})).struct.field(
        "retry").to_list() == [True]


def test_dicom_is_read_without_its_pixel_data(clean):
    data = dicom_bytes(person_id=P0, series=1, instance=1, study_date=DAY0, study_time="081500", size=64)
    write(clean, DCM, data[: len(data) - 64 * 64])  # half the pixels are gone
    current = scan_current(clean)
    todo = facts_needed(current).filter(pl.col("srcfile") == DCM)
    facts = extract_facts(LocalSource(clean), todo)
    assert facts.height == 1 and '"series_number":"1"' in facts["facts"][0] and "error" not in facts["facts"][0]


class Recording(LocalSource):
    def __init__(self, root):
        super().__init__(root)
        self.opened: list[str] = []

    def open(self, srcfile):
        self.opened.append(srcfile)
        return super().open(srcfile)


def test_only_headers_and_tables_are_read_once_per_content(clean):
    current = scan_current(clean)
    todo = facts_needed(current)
    source = Recording(clean)
    facts = extract_facts(source, todo, workers=4)
    assert not any(p.endswith(".dat") or (p.endswith(".csv") and "/Waveforms/" in p) for p in source.opened)
    assert set(source.opened) <= set(todo["srcfile"])
    assert len(source.opened) == todo.select("kind", "md5").n_unique() == facts.height
    assert set(todo["kind"]) == {"wfdb_header", "dicom", "records", "omop_csv", "omop_person", "omop_visits",
                                 "waveform_links"}
    assert facts.sort("kind", "md5").equals(extract_facts(LocalSource(clean), todo, workers=1).sort("kind", "md5"))


def test_facts_missing_for_some_files_give_no_false_findings(clean):
    """The caller may not have extracted every file's facts yet: rules needing them stay silent."""
    current = scan_current(clean)
    facts = extract_facts(LocalSource(clean), facts_needed(current).filter(pl.col("kind") != "dicom"))
    assert check(current, facts).height == 0
    assert check(current, pl.DataFrame(schema=FACTS_SCHEMA)).filter(pl.col("severity") != "info").height == 0


def test_numeric_person_and_visit_ids_match_zero_padded_ones(clean):
    persons_csv([str(int(p)) for p in (P0, P1, P2)])(clean)
    edit(LINKS, lambda t: t.replace("5000,", "05000,"))(clean)
    assert found(clean) == set()


def test_records_may_name_records_by_path(clean):
    edit(f"{P0}/Waveforms/RECORDS", lambda t: t.replace(S0["single"], f"{S0['single']}/{S0['single']}"))(clean)
    assert found(clean) == set()


def test_unsupported_format_sizes_follow_wfdb_packing(clean):
    """Format 310 packs 3 samples in 4 bytes; wfdb cannot write it, so the header is edited."""
    edit(f"{SINGLE}.hea", lambda t: t.replace(".dat 16 ", ".dat 310 "))(clean)
    write(clean, f"{SINGLE}.dat", bytes(-(-250 * 2 * 4 // 3)))  # ceil(500 samples x 4/3)
    assert found(clean) == set()
    write(clean, f"{SINGLE}.dat", bytes(1000))
    assert found(clean) == {("wfdb.dat_size", f"{SINGLE}.dat")}


def test_fsspec_source_opens_files(template):
    import fsspec

    fs = fsspec.filesystem("memory")
    for dirpath, _dirs, files in os.walk(template):
        for name in files:
            path = Path(dirpath) / name
            fs.pipe(f"/validate-site/{path.relative_to(template).as_posix()}", path.read_bytes())
    current = scan_current(template)
    facts = extract_facts(FsspecSource("memory://validate-site"), facts_needed(current), workers=2)
    assert check(current, facts).height == 0


def test_check_is_vectorised(clean):
    """Many files (a site of mostly DICOM) are checked in well under a few seconds."""
    current = scan_current(clean)
    facts = extract_facts(LocalSource(clean), facts_needed(current))
    dicom = current.filter(pl.col("srcfile") == DCM)
    n = 100_000
    copies = dicom.drop("srcfile").join(pl.DataFrame({"i": range(10, n + 10)}), how="cross").with_columns(
        srcfile=pl.format(f"{SERIES1}/{P0}_{DAY0}_081500_CT_1_{{}}.dcm", pl.col("i")))
    many = pl.concat([current, copies.select(current.columns)])
    started = time.perf_counter()
    out = check(many, facts)
    elapsed = time.perf_counter() - started
    assert out.filter(pl.col("rule") == "dicom.name_mismatch").height == n
    assert elapsed < 5, elapsed
