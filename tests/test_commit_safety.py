"""A killed run leaves the previous version intact; a second run is turned away by the lock."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chorus_batch import ExitCode

from conftest import backup_copy, cli, current_rows, paused, query, tree_md5, write


def start_paused_run(site: Path, db: Path, point: str = "commit", first: tuple[str, ...] = ("run",)) -> subprocess.Popen:
    """A real run that stops inside its commit transaction (test pause point) and waits there (`first`: the words
    before its --site: the command, or flags, as a cron line may give them)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chorus_batch", *first, "--no-validate", "--site", str(site), "--db", str(db)],
        env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": point}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if f"test pause at {point}" in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the run never reached the commit: {proc.stderr.read()}")


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_sigkill_during_commit_leaves_the_previous_version(site, db):
    write(site, "OMOP/a.csv", b"a")
    first = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q")
    assert first.returncode == 0, first.stderr
    before = current_rows(db)
    (label_before,) = query(db, "SELECT max(label) FROM versions")[0]

    write(site, "OMOP/b.csv", b"b")
    write(site, "OMOP/a.csv", b"changed")
    proc = start_paused_run(site, db)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert con.execute("SELECT max(label) FROM versions").fetchone()[0] == label_before
    finally:
        con.close()
    assert current_rows(db) == before
    # the killed run is logged without an exit code; the next run commits normally
    assert query(db, "SELECT exit_code FROM runs ORDER BY run_id") == [(0,), (None,)]
    again = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q")
    assert again.returncode == 0, again.stderr
    assert current_rows(db) == tree_md5(site)


def test_a_second_run_is_refused_while_one_holds_the_manifest(site, db):
    write(site, "OMOP/a.csv", b"a")
    holder = start_paused_run(site, db)
    try:
        started = time.monotonic()
        second = cli("run", "--no-validate", "--site", str(site), "--db", str(db))
        assert time.monotonic() - started < 30
        assert second.returncode == ExitCode.LOCKED
        assert f"pid {holder.pid}" in second.stderr
        assert "host" in second.stderr and "started" in second.stderr
        assert "this run did nothing; run it again once that run has finished" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # the lock dies with its holder
    third = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q")
    assert third.returncode == 0, third.stderr
    # every run is in `runs`, the one turned away too (the holder was paused before its commit)
    assert (int(ExitCode.LOCKED),) in query(db, "SELECT exit_code FROM runs")


def test_a_run_turned_away_by_validate_is_in_runs_once_validate_ends(site, db, tmp_path):
    """A run refused while `validate --force` held the manifest's lock (cron's nightly run beside a reviewer's check)
    was appended to <manifest>.runs-pending.jsonl, and only a later run's end moved it into `runs`: once the validate
    ended, `runs` (and `history`) showed no night turned away, against "recorded by the holder when it ends"."""
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    resume = tmp_path / "resume"
    holder = paused("validate", "--force", "--db", str(db), at="validate", resume=resume)
    try:
        second = cli("run", "--no-validate", "--site", str(site), "--db", str(db))
    finally:
        resume.touch()
        holder.communicate(timeout=120)
    assert second.returncode == ExitCode.LOCKED, second.stderr
    assert "`chorus-batch validate`" in second.stderr and f"pid {holder.pid}" in second.stderr
    assert holder.returncode in (0, 1)  # (1: findings of its own)
    turned_away = query(db, "SELECT message FROM runs WHERE exit_code = ?", (int(ExitCode.LOCKED),))
    assert len(turned_away) == 1 and "`chorus-batch validate`" in turned_away[0][0], turned_away
    assert not Path(f"{db}.runs-pending.jsonl").exists()


@pytest.mark.parametrize("first, said", [(("run",), "`chorus-batch run`"),
                                         (("--exclude", "scratch-SECRETWORD"), None)])
