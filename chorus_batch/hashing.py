"""MD5 of the files that need it; earlier hashes are reused for the rest.

A file needs an MD5 when it is new, its size or mtime_ns changed, it was "racily
clean" (its mtime fell within a small window of the previous scan's start, so a
later write in the same clock tick could have gone unseen, as git reasons), or
`--rehash` is given. Such a file is read and hashed unless its source listed an MD5
the storage holds for it (`stored_md5`, sources with the server_md5 capability). `due`
says so file by file, for a block of the listing as it comes as well as for all of it;
only the re-verification sample (`reverify`) needs the whole listing.

Local files are hashed by worker processes, each looping over a chunk of files:
with many small files the per-file Python work holds the GIL, and two threads
measured slower than one. Remote sources (fsspec) use threads, which overlap the
network waits. Never one future per file: that costs more than hashing it. A Hasher
takes the files block by block while the caller goes on listing (scan.scan).

One read per file: with `facts`, the worker that hashes a file validation looks inside (its kind from
the path: validate.kinds) parses the header facts from the same bytes as they go by (sources.base.
HashingReader), so that validation finds them cached and opens no file again.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from .faults import pause
from .frames import FACTS_SCHEMA, packed_frame
from .processes import pool
from .sources import Source
from .sources.base import set_meter
from .workers import HashedChunk, hash_chunk
from .times import MAX_NS, MIN_NS

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
    "hashed_etag": pl.String,
    "error_kind": pl.String,
    "error_message": pl.String,
}
# Facts parsed while hashing are handed to the caller (a run caches them in the manifest) every this many, not
# held to the end: a 1M-file first run (small1m, 333k DICOM headers) held ~300 MB of them when its hashing ended.
FACTS_HANDED_EVERY = 65_536


@dataclass(frozen=True)
class Rules:
    """What makes a listed file due for a new MD5, and whether it is then read (plan, due)."""

    racy_cutoff_ns: int | None
    rehash: bool
    racy_until_ns: int | None = None
    cloud_md5: str = "stored-or-download"
    cloud_roots: Sequence[int] = ()
    # Recorded mtimes that are whole multiples of this were kept at this precision by another tool (an import:
    # chorus-upload kept microseconds) and are compared at it (Manifest.mtime_unit_ns); 1: nanoseconds.
    mtime_unit_ns: int = 1
    # A file whose MD5 was read this close after its mtime (verified_ns) is racily clean whatever runs came since
    racy_window_ns: int | None = None


def plan(listing: pl.DataFrame, previous: pl.DataFrame, *, racy_cutoff_ns: int | None, rehash: bool,
         racy_until_ns: int | None = None, verify_files: int = 0, verify_max_bytes: int = 0,
         cloud_md5: str = "stored-or-download", cloud_roots: Sequence[int] = ()) -> pl.DataFrame:
    """The listing joined to the previous current rows, with `needs_md5` (a new MD5 is due) and
    `needs_read` (due, and it must come from the bytes: the file is read and hashed), and `verify`.

    A cloud file (its root in `cloud_roots`) changed when its etag, size or last-modified did; its MD5
    is then the one the storage holds, if any, under the `cloud_md5` policy (frames.CLOUD_MD5_POLICIES):
    stored-or-download reads only files with none, download reads every due file, stored-only never
    reads (a file with no stored MD5 stays without one: unverifiable).

    Adds prev_file_id, prev_size, prev_mtime_ns, prev_md5, prev_modality, prev_etag (NULL for new paths).
    The same as `due` over the listing's blocks, then `reverify` over their concatenation (what a scan does
    while it lists).
    """
    rules = Rules(racy_cutoff_ns=racy_cutoff_ns, rehash=rehash, racy_until_ns=racy_until_ns, cloud_md5=cloud_md5,
                  cloud_roots=cloud_roots)
    return reverify(due(listing, previous_rows(previous), rules), verify_files, verify_max_bytes)


def previous_rows(previous: pl.DataFrame) -> pl.DataFrame:
    """The previous current rows (STATE_SCHEMA) as `due` joins them: srcfile and prev_* columns."""
    return previous.select(
        "srcfile",
        pl.col("file_id").alias("prev_file_id"),
        pl.col("size").alias("prev_size"),
        pl.col("mtime_ns").alias("prev_mtime_ns"),
        pl.col("md5").alias("prev_md5"),
        pl.col("modality").alias("prev_modality"),
        pl.col("verified_ns").alias("prev_verified_ns"),
        pl.col("etag").alias("prev_etag"),
    ).sort("srcfile")  # (in path order already, as the manifest gives them: then this only marks it, for rows_for)


def rows_for(table: pl.DataFrame, srcfile: pl.Series) -> pl.DataFrame:
    """The rows of `table` whose srcfile is one of `srcfile`, when that is much the smaller side: a join
    hashes all of its right side, so joining each block of a listing to the whole previous version would
    cost that version's size per block; is_in hashes the block's paths and only scans the table. A table known to be in
    path order (previous_rows) is first cut to the blocks' range of paths by binary search: a listing comes in about
    path order, so each block scanned the whole previous version for nothing (100k files: 31 -> 1 ms of CPU)."""
    if table.height <= 4 * srcfile.len():
        return table
    if srcfile.len() and table["srcfile"].flags["SORTED_ASC"]:
        paths = table["srcfile"]
        start = paths.search_sorted(srcfile.min(), "left")
        table = table.slice(start, paths.search_sorted(srcfile.max(), "right") - start)
        if table.height <= 4 * srcfile.len():
            return table
    return table.filter(pl.col("srcfile").is_in(srcfile.implode()))


def due(listing: pl.DataFrame, prev: pl.DataFrame, rules: Rules) -> pl.DataFrame:
    """The one decision of what must be read, file by file: `listing` (all of it, or a block of it as it is
    listed) joined to `prev` (previous_rows), with needs_md5, needs_read and `_no_read` (files the cloud
    policy forbids reading: reverify leaves them out). Each row's verdict depends on that row alone; what
    needs the whole listing (the re-verification sample) is reverify's."""
    joined = listing.join(rows_for(prev, listing["srcfile"]), on="srcfile", how="left")
    cloud = pl.col("root_id").is_in(list(rules.cloud_roots)) if rules.cloud_roots else pl.lit(False)
    needs = (
        pl.col("prev_md5").is_null()  # new, or recorded without an MD5 (unverifiable): look again
        | (pl.col("size") != pl.col("prev_size"))
        | _mtime_moved(rules.mtime_unit_ns)
        # an mtime beyond what int64 nanoseconds hold is clamped (walk: mtime_out_of_range): it cannot show a
        # write, so such a file is read every run (a same-size change between two such mtimes went unseen)
        | pl.col("mtime_ns").is_in([MAX_NS, MIN_NS])
        # a new etag: written since (no etag recorded, as before schema 7: size and mtime decide)
        | (pl.col("etag") != pl.col("prev_etag")).fill_null(False)
    )
    if rules.racy_cutoff_ns is not None:
        # Racily clean: modified around the previous scan, so a later write in the same clock tick could be
        # unseen. A file whose mtime lies beyond that (a clock in the future) is not: a write now would move
        # its mtime back, which the stat comparison sees, so it is not hashed again on every run. An object
        # with an etag is never racy: any write gives it a new etag.
        racy = pl.col("mtime_ns") >= rules.racy_cutoff_ns
        if rules.racy_window_ns is not None:
            # ... and so is one read too soon after its mtime by an earlier scan: a run in between that did not list
            # it (an append delivery, a folder it could not list) moved the last scan's start past it unread.
            racy = racy | (pl.col("mtime_ns") >= pl.col("prev_verified_ns") - rules.racy_window_ns).fill_null(False)
        racy = racy & pl.col("etag").is_null()
        if rules.racy_until_ns is not None:
            racy = racy & (pl.col("mtime_ns") <= rules.racy_until_ns)
        needs = needs | racy
    # --rehash reads every file: one nothing made due (same size, mtime and etag, its MD5 recorded) is read to check
    # the MD5 recorded, as the rolling re-verification reads its sample (`verify`): other bytes are a silent change
    # (an error, not a plain `replaced`), and one confirmed has its verified_ns written, so that the summary does
    # not call a file this run read "never read".
    rehash_verify = (~needs & pl.col("prev_md5").is_not_null()).fill_null(False) if rules.rehash else pl.lit(False)
    joined = joined.with_columns(needs_md5=pl.lit(True) if rules.rehash else needs, _rehash_verify=rehash_verify)
    rehash, cloud_md5 = rules.rehash, rules.cloud_md5
    if cloud_md5 == "stored-only":
        read = ~cloud & (pl.col("stored_md5").is_null() | rehash)
    elif cloud_md5 == "download":
        read = cloud | pl.col("stored_md5").is_null() | rehash
    else:
        read = pl.col("stored_md5").is_null() | rehash  # --rehash reads every file, whatever the storage holds
    return joined.with_columns(needs_read=pl.col("needs_md5") & read).with_columns(
        verify=pl.col("_rehash_verify") & pl.col("needs_read"), _no_read=cloud & (cloud_md5 == "stored-only")
    ).drop("_rehash_verify")


