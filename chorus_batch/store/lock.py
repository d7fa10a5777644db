"""One run at a time per manifest: an OS file lock (flock on POSIX, msvcrt on Windows, via
filelock), released by the OS when its holder exits or is killed; a side file names the
holder so that a second run can say who it waits for."""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import shlex
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ChorusError, ManifestError, ManifestLocked, UsageError, WriteError, pass_db
from ..fsutil import OWNER_ONLY, file_above, other_owner
from ..times import iso, parse_time, utc_now
from .schema import SCHEMA_VERSION


def user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without passwd entries
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _cannot_lock(db: Path, lock_path: Path, exc: OSError) -> ChorusError:
    """Why the lock file cannot be made or opened, and what to do: the real reason, not a guess."""
    a_file = file_above(db)
    if a_file is not None:  # (mkdir says "File exists", open "Not a directory": neither names the file)
        return UsageError(f"the manifest's folder cannot be made: {a_file} is a file, not a folder",
                          where=str(db), fix=pass_db("a path in a folder (or where one can be made)", run=True))
    if lock_path.is_symlink():  # (O_NOFOLLOW: ELOOP, "Too many levels of symbolic links")
        return ManifestError(f"the manifest's lock file is a symbolic link (to {os.readlink(lock_path)}); a run does not "
                             "lock through one, nor write where it points", where=str(lock_path),
                             fix="remove the link (the lock file is an ordinary empty file a run makes itself), then "
                                 "run again")
    reason = exc.strerror or str(exc)
    if lock_path.is_dir():  # (EISDIR: "an ordinary file system this user can write" it was, and said so)
        return ManifestError(f"the manifest's lock file {lock_path.name} is a folder; a run locks an ordinary empty "
                             "file of that name, and did nothing", where=str(lock_path),
                             fix="move that folder away (or remove it, if nothing of yours is in it: chorus-batch "
                                 "never makes one there), then run again")
    owner = other_owner(lock_path) if isinstance(exc, PermissionError) else None
    if owner is not None:
        return ManifestError(f"the manifest's lock file belongs to another user, {owner}, and this user cannot open "
                             f"it: {reason}", where=str(lock_path),
                             fix=f"run as {owner.split(' (')[0]}; or, once no run of theirs is going on, have them (or "
                                 "root) remove the lock file: it holds nothing between runs")
    if isinstance(exc, PermissionError) and _read_only(lock_path):  # this user's own file, made read-only by hand
        return ManifestError(f"the manifest's lock file is read-only, and a run opens it to write: {reason}",
                             where=str(lock_path),
                             fix=f"make it writable (chmod u+w {shlex.quote(str(lock_path))}; on Windows, clear its "
                                 "read-only attribute), or remove it once no run is going on: it holds nothing between "
                                 "runs; then run again")
    if isinstance(exc, PermissionError) and not os.access(db.parent, os.W_OK) or exc.errno == errno.EROFS:
        # An output the command line names where this user cannot write: a setting to fix, nothing done, exit 2 as
        # for every other output (`registry --out`, `testdata`, `--parquet`, `import-journal --db`); it was exit 3,
        # a failure, and a cron wrapper told a night's failure from a line to fix by it. WriteError maps the errno.
        fix = (pass_db("a path in a folder this user can write", run=True)
               + " (the lock and the manifest's -wal file live beside it)" if exc.errno != errno.EROFS
               else pass_db("a path on a writable file system", run=True))
        return WriteError(f"cannot create or open the manifest's lock file: {reason}", where=str(lock_path), fix=fix,
                          cause=exc)
    elif exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # (the file was made; its lock is what failed)
        return ManifestError(f"the file system holding the manifest cannot lock files ({reason}): an NFS mount whose "
                             "lock service is not reachable, or a FUSE file system; unlocked, two runs could both "
                             "write the manifest, so this one did nothing", where=str(lock_path),
                             fix="start the NFS lock service (rpc.statd, lockd on the server) and run again, or keep "
                                 "the manifest on a local file system (move it with the files beside it, "
                                 f"{pass_db('that path', run=True)})")
    elif exc.errno == errno.ENOSYS:  # (flock not implemented by this mount at all)
        return ManifestError(f"the file system holding the manifest does not lock files ({reason}): a Lustre mount "
                             "without the flock option, or a FUSE or network file system; unlocked, two runs could "
                             "both write the manifest, so this one did nothing", where=str(lock_path),
                             fix="have it mounted with file locks (Lustre: -o flock), or keep the manifest on a local "
                                 "file system (move it with the files beside it, "
                                 f"{pass_db('that path', run=True)})")
    else:
        fix = (pass_db("a path on an ordinary file system this user can write", run=True) + " (the lock, the state "
               "cache and the manifest's -wal file are made beside it)")
    return ManifestError(f"cannot create or open the manifest's lock file: {reason}", where=str(lock_path), fix=fix)