def test_the_lock_holder_is_named_by_its_command_never_by_its_arguments(site, db, first, said):
    """The lock's side file kept the first two words of the command line, and a second run named the holder's
    command by the first of them not a flag: `chorus-batch --exclude 'x?sig=...' --site ...` (no command word: a run)
    was `chorus-batch x?sig=...`, a secret in the file and in the second run's log (and `chorus-batch --site
    /data/site` was `chorus-batch /data/site`). Only the command's name is kept, when one was given. (A glob that holds a
    secret is now refused before the lock: an argument stands for any word a command line may hold.)"""
    write(site, "OMOP/a.csv", b"a")
    holder = start_paused_run(site, db, first=first)
    try:
        side = Path(f"{db}.lock.json").read_text(encoding="utf-8")
        second = cli("run", "--no-validate", "--site", str(site), "--db", str(db))
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert second.returncode == ExitCode.LOCKED, second.stderr
    assert "SECRETWORD" not in side + second.stderr
    assert f"pid {holder.pid}" in second.stderr
    if said:
        assert said in second.stderr
    else:
        assert "`chorus-batch" not in second.stderr, second.stderr


def test_a_link_planted_as_the_lock_holder_file_is_not_written_through(site, db, tmp_path):
    """The holder's side file (<manifest>.lock.json) was opened following a symbolic link: one planted there (a
    folder shared with a group, a stale name from a restore) had the file it points to overwritten by the run, as
    root under cron any file. The side file is now made new (a stale one removed first), never through a link."""
    write(site, "OMOP/a.csv", b"a")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    Path(f"{db}.lock.json").symlink_to(victim)
    done = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q")
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "precious\n"
    assert not os.path.lexists(f"{db}.lock.json")  # removed when the run ends, as every run's


def test_a_link_planted_as_the_lock_file_is_refused_and_makes_nothing_where_it_points(site, db, tmp_path):
    """<manifest>.lock was opened with O_CREAT through a symbolic link: the file it points to was made (as root
    under cron, anywhere), and then the run failed with "Too many levels of symbolic links", told to pass --db "on an
    ordinary file system"."""
    write(site, "OMOP/a.csv", b"a")
    target = tmp_path / "made-through-the-link"
    Path(f"{db}.lock").symlink_to(target)
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q")
    assert out.returncode == 3, out.stderr
    assert f"the manifest's lock file is a symbolic link (to {target})" in out.stderr and "remove the link" in out.stderr
    assert not target.exists() and not db.exists()
    Path(f"{db}.lock").unlink()
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0


@pytest.mark.parametrize("side", ["-wal", "-shm", "-journal"])
def test_a_link_planted_as_a_file_sqlite_keeps_beside_the_manifest_is_said_to_be_one(site, db, tmp_path, side):
    """SQLite refuses a -wal, -shm or -journal that is a symbolic link; the run said "this user cannot write its
    folder ... its -wal file holds commits" or "attempt to write a readonly database: make the manifest writable"."""
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    Path(f"{db}{side}").symlink_to(victim)
    write(site, "OMOP/b.csv", b"b")
    for command in (("run", "--no-validate", "--site", str(site)), ("versions",)):
        out = cli(*command, "--db", str(db), "-q")
        assert out.returncode == 3, out.stderr
        assert f"{db}{side} is a symbolic link (to {victim})" in out.stderr and "remove the link" in out.stderr, out.stderr
        assert "readonly" not in out.stderr and "cannot write its folder" not in out.stderr
    assert victim.read_text() == "precious\n"
    Path(f"{db}{side}").unlink()
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0


def test_a_failure_writing_the_state_cache_beside_the_commit_says_the_version_was_committed(site, db, monkeypatch):
    from chorus_batch.errors import AfterCommitError
    from chorus_batch.store import Manifest
    from conftest import run_site

    write(site, "000001/Waveforms/Telemetry/S1/S1.dat", b"one")

    def broken(self, state, generation):
        raise RuntimeError("cache writer broke")

    monkeypatch.setattr(Manifest, "save_state", broken)
    with pytest.raises(AfterCommitError) as failed:
        run_site(site, db, validate_site=False)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert failed.value.committed == label and label in failed.value.what
    assert current_rows(db) == {"000001/Waveforms/Telemetry/S1/S1.dat": tree_md5(site)["000001/Waveforms/Telemetry/S1/S1.dat"]}


