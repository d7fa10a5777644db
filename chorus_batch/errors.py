"""Typed errors and the exit codes the command line maps them to.

Library code raises these; only `chorus_batch.cli` turns them into messages and
exit codes. Every error carries what happened, where, and what to do.
"""

from __future__ import annotations

import errno
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of every command (documented in README and `--help`)."""

    OK = 0  # success, nothing to report
    FINDINGS = 1  # success, but scan errors, unparseable paths or validation errors were recorded
    USAGE = 2  # bad arguments or configuration; nothing was done
    FAILED = 3  # the run failed; nothing was committed
    LOCKED = 4  # another run holds the manifest lock; nothing was done
    REFUSED = 5  # the run would remove more files than allowed (--max-delete); nothing was committed;
    # upload: a central blob holds other content (another manifest's) and was not replaced
    HANGUP = 129  # SIGHUP; nothing was committed
    USER_SIGNAL = 138  # SIGUSR1 (Slurm's --signal=USR1@... before a job's time limit); nothing was committed
    SECOND_USER_SIGNAL = 140  # SIGUSR2 (Slurm's --signal=USR2@..., a site's own scripts); nothing was committed
    INTERRUPTED = 130  # Ctrl-C / SIGINT; nothing was committed
    QUIT = 131  # Ctrl-\ / SIGQUIT; nothing was committed
    CPU_LIMIT = 152  # SIGXCPU (the CPU-time limit, `ulimit -t`, a batch system's); nothing was committed
    BREAK = 149  # Ctrl-Break / SIGBREAK (Windows); nothing was committed
    TERMINATED = 143  # SIGTERM (Slurm, systemd, kill); nothing was committed
    READER_LEFT = 141  # `report`/`review --out -`: the reader closed the pipe before the whole page (128 + SIGPIPE, as cat)


EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    success with findings (scan errors, unparseable paths, unverifiable cloud files or validation
       errors were recorded; upload: files not sent; verify: blobs missing or not matching, or files of
       the verified version not uploaded yet; mark-uploaded: blobs not recorded, log lines not understood, or nothing recorded;
       import-journal: parts of the journal could not be mapped; import-config: warnings;
       registry: written, with warnings: files without a row, a capture time or a table not as recorded;
       validate --site: files its scan could not take, not checked)
  2    bad usage or configuration (nothing was done)
  3    failure (nothing was committed: the latest version stays, or a first run wrote none; upload: what was confirmed
       is recorded, the same command resumes; import-journal: no manifest was written)
  4    the manifest is locked by another run or command (its holder is named; for a manifest in Azure whose
       holder died, `chorus-batch unlock --db az://...` breaks the lock)
  5    refused: the run would remove more files than --max-delete allows, or a root looks empty
       (nothing was committed; the message says how many files and how to allow it); upload: a blob
       at the centre (or the manifest's copy) holds another manifest's content and was not replaced
  129  hung up (SIGHUP); 130 interrupted (Ctrl-C); 131 quit (Ctrl-\\, SIGQUIT); 138 stopped by SIGUSR1; 140 stopped
       by SIGUSR2 (Slurm's --signal before a job's time limit); 143 terminated (SIGTERM); 149 stopped by Ctrl-Break
       (SIGBREAK, Windows); 152 CPU-time limit reached (SIGXCPU, `ulimit -t`): nothing was committed, unless a line
       above says a version was committed before the signal arrived
  141  report/review --out -: the reader closed standard output before the whole page or notebook was written
       (as `cat` ends, 128 + SIGPIPE: under `set -o pipefail` a cut page is not taken as written)"""

# The signals that stop a command as Ctrl-C does (cli installs their handlers; processes holds them while a native
# library loads; slurm passes them on to the jobs it submitted). SIGUSR1: what Slurm's `--signal=USR1@60` (a common
# template line) sends before a job's time limit; its default action ended a run with no message. SIGUSR2: the same
# (`--signal=USR2@60`), which ended a run with no message, an unfinished `runs` row and a stale lock note.
# SIGQUIT (Ctrl-\) and SIGXCPU (the soft CPU-time limit: `ulimit -St`, a batch system's CPU limit; the hard one
# kills) dumped core by default: no message, no `runs` outcome, a stale lock note. SIGBREAK (Windows only): Ctrl-Break,
# which the console sends to each of its processes; its default action ended a run and its workers at once (no
# message, the `runs` row unfinished, the hashes since the last checkpoint lost).
STOP_SIGNALS = ("SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGXCPU", "SIGBREAK")


