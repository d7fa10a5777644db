"""The CHoRUS procedures as data: the rules, the OMOP tables CHoRUS collects, the WFDB signal
formats the readers support, and the kinds of files whose contents a rule looks at."""

from __future__ import annotations

from dataclasses import dataclass


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