def _read_only(path: Path) -> bool:
    """`path` is a file without its owner's write bit (by its mode: os.access says yes to root whatever the mode; on
    Windows the mode shows the read-only attribute)."""
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IWUSR


def _command_names() -> set[str]:
    from ..cli import COMMANDS  # (the command line's table; cli imports nothing heavy)

    return set(COMMANDS)


def command_of(argv: list[str]) -> str | None:
    """The chorus-batch command an argument list runs, by name (None when it names none: `chorus-batch --site DIR`,
    or a library caller's own arguments). Never an argument: they may name secret places (a SAS URL, a glob)."""
    first = next((word for word in argv if not word.startswith("-")), None)  # (as cli._parse reads it)
    return first if first in _command_names() else None


ARRAY_FIX = ("to split a site over a job array, each task writes its own shard (`chorus-batch run --staging DIR`: "
             "the shard is its SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT) and one merge job after the array "
             "commits them (`chorus-batch run --merge DIR`): `chorus-batch slurm-script` prints that script, `run "
             "--slurm` submits and follows it; to run the whole site once, submit it as one job, without --array")


def _slurm_task() -> str | None:
    """This process's Slurm array task, `<array job>_<task>`, recorded with the lock's holder; None outside one."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else None


def _same_array(holder_task: str | None) -> tuple[str, str] | None:
    """(who, what happened) when this process is a task of a Slurm job array whose other task holds the lock (or one
    whose holder is not said yet, every task starting at once): a plain `run` in an array runs the whole site in
    every task (the shard is taken from the array only with --staging), and N-1 tasks were told "run it again once
    that run has finished", the whole site again."""
    own = _slurm_task()
    count = os.environ.get("SLURM_ARRAY_TASK_COUNT", "")
    if own is None or (count.isdigit() and int(count) < 2):
        return None
    array = own.rpartition("_")[0]
    if holder_task is not None and holder_task.rpartition("_")[0] == array:
        who = f"task {holder_task}"
    elif holder_task is None:
        who = "what is likely another task"
    else:
        return None
    return who, (f"the tasks of job array {array} each run `chorus-batch run` into this manifest, and a plain run "
                 "lists and commits the whole site (a task takes its shard from the array only with --staging): one "
                 "at a time at most, the others refused or running the whole site again after it")


def _holder_of(info: dict) -> str:
    """The holder a lock's details name: 'pid 12 on host h (user u), started T, `chorus-batch run`'."""
    holder = f"pid {info['pid']} on host {info['host']} (user {info['user']}), started {info['started_at']}"
    if info.get("command") in _command_names():  # which command holds it (its name only; see command_of)
        holder += f", `chorus-batch {info['command']}`"
    if isinstance(info.get("slurm_job"), str):  # (a merge's: its job to look up, squeue -j)
        holder += f", Slurm job {info['slurm_job']}"
    return holder


# The commands that upgrade an older manifest under the run lock before anything else (Manifest.ensure_schema)
# (`upload`, `verify` and `mark-uploaded` too: they take the run lock only to upgrade first, submit/upload._upgraded; a
# reader turned away meanwhile was told to upgrade the manifest, a second upgrade the lock refuses)
UPGRADING_COMMANDS = frozenset({"upgrade", "run", "validate", "import-journal", "upload", "verify", "mark-uploaded"})


