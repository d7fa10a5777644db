"""Parquet snapshots (`run --parquet DIR`): typed as the manifest, complete or not taken, backfilled, and equal to
the manifest's rows of their version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from chorus_batch.frames import schema_of
from chorus_batch.review import open_manifest
from chorus_batch.store import Manifest
from chorus_batch.store.snapshots import has_snapshot, part_schemas
from conftest import cli, paused, query, run_site, write


def three_versions(site: Path, db: Path, snaps: Path | None) -> list[str]:
    """v1 without a parse error, v2 with one (a file at the site root: parse_error is text only there), v3."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Waveforms/Telemetry/1000/1000.hea", b"1000 1 250 10\n")
    labels = [run_site(site, db, parquet=snaps and str(snaps), validate_site=False, version_label="v1").label]
    write(site, "stray.bin", b"x")
    labels.append(run_site(site, db, parquet=snaps and str(snaps), validate_site=False, version_label="v2").label)
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    labels.append(run_site(site, db, parquet=snaps and str(snaps), validate_site=False, version_label="v3").label)
    return labels


def test_snapshots_of_every_version_have_the_manifests_types_and_scan_together(site, tmp_path):
    """A column null in one version was written as Int64 there and as text in another: `pl.scan_parquet` of the
    folder failed ('data type mismatch for column parse_error'), and `history --db DIR` of a path was an internal
    error (DuckDB could not cast the text to BIGINT)."""
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    three_versions(site, db, snaps)
    for name, schema in part_schemas().items():
        for part in sorted(snaps.glob(f"version=*/{name}.parquet")):
            assert dict(pl.read_parquet_schema(part)) == dict(schema), part
        together = pl.scan_parquet(snaps / "version=*" / f"{name}.parquet", hive_partitioning=True).collect()
        assert together.height >= 0
    rows = pl.scan_parquet(snaps / "version=*" / "manifest.parquet", hive_partitioning=True).collect()
    assert rows.filter(pl.col("srcfile") == "stray.bin")["parse_error"].is_not_null().all()
    assert rows.schema["size"] == pl.Int64 and rows.schema["time_valid"] == rows.schema["time_invalid"] == pl.String
    done = cli("history", "stray.bin", "--db", str(snaps), "--json")
    assert done.returncode == 0, done.stderr
    assert [row["srcfile"] for row in json.loads(done.stdout)] == ["stray.bin"]
    done = cli("history", "OMOP/person.csv", "--db", str(snaps), "--json")
    assert done.returncode == 0, done.stderr
    assert [row["version_valid"] for row in json.loads(done.stdout)] == ["v1", "v3"]


def test_missing_or_incomplete_snapshots_are_written_by_the_next_run(site, tmp_path):
    """Snapshots switched on after some versions, or a run killed after its commit but before or during its
    snapshot, left those versions without one for good (only the version a run committed was written)."""
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    labels = three_versions(site, db, None)  # no snapshots yet
    run_site(site, db, parquet=str(snaps), validate_site=False)  # nothing changed: no new version
    manifest = Manifest(db)
    versions = {row["label"]: row for row in manifest.versions().iter_rows(named=True)}
    assert all(has_snapshot(label, str(snaps), versions[label]) for label in labels)
    parquet, sqlite = open_manifest(snaps), open_manifest(db)
    for label in labels:  # each backfilled snapshot holds its own version's rows, not the current ones
        assert parquet.files(label)["srcfile"].to_list() == sqlite.files(label)["srcfile"].to_list()
        assert parquet.files(label)["md5"].to_list() == sqlite.files(label)["md5"].to_list()

    # a snapshot half written (truncated file list), one part missing: not snapshots, written again
    part = snaps / "version=v1" / "manifest.parquet"
    part.write_bytes(part.read_bytes()[:100])
    (snaps / "version=v2" / "findings.parquet").unlink()
    assert not has_snapshot("v1", str(snaps)) and not has_snapshot("v2", str(snaps))
    run_site(site, db, parquet=str(snaps), validate_site=False)
    assert all(has_snapshot(label, str(snaps), versions[label]) for label in labels)
    assert open_manifest(snaps).files("v1")["srcfile"].to_list() == sqlite.files("v1")["srcfile"].to_list()


