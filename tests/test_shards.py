"""Shards scan, one merge commits: the same manifest as a single-node run (shards.py; the Slurm
end-to-end test is tests/test_slurm.py)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import polars as pl
import pytest

from chorus_batch.commit import current_tree, diff_changed
from chorus_batch.diff import compute_diff, duckdb_session
from chorus_batch.frames import SCANNED_SCHEMA, STATE_SCHEMA
from chorus_batch.shards import program_words
from chorus_batch.testdata import Spec, make_testdata
from conftest import cli, main_here, fill, paused, query

N = 4


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shard-testdata")
    make_testdata(out, Spec(persons=8))
    return out


def run_shards(site: Path, db: Path, staging: Path, shards: range = range(N), env: dict | None = None) -> None:
    for k in shards:
        args = ("run", "--site", str(site), "--db", str(db), "--shard", f"{k}/{N}", "--staging", str(staging))
        out = cli(*args, env=env) if env else main_here(*args)
        assert out.returncode == 0, out.stderr
        assert "nothing committed" in out.stdout


def resume_file(staging: Path) -> Path:
    """The file whose creation lets a paused shard or merge go on (CHORUS_BATCH_TEST_RESUME): `let_go`; none yet
    (an earlier pause of the same test let go)."""
    path = staging.parent / f"resume-{staging.name}"
    path.unlink(missing_ok=True)
    return path


def let_go(staging: Path) -> None:
    """The paused shard or merge of `staging` goes on now (the other commands have run): not after a fixed 8 s, which
    ran out before them on a loaded machine."""
    (staging.parent / f"resume-{staging.name}").touch()


def shard_paused_at_hashing(site: Path, db: Path, staging: Path, *extra: str):
    """Shard 0 started in the background, returned once it waits at its hashing (until `let_go`, at most 120 s): its
    Popen."""
    return paused("run", "--site", str(site), "--db", str(db), "--shard", f"0/{N}", "--staging", str(staging), *extra,
                  at="hashing+120", env={"CHORUS_BATCH_PROGRESS_S": "0"}, resume=resume_file(staging))


def merge_paused_at_its_commit(site: Path, db: Path, staging: Path):
    """A merge started in the background, returned once it waits at its commit (until `let_go`, at most 120 s): its
    Popen."""
    import os
    import subprocess
    import sys

    merge = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", str(site), "--db", str(db),
                              "--merge", str(staging)], env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "commit+120",
                                                             "CHORUS_BATCH_TEST_RESUME": str(resume_file(staging))},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert merge.stderr is not None
    while "test pause at commit" not in (line := merge.stderr.readline()):
        assert line or merge.poll() is None, "the merge never reached its commit"
    return merge


def manifest_view(db: Path) -> dict:
    return {
        "rows": query(db, "SELECT srcfile, size, md5, modality, person_id, session_id, parse_error FROM source_files "
                          "WHERE time_invalid IS NULL ORDER BY srcfile"),
        "changes": query(db, "SELECT v.n, c.change, c.srcfile, c.old_srcfile FROM changes c JOIN "
                             "(SELECT label, row_number() OVER (ORDER BY label) AS n FROM versions) v ON v.label = c.version "
                             "ORDER BY 1, 2, 3"),
        "findings": query(db, "SELECT v.n, f.severity, f.rule, f.srcfile FROM findings f JOIN "
                              "(SELECT label, row_number() OVER (ORDER BY label) AS n FROM versions) v ON v.label = f.version "
                              "ORDER BY 1, 2, 3, 4"),
        "errors": query(db, "SELECT srcfile, kind FROM scan_errors ORDER BY 1, 2"),
        "registry": query(db, "SELECT record_key, person_id, isactive, proc_id FROM registry ORDER BY 1"),
        "versions": query(db, "SELECT n_added, n_removed, n_replaced, n_renamed, n_unchanged, n_errors, n_files, "
                              "total_bytes FROM versions ORDER BY label"),
    }


def state_cache(db: Path) -> pl.DataFrame:
    return pl.read_parquet(f"{db}.state.parquet").select(list(STATE_SCHEMA)).sort("file_id")


def current_rows(db: Path) -> pl.DataFrame:
    rows = query(db, f"SELECT {', '.join(STATE_SCHEMA)} FROM source_files WHERE time_invalid IS NULL ORDER BY file_id")
    return pl.DataFrame(rows, schema=STATE_SCHEMA, orient="row")


@pytest.mark.parametrize("partition_rows", [None, 5], ids=["a-partition-per-shard", "many-partitions-per-shard"])
def test_merged_shards_give_the_manifest_of_a_single_node_run(snapshots, tmp_path, partition_rows):
    env = {"CHORUS_BATCH_PARTITION_ROWS": str(partition_rows)} if partition_rows else None
    site = tmp_path / "site"
    single, merged = tmp_path / "single.sqlite", tmp_path / "merged.sqlite"
    for i, snapshot in enumerate(("first", "second")):
        if site.exists():
            shutil.rmtree(site)
        shutil.copytree(snapshots / snapshot, site)
        assert main_here("run", "--site", str(site), "--db", str(single)).returncode in (0, 1)
        staging = tmp_path / f"staging-{i}"
        run_shards(site, merged, staging)
        out = cli("run", "--site", str(site), "--db", str(merged), "--merge", str(staging), env=env)
        assert out.returncode in (0, 1), out.stderr
        assert "committed" in out.stdout
        assert manifest_view(merged) == manifest_view(single)
        # one read per file: the merge validated with the facts the shards parsed while hashing, reading no more
        # headers than the single-node run (none of the first snapshot's)
        read = "SELECT headers_read FROM validations ORDER BY version"
        assert query(merged, read) == query(single, read) and query(merged, read)[0] == (0,)
        assert query(merged, "SELECT kind, md5, facts FROM file_facts ORDER BY 1, 2") == query(
            single, "SELECT kind, md5, facts FROM file_facts ORDER BY 1, 2")
        # the state cache the merge wrote, partition by partition, holds the current rows
        assert state_cache(merged).equals(current_rows(merged))
        assert state_cache(single).equals(current_rows(single))
        # the merge's DuckDB spilled beside the shards, and its folder is gone
        # (and the folder's lock file is gone with its last holder: it was left behind)
        assert sorted(p.name for p in staging.iterdir()) == [f"shard-{k}-of-{N}" for k in range(N)]
    assert query(merged, "SELECT count(*) FROM versions") == [(2,)]


def test_the_merge_duckdb_works_within_its_memory_limit_and_a_private_spill_folder(tmp_path):
    with duckdb_session(threads=1, memory_limit="300MB", spill_parent=tmp_path) as con:
        (spill,) = tmp_path.iterdir()
        assert spill.name.startswith("chorus-duckdb-") and stat.S_IMODE(spill.stat().st_mode) == 0o700
        assert con.execute("SELECT current_setting('temp_directory'), current_setting('memory_limit'), "
                           "current_setting('threads')").fetchone() == (str(spill), "286.1 MiB", 1)
    assert list(tmp_path.iterdir()) == []


def test_a_shard_writes_nothing_beside_the_manifest(snapshots, tmp_path):
    db = tmp_path / "m.sqlite"
    assert main_here("run", "--site", str(snapshots / "first"), "--db", str(db), "--no-validate").returncode in (0, 1)
    before = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.is_file()}
    run_shards(snapshots / "second", db, tmp_path / "staging", shards=range(1))
    after = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # not the manifest, its WAL, the lock or the state cache
    assert sorted(p.name for p in (tmp_path / "staging" / "shard-0-of-4").iterdir()) == [
        "errors.parquet", "facts.parquet", "files.parquet", "scan.json"]  # facts: what the merge validates with


def test_shards_without_facts_merge_and_validation_reads_the_headers_itself(snapshots, tmp_path):
    """Shards run with --no-validate (or by the release before facts.parquet) parse nothing: the merge's
    validation reads the headers it lacks, and finds what a single-node run finds."""
    site, single, merged, staging = snapshots / "first", tmp_path / "s.sqlite", tmp_path / "m.sqlite", tmp_path / "stg"
    assert main_here("run", "--site", str(site), "--db", str(single)).returncode in (0, 1)
    for k in range(N):
        out = main_here("run", "--site", str(site), "--db", str(merged), "--shard", f"{k}/{N}", "--staging", str(staging),
                  "--no-validate")
        assert out.returncode == 0, out.stderr
        assert not (staging / f"shard-{k}-of-{N}" / "facts.parquet").exists()
    assert main_here("run", "--site", str(site), "--db", str(merged), "--merge", str(staging)).returncode in (0, 1)
    assert manifest_view(merged) == manifest_view(single)
    assert query(merged, "SELECT headers_read > 0 FROM validations") == [(1,)]


def test_a_first_merge_reads_each_shards_facts_and_errors_once(snapshots, tmp_path, monkeypatch):
    """Before a first merge makes its manifest, the shards are checked (a refused merge left an empty one): that
    check read every shard's errors and facts, which the merge then read again (a 1M-file first run's facts: ~200 MB
    of Parquet). It reads their records; a shard whose facts cannot be read is still refused before any manifest."""
    from chorus_batch import cli as chorus_cli

    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    reads: list[str] = []
    read_parquet = pl.read_parquet
    monkeypatch.setattr(pl, "read_parquet", lambda source, *a, **k: reads.append(Path(source).name) or
                        read_parquet(source, *a, **k))
    assert chorus_cli.main(["run", "-q", "--site", str(site), "--db", str(db), "--merge", str(staging)]) in (0, 1)
    assert reads.count("facts.parquet") == N and reads.count("errors.parquet") == N, reads
    monkeypatch.undo()
    # a damaged facts.parquet (cut short): refused before a new manifest is made
    other = tmp_path / "other.sqlite"
    for k in range(N):
        assert main_here("run", "--site", str(site), "--db", str(other), "--shard", f"{k}/{N}", "--staging",
                   str(tmp_path / "stg2")).returncode == 0
    folder = tmp_path / "stg2" / "shard-2-of-4"
    facts = folder / "facts.parquet"
    facts.write_bytes(facts.read_bytes()[:-20])
    out = main_here("run", "--site", str(site), "--db", str(other), "--merge", str(tmp_path / "stg2"))
    assert out.returncode == 2 and "shard 2/4 is damaged" in out.stderr, out.stderr
    assert not other.exists() and not Path(f"{other}.lock").exists()


def test_a_missing_or_stale_shard_is_named_with_the_command_that_reruns_it(snapshots, tmp_path):
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging, shards=(0, 1, 3))
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2
    assert "shard 2/4 is missing" in out.stderr and f"--shard 2/4 --staging {staging}" in out.stderr
    assert "nothing was committed" in out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]
    # A shard that died before completing: its task killed over its memory (Slurm's OUT_OF_MEMORY, a cgroup's OOM
    # kill: SIGKILL, no word, its lock and half-written folder left) while it hashed: named with its rerun command,
    # and that rerun alone (below) is not refused by the dead task's lock
    killed = paused("run", "--site", str(site), "--db", str(db), "--shard", "1/4", "--staging", str(staging),
                    at="hashing")
    killed.kill()
    killed.communicate(timeout=60)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2 and "shard 1/4 is incomplete (it failed or is still running): rerun it with: " \
        in out.stderr and f"--shard 1/4 --staging {staging}" in out.stderr, out.stderr
    run_shards(site, db, staging, shards=(1, 2))  # each rerun alone
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate").returncode in (0, 1)
    # Merged once (a requeued merge job): said so, not "stale, rerun them"; never committed twice.
    again = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert again.returncode == 2 and f"were merged already: they are version {label}" in again.stderr, again.stderr
    assert "is stale" not in again.stderr and "nothing was committed" in again.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_merge_killed_after_its_commit_is_said_merged_already_when_requeued(snapshots, tmp_path, signum):
    """A merge killed after its commit (Slurm's time limit: SIGTERM, then SIGKILL) left its run without the scan's
    start, which only the run's end recorded: the requeued merge job said the shards were stale and to rerun them all
    (hours of hashing) instead of "merged already"."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging, shards=range(N))
    merge = paused("run", "--site", str(site), "--db", str(db), "--merge", str(staging), at="committed")
    os.kill(merge.pid, signum)
    _, err = merge.communicate(timeout=60)
    assert merge.returncode == (-9 if signum == signal.SIGKILL else 143), err
    (label,) = query(db, "SELECT label FROM versions")[0]
    if signum == signal.SIGTERM:
        assert f"version {label} had been committed before; it stays" in err, err
    again = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert again.returncode == 2 and f"were merged already: they are version {label}" in again.stderr, again.stderr
    assert "is stale" not in again.stderr and "nothing was committed" in again.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    assert main_here("files", "--db", str(db)).returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_requeued_merge_finishes_the_check_its_killed_merge_cut_short(snapshots, tmp_path, signum):
    """A merge killed while it checked the version it had committed (Slurm's time limit, a node lost): the
    requeued merge job said "merged already ... nothing to do for these shards", exit 2, and left the version
    unchecked and its Parquet snapshot unwritten, though the killed merge's message said "the next run finishes what
    the signal cut short after the commit". The requeued merge does it, and says so; still exit 2, nothing committed."""
    site, db, staging, snap = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging", tmp_path / "snap"
    run_shards(site, db, staging, shards=range(N))
    merge = paused("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--parquet", str(snap),
                   at="validate")
    os.kill(merge.pid, signum)
    merge.communicate(timeout=60)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert query(db, "SELECT count(*) FROM validations WHERE version = ?", (label,)) == [(0,)]
    again = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--parquet", str(snap))
    assert again.returncode == 2 and f"were merged already: they are version {label}" in again.stderr, again.stderr
    assert f"the check of version {label} against the procedures, which the merge that committed it did not " \
           "finish, was done now" in again.stderr, again.stderr
    assert query(db, "SELECT count(*) FROM validations WHERE version = ?", (label,)) == [(1,)]
    assert (snap / f"version={label}" / "manifest.parquet").is_file()
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    # Once checked, a merge run again says no more than "merged already"
    third = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--parquet", str(snap))
    assert third.returncode == 2 and "was done now" not in third.stderr and "checking the site" not in third.stderr


@pytest.mark.parametrize("on_path", [False, True])
def test_a_rerun_command_runs_from_a_shell_with_or_without_the_venv_on_path(snapshots, tmp_path, on_path):
    """The merge's "rerun it with: chorus-batch run ..." failed with "command not found" on a login node without the
    venv on PATH (a Slurm job runs `<python> -m chorus_batch`). It names `chorus-batch` only when that name on PATH
    is this environment's, else this interpreter with -m; either way the command as told runs from a shell."""
    import os
    import shlex
    import subprocess
    import sys

    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    venv_bin = os.path.dirname(os.path.abspath(sys.executable))
    path = (venv_bin + os.pathsep if on_path else "") + "/usr/bin:/bin"
    run_shards(site, db, staging, shards=(0, 2, 3))
    out = cli("run", "--site", str(site), "--db", str(db), "--merge", str(staging), env={"PATH": path})
    assert out.returncode == 2, out.stderr
    rerun = out.stderr.split("rerun it with: ", 1)[1].split("\n", 1)[0]
    words = shlex.split(rerun)
    assert words[:2] == (["chorus-batch", "run"] if on_path else [sys.executable, "-m"]), rerun
    told = subprocess.run(["/bin/sh", "-c", rerun], env={**os.environ, "PATH": path}, capture_output=True, text=True,
                          timeout=120)
    assert told.returncode == 0, told.stderr
    assert (staging / f"shard-1-of-{N}" / "scan.json").exists()


def test_shards_the_manifest_moved_on_from_are_stale_not_merged(snapshots, tmp_path):
    """Another run committed after the shards listed: they are stale (rerun them), not "merged already"."""
    site, db, staging = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "staging"
    shutil.copytree(snapshots / "first", site)
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    run_shards(site, db, staging)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n2\n")
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    # (the run listed the site after the shards: they are older than its version, to be run again, not merged)
    assert out.returncode == 2 and "older than the manifest's latest version" in out.stderr, out.stderr
    assert f"--shard 0/4 --staging {staging}" in out.stderr and "merged already" not in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]
    # shards listed after the latest version's listing began, from an older version: stale, each one rerun
    run_shards(site, db, staging)
    last = query(db, "SELECT label FROM versions ORDER BY label DESC")[0][0]
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n2\n3\n")
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    import sqlite3

    with sqlite3.connect(db) as con:  # (that run's listing began before the shards': a long single-node run)
        con.execute("UPDATE runs SET scan_started_ns = 1 WHERE version = (SELECT max(label) FROM versions)")
    assert query(db, "SELECT label FROM versions ORDER BY label DESC")[0][0] != last
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2 and "shard 0/4 is stale" in out.stderr and "merged already" not in out.stderr, out.stderr