def upgrade_under_way(db: Path, version: int) -> str | None:
    """The holder of the run lock beside `db` when its details name a command of a release that upgrades a manifest
    of schema `version` first; None otherwise. Read without taking the lock (a reader taking it for a moment would
    turn away a run starting then). The details of a killed holder stay until the next lock: whether it still runs
    is not told here."""
    try:
        info = json.loads(_details(Path(f"{db}.lock.json")).decode("utf-8"))
        upgrades = info.get("command") in UPGRADING_COMMANDS and int(info.get("schema", 0)) > version
        return _holder_of(info) if upgrades and not _gone(info) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _gone(info: dict) -> bool:
    """The details name a process of this host that is no longer there (a killed upgrade's, whose side file stays):
    no upgrade is under way. A reader said "locked by pid N ... try again later" (exit 4) night after night of a
    process long dead (or of its pid reused after a reboot), until someone upgraded by hand. Another host's process
    cannot be told from here (kept)."""
    if os.name != "posix" or info.get("host") != socket.gethostname():
        return False  # (os.kill(pid, 0) on Windows ends the process)
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # (another user's: there)
        pass
    # The holder's own start, as the kernel counts it since boot (written by this release): which process it was,
    # whatever the clock did. By the wall clock alone, a clock stepped forward while the holder ran (NTP correcting a
    # VM's clock) made the live holder look started after its details, and a refused run said "left by a holder that
    # is gone" of the run it waited on.
    boot, ticks = info.get("boot_id"), info.get("proc_start")
    if isinstance(boot, str) and isinstance(ticks, int) and not isinstance(ticks, bool):
        now_boot, now_ticks = _boot_id(), _process_ticks(pid)
        if now_boot is not None and now_ticks is not None:
            return now_boot != boot or now_ticks != ticks
    # A pid in use now may be another process's: after a reboot (or the pids wrapping round) the holder's pid went to
    # a daemon, and the reader said "locked by pid N" of it, exit 4, every night. One started after the holder wrote
    # its details is not it.
    began = _process_started(pid)
    since = parse_time(str(info.get("started_at", "")))
    return began is not None and since is not None and began > since.timestamp() + _START_SLACK_S


_START_SLACK_S = 5  # (started_at is to the second, a process's start to the clock tick; a clock stepped a little)


def _process_ticks(pid: int | str) -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux: /proc/PID/stat's field 22; None where not known)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()
        return int(fields[19])  # (field 22, starttime, counted after the name)
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    """This boot's id (Linux; None where not known): a pid of another boot is never the same process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip() or None
    except (OSError, ValueError):
        return None


def _process_started(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (Linux: /proc; None where not known)."""
    ticks = _process_ticks(pid)
    try:
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return None if ticks is None else boot + ticks / os.sysconf("SC_CLK_TCK")


def write_holder(holder_path: Path, extra: dict) -> None:
    """Write the details of this process, the holder of a lock, beside it (pid, host, user, started_at, `extra`)."""
    with contextlib.suppress(OSError):  # only informs a second run; the lock itself holds
        # Made new, never opened through what is there (a link planted beside the manifest: its target was
        # overwritten): a stale one of a killed run is removed first; O_EXCL follows no link.
        with contextlib.suppress(FileNotFoundError):
            holder_path.unlink()
        fd = os.open(holder_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), OWNER_ONLY)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "user": user_name(),
                       "started_at": iso(utc_now()), "boot_id": _boot_id(), "proc_start": _process_ticks("self"),
                       **extra}, f)


