"""The field's file formats as validation reads them: unusual but real-world WFDB headers, CSV tables and text files,
from outside (a site's folder checked as a whole) and as bytes (readers.parse_facts)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import re
import sys
from pathlib import Path

import polars as pl
import pytest
import sitegen
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sitegen import scan_current, sessions_of

from chorus_batch.sources import LocalSource
from chorus_batch.validate import check, extract_facts, facts_needed, readers
from chorus_batch.validate.rules import KIND_DICOM, KIND_MAPPING, KIND_PERSON, KIND_REGISTRY, KIND_WFDB
from chorus_batch.validate.site import _FACT_DTYPES

# wfdb 4.x (the writers sitegen uses) warns about pandas deprecations.
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")

P0 = sitegen.person_ids(1)[0]
S0 = sessions_of(P0, 0)
SINGLE = f"{P0}/Waveforms/Telemetry/{S0['single']}/{S0['single']}"  # + .hea / .dat


def findings(root: Path) -> list[tuple[str, str, str]]:
    current = scan_current(root)
    facts = extract_facts(LocalSource(root), facts_needed(current), workers=1)
    return check(current, facts).select("rule", "srcfile", "message").rows()


def set_record_line(root: Path, **fields: str) -> None:
    """The single record's header with its record line's `fields` (sig_len) replaced."""
    path = root / f"{SINGLE}.hea"
    lines = path.read_text().splitlines()
    name, n_sig, fs, sig_len, *rest = lines[0].split()
    lines[0] = " ".join([name, n_sig, fs, fields.get("sig_len", sig_len), *rest])
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- a header line WFDB cannot read


def test_a_wfdb_line_not_read_is_named_and_quoted_and_a_folder_in_a_signal_file_name_is_told(clean):
    # wfdb says only "invalid syntax in signal line": of a header of many signals the site could not tell which, nor
    # why a signal file named with its folder (sub/x.dat, ../other/x.dat) is no WFDB header
    path = clean / f"{SINGLE}.hea"
    lines = path.read_text().splitlines()
    lines[2] = "sub/" + lines[2]
    path.write_text("\n".join(lines) + "\n")
    out = findings(clean)
    assert [(r, s) for r, s, _ in out] == [("wfdb.bad_header", f"{SINGLE}.hea")], out
    assert f"invalid syntax in signal line 2: '{lines[2]}'" in out[0][2]
    assert "from the header's own folder, by a name without a folder" in out[0][2]
    # the record line too, quoted, with no word of folders
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec ord 2 250 10\n"))
    assert facts == {"error": "invalid header syntax (invalid syntax in record line: 'rec ord 2 250 10')"}, facts


@pytest.mark.parametrize("line, what, read, hint", [
    # year first: wfdb's expression takes a part of it ('2020/01', '2020': told as if the year were read)
    ("rec 0 250 1000 10:00:00.5 2020/01/02", "date", "2020/01/02", "a date written year first; WFDB writes it day "
                                                                   "first, 02/01/2020"),
    ("rec 0 250 1000 10:00:00 2020-01-02", "date", "2020-01-02", "WFDB writes it day first, 02/01/2020"),
    ("rec 0 250 1000 10:00:00 2.1.2020", "date", "2.1.2020", "WFDB writes the date with slashes, 02/01/2020"),
    ("rec 0 250 1000 10:00:00 02/01/20", "date", "02/01/20", "the year is written with four digits"),
    # a date without a time: wfdb took its day for a base time ("02") and quoted '/01/2020' as the date
    ("rec 0 250 1000 02/01/2020", "time", "02/01/2020", "WFDB reads a base date only after a base time"),
    ("rec 0 250 1000 2020-01-02", "time", "2020-01-02", "(HH:MM:SS 02/01/2020)"),
    ("rec 0 250 1000 10:00:00 31/02/2020", "date", "31/02/2020", ""),
    ("rec 0 250 1000 25:00:00 01/01/2020", "time", "25:00:00", ""),
    # a time without its seconds: the WFDB format writes HH:MM:SS, and its readers read '10:00' as minutes and seconds,
    # 00:10:00 (v8: read so without a word, a session begun at 10 o'clock dated 9 h 50 min early)
    ("rec 0 250 1000 10:00 01/01/2020", "time", "10:00", "as minutes and seconds after midnight (00:10:00), not as "
                                                         "hours; write all three, 10:00:00 for a recording begun at 10:00"),
    ("rec 0 250 1000 10:00", "time", "10:00", "10:00:00 for a recording begun at 10:00"),
    ("rec 0 250 1000 7", "time", "7", "as seconds after midnight (00:00:07)"),
])
def test_a_base_date_or_time_wfdb_does_not_read_is_named_with_the_form_wfdb_writes(line, what, read, hint):
    # wfdb's strptime said "time data '2020/01' does not match format '%d/%m/%Y'": no field named, a part of the
    # date quoted, and nothing of how to write it
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(line.encode() + b"\n"))
    assert facts["error"].startswith(f"invalid header syntax (the record line's base {what} is not a {what} WFDB "), facts
    assert f"the line has '{read}'" in facts["error"] and f": '{line}')" in facts["error"], facts
    assert hint in facts["error"], facts
    assert ("DD/MM/YYYY" if what == "date" else "HH:MM:SS") in facts["error"]
    assert "base_date" in readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec 0 250 1000 10:00:00.5 02/01/2020\n"))


def test_a_signal_line_of_0_samples_per_frame_is_told_as_wfdb_cannot_read_it():
    # '16x0' was read (its .dat told "implies 0 bytes (... x 0 samples per frame)", its rate 0 Hz against the
    # mapping's), and wfdb fails to read the record ("cannot reshape array of size 0")
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec 1 250 100\nrec.dat 16x0 200/mV 16 0 0 0 0 II\n"))
    assert facts["error"] == ("invalid header syntax (signal line 1 gives 0 samples per frame ('16x0'), which wfdb "
                              "cannot read: write the format alone (16: 1 sample a frame) or the samples each frame "
                              "holds: 'rec.dat 16x0 200/mV 16 0 0 0 0 II')"), facts
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec 1 250 100\nrec.dat 16x2 200/mV 16 0 0 0 0 II\n"))
    assert facts["signals"][0]["samps_per_frame"] == 2, facts


def test_a_multi_segment_header_of_0_segments_is_a_bad_header():
    # the WFDB header format: "the number of segments must be greater than zero"; wfdb reads the header and fails on
    # the record ("list index out of range"); it was read as a record of no segments, without a word
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec/0 2 125 0\n"))
    assert facts["error"].startswith("the record line gives 0 segments ('rec/0'): a multi-segment header lists at "
                                     "least one segment"), facts
    assert facts["error"].endswith(": 'rec/0 2 125 0'"), facts
    assert readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec/1 2 125 10\nrec_0001 10\n"))["segments"] == [
        {"name": "rec_0001", "length": 10}]


@pytest.mark.parametrize("line, told", [
    # wfdb's expression read 1 Hz and no number of samples ('e3 1000' left unread), without a word; the WFDB library
    # reads 1e3 as 1000 Hz
    ("rec 1 1e3 1000", "the record line is read only up to 'rec 1 1': 'e3 1000' is not read"),
    ("rec 1 250 1000 10:00:00 01/01/2020 extra",
     "the record line is read only up to 'rec 1 250 1000 10:00:00 01/01/2020': 'extra' is not read"),
    # no frequency read, a negative one taken for a counter frequency: the default 250 Hz, without a word
    ("rec 1 -500 1000", "the record line's sampling frequency '-500' is not a positive number of Hz"),
    # a frequency with two points: wfdb's expression read 250.5 Hz and a counter frequency of .5 (no '/'), without a word
    ("rec 1 250.5.5 1000", "the record line's sampling frequency '250.5.5' is not a number"),
    # a point alone: was Python's "could not convert string to float: '.'"
    ("rec 1 . 1000", "the record line's sampling frequency '.' is not a number"),
])
def test_a_record_line_wfdb_reads_only_in_part_or_without_its_frequency_is_told(line, told):
    data = line.encode() + b"\n100.dat 16\n"
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(data))
    assert facts["error"].startswith(f"invalid header syntax ({told}"), facts
    assert "the sampling frequency (a decimal number of Hz: 1000, not 1e3)" in facts["error"]
    assert facts["error"].endswith(f": '{line}')"), facts
    # a base counter before the counter frequency: wfdb reads its '/360' as the base date, quoted so (it was '')
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec 1 250(0)/360 1000\n100.dat 16\n"))
    assert "the record line's base date is not a date WFDB reads" in facts["error"], facts
    assert "the line has '/360'" in facts["error"], facts
    # a counter frequency and base counter, as WFDB writes them, are read as before
    read = readers.parse_facts(KIND_WFDB, io.BytesIO(b"rec 1 250/1000(0) 1000 10:00:00 01/01/2020\n100.dat 16\n"))
    assert (read["fs"], read["sig_len"], read["base_date"]) == (250.0, 1000, "2020-01-01"), read


def test_a_signal_file_named_with_other_characters_than_ascii_is_told_as_the_header_names_it(clean):
    # wfdb reads a header as ASCII: "réc.dat" is looked for as "rc.dat". The findings said the header named rc.dat,
    # not there, and that no header named réc.dat, which the site sees named in it
    header, dat = clean / f"{SINGLE}.hea", clean / f"{SINGLE}.dat"
    stem = dat.stem
    header.write_text(header.read_text().replace(f"{stem}.dat", f"{stem}é.dat"), encoding="utf-8")
    dat.rename(dat.with_name(f"{stem}é.dat"))
    out = [(r, s, m) for r, s, m in findings(clean) if not r.startswith("registry.")]
    assert [(r, s) for r, s, _ in out] == [("wfdb.missing_dat", f"{SINGLE}.hea")], out
    assert f"signal file {stem}é.dat named in this header is read by wfdb as {stem}.dat" in out[0][2]
    assert "with ASCII characters only" in out[0][2]


def test_a_segment_named_with_other_characters_than_ascii_is_told_as_the_header_names_it(clean):
    # as a signal file's (above): "réc_0002" is looked for as "rc_0002.hea"; the finding named only the name wfdb reads
    multi = sessions_of(P0, 0)["multi"]
    folder = clean / P0 / "Waveforms" / "Telemetry" / multi
    master = folder / f"{multi}.hea"
    master.write_text(master.read_text().replace(f"{multi}_0002 ", f"{multi}é_0002 "), encoding="utf-8")
    for part in folder.glob(f"{multi}_0002.*"):
        part.rename(part.with_name(part.name.replace(f"{multi}_0002", f"{multi}é_0002")))
    missing = [m for r, _, m in findings(clean) if r == "wfdb.missing_segment"]
    assert len(missing) == 1 and missing[0].startswith(
        f"segment {multi}é_0002 listed in this header is read by wfdb as {multi}_0002 "), missing
    assert "with ASCII characters only" in missing[0]


# ----------------------------------------------------------------------------- WFDB counts beyond 64 bits


def test_a_wfdb_count_beyond_64_bits_is_a_bad_header_not_a_header_without_length(clean):
    # The facts' columns are Int64: a sig_len of 10^20 was decoded as none, the signal file's size went unchecked and
    # the site passed
    set_record_line(clean, sig_len="99999999999999999999")
    out = findings(clean)
    assert [(r, s) for r, s, _ in out] == [("wfdb.bad_header", f"{SINGLE}.hea")], out
    assert "number of samples 99999999999999999999 is larger than any WFDB reader takes" in out[0][2]


def test_a_signal_files_expected_size_does_not_wrap_around_64_bits(clean):
    # 2^62 samples x 2 signals x 2 bytes is 2^64: computed in 64 bits it wrapped to "implies 0"
    set_record_line(clean, sig_len=str(1 << 62))
    out = findings(clean)
    assert [(r, s) for r, s, _ in out] == [("wfdb.dat_size", f"{SINGLE}.dat")], out
    assert f"implies {1 << 64}" in out[0][2]


_HEADER_LINE = st.one_of(
    st.text(alphabet=st.sampled_from("0123456789 \t/:.()+x~-_#abcXYZ\r\n"), max_size=80),
    st.builds(lambda n, big: f"r {n} 250 {big}", st.integers(1, 3), st.integers(0, 1 << 80)),
    st.builds(lambda f, spf, off: f"r.dat {f}x{spf}+{off} 200/mV 16 0 0 0 0 II", st.sampled_from(["16", "212", "8"]),
              st.integers(1, 1 << 70), st.integers(0, 1 << 70)),
    st.builds(lambda n: f"r_0001 {n}", st.integers(0, 1 << 70)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_HEADER_LINE, max_size=5).map("\n".join))
def test_any_wfdb_header_gives_facts_the_manifest_holds_whole(text):
    """Any header text gives facts or an error, never a traceback, and facts whose every number the facts' columns
    (Int64) hold: a number they cannot hold would be decoded as none, and the rules that read it would be silent."""
    facts = readers.parse_facts(KIND_WFDB, io.BytesIO(text.encode()))
    assert isinstance(facts, dict)
    if "error" in facts:
        assert "Traceback" not in facts["error"] and "cannot parse the file" not in facts["error"], facts
        return
    decoded = pl.Series([readers.facts_text(facts)]).str.json_decode(_FACT_DTYPES[KIND_WFDB]).struct.unnest()
    assert decoded["sig_len"].to_list() == [facts["sig_len"]]
    assert decoded["n_sig"].to_list() == [facts["n_sig"]]
    for column, key, names in (("signals", "signals", ("samps_per_frame", "byte_offset")),
                               ("segments", "segments", ("length",))):
        kept = decoded[column].to_list()[0]
        for name in names:
            assert [row[name] for row in kept or []] == [row[name] for row in facts[key] or []]
    json.loads(readers.facts_text(facts))


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _JSON_VALUES, max_size=6))
def test_facts_text_is_the_compact_json_text_of_the_facts(facts):
    """The text the cache keeps (readers.facts_text, by json's C encoder built once) is json.dumps's compact text, key
    order, non-ASCII escapes, floats, NaN and all: facts are keyed by MD5 for good, and the same facts must give the
    same text whichever version of the tool wrote them."""
    assert readers.facts_text(facts) == json.dumps(facts, separators=(",", ":"))


# ----------------------------------------------------------------------------- compressed content under a file's name

DCM = f"{P0}/Images/CT/{sitegen.accession_of(0)}/{sitegen.series_uid(P0, sitegen.person_day(0), 1)}/000.dcm"


@pytest.mark.parametrize(("rel", "rule"), [
    ("OMOP/person.csv", "omop.unreadable"),
    ("Metadata/READINESS.md", "metadata.unreadable"),
    ("Metadata/Telemetry_mapping.csv", "metadata.unreadable"),
    (f"{SINGLE}.hea", "wfdb.bad_header"),
    (DCM, "dicom.unreadable"),
])
@pytest.mark.parametrize(("compress", "what"), [(gzip.compress, "gzip"), (bz2.compress, "bzip2"),
                                                (lzma.compress, "xz")])
def test_a_file_compressed_under_its_own_name_is_told_to_be_decompressed(clean, rel, rule, compress, what):
    # Told before as what the compressed bytes looked like: "the file holds NUL bytes ... copy or export the file
    # again" (a table), "control characters (binary data?); write it with a WFDB writer", "not a DICOM Part 10 file
    # ...; re-export the image": remedies that would not help
    path = clean / rel
    path.write_bytes(compress(path.read_bytes()))
    out = [(r, s, m) for r, s, m in findings(clean) if s == rel]
    assert [(r, s) for r, s, _ in out] == [(rule, rel)], out
    message = out[0][2]
    assert f"the file holds {what}-compressed data, not the file itself: decompress it" in message, message
    assert message.endswith("keep the decompressed file under this name"), message  # the one remedy
    assert not re.search(r"NUL|binary|copy|export|writer", message), message


def test_a_dicom_preamble_that_begins_as_a_compressor_would_is_still_read_as_dicom(clean):
    # the 128-byte preamble is free (a TIFF header, a vendor's bytes): only a file without 'DICM' is sniffed
    path = clean / DCM
    data = path.read_bytes()
    path.write_bytes(b"\x1f\x8b" + data[2:])
    assert [f for f in findings(clean) if f[1] == DCM] == []


# ----------------------------------------------------------------------------- RECORDS files


@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_a_records_file_with_a_byte_order_mark_lists_its_first_record(clean, line_end):
    # A RECORDS file saved by a Windows editor: its first name was read with the mark, "\ufeff<record>", a record not
    # on the site (records.absent) while the record it names went unlisted (records.unlisted)
    folder = SINGLE.rsplit("/", 1)[0]
    records = f"{S0['single']}{line_end}"
    (clean / folder / "RECORDS").write_text(records, newline="")
    without = findings(clean)
    assert {r for r, _, _ in without} <= {"layout.superseded"}, without  # (the record is listed: nothing else)
    (clean / folder / "RECORDS").write_bytes(b"\xef\xbb\xbf" + records.encode())
    assert findings(clean) == without


# ----------------------------------------------------------------------------- text files left as zeros


@pytest.mark.parametrize(("rel", "rule", "size"), [
    (f"{SINGLE}.hea", "wfdb.bad_header", 4096),
    ("Metadata/READINESS.md", "metadata.unreadable", 8192),
    (f"{SINGLE.rsplit('/', 1)[0]}/RECORDS", "records.unreadable", 200),
])
def test_a_text_file_ending_in_the_zeros_of_an_unfinished_copy_is_told_to_be_copied_again(clean, rel, rule, size):
    # The CSV readers told them so; the WFDB header, Markdown and RECORDS readers said "the file holds control
    # characters (binary data?)", and a header was sent to "write it with a WFDB writer"
    path = clean / rel
    path.write_bytes((path.read_bytes() if path.exists() else S0["single"].encode() + b"\n")[:30])
    with path.open("r+b") as f:
        f.truncate(size)  # (a copy that reserved the file's size and stopped writing)
    out = [(r, m) for r, s, m in findings(clean) if s == rel and r != "layout.superseded"]  # (RECORDS: v1.0's)
    assert [r for r, _ in out] == [rule], out
    assert "the file holds NUL bytes" in out[0][1] and out[0][1].endswith("copy or export the file again"), out


def test_a_control_character_in_a_text_file_is_named_with_its_line(clean):
    # A header saved by an old DOS or Windows tool ends in Ctrl-Z (its end-of-file mark), after Windows line ends: it
    # was "the file holds control characters (binary data?); write it with a WFDB writer", saying neither which nor where
    path = clean / f"{SINGLE}.hea"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n") + b"\x1a")
    lines = path.read_bytes().count(b"\n") + 1
    out = [(r, m) for r, s, m in findings(clean) if s == f"{SINGLE}.hea"]
    assert [r for r, _ in out] == ["wfdb.bad_header"], out
    assert f"the first, on line {lines}, U+001A (Ctrl-Z, the end-of-file mark old DOS and Windows tools" in out[0][1], out
    assert "remove it" in out[0][1], out
    # without it, the Windows line ends read as before
    path.write_bytes(path.read_bytes()[:-1])
    assert not [m for _, s, m in findings(clean) if s == f"{SINGLE}.hea"]
    # the same of a RECORDS file, another control character named so
    facts = readers.parse_facts(readers.KIND_RECORDS, io.BytesIO(b"100\n101\x1b\n"))
    assert facts["error"].endswith("the first, on line 2, U+001B (Escape)"), facts


@pytest.mark.parametrize("table", ["person", "visit_occurrence"])
def test_a_nul_byte_in_a_row_that_parses_is_told_as_one_not_read_into_an_id(clean, table):
    # pyarrow reads a NUL byte as a character: a person id "<id>\0" was no person of person.csv, and its folder's
    # person told as not in the table (a finding quoting the NUL), not the file as damaged
    path = clean / "OMOP" / f"{table}.csv"
    lines = path.read_bytes().split(b"\n")
    first = lines[1].split(b",")
    lines[1] = b",".join([first[0] + b"\0", *first[1:]])
    path.write_bytes(b"\n".join(lines))
    out = [(r, m) for r, s, m in findings(clean) if s == f"OMOP/{table}.csv"]
    assert len(out) == 1 and "the file holds NUL bytes" in out[0][1], out
    assert out[0][1].endswith("copy or export the file again"), out
    assert not [m for _, _, m in findings(clean) if "\0" in m]


# ----------------------------------------------------------------------------- names wfdb reads otherwise


def test_a_record_named_in_other_characters_than_ascii_is_told_how_wfdb_reads_it(clean):
    # "the header's record name is rcord but the file is récord.hea: make them equal": the header says récord, and
    # nothing the site could make equal; wfdb reads a header as ASCII, dropping the rest
    folder = clean / SINGLE.rsplit("/", 1)[0]
    header = (clean / f"{SINGLE}.hea").read_text().splitlines()
    header[0] = "récord " + header[0].split(" ", 1)[1]
    (clean / f"{SINGLE}.hea").unlink()
    (folder / "récord.hea").write_text("\n".join(header) + "\n", encoding="utf-8")
    rel = f"{SINGLE.rsplit('/', 1)[0]}/récord.hea"
    told = [m for r, s, m in findings(clean) if r == "wfdb.record_name"]
    assert told == [("the header's record name is récord, which wfdb reads as rcord (a WFDB header is ASCII text: other "
                     "characters are dropped), so it is not the file's récord.hea: name the record and its files in "
                     "ASCII (the procedure names them after the integer session id)")], (rel, told)


# ----------------------------------------------------------------------------- a CSV header row as export tools write it

@pytest.mark.parametrize(("data", "columns", "delimiter", "person_id"), [
    # a delimiter inside a quoted name is part of it (was: comma-delimited, 'person_id;"gender' and 'as told')
    (b'"person_id";"gender, as told"\n1;8507\n', ["person_id", "gender, as told"], ";", None),
    (b'person_id\t"a, b, c"\n1\t2\n', ["person_id", "a, b, c"], "\t", None),
    (b'"person_id","a;b;c"\n1,2\n', ["person_id", "a;b;c"], ",", "1"),
    # a second byte-order mark (a tool that adds one to a file that had one) is not part of the first name
    (b"\xef\xbb\xbf\xef\xbb\xbfperson_id,gender_concept_id\n1,8507\n", ["person_id", "gender_concept_id"], ",", "1"),
    # a line end inside a quoted name is part of it, read as a space (was: the header row cut there, 'gender')
    (b'person_id,"gender\r\nconcept_id"\r\n1,8507\r\n', ["person_id", "gender concept_id"], ",", "1"),
    (b'"person\n_id",gender_concept_id\n1,8507\n', ["person _id", "gender_concept_id"], ",", None),
    # ... in a header row without rows nor newline: an empty table (was: pyarrow's "Empty CSV file or block")
    (b'person_id,"gender\nconcept_id"', ["person_id", "gender concept_id"], ",", ""),
])
def test_a_header_row_is_read_as_a_csv_record(data, columns, delimiter, person_id):
    facts = readers.parse_facts(KIND_PERSON, io.BytesIO(data))
    assert facts == {"columns": columns, "delimiter": delimiter, "person_id": person_id, "repeated_person_id": [],
                     "n_repeated_person_id": 0}


def test_a_registry_header_with_a_line_end_in_a_quoted_name_is_read_with_its_rows():
    """The header row was cut at the line end inside the quoted name ('trg'): the registry was told to lack
    trg_file, and none of its rows was read."""
    data = (b'file_id,proc_id,person_id,group_id,visit_id,datetime,src_file,"trg\r\n_file"\r\n'
            b'1,7,101,,9,2020-01-01 00:00:00,a.hea,101/Waveforms/a.hea\r\n')
    facts = readers.parse_facts(KIND_REGISTRY, io.BytesIO(data))
    assert facts["columns"][-1] == "trg_file" and facts["trg_file"] == ["101/Waveforms/a.hea"], facts


@pytest.mark.parametrize("data", [b'"person_id,gender\n1,2\n', b'person_id,"gender\n1,2\n' + b"3,4\n" * 100_000])
def test_a_quote_left_open_in_the_header_row_is_told(data):
    """A header row whose quote is never closed was read as one name of a tab-delimited header ('person_id,"gender'),
    or (the quote first) as comma-delimited names up to the first line end."""
    facts = readers.parse_facts(KIND_PERSON, io.BytesIO(data))
    assert facts == {"error": "the header row opens a quote that is not closed (a column name's closing quote is "
                              "missing): close it, or write the names without quotes"}


@pytest.mark.parametrize("hint", [b"sep=,", b"sep=;", b"sep=\t", b"sep=|"])
@pytest.mark.parametrize("kind", [KIND_MAPPING, KIND_REGISTRY])
def test_a_spreadsheet_delimiter_hint_before_a_mapping_or_registry_header_is_told(hint, kind):
    facts = readers.parse_facts(kind, io.BytesIO(hint + b"\r\nsignal_id,units\r\n1,mV\r\n"))
    assert facts == {"error": readers.SEP_LINE_REASON}


# ----------------------------------------------------------------------------- every reader, fed damaged files


def _valid_files() -> dict[str, bytes]:
    """A small valid file of each kind a reader reads (as sitegen writes a clean site's)."""
    from datetime import datetime

    from chorus_batch.validate import rules

    tables = ((rules.KIND_OMOP, "condition_occurrence"), (rules.KIND_PERSON, "person"),
              (rules.KIND_VISITS, "visit_occurrence"), (rules.KIND_PROCEDURES, "procedure_occurrence"))
    omop = {kind: sitegen.csv_text(sitegen.OMOP_COLUMNS[table], sitegen.omop_rows(table, ["101", "102"])).encode()
            for kind, table in tables}
    return {
        **omop,
        rules.KIND_WFDB: b"900003 2 256 2560 12:00:00 02/01/2024\n900003.dat 16 200/uV 16 0 0 0 0 Fp1\n"
                         b"900003.dat 16 200/uV 16 0 0 0 0 Fp2\n# a comment\n",
        rules.KIND_RECORDS: b"900003\n900004/900004\n",
        rules.KIND_EDF: sitegen.edf_bytes(datetime(2024, 1, 2, 3, 4, 5), seconds=2, signals=[("EEG Fp1", "uV", 8)]),
        rules.KIND_DICOM: sitegen.dicom_bytes(person_id="101", series=1, instance=1, study_date="20240102",
                                              study_time="120000"),
        rules.KIND_MARKDOWN: b"# Readiness\n\n| variable | answer |\n|---|---|\n| site | yes |\n",
        rules.KIND_MAPPING: sitegen.EEG_MAPPING.encode(),
        rules.KIND_REGISTRY: sitegen.csv_text(list(rules.REGISTRY_COLUMNS), [[1, 2, "101", 3, 4, "2024-01-02 12:00:00",
                                              "a.dcm", "101/Images/CT/1/2/000.dcm"]]).encode(),
        rules.KIND_LINKS: sitegen.csv_text(list(rules.LINK_COLUMNS), [[9000, "900003"]]).encode(),
    }


VALID_FILES = _valid_files()
_DIGITS = re.compile(rb"\d+")
_HUGE = [b"99999999999999999999999", b"2147483648", b"9223372036854775808", b"-1", b"-2147483648", b"1e308", b"nan"]


def _damage(data: bytes, op: str, at: int, some: bytes) -> bytes:
    at = at % (len(data) + 1)
    numbers = list(_DIGITS.finditer(data[:4096]))
    number = numbers[at % len(numbers)] if numbers else None
    return {
        "cut": lambda: data[:at],
        "flip": lambda: data[:at] + bytes([data[at] ^ (some[0] or 1)]) + data[at + 1:] if at < len(data) else data,
        "insert": lambda: data[:at] + some + data[at:],
        "nul": lambda: data[:at] + b"\0" * len(some) + data[at:],
        "crlf": lambda: data.replace(b"\n", b"\r\n"),
        "cr": lambda: data.replace(b"\n", b"\r"),
        "bom": lambda: [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"][some[0] % 3] + data,
        "empty": lambda: b"",
        "utf16": lambda: data.decode("latin-1").encode("utf-16"),
        "latin1": lambda: data[:at] + "é".encode("latin-1") + data[at:],
        # a number of the text made huge, negative or no integer; a binary length (DICOM's, EDF's) of 2 GiB
        "number": lambda: data[:number.start()] + _HUGE[some[0] % len(_HUGE)] + data[number.end():] if number else data,
        "length": lambda: data[:at] + (0x7FFFFFF0).to_bytes(4, "little") + data[at + 4:],
    }[op]()


# Where the DICOM file's Transfer Syntax UID's VR and (0002,0001)'s lie: a flip there gave "cannot parse the file
# (NotImplementedError: Unknown Value Representation 'UK' ...)", "(BytesLengthException: ...)" (dicom.v11)
_DICOM_VR = {tag: VALID_FILES[KIND_DICOM].index(tag) + 5 for tag in (b"\x02\x00\x10\x00UI", b"\x02\x00\x01\x00OB")}


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(kind=KIND_DICOM, edits=[("flip", _DICOM_VR[b"\x02\x00\x10\x00UI"], b"\x02")])  # UI -> UK
@example(kind=KIND_DICOM, edits=[("flip", _DICOM_VR[b"\x02\x00\x01\x00OB"], b" ")])  # OB -> Ob
@given(kind=st.sampled_from(sorted(VALID_FILES)), edits=st.lists(st.tuples(
    st.sampled_from(["cut", "flip", "insert", "nul", "crlf", "cr", "bom", "empty", "utf16", "latin1", "number",
                     "length"]),
    st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)), min_size=1, max_size=3))
def test_every_reader_tells_damage_as_what_is_wrong(kind, edits):
    """Any damage to a valid file (cut at any byte, bytes flipped or inserted, NULs, other line ends, a byte-order
    mark, another encoding, a huge or negative number, a 2 GiB length in a 1 KiB file) gives facts or an error that
    says what is wrong: never an exception, nor the catch-all "cannot parse the file (<exception>)", which tells a
    site only that the reader did not foresee it."""
    data = VALID_FILES[kind]
    for edit in edits:
        data = _damage(data, *edit)
    facts = readers.parse_facts(kind, io.BytesIO(data))
    assert isinstance(facts, dict)
    json.loads(readers.facts_text(facts))
    if "error" in facts:
        assert facts["error"] and not facts["error"].startswith("cannot parse the file ("), (kind, data[:300], facts)


@pytest.mark.parametrize("kind", sorted(VALID_FILES))
def test_every_reader_tells_a_file_cut_at_any_byte_as_what_is_wrong(kind):
    """An interrupted copy ends anywhere: each cut of a valid file gives facts or an error that says what is wrong."""
    data = VALID_FILES[kind]
    caught = {}
    for end in range(len(data) + 1):
        facts = readers.parse_facts(kind, io.BytesIO(data[:end]))
        if facts.get("error", "").startswith("cannot parse the file ("):
            caught.setdefault(facts["error"][:80], end)
    assert not caught, caught


def test_person_ids_are_gathered_without_holding_each_row_as_python_values():
    # person.csv of 30M ids (259 MB) held 5.2 GiB as a dict of Python tuples, read batch by batch (3.4 GiB now: the
    # facts' list itself); here, by tracemalloc, the reader's peak of Python memory stays near the list it returns
    import tracemalloc

    rows = b"".join(b" %d \n" % (i // 2) for i in range(400_000))  # each id twice, padded
    data = b"person_id\n\n" + rows + b"7\n"
    readers.parse_facts(KIND_PERSON, io.BytesIO(b"person_id\n1\n"))  # (pyarrow imported, outside the measure)
    tracemalloc.start()
    try:
        facts = readers.parse_facts(KIND_PERSON, io.BytesIO(data))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ids = facts["person_id"].split("\n")  # (omop_person.v9: one text, a line per id)
    assert ids[:3] == ["0", "1", "2"] and len(ids) == 200_000  # first appearance, once
    # the peak stays below what the ids alone held as Python strings in a list (v8's facts: 12 MB here; v9's text
    # 1.3 MB, its peak 8.4 MB while the text is joined from Arrow's buffer)
    as_values = sys.getsizeof(ids) + sum(map(sys.getsizeof, ids))
    assert held < as_values / 5 and peak < as_values, (peak, held, as_values)


def test_a_records_file_of_one_endless_line_is_told_not_kept_as_a_record_name(clean):
    # 100 MB of text without a line end was one record's name: kept whole in the facts, quoted whole in records.absent
    (clean / f"{P0}/Waveforms/RECORDS").write_bytes(b"900003\n" + b"a" * (1 << 20))
    out = findings(clean)
    told = [m for r, s, m in out if s == f"{P0}/Waveforms/RECORDS"]
    assert told and all(len(m) < 1000 for m in told), [m[:200] for m in told]
    assert any("line 2 is 1,048,576 characters long, more than a record name" in m for m in told), told