def interrupted_at_start() -> None:
    """Ctrl-C before a command began (Python loading the command line, its arguments being read): one line, exit
    130, never a traceback. Nothing was read or written yet."""
    import os
    import sys

    try:
        print("chorus-batch: interrupted (Ctrl-C) while starting, before the command began; nothing was done",
              file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # stderr closed: the exit code says it
        pass
    os._exit(int(ExitCode.INTERRUPTED))


class ChorusError(Exception):
    """Base of all expected errors: a message, the place, and the fix."""

    exit_code = ExitCode.FAILED

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None,
                 detail: list[str] | None = None):
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix
        self.detail = detail or []  # lines another program said (a kernel's last words), shown indented under `what`

    def __str__(self) -> str:
        from .units import shown

        # each part one line, whatever the path it names holds: `--db $'a\nb.sqlite'` split "where:" over two lines,
        # a site root or file named with a line break split the first line (what a log's grep and the reader of
        # `chorus-batch: error:` take for the whole error), and an escape sequence in a name reached the terminal
        parts = [shown(self.what), *(f"    {shown(line)}" for line in self.detail)]
        if self.where:
            parts.append(f"  where: {shown(self.where)}")
        if self.fix:
            parts.append(f"  fix:   {shown(self.fix)}")
        return "\n".join(parts)

    def _render_traceback_(self) -> list[str]:
        """What IPython (Jupyter, papermill) shows for it instead of a traceback: the message, where and what to
        do, as the command line says it. A reviewer's notebook on a manifest with no version yet showed
        twenty frames of chorus_batch internals around the one line that mattered. Then what stands (`outcome`, which
        the command line prints after the error: a failed run's "nothing was committed ...; the files it hashed are
        checkpointed in ...") and any notes: the notebook showed neither."""
        from .units import shown

        outcome = getattr(self, "outcome", None)
        return [f"{type(self).__name__}: {self}", *([f"  {shown(outcome)}"] if isinstance(outcome, str) else []),
                *(str(note) for note in getattr(self, "__notes__", []))]


# Whether the code running serves a command line (cli.main sets it for its command) or a library caller (a script, a
# notebook). The messages that name a setting ask `named` / `pass_db`, the one place that says a setting either way:
# `Manifest("nope.sqlite").versions()` told a notebook to "pass --db", and `m.diff("x")` named "--from / from_version".
# (A flag of the process, not a ContextVar: a command's threads say it the same way.)
_command_line = False


def in_one_line(exc: BaseException, *, typed: bool = True) -> str:
    """What went wrong, in one line, to quote inside another message or a warning: a ChorusError's text adds its own
    "where:" and "fix:" lines, which a log showed as the run's own error (the warning's end cut off on the third
    line). Another exception is said with its type (`typed`), as "ValueError: ..." tells more than "..."."""
    from .units import shown

    if isinstance(exc, ChorusError):
        return shown(exc.what)
    return shown(f"{type(exc).__name__}: {exc}" if typed else str(exc))


@contextmanager
def serving_command_line() -> Iterator[None]:
    """Within it, messages name the command line's flags (cli.main runs each command in it)."""
    global _command_line
    before, _command_line = _command_line, True
    try:
        yield
    finally:
        _command_line = before


def named(flag: str, argument: str) -> str:
    """A setting as the user gave it: the flag on the command line (`--from`), the argument's name to a library
    caller (`from_version`)."""
    return flag if _command_line else argument


def first_run_command(db: str | os.PathLike[str]) -> str:
    """What commits a first version into the manifest at `db` (a fix's words for a manifest not there yet): the command
    on the command line, the call in the library."""
    from .units import command_word

    if _command_line:
        return f"`chorus-batch run --site DIR --db {command_word(os.fspath(db))}`"
    return f"`chorus_batch.run(RunSettings(site=DIR, db={os.fspath(db)!r}))`"


def pass_db(what: str, *, run: bool = False) -> str:
    """How to give the manifest `what` ("the manifest's path", "another path"): by --db on the command line, to
    Manifest() or open_manifest() from the library (`run`: where the manifest is written, to RunSettings(db=...),
    which is how the library runs)."""
    if _command_line:
        return f"pass --db with {what}"
    return f"give RunSettings(db=...) {what}" if run else f"give Manifest() or open_manifest() {what}"


class UsageError(ChorusError):
    exit_code = ExitCode.USAGE


class ForeignSnapshots(UsageError):
    """A --parquet folder holds the snapshots of another manifest (store.snapshots.check_owner): the next run given
    that folder is refused too, so a run refused after its commit does not say "the next run finishes" them."""