def test_a_snapshot_with_the_wrong_row_count_is_not_taken_for_complete(site, tmp_path):
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    three_versions(site, db, snaps)
    versions = {row["label"]: row for row in Manifest(db).versions().iter_rows(named=True)}
    part = snaps / "version=v3" / "manifest.parquet"
    pl.read_parquet(part).head(1).write_parquet(part)  # readable, typed, but not all the version's files
    assert not has_snapshot("v3", str(snaps), versions["v3"])
    run_site(site, db, parquet=str(snaps), validate_site=False)
    assert has_snapshot("v3", str(snaps), versions["v3"])


def test_a_reader_never_takes_a_version_whose_file_list_is_not_written_yet(site, tmp_path):
    """The parts are written one by one: a reader that opened the folder meanwhile took a version with a file list
    but no change set ('the snapshot of version ... has no changes.parquet'). The file list is written last, and
    a version is read only once it is there."""
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    three_versions(site, db, snaps)
    (snaps / "version=v3" / "manifest.parquet").unlink()  # as a run still writing v3 leaves it: parts, and
    pl.read_parquet(snaps / "versions.parquet").filter(pl.col("label") != "v3").write_parquet(  # v3 not listed yet
        snaps / "versions.parquet")
    reader = open_manifest(snaps)
    assert reader.latest() == "v2"
    assert reader.history("OMOP/person.csv")["version_valid"].to_list() == ["v1"]
    assert reader.diff("v1").height == 1


def comparable(frame: pl.DataFrame) -> pl.DataFrame:
    # what a version's rows are: their identity, content and validity (mtime, verification, root and classification
    # are updated in place on the manifest's rows: a snapshot holds them as they were then)
    return frame.select("file_id", "srcfile", "md5", "size", "version_valid", "version_invalid").sort("file_id")


@hsettings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(st.tuples(st.sampled_from(["add", "edit", "remove", "rename", "touch"]),
                                   st.integers(0, 5)), min_size=1, max_size=4), min_size=1, max_size=4),
       st.integers(0, 3))
def test_each_versions_snapshot_equals_the_manifests_rows_of_that_version(tmp_path_factory, steps, snapshots_from):
    """Random sequences of tree changes, snapshots switched on at a random step (the versions before it are
    backfilled): each version's snapshot holds the rows the manifest holds valid at that version."""
    base = tmp_path_factory.mktemp("prop")
    site, db, snaps = base / "site", base / "m.sqlite", base / "snaps"
    write(site, "OMOP/person.csv", b"person_id\n")
    names = [f"OMOP/t{i}.csv" for i in range(6)]
    labels = []
    for n, step in enumerate(steps):
        for op, i in step:
            path = site / names[i]
            if op == "add" or (op == "edit" and path.exists()):
                write(site, names[i], f"{n} {op} {i}".encode())
            elif op == "remove" and path.exists():
                path.unlink()
            elif op == "rename" and path.exists():
                target = site / names[(i + 1) % 6]
                if not target.exists():
                    path.rename(target)
            elif op == "touch" and path.exists():
                os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        parquet_dir = str(snaps) if n >= min(snapshots_from, len(steps) - 1) else None
        result = run_site(site, db, parquet=parquet_dir, validate_site=False, version_label=f"v{n:02d}")
        if result.label is not None and result.label not in labels:
            labels.append(result.label)
    sqlite, parquet = open_manifest(db), open_manifest(snaps)
    assert parquet.versions()["label"].to_list() == labels
    manifest = Manifest(db)
    for label in labels:
        valid = manifest.query_frame(
            "SELECT * FROM source_files WHERE version_valid <= ? AND (version_invalid IS NULL OR version_invalid > ?)",
            (label, label), schema=schema_of("source_files"))
        assert comparable(parquet.files(label)).equals(comparable(valid)), label
        assert comparable(sqlite.files(label)).equals(comparable(valid)), label


