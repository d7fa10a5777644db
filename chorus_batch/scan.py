"""Scan: list every root of the site, MD5 what is new or changed (reusing the previous
version's MD5s for the rest), and return what was seen as a ScanResult.

A scan never writes the manifest and takes no lock: a Slurm shard can run it anywhere and
hand its ScanResult (as Parquet) to the one process that commits. A ScanResult says what it
covers: the whole site, or shard K of N (person folders by a stable hash of their name;
OMOP/, Metadata/ and files at the root belong to shard 0). Only a whole-site scan, or a
merge of all N shards based on the same version, can be committed in full mode.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa

from . import exclude as _exclude
from . import hashing
from . import release
from .checkpoint import Checkpoint, Writer, announce, resume
from .coverage import WHOLE_SITE, Coverage, top_in_shard
from .errors import UsageError
from .exclude import Excludes
from .frames import ERRORS_SCHEMA, FACTS_SCHEMA, LINKED_SCHEMA, LISTING_SCHEMA, SCANNED_SCHEMA, empty_errors, fmt
from .partitions import BUCKET, in_range, part_of, with_buckets
from .fsutil import private_folder, write_private
from .progress import Progress
from .sources import Source
from .units import human_bytes, plural
from .urls import storable
from .walk import early_listing_since_ns


@dataclass(frozen=True)
class Root:
    """A place the site's files are found: the site root (modality None) or a per-modality root."""

    source: Source
    modality: str | None = None


SHARD_ROW_GROUP = 65_536  # rows; a partition of a merge is about 500k rows (shards.PARTITION_ROWS)


def shard_of(srcfile: pl.Series, shards: int) -> pl.Series:
    """The shard of each path: its bucket's (partitions.py: a stable hash of its person folder) share of `shards`."""
    return part_of(srcfile, shards).rename("shard")


