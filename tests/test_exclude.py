"""Exclusions (issue 16): `--exclude GLOB` / `exclude = [...]` and the default OS-junk list. Excluded files
are neither hashed nor recorded, but counted; a recorded file that becomes excluded is removed through the
usual removal path (and its --max-delete guard)."""

from __future__ import annotations

import fnmatch
import os
import json
from pathlib import Path

import polars as pl
import pytest

from chorus_batch.exclude import DEFAULT_EXCLUDES, Excludes, apply, glob_to_regex, merge_counts
from chorus_batch.scan import ScanResult, merge_scans
from conftest import cli, current_rows, query, write

JUNK = [".DS_Store", "1001/Thumbs.db", "1001/desktop.ini", "1001/._scan.dcm", "Metadata/~$notes.docx",
        "Metadata/.~lock.notes.odt#", "1001/Icon\r", ".Spotlight-V100/Store-V2/store.db", ".Trashes/501/x.csv",
        ".fseventsd/fseventsd-uuid", ".TemporaryItems/folders.501/a", "$RECYCLE.BIN/S-1-5-21/$I1.csv",
        "System Volume Information/IndexerVolumeGuid", "OMOP/person.csv:Zone.Identifier",
        # (a file deleted while open on an NFS client or a FUSE mount, renamed aside until it is closed)
        "1001/Waveforms/Telemetry/7/.nfs000000000123abcd00000001", "OMOP/.fuse_hidden0000000a00000001",
        # (an editor's leftovers beside the file it edits: Vim's swap, Emacs' lock and auto-save, a backup copy)
        "1001/Waveforms/Telemetry/7/.7.hea.swp", "OMOP/.#person.csv", "Metadata/#READINESS.md#", "OMOP/person.csv~"]
DATA = ["OMOP/person.csv", "1001/notes.txt", "scratch/keep.txt"]


def _run(site: Path, db: Path, *extra: str):
    done = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--json", *extra)
    assert done.returncode in (0, 1), done.stderr
    return json.loads(done.stdout)


def _hashed_paths(db: Path) -> set[str]:
    return set(current_rows(db))


def test_default_junk_is_not_recorded_not_hashed_but_counted(site, db):
    for rel in DATA + JUNK:
        write(site, rel, b"data " + rel.encode())
    summary = _run(site, db)
    assert _hashed_paths(db) == set(DATA)
    assert summary["files"] == len(DATA)
    assert summary["files_hashed"] == len(DATA)  # the junk was not read
    excluded = summary["excluded"]
    assert excluded["total"] == len(JUNK) and excluded["default"] == len(JUNK) and excluded["user"] == 0
    assert set(excluded["by_pattern"]) == set(DEFAULT_EXCLUDES)
    assert excluded["examples"][".DS_Store"] == [".DS_Store"]
    problems = {row[0] for row in query(db, "SELECT srcfile FROM scan_errors")}
    assert not problems & set(JUNK)  # excluded is not a problem (parse errors of the other files are expected)
    text = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--dry-run")
    assert f"excluded: {len(JUNK)} files ({len(JUNK)} by the default OS-junk list, 0 by --exclude/exclude)" in text.stdout


def test_user_globs_by_name_and_by_path(site, db):
    for rel in DATA + ["1001/a.tmp", "OMOP/deep/b.tmp", "scratch/x/y.bin", "1001/scratch/z.txt"]:
        write(site, rel)
    summary = _run(site, db, "--exclude", "*.tmp", "--exclude", "scratch/*")
    # without '/': the name anywhere; with '/': the site-relative path (1001/scratch/z.txt is not under scratch/)
    assert _hashed_paths(db) == {"OMOP/person.csv", "1001/notes.txt", "1001/scratch/z.txt"}
    assert summary["excluded"]["user"] == 4 and summary["excluded"]["default"] == 0
    assert summary["excluded"]["by_pattern"] == {"*.tmp": 2, "scratch/*": 2}
    text = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "*.tmp",
               "--exclude", "scratch/*")
    assert "excluded: 4 files (0 by the default OS-junk list, 4 by --exclude/exclude)" in text.stdout


def test_no_default_excludes_records_the_junk(site, db):
    write(site, "1001/notes.txt")
    write(site, "1001/.DS_Store")
    summary = _run(site, db, "--no-default-excludes")
    assert _hashed_paths(db) == {"1001/notes.txt", "1001/.DS_Store"}
    assert summary["excluded"]["total"] == 0


