"""One `run`: scan -> hash -> diff -> classify -> commit -> report.

Each stage is a module with one job; this file only wires them together and
decides what the new version is. Frames flow between the stages (see frames.py).
Classification comes after the diff because only files that get a new row need
it: unchanged files keep their recorded classification.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa

from . import hashing
from .classify import build_patterns, classify
from .config import RunSettings
from .diff import compute_diff
from .errors import ChorusError, ExitCode, UsageError
from .frames import ERRORS_SCHEMA, LISTING_SCHEMA, STATE_SCHEMA, empty_errors
from .progress import Progress, log
from .sources import LocalSource, Source, open_source
from .store import Manifest, VersionRecord, create_private, iso, utc_now

LABEL_FORMAT = "%Y%m%d%H%M%S"
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Errors under these kinds mean "could not look", not "gone": earlier rows below them are kept.
_UNSEEN_DIR_KINDS = ("unreadable_dir", "vanished_dir")


@dataclass
class RunResult:
    db: str
    site: str
    mode: str
    dry_run: bool
    label: str | None  # the version written; None when nothing changed (or dry run)
    previous_label: str | None
    counts: dict[str, int]
    by_modality: pl.DataFrame  # modality, change, n
    change_set: pl.DataFrame
    errors: pl.DataFrame
    n_files: int
    total_bytes: int
    n_hashed: int
    bytes_hashed: int
    elapsed_s: float
    hash_s: float
    scan_started_ns: int  # recorded in `runs`: the next run's racily-clean check compares with it
    timings: dict[str, float] = field(default_factory=dict)
    findings: pl.DataFrame | None = None  # FINDINGS_SCHEMA of the latest version; None when not validated

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FINDINGS if self.errors.height or has_errors(self.findings) else ExitCode.OK


def has_errors(findings: pl.DataFrame | None) -> bool:
    return findings is not None and findings.filter(pl.col("severity") == "error").height > 0


def build_sources(settings: RunSettings) -> list[tuple[Source, str | None]]:
    """The site root, then one root per modality (if configured)."""
    def make(location: str) -> Source:
        return open_source(location, follow_symlinks=settings.follow_symlinks, workers=settings.workers)

    sources: list[tuple[Source, str | None]] = [(make(settings.site), None)]
    for modality, root in settings.roots.items():
        sources.append((make(root), modality))
    for source, _ in sources:
        if isinstance(source, LocalSource):
            source.check()
    return sources


def read_delete_list(path: str) -> pl.DataFrame:
    """Site-relative paths, one per line; '#' starts a comment."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the delete list: {exc}", where=path,
                         fix="pass --delete-list with a readable UTF-8 file of site-relative paths, one per line") from None
    paths = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.replace("\\", "/")
        while line.startswith("./"):
            line = line[2:]
        paths.append(line.lstrip("/"))
    return pl.DataFrame({"srcfile": paths}, schema={"srcfile": pl.String}).unique(maintain_order=True)


def next_label(started: datetime, latest: str | None, requested: str | None) -> str:
    """Version labels are the run's UTC start, unique and increasing."""
    if requested is not None:
        if not _LABEL_RE.match(requested):
            raise UsageError(f"invalid version label {requested!r}", where="--version",
                             fix="use letters, digits, '.', '_' or '-' (the default is the UTC start, YYYYMMDDhhmmss)")
        if latest is not None and requested <= latest:
            raise UsageError(f"version label {requested!r} does not sort after the latest version {latest!r}",
                             where="--version", fix="choose a later label, or omit --version to use the UTC start time")
        return requested
    label = started.strftime(LABEL_FORMAT)
    if latest is not None and label <= latest:
        try:
            label = (datetime.strptime(latest, LABEL_FORMAT) + timedelta(seconds=1)).strftime(LABEL_FORMAT)
        except ValueError:  # the latest label was chosen by hand
            label = latest + "-1"
    return label


# ----------------------------------------------------------------------------- stages


