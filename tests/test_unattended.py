"""Safe unattended runs: mass removals refused, signals handled, workers never orphaned, every error
truthful about what was committed, odd file systems survived."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chorus_batch import ExitCode
from chorus_batch.fsutil import NEARLY_FULL_BYTES, free_bytes

from conftest import cli, current_rows, fill, paused, query, tree_md5, write
from test_run import run_without_override

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals and permissions")


def run(site: Path, db: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return cli("run", "--no-validate", "--site", str(site), "--db", str(db), *extra, **kwargs)


def many(site: Path, n: int = 40) -> None:
    for i in range(n):
        write(site, f"{i:06d}/Waveforms/Telemetry/{9000 + i}/{9000 + i}.dat", f"signal {i}".encode())


# ----------------------------------------------------------------------------- the mass-removal guard


def test_an_emptied_site_root_is_refused_and_nothing_is_committed(site, db):
    many(site)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    for path in list(site.iterdir()):  # the file system is "unmounted": the root is there, empty
        subprocess.run(["rm", "-rf", str(path)], check=True)
    out = run(site, db)
    assert out.returncode == ExitCode.REFUSED, out.stderr
    assert "lists no files at all" in out.stderr and str(site) in out.stderr and "--max-delete all" in out.stderr
    assert "40 of the previous version's 40 files" in out.stderr
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions") == [(1,)]
    ((code, message),) = query(db, "SELECT exit_code, message FROM runs ORDER BY run_id DESC LIMIT 1")
    # what `runs` records says once that nothing was committed, and which version stays (a month of cron nights
    # read "...; nothing was committed (the run would remove ...); nothing was committed; version ... stays")
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert code == ExitCode.REFUSED and message.count("nothing was committed") == 1, message
    assert message.endswith(f"; version {label} stays the latest"), message
    allowed = run(site, db, "--max-delete", "all", "-q")
    assert allowed.returncode == 0 and current_rows(db) == {}


def test_an_unmounted_modality_root_is_refused_whatever_share_is_allowed_and_the_fix_says_so(site, db, tmp_path):
    """[site.roots] Waveforms on a disk not mounted (its mount point empty): refused (exit 5), naming the setting;
    the fix offered "a larger percentage such as 80%", which refused it again: only `all` passes a root that lists
    nothing."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    wave = tmp_path / "wave"
    many(wave, 4)
    config = tmp_path / "roots.toml"
    config.write_text(f'[site.roots]\nWaveforms = "{wave}"\n')
    assert run(site, db, "--config", str(config), "-q").returncode == 0
    before = current_rows(db)
    for path in list(wave.iterdir()):
        subprocess.run(["rm", "-rf", str(path)], check=True)
    for limit in ([], ["--max-delete", "90%"], ["--max-delete", "1000"]):
        out = run(site, db, "--config", str(config), *limit)
        assert out.returncode == ExitCode.REFUSED, out.stderr
        assert f"where: {wave} ([site.roots] Waveforms)" in out.stderr, out.stderr
        assert "larger percentage such as" not in out.stderr and "--max-delete all" in out.stderr, out.stderr
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions") == [(1,)]
    out = run(site, db, "--config", str(config), "--max-delete", "all", "-q")
    assert out.returncode == 0 and set(current_rows(db)) == {"OMOP/person.csv"}, out.stderr


