"""testdata: synthetic sites in each layout of the CHoRUS procedures (v2.1, v2.0, v1.0, flat), deterministic
for a seed, with every change kind between the snapshots; content that is format-valid (pydicom and wfdb read
it) and agrees with its path; and the demo site, reproducible from its spec."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import warnings
from collections import Counter
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from chorus_batch import testdata
from chorus_batch.classify import SUPERSEDED, classify
from chorus_batch.sources import LocalSource
from chorus_batch.testdata import (
    DEMO_SPEC,
    GROUPS,
    LAYOUTS,
    MIN_SIZE,
    OMOP_TABLES,
    Spec,
    make_testdata,
    person_id,
    site_file_count,
    site_files,
    snapshot,
    sync_tree,
    write_demo_site,
)
from chorus_batch.validate import REQUIRED_TABLES, check, extract_facts, facts_needed

from conftest import ROOT, main_here, run_site, tree_md5
from sitegen import scan_current

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")

SPECS = {
    "tiny": Spec(persons=1, files_per_person=1, size=MIN_SIZE),
    "each-kind-once": Spec(persons=3, files_per_person=12, size=MIN_SIZE + 1, seed=3, change_fraction=0.5),
    "default": Spec(),
    "odd": Spec(persons=5, files_per_person=41, size=4097, seed=8, change_fraction=0.35),
}
# Layout names classify gives the paths of each layout (classify.SUPERSEDED: the superseded ones).
CLASSIFIED_LAYOUTS = {
    "v2.1": {"current"},
    "v2.0": {"current", "metadata-v2.0", "waveforms-v2.0"},
    "v1.0": {"current", "waveforms-v1.0", "records-v1.0", "images-study"},
    "flat": {"current", "waveforms-flat", "waveforms-v1.0", "records-v1.0", "images-study"},
}
IDENTIFYING = ("PatientName", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "OtherPatientIDs",
               "OtherPatientNames", "PatientTelephoneNumbers", "ReferringPhysicianName", "InstitutionName",
               "InstitutionAddress", "PatientMotherBirthName", "MedicalRecordLocator")
FLAT_DICOM = re.compile(
    r"^(?P<pid>\d+)_(?P<date>\d{8})_(?P<time>\d{6})_(?P<mod>CT|MR)_(?P<series>\d+)_(?P<inst>\d+)\.dcm$")


def with_layout(spec: Spec, layout: str) -> Spec:
    return Spec(**{**spec.__dict__, "layout": layout})


@pytest.fixture(scope="module", params=[(name, layout) for name in SPECS for layout in LAYOUTS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def made(request, tmp_path_factory) -> tuple[Spec, Path, tuple[int, int]]:
    name, layout = request.param
    spec = with_layout(SPECS[name], layout)
    out = tmp_path_factory.mktemp(f"td-{name}-{layout}")
    counts = make_testdata(out, spec)
    return spec, out, counts


def validate(root: Path) -> pl.DataFrame:
    current = scan_current(root)
    return check(current, extract_facts(LocalSource(root), facts_needed(current), workers=2))


def files_under(root: Path) -> list[str]:
    return sorted(tree_md5(root))


def folders_under(root: Path) -> set[str]:
    return {Path(d).relative_to(root).as_posix() for d, _dirs, _files in os.walk(root)}


def classified(root: Path) -> pl.DataFrame:
    return classify(pl.DataFrame({"srcfile": files_under(root)}))


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def visits_of(root: Path) -> dict[str, list[tuple[datetime, datetime, str]]]:
    """person_id -> (start, end, visit_occurrence_id) of each visit, from visit_occurrence.csv's datetimes."""
    out: dict[str, list] = {}
    for row in read_csv(root / "OMOP" / "visit_occurrence.csv"):
        out.setdefault(row["person_id"], []).append((datetime.fromisoformat(row["visit_start_datetime"]),
                                                     datetime.fromisoformat(row["visit_end_datetime"]),
                                                     row["visit_occurrence_id"]))
    return out


