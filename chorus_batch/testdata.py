"""Deterministic synthetic sites for tests, benchmarks and the demo site.

`make_testdata(out, spec)` writes `out/first` and `out/second`. Both come from one
plan: a person's files form records (a WFDB session, a multi-segment WFDB record, a
DICOM instance, a flat waveform file, ...), and the second snapshot keeps most
records, modifies some (same names, new bytes), renames some (same bytes, new
names), deletes some and adds new ones, as drawn by the seed. `sync_tree` turns a
tree written from one snapshot into the other in place (the benchmarks' mutated runs).

`Spec.layout` picks the site's layout, one per edition of the CHoRUS procedures
(P is a person folder, S a session id, A an accession number, U a SeriesInstanceUID,
I an instance number, P_D_T a start stamp <person>_<YYYYMMDD>_<HHMMSS>):

  "v2.1" (today: Waveform File Format v2.1, Data-Upload-Update, Imaging SOP)
    Metadata/READINESS.md, SUBMISSION.md, Telemetry_mapping.csv[, EEG_mapping.csv]
    P/Waveforms/Telemetry/S/S.hea, S.dat[, Sn.csv]        single-segment WFDB record (II, PLETH at 250 Hz)
    P/Waveforms/Telemetry/S/S.hea, S_layout.hea, S_0001.hea/.dat, S_0002.hea/.dat
                                                           multi-segment record (variable layout: the second
                                                           segment adds ABP), persons 1, 4, 7, ...
    P/Waveforms/EEG/S/S.hea, S.dat                         EEG record (FP1, FP2 at 256 Hz), persons 0, 3, 6, ...
    P/Images/<CT|MR>/A/U/III.dcm                           e.g. 000001/Images/CT/1003/2.25.4290...3312/000.dcm
  "v2.0"  as v2.1 with lower-case P/waveforms/{telemetry,eeg}/S/, SUBMISSION.md at the root (the mapping files
          in Metadata/) and OMOP/waveform_visit_links.csv (visit_occurrence_id,visit_detail_id,session_id)
  "v1.0"  P/waveforms/S/S.hea, S.dat[, Sn.csv] (no Telemetry/EEG folder, no EEG) and a root RECORDS listing
          every top-level record as P/waveforms/S/S (segments not listed); images in the first upload's naming
          P/Images/A/U/P_A_U_<CT|MR>_I.dcm (A doubles as StudyID, U is the SeriesInstanceUID)
  "flat"  the initial SOP's flat names, as this module wrote before layouts:
          P/Waveforms/P_D_T_3600.dat, P/Waveforms/P_D_T/P_D_T_1800_0001.dat + P_D_T'_1800_0002.dat,
          P/Waveforms/P_D_T/P_D_T.hea|.dat[|n.csv] (WFDB, II at 125 Hz), P/Waveforms/RECORDS (the person's
          WFDB records), P/Waveforms/P_D_T_60.csv,
          P/Images/STxxxx/SExx/P_D_T_<CT|MR>_<series>_<instance>.dcm and OMOP/waveform_visit_links.csv
          (visit_occurrence_id,session)

Every layout also has OMOP/<table>.csv for the 13 CDM 5.4 clinical tables CHoRUS collects (comma-delimited,
header rows; no specimen), Metadata/READINESS.md, SUBMISSION.md (v2.0: at the root) and the mapping files, and
the linkage registries at the root (`Spec.registries`): waveform_registry.csv and image_registry.csv, a row per
file with its session or accession, proc_id (1000000000 + accession, 3000000000 + session id), capture time and
visit (empty for the records captured outside every visit); the image registry's trg_file is blank (Imaging SOP).
Session ids and accession numbers are integers, unique on the site (`record_id`); procedure_occurrence holds the
EHR's procedures (ids far below 1000000000) and, with the registries, a row per proc_id (Multimodal-Linkage).
The proc_ids lie outside `chorus-batch registry`'s default ranges, which it refuses where the site's table uses them.

The content is format-valid and agrees with its path: WFDB headers name their record and signal files, carry
the record's base date and time and the checksums of their signals, whose labels, units and rates are those
of the mapping files; DICOM headers carry PatientID, Modality, AccessionNumber (= StudyID, but "flat"),
SeriesInstanceUID, SeriesNumber and InstanceNumber as the path spells them, StudyDate/Time and
AcquisitionDate/Time (the capture time; "flat" names carry it), and no identifying tags (no PatientName,
PatientBirthDate, ...). Times (`capture_time`): a person's visits are consecutive weeks from 2020-01-01
(visit_start/end_datetime in visit_occurrence.csv, one visit_detail each), and every session and image is
captured inside one of them, except, on purpose, about 1 in 10 DICOM studies (`_outside`) and, in the
layouts without an explicit links table (v2.1, v1.0), about 1 in 10 waveform sessions: those are captured
before the person's first visit, so a registry that infers visit_id by overlap leaves it empty. (A session's
segments start where the previous one ends; for `size` above a few MB a segment may start after its
visit's end, the session's start never does.)

A person has exactly `files_per_person` files (those under P/) in the first snapshot: records are added in
the layout's cycle while they fit, and a DICOM instance (one file; "flat": a one-file kind) fills the rest.
Site-level files (OMOP/, Metadata/, the root SUBMISSION.md, RECORDS and registries) are counted apart: `site_file_count`.
Changes keep the site valid: a modified WFDB record gets a new .dat of the same size and a header with its
checksums; a "renamed" one is annotated instead (a header comment: its name is inside its header), as is a
renamed multi-segment record's master header; a renamed DICOM file gets a zero more in its instance number
(000.dcm -> 0000.dcm) where every folder is in its header, or moves to another study folder ("flat"); other
renames ("flat") take a new start stamp, and waveform_visit_links.csv and RECORDS follow.

`size` is the bytes of a bulk file: a .dat holds whole frames of 16-bit samples (size rounded down to a
multiple of the frame, at least one frame), flat files are `size` bytes, DICOM files are padded to about
`size`. Every content is unique on the site (for `size` >= MIN_SIZE). Headers are formatted directly (no
wfdb or pydicom calls per file), so large trees stay fast to write; large ones are written by worker processes.

The demo site (data/demo_site) is `write_demo_site(path)`: `python -m chorus_batch.testdata data/demo_site`.
"""

from __future__ import annotations

import functools
import itertools
import hashlib
import os
import random
import shutil
import struct
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from .errors import Stopped, UsageError, WriteError
from .faults import pause
from .fsutil import cannot_write, private_folder

_EPOCH = datetime(2020, 1, 1)
_FILLER = random.Random(20240229).randbytes(1 << 20)
_JOIN_BELOW = 1 << 20
MAX_FILES = 10_000_000  # persons x files per person: planning holds ~400 bytes a file (10M: ~4 GB)
MAX_SIZE = 1 << 30  # bytes of a bulk file
MIN_SIZE = 32  # bytes of a bulk file below which contents may repeat across persons (file.duplicate)

LAYOUTS = ("v2.1", "v2.0", "v1.0", "flat")

