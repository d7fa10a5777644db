"""Worker processes, and the chunk of work they run most: hashing files one after another.

Listing, hashing and header reading of local files are bound by per-file Python work under
the GIL (measured: two threads slower than one), so they run in worker processes. On Linux
the workers are forked: cheap to start, and no re-import of the caller's main module (spawn
and forkserver re-run an unguarded script). Forking a process whose polars/duckdb threads
exist is safe here because the work functions call only the standard library (and pydicom
or wfdb's grammar for headers), never polars. Elsewhere: spawn.
"""

from __future__ import annotations

import multiprocessing
import sys
from array import array
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .sources.base import FileChangedWhileHashing, HashOutcome

if TYPE_CHECKING:
    from .sources.base import Source

READ_SIZE = 64 * 1024  # stays in L2; measured fastest for hashlib.md5


def _pool_context() -> multiprocessing.context.BaseContext:
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=_pool_context())


def hash_one(source: "Source", path: str, buffer: bytearray) -> HashOutcome | tuple[str, str]:
    """The outcome for one file, or (error kind, message); never raises OSError."""
    try:
        return source.hash_file(path, buffer)
    except FileChangedWhileHashing as exc:
        return "changed_while_hashing", str(exc)
    except FileNotFoundError:
        return "vanished", "file disappeared before it could be hashed"
    except PermissionError as exc:
        return "unreadable", f"permission denied: {exc.strerror or exc}"
    except OSError as exc:
        return "unreadable", f"cannot read: {exc.strerror or exc}"


@dataclass
class HashedChunk:
    """Results for consecutive files, packed (16-byte digests, int64 arrays) so a
    million results cost tens of MB, not a million Python objects."""

    digests: bytes
    sizes: array
    mtimes: array
    errors: list[tuple[int, str, str]]  # (offset in chunk, kind, message)


_NO_DIGEST = bytes(16)


def hash_chunk(source: "Source", paths: list[str]) -> HashedChunk:
    """Hash files one after another (in a worker process: one GIL per core)."""
    buffer = bytearray(READ_SIZE)
    digests = bytearray()
    sizes, mtimes = array("q"), array("q")
    errors: list[tuple[int, str, str]] = []
    for k, path in enumerate(paths):
        out = hash_one(source, path, buffer)
        if isinstance(out, HashOutcome):
            digests += out.digest
            sizes.append(out.size)
            mtimes.append(out.mtime_ns)
        else:
            digests += _NO_DIGEST
            sizes.append(0)
            mtimes.append(0)
            errors.append((k, *out))
    return HashedChunk(bytes(digests), sizes, mtimes, errors)
