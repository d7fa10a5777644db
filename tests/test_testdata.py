"""testdata: synthetic sites whose content is format-valid (the validator finds no errors or warnings in
either snapshot), deterministic for a seed, with every layout and every change kind."""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import polars as pl
import pytest

from chorus_batch import testdata
from chorus_batch.sources import LocalSource
from chorus_batch.testdata import MIN_SIZE, OMOP_TABLES, SITE_FILES, Spec, make_testdata, person_id, snapshot, sync_tree
from chorus_batch.validate import REQUIRED_TABLES, check, extract_facts, facts_needed

from conftest import run_site, tree_md5
from sitegen import scan_current

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning")

SPECS = {
    "tiny": Spec(persons=1, files_per_person=1, size=MIN_SIZE),
    "each-layout-once": Spec(persons=2, files_per_person=9, size=MIN_SIZE + 1, seed=3, change_fraction=0.5),
    "default": Spec(),
    "odd": Spec(persons=5, files_per_person=41, size=4097, seed=8, change_fraction=0.35),
}
DICOM_NAME = re.compile(
    r"^(?P<pid>\d+)_(?P<date>\d{8})_(?P<time>\d{6})_(?P<mod>CT|MR)_(?P<series>\d+)_(?P<inst>\d+)\.dcm$")


@pytest.fixture(scope="module", params=list(SPECS))
def made(request, tmp_path_factory) -> tuple[Spec, Path, tuple[int, int]]:
    spec = SPECS[request.param]
    out = tmp_path_factory.mktemp(f"td-{request.param}")
    counts = make_testdata(out, spec)
    return spec, out, counts


def validate(root: Path) -> pl.DataFrame:
    current = scan_current(root)
    return check(current, extract_facts(LocalSource(root), facts_needed(current), workers=2))


def files_under(root: Path) -> list[str]:
    return sorted(tree_md5(root))


def folders_under(root: Path) -> set[str]:
    return {Path(d).relative_to(root).as_posix() for d, _dirs, _files in os.walk(root)}


@pytest.mark.parametrize("snap", ["first", "second"])
def test_both_snapshots_validate_without_errors_or_warnings(made, snap):
    _spec, out, _counts = made
    findings = validate(out / snap)
    assert findings.filter(pl.col("severity") != "info").rows() == []
    assert set(findings["rule"]) <= {"omop.optional_table_missing"}


def test_files_per_person_and_counts(made):
    spec, out, (n_first, n_second) = made
    first, second = files_under(out / "first"), files_under(out / "second")
    assert (n_first, n_second) == (len(first), len(second))
    assert n_first == spec.persons * spec.files_per_person + SITE_FILES
    assert {f"OMOP/{t}.csv" for t in OMOP_TABLES} | {"Metadata/site_description.json"} <= set(first)
    assert set(REQUIRED_TABLES) <= set(OMOP_TABLES)
    # snapshot() names the person folders' files of each snapshot.
    for name, seconds in (("first", False), ("second", True)):
        on_disk = {p for p in files_under(out / name) if not p.startswith(("OMOP/", "Metadata/"))}
        assert set(snapshot(spec, second=seconds)) == on_disk
    # person.csv lists every person as the folders spell them.
    person = pl.read_csv(out / "first" / "OMOP" / "person.csv", schema_overrides={"person_id": pl.String})
    assert person["person_id"].to_list() == [person_id(i) for i in range(spec.persons)]
    assert {p.split("/")[0] for p in first} - {"OMOP", "Metadata"} == set(person["person_id"])


def test_every_layout_is_written():
    spec = SPECS["each-layout-once"]
    paths = set(snapshot(spec))
    p = person_id(0)
    stamp = rf"{p}_\d{{8}}_\d{{6}}"
    layouts = {
        "flat, no session folder": rf"{p}/Waveforms/{stamp}_3600\.dat",
        "flat segments in a session folder": rf"{p}/Waveforms/({stamp})/{stamp}_1800_0002\.dat",
        "WFDB header": rf"{p}/Waveforms/({stamp})/\1\.hea",
        "WFDB signal": rf"{p}/Waveforms/({stamp})/\1\.dat",
        "WFDB numerics": rf"{p}/Waveforms/({stamp})/\1n\.csv",
        "RECORDS": rf"{p}/Waveforms/RECORDS",
        "lower-case folder": rf"{p}/waveforms/{stamp}_60\.csv",
        "DICOM study/series": rf"{p}/Images/ST\d{{4}}/SE\d{{2}}/{stamp}_CT_\d+_\d+\.dcm",
    }
    for layout, pattern in layouts.items():
        assert any(re.fullmatch(pattern, path) for path in paths), layout
    assert len([path for path in paths if path.startswith(p + "/")]) == spec.files_per_person


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    spec = Spec(persons=3, files_per_person=14, size=100, seed=21)
    for name in ("a", "b"):
        make_testdata(tmp_path / name, spec)
    make_testdata(tmp_path / "c", Spec(**{**spec.__dict__, "seed": 22}))
    a = tree_md5(tmp_path / "a")
    assert a == tree_md5(tmp_path / "b")
    c = tree_md5(tmp_path / "c")
    # The seed draws the bytes and the changes, not the first snapshot's names.
    assert {p for p in a if p.startswith("first/")} == {p for p in c if p.startswith("first/")}
    assert all(a[p] != c[p] for p in a if p.startswith("first/") and not p.startswith("first/OMOP/")
               and not p.endswith("/RECORDS"))  # RECORDS holds only the record names


