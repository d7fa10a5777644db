"""Facts of file contents: WFDB headers, RECORDS files, DICOM headers and OMOP CSVs, each to a
small dict of JSON-able facts. Facts depend only on the content, so they are keyed by (kind, md5)
and can be cached for ever. pydicom, wfdb and pyarrow are imported only when a file of their kind
is read.

  parse_facts(kind, f)   pure: the facts of the bytes a binary file-like gives (reading only what
                         the kind needs: a header, a CSV's first line and id columns, streamed)
  parser(kind)           the same as the cache's JSON text: what a hashing worker runs over the
                         bytes it hashes (one read per file, hashing.py)
  read_facts / extract_facts   the separate read path (I/O): files whose facts are not cached
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
import re
import struct
import threading
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, time
from typing import Any

import polars as pl

from ..frames import FACTS_SCHEMA, STAMP, capture_moment  # FACTS_SCHEMA: kind, md5, facts (JSON text)
from ..units import named, plural
from .dicom_walk import (
    CHARACTER_SET,
    ENCAPSULATED_SYNTAXES,
    META_GROUP_LENGTH,
    PIXEL_TAGS,
    TRANSFER_SYNTAX,
    UNDEFINED_LENGTH,
    _LONG_VRS,
    encapsulated_whole,
    pixel_data_at,
    plain_elements,
)
from .rules import (
    AS_NUMBER,
    CSV_KINDS,
    ENHANCED_SOP_CLASSES,
    IDENTIFYING_DICOM_TAGS,
    KIND_DICOM,
    KIND_EDF,
    KIND_LINKS,
    KIND_MAPPING,
    KIND_MARKDOWN,
    KIND_PERSON,
    KIND_PROCEDURES,
    KIND_RECORDS,
    KIND_REGISTRY,
    KIND_VISITS,
    KIND_WFDB,
    LINK_COLUMNS,
    LINKAGE_CONCEPTS,
    MAPPING_COLUMNS,
    RECOMMENDED_DICOM_TAGS,
    REGISTRY_COLUMNS,
    SERIES_DICOM_TAGS,
    SERIES_DICOM_TAGS_BY_MODALITY,
    SOP_CLASS_UID,
    STUDY_DICOM_TAGS,
    STUDY_DICOM_TAGS_MR,
)


MAX_TEXT_BYTES = 16 * 1024 * 1024  # a WFDB header (or a Markdown file) larger than this is not one
# A RECORDS file holds a record name a line (~40 bytes), and the site root's (v1.0) names every record of the site:
# 18 MB for 450k records, which MAX_TEXT_BYTES refused ('the file is larger than 16 MiB; write one record name per
# line as UTF-8 text', of a file that was). This holds about 6M records (read whole: ~1 GB at the most).
MAX_RECORDS_BYTES = 256 * 1024 * 1024
RECORDS_TOO_LARGE = ("the file is larger than {} MiB, the most a RECORDS file is read to: keep a RECORDS file in each "
                     "person's folder (<person_id>/Waveforms/RECORDS) instead")
MAX_CSV_HEADER_BYTES = 1024 * 1024
_BINARY = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_DICOM_TAGS: dict[str, int] = {
    "modality": 0x00080060,
    "series_number": 0x00200011,
    "instance_number": 0x00200013,
    "patient_id": 0x00100020,
    "study_date": 0x00080020,
    "study_time": 0x00080030,
    "series_date": 0x00080021,
    "series_time": 0x00080031,
    "acquisition_date": 0x00080022,
    "acquisition_time": 0x00080032,
    "content_date": 0x00080023,
    "content_time": 0x00080033,
    "accession_number": 0x00080050,
    "series_instance_uid": 0x0020000E,
    "sop_instance_uid": 0x00080018,  # (one image's, the world over: dicom.instance_repeated)
    "burned_in_annotation": 0x00280301,  # YES: the pixels hold text that identifies the patient (dicom.burned_in)
    **IDENTIFYING_DICOM_TAGS,
    **{key: tag for key, (_, tag) in (STUDY_DICOM_TAGS | STUDY_DICOM_TAGS_MR | SERIES_DICOM_TAGS).items()},
    **{key: tag for key, (_, tag, _) in SERIES_DICOM_TAGS_BY_MODALITY.items()},
}


class BadContent(ValueError):
    """The file's content is not what its name says it is (the message says how)."""


def _read_text(f, encoding: str, errors: str = "strict", *, limit: int | None = None,
               too_large: str = "the file is larger than {} MiB") -> str:
    limit = MAX_TEXT_BYTES if limit is None else limit
    return _text(_read_up_to(f, limit + 1), encoding, errors, limit=limit, too_large=too_large)


