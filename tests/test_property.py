"""Invariants over random histories of a tree (hypothesis).

After each full-mode run: the current rows equal the tree (path -> MD5 computed
independently), each path has at most one current row, and replaying every
version's change set from an empty manifest gives the same current rows. At the
end, every version reads back (`files --as-of`) as the tree it was taken from, and
the diff between the first and the last version is the trees' own difference.
Richer nights (moves between persons, swapped contents, case-only renames, a file
replaced by a folder of its name, many copies of one content, `--dry-run` first) add:
the counts add up, consecutive versions diff as the later change set, `history`
tells each file's story; and `--mode append` keeps what it is not told to remove.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings as hyp_settings, strategies as st

from chorus_batch import review
from chorus_batch.review import open_manifest
from conftest import current_rows, query, run_site, tree_md5, write
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


# --- Richer histories: the operations a site's tree goes through between two nights ---------------------------------

RICH_PATHS = [
    "OMOP/person.csv",
    "000001/Waveforms/a.dat",
    "000001/Waveforms/A.dat",  # a case-only rename of a.dat
    "000001/Waveforms/b.dat",
    "000001/Waveforms/a.dat/inner.dat",  # a file replaced by a folder of its name (and back)
    "000002/Waveforms/a.dat",  # moved to another person
    "000002/Images/x.dcm",
    "stray.txt",
]
RICH_CONTENTS = [b"", b"a", b"b", b"ab", b"abc"]  # the same size and another; empty files, which never pair
rich_op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(RICH_PATHS), st.sampled_from(RICH_CONTENTS)),
    st.tuples(st.just("delete"), st.sampled_from(RICH_PATHS), st.none()),
    st.tuples(st.just("move"), st.sampled_from(RICH_PATHS), st.sampled_from(RICH_PATHS)),
    st.tuples(st.just("swap"), st.sampled_from(RICH_PATHS), st.sampled_from(RICH_PATHS)),
    st.tuples(st.just("touch"), st.sampled_from(RICH_PATHS), st.none()),
    st.tuples(st.just("copies"), st.sampled_from(RICH_PATHS), st.none()),  # one content in many files
    st.tuples(st.just("case"), st.sampled_from(RICH_PATHS), st.none()),
)


def _make_room(root: Path, rel: str) -> None:
    """A file at `rel` replaces a folder there, and a file where one of its folders must be."""
    target = root / rel
    if target.is_dir():
        shutil.rmtree(target)
    for parent in reversed(Path(rel).parents[:-1]):
        if (root / parent).is_file():
            (root / parent).unlink()
    target.parent.mkdir(parents=True, exist_ok=True)


def apply_rich(root: Path, op: tuple) -> None:
    kind, rel, arg = op
    path = root / rel
    if kind == "write":
        _make_room(root, rel)
        path.write_bytes(arg)
    elif kind == "delete" and path.is_file():
        path.unlink()
    elif kind == "move" and path.is_file() and rel != arg and not arg.startswith(rel + "/"):
        data = path.read_bytes()
        path.unlink()
        _make_room(root, arg)
        (root / arg).write_bytes(data)
    elif kind == "swap" and path.is_file() and (root / arg).is_file():
        mine, theirs = path.read_bytes(), (root / arg).read_bytes()
        path.write_bytes(theirs)
        (root / arg).write_bytes(mine)
    elif kind == "touch" and path.is_file():
        t = time.time() + 3
        os.utime(path, (t, t))
    elif kind == "copies" and path.is_file():
        data = path.read_bytes()
        for other in RICH_PATHS:
            if not (root / other).exists() and not any((root / p).is_file() for p in Path(other).parents):
                (root / other).parent.mkdir(parents=True, exist_ok=True)
                (root / other).write_bytes(data)
    elif kind == "case" and path.is_file() and not (path.parent / path.name.swapcase()).exists():
        os.rename(path, path.parent / path.name.swapcase())
    for folder, _dirs, _files in sorted(os.walk(root), reverse=True):  # a folder left empty is no file
        if folder != str(root) and not os.listdir(folder):
            os.rmdir(folder)


def check_counts_add_up(db: Path, trees: dict[str, dict[str, str]]) -> None:
    """Each version's counts are its change set's; previous + added - removed = its files; a rename keeps the content
    and ends the old row in the version that starts the new one."""
    before = 0
    for label in sorted(trees):
        (added, removed, replaced, renamed, unchanged, n_files), = query(
            db, "SELECT n_added, n_removed, n_replaced, n_renamed, n_unchanged, n_files FROM versions WHERE label = ?",
            (label,))
        listed = dict(query(db, "SELECT change, count(*) FROM changes WHERE version = ? GROUP BY change", (label,)))
        assert (added, removed, replaced, renamed) == tuple(listed.get(k, 0) for k in review.CHANGE_KINDS), label
        assert before + added - removed == n_files == len(trees[label]), label
        assert unchanged == n_files - added - replaced - renamed, label
        for new_md5, old_md5, ended, began in query(
                db, "SELECT n.md5, o.md5, o.version_invalid, n.version_valid FROM changes c "
                    "JOIN source_files n ON n.file_id = c.file_id JOIN source_files o ON o.file_id = c.old_file_id "
                    "WHERE c.version = ? AND c.change = 'renamed'", (label,)):
            assert new_md5 == old_md5 and ended == began == label
        before = n_files


def check_histories(reader, trees: dict[str, dict[str, str]]) -> None:
    """`history PATH` of every path ever held: at each version, one row of that path valid then, with the tree's
    content (none where the tree had no such file); the path's rows one after the other, each end told."""
    labels = sorted(trees)
    for path in set().union(*trees.values()):
        rows = reader.history(path).rows(named=True)
        for label in labels:
            then = [r for r in rows if r["srcfile"] == path and r["version_valid"] <= label
                    and (r["version_invalid"] is None or r["version_invalid"] > label)]
            assert [r["md5"] for r in then] == ([trees[label][path]] if path in trees[label] else []), (path, label)
        # the path's own rows one after the other (a file renamed into it brings its earlier rows under another
        # path, which may have lived beside the path's own then)
        own = [r for r in rows if r["srcfile"] == path]
        for earlier, later in zip(own, own[1:]):
            assert earlier["version_invalid"] is not None and earlier["version_invalid"] <= later["version_valid"], path
        for row in rows:
            assert (row["version_invalid"] is None) == (row["ended_by"] is None), (path, row)
            assert (row["ended_by"] == "renamed") == (row["renamed_to"] is not None), (path, row)
            assert (row["change"] == "renamed") == (row["old_srcfile"] is not None), (path, row)


