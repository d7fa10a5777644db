"""Realistic CHoRUS test sites on disk: WFDB records, DICOM series, OMOP tables, Metadata/.

`build_clean_site(root, layout=...)` writes a site that follows the procedures (today's, "v2.1",
or an earlier edition's layout: "v2.0", "v1.0", "flat"); the other functions write one piece
each, so a test can add or break exactly one thing. `scan_current(root)` lists and classifies a
tree with the project's own code, as the manifest's current rows.

Today's layout (v2.1), per person P (index i, day D = 2024-01-01 + i days):

    P/Waveforms/Telemetry/<S>/      single-segment WFDB record <S> (2 signals, format 16) + <S>n.csv
    P/Waveforms/Telemetry/<M>/      multi-segment record <M>: <M>_0001 (format 212), <M>_0002 (format 16)
    P/Waveforms/EEG/<E>/            single-segment EEG record <E> (2 signals)
    P/Images/CT/<A>/<series UID>/   accession A, series 1 (instances 0 and 1: 000.dcm, 001.dcm) and series 2
                                    (instance 0), headers agreeing with the folders, PatientID = P
    OMOP/<table>.csv                the 13 CDM 5.4 clinical tables
    Metadata/READINESS.md, SUBMISSION.md, Telemetry_mapping.csv, EEG_mapping.csv;
    Metadata/notes.json (a site-wide note; a person folder holds only Images/ and Waveforms/)
Session ids are integers: S = 900000 + 10 i + 1, M = ... + 2, E = ... + 3; accession A = 70000 + i.

Earlier editions (accepted; validation names today's form in `layout.superseded` findings):
    v2.0  waveforms/telemetry|eeg/<session>/ in lower case, SUBMISSION.md at the site root, and
          OMOP/waveform_visit_links.csv (visit_occurrence_id, visit_detail_id, session_id)
    v1.0  P/waveforms/<session>/<session>.hea (no category folder), a RECORDS file at the site root,
          images named P/Images/<study>/<series>/P_<study>_<series>_<MOD>_<instance>.dcm
    flat  the first upload SOP: P/Waveforms/P_D_080000/, P_D_120000/ (multi-segment) and
          P_D_180000_60.hea (flat), RECORDS per person, images P/Images/study_D/series_N/
          P_D_<time>_CT_<series>_<instance>.dcm, OMOP/waveform_visit_links.csv (visit_occurrence_id, session)
"""

from __future__ import annotations

import hashlib
import zlib
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from chorus_batch.classify import build_patterns, classify
from chorus_batch.frames import LISTING_SCHEMA
from chorus_batch.sources import LocalSource

CURRENT_COLUMNS = ("srcfile", "size", "md5", "modality", "person_id", "session_id", "start_date", "start_time",
                   "duration_s", "segment", "parse_error", "category", "layout")
LAYOUTS = ("v2.1", "v2.0", "v1.0", "flat")