# What a compressor or an archiver writes first (gzip RFC 1952, bzip2, xz, zstd, zip, 7-Zip, lz4 frame): a file of a
# text kind (a table, a header, a RECORDS or Markdown file) or a DICOM file that begins so was compressed and kept its
# name (an export tool's compressed output, a transfer that gzipped the files): told as compressed, to decompress, not
# as binary data, an unfinished copy or no DICOM file, which send the site to copy or export it again, to no avail.
_COMPRESSED_MAGIC = ((b"\x1f\x8b", "gzip", "gunzip"), (b"BZh", "bzip2", "bunzip2"), (b"\xfd7zXZ\x00", "xz", "unxz"),
                     (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"), (b"PK\x03\x04", "zip", "unzip"),
                     (b"7z\xbc\xaf\x27\x1c", "7-Zip", "7z x"), (b"\x04\x22\x4d\x18", "lz4", "unlz4"))
COMPRESSED_REMEDY = "keep the decompressed file under this name"
_COMPRESSED_FIRST = frozenset(magic[0] for magic, _, _ in _COMPRESSED_MAGIC)  # (most files: one look, not eight)


def _compressed(data: bytes) -> None:
    """BadContent when `data` (a file's first bytes) is a compressor's or an archiver's output."""
    if not data or data[0] not in _COMPRESSED_FIRST:
        return
    for magic, what, tool in _COMPRESSED_MAGIC:
        # (bzip2: "BZh" and a block size 1-9, not a CSV whose first column is named BZh...)
        if data.startswith(magic) and (what != "bzip2" or data[3:4] in b"123456789" and data[4:10] == b"1AY&SY"):
            raise BadContent(f"the file holds {what}-compressed data, not the file itself: decompress it (e.g. {tool}) "
                             f"and {COMPRESSED_REMEDY}")


def _text(data: bytes, encoding: str, errors: str = "strict", *, limit: int | None = None,
          too_large: str = "the file is larger than {} MiB") -> str:
    """`data` decoded, or BadContent saying why it is no text file: empty, over `limit` bytes (MAX_TEXT_BYTES unless
    given; `too_large` is the reason then, with the limit in MiB), UTF-16, not `encoding`, or with control bytes."""
    limit = MAX_TEXT_BYTES if limit is None else limit
    if not data:
        raise BadContent("the file is empty")
    _compressed(data)
    if len(data) > limit:
        raise BadContent(too_large.format(limit // (1024 * 1024)))
    # (an editor's "Unicode" encoding: neither binary data nor another 8-bit text; _utf16 needs a byte-order mark or a
    # NUL among the first bytes, so a text without either, nearly every header, is not asked: 2 us of a WFDB header)
    if (b"\0" in data or data[:1] in b"\xff\xfe") and _utf16(data):
        raise BadContent(f"the file is UTF-16 text, not {encoding.upper().removesuffix('-SIG')}")
    if b"\0" in data:  # (told as the CSV readers tell it: "control characters (binary data?)" sent a WFDB header
        raise BadContent(TEXT_NUL_REASON)  # an unfinished copy left as zeros to be written again by a WFDB writer)
    try:
        text = data.decode(encoding, errors)
    except UnicodeDecodeError:
        raise BadContent(f"the file is not {encoding.upper().removesuffix('-SIG')} text (binary data?)") from None
    if found := _BINARY.search(text):
        raise BadContent(_control_reason(text, found.start()))
    return text


_CONTROL_NAMES = {"\x1a": "Ctrl-Z, the end-of-file mark old DOS and Windows tools write after the text: remove it",
                  "\x0c": "a form feed", "\x1b": "Escape", "\x7f": "Delete"}


def _control_reason(text: str, at: int) -> str:
    """Why a text holding a control character at `at` is no text file, naming the character and its line (said only
    "control characters (binary data?)": of a header ending in a DOS tool's Ctrl-Z, the site could not tell where)."""
    char = text[at]
    line = text.count("\n", 0, at) + 1 if "\n" in text else text.count("\r", 0, at) + 1
    name = _CONTROL_NAMES.get(char, f"Ctrl-{chr(ord(char) + 64)}" if ord(char) < 32 else "")
    return f"the file holds control characters (binary data?): the first, on line {line}, U+{ord(char):04X}" + (
        f" ({name})" if name else "")


_BARE_CR = re.compile(rb"\r(?!\n)")


def _wfdb_facts(f) -> dict[str, Any]:
    # as wfdb reads a header (ASCII, other bytes dropped): wfdb.wrsamp writes a comment such as "# Hôpital" in
    # UTF-8, and a header the converter reads is no error; binary data still holds control characters
    data = _read_up_to(f, MAX_TEXT_BYTES + 1)
    facts = parse_wfdb_header(_text(data, "ascii", errors="ignore"))
    # lines ended by a carriage return alone (old Mac OS): wfdb reads them (Python's universal newlines), the WFDB
    # header format separates lines by line feeds ("a carriage return may precede each"), as the WFDB C library reads
    # them: its tools take such a header for one line (wfdb.line_ends)
    if b"\r" in data and _BARE_CR.search(data):
        facts["bare_cr"] = True
    if not data.isascii():
        # units written with other characters ("µV", which wfdb reads "V"): kept as written too, for a finding
        # that quotes what the file holds (units_written)
        with contextlib.suppress(BadContent):
            header = parse_wfdb_header(data.decode("utf-8", "replace"))
            # a record named with other characters ("réc", which wfdb reads "rc"): told as the file has it
            if header["record_name"] != facts["record_name"]:
                facts["record_name_written"] = header["record_name"]
            written = header["signals"]
            if len(written) == len(facts["signals"]):
                for signal, as_written in zip(facts["signals"], written, strict=True):
                    if as_written["units"] != signal["units"]:
                        signal["units_written"] = as_written["units"]
                    # a signal file named so ("réc.dat", which wfdb looks for as "rc.dat"): the finding that it is
                    # missing names the file the site sees in the header, and that one is not told as named by none
                    if as_written["file_name"] != signal["file_name"]:
                        signal["file_name_written"] = as_written["file_name"]
            # and a segment so named, which wfdb looks for as the name without those characters
            segments, segments_written = facts.get("segments") or [], header.get("segments") or []
            if len(segments) == len(segments_written):
                for segment, as_written in zip(segments, segments_written, strict=True):
                    if as_written["name"] != segment["name"]:
                        segment["name_written"] = as_written["name"]
    return facts


@functools.cache
def _wfdb_grammar() -> Any:
    """wfdb's header grammar (wfdb/io/header.py: the record, signal and segment line expressions,
    parse_header_content, wfdb_strptime), loaded from its file alone. Imported through its package it
    runs wfdb/__init__, which imports all of wfdb and pandas: 0.45-0.7 s of a first run's start-up,
    before any hashing worker starts (python -X importtime); the module itself needs only re and datetime.
    If wfdb's layout ever changes, it is imported the usual way."""
    import importlib.util

    try:
        package = importlib.util.find_spec("wfdb")  # finds the package without running its __init__
        location = package.submodule_search_locations[0] if package and package.submodule_search_locations else None
        spec = importlib.util.spec_from_file_location("chorus_batch._wfdb_header", f"{location}/io/header.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        module.rx_record, module.rx_signal, module.rx_segment, module.parse_header_content, module.wfdb_strptime  # noqa: B018
        return module
    except (ImportError, OSError, AttributeError, TypeError, SyntaxError):
        with warnings.catch_warnings():  # wfdb 4.x warns about pandas deprecations at import
            warnings.simplefilter("ignore", DeprecationWarning)
            from wfdb.io import header
        return header


WFDB_DEFAULT_FS = 250.0  # wfdb's read default of a record line without a frequency (WFDB_DEFFREQ)


def parse_wfdb_header(text: str) -> dict[str, Any]:
    """The facts of a WFDB header's text, by the wfdb library's own header grammar (its record,
    signal and segment line expressions). wfdb's line parsers are not called: they look up
    field defaults in pandas frames, ~2.5 ms a header (minutes on a first run over 100k
    headers); matching the same expressions and converting the few fields used is ~30 us."""
    grammar = _wfdb_grammar()
    lines, _comments = grammar.parse_header_content(text)
    if not lines:
        raise BadContent("no record line (only comments or blank lines)")
    try:
        found = _matched(grammar.rx_record, lines[0], "record line")
        rec = found.groupdict()
        n_sig = _count(rec["n_sig"], "number of signals")
        facts: dict[str, Any] = {
            "record_name": rec["record_name"],
            "n_sig": n_sig,
            "sig_len": _count(rec["sig_len"], "number of samples") if rec["sig_len"] else None,
            # no frequency: wfdb (and the WFDB library) read the default, 250 Hz; 0 is read as written (wfdb: 0 Hz)
            "fs": _frequency(lines[0], found) if rec["fs"] else WFDB_DEFAULT_FS,
            "base_time": _base(lambda: _iso_time(grammar, _all_three(rec["base_time"])), "time", lines[0],
                               rec["base_time"])
            if rec["base_time"] else None,
            "base_date": _base(lambda: _iso_date(rec["base_date"]), "date", lines[0], rec["base_date"])
            if rec["base_date"] else None,
            "signals": [],
            "segments": None,
        }
        # (after the base time and date, whose own messages say more of a date written otherwise)
        _record_line_whole(lines[0], rec, found.end())
        if not rec["n_seg"]:
            if len(lines) - 1 != n_sig:
                raise BadContent(f"the record line declares {plural(n_sig, 'signal')} but {plural(len(lines) - 1, 'signal line')} follow")
            signals, signal_line = facts["signals"], grammar.rx_signal.match
            for number, line in enumerate(lines[1:], 1):
                # (the match inline, _match only to say why a line does not match: two calls a line were a tenth of a
                # header's parse)
                sig = matched.groupdict() if (matched := signal_line(line)) else _match(grammar.rx_signal, line,
                                                                                     "signal line", number)
                if sig["samps_per_frame"] and not sig["samps_per_frame"].strip("0"):
                    # ('16x0': wfdb fails to read the record, "cannot reshape array of size 0"; its size was told as
                    # "implies 0 bytes" and its rate as 0 Hz against the mapping's)
                    shown = line.strip() if len(line.strip()) <= 80 else line.strip()[:77] + "..."
                    raise BadContent(f"invalid header syntax (signal line {number} gives 0 samples per frame "
                                     f"('{sig['fmt']}x{sig['samps_per_frame']}'), which wfdb cannot read: write the "
                                     f"format alone ({sig['fmt']}: 1 sample a frame) or the samples each frame holds: "
                                     f"'{shown}')")
                frame, offset = sig["samps_per_frame"], sig["byte_offset"]
                signals.append({
                    "file_name": sig["file_name"], "fmt": sig["fmt"],
                    # (up to 18 digits: below _MAX_COUNT, int() alone)
                    "samps_per_frame": (int(frame) if len(frame) < 19 else _count(frame, "samples per frame"))
                    if frame else 1,
                    "byte_offset": (int(offset) if len(offset) < 19 else _count(offset, "byte offset")) if offset else 0,
                    # the signal's name and units (None where the line gives none: WFDB then reads "NU")
                    "sig_name": sig["sig_name"].strip() or None, "units": sig["units"] or None,
                })
        else:
            n_seg = _count(rec["n_seg"], "number of segments")
            if n_seg == 0:
                # (the WFDB header format: "the number of segments must be greater than zero"; wfdb reads the header
                # and fails on its record, "list index out of range": read as a record of no segments, untold)
                shown = lines[0].strip() if len(lines[0].strip()) <= 80 else lines[0].strip()[:77] + "..."
                raise BadContent(f"the record line gives 0 segments ('{rec['record_name']}/0'): a multi-segment header "
                                 f"lists at least one segment (the WFDB header format; wfdb cannot read the record): "
                                 f"write the number of segments and a line for each, or, for a single-segment record, "
                                 f"no '/' and its signal lines: '{shown}'")
            if len(lines) - 1 != n_seg:
                raise BadContent(f"the record line declares {plural(n_seg, 'segment')} but {plural(len(lines) - 1, 'segment line')} follow")
            facts["segments"] = [{"name": seg["seg_name"], "length": _count(seg["seg_len"], "segment length")}
                                 for seg in (_match(grammar.rx_segment, line, "segment line", k)
                                             for k, line in enumerate(lines[1:], 1))]
    except BadContent:
        raise
    except ValueError as exc:  # bad dates/times, bad numbers
        raise BadContent(f"invalid header syntax ({exc})") from None
    return facts


# WFDB counts samples, signals and bytes in 64-bit integers (the WFDB library's WFDB_Time; wfdb reads the samples
# into numpy): a header's number beyond that no reader takes, and the facts (Int64 columns) would hold none of it: a
# sig_len of 10^20 read as "no length", its signal file's size never checked
_MAX_COUNT = (1 << 63) - 1


def _count(digits: str, what: str) -> int:
    value = int(digits)
    if value > _MAX_COUNT:
        raise BadContent(f"the {what} {digits} is larger than any WFDB reader takes (at most {_MAX_COUNT:,}, a 64-bit "
                         f"count): the header is damaged or was written wrongly")
    return value


# The usual forms of a header's base time and date, read without strptime (~5-7 us each: a third of a header's
# parse, measured 2026-12-04); any other form, or a value out of range, goes to strptime as before (same result,
# same error).
# ([0-9], not \d: \d takes any script's digits, "00:00:٠0", which wfdb's strptime refuses; found by hypothesis)
_HH_MM_SS = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})")
_DD_MM_YYYY = re.compile(r"([0-9]{2})/([0-9]{2})/([0-9]{4})")


def _iso_time(grammar: Any, text: str) -> str:
    if found := _HH_MM_SS.fullmatch(text):
        try:  # (not contextlib.suppress: a context manager's object and two calls on every header)
            return time(int(found[1]), int(found[2]), int(found[3])).isoformat()
        except ValueError:
            pass
    return grammar.wfdb_strptime(text).isoformat()


def _all_three(text: str) -> str:
    """`text`, a base time written with its hours, minutes and seconds; ValueError where fewer are written. The WFDB
    header format gives the base time as HH:MM:SS (header(5): "13:05:00, or 13:5:0"); its readers (the WFDB library's
    strtim, wfdb's strptime) read '10:00' as minutes and seconds, 00:10:00, not as the 10 o'clock a site writing it
    means: a session's start read 9 h 50 min early, without a word."""
    if text.count(":") != 2:
        raise ValueError(f"base time {text!r} is not HH:MM:SS")
    return text


def _iso_date(text: str) -> str:
    if found := _DD_MM_YYYY.fullmatch(text):
        try:
            return date(int(found[3]), int(found[2]), int(found[1])).isoformat()
        except ValueError:
            pass
    return datetime.strptime(text, "%d/%m/%Y").date().isoformat()


_BASE_FORMS = {"time": "HH:MM:SS (a 24-hour clock, seconds with a fraction if any: 14:05:09.25)",
               "date": "DD/MM/YYYY (the day first: 2 January 2020 is 02/01/2020)"}


_YEAR_FIRST = re.compile(r"([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})")
_PART_TIME = re.compile(r"([0-9]{1,2})(?::([0-9]{1,2}))?(\.[0-9]*)?")  # a base time without its seconds, or minutes
_DAY_FIRST_OTHER = re.compile(r"([0-9]{1,2})[-.]([0-9]{1,2})[-.]([0-9]{4})")


def _base(convert: Callable[[], str], what: str, line: str, read: str) -> str:
    """The record line's base time or date, converted; BadContent naming which, quoting it as the line has it, and
    saying how WFDB writes it, where it is not one. (wfdb's expression takes a part of a value written otherwise, and
    the message quoted that part: a date written 2020-01-02 was "wfdb reads '2020'", as if the year were read; a date
    without a time, "02/01/2020", was "wfdb reads '/01/2020'", its day taken for a base time)"""
    try:
        return convert()
    except ValueError:
        shown = line.strip()
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        # The fields are positional (name, signals, frequency, samples, time, date): the 5th and 6th as written
        fields = line.split()
        at_time = fields[4] if len(fields) > 4 else ""
        if "/" in at_time or _YEAR_FIRST.fullmatch(at_time) or _DAY_FIRST_OTHER.fullmatch(at_time):
            what = "time"  # a date alone, where the time is written (wfdb took its day, "02", for a time)
        written = at_time if what == "time" else fields[5] if len(fields) > 5 else ""
        # (no field where the value is written: the fields before it are not as WFDB writes them, "250(0)/360", whose
        # '/360' wfdb reads as the date; quoted as read, not as '')
        written = written or read
        hint = ""
        if found := _YEAR_FIRST.fullmatch(written):
            date_ = f"{int(found[3]):02d}/{int(found[2]):02d}/{found[1]}"
            hint = (f": a date written year first; WFDB writes it day first, {date_}" if what == "date" else
                    f": a date where the base time is written; WFDB reads a base date only after a base time "
                    f"(HH:MM:SS {date_})")
        elif what == "time" and ("/" in written or _DAY_FIRST_OTHER.fullmatch(written)):
            hint = (": a date where the base time is written; WFDB reads a base date only after a base time, "
                    "'HH:MM:SS DD/MM/YYYY' (the time the recording started, then its date)")
        elif what == "time" and (found := _PART_TIME.fullmatch(written)):
            minutes = found[2] is not None
            try:
                read_as = f" ({_wfdb_grammar().wfdb_strptime(written).isoformat()})"
            except ValueError:
                read_as = ""
            hint = (f": the WFDB readers read a time of {'two fields' if minutes else 'one field'} as "
                    f"{'minutes and seconds' if minutes else 'seconds'} after midnight{read_as}, not as hours; write "
                    f"all three" + (f", {int(found[1]):02d}:{int(found[2]):02d}:00 for a recording begun at "
                                    f"{int(found[1])}:{int(found[2]):02d}" if minutes and not found[3] and int(found[1]) < 24
                                    and int(found[2]) < 60 else ""))
        elif what == "date" and (found := _DAY_FIRST_OTHER.fullmatch(written)):
            hint = f": WFDB writes the date with slashes, {int(found[1]):02d}/{int(found[2]):02d}/{found[3]}"
        elif what == "date" and re.fullmatch(r"[0-9]{1,2}/[0-9]{1,2}/[0-9]{1,3}", written):
            hint = ": the year is written with four digits (WFDB would read '20' as the year 20)"
        raise BadContent(f"invalid header syntax (the record line's base {what} is not a {what} WFDB reads, which is "
                         f"written {_BASE_FORMS[what]}; the line has '{written}'{hint}: '{shown}')") from None


_RECORD_FIELDS = ("the fields are: the record name, the number of signals, the sampling frequency (a decimal number of "
                  "Hz: 1000, not 1e3), the number of samples, the base time and the base date")


def _frequency(line: str, found: re.Match) -> float:
    """The record line's sampling frequency (Hz); BadContent where it is written as no number WFDB reads: "." (was
    Python's "could not convert string to float: '.'"), or "250.5.5", which wfdb's expression reads as 250.5 Hz and a
    counter frequency of .5, without the '/' that writes one (read 250.5 Hz without a word, a typo passed)."""
    at = found.start("counter_freq")
    if found["fs"] == "." or (found["counter_freq"] and line[at - 1:at] != "/"):
        shown = line if len(line) <= 80 else line[:77] + "..."
        written = line[found.start("fs"):].split(maxsplit=1)[0]  # (the field as written, whatever follows it)
        raise BadContent(f"invalid header syntax (the record line's sampling frequency '{written}' is not a number "
                         f"({_RECORD_FIELDS}; a counter frequency follows it after a '/', 250/1000): '{shown}')")
    return float(found["fs"])


def _record_line_whole(line: str, rec: dict[str, str], read_to: int) -> None:
    """BadContent where wfdb's record line expression reads `line` (stripped) only in part, or reads no sampling
    frequency where one is written: wfdb (and so the facts) then read another frequency, or no length, without a word
    ("rec 1 1e3 1000": 1 Hz and no number of samples; "rec 1 -500 1000": the default 250 Hz), which the WFDB library
    reads otherwise (1e3: 1000 Hz). `read_to`: where the expression's match of `line` ends."""
    shown = line if len(line) <= 80 else line[:77] + "..."
    if read_to < len(line):
        raise BadContent(f"invalid header syntax (the record line is read only up to '{line[:read_to].rstrip()}': "
                         f"'{line[read_to:].strip()}' is not read ({_RECORD_FIELDS}): '{shown}')")
    if not rec["fs"] and (rec["counter_freq"] or rec["base_counter"]):
        raise BadContent(f"invalid header syntax (the record line's sampling frequency "
                         f"'{rec['counter_freq'] or rec['base_counter']}' is not a positive number of Hz "
                         f"({_RECORD_FIELDS}): '{shown}')")


def _match(expression: re.Pattern, line: str, what: str, number: int | None = None) -> dict[str, str]:
    return _matched(expression, line, what, number).groupdict()


def _matched(expression: re.Pattern, line: str, what: str, number: int | None = None) -> re.Match:
    """`expression`'s match of `line`; BadContent naming the line (`what`, and its `number` if given) where none."""
    found = expression.match(line)
    if found is None:
        what = what if number is None else f"{what} {number}"  # (built only here, not for every line read well)
        # which line and what it holds (wfdb says only "invalid syntax in signal line": of a header of 30 signals,
        # the site could not tell which)
        shown = line.strip()
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        first = shown.split(maxsplit=1)[0] if shown else ""
        # a signal file or segment named with its folder (../1007/1007.dat, C:\\data\\x.dat): WFDB reads them
        # only from the header's own folder, and its grammar takes no folder
        where = (": WFDB reads signal files and segments from the header's own folder, by a name without a folder"
                 if what != "record line" and ("/" in first or "\\" in first) else "")
        raise BadContent(f"invalid header syntax (invalid syntax in {what}: '{shown}'{where})")
    return found


def _dicom_text(element: Any) -> str | None:
    if element is None:
        return None
    value = element if isinstance(element, bytes) else element.value  # bytes: dicom_walk's raw value
    if isinstance(value, bytes | bytearray):
        # Raw bytes (pydicom converts lazily): decoded here so odd values never raise or warn.
        value = bytes(value).decode("latin-1")
    elif value is not None and not isinstance(value, str):
        value = str(value)
    value = (value or "").strip(_BLANK)
    return value or None


def _dicom_facts(f) -> dict[str, Any]:
    head = _read_up_to(f, DICOM_HEAD_BYTES)
    if not head:
        raise BadContent("the file is empty")
    if head[128:132] != b"DICM":  # (a preamble may begin with any bytes)
        _compressed(head)
    meta = _Inflated.meta_group(head)
    # (the elements asked only where the meta group holds that UID at all: nearly no file)
    if meta is not None and head.find(_MEDIA_STORAGE_DIRECTORY, 132, meta[0]) >= 0 and any(
            element.startswith(b"\x02\x00\x02\x00UI") and element[8:].rstrip(b"\x00 ") == _MEDIA_STORAGE_DIRECTORY
            for element in meta[1]):
        # a DICOMDIR saved under a .dcm name (its File Meta's MediaStorageSOPClassUID): read as an image, it was told
        # as "holds no image ... the copy is cut (an interrupted copy?)", to copy it again (a file named DICOMDIR:
        # path.unparsed)
        raise BadContent(f"a DICOMDIR (MediaStorageSOPClassUID {_MEDIA_STORAGE_DIRECTORY.decode()}, Media Storage "
                         f"Directory: the index a DICOM export writes beside its images), not an image: "
                         f"{_DICOMDIR_REMEDY}")
    if (inflated := _Inflated.of(f, head, meta)) is not None:  # a deflated data set: its header inflated, not the whole file
        try:
            return _dicom_facts(inflated)
        except BadContent as exc:
            if str(exc).startswith(PIXELS_CUT):  # (the sizes are of the inflated data set, not of the file)
                raise BadContent(f"{PIXELS_CUT} (its deflated data set inflates whole, but to too few bytes: "
                                 f"{str(exc)[len(PIXELS_CUT) + 2:]}") from None
            raise
    # pydicom reads a file cut short (an interrupted copy) without a word: its header would look empty
    wanted = DICOM_HEAD_BYTES
    while True:
        complete = len(head) < wanted
        if complete and head[128:132] == b"DICM" and (
                len(head) < 144  # not even the File Meta group's length
                or head[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
                and len(head) < 152 + int.from_bytes(head[140:144], "little")):  # that group cut, or no element after it
            raise _header_cut()
        try:
            pixels_at: list[tuple[int, int]] = []
            elements = _dicom_elements_plain(head, complete=complete, pixels_at=pixels_at)
            # (the struct walk decided the file and met its pixel data: where, pixels_at says; else found again below)
            walked = elements is not None and bool(pixels_at)
            if elements is None and complete:  # dcmread reads it: cut short, it would give what is there
                _walk_plain(head, complete=True)
        except _Truncated:
            raise _header_cut() from None
        # A header running past the bytes read (a large private or multi-frame header, an encapsulated document):
        # read on, doubling, up to DICOM_HEAD_MAX_BYTES, so that one cut short is found as a short one is. Given to
        # dcmread at once, such a file cut inside its header (an interrupted copy) gave no facts and no error.
        if elements is not None or complete or wanted >= DICOM_HEAD_MAX_BYTES or head[128:132] != b"DICM":
            break
        head += _read_up_to(f, wanted)
        wanted *= 2
    stopped_at = stopped_little = None
    if elements is None:  # not the plain case: read exactly as dcmread reads it
        _import_pydicom()
        import pydicom
        from pydicom.errors import BytesLengthException, InvalidDicomError

        f.seek(0)
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_DICOM_TAG_LIST)
        except InvalidDicomError:
            if head.startswith(b"DICM"):  # (a writer that left out the preamble: 'DICM' at byte 0, not 128)
                raise BadContent("not a DICOM Part 10 file: it begins with 'DICM', without the 128-byte preamble that "
                                 "comes before it") from None
            raise BadContent("not a DICOM Part 10 file (no 'DICM' prefix and File Meta Information)") from None
        except zlib.error as exc:  # a deflated data set (inflated whole by dcmread): cut short, or damaged
            if "incomplete or truncated" in str(exc):
                raise BadContent("the file ends inside its deflated (compressed) data set (an interrupted copy?): copy "
                                 "the file again") from None
            raise BadContent(f"its deflated data set cannot be inflated ({exc}): the file is damaged") from None
        except struct.error:  # (its reading of an element's 4-byte length met the file's end: cut inside it)
            raise _header_cut() from None
        except OSError as exc:
            # pydicom's reading of a sequence item's header that met the file's end (its struct.error, re-raised as
            # "OSError: No tag to read at file position ..."): the file is cut inside its header, as above. An OSError
            # was told as the file's reading failing (parse_facts lets it through), not as its content
            if isinstance(exc.__context__, struct.error) and str(exc).startswith("No tag to read at file position"):
                raise _header_cut() from None
            raise
        except (EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError, NotImplementedError,
                BytesLengthException) as exc:  # (NotImplementedError: a VR it does not know; BytesLength...: a
            # value whose length its VR cannot have, as a damaged File Meta group gives: not a parser's bug)
            advice = str(exc).split(" To replace this error with a warning", 1)[0]  # (pydicom's, to its users)
            raise BadContent(f"DICOM header cannot be parsed: {type(exc).__name__}: {advice}") from None
        # dcmread skips an element it is not asked for by seeking past it, without a word where the file ends first:
        # a header longer than DICOM_HEAD_MAX_BYTES (a large private or embedded-document element) cut inside it
        # read as a whole file without pixel data. It stopped past the file's end then.
        stopped = f.tell()
        if stopped > f.seek(0, io.SEEK_END):
            raise _header_cut()
        # (raw, as the generator's path checks them: get_item converts an element of no value, and pydicom's
        # conversion of one of a VR it does not know raised NotImplementedError)
        _valid_vrs(ds.get_item(tag, keep_deferred=True) for tag in _DICOM_TAG_LIST)
        elements = {tag: ds.get_item(tag) for tag in _DICOM_TAG_LIST}
        stopped_at = _pixels_where_stopped(ds, f, stopped)
        # (a little-endian data set: what follows its pixel data is read as the elements' walks read it, below; a file
        # the struct walk leaves to pydicom's generator (an unwanted element of a VR it does not know, skipped by
        # both) was told out of order by the generator's path, and not by this one)
        stopped_little = stopped_at if ds.original_encoding[1] is True else None
    # (the elements' walk also found the pixel data: walking the header again for it was a fifth of this function,
    # by cProfile over the realistic tree's 6,400 headers)
    # (a file dcmread read: where it stopped before the pixel data, if pixel_data_at's little-endian walk finds none)
    little = pixels_at[0] if walked else pixel_data_at(head)  # (little-endian: where these walks found them)
    pixels = little or stopped_at
    if pixels is None and all(element is None for element in elements.values()):
        # Nothing after the File Meta Information that an image's header holds (no SOPClassUID, Modality, PatientID,
        # ...) nor pixel data: a file cut where its data set begins (dcmread reads it without a word), which gave
        # no facts and was told as a header lacking each attribute in turn
        raise BadContent(f"the file holds no image after its File Meta Information: no SOPClassUID, Modality, "
                         f"PatientID nor pixel data (it ends at byte {f.seek(0, io.SEEK_END):,}): the copy is cut (an "
                         f"interrupted copy?), or it is no image (a DICOMDIR?); copy the file again, or export the "
                         f"image again")
    _pixels_whole(head, f, pixels)
    if (after := little or stopped_little) is not None and after[1] != UNDEFINED_LENGTH:
        _nothing_after_pixels(head, f, sum(after))
    # absent: not in the header. dicom_walk's raw bytes as _dicom_text reads them, inline (a call for each of the
    # 30 tags was a third of this function on a plain header)
    facts, get, blank = {}, elements.get, _BLANK  # (a loop of locals: a fifth faster than the comprehension was)
    for key, tag in _DICOM_TAG_ITEMS:
        if (element := get(tag)) is not None and (
                text := element.decode("latin-1").strip(blank) if type(element) is bytes else _dicom_text(element)):
            facts[key] = text
    # The facts are kept in the manifest for good (file_facts): of the attributes that identify the patient only
    # whether they are filled is kept, never their value (a name, a birth date, an address of a file not
    # de-identified); dicom.identifying_tag asks no more. PatientName is kept where it may be the pseudonym the rule
    # accepts (the person id): one token of letters, digits, '.', '-' or '_' with a digit in it, not a person's name.
    for key in _IDENTIFYING_KEYS.intersection(facts):
        if key != "patient_name" or not _PSEUDONYM.fullmatch(facts[key].rstrip("^= ")):
            facts[key] = IDENTIFYING_FILLED
    if lacking := _lacking(elements, facts.get("modality"), pixels is not None):
        facts["lacking"] = lacking
    if meta is not None and meta[2] is not None and not _syntax_known(syntax := meta[2].decode("latin-1")):
        # a vendor's private transfer syntax (or a damaged UID): its header reads (dcmread reads the data set in the
        # encoding it finds, v12), but no viewer decodes its pixel data (dicom.transfer_syntax; v14: untold)
        facts["unknown_transfer_syntax"] = syntax if len(syntax) <= 80 else syntax[:77] + "..."
    return facts


_GROUP_ELEMENT_VR_LENGTH, _LENGTH = struct.Struct("<HH2sH"), struct.Struct("<L")  # little endian, as dicom_walk
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the data set after the meta group, deflated
_INFLATE_CHUNK = 64 * 1024


class _Inflated(io.RawIOBase):
    """A deflated DICOM file as the explicit VR little-endian file it inflates to, inflated as far as it is read.

    dcmread inflates a deflated data set whole (zlib.decompress of all the file's bytes) to read its header, even with
    stop_before_pixels: a file of a few hundred MiB held its bytes and their inflated copy in memory at once. This
    gives the file's preamble and meta group (its transfer syntax said as Explicit VR Little Endian) and then the
    inflated data set, inflating it a chunk at a time as the header's reader reads on; only what was read is kept
    (the header, ~256 KiB). Its size (seek to the end: asked where the pixel data run past what was read, to tell a
    copy cut inside them) is inflated without keeping any of it, in bounded memory; a stream that ends before its
    end (an interrupted copy) or does not inflate (damage) is BadContent, as dcmread's zlib error was."""

    @classmethod
    def of(cls, f, head: bytes, meta: "tuple[int, list[bytes], bytes | None] | None") -> "_Inflated | None":
        """The inflated view of a deflated DICOM file whose first bytes are `head` (`meta`: _meta_group(head)); None
        for any other file."""
        if meta is None or meta[2] != _DEFLATED.encode():
            return None
        pos, elements, _ = meta
        meta_bytes = b"".join([b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00", *elements])
        prefix = head[:132] + b"\x02\x00\x00\x00UL\x04\x00" + len(meta_bytes).to_bytes(4, "little") + meta_bytes
        return cls(f, prefix, pos)

    @staticmethod
    def meta_group(head: bytes) -> "tuple[int, list[bytes], bytes | None] | None":
        """(where the File Meta group ends, its elements but the group length and transfer syntax, the transfer
        syntax UID) of a Part 10 file whose first bytes are `head`; None where it has none, or one not read whole."""
        if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
            return None
        pos, elements, syntax, end, long_vrs = 132, [], None, len(head), _LONG_VRS
        # (by struct, not slices and int.from_bytes: this asks every DICOM file, a sixth of a plain header's parse)
        while pos + 8 <= end:  # the meta group (explicit VR)
            group, element, vr, length = _GROUP_ELEMENT_VR_LENGTH.unpack_from(head, pos)
            if group != 0x0002:
                break
            value = pos + 8
            if vr in long_vrs:  # (a set: the tuple of the 13 was compared in turn for each short VR, nearly all)
                if pos + 12 > end:
                    return None
                length, value = _LENGTH.unpack_from(head, pos + 8)[0], pos + 12
            if length == UNDEFINED_LENGTH or value + length > end:
                return None
            if element == TRANSFER_SYNTAX & 0xFFFF:
                syntax = head[value: value + length].rstrip(b"\x00 ")
            elif element != META_GROUP_LENGTH & 0xFFFF:
                elements.append(head[pos: value + length])
            pos = value + length
        return pos, elements, syntax

    def __init__(self, f, prefix: bytes, start: int) -> None:
        super().__init__()
        self._f, self._kept, self._pos = f, bytearray(prefix), 0
        self._source_at, self._inflate = start, zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending, self._ended, self._size = b"", False, None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _more(self) -> bytes:
        """The next inflated bytes (b"" at the stream's end); BadContent where the file ends first or is damaged."""
        while not self._ended:
            if not self._pending:
                self._f.seek(self._source_at)
                self._pending = self._f.read(_INFLATE_CHUNK)
                self._source_at += len(self._pending)
                if not self._pending:
                    raise BadContent("the file ends inside its deflated (compressed) data set (an interrupted copy?): "
                                     "copy the file again")
            try:  # (at most a chunk out of each call: a few bytes may inflate to very many)
                out = self._inflate.decompress(self._pending, _INFLATE_CHUNK)
            except zlib.error as exc:
                raise BadContent(f"its deflated data set cannot be inflated ({exc}): the file is damaged") from None
            self._pending = self._inflate.unconsumed_tail
            self._ended = self._inflate.eof
            if out:
                return out
        return b""

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # (no reader here asks for all of it; it would be kept whole)
            size = 1 << 62
        if self._size is None:
            while len(self._kept) < self._pos + size:  # (kept: the header's reader stops before the pixel data)
                if not (out := self._more()):
                    self._size = len(self._kept)
                    break
                self._kept += out
        got = bytes(self._kept[self._pos: self._pos + size])
        self._pos += len(got)
        return got

    def readinto(self, buffer) -> int:
        got = self.read(len(buffer))
        buffer[: len(got)] = got
        return len(got)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            if self._size is None:  # inflated to its end, nothing more kept
                size = len(self._kept)
                while out := self._more():
                    size += len(out)
                self._size = size
            offset += self._size
        elif whence == io.SEEK_CUR:
            offset += self._pos
        self._pos = max(offset, 0)
        return self._pos


def _lacking(elements: dict[int, Any], modality: str | None, has_pixels: bool) -> list[str]:
    """The Imaging SOP's attributes recommended to keep (RECOMMENDED_DICOM_TAGS) that a header of this modality (with
    pixel data or not) carries and this one does not, or holds empty; only which are kept, never their values."""
    asked = _KEPT_BY_IMAGE if has_pixels else ()
    if modality is not None and (of_modality := _KEPT_BY_MODALITY.get(modality.strip().upper())) \
            and _dicom_text(elements.get(SOP_CLASS_UID)) not in ENHANCED_SOP_CLASSES:
        # (an enhanced multi-frame image keeps its plane and acquisition attributes in its functional group sequences)
        asked = (*asked, *of_modality)
    # (a raw value, bytes as the struct walk gives nearly every header's, is told inline, not by a call each)
    return [key for tag, key in asked
            if (element := elements.get(tag)) is None or (not element if type(element) is bytes else not _filled(element))]


def _filled(element: Any) -> bool:
    """Whether a pydicom element holds a value (a binary value of zeros, PixelRepresentation 0, is one)."""
    value = element.value
    if isinstance(value, bytes | bytearray):
        return len(value) > 0
    return value is not None and value != "" and value != []


def _pixels_where_stopped(ds: Any, f, stopped: int) -> tuple[int, int] | None:
    """(where the pixel data's value starts, its declared length) of a file dcmread read up to `stopped`, where
    stop_before_pixels left it (before the Pixel Data element's header), in the data set's own encoding; None where
    no pixel data follow. pixel_data_at walks little-endian files only: a big-endian file (Explicit VR Big Endian)
    cut inside its pixel data read as whole. A deflated data set is read from its inflated bytes (zlib tells a cut)."""
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    # (compared as text: a UID pydicom does not know as a transfer syntax, a vendor's private one, raises on
    # is_deflated; dcmread read the data set in the encoding it found, which original_encoding gives)
    if syntax is None or syntax == _DEFLATED:
        return None
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    f.seek(stopped)
    header = _read_up_to(f, 12)
    if len(header) < 8:
        return None
    order = "little" if little else "big"
    tag = int.from_bytes(header[0:2], order) << 16 | int.from_bytes(header[2:4], order)
    if tag not in PIXEL_TAGS:
        return None
    if implicit:
        return stopped + 8, int.from_bytes(header[4:8], order)
    if header[4:6] in (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"):
        return (stopped + 12, int.from_bytes(header[8:12], order)) if len(header) == 12 else None
    if not b"AA" <= header[4:6] <= b"ZZ":
        # no VR (pydicom's generator then reads the element as implicit VR, its length the 4 bytes after the tag, as
        # the elements' walk does): a damaged 'OW' (b"\x00W") read here as a 2-byte length of 0, so the file read
        # whole by dcmread and cut inside its pixel data by the walk
        return stopped + 8, int.from_bytes(header[4:8], order)
    if (vr := header[4:6].decode("latin-1")) not in _known_vrs():
        # a VR pydicom does not know (a damaged 'OW', b"O@"), read by its generator with a 2-byte length: the file is
        # damaged, as _walk_plain tells it (v16: the walk told what followed that length as out of order, dcmread not)
        raise _no_valid_vr(tag, vr)
    return stopped + 8, int.from_bytes(header[6:8], order)


_MEDIA_STORAGE_DIRECTORY = b"1.2.840.10008.1.3.10"
_DICOMDIR_REMEDY = "the procedures' Images/ holds the images alone; leave it out of Images/"
IDENTIFYING_FILLED = "(filled; the value is not kept)"
_IDENTIFYING_KEYS = frozenset(IDENTIFYING_DICOM_TAGS)
_PSEUDONYM = re.compile(r"(?=[^0-9]*[0-9])[0-9A-Za-z._-]{1,64}")


_BLANK = "\x00 \t\r\n"  # what _dicom_text strips from a value


PIXELS_CUT = "the file ends inside its pixel data"


def _pixels_whole(head: bytes, f, at: tuple[int, int] | None) -> None:
    """Raise BadContent when the file (whose first bytes are `head`) ends before the pixel data its header declares
    (an interrupted copy: most of an image's bytes are its pixels, so most cut copies end there, and the header
    alone reads well); `at` is pixel_data_at(head). Only the file's size is asked, never its pixels; decided alike
    whichever path read the header."""
    if at is None:
        return
    if at[1] == UNDEFINED_LENGTH:  # encapsulated (JPEG, JPEG 2000, RLE...): its items' lengths say where it ends
        def read_at(offset: int, n: int) -> bytes:
            if offset + n <= len(head):
                return head[offset: offset + n]
            f.seek(offset)
            return _read_up_to(f, n)

        size = f.seek(0, io.SEEK_END)
        if not encapsulated_whole(read_at, at[0], size):
            raise BadContent(f"{PIXELS_CUT}: {size:,} bytes, and its compressed pixel data (encapsulated) stop "
                             "before their end (an interrupted copy?): copy the file again")
        return
    if sum(at) <= len(head):
        return
    size = f.seek(0, io.SEEK_END)
    if size < sum(at):
        raise BadContent(f"{PIXELS_CUT}: {size:,} bytes, but its header puts the pixel data's end at byte "
                         f"{sum(at):,} (an interrupted copy?): copy the file again")


def _nothing_after_pixels(head: bytes, f, end: int) -> None:
    """BadContent when an element of a group before the pixel data's follows them at `end` (little-endian). DICOM keeps
    a data set's elements in ascending tag order, and a header is read up to the pixel data: a file writing its image
    attributes (0028,xxxx: Rows, Columns...) after them was told as lacking them, though it holds them."""
    if end + 4 <= len(head):
        after = head[end: end + 4]
    elif f.seek(0, io.SEEK_END) < end + 4:  # (the file ends with its pixel data, as nearly all do: only its size asked)
        return
    else:  # (something after the pixels: the hashing worker's reader reads up to it, as hashing does anyway)
        f.seek(end)
        after = _read_up_to(f, 4)
    if len(after) == 4 and 0x0008 <= (group := int.from_bytes(after[:2], "little")) < 0x7FE0:  # (not zeros)
        element = int.from_bytes(after[2:4], "little")
        raise BadContent(f"its elements are out of order: ({group:04X},{element:04X}) follows the pixel data "
                         "(7FE0,0010), where DICOM keeps a data set's elements in ascending tag order and readers of "
                         "its header stop")


def _header_cut() -> BadContent:
    """A DICOM file that ends inside its header (made only then: an exception object for every header read was 2% of
    its parse)."""
    return BadContent("the file ends inside its DICOM header (an interrupted copy?): copy the file again")


class _Truncated(Exception):
    """The whole file was read and it ends inside an element."""


def _read_up_to(f, n: int) -> bytes:
    """`n` bytes of `f`, fewer only at its end (a raw or network stream may return less than asked)."""
    pieces = [f.read(n)]
    got = len(pieces[0])
    while pieces[-1] and got < n:  # (pieces joined once: `data += more` copied all read so far at each short read)
        more = f.read(n - got)
        if not more:  # the end: a file shorter than n (most: a 64 KiB DICOM file read for 256 KiB of header) is
            break  # its first read, not a join of it and b"", which copied it whole (a sixth of a DICOM header's parse)
        pieces.append(more)
        got += len(more)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# The first bytes of a DICOM file read for its header: what lies before the pixel data is rarely over a
# few KiB (vendors' private headers: tens of KiB); a header longer than this is read on (a file not plain: by dcmread).
DICOM_HEAD_BYTES = 256 * 1024
DICOM_HEAD_MAX_BYTES = 16 << 20  # ... read on up to this, doubling, while its header runs past what was read


def _dicom_elements_plain(head: bytes, *, complete: bool,
                          pixels_at: list[tuple[int, int]] | None = None) -> dict[int, Any] | None:
    """_walk_plain's elements (the one entry point, so that tests can send every file to dcmread): by
    dicom_walk's struct reading where it decides the file (most files: no pydicom import, ~10x faster),
    else by pydicom's generator. `pixels_at`: as dicom_walk.plain_elements (left empty by pydicom's)."""
    values = plain_elements(head, _DICOM_TAG_SET, complete=complete, pixels_at=pixels_at)
    if values is None and pixels_at:
        pixels_at.clear()  # (the walk did not decide the file: its pixel data are found again, by pixel_data_at)
    if values is not None:
        return values
    return _walk_plain(head, complete=complete, pixels_at=pixels_at)


def _valid_vrs(elements: Iterator[Any]) -> None:
    """BadContent naming the first of these raw elements (None: absent) whose VR pydicom does not know (None: implicit).

    pydicom's reader takes a VR that is two bytes from 'AA' to 'ZZ' (a damaged 'US', b"U\\x00") for one it does not
    know, with a 2-byte length; only its conversion of the value refuses it. dcmread's Dataset converts an element
    of no value (length 0) when it is asked for, so such a file was told as "cannot parse the file (NotImplementedError:
    Unknown Value Representation ...)", while the generator's path gave its facts, the element told as lacking; and
    one of a value gave its raw bytes as the attribute's text. Either way the file is damaged: told so on both (the
Pixel Data element's too, where each path stops: _walk_plain, _pixels_where_stopped)."""
    known = _known_vrs()
    for element in elements:
        if element is not None and (vr := element.VR) is not None and vr not in known:
            raise _no_valid_vr(int(element.tag), vr)


def _no_valid_vr(tag: int, vr: str) -> BadContent:
    from pydicom.datadict import keyword_for_tag

    name = f" {keyword}" if (keyword := keyword_for_tag(tag)) else ""
    return BadContent(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}){name} has no valid value representation (VR "
                      f"{vr!r}, not one of DICOM's): the file is damaged (bytes lost or changed, as an interrupted or "
                      f"faulty copy leaves them): copy or export the file again")


_PYDICOM_IMPORT = threading.Lock()
_pydicom_imported = False


def _import_pydicom() -> None:
    """Import pydicom and the parts of it read here, once, by one thread while any other waits. Headers of a remote
    source are read in threads; several of them importing pydicom at once met it half imported (Python's import
    locks break that cycle by handing out the partial module: "ImportError: cannot import name ... from partially
    initialized module 'pydicom...' (most likely due to a circular import)"), which was said as the file's content."""
    global _pydicom_imported
    if _pydicom_imported:
        return
    with _PYDICOM_IMPORT:
        if not _pydicom_imported:
            import pydicom  # noqa: F401
            import pydicom.charset  # noqa: F401
            import pydicom.dataelem  # noqa: F401
            import pydicom.errors  # noqa: F401
            import pydicom.filereader  # noqa: F401
            import pydicom.uid  # noqa: F401
            import pydicom.valuerep  # noqa: F401

            _pydicom_imported = True


def _walk_plain(head: bytes, *, complete: bool, pixels_at: list[tuple[int, int]] | None = None) -> dict[int, Any] | None:
    """The raw elements of _DICOM_TAGS in a plain DICOM Part 10 file whose first bytes are `head` (`complete`:
    the whole file), or None when the file is not plain.

    dcmread builds a Dataset of every element it reads (file meta included): ~0.6 ms a header, which
    made parsing DICOM headers most of a first run's time (issue 15; 6,390 headers of the realistic tree:
    0.62 -> 0.12 ms each). This reads the same elements with the generator dcmread itself reads them
    with (pydicom.filereader.data_element_generator, same flags, same stop before the pixel data), for
    the files whose reading needs none of dcmread's repairs: a 'DICM' prefix, an explicit-VR file meta
    group starting with its group length, a little-endian transfer syntax that is not deflated, no
    command set, a dataset whose first element agrees with that syntax, and a header within `head` (the
    generator skips an unwanted element by seeking past it, so a header running past `head` would end
    quietly there: unless `head` is the whole file, the pixel data must be reached within it).
    Any other file (and any error) is None: read by dcmread, so every file gets exactly its facts.
    Raises _Truncated when `head` is the whole file and it ends inside an element (dcmread reads such a
    file without a word: its header would look empty)."""
    _import_pydicom()
    from pydicom.charset import convert_encodings
    from pydicom.dataelem import RawDataElement, convert_raw_data_element
    from pydicom.filereader import data_element_generator

    if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        return None
    try:
        stream = io.BytesIO(head)
        stream.seek(132)
        meta = {element.tag: element for element in data_element_generator(
            stream, False, True, stop_when=lambda tag, vr, length: tag >> 16 != 2)}
        syntax = meta.get(TRANSFER_SYNTAX)
        # dcmread converts the meta group's first element (by tag) and the transfer syntax: plain when
        # both are what the prefix check saw and every element of the group has a VR pydicom knows
        if (syntax is None or syntax.VR != "UI" or not isinstance(syntax.value, bytes) or min(meta) != META_GROUP_LENGTH
                or meta[META_GROUP_LENGTH].VR != "UL" or any(element.VR not in _known_vrs() for element in meta.values())):
            return None
        implicit = _plain_syntaxes().get(syntax.value.decode("ascii").rstrip("\x00 "))
        if implicit is None:
            return None
        start = stream.tell()
        first = head[start: start + 6]
        if len(first) < 6 or first[:2] == b"\x00\x00":  # a command set, or (almost) nothing: dcmread decides
            return None
        if implicit == (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B):  # dcmread would switch (and warn)
            return None
        ends = [start]  # where the last element's value ends (the generator asks stop_when after each header)
        pixel_vr: list[tuple[int, str]] = []  # the Pixel Data's VR, where it is none that pydicom knows

        def stop_when(tag: int, vr: Any, length: int) -> bool:
            if tag in PIXEL_TAGS:
                if vr is not None and vr not in _known_vrs():  # (told below, after the elements before it)
                    pixel_vr.append((tag, vr))
                # (where the pixel data's value starts: the struct walk, which leaves this file to the generator, may
                # not reach them, and a file cut inside them read as whole)
                if pixels_at is not None:
                    pixels_at.append((stream.tell(), length))
                return True
            ends[0] = stream.tell() + (0 if length == 0xFFFFFFFF else length)
            return False

        elements = {element.tag: element for element in data_element_generator(
            stream, implicit, True, stop_when=stop_when, specific_tags=_DICOM_TAG_LIST)}
        if not complete and stream.tell() >= len(head):  # ended where `head` ends, not at the pixel data
            return None
        # The whole file, ending inside an element's header or value (the generator stops there without a word)
        if complete and stream.tell() >= len(head) and ends[0] != len(head):
            raise _Truncated
        if CHARACTER_SET in elements:  # read_dataset decodes it (the generator always reads it): so here
            convert_encodings(convert_raw_data_element(elements[CHARACTER_SET]).value)
    except _Truncated:
        raise
    except Exception:  # noqa: BLE001 - truncated within `head`, malformed: dcmread reads it and says what is wrong
        return None
    if not all(isinstance(element, RawDataElement) and isinstance(element.value, bytes | None)
               for element in elements.values()):
        return None
    # (as dcmread's path tells them: the struct walk decides no element of a VR that pydicom does not know)
    _valid_vrs(elements.values())
    if pixel_vr:
        raise _no_valid_vr(*pixel_vr[0])
    return elements


# read beside _DICOM_TAGS, of which only which are absent is kept (lacking): those of every image with pixel data, and
# those of each modality, as (tag, key)
_KEPT_BY_IMAGE = tuple((tag, key) for key, (_, tag, modalities) in RECOMMENDED_DICOM_TAGS.items() if modalities is None)
_KEPT_BY_MODALITY = {modality: tuple((tag, key) for key, (_, tag, modalities) in RECOMMENDED_DICOM_TAGS.items()
                                     if modalities is not None and modality in modalities)
                     for _, _, modalities in RECOMMENDED_DICOM_TAGS.values() for modality in modalities or ()}
_DICOM_TAG_LIST = sorted({*_DICOM_TAGS.values(), *(tag for _, tag, _ in RECOMMENDED_DICOM_TAGS.values()), SOP_CLASS_UID})
_DICOM_TAG_SET = frozenset(_DICOM_TAG_LIST)
_DICOM_TAG_ITEMS = tuple(_DICOM_TAGS.items())


@functools.cache
def _known_vrs() -> frozenset[str]:
    _import_pydicom()
    from pydicom.valuerep import VR

    return frozenset(str(vr) for vr in VR)


# Implicit and Explicit VR Little Endian, Explicit VR Big Endian (retired, still written), deflated, encapsulated
_COMMON_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", _DEFLATED,
                              *ENCAPSULATED_SYNTAXES})


@functools.cache
def _syntax_known(syntax: str) -> bool:
    """Whether `syntax` (as the File Meta group writes it, its pad stripped) is a transfer syntax of the DICOM
    standard, as pydicom's UID dictionary has them: nearly every file's is one of dicom_walk's, for which pydicom is
    not imported."""
    if syntax in _COMMON_SYNTAXES:
        return True
    _import_pydicom()
    from pydicom import uid

    # (the dictionary's, retired ones too: JPIP Referenced, 1.2.840.10008.1.2.4.94, is none that pydicom reads; not
    # UID(...).is_transfer_syntax, which warns of a value that is no UID)
    return (entry := uid.UID_dictionary.get(syntax)) is not None and entry[1] == "Transfer Syntax"


@functools.cache
def _plain_syntaxes() -> dict[str, bool]:
    """Transfer syntax UID -> implicit VR, for the little-endian, non-deflated syntaxes dcmread reads as such."""
    _import_pydicom()
    from pydicom import uid

    syntaxes = {str(uid.ImplicitVRLittleEndian): True, str(uid.ExplicitVRLittleEndian): False}
    for syntax in uid.AllTransferSyntaxes:
        if (syntax.is_encapsulated and syntax.is_little_endian and not syntax.is_deflated
                and syntax not in uid.PrivateTransferSyntaxes):
            syntaxes.setdefault(str(syntax), False)
    return syntaxes


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_CHECKBOX = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\[([ xX])\]\s*(.*)$")


# A label line of the procedure's SUBMISSION.md template ("Hospital name: ..."), its answer after the colon
_LABEL = re.compile(r"^\s{0,3}(?:[-*+]\s+)?(?:\*\*)?([A-Za-z][^:|<>]{2,300}?)(?:\*\*)?\s*:(?:\*\*)?\s*(.*)$")
_SETEXT = re.compile(r"^(?:=+|-+)$")  # (stripped lines: up to three spaces before it are allowed, and trailing)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_FENCED = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\1[`~]*[ \t]*$|\Z)", re.DOTALL | re.MULTILINE)
_PLACEHOLDER = re.compile(r"^(?:<[^>]*>?|_+|\.\.\.|tbd|n/?a)?$", re.IGNORECASE)


def _markdown_text(data: bytes) -> str:
    """A Markdown file's text: UTF-8, or UTF-16 that begins with its byte-order mark (Notepad's or Word's "Unicode"
    save of SUBMISSION.md: it was refused as "the file is UTF-16 text, not UTF-8", saying nothing of what to do; the
    mark says how to read it, as any editor or browser does). UTF-16 without the mark is told how to save it again."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) and not data.startswith(b"\xff\xfe\0\0"):  # (not UTF-32)
        if len(data) > MAX_TEXT_BYTES:
            raise BadContent(f"the file is larger than {MAX_TEXT_BYTES // (1024 * 1024)} MiB")
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise BadContent("the file begins with a UTF-16 byte-order mark but is not UTF-16 text (cut short, or "
                             "another encoding?): save it again as UTF-8") from None
        if _BINARY.search(text):
            raise BadContent("the file holds control characters (binary data?)")
        return text
    if _utf16(data):
        raise BadContent("the file is UTF-16 text without a byte-order mark, not UTF-8: save it again as UTF-8 "
                         "(in most editors: Save As, Encoding UTF-8)")
    return _text(data, "utf-8-sig")


def _markdown_facts(f) -> dict[str, Any]:
    """READINESS.md / SUBMISSION.md: the headings (with the template's labels that are answered: "Hospital name:
    General Hospital", or the answer on the next line), and the checklist items ticked and not (an item marked
    "(optional)" left unticked is not asked for)."""
    text = _markdown_text(_read_up_to(f, MAX_TEXT_BYTES + 1))
    headings, unchecked, checked = [], [], 0
    # What a reader of the rendered file does not see: HTML comments (a template's "<!-- - [ ] ... -->" is no item
    # left unticked) and fenced code blocks (an example, not the site's answer)
    raw_lines = _FENCED.sub("", _COMMENT.sub("", text)).splitlines()
    lines = [line.strip() for line in raw_lines]
    for i, line in enumerate(raw_lines):
        if heading := _HEADING.match(line):
            headings.append(heading.group(1))
        elif (lines[i] and _SETEXT.match(lines[i + 1] if i + 1 < len(lines) else "") and not _SETEXT.match(lines[i])
              and not _CHECKBOX.match(line)):
            # a setext heading, text underlined with = or - ("Hospital name\n-------------")
            headings.append(lines[i])
        elif box := _CHECKBOX.match(line):
            if box.group(1) == " ":
                if "(optional)" not in box.group(2).lower():
                    unchecked.append(box.group(2)[:120])
            else:
                checked += 1
        elif (label := _LABEL.match(line)) and _answered(label.group(2), next((n for n in lines[i + 1:] if n), "")):
            headings.append(label.group(1))
    variables, variable_gaps = _variables_table(lines)
    return {"headings": headings, "checked": checked, "unchecked": unchecked, "chars": len(text),
            "variables": variables, "variable_gaps": variable_gaps[:20], "n_variable_gaps": len(variable_gaps),
            "sample_edges": any(_SAMPLE_EDGE.search(line) for line in lines)}


# Waveform File Format 4.1: a stream-based submission says in SUBMISSION.md whether its start and end times are those
# of the start or end of the first and last samples; a text that names neither sample has not said it
_SAMPLE_EDGE = re.compile(r"\b(?:first|last|final)\s+(?:\w+\s+)?samples?\b", re.IGNORECASE)


_TABLE_ROW = re.compile(r"^\s{0,3}\|?(.*?)\|?\s*$")
_TABLE_RULE = re.compile(r"^\s{0,3}\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")
# SUBMISSION.md's table of variables (the template's "Variable name | Description | Data type | Unit"): Waveform File
# Format 4.1 asks "A description of each variable", "The data type for each variable", and the time units of "the
# variables representing the time of the samples" (units elsewhere only "where useful")
_VARIABLE_CELLS = {"description": "descri", "data type": "type", "unit": "unit"}
_TIME_VARIABLE = re.compile(r"time|stamp|epoch|clock", re.IGNORECASE)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", _TABLE_ROW.match(line).group(1))]


def _variables_table(lines: list[str]) -> tuple[int | None, list[str]]:
    """The variables SUBMISSION.md's table of variables describes, and the answers its rows leave out ("StartTime: data
    type"); (None, []) where it has no such table (its topic is then a section's, metadata.submission_sections)."""
    described: int | None = None
    gaps: list[str] = []
    for i in range(len(lines) - 1):
        if not (lines[i].startswith("|") and _TABLE_RULE.match(lines[i + 1]) and "-" in lines[i + 1]):
            continue
        header = [c.lower() for c in _cells(lines[i])]
        if not header or "variable" not in header[0]:
            continue
        where = {name: next((k for k, c in enumerate(header) if word in c), None)
                 for name, word in _VARIABLE_CELLS.items()}
        described = described or 0
        for line in lines[i + 2:]:
            if not line.startswith("|"):
                break
            cells = _cells(line)
            cell = lambda k: "" if k is None or k >= len(cells) else cells[k]  # noqa: E731
            filled = lambda k: bool(cell(k)) and not _PLACEHOLDER.match(cell(k))  # noqa: E731
            name = cells[0] if cells and filled(0) else ""
            if not name:
                continue  # (a blank row of the template)
            described += 1
            timed = _TIME_VARIABLE.search(name) or _TIME_VARIABLE.search(cell(where["description"]))
            lacking = [k for k in ("description", "data type") if where[k] is None or not filled(where[k])]
            if timed and (where["unit"] is None or not filled(where["unit"])):
                lacking.append("time unit")
            if lacking:
                gaps.append(f"{name[:60]}: {', '.join(lacking)}")
    return described, gaps


def _answered(answer: str, following: str) -> bool:
    """A template label's answer: text after its colon that is no placeholder (<...>, TBD), or else the next line's,
    where that is no heading, other label, or comment."""
    if answer.strip():
        return not _PLACEHOLDER.match(answer.strip())
    return not (not following or _HEADING.match(following) or following.startswith(("<", "-->"))
                or _PLACEHOLDER.match(following) or _LABEL.match(following))


def _table(f):
    """A small CSV (a mapping file, a registry) as a polars frame of strings, columns lower-cased."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    facts, raw, ended = _csv_header(f)
    columns = facts["columns"]
    if columns and columns[0].startswith("sep=") and len(columns) <= 2:  # (as checks_omop tells an OMOP table's)
        # Excel's "sep=;" line: read as a header of the names "sep=" and "", or split by its delimiter, which told
        # a registry's as lacking its columns, though they are on the next line
        raise BadContent(SEP_LINE_REASON)
    if facts["delimiter"] != ",":
        return facts, None
    if not any(columns):  # a byte-order mark alone, a blank line, commas only: not a header said to lack names
        raise BadContent("the first line is empty, not the column names: write the header row first")
    unnamed = [str(k + 1) for k, c in enumerate(columns) if not c]
    if len(unnamed) > 1:  # (one empty name is a column like any other; two are not "named twice")
        raise BadContent(f"the header row leaves {named('column', unnamed)} unnamed: name every column")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:  # (a frame cannot hold them: said here, not as the frame library's error)
        raise BadContent(f"the header names {named('column', twice)} more than once: keep one column of each name")
    if ended:  # only the header row, unterminated
        return facts, pl.DataFrame(schema={c: pl.String for c in facts["columns"]})
    f.seek(0)
    gate = _Gate(f)  # (NUL bytes told as such; pyarrow's read-ahead stopped before the caller reads on)
    try:
        table = pacsv.read_csv(gate.feed(), read_options=pacsv.ReadOptions(use_threads=False),
                               parse_options=pacsv.ParseOptions(newlines_in_values=True),
                               convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in raw}))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        # (the finding says which file it is: "cannot read this registry: <reason>", not the kind twice)
        raise BadContent(_arrow_failure(exc, gate, 1 << 20, raw)) from None
    finally:
        gate.close()
    if gate.nul:
        # pyarrow reads a NUL byte as any other character: in rows that parse (the zeros of a copy that did not finish,
        # one in a value: "\x001"), the registry's values were taken as written, told as other faults (a registry id
        # "not an integer", a trg_file naming no file) with nothing of the NUL bytes
        raise BadContent(_nul_where(table, facts["columns"]))
    # Column by column, each let go once taken: a registry of a million rows held it as Arrow, as a frame and as the
    # frame stripped at once (610 MiB of the reader's 773 before its facts were taken)
    stripped = []
    for k in range(table.num_columns):
        stripped.append(pl.Series(str(k), table.column(0)).str.strip_chars())
        table = table.remove_column(0)
        pa.default_memory_pool().release_unused()  # (its allocator keeps what was let go for Arrow's next use)
    frame = pl.DataFrame(stripped)
    frame.columns = facts["columns"]
    return facts, frame


def _mapping_facts(f) -> dict[str, Any]:
    """A waveform mapping CSV: its columns, the rows whose values the procedure would not accept, and the signals
    it maps (signal_id, sampling_rate, units: checked against the WFDB headers of its category)."""
    facts, frame = _table(f)
    if frame is None or not all(c in frame.columns for c in MAPPING_COLUMNS):
        return facts
    rate = pl.col("sampling_rate").cast(pl.Float64, strict=False)
    given = [(pl.col(c).fill_null("") != "") if c in frame.columns else pl.lit(False)
             for c in ("timestamp_id", "start_time", "end_time")]
    problems = frame.with_row_index("row", offset=2).select(
        "row", "signal_id",
        no_id=pl.col("signal_id").fill_null("") == "",
        bad_rate=rate.is_null() | rate.is_nan() | rate.is_infinite() | (rate <= 0),
        bad_label=~pl.col("standardized_label").fill_null("").str.starts_with("MDC_"),
        # "units: a string giving the units of the channel"
        no_units=pl.col("units").fill_null("") == "",
        # the time variable(s) of the row: timestamp_id (pair-based), or start_time and end_time (stream-based)
        no_time=~(given[0] | (given[1] & given[2])),
    ).filter(pl.col("no_id") | pl.col("bad_rate") | pl.col("bad_label") | pl.col("no_units") | pl.col("no_time"))
    signals = frame.filter(pl.col("signal_id").fill_null("") != "").select(
        "signal_id", sampling_rate=rate, units=pl.col("units").fill_null(""))
    facts.update(rows=frame.height, no_id=int(problems["no_id"].sum()), bad_rate=int(problems["bad_rate"].sum()),
                 bad_label=int(problems["bad_label"].sum()), no_units=int(problems["no_units"].sum()),
                 no_time=int(problems["no_time"].sum()),
                 examples=[f"row {r}: {s}" for r, s in problems.head(5).select("row", "signal_id").iter_rows()],
                 signals=signals.to_dicts())
    return facts


# A cell that is NULL written as text (see _registry_facts), in any letter case: matched as it is, not lower-cased (a
# lower-cased copy of every cell of a 1M-row registry took a second)
_NULL_CELLS = sorted({"".join(c) for c in itertools.product(*zip("null", "NULL"))} | {"\\n", "\\N"})


@functools.cache
def _null_cells() -> Any:
    """_NULL_CELLS as a pyarrow string array, built from its bytes (pa.array of Python strings imports pandas, 0.4 s)."""
    import pyarrow as pa

    data = [c.encode() for c in _NULL_CELLS]
    offsets = list(itertools.accumulate(map(len, data), initial=0))
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(struct.pack(f"<{len(offsets)}i", *offsets)),
                                                          pa.py_buffer(b"".join(data))])


def _null_as_empty(values: Any) -> Any:
    """A pyarrow string array with its cells written NULL (_NULL_CELLS) empty. (A hash look-up: a regular expression
    matched on each cell took 0.4 s of CPU per 5M cells, 40% of reading visit_occurrence.csv.)"""
    import pyarrow.compute as pc

    return pc.if_else(pc.is_in(values, value_set=_null_cells()), pc.utf8_slice_codeunits(values, 0, 0), values)
# Multimodal-Linkage: trg_file is the delivered file's "Name and path", and the release root may be "a dated release
# directory" or any name: a path written from the machine's or the release's root is cut to the site's own, from the
# person folder before the last Waveforms/ or Images/ folder (any case: v1.0 wrote waveforms/; the last: the release's
# own path may hold such a folder, /mnt/Images/release/<person>/Images/..., a site's not)
_TO_PERSON_FOLDER = r"^(?:[^/]*/)*([^/]+/(?i:waveforms|images)/)"
# ... which changes only a path with such a folder after two others (a test without captures: the cut itself, run
# on every row of a 1M-row registry, took 2 s of its 7)
_CUT_BEFORE = r"(?i)/[^/]+/(?:waveforms|images)/"


def _registry_facts(f) -> dict[str, Any]:
    """A linkage registry CSV: its columns, and what the cross-checks need (one row per file). Each fact is taken
    from the distinct values where it can be (a registry has a row per file: a million rows at a large site;
    benchmarks/registry_benchmark.py)."""
    facts, frame = _table(f)
    # The Imaging SOP's image_registry spells one column "visit_ id" (its CREATE TABLE and its CSV header labels): a
    # site that copied it wrote the linkage procedure's visit_id
    names = [re.sub(r"\s*_\s*", "_", c) for c in facts["columns"]]
    if len(set(names)) == len(names):
        facts["columns"] = names
        if frame is not None:
            frame.columns = names
    if frame is None or not all(c in frame.columns for c in REGISTRY_COLUMNS):
        return facts
    frame = frame.select([c for c in (*REGISTRY_COLUMNS, "image_registry_id") if c in frame.columns])
    # The header row again below the first line (two registries pasted into one file: `cat a.csv b.csv`): told with
    # its lines (registry.unreadable) and left out of the rows, which were told "trg_file names no file (e.g.
    # trg_file)", "visit_id visit_id is not in visit_occurrence.csv", a proc_id that is no integer, ...
    header = pl.all_horizontal([pl.col(c).fill_null("").str.strip_chars().str.strip_chars('\ufeff"').str.strip_chars()
                                .str.to_lowercase() == c for c in REGISTRY_COLUMNS])
    repeated = frame.with_row_index("_line", offset=2).filter(header)["_line"]
    facts.update(n_header_rows=repeated.len(), header_rows=repeated.head(5).cast(pl.String).to_list())
    if repeated.len():
        frame = frame.filter(~header)
    # A NULL written as text is an empty cell: the Imaging SOP's trg_file is "blank or null" (its example writes
    # null), visit_id is left NULL where no visit overlaps; SQL exports write NULL, MySQL's (its CREATE TABLE) \N
    said_null = [c for c, n in frame.select(pl.all().is_in(_NULL_CELLS).any()).row(0, named=True).items() if n]
    frame = frame.with_columns(pl.when(~pl.col(said_null).is_in(_NULL_CELLS)).then(pl.col(said_null))) if said_null \
        else frame
    trg = frame["trg_file"].fill_null("").str.replace_all("\\", "/", literal=True).str.strip_prefix("./") \
        .str.strip_chars_start("/")
    cut = trg.str.contains(_CUT_BEFORE)
    if cut.any():
        trg = trg.scatter(cut.arg_true(), trg.filter(cut).str.replace(_TO_PERSON_FOLDER, "${1}"))
    person = pl.col("person_id").fill_null("").str.strip_chars().str.strip_chars('"')
    when = pl.col("datetime").fill_null("")
    # Multimodal-Linkage: datetime a timestamp, "yyyy-MM-dd HH:mm:ss" as the Imaging SOP writes it, or as its example
    # registry writes it (8/18/2022 22:41:11: it was told as not a datetime, and its rows' visits went unchecked)
    frame = frame.with_columns(trg_file=trg, _captured=capture_moment(when))
    given_trg = trg.filter(trg != "")
    trg_files = given_trg.unique()
    duplicated = (given_trg.filter(given_trg.is_duplicated()).unique() if trg_files.len() < given_trg.len()
                  else given_trg.clear()).sort()
    given_id = pl.col("file_id").fill_null("").str.strip_chars() != ""
    file_ids = frame.filter(given_id)["file_id"]
    duplicate_ids = (file_ids.filter(file_ids.is_duplicated()).unique() if file_ids.n_unique() < file_ids.len()
                     else file_ids.clear()).sort()
    pairs = frame.filter((pl.col("visit_id").fill_null("") != "") & (pl.col("person_id").fill_null("") != "")).select(
        pl.col("visit_id").str.strip_chars(), pl.col("person_id").str.strip_chars().str.strip_chars('"')).unique()
    facts.update(
        rows=frame.height,
        duplicate_files=duplicated.head(20).to_list(), n_duplicate_files=duplicated.len(),
        # (an empty file_id is told as empty, registry.values: not as one file_id on many rows)
        n_duplicate_ids=duplicate_ids.len(), duplicate_ids=duplicate_ids.head(3).to_list(),
        no_src=frame.select((pl.col("src_file").fill_null("") == "").sum()).item(),
        no_trg=trg.len() - given_trg.len(),
        person_id=frame.filter(pl.col("person_id").fill_null("") != "")["person_id"].unique().sort().to_list(),
        visit_id=frame.filter(pl.col("visit_id").fill_null("") != "")["visit_id"].unique().sort().to_list(),
        # the persons given to each visit (registry.visit_person), as [visit_id, person_id] pairs
        visit_persons=pairs.select(pl.concat_list("visit_id", "person_id")).to_series().sort().to_list(),
        trg_file=trg_files.sort().to_list(),
        # the integer proc_ids, compared with procedure_occurrence.csv's (registry.proc_overlap)
        proc_ids=frame["proc_id"].drop_nulls().unique().str.strip_chars().str.extract(BIGINT)
        .cast(pl.Int64).drop_nulls().unique().sort().to_list(),
    )
    # a proc_id becomes one PROCEDURE_OCCURRENCE row, of one person (registry.proc_conflict)
    people = pl.col("person_id").fill_null("").str.strip_chars('"')
    split = (frame.filter((pl.col("proc_id").fill_null("") != "") & (people != "")).select("proc_id", _p=people)
             .unique().group_by("proc_id").agg(_n=pl.col("_p").str.replace(r"^0+(\d)", "${1}").n_unique())
             .filter(pl.col("_n") > 1))
    facts.update(n_proc_persons=split.height, proc_persons=split["proc_id"].sort().head(5).to_list())
    # each integer proc_id's person(s), as [proc_id, person_id] pairs (registry.procedure_person)
    facts.update(proc_person_pairs=frame.select(
        _proc=pl.col("proc_id").fill_null("").str.strip_chars(), _person=people.str.strip_chars()).unique()
        .filter(pl.col("_proc").str.contains(BIGINT) & (pl.col("_person") != ""))
        .sort("_proc", "_person").select(pl.concat_list("_proc", "_person")).to_series().to_list())
    # and its visit(s), as [proc_id, visit_id] pairs, "" for a row that leaves visit_id empty (registry.procedure_visit)
    facts.update(proc_visit_pairs=frame.select(
        _proc=pl.col("proc_id").fill_null("").str.strip_chars(),
        _visit=pl.col("visit_id").fill_null("").str.strip_chars().str.strip_chars('"')).unique()
        .filter(pl.col("_proc").str.contains(r"^[0-9]{1,18}$"))
        .sort("_proc", "_visit").select(pl.concat_list("_proc", "_visit")).to_series().to_list())
    # Multimodal-Linkage: proc_id "integer or bigint" (it becomes procedure_occurrence_id); datetime a timestamp.
    # An empty cell is told apart from a wrong value (the fix differs: fill it in, not reformat it).
    # person_id too: the procedure's person (Multimodal-Linkage: "integer or bigint"; the Imaging SOP: NOT NULL)
    # and visit_id, a visit_occurrence_id (integer or bigint). An integer written as a decimal (1.0, as pandas writes
    # an integer column with empty cells) or in scientific notation (1.01e2, as a spreadsheet writes a large number) is
    # not counted here: the rules comparing ids tell it, with its fix
    proc = pl.col("proc_id").fill_null("")
    visit = pl.col("visit_id").fill_null("").str.strip_chars().str.strip_chars('"')

    def not_integer(cell: pl.Expr) -> pl.Expr:
        return (cell != "") & ~cell.str.contains(BIGINT) & ~cell.str.contains(AS_NUMBER)

    # group_id: the session or accession that links a row's files "together via session/accession" (Multimodal-Linkage;
    # the Imaging SOP's registry has it NOT NULL); its type is not asked (the one says string, the other integer)
    group = (pl.col("group_id").fill_null("").str.strip_chars().str.strip_chars('"') if "group_id" in frame.columns
             else pl.lit("x"))  # (a registry without the column is registry.columns')
    faults = ("no_file", "no_proc", "bad_proc", "no_person", "bad_person", "no_group", "bad_visit", "no_datetime",
              "bad_datetime")
    bad = frame.with_row_index("row", offset=2).select(
        "row", no_file=~given_id, no_proc=proc == "", bad_proc=(proc != "") & ~proc.str.contains(BIGINT), no_person=person == "",
        bad_person=not_integer(person), no_group=group == "", bad_visit=not_integer(visit),
        no_datetime=when == "",
        bad_datetime=(when != "") & pl.col("_captured").is_null(),
    ).filter(pl.any_horizontal(faults))
    facts.update({key: int(bad[key].sum()) for key in faults}, n_bad_rows=bad.height,
                 bad_rows=bad["row"].head(5).cast(pl.String).to_list())
    # each visit_id's first and last capture time, as [visit_id, first, last] (registry.visit_time: Multimodal-Linkage's
    # visit is the one "that overlaps with the timestamp of the file capture")
    facts.update(visit_times=frame.select(_visit=pl.col("visit_id").fill_null("").str.strip_chars(), _when="_captured")
                 .filter((pl.col("_visit") != "") & pl.col("_when").is_not_null())
                 .group_by("_visit").agg(_first=pl.col("_when").min(), _last=pl.col("_when").max()).sort("_visit")
                 .select(pl.concat_list("_visit", *(pl.col(c).dt.strftime(STAMP) for c in ("_first", "_last"))))
                 .to_series().to_list())
    # the capture times of the rows that leave visit_id empty, as distinct [person_id, time] pairs (registry.visit_missing:
    # Multimodal-Linkage leaves it NULL only "IF there is no visit for that patient that overlaps" the capture time)
    facts.update(unvisited_times=frame.select(_visit=pl.col("visit_id").fill_null("").str.strip_chars(),
                                              _person=person.str.strip_chars(), _when="_captured")
                 .filter((pl.col("_visit") == "") & (pl.col("_person") != "") & pl.col("_when").is_not_null())
                 .select("_person", "_when").unique()
                 .select(pl.concat_list("_person", pl.col("_when").dt.strftime(STAMP))).to_series().sort().to_list())
    # Multimodal-Linkage: a row's person_id "should also match the name of that files parent directory" (the person
    # folder trg_file lies in); digits-only ids compared without leading zeros, as person.csv's are (a row whose
    # folder is its person_id as written is not compared again)
    def norm(e: pl.Expr) -> pl.Expr:
        return pl.when(e.str.contains(r"^\d+$")).then(e.str.replace(r"^0+(\d)", "${1}")).otherwise(e)
    folder = pl.col("trg_file").str.extract(r"^([^/]+)/", 1)
    other = frame.with_row_index("row", offset=2).select("row", _folder=folder, _person=people).filter(
        pl.col("_folder").is_not_null() & (pl.col("_person") != "") & (pl.col("_folder") != pl.col("_person"))).filter(
        norm(pl.col("_folder")) != norm(pl.col("_person")))
    facts.update(n_other_person=other.height, other_person_rows=other["row"].head(5).cast(pl.String).to_list())
    # rows that leave trg_file blank (the Imaging SOP's image registry: "populated centrally") say not which file they
    # are: the rows of each person, as [person_id, count] pairs, are counted against the person's files
    facts.update(blank_trg_persons=frame.filter(pl.col("trg_file") == "")
                 .group_by(_person=people.str.strip_chars()).len().sort("_person")
                 .select(pl.concat_list("_person", pl.col("len").cast(pl.String))).to_series().to_list())
    facts.update(_registry_id_facts(frame))
    return facts


def _registry_id_facts(frame: pl.DataFrame) -> dict[str, Any]:
    """The Imaging SOP's image_registry_id, where a registry has it: the table's PRIMARY KEY, NOT NULL, a "sequential
    integer value" (AUTO_INCREMENT): rows with it empty, not an integer, repeated, or not above the ids of the rows
    before it (registry.image_registry_id, registry.image_registry_order). A registry without it: nulls."""
    if "image_registry_id" not in frame.columns:
        return {}
    cell = pl.col("image_registry_id").fill_null("")
    number = cell.str.extract(BIGINT).cast(pl.Int64)
    rows = frame.with_row_index("row", offset=2).select("row", _id=number, no=cell == "", bad=(cell != "") & number.is_null())
    ids = rows.filter(pl.col("_id").is_not_null())
    repeated = ids.filter(pl.col("_id").is_duplicated())
    # once: an id repeated is told as repeated, not again as out of sequence
    unordered = ids.filter(~pl.col("_id").is_duplicated()).filter(pl.col("_id") <= pl.col("_id").cum_max().shift(1))
    faulty = pl.concat([rows.filter(pl.col("no") | pl.col("bad"))["row"], repeated["row"]]).unique().sort()
    return {"no_registry_id": int(rows["no"].sum()), "bad_registry_id": int(rows["bad"].sum()),
            "dup_registry_id": repeated["_id"].n_unique(), "registry_id_rows": faulty.head(5).cast(pl.String).to_list(),
            "n_registry_id_rows": faulty.len(),
            "unordered_registry_id": unordered.height,
            "unordered_registry_rows": unordered["row"].head(5).cast(pl.String).to_list()}


def _records_facts(f) -> dict[str, Any]:
    # utf-8-sig: a RECORDS file saved by a Windows editor begins with a byte-order mark, which was read as part of the
    # first record's name (records.absent: "lists record \ufeff3004 but its header is not on the site", of one that is)
    text = _read_text(f, "utf-8-sig", limit=MAX_RECORDS_BYTES, too_large=RECORDS_TOO_LARGE)
    lines = [line.strip() for line in text.splitlines()]
    # (a file of one endless line, binary-free text that is no RECORDS file: its "name" was kept whole in the facts
    # and quoted whole in a finding, 100 MB of it)
    longest = max(range(len(lines)), key=lambda k: len(lines[k]), default=None)
    if longest is not None and len(lines[longest]) > MAX_RECORD_NAME:
        raise BadContent(f"line {longest + 1:,} is {len(lines[longest]):,} characters long, more than a record name "
                         f"(a path of at most {MAX_RECORD_NAME:,})")  # (records.unreadable says what to write)
    return {"records": [line for line in lines if line and not line.startswith("#")]}


MAX_RECORD_NAME = 4096  # (Linux's PATH_MAX: a record named by its path from the RECORDS file's folder)


_EDF_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_EDF_FIX = "export the recording again as EDF (or EDF+/BDF) with its start date and time"


# The fixed header's fields (EDF spec) as (name, first byte, end): where a byte not ASCII lies
_EDF_WIDTHS = (("version", 8), ("local patient", 80), ("local recording", 80), ("start date", 8), ("start time", 8),
               ("header length", 8), ("reserved", 44), ("number of data records", 8), ("data record duration", 8),
               ("number of signals", 4))
_EDF_FIELDS = tuple((name, sum(w for _, w in _EDF_WIDTHS[:i]), sum(w for _, w in _EDF_WIDTHS[:i + 1]))
                    for i, (name, _) in enumerate(_EDF_WIDTHS))


def _edf_facts(f) -> dict[str, Any]:
    """An EDF (EDF+, BDF) file's header: the recording's start (the waveform registry's capture time of the session)
    and length, from the fixed 256-byte ASCII part, and its signals (label, physical dimension, sampling rate: the
    mapping file's signal_id, units and sampling_rate) from the ns x 256 bytes that follow. No library of the project
    reads EDF; the fields are fixed-width (EDF spec: version 8 bytes, patient 80, recording 80, start date dd.mm.yy 8,
    start time hh.mm.ss 8, header bytes 8, reserved 44, data records 8, record duration 8, signals (ns) 4; then each
    field for all ns signals in turn: label 16, transducer 80, physical dimension 8, physical minimum 8, maximum 8,
    digital minimum 8, maximum 8, prefiltering 80, samples per data record 8, reserved 32)."""
    head = _read_up_to(f, 256)
    _compressed(head)
    if len(head) < 256:
        raise BadContent(f"the file is {len(head)} bytes, shorter than the 256-byte EDF header: the copy is cut or "
                         f"this is no EDF file; {_EDF_FIX}")
    if head[:8] not in (b"0       ", b"\xffBIOSEMI"):
        raise BadContent(f"its version field (the first 8 bytes) is {head[:8]!r}, not EDF's '0' and 7 spaces nor BDF's "
                         f"byte 0xFF and 'BIOSEMI': this is no EDF file, or its writer does not keep to the EDF spec (EDF readers "
                         f"refuse it); {_EDF_FIX}")
    try:
        text = head[8:].decode("ascii")
    except UnicodeDecodeError as exc:
        # which field (never its value: the patient field of a file not de-identified holds a name)
        at = 8 + exc.start
        name, first, last = next((n, a, b) for n, a, b in _EDF_FIELDS if a <= at < b)
        hint = "; a name with an accent? a de-identified EDF+ file's is 'X X X X'" if name.endswith("patient") else ""
        raise BadContent(f"the header's {name} field (bytes {first + 1}-{last}) holds a byte that is not ASCII, as "
                         f"EDF's header must not (byte {at + 1}: 0x{head[at]:02X}{hint}): EDF readers refuse the file; "
                         f"write the field in ASCII, or {_EDF_FIX}") from None
    recording, day, clock, reserved = text[80:160], text[160:168], text[168:176], text[184:228]
    edf_plus = reserved.startswith(("EDF+C", "EDF+D"))
    # EDF: yy 85-99 is 19yy, 00-84 20yy; EDF+ writes the whole year in the recording field ("Startdate 02-MAR-2002";
    # the fixed field's year is then "yy" after 2084), or "Startdate X" where the date is not known (de-identified):
    # then the fixed field is a placeholder
    words = recording.split()
    stated = re.fullmatch(r"\d{2}-([A-Z]{3})-(\d{4})", words[1]) if edf_plus and words[:1] == ["Startdate"] and len(
        words) > 1 else None
    year_stated = int(stated.group(2)) if stated and stated.group(1) in _EDF_MONTHS else None
    known = not (edf_plus and words[:2] == ["Startdate", "X"])
    parts = re.split(r"[.:]", day) + re.split(r"[.:]", clock)
    if len(parts) == 6 and parts[2] == "yy" and year_stated is not None:
        parts[2] = "00"
    fields = [int(x) if x.isdigit() else None for x in parts]
    if len(fields) != 6 or None in fields:
        raise BadContent(f"the start date and time are {day!r} {clock!r}, not dd.mm.yy hh.mm.ss; {_EDF_FIX}")
    dd, mm, yy, hh, mi, ss = fields
    year = year_stated or (1900 + yy if yy >= 85 else 2000 + yy)  # type: ignore[operator]
    try:
        start = datetime(year, mm, dd, hh, mi, ss)  # type: ignore[arg-type]
    except ValueError:
        raise BadContent(f"the start date and time {day} {clock} are no real date and time; {_EDF_FIX}") from None
    records, seconds = text[228:236].strip(), text[236:244].strip()
    count = int(records) if re.fullmatch(r"-?[0-9]+", records) else None
    try:
        duration = count * float(seconds) if count is not None and count >= 0 else None  # (-1: still being recorded)
    except ValueError:
        duration = None
    signals, per_record = _edf_signals(f, text, seconds)
    # The file's size as the header gives it (EDF spec: the header, then the data records, each holding every signal's
    # samples per data record as 2-byte integers, 3-byte in BDF): a copy cut inside its data records (most of an
    # EDF's bytes) read as whole (the header alone reads well). Not where the number of data records is -1 (still
    # being recorded) or not a number: only the file's size is asked, never its data.
    size = 256 + 256 * len(signals) + int(records) * per_record * (3 if head[:1] == b"\xff" else 2) \
        if records.isdigit() and per_record is not None else None
    if size is not None and size >= 1 << 63:  # (digits no file has: the size is the header's nonsense, not kept)
        size = None
    # `records`: the number of data records as the header states it; -1 ("unknown") the EDF spec allows only while
    # the file is being recorded (checks_waveforms._edf tells a delivered one: an unfinished recording)
    return {"start_date": start.date().isoformat() if known else None,
            "start_time": start.time().isoformat() if known else None,
            "duration_s": duration, "edf_plus": edf_plus,
            "records": count, "signals": signals, "implied_size": size}


# The EDF spec's widths of a signal's fields, each written for all ns signals in turn
_EDF_SIGNAL_FIELDS = (("label", 16), ("transducer", 80), ("units", 8), ("physical_min", 8), ("physical_max", 8),
                      ("digital_min", 8), ("digital_max", 8), ("prefiltering", 80), ("samples", 8), ("reserved", 32))


def _edf_signals(f, text: str, seconds: str) -> tuple[list[dict[str, Any]], int | None]:
    """The signals of an EDF header's ns x 256 bytes after its fixed 256 (`text`: the fixed header after its version):
    label, physical dimension (units) and sampling rate (samples per data record / the record's duration; None where
    the duration is 0, as an annotations-only EDF+ file may have). The signal header is ASCII; one written in Latin-1
    ("µV") is read so rather than refused: the start time before it is good. With them, the samples a data record
    holds (of all signals; None where one signal's number is not an integer)."""
    n_field, bytes_field = text[244:248].strip(), text[176:184].strip()
    if not n_field.isdigit():
        raise BadContent(f"the header's number of signals is {n_field!r}, not an integer; {_EDF_FIX}")
    ns = int(n_field)
    length = 256 * (ns + 1)
    if not bytes_field.isdigit() or int(bytes_field) != length:
        raise BadContent(f"the header gives its length as {bytes_field!r} bytes, but its {ns} signal{'s' * (ns != 1)} "
                         f"make it {length} (256 + 256 per signal): the header is damaged; {_EDF_FIX}")
    block = _read_up_to(f, length - 256)
    if len(block) < length - 256:
        raise BadContent(f"the file is {256 + len(block)} bytes, cut inside its header of {length} bytes (256 + 256 for "
                         f"each of its {ns} signals): the copy is cut (an interrupted copy?); copy the file again")
    cells: dict[str, list[str]] = {}
    at = 0
    for name, width in _EDF_SIGNAL_FIELDS:
        cells[name] = [block[at + i * width: at + (i + 1) * width].decode("latin-1").strip() for i in range(ns)]
        at += ns * width
    try:
        duration = float(seconds)
    except ValueError:
        duration = 0.0
    signals = []
    for i in range(ns):
        samples = cells["samples"][i]
        rate = int(samples) / duration if samples.isdigit() and duration > 0 else None
        signals.append({"label": cells["label"][i], "units": cells["units"][i], "fs": rate})
    counts = cells["samples"]
    return signals, sum(map(int, counts)) if all(n.isdigit() for n in counts) else None


_LINE_END = re.compile(rb"\r\n?|\n")
# A spreadsheet's "Unicode text" (or a PowerShell redirect) writes UTF-16: every other byte of ASCII text is NUL, which
# is not the zeros of an unfinished copy and wants another remedy
UTF16_REASON = "the file is UTF-16 text, not UTF-8: save or export it again as CSV UTF-8"


def _utf16(data: bytes) -> bool:
    """UTF-16 (or UTF-32) text: a byte-order mark, or NUL in every other byte of the first characters."""
    head = data[:64]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    head = head[: len(head) // 2 * 2]
    even, odd = head[0::2], head[1::2]
    # ASCII text as UTF-16LE: NUL in every odd byte and in no even one (BE the reverse); a copy cut after a byte or two
    # leaves zeros in both
    return len(head) >= 8 and ((odd.count(0) == len(odd) and 0 not in even) or (even.count(0) == len(even) and 0 not in odd))


# The delimiters a header row may be split by (a site's export tool: Excel's "CSV" in a locale with a decimal comma
# writes semicolons, "Text (tab delimited)" tabs, a database's export pipes): the one split most often wins, commas
# on a tie
_DELIMITERS = (",", "\t", ";", "|")


def _record(delimiter: str, strict: bool = False) -> re.Pattern:
    """A CSV record's fields as the csv module and pyarrow read them (bytes): a field quoted from its start (a quote
    inside it doubled, line ends kept, what follows its closing quote up to the delimiter part of it) or not (its
    quotes are characters like the others). A quote opened and not closed ends the match before it. `strict`: quotes
    as a writer of that delimiter writes them only: around a whole field (its closing quote followed by the delimiter
    or the line end), none in a field not quoted."""
    d = re.escape(delimiter.encode())
    if strict:
        field = rb'(?:"(?:[^"]|"")*"(?=' + d + rb'|[\r\n]|\Z)|[^"' + d + rb'\r\n]*)'
    else:
        field = rb'(?:"(?:[^"]|"")*"[^' + d + rb'\r\n]*|(?!")[^' + d + rb'\r\n]*)'
    return re.compile(field + rb"(?:" + d + field + rb")*")


_RECORDS = {d: (_record(d), _record(d, strict=True)) for d in _DELIMITERS}


def _header_record(data: bytes) -> tuple[dict[str, tuple[int, bool, int]], bool]:
    """Per delimiter, where the header record (`data`'s first) ends, whether its quotes are those of a writer of that
    delimiter (each closing quote followed by it or the line end: '"person_id";"gender, as told"' is two quoted
    names split by a semicolon, not a name '"person_id";"gender' and a comma) and how many times it is split by the
    delimiter (outside quotes); and whether the record of one of them runs on past `data` (a quote not closed yet:
    its end is -1)."""
    found, open_quote = {}, False
    for d, (record, strict) in _RECORDS.items():
        m = record.match(data)  # (None: a quote opened first, not closed)
        end = m.end() if m else 0
        if end < len(data) and data[end:end + 1] not in (b"\r", b"\n"):  # a quote opened and not closed in `data`
            open_quote, end = True, -1
        # (the delimiters outside quotes: those the csv module splits the record by)
        splits = len(next(csv.reader([data[:end].decode("latin-1")], delimiter=d))) - 1 if 0 < end <= MAX_CSV_HEADER_BYTES \
            else 0
        clean = strict.match(data)
        found[d] = (end, end >= 0 and clean is not None and clean.end() == end, splits)
    return found, open_quote


_LINE_BREAK = re.compile(r"\r\n?|\n")
# (a header row's names are read with the csv module: one name as long as the row is, not its 128 KiB, is refused
# by the row's limit, said as such, not as the csv module's "field larger than field limit")
csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_HEADER_BYTES + 1))


def _csv_header(f) -> tuple[dict[str, Any], list[str], bool]:
    """The facts of a CSV's header row, its column names as written (for pyarrow), and whether the file ends with
    that row unterminated: a header row without rows nor newline, which pyarrow refuses ("Empty CSV file")."""
    # A line ends at LF, CRLF or a CR alone (classic Mac OS line ends, as some spreadsheet exports still write them;
    # pyarrow reads all three): a file of CR-ended lines was one endless first line, handed whole to the csv module
    # ("new-line character seen in unquoted field"), or, under 1 MiB, a header row without rows.
    # The header row is a CSV record, as pyarrow reads it: a delimiter or a line end inside a quoted name is part of
    # the name (its delimiter was guessed from every comma of the line, quoted or not: "gender, as told" in a
    # semicolon-delimited header made it comma-delimited; a quoted line end cut the header row in two).
    data, more = b"", True
    while len(data) <= MAX_CSV_HEADER_BYTES:
        chunk = f.read(64 * 1024)
        if not chunk:
            more = False
            break
        data += chunk
        if _LINE_END.search(data) and not _header_record(data.removeprefix(b"\xef\xbb\xbf"))[1]:
            break
    if not data:
        raise BadContent("the file is empty (no header row)")
    _compressed(data)
    if _utf16(data):
        raise BadContent(UTF16_REASON)
    body = data.removeprefix(b"\xef\xbb\xbf")  # (pyarrow passes over a byte-order mark: one)
    found, open_quote = _header_record(body)
    if b"\0" in body[:max([end for end, _, _ in found.values()] + [0]) if not open_quote else len(body)]:
        raise BadContent(NUL_REASON)  # (a copy that did not finish before its first line: zeros only)
    delimiter = max(_DELIMITERS, key=lambda d: (found[d][1], found[d][2], d == ","))
    if found[delimiter][2] == 0:  # one name: no delimiter told (a quote left open hid the commas after it)
        delimiter = ","
    end = found[delimiter][0]
    if end < 0:
        raise BadContent("the header row opens a quote that is not closed (a column name's closing quote is "
                         "missing): close it, or write the names without quotes")
    if end > MAX_CSV_HEADER_BYTES:
        raise BadContent(f"the first line is longer than {MAX_CSV_HEADER_BYTES // 1024} KiB: not a CSV header row")
    if end == len(body) and more:  # (the header row ends where the bytes read do: does the file?)
        more = bool(f.read(1))
    line, ended = body[:end], end == len(body) and not more
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadContent("the header row is not UTF-8 text") from None
    if _BINARY.search(text.replace("\r", "").replace("\n", "")):
        raise BadContent("the header row holds control characters (binary data?)")
    raw = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)) if text else []
    # (a second byte-order mark, as a tool that adds one to a file that had one writes it: not part of the name; a
    # line end inside a name read as a space, as _csv_joined reads a value's)
    columns = [_LINE_BREAK.sub(" ", c.lstrip("\ufeff" if k == 0 else "")).strip().strip('"').strip().lower()
               for k, c in enumerate(raw)]
    return {"columns": columns, "delimiter": delimiter}, raw, ended


# What polars' str.strip_chars() strips (Rust's char::is_whitespace): Python's str.strip() would also strip \x1c-\x1f.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"


def _up_to(limit: str) -> str:
    """A regular expression of the digit strings of len(limit) digits not above `limit`."""
    alternatives = [limit[:k] + f"[0-{int(d) - 1}]" + (f"[0-9]{{{len(limit) - k - 1}}}" if k < len(limit) - 1 else "")
                    for k, d in enumerate(limit) if d != "0"]
    return "|".join([*alternatives, limit])


# An integer a bigint holds (Multimodal-Linkage: proc_id "integer or bigint"), 0 to 9223372036854775807, leading zeros
# allowed; group 1: the number without them. The one test of the readers that keep integer ids (a registry's proc_id,
# procedure_occurrence_id) and of registry.values (v13 kept up to 18 digits: a 19-digit proc_id that registry.values
# passed was left out of registry.proc_overlap, registry.no_procedure and registry.procedure_person, without a word)
BIGINT = r"^0*([0-9]{1,18}|" + _up_to(str(2**63 - 1)) + r")$"


_CSV_BLOCK_BYTES = 4 * 1024 * 1024  # pyarrow's CSV block: no row (nor quoted value) may be longer


_LET_GO_SECONDS = 10.0  # the most _Gate.close() waits for pyarrow's threads to let go (microseconds, as a rule)


class _Gate:
    """A file handed to pyarrow's CSV readers (as `feed()`), which read ahead in a thread of Arrow's I/O pool.

    After an error that thread may still be reading when the parser has returned, interleaving with the caller's
    reads (a hashing worker MD5s the rest of the file next: the bytes were hashed out of order, the file looked changed
    while hashed). close() waits for a read in flight; any read after it finds the end of the file.

    And that thread lets go of the reader (and of the Python file it reads) when it is done, which may be after the
    caller has had every batch: the last reference then dies in Arrow's thread, which takes the GIL to drop the
    file. Were the interpreter exiting by then (a script or notebook kernel that read one CSV and ended), taking the
    GIL ends the thread inside a C++ destructor: "terminate called without an active exception", SIGABRT (exit 134)
    after all the work was done (apache/arrow#34314). So close() also waits until pyarrow has let go of every feed:
    the caller must have dropped its reader first. (The same for the blocks it read, held as Python objects.)"""

    def __init__(self, f) -> None:
        self._f, self._lock, self._open = f, threading.Lock(), True
        self.nul = False  # a NUL byte went by: a parse error then tells it (zeros of an unfinished copy), not a guess
        self._held = 0  # feeds pyarrow still holds
        self._let_go = threading.Condition()

    def feed(self) -> _Feed:
        """The file-like to hand pyarrow (only pyarrow may keep it, and the blocks it reads: close() waits until
        they are freed)."""
        return self.held(_Feed(self))

    def held(self, thing: Any) -> Any:
        """`thing`, counted until it is freed."""
        with self._let_go:
            self._held += 1
        weakref.finalize(thing, self._freed).atexit = False
        return thing

    def _freed(self) -> None:
        with self._let_go:
            self._held -= 1
            self._let_go.notify_all()

    def read(self, size: int | None = -1) -> bytes:
        with self._lock:
            data = self._f.read(size) if self._open else b""
        if not self.nul and b"\0" in data:
            self.nul = True
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        with self._lock:
            return self._f.seek(offset, whence) if self._open else 0

    def tell(self) -> int:
        with self._lock:
            return self._f.tell() if self._open else 0

    def close(self) -> None:
        """No read after this (one in flight is waited for), and pyarrow's threads have let go of the feeds (waited
        for, at most _LET_GO_SECONDS). The wrapped file stays open: it is the caller's."""
        with self._lock:
            self._open = False
        with self._let_go:
            self._let_go.wait_for(lambda: self._held <= 0, timeout=_LET_GO_SECONDS)

    @property
    def closed(self) -> bool:
        return not self._open


class _Feed(io.RawIOBase):
    """What pyarrow reads (_Gate.feed()): its gate's file, through the gate."""

    def __init__(self, gate: _Gate) -> None:
        super().__init__()
        self._gate = gate

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> memoryview:
        # pyarrow keeps the block it is given (zero-copy, as a Python object its threads let go of): a memoryview,
        # whose end the gate can tell (bytes cannot be weakly referenced), so that close() waits for it too
        return self._gate.held(memoryview(self._gate.read(size)))

    def readinto(self, buffer) -> int:
        data = self._gate.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._gate.seek(offset, whence)

    def tell(self) -> int:
        return self._gate.tell()

    def close(self) -> None:  # (pyarrow's, when it closes its file: the gate's reads stay the caller's to end)
        super().close()

    @property
    def closed(self) -> bool:
        return self._gate.closed


def _arrow_reason(exc: Exception, block: int, names: list[str], rows: int | None = None) -> str:
    """pyarrow's CSV error in the site's terms (its own text suggests settings the user cannot change). `names`:
    the header's column names, as written; `rows`: the rows read before the failure, where the file is streamed."""
    text = str(exc)

    def column(found: re.Match) -> str:  # pyarrow counts columns from 0: "column #7" was the 8th, told by name
        k = int(found.group(1))
        return f"In column {names[k]} (column {k + 1})" if k < len(names) else found.group(0)
    text = re.sub(r"In CSV column #(\d+)", column, text)
    if "straddl" in text:
        # (streamed block by block, pyarrow hands on every row before the long one: it is the next; a 10 MiB row
        # among millions was not said where)
        if rows is not None:
            return (f"row {rows + 2} (counting the header row as 1) is longer than {block // (1024 * 1024)} MiB, or "
                    "a quoted value from it is (a quote that is never closed runs to the end of the file): close its "
                    "quote or shorten its value")
        return (f"a row or a quoted value is longer than {block // (1024 * 1024)} MiB (a quote that is never closed "
                "runs to the end of the file)")
    # pyarrow quotes the offending row after the reason: rows hold person ids and clinical values, which a
    # finding (stored in the manifest, shown in reports) must not copy
    blank = re.match(r"CSV parse error: Row #(\d+): Expected \d+ columns, got 1: (.*)$", text, flags=re.S)
    if blank and not blank.group(2).strip():  # (pyarrow passes over an empty line, not one of spaces or tabs only)
        return (f"row {blank.group(1)} (counting the header row as 1) is a blank line, spaces or tabs only, among the "
                "rows: delete that line")
    text = re.sub(r"(Expected \d+ columns, got \d+): .*", r"\1", text, flags=re.S)  # a row quoted without quotes
    return re.sub(r': ".*', "", text, flags=re.S) + (" (a row with another number of fields than the header; "
                                                       "a quote opened and not closed joins rows)"
                                                       if "Expected" in text and "columns" in text else "")


SEP_LINE_REASON = ("the first line is a delimiter hint for spreadsheets (sep=), not the column names: remove that line, "
                   "so that the header row comes first")
NUL_REASON = ("the file holds NUL bytes, which CSV text never does: binary data, or the zeros a copy that did not "
              "finish leaves (a file at its full size, filled only in part); copy or export the file again")


TEXT_NUL_REASON = ("the file holds NUL bytes, which text never does: binary data, or the zeros a copy that did not "
                   "finish leaves (a file at its full size, filled only in part); copy or export the file again")


# The endings of the reasons that say themselves what to do: a finding adds no other remedy to them (an unfinished
# copy is copied again, not "written as UTF-8 text"; "copy it again": site.EMPTY_READ, an empty file's). (`the table`: the
# wording facts cached before 2026-12-04 hold.)
OWN_REMEDY = (r"(write the header row first|so that the header row comes first|write the names without quotes|name every column|keep one column of each name|copy or export the (file|table) "
              r"again|copy the file again|copy it again|export it again as CSV UTF-8|delete that line|shorten its value|Waveforms/RECORDS\) instead|leave it out of Images/|" + COMPRESSED_REMEDY + ")$")


def _nul_where(table: Any, columns: list[str]) -> str:
    """NUL_REASON naming the first row (counted as pyarrow counts them: the header row is row 1) and the column of
    a table whose values hold a NUL byte, never the value."""
    import pyarrow.compute as pc

    first = None
    for k in range(table.num_columns):
        hits = pc.indices_nonzero(pc.match_substring(table.column(k), "\0"))  # (not pc.index(…, True): see _Repeats)
        at = hits[0].as_py() if len(hits) else -1
        if at >= 0 and (first is None or at < first[0]):
            first = (at, k)
    if first is None:  # (in a line pyarrow passes over: an empty one)
        return NUL_REASON
    return NUL_REASON.replace("never does:", f"never does (the first in row {first[0] + 2}, counting the header row as "
                              f"1, column {columns[first[1]]}):", 1)


def _arrow_failure(exc: Exception, gate: _Gate, block: int, names: list[str], rows: int | None = None) -> str:
    """Why pyarrow could not parse a CSV read through `gate`, in the site's terms: the zeros of an unfinished copy
    hold no line break (pyarrow finds one endless row, or a row of too few fields, not the zeros): told as such."""
    if gate.nul:
        return NUL_REASON
    reason = _arrow_reason(exc, block, names, rows)
    if "invalid UTF8" not in reason:
        return reason
    # "In column units (column 4): Row #3: CSV conversion error to string: invalid UTF8 data": a spreadsheet that
    # saved the file as Latin-1 or Windows-1252 (µV as the byte 0xB5)
    where = re.match(r"In (column .*?): Row #(\d+):", reason)
    at = f", in row {where.group(2)} (counting the header row as 1), {where.group(1)}" if where else ""
    gate.close()  # (pyarrow's read-ahead stopped: the file is read here)
    first = _first_not_utf8(gate._f)
    byte = (f"; its first byte that is not UTF-8 is 0x{first[0]:02X} (byte {first[1] + 1} of the file, line {first[2]})"
            if first else "")
    return (f"the file is not UTF-8 text{at}{byte}: a spreadsheet saved it in another encoding (Latin-1 or "
            "Windows-1252 write µ as the byte 0xB5); save or export it again as CSV UTF-8")


def _first_not_utf8(f) -> tuple[int, int, int] | None:
    """The first byte of `f` that is not (part of) UTF-8 text, as (its value, its offset, its line counted from 1);
    None if the file could not be read again from its start (a HashingReader that no longer keeps it)."""
    try:
        f.seek(0)
        buf, start, line = b"", 0, 1  # buf: the bytes from the file's offset `start` not yet counted
        while True:
            chunk = f.read(1 << 20)
            buf += chunk
            try:
                buf.decode("utf-8")
                good = len(buf)
            except UnicodeDecodeError as exc:
                if not (chunk and exc.reason == "unexpected end of data"):
                    return buf[exc.start], start + exc.start, line + len(_LINE_ENDS.findall(buf[:exc.start]))
                good = exc.start  # a character cut by the chunk's end: the next chunk completes it
            if not chunk:
                return None
            if buf[:good].endswith(b"\r"):  # (a CRLF cut in two is one line end)
                good -= 1
            line += len(_LINE_ENDS.findall(buf[:good]))
            buf, start = buf[good:], start + good
    except (OSError, ValueError):
        return None


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def _csv_batches(f, raw_names: list[str], columns: list[str], wanted: tuple[str, ...]) -> Iterator[list]:
    """The wanted columns (present: the caller checked) of each batch of a CSV, as pyarrow string arrays stripped
    of _WHITESPACE; streamed, serially (errors name the row), through a _Gate; BadContent where pyarrow cannot
    parse the file (no polars: this runs in forked hashing workers)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    names = [raw_names[columns.index(w)] for w in wanted]
    f.seek(0)
    gate, reader, rows = _Gate(f), None, 0
    try:
        reader = pacsv.open_csv(
            gate.feed(),
            read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),  # serial: errors name the row
            parse_options=pacsv.ParseOptions(delimiter=",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=names, column_types={n: pa.string() for n in names}),
        )
        for batch in reader:
            rows += batch.num_rows
            # a NULL written as text (SQL exports write NULL, MySQL's \\N) is an empty cell, as the registry reader
            # reads it (_NULL_CELLS): person.csv's "NULL" was a person without a folder, a visit_end_datetime "NULL"
            # hid the visit's end date (its first 10 characters read as the date)
            yield [_null_as_empty(pc.utf8_trim(batch.column(n), _WHITESPACE)) for n in names]
        if gate.nul:
            # pyarrow reads a NUL byte as any other character: the zeros of a copy that did not finish, in rows that
            # parse, or one in a value ("1\0"), gave a person id holding a NUL, not found beside its folder's
            raise BadContent(f"cannot read {named('column', wanted)}: {NUL_REASON}")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadContent(f"cannot read {named('column', wanted)}: "
                         f"{_arrow_failure(exc, gate, _CSV_BLOCK_BYTES, raw_names, rows)}") from None
    finally:
        reader = None  # (let go before close(), which waits until pyarrow's threads have let go too)
        gate.close()  # pyarrow's read-ahead thread may still be reading: it must stop before the caller reads on


def _csv_columns(f, raw_names: list[str], columns: list[str], wanted: tuple[str, ...],
                 required: int | None = None) -> dict[str, list[str]] | None:
    """The distinct (rows of the) wanted columns, stripped and non-empty (the first `required` of them; the others
    may be None), in order of first appearance; None if one is absent. Only the distinct values are kept, never
    the file."""
    if any(w not in columns for w in wanted):
        return None
    if len(wanted) == 1:  # (person.csv: each batch's distinct ids kept as Arrow: _Repeats)
        keys = _Repeats()
        for batch in _csv_batches(f, raw_names, columns, wanted):
            keys.add(batch[0])
        distinct, repeated = keys.distinct_and_repeated()
        return {**_joined_text(wanted[0], distinct), "repeated": repeated.slice(0, 5).to_pylist(),
                "n_repeated": len(repeated)}  # (a slice: 30M ids each given twice made 30M Python strings for 5)
    seen: dict[tuple[str, ...], None] = {}
    for batch in _csv_batches(f, raw_names, columns, wanted):
        values = [column.to_pylist() for column in batch]
        seen.update(dict.fromkeys(row for row in zip(*values, strict=True) if all(row[:required])))
    rows = list(seen)
    return {w: [row[k] for row in rows] for k, w in enumerate(wanted)}


def _joined_text(name: str, values) -> dict[str, Any]:
    """{name: the values (strings, none null) as one text joined by JOINED} made in Arrow (omop_person.v9: 5M ids as a
    list of Python strings held +290 MiB in the hashing worker and again where site.py decoded them); where a value holds
    JOINED (a quoted line break) they stay a list, as {name: None, name + "_list": [...]}."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if len(values) and pc.any(pc.match_substring(values, JOINED)).as_py():
        return {name: None, f"{name}_list": values.to_pylist()}
    # each value with JOINED after it (an option, no Python value handed to pyarrow), read off the data buffer
    ended = pc.replace_substring_regex(values, pattern="$", replacement=JOINED)
    if isinstance(ended, pa.ChunkedArray):
        ended = ended.combine_chunks()
    if not len(ended):
        return {name: ""}
    _, offsets, data = ended.buffers()
    at = memoryview(offsets).cast("q" if pa.types.is_large_string(ended.type) else "i")
    start, end = at[ended.offset], at[ended.offset + len(ended)]
    return {name: data[start:end - 1].to_pybytes().decode("utf-8")}


def _more_than_one(counts):
    """counts > 1, with no Python value handed to pyarrow: pa.array([]), pa.scalar, pc.greater(x, 1) and
    pc.index(x, True) ask pandas whether it can take the value, importing pandas (0.3-0.5 s) into the run (the
    fresh-clone run's test_startup caught pa.array([]) here); counts - 1 (is_valid cast: ones) is 0 only for 1."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pc.subtract(counts, pc.cast(pc.is_valid(counts), counts.type)), pa.bool_())


class _Repeats:
    """The values of a table's key column given on more than one row (person.csv's person_id, visit_occurrence.csv's
    visit_occurrence_id: one row each), read batch by batch: each batch's distinct values are kept as Arrow (30M ids
    held 5.2 GiB as Python strings; pc.unique keeps the order of first appearance), with the few a batch repeats."""

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.within: list[Any] = []  # (the values a batch repeats, a few)

    def add(self, column) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        values = column.filter(pc.cast(pc.binary_length(column), pa.bool_()))  # ("": false; a null is dropped)
        self.parts.append(pc.unique(values))
        if len(self.parts[-1]) < len(values):
            counted = pc.value_counts(values)
            self.within.append(counted.field(0).filter(_more_than_one(counted.field(1))))

    def distinct_and_repeated(self):
        """(the distinct values, those on more than one row), each in order of first appearance, found by sorting:
        a hash of them all (pc.unique, pc.value_counts) held +700 MiB for 5M ids (its table of 16M slots of 16 bytes,
        grown by doubling), and distinct() then repeated() hashed them three times; a sort holds the values once
        more and 8 bytes an id. The parts are let go (a second call finds none)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        values = pa.chunked_array([*self.parts, *self.within], pa.string()).combine_chunks()
        self.parts, self.within = [], []
        n = len(values)
        if not n:
            return values, values
        order = pc.sort_indices(values)  # (stable: each run of equal values starts at its first row)
        rows = np.frombuffer(order.buffers()[1], dtype=np.uint64)[order.offset: order.offset + n]
        ranked = pc.take(values, order)
        same = pc.equal(ranked.slice(1), ranked.slice(0, n - 1))  # (no nulls: add() drops them)
        del ranked
        bits = np.unpackbits(np.frombuffer(same.buffers()[1], dtype=np.uint8), bitorder="little")
        starts = np.flatnonzero(np.concatenate(([1], 1 - bits[same.offset: same.offset + n - 1])))
        sizes = np.diff(np.append(starts, n))
        firsts = rows[starts]

        def taken(at):
            at = np.ascontiguousarray(np.sort(at), dtype=np.uint64)  # (from a buffer: no Python value to pyarrow)
            return pc.take(values, pa.Array.from_buffers(pa.uint64(), len(at), [None, pa.py_buffer(at)]))

        return taken(firsts), taken(firsts[sizes > 1])


