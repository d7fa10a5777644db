"""validate: the rules engine over real WFDB, DICOM and OMOP files (built by sitegen)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydicom.uid import generate_uid

from chorus_batch.sources import FsspecSource, LocalSource
from chorus_batch.validate.rules import KIND_PERSON, KIND_RECORDS, RUN_RULES
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
DAY1 = sitegen.person_day(1)
TELEMETRY = f"{P0}/Waveforms/Telemetry"
SINGLE = f"{TELEMETRY}/{S0['single']}/{S0['single']}"  # + .hea / .dat
MULTI = f"{TELEMETRY}/{S0['multi']}/{S0['multi']}"
EEG = f"{P0}/Waveforms/EEG/{S0['eeg']}/{S0['eeg']}"
ACCESSION = sitegen.accession_of(0)
SERIES1 = f"{P0}/Images/CT/{ACCESSION}/{sitegen.series_uid(P0, DAY0, 1)}"
DCM = f"{SERIES1}/000.dcm"
LINKS = "OMOP/waveform_visit_links.csv"
# The flat (first upload SOP) layout's paths, for the rules on its names.
F0 = sessions_of(P0, 0)
FLAT_SINGLE = f"{P0}/Waveforms/{F0['flat_single']}/{F0['flat_single']}"
FLAT_SERIES1 = f"{P0}/Images/study_{DAY0}/series_1"
FLAT_DCM = f"{FLAT_SERIES1}/{dicom_name(P0, DAY0, '081500', 'CT', 1, 1)}"


def validate(root: Path, workers: int = 2, *, in_parts: bool = False) -> pl.DataFrame:
    """The findings of the site at `root`. `in_parts`: checked again split in parts (a large site is checked a few
    person folders at a time), the top-level folders in two parts, every other one: the findings must be the same.
    test_each_rule_fires_exactly_where_expected asks it of every rule's case; the other tests here check a finding's
    words, and test_property_parts the split on generated sites. (Each part is a full check, ~0.3 CPU-s; ~380 tests
    call this, and the suite is at its 30-minute limit.)"""
    current = scan_current(root)
    facts = extract_facts(LocalSource(root), facts_needed(current), workers=workers)
    whole = check(current, facts)
    if in_parts:
        by_folder = current["srcfile"].str.extract(r"^([^/]*)/", 1).fill_null("").rank("dense") % 2
        counted: list[int] = []
        assert_frame_equal(check(current, facts, parts=by_folder, done=counted.append), whole)
        assert sum(counted) == current.height  # the progress counter ends at the site's file count
    return whole


def found(root: Path) -> set[tuple[str, str]]:
    return {(rule, srcfile) for rule, srcfile in validate(root, in_parts=True).select("rule", "srcfile").rows()}


@pytest.fixture(scope="module")
def flat_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flat") / "site"
    sitegen.build_clean_site(root, layout="flat")
    return root


@pytest.fixture
def flat(flat_template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "flat"
    shutil.copytree(flat_template, root)
    return root


# ----------------------------------------------------------------------------- mutations


def gzipped(rel: str) -> Callable[[Path], None]:
    """`rel` replaced by its gzip-compressed copy, `rel`.gz (as gzip leaves it)."""
    def go(root: Path) -> None:
        import gzip
        path = root / rel
        (root / f"{rel}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    return go


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


def edit_bytes(rel: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / rel
        data = path.read_bytes()
        path.write_bytes(changed := change(data))
        assert changed != data
    return go


def rename(rel: str, new: str) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        (root / new).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).rename(root / new)
    return go


def copy(rel: str, new: str) -> Callable[[Path], None]:
    return lambda root: write(root, new, (root / rel).read_bytes()) and None


def truncate(rel: str, by: int) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        path = root / rel
        path.write_bytes(path.read_bytes()[:-by])
    return go


def table(name: str, columns: list[str], rows: list[list[object]], delimiter: str = ",") -> Callable[[Path], None]:
    return add(f"OMOP/{name}.csv", csv_text(columns, rows, delimiter))


def persons_csv(ids: list[str]) -> Callable[[Path], None]:
    return table("person", OMOP_COLUMNS["person"], sitegen.omop_rows("person", ids))


def links(rows: list[tuple[object, str]], columns: tuple[str, ...] = ("visit_occurrence_id", "visit_detail_id",
                                                                       "session_id")) -> Callable[[Path], None]:
    """The superseded (v2.0) waveform_visit_links.csv."""
    return add(LINKS, csv_text(list(columns), [[v, "", s][: len(columns)] for v, s in rows]))


REGISTRY_ID_COLUMNS = ["image_registry_id", "file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime",
                       "src_file", "trg_file"]


def registry(modality: str, change: Callable[[list[list[object]]], list[list[object]]] = lambda rows: rows,
             columns: list[str] | None = None) -> Callable[[Path], None]:
    """A linkage registry for every file of `modality` (one row per file), edited by `change`."""
    def go(root: Path) -> None:
        current = scan_current(root).filter((pl.col("modality") == modality) & pl.col("person_id").is_not_null())
        persons = sitegen.person_ids(3)
        first = 2001000000 if modality == "Waveforms" else 2000000000  # Multimodal-Linkage's example ranges
        rows = [[k + 1, first + k, person, group, sitegen.visit_id(persons.index(person), 0),
                 sitegen.captured(persons.index(person)), f"/src/{path}", path]
                for k, (path, person, group) in enumerate(current.select("srcfile", "person_id", "session_id").rows())]
        name = "waveform_registry.csv" if modality == "Waveforms" else "image_registry.csv"
        plain = ["file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime", "src_file", "trg_file"]
        write(root, name, csv_text(plain, rows))
        sitegen.sync_procedures(root)  # the procedure rows of the registry as made, before `change`
        write(root, name, csv_text(columns or plain, change(rows)))
    return go


def drop_line(rel: str, needle: str) -> Callable[[Path], None]:
    return edit(rel, lambda text: "".join(line for line in text.splitlines(True) if needle not in line))


def dicomdir(rel: str, of: str) -> Callable[[Path], None]:
    """A DICOM media set in folder `rel` as pydicom writes one (DICOMDIR, PT000000/.../IM000000: names without
    an extension), holding a copy of the image `of`."""
    def go(root: Path) -> None:
        import pydicom
        from pydicom.fileset import FileSet

        image = pydicom.dcmread(root / of)
        image.StudyID = "1"  # a DICOMDIR's study record needs it
        media = FileSet()
        media.add(image)
        media.write(str(root / rel))
    return go


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def go(root: Path) -> None:
        for step in steps:
            step(root)
    return go


OTHER_SESSION = "900099"
# a registry row whose proc_id is changed (or removed) leaves the procedure row made of it linking no file
LINKAGE_GONE = ("registry.linkage_without_files", "OMOP/procedure_occurrence.csv")
SUPERSEDED_LINKS = ("layout.superseded", LINKS)
# The clean site ships both registries (sitegen.write_registries): a waveform file added or removed shows there too.
GONE_FROM_REGISTRY = ("registry.missing_file", "waveform_registry.csv")
UNKNOWN_IN_REGISTRIES = {("registry.unknown_person", "waveform_registry.csv"), ("registry.unknown_person", "image_registry.csv")}


# an EEG session of an EDF+ file whose signals EEG_mapping.csv maps (II, V: 256 Hz, uV), and its annotations
EDF = f"{P1}/Waveforms/EEG/900555/900555.edf"
EDF_SIGNALS = [("II", "uV", 256), ("V", "uV", 256), ("EDF Annotations", "", 60)]


def unlisted(path: str) -> tuple[str, str]:
    return ("registry.unlisted_file", path)


NEW_DCM = lambda rel: rename(DCM, rel)  # noqa: E731

# (case id, mutation of the clean (v2.1) site, the exact findings (rule, srcfile) it must give)
CASES: list[tuple[str, Callable[[Path], None], set[tuple[str, str]]]] = [
    ("no_omop", remove("OMOP"), {("layout.no_omop", "OMOP/")}),
    ("root_file", add("notes.txt"), {("layout.root_file", "notes.txt")}),
    # a file at the root named OMOP (an object store holds it beside OMOP/ too) is no OMOP/ folder: it gave 13
    # omop.missing_table and "in a subfolder of OMOP/" instead of layout.no_omop
    ("root_file_named_omop", both(remove("OMOP"), add("OMOP")),
     {("layout.no_omop", "OMOP/"), ("layout.root_file", "OMOP")}),
    # the Imaging SOP's de-identification lookup tables (MRNs to person_id), "stays local at the site and is not
    # shared": anywhere in the tree one finding, and no other rule's "move it into OMOP/, Metadata/ ..." (root_file)
    ("identifiable_table", both(add("personal_map.csv", "a"), add("Metadata/personal_map.csv", "b"),
                                add("OMOP/image_map.csv", "c"), add(f"{P0}/image_map.csv", "d"),
                                add(f"{P1}/Images/Image_Map.CSV", "e")),
     {("layout.identifiable_table", name) for name in ("personal_map.csv", "Metadata/personal_map.csv",
                                                       "OMOP/image_map.csv", f"{P0}/image_map.csv",
                                                       f"{P1}/Images/Image_Map.CSV")}),
    ("unexpected_folder", both(add("scratch/a.txt"), add("scratch/b/c.txt")),
     {("layout.unexpected_folder", "scratch/")}),
    # OMOP/ and Metadata/ spelled otherwise were read as those and told nothing (images/ in a person folder was told)
    ("omop_lower_case", rename("OMOP", "omop"), {("layout.unexpected_folder", "omop/")}),
    ("metadata_upper_case", rename("Metadata", "METADATA"), {("layout.unexpected_folder", "METADATA/")}),
    ("person_no_data", both(add("000104/Metadata/consent.json", "{}"), persons_csv([P0, P1, P2, "000104"])),
     {("layout.person_no_data", "000104/"), ("layout.person_subfolder", "000104/Metadata/")}),
    # Multimodal-Linkage: a person folder is named by its person_id, "DATATYPE: integer or bigint"
    ("person_id_format", both(add("P104/Metadata/consent.json", "{}"), persons_csv([P0, P1, P2, "P104"])),
     {("person.id_format", "P104/"), ("layout.person_no_data", "P104/"), ("layout.person_subfolder", "P104/Metadata/")}),
    ("person_file", add(f"{P0}/readme.txt"), {("layout.person_file", f"{P0}/readme.txt")}),
    ("person_subfolder", both(add(f"{P0}/Labs/a.csv", "a"), add(f"{P0}/Labs/b.csv", "b")),
     {("layout.person_subfolder", f"{P0}/Labs/")}),
    # Waveform File Format v2.1: Metadata/ at the site root, its files "directly under the Metadata folder"
    ("person_metadata", both(add(f"{P0}/Metadata/READINESS.md", "- [x] done\n"), add(f"{P1}/metadata/a/b.txt", "b")),
     {("layout.person_subfolder", f"{P0}/Metadata/"), ("layout.person_subfolder", f"{P1}/metadata/")}),
    ("superseded", rename("Metadata/SUBMISSION.md", "SUBMISSION.md"), {("layout.superseded", "SUBMISSION.md")}),
    ("metadata_missing", remove("Metadata/READINESS.md"), {("metadata.missing", "Metadata/READINESS.md")}),
    # Waveform File Format v2.1: READINESS.md "directly under the Metadata folder"; no edition put it at the root (v2.0
    # put SUBMISSION.md there): one at the root was read as the checklist, and only layout.root_file (a warning) told
    ("readiness_at_root", rename("Metadata/READINESS.md", "READINESS.md"),
     {("metadata.missing", "Metadata/READINESS.md"), ("layout.root_file", "READINESS.md")}),
    ("mapping_missing", remove("Metadata/EEG_mapping.csv"), {("metadata.mapping_missing", "Metadata/EEG_mapping.csv")}),
    ("mapping_header_only", add("Metadata/EEG_mapping.csv", "signal_id,standardized_label,sampling_rate,units,timestamp_id\r\n"),
     {("metadata.mapping_missing", "Metadata/EEG_mapping.csv")}),
    ("mapping_columns", add("Metadata/Telemetry_mapping.csv", "signal_id,label,rate\nII,MDC_ECG_ELEC_POTL_II,125\n"),
     {("metadata.mapping_columns", "Metadata/Telemetry_mapping.csv")}),
    ("mapping_values", edit("Metadata/EEG_mapping.csv", lambda t: t + "X,FP9,fast,uV,time\n"),
     {("metadata.mapping_values", "Metadata/EEG_mapping.csv")}),
    # Waveform File Format 4.1.1: a mapping row for each signal in the data; a segment's signals are the record's
    ("unmapped_signal", both(edit(f"{SINGLE}.hea", lambda t: t.replace(" 0 V\n", " 0 RESP\n")),
                             edit(f"{MULTI}_0002.hea", lambda t: t.replace(" 0 II\n", " 0 ART1\n"))),
     {("wfdb.unmapped_signal", f"{SINGLE}.hea"), ("wfdb.unmapped_signal", f"{MULTI}.hea")}),
    # its sampling_rate (Hz) and units are the channel's: the header's (frequency x samples per frame, units)
    ("mapping_rate", edit(f"{SINGLE}.hea", lambda t: t.replace(" 2 125 250", " 2 250 250", 1)),
     {("wfdb.mapping_rate", f"{SINGLE}.hea")}),
    # a record line without a frequency is read as wfdb reads it: 250 Hz (the mapping's 125 Hz disagrees)
    ("mapping_rate_default", edit(f"{SINGLE}.hea", lambda t: re.sub(r"^(\S+ 2) 125 .*", r"\1", t, count=1, flags=re.M)),
     {("wfdb.mapping_rate", f"{SINGLE}.hea")}),
    ("mapping_units", edit(f"{EEG}.hea", lambda t: t.replace("/uV", "/mV", 1)), {("wfdb.mapping_units", f"{EEG}.hea")}),
    ("submission_sections", edit("Metadata/SUBMISSION.md", lambda t: t.replace("## Linking", "Linking")),
     {("metadata.submission_sections", "Metadata/SUBMISSION.md")}),
    ("readiness_unchecked", edit("Metadata/READINESS.md", lambda t: t.replace("- [x] Images", "- [ ] Images")),
     {("metadata.readiness_unchecked", "Metadata/READINESS.md")}),
    # Waveform File Format 4.1: each variable's description and data type, and the sample times' time units
    ("submission_answers", edit("Metadata/SUBMISSION.md", lambda t: t + "\n| Variable name | Description | Data type | "
                                "Unit |\n|---|---|---|---|\n| StartTime | first sample's time |  |  |\n"),
     {("metadata.submission_answers", "Metadata/SUBMISSION.md")}),
    # Waveform File Format 4.1.1: a stream-based mapping (start_time, end_time), and SUBMISSION.md silent on whether the
    # times are at the start or end of the first and last samples
    ("submission_stream_edges", edit("Metadata/EEG_mapping.csv", lambda t: re.sub(
        r",time(\r?\n)", r",t0,t1\1", t.replace("timestamp_id", "start_time,end_time"))),
     {("metadata.submission_answers", "Metadata/SUBMISSION.md")}),
    # (a UTF-16 byte-order mark, then half a surrogate pair: UTF-16 with a mark is read, this is no UTF-16 text)
    ("metadata_unreadable", add("Metadata/SUBMISSION.md", b"\xff\xfe\x00\xd8"),
     {("metadata.unreadable", "Metadata/SUBMISSION.md")}),
    ("missing_table", remove("OMOP/note_nlp.csv"), {("omop.missing_table", "OMOP/note_nlp.csv")}),
    # a table under another extension: one finding, the missing table's, naming the file to rename
    ("misnamed_table", rename("OMOP/death.csv", "OMOP/death.txt"), {("omop.missing_table", "OMOP/death.csv")}),
    ("specimen", table("specimen", ["specimen_id", "person_id"], [[1, P0]]), {("omop.specimen", "OMOP/specimen.csv")}),
    ("omop_unexpected", both(add("OMOP/readme.txt"), add("OMOP/old/person.csv", "person_id\n1\n")),
     {("omop.unexpected_file", "OMOP/readme.txt"), ("omop.unexpected_file", "OMOP/old/person.csv")}),
    ("omop_unreadable", add("OMOP/measurement.csv", b"measurement_id,valeur_mesur\xe9e\n1,2\n"),
     {("omop.unreadable", "OMOP/measurement.csv")}),
    ("omop_delimiter", table("observation", OMOP_COLUMNS["observation"],
                             sitegen.omop_rows("observation", [P0]), delimiter="\t"),
     {("omop.delimiter", "OMOP/observation.csv")}),
    # a column named twice (an export tool joining tables; names compared as read, case aside) passed without a
    # finding when no required column was lacking: which of the two a loader takes is anyone's guess
    ("omop_duplicate_column", both(
        edit("OMOP/observation.csv", lambda t: t.replace("\n", ",observation_date\n", 1).replace("\n", ",\n")
             .replace(",observation_date,\n", ",observation_date\n", 1)),
        edit("OMOP/person.csv", lambda t: t.replace("\n", ",PERSON_ID\n", 1).replace("\n", ",\n")
             .replace(",PERSON_ID,\n", ",PERSON_ID\n", 1))),
     {("omop.duplicate_column", "OMOP/observation.csv"), ("omop.duplicate_column", "OMOP/person.csv")}),
    ("omop_no_header", add("OMOP/drug_exposure.csv", "1,101,19019073,2024-01-01,5000\n"),
     {("omop.no_header", "OMOP/drug_exposure.csv")}),
    ("omop_missing_key", table("condition_occurrence", ["person_id", "condition_concept_id"], [[P0, 1]]),
     {("omop.missing_key", "OMOP/condition_occurrence.csv")}),
    ("note_columns", table("note", ["note_id", "person_id", "note_date", "note_type_concept_id", "note_text",
                                    "encoding_concept_id", "language_concept_id"],
                           [[7000, P0, "2024-01-01", 44814637, "", 0, 0]]),
     {("omop.note_columns", "OMOP/note.csv")}),
    # the upload procedure's tables "as found" in CDM 5.4: the columns it requires (note_text excepted)
    ("omop_required_columns", edit("OMOP/visit_occurrence.csv", lambda t: t.replace(",visit_type_concept_id", ",visit_kind", 1)),
     {("omop.required_columns", "OMOP/visit_occurrence.csv")}),
    ("links_columns", links([(5000, S0["single"])], ("visit_id", "session_name")),
     {("links.columns", LINKS), SUPERSEDED_LINKS}),
    ("unknown_session", links([(5000, S0["single"]), (5000, OTHER_SESSION)]),
     {("links.unknown_session", LINKS), SUPERSEDED_LINKS}),
    ("unknown_visit", links([(9999, S0["single"])]), {("links.unknown_visit", LINKS), SUPERSEDED_LINKS}),
    ("no_omop_row", persons_csv([P0, P1]), {("person.no_omop_row", f"{P2}/"), *UNKNOWN_IN_REGISTRIES}),
    ("no_folder", persons_csv([P0, P1, P2, "000199"]), {("person.no_folder", "OMOP/person.csv")}),
    # (person.csv's key on two rows, each batch of pyarrow's or one: a loader refuses the table)
    ("repeated_person", persons_csv([P0, P1, P2, P1]), {("person.repeated_id", "OMOP/person.csv")}),
    # visit_occurrence.csv's rows (person 000103's second visit, 13:00 to 23:59:59 of 2024-01-03)
    ("visit_date_format", edit("OMOP/visit_occurrence.csv", lambda t: t.replace(
        ",2024-01-03,2024-01-03 13:00:00,", ",01/03/2024,,", 1)), {("visit.date_format", "OMOP/visit_occurrence.csv")}),
    ("visit_end_before_start", edit("OMOP/visit_occurrence.csv", lambda t: t.replace(
        "2024-01-03 13:00:00,2024-01-03,2024-01-03 23:59:59", "2024-01-03 13:00:00,2024-01-03,2024-01-03 12:59:00", 1)),
     {("visit.end_before_start", "OMOP/visit_occurrence.csv")}),
    ("visit_repeated_id", edit("OMOP/visit_occurrence.csv", lambda t: t + t.splitlines()[-1] + "\n"),
     {("visit.repeated_id", "OMOP/visit_occurrence.csv")}),
    ("session_id", add(f"{TELEMETRY}/night1/night1.dat", bytes(8)),
     {("waveforms.session_id", f"{TELEMETRY}/night1/"), unlisted(f"{TELEMETRY}/night1/night1.dat")}),
    # a session folder named by a start stamp that is no date (month 13), in v1.0's Waveforms/<session>/: its files'
    # start was left empty, said nowhere (today's layout said only "not an integer")
    ("session_stamp", add(f"{P0}/Waveforms/{P0}_20231305_101530/{P0}_20231305_101530.dat", bytes(8)),
     {("waveforms.session_id", f"{P0}/Waveforms/{P0}_20231305_101530/"),
      unlisted(f"{P0}/Waveforms/{P0}_20231305_101530/{P0}_20231305_101530.dat"),
      ("layout.superseded", f"{P0}/Waveforms/{P0}_20231305_101530/{P0}_20231305_101530.dat")}),
    ("id_collision", add(f"{P1}/Waveforms/EEG/{S0['single']}/{S0['single']}.edf", sitegen.edf_bytes(None)),
     {("waveforms.id_collision", f"{TELEMETRY}/{S0['single']}/"),
      ("waveforms.id_collision", f"{P1}/Waveforms/EEG/{S0['single']}/"),
      unlisted(f"{P1}/Waveforms/EEG/{S0['single']}/{S0['single']}.edf")}),
    # session ids are integers: 0<id> and <id> are one id, in one person's Telemetry/ too
    ("id_collision_zeros", add(f"{TELEMETRY}/0{S0['single']}/0{S0['single']}.edf", sitegen.edf_bytes(None)),
     {("waveforms.id_collision", f"{TELEMETRY}/{S0['single']}/"), ("waveforms.id_collision", f"{TELEMETRY}/0{S0['single']}/"),
      unlisted(f"{TELEMETRY}/0{S0['single']}/0{S0['single']}.edf")}),
    # a second copy of the waveform registry (in Metadata/): one registry of each modality
    ("registry_several", lambda root: write(root, "Metadata/waveform_registry.csv",
                                            (root / "waveform_registry.csv").read_bytes()) and None,
     {("registry.several", "Metadata/waveform_registry.csv"), ("registry.several", "waveform_registry.csv")}),
    ("bad_header", add(f"{SINGLE}.hea", "this is not a WFDB header\n"), {("wfdb.bad_header", f"{SINGLE}.hea")}),
    # an EDF cut inside its 256-byte header, and one whose start date is no date: no start time to date the session
    ("edf_bad_header", add(f"{P1}/Waveforms/EEG/900555/900555.edf", b"0       "),
     {("edf.bad_header", f"{P1}/Waveforms/EEG/900555/900555.edf"), unlisted(f"{P1}/Waveforms/EEG/900555/900555.edf")}),
    ("edf_bad_date", add(f"{P1}/Waveforms/EEG/900555/900555.edf",
                         sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5)).replace(b"02.01.24", b"31.02.24")),
     {("edf.bad_header", f"{P1}/Waveforms/EEG/900555/900555.edf"), unlisted(f"{P1}/Waveforms/EEG/900555/900555.edf")}),
    # an EDF whose header still says -1 data records ("unknown": allowed by the EDF spec only while recording): an
    # unfinished recording, delivered with no finding before (its start and signals read, its length unknown)
    ("edf_unfinished", add(EDF, (lambda whole: whole[:236] + b"-1".ljust(8) + whole[244:])(
        sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5), signals=EDF_SIGNALS))),
     {("edf.bad_header", EDF), unlisted(EDF)}),
    # an EDF cut inside its signal header (after the fixed 256 bytes: 256 more per signal)
    ("edf_cut_signal_header", add(EDF, sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5), signals=EDF_SIGNALS)[:600]),
     {("edf.bad_header", EDF), unlisted(EDF)}),
    # an EDF's signals against the mapping as a WFDB header's are (Waveform File Format 4.1.1: "For each signal in your
    # data (... EEG lead FP1)" a row): its labels, samples per record / record duration, physical dimensions; EDF+'s
    # "EDF Annotations" is no signal to map
    ("edf_unmapped_signal", add(EDF, sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5), signals=[
        ("FP1", "uV", 256), *EDF_SIGNALS])), {("wfdb.unmapped_signal", EDF), unlisted(EDF)}),
    ("edf_mapping_rate", add(EDF, sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5), signals=EDF_SIGNALS, record_s="0.5")),
     {("wfdb.mapping_rate", EDF), unlisted(EDF)}),
    ("edf_mapping_units", add(EDF, sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5), signals=[
        ("II", "mV", 256), ("V", "uV", 256)])), {("wfdb.mapping_units", EDF), unlisted(EDF)}),
    # lines ended by a carriage return alone (old Mac OS): read by wfdb, one line to the WFDB C library (and the format)
    # (and CR+LF, a Windows editor's, which the format allows: not told)
    ("line_ends", both(edit_bytes(f"{SINGLE}.hea", lambda b: b.replace(b"\n", b"\r")),
                       edit_bytes(f"{MULTI}_0001.hea", lambda b: b.replace(b"\n", b"\r\n"))),
     {("wfdb.line_ends", f"{SINGLE}.hea")}),
    ("record_name", edit(f"{SINGLE}.hea", lambda t: t.replace(S0["single"] + " ", "other ", 1)),
     {("wfdb.record_name", f"{SINGLE}.hea")}),
    ("format", edit(f"{SINGLE}.hea", lambda t: t.replace(".dat 16 ", ".dat 999 ")), {("wfdb.format", f"{SINGLE}.hea")}),
    # two formats in one signal file: wfdb reads every signal of a file in its first signal's format (the V signal's
    # 212 read as 16, and the file's size left unchecked), without a word
    ("format_mixed", edit(f"{SINGLE}.hea", lambda t: ".dat 212 ".join(t.rsplit(".dat 16 ", 1))),
     {("wfdb.format", f"{SINGLE}.hea")}),
    # two byte offsets in one signal file ('16' and '16+24'): wfdb reads all its signals after the first's offset
    ("byte_offset_mixed", edit(f"{SINGLE}.hea", lambda t: ".dat 16+24 ".join(t.rsplit(".dat 16 ", 1))),
     {("wfdb.format", f"{SINGLE}.hea")}),
    ("missing_dat", remove(f"{SINGLE}.dat"), {("wfdb.missing_dat", f"{SINGLE}.hea"), GONE_FROM_REGISTRY}),
    # the signal file in another case (a Windows site's X.DAT for the header's X.dat): wfdb does not find it off Windows;
    # told at the header as in another case (it was "not in its folder", and again as a .dat no header names)
    ("missing_dat_other_case", rename(f"{SINGLE}.dat", f"{SINGLE}.DAT"),
     {("wfdb.missing_dat", f"{SINGLE}.hea"), GONE_FROM_REGISTRY}),  # (the registry tells its case too)
    ("dat_size_212", truncate(f"{MULTI}_0001.dat", 1), {("wfdb.dat_size", f"{MULTI}_0001.dat")}),
    ("dat_size_16", add(f"{SINGLE}.dat", bytes(999)), {("wfdb.dat_size", f"{SINGLE}.dat")}),
    ("unreferenced_dat", add(f"{SINGLE}_old.dat", bytes(10)),
     {("wfdb.unreferenced_dat", f"{SINGLE}_old.dat"), unlisted(f"{SINGLE}_old.dat")}),
    ("missing_segment", remove(f"{MULTI}_0002.hea"),
     {("wfdb.missing_segment", f"{MULTI}.hea"), ("wfdb.unreferenced_dat", f"{MULTI}_0002.dat"), GONE_FROM_REGISTRY}),
    ("segment_length", edit(f"{MULTI}.hea", lambda t: t.replace(" 151", " 161").replace("_0002 50", "_0002 60")),
     {("wfdb.segment_length", f"{MULTI}_0002.hea")}),
    ("record_length", edit(f"{MULTI}.hea", lambda t: t.replace(" 151", " 999")),
     {("wfdb.segment_length", f"{MULTI}.hea")}),
    # '~' (a gap) in a fixed layout, and '~' where a variable layout's layout segment is: wfdb cannot read either record
    # (a gap it joins only after a layout segment; the layout segment it looks for as '~.hea')
    ("segment_gap_fixed", edit(f"{MULTI}.hea", lambda t: t.replace("/2 2 125 151", "/3 2 125 161").replace(
        f"{S0['multi']}_0002 50", f"~ 10\n{S0['multi']}_0002 50")), {("wfdb.missing_segment", f"{MULTI}.hea")}),
    ("layout_segment_gap", edit(f"{MULTI}.hea", lambda t: t.replace("/2 2 125 151", "/3 2 125 151").replace(
        f"{S0['multi']}_0001 101", f"~ 0\n{S0['multi']}_0001 101")), {("wfdb.missing_segment", f"{MULTI}.hea")}),
    # a segment of length 0 that is not the first (a variable layout's layout segment): wfdb checks each segment's
    # length against its header's; passed unchecked, its 50 samples lost without a word
    ("segment_length_zero", edit(f"{MULTI}.hea", lambda t: t.replace(" 151", " 101").replace("_0002 50", "_0002 0")),
     {("wfdb.segment_length", f"{MULTI}_0002.hea")}),
    # a segment of a fixed layout holding 1 signal of the record's 2 (wfdb joins the segments signal by signal), and a
    # record line giving 3 of a variable layout whose layout segment lists 2: both passed unchecked
    ("segment_signals", both(add(f"{MULTI}_0002.hea", f"{S0['multi']}_0002 1 125 50\n"
                                                       f"{S0['multi']}_0002.dat 16 200.0(0)/mV 16 0 0 0 0 II\n"),
                             add(f"{MULTI}_0002.dat", bytes(100))),
     {("wfdb.segment_signals", f"{MULTI}_0002.hea")}),
    ("segment_signals_layout", both(
        edit(f"{MULTI}.hea", lambda t: t.replace("/2 2 125 151", "/3 3 125 151").replace(
            f"{S0['multi']}_0001 101", f"{S0['multi']}_layout 0\n{S0['multi']}_0001 101")),
        add(f"{MULTI}_layout.hea", f"{S0['multi']}_layout 2 125 0\n~ 0 200.0(0)/mV 16 0 0 0 0 II\n"
                                   f"~ 0 200.0(0)/mV 16 0 0 0 0 V\n")),
     {("wfdb.segment_signals", f"{MULTI}_layout.hea"), unlisted(f"{MULTI}_layout.hea")}),
    # a variable layout's segment holding some of the record's signals, as its layout segment lists them: no finding
    ("segment_signals_variable", both(
        edit(f"{MULTI}.hea", lambda t: t.replace("/2 2 125 151", "/3 2 125 151").replace(
            f"{S0['multi']}_0001 101", f"{S0['multi']}_layout 0\n{S0['multi']}_0001 101")),
        add(f"{MULTI}_layout.hea", f"{S0['multi']}_layout 2 125 0\n~ 0 200.0(0)/mV 16 0 0 0 0 II\n"
                                   f"~ 0 200.0(0)/mV 16 0 0 0 0 V\n"),
        add(f"{MULTI}_0002.hea", f"{S0['multi']}_0002 1 125 50\n{S0['multi']}_0002.dat 16 200.0(0)/mV 16 0 0 0 0 II\n"),
        add(f"{MULTI}_0002.dat", bytes(100)),
        edit(f"{MULTI}.hea", lambda t: t.replace("/3 2 125 151", "/4 2 125 161") + "~ 10\n")),  # (and a gap: read)
     {unlisted(f"{MULTI}_layout.hea")}),
    # a segment that is a multi-segment record itself: wfdb cannot read the record (its segments are single-segment)
    ("nested_segment", edit(f"{MULTI}_0002.hea", lambda t: f"{S0['multi']}_0002/1 2 125 50\n~ 50\n"),
     {("wfdb.nested_segment", f"{MULTI}.hea"), ("wfdb.unreferenced_dat", f"{MULTI}_0002.dat"),
      ("wfdb.missing_segment", f"{MULTI}_0002.hea")}),  # (its own list a gap without a layout segment: unread by wfdb)
    ("segment_rate", edit(f"{MULTI}_0002.hea", lambda t: t.replace(" 2 125 ", " 2 250 ", 1)),
     {("wfdb.segment_rate", f"{MULTI}_0002.hea"), ("wfdb.mapping_rate", f"{MULTI}.hea")}),  # (the mapping's 125 Hz)
    # a frequency of 0 Hz: no sample has a time (wfdb writes only positive frequencies); told once, not again as a
    # rate that differs from the mapping's or the multi-segment header's
    ("sampling_frequency", edit(f"{SINGLE}.hea", lambda t: t.replace(" 2 125 ", " 2 0 ", 1)),
     {("wfdb.sampling_frequency", f"{SINGLE}.hea")}),
    ("sampling_frequency_segment", edit(f"{MULTI}_0002.hea", lambda t: t.replace(" 2 125 ", " 2 0.0 ", 1)),
     {("wfdb.sampling_frequency", f"{MULTI}_0002.hea")}),
    ("session_record", remove(f"{MULTI}.hea"),
     {("wfdb.session_record", f"{TELEMETRY}/{S0['multi']}/"), GONE_FROM_REGISTRY}),
    ("numerics_name", add(f"{SINGLE}_numerics.csv", "t,HR\n0,80\n"),
     {("wfdb.numerics_name", f"{SINGLE}_numerics.csv"), unlisted(f"{SINGLE}_numerics.csv")}),
    # Waveform File Format v2.1 asks for numerics "in a CSV file with a 'n' before the extension": a file named as the
    # numerics (<session_id>n.<ext>) in another format, in a WFDB session or in one of another format, was told nothing
    ("numerics_not_csv", both(add(f"{SINGLE}n.parquet", "PAR1"), add(f"{TELEMETRY}/900098/900098.parquet", "PAR1"),
                              add(f"{TELEMETRY}/900098/900098n.parquet", "PAR1"),
                              add(f"{TELEMETRY}/900098/900098n.csv.gz", "x")),
     {("wfdb.numerics_name", f"{SINGLE}n.parquet"), ("wfdb.numerics_name", f"{TELEMETRY}/900098/900098n.parquet"),
      ("file.compressed", f"{TELEMETRY}/900098/900098n.csv.gz")}
     | {unlisted(p) for p in (f"{SINGLE}n.parquet", f"{TELEMETRY}/900098/900098.parquet",
                              f"{TELEMETRY}/900098/900098n.parquet")}),
    ("records_unlisted", add(f"{P0}/Waveforms/RECORDS", f"Telemetry/{S0['single']}/{S0['single']}\n"),
     {("records.unlisted", f"{MULTI}.hea"), ("records.unlisted", f"{EEG}.hea"),
      ("layout.superseded", f"{P0}/Waveforms/RECORDS")}),
    ("records_absent", add(f"{TELEMETRY}/{S0['single']}/RECORDS", f"{S0['single']}\n{OTHER_SESSION}\n"),
     {("records.absent", f"{TELEMETRY}/{S0['single']}/RECORDS"), ("layout.superseded", f"{TELEMETRY}/{S0['single']}/RECORDS")}),
    ("records_unreadable", add(f"{TELEMETRY}/{S0['single']}/RECORDS", b"\x00\x01\x02\xff"),
     {("records.unreadable", f"{TELEMETRY}/{S0['single']}/RECORDS"), ("layout.superseded", f"{TELEMETRY}/{S0['single']}/RECORDS")}),
    ("dicom_unreadable", add(DCM, os.urandom(300)), {("dicom.unreadable", DCM)}),
    ("dicom_pixels_cut", truncate(DCM, 10), {("dicom.unreadable", DCM)}),
    ("outside_series", NEW_DCM(f"{P0}/Images/CT/{ACCESSION}/000.dcm"),
     {("dicom.outside_series", f"{P0}/Images/CT/{ACCESSION}/000.dcm")}),
    ("path_instance", NEW_DCM(f"{SERIES1}/005.dcm"), {("dicom.path_mismatch", f"{SERIES1}/005.dcm")}),
    # the Imaging SOP names an image <InstanceNumber>.dcm in its series folder: two files of one number (a copy kept
    # under another spelling, or a series numbered twice) cannot both be named so
    ("instance_repeated", copy(DCM, f"{SERIES1}/0.dcm"),
     {("dicom.instance_repeated", f"{SERIES1}/"), ("registry.unlisted_file", "image_registry.csv")}),
    # the image registry leaves trg_file blank (the Imaging SOP: "populated centrally"): its rows are counted per
    # person against the person's image files, one row per file (Multimodal-Linkage)
    ("image_registry_row_missing", drop_line("image_registry.csv", f"/{SERIES1}/001.dcm"),
     {("registry.unlisted_file", "image_registry.csv")}),
    ("image_registry_file_missing", remove(f"{SERIES1}/001.dcm"), {("registry.missing_file", "image_registry.csv")}),
    ("image_registry_person_without_files", remove(f"{P2}/Images"),
     {("registry.missing_file", "image_registry.csv")}),
    ("path_modality", NEW_DCM(DCM.replace("/CT/", "/MR/")), {("dicom.path_mismatch", DCM.replace("/CT/", "/MR/"))}),
    ("path_accession", NEW_DCM(DCM.replace(f"/{ACCESSION}/", "/70999/")),
     {("dicom.path_mismatch", DCM.replace(f"/{ACCESSION}/", "/70999/"))}),
    # one accession in two folders: both agree with the header (leading zeros), the study is split
    ("accession_split", NEW_DCM(DCM.replace(f"/{ACCESSION}/", f"/0{ACCESSION}/")),
     {("dicom.accession_split", f"{P0}/Images/CT/0{ACCESSION}/"), ("dicom.accession_split", f"{P0}/Images/CT/{ACCESSION}/")}),
    # one accession id (the image_occurrence_id of one study) in two persons' folders
    ("accession_shared", add(f"{P1}/Images/CT/{ACCESSION}/{sitegen.series_uid(P1, DAY1, 1)}/000.dcm", dicom_bytes(
        person_id=P1, series=1, instance=0, study_date=DAY1, study_time="081500", accession=ACCESSION,
        SeriesInstanceUID=sitegen.series_uid(P1, DAY1, 1), SOPInstanceUID=sitegen.series_uid(P1, DAY1, 901))),
     # (an image of its own: the same SOPInstanceUID as P1's image of that day is one image twice, instance_repeated)
     {("dicom.accession_shared", f"{P0}/Images/CT/{ACCESSION}/"), ("dicom.accession_shared", f"{P1}/Images/CT/{ACCESSION}/"),
      ("registry.unlisted_file", "image_registry.csv"),  # (an image added without its row)
      # (and P1's series, its SeriesInstanceUID, now in two of P1's accessions: two procedures for one series)
      ("dicom.series_split", f"{P1}/Images/CT/{ACCESSION}/{sitegen.series_uid(P1, DAY1, 1)}/"),
      ("dicom.series_split", f"{P1}/Images/CT/{sitegen.accession_of(1)}/{sitegen.series_uid(P1, DAY1, 1)}/")}),
    # P0's image (its SOPInstanceUID) under P1, with P1's PatientID and ids: a copy filed under the wrong person, or
    # one patient under two person_ids; its bytes differ (file.duplicate is silent), and each person alone is well
    ("uid_shared", add(f"{P1}/Images/CT/{sitegen.accession_of(1)}/{sitegen.series_uid(P1, DAY1, 1)}/000.dcm", dicom_bytes(
        person_id=P1, series=1, instance=0, study_date=DAY1, study_time="081500", accession=sitegen.accession_of(1),
        SOPInstanceUID=generate_uid(entropy_srcs=[P0, "1", "0", DAY0]))),
     {("dicom.uid_shared", f"{SERIES1}/"),
      ("dicom.uid_shared", f"{P1}/Images/CT/{sitegen.accession_of(1)}/{sitegen.series_uid(P1, DAY1, 1)}/")}),
    # a vendor's private transfer syntax: the header reads, its pixel data open in no standard viewer
    ("transfer_syntax", edit_bytes(DCM, lambda data: data.replace(b"1.2.840.10008.1.2.1\0", b"1.2.999.1.2.3.4.5.6\0")),
     {("dicom.transfer_syntax", f"{SERIES1}/")}),
    ("path_series", NEW_DCM(f"{P0}/Images/CT/{ACCESSION}/1.2.3/000.dcm"),
     {("dicom.path_mismatch", f"{P0}/Images/CT/{ACCESSION}/1.2.3/000.dcm")}),
    ("patient_id", add(DCM, dicom_bytes(person_id="999999", series=1, instance=0, study_date=DAY0,
                                        study_time="081500", accession=ACCESSION,
                                        SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1))),
     {("dicom.patient_id", DCM)}),
    # The Imaging SOP: AccessionNumber is replaced by the image_occurrence_id, an integer (absent, or a site's text)
    ("accession_id", both(
        add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                             accession="ACC-70000", SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1))),
        add(f"{SERIES1}/001.dcm", dicom_bytes(person_id=P0, series=1, instance=1, study_date=DAY0, study_time="081500",
                                              SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1)))),
     # one finding for one cause: the header to fix, not also a folder to rename after "(none)"
     {("dicom.accession_id", DCM), ("dicom.accession_id", f"{SERIES1}/001.dcm")}),
    # the Imaging SOP's study-level metadata: told once per series folder
    ("study_metadata", add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                                            accession=ACCESSION, SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1),
                                            StudyDescription=None)),
     {("dicom.study_metadata", f"{SERIES1}/")}),
    # and its series-level metadata, the same way
    ("series_metadata", add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                                             accession=ACCESSION, SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1),
                                             SeriesDescription=None)),
     {("dicom.series_metadata", f"{SERIES1}/")}),
    # and the attributes it recommends keeping, the same way (info)
    ("recommended", add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                                         accession=ACCESSION, SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1),
                                         PixelSpacing=None)),
     {("dicom.recommended", f"{SERIES1}/")}),
    ("identifying_tag", add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                                             accession=ACCESSION, PatientName="Doe^Jane", PatientBirthDate="19600101")),
     {("dicom.identifying_tag", DCM)}),
    # the header says the pixels hold identifying text (a name burnt in): emptying the header's identifiers leaves it
    ("burned_in", add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                                       accession=ACCESSION, BurnedInAnnotation="YES")),
     {("dicom.burned_in", f"{SERIES1}/")}),
    # one series (its SeriesInstanceUID) under two accessions of a person: two procedures in the registry, one study
    ("series_split", add(f"{P0}/Images/CT/79999/{sitegen.series_uid(P0, DAY0, 1)}/005.dcm", dicom_bytes(
        person_id=P0, series=1, instance=5, study_date=DAY0, study_time="081500", accession="79999")),
     {("dicom.series_split", f"{SERIES1}/"), ("dicom.series_split", f"{P0}/Images/CT/79999/{sitegen.series_uid(P0, DAY0, 1)}/"),
      ("registry.unlisted_file", "image_registry.csv")}),
    ("registry_columns", registry("Waveforms", columns=["file_id", "proc_id", "person_id", "group_id", "visit",
                                                        "datetime", "src_file", "trg_file"]),
     {("registry.columns", "waveform_registry.csv")}),
    ("registry_column_order", registry("Images", lambda rows: [[r[1], r[0], *r[2:]] for r in rows], columns=["proc_id", "file_id", "person_id", "group_id", "visit_id",
                                                          "datetime", "src_file", "trg_file"]),
     {("registry.column_order", "image_registry.csv")}),
    ("registry_duplicate", registry("Images", lambda rows: rows + rows[:1]), {("registry.duplicate", "image_registry.csv")}),
    ("registry_person", registry("Images", lambda rows: [[*r[:2], "424242", *r[3:]] if i == 0 else r
                                                         for i, r in enumerate(rows)]),
     {("registry.unknown_person", "image_registry.csv"), ("registry.person_folder", "image_registry.csv"),
      ("registry.visit_person", "image_registry.csv"),  # (its visit is still the folder's person's)
      ("registry.procedure_person", "image_registry.csv")}),  # (and so is its procedure)
    ("registry_person_folder", registry("Waveforms", lambda rows: [[*r[:2], P1, *r[3:]] if i == 0 else r
                                                                   for i, r in enumerate(rows)]),
     {("registry.person_folder", "waveform_registry.csv"), ("registry.visit_person", "waveform_registry.csv"),
      ("registry.procedure_person", "waveform_registry.csv")}),
    ("registry_visit", registry("Waveforms", lambda rows: [[*r[:4], 1234, *r[5:]] if i == 0 else r
                                                           for i, r in enumerate(rows)]),
     {("registry.unknown_visit", "waveform_registry.csv"), ("registry.procedure_visit", "waveform_registry.csv")}),
    # Multimodal-Linkage: the visit "for the given patient": a visit of another person is no link
    ("registry_visit_person", registry("Waveforms", lambda rows: [
        [*r[:4], sitegen.visit_id(sitegen.person_ids(3).index(r[2]) ^ 1, 0), *r[5:]] if i == 0 else r
        for i, r in enumerate(rows)]),
     {("registry.visit_person", "waveform_registry.csv"), ("registry.procedure_visit", "waveform_registry.csv")}),
    # Multimodal-Linkage: the visit "that overlaps with the timestamp of the file capture"
    ("registry_visit_time", registry("Waveforms", lambda rows: [[*r[:5], "2030-01-01 08:00:00", *r[6:]] if i == 0 else r
                                                                for i, r in enumerate(rows)]),
     {("registry.visit_time", "waveform_registry.csv")}),
    # and is left NULL only "IF there is no visit for that patient that overlaps" (the capture time lies in visit 0)
    ("registry_visit_missing", registry("Waveforms", lambda rows: [[*r[:4], "", *r[5:]] if i == 0 else r
                                                                   for i, r in enumerate(rows)]),
     {("registry.visit_missing", "waveform_registry.csv"), ("registry.procedure_visit", "waveform_registry.csv")}),
    ("registry_missing", registry("Images", lambda rows: rows + [[99, rows[0][1], rows[0][2], "x", "", "2024-01-01 12:30:00", "", "gone.dcm"]]),
     {("registry.missing_file", "image_registry.csv")}),
    ("registry_unlisted", registry("Images", lambda rows: [r for r in rows if r[7] != DCM]),
     {("registry.unlisted_file", DCM), LINKAGE_GONE}),
    ("registry_values", registry("Images", lambda rows: [[r[0], "P1", *r[2:5], "18/08/2022", *r[6:]] if i == 0 else r
                                                         for i, r in enumerate(rows)]),
     {("registry.values", "image_registry.csv")}),
    # Multimodal-Linkage: proc_id "Must not overlap" the ids of EHR-derived procedures (sitegen's: 9000 + person)
    # Multimodal-Linkage: each proc_id becomes a PROCEDURE_OCCURRENCE row; the Imaging SOP: every study has one
    ("registry_no_procedure", registry("Images", lambda rows: [[r[0], 2000999999, *r[2:]] if i == 0 else r
                                                               for i, r in enumerate(rows)]),
     {("registry.no_procedure", "image_registry.csv"), LINKAGE_GONE}),
    # the converse: a session deleted after the site merged its procedure rows (its files and registry rows gone, its
    # 4141651 row kept) passed, 0 findings: the row links no file delivered
    ("linkage_without_files", both(remove(f"{TELEMETRY}/{S0['single']}"), drop_line("waveform_registry.csv", S0["single"])),
     {LINKAGE_GONE}),
    # and an image study's row, its person removed (folder, person.csv row and registry rows) after the merge
    ("linkage_without_files_person", both(remove(P0), drop_line("OMOP/person.csv", f"{P0},"),
                                          drop_line("image_registry.csv", f",{P0},"),
                                          drop_line("waveform_registry.csv", f",{P0},")),
     {LINKAGE_GONE}),
    # a site without waveforms and without a waveform registry, its 4141651 rows kept: they name no registry record
    # (0 findings: the rule looked only at concepts of registries shipped)
    ("linkage_without_registry", remove("waveform_registry.csv", *(f"{p}/Waveforms" for p in (P0, P1, P2))),
     {LINKAGE_GONE}),
    # nor any registry, nor waveform or image files (the persons' folders gone, their EHR kept): both concepts' rows
    ("linkage_without_registries", remove("waveform_registry.csv", "image_registry.csv", P0, P1, P2),
     {LINKAGE_GONE, ("person.no_folder", "OMOP/person.csv")}),
    # Multimodal-Linkage: 4141651 (Monitoring Procedure) for waveform files' procedures, 4180938 (Imaging) for images'
    ("registry_procedure_concept", edit("OMOP/procedure_occurrence.csv", lambda t: t.replace(",4141651,", ",4180938,")),
     {("registry.procedure_concept", "waveform_registry.csv")}),
    # Multimodal-Linkage: a proc_id's PROCEDURE_OCCURRENCE row is that of the files' person
    ("registry_procedure_person", edit("OMOP/procedure_occurrence.csv",
                                       lambda t: t.replace("1000000000,000101,4180938", "1000000000,000102,4180938")),
     {("registry.procedure_person", "image_registry.csv")}),
    # Multimodal-Linkage, section C: the registry's visit_id becomes the PROCEDURE_OCCURRENCE row's visit_occurrence_id
    ("registry_procedure_visit", edit("OMOP/procedure_occurrence.csv", lambda t: re.sub(
        r"^(1000000000,000101,4180938,[^\n]*,)([^,\n]*)$", lambda m: m[1] + ("" if m[2] else "1"), t, flags=re.M)),
     {("registry.procedure_visit", "image_registry.csv")}),
    ("registry_proc_overlap", registry("Images", lambda rows: [[r[0], 9001, *r[2:]] if i == 0 else r
                                                               for i, r in enumerate(rows)]),
     {("registry.proc_overlap", "image_registry.csv"), LINKAGE_GONE}),
    # the Imaging SOP's image_registry_id: the PRIMARY KEY (NOT NULL), a "sequential integer value"
    ("registry_id_key", registry("Images", lambda rows: [["x" if i == 0 else max(i, 2), *r] for i, r in enumerate(rows)],
                                 columns=REGISTRY_ID_COLUMNS),
     {("registry.image_registry_id", "image_registry.csv")}),
    ("registry_id_order", registry("Images", lambda rows: [[len(rows) - i, *r] for i, r in enumerate(rows)],
                                   columns=REGISTRY_ID_COLUMNS),
     {("registry.image_registry_order", "image_registry.csv")}),
    # a proc_id becomes one PROCEDURE_OCCURRENCE row: of one person, in one registry
    ("registry_proc_persons", registry("Waveforms", lambda rows: [*rows[:-1], [rows[-1][0], rows[0][1], *rows[-1][2:]]]),
     {("registry.proc_conflict", "waveform_registry.csv"), LINKAGE_GONE}),
    ("registry_proc_both", registry("Images", lambda rows: [[r[0], sitegen.WAVEFORM_PROC, *r[2:]] if i == 0 else r
                                                            for i, r in enumerate(rows)]),
     {("registry.proc_conflict", "image_registry.csv"), ("registry.proc_conflict", "waveform_registry.csv"),
      LINKAGE_GONE}),
    ("registry_no_trg", registry("Waveforms", lambda rows: [[*r[:7], ""] if r[7] == f"{SINGLE}.hea" else r for r in rows]),
     {("registry.missing_file", "waveform_registry.csv"), ("registry.unlisted_file", f"{SINGLE}.hea")}),
    # Multimodal-Linkage: a registry per modality "with a SINGLE ROW PER FILE", delivered with the extract
    ("registry_absent", remove("waveform_registry.csv", "image_registry.csv"),
     {("registry.absent", "waveform_registry.csv"), ("registry.absent", "image_registry.csv")}),
    # a registry exported by a tool that splits by semicolons or tabs was read by no rule: 0 findings, as if it were
    # right (the linkage procedure asks for CSV files)
    ("registry_semicolons", edit("waveform_registry.csv", lambda text: text.replace(",", ";")),
     {("registry.columns", "waveform_registry.csv")}),
    ("registry_tabs", edit("image_registry.csv", lambda text: text.replace(",", "\t")),
     {("registry.columns", "image_registry.csv")}),
    # an export tool's compressed copies (no procedure sends archives): the table was "missing" and its .gz "not an
    # OMOP table: rename or remove it", a compressed signal file a waveform file to "add" to the registry, a
    # compressed mapping named by no finding at all; each is now told to be decompressed
    ("compressed", both(gzipped("OMOP/measurement.csv"), gzipped(f"{SINGLE}.dat"),
                        add("Metadata/EEG_mapping.csv.zip", b"PK\x03\x04"), add("image_registry.csv.bz2", b"BZh9")),
     {("omop.missing_table", "OMOP/measurement.csv"), ("file.compressed", "OMOP/measurement.csv.gz"),
      ("wfdb.missing_dat", f"{SINGLE}.hea"), ("registry.missing_file", "waveform_registry.csv"),
      ("file.compressed", f"{SINGLE}.dat.gz"), ("file.compressed", "Metadata/EEG_mapping.csv.zip"),
      ("file.compressed", "image_registry.csv.bz2")}),
    # an empty file a rule reads is that rule's one finding (not file.empty too, with another remedy)
    ("registry_unreadable", add("image_registry.csv", b""), {("registry.unreadable", "image_registry.csv")}),
    ("unparsed", add(f"{P0}/Waveforms/foo.txt"), {("path.unparsed", f"{P0}/Waveforms/foo.txt")}),
    # names without an extension (a null extension once hid them from path.unparsed)
    ("dicomdir", dicomdir(f"{P0}/Images/export", DCM),
     {("path.unparsed", f"{P0}/Images/export/DICOMDIR"),
      ("path.unparsed", f"{P0}/Images/export/PT000000/ST000000/SE000000/IM000000")}),
    ("extensionless_dicom", add(f"{SERIES1}/001", dicom_bytes(person_id=P0, series=1, instance=1, study_date=DAY0,
                                                               study_time="081500", accession=ACCESSION)),
     {("path.unparsed", f"{SERIES1}/001")}),
    ("empty", add(f"{P0}/Metadata/empty.json", b""),
     {("file.empty", f"{P0}/Metadata/empty.json"), ("layout.person_subfolder", f"{P0}/Metadata/")}),
    ("duplicate", lambda root: write(root, f"{P1}/Metadata/copy.csv", (root / f"{SINGLE}n.csv").read_bytes()),
     {("file.duplicate", f"{SINGLE}n.csv"), ("file.duplicate", f"{P1}/Metadata/copy.csv"),
      ("layout.person_subfolder", f"{P1}/Metadata/")}),
    ("name_clash", both(add(f"{P1}/Metadata/Notes.txt", b"one"), add(f"{P1}/Metadata/notes.txt", b"two")),
     {("file.name_clash", f"{P1}/Metadata/Notes.txt"), ("file.name_clash", f"{P1}/Metadata/notes.txt"),
      ("layout.person_subfolder", f"{P1}/Metadata/")}),
    # folders twinned in Unicode form (NFC é, NFD e + accent) or case, their files named apart: no file path clashed,
    # yet a macOS or Windows copy merges them; one finding per spelling of the topmost twin (not Sub/ below it).
    # A file's NFC/NFD twin is told as its case twin is.
    ("name_clash_unicode", both(*(add(f"{P1}/Metadata/{n}", n.encode()) for n in (
        "Caf\u00e9/Sub/a.txt", "Cafe\u0301/Sub/b.txt", "Notes/a.txt", "notes/b.txt", "na\u00efve.txt", "nai\u0308ve.txt"))),
     {("file.name_clash", f"{P1}/Metadata/{n}") for n in ("Caf\u00e9/", "Cafe\u0301/", "Notes/", "notes/", "na\u00efve.txt",
                                                         "nai\u0308ve.txt")} | {("layout.person_subfolder", f"{P1}/Metadata/")}),
    # names a Windows disk cannot hold: one finding at the first such part (a folder's for all its files)
    ("windows_reserved", both(*(add(f"{P1}/Metadata/{n}") for n in ("CON/notes.txt", "CON/more.txt", "nul.txt",
                                                                     "Com1.hea", "lpt9", "console.txt", "nul_x.txt"))),
     {("file.unportable_name", f"{P1}/Metadata/{n}") for n in ("CON/", "nul.txt", "Com1.hea", "lpt9")} | {("layout.person_subfolder", f"{P1}/Metadata/")}),
    # spaces before the extension do not free a device name ("nul .txt" is NUL: CPython's ntpath.isreserved), and the
    # console's CONIN$ / CONOUT$ are reserved too: all four were let through
    ("windows_reserved_spaced", both(*(add(f"{P1}/Metadata/{n}") for n in ("nul .txt", "CON  .csv", "conin$.txt",
                                                                            "CONOUT$", "conin.txt", "con_x .txt"))),
     {("file.unportable_name", f"{P1}/Metadata/{n}") for n in ("nul .txt", "CON  .csv", "conin$.txt", "CONOUT$")}
     | {("layout.person_subfolder", f"{P1}/Metadata/")}),
    ("windows_characters", both(*(add(f"{P1}/Metadata/{n}") for n in ("a<b.txt", "q?.txt", "c:d", "ctl\x01.txt",
                                                                       "back\\slash.txt", "star*", "pipe|/x.txt"))),
     {("file.unportable_name", f"{P1}/Metadata/{n}") for n in ("a<b.txt", "q?.txt", "c:d", "ctl\x01.txt",
                                                               "back\\slash.txt", "star*", "pipe|/")} | {("layout.person_subfolder", f"{P1}/Metadata/")}),
    ("windows_trailing", both(*(add(f"{P1}/Metadata/{n}") for n in ("notes./a.txt", "trail ", "trail.", " lead.txt"))),
     {("file.unportable_name", f"{P1}/Metadata/{n}") for n in ("notes./", "trail ", "trail.")} | {("layout.person_subfolder", f"{P1}/Metadata/")}),
    ("long_path", add(f"{P1}/Metadata/{'d' * 200}/{'e' * 80}.txt"),
     {("file.long_path", f"{P1}/Metadata/{'d' * 200}/{'e' * 80}.txt")} | {("layout.person_subfolder", f"{P1}/Metadata/")}),
    ("split_folders", rename(f"{P2}/Images", f"{P2[1:]}/Images"),
     {("person.split_folders", f"{P2}/"), ("person.split_folders", f"{P2[1:]}/")}),
]

# The same on the flat layout of the first upload SOP, for the rules on its names.
FLAT_CASES: list[tuple[str, Callable[[Path], None], set[tuple[str, str]]]] = [
    ("name_instance", rename(FLAT_DCM, f"{FLAT_SERIES1}/{dicom_name(P0, DAY0, '081500', 'CT', 1, 3)}"),
     {("dicom.name_mismatch", f"{FLAT_SERIES1}/{dicom_name(P0, DAY0, '081500', 'CT', 1, 3)}")}),
    ("name_modality_series", rename(FLAT_DCM, f"{FLAT_SERIES1}/{dicom_name(P0, DAY0, '081500', 'MR', 2, 1)}"),
     {("dicom.name_mismatch", f"{FLAT_SERIES1}/{dicom_name(P0, DAY0, '081500', 'MR', 2, 1)}")}),
    ("datetime", rename(FLAT_DCM, f"{FLAT_SERIES1}/{dicom_name(P0, DAY0, '090000', 'CT', 1, 1)}"),
     {("dicom.datetime_mismatch", f"{FLAT_SERIES1}/{dicom_name(P0, DAY0, '090000', 'CT', 1, 1)}")}),
    ("person_mismatch", rename(FLAT_DCM, f"{FLAT_SERIES1}/{dicom_name(P1, DAY0, '081500', 'CT', 1, 1)}"),
     {("path.person_mismatch", f"{FLAT_SERIES1}/{dicom_name(P1, DAY0, '081500', 'CT', 1, 1)}")}),
    ("records_absent", edit(f"{P0}/Waveforms/RECORDS", lambda t: t + "no_such_record\n"),
     {("records.absent", f"{P0}/Waveforms/RECORDS")}),
    # the first upload SOP's name gives the recording's start and duration: <person>_<YYYYMMDD>_<HHMMSS>_<seconds>
    ("flat_name_duration", edit(f"{P0}/Waveforms/{F0['flat_record']}.hea", lambda t: t.replace(" 1 4 240", " 1 2 240", 1)),
     {("wfdb.name_mismatch", f"{P0}/Waveforms/{F0['flat_record']}.hea")}),
    ("flat_name_start", edit(f"{P0}/Waveforms/{F0['flat_record']}.hea",
                             lambda t: t.replace(" 1 4 240", f" 1 4 240 17:59:00 {DAY0[6:]}/{DAY0[4:6]}/{DAY0[:4]}", 1)),
     {("wfdb.name_mismatch", f"{P0}/Waveforms/{F0['flat_record']}.hea")}),
    # (as named: no finding; nor for a segment, <record>_0001, whose number reads as a duration)
    ("flat_name_agrees", edit(f"{P0}/Waveforms/{F0['flat_record']}.hea",
                              lambda t: t.replace(" 1 4 240", f" 1 4 242 18:00:00 {DAY0[6:]}/{DAY0[4:6]}/{DAY0[:4]}", 1)),
     {("wfdb.dat_size", f"{P0}/Waveforms/{F0['flat_record']}.dat")}),
    ("records_unlisted", drop_line(f"{P0}/Waveforms/RECORDS", F0["flat_record"]),
     {("records.unlisted", f"{P0}/Waveforms/{F0['flat_record']}.hea")}),
    ("links_unknown_visit", edit(LINKS, lambda t: t + f"9999,{F0['flat_single']}\n"), {("links.unknown_visit", LINKS)}),
]
# What a clean site of each earlier edition's layout gives: only the info findings that name today's form.
LAYOUT_FINDINGS = {
    "v2.1": set(),
    "v2.0": {("layout.superseded", "SUBMISSION.md"), SUPERSEDED_LINKS,
             ("layout.superseded", f"{P0}/waveforms/eeg/{S0['eeg']}/{S0['eeg']}.dat")},  # v2.1: Waveforms/EEG
    "v1.0": {("layout.superseded", "RECORDS"), ("layout.superseded", f"{P0}/waveforms/{S0['single']}/{S0['single']}.dat"),
             ("layout.superseded", f"{P0}/Images/ST70000/SE1/{P0}_ST70000_SE1_CT_0.dcm")},
    "flat": {("layout.superseded", f"{P0}/Waveforms/RECORDS"), SUPERSEDED_LINKS,
             ("layout.superseded", f"{FLAT_SINGLE}.dat"),
             ("layout.superseded", f"{P0}/Waveforms/{F0['flat_multi']}/{F0['flat_multi']}_0001.dat"),
             ("layout.superseded", FLAT_DCM)},
}


@pytest.mark.parametrize("layout", sitegen.LAYOUTS)
def test_a_clean_site_of_each_layout_gets_exactly_the_findings_the_procedures_imply(tmp_path, layout):
    root = tmp_path / "site"
    sitegen.build_clean_site(root, layout=layout)
    out = validate(root)
    assert {(r, s) for r, s in out.select("rule", "srcfile").rows()} == LAYOUT_FINDINGS[layout], out.to_dicts()
    assert set(out["severity"]) <= {"info"}


def test_flat_files_moved_into_telemetry_are_not_told_as_a_session_folder(flat):
    """Flat files (first upload SOP) in Waveforms/Telemetry/ are each a record of that category (classify), not a
    session folder Telemetry/: no <session_id>.hea asked of the folder, nor a non-integer session id to rename."""
    for ext in ("hea", "dat"):
        rename(f"{P0}/Waveforms/{F0['flat_record']}.{ext}", f"{P0}/Waveforms/Telemetry/{F0['flat_record']}.{ext}")(flat)
    out = validate(flat)
    assert not out.filter(pl.col("rule").is_in(["wfdb.session_record", "waveforms.session_id"])).height, out.to_dicts()
    assert not out.filter(pl.col("rule") == "path.unparsed").height, out.to_dicts()


def test_a_records_file_beside_the_sessions_is_told_as_a_records_file(clean):
    """A RECORDS in Waveforms/Telemetry/ was taken for a v1.0 session folder named Telemetry: its note said the site
    lacked "a Telemetry or EEG folder between Waveforms/ and the session", which it has."""
    add(f"{P0}/Waveforms/Telemetry/RECORDS", f"{S0['single']}/{S0['single']}\n")(clean)
    out = validate(clean).filter(pl.col("rule") != "records.unlisted")
    assert out.select("rule", "srcfile").rows() == [("layout.superseded", f"{P0}/Waveforms/Telemetry/RECORDS")]
    assert "no RECORDS file" in out["message"].item() and "between Waveforms/" not in out["message"].item()


def test_a_root_records_file_speaks_for_every_person_folder_however_the_site_is_split(tmp_path):
    """v1.0's RECORDS at the root lists the records of all persons: checked in parts (validate() splits the
    site by top-level folder), a record is absent only if no part holds it, and every listed one is found."""
    root = tmp_path / "site"
    sitegen.build_clean_site(root, layout="v1.0")
    listed = (root / "RECORDS").read_text().split()
    assert {entry.split("/")[0] for entry in listed} >= {P0, P1}  # records of several person folders
    (root / "RECORDS").write_text("\n".join([*listed, f"{P1}/waveforms/no_such_record"]) + "\n")
    out = validate(root).filter(pl.col("rule") == "records.absent")
    assert out.select("srcfile", "message").rows() == [
        ("RECORDS", f"lists record {P1}/waveforms/no_such_record but its header ({P1}/waveforms/no_such_record.hea) "
                    "is not on the site: add the record or remove the line")]


def test_a_records_line_written_with_backslashes_is_told_to_use_slashes(tmp_path):
    """A RECORDS file written on Windows ("000001\\waveforms\\rec"): WFDB reads the backslashes as part of the name, so
    the record was told only as absent ("add the record"), though it is there; the line is what to fix."""
    root = tmp_path / "site"
    sitegen.build_clean_site(root, layout="v1.0")
    listed = (root / "RECORDS").read_text().split()
    entry = next(e for e in listed if e.startswith(f"{P1}/"))
    (root / "RECORDS").write_text("\n".join([*(e for e in listed if e != entry), entry.replace("/", "\\")]) + "\n")
    messages = validate(root).filter(pl.col("rule") == "records.absent")["message"].to_list()
    assert messages == [f"lists record {entry.replace('/', chr(92))} with '\\' between its folders, which WFDB reads as "
                        f"part of a name, so no header is found for it: write the line with '/' ({entry})"], messages


def test_a_records_line_leaving_its_folder_by_dots_is_told_so_not_as_a_record_not_on_the_site(tmp_path):
    """A person's RECORDS listing another person's record by '..' ("../../000102/waveforms/rec"): told "its header
    (000101/waveforms/../../000102/waveforms/rec.hea) is not on the site: add the record", of a record that is there;
    a RECORDS file lists the records under its own folder, and the line is what to fix."""
    root = tmp_path / "site"
    sitegen.build_clean_site(root, layout="v1.0")
    entry = next(e for e in (root / "RECORDS").read_text().split() if e.startswith(f"{P1}/"))
    add(f"{P0}/waveforms/RECORDS", f"../../{entry}\n")(root)
    messages = validate(root).filter(pl.col("rule") == "records.absent")["message"].to_list()
    assert messages == [f"lists record ../../{entry} by a path with '..', out of the RECORDS file's folder: a RECORDS "
                        "file lists the records under its own folder, by their paths from it; list the record in the "
                        "RECORDS file of a folder above it, or remove the line"], messages


def test_records_entries_naming_folders_list_the_records_under_them(tmp_path):
    """PhysioNet's nested RECORDS lists folders ("000101/", each with a RECORDS of its own): such an entry was taken
    for a record "000101" whose header 000101.hea is not on the site (records.absent), and the records under it for
    unlisted. An entry of a person's RECORDS named the header by the entry alone, not where it was looked for."""
    root = tmp_path / "site"
    sitegen.build_clean_site(root, layout="v1.0")
    (root / "RECORDS").write_text(f"{P0}/\n{P1}/\n{P2}/\nno_such_folder/\n")
    add(f"{P0}/waveforms/RECORDS", "no_such_record\n")(root)
    out = validate(root).filter(pl.col("rule").str.starts_with("records."))
    assert sorted(out.select("rule", "srcfile", "message").rows()) == [
        ("records.absent", f"{P0}/waveforms/RECORDS", "lists record no_such_record but its header "
         f"({P0}/waveforms/no_such_record.hea) is not on the site: add the record or remove the line"),
        ("records.absent", "RECORDS", "lists folder no_such_folder/ but no WFDB header lies under no_such_folder/: "
         "remove the line, or add the folder's records")]