def test_excluding_a_recorded_file_removes_it_in_the_next_version(site, db):
    for rel in ["1001/a.txt", "1001/b.txt", "1001/c.txt", "1001/old.tmp"]:
        write(site, rel)
    first = _run(site, db)
    assert "1001/old.tmp" in _hashed_paths(db)
    # the removal goes through the --max-delete guard like any other
    refused = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "*.tmp",
                  "--max-delete", "0")
    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert "1001/old.tmp" in _hashed_paths(db)
    second = _run(site, db, "--exclude", "*.tmp")
    assert second["version"] != first["version"] and second["counts"]["removed"] == 1
    assert _hashed_paths(db) == {"1001/a.txt", "1001/b.txt", "1001/c.txt"}
    assert query(db, "SELECT change FROM changes WHERE srcfile = ? AND version = ?",
                 ("1001/old.tmp", second["version"])) == [("removed",)]
    assert Path(site, "1001/old.tmp").exists()  # excluded, never touched
    # said as taken out by the globs: the summary said only "neither hashed nor recorded", beside a removed count
    assert second["excluded"]["removed"] == 1 and second["excluded"]["removed_examples"] == ["1001/old.tmp"]
    write(site, "1001/new.tmp")
    third = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "*.tmp")
    assert "of the previous version" not in third.stdout, third.stdout  # (excluded, but never recorded: nothing removed)


def test_a_glob_added_between_runs_says_which_recorded_files_it_removes(site, db):
    for rel in ["OMOP/person.csv", "OMOP/visit_occurrence.csv", "1001/a.txt", "1001/b.txt", "1001/c.txt"]:
        write(site, rel)
    cli("run", "--site", str(site), "--db", str(db), "--no-validate")
    status = cli("status", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "OMOP/")
    assert ("2 files of the previous version that the globs now match would be removed from the next version"
            in status.stdout), status.stdout
    done = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "OMOP/")
    assert done.returncode in (0, 1), done.stderr
    assert ("2 files of the previous version that the globs now match are removed from this version, like files no "
            "longer there (the files themselves are not touched; e.g. OMOP/person.csv, OMOP/visit_occurrence.csv)"
            in done.stdout), done.stdout


def test_config_exclude_and_default_excludes(site, db, tmp_path):
    for rel in ["1001/a.txt", "1001/a.tmp", "1001/.DS_Store", "scratch/s.txt"]:
        write(site, rel)
    config = tmp_path / "chorus.toml"
    config.write_text(f'[site]\nroot = "{site}"\n[manifest]\ndb = "{db}"\n'
                      '[run]\nexclude = ["*.tmp", "scratch/*"]\ndefault_excludes = false\nvalidate = false\n')
    done = cli("run", "--config", str(config), "--json", "--exclude", "*.txt")  # --exclude adds to the file's
    assert done.returncode in (0, 1), done.stderr  # 1: the path does not fit the layout (a parse error)
    summary = json.loads(done.stdout)
    assert _hashed_paths(db) == {"1001/.DS_Store"}
    assert summary["excluded"]["by_pattern"] == {"*.tmp": 1, "scratch/*": 1, "*.txt": 1}


@pytest.mark.parametrize("flags, toml, said", [
    (["--exclude", ""], "", ""),
    (["--exclude", "/"], "", ""),
    ([], '[run]\nexclude = [" "]\n', ""),
    ([], '[run]\nexclude = "*.tmp"\n', ""),  # a list, not a string
    (["--exclude", "./*"], "", ""),  # every file, said as from the site root
    (["--exclude", "scratch/../a/*"], "", ""),  # a '..' folder: no site-relative path has one, it matched nothing
    ([], '[run]\nexclude = ["OMOP/./tmp/*"]\n', ""),
    # Windows' separator: it matched nothing (a name with a backslash); named as typed ('scratch\\*' doubled it)
    (["--exclude", "scratch\\*"], "", "invalid exclusion glob 'scratch\\*': it holds a backslash"),
    ([], "[run]\nexclude = ['a\\b']\n", "invalid exclusion glob 'a\\b': it holds a backslash"),
])
def test_invalid_exclusion_is_a_usage_error(site, db, tmp_path, flags, toml, said):
    write(site, "1001/a.txt")
    config = tmp_path / "chorus.toml"
    config.write_text(toml)
    done = cli("run", "--site", str(site), "--db", str(db), "--config", str(config), *flags)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "exclude" in done.stderr and said in done.stderr, done.stderr
    assert not db.exists()  # refused before anything was listed or written


