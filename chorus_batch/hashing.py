"""MD5 of the files that need it; earlier hashes are reused for the rest.

A file needs an MD5 when it is new, its size or mtime_ns changed, it was "racily
clean" (its mtime fell within a small window of the previous scan's start, so a
later write in the same clock tick could have gone unseen, as git reasons), or
`--rehash` is given. Such a file is read and hashed unless its source listed an MD5
the storage holds for it (`stored_md5`, sources with the server_md5 capability).

Local files are hashed by worker processes, each looping over a chunk of files:
with many small files the per-file Python work holds the GIL, and two threads
measured slower than one. Remote sources (fsspec) use threads, which overlap the
network waits. Never one future per file: that costs more than hashing it.

One read per file: with `facts`, the worker that hashes a file validation looks inside (its kind from
the path: validate.kinds) parses the header facts from the same bytes as they go by (sources.base.
HashingReader), so that validation finds them cached and opens no file again.
"""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Callable, Sequence
from array import array
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from .faults import pause
from .sources import Source
from .workers import HashedChunk, hash_chunk, pool

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
    "facts_kind": pl.String,  # with facts_kinds: the header facts parsed from the bytes hashed (validate.kinds)
    "facts": pl.String,
}
_FACTS_PART = {"_i": pl.UInt32, "facts_kind": pl.String, "facts": pl.String}


def plan(listing: pl.DataFrame, previous: pl.DataFrame, *, racy_cutoff_ns: int | None, rehash: bool,
         racy_until_ns: int | None = None, verify_files: int = 0, verify_max_bytes: int = 0,
         cloud_md5: str = "stored-or-download", cloud_roots: Sequence[int] = ()) -> pl.DataFrame:
    """The listing joined to the previous current rows, with `needs_md5` (a new MD5 is due) and
    `needs_read` (due, and it must come from the bytes: the file is read and hashed).

    A cloud file (its root in `cloud_roots`) changed when its etag, size or last-modified did; its MD5
    is then the one the storage holds, if any, under the `cloud_md5` policy (frames.CLOUD_MD5_POLICIES):
    stored-or-download reads only files with none, download reads every due file, stored-only never
    reads (a file with no stored MD5 stays without one: unverifiable).

    Adds prev_file_id, prev_size, prev_mtime_ns, prev_md5, prev_modality, prev_etag (NULL for new paths).
    """
    prev = previous.select(
        "srcfile",
        pl.col("file_id").alias("prev_file_id"),
        pl.col("size").alias("prev_size"),
        pl.col("mtime_ns").alias("prev_mtime_ns"),
        pl.col("md5").alias("prev_md5"),
        pl.col("modality").alias("prev_modality"),
        pl.col("verified_ns").alias("prev_verified_ns"),
        pl.col("etag").alias("prev_etag"),
    )
    joined = listing.join(prev, on="srcfile", how="left")
    cloud = pl.col("root_id").is_in(list(cloud_roots)) if cloud_roots else pl.lit(False)
    needs = (
        pl.col("prev_md5").is_null()  # new, or recorded without an MD5 (unverifiable): look again
        | (pl.col("size") != pl.col("prev_size"))
        | (pl.col("mtime_ns") != pl.col("prev_mtime_ns"))
        # a new etag: written since (no etag recorded, as before schema 7: size and mtime decide)
        | (pl.col("etag") != pl.col("prev_etag")).fill_null(False)
    )
    if rehash:
        needs = pl.lit(True)
    elif racy_cutoff_ns is not None:
        # Racily clean: modified around the previous scan, so a later write in the same clock tick could be
        # unseen. A file whose mtime lies beyond that (a clock in the future) is not: a write now would move
        # its mtime back, which the stat comparison sees, so it is not hashed again on every run. An object
        # with an etag is never racy: any write gives it a new etag.
        racy = (pl.col("mtime_ns") >= racy_cutoff_ns) & pl.col("etag").is_null()
        if racy_until_ns is not None:
            racy = racy & (pl.col("mtime_ns") <= racy_until_ns)
        needs = needs | racy
    joined = joined.with_columns(needs_md5=needs)
    if cloud_md5 == "stored-only":
        read = ~cloud & (pl.col("stored_md5").is_null() | rehash)
    elif cloud_md5 == "download":
        read = cloud | pl.col("stored_md5").is_null() | rehash
    else:
        read = pl.col("stored_md5").is_null() | rehash  # --rehash reads every file, whatever the storage holds
    joined = joined.with_columns(needs_read=pl.col("needs_md5") & read, _no_read=cloud & (cloud_md5 == "stored-only"))
    return _verify_slice(joined, verify_files, verify_max_bytes).drop("_no_read")


