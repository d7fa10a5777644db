"""Deterministic synthetic sites for tests and benchmarks.

`make_testdata(out, spec)` writes `out/first` and `out/second`. Both come from one
plan: a person's files form records (a flat waveform file, a session folder of
segments, a WFDB record, a DICOM instance), and the second snapshot keeps most
records, modifies some (same names, new bytes), renames some (same bytes, new
names), deletes some and adds new ones, as drawn by the seed. `sync_tree` turns a
tree written from one snapshot into the other in place (the benchmarks' mutated runs).

The content is format-valid, so `chorus_batch.validate` finds no errors or warnings
in either snapshot (for `size` >= MIN_SIZE; P is a person, P_D_T a start stamp):

    OMOP/<table>.csv                  the required CDM 5.4 tables with header rows; person.csv lists every
                                      person, visit_occurrence.csv a visit per person and week, and
                                      waveform_visit_links.csv links every waveform session to its visit
    Metadata/site_description.json
    P/Waveforms/P_D_T_3600.dat        flat waveform file without a session folder (`size` bytes)
    P/Waveforms/P_D_T/P_D_T_1800_0001.dat, .../P_D_T'_1800_0002.dat
                                      two flat segments in a session folder (`size` bytes each)
    P/Waveforms/P_D_T/P_D_T.hea|.dat  WFDB record: 1 signal in format 16, sig_len = size // 2 (the .dat
                      [P_D_Tn.csv]    is 2 * sig_len bytes); some with their numerics
    P/Waveforms/RECORDS               the person's WFDB records
    P/waveforms/P_D_T_60.csv          flat numerics CSV in a lower-case folder (`size` bytes)
    P/Images/STxxxx/SExx/P_D_T_<CT|MR>_<series>_<instance>.dcm
                                      DICOM Part 10 whose header agrees with the name; its pixel data pad
                                      it to about `size` bytes

A person has exactly `files_per_person` files in the first snapshot (RECORDS included).
Changes keep the site valid: a modified WFDB record gets a new .dat of the same size and a
header with its checksum, a "renamed" one a new comment line (its name is inside its
header); a renamed DICOM file moves to another study folder (its name is in its header);
other renames take a new start stamp, and waveform_visit_links.csv and RECORDS follow.
Headers are formatted directly (no wfdb or pydicom calls per file), so large trees stay
fast to write.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

_EPOCH = datetime(2020, 1, 1)
_FILLER = random.Random(20240229).randbytes(1 << 20)
_JOIN_BELOW = 1 << 20
MIN_SIZE = 32  # bytes of a bulk file below which contents may repeat across persons (file.duplicate)

# OMOP tables written (the validator's required ones) with their columns; waveform_visit_links is extra.
OMOP_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "year_of_birth", "race_concept_id", "ethnicity_concept_id"),
    "observation_period": ("observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"),
    "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date",
                         "visit_end_date", "visit_type_concept_id"),
    "condition_occurrence": ("condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
                             "condition_type_concept_id", "visit_occurrence_id"),
    "drug_exposure": ("drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                      "drug_exposure_end_date", "drug_type_concept_id", "visit_occurrence_id"),
    "procedure_occurrence": ("procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                             "procedure_type_concept_id", "visit_occurrence_id"),
    "measurement": ("measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "measurement_type_concept_id", "value_as_number", "unit_concept_id", "visit_occurrence_id"),
    "observation": ("observation_id", "person_id", "observation_concept_id", "observation_date",
                    "observation_type_concept_id", "visit_occurrence_id"),
}
OMOP_TABLES = (*OMOP_COLUMNS, "waveform_visit_links")
SITE_FILES = len(OMOP_TABLES) + 1  # + Metadata/site_description.json

# Of the records that change between the snapshots (change_fraction of all records):
_SHARES = (("modify", 0.4), ("rename", 0.2), ("delete", 0.2))  # the rest are additions

# A person's records cycle through these kinds; files per record (a person's first WFDB record also
# brings the RECORDS file). Where a record does not fit in files_per_person, a one-file kind is used.
_CYCLE = ("flat", "segments", "wfdb+n", "csv", "dicom", "wfdb", "dicom", "flat", "dicom", "segments", "wfdb",
          "dicom")
_NFILES = {"flat": 1, "segments": 2, "wfdb+n": 3, "wfdb": 2, "csv": 1, "dicom": 1}
_SINGLE = ("dicom", "flat", "csv")
_DICOM_PER_SERIES, _SERIES_PER_STUDY = 2, 2
_FS = 125  # WFDB sampling frequency (Hz)
_HOURS_PER_VISIT = 7 * 24  # a person's visits are consecutive weeks; a session belongs to its week's visit


@dataclass(frozen=True)
class Spec:
    persons: int = 20
    files_per_person: int = 12
    size: int = 1024  # bytes of each bulk file (.dat, flat waveform files; DICOM are padded to about this)
    seed: int = 0
    change_fraction: float = 0.2


def person_id(i: int) -> str:
    return f"{i + 1:06d}"  # text with leading zeros, as sites store them


def _stamp(pid: str, slot: int, seconds: int = 0) -> str:
    """<pid>_<YYYYMMDD>_<HHMMSS>: slot hours (plus the person's minute) after the epoch."""
    return f"{pid}_{_when(slot, int(pid) % 60, seconds)}"


@functools.lru_cache(maxsize=1 << 16)
def _when(hours: int, minutes: int, seconds: int) -> str:
    return f"{_EPOCH + timedelta(hours=hours, minutes=minutes, seconds=seconds):%Y%m%d_%H%M%S}"


# ----------------------------------------------------------------------------- the plan


@functools.cache
def _records(m: int) -> tuple[tuple, ...]:
    """A person's records in the first snapshot: (kind, first slot[, study, series, study slot] for DICOM).

    A record's first slot k names it (its start stamp is k hours after the epoch); it takes as many
    slots as it has files, so a person has exactly m files."""
    out: list[tuple] = []
    k = u = n_dicom = 0
    has_records = False
    study_slots: dict[int, int] = {}
    while k < m:
        kind = _CYCLE[u % len(_CYCLE)]
        n = _NFILES[kind] + (kind.startswith("wfdb") and not has_records)
        if k + n > m:
            kind, n = _SINGLE[k % len(_SINGLE)], 1
        has_records |= kind.startswith("wfdb")
        if kind == "dicom":
            study = n_dicom // (_DICOM_PER_SERIES * _SERIES_PER_STUDY)
            series = n_dicom // _DICOM_PER_SERIES % _SERIES_PER_STUDY + 1
            study_slots.setdefault(study, k)
            out.append((kind, k, study, series, study_slots[study]))
            n_dicom += 1
        else:
            out.append((kind, k))
        k += n
        u += 1
    return tuple(out)


def _visits(m: int) -> int:
    """Visits per person: enough weeks for every slot either snapshot uses (renames go up to 11 m + 5)."""
    return (11 * m + 5) // _HOURS_PER_VISIT + 1


def _fate(x: float, fraction: float) -> str:
    if x >= fraction:
        return "keep"
    x /= fraction
    for fate, share in _SHARES:
        if x < share:
            return fate
        x -= share
    return "add"


def _every_fate(records: tuple[tuple, ...], fates: list[str]) -> None:
    """Give the first person every kind of change (on records it keeps, from its last one), so that even
    a small site's second snapshot has them all."""
    for fate in ("add", "delete", "rename", "modify"):
        if fate in fates:
            continue
        for u in reversed(range(len(records))):
            if fates[u] == "keep" and not (fate == "rename" and records[u][0].startswith("wfdb")):
                fates[u] = fate
                break


def _person(spec: Spec, i: int, second: bool) -> tuple[dict[str, tuple], str]:
    """One person's files (path -> content id) and rows of waveform_visit_links.csv."""
    pid = person_id(i)
    m = spec.files_per_person
    first_visit = i * _visits(m) + 1
    rng = random.Random(spec.seed * 1_000_003 + i)
    files: dict[str, tuple] = {}
    links: list[str] = []
    wfdb_records: list[str] = []

    def emit(record: tuple, slot: int, version: str, moved: bool = False) -> None:
        kind, k = record[0], record[1]
        tag = f"{pid}:{k}"  # the content's identity: the same after a rename
        if kind == "dicom":
            _, _, study, series, study_slot = record
            modality = "CT" if study % 2 == 0 else "MR"
            stamp = _stamp(pid, slot)
            folder = f"{pid}/Images/ST{study:04d}{'-resent' if moved else ''}/SE{series:02d}"
            files[f"{folder}/{stamp}_{modality}_{series}_{slot + 1}.dcm"] = (
                "dcm", stamp, _stamp(pid, study_slot), modality, study, series, slot + 1, tag + version)
            return
        session = _stamp(pid, slot)
        links.append(f"{first_visit + slot // _HOURS_PER_VISIT},{session}\n")
        if kind == "flat":
            files[f"{pid}/Waveforms/{session}_3600.dat"] = ("raw", tag + version)
        elif kind == "segments":  # the second segment starts when the first ends; a modification changes it
            folder = f"{pid}/Waveforms/{session}"
            files[f"{folder}/{session}_1800_0001.dat"] = ("raw", f"{tag}:1")
            files[f"{folder}/{_stamp(pid, slot, 1800)}_1800_0002.dat"] = ("raw", f"{tag}:2{version}")
        elif kind == "csv":
            files[f"{pid}/waveforms/{session}_60.csv"] = ("csv", tag + version)
        else:  # wfdb, wfdb+n: renamed records are annotated instead (a record's name is inside its header)
            folder = f"{pid}/Waveforms/{session}"
            signal = tag + (version if version != ":renamed" else "")
            files[f"{folder}/{session}.hea"] = ("hea", session, signal, version == ":renamed")
            files[f"{folder}/{session}.dat"] = ("dat", signal)
            if kind == "wfdb+n":
                files[f"{folder}/{session}n.csv"] = ("num", session)
            wfdb_records.append(session)

    records = _records(m)
    fates = [_fate(rng.random(), spec.change_fraction) for _ in records] if second else ["keep"] * len(records)
    if second and i == 0 and spec.change_fraction > 0:
        _every_fate(records, fates)
    for record, fate in zip(records, fates):
        k = record[1]
        if fate == "delete":
            continue
        if fate == "rename" and record[0] == "dicom":
            emit(record, k, "", moved=True)  # the name agrees with the header: the study folder changes
        elif fate == "rename" and not record[0].startswith("wfdb"):
            emit(record, k + 10 * m + 5, "")  # a slot no other record uses
        else:
            emit(record, k, {"modify": ":v2", "rename": ":renamed"}.get(fate, ""))
        if fate == "add":
            emit((record[0], m + k, *record[2:]), m + k, "")
    if wfdb_records:
        files[f"{pid}/Waveforms/RECORDS"] = ("rec", tuple(sorted(wfdb_records)))
    return files, "".join(links)


def _plan(spec: Spec, persons: Iterable[int], second: bool) -> tuple[dict[str, tuple], list[tuple[int, str]]]:
    files: dict[str, tuple] = {}
    links: list[tuple[int, str]] = []
    for i in persons:
        person_files, person_links = _person(spec, i, second)
        files.update(person_files)
        links.append((i, person_links))
    return files, links


def snapshot(spec: Spec, persons: Iterable[int] | None = None, *, second: bool = False) -> dict[str, tuple]:
    """path -> content id of the person folders of one snapshot (the site files: _site_files)."""
    return _plan(spec, range(spec.persons) if persons is None else persons, second)[0]


# ----------------------------------------------------------------------------- site files


def _csv(columns: Iterable[str], rows: Iterable[Iterable[object]]) -> bytes:
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _omop_rows(spec: Spec, table: str, second: bool) -> Iterator[tuple]:
    nv = _visits(spec.files_per_person)
    weeks = nv * 7
    for i in range(spec.persons):
        pid = person_id(i)
        first_visit = i * nv + 1
        if table == "person":
            born = 1940 + (i * 7 + spec.seed) % 60 + (second and i % 4 == 0)  # the second corrects some
            yield pid, (8507, 8532)[i % 2], born, 0, 0
        elif table == "observation_period":
            yield i + 1, pid, _day(0), _day(weeks - 1), 32817
        elif table == "visit_occurrence":
            for v in range(nv):
                yield first_visit + v, pid, 9201, _day(7 * v), _day(7 * v + 6), 32817
        elif table == "condition_occurrence":
            yield i + 1, pid, 132797, _day(0), 32817, first_visit
        elif table == "drug_exposure":
            yield i + 1, pid, 1125315, _day(0), _day(1), 32817, first_visit
        elif table == "procedure_occurrence":
            yield i + 1, pid, 4230911, _day(0), 32817, first_visit
        elif table == "measurement":  # heart rate per visit; the second snapshot adds a respiratory rate
            for v in range(nv):
                yield (first_visit + v) * 2, pid, 3027018, _day(7 * v), 32817, 60 + (i + v) % 40, 8541, first_visit + v
                if second:
                    yield (first_visit + v) * 2 + 1, pid, 3024171, _day(7 * v), 32817, 12 + (i + v) % 10, 8541, \
                        first_visit + v
        elif table == "observation":
            yield i + 1, pid, 4275495, _day(0), 32817, first_visit


@functools.lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return f"{_EPOCH + timedelta(days=days):%Y-%m-%d}"


def _site_files(spec: Spec, second: bool, links: list[tuple[int, str]]) -> dict[str, bytes]:
    files = {f"OMOP/{table}.csv": _csv(columns, _omop_rows(spec, table, second))
             for table, columns in OMOP_COLUMNS.items()}
    files["OMOP/waveform_visit_links.csv"] = (
        "visit_occurrence_id,session\n" + "".join(text for _, text in sorted(links))).encode()
    files["Metadata/site_description.json"] = (json.dumps(
        {"site": "chorus-testdata", "cdm_version": "5.4", "persons": spec.persons, "seed": spec.seed,
         "files_per_person": spec.files_per_person}, indent=2) + "\n").encode()
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


def _dat_size(size: int) -> int:
    return max(2, size - size % 2)  # one signal in format 16: two bytes a sample


def _wfdb_header(session: str, signal: str, annotated: bool, size: int, seed: int) -> bytes:
    """A single-segment WFDB header for <session>.dat (one signal, format 16), as wfdb.wrsamp writes them."""
    samples = np.frombuffer(b"".join(_raw(signal, _dat_size(size), seed)), dtype="<i2")
    checksum = int(samples.sum(dtype=np.int64)) % 65536
    checksum -= 65536 * (checksum > 32767)
    _pid, day, tm = session.rsplit("_", 2)
    note = "# annotated: artefacts reviewed\n" if annotated else ""
    return (f"{session} 1 {_FS} {len(samples)} {tm[:2]}:{tm[2:4]}:{tm[4:]} {day[6:]}/{day[4:6]}/{day[:4]}\n"
            f"{session}.dat 16 200(0)/mV 16 0 {int(samples[0])} {checksum} 0 II\n"
            f"# chorus-testdata seed={seed} signal={signal}\n{note}").encode()


_NUMERICS_HEADER = "time_s,HR,SpO2,RR\n"
_ROW = 16  # bytes of a row of the numerics filler: "ssssss,hh,oo,rr\n"
_NUMERICS_ROWS = 8192


@functools.cache
def _numerics_filler() -> bytes:
    b = random.Random(20240301).randbytes(3 * _NUMERICS_ROWS)
    return "".join(f"{t:06d},{60 + b[3 * t] % 40},{90 + b[3 * t + 1] % 10},{10 + b[3 * t + 2] % 20}\n"
                   for t in range(_NUMERICS_ROWS)).encode()


def _flat_csv(tag: str, size: int, seed: int) -> Iterator[bytes]:
    """A numerics CSV of `size` bytes: a comment naming the content, padded so whole rows follow."""
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


def _numerics(session: str, seed: int) -> bytes:
    """A WFDB session's numerics (<session>n.csv): a minute of vital signs every 5 s."""
    b = hashlib.blake2b(f"{seed}:{session}".encode(), digest_size=36).digest()
    return (_NUMERICS_HEADER + "".join(
        f"{5 * r},{60 + b[3 * r] % 51},{90 + b[3 * r + 1] % 11},{8 + b[3 * r + 2] % 23}\n" for r in range(12))).encode()


# DICOM Part 10, explicit VR little endian, written element by element (constant runs prepared once).
_LONG_VRS = frozenset((b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"))
_SOP_CLASS = {"CT": b"1.2.840.10008.5.1.4.1.1.2", "MR": b"1.2.840.10008.5.1.4.1.1.4"}
_EXPLICIT_LE = b"1.2.840.10008.1.2.1"
_VR = {
    0x00020000: b"UL", 0x00020001: b"OB", 0x00020002: b"UI", 0x00020003: b"UI", 0x00020010: b"UI",
    0x00020012: b"UI", 0x00020013: b"SH", 0x00080008: b"CS", 0x00080016: b"UI", 0x00080018: b"UI",
    0x00080020: b"DA", 0x00080022: b"DA", 0x00080030: b"TM", 0x00080032: b"TM", 0x00080060: b"CS",
    0x00080070: b"LO", 0x00100020: b"LO", 0x0020000D: b"UI", 0x0020000E: b"UI", 0x00200010: b"SH",
    0x00200011: b"IS", 0x00200013: b"IS", 0x00204000: b"LT", 0x00280002: b"US", 0x00280004: b"CS",
    0x00280010: b"US", 0x00280011: b"US", 0x00280100: b"US", 0x00280101: b"US", 0x00280102: b"US",
    0x00280103: b"US",
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


_shared_uid = functools.lru_cache(maxsize=4096)(_uid)  # study and series UIDs: the same for many files
_IMPLEMENTATION_UID = _uid("chorus-batch testdata")
_UID, _NUMBER, _COMMENT = 44, 12, 64  # widths of the template's fields (IS and LT may be padded with spaces)


@functools.lru_cache(maxsize=64)
def _dicom_template(modality: str, pid_len: int, size: int) -> tuple[bytes, int]:
    """A DICOM Part 10 header up to its pixel data as a %-format: a field of fixed width (padded with
    spaces) for each value that differs per file, in _DICOM_FIELDS order; and the bytes of pixel data
    that follow."""
    width = {"uid": _UID, "date": 8, "time": 6, "number": _NUMBER, "pid": pid_len + pid_len % 2,
             "comment": _COMMENT}
    sop = _SOP_CLASS[modality]
    meta = [(0x00020001, b"\0\1"), (0x00020002, sop), (0x00020003, "uid"), (0x00020010, _EXPLICIT_LE),
            (0x00020012, _IMPLEMENTATION_UID), (0x00020013, b"CHORUS_TESTDATA")]
    data = [
        (0x00080008, b"ORIGINAL\\PRIMARY\\AXIAL"), (0x00080016, sop), (0x00080018, "uid"),
        (0x00080020, "date"), (0x00080022, "date"), (0x00080030, "time"), (0x00080032, "time"),
        (0x00080060, modality.encode()), (0x00080070, b"chorus-testdata"), (0x00100020, "pid"),
        (0x0020000D, "uid"), (0x0020000E, "uid"), (0x00200010, "number"), (0x00200011, "number"),
        (0x00200013, "number"), (0x00204000, "comment"),
    ]
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
    rows, columns = _image_shape(size - length - len(_pixel_module(1, 8)))
    fmt.append(_pixel_module(rows, columns).replace(b"%", b"%%"))
    return b"".join(fmt), 2 * rows * columns


def _pixel_module(rows: int, columns: int) -> bytes:
    return b"".join((
        _el(0x00280002, b"\1\0"), _el(0x00280004, b"MONOCHROME2"), _el(0x00280010, struct.pack("<H", rows)),
        _el(0x00280011, struct.pack("<H", columns)), _el(0x00280100, b"\x10\0"), _el(0x00280101, b"\x10\0"),
        _el(0x00280102, b"\x0f\0"), _el(0x00280103, b"\0\0"),
        struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", 2 * rows * columns),  # the pixel data's header
    ))


def _image_shape(room: int) -> tuple[int, int]:
    """(rows, columns) of a 16-bit image of about `room` bytes: about square, 8 x 8 at least."""
    pixels = max(64, room // 2)
    columns = 8
    while columns * columns * 2 <= pixels or pixels // columns > 0xFFFF:
        columns *= 2
    return pixels // columns, columns


def _dicom(stamp: str, study_stamp: str, modality: str, study: int, series: int, instance: int, tag: str,
           size: int, seed: int) -> Iterator[bytes]:
    """A DICOM image whose header agrees with its name (PatientID, Modality, SeriesNumber, InstanceNumber,
    AcquisitionDate/Time): the template's fields filled in; 16-bit pixels pad it to about `size` bytes."""
    pid, day, tm = stamp.rsplit("_", 2)
    _, study_day, study_tm = study_stamp.rsplit("_", 2)
    template, n = _dicom_template(modality, len(pid), size)
    instance_uid = _uid(f"{seed}|{tag}")
    yield template % (
        instance_uid, instance_uid, study_day.encode(), day.encode(), study_tm.encode(), tm.encode(), pid.encode(),
        _shared_uid(f"{seed}|{pid}|{study}"), _shared_uid(f"{seed}|{pid}|{study}|{series}"),
        b"%d" % study, b"%d" % series, b"%d" % instance, f"chorus-testdata {tag}".encode()[:_COMMENT])
    yield from _filler(n, zlib.crc32(instance_uid))


def content_bytes(content: tuple | bytes, size: int, seed: int) -> Iterable[bytes]:
    """The bytes of a content id (see _person), in chunks."""
    if isinstance(content, bytes):
        return (content,)
    kind = content[0]
    if kind == "raw":
        return _raw(content[1], size, seed)
    if kind == "dat":
        return _raw(content[1], _dat_size(size), seed)
    if kind == "hea":
        return (_wfdb_header(*content[1:], size, seed),)
    if kind == "csv":
        return _flat_csv(content[1], size, seed)
    if kind == "num":
        return (_numerics(content[1], seed),)
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
            os.makedirs(os.path.join(root, *folder.split("/")), exist_ok=True)
            made.add(folder)
        fd = os.open(root + os.sep + (rel if os.sep == "/" else rel.replace("/", os.sep)), flags, 0o644)
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


def _write_persons(root: str, spec: Spec, persons: list[int], second: bool) -> tuple[int, list[tuple[int, str]]]:
    files, links = _plan(spec, persons, second)
    return write_files(root, files, spec.size, spec.seed), links


def _person_chunks(spec: Spec, n: int) -> list[list[int]]:
    return [list(range(spec.persons))[k::n] for k in range(n)]


def _parallel(spec: Spec, workers: int) -> bool:
    return workers > 1 and spec.persons * spec.files_per_person >= 20_000


def write_snapshot(root: str | Path, spec: Spec, *, second: bool = False, workers: int = 1) -> int:
    """Write one snapshot; large ones are written by worker processes. Returns the number of files."""
    root = str(root)
    os.makedirs(root, exist_ok=True)
    if not _parallel(spec, workers):
        n, links = _write_persons(root, spec, list(range(spec.persons)), second)
    else:
        from .workers import pool

        with pool(workers) as executor:
            chunks = _person_chunks(spec, workers * 4)
            done = list(executor.map(_write_persons, [root] * len(chunks), [spec] * len(chunks), chunks,
                                     [second] * len(chunks)))
        n, links = sum(d[0] for d in done), [row for d in done for row in d[1]]
    return n + write_files(root, _site_files(spec, second, links), spec.size, spec.seed)


def make_testdata(out: str | Path, spec: Spec, *, workers: int = 1) -> tuple[int, int]:
    out = Path(out)
    a = write_snapshot(out / "first", spec, second=False, workers=workers)
    b = write_snapshot(out / "second", spec, second=True, workers=workers)
    return a, b


def _sync_persons(root: str, spec: Spec, persons: list[int]) -> tuple[int, list, list]:
    before, before_links = _plan(spec, persons, False)
    after, after_links = _plan(spec, persons, True)
    return _apply(root, before, after, spec), before_links, after_links


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
        from .workers import pool

        with pool(workers) as executor:
            chunks = _person_chunks(spec, workers * 4)
            done = list(executor.map(_sync_persons, [root] * len(chunks), [spec] * len(chunks), chunks))
        n = sum(d[0] for d in done)
        before, after = [row for d in done for row in d[1]], [row for d in done for row in d[2]]
    return n + _apply(root, _site_files(spec, False, before), _site_files(spec, True, after), spec)
