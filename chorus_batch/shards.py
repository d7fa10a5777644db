"""Sites beyond one node: shards scan, one merge commits.

  run --shard K/N --staging DIR   lists and hashes shard K of N (person folders by a stable hash;
                                  OMOP/, Metadata/ and root files in shard 0), reusing the MD5s of the
                                  latest version read-only, and writes its ScanResult to
                                  DIR/shard-K-of-N/ (scan.json last: the completion record). It never
                                  writes the manifest and takes no lock, so N of them run at once.
  run --merge DIR                 reads the N shards back, checks that they are all there, complete and
                                  based on the manifest's latest version, and hands the merged
                                  ScanResult to the usual commit (pipeline.run): the same manifest a
                                  single-node run would give.

Under a Slurm job array the shard comes from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .config import RunSettings, parse_bytes
from .errors import ChorusError, UsageError
from .exclude import Excludes, same_globs
from .frames import empty_state
from .coverage import BUCKETS, top_bucket
from .partitions import BUCKET, TreeParts, bucket_range
from .progress import Progress, log
from .scan import Coverage, ScanResult, merge_scans, recorded_words, scan
from .sources import mask_url
from .store import Manifest
from .units import command_word, plural

_SHARD_DIR = re.compile(r"^shard-([0-9]+)-of-([0-9]+)$")  # (ASCII: as parse_shard)
# Rows per partition of a merge: a partition's previous rows, files and their join take about 800 MB per
# million rows (measured on a 2M-row merge, benchmarks/merge_benchmark.py); 500k keeps a merge near 1 GiB.
PARTITION_ROWS = 500_000
ENV_PARTITION_ROWS = "CHORUS_BATCH_PARTITION_ROWS"  # a site with less memory per task; tests: many small partitions


class MergedAlready(UsageError):
    """The shards were committed already, as version `merged_into` (a merge run twice, a requeued merge job)."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None, merged_into: str):
        super().__init__(what, where=where, fix=fix)
        self.merged_into = merged_into


def shard_folder(staging: str | Path, coverage: Coverage) -> Path:
    return Path(staging) / f"shard-{coverage.shard}-of-{coverage.shards}"


def program_words() -> list[str]:
    """How a shell runs this chorus-batch again: `chorus-batch` when that name on PATH is this environment's, else
    this interpreter with -m. A Slurm job runs `<python> -m chorus_batch`; a merge's "rerun it with: chorus-batch
    run ..." then failed on a login node without the venv on PATH (command not found), or ran another install."""
    import shutil
    import sys

    found = shutil.which("chorus-batch")
    if found and os.path.dirname(os.path.abspath(found)) == os.path.dirname(os.path.abspath(sys.executable)):
        return ["chorus-batch"]
    return [sys.executable, "-m", "chorus_batch"]


def rerun_command(settings: RunSettings, coverage: Coverage, staging: str | Path,
                  arguments: list[str] | None = None) -> str:
    """The command that reruns shard `coverage` into `staging`: with `arguments` (the flags a shard recorded in its
    scan.json: --config, --site, --db, --exclude, ... as it was run), else the merge's own (settings.arguments), else
    the site, manifest and exclusions of the merge's settings. A site that runs from a chorus.toml was told a command
    without its --config: another listing (no [site.roots], [patterns], cloud settings), or none."""
    if arguments is None:
        arguments = settings.arguments
    if arguments is None:
        # with the merge's exclusions: a shard listed with other globs is refused by the merge (read_shards)
        arguments = ["--site", mask_url(settings.site), "--db", str(settings.db)]
        arguments += [word for p in dict.fromkeys(settings.exclude) for word in ("--exclude", p)]
        arguments += [] if settings.default_excludes else ["--no-default-excludes"]
    return _with_secrets_said(shlex.join([*program_words(), "run", *arguments, "--shard",
                                          f"{coverage.shard}/{coverage.shards}", "--staging",
                                          os.path.abspath(staging)]))  # (a merge given a relative folder: any folder)


def merge_command(arguments: list[str] | None, staging: str | Path) -> str:
    """The command that merges the shards in `staging`, with a shard's recorded `arguments`."""
    return _with_secrets_said(shlex.join([*program_words(), "run", *(arguments or []), "--merge",
                                          os.path.abspath(staging)]))


def _with_secrets_said(command: str) -> str:
    """A command told to be run again, and, when it holds a secret masked as it was recorded (a SAS in --site's URL),
    what to do: the rerun as told was refused by the storage ("***" is no token) with nothing saying why."""
    if "***" not in command:
        return command
    return (command + " (put the secret shown as *** back: it is never recorded; or give the SAS token in "
            "AZURE_STORAGE_SAS_TOKEN and the URL without it)")


def _other_manifest(arguments: list[str] | None, db: str | Path) -> str | None:
    """The manifest a shard's recorded flags name (`--db`) when it is not `db` (by the file it is), else None (the
    same, or not said: a --db given in chorus.toml)."""
    recorded = config = None
    for position, word in enumerate(arguments or []):
        if word in ("--db", "--config") and position + 1 < len(arguments or []):
            if word == "--db":
                recorded = (arguments or [])[position + 1]
            else:
                config = (arguments or [])[position + 1]
        elif word.startswith("--db="):
            recorded = word.split("=", 1)[1]
    if recorded is None and config is not None:
        # (a --db in the shard's chorus.toml, [manifest] db: two sites' config files with one --staging were not told
        # apart, and the second's shards were written over the first's)
        recorded = _config_db(config)
    if recorded is None or "://" in recorded:
        return None
    return None if os.path.realpath(recorded) == os.path.realpath(db) else recorded


def _config_db(config: str) -> str | None:
    """The manifest a config file's [manifest] db names (resolved as a run resolves it), or None (none, or unreadable)."""
    from .config_file import read_toml, resolve_path

    with contextlib.suppress(ChorusError, OSError, ValueError, TypeError, AttributeError):
        manifest = read_toml(config).get("manifest")
        value = manifest.get("db") if isinstance(manifest, dict) else None
        if isinstance(value, str):
            return resolve_path(Path(config).parent, value, f"{config} [manifest] db")
    return None


def _other_manifests_shard(folder: Path, db: str | Path) -> tuple[dict, int, list | None, str] | None:
    """(its scan.json's record, when that was written (ns), the arguments it records, the other manifest) of a shard
    folder written for another manifest than `db`; None if the folder holds no readable record, or one of `db`'s."""
    try:
        record = json.loads((folder / "scan.json").read_text("utf-8"))
        written_ns = (folder / "scan.json").stat().st_mtime_ns
    except (OSError, ValueError):
        return None
    arguments = record.get("arguments") if isinstance(record, dict) else None
    arguments = arguments if isinstance(arguments, list) else None
    other = _other_manifest(arguments, db)
    return None if other is None else (record, written_ns, arguments, other)