def scan(sources: list[tuple[Source, str | None]], progress: Progress) -> tuple[pl.DataFrame, pl.DataFrame]:
    """List every root: (root_id, srcfile, size, mtime_ns) and the problems met."""
    frames: list[pl.DataFrame] = []
    raw_errors: list[tuple[str, str, str]] = []
    seen = [0]
    with progress.counter("listing", "files", lambda: (seen[0], 0)):
        for root_id, (source, _) in enumerate(sources):
            batches = []
            for batch in source.list_files(raw_errors):
                batches.append(batch)
                seen[0] += batch.num_rows
            table = pa.Table.from_batches(batches, schema=LISTING_SCHEMA)
            frame = pl.from_arrow(table)
            assert isinstance(frame, pl.DataFrame)
            frames.append(frame.with_columns(root_id=pl.lit(root_id, pl.Int64)))
    listing = pl.concat(frames)  # one frame per root; there is always at least the site root
    errors = pl.DataFrame(raw_errors, schema=ERRORS_SCHEMA, orient="row") if raw_errors else empty_errors()
    if len(sources) > 1:
        duplicated = listing.filter(pl.col("srcfile").is_duplicated() & (pl.int_range(pl.len()).over("srcfile") > 0))
        if duplicated.height:
            errors = pl.concat([errors, duplicated.select(
                "srcfile", kind=pl.lit("duplicate_path"),
                message=pl.lit("the same site-relative path exists under two roots; the first root's file is tracked"))])
            listing = listing.unique("srcfile", keep="first", maintain_order=True)
    return listing, errors


def _check_modality_roots(classified: pl.DataFrame, sources: list[tuple[Source, str | None]]) -> pl.DataFrame:
    expected = {i: m for i, (_, m) in enumerate(sources) if m is not None}
    if not expected:
        return classified
    want = pl.col("root_id").replace_strict(expected, default=None, return_dtype=pl.String)
    wrong = want.is_not_null() & (pl.col("modality") != want)
    return classified.with_columns(
        parse_error=pl.when(wrong & pl.col("parse_error").is_null())
        .then(pl.format("file under the {} root classifies as {}", want, pl.col("modality")))
        .otherwise(pl.col("parse_error")),
    )


# ----------------------------------------------------------------------------- the run


def run(
    settings: RunSettings,
    *,
    argv: list[str] | None = None,
    progress: Progress | None = None,
    sources: list[tuple[Source, str | None]] | None = None,
) -> RunResult:
    """Run the pipeline once and (unless dry_run) commit a new version if anything changed.

    `sources` overrides the roots named in `settings` (a shard, a custom source)."""
    progress = progress or Progress(quiet=True)
    argv = list(argv if argv is not None else sys.argv[1:])
    if settings.delete_list and settings.mode != "append":
        raise UsageError("--delete-list applies to append mode only", where="--delete-list",
                         fix="add --mode append, or drop --delete-list (full mode removes whatever is gone)")
    sources = sources if sources is not None else build_sources(settings)
    patterns = build_patterns(settings.patterns)
    delete_list = read_delete_list(settings.delete_list) if settings.delete_list else None
    manifest = Manifest(settings.db)
    if settings.dry_run:
        return _run(settings, manifest, sources, patterns, delete_list, progress, run_id=None)
    with manifest.lock(argv):  # before any write: a second run must not wait on SQLite's lock
        manifest.ensure_schema()
        run_id = manifest.begin_run(_redact(argv), settings.mode, settings.site)
        try:
            result = _run(settings, manifest, sources, patterns, delete_list, progress, run_id=run_id)
        except ChorusError as exc:
            manifest.finish_run(run_id, exit_code=int(exc.exit_code), version=None, message=exc.what)
            raise
        except KeyboardInterrupt:
            manifest.finish_run(run_id, exit_code=int(ExitCode.INTERRUPTED), version=None, message="interrupted")
            raise
        except Exception as exc:
            manifest.finish_run(run_id, exit_code=int(ExitCode.FAILED), version=None, message=f"{type(exc).__name__}: {exc}")
            raise
        manifest.finish_run(
            run_id, exit_code=int(result.exit_code), version=result.label, n_files=result.n_files,
            n_hashed=result.n_hashed, bytes_hashed=result.bytes_hashed, n_errors=result.errors.height,
            scan_started_ns=result.scan_started_ns,
        )
    return result