def _gitignore_match(path: str, pattern: str) -> bool:
    """The reference: fnmatch of the file or a folder above it (each name without '/', the path with '/')."""
    parts = path.split("/")
    if "/" not in pattern:
        return any(fnmatch.fnmatchcase(name, pattern) for name in parts)
    return any(fnmatch.fnmatchcase("/".join(parts[:k]), pattern) for k in range(1, len(parts) + 1))


def test_a_glob_naming_a_folder_excludes_its_files(site, db):
    """`--exclude OMOP` matched file names only, so it excluded nothing, silently: the files of every folder named
    OMOP were hashed and recorded. A glob now matches the file or a folder above it (as .gitignore does)."""
    for rel in ["OMOP/person.csv", "OMOP/2024/visit.csv", "1001/OMOP/x.csv", "1001/notes.txt", "scratch/a.txt",
                "1001/scratch/b.txt", "Metadata/OMOP"]:
        write(site, rel)
    summary = _run(site, db, "--exclude", "OMOP/", "--exclude", "/scratch")
    assert _hashed_paths(db) == {"1001/notes.txt", "1001/scratch/b.txt", "Metadata/OMOP"}  # 'OMOP/': folders only
    assert summary["excluded"]["by_pattern"] == {"OMOP/": 3, "/scratch": 1}
    _run(site, db, "--exclude", "OMOP", "--exclude", "scratch", "--max-delete", "all")  # without '/': a file or folder of that name anywhere
    assert _hashed_paths(db) == {"1001/notes.txt"}


def test_globs_match_fnmatch_vectorised():
    paths = ["a/b/c.tmp", "c.TMP", "x/scratch/a", "scratch/a/b", "a1.txt", "ab.txt", "a[1", "x/Thumbs.db",
             "x/THUMBS.DB", "._x", "d/._y", "~$a.docx", ".~lock.a#", ".~lock.a"]
    series = pl.Series(paths)
    for pattern in ["*.tmp", "scratch/*", "*/scratch/*", "a[0-9].txt", "a[!0-9].txt", "a[1", "?b.txt", "scratch",
                    "x/scratch", "b", "a"]:
        expected = [p for p in paths if _gitignore_match(p, pattern)]
        assert series.filter(series.str.contains(glob_to_regex(pattern))).to_list() == expected, pattern
        if "/" in pattern:  # named from the site root ('./scratch/*' matched nothing: no listed path starts so)
            for rooted in ("/" + pattern, "./" + pattern, ".//" + pattern):
                assert series.filter(series.str.contains(glob_to_regex(rooted))).to_list() == expected, rooted
    kept, counts = apply(pl.DataFrame({"srcfile": paths}), Excludes())
    assert set(paths) - set(kept["srcfile"]) == {"x/Thumbs.db", "x/THUMBS.DB", "._x", "d/._y", "~$a.docx", ".~lock.a#"}
    assert counts["default"] == 6 and counts["by_pattern"]["Thumbs.db"] == 2


def test_a_double_star_folder_glob_takes_no_folder_too(site, db):
    """`**/scratch` (as .gitignore writes "a scratch/ anywhere") was one '*' crossing folders, so it asked for a
    folder above: 1001/scratch/ was left out, the top-level scratch/ recorded (and told to be moved), said of nowhere."""
    for rel in ["scratch/a.txt", "1001/scratch/b.txt", "1001/notes.txt", "a/b/c.txt", "a/x/y/b/d.txt", "ab/e.txt"]:
        write(site, rel)
    summary = _run(site, db, "--exclude", "**/scratch", "--exclude", "a/**/b")
    assert _hashed_paths(db) == {"1001/notes.txt", "ab/e.txt"}
    assert summary["excluded"]["by_pattern"] == {"**/scratch": 2, "a/**/b": 2}
    series = pl.Series(["x.tmp", "1001/x.tmp", "1001/Waveforms/y.tmp", "x.tmpl"])
    for pattern in ("**/*.tmp", "/**/*.tmp", "./**/*.tmp"):
        assert series.filter(series.str.contains(glob_to_regex(pattern))).to_list() == series.head(3).to_list()
    # a '**' inside a name is still one '*' (fnmatch): 'a**/b' is a folder whose name starts with 'a'
    assert pl.Series(["a/b", "ab/b", "b"]).str.contains(glob_to_regex("a**/b")).to_list() == [True, True, False]