def test_readers_open_while_a_run_writes_its_snapshot_see_a_whole_version(site, tmp_path):
    """A run paused (then killed) after its commit, halfway through its snapshot: a reader of the snapshot folder
    sees the previous version whole (it took the version being written, whose change set was not there yet), a
    reader of the manifest the committed one; the next run writes the snapshot the killed one left half."""
    import subprocess
    import sys

    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    three_versions(site, db, snaps)
    write(site, "OMOP/visit_occurrence.csv", b"visit_occurrence_id\n1\n")
    env = {**os.environ, "CHORUS_BATCH_TEST_PAUSE": "snapshot"}
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "-q", "--no-validate", "--site", str(site),
                             "--db", str(db), "--parquet", str(snaps), "--version", "v4"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        while "test pause at snapshot" not in (line := proc.stderr.readline()):
            said.append(line)
            assert line, f"the run ended before its snapshot: {''.join(said)}"
        assert (snaps / "version=v4").is_dir()  # part of it written
        parquet = open_manifest(snaps)
        assert parquet.latest() == "v3"
        assert parquet.diff("v1", "v3").height == 2 and parquet.changes("v3").height == 1
        assert parquet.history("OMOP/visit_occurrence.csv").height == 0
        sqlite = open_manifest(db)
        assert sqlite.latest() == "v4" and "OMOP/visit_occurrence.csv" in sqlite.files("v4")["srcfile"].to_list()
        done = cli("files", "--db", str(snaps), "--json")
        assert done.returncode == 0, done.stderr
        assert "OMOP/visit_occurrence.csv" not in {row["srcfile"] for row in json.loads(done.stdout)}
    finally:
        proc.kill()
        proc.wait()
    assert not has_snapshot("v4", str(snaps))
    run_site(site, db, parquet=str(snaps), validate_site=False)  # commits nothing, writes v4's snapshot
    assert open_manifest(snaps).latest() == "v4"
    assert open_manifest(snaps).files("v4")["srcfile"].to_list() == open_manifest(db).files("v4")["srcfile"].to_list()


def test_a_manifest_reader_opened_before_a_run_commits_still_reads_its_version_whole(site, tmp_path):
    """A notebook's reader knows the versions it opened with: asked for the latest of them after a run committed
    the next, `files` read the manifest's current rows (the new version's) under the old label: a file removed
    since was missing, one added since was listed."""
    db = tmp_path / "m.sqlite"
    three_versions(site, db, None)
    reader = open_manifest(db)
    v3 = reader.files().select("file_id", "srcfile", "md5")
    assert reader.latest() == "v3"
    (site / "OMOP" / "person.csv").unlink()
    write(site, "OMOP/visit_occurrence.csv", b"visit_occurrence_id\n1\n")
    assert run_site(site, db, validate_site=False, version_label="v4").label == "v4"
    reader._file_set = None  # (the frame kept of the last version asked: ask the manifest again)
    assert reader.files().select("file_id", "srcfile", "md5").equals(v3)
    assert reader.files("v3").select("file_id", "srcfile", "md5").equals(v3)
    assert reader.files(modality="OMOP")["srcfile"].to_list() == ["OMOP/person.csv"]
    again = open_manifest(db)
    assert again.files()["srcfile"].to_list() == again.files("v4")["srcfile"].to_list()
    assert "OMOP/visit_occurrence.csv" in again.files()["srcfile"].to_list()


def test_a_marked_snapshot_is_known_whole_without_reading_its_parts(site, tmp_path, monkeypatch):
    """Each run asks every version's snapshot whether it is whole: reading five Parquet footers and schemas a version
    grew with a site's versions (nightly runs: thousands). The mark written after the parts answers with a few
    stats; a snapshot without it (an older release's) is read whole once, then marked; a part changed since is
    read whole."""
    from chorus_batch.store import snapshots

    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    labels = three_versions(site, db, snaps)
    versions = {row["label"]: row for row in Manifest(db).versions().iter_rows(named=True)}
    assert all((snaps / f"version={label}" / snapshots.SNAPSHOT_MARK).is_file() for label in labels)
    read = []
    real = snapshots._part_rows
    monkeypatch.setattr(snapshots, "_part_rows", lambda part, schema: read.append(part) or real(part, schema))
    assert all(has_snapshot(label, str(snaps), versions[label]) for label in labels)
    assert read == []

    (snaps / "version=v1" / snapshots.SNAPSHOT_MARK).unlink()  # as an older release left it
    assert has_snapshot("v1", str(snaps), versions["v1"]) and len(read) == len(snapshots.SNAPSHOT_PARTS)
    assert (snaps / "version=v1" / snapshots.SNAPSHOT_MARK).is_file()  # marked now: not read again
    assert has_snapshot("v1", str(snaps), versions["v1"]) and len(read) == len(snapshots.SNAPSHOT_PARTS)