def test_a_root_records_file_larger_than_a_header_is_read_and_one_too_large_says_what_to_do(tmp_path, monkeypatch):
    """v1.0's RECORDS at the root names every record of the site: 18 MB for 450k records, over the 16 MiB a WFDB
    header may have, was 'cannot read this RECORDS file: the file is larger than 16 MiB; write one record name per
    line as UTF-8 text', of a file that was just that. RECORDS files are read up to MAX_RECORDS_BYTES; a larger one
    is told to be split by person. (Both limits pinned low: a RECORDS file of ~1 KiB.)"""
    from chorus_batch.validate import readers

    root = tmp_path / "site"
    sitegen.build_clean_site(root, layout="v1.0")
    size = (root / "RECORDS").stat().st_size
    monkeypatch.setattr(readers, "MAX_TEXT_BYTES", size // 2)  # a header's limit: below the RECORDS file
    monkeypatch.setattr(readers, "MAX_RECORDS_BYTES", size)  # exactly its size: read
    out = validate(root)
    assert out.filter(pl.col("srcfile") == "RECORDS")["rule"].to_list() == ["layout.superseded"], out.to_dicts()

    monkeypatch.setattr(readers, "MAX_RECORDS_BYTES", size - 1)  # one byte over: told, with what to do instead
    out = validate(root).filter(pl.col("rule") == "records.unreadable")
    assert out.select("srcfile", "message").rows() == [
        ("RECORDS", "cannot read this RECORDS file: the file is larger than 0 MiB, the most a RECORDS file is read to: "
                    "keep a RECORDS file in each person's folder (<person_id>/Waveforms/RECORDS) instead")]


def test_a_name_over_255_bytes_is_found_where_a_container_holds_it(clean):
    """No local disk holds such a name (ext4 refuses it), a container does: its listing is checked as any other."""
    current = scan_current(clean)
    name = "é" * 128 + ".txt"  # 132 characters, 260 bytes
    long = current.head(1).with_columns(srcfile=pl.lit(f"{P1}/Metadata/{name}"), md5=pl.lit("0" * 32))
    out = check(pl.concat([current, long]), pl.DataFrame(schema=FACTS_SCHEMA))
    out = out.filter(pl.col("rule") != "layout.person_subfolder")  # (Metadata/ belongs at the root: beside the point)
    assert out.select("rule", "srcfile", "message").rows() == [
        ("file.unportable_name", f"{P1}/Metadata/{name}", f"the name '{name}' is 260 bytes long: no common file system "
         "(NTFS, ext4, APFS) holds a name over 255 bytes, so no copy of the site on a disk can hold it; rename it")]


def test_a_signal_file_after_one_byte_offset_on_each_line_is_sized_with_it(clean):
    # '16+24' on each signal line: 24 bytes before the samples, in the size the header implies (24 + 1000)
    edit(f"{SINGLE}.hea", lambda t: t.replace(".dat 16 ", ".dat 16+24 "))(clean)
    dat = clean / f"{SINGLE}.dat"
    dat.write_bytes(bytes(24) + dat.read_bytes())
    assert validate(clean).is_empty()
    dat.write_bytes(dat.read_bytes()[24:])  # the samples alone: 24 bytes short of what the header implies
    assert validate(clean).select("rule", "srcfile").rows() == [("wfdb.dat_size", f"{SINGLE}.dat")]


def test_clean_site_has_no_findings(clean):
    out = validate(clean)
    assert out.schema == pl.Schema(FINDINGS_SCHEMA)
    assert out.height == 0, out.to_dicts()


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_fires_exactly_where_expected(clean, mutate, expected):
    mutate(clean)
    out = validate(clean, in_parts=True)
    assert {(r, s) for r, s in out.select("rule", "srcfile").rows()} == expected, out.to_dicts()
    assert out["message"].str.len_chars().min() > 20  # a sentence: what is wrong, what to do


def test_a_gap_in_a_fixed_layout_is_told_by_the_format_and_whose_reading_fails(clean):
    # the WFDB header format allows '~' (null segments) in a variable layout only; wfdb cannot read the record, the
    # WFDB C library reads the gap: the finding said "wfdb reads gaps only in a variable layout", as if only a reader's
    next(mutate for name, mutate, _ in CASES if name == "segment_gap_fixed")(clean)
    message = validate(clean).filter(pl.col("rule") == "wfdb.missing_segment")["message"].item()
    assert "the WFDB header format allows null segments only in a variable layout" in message, message
    assert "wfdb (the CHoRUS converter's library) cannot read this record, though the WFDB C library's tools read" in message


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in FLAT_CASES], ids=[c[0] for c in FLAT_CASES])
def test_each_rule_on_an_earlier_layout_fires_exactly_where_expected(flat, mutate, expected):
    mutate(flat)
    out = validate(flat)
    got = {(r, s) for r, s in out.select("rule", "srcfile").rows() if r != "layout.superseded"}
    assert got == expected, out.to_dicts()