@pytest.mark.parametrize("stage", ["save_state", "validate"])
def test_memory_refused_after_the_commit_is_said_as_out_of_memory(site, db, monkeypatch, stage):
    """A 1M-file run's validation met ENOMEM (a worker's fork refused): 'what follows the commit failed: OSError:
    [Errno 12] Cannot allocate memory; rerun with -v for details', where before the commit the same failure says
    out of memory and what to give the job. Now after the commit too, with the version said to stay."""
    import errno

    from chorus_batch.errors import AfterCommitError
    from chorus_batch.store import Manifest
    from chorus_batch.validate import run as validate_run
    from conftest import run_site

    write(site, "OMOP/person.csv", b"person_id\n1\n")

    def refused(*args, **kwargs):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    if stage == "save_state":
        monkeypatch.setattr(Manifest, "save_state", refused)
    else:
        monkeypatch.setattr(validate_run, "validate_version", refused)
    with pytest.raises(AfterCommitError) as failed:
        run_site(site, db, validate_site=stage == "validate")
    (label,) = query(db, "SELECT label FROM versions")[0]
    said = str(failed.value)
    assert failed.value.committed == label and f"version {label} was committed" in said, said
    assert "out of memory: OSError" in said and "give the job more memory" in said, said
    assert "the version stays committed" in said and "rerun with -v" not in said, said
    # what the next run finishes, as the manifest holds it (the check only where it failed)
    assert ("(the next run finishes its check against the procedures)" in said) == (stage == "validate"), said
    # `runs` records it once ("version X was committed to M, but ...; version X was committed before the failure")
    (message,) = query(db, "SELECT message FROM runs ORDER BY run_id DESC LIMIT 1")[0]
    assert message.count(f"version {label} was committed") == 1 and message.endswith("stays"), message


def test_a_run_through_a_symbolic_link_is_refused_while_one_holds_the_manifest(site, db, tmp_path):
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    link = tmp_path / "link.sqlite"
    link.symlink_to(db.name)
    (tmp_path / "folder-link").symlink_to(tmp_path, target_is_directory=True)
    write(site, "OMOP/b.csv", b"b")
    holder = start_paused_run(site, db)
    try:
        for other in (link, tmp_path / "folder-link" / db.name):
            second = cli("run", "--no-validate", "--site", str(site), "--db", str(other))
            assert second.returncode == ExitCode.LOCKED, second.stderr
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # every file beside the manifest is named after the real file, never after a spelling of it
    third = cli("run", "--no-validate", "--site", str(site), "--db", str(link), "-q")
    assert third.returncode == 0, third.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("link.sqlite") and p != link]
    assert (tmp_path / f"{db.name}.state.parquet").exists()
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]


def test_a_hard_linked_manifest_is_refused_and_left_as_it_was(site, db, tmp_path):
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    os.link(db, tmp_path / "other.sqlite")
    write(site, "OMOP/b.csv", b"b")
    before = db.read_bytes()
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(tmp_path / "other.sqlite"))
    assert out.returncode == 3 and "2 hard links" in out.stderr and "fix:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and db.read_bytes() == before