# A visit's start or end as visit_occurrence.csv must write it to be read (site.visit_moment, registry.visit_time): an
# ISO date, with a time (to the minute or second, a fraction, a time zone registry.visit_time tells of) or without
_VISIT_WRITTEN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[ T](?:[01]?[0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]*)?)?"
                  r" ?(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?$")


class _VisitAudit:
    """visit_occurrence.csv's rows read batch by batch (omop_visits.v11): the start and end dates written otherwise than
    as ISO dates (01/01/2024, 2024-13-01: such a visit was read as no span and left out of the visit-time rules without
    a word), the visits ending before they start, and the visit_occurrence_ids on more than one row (the table's key);
    of each, a few examples and how many (memory: the ids' distinct values per batch, _Repeats)."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.rows = 0  # rows read so far (row 1 is the header row)
        self.bad_dates: list[str] = []
        self.n_bad_dates = 0
        self.reversed: list[str] = []
        self.n_reversed = 0
        self.ids = _Repeats()

    def _examples(self, mask, *columns) -> list[list]:
        import pyarrow.compute as pc

        at = pc.indices_nonzero(mask)[:self.EXAMPLES]
        return [[self.rows + 2 + k, *values] for k, *values in
                zip(at.to_pylist(), *(pc.take(c, at).to_pylist() for c in columns), strict=True)]

    def add(self, ids, dates: dict[str, Any], start, end) -> None:
        """One batch: its visit_occurrence_ids, its date columns present (by name), and each row's start and end as
        _csv_joined gives them (the datetime, else the date)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        self.ids.add(ids)
        for name, column in dates.items():
            bad = pc.and_kleene(pc.cast(pc.binary_length(column), pa.bool_()), pc.invert(_iso_day(column)))
            bad = pc.and_kleene(bad, pc.is_valid(bad))  # (a null cell: no value, no fault)
            n = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
            if n:
                self.n_bad_dates += n
                room = self.EXAMPLES - len(self.bad_dates)
                self.bad_dates += [f"row {row} {name} '{value}'" for row, value in self._examples(bad, column)[:room]]
        # (as site.visit_moment reads them: a date alone is the whole day, an end at the midnight of its own date too)
        s_day, e_day = _day(start), _day(end)
        s_at = pc.coalesce(_clock(start), s_day)
        e_at = _clock(end)
        whole = pc.or_kleene(pc.is_null(e_at), pc.equal(e_at, e_day))
        early = pc.if_else(whole, pc.less(e_day, s_day), pc.less(e_at, s_at))
        early = pc.and_kleene(early, pc.is_valid(early))  # (either unread: the date rule's)
        n = pc.sum(pc.cast(early, pa.int64())).as_py() or 0
        if n:
            self.n_reversed += n
            room = self.EXAMPLES - len(self.reversed)
            self.reversed += [f"row {row} visit {visit or '(no id)'}: {s} to {e}"
                              for row, visit, s, e in self._examples(early, ids, start, end)[:room]]
        self.rows += len(ids)

    def facts(self) -> dict[str, Any]:
        _, repeated = self.ids.distinct_and_repeated()
        return {"bad_dates": self.bad_dates, "n_bad_dates": self.n_bad_dates, "reversed_visits": self.reversed,
                "n_reversed_visits": self.n_reversed, "repeated_visit_id": repeated.slice(0, self.EXAMPLES).to_pylist(),
                "n_repeated_visit_id": len(repeated)}