def changed(frame) -> list[tuple]:
    return sorted(frame.select("change", "srcfile", "old_srcfile").rows())


@hyp_settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(rich_op, min_size=1, max_size=4), min_size=1, max_size=5), st.booleans())
def test_moves_swaps_copies_case_renames_and_files_turned_folders_keep_time_travel_whole(history, dry_first):
    """Random nights of adds, deletes, edits (same size and not), moves within and between persons, swapped
    contents, many copies of one content, case-only renames, a file replaced by a folder of its name, touches:
    after each run the manifest is the tree; `run --dry-run` before it (when drawn) lists the change set the run
    then commits and writes nothing; every version reads back as its tree; the counts add up; the diff of two
    consecutive versions is the later one's change set (so a diff over several is their composition: any two
    versions diff as their trees); `history` tells each file's story."""
    work = Path(tempfile.mkdtemp(prefix="chorus-prop-"))
    try:
        site, db = work / "site", work / "m.sqlite"
        site.mkdir()
        trees: dict[str, dict[str, str]] = {}
        for step in history:
            for op in step:
                apply_rich(site, op)
            expected = tree_md5(site)
            dry = None
            if dry_first and trees:
                before = query(db, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM versions)")
                dry = run_site(site, db, max_delete="all", validate_site=False, dry_run=True)
                assert query(db, "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM versions)") == before
            result = run_site(site, db, max_delete="all", validate_site=False)
            if dry is not None:
                assert changed(dry.change_set) == changed(result.change_set)
            if result.label:
                trees[result.label] = expected
            assert current_rows(db) == expected
        check_versions(db, trees, stories=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_versions(db: Path, trees: dict[str, dict[str, str]], *, stories: bool = False) -> None:
    """Every version (label -> its tree: path -> MD5) reads back as its tree, the counts add up, and any two versions
    diff as their trees; with `stories`, each version's change set is the diff from the one before, and each path's
    history tells its story (check_histories)."""
    if not trees:
        return
    labels = sorted(trees)
    check_counts_add_up(db, trees)
    reader = open_manifest(db)
    try:
        for label in labels:
            files = reader.files(label)
            assert dict(zip(files["srcfile"], files["md5"])) == trees[label]
        for a in labels:
            for b in labels:
                check_diff(reader.diff(a, b), trees[a], trees[b])
        if stories:
            for older, newer in zip(labels, labels[1:]):
                assert changed(reader.diff(older, newer)) == changed(reader.changes(newer)), newer
            check_histories(reader, trees)
    finally:
        reader.close()


APPEND_PATHS = ["OMOP/person.csv", "000001/Waveforms/a.dat", "000001/Waveforms/b.dat", "000002/Waveforms/a.dat",
                "stray.txt"]
delivery = st.tuples(st.dictionaries(st.sampled_from(APPEND_PATHS), st.sampled_from([b"", b"a", b"b", b"ab"]), max_size=4),
                     st.lists(st.sampled_from(APPEND_PATHS), max_size=3, unique=True))


@hyp_settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(delivery, min_size=1, max_size=4))
def test_append_mode_keeps_what_it_is_not_told_to_remove(deliveries):
    """`--mode append` as the README has it: each night's folder holds new deliveries only; a recorded file it does
    not list is kept, one in the delete list is removed unless the delivery holds it again (a listed path that still
    exists is left alone), and a removed path whose content arrives under another name is a rename. Every version
    reads back as the files it kept, the counts add up, and any two versions diff as those file sets."""
    work = Path(tempfile.mkdtemp(prefix="chorus-prop-"))
    try:
        db = work / "m.sqlite"
        kept: dict[str, str] = {}
        trees: dict[str, dict[str, str]] = {}
        for night, (files, deletes) in enumerate(deliveries):
            site = work / f"delivery{night}"
            site.mkdir()
            for rel, data in files.items():
                write(site, rel, data)
            listed = work / f"delete{night}.txt"
            listed.write_text("".join(f"{path}\n" for path in deletes))
            result = run_site(site, db, mode="append", delete_list=str(listed), max_delete="all", validate_site=False)
            kept.update({rel: hashlib.md5(data).hexdigest() for rel, data in files.items()})
            for path in deletes:
                if path not in files:
                    kept.pop(path, None)
            assert current_rows(db) == kept
            if result.label:
                trees[result.label] = dict(kept)
        check_versions(db, trees)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Exclusion globs: the vectorised regex leaves out exactly what fnmatch says of the file or a folder above it (each name
# for a glob without '/', the path from the root for one with '/'), for any glob of the syntax, not only the examples
_GLOB_TOKENS = st.sampled_from(["a", "b", ".", "/", "*", "?", "[ab]", "[!a]", "[a-b]", "[", "]", "-"])
_PATH_NAMES = st.lists(st.text(alphabet="ab.[]-", min_size=1, max_size=3).filter(lambda n: n not in (".", "..")),
                       min_size=1, max_size=4)


@hyp_settings(max_examples=300, deadline=None)
@given(tokens=st.lists(_GLOB_TOKENS, min_size=1, max_size=6), paths=st.lists(_PATH_NAMES, min_size=1, max_size=8))
def test_an_exclusion_glob_matches_what_fnmatch_says_of_the_file_or_a_folder_above_it(tokens, paths):
    import fnmatch

    import polars as pl
    from hypothesis import assume

    from chorus_batch.exclude import _from_root, glob_problem, glob_to_regex

    pattern = "".join(tokens)
    # ('**/' is any run of folders, none too, as .gitignore: fnmatch has no such thing; a trailing '/': folders only)
    assume(glob_problem(pattern) is None and "**/" not in pattern and not pattern.endswith("/"))
    listed = sorted({"/".join(names) for names in paths})

    def left_out(path: str) -> bool:
        parts = path.split("/")
        if "/" not in pattern:
            return any(fnmatch.fnmatchcase(name, pattern) for name in parts)
        return any(fnmatch.fnmatchcase("/".join(parts[:k]), _from_root(pattern)) for k in range(1, len(parts) + 1))

    series = pl.Series(listed, dtype=pl.String)
    assert series.filter(series.str.contains(glob_to_regex(pattern))).to_list() == [p for p in listed if left_out(p)], \
        pattern


# --- A site's nights as a whole, checked through the reviewer's API after every run ---------------------------------
# (sizes as well as MD5s; the exact rename pairing the README gives; each version's counts and change set; every
# row's validity in versions and times, one after the other per path; content changed at the same size and mtime,
# seen by --rehash; a person folder removed whole; OMOP CSVs rewritten with the same bytes)

NIGHT_PATHS = [
    "OMOP/person.csv",
    "OMOP/visit_occurrence.csv",
    "000001/Waveforms/a.dat",
    "000001/Waveforms/b.dat",
    "000001/Images/x.dcm",
    "000001/Waveforms/a.dat/inner.dat",  # a file replaced by a folder of its name (and back)
    "000002/Waveforms/a.dat",  # the same name in another person: moved between persons
    "000002/Waveforms/c.dat",
    "000002/Images/x.dcm",
    "000003/Waveforms/a.dat",
    "000003/Images/y.dcm",
    "stray.txt",
]
NIGHT_CONTENTS = [b"", b"a", b"b", b"ab", b"ba", b"abc"]  # empty files; the same size with other bytes
PERSONS = ["000001", "000002", "000003"]
night_op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NIGHT_PATHS), st.sampled_from(NIGHT_CONTENTS)),
    st.tuples(st.just("delete"), st.sampled_from(NIGHT_PATHS), st.none()),
    st.tuples(st.just("move"), st.sampled_from(NIGHT_PATHS), st.sampled_from(NIGHT_PATHS)),
    st.tuples(st.just("copy"), st.sampled_from(NIGHT_PATHS), st.sampled_from(NIGHT_PATHS)),
    st.tuples(st.just("folder"), st.sampled_from(NIGHT_PATHS), st.none()),  # the file becomes <name>/inner.dat
    st.tuples(st.just("many"), st.sampled_from(NIGHT_CONTENTS), st.lists(st.sampled_from(NIGHT_PATHS), max_size=4)),
    st.tuples(st.just("rmperson"), st.sampled_from(PERSONS), st.none()),
    st.tuples(st.just("mvperson"), st.sampled_from(PERSONS), st.sampled_from(PERSONS)),  # a person folder renamed
    st.tuples(st.just("omop"), st.none(), st.none()),  # OMOP CSVs rewritten, the same bytes (a new mtime)
    st.tuples(st.just("touch"), st.sampled_from(NIGHT_PATHS), st.none()),
    st.tuples(st.just("samesize"), st.sampled_from(NIGHT_PATHS), st.none()),  # other bytes, size and mtime kept
)


