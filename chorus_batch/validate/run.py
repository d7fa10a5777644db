"""Validation, orchestrated: which version to check, where its files are read from, what is
cached, and checking a folder that has no manifest yet.

  validate_version  check a version's current files; read only headers whose facts are not
                    cached; store the findings with the version
  reopen_roots      the site's roots as recorded in the manifest (or as given), by root_id
  validate_folder   `validate --site DIR` without a manifest: a temporary one, removed after
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from ..errors import UsageError
from ..progress import log
from ..sources import Source, open_source
from ..store import Manifest
from .checks import check
from .kinds import facts_needed
from .readers import FACTS_SCHEMA, extract_facts

if TYPE_CHECKING:
    from ..config import CloudSettings


class FirstFound:
    """Opens a site-relative path in the first root that has it: files whose root was not
    recorded (committed before schema 3)."""

    def __init__(self, sources: list[Source]):
        self.sources = sources
        self.parallel_local = all(s.parallel_local for s in sources)

    def open(self, srcfile: str):
        for source in self.sources[:-1]:
            try:
                return source.open(srcfile)
            except FileNotFoundError:
                continue
        return self.sources[-1].open(srcfile)


def reopen_roots(manifest: Manifest, *, overrides: Mapping[str | None, str] | None = None,
                 follow_symlinks: bool = False, workers: int = 1, cloud: CloudSettings | None = None) -> dict[int, Source]:
    """Sources by the manifest's root_id: the recorded location, or the one given for that root's
    modality (None: the site root) in `overrides`; cloud roots signed in as `cloud` says."""
    overrides = overrides or {}
    sources: dict[int, Source] = {}
    for root_id, location, modality in manifest.roots().select("root_id", "location", "modality").iter_rows():
        sources[root_id] = open_source(overrides.get(modality, location), follow_symlinks=follow_symlinks, workers=workers,
                                       cloud=cloud)
    return sources


def by_root_id(manifest: Manifest, sources: Mapping[tuple[str, str | None], Source]) -> dict[int | None, Source]:
    """A run's sources by (location, modality) as the manifest's root ids; None: the first of them
    that has a file, for files whose root was not recorded."""
    out: dict[int | None, Source] = {
        root_id: sources[(location, modality)]
        for root_id, location, modality in manifest.roots().select("root_id", "location", "modality").iter_rows()
        if (location, modality) in sources}
    if sources:
        out[None] = FirstFound(list(sources.values()))  # type: ignore[assignment]
    return out


def validate_version(manifest: Manifest, label: str, sources: Mapping[int | None, Source], *, workers: int = 1,
                     force: bool = False) -> pl.DataFrame:
    """Check a version against the procedures; findings are stored with it. Headers are read only for
    contents whose facts are not cached yet (new or changed files), each from `sources[root_id]`;
    `sources[None]` reads files whose root is not recorded or not reachable."""
    cache = manifest.validation
    if not force and cache.is_validated(label):
        return cache.findings(label)
    current = cache.current_files()
    needed = facts_needed(current).join(current.select("srcfile", "root_id"), on="srcfile", how="left")
    known = cache.known_facts(needed)
    todo = needed.join(known, on=["kind", "md5"], how="anti").unique(["kind", "md5"], keep="first", maintain_order=True)
    readers = {root_id: sources.get(root_id) or sources.get(None) for root_id in todo["root_id"].unique().to_list()}
    unreachable = todo.filter(pl.col("root_id").is_in([k for k, v in readers.items() if v is None])
                              | (pl.col("root_id").is_null() & (readers.get(None) is None)))
    if unreachable.height:
        # Never guessed: a file that was not read is not reported as unreadable.
        raise UsageError(
            f"{unreachable.height} file(s) of version {label} (e.g. {unreachable['srcfile'][0]}) have headers that were "
            "never read, and the manifest does not record where they are", where=str(manifest.path),
            fix="pass --site with the site root (its roots are recorded by the next run)")
    parts = [extract_facts(readers[root_id], part, workers=workers)  # type: ignore[arg-type]
             for (root_id,), part in todo.group_by("root_id", maintain_order=True)]
    new_facts = pl.concat(parts) if parts else pl.DataFrame(schema=FACTS_SCHEMA)
    findings = pl.concat([check(current, pl.concat([known, new_facts.select(known.columns)])),
                          run_findings(manifest.version_errors(label))]).sort("srcfile", "rule", "message")
    # Facts of files that could not be read (vanished, no permission) are not cached: the next check reads them.
    # Nor is such a version marked as checked: the next run checks it again, reading just those files.
    lasting = new_facts.filter(~pl.col("facts").str.contains('"retry":true', literal=True))
    cache.save(label, lasting, findings, complete=lasting.height == new_facts.height)
    log.debug(f"validate: {todo.height} headers read, {known.height} cached, {findings.height} findings")
    return findings


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
    if not manifest.path.exists():
        raise UsageError(f"no manifest at {manifest.path}", where=str(manifest.path),
                         fix="pass --site DIR to check a folder that has no manifest yet, or --db with the manifest")
    with manifest.lock(argv):
        manifest.ensure_schema()
        latest = manifest.latest_version()
        if latest is None:
            raise UsageError("the manifest has no versions yet", where=str(manifest.path),
                             fix="run `chorus-batch run` first, or `chorus-batch validate --site DIR` without --db")
        sources = site_sources(manifest, overrides, workers=workers, cloud=cloud)
        findings = validate_version(manifest, latest["label"], sources, workers=workers, force=force)
    return latest["label"], findings


def site_sources(manifest: Manifest, overrides: Mapping[str | None, str] | None, *,
                 workers: int = 1, cloud: CloudSettings | None = None) -> dict[int | None, Source]:
    """The site's sources by root_id (recorded, or as given by modality in `overrides`), and under None
    the first of them that has a file, for files whose root was not recorded."""
    sources: dict[int | None, Source] = dict(reopen_roots(manifest, overrides=overrides, workers=workers, cloud=cloud))
    given = [open_source(location, workers=workers, cloud=cloud) for location in (overrides or {}).values()]
    if given or sources:
        sources[None] = FirstFound(given or [sources[k] for k in sorted(sources)])  # type: ignore[arg-type, misc]
    return sources


def validate_folder(settings, *, keep: bool, argv: list[str], progress=None) -> tuple[str | None, pl.DataFrame]:
    """Check a site folder that has no manifest: scan it into a new manifest and validate its first
    version. `keep`: the manifest is `settings.db` and stays; otherwise a temporary one (owner-only,
    in the system's temporary folder) is removed afterwards and nothing is left behind."""
    from ..pipeline import run

    checked = settings.model_copy(update={"validate_site": True, "dry_run": False})
    if keep:
        result = run(checked, argv=argv, progress=progress)
        return result.label, result.findings  # type: ignore[return-value]
    scratch = Path(tempfile.mkdtemp(prefix="chorus-validate-"))
    try:
        result = run(checked.model_copy(update={"db": str(scratch / "manifest.sqlite"), "parquet": None}),
                     argv=argv, progress=progress)
        return None, result.findings  # type: ignore[return-value]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