@dataclass
class ScanResult:
    files: pl.DataFrame  # SCANNED_SCHEMA: every listed file; md5 NULL where it could not be hashed
    errors: pl.DataFrame  # ERRORS_SCHEMA: what was skipped or could not be read
    roots: list[tuple[str, str | None]]  # (location, modality) of each root_id
    scan_started_ns: int
    coverage: Coverage = WHOLE_SITE
    based_on: str | None = None  # the version whose MD5s were reused (None: no earlier version)
    n_hashed: int = 0
    bytes_hashed: int = 0
    hash_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    # files left out by the exclusion globs (exclude.apply): {total, default, user, by_pattern, examples}
    excluded: dict = field(default_factory=_exclude.empty_counts)
    # header facts parsed from the bytes hashed (scan(facts=True)): FACTS_SCHEMA (kind, md5, facts) in key order,
    # for the cache
    facts: pl.DataFrame | None = None
    # the exclusion globs the scan applied, as (source, pattern) ("default" or "user"; Excludes.patterns): a merge
    # refuses shards listed with other globs (one shard's extra --exclude left its files out of the version). None:
    # not recorded (a scan result of an older release)
    exclude_patterns: list[tuple[str, str]] | None = None
    # a shard's `run` flags (RunSettings.arguments), for the command that reruns it or its siblings; None: not recorded
    arguments: list[str] | None = None
    # a shard's local roots (positions in `roots`) whose folder held nothing at all where it ran, and that host: a
    # node on which the site is not mounted (an empty mount point) lists none of its shard's files; None: not recorded
    empty_roots: list[int] | None = None
    host: str | None = None
    # whether the listing followed symbolic links (--follow-symlinks): a merge refuses shards listed otherwise than
    # itself (one shard's files behind links would be in the version, another's not); None: not recorded
    follow_symlinks: bool | None = None
    # a shard's paths reached through links to outside the site, kept or not (LINKED_SCHEMA): one outside file linked
    # from two shards' folders is kept once by the merge (single-node: walk.unique_linked); None: not recorded
    linked: pl.DataFrame | None = None

    @property
    def n_excluded(self) -> int:
        return int(self.excluded.get("total", 0))

    # -- as Parquet: files.parquet, errors.parquet and scan.json, written last (the completion record)
    def write(self, folder: str | Path) -> Path:
        folder = private_folder(folder)
        # Sorted by bucket in row groups of 64k rows: a merge reads one partition's rows alone (partitions.py).
        write_private(folder / "files.parquet",
                      lambda tmp: with_buckets(self.files).write_parquet(tmp, row_group_size=SHARD_ROW_GROUP))
        write_private(folder / "errors.parquet", self.errors.write_parquet)
        if self.facts is not None:  # header facts parsed while hashing: the merge validates with them
            write_private(folder / "facts.parquet", self.facts.write_parquet)
        if self.linked is not None and self.linked.height:
            write_private(folder / "linked.parquet", self.linked.write_parquet)
        else:  # (a rerun's: its record says none)
            (folder / "linked.parquet").unlink(missing_ok=True)
        record = {"roots": self.roots, "scan_started_ns": self.scan_started_ns, "coverage": asdict(self.coverage),
                  "based_on": self.based_on, "n_files": self.files.height, "n_hashed": self.n_hashed,
                  "bytes_hashed": self.bytes_hashed, "hash_s": self.hash_s, "n_excluded": self.n_excluded,
                  "excluded": self.excluded, "facts": self.facts is not None,
                  "exclude_patterns": None if self.exclude_patterns is None else [list(p) for p in self.exclude_patterns],
                  "arguments": self.arguments, "empty_roots": self.empty_roots, "host": self.host,
                  "follow_symlinks": self.follow_symlinks,
                  "linked": None if self.linked is None else self.linked.height,
                  "release": release()}  # (which release wrote it: said when another cannot read it)
        write_private(folder / "scan.json", json.dumps(record, indent=2).encode("utf-8"))
        return folder

    @classmethod
    def read(cls, folder: str | Path, *, files: bool = True, contents: bool = True) -> "ScanResult":
        """The scan result written to `folder`; with files=False, all but its files (an empty frame: read them
        by bucket range with read_files). contents=False: its record only, its errors, facts and linked paths
        checked readable but not read (empty frames; a merge's check before it makes a manifest: a 1M-file first
        run's facts are ~200 MB of Parquet, read again by the merge itself)."""
        folder = Path(folder)
        try:
            record = json.loads((folder / "scan.json").read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise ValueError("its scan.json holds no record")
            wrong = _wrong_typed(record)
            if wrong:  # (read as absent, each was taken for a record of a release that did not write it)
                raise _WrongTyped(wrong)
            files_parquet = pl.scan_parquet(folder / "files.parquet")
            files_columns = files_parquet.collect_schema()
            n_files = files_parquet.select(pl.len()).collect().item()
            listed = (cls.read_files(folder) if files else pl.DataFrame(schema=SCANNED_SCHEMA))
            def frame(name: str, schema: dict) -> pl.DataFrame:
                if contents:
                    return pl.read_parquet(folder / name).select(list(schema)).cast(schema)  # type: ignore[arg-type]
                pl.scan_parquet(folder / name).select(list(schema)).collect_schema()  # (its footer: there, readable)
                return pl.DataFrame(schema=schema)

            errors = frame("errors.parquet", ERRORS_SCHEMA)
            facts = frame("facts.parquet", FACTS_SCHEMA) if record.get("facts") else None
            n_linked = record.get("linked")
            linked = (None if not isinstance(n_linked, int) or isinstance(n_linked, bool) else
                      frame("linked.parquet", LINKED_SCHEMA) if n_linked else pl.DataFrame(schema=LINKED_SCHEMA))
        except _WrongTyped as exc:
            written_by = record.get("release")
            by = f" (written by chorus-batch {written_by})" if isinstance(written_by, str) and written_by != release() else ""
            raise UsageError(f"not a scan result this release ({release()}) reads{by}: its scan.json does not hold "
                             f"what it should ({exc})", where=str(folder / "scan.json"),
                             fix="run the scan (or shard) again with this release") from None
        except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
            raise UsageError(f"not a complete scan result: {exc}", where=str(folder),
                             fix="run the scan (or shard) again; it writes scan.json when it completes") from None
        # A record or files.parquet of another shape (another release's shard, one edited or cut short where JSON
        # still parses) was an "internal error" (KeyError, a TypeError in Coverage) here, or in the commit's
        # partition reads (a column missing): said as one this release cannot read, to be written again.
        written_by = record.get("release")
        by = f" (written by chorus-batch {written_by})" if isinstance(written_by, str) and written_by != release() else ""
        missing = [name for name in (*SCANNED_SCHEMA, BUCKET) if name not in files_columns]
        if missing:
            raise UsageError(f"not a scan result this release ({release()}) reads{by}: its files.parquet has no "
                             f"column {', '.join(missing)}", where=str(folder),
                             fix="run the scan (or shard) again with this release")
        try:
            if n_files != record["n_files"]:
                raise UsageError(f"scan result is damaged: {n_files} files, its record says {record['n_files']}",
                                 where=str(folder), fix="run the scan (or shard) again")
            if contents and linked is not None and linked.height != n_linked:
                raise UsageError(f"scan result is damaged: {linked.height} linked paths, its record says {n_linked}",
                                 where=str(folder), fix="run the scan (or shard) again")
            result = cls._from_record(record, listed=listed, errors=errors, facts=facts)
            result.linked = linked
            return result
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise UsageError(f"not a scan result this release ({release()}) reads{by}: its scan.json does not hold "
                             f"what it should ({what})", where=str(folder / "scan.json"),
                             fix="run the scan (or shard) again with this release") from None

    @classmethod
    def _from_record(cls, record: dict, *, listed: pl.DataFrame, errors: pl.DataFrame,
                     facts: pl.DataFrame | None) -> "ScanResult":
        def expect(key: str, kind: type | tuple[type, ...]) -> None:
            if not isinstance(record[key], kind) or isinstance(record[key], bool):
                raise TypeError(f"{key} is {record[key]!r}")

        for key in ("scan_started_ns", "n_hashed", "bytes_hashed"):
            expect(key, int)
            # (a time or count no scan gives, an edited record: 10**30 ns was an OverflowError, an internal error, when
            # the merge said when the shards listed the site; SQLite keeps no integer from 2**63)
            if not (0 < record[key] if key == "scan_started_ns" else 0 <= record[key]) or record[key] >= 2**63:
                raise ValueError(f"{key} is {record[key]!r}, out of range")
        expect("hash_s", (int, float))
        expect("based_on", (str, type(None)))
        expect("coverage", dict)
        expect("roots", list)
        for root in record["roots"]:
            if not (isinstance(root, list) and len(root) == 2 and isinstance(root[0], str)
                    and isinstance(root[1], (str, type(None)))):
                raise TypeError(f"a root is {root!r}")
        # (an edited record's globs, counts or shard of another shape were internal errors further on: a glob pair
        # unpacked when the shards' globs were compared, the counts added up when the shards' were merged)
        coverage = record["coverage"]
        if not all(_whole(value) for value in coverage.values()):  # (another key: Coverage's TypeError names it)
            raise TypeError(f"coverage is {coverage!r}")
        patterns = record.get("exclude_patterns")
        if patterns is not None and not (isinstance(patterns, list) and all(
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)
                for pair in patterns)):
            raise TypeError(f"exclude_patterns is {patterns!r}")
        excluded = record.get("excluded")
        if excluded is not None and not _counts_shape(excluded):
            raise TypeError(f"excluded is {excluded!r}")
        return cls(files=listed, errors=errors, roots=[tuple(r) for r in record["roots"]],  # type: ignore[misc]
                   scan_started_ns=record["scan_started_ns"], coverage=Coverage(**record["coverage"]),
                   based_on=record["based_on"], n_hashed=record["n_hashed"], bytes_hashed=record["bytes_hashed"],
                   hash_s=record["hash_s"], excluded=record.get("excluded") or _exclude.empty_counts(), facts=facts,
                   exclude_patterns=(None if record.get("exclude_patterns") is None
                                     else [tuple(p) for p in record["exclude_patterns"]]),
                   arguments=recorded_words(record.get("arguments")),
                   empty_roots=(record["empty_roots"] if isinstance(record.get("empty_roots"), list) else None),
                   host=record.get("host") if isinstance(record.get("host"), str) else None,
                   follow_symlinks=(record["follow_symlinks"] if isinstance(record.get("follow_symlinks"), bool)
                                    else None))

    @staticmethod
    def read_files(folder: str | Path, buckets: tuple[int, int] | None = None) -> pl.DataFrame:
        """The files of the scan result in `folder` (SCANNED_SCHEMA), or only those in the bucket range
        `buckets` (first, last), read from the row groups that hold them."""
        files = pl.scan_parquet(Path(folder) / "files.parquet")
        if buckets is not None:
            files = files.filter(in_range(*buckets))
        return files.select(list(SCANNED_SCHEMA)).collect().cast(SCANNED_SCHEMA)  # type: ignore[arg-type]