def test_shards_of_a_second_submission_at_once_are_said_older_than_the_version_the_first_committed(snapshots,
                                                                                                    tmp_path):
    """The Slurm script submitted twice at once with plain sbatch (no lock): both arrays listed the site, one merge
    committed, the other was told "the manifest is locked by another run ... run it again", and run again, "shard K
    is stale: rerun it" for every shard: the whole site hashed again to record what the latest version records. It
    is said as it is: another run listed the site after these shards and committed; nothing was committed, exit 2."""
    site, db = snapshots / "first", tmp_path / "m.sqlite"
    first, second = tmp_path / "st-first", tmp_path / "st-second"
    run_shards(site, db, first)
    run_shards(site, db, second)  # (the other submission's array, listed a moment later)
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(second), "--no-validate").returncode in (0, 1)
    (label,) = query(db, "SELECT label FROM versions")[0]
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(first))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"are older than the manifest's latest version {label}" in out.stderr, out.stderr
    assert "another run (another submission of the Slurm script, or a run)" in out.stderr
    assert "is stale" not in out.stderr and "nothing was committed" in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def _edit_record(change):
    def edit(folder: Path) -> None:
        import json

        record = json.loads((folder / "scan.json").read_text("utf-8"))
        record = change(record)
        (folder / "scan.json").write_text(json.dumps(record), "utf-8")
    return edit


def _without_md5_column(folder: Path) -> None:
    files = pl.read_parquet(folder / "files.parquet")
    files.rename({"md5": "md5_hex"}).write_parquet(folder / "files.parquet")


@pytest.mark.parametrize("edit, said", [
    (_edit_record(lambda r: {**{k: v for k, v in r.items() if k != "based_on"}, "release": "9.1"}),
     "(written by chorus-batch 9.1): its scan.json does not hold what it should (no 'based_on')"),
    (_edit_record(lambda r: {k: v for k, v in r.items() if k != "n_files"}), "(no 'n_files')"),
    (_edit_record(lambda r: {**r, "coverage": {**r["coverage"], "part": 1}}), "unexpected keyword argument 'part'"),
    (_edit_record(lambda r: [r]), "its scan.json holds no record"),
    (_edit_record(lambda r: {**r, "roots": [["/x"]]}), "a root is ['/x']"),
    (_edit_record(lambda r: {**r, "scan_started_ns": None}), "scan_started_ns is None"),
    (_edit_record(lambda r: {**r, "coverage": {"shard": 2, "shards": 4}}),
     "its scan.json is of shard 2 of 4, not of shard 0 of 4, which its folder shard-0-of-4 names"),
    (_without_md5_column, "its files.parquet has no column md5"),
    (_edit_record(lambda r: {**r, "scan_started_ns": 10**30}), f"scan_started_ns is {10**30}, out of range"),
    (_edit_record(lambda r: {**r, "bytes_hashed": -1}), "bytes_hashed is -1, out of range"),
    (_edit_record(lambda r: {**r, "exclude_patterns": [["user"]]}), "exclude_patterns is [['user']]"),
    (_edit_record(lambda r: {**r, "excluded": {**r["excluded"], "by_pattern": None}}), "excluded is {"),
    (_edit_record(lambda r: {**r, "coverage": {"shard": "0", "shards": 4}}), "coverage is {'shard': '0'"),
], ids=["another-release", "no-n_files", "coverage-key", "a-list", "a-root", "no-start", "another-shard", "parquet",
        "start-out-of-range", "negative-bytes", "glob-pair", "excluded-counts", "coverage-text"])
def test_a_shard_this_release_cannot_read_is_named_with_its_rerun_not_an_internal_error(snapshots, tmp_path, edit,
                                                                                         said):
    """A shard of another release (or one edited, or a folder copied in under another shard's name) was an
    "internal error" (KeyError 'based_on', a TypeError from Coverage, Polars' ColumnNotFoundError in the middle of the
    commit; a glob pair of one part or exclusion counts of another shape: a ValueError or AttributeError when the
    shards' globs were compared or their counts added up), exit 3, or merged under the wrong name, or said as "of
    shard 0 of 4, not of shard 0 of 4" (a shard number written as text). It is a damaged shard: named, with the command that reruns it,
    exit 2, nothing committed."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    edit(staging / f"shard-0-of-{N}")
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stderr
    assert "internal error" not in out.stderr and f"shard 0/{N} is damaged" in out.stderr, out.stderr
    assert said in out.stderr and f"--shard 0/{N} --staging {staging}" in out.stderr, out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]


def test_shards_merged_already_do_not_call_their_version_the_latest_once_another_run_committed(snapshots, tmp_path):
    """A merge run again after another run had committed said "they are version L1, the latest": untrue."""
    site, db, staging = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "staging"
    shutil.copytree(snapshots / "first", site)
    run_shards(site, db, staging)
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), "--merge", str(staging)).returncode in (0, 1)
    (site / "OMOP" / "person.csv").write_text("person_id\n1\n2\n")
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    first, latest = (label for (label,) in query(db, "SELECT label FROM versions ORDER BY label"))
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stderr
    assert f"merged already: they are version {first} (the latest is now {latest})" in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]


def test_a_merge_of_a_folder_it_cannot_write_says_what_to_do_for_a_merge(snapshots, tmp_path):
    """A merge run by a user who cannot write the shards' folder was told "give a --staging folder this user can
    write", an option a merge does not take: it is told to make that folder writable or merge as the shards' user;
    exit 2, nothing committed."""
    from test_run import run_without_override

    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    staging.chmod(0o555)
    (staging / ".staging.lock").unlink(missing_ok=True)
    try:
        out = run_without_override(["run", "--site", str(site), "--db", str(db), "--merge", str(staging)])
        shard = run_without_override(["run", "--site", str(site), "--db", str(db), "--shard", f"0/{N}",
                                      "--staging", str(staging)])
    finally:
        staging.chmod(0o700)
    assert out.returncode == 2, out.stderr
    assert "cannot create the staging folder's lock: Permission denied; nothing was committed" in out.stderr, out.stderr
    # a shard there: said before it lists anything
    assert shard.returncode == 2 and "nothing was listed or written" in shard.stderr, shard.stderr
    assert "make that folder writable by this user" in out.stderr and "--staging" not in out.stderr, out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]


@pytest.mark.parametrize("inside", [[], ["notes.txt", "shard-0-of-0"]])
def test_a_merge_of_a_folder_without_shards_leaves_no_manifest_behind(snapshots, tmp_path, inside):
    """A merge of the wrong folder (empty, or nothing a shard wrote) was refused once it had created the manifest: a
    new manifest with no version was left behind, as no other usage error leaves one."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    staging.mkdir()
    for name in inside:
        (staging / name).mkdir() if name.startswith("shard") else (staging / name).write_text("x")
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stderr
    assert "no shard results in" in out.stderr and "(no shard-K-of-N folders)" in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staging"]


