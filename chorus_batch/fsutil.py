"""Files this tool writes: owner-only (they hold person identifiers), replaced atomically.

Every output beside the manifest (the state cache, Parquet snapshots, the HTML report)
goes through `write_private`: a temporary file in the same folder, created 0600, written,
fsynced, then renamed over the target; on any failure the temporary file is removed and the
target is left as it was. Only a regular file is replaced: a symbolic link, a FIFO, a device or a folder at the
path is refused (writing to `/dev/stdout` or through a link is never what a user of `--out` means). Every
failure is a WriteError (a UsageError naming the path, the OS's reason and a fix). Folders are made by
`private_folder`: 0700, and so are the missing folders above them, whatever the umask.

Scratch files (DuckDB's spill, a throwaway manifest, a manifest's copy for upload) live in a
`scratch_folder`, removed when its work ends. A process that is killed (SIGKILL, a node lost) removes
nothing: what it left is removed by the next process that writes the same thing in the same place.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import FILE_SIZE_FIX, ManifestError, Stopped, UsageError, WriteError, named, pass_db
from .faults import pause

OWNER_ONLY = 0o600
PRIVATE_FOLDER = 0o700
# What a killed process left is removed once it is this old: no live process is still setting it up
# (a scratch folder is locked within milliseconds of being made; a temporary file is renamed when written).
ABANDONED_AFTER_S = 600


def create_private(path: str | os.PathLike[str], *, truncate: bool = True) -> int:
    """Open (creating) a file readable by its owner only; returns the descriptor. A file already there is made so
    too (the mode os.open is given applies to a new file only: one a backup restored, or made under umask 022, was
    written to, or appended to, as group/other readable as it was); best effort, as `restrict`."""
    flags = os.O_CREAT | os.O_WRONLY | getattr(os, "O_BINARY", 0) | (os.O_TRUNC if truncate else 0)
    fd = os.open(path, flags, OWNER_ONLY)
    with contextlib.suppress(OSError, AttributeError):  # (not its owner; no fchmod on Windows)
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077 and stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, mode & 0o700)
    return fd


def restrict(path: str | os.PathLike[str]) -> None:
    """Take group and other permissions off an existing file (best effort: some file systems ignore
    modes). The owner's own bits stay: a manifest its owner made read-only stays read-only."""
    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)


NEARLY_FULL_BYTES = 1 << 20  # free space under which a failed write is taken for a full disk


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes this user may still write on the file system of `folder` (-1: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return -1
    return st.f_bavail * st.f_frsize


def nearly_full(folder: str | os.PathLike[str]) -> bool:
    return 0 <= free_bytes(folder) < NEARLY_FULL_BYTES


def unicode_twin(path: str | os.PathLike[str]) -> str | None:
    """The name of a file beside `path` that is `path`'s name in another Unicode normal form, if any."""
    import unicodedata

    folder, given = os.path.split(os.path.abspath(path))
    if given.isascii():
        return None
    name = unicodedata.normalize("NFC", given)
    try:
        with os.scandir(folder or ".") as entries:
            return next((entry.name for entry in entries if entry.name != given
                         and unicodedata.normalize("NFC", entry.name) == name), None)
    except OSError:
        return None


def read_only_sqlite(path: str | os.PathLike[str]):
    """A read-only sqlite3 connection to the file at path. The path goes in a file: URI escaped (Path.as_uri): a
    folder with '%', '?' or '#' in its name (a TMPDIR, a Windows user's folder) would otherwise end the file name
    there or be read as escapes, and SQLite would open another file or none."""
    import sqlite3

    return sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)