def test_a_modality_root_left_out_of_the_run_is_refused_not_its_files_recorded_as_removed(site, db, tmp_path):
    """A run without the [site.roots] line (another --config, a chorus.toml edited, `run --site` elsewhere) did not
    look at that root, and recorded every file of it as removed: under --max-delete's share, one whole modality gone
    with exit 0. Refused (exit 5), naming the root; its files moved into the site root, or a moved root, pass."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    many(site, 10)
    wave = tmp_path / "img"
    for i in range(3):
        write(wave, f"{i:06d}/Images/CT/1/{i}.dcm", f"image {i}".encode())
    config = tmp_path / "roots.toml"
    config.write_text(f'[site.roots]\nImages = "{wave}"\n')
    assert run(site, db, "--config", str(config), "-q").returncode in (0, 1)
    before = current_rows(db)
    for extra in ([], ["--dry-run"]):
        out = run(site, db, *extra)  # no [site.roots]: the Images root is not looked at
        assert out.returncode == ExitCode.REFUSED, out.stdout + out.stderr
        assert f"{wave} ([site.roots] Images) (3 files)" in out.stderr and "--max-delete all" in out.stderr, out.stderr
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions") == [(1,)]
    # the root moved: its files are found under the new one, nothing is removed
    wave.rename(tmp_path / "img2")
    config.write_text(f'[site.roots]\nImages = "{tmp_path / "img2"}"\n')
    out = run(site, db, "--config", str(config), "-q")
    assert out.returncode in (0, 1) and current_rows(db) == before, out.stderr
    # its files moved into the site root and the line given up: nothing removed either
    shutil.copytree(tmp_path / "img2", site, dirs_exist_ok=True)
    out = run(site, db, "-q")
    assert out.returncode in (0, 1) and current_rows(db) == before, out.stderr


def test_an_emptied_site_recorded_twice_through_a_symlink_is_still_refused(site, db, tmp_path):
    """A manifest of an older release holds two `roots` rows for one site (given once by its path, once through a
    symlink) and the previous files lie under the symlink's. The "root lists no files" guard compared root_ids, so
    an unmounted site given by its path was not recognised, and with --max-delete 100% every file was removed."""
    many(site, 10)
    link = tmp_path / "site-link"
    link.symlink_to(site, target_is_directory=True)
    assert run(site, db, "-q").returncode == 0
    with sqlite3.connect(db) as con:  # what the older release recorded for a run through the symlink
        con.execute("INSERT INTO roots (location, modality, first_version) VALUES (?, NULL, NULL)", (str(link),))
    con.close()
    assert run(link, db, "-q").returncode == 0  # the files move to that root (its location matches exactly)
    assert query(db, "SELECT DISTINCT root_id FROM source_files") == [(2,)]
    before = current_rows(db)
    for path in list(site.iterdir()):  # "unmounted": the root is there, empty
        subprocess.run(["rm", "-rf", str(path)], check=True)
    out = run(site, db, "--max-delete", "100%")
    assert out.returncode == ExitCode.REFUSED and "no files at all" in out.stderr, out.stdout + out.stderr
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_more_removals_than_allowed_are_refused(site, db):
    many(site, 10)
    assert run(site, db, "-q").returncode == 0
    for i in range(6):
        (site / f"{i:06d}" / "Waveforms" / "Telemetry" / f"{9000 + i}" / f"{9000 + i}.dat").unlink()
    out = run(site, db)
    assert out.returncode == ExitCode.REFUSED and "6 of the previous version's 10 files (60.0%)" in out.stderr
    assert "max_delete 50% allows (50% of them, 5 files)" in out.stderr, out.stderr  # what the limit counts, said
    out = run(site, db, "--max-delete", "5")
    assert out.returncode == ExitCode.REFUSED and "max_delete 5 allows (5 files)" in out.stderr, out.stderr
    out = run(site, db, "--max-delete", "1")  # (it said "1 files")
    assert out.returncode == ExitCode.REFUSED and "max_delete 1 allows (1 file)" in out.stderr, out.stderr
    # a bare number in chorus.toml counts files (max_delete = 50 is not half): the refusal says so
    config = site.parent / "count.toml"
    config.write_text("[run]\nmax_delete = 5\n")
    out = run(site, db, "--config", str(config))
    assert out.returncode == ExitCode.REFUSED and "(5 files)" in out.stderr, out.stderr
    assert run(site, db, "--max-delete", "60%", "-q").returncode == 0
    assert set(current_rows(db)) == set(tree_md5(site))


def test_a_bad_max_delete_is_a_usage_error_before_any_work(site, db, tmp_path):
    assert run(site, db, "--max-delete", "lots").returncode == 2
    (tmp_path / "c.toml").write_text('[run]\nmax_delete = "half"\n')
    out = run(site, db, "--config", str(tmp_path / "c.toml"))
    assert out.returncode == 2 and "max_delete" in out.stderr and not db.exists()
    (tmp_path / "w.toml").write_text('[run]\nworkers = "8"\n')
    out = run(site, db, "--config", str(tmp_path / "w.toml"))
    assert out.returncode == 2 and "run.workers" in out.stderr
    assert run(site, db, "--workers", "0").returncode == 2


# ----------------------------------------------------------------------------- signals and workers


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def paused_at_hashing(site: Path, db: Path, pause: str = "hashing",
                      resume: Path | None = None) -> tuple[subprocess.Popen, set[int]]:
    """A run hashing in worker processes, paused in the parent while they work (`hashing+S`: for S seconds, or until
    the test creates `resume`)."""
    for i in range(2100):  # enough files for worker processes
        write(site, f"OMOP/part{i:05d}.csv", str(i).encode())
    more = {"CHORUS_BATCH_TEST_RESUME": str(resume)} if resume else {}
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--workers", "2",
                             "--site", str(site), "--db", str(db)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": pause, **more},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "test pause at hashing" in line:
            workers = children_of(proc.pid)
            assert workers, "hashing runs in worker processes"
            return proc, workers
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("the run never reached the hashing pause")


@pytest.mark.parametrize("signum, code, word, to_workers", [
    (signal.SIGTERM, 143, "terminated", False), (signal.SIGHUP, 129, "hung up", False),
    (signal.SIGINT, 130, "interrupted", False),
    # Slurm's --signal=USR1@60 (before a job's time limit) reaches every process of the step, workers too: it ended
    # the run with no message and an unfinished runs row, and the workers' deaths read as a crash
    (signal.SIGUSR1, 138, "stopped by SIGUSR1 (Slurm sends it", False), (signal.SIGUSR1, 138, "stopped by SIGUSR1", True),
    # --signal=USR2@60: its default action ended the run with no message, an unfinished runs row, a stale lock note
    (signal.SIGUSR2, 140, "stopped by SIGUSR2 (Slurm sends it", False), (signal.SIGUSR2, 140, "stopped by SIGUSR2", True),
    # the soft CPU-time limit (`ulimit -St`, a batch system's CPU limit) and Ctrl-\ dumped core: no message, no outcome
    (signal.SIGXCPU, 152, "CPU-time limit was reached", False), (signal.SIGQUIT, 131, "quit (Ctrl-\\, SIGQUIT)", True)])
def test_a_signal_stops_the_run_cleanly(site, db, signum, code, word, to_workers):
    proc, workers = paused_at_hashing(site, db)
    for pid in workers if to_workers else ():
        os.kill(pid, signum)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)  # returns: no worker keeps the caller's pipes open
    assert proc.returncode == code, err
    assert word in err and "nothing was committed" in err and "Traceback" not in err
    # a first run: there is no previous version to be "intact"
    assert "no version was written, and the manifest holds none yet" in err and "intact" not in err, err
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)
    assert query(db, "SELECT exit_code, finished_at IS NOT NULL FROM runs") == [(code, 1)]
    assert not Path(f"{db}.lock.json").exists()
    assert query(db, "SELECT count(*) FROM versions") == [(0,)]
    assert run(site, db, "-q").returncode == 0  # the lock was released


# Windows' signal module as Python has it there: SIGBREAK, number 21 (Linux's SIGTTIN, whose default action here
# stops the process, as a handler-less SIGBREAK ends it on Windows).
_WITH_SIGBREAK = """
import runpy, signal, sys
signal.SIGBREAK = 21
sys.argv[0] = "chorus-batch"
runpy.run_module("chorus_batch", run_name="__main__", alter_sys=True)
"""


def test_ctrl_break_stops_a_run_on_windows_as_ctrl_c_does(site, db):
    """Two sites run chorus-batch on Windows, where Ctrl-Break (SIGBREAK, sent to every process of the console) is
    the stop signal besides Ctrl-C: nothing handled it, and it ended the run and its workers at once: no message, the
    `runs` row left unfinished, the hashes since the last checkpoint lost. It stops the run as Ctrl-C does (exit
    149, 128 + 21); the workers leave it to the parent. Simulated with Windows' number for it."""
    for i in range(2100):  # enough files for worker processes
        write(site, f"OMOP/part{i:05d}.csv", str(i).encode())
    proc = subprocess.Popen([sys.executable, "-c", _WITH_SIGBREAK, "run", "--no-validate", "--workers", "2",
                             "--site", str(site), "--db", str(db)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "hashing"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = []
    while "test pause at hashing" not in (line := proc.stderr.readline()):
        said.append(line)
        assert line or proc.poll() is None, "".join(said)
    workers = children_of(proc.pid)
    assert workers
    for pid in (*workers, proc.pid):  # (the console's control event reaches each of its processes)
        os.kill(pid, 21)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        for pid in workers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("SIGBREAK did not stop the run") from None
    assert proc.returncode == ExitCode.BREAK == 149, err
    assert "stopped by Ctrl-Break (SIGBREAK)" in err and "nothing was committed" in err and "Traceback" not in err, err
    assert query(db, "SELECT exit_code, finished_at IS NOT NULL FROM runs") == [(149, 1)]
    assert not Path(f"{db}.lock.json").exists()
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)


@pytest.mark.parametrize("signum, code", [(signal.SIGUSR1, 138), (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_process_group_while_the_workers_start_stops_the_run_cleanly(site, db, signum, code):
    """A signal to every process of the run (Slurm's --signal, Ctrl-C) while a worker had been forked but had not yet
    set its own dispositions ran the parent's handler in the worker: Stopped raised inside a library's at-fork hook
    printed "Exception ignored ... Traceback" (CI, SIGUSR1). The stop signals are blocked across the fork until the
    worker has its dispositions: one line from the parent, its exit code, no worker left."""
    for i in range(2100):  # enough files for worker processes
        write(site, f"OMOP/part{i:05d}.csv", str(i).encode())
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--workers", "2",
                             "--site", str(site), "--db", str(db)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "worker-start+3"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = []
    while "test pause at worker-start" not in (line := proc.stderr.readline()):
        said.append(line)
        assert line or proc.poll() is None, "".join(said)
    workers = children_of(proc.pid)
    assert workers
    for pid in workers:
        os.kill(pid, signum)
    time.sleep(0.2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Exception" not in err and "nothing was committed" in err, err
    assert not any(alive(p) for p in workers)  # (the early listing's workers: no manifest was made yet)


# The stop signal arrives while the garbage collector runs a finaliser: Python runs the handler there, and the
# Stopped it raises is dropped ("Exception ignored in ..."). `point` is the function it comes in.
_SIGNALLED_IN_A_FINALISER = """
import os, signal, sys
import chorus_batch.{module} as module
from chorus_batch.cli import entry

class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIG{name})
        for _ in range(10_000):  # bytecode, where the handler runs
            pass

def signalled(*args, _real=module.{point}, **kwargs):
    done = _real(*args, **kwargs)
    Finalised()
    return done

module.{point} = signalled
sys.argv = ["chorus-batch", "run", "--no-validate", "--site", sys.argv[1], "--db", sys.argv[2], *sys.argv[3:]]
entry()
"""


@pytest.mark.parametrize("module, point", [("pipeline", "scan"), ("pipeline", "read_delete_list")])
@pytest.mark.parametrize("name, code", [("TERM", 143), ("USR1", 138), ("INT", 130)])
def test_a_stop_signal_whose_exception_a_finaliser_dropped_still_stops_the_run(site, db, module, point, name, code):
    """CI: SIGUSR1 while the workers started came as the garbage collector ran a finaliser; the Stopped its handler
    raised there was dropped, and the run committed and exited 0. Such a stop is raised again at the next stage."""
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    many(site, 8)
    extra = ["--mode", "append", "--delete-list", os.devnull] if point == "read_delete_list" else []
    script = _SIGNALLED_IN_A_FINALISER.format(module=module, point=point, name=name)
    done = subprocess.run([sys.executable, "-c", script, str(site), str(db), *extra], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == code, done.stderr
    assert "nothing was committed" in done.stderr and "Exception" not in done.stderr, done.stderr
    assert current_rows(db) == before


def test_a_hangup_the_caller_ignores_does_not_stop_the_run(site, db, tmp_path):
    """`nohup chorus-batch run ... &` and log out: the run installed its own SIGHUP handler over nohup's ignore and
    stopped at logout (exit 129, nothing committed)."""
    for i in range(2100):  # enough files for worker processes, which the shell hangs up too
        write(site, f"OMOP/part{i:05d}.csv", str(i).encode())
    proc = subprocess.Popen(["nohup", sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--workers", "2",
                             "--site", str(site), "--db", str(db)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "hashing+60",
                                 "CHORUS_BATCH_TEST_RESUME": str(tmp_path / "resume")}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "test pause at hashing" not in (line := proc.stderr.readline()):
        assert line or proc.poll() is None
    assert children_of(proc.pid), "hashing runs in worker processes"
    os.killpg(proc.pid, signal.SIGHUP)  # the shell's hang-up at logout, to the job's whole process group
    # (pending before the parent wakes from its pause's next short sleep: it is handled before the run goes on)
    (tmp_path / "resume").touch()
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert query(db, "SELECT n_files FROM versions") == [(2100,)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the early listing forks its workers (Linux)")
def test_a_signal_while_the_libraries_load_stops_the_early_listing(site, db):
    many(site)
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--workers", "2",
                             "--site", str(site), "--db", str(db)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "early-listing"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    assert "test pause at early-listing" in proc.stderr.readline()
    walkers = children_of(proc.pid)
    assert walkers, "the site is walked by worker processes while the libraries load"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "terminated" in err and "nothing was committed" in err and "Traceback" not in err
    assert not any(alive(p) for p in walkers)  # stopped before the command returned
    assert run(site, db, "-q").returncode == 0


def test_a_signal_on_a_later_run_says_which_version_stays(site, db):
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    (label,), = query(db, "SELECT label FROM versions")
    proc, _ = paused_at_hashing(site, db)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert f"nothing was committed; version {label} stays the latest" in err and "intact" not in err, err
    assert query(db, "SELECT label FROM versions") == [(label,)]


@pytest.mark.parametrize("point, committed", [("committed", True), ("hashing", False)])
def test_a_second_signal_while_the_first_stops_the_run_does_not_cut_its_clean_up_short(site, db, point, committed):
    """SIGHUP then SIGTERM (a logout, then systemd): the SIGTERM was raised in the clean-up of the SIGHUP's stop. Both
    delivered at once (held by SIGSTOP), so the second lands as the first is handled: after the commit, it said
    "nothing was committed" of the version the run had committed, left the `runs` row unfinished and named SIGTERM."""
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    (first,), = query(db, "SELECT label FROM versions")
    write(site, "OMOP/person.csv", b"person_id\n1\n2\n")
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "-q", "--site", str(site),
                             "--db", str(db)], env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": point},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "test pause at" not in (line := proc.stderr.readline()):
        assert line, "the run never reached its pause"
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129 and "hung up (SIGHUP)" in err and "SIGTERM" not in err, err
    labels = [label for label, in query(db, "SELECT label FROM versions ORDER BY label")]
    if committed:
        assert len(labels) == 2 and f"version {labels[1]} had been committed before; it stays" in err, err
        assert "nothing was committed" not in err
    else:
        assert labels == [first] and f"nothing was committed; version {first} stays the latest" in err, err
    assert query(db, "SELECT exit_code, finished_at IS NOT NULL FROM runs ORDER BY run_id DESC LIMIT 1") == [(129, 1)]
    assert run(site, db, "-q").returncode == 0  # the lock was released


def test_a_run_stopped_just_after_its_commit_does_not_make_the_next_run_hash_its_files_again(site, db, tmp_path):
    """The files a run committed were all hashed again by the next run when a signal stopped it just after its commit
    (a Slurm time limit's SIGTERM as the run ends): the racily-clean check took the scan start of the last run that
    had finished, an older one, and every file written since that one counted as modified during a scan."""
    config = tmp_path / "chorus.toml"
    config.write_text("[run]\nracy_window_s = 0\n")  # (the window's width aside: the scan start taken is the case)
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert run(site, db, "-q", "--config", str(config)).returncode == 0
    (first_scan,), = query(db, "SELECT scan_started_ns FROM runs")
    for i in range(20):  # written after the first run's scan started, before the second's
        os.utime(write(site, f"OMOP/part{i:02d}.csv", str(i).encode()), ns=(first_scan + 1, first_scan + 1))
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "-q", "--site", str(site),
                             "--db", str(db), "--config", str(config)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "committed"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "test pause at committed" not in (line := proc.stderr.readline()):
        assert line, "the run never reached its commit"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "had been committed before" in err, err
    out = run(site, db, "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "hashing 0 new or changed files" in out.stderr, out.stderr


def test_files_read_again_only_as_racily_clean_are_not_called_new_or_changed(site, db, tmp_path):
    # a run right after a delivery (or after the first run of a copied tree) reads again the files modified around the
    # last listing: the log said "hashing 3 new or changed files", and then the summary showed nothing changed
    for name in ("a", "b", "c"):
        write(site, f"OMOP/{name}.csv", b"x\n")
    config = tmp_path / "chorus.toml"
    config.write_text("[run]\nracy_window_s = 600.0\nverify_sample = 0\n", encoding="utf-8")
    assert run(site, db, "--config", str(config)).returncode == 0
    again = run(site, db, "--config", str(config))
    assert again.returncode == 0 and "no changes since version" in again.stdout, again.stdout + again.stderr
    assert "3 files listed; hashing 0 new or changed files, 3 modified around an earlier run's listing (racily " \
           "clean)" in again.stderr, again.stderr
    write(site, "OMOP/d.csv", b"y\n")  # a new file beside them: counted as the only new one
    assert "hashing 1 new or changed file, 3 modified around" in run(site, db, "--config", str(config)).stderr


def test_workers_die_with_a_killed_parent(site, db):
    proc, workers = paused_at_hashing(site, db)
    proc.kill()
    proc.communicate(timeout=30)  # returns only when nothing holds the pipes: the workers are gone too
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers)


@pytest.mark.parametrize("signum, fix", [
    (signal.SIGKILL, "out-of-memory killer"),
    # a worker's own CPU-time limit (each process has its own `ulimit -t`): it was told to look for the OOM killer
    (signal.SIGXCPU, "its CPU-time limit (`ulimit -t`"),
])
def test_a_worker_killed_mid_hashing_fails_the_run_with_a_true_message(site, db, tmp_path, signum, fix):
    """The OOM killer SIGKILLs one worker: exit 3 saying so (not "internal error: BrokenProcessPool"), the
    `runs` row finished, nothing committed, no process left, and the next run commits."""
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    resume = tmp_path / "resume"
    proc, workers = paused_at_hashing(site, db, "hashing+60", resume)
    workers = {p for p in workers if alive(p)}
    os.kill(min(workers), signum)  # while the parent waits: its next chunk finds the pool broken
    deadline = time.monotonic() + 10  # the parent goes on once the worker is dead (not after a fixed 3 s)
    while alive(min(workers)) and time.monotonic() < deadline:
        time.sleep(0.02)
    resume.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.FAILED, err
    assert f"worker process of this run ended abruptly (killed by {signum.name})" in err and "internal error" not in err
    assert fix in err and "nothing was committed" in err and "Traceback" not in err
    assert ("out-of-memory" in err) == (signum == signal.SIGKILL), err
    assert not any(alive(p) for p in workers)
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions") == [(1,)]
    assert query(db, "SELECT exit_code, finished_at IS NOT NULL FROM runs ORDER BY run_id DESC LIMIT 1") == [(3, 1)]
    assert run(site, db, "-q").returncode == 0 and len(current_rows(db)) == 2105


@pytest.mark.parametrize("replaced", [False, True])
def test_a_site_root_renamed_while_the_run_hashes_commits_nothing(site, db, tmp_path, replaced):
    """The site folder renamed (or unmounted: another folder at its path) while the run hashed it: every file not yet
    read was recorded `vanished`, a version committed with them (exit 1), renamed files' old paths as removed.
    Now exit 3, nothing committed, saying the root went; the rerun once it is back reuses what was hashed."""
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    resume = tmp_path / "resume"
    proc, _ = paused_at_hashing(site, db, "hashing+60", resume)
    moved = site.with_name("site.moved")
    site.rename(moved)
    if replaced:
        site.mkdir()  # (the mount point, empty, once the file system is gone)
    resume.touch()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.FAILED, err
    assert "renamed, removed or unmounted while this run listed and hashed it" in err and "Traceback" not in err
    assert "nothing was committed; version" in err and "stays the latest" in err
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions") == [(1,)]
    if replaced:
        site.rmdir()
    moved.rename(site)
    done = run(site, db, "-q")
    assert done.returncode == 0, done.stderr
    assert len(current_rows(db)) == 2105 and query(db, "SELECT count(*) FROM scan_errors") == [(0,)]


def test_a_run_with_stdin_stdout_and_stderr_closed_commits(site, db):
    """cron lines ending `<&- >&- 2>&-`: the pool's pipes took fds 0-2 and the workers' /dev/null over them broke
    the pool (exit 3, BrokenProcessPool). The streams are opened on /dev/null first."""
    for i in range(2100):  # worker processes
        write(site, f"OMOP/part{i:05d}.csv", str(i).encode())
    command = " ".join([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--workers", "2",
                        "--site", str(site), "--db", str(db)])
    done = subprocess.run(["sh", "-c", f"{command} <&- >&- 2>&-"], timeout=120)
    assert done.returncode == 0
    assert query(db, "SELECT exit_code FROM runs") == [(0,)] and len(current_rows(db)) == 2100


def test_a_report_to_a_closed_standard_output_is_not_said_written(site, db):
    """`report --out - >&-`: a closed stdout takes nothing (right for a run's summary), and the report said "wrote
    the report to standard output", exit 0, of a page written nowhere. Refused before any work: exit 3, saying so."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert run(site, db, "-q", "--no-validate").returncode == 0
    command = " ".join([sys.executable, "-m", "chorus_batch", "report", "--db", str(db), "--out", "-"])
    done = subprocess.run(["sh", "-c", f"{command} >&-"], capture_output=False, stderr=subprocess.PIPE, text=True,
                          timeout=120)
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert "standard output is closed (`>&-`): the report would be written nowhere" in done.stderr, done.stderr
    assert "wrote the report" not in done.stderr and "nothing was done" in done.stderr


@pytest.mark.parametrize("words", [["files", "--md5sum"], ["files", "--json"], ["versions", "--json"],
                                   ["history", "OMOP/person.csv"], ["status", "--json", "--site", "{site}"],
                                   ["validate", "--json"], ["run", "--dry-run", "--site", "{site}"],
                                   ["slurm-script", "--site", "{site}"]])
def test_a_command_whose_product_is_standard_output_refuses_it_closed(site, db, words):
    """`files --md5sum >&-`, `versions --json >&-`: a closed stdout took the listing, and the command exited 0 of a
    list written nowhere (a script's `files --md5sum >&- && echo ok` said ok). Where standard output is what the
    command makes, a closed one is refused before any work, exit 3, saying so, as `report --out -` is."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert run(site, db, "-q", "--no-validate").returncode == 0
    before = query(db, "SELECT count(*) FROM runs")
    command = [sys.executable, "-m", "chorus_batch", *(w.format(site=site) for w in words), "--db", str(db)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert "standard output is closed (`>&-`)" in done.stderr and "nothing was done" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert query(db, "SELECT count(*) FROM runs") == before  # (refused before any work)


@pytest.mark.parametrize("words", [["files", "--as-of", "nosuch"], ["files", "--json", "--modality", "nosuch"],
                                   ["validate", "--rule", "nosuch"], ["validate", "--explain", "nosuch"],
                                   ["validate", "--json", "--version", "nosuch"], ["diff", "--from", "nosuch"],
                                   ["report", "--out", "-", "--version", "nosuch"],
                                   ["upload", "--script", "bash", "--to", "az://nosuch-container/", "--version",
                                    "nosuch"],
                                   ["run", "--dry-run", "--site", "{site}", "--delete-list", "nosuch.txt"],
                                   ["run", "--dry-run", "--site", "{site}/nosuch"],
                                   ["import-journal", "nosuch.journal", "--dry-run"],
                                   ["status", "--site", "nosuch"], ["run", "--dry-run", "--site", "nosuch"]])
def test_a_usage_error_with_standard_output_closed_is_a_usage_error(site, db, words):
    """`files --as-of nosuch >&-`, `validate --rule nosuch >&-`: the closed standard output was refused before the
    command checked its arguments, exit 3, where a usage error is 2 (README's exit codes) and says what to fix. The
    usage error wins; a closed stdout with good arguments is still refused before any work (the test above). So in
    every command whose product is standard output: `report --out -`, `upload --script`, the dry runs said the closed
    output, exit 3, of a command line that was wrong (`--delete-list` without `--mode append`, a missing --site).
    `status --site nosuch >&-` (and `run --dry-run`) refused it before the pipeline checked the site: now once the
    site and its roots are checked, before the listing."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert run(site, db, "-q", "--no-validate").returncode == 0
    before = query(db, "SELECT count(*) FROM runs")
    command = [sys.executable, "-m", "chorus_batch", *(w.format(site=site) for w in words), "--db", str(db)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == ExitCode.USAGE, done.stderr
    said = ("append mode only" if "--delete-list" in words else "never writes over one" if "import-journal" in words
            else "nosuch")
    assert said in done.stderr and "standard output is closed" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert query(db, "SELECT count(*) FROM runs") == before


def test_import_config_with_standard_output_closed_says_its_usage_error_first(tmp_path):
    """`import-config CONFIG >&-` with no --out: a CONFIG that is not there was said as the closed standard output,
    exit 3; it is a usage error, exit 2, as in the other commands."""
    command = [sys.executable, "-m", "chorus_batch", "import-config", str(tmp_path / "nosuch.toml")]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == ExitCode.USAGE and "config not found" in done.stderr, done.stderr
    assert "standard output is closed" not in done.stderr


@pytest.mark.parametrize("words, names_versions", [
    (["slurm-script", "--site", "{site}", "--db", "{db}"], False),
    (["validate", "--site", "{site}"], False), (["run", "--dry-run", "--site", "{site}", "--db", "{db}"], False),
    (["files", "--json", "--db", "{db}"], False), (["validate", "--db", "{db}"], True)])
def test_an_output_to_a_full_disk_names_the_manifest_only_where_the_command_wrote_one(site, db, tmp_path, words,
                                                                                     names_versions):
    """`slurm-script > /dev/full`, `validate --site DIR` (a temporary manifest, removed), a dry run: their fix said
    "`chorus-batch versions` shows what the manifest holds", of a manifest they did not write or that is not there;
    it is said only by a command that may have recorded something in one (validate's findings, a run's version)."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert run(site, db, "-q", "--no-validate").returncode == 0
    (tmp_path / "elsewhere").mkdir()
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "chorus_batch", *(w.format(site=site, db=db) for w in words)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp_path / "elsewhere")
    assert done.returncode == ExitCode.FAILED and "could not write the output" in done.stderr, done.stderr
    assert "fix:   write it where there is room" in done.stderr, done.stderr
    assert ("`chorus-batch versions` shows what the manifest holds" in done.stderr) == names_versions, done.stderr


def test_a_run_with_standard_output_closed_still_commits_and_exits_0(site, db):
    """The run's product is its version, not its summary: `run >&-` (a cron line) is not refused, `--json` or not."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    command = [sys.executable, "-m", "chorus_batch", "run", "--json", "--no-validate", "-q", "--site", str(site),
               "--db", str(db)]
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120,
                          preexec_fn=lambda: os.close(1))
    assert done.returncode == 0, done.stderr
    assert len(current_rows(db)) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two usable CPUs")
@pytest.mark.parametrize("how", ["taskset", "slurm"])
def test_the_default_workers_follow_the_cpus_the_run_may_use(how):
    """`taskset -c 0` or a Slurm job's `--cpus-per-task=1` on a machine of more CPUs: the default --workers was the
    machine's CPU count (os.cpu_count), so a one-CPU job started a worker per CPU of the node on its one CPU. Now it
    is the CPUs the process may run on: its affinity, at most SLURM_CPUS_PER_TASK."""
    first = min(os.sched_getaffinity(0))
    env = {**os.environ, "SLURM_CPUS_PER_TASK": "1"} if how == "slurm" else {
        k: v for k, v in os.environ.items() if k != "SLURM_CPUS_PER_TASK"}
    code = "from chorus_batch.config import RunSection; print(RunSection().workers)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env,
                          preexec_fn=(lambda: os.sched_setaffinity(0, {first})) if how == "taskset" else None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


def test_a_slurm_cpus_per_task_that_is_no_number_is_said_once(site, db):
    """SLURM_CPUS_PER_TASK set by hand to what is not a CPU count (`4c`, a script's empty `$((…))`) was ignored
    without a word: the run used every CPU the process may run on. Said once, and the run goes on."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    out = cli("run", "--no-validate", "--site", str(site), "--db", str(db), env={"SLURM_CPUS_PER_TASK": "4c"})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("SLURM_CPUS_PER_TASK is '4c', not a number of CPUs: ignored") == 1, out.stderr


def test_quiet_and_verbose_together_give_the_timings_without_the_progress(site, db):
    """`-q -v`: -q silences the progress, -v adds the stage timings. -q won silently: no timings."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    out = cli("-q", "run", "-v", "--no-validate", "--site", str(site), "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "reading the previous version took" in out.stderr and "listing:" not in out.stderr, out.stderr
    quiet = cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db))
    assert quiet.returncode == 0 and "reading the previous version took" not in quiet.stderr, quiet.stderr


def test_verbose_names_the_stages_in_words_and_json_keeps_their_keys(site, db):
    """`run -v` ended its stdout with `stage seconds: load_previous 0.021, scan …, cache_facts …` and logged
    `load_previous: 0.021 s, peak RSS …`: the code's names for its stages. Said in words; --json's `stage_s`
    keeps the keys (benchmarks read them)."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    import re

    out = cli("run", "-v", "--site", str(site), "--db", str(db))
    assert out.returncode in (0, 1), out.stderr  # (1: the one-file site's findings)
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("time by stage: ")]
    for words in ("reading the previous version", "listing", "hashing", "saving header facts", "commit",
                  "checking against the procedures"):
        assert f"{words} " in line, line
    assert not re.search(r"\b(load_previous|scan|hash|cache_facts|validate)\b", line), line
    assert "load_previous" not in out.stderr and "cache_facts" not in out.stderr, out.stderr
    assert "commit took" in out.stderr and "checking against the procedures took" in out.stderr, out.stderr
    write(site, "OMOP/visit.csv", b"visit_id\n1\n")
    summary = json.loads(cli("run", "--json", "--site", str(site), "--db", str(db)).stdout)
    assert {"load_previous", "scan", "hash", "commit", "validate"} <= set(summary["stage_s"]), summary["stage_s"]


def test_a_slurm_job_of_one_cpu_runs_one_polars_thread(site, db):
    """On a cluster that does not bind a job's CPUs, a `--cpus-per-task=1` job may run on every CPU of the node:
    polars sized its thread pool by that (64 threads on a 64-core node, beside the other jobs), as the workers were
    before. Now the command line sets POLARS_MAX_THREADS from SLURM_CPUS_PER_TASK (unless the site set it)."""
    import re

    for i in range(50):
        write(site, f"OMOP/part{i:03d}.csv", str(i).encode())

    def polars_threads(env: dict) -> int:
        proc = paused("run", "--no-validate", "--site", str(site), "--db", str(db), at="hashing", env=env)
        try:
            names = [Path(task, "comm").read_text().strip() for task in Path(f"/proc/{proc.pid}/task").iterdir()]
        finally:
            proc.kill()
            proc.communicate(timeout=60)
        return sum(bool(re.fullmatch(r"polars-\d+", name)) for name in names)

    cpus = len(os.sched_getaffinity(0))
    assert polars_threads({"SLURM_CPUS_PER_TASK": "1"}) == 1 < cpus
    assert polars_threads({"SLURM_CPUS_PER_TASK": "1", "POLARS_MAX_THREADS": str(cpus)}) == cpus  # the site's own


@pytest.mark.parametrize("hard, code", [(40, ExitCode.USAGE), (4096, 0)])
def test_a_low_open_file_limit_is_raised_or_refused_before_any_work(site, db, hard, code):
    """`ulimit -n 40` and 16 workers: the pool could not start its workers mid-run (EMFILE), and the run said
    "cannot open the manifest" (its bookkeeping could not open it either). Now the soft limit is raised up to the
    hard one, and a hard limit too low is exit 2 naming the limit, before a manifest or `runs` row exists."""
    import resource

    for i in range(2100):  # worker processes
        write(site, f"OMOP/part{i:05d}.csv", str(i).encode())
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--workers", "16",
                           "--site", str(site), "--db", str(db)], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard)))
    assert done.returncode == code, done.stderr
    if code:
        assert "the open-file limit is 40: 16 worker processes need at least 80 open files" in done.stderr
        assert "ulimit -n 1024" in done.stderr and "--workers 2" in done.stderr and not db.exists()
    else:
        assert len(current_rows(db)) == 2100


@pytest.mark.parametrize("mib", [100, 2000])
def test_an_address_space_limit_below_what_a_run_maps_is_refused_before_any_work(site, db, mib):
    """`ulimit -v` (or a Slurm job's, passed on from the shell that submitted it) below the ~3 GiB of address space a
    run maps, though it resides in far less: at 100 MiB "internal error: ImportError ... failed to map segment"; at
    2000 MiB an allocation in polars' Rust code aborted the process (exit 134, "memory allocation of 8388608 bytes
    failed", a Rust backtrace, the `runs` row unfinished). Now exit 2 before any work, naming the limit and what to
    use instead; the previous version stays and no `runs` row is added."""
    import resource

    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before, runs = current_rows(db), query(db, "SELECT run_id, exit_code FROM runs")
    many(site, 2100)  # enough for worker processes and a previous state read by polars
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site), "--db",
                           str(db)], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (mib * 2**20, resource.RLIM_INFINITY)))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"the address-space limit (`ulimit -v`) is {mib} MiB" in done.stderr, done.stderr
    assert "ulimit -v unlimited" in done.stderr and "Slurm --mem" in done.stderr and "Traceback" not in done.stderr
    assert current_rows(db) == before and query(db, "SELECT run_id, exit_code FROM runs") == runs
    assert run(site, db, "-q").returncode == 0 and len(current_rows(db)) == 2100