def test_a_merge_of_the_folder_of_every_submissions_staging_folder_names_them(snapshots, tmp_path):
    """The Slurm script stages each submission in <manifest>.staging/<UTC time>: a merge run by hand with
    `--merge m.sqlite.staging` was told "no shard results ... run the shards first" beside every submission's shards.
    Now the submissions' folders are named, with the latest to give; nothing read, no manifest made."""
    site, db = snapshots / "first", tmp_path / "m.sqlite"
    parent = tmp_path / "m.sqlite.staging"
    run_shards(site, db, parent / "20261201T010000Z", shards=range(1))
    run_shards(site, db, parent / "20261202T010000Z")
    (parent / "notes").mkdir()
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(parent))
    assert out.returncode == 2, out.stderr
    assert "holds the staging folders of 2 submissions (20261201T010000Z, 20261202T010000Z)" in out.stderr, out.stderr
    assert f"--merge {parent / '20261202T010000Z'}" in out.stderr and "run the shards first" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sqlite.staging"]
    merged = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(parent / "20261202T010000Z"))
    assert merged.returncode in (0, 1), merged.stderr


@pytest.mark.parametrize("extra, given", [(("--shard", "0/4"), "--shard"), (("--staging", "X"), "--staging")])
def test_merge_with_shard_or_staging_says_they_do_not_go_together(snapshots, tmp_path, extra, given):
    """`run --merge DIR --shard 0/4` was told "--shard needs --staging", and `--merge DIR --staging DIR2` "--staging
    without a shard: add --shard K/N": neither what was wrong. Exit 2, nothing written."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging, shards=range(1))
    extra = tuple(str(tmp_path / "other") if word == "X" else word for word in extra)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), *extra)
    assert out.returncode == 2, out.stderr
    assert f"--merge does not go with {given}" in out.stderr and f"to merge, drop {given}" in out.stderr, out.stderr
    assert "needs --staging" not in out.stderr and "without a shard" not in out.stderr
    assert not db.exists() and not (tmp_path / "other").exists()


def test_shards_of_another_site_or_manifest_are_said_so_not_stale_to_be_rerun_as_they_were(snapshots, tmp_path):
    """Shards written for another site and manifest were "stale", with the command that reran them for that site and
    manifest, after which they were stale again. Another site: the command that merges them where they belong; the
    same site's shards written for another manifest: that manifest named, and the rerun for this one."""
    site, other_site = snapshots / "first", snapshots / "second"
    staging, theirs, ours = tmp_path / "staging", tmp_path / "theirs.sqlite", tmp_path / "ours.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(ours)).returncode in (0, 1)
    run_shards(other_site, theirs, staging)
    out = main_here("run", "--site", str(site), "--db", str(ours), "--merge", str(staging))
    assert out.returncode == 2 and "is stale" not in out.stderr, out.stderr
    assert f"the shards scanned {other_site}, not this run's site {site}" in out.stderr, out.stderr
    assert f"--site {other_site} --db {theirs} --merge {staging}" in out.stderr, out.stderr
    shutil.rmtree(staging)
    run_shards(site, theirs, staging)
    out = main_here("run", "--site", str(site), "--db", str(ours), "--merge", str(staging))
    assert out.returncode == 2 and "is stale" not in out.stderr, out.stderr
    assert f"shard 0/{N} was written for another manifest, {theirs} (its --db), not this merge's {ours}" in out.stderr
    assert f"--site {site} --db {ours} --shard 0/{N} --staging {staging}" in out.stderr, out.stderr
    assert query(ours, "SELECT count(*) FROM versions") == [(1,)]
    # Shards of a new manifest (theirs: none yet) merged into another new one: based on the same (no) version, they
    # were committed into it without a word, and again into theirs by their own merge
    new = tmp_path / "new.sqlite"
    out = main_here("run", "--site", str(site), "--db", str(new), "--merge", str(staging))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"shard 0/{N} was written for another manifest, {theirs} (its --db), not this merge's {new}" in out.stderr
    assert f"--site {site} --db {theirs} --merge {staging}" in out.stderr, out.stderr
    assert not new.exists() or query(new, "SELECT count(*) FROM versions") == [(0,)]


def test_shards_merged_into_their_own_manifest_given_to_another_merge_are_said_merged(snapshots, tmp_path):
    """A staging folder whose shards were merged into their manifest, then given to another manifest's merge (a
    second manifest of the site, a --db mistyped): each shard was told "written for another manifest: merge the
    shards into that one", a merge that is refused as "merged already". Said once: which manifest's version they
    are, and how to run this manifest's own shards (into a folder of its own: not over theirs)."""
    site, staging = snapshots / "first", tmp_path / "staging"
    theirs, ours = tmp_path / "theirs.sqlite", tmp_path / "ours.sqlite"
    run_shards(site, theirs, staging)
    assert main_here("run", "--site", str(site), "--db", str(theirs), "--merge", str(staging), "--no-validate"
               ).returncode in (0, 1)
    (label,) = query(theirs, "SELECT label FROM versions")[0]
    for exists in (False, True):  # a new manifest, then one with a version of its own
        if exists:
            assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(ours)).returncode in (0, 1)
        out = main_here("run", "--site", str(site), "--db", str(ours), "--merge", str(staging), "--no-validate")
        assert out.returncode == 2, out.stdout + out.stderr
        assert (f"written for another manifest, {theirs} (their --db), not this merge's {ours}, and were merged into "
                f"that one already: they are its version {label}; nothing was committed into this one") in out.stderr
        assert f"--db {theirs} --merge" not in out.stderr, out.stderr  # (no merge that is refused)
        assert f"--db {ours} --no-validate --shard 0/{N} --staging {staging}-2" in out.stderr, out.stderr
        assert not ours.exists() or query(ours, "SELECT count(*) FROM versions") == [(int(exists),)]


def test_a_slurm_array_task_finds_its_shard_in_the_environment(snapshots, tmp_path):
    env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}
    out = cli("run", "--site", str(snapshots / "first"), "--db", str(tmp_path / "m.sqlite"), "--staging",
              str(tmp_path / "st"), "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "st" / "shard-2-of-4" / "scan.json").exists()
    bad = main_here("run", "--site", str(snapshots / "first"), "--db", str(tmp_path / "m.sqlite"), "--shard", "4/4",
              "--staging", str(tmp_path / "st"))
    assert bad.returncode == 2 and "0 <= K < N" in bad.stderr
    # A task id without a count, or one that is no number, is said as such (the first said "--staging without a
    # shard ... run it as a Slurm array task (SLURM_ARRAY_TASK_ID is then used)", of a set SLURM_ARRAY_TASK_ID)
    for env, said in (({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT is not set"),
                      ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": " "}, "SLURM_ARRAY_TASK_COUNT is empty"),
                      ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "4"}, "is not a task number"),
                      # `sbatch --array=3` (one shard rerun by hand): its one task listed the whole site as shard 0/1
                      ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_COUNT": "1"},
                       "the only task of its array (SLURM_ARRAY_TASK_COUNT 1")):
        bad = cli("run", "--site", str(snapshots / "first"), "--db", str(tmp_path / "m.sqlite"), "--staging",
                  str(tmp_path / "st"), env=env)
        assert bad.returncode == 2 and said in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert not (tmp_path / "st" / "shard-0-of-1").exists()
    one = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "1"}  # (--array=0: 0/1)
    assert cli("run", "--site", str(snapshots / "first"), "--db", str(tmp_path / "m.sqlite"), "--staging",
               str(tmp_path / "st"), env=one).returncode == 0
    assert (tmp_path / "st" / "shard-0-of-1" / "scan.json").exists()


def test_the_diff_of_the_changed_paths_alone_is_the_diff_of_the_whole_tree():
    # previous: path, md5, size, mtime, etag; the tree now: the same columns (md5 None: not hashed / unverifiable)
    before = [("same", "m1", 5, 1, None), ("edited", "m2", 5, 1, None), ("gone", "m3", 5, 1, None),
              ("old-name", "m4", 7, 1, None), ("cloud-same", None, 3, 1, "e1"), ("cloud-new", None, 3, 1, "e1"),
              ("unreadable", "m5", 5, 1, None), ("empty-a", "d41d", 0, 1, None)]
    now = [("same", "m1", 5, 2, None, None), ("edited", "m9", 5, 2, None, None), ("new-name", "m4", 7, 1, None, None),
           ("cloud-same", None, 3, 1, "e1", "unverifiable"), ("cloud-new", None, 3, 1, "e2", "unverifiable"),
           ("unreadable", None, 5, 3, None, None), ("empty-b", "d41d", 0, 1, None, None), ("added", "m7", 1, 1, None, None)]
    previous = pl.DataFrame([(i + 1, p, size, mtime, md5, None, "Other", None, None, 1, None, etag)
                             for i, (p, md5, size, mtime, etag) in enumerate(before)], schema=STATE_SCHEMA, orient="row")
    files = pl.DataFrame([(0, p, size, mtime, md5, md5 is not None, False, source or ("computed" if md5 else None), etag, None)
                          for p, md5, size, mtime, etag, source in now], schema=SCANNED_SCHEMA, orient="row")
    current, _ = current_tree(files, previous, [], {0: 1})
    whole, changed = compute_diff(previous, current), diff_changed(previous, current)
    assert changed.change_set.equals(whole.change_set) and changed.counts() == whole.counts()
    assert whole.counts() == {"added": 2, "removed": 2, "replaced": 2, "renamed": 1, "unchanged": 3}


def test_a_staging_path_that_cannot_hold_a_shard_is_refused_before_the_listing(snapshots, tmp_path):
    """`--staging` naming a file (or a folder under one) was an internal error (NotADirectoryError) after the whole
    shard had been listed and hashed; `--merge` of a file said the folder "does not exist"."""
    site, db, afile = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "afile"
    afile.write_text("not a folder")
    for staging in (afile, afile / "below"):
        out = main_here("run", "--site", str(site), "--db", str(db), "--shard", f"0/{N}", "--staging", str(staging))
        assert out.returncode == 2 and "cannot write" in out.stderr and "internal error" not in out.stderr, out.stderr
        assert "listing" not in out.stderr, out.stderr  # said before any work
    merged = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(afile))
    assert merged.returncode == 2 and "it is a file, not a folder" in merged.stderr, merged.stderr
    assert not db.exists()