def test_scan_result_carries_the_counts(tmp_path):
    from chorus_batch.frames import SCANNED_SCHEMA, empty_errors
    from chorus_batch.scan import Coverage

    def part(k: int, n: int) -> ScanResult:
        excluded = {"total": n, "default": n, "user": 0, "by_pattern": {".DS_Store": n}, "examples": {".DS_Store": [f"{k}/.DS_Store"]}}
        return ScanResult(files=pl.DataFrame(schema=SCANNED_SCHEMA), errors=empty_errors(), roots=[("/s", None)],
                          scan_started_ns=1, coverage=Coverage(k, 2), excluded=excluded)

    written = part(0, 3).write(tmp_path / "shard-0-of-2")
    assert json.loads((written / "scan.json").read_text())["n_excluded"] == 3
    back = ScanResult.read(written)
    assert back.n_excluded == 3 and back.excluded["examples"] == {".DS_Store": ["0/.DS_Store"]}
    merged = merge_scans([back, part(1, 2)])
    assert merged.n_excluded == 5 and merged.excluded["by_pattern"] == {".DS_Store": 5}
    assert merge_counts([]) == {"total": 0, "default": 0, "user": 0, "by_pattern": {}, "examples": {}}


def test_a_first_run_whose_globs_exclude_every_file_is_refused_and_says_so(site, db):
    """`--exclude '*.*'` left nothing of a full site; the run said the site "lists no files" and to check the site
    root, which was wrong. It said "no first version was committed" with exit 0 ('?*', '[!.]*' and '*.*' pass the
    up-front check), which a nightly script took for success, while the same globs once a version exists are
    refused, exit 5: now refused as those are, saying the globs left out every file; `runs` records the 5.
    `--max-delete all` lets it end with nothing to commit, said as the globs' doing."""
    for rel in DATA:
        write(site, rel, b"data " + rel.encode())
    for glob in ("*.*", "?*", "[!.]*"):
        text = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", glob)
        assert text.returncode == 5, (glob, text.stdout + text.stderr)
        assert f"refused: the exclusion globs leave out every file root {site} lists" in text.stderr, text.stderr
        assert "where: --exclude / exclude in [run]" in text.stderr and "check that the site root" not in text.stderr
    assert query(db, "select exit_code, version from runs") == [(5, None)] * 3
    status = cli("status", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "?*")
    assert status.returncode == 5 and "refused: the exclusion globs leave out every file" in status.stderr, status.stderr
    text = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "*.*", "--max-delete", "all")
    assert text.returncode == 0, text.stderr
    assert "every file the site lists was excluded, so no first version was committed" in text.stdout, text.stdout
    assert "check that the site root" not in text.stdout


def test_a_name_glob_leaves_an_inner_root_out_of_the_site_root(tmp_path):
    """A [site.roots] entry inside the site root is refused unless a glob leaves it out of the site root's
    listing; only globs with '/' were asked, so `exclude = ["Waveforms"]` (which now excludes that folder's files)
    was refused as tracking them twice."""
    from chorus_batch.config import RunSettings, check_roots
    from chorus_batch.errors import ConfigError

    (tmp_path / "site" / "Waveforms").mkdir(parents=True)
    settings = RunSettings(site=str(tmp_path / "site"), roots={"Waveforms": str(tmp_path / "site" / "Waveforms")},
                           db=str(tmp_path / "m.sqlite"))
    with pytest.raises(ConfigError, match="lies inside"):
        check_roots(settings)
    for glob in ("Waveforms", "Waveforms/", "/Waveforms", "Waveforms/*", "Wave*"):
        check_roots(settings.model_copy(update={"exclude": [glob]}))
    with pytest.raises(ConfigError, match="lies inside"):  # only the folder's .csv files: the rest tracked twice
        check_roots(settings.model_copy(update={"exclude": ["Waveforms/*.csv"]}))


