"""Check a site submission against the CHoRUS procedures: the rules engine of `validate`.

Three steps, so that a nightly run over a million files reads only what is new:

  facts_needed(current)   which files a rule must look inside, and as what kind (pure, from the paths)
  extract_facts(...)      reads those headers and tables (I/O); facts depend only on the content,
                          so they are keyed by (kind, md5) and can be cached for ever
  check(current, facts)   every rule, as polars expressions over the two frames (pure)

Paths are compared case-insensitively where the site layout is (folder names,
extensions); file and record names are compared exactly. Person and visit ids
made only of digits are compared as numbers ("000123" = "123"), since OMOP
stores them as integers while folders keep the site's text.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from .frames import FINDINGS_SCHEMA

FACTS_SCHEMA = {"kind": pl.String, "md5": pl.String, "facts": pl.String}  # facts = JSON text


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # "error" | "warning" | "info"
    title: str
    description: str  # one sentence for the README


# ----------------------------------------------------------------------------- the procedures

# OMOP CDM 5.4 clinical tables CHoRUS collects, each with the column that identifies its rows.
OMOP_KEYS: dict[str, str] = {
    "person": "person_id",
    "observation_period": "observation_period_id",
    "visit_occurrence": "visit_occurrence_id",
    "visit_detail": "visit_detail_id",
    "condition_occurrence": "condition_occurrence_id",
    "drug_exposure": "drug_exposure_id",
    "procedure_occurrence": "procedure_occurrence_id",
    "device_exposure": "device_exposure_id",
    "measurement": "measurement_id",
    "observation": "observation_id",
    "death": "person_id",  # death has no id of its own: one row per person
    "note": "note_id",
    "note_nlp": "note_nlp_id",
}
# Every site has these; the others depend on what a site captures (devices, notes, deaths).
REQUIRED_TABLES = ("person", "observation_period", "visit_occurrence", "condition_occurrence",
                   "drug_exposure", "procedure_occurrence", "measurement", "observation")
OPTIONAL_TABLES = tuple(t for t in OMOP_KEYS if t not in REQUIRED_TABLES)
FORBIDDEN_TABLES = ("specimen",)
LINKS_TABLE = "waveform_visit_links"
LINK_COLUMNS = ("visit_occurrence_id", "session")

# WFDB signal formats: samples per group and bytes per group (a group is the smallest whole
# number of bytes: 212 packs 2 samples in 3 bytes, 310/311 pack 3 samples in 4 bytes).
WFDB_FORMAT_SIZES: dict[str, tuple[int, int]] = {
    "8": (1, 1), "16": (1, 2), "24": (1, 3), "32": (1, 4), "61": (1, 2), "80": (1, 1),
    "160": (1, 2), "212": (2, 3), "310": (3, 4), "311": (3, 4),
}
WFDB_COMPRESSED_FORMATS = ("508", "516", "524")  # FLAC: size not predictable
WFDB_FORMATS = ("0", *WFDB_FORMAT_SIZES, *WFDB_COMPRESSED_FORMATS)  # 0: null signal, no data

KIND_WFDB, KIND_DICOM, KIND_RECORDS = "wfdb_header", "dicom", "records"
KIND_OMOP, KIND_PERSON, KIND_VISITS, KIND_LINKS = "omop_csv", "omop_person", "omop_visits", "waveform_links"
KINDS = (KIND_WFDB, KIND_DICOM, KIND_RECORDS, KIND_OMOP, KIND_PERSON, KIND_VISITS, KIND_LINKS)
CSV_KINDS = (KIND_OMOP, KIND_PERSON, KIND_VISITS, KIND_LINKS)

RULES: tuple[Rule, ...] = (
    Rule("layout.no_omop", "error", "no OMOP folder",
         "The site root has no OMOP/ folder with the clinical tables."),
    Rule("layout.root_file", "warning", "file in the site root",
         "A file lies directly in the site root instead of OMOP/, Metadata/ or a person folder."),
    Rule("layout.unexpected_folder", "warning", "unknown top-level folder",
         "A top-level folder is neither OMOP/, Metadata/ nor a person folder (one holding Images/, Waveforms/ "
         "or Metadata/, or named in person.csv)."),
    Rule("layout.person_no_data", "warning", "person folder without data",
         "A person folder holds neither Images/ nor Waveforms/."),
    Rule("layout.person_file", "warning", "file directly in a person folder",
         "A file lies directly in a person folder instead of its Images/, Waveforms/ or Metadata/."),
    Rule("layout.person_subfolder", "warning", "unknown folder in a person folder",
         "A person folder has a subfolder other than Images/, Waveforms/ and Metadata/."),
    Rule("omop.missing_table", "error", "required OMOP table missing",
         f"A required OMOP table is missing from OMOP/ (required: {', '.join(REQUIRED_TABLES)})."),
    Rule("omop.optional_table_missing", "info", "optional OMOP table absent",
         f"An optional OMOP table is absent from OMOP/ (optional: {', '.join(OPTIONAL_TABLES)}); fine if the site "
         "does not capture it."),
    Rule("omop.specimen", "error", "specimen table submitted",
         "OMOP/specimen.csv is present, but CHoRUS does not collect the specimen table."),
    Rule("omop.unexpected_file", "warning", "unknown file in OMOP",
         "A file in OMOP/ is not one of the CDM 5.4 table CSVs CHoRUS collects nor waveform_visit_links.csv."),
    Rule("omop.unreadable", "error", "OMOP table unreadable",
         "An OMOP CSV cannot be read (empty, not UTF-8 text, or malformed rows in a column that is cross-checked)."),
    Rule("omop.delimiter", "error", "OMOP table not comma-delimited",
         "An OMOP CSV's header row is split by tabs, semicolons or pipes instead of commas."),
    Rule("omop.no_header", "error", "OMOP table without header row",
         "An OMOP CSV's first line holds values, not column names."),
    Rule("omop.missing_key", "error", "OMOP table lacks its key column",
         "An OMOP CSV's header lacks the table's key column (e.g. person_id in person.csv)."),
    Rule("links.missing", "error", "waveform-visit links missing",
         "The site has waveforms but no OMOP/waveform_visit_links.csv."),
    Rule("links.columns", "error", "waveform-visit links lack columns",
         "OMOP/waveform_visit_links.csv lacks a visit_occurrence_id or a session column."),
    Rule("links.unlinked_session", "warning", "waveform session not linked",
         "A waveform session has no row in OMOP/waveform_visit_links.csv."),
    Rule("links.unknown_session", "warning", "link to an unknown session",
         "OMOP/waveform_visit_links.csv names a session that is not on the site."),
    Rule("links.unknown_visit", "error", "link to an unknown visit",
         "OMOP/waveform_visit_links.csv names a visit_occurrence_id that is not in visit_occurrence.csv."),
    Rule("person.no_omop_row", "error", "person folder not in person.csv",
         "A person folder's id is not a person_id in OMOP/person.csv."),
    Rule("person.no_folder", "info", "persons without a folder",
         "Some person_ids in OMOP/person.csv have no person folder (normal for persons without waveforms or images)."),
    Rule("wfdb.bad_header", "error", "WFDB header unreadable",
         "A .hea file under Waveforms/ is not a parseable WFDB header."),
    Rule("wfdb.record_name", "error", "WFDB record name differs from file name",
         "A WFDB header's record name differs from its file name without .hea."),
    Rule("wfdb.format", "error", "unsupported WFDB signal format",
         f"A WFDB header uses a signal format the wfdb readers do not support ({', '.join(WFDB_FORMATS)} are)."),
    Rule("wfdb.missing_dat", "error", "WFDB signal file missing",
         "A signal file named in a WFDB header is not in the header's folder."),
    Rule("wfdb.dat_size", "error", "WFDB signal file has the wrong size",
         "A signal file's size differs from what its header implies (byte offset + samples x bytes per sample)."),
    Rule("wfdb.unreferenced_dat", "warning", "WFDB signal file not in any header",
         "A .dat file lies in a folder of WFDB headers but none of them names it."),
    Rule("wfdb.missing_segment", "error", "WFDB segment header missing",
         "A multi-segment WFDB header names a segment whose <segment>.hea is not in its folder."),
    Rule("wfdb.segment_length", "error", "WFDB segment lengths disagree",
         "A segment header's length differs from the length its multi-segment header gives, or the segment lengths do "
         "not add up to the record's length."),
    Rule("wfdb.no_header", "error", "waveform session without header",
         "A waveform session folder holds no .hea header and its files do not follow the flat naming "
         "<person_id>_<YYYYMMDD>_<HHMMSS>_<duration_s>.<ext>."),
    Rule("wfdb.numerics_name", "warning", "numerics file misnamed",
         "A CSV in a WFDB session folder is not named <session>n.csv, the name for numerics."),
    Rule("records.missing", "error", "RECORDS file missing",
         "A person with WFDB records has no RECORDS file in <person>/Waveforms/ or in the session folders."),
    Rule("records.unlisted", "warning", "WFDB record not in RECORDS",
         "A WFDB record (not a segment) is not listed in its person's or its session folder's RECORDS file."),
    Rule("records.absent", "error", "RECORDS lists an absent record",
         "A RECORDS file lists a record whose header is not on the site."),
    Rule("records.unreadable", "error", "RECORDS unreadable",
         "A RECORDS file is empty or not UTF-8 text."),
    Rule("dicom.unreadable", "error", "DICOM header unreadable",
         "A .dcm file under Images/ has no readable DICOM header."),
    Rule("dicom.outside_series", "error", "DICOM file outside a study/series folder",
         "A .dcm file does not lie in <person>/Images/<study>/<series>/."),
    Rule("dicom.name_mismatch", "error", "DICOM name disagrees with its header",
         "A DICOM file name's modality, series or instance differs from the header's Modality, SeriesNumber or "
         "InstanceNumber."),
    Rule("dicom.datetime_mismatch", "warning", "DICOM name date/time not in the header",
         "A DICOM file name's date and time match none of the header's study, series, acquisition or content "
         "date/time."),
    Rule("dicom.patient_id", "warning", "DICOM PatientID differs from the person folder",
         "A DICOM header's PatientID is set but differs from the person folder it lies in."),
    Rule("path.person_mismatch", "error", "file name names another person",
         "A file name starts with a person id other than that of the person folder it lies in."),
    Rule("path.unparsed", "warning", "path fits no naming pattern",
         "A file's path fits none of the site's naming patterns (and no more specific rule explains why)."),
    Rule("file.empty", "warning", "empty file",
         "A file is empty (0 bytes), usually an interrupted copy."),
    Rule("file.duplicate", "warning", "same content under two persons",
         "Files with identical content (MD5) lie under more than one person folder."),
)
_SEVERITY = {r.id: r.severity for r in RULES}


# ----------------------------------------------------------------------------- paths and kinds


def _path_columns(current: pl.DataFrame) -> pl.LazyFrame:
    """Helper columns from srcfile: the parts of the path, lower-cased where the layout is.
    (Cheap string functions where possible: this runs over every file of the site.)"""
    parts, name, ext = pl.col("_parts"), pl.col("_name"), pl.col("_ext_l")
    return (
        current.lazy()
        .with_columns(_parts=pl.col("srcfile").str.split("/"))
        .with_columns(
            _n=parts.list.len(),
            _top=parts.list.first(),
            _second=parts.list.get(1, null_on_oob=True),
            _third=parts.list.get(2, null_on_oob=True),
            _name=parts.list.last(),
        )
        .with_columns(
            _dir=pl.col("srcfile").str.head(
                (pl.col("srcfile").str.len_chars() - name.str.len_chars() - 1).clip(lower_bound=0)),
            _top_l=pl.col("_top").str.to_lowercase(),
            _second_l=pl.col("_second").str.to_lowercase(),
            _ext_l=name.str.extract(r"\.([^.]*)$").str.to_lowercase(),
        )
        .with_columns(
            _stem=pl.when(ext.is_null()).then(name).otherwise(
                name.str.head(name.str.len_chars() - ext.str.len_chars() - 1)),
            _table=pl.when((ext == "csv") & (pl.col("_top_l") == "omop")).then(
                name.str.to_lowercase().str.strip_suffix(".csv")),
        )
        .drop("_parts")
    )


def _kind_expr() -> pl.Expr:
    in_person = (pl.col("_n") >= 3) & ~pl.col("_top_l").is_in(["omop", "metadata"])
    waveforms = in_person & (pl.col("_second_l") == "waveforms")
    table = pl.col("_table")
    omop = (pl.col("_top_l") == "omop") & (pl.col("_n") == 2)
    return (
        pl.when(waveforms & (pl.col("_ext_l") == "hea")).then(pl.lit(KIND_WFDB))
        .when(waveforms & (pl.col("_name") == "RECORDS")).then(pl.lit(KIND_RECORDS))
        .when(in_person & (pl.col("_second_l") == "images") & (pl.col("_ext_l") == "dcm")).then(pl.lit(KIND_DICOM))
        .when(omop & (table == "person")).then(pl.lit(KIND_PERSON))
        .when(omop & (table == "visit_occurrence")).then(pl.lit(KIND_VISITS))
        .when(omop & (table == LINKS_TABLE)).then(pl.lit(KIND_LINKS))
        .when(omop & table.is_in([*OMOP_KEYS, *FORBIDDEN_TABLES])).then(pl.lit(KIND_OMOP))
        .otherwise(pl.lit(None, pl.String))
        .alias("kind")
    )


def facts_needed(current: pl.DataFrame) -> pl.DataFrame:
    """Rows (srcfile, md5, kind) of the files whose header facts a rule needs; kind from the name."""
    return (
        _path_columns(current.select("srcfile", "md5"))
        .with_columns(_kind_expr())
        .filter(pl.col("kind").is_not_null() & pl.col("md5").is_not_null())
        .select("srcfile", "md5", "kind")
        .collect()
    )


# ----------------------------------------------------------------------------- reading facts

MAX_TEXT_BYTES = 16 * 1024 * 1024  # a WFDB header or RECORDS file larger than this is not one
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
}


class BadContent(ValueError):
    """The file's content is not what its name says it is (the message says how)."""