def test_a_full_staging_disk_is_said_to_be_full(snapshots, tmp_path, small_disk):
    """polars reports a full disk while writing Parquet as its own error ("Invalid thrift: transport error"): it
    was an internal error; it is the OS's reason for the file it could not write, and no half shard stays."""
    staging = small_disk / "staging"
    staging.mkdir()
    filler = fill(small_disk)
    out = main_here("run", "--site", str(snapshots / "first"), "--db", str(tmp_path / "m.sqlite"), "--shard", f"0/{N}",
              "--staging", str(staging))
    assert out.returncode == 3, out.stderr  # a failure of the machine's, as a full manifest disk (was 2: bad usage)
    assert "No space left on device" in out.stderr and "internal error" not in out.stderr, out.stderr
    filler.unlink()
    assert [p.name for p in (staging / f"shard-0-of-{N}").iterdir()] == []  # no scan.json: the merge says "incomplete"


def test_shards_of_another_site_are_refused_naming_both_sites(snapshots, tmp_path):
    """The refusal named the roots as Python tuples ("[('/data/site', None)]")."""
    db, staging = tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(snapshots / "first", db, staging)
    out = main_here("run", "--site", str(snapshots / "second"), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stderr
    assert (f"the shards scanned {snapshots / 'first'}, not this run's site {snapshots / 'second'}" in out.stderr
            and "None" not in out.stderr), out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]


def test_a_shard_rerun_while_the_merge_runs_is_refused_and_the_merge_commits_what_it_checked(snapshots, tmp_path):
    """A shard rerun while the merge read the staging folder unlinked the scan.json the merge had checked and
    replaced the files it read partition by partition. The merge holds the folder's lock alone: the shard is refused
    (exit 4, saying why), the merge commits the shards it checked; a merge while a shard writes is refused too."""

    site, db, staging = snapshots, tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    merge = merge_paused_at_its_commit(site, db, staging)
    shard = main_here("run", "--site", str(site), "--db", str(db), "--shard", f"1/{N}", "--staging", str(staging))
    let_go(staging)
    out, err = merge.communicate(timeout=120)
    assert shard.returncode == 4, shard.stderr
    assert f"a merge is reading the shards in {staging}: this shard cannot be written there now" in shard.stderr
    assert "Traceback" not in shard.stderr
    assert merge.returncode in (0, 1) and "committed to" in out, err  # (1: the test data's findings)
    assert (staging / f"shard-1-of-{N}" / "scan.json").exists()  # the shard the merge checked, untouched
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]

    shard = shard_paused_at_hashing(site, db, staging, "--rehash")  # (files to hash)
    try:
        merged = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    finally:
        let_go(staging)
        shard.communicate(timeout=120)
    assert merged.returncode == 4 and f"shards are still being written into {staging}" in merged.stderr, merged.stderr
    assert not (staging / ".staging.lock").exists()  # its last holder, the shard, removed it


def test_the_staging_lock_file_goes_with_its_last_holder(tmp_path):
    """The staging folder's .staging.lock stayed behind after every merge. The last holder removes it, only when no
    other holds it: shards side by side keep it until the last one ends; a merge then makes it anew."""
    from chorus_batch.errors import ManifestLocked
    from chorus_batch.shards import staging_lock

    lock = tmp_path / ".staging.lock"
    with staging_lock(tmp_path, merge=False):
        with staging_lock(tmp_path, merge=False):  # two shards side by side
            assert lock.exists()
        assert lock.exists()  # the other shard still holds it
        with pytest.raises(ManifestLocked):
            with staging_lock(tmp_path, merge=True):
                pass
        assert lock.exists()
    assert not lock.exists()
    with staging_lock(tmp_path, merge=True):
        assert lock.exists() and stat.S_IMODE(lock.stat().st_mode) == 0o600
        with pytest.raises(ManifestLocked):
            with staging_lock(tmp_path, merge=False):
                pass
        assert lock.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_staging_locks_take_windows_file_locks_and_say_so_where_there_are_none(tmp_path, caplog):
    """On Windows the staging folder's lock and each shard's were skipped without a word (no fcntl there): two runs
    of one `--shard K/N --staging DIR`, or a shard rerun while the merge read, went on unrefused. There they are
    LockFileEx locks (shared for the shards, alone for the merge, as flock's); where Windows' calls are not to be
    had (as on this machine, asked for Windows' locks), that is said, with what not to do, and the work goes on."""
    from chorus_batch.coverage import Coverage
    from chorus_batch.shards import shard_lock, staging_lock

    caplog.set_level("WARNING", logger="chorus_batch")
    with staging_lock(tmp_path, merge=True, windows=True), shard_lock(tmp_path, Coverage(0, 2), windows=True):
        pass
    said = [r.getMessage() for r in caplog.records]
    assert any(f"cannot lock {tmp_path / '.staging.lock'} (no Windows file locks here" in m
               and m.endswith(": do not rerun a shard while the merge runs") for m in said), said
    assert any(f"cannot lock {tmp_path / '.shard-0-of-2.lock'}" in m and m.endswith("do not run one shard twice at once")
               for m in said), said


def test_one_shard_run_twice_at_once_is_refused_and_the_first_writes_it_whole(snapshots, tmp_path):
    """Two runs of one shard at once (a rerun while its array task still ran, a requeued task) were not blocked:
    both wrote into one shard folder. The second is refused (exit 4, saying who holds it), the first completes."""

    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    first = shard_paused_at_hashing(site, db, staging)
    try:
        second = main_here("run", "--site", str(site), "--db", str(db), "--shard", f"0/{N}", "--staging", str(staging))
        other = main_here("run", "--site", str(site), "--db", str(db), "--shard", f"1/{N}", "--staging", str(staging))
    finally:
        let_go(staging)
        out, err = first.communicate(timeout=120)
    assert second.returncode == 4, second.stderr
    assert f"shard 0 of {N} is being written into {staging} by another process" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert other.returncode == 0, other.stderr  # another shard side by side: as before
    assert first.returncode == 0, err
    assert (staging / f"shard-0-of-{N}" / "scan.json").exists()
    assert sorted(p.name for p in staging.iterdir() if p.name.startswith(".")) == []  # the locks went with them