def test_a_manifest_name_too_long_for_the_files_beside_it_is_refused_before_the_listing(site, tmp_path):
    """A manifest file name that fits (243 bytes) while the files named after it do not: the run listed and hashed
    the site, then ended with 'internal error: File name too long' at its state cache's temporary file
    (.<name>.state.parquet.<pid>.tmp), nothing committed. Refused before anything is written, naming the longest
    name that fits (255 - len('.runs-pending.jsonl')); that longest name itself runs, its temporary files cut to fit.
    An output of a long name that fits (report --out) is written, not refused as 'File name too long'."""
    write(site, "OMOP/a.csv", b"a")
    long_db = tmp_path / ("m" * 236 + ".sqlite")
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(long_db))
    assert out.returncode == ExitCode.USAGE, out.stderr
    assert "internal error" not in out.stderr and "at most 236 bytes" in out.stderr, out.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("mmm")]  # nothing made, not even the lock
    fits = tmp_path / ("m" * 229 + ".sqlite")
    ok = cli("run", "--no-validate", "--site", str(site), "--db", str(fits), "-q")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / f"{fits.name}.state.parquet").exists()
    report = tmp_path / ("r" * 245 + ".html")
    out = cli("report", "--db", str(fits), "--out", str(report))
    assert out.returncode in (0, 1) and report.stat().st_size > 0, out.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_write_that_breaks_a_constraint_is_not_blamed_on_the_file_system(db):
    from chorus_batch.errors import ManifestError
    from chorus_batch.store import Manifest

    manifest = Manifest(db)
    manifest.ensure_schema()
    with pytest.raises(ManifestError) as failed, manifest._open() as con:
        con.execute("INSERT INTO meta VALUES ('manifest_id', 'again')")
    assert "conflicts with its recorded rows" in str(failed.value) and "file system" not in str(failed.value)


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129),
                                          (signal.SIGUSR1, 138)])