def test_a_site_shipping_correct_registries_gets_no_finding(clean):
    registry("Waveforms")(clean)
    registry("Images")(clean)
    assert found(clean) == set()


def test_a_registry_proc_id_under_the_other_modalitys_concept_is_told(clean):
    """Multimodal-Linkage: procedure_concept_id is 4180938 (Imaging Procedure) for images, 4141651 (Monitoring
    Procedure) for waveform files. A site that made every registry row an imaging procedure got no finding: the id
    was in procedure_occurrence.csv, under a concept a registry row gets."""
    registry("Waveforms")(clean)
    registry("Images")(clean)
    edit("OMOP/procedure_occurrence.csv", lambda t: t.replace(",4141651,", ",4180938,"))(clean)
    out = validate(clean)
    assert out.select("rule", "srcfile").rows() == [("registry.procedure_concept", "waveform_registry.csv")]
    message = out["message"].item()
    assert "4141651" in message and "4180938" in message and "procedure_occurrence.csv" in message


def test_a_registry_is_asked_for_only_where_the_site_has_files_of_its_modality(clean):
    """No images (or no waveforms): no image (waveform) registry is needed; the other one still is."""
    remove(*(f"{p}/Images" for p in (P0, P1, P2)), "image_registry.csv")(clean)
    # (its imaging procedure rows kept name no registry record: registry.linkage_without_files, case
    # linkage_without_registry; a site without images has none)
    sitegen.sync_procedures(clean)
    assert found(clean) == set()
    remove("waveform_registry.csv")(clean)
    assert found(clean) == {("registry.absent", "waveform_registry.csv")}
    message = validate(clean)["message"].item()
    assert "waveform_registry.csv" in message and "chorus-batch registry" in message
    # kept in Metadata/, a registry is found there too
    registry("Waveforms")(clean)
    (clean / "waveform_registry.csv").rename(clean / "Metadata" / "waveform_registry.csv")
    assert found(clean) == set()


def test_a_site_checked_in_parts_asks_for_a_missing_registry_as_the_whole_check_does(clean):
    """Waveform linkage rows kept, no waveform registry shipped, and one part of the site (a large site is checked a
    few person folders at a time) without waveform files: that part said its waveform procedure rows link no file
    delivered (registry.linkage_without_files, as of a site without waveforms), where the whole check, which sees the
    other persons' waveforms, asks for the registry (registry.absent). found() checks in parts too: the same."""
    remove(f"{P1}/Waveforms", "waveform_registry.csv")(clean)
    rules = found(clean)
    assert ("registry.absent", "waveform_registry.csv") in rules and LINKAGE_GONE not in rules, rules


def test_submission_md_needs_no_gaps_section_where_the_data_were_left_as_recorded(clean):
    """Waveform File Format v2.1 asks for the gaps in SUBMISSION.md only "If you have already manipulated your
    waveform data to handle gaps and overlaps (this is not recommended)": a site that did not has nothing to say."""
    edit("Metadata/SUBMISSION.md", lambda t: t.replace("## Gaps\nNo gaps were filled.\n", ""))(clean)
    assert "Gaps" not in (clean / "Metadata/SUBMISSION.md").read_text()
    assert found(clean) == set()


# The waveform procedure's SUBMISSION.md template (linked from Waveform-Data.txt line 56): its topics are labels
# ("Hospital name:") under one "## Overview" heading, filled in on their line or the next
SUBMISSION_TEMPLATE = """## Overview

Hospital name:{hospital}

Brief description of the dataset: {dataset}

Any known issues: {issues}

<!-- Uncomment and fill this out if you manipulated your waveform data to handle gaps and overlaps
## Gaps and Overlaps
-->

## Format Details

The description, data type, and unit (where applicable) for each variable:

| Variable name | Description | Data type | Unit |
|---------------|-------------|-----------|------|
| StartTime     | first sample | int64    | ms   |

Details on whether sample intervals are uniform across waveform types and channels (numerics may not be):
{intervals}

## Waveform EHR Linkage

Please outline the process you used for linking `session_id` to `visit_detail_id`: by time overlap
"""


def test_submission_md_written_in_the_procedures_template_has_its_sections(clean):
    """Waveform-Data.txt line 56-59 asks SUBMISSION.md for the hospital name, a description of the dataset and the
    known issues, "template available here"; the template gives them as labels under "## Overview". A SUBMISSION.md
    filled in that template was metadata.submission_sections ("no section (heading) on: hospital or site; dataset;
    waveform types; known issues; sample intervals"); a label with its answer is one now, an unanswered one is none."""
    filled = SUBMISSION_TEMPLATE.format(hospital=" General Hospital", dataset="120 patients, 2019-2022, telemetry 300",
                                        issues="none known", intervals="Uniform for waveforms.")
    add("Metadata/SUBMISSION.md", filled)(clean)
    assert found(clean) == set()
    unfilled = SUBMISSION_TEMPLATE.format(hospital="", dataset="<number of patients, the years>",
                                          issues="<if there are any known issues>", intervals="")
    add("Metadata/SUBMISSION.md", unfilled)(clean)
    out = validate(clean).filter(pl.col("rule") == "metadata.submission_sections")["message"].to_list()
    assert len(out) == 1 and all(t in out[0] for t in ("hospital or site", "dataset", "known issues")), out


def test_submission_md_table_of_variables_answers_what_the_procedure_asks(clean):
    """Waveform File Format 4.1 asks SUBMISSION.md for "A description of each variable", "The data type for each
    variable" and the time units of the variables giving the samples' times; the template asks them in a table. A table
    left as the template's blank rows, or rows without a data type or a time variable's unit, passed unread."""
    def template(rows: str) -> str:
        return SUBMISSION_TEMPLATE.format(hospital=" General Hospital", dataset="120 patients, 2019-2022",
                                          issues="none known", intervals="Uniform for waveforms.").replace(
            "| StartTime     | first sample | int64    | ms   |\n", rows)
    # answered: a variable that is no time needs no unit ("where useful")
    add("Metadata/SUBMISSION.md", template("| StartTime | first sample | int64 | ms |\n| Lead | ECG lead name | string | |\n"))(clean)
    assert found(clean) == set()
    add("Metadata/SUBMISSION.md", template("|  |  |  |  |\n"))(clean)
    message = validate(clean).filter(pl.col("rule") == "metadata.submission_answers")["message"].item()
    assert message.startswith("the table of variables (Variable name | Description | Data type | Unit) describes no "
                              "variable"), message
    add("Metadata/SUBMISSION.md", template("| StartTime | first sample | <type> | |\n| Value | | int16 | mV |\n"
                                           "| EndTime | last sample | int64 | ms |\n"))(clean)
    message = validate(clean).filter(pl.col("rule") == "metadata.submission_answers")["message"].item()
    assert message.startswith("2 rows of the table of variables leave answers out (e.g. StartTime: data type, time "
                              "unit; Value: description)"), message


def test_an_optional_readiness_item_left_unticked_is_no_finding(clean):
    """The procedure's READINESS.md template marks "Code for converting to the submission format has been shared
    (optional)"; Waveform-Data.txt line 64 asks for that code only where it was used. Left unticked it was
    metadata.readiness_unchecked ("meet it and tick it"); an item marked optional is not asked, others still are."""
    edit("Metadata/READINESS.md", lambda t: t + "- [ ] c: Code for converting has been shared (optional)\n")(clean)
    assert found(clean) == set()
    edit("Metadata/READINESS.md", lambda t: t + "- [ ] d: Any known issues\n")(clean)
    assert found(clean) == {("metadata.readiness_unchecked", "Metadata/READINESS.md")}


def test_metadata_markdown_is_read_as_it_renders(clean):
    """Sites write READINESS.md and SUBMISSION.md in any Markdown: setext headings ("Hospital\n========") were no
    sections (metadata.submission_sections listed all seven), and items in an HTML comment or a fenced code block
    (the template's "<!-- - [ ] ... -->", an example) were told as not ticked. Neither shows when the file is read."""
    sections = ("Hospital name", "Dataset", "Waveform types", "Known issues", "Variables", "Sample intervals",
                "Linking sessions to visits")
    setext = "Submission\r\n==========\r\n\r\n" + "".join(f"{s}\r\n{'-' * len(s)}\r\nanswered\r\n\r\n" for s in sections)
    add("Metadata/SUBMISSION.md", "\ufeff" + setext)(clean)
    edit("Metadata/READINESS.md", lambda t: t + "<!--\n- [ ] an item left out\n-->\n```\n* [ ] an example\n```\n"
         "* [X] ticked\n")(clean)
    assert found(clean) == set()
    # a heading of the topic's words still counts, a line underlined that is an item does not hide one unticked
    edit("Metadata/READINESS.md", lambda t: t + "- [ ] e: open\n---\n")(clean)
    assert found(clean) == {("metadata.readiness_unchecked", "Metadata/READINESS.md")}


def test_an_image_registry_may_leave_trg_file_to_the_centre(clean):
    """The Imaging SOP's image_registry: "trg_file ... this will be populated centrally, leave blank or null". Such
    rows were errors (registry.missing_file) and every image a warning (registry.unlisted_file)."""
    registry("Waveforms")(clean)
    registry("Images", lambda rows: [[*r[:7], ""] for r in rows])(clean)
    assert found(clean) == set()


@pytest.mark.parametrize("prefix", ["/data/chorus/release/", "20241101/", "D:\\chorus\\release\\",
                                    "/mnt/Images/release/", "/srv/waveforms/2024/"])  # a release path holding such a folder
def test_a_registry_trg_file_may_carry_the_release_folder_it_was_written_in(clean, prefix):
    """Multimodal-Linkage: trg_file is the "Name and path of the renamed file to be delivered with your extract", and the
    release 'root' "can either be a dated release directory ... or a naming convention of your choice": a path from
    the machine's or the release's root names the same file. Every such row was "not on the site", every file
    "unlisted", and each row an error for a person_id "other than the person folder" it does lie in."""
    registry("Waveforms", lambda rows: [[*r[:7], prefix + r[7]] for r in rows])(clean)
    registry("Images", lambda rows: [[*r[:7], prefix + r[7]] for r in rows])(clean)
    assert prefix + f"{P0}/" in (clean / "waveform_registry.csv").read_text()
    assert found(clean) == set()
    # a path that is wrong after the release folder still is: the row's file under another person
    first: list[str] = []
    registry("Waveforms", lambda rows: first.append(rows[0][7]) or
             [[*r[:7], prefix + (P1 + r[7][len(P0):] if i == 0 else r[7])] for i, r in enumerate(rows)])(clean)
    assert first[0].startswith(f"{P0}/")
    assert found(clean) == {("registry.missing_file", "waveform_registry.csv"),
                            ("registry.person_folder", "waveform_registry.csv"), ("registry.unlisted_file", first[0])}


@pytest.mark.parametrize("image, waveform", [("imaging_registry.csv", "wave_registry.csv"),
                                             ("Metadata/IMG_Registry.CSV", "Metadata/Waveforms_Registry.csv")])
def test_a_registry_is_known_by_the_modality_its_name_gives(clean, image, waveform):
    """The procedures name the tables (the image registry, the waveform registry), not their files: an
    imaging_registry.csv was no image registry (registry.absent, and its blank trg_files told as missing)."""
    rename("image_registry.csv", image)(clean)
    rename("waveform_registry.csv", waveform)(clean)
    assert found(clean) == set()


def test_a_registry_shipped_in_another_format_is_named_where_the_csv_is_asked_for(clean):
    """Multimodal-Linkage: the registries are "delivered as CSV files". An image_registry.tsv at the root got
    "ships no image_registry.csv" beside "only the linkage registries belong at the root", naming neither the file nor
    what to do with it."""
    rename("image_registry.csv", "Metadata/image_registry.tsv")(clean)
    out = validate(clean)
    assert {(r, s) for r, s in out.select("rule", "srcfile").rows()} == {("registry.absent", "image_registry.csv")}
    assert ("(nor one in Metadata/; Metadata/image_registry.tsv is one, not read: the linkage procedure's registries "
            "are \"delivered as CSV files\", write it comma-delimited as image_registry.csv)") in out["message"].item()


def test_a_proc_id_whose_procedure_is_another_persons_is_told(clean):
    """A registry's proc_id whose PROCEDURE_OCCURRENCE row (concept 4180938) was another person's passed without a
    word: the files were linked to that person's procedure. Leading zeros do not make another person."""
    edit("OMOP/procedure_occurrence.csv", lambda t: t.replace("1000000000,000101,4180938", "1000000000,101,4180938"))(clean)
    assert "registry.procedure_person" not in set(validate(clean)["rule"])
    edit("OMOP/procedure_occurrence.csv", lambda t: t.replace("1000000000,101,4180938", "1000000000,000102,4180938"))(clean)
    message = validate(clean).filter(pl.col("rule") == "registry.procedure_person")["message"].item()
    assert message.startswith("1 proc_id is a procedure of another person in procedure_occurrence.csv (e.g. "
                              "1000000000 of person 000101 in the registry, 000102 in procedure_occurrence.csv)"), message