def visit_at(visits: list[tuple[datetime, datetime, str]], at: datetime) -> str | None:
    """The visit whose start and end enclose `at` (what the registries infer), or None."""
    found = [v for start, end, v in visits if start <= at <= end]
    assert len(found) <= 1
    return found[0] if found else None


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("snap", ["first", "second"])
def test_both_snapshots_validate_without_errors_or_warnings(made, snap):
    spec, out, _counts = made
    findings = validate(out / snap)
    assert findings.filter(pl.col("severity") != "info").rows() == []
    assert set(findings["rule"]) <= {"layout.superseded"}  # an earlier layout is named, nothing else
    if spec.layout == "v2.1":
        assert findings.height == 0


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", [0, 1, 2, 9])
def test_sizes_below_the_minimum_still_write_a_site(size, layout, tmp_path):
    spec = Spec(persons=2, files_per_person=12, size=size, layout=layout)
    assert make_testdata(tmp_path, spec)[0] == 2 * 12 + site_file_count(spec)
    assert classified(tmp_path / "first")["parse_error"].null_count() == 2 * 12 + site_file_count(spec)
    findings = validate(tmp_path / "first")
    assert findings.filter(pl.col("severity") == "error").height == 0


# ----------------------------------------------------------------------------- counts, names, determinism


def test_files_per_person_and_counts(made):
    spec, out, (n_first, n_second) = made
    first, second = files_under(out / "first"), files_under(out / "second")
    assert (n_first, n_second) == (len(first), len(second))
    assert n_first == spec.persons * spec.files_per_person + site_file_count(spec)
    per_person = Counter(p.split("/")[0] for p in first if p.split("/")[0] not in ("OMOP", "Metadata") and "/" in p)
    assert per_person == {person_id(i): spec.files_per_person for i in range(spec.persons)}
    omop = {f"OMOP/{t}.csv" for t in OMOP_TABLES}
    assert len(OMOP_TABLES) == 13 and "specimen" not in OMOP_TABLES and set(REQUIRED_TABLES) <= set(OMOP_TABLES)
    assert omop <= set(first)
    assert ("OMOP/waveform_visit_links.csv" in first) == (spec.layout in ("v2.0", "flat"))
    # snapshot() names the person folders' files of each snapshot, site_files() the others.
    for name, seconds in (("first", False), ("second", True)):
        on_disk = set(files_under(out / name))
        persons = set(snapshot(spec, second=seconds))
        assert persons | set(site_files(spec, second=seconds)) == on_disk
        assert all(p.split("/")[0] in {person_id(i) for i in range(spec.persons)} for p in persons)
    # person.csv lists every person as the folders spell them.
    person = pl.read_csv(out / "first" / "OMOP" / "person.csv", schema_overrides={"person_id": pl.String})
    assert person["person_id"].to_list() == [person_id(i) for i in range(spec.persons)]
    assert set(per_person) == set(person["person_id"])


def test_contents_are_unique_on_the_site(made):
    spec, out, _counts = made
    for snap in ("first", "second"):
        md5s = Counter(tree_md5(out / snap).values())
        assert [n for n in md5s.values() if n > 1] == [], snap


