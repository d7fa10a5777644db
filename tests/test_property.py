"""Invariants over random histories of a tree (hypothesis).

After each full-mode run: the current rows equal the tree (path -> MD5 computed
independently), each path has at most one current row, and replaying every
version's change set from an empty manifest gives the same current rows. At the
end, every version reads back (`files --as-of`) as the tree it was taken from, and
the diff between the first and the last version is the trees' own difference.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from chorus_batch import review
from chorus_batch.review import open_manifest
from conftest import current_rows, query, run_site, tree_md5
from test_review import check_diff

PATHS = [
    "OMOP/person.csv",
    "OMOP/visit_occurrence.csv",
    "Metadata/site.json",
    "000001/Waveforms/000001_20200101_101010_60.dat",
    "000001/Waveforms/S1/S1.hea",
    "000001/Images/ST1/SE1/000001_20200101_101010_CT_SE1_0001.dcm",
    "000002/Waveforms/000002_20200102_101010_60.dat",
    "stray.txt",
]
CONTENTS = [b"", b"a", b"b", b"ab", b"zz"]  # few contents, so renames and duplicates happen

mutation = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), st.sampled_from(CONTENTS)),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.just(b"")),
    st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.just("touch"), st.sampled_from(PATHS), st.just(b"")),
)


def apply(root: Path, op: tuple) -> None:
    kind, rel, arg = op
    path = root / rel
    if kind == "write":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(arg)
    elif kind == "delete" and path.exists():
        path.unlink()
    elif kind == "rename" and path.exists() and rel != arg:
        target = root / arg
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    elif kind == "touch" and path.exists():
        t = time.time() + 3
        os.utime(path, (t, t))


def replay(db: Path) -> dict[str, str]:
    """Rebuild the current rows from the change sets alone."""
    md5_of = dict(query(db, "SELECT file_id, md5 FROM source_files"))
    state: dict[str, str] = {}
    for (label,) in query(db, "SELECT label FROM versions ORDER BY label"):
        for change, srcfile, old_srcfile, file_id in query(
            db, "SELECT change, srcfile, old_srcfile, file_id FROM changes WHERE version = ?", (label,)
        ):
            if change == "removed":
                del state[srcfile]
            elif change == "renamed":
                del state[old_srcfile]
                state[srcfile] = md5_of[file_id]
            else:  # added, replaced
                assert (srcfile in state) == (change == "replaced")
                state[srcfile] = md5_of[file_id]
    return state


@hyp_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(mutation, min_size=1, max_size=4), min_size=1, max_size=5))
def test_manifest_follows_the_tree_and_change_sets_replay(history):
    work = Path(tempfile.mkdtemp(prefix="chorus-prop-"))
    try:
        site, db = work / "site", work / "m.sqlite"
        site.mkdir()
        trees: dict[str, dict[str, str]] = {}  # the tree at each committed version
        for step in history:
            for op in step:
                apply(site, op)
            result = run_site(site, db, max_delete="all")  # random histories delete freely
            expected = tree_md5(site)
            if result.label:
                trees[result.label] = expected
            assert current_rows(db) == expected
            assert query(db, "SELECT count(*) FROM (SELECT srcfile FROM source_files WHERE time_invalid IS NULL "
                             "GROUP BY srcfile HAVING count(*) > 1)")[0][0] == 0
            assert replay(db) == expected
        # Time travel: every version reads back as its tree, and any two versions diff as their trees do.
        reader = open_manifest(db)
        labels = sorted(trees)
        for label in labels:
            files = reader.files(label)
            assert dict(zip(files["srcfile"], files["md5"])) == trees[label]
        for a in labels:  # any two versions, either way, not only the ends
            for b in labels:
                check_diff(reader.diff(a, b), trees[a], trees[b])
        # The DuckDB tables a notebook reads (review.ManifestReader.duckdb), filled in slices of 2 file ids
        # here, so that the slices' edges fall inside the data, equal the trees too.
        slice_rows, review.SLICE_ROWS = review.SLICE_ROWS, 2
        try:
            for label in labels:
                con = reader.duckdb(label, compare_to=labels[0])
                assert dict(con.sql("SELECT srcfile, md5 FROM files").fetchall()) == trees[label]
                assert dict(con.sql("SELECT srcfile, md5 FROM base_files").fetchall()) == trees[labels[0]]
                # its view `diff` (computed in DuckDB, for the report and the notebook) is the diff of the two trees
                check_diff(con.sql("SELECT * FROM diff").pl(), trees[labels[0]], trees[label])
                # the change sets up to the version (and compare_to), none of a later one
                assert con.sql("SELECT count(*) FROM changes").fetchall() == query(
                    db, "SELECT count(*) FROM changes WHERE version <= ?", (label,))
        finally:
            review.SLICE_ROWS = slice_rows
            reader.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


_SEGMENT = st.text(alphabet=st.sampled_from(list("ab0/.-_ é\u00ff\u4e2d\U0001f600")), min_size=1, max_size=4).filter(
    lambda s: "/" not in s)


@given(paths=st.lists(st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join), max_size=40),
       folders=st.lists(st.lists(_SEGMENT, min_size=1, max_size=3).map(lambda parts: "/".join(parts) + "/"),
                        max_size=8),
       sorted_from=st.sampled_from([1, 100]))
@hyp_settings(max_examples=300, deadline=None)
def test_under_folders_is_starts_with_any_folder(paths, folders, sorted_from):
    """The rows kept under unreadable folders (frames.under_folders, by ranges in the sorted paths from SORTED_FROM
    folders on) are exactly those a starts_with per folder finds: non-ASCII names, folders inside folders, a path
    equal to a folder's name without its '/'."""
    import polars as pl

    from chorus_batch import frames

    paths = paths + [f[:-1] for f in folders] + [f + "x" for f in folders[:2]]
    saved, frames.SORTED_FROM = frames.SORTED_FROM, sorted_from
    try:
        got = frames.under_folders(pl.Series("srcfile", paths, dtype=pl.String), folders).to_list()
    finally:
        frames.SORTED_FROM = saved
    assert got == [any(p.startswith(f) for f in folders) for p in paths]
