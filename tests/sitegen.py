"""Realistic CHoRUS test sites on disk: WFDB records, DICOM series, OMOP tables.

`build_clean_site(root)` writes a site that follows the procedures exactly (the
validator finds no errors or warnings in it); the other functions write one piece
each, so a test can add or break exactly one thing. `scan_current(root)` lists and
classifies a tree with the project's own code, as the manifest's current rows.

Layout of a clean site, per person P with day D (person i gets 2024-01-01 + i days):

    P/Waveforms/P_D_080000/         single-segment WFDB record (2 signals, format 16) + P_D_080000n.csv
    P/Waveforms/P_D_120000/         multi-segment record: P_D_120000_0001 (format 212), _0002 (format 16)
    P/Waveforms/P_D_180000_60.hea   flat WFDB record (1 signal) with its .dat
    P/Waveforms/RECORDS             the three record names (the second person lists its multi-segment
                                    record in P_D_120000/RECORDS instead)
    P/Images/<study>/series_1/      CT series 1, instances 1-2 (name time = StudyTime)
    P/Images/<study>/series_2/      CT series 2, instance 1 (name time = AcquisitionTime)
    OMOP/<table>.csv                all 13 CDM 5.4 tables + waveform_visit_links.csv
    Metadata/site.json, <first person>/Metadata/notes.json
"""

from __future__ import annotations

import hashlib
import zlib
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from chorus_batch.classify import build_patterns, classify
from chorus_batch.frames import LISTING_SCHEMA
from chorus_batch.sources import LocalSource

CURRENT_COLUMNS = ("srcfile", "size", "md5", "modality", "person_id", "session_id", "start_date", "start_time",
                   "duration_s", "segment", "parse_error")