KINDS = {  # a regular expression per kind of file each layout writes ({P}: the first person, {Q}: the second)
    "v2.1": {
        "Telemetry header": r"{P}/Waveforms/Telemetry/(\d+)/\1\.hea",
        "Telemetry signals": r"{P}/Waveforms/Telemetry/(\d+)/\1\.dat",
        "numerics": r"{P}/Waveforms/Telemetry/(\d+)/\1n\.csv",
        "EEG header": r"{P}/Waveforms/EEG/(\d+)/\1\.hea",
        "EEG signals": r"{P}/Waveforms/EEG/(\d+)/\1\.dat",
        "multi-segment layout": r"{Q}/Waveforms/Telemetry/(\d+)/\1_layout\.hea",
        "multi-segment segment": r"{Q}/Waveforms/Telemetry/(\d+)/\1_0002\.dat",
        "DICOM": r"{P}/Images/CT/\d+/2\.25\.\d+/\d{3}\.dcm",
        "readiness": r"Metadata/READINESS\.md",
        "submission": r"Metadata/SUBMISSION\.md",
        "telemetry mapping": r"Metadata/Telemetry_mapping\.csv",
        "EEG mapping": r"Metadata/EEG_mapping\.csv",
    },
    "v2.0": {
        "Telemetry header": r"{P}/waveforms/telemetry/(\d+)/\1\.hea",
        "numerics": r"{P}/waveforms/telemetry/(\d+)/\1n\.csv",
        "EEG header": r"{P}/waveforms/eeg/(\d+)/\1\.hea",
        "multi-segment layout": r"{Q}/waveforms/telemetry/(\d+)/\1_layout\.hea",
        "DICOM": r"{P}/Images/CT/\d+/2\.25\.\d+/\d{3}\.dcm",
        "submission at the root": r"SUBMISSION\.md",
        "readiness": r"Metadata/READINESS\.md",
        "telemetry mapping": r"Metadata/Telemetry_mapping\.csv",
        "EEG mapping": r"Metadata/EEG_mapping\.csv",
        "links": r"OMOP/waveform_visit_links\.csv",
    },
    "v1.0": {
        "WFDB header": r"{P}/waveforms/(\d+)/\1\.hea",
        "numerics": r"{P}/waveforms/(\d+)/\1n\.csv",
        "multi-segment layout": r"{Q}/waveforms/(\d+)/\1_layout\.hea",
        "RECORDS": r"RECORDS",
        "DICOM": r"{P}/Images/(\d+)/(2\.25\.\d+)/{P}_\1_\2_CT_\d+\.dcm",
        "submission": r"Metadata/SUBMISSION\.md",
    },
    "flat": {
        "flat, no session folder": r"{P}/Waveforms/{P}_\d{8}_\d{6}_3600\.dat",
        "flat segments in a session folder": r"{P}/Waveforms/({P}_\d{8}_\d{6})/{P}_\d{8}_\d{6}_1800_0002\.dat",
        "WFDB header": r"{P}/Waveforms/({P}_\d{8}_\d{6})/\1\.hea",
        "WFDB signal": r"{P}/Waveforms/({P}_\d{8}_\d{6})/\1\.dat",
        "WFDB numerics": r"{P}/Waveforms/({P}_\d{8}_\d{6})/\1n\.csv",
        "RECORDS": r"{P}/Waveforms/RECORDS",
        # (was in a lower-case waveforms/ beside Waveforms/: two folders a Windows or macOS copy merges, file.name_clash;
        # a lower-case modality folder's reading is test_classify's)
        "60-second CSV": r"{P}/Waveforms/{P}_\d{8}_\d{6}_60\.csv",
        "DICOM study/series": r"{P}/Images/ST\d{4}/SE\d{2}/{P}_\d{8}_\d{6}_CT_\d+_\d+\.dcm",
        "links": r"OMOP/waveform_visit_links\.csv",
    },
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_kind_of_file_is_written(layout):
    spec = with_layout(SPECS["each-kind-once"], layout)
    paths = set(snapshot(spec)) | set(site_files(spec))
    for kind, pattern in KINDS[layout].items():
        pattern = pattern.replace("{P}", person_id(0)).replace("{Q}", person_id(1))
        assert any(re.fullmatch(pattern, path) for path in paths), kind
    assert "EEG" not in str(paths) or layout in ("v2.1", "v2.0")
    for i in range(spec.persons):
        assert len([p for p in paths if p.startswith(person_id(i) + "/")]) == spec.files_per_person


@pytest.mark.parametrize("layout", LAYOUTS)
def test_same_seed_same_bytes_other_seed_other_bytes(layout, tmp_path):
    spec = Spec(persons=3, files_per_person=14, size=100, seed=21, layout=layout)
    for name in ("a", "b"):
        make_testdata(tmp_path / name, spec)
    make_testdata(tmp_path / "c", Spec(**{**spec.__dict__, "seed": 22}))
    a = tree_md5(tmp_path / "a")
    assert a == tree_md5(tmp_path / "b")
    c = tree_md5(tmp_path / "c")
    # The seed draws the bytes and the changes, not the first snapshot's names.
    assert {p for p in a if p.startswith("first/")} == {p for p in c if p.startswith("first/")}

    def seeded(p: str) -> bool:  # RECORDS and multi-segment master and layout headers hold only names and lengths
        if not p.startswith("first/0") or p.endswith("RECORDS") or p.endswith("_layout.hea"):
            return False
        return not (p.endswith(".hea") and "/" in (tmp_path / "a" / p).read_text().split()[0])

    assert all(a[p] != c[p] for p in a if seeded(p))
    assert sum(map(seeded, a)) >= 3 * 14 - 3


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="unknown layout"):
        Spec(layout="v3")