def _iso_day(column):
    """Whether each value is written as _VISIT_WRITTEN, its date one of the calendar (2024-02-30 is not)."""
    import pyarrow.compute as pc

    day = pc.utf8_slice_codeunits(column, 0, 10)
    parsed = pc.strptime(day, format="%Y-%m-%d", unit="s", error_is_null=True)  # (lenient: 02-30 reads as 03-01)
    same = pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), day)
    same = pc.and_kleene(same, pc.is_valid(same))  # (not read as a date: false)
    return pc.and_kleene(pc.match_substring_regex(column, _VISIT_WRITTEN), same)


def _day(column):
    """The date of each value (a timestamp at its midnight), null where it is not an ISO date."""
    import pyarrow.compute as pc  # noqa: I001

    day = pc.utf8_slice_codeunits(column, 0, 10)
    parsed = pc.strptime(day, format="%Y-%m-%d", unit="s", error_is_null=True)
    import pyarrow as pa

    return pc.if_else(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), day), parsed, pa.nulls(len(parsed), parsed.type))


def _clock(column):
    """The date and time of each value written with one (to the second or the minute), else null."""
    import pyarrow.compute as pc

    text = pc.replace_substring(column, pattern="T", replacement=" ")
    return pc.coalesce(
        pc.strptime(pc.utf8_slice_codeunits(text, 0, 19), format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True),
        pc.strptime(pc.utf8_slice_codeunits(text, 0, 16), format="%Y-%m-%d %H:%M", unit="s", error_is_null=True))