def _verify_slice(joined: pl.DataFrame, files: int, max_bytes: int) -> pl.DataFrame:
    """Rolling re-verification: up to `files` unchanged files, the longest unverified first (never-verified
    ones before all), read again within `max_bytes`, so that over nights the whole site is re-read. A file
    larger than the byte cap alone is left out (it would take a night's whole budget)."""
    if files <= 0 or max_bytes <= 0:
        return joined.with_columns(verify=pl.lit(False))
    # (`_no_read`: files the cloud policy forbids reading)
    chosen = (
        joined.filter(~pl.col("needs_md5") & pl.col("prev_md5").is_not_null() & (pl.col("size") <= max_bytes)
                      & ~pl.col("_no_read"))
        .select("srcfile", "size", "prev_verified_ns")
        .sort(["prev_verified_ns", "srcfile"], nulls_last=False)
        .head(files)
        .filter(pl.col("size").cum_sum() <= max_bytes)
        .select("srcfile", _verify=pl.lit(True))
    )
    return joined.join(chosen, on="srcfile", how="left").with_columns(
        verify=pl.col("_verify").fill_null(False)).with_columns(
        needs_read=pl.col("needs_read") | pl.col("verify")).drop("_verify")


@dataclass
class HashProgress:
    """Counters the hashing bumps; the progress reporter reads them."""

    files_done: int = 0
    bytes_done: int = 0
    # Called with (offset in todo, HashedChunk) as each chunk's results arrive (checkpoint.Writer).
    on_chunk: Callable[[int, HashedChunk], None] | None = None


class _Results:
    """Preallocated, packed results for n files, filled chunk by chunk."""

    def __init__(self, n: int):
        self.digests = bytearray(16 * n)
        self.sizes = array("q", bytes(8 * n))
        self.mtimes = array("q", bytes(8 * n))
        self.errors: list[tuple[int, str, str]] = []
        self.facts: list[pl.DataFrame] = []  # per chunk, as Arrow strings (compact: no Python object per file)

    def put(self, start: int, chunk: HashedChunk) -> None:
        n = len(chunk.sizes)
        self.digests[16 * start: 16 * (start + n)] = chunk.digests
        self.sizes[start: start + n] = chunk.sizes
        self.mtimes[start: start + n] = chunk.mtimes
        self.errors.extend((start + k, kind, message) for k, kind, message in chunk.errors)
        rows = [(start + k, kind, facts) for k, kind, facts in chunk.facts]
        if chunk.contents:  # small files a worker could not parse: parsed here, from the bytes it read
            from .validate.readers import parser

            rows += [(start + k, kind, parser(kind)(io.BytesIO(data))) for k, kind, data in chunk.contents]
        if rows:
            self.facts.append(pl.DataFrame(rows, schema=_FACTS_PART, orient="row"))

    def frame(self, srcfile: pl.Series) -> pl.DataFrame:
        n = srcfile.len()
        digests = pa.Array.from_buffers(pa.binary(16), n, [None, pa.py_buffer(self.digests)])
        sizes = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(self.sizes)])
        mtimes = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(self.mtimes)])
        errors = pl.DataFrame(self.errors, schema={"_i": pl.UInt32, "error_kind": pl.String, "error_message": pl.String},
                              orient="row")
        frame = pl.DataFrame({"srcfile": srcfile}).with_columns(
            md5=pl.Series(digests).bin.encode("hex"),
            hashed_size=pl.Series(sizes),
            hashed_mtime_ns=pl.Series(mtimes),
        ).with_row_index("_i").join(errors, on="_i", how="left")
        facts = pl.concat(self.facts) if self.facts else pl.DataFrame(schema=_FACTS_PART)
        frame = frame.join(facts, on="_i", how="left").drop("_i")
        failed = pl.col("error_kind").is_not_null()
        return frame.with_columns(
            [pl.when(failed).then(None).otherwise(pl.col(c)).alias(c) for c in ("md5", "hashed_size", "hashed_mtime_ns")]
        ).cast(HASHED_SCHEMA)  # type: ignore[arg-type]


def hash_files(
    sources: Sequence[Source],
    todo: pl.DataFrame,
    *,
    workers: int,
    progress: HashProgress | None = None,
    facts: bool = False,
) -> pl.DataFrame:
    """Hash the rows of `todo` (root_id, srcfile, size); one row each back with
    md5, hashed_size, hashed_mtime_ns, or error_kind / error_message. With `facts`, the files validation
    looks inside are parsed from the same bytes (facts_kind, facts: what validation would read; one read);
    only those whose `parse` is true if `todo` has that column."""
    progress = progress or HashProgress()
    n = todo.height
    results = _Results(n)
    total = int(todo["size"].sum() or 0) if n else 0
    local = all(s.parallel_local for s in sources)
    if workers > 1 and local and (n >= PROCESS_MIN_FILES or total >= PROCESS_MIN_BYTES):
        _in_processes(sources, todo, workers, progress, results, _facts_kinds(todo, forked=True) if facts else _NO_KINDS)
    elif n:
        threads = workers if (total / n >= THREADS_MIN_MEAN_SIZE or not local) else 1
        _in_threads(sources, todo, threads, progress, results, _facts_kinds(todo, forked=False) if facts else _NO_KINDS)
    return results.frame(todo["srcfile"])