def test_a_signal_just_after_the_commit_names_the_committed_version(site, db, signum, code):
    """SQLite has committed; the run still waits for the state cache written beside the commit. A signal there said
    "nothing was committed; the previous version is intact" of a committed version (found by SIGTERM at random
    times): the message and the `runs` row take the version from the manifest itself."""
    write(site, "OMOP/a.csv", b"a")
    proc = start_paused_run(site, db, "committed")
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=30)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert proc.returncode == code, err
    assert f"version {label} had been committed before; it stays" in err and "nothing was committed" not in err, err
    assert query(db, "SELECT exit_code, version FROM runs") == [(code, label)]
    again = cli("run", "--no-validate", "--site", str(site), "--db", str(db))
    assert again.returncode == 0 and f"no changes since version {label}" in again.stdout, again.stderr


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("point", ["run-finished", "run-returned", "summary"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_after_the_run_ended_names_the_committed_version(site, db, point, signum):
    """Committed and checked; the run then records its end in `runs` (run-finished) or prints its summary. A signal
    there, or as the early listing is shut down after the run (run-returned), said "nothing was committed; the
    manifest holds what it held before" of the new version (found by
    SIGTERM at random times): it names the version, and `runs` records the signal and the version."""
    write(site, "OMOP/a.csv", b"a")
    proc = start_paused_run(site, db, point)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=30)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert proc.returncode == 128 + signum, err
    assert f"version {label} had been committed before; it stays" in err and "nothing was committed" not in err, err
    assert query(db, "SELECT version FROM runs") == [(label,)]
    if point == "run-finished":
        assert query(db, "SELECT exit_code FROM runs") == [(128 + signum,)]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_signal_during_the_snapshot_after_the_commit_says_the_next_run_finishes_it(site, db, tmp_path):
    """A signal while the committed version's Parquet snapshot (or its check) was written said only "it stays": the
    snapshot and the check seemed lost; the next run does them."""
    write(site, "OMOP/a.csv", b"a")
    snap = tmp_path / "snap"
    proc = start_paused_run(site, db, "snapshot", first=("run", "--parquet", str(snap)))
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert proc.returncode == 143, err
    assert f"version {label} had been committed before; it stays, and the next run finishes what the signal cut " \
           "short" in err, err
    again = cli("run", "--no-validate", "--site", str(site), "--db", str(db), "--parquet", str(snap), "-q")
    assert again.returncode == 0, again.stderr
    assert (snap / f"version={label}" / "snapshot.json").is_file()


def test_a_copy_committed_elsewhere_and_put_back_is_not_read_through_the_state_cache_of_the_other(site, db, tmp_path):
    """Two copies of one manifest that each committed once (a copy run on elsewhere and put back; another node's
    commit of a manifest in Azure downloaded over a working copy) had the same manifest id and state generation: the
    state cache the other copy's commit left beside the manifest was taken for its current rows. The next run
    compared the site with them: 'no changes' where the manifest recorded none of the site's files as they are
    (or a UNIQUE error on every run after). A state generation is now one write's own."""
    from conftest import run_site

    write(site, "OMOP/a.csv", b"a1")
    write(site, "OMOP/b.csv", b"b1")
    run_site(site, db, validate_site=False)
    laptop = tmp_path / "laptop" / "m.sqlite"
    backup_copy(db, laptop)
    write(site, "OMOP/a.csv", b"a2")  # here: a changes (the state cache beside db is this commit's)
    run_site(site, db, validate_site=False)
    elsewhere = tmp_path / "elsewhere"  # there: b is removed
    write(elsewhere, "OMOP/a.csv", b"a1")
    run_site(elsewhere, laptop, validate_site=False)
    backup_copy(laptop, db)  # the copy put back
    result = run_site(site, db, validate_site=False)
    assert current_rows(db) == tree_md5(site), result.counts
    assert result.counts["replaced"] == 1 and result.counts["added"] == 1, result.counts
    assert query(db, "SELECT count(*) FROM source_files WHERE srcfile = 'OMOP/b.csv' AND time_invalid IS NULL") == [(1,)]


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("point, left", [("committed", "its check against the procedures, its Parquet snapshot"),
                                         ("validate", "its check against the procedures, its Parquet snapshot"),
                                         ("snapshot", "its Parquet snapshot")])
def test_a_signal_after_the_commit_says_what_the_next_run_finishes(site, db, tmp_path, point, left):
    """A signal just after the commit (as the state cache was written) said "version X had been committed before;
    it stays" alone, as if the version had been checked and its snapshot written; one during the snapshot said the
    next run would check it, though it had been checked. What is left is said from what the manifest and the
    snapshot folder hold, wherever the signal came."""
    write(site, "OMOP/a.csv", b"a")
    snap = tmp_path / "snap"
    proc = paused("run", "--site", str(site), "--db", str(db), "--parquet", str(snap), at=point)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert proc.returncode == 143, err
    assert f"version {label} had been committed before; it stays, and the next run finishes what the signal cut " \
           f"short after the commit ({left})" in err, err
    again = cli("run", "--site", str(site), "--db", str(db), "--parquet", str(snap), "-q")
    assert again.returncode in (0, 1), again.stderr
    assert query(db, "SELECT count(*) FROM validations WHERE version = ?", (label,)) == [(1,)]
    assert (snap / f"version={label}" / "snapshot.json").is_file()


def test_a_manifest_being_made_is_never_seen_half_made_by_a_second_run(site, db, monkeypatch):
    """Two runs started by one cron minute on a manifest not made yet: the second's preflight reads the schema
    before it meets the lock, and saw the first run's `meta` table made without its schema_version row yet (each
    CREATE TABLE was its own commit): `the manifest has no schema version ... edited or damaged`, exit 3, where
    it is locked (exit 4). A new manifest's tables are made in one transaction: another reader sees no manifest
    yet, or all of it."""
    from chorus_batch.store import Manifest, schema

    seen: list[object] = []
    made = schema.create_table_sql

    def between_tables(table: str) -> str:
        try:  # what a second run's preflight reads between two of the first run's CREATE TABLEs
            seen.append(Manifest(db).schema_on_disk())
        except Exception as exc:  # noqa: BLE001 (the failure is what is checked)
            seen.append(exc)
        return made(table)

    monkeypatch.setattr(schema, "create_table_sql", between_tables)
    Manifest(db).ensure_schema()
    assert len(seen) > 2 and seen == [None] * len(seen), seen
    assert Manifest(db).schema_on_disk() == schema.SCHEMA_VERSION


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
@pytest.mark.parametrize("point, stands", [("commit", "nothing was committed"),
                                           ("run-finished", "version {label} had been committed before; it stays")])
def test_ctrl_c_in_a_library_run_is_noted_with_what_stands_and_the_next_run_goes_on(site, db, point, stands):
    """A notebook's "Interrupt the kernel" in chorus_batch.run showed a bare KeyboardInterrupt, also after the version
    had been committed (the command line says it; the notebook user was left to guess). The KeyboardInterrupt carries
    a note of what stands; the lock is released and a second run() in the same interpreter goes on."""
    write(site, "OMOP/a.csv", b"a")
    script = """if True:
        import sys
        from chorus_batch import RunSettings, run
        settings = RunSettings(site=sys.argv[1], db=sys.argv[2], workers=1, validate=False)
        try:
            run(settings)
        except KeyboardInterrupt as exc:
            print("notes:", *getattr(exc, "__notes__", []), sep="\\n", flush=True)
        import os
        os.environ.pop("CHORUS_BATCH_TEST_PAUSE")
        print("again:", run(settings).counts)
    """
    proc = subprocess.Popen([sys.executable, "-c", script, str(site), str(db)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": point}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while f"test pause at {point}" not in (line := proc.stderr.readline()):
        assert line or proc.poll() is None, f"the run ended before its pause at {point}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    labels = [label for (label,) in query(db, "SELECT label FROM versions")]
    notes = out.split("notes:\n", 1)[1].split("again:", 1)[0].strip().splitlines()
    assert len(notes) == 1 and notes[0].startswith("chorus_batch.run was interrupted: "), out
    assert stands.format(label=labels[0]) in notes[0], out
    assert len(labels) == 1 and ("'added': 1" in out) == (point == "commit"), out


def test_a_link_planted_as_the_lock_file_makes_nothing_where_os_open_cannot_refuse_links(db, tmp_path, monkeypatch):
    """Windows' os.open has no O_NOFOLLOW: the lock file was opened (O_CREAT) through a link planted as <db>.lock, so
    the file it points to was made, and the run was then refused as "locked by an unknown process". Simulated here by
    taking O_NOFOLLOW away: Linux's os.open then follows the link as Windows' does."""
    from chorus_batch.errors import ManifestError
    from chorus_batch.store.lock import manifest_lock

    db.parent.mkdir(parents=True, exist_ok=True)
    target = tmp_path / "made-through-the-link"
    Path(f"{db}.lock").symlink_to(target)
    monkeypatch.delattr(os, "O_NOFOLLOW")
    with pytest.raises(ManifestError) as caught, manifest_lock(db, ["run"]):
        pass
    assert f"the manifest's lock file is a symbolic link (to {target})" in str(caught.value.what)
    assert not target.exists()


# ----------------------------------------------------------------------------- a manifest restored from a backup


def _run_leaving_its_wal(site: Path, db: Path) -> None:
    """A real run whose commit stays in `<db>-wal` (the manifest file may not grow: `ulimit -f`), as a run killed
    before SQLite wrote the WAL into the file leaves it: the version committed, in the -wal only."""
    import resource

    limit = db.stat().st_size
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "-q", "--no-validate", "--site", str(site),
                           "--db", str(db)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)))
    assert done.returncode == 0 and f"only in {db}-wal" in done.stderr, done.stderr
    assert Path(f"{db}-wal").stat().st_size > 0