@pytest.mark.parametrize("layout", ["v2.0", "v1.0"])
def test_cli_writes_the_layout(layout, tmp_path):
    out = main_here("testdata", str(tmp_path / "cli"), "--persons", "3", "--files-per-person", "10", "--seed", "4",
              "--layout", layout, "--workers", "1")
    assert out.returncode == 0, out.stderr
    make_testdata(tmp_path / "lib", Spec(persons=3, files_per_person=10, seed=4, layout=layout))
    assert tree_md5(tmp_path / "cli") == tree_md5(tmp_path / "lib")


# ----------------------------------------------------------------------------- changes


def test_sync_tree_turns_first_into_second(made, tmp_path):
    spec, out, _counts = made
    site = tmp_path / "site"
    shutil.copytree(out / "first", site)
    touched = sync_tree(site, spec)
    assert tree_md5(site) == tree_md5(out / "second")
    assert folders_under(site) == folders_under(out / "second")  # no empty folders left behind
    assert touched > 0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_worker_processes_write_the_same_trees(layout, tmp_path, monkeypatch):
    spec = Spec(persons=9, files_per_person=13, size=70, seed=2, change_fraction=0.4, layout=layout)
    make_testdata(tmp_path / "one", spec, workers=1)
    monkeypatch.setattr(testdata, "_parallel", lambda spec, workers: workers > 1)
    make_testdata(tmp_path / "many", spec, workers=2)
    assert tree_md5(tmp_path / "one") == tree_md5(tmp_path / "many")
    site = tmp_path / "site"
    shutil.copytree(tmp_path / "one" / "first", site)
    sync_tree(site, spec, workers=2)
    assert tree_md5(site) == tree_md5(tmp_path / "one" / "second")


CHANGE_SPECS = {  # the specs other tests use
    "run": Spec(persons=10, files_per_person=20, size=64, seed=5),
    "review": Spec(persons=6, files_per_person=15, size=64, seed=11, change_fraction=0.3),
    "notebook": Spec(persons=8, files_per_person=10, size=256),
    "report": Spec(persons=8, files_per_person=12, size=256, seed=3),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(CHANGE_SPECS))
def test_second_snapshot_gives_every_change_kind(name, layout, tmp_path):
    spec = with_layout(CHANGE_SPECS[name], layout)
    make_testdata(tmp_path / "td", spec)
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    shutil.copytree(tmp_path / "td" / "first", site)
    first = run_site(site, db)
    sync_tree(site, spec)
    second = run_site(site, db)
    assert all(second.counts[kind] > 0 for kind in ("added", "removed", "replaced", "renamed")), second.counts
    renamed = second.change_set.filter(pl.col("change") == "renamed")
    before, after = tree_md5(tmp_path / "td" / "first"), tree_md5(tmp_path / "td" / "second")
    assert all(before[old] == after[new] for new, old in renamed.select("srcfile", "old_srcfile").iter_rows())
    if layout != "flat":  # where every folder is in the header, a renamed instance gains a zero
        for new, old in renamed.select("srcfile", "old_srcfile").iter_rows():
            assert new.endswith(".dcm") and new.rsplit("/", 1)[0] == old.rsplit("/", 1)[0]
            assert int(re.search(r"(\d+)\.dcm$", new)[1]) == int(re.search(r"(\d+)\.dcm$", old)[1])
    for result in (first, second):
        assert int(result.exit_code) == 0
        assert result.findings is not None
        assert result.findings.filter(pl.col("severity") != "info").height == 0


# ----------------------------------------------------------------------------- classification


def test_classify_parses_every_path(made):
    spec, out, _counts = made
    for snap in ("first", "second"):
        c = classified(out / snap)
        assert c.filter(pl.col("parse_error").is_not_null()).rows() == [], snap
        assert set(c["layout"]) <= CLASSIFIED_LAYOUTS[spec.layout]
        assert set(c["layout"]) - {"current"} <= set(SUPERSEDED)
        if spec.layout not in ("v2.1", "v2.0"):
            continue
        parts = c["srcfile"].str.split("/")
        waves = c.filter(pl.col("modality") == "Waveforms")
        for srcfile, category, session in waves.select("srcfile", "category", "session_id").iter_rows():
            person, folder, kind, sid, _name = srcfile.split("/")
            assert folder.lower() == "waveforms" and category == {"telemetry": "Telemetry", "eeg": "EEG"}[kind.lower()]
            assert session == sid and sid.isdigit()
        images = c.filter(pl.col("modality") == "Images")
        for srcfile, category, session in images.select("srcfile", "category", "session_id").iter_rows():
            _person, _images, modality, accession, _series, _name = srcfile.split("/")
            assert (category, session) == (modality, accession)
        if spec.layout == "v2.1":
            assert set(c["layout"]) == {"current"}
        assert parts.list.len().max() <= 6