def test_ids_written_as_decimals_are_told_so(clean):
    """A registry written by pandas, whose visit_id column has empty cells, holds visit 1 as 1.0: the finding said
    'visit_id(s) 1.0 are not in visit_occurrence.csv', and the site looked for a visit that is there."""
    registry("Waveforms", lambda rows: [[*r[:4], f"{r[4]}.0" if r[4] != "" else "", *r[5:]] for r in rows])(clean)
    message = validate(clean).filter(pl.col("rule") == "registry.unknown_visit")["message"].item()
    visit = message.split(" ")[1].rstrip(",")  # "visit_id 1.0 is ..." or "visit_ids 1.0, 2.0 are ..."
    assert visit.endswith(".0") and f"({visit} is an integer written as a decimal" in message, message
    assert message.endswith(f"write {visit[:-2]})"), message


def test_visit_ids_that_visit_occurrence_csv_writes_as_decimals_are_told_so(clean):
    """visit_occurrence.csv written by pandas (an integer column with empty cells) holds visit 5000 as 5000.0: the
    registry's right visit_id 5000 was told "not in visit_occurrence.csv: fix the rows", as person.csv's decimals
    are not (registry.unknown_person names them)."""
    visit = str(sitegen.visit_id(0, 0))
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace(f"\n{visit},", f"\n{visit}.0,"))(clean)
    messages = validate(clean).filter(pl.col("rule") == "registry.unknown_visit")["message"].to_list()
    assert len(messages) == 2 and all(m.endswith(
        f"(visit_occurrence.csv writes visit_occurrence_ids as decimals, such as {visit} as {visit}.0: OMOP's "
        "visit_occurrence_id is an integer; write visit_occurrence.csv's visit_occurrence_ids as integers)")
        for m in messages), messages


def test_a_registry_visit_is_checked_against_the_capture_times_of_its_rows(clean):
    """Multimodal-Linkage: visit_id is the person's visit "that overlaps with the timestamp of the file capture". A row
    captured after its visit ended was not told; a visit given by its dates alone spans the whole day."""
    person = sitegen.person_ids(3)[0]
    visit = sitegen.visit_id(0, 0)  # 2024-01-01 00:00:00 to 12:00:00 (sitegen.visit_hours)
    registry("Waveforms", lambda rows: [[*r[:5], "2024-01-01T13:30:00.5" if r[2] == person else r[5], *r[6:]]
                                        for r in rows])(clean)
    message = validate(clean).filter(pl.col("rule") == "registry.visit_time")["message"].item()
    assert message.startswith(f"1 visit_id is given to rows captured outside the visit's start and end in "
                              f"visit_occurrence.csv (e.g. visit {visit} (2024-01-01 00:00:00 to 2024-01-01 12:00:00) "
                              "given to rows captured 2024-01-01 13:30:00): the linkage procedure asks for the person's "
                              "visit that overlaps the capture time"), message
    # its end given by the date alone (visit_end_datetime empty; the date written with its midnight time, as a
    # database export writes a DATE): the whole day, which holds 13:30
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace(
        f"{visit},{person},9201,2024-01-01,2024-01-01 00:00:00,2024-01-01,2024-01-01 12:00:00",
        f"{visit},{person},9201,2024-01-01,2024-01-01 00:00:00,2024-01-01 00:00:00,"))(clean)
    assert "registry.visit_time" not in set(validate(clean)["rule"])


def test_a_registry_visit_left_empty_is_checked_against_the_persons_visits(clean):
    """Multimodal-Linkage: without an explicit link, visit_id is inferred from the capture time; it is left NULL only
    "IF there is no visit for that patient that overlaps". A row left empty though its person's visit holds its capture
    time was not told; one captured between the person's visits, or inside another person's visit, is right."""
    persons = sitegen.person_ids(3)
    # person 0's rows: empty, captured at 08:00 of visit 0 ([00:00, 12:00]); person 1's: empty, captured at 12:30,
    # between its visits ([00:00, 12:00] and [13:00, 23:59:59]) and inside no other visit of theirs
    noon = f"{sitegen.start_of(1, 12):%Y-%m-%d} 12:30:00"
    registry("Waveforms", lambda rows: [
        [*r[:4], "", r[5] if r[2] == persons[0] else noon, *r[6:]] if r[2] in persons[:2] else r
        for r in rows])(clean)
    message = validate(clean).filter(pl.col("rule") == "registry.visit_missing")["message"].item()
    assert message.startswith(
        f"1 capture time of rows that leave visit_id empty lies inside a visit of the row's person in "
        f"visit_occurrence.csv (e.g. person {int(persons[0])} captured {sitegen.captured(0)} "
        f"(visit {sitegen.visit_id(0, 0)})): the linkage procedure infers the visit"), message
    assert persons[1] not in message and str(int(persons[1])) not in message.split("(e.g.")[1], message


@pytest.mark.parametrize("given", [True, False])
def test_a_visit_datetime_with_a_time_zone_is_told_as_registry_tells_it(clean, given):
    """visit_occurrence.csv with an end datetime in UTC (2024-01-01T12:00:00Z): registry.visit_time (the rows' visit
    given) and registry.visit_missing (left empty) compared the capture times with the clock time written, the zone
    dropped, without a word, while `registry` warns of it; now they say so, in its words."""
    person = sitegen.person_ids(3)[0]
    visit = sitegen.visit_id(0, 0)
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace(
        f"{visit},{person},9201,2024-01-01,2024-01-01 00:00:00,2024-01-01,2024-01-01 12:00:00",
        f"{visit},{person},9201,2024-01-01,2024-01-01 00:00:00,2024-01-01,2024-01-01T12:00:00Z"))(clean)
    assert "T12:00:00Z" in (clean / "OMOP" / "visit_occurrence.csv").read_text()
    if not given:
        registry("Waveforms", lambda rows: [[*r[:4], "" if r[2] == person else r[4], *r[5:]] for r in rows])(clean)
    rule = "registry.visit_time" if given else "registry.visit_missing"
    told = validate(clean).filter((pl.col("rule") == rule) & pl.col("message").str.contains("time zone")
                                  & (pl.col("srcfile") == "waveform_registry.csv"))
    assert told.height == 1, validate(clean).select("rule", "message").rows()
    message = told["message"].item()
    whose = "that these rows name" if given else "of the persons of rows that leave visit_id empty"
    assert message.startswith(f"1 visit {whose} has, in visit_occurrence.csv, a start or end datetime with a time "
                              "zone"), message
    assert f"visit {visit}: start '2024-01-01 00:00:00', end '2024-01-01T12:00:00Z'" in message, message
    assert "nothing converted" in message, message


def test_the_imaging_sops_visit__id_column_is_visit_id(clean):
    """The Imaging SOP's image_registry (its CREATE TABLE and its "CSV: Header labels") spells the column "visit_ id";
    a site that copied it got registry.columns, and no other rule looked at its registry."""
    registry("Images", columns=["image_registry_id", "file_id", "proc_id", "person_id", "group_id", "visit_ id",
                                "datetime", "src_file", "trg_file"],
             change=lambda rows: [[k + 1, *r[:4], 424242 if k == 0 else r[4], *r[5:7], ""] for k, r in enumerate(rows)])(clean)
    assert "visit_ id" in (clean / "image_registry.csv").read_text()
    assert found(clean) == {("registry.unknown_visit", "image_registry.csv"),  # read: its visit ids are checked
                            ("registry.procedure_visit", "image_registry.csv")}


@pytest.mark.parametrize("null", ["null", "NULL", "\\N"])
def test_a_registry_cell_written_null_is_empty(clean, null):
    """The Imaging SOP's image_registry: trg_file "will be populated centrally, leave blank or null" (its example table
    writes null); Multimodal-Linkage: visit_id "LEAVE THIS FIELD NULL" where no visit overlaps. A registry exported
    from SQL writing NULL (MySQL: \\N) got every image told unlisted, "null" as a file with many rows and a missing
    one, and NULL as an unknown visit."""
    # (the NULL visit's row captured between its person's visits, at 12:30: registry.visit_missing otherwise)
    between = f"{sitegen.start_of(0, 12):%Y-%m-%d} 12:30:00"
    registry("Images", lambda rows: [[*r[:4], null, between, r[6], null] if i == 0 else [*r[:7], null]
                                     for i, r in enumerate(rows)])(clean)
    # (and its procedure row without a visit, as the registry's: registry.procedure_visit otherwise)
    proc = (clean / "image_registry.csv").read_text().splitlines()[1].split(",")[1]
    edit("OMOP/procedure_occurrence.csv", lambda t: re.sub(rf"^({proc},[^\n]*,)[^,\n]*$", r"\g<1>", t, flags=re.M))(clean)
    assert null in (clean / "image_registry.csv").read_text()
    assert found(clean) == set()


@pytest.mark.parametrize("null", ["null", "NULL", "\\N"])
def test_an_omop_cell_written_null_is_empty(clean, tmp_path, null):
    """A table exported from SQL writes NULL (MySQL: \\N) where a value is missing, as the registries may: person.csv's
    row of a NULL person_id was told as a person without a folder ("e.g. NULL"), and a visit_end_datetime NULL was
    taken as the visit's end over its visit_end_date (read as the datetime's first 10 characters: no end at all)."""
    from chorus_batch.validate.readers import parse_facts

    edit("OMOP/person.csv", lambda t: t + f"{null},8507,1970,0,0\n")(clean)
    assert found(clean) == set()
    write(tmp_path, "OMOP/visit_occurrence.csv", "visit_occurrence_id,person_id,visit_end_date,visit_end_datetime\n"
                                                 f"1,{null},2024-01-02,{null}\n{null},5,2024-01-03,\n")
    with open(tmp_path / "OMOP/visit_occurrence.csv", "rb") as f:
        facts = parse_facts("omop_visits.v11", f)
    assert (facts["visit_occurrence_id"], facts["person_id"], facts["visit_end"]) == ("1", "", "2024-01-02"), facts


def test_a_stream_based_submission_that_says_where_its_times_fall_is_not_told(clean):
    """Waveform File Format 4.1.1 asks a stream-based submission to say in SUBMISSION.md whether start_time and
    end_time are at the start or end of the first and last samples; one that says so is not told to."""
    edit("Metadata/EEG_mapping.csv", lambda t: re.sub(r",time(\r?\n)", r",t0,t1\1",
                                                      t.replace("timestamp_id", "start_time,end_time")))(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "metadata.submission_answers")["message"]
    assert message.startswith("Metadata/EEG_mapping.csv is stream-based (start_time, end_time), but SUBMISSION.md "
                              "says nothing of the first or last sample: say whether"), message
    edit("Metadata/SUBMISSION.md", lambda t: t + "\nt0 is the time of the start of the first sample of a stream, t1 "
                                                 "the time of the end of its last sample.\n")(clean)
    assert found(clean) == set()


def test_a_csv_named_by_its_session_is_a_high_frequency_or_annotation_file_not_misnamed_numerics(clean):
    """Waveform File Format v2.1 names a session's high-frequency and annotation files <session_id>.<ext> in the
    submitted format, and its numerics <session_id>n.csv: a 900001.csv (alarms) beside the WFDB record 900001 was told
    to be renamed 900001n.csv. Another CSV name still is told."""
    add(f"{SINGLE}.csv", "time,alarm\n0,ASYSTOLE\n")(clean)
    assert found(clean) == {unlisted(f"{SINGLE}.csv")}
    add(f"{SINGLE}_alarms.csv", "time,alarm\n0,ASYSTOLE\n")(clean)
    assert found(clean) == {unlisted(f"{SINGLE}.csv"), unlisted(f"{SINGLE}_alarms.csv"),
                            ("wfdb.numerics_name", f"{SINGLE}_alarms.csv")}


def test_a_note_table_without_note_text_lacks_no_required_column(clean):
    """CDM 5.4 requires note_text; the upload procedure asks sites for the note table's ids, descriptors and keys,
    not the notes' text: a table without the column is not told to add it."""
    edit("OMOP/note.csv", lambda t: t.replace(",note_text", ",note_title", 1))(clean)
    assert found(clean) == set()
    edit("OMOP/note.csv", lambda t: t.replace(",note_date", ",note_day", 1))(clean)
    assert found(clean) == {("omop.required_columns", "OMOP/note.csv")}


def test_a_dicom_file_without_its_extension_is_told_to_be_named_dcm(clean):
    """A DICOM image in a series folder named without .dcm (001): the finding says why it was not read and how to name
    it, not only that the path fits no layout."""
    add(f"{SERIES1}/001", dicom_bytes(person_id=P0, series=1, instance=1, study_date=DAY0, study_time="081500",
                                      accession=ACCESSION))(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "path.unparsed")["message"]
    assert message.startswith("001 lies in a series folder") and "name it <InstanceNumber>.dcm" in message
    assert "not read as DICOM" in message


def test_every_rule_is_exercised_and_well_formed():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids))
    assert {r.severity for r in RULES} <= {"error", "warning", "info"}
    assert all(r.description.endswith(".") and r.title for r in RULES)
    exercised = {rule for _, _, expected in [*CASES, *FLAT_CASES] for rule, _ in expected}
    # RUN_RULES: tested where runs see them (test_unattended); file.unread: a read that fails after the listing
    # (test_a_file_gone_after_its_listing_is_unread_not_bad_content, and in test_validate_run); registry.renamed_folder:
    # told of a manifest's two versions (test_validate_run: ..._renamed_after_the_registries_is_told_once_as_the_cause)
    assert exercised | set(RUN_RULES) | {"file.unread", "registry.renamed_folder"} == set(ids)


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
    write(clean, f"{P1}/Images/CT/70001/1.2.3/009.dcm", b"")
    write(clean, "Metadata/READINESS.md", b"")  # (its finding added "write it as UTF-8 text" to "copy it again")
    current = scan_current(clean)
    facts = extract_facts(LocalSource(clean), facts_needed(current))
    assert facts.schema == pl.Schema(FACTS_SCHEMA)
    errors = dict(facts.filter(pl.col("facts").str.contains('"error"')).select("kind", "facts").rows())
    assert set(errors) == {"wfdb_header.v11", "dicom.v17", "omop_csv.v2", "metadata_md.v5"}
    out = check(current, facts)
    got = {(r, s) for r, s in out.select("rule", "srcfile").rows()}
    assert {("wfdb.bad_header", f"{SINGLE}.hea"), ("dicom.unreadable", DCM),
            ("omop.unreadable", "OMOP/observation.csv"), ("omop.unreadable", "OMOP/note.csv"),
            ("wfdb.bad_header", f"{MULTI}_0002.hea")} <= got
    # An empty file a rule reads was told twice (the reader's error, and file.empty with another remedy): now once,
    # by the rule that reads it, with the likely cause and what to do.
    empties = ("OMOP/note.csv", f"{MULTI}_0002.hea", f"{P1}/Images/CT/70001/1.2.3/009.dcm", "Metadata/READINESS.md")
    told = out.filter(pl.col("srcfile").is_in(empties))
    assert sorted(told["srcfile"]) == sorted(empties) and "file.empty" not in told["rule"]
    assert all(m.endswith("empty (0 bytes), likely an interrupted copy: copy it again") for m in told["message"]), told


def test_unreadable_files_give_facts_marked_for_retry(clean):
    """A file that vanished is not bad content: its facts say so, so the caller does not cache them."""
    todo = pl.DataFrame({"srcfile": [f"{SINGLE}.hea"], "md5": ["0" * 32], "kind": ["wfdb_header.v11"]})
    (clean / f"{SINGLE}.hea").unlink()
    facts = extract_facts(LocalSource(clean), todo)
    assert facts["facts"].str.json_decode(pl.Struct({"error": pl.String, "retry": pl.Boolean})).struct.field(
        "retry").to_list() == [True]


@pytest.mark.parametrize("gone", [f"{SINGLE}.hea", DCM, "OMOP/person.csv", "Metadata/SUBMISSION.md"])
def test_a_file_gone_after_its_listing_is_unread_not_bad_content(clean, gone):
    """A read that fails says nothing of the content: file.unread, not the kind's 'not a readable header ...;
    re-export it', and no rule reads facts it does not have (person.csv gone: no person is called missing)."""
    current = scan_current(clean)
    (clean / gone).unlink()
    out = check(current, extract_facts(LocalSource(clean), facts_needed(current)))
    got = {(r, s) for r, s in out.select("rule", "srcfile").rows()}
    assert got == {("file.unread", gone)}, out.to_dicts()
    assert "No such file" in out["message"].item() and "the next run" in out["message"].item()


def test_dicom_is_read_without_its_pixel_data(clean):
    data = dicom_bytes(person_id=P0, series=1, instance=1, study_date=DAY0, study_time="081500", size=64)
    write(clean, DCM, data)
    current = scan_current(clean)
    todo = facts_needed(current).filter(pl.col("srcfile") == DCM)
    facts = extract_facts(LocalSource(clean), todo)
    assert facts.height == 1 and '"series_number":"1"' in facts["facts"][0] and "error" not in facts["facts"][0]
    # half the pixels gone (an interrupted copy): the header reads well, the image does not; told by its size alone
    write(clean, DCM, data[: len(data) - 64 * 64])
    facts = extract_facts(LocalSource(clean), facts_needed(scan_current(clean)).filter(pl.col("srcfile") == DCM))
    assert "the file ends inside its pixel data" in facts["facts"][0]


def test_a_dicom_writing_image_attributes_after_its_pixel_data_is_told_so_not_as_lacking_them():
    """A header is read up to the pixel data, where DICOM's ascending tag order puts them after every other element: a
    file writing Rows, Columns... (0028,xxxx) after them was told as lacking them (dicom.recommended), though it holds
    them. Told as out of order now (the 4 bytes after the pixel data read, never the pixels)."""
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from chorus_batch.validate.readers import parse_facts
    from chorus_batch.validate.rules import KIND_DICOM

    data = dicom_bytes(person_id=P0, series=1, instance=1, study_date=DAY0, study_time="081500", size=8)
    ds = pydicom.dcmread(io.BytesIO(data))
    image = [e for e in ds if e.tag.group == 0x0028]
    assert image and all(e.tag < 0x7FE00010 for e in image)
    pixels_at = data.rindex(b"\xe0\x7f\x10\x00")  # (the pixel data element, the last)
    moved = pydicom.Dataset()
    for element in image:
        moved.add(element)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, ds.original_encoding[0]
    write_dataset(out, moved)
    image_bytes = out.getvalue()
    assert image_bytes in data[:pixels_at]
    reordered = data[:pixels_at].replace(image_bytes, b"") + data[pixels_at:] + image_bytes
    assert pydicom.dcmread(io.BytesIO(reordered)).Rows == ds.Rows  # (pydicom reads the whole file so)
    facts = parse_facts(KIND_DICOM, io.BytesIO(reordered))
    assert facts["error"] == (f"its elements are out of order: ({image[0].tag.group:04X},{image[0].tag.element:04X}) "
                              "follows the pixel data (7FE0,0010), where DICOM keeps a data set's elements in ascending "
                              "tag order and readers of its header stop")
    # (a file written without its preamble: 'DICM' at byte 0, told so, not as having no 'DICM' prefix)
    assert parse_facts(KIND_DICOM, io.BytesIO(data[128:]))["error"] == (
        "not a DICOM Part 10 file: it begins with 'DICM', without the 128-byte preamble that comes before it")
    # zeros after the pixel data (padding a writer left): no element, nothing told
    assert "error" not in parse_facts(KIND_DICOM, io.BytesIO(data + bytes(16)))
    assert "error" not in parse_facts(KIND_DICOM, io.BytesIO(data))


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
    assert set(todo["kind"]) == {"wfdb_header.v11", "dicom.v17", "omop_csv.v2", "omop_person.v9", "omop_visits.v11", "metadata_md.v5",
                                 "mapping_csv.v7", "registry_csv.v18", "omop_procedures.v7"}
    assert facts.sort("kind", "md5").equals(extract_facts(LocalSource(clean), todo, workers=1).sort("kind", "md5"))


def test_facts_missing_for_some_files_give_no_false_findings(clean):
    """The caller may not have extracted every file's facts yet: rules needing them stay silent."""
    current = scan_current(clean)
    facts = extract_facts(LocalSource(clean), facts_needed(current).filter(pl.col("kind") != "dicom.v17"))
    assert check(current, facts).height == 0
    assert check(current, pl.DataFrame(schema=FACTS_SCHEMA)).filter(pl.col("severity") != "info").height == 0


def test_numeric_person_and_visit_ids_match_zero_padded_ones(clean):
    persons_csv([str(int(p)) for p in (P0, P1, P2)])(clean)
    registry("Waveforms", lambda rows: [[*r[:2], f"00{r[2]}", r[3], f"0{r[4]}", *r[5:]] for r in rows])(clean)
    links([(5000, S0["single"]), ("05000", S0["multi"])])(clean)
    assert found(clean) == {SUPERSEDED_LINKS}


def test_records_may_name_records_by_path_or_by_name(flat):
    edit(f"{P0}/Waveforms/RECORDS", lambda t: t.replace(F0["flat_single"], f"{F0['flat_single']}/{F0['flat_single']}"))(flat)
    assert {r for r, _ in found(flat)} == {"layout.superseded"}
    records = [f"{p}/waveforms/{sessions_of(p, i)[k]}/{sessions_of(p, i)[k]}" for i, p in enumerate(sitegen.person_ids(3))
               for k in ("single", "multi", "eeg")]
    v1 = flat.parent / "v1"
    sitegen.build_clean_site(v1, layout="v1.0")
    write(v1, "RECORDS", "".join(f"{r}\n" for r in records[1:]) + "./" + records[0] + ".hea\n")
    assert {r for r, _ in found(v1)} == {"layout.superseded"}
    write(v1, "RECORDS", "".join(f"{r}\n" for r in records[1:]))
    assert found(v1) - LAYOUT_FINDINGS["v1.0"] == {("records.unlisted", f"{records[0]}.hea")}


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


def test_check_covers_many_files_at_once(clean):
    """100k copies of one DICOM file are each checked (the speed of this is measured in benchmarks/, not here)."""
    current = scan_current(clean)
    facts = extract_facts(LocalSource(clean), facts_needed(current))
    dicom = current.filter(pl.col("srcfile") == DCM)
    n = 100_000
    copies = dicom.drop("srcfile", "segment").join(pl.DataFrame({"i": range(10, n + 10)}), how="cross").with_columns(
        srcfile=pl.format(f"{SERIES1}/{{}}.dcm", pl.col("i")), segment=pl.col("i").cast(pl.String))
    many = pl.concat([current, copies.select(current.columns)])
    out = check(many, facts)
    assert out.filter(pl.col("rule") == "dicom.path_mismatch").height == n


def test_a_csv_row_too_long_to_parse_is_a_finding_and_the_file_hashes_true(tmp_path):
    """pyarrow's CSV reader reads ahead in a thread of its own: after it gave up on a row longer than its block,
    that thread went on reading the file the hashing worker then MD5'd the rest of, so the bytes were hashed out
    of order and the file was dropped from the version as "changed while it was hashed" (and then reported as
    a missing table). Now the parse stops its reads first: one finding that says what is wrong, the true MD5."""
    import hashlib

    from chorus_batch.validate.readers import parser

    body = b"person_id,note\n000001," + b"a" * (12 << 20) + b"\n000002,b\n"
    write(tmp_path, "OMOP/person.csv", body)
    outcome = LocalSource(tmp_path).hash_file("OMOP/person.csv", bytearray(1 << 20), parser("omop_person.v9"))
    assert outcome.md5 == hashlib.md5(body).hexdigest()
    assert "longer than 4 MiB" in outcome.facts and "block size" not in outcome.facts


@pytest.mark.parametrize(("kind", "name", "header"), [
    ("omop_person.v9", "OMOP/person.csv", "person_id,note"),
    ("omop_visits.v11", "OMOP/visit_occurrence.csv", "visit_occurrence_id,person_id"),
    ("waveform_links.v7", "OMOP/waveform_visit_links.csv", "visit_occurrence_id,session_id"),
    ("omop_procedures.v7", "OMOP/procedure_occurrence.csv", "procedure_occurrence_id,procedure_concept_id")])
def test_a_csv_row_too_long_to_parse_is_named_by_its_row(tmp_path, kind, name, header):
    """A 10 MiB value in row 200,002 of a table was told "a row or a quoted value is longer than 4 MiB": which
    row of millions, not said. pyarrow hands on every row before it: the finding names it, and what to do."""
    from chorus_batch.validate.readers import parser

    rows = b"".join(b"%06d,4141651\n" % i for i in range(200_000))
    body = header.encode() + b"\n" + rows + b"000001,\"" + b"a" * (10 << 20) + b"\"\n000002,b\n"
    write(tmp_path, name, body)
    outcome = LocalSource(tmp_path).hash_file(name, bytearray(1 << 20), parser(kind))
    facts = json.loads(outcome.facts)
    assert ("row 200002 (counting the header row as 1) is longer than 4 MiB, or a quoted value from it is"
            in facts["error"]), facts
    assert facts["error"].endswith("close its quote or shorten its value"), facts


@pytest.mark.parametrize("first", [b"\xef\xbb\xbf", b"\r\n", b",,,\n"])
def test_a_registry_whose_first_line_is_empty_is_told_so(clean, first):
    """A registry holding only a byte-order mark was told "the header () lacks some of file_id, ...", as if a
    header row had been read; a blank first line pyarrow's "Empty CSV file or block", commas only that the header
    names column(s) "" more than once."""
    add("image_registry.csv", first)(clean)
    found = validate(clean).filter(pl.col("srcfile") == "image_registry.csv")
    assert found["rule"].to_list() == ["registry.unreadable"], found.to_dicts()
    assert "first line is empty" in found["message"][0] and "()" not in found["message"][0], found["message"][0]


def test_a_table_ending_in_zeros_is_told_so_not_as_an_unclosed_quote(tmp_path):
    """A copy that did not finish often leaves the file at its full size with zeros after the bytes that came (a
    preallocated or sparse file): the rows end, then one "row" of NUL bytes longer than any block. The finding said
    a quote was never closed, sending the site to look for one; it now says what the file holds."""
    from chorus_batch.validate.readers import parse_facts

    body = b"person_id,note\n000001,a\n000002,b\n" + b"\0" * (12 << 20)
    write(tmp_path, "OMOP/person.csv", body)
    with open(tmp_path / "OMOP/person.csv", "rb") as f:
        facts = parse_facts("omop_person.v9", f)
    assert "NUL bytes" in facts["error"] and "quote" not in facts["error"], facts["error"]


ZEROS_CASES = [  # (kind, file, its header and a row): each reader of CSV text
    ("omop_person.v9", "OMOP/person.csv", "person_id,note\n000001,a\n"),
    ("omop_procedures.v7", "OMOP/procedure_occurrence.csv",
     "procedure_occurrence_id,person_id,procedure_concept_id\n1,000001,4180938\n"),
    ("mapping_csv.v7", "Metadata/Telemetry_mapping.csv",
     "signal_id,standardized_label,sampling_rate,units,timestamp_id\nII,MDC_ECG_ELEC_POTL_II,250,mV,t\n"),
    ("registry_csv.v18", "image_registry.csv",
     "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\na,1,000001,g,5,2024-01-01 00:00:00,a,b\n"),
]


@pytest.mark.parametrize("kind, name, text", ZEROS_CASES, ids=[c[0] for c in ZEROS_CASES])
@pytest.mark.parametrize("zeros", [4096, 0], ids=["after_rows", "only_zeros"])
def test_every_csv_reader_tells_the_zeros_of_an_unfinished_copy(tmp_path, kind, name, text, zeros):
    """A mapping file or registry ending in zeros (an unfinished copy) was told as pyarrow's "Expected 8 columns, got
    1: \\x00\\x00..."; procedure_occurrence.csv too; a file of zeros only as "control characters (binary data?)".
    Every CSV reader now tells them as OMOP tables are told."""
    from chorus_batch.validate.readers import parse_facts

    write(tmp_path, name, (text.encode() + b"\0" * zeros) if zeros else b"\0" * 8192)
    if zeros == 0:  # a copy cut after its first byte: not UTF-16 text, though every other byte is NUL
        write(tmp_path, name, text.encode()[:1] + b"\0" * 8192)
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    assert "NUL bytes" in error and "copy or export the file again" in error and "\\x00" not in error, error