@pytest.mark.parametrize("mib", [1000, 2000])
@pytest.mark.parametrize("command", ["validate", "upload"])
def test_validate_and_upload_under_an_address_space_limit_are_refused_before_any_work(site, db, azurite, command,
                                                                                         mib):
    """The nightly `validate` and `upload --dry-run` load the libraries a run does and map as much (VmPeak 2.6 GiB
    for a 51-file site): under `ulimit -v` 1000 MiB `validate` aborted in polars' Rust code (exit 134, "memory
    allocation of 1520 bytes failed", no message of ours); under 2000 MiB `upload --dry-run` was exit 3 "the system
    would not start another process or thread ... `ulimit -u` is 96367", a limit it had not reached. Both are now exit
    2 before any work, naming the address-space limit, as `run` and `status` are; the ledger and versions unchanged."""
    import resource

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before = query(db, "SELECT count(*) FROM versions"), query(db, "SELECT count(*) FROM uploads"), current_rows(db)
    args = {"validate": ["validate", "--force", "--db", str(db)],
            "upload": ["upload", "--dry-run", "--db", str(db), "--to", f"az://{azurite.new_container()}/"]}[command]
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    done = subprocess.run([sys.executable, "-m", "chorus_batch", *args], capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (mib * 2**20, resource.RLIM_INFINITY)))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"the address-space limit (`ulimit -v`) is {mib} MiB: `{command}` maps about 3 GiB" in done.stderr, done.stderr
    assert "ulimit -v unlimited" in done.stderr and "`ulimit -u`" not in done.stderr and "Traceback" not in done.stderr
    assert (query(db, "SELECT count(*) FROM versions"), query(db, "SELECT count(*) FROM uploads"),
            current_rows(db)) == before
    unlimited = cli(*args, env=env)  # (no limit: the zygote's fork, stdin /dev/null as above)
    assert unlimited.returncode in (0, 1), unlimited.stderr


@pytest.mark.parametrize("command", ["report", "registry", "changes"])
def test_the_reading_commands_under_an_address_space_limit_are_refused_before_any_work(site, db, tmp_path, command):
    """The nightly report (and registry, changes) load polars and DuckDB as a run does, but were not held to the
    address space it maps: under `ulimit -v` 2000 MiB `report` ended with "cannot allocate memory for thread-local
    data: ABORT" (exit 127), `registry` and `changes` in polars' Rust code (exit 134), no message of ours and the
    output not written. Exit 2 before any work, naming the limit, as `run` is."""
    import resource

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert run(site, db, "-q", "--no-validate").returncode == 0
    out = tmp_path / "out"
    args = {"report": ["--out", str(out)], "registry": ["--out", str(out)], "changes": []}[command]
    done = subprocess.run([sys.executable, "-m", "chorus_batch", command, "--db", str(db), *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2000 * 2**20, resource.RLIM_INFINITY)))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert f"the address-space limit (`ulimit -v`) is 2000 MiB: `{command}` maps about 3 GiB" in done.stderr, done.stderr
    assert "ulimit -v unlimited" in done.stderr and not out.exists()


_FORK_REFUSED = """
import errno, os, sys
from chorus_batch import cli

def fork():  # what the kernel says when it will not start a worker process (see the test's parameters)
    raise OSError(errno.{name}, os.strerror(errno.{name}))

os.fork = fork
sys.exit(cli.main(["run", "--no-validate", "--workers", "2", "--site", sys.argv[1], "--db", sys.argv[2]]))
"""


@pytest.mark.parametrize("name, words", [
    # no memory for it (overcommit, a cgroup's limit): "internal error: OSError: [Errno 12] Cannot allocate memory
    # ... report it" (seen when several runs shared one node)
    ("ENOMEM", ["error: out of memory: OSError", "give the job more memory"]),
    # `ulimit -u` (RLIMIT_NPROC, a login node's or a batch job's; a cgroup's pids.max alike) reached: "internal
    # error: BlockingIOError: [Errno 11] Resource temporarily unavailable ... report it"
    ("EAGAIN", ["error: the system would not start another process or thread: BlockingIOError", "`ulimit -u`",
                "--workers 1"]),
])
def test_a_worker_process_the_system_refuses_is_said_as_the_limit_reached(site, db, name, words):
    """The fork of a hashing worker refused by the system is the machine's limit, not ours to report: exit 3 with
    which limit and what to do, and the previous version stays."""
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    many(site, 2100)  # enough files for worker processes (hashing.PROCESS_MIN_FILES)
    done = subprocess.run([sys.executable, "-c", _FORK_REFUSED.replace("{name}", name), str(site), str(db)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert all(word in done.stderr for word in words), done.stderr
    assert "internal error" not in done.stderr and "nothing was committed" in done.stderr, done.stderr
    assert current_rows(db) == before
    assert query(db, "SELECT exit_code FROM runs ORDER BY run_id DESC LIMIT 1") == [(ExitCode.FAILED,)]


_PANICKING = """
import os, sys
os.environ["POLARS_MAX_THREADS"] = "0"  # read by polars at its first query, where it panics (Rust)
from chorus_batch import RunSettings, run
try:
    run(RunSettings(site=sys.argv[1], db=sys.argv[2], validate=False))
except Exception as exc:
    print("raised", type(exc).__name__)
"""


def test_a_panic_in_a_librarys_rust_code_fails_the_run_as_an_error(site, db):
    """pyo3 raises a Rust panic (polars') as PanicException, a BaseException: it passed every `except Exception`, so
    the command line ended with a traceback and exit code 1 ("findings"), and the `runs` row stayed unfinished (the
    next run called it killed). Now it is an Exception (LibraryPanic): the run is recorded as failed (3), the previous
    version stays, and a library caller can catch it."""
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    many(site, 8)
    done = subprocess.run([sys.executable, "-c", _PANICKING, str(site), str(db)], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"})
    assert done.returncode == 0 and done.stdout.strip() == "raised LibraryPanic", (done.stdout, done.stderr)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert query(db, "SELECT exit_code, message FROM runs ORDER BY run_id DESC LIMIT 1") == [
        (ExitCode.FAILED, "LibraryPanic: a library panicked: Worker threads cannot be set to 0; nothing was committed; "
                          f"version {label} stays the latest")]
    assert current_rows(db) == before


def test_a_file_size_limit_that_stops_the_manifest_says_so_and_keeps_the_previous_version(site, db):
    """`ulimit -f` (a batch system's or a login's file-size limit) stopped SQLite's write with EFBIG, which SQLite
    says as "disk I/O error": the run said the manifest's file system failed and to check dmesg, on a healthy disk.
    Now exit 3 naming the limit and what to do; nothing is committed."""
    import resource

    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    many(site, 3000)
    limit = db.stat().st_size + 64 * 1024
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site), "--db",
                           str(db)], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)))
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert "`ulimit -f`" in done.stderr and f"{limit // 1024} KiB" in done.stderr, done.stderr
    assert "dmesg" not in done.stderr and "internal error" not in done.stderr
    assert "nothing was committed" in done.stderr
    assert current_rows(db) == before
    assert run(site, db, "-q").returncode == 0 and len(current_rows(db)) == 3000


def test_a_file_size_limit_the_manifest_file_outgrew_after_the_commit_is_said(site, db):
    """A nightly run under `ulimit -f` whose commit fitted in the WAL, but whose manifest file had reached the limit:
    SQLite could not write the WAL's pages into it as the run closed it and said nothing; the run said "committed",
    exit 0, night after night, while the WAL grew and the manifest file alone (a backup's copy) lacked every version
    since. Now the run warns, naming the WAL, the limit and what to do; the version is committed all the same."""
    import resource

    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    many(site, 40)
    limit = db.stat().st_size
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "-q", "--no-validate", "--site", str(site),
                           "--db", str(db)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY)))
    assert done.returncode == 0, done.stderr
    assert f"only in {db}-wal" in done.stderr and "`ulimit -f`" in done.stderr, done.stderr
    assert "keep " in done.stderr and "Traceback" not in done.stderr
    assert len(query(db, "SELECT label FROM versions")) == 2 and len(current_rows(db)) == 40
    again = run(site, db, "-q")
    assert again.returncode == 0 and "-wal" not in again.stderr, again.stderr
    assert not Path(f"{db}-wal").exists() or not Path(f"{db}-wal").stat().st_size


