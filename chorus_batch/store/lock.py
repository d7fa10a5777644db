"""One run at a time per manifest: an OS file lock (flock on POSIX, msvcrt on Windows, via
filelock), released by the OS when its holder exits or is killed; a side file names the
holder so that a second run can say who it waits for."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import ManifestError, ManifestLocked
from ..fsutil import OWNER_ONLY, create_private, private_folder
from ..times import iso, utc_now


def user_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in containers without passwd entries
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


@contextlib.contextmanager
def manifest_lock(db: Path, argv: list[str], *, kind: str = "run") -> Iterator[None]:
    """Exclusive for one run (kind "run"), or one upload (kind "upload": a run may go on beside it, each
    writes its own tables in short transactions); a second one fails at once, naming the holder."""
    suffix = ".lock" if kind == "run" else f".{kind}.lock"
    lock_path, holder_path = Path(f"{db}{suffix}"), Path(f"{db}{suffix}.json")
    lock = FileLock(lock_path, timeout=0, mode=OWNER_ONLY)
    try:
        private_folder(db.parent)  # 0700 with its missing parents; a WriteError is an OSError
        lock.acquire()
    except Timeout:
        holder = "an unknown process (it has not written its details yet)"
        with contextlib.suppress(OSError, ValueError, KeyError):
            info = json.loads(holder_path.read_text(encoding="utf-8"))
            holder = f"pid {info['pid']} on host {info['host']} (user {info['user']}), started {info['started_at']}"
            command = next((w for w in str(info.get("command") or "").split() if not w.startswith("-")), None)
            if command:  # which command holds it (its name only: its arguments may name secret places)
                holder += f", `chorus-batch {command}`"
        raise ManifestLocked(
            f"the manifest is locked by another {kind}: {holder}",
            where=str(lock_path),
            fix=f"wait for that {kind} to finish; if it is gone, the lock is released automatically",
        ) from None
    except OSError as exc:
        a_file = next((folder for folder in db.parents if folder.exists() and not folder.is_dir()), None)
        if a_file is not None:  # (mkdir says "File exists", open "Not a directory": neither names the file)
            raise ManifestError(f"the manifest's folder cannot be made: {a_file} is a file, not a folder",
                                where=str(db), fix="pass --db with a path in a folder (or where one can be made)") from None
        raise ManifestError(f"cannot create or open the manifest's lock file: {exc.strerror or exc}", where=str(lock_path),
                            fix="run with --db in a folder this user can write (the lock and the manifest's "
                                "-wal file live beside it)") from None
    try:
        with contextlib.suppress(OSError):  # only informs a second run; the lock itself holds
            with os.fdopen(create_private(holder_path), "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "user": user_name(),
                           "started_at": iso(utc_now()), "command": " ".join(argv[:2])}, f)
        yield
    finally:
        with contextlib.suppress(OSError):
            holder_path.unlink()
        lock.release()