@pytest.mark.parametrize("kind, name, text", ZEROS_CASES, ids=[c[0] for c in ZEROS_CASES])
def test_a_csv_whose_lines_end_in_a_carriage_return_alone_is_read_as_with_newlines(tmp_path, kind, name, text):
    """Lines ended by CR alone (classic Mac OS, some spreadsheets' CSV export) were one endless first line: the
    finding was the csv module's "cannot parse the file (Error: new-line character seen in unquoted field - do you
    need to open the file in universal-newline mode?)". pyarrow reads such lines: the facts are those of LF lines."""
    from chorus_batch.validate.readers import parse_facts

    facts = {}
    for ending in ("\n", "\r", "\r\n"):
        write(tmp_path, name, text.replace("\n", ending).encode())
        with open(tmp_path / name, "rb") as f:
            facts[ending] = parse_facts(kind, f)
    assert "error" not in facts["\n"], facts["\n"]
    assert facts["\r"] == facts["\n"] == facts["\r\n"], facts


@pytest.mark.parametrize("kind, name, text", ZEROS_CASES, ids=[c[0] for c in ZEROS_CASES])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_csv_saved_as_utf16_is_told_so_not_as_binary_or_an_unfinished_copy(tmp_path, kind, name, text, encoding):
    """A spreadsheet's "Unicode text" export is UTF-16: NUL in every other byte. It was told as "control characters
    (binary data?)", then as the zeros of an unfinished copy; it is told as UTF-16, with the export to make."""
    from chorus_batch.validate.readers import parse_facts

    write(tmp_path, name, text.encode(encoding))
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    assert error == "the file is UTF-16 text, not UTF-8: save or export it again as CSV UTF-8", error


@pytest.mark.parametrize("kind, text, expected", [
    (KIND_RECORDS, "1000\n1001\n", "not UTF-8"),
    ("wfdb_header.v11", "1000 1 250 10\n1000.dat 16 200/mV 16 0 0 0 0 II\n", "not ASCII")])
def test_a_text_file_saved_as_utf16_is_told_so_not_as_binary_data(tmp_path, kind, text, expected):
    """SUBMISSION.md (or RECORDS, a WFDB header) saved by an editor as "Unicode" was "not UTF-8 text (binary data?)"."""
    from chorus_batch.validate.readers import parse_facts

    write(tmp_path, "f", text.encode("utf-16"))
    with open(tmp_path / "f", "rb") as f:
        assert parse_facts(kind, f)["error"] == f"the file is UTF-16 text, {expected}"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_markdown_file_saved_as_utf16_with_its_byte_order_mark_is_read(tmp_path, encoding):
    """SUBMISSION.md saved by Notepad or Word as "Unicode" (UTF-16 with a byte-order mark) was refused as "the file is
    UTF-16 text, not UTF-8", with nothing of what to do; the mark says how to read it. Without the mark: told how to
    save it again."""
    from chorus_batch.validate.readers import parse_facts
    from chorus_batch.validate.rules import KIND_MARKDOWN

    text = "# Submission\n## Hospital\nHospital name: Général\n- [x] done\n- [ ] not yet\n"
    data = text.encode(encoding)
    if encoding != "utf-16":  # (Python's "utf-16" writes the mark; the -le/-be codecs do not)
        data = ("\ufeff" + text).encode(encoding)
    facts = parse_facts(KIND_MARKDOWN, io.BytesIO(data))
    assert "error" not in facts, facts
    assert facts == parse_facts(KIND_MARKDOWN, io.BytesIO(text.encode("utf-8"))), facts
    no_mark = parse_facts(KIND_MARKDOWN, io.BytesIO(text.encode("utf-16-le")))
    assert no_mark["error"] == ("the file is UTF-16 text without a byte-order mark, not UTF-8: save it again as UTF-8 "
                                "(in most editors: Save As, Encoding UTF-8)"), no_mark
    cut = parse_facts(KIND_MARKDOWN, io.BytesIO(text.encode("utf-16")[:-1]))  # an odd number of bytes
    assert cut["error"].startswith("the file begins with a UTF-16 byte-order mark but is not UTF-16 text"), cut


def test_an_unfinished_copy_of_a_mapping_file_or_registry_is_told_once_with_one_remedy(clean):
    """The finding read "cannot read this file: cannot read the mapping file: CSV parse error: ... \\x00\\x00 ...;
    write it as UTF-8 text": its prefix twice, pyarrow's copy of the zeros, and a remedy that does not mend a copy."""
    for rel in ("Metadata/Telemetry_mapping.csv", "waveform_registry.csv"):
        (clean / rel).write_bytes((clean / rel).read_bytes() + b"\0" * 4096)
    out = validate(clean).filter(pl.col("srcfile").is_in(["Metadata/Telemetry_mapping.csv", "waveform_registry.csv"]))
    messages = dict(out.select("srcfile", "message").rows())
    assert set(out["rule"]) == {"metadata.unreadable", "registry.unreadable"}, out.to_dicts()
    for rel, what in (("Metadata/Telemetry_mapping.csv", "mapping file"), ("waveform_registry.csv", "registry")):
        assert messages[rel].startswith(f"cannot read this {what}: the file holds NUL bytes"), messages[rel]
        assert messages[rel].count("cannot read") == 1 and messages[rel].endswith("copy or export the file again"), messages[rel]


@pytest.mark.parametrize("kind, name, body, where", [
    ("registry_csv.v18", "image_registry.csv",
     "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\n"
     "1,2,000777,g,5,2024-01-01 00:00:00,a.dcm,x.dcm\n\x002,2,000777,g,5,2024-01-01 00:00:00,b.dcm,y\x00.dcm\n",
     "row 3, counting the header row as 1, column file_id"),
    ("mapping_csv.v7", "Metadata/Telemetry_mapping.csv",
     "signal_id,standardized_label,sampling_rate,units,timestamp_id\nII,MDC_ECG_ELEC_POTL_II,250\x00,uV,t\n",
     "row 2, counting the header row as 1, column sampling_rate"),
])
def test_nul_bytes_in_a_registry_or_mapping_row_that_parses_are_told_with_their_row(tmp_path, kind, name, body, where):
    """A registry or mapping file is read whole; pyarrow reads a NUL byte as any other character, so one in a row that
    parses was taken into the values: a registry id '\\x002' was told "not an integer", with nothing of the NUL bytes
    (only zeros that broke the parse were told). Told now as NUL bytes, with the first's row and column, never its value."""
    from chorus_batch.validate.readers import parse_facts

    write(tmp_path, name, body)
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    assert error.startswith(f"the file holds NUL bytes, which CSV text never does (the first in {where}): "), error
    assert error.endswith("copy or export the file again") and "y.dcm" not in error and "250" not in error, error


@pytest.mark.parametrize("kind, name", [("omop_person.v9", "OMOP/person.csv"), ("registry_csv.v18", "image_registry.csv"),
                                        ("mapping_csv.v7", "Metadata/Telemetry_mapping.csv")])
def test_a_row_of_too_few_fields_is_named_by_number_and_its_values_are_not_copied(tmp_path, kind, name):
    """pyarrow copies an unquoted row after "Expected 8 columns, got 4: " (only a quoted one was cut off): the
    person ids and values of a registry or table row went into the finding, stored in the manifest and reports."""
    from chorus_batch.validate.readers import parse_facts

    header = ",".join(("file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime", "src_file", "trg_file",
                       "signal_id", "standardized_label", "sampling_rate", "units", "timestamp_id"))
    body = (header + "\n" + ",".join(["1"] * 13) + "\n9,2,000888,SECRET-VALUE\n").encode()
    write(tmp_path, name, body)
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    assert "Row #3" in error and "got 4" in error and "000888" not in error and "SECRET" not in error, error


@pytest.mark.parametrize("kind, name", [("omop_person.v9", "OMOP/person.csv"), ("registry_csv.v18", "image_registry.csv")])
def test_a_malformed_csv_row_is_named_by_number_and_its_values_are_not_copied(tmp_path, kind, name):
    """pyarrow quotes the rows it cannot parse; a finding is stored in the manifest and shown in reports, and
    these rows hold person ids and clinical values. The finding names the row, not its content."""
    from chorus_batch.validate.readers import parse_facts

    header = ",".join(("file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime", "src_file", "trg_file"))
    body = (header + '\n1,2,000777,g,5,2024-01-01 00:00:00,a.dcm,x.dcm\n"9,2,000888,SECRET-VALUE\n3,4\n').encode()
    write(tmp_path, name, body)
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    assert "Row #3" in error and "000888" not in error and "SECRET" not in error, error


@pytest.mark.parametrize("kind, name, column", [
    ("registry_csv.v18", "image_registry.csv", "src_file (column 7)"),
    ("mapping_csv.v7", "Metadata/Telemetry_mapping.csv", "units (column 4)"),
    ("omop_person.v9", "OMOP/person.csv", "person_id (column 2)"),
])
def test_latin1_bytes_are_told_by_the_column_name_not_pyarrows_count_from_zero(tmp_path, kind, name, column):
    """A Latin-1 byte (a Windows export of "Hôpital", "µV") made pyarrow say "In CSV column #6", counting from 0: the
    site looked at the 7th column for what was in the 8th. The finding names the column."""
    from chorus_batch.validate.readers import parse_facts

    rows = {"registry_csv.v18": "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\n"
                               "1,2,000777,g,5,2024-01-01 00:00:00,/H\xf4pital/a.dcm,x.dcm\n",
            "mapping_csv.v7": "signal_id,standardized_label,sampling_rate,units,timestamp_id\n"
                           "II,MDC_ECG_ELEC_POTL_II,250,\xb5V,t\n",
            "omop_person.v9": "gender_concept_id,person_id\n8507,\xa0101\n"}[kind]
    write(tmp_path, name, rows.encode("latin-1"))
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    assert f"column {column}" in error and "#" not in error, error


@pytest.mark.parametrize("kind, name", [("registry_csv.v18", "image_registry.csv"),
                                        ("mapping_csv.v7", "Metadata/Telemetry_mapping.csv"),
                                        ("omop_person.v9", "OMOP/person.csv"), ("omop_visits.v11", "OMOP/visit_occurrence.csv"),
                                        ("omop_procedures.v7", "OMOP/procedure_occurrence.csv")])
def test_a_csv_saved_as_latin1_is_told_not_utf8_where_and_what_to_do(tmp_path, kind, name):
    """A spreadsheet's Latin-1 export (µV as the byte 0xB5) was told as pyarrow's "CSV conversion error to string:
    invalid UTF8 data": the finding says the file is not UTF-8, its row, column and first such byte, and to save it
    as CSV UTF-8."""
    from chorus_batch.validate.readers import parse_facts

    header = {"registry_csv.v18": "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file",
              "mapping_csv.v7": "signal_id,standardized_label,sampling_rate,units,timestamp_id",
              "omop_person.v9": "person_id,gender_concept_id",
              "omop_visits.v11": "visit_occurrence_id,person_id",
              "omop_procedures.v7": "procedure_occurrence_id,procedure_concept_id"}[kind]
    n = header.count(",") + 1
    good = ",".join(["1"] * n) + "\r\n"
    body = (header + "\r\n" + good * 3).encode() + b",".join([b"\xb5V"] * n) + b"\n"
    write(tmp_path, name, body)
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    offset = body.index(b"\xb5") + 1
    assert "the file is not UTF-8 text, in row 5 (counting the header row as 1), column " in error, error
    assert f"its first byte that is not UTF-8 is 0xB5 (byte {offset} of the file, line 5)" in error, error
    assert error.endswith("save or export it again as CSV UTF-8") and "invalid UTF8" not in error, error


@pytest.mark.parametrize("kind, name", [("registry_csv.v18", "image_registry.csv"),
                                        ("mapping_csv.v7", "Metadata/Telemetry_mapping.csv"),
                                        ("omop_visits.v11", "OMOP/visit_occurrence.csv")])
def test_a_line_of_spaces_among_a_csvs_rows_is_told_as_a_blank_line(tmp_path, kind, name):
    """A line of spaces or tabs (pyarrow passes over an empty one) was told "Row #4: Expected 8 columns, got 1"."""
    from chorus_batch.validate.readers import OWN_REMEDY, parse_facts

    header = {"registry_csv.v18": "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file",
              "mapping_csv.v7": "signal_id,standardized_label,sampling_rate,units,timestamp_id",
              "omop_visits.v11": "visit_occurrence_id,person_id"}[kind]
    good = ",".join(["1"] * (header.count(",") + 1)) + "\n"
    write(tmp_path, name, header + "\n" + good * 2 + " \t \n" + good)
    with open(tmp_path / name, "rb") as f:
        error = parse_facts(kind, f)["error"]
    assert "row 4 (counting the header row as 1) is a blank line, spaces or tabs only" in error, error
    assert "Expected" not in error and re.search(OWN_REMEDY, error), error


def test_a_proc_id_of_19_digits_is_an_integer_to_every_registry_check(tmp_path):
    """Multimodal-Linkage's proc_id is an "integer or bigint": 19 digits passed registry.values but the readers kept
    proc_ids (and procedure_occurrence_ids) of up to 18 digits, so registry.proc_overlap, registry.no_procedure and
    registry.procedure_person passed it over without a word. One above a bigint is told by registry.values."""
    from chorus_batch.validate.readers import parse_facts

    big, too_big = "9223372036854775807", "9223372036854775808"
    body = ("file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\n"
            f"1,{big},000777,g,5,2024-01-01 00:00:00,a.dcm,000777/Images/x.dcm\n"
            f"2,{too_big},000777,g,5,2024-01-01 00:00:00,b.dcm,000777/Images/y.dcm\n"
            f"3,0001000000000000000,000777,g,5,2024-01-01 00:00:00,c.dcm,000777/Images/z.dcm\n")
    write(tmp_path, "image_registry.csv", body)
    with open(tmp_path / "image_registry.csv", "rb") as f:
        facts = parse_facts("registry_csv.v18", f)
    assert facts["proc_ids"] == [1000000000000000, int(big)], facts
    assert ["9223372036854775807", "000777"] in facts["proc_person_pairs"], facts
    assert facts["bad_proc"] == 1 and facts["bad_rows"] == ["3"], facts
    write(tmp_path, "OMOP/procedure_occurrence.csv",
          f"procedure_occurrence_id,procedure_concept_id\n{big},4000\n{too_big},4000\n9223372036854775806,4180938\n")
    with open(tmp_path / "OMOP/procedure_occurrence.csv", "rb") as f:
        facts = parse_facts("omop_procedures.v7", f)
    assert facts["ehr_runs"] == [[int(big), int(big)]] and facts["image_runs"] == [[int(big) - 1, int(big) - 1]], facts


@pytest.mark.parametrize("kind, name, header, empty", [
    ("omop_person.v9", "OMOP/person.csv", "person_id,gender_concept_id", "person_id"),
    ("omop_visits.v11", "OMOP/visit_occurrence.csv", "\ufeffvisit_occurrence_id,person_id", "visit_occurrence_id"),
    ("mapping_csv.v7", "Metadata/EEG_mapping.csv", "signal_id,standardized_label,sampling_rate,units,timestamp_id", "rows"),
    ("registry_csv.v18", "image_registry.csv", "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file",
     "rows"),
])
def test_a_header_row_without_rows_nor_newline_is_an_empty_table_not_an_unreadable_one(tmp_path, kind, name, header,
                                                                                     empty):
    """The upload procedure sends a table the site does not capture with its header row only; an export that leaves
    the last line unterminated gave 'cannot read column(s) person_id: Empty CSV file' (pyarrow refuses it)."""
    from chorus_batch.validate.readers import parse_facts

    write(tmp_path, name, header)
    with open(tmp_path / name, "rb") as f:
        facts = parse_facts(kind, f)
    assert "error" not in facts, facts
    assert facts[empty] in ([], 0, ""), facts  # ("": omop_visits.v11 keeps a column as one text)


def test_a_blank_first_line_is_told_as_empty_not_as_values(clean):
    for rel, data in (("OMOP/death.csv", "\ufeff"), ("OMOP/note_nlp.csv", "\r\n")):
        write(clean, rel, data)
    found = validate(clean).filter(pl.col("rule") == "omop.no_header")
    assert found["srcfile"].to_list() == ["OMOP/death.csv", "OMOP/note_nlp.csv"]
    assert all(m.startswith("the first line is empty") for m in found["message"]), found["message"].to_list()


def test_a_mapping_value_quoted_over_two_lines_keeps_the_finding_on_one_line(clean):
    edit("Metadata/EEG_mapping.csv", lambda t: t + '"FP1\r\nref",FP9,fast,uV,time\n')(clean)
    message = validate(clean).filter(pl.col("rule") == "metadata.mapping_values")["message"].item()
    assert "\n" not in message and "\r" not in message and "FP1 ref" in message, message


def test_a_mapping_row_without_units_or_its_time_variable_is_told_which_it_lacks(clean):
    """The Waveform File Format text asks each row for units ("a string giving the units of the channel") and, for
    pair-based data, a timestamp_id (stream-based: start_time and end_time); a row without them passed."""
    edit("Metadata/Telemetry_mapping.csv", lambda t: t + "PLETH,MDC_PULS_OXIM_PLETH,125,,time\nABP,MDC_PRESS_BLD_ART,125,mmHg,\n")(clean)
    write(clean, "Metadata/EEG_mapping.csv", "signal_id,standardized_label,sampling_rate,units,start_time,end_time\n"
          "II,MDC_EEG_ELEC_POTL_FP1,256,uV,t0,t1\nV,MDC_EEG_ELEC_POTL_FP2,256,uV,t0,\n")
    messages = dict(validate(clean).filter(pl.col("rule") == "metadata.mapping_values").select("srcfile", "message").rows())
    assert messages == {
        "Metadata/Telemetry_mapping.csv": "rows the Waveform File Format procedure would not accept: 1 without units "
        "(a string giving the channel's units), 1 without their time variable (timestamp_id, or start_time and "
        "end_time) (e.g. row 4: PLETH; row 5: ABP): fix those rows",
        "Metadata/EEG_mapping.csv": "rows the Waveform File Format procedure would not accept: 1 without their time "
        "variable (timestamp_id, or start_time and end_time) (e.g. row 3: V): fix those rows"}, messages


def test_a_mapping_header_is_told_the_columns_it_lacks(clean):
    """metadata.mapping_columns listed every column the procedure asks for ("needs signal_id, standardized_label,
    sampling_rate, units") whatever the header lacked, and a stream-based mapping without end_time was told again row
    by row (metadata.mapping_values: "without their time variable"); now it names the columns lacking, and one written
    with spaces ("Sampling Rate") as written."""
    write(clean, "Metadata/Telemetry_mapping.csv", "Signal_ID,Standardized Label,Sampling Rate,Units,Timestamp ID\n"
          "II,MDC_ECG_ELEC_POTL_II,125,mV,time\n")
    write(clean, "Metadata/EEG_mapping.csv", "signal_id,standardized_label,sampling_rate,units,start_time\n"
          "II,MDC_EEG_ELEC_POTL_FP1,256,uV,t0\nV,MDC_EEG_ELEC_POTL_FP2,256,uV,t0\n")
    out = validate(clean).filter(pl.col("rule").str.starts_with("metadata."))
    told = dict(out.select("srcfile", "message").rows())
    assert set(out["rule"]) == {"metadata.mapping_columns"}, out
    assert told["Metadata/Telemetry_mapping.csv"].startswith(
        "the header (signal_id,standardized label,sampling rate,units,timestamp id) lacks standardized_label (written "
        "'standardized label': name it standardized_label); sampling_rate (written 'sampling rate': name it "
        "sampling_rate); timestamp_id (written 'timestamp id': name it timestamp_id): "), told
    assert told["Metadata/EEG_mapping.csv"].startswith(
        "the header (signal_id,standardized_label,sampling_rate,units,start_time) lacks end_time (a stream-based "
        "mapping has start_time and end_time): "), told


def test_an_edfs_signals_are_told_against_the_mapping_as_a_wfdb_records_are(clean):
    """An EDF (EDF+, BDF) file's signals were never compared with the mapping (its header was read only for its start):
    an EEG session in EDF whose leads EEG_mapping.csv lacks passed. Its signal header gives each signal's label,
    physical dimension and samples per data record (/ the record's duration: the rate); EDF+'s "EDF Annotations" is
    no signal of the data; µV written in Latin-1 is uV; a BDF is read as EDF is."""
    start = datetime(2024, 1, 2, 3, 4, 5)
    write(clean, EDF, sitegen.edf_bytes(start, signals=[("FP1", "uV", 256), ("V", "\u00b5V", 256), ("II", "mV", 128),
                                                        ("EDF Annotations", "", 60)]))
    bdf = f"{P1}/Waveforms/EEG/900556/900556.bdf"
    edf = sitegen.edf_bytes(start, signals=[("C3", "uV", 256)])
    write(clean, bdf, b"\xffBIOSEMI" + edf[8:] + bytes((len(edf) - 512) // 2))  # (3 bytes a sample: the file's size)
    out = validate(clean).filter(pl.col("rule").str.starts_with("wfdb."))
    told = {(r, s): m for r, s, m in out.select("rule", "srcfile", "message").rows()}
    assert told == {
        ("wfdb.unmapped_signal", EDF): "record 900555: signal FP1 is not in Metadata/EEG_mapping.csv: add a row for it "
        "(signal_id, standardized_label, sampling_rate, units), as the Waveform File Format procedure asks for every "
        "signal in the data",
        ("wfdb.mapping_rate", EDF): "record 900555: sampling rates differ from Metadata/EEG_mapping.csv (II 128.0 Hz in "
        "the header, 256.0 Hz in the mapping): give each signal's nominal sampling rate in the mapping, or fix the header",
        ("wfdb.mapping_units", EDF): "record 900555: units differ from Metadata/EEG_mapping.csv (II mV in the header, uV "
        "in the mapping): give each signal's units in the mapping as the data holds them, or fix the header",
        ("wfdb.unmapped_signal", bdf): "record 900556: signal C3 is not in Metadata/EEG_mapping.csv: add a row for it "
        "(signal_id, standardized_label, sampling_rate, units), as the Waveform File Format procedure asks for every "
        "signal in the data"}


def test_an_edf_cut_inside_its_signal_header_is_told_so_where_it_is_hashed_too(tmp_path):
    """The EDF reader read only the fixed 256 bytes: a copy cut after them passed. Read where the file is hashed (the
    hashing worker parses the bytes it reads, one read per file) and where validation reads it, it is told as cut."""
    from chorus_batch.sources.base import READ_SIZE
    from chorus_batch.validate.readers import parser
    from chorus_batch.validate.rules import KIND_EDF

    data = sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5), signals=EDF_SIGNALS, seconds=3000)
    assert len(data) > (1 << 20)  # (larger than WHOLE_BYTES: read through the hashing reader, not whole)
    write(tmp_path, "big.edf", data)
    write(tmp_path, "cut.edf", data[:700])
    source = LocalSource(tmp_path)
    whole = json.loads(source.hash_file("big.edf", bytearray(READ_SIZE), parser(KIND_EDF)).facts)
    assert [(s["label"], s["units"], s["fs"]) for s in whole["signals"]] == [
        ("II", "uV", 256.0), ("V", "uV", 256.0), ("EDF Annotations", "", 60.0)]
    cut = json.loads(source.hash_file("cut.edf", bytearray(READ_SIZE), parser(KIND_EDF)).facts)
    assert cut == {"error": "the file is 700 bytes, cut inside its header of 1024 bytes (256 + 256 for each of its 3 "
                            "signals): the copy is cut (an interrupted copy?); copy the file again"}


def test_an_edf_header_not_ascii_or_of_another_version_is_told_where_not_only_that(clean):
    """An EDF whose patient field holds an accented name (written in Latin-1 or UTF-8 by the recording system) was told
    "the header holds bytes that are not ASCII": which of its 256 bytes, and that the patient field should be
    de-identified, the site had to find. Now the field, the byte and its value (never the field's text: a name) are
    named; a version field other than EDF's or BDF's is quoted."""
    start = datetime(2024, 1, 2, 3, 4, 5)
    data = sitegen.edf_bytes(start, signals=EDF_SIGNALS, seconds=2)
    write(clean, EDF, data[:8] + "Müller Hans".encode("latin-1").ljust(80) + data[88:])
    other = f"{P1}/Waveforms/EEG/900556/900556.edf"
    write(clean, other, b"0" + bytes(7) + data[8:])
    out = validate(clean).filter(pl.col("rule") == "edf.bad_header")
    told = dict(out.select("srcfile", "message").rows())
    assert told == {
        EDF: "not a readable EDF header: the header's local patient field (bytes 9-88) holds a byte that is not ASCII, "
             "as EDF's header must not (byte 10: 0xFC; a name with an accent? a de-identified EDF+ file's is 'X X X X'): "
             "EDF readers refuse the file; write the field in ASCII, or export the recording again as EDF (or "
             "EDF+/BDF) with its start date and time",
        other: "not a readable EDF header: its version field (the first 8 bytes) is b'0\\x00\\x00\\x00\\x00\\x00\\x00"
               "\\x00', not EDF's '0' and 7 spaces nor BDF's byte 0xFF and 'BIOSEMI': this is no EDF file, or its "
               "writer does not keep to the EDF spec (EDF readers refuse it); export the recording again as EDF (or "
               "EDF+/BDF) with its start date and time"}
    assert "Müller" not in str(told) and "Hans" not in str(told)


def test_an_edf_cut_inside_its_data_records_is_told_by_its_size(clean):
    """The EDF reader reads the header only, which a copy cut inside its data records (most of an EDF's bytes) keeps
    whole: it passed. The header gives the file's size (its length + data records x the bytes each holds, 2 a sample,
    3 in BDF), compared with the size recorded, never reading the data; one with bytes after its records is told too."""
    start = datetime(2024, 1, 2, 3, 4, 5)
    data = sitegen.edf_bytes(start, signals=EDF_SIGNALS, seconds=10)  # 1024 + 10 x (256 + 256 + 60) x 2
    assert len(data) == 12464
    write(clean, EDF, data[:5000])
    longer = f"{P1}/Waveforms/EEG/900556/900556.edf"
    write(clean, longer, data + b"\0" * 10)
    bdf = f"{P1}/Waveforms/EEG/900557/900557.bdf"
    bdf_data = b"\xffBIOSEMI" + data[8:1024] + bytes(10 * 572 * 3)
    write(clean, bdf, bdf_data)  # whole: 3 bytes a sample
    write(clean, f"{P1}/Waveforms/EEG/900558/900558.bdf", bdf_data[:-1])
    out = validate(clean).filter(pl.col("rule") == "wfdb.dat_size")
    assert dict(out.select("srcfile", "message").rows()) == {
        EDF: "5000 bytes, but its EDF header implies 12464 (its length and its number of data records x the bytes each "
        "holds): the file is cut inside its data records (an interrupted copy?); copy it again",
        longer: "12474 bytes, but its EDF header implies 12464 (its length and its number of data records x the bytes "
        "each holds): bytes follow its last data record (or the header's number of data records is wrong); re-export "
        "the recording",
        f"{P1}/Waveforms/EEG/900558/900558.bdf": "18183 bytes, but its EDF header implies 18184 (its length and its "
        "number of data records x the bytes each holds): the file is cut inside its data records (an interrupted "
        "copy?); copy it again"}


def test_a_readiness_md_without_a_checklist_is_told(clean):
    """Waveform-Data 6.2 asks for "a waveform readiness checklist": a READINESS.md with no checklist item ("TODO", or
    the items as plain bullets) passed; it is metadata.readiness_unchecked now."""
    add("Metadata/READINESS.md", "# Readiness\n\n- OMOP tables: done\n- Waveforms: done\n")(clean)
    out = validate(clean)
    assert set(zip(out["rule"], out["srcfile"])) == {("metadata.readiness_unchecked", "Metadata/READINESS.md")}
    assert "no checklist item" in out["message"].item()


def test_signals_are_told_against_the_mapping_by_record_with_the_values_on_both_sides(clean):
    """A mapping's rate is the channel's nominal rate "with as much precision as is known" (249.987 Hz beside a header's
    250 agrees); µV and uV are one unit, mV and MV are not; a segment's signals are told at its multi-segment header;
    a category without a readable mapping file is left to metadata.mapping_missing."""
    write(clean, "Metadata/Telemetry_mapping.csv", sitegen.mapping_csv([
        ("II", "MDC_ECG_ELEC_POTL_II", 249.987 / 2, "MV"), ("V", "MDC_ECG_ELEC_POTL_V", 500.0, "mV")]))
    edit("Metadata/EEG_mapping.csv", lambda t: t.replace(",uV,", ",\u00b5V,"))(clean)  # header: uV
    edit(f"{MULTI}_0001.hea", lambda t: t.replace(" 0 V\n", " 0 PLETH\n"))(clean)
    out = validate(clean)
    told = {(r, s): m for r, s, m in out.filter(pl.col("rule").str.starts_with("wfdb.")).select("rule", "srcfile", "message").rows()}
    single, multi = S0["single"], S0["multi"]
    assert told[("wfdb.mapping_rate", f"{SINGLE}.hea")] == (
        f"record {single}: sampling rates differ from Metadata/Telemetry_mapping.csv (V 125.0 Hz in the header, 500.0 Hz "
        "in the mapping): give each signal's nominal sampling rate in the mapping, or fix the header")
    assert told[("wfdb.mapping_units", f"{SINGLE}.hea")] == (
        f"record {single}: units differ from Metadata/Telemetry_mapping.csv (II mV in the header, MV in the mapping "
        "(only the letter case differs, and a unit's case is part of it: MV is megavolts, mV millivolts; the usual "
        "spelling is mV)): give each signal's units in the mapping as the data holds them, or fix the header")
    assert told[("wfdb.unmapped_signal", f"{MULTI}.hea")] == (
        f"record {multi}: signal PLETH is not in Metadata/Telemetry_mapping.csv: add a row for it (signal_id, "
        "standardized_label, sampling_rate, units), as the Waveform File Format procedure asks for every signal in the data")
    assert not any(s.startswith(f"{P0}/Waveforms/EEG/") for _, s in told)  # 256 Hz, µV = uV
    remove("Metadata/Telemetry_mapping.csv")(clean)
    assert set(validate(clean)["rule"]) == {"metadata.mapping_missing"}