def apply_night(root: Path, op: tuple) -> bool:
    """Apply one change to the tree; True if it changed bytes behind an unchanged size and mtime (a --rehash run)."""
    kind, rel, arg = op
    if kind == "many":  # one content at several paths at once
        for other in arg:
            apply_night(root, ("write", other, rel))
        return False
    path = root / rel if rel else root
    if kind == "write":
        _make_room(root, rel)
        path.write_bytes(arg)
    elif kind == "delete" and path.is_file():
        path.unlink()
    elif kind in ("move", "copy") and path.is_file() and rel != arg and not arg.startswith(rel + "/"):
        data = path.read_bytes()
        if kind == "move":
            path.unlink()
        _make_room(root, arg)
        (root / arg).write_bytes(data)
    elif kind == "folder" and path.is_file():
        data = path.read_bytes()
        path.unlink()
        write(root, rel + "/inner.dat", data)
    elif kind == "rmperson" and path.is_dir():
        shutil.rmtree(path)
    elif kind == "mvperson" and path.is_dir() and rel != arg:
        if (root / arg).exists():
            shutil.rmtree(root / arg)
        os.rename(path, root / arg)
    elif kind == "omop":
        for csv in sorted((root / "OMOP").glob("*.csv")):
            data = csv.read_bytes()
            csv.write_bytes(data)
            t = time.time() + 5
            os.utime(csv, (t, t))
    elif kind == "touch" and path.is_file():
        t = time.time() + 3
        os.utime(path, (t, t))
    elif kind == "samesize" and path.is_file() and path.stat().st_size:
        before = path.stat()
        path.write_bytes(bytes(b ^ 1 for b in path.read_bytes()))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return True
    for folder, _dirs, _files in sorted(os.walk(root), reverse=True):  # a folder left empty is no file
        if folder != str(root) and not os.listdir(folder):
            os.rmdir(folder)
    return False


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (size, MD5) of every file, computed without chorus_batch."""
    return {p: ((root / p).stat().st_size, md5) for p, md5 in tree_md5(root).items()}


def expected_changes(old: dict[str, tuple], new: dict[str, tuple]) -> set[tuple]:
    """(change, srcfile, old_srcfile) of the change from tree `old` to tree `new`, as the README defines it: a path in
    both with other bytes is replaced; a content (MD5 and size, not empty) gone from one path and come to another is
    renamed, paired one to one within a folder first, then within a person's folder, then anywhere, in path order;
    the rest added or removed."""
    out = {("replaced", p, None) for p in old.keys() & new.keys() if old[p] != new[p]}
    gone = sorted(p for p in old if p not in new)
    came = sorted(p for p in new if p not in old)
    contents = {old[p] for p in gone} & {new[p] for p in came}
    left_gone = [p for p in gone if old[p] in contents and old[p][0] > 0]
    left_came = [p for p in came if new[p] in contents and new[p][0] > 0]
    for where in (lambda p: p.rsplit("/", 1)[0] if "/" in p else "",  # the folder
                  lambda p: p.split("/", 1)[0] if "/" in p else "",  # the person's (top) folder
                  lambda p: ""):  # anywhere
        groups: dict[tuple, tuple[list, list]] = {}
        for p in left_gone:
            groups.setdefault((old[p], where(p)), ([], []))[0].append(p)
        for p in left_came:
            groups.setdefault((new[p], where(p)), ([], []))[1].append(p)
        paired_gone, paired_came = set(), set()
        for olds, news in groups.values():
            for o, n in zip(olds, news):
                out.add(("renamed", n, o))
                paired_gone.add(o)
                paired_came.add(n)
        left_gone = [p for p in left_gone if p not in paired_gone]
        left_came = [p for p in left_came if p not in paired_came]
    renamed_to = {n for c, n, _ in out if c == "renamed"}
    renamed_from = {o for c, _, o in out if c == "renamed"}
    out |= {("added", p, None) for p in came if p not in renamed_to}
    out |= {("removed", p, None) for p in gone if p not in renamed_from}
    return out


def check_change_rows(frame, old: dict[str, tuple], new: dict[str, tuple], where: str) -> None:
    """A change set or a diff (DIFF_SCHEMA-like rows) is exactly the trees' change, each row describing its file."""
    got = set(frame.select("change", "srcfile", "old_srcfile").rows())
    assert got == expected_changes(old, new), where
    assert frame.height == len(got), where  # no row twice
    for row in frame.iter_rows(named=True):
        if "size" in row:
            side = old if row["change"] == "removed" else new
            assert (row["size"], row["md5"]) == side[row["srcfile"]], (where, row)
        if "old_md5" in row and row["change"] == "renamed":
            assert row["old_md5"] == old[row["old_srcfile"]][1], (where, row)