def test_a_file_size_limit_that_stops_a_shards_parquet_names_the_limit(site, db, tmp_path):
    """A Slurm array task under `ulimit -f`: polars says the write's EFBIG in its own error ("ComputeError: parquet:
    ... underlying IO error: File too large (os error 27)"), which the run said as an internal error to report (and
    an errno-less OSError got "choose a path on an ordinary file system with room"). Now exit 3, the file, and the
    limit to raise; the shard's folder is left empty."""
    import resource

    many(site, 3000)
    staging = tmp_path / "staging"
    done = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site), "--db",
                           str(db), "--shard", "0/1", "--staging", str(staging)], capture_output=True, text=True,
                          timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY)))
    assert done.returncode == ExitCode.FAILED, done.stderr
    assert "cannot write" in done.stderr and "files.parquet: File too large" in done.stderr, done.stderr
    assert "`ulimit -f unlimited`" in done.stderr and "internal error" not in done.stderr, done.stderr
    assert not any((staging / "shard-0-of-1").iterdir())


# ----------------------------------------------------------------------------- truthful errors


def test_a_parquet_folder_that_cannot_be_written_is_refused_before_the_scan(site, db, tmp_path):
    write(site, "OMOP/a.csv")
    afile = tmp_path / "snap"
    afile.write_text("not a folder")
    out = run(site, db, "--parquet", str(afile))
    assert out.returncode == 2 and "names a file" in out.stderr and not db.exists()


def test_a_run_that_commits_nothing_leaves_no_empty_parquet_folder_it_made(site, db, tmp_path):
    """--parquet's folder (and its missing parents) is made before the listing, to refuse an unwritable one at once;
    a run that then committed nothing (an empty site, a refusal) left it empty, and readers refuse an empty snapshot
    folder ("no Parquet snapshots in ..."). A folder that was there stays, empty or not."""
    snap = tmp_path / "new" / "snap"
    out = run(site, db, "--parquet", str(snap))  # the site lists no files: refused, no version
    assert out.returncode == 5 and "lists no files at all" in out.stderr, out.stdout + out.stderr
    assert not (tmp_path / "new").exists()
    there = tmp_path / "there"
    there.mkdir()
    assert run(site, db, "--parquet", str(there)).returncode == 5 and there.is_dir()
    write(site, "OMOP/a.csv")
    assert run(site, db, "--parquet", str(snap)).returncode in (0, 1)
    assert (snap / "versions.parquet").is_file()


def test_a_failure_after_the_commit_says_the_version_was_committed(site, db, tmp_path):
    write(site, "OMOP/a.csv")
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "versions.parquet").mkdir()  # the snapshot cannot be replaced: it fails after the commit
    out = run(site, db, "--parquet", str(snap))
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert out.returncode == 3 and f"version {label} was committed" in out.stderr
    assert "nothing was committed" not in out.stderr and "internal error" not in out.stderr
    assert query(db, "SELECT exit_code, version FROM runs") == [(3, label)]
    # what is left, as the manifest and the folder hold it: it said "(the next run checks it again)" of a version run
    # --no-validate, whose own snapshot was written (the list of versions beside it failed)
    assert out.stderr.rstrip().endswith("the version stays committed") and "check" not in out.stderr, out.stderr


@pytest.mark.parametrize("point, remove, committed", [
    ("commit", "files", True),  # the manifest and its -wal removed, the folder kept, just before the commit
    ("validate", "folder", True),  # the manifest's folder removed after the commit
    ("checkpoint", "folder", False),  # ... while the run hashes: nothing committed
])
def test_a_manifest_removed_while_the_run_goes_on_is_said_and_not_made_again(tmp_path, point, remove, committed):
    """The manifest (or its folder) removed by a clean-up job mid-run: the run said "SQLite failed on the manifest:
    failed to allocate memory ... report it", "nothing was committed; version X stays the latest" or "version X was
    committed to <path>" (it went with the removed file), and made a new, empty manifest where the old one was."""
    site, out = tmp_path / "site", tmp_path / "out"
    many(site, 5)
    out.mkdir()
    db = out / "m.sqlite"
    assert run(site, db, "-q").returncode == 0
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    resume = tmp_path / "resume"
    env = {**os.environ, "CHORUS_BATCH_TEST_PAUSE": f"{point}+60", "CHORUS_BATCH_TEST_RESUME": str(resume),
           "CHORUS_BATCH_CHECKPOINT_S": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--site", str(site), "--db", str(db),
                             "--rehash", "--workers", "1"] + ([] if point == "validate" else ["--no-validate"]),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = []
    while not said or "test pause at" not in said[-1]:
        said.append(proc.stderr.readline())
        assert said[-1] or proc.poll() is None, "".join(said)
    if remove == "folder":
        subprocess.run(["rm", "-rf", str(out)], check=True)
    else:
        for path in out.glob("m.sqlite*"):
            subprocess.run(["rm", "-rf", str(path)], check=True)
    resume.touch()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.FAILED, err
    assert f"the manifest {db} was removed or moved while this run went on" in err, err
    assert ("was committed into that file before it went: it is not in" in err) == committed, err
    assert ("nothing was committed to" in err) != committed, err
    assert "stays the latest" not in err and " was committed to " not in err.replace("nothing was", "") \
        and "report it" not in err, err
    assert not db.exists()  # no new, empty manifest in its place


@pytest.mark.parametrize("make, words", [
    (lambda db: db.mkdir(), "names a folder"),
    (lambda db: db.write_text("notes, not a database\n" * 100), "not a readable SQLite database"),
])
def test_a_manifest_path_that_cannot_be_a_manifest_says_so(site, db, make, words):
    write(site, "OMOP/a.csv")
    make(db)
    out = run(site, db)
    assert out.returncode == (2 if words == "names a folder" else 3) and words in out.stderr and "fix:" in out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr


def test_a_manifest_path_inside_a_file_names_that_file(site, tmp_path):
    write(site, "OMOP/a.csv")
    (tmp_path / "notes.txt").write_text("not a folder")
    out = run(site, tmp_path / "notes.txt" / "manifests" / "m.sqlite")
    assert out.returncode == 2 and f"{tmp_path / 'notes.txt'} is a file, not a folder" in out.stderr  # usage
    assert "fix:" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="Linux /proc")
def test_a_lock_file_that_cannot_be_made_is_not_called_locked(site):
    write(site, "OMOP/a.csv")
    out = run(site, Path("/proc/chorus-test.sqlite"))
    assert out.returncode == 3 and "cannot create or open the manifest's lock file" in out.stderr, out.stderr
    assert "locked" not in out.stderr and "fix:" in out.stderr


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_manifest_folder_this_user_cannot_write_is_a_setting_to_fix_as_every_output_is(site, tmp_path):
    """`run --db` in a folder this user cannot write was exit 3, a failure, where `registry --out`, `testdata`,
    `--parquet` and `import-journal --db` in such a folder are exit 2: a path to fix, nothing done. A cron wrapper
    tells a night that failed from a line to fix by that code."""
    write(site, "OMOP/a.csv")
    shut = tmp_path / "shut"
    shut.mkdir()
    os.chmod(shut, 0o555)
    try:
        out = run_without_override(["run", "--no-validate", "--site", str(site), "--db", str(shut / "m.sqlite"),
                                    "--json"])
    finally:
        os.chmod(shut, 0o755)
    assert out.returncode == 2, out.stderr
    assert "Permission denied" in out.stderr and "a folder this user can write" in out.stderr
    assert json.loads(out.stdout)["exit_code"] == 2 and not list(shut.iterdir())


def test_a_manifest_on_nfs_whose_lock_service_is_unreachable_is_said_to_be_so(db, monkeypatch):
    """flock on an NFS mount whose lock service (lockd, rpc.statd) is not reachable fails with ENOLCK: the run said
    "cannot create or open the manifest's lock file" of a file it had made, and "an ordinary file system"."""
    import errno
    import fcntl

    from chorus_batch.errors import ManifestError
    from chorus_batch.store.lock import manifest_lock

    def no_locks(*_args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.raises(ManifestError) as said, manifest_lock(db, ["run"]):
        pass
    assert "cannot lock files (No locks available)" in str(said.value) and "NFS" in str(said.value)
    assert "rpc.statd" in said.value.fix and "cannot create or open" not in str(said.value)



def test_a_manifest_on_a_file_system_without_flock_is_said_to_be_so_not_locked(site, db, monkeypatch):
    """flock failing with ENOSYS (Lustre mounted without -o flock, some FUSE mounts): filelock fell back to a "soft"
    lock, the lock file's being there, found the one every run leaves, and every run, the first too, was told "the
    manifest is locked by another run: an unknown process" (exit 4), night after night, with a UserWarning."""
    import errno
    import fcntl
    import warnings

    from chorus_batch.errors import ManifestError, ManifestLocked
    from chorus_batch.store.lock import manifest_lock

    def no_flock(*_args):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(fcntl, "lockf", no_flock)
    db.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "falling back to SoftFileLock" on standard error)
        for _ in range(2):  # the first, then the next (the lock file is there)
            with pytest.raises(ManifestError) as said, manifest_lock(db, ["run"]):
                pass
            assert not isinstance(said.value, ManifestLocked) and "does not lock files" in str(said.value)
            assert "Lustre" in str(said.value) and "-o flock" in said.value.fix, said.value

@pytest.mark.parametrize("holder, said", [("validate", "command"), ("registry", "command"), ("run", "run")])
def test_the_lock_is_said_held_by_the_command_that_holds_it(site, db, holder, said):
    """A nightly run turned away while `validate --force` (or `registry`) held the run lock was told "locked by
    another run ... once that run has finished": there was no other run to wait for."""
    from chorus_batch.store.lock import manifest_lock

    write(site, "OMOP/a.csv")
    assert run(site, db, "-q").returncode == 0
    with manifest_lock(db, [holder, "--db", str(db)]):
        out = run(site, db)
    assert out.returncode == 4, out.stderr
    assert f"locked by another {said}: pid {os.getpid()} " in out.stderr and f"`chorus-batch {holder}`" in out.stderr
    assert f"this run did nothing; run it again once that {said} has finished" in out.stderr, out.stderr


@pytest.mark.parametrize("command", [("upgrade",), ("validate", "--force", "--site"), ("run", "--site")])
def test_a_command_turned_away_by_the_lock_is_named_as_itself(site, db, command):
    """`upgrade` (or `validate --force`, `registry`) refused by a run's lock was told "this run did nothing": it is
    named as the command it is (a plain run still "this run"); exit 4, naming the holder."""
    from chorus_batch.store.lock import manifest_lock

    write(site, "OMOP/a.csv")
    assert run(site, db, "-q").returncode == 0
    with manifest_lock(db, ["run", "--site", str(site)]):
        out = cli(*command, *([str(site)] if "--site" in command else []), "--db", str(db))
    if command[0] == "upgrade":  # a manifest at this schema: nothing to upgrade, no lock wanted, not turned away
        assert out.returncode == 0 and "already at schema" in out.stdout, out.stderr
        return
    assert out.returncode == 4, out.stderr
    assert f"pid {os.getpid()} " in out.stderr and "`chorus-batch run`" in out.stderr, out.stderr
    this = "this run" if command[0] == "run" else f"this `chorus-batch {command[0]}`"
    assert f"fix:   {this} did nothing; run it again once that run has finished" in out.stderr, out.stderr



@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_a_turned_away_run_tightens_the_pending_runs_file_it_appends_to(site, db):
    """<db>.runs-pending.jsonl (a run the lock turned away notes itself there; it names the site and the command line)
    was appended to as it was: one left group/other readable (a backup restored, a copy under umask 022) stayed so.
    Outputs are owner-only: it is made so; the rows it held stay and go into `runs`."""
    from chorus_batch.store.lock import manifest_lock

    write(site, "OMOP/a.csv")
    assert run(site, db, "-q").returncode == 0
    pending = Path(f"{db}.runs-pending.jsonl")
    pending.write_text("")
    pending.chmod(0o644)
    with manifest_lock(db, ["run", "--site", str(site)]):
        assert run(site, db).returncode == 4
    assert stat.S_IMODE(pending.stat().st_mode) == 0o600, oct(pending.stat().st_mode)
    assert len(pending.read_text().splitlines()) == 1
    assert run(site, db, "-q").returncode == 0  # the holder moves it into `runs`
    assert not pending.exists()
    assert query(db, "SELECT count(*) FROM runs WHERE exit_code = 4") == [(1,)]

@contextlib.contextmanager
def _held_without_details(db: Path):
    """The run lock held by this process as a run holds it in its first instant: taken, its details not written yet."""
    from filelock import FileLock

    with FileLock(f"{db}.lock", timeout=0):
        yield


def test_a_library_run_refused_by_a_run_of_its_own_process_is_told_so(site, db):
    """A notebook's run() refused while another call in the same kernel (a thread, a cell still running) held the lock
    was told "locked by another run: pid N ... (if that process is gone, its lock went with it)" of its own pid."""
    from chorus_batch import RunSettings
    from chorus_batch import run as library_run
    from chorus_batch.errors import ManifestLocked
    from chorus_batch.store.lock import manifest_lock

    write(site, "OMOP/a.csv")
    with manifest_lock(db, []), pytest.raises(ManifestLocked) as refused:
        library_run(RunSettings(site=site, db=db, workers=1, validate=False))
    assert "locked by another run in this same process: pid " in str(refused.value), refused.value
    assert "if that process is gone" not in refused.value.fix and "once that run has returned" in refused.value.fix
    assert not db.exists()  # (refused before the manifest was made)


def test_details_left_by_a_killed_holder_are_not_named_as_the_holder(site, db):
    """A run killed with SIGKILL leaves its details beside the lock; a run refused by the next holder before that one
    had written its own was told "locked by pid N ... (if that process is gone, its lock went with it)" of the killed
    pid, which `ps` shows gone."""
    write(site, "OMOP/a.csv", b"x" * 1000)
    assert run(site, db, "-q").returncode == 0
    killed = paused("run", "--site", str(site), "--db", str(db), "--rehash", at="hashing")
    killed.kill()
    killed.communicate(timeout=60)
    assert f'"pid": {killed.pid}' in Path(f"{db}.lock.json").read_text()  # (SIGKILL: nothing removed them)
    with _held_without_details(db):
        out = run(site, db)
    assert out.returncode == 4, out.stderr
    assert f"pid {killed.pid} on host" not in out.stderr, out.stderr
    assert (f"locked by another run: a process that has not written its details yet (those there, of pid {killed.pid}"
            in out.stderr and "were left by a holder that is gone" in out.stderr), out.stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the kernel's count of a process's start (Linux)")
def test_a_live_holder_is_named_after_the_clock_was_stepped_forward(site, db):
    """A clock stepped forward while a run went on (NTP correcting a VM's clock) made the live holder look started
    after its details: the run cron started next was told "left by a holder that is gone" of the run it waited on."""
    write(site, "OMOP/a.csv", b"x" * 1000)
    assert run(site, db, "-q").returncode == 0
    holder = paused("run", "--site", str(site), "--db", str(db), "--rehash", at="hashing")
    try:
        details = Path(f"{db}.lock.json")
        info = json.loads(details.read_text())
        info["started_at"] = "2026-01-01T00:00:00Z"  # (its start by the clock now: long after this)
        details.write_text(json.dumps(info))
        out = run(site, db)
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    assert out.returncode == 4, out.stderr
    assert f"locked by another run: pid {holder.pid} on host" in out.stderr, out.stderr
    assert "gone" not in out.stderr.split("fix:")[0], out.stderr
    # and once it is gone indeed (killed), its details are said to be left behind, as before
    with _held_without_details(db):
        out = run(site, db)
    assert out.returncode == 4 and "were left by a holder that is gone" in out.stderr, out.stderr