@pytest.mark.parametrize("url", ["az://container/staging", "s3://bucket/staging", "https://host/staging?sig=SECRET"])
def test_a_staging_url_is_refused_up_front_naming_the_option(snapshots, tmp_path, url):
    """--staging az://c/x was taken as a folder 'az:/c/x' under the working directory: the shard "succeeded" where
    the merge would never look. Refused (exit 2) for --staging and --merge, naming the option and what it needs."""
    site, db = snapshots / "first", tmp_path / "m.sqlite"
    for args, option in ((["--shard", "0/4", "--staging", url], "--staging"), (["--merge", url], "--merge")):
        out = cli("run", "--site", str(site), "--db", str(db), *args, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert f"{option} {url.replace('SECRET', '***')} is a URL" in out.stderr and "shared folder" in out.stderr
        assert "SECRET" not in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_shard_on_an_empty_manifest_file_starts_it_as_a_run_does(snapshots, tmp_path):
    """An empty --db file is a new manifest to `run` and to the merge; the shards refused it ("the manifest is
    empty: run `chorus-batch run`"), so a first Slurm run into a pre-created file failed in every task. A --db under
    a file (which the merge cannot create) is refused by the shard before it hashes the site."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    db.touch()
    run_shards(site, db, staging)
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate").returncode in (0, 1)
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    (tmp_path / "a-file").write_text("x")
    out = main_here("run", "--site", str(site), "--db", str(tmp_path / "a-file" / "m.sqlite"), "--shard", "0/4",
              "--staging", str(tmp_path / "other"))
    assert out.returncode == 2 and "a-file is a file, not a folder" in out.stderr, out.stderr
    assert not (tmp_path / "other" / "shard-0-of-4").exists()


def test_shards_of_another_split_left_in_the_staging_folder_are_left_out_and_said(snapshots, tmp_path):
    """A staging folder reused with another shard count (`--shard K/4` runs left there, then 2 shards): the merge
    refused everything ("holds shards of different splits"). The latest written split is merged, the other is named
    (how many, when) with the command that removes it, and never merged with it."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)  # a split into 4, left there
    (staging / "shard-3-of-4" / "scan.json").unlink()  # (one of them even incomplete: not a reason to refuse)
    for k in (0, 1):
        assert main_here("run", "--site", str(site), "--db", str(db), "--shard", f"{k}/2", "--staging", str(staging)
                   ).returncode == 0
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    assert "also holds 4 shard folders of a split into 4" in out.stderr and "left out" in out.stderr
    assert f"rm -r {staging}/shard-*-of-4" in out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    single = tmp_path / "single.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(single)).returncode in (0, 1)
    assert manifest_view(db) == manifest_view(single)


def test_a_shard_listed_with_other_exclusion_globs_is_refused_naming_it_and_its_rerun(snapshots, tmp_path):
    """One shard ran with an extra --exclude: its files were silently left out of the merged version (removed, on
    the next run). The completion record carries the globs; the merge names the shard and the command that reruns
    it with the merge's own exclusions."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging, shards=(1, 2, 3))
    out = main_here("run", "--site", str(site), "--db", str(db), "--shard", "0/4", "--staging", str(staging),
              "--exclude", "*.csv")
    assert out.returncode == 0, out.stderr
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--exclude", "*.tmp")
    assert out.returncode == 2, out.stderr
    assert "shard 0/4 was listed with other exclusion globs ('*.csv') than this merge's ('*.tmp')" in out.stderr
    assert f"--exclude '*.tmp' --shard 0/4 --staging {staging}" in out.stderr
    assert "shard 1/4" in out.stderr and "nothing was committed" in out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]
    run_shards(site, db, staging, shards=(0, 1, 2, 3))
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate").returncode in (0, 1)
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_a_shard_listed_with_other_symlink_following_is_refused_naming_it_and_its_rerun(snapshots, tmp_path):
    """One shard listed with --follow-symlinks, the others and the merge without: the files behind links in that
    shard's person folders went into the version and no other's (removed on the next run). scan.json records the
    setting; the merge names the shard and its rerun, or, every shard alike, the merge that matches them."""
    site, db, staging = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "staging"
    shutil.copytree(snapshots / "first", site)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("kept elsewhere\n")
    for person in sorted(p for p in site.iterdir() if p.name.isdigit()):
        (person / "extra").symlink_to(tmp_path / "elsewhere")
    run_shards(site, db, staging, shards=(1, 2, 3))
    out = main_here("run", "--site", str(site), "--db", str(db), "--shard", "0/4", "--staging", str(staging),
              "--follow-symlinks")
    assert out.returncode == 0, out.stderr
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate")
    assert out.returncode == 2, out.stderr
    assert "shard 0/4 was listed following symbolic links (--follow-symlinks), this merge without" in out.stderr
    assert f"--shard 0/4 --staging {staging}" in out.stderr and "nothing was committed" in out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]
    for k in (1, 2, 3):
        assert main_here("run", "--site", str(site), "--db", str(db), "--shard", f"{k}/4", "--staging", str(staging),
                   "--follow-symlinks").returncode == 0
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate")
    assert out.returncode == 2 and "merge with the settings the shards ran with" in out.stderr, out.stderr
    assert "--follow-symlinks --merge" in out.stderr
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate",
               "--follow-symlinks").returncode in (0, 1)
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def config_site(snapshots: Path, tmp_path: Path) -> tuple[Path, Path, Path, Path, Path, Path]:
    """A site with a [site.roots] root (one person's waveforms elsewhere) in cfg/chorus.toml, which names the manifest:
    site, bedside, db, staging, cfg, the config."""
    site, bedside, db, staging, there = (tmp_path / "site", tmp_path / "bedside", tmp_path / "m.sqlite",
                                         tmp_path / "staging", tmp_path / "cfg")
    shutil.copytree(snapshots / "first", site)
    shutil.move(site / "000001" / "Waveforms", bedside / "000001" / "Waveforms")
    there.mkdir()
    config = there / "chorus.toml"
    config.write_text(f'[site]\nroot = "{site}"\n[site.roots]\nWaveforms = "{bedside}"\n[manifest]\ndb = "{db}"\n')
    return site, bedside, db, staging, there, config


def test_a_missing_shard_of_a_site_run_from_a_config_file_is_rerun_with_that_config(snapshots, tmp_path):
    """Shards run from a chorus.toml (here ./chorus.toml, read by default; a [site.roots] root): the merge's "rerun
    it with" command and the shard's "merge with" named --site and --db but not the config, so the shard rerun as
    told listed another site (without the [site.roots] root: the merge then refused it), or nothing. Each shard
    records its flags in scan.json (the config as an absolute path); the rerun is told with them, from any folder."""
    import shlex

    site, bedside, db, staging, there, config = config_site(snapshots, tmp_path)
    for k in (0, 1, 3):
        out = cli("run", "--shard", f"{k}/{N}", "--staging", "../staging", "--workers", "2", cwd=there)
        assert out.returncode == 0, out.stderr
        said = out.stdout.split("merge with ", 1)[1].strip()
        assert shlex.split(said) == [*program_words(), "run", "--config", str(config), "--workers", "2",
                                     "--merge", str(staging)]
    out = cli("run", "--config", str(config), "--merge", "staging", cwd=tmp_path)  # a relative folder, here
    assert out.returncode == 2 and "shard 2/4 is missing" in out.stderr, out.stderr
    rerun = out.stderr.split("rerun it with: ", 1)[1].split("\n", 1)[0]
    assert shlex.split(rerun) == [*program_words(), "run", "--config", str(config), "--workers", "2",
                                  "--shard", "2/4", "--staging", str(staging)]
    # the command as told, from another folder: the shard lists the config's roots, the merge then commits
    assert cli(*shlex.split(rerun)[len(program_words()) + 1:], cwd=bedside).returncode == 0
    out = cli("run", "--config", str(config), "--merge", str(staging), "--no-validate", cwd=tmp_path)
    assert out.returncode in (0, 1) and "committed" in out.stdout, out.stderr
    assert query(db, "SELECT count(*) FROM source_files WHERE srcfile LIKE '000001/Waveforms/%'")[0][0] > 0


def test_a_shard_out_of_range_is_refused_before_anything_is_listed_saying_where_it_came_from(snapshots, tmp_path):
    """--shard 1/99999999999999999999 was an internal error (polars' Int64 overflowed) once the listing began, and
    a split into more shards than the site's 4096 buckets listed nothing in the extra ones; an array task whose id
    was out of range was told about '6/4', not about its SLURM_ARRAY_* variables. All exit 2, nothing written;
    `slurm-script --shards 4097` makes no script."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    common = ("run", "--site", str(site), "--db", str(db), "--staging", str(staging))
    for shard in ("1/99999999999999999999", "0/4097", "4/4", "1/0"):
        out = cli(*common, "--shard", shard)
        assert out.returncode == 2 and "internal error" not in out.stderr, out.stderr
        assert f"invalid shard: '{shard}'" in out.stderr and "where: --shard\n" in out.stderr, out.stderr
        assert "0 <= K < N <= 4096" in out.stderr
    assert "at most 4096 shards" in cli(*common, "--shard", "0/4097").stderr
    # Digits of other scripts (Arabic-Indic, full-width, Devanagari) were taken as ASCII ones by re's \d and int():
    # `--shard ٣/٤` ran as shard 3 of 4, and a task id "٣" as task 3; refused as any other value that is no K/N
    for shard in ("\u0663/\u0664", "\uff11/\uff14", "1/\u096a"):
        out = cli(*common, "--shard", shard)
        assert out.returncode == 2 and f"invalid shard: {shard!r}" in out.stderr, out.stderr
        assert "where: --shard\n" in out.stderr and "Traceback" not in out.stderr
    for task, count in (("\u0663", "4"), ("1", "\u0664"), ("\u00b2", "4")):
        out = cli(*common, env={"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_COUNT": count})
        assert out.returncode == 2 and "Traceback" not in out.stderr and "SLURM_ARRAY_TASK_ID" in out.stderr, out.stderr
    out = cli(*common, env={"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert out.returncode == 2 and "SLURM_ARRAY_TASK_ID 6" in out.stderr and "SLURM_ARRAY_TASK_COUNT 4" in out.stderr
    assert "where: SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT" in out.stderr
    assert not staging.exists() and not db.exists()
    assert cli(*common, "--shard", "4096/4096").returncode == 2  # K < N
    assert main_here("run", "--site", str(site), "--db", str(db), "--staging", str(staging), "--shard", "4095/4096").returncode == 0
    out = main_here("slurm-script", "--site", str(site), "--db", str(db), "--shards", "4097")
    assert out.returncode == 2 and "at most 4096 shards" in out.stderr and out.stdout == ""


def test_flags_the_other_side_acts_on_are_refused_not_dropped(snapshots, tmp_path):
    """A shard given --parquet, --version, --max-delete or --delete-list (what the merge's commit does), or a merge
    given --rehash (what the shards' hashing does), dropped them without a word: a site that thought it had asked for
    a snapshot, a label or a tighter guard got none. Exit 2 naming them and the side that takes them; nothing
    written. chorus.toml's values serve both sides and stay accepted."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    shard = ("run", "--site", str(site), "--db", str(db), "--shard", f"0/{N}", "--staging", str(staging))
    for flags in (("--parquet", str(tmp_path / "pq")), ("--version", "v1"), ("--max-delete", "10"),
                  ("--delete-list", str(tmp_path / "gone.txt"))):
        out = cli(*shard, *flags)
        assert out.returncode == 2, out.stderr
        assert f"{flags[0]} would do nothing in a shard" in out.stderr and "give " + flags[0] + " to the merge" in out.stderr
    assert not staging.exists() and not db.exists() and not (tmp_path / "pq").exists()
    config = tmp_path / "chorus.toml"
    config.write_text(f'[manifest]\nparquet = "{tmp_path / "pq"}"\n[run]\nmax_delete = 10\n')
    run_shards(site, db, staging)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--rehash")
    assert out.returncode == 2 and "--rehash would do nothing in a merge" in out.stderr, out.stderr
    assert "run the shards again with --rehash" in out.stderr and not db.exists()
    out = main_here("run", "--config", str(config), "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode in (0, 1), out.stderr  # (the config's parquet and max_delete: the merge's)
    assert (tmp_path / "pq").is_dir()


def test_a_shard_given_in_a_slurm_array_task_other_than_its_own_is_said(snapshots, tmp_path):
    """An array whose tasks were all given one fixed --shard (a script copied with `--shard 1/4` in it) listed shard 1
    four times and the others never, silently until the merge named three missing shards. The --shard given is
    still listed (a rerun is run so), and each task says that it is not its own."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    common = ("run", "--site", str(site), "--db", str(db), "--staging", str(staging), "-q")
    array = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    out = cli(*common, "--shard", "1/4", env=array)
    assert out.returncode == 0 and (staging / "shard-1-of-4" / "scan.json").exists(), out.stderr
    assert "--shard 1/4 is listed, not this Slurm array task's own shard 2/4 (SLURM_ARRAY_TASK_ID 2)" in out.stderr
    for agreeing in (["--shard", "2/4"], []):  # as the script passes it, or from the variables alone
        out = cli(*common, *agreeing, env=array)
        assert out.returncode == 0 and "not this Slurm array task's own" not in out.stderr, out.stderr


def test_an_array_starting_at_1_given_its_task_id_as_the_shard_is_told_what_to_pass(snapshots, tmp_path):
    """`sbatch --array=1-4` with `--shard "$SLURM_ARRAY_TASK_ID/4"`: tasks 1-3 wrote shards 1-3, told to pass --shard
    "$SLURM_ARRAY_TASK_ID/N" (what they were given), and task 4 was refused ('4/4' is no shard) with no word of the
    array's start; shard 0 was never written. Both now say the array starts at 1 and what to pass instead."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    common = ("run", "--site", str(site), "--db", str(db), "--staging", str(staging), "-q")
    said = "this Slurm array's task ids start at 1 (SLURM_ARRAY_TASK_MIN), not 0"
    for task in ("2", "4"):
        env = {"SLURM_ARRAY_TASK_ID": task, "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}
        out = cli(*common, "--shard", f"{task}/4", env=env)
        assert said in out.stderr and '--shard "$((SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN))/N"' in out.stderr
        assert "pass --shard \"$SLURM_ARRAY_TASK_ID/N\"" not in out.stderr, out.stderr
        assert out.returncode == (0 if task == "2" else 2), out.stderr
    out = cli(*common, env={"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"})
    assert out.returncode == 0 and (staging / "shard-3-of-4" / "scan.json").exists() and said not in out.stderr


def test_shards_listed_with_other_roots_than_the_merge_are_named_with_what_to_run(snapshots, tmp_path):
    """One shard rerun without the --config of the others (so without its [site.roots]) was refused as "the shards
    scanned different roots", naming none, with "rerun every shard". It is now named, with the command that reruns it
    as the merge is run; and when every shard alike differs from the merge (the merge run without the shards'
    --config), the merge is told the command that merges with the shards' own settings. Nothing is committed."""
    import shlex

    site, _bedside, db, staging, there, config = config_site(snapshots, tmp_path)
    for k in range(2):
        assert cli("run", "--shard", f"{k}/2", "--staging", str(staging), cwd=there).returncode == 0
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))  # the merge without the config
    assert out.returncode == 2 and f"the shards scanned {site}, {_bedside} ([site.roots] Waveforms), not this " \
                                   f"run's site {site}; nothing was committed" in out.stderr, out.stderr
    told = out.stderr.split("merge with the settings the shards ran with: ", 1)[1].split("; or rerun", 1)[0]
    assert shlex.split(told) == [*program_words(), "run", "--config", str(config), "--merge", str(staging)]
    # one shard rerun without the config: named, with its rerun as this merge is run
    assert main_here("run", "--site", str(site), "--db", str(db), "--shard", "1/2", "--staging", str(staging)).returncode == 0
    out = main_here("run", "--config", str(config), "--merge", str(staging))
    assert out.returncode == 2 and f"shard 1/2 listed other roots ({site}) than this merge's site" in out.stderr, \
        out.stderr
    assert "shard 0/2" not in out.stderr and "nothing was committed" in out.stderr
    rerun = out.stderr.split("rerun it with: ", 1)[1].split("\n", 1)[0]
    assert shlex.split(rerun) == [*program_words(), "run", "--config", str(config), "--shard", "1/2", "--staging",
                                  str(staging)]
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]
    assert cli(*shlex.split(rerun)[len(program_words()) + 1:]).returncode == 0
    out = main_here("run", "--config", str(config), "--merge", str(staging), "--no-validate")
    assert out.returncode in (0, 1) and "committed" in out.stdout, out.stderr


def test_a_disk_that_fills_while_a_shard_is_written_leaves_none_of_it(tmp_path, small_disk):
    """The staging disk filled after a shard's files.parquet and errors.parquet were written, before its
    facts.parquet: the two stayed (no scan.json: of no use to the merge) and kept the disk full for the other shards,
    and the message said neither that nor what to rerun. Now none of the shard's files stay, and it says so with
    the command that reruns it; nothing was committed."""
    import os
    import shlex

    site = tmp_path / "site"
    make_testdata(site, Spec(persons=40, files_per_person=10, size=64))
    db, roomy = tmp_path / "m.sqlite", tmp_path / "roomy"
    shard = ("run", "--site", str(site / "first"), "--db", str(db), "--shard", "0/2", "--staging")
    assert cli(*shard, str(roomy)).returncode == 0
    pages = lambda path: -(-path.stat().st_size // 4096) * 4096  # noqa: E731  (tmpfs takes whole pages)
    written = sum(pages(roomy / "shard-0-of-2" / name) for name in ("files.parquet", "errors.parquet"))
    assert pages(roomy / "shard-0-of-2" / "facts.parquet") >= 3 * 4096  # a margin for the free space below
    staging = small_disk / "staging"
    staging.mkdir()
    filler = fill(small_disk)
    size = filler.stat().st_size
    os.truncate(filler, size - written - 4096)  # room for files.parquet and errors.parquet, not for facts.parquet
    out = cli(*shard, str(staging))
    assert out.returncode == 3 and "facts.parquet: No space left on device" in out.stderr, out.stderr
    assert list((staging / "shard-0-of-2").iterdir()) == []
    assert f"shard 0 of 2 was not written (none of its files were left in {staging / 'shard-0-of-2'}); nothing " \
           "was committed" in out.stderr
    assert f"rerun it with: {shlex.join(program_words())} run --site {site / 'first'} --db {db} --shard 0/2 --staging {staging}" in out.stderr
    filler.unlink()
    assert cli(*shard, str(staging)).returncode == 0 and (staging / "shard-0-of-2" / "scan.json").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_shard_stopped_while_it_hashes_says_so_with_its_rerun(snapshots, tmp_path, signum):
    """A shard stopped by Slurm's time limit (SIGTERM) or Ctrl-C said a run's words, "nothing was committed; the
    manifest holds what it held before (`chorus-batch versions` lists it)", of a manifest a shard never writes, and
    gave no rerun command (a shard that failed writing its files did)."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    proc = paused("run", "--site", str(site), "--db", str(db), "--shard", "0/2", "--staging", str(staging), at="hashing")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (143 if signum == signal.SIGTERM else 130), err
    assert f"shard 0 of 2 was not written to {staging / 'shard-0-of-2'}; nothing was committed (a shard never writes " \
           "the manifest); rerun it with: " in err, err
    assert f"--shard 0/2 --staging {staging}" in err and "holds what it held before" not in err, err
    assert not (staging / "shard-0-of-2" / "scan.json").exists() and not db.exists()


def test_a_merge_while_another_merges_the_same_shards_is_told_so(snapshots, tmp_path):
    """A merge run twice at once (a requeued merge job, a hand-run merge beside the job) was told "shards are still
    being written into ...: wait for the shards to finish (`squeue`)" of shards that had all ended: the holder of the
    staging lock was the other merge. It is now said as such (exit 4); the first merge commits, once."""

    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    first = merge_paused_at_its_commit(site, db, staging)
    second = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    let_go(staging)
    out, err = first.communicate(timeout=120)
    assert second.returncode == 4, second.stderr
    assert f"another merge is reading and committing the shards in {staging}" in second.stderr
    assert "still being written" not in second.stderr and "nothing was committed by this one" in second.stderr
    assert first.returncode in (0, 1) and "committed to" in out, err
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_a_shard_that_ran_where_the_site_is_not_mounted_is_refused_not_merged_as_removals(snapshots, tmp_path):
    """A shard on a node where the site's file system is not mounted (an empty mount point) listed none of its
    files, exit 0, and the merge committed them all as removed (exit 0), where a single-node run is refused. Each
    shard records the roots it found empty, and where it ran; the merge names the shard, the host and the rerun,
    and commits nothing."""
    import subprocess
    import sys

    site, db, staging = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "staging"
    shutil.copytree(snapshots / "first", site)
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    run_shards(site, db, staging, shards=(0, 2, 3))
    unmounted = subprocess.run(  # shard 1 in a mount namespace of its own, with an empty file system over the site
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"', str(site), sys.executable, "-m",
         "chorus_batch", "run", "--site", str(site), "--db", str(db), "--shard", f"1/{N}", "--staging", str(staging)],
        capture_output=True, text=True)
    assert unmounted.returncode == 0 and f"shard 1/{N}: 0 files" in unmounted.stdout, unmounted.stderr
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"shard 1/{N} found {site} empty on " in out.stderr and "the site not mounted there?" in out.stderr
    assert f"--shard 1/{N} --staging {staging}" in out.stderr and "nothing was committed" in out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    run_shards(site, db, staging, shards=(1,))  # rerun where it is mounted: merged, nothing removed
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate")
    assert out.returncode in (0, 1) and "no changes since version" in out.stdout, out.stdout + out.stderr


def test_a_damaged_shard_is_named_with_its_rerun_beside_the_others(snapshots, tmp_path):
    """A shard's scan.json cut short (a full disk, a copy) or its files.parquet gone stopped the merge at that shard
    with "not a complete scan result ... run the scan (or shard) again": no rerun command, no word of the other
    shards, nor that nothing was committed. It is now a problem named like a missing shard, with its rerun."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    (staging / f"shard-1-of-{N}" / "scan.json").write_text('{"roots": [')
    (staging / f"shard-2-of-{N}" / "files.parquet").unlink()
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stderr
    for k in (1, 2):
        assert f"shard {k}/{N} is damaged (not a complete scan result: " in out.stderr
        assert f"--shard {k}/{N} --staging {staging}" in out.stderr
    assert "nothing was committed" in out.stderr
    run_shards(site, db, staging, shards=(1, 2))
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate").returncode in (0, 1)
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_a_rerun_command_with_a_masked_sas_says_to_put_the_secret_back(tmp_path):
    """A shard of a site given as a URL with a SAS records its flags masked (never the token); the merge's "rerun it
    with" then gave `?sig=***`, which the storage refused with nothing saying why. The command now says what to do."""
    from chorus_batch.scan import Coverage
    from chorus_batch.shards import merge_command, rerun_command
    from chorus_batch.urls import redact

    recorded = redact(["--site", "https://acct.blob.core.windows.net/c/site?sv=2024&sig=Zx9Kq", "--db", "/m.sqlite"])
    for told in (rerun_command(None, Coverage(shard=1, shards=4), tmp_path, recorded),  # type: ignore[arg-type]
                 merge_command(recorded, tmp_path)):
        assert "Zx9Kq" not in told and "sig=***" in told
        assert "put the secret shown as *** back" in told and "AZURE_STORAGE_SAS_TOKEN" in told
    plain = rerun_command(None, Coverage(shard=1, shards=4), tmp_path, ["--site", "/data/site"])  # type: ignore[arg-type]
    assert "secret" not in plain


def test_a_site_spelled_through_a_symlink_is_the_same_site_to_the_merge(snapshots, tmp_path):
    """Shards run with --site /data/site and the merge with --site /mnt/site (a symlink to it: another node's mount,
    a user's shortcut) were refused as "the shards scanned /data/site, not this run's site"; every path in the two
    is the same. A local root is compared by the folder it is; another folder is still refused."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    link = tmp_path / "link"
    link.symlink_to(site, target_is_directory=True)
    run_shards(site, db, staging)
    other = main_here("run", "--site", str(snapshots / "second"), "--db", str(db), "--merge", str(staging))
    assert other.returncode == 2 and "the shards scanned" in other.stderr, other.stderr
    out = main_here("run", "--site", str(link), "--db", str(db), "--merge", str(staging), "--no-validate")
    assert out.returncode == 0, out.stderr
    assert query(db, "SELECT count(*) FROM source_files") == [(sum(p.is_file() for p in site.rglob("*")),)]


def test_a_merge_refused_into_a_manifest_not_made_yet_leaves_none_behind(snapshots, tmp_path):
    """Shards refused (here one missing) by a merge into a new manifest were refused once that manifest was made: an
    empty manifest and its .lock were left behind, as no other refused command leaves one."""
    site, db, staging = snapshots / "first", tmp_path / "new" / "m.sqlite", tmp_path / "staging"
    db.parent.mkdir()
    run_shards(site, db, staging, shards=range(N - 1))
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stderr
    assert f"shard {N - 1}/{N} is missing" in out.stderr and "nothing was committed" in out.stderr, out.stderr
    assert list(db.parent.iterdir()) == []


def test_one_outside_file_linked_from_two_shards_is_recorded_once_as_by_a_single_node_run(snapshots, tmp_path):
    """A file outside the site reached through links in two person folders of different shards was listed by both
    shards and recorded twice (two rows, two uploads), where a single-node run keeps it once under its first path and
    names the other link (symlink_duplicate). The merge now keeps it once, as that run does."""
    site, outside = tmp_path / "site", tmp_path / "outside"
    shutil.copytree(snapshots / "first", site)
    outside.mkdir()
    (outside / "shared.txt").write_text("one file\n")
    for person in ("000001", "000004"):  # shards 1 and 0 of 4
        (site / person / "notes.txt").symlink_to(outside / "shared.txt")
    single, sharded, staging = tmp_path / "single.sqlite", tmp_path / "sharded.sqlite", tmp_path / "staging"
    out = main_here("run", "--site", str(site), "--db", str(single), "--follow-symlinks", "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    for k in range(N):
        out = main_here("run", "--site", str(site), "--db", str(sharded), "--follow-symlinks", "--shard", f"{k}/{N}",
                  "--staging", str(staging))
        assert out.returncode == 0, out.stderr
    out = main_here("run", "--site", str(site), "--db", str(sharded), "--follow-symlinks", "--merge", str(staging),
              "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    for db in (single, sharded):
        assert query(db, "SELECT srcfile FROM source_files WHERE srcfile LIKE '%notes.txt'") == [("000001/notes.txt",)]
    said = "SELECT srcfile, kind, message FROM scan_errors WHERE kind LIKE 'symlink%'"
    assert query(sharded, said) == query(single, said) and len(query(single, said)) == 1


def test_a_merge_of_shards_on_a_read_only_file_system_says_so_and_what_to_do(snapshots, tmp_path, small_disk):
    """Shards on a file system mounted read-only since (a scratch space frozen for maintenance) were merged with "make
    that folder writable by this user, or merge as the user who ran the shards": neither helps. It says the file
    system is read-only, and to merge a copy."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", small_disk / "staging"
    run_shards(site, db, staging, shards=range(1))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert out.returncode == 2, out.stderr
    assert "Read-only file system" in out.stderr and "file system is read-only: copy the staging folder" in out.stderr
    assert "merge as the user" not in out.stderr and not db.exists(), out.stderr


def test_the_shards_of_a_run_re_verify_within_one_verify_max_bytes_between_them(snapshots, tmp_path):
    # Each shard chose its own re-verification sample within --verify-max-bytes: N shards read N times the budget a
    # site set for a night (the merge then said "re-verified: 45.5 KiB" of a 20 KiB budget). They now share the one
    # sample the whole site's previous rows give, as a single-node run does.
    site = tmp_path / "site"
    shutil.copytree(snapshots / "first", site)
    # Written an hour ago: files written just before the first run are racily clean and read again the next night
    # (their verified_ns moved, not the sample's): run alone, right after the module's fixture made them, it failed.
    an_hour_ago = time.time() - 3600
    for path in site.rglob("*"):
        os.utime(path, (an_hour_ago, an_hour_ago))
    single, merged = tmp_path / "single.sqlite", tmp_path / "merged.sqlite"
    assert main_here("run", "--site", str(site), "--db", str(single)).returncode in (0, 1)
    run_shards(site, merged, tmp_path / "staging-0")
    assert main_here("run", "--site", str(site), "--db", str(merged), "--merge", str(tmp_path / "staging-0")).returncode in (0, 1)
    site_bytes = query(merged, "SELECT sum(size) FROM source_files WHERE time_invalid IS NULL")[0][0]
    budget = site_bytes // 3
    verify = ["--verify-sample", "100", "--verify-max-bytes", str(budget)]
    read = "SELECT srcfile, size, verified_ns FROM source_files WHERE time_invalid IS NULL"
    for night in (1, 2):
        before = dict((path, when) for path, _size, when in query(merged, read))
        staging = tmp_path / f"staging-{night}"
        for k in range(N):
            out = main_here("run", "--site", str(site), "--db", str(merged), "--shard", f"{k}/{N}", "--staging", str(staging),
                      *verify)
            assert out.returncode == 0, out.stderr
        out = main_here("run", "--site", str(site), "--db", str(merged), "--merge", str(staging), "--json")
        assert out.returncode in (0, 1), out.stderr
        said = json.loads(out.stdout)["verification"]
        reread = [size for path, size, when in query(merged, read) if when != before[path]]
        assert 0 < sum(reread) <= budget and said["bytes_reverified"] == sum(reread), (night, said, budget)
        alone = json.loads(main_here("run", "--site", str(site), "--db", str(single), "--json", *verify).stdout)
        assert said["files_reverified"] == alone["verification"]["files_reverified"], night


def test_shards_listed_with_the_same_exclusion_globs_in_another_order_are_merged(snapshots, tmp_path):
    """Globs leave out a file when any of them matches, so their order leaves out the same files; shards run with
    `--exclude '*.csv' --exclude '*.hea'` were refused by a merge given them the other way round (and a shard rerun with
    them so among the others), said as "other exclusion globs" whose files would be "left out unlike the others"."""
    site, db, single = snapshots / "second", tmp_path / "m.sqlite", tmp_path / "single.sqlite"
    staging = tmp_path / "staging"
    # (and a path glob spelt two ways: `/scratch` and `./scratch` both name the site's top-level scratch/)
    globs = [["--exclude", "*.csv", "--exclude", "*.hea", "--exclude", "/scratch"],
             ["--exclude", "*.hea", "--exclude", "./scratch", "--exclude", "*.csv"]]
    for k in range(N):
        out = main_here("run", "--site", str(site), "--db", str(db), "--shard", f"{k}/{N}", "--staging", str(staging),
                  *globs[k % 2])
        assert out.returncode == 0, out.stderr
    merged = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), *globs[1])
    assert merged.returncode in (0, 1) and "committed" in merged.stdout, merged.stderr
    alone = main_here("run", "--site", str(site), "--db", str(single), *globs[1])
    assert merged.returncode == alone.returncode, merged.stderr + alone.stderr
    assert manifest_view(db) == manifest_view(single)
    assert query(db, "SELECT count(*) FROM source_files WHERE srcfile LIKE '%.csv' OR srcfile LIKE '%.hea'") == [(0,)]


def test_a_staging_folder_shared_by_two_manifests_merges_this_manifests_own_split(snapshots, tmp_path):
    """One --staging folder given to two manifests' shards, each with its own --shards: the merge took the split
    written last, the other manifest's, refused it shard by shard ("written for another manifest: rerun it for this
    one", the whole site hashed again over that manifest's shards), and said this manifest's own complete split was
    "left out", with an `rm -r` of it. Its own split is merged; the other one is named as that manifest's, not removed."""
    site, db, other, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "other.sqlite", tmp_path / "st"
    run_shards(site, db, staging)  # this manifest's split into N
    for k in (0, 1):  # then another manifest's split into 2, in the same folder
        assert main_here("run", "--site", str(site), "--db", str(other), "--shard", f"{k}/2", "--staging", str(staging)
                   ).returncode == 0
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    assert "rerun it for this one" not in out.stderr and f"rm -r {staging}/shard-*-of-{N}" not in out.stderr
    assert "split into 2 (shard-*-of-2, listed " in out.stderr and f"written for another manifest, {other}" in out.stderr
    assert f"rm -r {staging}/shard-*-of-2" not in out.stderr  # (the other manifest's shards, still to be merged)
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    single = tmp_path / "single.sqlite"
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(single)).returncode in (0, 1)
    assert manifest_view(db) == manifest_view(single)
    # and the other manifest's merge takes its own split, the newest, as before
    theirs = main_here("run", "--site", str(site), "--db", str(other), "--merge", str(staging), "--no-validate")
    assert theirs.returncode in (0, 1), theirs.stderr
    assert manifest_view(other) == manifest_view(single)