# ----------------------------------------------------------------------------- content agrees with the path


def _dicom_paths(out: Path) -> list[Path]:
    """The DICOM files of both snapshots under `out`."""
    return sorted(out.glob("*/*/Images/**/*.dcm"))


def test_dicom_headers_agree_with_their_paths(made):
    import pydicom
    from pydicom import config

    spec, out, _counts = made
    paths = _dicom_paths(out)
    assert paths or spec.files_per_person < 5
    modalities, accessions = set(), {}
    old_mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for path in paths:
                ds = pydicom.dcmread(path)
                rel = path.relative_to(out).parts[1:]
                person = rel[0]
                assert ds.PatientID == person
                if spec.layout == "flat":
                    name = FLAT_DICOM.match(path.name)
                    assert name and name["pid"] == person, path.name
                    assert ds.Modality == name["mod"]
                    assert ds.SeriesNumber == int(name["series"]) and ds.InstanceNumber == int(name["inst"])
                    assert (ds.AcquisitionDate, ds.AcquisitionTime) == (name["date"], name["time"])
                elif spec.layout == "v1.0":  # <pid>/Images/<StudyID>/<SeriesID>/<pid>_<StudyID>_<SeriesID>_<MOD>_<I>
                    _, _, study, series, name = rel
                    assert name == f"{person}_{study}_{series}_{ds.Modality}_{name.rsplit('_', 1)[1]}"
                    assert ds.StudyID == ds.AccessionNumber == study and ds.SeriesInstanceUID == series
                    assert ds.InstanceNumber == int(name.rsplit("_", 1)[1].removesuffix(".dcm"))
                else:  # <pid>/Images/<Modality>/<AccessionNumber>/<SeriesInstanceUID>/<InstanceNumber>.dcm
                    _, _, modality, accession, series, name = rel
                    assert (ds.Modality, ds.AccessionNumber, ds.SeriesInstanceUID) == (modality, accession, series)
                    assert ds.InstanceNumber == int(name.removesuffix(".dcm")) and re.fullmatch(r"\d{3,}\.dcm", name)
                    assert ds.StudyID == accession
                if spec.layout != "flat":
                    assert accessions.setdefault(ds.AccessionNumber, person) == person  # unique across persons
                    assert ds.AccessionNumber.isdigit()
                for keyword in IDENTIFYING:
                    assert not ds.get(keyword), keyword
                assert (ds.StudyDate, ds.StudyTime) <= (ds.AcquisitionDate, ds.AcquisitionTime)
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
                assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
                assert ds.SOPClassUID.name == {"CT": "CT Image Storage", "MR": "MR Image Storage"}[ds.Modality]
                assert all(uid.is_valid for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID))
                assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.Rows * ds.Columns >= 64
                modalities.add(ds.Modality)
    finally:
        config.settings.reading_validation_mode = old_mode
    assert modalities == {"CT", "MR"} or spec.files_per_person < 40


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dicom_is_padded_to_about_size(layout, tmp_path):
    spec = Spec(persons=1, files_per_person=9, size=300_001, layout=layout)
    make_testdata(tmp_path, spec)
    paths = _dicom_paths(tmp_path)
    assert paths
    for path in paths:
        assert spec.size - 2 * 1024 <= path.stat().st_size <= spec.size


def _mapping(root: Path, name: str) -> dict[str, dict[str, str]]:
    rows = read_csv(root / "Metadata" / name)
    assert list(rows[0]) == list(testdata.MAPPING_COLUMNS)
    return {row["signal_id"]: row for row in rows}


