"""Files this tool writes: owner-only (they hold person identifiers), replaced atomically.

Every output beside the manifest (the state cache, Parquet snapshots, the HTML report)
goes through `write_private`: a temporary file in the same folder, created 0600, written,
fsynced, then renamed over the target; on any failure the temporary file is removed and the
target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

OWNER_ONLY = 0o600


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