class _WrongTyped(Exception):
    """A scan.json field present with a value of another type than the one ScanResult.write gives it."""


# The fields a record of an earlier release may lack (read as not recorded), with what ScanResult.write gives each;
# present with another type (an edited or damaged record: "linked": "3", "facts": "yes", "n_files": "12"), each was
# read as absent too (a shard's linked paths dropped, its facts ignored or read when there were none) or compared as
# written ("12 files, its record says 12"): told as what it is.
_OPTIONAL_TYPES: dict[str, tuple[type, ...]] = {
    "facts": (bool,), "linked": (int,), "empty_roots": (list,), "host": (str,), "follow_symlinks": (bool,),
    "arguments": (list,), "release": (str,), "n_excluded": (int,)}


def _wrong_typed(record: dict) -> str | None:
    """'linked is '3'' for the first field of `record` holding a value of another type than ScanResult.write writes."""
    n_files = record.get("n_files")
    if "n_files" in record and not _whole(n_files):
        return f"n_files is {n_files!r}"
    for key, types in _OPTIONAL_TYPES.items():
        value = record.get(key)
        if value is None:
            continue
        if (not isinstance(value, types) or isinstance(value, bool) and bool not in types
                or int in types and not _whole(value)):
            return f"{key} is {value!r}"
    if isinstance(record.get("empty_roots"), list) and not all(_whole(r) for r in record["empty_roots"]):
        return f"empty_roots is {record['empty_roots']!r}"
    if recorded_words(record.get("arguments")) is None and record.get("arguments") is not None:
        return f"arguments is {record['arguments']!r}"
    return None