class WriteError(UsageError, OSError):
    """An output cannot be written where it was asked (no such folder, no permission, a read-only file system, a
    path that is not a regular file). Also an OSError (errno and strerror set): a caller that treats a failed
    write as best effort (`except OSError`: the state cache) still does."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None, cause: OSError | None = None):
        super().__init__(what, where=where, fix=fix)
        self.errno, self.strerror = (cause.errno, cause.strerror) if cause is not None else (None, what)
        if self.errno in _FAILED_WRITES:  # not the command line's fault: a failure, as the manifest's full disk is
            self.exit_code = ExitCode.FAILED


# A write that failed for the machine's reasons (a full disk, a quota, the device): exit 3, not 2 (bad usage).
_FAILED_WRITES = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EIO", "EFBIG") if hasattr(errno, name))


class ConfigError(UsageError):
    """A setting in chorus.toml (or its command-line override) is invalid."""


class SettingError(ConfigError, ValueError):
    """A RunSettings keyword is unknown, missing or has a value it does not take (`setting`: its name; `problem`:
    what is wrong with it). Also a ValueError, as pydantic's ValidationError it stands for: a library caller saw
    that error's traceback, with a link to pydantic's pages, rather than what to give."""

    def __init__(self, what: str, *, setting: str, problem: str, where: str | None = None, fix: str | None = None):
        super().__init__(what, where=where, fix=fix)
        self.setting, self.problem = setting, problem


class SourceError(ChorusError):
    """The site tree cannot be listed at all (missing root, no permission)."""


class ManifestError(ChorusError):
    """The manifest cannot be opened, read or written."""


class WorkerDied(ChorusError):
    """A worker process ended abruptly (the kernel's out-of-memory killer, a cgroup or Slurm memory limit, or a
    kill): the run cannot have the results of its work and fails with nothing committed."""

    def __init__(self, how: str = ""):
        super().__init__(
            f"a worker process of this run ended abruptly ({how or 'killed or crashed'}) while it listed, hashed or "
            "read files; the work it had is lost",
            where="the worker processes (--workers / workers in [run])",
            # (a worker has the CPU-time limit of its own: SIGXCPU was told to go to the memory it never lacked)
            fix=("its CPU-time limit (`ulimit -t`, a batch system's CPU limit; each worker process has its own) was "
                 "reached: raise it for this job" if "SIGXCPU" in how else
                 "if the kernel's out-of-memory killer or a memory limit ended it (`dmesg | grep -i oom`, a Slurm "
                 "job in state OUT_OF_MEMORY), give the job more memory (--mem) or pass fewer --workers")
                + "; then run again (what the checkpoint holds is not hashed again)")


class OutOfMemory(ChorusError):
    """An allocation failed (Python's MemoryError, pyarrow's ArrowMemoryError, DuckDB's OutOfMemoryException): an
    address-space limit (`ulimit -v`) or a memory too small for the site, not a fault of chorus-batch."""


def out_of_memory(exc: BaseException) -> OutOfMemory | None:
    """`exc` as an OutOfMemory with what/where/fix, if it is a failed allocation (else None)."""
    mapped = isinstance(exc, ImportError) and "failed to map segment" in str(exc)  # a library's mmap: ENOMEM
    # (a system call refused memory: a fork of a worker or a helper program, an mmap)
    refused = isinstance(exc, OSError) and exc.errno == errno.ENOMEM
    if not (mapped or refused or isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryException"):
        return None
    detail = str(exc).strip()
    capped = re.search(r"\(([0-9.]+ [KMG]iB)/([0-9.]+ [KMG]iB) used\)", detail)
    if type(exc).__name__ == "OutOfMemoryException" and capped:
        # DuckDB's own cap, which chorus-batch sets (a review database: 64 MB), not the machine's memory: "give the
        # job more memory" would not help (a 1M-file report said so)
        first_line = detail.splitlines()[0]
        return OutOfMemory(f"a query needed more than the {capped.group(2)} of working memory chorus-batch gives DuckDB "
                           f"({first_line})", where="chorus-batch's DuckDB memory cap",
                           fix="this is a limit of chorus-batch's, not of the machine: report it with this message "
                               "and the manifest's size (chorus-batch versions)")
    soft = soft_limit("RLIMIT_AS")
    limit = f" (this process's address-space limit, `ulimit -v`, is {soft // 2**20} MiB)" if soft is not None else ""
    slurm = slurm_address_space(soft) if soft is not None else None
    if slurm is not None:  # (Slurm's VSizeFactor made --mem an address-space limit: "remove `ulimit -v`" cannot)
        memory, percent = slurm
        return OutOfMemory(f"out of memory: {type(exc).__name__}{': ' + detail if detail else ''} (this process's "
                           f"address-space limit is {soft // 2**20} MiB, this Slurm job's {memory} MiB of memory "
                           f"times {percent}%: what Slurm sets when the cluster has VSizeFactor={percent})",
                           where="the memory of this Slurm job (--mem) and the cluster's VSizeFactor (`scontrol show "
                                 "config | grep VSizeFactor`)",
                           fix="give the job more memory (--mem; with VSizeFactor it also bounds the address space, "
                               "which the libraries' threads reserve without using it, and `ulimit -v` cannot lift "
                               "it; a `ulimit -v` of the job's script or of the shell that submitted it instead: "
                               "remove it), or pass fewer --workers; then run again")
    return OutOfMemory(f"out of memory: {type(exc).__name__}{': ' + detail if detail else ''}{limit}",
                       where="the memory of this process (`ulimit -v`, a Slurm --mem, a cgroup memory limit)",
                       fix="give the job more memory (or remove `ulimit -v`: the libraries' threads reserve address "
                           "space they never use; limit resident memory with Slurm --mem instead), or pass fewer "
                           "--workers; then run again")


class ProcessLimit(ChorusError):
    """A process or thread could not be started: the user's process limit (`ulimit -u`, RLIMIT_NPROC, which counts
    threads too) or a cgroup's pids limit (a container's, a batch system's) reached, not a fault of chorus-batch."""