def test_a_signal_mapped_twice_is_told_only_where_no_row_of_the_mapping_agrees(clean):
    """A signal the mapping lists twice agrees when either row does: the rate and units rules leave the signals that
    agree out before the findings' texts are made (a 100k-file site's 57k signals were each grouped and worded, then
    dropped), which must keep a group with one agreeing row silent and word a disagreeing group with all its rows."""
    write(clean, "Metadata/Telemetry_mapping.csv", sitegen.mapping_csv([
        ("II", "MDC_ECG_ELEC_POTL_II", 125.0, "mV"), ("II", "MDC_ECG_ELEC_POTL_II", 250.0, "MV"),
        ("V", "MDC_ECG_ELEC_POTL_V", 500.0, "uV"), ("V", "MDC_ECG_ELEC_POTL_V", 250.0, "mV")]))
    out = validate(clean).filter(pl.col("rule").is_in(["wfdb.mapping_rate", "wfdb.mapping_units"]))
    told = {(r, s): m for r, s, m in out.select("rule", "srcfile", "message").rows()}
    assert told[("wfdb.mapping_rate", f"{SINGLE}.hea")] == (
        f"record {S0['single']}: sampling rates differ from Metadata/Telemetry_mapping.csv (V 125.0 Hz in the header, "
        "250.0 or 500.0 Hz in the mapping): give each signal's nominal sampling rate in the mapping, or fix the header")
    assert not any(rule == "wfdb.mapping_units" for rule, _ in told), told  # each signal's units: one row agrees
    assert not any("II " in message for message in told.values()), told  # II: its first row agrees on both


def test_persons_without_a_folder_are_named_as_person_csv_writes_them(clean):
    """Ids are compared as numbers ("000199" = "199"), but the finding quoted the compared form: "e.g. 199", an id
    person.csv does not hold as written."""
    persons_csv([P0, P1, P2, "000199", "000042"])(clean)
    message = validate(clean).filter(pl.col("rule") == "person.no_folder")["message"].item()
    assert "2 person_ids" in message and "(e.g. 000042, 000199)" in message, message


def test_a_mapping_or_markdown_file_in_the_wrong_form_is_told_so_plainly(clean):
    """A semicolon-delimited mapping file was told its header "(signal_id,standardized_label,...) needs signal_id,
    standardized_label, ...", the very names it holds; a Latin-1 SUBMISSION.md was "not UTF-8-SIG text"."""
    edit("Metadata/Telemetry_mapping.csv", lambda t: t.replace(",", ";"))(clean)
    write(clean, "Metadata/SUBMISSION.md", "# Submission\nH\xf4pital\n".encode("latin-1"))
    messages = dict(validate(clean).select("srcfile", "message").rows())
    assert messages["Metadata/Telemetry_mapping.csv"].startswith("the header row is split by semicolons, not commas")
    assert "not UTF-8 text" in messages["Metadata/SUBMISSION.md"], messages


def test_an_accession_folder_and_header_that_differ_only_in_leading_zeros_agree(clean):
    """The Imaging SOP: AccessionNumber is replaced by the OMOP image_occurrence_id, an integer; the folder 070000 and
    the header's 70000 (or the reverse) name the same one, as person folders and PatientID are compared."""
    padded = DCM.replace(f"/{ACCESSION}/", f"/00{ACCESSION}/")
    rename(str(Path(DCM).parent.parent), str(Path(padded).parent.parent))(clean)  # the whole accession folder
    other = f"{Path(padded).parent}/001.dcm"
    add(other, dicom_bytes(person_id=P0, series=1, instance=1, study_date=DAY0, study_time="081500",
                           accession=f"0{ACCESSION}", SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1)))(clean)
    assert found(clean) == set()
    rename(padded, DCM.replace(f"/{ACCESSION}/", f"/00{int(ACCESSION) + 900}/"))(clean)  # another id: still an error
    assert found(clean) == {("dicom.path_mismatch", DCM.replace(f"/{ACCESSION}/", f"/00{int(ACCESSION) + 900}/"))}


def test_a_header_without_an_integer_accession_is_told_once_with_the_id_its_folder_names(clean):
    """A DICOM file without AccessionNumber got two errors for one cause: dicom.accession_id and dicom.path_mismatch
    ("accession folder 70000 but AccessionNumber (none)": rename the folder after nothing). The one says what to fix
    (set it, to the id its folder names); the folder is still compared once the header holds an integer."""
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                         SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1)))(clean)
    out = validate(clean)
    assert out.select("rule", "srcfile").rows() == [("dicom.accession_id", DCM)]
    assert out["message"][0] == ("the header has no AccessionNumber: the Imaging SOP replaces it by the study's "
                                 f"image_occurrence_id when de-identifying; set it so (the accession folder names {ACCESSION})")
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500", accession="70999",
                         SeriesInstanceUID=sitegen.series_uid(P0, DAY0, 1)))(clean)
    assert found(clean) == {("dicom.path_mismatch", DCM)}


def two_series_lacking(clean, *, both: dict, second: dict, mr: dict) -> str:
    """Headers without some attributes (a value None leaves its tag out): the two files of the clean site's first
    series lack `both`, its second file also `second`; a new MR series of person P1 lacks `mr`. Its folder."""
    uid = sitegen.series_uid(P0, DAY0, 1)
    for instance, name in ((0, DCM), (1, f"{SERIES1}/001.dcm")):
        add(name, dicom_bytes(person_id=P0, series=1, instance=instance, study_date=DAY0, study_time="081500",
                              accession=ACCESSION, SeriesInstanceUID=uid, **both, **(second if instance else {})))(clean)
    accession = str(int(sitegen.accession_of(1)) + 7)
    folder = f"{P1}/Images/MR/{accession}/{sitegen.series_uid(P1, DAY1, 9)}"
    add(f"{folder}/000.dcm", dicom_bytes(person_id=P1, series=9, instance=0, modality="MR", study_date=DAY1,
                                         study_time="081500", accession=accession,
                                         SeriesInstanceUID=sitegen.series_uid(P1, DAY1, 9), **mr))(clean)
    return folder


def test_study_level_attributes_the_imaging_sop_selects_are_asked_for_once_per_series(clean):
    """The Imaging SOP selects study-level metadata for CHoRUS (StudyInstanceUID, StudyDescription, StudyDate, ...,
    MagneticFieldStrength of an MR study); a de-identification that dropped them passed without a word. A series
    folder whose headers lack some is told once, with how many files and which attributes."""
    mr = two_series_lacking(clean, both={"StudyDescription": None}, second={"BodyPartExamined": None},
                            mr={"MagneticFieldStrength": None})
    out = validate(clean).filter(pl.col("rule") == "dicom.study_metadata")
    assert dict(out.select("srcfile", "message").rows()) == {
        f"{SERIES1}/": "2 DICOM files of this series lack StudyDescription, BodyPartExamined: the Imaging SOP keeps "
                       "these study-level attributes for CHoRUS; keep them when de-identifying (or set them from the "
                       "source study)",
        f"{mr}/": "1 DICOM file of this series lacks MagneticFieldStrength: the Imaging SOP keeps these study-level "
                  "attributes for CHoRUS; keep them when de-identifying (or set them from the source study)"}
    assert out["severity"].unique().to_list() == ["warning"]


def test_a_dicom_file_cut_short_is_told_to_be_copied_again_not_re_exported(clean):
    """The finding for a DICOM file cut inside its header said "(an interrupted copy?); re-export the image as DICOM
    Part 10 (.dcm)": two remedies, the second for another cause. A file that is not DICOM Part 10 keeps that one."""
    data = (clean / DCM).read_bytes()
    (clean / DCM).write_bytes(data[:300])
    add(f"{SERIES1}/001.dcm", data[144 + int.from_bytes(data[140:144], "little"):])(clean)  # no preamble nor meta group
    messages = dict(validate(clean).filter(pl.col("rule") == "dicom.unreadable").select("srcfile", "message").rows())
    assert messages == {
        DCM: "no readable DICOM header: the file ends inside its DICOM header (an interrupted copy?): copy the file again",
        f"{SERIES1}/001.dcm": "no readable DICOM header: not a DICOM Part 10 file (no 'DICM' prefix and File Meta "
                              "Information); re-export the image as DICOM Part 10 (.dcm)"}


def test_a_header_lacking_what_its_folders_name_is_told_to_set_it_not_to_rename_the_folders(clean):
    """A header without Modality or SeriesInstanceUID was told "modality folder CT but Modality (none) in the header:
    name the folders and the file after the header's values": renaming after nothing. It now names what is absent and
    what its folder says; a value that differs is still told with both, and the folders to rename."""
    import io

    import pydicom

    uid = sitegen.series_uid(P0, DAY0, 1)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0,
                                                study_time="081500", accession=ACCESSION, SeriesInstanceUID=None)))
    del ds.Modality
    out_bytes = io.BytesIO()
    ds.save_as(out_bytes)
    add(DCM, out_bytes.getvalue())(clean)
    out = validate(clean).filter(pl.col("rule") == "dicom.path_mismatch")
    assert out.select("srcfile", "message").rows() == [(DCM, (
        f"the header has no Modality (the modality folder says CT), SeriesInstanceUID (the series folder says {uid}): "
        "set it to what the folders and the file name say"))]
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500", accession=ACCESSION,
                         SeriesInstanceUID=None, modality="MR"))(clean)
    assert validate(clean).filter(pl.col("rule") == "dicom.path_mismatch")["message"].to_list() == [
        f"the header has no SeriesInstanceUID (the series folder says {uid}): set it to what the folders and the file "
        "name say; modality folder CT but Modality MR in the header: name the folders and the file after the header's "
        "values (or fix the header)"]


@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_an_xr_modality_folder_holds_the_x_ray_modalities_the_procedures_call_xr(clean, modality):
    """Imaging-Data.txt line 79 (and the upload SOP's line 68) names modality folders "MR, CT, XR (X-ray), or US":
    XR is no DICOM Modality value, an X-ray's header says DX or CR. An XR/ folder of DX images was
    dicom.path_mismatch ("modality folder XR but Modality DX"), an error for following the text; it is none now, and
    a CT image in XR/ (or a DX image in CT/) still is one."""
    xr = DCM.replace("/CT/", "/XR/")
    remove(DCM)(clean)
    add(xr, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                        accession=ACCESSION, modality=modality, ViewPosition="PA"))(clean)
    assert validate(clean).filter(pl.col("rule") == "dicom.path_mismatch").height == 0
    add(xr, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                        accession=ACCESSION))(clean)
    assert found(clean) >= {("dicom.path_mismatch", xr)}
    remove(xr)(clean)
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                         accession=ACCESSION, modality=modality, ViewPosition="PA"))(clean)
    assert found(clean) >= {("dicom.path_mismatch", DCM)}


def test_a_modality_folder_spelled_in_lower_case_is_told_to_be_named_as_the_header_s_modality(clean):
    """The procedures name the modality folder by the DICOM Modality (CT/, MR/; a code string, upper case): an
    Images/ct/ folder of CT images passed without a word (the manifest keeps the folder upper-cased), though on the
    central store it is another folder than a second person's Images/CT/. It is dicom.path_mismatch now, with both
    spellings; CT/ and the procedures' XR/ of DX images are still none."""
    lower = DCM.replace("/CT/", "/ct/")
    remove(DCM)(clean)
    add(lower, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                           accession=ACCESSION))(clean)
    out = validate(clean).filter(pl.col("rule") == "dicom.path_mismatch")
    assert out.select("srcfile", "severity", "message").rows() == [(lower, "error", (
        "modality folder ct but Modality CT in the header: name the folders and the file after the header's values "
        "(or fix the header)"))]
    remove(lower)(clean)
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                         accession=ACCESSION))(clean)
    assert validate(clean).filter(pl.col("rule") == "dicom.path_mismatch").height == 0


def test_a_header_without_patient_id_is_told_to_set_it_not_that_none_differs(clean):
    """A header without PatientID was told "PatientID (none) in the header is not the person folder ...", as if it held
    a value "(none)". It now says the header has none and what to set it to; one that differs is told as before."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0,
                                                study_time="081500", accession=ACCESSION)))
    del ds.PatientID
    out_bytes = io.BytesIO()
    ds.save_as(out_bytes)
    add(DCM, out_bytes.getvalue())(clean)
    add(f"{SERIES1}/001.dcm", dicom_bytes(person_id="999", series=1, instance=1, study_date=DAY0,
                                          study_time="081500", accession=ACCESSION))(clean)
    add(f"{SERIES1}/002.dcm", dicom_bytes(person_id=P1, series=1, instance=2, study_date=DAY0,
                                          study_time="081500", accession=ACCESSION))(clean)
    out = validate(clean).filter(pl.col("rule") == "dicom.patient_id").sort("srcfile")
    assert out.select("srcfile", "message").rows() == [
        (DCM, f"the header has no PatientID: set it to the person_id (the person folder says {P0}) when de-identifying"),
        (f"{SERIES1}/001.dcm", "PatientID (3 characters, not quoted: it may identify the patient) in the header is "
                               f"not the person folder {P0}: set PatientID to the person_id when de-identifying"),
        (f"{SERIES1}/002.dcm", f"PatientID {P1} in the header is not the person folder {P0}: set PatientID to the "
                               "person_id when de-identifying")]


def test_a_header_value_that_may_identify_the_patient_is_not_quoted_by_a_finding(clean):
    """A DICOM file not de-identified: its PatientID (a medical record number) and AccessionNumber (the RIS's) were
    quoted by dicom.patient_id and dicom.accession_id, so the hospital's identifiers went into the run's log, the
    report and the manifest's findings, which go to the centre. A finding now says their length; a PatientID that is a
    person_id of the site (a file in another person's folder) is still quoted, and an integer AccessionNumber is
    compared with its folder (dicom.path_mismatch)."""
    add(f"{SERIES1}/001.dcm", dicom_bytes(person_id="MRN-77341", series=1, instance=1, study_date=DAY0,
                                          study_time="081500", accession="RIS2024X9"))(clean)
    out = validate(clean).filter(pl.col("srcfile") == f"{SERIES1}/001.dcm")
    messages = " ".join(out["message"])
    assert "MRN-77341" not in messages and "RIS2024X9" not in messages, messages
    assert set(out["rule"]) >= {"dicom.patient_id", "dicom.accession_id"}, out
    assert "PatientID (9 characters, not quoted: it may identify the patient) in the header" in messages
    assert "AccessionNumber (9 characters, not quoted: it may identify the patient) in the header is not an integer" \
        in messages


def test_a_table_under_another_extension_is_told_once_as_the_file_to_rename(clean):
    """OMOP/death.txt gave two findings for one cause: death.csv missing ("add it") and death.txt unknown ("rename or
    remove it"). The missing table's finding now names the file to rename; another unknown file is still told."""
    rename("OMOP/death.csv", "OMOP/death.txt")(clean)
    add("OMOP/notes.txt")(clean)
    out = validate(clean).filter(pl.col("srcfile").str.starts_with("OMOP/"))
    assert out.select("rule", "srcfile", "message").rows() == [
        ("omop.missing_table", "OMOP/death.csv", "OMOP table death is missing: rename OMOP/death.txt to "
         "OMOP/death.csv if it is the table (a comma-delimited snapshot with a header row)"),
        ("omop.unexpected_file", "OMOP/notes.txt", "not an OMOP table CHoRUS collects: OMOP/ holds <table>.csv for the "
         "CDM 5.4 clinical tables and waveform_visit_links.csv only; rename or remove it")]


@pytest.mark.parametrize("name", ["measurement.parquet", "Measurement.XLSX"])
def test_a_table_in_a_binary_format_is_told_to_be_exported_not_renamed(clean, name):
    """OMOP/measurement.parquet (a Spark or pandas export) was told "rename OMOP/measurement.parquet to
    OMOP/measurement.csv if it is the table": renamed, its bytes stay Parquet, which no rule or loader reads as CSV.
    The upload procedure asks for "comma delimited files with header rows": it is told to be exported as one."""
    rename("OMOP/measurement.csv", f"OMOP/{name}")(clean)
    out = validate(clean).filter(pl.col("srcfile").str.starts_with("OMOP/"))
    assert out.select("rule", "srcfile").rows() == [("omop.missing_table", "OMOP/measurement.csv")], out
    message = out["message"].item()
    assert message.startswith(f"OMOP table measurement is missing: OMOP/{name} is {name.split('.')[1].lower()} data, "
                              "not comma-delimited text"), message
    assert "export it as OMOP/measurement.csv" in message and "rename" not in message.replace("renaming", ""), message


def test_a_metadata_folder_in_a_person_folder_is_told_to_move_to_the_root(clean):
    add(f"{P0}/Metadata/SUBMISSION.md", "# Submission\n")(clean)
    message = validate(clean).filter(pl.col("rule") == "layout.person_subfolder")["message"].to_list()
    assert message == ["Metadata/ in a person folder: Metadata/ (READINESS.md, SUBMISSION.md, the mapping files) belongs "
                       "at the site root, once for the site; move its files into the root Metadata/ or remove them"]


def test_a_table_in_a_subfolder_of_omop_is_told_where_tables_belong(clean):
    """OMOP/old/person.csv was "not an OMOP table CHoRUS collects", though it is one: it lies where none is read."""
    write(clean, "OMOP/old/person.csv", (clean / "OMOP/person.csv").read_bytes())
    message = validate(clean).filter(pl.col("srcfile") == "OMOP/old/person.csv")["message"].item()
    assert message.startswith("in a subfolder of OMOP/, where no table is read"), message


@pytest.mark.parametrize("folder", ["Waveforms", "images"])
def test_a_data_folder_at_the_root_is_told_it_belongs_in_a_person_folder(clean, folder):
    """Waveforms/ at the site root (a site that left out the person folders) was 'top-level folder is not OMOP/, ...:
    move or remove it': the site was told to remove its waveforms, not where they belong."""
    write(clean, f"{folder}/Telemetry/5000/5000.h5", b"x")
    message = validate(clean).filter(pl.col("rule") == "layout.unexpected_folder")["message"].item()
    assert message.startswith(f"{folder}/ lies at the site root") and f"<person_id>/{folder}/" in message, message
    assert "remove" not in message


def test_a_dated_release_folder_checked_from_the_folder_above_it_is_told_to_be_the_site_root(clean):
    """Multimodal-Linkage: the release's root "can either be a dated release directory" (20241101/). Checked from the
    folder above it, its Metadata/ made it a person folder: "person folder has neither Images/ nor Waveforms/", every
    person folder in it an "unknown folder in a person folder", the registries files "directly in the person folder":
    the site was told to move its data into the wrong places, and never that the root was the folder below."""
    release = clean / "20241101"
    release.mkdir()
    for entry in list(clean.iterdir()):
        if entry != release:
            entry.rename(release / entry.name)
    out = validate(clean)
    assert set(out.select("rule", "srcfile").rows()) == {("layout.no_omop", "OMOP/"),
                                                         ("layout.unexpected_folder", "20241101/")}, out
    for message in out["message"]:
        assert "20241101/" in message and "--site ending in /20241101" in message, message
    told = out.filter(pl.col("rule") == "layout.unexpected_folder")["message"].item()
    assert "a submission's root, such as a dated release folder, not a person folder" in told, told


def test_a_copy_of_a_release_inside_the_site_is_told_as_such(clean):
    """A dated copy of an earlier release kept inside the site (20240301/ with OMOP/ and Metadata/): 'person folder has
    neither Images/ nor Waveforms/', 'unknown folder OMOP/ in a person folder' told it to fill the copy in."""
    for folder in ("OMOP", "Metadata"):
        shutil.copytree(clean / folder, clean / "20240301" / folder)
    out = validate(clean)
    assert out.select("rule", "srcfile").rows() == [("layout.unexpected_folder", "20240301/")], out
    assert "a copy of a submission" in out["message"].item() and "outside the site's folder" in out["message"].item()


def test_a_metadata_file_out_of_its_place_is_told_where_it_is_not_to_be_added(clean):
    """Waveform File Format v2.1: READINESS.md and the mapping files lie "directly under the Metadata folder". One in
    Metadata/docs/ (or a mapping at the root) was "no Metadata/READINESS.md: add it": the site was told to write
    again a file it had, and not that the one it had lies where no rule reads it."""
    (clean / "Metadata/docs").mkdir()
    (clean / "Metadata/READINESS.md").rename(clean / "Metadata/docs/READINESS.md")
    (clean / "Metadata/Telemetry_mapping.csv").rename(clean / "Telemetry_mapping.csv")
    out = validate(clean)
    assert set(out.select("rule", "srcfile").rows()) == {
        ("metadata.missing", "Metadata/READINESS.md"), ("metadata.mapping_missing", "Metadata/Telemetry_mapping.csv"),
        ("layout.root_file", "Telemetry_mapping.csv")}, out
    told = dict(out.select("srcfile", "message").rows())
    assert "(Metadata/docs/READINESS.md is one, where it is not read: move it directly under Metadata/" in \
        told["Metadata/READINESS.md"] and "add it" not in told["Metadata/READINESS.md"], told
    assert "(Telemetry_mapping.csv is one, where it is not read" in told["Metadata/Telemetry_mapping.csv"], told


def test_a_metadata_file_of_another_format_is_named_where_the_procedures_name_is_asked_for(clean):
    """Waveform File Format v2.1 names the files SUBMISSION.md and <telemetry_or_eeg>_mapping.csv: a SUBMISSION.txt or a
    Telemetry_mapping.xlsx got "no Metadata/SUBMISSION.md: add it", as if the site had written none."""
    rename("Metadata/SUBMISSION.md", "Metadata/SUBMISSION.txt")(clean)
    rename("Metadata/Telemetry_mapping.csv", "Metadata/Telemetry_mapping.xlsx")(clean)
    out = validate(clean)
    assert set(out.select("rule", "srcfile").rows()) == {
        ("metadata.missing", "Metadata/SUBMISSION.md"), ("metadata.mapping_missing", "Metadata/Telemetry_mapping.csv")}
    told = dict(out.select("srcfile", "message").rows())
    assert told["Metadata/SUBMISSION.md"].endswith(
        "(Metadata/SUBMISSION.txt is one, not read: the Waveform File Format procedure names the file SUBMISSION.md; "
        "write it as Metadata/SUBMISSION.md)"), told
    assert told["Metadata/Telemetry_mapping.csv"].endswith(
        "(Metadata/Telemetry_mapping.xlsx is one, not read: the Waveform File Format procedure names the file "
        "Telemetry_mapping.csv; write it as Metadata/Telemetry_mapping.csv, comma-delimited)"), told


def test_an_omop_folder_in_a_person_folder_is_told_to_be_merged_into_the_root_tables(clean):
    """Multimodal-Linkage: OMOP data "are no longer included in the per-person file structure, as was recommended
    previously". A person's OMOP/ of that edition was "unknown folder OMOP/ in a person folder: ... move its files or
    remove it": removed, the person's rows were lost unless the root tables held them."""
    write(clean, f"{P0}/OMOP/person.csv", (clean / "OMOP/person.csv").read_bytes())
    out = validate(clean)
    assert out.select("rule", "srcfile").rows() == [("layout.person_subfolder", f"{P0}/OMOP/")], out
    assert "merge its rows into the root OMOP/ tables" in out["message"].item(), out["message"].item()
    # a person of person.csv whose folder holds only its OMOP/ is a person folder, not a release inside the site
    write(clean, "000104/OMOP/person.csv", "person_id\n000104\n")
    persons_csv([P0, P1, P2, "000104"])(clean)
    out = validate(clean)
    assert set(out.select("rule", "srcfile").rows()) == {
        ("layout.person_subfolder", f"{P0}/OMOP/"), ("layout.person_subfolder", "000104/OMOP/"),
        ("layout.person_no_data", "000104/")}, out


def test_a_registry_in_omop_is_told_where_registries_are_read(clean):
    """OMOP/waveform_registry.csv was "not an OMOP table CHoRUS collects ... rename or remove it", beside
    registry.absent: the site was told to remove the registry it ships, not where it belongs."""
    (clean / "OMOP").mkdir(exist_ok=True)
    write(clean, "OMOP/waveform_registry.csv", b"file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\n")
    message = validate(clean).filter(pl.col("srcfile") == "OMOP/waveform_registry.csv")["message"].item()
    assert message.startswith("a linkage registry in OMOP/, where none is read"), message
    assert "at the site root" in message and "remove" not in message


def test_identifying_attributes_are_named_by_their_dicom_keywords(clean):
    """The finding listed the reader's keys ("patient_name, patient_birth_date"), which no DICOM tool shows."""
    from pydicom.datadict import keyword_for_tag

    from chorus_batch.validate.checks_images import _keyword
    from chorus_batch.validate.rules import IDENTIFYING_DICOM_TAGS

    assert {_keyword(key) for key in IDENTIFYING_DICOM_TAGS} == {keyword_for_tag(t) for t in IDENTIFYING_DICOM_TAGS.values()}
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                         accession=ACCESSION, PatientName="Doe^Jane", PatientBirthDate="19600101"))(clean)
    message = validate(clean).filter(pl.col("rule") == "dicom.identifying_tag")["message"].item()
    assert message.startswith("identifying attributes PatientName, PatientBirthDate still filled"), message
    # the fix, and no claim that the de-identification profile empties them (PS3.15 allows dummy values for both)
    assert message.endswith("(empty them; PatientName may hold the person id)") and "profile" not in message, message


@pytest.mark.parametrize("name", [f"{P0}^", f"{P0}^^^^", f"{P0}^^^^=="])
def test_a_person_name_that_is_the_person_id_with_empty_components_is_no_identifying_tag(clean, name):
    """PatientName 000001^ (the person id as family name, the given name empty, as de-identification tools write a
    pseudonym) was 'identifying attribute(s) PatientName still filled', an error the site could not clear."""
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                         accession=ACCESSION, PatientName=name))(clean)
    assert validate(clean).filter(pl.col("rule") == "dicom.identifying_tag").height == 0
    add(DCM, dicom_bytes(person_id=P0, series=1, instance=0, study_date=DAY0, study_time="081500",
                         accession=ACCESSION, PatientName=f"{P0}^Jane"))(clean)
    assert validate(clean).filter(pl.col("rule") == "dicom.identifying_tag").height == 1


def test_a_wfdb_header_with_a_utf8_comment_is_read_as_wfdb_reads_it(clean, tmp_path):
    """wfdb.wrsamp writes a comment such as "# Hôpital" in UTF-8 and wfdb reads that header (dropping what is not
    ASCII); the validator called it "not ASCII text ... write it with a WFDB writer", an error."""
    import numpy as np
    import wfdb

    wfdb.wrsamp("r1", fs=250, units=["mV"], sig_name=["II"], p_signal=np.zeros((10, 1)), fmt=["16"],
                comments=["Hôpital"], write_dir=str(tmp_path))
    written = (tmp_path / "r1.hea").read_bytes()
    assert "Hôpital".encode() in written and wfdb.rdheader(str(tmp_path / "r1")).sig_name == ["II"]
    header = clean / f"{SINGLE}.hea"
    header.write_bytes(header.read_bytes() + "# Hôpital\n".encode())
    assert found(clean) == set()