def check_nights(db: Path, states: dict[str, dict[str, tuple]], *, diffs_of_latest_only: bool = False) -> None:
    """Every version so far, through open_manifest: its files, its counts and change set, the diff of any two (with
    `diffs_of_latest_only`, of the latest with each: a caller checking after each night checks every pair at its end),
    each path's history (rows one after the other in versions and times, each begun and ended as the change sets say)."""
    labels = sorted(states)
    reader = open_manifest(db)
    try:
        versions = reader.versions()
        assert versions["label"].to_list() == labels
        finished = dict(zip(versions["label"], versions["finished_at"]))
        empty: dict[str, tuple] = {}
        for before, label, row in zip([None, *labels], labels, versions.iter_rows(named=True)):
            state, previous = states[label], states[before] if before else empty
            files = reader.files(label)
            assert {f: (s, m) for f, s, m in files.select("srcfile", "size", "md5").rows()} == state, label
            assert files.height == len(state), label
            # its commit time selects it, or a version committed later within the same second
            at_time = max(v for v in labels if finished[v] <= finished[label])
            assert reader.resolve(finished[label]) == at_time, label
            want = expected_changes(previous, state)
            check_change_rows(reader.changes(label), previous, state, f"changes {label}")
            counts = {kind: sum(1 for c in want if c[0] == kind) for kind in review.CHANGE_KINDS}
            assert {kind: row[f"n_{kind}"] for kind in review.CHANGE_KINDS} == counts, label
            assert row["n_files"] == len(state) and row["total_bytes"] == sum(s for s, _ in state.values()), label
            assert row["n_unchanged"] == len(state) - counts["added"] - counts["replaced"] - counts["renamed"], label
            assert row["n_errors"] == reader.scan_errors(label).height, label
        for a in labels:
            for b in labels:
                if diffs_of_latest_only and labels[-1] not in (a, b):
                    continue
                check_change_rows(reader.diff(a, b), states[a], states[b], f"diff {a} {b}")
        kinds = {label: {c[1]: c for c in expected_changes(states[before] if before else empty, states[label])}
                 for before, label in zip([None, *labels], labels)}
        ended = {label: {c[2] if c[0] == "renamed" else c[1]: c for c in expected_changes(states[before], states[label])
                         if c[0] != "added"} for before, label in zip(labels, labels[1:])}
        for path in set().union(*states.values()):
            rows = reader.history(path).rows(named=True)
            for label in labels:
                then = [(r["size"], r["md5"]) for r in rows if r["srcfile"] == path and r["version_valid"] <= label
                        and (r["version_invalid"] is None or r["version_invalid"] > label)]
                assert then == ([states[label][path]] if path in states[label] else []), (path, label)
            own = sorted((r for r in rows if r["srcfile"] == path), key=lambda r: r["file_id"])
            for earlier, later in zip(own, own[1:]):  # never two rows of one path valid at once
                assert earlier["version_invalid"] is not None and earlier["version_invalid"] <= later["version_valid"]
                assert earlier["time_invalid"] is not None and earlier["time_invalid"] <= later["time_valid"], path
            for r in rows:
                where = (path, r["srcfile"], r["version_valid"])
                assert r["time_valid"] == finished[r["version_valid"]], where
                began = kinds[r["version_valid"]][r["srcfile"]]
                assert (r["change"], r["old_srcfile"]) == (began[0], began[2]), where
                if r["version_invalid"] is None:
                    assert r["time_invalid"] is None and r["ended_by"] is None, where
                    continue
                assert r["version_valid"] < r["version_invalid"], where
                assert r["time_invalid"] == finished[r["version_invalid"]], where
                end = ended[r["version_invalid"]][r["srcfile"]]
                assert (r["ended_by"], r["renamed_to"]) == (end[0], end[1] if end[0] == "renamed" else None), where
    finally:
        reader.close()


