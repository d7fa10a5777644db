"""Path parsing: every layout, leading zeros, and clear reasons for paths that fit no pattern."""

from __future__ import annotations

import polars as pl
import pytest

from chorus_batch.classify import build_patterns, classify, record_key
from chorus_batch.errors import ConfigError


def one(path: str, patterns=None) -> dict:
    frame = classify(pl.DataFrame({"srcfile": [path]}), *([patterns] if patterns else []))
    return frame.with_columns(record_key=record_key()).row(0, named=True)


def test_omop_and_metadata_have_no_person():
    row = one("OMOP/person.csv")
    assert (row["modality"], row["person_id"], row["session_id"], row["parse_error"]) == ("OMOP", None, "person.csv", None)
    assert one("Metadata/site.json")["modality"] == "Metadata"


def test_flat_waveform_keeps_leading_zeros_and_parses_start_and_duration():
    row = one("000123/Waveforms/000123_20200131_235959_3600.dat")
    assert row["person_id"] == "000123"
    assert row["session_id"] == "000123_20200131_235959"
    assert (row["start_date"], row["start_time"], row["duration_s"]) == ("2020-01-31", "23:59:59", 3600.0)
    assert row["parse_error"] is None


def test_flat_waveform_in_session_folder_with_segment_belongs_to_the_folder_record():
    a = one("000123/Waveforms/000123_20200101_100000/000123_20200101_100000_1800_0001.dat")
    b = one("000123/Waveforms/000123_20200101_100000/000123_20200101_103000_1800_0002.dat")
    assert a["segment"] == "0001" and b["segment"] == "0002"
    assert a["record_key"] == b["record_key"] == "Waveforms|000123|000123_20200101_100000"
    assert b["start_time"] == "10:30:00"


def test_a_current_session_file_takes_every_field_from_the_current_layout_alone():
    """Of the patterns a path hits, the first gives every field: the current layout names a file by its session id
    (Waveform File Format v2.1; Data-Upload-Update's 901234_0001.dat a WFDB segment file), so nothing after the id is
    a duration. Was: each field from the first pattern that had it, so the flat naming, hit too, read a segment file
    <person>_<YYYYMMDD>_<HHMMSS>_0001.dat as 1 s long (and not where the session id was spelled another way)."""
    for name in ("000123_20200101_100000_0001.dat", "000123_20200101_100000_0001.hea",
                 "000123_20200101_100000_1800_0001.dat", "000123_20200101_100000.hea"):
        row = one(f"000123/Waveforms/Telemetry/000123_20200101_100000/{name}")
        assert (row["layout"], row["category"], row["session_id"], row["parse_error"]) == (
            "current", "Telemetry", "000123_20200101_100000", None), name
        # the start from the session's stamp, as for a session spelled any way
        assert (row["duration_s"], row["segment"], row["start_date"], row["start_time"]) == (
            None, None, "2020-01-01", "10:00:00"), name
    other = one("000123/Waveforms/Telemetry/999_20200101_100000/999_20200101_100000_0001.dat")
    assert (other["layout"], other["duration_s"], other["segment"]) == ("current", None, None)
    # lower-case v2.0 folders alike
    row = one("000123/waveforms/eeg/000123_20200101_100000/000123_20200101_100000_3600.edf")
    assert (row["layout"], row["category"], row["duration_s"]) == ("waveforms-v2.0", "EEG", None)


def test_flat_waveforms_moved_into_telemetry_or_eeg_are_a_record_each_of_that_category():
    """A site moving to v2.1 puts its flat files in Telemetry/ or EEG/ first: the folder was taken for a session, so
    every EEG recording of the person was one record named "EEG" (one registry group, one proc_id), of no category."""
    a = one("000123/Waveforms/EEG/000123_20200101_100000_3600.edf")
    b = one("000123/Waveforms/EEG/000123_20200102_100000_3600.edf")
    t = one("000123/Waveforms/telemetry/000123_20200101_100000_3600_0001.dat")
    assert (a["category"], a["session_id"], a["layout"], a["parse_error"]) == (
        "EEG", "000123_20200101_100000", "waveforms-flat", None)
    assert a["record_key"] == "Waveforms|000123|EEG/000123_20200101_100000" != b["record_key"]
    assert (t["category"], t["record_key"], t["segment"]) == (
        "Telemetry", "Waveforms|000123|Telemetry/000123_20200101_100000", "0001")
    # (a session folder of stamps in Telemetry/ stays today's layout, with the folder as its session)
    assert one("000123/Waveforms/Telemetry/S1/000123_20200101_100000_3600.dat")["record_key"] == \
        "Waveforms|000123|Telemetry/S1"