def _refuse_another_manifests_shard(folder: Path, coverage: Coverage, db: str | Path) -> None:
    """A UsageError if `folder` holds a complete shard written for another manifest (its scan.json's `--db`) that this
    one would write over: two manifests (two sites, or one site's two) given one --staging folder one after the other
    wrote the second's shards over the first's, which its merge then refused as another site's, with nothing left to
    merge and the whole site to hash again. Such a shard is refused while that manifest can still merge it (not
    merged: no run of it ended since the shard was written with a listing begun before it; nor stale: that manifest
    still at the version it reused), and always in a job array task of a Slurm submission (the script exports
    CHORUS_STAGING, this staging folder): the submission refused to start over another manifest's unmerged shards, so
    that one was written since, by another submission into the same --staging at the same time."""
    found = _other_manifests_shard(folder, db)
    if found is None:
        return
    record, written_ns, arguments, other = found
    submitted = os.environ.get("CHORUS_STAGING")
    if submitted and os.path.realpath(submitted) == os.path.realpath(folder.parent):
        raise UsageError(f"{coverage} was not written: {folder.absolute()} holds that shard of another manifest, "
                         f"{other}, written since this submission was queued (another submission gave its jobs the "
                         "same --staging at the same time); written over, that manifest's merge would commit this "
                         "site's files and this one's would find its shards gone; nothing was written, and this "
                         "submission's merge is cancelled with this task", where=str(folder.absolute()),
                         fix="submit this manifest's jobs again with a --staging of their own (or without --staging: "
                             "each submission then makes its own folder beside its manifest)")
    if not unmerged_elsewhere(record, other, written_ns):
        return
    from datetime import datetime, timezone

    from .times import iso

    when = iso(datetime.fromtimestamp(written_ns / 1e9, timezone.utc))
    raise UsageError(f"{coverage} was not written: {folder.absolute()} holds that shard of another manifest, {other}, "
                     f"written {when} and not merged yet; written over, that manifest's merge would find "
                     "its shard gone (or another site's in its place) and its site would have to be hashed again; "
                     "nothing was listed or written", where=str(folder.absolute()),
                     fix="give this manifest's shards a --staging folder of their own; or merge that manifest's shards "
                         f"first ({merge_command(arguments, folder.parent)}), then run this one again; or, if that "
                         f"manifest has no use for them, remove them: rm -r "
                         f"{shlex.quote(os.path.abspath(folder.parent))}/shard-*-of-{coverage.shards}")


