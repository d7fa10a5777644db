"""Checkpointed hashes: a killed run resumes instead of reading the whole site again.

While a run hashes, its results (path, size, mtime_ns, etag, MD5 of each file read, and the header facts the
worker parsed from the same bytes) are flushed every
few seconds of work (CHECKPOINT_S) to `<manifest>.checkpoint/`, a private (0700) folder beside the
manifest. Each flush is one Arrow IPC segment written owner-only through fsutil.write_private (a
temporary file, fsynced, renamed): a run killed mid-write leaves a complete segment or none, never a
torn one (a leftover temporary file is ignored). A scan stopped by a signal or a failure flushes what is
pending before the run exits (scan._checkpointed_when_stopped): only SIGKILL loses the last interval's hashes.
Segments are merged in tiers of FANOUT (8 small ones into one larger one), so a run of days leaves tens of
files, not tens of thousands, and each hash is rewritten only a few times.

`meta.json` ties the folder to the manifest it was written for: its manifest_id and state_generation
(meta table). The next run (any run, not only the first) loads the folder before it plans what to hash;
a checkpoint of another manifest, or of an older state (a version was committed since), is removed
unread. A checkpointed MD5 is used for a file the run would otherwise read only when the file is listed
with the same size, mtime_ns (and etag, for cloud objects) as when it was hashed, and when its mtime lies
before the racy window of the checkpointing run's scan start: a write in the same clock tick as the read
could have gone unseen (as hashing.plan reasons for the previous version's rows). The facts of those trusted
rows go to the next run's facts (by content): its validation reads no header the killed run parsed. The run removes the
folder after its commit (or a run that found nothing to commit). Dry runs read a checkpoint but never
write or remove one; shards and merges neither read nor write it, but a merge's commit removes it too (discard).
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa

from .frames import packed_frame
from .fsutil import other_owner, restrict, write_private
from .progress import log
from .errors import in_one_line
from .units import shown_name

# 2: with the header facts parsed from the bytes hashed; 3: with when they were read (read_ns), and the inode and
# change time the listing gave (ino, ctime_ns). A checkpoint of another format is removed unread.
FORMAT = 3
CHECKPOINT_S = 5.0  # seconds of hashing between flushes (CHORUS_BATCH_CHECKPOINT_S overrides it)
FANOUT = 8  # this many segments of one tier are merged into one of the next
# ... while together they are at most this large (lz4 on disk): a merge holds its segments in memory, and a
# top-tier merge of a long run's small files would hold most of the site's hashes and facts at once (a 1M-file
# first run's peak rose ~100 MB with the facts checkpointed). 32 MiB holds about 300k files' hashes and facts.
COMPACT_MAX_BYTES = 32 << 20

SEGMENT_SCHEMA = {"srcfile": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64, "etag": pl.String,
                  "md5": pl.Binary, "trust_before_ns": pl.Int64, "kind": pl.String, "facts": pl.String,
                  "read_ns": pl.Int64, "ino": pl.UInt64, "ctime_ns": pl.Int64}
# A checkpointed MD5 is reused for a file listed with all of these as when it was hashed: a file replaced by one of
# the same size with its mtime set back (`touch -r old new`, a copy keeping timestamps) has another inode or ctime
_KEY = ["srcfile", "size", "mtime_ns", "etag", "ino", "ctime_ns"]
_IDENT = {"etag": pl.String, "ino": pl.UInt64, "ctime_ns": pl.Int64}  # (of the listing, beside srcfile)
_CHUNK_FACTS = {"_k": pl.UInt32, "kind": pl.String, "facts": pl.String}


def _why_stale(found: dict, identity: dict[str, str]) -> str:
    """Why a checkpoint's meta.json does not fit this manifest state, in words that say whether anything is lost
    (a run killed after its commit left one with its hashes already in the manifest: nothing is)."""
    if str(found.get("format")) != identity["format"]:
        return "an older release wrote it, in a form this one does not read; the files it holds are hashed again"
    if str(found.get("manifest_id")) != identity["manifest_id"]:
        return ("it was written for another manifest (one this file replaced, or a copy); the files it holds are hashed "
                "again")
    return ("a run updated the manifest since it was written (one stopped after its commit, before removing it): the "
            "hashes it holds were taken into the manifest then; nothing to do")


def folder_of(db: str | os.PathLike[str]) -> Path:
    return Path(f"{db}.checkpoint")


def interval_s() -> float:
    try:
        return float(os.environ.get("CHORUS_BATCH_CHECKPOINT_S", CHECKPOINT_S))
    except ValueError:
        return CHECKPOINT_S


class Checkpoint:
    """The checkpoint folder of one manifest state; `writable` False for a dry run (read only)."""

    def __init__(self, folder: Path, identity: dict[str, str], *, writable: bool):
        self.folder = folder
        self.identity = identity
        self.writable = writable
        self.broken = False  # a write failed: the run goes on without checkpoints
        self.by = "an interrupted run"  # whose hashes these are, as the run's lines say

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, db: str | os.PathLike[str], manifest_id: str | None, generation: str | None, *,
             writable: bool) -> "Checkpoint | None":
        """The checkpoint of this manifest state; a stale one (another manifest, an older state, an unknown
        format) is removed (when `writable`), else ignored (None). None without a manifest identity."""
        if manifest_id is None or generation is None:
            return None
        identity = {"format": str(FORMAT), "manifest_id": str(manifest_id), "state_generation": str(generation)}
        folder = folder_of(db)
        if writable:
            _adopt_renamed(folder, str(manifest_id))
        owner = other_owner(folder)
        if owner is not None:
            # Whoever owns it could hand this run any MD5 for any file: never trusted, never removed (not ours)
            log.warning(f"ignoring the hash checkpoint {folder}: it belongs to another user, {owner}, so the hashes "
                        "it holds are not trusted; this run keeps no checkpoint (a kill means hashing again). "
                        "Remove it, or ask that user to, so that the next runs checkpoint again")
            return None
        found = _meta(folder)
        if found is not None and found != identity or found is None and folder.exists():
            if found is not None:
                log.info(f"removing the hash checkpoint {folder}: " + _why_stale(found, identity))
            elif folder.is_dir():  # (a run killed as it made the folder, or a damaged or removed meta.json)
                log.info(f"ignoring the hash checkpoint {folder}: its meta.json, which says which manifest it is "
                         "of, is missing or cannot be read; the files it holds are hashed again")
            else:
                log.info(f"ignoring {folder}: it should be the manifest's hash checkpoint folder but is not a folder")
            if not writable:
                return None  # a dry run neither reads nor removes it
            remove(folder)
        elif found is not None and writable:
            # kept and written into: owner-only again, as the manifest's own files (a copy or a restore under
            # umask 022 left it 0755 / 0644: person ids and MD5s readable by all)
            restrict(folder)
            for path in cls(folder, identity, writable=False)._segments() + [folder / "meta.json"]:
                restrict(path)
        checkpoint = cls(folder, identity, writable=writable)
        if not writable:
            # A dry run (`status`) takes no lock: the checkpoint it reads may be a run's still going on (hashing, or in
            # its commit), which "an interrupted run" sent a reviewer looking for a killed one
            from .store.lock import running_run

            live = running_run(Path(db))
            if live is not None:
                checkpoint.by = f"the run going on now ({live})"
        return checkpoint

    # ------------------------------------------------------------------ reading

    def known(self) -> pl.DataFrame:
        """The checkpointed hashes that may be trusted: srcfile, size, mtime_ns, etag, md5 (hex), the header
        facts parsed from the same bytes (kind, facts: NULL where none were) and when the bytes were read (read_ns:
        the reading run's scan start, the latest of two), one row per (srcfile, size, mtime_ns, etag); a key with
        two different MD5s is dropped (hashed again)."""
        empty = pl.DataFrame(schema={"srcfile": pl.String, "size": pl.Int64, "mtime_ns": pl.Int64, "etag": pl.String,
                                     "ino": pl.UInt64, "ctime_ns": pl.Int64, "md5": pl.String, "kind": pl.String, "facts": pl.String, "read_ns": pl.Int64})
        parts = []
        for path in self._segments():
            try:
                parts.append(_read(path).cast(SEGMENT_SCHEMA))  # type: ignore[arg-type]
            except FileNotFoundError:  # merged away meanwhile (a dry run reading while a run writes)
                continue
            except _DAMAGED as exc:
                # damaged: it is only a cache, these files are hashed again
                log.info(f"ignoring a damaged hash checkpoint segment {path}: {exc}")
        if not parts:
            return empty
        rows = pl.concat(parts).filter(
            pl.col("etag").is_not_null() | (pl.col("mtime_ns") < pl.col("trust_before_ns")))  # not racily clean
        return (rows.group_by(*_KEY)
                .agg(pl.col("md5").first(), pl.col("kind").drop_nulls().first(), pl.col("facts").drop_nulls().first(),
                     pl.col("read_ns").max(), _n=pl.col("md5").n_unique())
                .filter(pl.col("_n") == 1)
                .select(*_KEY, pl.col("md5").bin.encode("hex"), "kind", "facts",
                        "read_ns"))

    def _segments(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.name.endswith(".arrow") and not p.name.startswith("."))
        except OSError:
            return []

    # ------------------------------------------------------------------ writing

    def writer(self, todo: pl.DataFrame | None, scan_started_ns: int, racy_window_s: float) -> "Writer | None":
        """A hashing sink (hashing.HashProgress.on_chunk) for the rows of `todo` (srcfile, size, etag), and of
        the blocks of rows given to its `extend` after them (hashing.HashProgress.on_rows)."""
        if not self.writable or self.broken:
            return None
        return Writer(self, todo, trust_before_ns=scan_started_ns - int(racy_window_s * 1e9), read_ns=scan_started_ns)

    def _prepare(self) -> None:
        if (self.folder / "meta.json").exists():
            return
        self.folder.mkdir(mode=0o700, exist_ok=True)
        restrict(self.folder)
        write_private(self.folder / "meta.json", json.dumps(self.identity).encode("utf-8"))

    def _write_segment(self, frame: pl.DataFrame, tier: int) -> Path:
        name = f"t{tier}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.arrow"
        return write_private(self.folder / name, lambda tmp: frame.write_ipc(tmp, compression="lz4"))

    def _compact(self) -> None:
        """Merge FANOUT segments of a tier into one of the next, tier by tier, unless they exceed COMPACT_MAX_BYTES
        together (that tier then keeps its segments). A kill between the merged segment's rename and the unlinks
        leaves rows twice: harmless, `known` deduplicates."""
        tier = 0
        while True:
            same = [p for p in self._segments() if p.name.startswith(f"t{tier}-")]
            if len(same) < FANOUT or _size(same) > COMPACT_MAX_BYTES:
                if not any(p.name.startswith(f"t{tier + 1}-") for p in self._segments()):
                    return
                tier += 1
                continue
            # A segment damaged on disk (an I/O error, a power cut the fsync did not survive) is left out and
            # removed, as `known` ignores it: read here too, it failed the merge, and with it every later write of
            # this checkpoint (of each resumed run, as the segment stayed)
            parts = []
            for p in same:
                try:
                    parts.append(_read(p))
                except FileNotFoundError:
                    continue
                except _DAMAGED as exc:
                    log.info(f"removing a damaged hash checkpoint segment {p}: {exc}")
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            if parts:
                self._write_segment(pl.concat(parts), tier + 1)
            for p in same:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            tier += 1

    def remove(self) -> None:
        if self.writable:
            remove(self.folder)


def _adopt_renamed(folder: Path, manifest_id: str) -> None:
    """A manifest renamed (or moved within its folder) after a killed run left `<old name>.checkpoint/` beside it,
    never read nor removed again (person ids and MD5s kept for good). Such a folder of this manifest (its meta.json
    names this manifest_id) whose own manifest file is gone becomes this manifest's checkpoint (open then checks its
    state as for any other); a second one is removed. One whose manifest is there (a copy) is that one's: left."""
    try:
        siblings = [p for p in folder.parent.iterdir() if p.name.endswith(".checkpoint") and p != folder]
    except OSError:
        return
    for old in siblings:
        manifest = Path(str(old)[: -len(".checkpoint")])
        if old.is_symlink() or not old.is_dir() or manifest.exists() or Path(f"{manifest}-wal").exists() \
                or other_owner(old) is not None:
            continue
        if (_meta(old) or {}).get("manifest_id") != manifest_id:
            continue
        if folder.exists() or folder.is_symlink():
            log.info(f"removing {old}: the hash checkpoint of this manifest under its former name {manifest.name}")
            remove(old)
            continue
        try:
            old.rename(folder)
            log.info(f"the hash checkpoint {old}, of this manifest under its former name {manifest.name}, is now "
                     f"{folder}")
        except OSError:
            remove(old)