def test_waveforms_folder_is_matched_case_insensitively():
    assert one("7/WAVEFORMS/7_20200101_100000_60.csv")["parse_error"] is None
    assert one("7/waveforms/7_20200101_100000_60.csv")["modality"] == "Waveforms"


@pytest.mark.parametrize("name", ["S01.hea", "S01.dat", "S01n.csv", "S01_0001.dat", "RECORDS"])
def test_sop_v2_session_files_form_one_record(name):
    row = one(f"0042/Waveforms/S01/{name}")
    assert row["parse_error"] is None
    assert row["record_key"] == "Waveforms|0042|S01"


def test_sop_v2_session_named_with_a_stamp_gives_the_start():
    row = one("0042/Waveforms/0042_20210304_050607/0042_20210304_050607.hea")
    assert (row["start_date"], row["start_time"]) == ("2021-03-04", "05:06:07")


@pytest.mark.parametrize("category, name", [("Telemetry", "901234.hea"), ("Telemetry", "901234_layout.hea"),
                                            ("Telemetry", "901234_0001.dat"), ("Telemetry", "901234n.csv"),
                                            ("EEG", "901234.edf"), ("telemetry", "901234.hea"), ("eeg", "901234.hea")])
def test_current_waveform_layout_records_the_session_under_its_category(category, name):
    row = one(f"10001001/Waveforms/{category}/901234/{name}")
    # v2.1 spells the folders Telemetry and EEG; lower case is v2.0's spelling: accepted, and named as such
    assert row["parse_error"] is None and row["layout"] == ("current" if category in ("Telemetry", "EEG")
                                                            else "waveforms-v2.0")
    assert (row["modality"], row["person_id"], row["session_id"]) == ("Waveforms", "10001001", "901234")
    assert row["category"] == ("EEG" if category.lower() == "eeg" else "Telemetry")
    assert row["record_key"] == f"Waveforms|10001001|{row['category']}/901234"  # telemetry and EEG: two records


@pytest.mark.parametrize("name", ["901234.hea", "901234n.csv", "901234_0001.dat", "901234_layout.hea", "901234.edf",
                                  "901234-ecg.h5", "901234"])
def test_a_session_file_is_named_by_its_session_id_then_any_non_digit(name):
    row = one(f"10001001/Waveforms/Telemetry/901234/{name}")
    assert row["parse_error"] is None and row["session_id"] == "901234"


def test_current_image_layout_records_the_accession():
    row = one("10001001/Images/CT/1234/5678/000.dcm")
    assert row["parse_error"] is None and row["layout"] == "current"
    assert (row["modality"], row["category"], row["session_id"], row["segment"]) == ("Images", "CT", "1234", "000")
    assert row["record_key"] == "Images|10001001|1234"
    uid = one("10001001/Images/CT/1.2.840.1/1.2.840.113619.2.176.3596/01_0.dcm")
    assert uid["parse_error"] is None and uid["session_id"] == "1.2.840.1"


@pytest.mark.parametrize("path, layout", [
    ("10001/waveforms/123/123.hea", "waveforms-v1.0"),
    ("10001/waveforms/telemetry/123/123.hea", "waveforms-v2.0"),  # v2.1 spells Waveforms/Telemetry|EEG
    ("10001/Waveforms/eeg/123/123.hea", "waveforms-v2.0"),
    ("10001/Waveforms/123/10001_123_0001.h5", "waveforms-v1.0"),  # PatientID_SessionID{_fileID}.ext
    ("RECORDS", "records-v1.0"),
    # a RECORDS beside the sessions is one, not a v1.0 session folder named Telemetry
    ("10001/Waveforms/Telemetry/RECORDS", "records-v1.0"),
    ("10001/waveforms/eeg/RECORDS", "records-v1.0"),
    # one in a session folder: no edition places it there (it was taken for a session file, with no note)
    ("10001/Waveforms/Telemetry/123/RECORDS", "records-v1.0"),
    ("10001/waveforms/eeg/123/RECORDS", "records-v1.0"),
    ("SUBMISSION.md", "metadata-v2.0"),
    ("1000001/Waveforms/1000001_20230101_101530_3600.h5", "waveforms-flat"),
    ("1/Images/ST/SE/1_20230101_101530_CT_01_001.dcm", "images-study"),
    ("1/Images/ST9/SE3/1_ST9_SE3_CT_001.dcm", "images-study"),
])
def test_superseded_layouts_stay_accepted_and_say_which_they_are(path, layout):
    row = one(path)
    assert row["parse_error"] is None and row["layout"] == layout