def _whole(value) -> bool:
    """A count as a record holds it: a whole number of 0 or more (JSON's true is no count)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _counts_shape(excluded) -> bool:
    """Whether a record's exclusion counts are what exclude.apply writes (and merge_counts adds up)."""
    if not isinstance(excluded, dict):
        return False
    by_pattern, examples = excluded.get("by_pattern", {}), excluded.get("examples", {})
    unmatched = excluded.get("unmatched", [])
    return (all(_whole(excluded.get(key, 0)) for key in ("total", "default", "user"))
            and isinstance(by_pattern, dict) and all(_whole(n) for n in by_pattern.values())
            and isinstance(examples, dict) and all(isinstance(paths, list) and all(isinstance(p, str) for p in paths)
                                                  for paths in examples.values())
            and isinstance(unmatched, list) and all(isinstance(glob, str) for glob in unmatched))


def merge_scans(parts: list[ScanResult]) -> ScanResult:
    """The shards of one site as one whole-site ScanResult; refuses unless they are exactly shards
    0..N-1 of the same N, of the same roots, based on the same version."""
    if not parts:
        raise UsageError("no scan results to merge", where="merge", fix="give the shards' scan results")
    first = parts[0]
    shards = first.coverage.shards
    seen = sorted(p.coverage.shard for p in parts)
    if any(p.coverage.shards != shards for p in parts) or seen != list(range(shards)):
        missing = sorted(set(range(shards)) - set(seen))
        raise UsageError(
            f"the scan results do not cover the site: expected shards 0..{shards - 1} once each, got {seen}"
            + (f" (missing {', '.join(map(str, missing))})" if missing else "")
            + (" (duplicates)" if len(set(seen)) < len(seen) else ""),
            where="merge", fix="run the missing shards (or remove duplicates) and merge again")
    if any(p.roots != first.roots for p in parts):
        raise UsageError("the shards scanned different roots", where="merge", fix="rerun every shard with the same settings")
    if not all(_exclude.same_globs(p.exclude_patterns, first.exclude_patterns) for p in parts):
        raise UsageError("the shards were listed with different exclusion globs", where="merge",
                         fix="rerun every shard with the same --exclude / [run] exclude")
    if len({p.follow_symlinks for p in parts} - {None}) > 1:
        raise UsageError("the shards were listed with and without --follow-symlinks", where="merge",
                         fix="rerun every shard with the same --follow-symlinks / [run] follow_symlinks")
    stale = [p.coverage.shard for p in parts if p.based_on != first.based_on]
    if stale:
        raise UsageError(f"shards {stale} are based on another version than shard {first.coverage.shard}",
                         where="merge", fix="rerun those shards")
    return ScanResult(
        files=pl.concat([p.files for p in parts]), errors=pl.concat([p.errors for p in parts]), roots=first.roots,
        scan_started_ns=min(p.scan_started_ns for p in parts), coverage=WHOLE_SITE, based_on=first.based_on,
        n_hashed=sum(p.n_hashed for p in parts), bytes_hashed=sum(p.bytes_hashed for p in parts),
        hash_s=max(p.hash_s for p in parts), excluded=_exclude.merge_counts([p.excluded for p in parts]),
        exclude_patterns=first.exclude_patterns, follow_symlinks=first.follow_symlinks,
        # the shards' facts, if every shard parsed them (else validation reads what it lacks itself)
        facts=pl.concat([p.facts for p in parts]) if all(p.facts is not None for p in parts) else None)  # type: ignore[misc]


# A block of the first root's listing is planned (and its files that must be read are hashed) once it holds this
# many rows, or an eighth of the previous version's (each block probes the previous rows once: hashing.rows_for).
BLOCK_ROWS = 8192