JOINED = "\n"  # what the values of a joined column (_csv_joined) are joined with


def _csv_joined(f, raw_names: list[str], columns: list[str], wanted: tuple[str, ...],
                either: dict[str, tuple[str, ...]] | None = None,
                audit: _VisitAudit | None = None) -> dict[str, str] | None:
    """The wanted columns of the rows whose first one is not empty, stripped, each as one text of its values
    joined by JOINED in row order (a value's own line break read as a space); None if one is absent. For a
    table of millions of rows (visit_occurrence.csv): a list of Python strings per value held 1.8 GiB and took
    28 s for 6M rows (two columns); joined batch by batch, a batch's values are Python strings only while it is joined.
    `either`: more texts, each of the same rows, named by its key: per row, the first of its columns (those present)
    whose value is not empty, cut to its first 10 characters where it is not the first column named (a date column
    written with a time is that date); one whose columns are all absent is left out. `audit`: given each batch's
    first column, `either`'s columns present and the texts of VISIT_SPAN (all rows, before rows without an id are
    left out)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if any(w not in columns for w in wanted):
        return None
    given = {name: [(k, c) for k, c in enumerate(candidates) if c in columns] for name, candidates in (either or {}).items()}
    given = {name: present for name, present in given.items() if present}
    read = (*wanted, *dict.fromkeys(c for present in given.values() for _, c in present if c not in wanted))
    outputs = (*wanted, *given)
    pieces: list[list[str]] = [[] for _ in outputs]
    for batch in _csv_batches(f, raw_names, columns, read):
        # (no Python value given to pyarrow: converting one, as pa.array or a scalar argument does, imports pandas, 0.4 s)
        keep = pc.cast(pc.binary_length(batch[0]), pa.bool_())  # a length of 0 is false; a null is dropped by filter
        by_name = dict(zip(read, batch, strict=True))
        made = list(batch[:len(wanted)])
        for present in given.values():
            texts = [by_name[c] if k == 0 else pc.utf8_slice_codeunits(by_name[c], 0, 10) for k, c in present]
            value = texts[-1]
            for text in reversed(texts[:-1]):  # the first one with a value wins
                filled = pc.and_kleene(pc.is_valid(text), pc.cast(pc.binary_length(text), pa.bool_()))
                value = pc.if_else(filled, text, value)
            made.append(value)
        if audit is not None:
            spans = dict(zip(outputs, made, strict=True))
            empty = pc.utf8_slice_codeunits(batch[0], 0, 0)  # (no span columns: no start nor end, no reversed visit)
            audit.add(batch[0], {c: by_name[c] for present in given.values() for _, c in present},
                      spans.get("visit_start", empty), spans.get("visit_end", empty))
        for k, column in enumerate(made):
            values = column.filter(keep).to_pylist()  # (a batch's values as Python strings, let go once joined)
            if values:
                pieces[k].append(JOINED.join("" if v is None else v.replace(JOINED, " ") for v in values))
    return {w: JOINED.join(pieces[k]) for k, w in enumerate(outputs)}


# Each visit's start and end as visit_occurrence.csv writes them (its datetime, else its date: site.visit_spans reads a
# date as the whole day), kept beside its id (omop_visits.v5)
VISIT_SPAN = {"visit_start": ("visit_start_datetime", "visit_start_date"),
              "visit_end": ("visit_end_datetime", "visit_end_date")}


def _csv_facts(kind: str) -> Callable[[Any], dict[str, Any]]:
    wanted = {KIND_PERSON: ("person_id",), KIND_VISITS: ("visit_occurrence_id",), KIND_LINKS: LINK_COLUMNS}.get(kind)

    def read(f) -> dict[str, Any]:
        facts, raw, ended = _csv_header(f)
        if kind == KIND_LINKS and "session" not in facts["columns"] and "session_id" in facts["columns"]:
            facts["columns"][facts["columns"].index("session_id")] = "session"  # v2.0 named it session_id
        if wanted:
            # visit_occurrence.csv: each visit's person too, where the column is (registry.visit_person)
            read = (*wanted, "person_id") if kind == KIND_VISITS and "person_id" in facts["columns"] else wanted
            if facts["delimiter"] != ",":
                values = None
            elif ended:  # only the header row, unterminated: no values (pyarrow would refuse the file)
                none = "" if kind in (KIND_VISITS, KIND_PERSON) else []
                values = {w: none for w in read} if all(w in facts["columns"] for w in read) else None
            elif kind == KIND_VISITS:  # millions of rows: each column as one text (site.py splits it)
                audit = _VisitAudit()
                values = _csv_joined(f, raw, facts["columns"], read, either=VISIT_SPAN, audit=audit)
                for name in VISIT_SPAN:  # (each visit's start and end: registry.visit_time)
                    facts[name] = None if values is None else values.get(name)
                # (visit.date_format, visit.end_before_start, visit.repeated_id)
                facts.update(audit.facts())
            else:
                values = _csv_columns(f, raw, facts["columns"], read, required=len(wanted))
            for w in read:
                facts[w] = None if values is None else values[w]
            if kind == KIND_PERSON and (values or {}).get("person_id_list") is not None:
                facts["person_id_list"] = values["person_id_list"]  # (ids holding a line break: _joined_text)
            if kind == KIND_PERSON:  # (person_ids on more than one row: a few, and how many)
                facts["repeated_person_id"] = (values or {}).get("repeated", [])
                facts["n_repeated_person_id"] = (values or {}).get("n_repeated", 0)
        return facts

    return read


def _procedure_facts(f) -> dict[str, Any]:
    """procedure_occurrence.csv: its header, and the integer procedure_occurrence_ids of the EHR's own procedures
    (procedure_concept_id not one a registry row gets, LINKAGE_CONCEPTS) as sorted runs [first, last] of consecutive
    ids: an ETL numbers rows in sequence, so a table of millions is a few runs (registry.proc_overlap reads them);
    and all its integer ids, of any concept, as runs too (registry.no_procedure).
    Streamed batch by batch with pyarrow (this runs in forked hashing workers: no polars)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    facts, raw, ended = _csv_header(f)
    wanted = ("procedure_occurrence_id", "procedure_concept_id")
    facts["ehr_runs"] = facts["runs"] = facts["image_runs"] = facts["waveform_runs"] = facts["linkage_persons"] = None
    facts["linkage_visits"] = None
    if facts["delimiter"] != "," or any(w not in facts["columns"] for w in wanted):
        return facts
    # the [id, person_id] of the rows of a linkage concept (registry.procedure_person), where the table has person_id
    person_name = raw[facts["columns"].index("person_id")] if "person_id" in facts["columns"] else None
    # and their [id, visit_occurrence_id] ("" where none), where it has visit_occurrence_id (registry.procedure_visit)
    visit_name = raw[facts["columns"].index("visit_occurrence_id")] if "visit_occurrence_id" in facts["columns"] else None
    if ended:  # only the header row
        facts["ehr_runs"] = facts["runs"] = facts["image_runs"] = facts["waveform_runs"] = []
        facts["linkage_persons"] = [] if person_name is not None else None
        facts["linkage_visits"] = [] if visit_name is not None else None
        return facts
    ids_name, concept_name = (raw[facts["columns"].index(w)] for w in wanted)
    linked: list[list[str]] = []
    visited: list[list[str]] = []
    f.seek(0)
    chunks: list[Any] = []
    every: list[Any] = []  # all integer ids, of any concept (registry.no_procedure)
    # the ids of rows of each linkage concept (registry.procedure_concept): 4180938 images, 4141651 waveforms
    per_concept: dict[str, list[Any]] = {concept: [] for concept in LINKAGE_CONCEPTS}
    gate, reader, rows = _Gate(f), None, 0
    try:
        reader = pacsv.open_csv(
            gate.feed(), read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=[ids_name, concept_name, *(n for n in (person_name, visit_name) if n is not None)],
                column_types={name: pa.string() for name in (ids_name, concept_name, person_name, visit_name)
                              if name is not None}))
        # No Python value reaches pyarrow (pa.array, pa.scalar, fill_null(x, False)): it would ask pandas whether it
        # can take it, importing pandas (0.3-0.5 s) into the run; the patterns are options, not values. The string
        # columns hold no nulls (ConvertOptions' strings_can_be_null is False): an empty cell is "".
        linkage = "^(" + "|".join(LINKAGE_CONCEPTS) + ")$"
        for batch in reader:
            rows += batch.num_rows
            ids = pc.utf8_trim_whitespace(batch.column(ids_name))
            concept = pc.utf8_trim_whitespace(batch.column(concept_name))
            integer = pc.match_substring_regex(ids, BIGINT)
            ehr = pc.and_(integer, pc.invert(pc.match_substring_regex(concept, linkage)))
            chunks.append(_int64s(pc.cast(pc.filter(ids, ehr), pa.int64())))
            every.append(_int64s(pc.cast(pc.filter(ids, integer), pa.int64())))
            for code, kept in per_concept.items():
                kept.append(_int64s(pc.cast(pc.filter(ids, pc.and_(integer, pc.match_substring_regex(
                    concept, f"^{code}$"))), pa.int64())))
            if person_name is not None:
                of_linkage = pc.and_(integer, pc.match_substring_regex(concept, linkage))
                people = pc.utf8_trim(pc.utf8_trim_whitespace(batch.column(person_name)), characters='"')
                linked += [[i, p] for i, p in zip(pc.filter(ids, of_linkage).to_pylist(),
                                                  pc.filter(people, of_linkage).to_pylist()) if p]
            if visit_name is not None:
                of_linkage = pc.and_(integer, pc.match_substring_regex(concept, linkage))
                visits = pc.utf8_trim(pc.utf8_trim_whitespace(batch.column(visit_name)), characters='"')
                visited += [[i, v] for i, v in zip(pc.filter(ids, of_linkage).to_pylist(),
                                                   pc.filter(visits, of_linkage).to_pylist())]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadContent(f"cannot read {named('column', wanted)}: {_arrow_failure(exc, gate, _CSV_BLOCK_BYTES, raw, rows)}") from None
    finally:
        reader = None  # (let go before close(), which waits until pyarrow's threads have let go too)
        gate.close()
    facts["ehr_runs"], facts["runs"] = _runs(chunks), _runs(every)
    imaging, monitoring = LINKAGE_CONCEPTS
    facts["image_runs"], facts["waveform_runs"] = _runs(per_concept[imaging]), _runs(per_concept[monitoring])
    facts["linkage_persons"] = sorted(map(list, {tuple(pair) for pair in linked})) if person_name is not None else None
    facts["linkage_visits"] = sorted(map(list, {tuple(pair) for pair in visited})) if visit_name is not None else None
    return facts