def sqlite_temp_folder() -> str:
    """The folder SQLite writes its temporary files in (sorts, index builds, a large transaction's statement journal)
    on Unix: the first of $SQLITE_TMPDIR, $TMPDIR, /var/tmp, /usr/tmp, /tmp that is a folder this user may write and
    search (SQLite's unixTempFileDir), else the current folder."""
    for folder in (os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp", "/usr/tmp", "/tmp"):
        if folder and os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    return "."


def write_private(target: str | os.PathLike[str], content: bytes | Callable[[Path], None], *,
                  new_only: bool = False) -> Path:
    """Write `target` atomically and owner-only. `content` is the bytes, or a function that
    writes the file at the path it is given (e.g. `frame.write_parquet`). new_only: a file already
    at `target` (made meanwhile too) is never replaced: FileExistsError, and nothing is written."""
    target = Path(target)
    tmp = _written_aside(target, content)
    try:
        check_target(target)  # again: the narrowest window before the rename
        if new_only:
            _link_new(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, FileExistsError) and new_only:
            raise
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise cannot_write(target, exc, replacing=not new_only) from None
        raise
    return target


def write_private_together(contents: dict[Path, bytes | Callable[[Path], None]]) -> list[Path]:
    """Write several files of one folder that are read as one set (the registries of a version) as write_private
    does, and put them in place together: each is written whole beside its target first, then all are renamed, with
    the stop signals held off meanwhile. A kill, a signal or a full disk while they are written leaves the earlier set
    as it was: never some files of the new set beside others of the old one, which read as one release. A SIGKILL
    (which nothing holds off) between two renames leaves the renames to do in a marker file beside them, which the
    next writer into the folder carries out first (complete_interrupted_sets)."""
    from .errors import held_signals
    from .faults import pause

    aside: dict[Path, Path] = {}
    earlier: dict[Path, Path | None] = {}  # each target put in place so far -> its earlier file kept aside (None: none)
    marker: tuple[Path, int] | None = None
    try:
        for target, content in contents.items():
            aside[Path(target)] = _written_aside(Path(target), content)
        pause("written-aside")  # (tests: a signal once every file is written, before any is put in place)
        marker = _set_marker(aside)
        try:
            with held_signals():
                for target, tmp in aside.items():
                    kept, replacing = None, False
                    try:
                        check_target(target)
                        kept = _kept_aside(target)
                        replacing = True
                        os.replace(tmp, target)
                        earlier[target] = kept
                    except OSError as exc:
                        if kept is not None:
                            with contextlib.suppress(OSError):
                                kept.unlink()
                        # a failure after some renames (a full disk, a target made a folder meanwhile): those are
                        # undone, so that the folder holds the earlier set, never some files of each
                        error = exc if isinstance(exc, WriteError) else cannot_write(target, exc, replacing=replacing)
                        error.what += _put_back(earlier)
                        raise error from None
                    pause("put-in-place")  # (tests: a signal between two renames, held to their end)
        except (KeyboardInterrupt, Stopped) as exc:  # held to the end of the renames: every file is in place
            exc.written = list(aside)  # type: ignore[union-attr]
            raise
    finally:
        for tmp in [*aside.values(), *filter(None, earlier.values())]:  # (those renamed are gone already)
            with contextlib.suppress(OSError):
                tmp.unlink()
        if marker is not None:  # (after the files it names: a kill in between leaves renames already done)
            with contextlib.suppress(OSError):
                marker[0].unlink()  # (while its lock is held, where there is one: closed on Windows, _set_marker)
            if marker[1] >= 0:
                os.close(marker[1])
    return list(aside)


# What os.link says where the file system has no hard links (or no more for the file). Windows: FAT, exFAT (a USB
# disk) and shares without hard links say ERROR_INVALID_FUNCTION or ERROR_NOT_SUPPORTED, which Python gives as EINVAL:
# `import-config --out` failed there, and so did `registry --out` into a folder holding an earlier set (keeping
# each earlier file aside took only the POSIX errors for "no hard links").
NO_HARD_LINK = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.EINVAL)