def test_a_copied_staging_folder_merges_the_split_listed_last_not_the_one_copied_last(snapshots, tmp_path):
    """The latest of two splits in a staging folder was told by its files' modification times: a folder copied with
    `cp -r` (another disk, a scratch file system) has the copy's times, and the older split, copied after the newer,
    was merged as the latest, the newer left out as "older": a version of the old listing (a file added between the
    two, missing). The shards' recorded listing start decides."""
    site, db, staging = tmp_path / "site", tmp_path / "m.sqlite", tmp_path / "staging"
    shutil.copytree(snapshots / "first", site)
    assert main_here("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode in (0, 1)
    run_shards(site, db, staging)  # a split into 4, left there
    (site / "000001" / "added.csv").write_text("added after the split into 4\n")
    for k in (0, 1):
        assert main_here("run", "--site", str(site), "--db", str(db), "--shard", f"{k}/2", "--staging", str(staging)
                   ).returncode == 0
    copy = tmp_path / "copy"
    copy.mkdir()
    for n in (2, N):  # the newer split first, the older last (as a copy may go)
        for folder in sorted(staging.glob(f"shard-*-of-{n}")):
            subprocess.run(["cp", "-r", str(folder), str(copy)], check=True)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(copy), "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    assert f"also holds {N} shard folders of a split into {N}" in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM source_files WHERE srcfile = '000001/added.csv' AND time_invalid IS NULL"
                 ) == [(1,)]