def test_an_excluded_folder_that_cannot_be_listed_is_no_problem_and_keeps_no_rows(site, db):
    """With globs matching folders, a folder left out that could not be listed was still a scan error
    (unreadable_dir) and kept the rows recorded below it as unseen: excluded, yet tracked and an error every night."""
    from test_run import run_without_override

    for rel in ["1001/notes.txt", "scratch/old/a.txt", "scratch/b.txt"]:
        write(site, rel)
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db), "--json", "-q", "--max-delete", "all"]
    assert run_without_override(args).returncode in (0, 1)
    os.chmod(site / "scratch" / "old", 0o000)
    try:
        out = run_without_override([*args, "--exclude", "scratch"])
    finally:
        os.chmod(site / "scratch" / "old", 0o755)
    summary = json.loads(out.stdout)
    assert "unreadable_dir" not in summary["errors"]["by_kind"], summary["errors"]
    assert _hashed_paths(db) == {"1001/notes.txt"}


def test_a_user_glob_that_matches_nothing_is_said(site, db, tmp_path):
    """`--exclude omop` (the folder is OMOP) matched nothing and the run said nothing of it: the files it was meant
    to leave out were hashed and recorded in silence. The summary now warns of each user glob that matched no
    file, and --json lists them (a shard's counts too: unmatched in every shard)."""
    for rel in DATA:
        write(site, rel)
    write(site, "1001/.DS_Store")
    summary = _run(site, db, "--exclude", "omop", "--exclude", "OMOP", "--exclude", "*Store")
    # (*Store matched: its file is counted for the default list's .DS_Store, which comes first)
    assert summary["excluded"]["unmatched"] == ["omop"] and summary["excluded"]["by_pattern"] == {".DS_Store": 1,
                                                                                                   "OMOP": 1}
    text = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--dry-run", "--exclude", "scratch/x*")
    assert "warning: --exclude/exclude 'scratch/x*' matched no file" in text.stdout, text.stdout
    assert merge_counts([{"unmatched": ["a", "b"]}, {"unmatched": ["b"]}])["unmatched"] == ["b"]


def test_globs_that_leave_out_every_recorded_file_are_named_in_the_refusal(site, db):
    """An --exclude that leaves out every file the site lists ('?*' passes the up-front check, which knows only '*'
    and its like) was refused as "root ... lists no files at all ... check that each root named is mounted", of a
    root that listed every file; a glob removing more than --max-delete allows, as "check that the site is mounted"."""
    for rel in ["OMOP/person.csv", "1001/a.txt", "1001/b.txt", "1002/c.txt"]:
        write(site, rel)
    _run(site, db)
    every = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "?*")
    assert every.returncode == 5, every.stdout + every.stderr
    assert "lists no files at all" not in every.stderr and "mounted" not in every.stderr, every.stderr
    assert "the exclusion globs leave out every file root" in every.stderr, every.stderr
    assert "where: --exclude / exclude in [run]" in every.stderr and "--max-delete all" in every.stderr
    most = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "[0-9]*")
    assert most.returncode == 5, most.stdout + most.stderr
    assert "mounted" not in most.stderr and "each a file the exclusion globs now leave out" in most.stderr, most.stderr
    assert _hashed_paths(db) == {"OMOP/person.csv", "1001/a.txt", "1001/b.txt", "1002/c.txt"}  # nothing committed
    gone = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "1001", "--max-delete", "0")
    assert gone.returncode == 5 and "each a file the exclusion globs" in gone.stderr
    # files really gone from a root that lists nothing are still told to check the mount
    for rel in ["OMOP/person.csv", "1001/a.txt", "1001/b.txt", "1002/c.txt"]:
        (site / rel).unlink()
    empty = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "?*")
    assert "lists no files at all" in empty.stderr and "mounted" in empty.stderr, empty.stderr


def test_a_missing_folder_or_file_left_out_by_a_glob_names_the_glob(site, db):
    """`--exclude OMOP/` then layout.no_omop told the site to "add OMOP/ with the CDM 5.4 tables", a folder it has;
    a metadata file a glob leaves out was "missing: add it". Each names the glob that left it out (run and status)."""
    write(site, "OMOP/person.csv", b"person_id\n1001\n")
    write(site, "Metadata/READINESS.md", b"ready\n")
    write(site, "1001/Waveforms/Telemetry/7/7.csv", b"t,v\n0,1\n")
    for command in (("run",), ("status",)):
        done = cli(*command, "--site", str(site), "--db", str(db), "--json", "--exclude", "OMOP/",
                   "--exclude", "Metadata/READINESS*")
        assert done.returncode in (0, 1), done.stderr
        findings = {(f["rule"], f["srcfile"]): f["message"]
                    for f in json.JSONDecoder().raw_decode(done.stdout)[0]["findings"]["examples"]}
        no_omop = findings[("layout.no_omop", "OMOP/")]
        assert "add OMOP/" not in no_omop
        assert "OMOP/ is left out by the exclusion glob 'OMOP/' of --exclude / [run] exclude" in no_omop
        assert ("Metadata/READINESS.md is left out by the exclusion glob 'Metadata/READINESS*'"
                in findings[("metadata.missing", "Metadata/READINESS.md")])
        # a file missing that no glob matches is still missing, said as before
        assert "add it" in findings[("metadata.missing", "Metadata/SUBMISSION.md")]