def _read_text(f, encoding: str) -> str:
    data = f.read(MAX_TEXT_BYTES + 1)
    if not data:
        raise BadContent("the file is empty")
    if len(data) > MAX_TEXT_BYTES:
        raise BadContent(f"the file is larger than {MAX_TEXT_BYTES // (1024 * 1024)} MiB")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise BadContent(f"the file is not {encoding.upper()} text (binary data?)") from None
    if _BINARY.search(text):
        raise BadContent("the file holds control characters (binary data?)")
    return text


def _wfdb_facts(f) -> dict[str, Any]:
    text = _read_text(f, "ascii")
    return parse_wfdb_header(text)


@functools.cache
def _wfdb_parsers() -> tuple[Any, Any]:
    """wfdb's parsers of header text (rdheader reads only files), imported once and quietly:
    wfdb 4.x warns about pandas deprecations at import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from wfdb.io import _header, header
    return _header, header


def parse_wfdb_header(text: str) -> dict[str, Any]:
    """The facts of a WFDB header's text, by the wfdb library's own header grammar (its record,
    signal and segment line expressions). wfdb's line parsers are not called: they look up
    field defaults in pandas frames, ~2.5 ms a header (minutes on a first run over 100k
    headers); matching the same expressions and converting the few fields used is ~30 us."""
    _header, header = _wfdb_parsers()
    lines, _comments = header.parse_header_content(text)
    if not lines:
        raise BadContent("no record line (only comments or blank lines)")
    try:
        rec = _match(_header.rx_record, lines[0], "record")
        n_sig = int(rec["n_sig"])
        facts: dict[str, Any] = {
            "record_name": rec["record_name"],
            "n_sig": n_sig,
            "sig_len": int(rec["sig_len"]) if rec["sig_len"] else None,
            "fs": float(rec["fs"]) if rec["fs"] else None,
            "base_time": _header.wfdb_strptime(rec["base_time"]).isoformat() if rec["base_time"] else None,
            "base_date": (datetime.strptime(rec["base_date"], "%d/%m/%Y").date().isoformat()
                          if rec["base_date"] else None),
            "signals": [],
            "segments": None,
        }
        if not rec["n_seg"]:
            if len(lines) - 1 != n_sig:
                raise BadContent(f"the record line declares {n_sig} signals but {len(lines) - 1} signal lines follow")
            for line in lines[1:]:
                sig = _match(_header.rx_signal, line, "signal")
                facts["signals"].append({
                    "file_name": sig["file_name"], "fmt": sig["fmt"],
                    "samps_per_frame": int(sig["samps_per_frame"] or 1), "byte_offset": int(sig["byte_offset"] or 0),
                })
        else:
            n_seg = int(rec["n_seg"])
            if len(lines) - 1 != n_seg:
                raise BadContent(f"the record line declares {n_seg} segments but {len(lines) - 1} segment lines follow")
            facts["segments"] = [{"name": seg["seg_name"], "length": int(seg["seg_len"])}
                                 for seg in (_match(_header.rx_segment, line, "segment") for line in lines[1:])]
    except BadContent:
        raise
    except ValueError as exc:  # bad dates/times, bad numbers
        raise BadContent(f"invalid header syntax ({exc})") from None
    return facts


def _match(expression: re.Pattern, line: str, what: str) -> dict[str, str]:
    found = expression.match(line)
    if found is None:
        raise BadContent(f"invalid header syntax (invalid syntax in {what} line)")
    return found.groupdict()


def _dicom_text(element: Any) -> str | None:
    if element is None:
        return None
    value = element.value
    if isinstance(value, bytes | bytearray):
        # Raw bytes (pydicom converts lazily): decoded here so odd values never raise or warn.
        value = bytes(value).decode("latin-1")
    elif value is not None and not isinstance(value, str):
        value = str(value)
    value = (value or "").strip("\x00 \t\r\n")
    return value or None


def _dicom_facts(f) -> dict[str, Any]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not f.read(1):
        raise BadContent("the file is empty")
    f.seek(0)
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=list(_DICOM_TAGS.values()))
    except InvalidDicomError:
        raise BadContent("not a DICOM Part 10 file (no 'DICM' prefix and File Meta Information)") from None
    except (EOFError, ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
        raise BadContent(f"DICOM header cannot be parsed: {type(exc).__name__}: {exc}") from None
    values = {key: _dicom_text(ds.get_item(tag)) for key, tag in _DICOM_TAGS.items()}
    return {key: value for key, value in values.items() if value is not None}  # absent: not in the header


def _records_facts(f) -> dict[str, Any]:
    text = _read_text(f, "utf-8")
    lines = [line.strip() for line in text.splitlines()]
    return {"records": [line for line in lines if line and not line.startswith("#")]}


def _csv_header(f) -> tuple[dict[str, Any], list[str]]:
    """The facts of a CSV's first line, and its column names as written (for pyarrow)."""
    data = b""
    while b"\n" not in data and len(data) <= MAX_CSV_HEADER_BYTES:
        chunk = f.read(64 * 1024)
        if not chunk:
            break
        data += chunk
    if not data:
        raise BadContent("the file is empty (no header row)")
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if len(line) > MAX_CSV_HEADER_BYTES:
        raise BadContent(f"the first line is longer than {MAX_CSV_HEADER_BYTES // 1024} KiB: not a CSV header row")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadContent("the header row is not UTF-8 text") from None
    if _BINARY.search(text):
        raise BadContent("the header row holds control characters (binary data?)")
    counts = {d: text.count(d) for d in (",", "\t", ";", "|")}
    delimiter = max(counts, key=lambda d: (counts[d], d == ","))
    if counts[delimiter] == 0:
        delimiter = ","
    raw = next(csv.reader([text], delimiter=delimiter)) if text else []
    columns = [c.strip().strip('"').strip().lower() for c in raw]
    return {"columns": columns, "delimiter": delimiter}, raw