def test_a_holder_on_another_host_is_said_to_be_looked_for_there(site, db):
    """A manifest on a share two hosts mount, locked by a run of the other host: the refusal said "if that process
    is gone, its lock went with it", which `ps` on this host cannot tell, and a crashed host's lock does not go at
    once (the file server keeps it for that host a while)."""
    write(site, "OMOP/a.csv")
    assert run(site, db, "-q").returncode == 0
    with _held_without_details(db):
        Path(f"{db}.lock.json").write_text(json.dumps({"pid": 4242, "host": "node07", "user": "svc",
                                                       "started_at": "2026-12-05T02:00:00Z", "command": "run"}))
        out = run(site, db)
    assert out.returncode == 4, out.stderr
    assert "locked by another run: pid 4242 on host node07 (user svc)" in out.stderr, out.stderr
    assert "look for pid 4242 on host node07" in out.stderr and "its lock went with it" not in out.stderr, out.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a named pipe")
def test_a_named_pipe_in_place_of_the_holders_details_does_not_hold_the_refused_run(site, db):
    """The refused run read the details beside the lock as a file: a named pipe there held it (cron's next night's
    run too) until someone wrote into it, where it is to do nothing and exit 4 at once."""
    write(site, "OMOP/a.csv")
    assert run(site, db, "-q").returncode == 0
    with _held_without_details(db):
        os.mkfifo(f"{db}.lock.json")
        out = cli("run", "--site", str(site), "--db", str(db), timeout=30)
    assert out.returncode == 4, out.stderr
    assert "locked by another run: an unknown process (its details, manifest.sqlite.lock.json, cannot be read: " \
           "not an ordinary file)" in out.stderr, out.stderr


@pytest.mark.parametrize("details, said", [(b"", "it has not written its details yet"),
                                           (b'{"pid": 12', "are cut short or damaged"),
                                           (b"\xff\xfe{\x00", "are cut short or damaged"),
                                           (b"[]", "are cut short or damaged")])
def test_holder_details_that_cannot_be_read_are_said_to_be_so(site, db, details, said):
    """Details cut short (a holder whose disk filled as it wrote them), or not UTF-8, were said "not written yet"."""
    write(site, "OMOP/a.csv")
    assert run(site, db, "-q").returncode == 0
    with _held_without_details(db):
        Path(f"{db}.lock.json").write_bytes(details)
        out = run(site, db)
    assert out.returncode == 4, out.stderr
    assert "locked by another run: an unknown process (" in out.stderr and said in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="gives the lock file to another user")
def test_a_lock_file_of_another_user_is_said_to_be_theirs(db):
    from chorus_batch.store.lock import _cannot_lock

    lock = Path(f"{db}.lock")
    lock.touch(mode=0o600)
    os.chown(lock, 54321, 54321)
    said = str(_cannot_lock(db, lock, PermissionError(13, "Permission denied")))  # what a non-root user meets
    assert "belongs to another user" in said and "uid 54321" in said and "remove the lock file" in said
    assert "folder this user can write" not in said
    # a uid with no name here (a share's file made on another host) is named by its number: it said "run as uid;"
    assert "run as uid 54321;" in said, said


def test_a_read_only_manifest_says_what_to_do(site, db, tmp_path):
    write(site, "OMOP/a.csv")
    assert run(site, db, "-q").returncode == 0
    write(site, "OMOP/b.csv")
    files = [p for p in db.parent.iterdir() if p.name.startswith(db.name) and not p.name.endswith(".lock")]
    for path in files:
        os.chmod(path, 0o400)
    try:
        out = run_without_override(["run", "--no-validate", "--site", str(site), "--db", str(db)])
    finally:
        for path in files:
            os.chmod(path, 0o600)
    assert out.returncode == 3 and "cannot be written" in out.stderr and "writable" in out.stderr, out.stderr
    assert "internal error" not in out.stderr
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o500)
    try:
        out = run_without_override(["run", "--no-validate", "--site", str(site), "--db", str(folder / "m.sqlite")])
    finally:
        os.chmod(folder, 0o700)
    # (a new manifest in a folder this user cannot write: a path to fix, exit 2, as every output's there)
    assert out.returncode == 2 and "fix:" in out.stderr and "internal error" not in out.stderr, out.stderr


def test_a_secret_in_the_site_url_is_never_stored(tmp_path):
    db = tmp_path / "m.sqlite"
    out = cli("run", "--no-validate", "--site", "memory://nosuchsite/x?sv=2024&sig=SECRETSIG", "--db", str(db))
    assert "SECRETSIG" not in out.stderr + out.stdout
    if db.exists():
        con = sqlite3.connect(db)
        try:
            dump = "\n".join(con.iterdump())
        finally:
            con.close()
        assert "SECRETSIG" not in dump


# ----------------------------------------------------------------------------- odd file systems


def test_a_folder_that_can_be_read_but_not_searched_keeps_its_rows(site, db):
    many(site, 4)
    args = ["run", "--no-validate", "--site", str(site), "--db", str(db), "--json", "-q"]
    assert run_without_override(args).returncode == 0
    folder = site / "000001" / "Waveforms" / "Telemetry" / "9001"
    os.chmod(folder, 0o644)  # names can be read, entries cannot be stat'ed
    try:
        out = run_without_override(args)
    finally:
        os.chmod(folder, 0o755)
    assert out.returncode == ExitCode.FINDINGS, out.stderr
    assert json.loads(out.stdout)["counts"]["removed"] == 0
    assert set(current_rows(db)) == set(tree_md5(site))


def test_an_mtime_beyond_2262_is_recorded_not_fatal_read_every_run_and_a_future_mtime_is_not_rehashed(site, db):
    far = write(site, "OMOP/far.csv", b"far")
    near = write(site, "OMOP/future.csv", b"future")
    os.utime(near, ns=(time.time_ns(), time.time_ns() + 10 * 365 * 86400 * 10**9))  # ten years ahead
    try:
        os.utime(far, ns=(time.time_ns(), 2**63 + 10**18))  # year ~2300: beyond int64 nanoseconds
    except OverflowError:
        pytest.skip("this platform cannot set such an mtime")
    first = cli("run", "--no-validate", "--verify-sample", "0", "--site", str(site), "--db", str(db), "--json", "-q")
    assert first.returncode == ExitCode.FINDINGS, first.stderr
    summary = json.loads(first.stdout)
    assert summary["errors"]["by_kind"] == {"mtime_out_of_range": 1} and summary["counts"]["added"] == 2
    again = json.loads(cli("run", "--no-validate", "--verify-sample", "0", "--site", str(site), "--db", str(db),
                           "--json", "-q").stdout)
    assert again["files_hashed"] == 1  # far.csv: its clamped mtime cannot show a write; future.csv's can
    far.write_bytes(b"FAR")  # the same size, and another mtime beyond 2262: still seen
    os.utime(far, ns=(time.time_ns(), 2**63 + 2 * 10**18))
    changed = json.loads(cli("run", "--no-validate", "--verify-sample", "0", "--site", str(site), "--db", str(db),
                             "--json", "-q").stdout)
    assert changed["counts"]["replaced"] == 1 and current_rows(db)["OMOP/far.csv"] == hashlib.md5(b"FAR").hexdigest()


def test_two_empty_files_are_not_a_rename_across_persons(site, db):
    write(site, "000123/Waveforms/Telemetry/1/1n.csv", b"")
    write(site, "000123/Waveforms/Telemetry/1/1.dat", b"data")
    assert run(site, db, "-q").returncode == 0
    (site / "000123/Waveforms/Telemetry/1/1n.csv").unlink()
    write(site, "000999/Waveforms/Telemetry/2/2n.csv", b"")
    out = json.loads(run(site, db, "--json", "-q").stdout)
    assert out["counts"]["renamed"] == 0 and out["counts"]["added"] == 1 and out["counts"]["removed"] == 1


def test_a_run_where_only_the_problems_changed_commits_no_version(site, db):
    write(site, "OMOP/a.csv", b"a")
    assert run(site, db, "-q").returncode == 0
    os.symlink(site / "OMOP" / "a.csv", site / "OMOP" / "link.csv")  # a new problem, no new file
    out = json.loads(run(site, db, "--json", "-q").stdout)
    assert out["version"] is None and out["errors"]["by_kind"] == {"symlink": 1}
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]
    assert query(db, "SELECT kind FROM run_errors") == [("symlink",)]


# ----------------------------------------------------------------------------- rolling re-verification


def test_rolling_reverification_reads_the_oldest_first_and_finds_silent_changes(site, db):
    for i in range(10):
        write(site, f"OMOP/t{i}.csv", f"row {i}\n".encode())
    past = time.time() - 100
    for path in (site / "OMOP").iterdir():
        os.utime(path, (past, past))
    args = ["--verify-sample", "20", "--json", "-q"]
    assert run(site, db, *args).returncode == 0
    seen: list[int] = []
    for _ in range(5):  # 20% a run: every file re-read once in five runs, the longest unverified first
        out = json.loads(run(site, db, *args).stdout)
        seen.append(out["verification"]["files_reverified"])
        assert out["version"] is None and out["files_hashed"] == 2
    assert seen == [2] * 5
    assert query(db, "SELECT count(DISTINCT verified_ns) FROM source_files") == [(5,)]  # each file re-read in one of 5 slices
    assert out["verification"]["share_read_in_30_days"] == 1.0
    # Bytes change behind an unchanged size and mtime: the next slices find it.
    target = site / "OMOP" / "t3.csv"
    st = target.stat()
    target.write_bytes(b"row X\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    found = None
    for _ in range(5):
        out = json.loads(run(site, db, *args).stdout)
        if out["version"]:
            found = out
            break
    assert found is not None and found["counts"]["replaced"] == 1
    assert found["errors"]["by_kind"] == {"silent_change": 1} and found["exit_code"] == 1
    assert current_rows(db) == tree_md5(site)
    checked = cli("validate", "--db", str(db), "--json", cwd=db.parent)
    assert checked.returncode == 1, checked.stderr
    assert ("error", "file.silent_change", "OMOP/t3.csv") in {
        (f["severity"], f["rule"], f["srcfile"]) for f in json.loads(checked.stdout)["findings"]}


def test_the_reverification_byte_cap_holds(site, db):
    for i in range(4):
        write(site, f"OMOP/big{i}.csv", bytes(1000))
    past = time.time() - 100
    for path in (site / "OMOP").iterdir():
        os.utime(path, (past, past))
    assert run(site, db, "-q").returncode == 0
    out = json.loads(run(site, db, "--verify-sample", "100", "--verify-max-bytes", "2500", "--json", "-q").stdout)
    assert out["verification"]["files_reverified"] == 2 and out["verification"]["bytes_reverified"] == 2000


@pytest.mark.parametrize("home", [None, ""])
def test_a_path_under_home_where_there_is_no_home_is_a_usage_error(home):
    """(home "": HOME set empty, as `HOME= chorus-batch ...` or a unit file's `Environment=HOME=` leave it, was read as
    the folder '/': `db = "~/chorus/m.sqlite"` made a manifest in /chorus/, the Azure cache went to /.cache; an empty
    HOME is unset, as an empty CHORUS_BATCH_* variable is.) Under cron in a container there may be no HOME and no passwd entry for the user: `root = "~/site"` in
    chorus.toml ended in "internal error: RuntimeError: Could not determine home directory" (Path.expanduser), a
    Slurm script took '~/m.sqlite' as a folder '~' under the working directory, and the cache of a manifest in Azure
    had no folder (Path.home()). Each now says '~' names no folder here, and what to give instead."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="chorus-cron-") as name:  # (pytest's tmp_path is root's only)
        folder = Path(name)
        folder.chmod(0o777)
        config = folder / "chorus.toml"
        config.write_text(f'[site]\nroot = "~/site"\n[manifest]\ndb = "{folder / "m.sqlite"}"\n')
        config.chmod(0o644)
        _homeless_says(folder, config, home)


def _homeless_says(folder: Path, config: Path, home: str | None = None) -> None:
    homeless = ["env", "-i", "PATH=/usr/bin:/bin", *([] if home is None else [f"HOME={home}"]), "setpriv", "--reuid=54321",
                "--regid=54321", "--clear-groups",
                sys.executable]
    out = subprocess.run([*homeless, "-m", "chorus_batch", "run", "--config", str(config)], cwd=folder,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == ExitCode.USAGE, out.stderr
    assert "[site] root ~/site: '~' names no folder here: " + ("HOME is empty" if home == "" else "there is no HOME") in out.stderr, out.stderr
    assert "internal error" not in out.stderr and "Traceback" not in out.stderr
    code = ("import sys\nfrom chorus_batch.errors import UsageError\nfrom chorus_batch.store.remote import cache_base\n"
            "from chorus_batch.slurm import _absolute\n"
            "for call in (cache_base, lambda: _absolute('~/m.sqlite')):\n"
            "    try:\n        print('took', call())\n    except UsageError as exc:\n        print(exc.fix)\n")
    said = subprocess.run([*homeless, "-c", code], cwd=folder, capture_output=True, text=True, timeout=60)
    assert said.stdout.splitlines() == ["set CHORUS_BATCH_CACHE_DIR to a folder of this user's (a full path)",
                                        "give the full path"], said.stdout + said.stderr


def test_log_lines_carry_their_utc_offset(tmp_path):
    """A cron log's lines said local time without an offset ("2026-12-04T12:05:00") beside version labels in UTC: on a
    node in another zone (or across a DST change) the two could not be matched. Each line now carries its offset."""
    from datetime import datetime, timezone

    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    done = cli("run", "--no-validate", "-v", "--site", str(site), "--db", str(tmp_path / "m.sqlite"),
               env={"TZ": "America/New_York"})
    assert done.returncode == 0, done.stderr
    stamps = [line.split(" chorus-batch: ")[0] for line in done.stderr.splitlines() if " chorus-batch: " in line]
    assert stamps, done.stderr
    for stamp in stamps:
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z")
        assert when.utcoffset() is not None and when.utcoffset().total_seconds() in (-5 * 3600, -4 * 3600), stamp
        assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 300, stamp


def test_the_locale_changes_nothing_a_run_records_or_prints(tmp_path):
    """Under LANG=C with Python's UTF-8 coercion off (cron, a minimal container), a valid UTF-8 name is the same
    file, not an undecodable one recorded as removed; and output the terminal's encoding cannot hold is escaped."""
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "000001/Metadata/ünïcödé ☃.txt", b"x")
    db = str(tmp_path / "m.sqlite")
    assert cli("run", "--no-validate", "--site", str(site), "--db", db).returncode in (0, 1)
    before = current_rows(db)
    c_locale = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    again = cli("run", "--no-validate", "--site", str(site), "--db", db, env=c_locale)
    assert again.returncode in (0, 1) and "no changes since version" in again.stdout, again.stdout + again.stderr
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions")[0][0] == 1
    assert "non_utf8_name" not in str(query(db, "SELECT kind FROM run_errors"))
    listed = cli("files", "--db", db, env={**c_locale, "PYTHONIOENCODING": "ascii"})
    assert listed.returncode == 0 and "\\u2603" in listed.stdout, listed.stderr
    # --json stays JSON: JSON's own escapes, not the stream's (`\xe9`: "Invalid \escape" to every JSON reader)
    for command in (("files", "--json"), ("changes", "--json"), ("history", "--json", "000001/Metadata/ünïcödé ☃.txt")):
        listed = cli(*command, "--db", db, env={**c_locale, "PYTHONIOENCODING": "ascii"})
        assert listed.returncode == 0, listed.stderr
        assert "000001/Metadata/ünïcödé ☃.txt" in [row["srcfile"] for row in json.loads(listed.stdout)], command