def test_the_run_after_one_killed_in_its_snapshot_says_it_wrote_that_snapshot(site, tmp_path):
    """The next run wrote the snapshot a killed run left incomplete and said only "no changes since version ...;
    nothing committed": a Parquet folder that changed with nothing said."""
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps)).returncode == 0
    write(site, "OMOP/b.csv", b"b")
    proc = paused("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps), at="snapshot")
    proc.kill()
    proc.wait(timeout=30)
    (label,) = [row["label"] for row in Manifest(db).versions().iter_rows(named=True)][-1:]
    assert not has_snapshot(label, str(snaps))
    again = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps))
    assert again.returncode == 0, again.stderr
    assert "nothing committed" in again.stdout
    assert f"wrote the Parquet snapshot of version {label} in {snaps}: it was missing or incomplete" in again.stderr
    assert has_snapshot(label, str(snaps))
    quiet = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps))
    assert "wrote the Parquet snapshot" not in quiet.stderr  # said once, when written


def test_a_snapshot_folder_of_another_manifest_is_refused_before_anything_is_done(site, tmp_path):
    """Two manifests given one --parquet folder (a chorus.toml copied to a second job) overwrote each other's
    versions.parquet run after run, without a word; readers then said one manifest's snapshots were of no version of
    the manifest. The folder knows its manifest (by its first version): another one is refused up front, exit 2,
    nothing made; the manifest itself, a restored copy of it, and a folder of an older release (no owner) are taken."""
    snaps, first, second = tmp_path / "snaps", tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(first), "--parquet", str(snaps)).returncode == 0
    owner = json.loads((snaps / "manifest.json").read_text())
    assert owner["manifest"] == str(first) and owner["first_version"]["label"] == Manifest(first).versions()["label"][0]
    before = sorted(p.name for p in snaps.iterdir()), (snaps / "versions.parquet").read_bytes()
    other = cli("run", "--no-validate", "--site", str(site), "--db", str(second), "--parquet", str(snaps))
    assert other.returncode == 2 and "holds the snapshots of another manifest" in other.stderr, other.stderr
    assert str(first) in other.stderr and "a --parquet folder of its own" in other.stderr
    assert not second.exists() and (sorted(p.name for p in snaps.iterdir()), (snaps / "versions.parquet").read_bytes()) == before
    # the manifest's own next run, and a copy of it (a restored backup), write there as before
    write(site, "OMOP/added.csv", b"x\n")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(first), "--parquet", str(snaps)).returncode == 0
    restored = tmp_path / "restored.sqlite"
    restored.write_bytes(first.read_bytes())
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(restored), "--parquet",
               str(snaps)).returncode == 0
    # a folder written by an earlier release has no owner yet: taken, and claimed by its next snapshot
    (snaps / "manifest.json").unlink()
    write(site, "OMOP/added2.csv", b"y\n")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(first), "--parquet", str(snaps)).returncode == 0
    assert json.loads((snaps / "manifest.json").read_text())["first_version"] == owner["first_version"]