def _nights(site: Path, db: Path, tmp_path: Path) -> Path:
    """Night 1, then a backup of the manifest (cp, no run going), night 2 (one new file: its rows fit in pages the
    manifest had, page 1 untouched by SQLite itself), and night 3 whose commit is still in the -wal."""
    write(site, "000001/Waveforms/Telemetry/1/1.dat", b"one")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    backup = tmp_path / "backup" / db.name
    backup.parent.mkdir()
    backup.write_bytes(db.read_bytes())
    write(site, "000002/Waveforms/Telemetry/2/2.dat", b"two")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    for i in range(3, 60):
        write(site, f"{i:06d}/Waveforms/Telemetry/{i}/{i}.dat", f"signal {i}".encode())
    _run_leaving_its_wal(site, db)
    return backup


@pytest.mark.skipif(os.name == "nt", reason="ulimit -f")
def test_a_manifest_restored_from_a_backup_beside_a_later_runs_wal_is_refused(site, db, tmp_path):
    """A site restores its manifest from last week's backup (cp over the file) while the -wal and -shm a later, stopped
    run left stay beside it: SQLite applied that -wal to the restored file at the next open, without a word, and the
    manifest became a mix of the two (here: the backup's one version and the -wal's three, over the backup's rows).
    Now every command refuses it before SQLite opens it, exit 3, naming the files and what to do, nothing changed."""
    backup = _nights(site, db, tmp_path)
    db.write_bytes(backup.read_bytes())  # the restore: cp backup/manifest.sqlite manifest.sqlite
    sides = [Path(f"{db}-wal"), Path(f"{db}-shm")]
    before = {path: path.read_bytes() for path in (db, *sides)}
    for args in (("versions",), ("run", "-q", "--no-validate", "--site", str(site))):
        done = cli(*args, "--db", str(db))
        assert done.returncode == ExitCode.FAILED, done.stderr
        assert "not this manifest file's" in done.stderr and "restored" in done.stderr, done.stderr
        assert f"mv {sides[0]} {sides[1]} aside/" in done.stderr and "Traceback" not in done.stderr, done.stderr
        # what stands, truly: the run said "the manifest holds what it held before (`chorus-batch versions` lists
        # it)", of a manifest `versions` refuses the same way, whose state is the question
        assert "nothing was committed and nothing was changed: SQLite did not open the manifest" in done.stderr
        assert "lists it" not in done.stderr, done.stderr
        assert {path: path.read_bytes() for path in (db, *sides)} == before
    aside = tmp_path / "aside"
    aside.mkdir()
    for side in sides:
        side.rename(aside / side.name)
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]  # the backup's state, whole
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]



