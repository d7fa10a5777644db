"""Invariants over random paths and trees (hypothesis) that test_property.py does not hold.

Classification (classify.py): for any path it never raises, the person folder it names is the path's first folder,
the session, segment, duration and waveform or image category it names are parts of the path, a path either fits a
layout or has a reason, and a path is classified alike alone, among others, and in batches.

Shards (scan.shard_of, pipeline.scan_shard): for random trees and N in 1..7, the shards' listings are disjoint,
together the whole tree, each file in the shard shard_of says, and their merge commits the tree and the problems of
a whole-site run; over several nights (test_property.py's richer edits), merged shards commit the change sets of
whole-site runs.

The upload ledger: after runs and uploads in any order (edits no run saw before an upload too), the ledger's confirmed
files are the container's, and `verify` names of each version exactly the files the ledger holds neither as sent nor
as superseded.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings as hyp_settings, strategies as st

from chorus_batch import classify as classify_module
from chorus_batch.classify import classify
from chorus_batch.frames import CLASSIFIED_SCHEMA
from test_property import rich_op

# --- Classification -----------------------------------------------------------------------------------------------

_PERSONS = ["000001", "1001", "a b", "é", "OMOP", "omop", "Metadata", "Waveforms", "Images"]
_FOLDERS = ["Waveforms", "waveforms", "Images", "images", "Metadata", "Telemetry", "EEG", "eeg", "CT", "S1"]
_STAMPS = ["20200101_101010", "20201301_101010", "20200101_250000", "2020_1010"]
_FREE = st.text(alphabet=st.sampled_from(list("ab0_.-/ é\u4e2d\n\tRECORDS")), min_size=1, max_size=6).filter(
    lambda s: "/" not in s)


@st.composite
def _file_name(draw) -> str:
    """A name built from the pieces the layouts look for: person ids, stamps, durations, segments, extensions."""
    pieces = draw(st.lists(st.one_of(st.sampled_from(_PERSONS[:4] + ["S1", "ACC1", "RECORDS"]), st.sampled_from(_STAMPS),
                                      st.sampled_from(["60", "3600.5", "0001", "x"]), _FREE), min_size=1, max_size=4))
    sep = draw(st.sampled_from(["_", "", "-"]))
    ext = draw(st.sampled_from(["", ".dat", ".hea", ".dcm", ".DCM", ".csv", ".gz"]))
    name = sep.join(pieces) + ext
    return name or "x"


_SEGMENT = st.one_of(st.sampled_from(_PERSONS + _FOLDERS), _FREE, _file_name())
_PATH = st.one_of(
    st.lists(_SEGMENT, min_size=1, max_size=6).map("/".join),
    st.tuples(st.sampled_from(_PERSONS), st.sampled_from(_FOLDERS), st.lists(_SEGMENT, max_size=3),
              _file_name()).map(lambda t: "/".join([t[0], t[1], *t[2], t[3]])),
)
_MODALITIES = {"OMOP", "Metadata", "Waveforms", "Images", "Other"}


def _classified(paths: list[str]) -> list[dict]:
    return classify(pl.DataFrame({"srcfile": paths}, schema={"srcfile": pl.String})).rows(named=True)


def check_row(row: dict) -> None:
    path = row["srcfile"]
    parts = path.split("/")
    assert row["modality"] in _MODALITIES, row
    assert row["person_id"] is None or row["person_id"] == parts[0], row
    for field in ("session_id", "segment"):
        assert row[field] is None or row[field] in path, (field, row)
    if row["category"] is not None:
        assert row["category"].lower() in {p.lower() for p in parts}, row
    if row["duration_s"] is not None:
        assert any(float(m) == row["duration_s"] for m in re.findall(r"\d+(?:\.\d+)?", path)), row
    # a path fits a layout (no reason) or has a reason (and no layout)
    assert (row["layout"] is None) == (row["parse_error"] is not None), row
    if row["start_date"] is not None:
        assert row["start_date"].replace("-", "") in path and row["start_time"].replace(":", "") in path, row


@given(st.lists(_PATH, min_size=1, max_size=12))
@example(["000001/Waveforms/Telemetry/S1/S1.dat", "000001/Waveforms/000001_20200101_101010_60.dat",
          "000001/Images/CT/ACC1/SE1/0001.dcm", "OMOP/person.csv", "stray.txt", "1001/waveforms/eeg/RECORDS"])
@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_classify_names_parts_of_the_path_and_each_path_alike_alone_or_among_others(paths):
    together = _classified(paths)
    assert [row["srcfile"] for row in together] == paths
    assert set(together[0]) == {"srcfile", *CLASSIFIED_SCHEMA}
    for row in together:
        check_row(row)
    # a path is classified by itself alone: not by the others in its frame, nor by where the batches split
    assert [_classified([p])[0] for p in paths] == together
    saved, classify_module.BATCH_ROWS = classify_module.BATCH_ROWS, 2
    try:
        assert _classified(paths) == together
    finally:
        classify_module.BATCH_ROWS = saved


# --- Shards -------------------------------------------------------------------------------------------------------

_TOPS = ["OMOP", "omop", "Metadata", "000001", "000002", "1001", "a b", "é", "e\u0301", "\u4e2d", "Ab", "aB"]
_TREE = st.dictionaries(
    st.tuples(st.one_of(st.none(), st.sampled_from(_TOPS)), st.sampled_from(["x.dat", "Waveforms/S1/S1.dat",
                                                                             "Images/y.dcm", "z z.csv"]))
    .map(lambda t: t[1].split("/")[-1] if t[0] is None else f"{t[0]}/{t[1]}"),
    st.sampled_from([b"", b"a", b"bb"]), min_size=1, max_size=12)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # (a name that is not UTF-8 on disk: os gives it with surrogate escapes)
        return False
    return True


@given(_TREE, st.integers(1, 7), st.lists(st.sampled_from([b"\xff\xfe/f.dat", b"x\xe9y/f.dat", b"ok/f\xff.dat"]),
                                           max_size=2, unique=True))
@hyp_settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_shards_list_the_tree_once_each_file_in_its_shard_and_merge_to_it(tree, n, not_utf8):
    """... and the merge records the problems (names that are not UTF-8, each met by every shard that walks the root)
    once each, as a run of the whole site does."""
    from chorus_batch.pipeline import scan_shard
    from chorus_batch.scan import ScanResult, shard_of
    from conftest import current_rows, query, run_site, settings, tree_md5, write

    work = Path(tempfile.mkdtemp(prefix="chorus-shards-"))
    try:
        site, db, staging = work / "site", work / "m.sqlite", work / "staging"
        for rel, data in tree.items():
            write(site, rel, data)
        for raw in not_utf8:
            folder, name = raw.rsplit(b"/", 1)
            os.makedirs(os.path.join(os.fsencode(site), folder), exist_ok=True)
            Path(os.fsdecode(os.path.join(os.fsencode(site), folder, name))).write_bytes(b"q")
        expected = {rel: md5 for rel, md5 in tree_md5(site).items() if _utf8(rel)}
        seen: dict[str, int] = {}
        for k in range(n):
            scan_shard(settings(site, db, shard=f"{k}/{n}", staging=str(staging)))
            listed = ScanResult.read(staging / f"shard-{k}-of-{n}").files["srcfile"]
            for path in listed.to_list():
                assert path not in seen, f"{path} listed by shards {seen[path]} and {k} of {n}"
                seen[path] = k
            assert (shard_of(listed, n) == k).all(), (k, n, listed.to_list())
        assert set(seen) == set(expected)
        result = run_site(site, db, merge=str(staging))
        assert result.label and current_rows(db) == expected
        whole = work / "whole.sqlite"
        run_site(site, whole)
        errors = "SELECT srcfile, kind, message FROM scan_errors ORDER BY srcfile, kind"
        assert query(db, errors) == query(whole, errors)
        assert query(db, "SELECT n_errors, n_files FROM versions") == query(whole, "SELECT n_errors, n_files FROM versions")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- The upload ledger --------------------------------------------------------------------------------------------

_UPLOAD_PATHS = ["OMOP/person.csv", "000001/Waveforms/a.dat", "000001/Waveforms/A.dat", "000002/Waveforms/a.dat",
                 "000002/Images/x.dcm"]
_EDIT = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(_UPLOAD_PATHS), st.sampled_from([b"a", b"b", b"ab", b""])),
    st.tuples(st.just("delete"), st.sampled_from(_UPLOAD_PATHS), st.none()),
    st.tuples(st.just("move"), st.sampled_from(_UPLOAD_PATHS), st.sampled_from(_UPLOAD_PATHS)),
)
# edits of the site, then a run, an upload or both (an upload after edits that no run saw: files changed since)
_UPLOAD_STEPS = st.lists(st.tuples(st.lists(_EDIT, max_size=3), st.sampled_from(["run", "upload", "run upload"])),
                         min_size=2, max_size=4).map(
    lambda nights: [step for edits, then in nights for step in [*edits, *((w, None, None) for w in then.split())]])


@given(_UPLOAD_STEPS)
# a file renamed by a later version before its first was sent: superseded in the first, sent with the second
@example([("write", "OMOP/person.csv", b"a"), ("run", None, None), ("delete", "OMOP/person.csv", None),
          ("write", "000002/Images/x.dcm", b"a"), ("run", None, None), ("upload", None, None)])
@hyp_settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
def test_after_runs_and_uploads_in_any_order_verify_says_what_the_ledger_holds(azurite, steps):
    import json

    from chorus_batch.store.uploads import CONFIRMED, FINAL_NOT_SENT, SUBMITTED
    from conftest import cli, query, write
    from test_upload import AZURE_VARS

    work = Path(tempfile.mkdtemp(prefix="chorus-ledger-"))
    try:
        site, db = work / "site", work / "m.sqlite"
        site.mkdir()
        container = azurite.new_container("central")
        client = azurite.service_client().get_container_client(container)
        env = {name: "" for name in AZURE_VARS} | {
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "CHORUS_BATCH_RETRY_BASE_S": "0.01",
            "CHORUS_BATCH_RETRY_DEADLINE_S": "3", "CHORUS_BATCH_CACHE_DIR": str(work / "cache")}
        uploaded = False
        for kind, rel, arg in steps:
            if kind == "write":
                write(site, rel, arg)
            elif kind == "delete":
                (site / rel).unlink(missing_ok=True)
            elif kind == "move" and (site / rel).is_file() and not (site / arg).exists():
                data = (site / rel).read_bytes()
                (site / rel).unlink()
                write(site, arg, data)
            elif kind == "run":
                out = cli("run", "--site", str(site), "--db", str(db), "--workers", "1", "--no-validate",
                          "--max-delete", "all")
                assert out.returncode in (0, 1, 3), out.stdout + out.stderr
            elif kind == "upload" and db.exists():
                out = cli("upload", "--db", str(db), "--to", f"az://{container}/", "--workers", "2", env=env)
                assert out.returncode in (0, 1), out.stdout + out.stderr
                uploaded = True
        if not uploaded or not db.exists():
            return
        # the ledger's confirmed files are exactly the files the container holds, under their version
        confirmed = f"state IN {CONFIRMED}"
        ledger = {dest.split("/", 3)[3] for (dest,) in query(db, f"SELECT destination FROM uploads WHERE {confirmed}")}
        assert ledger == {b.name for b in client.list_blobs() if "/_manifest/" not in b.name}
        out = cli("verify", "--db", str(db), "--to", f"az://{container}/", "--all", "--json", env=env)
        said = json.loads(out.stdout)
        # of each version an upload saw, verify names the files its change set sends that the ledger does not hold
        # as sent or as no longer to send (superseded by a later version before it was sent)
        done = f"state IN {CONFIRMED + FINAL_NOT_SENT}"
        missing = dict(query(db, f"SELECT c.version, count(*) FROM changes c WHERE c.change IN {SUBMITTED} "
                                 "AND c.version IN (SELECT version FROM uploads) AND NOT EXISTS (SELECT 1 FROM uploads u "
                                 f"WHERE u.version = c.version AND u.file_id = c.file_id AND u.{done}) GROUP BY c.version"))
        named = {row["version"]: row["not_uploaded"] for row in said["not_uploaded_yet"]}
        seen = {version for (version,) in query(db, "SELECT DISTINCT version FROM uploads")}
        assert {v: n for v, n in named.items() if v in seen} == missing, said
        # versions no upload saw (committed after the last one): `--all` names them too, as upload sends them next; a
        # file a later version changed again is no longer to send (superseded), so only the latest is named whole
        unseen = dict(query(db, f"SELECT version, count(*) FROM changes WHERE change IN {SUBMITTED} "
                                "AND version NOT IN (SELECT version FROM uploads) GROUP BY version"))
        later = {v: n for v, n in named.items() if v not in seen}
        assert all(v in unseen and n <= unseen[v] for v, n in later.items()), (later, unseen)
        latest = query(db, "SELECT max(label) FROM versions")[0][0]
        if latest in unseen:
            assert later.get(latest) == unseen[latest], (later, unseen)
        assert out.returncode == (1 if missing or later else 0), out.stdout + out.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


@given(st.lists(st.lists(rich_op, min_size=1, max_size=4), min_size=2, max_size=3),
       st.integers(2, 5))
@hyp_settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_history_committed_by_merged_shards_has_the_change_sets_of_whole_site_runs(history, n):
    """Moves between persons (between shards), swaps, case-only renames, copies, a file turned folder: each night's
    shards merged commit what a run of the whole site commits (the previous rows read partition by partition)."""
    from chorus_batch.pipeline import scan_shard
    from conftest import current_rows, query, run_site, settings, tree_md5
    from test_property import apply_rich  # (the richer nights of test_property.py)

    work = Path(tempfile.mkdtemp(prefix="chorus-shard-history-"))
    try:
        site, sharded, whole = work / "site", work / "sharded.sqlite", work / "whole.sqlite"
        site.mkdir()
        for night, ops in enumerate(history):
            for op in ops:
                apply_rich(site, op)
            staging = work / f"staging-{night}"
            for k in range(n):
                scan_shard(settings(site, sharded, shard=f"{k}/{n}", staging=str(staging), max_delete="all"))
            run_site(site, sharded, merge=str(staging), max_delete="all")
            run_site(site, whole, max_delete="all")
            assert current_rows(sharded) == tree_md5(site)
            counts = "SELECT n_added, n_removed, n_replaced, n_renamed, n_unchanged, n_files FROM versions ORDER BY label"
            assert query(sharded, counts) == query(whole, counts)
            changes = "SELECT change, srcfile, old_srcfile FROM changes ORDER BY change, srcfile, old_srcfile"
            assert query(sharded, changes) == query(whole, changes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