def _peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1e6


def _redact(argv: list[str]) -> list[str]:
    """Arguments as recorded in `runs`: anything that looks like a secret is masked."""
    secret = re.compile(r"(sig=|sv=|AccountKey=|SharedAccessSignature=|password|token|secret)", re.IGNORECASE)
    return ["***" if secret.search(a) else a for a in argv]


def _run(settings: RunSettings, manifest: Manifest, sources, patterns, delete_list, progress: Progress, *, run_id: int | None) -> RunResult:
    t_start = time.perf_counter()
    started = utc_now()
    timings: dict[str, float] = {}

    def mark(stage: str, since: float) -> float:
        now = time.perf_counter()
        timings[stage] = round(now - since, 4)
        log.debug(f"{stage}: {now - since:.3f} s, peak RSS {_peak_rss_mb():.0f} MB")
        return now

    # ---- previous version
    t = time.perf_counter()
    previous = manifest.previous_state()
    latest = manifest.latest_version()
    previous_label = latest["label"] if latest else None
    last_scan = manifest.last_scan_started_ns()
    t = mark("load_previous", t)

    # ---- scan
    scan_started_ns = time.time_ns()
    progress.stage(f"listing {', '.join(s.description for s, _ in sources)}")
    listing, errors = scan(sources, progress)
    t = mark("scan", t)

    # ---- hash what is new or changed
    racy_cutoff = None if last_scan is None else last_scan - int(settings.racy_window_s * 1e9)
    planned = hashing.plan(listing, previous, racy_cutoff_ns=racy_cutoff, rehash=settings.rehash)
    n_listed = listing.height
    del listing  # large trees: keep one copy of the paths
    todo = planned.filter(pl.col("needs_hash")).select("root_id", "srcfile", "size", "mtime_ns").sort("srcfile")
    todo_bytes = int(todo["size"].sum() or 0)
    progress.stage(f"{n_listed} files listed; hashing {todo.height} new or changed files ({todo_bytes / 1e6:.1f} MB)")
    counters = hashing.HashProgress()
    t_hash = time.perf_counter()
    with progress.counter("hashing", "files", lambda: (counters.files_done, counters.bytes_done), total=(todo.height, todo_bytes)):
        hashed = hashing.hash_files([s for s, _ in sources], todo, workers=settings.workers, progress=counters)
    hash_s = time.perf_counter() - t_hash
    n_hashed, bytes_hashed = todo.height, int(hashed["hashed_size"].sum() or 0)
    del todo
    t = mark("hash", t)
    hash_errors = hashed.filter(pl.col("error_kind").is_not_null()).select(
        "srcfile", pl.col("error_kind").alias("kind"), pl.col("error_message").alias("message"))

    # ---- the tree as it is now
    delete_errors = empty_errors()
    if delete_list is not None:
        delete_list, delete_errors = _check_delete_list(delete_list, planned, previous)
    unseen_dirs = errors.filter(pl.col("kind").is_in(_UNSEEN_DIR_KINDS))["srcfile"].to_list()
    current, touched = _current_tree(planned, hashed, previous, unseen_dirs if settings.mode == "full" else [])
    del planned, hashed

    # ---- diff
    diff = compute_diff(previous, current, mode=settings.mode, delete_list=delete_list, threads=settings.workers)
    counts = diff.counts()
    t = mark("diff", t)

    # ---- classify the files that get a new row (after the diff: only those need it,
    # and the regex captures are not held in memory while DuckDB runs)
    new_rows = diff.change_set.filter(pl.col("change").is_in(["added", "replaced", "renamed"])).select("change", "srcfile").join(
        current.drop("unchanged_modality"), on="srcfile", how="left", maintain_order="left")
    classified = _check_modality_roots(classify(new_rows.select("root_id", "srcfile"), patterns), sources)
    new_rows = new_rows.drop("root_id").hstack(classified.drop("root_id", "srcfile"))
    del classified
    t = mark("classify", t)
    invalidated = diff.change_set.filter(pl.col("change").is_in(["removed", "replaced", "renamed"]))["old_file_id"]

    # ---- the new state and its errors
    kept_rows = previous.filter(~pl.col("file_id").is_in(invalidated.implode()))
    if touched.height:
        kept_rows = kept_rows.join(touched.rename({"mtime_ns": "_new_mtime"}), on="file_id", how="left").with_columns(
            mtime_ns=pl.coalesce("_new_mtime", "mtime_ns")).drop("_new_mtime")
    parse_errors = [
        rows.filter(pl.col("parse_error").is_not_null()).select("srcfile", kind=pl.lit("unparseable"), message=pl.col("parse_error"))
        for rows in (kept_rows, new_rows)
    ]
    all_errors = pl.concat([errors, hash_errors, delete_errors, *parse_errors]).unique().sort("srcfile", "kind", "message")
    n_files = kept_rows.height + new_rows.height
    total_bytes = int(kept_rows["size"].sum() or 0) + int(new_rows["size"].sum() or 0)

    by_modality = _by_modality(diff.change_set, new_rows, previous, current)
    del current
    label = None
    findings = None
    change_set = diff.change_set
    if not settings.dry_run:
        if not diff.is_empty or not all_errors.equals(manifest.version_errors(previous_label)):
            label = next_label(started, previous_label, settings.version_label)
            progress.stage(f"committing version {label}")
            record = VersionRecord(
                label=label, started_at=iso(started), finished_at=iso(utc_now()), mode=settings.mode,
                site=settings.site_name or settings.site, counts=counts, n_errors=all_errors.height,
                n_files=n_files, total_bytes=total_bytes, run_id=run_id,
            )
            committed = manifest.commit_version(
                record, new_rows=new_rows, change_set=diff.change_set, invalidated_ids=invalidated,
                touched=touched, errors=all_errors,
            )
            del new_rows
            change_set, generation = committed.changes, committed.generation
            new_state = pl.concat([kept_rows, committed.new_rows.select(list(STATE_SCHEMA))], how="vertical_relaxed")
            del committed
        else:
            generation = manifest.refresh_mtimes(touched)
            new_state = kept_rows
        if generation is not None:
            manifest.save_state(new_state.cast(STATE_SCHEMA), generation)  # type: ignore[arg-type]
        t = mark("commit", t)
        # ---- validate the version (cached: a version already validated is not checked again)
        if settings.validate_site and (label or previous_label):
            progress.stage("checking the site against the CHoRUS procedures")
            findings = validate_version(manifest, label or previous_label, [s for s, _ in sources], workers=settings.workers)
            t = mark("validate", t)
        if label is not None and settings.parquet:
            write_snapshots(manifest, label, settings.parquet)

    return RunResult(
        db=str(manifest.path.resolve()), site=settings.site, mode=settings.mode, dry_run=settings.dry_run, label=label,
        previous_label=previous_label, counts=counts, by_modality=by_modality, change_set=change_set,
        errors=all_errors, n_files=n_files, total_bytes=total_bytes, n_hashed=n_hashed,
        bytes_hashed=bytes_hashed, elapsed_s=time.perf_counter() - t_start,
        hash_s=hash_s, scan_started_ns=scan_started_ns, timings=timings, findings=findings,
    )