def test_globs_matched_at_once_keep_each_its_own_case_rule():
    """apply and matched_by test every path against one alternation of the globs: the default list's
    case-insensitivity stays inside its own globs (a user's `foo` keeps `FOO`), and the counts and order are those of
    one glob at a time."""
    from chorus_batch.exclude import matched_by

    paths = ["a/FOO", "a/foo", "x.tmp", "y.TMP", "a/.ds_store", "b/.DS_Store", "scratch/x", "SCRATCH/y", "ok/file",
             "a/b~", "Foo/z"]
    excludes = Excludes(user=("foo", "*.TMP", "scratch/", ".DS_Store"))
    kept, counts = apply(pl.DataFrame({"srcfile": paths}), excludes)
    assert kept["srcfile"].to_list() == ["a/FOO", "x.tmp", "SCRATCH/y", "ok/file", "Foo/z"]
    assert counts["by_pattern"] == {".DS_Store": 2, "*~": 1, "foo": 1, "*.TMP": 1, "scratch/": 1}
    assert counts["default"] == 3 and counts["user"] == 3
    one_at_a_time = [any(pl.Series([p]).str.contains(glob_to_regex(g, ignore_case=s == "default")).item()
                         for s, g in excludes.patterns) for p in paths]
    assert pl.select(matched_by(pl.lit(pl.Series(paths)), excludes.patterns)).to_series().to_list() == one_at_a_time
    nothing, none = apply(pl.DataFrame({"srcfile": ["ok/file", "OMOP/person.csv"]}), excludes)
    assert nothing["srcfile"].to_list() == ["ok/file", "OMOP/person.csv"] and none["total"] == 0


def test_a_first_run_on_a_folder_of_only_os_leftovers_says_so_not_the_globs(site, db):
    """A first run on a folder holding only `.DS_Store` and `Thumbs.db` (the wrong folder, or a site not copied yet)
    was refused, exit 5, rightly, but said "the exclusion globs leave out every file" and "check the exclusion globs"
    of globs the user never gave: it says the folder holds only files the tool always leaves out, names them, and
    what to do. Globs the user gave are still named as the user's, beside the default list's share."""
    write(site, ".DS_Store", b"x")
    write(site, "1001/Thumbs.db", b"x")
    write(site, "1001/.DS_Store", b"x")
    done = cli("run", "--site", str(site), "--db", str(db), "--no-validate")
    assert done.returncode == 5, done.stdout + done.stderr
    said = done.stderr
    assert "exclusion globs" not in said and "--exclude" not in said.split("fix:")[0], said
    assert f"refused: root {site} holds only files chorus-batch always leaves out" in said, said
    assert ".DS_Store (2)" in said and "Thumbs.db (1)" in said, said
    assert "the manifest holds no version yet; nothing was committed" in said, said
    assert query(db, "select exit_code, version from runs") == [(5, None)]
    # the user's glob and the default list together: the user's glob named as such, the default list's share too
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    mixed = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--exclude", "OMOP")
    assert mixed.returncode == 5, mixed.stdout + mixed.stderr
    assert "refused: the exclusion glob 'OMOP' (1 file) and the default list of operating-system and editor leftovers " \
        "(.DS_Store (2), Thumbs.db (1)) leave out every file root" in mixed.stderr, mixed.stderr
    # --max-delete all lets it end with nothing to commit, said the same way (it said "check the exclusion globs")
    (site / "OMOP" / "person.csv").unlink()
    allowed = cli("run", "--site", str(site), "--db", str(db), "--no-validate", "--max-delete", "all")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "the site holds only files chorus-batch always leaves out" in allowed.stdout, allowed.stdout
    assert "check the exclusion globs" not in allowed.stdout, allowed.stdout
