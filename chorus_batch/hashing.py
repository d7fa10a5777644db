"""MD5 of the files that need it; earlier hashes are reused for the rest.

A file is hashed when it is new, its size or mtime_ns changed, it was "racily
clean" (its mtime fell within a small window of the previous scan's start, so a
later write in the same clock tick could have gone unseen, as git reasons), or
`--rehash` is given.

Local files are hashed by worker processes, each looping over a chunk of files:
with many small files the per-file Python work holds the GIL, and two threads
measured slower than one. Remote sources (fsspec) use threads, which overlap the
network waits. Never one future per file: that costs more than hashing it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass

import polars as pl

from .sources import READ_SIZE, Source, hash_chunk, hash_one, pool

CHUNK_FILES = 512
CHUNK_BYTES = 64 << 20
# Below this much work, starting worker processes costs more than it saves.
PROCESS_MIN_FILES = 2_000
PROCESS_MIN_BYTES = 256 << 20
THREADS_MIN_MEAN_SIZE = 1 << 20

HASHED_SCHEMA = {
    "srcfile": pl.String,
    "md5": pl.String,
    "hashed_size": pl.Int64,
    "hashed_mtime_ns": pl.Int64,
    "error_kind": pl.String,
    "error_message": pl.String,
}


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
    """Counters the hashing bumps; the progress reporter reads them."""

    files_done: int = 0
    bytes_done: int = 0


def hash_files(
    sources: Sequence[Source],
    todo: pl.DataFrame,
    *,
    workers: int,
    progress: HashProgress | None = None,
) -> pl.DataFrame:
    """Hash the rows of `todo` (root_id, srcfile, size); one row each back with
    md5, hashed_size, hashed_mtime_ns, or error_kind / error_message."""
    progress = progress or HashProgress()
    n = todo.height
    total = int(todo["size"].sum() or 0) if n else 0
    local = all(getattr(s, "hash_in_processes", False) for s in sources)
    if workers > 1 and local and (n >= PROCESS_MIN_FILES or total >= PROCESS_MIN_BYTES):
        rows = _in_processes(sources, todo, workers, progress)
    else:
        threads = workers if n and total / n >= THREADS_MIN_MEAN_SIZE or not local else 1
        rows = _in_threads(sources, todo, threads, progress)
    md5s, sizes, mtimes, kinds, messages = zip(*rows) if rows else ((), (), (), (), ())
    return pl.DataFrame(
        {"srcfile": todo["srcfile"], "md5": md5s, "hashed_size": sizes, "hashed_mtime_ns": mtimes,
         "error_kind": kinds, "error_message": messages},
        schema=HASHED_SCHEMA,
    )


def _chunks(todo: pl.DataFrame) -> list[tuple[int, int]]:
    """(start, length) runs of at most CHUNK_FILES files and about CHUNK_BYTES bytes."""
    chunk_id = pl.col("size").cum_sum() // CHUNK_BYTES + pl.int_range(pl.len()) // CHUNK_FILES
    runs = (
        todo.select(chunk_id.alias("chunk")).with_row_index("start")
        .group_by("chunk", maintain_order=True).agg(pl.col("start").first(), pl.len().alias("length"))
    )
    return list(zip(runs["start"].to_list(), runs["length"].to_list()))


def _in_processes(sources: Sequence[Source], todo: pl.DataFrame, workers: int, progress: HashProgress) -> list[tuple]:
    root_ids, paths, sizes = todo["root_id"].to_list(), todo["srcfile"].to_list(), todo["size"].to_list()
    rows: list[tuple] = [()] * len(paths)
    with pool(workers) as executor:
        futures = {}
        for start, length in _chunks(todo):
            # a chunk may span roots only in multi-root sites; split it by root
            end = start + length
            for root_id, group in itertools.groupby(range(start, end), key=root_ids.__getitem__):
                idx = list(group)
                futures[executor.submit(hash_chunk, sources[root_id], [paths[i] for i in idx])] = idx
        for future in as_completed(futures):
            idx = futures[future]
            for i, row in zip(idx, future.result()):
                rows[i] = row
            progress.files_done += len(idx)
            progress.bytes_done += sum(sizes[i] for i in idx)
    return rows


def _in_threads(sources: Sequence[Source], todo: pl.DataFrame, threads: int, progress: HashProgress) -> list[tuple]:
    root_ids, paths = todo["root_id"].to_list(), todo["srcfile"].to_list()
    n = len(paths)
    rows: list[tuple] = [()] * n
    counter = itertools.count()  # next() on it is atomic under the GIL
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        buffer = bytearray(READ_SIZE)
        done = size_sum = 0
        while not stop.is_set():
            i = next(counter)
            if i >= n:
                break
            rows[i] = row = hash_one(sources[root_ids[i]], paths[i], buffer)
            done += 1
            size_sum += row[1] or 0
            if done >= 64:
                with lock:
                    progress.files_done += done
                    progress.bytes_done += size_sum
                done = size_sum = 0
        with lock:
            progress.files_done += done
            progress.bytes_done += size_sum

    workers = [threading.Thread(target=worker, name=f"chorus-hash-{k}", daemon=True) for k in range(max(1, min(threads, n)))]
    for t in workers:
        t.start()
    try:
        for t in workers:
            while t.is_alive():  # a timed join keeps Ctrl-C responsive
                t.join(0.2)
    except BaseException:
        stop.set()
        raise
    return rows