def test_an_empty_registry_cell_is_told_as_empty_not_as_a_wrong_format(clean):
    """An empty datetime (or proc_id) was told as 'not yyyy-MM-dd HH:mm:ss': the site looked for a format fault in a
    cell it had left empty. Each kind of fault is told by its own count; kinds the registry lacks are not named."""
    registry("Waveforms", lambda rows: [[r[0], "" if i == 1 else r[1], *r[2:5], {0: "", 2: "18/08/2022"}.get(i, r[5]),
                                         *r[6:]] for i, r in enumerate(rows)])(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.values")["message"]
    assert message.startswith("1 row with an empty proc_id, 1 row with an empty datetime, 1 row with a "
                              "datetime that is not yyyy-MM-dd HH:mm:ss (nor M/d/yyyy H:mm:ss, as the Imaging SOP's "
                              "example writes it) (rows 2, 3, 4)"), message
    assert "not an integer" not in message
    registry("Waveforms", lambda rows: [[*r[:5], "" if i == 0 else r[5], *r[6:]] for i, r in enumerate(rows)])(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.values")["message"]
    assert message.startswith("1 row with an empty datetime (rows 2)") and "yyyy" not in message, message


def test_a_registry_row_without_its_group_id_is_told(clean):
    """group_id links a row's files "together via session/accession" (Multimodal-Linkage) and the Imaging SOP's
    registry has it NOT NULL: rows left without one were told nothing (registry_csv.v15 did not count them). Its type
    is not asked (the linkage SOP says string, the Imaging SOP integer): a session id written as text is no finding."""
    registry("Waveforms", lambda rows: [[*r[:3], "" if i == 0 else ("NULL" if i == 1 else f"s-{r[3]}"), *r[4:]]
                                        for i, r in enumerate(rows)])(clean)
    registry("Images", lambda rows: [[*r[:3], "" if i == 2 else r[3], *r[4:]] for i, r in enumerate(rows)])(clean)
    out = validate(clean)
    assert set(zip(out["rule"], out["srcfile"])) == {("registry.values", "waveform_registry.csv"),
                                                     ("registry.values", "image_registry.csv")}, out.to_dicts()
    messages = dict(zip(out["srcfile"], out["message"]))
    assert messages["waveform_registry.csv"].startswith("2 rows with an empty group_id (rows 2, 3)"), messages
    assert messages["image_registry.csv"].startswith("1 row with an empty group_id (rows 4)"), messages


def test_a_registry_finding_says_how_many_faulty_rows_it_does_not_list(clean):
    """The registry findings list five rows: three rows with an empty proc_id and three with a date alone were
    "3 row(s) with an empty proc_id, 3 row(s) with a datetime that is not ... (rows 2, 3, 4, 5, 6)", as if those
    were all, and the seventh row was left as it was. Out-of-sequence image_registry_ids the same."""
    registry("Waveforms", lambda rows: [[r[0], "" if i < 3 else r[1], *r[2:5], "2024-01-01" if 3 <= i < 6 else r[5],
                                         *r[6:]] for i, r in enumerate(rows)])(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.values")["message"]
    assert "(rows 2, 3, 4, 5, 6 and 1 more)" in message, message
    registry("Images", lambda rows: [[8 - k, *r] for k, r in enumerate(rows)], columns=REGISTRY_ID_COLUMNS)(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.image_registry_order")["message"]
    assert message.startswith("8 rows have an image_registry_id not above those of the rows before them (rows 3, 4, 5, "
                              "6, 7 and 3 more): "), message
    registry("Images", lambda rows: [[1, *r] for r in rows[:3]] + [[8 - k, *r] for k, r in enumerate(rows[3:])],
             columns=REGISTRY_ID_COLUMNS)(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.image_registry_id")["message"]
    assert "(rows 2, 3, 4)" in message, message


def test_a_registry_person_id_or_visit_id_that_is_not_an_integer_is_told_so(clean):
    """Multimodal-Linkage's person_id and visit_id are "integer or bigint". A person_id "abc" gave four errors (another
    folder's person, a proc_id of two persons, a visit of another person, not in person.csv: "add the person"), none
    saying it is not an integer; a visit_id "v1" only "not in visit_occurrence.csv". registry.values says both, and a
    person_id that is no integer is not sent to person.csv. An integer written as a decimal keeps its own hint."""
    registry("Waveforms", lambda rows: [[*r[:2], "abc" if i == 0 else r[2], *r[3:4], "v1" if i == 1 else r[4], *r[5:]]
                                        for i, r in enumerate(rows)])(clean)
    out = validate(clean)
    (message,) = out.filter(pl.col("rule") == "registry.values")["message"]
    assert message.startswith("1 row with a person_id that is not an integer (OMOP's person_id, an integer or bigint), "
                              "1 row with a visit_id that is not an integer"), message
    assert "(rows 2, 3)" in message, message
    assert "registry.unknown_person" not in set(out["rule"]), out.to_dicts()
    registry("Waveforms", lambda rows: [[*r[:2], f"{int(r[2])}.0" if i == 0 else r[2], *r[3:]]
                                        for i, r in enumerate(rows)])(clean)
    out = validate(clean)
    assert "registry.values" not in set(out["rule"]), out.to_dicts()
    (message,) = out.filter(pl.col("rule") == "registry.unknown_person")["message"]
    assert "an integer written as a decimal" in message, message


def test_a_repeated_file_id_is_named_and_an_empty_one_is_told_as_empty(clean):
    """A file_id on two rows (the linkage procedure's key of the registry) was told as "0 file(s) have more than one
    row (e.g. ) and 1 file_id(s) repeat", naming no id; rows with an empty file_id passed (one) or were that same
    "file_id repeats" (two). The Imaging SOP's registry has file_id NOT NULL: an empty one is a value to fill in."""
    registry("Waveforms", lambda rows: [[rows[0][0] if i == 1 else r[0], *r[1:]] for i, r in enumerate(rows)])(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.duplicate")["message"]
    assert message.startswith("1 file_id is on more than one row (e.g. 1): keep one row per file"), message
    registry("Waveforms", lambda rows: [["" if i < 2 else r[0], *r[1:]] for i, r in enumerate(rows)])(clean)
    out = validate(clean)
    assert out["rule"].to_list() == ["registry.values"], out.to_dicts()
    assert out["message"][0].startswith("2 rows with an empty file_id (rows 2, 3): "), out["message"][0]


def test_a_registry_row_without_a_person_id_is_told_as_empty_not_as_an_unknown_person(clean):
    """An empty person_id (Multimodal-Linkage: an integer, the procedure's person; the Imaging SOP: NOT NULL) was told
    as "person_id(s) , ... are not in person.csv", a blank id in a list. It is now a value to fill in."""
    registry("Waveforms", lambda rows: [[*r[:2], "" if i == 0 else r[2], *r[3:]] for i, r in enumerate(rows)])(clean)
    out = validate(clean)
    assert set(out["rule"]) == {"registry.values"}, out.to_dicts()
    assert out["message"][0].startswith("1 row with an empty person_id (rows 2): proc_id becomes "
                                        "procedure_occurrence_id, person_id and datetime the procedure's person and time")


def test_procedure_rows_made_from_the_registries_are_no_overlap_and_runs_cover_the_ehr_ids(clean, tmp_path):
    """The rows a site makes from its registries (concepts 4180938, 4141651) hold the registries' proc_ids: no clash.
    The EHR ids are kept as runs of consecutive integers (leading zeros and blanks as OMOP reads them)."""
    from chorus_batch.validate.readers import parse_facts

    body = ("procedure_occurrence_id,person_id,procedure_concept_id\n0009000,1,4000\n9001 ,1,\n9003,1,4000\n"
            f"x9,1,4000\n2001000000,{P0},4141651\n2000000001,1,4180938\n")  # (2001000000: the registry's first row, P0's)
    write(tmp_path, "OMOP/procedure_occurrence.csv", body)
    with open(tmp_path / "OMOP/procedure_occurrence.csv", "rb") as f:
        facts = parse_facts("omop_procedures.v7", f)
    assert facts["ehr_runs"] == [[9000, 9001], [9003, 9003]]
    assert facts["runs"] == [[9000, 9001], [9003, 9003], [2000000001, 2000000001], [2001000000, 2001000000]]
    registry("Waveforms")(clean)  # proc_ids 2001000000 + k
    body = body.replace("2000000001,1,4180938\n", "")  # (an image procedure of no registry row: linkage_without_files)
    made = [line for line in (clean / "OMOP/procedure_occurrence.csv").read_text().splitlines(True)
            if ",4141651," in line or ",4180938," in line]  # the rows of the registries' other proc_ids
    body += "".join(",".join(line.split(",")[:3]) + "\n" for line in made)
    # with the other columns CDM 5.4 requires of the table
    body = "".join(line + (",procedure_date,procedure_type_concept_id\n" if k == 0 else ",2024-01-01,32817\n")
                   for k, line in enumerate(body.splitlines()))
    write(clean, "OMOP/procedure_occurrence.csv", body)
    assert found(clean) == set()
    write(clean, "OMOP/procedure_occurrence.csv", body.replace(",4141651", ",4000"))  # now an EHR procedure's id
    assert found(clean) == {("registry.proc_overlap", "waveform_registry.csv")}


@pytest.mark.parametrize("kind, header", [
    ("registry_csv.v18", "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file,Person_ID"),
    ("mapping_csv.v7", "signal_id,standardized_label,sampling_rate,units,units"),
])
def test_a_column_named_twice_is_told_as_such_not_as_a_library_error(tmp_path, kind, header):
    """A registry or mapping file naming a column twice was 'cannot parse the file (DuplicateError: ...)'."""
    from chorus_batch.validate.readers import parse_facts

    write(tmp_path, "t.csv", header + "\n" + ",".join("1" * len(header.split(","))) + "\n")
    with open(tmp_path / "t.csv", "rb") as f:
        error = parse_facts(kind, f)["error"]
    twice = header.split(",")[-1].lower()
    assert error == f"the header names column {twice} more than once: keep one column of each name", error


def test_series_level_attributes_the_imaging_sop_selects_are_asked_for_by_modality(clean):
    """The Imaging SOP's "Series Level" metadata (SeriesDescription, SeriesNumber, SliceThickness, ViewPosition, ...) was
    not checked: a de-identification that dropped them passed. Those every series has are asked of all; SliceThickness
    of cross-sectional series (CT, MR), ViewPosition of projection radiographs (not of a CT)."""
    mr = two_series_lacking(clean, both={"SliceThickness": None}, second={"SeriesDescription": None},
                            mr={"SliceThickness": None})
    out = validate(clean).filter(pl.col("rule") == "dicom.series_metadata")
    assert dict(out.select("srcfile", "message").rows()) == {
        f"{SERIES1}/": "2 DICOM files of this series lack SeriesDescription, SliceThickness: the Imaging SOP keeps "
                       "these series-level attributes for CHoRUS; keep them when de-identifying (or set them from the "
                       "source series)",
        f"{mr}/": "1 DICOM file of this series lacks SliceThickness: the Imaging SOP keeps these series-level "
                  "attributes for CHoRUS; keep them when de-identifying (or set them from the source series)"}
    assert out["severity"].unique().to_list() == ["warning"]


def test_attributes_the_imaging_sop_recommends_keeping_are_asked_for_by_modality(clean):
    """The Imaging SOP's "DICOM Tags Recommended to Keep" (Rows, PixelSpacing, KVP, RepetitionTime, ...) were not
    checked: a de-identification that stripped an image's geometry passed. Those the series' modality carries are asked
    for, once per series; an MR series is not asked for a CT's exposure, nor a CT for an MR's sequence."""
    mr = two_series_lacking(clean, both={"PixelSpacing": None}, second={"KVP": "", "RepetitionTime": None},
                            mr={"FlipAngle": None, "KVP": None})
    out = validate(clean).filter(pl.col("rule") == "dicom.recommended")
    assert dict(out.select("srcfile", "message").rows()) == {
        f"{SERIES1}/": "2 DICOM files of this series lack KVP, PixelSpacing: the Imaging SOP recommends keeping these "
                       "attributes; keep them when de-identifying, where the source has them",
        f"{mr}/": "1 DICOM file of this series lacks FlipAngle: the Imaging SOP recommends keeping these attributes; "
                  "keep them when de-identifying, where the source has them"}
    assert out["severity"].unique().to_list() == ["info"]


def test_an_enhanced_image_is_not_asked_for_what_its_functional_groups_keep():
    """An enhanced multi-frame MR keeps its plane and sequence attributes in its functional group sequences, not at the
    top of its header: only the Image Pixel attributes are asked of it."""
    import io

    from chorus_batch.validate.readers import parse_facts
    from chorus_batch.validate.rules import KIND_DICOM

    def lacking(sop_class: str) -> list[str] | None:
        data = sitegen.dicom_bytes(person_id=P0, series=1, instance=0, modality="MR", study_date=DAY0,
                                   study_time="081500", PixelSpacing=None, FlipAngle=None, SOPClassUID=sop_class)
        return parse_facts(KIND_DICOM, io.BytesIO(data)).get("lacking")

    assert lacking("1.2.840.10008.5.1.4.1.1.4") == ["pixel_spacing", "flip_angle"]  # MR Image Storage
    assert lacking("1.2.840.10008.5.1.4.1.1.4.1") is None  # Enhanced MR Image Storage


def test_units_written_with_a_micro_sign_in_a_wfdb_header_are_quoted_as_written(clean):
    """wfdb reads a header as ASCII: "µV" in it is read "V" (the converter would take volts), so the mapping's uV
    disagrees; the finding said "V in the header", which the file does not hold. It now quotes the file and says why."""
    edit(f"{EEG}.hea", lambda t: t.replace("/uV", "/\u00b5V", 1))(clean)
    out = validate(clean).filter(pl.col("rule") == "wfdb.mapping_units")
    assert out["srcfile"].to_list() == [f"{EEG}.hea"]
    assert "\u00b5V (which wfdb reads as V: a WFDB header is ASCII text, write uV for \u00b5V) in the header, uV in the " \
           "mapping" in out["message"][0]


def test_units_that_differ_only_in_letter_case_are_still_told_with_the_usual_spelling(clean):
    """A header's mmhg against a mapping's mmHg was "ABP mmhg in the header, mmHg in the mapping", read as the same
    unit twice. A unit's case is its meaning (UCUM: MV is megavolts), so it is still told, saying that only the case
    differs and which spelling is the usual one."""
    edit(f"{EEG}.hea", lambda t: t.replace("/uV", "/UV", 1))(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "wfdb.mapping_units")["message"]
    assert "UV in the header, uV in the mapping (only the letter case differs, and a unit's case is part of it: MV "            "is megavolts, mV millivolts; the usual spelling is uV)" in message, message


def test_a_registry_visit_of_another_person_is_told_where_visit_occurrence_names_its_person(clean):
    """A registry row's visit_id was only looked up in visit_occurrence.csv: a visit of another person passed. It is
    now told with both persons; a visit_occurrence.csv without a person_id column still gives its visit ids."""
    persons = sitegen.person_ids(3)
    registry("Waveforms", lambda rows: [[*r[:4], sitegen.visit_id(persons.index(r[2]) ^ 1, 0), *r[5:]] if i == 0 else r
                                        for i, r in enumerate(rows)])(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.visit_person")["message"]
    assert message.startswith("1 visit_id is given to rows of another person than visit_occurrence.csv's (e.g. "
                              f"visit {sitegen.visit_id(1, 0)} of person {int(persons[1])}, given to person "
                              f"{int(persons[0])})"), message
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace("person_id", "patient_id", 1))(clean)
    assert found(clean) >= {("omop.required_columns", "OMOP/visit_occurrence.csv")}
    assert not {rule for rule, _ in found(clean)} & {"registry.visit_person", "registry.unknown_visit"}


def test_two_registries_of_one_modality_are_told(clean):
    """A second waveform registry (a browser's "(1)" download with some of the rows, or a copy in Metadata/) gave no
    finding: the rows of both were taken as one registry, and the site shipped two, one of them partial."""
    registry = (clean / "waveform_registry.csv").read_text()
    add("Metadata/waveform_registry (1).csv", "\n".join(registry.splitlines()[:3]) + "\n")(clean)
    out = validate(clean)
    assert sorted(out.select("rule", "srcfile").rows()) == [
        ("registry.several", "Metadata/waveform_registry (1).csv"), ("registry.several", "waveform_registry.csv")]
    assert ("one of 2 waveform registries the site ships (Metadata/waveform_registry (1).csv, waveform_registry.csv): "
            "the linkage procedure asks for one") in out["message"][0]


def test_a_registry_row_naming_its_file_in_other_letter_case_says_so(clean):
    """A header copied through Windows as 1000.HEA: the registry's row for 1000.hea was 'not on the site' (give
    site-relative paths, which it was) and the file 'has no row: add it' (it has one)."""
    header = clean / f"{SINGLE}.hea"
    header.rename(header.with_suffix(".HEA"))
    out = validate(clean).filter(pl.col("rule").str.starts_with("registry."))
    assert out.select("rule", "srcfile").rows() == [("registry.missing_file", "waveform_registry.csv")], out.to_dicts()
    assert (f"1 trg_file names no file of the site but one whose name differs only in letter case (e.g. {SINGLE}.hea "
            f"is on the site as {SINGLE}.HEA)") in out["message"].item()


def test_a_waveform_registry_row_naming_an_image_or_an_omop_table_is_told(clean):
    """A waveform registry row whose trg_file is an image of the site (or an OMOP table) was passed over: the file is
    on the site, so not 'missing', and the row made an image a Monitoring procedure without a word."""
    registry = clean / "waveform_registry.csv"
    header, first, *_ = registry.read_text().splitlines()
    cells = dict(zip(header.split(","), first.split(",")))
    with registry.open("a") as f:
        for i, path in enumerate([f"{SERIES1}/000.dcm", "OMOP/person.csv"]):
            f.write(",".join({**cells, "file_id": f"extra{i}", "trg_file": path}.values()) + "\n")
    out = validate(clean).filter(pl.col("rule") == "registry.missing_file")
    assert out["srcfile"].to_list() == ["waveform_registry.csv"], out.to_dicts()
    assert out["message"].item().startswith(
        f"2 trg_files name files of the site outside the persons' Waveforms/ folders (e.g. {SERIES1}/000.dcm, "
        f"OMOP/person.csv): "), out["message"].item()


def test_person_ids_written_as_decimals_are_named_as_the_cause(clean):
    """person.csv written by pandas from a column with empty cells has 101.0 for 000101: every person folder was
    'has no row in person.csv: add the person', though its row is there."""
    person = clean / "OMOP" / "person.csv"
    header, *rows = person.read_text().splitlines()
    person.write_text("\n".join([header, *(f"{int(r.split(',', 1)[0])}.0,{r.split(',', 1)[1]}" for r in rows)]) + "\n")
    out = validate(clean).filter(pl.col("rule") == "person.no_omop_row")
    assert sorted(out["srcfile"]) == [f"{P0}/", f"{P1}/", f"{P2}/"]
    assert (f"person folder {P0} matches no person_id of OMOP/person.csv but {int(P0)}.0, its id written as a decimal"
            in out.sort("srcfile")["message"][0])
    assert "add the person" not in " ".join(out["message"])
    # nor are their rows 'without a person folder' (a note "expected for persons without waveforms")
    assert "person.no_folder" not in set(validate(clean)["rule"])


def test_a_person_without_a_row_is_told_to_add_it_to_the_person_file_the_site_has(clean):
    """A site whose person table is OMOP/PERSON.CSV (read as the person table, as names match in any case) was told to
    'add the person to OMOP/person.csv', a file it does not have: a copy to a case-sensitive disk would then hold two."""
    persons_csv([P0, P1])(clean)
    (clean / "OMOP" / "person.csv").rename(clean / "OMOP" / "PERSON.CSV")
    (message,) = validate(clean).filter(pl.col("rule") == "person.no_omop_row")["message"]
    assert message == f"person folder {P2} has no row in OMOP/PERSON.CSV: add the person to OMOP/PERSON.CSV or fix the folder name"


def test_persons_missing_either_way_are_told_with_the_person_file_the_site_has(clean):
    """The other findings that name the person table (a person_id without a folder, a registry's person not in it) said
    "person.csv" of a site whose file is OMOP/PERSON.CSV, as person.no_omop_row did."""
    persons_csv([P0, P1, P2, "000199"])(clean)
    (clean / "OMOP" / "person.csv").rename(clean / "OMOP" / "PERSON.CSV")
    edit("waveform_registry.csv", lambda t: t.replace(f",{P0},", ",000777,", 1))(clean)
    out = validate(clean)
    no_folder = out.filter(pl.col("rule") == "person.no_folder")
    assert no_folder["srcfile"].to_list() == ["OMOP/PERSON.CSV"]
    assert no_folder["message"].item().startswith("1 person_id in OMOP/PERSON.CSV has no person folder (e.g. 000199)")
    unknown = out.filter(pl.col("rule") == "registry.unknown_person")["message"].to_list()
    assert unknown and all("not in OMOP/PERSON.CSV: fix the rows" in m for m in unknown), unknown


@pytest.mark.parametrize("folder", [f"{P0}/Images/CT", f"{P0}/Images/CT/9001/1.2.3"])
def test_a_dicomdir_is_told_to_be_removed_not_renamed(clean, folder):
    """A DICOM export's DICOMDIR (its media index) was told to be renamed to fit the layout, or in a series folder to
    be named <InstanceNumber>.dcm 'if it is a DICOM image': it is DICOM, and no image."""
    add(f"{folder}/DICOMDIR", b"\0" * 200)(clean)
    out = validate(clean).filter(pl.col("srcfile") == f"{folder}/DICOMDIR")
    assert out["rule"].to_list() == ["path.unparsed"], out.to_dicts()
    assert out["message"].item().startswith("a DICOMDIR, the index a DICOM export") and "remove it" in out["message"].item()


@pytest.mark.parametrize("spelling", ["images", "IMAGES"])
def test_an_images_folder_in_other_letter_case_is_told_to_be_spelled_images(clean, spelling):
    """<person>/images/CT/... was read as Images/ and told nothing, though no edition of the procedures spells it so
    (unlike v2.0's waveforms/), and the centre's storage compares paths exactly."""
    (clean / P0 / "Images").rename(clean / P0 / spelling)
    out = validate(clean)
    told = out.filter(pl.col("rule") == "layout.person_subfolder")
    assert told.select("srcfile").rows() == [(f"{P0}/{spelling}/",)], told.to_dicts()
    assert told["message"].item().startswith(f"{spelling}/ in a person folder: the procedures spell it Images/")
    assert told["message"].item().endswith("rename it Images/")
    # its images are still checked as images (their headers read), not told to be moved out
    assert not {"dicom.outside_series", "path.unparsed", "registry.unlisted_file"} & set(out["rule"]), out.to_dicts()


def test_a_registry_row_of_a_file_moved_since_is_told_to_correct_the_row_not_to_give_relative_paths(clean):
    """A session file renamed after the registry was written: its row's site-relative trg_file was 'not on the site
    (e.g. ...): give site-relative paths of delivered files' -- it was one; the row, or the file, is what is wrong."""
    dat = clean / f"{SINGLE}.dat"
    dat.rename(dat.with_name("other.dat"))
    message = validate(clean).filter((pl.col("rule") == "registry.missing_file")
                                     & (pl.col("srcfile") == "waveform_registry.csv"))["message"].item()
    assert message.startswith(f"1 trg_file names no file of the site (e.g. {SINGLE}.dat): "), message
    assert "give site-relative paths" not in message
    assert "correct the rows of files moved or renamed since the registry was written" in message


def test_a_visit_id_visit_occurrence_repeats_for_two_persons_is_told_as_the_tables_fault(clean):
    """visit_occurrence.csv with one visit_occurrence_id on rows of two persons (its key repeated): the registry rows
    of the visit's own person were told 'given to rows of another person ...: fix visit_id', though they were right."""
    vid = str(sitegen.visit_id(0, 0))
    table = clean / "OMOP" / "visit_occurrence.csv"
    header, *rows = table.read_text().splitlines()
    (row,) = [r for r in rows if r.split(",")[0] == vid]
    assert row.split(",")[1] == P0
    table.write_text("\n".join([header, *rows, row.replace(f",{P0},", f",{P1},", 1)]) + "\n")
    out = validate(clean).filter(pl.col("rule") == "registry.visit_person")
    assert out.height >= 1, validate(clean).to_dicts()
    for message in out["message"]:
        assert "given to rows of another person" not in message and "fix visit_id" not in message, message
        assert (f"the visit of more than one person (e.g. visit {vid} of persons {int(P0)}, {int(P1)}): "
                "visit_occurrence_id is that table's key") in message, message
        assert "give each visit its own visit_occurrence_id in visit_occurrence.csv" in message


def test_a_visit_row_repeated_for_the_same_person_is_no_visit_of_two_persons(clean):
    """visit_persons keeps every row of visit_occurrence.csv (de-duplicating 6M rows whole held +1.2 GiB): a row written
    twice, same person, must still read as that person's one visit, not as 'the visit of more than one person'."""
    table = clean / "OMOP" / "visit_occurrence.csv"
    header, *rows = table.read_text().splitlines()
    (row,) = [r for r in rows if r.split(",")[0] == str(sitegen.visit_id(0, 0))]
    table.write_text("\n".join([header, *rows, row]) + "\n")
    assert "registry.visit_person" not in {rule for rule, _ in found(clean)}
    assert ("visit.repeated_id", "OMOP/visit_occurrence.csv") in found(clean)  # (the table's key repeated: told)


def test_large_facts_decoded_by_python_give_the_findings_polars_decoding_gives(clean, monkeypatch):
    """Facts over site._LARGE_FACTS_BYTES (a table's values: a 6M-row visit_occurrence.csv's are 100 MB) are decoded
    by Python's json, which polars' decoder held twice the memory of; every kind's facts read the same either way."""
    from chorus_batch.validate import site

    registry("Waveforms", lambda rows: [[*r[:4], "999999", *r[5:]] if i == 0 else r for i, r in enumerate(rows)])(clean)
    edit(f"{EEG}.hea", lambda t: t.replace("/uV", "/\u00b5V", 1))(clean)
    by_polars = validate(clean)
    assert {"registry.unknown_visit", "wfdb.mapping_units"} <= set(by_polars["rule"])
    monkeypatch.setattr(site, "_LARGE_FACTS_BYTES", 0)
    assert_frame_equal(validate(clean), by_polars)


def test_a_content_under_many_person_folders_is_said_with_a_few_of_them_and_their_count(clean):
    """file.duplicate (and waveforms.id_collision) gave each file of the group the group's whole list: one content
    under 1,000 person folders, 100 files in each, held 10^8 list items (1.8 GB at 100k files), and the same file in
    every person folder of a 1M-file site took 24 GB, until the out-of-memory killer ended the run. A finding names
    the first few and how many there are."""
    current = scan_current(clean)
    row = current.filter(pl.col("srcfile").str.starts_with(f"{P1}/")).head(1)
    copies = pl.concat([row.with_columns(srcfile=pl.lit(f"{p:06d}/Metadata/copy.csv"), md5=pl.lit("a" * 32),
                                         size=pl.lit(5, row.schema["size"])) for p in range(101, 113)])
    out = check(pl.concat([current, copies]), pl.DataFrame(schema=FACTS_SCHEMA)).filter(pl.col("rule") == "file.duplicate")
    assert out.height == 12 and out["message"].n_unique() == 1, out.to_dicts()
    assert out["message"][0] == (f"the same content (MD5 {'a' * 32}) lies under 12 person folders (000101, 000102, "
                                 "000103, 000104, 000105 and 7 more): keep it under its own person only")


def test_person_ids_holding_a_line_break_are_kept_as_a_list_and_compared_as_before(tmp_path, clean):
    """omop_person.v9 keeps the ids as one text joined by line breaks: an id holding one (quoted) must not become two
    ids; it stays a list, decoded as the same ids; an empty table keeps no id (not one empty id)."""
    from chorus_batch.validate.readers import parse_facts

    write(tmp_path, "OMOP/person.csv", 'person_id,year_of_birth\n"a\nb",1\n7,1\n')
    with open(tmp_path / "OMOP/person.csv", "rb") as f:
        facts = parse_facts(KIND_PERSON, f)
    assert (facts["person_id"], facts["person_id_list"]) == (None, ["a\nb", "7"])
    write(tmp_path, "OMOP/empty/person.csv", "person_id,year_of_birth\n,1\n")
    with open(tmp_path / "OMOP/empty/person.csv", "rb") as f:
        assert parse_facts(KIND_PERSON, f)["person_id"] == ""
    write(clean, "OMOP/person.csv", f'person_id,year_of_birth\n{P0},1\n{P1},1\n{P2},1\n"x\ny",1\n')
    assert validate(clean).filter(pl.col("rule").str.starts_with("person."))["message"].to_list() == [
        "1 person_id in OMOP/person.csv has no person folder (e.g. x\ny); expected for persons without waveforms or images"]


def test_person_ids_on_more_than_one_row_are_kept_within_a_block_and_across_blocks(tmp_path, clean):
    """person.csv's key given twice (a person's rows from two source systems) passed without a word: the reader kept
    the distinct ids only. Repeats are found within one of pyarrow's 4 MiB blocks and across them."""
    from chorus_batch.validate.readers import parse_facts

    rows = [f"{k},8507,1960,0,0" for k in range(1, 600_001)]  # (~11 MiB: three blocks)
    write(tmp_path, "OMOP/person.csv", "\n".join(["person_id,gender_concept_id,year_of_birth,race_concept_id,"
                                                  "ethnicity_concept_id", *rows[:10], "5,0,0,0,0", *rows[10:],
                                                  "7,0,0,0,0", "7,0,0,0,0", "599999,0,0,0,0", ",0,0,0,0", "1,0,0,0,0"]) + "\n")
    with open(tmp_path / "OMOP/person.csv", "rb") as f:
        facts = parse_facts(KIND_PERSON, f)
    ids = facts["person_id"].split("\n")  # (omop_person.v9: one text, made in Arrow, in order of first appearance)
    assert (len(ids), ids[:3], ids[-1], "person_id_list" in facts) == (600_000, ["1", "2", "3"], "600000", False)
    assert (sorted(facts["repeated_person_id"]), facts["n_repeated_person_id"]) == (["1", "5", "599999", "7"], 4), facts
    persons_csv([P0, P1, P2, P1, P0])(clean)
    assert validate(clean).filter(pl.col("rule") == "person.repeated_id")["message"].to_list() == [
        f"2 person_ids are on more than one row (e.g. {P0}, {P1}): person_id is the person table's key in CDM 5.4, "
        "one row per person; keep one row of each person (or give each person their own person_id)"]


def test_person_ids_and_their_repeats_keep_the_order_of_first_appearance_in_shuffled_rows(tmp_path):
    """The distinct ids and the repeated ones are found by sorting (a hash of 5M ids held +700 MiB): each stays in the
    order of its first row, not the sorted order, within a block and across blocks, the repeat of a batch included."""
    import random

    from chorus_batch.validate.readers import parse_facts

    ids = [f"{k:06d}" for k in range(1, 400_001)]
    random.Random(7).shuffle(ids)
    rows = [*ids[:5], ids[3], *ids[5:], ids[399_000], ids[2], ids[10]]  # (400k rows of ~22 bytes: two blocks)
    write(tmp_path, "OMOP/person.csv", "person_id,gender_concept_id,year_of_birth,race_concept_id,ethnicity_concept_id\n"
          + "".join(f"{i},8507,1960,0,0\n" for i in rows))
    with open(tmp_path / "OMOP/person.csv", "rb") as f:
        facts = parse_facts(KIND_PERSON, f)
    assert facts["person_id"].split("\n") == ids
    assert (facts["repeated_person_id"], facts["n_repeated_person_id"]) == ([ids[2], ids[3], ids[10], ids[399_000]], 4)


def test_visit_dates_reversed_visits_and_repeated_visit_ids_are_kept_within_a_block_and_across_blocks(tmp_path):
    """visit_occurrence.csv's start and end written as 01/01/2024 or 2024-13-01 left the visit out of the visit-time
    rules without a word, a visit ending before it starts was told only through registry.visit_time, and a
    visit_occurrence_id on two rows (same person) passed. omop_visits.v11 keeps of each a few (with their row) and how
    many, across pyarrow's 4 MiB blocks."""
    from chorus_batch.validate.readers import parse_facts

    good = [f"{k},{k % 97},9201,2024-01-01,2024-01-01 08:00:00,2024-01-02,2024-01-02 12:00:00" for k in range(1, 150_001)]
    rows = [*good[:3],
            "900001,1,9201,01/01/2024,,2024-01-02,",  # row 5: a spreadsheet's date
            "900002,1,9201,2024-01-01,,2024-13-01,",  # row 6: no 13th month
            "900003,1,9201,2024-01-05,2024-01-05 10:00:00,2024-01-04,2024-01-04 12:00:00",  # row 7: ends a day early
            "900004,1,9201,2024-01-05,2024-01-05T10:00,2024-01-05,2024-01-05 09:30:00",  # row 8: ends before its hour
            "900005,1,9201,2024-01-05,2024-01-05 10:00:00,2024-01-05,2024-01-05 00:00:00",  # the whole end day: right
            "2,2,9201,2024-01-01,,2024-01-01,",  # visit 2 again, same person
            *good[3:], "900005,1,9201,2024-02-30,,2024-03-01,"]  # (its last row, blocks on: 900005 repeated too)
    write(tmp_path, "OMOP/visit_occurrence.csv", "\n".join([
        "visit_occurrence_id,person_id,visit_concept_id,visit_start_date,visit_start_datetime,visit_end_date,"
        "visit_end_datetime", *rows]) + "\n")
    assert (tmp_path / "OMOP/visit_occurrence.csv").stat().st_size > 2 * 4 * 2**20
    with open(tmp_path / "OMOP/visit_occurrence.csv", "rb") as f:
        facts = parse_facts("omop_visits.v11", f)
    assert facts["bad_dates"] == ["row 5 visit_start_date '01/01/2024'", "row 6 visit_end_date '2024-13-01'",
                                  f"row {len(rows) + 1} visit_start_date '2024-02-30'"], facts["bad_dates"]
    assert facts["n_bad_dates"] == 3
    assert facts["reversed_visits"] == ["row 7 visit 900003: 2024-01-05 10:00:00 to 2024-01-04 12:00:00",
                                        "row 8 visit 900004: 2024-01-05T10:00 to 2024-01-05 09:30:00"]
    assert facts["n_reversed_visits"] == 2
    assert (sorted(facts["repeated_visit_id"]), facts["n_repeated_visit_id"]) == (["2", "900005"], 2)


def test_visit_dates_reversed_visits_and_repeated_visit_ids_are_told(clean):
    """The rules on visit_occurrence.csv's rows: what, where (the row), what to do."""
    visit = sitegen.visit_id(0, 0)
    span = f"{visit},{P0},9201,2024-01-01,2024-01-01 00:00:00,2024-01-01,2024-01-01 12:00:00"
    table = clean / "OMOP" / "visit_occurrence.csv"
    header, *rows = table.read_text().splitlines()
    (at,) = [k + 2 for k, row in enumerate(rows) if row.startswith(span + ",")]  # (its row, the header row 1)
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace(
        span, f"{visit},{P0},9201,01/01/2024,,2024-01-01,2024-01-01 12:00:00"))(clean)
    assert validate(clean).filter(pl.col("rule") == "visit.date_format")["message"].to_list() == [
        f"1 visit start or end date is not written as an ISO date (e.g. row {at} visit_start_date '01/01/2024'): "
        "CDM 5.4 stores them as DATE and DATETIME, which a loader reads as YYYY-MM-DD (HH:MM:SS), and the linkage "
        "rules cannot read such a visit's span (it was left out of registry.visit_time and registry.visit_missing); "
        "export the dates as YYYY-MM-DD and the datetimes as YYYY-MM-DD HH:MM:SS, with real calendar dates"]
    table.write_text("\n".join([header, *rows]) + "\n")
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace(
        span, f"{visit},{P0},9201,2024-01-02,2024-01-02 00:00:00,2024-01-01,2024-01-01 12:00:00"))(clean)
    out = validate(clean)
    assert out.filter(pl.col("rule") == "visit.end_before_start")["message"].to_list() == [
        f"1 visit ends before it starts (e.g. row {at} visit {visit}: 2024-01-02 00:00:00 to 2024-01-01 12:00:00): no "
        "capture time lies inside such a visit, so no registry row can be linked to it; fix the visit's start and end "
        "(swapped, or shifted apart) in visit_occurrence.csv"]
    assert out.filter(pl.col("rule") == "visit.end_before_start")["srcfile"].to_list() == ["OMOP/visit_occurrence.csv"]
    assert "visit.date_format" not in set(out["rule"])
    table.write_text("\n".join([header, *rows, rows[at - 2]]) + "\n")  # (the same visit twice, same person)
    assert validate(clean).filter(pl.col("rule") == "visit.repeated_id")["message"].to_list() == [
        f"1 visit_occurrence_id is on more than one row (e.g. {visit}): visit_occurrence_id is the visit table's key "
        "in CDM 5.4, one row per visit, and the registries' visit_id names it; keep one row of each visit (or give "
        "each visit its own visit_occurrence_id)"]


def test_ids_written_in_scientific_notation_are_told_so(clean):
    """An id written as 1.01e2 (a spreadsheet writes large numbers so) got no hint, unlike 101.0: the registry's
    right visit_id was told 'not in visit_occurrence.csv: fix the rows', a registry's 5.0e3 'not an integer'."""
    visit = sitegen.visit_id(0, 0)
    written = f"{visit / 1000:g}e3"  # 5000 -> 5e3
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace(f"\n{visit},", f"\n{written},"))(clean)
    messages = validate(clean).filter(pl.col("rule") == "registry.unknown_visit")["message"].to_list()
    assert messages and all(m.endswith(
        f"(visit_occurrence.csv writes visit_occurrence_ids in scientific notation (as a spreadsheet writes a large "
        f"number, keeping 15 digits: re-export from the database, not through a spreadsheet), such as {visit} as "
        f"{written}: OMOP's visit_occurrence_id is an integer; write visit_occurrence.csv's visit_occurrence_ids as "
        "integers)") for m in messages), messages
    # the registry's own visit_id so written: told with its integer, not counted as "not an integer"
    edit("OMOP/visit_occurrence.csv", lambda t: t.replace(f"\n{written},", f"\n{visit},"))(clean)
    registry("Waveforms", lambda rows: [[*r[:4], written if str(r[4]) == str(visit) else r[4], *r[5:]] for r in rows])(clean)
    out = validate(clean)
    assert "registry.values" not in set(out["rule"]), out.to_dicts()
    message = out.filter(pl.col("rule") == "registry.unknown_visit")["message"].item()
    assert message.endswith(f"({written} is an integer written in scientific notation (as a spreadsheet writes a large "
                            "number, keeping 15 digits: re-export from the database, not through a spreadsheet): the "
                            f"linkage procedure's ids are integers; write {visit})"), message
    # person.csv's: the folder's person is there, written otherwise
    edit("OMOP/person.csv", lambda t: t.replace(f"\n{P0},", f"\n{int(P0) / 100:g}e2,"))(clean)
    message = validate(clean).filter((pl.col("rule") == "person.no_omop_row")
                                     & (pl.col("srcfile") == f"{P0}/"))["message"].item()
    assert "its id written in scientific notation" in message and message.endswith(f"({int(P0)})"), message


def test_visit_occurrence_keeps_each_column_as_one_text_of_its_values(tmp_path):
    """visit_occurrence.csv can hold millions of rows: kept as lists of Python strings, 6M rows (two columns) held
    1.8 GiB and took 28 s to read in a hashing worker; each column is now one text, its values joined by a line
    break in row order (rows without a visit id left out, a value's own line break read as a space)."""
    from chorus_batch.validate.readers import JOINED, parse_facts

    write(tmp_path, "OMOP/visit_occurrence.csv",
          'visit_occurrence_id,person_id\n1,000001\n 2 , 2 \n,3\n4,\n"5\n6",7\n')
    with open(tmp_path / "OMOP/visit_occurrence.csv", "rb") as f:
        facts = parse_facts("omop_visits.v11", f)
    assert facts["visit_occurrence_id"].split(JOINED) == ["1", "2", "4", "5 6"], facts
    assert facts["person_id"].split(JOINED) == ["000001", "2", "", "7"], facts


def test_a_person_id_with_a_space_at_its_end_is_shown_quoted_in_the_messages(clean):
    """A person folder '000001 ' (a trailing space, a copy made by hand) was said as "person folder 000001  is not an
    integer id" and "lies under 2 person folders (000001, 000001 )": the space unseen, the two ids looked alike. Ids
    in messages are shown as `files` shows names (units.shown_name): quoted where something would be unseen."""
    shutil.copytree(clean / P0, clean / f"{P0} ")
    messages = validate(clean).filter(pl.col("srcfile").str.starts_with(f"{P0} /"))["message"].to_list()
    assert any(f"person folder '{P0} ' is not an integer id" in m for m in messages), messages
    assert any(f"person folders ({P0}, '{P0} ')" in m for m in messages), messages
    assert not [m for m in messages if f"{P0} )" in m or f"folder {P0}  " in m]


def test_tables_named_with_a_prefix_are_told_once_each_as_the_file_to_rename(clean):
    """An export that names its tables after its schema (OMOP/cdm_person.csv, ...) gave 26 findings for one cause: 13
    tables missing ("add it") and 13 files unknown ("rename or remove it"). Each missing table's finding now names the
    file to rename, the longest table a name ends with (cdm_observation_period is not observation's)."""
    for table in ("person", "observation", "observation_period"):
        rename(f"OMOP/{table}.csv", f"OMOP/cdm_{table}.csv")(clean)
    out = validate(clean).filter(pl.col("srcfile").str.starts_with("OMOP/"))
    assert sorted(out.select("rule", "srcfile", "message").rows()) == [
        ("omop.missing_table", f"OMOP/{table}.csv", f"OMOP table {table} is missing: rename OMOP/cdm_{table}.csv to "
         f"OMOP/{table}.csv if it is the table (a comma-delimited snapshot with a header row)")
        for table in ("observation", "observation_period", "person")]


@pytest.mark.parametrize("names", [("OMOP/measurement_part1.csv", "OMOP/measurement_part2.csv"),
                                   ("OMOP/measurement.000.csv", "OMOP/measurement.001.csv"),
                                   ("OMOP/measurement/part-00000.csv", "OMOP/measurement/part-00001.csv")])
def test_a_table_split_into_parts_is_told_to_be_joined_not_one_part_renamed(clean, names):
    """A table exported in parts (measurement_part1.csv and _part2.csv, measurement.000.csv and .001.csv, a folder of
    part files) was told to rename one part as the table and to rename or remove the others: done, the table lacked
    the other parts' rows. The missing table's finding now names every part and says to join them."""
    table = (clean / "OMOP/measurement.csv").read_bytes()
    (clean / "OMOP/measurement.csv").unlink()
    for name in names:
        write(clean, name, table)
    out = validate(clean).filter(pl.col("srcfile").str.starts_with("OMOP/"))
    assert out.select("rule", "srcfile", "message").rows() == [
        ("omop.missing_table", "OMOP/measurement.csv", "OMOP table measurement is missing, and 2 files look like parts or "
         f"copies of it ({names[0]}, {names[1]}): the upload procedure asks for each table as one comma-delimited file "
         "with one header row; join the parts into OMOP/measurement.csv, keeping the header row once, or rename the "
         "one that is the whole table to it, and remove the others")]


def test_a_table_spark_wrote_as_a_folder_of_parts_is_told_to_be_one_file_in_its_place(clean):
    """Spark writes a table as a folder OMOP/measurement.csv/ of part files, a _SUCCESS marker and .crc checksums:
    the table was told missing ("add OMOP/measurement.csv", where a folder of that name was) and each part and marker
    as in a subfolder ("move it there or remove it": a _SUCCESS moved into OMOP/)."""
    table = (clean / "OMOP/measurement.csv").read_bytes()
    (clean / "OMOP/measurement.csv").unlink()
    parts = ["OMOP/measurement.csv/part-00000-a1.csv", "OMOP/measurement.csv/part-00001-a1.csv"]
    for name in parts:
        write(clean, name, table)
    write(clean, "OMOP/measurement.csv/.part-00000-a1.csv.crc", b"crc")
    out = validate(clean).filter(pl.col("rule").str.starts_with("omop."))
    assert out.sort("srcfile").select("rule", "srcfile", "message").rows() == [
        ("omop.missing_table", "OMOP/measurement.csv", "OMOP table measurement is missing, and 2 files look like parts "
         f"or copies of it ({parts[0]}, {parts[1]}): the upload procedure asks for each table as one comma-delimited "
         "file with one header row; join the parts into OMOP/measurement.csv (a file, in place of the folder "
         "OMOP/measurement.csv/ and its other files), keeping the header row once, or rename the one that is the whole "
         "table to it, and remove the others"),
        ("omop.unexpected_file", "OMOP/measurement.csv/.part-00000-a1.csv.crc", "a marker or checksum file a Spark "
         "export writes beside a table's parts, not data: remove it")]


def test_a_part_beside_its_table_is_told_as_a_part_of_it(clean):
    write(clean, "OMOP/person_2.csv", (clean / "OMOP/person.csv").read_bytes())
    out = validate(clean).filter(pl.col("srcfile").str.starts_with("OMOP/"))
    assert out.select("rule", "srcfile", "message").rows() == [
        ("omop.unexpected_file", "OMOP/person_2.csv", "looks like a part or a copy of the person table, which is "
         "OMOP/person.csv: the upload procedure asks for each table as one file, a full snapshot; join its rows into "
         "that file (if they are not there yet) and remove it")]


@pytest.mark.parametrize("table, rule", [("visit_occurrence", "registry.visit_person"),
                                         ("procedure_occurrence", "registry.procedure_person")])
def test_a_person_id_written_as_a_decimal_in_an_omop_table_is_told_as_such(clean, table, rule):
    """visit_occurrence.csv (or procedure_occurrence.csv) with its person_ids written as decimals (101.0, as pandas
    writes them) was told to give its visits (procedures) to "another person" than the registry's 000101, and to fix
    the registry's visit_id: the same person, written as a decimal. The finding now says so."""
    edit(f"OMOP/{table}.csv", lambda t: re.sub(r"(?m)^([0-9]+),0*([0-9]+),", r"\1,\2.0,", t))(clean)
    messages = validate(clean).filter(pl.col("rule") == rule)["message"].to_list()
    assert messages and all(re.search(r"; persons (101\.0 and 101|000101 and 101\.0) are one id, one written as a "
                                      r"decimal .*write the person_ids of the registry and "
                                      f"{table}.csv as integers$", m) for m in messages), messages


def test_a_spreadsheet_delimiter_hint_before_the_header_is_told_to_be_removed(clean):
    """A table exported with Excel's "sep=," line before its header row was told that its header lacked the key
    column person_id ("export the table with its CDM 5.4 column names"), though the header, on its second line, has it."""
    edit("OMOP/person.csv", lambda t: "sep=,\n" + t)(clean)
    out = validate(clean).filter(pl.col("srcfile") == "OMOP/person.csv")
    assert out.select("rule", "message").rows() == [
        ("omop.no_header", "the first line is a delimiter hint for spreadsheets (sep=), not the column names: remove "
                           "that line, so that the header row comes first")]


def test_a_header_row_quoted_as_a_whole_is_told_so_not_as_lacking_its_key(clean):
    """A header row written in quotes as a whole ('"person_id,gender_concept_id,..."', a tool that quotes each line)
    is one column name holding the commas: it was told to lack the key column person_id ("export the table with its
    CDM 5.4 column names"), though it names it."""
    edit("OMOP/person.csv", lambda t: '\ufeff"' + t.split("\n", 1)[0] + '"\n' + t.split("\n", 1)[1])(clean)
    out = validate(clean).filter(pl.col("srcfile") == "OMOP/person.csv").select("rule", "message").rows()
    assert [rule for rule, _ in out] == ["omop.missing_key"], out
    assert out[0][1].startswith("the header row is read as one column name, 'person_id,"), out
    assert out[0][1].endswith("write the names without the quotes around the row (or quote each name apart)"), out


def test_a_spreadsheet_delimiter_hint_before_a_registry_header_is_told_to_be_removed(clean):
    """A registry with Excel's "sep=," line before its header row was told that its header ("sep=,") lacked the
    registry's columns ("write one row per file with these columns"), though they are on its second line."""
    edit("waveform_registry.csv", lambda t: "sep=,\n" + t)(clean)
    out = validate(clean).filter(pl.col("srcfile") == "waveform_registry.csv")
    assert out.select("rule", "message").rows() == [
        ("registry.unreadable", "cannot read this registry: the first line is a delimiter hint for spreadsheets "
                                "(sep=), not the column names: remove that line, so that the header row comes first")]


def test_a_compressed_part_is_one_of_the_parts_to_join(clean):
    """measurement_part1.csv beside measurement_part2.csv.gz: the plain part alone was told to be renamed as the table
    (the compressed one left out), which would submit the table without part 2's rows."""
    table = (clean / "OMOP/measurement.csv").read_bytes()
    (clean / "OMOP/measurement.csv").unlink()
    write(clean, "OMOP/measurement_part1.csv", table)
    write(clean, "OMOP/measurement_part2.csv.gz", b"\x1f\x8b\x08\x00" + bytes(20))
    out = validate(clean).filter(pl.col("srcfile").str.starts_with("OMOP/"))
    assert sorted(out["rule"]) == ["file.compressed", "omop.missing_table"]
    message = out.filter(pl.col("rule") == "omop.missing_table")["message"].item()
    assert message.startswith("OMOP table measurement is missing, and 2 files look like parts or copies of it "
                              "(OMOP/measurement_part1.csv, OMOP/measurement_part2.csv.gz): "), message


def test_registry_persons_person_csv_writes_as_decimals_are_told_so(clean):
    """person.csv with its person_ids written as decimals (101.0): the registries' rows were told "person_ids 000101,
    ... are not in person.csv: fix the rows or add the persons", though person.csv holds them, written as decimals."""
    edit("OMOP/person.csv", lambda t: re.sub(r"(?m)^0*([0-9]+),", r"\1.0,", t))(clean)
    messages = validate(clean).filter(pl.col("rule") == "registry.unknown_person")["message"].to_list()
    assert len(messages) == 2 and all(m.endswith(
        " (person.csv writes person_ids as decimals, such as 000101 as 101.0: OMOP's person_id is an integer; write "
        "person.csv's person_ids as integers)") for m in messages), messages


def test_a_current_image_path_of_other_depth_is_compared_by_its_modality_folder_as_written(clean):
    """dicom.path_mismatch reads the modality folder of today's <person>/Images/<Modality>/<accession>/<series>/<file>
    from the path's parts, and of any other path a site's own patterns call current from the pattern: both name the
    folder as written (MR, against the header's CT), and a path the pattern does not fit falls back to the category."""
    current = scan_current(clean)
    dicom = current.filter(pl.col("srcfile") == DCM)
    series = SERIES1.rsplit("/", 1)[1]
    paths = {f"{P0}/Images/MR/{ACCESSION}/{series}/000.dcm": "MR",  # the usual depth: from the parts
             f"{P0}/Images/x/images/mr/{ACCESSION}/{series}/000.dcm": "mr",  # deeper: from the pattern
             f"{P0}/Images/{ACCESSION}/{series}/000.dcm": "NM"}  # the pattern does not fit: the category
    copies = pl.concat([dicom.with_columns(srcfile=pl.lit(path), layout=pl.lit("current"), category=pl.lit("NM"))
                        for path in paths])
    out = check(pl.concat([current.filter(pl.col("srcfile") != DCM), copies]),
                extract_facts(LocalSource(clean), facts_needed(current)))
    told = dict(out.filter(pl.col("rule") == "dicom.path_mismatch").select("srcfile", "message").rows())
    assert {path: told.get(path, "").split(" but ")[0] for path in paths} == {
        path: f"modality folder {folder}" for path, folder in paths.items()}


def test_a_registry_with_its_header_row_repeated_is_told_the_line_and_its_rows_are_read(clean):
    """Two exports pasted into one registry (the second's header row, with its BOM, between them): the header row
    was read as a row, told as "trg_file names no file of the site (e.g. trg_file)", "visit_id visit_id is not in
    visit_occurrence.csv" and a proc_id that is no integer, never as what it was. Now registry.unreadable names the
    line it repeats on, and the rows are read without it (no other finding)."""
    registry("Waveforms")(clean)
    registry("Images")(clean)

    def paste(text: str) -> str:
        head, *rows = text.splitlines(keepends=True)
        half = len(rows) // 2
        return head + "".join(rows[:half]) + "\ufeff" + head + "".join(rows[half:])

    edit("waveform_registry.csv", paste)(clean)
    lines = (clean / "waveform_registry.csv").read_text(encoding="utf-8").splitlines()
    line = next(n for n, text in enumerate(lines[1:], 2) if text.lstrip("\ufeff") == lines[0])
    out = validate(clean)
    assert out.select("rule", "srcfile").rows() == [("registry.unreadable", "waveform_registry.csv")], out.to_dicts()
    assert f"its header row is repeated, on 1 line (line {line}): two registries pasted" in out["message"].item()


def test_two_images_of_a_person_with_one_sop_instance_uid_are_told(clean):
    """SOPInstanceUID names one image, the world over: two files of a person holding the same one (an image exported
    twice and renumbered, an edited copy kept beside its original) are one image to a PACS or a viewer, which keeps
    one of them. Their bytes differ, so no duplicate-file rule told them, and their InstanceNumbers differ, so
    dicom.instance_repeated did not either; it now tells the files sharing a SOPInstanceUID, with their names."""
    import io

    import pydicom

    ds = pydicom.dcmread(clean / DCM)
    ds.InstanceNumber = 5
    out_bytes = io.BytesIO()
    ds.save_as(out_bytes)
    add(f"{SERIES1}/005.dcm", out_bytes.getvalue())(clean)
    out = validate(clean).filter(pl.col("rule") == "dicom.instance_repeated")
    assert out.select("srcfile", "severity").rows() == [(f"{SERIES1}/", "warning")]
    message = out["message"][0]
    assert "SOPInstanceUID" in message and "000.dcm and 005.dcm" in message, message
    remove(f"{SERIES1}/005.dcm")(clean)
    assert validate(clean).filter(pl.col("rule") == "dicom.instance_repeated").height == 0


def _as_table_2(stamp: str) -> str:
    """A yyyy-MM-dd HH:mm:ss datetime as the Imaging SOP's example registry (Table 2.0) writes one: 8/18/2022 22:41:11."""
    from datetime import datetime as dt
    at = dt.strptime(stamp, "%Y-%m-%d %H:%M:%S")
    return f"{at.month}/{at.day}/{at.year} {at:%H:%M:%S}"


def test_the_imaging_sops_example_registry_as_written_is_no_finding(clean):
    """The Imaging SOP's Table 2.0 writes its registry without image_registry_id, its datetimes as 8/18/2022 22:41:11,
    src_file a bare name (124.dcm) and trg_file null: a site copying it got a registry.values warning on every row
    ('not yyyy-MM-dd HH:mm:ss'), and the rows' visits went unchecked."""
    registry("Images", lambda rows: [[*r[:5], _as_table_2(r[5]), f"{k}24.dcm", "null"]
                                     for k, r in enumerate(rows)])(clean)
    registry("Waveforms", lambda rows: [[*r[:5], _as_table_2(r[5]), *r[6:]] for r in rows])(clean)
    assert found(clean) == set()


def test_a_table_2_datetime_is_checked_against_its_visit(clean):
    """A month/day/year datetime is read as one: a capture a year off its visit is told (registry.visit_time);
    a day-first date (18/8/2022) or a two-digit year stays not a datetime (registry.values)."""
    from datetime import datetime as dt
    registry("Waveforms", lambda rows: [[*r[:5], _as_table_2(str(dt.strptime(r[5], "%Y-%m-%d %H:%M:%S")
                                                                  .replace(year=2001))), *r[6:]] for r in rows])(clean)
    assert ("registry.visit_time", "waveform_registry.csv") in found(clean)
    registry("Waveforms", lambda rows: [[*r[:5], {0: "18/8/2022 22:41:11", 1: "8/18/22 22:41:11"}.get(k, r[5]),
                                         *r[6:]] for k, r in enumerate(rows)])(clean)
    (message,) = validate(clean).filter(pl.col("rule") == "registry.values")["message"]
    assert message.startswith("2 rows with a datetime that is not yyyy-MM-dd HH:mm:ss"), message


def test_ids_are_compared_without_leading_zeros_as_the_regex_wrote_them():
    """site._norm_id strips the leading zeros of an id of digits without a regex: the same text as the regex replace it
    stands for (one zero kept of zeros alone; quotes and spaces around it dropped; any other id as written), and the
    name of the column it was given."""
    from chorus_batch.validate.site import _norm_id

    ids = ["0", "00", "000", "0012", "12", "", "  007 ", '"0042"', '""', " \"0\" ", "abc", "00a", "a00", "0a0", None,
           "\u0661\u0662", "\u0660\u06601", "00\u0661", "0x1", "0 0", "+01", "-01", "0\n", "00\n1", "0.0", "9" * 30,
           "0" * 30, "0" * 29 + "5"]
    frame = pl.DataFrame({"id": ids}, schema={"id": pl.String})
    s = pl.col("id").str.strip_chars().str.strip_chars('"')
    regex = pl.when(s.str.contains(r"^[0-9]+$")).then(s.str.replace(r"^0+([0-9])", "${1}")).otherwise(s)
    assert_frame_equal(frame.select(_norm_id(pl.col("id"))), frame.select(regex))
    assert frame.select(_norm_id(pl.col("id")))["id"].to_list()[:8] == ["0", "0", "0", "12", "12", "", "7", "42"]