# cron's environment (no HOME, no LANG): the summary stayed in the buffer until the last flush, whose failure
# named no version (and exit 3 says "nothing was committed" unless a version is named)
@pytest.mark.parametrize("env", [None, {"PATH": "/usr/bin:/bin"}], ids=["shell", "cron"])
def test_a_run_whose_summary_cannot_be_written_names_the_version_it_committed(tmp_path, env):
    import subprocess
    import sys

    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site), "--db",
                              str(db)], stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert out.returncode == 3 and "could not write the output" in out.stderr, out.stderr
    assert f"version {label} was committed" in out.stderr and "nothing was committed" not in out.stderr
    # the command it names shows the version from wherever the log is read (it was a bare `chorus-batch changes`)
    import shlex

    shows = shlex.split(out.stderr.split("only this summary was not written (`", 1)[1].split("`", 1)[0])
    assert shows[:2] == ["chorus-batch", "changes"], out.stderr
    (tmp_path / "elsewhere").mkdir()
    done = cli(*shows[1:], cwd=tmp_path / "elsewhere")
    assert done.returncode == 0 and "OMOP/person.csv" in done.stdout, done.stderr


def test_a_run_with_nothing_to_commit_whose_summary_cannot_be_written_says_nothing_was_committed(tmp_path):
    """cron's output on a full disk, a night with no changes: exit 3 said "what the command did before stands", which
    does not answer "did it commit?"; it says nothing was committed and which version stays the latest."""
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    assert cli("run", "--no-validate", "--site", str(site), "--db", str(db), "-q").returncode == 0
    (label,) = query(db, "SELECT label FROM versions")[0]
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site), "--db",
                              str(db)], stdout=full, stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 3 and "could not write the output" in out.stderr, out.stderr
    assert f"nothing was committed (no changes to commit); version {label} stays the latest" in out.stderr, out.stderr
    assert query(db, "SELECT count(*) FROM versions") == [(1,)]


@pytest.mark.parametrize("args, stdout_full, code", [
    (("--site", "/nonexistent-site"), False, ExitCode.USAGE),  # was 1: the error message's OSError ended Python
    ((), True, ExitCode.FAILED),  # the summary and the message saying so both lost: was 1, "success with findings"
    ((), False, ExitCode.OK),  # the progress lines lost: the run is what it was
])
def test_a_standard_error_that_cannot_be_written_keeps_the_exit_code(tmp_path, args, stdout_full, code):
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = tmp_path / "m.sqlite"
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site),
                              "--db", str(db), *args], stdout=full if stdout_full else subprocess.PIPE, stderr=full,
                             text=True)
    assert out.returncode == code
    if code == ExitCode.USAGE:
        assert not db.exists()
    else:
        assert query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_a_current_folder_removed_under_the_shell_is_said_not_an_internal_error(tmp_path):
    """A cron line's `cd /srv/chorus && chorus-batch run ...` into a folder since removed (a deploy replaced it): a
    relative path was "internal error: FileNotFoundError: [Errno 2]", and its ./chorus.toml was silently not read."""
    write(tmp_path / "site", "OMOP/a.csv")
    here = tmp_path / "here"
    here.mkdir()
    out = subprocess.run(f"cd {here} && rmdir {here} && {sys.executable} -m chorus_batch run --no-validate --site "
                         f"{tmp_path / 'site'}", shell=True, capture_output=True, text=True)
    assert out.returncode == ExitCode.USAGE, out.stderr
    assert "the current folder no longer exists" in out.stderr and f"$PWD: {here}" in out.stderr, out.stderr
    assert "internal error" not in out.stderr and "cd to a folder that exists" in out.stderr


def test_a_signal_while_validate_checks_a_folder_in_a_temporary_manifest_says_nothing_was_kept(site, tmp_path):
    """`validate --site DIR` without --db commits to a temporary manifest that is removed: a signal after that
    commit must not say a version 'stays'."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    here = tmp_path / "here"
    here.mkdir()
    proc = paused("validate", "--site", str(site), at="validate", cwd=here)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "nothing was written (the folder was checked in a temporary manifest, now removed)" in err, err
    assert "stays" not in err and list(here.iterdir()) == []


def test_a_signal_to_validate_of_a_manifest_says_what_validate_did(site, db):
    """Commands other than run fell back to run's words on a signal ("nothing was committed; the manifest holds what
    it held before"): validate says its findings were not recorded, and every command has its own words."""
    from chorus_batch.cli import COMMANDS, NOT_COMMITTED

    write(site, "OMOP/person.csv", b"person_id\n1\n")
    assert run(site, db, "-q").returncode == 0
    proc = paused("validate", "--db", str(db), at="validate")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "no findings of this check were recorded" in err and "nothing was committed" not in err, err
    assert query(db, "SELECT count(*) FROM validations") == [(0,)]
    # run's own words are run's (pipeline.nothing_committed); testdata and unlock say theirs (testdata._left_behind;
    # unlock changes no manifest content, which the fallback says truly)
    assert set(COMMANDS) - set(NOT_COMMITTED) == {"run", "testdata", "unlock"}


def test_a_full_manifest_disk_is_said_to_be_full_and_the_previous_version_stays(site, small_disk):
    """SQLite says "disk I/O error" when its -shm cannot grow on a full file system: the message says the disk is
    full (not "check dmesg"), that nothing was committed, and the version before is whole once space is freed."""
    many(site, 20)
    db = small_disk / "m.sqlite"
    assert run(site, db).returncode == 0
    before = current_rows(db)
    write(site, "Metadata/new.txt", b"new")
    filler = fill(small_disk)
    out = run(site, db)
    assert out.returncode == 3, out.stderr
    assert "the disk is full" in out.stderr and "KiB free" in out.stderr and "dmesg" not in out.stderr, out.stderr
    assert out.stderr.count("nothing was committed") == 1, out.stderr
    filler.unlink()
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM versions") == [(1,)]
    assert query(db, "PRAGMA integrity_check") == [("ok",)]
    assert run(site, db).returncode == 0 and query(db, "SELECT count(*) FROM versions") == [(2,)]


def test_a_full_manifest_disk_says_what_stands_in_every_command_that_writes_it(site, small_disk):
    """`validate` and `registry` (and `upgrade`, when it had work) on a full disk said "the disk is full ... run again" and nothing of what
    stood (did the upgrade happen? were findings recorded? are the registry files in --out the new ones?): each now
    says it, as on a signal, and the manifest is as it was once space is freed."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = small_disk / "m.sqlite"
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    filler = fill(small_disk)
    # (a manifest at today's schema is read read-only on a full disk: `upgrade` has nothing to do, and says so)
    out = cli("upgrade", "--db", str(db))
    assert out.returncode == 0 and "nothing to do" in out.stdout, out.stderr
    # (and `registry`, which allocates no procedure id here, writes --out elsewhere from the manifest read so)
    assert cli("registry", "--db", str(db), "--out", str(small_disk.parent / "release")).returncode == 0
    said = {"validate": ([], "the disk is full", "no findings of this check were recorded"),
            "registry": (["--out", str(small_disk / "release")], "No space left on device",
                         "the registry files in --out are as they were")}
    for command, (extra, why, words) in said.items():
        out = cli(command, "--db", str(db), *extra)
        assert out.returncode == 3, (command, out.stderr)
        assert why in out.stderr and words in out.stderr, (command, out.stderr)
    filler.unlink()
    assert current_rows(db) == before and query(db, "SELECT count(*) FROM validations") == [(0,)]


def test_a_full_temporary_folder_is_said_as_that_folder_not_the_manifests_disk(site, db, small_disk, monkeypatch):
    """SQLite writes its sorts and index builds in $TMPDIR; a full one (a small tmpfs /tmp on a compute node) failed
    every run with "the disk is full ... free space on the manifest's file system", whose disk had gigabytes free.
    Now the message names SQLite's temporary folder, its free space and SQLITE_TMPDIR; the previous version stays."""
    for i in range(3000):
        write(site, f"{i:06d}/Waveforms/Telemetry/{9000 + i}/{9000 + i}.dat", f"signal {i}".encode())
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    for i in range(3000):  # a version of many changes: SQLite sorts them (a site's nightly churn)
        write(site, f"{i:06d}/Waveforms/Telemetry/{9000 + i}/{9000 + i}.dat", f"signal {i} changed".encode())
    write(site, "Metadata/new.txt", b"new")
    fill(small_disk)
    monkeypatch.delenv("SQLITE_TMPDIR", raising=False)
    env = {"TMPDIR": str(small_disk)}
    out = run(site, db, "-q", env=env)
    assert out.returncode == ExitCode.FAILED, out.stderr
    assert "the disk is full" in out.stderr and f"SQLite's temporary folder {small_disk}" in out.stderr, out.stderr
    assert "free space on the manifest's file system" not in out.stderr and "SQLITE_TMPDIR=" in out.stderr, out.stderr
    assert current_rows(db) == before
    env["SQLITE_TMPDIR"] = str(db.parent)  # what the message says to do
    assert run(site, db, "-q", env=env).returncode == 0 and len(current_rows(db)) == 3001


def test_a_write_larger_than_the_manifests_disk_names_that_disk_not_the_temporary_folder(site, small_disk, monkeypatch):
    """A version too large for the room left on the manifest's disk is rolled back, which frees more than "nearly
    full" there: the message named SQLite's temporary folder (gigabytes free) as where, and told to point
    SQLITE_TMPDIR at the full disk. It names the manifest's disk and its free space."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    db = small_disk / "m.sqlite"
    assert run(site, db, "-q").returncode == 0
    for i in range(6000):
        write(site, f"{i:06d}/Waveforms/Telemetry/{9000 + i}/{9000 + i}.dat", f"signal {i}".encode())
    monkeypatch.delenv("SQLITE_TMPDIR", raising=False)
    out = run(site, db, "-q", env={"TMPDIR": str(site.parent)})
    assert out.returncode == ExitCode.FAILED, out.stderr
    assert free_bytes(small_disk) >= NEARLY_FULL_BYTES  # (the case: the rolled-back write left room)
    assert f"where: {db}" in out.stderr and "the manifest's file system has" in out.stderr, out.stderr
    assert "SQLITE_TMPDIR=" not in out.stderr and "free space on the manifest's file system" in out.stderr, out.stderr
    assert "nothing was committed" in out.stderr and query(db, "SELECT count(*) FROM versions") == [(1,)]


def test_validate_site_with_a_full_temporary_folder_names_that_folder_not_a_manifest(site, small_disk, monkeypatch):
    """`validate --site DIR` (no --db) checks the folder in a temporary manifest in $TMPDIR; that folder full (a
    small tmpfs /tmp on a compute node, under cron) said "where: <tmp>/chorus-validate-xxxx/manifest.sqlite; fix: free
    space on the manifest's file system": a manifest the user never gave. It names the temporary folder, TMPDIR and
    --db; nothing is left in it."""
    for i in range(200):
        write(site, f"{i:06d}/Waveforms/Telemetry/{9000 + i}/{9000 + i}.dat", f"signal {i}".encode())
    filler = fill(small_disk)
    os.truncate(filler, filler.stat().st_size - 48 * 1024)  # room for Python's check that TMPDIR is writable, no more
    monkeypatch.delenv("SQLITE_TMPDIR", raising=False)
    out = cli("validate", "--site", str(site), env={"TMPDIR": str(small_disk)})
    assert out.returncode == ExitCode.FAILED, out.stderr
    assert "the disk is full" in out.stderr and f"where: {small_disk} (the temporary folder, $TMPDIR" in out.stderr, \
        out.stderr
    assert "free space on the manifest's file system" not in out.stderr and "point TMPDIR at a folder with room" in \
        out.stderr and "--db NEW.sqlite" in out.stderr, out.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_first_version_too_big_for_its_disk_says_so_in_sqlites_words(site, small_disk):
    """A first version of 6000 files on a 2 MiB file system failed in the bulk (ADBC) write, and the message was
    'the disk is full: INTERNAL: failed to execute: database or disk is full' with a 'query was: INSERT ...' line:
    an 'internal' error and SQL. It now gives SQLite's words only."""
    for i in range(6000):
        write(site, f"{i % 300:06d}/Waveforms/Telemetry/{i}/{i}.dat", str(i).encode())
    out = run(site, small_disk / "m.sqlite")
    assert out.returncode == 3, out.stderr
    assert "the disk is full: database or disk is full" in out.stderr, out.stderr
    assert "INTERNAL" not in out.stderr and "query was" not in out.stderr and "INSERT" not in out.stderr, out.stderr


@pytest.mark.parametrize("workers", ["1", "2"])  # walked here; by worker processes, a folder each
def test_followed_links_are_walked_once_and_loops_and_broken_links_are_said_once(site, db, tmp_path, workers):
    """--follow-symlinks: a link to a folder above it walked that folder once more before the loop was seen (and a
    link to the root the whole site again), a dangling link was "file disappeared", a link to itself "cannot stat".
    Now a link outside the site is followed once, a loop or a link into the site is one recorded error, and a
    broken link says so."""
    write(site, "000001/Metadata/a.txt", b"a")
    write(site, "000002/Metadata/b.txt", b"b")
    outside = tmp_path / "outside"
    write(outside, "ext/e.txt", b"e")
    (site / "000001/Metadata/up").symlink_to("..", target_is_directory=True)  # the person folder above it
    (site / "000002/root").symlink_to(site, target_is_directory=True)
    (site / "000002/Images").symlink_to(outside / "ext", target_is_directory=True)  # data kept on another disk
    (site / "EXT").symlink_to(outside / "ext", target_is_directory=True)  # at the top: walked by a worker
    (outside / "ext/back").symlink_to(outside, target_is_directory=True)  # a loop outside the site
    (site / "000002/alias").symlink_to(site / "000001/Metadata", target_is_directory=True)
    (site / "000002/dangling").symlink_to("nowhere")
    (site / "000002/self").symlink_to("self")
    out = run(site, db, "--follow-symlinks", "--workers", workers)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    # (two links to one outside folder: its files once, under the first path, 000002/Images; EXT is said)
    assert query(db, "SELECT srcfile FROM source_files ORDER BY srcfile") == [
        ("000001/Metadata/a.txt",), ("000002/Images/e.txt",), ("000002/Metadata/b.txt",)]
    said = dict(query(db, "SELECT srcfile, kind || ': ' || message FROM scan_errors WHERE kind != 'unparseable'"))
    assert said == {
        "000001/Metadata/up": f"symlink_loop: link to a folder that contains the link ({site}/000001): a loop, not followed",
        "000002/root": f"symlink_loop: link to the site root ({site}): a loop, not followed",
        "000002/Images/back": f"symlink_loop: link to a folder that contains the link ({outside}): a loop, not followed",
        "EXT/back": f"symlink_loop: link to a folder that contains the link ({outside}): a loop, not followed",
        "000002/alias": "symlink_inside: link to 000001/Metadata/, a folder of the site: not followed (its files are "
                        "listed under their own path)",
        "000002/dangling": "broken_symlink: symbolic link to nowhere, which does not exist (a file system not mounted?); "
                           "what was recorded under it is kept: mount it, or remove the link to record its files as "
                           "removed",
        "000002/self": "symlink_loop: symbolic link to self: a loop of links that never reaches a file; skipped",
        "EXT": f"symlink_duplicate: 1 file here is also reached through 000002/Images (links to one place outside "
               f"the site, {outside}/ext): listed once, there; remove one of the links",
    }, said


