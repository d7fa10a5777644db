"""The Source seam: what the pipeline asks of a place that holds a site's files.

A source lists its tree as Arrow record batches (LISTING_SCHEMA), stats, opens and hashes one
file at a time, and says what it can do through capabilities rather than its type, as
rclone's backends do:

  parallel_local  listing, hashing and header reading are bound by per-file CPU work on this
                  machine: worker processes pay off (a local or HPC file system). Otherwise the
                  work waits on a network and threads overlap the waits.
  server_md5      the listing can carry an MD5 the storage already holds (`stored_md5`), so a
                  new or changed file need not be read to be hashed; such a listing also carries
                  each object's etag, which changes whenever the object is written.

Every implementation passes the shared contract suite in tests/test_source_contract.py.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

import polars as pl
import pyarrow as pa

from ..frames import LISTING_SCHEMA

READ_SIZE = 64 * 1024  # bytes per read when hashing: stays in L2; measured fastest for hashlib.md5

# Progress within a file: a large file (a 200 GB sparse file, a long waveform) took minutes in one chunk, and the
# progress line stood still all that time. A file being hashed says every METER_STEP bytes it read (`metered`),
# into a shared counter (hashing.Hasher: a multiprocessing Value its forked workers inherit, or its threads share)
# that the progress line adds to the bytes of the chunks finished; a chunk's result says how much of it was so
# said (`meter_taken`), and the Hasher takes that back out when it counts the chunk whole.
METER_STEP = 16 << 20
_meter = None  # the shared counter (a multiprocessing Value of 'q'), or None: nobody is watching


class _MeterLocal(threading.local):
    added = 0  # bytes this thread (or worker process) said since its last meter_taken


_said = _MeterLocal()


def set_meter(shared) -> None:
    global _meter
    _meter = shared


def metered(n: int) -> None:
    """`n` more bytes of the file being hashed were read."""
    shared = _meter
    if shared is None:
        return
    with shared.get_lock():
        shared.value += n
    _said.added += n


def hash_rest(readinto: Callable[[bytearray], int | None], buffer: bytearray, digest, total: int) -> int:
    """Read a file to its end into `buffer`, hashing what is read into `digest`; `total`: the bytes read before.
    Says every METER_STEP bytes (`metered`), so the progress line moves within a large file. The bytes read in all."""
    view, update = memoryview(buffer), digest.update
    step = total + METER_STEP
    while n := readinto(buffer):
        update(view[:n])
        total += n
        if total >= step:
            metered(METER_STEP)
            step += METER_STEP
    return total


def meter_taken() -> int:
    """The bytes this thread said (metered) since the last call."""
    n, _said.added = _said.added, 0
    return n


@dataclass
class HashOutcome:
    digest: bytes  # 16 bytes of MD5
    size: int
    mtime_ns: int
    facts: str | None = None  # what `parse` made of the same bytes (hash_file's parse=), if it was given one
    etag: str | None = None  # a cloud object's etag as read (the listing's is another if it was written since)

    @property
    def md5(self) -> str:
        return self.digest.hex()


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int
    etag: str | None = None  # cloud objects: the storage's version tag, as the listing gives it (no quotes)
    archived: bool = False  # Azure blobs in the Archive tier (or being rehydrated from it): their bytes cannot be read


class FileChangedWhileHashing(OSError):
    pass


@runtime_checkable
class Source(Protocol):
    """A site root: a local folder, or a container / bucket prefix."""

    description: str  # for messages and progress: a path, or a URL without secrets
    location: str  # recorded in the manifest's `roots`: a POSIX path or a URL, never a secret
    parallel_local: bool
    server_md5: bool

    def check(self) -> None:
        """Raise a ConfigError or SourceError (what, where, fix) if the root cannot be listed."""
        ...

    def list_files(self, errors: list[tuple[str, str, str]]) -> Iterator[pa.RecordBatch]:
        """Yield LISTING_SCHEMA batches; append (srcfile, kind, message) for what is skipped.
        A folder that cannot be read is reported as (folder + '/', 'unreadable_dir', ...).
        Optional capability `skips_tops`: a source that has it takes a `tops` keyword (a predicate on
        top-level folder names) and skips the folders it rejects, so a shard lists only its share (the
        scan filters the rows anyway)."""
        ...

    def stat(self, srcfile: str) -> FileStat:
        """Size and mtime of one file; raises OSError (FileNotFoundError if it is gone)."""
        ...

    def open(self, srcfile: str) -> BinaryIO:
        """One file opened for binary reading (seekable); raises OSError."""
        ...

    def hash_file(self, srcfile: str, buffer: bytearray, parse: Parse | None = None) -> HashOutcome:
        """MD5 of one file, streamed; raises OSError (FileChangedWhileHashing if it changed). With `parse`,
        the file is read through a HashingReader handed to it, so what it parses comes from the bytes
        hashed (one read); its result is the outcome's `facts` (None if it needed bytes no longer kept).
        Optional: a source without it is hashed without facts (validation then reads the file)."""
        ...


Parse = Callable[[BinaryIO], "str | None"]

KEEP_BYTES = 4 << 20  # what a HashingReader keeps to serve seeks back: a header's worth, never a whole large file
_BACK_SLACK = 64 << 10  # once past KEEP_BYTES: bytes kept behind the position for short seeks back


class NotKept(OSError):
    """A parser sought back to bytes the HashingReader no longer keeps."""


class HashingReader(io.RawIOBase):
    """A seekable binary file over a one-way read (`raw_read(n)`: up to n bytes, b"" at the end) that
    MD5s every byte once, in order, as it first reads it. A parser reads (and seeks) through it; the
    first KEEP_BYTES read are kept for seeks back, later ones only a short way back (a streaming parser
    never keeps the file). `finish()` reads the rest for the MD5. A seek back to bytes no longer kept
    raises NotKept and sets `lost`: whatever the parser made of the file then is not to be trusted."""

    def __init__(self, raw_read: Callable[[int], bytes], digest, size: int | None = None):
        self._raw_read, self.digest, self._size = raw_read, digest, size
        self._kept = bytearray()  # the bytes [self._base, self.done) of the file
        self._base = self._pos = self.done = 0
        self.eof = False
        self.lost = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence == io.SEEK_END:
            if self._size is None:
                self._fill(1 << 62)
            offset += self.done if self._size is None else self._size
        if offset < 0:
            raise ValueError("negative seek position")
        if offset < self._base:
            self.lost = True
            raise NotKept(f"seek back to byte {offset}, no longer kept")
        self._pos = offset
        return offset

    def _fill(self, end: int) -> None:
        """Read (and hash) until `end` bytes were read or the file ends."""
        while self.done < end and not self.eof:
            chunk = self._raw_read(max(READ_SIZE, min(end - self.done, 16 << 20)))
            if not chunk:
                self.eof = True
                break
            self.digest.update(chunk)
            self.done += len(chunk)
            self._kept += chunk
            # (after the chunk is kept: a seek far ahead asked to drop more than was kept before it, and the bytes
            # kept no longer started at _base: a read there gave other bytes of the file than those asked for)
            if self.done - self._base > KEEP_BYTES and self._pos - self._base > _BACK_SLACK:
                drop = min(self._pos - self._base - _BACK_SLACK, len(self._kept))
                del self._kept[:drop]
                self._base += drop

    def read(self, size: int | None = -1) -> bytes:
        if self._pos < self._base:
            self.lost = True
            raise NotKept(f"read at byte {self._pos}, no longer kept")
        end = 1 << 62 if size is None or size < 0 else self._pos + size
        self._fill(end)
        data = bytes(self._kept[self._pos - self._base: end - self._base])
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def finish(self, block: int = READ_SIZE) -> int:
        """Read (and hash) the rest of the file, keeping nothing; the bytes read in all."""
        self._kept = bytearray()
        self._base = self._pos = self.done
        step = self.done + METER_STEP
        while not self.eof:
            chunk = self._raw_read(block)
            if not chunk:
                self.eof = True
                break
            self.digest.update(chunk)
            self.done += len(chunk)
            if self.done >= step:
                metered(METER_STEP)
                step += METER_STEP
        return self.done


def parse_through(parse: Parse, reader: HashingReader) -> str | None:
    """`parse` over the reader; None if it sought back to bytes no longer kept (whatever it returned)."""
    try:
        facts = parse(reader)
    except NotKept:
        facts = None
    return None if reader.lost else facts


def listing_batch(paths: list[str], sizes: list[int], mtimes: list[int],
                  stored_md5: list[str | None] | None = None, etags: list[str | None] | None = None,
                  inos: list[int | None] | None = None, ctimes: list[int | None] | None = None) -> pa.RecordBatch:
    # Built by polars, not pa.array(list): pyarrow asks of a Python list whether pandas can take it, which
    # imports pandas (0.3-0.5 s of every run's start-up, -X importtime); polars is also 6x faster here
    # (4 ms against 27 ms for 65,536 paths).
    n = len(paths)
    if n == 0:
        return pa.RecordBatch.from_arrays([pa.nulls(0, field.type) for field in LISTING_SCHEMA], schema=LISTING_SCHEMA)
    frame = pl.DataFrame({"srcfile": paths, "size": sizes, "mtime_ns": mtimes,
                          "stored_md5": stored_md5 if stored_md5 is not None else [None] * n,
                          "etag": etags if etags is not None else [None] * n,
                          "ino": inos if inos is not None else [None] * n,
                          "ctime_ns": ctimes if ctimes is not None else [None] * n},
                         schema={"srcfile": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64, "stored_md5": pl.String,
                                 "etag": pl.String, "ino": pl.UInt64, "ctime_ns": pl.Int64})
    batch = frame.to_arrow().combine_chunks().to_batches()[0]
    assert batch.schema.equals(LISTING_SCHEMA), batch.schema
    return batch