def process_limit(exc: BaseException) -> ProcessLimit | None:
    """`exc` as a ProcessLimit with what/where/fix, if it is a fork or thread start the system refused (EAGAIN;
    Python's "can't start new thread"), else None. It said "internal error: BlockingIOError: [Errno 11] Resource
    temporarily unavailable ... report it"."""
    refused = isinstance(exc, OSError) and exc.errno == errno.EAGAIN
    if not (refused or (isinstance(exc, RuntimeError) and "can't start new thread" in str(exc))):
        return None
    soft = soft_limit("RLIMIT_NPROC")
    limit = f" (this user's process limit, `ulimit -u`, is {soft}; its threads count too)" if soft is not None else ""
    return ProcessLimit(f"the system would not start another process or thread: {type(exc).__name__}: {exc}{limit}",
                        where="the processes and threads of this user (`ulimit -u`, a cgroup's or container's pids "
                              "limit, a Slurm job's)",
                        fix="raise the limit (`ulimit -u` in the job's script, or ask the administrators), stop other "
                            "processes of this user, or pass fewer --workers (--workers 1 starts no worker "
                            "processes); then run again")


def machine_limit(exc: BaseException) -> ChorusError | None:
    """`exc` as the machine's limit it hit (memory, processes) with what/where/fix, else None."""
    return out_of_memory(exc) or process_limit(exc)


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (`ulimit -f`, a batch system's RLIMIT_FSIZE), None when it has none. A
    write past it fails with EFBIG, which SQLite says as "disk I/O error" (Python ignores the SIGXFSZ)."""
    return soft_limit("RLIMIT_FSIZE")


def slurm_address_space(soft: int, env=None) -> tuple[int, int] | None:
    """(the job's memory in MiB, VSizeFactor in percent) when the address-space limit `soft` is the one Slurm sets on
    a job under a cluster's VSizeFactor: the job's memory (--mem, --mem-per-cpu times its CPUs, or the cluster's
    default) times that percentage, soft and hard alike, which `ulimit -v unlimited` in the job cannot lift; else
    None. (Told "remove `ulimit -v`; bound memory with Slurm --mem instead", a site was sent to what had set it.)"""
    import os

    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return None
    per_node, per_cpu, cpus = (env.get(name, "") for name in ("SLURM_MEM_PER_NODE", "SLURM_MEM_PER_CPU",
                                                               "SLURM_CPUS_ON_NODE"))
    if per_node.isdigit():
        memory = int(per_node)
    elif per_cpu.isdigit() and cpus.isdigit():
        memory = int(per_cpu) * int(cpus)
    else:
        return None
    if memory <= 0:
        return None
    percent = round(soft * 100 / (memory << 20))  # (slurm.conf's VSizeFactor is a whole percentage)
    if percent < 1 or abs((memory << 20) * percent / 100 - soft) > 1 << 20:
        return None
    return memory, percent


def soft_limit(name: str) -> int | None:
    """This process's soft limit `name` (resource.RLIMIT_AS, _NPROC, _FSIZE...), None when it has none or the
    system has no such limit."""
    try:
        import resource

        soft = resource.getrlimit(getattr(resource, name))[0]
    except (ImportError, AttributeError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft


def salvage_command(damaged: str) -> str:
    """A shell command that copies what SQLite can still read of a damaged database into a new file beside it. Not
    `sqlite3 DB .recover`: the sqlite3 3.40 of Debian bookworm lacks the page reader it needs and writes no table
    ("SQL logic error"). `.dump` reads what it can and ends "ROLLBACK; -- due to errors", turned into COMMIT. A table
    it cannot read to the end it reads again backwards (ORDER BY rowid DESC), writing its first rows twice, and a page
    cut short gives rows of zeros and NULLs: each INSERT is INSERT OR IGNORE, so that such a row is skipped (it stopped
    the copy's rows with "UNIQUE constraint failed" / "NOT NULL constraint failed", and the command's exit status 1)."""
    import shlex

    # Into a new file only: into one left by an earlier salvage (of another copy, or before more pages were lost) the
    # copy's CREATEs failed ("table ... already exists") and its rows were merged into the old ones, INSERT OR IGNORE
    # keeping whichever came first: a mix of two histories, exit 1.
    copy = shlex.quote(damaged + ".salvaged")
    exists = shlex.quote(f"{damaged}.salvaged exists (an earlier salvage?): move it away (or import it, if it is "
                         "from this same damaged file), then run this command again")
    return (f"if [ -e {copy} ]; then echo {exists} >&2; false; else "
            f"sqlite3 {shlex.quote(damaged)} .dump | sed -e 's/^INSERT INTO /INSERT OR IGNORE INTO /' "
            f"-e 's/^ROLLBACK; -- due to errors$/COMMIT;/' | sqlite3 {copy}; fi")


FILE_SIZE_FIX = ("raise or remove the limit (`ulimit -f unlimited` in the job's script, or ask the batch system's "
                 "administrators), then run again")


class ManifestLocked(ChorusError):
    exit_code = ExitCode.LOCKED


class MassRemovalRefused(ChorusError):
    """The run would remove more of the previous version's files than allowed."""

    exit_code = ExitCode.REFUSED


class AfterCommitError(ChorusError):
    """Something failed after the version was committed: the message says which version is in the manifest."""

    committed: str | None = None  # the version label that was committed


def committed_stays(label: str) -> str:
    """What stands after a failure that followed a commit: `runs`' record and `--json`'s `outcome` say it alike."""
    return f"version {label} was committed before the failure; it stays"


# A refusal the command line holds until the command has checked its arguments (a closed standard output where it is
# the command's product): a usage error is said first, as one (exit 2), and the refusal where the work would start.
_HELD: list[ChorusError] = []


def hold_until_work(refusal: ChorusError | None) -> None:
    """Hold `refusal` (None: let go of one held) until work_starts()."""
    _HELD[:] = [refusal] if refusal is not None else []


def work_starts() -> None:
    """Where a command has checked every argument and setting and starts its work (the first write to standard output,
    a run's listing after its preflight, a listing command's query): the refusal held, if any, is raised here, once."""
    if _HELD:
        raise _HELD.pop()


class Stopped(BaseException):
    """A signal asked the run to stop (SIGTERM, SIGHUP); raised in the main thread like KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# The stop signals this process received (cli installs the handlers). A library that calls back into Python (DuckDB
# counting the rows of a registered frame) wraps the Stopped or KeyboardInterrupt raised there into its own error:
# the signal is what happened all the same, and must be said and exited with as such.
_received: list[int] = []


def note_signal(signum: int) -> None:
    _received.append(signum)


def stop_for(signum: int) -> BaseException:
    """The exception a stop signal is raised as: KeyboardInterrupt for SIGINT (Ctrl-C), else Stopped."""
    import signal

    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def forget_signals() -> None:
    """A new command begins (cli.main): the stop signals an earlier one in this process received are not its own."""
    _received.clear()


def handling_stop() -> bool:
    """A stop signal's exception is being handled in this thread (the run is stopping: its `except` and `finally`
    blocks record what was committed, finish the `runs` row, flush the checkpoint, release the lock)."""
    import sys

    exc = sys.exc_info()[1]
    while exc is not None:
        if isinstance(exc, (KeyboardInterrupt, Stopped)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def raise_lost_stop() -> None:
    """At a stage boundary: a stop signal whose exception was lost where it was raised is raised again. Python runs
    a signal's handler wherever the main thread is, and what it raises inside a finaliser the garbage collector
    runs (a `__del__`, a weakref callback: "Exception ignored in ...") is dropped: the run went on, committed and
    exited 0 (CI: SIGUSR1 while the workers started)."""
    import threading

    if _received and threading.current_thread() is threading.main_thread() and not handling_stop():
        raise stop_for(_received[0])


def quiet_lost_stops(hook: Callable) -> Callable:
    """A sys.unraisablehook that does not print a stop signal's exception dropped in a finaliser ("Exception
    ignored in ... Traceback": the run stops at its next stage, raise_lost_stop) and gives `hook` the rest."""
    if getattr(hook, "quiet_lost_stops", False):  # (a second command in this process)
        return hook

    def said(unraisable) -> None:
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Stopped)) and _received:
            return
        if hook is not sys.__unraisablehook__:  # (another's hook: a test runner's)
            hook(unraisable)
            return
        # Python's own, masked: "Exception ignored in: <aiohttp session ...>" and its traceback quote what the object
        # and the exception hold (a request's URL with its SAS), printed past every masked message and log line
        said_in = f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n" \
            if unraisable.object is not None else f"{unraisable.err_msg or 'Exception ignored'}\n"
        _write_masked(said_in, unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)

    said.quiet_lost_stops = True  # type: ignore[attr-defined]
    return said