def unmerged_elsewhere(record: dict, other: str, written_ns: int) -> bool:
    """Whether the shard recorded as `record` (its scan.json), written at `written_ns` for the manifest `other`, can
    still be merged there: that manifest is still at the version the shard reused (none yet: none made, or empty) and
    no run of it took the shard (Manifest.took_shard). Unreadable, or not a manifest: assumed so (kept)."""
    from datetime import datetime, timezone

    from .times import iso

    based_on, started = record.get("based_on"), record.get("scan_started_ns")
    try:
        manifest = Manifest(other)
        if manifest.schema_on_disk() is None:
            return based_on is None
        latest = manifest.latest_version()
        if (latest["label"] if latest else None) != based_on:
            return False  # stale there: of no use to it
        if not isinstance(started, int):
            return True
        written = iso(datetime.fromtimestamp(written_ns // 10**9, timezone.utc))
        return not manifest.took_shard(started, written)
    except (ChorusError, OSError, sqlite3.Error, TypeError, KeyError):
        return True


def submission_may_clear(staging: str, db: str, shards: str) -> int:
    """The Slurm script's check before it removes the completion records (scan.json) of the shard-K-of-N folders in
    a --staging folder it reuses: 0 when it may; else 4, having said on stderr which of them hold shards of another
    manifest that manifest can still merge (unmerged_elsewhere). A second manifest's submission into the first's
    --staging removed them, and the first's merge, pending or run again by hand, found every shard "incomplete"."""
    import sys

    from .slurm import REFUSED_BUSY

    held: dict[str, list[tuple[Path, list | None]]] = {}
    for folder in sorted(Path(staging).glob(f"shard-*-of-{int(shards)}")):
        found = _other_manifests_shard(folder, db)
        if found is not None and unmerged_elsewhere(found[0], found[3], found[1]):
            held.setdefault(found[3], []).append((folder, found[2]))
    if not held:
        return 0
    other, folders = next(iter(held.items()))
    names = ", ".join(folder.name for folder, _arguments in folders)
    sys.stderr.write(f"{REFUSED_BUSY}: the staging folder {staging} holds shards of another manifest, {other} (their "
                     f"--db), not merged yet ({names}): this submission would remove their completion records, and "
                     "that manifest's merge would find them incomplete and its site would have to be hashed again; "
                     "nothing was submitted; give --staging another folder (or none: each submission then makes its "
                     "own beside its manifest), or merge them into that manifest first: "
                     f"{merge_command(folders[0][1], staging)}, or, if it has no use for them, remove them: rm -r "
                     f"{shlex.quote(os.path.abspath(staging))}/shard-*-of-{int(shards)}; then submit again\n")
    return 4


def _once_merged(part: ScanResult, other: str, folder: Path) -> str:
    """How a merge's "rerun it for this one" is said of a shard of another manifest `other` in `folder`: the rerun is
    refused while that manifest can still merge the shard (_refuse_another_manifests_shard), and was told as if not."""
    try:
        written_ns = (folder / "scan.json").stat().st_mtime_ns
    except OSError:
        return ""
    record = {"based_on": part.based_on, "scan_started_ns": part.scan_started_ns}
    return (" (once that one has merged them, or they are removed: a shard is not written over another manifest's that "
            "it can still merge)" if unmerged_elsewhere(record, other, written_ns) else "")


def _split_manifest(folders: list[Path], db: str | Path) -> str | None:
    """The other manifest (`--db`) every complete shard of one split was written for, or None (this one's, not
    said, or no shard complete)."""
    named = set()
    for folder in folders:
        try:
            record = json.loads((folder / "scan.json").read_text("utf-8"))
        except (OSError, ValueError):
            continue
        arguments = record.get("arguments") if isinstance(record, dict) else None
        named.add(_other_manifest(arguments if isinstance(arguments, list) else None, db))
    return next(iter(named)) if len(named) == 1 else None


def _written_ns(folder: Path) -> int:
    """When a shard folder was last written: which split in a staging folder is the latest. A complete shard's listing
    started when its scan.json records: a staging folder copied (`cp -r`, rsync without -t) gave every file the time
    of the copy, and the split copied last, an older one, was merged as the latest, the newer said "older" and left
    out (a version of an old listing). One without a readable record: its scan.json's or its folder's modification."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        started = json.loads((folder / "scan.json").read_text("utf-8")).get("scan_started_ns")
        if isinstance(started, int) and not isinstance(started, bool) and 0 < started < 2**63:  # (as ScanResult reads)
            return started
    times = []
    for path in (folder, folder / "scan.json"):
        with contextlib.suppress(OSError):
            times.append(path.stat().st_mtime_ns)
    return max(times, default=0)


def _symlinks_text(follow: bool | None) -> str:
    return "following symbolic links (--follow-symlinks)" if follow else "without following symbolic links"


def _patterns_text(patterns: list[tuple[str, str]] | None) -> str:
    if patterns is None:
        return "(not recorded: a shard of an older release)"
    user = [p for source, p in patterns if source == "user"]
    defaults = any(source == "default" for source, _p in patterns)
    return (", ".join(repr(p) for p in user) or "no --exclude") + ("" if defaults else ", --no-default-excludes")


@dataclass
class ShardReport:
    coverage: Coverage
    folder: Path
    based_on: str | None
    n_files: int
    n_hashed: int
    bytes_hashed: int
    n_errors: int
    elapsed_s: float
    n_excluded: int = 0


STAGING_LOCK = ".staging.lock"
MERGE_HOLDER = ".staging.lock.json"  # the details of the merge holding it
SHARD_FILES = ("scan.json", "files.parquet", "errors.parquet", "facts.parquet", "linked.parquet")  # what ScanResult.write writes


@contextlib.contextmanager
def staging_lock(staging: str | Path, *, merge: bool, windows: bool = os.name == "nt") -> Iterator[None]:
    """Shards hold the staging folder's lock shared while they scan and write (they run side by side), a merge
    holds it alone while it reads and commits: a shard rerun during a merge unlinked the scan.json the merge had
    checked and replaced the files it was reading partition by partition (a version of two scans). Either one that
    finds the other is refused at once (exit 4)."""
    from .errors import ManifestLocked
    from .store.lock import holder_named, write_holder

    def busy(fd: int) -> Exception:
        # Held shared (shards) or alone (another merge: a merge run twice at once, a requeued merge job): a merge
        # told "shards are still being written" of another merge was sent to wait for shards that had ended.
        path = Path(staging) / STAGING_LOCK
        # (the merge's own details: a requeued merge job, or a shard rerun, was told "another merge" and no more:
        # which of a cluster's nodes, since when, was for the user to find)
        holder = holder_named(Path(staging) / MERGE_HOLDER)
        by = f" (that merge: {holder})" if holder is not None else ""
        if merge and not _lockable(fd, exclusive=False, windows=windows):
            return ManifestLocked(f"another merge is reading and committing the shards in {staging}: this one "
                                  f"cannot merge them too; nothing was committed by this one{by}", where=str(path),
                                  fix="wait for that merge to end (its output or its job's log says what it "
                                      "committed); these shards are then merged")
        return ManifestLocked(
            (f"shards are still being written into {staging}: cannot merge it now" if merge else
             f"a merge is reading the shards in {staging}: this shard cannot be written there now{by}"),
            where=str(path),
            fix=("wait for the shards to finish (`squeue`), then merge" if merge else
                 "wait for the merge to end; if it then says this shard is stale, rerun it (or "
                 f"{submit_again()}: a new staging folder)"))

    # (a merge given a folder it cannot write was told "give a --staging folder", an option a merge does not take)
    cannot = ("make that folder writable by this user (the merge locks it and spills beside the shards), or merge as "
              "the user who ran the shards" if merge else None)
    with _flock(Path(staging) / STAGING_LOCK, exclusive=merge, busy=busy,
                unlocked="do not rerun a shard while the merge runs", cannot=cannot, windows=windows):
        if not merge:
            yield
            return
        write_holder(Path(staging) / MERGE_HOLDER, {"slurm_job": os.environ.get("SLURM_JOB_ID")})
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                (Path(staging) / MERGE_HOLDER).unlink()


@contextlib.contextmanager
def shard_lock(staging: str | Path, coverage: Coverage, *, windows: bool = os.name == "nt") -> Iterator[None]:
    """One shard written by one process at a time: two runs of shard K at once (a rerun while its array task still
    ran, a requeued task) wrote into one folder, and the merge could take one's files.parquet with the other's
    facts. The second is refused at once (exit 4)."""
    from .errors import ManifestLocked

    path = Path(staging) / f".shard-{coverage.shard}-of-{coverage.shards}.lock"

    def busy(_fd: int) -> Exception:
        return ManifestLocked(f"{coverage} is being written into {staging} by another process (its Slurm task, or "
                              "a rerun of it): this one was not run", where=str(path),
                              fix="wait for it to end (`squeue`, or `ps` on its node), then merge; rerun the shard "
                                  "only if the merge then says it is missing, incomplete or stale")

    with _flock(path, exclusive=True, busy=busy, unlocked="do not run one shard twice at once", windows=windows):
        yield


# Windows' LockFileEx (kernel32): msvcrt.locking, the standard library's, has no shared lock, which the shards hold
# side by side. One byte, at offset 0, of a file that stays empty (locking past its end is allowed there).
_LOCKFILE_FAIL_IMMEDIATELY, _LOCKFILE_EXCLUSIVE_LOCK = 0x1, 0x2
_ERROR_LOCK_VIOLATION, _ERROR_IO_PENDING = 33, 997


def _windows_lock_calls():
    """ctypes, kernel32's LockFileEx and UnlockFileEx (typed), and the OVERLAPPED structure they take (offset 0)."""
    import ctypes
    from ctypes import wintypes

    class Overlapped(ctypes.Structure):
        _fields_ = [("Internal", ctypes.c_void_p), ("InternalHigh", ctypes.c_void_p), ("Offset", wintypes.DWORD),
                    ("OffsetHigh", wintypes.DWORD), ("hEvent", wintypes.HANDLE)]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    lock, unlock = kernel32.LockFileEx, kernel32.UnlockFileEx
    lock.argtypes = [wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
                     ctypes.POINTER(Overlapped)]
    unlock.argtypes = [wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, ctypes.POINTER(Overlapped)]
    lock.restype = unlock.restype = wintypes.BOOL
    return ctypes, lock, unlock, Overlapped


def _os_lock(fd: int, *, exclusive: bool, windows: bool) -> None:
    """The OS lock on the file open as `fd`, alone (`exclusive`) or shared, taken at once: BlockingIOError when
    another process holds it so that it cannot be had; another OSError where there are no file locks (a file
    system without them, or no such call here). flock on POSIX, LockFileEx on Windows: both let go by the OS when
    the file is closed or its process ends, however it ends. (On Windows the import of fcntl failed and the lock
    was skipped without a word: two runs of one shard, or a shard rerun while the merge read, were not refused.)"""
    import errno

    if not windows:
        import fcntl

        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return
    try:
        import msvcrt

        ctypes, lock, _unlock, overlapped = _windows_lock_calls()
        handle = msvcrt.get_osfhandle(fd)
    except (ImportError, AttributeError, OSError) as exc:  # (not Windows' calls: no lock to be had here)
        raise OSError(errno.ENOLCK, f"no Windows file locks here: {exc}") from None
    flags = _LOCKFILE_FAIL_IMMEDIATELY | (_LOCKFILE_EXCLUSIVE_LOCK if exclusive else 0)
    if not lock(handle, flags, 0, 1, 0, ctypes.byref(overlapped())):
        code = ctypes.get_last_error()
        if code in (_ERROR_LOCK_VIOLATION, _ERROR_IO_PENDING):
            raise BlockingIOError(errno.EAGAIN, "locked by another process")
        raise ctypes.WinError(code)


def _os_unlock(fd: int, *, windows: bool) -> None:
    if not windows:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
        return
    import msvcrt

    ctypes, _lock, unlock, overlapped = _windows_lock_calls()
    unlock(msvcrt.get_osfhandle(fd), 0, 1, 0, ctypes.byref(overlapped()))


@contextlib.contextmanager
def _flock(path: Path, *, exclusive: bool, busy: Callable[[int], Exception], unlocked: str,
           cannot: str | None = None, what: str = "the staging folder's lock",
           windows: bool = os.name == "nt") -> Iterator[None]:
    """An OS lock (flock; LockFileEx on Windows) on the file `path`, alone (`exclusive`) or shared, taken at once or
    refused with the exception `busy(fd)` makes (fd: the file, still open). Let go when its holder exits or is
    killed. A file system without locks (some Lustre mounts): said, with the advice `unlocked`, and the caller goes
    on unlocked."""
    from .fsutil import create_private, same_file

    locked = False
    while True:
        try:
            fd = create_private(path, truncate=False)
        except OSError as exc:
            import errno

            # (a read-only file system was told to make the folder writable by this user, or to merge as another)
            read_only = exc.errno == errno.EROFS and (
                "its file system is read-only: " + ("copy the staging folder to a writable file system (cp -r) and "
                                                    "merge the copy, or have it mounted read-write" if cannot else
                                                    "give a --staging folder on a writable one"))
            # (said before any work: a shard has listed nothing, a merge committed nothing)
            raise UsageError(f"cannot create {what}: {exc.strerror or exc}; nothing was "
                             + ("committed" if cannot else "listed or written"), where=str(path),
                             fix=read_only or cannot or "give a --staging folder this user can write") from None
        try:
            _os_lock(fd, exclusive=exclusive, windows=windows)
            locked = True
        except BlockingIOError:
            refusal = busy(fd)
            os.close(fd)
            raise refusal from None
        except OSError as exc:  # no locks on this file system: the merge's checks of scan.json still stand
            log.warning(f"cannot lock {path} ({exc.strerror or exc}): {unlocked}")
        if not locked or same_file(fd, path):
            break
        os.close(fd)  # the last holder removed the file after this one opened it: a lock on it guards nothing
    try:
        yield
    finally:
        # The last holder removes the file (it was left in every staging folder): only when no one else holds it
        # (an exclusive lock got at once) and while holding it; a process that opened it before then finds, once
        # locked, that the path is no longer its file and opens it again (above). On Windows no file open anywhere
        # can be removed (Python opens files without FILE_SHARE_DELETE), its own holder's included: it is removed
        # once closed, which succeeds only when no other process has it open, the same "no one else holds it".
        if locked and not windows:
            with contextlib.suppress(OSError):
                _os_lock(fd, exclusive=True, windows=windows)
                path.unlink()
        os.close(fd)
        if locked and windows:
            with contextlib.suppress(OSError):
                path.unlink()


def _lockable(fd: int, *, exclusive: bool, windows: bool = os.name == "nt") -> bool:
    """Whether the lock (alone or shared) could be taken on `fd` now (taken and let go at once)."""
    try:
        _os_lock(fd, exclusive=exclusive, windows=windows)
    except OSError:
        return False
    _os_unlock(fd, windows=windows)
    return True


def run_shard(settings: RunSettings, roots: list, coverage: Coverage, staging: str | Path,
              progress: Progress | None = None) -> ShardReport:
    """Scan shard `coverage` of the site against the manifest's latest version (read only) into `staging`."""
    started = time.perf_counter()
    manifest = Manifest(settings.db)
    based_on, last_scan_ns, mtime_unit_ns = None, None, 1
    # No manifest yet, or an empty file (a run or the merge starts the manifest in it): nothing to reuse, as for a run
    exists = manifest.schema_on_disk() is not None
    if exists:
        manifest.require()  # an older schema: upgraded by a run (or `upgrade`), never by a shard
        latest = manifest.latest_version()
        based_on = latest["label"] if latest else None
        last_scan_ns = manifest.last_scan_started_ns()
        mtime_unit_ns = manifest.mtime_unit_ns()
    # Only the rows of its own folders (at 1M files the whole version is ~260 MiB and ~1 s to read, in each shard), and
    # the site's one re-verification sample chosen in SQL among all rows; no manifest yet: no rows
    previous = manifest.shard_state(coverage) if exists else empty_state()
    whole_sample = (lambda percent, cap, no_read: manifest.site_sample(percent, cap, no_read_roots=no_read)) if exists else None
    folder = shard_folder(staging, coverage)
    empty_roots = _empty_roots(roots)  # (before the listing: a folder emptied meanwhile is the merge's to see)
    with staging_lock(staging, merge=False), shard_lock(staging, coverage):
        _refuse_another_manifests_shard(folder, coverage, settings.db)
        (folder / "scan.json").unlink(missing_ok=True)  # a rerun: incomplete until it completes again
        # Whatever stops a shard (a signal, Slurm's time limit, a full disk), it is said of the shard with its rerun, not
        # in a run's words ("the manifest holds what it held before": a shard never writes the manifest)
        not_written = f"{coverage} was not written to {folder.absolute()}"
        try:
            scanned = scan(roots, previous, based_on=based_on, last_scan_ns=last_scan_ns,
                           racy_window_s=settings.racy_window_s, rehash=settings.rehash, workers=settings.workers,
                           progress=progress, coverage=coverage, verify_percent=settings.verify_sample,
                           verify_max_bytes=parse_bytes(settings.verify_max_bytes), cloud_md5=settings.cloud_md5,
                           excludes=Excludes(user=tuple(settings.exclude), defaults=settings.default_excludes),
                           mtime_unit_ns=mtime_unit_ns, whole_sample=whole_sample,
                           # header facts from the bytes hashed, for the merge's validation: one read per file here too
                           facts=settings.validate_site and not settings.dry_run)
            scanned.arguments = settings.arguments  # how to rerun it (or a sibling the merge finds missing)
            scanned.empty_roots, scanned.host = empty_roots, socket.gethostname()
            scanned.follow_symlinks = settings.follow_symlinks
            try:
                scanned.write(folder)
            except BaseException:
                # Half a shard (files.parquet written, facts.parquet not: the disk filled) is of no use without its
                # scan.json, and kept the staging disk full for the other shards: removed, and said so.
                for name in SHARD_FILES:
                    with contextlib.suppress(OSError):
                        (folder / name).unlink()
                not_written = f"{coverage} was not written (none of its files were left in {folder.absolute()})"
                raise
        except BaseException as exc:
            if not getattr(exc, "outcome", None):
                with contextlib.suppress(AttributeError, TypeError):
                    mend = "once that is mended, " if isinstance(exc, ChorusError) else ""
                    exc.outcome = (f"{not_written}; nothing was committed (a shard never writes the manifest); "  # type: ignore[attr-defined]
                                   f"{mend}rerun it with: {rerun_command(settings, coverage, staging)}")
            raise
    return ShardReport(coverage=coverage, folder=folder.absolute(), based_on=based_on, n_files=scanned.files.height,
                       n_hashed=scanned.n_hashed, bytes_hashed=scanned.bytes_hashed, n_errors=scanned.errors.height,
                       elapsed_s=time.perf_counter() - started, n_excluded=scanned.n_excluded)


def _empty_roots(roots: list) -> list[int]:
    """The positions of the local roots whose folder holds nothing at all (not one entry, whichever shard it is of)."""
    from .urls import local_path

    empty = []
    for position, root in enumerate(roots):
        path = local_path(root.source.location)
        with contextlib.suppress(OSError):  # (an unreadable root is the listing's to say)
            if path is not None:
                with os.scandir(path) as entries:
                    if next(entries, None) is None:
                        empty.append(position)
    return empty


def check_staging(staging: str | Path) -> dict[int, list[Path]]:
    """The --merge folder's shard folders (shard_folders), or a UsageError if it is no folder or holds none (checked
    before the manifest is opened or created: a merge of an empty folder left a new manifest without a version)."""
    staging = Path(staging)
    if not staging.is_dir():
        raise UsageError(f"no shard results in {staging}: " + ("it is a file, not a folder" if staging.exists() else
                         "the folder does not exist"), where="--merge", fix="give the --staging folder the shards wrote to")
    return shard_folders(staging)


def shard_folders(staging: Path) -> dict[int, list[Path]]:
    """The shard-K-of-N folders in `staging` by N, or a UsageError if there is none."""
    found: dict[int, list[Path]] = {}
    for entry in staging.iterdir():
        match = _SHARD_DIR.fullmatch(entry.name)
        # (a split into more shards than buckets is none chorus-batch writes: its range(N) could not be checked)
        if match and 1 <= int(match.group(2)) <= BUCKETS and entry.is_dir():
            found.setdefault(int(match.group(2)), []).append(entry)
    if not found:
        _merged_and_tidied(staging)
        _submissions_inside(staging)
        raise UsageError(f"no shard results in {staging} (no shard-K-of-N folders)", where="--merge",
                         fix="run the shards first: chorus-batch run --shard K/N --staging DIR (or the Slurm script)")
    return found


def _submissions_inside(staging: Path) -> None:
    """A UsageError naming the folders inside `staging` that hold shards, if any: `--merge <manifest>.staging`, the
    folder the Slurm script makes one staging folder in for each submission (<UTC time>), was told "no shard results
    ... run the shards first" beside the shards of every submission it holds."""
    inside = []
    with contextlib.suppress(OSError):
        for entry in staging.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_dir() and any(_SHARD_DIR.fullmatch(child.name) for child in entry.iterdir()):
                    inside.append(entry)
    if inside:
        inside.sort(key=lambda folder: folder.name)
        shown = ", ".join(folder.name for folder in inside[-3:])
        raise UsageError(f"no shard results in {staging} itself: it holds the staging folders of "
                         f"{plural(len(inside), 'submission')} ({'..., ' if len(inside) > 3 else ''}{shown}), each with "
                         "shard folders of its own; nothing was read or committed", where="--merge",
                         fix=f"give --merge the submission's own folder (its launcher's output says it as 'staging: "
                             f"...'), e.g. the latest: --merge {command_word(str(inside[-1].absolute()))}")


def submit_again() -> str:
    """What submits the shards again, as the user submitted these: in a merge job of `chorus-batch run --slurm` (its
    lock's path in the job's environment, slurm.LOCKED_ENV) that command, not "the Slurm script", which that user never
    saw; elsewhere (a merge run again by hand) either."""
    from .slurm import LOCKED_ENV

    if os.environ.get(LOCKED_ENV):
        return "run the `chorus-batch run --slurm` command again"
    return "submit the Slurm script again (or run `chorus-batch run --slurm` again, whichever submitted these shards)"


def _merged_and_tidied(staging: Path) -> None:
    """A UsageError if `staging` is a Slurm submission's folder whose merge committed (its merge.exit says 0 or 1) and
    whose shards the script then removed: the merge run again from its printed "rerun the merge" line was told "no
    shard results ... run the shards first", as if nothing had been done, where the shards are a version already."""
    from .slurm import MERGE_EXIT, MERGE_JOB

    with contextlib.suppress(OSError, ValueError):
        code = int((staging / MERGE_EXIT).read_text("utf-8").strip())
        if code in (0, 1):
            logs = sorted((staging / "logs").glob(f"{MERGE_JOB}-*.out"))
            raise UsageError(f"the shards in {staging} were merged already: their merge committed (exit code {code}, "
                             f"its {MERGE_EXIT}) and their lists of files were removed after it; nothing was committed "
                             "by this one", where=str(staging),
                             fix=("its log names the version it committed: "
                                  + ", ".join(str(log) for log in logs) if logs else
                                  "`chorus-batch versions` lists the version it committed")
                             + f"; to record the site as it is now, {submit_again()}")


def roots_text(roots: list) -> str:
    """Scanned roots ((location, modality), as ScanResult.roots) as a message names them."""
    return ", ".join(mask_url(location) + (f" ([site.roots] {modality})" if modality else "")
                     for location, modality in roots)


def same_roots(these: list, those: list) -> bool:
    """Whether two lists of scanned roots ((location, modality), as ScanResult.roots) name the same folders: a local
    root by the folder it is (a site spelled through a symlink, /data/site against /mnt/site, was refused as "other
    roots" though every path in it is the same), a cloud root by its URL."""
    from .urls import local_path

    def folder(location: str) -> str:
        with contextlib.suppress(UsageError):
            path = local_path(location)
            if path is not None:
                return os.path.realpath(path)
        return location

    return [(folder(loc), modality) for loc, modality in these] == [(folder(loc), modality) for loc, modality in those]


def read_shards(staging: str | Path, *, latest_label: str | None, settings: RunSettings, manifest: Manifest,
                previous_rows: int = 0, partitioned: bool = True,
                roots: list | None = None) -> tuple[ScanResult, TreeParts]:
    """The shards in `staging` as one whole-site ScanResult, with the previous version's rows and the shards'
    files in partitions of about PARTITION_ROWS rows (read one at a time by the commit), or a UsageError
    naming each missing, incomplete or stale shard, or one listed with other exclusion globs or other `roots` than
    this merge's ((location, modality) as ScanResult.roots), and the command that reruns it. Without `partitioned`
    (a dry run, which must not write the state cache beside the manifest), both are read whole."""
    staging = Path(staging)
    shards, parts = check_shards(staging, latest_label=latest_label, settings=settings, manifest=manifest, roots=roots)
    merged = merge_scans(parts)
    dropped = _linked_once(merged, parts, settings)
    folders = [shard_folder(staging, Coverage(shard=k, shards=shards)) for k in range(shards)]

    def damaged(folder: Path, what: str) -> UsageError:
        coverage = Coverage(shard=folders.index(folder), shards=shards)
        return damaged_shard(settings, staging, coverage, parts[coverage.shard].arguments, what)

    def read_files(folder: Path, buckets: tuple[int, int] | None = None) -> pl.DataFrame:
        try:
            files = ScanResult.read_files(folder, buckets)
        except (OSError, pl.exceptions.PolarsError) as exc:
            # Only the footer of a shard's files.parquet is checked before the commit (check_shards): a data page
            # damaged since it was written (a copy cut, a bit flipped on the staging disk) failed the commit as an
            # "internal error" ("zstd error: Data corruption detected"), naming no shard and no rerun.
            raise damaged(folder, f"its files.parquet cannot be read: {exc}") from None
        # (a path listed twice is looked for once the commit meets the manifest's unique index: repeated_path)
        # (values no listing gives: an MD5 that is not 32 hex digits was committed as the file's, and uploaded under
        # it; a size below 0 or none, a path without a time)
        odd = files.filter(~pl.col("md5").str.contains("^[0-9a-f]{32}$").fill_null(True)
                           | pl.col("size").is_null() | (pl.col("size") < 0) | pl.col("mtime_ns").is_null()
                           | pl.col("srcfile").is_null() | pl.col("root_id").is_null())
        if odd.height:
            row = odd.row(0, named=True)
            raise damaged(folder, f"its files.parquet holds a row no listing gives: {row['srcfile']!r}, size "
                                  f"{row['size']}, MD5 {row['md5']!r}, mtime {row['mtime_ns']}")
        return files if dropped is None else files.join(dropped, on=["root_id", "srcfile"], how="anti")

    if not partitioned:
        merged.files = pl.concat([read_files(folder) for folder in folders])
        return merged, TreeParts.whole(manifest.previous_state(write_cache=False), merged.files)
    n_files = sum(pl.scan_parquet(folder / "files.parquet").select(pl.len()).collect().item() for folder in folders)
    rows = int(os.environ.get(ENV_PARTITION_ROWS) or PARTITION_ROWS)
    per_shard = max(1, math.ceil(max(n_files, previous_rows) / shards / max(1, rows)))
    count = shards * per_shard  # partition j lies in shard j // per_shard (partitions.py)
    manifest.ensure_state_cache()
    return merged, TreeParts(count, lambda part: manifest.state_part(bucket_range(part, count)),
                             lambda part: read_files(folders[part // per_shard], bucket_range(part, count)))


def repeated_path(settings: RunSettings, staging: str | Path) -> UsageError | None:
    """The shard whose files.parquet lists a path twice (an edited one: a listing gives each path once), as a damaged
    shard with its rerun; None if none does. Asked once a merge's commit met the manifest's unique index, which such a
    shard's rows break: that was said as "check that no other program writes this manifest" (exit 3), naming no shard.
    Not looked for in every partition read: that cost the 10M-row merge of merge_benchmark.py ~3 s of its ~30."""
    staging = Path(staging)
    for folders in shard_folders(staging).values():
        for folder in sorted(folders):
            match = _SHARD_DIR.fullmatch(folder.name)
            try:
                twice = (pl.scan_parquet(folder / "files.parquet").group_by("root_id", "srcfile").len()
                         .filter(pl.col("len") > 1).select("srcfile").head(1).collect(engine="streaming"))
            except (OSError, pl.exceptions.PolarsError):
                continue  # (damaged otherwise: said by the merge's reads)
            if match is None or not twice.height:
                continue
            coverage = Coverage(shard=int(match.group(1)), shards=int(match.group(2)))
            try:
                arguments = ScanResult.read(folder, files=False, contents=False).arguments
            except Exception:  # noqa: BLE001 - the rerun is then said with the merge's own arguments
                arguments = None
            return damaged_shard(settings, staging, coverage, arguments,
                                 f"its files.parquet lists {twice['srcfile'][0]} more than once")
    return None


def damaged_shard(settings: RunSettings, staging: str | Path, coverage: Coverage, arguments: list[str] | None,
                  what: str) -> UsageError:
    """Shard `coverage` refused as damaged (`what`: how), with the command that reruns it."""
    return UsageError(f"cannot merge: shard {coverage.shard}/{coverage.shards} is damaged ({what}): rerun it with: "
                      f"{rerun_command(settings, coverage, staging, arguments)}; nothing was committed",
                      where=str(shard_folder(staging, coverage) / "files.parquet"),
                      fix="rerun the shard named, then merge again")


def _linked_once(merged: ScanResult, parts: list[ScanResult], settings: RunSettings) -> pl.DataFrame | None:
    """One file outside the site reached through links in two shards' folders was listed by both, so the version held
    it twice (two rows, two uploads), where a single-node listing keeps it once, under its first path, and says the
    other link (symlink_duplicate). Done again here over every shard's linked paths: the paths (root_id, srcfile) to
    leave out of the shards' files, with merged.errors' symlink_duplicate findings replaced; None: nothing to leave out
    (or a shard of an older release, which did not record its links)."""
    from .frames import ERRORS_SCHEMA
    from .urls import storable
    from .walk import unique_linked

    if any(part.linked is None for part in parts):
        return None
    linked = pl.concat([part.linked for part in parts if part.linked is not None])
    shared = linked.group_by("root_id", "real").len().filter(pl.col("len") > 1)
    if shared.is_empty():  # (within one shard: done by its own listing)
        return None
    kept, said = [], []
    for (root_id,), rows in linked.group_by("root_id"):
        paths, errors = unique_linked([(rel, 0, 0, real, link) for rel, real, link in
                                       rows.select("srcfile", "real", "link").iter_rows()])
        kept += [(root_id, rel) for rel, _size, _mtime in paths]
        said += [(storable(path), kind, storable(message)) for path, kind, message in errors]
    kept_frame = pl.DataFrame(kept, schema={"root_id": pl.Int64, "srcfile": pl.String}, orient="row")
    errors = pl.DataFrame(said, schema=ERRORS_SCHEMA, orient="row")
    merged.errors = pl.concat([merged.errors.filter(pl.col("kind") != "symlink_duplicate"),
                               _exclude_errors(errors, settings)])
    return linked.select("root_id", "srcfile").join(kept_frame, on=["root_id", "srcfile"], how="anti")


def _exclude_errors(errors: pl.DataFrame, settings: RunSettings) -> pl.DataFrame:
    from .exclude import drop_excluded_errors

    return drop_excluded_errors(errors, Excludes(user=tuple(settings.exclude), defaults=settings.default_excludes))


def check_shards(staging: Path, *, latest_label: str | None, settings: RunSettings, manifest: Manifest,
                 roots: list | None = None, say_left_out: bool = True,
                 contents: bool = True) -> tuple[int, list[ScanResult]]:
    """The split the merge takes (N) and its shards' records (without their files), or the UsageError read_shards
    says. Also called before a new manifest is made (pipeline.run): a refused merge left an empty one behind.
    contents=False: the records only (ScanResult.read), not the errors and facts the merge reads itself."""
    found = check_staging(staging)
    # Shards of another split (a staging folder reused with another --shards): the latest written split is merged,
    # the others are left out and said, never merged with it, never a reason to refuse it. A split written for
    # another manifest (one staging folder given to two manifests' shards) is not this merge's to take while one of
    # its own is there: taking the newest split, the other manifest's, refused this one's complete shards as "left out"
    # (with an `rm -r` of them) and told to hash the whole site again over the other manifest's shards.
    theirs = {n: _split_manifest(found[n], settings.db) for n in found}
    own = [n for n in found if theirs[n] is None]
    written = {n: max(_written_ns(folder) for folder in found[n]) for n in found}  # (each split's, read once)
    shards = max(own or list(found), key=written.__getitem__)
    left_out = ""
    if len(found) > 1:
        from datetime import datetime, timezone

        from .times import iso

        def when(n: int) -> str:
            return iso(datetime.fromtimestamp(written[n] / 1e9, timezone.utc))

        others = [f"{plural(len(found[n]), 'shard folder')} of a split into {n} (shard-*-of-{n}, listed {when(n)}"
                  + (f", written for another manifest, {theirs[n]})" if theirs[n] and theirs[shards] is None else ")")
                  for n in sorted(found) if n != shards]
        stale = [n for n in sorted(found) if n != shards and not (theirs[n] and theirs[shards] is None)]
        newest = max(found, key=written.__getitem__)
        left_out = (f"{staging} also holds {'; '.join(others)}, "
                    f"{'older than' if newest == shards else 'beside'} the split into {shards} this merge reads: "
                    "they were left out")
        if say_left_out:
            log.warning(left_out + ("; remove the ones of no manifest's use: " + " ".join(
                f"rm -r {shlex.quote(os.path.abspath(staging))}/shard-*-of-{n}" for n in stale) if stale else
                "; merge another manifest's shards into it, and give each manifest's shards a --staging folder of "
                "their own"))
    expected_patterns = Excludes(user=tuple(settings.exclude), defaults=settings.default_excludes).patterns
    # How the shards of this split were run (the first complete one's record): what a missing one is rerun with
    siblings = None
    for k in range(shards):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):  # (a damaged one is said below)
            record = json.loads((shard_folder(staging, Coverage(shard=k, shards=shards)) / "scan.json").read_text("utf-8"))
            siblings = siblings or recorded_words(record.get("arguments"))
    problems: list[str] = []
    parts: list[ScanResult] = []
    stale_started: list[int] = []
    theirs_started: dict[str, list[int]] = {}  # another manifest's shards (by its --db): their listings' starts
    unlike: list[ScanResult] = []  # complete shards listed unlike this merge (other globs or roots)
    numbered: list[tuple[int, ScanResult]] = []  # the complete shards the merge would take, by number
    for k in range(shards):
        coverage = Coverage(shard=k, shards=shards)
        folder = shard_folder(staging, coverage)
        if not (folder / "scan.json").exists():
            state = "missing" if not folder.exists() else "incomplete (it failed or is still running)"
            problems.append(f"shard {k}/{shards} is {state}: rerun it with: "
                            f"{rerun_command(settings, coverage, staging, siblings)}")
            continue
        try:
            part = ScanResult.read(folder, files=False, contents=contents)
        except UsageError as exc:  # (a scan.json cut short, a files.parquet removed): named with its rerun as the others
            problems.append(f"shard {k}/{shards} is damaged ({exc.what}): rerun it with: "
                            f"{rerun_command(settings, coverage, staging, siblings)}")
            continue
        if part.coverage != coverage:  # (a folder renamed, or copied in from another split or staging folder)
            problems.append(f"shard {k}/{shards} is damaged (its scan.json is of {part.coverage}, not of {coverage}, "
                            f"which its folder {folder.name} names: a folder renamed or copied in): rerun it "
                            f"with: {rerun_command(settings, coverage, staging, siblings)}")
            continue
        misplaced = _misplaced(folder, coverage) if contents else None
        if misplaced:
            problems.append(f"shard {k}/{shards} is damaged ({misplaced}): rerun it with: "
                            f"{rerun_command(settings, coverage, staging, part.arguments or siblings)}")
            continue
        if roots is not None and not same_roots(part.roots, roots):
            # (one shard rerun without the --config of the others left the [site.roots] out: "the shards scanned
            # different roots", naming none of them)
            unlike.append(part)
            other_db = _other_manifest(part.arguments, settings.db)
            problems.append(f"shard {k}/{shards} listed other roots ({roots_text(part.roots)}) than this merge's site "
                            f"({roots_text(roots)}); rerun it"
                            + (_once_merged(part, other_db, folder) if other_db else "")
                            + f" with: {rerun_command(settings, coverage, staging)}")
            continue
        if not same_globs(part.exclude_patterns, expected_patterns):
            unlike.append(part)
            problems.append(f"shard {k}/{shards} was listed with other exclusion globs ({_patterns_text(part.exclude_patterns)}) "
                            f"than this merge's ({_patterns_text(expected_patterns)}): its files would be left out (or "
                            f"kept) unlike the other shards'; rerun it with: {rerun_command(settings, coverage, staging)}")
            continue
        if part.follow_symlinks is not None and part.follow_symlinks != settings.follow_symlinks:
            unlike.append(part)
            problems.append(f"shard {k}/{shards} was listed {_symlinks_text(part.follow_symlinks)}, this merge "
                            f"{_symlinks_text(settings.follow_symlinks)}: the files behind links in its folders would "
                            f"be in the version unlike the other shards' (or left out); rerun it with: "
                            f"{rerun_command(settings, coverage, staging)}")
            continue
        # (after the roots and globs: shards of another site's staging folder were "stale", to be rerun as they had
        # been run, for that site and its manifest, which left them as stale for this one)
        if part.based_on != latest_label:
            stale_started.append(part.scan_started_ns)
            other_db = _other_manifest(part.arguments, settings.db)
            if other_db is not None:  # (rerun as it had been run, it was written for that manifest again: stale again)
                theirs_started.setdefault(other_db, []).append(part.scan_started_ns)
                problems.append(f"shard {k}/{shards} was written for another manifest, {other_db} (its --db), not this "
                                f"merge's {os.path.abspath(settings.db)}: it reused that one's version "
                                f"{part.based_on or '(none)'}, this one's latest is {latest_label or '(none)'}; merge "
                                f"the shards into that one: {merge_command(part.arguments, staging)}, or rerun it for "
                                f"this one{_once_merged(part, other_db, folder)}: "
                                f"{rerun_command(settings, coverage, staging)}")
                continue
            problems.append(f"shard {k}/{shards} is stale: it reused version {part.based_on or '(none)'}, but the "
                            f"latest is {latest_label or '(none)'}: rerun it with: "
                            f"{rerun_command(settings, coverage, staging, part.arguments or siblings)}")
            continue
        other_db = _other_manifest(part.arguments, settings.db)
        if other_db is not None and (latest_label is None or os.path.exists(other_db)):
            theirs_started.setdefault(other_db, []).append(part.scan_started_ns)
            # Based on the same version (none: shards written for a new manifest, merged into another new one) yet
            # for another manifest: committed without a word into this one, and again into theirs by its own merge.
            # (A manifest moved since, its old path gone, with the version they reused: merged.)
            problems.append(f"shard {k}/{shards} was written for another manifest, {other_db} (its --db), not this "
                            f"merge's {os.path.abspath(settings.db)}" + ("" if latest_label is None else
                                                                          f" (both at version {latest_label})")
                            + f": merge the shards into that one: {merge_command(part.arguments, staging)}, or rerun "
                            f"it for this one{_once_merged(part, other_db, folder)}: "
                            f"{rerun_command(settings, coverage, staging)}")
            continue
        parts.append(part)
        numbered.append((k, part))
    # A root one shard found empty while another listed it: the site was not mounted where that shard ran (an empty
    # mount point), and its share of the site would be committed as removed (a single-node run is refused then).
    for position, (location, _modality) in enumerate(parts[0].roots if parts else []):
        empty = [(k, part) for k, part in numbered if part.empty_roots is not None and position in part.empty_roots]
        if empty and len(empty) < sum(part.empty_roots is not None for part in parts):
            for k, part in empty:
                problems.append(f"shard {k}/{shards} found {mask_url(location)} empty on {part.host or 'its node'} "
                                "(the site not mounted there?), while other shards listed files in it: its files "
                                f"would be recorded as removed; rerun it on a node where it is mounted: "
                                f"{rerun_command(settings, Coverage(shard=k, shards=shards), staging, part.arguments)}")
    merged_into = (manifest.version_of_scan(min(stale_started))  # (none yet, or an empty file: merged into nothing)
                   if len(stale_started) == shards and manifest.schema_on_disk() is not None else None)
    if merged_into is not None:  # (a requeued merge job): "stale, rerun them" would send the user the wrong way
        # (the latest only while no run committed after that merge: said as it is)
        now = "the latest" if merged_into == latest_label else f"the latest is now {latest_label}"
        raise MergedAlready(f"the shards in {staging} were merged already: they are version {merged_into} ({now}); "
                            "nothing was committed", where=str(staging),
                            fix="nothing to do for these shards; to record the site as it is now, run the shards "
                                f"again (or {submit_again()}), then merge", merged_into=merged_into)
    if merged_into is None and latest_label is not None and len(stale_started) == shards and stale_started \
            and not any("another manifest" in problem for problem in problems):
        # Every shard older than the latest version's own listing: another submission of the same script (two `sbatch
        # nightly.sbatch` at once, a cron line and a user), or a run, listed the site after these shards began and
        # committed it. Its merge took the manifest first; this one was told "locked", then, run again, "stale: rerun
        # every shard", the whole site hashed again to record what the latest version records already.
        newer = manifest.scan_of_version(latest_label)
        if newer is not None and newer >= min(stale_started):
            from datetime import datetime, timezone

            from .times import iso

            def at(ns: int) -> str:
                return iso(datetime.fromtimestamp(ns / 1e9, timezone.utc))

            raise UsageError(  # (no MergedAlready: that version is not theirs, its checks not this merge's)
                f"the shards in {staging} are older than the manifest's latest version {latest_label}: they began "
                f"listing the site at {at(min(stale_started))}, and another run (another submission of the Slurm "
                f"script, or a run) began listing it at {at(newer)} and committed {latest_label}; merging these would "
                "record the site as it was before that version; nothing was committed", where=str(staging),
                fix=f"nothing to do for these shards: the site is recorded as version {latest_label}; to record it as "
                    f"it is now, {submit_again()}, or run the shards again ("
                    + rerun_command(settings, Coverage(shard=0, shards=shards), staging, siblings)
                    + f", and so for each K/{shards}), then merge; do not submit again while the jobs of an "
                    "earlier submission are queued or running")
    if len(theirs_started) == 1 and len(next(iter(theirs_started.values()))) == shards:
        # Every shard another manifest's, and merged into it already: "merge the shards into that one" sent the user
        # to a merge that is refused ("merged already")
        other_db, starts = next(iter(theirs_started.items()))
        theirs_version = None
        with contextlib.suppress(ChorusError, OSError, sqlite3.Error):
            theirs_version = Manifest(other_db).version_of_scan(min(starts))
        if theirs_version is not None:
            raise UsageError(
                f"the shards in {staging} were written for another manifest, {other_db} (their --db), not this "
                f"merge's {os.path.abspath(settings.db)}, and were merged into that one already: they are its version "
                f"{theirs_version}; nothing was committed into this one", where=str(staging),
                fix="nothing to do for these shards; to record the site in this manifest, run shards for it (into "
                    "a --staging folder of its own: " + rerun_command(settings, Coverage(shard=0, shards=shards),
                                                                      staging.parent / (staging.name + "-2"))
                    + f", and so for each K/{shards}), then merge them, or submit the Slurm script for it")
    if len(unlike) == shards and all((p.roots, p.follow_symlinks) == (unlike[0].roots, unlike[0].follow_symlinks)
                                     and same_globs(p.exclude_patterns, unlike[0].exclude_patterns) for p in unlike):
        # every shard alike but unlike this merge: the merge is what was run with other settings (no --config)
        first = unlike[0]
        said = (f"the shards scanned {roots_text(first.roots)}, not this run's site {roots_text(roots)}"
                if roots is not None and not same_roots(first.roots, roots) else
                f"the shards were listed with other exclusion globs ({_patterns_text(first.exclude_patterns)}) than "
                f"this merge's ({_patterns_text(expected_patterns)})"
                if not same_globs(first.exclude_patterns, expected_patterns) else
                f"the shards were listed {_symlinks_text(first.follow_symlinks)}, this merge "
                f"{_symlinks_text(settings.follow_symlinks)}")
        raise UsageError(f"cannot merge: {said}; nothing was committed", where=str(staging),
                         fix=("merge with the settings the shards ran with: " + merge_command(first.arguments, staging)
                              if first.arguments is not None else
                              "merge with the same --site / --exclude / chorus.toml the shards used")
                             + "; or rerun every shard with this merge's settings, then merge again")
    if problems:
        raise UsageError("cannot merge: " + "; ".join(problems) + (f" ({left_out})" if left_out else ""),
                         where=str(staging),
                         fix="rerun the shards named (each alone is enough), then merge again; nothing was committed")
    if say_left_out:
        _say_listing_spread(numbered)
    return shards, parts


def _misplaced(folder: Path, coverage: Coverage) -> str | None:
    """What is wrong with the bucket column of a shard's files.parquet, or None. The commit reads each partition's
    files by that column (a range of buckets): a row whose bucket lies outside the shard's (an edited or mixed-up
    files.parquet) was never read, and its file, there on disk, was left out of the version (committed as removed)
    without a word; one whose bucket is not its path's was read with another partition than its path's previous row.
    One row per top-level folder and bucket is checked (the CRC of each folder), not per file."""
    from .partitions import top_folder

    try:
        tops = (pl.scan_parquet(folder / "files.parquet").select(top_folder(pl.col("srcfile")).alias("top"), BUCKET)
                .unique().collect(engine="streaming"))  # (a shard's paths are not held: its rows pass, folders stay)
    except (OSError, pl.exceptions.PolarsError) as exc:
        return f"its files.parquet cannot be read: {exc}"
    first, last = bucket_range(coverage.shard, coverage.shards)
    for top, bucket in tops.iter_rows():
        expected = 0 if top is None else top_bucket(top)
        if bucket != expected or not first <= expected <= last:
            where = "files at the site's root" if top is None else f"files under {top}/"
            return (f"its files.parquet holds {where} in bucket {bucket}, " +
                    (f"not {expected}, the bucket of their folder" if bucket != expected else
                     f"which is not among this shard's buckets {first}-{last}")
                    + ": edited, or written by another split; its files would be left out of the version")
    return None


# Shards that listed the site this far apart are said (a job array on a busy cluster, a shard rerun the next day):
# a file moved from one shard's person folder to another's between their listings was seen by neither (recorded as
# removed) or by both (recorded at both paths), without a word, until the next run.
LISTING_SPREAD_SAY_S = 3600


def _say_listing_spread(numbered: list[tuple[int, ScanResult]]) -> None:
    starts = sorted((part.scan_started_ns, k) for k, part in numbered if part.scan_started_ns)
    if len(starts) < 2 or (starts[-1][0] - starts[0][0]) / 1e9 < LISTING_SPREAD_SAY_S:
        return
    from datetime import datetime, timezone

    from .times import iso

    def at(ns: int) -> str:
        return iso(datetime.fromtimestamp(ns / 1e9, timezone.utc))

    hours = (starts[-1][0] - starts[0][0]) / 3.6e12
    log.warning(f"the shards listed the site {hours:.1f} hours apart (shard {starts[0][1]} at {at(starts[0][0])}, "
                f"shard {starts[-1][1]} at {at(starts[-1][0])}): a file moved between the person folders of two "
                "shards in that time is recorded as removed, or at both paths, until the next run; nothing to do when "
                "nothing moves files under the site while the shards run, else run the shards at one time (one job "
                "array, with the CPUs for all of them)")