def test_wfdb_records_read_with_wfdb(made):
    import wfdb

    spec, out, _counts = made
    for snap in ("first", "second"):
        root = out / snap
        headers = sorted(root.glob("*/[Ww]aveforms/**/*.hea"))
        assert headers or spec.files_per_person < 7 or spec.layout != "flat" and spec.files_per_person < 2
        mappings = {"Telemetry": _mapping(root, "Telemetry_mapping.csv")}
        if (root / "Metadata" / "EEG_mapping.csv").exists():
            mappings["EEG"] = _mapping(root, "EEG_mapping.csv")
        assert ("EEG" in mappings) == any("/eeg/" in h.as_posix().lower() for h in headers)
        for hea in headers:
            record = str(hea.with_suffix(""))
            header = wfdb.rdheader(record)
            assert header.record_name == hea.stem
            assert hea.stem.startswith(hea.parent.name)  # <session>.hea, <session>_layout.hea, <session>_0001.hea
            assert header.base_date is not None and header.base_time is not None
            start = datetime.combine(header.base_date, header.base_time)
            if spec.layout == "flat":
                assert f"{start:%Y%m%d_%H%M%S}" == hea.stem.split("_", 1)[1]
            else:
                assert hea.parent.name.isdigit()
            if isinstance(header, wfdb.MultiRecord):
                assert header.seg_name == [f"{hea.stem}_layout", f"{hea.stem}_0001", f"{hea.stem}_0002"]
                lengths = [wfdb.rdheader(str(hea.parent / s)).sig_len for s in header.seg_name]
                assert lengths == header.seg_len and sum(lengths) == header.sig_len
                continue
            mapping = mappings["EEG" if "/eeg/" in hea.as_posix().lower() else "Telemetry"]
            for name, units in zip(header.sig_name, header.units):
                assert mapping[name]["units"] == units and float(mapping[name]["sampling_rate"]) == header.fs
                assert mapping[name]["standardized_label"].startswith("MDC_")
            if header.sig_len == 0:  # the layout segment
                assert hea.stem.endswith("_layout") and set(header.file_name) == {"~"}
                continue
            assert header.file_name == [hea.stem + ".dat"] * header.n_sig and set(header.fmt) == {"16"}
            assert hea.with_suffix(".dat").stat().st_size == 2 * header.n_sig * header.sig_len
        for hea in [h for h in headers if not h.stem.endswith("_layout")][:8]:
            signal = wfdb.rdrecord(str(hea.with_suffix("")), physical=False, m2s=False)
            if isinstance(signal, wfdb.MultiRecord) or signal.sig_len == 0:
                continue
            for checksum, expected in zip(signal.checksum, signal.calc_checksum()):
                assert (checksum - expected) % 65536 == 0  # WFDB writes it signed, wfdb computes it unsigned
            assert signal.init_value == list(signal.d_signal[0])
        multi = [h for h in headers if (h.parent / f"{h.stem}_layout.hea").exists()]
        for hea in multi[:3]:  # a variable-layout record reads as one: the first segment lacks ABP
            record = wfdb.rdrecord(str(hea.with_suffix("")))
            assert record.sig_name == [s.signal_id for s in GROUPS["tele3"][1]]
        # RECORDS: flat per person (the record names), v1.0 at the root (every top-level record's path).
        top_level = sorted(h for h in headers if not re.search(r"_(layout|\d{4})$", h.stem))
        if spec.layout == "flat":
            for records in root.glob("*/Waveforms/RECORDS"):
                listed = records.read_text().split()
                assert listed == sorted(h.stem for h in records.parent.glob("*/*.hea"))
        elif spec.layout == "v1.0" and headers:
            listed = (root / "RECORDS").read_text().split()
            assert listed == sorted(h.relative_to(root).with_suffix("").as_posix() for h in top_level)
        else:
            assert not list(root.rglob("RECORDS"))