def _mtime_moved(unit: int) -> pl.Expr:
    """The file's mtime is not the recorded one. A row imported from chorus-upload holds floor(st_mtime x 10^6)
    of a float (within 1 us of the nanosecond clock, either way): compared at microseconds, with that slack."""
    moved = pl.col("mtime_ns") != pl.col("prev_mtime_ns")
    if unit <= 1:
        return moved
    coarse = (pl.col("prev_mtime_ns") % unit) == 0
    return pl.when(coarse).then((pl.col("mtime_ns") - pl.col("prev_mtime_ns")).abs() >= 2 * unit).otherwise(moved)


def reverify(planned: pl.DataFrame, files: int, max_bytes: int, *, chosen: pl.Series | None = None) -> pl.DataFrame:
    """`due`'s frame of the whole listing with `verify` and `sampled`: the rolling re-verification sample
    (_verify_slice), read too (needs_read). Only files not due are chosen, so what `due` said must be read stays so.
    `chosen`: the only paths the sample may take (a shard's share of the site's sample: site_sample)."""
    if chosen is not None:
        planned = planned.with_columns(_no_read=pl.col("_no_read") | ~pl.col("srcfile").is_in(chosen.implode()))
    return _verify_slice(planned, files, max_bytes).drop("_no_read")


def site_sample(previous: pl.DataFrame, files: int, max_bytes: int, *, no_read_roots: list[int]) -> pl.Series:
    """The paths of the whole site's re-verification sample, chosen from its previous rows (STATE_SCHEMA) as
    _verify_slice chooses among a listing's unchanged files: up to `files`, the longest unverified first, within
    `max_bytes` (none under `no_read_roots`, which the cloud policy forbids reading). Each shard of a split has the
    whole previous version, so each finds the same sample and reads the part of it in its share of the site: shards
    that each chose their own sample within --verify-max-bytes read N times the one budget between them."""
    if files <= 0 or max_bytes <= 0:
        return pl.Series("srcfile", [], pl.String)
    return (previous.lazy()
            .filter(pl.col("md5").is_not_null() & (pl.col("size") <= max_bytes) & ~pl.col("root_id").is_in(no_read_roots))
            .select("srcfile", "size", "verified_ns")
            .sort(["verified_ns", "srcfile"], nulls_last=False)
            .head(files)
            .filter(pl.col("size").cum_sum() <= max_bytes)
            .collect()["srcfile"])