def test_shards_that_listed_the_site_hours_apart_are_said(snapshots, tmp_path):
    """Shards listed hours apart (a busy cluster ran the array's tasks through the night, or one was rerun the next
    day): a file moved between two shards' person folders meanwhile was recorded as removed, or at both paths, without
    a word. The merge says how far apart they listed, and what that means."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    record = staging / f"shard-2-of-{N}" / "scan.json"
    said = json.loads(record.read_text())
    said["scan_started_ns"] -= int(2.5 * 3600e9)  # as if shard 2 had listed the site 2.5 hours before the others
    record.write_text(json.dumps(said))
    merged = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert merged.returncode in (0, 1), merged.stderr
    assert "the shards listed the site 2.5 hours apart (shard 2 at " in merged.stderr, merged.stderr
    assert "recorded as removed, or at both paths, until the next run" in merged.stderr
    again = tmp_path / "again"
    run_shards(site, tmp_path / "m2.sqlite", again)
    alone = main_here("run", "--site", str(site), "--db", str(tmp_path / "m2.sqlite"), "--merge", str(again))
    assert alone.returncode in (0, 1) and "hours apart" not in alone.stderr, alone.stderr


@pytest.mark.parametrize("partition_rows", [None, 5], ids=["a-partition-per-shard", "many-partitions-per-shard"])
def test_a_shard_whose_files_parquet_is_damaged_inside_is_named_with_its_rerun(snapshots, tmp_path, monkeypatch,
                                                                                partition_rows):
    """Only the footer of a shard's files.parquet is checked before the commit; its files are read partition by
    partition during it. A data page damaged on the staging disk (a bit flipped, a copy gone wrong) ended the merge as
    an "internal error" (zstd: "Data corruption detected"), exit 3, naming no shard and no rerun."""
    if partition_rows:
        monkeypatch.setenv("CHORUS_BATCH_PARTITION_ROWS", str(partition_rows))
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate").returncode in (0, 1)
    staging = tmp_path / "staging2"
    run_shards(snapshots / "second", db, staging)
    files = staging / f"shard-1-of-{N}" / "files.parquet"
    with open(files, "r+b") as f:  # past the magic "PAR1", inside the first column's pages; the footer stays
        f.seek(min(300, files.stat().st_size // 4))
        f.write(b"X" * 30)
    out = main_here("run", "--site", str(snapshots / "second"), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stderr
    assert "internal error" not in out.stderr
    assert f"shard 1/{N} is damaged (its files.parquet cannot be read: " in out.stderr, out.stderr
    assert f"--shard 1/{N} --staging {staging}" in out.stderr and "nothing was committed" in out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


@pytest.mark.parametrize("edit", ["bucket-of-another-shard", "bucket-not-of-its-folder"])
def test_a_shard_whose_files_sit_in_the_wrong_bucket_is_named_not_committed_as_removals(snapshots, tmp_path, edit):
    """The commit reads a shard's files by their bucket column, a range of buckets at a time. A files.parquet whose
    rows carry a bucket outside the shard's (edited by hand, or mixed up with another split's) had those rows never
    read: their files, there on disk, were left out of the version (committed as removed), exit 0, without a word; one whose bucket is not its
    folder's was read in another partition than the previous version's row of its path. Both are damaged shards."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    files = staging / f"shard-1-of-{N}" / "files.parquet"
    frame = pl.read_parquet(files)
    first = frame["bucket"][0]
    moved = 0 if edit == "bucket-of-another-shard" else (first + 1 if first + 1 <= 2047 else first - 1)
    frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(moved).otherwise(pl.col("bucket"))
                       .cast(pl.Int32).alias("bucket")).write_parquet(files)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"shard 1/{N} is damaged (its files.parquet holds files under " in out.stderr, out.stderr
    assert f"--shard 1/{N} --staging {staging}" in out.stderr and "nothing was committed" in out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]
    run_shards(site, db, staging, shards=(1,))
    assert main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging), "--no-validate").returncode in (0, 1)