def _check_delete_list(delete_list: pl.DataFrame, planned: pl.DataFrame, previous: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Append mode: paths to remove. A listed path still in the tree, or unknown to
    the manifest, is recorded and left alone."""
    present = delete_list.join(planned.select("srcfile"), on="srcfile", how="semi")
    unknown = delete_list.join(previous.select("srcfile"), on="srcfile", how="anti")
    errors = pl.concat([
        present.select("srcfile", kind=pl.lit("delete_list"),
                       message=pl.lit("listed for deletion but still present in the tree; not removed")),
        unknown.select("srcfile", kind=pl.lit("delete_list"),
                       message=pl.lit("listed for deletion but not in the manifest; ignored")),
    ])
    return delete_list.join(present, on="srcfile", how="anti"), errors


def _current_tree(planned: pl.DataFrame, hashed: pl.DataFrame, previous: pl.DataFrame,
                  unseen_dirs: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The tree now as (root_id, srcfile, size, mtime_ns, md5), and the `touched` files whose
    content is unchanged but whose stat moved (file_id, mtime_ns)."""
    joined = planned.join(hashed.select("srcfile", "md5", "hashed_size", "hashed_mtime_ns"), on="srcfile", how="left")
    failed = pl.col("needs_hash") & pl.col("md5").is_null()
    current = joined.with_columns(
        # A file that could not be hashed keeps its previous row (nothing recorded is lost);
        # a new one that could not be hashed waits for the next run.
        md5=pl.when(pl.col("needs_hash") & ~failed).then(pl.col("md5")).otherwise(pl.col("prev_md5")),
        size=pl.when(failed).then(pl.col("prev_size")).otherwise(pl.coalesce("hashed_size", "size")),
        mtime_ns=pl.when(failed).then(pl.col("prev_mtime_ns")).otherwise(pl.coalesce("hashed_mtime_ns", "mtime_ns")),
    ).filter(pl.col("md5").is_not_null())
    # Same content, new stat: remember the stat so these are not hashed again.
    touched = current.filter(
        pl.col("needs_hash") & (pl.col("md5") == pl.col("prev_md5"))
        & ((pl.col("mtime_ns") != pl.col("prev_mtime_ns")) | (pl.col("size") != pl.col("prev_size")))
    ).select(pl.col("prev_file_id").alias("file_id"), "mtime_ns")
    # `unchanged_modality`: the recorded modality of a file whose content is unchanged (for the summary)
    current = current.select("root_id", "srcfile", "size", "mtime_ns", "md5",
                             pl.when(pl.col("md5") == pl.col("prev_md5")).then(pl.col("prev_modality")).alias("unchanged_modality"))
    if unseen_dirs:  # folders that could not be listed keep their earlier rows
        under = pl.lit(True) if "" in unseen_dirs else pl.any_horizontal([pl.col("srcfile").str.starts_with(d) for d in unseen_dirs])
        kept = previous.filter(under).join(current.select("srcfile"), on="srcfile", how="anti")
        current = pl.concat([current, kept.select(pl.lit(0, pl.Int64).alias("root_id"), "srcfile", "size", "mtime_ns", "md5",
                                                  pl.col("modality").alias("unchanged_modality"))])
    return current, touched


def _by_modality(change_set: pl.DataFrame, new_rows: pl.DataFrame, previous: pl.DataFrame, current: pl.DataFrame) -> pl.DataFrame:
    """Counts per change kind x modality (removed files by their previous modality)."""
    gone = change_set.filter(pl.col("change") == "removed").select("change", "old_file_id").join(
        previous.select(pl.col("file_id").alias("old_file_id"), "modality"), on="old_file_id", how="left")
    unchanged = current.filter(pl.col("unchanged_modality").is_not_null()).select(
        pl.lit("unchanged").alias("change"), pl.col("unchanged_modality").alias("modality"))
    return (
        pl.concat([new_rows.select("change", "modality"), gone.select("change", "modality"), unchanged])
        .with_columns(pl.col("modality").fill_null("Other"))
        .group_by("modality", "change").len("n").sort("modality", "change")
    )


class _FirstFound:
    """Opens a site-relative path in the first root that has it (a site with per-modality roots)."""

    def __init__(self, sources: list[Source]):
        self.sources = sources

    def open(self, srcfile: str):
        for source in self.sources[:-1]:
            try:
                return source.open(srcfile)
            except FileNotFoundError:
                continue
        return self.sources[-1].open(srcfile)


def validate_version(manifest: Manifest, label: str, sources: list[Source], *, workers: int = 1,
                     force: bool = False) -> pl.DataFrame:
    """Check the latest version against the procedures; findings are stored per version.
    Headers are read only for contents whose facts are not cached yet (new or changed files)."""
    from . import validate

    if not force and manifest.is_validated(label):
        return manifest.findings(label)
    current = manifest.validation_input()
    needed = validate.facts_needed(current)
    known = manifest.known_facts(needed)
    todo = needed.join(known, on=["kind", "md5"], how="anti").unique(["kind", "md5"], keep="first", maintain_order=True)
    source = sources[0] if len(sources) == 1 else _FirstFound(sources)
    new_facts = validate.extract_facts(source, todo, workers=workers)
    findings = validate.check(current, pl.concat([known, new_facts.select(known.columns)]))
    # Facts of files that could not be read (vanished, no permission) are not cached: the next check reads them.
    # Nor is such a version marked as checked: the next run checks it again, reading just those files.
    lasting = new_facts.filter(~pl.col("facts").str.contains('"retry":true', literal=True))
    manifest.save_validation(label, lasting, findings, complete=lasting.height == new_facts.height)
    log.debug(f"validate: {todo.height} headers read, {known.height} cached, {findings.height} findings")
    return findings


class _NoSite:
    """Stands in for the site when none was given: cached facts suffice, or this says what to do."""

    def __init__(self, db: str):
        self.db = db

    def open(self, srcfile: str):
        # An OSError: reported as "cannot read" for this file, and not cached, so a later check with --site reads it.
        raise OSError(errno.ENOENT, "not read yet, and no site was given: pass --site with the site root")


def validate_latest(settings: RunSettings, *, argv: list[str] | None = None, force: bool = False,
                    site_given: bool = True) -> tuple[str, pl.DataFrame]:
    """`validate`: check the manifest's latest version (cached unless `force`); returns (label, findings).
    Without a site, only headers already read can be used."""
    manifest = Manifest(settings.db)
    manifest.require()
    latest = manifest.latest_version()
    if latest is None:
        raise UsageError("the manifest has no versions yet", where=settings.db,
                         fix="run `chorus-batch run` first; it validates the version it commits")
    sources = [s for s, _ in build_sources(settings)] if site_given else [_NoSite(settings.db)]
    with manifest.lock(list(argv if argv is not None else sys.argv[1:])):
        manifest.ensure_schema()
        findings = validate_version(manifest, latest["label"], sources, workers=settings.workers, force=force)
    return latest["label"], findings


def write_snapshots(manifest: Manifest, label: str, directory: str) -> Path:
    """DIR/version=<label>/{manifest,changes,registry,scan_errors}.parquet (the active manifest,
    the change set, the records and the errors of that version) and DIR/versions.parquet."""
    root = Path(directory)
    target = root / f"version={label}"
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    parts = {
        target / "manifest.parquet": manifest.query_frame("SELECT * FROM source_files WHERE time_invalid IS NULL ORDER BY srcfile"),
        target / "changes.parquet": manifest.changes(label)[1],
        target / "registry.parquet": manifest.query_frame("SELECT * FROM registry ORDER BY record_id"),
        target / "scan_errors.parquet": manifest.version_errors(label),
        target / "findings.parquet": manifest.findings(label),
        root / "versions.parquet": manifest.versions(),
    }
    for path, frame in parts.items():
        tmp = path.with_name(f".{path.name}.tmp")
        os.close(create_private(tmp))
        frame.write_parquet(tmp)
        os.replace(tmp, path)
    return target