# Header of each OMOP table written (key column first, then a few CDM 5.4 columns).
OMOP_COLUMNS: dict[str, list[str]] = {
    "person": ["person_id", "gender_concept_id", "year_of_birth", "race_concept_id", "ethnicity_concept_id"],
    "observation_period": ["observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"],
    "visit_occurrence": ["visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date",
                         "visit_start_datetime", "visit_end_date", "visit_end_datetime", "visit_type_concept_id"],
    "visit_detail": ["visit_detail_id", "person_id", "visit_detail_concept_id", "visit_detail_start_date",
                     "visit_detail_end_date", "visit_detail_type_concept_id", "visit_occurrence_id"],
    "condition_occurrence": ["condition_occurrence_id", "person_id", "condition_concept_id",
                             "condition_start_date", "condition_type_concept_id", "visit_occurrence_id"],
    "drug_exposure": ["drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                      "drug_exposure_end_date", "drug_type_concept_id", "visit_occurrence_id"],
    "procedure_occurrence": ["procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                             "procedure_type_concept_id", "visit_occurrence_id"],
    "device_exposure": ["device_exposure_id", "person_id", "device_concept_id", "device_exposure_start_date",
                        "device_type_concept_id", "visit_occurrence_id"],
    "measurement": ["measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "measurement_type_concept_id", "value_as_number", "visit_occurrence_id"],
    "observation": ["observation_id", "person_id", "observation_concept_id", "observation_date",
                    "observation_type_concept_id", "visit_occurrence_id"],
    "death": ["person_id", "death_date", "death_type_concept_id"],
    "note": ["note_id", "person_id", "note_date", "note_type_concept_id", "note_class_concept_id", "note_text",
             "encoding_concept_id", "language_concept_id", "visit_occurrence_id", "visit_detail_id"],
    "note_nlp": ["note_nlp_id", "note_id", "lexical_variant", "nlp_date"],
}


# ----------------------------------------------------------------------------- small pieces


def write(root: Path, rel: str, data: bytes | str = b"x") -> Path:
    path = root.joinpath(*rel.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def edf_bytes(start: datetime | None, *, seconds: int = 10,
              signals: list[tuple[str, str, int]] = (), record_s: str = "1") -> bytes:  # type: ignore[assignment]
    """An EDF+ file: its 256-byte header (EDF spec) with the recording's start, or, with None, a de-identified one
    ("Startdate X": no date known; the fixed field holds the spec's placeholder 01.01.85); then, for `signals`
    ((label, physical dimension, samples per data record) each), their 256-byte signal headers and `seconds` data
    records of `record_s` seconds (16-bit zeros). No signal: the header alone."""
    when = start or datetime(1985, 1, 1)
    recording = f"Startdate {when.strftime('%d-%b-%Y').upper()} X X X" if start else "Startdate X X X X"
    ns = len(signals)
    fields = [("0", 8), ("X X X X", 80), (recording, 80), (when.strftime("%d.%m.%y"), 8), (when.strftime("%H.%M.%S"), 8),
              (str(256 * (ns + 1)), 8), ("EDF+C", 44), (str(seconds), 8), (record_s, 8), (str(ns), 4)]
    head = "".join(text.ljust(width) for text, width in fields)
    # each field for all signals in turn: label, transducer, physical dimension, physical min/max, digital min/max,
    # prefiltering, samples per data record, reserved
    columns = [([label for label, _, _ in signals], 16), (["" for _ in signals], 80), ([dim for _, dim, _ in signals], 8),
               (["-3200" for _ in signals], 8), (["3200" for _ in signals], 8), (["-32768" for _ in signals], 8),
               (["32767" for _ in signals], 8), (["" for _ in signals], 80),
               ([str(n) for _, _, n in signals], 8), (["" for _ in signals], 32)]
    head += "".join(cell.ljust(width) for cells, width in columns for cell in cells)
    return head.encode("latin-1") + bytes(2 * seconds * sum(n for _, _, n in signals))


def person_ids(persons: int) -> list[str]:
    """Text ids with leading zeros, as de-identified CHoRUS ids are."""
    return [f"{101 + i:06d}" for i in range(persons)]


def person_day(index: int) -> str:
    return (date(2024, 1, 1) + timedelta(days=index)).strftime("%Y%m%d")


def write_wfdb(folder: Path, record: str, *, n_sig: int = 2, sig_len: int = 250, fmt: str = "16", fs: int = 125,
               seed: int = 0, start: datetime | None = None, units: str = "mV") -> None:
    """A single-segment WFDB record (<record>.hea + <record>.dat) written by wfdb.wrsamp, with its
    base date and time when `start` is given."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    signal = rng.integers(-1000, 1000, size=(sig_len, n_sig)).astype(np.int16)
    names = ["II", "V", "PLETH", "ABP"][:n_sig] + [f"S{i}" for i in range(4, n_sig)]
    extra = {"base_date": start.date(), "base_time": start.time()} if start else {}
    wfdb.wrsamp(record, fs=fs, units=[units] * n_sig, sig_name=names, d_signal=signal, fmt=[fmt] * n_sig,
                adc_gain=[200.0] * n_sig, baseline=[0] * n_sig, write_dir=str(folder), **extra)


def write_multisegment(folder: Path, record: str, segments: list[tuple[str, int, str]], *, n_sig: int = 2,
                       fs: int = 125, seed: int = 0, start: datetime | None = None) -> None:
    """A multi-segment record: each (name, sig_len, fmt) segment with wrsamp, the master header with
    wfdb.MultiRecord.wrheader (with its base date and time when `start` is given)."""
    import wfdb

    for k, (name, length, fmt) in enumerate(segments):
        write_wfdb(folder, name, n_sig=n_sig, sig_len=length, fmt=fmt, fs=fs, seed=seed * 100 + k)
    master = wfdb.MultiRecord(record_name=record, n_sig=n_sig, fs=fs, sig_len=sum(s[1] for s in segments),
                              seg_name=[s[0] for s in segments], seg_len=[s[1] for s in segments],
                              **({"base_date": start.date(), "base_time": start.time()} if start else {}))
    master.n_seg = len(segments)  # wrheader needs it; the constructor sets it only from `segments`
    master.wrheader(write_dir=str(folder))


def numerics_csv(session: str, rows: int = 5) -> str:
    """Vital-sign numerics, different for every session."""
    rng = np.random.default_rng(zlib.crc32(session.encode()))
    lines = ["time_s,HR,SpO2,RR"] + [f"{k},{rng.integers(60, 100)},{rng.integers(92, 100)},{rng.integers(10, 20)}"
                                     for k in range(rows)]
    return "\n".join(lines) + "\n"


def series_uid(person_id: str, study_date: str, series: int) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[person_id, study_date, str(series)])


def dicom_bytes(*, person_id: str, series: int, instance: int, modality: str = "CT", study_date: str,
                study_time: str, acquisition_time: str | None = None, size: int = 4, accession: str | None = None,
                **identifying: str) -> bytes:
    """A small DICOM Part 10 file (size x size, 16-bit) written by pydicom; `identifying` sets attributes by
    keyword (PatientName=..., PatientBirthDate=...), as a site that did not de-identify would have them."""
    """A small DICOM Part 10 file (size x size, 16-bit) written by pydicom."""
    from io import BytesIO

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    uid = generate_uid(entropy_srcs=[person_id, str(series), str(instance), study_date])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.PatientID = person_id
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[person_id, study_date])
    ds.SeriesInstanceUID = series_uid(person_id, study_date, series)
    if accession is not None:
        ds.AccessionNumber = accession
    # the study-level attributes the Imaging SOP selects (validate's dicom.study_metadata);
    # `identifying` may set or empty them (None)
    ds.StudyDescription, ds.Manufacturer, ds.ManufacturerModelName = f"{modality} STUDY", "sitegen", "sitegen-1"
    ds.BodyPartExamined = "HEAD" if modality == "MR" else "CHEST"
    if modality == "MR":
        ds.MagneticFieldStrength = 3
    # and the series-level ones (dicom.series_metadata): SeriesNumber below; SliceThickness of CT and MR images
    ds.SeriesDescription, ds.SliceThickness = f"{modality} SERIES {series}", "1.25"
    # and those it recommends keeping (dicom.recommended): the image plane; a CT's exposure, kernel and rescaling; an
    # MR's sequence
    ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, 0], [1, 0, 0, 0, 1, 0], [0.5, 0.5]
    if modality == "MR":
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", "PFP"
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = 500, 15, 90
    else:
        ds.KVP, ds.XRayTubeCurrent, ds.Exposure, ds.ConvolutionKernel = 120, 200, 5, "STANDARD"
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    for keyword, value in identifying.items():
        setattr(ds, keyword, value)
    ds.StudyDate, ds.StudyTime = study_date, study_time
    if acquisition_time is not None:
        ds.AcquisitionDate, ds.AcquisitionTime = study_date, acquisition_time
    ds.Modality = modality
    ds.SeriesNumber, ds.InstanceNumber = series, instance
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(size * size, dtype=np.uint16).tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dicom_name(person_id: str, day: str, time: str, modality: str, series: int | str, instance: int | str) -> str:
    return f"{person_id}_{day}_{time}_{modality}_{series}_{instance}.dcm"


def csv_text(columns: list[str], rows: list[list[object]], delimiter: str = ",") -> str:
    return "\n".join(delimiter.join(str(v) for v in row) for row in [columns, *rows]) + "\n"


def omop_rows(table: str, persons: list[str]) -> list[list[object]]:
    """One plausible row per person (visit ids: see visit_id)."""
    rows = []
    for i, p in enumerate(persons):
        visit = visit_id(i, 0)
        values = {
            "person_id": p, "gender_concept_id": 8507, "year_of_birth": 1960 + i, "race_concept_id": 0,
            "ethnicity_concept_id": 0, "visit_occurrence_id": visit, "visit_concept_id": 9201,
            "visit_type_concept_id": 32817, "period_type_concept_id": 32817, "death_type_concept_id": 32817,
            "note_type_concept_id": 44814637, "note_text": "de-identified", "value_as_number": 1.5,
            "lexical_variant": "sepsis", "note_id": 7000 + i,
        }
        row = []
        for col in OMOP_COLUMNS[table]:
            if col in values:
                row.append(values[col])
            elif col.endswith("_id"):
                row.append(9000 + i)
            elif "date" in col:
                row.append("2024-01-01")
            else:
                row.append(0)
        if table == "visit_occurrence":  # person i's day: visit 0 until noon, visit 1 from 13:00
            for k, (start, end) in enumerate(visit_hours(i)):
                rows.append([visit_id(i, k), p, 9201, f"{start:%Y-%m-%d}", f"{start:%Y-%m-%d %H:%M:%S}", f"{end:%Y-%m-%d}",
                             f"{end:%Y-%m-%d %H:%M:%S}", 32817])
            continue
        rows.append(row)
    return rows


def visit_hours(index: int) -> list[tuple[datetime, datetime]]:
    """Person `index`'s two visits: [00:00, 12:00] and [13:00, 23:59:59] of its day."""
    day = start_of(index, 0)
    return [(day, day.replace(hour=12)), (day.replace(hour=13), day.replace(hour=23, minute=59, second=59))]


def captured(person_index: int) -> str:
    """A registry row's capture time (datetime) inside the person's visit 0, visit_id(person_index, 0)."""
    return f"{start_of(person_index, 8):%Y-%m-%d %H:%M:%S}"


def visit_id(person_index: int, k: int) -> int:
    return 5000 + 10 * person_index + k


def write_omop(root: Path, persons: list[str], links: list[tuple[int, str]] | None,
               tables: tuple[str, ...] = tuple(OMOP_COLUMNS), v2: bool = False) -> None:
    """The OMOP tables; with `links`, the superseded waveform_visit_links.csv (v2.0's columns with `v2`)."""
    for table in tables:
        write(root, f"OMOP/{table}.csv", csv_text(OMOP_COLUMNS[table], omop_rows(table, persons)))
    if links is None:
        return
    if v2:
        write(root, "OMOP/waveform_visit_links.csv", csv_text(
            ["visit_occurrence_id", "visit_detail_id", "session_id"], [[v, "", s] for v, s in links]))
    else:
        write(root, "OMOP/waveform_visit_links.csv",
              csv_text(["visit_occurrence_id", "session"], [[v, s] for v, s in links]))


# ----------------------------------------------------------------------------- a whole site


def sessions_of(person: str, index: int) -> dict[str, str]:
    """The session ids of a clean site's person: today's integer ids (single, multi-segment, EEG) and the
    flat layout's stamped names (single, multi, flat, and the flat record name)."""
    day = person_day(index)
    base = 900000 + 10 * index
    return {
        "single": str(base + 1), "multi": str(base + 2), "eeg": str(base + 3),
        "flat_single": f"{person}_{day}_080000", "flat_multi": f"{person}_{day}_120000",
        "flat": f"{person}_{day}_180000", "flat_record": f"{person}_{day}_180000_60",
    }


def accession_of(index: int) -> str:
    return str(70000 + index)


def start_of(index: int, hour: int) -> datetime:
    return datetime.combine(date(2024, 1, 1) + timedelta(days=index), datetime.min.time()).replace(hour=hour)


def write_person(root: Path, person: str, index: int, layout: str = "v2.1") -> list[tuple[int, str]]:
    """One person's Waveforms/ and Images/ in `layout`; returns the (visit, session) links for them."""
    s = sessions_of(person, index)
    day = person_day(index)
    if layout == "flat":
        return _write_flat_person(root, person, index)
    waves = root / person / ("waveforms" if layout in ("v2.0", "v1.0") else "Waveforms")
    tele = waves / {"v2.1": "Telemetry", "v2.0": "telemetry", "v1.0": ""}[layout]
    eeg = waves / {"v2.1": "EEG", "v2.0": "eeg", "v1.0": ""}[layout]
    write_wfdb(tele / s["single"], s["single"], seed=2 * index, start=start_of(index, 8))
    write(tele / s["single"], f"{s['single']}n.csv", numerics_csv(s["single"]))
    write_multisegment(tele / s["multi"], s["multi"],
                       [(f"{s['multi']}_0001", 101, "212"), (f"{s['multi']}_0002", 50, "16")], seed=index + 1,
                       # a capture time (the registries' datetime, NOT NULL), between the person's two visits: a
                       # registry row with no visit (Multimodal-Linkage: "LEAVE THIS FIELD NULL")
                       start=start_of(index, 12).replace(minute=30))
    # EEG in microvolts, as EEG_mapping.csv gives them
    write_wfdb(eeg / s["eeg"], s["eeg"], n_sig=2, sig_len=256, fs=256, seed=3 * index + 7, start=start_of(index, 14),
               units="uV")
    accession = accession_of(index)
    for series, instances, acquisition in ((1, (0, 1), None), (2, (0,), "082000.250000")):
        for instance in instances:
            data = dicom_bytes(person_id=person, series=series, instance=instance, study_date=day, study_time="081500",
                               acquisition_time=acquisition, accession=accession)
            if layout == "v1.0":  # the first upload's naming: <person>_<study>_<series>_<MOD>_<instance>.dcm
                path = f"{person}/Images/ST{accession}/SE{series}/{person}_ST{accession}_SE{series}_CT_{instance}.dcm"
            else:
                path = f"{person}/Images/CT/{accession}/{series_uid(person, day, series)}/{instance:03d}.dcm"
            write(root, path, data)
    if index == 0:
        write(root, "Metadata/notes.json", f'{{"person": "{person}"}}\n')
    return [(visit_id(index, 0), s["single"]), (visit_id(index, 0), s["multi"]), (visit_id(index, 1), s["eeg"])]


def _write_flat_person(root: Path, person: str, index: int) -> list[tuple[int, str]]:
    s = sessions_of(person, index)
    day = person_day(index)
    wave = root / person / "Waveforms"
    write_wfdb(wave / s["flat_single"], s["flat_single"], seed=2 * index)
    write(wave / s["flat_single"], f"{s['flat_single']}n.csv", numerics_csv(s["flat_single"]))
    write_multisegment(wave / s["flat_multi"], s["flat_multi"],
                       [(f"{s['flat_multi']}_0001", 101, "212"), (f"{s['flat_multi']}_0002", 50, "16")], seed=index + 1)
    write_wfdb(wave, s["flat_record"], n_sig=1, sig_len=240, fs=4, seed=2 * index + 1)
    if index == 1:  # this person lists its multi-segment record beside it
        write(wave / s["flat_multi"], "RECORDS", f"{s['flat_multi']}\n")
        write(wave, "RECORDS", f"{s['flat_single']}\n{s['flat_record']}\n")
    else:
        write(wave, "RECORDS", f"{s['flat_single']}\n{s['flat_multi']}\n{s['flat_record']}\n")
    study = root / person / "Images" / f"study_{day}"
    # de-identified as the Imaging SOP asks in every layout: AccessionNumber is the study's image_occurrence_id
    accession = accession_of(index)
    for instance in (1, 2):
        write(study / "series_1", dicom_name(person, day, "081500", "CT", 1, instance),
              dicom_bytes(person_id=person, series=1, instance=instance, study_date=day, study_time="081500",
                          accession=accession))
    write(study / "series_2", dicom_name(person, day, "082000", "CT", 2, 1),
          dicom_bytes(person_id=person, series=2, instance=1, study_date=day, study_time="081500",
                      acquisition_time="082000.250000", accession=accession))
    if index == 0:
        write(root, "Metadata/notes.json", f'{{"person": "{person}"}}\n')
    return [(visit_id(index, 0), s["flat_single"]), (visit_id(index, 0), s["flat_multi"]), (visit_id(index, 1), s["flat"])]


READINESS = """# Readiness checklist

- [x] Person folders are named by the OMOP person_id
- [x] Waveforms are under Waveforms/Telemetry/ and Waveforms/EEG/, one folder per session
- [x] Dates are shifted consistently across EHR, waveform and imaging data
- [x] Images are de-identified
"""

SUBMISSION = """# Submission

## Hospital
Test hospital, for chorus_batch's tests.

## Dataset
3 persons, years 2024.

## Waveform types
Telemetry (ECG, pleth) and EEG, in WFDB.

## Known issues
None.

## Variables
Signals in WFDB format 16 and 212; units in the headers; numerics in <session_id>n.csv.

## Sample intervals
Uniform within each signal; timing from the WFDB base time.

## Gaps
No gaps were filled.

## Linking sessions to visits
Sessions are linked to the visit whose start and end enclose the session's start.
"""


def mapping_csv(labels: list[tuple[str, str, float, str]]) -> str:
    return csv_text(["signal_id", "standardized_label", "sampling_rate", "units", "timestamp_id"],
                    [[sid, label, rate, units, "time"] for sid, label, rate, units in labels])


TELEMETRY_MAPPING = mapping_csv([("II", "MDC_ECG_ELEC_POTL_II", 125.0, "mV"), ("V", "MDC_ECG_ELEC_POTL_V", 125.0, "mV")])
EEG_MAPPING = mapping_csv([("II", "MDC_EEG_ELEC_POTL_FP1", 256.0, "uV"), ("V", "MDC_EEG_ELEC_POTL_FP2", 256.0, "uV")])


def write_metadata(root: Path, layout: str = "v2.1") -> None:
    write(root, "Metadata/READINESS.md", READINESS)
    write(root, "SUBMISSION.md" if layout == "v2.0" else "Metadata/SUBMISSION.md", SUBMISSION)
    write(root, "Metadata/Telemetry_mapping.csv", TELEMETRY_MAPPING)
    if layout != "flat":
        write(root, "Metadata/EEG_mapping.csv", EEG_MAPPING)


def build_clean_site(root: Path, persons: int = 3, layout: str = "v2.1") -> None:
    """A site that follows the procedures in `layout`: the validator reports no errors or warnings."""
    root.mkdir(parents=True, exist_ok=True)
    ids = person_ids(persons)
    links: list[tuple[int, str]] = []
    for index, person in enumerate(ids):
        links += write_person(root, person, index, layout)
    write_omop(root, ids, links if layout in ("v2.0", "flat") else None, v2=layout == "v2.0")
    write_metadata(root, layout)
    if layout == "v1.0":
        records = [f"{p}/waveforms/{sessions_of(p, i)[k]}/{sessions_of(p, i)[k]}"
                   for i, p in enumerate(ids) for k in ("single", "multi", "eeg")]
        write(root, "RECORDS", "".join(r + "\n" for r in records))
    write_registries(root, ids)


# The clean site's proc_ids (and procedure rows): outside `chorus-batch registry`'s default ranges, which it refuses
# where procedure_occurrence.csv already uses them
WAVEFORM_PROC, IMAGE_PROC = 3_000_000_000, 1_000_000_000


def write_registries(root: Path, ids: list[str]) -> None:
    """The linkage registries at the root, one row per waveform or image file (Multimodal-Linkage): a proc_id per
    session or accession; the image registry leads with image_registry_id and leaves trg_file blank (the Imaging
    SOP: "populated centrally")."""
    current = scan_current(root).filter(pl.col("person_id").is_not_null() & ~pl.col("srcfile").str.ends_with("/RECORDS"))
    for modality, name, first in (("Waveforms", "waveform_registry.csv", WAVEFORM_PROC),
                                  ("Images", "image_registry.csv", IMAGE_PROC)):
        mine = current.filter(pl.col("modality") == modality)
        groups = {g: first + k for k, g in enumerate(dict.fromkeys(mine.select("person_id", "session_id").rows()))}
        rows = [[k + 1, groups[(person, group)], person, group or "", visit_id(ids.index(person), 0),
                 captured(ids.index(person)), f"/src/{path}", path if modality == "Waveforms" else ""]
                for k, (path, person, group) in enumerate(mine.select("srcfile", "person_id", "session_id").rows())]
        columns = ["file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime", "src_file", "trg_file"]
        if modality == "Images":
            columns, rows = ["image_registry_id", *columns], [[k + 1, *row] for k, row in enumerate(rows)]
        write(root, name, csv_text(columns, rows))
    sync_procedures(root)


def sync_procedures(root: Path) -> None:
    """The PROCEDURE_OCCURRENCE rows the site makes from its registries (Multimodal-Linkage: one per proc_id, concept
    4180938 for images, 4141651 for waveforms), added to OMOP/procedure_occurrence.csv for the proc_ids it lacks; its
    rows of those concepts whose id no registry gives (made of registries since rewritten) are removed, as a site
    making the rows anew does (validate warns of them: registry.linkage_without_files)."""
    path = root / "OMOP/procedure_occurrence.csv"
    table = pl.read_csv(path, infer_schema=False)
    rows = [pl.read_csv(root / name, infer_schema=False).select(
        procedure_occurrence_id="proc_id", person_id="person_id", procedure_concept_id=pl.lit(concept),
        procedure_date=pl.col("datetime").str.slice(0, 10), procedure_type_concept_id=pl.lit("32880"),
        visit_occurrence_id="visit_id")
        for name, concept in (("image_registry.csv", "4180938"), ("waveform_registry.csv", "4141651"))
        if (root / name).exists()]
    if not rows:
        return
    new = pl.concat(rows).unique("procedure_occurrence_id", keep="first", maintain_order=True).join(
        table.select("procedure_occurrence_id"), on="procedure_occurrence_id", how="anti")
    ids = pl.concat(rows)["procedure_occurrence_id"].implode()
    table = table.filter(~pl.col("procedure_concept_id").str.strip_chars().is_in(["4180938", "4141651"])
                         | pl.col("procedure_occurrence_id").is_in(ids))
    pl.concat([table, new.select(table.columns)]).write_csv(path)


def scan_current(root: Path) -> pl.DataFrame:
    """The tree's files as the manifest's current rows (listed, classified and hashed by chorus_batch's code,
    MD5 by hashlib)."""
    errors: list[tuple[str, str, str]] = []
    batches = list(LocalSource(root).list_files(errors))
    listing = pl.from_arrow(pa.Table.from_batches(batches, schema=LISTING_SCHEMA))
    assert isinstance(listing, pl.DataFrame)
    classified = classify(listing, build_patterns(None))
    md5 = [hashlib.md5(root.joinpath(*p.split("/")).read_bytes()).hexdigest() for p in classified["srcfile"]]
    return classified.with_columns(md5=pl.Series(md5, dtype=pl.String)).select(CURRENT_COLUMNS).sort("srcfile")