def list_roots(roots: list[Root], progress: Progress, coverage: Coverage | None = None, *,
               each: Callable[[pl.DataFrame], None] | None = None,
               block_rows: int = BLOCK_ROWS) -> tuple[pl.DataFrame, pl.DataFrame]:
    """List every root: (root_id, srcfile, size, mtime_ns, stored_md5, etag) and the problems met. For a shard,
    sources that can skip top-level folders list only the shard's.

    With `each`, the first root's rows are handed to it as they are listed, in blocks of at least
    `block_rows` rows (the last one smaller), and are not returned: whatever the other roots hold, the first
    root's file is the one tracked. The other roots' rows wait for the whole listing, which decides the
    paths two roots share (duplicate_path: the first root's file is tracked)."""
    frames: list[pl.DataFrame] = []
    raw_errors: list[tuple[str, str, str]] = []
    seen = [0]
    first_paths: list[pl.DataFrame] = []  # with `each` and other roots: the first root's paths, for the duplicates

    handed = [False]

    def hand(batches: list[pa.RecordBatch]) -> None:
        assert each is not None
        handed[0] = True
        block = _frame(batches, 0)
        each(block)
        if len(roots) > 1:
            first_paths.append(block.select("srcfile", "root_id"))

    with progress.counter("listing", "file", lambda: (seen[0], 0)):
        for root_id, root in enumerate(roots):
            batches: list[pa.RecordBatch] = []
            rows = 0
            listing = (root.source.list_files(raw_errors) if coverage is None or coverage.whole
                       or not getattr(root.source, "skips_tops", False)
                       else root.source.list_files(raw_errors, tops=lambda top: top_in_shard(top, coverage)))
            streamed = each is not None and root_id == 0
            for batch in listing:
                batches.append(batch)
                rows += batch.num_rows
                seen[0] += batch.num_rows
                if streamed and rows >= block_rows:
                    hand(batches)
                    batches, rows = [], 0
            if streamed:
                if batches or not handed[0]:  # the last block (an empty one only if it is the only one)
                    hand(batches)
            else:
                frames.append(_frame(batches, root_id))
    # (a message names a link's target or another path outside the site as the OS gave it: one that is not UTF-8
    # is kept with \x.. escapes, or the whole listing ended in an 'internal error' here)
    errors = (pl.DataFrame([(storable(path), kind, storable(message)) for path, kind, message in raw_errors],
                           schema=ERRORS_SCHEMA, orient="row") if raw_errors else empty_errors())
    listing = pl.concat(frames) if frames else _frame([], 0).clear()
    if len(roots) > 1:
        # In listing order: the first root's paths (what `each` was given) before the other roots' rows.
        whole = pl.concat([*first_paths, listing], how="diagonal_relaxed") if first_paths else listing
        duplicated = whole.filter(pl.col("srcfile").is_duplicated() & (pl.int_range(pl.len()).over("srcfile") > 0))
        if duplicated.height:
            # which two roots, and what to do (it said "under two roots; the first root's file is tracked": which?)
            names = {position: getattr(root.source, "description", root.source.location)
                     + (f" ([site.roots] {root.modality})" if root.modality else " (the site root)")
                     for position, root in enumerate(roots)}
            first = whole.unique("srcfile", keep="first").select("srcfile", _first="root_id")
            errors = pl.concat([errors, duplicated.join(first, on="srcfile", how="left").select(
                "srcfile", kind=pl.lit("duplicate_path"),
                message=fmt(
                    "the same site-relative path exists under two roots: the file under {} is tracked, the one under "
                    "{} is not; remove one of the two copies", pl.col("_first").replace_strict(names, return_dtype=pl.String),
                    pl.col("root_id").replace_strict(names, return_dtype=pl.String)))])
            whole = whole.unique("srcfile", keep="first", maintain_order=True)
            listing = whole.filter(pl.col("root_id") > 0) if first_paths else whole
            listing = listing.select(_frame([], 0).columns)
    return listing, errors


def _frame(batches: list[pa.RecordBatch], root_id: int) -> pl.DataFrame:
    frame = pl.from_arrow(pa.Table.from_batches(batches, schema=LISTING_SCHEMA))
    assert isinstance(frame, pl.DataFrame)
    return frame.with_columns(root_id=pl.lit(root_id, pl.Int64))


