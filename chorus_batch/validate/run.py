"""Validation, orchestrated: which version to check, where its files are read from, what is
cached, and checking a folder that has no manifest yet.

  check_files       the seam: the findings of a set of files (a version, or the one a dry run would
                    commit), reading only headers whose facts are not known yet; writes nothing
  validate_version  check a version's current files with it; store the facts read and the findings
  validate_pending  check what a dry run would commit, storing nothing
  reopen_roots      the site's roots as recorded in the manifest (or as given), by root_id
  validate_folder   `validate --site DIR` without a manifest: a temporary one, removed after
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ..config import SITE_ROOT
from ..errors import ChorusError, ManifestError, UsageError
from ..frames import FACTS_SCHEMA
from ..fsutil import nearly_full, scratch_folder
from ..progress import Progress, log
from ..sources import Source, open_source
from ..store import Manifest
from ..errors import named
from ..units import plural
from ..store.validation import VALIDATION_SCHEMA

if TYPE_CHECKING:
    from ..config import CloudSettings


class FirstFound:
    """Opens a site-relative path in the first root that has it: files whose root was not
    recorded (committed before schema 3)."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self.parallel_local = all(s.parallel_local for s in sources)

    def open(self, srcfile: str):
        return self._first("open", srcfile)

    def stat(self, srcfile: str):
        return self._first("stat", srcfile)

    def _first(self, method: str, srcfile: str):
        """`method` of the first source that has the file (the last one's error if none has it)."""
        for source in self.sources[:-1]:
            try:
                return getattr(source, method)(srcfile)
            except FileNotFoundError:
                continue
        return getattr(self.sources[-1], method)(srcfile)


def _given_as(modality: str | None) -> str:
    """Where a root of `modality` (None: the site root) is given: what its messages name (a [site.roots] folder
    missing was called "site root", at --site / [site] root)."""
    return SITE_ROOT if modality is None else f"[site.roots] {modality}"


def reopen_roots(manifest: Manifest, *, overrides: Mapping[str | None, str] | None = None,
                 follow_symlinks: bool = False, workers: int = 1, cloud: CloudSettings | None = None) -> dict[int, Source]:
    """Sources by the manifest's root_id: the recorded location, or the one given for that root's
    modality (None: the site root) in `overrides`; cloud roots signed in as `cloud` says."""
    overrides = overrides or {}
    sources: dict[int, Source] = {}
    for root_id, location, modality in manifest.roots().select("root_id", "location", "modality").iter_rows():
        sources[root_id] = open_source(overrides.get(modality, location), follow_symlinks=follow_symlinks, workers=workers,
                                       cloud=cloud, what=_given_as(modality))
    return sources


def by_root_id(manifest: Manifest, sources: Mapping[tuple[str, str | None], Source]) -> dict[int | None, Source]:
    """A run's sources by (location, modality) as the manifest's root ids; None: the first of them
    that has a file, for files whose root was not recorded."""
    given = list(sources.values())
    # matched as the commit matches them (a root given through a symlink is the root recorded as its target)
    out: dict[int | None, Source] = {root_id: given[position]
                                     for position, root_id in manifest.known_root_ids(list(sources)).items()}
    if sources:
        out[None] = FirstFound(list(sources.values()))  # type: ignore[assignment]
    return out


@dataclass(frozen=True)
class KnownFacts:
    """The facts known before a check reads a header: `keys(wanted)` the (kind, md5) pairs of `wanted` that
    have facts, `facts(wanted)` their facts (FACTS_SCHEMA). Asked part by part: a check holds a part's facts."""

    keys: Callable[[pl.DataFrame], pl.DataFrame]
    facts: Callable[[pl.DataFrame], pl.DataFrame]

    @classmethod
    def cached(cls, manifest: Manifest) -> "KnownFacts":
        """The facts the manifest's cache holds (none without a manifest)."""
        if not manifest.path.exists():
            return cls(lambda _w: pl.DataFrame(schema={"kind": pl.String, "md5": pl.String}),
                       lambda _w: pl.DataFrame(schema=FACTS_SCHEMA))
        return cls(manifest.validation.known_keys, manifest.validation.known_facts)