def test_a_snapshot_folder_whose_naming_failed_is_named_by_the_next_run(site, tmp_path, monkeypatch):
    """A run whose manifest.json could not be written (a full disk after its snapshots, a kill just before it) left
    the folder unnamed for good: it was written only by a run that wrote a snapshot, and the next runs, with nothing
    to write, did not name it. Another manifest's run then took the folder, overwrote its versions.parquet, and the
    folder refused its own manifest. Every run names a folder that does not name its manifest yet."""
    import errno

    import pytest

    from chorus_batch.errors import AfterCommitError
    from chorus_batch.store import snapshots

    db, other, snaps = tmp_path / "m.sqlite", tmp_path / "other.sqlite", tmp_path / "snaps"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    real = snapshots.write_private

    def no_room_for_the_name(target, content, **kw):
        if Path(target).name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(target, content, **kw)

    monkeypatch.setattr(snapshots, "write_private", no_room_for_the_name)
    with pytest.raises(AfterCommitError, match="was committed"):
        run_site(site, db, parquet=str(snaps), validate_site=False)
    monkeypatch.setattr(snapshots, "write_private", real)
    assert not (snaps / "manifest.json").exists()
    again = cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps))
    assert again.returncode == 0, again.stderr
    assert json.loads((snaps / "manifest.json").read_text())["manifest"] == str(db)
    listed = (snaps / "versions.parquet").read_bytes()
    refused = cli("run", "--no-validate", "--site", str(site), "--db", str(other), "--parquet", str(snaps))
    assert refused.returncode == 2 and "holds the snapshots of another manifest" in refused.stderr, refused.stderr
    assert (snaps / "versions.parquet").read_bytes() == listed
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet",
               str(snaps)).returncode == 0


def test_a_snapshot_folder_inside_a_folder_of_snapshots_is_refused(site, tmp_path):
    """`--parquet snaps/version=v1` (a path copied from `ls`) wrote a whole folder of snapshots nested in a version's
    snapshot, where neither folder's readers look, and said nothing. Refused up front (exit 2), nothing made."""
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps)).returncode == 0
    inner = next(snaps.glob("version=*"))
    before = sorted(p.name for p in inner.iterdir())
    for nested in (inner, inner / "more"):
        done = cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(nested))
        assert done.returncode == 2 and f"lies inside the folder of snapshots {snaps}" in done.stderr, done.stderr
        assert sorted(p.name for p in inner.iterdir()) == before


def test_a_snapshot_folder_of_a_manifest_started_again_under_its_name_says_so(site, tmp_path):
    """A manifest removed and started again at the same path (or another copied over it), with chorus.toml's
    [manifest] parquet kept: refused (exit 2) as it should be, but it was said as "the snapshots of another manifest
    (/x/m.sqlite, ...), not of /x/m.sqlite": one path named as two manifests. It says the manifest at that path was
    replaced, and how to carry on."""
    snaps, db = tmp_path / "snaps", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps)).returncode == 0
    for name in ("m.sqlite", "m.sqlite-wal", "m.sqlite-shm", "m.sqlite.lock", "m.sqlite.state.parquet"):
        (tmp_path / name).unlink(missing_ok=True)
    again = cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps))
    assert again.returncode == 2, again.stderr
    assert "holds the snapshots of another manifest" not in again.stderr
    assert f"the manifest that was at {db} before" in again.stderr and "no longer there" in again.stderr
    assert f"mv {snaps} {snaps}.old" in again.stderr and not db.exists()
    # a manifest started again without --parquet, then given it: "another one", with its first version
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    later = cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps))
    assert later.returncode == 2 and "the manifest there now is another one (its first version is" in later.stderr


def test_two_manifests_whose_first_versions_share_their_second_are_told_apart_by_their_id(site, tmp_path):
    """A manifest is known to its snapshot folder by its first version (label and commit time, to the second): one
    started again within the second its predecessor's first version was committed in (CI did it) was taken for that
    one, and wrote into its folder. The manifest_id tells them apart; a folder named by an earlier release (no id) is
    still known by the first version, and named with the id at its next snapshot."""
    snaps, db = tmp_path / "snaps", tmp_path / "m.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps)).returncode == 0
    owner_file = snaps / "manifest.json"
    owner = json.loads(owner_file.read_text())
    assert owner["manifest_id"] == Manifest(db).state_identity()[0]
    # the same first version, another manifest's id: as a manifest started again in the same second leaves it
    owner_file.write_text(json.dumps({**owner, "manifest_id": "0" * 32}))
    write(site, "OMOP/more.csv", b"x")
    refused = cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps))
    assert refused.returncode == 2 and "no snapshot was written there" in refused.stderr, refused.stderr
    # an earlier release's owner file (no id): known by the first version, then named with the id
    owner_file.write_text(json.dumps({k: v for k, v in owner.items() if k != "manifest_id"}))
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snaps)).returncode == 0
    assert json.loads(owner_file.read_text())["manifest_id"] == owner["manifest_id"]


