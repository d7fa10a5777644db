"""The diff as set operations: each change kind, both modes, one-to-one rename pairing."""

from __future__ import annotations

import polars as pl

from chorus_batch.diff import compute_diff


def prev(rows: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame(
        {"file_id": list(range(1, len(rows) + 1)), "srcfile": list(rows), "size": [1] * len(rows), "md5": list(rows.values())},
        schema={"file_id": pl.Int64, "srcfile": pl.String, "size": pl.Int64, "md5": pl.String},
    )


def cur(rows: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame({"srcfile": list(rows), "size": [1] * len(rows), "md5": list(rows.values())},
                        schema={"srcfile": pl.String, "size": pl.Int64, "md5": pl.String})


def changes(d) -> set[tuple]:
    return {(r["change"], r["srcfile"], r["old_srcfile"]) for r in d.change_set.iter_rows(named=True)}


def test_every_change_kind_in_full_mode():
    d = compute_diff(
        prev({"keep": "k", "gone": "g", "edit": "e1", "old_name": "r"}),
        cur({"keep": "k", "edit": "e2", "new_name": "r", "fresh": "f"}),
    )
    assert changes(d) == {
        ("removed", "gone", None), ("replaced", "edit", None), ("renamed", "new_name", "old_name"), ("added", "fresh", None),
    }
    assert d.counts() == {"added": 1, "removed": 1, "replaced": 1, "renamed": 1, "unchanged": 1}


def test_append_mode_removes_only_the_delete_list():
    d = compute_diff(
        prev({"a": "1", "b": "2", "c": "3"}), cur({"c": "3", "d": "4"}), mode="append",
        delete_list=pl.DataFrame({"srcfile": ["b"]}),
    )
    assert changes(d) == {("removed", "b", None), ("added", "d", None)}


def test_append_mode_pairs_a_deleted_path_with_a_new_copy_as_a_rename():
    d = compute_diff(prev({"a": "1"}), cur({"b": "1"}), mode="append", delete_list=pl.DataFrame({"srcfile": ["a"]}))
    assert changes(d) == {("renamed", "b", "a")}


def test_renames_pair_one_to_one_when_contents_repeat():
    # three removed and two added paths share one content: two renames, one removal
    d = compute_diff(prev({"x1": "same", "x2": "same", "x3": "same"}), cur({"y1": "same", "y2": "same"}))
    kinds = sorted(r[0] for r in changes(d))
    assert kinds == ["removed", "renamed", "renamed"]
    olds = [r[2] for r in changes(d) if r[0] == "renamed"]
    assert len(set(olds)) == 2


def test_same_content_different_size_is_not_a_rename():
    p = prev({"a": "m"})
    c = cur({"b": "m"}).with_columns(size=pl.lit(2, pl.Int64))
    assert {r[0] for r in changes(compute_diff(p, c))} == {"added", "removed"}


def test_no_changes_gives_an_empty_change_set():
    d = compute_diff(prev({"a": "1", "b": "2"}), cur({"a": "1", "b": "2"}))
    assert d.is_empty and d.counts()["unchanged"] == 2


def test_first_version_is_all_added():
    d = compute_diff(prev({}), cur({"a": "1", "b": "1"}))
    assert d.counts()["added"] == 2


def test_a_first_run_adds_every_path_without_a_join():
    d = compute_diff(prev({}), cur({"b": "1", "a": "1", "c": ""}))
    assert d.change_set.rows() == [("added", "a", None, None), ("added", "b", None, None), ("added", "c", None, None)]
    assert d.change_set.schema == compute_diff(prev({"x": "1"}), cur({"a": "1", "y": "2"})).change_set.schema
    assert d.counts() == {"added": 3, "removed": 0, "replaced": 0, "renamed": 0, "unchanged": 0}
    assert compute_diff(prev({}), cur({})).is_empty


def test_a_repeated_content_pairs_within_a_folder_then_a_person_before_anywhere():
    """Person 000002 renamed a.dat to c.dat and person 000001's copy of the same bytes was removed: paired in path
    order alone, 000001's file was recorded as renamed into 000002 (a move between persons, which a reviewer reads
    as data given to the wrong person) and 000002's own a.dat as removed. Pairs are made within a folder first,
    then within a top folder (a person), then anywhere; still one-to-one, and as many as the contents allow."""
    d = compute_diff(prev({"000001/W/a.dat": "m", "000002/W/a.dat": "m"}), cur({"000002/W/c.dat": "m"}))
    assert changes(d) == {("renamed", "000002/W/c.dat", "000002/W/a.dat"), ("removed", "000001/W/a.dat", None)}
    d = compute_diff(prev({"000001/W/a.dat": "m", "000002/X/a.dat": "m"}), cur({"000002/W/c.dat": "m"}))
    assert changes(d) == {("renamed", "000002/W/c.dat", "000002/X/a.dat"), ("removed", "000001/W/a.dat", None)}
    # the same folder before the same person, and root-level files among themselves
    d = compute_diff(prev({"1/A/x": "m", "1/B/x": "m", "a.txt": "m", "z.txt": "m"}),
                     cur({"1/B/y": "m", "b.txt": "m", "2/q": "m"}))
    assert changes(d) == {("renamed", "1/B/y", "1/B/x"), ("renamed", "2/q", "1/A/x"), ("renamed", "b.txt", "a.txt"),
                          ("removed", "z.txt", None)}