# Header of each OMOP table written (key column first, then a few CDM 5.4 columns).
OMOP_COLUMNS: dict[str, list[str]] = {
    "person": ["person_id", "gender_concept_id", "year_of_birth", "race_concept_id", "ethnicity_concept_id"],
    "observation_period": ["observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"],
    "visit_occurrence": ["visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date",
                         "visit_end_date", "visit_type_concept_id"],
    "visit_detail": ["visit_detail_id", "person_id", "visit_detail_concept_id", "visit_detail_start_date",
                     "visit_occurrence_id"],
    "condition_occurrence": ["condition_occurrence_id", "person_id", "condition_concept_id",
                             "condition_start_date", "visit_occurrence_id"],
    "drug_exposure": ["drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                      "visit_occurrence_id"],
    "procedure_occurrence": ["procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                             "visit_occurrence_id"],
    "device_exposure": ["device_exposure_id", "person_id", "device_concept_id", "device_exposure_start_date",
                        "visit_occurrence_id"],
    "measurement": ["measurement_id", "person_id", "measurement_concept_id", "measurement_date", "value_as_number",
                    "visit_occurrence_id"],
    "observation": ["observation_id", "person_id", "observation_concept_id", "observation_date",
                    "visit_occurrence_id"],
    "death": ["person_id", "death_date", "death_type_concept_id"],
    "note": ["note_id", "person_id", "note_date", "note_type_concept_id", "note_text"],
    "note_nlp": ["note_nlp_id", "note_id", "lexical_variant", "nlp_date"],
}


# ----------------------------------------------------------------------------- small pieces


def write(root: Path, rel: str, data: bytes | str = b"x") -> Path:
    path = root.joinpath(*rel.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def person_ids(persons: int) -> list[str]:
    """Text ids with leading zeros, as de-identified CHoRUS ids are."""
    return [f"{101 + i:06d}" for i in range(persons)]


def person_day(index: int) -> str:
    return (date(2024, 1, 1) + timedelta(days=index)).strftime("%Y%m%d")


def write_wfdb(folder: Path, record: str, *, n_sig: int = 2, sig_len: int = 250, fmt: str = "16", fs: int = 125,
               seed: int = 0) -> None:
    """A single-segment WFDB record (<record>.hea + <record>.dat) written by wfdb.wrsamp."""
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    signal = rng.integers(-1000, 1000, size=(sig_len, n_sig)).astype(np.int16)
    names = ["II", "V", "PLETH", "ABP"][:n_sig] + [f"S{i}" for i in range(4, n_sig)]
    wfdb.wrsamp(record, fs=fs, units=["mV"] * n_sig, sig_name=names, d_signal=signal, fmt=[fmt] * n_sig,
                adc_gain=[200.0] * n_sig, baseline=[0] * n_sig, write_dir=str(folder))


def write_multisegment(folder: Path, record: str, segments: list[tuple[str, int, str]], *, n_sig: int = 2,
                       fs: int = 125, seed: int = 0) -> None:
    """A multi-segment record: each (name, sig_len, fmt) segment with wrsamp, the master header with
    wfdb.MultiRecord.wrheader."""
    import wfdb

    for k, (name, length, fmt) in enumerate(segments):
        write_wfdb(folder, name, n_sig=n_sig, sig_len=length, fmt=fmt, fs=fs, seed=seed * 100 + k)
    master = wfdb.MultiRecord(record_name=record, n_sig=n_sig, fs=fs, sig_len=sum(s[1] for s in segments),
                              seg_name=[s[0] for s in segments], seg_len=[s[1] for s in segments])
    master.n_seg = len(segments)  # wrheader needs it; the constructor sets it only from `segments`
    master.wrheader(write_dir=str(folder))


def numerics_csv(session: str, rows: int = 5) -> str:
    """Vital-sign numerics, different for every session."""
    rng = np.random.default_rng(zlib.crc32(session.encode()))
    lines = ["time_s,HR,SpO2,RR"] + [f"{k},{rng.integers(60, 100)},{rng.integers(92, 100)},{rng.integers(10, 20)}"
                                     for k in range(rows)]
    return "\n".join(lines) + "\n"


def dicom_bytes(*, person_id: str, series: int, instance: int, modality: str = "CT", study_date: str,
                study_time: str, acquisition_time: str | None = None, size: int = 4) -> bytes:
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
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[person_id, study_date, str(series)])
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
        rows.append(row)
        if table == "visit_occurrence":
            rows.append([visit_id(i, 1), *row[1:]])
    return rows


def visit_id(person_index: int, k: int) -> int:
    return 5000 + 10 * person_index + k


def write_omop(root: Path, persons: list[str], links: list[tuple[int, str]],
               tables: tuple[str, ...] = tuple(OMOP_COLUMNS)) -> None:
    for table in tables:
        write(root, f"OMOP/{table}.csv", csv_text(OMOP_COLUMNS[table], omop_rows(table, persons)))
    write(root, "OMOP/waveform_visit_links.csv",
          csv_text(["visit_occurrence_id", "session"], [[v, s] for v, s in links]))


# ----------------------------------------------------------------------------- a whole site


def sessions_of(person: str, index: int) -> dict[str, str]:
    """The session names of a clean site's person: single, multi-segment, flat (and the flat record name)."""
    day = person_day(index)
    return {
        "single": f"{person}_{day}_080000",
        "multi": f"{person}_{day}_120000",
        "flat": f"{person}_{day}_180000",
        "flat_record": f"{person}_{day}_180000_60",
    }


def write_person(root: Path, person: str, index: int) -> list[tuple[int, str]]:
    """One person's Waveforms/ and Images/; returns the (visit, session) links for them."""
    s = sessions_of(person, index)
    day = person_day(index)
    wave = root / person / "Waveforms"
    write_wfdb(wave / s["single"], s["single"], seed=2 * index)
    write(wave / s["single"], f"{s['single']}n.csv", numerics_csv(s["single"]))
    write_multisegment(wave / s["multi"], s["multi"],
                       [(f"{s['multi']}_0001", 101, "212"), (f"{s['multi']}_0002", 50, "16")], seed=index + 1)
    write_wfdb(wave, s["flat_record"], n_sig=1, sig_len=240, fs=4, seed=2 * index + 1)
    if index == 1:  # this person lists its multi-segment record beside it
        write(wave / s["multi"], "RECORDS", f"{s['multi']}\n")
        write(wave, "RECORDS", f"{s['single']}\n{s['flat_record']}\n")
    else:
        write(wave, "RECORDS", f"{s['single']}\n{s['multi']}\n{s['flat_record']}\n")
    study = root / person / "Images" / f"study_{day}"
    for instance in (1, 2):
        write(study / "series_1", dicom_name(person, day, "081500", "CT", 1, instance),
              dicom_bytes(person_id=person, series=1, instance=instance, study_date=day, study_time="081500"))
    write(study / "series_2", dicom_name(person, day, "082000", "CT", 2, 1),
          dicom_bytes(person_id=person, series=2, instance=1, study_date=day, study_time="081500",
                      acquisition_time="082000.250000"))
    if index == 0:
        write(root, f"{person}/Metadata/notes.json", f'{{"person": "{person}"}}\n')
    return [(visit_id(index, 0), s["single"]), (visit_id(index, 0), s["multi"]), (visit_id(index, 1), s["flat"])]


def build_clean_site(root: Path, persons: int = 3) -> None:
    """A site that follows the procedures: the validator reports no errors or warnings."""
    root.mkdir(parents=True, exist_ok=True)
    ids = person_ids(persons)
    links: list[tuple[int, str]] = []
    for index, person in enumerate(ids):
        links += write_person(root, person, index)
    write_omop(root, ids, links)
    write(root, "Metadata/site.json", '{"site": "test", "cdm_version": "5.4"}\n')


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