def test_registries_and_metadata_files_are_metadata():
    for path in ("waveform_registry.csv", "image_registry.csv", "Metadata/READINESS.md", "Metadata/EEG_mapping.csv"):
        row = one(path)
        assert (row["modality"], row["parse_error"], row["layout"]) == ("Metadata", None, "current"), path


def test_image_path_parses_study_and_instance():
    row = one("000001/Images/ST1/SE2/000001_20200102_030405_CT_SE2_0007.dcm")
    assert row["modality"] == "Images"
    assert row["session_id"] == "ST1"
    assert row["segment"] == "0007"
    assert row["start_date"] == "2020-01-02"


def test_person_ids_with_underscores_are_matched_against_the_folder():
    row = one("12_3/Waveforms/12_3_20200101_101010_60.dat")
    assert row["person_id"] == "12_3" and row["parse_error"] is None


@pytest.mark.parametrize(
    "path, reason",
    [
        ("README.txt", "site root"),
        ("junk/a.txt", "folder junk/"),
        ("000123/Waveforms/000124_20200101_101010_60.dat", "differs from the person folder"),
        ("000123/Waveforms/000123_20201301_101010_60.dat", "invalid date/time"),
        ("000123/Waveforms/S1/other.hea", "does not start with its session id S1"),
        ("000123/Waveforms/Telemetry/901/902.hea", "does not start with its session id 901"),
        # named by session 9011, not 901 (it was taken for a file of session 901, with no word)
        ("000123/Waveforms/Telemetry/901/9011.hea", "does not start with its session id 901"),
        ("000123/Waveforms/S1/000123_S12.h5", "does not start with its session id S1"),
        # no session folder (it was "does not start with its session id Telemetry", a folder the site has right)
        ("000123/Waveforms/Telemetry/901.hea", "lies directly in Waveforms/Telemetry/, not in a session folder"),
        ("000123/Waveforms/EEG/EEG_1.edf", "lies directly in Waveforms/EEG/, not in a session folder"),
        ("000123/Images/x.dcm", "fits no Images layout"),
        ("000123/Notes/n.txt", "folder 000123/"),
        # a file directly in a person folder, a misspelt modality folder: "folder 000123/ is not OMOP/, Metadata/ or
        # <person_id>/Waveforms|Images/" blamed the person folder, not the file or the folder below it
        ("000123/notes.txt", "folder 000123/ holds this file directly: files belong in OMOP/, Metadata/ or "
                             "<person_id>/Waveforms|Images/"),
        ("000123/Waveform/Telemetry/9/9.hea", "folder 000123/Waveform/ is not <person_id>/Waveforms/ or "
                                              "<person_id>/Images/, nor is folder 000123/ OMOP/ or Metadata/"),
        # a line break in the name, not the folder (it was "folder OMOP/ is not OMOP/, ...")
        ("OMOP/a\nb.csv", "the path holds a control character"),
        ("Meta\tdata/a.md", "the path holds a control character"),
        # an escape (a terminal's colour code): the reason said it was "a line break or a tab"
        ("OMOP/\x1b[31mred.csv", "the path holds a control character (a line break, a tab, an escape or another, "
                                 "shown escaped)"),
        # a person's folder copied into itself (cp -r 000123 000123/), or the whole site a level down: "folder 000123/
        # is not OMOP/, Metadata/ or <person_id>/Waveforms|Images/" blamed a person folder that was right
        ("000123/000123/Waveforms/Telemetry/901/901.hea", "Waveforms/ lies two folders down, in 000123/000123/: "
                                                          "expected <person_id>/Waveforms/ at the site root"),
        ("export/000123/Images/CT/7/1.2/1.dcm", "Images/ lies two folders down, in export/000123/"),
        # a modality folder at the site root, with no person folder above it
        ("Waveforms/Telemetry/901/901.hea", "Waveforms/ lies at the site root: expected <person_id>/Waveforms/"),
        ("images/CT/7/1.2/1.dcm", "images/ lies at the site root: expected <person_id>/Images/"),
    ],
)
def test_unparseable_paths_get_a_reason_and_no_record(path, reason):
    row = one(path)
    assert reason in row["parse_error"]
    assert row["record_key"] is None


def test_unparseable_paths_under_a_person_keep_modality_and_person():
    row = one("000123/Images/x.dcm")
    assert (row["modality"], row["person_id"]) == ("Images", "000123")