# The 13 OMOP CDM 5.4 clinical tables CHoRUS collects (no specimen), with the columns written.
OMOP_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "year_of_birth", "race_concept_id", "ethnicity_concept_id"),
    "death": ("person_id", "death_date", "death_datetime", "death_type_concept_id"),
    "observation_period": ("observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"),
    "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date",
                         "visit_start_datetime", "visit_end_date", "visit_end_datetime", "visit_type_concept_id"),
    "visit_detail": ("visit_detail_id", "person_id", "visit_detail_concept_id", "visit_detail_start_date",
                     "visit_detail_start_datetime", "visit_detail_end_date", "visit_detail_end_datetime",
                     "visit_detail_type_concept_id", "visit_occurrence_id"),
    "condition_occurrence": ("condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
                             "condition_type_concept_id", "visit_occurrence_id"),
    "drug_exposure": ("drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                      "drug_exposure_end_date", "drug_type_concept_id", "visit_occurrence_id"),
    "procedure_occurrence": ("procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                             "procedure_type_concept_id", "visit_occurrence_id"),
    "device_exposure": ("device_exposure_id", "person_id", "device_concept_id", "device_exposure_start_date",
                        "device_type_concept_id", "visit_occurrence_id"),
    "measurement": ("measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "measurement_type_concept_id", "value_as_number", "unit_concept_id", "visit_occurrence_id"),
    "observation": ("observation_id", "person_id", "observation_concept_id", "observation_date",
                    "observation_type_concept_id", "visit_occurrence_id"),
    "note": ("note_id", "person_id", "note_date", "note_datetime", "note_type_concept_id", "note_class_concept_id",
             "note_title", "note_text", "encoding_concept_id", "language_concept_id", "visit_occurrence_id",
             "visit_detail_id"),
    "note_nlp": ("note_nlp_id", "note_id", "lexical_variant", "note_nlp_concept_id", "nlp_date"),
}
OMOP_TABLES = tuple(OMOP_COLUMNS)
LINKS_COLUMNS = {"v2.0": ("visit_occurrence_id", "visit_detail_id", "session_id"),
                 "flat": ("visit_occurrence_id", "session")}  # OMOP/waveform_visit_links.csv, where written


# ----------------------------------------------------------------------------- signals


@dataclass(frozen=True)
class Signal:
    signal_id: str  # as the headers and the mapping file name it
    label: str  # ISO/IEEE 11073 label (mapping file)
    units: str
    gain: int  # ADC units per physical unit


_II = Signal("II", "MDC_ECG_ELEC_POTL_II", "mV", 200)
_PLETH = Signal("PLETH", "MDC_PULS_OXIM_PLETH", "NU", 1000)
_ABP = Signal("ABP", "MDC_PRESS_BLD_ART", "mmHg", 100)
_FP1 = Signal("FP1", "MDC_EEG_ELEC_POTL_FP1", "uV", 10)
_FP2 = Signal("FP2", "MDC_EEG_ELEC_POTL_FP2", "uV", 10)
# Signal groups of a record: (sampling frequency, signals); every signal of a group at the frame rate.
GROUPS: dict[str, tuple[int, tuple[Signal, ...]]] = {
    "tele": (250, (_II, _PLETH)),
    "tele3": (250, (_II, _PLETH, _ABP)),  # a multi-segment record's second segment: ABP joins
    "eeg": (256, (_FP1, _FP2)),
    "flat": (125, (_II,)),  # the "flat" layout's WFDB records, as before layouts
}
MAPPING_COLUMNS = ("signal_id", "standardized_label", "sampling_rate", "units", "timestamp_id")


# ----------------------------------------------------------------------------- layouts

# Files per record kind. flat: flat waveform file, two flat segments, WFDB (+numerics), flat CSV, DICOM;
# the others: single-segment telemetry WFDB (+numerics), EEG WFDB, multi-segment WFDB (6 files), DICOM.
_NFILES = {"flat": 1, "segments": 2, "wfdb+n": 3, "wfdb": 2, "csv": 1, "dicom": 1,
           "tele": 2, "tele+n": 3, "eeg": 2, "multi": 6}


@dataclass(frozen=True)
class _Layout:
    cycle: tuple[str, ...]  # a person's records cycle through these kinds
    single: tuple[str, ...]  # one-file kinds that fill a person up to files_per_person
    links: bool  # OMOP/waveform_visit_links.csv links every session to its visit
    person_records: bool  # P/Waveforms/RECORDS (the first WFDB record brings it: one file more)
    root_records: bool  # RECORDS at the root
    submission_at_root: bool


_CYCLE_V2 = ("multi", "dicom", "eeg", "dicom", "tele+n", "dicom", "tele", "dicom", "dicom", "tele+n", "dicom", "dicom")
_LAYOUTS = {
    "v2.1": _Layout(_CYCLE_V2, ("dicom",), False, False, False, False),
    "v2.0": _Layout(_CYCLE_V2, ("dicom",), True, False, False, True),
    "v1.0": _Layout(tuple("tele" if k == "eeg" else k for k in _CYCLE_V2), ("dicom",), False, False, True, False),
    "flat": _Layout(("flat", "segments", "wfdb+n", "csv", "dicom", "wfdb", "dicom", "flat", "dicom", "segments",
                     "wfdb", "dicom"), ("dicom", "flat", "csv"), True, True, False, False),
}
_DICOM_PER_SERIES, _SERIES_PER_STUDY = 2, 2
# proc_ids of the registries: the base + the accession number or session id (unique on the site), so that a session
# keeps its proc_id; outside `chorus-batch registry`'s default ranges (2000000000-2000999999, 2001000000-2999999999),
# which it refuses where procedure_occurrence.csv (here: with the registries' rows) already uses them
_IMAGE_PROC, _WAVEFORM_PROC = 1_000_000_000, 3_000_000_000
_HOURS_PER_VISIT = 7 * 24  # a person's visits are consecutive weeks; a record belongs to its start's week


@dataclass(frozen=True)
class Spec:
    persons: int = 20
    files_per_person: int = 12
    size: int = 1024  # bytes of each bulk file (.dat, flat waveform files; DICOM are padded to about this)
    seed: int = 0
    change_fraction: float = 0.2
    layout: str = "v2.1"  # one of LAYOUTS
    registries: bool = True  # ship the linkage registries (the benchmarks' trees leave them out: a row per file)

    def __post_init__(self) -> None:
        if self.layout not in _LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}: use one of {', '.join(LAYOUTS)}")
        if (self.persons < 1 or self.files_per_person < 1 or self.persons * self.files_per_person > MAX_FILES
                or not 0 <= self.size <= MAX_SIZE or not 0 <= self.change_fraction <= 1):
            # (which of them is out of range said first: all four were listed alike)
            wrong = "; ".join(said for bad, said in [
                (self.persons < 1, f"--persons {self.persons} is below 1"),
                (self.files_per_person < 1, f"--files-per-person {self.files_per_person} is below 1"),
                (self.persons >= 1 and self.files_per_person >= 1 and self.persons * self.files_per_person > MAX_FILES,
                 f"--persons {self.persons} x --files-per-person {self.files_per_person} is "
                 f"{self.persons * self.files_per_person:,} files, more than {MAX_FILES:,}"),
                (not 0 <= self.size <= MAX_SIZE, f"--size {self.size} is not from 0 to {MAX_SIZE:,} bytes"),
                (not 0 <= self.change_fraction <= 1, f"--change-fraction {self.change_fraction} is not from 0 to 1")]
                if bad)
            raise UsageError(f"testdata sizes out of range: {wrong}",
                             where="testdata arguments",
                             fix=f"--persons and --files-per-person at least 1 and at most {MAX_FILES:,} files in all "
                                 f"(persons x files per person), --size from 0 to {MAX_SIZE:,} bytes, "
                                 "--change-fraction from 0 to 1")


def person_id(i: int) -> str:
    return f"{i + 1:06d}"  # text with leading zeros, as sites store them


def has_eeg(i: int) -> bool:
    """Persons 0, 3, 6, ... have EEG sessions (where the layout has them); the others' are telemetry."""
    return i % 3 == 0


def has_multisegment(i: int) -> bool:
    """Persons 1, 4, 7, ... have multi-segment WFDB records (not "flat"); the others' are single-segment."""
    return i % 3 == 1


def record_id(i: int, slot: int, m: int) -> int:
    """The session id or accession number of person i's record at `slot`: unique on the site, since a slot
    belongs to one record and slots stay below 11 m + 6 (renames go up to 11 m + 5)."""
    return (i + 1) * 10 ** max(3, len(str(11 * m + 6))) + slot


def _visits(m: int) -> int:
    """Visits per person: enough weeks for every slot either snapshot uses (renames go up to 11 m + 5), and a
    day for the last session's segments."""
    return (11 * m + 5 + 24) // _HOURS_PER_VISIT + 1


def capture_time(i: int, slot: int, m: int, outside: bool = False) -> datetime:
    """When person i's record at `slot` starts: slot hours (plus the person's minute) after 2020-01-01, inside
    the person's visits; `outside` ones as many weeks earlier as the person has visits (before them all)."""
    at = _EPOCH + timedelta(hours=slot, minutes=(i + 1) % 60)
    return at - timedelta(weeks=_visits(m)) if outside else at


def _outside(layout: _Layout, kind: str, i: int, slot: int, study: int = 0) -> bool:
    """About 1 in 10 DICOM studies, and of waveform sessions where no links table names their visit, are
    captured outside every visit on purpose (the registries' empty visit_id)."""
    if kind == "dicom":
        return (3 * i + 7 * study + 3) % 10 == 9
    return not layout.links and (3 * i + slot + 5) % 10 == 9


def _stamp(pid: str, at: datetime) -> str:
    return f"{pid}_{at:%Y%m%d_%H%M%S}"


# ----------------------------------------------------------------------------- the plan


def _person_records(m: int, layout: str, i: int) -> tuple[tuple, ...]:
    return _records(m, layout, has_eeg(i), has_multisegment(i))


@functools.cache
def _records(m: int, layout: str, eeg: bool, multi: bool) -> tuple[tuple, ...]:
    """A person's records in the first snapshot: (kind, first slot[, study, series, study slot, index in the
    series] for DICOM).

    A record's first slot k names it (its start is k hours after the epoch); it takes as many slots as it
    has files, so a person has exactly m files."""
    spec = _LAYOUTS[layout]
    out: list[tuple] = []
    k = u = n_dicom = 0
    has_records = False
    study_slots: dict[int, int] = {}
    while k < m:
        kind = spec.cycle[u % len(spec.cycle)]
        if kind == "eeg" and not eeg:
            kind = "tele"
        elif kind == "multi" and not multi:
            kind = "tele+n"
        n = _NFILES[kind] + (spec.person_records and kind.startswith("wfdb") and not has_records)
        if k + n > m:
            kind, n = spec.single[k % len(spec.single)], 1
        has_records |= kind.startswith("wfdb")
        if kind == "dicom":
            study = n_dicom // (_DICOM_PER_SERIES * _SERIES_PER_STUDY)
            series = n_dicom // _DICOM_PER_SERIES % _SERIES_PER_STUDY + 1
            study_slots.setdefault(study, k)
            out.append((kind, k, study, series, study_slots[study], n_dicom % _DICOM_PER_SERIES))
            n_dicom += 1
        else:
            out.append((kind, k))
        k += n
        u += 1
    return tuple(out)


def _fate(x: float, fraction: float) -> str:
    if x >= fraction:
        return "keep"
    x /= fraction
    for fate, share in (("modify", 0.4), ("rename", 0.2), ("delete", 0.2)):  # the rest are additions
        if x < share:
            return fate
        x -= share
    return "add"


def _renamable(layout: str, kind: str) -> bool:
    """Records a rename moves with the same bytes (the others' names are inside their headers)."""
    return kind == "dicom" if layout != "flat" else not kind.startswith("wfdb")


def _every_fate(layout: str, records: tuple[tuple, ...], fates: list[str]) -> None:
    """Give the first person every kind of change (on records it keeps, from its last one), so that even
    a small site's second snapshot has them all."""
    for fate in ("add", "delete", "rename", "modify"):
        if fate in fates:
            continue
        for u in reversed(range(len(records))):
            if fates[u] == "keep" and (fate != "rename" or _renamable(layout, records[u][0])):
                fates[u] = fate
                break


@dataclass
class _Summary:
    """What the site files need to know of a person's files in a snapshot."""

    i: int
    links: str = ""  # rows of waveform_visit_links.csv
    records: tuple[str, ...] = ()  # lines of the root RECORDS
    telemetry: int = 0  # sessions
    eeg: int = 0
    images: int = 0  # DICOM files
    accessions: int = 0
    years: tuple[int, ...] = ()
    waveform_rows: str = ""  # rows of waveform_registry.csv, image_rows of image_registry.csv (without the ids)
    image_rows: str = ""


@functools.lru_cache(maxsize=4096)
def _series_uid(pid: str, study: int, series: int) -> str:
    return _uid(f"{pid}|{study}|{series}")[:-1].decode()  # in paths: names do not depend on the seed


def _person(spec: Spec, i: int, second: bool) -> tuple[dict[str, tuple], _Summary]:
    """One person's files (path -> content id) and summary."""
    layout = _LAYOUTS[spec.layout]
    pid = person_id(i)
    m = spec.files_per_person
    first_visit = i * _visits(m) + 1
    rng = random.Random(spec.seed * 1_000_003 + i)
    files: dict[str, tuple] = {}
    links: list[str] = []
    wfdb_records: list[str] = []
    counts = {"telemetry": 0, "eeg": 0, "images": 0}
    accessions: set[str] = set()
    years: set[int] = set()
    upper = spec.layout == "v2.1"
    waveforms = "Waveforms" if upper else "waveforms"

    def emit(record: tuple, slot: int, version: str, moved: bool = False) -> tuple[str, int, datetime, int | None]:
        """Adds the record's files; returns what their registry rows give: group, proc_id, capture time, visit."""
        kind, k = record[0], record[1]
        tag = f"{pid}:{k}"  # the content's identity: the same after a rename
        if kind == "dicom":
            _, _, study, series, study_slot, index = record
            outside = _outside(layout, kind, i, k, study)
            study_at = capture_time(i, study_slot, m, outside)
            at = study_at + timedelta(minutes=slot - study_slot)
            modality = "CT" if study % 2 == 0 else "MR"
            accession = str(record_id(i, study_slot, m))
            uid = _series_uid(pid, study, series)
            if spec.layout == "flat":
                folder = f"{pid}/Images/ST{study:04d}{'-resent' if moved else ''}/SE{series:02d}"
                instance, study_id, name = slot + 1, str(study), f"{_stamp(pid, at)}_{modality}_{series}_{slot + 1}"
            else:
                instance, study_id = index, accession
                number = ("0" if moved else "") + (f"{instance:03d}" if spec.layout != "v1.0" else str(instance))
                if spec.layout == "v1.0":
                    folder, name = f"{pid}/Images/{accession}/{uid}", f"{pid}_{accession}_{uid}_{modality}_{number}"
                else:
                    folder, name = f"{pid}/Images/{modality}/{accession}/{uid}", number
            files[f"{folder}/{name}.dcm"] = ("dcm", pid, modality, study_at, at, accession, study_id, series,
                                            uid, instance, tag + version)
            counts["images"] += 1
            accessions.add(accession)
            years.add(at.year)
            return accession, _IMAGE_PROC + int(accession), at, None if outside else first_visit + study_slot // _HOURS_PER_VISIT
        outside = _outside(layout, kind, i, slot)
        at = capture_time(i, slot, m, outside)
        years.add(at.year)
        visit = first_visit + slot // _HOURS_PER_VISIT  # the week the session starts in
        if spec.layout == "flat":
            session = _stamp(pid, at)
            links.append(f"{visit},{session}\n")
            if kind == "flat":
                files[f"{pid}/Waveforms/{session}_3600.dat"] = ("raw", tag + version)
            elif kind == "segments":  # the second segment starts when the first ends; a modification changes it
                folder = f"{pid}/Waveforms/{session}"
                files[f"{folder}/{session}_1800_0001.dat"] = ("raw", f"{tag}:1")
                files[f"{folder}/{_stamp(pid, at + timedelta(seconds=1800))}_1800_0002.dat"] = (
                    "raw", f"{tag}:2{version}")
            elif kind == "csv":
                # (in Waveforms/ as the rest: a waveforms/ beside it is two folders a Windows or macOS copy merges,
                # file.name_clash; it was lower case here)
                files[f"{pid}/Waveforms/{session}_60.csv"] = ("csv", tag + version)
            else:  # wfdb, wfdb+n: renamed records are annotated instead (a record's name is inside its header)
                folder = f"{pid}/Waveforms/{session}"
                signal = tag + (version if version != ":renamed" else "")
                files[f"{folder}/{session}.hea"] = ("hea", session, "flat", signal, at, 0, version == ":renamed")
                files[f"{folder}/{session}.dat"] = ("dat", "flat", signal)
                if kind == "wfdb+n":
                    files[f"{folder}/{session}n.csv"] = ("num", session, None)
                wfdb_records.append(session)
            counts["telemetry"] += 1
            return session, _WAVEFORM_PROC + record_id(i, slot, m), at, None if outside else visit
        sid = str(record_id(i, slot, m))
        category = "EEG" if kind == "eeg" else "Telemetry"
        counts["eeg" if kind == "eeg" else "telemetry"] += 1
        if spec.layout == "v1.0":
            folder = f"{pid}/waveforms/{sid}"
        else:
            folder = f"{pid}/{waveforms}/{category if upper else category.lower()}/{sid}"
        if layout.links:
            links.append(f"{visit},{visit},{sid}\n")  # one visit_detail per visit, with the visit's id
        wfdb_records.append(f"{folder}/{sid}")
        annotated = version == ":renamed"
        signal = tag + (version if not annotated else "")
        if kind == "multi":  # a modification changes the second segment; a rename annotates the master header
            files[f"{folder}/{sid}.hea"] = ("mhea", sid, at, annotated)
            files[f"{folder}/{sid}_layout.hea"] = ("lhea", sid, at)
            files[f"{folder}/{sid}_0001.hea"] = ("hea", f"{sid}_0001", "tele", f"{tag}:1", at, 0, False)
            files[f"{folder}/{sid}_0001.dat"] = ("dat", "tele", f"{tag}:1")
            files[f"{folder}/{sid}_0002.hea"] = ("hea", f"{sid}_0002", "tele3", f"{signal}:2", at, 1, False)
            files[f"{folder}/{sid}_0002.dat"] = ("dat", "tele3", f"{signal}:2")
            return sid, _WAVEFORM_PROC + int(sid), at, None if outside else visit
        group = "eeg" if kind == "eeg" else "tele"
        files[f"{folder}/{sid}.hea"] = ("hea", sid, group, signal, at, 0, annotated)
        files[f"{folder}/{sid}.dat"] = ("dat", group, signal)
        if kind == "tele+n":
            files[f"{folder}/{sid}n.csv"] = ("num", sid, at)
        return sid, _WAVEFORM_PROC + int(sid), at, None if outside else visit

    records = _person_records(m, spec.layout, i)
    fates = [_fate(rng.random(), spec.change_fraction) for _ in records] if second else ["keep"] * len(records)
    if second and i == 0 and spec.change_fraction > 0:
        _every_fate(spec.layout, records, fates)
    rows: dict[str, list[str]] = {"Images": [], "Waveforms": []}

    def listed(record: tuple, slot: int, version: str, moved: bool = False) -> None:
        """emit, and a registry row for each file it adds (Multimodal-Linkage: one row per file)."""
        before = len(files)
        group, proc, at, visit = emit(record, slot, version, moved)
        if spec.registries:
            image = record[0] == "dicom"  # the Imaging SOP leaves the image registry's trg_file blank
            for path in reversed(list(itertools.islice(reversed(files), len(files) - before))):  # the ones it added
                rows["Images" if image else "Waveforms"].append(
                    f"{proc},{pid},{group},{'' if visit is None else visit},{at:%Y-%m-%d %H:%M:%S},/source/{path},"
                    f"{'' if image else path}\n")

    for record, fate in zip(records, fates):
        k = record[1]
        if fate == "delete":
            continue
        if fate == "rename" and record[0] == "dicom":
            listed(record, k, "", moved=True)  # the name agrees with the header (see the module's docstring)
        elif fate == "rename" and _renamable(spec.layout, record[0]):
            listed(record, k + 10 * m + 5, "")  # a slot no other record uses
        else:
            listed(record, k, {"modify": ":v2", "rename": ":renamed"}.get(fate, ""))
        if fate == "add":  # a DICOM instance joins its series (instance numbers after the first snapshot's)
            added = (*record[2:5], _DICOM_PER_SERIES + k) if record[0] == "dicom" else ()
            listed((record[0], m + k, *added), m + k, "")
    if wfdb_records and layout.person_records:
        files[f"{pid}/Waveforms/RECORDS"] = ("rec", tuple(sorted(wfdb_records)))
    summary = _Summary(i, "".join(links), tuple(wfdb_records) if layout.root_records else (), counts["telemetry"],
                       counts["eeg"], counts["images"], len(accessions), tuple(sorted(years)),
                       "".join(rows["Waveforms"]), "".join(rows["Images"]))
    return files, summary


def _plan(spec: Spec, persons: Iterable[int], second: bool) -> tuple[dict[str, tuple], list[_Summary]]:
    files: dict[str, tuple] = {}
    summaries: list[_Summary] = []
    for i in persons:
        person_files, summary = _person(spec, i, second)
        files.update(person_files)
        summaries.append(summary)
    return files, summaries


def snapshot(spec: Spec, persons: Iterable[int] | None = None, *, second: bool = False) -> dict[str, tuple]:
    """path -> content id of the person folders of one snapshot (the site files: site_files)."""
    return _plan(spec, range(spec.persons) if persons is None else persons, second)[0]


def site_files(spec: Spec, *, second: bool = False) -> dict[str, bytes]:
    """path -> bytes of the site-level files of one snapshot (OMOP/, Metadata/, root files)."""
    return _site_files(spec, second, _plan(spec, range(spec.persons), second)[1])


def site_file_count(spec: Spec) -> int:
    """The number of site-level files in the first snapshot, without planning the persons: the OMOP tables
    (and the links table), READINESS.md, SUBMISSION.md, Telemetry_mapping.csv, EEG_mapping.csv if a person
    has an EEG session, the root RECORDS (v1.0) if a person has a WFDB record, and the waveform and image
    registries where persons have waveforms or images."""
    layout = _LAYOUTS[spec.layout]
    m = spec.files_per_person
    kinds = {r[0] for i in range(min(spec.persons, 3)) for r in _person_records(m, spec.layout, i)}
    return (len(OMOP_TABLES) + layout.links + 3 + ("eeg" in kinds)
            + (layout.root_records and bool(kinds - {"dicom"}))
            + (spec.registries and bool(kinds - {"dicom"})) + (spec.registries and "dicom" in kinds))


# ----------------------------------------------------------------------------- site files


def _csv(columns: Iterable[str], rows: Iterable[Iterable[object]]) -> bytes:
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


@functools.lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return f"{_EPOCH + timedelta(days=days):%Y-%m-%d}"


def _daytime(days: int, seconds: int = 0) -> str:
    return f"{_EPOCH + timedelta(days=days, seconds=seconds):%Y-%m-%d %H:%M:%S}"


def _omop_rows(spec: Spec, table: str, second: bool) -> Iterator[tuple]:
    nv = _visits(spec.files_per_person)
    weeks = nv * 7
    last = 24 * 3600 - 1
    for i in range(spec.persons):
        pid = person_id(i)
        first_visit = i * nv + 1
        if table == "person":
            born = 1940 + (i * 7 + spec.seed) % 60 + (second and i % 4 == 0)  # the second corrects some
            yield pid, (8507, 8532)[i % 2], born, 0, 0
        elif table == "death":  # a few persons die, the day after their last visit
            if i % 5 == 0:
                yield pid, _day(weeks), _daytime(weeks, 3600 * (6 + i % 12)), 32817
        elif table == "observation_period":
            yield i + 1, pid, _day(0), _day(weeks - 1), 32817
        elif table in ("visit_occurrence", "visit_detail"):  # a visit per week, an ICU stay in each
            for v in range(nv):
                visit = first_visit + v
                start, end = (_day(7 * v), _daytime(7 * v)), (_day(7 * v + 6), _daytime(7 * v + 6, last))
                if table == "visit_occurrence":
                    yield visit, pid, 9201, *start, *end, 32817
                else:
                    yield visit, pid, 32037, *start, *end, 32817, visit
        elif table == "condition_occurrence":
            yield i + 1, pid, 132797, _day(0), 32817, first_visit
        elif table == "drug_exposure":
            yield i + 1, pid, 1125315, _day(0), _day(1), 32817, first_visit
        elif table == "procedure_occurrence":  # ids far below the registries' 1000000000
            yield i + 1, pid, 4230911, _day(0), 32817, first_visit
        elif table == "device_exposure":
            yield i + 1, pid, 4044008, _day(0), 32817, first_visit
        elif table == "measurement":  # heart rate per visit; the second snapshot adds a respiratory rate
            for v in range(nv):
                yield (first_visit + v) * 2, pid, 3027018, _day(7 * v), 32817, 60 + (i + v) % 40, 8541, first_visit + v
                if second:
                    yield (first_visit + v) * 2 + 1, pid, 3024171, _day(7 * v), 32817, 12 + (i + v) % 10, 8541, \
                        first_visit + v
        elif table == "observation":
            yield i + 1, pid, 4275495, _day(0), 32817, first_visit
        elif table == "note":  # identifiers and descriptors only: no note text
            yield i + 1, pid, _day(1), _daytime(1, 9 * 3600), 32817, 44814637, "discharge summary", "", 32678, \
                4180186, first_visit, first_visit
        elif table == "note_nlp":
            yield i + 1, i + 1, "sepsis", 132797, _day(1)


# Where each layout puts waveforms and images (READINESS.md).
_PLACES = {
    "v2.1": ("<person_id>/Waveforms/Telemetry|EEG/<session_id>/, files named by the session id (an integer)",
             "<person_id>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm"),
    "v2.0": ("<person_id>/waveforms/telemetry|eeg/<session_id>/, files named by the session id (an integer)",
             "<person_id>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm"),
    "v1.0": ("<person_id>/waveforms/<session_number>/, every record listed in RECORDS",
             "<person_id>/Images/<StudyID>/<SeriesID>/<person_id>_<StudyID>_<SeriesID>_<Modality>_<InstanceNumber>.dcm"),
    "flat": ("<person_id>/Waveforms/, files named <person_id>_<YYYYMMDD>_<HHMMSS>_<duration_s>.<ext>",
             "<person_id>/Images/<study>/<series>/<person_id>_<YYYYMMDD>_<HHMMSS>_<Modality>_<series>_<instance>.dcm"),
}


def _readiness(layout: str) -> bytes:
    waveforms, images = _PLACES[layout]
    return f"""\
# Waveform readiness checklist

- [x] Site folder: OMOP/ with the 13 OMOP CDM 5.4 clinical tables (no specimen), Metadata/ and a folder per person
- [x] Waveforms under {waveforms}
- [x] WFDB records: headers name their signal files and carry the base date and time
- [x] Numerics of a session in a CSV beside its waveforms
- [x] Images under {images}
- [x] DICOM headers agree with the folders and file names and carry no identifying tags
- [x] Signals mapped to ISO/IEEE 11073 labels in Metadata/Telemetry_mapping.csv (and EEG_mapping.csv)
- [x] Dates shifted by the same amount per person across EHR, waveforms and images
- [x] SUBMISSION.md describes the site, the data, the formats, the gaps and the linkage
""".encode()


def _mapping(group_names: Iterable[str]) -> bytes:
    rows: dict[str, tuple] = {}
    for name in group_names:
        fs, signals = GROUPS[name]
        for s in signals:
            rows.setdefault(s.signal_id, (s.signal_id, s.label, f"{fs:.1f}", s.units, "base_time"))
    return _csv(MAPPING_COLUMNS, rows.values())


def _submission(spec: Spec, summaries: list[_Summary]) -> bytes:
    tele = sum(s.telemetry for s in summaries)
    eeg = sum(s.eeg for s in summaries)
    images = sum(s.images for s in summaries)
    accessions = sum(s.accessions for s in summaries)
    years = sorted({y for s in summaries for y in s.years}) or [_EPOCH.year]
    def described(group: str) -> str:
        fs, signals = GROUPS[group]
        return f"WFDB, {fs} Hz: " + ", ".join(f"{s.signal_id} ({s.label}, {s.units})" for s in signals)

    types = f"Telemetry ({described('flat' if spec.layout == 'flat' else 'tele3')})."
    if eeg:
        types += f" EEG ({described('eeg')})."
    if spec.layout == "flat":
        types += " Flat waveform files (<person_id>_<YYYYMMDD>_<HHMMSS>_<duration_s>.dat) in the monitor's format."
    clock = ("time_s (integer, seconds from the session's start)" if spec.layout == "flat" else
             "timestamp (text, YYYY-MM-DD HH:MM:SS, local time, date-shifted as the EHR)")
    if spec.layout in ("v2.0", "flat"):
        linkage = ("OMOP/waveform_visit_links.csv names the visit of every waveform session: the visit whose "
                   "start and end enclose the session's start.")
    else:
        linkage = ("No explicit links: the visit of a session or image is the person's visit whose start and end "
                   "enclose its start (the WFDB header's base date and time, the DICOM acquisition date and time); "
                   "some were captured outside every visit and have none.")
    text = f"""\
# Submission

## Hospital / site
chorus-testdata, a synthetic site (seed {spec.seed}, layout {spec.layout}); no real patient data.

## Dataset
- Persons: {spec.persons}
- Waveform sessions: {tele} telemetry, {eeg} EEG
- Images: {images} DICOM files (CT or MR) in {accessions} accessions
- Years: {years[0]}-{years[-1]}
- OMOP CDM 5.4: 13 clinical tables, one snapshot of every person submitted to date

## Waveform types
{types}
Numerics (heart rate, SpO2, respiratory rate) as CSV beside the telemetry records.

## Known issues
None known.

## Variables
WFDB signal files: format 16, 16-bit two's complement little-endian samples, interleaved per frame; the
header gives each signal's gain (ADC units per physical unit) and units; signal ids and units as in the
mapping files. Numerics CSV: {clock}, HR (integer, beats per minute), SpO2 (integer, percent),
RR (integer, breaths per minute).

## Sample intervals
Waveforms are sampled uniformly at the header's frequency, the same for every channel of a record; the time
of a sample is the header's base date and time plus its index over the frequency. Numerics every 5 seconds.

## Gaps
A gap in a recording or a change of channels starts a new segment of a multi-segment WFDB record; nothing is
filled with NaN, and gaps from missing data are not told apart from clock resynchronisations.

## Linkage
{linkage}
"""
    return text.encode()


def _site_files(spec: Spec, second: bool, summaries: list[_Summary]) -> dict[str, bytes]:
    layout = _LAYOUTS[spec.layout]
    summaries = sorted(summaries, key=lambda s: s.i)
    files = {f"OMOP/{table}.csv": _csv(columns, _omop_rows(spec, table, second))
             for table, columns in OMOP_COLUMNS.items()}
    if layout.links:
        files["OMOP/waveform_visit_links.csv"] = (
            ",".join(LINKS_COLUMNS[spec.layout]) + "\n" + "".join(s.links for s in summaries)).encode()
    files["Metadata/READINESS.md"] = _readiness(spec.layout)
    files["SUBMISSION.md" if layout.submission_at_root else "Metadata/SUBMISSION.md"] = _submission(spec, summaries)
    files["Metadata/Telemetry_mapping.csv"] = _mapping(("flat",) if spec.layout == "flat" else ("tele", "tele3"))
    if any(s.eeg for s in summaries):
        files["Metadata/EEG_mapping.csv"] = _mapping(("eeg",))
    records = sorted(r for s in summaries for r in s.records)
    if records:
        files["RECORDS"] = ("\n".join(records) + "\n").encode()
    if spec.registries:  # at the root ("inside the RELEASE directory"), a file_id per row (and image_registry_id)
        columns = "file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,trg_file\n"
        waveforms = "".join(s.waveform_rows for s in summaries).splitlines(keepends=True)
        images = "".join(s.image_rows for s in summaries).splitlines(keepends=True)
        if waveforms:
            files["waveform_registry.csv"] = (columns + "".join(f"{k},{row}" for k, row in enumerate(waveforms, 1))).encode()
        if images:
            files["image_registry.csv"] = ("image_registry_id," + columns + "".join(
                f"{k},{k + len(waveforms)},{row}" for k, row in enumerate(images, 1))).encode()
        # Multimodal-Linkage: each proc_id is a PROCEDURE_OCCURRENCE row (4180938 Imaging, 4141651 Monitoring;
        # type 32880, derived by an algorithm), as `chorus-batch registry --omop` writes them
        made: dict[str, str] = {}
        for concept, rows in (("4141651", waveforms), ("4180938", images)):
            for row in rows:
                proc, person, _group, visit, when = row.split(",", 5)[:5]
                made.setdefault(proc, f"{proc},{person},{concept},{when[:10]},32880,{visit}\n")
        files["OMOP/procedure_occurrence.csv"] += "".join(made.values()).encode()
    return files


# ----------------------------------------------------------------------------- contents


def _filler(n: int, offset: int) -> Iterator[bytes]:
    offset %= len(_FILLER)
    while n > 0:
        chunk = _FILLER[offset: offset + min(n, len(_FILLER) - offset)]
        yield chunk
        n -= len(chunk)
        offset = 0


def _raw(tag: str, size: int, seed: int) -> Iterator[bytes]:
    """`size` bytes: the content's tag (unique on the site, so no two persons share a file), then filler."""
    head = f"{tag} chorus-testdata seed={seed}\n".encode()
    if size <= len(head):
        yield head[:size]
        return
    yield head
    yield from _filler(size - len(head), zlib.crc32(head))


def frames(size: int, group: str) -> int:
    """Frames of a signal file of about `size` bytes (format 16: two bytes a sample), at least one."""
    return max(1, size // (2 * len(GROUPS[group][1])))


def _dat_bytes(size: int, group: str) -> int:
    return frames(size, group) * 2 * len(GROUPS[group][1])


@functools.lru_cache(maxsize=4096)
def _wfdb_time(at: datetime) -> str:
    """HH:MM:SS[.mmm] DD/MM/YYYY, a WFDB record line's base time and date."""
    ms = at.microsecond // 1000
    return f"{at:%H:%M:%S}{f'.{ms:03d}' if ms else ''} {at:%d/%m/%Y}"


def _wfdb_header(record: str, group: str, signal: str, at: datetime, segment: int, annotated: bool, size: int,
                 seed: int) -> bytes:
    """A single-segment WFDB header for <record>.dat (format 16), as wfdb.wrsamp writes them. A multi-segment
    record's second segment (segment 1) starts where the first ends."""
    fs, signals = GROUPS[group]
    samples = np.frombuffer(b"".join(_raw(signal, _dat_bytes(size, group), seed)), dtype="<i2").reshape(
        -1, len(signals))
    if segment:
        at += timedelta(seconds=frames(size, "tele") / fs)
    checksums = samples.sum(axis=0, dtype=np.int64) % 65536
    checksums -= 65536 * (checksums > 32767)
    lines = [f"{record} {len(signals)} {fs} {len(samples)} {_wfdb_time(at)}"]
    for j, s in enumerate(signals):
        lines.append(f"{record}.dat 16 {s.gain}(0)/{s.units} 16 0 {int(samples[0, j])} {int(checksums[j])} 0 "
                     f"{s.signal_id}")
    if annotated:
        lines.append("# annotated: artefacts reviewed")
    return ("\n".join(lines) + "\n").encode()


def _master_header(sid: str, at: datetime, annotated: bool, size: int) -> bytes:
    """A variable-layout multi-segment header: the layout segment, then the two segments."""
    fs, signals = GROUPS["tele3"]
    n1, n2 = frames(size, "tele"), frames(size, "tele3")
    note = "# annotated: artefacts reviewed\n" if annotated else ""
    return (f"{sid}/3 {len(signals)} {fs} {n1 + n2} {_wfdb_time(at)}\n{sid}_layout 0\n{sid}_0001 {n1}\n"
            f"{sid}_0002 {n2}\n{note}").encode()


def _layout_header(sid: str, at: datetime) -> bytes:
    """The layout segment of a multi-segment record: every signal of the record, no samples."""
    fs, signals = GROUPS["tele3"]
    lines = [f"{sid}_layout {len(signals)} {fs} 0 {_wfdb_time(at)}"]
    lines += [f"~ 0 {s.gain}(0)/{s.units} 16 0 0 0 0 {s.signal_id}" for s in signals]
    return ("\n".join(lines) + "\n").encode()


_NUMERICS_HEADER = "time_s,HR,SpO2,RR\n"
_ROW = 16  # bytes of a row of the numerics filler: "ssssss,hh,oo,rr\n"
_NUMERICS_ROWS = 8192


@functools.cache
def _numerics_filler() -> bytes:
    b = random.Random(20240301).randbytes(3 * _NUMERICS_ROWS)
    return "".join(f"{t:06d},{60 + b[3 * t] % 40},{90 + b[3 * t + 1] % 10},{10 + b[3 * t + 2] % 20}\n"
                   for t in range(_NUMERICS_ROWS)).encode()


def _flat_csv(tag: str, size: int, seed: int) -> Iterator[bytes]:
    """A flat numerics CSV ("flat" layout) of `size` bytes: a comment naming the content, padded so whole
    rows follow."""
    comment = f"# {tag} chorus-testdata seed={seed}"
    fixed = len(comment) + 1 + len(_NUMERICS_HEADER)
    if size < fixed:
        yield (comment + "\n" + _NUMERICS_HEADER).encode()[:size]
        return
    rows = (size - fixed) // _ROW
    yield (comment + " " * (size - fixed - rows * _ROW) + "\n" + _NUMERICS_HEADER).encode()
    body = _numerics_filler()
    start = zlib.crc32(comment.encode()) % _NUMERICS_ROWS * _ROW
    left = rows * _ROW
    while left > 0:
        chunk = body[start: start + left]
        yield chunk
        left -= len(chunk)
        start = 0


def _numerics(session: str, at: datetime | None, seed: int) -> bytes:
    """A session's numerics (<session>n.csv): a minute of vital signs every 5 s from the session's start
    (a whole minute: capture_time); in seconds from the start where `at` is None ("flat", as before)."""
    b = hashlib.blake2b(f"{seed}:{session}".encode(), digest_size=36).digest()
    if at is None:
        return (_NUMERICS_HEADER + "".join(
            f"{5 * r},{60 + b[3 * r] % 51},{90 + b[3 * r + 1] % 11},{8 + b[3 * r + 2] % 23}\n"
            for r in range(12))).encode()
    minute = f"{at:%Y-%m-%d %H:%M}"
    return ("timestamp,HR,SpO2,RR\n" + "".join(
        f"{minute}:{5 * r:02d},{60 + b[3 * r] % 51},{90 + b[3 * r + 1] % 11},{8 + b[3 * r + 2] % 23}\n"
        for r in range(12))).encode()


# DICOM Part 10, explicit VR little endian, written element by element (constant runs prepared once).
_LONG_VRS = frozenset((b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"))
_SOP_CLASS = {"CT": b"1.2.840.10008.5.1.4.1.1.2", "MR": b"1.2.840.10008.5.1.4.1.1.4"}
_EXPLICIT_LE = b"1.2.840.10008.1.2.1"
_VR = {
    0x00020000: b"UL", 0x00020001: b"OB", 0x00020002: b"UI", 0x00020003: b"UI", 0x00020010: b"UI",
    0x00020012: b"UI", 0x00020013: b"SH", 0x00080008: b"CS", 0x00080016: b"UI", 0x00080018: b"UI",
    0x00080020: b"DA", 0x00080022: b"DA", 0x00080030: b"TM", 0x00080032: b"TM", 0x00080050: b"SH",
    0x00080060: b"CS", 0x00080070: b"LO", 0x00100020: b"LO", 0x0020000D: b"UI", 0x0020000E: b"UI",
    0x00200010: b"SH", 0x00200011: b"IS", 0x00200013: b"IS", 0x00204000: b"LT", 0x00280002: b"US",
    0x00280004: b"CS", 0x00280010: b"US", 0x00280011: b"US", 0x00280100: b"US", 0x00280101: b"US",
    0x00280102: b"US", 0x00280103: b"US",
    0x00081030: b"LO", 0x00081090: b"LO", 0x00180015: b"CS", 0x00180087: b"DS", 0x0008103E: b"LO", 0x00180050: b"DS",
    0x00200032: b"DS", 0x00200037: b"DS", 0x00280030: b"DS", 0x00281052: b"DS", 0x00281053: b"DS", 0x00180060: b"DS",
    0x00181151: b"IS", 0x00181152: b"IS", 0x00181210: b"SH", 0x00180020: b"CS", 0x00180021: b"CS", 0x00180022: b"CS",
    0x00180080: b"DS", 0x00180081: b"DS", 0x00181314: b"DS",
}
# The study- and series-level attributes the Imaging SOP selects for CHoRUS that the template does not otherwise fill
# (validate's dicom.study_metadata, dicom.series_metadata): fixed values per modality; MR adds its field strength
# (tesla); both their slice thickness (mm)
# And the attributes its "Recommended to Keep" list asks of the modality (validate's dicom.recommended; those of the
# Image Pixel module and PixelSpacing, RescaleIntercept/Slope: _pixel_module): the image plane, a CT's exposure and
# kernel, an MR's sequence
_PLANE = [(0x00200032, b"0\\0\\0"), (0x00200037, b"1\\0\\0\\0\\1\\0")]
_STUDY = {
    "CT": [(0x00081030, b"CT CHEST"), (0x00081090, b"testdata-ct"), (0x00180015, b"CHEST"), (0x0008103E, b"CT AXIAL"),
           (0x00180050, b"1.25"), (0x00180060, b"120"), (0x00181151, b"200"), (0x00181152, b"5"),
           (0x00181210, b"STANDARD"), *_PLANE],
    "MR": [(0x00081030, b"MR BRAIN"), (0x00081090, b"testdata-mr"), (0x00180015, b"HEAD"), (0x00180087, b"3"),
           (0x0008103E, b"MR T1"), (0x00180050, b"5"), (0x00180020, b"SE"), (0x00180021, b"NONE"),
           (0x00180022, b"PFP"), (0x00180080, b"500"), (0x00180081, b"15"), (0x00181314, b"90"), *_PLANE],
}
_PREFIX = {tag: struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr) for tag, vr in _VR.items()}


def _el(tag: int, value: bytes) -> bytes:
    """One element: UIDs are padded with NUL, text with a space, to an even length."""
    vr = _VR[tag]
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in _LONG_VRS:
        return _PREFIX[tag] + b"\0\0" + len(value).to_bytes(4, "little") + value
    return _PREFIX[tag] + len(value).to_bytes(2, "little") + value


def _uid(text: str) -> bytes:
    """A UID under 2.25 (a 128-bit number) from a digest of the text, as a UI value is stored: always
    43 characters (a 38-digit number) and a NUL, so that a template's field holds it exactly."""
    digest = int.from_bytes(hashlib.md5(text.encode()).digest(), "big")
    return b"2.25." + str(10**37 + digest % (9 * 10**37)).encode() + b"\0"


_shared_uid = functools.lru_cache(maxsize=4096)(_uid)  # study UIDs: the same for many files
_IMPLEMENTATION_UID = _uid("chorus-batch testdata")
_UID, _NUMBER, _SH, _COMMENT = 44, 12, 16, 64  # widths of the template's fields (IS, SH, LT padded with spaces)


@functools.lru_cache(maxsize=64)
def _dicom_template(modality: str, pid_len: int, size: int) -> tuple[bytes, int]:
    """A DICOM Part 10 header up to its pixel data as a %-format: a field of fixed width (padded with
    spaces) for each value that differs per file, in the order _dicom fills them; and the bytes of pixel
    data that follow. No patient name, birth date or other identifying tag: PatientID is the person id."""
    width = {"uid": _UID, "date": 8, "time": 6, "number": _NUMBER, "sh": _SH, "pid": pid_len + pid_len % 2,
             "comment": _COMMENT}
    sop = _SOP_CLASS[modality]
    meta = [(0x00020001, b"\0\1"), (0x00020002, sop), (0x00020003, "uid"), (0x00020010, _EXPLICIT_LE),
            (0x00020012, _IMPLEMENTATION_UID), (0x00020013, b"CHORUS_TESTDATA")]
    data = [
        (0x00080008, b"ORIGINAL\\PRIMARY\\AXIAL"), (0x00080016, sop), (0x00080018, "uid"),
        (0x00080020, "date"), (0x00080022, "date"), (0x00080030, "time"), (0x00080032, "time"),
        (0x00080050, "sh"), (0x00080060, modality.encode()), (0x00080070, b"chorus-testdata"), (0x00100020, "pid"),
        (0x0020000D, "uid"), (0x0020000E, "uid"), (0x00200010, "sh"), (0x00200011, "number"),
        (0x00200013, "number"), (0x00204000, "comment"), *_STUDY[modality],
    ]
    data.sort(key=lambda element: element[0])  # a dataset's elements in ascending tag order (PS3.5 7.1)
    marker = b"\xff" * max(width.values())  # stands for a field while lengths are computed

    def element(tag: int, value: bytes | str) -> bytes:
        return _el(tag, value) if isinstance(value, bytes) else _el(tag, marker[:width[value]])

    meta_len = sum(len(element(tag, value)) for tag, value in meta)
    fmt, length = [bytes(128) + b"DICM" + _el(0x00020000, meta_len.to_bytes(4, "little"))], 0
    for tag, value in meta + data:
        if isinstance(value, bytes):
            fmt.append(_el(tag, value).replace(b"%", b"%%"))
        else:
            fmt.append(element(tag, value)[:-width[value]].replace(b"%", b"%%") + b"%%-%db" % width[value])
        length += len(element(tag, value))
    length += 132 + len(_el(0x00020000, b"\0" * 4))
    rows, columns = _image_shape(size - length - len(_pixel_module(1, 8, modality)))
    fmt.append(_pixel_module(rows, columns, modality).replace(b"%", b"%%"))
    return b"".join(fmt), 2 * rows * columns


def _pixel_module(rows: int, columns: int, modality: str) -> bytes:
    return b"".join((
        _el(0x00280002, b"\1\0"), _el(0x00280004, b"MONOCHROME2"), _el(0x00280010, struct.pack("<H", rows)),
        _el(0x00280011, struct.pack("<H", columns)), _el(0x00280030, b"0.5\\0.5"), _el(0x00280100, b"\x10\0"),
        _el(0x00280101, b"\x10\0"), _el(0x00280102, b"\x0f\0"), _el(0x00280103, b"\0\0"),
        *((_el(0x00281052, b"-1024"), _el(0x00281053, b"1")) if modality == "CT" else ()),  # CT numbers in HU
        struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", 2 * rows * columns),  # the pixel data's header
    ))


def _image_shape(room: int) -> tuple[int, int]:
    """(rows, columns) of a 16-bit image of about `room` bytes: about square, 8 x 8 at least."""
    pixels = max(64, room // 2)
    columns = 8
    while columns * columns * 2 <= pixels or pixels // columns > 0xFFFF:
        columns *= 2
    return pixels // columns, columns


@functools.lru_cache(maxsize=4096)
def _da_tm(at: datetime) -> tuple[bytes, bytes]:
    return f"{at:%Y%m%d}".encode(), f"{at:%H%M%S}".encode()


def _dicom(pid: str, modality: str, study_at: datetime, at: datetime, accession: str, study_id: str, series: int,
           series_uid: str, instance: int, tag: str, size: int, seed: int) -> Iterator[bytes]:
    """A DICOM image whose header agrees with its path (PatientID, Modality, AccessionNumber, StudyID,
    SeriesInstanceUID, SeriesNumber, InstanceNumber, StudyDate/Time, AcquisitionDate/Time): the template's
    fields filled in; 16-bit pixels pad it to about `size` bytes."""
    template, n = _dicom_template(modality, len(pid), size)
    instance_uid = _uid(f"{seed}|{tag}")
    (study_day, study_tm), (day, tm) = _da_tm(study_at), _da_tm(at)
    yield template % (
        instance_uid, instance_uid, study_day, day, study_tm, tm, accession.encode(), pid.encode(),
        _shared_uid(f"{seed}|{pid}|{accession}"), series_uid.encode() + b"\0", study_id.encode(), b"%d" % series,
        b"%d" % instance, f"chorus-testdata {tag}".encode()[:_COMMENT])
    yield from _filler(n, zlib.crc32(instance_uid))


def content_bytes(content: tuple | bytes, size: int, seed: int) -> Iterable[bytes]:
    """The bytes of a content id (see _person), in chunks."""
    if isinstance(content, bytes):
        return (content,)
    kind = content[0]
    if kind == "raw":
        return _raw(content[1], size, seed)
    if kind == "dat":
        return _raw(content[2], _dat_bytes(size, content[1]), seed)
    if kind == "hea":
        return (_wfdb_header(*content[1:], size, seed),)
    if kind == "mhea":
        return (_master_header(*content[1:], size),)
    if kind == "lhea":
        return (_layout_header(*content[1:]),)
    if kind == "csv":
        return _flat_csv(content[1], size, seed)
    if kind == "num":
        return (_numerics(content[1], content[2], seed),)
    if kind == "dcm":
        return _dicom(*content[1:], size, seed)
    if kind == "rec":
        return (("\n".join(content[1]) + "\n").encode(),)
    raise ValueError(f"unknown content kind {kind!r}")


# ----------------------------------------------------------------------------- writing


def write_files(root: str, files: dict[str, tuple | bytes], size: int, seed: int) -> int:
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
    join = size <= _JOIN_BELOW  # small files: one write each
    for rel, content in files.items():
        folder = rel.rpartition("/")[0]
        if folder not in made:
            private_folder(os.path.join(root, *folder.split("/")))
            made.add(folder)
        fd = os.open(root + os.sep + (rel if os.sep == "/" else rel.replace("/", os.sep)), flags, 0o600)
        try:
            chunks = content_bytes(content, size, seed)
            if join:
                os.write(fd, b"".join(chunks))
            else:
                for chunk in chunks:
                    os.write(fd, chunk)
        finally:
            os.close(fd)
    return len(files)


def _write_persons(root: str, spec: Spec, persons: list[int], second: bool) -> tuple[int, list[_Summary]]:
    files, summaries = _plan(spec, persons, second)
    return write_files(root, files, spec.size, spec.seed), summaries


def _person_chunks(spec: Spec, n: int) -> list[list[int]]:
    return [list(range(spec.persons))[k::n] for k in range(n)]


def _parallel(spec: Spec, workers: int) -> bool:
    return workers > 1 and spec.persons * spec.files_per_person >= 20_000


def write_snapshot(root: str | Path, spec: Spec, *, second: bool = False, workers: int = 1) -> int:
    """Write one snapshot; large ones are written by worker processes. Returns the number of files."""
    root = str(private_folder(root))
    pause("testdata-second" if second else "testdata-first")  # (tests: a signal while a snapshot is written)
    if not _parallel(spec, workers):
        n, summaries = _write_persons(root, spec, list(range(spec.persons)), second)
    else:
        from .processes import pool

        with pool(workers) as executor:
            chunks = _person_chunks(spec, workers * 4)
            done = list(executor.map(_write_persons, [root] * len(chunks), [spec] * len(chunks), chunks,
                                     [second] * len(chunks)))
        n, summaries = sum(d[0] for d in done), [s for d in done for s in d[1]]
    return n + write_files(root, _site_files(spec, second, summaries), spec.size, spec.seed)


def make_testdata(out: str | Path, spec: Spec, *, workers: int = 1) -> tuple[int, int]:
    """OUT/first and OUT/second, owner-only. OUT is new or empty: files mixed into an older tree would make
    neither snapshot what the spec says."""
    out = Path(out)
    try:
        if os.path.isdir(out) and any(os.scandir(out)):
            raise UsageError(f"{out} is not empty; testdata writes a new site, not into an existing one", where=str(out.absolute()),
                             fix="give a new or empty folder (or remove this one first)")
    except OSError as exc:
        raise cannot_write(out, exc) from None
    private_folder(out)
    a = None
    try:
        a = write_snapshot(out / "first", spec, second=False, workers=workers)
        b = write_snapshot(out / "second", spec, second=True, workers=workers)
    except OSError as exc:  # a full disk, or a file system gone read-only meanwhile
        failed = exc if isinstance(exc, WriteError) else cannot_write(out, exc)
        failed.outcome = _left_behind(out, a)  # type: ignore[attr-defined]
        raise failed from None
    except (KeyboardInterrupt, Stopped) as exc:  # Ctrl-C, SIGTERM: what is on disk, said in the one line printed
        exc.outcome = _left_behind(out, a)  # type: ignore[union-attr]
        raise
    return a, b


def _left_behind(out: Path, first: int | None) -> str:
    """What a testdata stopped midway leaves: `first` files of OUT/first when it was complete."""
    again = f"remove {out} (testdata writes into a new or empty folder only) and run the same command again"
    second = f"{out / 'second'} is incomplete" if (out / "second").exists() else f"{out / 'second'} was not written"
    if first is None:
        return f"{out / 'first'} is incomplete and {second}; {again}"
    return f"{out / 'first'} is complete ({first:,} files), {second}; {again}"


def _sync_persons(root: str, spec: Spec, persons: list[int]) -> tuple[int, list, list]:
    before, before_summaries = _plan(spec, persons, False)
    after, after_summaries = _plan(spec, persons, True)
    return _apply(root, before, after, spec), before_summaries, after_summaries


def _apply(root: str, before: dict, after: dict, spec: Spec) -> int:
    changed = 0
    for rel in before.keys() - after.keys():
        path = os.path.join(root, *rel.split("/"))
        os.unlink(path)
        changed += 1
        folder = os.path.dirname(path)
        while len(folder) > len(root):  # as a tree written from `after` would be: no empty folders
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
    rewrite = {rel: c for rel, c in after.items() if before.get(rel) != c}
    return changed + write_files(root, rewrite, spec.size, spec.seed)


def sync_tree(root: str | Path, spec: Spec, *, workers: int = 1) -> int:
    """Turn a tree written as `first` into `second` in place; returns files touched."""
    root = str(root)
    if not _parallel(spec, workers):
        n, before, after = _sync_persons(root, spec, list(range(spec.persons)))
    else:
        from .processes import pool

        with pool(workers) as executor:
            chunks = _person_chunks(spec, workers * 4)
            done = list(executor.map(_sync_persons, [root] * len(chunks), [spec] * len(chunks), chunks))
        n = sum(d[0] for d in done)
        before, after = [s for d in done for s in d[1]], [s for d in done for s in d[2]]
    return n + _apply(root, _site_files(spec, False, before), _site_files(spec, True, after), spec)


# ----------------------------------------------------------------------------- the demo site

# data/demo_site: three persons in today's layout (v2.1), with a multi-segment record and an EEG session, an
# image and a session captured outside every visit; small enough to ship in the wheel.
DEMO_SPEC = Spec(persons=3, files_per_person=7, size=256, seed=0, change_fraction=0.0, layout="v2.1")


def write_demo_site(path: str | Path) -> int:
    """(Re)write the demo site at `path` (its first snapshot; an existing folder is replaced)."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    return write_snapshot(path, DEMO_SPEC)


if __name__ == "__main__":  # python -m chorus_batch.testdata data/demo_site
    target = sys.argv[1] if len(sys.argv) > 1 else "data/demo_site"
    print(f"wrote {write_demo_site(target)} files to {target}")