def _csv_columns(f, raw_names: list[str], columns: list[str], wanted: tuple[str, ...]) -> dict[str, list[str]] | None:
    """The distinct (rows of the) wanted columns, streamed with pyarrow; None if one is absent."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if any(w not in columns for w in wanted):
        return None
    names = [raw_names[columns.index(w)] for w in wanted]
    f.seek(0)
    try:
        reader = pacsv.open_csv(
            f,
            read_options=pacsv.ReadOptions(block_size=4 * 1024 * 1024),
            parse_options=pacsv.ParseOptions(delimiter=",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(include_columns=names, column_types={n: pa.string() for n in names}),
        )
        table = reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadContent(f"cannot read column(s) {', '.join(wanted)}: {exc}") from None
    frame = (
        pl.from_arrow(table)
        .rename(dict(zip(names, wanted, strict=True)))
        .with_columns(pl.col(w).str.strip_chars() for w in wanted)
        .filter(pl.all_horizontal(pl.col(w).is_not_null() & (pl.col(w) != "") for w in wanted))
        .unique(maintain_order=True)
    )
    return {w: frame[w].to_list() for w in wanted}


def _csv_facts(kind: str) -> Callable[[Any], dict[str, Any]]:
    wanted = {KIND_PERSON: ("person_id",), KIND_VISITS: ("visit_occurrence_id",), KIND_LINKS: LINK_COLUMNS}.get(kind)

    def read(f) -> dict[str, Any]:
        facts, raw = _csv_header(f)
        if wanted:
            values = _csv_columns(f, raw, facts["columns"], wanted) if facts["delimiter"] == "," else None
            for w in wanted:
                facts[w] = None if values is None else values[w]
        return facts

    return read


_READERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    KIND_WFDB: _wfdb_facts,
    KIND_DICOM: _dicom_facts,
    KIND_RECORDS: _records_facts,
    **{kind: _csv_facts(kind) for kind in CSV_KINDS},
}


def read_facts(source, srcfile: str, kind: str) -> dict[str, Any]:
    """The facts of one file; {"error": ...} for content that is not what the name says.

    An error that is about reading, not content (the file vanished, permission denied,
    a network failure), also carries "retry": true: such facts must not be cached.
    """
    reader = _READERS.get(kind)
    if reader is None:
        return {"error": f"no reader for kind {kind!r}"}
    try:
        with source.open(srcfile) as f:
            return reader(f)
    except BadContent as exc:
        return {"error": str(exc)}
    except OSError as exc:
        return {"error": f"cannot read the file: {exc.strerror or exc}", "retry": True}
    except Exception as exc:  # noqa: BLE001 - a parser's bug or an oddity nobody foresaw: a finding, not a crash
        return {"error": f"cannot parse the file ({type(exc).__name__}: {exc})"}


def extract_facts(source, todo: pl.DataFrame, *, workers: int = 1) -> pl.DataFrame:
    """FACTS_SCHEMA rows, one per distinct (kind, md5) of `todo` (srcfile, md5, kind).

    Reads only what each kind needs through source.open: WFDB and RECORDS text, a
    DICOM header up to the pixel data, an OMOP CSV's first line, and the whole of
    person.csv, visit_occurrence.csv and waveform_visit_links.csv (one or two columns
    of them). Never raises for bad content.
    """
    jobs = (
        todo.filter(pl.col("md5").is_not_null() & pl.col("kind").is_not_null())
        .unique(["kind", "md5"], keep="first", maintain_order=True)
        .select("kind", "md5", "srcfile")
        .rows()
    )

    kinds = {kind for kind, _, _ in jobs}
    # Imported before workers start: threads (catch_warnings is not thread-safe) and forked
    # processes (each would import them again) then share them.
    if KIND_WFDB in kinds:
        _wfdb_parsers()
    if KIND_DICOM in kinds:
        import pydicom  # noqa: F401
    headers = [job for job in jobs if job[0] in _HEADER_KINDS]
    if workers > 1 and len(headers) >= _PROCESS_MIN_JOBS and getattr(source, "hash_in_processes", False):
        # Parsing headers is Python-bound (pydicom ~0.5 ms, a WFDB header ~0.3 ms): threads would share one
        # core. Only header kinds go to the (forked) workers: the OMOP readers use polars, whose thread
        # pool does not survive a fork; those few files are read here.
        from .sources import pool

        chunks = [headers[i: i + _CHUNK_JOBS] for i in range(0, len(headers), _CHUNK_JOBS)]
        with pool(workers) as executor:
            rows = [row for part in executor.map(_facts_rows, [source] * len(chunks), chunks) for row in part]
        rows += _facts_rows(source, [job for job in jobs if job[0] not in _HEADER_KINDS])
    elif workers > 1 and len(jobs) > 1:  # remote sources: reads wait on the network
        with ThreadPoolExecutor(max_workers=workers) as executor:
            rows = [row for part in executor.map(lambda job: _facts_rows(source, [job]), jobs) for row in part]
    else:
        rows = _facts_rows(source, jobs)
    return pl.DataFrame(rows, schema=FACTS_SCHEMA, orient="row")


_HEADER_KINDS = frozenset({KIND_WFDB, KIND_DICOM, KIND_RECORDS})  # standard library, pydicom, wfdb's grammar
_PROCESS_MIN_JOBS = 2000  # below this, starting worker processes costs more than it saves
_CHUNK_JOBS = 500


def _facts_rows(source, jobs: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """FACTS rows of (kind, md5, srcfile) jobs; runs in worker processes too."""
    return [(kind, md5, json.dumps(read_facts(source, srcfile, kind), separators=(",", ":"))) for kind, md5, srcfile in jobs]


# ----------------------------------------------------------------------------- decoding facts

_CSV_DTYPE = {"error": pl.String, "columns": pl.List(pl.String), "delimiter": pl.String}
_FACT_DTYPES: dict[str, pl.Struct] = {
    KIND_WFDB: pl.Struct({
        "error": pl.String, "record_name": pl.String, "n_sig": pl.Int64, "sig_len": pl.Int64,
        "signals": pl.List(pl.Struct({"file_name": pl.String, "fmt": pl.String,
                                      "samps_per_frame": pl.Int64, "byte_offset": pl.Int64})),
        "segments": pl.List(pl.Struct({"name": pl.String, "length": pl.Int64})),
    }),
    KIND_DICOM: pl.Struct({"error": pl.String, **{key: pl.String for key in _DICOM_TAGS}}),
    KIND_RECORDS: pl.Struct({"error": pl.String, "records": pl.List(pl.String)}),
    KIND_OMOP: pl.Struct(_CSV_DTYPE),
    KIND_PERSON: pl.Struct({**_CSV_DTYPE, "person_id": pl.List(pl.String)}),
    KIND_VISITS: pl.Struct({**_CSV_DTYPE, "visit_occurrence_id": pl.List(pl.String)}),
    KIND_LINKS: pl.Struct({**_CSV_DTYPE, "visit_occurrence_id": pl.List(pl.String), "session": pl.List(pl.String)}),
}


# What rules need of a file beside its facts (a narrow frame: a million DICOM rows are copied cheaply).
_FILE_COLUMNS = ("srcfile", "md5", "size", "_n", "_top", "_second", "_third", "_dir", "_name", "_stem", "_table",
                 "kind")


def _with_facts(files: pl.DataFrame, facts: pl.DataFrame, kind: str) -> pl.DataFrame:
    """The files of one kind with their decoded facts; `_known` is false where none were extracted.

    Joined on a 64-bit hash of the MD5 (then checked on the MD5 itself): a million-row
    join on integers costs a fraction of one on 32-character strings.
    """
    rows = files.lazy().filter(pl.col("kind") == kind).select(_FILE_COLUMNS).with_columns(
        _h=pl.col("md5").hash()).collect()
    decoded = (
        facts.lazy()
        .filter(pl.col("kind") == kind)
        .select(pl.col("md5").alias("_md5"), pl.col("md5").hash().alias("_h"),
                pl.col("facts").str.json_decode(_FACT_DTYPES[kind]).alias("_f"))
        .unnest("_f")
        .with_columns(_known=pl.lit(True))
        .collect(engine="streaming")  # decodes in parallel: a million DICOM headers' facts take a while
    )
    out = (
        rows.join(decoded, on="_h", how="left")
        .filter(pl.col("_md5").is_null() | (pl.col("_md5") == pl.col("md5")))
        .with_columns(pl.col("_known").fill_null(False))
    )
    return out.with_columns(_ok=pl.col("_known") & pl.col("error").is_null()).drop("_h", "_md5")


# ----------------------------------------------------------------------------- check


def _norm_id(expr: pl.Expr) -> pl.Expr:
    """Ids compared as OMOP stores them: digits-only ids without their leading zeros."""
    s = expr.str.strip_chars().str.strip_chars('"')
    return pl.when(s.str.contains(r"^\d+$")).then(s.str.replace(r"^0+(\d)", "${1}")).otherwise(s)


_FINDING_COLUMNS = {"rule": pl.String, "srcfile": pl.String, "message": pl.String}


def _found(rule: str, frame: pl.DataFrame | pl.LazyFrame, srcfile: pl.Expr | str, message: pl.Expr) -> pl.LazyFrame:
    srcfile_expr = pl.col(srcfile) if isinstance(srcfile, str) else srcfile
    return frame.lazy().select(pl.lit(rule).alias("rule"), srcfile_expr.alias("srcfile"), message.alias("message"))


def _one(rule: str, srcfile: str, message: str) -> pl.LazyFrame:
    return pl.LazyFrame({"rule": [rule], "srcfile": [srcfile], "message": [message]}, schema=_FINDING_COLUMNS)


def _join_list(values: pl.Expr, limit: int = 5) -> pl.Expr:
    return values.list.head(limit).list.join(", ")


class _Site:
    """The current files with path helper columns, person-folder facts and decoded facts."""

    def __init__(self, current: pl.DataFrame, facts: pl.DataFrame):
        files = _path_columns(current).with_columns(_kind_expr()).collect()
        self.person = _with_facts(files, facts, KIND_PERSON)
        ids = self.person.filter(
            pl.col("_ok") & (pl.col("delimiter") == ",") & pl.col("person_id").is_not_null()
        )
        self.person_ids: pl.Series | None = (
            ids.select(_norm_id(pl.col("person_id").explode())).to_series().drop_nulls().unique()
            if ids.height else None
        )
        top = (pl.col("_n") >= 2) & ~pl.col("_top_l").is_in(["omop", "metadata"])
        folders = files.filter(top).group_by("_top").agg(
            _has_data=(pl.col("_second_l").is_in(["images", "waveforms"]) & (pl.col("_n") >= 3)).any(),
            _has_meta=((pl.col("_second_l") == "metadata") & (pl.col("_n") >= 3)).any(),
        ).with_columns(_key=_norm_id(pl.col("_top")))
        in_omop = pl.col("_key").is_in(self.person_ids.implode()) if self.person_ids is not None else pl.lit(False)
        self.folders = folders.with_columns(_in_omop=in_omop).with_columns(
            _is_person=pl.col("_has_data") | pl.col("_has_meta") | pl.col("_in_omop")
        )
        files = files.join(self.folders.select("_top", "_is_person"), on="_top", how="left").with_columns(
            pl.col("_is_person").fill_null(False)
        )
        p, n, second = pl.col("_is_person"), pl.col("_n"), pl.col("_second_l")
        self.files = files.with_columns(
            _person_file=p & (n == 2),
            _person_subfolder=p & (n >= 3) & ~second.is_in(["images", "waveforms", "metadata"]),
            _waveforms=p & (n >= 3) & (second == "waveforms"),
            _images=p & (n >= 3) & (second == "images"),
        ).with_columns(
            _outside_series=pl.col("_images") & (pl.col("_ext_l") == "dcm") & (n != 5),
        )
        # Names whose person id (before _<YYYYMMDD>_<HHMMSS>) is not the folder's. Nearly all names start
        # with "<folder>_": only the others are parsed.
        self.person_mismatch = (
            self.files.filter((pl.col("_waveforms") | pl.col("_images"))
                              & ~pl.col("_name").str.starts_with(pl.col("_top") + "_"))
            .with_columns(_name_person=pl.col("_name").str.extract(r"^(.+?)_\d{8}_\d{6}(?:[_.]|$)", 1))
            .filter(pl.col("_name_person").is_not_null() & (pl.col("_name_person") != pl.col("_top")))
        )
        self.facts = facts
        self._of_kind: dict[str, pl.DataFrame] = {KIND_PERSON: self.person}
        omop = self.files.filter(pl.col("_top_l") == "omop")
        self.omop_dir = omop["_top"].min() if omop.height else None

    def of_kind(self, kind: str) -> pl.DataFrame:
        if kind not in self._of_kind:
            self._of_kind[kind] = _with_facts(self.files, self.facts, kind)
        return self._of_kind[kind]


def check(current: pl.DataFrame, facts: pl.DataFrame) -> pl.DataFrame:
    """All rules over the current files and their facts; FINDINGS_SCHEMA sorted by srcfile, rule."""
    site = _Site(current, facts)
    wfdb = site.of_kind(KIND_WFDB)
    found = [
        *_layout(site),
        *_omop(site),
        *_links(site),
        *_persons(site),
        *_wfdb(site, wfdb),
        *_records(site, wfdb),
        *_dicom(site),
        *_files(site),
    ]
    out = pl.concat([f.cast(_FINDING_COLUMNS) for f in found]).unique().collect()  # type: ignore[arg-type]
    return (
        out.with_columns(severity=pl.col("rule").replace_strict(_SEVERITY, return_dtype=pl.String))
        .select(*FINDINGS_SCHEMA)
        .sort("srcfile", "rule", "message")
    )


def _layout(site: _Site) -> list[pl.LazyFrame]:
    f, folders = site.files, site.folders
    out = [
        _found("layout.root_file", f.filter(pl.col("_n") == 1), "srcfile",
               pl.lit("file in the site root: move it into OMOP/, Metadata/ or its person folder")),
        _found("layout.unexpected_folder", folders.filter(~pl.col("_is_person")), pl.col("_top") + "/",
               pl.lit("top-level folder is not OMOP/, Metadata/ or a person folder (no Images/, Waveforms/ or "
                      "Metadata/ inside, and not a person_id in person.csv): move or remove it")),
        _found("layout.person_no_data", folders.filter(pl.col("_is_person") & ~pl.col("_has_data")),
               pl.col("_top") + "/",
               pl.lit("person folder has neither Images/ nor Waveforms/: add the person's data or remove the folder")),
        _found("layout.person_file", f.filter(pl.col("_person_file")), "srcfile",
               pl.lit("file lies directly in the person folder: move it into Images/, Waveforms/ or Metadata/")),
        _found("layout.person_subfolder", f.filter(pl.col("_person_subfolder")).unique(["_top", "_second"]),
               pl.format("{}/{}/", pl.col("_top"), pl.col("_second")),
               pl.format("unknown folder {}/ in a person folder: only Images/, Waveforms/ and Metadata/ belong there; "
                         "move its files or remove it", pl.col("_second"))),
    ]
    if site.omop_dir is None:
        out.append(_one("layout.no_omop", "OMOP/", "the site has no OMOP/ folder: add OMOP/ with the CDM 5.4 "
                                                     "tables as comma-delimited CSV files"))
    return out


def _omop(site: _Site) -> list[pl.LazyFrame]:
    if site.omop_dir is None:
        return []
    omop_dir = site.omop_dir
    omop = site.files.filter(pl.col("_top_l") == "omop")
    tables = omop.filter(pl.col("_n") == 2)["_table"].drop_nulls().unique().to_list()
    out: list[pl.LazyFrame] = []
    for table in REQUIRED_TABLES:
        if table not in tables:
            out.append(_one("omop.missing_table", f"{omop_dir}/{table}.csv",
                            f"required OMOP table {table} is missing: add {omop_dir}/{table}.csv (a full snapshot "
                            f"with a header row)"))
    for table in OPTIONAL_TABLES:
        if table not in tables:
            out.append(_one("omop.optional_table_missing", f"{omop_dir}/{table}.csv",
                            f"optional OMOP table {table} is absent: add {omop_dir}/{table}.csv if the site "
                            f"captures it"))
    known = [*OMOP_KEYS, LINKS_TABLE]
    in_folder = pl.col("_n") == 2
    out.append(_found("omop.specimen", omop.filter(in_folder & pl.col("_table").is_in(FORBIDDEN_TABLES)), "srcfile",
                      pl.lit("CHoRUS does not collect the specimen table: remove this file")))
    out.append(_found(
        "omop.unexpected_file",
        omop.filter(~in_folder | (~pl.col("_table").is_in([*known, *FORBIDDEN_TABLES])).fill_null(True)), "srcfile",
        pl.lit("not an OMOP table CHoRUS collects: OMOP/ holds <table>.csv for the CDM 5.4 clinical tables and "
               "waveform_visit_links.csv only; rename or remove it")))

    csvs = pl.concat(
        [site.of_kind(k).select("srcfile", "_table", "_known", "_ok", "error", "columns", "delimiter")
         for k in CSV_KINDS], how="vertical_relaxed")
    parsed = csvs.filter(pl.col("_ok"))
    comma = parsed.filter(pl.col("delimiter") == ",")
    looks_like_value = pl.col("columns").list.eval(pl.element().str.contains(r"^[-+.0-9]")).list.any()
    no_header = pl.col("columns").list.len().eq(0) | looks_like_value | pl.col("columns").list.eval(
        pl.element() == "").list.all()
    tables_only = pl.col("_table").is_in(list(OMOP_KEYS))
    key = pl.col("_table").replace_strict(OMOP_KEYS, default=None, return_dtype=pl.String)
    has_key = pl.col("columns").list.set_intersection(pl.concat_list(key)).list.len() > 0
    delim_name = pl.col("delimiter").replace_strict(
        {"\t": "tabs", ";": "semicolons", "|": "pipes"}, default=pl.col("delimiter"), return_dtype=pl.String)
    out += [
        _found("omop.unreadable", csvs.filter(pl.col("error").is_not_null()), "srcfile",
               pl.format("cannot read this OMOP table: {}; write it as UTF-8 comma-delimited text with a header row",
                         pl.col("error"))),
        _found("omop.delimiter", parsed.filter(pl.col("delimiter") != ","), "srcfile",
               pl.format("the header row is split by {}, not commas: export the table comma-delimited", delim_name)),
        _found("omop.no_header", comma.filter(tables_only & no_header), "srcfile",
               pl.lit("the first line holds values, not column names: export the table with its header row")),
        _found("omop.missing_key", comma.filter(tables_only & ~no_header & ~has_key), "srcfile",
               pl.format("the header lacks the key column {}: export the table with its CDM 5.4 column names", key)),
    ]
    return out


def _links(site: _Site) -> list[pl.LazyFrame]:
    if site.omop_dir is None:
        return []
    f = site.files
    sessions = (
        f.filter(pl.col("_waveforms") & pl.col("session_id").is_not_null() & (pl.col("session_id") != "")
                 & pl.col("parse_error").is_null())
        .with_columns(_where=pl.when(pl.col("_n") == 4).then(pl.col("_dir") + "/").otherwise(pl.col("srcfile")))
        .group_by("_top", "session_id")
        .agg(pl.col("_where").min())
    )
    links = site.of_kind(KIND_LINKS)
    has_waveforms = f["_waveforms"].any()
    if links.height == 0:
        if not has_waveforms:
            return []
        return [_one("links.missing", f"{site.omop_dir}/{LINKS_TABLE}.csv",
                     f"the site has waveforms but no {site.omop_dir}/{LINKS_TABLE}.csv: add it with columns "
                     f"visit_occurrence_id and session, one row per waveform session")]
    parsed = links.filter(pl.col("_ok") & (pl.col("delimiter") == ","))
    out = [_found(
        "links.columns", parsed.filter(pl.col("visit_occurrence_id").is_null() | pl.col("session").is_null()),
        "srcfile",
        pl.format("the header ({}) lacks visit_occurrence_id and/or session: the table needs both columns, "
                  "named so in its header row", pl.col("columns").list.join(",")))]
    usable = parsed.filter(pl.col("visit_occurrence_id").is_not_null() & pl.col("session").is_not_null())
    if usable.height == 0:
        return out  # no usable links table: links.columns or omop.* already say why
    pairs = usable.select("srcfile", "visit_occurrence_id", "session").explode("visit_occurrence_id", "session")
    out.append(_found(
        "links.unlinked_session", sessions.join(pairs, left_on="session_id", right_on="session", how="anti"),
        "_where",
        pl.format("waveform session {} has no row in {}/{}.csv: add its visit_occurrence_id", pl.col("session_id"),
                  pl.lit(site.omop_dir), pl.lit(LINKS_TABLE))))
    out.append(_found(
        "links.unknown_session", pairs.join(sessions, left_on="session", right_on="session_id", how="anti")
        .unique(["srcfile", "session"]), "srcfile",
        pl.format("links session {}, which is not on the site: fix the session name or remove the row",
                  pl.col("session"))))
    visits = site.of_kind(KIND_VISITS).filter(
        pl.col("_ok") & (pl.col("delimiter") == ",") & pl.col("visit_occurrence_id").is_not_null())
    if visits.height:
        known = visits.select(_norm_id(pl.col("visit_occurrence_id").explode()).alias("_visit")).unique()
        unknown = pairs.with_columns(_visit=_norm_id(pl.col("visit_occurrence_id"))).join(known, on="_visit",
                                                                                          how="anti")
        out.append(_found(
            "links.unknown_visit", unknown.unique(["srcfile", "visit_occurrence_id"]), "srcfile",
            pl.format("links visit_occurrence_id {}, which is not in visit_occurrence.csv: fix the id or add the visit",
                      pl.col("visit_occurrence_id"))))
    return out


def _persons(site: _Site) -> list[pl.LazyFrame]:
    if site.person_ids is None:
        return []  # no readable person.csv: omop.* says why
    out = [_found(
        "person.no_omop_row", site.folders.filter(pl.col("_is_person") & ~pl.col("_in_omop")), pl.col("_top") + "/",
        pl.format("person folder {} has no row in person.csv: add the person to OMOP/person.csv or fix the folder name",
                  pl.col("_top")))]
    folder_keys = site.folders.filter(pl.col("_is_person"))["_key"]
    missing = site.person_ids.filter(~site.person_ids.is_in(folder_keys.implode())).sort()
    if missing.len():
        person_csv = site.person.filter(pl.col("_ok"))["srcfile"].min()
        examples = ", ".join(missing.head(5).to_list())
        out.append(_one("person.no_folder", person_csv,
                        f"{missing.len()} person_id(s) in person.csv have no person folder (e.g. {examples}); "
                        f"expected for persons without waveforms or images"))
    return out


def _wfdb(site: _Site, headers: pl.DataFrame) -> list[pl.LazyFrame]:
    f = site.files
    ok = headers.filter(pl.col("_ok"))
    out = [
        _found("wfdb.bad_header", headers.filter(pl.col("error").is_not_null()), "srcfile",
               pl.format("not a readable WFDB header: {}; write it with a WFDB writer", pl.col("error"))),
        _found("wfdb.record_name", ok.filter(pl.col("record_name") != pl.col("_stem")), "srcfile",
               pl.format("the header's record name is {} but the file is {}.hea: make them equal",
                         pl.col("record_name"), pl.col("_stem"))),
    ]
    signals = (
        ok.filter(pl.col("signals").list.len() > 0)
        .select(pl.col("srcfile").alias("_header"), "_dir", "_name", "sig_len", "signals")
        .explode("signals")
        .unnest("signals")
    )
    bad_fmt = signals.filter(~pl.col("fmt").is_in(WFDB_FORMATS)).group_by("_header").agg(
        pl.col("fmt").unique().sort())
    out.append(_found("wfdb.format", bad_fmt, "_header",
                      pl.format("signal format(s) {} are not WFDB formats the readers support: write the signals in "
                                "format 16 (or another of {})", pl.col("fmt").list.join(", "),
                                pl.lit(", ".join(WFDB_FORMATS)))))
    data = signals.filter(
        (pl.col("fmt") != "0") & pl.col("file_name").is_not_null() & ~pl.col("file_name").is_in(["", "~", "-"])
    ).with_columns(_path=pl.col("_dir") + "/" + pl.col("file_name"))
    present = f.filter(pl.col("_waveforms")).select(pl.col("srcfile").alias("_path"), pl.col("size").alias("_size"))
    out.append(_found(
        "wfdb.missing_dat", data.unique(["_header", "_path"]).join(present, on="_path", how="anti"), "_header",
        pl.format("signal file {} named in this header is not in its folder: add it or fix the header",
                  pl.col("file_name"))))
    sizes = pl.DataFrame(
        {"fmt": list(WFDB_FORMAT_SIZES), "_spg": [v[0] for v in WFDB_FORMAT_SIZES.values()],
         "_bpg": [v[1] for v in WFDB_FORMAT_SIZES.values()]},
        schema={"fmt": pl.String, "_spg": pl.Int64, "_bpg": pl.Int64})
    per_file = (
        data.group_by("_header", "_name", "_path", "file_name")
        .agg(pl.col("samps_per_frame").fill_null(1).sum().alias("_spf"), pl.col("fmt").n_unique().alias("_nfmt"),
             pl.col("fmt").first(), pl.col("byte_offset").fill_null(0).first().alias("_offset"),
             pl.col("sig_len").first())
        .filter((pl.col("_nfmt") == 1) & pl.col("sig_len").is_not_null())
        .join(sizes, on="fmt", how="inner")
        .join(present, on="_path", how="inner")
        .with_columns(_samples=pl.col("sig_len") * pl.col("_spf"))
        .with_columns(
            _min=pl.col("_offset") + (pl.col("_samples") * pl.col("_bpg") + pl.col("_spg") - 1) // pl.col("_spg"),
            _max=pl.col("_offset") + (pl.col("_samples") + pl.col("_spg") - 1) // pl.col("_spg") * pl.col("_bpg"),
        )
    )
    out.append(_found(
        "wfdb.dat_size", per_file.filter((pl.col("_size") < pl.col("_min")) | (pl.col("_size") > pl.col("_max"))),
        "_path",
        pl.format("{} bytes, but {} implies {} (sig_len {} x {} samples per frame in format {}, plus a {}-byte "
                  "offset): the file is truncated or the header is wrong; re-export the record",
                  pl.col("_size"), pl.col("_name"), pl.col("_min"), pl.col("sig_len"), pl.col("_spf"), pl.col("fmt"),
                  pl.col("_offset"))))
    # .dat files in folders whose headers were all read, and that no header names.
    header_dirs = headers.group_by("_dir").agg(pl.col("_ok").all().alias("_all_ok"))
    dats = f.filter(pl.col("_waveforms") & (pl.col("_ext_l") == "dat")).join(
        header_dirs.filter(pl.col("_all_ok")), on="_dir", how="semi")
    out.append(_found(
        "wfdb.unreferenced_dat", dats.join(data.select(pl.col("_path").alias("srcfile")), on="srcfile", how="anti"),
        "srcfile",
        pl.lit("no WFDB header in this folder names this signal file: add it to its record's header or remove it")))
    # Multi-segment records.
    segments = (
        ok.filter(pl.col("segments").is_not_null())
        .select(pl.col("srcfile").alias("_master"), "_dir", pl.col("sig_len").alias("_master_len"), "segments")
        .explode("segments")
        .unnest("segments")
    )
    real = segments.filter(pl.col("name").is_not_null() & (pl.col("name") != "~")).with_columns(
        _path=pl.col("_dir") + "/" + pl.col("name") + ".hea")
    out.append(_found(
        "wfdb.missing_segment", real.join(present, on="_path", how="anti"), "_master",
        pl.format("segment {} is listed but {}.hea is not in this folder: add the segment (header and signal files) "
                  "or fix the list", pl.col("name"), pl.col("name"))))
    seg_len = real.join(ok.select(pl.col("srcfile").alias("_path"), pl.col("sig_len").alias("_seg_len")), on="_path")
    out.append(_found(
        "wfdb.segment_length",
        seg_len.filter((pl.col("length") > 0) & pl.col("_seg_len").is_not_null()
                       & (pl.col("_seg_len") != pl.col("length"))),
        "_path",
        pl.format("this segment has {} samples but its multi-segment header gives {}: make them agree",
                  pl.col("_seg_len"), pl.col("length"))))
    totals = segments.group_by("_master", "_master_len").agg(pl.col("length").sum().alias("_total"))
    out.append(_found(
        "wfdb.segment_length",
        totals.filter(pl.col("_master_len").is_not_null() & (pl.col("_master_len") != pl.col("_total"))), "_master",
        pl.format("the record has {} samples but its segments add up to {}: make them agree", pl.col("_master_len"),
                  pl.col("_total"))))
    # Session folders.
    folders = f.filter(pl.col("_waveforms") & (pl.col("_n") == 4)).group_by("_dir").agg(
        (pl.col("_ext_l") == "hea").any().alias("_has_hea"),
        pl.col("duration_s").is_not_null().all().alias("_all_flat"),
    )
    out.append(_found(
        "wfdb.no_header", folders.filter(~pl.col("_has_hea") & ~pl.col("_all_flat")), pl.col("_dir") + "/",
        pl.lit("session folder has no WFDB header (<session>.hea): add the header, or name its files "
               "<person_id>_<YYYYMMDD>_<HHMMSS>_<duration_s>.<ext>")))
    wfdb_sessions = f.filter(pl.col("_waveforms") & (pl.col("_n") == 4)
                             & (pl.col("_name") == pl.col("_third") + ".hea")).select("_dir")
    csvs = f.filter(pl.col("_waveforms") & (pl.col("_n") == 4) & (pl.col("_ext_l") == "csv")).join(
        wfdb_sessions, on="_dir", how="semi")
    out.append(_found(
        "wfdb.numerics_name", csvs.filter(pl.col("_name") != pl.col("_third") + "n.csv"), "srcfile",
        pl.format("a CSV in WFDB session {} should be its numerics, named {}n.csv: rename it", pl.col("_third"),
                  pl.col("_third"))))
    return out


def _records(site: _Site, headers: pl.DataFrame) -> list[pl.LazyFrame]:
    records = site.of_kind(KIND_RECORDS)
    out = [_found("records.unreadable", records.filter(pl.col("error").is_not_null()), "srcfile",
                  pl.format("cannot read this RECORDS file: {}; write one record name per line as UTF-8 text",
                            pl.col("error")))]
    names = headers.select("_top", "_second", "_dir", "_stem", "srcfile")
    if names.height == 0 and records.height == 0:
        return out
    segment_names = (
        headers.filter(pl.col("_ok") & pl.col("segments").is_not_null())
        .select("_dir", pl.col("segments").list.eval(pl.element().struct.field("name")).alias("_stem"))
        .explode("_stem")
    )
    top_level = names.join(segment_names, on=["_dir", "_stem"], how="anti")
    entries = (
        records.filter(pl.col("_ok"))
        .select("srcfile", "_top", "_dir", "_n", pl.col("records").alias("_entry"))
        .explode("_entry")
        .filter(pl.col("_entry").is_not_null())
        .with_columns(_stem=pl.col("_entry").str.strip_chars_end("/").str.split("/").list.last())
    )
    person_level, folder_level = entries.filter(pl.col("_n") == 3), entries.filter(pl.col("_n") != 3)
    with_records = records.select("_top").unique()
    unreadable = records.filter(~pl.col("_ok")).select("_top").unique()
    out.append(_found(
        "records.missing",
        names.join(with_records, on="_top", how="anti").group_by("_top").agg(pl.col("_second").min()),
        pl.format("{}/{}/RECORDS", pl.col("_top"), pl.col("_second")),
        pl.lit("this person has WFDB records but no RECORDS file: add <person>/Waveforms/RECORDS listing the record "
               "names, one per line")))
    unlisted = (
        top_level.join(with_records, on="_top", how="semi")
        .join(unreadable, on="_top", how="anti")
        .join(person_level.select("_top", "_stem"), on=["_top", "_stem"], how="anti")
        .join(folder_level.select("_dir", "_stem"), on=["_dir", "_stem"], how="anti")
    )
    out.append(_found("records.unlisted", unlisted, "srcfile",
                      pl.format("record {} is not listed in a RECORDS file: add it to <person>/Waveforms/RECORDS",
                                pl.col("_stem"))))
    absent = pl.concat([
        person_level.join(names.select("_top", "_stem"), on=["_top", "_stem"], how="anti"),
        folder_level.join(names.select("_dir", "_stem"), on=["_dir", "_stem"], how="anti"),
    ])
    out.append(_found("records.absent", absent, "srcfile",
                      pl.format("lists record {} but {}.hea is not on the site: add the record or remove the line",
                                pl.col("_entry"), pl.col("_stem"))))
    return out


_DICOM_NAME = r"_(?P<date>\d{8})_(?P<time>\d{6})_(?P<mod>[A-Za-z0-9]+)_(?P<series>[^_]+)_(?P<inst>[^_]+)\.(?i:dcm)$"


def _dicom_number(expr: pl.Expr) -> pl.Expr:
    return expr.str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64, strict=False)


def _dicom_time(expr: pl.Expr) -> pl.Expr:
    """HHMMSS of a DICOM TM (HH, HHMM, HHMMSS, with fractions or old-style colons)."""
    return expr.str.replace_all(":", "").str.extract(r"^(\d{2,6})").str.pad_end(6, "0")


def _dicom(site: _Site) -> list[pl.LazyFrame]:
    files = site.files
    d = site.of_kind(KIND_DICOM)
    out = [
        _found("dicom.unreadable", d.filter(pl.col("error").is_not_null()), "srcfile",
               pl.format("no readable DICOM header: {}; re-export the image as DICOM Part 10 (.dcm)", pl.col("error"))),
        _found("dicom.outside_series", files.filter(pl.col("_outside_series")), "srcfile",
               pl.lit("DICOM file is not in <person>/Images/<study>/<series>/: move it into its study and series "
                      "folders")),
    ]

    def named_as(day: str, tm: str) -> pl.Expr:
        return pl.col("_name").str.ends_with(pl.concat_str(
            pl.lit("_"), pl.col(day), pl.lit("_"), pl.col(tm).str.head(6), pl.lit("_"), pl.col("modality"), pl.lit("_"),
            pl.col("series_number"), pl.lit("_"), pl.col("instance_number"), pl.lit(".dcm")))

    # Nearly all names spell their header's values exactly: only the others are parsed and compared.
    agree = (named_as("study_date", "study_time") | named_as("acquisition_date", "acquisition_time")).fill_null(False)
    named = (
        d.filter(pl.col("_ok") & (pl.col("_n") == 5))
        .filter(~agree)
        .with_columns(_g=pl.col("_name").str.extract_groups(_DICOM_NAME))
        .unnest("_g")
        .filter(pl.col("series").is_not_null())
    )
    same = ((pl.col("mod") == pl.col("modality")) & (pl.col("series") == pl.col("series_number"))
            & (pl.col("inst") == pl.col("instance_number"))).fill_null(False)
    name_series = pl.col("series").str.extract(r"(\d+)$").cast(pl.Int64, strict=False)
    name_inst = pl.col("inst").str.extract(r"(\d+)$").cast(pl.Int64, strict=False)

    def differs(label: str, name: pl.Expr, header_value: pl.Expr, header_raw: str, tag: str) -> pl.Expr:
        bad = name.is_null() | header_value.is_null() | (name != header_value)
        return pl.when(bad).then(pl.format("{} {} in the name but {} {} in the header", pl.lit(label),
                                           pl.col({"series": "series", "instance": "inst", "modality": "mod"}[label]),
                                           pl.lit(tag), pl.col(header_raw).fill_null("(none)")))

    problems = pl.concat_str([
        differs("modality", pl.col("mod").str.to_uppercase(), pl.col("modality").str.to_uppercase(), "modality",
                "Modality"),
        differs("series", name_series, _dicom_number(pl.col("series_number")), "series_number", "SeriesNumber"),
        differs("instance", name_inst, _dicom_number(pl.col("instance_number")), "instance_number", "InstanceNumber"),
    ], separator="; ", ignore_nulls=True)
    checked = named.filter(~same).with_columns(_problems=problems)
    out.append(_found("dicom.name_mismatch", checked.filter(pl.col("_problems") != ""), "srcfile",
                      pl.format("{}: rename the file (or fix the header) so they agree", pl.col("_problems"))))
    pairs = [("study_date", "study_time"), ("series_date", "series_time"), ("acquisition_date", "acquisition_time"),
             ("content_date", "content_time")]
    exact = pl.any_horizontal(
        ((pl.col(day) == pl.col("date")) & (pl.col(tm).str.head(6) == pl.col("time"))).fill_null(False)
        for day, tm in pairs[::2])
    matches = [
        (pl.col(day).str.replace_all(r"[^0-9]", "") == pl.col("date"))
        & (pl.col(tm).is_null() | (_dicom_time(pl.col(tm)) == pl.col("time"))).fill_null(False)
        for day, tm in pairs
    ]
    any_date = pl.any_horizontal(pl.col(day).is_not_null() for day, _ in pairs)
    out.append(_found(
        "dicom.datetime_mismatch",
        named.filter(~exact).filter(any_date & ~pl.any_horizontal(m.fill_null(False) for m in matches)), "srcfile",
        pl.format("name date/time {} {} matches none of the header's dates/times (study {} {}): rename the file "
                  "with the study or acquisition date/time", pl.col("date"), pl.col("time"),
                  pl.col("study_date").fill_null("-"), pl.col("study_time").fill_null("-"))))
    out.append(_found(
        "dicom.patient_id",
        d.filter(pl.col("_ok") & pl.col("patient_id").is_not_null() & (pl.col("patient_id") != pl.col("_top")))
        .filter(_norm_id(pl.col("patient_id")) != _norm_id(pl.col("_top"))), "srcfile",
        pl.format("PatientID {} in the header differs from the person folder {}: check the de-identification "
                  "mapping", pl.col("patient_id"), pl.col("_top"))))
    return out


def _files(site: _Site) -> list[pl.LazyFrame]:
    f = site.files
    covered = (
        (pl.col("_n") == 1) | (~pl.col("_is_person") & ~pl.col("_top_l").is_in(["omop", "metadata"]))
        | pl.col("_person_file") | pl.col("_person_subfolder") | pl.col("_outside_series")
        | (pl.col("_is_person") & (pl.col("_second_l") == "metadata"))  # anything may go in <person>/Metadata/
    )
    unparsed = f.filter(pl.col("parse_error").is_not_null() & ~covered).join(
        site.person_mismatch.select("srcfile"), on="srcfile", how="anti")
    dup = f.filter(pl.col("_is_person") & (pl.col("size") > 0) & pl.col("md5").is_not_null()).filter(
        pl.col("md5").hash().is_duplicated())  # a cheap first cut (most contents occur once), exact below
    persons = dup.group_by("md5").agg(pl.col("_top").unique().sort().alias("_persons")).filter(
        pl.col("_persons").list.len() > 1)
    return [
        _found("path.person_mismatch", site.person_mismatch, "srcfile",
               pl.format("the name starts with person id {} but the file is in person folder {}: move it to its "
                         "person's folder or fix the name", pl.col("_name_person"), pl.col("_top"))),
        _found("path.unparsed", unparsed, "srcfile",
               pl.format("{}: rename or move the file to fit the site layout", pl.col("parse_error"))),
        _found("file.empty", f.filter(pl.col("size") == 0), "srcfile",
               pl.lit("the file is empty (0 bytes), likely an interrupted copy: copy it again or remove it")),
        _found("file.duplicate", dup.join(persons, on="md5"), "srcfile",
               pl.format("the same content (MD5 {}) lies under person folders {}: keep it under its own person only",
                         pl.col("md5"), _join_list(pl.col("_persons")))),
    ]