def _kept_aside(target: Path) -> Path | None:
    """The file at `target`, if any, kept under a second name beside it (a hard link; a copy where the file system
    has none) until its set is in place: what _put_back restores."""
    if not os.path.lexists(target):
        return None
    kept = target.with_name(f"{aside_stem(target.name)}.{os.getpid()}.old")
    with contextlib.suppress(FileNotFoundError):
        kept.unlink()  # a dead process of the same pid's
    try:
        os.link(target, kept, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINK:
            raise
        shutil.copyfile(target, kept, follow_symlinks=False)
    return kept


def _put_back(earlier: dict[Path, Path | None]) -> str:
    """Undo the renames of a set that failed partway (each target's earlier file back, a new one removed); what the
    error then says of the folder."""
    if not earlier:
        return "; no file of the set was put in place: the folder holds the files it held"
    failed = []
    for target, kept in earlier.items():
        try:
            if kept is None:
                target.unlink()
            else:
                os.replace(kept, target)
        except OSError:
            failed.append(target.name)
    if failed:
        return (f"; {', '.join(p.name for p in earlier)} had been put in place, and {', '.join(failed)} could not be "
                "put back as it was: the folder holds some files of the new set; write the set again")
    were = "was" if len(earlier) == 1 else "were"
    return (f"; {', '.join(p.name for p in earlier)} had been put in place and {were} put back as before: the folder "
            "holds the files it held, none of the new set")


_SET_MARKER = ".chorus-set.{}.json"


def _set_marker(aside: dict[Path, Path]) -> tuple[Path, int]:
    """The marker of a set about to be put in place: its renames (temporary file name -> target name, in one folder),
    written and fsynced before the first, and locked (flock) by this process while it lives; (path, descriptor)."""
    import json

    folders = {target.parent for target in aside} | {tmp.parent for tmp in aside.values()}
    if len(folders) != 1:
        raise ValueError(f"a set is written in one folder, not {sorted(map(str, folders))}")
    folder = folders.pop()
    marker = folder / _SET_MARKER.format(os.getpid())
    tmp = folder / f"{marker.name}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a dead process of the same pid's
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0), OWNER_ONLY)
    try:
        flocked = _lock(fd, wait=True)
        os.write(fd, json.dumps({tmp.name: target.name for target, tmp in aside.items()}).encode())
        os.fsync(fd)
        if flocked is None:  # Windows: no lock to hold, and a file open there can be neither renamed nor removed
            fd = _closed(fd)
        os.replace(tmp, marker)
        _fsync_folder(folder)  # the marker is on disk before any rename is
    except BaseException as exc:
        if fd >= 0:
            fd = _closed(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise cannot_write(next(iter(aside)), exc) from None
        raise
    return marker, fd


def _closed(fd: int) -> int:
    """Close `fd`; -1, what a closed descriptor is kept as."""
    os.close(fd)
    return -1


def complete_interrupted_sets(folder: str | os.PathLike[str]) -> list[str]:
    """Put in place what a write_private_together killed between its renames (SIGKILL: the out-of-memory killer, a
    batch system's time limit) left beside its targets: its files were written whole before the first rename, so the
    set is completed, never mixed with the earlier one. A marker whose process is alive (its lock held) is left.
    Returns what was done, one line per set, for the caller to say."""
    import json

    done: list[str] = []
    remove_abandoned(Path(folder), _SET_MARKER.format("*") + ".tmp")  # (killed while it wrote the marker: no rename)
    for marker in sorted(Path(folder).glob(_SET_MARKER.format("*"))):
        try:
            fd = os.open(marker, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            locked = flocked = _lock(fd, wait=False)
            if locked is None:  # (no flock: its writer is taken as gone once the marker is old)
                locked = time.time() - os.fstat(fd).st_mtime >= ABANDONED_AFTER_S
            if not locked or not same_file(fd, marker):  # alive, or finished meanwhile
                continue
            pid = marker.name.split(".")[2]
            renames = json.loads(os.read(fd, 1 << 20) or b"{}")
            # only its own files, named as _written_aside names them, in this folder (never a path elsewhere)
            if not isinstance(renames, dict) or not all(
                    isinstance(target, str) and Path(target).name == target and target not in ("", ".", "..")
                    and tmp == f"{aside_stem(target)}.{pid}.tmp" for tmp, target in renames.items()):
                raise ValueError("not a marker of a set")
            put = [target for tmp, target in renames.items() if _replaced(marker.parent / tmp, marker.parent / target)]
            for target in renames.values():  # (the earlier files it kept aside to undo a failed rename)
                with contextlib.suppress(FileNotFoundError):
                    (marker.parent / f"{aside_stem(target)}.{pid}.old").unlink()
            if flocked is None:  # Windows: an open file cannot be removed (the marker stayed, and was done again)
                fd = _closed(fd)
            marker.unlink()
        except (OSError, ValueError, AttributeError):
            continue  # another user's, a damaged marker: left as it is
        finally:
            if fd >= 0:
                os.close(fd)
        done.append(f"a process (pid {pid}) that wrote {', '.join(sorted(renames.values()))} in {folder} was killed "
                    f"while it put its files in place: "
                    + (f"the rest of its set, {', '.join(put)}, was put in place now, so that the folder holds one "
                       "set, not a mix of two" if put else "its set was in place already"))
    return done


def _replaced(tmp: Path, target: Path) -> bool:
    try:
        os.replace(tmp, target)
    except FileNotFoundError:  # renamed before the kill
        return False
    return True


def same_file(fd: int, path: str | os.PathLike[str]) -> bool:
    """Whether `path` (not followed, if a link) is still the file open as `fd`: a lock file its last holder removed,
    and another process made anew, is another file, and a lock on the old one guards nothing."""
    try:
        st, here = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


def _lock(fd: int, *, wait: bool) -> bool | None:
    """An exclusive flock on `fd` (released when the process dies); False if another process holds it, None where
    there is no flock (Windows)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


# The most a pid adds to a temporary file's name (".<pid>.tmp"; pid_max is 4194304 on Linux) and the longest name
# common file systems hold (ext4, XFS, APFS: 255 bytes; NTFS: 255 UTF-16 units, never more bytes than UTF-8 has).
_PID_TMP = len(".4194304.tmp")
NAME_MAX_BYTES = 255


def aside_stem(name: str) -> str:
    """What a temporary file written beside `name` is named before its ".<pid>.tmp": ".<name>", cut (by whole
    characters) where the whole would be longer than a name may be: a target whose own name fits (a 245-byte
    report.html) failed with "File name too long", of a file it never named."""
    stem = "." + name
    while len(os.fsencode(stem)) + _PID_TMP > NAME_MAX_BYTES:
        stem = stem[:-1]
    return stem


def _written_aside(target: Path, content: bytes | Callable[[Path], None]) -> Path:
    """`content` written whole, fsynced and owner-only to a temporary file beside `target` (its path returned); on
    any failure that file is removed and the error names `target` (a WriteError)."""
    check_target(target)
    stem = aside_stem(target.name)
    tmp = target.with_name(f"{stem}.{os.getpid()}.tmp")
    remove_abandoned(target.parent, f"{stem}.*.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # a dead process of the same pid's; O_EXCL below: never open what is planted there
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0),
                     OWNER_ONLY)
        if isinstance(content, bytes | bytearray):
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            try:
                content(tmp)
            except Exception as exc:
                if isinstance(exc, OSError):
                    raise
                # polars says the OS's error in its own (a shard's Parquet over `ulimit -f`: "ComputeError: parquet:
                # ... underlying IO error: File too large (os error 27)", an internal error), and a full disk at
                # times without it ("parquet: ... Invalid thrift: transport error")
                number = os_errno(exc) or (errno.ENOSPC if nearly_full(tmp.parent) else None)
                if number is None:
                    raise
                raise OSError(number, os.strerror(number)) from exc
            _fsync(tmp)
        os.chmod(tmp, OWNER_ONLY)  # whatever the umask, or a writer that replaced the file, made it
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise cannot_write(target, exc) from None
        raise
    return tmp


def _link_new(tmp: Path, target: Path) -> None:
    """Put the written `tmp` at `target` only where there is no file (a hard link fails on one: no window);
    file systems without hard links get the check and rename."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in NO_HARD_LINK:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target)) from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def file_above(path: str | os.PathLike[str]) -> Path | None:
    """The part of `path`'s folders that is a file, not a folder (mkdir says "File exists", open "Not a directory":
    neither names it), or None."""
    return next((folder for folder in Path(path).parents if folder.exists() and not folder.is_dir()), None)


def other_owner(path: str | os.PathLike[str]) -> str | None:
    """The user owning `path` when it is not this user (None otherwise, or where unknown)."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return None
    if not hasattr(os, "getuid") or uid == os.getuid():
        return None
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def missing_folder(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Why the folder of `path` is not one, and what to do, as a message says them: a part of it that is a file
    (mkdir cannot make the folder: "create it" would be no fix), else that it does not exist."""
    path = Path(path)
    a_file = file_above(path)
    if a_file is not None:
        return f"{a_file} is a file, not a folder", "choose a path in a folder"
    return f"its folder {path.parent} does not exist", f"create it (mkdir -p {shlex.quote(str(path.parent))}), or choose another path"


def check_target(target: str | os.PathLike[str], *, example: str | None = None) -> None:
    """Refuse to write `target` unless it is absent or a regular file, in an existing folder (a WriteError).
    `example`: a file name of what is written ("review.ipynb"), for the fix of a path that names no file."""
    text = os.fspath(target)
    if not text or text.endswith(("/", os.sep)):  # Path() would read "" as "." and drop the slash of "dir/"
        # The fix names the file the user meant ("review --out r.ipynb/" was told "e.g. report.html"): the path without
        # its separator, or a file in the folder it names
        folder = text.rstrip("/" + os.sep)
        like = f", e.g. {example}" if example else ""
        fix = (f"give a file name{like}" if not folder else
               f"give a file in that folder{', e.g. ' + os.path.join(folder, example) if example else ''}"
               if os.path.isdir(folder) else f"give the file name without the trailing separator: {folder}")
        raise WriteError(f"{'an empty path' if not text else repr(text) + ' ends with a separator: it'} names no file",
                         where=text or ".", fix=fix)
    target = Path(target)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise cannot_write(target, exc) from None
    if mode is None:
        if not target.parent.is_dir():
            raise WriteError(f"cannot write {target}: its folder {target.parent} does not exist", where=str(target.absolute()),
                             fix="create the folder first, or choose a path in an existing folder")
    elif not stat.S_ISREG(mode):
        kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device")
        # /dev/stdout and its kin: what was meant is standard output, which "-" names
        stream = re.fullmatch(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|\d+)/fd/\d+", target.as_posix()) is not None
        raise WriteError(f"{target} is {kind}; only a regular file is replaced", where=str(target.absolute()),
                         fix=("give - as the file name to write to standard output (`--out -`)" if stream
                              else "choose a new file name (or a regular file to replace)"))


# What a SQLite manifest keeps beside itself: SQLite's side files, the locks (`.lock`, `.<kind>.lock`), the state
# cache and the hash checkpoint folder.
_MANIFEST_SIDE_FILES = re.compile(r"(-wal|-shm|-journal|\.state\.parquet|(\.[A-Za-z0-9_-]+)?\.lock)")


def check_not_manifest(target: str | os.PathLike[str], manifest: str | os.PathLike[str]) -> None:
    """Refuse an output `target` that is the manifest it is made from, a file the manifest keeps beside it, or
    a path inside its Parquet snapshot folder or checkpoint folder, by whatever name reaches it (a WriteError,
    before any work): the output would replace what the manifest records."""
    target, manifest = Path(target), Path(manifest)

    def real(path: Path) -> Path:  # the folder resolved (links followed), the name kept
        return path.parent.resolve() / path.name

    out, db = real(target), real(manifest).resolve() if manifest.exists() else real(manifest)
    what = None
    if manifest.is_dir():  # a folder of no snapshot is no manifest: its reader says so
        if (out == db or db in out.parents) and any(manifest.glob("version=*")):
            what = "inside the manifest's Parquet snapshot folder"
    elif out == db or (target.exists() and manifest.exists() and os.path.samefile(target, manifest)):
        what = "the manifest itself"
    elif out.parent == db.parent and out.name.startswith(db.name) and _MANIFEST_SIDE_FILES.fullmatch(out.name[len(db.name):]):
        what = "a file the manifest keeps beside it"
    elif db.with_name(f"{db.name}.checkpoint") in out.parents:
        what = "inside the manifest's hash checkpoint folder"
    if what:
        raise WriteError(f"{target} is {what} ({manifest}): the output would replace or mix into what the manifest records; "
                         "nothing was written", where=str(target.absolute()),
                         fix="choose another file name for --out (beside the manifest is fine, under a name of its own)")


_FIXES = {"EACCES": "choose a folder this user can write", "EPERM": "choose a folder this user can write",
          "EROFS": "the file system is read-only: choose a path on a writable one",
          "ENOSPC": "free some space, or choose a path on a file system with room",
          "EDQUOT": "free some space (the quota is reached), or choose another file system",
          "ENOENT": "create the folder first, or choose a path in an existing folder",
          "ENOTDIR": "a part of the path is a file, not a folder: choose another path",
          "EFBIG": "the file outgrew this process's file-size limit (`ulimit -f`): " + FILE_SIZE_FIX}

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_errno(exc: BaseException) -> int | None:
    """The OS's error number of `exc`: its errno, or the one in Rust's words that polars' errors carry instead
    ("File too large (os error 27)": an OSError without errno, or a ComputeError)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = _OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


# Windows' "being used by another process" (ERROR_SHARING_VIOLATION, ERROR_LOCK_VIOLATION), which Python gives as
# EACCES: a registry CSV or a report open in Excel or a viewer cannot be replaced there. Told "choose a folder this
# user can write" of a folder the user could write, the user was sent the wrong way.
_WINDOWS_IN_USE = (32, 33)
_IN_USE_FIX = ("close it in the program that has it open (Excel, a viewer, an editor, a notebook), then run again; or "
               "choose another path")
# Windows' rename over a file another program has open fails otherwise: ERROR_ACCESS_DENIED (5), which it also gives
# for a file with the read-only attribute. Met at that rename, whose new file was just written in the same folder,
# it is the file's own, never the folder's: "choose a folder this user can write" sent the user the wrong way there.
_WINDOWS_ACCESS_DENIED = 5


def cannot_write(path: str | os.PathLike[str], exc: OSError, *, replacing: bool = False) -> WriteError:
    """The WriteError for an OSError met writing `path`: the OS's reason, and what to do about it. `replacing`: met
    renaming the new file, written beside it, over `path`."""
    name = errno.errorcode.get(os_errno(exc) or 0, "")
    if name == "ENOENT" and Path(path).parent.is_dir():  # the folder is there, but takes no new file (/proc)
        name = ""
    fix = _FIXES.get(name, "choose a path on an ordinary file system with room, in a folder this user can write")
    reason = exc.strerror or str(exc)
    if getattr(exc, "winerror", None) in _WINDOWS_IN_USE:
        fix = _IN_USE_FIX
    elif replacing and getattr(exc, "winerror", None) == _WINDOWS_ACCESS_DENIED and os.path.isfile(path):
        if not os.stat(path).st_mode & stat.S_IWUSR:  # (Windows' read-only attribute, as os.stat shows it)
            reason += " (the file is read-only)"
            fix = (f"clear its read-only attribute (attrib -r \"{path}\", or untick Read-only in its Properties), "
                   "then run again; or choose another path")
        else:
            reason += " (Windows replaces no file another program has open)"
            fix = _IN_USE_FIX
    return WriteError(f"cannot write {path}: {reason}", where=str(Path(path).absolute()), fix=fix, cause=exc)


def missing_folders(path: Path) -> list[Path]:
    """The folders of `path` that are not there yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing


def remove_empty_folders(folders: list[Path]) -> None:
    """Remove these folders (deepest first) where they are still empty; one that holds anything stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone, or not ours to remove): left as it is
            return


def private_folder(path: str | os.PathLike[str]) -> Path:
    """Make folder `path` and the missing ones above it owner-only (0700 whatever the umask); an existing
    folder is left as it is. A failure is a WriteError."""
    path = Path(path)
    try:
        for folder in reversed(missing_folders(path)):
            with contextlib.suppress(FileExistsError):  # made meanwhile by another process: used as it is
                folder.mkdir(mode=PRIVATE_FOLDER)
                os.chmod(folder, PRIVATE_FOLDER)  # the umask took bits off
    except OSError as exc:
        raise cannot_write(path, exc) from None
    if not path.is_dir():
        raise WriteError(f"{path} is a file, not a folder", where=str(path.absolute()), fix="choose a folder (it is created)")
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """The folder's entries (a rename into it) on disk; best effort (no such call on Windows)."""
    with contextlib.suppress(OSError):
        _fsync(folder)


@contextlib.contextmanager
def scratch_folder(prefix: str, parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A new owner-only folder `<parent>/<prefix>XXXX` (default parent: the system's temporary folder) for one
    piece of work's scratch files, removed when it ends. Its owner holds a lock in it (an OS lock, released
    when the process dies): folders of the same prefix whose lock nobody holds were left by a killed process
    and are removed first, for their files hold paths (person identifiers)."""
    from filelock import FileLock

    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    remove_abandoned(parent, f"{prefix}*", locked=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # mode 0700
    owner = FileLock(folder / _OWNER_LOCK, mode=OWNER_ONLY)
    try:
        owner.acquire()
        yield folder
    finally:
        pause("scratch-folder-end")  # (tests: the modes of what the work left in it)
        owner.release()
        shutil.rmtree(folder, ignore_errors=True)


_OWNER_LOCK = ".owner.lock"


def remove_abandoned(parent: Path, pattern: str, *, locked: bool = False) -> None:
    """Remove what a killed process left in `parent` matching `pattern`, older than ABANDONED_AFTER_S: files
    (a write's temporary file), or with `locked` scratch folders, each only if nobody holds its owner
    lock. Best effort: what cannot be removed (another user's, still in use) is left."""
    from filelock import FileLock, Timeout

    with contextlib.suppress(OSError):
        for path in parent.glob(pattern):
            with contextlib.suppress(OSError):
                # Young either way: an mtime far ahead of the clock is a killed process's from before the clock was
                # set back (a VM restored, a dead RTC corrected at boot): kept until the clock caught up with it, a
                # year's spill stayed a year. Within the window ahead (an NFS server's clock a little fast) it is kept.
                if abs(time.time() - path.lstat().st_mtime) < ABANDONED_AFTER_S:
                    continue
                if not locked:
                    path.unlink()
                    continue
                if not path.is_dir() or path.is_symlink():
                    continue
                owner = FileLock(path / _OWNER_LOCK, timeout=0)
                try:
                    owner.acquire()
                except Timeout:  # its process is alive
                    continue
                owner.release()
                shutil.rmtree(path, ignore_errors=True)


def _local_root(location: str) -> Path | None:
    """The real folder of a local root (None: a cloud one)."""
    from .urls import local_path

    path = local_path(location)
    return None if path is None else Path(os.path.realpath(path))


def _cloud_place(location: str) -> tuple[str, ...] | None:
    """(storage, container or bucket, *folders) of an az://, abfs:// or s3:// URL (None: not one): az://c/x and
    abfs://c@account.dfs.core.windows.net/x/ are one place."""
    from urllib.parse import urlsplit

    from .urls import protocol_of

    protocol = protocol_of(location)
    if protocol not in ("az", "abfs", "abfss", "s3"):
        return None
    parts = urlsplit(location)
    store = (parts.netloc or "").split("@")[0]
    return ("s3" if protocol == "s3" else "az", store, *(part for part in parts.path.split("/") if part))


def check_outside_roots(roots: list[tuple[str, str]], written: list[tuple[str | os.PathLike[str], str, str]]) -> None:
    """Each of `written` (path, where it was given, what it is) lies outside every local one of `roots` (location,
    where it was given), and a manifest blob (an az:// URL) outside every cloud one; else a UsageError. A manifest
    inside a root would be listed by every run as a site file that every commit changes (a new version each night,
    its lock and state files too), and `upload` would send it, person ids and all, to the centre; a staging folder
    inside would be listed by the other shards."""
    from .urls import mask_url

    for location, root_where in roots:
        cloud_root = _cloud_place(location) if location else None
        for path, where, name in written if cloud_root else ():
            place = _cloud_place(str(path))
            if place is not None and place[:len(cloud_root)] == cloud_root:
                raise UsageError(
                    f"{name} would lie inside the site's root ({root_where} {mask_url(location)}): every run would "
                    "record it (and its .lock blob) as a file of the site, and `upload` would send it to the centre",
                    where=f"{where}: {mask_url(str(path))}",
                    fix=f"keep {name} outside the site's roots, e.g. in another container or under a prefix the "
                        "site's roots do not hold")
        root = _local_root(location) if location else None
        if root is None:
            continue
        for path, where, name in written:
            if "://" in str(path):
                continue
            real = Path(os.path.realpath(path))
            if real == root or root in real.parents:
                raise UsageError(
                    f"{name} would lie inside the site's root ({root_where} {location}): every run would record it as "
                    "a file of the site, and `upload` would send it to the centre", where=f"{where}: {path}",
                    fix=f"keep {name} outside the site's roots, e.g. in {root.parent / (root.name + '-chorus')}")


def write_stdout(text: str) -> None:
    """`text` on standard output as the file a redirect keeps (`> report.html`, `> upload.sh`, `> chorus.toml`):
    UTF-8, with its own line ends, whatever the stream's encoding and newline. On Windows, Python writes redirected
    output in the ANSI code page (cp1252): `report --out - > r.html` gave a page that says it is UTF-8 with its
    dashes as cp1252 bytes (shown as a replacement character) and a letter outside cp1252 as the text "\\u2081";
    `upload --script bash > upload.sh` named a file such as note_<Chinese>.csv as note_\\u4e2d.csv, a path the
    site does not hold, and é as a cp1252 byte that bash does not read as é: the file was not sent. On a terminal:
    text, as the stream shows it (stdout.errors escapes what it cannot hold)."""
    import sys

    out = sys.stdout
    if not hasattr(out, "buffer") or getattr(out, "isatty", lambda: True)():  # (stdout closed: no isatty)
        out.write(text)
        return
    out.flush()
    out.buffer.write(text.encode("utf-8", "surrogateescape"))
    out.flush()


def standard_streams_open() -> None:
    """Open /dev/null on stdin, stdout or stderr if the caller closed them (`<&- >&- 2>&-` in a cron line), before
    anything else opens a file: the lowest free descriptors would go to the manifest or a worker pool's pipes,
    where a library's write to "stderr" would land, and which each worker's /dev/null over 0-2 cut (a broken
    pool). Python has set sys.stdout/stderr to None for them already: they stay so (nothing is written)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # (the lowest free descriptor: it is fd, as the ones below it are open)
                os.dup2(null, fd)
                os.close(null)


def private_streams() -> None:
    """Make stdout and stderr owner-only where they are a regular file of this user's: `upload --script bash >
    upload.sh`, `validate --json > findings.json`, `run -v 2>> nightly.log` name every file sent, each finding's path
    or each person folder, and the shell made the file with its umask (0644 under 022: readable by all). A pipe, a
    terminal, /dev/null or another user's file is left as it is; the owner's own bits stay. Windows (no os.geteuid, and
    a file's mode says only whether it is read-only; its ACL, inherited from the folder, says who reads it) is left
    alone: every command with its output in a file ended in AttributeError there (`validate --json > findings.json`)."""
    if not hasattr(os, "geteuid") or not hasattr(os, "fchmod"):
        return
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)


def _no_manifest_path(path: str | os.PathLike[str], exc: OSError) -> UsageError | None:
    """Why a manifest path that cannot be stat'ed can hold no manifest, as every command says it (None: there is nothing
    there yet, which a command that reads says as "no manifest", and `run` starts one in): a symbolic link to nothing
    (every command said "no manifest at" the link's target, or the link, and never that it was a link), a path under a
    file (`files`, `diff`, `history` said "no manifest"; the others "a path under a file"), a loop of links."""
    absolute = os.path.abspath(path)
    # (Windows says a path under a file is not there, ENOENT: the file above is looked for either way)
    if exc.errno in (errno.ENOTDIR, errno.ENOENT) and (a_file := file_above(absolute)) is not None:
        return UsageError(f"the manifest's path {absolute} lies under a file: {a_file} is a file, not a folder",
                          where=absolute, fix=pass_db("a path in a folder") + named(" (or [manifest] db)", ""))
    if exc.errno == errno.ELOOP:
        return UsageError(f"the manifest's path {absolute} is a loop of symbolic links (each leads back to another)",
                          where=absolute,
                          fix=pass_db("the manifest file's own path") + " (`ls -l` shows where each link leads)")
    # the link that points nowhere: the manifest's own name, or a folder on its way (the first from the top)
    link = next((str(p) for p in (*reversed(Path(absolute).parents), Path(absolute))
                 if os.path.islink(p) and not os.path.exists(p)), None)
    if link is None:
        return None
    target = os.readlink(link)
    final = os.path.realpath(link)
    return UsageError(
        f"the manifest's path {absolute} {'is a symbolic link' if link == absolute else f'leads through the symbolic link {link}'} "
        f"to {target}{f' ({final})' if final != target else ''}, which does not exist: the link points nowhere (a "
        "disk not mounted, a manifest moved or removed?); nothing was done", where=absolute,
        fix="mount the disk or put the manifest back where the link points, or " + pass_db("the manifest's own path")
            + " (a new manifest is started only at a path that is no dangling link)")


# (here, not in store.manifest: every command calls it before its work, and importing the store loads polars and
# pyarrow, which an address-space limit too low for a run cannot map: that is said after it, by processes.py)
def require_reachable(path: str | os.PathLike[str]) -> None:
    """Refuse a manifest path this user cannot reach: a folder on its way it may not enter (pathlib's stat raised a
    PermissionError there, an "internal error" in every command), a file it may not read (SQLite said "unable to
    open database file", and to check that the folder is writable), a symbolic link to nothing, a path under a file
    or a loop of links (_no_manifest_path). Nothing there, or a folder, is the caller's to judge."""
    try:
        info = os.stat(path)
    except PermissionError:
        absolute = Path(os.path.abspath(path))
        blocked = next((folder for folder in reversed(absolute.parents) if not os.access(folder, os.X_OK)),
                       absolute.parent)
        raise ManifestError(f"cannot reach the manifest {absolute}: this user may not enter the folder {blocked} "
                            "(permission denied)", where=str(absolute),
                            fix=f"ask the owner of {blocked} for access to it, or for a copy of the manifest "
                                "(`sqlite3 <manifest> '.backup copy.sqlite'`) to pass with --db") from None
    except OSError as exc:  # (nothing there at all: the caller's to judge, e.g. `run` starts a manifest)
        if (unreachable := _no_manifest_path(path, exc)) is not None:
            raise unreachable from None
        return
    if stat.S_ISREG(info.st_mode) and not os.access(path, os.R_OK):
        owner = other_owner(path)
        raise ManifestError(f"the manifest {os.path.abspath(path)} cannot be read by this user (permission denied: "
                            f"mode {stat.S_IMODE(info.st_mode):04o}{f', owned by {owner}' if owner else ''})",
                            where=str(os.path.abspath(path)),
                            fix="ask its owner for read access, or for a copy (`sqlite3 <manifest> '.backup "
                                "copy.sqlite'`) to pass with --db")