def _details(holder_path: Path) -> bytes:
    """The bytes of a lock's details, read without waiting: a named pipe (or device) planted in their place held a
    refused run (or a reader asking whether an upgrade is under way) forever, where it is to exit 4 at once."""
    fd = os.open(holder_path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not an ordinary file")
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def _left_behind(holder_path: Path) -> dict | None:
    """The details a holder left when it ended without its clean-up (SIGKILL, a job time limit, a reboot: an ending it
    had a word in removes them), read once this process holds the lock; None when there are none, or none to read."""
    try:
        info = json.loads(_details(holder_path).decode("utf-8"))
        _holder_of(info)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return info if isinstance(info, dict) else None


def killed_upgrade(db: Path, version: int) -> str | None:
    """The holder of the run lock beside `db` whose details name a command that upgrades a manifest of schema `version`
    first, and whose process (of this host) is gone: killed before or while it upgraded it (the upgrade was undone).
    None otherwise, or when it cannot be told (another host's)."""
    try:
        info = json.loads(_details(Path(f"{db}.lock.json")).decode("utf-8"))
        upgrades = info.get("command") in UPGRADING_COMMANDS and int(info.get("schema", 0)) > version
        return _holder_of(info) if upgrades and _gone(info) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def live_holder(holder_path: Path) -> str | None:
    """The holder the lock's details at `holder_path` name, unless they are a holder's of this host that is gone
    (left by a killed one); None when there are none. Read without taking the lock."""
    try:
        info = json.loads(_details(holder_path).decode("utf-8"))
        return None if _gone(info) else _holder_of(info)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def running_run(db: Path) -> str | None:
    """The holder of the run lock beside `db` when its details name a `chorus-batch run` still going (one of another
    host cannot be told gone: named too); None otherwise. Read without taking the lock: what a dry run, which takes
    none, says of the hash checkpoint it reads (that run's, not an interrupted one's)."""
    try:
        info = json.loads(_details(Path(f"{db}.lock.json")).decode("utf-8"))
        return _holder_of(info) if info.get("command") == "run" and not _gone(info) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def holder_named(holder_path: Path) -> str | None:
    """The holder the details at `holder_path` name ('pid 12 on host h (user u), started T'); None if none are there."""
    try:
        return _holder_of(json.loads(_details(holder_path).decode("utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _holder_now(holder_path: Path) -> tuple[str, dict]:
    """Who holds a lock this process was refused, as its details beside it say, and those details ({} when they name
    no holder). Details of a process of this host that is gone are a killed holder's, left behind (SIGKILL runs no
    clean-up): the holder that took the lock since has not written its own yet. Naming the dead one, the refusal
    said "locked by pid N ... (if that process is gone, its lock went with it)" of a pid `ps` shows gone."""
    unknown = "an unknown process (it has not written its details yet)"
    try:
        text = _details(holder_path)
    except FileNotFoundError:
        return unknown, {}
    except OSError as exc:
        return f"an unknown process (its details, {holder_path.name}, cannot be read: {exc.strerror or exc})", {}
    try:
        info = json.loads(text.decode("utf-8"))
        holder = _holder_of(info)
    except (ValueError, KeyError, TypeError, AttributeError):
        # (empty or cut: being written this instant, or by a holder whose disk filled as it wrote them)
        return (unknown if not text.strip() else
                f"an unknown process (its details, {holder_path.name}, are cut short or damaged)"), {}
    if _gone(info):
        return (f"a process that has not written its details yet (those there, of pid {info['pid']} started "
                f"{info['started_at']}, were left by a holder that is gone)"), {}
    return holder, info


@contextlib.contextmanager
def manifest_lock(db: Path, argv: list[str], *, kind: str = "run") -> Iterator[dict | None]:
    """Exclusive for one run (kind "run"), or one upload (kind "upload": a run may go on beside it, each
    writes its own tables in short transactions); a second one fails at once, naming the holder. Yields the details
    a holder before it left behind (_left_behind): one that ended without a word, for the caller to record."""
    suffix = ".lock" if kind == "run" else f".{kind}.lock"
    lock_path, holder_path = Path(f"{db}{suffix}"), Path(f"{db}{suffix}.json")
    # Never a "soft" lock (the file's being there) where flock fails with ENOSYS (Lustre mounted without -o flock, some
    # FUSE mounts): filelock fell back to one, found the file every run makes here, and every run, the first too, was
    # told "locked by another run: an unknown process", exit 4, night after night.
    lock = FileLock(lock_path, timeout=0, mode=OWNER_ONLY, fallback_to_soft=False)
    try:
        if not db.exists():
            from .manifest import require_folder

            require_folder(db)  # (a lock beside a missing manifest would make its folder)
        # Opened here first: filelock takes a lock file it cannot create (ENOENT, as in /proc) for one held by another.
        # Never through a symbolic link planted there: it made the file it points to (as root under cron, anywhere).
        # Where os.open has no O_NOFOLLOW (Windows: a symbolic link made with mklink, by an administrator or in
        # developer mode), it followed the link and made its target before filelock, which opens no reparse point,
        # turned the run away as "locked by an unknown process": looked at first there (said as on POSIX).
        if not hasattr(os, "O_NOFOLLOW") and lock_path.is_symlink():
            raise OSError(errno.ELOOP, "the lock file is a symbolic link", str(lock_path))
        os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), OWNER_ONLY))
        lock.acquire()
    except Timeout:
        holder, info = _holder_now(holder_path)
        # The command turned away, by name when it is not `kind` itself: `upgrade`, `validate --force`, `registry`
        # or `import-journal` were told "this run did nothing".
        own = command_of(argv)
        this = f"this `chorus-batch {own}`" if own is not None and own != kind else f"this {kind}"
        task, held = (value if isinstance(value, str) else None  # (hand-edited details: a number, a list)
                      for value in (info.get("slurm_task"), info.get("command")))
        array = _same_array(task) if kind == "run" and own == "run" else None
        if array is not None:
            raise ManifestLocked(f"the manifest is locked by {array[0]} of this Slurm job array: {holder}; {array[1]}",
                                 where=str(lock_path), fix=f"{this} did nothing; {ARRAY_FIX}") from None
        # the holder as what it is: a `validate --force` or `registry` holding the run lock is no "other run"
        other = kind if held in (None, kind) or held not in _command_names() else "command"
        if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
            # A library caller's own process (a notebook's run() in a thread, or one cell's run still going while
            # another's starts): "pid N ... if that process is gone" sent them looking for another process
            raise ManifestLocked(
                f"the manifest is locked by another {other} in this same process: {holder} (another thread, or a "
                "notebook cell still running, called it)", where=str(lock_path),
                fix=f"{this} did nothing; call it again once that {other} has returned (one at a time per manifest)",
            ) from None
        host = info.get("host")
        if isinstance(host, str) and host != socket.gethostname():
            # (a manifest on a share that two hosts mount: `ps` here cannot show that process, and a host that
            # crashed does not let go of its lock at once: the file server holds it for that host a while)
            gone = (f"look for pid {info.get('pid')} on host {host}: if that host crashed or lost the share, the file "
                    "server lets go of its lock once that host is back, or after its lease time, about 90 s on NFSv4")
        else:
            gone = "if that process is gone, its lock went with it"
        raise ManifestLocked(
            f"the manifest is locked by another {other}: {holder}",
            where=str(lock_path),
            # (said: a cron log shows this line alone, and exit 4 is not in everyone's head)
            fix=f"{this} did nothing; run it again once that {other} has finished ({gone})",
        ) from None
    except OSError as exc:
        raise _cannot_lock(db, lock_path, exc) from None
    try:
        left = _left_behind(holder_path)
        write_holder(holder_path, {"command": command_of(argv), "slurm_task": _slurm_task(), "schema": SCHEMA_VERSION})
        yield left
    finally:
        _remove_own_holder(holder_path)
        lock.release()


def _remove_own_holder(holder_path: Path) -> None:
    """Remove the details beside a lock if they are this process's. A clean-up job that deleted the lock file while
    a run went on let a second run lock and write its own details; the first, ending, removed those, and a third run
    was told of "an unknown process" holding the lock."""
    try:
        info = json.loads(_details(holder_path).decode("utf-8"))
        ours = info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()
    except (OSError, ValueError, TypeError, AttributeError):
        ours = True  # (cut short or damaged: not another holder's that can be told)
    if ours:
        with contextlib.suppress(OSError):
            holder_path.unlink()
