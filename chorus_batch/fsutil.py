"""Files this tool writes: owner-only (they hold person identifiers), replaced atomically.

Every output beside the manifest (the state cache, Parquet snapshots, the HTML report)
goes through `write_private`: a temporary file in the same folder, created 0600, written,
fsynced, then renamed over the target; on any failure the temporary file is removed and the
target is left as it was.

Scratch files (DuckDB's spill, a throwaway manifest, a manifest's copy for upload) live in a
`scratch_folder`, removed when its work ends. A process that is killed (SIGKILL, a node lost) removes
nothing: what it left is removed by the next process that writes the same thing in the same place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

OWNER_ONLY = 0o600
# What a killed process left is removed once it is this old: no live process is still setting it up
# (a scratch folder is locked within milliseconds of being made; a temporary file is renamed when written).
ABANDONED_AFTER_S = 600


def create_private(path: str | os.PathLike[str], *, truncate: bool = True) -> int:
    """Open (creating) a file readable by its owner only; returns the descriptor."""
    flags = os.O_CREAT | os.O_WRONLY | getattr(os, "O_BINARY", 0) | (os.O_TRUNC if truncate else 0)
    return os.open(path, flags, OWNER_ONLY)


def restrict(path: str | os.PathLike[str]) -> None:
    """Take group and other permissions off an existing file (best effort: some file systems ignore
    modes). The owner's own bits stay: a manifest its owner made read-only stays read-only."""
    import stat

    with contextlib.suppress(OSError):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if mode & 0o077:
            os.chmod(path, mode & 0o700)


def write_private(target: str | os.PathLike[str], content: bytes | Callable[[Path], None]) -> Path:
    """Write `target` atomically and owner-only. `content` is the bytes, or a function that
    writes the file at the path it is given (e.g. `frame.write_parquet`)."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    remove_abandoned(target.parent, f".{target.name}.*.tmp")
    try:
        fd = create_private(tmp)
        if isinstance(content, bytes | bytearray):
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            content(tmp)
            restrict(tmp)  # a writer may have replaced the file: keep it private
            _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
                if time.time() - path.lstat().st_mtime < ABANDONED_AFTER_S:
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