@pytest.mark.skipif(os.name == "nt", reason="ulimit -f")
def test_a_previous_release_backup_restored_beside_this_releases_wal_is_refused(tmp_path):
    """A manifest of the previous release (no commit count in user_version: its commits left page 1 as it was when
    their rows fitted in pages the file had), backed up, one more night of that release, then this release's first
    run, whose commits (the schema upgrade first) stayed in the -wal: its first copy of page 1 began at the change
    counter the backup has too, and the backup restored beside it was read as that -wal's own file (a mix of the
    two). This release's first open of such a manifest moves the file's counter on, alone, before anything else."""
    import shutil

    fixture = Path(__file__).resolve().parent / "fixtures" / "release-f9a987f"
    db, site, backup = tmp_path / "manifest.sqlite", tmp_path / "site", tmp_path / "backup.sqlite"
    shutil.copy(fixture / "manifest.sqlite", db)
    shutil.copytree(fixture / "site", site)
    shutil.copy(db, backup)
    counter = db.read_bytes()[24:28]
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # the previous release's next night (page 1 untouched)
        con.execute("UPDATE runs SET message = 'the night after the backup'")
    assert db.read_bytes()[24:28] == counter and db.read_bytes() != backup.read_bytes()
    write(site, "000009/Waveforms/Telemetry/9/9.dat", b"nine")
    _run_leaving_its_wal(site, db)
    db.write_bytes(backup.read_bytes())  # the restore
    done = cli("versions", "--db", str(db))
    assert done.returncode == ExitCode.FAILED and "not this manifest file's" in done.stderr, done.stderr

@pytest.mark.skipif(os.name == "nt", reason="ulimit -f")
def test_a_wal_a_stopped_run_left_beside_its_own_manifest_is_still_applied(site, db, tmp_path):
    """The crash-recovery case is not refused: the -wal a stopped run left beside the same manifest file holds its
    committed version, which the next command reads (SQLite applies it), and the next run writes into the file."""
    _nights(site, db, tmp_path)
    done = cli("versions", "--db", str(db))
    assert done.returncode == 0 and "not this manifest" not in done.stderr, done.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(3,)]
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
