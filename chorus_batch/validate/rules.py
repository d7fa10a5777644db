"""The CHoRUS procedures as data: the rules, the OMOP tables CHoRUS collects, the WFDB signal
formats the readers support, and the kinds of files whose contents a rule looks at."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # "error" | "warning" | "info"
    title: str
    description: str  # one sentence for the README
    # Where the procedures ask for it: (document, section) pairs, the document a file of the procedures' text (the
    # SOP_DOCUMENTS), the section its heading (or the words that open it) as the text writes it; a check of the tool's
    # own, which no procedure asks for, is (OWN, why).
    sop: tuple[tuple[str, str], ...] = ()
    remedy: str = ""  # what to do, where the description does not already say it

    def procedure(self) -> str:
        """Where the rule comes from, in words: "Imaging-Data: Folder and file structure and naming"."""
        return "; ".join(f"none ({section})" if document == OWN else f"{document.removesuffix('.txt')}: {section}"
                         for document, section in self.sop)


# ----------------------------------------------------------------------------- the procedures

# The procedures' documents (their text as published: chorus-ai/Chorus_SOP) that rules cite (Rule.sop).
UPLOAD = "Data-Upload-Update-Uploading-to-Central-Staging-Data-Warehouse.txt"
IMAGING = "Imaging-Data.txt"
LINKAGE = "Multimodal-Linkage.txt"
WAVEFORM = "Waveform-Data.txt"
WAVEFORM_FORMAT = "Waveform-Data-Waveform-File-Format.txt"  # v2.1
WAVEFORM_FORMAT_V1 = "DEPRECATED-Waveform-File-Format.txt"  # v1.0: WFDB headers, segments, RECORDS
UPLOAD_V1 = "DEPRECATED-OLD-Data-Uploading-SOP.txt"  # the first upload SOP's file names
SOP_DOCUMENTS = (UPLOAD, IMAGING, LINKAGE, WAVEFORM, WAVEFORM_FORMAT, WAVEFORM_FORMAT_V1, UPLOAD_V1)
OWN = ""  # a rule of the tool's own: (OWN, why no procedure asks for it)

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
# Columns the Data-Upload-Update SOP asks a table to keep at least: the note table need not hold the notes'
# text, but its identifiers, descriptors and keys to person, visit_occurrence and visit_detail (note_nlp needs them).
OMOP_MIN_COLUMNS: dict[str, tuple[str, ...]] = {
    "note": ("note_id", "note_type_concept_id", "note_class_concept_id", "person_id", "visit_occurrence_id",
             "visit_detail_id"),
}
# The Data-Upload-Update SOP asks for the 13 clinical tables "as found" in CDM 5.4: the columns CDM 5.4 marks
# required (isRequired, OMOP_CDMv5.4_Field_Level.csv), less note_text, which the SOP does not ask sites to fill.
OMOP_REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "person": ("person_id", "gender_concept_id", "year_of_birth", "race_concept_id", "ethnicity_concept_id"),
    "observation_period": ("observation_period_id", "person_id", "observation_period_start_date",
                           "observation_period_end_date", "period_type_concept_id"),
    "visit_occurrence": ("visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date", "visit_end_date",
                         "visit_type_concept_id"),
    "visit_detail": ("visit_detail_id", "person_id", "visit_detail_concept_id", "visit_detail_start_date",
                     "visit_detail_end_date", "visit_detail_type_concept_id", "visit_occurrence_id"),
    "condition_occurrence": ("condition_occurrence_id", "person_id", "condition_concept_id", "condition_start_date",
                             "condition_type_concept_id"),
    "drug_exposure": ("drug_exposure_id", "person_id", "drug_concept_id", "drug_exposure_start_date",
                      "drug_exposure_end_date", "drug_type_concept_id"),
    "procedure_occurrence": ("procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                             "procedure_type_concept_id"),
    "device_exposure": ("device_exposure_id", "person_id", "device_concept_id", "device_exposure_start_date",
                        "device_type_concept_id"),
    "measurement": ("measurement_id", "person_id", "measurement_concept_id", "measurement_date",
                    "measurement_type_concept_id"),
    "observation": ("observation_id", "person_id", "observation_concept_id", "observation_date",
                    "observation_type_concept_id"),
    "death": ("person_id", "death_date"),
    "note": ("note_date", "encoding_concept_id", "language_concept_id"),  # its ids and keys: OMOP_MIN_COLUMNS
    "note_nlp": ("note_nlp_id", "note_id", "lexical_variant", "nlp_date"),
}
# The Data-Upload-Update SOP asks for all 13 clinical tables, each a full snapshot.
REQUIRED_TABLES = tuple(OMOP_KEYS)
# An integer id written as a number of another form: a decimal (101.0, as pandas writes an integer column with empty
# cells) or in scientific notation (1.01e2, 1.23457E+16, as a spreadsheet writes a large number); OMOP's and the
# linkage procedure's ids are integers, and a loader matches neither form to one
AS_NUMBER = r"^\s*[0-9]+(?:\.0*|(?:\.[0-9]*)?[eE]\+?[0-9]+)\s*$"
FORBIDDEN_TABLES = ("specimen",)
# Waveform File Format v2.0's links table: superseded by the linkage registries, still read where present.
LINKS_TABLE = "waveform_visit_links"
LINK_COLUMNS = ("visit_occurrence_id", "session")  # `session_id` (v2.0) is read as `session`

# Metadata/ (Waveform File Format v2.1). SUBMISSION.md sections: a heading per topic, recognised by
# any of its words (case-insensitive).
SUBMISSION_SECTIONS: dict[str, tuple[str, ...]] = {
    "hospital or site": ("hospital", "site", "institution"),
    "dataset (counts and years)": ("dataset", "count", "years", "cohort"),
    "waveform types": ("waveform type", "types of waveform", "waveforms", "signals"),
    "known issues": ("issue", "limitation", "caveat"),
    "variables (types, units, encoding)": ("variable", "units", "encoding", "format"),
    "sample intervals (uniformity, timing)": ("interval", "uniform", "timing", "sampl"),
    # not gaps: Waveform File Format v2.1 asks for them only "If you have already manipulated your waveform data
    # to handle gaps and overlaps (this is not recommended)"
    "linking sessions to visits": ("link", "visit"),
}
MAPPING_COLUMNS = ("signal_id", "standardized_label", "sampling_rate", "units")
MAPPING_TIME_COLUMNS = (("timestamp_id",), ("start_time", "end_time"))  # pair-based, or stream-based
MAPPING_FILES = {"Telemetry": "Telemetry_mapping.csv", "EEG": "EEG_mapping.csv"}
# The linkage registries (Multimodal-Linkage), one row per file; the image registry may lead with image_registry_id.
REGISTRY_COLUMNS = ("file_id", "proc_id", "person_id", "group_id", "visit_id", "datetime", "src_file", "trg_file")
REGISTRY_FILES = {"Waveforms": "waveform_registry.csv", "Images": "image_registry.csv"}

# DICOM attributes that identify a patient and must be empty after de-identification (PS3.15 basic
# profile); PatientName may hold the person id (de-identification tools put the pseudonym there).
IDENTIFYING_DICOM_TAGS: dict[str, int] = {
    "patient_name": 0x00100010,
    "patient_birth_date": 0x00100030,
    "patient_birth_time": 0x00100032,
    "other_patient_ids": 0x00101000,
    "other_patient_names": 0x00101001,
    "patient_birth_name": 0x00101005,
    "patient_address": 0x00101040,
    "patient_mother_birth_name": 0x00101060,
    "medical_record_locator": 0x00101090,
    "patient_telephone_numbers": 0x00102154,
}

# The study-level attributes the Imaging SOP selects for CHoRUS ("Study Level" of the metadata sites map) that
# every study has: the facts' key -> (DICOM keyword, tag). AccessionNumber and Modality are checked against the
# folders (dicom.accession_id, dicom.path_mismatch); MagneticFieldStrength is asked of MR studies only
# (STUDY_DICOM_TAGS_MR); Radiopharmaceutical (a nuclear medicine study's, inside its Radiopharmaceutical Information
# Sequence) and ContrastBolusAgent/Route (only where contrast was given) are not asked: a header cannot tell.
STUDY_DICOM_TAGS: dict[str, tuple[str, int]] = {
    "study_instance_uid": ("StudyInstanceUID", 0x0020000D),
    "study_date": ("StudyDate", 0x00080020),
    "study_time": ("StudyTime", 0x00080030),
    "study_description": ("StudyDescription", 0x00081030),
    "manufacturer": ("Manufacturer", 0x00080070),
    "manufacturer_model_name": ("ManufacturerModelName", 0x00081090),
    "body_part_examined": ("BodyPartExamined", 0x00180015),
}
STUDY_DICOM_TAGS_MR: dict[str, tuple[str, int]] = {"magnetic_field_strength": ("MagneticFieldStrength", 0x00180087)}
# Its "Series Level" attributes: those every series has (SeriesInstanceUID is checked against its folder), and those
# of some modalities (-> the modalities whose headers have them). Not asked: ImagesInAcquisition (optional in every
# image module: a header cannot tell whether the scanner counts them), TransducerType and TransducerFrequency (an
# ultrasound header keeps them inside its region sequence, not at the top).
SERIES_DICOM_TAGS: dict[str, tuple[str, int]] = {
    "series_description": ("SeriesDescription", 0x0008103E),
    "series_number": ("SeriesNumber", 0x00200011),
}
SERIES_DICOM_TAGS_BY_MODALITY: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "slice_thickness": ("SliceThickness", 0x00180050, ("CT", "MR", "PT")),  # cross-sectional images
    "view_position": ("ViewPosition", 0x00185101, ("CR", "DX", "MG")),  # projection radiographs
    "image_laterality": ("ImageLaterality", 0x00200062, ("MG",)),  # a mammogram is of one breast
}

# Its "DICOM Tags Recommended to Keep", asked of the images whose modality carries them (DICOM PS3.3): the Image Pixel
# module of every image with pixel data; the Image Plane module of CT, MR and PET images; rescaling of CT and PET; the
# exposure of CT and projection radiographs; the CT and MR acquisition attributes the SOP lists. Not asked (optional in
# every module that has them, so a header cannot tell whether the scanner wrote them): SliceLocation,
# SpacingBetweenSlices, WindowCenter/Width, RescaleType, ExposureInuAs, FocalSpots and the X-ray filter attributes;
# nor the Image Plane and acquisition attributes of an enhanced multi-frame image, which keeps them in its functional
# group sequences (ENHANCED_SOP_CLASSES). Modality, Manufacturer, InstanceNumber and SliceThickness: other rules.
RECOMMENDED_DICOM_TAGS: dict[str, tuple[str, int, tuple[str, ...] | None]] = {
    "rows": ("Rows", 0x00280010, None),
    "columns": ("Columns", 0x00280011, None),
    "photometric_interpretation": ("PhotometricInterpretation", 0x00280004, None),
    "bits_allocated": ("BitsAllocated", 0x00280100, None),
    "bits_stored": ("BitsStored", 0x00280101, None),
    "high_bit": ("HighBit", 0x00280102, None),
    "pixel_representation": ("PixelRepresentation", 0x00280103, None),
    "image_position_patient": ("ImagePositionPatient", 0x00200032, ("CT", "MR", "PT")),
    "image_orientation_patient": ("ImageOrientationPatient", 0x00200037, ("CT", "MR", "PT")),
    "pixel_spacing": ("PixelSpacing", 0x00280030, ("CT", "MR", "PT")),
    "rescale_intercept": ("RescaleIntercept", 0x00281052, ("CT", "PT")),
    "rescale_slope": ("RescaleSlope", 0x00281053, ("CT", "PT")),
    "kvp": ("KVP", 0x00180060, ("CT", "CR", "DX", "MG")),
    "x_ray_tube_current": ("XRayTubeCurrent", 0x00181151, ("CT", "CR", "DX", "MG")),
    "exposure": ("Exposure", 0x00181152, ("CT", "CR", "DX", "MG")),
    "exposure_time": ("ExposureTime", 0x00181150, ("CR", "DX", "MG")),
    "convolution_kernel": ("ConvolutionKernel", 0x00181210, ("CT",)),
    "scanning_sequence": ("ScanningSequence", 0x00180020, ("MR",)),
    "sequence_variant": ("SequenceVariant", 0x00180021, ("MR",)),
    "scan_options": ("ScanOptions", 0x00180022, ("MR",)),
    "repetition_time": ("RepetitionTime", 0x00180080, ("MR",)),
    "echo_time": ("EchoTime", 0x00180081, ("MR",)),
    "flip_angle": ("FlipAngle", 0x00181314, ("MR",)),
}
SOP_CLASS_UID = 0x00080016


def _by_modalities(tags: dict[str, tuple[str, int, tuple[str, ...] | None]]) -> dict[tuple[str, ...] | None, list[str]]:
    """The keywords of `tags` by the modalities they are asked of."""
    out: dict[tuple[str, ...] | None, list[str]] = {}
    for keyword, _, modalities in tags.values():
        out.setdefault(modalities, []).append(keyword)
    return out

ENHANCED_SOP_CLASSES = frozenset("1.2.840.10008.5.1.4.1.1." + s for s in (
    "2.1", "2.2", "4.1", "4.3", "4.4", "128.1", "130"))  # Enhanced and Legacy Converted Enhanced CT, MR, PET

# WFDB signal formats: samples per group and bytes per group (a group is the smallest whole
# number of bytes: 212 packs 2 samples in 3 bytes, 310/311 pack 3 samples in 4 bytes).
WFDB_FORMAT_SIZES: dict[str, tuple[int, int]] = {
    "8": (1, 1), "16": (1, 2), "24": (1, 3), "32": (1, 4), "61": (1, 2), "80": (1, 1),
    "160": (1, 2), "212": (2, 3), "310": (3, 4), "311": (3, 4),
}
WFDB_COMPRESSED_FORMATS = ("508", "516", "524")  # FLAC: size not predictable
WFDB_FORMATS = ("0", *WFDB_FORMAT_SIZES, *WFDB_COMPRESSED_FORMATS)  # 0: null signal, no data

# Kinds of content a rule reads. A kind's name changes when its reader keeps more (dicom.v2 reads
# the accession, series UID and identifying tags): facts cached under the old name are read again.
# wfdb_header.v2 keeps each signal's name and units (the rules against the site's signal mapping)
# wfdb_header.v3 reads a record line without a frequency as wfdb does, 250 Hz (v2: none, its rates went unchecked),
# and keeps the units as written where wfdb's reading dropped characters ("µV", read "V")
# dicom.v3 also keeps the study-level attributes of the Imaging SOP (STUDY_DICOM_TAGS: dicom.study_metadata)
# dicom.v4 also keeps its series-level attributes (SERIES_DICOM_TAGS...: dicom.series_metadata)
# dicom.v5 also tells a file cut inside its pixel data (the header reads well; the image does not)
# records.v2 reads a RECORDS file of up to 256 MiB (v1: 16 MiB, a site root's of 450k records was unreadable)
# dicom.v6 also tells a file cut inside encapsulated (compressed) pixel data, by their items' lengths
# records.v3 reads a RECORDS file that begins with a UTF-8 byte-order mark without it (v2: part of the first name)
# wfdb_header.v4 says which line of a header is not WFDB syntax and quotes it (v3: "invalid syntax in signal line")
# and keeps a signal file's or a segment's name as written where wfdb's reading dropped characters ("réc.dat", read
# "rc.dat")
# dicom.v7 also tells a file cut inside a header longer than the bytes read for it (16 MiB; v6: read as whole)
# dicom.v8 keeps which of the Imaging SOP's recommended attributes its modality carries are absent (lacking:
# dicom.recommended), and also tells a big-endian file, or one the struct walk leaves to pydicom, cut inside its pixel data (v7: whole)
# wfdb_header.v5 says which of the record line's base time and date is not one, and how WFDB writes it (v4: strptime's
# "time data '2020/01' does not match format '%d/%m/%Y'")
# wfdb_header.v6 quotes a base time or date as the line has it, and says how one written otherwise is written (a date
# year first, 2020-01-02; a date without a time; a two-digit year); v5 quoted the part wfdb's expression took: '2020'
# records.v4 and metadata_md.v5 (and wfdb_header.v7) name a control character a text holds, and its line (v3, v4: "the
# file holds control characters (binary data?)", of a header ending in a DOS tool's Ctrl-Z)
# wfdb_header.v7 tells a record line wfdb's expression reads only in part, or without its frequency (v6: '1e3' read as
# 1 Hz and no number of samples, '-500' as the default 250 Hz, without a word)
# dicom.v9 reads a deflated data set as far as its header (v8: inflated whole by dcmread), and tells one that inflates
# whole short of its pixel data's end (v8: read as a whole image)
# dicom.v10 tells elements of a group before the pixel data's that follow them (v9: not read, told as lacking)
# and a file beginning with 'DICM' without the preamble as such (v9: as having no 'DICM' prefix)
# dicom.v11 tells a file cut inside an element's 4-byte length as cut (v10: "cannot parse the file (error: unpack
# requires a buffer of 4 bytes)"), and one holding nothing after its File Meta Information (cut there) as such (v10: no
# facts, told as a header lacking PatientID, Modality, ... in turn)
# dicom.v12 reads a file of a transfer syntax pydicom does not know (a vendor's private UID) in the encoding dcmread
# found (v11: "cannot parse the file (ValueError: UID is not a transfer syntax.)"), and tells a File Meta group of an
# unknown VR or a length its VR cannot have as a header not parsed (v11: "cannot parse the file (NotImplementedError..")
# dicom.v13 reads a Pixel Data element whose VR is no VR (not two capitals: a damaged 'OW') as implicit VR, as pydicom's
# generator does, when dcmread read the header too (v12: its length taken as 0: a file cut inside its pixel data read
# as whole by that path, and as cut by the elements' walk)
# records.v5 tells a line longer than any record name's path (v4: a file of one 100 MB line was one record's name)
# wfdb_header.v8 tells a sampling frequency written as no number, '250.5.5' or '.' (v7: the first read as 250.5 Hz
# without a word, the second told in Python's words, "could not convert string to float"), and a signal line of 0
# samples per frame, '16x0', which wfdb cannot read (v7: read, its file told as "implies 0 bytes")
# dicom.v14 also keeps the SOPInstanceUID (sop_instance_uid): two files of a person naming one image
# (dicom.instance_repeated; v13: not read, an image exported twice and renumbered passed without a word)
# dicom.v15 keeps a transfer syntax UID that is none of the DICOM standard's (unknown_transfer_syntax: a vendor's
# private one, or a damaged value), whose pixel data no viewer decodes (dicom.transfer_syntax; v14: read, untold), and
# tells a DICOMDIR under a .dcm name as such (v14: "holds no image after its File Meta ... copy the file again")
# wfdb_header.v9 tells a base time written without all of its hours, minutes and seconds ('10:00'), which the WFDB
# header format writes HH:MM:SS and its readers read as minutes and seconds (v8: read as 00:10:00 without a word)
# dicom.v16 also keeps BurnedInAnnotation (burned_in_annotation): an image whose header says its pixels hold text that
# identifies the patient (a name, an ID burnt into the image) passed as de-identified (dicom.burned_in; v15: not read)
# wfdb_header.v11 keeps bare_cr, a header whose lines end in a carriage return alone (old Mac OS: wfdb.line_ends; v10:
# read as wfdb reads it, untold, though the WFDB header format and the WFDB C library end lines with a line feed)
# wfdb_header.v10 tells a record line of 0 segments ('r/0'), which the WFDB header format forbids ("must be greater
# than zero") and wfdb fails to read (v9: read as a multi-segment record of no segments, untold)
# dicom.v17 tells an element it reads whose explicit VR is none of DICOM's (a damaged 'US', b"U\x00", which pydicom takes
# for a VR it does not know) as a damaged file, naming the element (v16: of no value, "cannot parse the file
# (NotImplementedError: Unknown Value Representation ...)" by dcmread and told lacking by the elements' walk; of a value,
# its bytes read as the attribute); tells an element of a group before the pixel data's following them on dcmread's path
# too (v16: only where a little-endian walk found the pixel data); and tells a sequence item's header past the file's
# end as a header cut (v16: pydicom's "OSError: No tag to read at file position ..." let through as a failed read)
KIND_WFDB, KIND_DICOM, KIND_RECORDS = "wfdb_header.v11", "dicom.v17", "records.v5"
# edf_header.v1: the start date and time (and length) of an EDF, EDF+ or BDF file's fixed 256-byte header
# edf_header.v2 also reads the signal header after it: each signal's label, physical dimension and sampling rate (the
# mapping's signal_id, units, sampling_rate); a header whose length is not 256 + 256 per signal, or a file cut inside
# it, is an error (v1: read only the fixed 256 bytes, and mapped no EDF signal)
# edf_header.v3 also keeps the size the header gives the file (its length + data records x bytes per record: implied_size):
# a copy cut inside its data records, whose header reads well, passed (wfdb.dat_size tells it now)
# edf_header.v3 also keeps the number of data records the header states (`records`): -1, which the EDF spec allows only
# while the file is being recorded, is an unfinished recording (v2: read as a recording of no known length, untold)
# edf_header.v4 names the field of the fixed header holding a byte not ASCII, and where (v3: "the header holds bytes
# that are not ASCII", of an accented name in the patient field), and quotes a version field not EDF's or BDF's
KIND_EDF = "edf_header.v4"
# .v2 of the CSV kinds read with pyarrow: a header row without rows nor newline is an empty table, no longer an error
# omop_visits.v3 also keeps each visit's person_id (registry.visit_person); v4 keeps each column as one text (readers._csv_joined);
# v5 also each visit's start and end (registry.visit_time)
# The CSV kinds' next versions (omop_csv.v2, omop_person.v3, omop_visits.v6, waveform_links.v3, mapping_csv.v5,
# registry_csv.v12, omop_procedures.v5) read the header row as a CSV record: a delimiter or a line end inside a quoted
# column name is part of it (a semicolon-delimited '"person_id";"gender, as told"' was read as comma-delimited, the
# names 'person_id;"gender' and 'as told'), a second byte-order mark is not part of the first name, a quote left open
# is told as such; mapping_csv.v5 and registry_csv.v12 tell a first line "sep=;" (a spreadsheet's delimiter hint)
# omop_person.v4, omop_visits.v7 and waveform_links.v4 tell a table holding NUL bytes in its rows (v3, v6, v3: read as
# characters of its values, a person id "1\0" not found beside the person folder 1)
# omop_person.v5, omop_visits.v8, waveform_links.v5 (and mapping_csv.v7, registry_csv.v14, omop_procedures.v6) tell a
# file not UTF-8 as such (its row, column and first such byte) and a line of spaces only as a blank line (v4, v7, v4:
# pyarrow's "invalid UTF8 data", "Expected 8 columns, got 1")
# omop_person.v6, omop_visits.v9, waveform_links.v6 (and omop_procedures.v7) name the row longer than pyarrow's block
# (v5, v8, v5, v6: "a row or a quoted value is longer than 4 MiB", not said which)
# omop_person.v7, omop_visits.v10, waveform_links.v7 read a cell written NULL, null or \\N as empty, as registry_csv.v4
# does (v6, v9, v6: person.csv's "NULL" was a person_id without a folder, a visit_end_datetime "NULL" hid the end date)
# omop_person.v8 also keeps the person_ids given on more than one row (a few, and how many: person.repeated_id; v7 kept
# the distinct ids only, a person given twice passed without a word)
# omop_visits.v11 also keeps, of each a few and how many: the start and end dates not written as ISO dates (01/01/2024,
# 2024-13-01), the visits ending before they start, the visit_occurrence_ids on more than one row (visit.date_format,
# visit.end_before_start, visit.repeated_id; v10: such a visit left the visit-time rules without a word, a repeated
# visit of one person passed)
# omop_person.v9 keeps the person_ids as one text joined by a line break (as omop_visits keeps its columns), made in
# Arrow: v8's list of 5M ids held +290 MiB as Python strings in the hashing worker and again in the decoding
# (ids holding a line break stay a list, person_id_list)
KIND_OMOP, KIND_PERSON, KIND_VISITS, KIND_LINKS = "omop_csv.v2", "omop_person.v9", "omop_visits.v11", "waveform_links.v7"
# registry_csv.v2 counts rows without src_file and without trg_file apart (the image registry may leave trg_file empty);
# v3 counts rows whose person_id is not the person folder of their trg_file (and reads a header without newline);
# v4 counts empty proc_id and datetime cells apart from values that are not an integer or a timestamp, keeps
# the integer proc_ids and those with rows of two persons, reads a cell written null, NULL or \N as empty and the
# Imaging SOP's "visit_ id" as visit_id
# mapping_csv.v3 (and registry_csv.v4) tell a column named twice in the site's words (v2: the frame library's error)
# v5 reads the image registry's image_registry_id (empty, not an integer, repeated, out of sequence)
# v6 cuts a trg_file written from the machine's or the release's root (/data/release/<person>/...) to the site's path
# v7 cuts it at the last Waveforms/ or Images/ folder (v6: the first, inside a release path such as /mnt/Images/...),
# and counts rows with an empty person_id (no_person), which v6 listed as a person "" not in person.csv, and keeps the
# (visit_id, person_id) pairs (registry.visit_person)
# mapping_csv.v4 counts rows without units or without their time variable(s), and keeps the signals it maps
# (signal_id, sampling_rate, units) for the rules against the WFDB headers
# registry_csv.v8 also keeps each integer proc_id's person(s) (registry.procedure_person)
# registry_csv.v9 also counts the rows of each person that leave trg_file blank (an image registry: its files are
# counted, registry.unlisted_file / registry.missing_file)
# registry_csv.v10 also counts the rows with faulty values and faulty image_registry_ids (the findings list five rows:
# v9's said "6 row(s) ... (rows 2, 3, 4, 5, 6)", as if the five were all), keeps a few file_ids that repeat, and counts
# rows with an empty file_id (no_file; v9 passed one over, and counted two as one file_id repeated)
# registry_csv.v11 also keeps each visit_id's first and last capture time (registry.visit_time)
# registry_csv.v12 also keeps the [person_id, capture time] pairs of the rows that leave visit_id empty
# (registry.visit_missing)
# metadata_md.v2 also takes the SUBMISSION.md template's answered labels as sections, and does not ask for a READINESS.md
# item marked (optional)
# metadata_md.v3 also reads setext headings ("Hospital\n========") and passes over HTML comments and fenced code blocks
# metadata_md.v4 reads a file saved as UTF-16 with its byte-order mark (v3: "the file is UTF-16 text, not UTF-8")
# metadata_md.v4 also reads SUBMISSION.md's table of variables (Variable name | Description | Data type | Unit): how many
# it describes and the answers its rows leave out (metadata.submission_answers)
# metadata_md.v5 also notes whether the text speaks of the first or last sample (a stream-based submission's times)
# mapping_csv.v6 and registry_csv.v13 tell NUL bytes in rows that parse (the first's row and column); v5, v12 took the
# values holding them as written (a registry id "not an integer", a trg_file naming no file)
# registry_csv.v14 also keeps each integer proc_id's visit_id(s) (registry.procedure_visit), and takes a proc_id and an
# image_registry_id as integers up to a bigint's 9223372036854775807 (v13: 18 digits; registry.values passed a 19-digit
# proc_id the other checks left out), telling one above as not an integer
# registry_csv.v15 also counts the rows whose person_id or visit_id is not an integer (v14: a person_id "abc" was told
# only as a person not in person.csv, of another folder, of two persons' proc_id, never as not an integer)
# registry_csv.v16 also counts the rows whose group_id is empty (v15: a row without its session or accession was told
# nothing, though the Imaging SOP's registry has group_id NOT NULL), and tells a header row repeated further down (two
# registries pasted into one file) by its line, not reading it as a row (v15: three wrong findings of values 'trg_file')
# registry_csv.v17 reads a datetime written as the Imaging SOP's example registry writes it, 8/18/2022 22:41:11
# (month/day/year; v16 told it as not a datetime, and the rows' visits went unchecked)
# registry_csv.v18 counts no person_id or visit_id written in scientific notation (1.01e2, as a spreadsheet writes a
# large number) among the values that are not integers: as a decimal's, registry.unknown_person/unknown_visit say it,
# with its fix (v17: "not an integer", no word of the notation)
KIND_MARKDOWN, KIND_MAPPING, KIND_REGISTRY = "metadata_md.v5", "mapping_csv.v7", "registry_csv.v18"
# procedure_occurrence.csv: the ids of the EHR's own procedures, as runs of consecutive integers (registry.proc_overlap)
# v2 also keeps the runs of all its ids, of any concept (registry.no_procedure)
# v3 also keeps the runs of the ids of each linkage concept (registry.procedure_concept)
# v4 also keeps the person_id of each row of a linkage concept (registry.procedure_person)
# v5: the header row read as a CSV record (see omop_csv.v2 above)
# v6 also keeps the visit_occurrence_id of each row of a linkage concept (registry.procedure_visit), and the ids up to a
# bigint's 9223372036854775807 (v5: 18 digits)
# v7 names the row longer than pyarrow's block (see omop_person.v6 above)
KIND_PROCEDURES = "omop_procedures.v7"
KINDS = (KIND_WFDB, KIND_DICOM, KIND_RECORDS, KIND_EDF, KIND_OMOP, KIND_PERSON, KIND_VISITS, KIND_LINKS, KIND_MARKDOWN,
         KIND_MAPPING, KIND_REGISTRY, KIND_PROCEDURES)
CSV_KINDS = (KIND_OMOP, KIND_PERSON, KIND_VISITS, KIND_LINKS, KIND_PROCEDURES)
# procedure_concept_id of the rows a site makes from its registries (Multimodal-Linkage): not EHR procedures
LINKAGE_CONCEPTS = ("4180938", "4141651")  # Imaging Procedure, Monitoring Procedure

RULES: tuple[Rule, ...] = (
    # -- layout
    Rule("layout.no_omop", "error", "no OMOP folder",
         "The site root has no OMOP/ folder with the clinical tables (where a top-level folder holds one, such as a "
         "dated release folder, the finding names it as the site's root).",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy="Put the OMOP tables in an OMOP/ folder at the site's root, or give the folder that holds OMOP/ as "
                "the site."),
    Rule("layout.root_file", "warning", "file in the site root",
         "A file lies directly in the site root and is not one the procedures place there (the linkage registries).",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy='Move the file into OMOP/, Metadata/ or its person folder, or out of the site.'),
    Rule("layout.identifiable_table", "error", "identifiable lookup table in the site",
         "A de-identification lookup table (image_map.csv, personal_map.csv: original PatientID and AccessionNumber "
         "to person_id and image_occurrence_id) lies in the site, anywhere: the Imaging SOP keeps it at the site, not "
         "shared; upload never sends it.",
         sop=((IMAGING, 'Identifiable cross-walk table creation'),),
         remedy="Move it out of the site's folder: it stays at the site, outside what is uploaded."),
    Rule("layout.unexpected_folder", "warning", "unknown top-level folder",
         "A top-level folder is neither OMOP/, Metadata/ nor a person folder (one holding Images/, Waveforms/ "
         "or Metadata/, or named in person.csv); one holding an OMOP/ folder is told as a submission's root (a dated "
         "release folder) inside the site; omop/ or metadata/ is told to be spelled OMOP/, Metadata/.",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy='Move the folder out of the site, or into the folder it belongs in.'),
    Rule("layout.person_no_data", "warning", "person folder without data",
         "A person folder holds neither Images/ nor Waveforms/.",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy="Check that the person's files were copied; remove a folder left empty."),
    Rule("layout.person_file", "warning", "file directly in a person folder",
         "A file lies directly in a person folder instead of its Images/ or Waveforms/.",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy="Move the file into the person's Images/ or Waveforms/ folder."),
    Rule("layout.person_subfolder", "warning", "unknown folder in a person folder",
         "A person folder has a subfolder other than Images/ and Waveforms/ (Metadata/ belongs at the site root; images/ is told to be spelled Images/).",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy='Move its files into Images/ or Waveforms/, or out of the site.'),
    Rule("layout.superseded", "info", "superseded layout",
         "Files follow a layout of an earlier edition of the procedures (still accepted); the finding names today's form.",
         sop=((UPLOAD, 'Existing Data Uploaded with Different Folder Structure'),),
         remedy="Re-organize the files into today's form when you can (the upload procedure recommends "
                "re-organizing, then submitting all again)."),
    # -- Metadata/
    Rule("metadata.missing", "error", "Metadata file missing",
         "A site with waveforms lacks Metadata/READINESS.md or Metadata/SUBMISSION.md (a SUBMISSION.md at the site "
         "root, Waveform File Format v2.0's place, counts; a READINESS.md there, or in a subfolder, does not).",
         sop=((WAVEFORM_FORMAT, '2.2. Explanation of File Structure'), (WAVEFORM, '6.2. Submission Process')),
         remedy="Add the file under Metadata/, from the procedure's template."),
    Rule("metadata.mapping_missing", "error", "waveform mapping file missing",
         "The site has Telemetry (or EEG) waveforms but no Metadata/Telemetry_mapping.csv (or EEG_mapping.csv), or "
         "one with only its header row.",
         sop=((WAVEFORM_FORMAT, '4.1.1. Mapping File'),),
         remedy='Add the mapping file under Metadata/, with a row for each signal of the data.'),
    Rule("metadata.mapping_columns", "error", "mapping file lacks columns",
         "A mapping CSV lacks signal_id, standardized_label, sampling_rate or units, or has neither timestamp_id "
         "nor start_time and end_time.",
         sop=((WAVEFORM_FORMAT, '4.1.1. Mapping File'),),
         remedy="Add the columns the finding names to the file's header row."),
    Rule("metadata.mapping_values", "warning", "mapping file values",
         "A mapping CSV has rows without a signal_id, a sampling_rate that is not a positive number (Hz), a "
         "standardized_label that is not an ISO/IEEE 11073 label (MDC_...), no units, or no timestamp_id (nor "
         "start_time and end_time).",
         sop=((WAVEFORM_FORMAT, '4.1.1. Mapping File'), (WAVEFORM_FORMAT, '3.4. Standardized Channel Naming')),
         remedy="Fill the cells the finding names; map each signal to a label of the procedure's signal label lists."),
    Rule("metadata.submission_sections", "warning", "SUBMISSION.md incomplete",
         "SUBMISSION.md has no section on one of the topics the waveform procedure asks for (hospital, dataset, "
         "waveform types, known issues, variables, sample intervals, linkage to visits): a heading, or a label of the "
         "procedure's template answered (`Hospital name: ...`).",
         sop=((WAVEFORM, '6.2. Submission Process'),
              (WAVEFORM_FORMAT, '4.1. Submit in Preferred Format with a Mapping File'),
              (WAVEFORM_FORMAT, '5. Linking Waveform Sessions to Visits')),
         remedy="Add a heading (or answer the template's label) for each topic the finding names."),
    Rule("metadata.submission_answers", "warning", "SUBMISSION.md variables table incomplete",
         "SUBMISSION.md's table of variables (the template's Variable name, Description, Data type, Unit) describes no "
         "variable, or leaves a variable's description or data type empty, or the unit of a time variable (the "
         "waveform procedure asks for each variable's description and data type, and the time units of the sample "
         "times); or, where a mapping file is stream-based (start_time, end_time), says nothing of the first or last "
         "sample (whether the stream's times are at the start or end of its first and last samples).",
         sop=((WAVEFORM_FORMAT, '4.1. Submit in Preferred Format with a Mapping File'),),
         remedy="Fill the table's empty cells; for stream-based data, say whether the start and end times are "
                "those of the first and last samples' start or end."),
    Rule("metadata.readiness_unchecked", "warning", "READINESS.md items unchecked",
         "READINESS.md has checklist items that are not ticked (an item marked (optional) excepted), or no "
         "checklist item at all.",
         sop=((WAVEFORM, '6.2. Submission Process'),),
         remedy='Tick ([x]) each item the submission meets; settle the others before submitting.'),
    Rule("metadata.unreadable", "error", "Metadata file unreadable",
         "A Metadata markdown or mapping file is empty or not UTF-8 text.",
         sop=((WAVEFORM_FORMAT, '2.2. Explanation of File Structure'),),
         remedy='Save the file again as UTF-8 text.'),
    # -- OMOP/
    Rule("omop.missing_table", "error", "OMOP table missing",
         f"One of the 13 OMOP clinical tables is missing from OMOP/ ({', '.join(REQUIRED_TABLES)}).",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export the table into OMOP/ as <table>.csv (its header row alone where the site has no rows).'),
    Rule("omop.specimen", "error", "specimen table submitted",
         "OMOP/specimen.csv is present, but CHoRUS does not collect the specimen table.",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Remove specimen.csv from OMOP/.'),
    Rule("omop.unexpected_file", "warning", "unknown file in OMOP",
         "A file in OMOP/ is not one of the CDM 5.4 table CSVs CHoRUS collects nor waveform_visit_links.csv.",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Move the file out of OMOP/, or name it as its CDM 5.4 table.'),
    Rule("omop.unreadable", "error", "OMOP table unreadable",
         "An OMOP CSV cannot be read (empty, not UTF-8 text, or malformed rows in a column that is cross-checked).",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export the table again as a UTF-8, comma-delimited CSV with a header row.'),
    Rule("omop.delimiter", "error", "OMOP table not comma-delimited",
         "An OMOP CSV's header row is split by tabs, semicolons or pipes instead of commas.",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export the table again, comma-delimited.'),
    Rule("omop.duplicate_column", "error", "OMOP table names a column twice",
         "An OMOP CSV's header row names a column more than once (case aside: PERSON_ID and person_id are one).",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export the table again with each column once.'),
    Rule("omop.no_header", "error", "OMOP table without header row",
         "An OMOP CSV's first line holds values, not column names.",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export the table again with its header row of CDM 5.4 column names.'),
    Rule("omop.missing_key", "error", "OMOP table lacks its key column",
         "An OMOP CSV's header lacks the table's key column (e.g. person_id in person.csv).",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export the table again with its key column, named as CDM 5.4 names it.'),
    Rule("omop.required_columns", "error", "OMOP table lacks required columns",
         "An OMOP CSV's header lacks a column CDM 5.4 requires of its table (e.g. visit_end_date in "
         "visit_occurrence.csv; note_text excepted, which the upload procedure does not ask for).",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export the table again with the columns the finding names.'),
    Rule("omop.note_columns", "error", "note table lacks columns",
         "OMOP/note.csv lacks a column the upload procedure asks the note table to keep even without the notes' "
         f"text ({', '.join(OMOP_MIN_COLUMNS['note'])}).",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy='Export note.csv again with those columns (note_text may stay empty).'),
    # -- the superseded waveform-visit links table (v2.0), where a site still ships it
    Rule("links.columns", "error", "waveform-visit links lack columns",
         "OMOP/waveform_visit_links.csv lacks a visit_occurrence_id or a session_id (or session) column.",
         sop=((OWN, "Waveform File Format v2.0's links table, an edition not kept as text; v2.1 links sessions to "
                  "visits in the waveform registry"),),
         remedy="Add the column, or drop the table and give each file's visit in waveform_registry.csv."),
    Rule("links.unknown_session", "warning", "link to an unknown session",
         "OMOP/waveform_visit_links.csv names a session that is not on the site.",
         sop=((OWN, "Waveform File Format v2.0's links table, an edition not kept as text; v2.1 links sessions to "
                  "visits in the waveform registry"),),
         remedy="Remove the row, or copy the session's files."),
    Rule("links.unknown_visit", "error", "link to an unknown visit",
         "OMOP/waveform_visit_links.csv names a visit_occurrence_id that is not in visit_occurrence.csv.",
         sop=((OWN, "Waveform File Format v2.0's links table, an edition not kept as text; v2.1 links sessions to "
                  "visits in the waveform registry"),),
         remedy="Fix the row's visit_occurrence_id, or add the visit to visit_occurrence.csv."),
    # -- persons
    Rule("person.no_omop_row", "error", "person folder not in person.csv",
         "A person folder's id is not a person_id in OMOP/person.csv.",
         sop=((UPLOAD, 'Local File Organization'), (LINKAGE, 'C: OMOP INTEGRATION')),
         remedy="Add the person to person.csv, or name the folder by the person's person_id."),
    Rule("person.no_folder", "info", "persons without a folder",
         "Some person_ids in OMOP/person.csv have no person folder (normal for persons without waveforms or images).",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy='Nothing, where those persons have no waveforms or images.'),
    Rule("person.id_format", "warning", "person id not an integer",
         "A person folder's name is not an integer (digits 0-9): it names the person_id, an integer in OMOP and in "
         "the linkage registries.",
         sop=((UPLOAD, 'Local File Organization'), (LINKAGE, 'B: REGISTRY CONSTRUCTION')),
         remedy="Name the folder by the person's person_id."),
    Rule("person.repeated_id", "error", "person_id on more than one row",
         "OMOP/person.csv gives a person_id on more than one row: it is the PERSON table's key in CDM 5.4, one row per "
         "person.",
         sop=((UPLOAD, 'OMOP EHR Folder'),),
         remedy="Keep one row per person: remove the repeated rows, or give each person their own person_id."),
    Rule("visit.date_format", "error", "visit date not an ISO date",
         "OMOP/visit_occurrence.csv writes a visit's start or end (visit_start_date, visit_start_datetime, "
         "visit_end_date, visit_end_datetime) otherwise than as an ISO date, YYYY-MM-DD with or without a time "
         "(01/01/2024 as a spreadsheet writes it), or as a date the calendar lacks (2024-13-01): CDM 5.4's DATE and "
         "DATETIME columns, which a loader refuses so; the visit-time rules (registry.visit_time, "
         "registry.visit_missing) cannot read that visit's span and leave it out.",
         sop=((UPLOAD, 'OMOP EHR Folder'), (LINKAGE, 'B: REGISTRY CONSTRUCTION')),
         remedy="Export the dates as YYYY-MM-DD and the datetimes as YYYY-MM-DD HH:MM:SS (not through a spreadsheet)."),
    Rule("visit.end_before_start", "error", "visit ends before it starts",
         "OMOP/visit_occurrence.csv gives a visit an end before its start (a date alone is the whole day, an end at "
         "the midnight of its own date too): no capture time lies inside it, so the linkage procedure's visit that "
         "overlaps a file's capture time can never be it.",
         sop=((UPLOAD, 'OMOP EHR Folder'), (LINKAGE, 'B: REGISTRY CONSTRUCTION')),
         remedy="Fix the visit's start and end (swapped, or shifted apart by the date shift) in visit_occurrence.csv."),
    Rule("visit.repeated_id", "error", "visit_occurrence_id on more than one row",
         "OMOP/visit_occurrence.csv gives a visit_occurrence_id on more than one row (of one person or of several): it "
         "is the VISIT_OCCURRENCE table's key in CDM 5.4, one row per visit, and the registries' visit_id names it.",
         sop=((UPLOAD, 'OMOP EHR Folder'), (LINKAGE, 'C: OMOP INTEGRATION')),
         remedy="Keep one row per visit: remove the repeated rows, or give each visit its own visit_occurrence_id."),
    Rule("person.split_folders", "error", "one person in two folders",
         "Person folders name the same person_id in other spellings (0001/ and 000001/: ids are compared without "
         "leading zeros, as OMOP stores them): the person's files lie in more than one folder.",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy="Move the person's files into one folder, named as person.csv writes the id."),
    # -- waveforms
    Rule("waveforms.session_id", "warning", "session id not an integer",
         "A waveform session id (its folder under Telemetry/ or EEG/) is not an integer, as the procedure asks; or a "
         "session folder's name ends in a start stamp (_YYYYMMDD_HHMMSS) that is no real date and time.",
         sop=((WAVEFORM_FORMAT, '3.1. Session Definition'),),
         remedy="Rename the session's folder and files to an integer session id."),
    Rule("waveforms.id_collision", "warning", "session id used twice",
         "The same session id is used by more than one person, or by both a Telemetry and an EEG session, or by two session folders in other spellings (0900 and 900).",
         sop=((WAVEFORM_FORMAT, '3.1. Session Definition'),),
         remedy='Give each session an id of its own.'),
    Rule("wfdb.bad_header", "error", "WFDB header unreadable",
         "A .hea file under Waveforms/ is not a parseable WFDB header.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '3. Header File (.hea) Format')),
         remedy="Write the header again (wfdb's wrsamp writes it), or fix the line the finding quotes."),
    Rule("edf.bad_header", "error", "EDF header unreadable",
         "A .edf (or .bdf) file under Waveforms/ does not begin with the format's 256-byte ASCII header (a version, a "
         "start date dd.mm.yy and time hh.mm.ss that are a real date and time, the header's length, the number of "
         "signals) followed by 256 bytes per signal (the file is cut inside them, or the header's length is not 256 + "
         "256 per signal): its recording has no start time, which dates the session, and its signals are not known; or "
         "its number of data records is -1, which the EDF specification allows only while the file is being recorded "
         "(\"as soon as the file is closed, the correct number is known and must be entered\"): a delivered file "
         "that still says -1 is an unfinished recording, not the complete session CHoRUS Central reviews for "
         "completeness.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'),),
         remedy='Export the recording again from its source, finished and whole.'),
    Rule("wfdb.line_ends", "warning", "WFDB header lines end in a carriage return alone",
         "A WFDB header's lines end in a carriage return alone (as old Mac OS tools write text), not a line feed: the "
         "WFDB header format separates lines with line feeds (a carriage return may precede each). wfdb, the CHoRUS "
         "converter's library, reads it; the WFDB C library's tools (PhysioNet's) read the header as one line and "
         "cannot read the record.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '3. Header File (.hea) Format')),
         remedy="Save the header with line feeds (Unix) or carriage return + line feed (Windows) line ends."),
    Rule("wfdb.record_name", "error", "WFDB record name differs from file name",
         "A WFDB header's record name differs from its file name without .hea.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '3.2. Explanation of Header Content')),
         remedy="Rename the file, or fix the header's record name, so that they agree."),
    Rule("wfdb.format", "error", "unsupported WFDB signal format",
         f"A WFDB header uses a signal format the wfdb readers do not support ({', '.join(WFDB_FORMATS)} are), or "
         "gives the signals of one signal file different formats or byte offsets (wfdb reads them all in the first's "
         "format, after its offset).",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'),),
         remedy='Write the record again in a format the finding lists (wfdb writes 16 and 212).'),
    Rule("wfdb.missing_dat", "error", "WFDB signal file missing",
         "A signal file named in a WFDB header is not in the header's folder (one named in another case, X.DAT for the "
         "header's X.dat, is told so: WFDB names are case-sensitive, found by wfdb only where names ignore case).",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '2.2. Explanation of File Structure')),
         remedy="Copy the signal file into the header's folder."),
    Rule("wfdb.dat_size", "error", "WFDB signal file has the wrong size",
         "A signal file's size differs from what its header implies (byte offset + samples x bytes per sample); so "
         "does an EDF (BDF) file's from its header's (header bytes + data records x bytes per data record).",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '3. Header File (.hea) Format')),
         remedy='Copy the file again from its source (a cut copy, usually).'),
    Rule("wfdb.unreferenced_dat", "warning", "WFDB signal file not in any header",
         "A .dat file lies in a folder of WFDB headers but none of them names it.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '2.2. Explanation of File Structure')),
         remedy="Remove the file, or name it in its record's header."),
    Rule("wfdb.missing_segment", "error", "WFDB segment header missing",
         "A multi-segment WFDB header names a segment whose <segment>.hea is not in its folder, or lacks the layout "
         "segment (a header first in its list, of length 0, listing the record's signals) that wfdb needs: its first "
         "segment is '~' of length 0, or it lists '~' gaps without one (the WFDB header format allows null segments only "
         "in a variable layout; wfdb cannot read such a record, though the WFDB C library reads the gap).",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '5.1. Segment Definition')),
         remedy="Copy the segment's header and signal files into the folder."),
    Rule("wfdb.segment_length", "error", "WFDB segment lengths disagree",
         "A segment header's length differs from the length its multi-segment header gives (a length of 0 is only the first, "
         "layout, segment's), or the segment lengths do "
         "not add up to the record's length.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '5.1. Segment Definition')),
         remedy='Copy the segments again, or write the record again with wfdb (MultiRecord).'),
    Rule("wfdb.segment_signals", "error", "WFDB segment holds other signals than its record",
         "A segment header's number of signals differs from its multi-segment header's: in a fixed layout each segment "
         "holds the record's signals, and a variable layout's layout segment (its first, of length 0) lists them all; "
         "a variable layout's other segments hold at most as many. wfdb joins a fixed layout's segments signal by "
         "signal (one of other signals fails its read, or puts a signal under another's name).",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '5.1. Segment Definition')),
         remedy='Write the record again with wfdb (MultiRecord): each segment with the record\'s signals, or a layout '
                'segment listing them all.'),
    Rule("wfdb.nested_segment", "error", "WFDB segment is a multi-segment record",
         "A multi-segment WFDB header lists a segment whose own header lists segments (or the record itself): a WFDB "
         "segment is a single-segment record, and wfdb cannot read the record.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '5.4. High Frequency Waveforms')),
         remedy='Write the record again with wfdb (MultiRecord), each segment a single-segment record.'),
    Rule("wfdb.segment_rate", "error", "WFDB segment sampled at another frequency",
         "A segment header's sampling frequency differs from its multi-segment header's (a record's segments share "
         "its frequency).",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '5.4. High Frequency Waveforms')),
         remedy="Write the record again with its segments at the record's frequency."),
    Rule("wfdb.sampling_frequency", "error", "WFDB sampling frequency not positive",
         "A WFDB header's record line gives a sampling frequency of 0 Hz: no sample has a time, and wfdb (the "
         "CHoRUS converter's library) writes only positive frequencies.",
         sop=((WAVEFORM_FORMAT, '3. Preparing Waveforms'), (WAVEFORM_FORMAT_V1, '5.4. High Frequency Waveforms')),
         remedy="Write the header again with the device's sampling frequency."),
    Rule("wfdb.name_mismatch", "warning", "WFDB name's start or duration disagrees with the header",
         "In the first upload SOP's naming (<person>_<YYYYMMDD>_<HHMMSS>_<duration>.hea), the WFDB header's base date "
         "or time differs from the name's start, or its length (samples / frequency) from the name's duration by more "
         "than a second.",
         sop=((UPLOAD_V1, 'The Waveforms folder'),),
         remedy="Rename the file to the header's start and duration, or fix the header."),
    Rule("wfdb.unmapped_signal", "warning", "waveform signal not in the mapping file",
         "A WFDB record (or an EDF/BDF file: its signal labels, not EDF+'s annotations) of Telemetry (or EEG) has "
         "signals whose names are no signal_id of Metadata/Telemetry_mapping.csv (or EEG_mapping.csv): the procedure "
         "asks for a row for each signal in the data.",
         sop=((WAVEFORM_FORMAT, '4.1.1. Mapping File'),),
         remedy='Add a row for each signal the finding names to the mapping file.'),
    Rule("wfdb.mapping_rate", "warning", "mapping sampling rate differs from the header",
         "A mapped signal's sampling_rate in the mapping file differs by more than 1% from its rate in the WFDB "
         "header (frequency x samples per frame) or EDF header (samples per data record / the record's duration).",
         sop=((WAVEFORM_FORMAT, '4.1.1. Mapping File'),),
         remedy="Give the signal's sampling rate in the mapping file as the header records it (or fix the header)."),
    Rule("wfdb.mapping_units", "warning", "mapping units differ from the header",
         "A mapped signal's units in the mapping file differ from its units in the WFDB header, or its physical "
         "dimension in the EDF header (uV, µV and μV are one unit in the mapping; case counts, mV is not MV: units that "
         "differ only in case are told so, with the usual spelling; a WFDB header is read as wfdb reads it, as ASCII: a "
         "µV there is V; an EDF's blank dimension is not compared).",
         sop=((WAVEFORM_FORMAT, '4.1.1. Mapping File'),),
         remedy="Write the signal's units in the mapping file as the header gives them (or fix the header)."),
    Rule("wfdb.session_record", "warning", "session without its record header",
         "A session folder (Telemetry/ or EEG/<session_id>/) holds WFDB headers but none named <session_id>.hea.",
         sop=((WAVEFORM_FORMAT, '2.2. Explanation of File Structure'),),
         remedy="Name the record's header <session_id>.hea."),
    Rule("wfdb.numerics_name", "warning", "numerics file misnamed",
         "A CSV in a WFDB session folder is named neither <session_id>n.csv, the name for numerics, nor "
         "<session_id>.csv, that of a high-frequency or annotation file; or a file of a session folder is named "
         "<session_id>n.<ext>, the name for numerics, but is not a CSV (numerics are asked for as CSV).",
         sop=((WAVEFORM_FORMAT, '2.2. Explanation of File Structure'),
              (WAVEFORM_FORMAT, '3.6. Low Frequency Signals ("Numerics")')),
         remedy='Rename the CSV <session_id>n.csv (numerics) or <session_id>.csv; write numerics as <session_id>n.csv.'),
    Rule("records.unlisted", "warning", "WFDB record not in RECORDS",
         "Where RECORDS files are kept (optional since v2.0), a WFDB record (not a segment) is not listed in any.",
         sop=((WAVEFORM_FORMAT_V1, '2.1. Example File Structure'),),
         remedy='Add the record to a RECORDS file, or remove the RECORDS files.'),
    Rule("records.absent", "error", "RECORDS lists an absent record",
         "A RECORDS file lists a record whose header is not on the site.",
         sop=((WAVEFORM_FORMAT_V1, '2.1. Example File Structure'),),
         remedy='Remove the line from RECORDS, or copy the record.'),
    Rule("records.unreadable", "error", "RECORDS unreadable",
         "A RECORDS file is empty or not UTF-8 text, or larger than 256 MiB (about 6M records: keep one per person "
         "folder instead).",
         sop=((WAVEFORM_FORMAT_V1, '2.1. Example File Structure'),),
         remedy='Write it again as UTF-8 text, one record per line.'),
    # -- images
    Rule("dicom.unreadable", "error", "DICOM file unreadable",
         "A .dcm file under Images/ has no readable DICOM header, or ends inside the pixel data its header declares "
         "(an interrupted copy).",
         sop=((IMAGING, 'Test deidentified DICOM readability'),),
         remedy='Copy the file again from its source, or export it again from the de-identification tool.'),
    Rule("dicom.outside_series", "error", "DICOM file outside the image folders",
         "A .dcm file does not lie in <person>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/ (nor in the "
         "study/series folders of earlier editions).",
         sop=((IMAGING, 'Folder and file structure and naming'), (UPLOAD, 'Images Folder')),
         remedy='Move the file into <person>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/.'),
    Rule("dicom.path_mismatch", "error", "DICOM folders disagree with the header",
         "A DICOM file's modality, accession or series folder, or its instance number, differs from the header's "
         "Modality, AccessionNumber, SeriesInstanceUID or InstanceNumber (an accession number is the integer "
         "image_occurrence_id: 00123 and 123 agree; the modality folder is spelled as the header's Modality: CT/, not "
         "ct/; an XR folder, as the procedures name X-ray, holds CR, DX, RG, XA and RF images).",
         sop=((IMAGING, 'Folder and file structure and naming'), (UPLOAD, 'Images Folder')),
         remedy="Move or rename the file to the header's values (or fix the header)."),
    Rule("dicom.instance_repeated", "warning", "one InstanceNumber or SOPInstanceUID for two images",
         "Two or more DICOM files of one series folder (and SeriesInstanceUID) have the same InstanceNumber: the "
         "Imaging SOP names each image <InstanceNumber>.dcm, one file per number (a copy, or a series numbered twice); "
         "or two or more DICOM files of one person share a SOPInstanceUID, which names one image (a PACS or viewer "
         "keeps one of them).",
         sop=((IMAGING, 'Folder and file structure and naming'),),
         remedy="Remove the copy, or number the series' images again (give each image its own SOPInstanceUID)."),
    Rule("dicom.uid_shared", "error", "one SOPInstanceUID under two persons",
         "DICOM files in two or more persons' folders share a SOPInstanceUID, which names one image: an image filed "
         "under the wrong person (a copy error), or one patient's images kept under two person_ids.",
         sop=((IMAGING, 'DICOM with metadata that needs deidentification'), (IMAGING, 'Folder and file structure and naming')),
         remedy="Keep each image under its own person only; check personal_map.csv maps each patient to one person_id."),
    Rule("dicom.transfer_syntax", "error", "DICOM transfer syntax not a standard one",
         "A DICOM file's transfer syntax UID is none of the DICOM standard's (a vendor's private one, or a damaged "
         "value): its header reads, but no standard viewer decodes its pixel data.",
         sop=((IMAGING, 'Test deidentified DICOM readability'),),
         remedy="Export the series again in a standard transfer syntax (Explicit VR Little Endian)."),
    Rule("dicom.accession_split", "warning", "one accession in two folders",
         "Two accession folders of one person name the same accession in different spellings (070000 and 70000): "
         "the study is split.",
         sop=((IMAGING, 'Folder and file structure and naming'),),
         remedy="Move the study's series into one accession folder."),
    Rule("dicom.accession_shared", "warning", "one accession id for two persons",
         "The same accession folder id (the image_occurrence_id, one per study) is used by more than one person.",
         sop=((IMAGING, 'Data Preparation'), (IMAGING, 'DICOM with metadata that needs deidentification')),
         remedy='Give each study an image_occurrence_id of its own when de-identifying.'),
    Rule("dicom.name_mismatch", "error", "DICOM name disagrees with its header",
         "In an earlier edition's naming, a DICOM file name's modality, series or instance differs from the header's "
         "Modality, SeriesNumber or InstanceNumber.",
         sop=((UPLOAD, 'Images Folder'), (UPLOAD_V1, 'The Images folder')),
         remedy="Rename the file to the header's values, or into today's naming."),
    Rule("dicom.datetime_mismatch", "warning", "DICOM name date/time not in the header",
         "A DICOM file name's date and time match none of the header's study, series, acquisition or content "
         "date/time.",
         sop=((UPLOAD, 'Images Folder'), (UPLOAD_V1, 'The Images folder')),
         remedy="Rename the file to the study's date and time, or into today's naming."),
    Rule("dicom.patient_id", "error", "DICOM PatientID is not the person",
         "A DICOM header's PatientID differs from the person folder it lies in (the person_id after "
         "de-identification). The finding quotes it only when it is a person_id of the site; another value (a medical "
         "record number) is told by its length.",
         sop=((IMAGING, 'DICOM with metadata that needs deidentification'),),
         remedy='De-identify the file again, with personal_map.csv mapping its PatientID to the person_id.'),
    Rule("dicom.accession_id", "error", "DICOM AccessionNumber not an image_occurrence_id",
         "A DICOM header's AccessionNumber is absent or not an integer (the Imaging SOP replaces it by the study's "
         "OMOP image_occurrence_id when de-identifying).",
         sop=((IMAGING, 'DICOM with metadata that needs deidentification'), (IMAGING, 'Data Preparation')),
         remedy="De-identify the file again, with image_map.csv mapping its AccessionNumber to the "
                "image_occurrence_id."),
    Rule("dicom.study_metadata", "warning", "DICOM study metadata missing",
         "DICOM headers of a series folder lack study-level attributes the Imaging SOP selects for CHoRUS "
         f"({', '.join(k for k, _ in STUDY_DICOM_TAGS.values())}; MagneticFieldStrength in MR studies): keep them "
         "when de-identifying.",
         sop=((IMAGING, 'Data Preparation'),)),
    Rule("dicom.series_metadata", "warning", "DICOM series metadata missing",
         "DICOM headers of a series folder lack series-level attributes the Imaging SOP selects for CHoRUS "
         f"({', '.join(k for k, _ in SERIES_DICOM_TAGS.values())}; "
         + "; ".join(f"{k} in {'/'.join(m)} series" for k, _, m in SERIES_DICOM_TAGS_BY_MODALITY.values())
         + "): keep them when de-identifying.",
         sop=((IMAGING, 'Data Preparation'),)),
    Rule("dicom.recommended", "info", "DICOM attributes recommended to keep missing",
         "DICOM headers of a series folder lack attributes the Imaging SOP recommends keeping, of those the series' "
         "modality carries (" + "; ".join(
             f"{', '.join(keywords)} {'of every image' if modalities is None else 'in ' + '/'.join(modalities)}"
             for modalities, keywords in _by_modalities(RECOMMENDED_DICOM_TAGS).items())
         + "): keep them when de-identifying, where the source has them.",
         sop=((IMAGING, 'DICOM Tags Recommended to Keep'),)),
    Rule("dicom.identifying_tag", "error", "identifying DICOM attribute left filled",
         "A DICOM header still holds an attribute that identifies the patient (PatientName other than the person id, "
         "PatientBirthDate, PatientAddress, OtherPatientIDs, ...).",
         sop=((IMAGING, 'DICOM with metadata that needs deidentification'),),
         remedy='De-identify the file again with the CHoRUS CTP tool.'),
    Rule("dicom.series_split", "warning", "one DICOM series in two accessions",
         "The images of one SeriesInstanceUID of a person carry two or more AccessionNumbers: a DICOM series belongs to "
         "one study, whose AccessionNumber is its image_occurrence_id, and each accession is a procedure of its own in "
         "the registry (one study given two ids, or images filed under the wrong accession).",
         sop=((IMAGING, 'Data Preparation'), (IMAGING, 'Folder and file structure and naming')),
         remedy="Give the series' images one AccessionNumber and move them into its accession folder."),
    Rule("dicom.burned_in", "warning", "DICOM pixels hold identifying text",
         "DICOM headers of a series folder say BurnedInAnnotation YES: the image holds text that identifies the "
         "patient (a name, an ID or a date burnt into the pixels), which removing the header's identifiers leaves in "
         "place. The Imaging SOP leaves pixel de-identification to the site's approved solution (its own is under "
         "development), and the linkage procedure asks sites to remove PHI and verify its absence.",
         sop=((IMAGING, 'DICOM with metadata already deidentified'), (IMAGING, 'DICOM Pixel de-identification'),
              (LINKAGE, 'B: REGISTRY CONSTRUCTION')),
         remedy="Remove or mask the burnt-in text (a pixel de-identification step), then set BurnedInAnnotation to NO; "
                "or leave the series out."),
    # -- the linkage registries a site ships
    Rule("registry.absent", "error", "registry not shipped",
         "The site has waveform (or image) files but ships no waveform_registry.csv (or image_registry.csv) at its "
         "root or in Metadata/, the registry the linkage procedure asks for, one row per file.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'),),
         remedy="Build the registry, one row per file, and place it at the site's root or in Metadata/."),
    Rule("registry.unreadable", "error", "registry unreadable",
         "A waveform or image registry CSV cannot be read (empty, not UTF-8 text, or malformed rows), or holds its "
         "header row again below its first line (two registries pasted into one file; those lines are not read as rows).",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'),),
         remedy='Export the registry again as a UTF-8, comma-delimited CSV with a header row.'),
    Rule("registry.columns", "error", "registry lacks columns",
         f"A waveform or image registry CSV lacks one of the columns {', '.join(REGISTRY_COLUMNS)}, or its header "
         "row is split by tabs, semicolons or pipes instead of commas.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'), (IMAGING, '2.0 Image Data Preparation')),
         remedy='Export the registry again, comma-delimited, with every column.'),
    Rule("registry.values", "warning", "registry values of the wrong type",
         "A registry row's file_id is empty, its proc_id is empty or not an integer, its person_id is empty or not an "
         "integer, its group_id is empty, its visit_id is not an integer, or its datetime is empty or not a date and "
         "time (yyyy-MM-dd HH:mm:ss, or M/d/yyyy H:mm:ss as the Imaging SOP's example registry writes it).",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'), (IMAGING, '2.0 Image Data Preparation')),
         remedy='Fill the cells the finding names with values of their type.'),
    Rule("registry.proc_overlap", "error", "registry proc_id is an EHR procedure's id",
         "A registry's proc_id is the procedure_occurrence_id of one of the site's EHR procedures (a row of "
         "procedure_occurrence.csv whose procedure_concept_id is neither 4180938 nor 4141651).",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'), (LINKAGE, 'C: OMOP INTEGRATION')),
         remedy="Give the registries' procedures ids that no EHR procedure uses (a range of their own)."),
    Rule("registry.no_procedure", "error", "registry proc_id without its procedure row",
         "A registry's proc_id is not a procedure_occurrence_id of OMOP/procedure_occurrence.csv (the linkage "
         "procedure makes each one a PROCEDURE_OCCURRENCE row; the Imaging SOP gives every imaging study one).",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy='Add the PROCEDURE_OCCURRENCE rows made from the registries to procedure_occurrence.csv.'),
    Rule("registry.linkage_without_files", "warning", "linkage procedure row without registry rows",
         "A row of OMOP/procedure_occurrence.csv of concept 4180938 (Imaging Procedure) or 4141651 (Monitoring "
         "Procedure), the rows the linkage procedure makes from the registries, has a procedure_occurrence_id that is "
         "no proc_id of waveform_registry.csv or image_registry.csv: its session was deleted, or its person removed, "
         "after the rows were made, so it links no file delivered. A warning: the procedure asks for these rows to be "
         "made from the registries (\"should\"), and an EHR may code procedures of its own so. Checked where every "
         "registry shipped can be read, each row with an integer proc_id, and of each concept where the registry of "
         "its modality is shipped, or where the site ships neither that registry nor files of that modality (rows of "
         "a registry never shipped; with files, registry.absent asks for the registry).",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy="Remove those rows from procedure_occurrence.csv (or deliver their files with their registry rows); "
                "`chorus-batch registry --omop` writes the rows of the registries anew."),
    Rule("registry.procedure_concept", "error", "registry proc_id under the other modality's concept",
         "A waveform registry's proc_id is a procedure_occurrence.csv row of concept 4180938 (Imaging Procedure), or "
         "an image registry's one of 4141651 (Monitoring Procedure): the linkage procedure gives waveform files "
         "4141651 and images 4180938.",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy='Give image procedures concept 4180938 and waveform procedures 4141651.'),
    Rule("registry.procedure_person", "error", "registry proc_id is another person's procedure",
         "A registry's proc_id is, in procedure_occurrence.csv, a procedure (of concept 4180938 or 4141651) of a person "
         "other than the registry row's person_id (the linkage procedure makes each proc_id the PROCEDURE_OCCURRENCE "
         "row of the files' person).",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy="Make the procedure row's person_id the registry row's, or fix the proc_id."),
    Rule("registry.procedure_visit", "error", "registry proc_id's procedure row names another visit",
         "A registry's proc_id is, in procedure_occurrence.csv, a procedure (of concept 4180938 or 4141651) whose "
         "visit_occurrence_id differs from the registry rows' visit_id, or is given where they leave it empty or left "
         "empty where they give one (the linkage procedure makes the registry's visit_id the PROCEDURE_OCCURRENCE "
         "row's visit_occurrence_id).",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy="Make the procedure row's visit_occurrence_id the registry rows' visit_id, or fix the proc_id."),
    Rule("registry.proc_conflict", "error", "one proc_id for two procedures",
         "A proc_id has rows of more than one person, or is used by both the image and the waveform registry (each "
         "proc_id becomes one PROCEDURE_OCCURRENCE row, of one person and one procedure concept).",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy='Give each procedure a proc_id of its own.'),
    Rule("registry.column_order", "warning", "image registry columns out of order",
         "The image registry's columns are not in the order the Imaging SOP lists them (image_registry_id, "
         f"{', '.join(REGISTRY_COLUMNS)}).",
         sop=((IMAGING, '2.0 Image Data Preparation'),),
         remedy='Export the columns in that order.'),
    Rule("registry.image_registry_id", "error", "image_registry_id not a key",
         "A registry's image_registry_id (the Imaging SOP's primary key) is empty, not an integer, or repeated.",
         sop=((IMAGING, '2.0 Image Data Preparation'),),
         remedy='Number the rows 1, 2, 3, ...'),
    Rule("registry.image_registry_order", "warning", "image_registry_id out of sequence",
         "A registry's image_registry_id is not above the ids of the rows before it (the Imaging SOP asks for a "
         "sequential integer).",
         sop=((IMAGING, '2.0 Image Data Preparation'),),
         remedy='Number the rows 1, 2, 3, ...'),
    Rule("registry.several", "error", "more than one registry of a modality",
         "The site ships two or more waveform (or image) registries (a second download, a copy in Metadata/ and at the "
         "root): the linkage procedure asks for one of each, with one row per file.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'),),
         remedy='Keep one registry of each modality; remove the copies.'),
    Rule("registry.duplicate", "error", "registry lists a file twice",
         "A registry has more than one row for the same file (trg_file) or file_id.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'),),
         remedy='Remove the repeated rows; give each file a file_id of its own.'),
    Rule("registry.unknown_person", "error", "registry names an unknown person",
         "A registry row's person_id (an integer) is not in person.csv.",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy="Fix the row's person_id, or add the person to person.csv."),
    Rule("registry.person_folder", "error", "registry row under another person's folder",
         "A registry row's person_id differs from the person folder its trg_file lies in.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'), (LINKAGE, 'C: OMOP INTEGRATION')),
         remedy="Fix the row's person_id, or move the file into its person's folder."),
    Rule("registry.renamed_folder", "error", "person folder renamed after the registries were written",
         "A person folder the manifest recorded as renamed (its files renamed into another top folder, as a run's change "
         "set classifies them) is still named by the registries the site ships (a row's person_id or trg_file): their "
         "rows of its files name no file, and its files have no row; told once, on the folder as now named, and the "
         "registry.missing_file, registry.unlisted_file and dicom.patient_id findings the rename gave point to it. "
         "Nothing is said where the manifest knows no earlier name (validate of a folder, a fresh manifest).",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'), (LINKAGE, 'C: OMOP INTEGRATION')),
         remedy="If the new name is the person's person_id, write the registries again (`chorus-batch registry`) or "
                "fix their person_id and trg_file; else rename the folder back."),
    Rule("registry.unknown_visit", "error", "registry names an unknown visit",
         "A registry row's visit_id is not in visit_occurrence.csv.",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy="Fix the row's visit_id, or add the visit to visit_occurrence.csv."),
    Rule("registry.visit_time", "warning", "registry visit does not overlap the capture time",
         "A registry row's datetime lies outside the start and end visit_occurrence.csv gives its visit_id (the linkage "
         "procedure's visit is the one that overlaps the file's capture time, its visit_id left empty where none does; "
         "a date given without a time is the whole day); a visit whose start or end datetime has a time zone (`Z`, "
         "`+01:00`) is told too, as `registry` tells it: compared as the clock time written, nothing converted.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'),),
         remedy="Give the row the visit that overlaps its capture time (empty where none does); check its datetime "
                "is shifted as the EHR's dates are."),
    Rule("registry.visit_missing", "warning", "registry visit left empty though one overlaps",
         "A registry row leaves visit_id empty though a visit of its person in visit_occurrence.csv overlaps its capture "
         "time (the linkage procedure infers the visit from the datetime where the file has no explicit link, and "
         "leaves visit_id empty only where no visit of the person overlaps); a visit of the person whose start or end "
         "datetime has a time zone is told too, as for `registry.visit_time`.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'),),
         remedy='Give the row the visit_occurrence_id of the visit that overlaps its capture time.'),
    Rule("registry.visit_person", "error", "registry visit of another person",
         "A registry row's visit_id is, in visit_occurrence.csv, a visit of a person other than the row's person_id "
         "(the linkage procedure asks for the visit of the file's patient), or one visit_occurrence.csv gives to more "
         "than one person (its key repeated).",
         sop=((LINKAGE, 'C: OMOP INTEGRATION'),),
         remedy='Give the row a visit of its person.'),
    Rule("registry.missing_file", "error", "registry row without its file",
         "A registry row has no src_file, a waveform registry row has no trg_file (the Imaging SOP leaves the image "
         "registry's trg_file to the centre), or a trg_file is not on the site, or is a file of the site outside the "
         "persons' Waveforms/ (or Images/) folders the registry lists; or an image registry that leaves "
         "trg_file blank has more rows of a person than the person has image files.",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'), (IMAGING, '2.0 Image Data Preparation')),
         remedy="Fix the row's src_file or trg_file, or copy the file it names."),
    Rule("registry.unlisted_file", "warning", "file not in the registry",
         "A waveform (or image) file of the site has no row in the waveform (or image) registry the site ships (where "
         "the image registry leaves trg_file blank, as the Imaging SOP allows: a person has more image files than rows).",
         sop=((LINKAGE, 'B: REGISTRY CONSTRUCTION'),),
         remedy='Add a row for the file to the registry.'),
    # -- any file
    Rule("path.person_mismatch", "error", "file name names another person",
         "A file name starts with a person id other than that of the person folder it lies in.",
         sop=((UPLOAD, 'Local File Organization'), (LINKAGE, 'C: OMOP INTEGRATION')),
         remedy="Move the file into its person's folder, or rename it."),
    Rule("path.unparsed", "warning", "path fits no naming pattern",
         "A file's path fits none of the site's naming patterns (and no more specific rule explains why).",
         sop=((UPLOAD, 'Local File Organization'),),
         remedy="Move or rename the file into a layout of the procedures (or add its pattern to the site's "
                "configuration)."),
    Rule("file.compressed", "error", "compressed file or archive",
         "A file is compressed or an archive (.gz, .bz2, .xz, .zst, .zip, .7z, .tar, ...): the procedures ask for the "
         "files themselves, and no check reads inside it.",
         sop=((OWN, "the tool's own: no procedure speaks of archives, and no check reads inside one"),),
         remedy="Unpack it into the site's folders and remove the archive."),
    Rule("file.empty", "warning", "empty file",
         "A file is empty (0 bytes), usually an interrupted copy (a file a rule reads, such as an OMOP table or a WFDB "
         "header, is told by that rule instead).",
         sop=((OWN, "the tool's own: an interrupted copy"),),
         remedy='Copy the file again from its source, or remove it.'),
    Rule("file.duplicate", "warning", "same content under two persons",
         "Files with identical content (MD5) lie under more than one person folder.",
         sop=((OWN, "the tool's own: one file under two persons"),),
         remedy='Check which person the file belongs to; remove the other copy.'),
    Rule("file.name_clash", "error", "names a Windows or macOS disk cannot hold apart",
         "Two paths differ only in letter case or Unicode form (person.csv and Person.csv; é as one character or as "
         "e + accent), two folders named so (Café/ in NFC beside Café/ in NFD, their files named apart: one finding "
         "per spelling of the topmost folder), or a file's path is also a folder of other files (possible in a "
         "container): a copy of the site on Windows or macOS keeps one of them (merges the folders), and validation "
         "reads such twins as one table.",
         sop=((OWN, "the tool's own: the disks a site is copied to"),),
         remedy='Rename one of the two.'),
    # Windows cannot hold them at all (nor any disk, a name over 255 bytes): an error, as file.name_clash
    Rule("file.unportable_name", "error", "name a Windows disk cannot hold",
         "A file or folder name is a device name Windows reserves (CON, PRN, AUX, NUL, CONIN$, CONOUT$, COM0-9, "
         "LPT0-9, with any extension, spaces before it, in any case: `nul .txt`), ends with '.' or a space, holds < > : \" | ? * \\ or a control character, or is "
         "longer than 255 bytes: a copy of the site on Windows (or any disk, for the length) loses or renames it.",
         sop=((OWN, "the tool's own: the disks a site is copied to"),),
         remedy='Rename it.'),
    # Windows holds them where long paths are enabled: a warning
    Rule("file.long_path", "warning", "path longer than Windows' 260 characters",
         "A file's site-relative path is longer than 260 characters, the most Windows holds unless long paths are "
         "enabled (the folder the site is copied into adds to it).",
         sop=((OWN, "the tool's own: the disks a site is copied to"),),
         remedy='Shorten the names along its path.'),
    Rule("file.unread", "error", "file could not be read when it was checked",
         "Validation could not read a file whose header it needed: it vanished, access was refused, the storage "
         "failed, or it was written since the run recorded it. Nothing is kept of that read: the next check reads "
         "it again.",
         sop=((OWN, "the tool's own: reading the site"),),
         remedy="Check the file's permissions and storage, then validate again."),
    Rule("file.silent_change", "error", "content changed behind an unchanged size and mtime",
         "Rolling re-verification (or `--rehash`) read a file whose size and mtime had not changed and found other "
         "bytes (storage corruption, or a copy that kept the old timestamps); the version records it as replaced.",
         sop=((OWN, "the tool's own: the storage keeping what it was given"),),
         remedy='Check the storage and the copy the file came from; the version keeps the new content.'),
)
# Rules whose findings come from what a run saw (its recorded problems), not from the files and headers.
RUN_RULES = {"file.silent_change": "silent_change"}
_SEVERITY = {r.id: r.severity for r in RULES}


@functools.cache
def edition() -> str:
    """Which rules a version's findings come from: the release and a digest of the code that decides them (this
    package and the classification of paths). Stored with each version's findings (validations.rules): findings
    of other rules (a release before an upgrade, which knew fewer rules) are not shown as today's; the version is
    checked again, from the cached facts. Reading the ~20 sources takes about a millisecond."""
    from .. import __version__

    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    try:
        for path in sorted([*here.glob("*.py"), here.parent / "classify.py"]):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    except OSError:  # (installed without its sources: the release alone tells the rules apart)
        return __version__
    return f"{__version__}+{digest.hexdigest()[:12]}"
