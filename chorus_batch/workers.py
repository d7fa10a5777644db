"""Worker processes, and the chunk of work they run most: hashing files one after another.

Listing, hashing and header reading of local files are bound by per-file Python work under
the GIL (measured: two threads slower than one), so they run in worker processes. On Linux
the workers are forked: cheap to start, and no re-import of the caller's main module (spawn
and forkserver re-run an unguarded script). Forking a process whose polars/duckdb threads
exist is safe here because the work functions call only the standard library (and pydicom,
wfdb's grammar or pyarrow's CSV reader for headers, all fork-safe), never polars. Elsewhere: spawn.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import sys
from array import array
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .sources.base import READ_SIZE, FileChangedWhileHashing, HashOutcome

if TYPE_CHECKING:
    from .sources.base import Parse, Source



def _pool_context() -> multiprocessing.context.BaseContext:
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _worker_init() -> None:
    """In each worker: die with the parent (never an orphan holding the caller's output open), leave
    signals to the parent (it stops the pool), and write nothing to the caller's stdout or stderr."""
    import os
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, signal.SIG_DFL)
    if sys.platform == "linux":
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: killed when the parent dies, even by SIGKILL
            if os.getppid() == 1:  # the parent died before prctl took effect
                os._exit(1)
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)


@contextlib.contextmanager
def pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for the block. Leaving it normally waits for them; leaving it by an exception or a
    signal (KeyboardInterrupt, Stopped) cancels what is queued and kills the workers at once, so a stopped
    run does not wait for a 100 GB file to finish hashing."""
    executor = ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_worker_init)
    try:
        yield executor
    except BaseException:
        stop_pool(executor)
        raise
    executor.shutdown(wait=True)


def stop_pool(executor: ProcessPoolExecutor) -> None:
    processes = list(getattr(executor, "_processes", {}).values())  # the executor keeps no public handle
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.kill()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def hash_one(source: "Source", path: str, buffer: bytearray, parse: "Parse | None" = None) -> HashOutcome | tuple[str, str]:
    """The outcome for one file, or (error kind, message); never raises OSError."""
    try:
        return source.hash_file(path, buffer) if parse is None else source.hash_file(path, buffer, parse)
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
    facts: list[tuple[int, str, str]] = field(default_factory=list)  # (offset in chunk, kind, facts as JSON)
    contents: list[tuple[int, str, bytes]] = field(default_factory=list)  # (offset, kind, the bytes): raw_kinds


_NO_DIGEST = bytes(16)


def hash_chunk(source: "Source", paths: list[str], facts_kinds: frozenset[str] = frozenset(),
               raw_kinds: frozenset[str] = frozenset(), mask: list[bool] | None = None) -> HashedChunk:
    """Hash files one after another (in a worker process: one GIL per core). A file whose kind (from its
    path: validate.kinds) is in `facts_kinds` is parsed from the bytes hashed, so validation need not read
    it again (one read per file); one in `raw_kinds` (small files whose parser may not run here) comes
    back whole, up to MAX_RAW_BYTES, for the caller to parse. `mask`: parse only the files whose flag is
    true (None: every file of those kinds)."""
    buffer = bytearray(READ_SIZE)
    digests = bytearray()
    sizes, mtimes = array("q"), array("q")
    errors: list[tuple[int, str, str]] = []
    facts: list[tuple[int, str, str]] = []
    contents: list[tuple[int, str, bytes]] = []
    parsers: dict[str, "Parse"] = {}
    if (facts_kinds or raw_kinds) and "parse" in inspect.signature(source.hash_file).parameters:
        from .validate.kinds import kind_of
        from .validate.readers import parser

        parsers = {kind: parser(kind) for kind in facts_kinds}
        parsers.update((kind, _whole) for kind in raw_kinds)
    for k, path in enumerate(paths):
        kind = kind_of(path) if parsers and (mask is None or mask[k]) else None
        out = hash_one(source, path, buffer, parsers.get(kind) if kind else None)
        if isinstance(out, HashOutcome):
            digests += out.digest
            sizes.append(out.size)
            mtimes.append(out.mtime_ns)
            if isinstance(out.facts, bytes):
                contents.append((k, kind, out.facts))  # type: ignore[arg-type]
            elif out.facts is not None:
                facts.append((k, kind, out.facts))  # type: ignore[arg-type]
        else:
            digests += _NO_DIGEST
            sizes.append(0)
            mtimes.append(0)
            errors.append((k, *out))
    return HashedChunk(bytes(digests), sizes, mtimes, errors, facts, contents)


MAX_RAW_BYTES = 4 << 20


def _whole(f) -> bytes | None:
    """A small file's bytes (None if larger than MAX_RAW_BYTES: validation reads it)."""
    data = f.read(MAX_RAW_BYTES + 1)
    return data if len(data) <= MAX_RAW_BYTES else None