def test_a_shard_that_lists_a_path_twice_is_named_not_said_as_another_program_writing_the_manifest(snapshots, tmp_path):
    """A files.parquet edited to list one path twice (its count as its record says) failed the commit on the
    manifest's unique index: "the manifest refused a write ... check that no other program writes this manifest",
    exit 3, naming neither the shard nor its rerun."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    files = staging / f"shard-1-of-{N}" / "files.parquet"
    frame = pl.read_parquet(files)
    frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("srcfile").get(1))
                       .otherwise(pl.col("srcfile")).alias("srcfile")).write_parquet(files)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"shard 1/{N} is damaged (its files.parquet lists {frame['srcfile'][1]} more than once)" in out.stderr, \
        out.stderr
    assert f"--shard 1/{N} --staging {staging}" in out.stderr and "no other program" not in out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]


@pytest.mark.parametrize("column, value", [("md5", "not an md5"), ("md5", "91E0C7F567B3D77920BA0A6426F626B9"),
                                           ("size", -5)], ids=["md5-text", "md5-upper", "size-negative"])
def test_a_shard_row_no_listing_gives_is_named_not_committed(snapshots, tmp_path, column, value):
    """A files.parquet edited to an MD5 that is not 32 lowercase hex digits (or a size below 0) was committed as the
    file's, exit 0, validation silent: the version said the file holds what no MD5 of it is, and upload sent it so."""
    site, db, staging = snapshots / "first", tmp_path / "m.sqlite", tmp_path / "staging"
    run_shards(site, db, staging)
    files = staging / f"shard-0-of-{N}" / "files.parquet"
    frame = pl.read_parquet(files)
    assert frame.height  # (shard 0 holds OMOP/ and Metadata/ at least)
    frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(value)).otherwise(pl.col(column))
                       .cast(frame.schema[column]).alias(column)).write_parquet(files)
    out = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(staging))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"shard 0/{N} is damaged (its files.parquet holds a row no listing gives: {frame['srcfile'][0]!r}" \
        in out.stderr, out.stderr
    assert f"--shard 0/{N} --staging {staging}" in out.stderr
    assert not db.exists() or query(db, "SELECT count(*) FROM versions") == [(0,)]


def test_a_shard_or_merge_turned_away_by_a_merge_names_it(tmp_path, monkeypatch):
    """A shard rerun, or a requeued merge job, refused by a merge holding the staging folder was told "a merge" (or
    "another merge") and no more: which process, on which of a cluster's nodes, since when, was for the user to find.
    It names the merge (pid, host, start, as the manifest's lock does); the details go with the merge."""
    from chorus_batch.errors import ManifestLocked
    from chorus_batch.shards import staging_lock

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with staging_lock(tmp_path, merge=True):
        details = json.loads((tmp_path / ".staging.lock.json").read_text())
        assert details["pid"] == os.getpid() and details["slurm_job"] == "4242"
        assert stat.S_IMODE((tmp_path / ".staging.lock.json").stat().st_mode) == 0o600
        for merge, said in ((False, "cannot be written there now"), (True, "nothing was committed by this one")):
            with pytest.raises(ManifestLocked) as refused, staging_lock(tmp_path, merge=merge):
                pass
            assert f"{said} (that merge: pid {os.getpid()} on host " in str(refused.value), refused.value
            assert ", started 20" in str(refused.value) and ", Slurm job 4242)" in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_a_merge_of_a_folder_inside_the_site_is_refused(tmp_path):
    """`--merge` given the site itself (arguments swapped, a wrong variable): person folders named like shards
    (shard-0-of-2/) were taken for shards, "incomplete", with a command to rerun them into the site that every shard
    refuses. Refused as --staging is, naming the folder, before anything is read, locked or made."""
    site = tmp_path / "site"
    (site / "shard-0-of-2" / "Images").mkdir(parents=True)
    (site / "shard-0-of-2" / "Images" / "a.dcm").write_bytes(b"x")
    db = tmp_path / "m.sqlite"
    for merge in (site, site / "shard-0-of-2"):
        proc = main_here("run", "--site", str(site), "--db", str(db), "--merge", str(merge))
        assert proc.returncode == 2, proc.stderr
        assert "the shards' staging folder would lie inside the site's root" in proc.stderr, proc.stderr
        assert f"--merge: {merge}" in proc.stderr and "rerun it" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]
    assert sorted(p.name for p in site.rglob("*")) == ["Images", "a.dcm", "shard-0-of-2"]


@pytest.mark.parametrize("by_run_slurm", [False, True])
def test_the_advice_to_submit_again_names_what_submitted_the_shards(tmp_path, monkeypatch, by_run_slurm):
    """Shards merged already (their merge.exit 0, their lists removed): the merge run again told a user of
    `chorus-batch run --slurm` to "submit the Slurm script again", a script they never saw. In a merge job of
    `run --slurm` (its lock in the job's environment) that command is named; by hand, both."""
    from chorus_batch.errors import UsageError
    from chorus_batch.shards import _merged_and_tidied
    from chorus_batch.slurm import LOCKED_ENV, MERGE_EXIT

    (tmp_path / MERGE_EXIT).write_text("0\n")
    if by_run_slurm:
        monkeypatch.setenv(LOCKED_ENV, str(tmp_path / "m.sqlite.slurm.lock"))
    else:
        monkeypatch.delenv(LOCKED_ENV, raising=False)
    with pytest.raises(UsageError) as raised:
        _merged_and_tidied(tmp_path)
    fix = raised.value.fix
    assert ("run the `chorus-batch run --slurm` command again" in fix) == by_run_slurm, fix
    assert ("submit the Slurm script again" in fix) != by_run_slurm, fix


def test_a_shard_reads_only_its_folders_rows_and_the_sites_one_sample(tmp_path):
    """Every shard read the whole previous version (at 1M files ~260 MiB and ~1 s a shard) to use its own folders'
    rows. It reads those alone, from the state cache's row groups or, the cache stale, from the manifest's index of
    current paths, folder by folder (paths that sort between a folder's: "p1.x", "p1-a", "p10"; files at the root,
    OMOP/ and Metadata/ are shard 0's); and still finds the whole site's one re-verification sample."""
    import math

    from chorus_batch.coverage import Coverage
    from chorus_batch.hashing import site_sample
    from chorus_batch.scan import shard_of
    from chorus_batch.store import Manifest

    site, db = tmp_path / "site", tmp_path / "m.sqlite"
    names = ["p1", "p1.x", "p1-a", "p10", "p1/../q", "OMOP", "metadata", "Z\u00e9", *(f"person{i}" for i in range(40))]
    for i, name in enumerate(names):
        folder = site / name.replace("/../", "_") / "Waveforms"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(1 + i % 3):
            (folder / f"f{j}.dat").write_bytes(f"{name} {j}".encode())
    (site / "README.txt").write_text("root file")
    (site / "p1.txt").write_text("root file sorting among the folders")
    assert main_here("run", "--site", str(site), "--db", str(db), "--no-validate").returncode in (0, 1)
    manifest = Manifest(db)
    assert manifest._cache_fresh(manifest._cache_identity())  # (the run cached its rows)
    whole = manifest.previous_state(write_cache=False)
    for fresh in (True, False):
        if not fresh:
            manifest.cache_path.unlink()
        for shards in (1, 2, 4, 7):
            for shard in range(shards):
                mine = manifest.shard_state(Coverage(shard, shards))
                expected = whole.filter(shard_of(whole["srcfile"], shards) == shard)
                assert mine.schema == expected.schema
                assert mine.sort("srcfile").equals(expected.sort("srcfile")), (fresh, shard, shards)
        for percent, cap in ((1.0, 10**12), (30.0, 60), (100.0, 10**9)):
            one = site_sample(whole, math.ceil(whole.height * percent / 100), cap, no_read_roots=[])
            assert manifest.site_sample(percent, cap, no_read_roots=[]).equals(one), (fresh, percent, cap)
            roots = whole["root_id"].unique().to_list()  # (none to read: none chosen)
            assert manifest.site_sample(percent, cap, no_read_roots=roots).len() == 0


def test_a_second_manifests_shards_are_not_written_over_the_firsts_unmerged_ones(snapshots, tmp_path):
    """Two manifests' shards run one after the other into one --staging folder (two sites; or one site's two
    manifests): the second's shards were written over the first's, whose merge then had nothing of its own to merge
    (another site's shards in their place) and hashed the whole site again. The second is refused, naming the first's
    manifest, its merge and what to do; once that merge took them (a version, or no changes), they may be written over."""
    site, other_site = snapshots / "first", snapshots / "second"
    staging, first, second = tmp_path / "st", tmp_path / "first.sqlite", tmp_path / "second.sqlite"
    run_shards(site, first, staging)
    for other in (other_site, site):  # another site's manifest; the same site's other manifest
        out = main_here("run", "--site", str(other), "--db", str(second), "--shard", f"1/{N}", "--staging", str(staging))
        assert out.returncode == 2, out.stdout + out.stderr
        assert (f"shard 1 of {N} was not written: {staging}/shard-1-of-{N} holds that shard of another manifest, "
                f"{first}, written ") in out.stderr, out.stderr
        assert f"--site {site} --db {first} --merge {staging}" in out.stderr, out.stderr
        assert f"rm -r {staging}/shard-*-of-{N}" in out.stderr and "a --staging folder of their own" in out.stderr
    merged = main_here("run", "--site", str(site), "--db", str(first), "--merge", str(staging), "--no-validate")
    assert merged.returncode in (0, 1), merged.stderr
    assert query(first, "SELECT count(*) FROM versions") == [(1,)]
    run_shards(site, first, staging)  # merged again with no changes: taken all the same
    assert main_here("run", "-q", "--site", str(site), "--db", str(first), "--merge", str(staging), "--no-validate"
               ).returncode in (0, 1)
    run_shards(other_site, second, staging)  # merged: written over
    out = main_here("run", "--site", str(other_site), "--db", str(second), "--merge", str(staging), "--no-validate")
    assert out.returncode in (0, 1), out.stderr
    # the merge of a manifest whose shard another one's holds says the rerun is refused until that one merged them
    (staging / f"shard-0-of-{N}" / "scan.json").unlink()
    # (in a later second than the first manifest's merge above finished: a run's end is recorded in whole seconds, and
    # a merge that ended in the second a shard was written is taken for the one that took it, Manifest.took_shard; the
    # in-process runs made that second a shared one now and then, and the hint below was then rightly left out)
    time.sleep(1.01 - time.time() % 1)
    main_here("run", "--site", str(site), "--db", str(first), "--shard", f"0/{N}", "--staging", str(staging))
    for merge_site in (other_site, site):  # (another site's shard; the same site's, of another manifest)
        out = main_here("run", "--site", str(merge_site), "--db", str(second), "--merge", str(staging), "--no-validate")
        assert out.returncode == 2 and "(once that one has merged them, or they are removed" in out.stderr, out.stderr


def test_shards_of_two_config_files_naming_two_manifests_are_told_apart(snapshots, tmp_path):
    """Two sites run from their chorus.toml, each naming its manifest in [manifest] db, one --staging folder: a shard
    records --config, not --db, so the second's shard was written over the first's unmerged one without a word. It is
    refused as another manifest's; the first's own rerun is written."""
    staging = tmp_path / "st"
    for name, site in (("one", "first"), ("two", "second")):
        (tmp_path / f"{name}.toml").write_text(f'[site]\nroot = "{snapshots / site}"\n[manifest]\ndb = "{name}.sqlite"\n')
    shard = ("--shard", "0/1", "--staging", str(staging))
    assert main_here("run", "-q", "--config", str(tmp_path / "one.toml"), *shard).returncode == 0
    out = main_here("run", "-q", "--config", str(tmp_path / "two.toml"), *shard)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"holds that shard of another manifest, {tmp_path / 'one.sqlite'}, written " in out.stderr, out.stderr
    assert f"--config {tmp_path / 'one.toml'} --merge {staging}" in out.stderr, out.stderr
    assert main_here("run", "-q", "--config", str(tmp_path / "one.toml"), *shard).returncode == 0