def _int64s(values) -> Any:
    """An int64 Arrow array without nulls as numpy, from its data buffer (to_numpy asks pandas: see above)."""
    import numpy as np
    import pyarrow as pa

    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [np.frombuffer(c.buffers()[1], dtype=np.int64)[c.offset: c.offset + len(c)] for c in chunks if len(c)]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _runs(chunks: list[Any]) -> list[list[int]]:
    """Integer ids as sorted runs [first, last] of consecutive ids."""
    import numpy as np

    ids = np.sort(np.concatenate(chunks)) if chunks else np.array([], dtype=np.int64)
    ids = ids[np.concatenate(([True], ids[1:] != ids[:-1]))] if len(ids) else ids  # (np.unique hashes: 20x slower)
    breaks = np.flatnonzero(np.diff(ids) != 1)  # a run ends where the next id is not the next integer
    firsts, lasts = np.concatenate(([0], breaks + 1)), np.concatenate((breaks, [len(ids) - 1]))
    return [[int(ids[a]), int(ids[b])] for a, b in zip(firsts, lasts)] if len(ids) else []


_READERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    KIND_WFDB: _wfdb_facts,
    KIND_DICOM: _dicom_facts,
    KIND_RECORDS: _records_facts,
    KIND_EDF: _edf_facts,
    KIND_MARKDOWN: _markdown_facts,
    KIND_MAPPING: _mapping_facts,
    KIND_REGISTRY: _registry_facts,
    **{kind: _csv_facts(kind) for kind in CSV_KINDS},
    KIND_PROCEDURES: _procedure_facts,
}