def test_a_full_parquet_disk_leaves_no_empty_version_folder(site, tmp_path, small_disk):
    """A --parquet folder on a full disk: the version is committed, its snapshot failed at its first part, and an empty
    version=<label>/ folder was left behind (wtB's round 15). It is taken away; the next run, with room, writes it."""
    from conftest import fill

    db, snaps = tmp_path / "m.sqlite", small_disk / "snaps"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    first = cli("run", "--site", str(site), "--db", str(db), "--parquet", str(snaps), "--no-validate")
    assert first.returncode == 0 and snaps.is_dir(), first.stderr + first.stdout
    before = sorted(p.name for p in snaps.iterdir())
    filler = fill(small_disk)
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    out = cli("run", "--site", str(site), "--db", str(db), "--parquet", str(snaps), "--no-validate")
    assert out.returncode == 3 and "was committed" in out.stderr, (out.returncode, out.stderr)
    assert sorted(p.name for p in snaps.iterdir()) == before, sorted(p.name for p in snaps.iterdir())
    filler.unlink()
    assert cli("run", "--site", str(site), "--db", str(db), "--parquet", str(snaps), "--no-validate").returncode == 0
    latest = Manifest(db).latest_version()
    assert has_snapshot(latest["label"], str(snaps), latest)


def test_a_snapshot_folder_damaged_by_hand_is_refused_by_readers_and_mended_by_the_next_run(site, tmp_path):
    """A version's folder removed, a part cut or replaced by another version's, versions.parquet cut: the readers
    took the folder as it was. `history` said a replaced file never ended (the version that replaced it gone without
    a word), and a cut part was an 'internal error: ComputeError' of polars or DuckDB at whichever question met it;
    a stray file named like a snapshot (version=x/manifest.parquet, not Parquet) failed `history`, which read every
    version=* of the folder. Now the reader names what is wrong (exit 3) and the run it tells of mends it."""
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    three_versions(site, db, snaps)
    whole = {path.relative_to(snaps): path.read_bytes() for path in snaps.rglob("*.parquet")}
    versions = {row["label"]: row for row in Manifest(db).versions().iter_rows(named=True)}

    def refused(said: str) -> None:
        out = cli("history", "OMOP/person.csv", "--db", str(snaps))
        assert out.returncode == 3 and said in out.stderr and "internal error" not in out.stderr, out.stderr
        assert "chorus-batch run --parquet" in out.stderr
        run_site(site, db, parquet=str(snaps), validate_site=False)  # nothing changed: it mends the folder
        assert all(has_snapshot(label, str(snaps), versions[label]) for label in versions)
        assert cli("history", "OMOP/person.csv", "--db", str(snaps)).returncode == 0

    import shutil

    shutil.rmtree(snaps / "version=v2")
    refused("the snapshot of version v2 is not there (versions.parquet lists it)")
    (snaps / "version=v3" / "changes.parquet").write_bytes(whole[Path("version=v3/changes.parquet")][:100])
    refused("v3/changes.parquet cannot be read as written")
    (snaps / "version=v1" / "manifest.parquet").write_bytes(whole[Path("version=v3/manifest.parquet")])
    # (v3's file list over v1's: v1 has one file less)
    refused("v1/manifest.parquet cannot be read as written")
    # saved again from polars or pandas, its rows as they were but a size as float and a column dropped: it was taken,
    # and `history` was an 'internal error: BinderException' of DuckDB (VARCHAR against BIGINT)
    part = snaps / "version=v1" / "manifest.parquet"
    pl.read_parquet(part).with_columns(pl.col("size").cast(pl.Float64)).drop("etag").write_parquet(part)
    refused("v1/manifest.parquet cannot be read as written")
    part = snaps / "version=v3" / "changes.parquet"
    pl.read_parquet(part).with_columns(pl.col("file_id").cast(pl.String)).write_parquet(part)
    refused("v3/changes.parquet cannot be read as written")
    (snaps / "version=v2" / "findings.parquet").unlink()  # (read as no findings at all)
    refused("v2/findings.parquet (removed) cannot be read as written")
    (snaps / "versions.parquet").write_bytes(b"PAR1")
    refused("the table of versions of the Parquet snapshot folder")

    stray = snaps / "version=notes" / "manifest.parquet"  # not a version of the manifest, and not Parquet
    stray.parent.mkdir()
    stray.write_text("x")
    rows = open_manifest(snaps).history("OMOP/person.csv")
    assert rows["version_valid"].to_list() == ["v1", "v3"] and rows["version_invalid"].to_list() == ["v3", None]