@pytest.mark.parametrize("workers", ["1", "2"])  # walked here; by worker processes, a folder each
def test_a_bind_mount_of_the_site_or_a_folder_above_inside_it_is_a_loop_not_walked(site, db, workers):
    """A bind mount of the site root inside the site (`mount --bind /data/site /data/site/Metadata/bind`, an HPC
    admin's project space) was walked like any folder: the whole site listed twice, its files recorded (and
    uploaded) under a second path. A symbolic link there was a loop; a mount is said the same way now."""
    write(site, "000001/Metadata/a.txt", b"a")
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    (site / "Metadata/bi nd").mkdir(parents=True)  # (a space: written \040 in the table of mounts)
    (site / "000001/Metadata/again").mkdir()
    mounted = []
    try:
        for source, point in ((site, site / "Metadata/bi nd"), (site / "000001", site / "000001/Metadata/again")):
            done = subprocess.run(["mount", "--bind", str(source), str(point)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
            mounted.append(point)
        out = run(site, db, "--workers", workers)
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert query(db, "SELECT srcfile FROM source_files ORDER BY srcfile") == [("000001/Metadata/a.txt",),
                                                                              ("OMOP/person.csv",)]
    said = dict(query(db, "SELECT srcfile, kind || ': ' || message FROM scan_errors WHERE kind = 'mount_loop'"))
    assert said == {
        "Metadata/bi nd": f"mount_loop: a mount of the site root ({site}) inside itself: a loop, not walked (its files "
                          "are listed under their own path); unmount it, or mount it outside the site",
        "000001/Metadata/again": f"mount_loop: a mount of the folder 000001/ that holds it ({site}/000001) inside "
                                 "itself: a loop, not walked (its files are listed under their own path); unmount it, "
                                 "or mount it outside the site",
    }, said


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_bind_mount_of_another_folder_of_the_site_inside_it_is_not_walked_twice(site, db, workers):
    """`mount --bind /data/site/OMOP /data/site/Metadata/omop` (no loop: not the site, not a folder above) was walked
    like any folder: every OMOP table recorded (and uploaded) a second time under Metadata/omop, with no word. Its
    files are listed once, under their own path, as a symbolic link to a folder of the site is (`symlink_inside`)."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    point = site / "Metadata/omop copy"
    point.mkdir(parents=True)
    done = subprocess.run(["mount", "--bind", str(site / "OMOP"), str(point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        out = run(site, db, "--workers", workers)
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert query(db, "SELECT srcfile FROM source_files ORDER BY srcfile") == [("OMOP/person.csv",)]
    assert query(db, "SELECT srcfile, kind, message FROM scan_errors") == [(
        "Metadata/omop copy", "mount_inside", "a mount of OMOP/, a folder of the site: not walked (its files are "
        "listed under their own path, not twice); unmount it, or mount it outside the site")]


@pytest.mark.parametrize("workers", ["1", "2"])  # hashed in a thread; in a worker process
def test_the_progress_line_moves_while_one_huge_sparse_file_is_read(site, db, workers):
    """A huge sparse file (`truncate -s 200G`) is read whole: its MD5 is of its bytes, holes read as zeros. The
    progress line stood at 0 B until it was done (bytes were counted per chunk of files); it moves within the file,
    never past the total, and the MD5 recorded is right."""
    total = 256 << 20  # (1 GiB took 5 s a case to hash; 256 MiB, a line every 0.05 s, still shows it move)
    with open(site / "big.dat", "wb") as f:
        f.truncate(total)  # sparse: no blocks on disk
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    out = run(site, db, "--workers", workers, env={"CHORUS_BATCH_PROGRESS_S": "0.05"}, timeout=300)
    assert out.returncode == 1, out.stderr  # (big.dat at the root: an unparseable path)
    seen = []
    for line in out.stderr.splitlines():
        if "hashing: " in line and "elapsed" in line:
            size = line.split(", ")[1].split("/")[0].replace(",", "") if ", " in line else ""  # (1,008.0 MiB)
            if size.endswith("MiB"):
                seen.append(float(size.removesuffix(" MiB")))
            elif size.endswith("GiB"):
                seen.append(1024 * float(size.removesuffix(" GiB")))
    moving = [mib for mib in seen if 0 < mib < 256]
    assert len(set(moving)) >= 2, out.stderr  # bytes seen before the file was done, at least two different counts
    assert seen == sorted(seen) and max(seen) <= 256 + 1, seen
    zeros = "1f5039e50bd66b290c56684d8550c6c2"  # hashlib.md5(bytes(256 << 20)): 256 MiB of zeros
    assert query(db, "SELECT md5, size FROM source_files WHERE srcfile = 'big.dat'") == [(zeros, total)]


def test_a_signal_whose_bookkeeping_fails_is_still_said_as_the_signal(site, small_disk):
    """SIGTERM (Slurm ending a job) while the manifest's disk is full: the run's log row cannot be written. The run
    said "the disk is full", exit 3 (the bookkeeping's error in place of the first); it says the signal, exits 143,
    and mentions the run log it could not write. The previous version stays."""
    db = small_disk / "m.sqlite"
    many(site, 20)
    assert run(site, db, "-q").returncode == 0
    before = current_rows(db)
    write(site, "OMOP/new.csv", b"new")
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site),
                             "--db", str(db)], env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "hashing"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    while "test pause at hashing" not in (line := proc.stderr.readline()):
        assert line or proc.poll() is None, "the run never reached the hashing pause"
    filler = fill(small_disk)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "nothing was committed" in err, err
    assert "could not be recorded in the run log" in err and "the disk is full" in err, err
    assert "error:" not in err and "Traceback" not in err, err
    filler.unlink()
    assert current_rows(db) == before


@pytest.mark.parametrize("command", [["run", "--no-validate"], ["status"]])
def test_a_reader_that_left_keeps_the_exit_code_of_the_command(site, db, command):
    """`chorus-batch run | head` in cron: the reader leaving early ends the output quietly, but a run with findings
    still exits 1 (it exited 0, a success the log never had)."""
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    write(site, "stray.txt", b"x")  # a file at the root: unparseable, exit 1
    read, write_end = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", *command, "--site", str(site), "--db", str(db)],
                             stdout=write_end, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert out.returncode == 1 and "error" not in out.stderr.lower(), out.stderr


_WRAPPED_SIGNAL = """
import os, signal, sys
import duckdb, pyarrow as pa
from chorus_batch import cli

def batches():
    yield pa.record_batch({"x": [1]})
    os.kill(os.getpid(), signal.%s)  # the handler runs here, inside DuckDB's scan: DuckDB wraps what it raises
    yield pa.record_batch({"x": [2]})

def diff_like(args, argv):  # a command whose DuckDB query reads Python objects, as the diff and the review do
    reader = pa.RecordBatchReader.from_batches(pa.schema({"x": pa.int64()}), batches())
    duckdb.connect().sql("SELECT sum(x) FROM reader").fetchall()
    return 0

cli.COMMANDS["files"] = diff_like
sys.exit(cli.main(["files", "--db", sys.argv[1]]))
"""


@pytest.mark.parametrize("name, code, word", [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted"),
                                              ("SIGHUP", 129, "hung up (SIGHUP)")])
def test_a_signal_that_duckdb_wraps_in_its_own_error_is_said_as_the_signal(db, name, code, word):
    """SIGTERM at random times found `internal error: InvalidInputException: ... counting the rows of the object
    registered as 'current_files' failed: Stopped: 15` (exit 3): the signal's exception raised while DuckDB called
    back into Python comes back as DuckDB's error. It is the signal: its exit code and message."""
    out = subprocess.run([sys.executable, "-c", _WRAPPED_SIGNAL % name, str(db)], capture_output=True, text=True)
    assert out.returncode == code, out.stderr
    assert f"chorus-batch: {word}" in out.stderr and "internal error" not in out.stderr, out.stderr


_SIGNAL_IN_DUCKDB_IMPORT = """
import os, signal, sys
from chorus_batch import cli
from chorus_batch.diff import duckdb_session
from chorus_batch.errors import Stopped

cli._stop_on_signals()
state = []

def hook(event, args):  # SIGTERM at the moment DuckDB's native module creates its types (nanobind)
    if event == "import" and args[0] == "_duckdb" and not state:
        state.append("loading")
    elif state == ["loading"] and event == "object.__setattr__":
        state.append("sent")
        os.kill(os.getpid(), signal.SIGTERM)

sys.addaudithook(hook)
try:
    with duckdb_session() as con:
        pass
except Stopped as exc:
    print("stopped", "duckdb" in sys.modules, state)
    sys.exit(exc.exit_code)
"""


def test_a_signal_while_duckdb_loads_stops_the_run_not_the_interpreter():
    """SIGTERM at random times aborted a run ("Critical nanobind error", SIGABRT: no message, the `runs` row left
    unfinished) when it landed in DuckDB's module initialisation, which the diff imports on first use: the stop
    signals are held during that import and acted on after it."""
    out = subprocess.run([sys.executable, "-c", _SIGNAL_IN_DUCKDB_IMPORT], capture_output=True, text=True)
    assert out.returncode == 143, out.stderr[-2000:]
    assert out.stdout.split() == ["stopped", "True", "['loading',", "'sent']"], out.stdout
    assert "Critical nanobind error" not in out.stderr


def test_a_signal_held_while_duckdb_loads_is_not_lost_without_handlers():
    """The library without the command line's handlers (a notebook, a script): SIGTERM held during the import still
    ends the process as it would have, once the import is done."""
    code = ("import os, signal\nfrom chorus_batch.processes import signals_deferred\nwith signals_deferred():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    print('held', flush=True)\nprint('not reached')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == -signal.SIGTERM and out.stdout == "held\n", (out.returncode, out.stdout, out.stderr)


def test_sqlites_own_disk_full_is_said_once_with_what_was_committed_left_to_the_command(tmp_path):
    """SQLite's "database or disk is full" said "nothing was committed" itself, and the command said it again."""
    import sqlite3

    from chorus_batch.store import Manifest

    said = str(Manifest(tmp_path / "m.sqlite").failure(sqlite3.OperationalError("database or disk is full")))
    assert "the disk is full" in said and "committed" not in said, said


def test_a_site_given_through_a_symlink_is_the_same_root_and_its_files_are_not_hashed_again(site, db, tmp_path):
    """`run --site /data/link-to-site` after `run --site /data/site` recorded a second root for the same folder,
    moved every current row to it and hashed every file again (and back the next night the other way). Now a
    local root is matched by the folder it is on disk: one root, its history goes on, nothing hashed again."""
    many(site, 5)
    old = time.time_ns() - 3600 * 10**9  # written an hour ago: not racily clean, not hashed again for that
    for path in site.rglob("*.dat"):
        os.utime(path, ns=(old, old))
    link = tmp_path / "link-to-site"
    link.symlink_to(site, target_is_directory=True)

    def nightly(root: Path) -> dict:
        out = cli("run", "--verify-sample", "0", "--site", str(root), "--db", str(db), "--json", "-q")
        # validation reopens the files through the root it matched: the same findings (this tiny site has some)
        assert out.returncode == ExitCode.FINDINGS and "Traceback" not in out.stderr, out.stderr
        summary = json.loads(out.stdout)
        assert summary["errors"]["total"] == 0, summary["errors"]
        return summary

    assert nightly(site)["counts"]["added"] == 5
    for root in (link, site, link):
        again = nightly(root)
        assert again["version"] is None and again["files_hashed"] == 0, again
    assert query(db, "SELECT root_id, location FROM roots") == [(1, str(site))]
    assert query(db, "SELECT DISTINCT root_id FROM source_files") == [(1,)]
    moved = tmp_path / "moved"  # the site moved and the link retargeted: still the root recorded under that name
    write(moved, "000000/Waveforms/Telemetry/9000/9000.dat", b"signal 0")
    link.unlink()
    link.symlink_to(moved, target_is_directory=True)
    out = cli("run", "--no-validate", "--max-delete", "all", "--site", str(link), "--db", str(db), "--json", "-q")
    assert out.returncode == 0 and json.loads(out.stdout)["counts"]["removed"] == 4, out.stderr
    assert query(db, "SELECT root_id, location FROM roots") == [(1, str(site)), (2, str(link))]


def _swapped_while_hashing(site, db, swap) -> tuple[int, str]:
    """A run (no validation, one worker) paused at its hashing, `swap()` done then; its exit code and stderr."""
    resume = site.with_name("resume")
    proc = subprocess.Popen([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--workers", "1", "--json",
                             "-q", "--site", str(site), "--db", str(db)],
                            env={**os.environ, "CHORUS_BATCH_TEST_PAUSE": "hashing+60",
                                 "CHORUS_BATCH_TEST_RESUME": str(resume)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        while "test pause at hashing" not in (line := proc.stderr.readline()):
            assert line or proc.poll() is None, "the run never reached its hashing"
        swap()
        resume.touch()  # (goes on at once, not after a fixed 3 s)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


def test_a_file_replaced_by_a_fifo_after_the_listing_is_said_not_waited_on_for_ever(site, db):
    """A file replaced by a FIFO between the listing and the hashing (or validation's read) blocked its open for
    ever: the nightly run hung, saying nothing, until cron's timeout killed it and nothing was committed. It is now
    opened without blocking and refused as no longer a regular file; the rest is committed."""
    write(site, "OMOP/a.csv", b"a")
    fifo = write(site, "OMOP/b.csv", b"b")
    def to_fifo() -> None:
        fifo.unlink()
        os.mkfifo(fifo)

    returncode, err = _swapped_while_hashing(site, db, to_fifo)
    assert returncode == ExitCode.FINDINGS, err
    assert list(current_rows(db)) == ["OMOP/a.csv"]
    assert query(db, "SELECT srcfile, kind, message FROM scan_errors") == [
        ("OMOP/b.csv", "unreadable", "cannot read: no longer a regular file (replaced by a FIFO, socket, device or "
                                     "folder since it was listed)")]
    # what reads a recorded file again (validation, upload) opens it the same way (in a thread of this process, not
    # a Python of its own: an open that blocks fails the test after 60 s, and a writer then lets the thread go)
    from chorus_batch.sources.local import LocalSource

    said: list = []

    def reopen() -> None:
        try:
            said.append(LocalSource(str(site)).open("OMOP/b.csv"))
        except OSError as exc:
            said.append(exc.strerror)

    opener = threading.Thread(target=reopen, daemon=True)
    opener.start()
    opener.join(60)
    if opener.is_alive():
        with open(fifo, "wb"):
            pass
        raise AssertionError("opening the FIFO waited for a writer")
    assert isinstance(said[0], str) and said[0].startswith("no longer a regular file"), said


def test_a_file_replaced_by_a_link_after_the_listing_is_not_read_through_it(site, db, tmp_path):
    """A run that does not follow symbolic links listed a regular file; replaced by a link to a file outside the site
    before it was hashed (a tidy-up that moves data to another disk and leaves links), the link's target was hashed
    and recorded as that file, exit 0, and `upload` would send the outside file as it. It is now refused as no
    longer a regular file, as the next run's listing records the link (not followed); the rest is committed."""
    write(site, "OMOP/a.csv", b"a")
    swapped = write(site, "OMOP/person.csv", b"person_id\n1\n")
    outside = write(tmp_path / "elsewhere", "person.csv", b"person_id\n2\n")
    def to_link() -> None:
        swapped.unlink()
        swapped.symlink_to(outside)

    returncode, err = _swapped_while_hashing(site, db, to_link)
    assert returncode == ExitCode.FINDINGS, err
    assert list(current_rows(db)) == ["OMOP/a.csv"]
    refused = ("cannot read: no longer a regular file (replaced by a symbolic link since it was listed, which this "
               "run does not follow: --follow-symlinks, or follow_symlinks = true in [run] of chorus.toml, follows links)")
    assert query(db, "SELECT srcfile, kind, message FROM scan_errors") == [("OMOP/person.csv", "unreadable", refused)]
    # following links, the link is read through, as the listing takes it; and so do `validate` and `upload`, which
    # reopen the recorded root without the run's settings: a file recorded through a link is read through it
    again = cli("run", "--no-validate", "--follow-symlinks", "--json", "-q", "--site", str(site), "--db", str(db))
    assert again.returncode == ExitCode.OK, again.stderr
    assert current_rows(db)["OMOP/person.csv"] == hashlib.md5(b"person_id\n2\n").hexdigest()
    checked = cli("validate", "--db", str(db), "--json")
    assert not [f for f in json.loads(checked.stdout)["findings"] if f["rule"] == "file.unread"], checked.stdout


@pytest.mark.parametrize("command", [["run"], ["run", "--shard", "0/2", "--staging", "STAGING"], ["status"]])
def test_a_manifest_folder_that_is_not_there_is_refused_not_made(command, tmp_path):
    """A nightly run whose manifest lay on a disk not mounted that night (or a mistyped --db) made the folders and a
    new manifest there, recorded the whole site as added and exited 0."""
    site = tmp_path / "site"
    write(site, "OMOP/person.csv", b"person_id\n1\n")
    mount = tmp_path / "mnt"  # the mount point is there, the disk's folders are not
    mount.mkdir()
    db = mount / "chorus" / "manifest.sqlite"
    args = [str(tmp_path / "staging") if word == "STAGING" else word for word in command]
    done = cli(*args, "--site", str(site), "--db", str(db), "-q")
    if command == ["status"]:  # reads only: nothing made, as before
        assert not (mount / "chorus").exists()
        return
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "does not exist" in done.stderr and "mkdir -p" in done.stderr and "nothing was written" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(mount.iterdir()) == []
    (mount / "chorus").mkdir()  # a new site: the folder made on purpose
    done = cli(*args, "--site", str(site), "--db", str(db), "-q")
    assert done.returncode in (ExitCode.OK, ExitCode.FINDINGS), done.stderr


def test_a_killed_runs_row_is_finished_by_the_next_run(site, db):
    """A run SIGKILLed (a Slurm time limit, the OOM killer) wrote no outcome: its `runs` row kept an empty exit code
    forever, as if it were still going on. The next run, which holds the lock, finishes it as killed."""
    many(site, 5)
    assert run(site, db, "-q").returncode == 0
    proc, _ = paused_at_hashing(site, db)
    proc.kill()
    proc.communicate(timeout=30)
    assert query(db, "SELECT exit_code FROM runs ORDER BY run_id") == [(0,), (None,)]
    assert run(site, db, "-q").returncode == 0
    rows = query(db, "SELECT exit_code, version IS NULL, message FROM runs ORDER BY run_id")
    assert [row[:2] for row in rows] == [(0, 0), (137, 1), (0, 0)], rows
    assert "killed: it ended without recording its outcome" in rows[1][2]


def test_a_renamed_manifest_takes_along_what_its_former_name_left_beside_it(site, db, tmp_path):
    """`mv m.sqlite site-a.sqlite` (the cron line changed with it) left m.sqlite.state.parquet (every file's MD5 and
    person id) for good, the runs turned away under the old name were never added to `runs`, and a killed run's lock
    note stayed. The renamed manifest's run removes the cache and the note, adds those runs, and names the empty lock
    file to remove; a copy's run leaves the files of the manifest still there alone."""
    write(site, "OMOP/person.csv", b"1")
    assert run(site, db, "-q").returncode == 0
    old = {suffix: Path(f"{db}{suffix}") for suffix in (".state.parquet", ".lock", ".lock.json", ".runs-pending.jsonl")}
    old[".lock.json"].write_text('{"pid": 1}')  # a killed run's
    turned_away = {"started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:00+00:00", "host": "h",
                   "user": "u", "pid": 1, "argv": "[]", "mode": "full", "site": str(site), "exit_code": 4,
                   "message": "the manifest is locked by another run", "release": "x"}
    old[".runs-pending.jsonl"].write_text(json.dumps(turned_away) + "\n")
    copy = tmp_path / "copy.sqlite"
    shutil.copy(db, copy)
    assert run(site, copy, "-q").returncode == 0
    assert all(path.exists() for path in old.values())  # db is still there: they are db's
    db.rename(renamed := tmp_path / "site-a.sqlite")
    done = run(site, renamed, "-q")
    assert done.returncode == 0, done.stderr
    assert [path.name for path in old.values() if path.exists()] == [f"{db.name}.lock"]
    assert f"{db}.lock is the (empty) lock file of this manifest under its former name" in done.stderr
    assert sorted(query(renamed, "SELECT exit_code FROM runs")) == [(0,), (0,), (4,)]  # the turned-away run added


@pytest.mark.parametrize("kind", ["run", "upload"])
def test_a_folder_where_the_lock_file_goes_is_named_as_such(db, kind):
    """A folder named `<manifest>.lock` (a copy tool, a hand-made "lock dir"): the run said "cannot create or open
    the manifest's lock file: Is a directory", fix "pass --db with a path on an ordinary file system this user can
    write", which it was."""
    from chorus_batch.errors import ManifestError
    from chorus_batch.store.lock import manifest_lock

    db.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(f"{db}.lock" if kind == "run" else f"{db}.{kind}.lock")
    folder.mkdir()
    with pytest.raises(ManifestError) as said, manifest_lock(db, ["run"], kind=kind):
        pass
    assert f"lock file {folder.name} is a folder" in str(said.value) and "move that folder away" in said.value.fix
    assert "ordinary file system" not in said.value.fix and folder.is_dir()


def test_a_read_only_lock_file_of_this_user_says_to_make_it_writable(db):
    """A lock file of this user's made read-only (chmod 400, a copy from a read-only medium; on Windows its read-only
    attribute): the run was told "pass --db with a path on an ordinary file system this user can write", which it was."""
    from chorus_batch.store.lock import _cannot_lock

    db.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(f"{db}.lock")
    lock.touch(mode=0o400)
    said = _cannot_lock(db, lock, PermissionError(13, "Permission denied"))  # what a non-root user meets
    assert "lock file is read-only" in str(said) and f"chmod u+w {lock}" in said.fix, said
    assert "ordinary file system" not in said.fix


def test_a_run_stopped_by_a_full_disk_is_recorded_with_its_own_exit_code_not_as_killed(site, small_disk, tmp_path):
    """The disk filled while the run hashed (its own checkpoint, another job's files): the commit failed, and so did
    the update of its `runs` row; left unfinished, the next run recorded it as killed (137, "SIGKILL, a job time
    limit..."). The room for its outcome is taken when the run begins: the next run records it as it ended (3, the
    full disk, nothing committed)."""
    db = small_disk / "m.sqlite"
    many(site, 20)
    assert run(site, db, "-q").returncode == 0
    (first,) = query(db, "SELECT label FROM versions")[0]
    many(site, 400)
    resume = tmp_path / "resume"
    proc = paused("run", "--no-validate", "--site", str(site), "--db", str(db), "-q", at="hashing+60", resume=resume)
    filler = fill(small_disk)
    resume.touch()
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.FAILED, err
    assert "the disk is full" in err and f"nothing was committed; version {first} stays the latest" in err, err
    filler.unlink()
    again = run(site, db, "-q")
    assert again.returncode == 0, again.stderr
    rows = query(db, "SELECT exit_code, version, message FROM runs ORDER BY run_id")
    assert [row[:2] for row in rows[:2]] == [(0, first), (ExitCode.FAILED, None)], rows
    assert "the disk is full" in rows[1][2] and f"nothing was committed; version {first} stays the latest" in rows[1][2]
    assert "killed" not in rows[1][2], rows
    assert not Path(f"{db}.run-outcome").exists()


def test_a_run_whose_summary_cannot_be_written_records_the_exit_code_it_ends_with(site, db):
    """`run > /dev/full`: exit 3 (the summary lost, the version named), but `runs` recorded 0: its end was recorded
    before the summary was printed. It is printed first; `runs` records 3 and the version committed."""
    many(site, 3)
    with open("/dev/full", "w") as full:
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "--site", str(site),
                              "--db", str(db)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert out.returncode == ExitCode.FAILED and f"version {label} was committed" in out.stderr, out.stderr
    ((code, version, message),) = query(db, "SELECT exit_code, version, message FROM runs")
    assert (code, version) == (ExitCode.FAILED, label), message
    assert "could not write the output to standard output" in message and f"version {label} was committed" in message


@pytest.mark.parametrize("how", ["closed", "reader left"])
def test_a_run_whose_summary_went_nowhere_says_on_stderr_what_it_committed(site, db, how):
    """`run >&-` (a cron line, a service) and `run | head -1` whose reader left before the summary: exit 0 and not a
    word of the version it committed (the summary said it). The exit code stays the run's own (README); standard
    error says what it committed, and `runs` notes a summary cut short."""
    many(site, 3)
    if how == "closed":
        out = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "-q", "--site", str(site),
                              "--db", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             timeout=120, preexec_fn=lambda: os.close(1))
    else:
        read, write_end = os.pipe()
        os.close(read)  # the reader left before anything was written
        try:
            out = subprocess.run([sys.executable, "-m", "chorus_batch", "run", "--no-validate", "-q", "--site",
                                  str(site), "--db", str(db)], stdout=write_end, stderr=subprocess.PIPE, text=True,
                                 timeout=120)
        finally:
            os.close(write_end)
    (label,) = query(db, "SELECT label FROM versions")[0]
    assert out.returncode == 0, out.stderr
    assert f"version {label} was committed to {db}" in out.stderr and "summary" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1, out.stderr
    ((code, version, message),) = query(db, "SELECT exit_code, version, message FROM runs")
    assert (code, version) == (0, label)
    assert (message is None) if how == "closed" else ("its summary was cut" in message), message


def test_a_run_whose_lock_file_was_removed_under_it_is_refused_with_what_happened(site, tmp_path):
    """A clean-up of old files in the manifest's folder removed the lock file while a night's run hashed: a second run
    took a new lock and committed, and the first was refused at its commit by the library's guard, as a caller's
    mistake ("previous_label is ..., fix: pass previous_label=manifest.latest_version()..."), exit 2 (bad usage),
    and `runs` recorded that the older version "stays the latest". Said as what happened, exit 4 (another run)."""
    db = tmp_path / "m.sqlite"
    write(site, "OMOP/a.csv", b"a")
    assert cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db)).returncode == 0
    (first,) = query(db, "SELECT label FROM versions")[0]
    write(site, "OMOP/b.csv", b"b")
    resume = tmp_path / "resume"
    run = paused("run", "-q", "--no-validate", "--site", str(site), "--db", str(db), at="hashing+60", resume=resume)
    Path(f"{db}.lock").unlink()
    other = cli("run", "-q", "--no-validate", "--site", str(site), "--db", str(db))
    assert other.returncode == 0, other.stderr
    (second,) = query(db, "SELECT label FROM versions WHERE label <> ?", (first,))[0]
    resume.touch()
    _out, err = run.communicate(timeout=60)
    assert run.returncode == ExitCode.LOCKED, err
    assert "previous_label" not in err and "Traceback" not in err, err
    assert f"another run committed version {second}" in err and "lock file" in err and "removed" in err, err
    assert f"version {second}, the other run's, is the latest" in err, err
    assert query(db, "SELECT count(*) FROM versions") == [(2,)]  # nothing lost, nothing committed twice
    (message,) = query(db, "SELECT message FROM runs WHERE exit_code = 4")[0]
    assert f"version {second}" in message and f"{first} stays the latest" not in message, message


def test_a_run_that_lost_its_lock_file_leaves_the_details_of_the_run_that_took_the_lock(tmp_path):
    """A run whose lock file a clean-up deleted, ending, removed the details the run that took the lock since had
    written beside it: a third run was refused naming "an unknown process"."""
    import json
    import subprocess
    import sys

    from chorus_batch.store.lock import manifest_lock, write_holder

    db = tmp_path / "m.sqlite"
    holder = Path(f"{db}.lock.json")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with manifest_lock(db, ["run"]):
            assert json.loads(holder.read_text())["pid"] == os.getpid()
            Path(f"{db}.lock").unlink()  # the clean-up; then another run locks anew and writes its details
            write_holder(holder, {"command": "run"})
            details = json.loads(holder.read_text())
            details["pid"] = other.pid
            holder.write_text(json.dumps(details))
        assert json.loads(holder.read_text())["pid"] == other.pid
        with manifest_lock(db, ["run"]):
            pass
        assert not holder.exists()  # its own details, as ever, go with it
    finally:
        other.kill()
        other.wait()


def test_a_recorded_root_gone_tonight_is_recorded_in_runs_a_mistyped_site_is_not(site, db, tmp_path):
    """A root the latest version has files under that is not there at all (its mount point removed with the share,
    a folder renamed) is exit 2 before the manifest is locked, and left no `runs` row: a week of such nights read as
    a quiet site in the report. It is recorded (by the next run that ends on the manifest, as a run the lock turned
    away is); a --site that names no root the manifest knows (a typo) still is not."""
    many(site, 5)
    assert run(site, db).returncode in (0, 1)
    moved = tmp_path / "moved"
    site.rename(moved)
    gone = run(site, db)
    assert gone.returncode == 2 and "does not exist" in gone.stderr, gone.stderr
    typo = run(tmp_path / "sitte", db)
    assert typo.returncode == 2, typo.stderr
    moved.rename(site)
    assert run(site, db).returncode in (0, 1)
    # (by exit code: the three ran within a second, and a row noted beside the manifest is dated to the microsecond)
    rows = query(db, "SELECT site, exit_code, version, message FROM runs ORDER BY exit_code")
    assert [(where, code) for where, code, _, _ in rows] == [(str(site), 0), (str(site), 0), (str(site), 2)], rows
    assert "does not exist" in rows[2][3] and "nothing was committed" in rows[2][3] and rows[2][2] is None


def test_a_refused_run_says_in_json_what_stands_as_a_failed_one_does(site, db):
    """--json's `outcome` of a run refused (exit 5: --max-delete, an emptied root) was null, where a failed or
    stopped run's (exit 3, 143) says "nothing was committed; version ... stays the latest": a script reading it
    learned nothing of what the manifest holds. It says so now, as the `runs` row does."""
    many(site, 5)
    assert run(site, db).returncode in (0, 1)
    latest = query(db, "SELECT label FROM versions")[0][0]
    for rel in [f"{i:06d}" for i in range(4)]:
        shutil.rmtree(site / rel)
    out = run(site, db, "--json", "-q")
    assert out.returncode == 5, out.stdout + out.stderr
    said = json.loads(out.stdout)
    assert said["exit_code"] == 5 and said["error"].startswith("refused: "), said
    assert said["outcome"] and f"version {latest} stays the latest" in said["outcome"], said