def masked_thread_exceptions(args) -> None:
    """A threading.excepthook: Python's "Exception in thread ..." and its traceback with secrets masked, as the log's
    (an exception raised in a worker thread of the SDK's quotes the request it made: its URL, its SAS)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _write_masked(f"Exception in thread {name}:\n", args.exc_type, args.exc_value, args.exc_traceback)


def _write_masked(first: str, exc_type, exc_value, exc_traceback) -> None:
    import traceback

    from .urls import scrub

    try:
        sys.stderr.write(scrub(first + "".join(traceback.format_exception(exc_type, exc_value, exc_traceback))))
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # (no stderr left: a closed pipe, a daemon's)
        pass


# Stop signals held off while a few renames put a set of files in place (held_signals): raised at its end.
_held: list[int] | None = None


def holding_signal(signum: int) -> bool:
    """The stop signal `signum` came inside held_signals: kept, to be raised at its end (cli's handlers ask)."""
    if _held is None:
        return False
    _held.append(signum)
    return True


@contextmanager
def held_signals() -> Iterator[None]:
    """A stop signal (SIGTERM, Ctrl-C, ...) that comes inside is raised when the block ends, not in it (a block
    of a few renames that must all be done, or none). SIGKILL cannot be held: keep the block short."""
    global _held
    outer, _held = _held, []
    try:
        yield
    finally:
        held, _held = _held, outer
        if held:
            # the first: it asked to stop (SIGHUP then SIGTERM was said as SIGTERM; signals_deferred, the
            # handlers while a stop is under way, keep the first too)
            note_signal(held[0])
            raise stop_for(held[0])


def signal_behind(exc: BaseException) -> BaseException | None:
    """The Stopped or KeyboardInterrupt `exc` is, or stands for (an error raised after a stop signal arrived);
    None when no stop signal arrived."""
    if isinstance(exc, (Stopped, KeyboardInterrupt)):
        return exc
    if not _received:
        return None
    stop = stop_for(_received[-1])
    for said in ("committed", "outcome"):  # what the wrapped error knew was recorded
        if getattr(exc, said, None) is not None:
            setattr(stop, said, getattr(exc, said))
    return stop


class LibraryPanic(RuntimeError):
    """A panic in a library's Rust code (polars): pyo3 raises it as PanicException, a BaseException, which passed
    every `except Exception`: a traceback, exit code 1 ("findings") and the run's `runs` row left unfinished."""


@contextmanager
def signals_unwrapped() -> Iterator[None]:
    """Inside, an error a library raised in place of a stop signal (DuckDB wraps what our handler raises while it
    calls back into Python) is raised as that signal (signal_behind), and a Rust panic as a LibraryPanic (an
    Exception: failed as any other error is)."""
    try:
        yield
    except Exception as exc:
        stop = signal_behind(exc)
        if stop is None:
            raise
        raise stop from exc
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":  # (pyo3_runtime's: not importable by name)
            raise
        raise LibraryPanic(f"a library panicked: {exc}") from exc