def test_two_first_runs_of_two_manifests_given_one_folder_at_once_leave_it_to_one(site, tmp_path):
    """Two manifests' first runs given one --parquet folder at once each found it unclaimed, each wrote its claim over
    the other's, and both wrote their snapshots into it, exit 0: the folder then named one manifest and held the
    other's versions too. The claim of an unclaimed folder is made only where none appeared meanwhile: the second
    run is refused, and says its version stays committed."""
    snaps, first, second = tmp_path / "snaps", tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    late = paused("run", "--no-validate", "--site", str(site), "--db", str(first), "--parquet", str(snaps),
                  "--version", "a1", at="snapshot-claim+6")
    try:
        other = cli("run", "--no-validate", "--site", str(site), "--db", str(second), "--parquet", str(snaps),
                    "--version", "b1")
        assert other.returncode == 0, other.stderr
        _, err = late.communicate(timeout=120)
    finally:
        if late.poll() is None:
            late.kill()
            late.wait()
    assert late.returncode == 3, err  # (after its commit)
    assert "version a1 was committed" in err and "holds the snapshots of another manifest" in err and str(second) in err, err
    # (the next run given that folder is refused as well: "the next run finishes its Parquet snapshot" was untrue)
    assert "the next run finishes" not in err and "given a --parquet folder of this manifest's own finishes its Parquet " \
        "snapshot" in " ".join(err.split()), err
    owner = json.loads((snaps / "manifest.json").read_text())
    assert owner["manifest"] == str(second)
    assert sorted(p.name for p in snaps.glob("version=*")) == ["version=b1"]
    assert Manifest(first).versions()["label"].to_list() == ["a1"]  # committed before the claim, and kept


def test_a_snapshot_folder_refuses_a_time_where_its_manifest_refuses_it_for_edited_commit_times(site, tmp_path):
    """A versions table edited by hand (v2's finished_at moved past v3's) makes the manifest refuse `--as-of` a time
    (it tells the edit from its runs table); its snapshot folder, whose versions.parquet copies the edited times but
    holds no runs, answered the same question with v1, exit 0. versions.parquet now says which times were edited; the
    folder refuses the time as the manifest does, labels still answer, and the times set back clear it at the next run."""
    db, snaps = tmp_path / "m.sqlite", tmp_path / "snaps"
    three_versions(site, db, snaps)
    (v3_at,) = query(db, "SELECT finished_at FROM versions WHERE label = 'v3'")[0]
    (v2_at,) = query(db, "SELECT finished_at FROM versions WHERE label = 'v2'")[0]
    assert cli("files", "--db", str(snaps), "--as-of", v3_at).stdout.startswith("version v3")
    import sqlite3

    def set_v2_time(at: str) -> None:
        con = sqlite3.connect(db)
        with con:
            con.execute("UPDATE versions SET finished_at = ? WHERE label = 'v2'", (at,))
        con.close()

    set_v2_time("2999-01-01T00:00:00Z")
    run_site(site, db, parquet=str(snaps), validate_site=False)  # nothing changed: versions.parquet written again
    for source in (db, snaps):
        out = cli("files", "--db", str(source), "--as-of", v3_at)
        assert out.returncode == 2 and "version" not in out.stdout, (source, out.stdout)
        assert "commit times of the manifest's versions were edited" in out.stderr and "v2 records 2999" in out.stderr
        assert "give a version label" in out.stderr and "Traceback" not in out.stderr
        assert cli("files", "--db", str(source), "--as-of", "v3").stdout.startswith("version v3")
    set_v2_time(v2_at)
    run_site(site, db, parquet=str(snaps), validate_site=False)
    assert cli("files", "--db", str(snaps), "--as-of", v3_at).stdout.startswith("version v3")