# A site is checked in parts of about this many files (whole person folders). `validate --force` of a
# 1M-file manifest (small1m), peak RSS: whole 1,836 MiB; parts of 262,144: 1,227; 131,072: 1,078; 65,536:
# 1,050; all in 17-19 s. A 5%-mutated run's validation (memory_profile.py run): 131,072: 1,040 MiB; 65,536:
# 1,004-1,005 MiB, the run as fast.
PART_FILES = 65_536


@dataclass
class Checked:
    """What check_files found: the findings, and the facts it read (FACTS_SCHEMA) for a cache to keep."""

    findings: pl.DataFrame  # FINDINGS_SCHEMA, sorted by srcfile, rule, message
    new_facts: pl.DataFrame


class _Count:
    """Files read or checked so far (bumped from reader threads or between parts; polled by the progress reporter)."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.n += n


def check_files(current: pl.DataFrame, known: KnownFacts, sources: Mapping[int | None, Source], *,
                errors: pl.DataFrame, what: str, where: str, workers: int = 1,
                progress: Progress | None = None, excludes: list[tuple[str, str]] | None = None,
                renamed: pl.DataFrame | None = None) -> Checked:
    """The findings of `current` (VALIDATION_SCHEMA rows: a version's current files) and of its run's
    recorded problems `errors`. Headers are read only for contents `known` has no facts of, each from
    `sources[root_id]` (`sources[None]`: files whose root is not recorded or not reachable). A large site is
    checked in parts of about PART_FILES files, each with its own facts. Nothing is written: the caller keeps
    what it wants (a version's findings and the facts read, or nothing for a dry run). `what` names the
    files in messages ("version X"). `excludes`: the run's exclusion globs ((source, glob), exclude.Excludes.patterns),
    which a finding of a file or folder missing names where one of them left it out. `renamed`: the top folders
    the manifest recorded as renamed (renamed_folders; None where not known)."""
    from ..partitions import part_of
    from .checks import check  # here: a run whose findings are cached checks nothing (validate/__init__.py)
    from .site import _there_untaken, untaken, why_untaken
    from .kinds import facts_needed, with_kind

    progress = progress or Progress(quiet=True)
    current = with_kind(current)  # (once: the rules' _Site keeps it)
    # (size, mtime_ns, etag: the facts read are of the content recorded, not of what was written since)
    needed = facts_needed(current, keep=("root_id", "size", "mtime_ns", "etag"))
    known_keys = known.keys(needed)
    todo = needed.join(known_keys, on=["kind", "md5"], how="anti").unique(["kind", "md5"], keep="first",
                                                                          maintain_order=True)
    del needed
    readers = {root_id: sources.get(root_id) or sources.get(None) for root_id in todo["root_id"].unique().to_list()}
    refuse_unreachable(todo, readers, what=what, where=where)
    if todo.height:
        progress.stage(f"reading {plural(todo.height, 'header', grouped=True)} and tables ({known_keys.height:,} known from earlier runs)")
    new_facts = read_new_facts(todo, readers, workers=workers, progress=progress)  # type: ignore[arg-type]

    def facts_of(wanted: pl.DataFrame) -> pl.DataFrame:
        if wanted.height == 0:
            return pl.DataFrame(schema=FACTS_SCHEMA)
        read_now = new_facts.join(wanted, on=["kind", "md5"], how="semi").select(list(FACTS_SCHEMA))
        return pl.concat([known.facts(wanted), read_now]) if read_now.height else known.facts(wanted)

    count = -(-current.height // PART_FILES)
    parts = part_of(current["srcfile"], count) if count > 1 else None
    checked, seen = _Count(), untaken(errors)
    with progress.counter("checking", "file", lambda: (checked.n, 0), total=(current.height, 0)):
        in_parts = check(current, facts_of, parts=parts, done=checked.add, untaken=seen, renamed=renamed)
    findings = pl.concat([in_parts, run_findings(errors)]).sort("srcfile", "rule", "message")
    if seen:  # a file the scan could not take (or in a folder it could not list) may be there: "add it" is not true
        whys = [why_untaken(seen, path) if rule in _MISSING_RULES else None
                for rule, path in findings.select("rule", "srcfile").rows()]
        findings = findings.with_columns(_why=pl.Series(whys, dtype=pl.String)).with_columns(
            message=pl.when(pl.col("_why").is_not_null()).then(_there_untaken(pl.col("srcfile")))
            .otherwise(pl.col("message"))
        ).drop("_why")
    if excludes:
        findings = _left_out(findings, excludes)
    log.debug(f"validate: {todo.height} headers read, {known_keys.height} known, {findings.height} findings, "
              f"{plural(count, 'part')}")
    return Checked(findings, new_facts)


def refuse_unreachable(todo: pl.DataFrame, readers: Mapping[int | None, Source | None], *, what: str,
                       where: str, to: str = "check it", nothing: str = "nothing was read, no finding recorded",
                       again: str = "check again") -> None:
    """Stop before any file is read when files `todo` must read (srcfile, root_id) have nowhere to be read from: their
    root not recorded (a manifest from before schema 3) and no --site, or a recorded local root that is not there (the
    tree moved, its disk not mounted). Each such file was otherwise a `file.unread` error repeating the one cause about
    the root: thousands on a real site, stored with the version as if the site were broken (so of a cloud prefix with
    no object left). Never guessed: a file that was not read is not reported as unreadable. A root that is there but
    lost some files is read file by file.
    `to`, `nothing`, `again`: what the reading was for, what was not done and what to do again (`registry`'s words)."""
    unreachable = todo.filter(pl.col("root_id").is_in([k for k, v in readers.items() if v is None])
                              | (pl.col("root_id").is_null() & (readers.get(None) is None)))
    if unreachable.height:
        raise UsageError(
            f"{plural(unreachable.height, 'file')} of {what} (e.g. {unreachable['srcfile'][0]}) "
            f"{'has a header that was' if unreachable.height == 1 else 'have headers that were'} never read, and the "
            f"manifest does not record where they are; {nothing}", where=where,
            fix=f"{named('pass --site with the site root', 'call validate_manifest(db, overrides={None: DIR}), DIR the site root')} "
                "(its roots are recorded by the next run)")
    gone = {root_id: whys for root_id, source in readers.items() if (whys := _gone(source))}
    if not gone:
        return
    stopped = todo.filter(pl.col("root_id").is_in([k for k in gone if k is not None])
                          | (pl.col("root_id").is_null() & (None in gone)))
    whys = list(dict.fromkeys(why for root_whys in gone.values() for why, _ in root_whys))
    # (a cloud prefix is not mounted: it moved, or its files were removed, which a run records)
    cloud = all(callable(getattr(readers[root_id], "whole_root_gone", None)) for root_id in gone)
    givens = list(dict.fromkeys(given for root_whys in gone.values() for _, given in root_whys))
    site_root = [SITE_ROOT] if any(given == SITE_ROOT for given in givens) else []
    modalities = [given.removeprefix("[site.roots] ") for given in givens if given != SITE_ROOT]
    fix = named("give " + " and ".join([f"--site the {'place' if cloud else 'folder'} the site is in now"]
                                       * bool(site_root) + [
                    f"[site.roots] {m} in chorus.toml the folder it is in now (read with --site)" for m in modalities]),
                "call validate_manifest(db, overrides={" + ", ".join([*(["None: DIR"] if site_root else []),
                                                                       *(f"{m!r}: DIR" for m in modalities)])
                + "}), DIR the folder it is in now")
    raise UsageError(
        f"{plural(stopped.height, 'file', grouped=True)} of {what} (e.g. {stopped['srcfile'][0]}) must be read to "
        f"{to}, and {'; '.join(whys)}; {nothing}", where=where,
        fix=f"{fix}, or " + ("record its files' removal with chorus-batch run" if cloud else
                             "mount the file system where it was recorded") + f", and {again}")


def _gone(source: Source | None) -> list[tuple[str, str]]:
    """(why, where it is given) of each local root or cloud prefix `source` reads from that is not there as a whole
    (sources.local.root_gone: its words); FirstFound's only when all its roots are gone (it reads from the first that
    has a file)."""
    from ..sources.local import root_gone

    parts = source.sources if isinstance(source, FirstFound) else [source]
    found = [(why, getattr(part, "what", SITE_ROOT)) for part in parts if (why := root_gone(part)) is not None]
    return found if len(found) == len(parts) else []


# The rules whose finding's srcfile is a file they looked for and did not find: one the run could not take is no
# missing file (the rules that name such a file in their message ask site.with_untaken themselves).
_MISSING_RULES = frozenset({"omop.missing_table", "metadata.missing", "metadata.mapping_missing"})
# Those, and the folder the site lacks (layout.no_omop: "OMOP/"), that an exclusion glob may have left out.
_EXCLUDABLE_RULES = _MISSING_RULES | {"layout.no_omop"}


def _left_out(findings: pl.DataFrame, excludes: list[tuple[str, str]]) -> pl.DataFrame:
    """`findings` with the message of a missing file or folder that an exclusion glob of the run left out saying so,
    and which glob: `--exclude OMOP/` made "the site has no file in an OMOP/ folder: add OMOP/", of a folder that is
    there (the first glob that matches, in the order the summary counts them: the default list first)."""
    from ..errors import named
    from ..exclude import glob_to_regex
    from ..frames import fmt

    missing = findings.filter(pl.col("rule").is_in(list(_EXCLUDABLE_RULES)))
    if missing.height == 0:
        return findings
    setting = named("--exclude / [run] exclude", "RunSettings.exclude")
    by = pl.coalesce([
        pl.when(pl.col("srcfile").str.contains(glob_to_regex(glob, ignore_case=source == "default"))).then(
            pl.lit(f"the exclusion glob {glob!r} of {setting}" if source == "user" else
                   f"the default exclusion {glob!r} (the OS and editor junk list; "
                   f"{named('--no-default-excludes', 'RunSettings(default_excludes=False)')} keeps it)"))
        for source, glob in excludes])
    return findings.with_columns(_by=pl.when(pl.col("rule").is_in(list(_EXCLUDABLE_RULES))).then(by)).with_columns(
        message=pl.when(pl.col("_by").is_not_null()).then(fmt(
            "{} is left out by {}: whatever of it the site holds is in no version, and no rule read it; remove or "
            "narrow the glob to record and check it (excluded files are never touched)", pl.col("srcfile"),
            pl.col("_by"))).otherwise(pl.col("message"))).drop("_by")


def read_new_facts(todo: pl.DataFrame, readers: Mapping[int | None, Source], *, workers: int = 1,
                   progress: Progress | None = None) -> pl.DataFrame:
    """FACTS_SCHEMA rows of `todo` (srcfile, md5, kind, root_id), each file read from `readers[root_id]`; a
    progress counter (a bar on a terminal, log lines with an ETA elsewhere) while they are read."""
    from .readers import extract_facts

    progress = progress or Progress(quiet=True)
    read = _Count()
    with progress.counter("reading headers", "file", lambda: (read.n, 0), total=(todo.height, 0)):
        parts = [extract_facts(readers[root_id], part, workers=workers, done=read.add)  # type: ignore[arg-type]
                 for (root_id,), part in todo.group_by("root_id", maintain_order=True)]
    return pl.concat(parts) if parts else pl.DataFrame(schema=FACTS_SCHEMA)


# How a version checked by other rules is checked again (said by the run and by `upgrade`): a fact kind whose reader
# changed since (a new version of the kind, omop_procedures.v6) is not in the cache, so those files are read again.
FROM_CACHED_FACTS = "from the facts already read (files of kinds this release reads otherwise are read again)"


def validate_version(manifest: Manifest, label: str, sources: Mapping[int | None, Source], *, workers: int = 1,
                     force: bool = False, progress: Progress | None = None,
                     excludes: list[tuple[str, str]] | None = None) -> pl.DataFrame:
    """Check a version against the procedures; findings are stored with it. Headers are read only for
    contents whose facts are not cached yet (new or changed files), each from `sources[root_id]`;
    `sources[None]` reads files whose root is not recorded or not reachable. A run's facts parsed while
    hashing are cached before its commit: they are read back part by part, as any cached facts."""
    cache = manifest.validation
    if not force and cache.is_validated(label):
        return cache.findings(label)
    if not force and cache.checked_by_other_rules(label):
        from .rules import edition

        # (not "an earlier release's": a site that rolled back from a later release has its rules here too)
        were = cache.rules_of(label) or "not recorded: a release before schema 9"
        log.info(f"version {label} was checked by other rules ({were}; this release's: {edition()}): checking it "
                 f"again with this release's, {FROM_CACHED_FACTS}")
    known = KnownFacts.cached(manifest)
    checked = check_files(cache.current_files(), known, sources, errors=manifest.version_errors(label),
                          what=f"version {label}", where=str(manifest.path), workers=workers, progress=progress,
                          excludes=excludes, renamed=renamed_folders(manifest, label))
    # Facts of files that could not be read (vanished, no permission) are not cached: the next check reads them.
    # Nor is such a version marked as checked: the next run checks it again, reading just those files.
    lasting = checked.new_facts.filter(~pl.col("facts").str.contains('"retry":true', literal=True))
    cache.save(label, lasting, checked.findings, complete=lasting.height == checked.new_facts.height)
    return checked.findings


def renamed_folders(manifest: Manifest, label: str) -> pl.DataFrame:
    """The top folders (person folders) whose files the manifest's change sets up to `label` record as renamed into
    another top folder (old, new, the last version that did so): registry.renamed_folder. A fresh manifest's one
    version has no renames: nothing is known of what the folders were named before."""
    from .checks_registries import RENAMED_SCHEMA

    return manifest.query_frame(
        "SELECT old, new, max(version) AS version FROM (SELECT version, substr(old_srcfile, 1, instr(old_srcfile, '/') - 1) "
        "AS old, substr(srcfile, 1, instr(srcfile, '/') - 1) AS new FROM changes WHERE change = 'renamed' AND version <= ? "
        "AND instr(old_srcfile, '/') > 1 AND instr(srcfile, '/') > 1) WHERE old <> new GROUP BY old, new",
        (label,), schema=RENAMED_SCHEMA)


def validate_pending(manifest: Manifest, pending, roots: list, *, errors: pl.DataFrame, workers: int = 1,
                     progress: Progress | None = None, excludes: list[tuple[str, str]] | None = None) -> pl.DataFrame:
    """The findings of the version a dry run would commit (commit.Pending: the latest version's current files
    less the ones it ends, plus its new rows), reading from the run's scan.Roots the headers the manifest has
    no facts of; nothing is written, the manifest (if any) is only read."""
    stored = manifest.validation.current_files(with_file_id=True) if manifest.path.exists() else \
        pl.DataFrame(schema={"file_id": pl.Int64, **VALIDATION_SCHEMA})
    kept = stored.filter(~pl.col("file_id").is_in(pending.invalidated.implode()))
    if pending.reclassified is not None and pending.reclassified.height:
        kept = kept.update(pending.reclassified, on="file_id")
    # Read by the run's roots (by position); a kept file of a root this run does not have: from the first that has it.
    position = {root_id: i for i, root_id in pending.root_ids.items()}
    kept = kept.with_columns(root_id=pl.col("root_id").replace_strict(position, default=None, return_dtype=pl.Int64))
    # A kept file the scan found with a new stat, etag or root (a site copied or moved: same content) is read as the run
    # records it (commit._touch) before its check: where it was listed now, compared with the stat it was listed
    # with. As recorded, a file of a site given at a new folder was read there and found not as recorded ("written
    # since it was listed"): errors the run does not give.
    if pending.touched.height:
        moved = pending.touched.select("file_id", _mtime="mtime_ns", _root="root_id", _etag="etag", _md5="md5",
                                       _hit=pl.lit(True))
        kept = kept.join(moved, on="file_id", how="left", maintain_order="left").with_columns(
            mtime_ns=pl.coalesce("_mtime", "mtime_ns"), root_id=pl.coalesce("_root", "root_id"),
            etag=pl.when(pl.col("_hit").fill_null(False)).then(pl.col("_etag")).otherwise(pl.col("etag")),
            md5=pl.coalesce("md5", "_md5")).drop("_mtime", "_root", "_etag", "_md5", "_hit")
    current = pl.concat([kept.select(list(VALIDATION_SCHEMA)),
                         pending.new_rows.select(list(VALIDATION_SCHEMA)).cast(VALIDATION_SCHEMA)])  # type: ignore[arg-type]
    sources: dict[int | None, Source] = {i: root.source for i, root in enumerate(roots)}
    if roots:
        sources[None] = FirstFound([root.source for root in roots])  # type: ignore[assignment]
    return check_files(current, KnownFacts.cached(manifest), sources, errors=errors,
                       what="the files this run would commit",
                       where=str(manifest.path), workers=workers, progress=progress, excludes=excludes).findings


def run_findings(errors: pl.DataFrame) -> pl.DataFrame:
    """Findings of the rules that speak of what the version's run saw (RUN_RULES: its recorded problems)."""
    from ..frames import FINDINGS_SCHEMA
    from .rules import _SEVERITY, RUN_RULES

    kinds = {kind: rule for rule, kind in RUN_RULES.items()}
    return errors.filter(pl.col("kind").is_in(list(kinds))).select(
        severity=pl.col("kind").replace_strict(kinds).replace_strict(_SEVERITY),
        rule=pl.col("kind").replace_strict(kinds), srcfile="srcfile", message="message").cast(FINDINGS_SCHEMA)


def validate_manifest(db: str, *, argv: list[str], overrides: Mapping[str | None, str] | None = None,
                      workers: int = 1, force: bool = False, cloud: CloudSettings | None = None) -> tuple[str, pl.DataFrame]:
    """`validate` on a manifest: check its latest version (cached unless `force`), reading new headers
    from the recorded roots, or from the locations in `overrides` (by modality; None: the site root)."""
    manifest = Manifest(db)
    manifest.check_path()  # (a folder it may not enter: said, not a PermissionError from exists)
    if not manifest.path.exists():
        raise UsageError(f"no manifest at {manifest.path}", where=str(manifest.path),
                         fix="pass --site DIR to check a folder that has no manifest yet, or --db with the manifest")
    manifest.require_file()  # an empty file is not made a manifest
    for modality, location in (overrides or {}).items():  # named on purpose (--site): a typo is refused, cached or not
        open_source(location, workers=workers, cloud=cloud, what=_given_as(modality)).check()
    if not force:  # findings already stored are read without the lock (a reviewer with read access; during a run)
        stored = _stored_findings(manifest)
        if stored is not None:
            return stored
    with manifest.lock(argv):
        manifest.ensure_schema()
        latest = manifest.latest_version()
        if latest is None:
            raise manifest.no_version_error(", or check a folder with `chorus-batch validate --site DIR` without --db")
        sources = site_sources(manifest, overrides, workers=workers, cloud=cloud)
        findings = validate_version(manifest, latest["label"], sources, workers=workers, force=force)
    return latest["label"], findings


def _stored_findings(manifest: Manifest) -> tuple[str, pl.DataFrame] | None:
    """(latest label, its findings) when the manifest is at this release's schema and that version was
    checked; None when it must be checked (or upgraded) under the lock."""
    try:
        manifest.require()
    except (ManifestError, UsageError):
        return None
    latest = manifest.latest_version()
    if latest is None or not manifest.validation.is_validated(latest["label"]):
        return None
    return latest["label"], manifest.validation.findings(latest["label"])


def site_sources(manifest: Manifest, overrides: Mapping[str | None, str] | None, *,
                 workers: int = 1, cloud: CloudSettings | None = None) -> dict[int | None, Source]:
    """The site's sources by root_id (recorded, or as given by modality in `overrides`), and under None
    the first of them that has a file, for files whose root was not recorded."""
    sources: dict[int | None, Source] = dict(reopen_roots(manifest, overrides=overrides, workers=workers, cloud=cloud))
    given = [open_source(location, workers=workers, cloud=cloud, what=_given_as(modality))
             for modality, location in (overrides or {}).items()]
    for source in given:  # named on purpose (--site): a typo is refused, not taken for a site with nothing new to read
        source.check()
    if given or sources:
        sources[None] = FirstFound(given or [sources[k] for k in sorted(sources)])  # type: ignore[arg-type, misc]
    return sources


class _InTemporary:
    """A run's progress, said of a temporary manifest: "committing version X" (a version of no manifest that stays)
    is said as what it is, the folder's files recorded to be checked."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def stage(self, message: str) -> None:
        if message.startswith("committing version "):
            message = "recording the folder's files in a temporary manifest, to check them"
        self._progress.stage(message)

    def __getattr__(self, name: str):
        return getattr(self._progress, name)


def validate_folder(settings, *, keep: bool, argv: list[str],
                    progress=None) -> tuple[str | None, pl.DataFrame, pl.DataFrame]:
    """Check a site folder that has no manifest: scan it into a new manifest and validate its first
    version. `keep`: the manifest is `settings.db` and stays; otherwise a temporary one (owner-only,
    in the system's temporary folder) is removed afterwards and nothing is left behind.
    Also returns the files the scan could not take (srcfile, kind, message: a symlink not followed, a file
    unreadable or changing while read): they are in no version, so no rule saw them, and the temporary
    manifest that recorded why is gone. Paths that fit no pattern are findings already, not among them."""
    from ..pipeline import run

    checked = settings.model_copy(update={"validate_site": True, "dry_run": False})
    def not_taken(result) -> pl.DataFrame:
        # no version, so nothing was checked, which is no "0 errors" (with --db NEW the empty manifest stays: said so)
        if result.findings is None and result.n_files == 0:
            excluded = (result.excluded or {}).get("total", 0)
            raise UsageError(f"the folder lists no files{f' that are not excluded ({excluded} are)' if excluded else ''}: "
                             "nothing to check" + (f"; {settings.db} holds no version" if keep else ""),
                             where=f"--site {settings.site}",
                             fix="point --site at the folder that holds OMOP/ and the person folders"
                                 + (" (or check the exclusion globs)" if excluded else ""))
        return result.errors.filter(pl.col("kind") != "unparseable").select("srcfile", "kind", "message")

    if keep:
        result = run(checked, argv=argv, progress=progress)
        return result.label, result.findings, not_taken(result)  # type: ignore[return-value]
    made = False
    scratch: Path | None = None
    try:
        with scratch_folder("chorus-validate-") as scratch:
            temporary = scratch / "manifest.sqlite"
            try:
                result = run(checked.model_copy(update={"db": str(temporary), "parquet": None}), argv=argv,
                             progress=_InTemporary(progress) if progress is not None else None)
            finally:
                made = temporary.exists()
            return None, result.findings, not_taken(result)  # type: ignore[return-value]
    except BaseException as exc:  # a version of the temporary manifest is gone with it: nothing was kept anywhere
        # (a folder refused before its listing, a missing one, was not checked: "checked in a temporary manifest" was
        # said of it too)
        exc.outcome = "nothing was written" + (" (the folder was checked in a temporary manifest, now removed)"  # type: ignore[attr-defined]
                                               if made else "")
        if isinstance(exc, ChorusError) and scratch is not None and str(exc.where or "").startswith(str(scratch)) \
                and nearly_full(scratch.parent):
            # The temporary manifest's disk is the temporary folder's, which the user never named: "free space on the
            # manifest's file system" sent them looking for a manifest they had not given.
            exc.where = f"{scratch.parent} (the temporary folder, $TMPDIR, where the folder is checked in a manifest)"
            exc.fix = (f"free space in {scratch.parent}, or point TMPDIR at a folder with room, or give --db NEW.sqlite "
                       "(a manifest kept where there is room), and run again")
        raise