# Kinds whose readers use only the standard library, pyarrow, pydicom or wfdb's grammar, never polars (whose
# thread pool does not survive a fork): their facts can be parsed in forked worker processes.
READER_KINDS = frozenset(_READERS)
FORK_SAFE_KINDS = READER_KINDS - {KIND_MAPPING, KIND_REGISTRY}


def parse_facts(kind: str, f) -> dict[str, Any]:
    """The facts of one file's content, read from the binary file-like `f` (pure: the content alone decides);
    {"error": ...} for content that is not what the name says. OSError (reading, not content) propagates."""
    reader = _READERS.get(kind)
    if reader is None:
        return {"error": f"no reader for kind {kind!r}"}
    try:
        return reader(f)
    except BadContent as exc:
        return {"error": str(exc)}
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a parser's bug or an oddity nobody foresaw: a finding, not a crash
        return {"error": f"cannot parse the file ({type(exc).__name__}: {exc})"}


def facts_text(facts: dict[str, Any]) -> str:
    """Facts as the cache stores them (FACTS_SCHEMA's JSON text)."""
    return "".join(_encode_facts(facts, 0)) if _encode_facts is not None else _FACTS_ENCODER.encode(facts)


# json.dumps with separators builds an encoder per call (a third of its ~5 us on a header's facts); and
# JSONEncoder.encode builds json's C encoder per call too (a fifth of what is left): built once here, as
# JSONEncoder.iterencode builds it (facts are never circular: no markers), the same text
_FACTS_ENCODER = json.JSONEncoder(separators=(",", ":"))
_encode_facts = None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(
    None, _FACTS_ENCODER.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)