def test_capture_times_fall_in_visits(made):
    """Sessions (the header's base date and time) and images (AcquisitionDate/Time) start inside one of their
    person's visits, or, on purpose, before them all; links tables name the visit that holds the session."""
    import pydicom
    import wfdb

    spec, out, _counts = made
    outside = Counter()
    for snap in ("first", "second"):
        root = out / snap
        visits = visits_of(root)
        details = {row["visit_detail_id"]: row["visit_occurrence_id"]
                   for row in read_csv(root / "OMOP" / "visit_detail.csv")}
        linked: dict[str, str] = {}
        if spec.layout in ("v2.0", "flat"):
            rows = read_csv(root / "OMOP" / "waveform_visit_links.csv")
            key = "session_id" if spec.layout == "v2.0" else "session"
            assert rows == [] or list(rows[0]) == list(testdata.LINKS_COLUMNS[spec.layout])
            for row in rows:
                linked[row[key]] = row["visit_occurrence_id"]
                if spec.layout == "v2.0":
                    assert details[row["visit_detail_id"]] == row["visit_occurrence_id"]
        for hea in root.glob("*/[Ww]aveforms/**/*.hea"):
            header = wfdb.rdheader(str(hea.with_suffix("")))
            if hea.stem != hea.parent.name:
                continue  # segments and layout: the session's own header says when it starts
            person = hea.relative_to(root).parts[0]
            at = datetime.combine(header.base_date, header.base_time)
            visit = visit_at(visits[person], at)
            if visit is None:
                assert at < min(start for start, _end, _v in visits[person])
                outside["session"] += 1
            if linked:
                assert visit is not None and linked.pop(hea.stem) == visit
            outside["sessions"] += 1
        for path in sorted(root.glob("*/Images/**/*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            person = path.relative_to(root).parts[0]
            at = datetime.strptime(ds.AcquisitionDate + ds.AcquisitionTime, "%Y%m%d%H%M%S")
            if visit_at(visits[person], at) is None:
                assert at < min(start for start, _end, _v in visits[person])
                outside["image"] += 1
            outside["images"] += 1
        if spec.layout == "v2.0":
            assert linked == {}  # every link names a session on the site
    if spec.persons * spec.files_per_person >= 200:
        assert 0 < outside["image"] < outside["images"] * 0.3
        if spec.layout in ("v2.1", "v1.0"):
            assert 0 < outside["session"] < outside["sessions"] * 0.3
    if spec.layout in ("v2.0", "flat"):
        assert outside["session"] == 0


def test_site_files_follow_the_procedures(made):
    spec, out, _counts = made
    for snap in ("first", "second"):
        root = out / snap
        readiness = (root / "Metadata" / "READINESS.md").read_text()
        items = re.findall(r"^- \[(.)\] ", readiness, flags=re.M)
        assert items and set(items) == {"x"}
        submission = (root / ("SUBMISSION.md" if spec.layout == "v2.0" else "Metadata/SUBMISSION.md")).read_text()
        headings = [h.lower() for h in re.findall(r"^#+ (.+)$", submission, flags=re.M)]
        for section in ("hospital", "dataset", "waveform types", "known issues", "variables", "sample intervals",
                        "gaps", "linkage"):
            assert any(section in h for h in headings), section
        assert (root / "SUBMISSION.md").exists() == (spec.layout == "v2.0")
        assert not (root / "OMOP" / "specimen.csv").exists()
        for table in OMOP_TABLES:
            header = (root / "OMOP" / f"{table}.csv").read_text().split("\n", 1)[0].split(",")
            assert header == list(testdata.OMOP_COLUMNS[table])
        visit_columns = testdata.OMOP_COLUMNS["visit_occurrence"]
        assert {"visit_start_datetime", "visit_end_datetime", "visit_start_date", "visit_end_date"} <= set(
            visit_columns)
        # the EHR's procedures far below the registries' ids; a row per registry proc_id (Multimodal-Linkage)
        procedures = read_csv(root / "OMOP" / "procedure_occurrence.csv")
        linked = {"4180938", "4141651"}
        assert all(int(row["procedure_occurrence_id"]) < 1_000_000_000 for row in procedures
                   if row["procedure_concept_id"] not in linked)
        if spec.registries:
            made = {row["procedure_occurrence_id"] for row in procedures if row["procedure_concept_id"] in linked}
            listed = {row["proc_id"] for name in ("waveform_registry.csv", "image_registry.csv")
                      if (root / name).exists() for row in read_csv(root / name)}
            assert made == listed
        # session ids: integers, distinct across Telemetry and EEG and across persons
        if spec.layout != "flat":
            sessions = [h.parent.name for h in root.glob("*/[Ww]aveforms/**/*.hea") if h.stem == h.parent.name]
            assert all(s.isdigit() for s in sessions) and len(sessions) == len(set(sessions))


# ----------------------------------------------------------------------------- the demo site


def test_demo_site_is_the_demo_spec_in_todays_layout(tmp_path):
    """data/demo_site is write_demo_site's output (`python -m chorus_batch.testdata data/demo_site`)."""
    demo = ROOT / "data" / "demo_site"
    write_demo_site(tmp_path / "demo")
    assert tree_md5(tmp_path / "demo") == tree_md5(demo)
    assert DEMO_SPEC.layout == "v2.1" and DEMO_SPEC.persons == 3
    paths = files_under(demo)
    assert sum((demo / p).stat().st_size for p in paths) < 300 * 1024
    assert set(classified(demo)["layout"]) == {"current"}
    assert any("/Waveforms/EEG/" in p for p in paths) and any(p.endswith("_layout.hea") for p in paths)


def test_size_takes_a_byte_count_as_the_settings_do(tmp_path):
    # `--size 64KiB` was "invalid int value": the and the README's trees are given in such units
    out = main_here("testdata", str(tmp_path / "t"), "--persons", "1", "--files-per-person", "3", "--size", "2KiB")
    assert out.returncode == 0, out.stderr
    dat = next((tmp_path / "t" / "first").rglob("*.dat"))
    assert dat.stat().st_size == 2048
    bad = main_here("testdata", str(tmp_path / "u"), "--size", "two")
    assert bad.returncode == 2 and "'two' is not a byte count" in bad.stderr


@pytest.mark.parametrize("args, said", [
    # each was "testdata sizes out of range: --persons 0, --files-per-person 12, --size 1024, --change-fraction 0.2",
    # which of the four unsaid, or argparse's "invalid int value" / "invalid float value"
    (["--persons", "0"], "argument --persons: must be at least 1, not 0"),
    (["--files-per-person", "1e3"], "argument --files-per-person: '1e3' is not a whole number"),
    (["--seed", "abc"], "argument --seed: 'abc' is not a whole number"),
    (["--change-fraction", "2"], "argument --change-fraction: must be between 0 and 1, not 2"),
    (["--change-fraction", "nan"], "argument --change-fraction: must be between 0 and 1, not nan"),
    (["--persons", "10000", "--files-per-person", "10000"],
     "--persons 10000 x --files-per-person 10000 is 100,000,000 files, more than 10,000,000"),
])
def test_a_testdata_size_out_of_range_names_the_option(tmp_path, args, said):
    out = main_here("testdata", str(tmp_path / "t"), *args)
    assert out.returncode == 2 and said in out.stderr, out.stderr
    assert "invalid" not in out.stderr and "--size 1024" not in out.stderr, out.stderr
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("point, said", [
    ("testdata-first", "{out}/first is incomplete and {out}/second was not written"),
    ("testdata-second", "{out}/first is complete (30 files), {out}/second is incomplete"),
])
def test_testdata_stopped_by_ctrl_c_says_in_one_line_what_was_written(tmp_path, point, said):
    """Ctrl-C in testdata said 'nothing was committed; the previous version is intact' (it has no manifest); now one
    line: which snapshot is complete, which is not, and what to do."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "testdata", str(out), "--persons", "3",
                             "--files-per-person", "4"], env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": point},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if f"test pause at {point}" not in line:
        proc.kill()
        raise AssertionError(line + proc.communicate(timeout=60)[1])
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"chorus-batch: interrupted; {said.format(out=out)}; remove {out} (testdata "
                                        "writes into a new or empty folder only) and run the same command again"], err
    assert stdout == ""


def test_testdata_to_a_full_standard_output_says_the_site_written_stands(tmp_path):
    """`testdata > /dev/full` exits 3 after writing the whole site; it said "what the command did before stands" and
    pointed at `chorus-batch versions` and the manifest, which testdata has none of. It says what was written."""
    import subprocess
    import sys

    out = tmp_path / "out"
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "chorus_batch", "testdata", str(out), "--persons", "3",
                               "--files-per-person", "4"], stdout=full, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 3 and "could not write the output to standard output" in done.stderr, done.stderr
    first, second = (sum(p.is_file() for p in (out / name).rglob("*")) for name in ("first", "second"))
    assert first and second
    assert (f"the test data was written ({first} files in {out / 'first'}, {second} files in {out / 'second'}) and "
            "stands; only this line saying so was not written") in done.stderr, done.stderr
    assert "manifest" not in done.stderr and "versions" not in done.stderr, done.stderr