_NO_KINDS: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())


def _facts_kinds(todo: pl.DataFrame, *, forked: bool) -> tuple[frozenset[str], frozenset[str]]:
    """(kinds parsed while hashing, kinds whose bytes the worker hands back to be parsed here), of those
    among `todo`'s files: in forked workers only readers that are fork-safe run; the few others (small
    Metadata CSVs read with polars) come back whole. Their parsers are imported before the workers start."""
    from .validate.kinds import kinds_in
    from .validate.readers import FORK_SAFE_KINDS, READER_KINDS, prepare

    kinds = kinds_in(_to_parse(todo)["srcfile"]) & READER_KINDS
    prepare(kinds)
    return (kinds & FORK_SAFE_KINDS, kinds - FORK_SAFE_KINDS) if forked else (kinds, frozenset())


def _to_parse(todo: pl.DataFrame) -> pl.DataFrame:
    return todo.filter("parse") if "parse" in todo.columns else todo


def _mask(todo: pl.DataFrame, start: int, length: int) -> list[bool] | None:
    """Which files of a chunk to parse (None: all)."""
    return todo["parse"].slice(start, length).to_list() if "parse" in todo.columns else None


def _chunks(todo: pl.DataFrame, files_per_chunk: int = CHUNK_FILES) -> list[dict]:
    """Runs {root_id, start, length} of at most `files_per_chunk` files and about CHUNK_BYTES bytes, one root each."""
    chunk_id = (
        pl.col("size").cum_sum() // CHUNK_BYTES + pl.int_range(pl.len()) // files_per_chunk
        + (pl.col("root_id") != pl.col("root_id").shift(1)).fill_null(False).cum_sum()
    )
    return (
        todo.select("root_id", chunk_id.alias("chunk")).with_row_index("start")
        .group_by("chunk", maintain_order=True)
        .agg(pl.col("root_id").first(), pl.col("start").first(), pl.len().alias("length"))
        .to_dicts()
    )


def _record(results: _Results, progress: HashProgress, sizes: pl.Series, start: int, length: int, chunk: HashedChunk) -> None:
    results.put(start, chunk)
    if progress.on_chunk is not None:
        progress.on_chunk(start, chunk)
    progress.files_done += length
    progress.bytes_done += int(sizes.slice(start, length).sum() or 0)


def _in_processes(sources: Sequence[Source], todo: pl.DataFrame, workers: int, progress: HashProgress,
                  results: _Results, kinds: tuple[frozenset[str], frozenset[str]] = _NO_KINDS) -> None:
    srcfile, sizes = todo["srcfile"], todo["size"]
    chunks = iter(_chunks(todo))
    in_flight: dict = {}
    with pool(workers) as executor:
        # A bounded number of chunks in flight: paths become Python strings only shortly before they are hashed.
        while True:
            while len(in_flight) < workers * 4:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                start, length = chunk["start"], chunk["length"]
                future = executor.submit(hash_chunk, sources[chunk["root_id"]], srcfile.slice(start, length).to_list(),
                                         *kinds, _mask(todo, start, length) if kinds[0] or kinds[1] else None)
                in_flight[future] = (start, length)
            if not in_flight:
                break
            pause("hashing")
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                start, length = in_flight.pop(future)
                _record(results, progress, sizes, start, length, future.result())


def _in_threads(sources: Sequence[Source], todo: pl.DataFrame, threads: int, progress: HashProgress,
                results: _Results, kinds: tuple[frozenset[str], frozenset[str]] = _NO_KINDS) -> None:
    srcfile, sizes = todo["srcfile"], todo["size"]
    # Small chunks, so that every thread gets work even when there are few files.
    chunks = _chunks(todo, files_per_chunk=max(1, min(CHUNK_FILES, -(-todo.height // (threads * 4)))))
    counter = itertools.count()  # next() on it is atomic under the GIL
    lock = threading.Lock()
    stop = threading.Event()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                i = next(counter)
                if i >= len(chunks):
                    break
                start, length = chunks[i]["start"], chunks[i]["length"]
                hashed = hash_chunk(sources[chunks[i]["root_id"]], srcfile.slice(start, length).to_list(), *kinds,
                                    _mask(todo, start, length) if kinds[0] else None)
                with lock:
                    _record(results, progress, sizes, start, length, hashed)
        except BaseException as exc:  # never a silently missing chunk: the run fails with it
            failures.append(exc)
            stop.set()

    hashers = [threading.Thread(target=worker, name=f"chorus-hash-{k}", daemon=True) for k in range(max(1, min(threads, len(chunks))))]
    pause("hashing")
    for t in hashers:
        t.start()
    try:
        for t in hashers:
            while t.is_alive():  # a timed join keeps Ctrl-C responsive
                t.join(0.2)
    except BaseException:
        stop.set()
        raise
    if failures:
        raise failures[0]