def _verify_slice(joined: pl.DataFrame, files: int, max_bytes: int) -> pl.DataFrame:
    """Rolling re-verification: up to `files` unchanged files, the longest unverified first (never-verified
    ones before all), read again within `max_bytes`, so that over nights the whole site is re-read. A file
    larger than the byte cap alone is left out (it would take a night's whole budget)."""
    if files <= 0 or max_bytes <= 0:
        return joined.with_columns(sampled=pl.lit(False))
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
    # `sampled`: read for the sample alone (the others `verify` marks, --rehash's, are read as they are listed)
    return joined.join(chosen, on="srcfile", how="left").with_columns(sampled=pl.col("_verify").fill_null(False)).with_columns(
        verify=pl.col("verify") | pl.col("sampled"), needs_read=pl.col("needs_read") | pl.col("sampled")).drop("_verify")


def to_read(planned: pl.DataFrame) -> pl.DataFrame:
    """The rows of a planned frame that are read, as the hashing takes them (root_id, srcfile, size, mtime_ns,
    verify, etag, parse), in path order. `parse` (with facts): likely new content, new or of a new size; not a
    file read again only because its mtime moved or to be re-verified (its facts are most likely cached:
    validation reads it if not)."""
    verify = pl.col("verify") if "verify" in planned.columns else pl.lit(False)
    sampled = pl.col("sampled") if "sampled" in planned.columns else pl.lit(False)
    likely_new = (pl.col("prev_md5").is_null() | (pl.col("size") != pl.col("prev_size")).fill_null(True)) & ~verify
    # (ino, ctime_ns: the listing's, for the checkpoint's key, where the listing gave them)
    ident = [c for c in ("ino", "ctime_ns") if c in planned.columns]
    return planned.filter(pl.col("needs_read")).select(
        "root_id", "srcfile", "size", "mtime_ns", verify.alias("verify"), "etag", *ident, parse=likely_new,
        # the others but re-verified ones (a night's sample, nearly always unchanged: no parser imported for them)
        # are parsed only if their MD5 is not the recorded one (rewritten at the same size): a 5%-mutated run of
        # 1M 64-byte files read ~8,000 headers twice
        parse_unless=pl.when(~likely_new & ~sampled).then(pl.col("prev_md5"))).sort("srcfile")


