"""The SQLite manifest: opening (and upgrading) it, reading the previous version,
committing a new one, the runs log and the state cache.

Bulk reads and writes go through ADBC (Arrow in, Arrow out; measured about twice
as fast as `executemany`); one version is one SQLite transaction in WAL mode, so
a killed run leaves the previous version intact. The current rows of the latest
version are also cached as Parquet beside the manifest (a no-change run on a
large site then reads 1M rows in well under a second instead of seconds); the
cache is trusted only while its generation matches the manifest's.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shlex
import socket
import sqlite3
import struct
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from .. import release
from ..classify import record_key
from ..errors import (FILE_SIZE_FIX, ChorusError, ManifestError, ManifestLocked, UsageError, file_size_limit, first_run_command,
                      named, pass_db, salvage_command)
from ..frames import STATE_SCHEMA, columns_of, empty_state, fetched_frame, schema_of
from ..faults import pause
from ..fsutil import (create_private, free_bytes, nearly_full, require_reachable, restrict, unicode_twin,
                      sqlite_temp_folder, write_private)
from ..progress import log
from ..partitions import BUCKET, bucket_range, in_range, with_bucket, with_buckets
from ..times import iso, utc_now
from ..units import command_word, shown_name
from ..urls import root_url, scrub, storable
from .lock import killed_upgrade, manifest_lock, upgrade_under_way, user_name
from .runs import KILLED_EXIT, run_advice, run_message, run_outcome
from .schema import (INDEXES, LEFT_AS_IT_WAS, NOT_A_MANIFEST_FIX, NOT_SQLITE_FIX, READ_ONLY_WRONG_FILE_FIX, SCHEMA_VERSION,
                     SOURCE_FILES_INDEXES, _refused, check_release, index_name, missing_indexes, schema_version, too_new,
                     upgrade)


def _place(location: str) -> str:
    """Where a root is, however it was spelt: a local folder's real path (a link resolved), a cloud URL without the
    '/' after its path (urls.root_url: a manifest that recorded az://c/site/ finds it again as az://c/site)."""
    return root_url(location) if "://" in location else os.path.realpath(location)


def _match_roots(recorded: list[tuple[int, str, str | None]], roots: list[tuple[str, str | None]]) -> dict[int, int]:
    """The recorded root_id of each of a scan's roots (by position) that `recorded` (root_id, location,
    modality) holds: the same location, else (a local folder) the same folder on disk: a site given through
    a symlink, or as the symlink's target, is the root recorded under the other name, so its history goes
    on (not a second root that takes over every file, hashed again). Few rows: a plain loop."""
    exact = {(location, modality): root_id for root_id, location, modality in recorded}
    # cloud (True) or local (False) -> the recorded roots of that kind by place, resolved only when needed: a
    # recorded folder may be on a slow mount, and a cloud root needs no folder's real path
    places: dict[bool, dict[tuple[str, str | None], int]] = {}
    ids: dict[int, int] = {}
    for position, (location, modality) in enumerate(roots):
        root_id = exact.get((location, modality))
        if root_id is None:
            cloud = "://" in location
            if cloud not in places:
                places[cloud] = {}
                for rid, loc, mod in recorded:
                    if ("://" in loc) == cloud:
                        places[cloud].setdefault((_place(loc), mod), rid)  # the earliest root of that place
            root_id = places[cloud].get((_place(location), modality))
        if root_id is not None:
            ids[position] = root_id
    return ids


def _same_roots(recorded: list[tuple[int, str, str | None]], roots: list[tuple[str, str | None]]) -> dict[int, set[int]]:
    """Every recorded root_id of each of a scan's roots (by position): the same location, or the same folder on
    disk under another name. An older release recorded a site given through a symlink as a second root, so one
    folder can have several root_ids, and the previous version's files may lie under any of them."""
    return {position: {rid for rid, loc, mod in recorded
                       if mod == modality and (loc == location or _place(loc) == _place(location))}
            for position, (location, modality) in enumerate(roots)}


def sqlite_words(exc: BaseException) -> str:
    """SQLite's own words of an error. ADBC frames them as 'INTERNAL: failed to execute: database or disk is full'
    and a 'query was: INSERT ...' line: an 'internal' error and SQL to the user, where SQLite said the disk is full."""
    import re

    text = str(exc).strip()
    first = text.split("\nquery was:", 1)[0].strip()
    return re.sub(r"^(?:[A-Z_]+: )?(?:\[SQLite\] )?(?:failed to [a-z ]+?: )?", "", first) or text


def _update_cache(db_bytes: int) -> str:
    """SQLite's page cache for a write to a manifest of `db_bytes` (a first load: about the bytes it writes).
    Updates land on random pages of a large manifest; with SQLite's default 2 MB page cache they spill and are
    rewritten mid-transaction (30k row updates on a 1M-row manifest: 1.5 s -> 0.14 s with 128 MB; a 2% change of a
    10M-row, ~7.7 GB manifest: ingest 5.3 -> 4.4 s, invalidation 2.7 -> 2.0 s with 512 MB). A sixteenth of the
    manifest, within 32-512 MiB: a 5%-mutated run of a 1M-row (775 MB) manifest committed in 2.85-3.66 s with 32 MiB
    against 3.50-3.97 s with 512, and peaked at 1.19-1.20 GB instead of 1.51-1.53 (the dirty pages of its commit
    held in the cache)."""
    return f"PRAGMA cache_size = -{min(max(db_bytes // 16, 32 << 20), 512 << 20) >> 10}"


_CACHE_LAYOUT = "2"  # the state cache's layout: 2 = sorted by bucket, with the bucket column (partitions.py)
# Dictionaries for the few-valued columns only, statistics for the bucket only (what a partition's read uses):
# a 2M-row cache is written in 0.74 s instead of 1.19 s, and is 75 MiB instead of 85.
_CACHE_PARQUET = {"compression": "lz4", "use_dictionary": ["modality", "person_id", "parse_error", "etag", "root_id"],
                  "write_statistics": [BUCKET]}
_CACHE_ROW_GROUP = 65_536  # rows: a partition of a merge (about 500k rows) skips the others' row groups

# Change-set rows as `changes` and the review API return them.
CHANGES_SCHEMA = {
    **schema_of("changes"), "md5": pl.String, "size": pl.Int64, "modality": pl.String, "person_id": pl.String,
}
# Columns written for a new file version (all but the validity columns, which a version sets).
_VALIDITY = ("time_valid", "time_invalid", "version_valid", "version_invalid")


def _is_utf8(text: str) -> bool:
    """False for a path holding a byte of a name that is not UTF-8 (Python decodes it as a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
NEW_ROW_COLUMNS = tuple(c for c in columns_of("source_files") if c not in _VALIDITY)


@dataclass
class VersionRecord:
    label: str
    started_at: str
    finished_at: str
    mode: str
    site: str
    counts: dict[str, int]
    n_errors: int
    n_files: int
    total_bytes: int
    run_id: int | None
    scan_started_ns: int | None = None  # recorded in the run's `runs` row by the commit itself (version_of_scan)


@dataclass
class CommitResult:
    new_rows: pl.DataFrame  # the new source_files rows, with file_id, record_id and root_id
    generation: str
    root_ids: dict[int, int]  # the manifest's root_id of each of the scan's roots (by position)


# Python's sqlite3 and the ADBC driver each carry their own SQLite library, and each keeps its own account of the
# POSIX locks this process holds on a database. A lock belongs to the process, so one library's close drops the other's
# locks, and its last connection checkpoints and removes the -wal under the other's feet (sqlite.org/howtocorrupt.html,
# 2.2.1; seen here: a sqlite3 connection open while ADBC ones opened and closed, then "database disk image is
# malformed"). The manifest opens each connection for one step; opening one library's while the other's is open on the
# same file is refused before it opens, so that such a change fails loudly instead of damaging a site's history.
_OPEN_BY_LIBRARY: dict[str, dict[str, int]] = {}
_OPEN_LOCK = threading.Lock()
# How long a command waits on SQLite's lock of the manifest when it opens it, and when it upgrades it under the run
# lock, before it says another program holds it (exit 4): a transaction of this tool is a short one
OTHER_PROGRAM_WAIT_MS = 5_000
# What stands after a refusal before SQLite opened the manifest (a foreign -wal, a hot -journal this user cannot undo,
# a -wal an immutable read cannot see, a side file that is a link): a run said "the manifest holds what it held before
# (`chorus-batch versions` lists it)", of a manifest `versions` refuses the same way, whose state is the question
NOT_OPENED = ("nothing was committed and nothing was changed: SQLite did not open the manifest, and its file and the "
              "files beside it are as they were")


def _acquire(key: str, library: str) -> None:
    """Count a connection of `library` ('sqlite3' or 'adbc') open on the database `key` (a real path), or refuse it
    while the other library has one open there."""
    with _OPEN_LOCK:
        counts = _OPEN_BY_LIBRARY.setdefault(key, {})
        others = [name for name, n in counts.items() if n and name != library]
        if others:
            raise RuntimeError(f"a connection of {library} to {key} was asked for while one of {others[0]} is open: "
                               "two SQLite libraries on one file in one process would break each other's locks")
        counts[library] = counts.get(library, 0) + 1


def _release(key: str, library: str) -> None:
    with _OPEN_LOCK:
        _OPEN_BY_LIBRARY[key][library] -= 1


@contextlib.contextmanager
def one_library(path: Path, library: str) -> Iterator[None]:
    """While the block runs, `library` ('sqlite3' or 'adbc') has a connection open on the database at `path`."""
    key = os.path.realpath(path)
    _acquire(key, library)
    try:
        yield
    finally:
        _release(key, library)


def touch_page_one(execute: Callable[..., Any]) -> None:
    """In a transaction that wrote, as it commits: write page 1 too (its `user_version` field counts the manifest's
    commits), so that SQLite raises the file change counter it holds in every WAL it writes, and in the file as the
    WAL is checkpointed. A commit that wrote no other field of page 1 (a row that fitted in a page the file had)
    left it as it was, and a manifest restored from a backup could not be told from the state a killed run's -wal
    beside it was written on (foreign_wal)."""
    (count,) = execute("PRAGMA user_version").fetchone()
    execute(f"PRAGMA user_version = {(int(count) + 1) % 2**31}")


class _Sqlite3Connection(sqlite3.Connection):
    """A sqlite3 connection counted as open (one_library) until closed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        key = os.path.realpath(kwargs.pop("manifest_path"))
        _acquire(key, "sqlite3")
        self._counted: str | None = key
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._uncount()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._uncount()

    # Each transaction that wrote also writes page 1 (touch_page_one), as it commits (`commit()`, or `with con:`).
    def commit(self) -> None:
        self._touch()
        try:
            super().commit()
        finally:
            self._written = self.total_changes

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._written = self.total_changes

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> Any:
        if kind is None:
            self._touch()
        try:
            return super().__exit__(kind, value, traceback)
        finally:
            self._written = self.total_changes

    def _touch(self) -> None:
        if self.in_transaction and self.total_changes != getattr(self, "_written", 0):
            touch_page_one(self.execute)

    def __del__(self) -> None:  # (a connection dropped unclosed is closed by SQLite as it goes)
        self._uncount()

    def _uncount(self) -> None:
        key, self._counted = getattr(self, "_counted", None), None
        if key is not None:
            _release(key, "sqlite3")


def connect_sqlite3(path: Path, source: str) -> sqlite3.Connection:
    """sqlite3.connect to the manifest at `path` (opened as `source`: its path or a URI), counted by one_library."""
    return sqlite3.connect(source, uri=source.startswith("file:"), timeout=30,
                           factory=functools.partial(_Sqlite3Connection, manifest_path=path))


@contextlib.contextmanager
def _beside(work: Callable[[], None] | None, failed: list[BaseException]) -> Iterator[None]:
    """Run `work` (if any) on a thread while the block runs, and wait for it after; its error goes to `failed`
    (for the caller to raise once it has said what the block did)."""
    if work is None:
        yield
        return

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="chorus-beside-commit", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()



_WAL_MAGIC = (0x377F0682, 0x377F0683)  # (the low bit: the checksums' words are big-endian)


def _wal_sum(data: bytes, big: bool) -> tuple[int, int]:
    """SQLite's WAL checksum of `data` (a multiple of 8 bytes), from zero (sqlite.org/fileformat2.html#walformat)."""
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    s0 = s1 = 0
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def _wal_page_one(wal: Path) -> tuple[bytes, int, list[tuple[int, int]]] | None:
    """The WAL's header, its page size, and the (file change counter, user_version) of each copy of page 1 in its
    committed frames (those of its current generation, up to its last commit: what SQLite applies); None when SQLite
    would ignore it (too short, not a WAL, a header whose checksum fails). Only frame headers are read, and page 1's
    first bytes."""
    with open(wal, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(32)
        if len(head) < 32:
            return None
        magic, _version, page_size, _sequence, salt1, salt2, sum1, sum2 = struct.unpack(">8I", head)
        if magic not in _WAL_MAGIC or _wal_sum(head[:24], magic & 1 == 1) != (sum1, sum2):
            return None
        committed: list[tuple[int, int]] = []
        pending: list[tuple[int, int]] = []
        at = 32
        while at + 24 + page_size <= size:
            f.seek(at)
            frame = f.read(28)
            number, commit, frame_salt1, frame_salt2 = struct.unpack(">4I", frame[:16])
            if number == 0 or (frame_salt1, frame_salt2) != (salt1, salt2):
                break  # (an earlier generation's frames, which SQLite ignores)
            if number == 1:
                f.seek(at + 24 + 24)
                fields = f.read(40)  # (the header's change counter at 24, its user_version at 60)
                pending.append((int.from_bytes(fields[:4], "big"), int.from_bytes(fields[36:40], "big")))
            if commit:
                committed += pending
                pending = []
            at += 24 + page_size
    return head, page_size, committed


def uncounted(path: Path) -> bool:
    """Whether the manifest file at `path` holds no commit count (`user_version` 0 in its header, on disk: an older
    release's manifest, or one whose counted commits are all still in its -wal)."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except OSError:
        return False
    return len(header) == 100 and header.startswith(b"SQLite format 3\0") and header[60:64] == bytes(4)


def _start_count(con: sqlite3.Connection) -> None:
    """The first commit of this release on a manifest an older one wrote (uncounted), alone, and written into the
    file at once: those releases' commits left page 1 as it was when their rows fitted in pages the file had, so a
    backup taken nights earlier had the change counter the file still had, and a -wal this release then left (its
    first commit, say the schema upgrade, cut off from the file by a full disk, a `ulimit -f`, a reader, a kill) was
    read as the restored backup's own (foreign_wal). Moved on here, alone, the file's counter is past every earlier
    backup's, as every later -wal's start is. Best effort: a checkpoint a reader holds back is done by the next
    command that opens the manifest to write, which starts the count again if it did not reach the file."""
    try:
        con.execute("BEGIN IMMEDIATE")
        touch_page_one(con.execute)
        con.commit()
        con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.OperationalError as exc:
        if con.in_transaction:
            con.rollback()
        low = str(exc).lower()
        if "locked" in low or "busy" in low:
            raise  # (another program's lock: said as such by the caller)
        # (a file this user may not write, a full disk: the command's own writes meet it and say so)


def foreign_wal(path: Path) -> str | None:
    """How the -wal beside the manifest file at `path` shows that it is not that file's (its commits were made on
    another state of the manifest: a manifest restored from a backup, or copied over, beside a killed run's -wal),
    else None. SQLite would apply its pages to the file without a word, and the manifest would silently become a mix
    of the two. A WAL of this file begins where the file stood when it began: every copy of page 1 in it carries the
    file change counter of that state plus one or more, and a checkpoint writes one of them into the file; a file
    whose counter is none of these (an older backup's is lower) never had this WAL. A WAL with no page 1 committed
    (or one SQLite ignores) tells nothing, and is left to SQLite, as is a WAL a live run restarts meanwhile."""
    wal = Path(f"{path}-wal")
    try:
        if not wal.is_file() or wal.stat().st_size <= 32:
            return None
        first = _wal_page_one(wal)
        if first is None or not first[2]:
            return None
        with open(path, "rb") as f:
            header = f.read(100)
        again = _wal_page_one(wal)  # (read after the file: a run's checkpoint meanwhile wrote a page 1 listed here)
    except OSError:
        return None  # (unreadable: SQLite's own open says so)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None  # (not a database: the open says so)
    if again is None or again[0] != first[0]:
        return None  # a live run restarted its WAL meanwhile: its own
    _head, page_size, copies = again
    counters = [counter for counter, _count in copies]
    db_page_size = int.from_bytes(header[16:18], "big")
    db_page_size = 65536 if db_page_size == 1 else db_page_size
    counter = int.from_bytes(header[24:28], "big")
    if page_size != db_page_size:
        return f"its pages are {page_size} bytes, the manifest's {db_page_size}"
    # The commit count (touch_page_one): each commit of this release adds one, where SQLite's change counter stays as
    # it was over the commits of one connection (an upgrade's commit after the one before it showed the same counter)
    counts = [count for _counter, count in copies]
    count = int.from_bytes(header[60:64], "big")
    if counts[0] and count != (counts[0] - 1) % 2**31 and count not in counts:
        return (f"the manifest file is not the state the -wal's commits were made on, nor one they led to (its commit "
                f"count is {count}; the -wal's run from {(counts[0] - 1) % 2**31} to {counts[-1]})")
    if counter < counters[0] - 1:
        return (f"the manifest file is older than the state the -wal's commits were made on (its change counter is "
                f"{counter}; the -wal's commits began at {counters[0] - 1})")
    if counter != counters[0] - 1 and counter not in counters:
        return (f"the manifest file is not the state the -wal's commits were made on, nor one they led to (its change "
                f"counter is {counter}; the -wal's run from {counters[0] - 1} to {counters[-1]})")
    return None


def require_folder(path: Path) -> None:
    """Refuse a new manifest whose folder is not there. A nightly run whose manifest folder was gone (an unmounted
    disk, a mistyped path) made the folders and a new manifest there, recorded the whole site as added and
    exited 0: a new manifest starts only in a folder that exists."""
    folder = path.parent
    if not folder.is_dir():
        Manifest(path).check_path()  # a path under a file is said as such
        raise UsageError(
            f"the manifest's folder {folder} does not exist, so there is no manifest {path.name} there and none was "
            "started; nothing was written", where=str(path),
            fix="if the manifest lies on a disk that is not mounted, mount it; for a new manifest, create its folder "
                f"first (mkdir -p {shlex.quote(str(folder))}); else " + pass_db("the manifest's path"))
    twin = unicode_twin(path)
    if twin is not None:  # (`--db m_café.sqlite` typed or pasted from macOS: a new manifest beside the site's own)
        raise UsageError(
            f"there is no manifest {shown_name(path.name)} in {folder}, but there is {shown_name(twin)}, a name that "
            "differs from it only in Unicode form (an accented letter as one character or as a letter and a "
            "combining mark, as macOS writes it): no new manifest was started; nothing was written", where=str(path),
            fix=f"{pass_db('the name as it is on disk')}: {shlex.quote(str(folder / twin))}")


# What the longest name a command writes beside the manifest adds to its name: the runs turned away by the lock,
# <name>.runs-pending.jsonl; the state cache (.state.parquet), the lock's .upload.lock.json, SQLite's -journal and
# the .checkpoint folder add less (temporary files are cut to fit: fsutil.aside_stem).
SIDE_NAME_EXTRA = len(".runs-pending.jsonl")
# Windows (NTFS) counts a name's length in UTF-16 code units, POSIX file systems in bytes (ext4, XFS, APFS: 255).
NAME_UNITS = "characters" if os.name == "nt" else "bytes"


def name_length(name: str) -> int:
    """A file name's length as this system's file systems limit it (NAME_UNITS)."""
    if os.name == "nt":
        return len(name.encode("utf-16-le", "surrogatepass")) // 2
    return len(os.fsencode(name))


def name_max(folder: Path) -> int:
    """The longest file name the file system of `folder` (or of the nearest folder above it that exists) holds."""
    for place in (folder, *folder.parents):
        try:
            return os.pathconf(place, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # not there yet; no pathconf (Windows); no such limit
            continue
    return 255


def _read_only_file_system(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return False


def refuse_unwritable_name(path: Path) -> None:
    """A manifest in a folder whose name is not UTF-8 is read (by the bytes of its path: _sqlite_source), but not
    written: a run's side files (the state cache, snapshots, checkpoints) are written by libraries that take a path
    as UTF-8 text only, and a run committed its version (an import built the whole manifest), then failed on them."""
    full = os.path.abspath(path)
    if (bad := storable(full)) != full:
        raise UsageError(f"the manifest's path {bad} is not valid UTF-8 (shown as \\x.. escapes): chorus-batch reads "
                         "such a manifest but does not write one; nothing was done", where=storable(str(path)),
                         fix=pass_db("a path whose folder and file names are UTF-8") + " (rename the folder, or "
                                                                                              "choose another)")


# The manifests whose missing indexes this process has named (require() runs before each question a command asks).
_SAID_MISSING_INDEXES: set[str] = set()


def _say_missing_indexes(path: Path, lacking: list[str]) -> None:
    """A read-only command does not create again an index dropped by hand (a run and `upgrade` do, saying so): it
    answered rightly but walked whole tables for every lookup, slower with each version, with no word of why."""
    key = os.path.abspath(path)
    if key in _SAID_MISSING_INDEXES:
        return
    _SAID_MISSING_INDEXES.add(key)
    from ..progress import log

    log.warning(f"the manifest {path} lacks its {'index' if len(lacking) == 1 else 'indexes'} {', '.join(lacking)} "
                "(dropped by hand?): until it has them again, a question that needs one reads a whole table (slow on "
                f"a large site); `chorus-batch upgrade --db "
                f"{shlex.quote(str(path))}` (or the next run) creates them again")


def importing_path(path: Path) -> Path:
    """The temporary manifest `import-journal` builds beside the manifest at `path` (under its lock), then renames."""
    return path.with_name(f".{path.name}.importing-{os.getpid()}")


def remove_killed_imports(path: Path) -> None:
    """The temporary manifests (and SQLite's files beside them) that imports into `path` killed mid-way left: they
    hold the site's paths. Called under the manifest's run lock, which every import holds: none is being built."""
    for leftover in path.parent.glob(f".{path.name}.importing-*"):
        with contextlib.suppress(OSError):
            leftover.unlink()


def _not_opened(error: ManifestError, committed: str | None) -> ManifestError:
    """`error`, a refusal before SQLite opened the manifest, with what stands: NOT_OPENED, unless this process
    committed version `committed` before (the command's own words then say it stays)."""
    if committed is None:
        error.outcome = NOT_OPENED  # type: ignore[attr-defined]
    else:
        error.committed = committed  # type: ignore[attr-defined]
    return error


class Manifest:
    """One manifest file (SQLite) and the files beside it (lock, state cache)."""

    def __init__(self, path: str | os.PathLike[str]):
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):  # a library caller's None, number, ''
            raise UsageError(f"Manifest() takes the manifest's path, not {type(path).__name__} {path!r}",
                             where="chorus_batch.Manifest(path)", fix='give its path: Manifest("manifest.sqlite")')
        # The real file, symbolic links resolved: every file beside it (lock, state cache, checkpoint, SQLite's
        # -wal) is named after it, so two spellings of one manifest share one lock.
        from ..urls import expand_home

        # '~' as --db and open_manifest read it (Manifest("~/m.sqlite") was "no manifest at ./~/m.sqlite")
        given = expand_home(os.fspath(path), "Manifest(path)")
        # (as given, for check_path: resolved, a symbolic link to nothing was "no manifest at <its target>", where
        # open_manifest and every command say the link points nowhere)
        self._given = os.path.abspath(given)
        self.path = Path(os.path.realpath(given))
        self.cache_path = Path(f"{self.path}.state.parquet")
        self.pending_runs = Path(f"{self.path}.runs-pending.jsonl")
        self.run_outcome = Path(f"{self.path}.run-outcome")  # (note_run_outcome)
        self.left_by_killed: dict | None = None  # (the lock's details a killed holder left: Manifest.lock)
        self._manifest_id: str | None = None
        self.committed_label: str | None = None  # the version this object committed (messages after a signal)
        self._source: str | None = None  # what SQLite opens: the path, or a read-only URI (see _sqlite_source)
        self._held: int | None = None  # the inode of the file a run holds (hold, vanished)
        self._full_when_opened = False  # opened read-only because its disk was full (_sqlite_source)
        from .validation import ValidationCache

        self.validation = ValidationCache(self)

    # ------------------------------------------------------------------ opening

    def hold(self) -> None:
        """Remember which file the path names now (a run, under its lock): every later open checks that it is still
        that file (vanished), so that a manifest removed or moved while the run goes on is said as such, and SQLite
        does not start an empty database in its place."""
        self._held = self.path.stat().st_ino  # (not the device: an automounted share remounted keeps its files)

    def fold_wal(self, committed: str | None) -> None:
        """At the end of a run, under its lock: write the WAL's pages into the manifest file (what SQLite does, without
        a word, as the last connection closes). When that fails (a file-size limit the manifest outgrew, a full disk),
        the run's writes, its version too, stay in `<db>-wal` only: safe, but a copy of the manifest file alone (a
        backup) lacks them, and the WAL grows night after night; said as a warning, with the cause. A reader holding
        the WAL (busy) is not a failure: the last connection's close folds it."""
        try:
            with self._open() as con:
                # PASSIVE: never waits (TRUNCATE waits out the 30 s busy timeout for a reader, a notebook left open)
                con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except ManifestError as exc:
            what = f"version {committed}" if committed else "this run's record"
            log.warning(f"{what} is committed, but only in {self.path}-wal: SQLite could not write it into the manifest "
                        f"file ({exc.what}); {exc.fix}: the next run writes it there. Until then, keep "
                        f"{self.path.name}-wal with the manifest (a copy of the manifest file alone lacks it)")

    def vanished(self) -> ManifestError | None:
        """The error to raise when the file held (hold) is no longer at the path, else None. Its `outcome` says
        what became of the version this object committed, if any: it went with the file."""
        if self._held is None:
            return None
        try:
            if os.stat(self.path).st_ino == self._held:
                return None
            how = "another file is there now"
        except FileNotFoundError:
            how = "its folder is no longer there" if not self.path.parent.is_dir() else "it is no longer there"
        except OSError:  # (the file system failing: SQLite's own error says it)
            return None
        error = ManifestError(
            f"the manifest {self.path} was removed or moved while this run went on ({how})", where=str(self.path),
            fix="find what removed or moved it (a clean-up job, a person, a share unmounted), put the manifest back "
                "from where it went or from a backup, and run again (a run on a new manifest starts with no history)")
        error.committed = self.committed_label  # type: ignore[attr-defined]
        error.outcome = (f"version {self.committed_label} was committed into that file before it went: it is not in "  # type: ignore[attr-defined]
                         f"{self.path}" if self.committed_label else f"nothing was committed to {self.path}")
        return error

    def _sqlite_source(self) -> str:
        if (gone := self.vanished()) is not None:  # (sqlite3 would make a new, empty database there)
            raise gone
        for side in ("-wal", "-shm", "-journal"):  # SQLite refuses them through a link, and said "readonly database"
            beside = Path(f"{self.path}{side}")
            if beside.is_symlink():
                raise _not_opened(committed=self.committed_label, error=ManifestError(
                    f"{beside} is a symbolic link (to {os.readlink(beside)}): SQLite opens no {side} file of a "
                    "database through one, so the manifest can be neither read nor written", where=str(beside),
                    fix=f"remove the link (SQLite makes its {side} file itself, beside the manifest), then run again"))
        """The path, or a read-only URI for a reader who cannot write beside the manifest (a reviewer with
        read access: a file mode 0400/0444, a read-only folder or share). A WAL database read-write needs its
        -shm file, which SQLite cannot create there ("attempt to write a readonly database" on every read);
        read-only it reads an existing readable -shm (mode=ro), else the file as it is (immutable=1: no -shm,
        no locks), which is the whole manifest only while no -wal holds commits not yet checkpointed into it."""
        if self._source is None and self.path.is_file() and (why := foreign_wal(self.path)) is not None:
            self._refuse_foreign_wal(why)
        if self._source is not None:
            if self._source.endswith("immutable=1"):
                self._check_no_wal()  # again at each open: a reader (a notebook) outlives runs committing meanwhile
            return self._source
        uri = "file:" + urllib.parse.quote(os.fsencode(self.path))  # (bytes: a name that is not UTF-8 is kept)
        # A path with a name that is not UTF-8 (a folder named in Latin-1) as that URI: ADBC takes a path as UTF-8
        # text only, and every command failed with an internal error (UnicodeEncodeError) on such a manifest.
        plain = str(self.path) if str(self.path).isascii() or _is_utf8(str(self.path)) else uri
        if not self.path.is_file():
            return plain  # nothing to probe (yet): opening it is the writer's business
        sources = [plain, f"{uri}?mode=ro", f"{uri}?mode=ro&immutable=1"]
        if not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK | os.X_OK)):
            self._check_no_hot_journal()
        if not os.access(self.path, os.W_OK):
            # A reader who may not write the manifest: in a folder it may write (a shared, sticky one) SQLite
            # would leave a -shm and -wal of this user's beside it, which the owner's runs cannot then use or
            # remove. Only the owner's live -shm is used (mode=ro), else the file is read as it is.
            sources = sources[1:] if Path(f"{self.path}-shm").exists() else sources[2:]
        for source in sources:
            if source.endswith("immutable=1"):
                self._check_no_wal()
            con = connect_sqlite3(self.path, source)
            try:
                # Another program's transaction (an sqlite3 shell's BEGIN EXCLUSIVE on a rollback-journal manifest, a
                # database browser's unsaved edit): each open waited SQLite's 30 s, twice, and said "busy", exit 3
                con.execute(f"PRAGMA busy_timeout = {OTHER_PROGRAM_WAIT_MS}")
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.Error as exc:
                low = str(exc).lower()
                if "locked" in low or "busy" in low:
                    raise self.held_by_another_program(exc) from None
                if "readonly" in low or "read-only" in low or "unable to open" in low:
                    continue  # no -shm to be had (with a -wal: "unable to open"): the next, more restricted way in
                if ("disk i/o error" in low or "full" in low) and nearly_full(self.path.parent):
                    # a full disk: SQLite cannot grow a -shm there ("disk I/O error"), and `versions` or `report`
                    # failed on a manifest they only read; read-only, a reader needs no new file
                    self._full_when_opened = True
                    continue
                break  # another fault (not a database, unreadable): the caller's open reports it
            finally:
                con.close()
            self._source = source
            return source
        return plain

    def _refuse_foreign_wal(self, why: str) -> None:
        """Refused before SQLite opens the manifest (which would apply the -wal's pages to it): a -wal that is not this
        file's (foreign_wal). Nothing is changed: the manifest, its -wal and -shm stay as they are."""
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        aside = [shlex.quote(str(side)) for side in (wal, shm) if side.exists()]
        raise _not_opened(committed=self.committed_label, error=ManifestError(
            f"the -wal file beside the manifest is not this manifest file's: {why}. SQLite would write its commits into "
            f"this file and make it a mix of two states of the manifest (a manifest restored from a backup, or copied "
            f"over, while a stopped run's -wal and -shm stayed beside it); nothing was changed", where=str(wal),
            fix=f"if you restored {self.path.name} from a backup (or copied it there), move the files SQLite left beside "
                f"the old one aside (mkdir aside && mv {' '.join(aside)} aside/) and run again: the manifest is then the "
                f"backup's state; if not, put back the manifest file that -wal belongs to"))

    def _check_no_hot_journal(self) -> None:
        """Refused to a user who cannot write the manifest or its folder while a -journal beside it holds an edit cut
        short (a hot rollback journal): SQLite undoes it at the next open that may write there; any other open reads
        the edit's half-written pages, or fails ("disk I/O error", not being able to remove the -journal)."""
        journal = Path(f"{self.path}-journal")
        try:
            with open(journal, "rb") as fh:
                hot = fh.read(8) == b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7"  # (SQLite's journal header; zeroed: not hot)
        except OSError:
            hot = False
        if hot:
            # read as it is, `versions` and `report` said "the manifest is damaged ... restore it from a backup" of an
            # intact manifest, whose edit SQLite undoes at the next open by a user who may write beside it
            here, folder = shlex.quote(str(self.path)), shlex.quote(str(self.path.parent))
            raise _not_opened(committed=self.committed_label, error=ManifestError(
                f"cannot read the manifest: its -journal file ({journal.name}) holds an edit that was cut short (a "
                "program or sqlite3 session stopped while it changed the manifest), which SQLite undoes at the next "
                "open by a user who can write the manifest and its folder; this user cannot, and the file read as it is "
                "holds that edit's half-written pages. The manifest is not damaged",
                where=str(journal),
                fix=f"have a user who can write it and {folder} run any command on it once "
                    f"(chorus-batch versions --db {here}), or copy the manifest with its "
                    f"-journal file to a folder you can write (cp {here} {shlex.quote(str(journal))} DIR/) and "
                    + pass_db(f"DIR/{self.path.name}")))

    def _check_no_wal(self) -> None:
        """An immutable read sees the file only: refused while a -wal holds commits not yet in it, or a -journal an
        edit cut short."""
        self._check_no_hot_journal()
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size > 0 and _read_only_file_system(self.path.parent):
            # (a backup, a snapshot, a share mounted read-only: no run will ever move the -wal into the file there)
            raise _not_opened(committed=self.committed_label, error=ManifestError(
                "cannot read the manifest: it lies on a read-only file system, where SQLite cannot make its -shm file, "
                "and its -wal file holds commits not yet written into it", where=str(self.path),
                fix=f"copy the manifest with its -wal file to a folder you can write (cp {shlex.quote(str(self.path))} "
                    f"{shlex.quote(str(wal))} DIR/) and {pass_db(f'DIR/{self.path.name}')}: SQLite reads the "
                    "commits from the -wal beside it"))
        if wal.exists() and wal.stat().st_size > 0:
            raise _not_opened(committed=self.committed_label, error=ManifestError(
                "cannot read the manifest: this user cannot write its folder (SQLite's -shm file), and its "
                "-wal file holds commits not yet written into it (a run is committing, or one was stopped)",
                where=str(self.path),
                fix="read it again once the run has ended (its last step moves the -wal into the manifest), or "
                    "ask its owner for a copy (`sqlite3 <manifest> '.backup copy.sqlite'`) and "
                    + pass_db("copy.sqlite")))

    def connect(self) -> sqlite3.Connection:
        try:
            source = self._sqlite_source()
            return connect_sqlite3(self.path, source)
        except sqlite3.Error as exc:
            raise ManifestError(
                f"cannot open the manifest: {exc}",
                where=str(self.path),
                fix=f"check that the folder exists and is writable, or {pass_db('another path')}",
            ) from None

    @contextlib.contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        con = self.connect()
        try:
            yield con
        except sqlite3.Error as exc:
            raise self.failure(exc) from None
        finally:
            con.close()

    @contextlib.contextmanager
    def adbc(self) -> Iterator[Any]:
        """An ADBC connection (bulk Arrow reads and writes); SQLite's errors become ManifestErrors. An
        uncommitted transaction is rolled back when the connection closes: nothing half-written stays."""
        import adbc_driver_manager

        from . import adbc  # the low-level API: its dbapi module would import pandas (see adbc.py)

        try:
            source = self._sqlite_source()  # (first: its probe is a sqlite3 connection, closed before ADBC's opens)
            with one_library(self.path, "adbc"), adbc.connect(source) as con:
                yield con
        except (adbc_driver_manager.Error, sqlite3.Error) as exc:
            raise self.failure(exc) from None

    def held_by_another_program(self, exc: BaseException) -> ManifestLocked:
        """SQLite's lock on the manifest held past OTHER_PROGRAM_WAIT_MS by a program that is not a chorus-batch
        run (those take the run lock first, and say who holds it): exit 4, what holds it and how to let it go."""
        here = shlex.quote(str(self.path))
        held = ManifestLocked(
            f"another program holds the manifest locked in SQLite ({sqlite_words(exc)}, still after "
            f"{OTHER_PROGRAM_WAIT_MS // 1000} s): an sqlite3 shell or database browser with a transaction open (BEGIN, "
            "unsaved changes), or a program reading it as it was to be written", where=str(self.path),
            fix=f"end that program's transaction (COMMIT or ROLLBACK in the sqlite3 shell; write or revert the changes "
                f"in a browser) or close it, then run again; `fuser -v {here}` or `lsof {here}` names it")
        held.outcome = LEFT_AS_IT_WAS  # type: ignore[attr-defined]
        return held

    def failure(self, exc: BaseException) -> ManifestError:
        """What an SQLite error means for the user: what happened, where, and what to do."""
        text = sqlite_words(exc)
        low = text.lower()
        where = str(self.path)
        if self._full_when_opened and ("readonly" in low or "read-only" in low or "attempt to write" in low):
            return ManifestError(f"the disk is full: the manifest was opened read-only, as SQLite could not make its "
                                 f"-shm file beside it ({free_bytes(self.path.parent) // 1024} KiB free), and cannot "
                                 "be written", where=where, fix="free space on the manifest's file system and run again")
        if "readonly" in low or "read-only" in low or "attempt to write" in low:
            return ManifestError(f"the manifest cannot be written: {text}", where=where,
                                 fix="make the manifest and its folder writable by this user (SQLite writes its "
                                     f"-wal and -shm files beside it), or {pass_db('another path')}")
        if "full" in low and ("disk" in low or "database" in low):
            temp, room = sqlite_temp_folder(), free_bytes(self.path.parent)
            full = os.name == "nt" or nearly_full(self.path.parent)
            # SQLite says the same of its temporary files ($TMPDIR: a small tmpfs, a node's full /tmp): "free
            # space on the manifest's file system" sent the user to a disk with gigabytes free. Unless the temporary
            # folder has more room than the manifest's disk: a write larger than that disk's room is rolled back,
            # which leaves more than "nearly full" free there (a run on a 6 MiB disk with 1 MiB left was sent to
            # /var/tmp, with 64 GiB free, and told to put SQLITE_TMPDIR on the full disk)
            if not full and free_bytes(temp) < room:
                return ManifestError(
                    f"the disk is full: {text} (the manifest's file system has {room // 2**20} MiB free; SQLite's "
                    f"temporary folder {temp}, where it sorts and builds indexes, has {free_bytes(temp) // 2**20} MiB "
                    "free)", where=f"{temp} (SQLite's temporary folder: $SQLITE_TMPDIR, else $TMPDIR, else /var/tmp "
                                   "or /tmp)",
                    fix=f"free space in {temp}, or point SQLITE_TMPDIR at a folder with room (such as the manifest's: "
                        f"SQLITE_TMPDIR={shlex.quote(str(self.path.parent.resolve()))}), and run again (if both have "
                        "room, a disk quota may be reached: `quota -s`)")
            left = "" if full else (
                f" (the manifest's file system has {room // 2**20} MiB free, too little for this write)")
            return ManifestError(f"the disk is full: {text}{left}",  # (what was committed: said by the command, cli.main)
                                 where=where, fix="free space on the manifest's file system and run again")
        if "malformed" in low:  # SQLite's own file, damaged: starting anew would lose every version and the ledger
            here = shlex.quote(where)
            damaged = ManifestError(f"the manifest is damaged: {text} (a copy cut short, a disk or file system that "
                                    "lost writes)", where=where,
                                    fix=f"restore it from a backup (in its place: cp BACKUP {here}), or from the copy "
                                        "`upload` left beside the newest version it completed at the centre "
                                        "(<version>/_manifest/manifest.sqlite); do not start a new manifest in its "
                                        "place: its versions and uploads ledger would be lost. With neither, keep it "
                                        "and copy out what is still readable (rows on damaged pages are lost): "
                                        + salvage_command(where))
            # (not "the manifest holds what it held before": what it holds is damaged)
            damaged.outcome = ("nothing was written to it; what it held can be had back only from a backup or the "
                               "upload's copy (or in part by the salvage above)")
            return damaged
        if "not a database" in low or "file is encrypted" in low:
            # A file of a `run --parquet` folder (versions.parquet, a version's manifest.parquet) given as --db by a
            # reviewer: "move this one aside to start a new manifest" sent them to move a snapshot away
            folder = next((up for up in list(self.path.parents)[:2] if (up / "versions.parquet").is_file()
                           or (up / "manifest.json").is_file() and any(up.glob("version=*"))), None)
            fix = (f"it is a file of the Parquet snapshot folder {folder}, not a manifest: to read the snapshots, "
                   + pass_db("that folder") + " (every version is read from there); `run` and the commands that write "
                   "take the manifest file" if folder is not None else
                   NOT_SQLITE_FIX)
            other = ManifestError(f"the manifest is not a readable SQLite database: {text}", where=where, fix=fix)
            other.outcome = "nothing was written to it: the file is as it was"  # (it holds no versions to speak of)
            return other
        if "unable to open" in low or "cannot open" in low:
            return ManifestError(f"cannot open the manifest: {text}", where=where,
                                 fix=f"check that {named('--db', 'the manifest path')} names a file (not a folder) in "
                                     "a folder this user can write")
        if "locked" in low or "busy" in low:
            return ManifestError(f"the manifest is busy: {text}", where=where,
                                 fix="another program holds it open for writing; close it (or wait) and run again")
        if "constraint failed" in low:  # rows that contradict the manifest's: a fault of a writer, not of the disk
            return ManifestError(f"the manifest refused a write that conflicts with its recorded rows: {text}; the "
                                 "write was rolled back", where=where,
                                 fix="check that no other program writes this manifest, then run again (a run starts "
                                     "from the latest version); if it fails the same way, report it with the -v output")
        if "disk i/o" in low and nearly_full(self.path.parent):  # (under 1 MiB: less than -shm and WAL pages need)
            # SQLite reports a full disk as an I/O error when its -shm or -wal cannot grow (mmap/ftruncate on a full
            # tmpfs or quota): "check dmesg" would send the user the wrong way.
            return ManifestError(f"the disk is full: {text} (the manifest's file system has "
                                 f"{free_bytes(self.path.parent) // 1024} KiB free)", where=where,
                                 fix="free space on the manifest's file system and run again")
        if "disk i/o" in low and (limit := file_size_limit()) is not None:
            return ManifestError(f"the manifest could not be written: {text}; this process has a file-size limit "
                                 f"(`ulimit -f`) of {limit // 1024} KiB; a write past it fails, which SQLite reports as a "
                                 "disk I/O error",
                                 where=where, fix=FILE_SIZE_FIX)
        if "disk i/o" in low:
            return ManifestError(f"the manifest's file system failed: {text}", where=where,
                                 fix="check the manifest's disk and file system (dmesg, a network mount), then run again")
        return ManifestError(f"SQLite failed on the manifest: {text}", where=where,
                             fix="rerun with -v for details, and report it with that output if it fails again")

    def _held_or_failure(self, exc: BaseException) -> ManifestError | ManifestLocked:
        low = str(exc).lower()
        return self.held_by_another_program(exc) if "locked" in low or "busy" in low else self.failure(exc)

    def ensure_schema(self, *, create: bool = True) -> tuple[int | None, int]:
        """Create the manifest (owner-only; not if `create` is False: `upgrade`), or migrate an older one in
        place; (schema before, now)."""
        self.check_path()
        empty = UsageError(f"no manifest at {self.path}{' (an empty file)' if self.path.exists() else ''}: nothing to "
                           "upgrade; nothing was changed", where=str(self.path),
                           fix=pass_db("the manifest's path") + " (`chorus-batch run` starts a new manifest)")
        if not create and not self.path.exists():
            raise empty
        if not self.path.exists():
            require_folder(self.path)
            try:
                # Create the file with owner-only permissions before SQLite writes to it.
                os.close(create_private(self.path, truncate=False))
            except OSError as exc:
                raise ManifestError(f"cannot create the manifest: {exc.strerror or exc}", where=str(self.path),
                                    fix=pass_db("a file path in a folder this user can write")) from None
        with self._open() as con:
            # Under the run lock, no chorus-batch run writes it: SQLite's lock held longer is another program's
            con.execute(f"PRAGMA busy_timeout = {OTHER_PROGRAM_WAIT_MS}")
            try:
                # what is not a manifest is refused before anything is written to it
                if schema_version(con, str(self.path)) is None and not create:
                    raise empty
                con.execute("PRAGMA journal_mode = WAL")
                if schema_version(con, str(self.path)) is None:
                    # A new manifest's tables in one transaction: each CREATE was its own commit, and a second run
                    # started by the same cron minute (its preflight reads the schema before it meets the lock) saw a
                    # `meta` table without its schema_version row: "edited or damaged", exit 3, instead of locked
                    con.execute("BEGIN IMMEDIATE")
                versions = upgrade(con, str(self.path), self._held_or_failure,
                                   lambda: _start_count(con) if uncounted(self.path) else None)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc).lower() or "busy" in str(exc).lower():
                    raise self.held_by_another_program(exc) from None
                raise
        before, after = versions
        if before is not None and self.left_by_killed is not None:
            # (every command that upgrades, under the run lock: `upgrade` before the next run took the details away)
            with self._open() as con, con:
                self._record_killed_before_start(con, before)
            self.left_by_killed = None
        self.after_commit()
        if before is not None and before != after:  # said even with -q: it stays whatever the command does next
            from ..progress import log

            log.warning("upgraded the manifest %s from schema %s to %s (older releases cannot write it now)",
                        self.path, before, after)
        return versions

    def check_path(self) -> None:
        """--db names a file (or nothing yet), not a folder, that this user can reach (require_reachable: not under a
        file, which a shard took, reading no manifest there, and hashed the site for nothing)."""
        require_reachable(self._given)  # (the path as given: a link to nothing is said as such, by fsutil alone)
        if self._given != str(self.path):
            require_reachable(self.path)
        if self.path.is_dir():
            if (self.path / "versions.parquet").is_file():  # read-only commands take it; this one writes or checks
                raise UsageError(f"{named('--db', 'the manifest path')} names a --parquet snapshot folder, which only `versions`, `changes`, `files`, "
                                 f"`diff`, `history` and `report` read: {self.path}", where=str(self.path),
                                 fix=pass_db("the SQLite manifest the snapshots were written from"))
            raise UsageError(f"{named('--db', 'the manifest path')} names a folder, not a manifest file: {self.path}",
                             where=str(self.path),
                             fix=f"{pass_db('a file path')}, e.g. {self.path / 'chorus_manifest.sqlite'}")
        # A named pipe, a device or a socket (`--db /dev/null` from a script's placeholder, a mkfifo left there): SQLite
        # said "disk I/O error", exit 3 with "check the manifest's disk", or `versions` "the manifest at /dev/null is
        # empty; run `chorus-batch run`", and a run blocked on a pipe with no writer.
        import stat

        try:
            mode = self.path.stat().st_mode
        except OSError:
            return  # (nothing there, or not reachable: said by the caller as before)
        if not stat.S_ISREG(mode):
            kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "a device")
            raise UsageError(f"{named('--db', 'the manifest path')} names {kind}, not a manifest file: {self.path}; "
                             "nothing was done",
                             where=str(self.path),
                             fix=pass_db("the manifest's file path (a regular file, or a new name for a first run)"))

    def check_name_length(self) -> None:
        """The manifest's file name leaves room for the longest name a command writes beside it (every command that
        writes takes the lock first, so this is checked then): a name that fit while the files named after it did
        not ended a run after its listing and hashing with 'internal error: File name too long', at the state cache,
        nothing committed."""
        name = self.path.name
        limit = name_max(self.path.parent)
        if name_length(name) + SIDE_NAME_EXTRA <= limit:
            return
        raise UsageError(
            f"the manifest's file name is {name_length(name)} {NAME_UNITS} long, and the files a manifest keeps beside "
            f"it are named after it with up to {SIDE_NAME_EXTRA} more (<name>.runs-pending.jsonl, <name>.state.parquet), over "
            f"the {limit} {NAME_UNITS} this file system holds in a name; nothing was done", where=str(self.path),
            fix=f"give --db a file name of at most {limit - SIDE_NAME_EXTRA} {NAME_UNITS} (e.g. chorus_manifest.sqlite "
                "in the same folder)")

    def up_to_date(self) -> bool:
        """At this release's schema, and not marked by a later release as not to be written by this one (refused
        as `upgrade` refuses it), with every index of the schema: nothing for `upgrade` to do. Read only: no lock, nothing written."""
        if self.schema_on_disk() != SCHEMA_VERSION:
            return False
        with self._open() as con:
            check_release(con, str(self.path))
            return not missing_indexes(con)

    def missing_indexes(self) -> list[str]:
        """The schema's indexes this manifest lacks (read only)."""
        with self._open() as con:
            return missing_indexes(con)

    def schema_on_disk(self) -> int | None:
        """The schema version of the manifest there, or None when there is none yet (no file, an empty file: a run
        or a merge starts the manifest in it). A folder, a path under a file, another program's database and a
        manifest of a newer release are refused (UsageError / ManifestError), as every command refuses them."""
        self.check_path()
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        with self._open() as con:
            version = schema_version(con, str(self.path))
            if version is not None and version > SCHEMA_VERSION:
                raise too_new(version, str(self.path), con)
        return version

    def is_empty_file(self) -> bool:
        """The path is a file of 0 bytes with no commits waiting in a -wal beside it: not a manifest (yet)."""
        try:
            if not self.path.is_file() or self.path.stat().st_size:
                return False
            wal = Path(f"{self.path}-wal")
            return not (wal.exists() and wal.stat().st_size > 0)
        except OSError:
            return False

    def require_file(self) -> None:
        """--db names a manifest file that is there (what a command that only reads or extends a manifest checks
        first, before it opens it: SQLite would make an empty file a database, and a locked command's
        ensure_schema wrote a whole manifest's tables into it)."""
        self.check_path()
        if not self.path.exists():  # a --db that names nothing: a usage error, as in upgrade, validate and registry
            raise UsageError(
                f"no manifest at {self.path}",
                where=str(self.path),
                # (the run that starts it there: a bare `chorus-batch run` pasted from here ran on ./chorus.toml's
                # site into another manifest, or stopped for want of a site)
                fix=pass_db("the manifest's path") + f"; or start one there: {first_run_command(self.path)}",
            )
        if self.is_empty_file():
            raise UsageError(
                f"{named('--db', 'the manifest path')} names an empty file (0 bytes), not a manifest: {self.path}; it was "
                "left as it is",
                where=str(self.path),
                fix=pass_db("the manifest's path") + "; or commit a first version into it with "
                    f"{first_run_command(self.path)} (run starts a new manifest in an empty file)",
            )

    def require(self) -> None:
        """For read-only commands: the manifest exists and has the schema this release reads."""
        self.require_file()
        try:
            with self._open() as con:
                version = schema_version(con, str(self.path))
                if version is not None and version > SCHEMA_VERSION:
                    raise too_new(version, str(self.path), con)
                lacking = missing_indexes(con) if version == SCHEMA_VERSION else []
        except ManifestError as exc:
            # Another file given as the manifest: "move this one aside to start a new manifest" (or "a new file name
            # to start one") is what `run` does with it; a command that only reads, or a notebook, then said "no
            # manifest at ..." of the new name
            if exc.fix in (NOT_SQLITE_FIX, NOT_A_MANIFEST_FIX):
                exc.fix = READ_ONLY_WRONG_FILE_FIX
            raise
        if lacking:
            _say_missing_indexes(self.path, lacking)
        if version is None:
            raise UsageError(f"the manifest at {self.path} is empty", where=str(self.path),
                             fix="run `chorus-batch run` to commit the first version")
        if version > SCHEMA_VERSION:
            raise too_new(version, str(self.path))
        if version < SCHEMA_VERSION:
            upgrading = upgrade_under_way(self.path, version)
            if upgrading is not None:
                raise ManifestLocked(
                    f"the manifest has schema version {version} and is locked by {upgrading}, which upgrades it to "
                    f"schema {SCHEMA_VERSION} before anything else", where=str(self.path),
                    fix="this command did nothing; run it again once that one has finished (if that process is gone, "
                        f"upgrade it: `chorus-batch upgrade --db {command_word(str(self.path))}`)")
            killed = killed_upgrade(self.path, version)
            older = ManifestError(
                f"the manifest has schema version {version}, written by an older chorus-batch; this one reads "
                f"schema {SCHEMA_VERSION}" + ("" if killed is None else
                f"; {killed} was killed before or while it upgraded it (its process is gone): the upgrade was undone, "
                "nothing of it was written"),
                where=str(self.path),
                # commands that paste: the path quoted, the copy's command naming it (`cp <manifest> ...` before)
                fix=f"upgrade it in place with `chorus-batch upgrade --db {command_word(str(self.path))}` (the next "
                    "`run` or `validate` also does; nothing recorded is lost, but older releases cannot write it "
                    "afterwards); a reviewer who may not change it upgrades a copy: "
                    # (not `cp`: commits still in its -wal file, a killed run's, were left out of the copy, and a copy
                    # taken while a run wrote was torn; SQLite's backup reads through the WAL, one consistent moment)
                    f"`sqlite3 {shlex.quote(str(self.path))} '.backup copy.sqlite' && chorus-batch upgrade "
                    "--db copy.sqlite`",
            )
            # refused before anything was read or written: `registry` said "the proc_ids given so far stay recorded"
            # of proc_ids it never gave (its word on a failure midway)
            raise _refused(older)

    def lock(self, argv: list[str], *, kind: str = "run"):
        self.check_path()
        self.check_name_length()
        refuse_unwritable_name(self.path)
        try:
            links = self.path.stat().st_nlink if self.path.is_file() else 1
        except OSError:  # not made yet
            links = 1
        if links > 1:  # each name would get its own lock and -wal file: two writers, a corrupt manifest
            raise ManifestError(
                f"the manifest has {links} hard links (names); SQLite does not support a database file with more "
                "than one, and runs through different names would not exclude each other; nothing was done",
                where=str(self.path),
                fix=f"keep one name: remove the others (find / -xdev -samefile {self.path}), or copy the "
                    "manifest (cp) instead of linking it")
        return self._locked(argv, kind)

    @contextlib.contextmanager
    def _locked(self, argv: list[str], kind: str) -> Iterator[dict | None]:
        with manifest_lock(self.path, argv, kind=kind) as left:
            self.left_by_killed = left if kind == "run" else None  # (begin_run records a run's that has no row)
            if kind == "run" and left is not None and left.get("command") == "import-journal":
                # (a killed import's temporary manifest, the site's paths in it: only a next import removed it, and a
                # site that went on with `run` kept it for good)
                remove_killed_imports(self.path)
            try:
                yield left
            finally:
                if kind == "run":
                    self._take_pending_runs_at_release()

    def _take_pending_runs_at_release(self) -> None:
        """Move the runs turned away while this process held the lock into `runs`, as it lets go: a holder that is
        no run (`validate --force`, `registry`, `upgrade`) never finishes a run, and the nights it
        turned away stayed in <manifest>.runs-pending.jsonl, not in `runs` nor `history`, until a later run ended.
        (A run's own end took them already: nothing then.) Best effort: the file waits for the next holder."""
        if not self.pending_runs.is_file() or not self.path.is_file():
            return
        with contextlib.suppress(ChorusError, sqlite3.Error, OSError):  # (a damaged manifest, another program's lock)
            with self._open() as con, con:
                # (only into a manifest of this release's schema: an older one, refused as damaged before its upgrade
                # wrote it, took the row its own refused run noted beside it; the run that upgrades it moves them in)
                if schema_version(con, str(self.path)) == SCHEMA_VERSION:
                    self._take_pending_runs(con)

    # ------------------------------------------------------------------ reads

    @staticmethod
    def meta(con: sqlite3.Connection, key: str) -> str | None:
        row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, values: dict[str, str]) -> None:
        """Set keys of `meta` (one transaction)."""
        with self._open() as con, con:
            con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def _one(self, sql: str, params: tuple = ()) -> tuple | None:
        """One row of a small query (plain sqlite3: no ADBC start-up on a no-change run)."""
        if not self.path.exists():
            return None
        with self._open() as con:
            return con.execute(sql, params).fetchone()

    def removed_in(self, paths: pl.Series) -> pl.DataFrame:
        """srcfile, version: the version that ended each of `paths` (its latest row, if no row of it is current)."""
        rows = []
        # (none where there is no manifest yet: `status --mode append --delete-list` before a first run made an empty
        # file at --db, then failed "SQLite failed on the manifest: no such table: source_files", exit 3)
        if paths.len() and self.path.exists():
            with self._open() as con:
                rows = con.execute(
                    "SELECT srcfile, max(version_invalid) FROM source_files WHERE srcfile IN (SELECT value FROM "
                    "json_each(?)) GROUP BY srcfile HAVING count(*) = count(version_invalid)",
                    (json.dumps(paths.to_list()),)).fetchall()
        return pl.DataFrame(rows, schema={"srcfile": pl.String, "version": pl.String}, orient="row")

    def latest_version(self) -> dict | None:
        if not self.path.exists():
            return None
        with self._open() as con:
            con.row_factory = sqlite3.Row
            row = con.execute("SELECT * FROM versions ORDER BY label DESC LIMIT 1").fetchone()
            return dict(row) if row else None

    def no_version_error(self, also: str = "") -> UsageError:
        """"The manifest has no versions yet" (exit 2), said with the runs that tried, what the latest ended in and
        what to do about it (store.runs' words, as the report lists runs): a cron's first runs that all failed were
        told "run `chorus-batch run`", as if none had been tried. `also`: an alternative added to the fix ("or check
        a folder with ..."). The one message of validate, changes, files, report and the review API."""
        tried = self._one("SELECT count(*), max(run_id) FROM runs WHERE mode IS NOT 'import'") or (0, None)
        if not tried[0]:
            return UsageError("the manifest has no versions yet", where=str(self.path),
                              fix=f"commit one first, {first_run_command(self.path)}{also}")
        started, exit_code, message, site, n_files = self._one(
            "SELECT started_at, exit_code, message, site, n_files FROM runs WHERE run_id = ?", (tried[1],))
        if exit_code in (0, 1) and not n_files:  # (a run over an empty folder commits no version, and ends 0)
            ended, advice = (f"listed no files in {shown_name(site or '?')}",
                             "check that the site root is the folder that holds OMOP/ and the person folders")
        else:
            roots = [site] if site else []
            ended = run_outcome(exit_code, None) + (f" ({run_message(message, roots)})" if message else "")
            advice = run_advice(exit_code) or "read the message and that night's log"
        runs = "1 run was recorded" if tried[0] == 1 else f"{tried[0]} runs were recorded"
        return UsageError(f"the manifest has no versions yet: {runs}, none committed a version; the latest "
                          f"(run {tried[1]}, started {started}): {ended}", where=str(self.path),
                          fix=f"{advice}; then run again, {first_run_command(self.path)}{also}")

    def last_scan_started_ns(self) -> int | None:
        """Scan start of the last run that finished, or that committed a version however it ended (for the
        racily-clean check): a run stopped by a signal just after its commit was passed over, and the next run took
        an older scan's start, so that every file written since that older scan was hashed again (a whole site)."""
        row = self._one("SELECT scan_started_ns FROM runs WHERE (exit_code IN (0, 1) OR version IS NOT NULL) "
                        "AND scan_started_ns IS NOT NULL ORDER BY run_id DESC LIMIT 1")
        return row[0] if row else None

    def version_of_scan(self, scan_started_ns: int) -> str | None:
        """The version committed from the scan that started at `scan_started_ns` (a merge's: its shards' earliest)."""
        if not self.path.exists():
            return None
        row = self._one("SELECT version FROM runs WHERE scan_started_ns = ? AND version IS NOT NULL "
                        "ORDER BY run_id DESC LIMIT 1", (scan_started_ns,))
        return row[0] if row else None

    def took_shard(self, scan_started_ns: int, written_at: str) -> bool:
        """Whether a run ended (exit 0 or 1) at or after `written_at` (ISO, seconds) whose listing began no later than
        `scan_started_ns`: the merge that took a shard listed then and written at that time (committing a version,
        or finding no changes), as no plain run started after the shard was written lists the site before it."""
        row = self._one("SELECT 1 FROM runs WHERE exit_code IN (0, 1) AND scan_started_ns IS NOT NULL "
                        "AND scan_started_ns <= ? AND finished_at >= ? LIMIT 1", (scan_started_ns, written_at))
        return row is not None

    def scan_of_version(self, version: str) -> int | None:
        """When the listing of the run that committed `version` started (a merge's: its shards' earliest), or None."""
        if not self.path.exists():
            return None
        row = self._one("SELECT scan_started_ns FROM runs WHERE version = ? AND scan_started_ns IS NOT NULL "
                        "ORDER BY run_id DESC LIMIT 1", (version,))
        return row[0] if row else None

    def mtime_unit_ns(self) -> int:
        """The precision of mtimes imported from another tool's journal (1000: chorus-upload's microseconds), or
        1 (every mtime recorded by chorus-batch itself, in nanoseconds). hashing.Rules compares at it."""
        if not self.path.exists():
            return 1
        row = self._one("SELECT value FROM meta WHERE key = 'mtime_unit_ns'")
        return int(row[0]) if row else 1

    def version_errors(self, label: str | None) -> pl.DataFrame:
        schema = schema_of("scan_errors", ("srcfile", "kind", "message"))
        if label is None or not self.path.exists():
            return pl.DataFrame(schema=schema)
        with self._open() as con:
            return fetched_frame(con.execute("SELECT srcfile, kind, message FROM scan_errors WHERE version = ? "
                                             "ORDER BY srcfile, kind, message", (label,)), schema)

    def state_identity(self) -> tuple[str | None, str | None]:
        """(manifest_id, state_generation): which manifest, and which state of it (bumped by every write
        of current rows); what files beside it that depend on its state (the hash checkpoint) are tied to."""
        row = self._one("SELECT (SELECT value FROM meta WHERE key = 'manifest_id'), "
                        "(SELECT value FROM meta WHERE key = 'state_generation')")
        return (row[0], row[1]) if row else (None, None)

    def known_root_ids(self, roots: list[tuple[str, str | None]]) -> dict[int, int]:
        """The manifest's root_id of each of a scan's roots (by position) that it has recorded already."""
        if not self.path.exists():
            return {}
        return _match_roots(list(self.roots().select("root_id", "location", "modality").iter_rows()), roots)

    def same_root_ids(self, roots: list[tuple[str, str | None]]) -> dict[int, set[int]]:
        """Every recorded root_id of each of a scan's roots (by position): the same folder may have several."""
        if not self.path.exists():
            return {}
        return _same_roots(list(self.roots().select("root_id", "location", "modality").iter_rows()), roots)

    def holds_files_under(self, root_ids: set[int], *, unrooted: bool = False) -> bool:
        """The latest version has files under one of these roots (`unrooted`: or under none recorded)."""
        if not self.path.exists() or not (root_ids or unrooted):
            return False
        where = " OR ".join(([f"root_id IN ({', '.join('?' * len(root_ids))})"] if root_ids else [])
                            + (["root_id IS NULL"] if unrooted else []))
        return bool(self._one(f"SELECT EXISTS (SELECT 1 FROM source_files WHERE time_invalid IS NULL AND ({where}))",
                              tuple(root_ids))[0])

    def roots(self) -> pl.DataFrame:
        """The recorded roots (root_id, location, modality, first_version); the site root has modality NULL."""
        schema = schema_of("roots")
        if not self.path.exists():
            return pl.DataFrame(schema=schema)
        with self._open() as con:  # few rows: plain sqlite3, no ADBC start-up on a no-change run
            rows = con.execute(f"SELECT {', '.join(schema)} FROM roots ORDER BY root_id").fetchall()
        return pl.DataFrame(rows, schema=schema, orient="row")

    def adopt_renamed(self) -> None:
        """A manifest renamed (or moved within its folder) left `<old name>.state.parquet` beside it (every file's MD5
        and person id, kept for good), `<old name>.runs-pending.jsonl` (runs turned away while it was held, never added
        to `runs`), `<old name>.lock` and, after a killed run, `<old name>.lock.json`. Those of a former name whose
        state cache names this manifest and whose manifest file is gone: the cache is removed, the turned-away runs are
        added to this one's, a lock note no process holds is removed (as checkpoint.py does with the checkpoint). The
        empty `<old name>.lock` is left and named: removed, a run starting a new manifest under the old name that
        moment could hold a lock that the next one, making the file anew, would not see."""
        from filelock import FileLock, Timeout

        manifest_id = self.state_identity()[0]
        try:
            caches = [p for p in self.path.parent.iterdir() if p.name.endswith(".state.parquet") and p != self.cache_path]
        except OSError:
            return
        for cache in caches:
            old = Path(str(cache)[: -len(".state.parquet")])
            if manifest_id is None or cache.is_symlink() or old.exists() or Path(f"{old}-wal").exists():
                continue
            try:
                if pl.read_parquet_metadata(cache).get("manifest_id") != str(manifest_id):
                    continue
            except Exception:  # noqa: BLE001 - not a state cache this release reads: not known to be ours
                continue
            lock = Path(f"{old}.lock")
            held = FileLock(lock, timeout=0)
            try:
                if lock.exists():  # (never made here)
                    held.acquire()
            except (Timeout, OSError):
                continue  # a run under the old name (a copy put back?): its files are left
            try:
                pending = Path(f"{old}.runs-pending.jsonl")
                with contextlib.suppress(OSError):
                    lines = pending.read_text(encoding="utf-8")
                    fd = create_private(self.pending_runs, truncate=False)
                    with os.fdopen(fd, "a", encoding="utf-8") as f:
                        f.write(lines if lines.endswith("\n") or not lines else lines + "\n")
                    pending.unlink()
                for path in (Path(f"{old}.lock.json"), cache):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            finally:
                if held.is_locked:
                    held.release()
            log.info(f"removed {cache}: the state cache of this manifest under its former name {old.name}")
            if lock.exists():
                log.warning(f"{lock} is the (empty) lock file of this manifest under its former name {old.name}; "
                            f"remove it (rm {shlex.quote(str(lock))}) once no run uses that name")

    def previous_state(self, *, write_cache: bool = True, buckets: bool = False) -> pl.DataFrame:
        """Current rows of the latest version (STATE_SCHEMA), from the cache when it is fresh (a reader
        that must not write beside the manifest, e.g. a shard, passes write_cache=False); `buckets`: with
        their bucket too (partitions.py; the cache holds it, 0.2-0.3 s to compute at 1M files)."""
        shaped = with_bucket if buckets else (lambda frame: frame)
        if not self.path.exists():
            return shaped(empty_state())
        identity = self._cache_identity()
        cached = self._read_cache(identity, buckets=buckets)
        if cached is not None:
            return cached
        if not self._one("SELECT EXISTS (SELECT 1 FROM source_files WHERE time_invalid IS NULL)")[0]:
            # a new manifest: no rows to read, no cache to write (0.19 s a first run saves)
            return shaped(empty_state())
        state = shaped(self._current_rows())  # (with its bucket, the cache's write does not compute it again)
        if write_cache:
            self._write_cache([state], identity)
        return state

    def shard_state(self, coverage: Any) -> pl.DataFrame:
        """The current rows of the latest version (STATE_SCHEMA) under the top-level folders of shard `coverage`
        (coverage.top_in_shard; files at the site's root are shard 0's): what a shard compares its listing with. Read
        through the index on current paths, one range of paths per folder, not the whole version (1M files: ~260 MiB
        and ~1 s in each shard). The folders are found by skipping from one to the next in that index."""
        from ..coverage import top_in_shard

        if not self.path.exists():
            return empty_state()
        if self._cache_fresh(self._cache_identity()):  # (as after every commit) its row groups of the shard's buckets
            with contextlib.suppress(Exception):  # only a cache: replaced or damaged meanwhile, the manifest is read
                return self.state_part(bucket_range(coverage.shard, coverage.shards)).select(list(STATE_SCHEMA))
        tops: list[str] = []
        at_root: list[str] = []
        with self._open() as con:
            row = con.execute("SELECT min(srcfile) FROM source_files WHERE time_invalid IS NULL").fetchone()
            path = row[0] if row else None
            while path is not None:
                slash = path.find("/")
                if slash < 0:  # a file at the site's root: bucket 0
                    at_root.append(path)
                    sql, after = "srcfile > ?", path
                else:  # every path under "top/" sorts before "top0" ('0' follows '/')
                    tops.append(path[:slash])
                    sql, after = "srcfile >= ?", path[:slash] + "0"
                path = con.execute(f"SELECT min(srcfile) FROM source_files WHERE time_invalid IS NULL AND {sql}",
                                   (after,)).fetchone()[0]
        mine = [top for top in tops if top_in_shard(top, coverage)]
        roots = at_root if coverage.shard == 0 else []
        if not mine and not roots:
            return empty_state()
        columns = ", ".join(f"s.{c}" for c in STATE_SCHEMA)
        return self.query_frame(
            f"SELECT {columns} FROM json_each(?) AS j CROSS JOIN source_files AS s "
            "WHERE s.time_invalid IS NULL AND s.srcfile >= j.value || '/' AND s.srcfile < j.value || '0' "
            f"UNION ALL SELECT {columns} FROM source_files AS s "
            "WHERE s.time_invalid IS NULL AND s.srcfile IN (SELECT value FROM json_each(?))",
            (json.dumps(mine), json.dumps(roots)), schema=STATE_SCHEMA)

    def site_sample(self, percent: float, max_bytes: int, *, no_read_roots: list[int]) -> pl.Series:
        """The whole site's re-verification sample (hashing.site_sample) chosen in SQL from the latest version's
        current rows: a shard that reads only its own rows (shard_state) still reads its part of the one sample."""
        from ..hashing import site_sample

        columns = ("srcfile", "size", "verified_ns", "md5", "root_id")
        if self._cache_fresh(self._cache_identity()):
            with contextlib.suppress(Exception):  # (as shard_state)
                cached = pl.scan_parquet(self.cache_path).select(columns)
                count = cached.select(pl.len()).collect().item()
                return site_sample(cached, math.ceil(count * percent / 100), max_bytes,  # type: ignore[arg-type]
                                   no_read_roots=no_read_roots)
        count = (self._one("SELECT count(*) FROM source_files WHERE time_invalid IS NULL") or (0,))[0]
        files = math.ceil(count * percent / 100)  # (as scan's, from the whole version's rows)
        if files <= 0 or max_bytes <= 0:
            return site_sample(empty_state(), 0, 0, no_read_roots=no_read_roots)
        # the same filter and order as hashing.site_sample (SQLite puts NULLs first, compares paths byte by byte),
        # cut at `files` rows; site_sample then does the byte budget on them
        chosen = self.query_frame(
            "SELECT srcfile, size, verified_ns, md5, root_id FROM source_files WHERE time_invalid IS NULL "
            "AND md5 IS NOT NULL AND size <= ? AND root_id NOT IN (SELECT value FROM json_each(?)) "
            "ORDER BY verified_ns, srcfile LIMIT ?", (max_bytes, json.dumps(no_read_roots), files),
            schema={c: STATE_SCHEMA[c] for c in columns})
        return site_sample(chosen, files, max_bytes, no_read_roots=no_read_roots)

    def state_part(self, buckets: tuple[int, int]) -> pl.DataFrame:
        """The current rows of the latest version whose paths fall in the bucket range `buckets` (first, last;
        partitions.py), with their bucket: read from the row groups of the state cache that hold them (a
        merge commits a site larger than memory one partition at a time). Call ensure_state_cache first."""
        if not self.path.exists():
            return empty_state()
        return (pl.scan_parquet(self.cache_path).filter(in_range(*buckets))
                .select([*STATE_SCHEMA, BUCKET]).collect())

    def ensure_state_cache(self) -> None:
        """Write the state cache if it is missing or stale (it is read by bucket range: state_part)."""
        if not self.path.exists():
            return
        identity = self._cache_identity()
        if not self._cache_fresh(identity):
            self._write_cache([self._current_rows()], identity)

    def _current_rows(self) -> pl.DataFrame:
        return self.query_frame(f"SELECT {', '.join(STATE_SCHEMA)} FROM source_files WHERE time_invalid IS NULL",
                                schema=STATE_SCHEMA)

    def _cache_identity(self, generation: str | None = None) -> dict[str, str]:
        """What ties the state cache to the manifest's current rows: the manifest, its state generation (the
        one on disk, or `generation` just written), the cache's layout."""
        if generation is None:
            with self._open() as con:
                self._manifest_id = self.meta(con, "manifest_id")
                generation = self.meta(con, "state_generation")
        return {"manifest_id": str(self._manifest_id), "generation": str(generation), "layout": _CACHE_LAYOUT}

    def _cache_fresh(self, identity: dict[str, str]) -> bool:
        try:
            meta = pl.read_parquet_metadata(self.cache_path)
        except Exception:  # missing or damaged: it is only a cache
            return False
        return all(meta.get(key) == value for key, value in identity.items())

    def _read_cache(self, identity: dict[str, str], *, buckets: bool = False) -> pl.DataFrame | None:
        if not self._cache_fresh(identity):
            return None
        try:
            return pl.read_parquet(self.cache_path, columns=[*STATE_SCHEMA, *([BUCKET] if buckets else [])]).cast(
                STATE_SCHEMA)  # type: ignore[arg-type]
        except Exception:  # damaged: read the manifest instead
            return None

    def _write_cache(self, parts: Iterable[pl.DataFrame], identity: dict[str, str]) -> None:
        """Write the current rows, given in parts, sorted by bucket (partitions.py), in row groups a partition
        can be read from alone. Each part's buckets must follow the previous part's (a merge writes its
        partitions in order), or there must be one part."""
        import pyarrow.parquet as pq

        def write(tmp: Path) -> None:
            writer = None
            try:
                for part in parts:
                    columns = [*STATE_SCHEMA, *([BUCKET] if BUCKET in part.columns else [])]  # kept: not computed again
                    rows = with_bucket(part.select(columns).cast(STATE_SCHEMA))  # type: ignore[arg-type]
                    # Sorted and converted to Arrow a row group at a time, not the whole site at once (1M files, a
                    # 5%-mutated run: the state cache's write peaked at 1,706 MB, now 1,456)
                    # (in bucket order already: the kept rows of a run that added none, as the cache gave them; not
                    # gathered again, 15 ms of CPU a 100k-row cache)
                    order = (None if rows[BUCKET].is_sorted() else
                             rows.select(pl.arg_sort_by(BUCKET, maintain_order=True)).to_series())
                    for start in range(0, rows.height, _CACHE_ROW_GROUP):
                        table = (rows.slice(start, _CACHE_ROW_GROUP) if order is None else
                                 rows[order.slice(start, _CACHE_ROW_GROUP)]).to_arrow()
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema.with_metadata(identity), **_CACHE_PARQUET)
                        writer.write_table(table, row_group_size=_CACHE_ROW_GROUP)
                if writer is None:
                    table = with_buckets(empty_state()).to_arrow()
                    writer = pq.ParquetWriter(tmp, table.schema.with_metadata(identity), **_CACHE_PARQUET)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()

        with contextlib.suppress(OSError):  # only a cache: a full disk costs speed, not correctness
            write_private(self.cache_path, write)

    def save_state(self, state: pl.DataFrame | Iterable[pl.DataFrame], generation: str) -> None:
        """Cache the current rows after a write (computed by the caller, not re-read): a frame, or its parts in
        bucket order (a merge's partitions)."""
        parts = [state] if isinstance(state, pl.DataFrame) else state
        self._write_cache(parts, self._cache_identity(generation))

    def query_frame(self, sql: str, params: tuple = (), *, schema: dict | None = None) -> pl.DataFrame:
        """Run a read query through ADBC and return a polars frame."""
        with self.adbc() as con, con.cursor() as cur:
            frame = read_frame(cur, sql, params)
        if schema is not None:
            if frame.width == 0 or frame.height == 0:
                return pl.DataFrame(schema=schema)
            frame = frame.cast(schema)  # type: ignore[arg-type]
        return frame

    # ------------------------------------------------------------------ runs

    def begin_run(self, argv: list[str], mode: str, site: str) -> int:
        """A `runs` row for this run (under the lock). Rows left unfinished are of runs that died without a word
        (SIGKILL, a Slurm time limit, the out-of-memory killer, a reboot): no run holds the lock but this one, so
        they are finished here, with the version each committed if any, rather than left with no exit code."""
        with self._open() as con, con:
            noted = self._take_noted_outcome(con)  # (first: the outcome of a run whose disk was too full for `runs`)
            con.execute(
                "UPDATE runs SET exit_code = ?, version = coalesce(version, (SELECT label FROM versions v "
                "WHERE v.run_id = runs.run_id)), message = ? WHERE exit_code IS NULL",
                (KILLED_EXIT, f"killed: it ended without recording its outcome (SIGKILL, a job time limit, the "
                              f"out-of-memory killer, a reboot); found by the next run at {iso(utc_now())}"))
            cur = con.execute(
                "INSERT INTO runs (started_at, host, user, pid, argv, mode, site, release) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (iso(utc_now()), socket.gethostname(), user_name(), os.getpid(), json.dumps(argv), mode, site, release()),
            )
            run_id = int(cur.lastrowid or 0)
        if noted:
            with contextlib.suppress(OSError):
                self.run_outcome.unlink()
        self._reserve_outcome(run_id)
        return run_id

    def _record_killed_before_start(self, con: sqlite3.Connection, upgraded_from: int | None) -> None:
        """A `runs` row for a run killed before it wrote its own (inside the caller's transaction): while it upgraded
        the manifest (its upgrade undone), or before. Its lock details stay (SIGKILL runs no clean-up) and name it; it
        left no row, and the next run upgraded the manifest again with no word of it in `runs` or `status`."""
        info = self.left_by_killed
        if not info or info.get("command") != "run":
            return
        pid, host, started = info.get("pid"), info.get("host"), str(info.get("started_at", ""))
        if con.execute("SELECT 1 FROM runs WHERE pid IS ? AND host IS ? AND started_at >= ?",
                       (pid, host, started)).fetchone():
            return  # (it began: its row, unfinished, is finished as killed by the next run's begin_run)
        schema = info.get("schema")
        if upgraded_from is not None and isinstance(schema, int) and upgraded_from < schema:
            when = (f"while it upgraded the manifest from schema {upgraded_from} to {schema}, before its work began: "
                    f"the upgrade was undone (the manifest stayed at schema {upgraded_from}) and nothing was committed")
        else:
            when = "before it recorded its start (it had the lock): nothing was committed"
        con.execute("INSERT INTO runs (started_at, host, user, pid, argv, exit_code, message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (started, host, info.get("user"), pid, json.dumps(["run"]), KILLED_EXIT,
                     f"killed (SIGKILL, a job time limit, the out-of-memory killer, a reboot) {when}; its arguments "
                     f"were not recorded; found by the next command that locked the manifest at {iso(utc_now())}"))

    # Room for a run's outcome, taken when it begins and written over in place when `runs` cannot be written (a full
    # disk: the failed commit filled it, or the run's own checkpoint took its last blocks). It had no room then: the
    # row stayed unfinished and the next run recorded the run as killed (137), not as the full disk that stopped it.
    _OUTCOME_BYTES = 4096

    def _reserve_outcome(self, run_id: int) -> None:
        row = json.dumps({"run": run_id, "pid": os.getpid()}).encode()
        try:
            fd = create_private(self.run_outcome)
            with os.fdopen(fd, "wb") as f:
                f.write(row.ljust(self._OUTCOME_BYTES))
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # (best effort: no room now, the run will fail anyway; nothing half-written is kept)
            with contextlib.suppress(OSError):
                self.run_outcome.unlink()

    def note_run_outcome(self, run_id: int, *, exit_code: int, version: str | None, message: str | None = None,
                         **_counts) -> bool:
        """How run `run_id` ended, written over the room taken for it beside the manifest (<db>.run-outcome), when
        `runs` could not be written: the next run records it there (begin_run). False when that could not be done."""
        said = None if message is None else storable(scrub(message))
        while True:
            row = json.dumps({"run": run_id, "pid": os.getpid(), "finished_at": iso(utc_now()), "exit_code": exit_code,
                              "version": version, "message": said}).encode()
            if len(row) < self._OUTCOME_BYTES or not said:
                break
            said = said[: len(said) // 2] + "..."
        try:
            fd = os.open(self.run_outcome, os.O_WRONLY | getattr(os, "O_BINARY", 0))  # (no truncation: in place)
            with os.fdopen(fd, "wb") as f:
                f.write(row.ljust(self._OUTCOME_BYTES))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            return False
        return True

    def _take_noted_outcome(self, con: sqlite3.Connection) -> bool:
        """The outcome a run noted beside the manifest (note_run_outcome), recorded in its `runs` row (inside the
        caller's transaction): only a row still unfinished, of that very process. True when there was such a file."""
        try:
            item = json.loads(self.run_outcome.read_bytes().strip() or b"{}")
        except FileNotFoundError:
            return False
        except (OSError, ValueError):
            return True
        if isinstance(item, dict) and "exit_code" in item:
            message = item.get("message")
            with contextlib.suppress(sqlite3.Error, TypeError, ValueError):
                con.execute("UPDATE runs SET finished_at = ?, exit_code = ?, version = coalesce(?, version), message = ? "
                            "WHERE run_id = ? AND pid = ? AND exit_code IS NULL",
                            (item.get("finished_at"), int(item["exit_code"]), item.get("version"),
                             f"{message + '; ' if message else ''}recorded by the next run: the disk was too full to "
                             "record it in `runs`", int(item.get("run", 0)), item.get("pid")))
        return True

    _RUN_COLUMNS = ("started_at", "finished_at", "host", "user", "pid", "argv", "mode", "site", "exit_code", "message",
                    "release")

    def log_refused_run(self, argv: list[str], mode: str, site: str, exit_code: int, message: str) -> None:
        """A run turned away by the lock. The holder may be in the middle of its commit, so this run does
        not wait on SQLite: it appends its row to <db>.runs-pending.jsonl (owner-only), which the holder
        moves into `runs` when it finishes."""
        now = iso(utc_now())
        row = dict(zip(self._RUN_COLUMNS, (now, now, socket.gethostname(), user_name(), os.getpid(), json.dumps(argv),
                                           mode, site, exit_code, scrub(message), release())))
        with contextlib.suppress(OSError):
            fd = create_private(self.pending_runs, truncate=False)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def _take_pending_runs(self, con: sqlite3.Connection) -> None:
        """Move runs logged by others while this one held the lock into `runs` (inside the caller's transaction)."""
        try:
            lines = self.pending_runs.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        rows = []
        for line in lines:
            with contextlib.suppress(ValueError, TypeError):
                item = json.loads(line)
                rows.append(tuple(item.get(c) for c in self._RUN_COLUMNS))
        con.executemany(f"INSERT INTO runs ({', '.join(self._RUN_COLUMNS)}) VALUES ({', '.join('?' * len(self._RUN_COLUMNS))})",
                        rows)
        with contextlib.suppress(OSError):
            self.pending_runs.unlink()

    def save_run_errors(self, run_id: int, errors: pl.DataFrame) -> None:
        """The problems of a run that committed no version, where they differ from the latest version's."""
        with self.adbc() as con:
            with con.cursor() as cur:
                cur.adbc_ingest("run_errors", errors.select(pl.lit(run_id, pl.Int64).alias("run_id"), "srcfile", "kind",
                                                            "message").to_arrow(), mode="append")
            con.commit()

    def committed_by_run(self, run_id: int) -> str | None:
        """The version run `run_id` committed, from the manifest itself: what a message after a signal or a
        failure must say, whichever instruction the signal interrupted (committed_label may not be set yet)."""
        if self.committed_label is not None:
            return self.committed_label
        try:
            with self._open() as con:
                row = con.execute("SELECT label FROM versions WHERE run_id = ?", (run_id,)).fetchone()
        except (ManifestError, sqlite3.Error):
            return None
        return row[0] if row else None

    def finish_run(self, run_id: int, *, exit_code: int, version: str | None, n_files: int = 0, n_hashed: int = 0,
                   bytes_hashed: int = 0, n_errors: int = 0, scan_started_ns: int | None = None, message: str | None = None) -> None:
        with self._open() as con, con:
            con.execute(
                "UPDATE runs SET finished_at=?, exit_code=?, version=?, n_files=?, n_hashed=?, bytes_hashed=?, "
                "n_errors=?, scan_started_ns=coalesce(?, scan_started_ns), message=? WHERE run_id=?",
                (iso(utc_now()), exit_code, version, n_files, n_hashed, bytes_hashed, n_errors, scan_started_ns,
                 # (an error quotes what it was given: a secret, masked; a path that is not UTF-8, a journal
                 # named in Latin-1 bytes, as \x.. escapes: SQLite stores UTF-8 text only)
                 None if message is None else storable(scrub(message)), run_id),
            )
            self._take_pending_runs(con)
        with contextlib.suppress(OSError):  # (its outcome is in `runs`: the room kept for it is not needed)
            self.run_outcome.unlink()

    # ------------------------------------------------------------------ writes

    def refresh_rows(self, touched: pl.DataFrame, roots: list[tuple[str, str | None]], *,
                     reclassified: pl.DataFrame | None = None, classification: str | None = None,
                     on_commit: Callable[[CommitResult], None] | None = None) -> tuple[str, dict[int, int]]:
        """Content unchanged, stat or root moved (a copy without -p, a site moved): remember the new
        stat and root so the next run need not hash these files again; and current rows classified
        anew under `classification` (the patterns changed). Not a new version.
        Returns the state generation and the root ids (as commit_version); `on_commit(written)` (its new_rows
        None) runs on a thread while SQLite commits, its error raised after, as commit_version's."""
        failed: list[BaseException] = []
        with self.adbc() as con:
            with con.cursor() as cur:
                cur.execute(_update_cache(self.path.stat().st_size))
                root_ids = self._root_ids(cur, roots, None)
                if touched.height:
                    self._update_touched(cur, touched, root_ids)
                self._apply_classification(cur, reclassified, classification)
                if reclassified is not None and reclassified.height:
                    # the latest version's check was made of its rows as classified before (unparsed paths,
                    # layouts, persons): it no longer holds, and was reused as clean; this run checks it again
                    cur.execute("DELETE FROM validations WHERE version = (SELECT max(label) FROM versions)")
                generation = self._bump_generation(cur)
            # (a no-change night's: its state cache written while SQLite writes and syncs the re-verified rows)
            written = CommitResult(new_rows=None, generation=generation, root_ids=root_ids)  # type: ignore[arg-type]
            with _beside(None if on_commit is None else lambda: on_commit(written), failed):
                con.commit()
        if failed:
            raise failed[0]
        return generation, root_ids

    def classification(self) -> str | None:
        """The fingerprint of the classification the current rows were made with (classify.fingerprint)."""
        row = self._one("SELECT value FROM meta WHERE key = 'classification'")
        return row[0] if row else None

    def current_classification(self) -> pl.DataFrame:
        """file_id, root_id, srcfile and the classified columns of the current rows."""
        from ..frames import CLASSIFIED_SCHEMA

        columns = ["file_id", "root_id", "srcfile", *CLASSIFIED_SCHEMA]
        return self.query_frame(f"SELECT {', '.join(columns)} FROM source_files WHERE time_invalid IS NULL",
                                schema=schema_of("source_files", columns))

    def _apply_classification(self, cur, reclassified: pl.DataFrame | None, classification: str | None) -> None:
        """Current rows classified anew (their record follows), and the classification recorded."""
        if reclassified is not None and reclassified.height:
            from ..frames import CLASSIFIED_SCHEMA

            cur.adbc_ingest("_old", reclassified.select("file_id").to_arrow(), mode="replace", temporary=True)
            before = self._records_of(cur, reclassified["file_id"])
            cur.execute("SELECT coalesce(max(record_id), 0) FROM registry")
            rows = self._assign_records(cur, reclassified, cur.fetchone()[0])
            columns = [*CLASSIFIED_SCHEMA, "record_id"]
            cur.adbc_ingest("_reclass", rows.select("file_id", *columns).to_arrow(), mode="replace", temporary=True)
            cur.execute(f"UPDATE source_files SET {', '.join(f'{c} = r.{c}' for c in columns)} FROM temp._reclass r "
                        "WHERE source_files.file_id = r.file_id")
            self._recheck_records(cur, pl.concat([before, rows.select("record_id").drop_nulls()]).unique())
        if classification is not None:
            cur.execute("INSERT OR REPLACE INTO meta VALUES ('classification', ?)", (classification,))

    @staticmethod
    def _recheck_records(cur, records: pl.DataFrame) -> None:
        """A record stays active while any current file maps to it."""
        if records.height == 0:
            return
        cur.adbc_ingest("_rec", records.select("record_id").to_arrow(), mode="replace", temporary=True)
        cur.execute(
            "UPDATE registry SET isactive = EXISTS (SELECT 1 FROM source_files s "
            "WHERE s.record_id = registry.record_id AND s.time_invalid IS NULL) "
            "WHERE record_id IN (SELECT record_id FROM temp._rec)"
        )

    @staticmethod
    def _update_touched(cur, touched: pl.DataFrame, root_ids: dict[int, int]) -> None:
        frame = touched.select("file_id", "mtime_ns", pl.col("root_id").replace_strict(root_ids, return_dtype=pl.Int64),
                               "verified_ns", "etag", "md5", "md5_source")
        cur.adbc_ingest("_touch", frame.to_arrow(), mode="create", temporary=True)
        # Files found under another root than recorded (a tree moved from --site to a [site.roots] root, a site
        # moved): their rows are the same content, so they name the new root in place (upload and validate read the
        # bytes where they are now), also as of the versions before. That was done with no word ("no changes"): said.
        cur.execute("SELECT o.location, n.location, n.modality, count(*) FROM source_files s "
                    "JOIN temp._touch t ON s.file_id = t.file_id JOIN roots o ON o.root_id = s.root_id "
                    "JOIN roots n ON n.root_id = t.root_id WHERE s.root_id <> t.root_id "
                    "GROUP BY o.location, n.location, n.modality ORDER BY o.location, n.location")
        for old, new, modality, n in cur.fetchall():
            from ..progress import log
            from ..units import plural

            log.warning(f"{plural(n, 'file')} recorded under {old} {'is' if n == 1 else 'are'} now found under {new}"
                        f"{f' (the {modality} root)' if modality else ''}, unchanged: {'its row names' if n == 1 else 'their rows name'} "
                        "that root from now on, in place (no version is made of a move), so every version that holds "
                        f"{'it' if n == 1 else 'them'}, the earlier ones too, reads {'it' if n == 1 else 'them'} there "
                        f"(files --as-of, validate, upload); the roots table keeps {old}")
        # (md5: an object recorded without one, unverifiable, whose MD5 a later run learned: the same object)
        cur.execute("UPDATE source_files SET mtime_ns = t.mtime_ns, root_id = t.root_id, verified_ns = t.verified_ns, "
                    "etag = t.etag, md5_source = CASE WHEN source_files.md5 IS NULL AND t.md5 IS NOT NULL "
                    "THEN t.md5_source ELSE source_files.md5_source END, md5 = coalesce(source_files.md5, t.md5) "
                    "FROM temp._touch t WHERE source_files.file_id = t.file_id")

    @staticmethod
    def _root_ids(cur, roots: list[tuple[str, str | None]], label: str | None) -> dict[int, int]:
        """The manifest's root_id of each of a scan's roots (by position), recording new ones."""
        cur.execute("SELECT root_id, location, modality FROM roots ORDER BY root_id")
        ids = _match_roots(cur.fetchall(), roots)
        for position, (location, modality) in enumerate(roots):
            if position not in ids:
                cur.execute("INSERT INTO roots (location, modality, first_version) VALUES (?, ?, ?)",
                            (location, modality, label))
                cur.execute("SELECT max(root_id) FROM roots")
                ids[position] = int(cur.fetchone()[0])
        return ids

    @staticmethod
    def _bump_generation(cur) -> str:
        """A new state generation: a count of the writes of current rows, and a random part that makes it this
        write's own. Copies of one manifest share its manifest_id: two that each committed (a copy run on elsewhere
        and put back, another node's commit of a manifest in Azure downloaded over a working copy) reached the same
        count, and the state cache (or hash checkpoint) one copy's commit left beside the manifest was taken for
        the other's current rows: the next run compared the site with them ('no changes', or a UNIQUE error on
        every run after)."""
        cur.execute("SELECT value FROM meta WHERE key = 'state_generation'")
        row = cur.fetchone()
        count = str(row[0] if row else "0").partition("-")[0]
        generation = f"{int(count) + 1 if count.isdigit() else 1}-{uuid.uuid4().hex}"
        cur.execute("INSERT OR REPLACE INTO meta VALUES ('state_generation', ?)", (generation,))
        return generation

    def commit_version(
        self,
        version: VersionRecord,
        *,
        new_rows: pl.DataFrame,
        change_set: pl.DataFrame,
        invalidated_ids: pl.Series,
        touched: pl.DataFrame,
        errors: pl.DataFrame,
        roots: list[tuple[str, str | None]],
        reclassified: pl.DataFrame | None = None,
        classification: str | None = None,
        on_rows: Callable[[int], None] | None = None,
        on_commit: Callable[[CommitResult], None] | None = None,
    ) -> CommitResult:
        """Write one version in one transaction. `new_rows` carries NEW_ROW_COLUMNS except file_id and
        record_id, with root_id as the position in `roots` (location, modality); returns the new rows with
        their ids (CommitResult). `on_rows(n)` is told of each batch of new rows written (progress);
        `on_commit(written)` runs on a thread while SQLite commits (e.g. save_state), and its error, if any, is
        raised after."""
        with self.adbc() as con:
            with con.cursor() as cur:
                # (EXISTS, not count(*): counting walks a whole index, 0.3 s at 10M rows)
                cur.execute("SELECT coalesce(max(file_id), 0), EXISTS (SELECT 1 FROM source_files) FROM source_files")
                max_file_id, n_rows = cur.fetchone()
                # A first load writes the whole manifest in this transaction: sized by its rows (their size in memory,
                # about the manifest they make), its index builds sort in the page cache, not through temporary files
                # with SQLite's 2 MB default (100k rows: ingest, indexes and change set 4.6 -> 3.8 s wall, 0.61 -> 0.53
                # s CPU, best of 3)
                cur.execute(_update_cache(self.path.stat().st_size if n_rows else new_rows.estimated_size()))
                now, label = version.finished_at, version.label
                root_ids = self._root_ids(cur, roots, label)
                # In path order, the rows go into the path indexes in key order: each index page is read once
                # (80k rows into a 4M-row manifest: 7.8 s in random order, 5.0 s sorted).
                new_rows = new_rows.sort("srcfile").with_columns(
                    file_id=pl.int_range(max_file_id + 1, max_file_id + 1 + new_rows.height, dtype=pl.Int64),
                    root_id=pl.col("root_id").replace_strict(root_ids, return_dtype=pl.Int64))
                cur.execute("SELECT coalesce(max(record_id), 0) FROM registry")
                (max_record_id,) = cur.fetchone()
                new_rows = self._assign_records(cur, new_rows, max_record_id)

                if invalidated_ids.len():
                    cur.adbc_ingest("_old", pl.DataFrame({"file_id": invalidated_ids}).to_arrow(), mode="create", temporary=True)
                    cur.execute(
                        "UPDATE source_files SET time_invalid = ?, version_invalid = ? "
                        "WHERE file_id IN (SELECT file_id FROM temp._old)",
                        (now, label),
                    )
                # A first load: the indexes of source_files (and of changes, when it is empty too) are built once,
                # after every row of this transaction is in, not row by row (each insert walks each index: 100k rows,
                # changes' ingest 0.09 -> 0.05 s CPU for a 0.017 s build). Nothing read in between uses them (the
                # records rechecked and the rows touched are none on a first load, or found by rowid); a unique
                # index its rows break fails its build, and the transaction with it, as the insert would have.
                late = _first_load_indexes(cur) if n_rows == 0 and new_rows.height > 10_000 else ()
                for ddl in late:
                    cur.execute("DROP INDEX IF EXISTS " + index_name(ddl))
                if new_rows.height:
                    validity = {"time_valid": now, "time_invalid": None, "version_valid": label, "version_invalid": None}
                    cur.adbc_ingest("source_files", _arrow_stream(new_rows.select(NEW_ROW_COLUMNS), validity, on_rows=on_rows),
                                    mode="append")

                # Records created just now are active already; recheck the ones that existed.
                self._recheck_records(cur, pl.concat([
                    new_rows.filter(pl.col("record_id") <= max_record_id).select("record_id"),
                    self._records_of(cur, invalidated_ids),
                ]).unique())
                self._apply_classification(cur, reclassified, classification)

                if change_set.height:
                    cur.adbc_ingest("changes", _changes_stream(change_set, new_rows, label), mode="append")
                if errors.height:
                    cur.adbc_ingest(
                        "scan_errors",
                        errors.select(pl.lit(label).alias("version"), "srcfile", "kind", "message").to_arrow(),
                        mode="append",
                    )
                for ddl in late:
                    cur.execute(ddl)
                if touched.height:
                    self._update_touched(cur, touched, root_ids)
                c = version.counts
                row = {
                    "label": label, "started_at": version.started_at, "finished_at": version.finished_at,
                    "mode": version.mode, "site": version.site, "n_added": c["added"], "n_removed": c["removed"],
                    "n_replaced": c["replaced"], "n_renamed": c["renamed"], "n_unchanged": c["unchanged"],
                    "n_errors": version.n_errors, "n_files": version.n_files, "total_bytes": version.total_bytes,
                    "run_id": version.run_id, "release": release(),
                }
                cur.execute(f"INSERT INTO versions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                            tuple(row.values()))
                if version.run_id is not None and version.scan_started_ns is not None:
                    # With the version, not at the run's end: a merge killed after its commit (SIGKILL, a Slurm time
                    # limit) left no scan start, and its requeued job told to rerun the shards it had merged
                    cur.execute("UPDATE runs SET scan_started_ns = ? WHERE run_id = ?",
                                (version.scan_started_ns, version.run_id))
                generation = self._bump_generation(cur)
                pause("commit")
            written = CommitResult(new_rows=new_rows, generation=generation, root_ids=root_ids)
            # SQLite's commit writes and syncs pages without the GIL (6.4 s for a 2% change of a 10M-row
            # manifest); the state cache is written meanwhile. Tied to the new generation, it is read only
            # if the commit succeeded.
            failed: list[BaseException] = []
            with _beside(None if on_commit is None else lambda: on_commit(written), failed):
                con.commit()
                self.committed_label = label  # (at once: a signal or a removed manifest just after is said truly)
                pause("committed")  # (a signal here, or while the state cache is awaited, follows the commit)
        self.committed_label = label  # before on_commit's error, if any: the version is committed
        self.after_commit()
        if failed:
            raise failed[0]
        return written

    def _assign_records(self, cur, new_rows: pl.DataFrame, max_record_id: int) -> pl.DataFrame:
        """record_id for each new row: existing records by key, new ones appended."""
        keys = new_rows.select(record_key())
        keyed = new_rows.select("person_id", "session_id", "modality", "category", "start_date", "start_time").with_columns(
            keys["record_key"]).filter(pl.col("record_key").is_not_null())
        if keyed.height == 0:
            return new_rows.with_columns(record_id=pl.lit(None, pl.Int64))
        # A record starts at its earliest file (ISO date and time sort as text).
        records = keyed.group_by("record_key").agg(
            pl.col("person_id").first(), pl.col("session_id").first(), pl.col("modality").first(), pl.col("category").first(),
            pl.concat_str(["start_date", "start_time"], separator=" ").min().alias("_start"),
        ).sort("record_key").with_columns(
            date=pl.col("_start").str.slice(0, 10), time=pl.col("_start").str.slice(11, 8),
        ).drop("_start")
        schema = {"record_key": pl.String, "record_id": pl.Int64, "_date": pl.String, "_time": pl.String}
        cur.execute("SELECT EXISTS (SELECT 1 FROM registry)")
        if cur.fetchone()[0]:
            cur.adbc_ingest("_keys", records.select("record_key").to_arrow(), mode="replace", temporary=True)
            known = read_frame(cur, "SELECT r.record_key, r.record_id, r.date AS _date, r.time AS _time FROM temp._keys k "
                                    "JOIN registry r ON r.record_key = k.record_key")
        else:  # (a first load: no record is known, none is looked up)
            known = pl.DataFrame(schema=schema)
        known = known.cast(schema) if known.height else pl.DataFrame(schema=schema)
        # A record's start is its earliest file's, also of files a later version adds (a recording's earlier part,
        # delivered late): the start moves earlier, never later (a record is all it ever held).
        earlier = records.join(known, on="record_key").filter(
            pl.col("date").is_not_null() & (pl.col("_date").is_null() | (
                pl.concat_str(["date", "time"], separator=" ") < pl.concat_str(["_date", "_time"], separator=" "))))
        if earlier.height:
            cur.adbc_ingest("_starts", earlier.select("record_id", "date", "time").to_arrow(), mode="replace",
                            temporary=True)
            cur.execute("UPDATE registry SET date = (SELECT s.date FROM temp._starts s WHERE s.record_id = registry.record_id), "
                        "time = (SELECT s.time FROM temp._starts s WHERE s.record_id = registry.record_id) "
                        "WHERE record_id IN (SELECT record_id FROM temp._starts)")
        known = known.select("record_key", "record_id")
        fresh = records.join(known, on="record_key", how="anti").with_row_index("record_id", offset=max_record_id + 1)
        fresh = fresh.with_columns(pl.col("record_id").cast(pl.Int64), isactive=pl.lit(1, pl.Int64),
                                   uploaddir=pl.lit(None, pl.String), proc_id=pl.lit(None, pl.Int64))
        if fresh.height:
            cur.adbc_ingest("registry", _arrow_stream(fresh.select(columns_of("registry"))), mode="append")
        del keyed, records
        ids = pl.concat([known, fresh.select("record_key", "record_id")])
        # Only the key column is joined; the wide frame just gains a column (no copy of it).
        record_ids = keys.join(ids, on="record_key", how="left", maintain_order="left")["record_id"]
        return new_rows.with_columns(record_id=record_ids)

    @staticmethod
    def _records_of(cur, file_ids: pl.Series) -> pl.DataFrame:
        if not file_ids.len():
            return pl.DataFrame(schema={"record_id": pl.Int64})
        frame = read_frame(cur, "SELECT DISTINCT s.record_id FROM source_files s JOIN temp._old o ON o.file_id = s.file_id "
                                "WHERE s.record_id IS NOT NULL")
        return frame.cast({"record_id": pl.Int64}) if frame.height else pl.DataFrame(schema={"record_id": pl.Int64})

    def after_commit(self) -> None:
        """Keep the files beside the manifest private: also those a copy or a restore left readable (`cp` under umask
        022 makes a 0644 state cache, every current path with its MD5), which a run that rewrites nothing kept so. The
        locks too, as the README says of them (a restored 0644 `.lock` was kept so: the OS lock opens it as it is)."""
        for suffix in ("", "-wal", "-shm", ".state.parquet", ".runs-pending.jsonl", ".lock", ".upload.lock"):
            if Path(f"{self.path}{suffix}").exists():
                restrict(f"{self.path}{suffix}")

    # ------------------------------------------------------------------ queries

    def versions(self) -> pl.DataFrame:
        self.require()
        return self.query_frame("SELECT * FROM versions ORDER BY label", schema=schema_of("versions"))

    def edited_version_times(self) -> list[str]:
        """The versions whose recorded commit time is not within the run that committed them, each said as
        "v2 records 2026-...Z, its run 2 ran 2026-...Z to 2026-...Z". The run's times and the version's come from one
        process's clock: they disagree only where the versions table was edited by hand (an imported version keeps
        its upstream time, and an older release's versions have no run: neither is checked). A time asked of
        `--as-of` read such times as true: one moved past a later version's made the two overlap, and a time between
        them named the version before both."""
        rows = self._query_all(
            "SELECT v.label, v.finished_at, r.run_id, r.started_at, r.finished_at FROM versions v "
            "JOIN runs r ON r.run_id = v.run_id WHERE r.mode <> 'import' AND r.started_at IS NOT NULL "
            "AND (v.finished_at IS NULL OR v.finished_at < r.started_at "
            "OR (r.finished_at IS NOT NULL AND v.finished_at > r.finished_at)) ORDER BY v.label")
        return [f"{label} records {finished}, but its run {run_id} ran {start} to {end or '(not recorded)'}"
                for label, finished, run_id, start, end in rows]

    def _query_all(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._open() as con:
            return con.execute(sql, params).fetchall()

    def changes(self, label: str | None) -> tuple[str | None, pl.DataFrame]:
        self.require()
        if label is None:
            latest = self.latest_version()
            if latest is None:  # exit 2 as files, diff and report say it, not an empty change set with exit 0
                raise self.no_version_error()
            label = latest["label"]
        frame = self.changes_query("c.version = ?", (label,))
        if label is not None and frame.height == 0 and self._one("SELECT 1 FROM versions WHERE label = ?", (label,)) is None:
            raise UsageError(  # a mistaken --version, as in files, diff, report and registry
                f"no version {label!r} in the manifest",
                where=str(self.path),
                fix="list the versions with `chorus-batch versions`",
            )
        return label, frame

    def changes_query(self, where: str, params: tuple) -> pl.DataFrame:
        """Change-set rows with the file's md5, size, modality and person (new side, else old)."""
        return self.query_frame(
            "SELECT c.version, c.change, c.srcfile, c.old_srcfile, c.file_id, c.old_file_id, "
            "coalesce(n.md5, o.md5) AS md5, coalesce(n.size, o.size) AS size, coalesce(n.modality, o.modality) AS modality, "
            "coalesce(n.person_id, o.person_id) AS person_id "
            "FROM changes c LEFT JOIN source_files n ON n.file_id = c.file_id LEFT JOIN source_files o ON o.file_id = c.old_file_id "
            f"WHERE {where} ORDER BY c.version, c.change, c.srcfile",
            params,
            schema=CHANGES_SCHEMA,
        )


# Rows of a manifest read's batches. The driver reserves each batch's buffers for this many rows up front: 1 << 30
# reserved ~200 GB of address space, after which a fork (validation's header readers) was refused with ENOMEM on a
# 24 GiB machine, and a node with strict overcommit refuses the reservation itself. 131072: as fast as one batch
# (400k current rows: 6.5 s, 212 MiB); the driver's default, 1024, costs 40% more.
QUERY_BATCH_ROWS = 131_072


def fetch_frame(cur) -> pl.DataFrame:
    """The rest of an ADBC cursor's result as a polars frame in memory of polars' own, a chunk per batch.

    Batch by batch, each copied out of the driver's buffers: a frame converted from them kept them whole (a
    string column's views point into the driver's text buffer, and one column kept its batch's every buffer),
    with their slack (grown by doubling). A 1M-row read of a version's files (small1m, 16 columns) held 376 MiB,
    now 255 MiB, for 0.35 CPU-s more. The copies are the frame's chunks as they are: joined into one chunk, the
    frame was copied a second time while every copy was held (`files` of 1M files: the read peaked at 860 MiB,
    now 645)."""
    schema, batches = cur.fetch_batches()
    # (as Tables: polars' from_arrow of a RecordBatch, and pyarrow's Schema.empty_table, import pandas)
    parts = [_own_copy(pl.from_arrow(pa.Table.from_batches([batch]))) for batch in batches]  # type: ignore[arg-type]
    if not parts:
        frame = pl.from_arrow(pa.Table.from_batches([], schema))
        assert isinstance(frame, pl.DataFrame)
        return frame
    frame = pl.concat(parts, rechunk=False)
    if len(parts) > 1:
        del parts
        give_back_freed_memory()  # the driver's buffers went back to the C heap, which keeps them otherwise
    return frame


def _own_copy(part: pl.DataFrame) -> pl.DataFrame:
    """`part` with every column copied into new buffers: its text views and its numbers pointed into the driver's
    batch, which any one of them kept whole until the concat (a 1M-row read of a version's files peaked 796 ->
    653 MiB once the numbers were copied here too)."""
    text = [name for name, dtype in part.schema.items() if dtype == pl.String]
    other = [name for name in part.columns if name not in text]
    return part.with_columns(*([pl.col(text) + pl.lit("")] if text else []),
                             *([pl.col(other).gather(pl.int_range(pl.len()))] if other else []))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (AttributeError, OSError, TypeError):
        return None


def give_back_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc keeps freed memory for reuse: after a 1M-row read, ~120
    MiB that later polars work, in its own allocator, could not use). Elsewhere, nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def read_frame(cur, sql: str, params: tuple = ()) -> pl.DataFrame:
    """The result of `sql` on an ADBC cursor (of `Manifest.adbc()`: its temporary tables too) as a polars frame, read
    in batches of QUERY_BATCH_ROWS rows. The driver infers a column's type from its first batch: a column NULL in all
    of it and typed later (a late path's parse_error; the registry's date where the first records in key order have
    none) met "Type mismatch ... expected INT64 but got STRING" (`files` exit 3 on a 400k-file manifest; every commit
    that touched the records of a site with more than 1024). Such a result is read again as one batch of its own
    size: its buffers are reserved for that many rows."""
    import adbc_driver_manager

    def fetch(batch_rows: int) -> pl.DataFrame:
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
        cur.execute(sql, params or None)
        return fetch_frame(cur)

    try:
        return fetch(QUERY_BATCH_ROWS)
    except (adbc_driver_manager.Error, OSError) as exc:  # (the driver's stream says it as pyarrow's OSError)
        if "type mismatch" not in str(exc).lower():
            raise
    cur.execute(f"SELECT count(*) FROM ({sql})", params or None)
    return fetch(max(int(cur.fetchone()[0]), 1))


def _first_load_indexes(cur) -> tuple[str, ...]:
    """The indexes a first load builds after its rows are in: source_files', and changes' when no version wrote any
    (the manifest's own DDL, the same indexes: the schema is not changed)."""
    cur.execute("SELECT EXISTS (SELECT 1 FROM changes)")
    (changed,) = cur.fetchone()
    return (*SOURCE_FILES_INDEXES, *(() if changed else (_CHANGES_INDEX,)))


_CHANGES_INDEX = next(ddl for ddl in INDEXES if index_name(ddl) == "changes_version")


CHANGES_SLICE_ROWS = 100_000  # change-set rows given their file_id and written at a time


def _changes_stream(change_set: pl.DataFrame, new_rows: pl.DataFrame, label: str,
                    rows: int | None = None) -> pa.RecordBatchReader:
    """The `changes` rows of `change_set` (its order), each path's file_id that of its row in `new_rows` (sorted by
    srcfile: looked up by binary search), slice by slice while ADBC writes. A join of the whole change set with the
    new rows' ids held a copy of both beside them (2M-row first load: +280 MiB, the commit's peak)."""
    paths, file_ids = new_rows["srcfile"], new_rows["file_id"]
    columns = columns_of("changes")

    def part(piece: pl.DataFrame) -> pl.DataFrame:
        if not paths.len():
            return piece.with_columns(file_id=pl.lit(None, pl.Int64), version=pl.lit(label)).select(columns)
        at = paths.search_sorted(piece["srcfile"], side="left").clip(upper_bound=paths.len() - 1)
        return piece.with_columns(
            file_id=pl.when(paths.gather(at) == pl.col("srcfile")).then(file_ids.gather(at)),
            version=pl.lit(label)).select(columns)

    schema = part(change_set.head(0)).to_arrow().schema

    def batches() -> Iterator[pa.RecordBatch]:
        for piece in change_set.iter_slices(rows or CHANGES_SLICE_ROWS):
            table = part(piece).to_arrow()
            if not table.schema.equals(schema):
                table = table.cast(schema)
            yield from table.to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _arrow_stream(frame: pl.DataFrame, constants: dict[str, str | None] | None = None, rows: int = 100_000, *,
                  on_rows: Callable[[int], None] | None = None) -> pa.RecordBatchReader:
    """Convert to Arrow slice by slice while ADBC writes, instead of all at once;
    `constants` become text columns filled per slice; `on_rows(n)` after each batch is handed over."""
    constants = constants or {}

    def part_table(part: pl.DataFrame) -> pa.Table:
        return part.with_columns(pl.lit(value, pl.String).alias(name) for name, value in constants.items()).to_arrow()

    schema = part_table(frame.head(0)).schema
    def batches() -> Iterator[pa.RecordBatch]:
        for part in frame.iter_slices(rows):
            table = part_table(part)
            if not table.schema.equals(schema):  # (a cast imports pyarrow.compute: only when one is needed)
                table = table.cast(schema)
            for batch in table.to_batches():
                yield batch
                if on_rows is not None:
                    on_rows(batch.num_rows)

    return pa.RecordBatchReader.from_batches(schema, batches())