def test_sync_tree_turns_first_into_second(made, tmp_path):
    spec, out, _counts = made
    site = tmp_path / "site"
    shutil.copytree(out / "first", site)
    touched = sync_tree(site, spec)
    assert tree_md5(site) == tree_md5(out / "second")
    assert folders_under(site) == folders_under(out / "second")  # no empty folders left behind
    assert touched > 0


def test_worker_processes_write_the_same_trees(tmp_path, monkeypatch):
    spec = Spec(persons=9, files_per_person=13, size=70, seed=2, change_fraction=0.4)
    make_testdata(tmp_path / "one", spec, workers=1)
    monkeypatch.setattr(testdata, "_parallel", lambda spec, workers: workers > 1)
    make_testdata(tmp_path / "many", spec, workers=2)
    assert tree_md5(tmp_path / "one") == tree_md5(tmp_path / "many")
    site = tmp_path / "site"
    shutil.copytree(tmp_path / "one" / "first", site)
    sync_tree(site, spec, workers=2)
    assert tree_md5(site) == tree_md5(tmp_path / "one" / "second")


@pytest.mark.parametrize("spec", [
    Spec(persons=10, files_per_person=20, size=64, seed=5),
    Spec(persons=6, files_per_person=15, size=64, seed=11, change_fraction=0.3),
    Spec(persons=8, files_per_person=10, size=256),
    Spec(persons=8, files_per_person=12, size=256, seed=3),
], ids=["run", "review", "notebook", "report"])
def test_second_snapshot_gives_every_change_kind(spec, tmp_path):
    make_testdata(tmp_path / "td", spec)
    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    shutil.copytree(tmp_path / "td" / "first", site)
    first = run_site(site, db)
    sync_tree(site, spec)
    second = run_site(site, db)
    assert all(second.counts[kind] > 0 for kind in ("added", "removed", "replaced", "renamed")), second.counts
    for result in (first, second):
        assert result.findings is not None
        assert result.findings.filter(pl.col("severity") != "info").height == 0
        assert int(result.exit_code) == 0


def test_dicom_headers_agree_with_their_names(made):
    import pydicom
    from pydicom import config

    spec, out, _counts = made
    paths = sorted(out.glob("*/*/Images/*/*/*.dcm"))
    assert paths or spec.files_per_person < 5
    modalities = set()
    old_mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for path in paths:
                ds = pydicom.dcmread(path)
                name = DICOM_NAME.match(path.name)
                assert name, path.name
                person = path.relative_to(out).parts[1]
                assert ds.PatientID == name["pid"] == person
                assert ds.Modality == name["mod"]
                assert ds.SeriesNumber == int(name["series"]) and ds.InstanceNumber == int(name["inst"])
                assert (ds.AcquisitionDate, ds.AcquisitionTime) == (name["date"], name["time"])
                assert ds.StudyDate <= ds.AcquisitionDate
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
                assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
                assert ds.SOPClassUID.name == {"CT": "CT Image Storage", "MR": "MR Image Storage"}[ds.Modality]
                assert all(uid.is_valid for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID))
                assert ds.pixel_array.shape == (ds.Rows, ds.Columns) and ds.Rows * ds.Columns >= 64
                modalities.add(ds.Modality)
    finally:
        config.settings.reading_validation_mode = old_mode
    assert modalities == {"CT", "MR"} or spec.files_per_person < 40


def test_dicom_is_padded_to_about_size(tmp_path):
    spec = Spec(persons=1, files_per_person=9, size=300_001)
    make_testdata(tmp_path, spec)
    (path,) = (tmp_path / "first").glob("*/Images/*/*/*.dcm")
    assert spec.size - 2 * 1024 <= path.stat().st_size <= spec.size


def test_wfdb_records_read_with_wfdb(made):
    import wfdb

    spec, out, _counts = made
    headers = sorted(out.glob("*/*/Waveforms/*/*.hea"))
    assert headers or spec.files_per_person < 7
    for hea in headers:
        record = str(hea.with_suffix(""))
        header = wfdb.rdheader(record)
        assert header.record_name == hea.stem == hea.parent.name
        assert header.file_name == [hea.stem + ".dat"] and header.fmt == ["16"]
        assert hea.with_suffix(".dat").stat().st_size == 2 * header.sig_len
        assert f"{header.base_date:%Y%m%d}_{header.base_time:%H%M%S}" == hea.stem.split("_", 1)[1]
    for hea in headers[:5]:
        signal = wfdb.rdrecord(str(hea.with_suffix("")), physical=False)
        (checksum,), (expected,) = signal.checksum, signal.calc_checksum()
        assert (checksum - expected) % 65536 == 0  # WFDB writes it signed, wfdb computes it unsigned
        assert signal.init_value == list(signal.d_signal[0])
    for records in out.glob("*/*/Waveforms/RECORDS"):
        listed = records.read_text().split()
        assert listed == sorted(h.stem for h in records.parent.glob("*/*.hea"))


@pytest.mark.parametrize("size", [0, 1, 2, 9])
def test_sizes_below_the_minimum_still_write_a_site(size, tmp_path):
    spec = Spec(persons=2, files_per_person=12, size=size)
    assert make_testdata(tmp_path, spec)[0] == 2 * 12 + SITE_FILES
    findings = validate(tmp_path / "first")
    assert findings.filter(pl.col("severity") == "error").height == 0