@dataclass
class HashProgress:
    """Counters the hashing bumps; the progress reporter reads them."""

    files_done: int = 0
    bytes_done: int = 0  # of the chunks finished
    # Bytes read of files not finished yet (sources.base.metered; a multiprocessing Value): set by the Hasher.
    reading: Any = None
    # Called with (offset in todo, HashedChunk) as each chunk's results arrive (checkpoint.Writer).
    on_chunk: Callable[[int, HashedChunk], None] | None = None
    # Called with each block of rows a Hasher is given, in order, before any of their results (their offsets
    # follow on from the previous block's): checkpoint.Writer.extend.
    on_rows: Callable[[pl.DataFrame], None] | None = None

    def bytes_read(self) -> int:
        """The bytes hashed so far, with those of files still being read (a large file moves the progress line)."""
        if self.reading is None:
            return self.bytes_done
        with self.reading.get_lock():
            return self.bytes_done + self.reading.value


class _Results:
    """Packed results, filled chunk by chunk; room for a block's rows is made as it is added (reserve)."""

    def __init__(self) -> None:
        self.digests = bytearray()
        self.sizes = array("q")
        self.mtimes = array("q")
        self.errors: list[tuple[int, str, str]] = []
        self.etags: list[tuple[int, str]] = []  # (row, etag as read): cloud objects only
        self.facts: list[pl.DataFrame] = []  # FACTS_SCHEMA per chunk, as Arrow strings (no Python object per file)
        self.n_facts = 0  # rows in `facts`

    def reserve(self, n: int) -> None:
        self.digests += bytes(16 * n)
        self.sizes.frombytes(bytes(8 * n))
        self.mtimes.frombytes(bytes(8 * n))

    def put(self, start: int, chunk: HashedChunk) -> None:
        n = len(chunk.sizes)
        self.digests[16 * start: 16 * (start + n)] = chunk.digests
        self.sizes[start: start + n] = chunk.sizes
        self.mtimes[start: start + n] = chunk.mtimes
        self.errors.extend((start + k, kind, message) for k, kind, message in chunk.errors)
        self.etags.extend((start + k, etag) for k, etag in chunk.etags)
        failed = {k for k, _, _ in chunk.errors}  # (no content, so no facts of one)

        def md5(k: int) -> str:
            return chunk.digests[16 * k: 16 * (k + 1)].hex()

        rows = [(kind, md5(k), facts) for k, kind, facts in chunk.facts if k not in failed]
        if chunk.contents:  # small files a worker could not parse: parsed here, from the bytes it read
            from .validate.readers import parser

            rows += [(kind, md5(k), parser(kind)(io.BytesIO(data))) for k, kind, data in chunk.contents
                     if k not in failed]
        if rows:
            self.facts.append(pl.DataFrame(rows, schema=FACTS_SCHEMA, orient="row"))
            self.n_facts += len(rows)

    def frame(self, srcfile: pl.Series) -> pl.DataFrame:
        n = srcfile.len()
        errors = pl.DataFrame(self.errors, schema={"_i": pl.UInt32, "error_kind": pl.String, "error_message": pl.String},
                              orient="row")
        etags = pl.DataFrame(self.etags, schema={"_i": pl.UInt32, "hashed_etag": pl.String}, orient="row")
        packed = packed_frame(n, {"_md5": (pa.binary(16), self.digests), "hashed_size": (pa.int64(), self.sizes),
                                  "hashed_mtime_ns": (pa.int64(), self.mtimes)})
        frame = pl.DataFrame({"srcfile": srcfile}).hstack(packed).select(
            "srcfile", md5=pl.col("_md5").bin.encode("hex"), hashed_size="hashed_size", hashed_mtime_ns="hashed_mtime_ns",
        ).with_row_index("_i").join(etags, on="_i", how="left").join(errors, on="_i", how="left").drop("_i")
        failed = pl.col("error_kind").is_not_null()
        return frame.with_columns(
            [pl.when(failed).then(None).otherwise(pl.col(c)).alias(c)
             for c in ("md5", "hashed_size", "hashed_mtime_ns", "hashed_etag")]
        ).cast(HASHED_SCHEMA)  # type: ignore[arg-type]

    def take_facts(self) -> pl.DataFrame:
        """The facts parsed since the last take (FACTS_SCHEMA, each with the MD5 of its file), in key order; kept
        apart from frame(): a join of them onto every row copied both (1M files: ~250 MB at the scan's peak)."""
        facts = pl.concat(self.facts) if self.facts else pl.DataFrame(schema=FACTS_SCHEMA)
        self.facts, self.n_facts = [], 0
        return facts.sort("kind", "md5")


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
    looks inside are parsed from the same bytes (Hasher.parsed: what validation would read; one read);
    only those whose `parse` is true if `todo` has that column."""
    with Hasher(sources, workers=workers, progress=progress, facts=facts) as hasher:
        hasher.add(todo)
        return hasher.finish()


_NO_KINDS: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())


@dataclass
class _Task:
    """A chunk of consecutive rows of one block, all of one root."""

    rows: pl.DataFrame  # the block (Hasher.add)
    start: int  # its first row in the block
    length: int
    offset: int  # its first row among all the rows the Hasher was given
    root_id: int
    size: int  # bytes
    kinds: tuple[frozenset[str], frozenset[str]]  # (parsed by the worker, handed back whole): hash_chunk

    def arguments(self, sources: Sequence[Source]) -> tuple:
        """hash_chunk's arguments; the paths become Python strings only now, shortly before they are hashed."""
        parsing = bool(self.kinds[0] or self.kinds[1])
        mask = _mask(self.rows, self.start, self.length) if parsing else None
        unless = _unless(self.rows, self.start, self.length) if parsing else None
        return (sources[self.root_id], self.rows["srcfile"].slice(self.start, self.length).to_list(), *self.kinds, mask,
                unless)