def _meta(folder: Path) -> dict | None:
    """A checkpoint folder's meta.json; None when it is missing or damaged (not JSON, or JSON but not an object:
    anything but a dict would fail where its fields are read)."""
    try:
        found = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _size(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


# What reading a damaged segment raises (truncated, garbage, unreadable: EIO)
_DAMAGED = (OSError, ValueError, pl.exceptions.PolarsError, pa.ArrowException)


def _read(path: Path) -> pl.DataFrame:
    """A segment read whole (never memory-mapped: a merge removes it right after)."""
    return pl.read_ipc(io.BytesIO(path.read_bytes()))


def resumable(db: str | os.PathLike[str], manifest_id: str | None, generation: str | None) -> Path | None:
    """The checkpoint folder beside `db` when it holds hashes the next run of this manifest state reuses (what a
    run stopped before its commit says), else None."""
    folder = folder_of(db)
    identity = {"format": str(FORMAT), "manifest_id": str(manifest_id), "state_generation": str(generation)}
    if manifest_id is None or _meta(folder) != identity or other_owner(folder) is not None:
        return None
    return folder if Checkpoint(folder, identity, writable=False)._segments() else None


def discard(db: str | os.PathLike[str], why: str) -> None:
    """Remove the checkpoint beside the manifest `db` for a commit that did not hash through it (a merge of
    shards, which neither read nor write it): its hashes are in the manifest now, or stale. One of another user
    is left alone (open names it)."""
    folder = folder_of(db)
    if not (folder.exists() or folder.is_symlink()) or other_owner(folder) is not None:
        return
    log.info(f"removing the hash checkpoint {folder}, which an interrupted run left: {why}")
    remove(folder)


def remove(folder: Path) -> None:
    """Remove a checkpoint folder (best effort: a leftover is ignored or removed by the next run)."""
    if folder.is_symlink() or folder.exists() and not folder.is_dir():  # (rmtree leaves a file: no checkpoint again)
        with contextlib.suppress(OSError):
            folder.unlink()
        return
    shutil.rmtree(folder, ignore_errors=True)


class Writer:
    """Collects hashed chunks (hashing.HashProgress.on_chunk) and flushes them as a segment every
    interval_s() seconds, and at `close`. A failed write is logged once and checkpointing stops: the run
    itself never fails for its checkpoint."""

    def __init__(self, checkpoint: Checkpoint, todo: pl.DataFrame | None, *, trust_before_ns: int,
                 read_ns: int | None = None):
        self.checkpoint = checkpoint
        self.starts: list[int] = []  # the first offset of each block of rows
        self.blocks: list[pl.DataFrame] = []  # srcfile, etag, ino, ctime_ns of each block
        self.rows = 0
        self.trust_before_ns = trust_before_ns
        self.read_ns = read_ns  # the scan's start: when (at the earliest) the files it hashes are read
        if todo is not None:
            self.extend(todo)
        self.pending: list[tuple[int, object]] = []
        # Chunks arrive on the hashing threads; a stopped run flushes on the main thread while one may still arrive
        self._lock = threading.Lock()
        self.interval = interval_s()
        self.last = time.monotonic()
        self.flushes = 0

    def extend(self, todo: pl.DataFrame) -> None:
        """More rows (srcfile, and etag, ino, ctime_ns if known), at the offsets that follow the rows given before."""
        self.starts.append(self.rows)
        self.blocks.append(todo.select("srcfile", *[pl.col(c) if c in todo.columns else pl.lit(None, t).alias(c)
                                                    for c, t in _IDENT.items()]))
        self.rows += todo.height

    def _rows(self, start: int, n: int) -> pl.DataFrame:
        """srcfile, etag, ino and ctime_ns of the rows [start, start + n)."""
        parts = []
        i = bisect.bisect_right(self.starts, start) - 1
        while n > 0:
            block = self.blocks[i]
            at = start - self.starts[i]
            take = min(n, block.height - at)
            parts.append(block.slice(at, take))
            start, n, i = start + take, n - take, i + 1
        return parts[0] if len(parts) == 1 else pl.concat(parts)

    def __call__(self, start: int, chunk) -> None:
        """One hashed chunk (workers.HashedChunk) of the todo rows from `start`."""
        from .faults import pause

        with self._lock:
            self.pending.append((start, chunk))
        if time.monotonic() - self.last >= self.interval:
            self.flush()
        pause("hashed-chunk")  # (tests: a signal while hashed chunks wait for their flush)

    def flush(self, *, stopping: bool = False) -> None:
        from .faults import pause

        with self._lock:
            self.last = time.monotonic()
            if not self.pending or self.checkpoint.broken:
                self.pending.clear()
                return
            pending, self.pending = self.pending, []
            wrote = self._write(pending)
        if wrote and not stopping:
            pause("checkpoint")

    def _write(self, pending: list[tuple[int, object]]) -> bool:
        try:
            frame = pl.concat([self._frame(start, chunk) for start, chunk in pending])
            if frame.height:
                self.checkpoint._prepare()
                self.checkpoint._write_segment(frame, 0)
                self.checkpoint._compact()
                self.flushes += 1
        except Exception as exc:
            self.checkpoint.broken = True
            # A folder with no segment (made, then its meta.json or first segment failed: a full disk) holds nothing
            # to resume from: it was left, empty or with its meta.json alone, and the run's error then said "the
            # files it hashed are checkpointed in" it
            if not self.checkpoint._segments() and self.checkpoint.folder.is_dir() \
                    and not self.checkpoint.folder.is_symlink():
                remove(self.checkpoint.folder)
            said = in_one_line(exc, typed=False)
            log.warning(f"cannot write the hash checkpoint in {shown_name(str(self.checkpoint.folder))} ({said}); "
                        "the run goes on, but if it is killed the next run hashes these files again")
            return False
        return True

    def close(self, *, stopping: bool = False) -> None:
        """Flush what is pending; `stopping`: the hashing was cut short (a signal, a failure), the run exits."""
        self.flush(stopping=stopping)

    def _frame(self, start: int, chunk) -> pl.DataFrame:
        n = len(chunk.sizes)
        failed = {k for k, _kind, _message in chunk.errors}
        listed = self._rows(start, n)
        packed = packed_frame(n, {"size": (pa.int64(), chunk.sizes), "mtime_ns": (pa.int64(), chunk.mtimes),
                                  "md5": (pa.binary(16), chunk.digests)})
        # The facts the worker parsed (a kind whose parser cannot run in a worker comes back as bytes: not kept
        # here, validation reads such a file if the run is killed)
        facts = pl.DataFrame(chunk.facts, schema=_CHUNK_FACTS, orient="row")
        frame = listed.select("srcfile").hstack(packed).hstack(listed.drop("srcfile")).with_columns(
            trust_before_ns=pl.lit(self.trust_before_ns, pl.Int64),
            read_ns=pl.lit(self.read_ns, pl.Int64)).with_row_index("_k").join(
            facts, on="_k", how="left", maintain_order="left").drop("_k").select(list(SEGMENT_SCHEMA))
        if failed:
            frame = frame.with_row_index("_k").filter(~pl.col("_k").is_in(list(failed))).drop("_k")
        return frame.cast(SEGMENT_SCHEMA)  # type: ignore[arg-type]


def reuse(planned: pl.DataFrame, checkpoint: Checkpoint | None) -> tuple[pl.DataFrame, int]:
    """hashing.plan's frame with `resumed_md5`: the checkpointed MD5 of each file due to be read (not merely
    re-verified) and listed as it was hashed; those files are no longer read (needs_read False). Returns
    the frame and how many files it spares."""
    out = resume(planned, checkpoint.known() if checkpoint is not None else None)
    n = int(out["resumed_md5"].is_not_null().sum())
    announce(n, checkpoint)
    return out, n


def resume(planned: pl.DataFrame, known: pl.DataFrame | None) -> pl.DataFrame:
    """reuse with the checkpointed hashes `known` (Checkpoint.known, read once), over all of a listing or a block
    of it (hashing.due's frame: a file re-verified is never due, needs_md5 false)."""
    planned = planned.with_columns(pl.lit(None, t).alias(c) for c, t in _IDENT.items() if c not in planned.columns)
    if known is None or known.height == 0:
        return planned.with_columns(resumed_md5=pl.lit(None, pl.String), resumed_read_ns=pl.lit(None, pl.Int64))
    from .hashing import rows_for

    known = rows_for(known, planned["srcfile"])  # a block of the listing: its own paths' hashes only
    # Matched on the whole key (a NULL etag equals a NULL etag); keys are unique in `known`, paths in `planned`.
    ckpt = known.select(*_KEY, pl.col("md5").alias("_ckpt_md5"),
                        pl.col("read_ns").alias("_ckpt_read_ns"))
    joined = planned.join(ckpt, on=_KEY, how="left", nulls_equal=True,
                          maintain_order="left")
    use = pl.col("needs_read") & pl.col("needs_md5") & pl.col("_ckpt_md5").is_not_null()
    return joined.with_columns(_use=use).with_columns(
        resumed_md5=pl.when(pl.col("_use")).then(pl.col("_ckpt_md5")),
        resumed_read_ns=pl.when(pl.col("_use")).then(pl.col("_ckpt_read_ns")),  # when the interrupted run read it
        needs_read=pl.col("needs_read") & ~pl.col("_use"),
    ).drop("_ckpt_md5", "_ckpt_read_ns", "_use")


def announce(n: int, checkpoint: Checkpoint | None) -> None:
    if n:
        log.info(f"resuming: {n:,} file{'s' if n != 1 else ''} hashed by "
                 f"{checkpoint.by if checkpoint else 'an interrupted run'} {'are' if n != 1 else 'is'} "
                 "not read again "
                 f"({checkpoint.folder if checkpoint else ''})")