@hyp_settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.lists(night_op, min_size=1, max_size=4), st.booleans()), min_size=1, max_size=5))
# a content removed from two persons and added to two: pairs within a person first, not in path order alone
@example([([("many", b"ab", ["000001/Waveforms/a.dat", "000002/Waveforms/a.dat"])], False),
          ([("move", "000002/Waveforms/a.dat", "000002/Images/x.dcm"),
            ("move", "000001/Waveforms/a.dat", "000003/Waveforms/a.dat")], False)])
# a file turned into a folder of its name and back, bytes changed behind its size and mtime, a person removed whole
# and its content brought back, OMOP rewritten unchanged, a person folder renamed
@example([([("many", b"abc", ["000001/Waveforms/a.dat", "OMOP/person.csv", "000002/Waveforms/c.dat"])], False),
          ([("folder", "000001/Waveforms/a.dat", None), ("samesize", "000002/Waveforms/c.dat", None)], False),
          ([("write", "000001/Waveforms/a.dat", b"abc"), ("omop", None, None), ("rmperson", "000002", None)], False),
          ([("write", "000002/Waveforms/c.dat", b"abc"), ("mvperson", "000001", "000003")], True)])
def test_every_version_reads_back_its_tree_sizes_renames_counts_and_times_after_each_run(nights):
    """Random nights of a site (files added, removed, replaced, renamed within and moved between persons, removed
    and brought back, copied, turned into a folder of their name and back, empty, a person removed whole, OMOP CSVs
    rewritten unchanged, touched, and changed behind the same size and mtime, which a --rehash run sees); after
    every run, every version so far is checked through the reviewer's API (check_nights)."""
    work = Path(tempfile.mkdtemp(prefix="chorus-prop-"))
    try:
        site, db = work / "site", work / "m.sqlite"
        site.mkdir()
        states: dict[str, dict[str, tuple]] = {}
        for ops, rehash in nights:
            for op in ops:
                rehash |= apply_night(site, op)
            state = tree_state(site)
            result = run_site(site, db, max_delete="all", validate_site=False, rehash=rehash)
            if result.label:
                states[result.label] = state
            elif states:
                assert states[max(states)] == state  # no version: nothing changed
            if states:
                check_nights(db, states)
    finally:
        shutil.rmtree(work, ignore_errors=True)