class _Queue:
    """The chunks waiting for a worker, in order; closed when no more will come."""

    AGAIN = object()  # nothing yet: ask again

    def __init__(self) -> None:
        self._tasks: deque[_Task] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def put(self, tasks: list[_Task]) -> None:
        with self._ready:
            self._tasks.extend(tasks)
            self._ready.notify_all()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def get(self, timeout: float) -> "_Task | None | object":
        """The next chunk; None once closed and empty; AGAIN if none came within `timeout` seconds."""
        with self._ready:
            if not self._tasks and not self._closed and timeout > 0:
                self._ready.wait(timeout)
            if self._tasks:
                return self._tasks.popleft()
            return None if self._closed else self.AGAIN


class Hasher:
    """Hashes rows given to it block by block (`add`) while the caller goes on (a scan: listing), and
    returns every result at the end (`finish`), in the order the rows were given.

    How it hashes is decided as hash_files always did, on all the rows it is given: local files (every
    source parallel_local) with workers > 1 in worker processes once there are PROCESS_MIN_FILES files or
    PROCESS_MIN_BYTES bytes, else in threads (`workers` of them for remote sources or files of
    THREADS_MIN_MEAN_SIZE on average, else one). Rows wait only while that is undecided: the processes start
    as soon as the rows given reach either threshold, during the listing. A thread of the caller's feeds
    the processes (at most workers * 4 chunks in flight: paths become Python strings only shortly before
    they are hashed), so that they keep working while the caller lists. Use it as a context manager: leaving
    it by an exception stops the work at once (workers.pool)."""

    def __init__(self, sources: Sequence[Source], *, workers: int, progress: HashProgress | None = None,
                 facts: bool = False, on_facts: Callable[[pl.DataFrame], None] | None = None):
        self.sources = list(sources)
        self.workers = workers
        self.progress = progress or HashProgress()
        self.facts = facts
        self.on_facts = on_facts  # given the facts parsed, FACTS_HANDED_EVERY at a time, in the caller's thread
        self.facts_seconds = 0.0  # in on_facts
        self._facts_ready = threading.Event()  # FACTS_HANDED_EVERY of them parsed, or a hashing thread ended
        local = all(s.parallel_local for s in self.sources)
        # (processes, or threads; None: undecided until enough rows came)
        self.mode: str | None = None if (workers > 1 and local) else "threads"
        self.threads = max(1, workers) if not local else 1
        self.rows = 0  # rows given
        self.bytes = 0
        self.seconds = 0.0  # from the start of the hashing to its end
        self._blocks: list[pl.DataFrame] = []
        self._pending: list[tuple[int, pl.DataFrame]] = []  # (offset, rows) given while undecided
        self._pending_kinds: dict[int, frozenset[str]] = {}  # their kinds, found once (_start), by offset
        self._results = _Results()
        self._lock = threading.Lock()
        self._queue = _Queue()
        self._stop = threading.Event()
        self._failures: list[BaseException] = []
        self._stack = contextlib.ExitStack()
        self._threads: list[threading.Thread] = []
        self._started: float | None = None
        self._reading = _shared_counter()
        self.progress.reading = self._reading
        self.parsed: pl.DataFrame | None = None  # with `facts` and no on_facts, after finish(): the facts parsed

    def __enter__(self) -> "Hasher":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._stack.close()
            return False
        self._stop.set()  # threads finish the chunk in hand; queued chunks are dropped
        self._queue.close()
        self._stack.__exit__(exc_type, exc, tb)  # worker processes killed at once (workers.pool)
        return False

    def add(self, rows: pl.DataFrame) -> None:
        """Hash these rows too (root_id, srcfile, size, and optionally parse): as soon as the way of hashing
        is decided, at once if it is."""
        self._raise_failure()
        if rows.height == 0:
            return
        offset = self.rows
        with self._lock:
            self._results.reserve(rows.height)
        self.rows += rows.height
        self.bytes += int(rows["size"].sum() or 0)
        self._blocks.append(rows)
        if self.progress.on_rows is not None:
            self.progress.on_rows(rows)
        self._pending.append((offset, rows))
        if self.mode is None and (self.rows >= PROCESS_MIN_FILES or self.bytes >= PROCESS_MIN_BYTES):
            self.mode = "processes"
        if self.mode is not None:
            self._submit_pending()
        self._hand_facts(FACTS_HANDED_EVERY)

    def finish(self) -> pl.DataFrame:
        """Wait for every row given; their results (HASHED_SCHEMA) in the order given."""
        if self.mode is None:  # never reached the processes' thresholds: threads, as many as the mean size asks
            self.mode = "threads"
            self.threads = self.workers if self.rows and self.bytes / self.rows >= THREADS_MIN_MEAN_SIZE else 1
        if self._pending:
            self._submit_pending()
        self._queue.close()
        for t in self._threads:
            while t.is_alive():  # a timed wait keeps Ctrl-C responsive
                if self._facts_ready.wait(0.2):
                    self._facts_ready.clear()
                    self._hand_facts(FACTS_HANDED_EVERY)
        self._raise_failure()
        self._stack.close()  # the worker processes, if any: they exit
        self._hand_facts(1)
        if self._started is not None:
            self.seconds = time.perf_counter() - self._started
        srcfile = (pl.concat([rows["srcfile"] for rows in self._blocks]) if self._blocks
                   else pl.Series("srcfile", [], pl.String))
        # Let go of the rows given and the packed results once their frames are built: held until the scan
        # returned, they were ~300 MB of a 1M-file first run's peak
        results, self._results, self._blocks = self._results, _Results(), []
        self.parsed = results.take_facts() if self.facts and self.on_facts is None else None
        return results.frame(srcfile)

    def _hand_facts(self, at_least: int) -> None:
        """Give on_facts the facts parsed so far, if there are `at_least` of them (from the caller's thread, as it
        lists or waits: its writes never race the hashing threads')."""
        if self.on_facts is None:
            return
        with self._lock:
            if self._results.n_facts < at_least:
                return
            facts = self._results.take_facts()
        started = time.perf_counter()
        self.on_facts(facts)
        self.facts_seconds += time.perf_counter() - started

    # ------------------------------------------------------------------ inside

    def _submit_pending(self) -> None:
        if self._started is None:
            self._start()
        pending, self._pending = self._pending, []
        for offset, rows in pending:
            self._queue.put(self._tasks(offset, rows))

    def _start(self) -> None:
        self._started = time.perf_counter()
        # Before the workers fork: they inherit the shared counter of the bytes of files being read.
        set_meter(self._reading)
        self._stack.callback(set_meter, None)
        if self.mode == "processes":
            if self.facts:  # imported before the fork: the workers share them (later kinds they import themselves)
                from .validate.readers import prepare

                # (kept for _tasks: classifying a batch's paths costs about as much for 500 paths as for 10,000,
                # polars' planning: 13 ms each on a loaded machine, measured 2026-12-05)
                self._pending_kinds = {offset: self._kinds_in(rows) for offset, rows in self._pending}
                prepare(frozenset().union(*self._pending_kinds.values()))
            # (given to each worker too: spawned ones, on Windows, do not inherit it, and the progress line stood
            # still while a large file was read)
            executor = self._stack.enter_context(pool(self.workers, (set_meter, self._reading)))
            executor.submit(int)  # forked now (all of them: fork-context pools start every worker at once)
            feeders = [threading.Thread(target=self._feed, args=(executor,), name="chorus-hash-feed", daemon=True)]
        else:
            feeders = [threading.Thread(target=self._hash_in_thread, name=f"chorus-hash-{k}", daemon=True)
                       for k in range(self.threads)]
        self._threads = feeders
        pause("hashing")
        for t in feeders:
            t.start()

    def _tasks(self, offset: int, rows: pl.DataFrame) -> list[_Task]:
        kinds = _NO_KINDS
        found = self._pending_kinds.pop(offset, None)
        if found is None:
            found = self._kinds_in(rows) if self.facts else frozenset()
        if found:  # (none: the readers are not even imported, as on a night that only re-verifies)
            if self.mode == "processes":
                from .validate.readers import FORK_SAFE_KINDS

                kinds = (found & FORK_SAFE_KINDS, found - FORK_SAFE_KINDS)
            else:
                from .validate.readers import prepare

                prepare(found)  # before a thread parses with them (catch_warnings is not thread-safe)
                kinds = (found, frozenset())
        # Threads: small chunks, so that every thread gets work even when there are few files.
        per_chunk = (CHUNK_FILES if self.mode == "processes"
                     else max(1, min(CHUNK_FILES, -(-rows.height // (self.threads * 4)))))
        return [_Task(rows, c["start"], c["length"], offset + c["start"], c["root_id"], c["bytes"], kinds)
                for c in _chunks(rows, per_chunk)]

    @staticmethod
    def _kinds_in(rows: pl.DataFrame) -> frozenset[str]:
        """The kinds validation looks inside among the rows to parse (their parsers: validate.readers)."""
        to_parse = _to_parse(rows)
        if not to_parse.height:
            return frozenset()
        from .validate.kinds import kinds_in
        from .validate.readers import READER_KINDS

        return kinds_in(to_parse["srcfile"]) & READER_KINDS

    def _record(self, task: _Task, chunk: HashedChunk) -> None:
        with self._lock:
            self._results.put(task.offset, chunk)
            if self.on_facts is not None and self._results.n_facts >= FACTS_HANDED_EVERY:
                self._facts_ready.set()
            if self.progress.on_chunk is not None:
                self.progress.on_chunk(task.offset, chunk)
            self.progress.files_done += task.length
            if self._reading is None:
                self.progress.bytes_done += task.size
                return
            with self._reading.get_lock():  # its bytes said while read now counted whole: never twice on the line
                self._reading.value -= chunk.metered
                self.progress.bytes_done += task.size

    def _fail(self, exc: BaseException) -> None:
        self._failures.append(exc)  # never a silently missing chunk: the run fails with it
        self._stop.set()

    def _raise_failure(self) -> None:
        if self._failures:
            raise self._failures[0]

    def _hash_in_thread(self) -> None:
        try:
            while not self._stop.is_set():
                task = self._queue.get(0.2)
                if task is None:
                    return
                if isinstance(task, _Task):
                    self._record(task, hash_chunk(*task.arguments(self.sources)))
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._facts_ready.set()  # finish() waits on it: a thread ended

    def _feed(self, executor) -> None:
        """Keep the worker processes busy: a bounded number of chunks in flight, refilled as they finish."""
        in_flight: dict = {}
        more = True
        try:
            while not self._stop.is_set():
                while more and len(in_flight) < self.workers * 4:
                    task = self._queue.get(0 if in_flight else 0.2)
                    if task is None:
                        more = False
                    elif isinstance(task, _Task):
                        in_flight[executor.submit(hash_chunk, *task.arguments(self.sources))] = task
                        continue
                    break
                if not in_flight:
                    if not more:
                        return
                    continue
                done, _ = wait(in_flight, timeout=0.05, return_when=FIRST_COMPLETED)
                for future in done:
                    self._record(in_flight.pop(future), future.result())
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._facts_ready.set()  # finish() waits on it: a thread ended


def _shared_counter():
    """An int64 in shared memory with its lock (the workers are given it, of the pool's own start method; threads
    share it); None where the system has no shared memory or semaphores for it (no /dev/shm): progress then moves
    chunk by chunk only."""
    from . import processes

    try:
        return processes._pool_context().Value("q", 0)
    except (OSError, ImportError):
        return None


def _to_parse(todo: pl.DataFrame) -> pl.DataFrame:
    """The rows that may be parsed: likely new, or parsed if their content turns out not to be the recorded one."""
    if "parse" not in todo.columns:
        return todo
    return todo.filter(pl.col("parse") | pl.col("parse_unless").is_not_null())  # (to_read gives both)


def _unless(todo: pl.DataFrame, start: int, length: int) -> list[bytes | None] | None:
    """The recorded MD5 (16 bytes) of each file of a chunk to parse only if its content is not that one."""
    if "parse_unless" not in todo.columns:
        return None
    return todo["parse_unless"].slice(start, length).str.decode("hex", strict=False).to_list()


def _mask(todo: pl.DataFrame, start: int, length: int) -> list[bool] | None:
    """Which files of a chunk to parse (None: all)."""
    return todo["parse"].slice(start, length).to_list() if "parse" in todo.columns else None


def _chunks(todo: pl.DataFrame, files_per_chunk: int = CHUNK_FILES) -> list[dict]:
    """Runs {root_id, start, length, bytes} of at most `files_per_chunk` files and about CHUNK_BYTES bytes, one
    root each."""
    chunk_id = (
        pl.col("size").cum_sum() // CHUNK_BYTES + pl.int_range(pl.len()) // files_per_chunk
        + (pl.col("root_id") != pl.col("root_id").shift(1)).fill_null(False).cum_sum()
    )
    return (
        todo.select("root_id", "size", chunk_id.alias("chunk")).with_row_index("start")
        .group_by("chunk", maintain_order=True)
        .agg(pl.col("root_id").first(), pl.col("start").first(), pl.len().alias("length"),
             pl.col("size").sum().alias("bytes"))
        .to_dicts()
    )