def scan(roots: list[Root], previous: pl.DataFrame, *, based_on: str | None, last_scan_ns: int | None = None,
         racy_window_s: float = 2.0, rehash: bool = False, workers: int = 1, progress: Progress | None = None,
         coverage: Coverage = WHOLE_SITE, verify_percent: float = 0.0, verify_max_bytes: int = 0,
         cloud_md5: str = "stored-or-download", excludes: Excludes | None = None,
         checkpoint: Checkpoint | None = None, facts: bool = False, mtime_unit_ns: int = 1,
         on_facts: Callable[[pl.DataFrame], None] | None = None,
         whole_sample: Callable[[float, int, list[int]], pl.Series] | None = None) -> ScanResult:
    """List and hash; `previous` holds the current rows of version `based_on` (STATE_SCHEMA), for a shard those of
    its own folders at least, then with `whole_sample` (percent, byte cap, roots not to read: the paths of the whole
    site's re-verification sample, Manifest.site_sample) to choose the sample among the whole version's. With
    `verify_percent`, that share of the site's files (within `verify_max_bytes`) is read again though
    unchanged, the longest unverified first (rolling re-verification). `cloud_md5` says where the MD5 of
    a file under a remote root may come from (see hashing.plan). `excludes` (default: the OS-junk list) are
    left out right after the listing: neither hashed nor recorded, only counted (ScanResult.excluded).
    `checkpoint`: hashes an interrupted run left (reused where the file is unchanged), and where this
    scan's hashes are checkpointed as they come (checkpoint.py). With `facts`, the files validation looks
    inside are parsed as they are hashed (ScanResult.facts); with `on_facts` too, those facts are handed to it
    while the hashing goes on, hashing.FACTS_HANDED_EVERY at a time (a run caches them), and the ScanResult
    does not hold them.

    Hashing overlaps the listing: each block of the first root's listing is planned as it comes (shard,
    exclusions, hashing.due, the checkpoint), and the files it must read are hashed while the listing goes
    on. What needs the whole listing is decided after it: the other roots' rows (paths two roots share) go
    through the same steps then, and the re-verification sample (hashing.reverify) is read last."""
    progress = progress or Progress(quiet=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    for root in roots:
        root.source.check()
    # A walk the command started early (walk.py) counts: a file it listed may change before this line.
    scan_started_ns, early = time.time_ns(), early_listing_since_ns()
    if early is not None:
        scan_started_ns = min(scan_started_ns, early)
    excludes = Excludes() if excludes is None else excludes
    rules = hashing.Rules(racy_cutoff_ns=None if last_scan_ns is None else last_scan_ns - int(racy_window_s * 1e9),
                          rehash=rehash, racy_until_ns=scan_started_ns + int(racy_window_s * 1e9), cloud_md5=cloud_md5,
                          cloud_roots=[i for i, r in enumerate(roots) if not r.source.parallel_local],
                          mtime_unit_ns=mtime_unit_ns, racy_window_ns=int(racy_window_s * 1e9))
    prev = hashing.previous_rows(previous)
    known = checkpoint.known() if checkpoint is not None and not rehash else None  # read once, before any hashing
    resumed_facts = None  # the facts an interrupted run parsed: by content, whichever of its files they came from
    if known is not None:
        if facts:
            resumed_facts = known.filter(pl.col("facts").is_not_null()).select("kind", "md5", "facts")
        known = known.drop("kind", "facts")
    writer = checkpoint.writer(None, scan_started_ns, racy_window_s) if checkpoint is not None else None
    counters = hashing.HashProgress(on_chunk=writer, on_rows=writer.extend if writer is not None else None)
    parts: list[pl.DataFrame] = []
    excluded_parts: list[dict] = []
    unsure = [0]  # files read again only because they were modified around an earlier listing

    # (the checkpoint's context exits last: a signal or a failure stops the workers first, then what they hashed
    # is checkpointed)
    with _checkpointed_when_stopped(writer), \
            hashing.Hasher([r.source for r in roots], workers=workers, progress=counters, facts=facts,
                           on_facts=on_facts) as hasher:
        def plan_block(listed: pl.DataFrame) -> None:
            """Everything decided file by file, and the reading of those files that must be read."""
            if not coverage.whole:
                listed = listed.filter(shard_of(listed["srcfile"], coverage.shards) == coverage.shard)
            listed, counts = _exclude.apply(listed, excludes)
            excluded_parts.append(counts)
            part = resume(hashing.due(listed, prev, rules), known)
            hasher.add(hashing.to_read(part))
            # read again though neither new nor changed: modified too close to an earlier listing to trust their size
            # and mtime ("racily clean"); "hashing 1018 new or changed files" of a site the table then showed unchanged
            unsure[0] += part.filter(pl.col("needs_read") & ~pl.col("verify") & pl.col("prev_md5").is_not_null()
                                     & (pl.col("size") == pl.col("prev_size"))
                                     & (pl.col("mtime_ns") == pl.col("prev_mtime_ns"))
                                     & (pl.col("etag").is_null() | (pl.col("etag") == pl.col("prev_etag")))).height
            # (what only `due` compares: not held for the whole listing, 1M files: ~48 MB)
            parts.append(part.drop("prev_file_id", "prev_mtime_ns", "prev_modality", "prev_etag", "ino", "ctime_ns",
                                   strict=False))

        progress.stage(f"listing {', '.join(r.source.description for r in roots)}")
        others, errors = list_roots(roots, progress, coverage, each=plan_block,
                                    block_rows=max(BLOCK_ROWS, (prev.height + (known.height if known is not None else 0)) // 8))
        if others.height or not parts:  # the other roots' rows, now that the whole listing decided the paths they
            plan_block(others)  # share (none, with one root: not planned, an empty block's steps cost 7-10 ms)
        linked = None if coverage.whole else _shard_linked(roots, coverage)
        errors = _exclude.drop_excluded_errors(errors, excludes)  # an excluded file's problem is not the site's
        excluded = _merged_counts(excluded_parts, excludes)
        timings["scan"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()

        n_listed = sum(part.height for part in parts)
        if coverage.whole:
            planned = hashing.reverify(pl.concat(parts), math.ceil(n_listed * verify_percent / 100), verify_max_bytes)
        else:  # a shard: its part of the site's one sample (the site's listing is not known here: its previous rows)
            no_read = list(rules.cloud_roots) if cloud_md5 == "stored-only" else []
            chosen = (whole_sample(verify_percent, verify_max_bytes, no_read) if whole_sample is not None else
                      hashing.site_sample(previous, math.ceil(previous.height * verify_percent / 100), verify_max_bytes,
                                          no_read_roots=no_read))
            planned = hashing.reverify(pl.concat(parts), chosen.len(), verify_max_bytes, chosen=chosen)
        parts.clear()
        verify_rows = hashing.to_read(planned.filter(pl.col("sampled")))
        hasher.add(verify_rows)  # the sample, chosen among all files: read last
        n_resumed = int(planned["resumed_md5"].is_not_null().sum())
        announce(n_resumed, checkpoint)
        reading = planned.filter(pl.col("needs_read"))
        # (re-verified: the sample, and with --rehash every unchanged file)
        todo_n, todo_bytes, n_verify = reading.height, int(reading["size"].sum() or 0), int(reading["verify"].sum())
        del reading
        if todo_n != hasher.rows:
            raise AssertionError(f"{hasher.rows} files given to the hashing, {todo_n} planned to be read")
        changed = todo_n - n_verify - unsure[0]
        progress.stage(f"{plural(n_listed, 'file')} listed; hashing {plural(changed, 'new or changed file')}"
                       + (f", {unsure[0]} modified around an earlier run's listing (racily clean)" if unsure[0] else "")
                       + (f" and re-verifying {plural(n_verify, 'unchanged one')}" if n_verify else "")
                       + f" ({human_bytes(todo_bytes)})"
                       + (f"; {plural(n_resumed, 'file')} hashed by {checkpoint.by if checkpoint else 'an interrupted run'} "
                          "reused" if n_resumed else ""))
        with progress.counter("hashing", "file", lambda: (counters.files_done, counters.bytes_read()),
                              total=(todo_n, todo_bytes)):
            hashed = hasher.finish()
    if writer is not None:
        writer.close()  # all of them: a kill during the commit loses no hash
    parsed = hasher.parsed  # (None with on_facts: handed to it as they were parsed)
    if resumed_facts is not None and resumed_facts.height:  # what an interrupted run parsed
        parsed = resumed_facts if parsed is None else pl.concat([parsed, resumed_facts])
        parsed = parsed.unique(["kind", "md5"]).sort("kind", "md5")
    if on_facts is not None:
        if parsed is not None:
            started = time.perf_counter()
            on_facts(parsed)
            hasher.facts_seconds += time.perf_counter() - started
            parsed = None
        if hasher.facts_seconds:
            timings["cache_facts"] = round(hasher.facts_seconds, 4)
    hash_s = hasher.seconds
    # read and hashed: not those that vanished or could not be read ("hashed: 31 files" when 30 had vanished)
    n_hashed = hasher.rows - int(hashed["error_kind"].is_not_null().sum())
    bytes_hashed = int(hashed["hashed_size"].sum() or 0)
    # (in path order, as when every file was hashed after the listing)
    hash_errors = hashed.filter(pl.col("error_kind").is_not_null()).sort("srcfile").select(
        "srcfile", pl.col("error_kind").alias("kind"), pl.col("error_message").alias("message"))
    files = planned.join(hashed.select("srcfile", "md5", "hashed_size", "hashed_mtime_ns", "hashed_etag"), on="srcfile",
                         how="left").select(
        "root_id", "srcfile",
        size=pl.coalesce("hashed_size", "size"),
        mtime_ns=pl.coalesce("hashed_mtime_ns", "mtime_ns"),
        # read now; else held by the storage; else unchanged since `based_on`
        md5=pl.when(pl.col("needs_read")).then(pl.col("md5"))
        .when(pl.col("resumed_md5").is_not_null()).then(pl.col("resumed_md5"))  # read by an interrupted run
        .when(pl.col("needs_md5")).then(pl.col("stored_md5"))
        .otherwise(pl.col("prev_md5")),
        read=(pl.col("needs_read") & pl.col("md5").is_not_null()) | pl.col("resumed_md5").is_not_null(),
        verify="verify",
        md5_source=pl.when(pl.col("needs_read")).then(pl.when(pl.col("md5").is_not_null()).then(pl.lit("computed")))
        .when(pl.col("resumed_md5").is_not_null()).then(pl.lit("computed"))
        .when(pl.col("needs_md5")).then(pl.when(pl.col("stored_md5").is_not_null()).then(pl.lit("stored"))
                                        .otherwise(pl.lit("unverifiable")))
        .otherwise(pl.lit("reused")),
        # as read, with the size and mtime of the read: an object written since its listing has another etag
        etag=pl.coalesce("hashed_etag", "etag"),
        # read by an interrupted run: when (its scan start), not this scan's (verified_ns, "longest unverified")
        read_ns=pl.when(~pl.col("needs_read") & pl.col("resumed_md5").is_not_null()).then(pl.col("resumed_read_ns")),
    )
    timings["hash"] = round(time.perf_counter() - t, 4)
    return ScanResult(
        files=files.cast(SCANNED_SCHEMA),  # type: ignore[arg-type]
        errors=pl.concat([errors, hash_errors]),
        roots=[(r.source.location, r.modality) for r in roots], scan_started_ns=scan_started_ns, coverage=coverage,
        based_on=based_on, n_hashed=n_hashed, bytes_hashed=bytes_hashed, hash_s=hash_s, timings=timings,
        excluded=excluded, facts=parsed, exclude_patterns=list(excludes.patterns), linked=linked)


def _shard_linked(roots: list[Root], coverage: Coverage) -> pl.DataFrame:
    """The paths of this shard that its listing reached through links to outside the site (kept or not), by root."""
    frame = pl.DataFrame([(root_id, rel, real, link) for root_id, root in enumerate(roots)
                          for rel, _size, _mtime, real, link in getattr(root.source, "linked", [])],
                         schema=LINKED_SCHEMA, orient="row")
    return frame.filter(shard_of(frame["srcfile"], coverage.shards) == coverage.shard)


@contextlib.contextmanager
def _checkpointed_when_stopped(writer: Writer | None) -> Iterator[None]:
    """A scan stopped by a signal (SIGTERM, Ctrl-C) or a failure checkpoints the files hashed since the last flush:
    the next run reads none of them again (they were lost, up to CHORUS_BATCH_CHECKPOINT_S of hashing)."""
    try:
        yield
    except BaseException:
        if writer is not None:
            writer.close(stopping=True)
        raise


def _merged_counts(parts: list[dict], excludes: Excludes) -> dict:
    """The exclusion counts of the listing's blocks (exclude.apply of each) as exclude.apply of the whole listing
    gives them: patterns in the order of the list."""
    merged = _exclude.merge_counts(parts)
    order = [pattern for _source, pattern in excludes.patterns]
    for key in ("by_pattern", "examples"):
        merged[key] = {p: merged[key][p] for p in dict.fromkeys(order) if p in merged[key]}
    # a user's glob that matched nothing is said, not silent (a folder's name in the wrong case, a typo)
    shadowed = set().union(*(part.get("shadowed", ()) for part in parts))
    merged["unmatched"] = [p for source, p in excludes.patterns
                           if source == "user" and p not in merged["by_pattern"] and p not in shadowed]
    return merged


def recorded_words(value) -> list[str] | None:
    """A recorded argument list as it was written (a list of strings), else None (not recorded, or not a list)."""
    return value if isinstance(value, list) and all(isinstance(word, str) for word in value) else None
