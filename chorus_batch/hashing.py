"""MD5 of the files that need it; earlier hashes are reused for the rest.

A file is hashed when it is new, its size or mtime_ns changed, it was "racily
clean" (its mtime fell within a small window of the previous scan's start, so a
later write in the same clock tick could have gone unseen, as git reasons), or
`--rehash` is given. Hashing runs on plain worker threads, each looping over a
shared counter: hashlib releases the GIL, and one future per file costs more
than hashing a small file.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from .sources import READ_SIZE, FileChangedWhileHashing, Source


def plan(listing: pl.DataFrame, previous: pl.DataFrame, *, racy_cutoff_ns: int | None, rehash: bool) -> pl.DataFrame:
    """The listing joined to the previous current rows, with `needs_hash`.

    Adds prev_file_id, prev_size, prev_mtime_ns, prev_md5 (NULL for new paths).
    """
    prev = previous.select(
        "srcfile",
        pl.col("file_id").alias("prev_file_id"),
        pl.col("size").alias("prev_size"),
        pl.col("mtime_ns").alias("prev_mtime_ns"),
        pl.col("md5").alias("prev_md5"),
    )
    joined = listing.join(prev, on="srcfile", how="left")
    needs = (
        pl.col("prev_md5").is_null()
        | (pl.col("size") != pl.col("prev_size"))
        | (pl.col("mtime_ns") != pl.col("prev_mtime_ns"))
    )
    if rehash:
        needs = pl.lit(True)
    elif racy_cutoff_ns is not None:
        needs = needs | (pl.col("mtime_ns") >= racy_cutoff_ns)
    return joined.with_columns(needs_hash=needs)


@dataclass
class HashProgress:
    """Counters the worker threads bump; the progress reporter reads them."""

    files_done: int = 0
    bytes_done: int = 0


def hash_files(
    sources: Sequence[Source],
    todo: pl.DataFrame,
    *,
    workers: int,
    progress: HashProgress | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> pl.DataFrame:
    """Hash the rows of `todo` (root_id, srcfile); returns one row each with
    md5, size, mtime_ns as hashed, and error_kind / error_message on failure."""
    root_ids = todo["root_id"].to_list()
    paths = todo["srcfile"].to_list()
    n = len(paths)
    md5s: list[str | None] = [None] * n
    sizes: list[int | None] = [None] * n
    mtimes: list[int | None] = [None] * n
    kinds: list[str | None] = [None] * n
    messages: list[str | None] = [None] * n
    progress = progress or HashProgress()
    counter = itertools.count()  # next() on it is atomic under the GIL
    lock = threading.Lock()

    def worker() -> None:
        buffer = bytearray(READ_SIZE)
        files = size_sum = 0
        while not cancelled():
            i = next(counter)
            if i >= n:
                break
            try:
                out = sources[root_ids[i]].hash_file(paths[i], buffer)
                md5s[i], sizes[i], mtimes[i] = out.md5, out.size, out.mtime_ns
                size_sum += out.size
            except FileChangedWhileHashing as exc:
                kinds[i], messages[i] = "changed_while_hashing", str(exc)
            except FileNotFoundError:
                kinds[i], messages[i] = "vanished", "file disappeared before it could be hashed"
            except PermissionError as exc:
                kinds[i], messages[i] = "unreadable", f"permission denied: {exc.strerror or exc}"
            except OSError as exc:
                kinds[i], messages[i] = "unreadable", f"cannot read: {exc.strerror or exc}"
            files += 1
            if files >= 64:
                with lock:
                    progress.files_done += files
                    progress.bytes_done += size_sum
                files = size_sum = 0
        with lock:
            progress.files_done += files
            progress.bytes_done += size_sum

    threads = [threading.Thread(target=worker, name=f"chorus-hash-{k}", daemon=True) for k in range(max(1, min(workers, n)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return pl.DataFrame(
        {
            "srcfile": paths,
            "md5": md5s,
            "hashed_size": sizes,
            "hashed_mtime_ns": mtimes,
            "error_kind": kinds,
            "error_message": messages,
        },
        schema={
            "srcfile": pl.String,
            "md5": pl.String,
            "hashed_size": pl.Int64,
            "hashed_mtime_ns": pl.Int64,
            "error_kind": pl.String,
            "error_message": pl.String,
        },
    )