@pytest.mark.parametrize("path, modality, person", [
    # a line break in an OMOP/ or Metadata/ name was classified Other (no pattern took it, and the fallback knew
    # only person folders): `files --modality OMOP` and `upload --modalities OMOP` left it out
    ("OMOP/new\nline.csv", "OMOP", None),
    ("Metadata/a\rb.md", "Metadata", None),
    # a tab or line break where the layout's [^/]+ takes it fitted the layout with no word, though the same
    # character in OMOP/ was an unparsed path: every path with one is unparsed, in the modality of its folder
    ("OMOP/a\tb.csv", "OMOP", None),
    ("000123/Waveforms/Telemetry/901/901\n.dat", "Waveforms", "000123"),
    ("000123/Images/CT/77/1.2/1\t.dcm", "Images", "000123"),
])
def test_a_control_character_is_unparsed_in_the_modality_of_its_folder(path, modality, person):
    row = one(path)
    assert (row["modality"], row["person_id"]) == (modality, person)
    assert "the path holds a control character" in row["parse_error"]
    assert row["record_key"] is None and row["start_date"] is None and row["segment"] is None


def test_patterns_from_config_replace_a_modality():
    patterns = build_patterns({"Waveforms": [r"^(?P<person_id>[^/]+)/ecg/(?P<session>[^/]+)\.xml$"]})
    row = one("55/ecg/run1.xml", patterns)
    assert (row["modality"], row["person_id"], row["session_id"]) == ("Waveforms", "55", "run1")
    # the replaced default no longer applies
    assert one("55/Waveforms/55_20200101_101010_60.dat", patterns)["parse_error"] is not None