def parser(kind: str) -> Callable[[Any], str]:
    """parse_facts for one kind, as the cache's JSON text: what a hashing worker runs over the bytes it hashes."""
    return functools.partial(_parse_text, kind)


def _parse_text(kind: str, f) -> str:
    return facts_text(parse_facts(kind, f))


def prepare(kinds) -> None:
    """Import the parsers `kinds` need before worker threads or forked processes start: threads
    (catch_warnings is not thread-safe) and forked processes (each would import them again) share them.
    Not pydicom (~0.3 s): dicom_walk reads most DICOM headers without it, and a worker that meets a file it
    does not decide imports pydicom then."""
    if KIND_WFDB in kinds:
        _wfdb_grammar()


def read_facts(source, srcfile: str, kind: str) -> dict[str, Any]:
    """The facts of one file, opened from `source`; {"error": ...} for content that is not what the name says.

    An error that is about reading, not content (the file vanished, permission denied,
    a network failure), also carries "retry": true: such facts must not be cached.
    """
    try:
        with source.open(srcfile) as f:
            return parse_facts(kind, f)
    except OSError as exc:
        return read_failed(exc, source)


def read_failed(exc: OSError, source=None) -> dict[str, Any]:
    """The facts of a read that failed (not the content): what happened, and what to do as it is true of that
    cause. The file is as the run recorded it (size, mtime) unless it is gone, so only a removal is a change the
    next run sees: a file this user may not read, or a storage failure, is read again by the next check only."""
    from ..sources.local import root_gone

    if isinstance(exc, FileNotFoundError) and (gone := root_gone(source)) is not None:
        fix = (f"{gone}; nothing says the file was removed: check the site where it is (chorus-batch validate "
               "--site DIR), or mount it where it was recorded")
    elif isinstance(exc, FileNotFoundError):
        fix = "it is gone (removed or moved since the run recorded it): the next run records that"
    elif isinstance(exc, PermissionError):
        # (a cloud object's etag is what a run compares, not a size and time: a SAS that may list and not read)
        local = source is None or getattr(source, "parallel_local", False)
        fix = ("give this user read permission on it, then check again (chorus-batch validate): the next run sees "
               f"no change in it (its {'size and modification time are' if local else 'ETag is'} as recorded) and "
               "does not read it")
    else:
        fix = "check the storage (a disk or network error), then check again (chorus-batch validate)"
    return {"error": f"cannot read the file: {exc.strerror or exc}; {fix}", "retry": True}


def _written_since(source, srcfile: str, size: int | None, mtime_ns: int | None, etag: str | None) -> dict[str, Any] | None:
    """After a file's facts were read: {"error", "retry"} when it is no longer as its MD5 was recorded: a cloud
    object's etag, or a local file's size or mtime, moved. Facts are cached under that MD5, and a file written
    since (before or while it was read) would put the new content's facts there, for every file with that MD5,
    for good. A local stat costs microseconds; a cloud object without an etag is not asked again (a request)."""
    if etag is None and not (getattr(source, "parallel_local", False) and size is not None and mtime_ns is not None):
        return None
    try:
        now = source.stat(srcfile)
    except OSError as exc:
        return read_failed(exc, source)
    if etag is not None:
        if now.etag is None or now.etag == etag:
            return None
        moved = "its etag moved"
    elif (now.size, now.mtime_ns) == (size, mtime_ns):
        return None
    else:
        moved = "its size or modification time moved"
    return {"error": f"it was written since it was listed ({moved}): the next run records the change and reads it",
            "retry": True}


def extract_facts(source, todo: pl.DataFrame, *, workers: int = 1,
                  done: Callable[[int], None] | None = None) -> pl.DataFrame:
    """FACTS_SCHEMA rows, one per distinct (kind, md5) of `todo` (srcfile, md5, kind; and, where given, the
    size, mtime_ns and etag the MD5 was recorded with: a file no longer so gives a "retry" error, not facts).

    Reads only what each kind needs through source.open: WFDB and RECORDS text, a
    DICOM header up to the pixel data, an OMOP CSV's first line, and the whole of
    person.csv, visit_occurrence.csv and waveform_visit_links.csv (one or two columns
    of them). Never raises for bad content. `done(n)` is told of every n files read
    (a progress counter).
    """
    as_recorded = {"size": pl.Int64, "mtime_ns": pl.Int64, "etag": pl.String}  # none given: not compared
    todo = todo.with_columns(pl.lit(None, dtype).alias(c) for c, dtype in as_recorded.items() if c not in todo.columns)
    jobs = (
        todo.filter(pl.col("md5").is_not_null() & pl.col("kind").is_not_null())
        .unique(["kind", "md5"], keep="first", maintain_order=True)
        .select("kind", "md5", "srcfile", *as_recorded)
        .rows()
    )

    prepare({job[0] for job in jobs})
    tell = done or (lambda n: None)

    def counted(part: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        tell(len(part))
        return part

    headers = [job for job in jobs if job[0] in _HEADER_KINDS]
    # The source's capability (sources/base.py): its reads are CPU-bound on this machine.
    if (workers > 1 and len(headers) >= _PROCESS_MIN_JOBS
            and getattr(source, "parallel_local", False)):
        # Parsing headers is Python-bound (pydicom ~0.5 ms, a WFDB header ~0.3 ms): threads would share one
        # core. Only header kinds go to the (forked) workers: the OMOP readers use polars, whose thread
        # pool does not survive a fork; those few files are read here.
        from ..processes import pool

        chunks = _chunked(headers)
        with pool(workers) as executor:
            rows = [row for part in executor.map(_facts_rows, [source] * len(chunks), chunks) for row in counted(part)]
        rows += counted(_facts_rows(source, [job for job in jobs if job[0] not in _HEADER_KINDS]))
    elif workers > 1 and len(jobs) > 1:  # remote sources: reads wait on the network
        with ThreadPoolExecutor(max_workers=workers) as executor:
            rows = [row for part in executor.map(lambda job: counted(_facts_rows(source, [job])), jobs) for row in part]
    else:
        rows = [row for part in _chunked(jobs, _PROGRESS_JOBS) for row in counted(_facts_rows(source, part))]
    return pl.DataFrame(rows, schema=FACTS_SCHEMA, orient="row")


def _chunked(jobs: list, size: int | None = None) -> list[list]:
    size = size or _CHUNK_JOBS
    return [jobs[i: i + size] for i in range(0, len(jobs), size)]


_HEADER_KINDS = frozenset({KIND_WFDB, KIND_DICOM, KIND_RECORDS, KIND_EDF})  # standard library, pydicom, wfdb's grammar
_PROCESS_MIN_JOBS = 2000  # below this, starting worker processes costs more than it saves
_CHUNK_JOBS = 500
_PROGRESS_JOBS = 50  # read in one process: progress counted every this many files


def _facts_rows(source, jobs: list[tuple]) -> list[tuple[str, str, str]]:
    """FACTS rows of (kind, md5, srcfile, size, mtime_ns, etag) jobs; runs in worker processes too. read_facts is
    looked up in this module at each call, so a patched readers.read_facts sees every read."""
    return [(kind, md5, facts_text(_as_recorded(source, kind, md5, srcfile, *as_recorded, read_facts(source, srcfile, kind))))
            for kind, md5, srcfile, *as_recorded in jobs]


def _as_recorded(source, kind: str, md5: str, srcfile: str, size: int | None, mtime_ns: int | None,
                 etag: str | None, facts: dict[str, Any]) -> dict[str, Any]:
    """`facts` if the file read is still as its MD5 was recorded. A local file whose size or mtime moved is
    hashed (with its facts parsed from the same bytes): a copy that kept the content but not the mtimes (a
    checkout, rsync without -t, a restore) is read as recorded; other content gives a "retry" error."""
    moved = _written_since(source, srcfile, size, mtime_ns, etag)
    if moved is None or etag is not None or not hasattr(source, "hash_file"):
        return moved or facts
    from ..sources.base import READ_SIZE

    try:
        now = source.hash_file(srcfile, bytearray(READ_SIZE), parser(kind))
    except OSError as exc:
        return read_failed(exc, source)
    if now.md5 != md5:
        return {"error": "it was written since it was recorded (its MD5 is no longer the recorded one): the next run "
                         "records the change and reads it", "retry": True}
    return moved if now.facts is None else json.loads(now.facts)