@pytest.mark.parametrize("regex, message", [("([", "invalid path pattern"), (r"^(?P<patient>.+)$", "unknown group")])
def test_bad_patterns_are_config_errors(regex, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_patterns({"Images": [regex]})
    assert "[patterns] Images[0]" in str(info.value)


def test_a_pattern_naming_its_groups_the_other_way_rust_allows_is_applied():
    """The regex engine takes (?<name>...) as it takes (?P<name>...): its groups were not seen, so the pattern was
    taken to fit no path and each path it fits was unparsed, told it "fits no pattern of [patterns]", naming it."""
    patterns = build_patterns({"Waveforms": [r"^(?<person_id>[^/]+)/ecg/(?<session>[^/]+)\.xml$"]})
    row = one("55/ecg/run1.xml", patterns)
    assert (row["modality"], row["person_id"], row["session_id"], row["parse_error"]) == (
        "Waveforms", "55", "run1", None)
    # and its names are checked as the other spelling's (was: any name taken)
    with pytest.raises(ConfigError, match="unknown group name patient"):
        build_patterns({"Waveforms": [r"^(?<patient>[^/]+)/ecg/(?<session>[^/]+)\.xml$"]})


@pytest.mark.parametrize("regex", [r"^[^/]+/Waveforms/[^/]+$", r"^([^/]+)/Waveforms/(?:[^/]+)$"])
def test_a_pattern_with_no_named_group_is_refused(regex):
    """A match is told by the groups it sets: a pattern naming none fitted no path, and a file it fits was told it
    "fits no pattern of [patterns] Waveforms", the pattern named beside it."""
    with pytest.raises(ConfigError, match="names no group") as info:
        build_patterns({"Waveforms": [r"^(?P<person_id>[^/]+)/Waveforms/(?P<session>[^/]+)/(?P<file>[^/]+)$", regex]})
    assert "[patterns] Waveforms[1]" in str(info.value) and "(?P<person_id>" in info.value.fix


def test_classify_is_vectorised_over_many_rows():
    paths = [f"{i:06d}/Waveforms/{i:06d}_20200101_101010_60.dat" for i in range(20_000)]
    frame = classify(pl.DataFrame({"srcfile": paths}))
    assert frame["parse_error"].null_count() == 20_000
    assert frame["person_id"][0] == "000000"


def test_a_bad_pattern_is_refused_when_the_config_is_read_naming_that_file(tmp_path):
    """A bad regex in [patterns] was found only once a run had started, and the message named "chorus.toml"
    whatever the file was called (--config site-a.toml)."""
    from chorus_batch.config import load_config

    config = tmp_path / "site-a.toml"
    config.write_text("[site]\nroot = \"site\"\n[patterns]\nWaveforms = ['^(?P<person_id>[^/]+/x$']\n")
    with pytest.raises(ConfigError, match="invalid path pattern") as info:
        load_config(config)
    assert info.value.where == f"{config}, line 4: [patterns] Waveforms[0]"


@pytest.mark.parametrize("path", ["000123/Metadata/READINESS.md", "000123/metadata/a/b.txt"])
def test_metadata_in_a_person_folder_is_no_legal_place(path):
    # Waveform File Format v2.1: Metadata/ lies at the site root; validation says so (layout.person_subfolder)
    row = one(path)
    assert (row["modality"], row["person_id"], row["session_id"], row["layout"]) == ("Metadata", "000123", None, None)
    assert "belongs at the site root" in row["parse_error"] and "000123/" in row["parse_error"]


def test_a_session_folder_s_records_file_stays_part_of_its_session():
    records, header = one("10001/Waveforms/EEG/123/RECORDS"), one("10001/Waveforms/EEG/123/123.hea")
    assert (records["session_id"], records["category"], records["record_key"]) == (
        header["session_id"], header["category"], header["record_key"])


def test_a_library_run_with_a_bad_pattern_is_refused_before_the_manifest_is_made(tmp_path):
    """run(RunSettings(patterns=...)) with a bad regex (the library's way, no chorus.toml read) was refused only once
    the run had begun: the manifest file was made, a `runs` row written, a lock file left beside it."""
    from chorus_batch import RunSettings, run

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    (site / "OMOP").mkdir(parents=True)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n")
    with pytest.raises(ConfigError, match="invalid path pattern"):
        run(RunSettings(site=str(site), db=str(db), patterns={"Waveforms": ["(unclosed"]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


# A frame of paths that fit, paths that fit a pattern's shape but fail its checks, and paths that fit none, mixed
# (with the Unicode case folds the (?i) folders take: 'ſ' is an 's', the Kelvin sign a 'k')
_MIXED = ["000123/Waveforms/Telemetry/901/901.hea", "junk/a.txt", "000123/Waveforms/000124_20200101_101010_60.dat",
          "10001001/Images/CT/1234/5678/000.dcm", "OMOP/a\nb.csv", "000123/Waveforms/S1/other.hea", "RECORDS",
          "7/waveformſ/7_20200101_100000_60.csv", "ſubmission.md", "omop/\u212a.csv", "1/waveforms/\u212aeg/1/1.edf",
          "000123/Waveforms/Telemetry/901.hea", "Waveforms/Telemetry/901/901.hea", "000123/notes.txt", "a//b", "",
          "1/Images/ST/SE/1_20230101_101530_CT_01_001.dcm", "000123/Waveforms/000123_20201301_101010_60.dat"]


def test_a_frame_of_mixed_paths_classifies_each_path_as_it_would_alone():
    frame = classify(pl.DataFrame({"srcfile": _MIXED * 3})).with_columns(record_key=record_key())
    for i, path in enumerate(_MIXED * 3):
        assert frame.row(i, named=True) == one(path), path


def test_the_folder_fallback_is_worked_out_for_the_paths_no_pattern_fits_alone(monkeypatch):
    """The fallback (modality, person and reason from where a path lies) splits every path into its folders: it
    was worked out for every path of a batch, most of which fit a pattern, and then thrown away for those."""
    import chorus_batch.classify as classify_module

    def strict_fallback(srcfile, patterns=classify_module.DEFAULT_PATTERNS):
        # fails on a path that is no number: on any path but "7", the one no pattern fits
        as_number = srcfile.cast(pl.Int64, strict=True).cast(pl.String)
        return as_number, as_number, as_number

    monkeypatch.setattr(classify_module, "_fallback", strict_fallback)
    paths = ["000123/Waveforms/Telemetry/901/901.hea", "7", "10001001/Images/CT/1234/5678/000.dcm"]
    frame = classify(pl.DataFrame({"srcfile": paths}))
    assert frame["modality"].to_list() == ["Waveforms", "7", "Images"]
    assert frame["parse_error"].to_list() == [None, "7", None]


def test_a_pattern_s_checks_are_worked_out_for_the_paths_of_its_shape_alone(monkeypatch):
    """Each pattern's checks (_reason) ran over every path of the batch, of its shape or not (NULL groups)."""
    import chorus_batch.classify as classify_module

    def strict_reason(pattern, g):
        # fails on a path that is not of the pattern's shape: the sessions of the shapes these paths fit are numbers
        session = pl.when(g.struct.field("matched")).then(g.struct.field("session")).otherwise(pl.lit("none"))
        return pl.when(session.cast(pl.Int64, strict=True) < 0).then(pl.lit("negative"))

    monkeypatch.setattr(classify_module, "_reason", strict_reason)
    frame = classify(pl.DataFrame({"srcfile": ["OMOP/17", "000123/Waveforms/Telemetry/901/901.hea"]}))
    assert frame["modality"].to_list() == ["OMOP", "Waveforms"]
    assert frame["session_id"].to_list() == ["17", "901"]
